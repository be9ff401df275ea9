//! The live line of a running download: name, bytes of total, percent, rate, and "stalled
//! N s" when nothing arrives.
//!
//! The rate is measured from this run's bytes only, over the last few seconds: a resumed
//! download starts with its kept bytes already counted, and counting those as received now
//! would show a rate the network never had.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::output::{clean, human_bytes};

/// The rate is taken over this much of the recent past.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// Nothing received for this long is shown as "stalled".
pub(crate) const STALLED_AFTER: Duration = Duration::from_secs(3);

/// Samples of one download's received bytes, taken by the menu about once a second.
#[derive(Debug)]
pub(crate) struct Meter {
    started: Instant,
    samples: VecDeque<(Instant, u64)>,
    /// When `received` last grew (the start, until it does).
    last_change: Instant,
}

/// What a [`Meter`] makes of its samples, for one line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Reading {
    pub(crate) received: u64,
    pub(crate) total: u64,
    /// Bytes per second over the last seconds; `None` before two samples.
    pub(crate) rate: Option<f64>,
    /// How long nothing has arrived, once that is [`STALLED_AFTER`] or more.
    pub(crate) stalled: Option<Duration>,
    pub(crate) elapsed: Duration,
}

impl Meter {
    /// A meter for a download started at `now`.
    pub(crate) fn new(now: Instant) -> Self {
        Meter {
            started: now,
            samples: VecDeque::new(),
            last_change: now,
        }
    }

    /// Records that `received` bytes are present at `now`, and reads the meter.
    pub(crate) fn observe(&mut self, now: Instant, received: u64, total: u64) -> Reading {
        match self.samples.back() {
            Some(&(_, last)) if received > last => self.last_change = now,
            // The first sample may hold the bytes a resume kept: only a change counts.
            _ => {}
        }
        self.samples.push_back((now, received));
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|&(t, _)| now.duration_since(t) >= RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let rate = match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, b0)), Some(&(t1, b1))) if t1 > t0 => {
                Some(b1.saturating_sub(b0) as f64 / t1.duration_since(t0).as_secs_f64())
            }
            _ => None,
        };
        let quiet = now.duration_since(self.last_change);
        Reading {
            received,
            total,
            rate,
            stalled: (quiet >= STALLED_AFTER && received < total).then_some(quiet),
            elapsed: now.duration_since(self.started),
        }
    }
}

/// `album.flac from alice: 12.0 MiB of 48.0 MiB (25%), 4.0 MiB/s, 3 s`, or `..., stalled
/// 5 s, 9 s` when nothing arrives.
pub(crate) fn download_line(path: &str, peer: &str, r: &Reading) -> String {
    let percent = (r.received.saturating_mul(100))
        .checked_div(r.total)
        .unwrap_or(100)
        .min(100);
    let pace = match (r.stalled, r.rate) {
        (Some(quiet), _) => format!("stalled {} s", quiet.as_secs()),
        (None, Some(rate)) => format!("{}/s", human_bytes(rate as u64)),
        (None, None) => "starting".to_string(),
    };
    format!(
        "{} from {}: {} of {} ({percent}%), {pace}, {} s",
        clean(path),
        clean(peer),
        human_bytes(r.received),
        human_bytes(r.total),
        r.elapsed.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn rate_counts_only_bytes_received_in_this_run() {
        let t0 = Instant::now();
        let mut m = Meter::new(t0);
        // Resumed at 400 MiB: that is not a rate.
        let r = m.observe(t0, 400 * MIB, 1024 * MIB);
        assert_eq!(r.rate, None);
        let r = m.observe(t0 + Duration::from_secs(1), 450 * MIB, 1024 * MIB);
        assert_eq!(r.rate, Some(50.0 * MIB as f64));
        assert_eq!(
            download_line("big.bin", "alice", &r),
            "big.bin from alice: 450.0 MiB of 1.0 GiB (43%), 50.0 MiB/s, 1 s"
        );
    }

    #[test]
    fn rate_follows_the_last_seconds() {
        let t0 = Instant::now();
        let mut m = Meter::new(t0);
        let mut r = m.observe(t0, 0, 100 * MIB);
        for s in 1..=10 {
            // 8 MiB/s for 5 s, then 1 MiB/s.
            let got = if s <= 5 { 8 * s } else { 40 + (s - 5) };
            r = m.observe(t0 + Duration::from_secs(s), got * MIB, 100 * MIB);
        }
        assert_eq!(r.rate, Some(MIB as f64));
    }

    #[test]
    fn nothing_arriving_is_shown_as_stalled() {
        let t0 = Instant::now();
        let mut m = Meter::new(t0);
        m.observe(t0, 0, 10 * MIB);
        let r = m.observe(t0 + Duration::from_secs(1), MIB, 10 * MIB);
        assert_eq!(r.stalled, None);
        let r = m.observe(t0 + Duration::from_secs(2), MIB, 10 * MIB);
        assert_eq!(r.stalled, None, "one quiet second is not a stall");
        let r = m.observe(t0 + Duration::from_secs(5), MIB, 10 * MIB);
        assert_eq!(r.stalled, Some(Duration::from_secs(4)));
        assert_eq!(
            download_line("a.bin", "bob", &r),
            "a.bin from bob: 1.0 MiB of 10.0 MiB (10%), stalled 4 s, 5 s"
        );
        let r = m.observe(t0 + Duration::from_secs(6), 2 * MIB, 10 * MIB);
        assert_eq!(r.stalled, None, "bytes again: no longer stalled");
    }

    #[test]
    fn a_first_line_says_it_is_starting_and_names_are_escaped() {
        let t0 = Instant::now();
        let r = Meter::new(t0).observe(t0, 0, 0);
        assert_eq!(
            download_line("x\u{1b}[2J", "bob", &r),
            "x\\u{1b}[2J from bob: 0 B of 0 B (100%), starting, 0 s"
        );
    }
}
