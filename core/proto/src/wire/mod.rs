//! Wire format, protocol v1: every message travels in a small envelope (magic `P2P`, protocol
//! version byte, CRC-32 of the body) followed by the message body encoded with `rmp-serde`
//! (MessagePack). The checksum turns corruption in flight into a loss, which the transfer
//! protocol repairs, instead of wrong bytes.
//!
//! One exception: a `Data` message whose version byte carries [`UNCHECKED_PAYLOAD`] has a
//! checksum over its body *without* the payload bytes (see [`Message::encode_data_head`]).
//! The receiver's piece hashes check every payload byte anyway; leaving the payload out lets
//! a sender hand it to the kernel straight from the page cache (`sendfile`) instead of
//! reading and summing it. The transport chooses which chunks go that way
//! (`Transport::sends_file`): all of them on TCP, which checksums what it carries; on UDP
//! only large ones (loopback's), so that on a real network a corrupted payload stays a loss
//! and does not fail a piece (which the download would then fetch again).
//!
//! Decoding is total: [`decode`] turns any byte string into a [`Message`] or a typed
//! [`DecodeError`], never panics, and never allocates more than a small multiple of the input:
//! the frame size is checked first, every list is read through [`BoundedVec`] (capacity capped
//! by the protocol limit, never by a length the sender claims), and every string is checked
//! against its limit by [`Message::validate`].
//!
//! The hot path copies no chunk bytes in user space beyond what it must: [`decode_bytes`]
//! gives a `Data` payload as a slice of the received buffer, and
//! [`Message::encode_data_into`] lets the sender read a chunk from the file straight into the
//! outgoing datagram (a [`DatagramBuf`], never zeroed first).

// One file per concern: the ids and hashes messages carry, the messages themselves, the
// envelope around them (and the encoders that put it on), the bounded decoder with the protocol
// limits it enforces, the send buffer the encoders write datagrams into, and the splitting
// of long lists into pages that fit a message.
mod datagram_buf;
mod decode;
mod envelope;
mod ids;
mod messages;
mod paging;

pub use datagram_buf::DatagramBuf;
pub use decode::{
    decode, decode_bytes, BoundedVec, DecodeError, ListItem, CONTROL_BUDGET, MAX_CHUNK,
    MAX_LIST_ITEMS, MAX_MESSAGE, MAX_NAME_LEN, MAX_PATH_LEN, MAX_PIECE_HASHES, MAX_REASON_LEN,
    MAX_SACK_RANGES,
};
pub use envelope::{
    is_relayed, DATA_OVERHEAD, HEADER_LEN, MAGIC, PROTOCOL_VERSION, UNCHECKED_PAYLOAD,
};
pub use ids::{ContentHash, FileId, RequestId, Token, TransferId, TransportKind};
pub use messages::{
    AbortReason, IndexEntry, Message, PeerInfo, RegisterOutcome, INITIAL_SIZE, MAX_ANNOUNCE_HASHES,
    MAX_ANSWER_BODY, MAX_HAVE_BYTES, MAX_VALIDATED_BODY, PIECE_SIZE, RELAY_OVERHEAD,
};
pub use paging::paginate;
