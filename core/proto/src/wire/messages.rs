//! The messages of protocol v1 ([`Message`]) and their parts: peers, index entries, the
//! tracker's answer to a registration, why a transfer was aborted; and the limits a decoded
//! message must keep ([`Message::validate`]).

use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::decode::payload;
use super::ids::Token;
use super::{
    BoundedVec, ContentHash, DecodeError, FileId, RequestId, TransferId, TransportKind, MAX_CHUNK,
    MAX_LIST_ITEMS, MAX_NAME_LEN, MAX_PATH_LEN, MAX_PIECE_HASHES, MAX_REASON_LEN, MAX_SACK_RANGES,
};

/// Bytes per verified piece: the receiver checks each piece's BLAKE3 as it completes, and a
/// resumed download continues at a piece boundary.
pub const PIECE_SIZE: u32 = 256 * 1024;

/// A live peer as the tracker lists it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's unique name (shared: the tracker's listing pages hand out the entries of
    /// one snapshot without copying a name per page).
    pub name: std::sync::Arc<str>,
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
        /// Content hashes the tracker holds for this peer ([`Message::Announce`]); `None`:
        /// it announced nothing since it registered, or the tracker forgot it (encoded
        /// exactly as before the field existed, so that older peers still read the reply).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        held: Option<u32>,
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
    /// The sender cannot read the file (a disk error), or the receiver cannot write it.
    DiskError,
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
            AbortReason::DiskError => f.write_str("disk error on the other side"),
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
        /// End of the bytes wanted (exclusive; a piece boundary or the file's end): one
        /// source's share of a multi-source download. `None`: to the end of the file (and
        /// encoded exactly as before the field existed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        end: Option<u64>,
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
        /// Chunk bytes (a slice of the received buffer when decoded by [`decode_bytes`](super::decode_bytes)).
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
    /// A request with the proof that its sender receives at its address: `body` is the
    /// request (one of the kinds [`Message::needs_proof`] names), encoded without envelope.
    Validated {
        /// From an earlier [`Message::Retry`] or [`Message::RetryTransfer`].
        token: Token,
        /// The request.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// Answer to a request without a valid token: send it again, [`Message::Validated`] with
    /// `token`. Small: an address that has not proven itself gets nothing larger than it sent.
    Retry {
        /// The request.
        request: RequestId,
        /// Proof for the requester's address.
        token: Token,
    },
    /// [`Message::Retry`] for a transfer's `Request`.
    RetryTransfer {
        /// The transfer.
        transfer: TransferId,
        /// Proof for the requester's address.
        token: Token,
    },
    /// Anyone → peer: the index entry of file `file` (all a download needs: no listing).
    EntryRequest {
        /// Reply correlation.
        request: RequestId,
        /// Which file.
        file: FileId,
    },
    /// Peer → anyone: that entry (`None`: no such file in the index now).
    EntryReply {
        /// Correlation.
        request: RequestId,
        /// The entry.
        entry: Option<IndexEntry>,
        /// The entry is a download in progress: only the pieces a [`Message::Have`] names are
        /// served. `false` (a whole file) is encoded exactly as before the field existed.
        #[serde(default, skip_serializing_if = "is_false")]
        partial: bool,
    },
    /// Anyone → tracker: introduce me to the UDP peer `name` (hole punching: see
    /// [`crate::punch`]). An extension of v1: a tracker that predates it does not answer.
    Introduce {
        /// Reply correlation; also the nonce of the punch's probes.
        request: RequestId,
        /// The peer to reach.
        name: String,
    },
    /// Tracker → asker: the address the tracker sees `name`'s datagrams come from (its NAT's
    /// public mapping), which was sent an [`Message::Introduction`]; `None`: no live UDP peer
    /// of that name.
    Introduced {
        /// Correlation.
        request: RequestId,
        /// The peer's public address.
        peer: Option<SocketAddr>,
    },
    /// Tracker → registered peer: `peer` (the address the tracker sees it at) wants to reach
    /// you: send it a few [`Message::Probe`]s with `nonce`.
    Introduction {
        /// The asker's `Introduce` request id.
        nonce: u64,
        /// The asker's public address.
        peer: SocketAddr,
    },
    /// Peer → peer: a hole-punching datagram (opens the sender's NAT toward the receiver).
    Probe {
        /// The `Introduce` request id it answers.
        nonce: u64,
    },
    /// Sender → receiver: every upload slot is taken, and `transfer`'s `Request` waits in
    /// line behind `ahead` others; it is served in turn (an `Accept`) while the receiver
    /// keeps asking (its `Request` again, about every second). A full line is `Busy`.
    Queued {
        /// The transfer that waits.
        transfer: TransferId,
        /// Requests served before it.
        ahead: u32,
    },
    /// Peer → tracker: the peer registered as `name` (from this address) shares content with
    /// these BLAKE3 hashes. `first`: the first batch of a new announcement, which replaces
    /// everything announced before; later batches add to it.
    Announce {
        /// Reply correlation.
        request: RequestId,
        /// Registered name.
        name: String,
        /// Starts a new announcement.
        first: bool,
        /// Content hashes.
        hashes: BoundedVec<ContentHash, MAX_ANNOUNCE_HASHES>,
    },
    /// Tracker → peer: the announcement is taken; `held` hashes of it are kept (a tracker
    /// keeps at most `limit` per peer).
    Announced {
        /// Correlation.
        request: RequestId,
        /// Hashes kept for this peer now.
        held: u32,
        /// Most hashes kept for one peer.
        limit: u32,
    },
    /// Anyone → tracker: which live peers share content `hash`? Page `page` of them.
    WhoHas {
        /// Reply correlation.
        request: RequestId,
        /// The content.
        hash: ContentHash,
        /// Zero-based page.
        page: u32,
    },
    /// Tracker → anyone: one page of the live peers that announced `hash`.
    Holders {
        /// Correlation.
        request: RequestId,
        /// The content.
        hash: ContentHash,
        /// This page.
        page: u32,
        /// Number of pages.
        pages: u32,
        /// The peers of this page.
        peers: BoundedVec<PeerInfo, MAX_LIST_ITEMS>,
    },
    /// Anyone → peer: the index entry of the file with content `hash` (what a multi-source
    /// download needs of each source, without its listing); answered with `EntryReply`
    /// (`None`: no such content shared now). An extension of v1.
    EntryByHash {
        /// Reply correlation.
        request: RequestId,
        /// The content.
        hash: ContentHash,
    },
    /// Anyone → peer: which pieces of content `hash` do you serve, from piece `first` on?
    /// (What a multi-source download asks of a source that is itself downloading.) Answered
    /// with [`Message::Have`]. An extension of v1.
    HaveRequest {
        /// Reply correlation.
        request: RequestId,
        /// The content.
        hash: ContentHash,
        /// First piece asked about (a multiple of 8).
        first: u32,
    },
    /// Peer → anyone: the pieces of content `hash` it serves, one bit per piece from piece
    /// `first` on (bit `i % 8` of byte `i / 8` is piece `first + i`), at most
    /// [`MAX_HAVE_BYTES`] bytes; a whole file's holder sets them all.
    Have {
        /// Correlation.
        request: RequestId,
        /// The content.
        hash: ContentHash,
        /// Number of pieces of the content.
        pieces: u32,
        /// The piece of the first bit.
        first: u32,
        /// The bits.
        #[serde(with = "serde_bytes")]
        bits: Vec<u8>,
    },
    /// Anyone → tracker: relay my datagrams to the peer `name`, and its to me (for a peer
    /// that cannot be reached otherwise: behind a symmetric NAT, UDP blocked, a TCP peer
    /// behind a NAT). Answered with [`Message::RelayOpened`] or an `Error` saying why not
    /// (no such peer, the relay is off or full). An extension of v1.
    RelayOpen {
        /// Reply correlation.
        request: RequestId,
        /// The peer.
        name: String,
    },
    /// Peer → tracker: a name request (`Register`, `Heartbeat`, `Unregister`, encoded without
    /// envelope in `body`) signed with the peer's identity key `key` (Ed25519) over the
    /// address token it travels with (see [`crate::identity`]): only the key's holder can
    /// take, keep or give up a name bound to it. Sent inside [`Message::Validated`]; a bare
    /// one is answered with a `Retry`. An extension of v1.
    Signed {
        /// The Ed25519 public key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The signature of the token and `body`.
        #[serde(with = "serde_bytes")]
        sig: Vec<u8>,
        /// The request.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// Tracker → asker: the relay session to `name`: send it [`Message::Relayed`] datagrams
    /// with `session`; the tracker forwards them to the peer, and the peer's back.
    RelayOpened {
        /// Correlation.
        request: RequestId,
        /// The session (chosen by the relay, unguessable).
        session: u64,
    },
    /// Either end ↔ relay: one datagram of relay session `session` (`payload`, an encoded
    /// message). The relay forwards it to the other end, from its own address.
    Relayed {
        /// The session.
        session: u64,
        /// The datagram carried.
        #[serde(with = "super::decode::payload")]
        payload: Bytes,
    },
    /// Anyone → tracker: the live peer `name` and the identity key its name is bound to
    /// (what `get NAME ID` needs, without paging through the whole listing). Answered with
    /// [`Message::Found`]. An extension of v1.
    Lookup {
        /// Reply correlation.
        request: RequestId,
        /// The peer's name.
        name: String,
    },
    /// Tracker → asker: the peer asked for (`None`: nobody of that name is live) and the
    /// Ed25519 key its name is bound to (`None`: it proved no key, or the binding expired).
    Found {
        /// Correlation.
        request: RequestId,
        /// The peer, as a listing shows it.
        peer: Option<PeerInfo>,
        /// The key (32 bytes).
        #[serde(with = "serde_bytes")]
        key: Option<Vec<u8>>,
    },
    /// Requester → server it holds no token of: a request that may be answered before the
    /// requester proved its address ([`Message::answerable_at_once`]), padded so that the
    /// answer is at most three times its size (QUIC's anti-amplification rule). Answered with
    /// [`Message::Answer`], or with a `Retry` when the answer would be larger. An extension
    /// of v1: a server that predates it drops it, and the requester's next attempt goes
    /// without it.
    Initial {
        /// The request, encoded without envelope.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
        /// Zeros, to [`INITIAL_SIZE`] bytes in all.
        #[serde(with = "serde_bytes")]
        pad: Vec<u8>,
    },
    /// Server → requester: the answer to its [`Message::Initial`], and a token for its next
    /// requests (as a `Retry` would have given it).
    Answer {
        /// The requester's token.
        token: Token,
        /// The answer, encoded without envelope.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
}

/// Bytes of the body and padding of a [`Message::Initial`] at least: three times this holds
/// any answer that fits a control message ([`CONTROL_BUDGET`](super::CONTROL_BUDGET)) with
/// its envelope.
pub const INITIAL_SIZE: usize = 420;

/// Largest answer a [`Message::Answer`] carries.
pub const MAX_ANSWER_BODY: usize = 2048;

/// Bytes a [`Message::Relayed`] adds around the datagram it carries, at most.
pub const RELAY_OVERHEAD: usize = 32;

/// Most bytes of piece bits in one [`Message::Have`] (4,096 pieces: 1 GiB of 256 KiB pieces).
pub const MAX_HAVE_BYTES: usize = 512;

/// Whether `b` is false (a trailing flag left out of the encoding when it is).
fn is_false(b: &bool) -> bool {
    !*b
}

/// Most hashes in one [`Message::Announce`] (it must fit a [`Message::Validated`] body).
pub const MAX_ANNOUNCE_HASHES: usize = 24;

/// Largest request a [`Message::Validated`] carries.
pub const MAX_VALIDATED_BODY: usize = 1024;

/// `$then` with `$id` bound to the `request` field of a request message `$msg` (by reference
/// or mutably, as `$msg` is), `None` for any other message: the one list of the requests
/// that carry an id.
macro_rules! request_field {
    ($msg:expr, $id:ident => $then:expr) => {
        match $msg {
            Message::Register { request: $id, .. }
            | Message::Heartbeat { request: $id, .. }
            | Message::Unregister { request: $id, .. }
            | Message::ListPeers { request: $id, .. }
            | Message::IndexRequest { request: $id, .. }
            | Message::EntryRequest { request: $id, .. }
            | Message::EntryByHash { request: $id, .. }
            | Message::HaveRequest { request: $id, .. }
            | Message::RelayOpen { request: $id, .. }
            | Message::Lookup { request: $id, .. }
            | Message::PieceRequest { request: $id, .. }
            | Message::Introduce { request: $id, .. }
            | Message::Announce { request: $id, .. }
            | Message::WhoHas { request: $id, .. } => $then,
            _ => None,
        }
    };
}

impl Message {
    /// Whether a sender must prove its address before this request is served: requests
    /// whose answer is larger than themselves, or that take a slot or a name.
    pub fn needs_proof(&self) -> bool {
        matches!(
            self,
            Message::Register { .. }
                | Message::Heartbeat { .. }
                | Message::Unregister { .. }
                | Message::ListPeers { .. }
                | Message::IndexRequest { .. }
                | Message::PieceRequest { .. }
                | Message::EntryRequest { .. }
                | Message::Request { .. }
                | Message::Introduce { .. }
                | Message::Announce { .. }
                | Message::WhoHas { .. }
                | Message::EntryByHash { .. }
                | Message::HaveRequest { .. }
                | Message::RelayOpen { .. }
                | Message::Lookup { .. }
                | Message::Signed { .. }
        )
    }

    /// Whether a server answers this request, sent as [`Message::Initial`], before its sender
    /// proved its address: the lookups whose answer is one control message, and that take
    /// no slot or name; and `Introduce`, whose third party (the peer introduced, within its
    /// limits) sends the asker [`PROBES_PER_INTRODUCTION`](crate::endpoint::punch::PROBES_PER_INTRODUCTION)
    /// probes of a few dozen bytes: with the answer, still within three times the padded
    /// request. Asked with the lookup, it saves a hole punch its round trip.
    pub fn answerable_at_once(&self) -> bool {
        matches!(
            self,
            Message::ListPeers { .. }
                | Message::Lookup { .. }
                | Message::Introduce { .. }
                | Message::WhoHas { .. }
                | Message::IndexRequest { .. }
                | Message::PieceRequest { .. }
                | Message::EntryRequest { .. }
                | Message::EntryByHash { .. }
                | Message::HaveRequest { .. }
        )
    }

    /// The id of this request (`None`: not a request that carries one).
    pub fn request_id(&self) -> Option<RequestId> {
        request_field!(self, request => Some(*request))
    }

    /// The id of this request, to set (`None`: not a request that carries one).
    pub fn request_id_mut(&mut self) -> Option<&mut RequestId> {
        request_field!(self, request => Some(request))
    }

    /// This request as a padded [`Message::Initial`].
    pub fn initial(&self) -> Message {
        let body = rmp_serde::to_vec(self).expect("encoding to a Vec never fails");
        let pad = vec![0; INITIAL_SIZE.saturating_sub(body.len())];
        Message::Initial { body, pad }
    }

    /// The request a [`Message::Initial`] carries (one [`answerable_at_once`](Self::answerable_at_once)),
    /// and the size of the body and padding that came with it.
    pub fn open_initial(body: &[u8], pad: &[u8]) -> Result<(Message, usize), DecodeError> {
        let msg = Message::open_validated(body)?;
        if !msg.answerable_at_once() {
            return Err(DecodeError::Limit { field: "body" });
        }
        Ok((msg, body.len() + pad.len()))
    }

    /// The answer to an [`Message::Initial`] of `initial` bytes, with `token`: `None` when it
    /// would be more than three times that.
    pub fn answer_initial(&self, token: Token, initial: usize) -> Option<Message> {
        let body = rmp_serde::to_vec(self).expect("encoding to a Vec never fails");
        let answer = Message::Answer { token, body };
        (answer.encode().len() <= 3 * initial).then_some(answer)
    }

    /// [`answer_initial`](Self::answer_initial), or a `Retry` with `token` when the answer is
    /// too large (the requester then asks again with the token).
    pub fn answer_initial_or_retry(&self, token: Token, initial: usize) -> Message {
        match (self.answer_initial(token, initial), self.answered_request()) {
            (Some(answer), _) => answer,
            (None, Some(request)) => Message::Retry { request, token },
            (None, None) => self.clone(), // not an answer: never wrapped
        }
    }

    /// The request this message answers, if it is an answer to one.
    pub fn answered_request(&self) -> Option<RequestId> {
        match self {
            Message::RegisterReply { request, .. }
            | Message::UnregisterReply { request }
            | Message::PeerList { request, .. }
            | Message::IndexPage { request, .. }
            | Message::EntryReply { request, .. }
            | Message::Have { request, .. }
            | Message::RelayOpened { request, .. }
            | Message::Found { request, .. }
            | Message::PieceHashes { request, .. }
            | Message::Introduced { request, .. }
            | Message::Announced { request, .. }
            | Message::Holders { request, .. }
            | Message::Error { request, .. } => Some(*request),
            _ => None,
        }
    }

    /// The answer a [`Message::Answer`] carries: a message that answers a request (not
    /// another wrapper), within the limits.
    pub fn open_answer(body: &[u8]) -> Result<Message, DecodeError> {
        if body.len() > MAX_ANSWER_BODY {
            return Err(DecodeError::Limit { field: "body" });
        }
        let msg: Message =
            rmp_serde::from_slice(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if msg.needs_proof()
            || matches!(
                msg,
                Message::Validated { .. }
                    | Message::Initial { .. }
                    | Message::Answer { .. }
                    | Message::Relayed { .. }
            )
        {
            return Err(DecodeError::Limit { field: "body" });
        }
        msg.validate()?;
        Ok(msg)
    }

    /// This request, [`Message::Validated`] with `token` (as is without one).
    pub fn with_token(&self, token: Option<Token>) -> Message {
        match token {
            Some(token) if self.needs_proof() => Message::Validated {
                token,
                body: rmp_serde::to_vec(self).expect("encoding to a Vec never fails"),
            },
            _ => self.clone(),
        }
    }

    /// The request a [`Message::Validated`] carries: one that [`needs_proof`](Self::needs_proof),
    /// within the limits.
    pub fn open_validated(body: &[u8]) -> Result<Message, DecodeError> {
        if body.len() > MAX_VALIDATED_BODY {
            return Err(DecodeError::Limit { field: "body" });
        }
        let msg: Message =
            rmp_serde::from_slice(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if !msg.needs_proof() {
            return Err(DecodeError::Limit { field: "body" });
        }
        msg.validate()?;
        Ok(msg)
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
            | Message::Unregister { name, .. }
            | Message::Introduce { name, .. }
            | Message::RelayOpen { name, .. }
            | Message::Lookup { name, .. }
            | Message::Announce { name, .. } => check(name.len() <= MAX_NAME_LEN, "name"),
            Message::Found { peer, key, .. } => {
                check(
                    peer.as_ref().is_none_or(|p| p.name.len() <= MAX_NAME_LEN),
                    "peer.name",
                )?;
                check(key.as_ref().is_none_or(|k| k.len() == 32), "key")
            }
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
            }
            | Message::Holders {
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
            Message::Request {
                offset,
                end: Some(end),
                ..
            } => check(offset < end, "end"),
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
            Message::Relayed { payload, .. } => check(
                payload.len() <= crate::wire::MAX_MESSAGE - RELAY_OVERHEAD,
                "relayed payload",
            ),
            Message::Validated { body, .. } => check(body.len() <= MAX_VALIDATED_BODY, "body"),
            Message::Initial { body, pad } => check(
                body.len() <= MAX_VALIDATED_BODY && pad.len() <= INITIAL_SIZE,
                "initial",
            ),
            Message::Answer { body, .. } => check(body.len() <= MAX_ANSWER_BODY, "body"),
            Message::Signed { key, sig, body } => check(
                key.len() == 32 && sig.len() == 64 && body.len() <= MAX_VALIDATED_BODY,
                "signed",
            ),
            Message::EntryReply {
                entry: Some(entry), ..
            } => check(entry.path.len() <= MAX_PATH_LEN, "entry.path"),
            Message::Have {
                pieces,
                first,
                bits,
                ..
            } => check(
                bits.len() <= MAX_HAVE_BYTES
                    && first.is_multiple_of(8)
                    && u64::from(*first) + 8 * bits.len() as u64 <= u64::from(*pieces) + 7,
                "have bits",
            ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::decode;

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
}

#[cfg(test)]
mod held_tests {
    use super::*;
    use crate::wire::decode;

    /// An `Accepted` without `held` is encoded as before the field existed (older peers read
    /// it, and a reply from an older tracker decodes as `held: None`); with it, it
    /// round-trips.
    #[test]
    fn accepted_without_held_keeps_the_old_encoding() {
        let reply = |held| Message::RegisterReply {
            request: RequestId(9),
            outcome: RegisterOutcome::Accepted {
                ttl_ms: 30_000,
                heartbeat_ms: 10_000,
                held,
            },
        };
        let (old, new) = (reply(None), reply(Some(20_000)));
        assert_eq!(decode(&old.encode()), Ok(old.clone()));
        assert_eq!(decode(&new.encode()), Ok(new.clone()));
        // The old encoding, as a tracker without the field wrote it: a two-field array.
        #[derive(Serialize)]
        enum OldOutcome {
            Accepted { ttl_ms: u64, heartbeat_ms: u64 },
        }
        let old_outcome = OldOutcome::Accepted {
            ttl_ms: 30_000,
            heartbeat_ms: 10_000,
        };
        let outcome = match &old {
            Message::RegisterReply { outcome, .. } => outcome,
            _ => unreachable!(),
        };
        assert_eq!(
            rmp_serde::to_vec(outcome).unwrap(),
            rmp_serde::to_vec(&old_outcome).unwrap(),
            "byte for byte"
        );
        let read: RegisterOutcome =
            rmp_serde::from_slice(&rmp_serde::to_vec(&old_outcome).unwrap()).unwrap();
        assert_eq!(&read, outcome);
        // `held` adds its value (a u16 here) to the reply.
        assert_eq!(new.encode().len(), old.encode().len() + 3);
    }
}

#[cfg(test)]
mod range_tests {
    use super::*;
    use crate::wire::decode;

    /// A whole-file `Request` is encoded as before ranges existed (no fourth field), so
    /// older peers still read it; a range round-trips.
    #[test]
    fn requests_without_an_end_keep_the_old_encoding() {
        let request = |end| Message::Request {
            transfer: TransferId(7),
            file: FileId(3),
            offset: 4096,
            end,
        };
        let (whole, range) = (request(None), request(Some(8192)));
        assert_eq!(decode(&whole.encode()), Ok(whole.clone()));
        assert_eq!(decode(&range.encode()), Ok(range.clone()));
        // The range's encoding is the whole request's plus the end (one u16 here).
        assert_eq!(range.encode().len(), whole.encode().len() + 3);
        assert_eq!(
            decode(&request(Some(4096)).encode()),
            Err(DecodeError::Limit { field: "end" })
        );
    }
}

#[cfg(test)]
mod compat_tests {
    use serde::{Deserialize, Serialize};

    /// What the wire's optional trailing fields (`Request::end`, `Accepted::held`) rely on, on
    /// two stand-in enums: absent, the field is not encoded (the bytes of the older type);
    /// present, an older decoder refuses the message instead of misreading it.
    #[test]
    fn an_optional_trailing_field_is_invisible_when_absent_and_refused_by_old_decoders() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        enum Old {
            Request { transfer: u64, offset: u64 },
        }
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        enum New {
            Request {
                transfer: u64,
                offset: u64,
                #[serde(default, skip_serializing_if = "Option::is_none")]
                end: Option<u64>,
            },
        }
        let old = rmp_serde::to_vec(&Old::Request {
            transfer: 7,
            offset: 9,
        })
        .unwrap();
        let whole = New::Request {
            transfer: 7,
            offset: 9,
            end: None,
        };
        assert_eq!(rmp_serde::to_vec(&whole).unwrap(), old);
        assert_eq!(rmp_serde::from_slice::<New>(&old).unwrap(), whole);
        let ranged = rmp_serde::to_vec(&New::Request {
            transfer: 7,
            offset: 9,
            end: Some(11),
        })
        .unwrap();
        assert!(rmp_serde::from_slice::<Old>(&ranged).is_err());
    }
}

#[cfg(test)]
mod relay_tests {
    use super::*;
    use crate::wire::{decode, MAX_MESSAGE};

    /// A relayed datagram of the largest size a transport carries still fits one message
    /// with [`RELAY_OVERHEAD`] to spare, and one byte more is refused by name.
    #[test]
    fn a_relayed_datagram_costs_at_most_the_overhead() {
        for len in [0, 1, 200, 1_452, 65_000, MAX_MESSAGE - RELAY_OVERHEAD] {
            let m = Message::Relayed {
                session: u64::MAX,
                payload: Bytes::from(vec![7u8; len]),
            };
            let bytes = m.encode();
            assert!(
                bytes.len() <= len + RELAY_OVERHEAD,
                "{len}: {}",
                bytes.len()
            );
            assert_eq!(decode(&bytes), Ok(m));
        }
        // Told apart from every other message by a look at its first bytes.
        let relayed = Message::Relayed {
            session: 3,
            payload: Bytes::from_static(b"x"),
        };
        assert!(crate::wire::is_relayed(&relayed.encode()));
        for other in crate::testing::sample_messages() {
            assert_eq!(
                crate::wire::is_relayed(&other.encode()),
                matches!(other, Message::Relayed { .. }),
                "{other:?}"
            );
        }
        let over = Message::Relayed {
            session: 1,
            payload: Bytes::from(vec![0u8; MAX_MESSAGE - RELAY_OVERHEAD + 1]),
        };
        assert!(matches!(
            decode(&over.encode()),
            Err(DecodeError::Limit { .. }) | Err(DecodeError::TooLarge(_))
        ));
    }
}
