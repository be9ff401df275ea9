//! Pacing: a window's chunks spread over the round trip instead of leaving in one burst.
//!
//! A token bucket after quinn-proto's `Pacer` (RFC 9002, section 7.7), counted in chunks:
//! tokens refill at 1.25 windows per smoothed RTT, and the bucket holds about 2 ms of sending
//! (at least [`MIN_BURST`] chunks, at most [`MAX_BURST`], never more than 10 ms' worth). So on
//! a long path a full window does not hit the bottleneck's queue at once, the driver wakes at
//! most every couple of milliseconds, and on a short path (loopback, a LAN) the bucket holds
//! more than the window, so pacing never holds a chunk back there.

use std::time::{Duration, Instant};

/// Bursts aim at this much sending.
const TARGET_BURST_INTERVAL: Duration = Duration::from_millis(2);
/// Bursts never exceed this much sending.
const MAX_BURST_INTERVAL: Duration = Duration::from_millis(10);
/// Smallest burst, in chunks: fewer would wake the driver for every few chunks.
pub const MIN_BURST: u64 = 10;
/// Largest burst, in chunks.
pub const MAX_BURST: u64 = 256;
/// Tokens refill this much faster than one window per RTT, so that pacing never becomes the
/// bottleneck itself.
pub(super) const GAIN: f64 = 1.25;

/// Token bucket of one sender (see the module docs).
#[derive(Clone, Debug)]
pub struct Pacer {
    capacity: u64,
    tokens: u64,
    window: u64,
    /// When tokens were last added (or the bucket was full).
    prev: Instant,
}

impl Pacer {
    /// A full bucket (its size is set by the first window it sees).
    pub fn new(now: Instant) -> Self {
        Pacer {
            capacity: MAX_BURST,
            tokens: MAX_BURST,
            window: 0,
            prev: now,
        }
    }

    /// Chunks the bucket holds at most.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// A chunk left.
    pub fn on_transmit(&mut self) {
        self.tokens = self.tokens.saturating_sub(1);
    }

    /// `None` when a chunk may leave now; otherwise when the bucket will be full again, the
    /// time to ask next. `window` is the congestion window (chunks), `srtt` the smoothed RTT.
    pub fn delay(&mut self, srtt: Duration, window: u64, now: Instant) -> Option<Instant> {
        let window = window.max(1);
        if window != self.window {
            self.capacity = capacity(srtt, window);
            self.tokens = self.tokens.min(self.capacity);
            self.window = window;
        }
        if srtt.is_zero() {
            return None;
        }
        let rate = window as f64 * GAIN / srtt.as_secs_f64(); // chunks per second
        let elapsed = now.saturating_duration_since(self.prev).as_secs_f64();
        // (A nanosecond's slack: a wait computed for whole tokens must yield them.)
        let new = (rate * elapsed + 1e-9 * rate).floor() as u64;
        if new > 0 {
            self.tokens = self.tokens.saturating_add(new).min(self.capacity);
            // Only the time the whole tokens stand for is spent: the fraction carries over.
            // (Spending it all lost up to a token per call: asked at every ACK, a few chunks
            // apart, the pacer sent 10-20 % under its rate.)
            let spent = Duration::from_secs_f64(new as f64 / rate);
            self.prev = (self.prev + spent).min(now);
        }
        if self.tokens == self.capacity {
            self.prev = now; // a full bucket gains nothing while it waits
        }
        if self.tokens > 0 {
            return None;
        }
        let refill = (self.capacity - self.tokens) as f64 / rate;
        Some(now + Duration::from_nanos((refill * 1e9).ceil() as u64))
    }
}

/// Chunks per burst for `window` chunks per `srtt`.
fn capacity(srtt: Duration, window: u64) -> u64 {
    let rtt = srtt.as_nanos().max(1);
    let chunks_in = |interval: Duration| (u128::from(window) * interval.as_nanos() / rtt) as u64;
    chunks_in(TARGET_BURST_INTERVAL)
        .clamp(MIN_BURST, MAX_BURST)
        .min(chunks_in(MAX_BURST_INTERVAL).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends as fast as the pacer allows for `span`, waking when it says; returns the chunks
    /// sent and the largest burst (chunks sent at one instant).
    fn drive(
        pacer: &mut Pacer,
        srtt: Duration,
        window: u64,
        start: Instant,
        span: Duration,
    ) -> (u64, u64) {
        let (mut now, mut sent, mut burst) = (start, 0, 0);
        while now < start + span {
            let mut here = 0;
            while pacer.delay(srtt, window, now).is_none() {
                pacer.on_transmit();
                here += 1;
                assert!(here <= 10_000, "the pacer never stops");
            }
            sent += here;
            burst = burst.max(here);
            let next = pacer.delay(srtt, window, now).unwrap();
            assert!(next > now, "a wait must end in the future");
            now = next;
        }
        (sent, burst)
    }

    #[test]
    fn a_long_path_gets_its_window_in_small_bursts_at_about_the_window_rate() {
        let start = Instant::now();
        let srtt = Duration::from_millis(100);
        let window = 1000;
        let mut pacer = Pacer::new(start);
        // 2 ms of a 1,000-chunk window per 100 ms: 20 chunks per burst.
        let (sent, burst) = drive(&mut pacer, srtt, window, start, Duration::from_secs(1));
        assert_eq!(pacer.capacity(), 20);
        assert!(burst <= 20, "burst of {burst}");
        // Ten RTTs: about 1.25 windows each, never much more.
        assert!(
            (11_000..=12_600).contains(&sent),
            "{sent} chunks in 10 RTTs"
        );
    }

    /// Asked far more often than a token accrues (at every ACK, a few chunks apart), the
    /// pacer still sends at its rate: the fractions of a token carry over.
    #[test]
    fn frequent_calls_lose_no_fraction_of_a_token() {
        let start = Instant::now();
        let srtt = Duration::from_millis(100);
        let window = 1000; // 12,500 chunks a second with the gain: 1.25 per 100 µs
        let mut pacer = Pacer::new(start);
        let (mut now, mut sent) = (start, 0u64);
        while now < start + Duration::from_secs(1) {
            while pacer.delay(srtt, window, now).is_none() {
                pacer.on_transmit();
                sent += 1;
            }
            now += Duration::from_micros(100);
        }
        // 12,500 in the second, plus the first full bucket.
        assert!(
            (12_400..=12_600).contains(&sent),
            "{sent} chunks in a second at 12,500 a second"
        );
    }

    #[test]
    fn a_short_path_is_never_held_back() {
        let start = Instant::now();
        // 200 µs RTT, 64 chunks: the bucket (2 ms of sending) holds more than the window.
        let mut pacer = Pacer::new(start);
        let srtt = Duration::from_micros(200);
        for i in 0..64 {
            assert_eq!(pacer.delay(srtt, 64, start), None, "chunk {i} held");
            pacer.on_transmit();
        }
        assert!(pacer.capacity() >= 64);
    }

    #[test]
    fn burst_sizes_stay_within_their_bounds() {
        for (rtt_us, window) in [(1, 1), (1_000_000, 1), (50, 100_000), (10_000_000, 100_000)] {
            let c = capacity(Duration::from_micros(rtt_us), window);
            assert!(
                (1..=MAX_BURST).contains(&c),
                "rtt {rtt_us} µs window {window}: {c}"
            );
        }
        // Never more than 10 ms of sending, even where that is below the minimum burst.
        assert_eq!(capacity(Duration::from_secs(1), 100), 1);
    }
}
