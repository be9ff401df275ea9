//! The envelope around every message (magic, version byte, CRC-32 of the body): the encoders
//! that put it on, including the in-place encodings of a `Data` message (into a
//! [`DatagramBuf`], or its head alone, sent before a payload that does not pass through user
//! space), and [`open`], which checks it before the body is decoded.

use bytes::Bytes;

use super::{DatagramBuf, DecodeError, Message, TransferId, MAX_CHUNK, MAX_MESSAGE};

/// First bytes of every message.
pub const MAGIC: [u8; 3] = *b"P2P";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Flag in the version byte: the checksum leaves out the payload of this `Data` message.
pub const UNCHECKED_PAYLOAD: u8 = 0x80;
/// Bytes of envelope before the message body: magic, version, CRC-32 (little endian).
pub const HEADER_LEN: usize = MAGIC.len() + 1 + 4;
/// Bytes a `Data` message adds around its payload, at most (envelope, tag, ids, length).
pub const DATA_OVERHEAD: usize = 48;

impl Message {
    /// Encodes into a fresh buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoded message (envelope included) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        out.push(PROTOCOL_VERSION);
        out.extend_from_slice(&[0; 4]);
        // Writing to a Vec cannot fail, and every type here is serializable.
        rmp_serde::encode::write(out, self).expect("encoding to a Vec never fails");
        let crc = crc32fast::hash(&out[start + HEADER_LEN..]);
        out[start + HEADER_LEN - 4..start + HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    }

    /// Appends to `out` a `Data` message whose `len` payload bytes (at most [`MAX_CHUNK`])
    /// `fill` writes in place (e.g. read from the file straight into the datagram), so the
    /// chunk is never copied in between, nor zeroed first where `out` held bytes before. If
    /// `fill` fails, `out` is left as it was. Encodes exactly what
    /// [`encode_into`](Self::encode_into) encodes for the same message.
    pub fn encode_data_into<E>(
        out: &mut DatagramBuf,
        transfer: TransferId,
        seq: u64,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        debug_assert!(len <= MAX_CHUNK);
        let start = out.len;
        let mut head = std::mem::take(&mut out.head);
        head.clear();
        Self::data_head(&mut head, transfer, seq, len);
        out.extend(&head);
        out.head = head;
        let at = out.len;
        out.grow(len);
        if let Err(e) = fill(&mut out.bytes[at..at + len]) {
            out.len = start; // nothing half-written is left behind
            return Err(e);
        }
        let message = &mut out.bytes[start..at + len];
        let crc = crc32fast::hash(&message[HEADER_LEN..]);
        message[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// Appends the head of a `Data` message of `len` payload bytes (at most [`MAX_CHUNK`]):
    /// everything but the payload, which the caller sends right after it from elsewhere (a
    /// file). Its envelope carries [`UNCHECKED_PAYLOAD`]: the checksum covers the head only
    /// (see the module docs). Head and payload together decode
    /// to the same message as [`encode_into`](Self::encode_into)'s.
    pub fn encode_data_head(out: &mut Vec<u8>, transfer: TransferId, seq: u64, len: usize) {
        debug_assert!(len <= MAX_CHUNK);
        let start = out.len();
        Self::data_head(out, transfer, seq, len);
        out[start + MAGIC.len()] |= UNCHECKED_PAYLOAD;
        let crc = crc32fast::hash(&out[start + HEADER_LEN..]);
        out[start + HEADER_LEN - 4..start + HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    }

    /// Envelope (checksum not yet set) and body of a `Data` message up to its payload bytes.
    fn data_head(out: &mut Vec<u8>, transfer: TransferId, seq: u64, len: usize) {
        Message::Data {
            transfer,
            seq,
            payload: Bytes::new(),
        }
        .encode_into(out);
        // The payload is the last field: its encoding is the empty `bin 8` marker, at the end.
        debug_assert_eq!(out[out.len() - 2..], [0xc4, 0x00]);
        out.truncate(out.len() - 2);
        // MessagePack `bin 8 / 16 / 32` header of `len` bytes.
        match len {
            0..=0xff => out.extend_from_slice(&[0xc4, len as u8]),
            0x100..=0xffff => {
                out.push(0xc5);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(0xc6);
                out.extend_from_slice(&(len as u32).to_be_bytes());
            }
        }
    }
}

/// An envelope [`open`] found valid, around its body.
pub(super) struct Opened<'a> {
    /// The message body: everything after the envelope.
    pub(super) body: &'a [u8],
    /// The checksum the envelope carries.
    crc: u32,
    /// The version byte carries [`UNCHECKED_PAYLOAD`]: the checksum, not yet checked, leaves
    /// out the payload of a `Data` message.
    unchecked_payload: bool,
}

/// The first bytes of a [`Message::Relayed`] body: a one-entry map keyed by the variant's
/// name.
const RELAYED_TAG: &[u8] = b"\x81\xa7Relayed";

/// Whether `bytes` look like a [`Message::Relayed`] (envelope magic and the variant's tag,
/// nothing checked further): what a transport that unwraps relayed datagrams looks at in
/// every datagram before decoding the few that are.
pub fn is_relayed(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN + RELAYED_TAG.len()
        && bytes.starts_with(&MAGIC)
        && bytes[HEADER_LEN..].starts_with(RELAYED_TAG)
}

/// Checks the envelope of `bytes` (size, magic, version) and, unless it carries
/// [`UNCHECKED_PAYLOAD`], the checksum of the body.
pub(super) fn open(bytes: &[u8]) -> Result<Opened<'_>, DecodeError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::TooShort(bytes.len()));
    }
    if bytes[..MAGIC.len()] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = bytes[MAGIC.len()] & !UNCHECKED_PAYLOAD;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion(bytes[MAGIC.len()]));
    }
    let unchecked_payload = bytes[MAGIC.len()] & UNCHECKED_PAYLOAD != 0;
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let body = &bytes[HEADER_LEN..];
    if !unchecked_payload && crc32fast::hash(body) != crc {
        return Err(DecodeError::BadChecksum);
    }
    Ok(Opened {
        body,
        crc,
        unchecked_payload,
    })
}

impl Opened<'_> {
    /// With [`UNCHECKED_PAYLOAD`], checks the checksum left for after decoding: `msg`, decoded
    /// from the body, must be a `Data` message whose payload is the body's last bytes, and the
    /// bytes before its payload must match the checksum.
    pub(super) fn check_unchecked_payload(&self, msg: &Message) -> Result<(), DecodeError> {
        if !self.unchecked_payload {
            return Ok(());
        }
        let (body, crc) = (self.body, self.crc);
        // Only a `Data` payload may be left out, and only as the body's last bytes.
        let Message::Data { payload, .. } = msg else {
            return Err(DecodeError::BadChecksum);
        };
        let at_end = |h: usize| {
            // A zero-copy payload is the slice itself; a copied one must equal the tail.
            std::ptr::eq(body[h..].as_ptr(), payload.as_ptr()) || body[h..] == payload[..]
        };
        let head = body.len().checked_sub(payload.len());
        if head.is_none_or(|h| !at_end(h) || crc32fast::hash(&body[..h]) != crc) {
            return Err(DecodeError::BadChecksum);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, decode_bytes};

    #[test]
    fn data_encoded_in_place_is_the_same_message_and_decodes_without_a_copy() {
        for len in [0usize, 1, 255, 256, 65_535, 65_536, MAX_CHUNK] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let m = Message::Data {
                transfer: TransferId(9),
                seq: 1 << 40,
                payload: payload.clone().into(),
            };
            // Over the bytes of a longer datagram, as a reused buffer holds them.
            let mut out = DatagramBuf::default();
            out.extend(&[0xab]);
            out.extend(&vec![0x5a; MAX_CHUNK + 64]);
            out.len = 1; // appends, like encode_into
            Message::encode_data_into(&mut out, TransferId(9), 1 << 40, len, |into| {
                into.copy_from_slice(&payload);
                Ok::<(), ()>(())
            })
            .unwrap();
            assert_eq!(out.as_slice()[1..], m.encode()[..], "len {len}");

            let frame = Bytes::from(m.encode());
            let Ok(Message::Data { payload: got, .. }) = decode_bytes(&frame) else {
                panic!("len {len}: not decoded");
            };
            assert_eq!(got[..], payload[..]);
            if len > 0 {
                let (lo, hi) = (
                    frame.as_ptr() as usize,
                    frame.as_ptr() as usize + frame.len(),
                );
                let at = got.as_ptr() as usize;
                assert!(
                    lo <= at && at + got.len() <= hi,
                    "len {len}: payload was copied"
                );
            }
        }
        // A failing fill is reported, and leaves nothing half-written.
        let mut out = DatagramBuf::default();
        out.extend(&[1, 2, 3]);
        let r = Message::encode_data_into(&mut out, TransferId(1), 0, 10, |_| Err("eof"));
        assert_eq!(r, Err("eof"));
        assert_eq!(out.as_slice(), [1, 2, 3]);
        // Datagrams one after the other, and the last ones taken out.
        let mut out = DatagramBuf::default();
        let ok = |_: &mut [u8]| Ok::<(), ()>(());
        Message::encode_data_into(&mut out, TransferId(1), 0, 100, ok).unwrap();
        let first = out.len();
        Message::encode_data_into(&mut out, TransferId(1), 1, 100, ok).unwrap();
        let second = out.split_off(first);
        assert_eq!(out.len(), first);
        assert!(matches!(decode(&second), Ok(Message::Data { seq: 1, .. })));
        assert!(matches!(
            decode(out.as_slice()),
            Ok(Message::Data { seq: 0, .. })
        ));
        out.clear();
        assert!(out.is_empty());
    }

    #[test]
    fn data_head_and_payload_decode_to_the_message_and_the_head_is_checked() {
        for len in [0usize, 1, 255, 256, 65_535, 65_536, MAX_CHUNK] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
            let m = Message::Data {
                transfer: TransferId(3),
                seq: 77,
                payload: payload.clone().into(),
            };
            let mut frame = vec![];
            Message::encode_data_head(&mut frame, TransferId(3), 77, len);
            assert_eq!(frame[MAGIC.len()], PROTOCOL_VERSION | UNCHECKED_PAYLOAD);
            let head = frame.len();
            frame.extend_from_slice(&payload);
            assert_eq!(decode(&frame), Ok(m.clone()), "len {len}");
            let owned = Bytes::from(frame.clone());
            assert_eq!(decode_bytes(&owned), Ok(m.clone()), "len {len}");
            // Any flipped bit of the head is caught; one in the payload is left to the piece
            // hashes.
            for i in (HEADER_LEN..head).chain([4]) {
                let mut bad = frame.clone();
                bad[i] ^= 0x10;
                assert!(decode(&bad).is_err(), "len {len}: head byte {i} flipped");
            }
            if len > 0 {
                let mut changed = frame.clone();
                changed[head] ^= 1;
                assert!(decode(&changed).is_ok(), "len {len}");
            }
            // The payload must be the body's last bytes.
            let mut longer = frame.clone();
            longer.push(0);
            assert!(decode(&longer).is_err(), "len {len}: trailing byte");
        }
    }

    #[test]
    fn data_overhead_is_an_upper_bound() {
        let m = Message::Data {
            transfer: TransferId(u64::MAX),
            seq: u64::MAX,
            payload: vec![0; MAX_CHUNK].into(),
        };
        assert!(m.encode().len() <= MAX_CHUNK + DATA_OVERHEAD);
    }

    #[test]
    fn rejects_wrong_magic_and_version() {
        let mut bytes = Message::FinAck {
            transfer: TransferId(1),
        }
        .encode();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(decode(&bytes), Err(DecodeError::BadChecksum));
        bytes[3] = 9;
        assert_eq!(decode(&bytes), Err(DecodeError::UnsupportedVersion(9)));
        bytes[0] = b'X';
        assert_eq!(decode(&bytes), Err(DecodeError::BadMagic));
        assert_eq!(decode(&bytes[..2]), Err(DecodeError::TooShort(2)));
    }
}
