//! The reliable chunk/ACK/FIN transfer protocol, as two sans-IO state machines.
//!
//! ```text
//! receiver                         sender
//!   Request(file, offset) ──────▶
//!                      ◀─────── Accept(size, chunk_size, hash)
//!                      ◀─────── Data(seq) × window
//!   Ack(cumulative, sack, window) ─▶      (RTO / fast retransmit repair losses)
//!                      ◀─────── Fin(size, hash)      once every chunk is acknowledged
//!   FinAck ─────────────────────▶
//! ```
//!
//! Both machines follow the same polling discipline (see quinn-proto's `Connection`): feed
//! inputs with `handle_message`/`handle_timeout`, then drain `poll_transmit` and `poll_event`
//! until `None`, then sleep until `poll_timeout`. They never read a clock, a socket or a file:
//! the sender asks its driver for chunk bytes by offset, the receiver hands in-order bytes to
//! its driver to append. Both take `handle_message(now, &Message)`, `handle_timeout(now)`,
//! `poll_transmit(now)`, `poll_timeout()` and `poll_event()`.
//!
//! A pair driven by hand over a perfect link (what a driver does with sockets, a file and a
//! clock):
//!
//! ```
//! use std::time::{Duration, Instant};
//! use p2p_proto::transfer::{
//!     ChunkReceiver, ChunkSender, ReceiverConfig, ReceiverEvent, SenderConfig, SenderTransmit,
//! };
//! use p2p_proto::wire::{ContentHash, FileId, Message, TransferId};
//!
//! let file: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
//! let (size, hash, id) = (file.len() as u64, ContentHash::of(&file), TransferId(1));
//! let mut now = Instant::now();
//! let config = SenderConfig { chunk_size: 1000, ..SenderConfig::default() };
//! let mut rx = ChunkReceiver::new(now, id, FileId(7), Some((size, hash)), ReceiverConfig::default());
//! let mut tx = ChunkSender::new(now, id, size, hash, 0, config);
//! let mut written = Vec::new();
//! let mut finished = false;
//! while !(finished && tx.is_done()) {
//!     while let Some(m) = rx.poll_transmit(now) {
//!         tx.handle_message(now, &m); // the Request, then ACKs and the FIN-ACK
//!     }
//!     while let Some(t) = tx.poll_transmit(now) {
//!         let m = match t {
//!             SenderTransmit::Control(m) => m, // Accept, Fin
//!             // The driver reads the chunk from the file.
//!             SenderTransmit::Chunk { seq, offset, len } => Message::Data {
//!                 transfer: id,
//!                 seq,
//!                 payload: file[offset as usize..][..len as usize].to_vec().into(),
//!             },
//!         };
//!         rx.handle_message(now, &m);
//!     }
//!     while let Some(e) = rx.poll_event() {
//!         match e {
//!             ReceiverEvent::Write(bytes) => written.extend_from_slice(&bytes), // to the file
//!             ReceiverEvent::Finished { .. } => finished = true, // BLAKE3 matched
//!             ReceiverEvent::Failed(e) => panic!("{e}"),
//!             _ => {}
//!         }
//!     }
//!     while tx.poll_event().is_some() {}
//!     // The clock is the driver's: here, a millisecond per round.
//!     now += Duration::from_millis(1);
//!     if rx.poll_timeout().is_some_and(|t| t <= now) {
//!         rx.handle_timeout(now);
//!     }
//!     if tx.poll_timeout().is_some_and(|t| t <= now) {
//!         tx.handle_timeout(now);
//!     }
//! }
//! assert_eq!(written, file);
//! ```
//!
//! # Timers
//!
//! | machine | timer | value | on expiry |
//! |---|---|---|---|
//! | both | idle (`idle_timeout`) | [`DEFAULT_IDLE_TIMEOUT`], 15 s | fail with [`TransferError::Timeout`], `Abort(Timeout)` |
//! | sender | retransmission (`initial_rto`, `min_rto`, `max_rto`) | 1 s before a sample, then SRTT + 4 RTTVAR within 200 ms..3 s; doubles on each expiry, up to `max_rto` | what is unacknowledged goes again |
//! | sender | loss detection | a reordering window: SRTT / 4, at least `MIN_REORDER_WINDOW` (2 ms) | chunks sent that long before an acknowledged one are lost and resent |
//! | sender | tail probe | 2 SRTT + `PROBE_ACK_DELAY` (5 ms) once nothing new may be sent | send the last chunk again to draw an ACK |
//! | sender | pacing | bursts every `TARGET_BURST_INTERVAL` (2 ms), at most `MAX_BURST_INTERVAL` (10 ms) | release the next burst |
//! | receiver | request retry (`request_retry`) | 500 ms (four measured round trips when the driver knows one), doubling up to `MAX_REQUEST_WAIT` (4 s) | send the `Request` again |
//! | receiver | re-request | at most every `REREQUEST_EVERY` (100 ms) | chunks without an `Accept`: ask again |
//! | receiver | delayed ACK (`ack_delay`) | 5 ms | send the pending ACK |
//! | receiver | re-ACK (`reack`) | twice the request's round trip, within `MIN_REACK`..`MAX_REACK` (10 ms..1 s), doubling while nothing comes | send the last ACK again |
//!
//! The endpoint's own timers (requests, heartbeat, lingering answers) are listed in
//! [`crate::endpoint`].

pub mod congestion;
mod in_flight;
pub mod pacing;
mod pieces;
mod receiver;
pub mod rtt;
mod sender;

use std::time::Duration;

pub use pieces::{PieceHasher, PieceJob, PieceTable, MAX_OFFLOADED_PIECE, MIN_PIECE_SIZE};
pub use receiver::{
    ChunkReceiver, ReceiverConfig, ReceiverEvent, DEFAULT_MIN_RATE, DEFAULT_MIN_RATE_WINDOW,
    DEFAULT_WINDOW, DEFAULT_WINDOW_BYTES, MAX_RETRIES_FOLLOWED, QUEUED_RETRY,
};
pub use sender::{ChunkSender, SenderConfig, SenderEvent, SenderStats, SenderTransmit};

use crate::wire::AbortReason;

/// Why a transfer failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TransferError {
    /// The other side stopped answering.
    #[error("{phase} for {after:?}")]
    Timeout {
        /// What was awaited.
        phase: TimeoutPhase,
        /// The idle timeout that passed.
        after: Duration,
    },
    /// The other side aborted.
    #[error("aborted by the other side: {0}")]
    Aborted(AbortReason),
    /// The received bytes do not match the announced hash.
    #[error("content hash mismatch: the received file is not the one announced")]
    HashMismatch,
    /// The sender announced something other than what was expected (e.g. the index hash).
    #[error("the file changed on the peer since it was listed ({0})")]
    Changed(Change),
    /// A piece failed its hash: everything before it is verified and kept.
    #[error("piece {piece} failed verification (corrupted in transit or changed on the sender)")]
    PieceMismatch {
        /// Index of the bad piece.
        piece: u64,
    },
    /// The other side (or the caller) broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(Violation),
    /// We gave up locally (shutdown or cancel), telling the other side why.
    #[error("cancelled: {0}")]
    Cancelled(AbortReason),
}

/// What a transfer waited for when it timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// A receiver's `Request` was never answered.
    Request,
    /// A receiver heard nothing more from its sender.
    Data,
    /// A sender heard nothing from its receiver (no ACK, no FIN-ACK).
    Acks,
    /// A receiver got less than `min_rate` new bytes per second from its sender over a
    /// whole span ([`ReceiverConfig::min_rate`](crate::transfer::ReceiverConfig)).
    TooSlow {
        /// The minimum, in bytes per second.
        min_rate: u64,
    },
}

impl std::fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimeoutPhase::Request => f.write_str("no answer from the peer"),
            TimeoutPhase::Data => f.write_str("the peer stopped sending"),
            TimeoutPhase::Acks => f.write_str("receiver silent"),
            TimeoutPhase::TooSlow { min_rate } => {
                write!(f, "the peer sent less than {min_rate} bytes/s")
            }
        }
    }
}

/// How what a sender announced differs from what the receiver expected.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Change {
    /// Its `Accept` names another size or hash than the listing did.
    #[error("expected {listed} bytes, sender announces {announced}")]
    Announced {
        /// Size in the listing.
        listed: u64,
        /// Size in the `Accept`.
        announced: u64,
    },
    /// The piece table fetched before does not add up to the announced hash.
    #[error("the piece table does not add up to the file's hash")]
    PieceTable,
}

/// A broken protocol rule.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A resume (a receiver started at an offset) not at a piece boundary of a valid table.
    #[error("a resume must start at a verified piece boundary")]
    ResumeOffBoundary,
    /// A resume without the expected size and hash (the kept prefix is not re-hashed).
    #[error("a resume needs the expected size and hash")]
    ResumeUnverifiable,
    /// An `Accept` with a chunk size of 0 or above the receiver's maximum.
    #[error("chunk size {0} out of range")]
    ChunkSize(u32),
    /// An `Accept` for a file shorter than the resume point.
    #[error("resume point beyond the end of the file")]
    ResumeBeyondEnd,
}

/// Default idle timeout: a transfer whose peer says nothing this long fails.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Chunks in `size` bytes at `chunk_size` bytes per chunk.
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size.max(1)))
}

#[cfg(test)]
mod tests;
