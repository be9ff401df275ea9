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

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::str::FromStr;

use bytes::Bytes;
use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// First bytes of every message.
pub const MAGIC: [u8; 3] = *b"P2P";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Flag in the version byte: the checksum leaves out the payload of this `Data` message.
pub const UNCHECKED_PAYLOAD: u8 = 0x80;
/// Bytes of envelope before the message body: magic, version, CRC-32 (little endian).
pub const HEADER_LEN: usize = MAGIC.len() + 1 + 4;
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
/// Bytes per verified piece: the receiver checks each piece's BLAKE3 as it completes, and a
/// resumed download continues at a piece boundary.
pub const PIECE_SIZE: u32 = 256 * 1024;
/// Most piece hashes in one `PieceHashes` message (fits [`CONTROL_BUDGET`]).
pub const MAX_PIECE_HASHES: usize = 32;
/// Bytes a `Data` message adds around its payload, at most (envelope, tag, ids, length).
pub const DATA_OVERHEAD: usize = 48;

/// Short ID of a shared file, shown as `001`, `002`, …
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u32);

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:03}", self.0)
    }
}

impl FromStr for FileId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().trim_start_matches('-');
        t.parse::<u32>()
            .map(FileId)
            .map_err(|_| format!("`{s}` is not a file id (expected a number such as 001)"))
    }
}

/// Identifies one transfer between a receiver and a sender; chosen by the receiver.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferId(pub u64);

/// Matches a reply to its request.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Which transport a peer listens on.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// One message per datagram.
    Udp,
    /// Length-prefixed frames on a stream.
    Tcp,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Udp => "udp",
            TransportKind::Tcp => "tcp",
        })
    }
}

impl FromStr for TransportKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "udp" => Ok(TransportKind::Udp),
            "tcp" => Ok(TransportKind::Tcp),
            _ => Err(format!("unknown transport `{s}` (expected udp or tcp)")),
        }
    }
}

/// A BLAKE3 content hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// Hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        ContentHash(*blake3::hash(bytes).as_bytes())
    }
    /// Lower-case hex form.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl From<blake3::Hash> for ContentHash {
    fn from(h: blake3::Hash) -> Self {
        ContentHash(*h.as_bytes())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for ContentHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ContentHash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("32 bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ContentHash, E> {
                <[u8; 32]>::try_from(v)
                    .map(ContentHash)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(V)
    }
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
mod payload {
    use super::*;

    pub(super) fn serialize<S: Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
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

/// A live peer as the tracker lists it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's unique name.
    pub name: String,
    /// Where it listens (IP seen by the tracker, port the peer announced).
    pub addr: SocketAddr,
    /// The transport it listens on.
    pub transport: TransportKind,
}

/// One shared file in a peer's index.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Short ID, stable for the path while the peer runs.
    pub id: FileId,
    /// Path relative to the share folder, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the content.
    pub hash: ContentHash,
}

/// Why the tracker refused a registration or a request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// Registered (or refreshed); heartbeat before `ttl_ms` passes.
    Accepted {
        /// Entry lifetime without heartbeat.
        ttl_ms: u64,
        /// Suggested heartbeat period.
        heartbeat_ms: u64,
    },
    /// Not registered, with a reason meant for the user.
    Refused {
        /// Human-readable reason.
        reason: String,
    },
}

/// Why a transfer was aborted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum AbortReason {
    /// The requested file id is not in the sender's index.
    NoSuchFile,
    /// The sender has too many transfers running.
    Busy,
    /// The request or a message made no sense.
    BadRequest,
    /// The file changed on the sender while it was sent.
    FileChanged,
    /// The other side stopped answering.
    Timeout,
    /// The received content does not match the announced hash.
    HashMismatch,
    /// The other side is shutting down.
    Shutdown,
    /// Anything else, described.
    Other(String),
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::NoSuchFile => f.write_str("no such file"),
            AbortReason::Busy => f.write_str("sender busy"),
            AbortReason::BadRequest => f.write_str("bad request"),
            AbortReason::FileChanged => f.write_str("file changed on the sender"),
            AbortReason::Timeout => f.write_str("timed out"),
            AbortReason::HashMismatch => f.write_str("content hash mismatch"),
            AbortReason::Shutdown => f.write_str("peer shutting down"),
            AbortReason::Other(s) => f.write_str(s),
        }
    }
}

/// Every message of protocol v1.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Peer → tracker: add me as `name`, listening on `port` of my source IP.
    Register {
        /// Reply correlation.
        request: RequestId,
        /// Wanted name.
        name: String,
        /// Listening port.
        port: u16,
        /// Listening transport.
        transport: TransportKind,
    },
    /// Peer → tracker: I am alive (re-registers if the tracker forgot me).
    Heartbeat {
        /// Reply correlation.
        request: RequestId,
        /// Registered name.
        name: String,
        /// Listening port.
        port: u16,
        /// Listening transport.
        transport: TransportKind,
    },
    /// Tracker → peer: answer to `Register` or `Heartbeat`.
    RegisterReply {
        /// Correlation.
        request: RequestId,
        /// Result.
        outcome: RegisterOutcome,
    },
    /// Peer → tracker: remove me.
    Unregister {
        /// Reply correlation.
        request: RequestId,
        /// Registered name.
        name: String,
    },
    /// Tracker → peer: unregistered (or was not registered).
    UnregisterReply {
        /// Correlation.
        request: RequestId,
    },
    /// Anyone → tracker: list live peers, page `page`.
    ListPeers {
        /// Reply correlation.
        request: RequestId,
        /// Zero-based page.
        page: u32,
    },
    /// Tracker → anyone: one page of the live peers.
    PeerList {
        /// Correlation.
        request: RequestId,
        /// This page.
        page: u32,
        /// Number of pages.
        pages: u32,
        /// The peers of this page.
        peers: BoundedVec<PeerInfo, MAX_LIST_ITEMS>,
    },
    /// Anyone → peer: list your files, page `page`.
    IndexRequest {
        /// Reply correlation.
        request: RequestId,
        /// Zero-based page.
        page: u32,
    },
    /// Peer → anyone: one page of the index.
    IndexPage {
        /// Correlation.
        request: RequestId,
        /// This page.
        page: u32,
        /// Number of pages.
        pages: u32,
        /// Name of the shared folder (for display: `shared/file1.txt`).
        share: String,
        /// Entries of this page.
        entries: BoundedVec<IndexEntry, MAX_LIST_ITEMS>,
    },
    /// Answer to a request that cannot be served.
    Error {
        /// Correlation.
        request: RequestId,
        /// What went wrong.
        reason: String,
    },
    /// Anyone → peer: the piece hashes of file `file` (whose content hash must be `hash`),
    /// from piece `first` on.
    PieceRequest {
        /// Reply correlation.
        request: RequestId,
        /// Which file.
        file: FileId,
        /// Its content hash, as listed (refused if the file changed).
        hash: ContentHash,
        /// First piece wanted.
        first: u32,
    },
    /// Peer → anyone: piece hashes `first..first + hashes.len()` of `pieces`.
    PieceHashes {
        /// Correlation.
        request: RequestId,
        /// Bytes per piece.
        piece_size: u32,
        /// Number of pieces of the file.
        pieces: u32,
        /// Index of the first hash here.
        first: u32,
        /// BLAKE3 of each piece.
        hashes: BoundedVec<ContentHash, MAX_PIECE_HASHES>,
    },
    /// Receiver → sender: send me file `file` from byte `offset` on.
    Request {
        /// Chosen by the receiver.
        transfer: TransferId,
        /// Which file.
        file: FileId,
        /// First byte wanted (0 for the whole file; a resume starts at a piece boundary).
        offset: u64,
    },
    /// Sender → receiver: request accepted; this is what will come.
    Accept {
        /// Transfer.
        transfer: TransferId,
        /// File size in bytes.
        size: u64,
        /// Payload bytes per chunk (the last may be shorter).
        chunk_size: u32,
        /// BLAKE3 of the whole file.
        hash: ContentHash,
    },
    /// Sender → receiver: chunk `seq` (bytes `offset + seq * chunk_size ..`).
    Data {
        /// Transfer.
        transfer: TransferId,
        /// Chunk number.
        seq: u64,
        /// Chunk bytes (a slice of the received buffer when decoded by [`decode_bytes`]).
        #[serde(with = "payload")]
        payload: Bytes,
    },
    /// Receiver → sender: all chunks below `cumulative` arrived, plus the `sack` ranges
    /// (half-open); `window` more chunks may be sent beyond `cumulative`.
    Ack {
        /// Transfer.
        transfer: TransferId,
        /// Next chunk expected in order.
        cumulative: u64,
        /// Received ranges above `cumulative`, `[start, end)`.
        sack: BoundedVec<(u64, u64), MAX_SACK_RANGES>,
        /// Receive window, in chunks beyond `cumulative`.
        window: u32,
    },
    /// Sender → receiver: every chunk was acknowledged; totals to verify.
    Fin {
        /// Transfer.
        transfer: TransferId,
        /// Total bytes.
        size: u64,
        /// BLAKE3 of the whole file.
        hash: ContentHash,
    },
    /// Receiver → sender: file verified and stored.
    FinAck {
        /// Transfer.
        transfer: TransferId,
    },
    /// Either side: the transfer ends now, for `reason`.
    Abort {
        /// Transfer.
        transfer: TransferId,
        /// Why.
        reason: AbortReason,
    },
}

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

    /// Checks the limits that decoding alone does not enforce (string lengths, ranges).
    pub fn validate(&self) -> Result<(), DecodeError> {
        fn check(ok: bool, field: &'static str) -> Result<(), DecodeError> {
            if ok {
                Ok(())
            } else {
                Err(DecodeError::Limit { field })
            }
        }
        match self {
            Message::Register { name, .. }
            | Message::Heartbeat { name, .. }
            | Message::Unregister { name, .. } => check(name.len() <= MAX_NAME_LEN, "name"),
            Message::RegisterReply {
                outcome: RegisterOutcome::Refused { reason },
                ..
            }
            | Message::Error { reason, .. }
            | Message::Abort {
                reason: AbortReason::Other(reason),
                ..
            } => check(reason.len() <= MAX_REASON_LEN, "reason"),
            Message::PeerList {
                page, pages, peers, ..
            } => {
                check(page < pages || *pages == 0, "page")?;
                check(
                    peers.0.iter().all(|p| p.name.len() <= MAX_NAME_LEN),
                    "peers.name",
                )
            }
            Message::IndexPage {
                page,
                pages,
                share,
                entries,
                ..
            } => {
                check(page < pages || *pages == 0, "page")?;
                check(share.len() <= MAX_NAME_LEN * 4, "share")?;
                check(
                    entries.0.iter().all(|e| e.path.len() <= MAX_PATH_LEN),
                    "entries.path",
                )
            }
            Message::Accept { chunk_size, .. } => check(
                *chunk_size > 0 && *chunk_size as usize <= MAX_CHUNK,
                "chunk_size",
            ),
            Message::PieceHashes {
                piece_size,
                pieces,
                first,
                hashes,
                ..
            } => check(
                *piece_size > 0 && u64::from(*first) + hashes.0.len() as u64 <= u64::from(*pieces),
                "piece hashes",
            ),
            Message::Data { payload, .. } => check(payload.len() <= MAX_CHUNK, "payload"),
            Message::Ack {
                cumulative, sack, ..
            } => check(
                sack.0.iter().all(|&(s, e)| s > *cumulative && s < e),
                "sack",
            ),
            _ => Ok(()),
        }
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
    DECODE_INPUT.with(|c| c.set(bytes.len()));
    DECODE_OWNER.with(|o| *o.borrow_mut() = owner.cloned());
    let decoded = rmp_serde::from_slice::<Message>(&bytes[HEADER_LEN..]);
    DECODE_INPUT.with(|c| c.set(0));
    DECODE_OWNER.with(|o| *o.borrow_mut() = None);
    let msg = decoded.map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if unchecked_payload {
        // Only a `Data` payload may be left out, and only as the body's last bytes.
        let Message::Data { payload, .. } = &msg else {
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
    }
    msg.validate()?;
    Ok(msg)
}

/// Encoded datagrams, one after the other, in a buffer that keeps the bytes of earlier ones
/// past its length: [`Message::encode_data_into`] reads each payload over them instead of
/// zeroing its room first (zeroing was 5 % of a UDP seeding peer's CPU).
#[derive(Debug, Default)]
pub struct DatagramBuf {
    /// Initialised up to its own length, which only grows; the datagrams are `..len`.
    bytes: Vec<u8>,
    len: usize,
    /// Scratch space for a message head.
    head: Vec<u8>,
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

    fn extend(&mut self, data: &[u8]) {
        let at = self.len;
        self.grow(data.len());
        self.bytes[at..self.len].copy_from_slice(data);
    }

    /// Makes room for `n` more bytes, zeroing only bytes never written before.
    fn grow(&mut self, n: usize) {
        let end = self.len + n;
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        self.len = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn rejects_a_long_name() {
        let m = Message::Register {
            request: RequestId(1),
            name: "x".repeat(MAX_NAME_LEN + 1),
            port: 1,
            transport: TransportKind::Udp,
        };
        assert_eq!(
            decode(&m.encode()),
            Err(DecodeError::Limit { field: "name" })
        );
    }

    #[test]
    fn file_ids_print_with_three_digits_and_parse_back() {
        assert_eq!(FileId(1).to_string(), "001");
        assert_eq!("001".parse::<FileId>(), Ok(FileId(1)));
        assert_eq!("-002".parse::<FileId>(), Ok(FileId(2)));
        assert!("abc".parse::<FileId>().is_err());
    }
}
