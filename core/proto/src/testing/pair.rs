//! [`Pair`]: a [`ChunkReceiver`] and the [`ChunkSender`] its `Request` starts, on a simulated
//! link with a fake clock, driven the way the endpoint's driver drives them (the quinn-proto
//! `Pair` pattern).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::link::{Dir, Fate, Sent};
use crate::transfer::{
    ChunkReceiver, ChunkSender, PieceTable, ReceiverConfig, ReceiverEvent, SenderConfig,
    SenderEvent, SenderStats, SenderTransmit,
};
use crate::wire::{decode, ContentHash, FileId, Message, TransferId};

/// How messages cross the link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Carry {
    /// Encoded when sent and decoded when they arrive, as on a real transport.
    #[default]
    Wire,
    /// Handed over as values, never encoded: the state machines alone (for benchmarks).
    Values,
}

/// The receiver verifies pieces as they arrive, and may resume after a kept prefix.
///
/// ```
/// use p2p_proto::testing::{Pair, PairConfig, Pieces};
/// use p2p_proto::transfer::{ReceiverConfig, ReceiverEvent};
///
/// let file: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
/// let config = PairConfig {
///     // The receiver kept the first two pieces; the driver (here the pair) hashes pieces.
///     pieces: Some(Pieces { piece_size: 1024, offset: 2048, end: None }),
///     receiver: ReceiverConfig { offload_hashing: true, ..ReceiverConfig::default() },
///     ..PairConfig::default()
/// };
/// let mut pair = Pair::new(file.clone(), config);
/// assert!(pair.run(10_000).finished());
/// assert_eq!(pair.written, file);
/// let verified = pair.receiver_events.iter().filter_map(|e| match e {
///     ReceiverEvent::PieceVerified { verified } => Some(*verified),
///     _ => None,
/// });
/// assert_eq!(verified.last(), Some(10_000));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pieces {
    /// Bytes per piece ([valid](PieceTable::valid_piece_size)); the table is computed from
    /// the file.
    pub piece_size: u32,
    /// First byte the receiver asks for: a piece boundary whose prefix the receiver already
    /// has (0 for the whole file).
    pub offset: u64,
    /// End of the bytes the receiver asks for: a piece boundary (a range of a multi-source
    /// download), or `None` for the file's end.
    pub end: Option<u64>,
}

/// How a [`Pair`] is set up.
#[derive(Clone, Debug)]
pub struct PairConfig {
    /// The transfer's id.
    pub transfer: TransferId,
    /// The sender's configuration (taken when the `Request` arrives:
    /// [`Pair::sender_config`] may still change it).
    pub sender: SenderConfig,
    /// The receiver's configuration.
    pub receiver: ReceiverConfig,
    /// The receiver knows the file's size and hash, as from the index.
    pub expected: bool,
    /// Verify pieces (and maybe resume); without, only the whole-file hash is checked.
    pub pieces: Option<Pieces>,
    /// One-way delay of every message ([`Pair::latency`] may still change it).
    pub latency: Duration,
    /// Through the wire encoding or as values.
    pub carry: Carry,
    /// Most messages handled per wake-up before both sides are polled again (all of them
    /// due at that instant, as the driver drains its socket): 1 lets every message see the
    /// answers to the one before.
    pub burst: usize,
    /// Keep what the receiver writes in [`Pair::written`], checked against the file at every
    /// write; off, writes are only counted (benchmarks).
    pub keep_written: bool,
}

impl Default for PairConfig {
    fn default() -> Self {
        PairConfig {
            transfer: TransferId(1),
            sender: SenderConfig::default(),
            receiver: ReceiverConfig::default(),
            expected: true,
            pieces: None,
            latency: Duration::from_millis(10),
            carry: Carry::Wire,
            burst: 1,
            keep_written: true,
        }
    }
}

/// How a run went, from [`Pair::outcome`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The receiver's last event, when it ended (`Finished` or `Failed`).
    pub receiver: Option<ReceiverEvent>,
    /// The sender's end, when it ended.
    pub sender: Option<SenderEvent>,
    /// Bytes the receiver has written, a resumed prefix included.
    pub written: u64,
    /// The sender's counters (zero before it started).
    pub stats: SenderStats,
    /// Time on the fake clock since the pair was created.
    pub elapsed: Duration,
    /// Messages sent, both directions (lost ones included).
    pub sent: u64,
    /// Messages delivered, both directions (duplicates included).
    pub delivered: u64,
}

impl Outcome {
    /// Both sides ended with `Finished`.
    pub fn finished(&self) -> bool {
        matches!(self.receiver, Some(ReceiverEvent::Finished { .. }))
            && self.sender == Some(SenderEvent::Finished)
    }
}

/// A message on its way.
#[derive(Debug)]
struct InFlight {
    at: Instant,
    /// Send order: ties in `at` go in the order sent.
    order: u64,
    dir: Dir,
    packet: Packet,
}

#[derive(Debug)]
enum Packet {
    Encoded(Vec<u8>),
    Value(Message),
}

/// A receiver downloading a file from a sender over a simulated link, on a fake clock.
///
/// The receiver exists from the start; the sender is created when the receiver's `Request`
/// reaches it, as an endpoint does. Each [`step`](Pair::step) sends what both sides want to
/// send (building `Data` from the file for each [`SenderTransmit::Chunk`], as a driver reads
/// it), collects their events (hashing offloaded pieces at once), then either delivers the
/// next message due (up to [`PairConfig::burst`] due at the same instant) or, when a timer
/// comes first, moves the clock to it and calls `handle_timeout` on the machines whose
/// deadline it is. Every message gets the [`Fate`] the link function gives it; everything is
/// deterministic, so the same link gives the same run.
///
/// Every step also checks what holds on any link: the receiver writes the file's own bytes,
/// in order; its verified prefix only grows and is written; neither side has an event after
/// its end; a corrupted message never decodes.
///
/// ```
/// use std::time::Duration;
/// use p2p_proto::testing::{Dir, Fate, Odds, Pair, PairConfig, RandomLink};
/// use p2p_proto::transfer::{ReceiverEvent, SenderConfig, SenderEvent};
/// use p2p_proto::wire::Message;
///
/// let file: Vec<u8> = (0..20_000u32).map(|i| (i * 7) as u8).collect();
/// let config = PairConfig {
///     sender: SenderConfig { chunk_size: 500, ..SenderConfig::default() },
///     ..PairConfig::default()
/// };
///
/// // A bad link, replayed from its seed.
/// let mut link = RandomLink::new(7, Odds::LOSSY);
/// let mut pair = Pair::new(file.clone(), config.clone()).with_link(move |s| link.fate(s));
/// let outcome = pair.run(100_000);
/// assert!(outcome.finished(), "{outcome:?}");
/// assert_eq!(pair.written, file);
///
/// // A closure: lose chunk 3 once.
/// let mut lost = false;
/// let mut pair = Pair::new(file.clone(), config).with_link(move |s| match s.msg {
///     Message::Data { seq: 3, .. } if s.dir == Dir::ToReceiver && !lost => {
///         lost = true;
///         Fate::Drop
///     }
///     _ => Fate::Deliver,
/// });
/// let took = pair.time_to_finish();
/// assert_eq!(pair.written, file);
/// assert_eq!(pair.stats().chunks_retransmitted, 1);
/// assert!(took < Duration::from_secs(1));
/// pair.drive(100_000);
/// assert_eq!(pair.sender_end(), Some(&SenderEvent::Finished));
/// assert!(matches!(pair.receiver_end(), Some(ReceiverEvent::Finished { .. })));
/// ```
pub struct Pair {
    /// The fake clock.
    pub now: Instant,
    /// The sender, once the `Request` reached it.
    pub sender: Option<ChunkSender>,
    /// What the sender is created with when the `Request` arrives.
    pub sender_config: SenderConfig,
    /// The receiver.
    pub receiver: ChunkReceiver,
    /// One-way delay of every message from now on.
    pub latency: Duration,
    /// Print every message sent and its fate to stderr.
    pub trace: bool,
    /// The file as the receiver has it (with [`PairConfig::keep_written`]): the prefix it
    /// resumed after, then what it wrote.
    pub written: Vec<u8>,
    /// The receiver's events in order, but for `Write` (in [`written`](Pair::written)) and
    /// `HashPiece` (answered at once).
    pub receiver_events: Vec<ReceiverEvent>,
    /// The sender's events.
    pub sender_events: Vec<SenderEvent>,
    /// When each `Data` message was sent (lost ones included).
    pub data_sent_at: Vec<Instant>,
    /// Messages sent so far, both directions.
    pub sent: u64,
    /// Messages delivered so far, both directions.
    pub delivered: u64,
    start: Instant,
    file: Vec<u8>,
    /// The sender's hash of `file` (its index entry).
    hash: ContentHash,
    /// First byte the receiver asks for.
    offset: u64,
    /// End of the bytes it asks for (`None`: the file's end).
    end: Option<u64>,
    carry: Carry,
    burst: usize,
    keep_written: bool,
    written_len: u64,
    /// End of the prefix the receiver reported verified.
    verified: u64,
    /// Sorted by (at, order); equal keys (duplicates) in insertion order.
    queue: VecDeque<InFlight>,
    link: Box<dyn FnMut(&Sent<'_>) -> Fate>,
}

impl Pair {
    /// A receiver of `file` as `config` says, on a link that delivers everything; the clock
    /// starts at `Instant::now()`.
    pub fn new(file: Vec<u8>, config: PairConfig) -> Self {
        let PairConfig {
            transfer,
            sender,
            receiver,
            expected,
            pieces,
            latency,
            carry,
            burst,
            keep_written,
        } = config;
        let now = Instant::now();
        let hash = ContentHash::of(&file);
        let expected = expected.then_some((file.len() as u64, hash));
        let (receiver, offset, end) = match pieces {
            None => (
                ChunkReceiver::new(now, transfer, FileId(1), expected, receiver),
                0,
                None,
            ),
            Some(Pieces {
                piece_size,
                offset,
                end,
            }) => {
                let table = PieceTable::of(&file, piece_size);
                let r = match (end, expected) {
                    (Some(end), Some(expected)) => ChunkReceiver::range(
                        now,
                        transfer,
                        FileId(1),
                        expected,
                        offset..end,
                        table,
                        receiver,
                    ),
                    _ => ChunkReceiver::resume(
                        now,
                        transfer,
                        FileId(1),
                        expected,
                        offset,
                        table,
                        receiver,
                    ),
                };
                (r, offset, end)
            }
        };
        let kept = file.get(..offset as usize).unwrap_or(&file);
        Pair {
            now,
            sender: None,
            sender_config: sender,
            receiver,
            latency,
            trace: false,
            written: if keep_written {
                kept.to_vec()
            } else {
                Vec::new()
            },
            receiver_events: Vec::new(),
            sender_events: Vec::new(),
            data_sent_at: Vec::new(),
            sent: 0,
            delivered: 0,
            start: now,
            written_len: kept.len() as u64,
            verified: kept.len() as u64,
            file,
            hash,
            offset,
            end,
            carry,
            burst,
            keep_written,
            queue: VecDeque::new(),
            link: Box::new(|_| Fate::Deliver),
        }
    }

    /// The same pair, with `link` choosing every message's fate from now on.
    pub fn with_link(mut self, link: impl FnMut(&Sent<'_>) -> Fate + 'static) -> Self {
        self.link = Box::new(link);
        self
    }

    /// The sender's file.
    pub fn file(&self) -> &[u8] {
        &self.file
    }

    /// What the receiver has once it finished: the file up to the end it asked for.
    pub fn wanted(&self) -> &[u8] {
        let end = self
            .end
            .map_or(self.file.len(), |e| (e as usize).min(self.file.len()));
        &self.file[..end]
    }

    /// Changes the sender's file (and its hash), as when it changes on disk after it was
    /// listed: the receiver keeps expecting what it was created with.
    pub fn change_file(&mut self, edit: impl FnOnce(&mut Vec<u8>)) {
        edit(&mut self.file);
        self.hash = ContentHash::of(&self.file);
    }

    /// The receiver's `Finished` has been seen.
    pub fn finished(&self) -> bool {
        self.receiver_events
            .iter()
            .any(|e| matches!(e, ReceiverEvent::Finished { .. }))
    }

    /// The receiver's end (`Finished` or `Failed`), once it ended.
    pub fn receiver_end(&self) -> Option<&ReceiverEvent> {
        self.receiver_events
            .last()
            .filter(|e| matches!(e, ReceiverEvent::Finished { .. } | ReceiverEvent::Failed(_)))
    }

    /// The sender's end, once it ended.
    pub fn sender_end(&self) -> Option<&SenderEvent> {
        self.sender_events.last()
    }

    /// The sender's counters (zero before the sender exists).
    pub fn stats(&self) -> SenderStats {
        self.sender
            .as_ref()
            .map(|s| s.stats().clone())
            .unwrap_or_default()
    }

    /// How the run went so far.
    pub fn outcome(&self) -> Outcome {
        Outcome {
            receiver: self.receiver_end().cloned(),
            sender: self.sender_end().cloned(),
            written: self.written_len,
            stats: self.stats(),
            elapsed: self.now - self.start,
            sent: self.sent,
            delivered: self.delivered,
        }
    }

    /// Drives the pair until both sides are idle ([`drive`](Pair::drive)) and reports how it
    /// went.
    pub fn run(&mut self, max_steps: usize) -> Outcome {
        self.drive(max_steps);
        self.outcome()
    }

    /// Steps until both sides are idle: nothing in flight and no timer set.
    ///
    /// # Panics
    ///
    /// When that takes more than `max_steps` steps (a livelock, or a bound set too low).
    pub fn drive(&mut self, max_steps: usize) {
        for _ in 0..max_steps {
            if !self.step() {
                return;
            }
        }
        panic!(
            "no end within {max_steps} steps: receiver {:?}, sender {:?}, {} of {} bytes",
            self.receiver_end(),
            self.sender_end(),
            self.written_len,
            self.file.len()
        );
    }

    /// Steps until the receiver has finished; returns how long that took on the fake clock.
    ///
    /// # Panics
    ///
    /// When both sides go idle without the receiver finishing.
    pub fn time_to_finish(&mut self) -> Duration {
        let start = self.now;
        while !self.finished() {
            assert!(self.step(), "settled without finishing");
        }
        self.now - start
    }

    /// Sends what both sides want to send and collects their events, then delivers the next
    /// message due or fires the next timer, moving the clock to it. Returns false, having
    /// done nothing but the sending, when both sides are idle.
    pub fn step(&mut self) -> bool {
        self.flush();
        let next_msg = self.queue.front().map(|q| q.at);
        let next_timer = [
            self.receiver.poll_timeout(),
            self.sender.as_ref().and_then(|s| s.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min();
        match (next_msg, next_timer) {
            (None, None) => false,
            // A message and a timer due at the same instant: the message first.
            (Some(at), timer) if timer.is_none_or(|t| at <= t) => {
                self.now = self.now.max(at);
                for _ in 0..self.burst.max(1) {
                    if self.queue.front().is_none_or(|q| q.at > self.now) {
                        break;
                    }
                    let q = self.queue.pop_front().expect("a message is due");
                    self.deliver(q.dir, q.packet);
                }
                true
            }
            (_, Some(t)) => {
                self.now = self.now.max(t);
                if self.receiver.poll_timeout().is_some_and(|t| t <= self.now) {
                    self.receiver.handle_timeout(self.now);
                }
                if let Some(s) = self.sender.as_mut() {
                    if s.poll_timeout().is_some_and(|t| t <= self.now) {
                        s.handle_timeout(self.now);
                    }
                }
                true
            }
            (_, None) => unreachable!("a message is due when no timer is"),
        }
    }

    /// Sends what both sides want to send, and collects their events.
    fn flush(&mut self) {
        while let Some(m) = self.receiver.poll_transmit(self.now) {
            self.send(Dir::ToSender, m);
        }
        while let Some(e) = self.receiver.poll_event() {
            self.receiver_event(e);
        }
        let mut out = Vec::new();
        if let Some(s) = self.sender.as_mut() {
            while let Some(t) = s.poll_transmit(self.now) {
                out.push(match t {
                    SenderTransmit::Control(m) => m,
                    // What a driver does: read the chunk from the file.
                    SenderTransmit::Chunk { seq, offset, len } => Message::Data {
                        transfer: s.transfer(),
                        seq,
                        payload: self.file[offset as usize..][..len as usize].to_vec().into(),
                    },
                });
            }
            while let Some(e) = s.poll_event() {
                assert!(
                    self.sender_events.is_empty(),
                    "sender event {e:?} after its end {:?}",
                    self.sender_events
                );
                self.sender_events.push(e);
            }
        }
        for m in out {
            self.send(Dir::ToReceiver, m);
        }
    }

    fn receiver_event(&mut self, e: ReceiverEvent) {
        assert!(
            self.receiver_end().is_none(),
            "receiver event {e:?} after its end {:?}",
            self.receiver_end()
        );
        match e {
            ReceiverEvent::Write(bytes) => {
                let at = self.written_len as usize;
                if self.keep_written {
                    assert_eq!(
                        self.file.get(at..at + bytes.len()),
                        Some(&bytes[..]),
                        "receiver wrote wrong bytes at offset {at}"
                    );
                    self.written.extend_from_slice(&bytes);
                }
                self.written_len += bytes.len() as u64;
            }
            // What a driver does when it has no other core to hash on.
            ReceiverEvent::HashPiece(job) => self.receiver.piece_hashed(job.index(), job.hash()),
            ReceiverEvent::PieceVerified { verified } => {
                assert!(verified > self.verified, "verified prefix did not grow");
                assert!(verified <= self.written_len, "verified unwritten bytes");
                self.verified = verified;
                self.receiver_events.push(e);
            }
            other => self.receiver_events.push(other),
        }
    }

    /// Hands `msg` to the link.
    fn send(&mut self, dir: Dir, msg: Message) {
        let order = self.sent;
        self.sent += 1;
        let fate = (self.link)(&Sent {
            dir,
            n: order,
            elapsed: self.now - self.start,
            msg: &msg,
        });
        if self.trace {
            let t = self.now - self.start;
            let what = match &msg {
                Message::Data { seq, payload, .. } => format!("Data {seq} ({} B)", payload.len()),
                other => format!("{other:?}"),
            };
            eprintln!("{t:>12?} #{order:<4} {dir:?} {what} -> {fate:?}");
        }
        if matches!(msg, Message::Data { .. }) {
            self.data_sent_at.push(self.now);
        }
        if let Fate::Corrupt { at, xor } = fate {
            if self.carry == Carry::Wire {
                let mut bytes = msg.encode();
                let i = usize::from(at) % bytes.len();
                bytes[i] ^= xor.max(1);
                assert!(
                    decode(&bytes).is_err(),
                    "corruption of {msg:?} not detected"
                );
            }
            return;
        }
        let packet = match self.carry {
            Carry::Wire => Packet::Encoded(msg.encode()),
            Carry::Values => Packet::Value(msg),
        };
        let at = self.now + self.latency;
        match fate {
            Fate::Deliver => self.enqueue(at, order, dir, packet),
            Fate::Drop | Fate::Corrupt { .. } => {}
            Fate::Duplicate => {
                let copy = match &packet {
                    Packet::Encoded(bytes) => Packet::Encoded(bytes.clone()),
                    Packet::Value(m) => Packet::Value(m.clone()),
                };
                self.enqueue(at, order, dir, copy);
                self.enqueue(at, order, dir, packet);
            }
            Fate::Delay(late) => self.enqueue(at + late, order, dir, packet),
        }
    }

    fn enqueue(&mut self, at: Instant, order: u64, dir: Dir, packet: Packet) {
        let q = InFlight {
            at,
            order,
            dir,
            packet,
        };
        // Usually at the back: messages are sent in time order, and only delays reorder them.
        if self
            .queue
            .back()
            .is_none_or(|b| (b.at, b.order) <= (at, order))
        {
            self.queue.push_back(q);
        } else {
            let i = self
                .queue
                .partition_point(|q| (q.at, q.order) <= (at, order));
            self.queue.insert(i, q);
        }
    }

    /// Hands a message that arrived to its side.
    fn deliver(&mut self, dir: Dir, packet: Packet) {
        let msg = match packet {
            Packet::Encoded(bytes) => decode(&bytes).expect("only corrupted messages fail"),
            Packet::Value(msg) => msg,
        };
        self.delivered += 1;
        match dir {
            Dir::ToReceiver => self.receiver.handle_message(self.now, &msg),
            Dir::ToSender => match self.sender.as_mut() {
                Some(s) => s.handle_message(self.now, &msg),
                // The endpoint starts an upload for a `Request`; nothing else reaches it.
                None => {
                    if let Message::Request {
                        transfer,
                        offset,
                        end,
                        ..
                    } = msg
                    {
                        assert_eq!(offset, self.offset, "the receiver's first byte");
                        let sender = ChunkSender::new(
                            self.now,
                            transfer,
                            self.file.len() as u64,
                            self.hash,
                            offset,
                            self.sender_config.clone(),
                        );
                        self.sender = Some(match end {
                            Some(end) => sender.ending_at(end),
                            None => sender,
                        });
                    }
                }
            },
        }
    }
}
