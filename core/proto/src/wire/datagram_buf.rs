//! [`DatagramBuf`], the buffer outgoing datagrams are encoded into (by the endpoint driver,
//! through [`Message::encode_data_into`](super::Message::encode_data_into)).

/// Encoded datagrams, one after the other, in a buffer that keeps the bytes of earlier ones
/// past its length: [`Message::encode_data_into`](super::Message::encode_data_into) reads each payload over them instead of
/// zeroing its room first (zeroing was 5 % of a UDP seeding peer's CPU).
#[derive(Debug, Default)]
pub struct DatagramBuf {
    /// Initialised up to its own length, which only grows; the datagrams are `..len`.
    pub(super) bytes: Vec<u8>,
    pub(super) len: usize,
    /// Scratch space for a message head.
    pub(super) head: Vec<u8>,
}

impl DatagramBuf {
    /// The datagrams.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Bytes of datagrams held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no datagram is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every datagram (keeping the room).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Takes out the bytes from `at` on (the last datagrams).
    pub fn split_off(&mut self, at: usize) -> Vec<u8> {
        let tail = self.bytes[at..self.len].to_vec();
        self.len = at.min(self.len);
        tail
    }

    #[inline]
    pub(super) fn extend(&mut self, data: &[u8]) {
        let at = self.len;
        self.grow(data.len());
        self.bytes[at..self.len].copy_from_slice(data);
    }

    /// Makes room for `n` more bytes, zeroing only bytes never written before.
    #[inline]
    pub(super) fn grow(&mut self, n: usize) {
        let end = self.len + n;
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        self.len = end;
    }
}
