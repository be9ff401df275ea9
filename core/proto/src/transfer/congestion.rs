//! Congestion control: how many chunks may be in flight.
//!
//! - [`Bbr`] (the default): a delivery-rate controller in the spirit of BBR. It measures the
//!   bottleneck bandwidth (the highest delivery rate over the last ten round trips) and the
//!   minimum RTT, and keeps about twice their product in flight. Random loss does not shrink
//!   the window, so throughput does not collapse on a lossy link the way it does with
//!   loss-based AIMD; real congestion shows up as a lower delivery rate and the window follows.
//!   On a path seen to reorder, the window never drops below the measured bandwidth times
//!   the smoothed RTT either: there some chunks (and ACKs) overtake the rest, so the minimum
//!   RTT seen is far below what most chunks take, and a window sized by it alone would
//!   throttle the flow to a fraction of what the path delivers. And like Linux's BBR, the
//!   window also covers ACK aggregation: when ACKs arrive in bursts (a receiver that
//!   acknowledges a batch at a time, offloads that merge packets), the chunks acknowledged
//!   beyond what the bandwidth explains are added, or the sender would sit idle between
//!   bursts. When no RTT sample has come down to the minimum for 10 s, a ProbeRTT phase
//!   holds the window at its floor for 200 ms and a round trip, so that a queue standing all
//!   that time drains and the minimum RTT is measured afresh, not replaced by the RTT the
//!   window's own queue adds (which would then grow the window, and the queue, without end).
//! - [`NewReno`]: slow start plus AIMD with one halving per loss episode.
//! - [`FixedWindow`]: no control, for transports that do their own (TCP).
//!
//! Windows count chunks. Every controller stays within `[min, max]`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What an acknowledgement tells the controller.
#[derive(Clone, Copy, Debug)]
pub struct AckSample {
    /// When the ACK arrived.
    pub now: Instant,
    /// Chunks newly acknowledged by it.
    pub acked: u64,
    /// RTT measured from it (Karn's rule applied), if any.
    pub rtt: Option<Duration>,
    /// The sender's smoothed RTT (RFC 6298), this sample included.
    pub srtt: Option<Duration>,
    /// A chunk it acknowledged was sent before one acknowledged earlier, and not resent:
    /// the path reorders.
    pub reordered: bool,
    /// Chunks in flight once it is counted.
    pub in_flight: u64,
}

/// Which controller a sender uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CongestionKind {
    /// Delivery-rate based, loss tolerant.
    #[default]
    Bbr,
    /// Loss-based AIMD.
    NewReno,
}

/// A congestion controller fed by the sender.
pub trait CongestionController: std::fmt::Debug + Send {
    /// Chunks allowed in flight.
    fn window(&self) -> u64;
    /// The window the pacer spreads over a smoothed RTT of `srtt` (see
    /// [`Pacer::delay`](super::pacing::Pacer::delay)): by default the congestion window
    /// itself; a rate-based controller paces at the rate it measured instead.
    fn pacing_window(&self, _srtt: Duration) -> u64 {
        self.window()
    }
    /// An ACK acknowledged `sample.acked` new chunks.
    fn on_ack(&mut self, sample: AckSample);
    /// A chunk sent as transmission number `tx` was declared lost; `next_tx` is the number the
    /// next transmission will get (so losses of chunks sent before it belong to this episode).
    fn on_loss(&mut self, tx: u64, next_tx: u64);
    /// The retransmission timer fired.
    fn on_timeout(&mut self);
}

/// Creates the controller of `kind`, starting at `initial` chunks, capped at `max`.
pub fn controller(kind: CongestionKind, initial: u64, max: u64) -> Box<dyn CongestionController> {
    match kind {
        CongestionKind::Bbr => Box::new(Bbr::new(initial, max)),
        CongestionKind::NewReno => Box::new(NewReno::new(initial, max)),
    }
}

/// NewReno-style AIMD in chunks.
#[derive(Clone, Debug)]
pub struct NewReno {
    cwnd: u64,
    ssthresh: u64,
    acc: u64,
    recovery_until_tx: u64,
    min: u64,
    max: u64,
}

impl NewReno {
    /// Starts at `initial` chunks, never below 2 nor above `max`.
    pub fn new(initial: u64, max: u64) -> Self {
        NewReno {
            cwnd: initial.clamp(2, max.max(2)),
            ssthresh: u64::MAX,
            acc: 0,
            recovery_until_tx: 0,
            min: 2,
            max: max.max(2),
        }
    }
}

impl CongestionController for NewReno {
    fn window(&self) -> u64 {
        self.cwnd
    }

    fn on_ack(&mut self, sample: AckSample) {
        let acked = sample.acked;
        if self.cwnd < self.ssthresh {
            self.cwnd = (self.cwnd + acked).min(self.max);
        } else {
            self.acc += acked;
            while self.acc >= self.cwnd {
                self.acc -= self.cwnd;
                self.cwnd = (self.cwnd + 1).min(self.max);
            }
        }
    }

    fn on_loss(&mut self, tx: u64, next_tx: u64) {
        if tx < self.recovery_until_tx {
            return; // same loss episode
        }
        self.recovery_until_tx = next_tx;
        self.ssthresh = (self.cwnd / 2).max(self.min);
        self.cwnd = self.ssthresh;
        self.acc = 0;
    }

    fn on_timeout(&mut self) {
        self.ssthresh = (self.cwnd / 2).max(self.min);
        self.cwnd = self.min;
        self.acc = 0;
    }
}

/// Rounds of delivery-rate samples the bandwidth filter remembers.
const BW_ROUNDS: usize = 10;
/// A minimum RTT older than this is replaced by newer samples.
const MIN_RTT_LIFETIME: Duration = Duration::from_secs(10);
/// In-flight target as a multiple of the bandwidth-delay product.
const CWND_GAIN: f64 = 2.0;
/// ACK aggregation counts for at most this much of the bandwidth.
const MAX_AGGREGATION: Duration = Duration::from_millis(100);
/// Every this many rounds, one round probes for more bandwidth.
const PROBE_EVERY: u64 = 8;
/// Start-up's window as a multiple of the measured bandwidth-delay product (BBR's 2/ln 2).
const STARTUP_GAIN: f64 = 2.89;
/// Share of a start-up round's chunks lost above which start-up ends (BBRv2's 2 %).
const STARTUP_LOSS: f64 = 0.02;
/// A start-up round's loss counts as the queue's overflow only if its largest RTT sample is
/// this many times the minimum (the queue has filled), not random loss.
const STARTUP_QUEUE_RTT: f64 = 1.25;
/// Fewest chunks a start-up round must lose for [`STARTUP_LOSS`] to count (BBRv2's 8): a
/// random loss or two of a small window is no overflow.
const STARTUP_LOSS_EVENTS: u64 = 8;
/// Extra gain of a probing round.
const PROBE_GAIN: f64 = 1.25;
/// Gain of the round after a probe, which drains what the probe queued.
const DRAIN_GAIN: f64 = 0.75;
/// Pacing gain after start-up until what is in flight is back to the bandwidth-delay
/// product (BBR's Drain: the inverse of start-up's gain).
const STARTUP_DRAIN_GAIN: f64 = 1.0 / STARTUP_GAIN;
/// Rounds Drain lasts at most: a queue that another flow keeps full never drains below the
/// product, and a drain that waited for it starved this flow (its rate measured at a third,
/// the filter forgetting the rest: 9 % of a link shared with one TCP flow).
const MAX_DRAIN_ROUNDS: u64 = 2;
/// How long ProbeRTT holds the window at its floor, after a round trip for the queue to drain.
const PROBE_RTT_TIME: Duration = Duration::from_millis(200);
/// Longest wait for the queue to drain before ProbeRTT's floor counts: a smoothed RTT, but no
/// more than this (after an outage one sample can make the smoothed RTT seconds long).
const PROBE_RTT_MAX_DRAIN: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Exponential growth until the delivery rate stops growing.
    Startup,
    /// Start-up is over: sending slowly until the queue it built has drained (what is in
    /// flight is down to the bandwidth-delay product), then [`Mode::Steady`].
    Drain,
    /// Window follows the measured bandwidth-delay product.
    Steady,
    /// Window at its floor until then, to measure the minimum RTT afresh; then back to the
    /// mode it interrupted.
    ProbeRtt { until: Instant, then: ProbeFrom },
}

/// The mode a ProbeRTT phase returns to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProbeFrom {
    Startup,
    Steady,
}

/// Delivery-rate based congestion control (see the module docs).
#[derive(Clone, Debug)]
pub struct Bbr {
    cwnd: u64,
    min: u64,
    max: u64,
    mode: Mode,
    min_rtt: Option<(Duration, Instant)>,
    /// The path was seen to reorder: the minimum RTT may come from chunks that overtook the
    /// rest, so the window also keeps bandwidth × smoothed RTT.
    reordering: bool,
    /// Chunks delivered in the current round, and when it started.
    round_delivered: u64,
    round_start: Option<Instant>,
    rounds: u64,
    /// Delivery rate (chunks per second) of recent rounds.
    bw: VecDeque<f64>,
    /// The current ACK aggregation epoch: when it started and chunks acknowledged since.
    ack_epoch: Option<(Instant, u64)>,
    /// Largest excess of acknowledged chunks over what the bandwidth explains, per round,
    /// for the last [`BW_ROUNDS`] rounds.
    extra_acked: VecDeque<u64>,
    full_bw: f64,
    full_bw_rounds: u32,
    /// A retransmission timeout emptied the pipe: the next ACK restamps the minimum RTT
    /// instead of probing for it.
    restamp: bool,
    /// The gain of the current round of the steady gain cycle (probe, drain, cruise).
    pacing_gain: f64,
    /// Chunks declared lost in this round (start-up only).
    round_lost: u64,
    /// Largest RTT sample of this round (start-up only).
    round_max_rtt: Duration,
    /// The round Drain began in: it lasts [`MAX_DRAIN_ROUNDS`] at most.
    drain_from: u64,
}

impl Bbr {
    /// Starts at `initial` chunks, never below 4 (or `max`) nor above `max`.
    pub fn new(initial: u64, max: u64) -> Self {
        let max = max.max(2);
        let min = 4.min(max);
        Bbr {
            cwnd: initial.clamp(min, max),
            min,
            max,
            mode: Mode::Startup,
            min_rtt: None,
            reordering: false,
            round_delivered: 0,
            round_start: None,
            rounds: 0,
            bw: VecDeque::with_capacity(BW_ROUNDS),
            ack_epoch: None,
            extra_acked: VecDeque::with_capacity(BW_ROUNDS),
            full_bw: 0.0,
            full_bw_rounds: 0,
            restamp: false,
            pacing_gain: 1.0,
            round_lost: 0,
            round_max_rtt: Duration::ZERO,
            drain_from: 0,
        }
    }

    fn max_bw(&self) -> f64 {
        self.bw.iter().copied().fold(0.0, f64::max)
    }

    /// Measures ACK aggregation (Linux BBR's `bbr_update_ack_aggregation`): within an epoch,
    /// the chunks acknowledged beyond `max_bw × elapsed` arrived in a burst the window must
    /// cover. An epoch ends when the ACKs fall back to the rate.
    fn update_aggregation(&mut self, now: Instant, acked: u64) {
        let bw = self.max_bw();
        let (start, epoch_acked) = self.ack_epoch.get_or_insert((now, 0));
        let expected = |start: Instant| bw * now.duration_since(start).as_secs_f64();
        if bw <= 0.0 || *epoch_acked as f64 <= expected(*start) {
            *start = now;
            *epoch_acked = 0;
        }
        *epoch_acked += acked;
        let extra = (*epoch_acked as f64 - expected(*start)).max(0.0);
        // As in Linux: at most a window, and at most 100 ms of the bandwidth, so that one
        // late cumulative ACK after a stall does not double the window for ten rounds.
        let extra = (extra.min(bw * MAX_AGGREGATION.as_secs_f64()) as u64).min(self.cwnd);
        match self.extra_acked.back_mut() {
            Some(last) => *last = (*last).max(extra),
            None => self.extra_acked.push_back(extra),
        }
    }

    /// The bandwidth-delay product the window is sized from, in chunks (0 before a rate and
    /// an RTT are measured): bandwidth x minimum RTT; on a reordering path at least
    /// bandwidth x smoothed RTT, what keeps the best measured rate going at the mean RTT
    /// (Little's law). Only there: elsewhere the smoothed RTT includes the queue the window
    /// itself builds, and a floor on it would feed on itself.
    fn bdp(&self, srtt: Option<Duration>) -> f64 {
        let Some((min_rtt, _)) = self.min_rtt else {
            return 0.0;
        };
        let bw = self.max_bw();
        let bdp = bw * min_rtt.as_secs_f64();
        if self.reordering {
            bdp.max(bw * srtt.unwrap_or(min_rtt).as_secs_f64() / CWND_GAIN)
        } else {
            bdp
        }
    }

    fn start_drain(&mut self) {
        self.mode = Mode::Drain;
        self.drain_from = self.rounds;
    }

    fn end_drain(&mut self) {
        self.mode = Mode::Steady;
        self.pacing_gain = 1.0;
        // The gain cycle goes on from a cruising round, not with a probe.
        self.rounds += (PROBE_EVERY + 2 - self.rounds % PROBE_EVERY) % PROBE_EVERY;
    }

    fn end_round(&mut self, now: Instant, start: Instant) {
        let secs = now.duration_since(start).as_secs_f64();
        if secs > 0.0 {
            if self.bw.len() == BW_ROUNDS {
                self.bw.pop_front();
            }
            self.bw.push_back(self.round_delivered as f64 / secs);
        }
        if self.extra_acked.len() == BW_ROUNDS {
            self.extra_acked.pop_front();
        }
        self.extra_acked.push_back(0);
        self.rounds += 1;
        // Start-up also ends on a round that lost more than a random loss would (BBRv2's
        // exit): the window has outgrown the router's queue, and another doubling would only
        // lose more (at 200 ms, a 100 ms queue overflows long before the rate stops growing).
        let lost = std::mem::take(&mut self.round_lost);
        let max_rtt = std::mem::take(&mut self.round_max_rtt);
        // ... and only when the round's RTT shows a queue: random loss (a lossy radio link)
        // at 3 % would end start-up at a few hundred chunks otherwise, and the steady state
        // grows by a quarter every eight rounds (measured: 3.4 MiB/s at 100 ms, 3 % loss,
        // against 8 before the loss exit).
        let queued = self
            .min_rtt
            .is_some_and(|(m, _)| max_rtt.as_secs_f64() >= m.as_secs_f64() * STARTUP_QUEUE_RTT);
        let overflowed = lost >= STARTUP_LOSS_EVENTS
            && lost as f64 > STARTUP_LOSS * (self.round_delivered + lost) as f64
            && queued;
        self.round_delivered = 0;
        self.round_start = Some(now);
        if self.mode == Mode::Drain && self.rounds >= self.drain_from + MAX_DRAIN_ROUNDS {
            self.end_drain();
        } else if self.mode == Mode::Startup && overflowed && self.max_bw() > 0.0 {
            self.start_drain();
        } else if self.mode == Mode::Startup {
            let bw = self.max_bw();
            if bw > self.full_bw * 1.25 {
                self.full_bw = bw;
                self.full_bw_rounds = 0;
            } else {
                self.full_bw_rounds += 1;
                if self.full_bw_rounds >= 3 {
                    self.start_drain();
                }
            }
        }
    }
}

impl CongestionController for Bbr {
    fn window(&self) -> u64 {
        self.cwnd
    }

    /// In the steady state, BBR paces at the measured bandwidth times the cycle's gain, and
    /// the window (twice the bandwidth-delay product) is only a cap: a sender that paced
    /// the whole window over an RTT would send twice what the bottleneck drains, and fill
    /// any router queue shorter than a round trip until it drops (measured in the long-path
    /// simulation: a third of the datagrams lost in a 100 ms queue at 200 ms). In start-up,
    /// and before a rate is known, the window sets the pace.
    fn pacing_window(&self, srtt: Duration) -> u64 {
        let bw = self.max_bw();
        if !matches!(self.mode, Mode::Steady | Mode::Drain) || bw <= 0.0 {
            return self.cwnd;
        }
        // The pacer adds its own gain on top of the window's rate: take it out.
        let w = self.pacing_gain * bw * srtt.as_secs_f64() / super::pacing::GAIN;
        (w.ceil() as u64).clamp(self.min, self.cwnd)
    }

    fn on_ack(&mut self, s: AckSample) {
        if std::mem::take(&mut self.restamp) {
            if let Some((m, _)) = self.min_rtt {
                self.min_rtt = Some((m, s.now));
            }
        }
        let expired = self
            .min_rtt
            .is_some_and(|(_, at)| s.now.duration_since(at) > MIN_RTT_LIFETIME);
        if expired && !matches!(self.mode, Mode::ProbeRtt { .. }) {
            // The chunks in flight drain within a smoothed RTT; then the floor holds long
            // enough for RTT samples of an empty queue.
            let drain = s.srtt.unwrap_or(Duration::ZERO).min(PROBE_RTT_MAX_DRAIN);
            self.mode = Mode::ProbeRtt {
                until: s.now + drain + PROBE_RTT_TIME,
                then: if self.mode == Mode::Startup {
                    ProbeFrom::Startup
                } else {
                    ProbeFrom::Steady // from Drain too: what drains, ProbeRTT's floor drains
                },
            };
        }
        if let Some(rtt) = s.rtt {
            let stale = self
                .min_rtt
                .is_none_or(|(m, at)| rtt <= m || s.now.duration_since(at) > MIN_RTT_LIFETIME);
            if stale {
                self.min_rtt = Some((rtt, s.now));
            }
        }
        self.reordering |= s.reordered;
        if let Mode::ProbeRtt { until, then } = self.mode {
            // As Linux marks ProbeRTT app-limited: what the floor delivers says nothing of
            // the bandwidth, so it is not measured, and measuring starts afresh after.
            self.cwnd = self.min;
            if s.now >= until {
                self.mode = match then {
                    ProbeFrom::Startup => Mode::Startup,
                    ProbeFrom::Steady => Mode::Steady,
                };
                // The probe measured the minimum, or found nothing lower (as Linux, which
                // restamps it): a probe without RTT samples must not be followed by another.
                if let Some((m, _)) = self.min_rtt {
                    self.min_rtt = Some((m, s.now));
                }
                self.round_start = Some(s.now);
                self.round_delivered = 0;
                self.ack_epoch = None;
            }
            return;
        }
        self.update_aggregation(s.now, s.acked);
        self.round_delivered += s.acked;
        if let Some(rtt) = s.rtt {
            self.round_max_rtt = self.round_max_rtt.max(rtt);
        }
        let start = *self.round_start.get_or_insert(s.now);
        // A round lasts one smoothed RTT (at least a millisecond, so that loopback rounds
        // still average over many ACKs): the time a chunk sent now takes to be acknowledged,
        // which the minimum RTT understates when chunks overtake each other.
        let round_len = s
            .srtt
            .or(self.min_rtt.map(|(m, _)| m))
            .unwrap_or(Duration::from_millis(1))
            .max(Duration::from_millis(1));
        if s.now.duration_since(start) >= round_len {
            self.end_round(s.now, start);
        }
        match self.mode {
            Mode::ProbeRtt { .. } => {} // returned above
            Mode::Startup => {
                // Doubling per round, but never past the start-up gain times the measured
                // bandwidth-delay product (BBR's start-up target): the delivery rate lags a
                // round behind, and unbounded doubling overran a 100 ms router queue by
                // three times its size before the loss exit saw it (the long-path
                // simulation).
                let grown = self.cwnd + s.acked;
                let bdp = self.bdp(s.srtt);
                let cap = if bdp > 0.0 {
                    (STARTUP_GAIN * bdp).ceil() as u64
                        + self.extra_acked.iter().copied().max().unwrap_or(0)
                } else {
                    u64::MAX
                };
                self.cwnd = grown.min(cap.max(self.cwnd)).min(self.max);
            }
            Mode::Drain => {
                // Start-up left up to its gain times the path's product in flight, the rest
                // in the bottleneck's queue: paced slowly until it drained (left there, the
                // steady state paces at the rate the link drains, so a full queue stays full
                // and every probe overflows it).
                self.pacing_gain = STARTUP_DRAIN_GAIN;
                let bdp = self.bdp(s.srtt);
                let extra = self.extra_acked.iter().copied().max().unwrap_or(0);
                let target = (bdp * CWND_GAIN).ceil() as u64 + extra;
                self.cwnd = target.clamp(self.min, self.max);
                if bdp > 0.0 && s.in_flight as f64 <= bdp {
                    self.end_drain();
                }
            }
            Mode::Steady => {
                if self.min_rtt.is_none() {
                    return;
                }
                // BBR's gain cycle: one round probes for more bandwidth, the next drains
                // the queue that probe may have left, the others cruise.
                let gain = match self.rounds % PROBE_EVERY {
                    0 => PROBE_GAIN,
                    1 => DRAIN_GAIN,
                    _ => 1.0,
                };
                self.pacing_gain = gain;
                let extra = self.extra_acked.iter().copied().max().unwrap_or(0);
                let target = (self.bdp(s.srtt) * CWND_GAIN * gain).ceil() as u64 + extra;
                self.cwnd = target.clamp(self.min, self.max);
            }
        }
    }

    fn on_loss(&mut self, _tx: u64, _next_tx: u64) {
        // Random loss says nothing about the bottleneck: the delivery rate will. Only
        // start-up counts it, to stop growing once a round loses more than random loss.
        if self.mode == Mode::Startup {
            self.round_lost += 1;
        }
    }

    fn on_timeout(&mut self) {
        // Nothing came back for a whole RTO: start over gently, keep what was learned.
        self.cwnd = self.min;
        if self.mode == Mode::Drain {
            self.mode = Mode::Steady; // the timeout emptied the queue
        } else if self.mode != Mode::Steady {
            self.mode = Mode::Startup;
            self.full_bw = 0.0;
            self.full_bw_rounds = 0;
        }
        // Nothing is queued after a timeout, as after a ProbeRTT phase (which this also ends):
        // the minimum RTT counts as measured now, or the first ACK after an outage would
        // start a probe, at the floor, while the sender recovers from the timeout.
        self.restamp = true;
    }
}

/// No congestion control: a fixed window, for transports that do their own (TCP).
#[derive(Clone, Debug)]
pub struct FixedWindow(pub u64);

impl CongestionController for FixedWindow {
    fn window(&self) -> u64 {
        self.0
    }
    fn on_ack(&mut self, _: AckSample) {}
    fn on_loss(&mut self, _: u64, _: u64) {}
    fn on_timeout(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::super::rtt::RttEstimator;
    use super::*;

    /// A sample on a path of constant RTT (whose smoothed RTT is that RTT).
    fn ack(now: Instant, acked: u64, rtt_ms: u64) -> AckSample {
        let rtt = Some(Duration::from_millis(rtt_ms));
        AckSample {
            now,
            acked,
            rtt,
            srtt: rtt,
            reordered: false,
            in_flight: 0,
        }
    }

    /// Samples as a sender makes them, with its smoothed RTT.
    struct Samples(RttEstimator);

    impl Samples {
        fn new() -> Self {
            Samples(RttEstimator::new(
                Duration::ZERO,
                Duration::ZERO,
                Duration::MAX,
            ))
        }

        fn ack(&mut self, now: Instant, acked: u64, rtt: Duration, reordered: bool) -> AckSample {
            self.0.on_sample(rtt);
            AckSample {
                now,
                acked,
                rtt: Some(rtt),
                srtt: self.0.srtt(),
                reordered,
                in_flight: 0,
            }
        }
    }

    #[test]
    fn newreno_slow_start_then_one_halving_per_episode() {
        let t = Instant::now();
        let mut cc = NewReno::new(10, 1000);
        cc.on_ack(ack(t, 10, 10));
        assert_eq!(cc.window(), 20);
        cc.on_loss(5, 30);
        assert_eq!(cc.window(), 10);
        cc.on_loss(6, 31); // same episode: sent before the first loss was seen
        assert_eq!(cc.window(), 10);
        cc.on_ack(ack(t, 10, 10)); // congestion avoidance: +1 per window
        assert_eq!(cc.window(), 11);
        cc.on_loss(40, 50);
        assert_eq!(cc.window(), 5);
        cc.on_timeout();
        assert_eq!(cc.window(), 2);
    }

    #[test]
    fn windows_are_bounded() {
        let t = Instant::now();
        let mut reno = NewReno::new(10, 64);
        let mut bbr = Bbr::new(10, 64);
        for i in 0..1000 {
            let now = t + Duration::from_millis(i);
            reno.on_ack(ack(now, 64, 1));
            bbr.on_ack(ack(now, 64, 1));
        }
        assert_eq!(reno.window(), 64);
        assert!(bbr.window() <= 64);
    }

    /// A path of `bw` chunks per ms with a 10 ms RTT: the window settles near twice the BDP
    /// (100 chunks) whatever the random loss, and never collapses.
    #[test]
    fn bbr_window_follows_the_bandwidth_delay_product_despite_loss() {
        let t = Instant::now();
        let mut bbr = Bbr::new(10, 10_000);
        let bw_per_ms = 10; // chunks
        for ms in 0..2_000u64 {
            let now = t + Duration::from_millis(ms);
            // The path delivers at most bw per ms, whatever the window.
            let delivered = bw_per_ms.min(bbr.window());
            bbr.on_ack(ack(now, delivered, 10));
            if ms % 7 == 0 {
                bbr.on_loss(ms, ms + 1); // ~14 % of milliseconds see a loss
            }
        }
        let w = bbr.window();
        assert!((150..=300).contains(&w), "window {w}, BDP 100");
    }

    /// A reordering path: one ACK in four answers a chunk that overtook the rest (RTT 0.1 ms),
    /// the others see the real 10 ms. The window must still carry the path's bandwidth at the
    /// mean RTT, not at the 0.1 ms minimum.
    #[test]
    fn bbr_window_is_not_throttled_by_overtaking_chunks() {
        let t = Instant::now();
        let mut bbr = Bbr::new(10, 10_000);
        let mut samples = Samples::new();
        let bw_per_ms = 10; // chunks the path delivers per ms at most
        for ms in 0..3_000u64 {
            let now = t + Duration::from_millis(ms);
            // Little's law: a window of w chunks delivers w per mean RTT (7.5 ms), up to the
            // path's bandwidth.
            let delivered = bw_per_ms.min(bbr.window() * 4 / 30).max(1);
            let overtook = ms % 4 == 0;
            let rtt = if overtook {
                Duration::from_micros(100)
            } else {
                Duration::from_millis(10)
            };
            // The chunks acknowledged after an overtaking one were sent before it.
            bbr.on_ack(samples.ack(now, delivered, rtt, ms % 4 == 1));
        }
        let w = bbr.window();
        assert!(
            (75..=400).contains(&w),
            "window {w}, 75 carry the path's bandwidth"
        );
    }

    /// A path with a queue: 10 chunks per ms, 20 ms base RTT (BDP 200 chunks); chunks in
    /// flight beyond the BDP wait in the queue and lengthen the RTT. For a minute (six
    /// lifetimes of the minimum RTT), the window must stay near BBR's twice the BDP, not grow
    /// on the RTT its own queue adds when the minimum is measured afresh (ProbeRTT drains the
    /// queue first), and the probes must cost little of the path's capacity.
    #[test]
    fn bbr_window_does_not_feed_on_its_own_queue() {
        let t = Instant::now();
        let mut bbr = Bbr::new(10, 1024);
        let mut samples = Samples::new();
        let (bw, base_ms) = (10.0f64, 20.0f64);
        let bdp = bw * base_ms;
        let (mut carry, mut delivered_after_startup, mut largest) = (0.0, 0.0, 0);
        for ms in 0..60_000u64 {
            let now = t + Duration::from_millis(ms);
            let w = bbr.window() as f64;
            let rtt_ms = base_ms + (w - bdp).max(0.0) / bw;
            carry += (w / rtt_ms).min(bw);
            let delivered = carry.floor();
            carry -= delivered;
            if ms >= 2_000 {
                delivered_after_startup += delivered;
                largest = largest.max(bbr.window());
            }
            let rtt = Duration::from_secs_f64(rtt_ms / 1000.0);
            bbr.on_ack(samples.ack(now, delivered as u64, rtt, false));
        }
        let w = bbr.window();
        assert!((200..=600).contains(&w), "window {w}, BDP 200");
        assert!(largest <= 600, "window grew to {largest}, BDP 200");
        let share = delivered_after_startup / (bw * 58_000.0);
        assert!(share >= 0.95, "{share:.3} of the path's capacity used");
    }

    /// ProbeRTT comes only when the minimum RTT went 10 s without a sample as low, and
    /// holds the window at its floor for 200 ms and a round trip.
    #[test]
    fn bbr_probes_rtt_only_when_the_minimum_is_stale() {
        let t = Instant::now();
        let run = |queue_ms: u64| {
            let mut bbr = Bbr::new(10, 1024);
            let mut samples = Samples::new();
            let mut floor_ms = Vec::new();
            for ms in 0..25_000u64 {
                // Every 5 s a sample at the base RTT, unless a queue stands all the time.
                let rtt_ms = if ms % 5_000 == 0 { 20 } else { 20 + queue_ms };
                let rtt = Duration::from_millis(rtt_ms);
                bbr.on_ack(samples.ack(t + Duration::from_millis(ms), 10, rtt, false));
                if ms > 1_000 && bbr.window() == 4 {
                    floor_ms.push(ms);
                }
            }
            floor_ms
        };
        assert_eq!(run(0), Vec::<u64>::new(), "RTT samples at the minimum");
        // A standing 20 ms queue, and base-RTT samples every 5 s (they refresh the minimum)
        let refreshed = run(20);
        assert_eq!(refreshed, Vec::<u64>::new(), "minimum refreshed every 5 s");
        // Never at the base RTT after the start: a probe at 10 s.
        let mut bbr = Bbr::new(10, 1024);
        let mut samples = Samples::new();
        let mut floor_ms = Vec::new();
        for ms in 0..25_000u64 {
            let rtt = Duration::from_millis(if ms == 0 { 20 } else { 40 });
            bbr.on_ack(samples.ack(t + Duration::from_millis(ms), 10, rtt, false));
            if bbr.window() == 4 {
                floor_ms.push(ms);
            }
        }
        let first = floor_ms.first().copied().expect("a ProbeRTT phase");
        assert!(
            (10_000..10_100).contains(&first),
            "first probe at {first} ms"
        );
        // Then 40 ms is the minimum, which every sample refreshes: no more probes.
        assert_one_probe_at_10_s(&floor_ms);
    }

    /// The milliseconds a window spent at its floor are those of one probe from 10 s: 200 ms
    /// plus the smoothed RTT of 40 ms.
    fn assert_one_probe_at_10_s(floor_ms: &[u64]) {
        assert!(
            (230..=250).contains(&floor_ms.len()),
            "{} ms at the floor",
            floor_ms.len()
        );
        assert!(floor_ms.iter().all(|&ms| ms < 10_300), "{floor_ms:?}");
    }

    /// A probe during which no ACK carries an RTT sample (Karn's rule: only retransmissions
    /// acknowledged) is not followed by another at once: the window leaves the floor when it
    /// is over.
    #[test]
    fn bbr_probe_without_rtt_samples_is_not_repeated() {
        let t = Instant::now();
        let mut bbr = Bbr::new(10, 1024);
        let mut floor_ms = Vec::new();
        for ms in 0..13_000u64 {
            let now = t + Duration::from_millis(ms);
            let rtt = match ms {
                0 => Some(Duration::from_millis(20)),
                1..10_000 => Some(Duration::from_millis(40)),
                _ => None,
            };
            bbr.on_ack(AckSample {
                now,
                acked: 10,
                rtt,
                srtt: Some(Duration::from_millis(40)),
                reordered: false,
                in_flight: 0,
            });
            if ms > 1_000 && bbr.window() == 4 {
                floor_ms.push(ms);
            }
        }
        assert_one_probe_at_10_s(&floor_ms);
    }

    /// Start-up on a path of 10 chunks per ms and 20 ms (BDP 200) whose queue holds far
    /// more: the window doubles each round but stops at 2.89 times the measured BDP (plus
    /// the aggregation allowance), instead of doubling until the queue overflows.
    #[test]
    fn bbr_start_up_stops_at_its_gain_times_the_measured_bdp() {
        let t = Instant::now();
        let mut bbr = Bbr::new(10, 100_000);
        let mut largest = 0;
        for ms in 0..400u64 {
            let now = t + Duration::from_millis(ms);
            // The path delivers at most 10 per ms; the window's surplus waits in the queue
            // (no loss), so it sets no limit on what start-up would grow to.
            let delivered = 10.min(bbr.window() / 20).max(1);
            bbr.on_ack(ack(now, delivered, 20));
            largest = largest.max(bbr.window());
        }
        // (Unbounded, start-up reached 930 before three rounds without growth ended it.)
        assert!(
            (200..=700).contains(&largest),
            "largest window {largest}: BDP 200, cap 578 + aggregation"
        );
    }

    /// Start-up ends on a round that lost over 2 % (8 chunks or more) only when its RTT
    /// shows a queue (the largest sample 1.25 times the minimum): that is the router's
    /// queue overflowing. The same loss at the base RTT is random loss, and start-up goes on.
    #[test]
    fn bbr_start_up_ends_on_loss_only_when_a_queue_shows() {
        for queued in [false, true] {
            let t = Instant::now();
            let mut bbr = Bbr::new(10, 100_000);
            for ms in 0..=35u64 {
                let rtt = if queued && ms > 0 { 30 } else { 20 };
                bbr.on_ack(ack(t + Duration::from_millis(ms), 10, rtt));
                if ms % 2 == 0 {
                    bbr.on_loss(ms, ms + 1); // 5 % of what is delivered
                }
            }
            assert_eq!(bbr.mode == Mode::Startup, !queued, "queue: {queued}");
        }
    }

    /// After start-up (here ended by the queue's overflow) the sender drains the queue it
    /// built: paced at a 2.89th of the measured rate while more than the bandwidth-delay
    /// product is in flight, at the rate itself once it is down to it.
    #[test]
    fn bbr_drains_the_start_up_queue_before_its_steady_state() {
        let t = Instant::now();
        let mut bbr = Bbr::new(10, 100_000);
        let ms = |n: u64| t + Duration::from_millis(n);
        let sample = |n: u64, rtt: u64, in_flight: u64| AckSample {
            in_flight,
            ..ack(ms(n), 10, rtt)
        };
        // 10 chunks a ms over 20 ms (BDP 200), the queue showing and 5 % lost: start-up ends.
        for n in 0..=35u64 {
            bbr.on_ack(sample(n, if n > 0 { 30 } else { 20 }, 500));
            if n % 2 == 0 {
                bbr.on_loss(n, n + 1);
            }
        }
        assert_eq!(bbr.mode, Mode::Drain);
        let srtt = Duration::from_millis(20);
        let paced = |bbr: &Bbr| bbr.pacing_window(srtt) as f64 * super::super::pacing::GAIN;
        // 500 in flight: paced at about 200 / 2.89 a round.
        bbr.on_ack(sample(36, 30, 500));
        assert_eq!(bbr.mode, Mode::Drain);
        assert!(
            (60.0..=80.0).contains(&paced(&bbr)),
            "draining at {} a round",
            paced(&bbr)
        );
        // Down to the product: steady, paced at the rate (a cruising round, not a probe).
        bbr.on_ack(sample(37, 20, 150));
        assert_eq!(bbr.mode, Mode::Steady);
        bbr.on_ack(sample(38, 20, 150));
        assert!(
            (190.0..=215.0).contains(&paced(&bbr)),
            "steady at {} a round",
            paced(&bbr)
        );
    }

    /// A retransmission timeout in the steady state keeps what was measured: the window is
    /// at its floor until the next ACK, then at twice the BDP again (not a start-up from
    /// the floor, which took eight 300 ms rounds to refill a long path).
    #[test]
    fn bbr_keeps_its_model_across_a_timeout_in_steady_state() {
        let t = Instant::now();
        let mut bbr = Bbr::new(10, 100_000);
        let ms = |n: u64| t + Duration::from_millis(n);
        for n in 0..2_000u64 {
            let delivered = 10.min(bbr.window() / 20).max(1);
            bbr.on_ack(ack(ms(n), delivered, 20));
        }
        let before = bbr.window();
        assert!(before >= 400, "steady window {before}");
        bbr.on_timeout();
        assert_eq!(bbr.window(), 4);
        bbr.on_ack(ack(ms(2_500), 1, 20));
        let after = bbr.window();
        assert!(
            after >= 400,
            "window {after} on the first ACK after the timeout"
        );
    }

    /// After an outage: the minimum RTT is 10 s old, one late sample made the smoothed RTT
    /// seconds long, and the retransmission timer fired. The ACKs that follow (of resent
    /// chunks: no RTT samples) must let the window grow back from the floor, not start a
    /// ProbeRTT phase that would hold it there (paced by that smoothed RTT: a chunk a second,
    /// timeouts again, and a new probe after each: the simulation seeds 69, 109, 155 of
    /// `partition_heals_udp` never finished).
    #[test]
    fn bbr_recovers_from_a_timeout_without_probing() {
        let t = Instant::now();
        let mut bbr = Bbr::new(10, 1024);
        let ms = |n: u64| t + Duration::from_millis(n);
        // (The 40 ms minimum is never seen again: 10 s old at 12 s.)
        bbr.on_ack(ack(ms(0), 10, 40));
        for n in 1..9_000u64 {
            bbr.on_ack(ack(ms(n), 10, 50));
        }
        // Silence from 9 s (the outage), the timer at 12 s, then ACKs again.
        bbr.on_timeout();
        assert_eq!(bbr.window(), 4);
        for n in 12_000..12_100u64 {
            bbr.on_ack(AckSample {
                now: ms(n),
                acked: 4,
                rtt: None,
                srtt: Some(Duration::from_millis(5_500)),
                reordered: false,
                in_flight: 0,
            });
        }
        assert!(
            bbr.window() > 100,
            "window {} after the timeout",
            bbr.window()
        );
    }

    /// ACKs that come in bursts (every 5 ms, for all chunks delivered since): the window
    /// must cover the chunks delivered between bursts on top of twice the BDP, or the sender
    /// would sit idle waiting for each burst.
    #[test]
    fn bbr_window_covers_ack_aggregation() {
        let run = |every_ms: u64| {
            let t = Instant::now();
            let mut bbr = Bbr::new(10, 10_000);
            let (bw, rtt_ms) = (10.0f64, 10.0f64); // BDP 100 chunks
            let (mut carry, mut pending) = (0.0, 0u64);
            for ms in 0..3_000u64 {
                carry += (bbr.window() as f64 / rtt_ms).min(bw);
                let delivered = carry.floor();
                carry -= delivered;
                pending += delivered as u64;
                if ms % every_ms == 0 {
                    bbr.on_ack(ack(t + Duration::from_millis(ms), pending, rtt_ms as u64));
                    pending = 0;
                }
            }
            bbr.window()
        };
        let (smooth, bursty) = (run(1), run(5));
        assert!(
            (150..=300).contains(&smooth),
            "smooth ACKs: window {smooth}"
        );
        assert!(
            bursty >= smooth + 40,
            "bursts of 50 chunks: window {bursty}, smooth {smooth}"
        );
    }

    #[derive(Clone, Debug)]
    enum Event {
        Ack {
            after_us: u64,
            acked: u64,
            rtt_us: u64,
        },
        Loss,
        Timeout,
    }

    fn event() -> impl proptest::strategy::Strategy<Value = Event> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0u64..20_000, 0u64..64, 1u64..200_000)
                .prop_map(|(after_us, acked, rtt_us)| Event::Ack { after_us, acked, rtt_us }),
            2 => Just(Event::Loss),
            1 => Just(Event::Timeout),
        ]
    }

    proptest::proptest! {
        /// Whatever happens, every controller's window stays within `[2, max]`: the sender can
        /// always transmit (no stall) and never floods (no unbounded window). After any
        /// history, NewReno grows again on ACKs; BBR's growth depends on the bandwidth it
        /// measures and is checked by the path model tests above and the simulations.
        #[test]
        fn windows_stay_bounded_and_never_stall(
            events in proptest::collection::vec(event(), 0..400),
            max in 4u64..5000,
        ) {
            let t = Instant::now();
            let mut ccs: Vec<Box<dyn CongestionController>> = vec![
                Box::new(Bbr::new(10, max)),
                Box::new(NewReno::new(10, max)),
            ];
            for (i, cc) in ccs.iter_mut().enumerate() {
                let mut samples = Samples::new();
                let mut now = t;
                let mut tx = 0;
                for e in &events {
                    match *e {
                        Event::Ack { after_us, acked, rtt_us } => {
                            now += Duration::from_micros(after_us);
                            let rtt = Duration::from_micros(rtt_us);
                            cc.on_ack(samples.ack(now, acked, rtt, false));
                        }
                        Event::Loss => {
                            cc.on_loss(tx, tx + 1);
                            tx += 1;
                        }
                        Event::Timeout => cc.on_timeout(),
                    }
                    proptest::prop_assert!(cc.window() >= 2 && cc.window() <= max, "{:?}", cc);
                }
                if i == 1 {
                    cc.on_timeout();
                    let low = cc.window();
                    for _ in 0..50 {
                        now += Duration::from_millis(2);
                        let w = cc.window();
                        cc.on_ack(samples.ack(now, w, Duration::from_millis(1), false));
                    }
                    proptest::prop_assert!(cc.window() > low || low == max, "stalled: {:?}", cc);
                }
            }
        }
    }

    #[test]
    fn bbr_timeout_restarts_small_but_does_not_stall() {
        let t = Instant::now();
        let mut bbr = Bbr::new(10, 1000);
        bbr.on_timeout();
        assert_eq!(bbr.window(), 4);
        bbr.on_ack(ack(t, 4, 5));
        assert!(bbr.window() > 4, "grows again after a timeout");
    }
}
