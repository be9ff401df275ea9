//! `ChunkReceiver`: the receiving side of one transfer.
//!
//! Chunks that arrive in order are handed straight to the driver (`ReceiverEvent::Write`) and
//! fed to an incremental BLAKE3 hasher; chunks that arrive early wait in a buffer bounded by the
//! advertised window. So memory is O(window) and the file is written sequentially.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::{chunk_count, TransferError, DEFAULT_IDLE_TIMEOUT};
use crate::wire::{
    AbortReason, BoundedVec, ContentHash, FileId, Message, TransferId, MAX_SACK_RANGES,
};

/// Tunables of a [`ChunkReceiver`].
#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    /// Chunks accepted beyond the next expected one (the advertised window).
    pub window: u32,
    /// Largest chunk size accepted from a sender.
    pub max_chunk_size: u32,
    /// First wait before the request is sent again (doubles each time).
    pub request_retry: Duration,
    /// Give up when the sender says nothing this long.
    pub idle_timeout: Duration,
    /// Acknowledge at least every this many in-order chunks.
    pub ack_every: u32,
    /// Longest an in-order chunk waits for its ACK.
    pub ack_delay: Duration,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            window: 1024,
            max_chunk_size: crate::wire::MAX_CHUNK as u32,
            request_retry: Duration::from_millis(500),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            ack_every: 2,
            ack_delay: Duration::from_millis(5),
        }
    }
}

/// What happened, for the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// The sender accepted: this many bytes are coming, with this hash.
    Accepted {
        /// File size.
        size: u64,
        /// Announced BLAKE3.
        hash: ContentHash,
        /// Bytes per chunk.
        chunk_size: u32,
    },
    /// The next bytes of the file, in order: append them.
    Write(Vec<u8>),
    /// Every byte arrived and the hash matches.
    Finished {
        /// Total bytes received in this transfer (a resumed transfer counts only its part).
        received: u64,
        /// Verified hash.
        hash: ContentHash,
    },
    /// The transfer failed; nothing more will come.
    Failed(TransferError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Requesting { next_retry: Instant, wait: Duration },
    Receiving,
    Done,
}

/// The receiving side of one transfer.
#[derive(Debug)]
pub struct ChunkReceiver {
    transfer: TransferId,
    file: FileId,
    start_chunk: u64,
    expected: Option<(u64, ContentHash)>,
    config: ReceiverConfig,
    state: State,
    size: u64,
    chunk_size: u32,
    hash: ContentHash,
    total: u64,
    next_seq: u64,
    early: BTreeMap<u64, Vec<u8>>,
    hasher: blake3::Hasher,
    received: u64,
    unacked: u32,
    ack_now: bool,
    ack_at: Option<Instant>,
    last_heard: Instant,
    out: VecDeque<Message>,
    events: VecDeque<ReceiverEvent>,
}

impl ChunkReceiver {
    /// Starts a download of `file` as `transfer`. `expected` (size, hash), when known from the
    /// index, must match what the sender announces. `resume` continues from `start_chunk` with
    /// a hasher already fed the bytes before it. The first transmit is the `Request`.
    pub fn new(
        now: Instant,
        transfer: TransferId,
        file: FileId,
        expected: Option<(u64, ContentHash)>,
        config: ReceiverConfig,
    ) -> Self {
        Self::resume(
            now,
            transfer,
            file,
            expected,
            0,
            blake3::Hasher::new(),
            config,
        )
    }

    /// Like [`ChunkReceiver::new`], continuing at `start_chunk`; `hasher` has been fed the
    /// file's first `start_chunk` chunks.
    pub fn resume(
        now: Instant,
        transfer: TransferId,
        file: FileId,
        expected: Option<(u64, ContentHash)>,
        start_chunk: u64,
        hasher: blake3::Hasher,
        config: ReceiverConfig,
    ) -> Self {
        let mut r = ChunkReceiver {
            transfer,
            file,
            start_chunk,
            expected,
            state: State::Requesting {
                next_retry: now + config.request_retry,
                wait: config.request_retry,
            },
            config,
            size: 0,
            chunk_size: 0,
            hash: ContentHash([0; 32]),
            total: 0,
            next_seq: start_chunk,
            early: BTreeMap::new(),
            hasher,
            received: 0,
            unacked: 0,
            ack_now: false,
            ack_at: None,
            last_heard: now,
            out: VecDeque::new(),
            events: VecDeque::new(),
        };
        r.out.push_back(r.request());
        r
    }

    /// The transfer's id.
    pub fn transfer(&self) -> TransferId {
        self.transfer
    }

    /// True once finished or failed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes received in order in this transfer so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Chunks held out of order (bounded by the window).
    pub fn buffered_chunks(&self) -> usize {
        self.early.len()
    }

    fn request(&self) -> Message {
        Message::Request {
            transfer: self.transfer,
            file: self.file,
            start_chunk: self.start_chunk,
        }
    }

    /// Feeds a message from the sender.
    pub fn handle_message(&mut self, now: Instant, msg: Message) {
        match (self.state, msg) {
            (State::Done, Message::Fin { .. }) => {
                // Our FIN-ACK was lost.
                self.out.push_back(Message::FinAck {
                    transfer: self.transfer,
                });
            }
            (State::Done, _) => {}
            (
                State::Requesting { .. },
                Message::Accept {
                    size,
                    chunk_size,
                    hash,
                    ..
                },
            ) => {
                self.last_heard = now;
                if chunk_size == 0 || chunk_size > self.config.max_chunk_size {
                    return self.fail(
                        TransferError::Protocol(format!("chunk size {chunk_size} out of range")),
                        Some(AbortReason::BadRequest),
                    );
                }
                if let Some((esize, ehash)) = self.expected {
                    if esize != size || ehash != hash {
                        return self.fail(
                            TransferError::Changed(format!(
                                "expected {esize} bytes, sender announces {size}"
                            )),
                            Some(AbortReason::Other("file changed since listed".into())),
                        );
                    }
                }
                self.size = size;
                self.chunk_size = chunk_size;
                self.hash = hash;
                self.total = chunk_count(size, chunk_size);
                if self.start_chunk > self.total {
                    return self.fail(
                        TransferError::Protocol("resume point beyond the end of the file".into()),
                        Some(AbortReason::BadRequest),
                    );
                }
                self.state = State::Receiving;
                self.events.push_back(ReceiverEvent::Accepted {
                    size,
                    hash,
                    chunk_size,
                });
            }
            (State::Receiving, Message::Data { seq, payload, .. }) => {
                self.last_heard = now;
                self.on_data(now, seq, payload);
            }
            (State::Receiving, Message::Fin { size, hash, .. }) => {
                self.last_heard = now;
                if self.next_seq < self.total {
                    return; // cannot be: FIN follows the ACK of every chunk; ignore
                }
                let got: ContentHash = self.hasher.finalize().into();
                if size != self.size || hash != self.hash || got != self.hash {
                    return self.fail(TransferError::HashMismatch, Some(AbortReason::HashMismatch));
                }
                self.state = State::Done;
                self.ack_at = None;
                self.out.push_back(Message::FinAck {
                    transfer: self.transfer,
                });
                self.events.push_back(ReceiverEvent::Finished {
                    received: self.received,
                    hash: got,
                });
            }
            (_, Message::Abort { reason, .. }) => {
                self.fail(TransferError::Aborted(reason), None);
            }
            _ => {}
        }
    }

    fn on_data(&mut self, now: Instant, seq: u64, payload: Vec<u8>) {
        if seq >= self.total || payload.len() as u64 != self.chunk_len(seq) {
            return; // not a chunk of this file: drop it like a corrupt datagram
        }
        if seq < self.next_seq || self.early.contains_key(&seq) {
            self.ack_now = true; // duplicate: our ACK may have been lost
            return;
        }
        if seq >= self.next_seq + u64::from(self.config.window) {
            self.ack_now = true; // beyond the window we advertised
            return;
        }
        if seq != self.next_seq {
            self.early.insert(seq, payload);
            self.ack_now = true; // a gap: tell the sender at once
            return;
        }
        self.deliver(payload);
        while let Some(p) = self.early.remove(&self.next_seq) {
            self.deliver(p);
            self.ack_now = true; // a gap closed
        }
        self.unacked += 1;
        if self.unacked >= self.config.ack_every || self.next_seq == self.total {
            self.ack_now = true;
        } else if self.ack_at.is_none() {
            self.ack_at = Some(now + self.config.ack_delay);
        }
    }

    fn deliver(&mut self, payload: Vec<u8>) {
        self.hasher.update(&payload);
        self.received += payload.len() as u64;
        self.next_seq += 1;
        self.events.push_back(ReceiverEvent::Write(payload));
    }

    fn chunk_len(&self, seq: u64) -> u64 {
        let offset = seq * u64::from(self.chunk_size);
        (self.size - offset).min(u64::from(self.chunk_size))
    }

    fn ack(&mut self) -> Message {
        self.unacked = 0;
        self.ack_now = false;
        self.ack_at = None;
        let mut sack: Vec<(u64, u64)> = Vec::new();
        for &seq in self.early.keys() {
            match sack.last_mut() {
                Some((_, end)) if *end == seq => *end += 1,
                _ => {
                    if sack.len() == MAX_SACK_RANGES {
                        break;
                    }
                    sack.push((seq, seq + 1));
                }
            }
        }
        Message::Ack {
            transfer: self.transfer,
            cumulative: self.next_seq,
            sack: BoundedVec(sack),
            window: self.config.window,
        }
    }

    fn fail(&mut self, err: TransferError, tell: Option<AbortReason>) {
        if self.state == State::Done {
            return;
        }
        self.state = State::Done;
        self.ack_at = None;
        self.early.clear();
        if let Some(reason) = tell {
            self.out.push_back(Message::Abort {
                transfer: self.transfer,
                reason,
            });
        }
        self.events.push_back(ReceiverEvent::Failed(err));
    }

    /// Ends the transfer locally; an `Abort` goes to the sender.
    pub fn abort(&mut self, reason: AbortReason) {
        let err = TransferError::Cancelled(reason.to_string());
        self.fail(err, Some(reason));
    }

    /// Call when `poll_timeout` has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Done => {}
            _ if now >= self.last_heard + self.config.idle_timeout => {
                let what = if matches!(self.state, State::Requesting { .. }) {
                    "no answer from the peer"
                } else {
                    "the peer stopped sending"
                };
                self.fail(
                    TransferError::Timeout(format!("{what} for {:?}", self.config.idle_timeout)),
                    Some(AbortReason::Timeout),
                );
            }
            State::Requesting { next_retry, wait } if now >= next_retry => {
                let wait = (wait * 2).min(Duration::from_secs(4));
                self.state = State::Requesting {
                    next_retry: now + wait,
                    wait,
                };
                self.out.push_back(self.request());
            }
            State::Receiving if self.ack_at.is_some_and(|t| now >= t) => {
                self.ack_now = true;
            }
            _ => {}
        }
    }

    /// The next moment `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let idle = self.last_heard + self.config.idle_timeout;
        match self.state {
            State::Done => None,
            State::Requesting { next_retry, .. } => Some(next_retry.min(idle)),
            State::Receiving => Some(self.ack_at.map_or(idle, |a| a.min(idle))),
        }
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        if let Some(m) = self.out.pop_front() {
            return Some(m);
        }
        if self.state == State::Receiving && self.ack_now {
            return Some(self.ack());
        }
        None
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }
}
