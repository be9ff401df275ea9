//! What the [`Endpoint`](super::Endpoint) hands its driver: datagrams to send, where an
//! incoming message goes, and what became of requests.

use std::net::SocketAddr;

use crate::wire::{ContentHash, FileId, Message, RequestId, TransferId};

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub to: SocketAddr,
    /// The encoded message.
    pub payload: Vec<u8>,
}

/// Where an incoming message goes.
#[derive(Debug)]
pub enum Incoming {
    /// The answer to our request `request`.
    Answer {
        /// The request it answers.
        request: RequestId,
        /// The answer.
        answer: Message,
    },
    /// The index entry of one of our files is asked for (within the sender's rate limit).
    EntryRequest {
        /// Who asks.
        from: SocketAddr,
        /// Its request id, for the answer.
        request: RequestId,
        /// The file.
        file: FileId,
    },
    /// The index entry of the file with some content is asked for (within the sender's rate
    /// limit).
    EntryByHash {
        /// Who asks.
        from: SocketAddr,
        /// Its request id, for the answer.
        request: RequestId,
        /// The content.
        hash: ContentHash,
    },
    /// Which pieces of some content we serve is asked for (within the sender's rate limit).
    HaveRequest {
        /// Who asks.
        from: SocketAddr,
        /// Its request id, for the answer.
        request: RequestId,
        /// The content.
        hash: ContentHash,
        /// First piece asked about.
        first: u32,
    },
    /// A page of our index is asked for (within the sender's rate limit).
    IndexRequest {
        /// Who asks.
        from: SocketAddr,
        /// Its request id, for the answer.
        request: RequestId,
        /// The page.
        page: u32,
    },
    /// Piece hashes of one of our files are asked for (within the sender's rate limit).
    PieceRequest {
        /// Who asks.
        from: SocketAddr,
        /// Its request id, for the answer.
        request: RequestId,
        /// The file.
        file: FileId,
        /// The content the asker expects.
        hash: ContentHash,
        /// First piece wanted.
        first: u32,
    },
    /// A new transfer is asked for and admitted: the driver opens the file, then calls
    /// [`Endpoint::upload_started`] (or [`Endpoint::refuse`]).
    NewUpload {
        /// The receiver.
        from: SocketAddr,
        /// Its transfer id.
        transfer: TransferId,
        /// The file.
        file: FileId,
        /// Where to start.
        offset: u64,
        /// Where to stop (exclusive; `None`: the file's end).
        end: Option<u64>,
    },
    /// A message for the upload `(from, transfer)` in progress (`Request` again, `Ack`,
    /// `FinAck`, `Abort`).
    Upload {
        /// The receiver.
        from: SocketAddr,
        /// The transfer.
        transfer: TransferId,
        /// The message.
        msg: Message,
    },
    /// A message for our download `transfer`, from its sender (`Accept`, `Data`, `Fin`,
    /// `Abort`).
    Download {
        /// The transfer.
        transfer: TransferId,
        /// The message.
        msg: Message,
    },
}

/// What became of requests and the registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Request `request` to `to` had no answer after every attempt.
    NoAnswer {
        /// The request.
        request: RequestId,
        /// Where it went.
        to: SocketAddr,
    },
    /// Upload `transfer` to `to` lost its slot to a new `Request`: its receiver acknowledged
    /// nothing within [`UNPROVEN_GRACE`]. The driver ends it (an `Abort(Busy)`).
    Evicted {
        /// The receiver.
        to: SocketAddr,
        /// The transfer.
        transfer: TransferId,
    },
    /// Upload `transfer` to `to` gave its slot to the line for a turn (see the endpoint's
    /// queue): the driver pauses its sender ([`ChunkSender::pause`]) until
    /// [`Event::Resumed`], or until it ends.
    ///
    /// [`ChunkSender::pause`]: crate::transfer::ChunkSender::pause
    Paused {
        /// The receiver.
        to: SocketAddr,
        /// The transfer.
        transfer: TransferId,
    },
    /// A paused upload has its slot again: the driver resumes its sender.
    Resumed {
        /// The receiver.
        to: SocketAddr,
        /// The transfer.
        transfer: TransferId,
    },
    /// A punch ([`Endpoint::punch`](super::Endpoint::punch)) got through: a probe of the
    /// peer's came from `peer`, whose NAT now lets us in. Talk to it there.
    Punched {
        /// The punch's `Introduce` request.
        request: RequestId,
        /// Where the peer's probe came from.
        peer: SocketAddr,
    },
    /// A punch got nowhere within [`PUNCH_WAIT`](super::punch::PUNCH_WAIT): `silent` (the
    /// tracker, or the peer's public address) did not answer.
    PunchFailed {
        /// The punch's `Introduce` request.
        request: RequestId,
        /// Who stayed silent.
        silent: SocketAddr,
    },
    /// A `Request` that waited in line ([`Message::Queued`]) has its upload slot now (held
    /// already: [`Endpoint::upload_started`](super::Endpoint::upload_started) is done). The
    /// driver opens the file and serves it, or refuses it and ends the upload.
    Admitted {
        /// Who asked.
        from: SocketAddr,
        /// The transfer.
        transfer: TransferId,
        /// The file.
        file: FileId,
        /// From which byte.
        offset: u64,
        /// To which byte (exclusive; `None`: the file's end).
        end: Option<u64>,
    },
    /// The tracker refused a heartbeat.
    HeartbeatRefused {
        /// The tracker.
        tracker: SocketAddr,
        /// Its words.
        reason: String,
    },
}
