//! `ChunkReceiver`: the receiving side of one transfer.
//!
//! Chunks that arrive in order are handed straight to the driver (`ReceiverEvent::Write`) and
//! fed to incremental BLAKE3 hashers; chunks that arrive early wait in a buffer bounded by the
//! advertised window. So memory is O(window) and the file is written sequentially.
//!
//! With a [`PieceTable`], every piece is checked as soon as its last byte arrives
//! (`ReceiverEvent::PieceVerified`), so corruption is caught at the piece and a resumed download
//! trusts exactly the pieces verified before. The table itself is checked at `Accept`: its
//! hashes must add up to the file's BLAKE3 ([`PieceTable::root`]), so verified pieces make a
//! verified file, fresh or resumed, and no byte is hashed twice. Without a table (tests,
//! tools) the whole file is hashed as it arrives and checked at `Fin`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::pieces::Staged;
use super::{
    chunk_count, Change, PieceHasher, PieceJob, PieceTable, TimeoutPhase, TransferError, Violation,
    DEFAULT_IDLE_TIMEOUT, MAX_OFFLOADED_PIECE,
};
use crate::wire::{
    AbortReason, BoundedVec, ContentHash, FileId, Message, TransferId, MAX_SACK_RANGES,
};

/// Tunables of a [`ChunkReceiver`].
#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    /// Chunks accepted beyond the next expected one (the advertised window).
    pub window: u32,
    /// Bytes the out-of-order buffer may hold: the window shrinks for large chunks so that
    /// memory stays bounded by bytes, not by chunk count (never below 16 chunks).
    pub window_bytes: u64,
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
    /// With a piece table of pieces up to [`MAX_OFFLOADED_PIECE`], hand each completed piece
    /// to the driver to hash ([`ReceiverEvent::HashPiece`]) instead of hashing it here; the
    /// driver reports each hash with [`ChunkReceiver::piece_hashed`], in any order. Lets a
    /// driver hash on another core.
    pub offload_hashing: bool,
    /// Send the last ACK again after a silence (twice the request's round trip, backing
    /// off): a lost ACK may hold the sender's whole window. Pointless on a reliable
    /// transport, which loses nothing.
    pub reack: bool,
    /// Least a sender must deliver, in new bytes per second averaged over
    /// `min_rate_window`, once it has accepted (0: no minimum). Without it, a sender that
    /// trickles one new chunk per idle timeout would hold a download (and its destination)
    /// for ever.
    pub min_rate: u64,
    /// The span over which `min_rate` is measured (each span on its own, from the Accept).
    pub min_rate_window: Duration,
}

/// Default [`ReceiverConfig::min_rate`]: 1 KiB/s, far below any real path (a 56 kbit/s modem
/// moves 7 KiB/s), far above a sender dripping a chunk every few seconds.
pub const DEFAULT_MIN_RATE: u64 = 1024;
/// Default [`ReceiverConfig::min_rate_window`]: long enough for an outage the idle timeout
/// allows, or a few seconds of retransmission backoff, to be made up.
pub const DEFAULT_MIN_RATE_WINDOW: Duration = Duration::from_secs(60);

/// Default advertised window, in chunks, within [`DEFAULT_WINDOW_BYTES`]: about 12,000 chunks
/// of 1,404 bytes, enough for 1 Gbit/s x 130 ms; the sender's congestion control decides how
/// much of it is used.
pub const DEFAULT_WINDOW: u32 = 32 * 1024;
/// Default memory budget of a download's out-of-order buffer (the window shrinks for large
/// chunks to stay within it). 32 MiB measured worse on loopback (0.96x raw TCP, 32 MiB of
/// RSS: 60 KiB datagrams overran the socket buffers) and no better on a 100 ms path.
pub const DEFAULT_WINDOW_BYTES: u64 = 16 * 1024 * 1024;

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            window: DEFAULT_WINDOW,
            window_bytes: DEFAULT_WINDOW_BYTES,
            max_chunk_size: crate::wire::MAX_CHUNK as u32,
            request_retry: Duration::from_millis(500),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            ack_every: 2,
            ack_delay: Duration::from_millis(5),
            offload_hashing: false,
            reack: true,
            min_rate: DEFAULT_MIN_RATE,
            min_rate_window: DEFAULT_MIN_RATE_WINDOW,
        }
    }
}

/// What happened, for the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// Every upload slot of the sender is taken: the request waits in its line, behind
    /// `ahead` others (each time the sender says so); after the `Accept`, the transfer
    /// gave its slot to another for a turn and waits for its next.
    Queued {
        /// Requests to be served first.
        ahead: u32,
    },
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
    Write(Bytes),
    /// A piece is complete: hash it and report with [`ChunkReceiver::piece_hashed`] (only with
    /// [`ReceiverConfig::offload_hashing`]).
    HashPiece(PieceJob),
    /// Every byte before `verified` (absolute file offset) is written and matches its piece
    /// hashes: a resume may start there.
    PieceVerified {
        /// End of the verified prefix.
        verified: u64,
    },
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

/// A chunk waiting out of order that is smaller than this is copied out of its receive
/// buffer, which may be a whole block of merged datagrams.
const COPY_EARLY_BELOW: usize = 8 * 1024;

/// Bounds of the wait without `Data` before the last ACK is sent again.
const MIN_REACK: Duration = Duration::from_millis(10);
const MAX_REACK: Duration = Duration::from_secs(1);

/// Longest wait between two sends of an unanswered `Request` (the first is
/// `ReceiverConfig::request_retry`, doubled each time).
const MAX_REQUEST_WAIT: Duration = Duration::from_secs(4);
/// How often a `Request` waiting in the sender's line ([`Message::Queued`]) is sent again.
pub const QUEUED_RETRY: Duration = Duration::from_secs(1);

/// Most often a `Request` is sent again while chunks arrive whose `Accept` was lost.
const REREQUEST_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Requesting { next_retry: Instant, wait: Duration },
    Receiving,
    Done,
}

/// `RetryTransfer`s a receiver follows before it waits for its next attempt instead.
pub const MAX_RETRIES_FOLLOWED: u32 = 3;

/// The receiving side of one transfer.
#[derive(Debug)]
pub struct ChunkReceiver {
    transfer: TransferId,
    file: FileId,
    /// First byte of the file this transfer covers.
    offset: u64,
    /// End of the bytes asked for (exclusive), when not the file's end: a range of a
    /// multi-source download. Clamped to the file at `Accept`.
    end: Option<u64>,
    pieces: Option<PieceTable>,
    expected: Option<(u64, ContentHash)>,
    config: ReceiverConfig,
    state: State,
    size: u64,
    chunk_size: u32,
    hash: ContentHash,
    total: u64,
    next_seq: u64,
    early: BTreeMap<u64, Bytes>,
    /// Whole-file hasher, for a transfer without a piece table.
    hasher: Option<Staged>,
    /// Hasher of the piece being received (with a piece table, once accepted).
    piece_hasher: Option<PieceHasher>,
    /// Offloaded hashing: the piece being received, as slices of its messages.
    piece_parts: Vec<Bytes>,
    /// Offloaded hashing: pieces handed out and not yet reported.
    hashing: u64,
    /// Offloaded hashing: pieces reported good beyond the verified prefix.
    hashed: BTreeSet<u64>,
    /// Offloaded hashing: the piece that extends the verified prefix next.
    next_verified: u64,
    /// The sender's `Fin` came: answered with `FinAck` once finished.
    fin_seen: bool,
    /// Finished with every byte verified (not failed): late `Data` gets the final ACK again.
    finished: bool,
    /// Bytes received in order in this transfer.
    received: u64,
    /// Bytes of new chunks (in order or not) received in this transfer.
    fresh: u64,
    /// Start of the current minimum-rate span, and `fresh` then (once accepted).
    rate_span: Option<(Instant, u64)>,
    unacked: u32,
    ack_now: bool,
    ack_at: Option<Instant>,
    last_heard: Instant,
    /// When `Data` last made us send the `Request` again (the `Accept` was lost).
    last_rerequest: Option<Instant>,
    /// When the last `Request` went out.
    requested_at: Instant,
    /// `RetryTransfer`s followed (at most [`MAX_RETRIES_FOLLOWED`]).
    retries_followed: u32,
    /// How long without `Data` before the last ACK is sent again: twice the round trip of
    /// the request that was accepted (10 ms to 1 s), doubled at each repeat.
    reack_after: Duration,
    reack_wait: Duration,
    reack_at: Option<Instant>,
    out: VecDeque<Message>,
    events: VecDeque<ReceiverEvent>,
}

impl ChunkReceiver {
    /// Starts a download of the whole of `file` as `transfer`, checked against the whole-file
    /// hash at `Fin`. `expected` (size, hash), when known from the index, must match what the
    /// sender announces. The first transmit is the `Request`.
    pub fn new(
        now: Instant,
        transfer: TransferId,
        file: FileId,
        expected: Option<(u64, ContentHash)>,
        config: ReceiverConfig,
    ) -> Self {
        Self::build(now, transfer, file, expected, 0, None, None, config)
    }

    /// Starts a download of `file` from byte `offset` (a piece boundary; 0 for the whole file),
    /// verifying every piece against `pieces` as it completes. Bytes before `offset` are the
    /// caller's, already verified.
    pub fn resume(
        now: Instant,
        transfer: TransferId,
        file: FileId,
        expected: Option<(u64, ContentHash)>,
        offset: u64,
        pieces: PieceTable,
        config: ReceiverConfig,
    ) -> Self {
        Self::build(
            now,
            transfer,
            file,
            expected,
            offset,
            None,
            Some(pieces),
            config,
        )
    }

    /// Starts a download of bytes `range` of `file` (both ends piece boundaries, or the end
    /// the file's end), verifying every piece against `pieces`: one source's share of a
    /// multi-source download. Finished once every piece of the range is verified.
    pub fn range(
        now: Instant,
        transfer: TransferId,
        file: FileId,
        expected: (u64, ContentHash),
        range: std::ops::Range<u64>,
        pieces: PieceTable,
        config: ReceiverConfig,
    ) -> Self {
        let piece = u64::from(pieces.piece_size.max(1));
        let bad_end = range.end <= range.start
            || range.end > expected.0
            || (range.end < expected.0 && !range.end.is_multiple_of(piece));
        let mut r = Self::build(
            now,
            transfer,
            file,
            Some(expected),
            range.start,
            Some(range.end),
            Some(pieces),
            config,
        );
        if bad_end && r.state != State::Done {
            r.out.clear();
            r.fail(TransferError::Protocol(Violation::ResumeOffBoundary), None);
        }
        r
    }

    #[allow(clippy::too_many_arguments)] // private: the three constructors' common part
    fn build(
        now: Instant,
        transfer: TransferId,
        file: FileId,
        expected: Option<(u64, ContentHash)>,
        offset: u64,
        end: Option<u64>,
        pieces: Option<PieceTable>,
        config: ReceiverConfig,
    ) -> Self {
        // Without a piece table the whole file is hashed as it comes; with one, the table is
        // checked against the file's hash at Accept and each piece against the table, which
        // adds up to the same check (a resumed download never re-reads its kept prefix).
        let whole_file_hasher =
            (offset == 0 && pieces.is_none()).then(|| Staged::new(blake3::Hasher::new()));
        let mut r = ChunkReceiver {
            transfer,
            file,
            offset,
            end,
            pieces,
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
            next_seq: 0,
            early: BTreeMap::new(),
            hasher: whole_file_hasher,
            piece_hasher: None,
            piece_parts: Vec::new(),
            hashing: 0,
            hashed: BTreeSet::new(),
            next_verified: 0,
            fin_seen: false,
            finished: false,
            received: 0,
            fresh: 0,
            rate_span: None,
            unacked: 0,
            ack_now: false,
            ack_at: None,
            last_heard: now,
            last_rerequest: None,
            requested_at: now,
            retries_followed: 0,
            reack_after: MIN_REACK,
            reack_wait: MIN_REACK,
            reack_at: None,
            out: VecDeque::new(),
            events: VecDeque::new(),
        };
        let misaligned = r.pieces.as_ref().is_some_and(|p| {
            !PieceTable::valid_piece_size(p.piece_size)
                || !offset.is_multiple_of(u64::from(p.piece_size))
        });
        if (offset > 0 && r.pieces.is_none()) || misaligned {
            r.fail(TransferError::Protocol(Violation::ResumeOffBoundary), None);
        } else if offset > 0 && r.expected.is_none() {
            // The kept prefix is not re-hashed, so only a known (size, hash) can be claimed.
            r.fail(TransferError::Protocol(Violation::ResumeUnverifiable), None);
        } else {
            r.out.push_back(r.request());
        }
        r
    }

    /// The transfer's id.
    pub fn transfer(&self) -> TransferId {
        self.transfer
    }

    /// The sender accepted (the transfer is past its `Request`).
    pub fn is_accepted(&self) -> bool {
        !matches!(self.state, State::Requesting { .. })
    }

    /// True once finished or failed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes received in order in this transfer so far (after the start offset).
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
            offset: self.offset,
            end: self.end,
        }
    }

    /// Feeds a message from the sender.
    pub fn handle_message(&mut self, now: Instant, msg: &Message) {
        match (self.state, msg) {
            (State::Done, Message::Fin { .. }) if self.finished => {
                // The sender learns that the file is verified (or our FIN-ACK was lost).
                self.fin_seen = true;
                self.out.push_back(Message::FinAck {
                    transfer: self.transfer,
                });
            }
            (State::Done, Message::Data { .. }) if self.finished => {
                // Our final ACK was lost: the sender probes with its last chunks.
                self.ack_now = true;
            }
            (State::Done, _) => {}
            (State::Requesting { next_retry, wait }, Message::RetryTransfer { .. })
                if self.retries_followed < MAX_RETRIES_FOLLOWED =>
            {
                // The sender wants proof of our address first: the driver sends our
                // `Request` again with the token it gave (see `crate::validation`), now.
                self.retries_followed += 1;
                self.requested_at = now;
                self.state = State::Requesting {
                    next_retry: next_retry.max(now + wait),
                    wait,
                };
                self.out.push_back(self.request());
            }
            (
                State::Requesting { .. },
                Message::Accept {
                    size,
                    chunk_size,
                    hash,
                    ..
                },
            ) => {
                let (size, chunk_size, hash) = (*size, *chunk_size, *hash);
                self.last_heard = now;
                if chunk_size == 0 || chunk_size > self.config.max_chunk_size {
                    return self.fail(
                        TransferError::Protocol(Violation::ChunkSize(chunk_size)),
                        Some(AbortReason::BadRequest),
                    );
                }
                if let Some((esize, ehash)) = self.expected {
                    if esize != size || ehash != hash {
                        return self.fail(
                            TransferError::Changed(Change::Announced {
                                listed: esize,
                                announced: size,
                            }),
                            Some(AbortReason::FileChanged),
                        );
                    }
                }
                if self.offset > size {
                    return self.fail(
                        TransferError::Protocol(Violation::ResumeBeyondEnd),
                        Some(AbortReason::BadRequest),
                    );
                }
                if let Some(p) = &self.pieces {
                    if p.root(size) != Some(hash) {
                        return self.fail(
                            TransferError::Changed(Change::PieceTable),
                            Some(AbortReason::FileChanged),
                        );
                    }
                    if self.config.offload_hashing && p.piece_size > MAX_OFFLOADED_PIECE {
                        self.config.offload_hashing = false; // streamed, never held whole
                    }
                    if self.config.offload_hashing {
                        self.next_verified = self.offset / u64::from(p.piece_size);
                    } else {
                        self.piece_hasher = Some(PieceHasher::new(self.offset, p.piece_size, size));
                    }
                }
                let by_bytes = (self.config.window_bytes / u64::from(chunk_size)).max(16);
                self.config.window = self
                    .config
                    .window
                    .min(by_bytes.min(u64::from(u32::MAX)) as u32);
                self.size = size;
                self.chunk_size = chunk_size;
                self.hash = hash;
                self.total = chunk_count(self.end() - self.offset, chunk_size);
                self.reack_after = (now.saturating_duration_since(self.requested_at) * 2)
                    .clamp(MIN_REACK, MAX_REACK);
                self.state = State::Receiving;
                if self.config.min_rate > 0 {
                    self.rate_span = Some((now, self.fresh));
                }
                self.events.push_back(ReceiverEvent::Accepted {
                    size,
                    hash,
                    chunk_size,
                });
                self.try_finish(); // nothing to receive: an empty file, or resumed at its end
            }
            (
                State::Requesting { next_retry, wait },
                Message::Data { .. } | Message::Fin { .. },
            ) => {
                // The sender accepted, but its Accept was lost: it is alive, and a new
                // Request makes it send the Accept again, and the chunks we drop meanwhile
                // (at once the first time, then at most every 100 ms).
                self.last_heard = now;
                if self
                    .last_rerequest
                    .is_none_or(|at| now >= at + REREQUEST_EVERY)
                {
                    self.last_rerequest = Some(now);
                    self.requested_at = now;
                    self.out.push_back(self.request());
                    self.state = State::Requesting {
                        next_retry: next_retry.max(now + wait),
                        wait,
                    };
                }
            }
            (State::Receiving, Message::Data { seq, payload, .. }) => {
                // The idle timer restarts in `on_data`, on progress only: invalid or repeated
                // chunks (from a broken sender, or a forger) do not keep a transfer alive.
                self.on_data(now, *seq, payload.clone());
            }
            (State::Receiving, Message::Fin { size, hash, .. }) => {
                if self.next_seq < self.total {
                    return; // cannot be: FIN follows the ACK of every chunk; ignore
                }
                self.last_heard = now;
                if *size != self.size || *hash != self.hash {
                    return self.fail(TransferError::HashMismatch, Some(AbortReason::HashMismatch));
                }
                // Every chunk is here, so the last pieces are still being hashed: answered
                // when they are (the sender repeats its FIN meanwhile, if need be).
                self.fin_seen = true;
                self.try_finish();
            }
            (State::Requesting { .. }, Message::Queued { ahead, .. }) => {
                self.events
                    .push_back(ReceiverEvent::Queued { ahead: *ahead });
                // The sender is alive and will serve us in turn: keep asking, about every
                // second (its line forgets those who stop), and keep waiting.
                self.last_heard = now;
                self.state = State::Requesting {
                    next_retry: now + QUEUED_RETRY,
                    wait: QUEUED_RETRY / 2,
                };
            }
            (State::Receiving, Message::Queued { ahead, .. }) => {
                // The sender gave our upload slot to another transfer for a while (its
                // slots are shared in turns): alive, and back in turn. The minimum rate
                // still holds, so a forger repeating this cannot keep a download for ever.
                self.events
                    .push_back(ReceiverEvent::Queued { ahead: *ahead });
                self.last_heard = now;
            }
            (_, Message::Abort { reason, .. }) => {
                self.fail(TransferError::Aborted(reason.clone()), None);
            }
            _ => {}
        }
    }

    fn on_data(&mut self, now: Instant, seq: u64, payload: Bytes) {
        if seq >= self.total || payload.len() as u64 != self.chunk_len(seq) {
            return; // not a chunk of this file: drop it like a corrupt datagram
        }
        if self.config.reack {
            self.reack_wait = self.reack_after;
            self.reack_at = Some(now + self.reack_after);
        }
        if seq < self.next_seq || self.early.contains_key(&seq) {
            self.ack_now = true; // duplicate: our ACK may have been lost
            return;
        }
        if seq >= self.next_seq + u64::from(self.config.window) {
            self.ack_now = true; // beyond the window we advertised
            return;
        }
        self.last_heard = now; // a chunk we did not have: progress
        self.fresh += payload.len() as u64;
        if seq != self.next_seq {
            let payload = if payload.len() < COPY_EARLY_BELOW {
                // It may wait a while: never let it pin a large receive block.
                Bytes::copy_from_slice(&payload)
            } else {
                payload
            };
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
        self.try_finish();
    }

    /// Ends the transfer as soon as every chunk is delivered and every piece verified,
    /// without waiting for the sender's `Fin`: the file is complete, and a lost `Fin` would
    /// cost a retransmission timeout. The final ACK tells the sender, whose `Fin` is then
    /// answered here (or, once this receiver is gone, by its driver: see
    /// [`ChunkReceiver::final_ack`]).
    fn try_finish(&mut self) {
        if self.state != State::Receiving || self.next_seq < self.total || self.hashing > 0 {
            return;
        }
        // From byte 0 the whole-file hash is checked here; a resumed transfer relies
        // on its pieces, every one of which was verified on the way.
        let whole_ok = self
            .hasher
            .as_mut()
            .is_none_or(|h| ContentHash::from(h.hasher().finalize()) == self.hash);
        if !whole_ok {
            return self.fail(TransferError::HashMismatch, Some(AbortReason::HashMismatch));
        }
        self.state = State::Done;
        self.finished = true;
        self.ack_at = None;
        self.ack_now = true;
        if self.fin_seen {
            self.out.push_back(Message::FinAck {
                transfer: self.transfer,
            });
        }
        self.events.push_back(ReceiverEvent::Finished {
            received: self.received,
            hash: self.hash,
        });
    }

    /// Finished, and the sender's `Fin` answered: the sender knows.
    pub fn fin_answered(&self) -> bool {
        self.finished && self.fin_seen
    }

    /// Once finished: the ACK of every chunk, which a driver that has let this receiver go
    /// sends when the sender, whose copy of it was lost, sends a chunk again.
    pub fn final_ack(&self) -> Option<Message> {
        // (Finished, every chunk is delivered: `next_seq` is `total`, nothing waits early.)
        self.finished.then(|| self.ack_message())
    }

    fn chunk_len(&self, seq: u64) -> u64 {
        let offset = self.offset + seq * u64::from(self.chunk_size);
        (self.end() - offset).min(u64::from(self.chunk_size))
    }

    /// End of the bytes this transfer covers (once accepted: the file's size is known).
    fn end(&self) -> u64 {
        self.end.map_or(self.size, |end| end.min(self.size))
    }

    fn ack(&mut self) -> Message {
        self.unacked = 0;
        self.ack_now = false;
        self.ack_at = None;
        self.ack_message()
    }

    /// The ACK of what arrived so far.
    fn ack_message(&self) -> Message {
        // The highest ranges: they tell the sender what was lost (everything sent well before
        // them and missing) and what is no longer in flight. The lower ones, older, went out
        // in earlier ACKs; reporting the lowest instead left a sender with more holes than
        // ranges in flight blind to the newest arrivals, and made it send them again.
        let mut sack: Vec<(u64, u64)> = Vec::new();
        for &seq in self.early.keys().rev() {
            match sack.last_mut() {
                Some((start, _)) if *start == seq + 1 => *start = seq,
                _ => {
                    if sack.len() == MAX_SACK_RANGES {
                        break;
                    }
                    sack.push((seq, seq + 1));
                }
            }
        }
        sack.reverse();
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
        self.piece_parts.clear();
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
        let err = TransferError::Cancelled(reason.clone());
        self.fail(err, Some(reason));
    }

    /// Call when `poll_timeout` has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let too_slow = self.state == State::Receiving && self.too_slow(now);
        match self.state {
            State::Done => {}
            _ if now >= self.last_heard + self.config.idle_timeout => {
                let phase = if matches!(self.state, State::Requesting { .. }) {
                    TimeoutPhase::Request
                } else {
                    TimeoutPhase::Data
                };
                self.fail(
                    TransferError::Timeout {
                        phase,
                        after: self.config.idle_timeout,
                    },
                    Some(AbortReason::Timeout),
                );
            }
            State::Requesting { next_retry, wait } if now >= next_retry => {
                let wait = (wait * 2).min(MAX_REQUEST_WAIT);
                self.state = State::Requesting {
                    next_retry: now + wait,
                    wait,
                };
                self.requested_at = now;
                self.out.push_back(self.request());
            }
            State::Receiving if too_slow => {
                self.fail(
                    TransferError::Timeout {
                        phase: TimeoutPhase::TooSlow {
                            min_rate: self.config.min_rate,
                        },
                        after: self.config.min_rate_window,
                    },
                    Some(AbortReason::Timeout),
                );
            }
            State::Receiving => {
                if self.ack_at.is_some_and(|t| now >= t) {
                    self.ack_now = true;
                }
                if self.reack_at.is_some_and(|t| now >= t) {
                    // Nothing came for a while: our last ACK may have been lost, and with it
                    // the sender's window (one ACK answers a whole burst). Say it again,
                    // backing off, rather than leave the sender waiting for its RTO, which
                    // is a whole second before its first RTT sample.
                    self.ack_now = true;
                    self.reack_wait = (self.reack_wait * 2).min(MAX_REACK);
                    self.reack_at = Some(now + self.reack_wait);
                }
            }
            _ => {}
        }
    }

    /// At the end of a minimum-rate span: whether the sender delivered less than the
    /// minimum over it; if not, the next span starts.
    fn too_slow(&mut self, now: Instant) -> bool {
        let Some((start, fresh)) = self.rate_span else {
            return false;
        };
        let window = self.config.min_rate_window;
        if now < start + window {
            return false;
        }
        let needed = (self.config.min_rate as f64 * window.as_secs_f64()) as u64;
        if self.fresh - fresh < needed {
            return true;
        }
        self.rate_span = Some((now, self.fresh));
        false
    }

    /// The next moment `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let idle = self.last_heard + self.config.idle_timeout;
        let span_end = self
            .rate_span
            .map(|(start, _)| start + self.config.min_rate_window);
        match self.state {
            State::Done => None,
            State::Requesting { next_retry, .. } => Some(next_retry.min(idle)),
            State::Receiving => [self.ack_at, self.reack_at, Some(idle), span_end]
                .into_iter()
                .flatten()
                .min(),
        }
    }

    /// The next message to send (the time is not needed yet: ACKs are timed by
    /// [`ChunkReceiver::handle_timeout`]; taken for the same signature as the sender's).
    pub fn poll_transmit(&mut self, _now: Instant) -> Option<Message> {
        if let Some(m) = self.out.pop_front() {
            return Some(m);
        }
        if (self.state == State::Receiving || self.finished) && self.ack_now {
            return Some(self.ack());
        }
        None
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }
}

// Piece verification: what arrives in order is hashed here or handed out to hash.
mod verify;

#[cfg(test)]
mod tests;
