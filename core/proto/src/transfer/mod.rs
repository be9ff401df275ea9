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
//! its driver to append.

pub mod congestion;
mod in_flight;
pub mod pacing;
mod pieces;
mod receiver;
pub mod rtt;
mod sender;

use std::time::Duration;

pub use pieces::{PieceHasher, PieceJob, PieceTable, MAX_OFFLOADED_PIECE, MIN_PIECE_SIZE};
pub use receiver::{ChunkReceiver, ReceiverConfig, ReceiverEvent};
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
}

impl std::fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeoutPhase::Request => "no answer from the peer",
            TimeoutPhase::Data => "the peer stopped sending",
            TimeoutPhase::Acks => "receiver silent",
        })
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
