//! `RateLimiter`: per-source token buckets, so that one flooding address cannot starve the
//! others. Sans-IO (`now` passed in) and bounded (the table never holds more than `max_sources`
//! addresses; when full, the bucket idle longest is dropped, which can only favour the flood's
//! victims: a dropped bucket restarts full).

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
    buckets: HashMap<IpAddr, Bucket>,
    refused: u64,
}

impl RateLimiter {
    /// An empty limiter.
    pub fn new(config: RateConfig) -> Self {
        RateLimiter {
            config,
            buckets: HashMap::new(),
            refused: 0,
        }
    }

    /// Takes one token for `ip`; false when its bucket is empty (drop the request).
    pub fn allow(&mut self, now: Instant, ip: IpAddr) -> bool {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.config.max_sources {
            self.evict();
        }
        let cfg = self.config;
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: cfg.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * cfg.per_second).min(cfg.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
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
        self.buckets.len()
    }

    fn evict(&mut self) {
        if let Some(oldest) = self
            .buckets
            .iter()
            .min_by_key(|(_, b)| b.at)
            .map(|(ip, _)| *ip)
        {
            self.buckets.remove(&oldest);
        }
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
        }
        assert_eq!(r.sources(), 3);
    }
}
