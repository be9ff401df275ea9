//! `ChunkSender`: the sending side of one transfer.
//!
//! Keeps per-chunk state only for the window `[cumulative ack, next new chunk)`, so memory is
//! O(window). Loss is detected two ways: a chunk is lost when a chunk *transmitted* at least
//! `dup_thresh` transmissions after it was acknowledged (selective ACK evidence, like QUIC's
//! packet threshold; counting transmissions rather than sequence numbers keeps a retransmitted
//! chunk from being declared lost by ACKs of older sends), and when the RFC 6298 timer fires.
//! RTT samples follow Karn's rule: never from a retransmitted chunk.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::congestion::{controller, AckSample, CongestionController, CongestionKind, FixedWindow};
use super::in_flight::InFlight;
use super::pacing::Pacer;
use super::rtt::RttEstimator;
use super::{chunk_count, TimeoutPhase, TransferError, DEFAULT_IDLE_TIMEOUT};
use crate::wire::{AbortReason, ContentHash, Message, TransferId};

/// Tunables of a [`ChunkSender`].
#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// Payload bytes per chunk.
    pub chunk_size: u32,
    /// Most chunks in flight, whatever the congestion window says.
    pub max_window: u64,
    /// Initial congestion window, in chunks.
    pub initial_window: u64,
    /// RTO before the first RTT sample.
    pub initial_rto: Duration,
    /// Smallest RTO.
    pub min_rto: Duration,
    /// Largest RTO (backoff included).
    pub max_rto: Duration,
    /// Give up when the receiver says nothing this long.
    pub idle_timeout: Duration,
    /// Transmissions after which an unacknowledged chunk counts as lost.
    pub dup_thresh: u64,
    /// The transport is reliable: no congestion control, a fixed window.
    pub reliable: bool,
    /// Congestion controller on unreliable transports.
    pub congestion: CongestionKind,
    /// Spread chunks over the RTT ([`Pacer`]) on unreliable transports.
    pub pacing: bool,
}

/// ACK delay a tail probe allows for (the receiver's default `ack_delay`).
const PROBE_ACK_DELAY: Duration = Duration::from_millis(5);

/// Chunks in flight on a reliable transport (TCP): the kernel's congestion control sets the
/// rate; more in flight would only queue in front of the socket.
pub(crate) const RELIABLE_WINDOW: u64 = 1024;

/// Shortest reordering window: a chunk sent this long before one acknowledged is not lost yet.
const MIN_REORDER_WINDOW: Duration = Duration::from_millis(2);

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            chunk_size: 1024,
            max_window: super::receiver::DEFAULT_WINDOW as u64,
            initial_window: 16,
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(200),
            // Well under a third of the idle timeout: a backed-off retransmission and its ACK
            // both fit before the receiver's silence counts as death.
            max_rto: Duration::from_secs(3),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            dup_thresh: 3,
            reliable: false,
            congestion: CongestionKind::default(),
            pacing: true,
        }
    }
}

/// What the sender wants sent next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SenderTransmit {
    /// A control message, ready to encode.
    Control(Message),
    /// Chunk `seq`: the driver reads `len` bytes at `offset` and sends them as `Data`.
    Chunk {
        /// Chunk number.
        seq: u64,
        /// Byte offset in the file.
        offset: u64,
        /// Bytes to read.
        len: u32,
    },
}

/// What happened, for the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SenderEvent {
    /// The receiver confirmed the whole file.
    Finished,
    /// The transfer ended without confirmation.
    Failed(TransferError),
}

/// Counters for tests, logs and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Chunks sent for the first time.
    pub chunks_sent: u64,
    /// Chunks sent again.
    pub chunks_retransmitted: u64,
    /// Payload bytes sent, retransmissions included.
    pub bytes_sent: u64,
    /// Times the retransmission timer fired.
    pub timeouts: u64,
}

#[derive(Clone, Debug)]
struct Sent {
    tx: u64,
    at: Instant,
    retransmitted: bool,
    acked: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Sending,
    Done,
}

/// The sending side of one transfer.
#[derive(Debug)]
pub struct ChunkSender {
    transfer: TransferId,
    size: u64,
    /// End of the bytes served (exclusive): the file's end, or a range's
    /// ([`ChunkSender::ending_at`]).
    end: u64,
    hash: ContentHash,
    config: SenderConfig,
    /// First byte served.
    offset: u64,
    /// Chunks to send.
    total: u64,
    /// Every chunk below this is acknowledged.
    cumulative: u64,
    /// Next chunk never sent.
    next_new: u64,
    /// State of chunks `cumulative..next_new`.
    window: VecDeque<Sent>,
    /// Chunks declared lost, waiting to be sent again.
    lost: BTreeSet<u64>,
    /// Chunks in flight, by transmission number → chunk number.
    in_flight: InFlight,
    next_tx: u64,
    largest_acked_tx: Option<u64>,
    /// The path reorders (a chunk was acknowledged after one sent later than it, or a chunk
    /// sent again was acknowledged too soon for its second send): `dup_thresh` later
    /// transmissions acknowledged no longer prove a loss on their own.
    reordering: bool,
    /// Smallest RTT sample.
    min_rtt: Option<Duration>,
    peer_window: u64,
    rtt: RttEstimator,
    cc: Box<dyn CongestionController>,
    rto_at: Option<Instant>,
    /// When chunks that SACK evidence marks as probably lost become old enough to declare.
    loss_at: Option<Instant>,
    /// Tail loss probe: when the last chunks are all sent and unacknowledged this long, the
    /// newest is sent again, so that its ACK exposes losses before it (RACK-TLP, RFC 8985)
    /// long before the RTO would.
    probe_at: Option<Instant>,
    /// A probe went out and nothing new was acknowledged since: no second one (the RTO
    /// takes over).
    probed: bool,
    /// Spreads chunks over the RTT (datagram transports only).
    pacer: Pacer,
    /// The pacer holds the next chunk until then.
    pace_at: Option<Instant>,
    last_heard: Instant,
    /// A repeated `Request` had the chunks in flight sent again (done at most once).
    resent_window: bool,
    /// Another transfer has the upload slot for now ([`ChunkSender::pause`]): nothing is
    /// sent, and neither the idle timer nor the retransmission timer runs.
    paused: bool,
    /// Most bytes in flight whatever the windows ([`ChunkSender::cap_in_flight`]).
    in_flight_cap: u64,
    /// When the pause began.
    paused_at: Instant,
    send_accept: bool,
    send_fin: bool,
    fin_at: Option<Instant>,
    abort: Option<AbortReason>,
    state: State,
    events: VecDeque<SenderEvent>,
    stats: SenderStats,
}

impl ChunkSender {
    /// Starts serving `transfer`: a file of `size` bytes with content `hash`, from byte
    /// `offset` on (clamped to `size`); chunk `seq` covers bytes `offset + seq * chunk_size..`.
    /// The first transmit is the `Accept`.
    pub fn new(
        now: Instant,
        transfer: TransferId,
        size: u64,
        hash: ContentHash,
        offset: u64,
        config: SenderConfig,
    ) -> Self {
        let offset = offset.min(size);
        let total = chunk_count(size - offset, config.chunk_size);
        let cc: Box<dyn CongestionController> = if config.reliable {
            // The stream paces and repairs itself; this only bounds what is queued on it.
            Box::new(FixedWindow(config.max_window.min(RELIABLE_WINDOW)))
        } else {
            controller(config.congestion, config.initial_window, config.max_window)
        };
        ChunkSender {
            transfer,
            size,
            end: size,
            hash,
            offset,
            total,
            cumulative: 0,
            next_new: 0,
            window: VecDeque::new(),
            lost: BTreeSet::new(),
            in_flight: InFlight::default(),
            next_tx: 0,
            largest_acked_tx: None,
            reordering: false,
            min_rtt: None,
            peer_window: config.initial_window.max(1),
            rtt: RttEstimator::new(config.initial_rto, config.min_rto, config.max_rto),
            cc,
            rto_at: None,
            loss_at: None,
            probe_at: None,
            probed: false,
            pacer: Pacer::new(now),
            pace_at: None,
            last_heard: now,
            resent_window: false,
            paused: false,
            in_flight_cap: u64::MAX,
            paused_at: now,
            send_accept: true,
            send_fin: false,
            fin_at: None,
            abort: None,
            state: State::Sending,
            events: VecDeque::new(),
            stats: SenderStats::default(),
            config,
        }
    }

    /// The transfer's id.
    pub fn transfer(&self) -> TransferId {
        self.transfer
    }

    /// Counters so far.
    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    /// True once finished or failed; the driver may drop it after draining transmits.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Stops sending until [`ChunkSender::resume`]: the seeder gave the upload slot to
    /// another transfer for a while (processor sharing of the slots, see the endpoint's
    /// queue). ACKs of the chunks in flight are still taken; the idle and retransmission
    /// timers stop (the receiver is told `Queued`, not silence). An `Abort` still goes out.
    pub fn pause(&mut self, now: Instant) {
        if !self.paused {
            self.paused = true;
            self.paused_at = now;
        }
        self.probe_at = None;
        self.pace_at = None;
    }

    /// Sends again after [`ChunkSender::pause`]: the silence before the pause still counts
    /// toward the idle timeout (the pause itself does not), so a receiver that went away
    /// ends the upload after that much time in its slot, however many turns it takes;
    /// chunks still unacknowledged get a fresh retransmission timer. The congestion
    /// controller keeps what it measured.
    pub fn resume(&mut self, now: Instant) {
        if !self.paused {
            return;
        }
        self.paused = false;
        self.last_heard =
            (self.last_heard + now.saturating_duration_since(self.paused_at)).min(now);
        self.rto_at =
            (!self.in_flight.is_empty() || !self.lost.is_empty()).then(|| now + self.rtt.rto());
        if self.fin_at.is_some() {
            self.fin_at = Some(now);
        }
        self.arm_probe(now);
    }

    /// Every chunk is acknowledged: only the FIN exchange is left (an upload then keeps its
    /// slot: a pause would hold the FIN its receiver waits for).
    pub fn all_acked(&self) -> bool {
        self.cumulative == self.total
    }

    /// Bytes the receiver acknowledged in order so far (from the start offset).
    pub fn acked_bytes(&self) -> u64 {
        (self.cumulative * u64::from(self.config.chunk_size)).min(self.end - self.offset)
    }

    /// Bytes on their way to the receiver for good: acknowledged, or on a reliable transport
    /// sent (the stream delivers what it took). A turn in an upload slot is measured in
    /// these: a stream's queues hold megabytes that a pause does not stop, and counting them
    /// when acknowledged gave the uploads with the deepest queues the largest turns.
    pub fn delivered_bytes(&self) -> u64 {
        if self.config.reliable {
            (self.next_new * u64::from(self.config.chunk_size)).min(self.end - self.offset)
        } else {
            self.acked_bytes()
        }
    }

    /// The smallest RTT measured to the receiver (the path's, without the queues a load
    /// builds), once a sample came.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// Keeps at most `bytes` in flight (at least one chunk), whatever the congestion and
    /// receive windows allow; `u64::MAX` lifts the cap. An upload slot lent in turns caps
    /// it while others wait: what is in flight when a turn ends arrives during the pause,
    /// and an uncapped window on loopback (up to 14.5 MiB measured) handed some downloads
    /// several turns' worth at once.
    pub fn cap_in_flight(&mut self, bytes: u64) {
        self.in_flight_cap = bytes;
    }

    /// Whether the sender is paused ([`ChunkSender::pause`]).
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Serves only the bytes before `end` (clamped to the file; a multi-source download's
    /// share of one source): chunks past it are never sent. Call before anything is sent.
    pub fn ending_at(mut self, end: u64) -> Self {
        self.end = end.clamp(self.offset, self.size);
        self.total = chunk_count(self.end - self.offset, self.config.chunk_size);
        self
    }

    /// Chunks acknowledged in order so far (counted from the start offset).
    pub fn acked_chunks(&self) -> u64 {
        self.cumulative
    }

    /// Congestion window in chunks (for tests and logs).
    pub fn congestion_window(&self) -> u64 {
        self.cc.window()
    }

    /// Chunks in flight, the smoothed RTT and the current RTO, backoff included (for logs).
    pub fn timers(&self) -> (usize, Option<Duration>, Duration) {
        (self.in_flight.len(), self.rtt.srtt(), self.rtt.rto())
    }

    /// Feeds a message from the receiver.
    pub fn handle_message(&mut self, now: Instant, msg: &Message) {
        if self.state == State::Done {
            return;
        }
        match msg {
            Message::Request { .. } => {
                // The Accept was lost: send it again. A Request proves nothing of its sender
                // (anyone can forge one in a victim's name), so it neither keeps the transfer
                // alive (only ACKs do) nor makes the window go again more than once.
                self.send_accept = true;
                if self.largest_acked_tx.is_none() && !self.config.reliable && !self.resent_window {
                    // Nothing acknowledged yet: the receiver dropped every chunk sent before
                    // it had the Accept. Send them again right after it, without waiting for
                    // the timer (and without a congestion signal: nothing was congested).
                    self.resent_window = true;
                    self.lost.extend(self.in_flight.take_all());
                    self.probe_at = None;
                }
            }
            Message::Ack {
                cumulative,
                sack,
                window,
                ..
            } => self.on_ack(now, *cumulative, &sack.0, u64::from(*window)),
            Message::FinAck { .. } if self.cumulative == self.total => {
                self.finish(SenderEvent::Finished);
            }
            Message::Abort { reason, .. } => {
                self.finish(SenderEvent::Failed(TransferError::Aborted(reason.clone())));
            }
            _ => {}
        }
    }

    fn on_ack(&mut self, now: Instant, cumulative: u64, sack: &[(u64, u64)], window: u64) {
        // Acknowledgements for chunks never sent are bogus: ignore the whole ACK.
        if cumulative > self.next_new || sack.iter().any(|&(_, e)| e > self.next_new) {
            return;
        }
        self.last_heard = now;
        self.peer_window = window;
        let base = self.cumulative;
        let mut newly_acked = 0u64;
        let mut largest: Option<u64> = None;
        let mut sample: Option<(u64, Instant)> = None;
        let mut reordered = false;
        let mut spurious = false;
        let largest_before = self.largest_acked_tx;
        let ranges = std::iter::once((base, cumulative.max(base)))
            .chain(sack.iter().map(|&(s, e)| (s.max(base), e)));
        for (start, end) in ranges {
            for seq in start..end {
                let s = &mut self.window[(seq - base) as usize];
                if s.acked {
                    continue;
                }
                s.acked = true;
                newly_acked += 1;
                reordered |= !s.retransmitted && largest_before.is_some_and(|l| s.tx < l);
                // A chunk sent again and acknowledged within half the smallest RTT: the ACK
                // is the first send's, which was late, not lost. (Else the first chunk a
                // reordering path holds back is declared lost by the packet threshold, and
                // its late arrival, counting as the retransmission's, would never show the
                // reordering.)
                spurious |= s.retransmitted
                    && self
                        .min_rtt
                        .is_some_and(|m| now.saturating_duration_since(s.at) < m / 2);
                self.in_flight.remove(s.tx);
                self.lost.remove(&seq);
                if largest.is_none_or(|l| s.tx > l) {
                    largest = Some(s.tx);
                }
                // Karn: a retransmitted chunk's ACK may answer either send.
                if !s.retransmitted && sample.is_none_or(|(tx, _)| s.tx > tx) {
                    sample = Some((s.tx, s.at));
                }
            }
        }
        if let Some(l) = largest {
            self.largest_acked_tx = Some(self.largest_acked_tx.map_or(l, |o| o.max(l)));
        }
        self.reordering |= reordered || spurious;
        let rtt = sample.map(|(_, at)| now.saturating_duration_since(at));
        if let Some(rtt) = rtt {
            self.rtt.on_sample(rtt);
            self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
        }
        if cumulative > base {
            self.window.drain(..(cumulative - base) as usize);
            self.cumulative = cumulative;
        }
        if newly_acked > 0 {
            self.probed = false;
            self.rtt.reset_backoff();
            self.cc.on_ack(AckSample {
                now,
                acked: newly_acked,
                rtt,
                srtt: self.rtt.srtt(),
                reordered,
                in_flight: self.in_flight.len() as u64,
            });
        }
        self.detect_losses(now);
        if !self.in_flight.is_empty() || !self.lost.is_empty() {
            if newly_acked > 0 || self.rto_at.is_none() {
                self.rto_at = Some(now + self.rtt.rto());
            }
        } else {
            self.rto_at = None;
        }
        self.arm_probe(now);
        if self.cumulative == self.total && self.fin_at.is_none() {
            self.send_fin = true;
        }
    }

    /// How long after its send a chunk with later chunks acknowledged may still arrive:
    /// reordering, not loss (RACK's reordering window: a quarter RTT, at least 2 ms).
    fn reorder_window(&self) -> Duration {
        (self.srtt() / 4).max(MIN_REORDER_WINDOW)
    }

    /// The smoothed RTT, or the initial RTO before the first sample.
    fn srtt(&self) -> Duration {
        self.rtt.srtt().unwrap_or(self.config.initial_rto)
    }

    /// Declares lost the chunks sent before the latest acknowledged one that are either
    /// `dup_thresh` transmissions older (the packet threshold) or older than one RTT plus
    /// the reordering window (the time threshold), as QUIC and RACK do; once the path was
    /// seen to reorder, only those that are both (a chunk overtaken by a few others is not
    /// lost). Arms a timer for those not old enough yet.
    fn detect_losses(&mut self, now: Instant) {
        self.loss_at = None;
        let Some(largest) = self.largest_acked_tx else {
            return;
        };
        // RACK: a chunk is late once one RTT plus the reordering window passed since its send.
        let wait = self.srtt() + self.reorder_window();
        while let Some((tx, seq)) = self.in_flight.first() {
            let by_count = tx + self.config.dup_thresh <= largest;
            if tx >= largest || (self.reordering && !by_count) {
                break;
            }
            let sent_at = self.window[(seq - self.cumulative) as usize].at;
            if now < sent_at + wait && (self.reordering || !by_count) {
                self.loss_at = Some(sent_at + wait);
                break;
            }
            self.in_flight.pop_first();
            self.lost.insert(seq);
            self.cc.on_loss(tx, self.next_tx);
        }
    }

    /// Arms the tail loss probe two smoothed RTTs plus the receiver's largest ACK delay from
    /// `now` when no new chunk may go (every chunk is sent, or the receiver's window is full)
    /// and some are in flight with nothing known lost, unless a probe went unanswered;
    /// disarms it otherwise. (With the window full, the chunks in flight may be a hole's
    /// retransmission alone: lost, nothing sent after it would expose it before the RTO.)
    fn arm_probe(&mut self, now: Instant) {
        let limit = self.cumulative + self.peer_window.min(self.config.max_window);
        // (A reliable transport loses nothing: no probes there.)
        let tail = (self.next_new == self.total || self.next_new >= limit)
            && self.lost.is_empty()
            && !self.probed
            && !self.config.reliable;
        self.probe_at =
            (tail && !self.in_flight.is_empty()).then(|| now + self.srtt() * 2 + PROBE_ACK_DELAY);
    }

    /// Call when `poll_timeout` has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Done {
            return;
        }
        if self.paused {
            // Only what ACKs of the chunks in flight showed: no idle or retransmission
            // timer while another transfer has the slot.
            if self.loss_at.is_some_and(|t| now >= t) {
                self.detect_losses(now);
            }
            return;
        }
        if self.pace_at.is_some_and(|t| now >= t) {
            // The pacer's wait is over; the next `poll_transmit` asks it again. (Cleared here
            // too: a driver that does not poll, e.g. while rate-limited, must not be woken by
            // a deadline in the past again and again.)
            self.pace_at = None;
        }
        if now >= self.last_heard + self.config.idle_timeout {
            self.abort = Some(AbortReason::Timeout);
            self.finish(SenderEvent::Failed(TransferError::Timeout {
                phase: TimeoutPhase::Acks,
                after: self.config.idle_timeout,
            }));
            return;
        }
        if self.loss_at.is_some_and(|t| now >= t) {
            self.detect_losses(now);
        }
        if self.probe_at.is_some_and(|t| now >= t) {
            // One probe per quiet spell: the next ACK (or transmission) re-arms it. The
            // window is not touched: the probe's chunk is not known to be lost.
            self.probe_at = None;
            self.probed = true;
            if let Some((tx, seq)) = self.in_flight.pop_last() {
                debug_assert!(tx < self.next_tx);
                self.lost.insert(seq);
            }
        }
        if self.rto_at.is_some_and(|t| now >= t) {
            self.stats.timeouts += 1;
            self.rtt.on_timeout();
            self.cc.on_timeout();
            self.lost.extend(self.in_flight.take_all());
            self.rto_at = Some(now + self.rtt.rto());
        }
        if self.fin_at.is_some_and(|t| now >= t) {
            self.rtt.on_timeout();
            self.send_fin = true;
            self.fin_at = None;
        }
    }

    /// The next moment `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Done {
            return None;
        }
        if self.paused {
            return self.loss_at;
        }
        [
            self.rto_at,
            self.loss_at,
            self.probe_at,
            self.fin_at,
            self.pace_at,
            Some(self.last_heard + self.config.idle_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next thing to send, if the windows allow.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<SenderTransmit> {
        if let Some(reason) = self.abort.take() {
            return Some(self.control(Message::Abort {
                transfer: self.transfer,
                reason,
            }));
        }
        if self.state == State::Done || self.paused {
            return None;
        }
        if self.send_accept {
            self.send_accept = false;
            return Some(self.control(Message::Accept {
                transfer: self.transfer,
                size: self.size,
                chunk_size: self.config.chunk_size,
                hash: self.hash,
            }));
        }
        if self.send_fin {
            self.send_fin = false;
            self.fin_at = Some(now + self.rtt.rto());
            return Some(self.control(Message::Fin {
                transfer: self.transfer,
                size: self.size,
                hash: self.hash,
            }));
        }
        self.pace_at = None;
        let cap = (self.in_flight_cap / u64::from(self.config.chunk_size)).max(1);
        let cwnd = self.cc.window().min(self.config.max_window).min(cap);
        if self.in_flight.len() as u64 >= cwnd {
            return None;
        }
        let limit = self.cumulative + self.peer_window.min(self.config.max_window);
        let has_chunk =
            !self.lost.is_empty() || (self.next_new < self.total && self.next_new < limit);
        if has_chunk {
            if let Some(at) = self.pace(now, cwnd) {
                self.pace_at = Some(at);
                return None;
            }
        }
        if let Some(seq) = self.lost.pop_first() {
            let tx = self.take_tx();
            let s = &mut self.window[(seq - self.cumulative) as usize];
            s.tx = tx;
            s.at = now;
            s.retransmitted = true;
            self.in_flight.insert(tx, seq);
            self.stats.chunks_retransmitted += 1;
            self.arm_probe(now);
            return Some(self.chunk(now, seq));
        }
        if self.next_new < self.total && self.next_new < limit {
            let seq = self.next_new;
            self.next_new += 1;
            let tx = self.take_tx();
            self.window.push_back(Sent {
                tx,
                at: now,
                retransmitted: false,
                acked: false,
            });
            self.in_flight.insert(tx, seq);
            self.stats.chunks_sent += 1;
            self.arm_probe(now);
            return Some(self.chunk(now, seq));
        }
        if self.total == self.cumulative && self.fin_at.is_none() && self.total == self.next_new {
            // Nothing to send at all (empty file, or resumed at the end): go straight to FIN.
            self.send_fin = true;
            return self.poll_transmit(now);
        }
        None
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop_front()
    }

    /// Ends the transfer locally (shutdown): an `Abort` goes out with the next transmit.
    pub fn abort(&mut self, reason: AbortReason) {
        if self.state != State::Done {
            self.abort = Some(reason.clone());
            self.finish(SenderEvent::Failed(TransferError::Cancelled(reason)));
        }
    }

    /// When the pacer holds the next chunk back: never on a reliable transport (the kernel
    /// paces TCP), nor before the first RTT sample.
    fn pace(&mut self, now: Instant, cwnd: u64) -> Option<Instant> {
        if self.config.reliable || !self.config.pacing {
            return None;
        }
        let srtt = self.rtt.srtt()?;
        let pace = self.cc.pacing_window(srtt).min(cwnd);
        self.pacer.delay(srtt, pace, now)
    }

    fn take_tx(&mut self) -> u64 {
        let tx = self.next_tx;
        self.next_tx += 1;
        tx
    }

    fn chunk(&mut self, now: Instant, seq: u64) -> SenderTransmit {
        let offset = self.offset + seq * u64::from(self.config.chunk_size);
        let len = (self.end - offset).min(u64::from(self.config.chunk_size)) as u32;
        self.stats.bytes_sent += u64::from(len);
        self.pacer.on_transmit();
        if self.rto_at.is_none() {
            self.rto_at = Some(now + self.rtt.rto());
        }
        SenderTransmit::Chunk { seq, offset, len }
    }

    fn control(&self, msg: Message) -> SenderTransmit {
        SenderTransmit::Control(msg)
    }

    fn finish(&mut self, event: SenderEvent) {
        self.state = State::Done;
        self.rto_at = None;
        self.loss_at = None;
        self.probe_at = None;
        self.fin_at = None;
        self.events.push_back(event);
    }
}
