//! `RateLimiter`: per-source token buckets, so that one flooding address cannot starve the
//! others. Sans-IO (`now` passed in), bounded and O(1) per request at any number of sources:
//! buckets live in two generations of half the table each; a source seen again moves to the
//! current one, and when the current one is full the older generation is dropped whole (the
//! sources not seen for a whole generation). A dropped bucket restarts full, which can only
//! favour the flood's victims.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Limits of a [`RateLimiter`].
#[derive(Clone, Copy, Debug)]
pub struct RateConfig {
    /// Sustained requests per second per source address.
    pub per_second: f64,
    /// Burst allowed above the sustained rate.
    pub burst: f64,
    /// Most source addresses tracked.
    pub max_sources: usize,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            per_second: 200.0,
            burst: 400.0,
            max_sources: 4096,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets keyed by source IP.
#[derive(Debug)]
pub struct RateLimiter {
    config: RateConfig,
    /// Buckets used in this generation.
    current: HashMap<IpAddr, Bucket>,
    /// Buckets of the generation before, dropped whole when `current` fills up.
    previous: HashMap<IpAddr, Bucket>,
    refused: u64,
}

impl RateLimiter {
    /// An empty limiter.
    pub fn new(config: RateConfig) -> Self {
        RateLimiter {
            config,
            current: HashMap::new(),
            previous: HashMap::new(),
            refused: 0,
        }
    }

    /// Sources one generation holds: half the table.
    fn generation(&self) -> usize {
        (self.config.max_sources / 2).max(1)
    }

    /// Takes one token for `ip`; false when its bucket is empty (drop the request).
    pub fn allow(&mut self, now: Instant, ip: IpAddr) -> bool {
        self.allow_cost(now, ip, 1.0)
    }

    /// Takes `cost` tokens for `ip` (a fraction for a cheap request, such as the next page of
    /// a listing); false when its bucket holds less than that (drop the request).
    pub fn allow_cost(&mut self, now: Instant, ip: IpAddr, cost: f64) -> bool {
        let cfg = self.config;
        if !self.current.contains_key(&ip) {
            let carried = self.previous.remove(&ip);
            if self.current.len() >= self.generation() {
                // A new generation: the sources not seen during the last one are forgotten.
                self.previous = std::mem::take(&mut self.current);
            }
            let fresh = Bucket {
                tokens: cfg.burst,
                at: now,
            };
            self.current.insert(ip, carried.unwrap_or(fresh));
        }
        let b = self.current.get_mut(&ip).expect("inserted above");
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * cfg.per_second).min(cfg.burst);
        b.at = now;
        if b.tokens >= cost {
            b.tokens -= cost;
            true
        } else {
            self.refused += 1;
            false
        }
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Sources tracked now.
    pub fn sources(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn burst_then_sustained_rate_per_source() {
        let mut r = RateLimiter::new(RateConfig {
            per_second: 10.0,
            burst: 5.0,
            max_sources: 8,
        });
        let t = Instant::now();
        assert_eq!((0..10).filter(|_| r.allow(t, ip(1))).count(), 5);
        // Another source is unaffected.
        assert!(r.allow(t, ip(2)));
        // 0.5 s later: 5 more tokens.
        let later = t + Duration::from_millis(500);
        assert_eq!((0..10).filter(|_| r.allow(later, ip(1))).count(), 5);
        assert_eq!(r.refused(), 10);
    }

    #[test]
    fn table_is_bounded() {
        let mut r = RateLimiter::new(RateConfig {
            per_second: 1.0,
            burst: 1.0,
            max_sources: 3,
        });
        let t = Instant::now();
        for n in 0..100 {
            r.allow(t + Duration::from_millis(n), ip(n as u8));
            assert!(r.sources() <= 3);
        }
        assert!(r.sources() >= 1);
    }

    #[test]
    fn a_source_seen_every_generation_keeps_its_bucket() {
        let mut r = RateLimiter::new(RateConfig {
            per_second: 0.001,
            burst: 3.0,
            max_sources: 8,
        });
        let t = Instant::now();
        let flooder = ip(200);
        assert_eq!((0..10).filter(|_| r.allow(t, flooder)).count(), 3);
        // Many other sources come and go; the flooder, still sending, stays limited: its
        // empty bucket is carried from generation to generation, never reset.
        for n in 0..100u8 {
            r.allow(t, ip(n));
            assert!(!r.allow(t, flooder), "refilled after source {n}");
            assert!(r.sources() <= 8);
        }
    }

    #[test]
    fn a_million_sources_stay_bounded() {
        // 1,000,000 distinct sources through a 4,096-entry table, each admitted (a new
        // source starts with a full bucket), the table bounded throughout.
        let mut r = RateLimiter::new(RateConfig::default());
        let t = Instant::now();
        for n in 0..1_000_000u32 {
            assert!(r.allow(t, IpAddr::from(n.to_be_bytes())));
        }
        assert!(r.sources() <= RateConfig::default().max_sources);
    }
}
