//! The total, bounded decoder: the protocol limits, [`DecodeError`], lists capped by
//! [`BoundedVec`], `Data` payloads borrowed from the received buffer, and [`decode`] /
//! [`decode_bytes`] themselves.

use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::envelope;
use super::{ContentHash, IndexEntry, Message, PeerInfo, PROTOCOL_VERSION};

/// Largest encoded message any transport may carry (TCP frames are checked against it before
/// anything is allocated).
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Budget for control messages (index pages, peer lists) so that they fit one datagram on any
/// path (IPv6 minimum MTU minus headers).
pub const CONTROL_BUDGET: usize = 1200;
/// Longest peer name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest relative path in an index entry.
pub const MAX_PATH_LEN: usize = 1000;
/// Longest free-text reason.
pub const MAX_REASON_LEN: usize = 256;
/// Most items in one list (peers or index entries per page).
pub const MAX_LIST_ITEMS: usize = 256;
/// Most selective-ACK ranges in one ACK.
pub const MAX_SACK_RANGES: usize = 32;
/// Largest data payload any sender may put in one chunk.
pub const MAX_CHUNK: usize = 128 * 1024;
/// Most piece hashes in one `PieceHashes` message (fits [`CONTROL_BUDGET`]).
pub const MAX_PIECE_HASHES: usize = 32;

/// Why a byte string is not a valid message.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum DecodeError {
    /// Shorter than the envelope.
    #[error("message of {0} bytes is shorter than the envelope")]
    TooShort(usize),
    /// Longer than [`MAX_MESSAGE`].
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    /// Wrong magic bytes: not our protocol.
    #[error("bad magic: not a p2p message")]
    BadMagic,
    /// A protocol version this build does not speak.
    #[error("unsupported protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u8),
    /// The body is not a valid message.
    #[error("malformed message body: {0}")]
    Malformed(String),
    /// The body does not match its checksum: corrupted in flight.
    #[error("checksum mismatch: message corrupted in flight")]
    BadChecksum,
    /// A field breaks a protocol limit.
    #[error("field `{field}` breaks its limit")]
    Limit {
        /// Which field.
        field: &'static str,
    },
}

std::thread_local! {
    /// Size of the message being decoded on this thread, so that a list may reserve room for
    /// its claimed length only when the input could hold that much (see [`BoundedVec`]).
    static DECODE_INPUT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// The buffer being decoded, when owned: a payload borrowed from it becomes a slice of it.
    static DECODE_OWNER: std::cell::RefCell<Option<Bytes>> = const { std::cell::RefCell::new(None) };
}

/// (De)serializes a chunk payload as MessagePack `bin`; decoding borrows from the buffer being
/// decoded when [`decode_bytes`] owns it, and copies otherwise.
pub(super) mod payload {
    use super::*;

    pub(in crate::wire) fn serialize<S: Serializer>(
        bytes: &Bytes,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub(in crate::wire) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct PayloadVisitor;
        impl<'de> Visitor<'de> for PayloadVisitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("chunk bytes")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
                let within = |b: &Bytes| {
                    let (lo, hi) = (b.as_ptr() as usize, b.as_ptr() as usize + b.len());
                    let (s, e) = (v.as_ptr() as usize, v.as_ptr() as usize + v.len());
                    lo <= s && e <= hi
                };
                Ok(DECODE_OWNER.with(|o| match o.borrow().as_ref() {
                    Some(b) if !v.is_empty() && within(b) => b.slice_ref(v),
                    _ => Bytes::copy_from_slice(v),
                }))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes::copy_from_slice(v))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes::from(v))
            }
        }
        d.deserialize_bytes(PayloadVisitor)
    }
}

/// A list whose decoded length is capped at `N` items. Decoding reserves room for the claimed
/// length only up to what four times the input's size could hold, so a short message claiming
/// a long list costs nothing, and a genuinely long list is allocated once, without the copies
/// of repeated growth.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BoundedVec<T, const N: usize>(pub Vec<T>);

/// An item of a [`BoundedVec`]: the fewest bytes one can take on the wire, so that a list
/// never believes more items than its input could hold.
pub trait ListItem {
    /// Smallest encoded size of one item.
    const MIN_ENCODED: usize;
}

impl ListItem for PeerInfo {
    const MIN_ENCODED: usize = 12;
}

impl ListItem for IndexEntry {
    const MIN_ENCODED: usize = 38;
}

impl ListItem for (u64, u64) {
    const MIN_ENCODED: usize = 3;
}

impl ListItem for ContentHash {
    const MIN_ENCODED: usize = 34;
}

impl<T: Serialize, const N: usize> Serialize for BoundedVec<T, N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de> + ListItem, const N: usize> Deserialize<'de> for BoundedVec<T, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const N: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de> + ListItem, const N: usize> Visitor<'de> for V<T, N> {
            type Value = BoundedVec<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a list of at most {N} items")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                if let Some(n) = seq.size_hint() {
                    if n > N {
                        return Err(serde::de::Error::invalid_length(n, &self));
                    }
                }
                let input = DECODE_INPUT.with(|c| c.get());
                let budget =
                    (input * 4 / std::mem::size_of::<T>().max(1)).min(input / T::MIN_ENCODED);
                let claimed = seq.size_hint().unwrap_or(0);
                let mut items = Vec::with_capacity(claimed.min(N).min(budget));
                while let Some(item) = seq.next_element()? {
                    if items.len() == N {
                        return Err(serde::de::Error::invalid_length(N + 1, &self));
                    }
                    items.push(item);
                }
                Ok(BoundedVec(items))
            }
        }
        d.deserialize_seq(V::<T, N>(PhantomData))
    }
}

/// Decodes one message: envelope, body, limits. Never panics.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    decode_inner(bytes, None)
}

/// [`decode`] of an owned buffer: a `Data` payload is a slice of `bytes`, not a copy.
pub fn decode_bytes(bytes: &Bytes) -> Result<Message, DecodeError> {
    decode_inner(bytes, Some(bytes))
}

fn decode_inner(bytes: &[u8], owner: Option<&Bytes>) -> Result<Message, DecodeError> {
    let opened = envelope::open(bytes)?;
    DECODE_INPUT.with(|c| c.set(bytes.len()));
    DECODE_OWNER.with(|o| *o.borrow_mut() = owner.cloned());
    let decoded = rmp_serde::from_slice::<Message>(opened.body);
    DECODE_INPUT.with(|c| c.set(0));
    DECODE_OWNER.with(|o| *o.borrow_mut() = None);
    let msg = decoded.map_err(|e| DecodeError::Malformed(e.to_string()))?;
    opened.check_unchecked_payload(&msg)?;
    msg.validate()?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{RequestId, TransferId, HEADER_LEN, MAGIC, UNCHECKED_PAYLOAD};

    #[test]
    fn only_data_may_leave_its_payload_unchecked() {
        let m = Message::Ack {
            transfer: TransferId(1),
            cumulative: 5,
            sack: BoundedVec(vec![]),
            window: 64,
        };
        let mut frame = m.encode();
        frame[MAGIC.len()] |= UNCHECKED_PAYLOAD;
        assert_eq!(decode(&frame), Err(DecodeError::BadChecksum));
    }

    #[test]
    fn round_trips_a_data_message() {
        let m = Message::Data {
            transfer: TransferId(7),
            seq: 42,
            payload: vec![1, 2, 3].into(),
        };
        assert_eq!(decode(&m.encode()), Ok(m));
    }

    #[test]
    fn rejects_a_list_longer_than_its_limit() {
        let m = Message::Ack {
            transfer: TransferId(1),
            cumulative: 0,
            sack: BoundedVec((0..40).map(|i| (2 * i + 1, 2 * i + 2)).collect()),
            window: 4,
        };
        assert!(matches!(
            decode(&m.encode()),
            Err(DecodeError::Malformed(_))
        ));
    }

    /// Re-encodes a message after the body was replaced, so that the checksum is right.
    fn seal(body: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(PROTOCOL_VERSION);
        out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn claimed_huge_list_is_refused_without_allocating() {
        // An IndexPage whose entry list claims 2^32-1 items (array32 marker) but holds none.
        let mut body = Message::IndexPage {
            request: RequestId(1),
            page: 0,
            pages: 1,
            share: String::new(),
            entries: BoundedVec(vec![]),
        }
        .encode()[HEADER_LEN..]
            .to_vec();
        let last = body.len() - 1;
        assert_eq!(body[last], 0x90); // fixarray of 0
        body.truncate(last);
        body.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decode(&seal(&body)),
            Err(DecodeError::Malformed(_))
        ));
    }
}
