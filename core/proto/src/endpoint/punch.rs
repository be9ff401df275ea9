//! UDP hole punching through the tracker, both sides of it.
//!
//! The asker A ([`Endpoint::punch`]) sends `Introduce { name }` to the tracker, which
//! answers `Introduced { peer }` with the address it sees B's datagrams come from (B's NAT
//! mapping, kept open by B's heartbeats) and sends B an `Introduction { nonce, peer }` naming
//! A's. Then:
//!
//! 1. A, on `Introduced`, sends [`PUNCH_TTL_PROBES`] probes with a TTL of [`PUNCH_TTL`]: they
//!    leave A's router (which now maps A toward B) and die on the way, before B's router.
//! 2. B, on the `Introduction`, does the same toward A, then sends full probes after
//!    [`PROBE_AFTER`]: they find A's mapping open and reach A.
//! 3. A takes the first probe with its nonce as the sign that B's NAT is open toward it
//!    ([`Event::Punched`], with the address it came from), and only then sends B anything
//!    else: its requests go through both mappings.
//!
//! Why not both sending full probes at once: a Linux router (conntrack) that receives a
//! datagram for its public address before its own host has sent to that remote records the
//! flow as its own; the host's datagram, sent next, clashes with it and leaves from another
//! port, which the other side's NAT does not let in. Measured in `scripts/nat-lab.sh`: 0 of
//! 10 get through at once, 10 of 10 this way. The order holds by the triangle inequality:
//! B's full probes leave after the tracker reached B, so they reach A's router after the
//! tracker's answer reached A, when A's low probes have already passed.
//!
//! Bounds: an `Introduction` is taken only from the tracker this endpoint is registered
//! with, at most [`INTRODUCTIONS_PER_SOURCE`] per asker's IP and [`INTRODUCTIONS_TOTAL`]
//! in all; each costs [`PROBES_PER_INTRODUCTION`] datagrams of about 25 bytes. A forged one
//! (a spoofed tracker source) thus makes B send a few small datagrams, never a stream.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::{Endpoint, Event, Transmit};
use crate::limits::{RateConfig, RateLimiter};
use crate::wire::{Message, RequestId};

/// TTL of the probes that only open the sender's own NAT: one hop past its router.
pub const PUNCH_TTL: u8 = 2;
/// Low-TTL probes sent at once (two: one lost on the first hop would spoil the punch).
pub const PUNCH_TTL_PROBES: usize = 2;
/// When B's full probes go, after its low ones.
pub const PROBE_AFTER: [Duration; 3] = [
    Duration::from_millis(20),
    Duration::from_millis(120),
    Duration::from_millis(320),
];
/// Datagrams one introduction makes a peer send.
pub const PROBES_PER_INTRODUCTION: usize = PUNCH_TTL_PROBES + PROBE_AFTER.len();
/// How long a punch waits, from the `Introduce` on, for the tracker and then a probe.
pub const PUNCH_WAIT: Duration = Duration::from_secs(2);
/// Introductions taken per asker's IP.
pub const INTRODUCTIONS_PER_SOURCE: RateConfig = RateConfig {
    per_second: 1.0,
    burst: 4.0,
    max_sources: 1024,
};
/// Introductions taken in all.
pub const INTRODUCTIONS_TOTAL: RateConfig = RateConfig {
    per_second: 16.0,
    burst: 32.0,
    max_sources: 1,
};
/// Most probes waiting for their time.
pub const MAX_SCHEDULED_PROBES: usize = 256;

/// A datagram that may need a TTL of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The datagram.
    pub transmit: Transmit,
    /// Its TTL (hop limit), if not the socket's.
    pub ttl: Option<u8>,
}

/// A punch of ours in progress.
struct Asked {
    tracker: SocketAddr,
    /// The peer's public address, once the tracker told it.
    peer: Option<SocketAddr>,
    deadline: Instant,
}

/// The state of both sides of punching (see the [module documentation](self)).
pub(super) struct Punching {
    asked: BTreeMap<RequestId, Asked>,
    /// Full probes for later, in time order.
    scheduled: VecDeque<(Instant, SocketAddr, u64)>,
    out: VecDeque<Probe>,
    per_source: RateLimiter,
    total: RateLimiter,
}

impl Default for Punching {
    fn default() -> Self {
        Punching {
            asked: BTreeMap::new(),
            scheduled: VecDeque::new(),
            out: VecDeque::new(),
            per_source: RateLimiter::new(INTRODUCTIONS_PER_SOURCE),
            total: RateLimiter::new(INTRODUCTIONS_TOTAL),
        }
    }
}

impl Punching {
    fn low_probes(&mut self, to: SocketAddr, nonce: u64) {
        let payload = Message::Probe { nonce }.encode();
        for _ in 0..PUNCH_TTL_PROBES {
            self.out.push_back(Probe {
                transmit: Transmit {
                    to,
                    payload: payload.clone(),
                },
                ttl: Some(PUNCH_TTL),
            });
        }
    }

    pub(super) fn next_timeout(&self) -> Option<Instant> {
        let asked = self.asked.values().map(|a| a.deadline);
        asked.chain(self.scheduled.front().map(|s| s.0)).min()
    }
}

impl Endpoint {
    /// Starts a punch toward the UDP peer `name` through `tracker`: returns the `Introduce`
    /// request's id and first send (the caller makes it at once). What becomes of it:
    /// [`Event::Punched`] (a probe of the peer's came: talk to it at that address),
    /// [`Incoming::Answer`](super::Incoming::Answer) with `Introduced { peer: None }` (no
    /// such UDP peer), or [`Event::PunchFailed`] after [`PUNCH_WAIT`].
    pub fn punch(
        &mut self,
        now: Instant,
        tracker: SocketAddr,
        name: &str,
    ) -> (RequestId, Transmit) {
        let msg = Message::Introduce {
            request: RequestId(0),
            name: name.to_string(),
        };
        let (id, first) = self.request(now, tracker, msg);
        self.punching.asked.insert(
            id,
            Asked {
                tracker,
                peer: None,
                deadline: now + PUNCH_WAIT,
            },
        );
        (id, first)
    }

    /// The next datagram of punching (probes, some with a TTL of their own).
    pub fn poll_probe(&mut self) -> Option<Probe> {
        self.punching.out.pop_front()
    }

    /// `Introduced` from `from`: `true` if it belonged to a punch of ours (handled here).
    pub(super) fn punch_answered(
        &mut self,
        now: Instant,
        from: SocketAddr,
        request: RequestId,
        peer: Option<SocketAddr>,
    ) -> bool {
        let Some(asked) = self.punching.asked.get(&request) else {
            return false; // not a punch: an ordinary answer, if it is one
        };
        if asked.tracker != from || asked.peer.is_some() {
            return true; // not from the tracker asked, or a copy: ignored
        }
        let Some(peer) = peer else {
            // No such peer: the answer goes to the caller as it is.
            self.punching.asked.remove(&request);
            return false;
        };
        let Some(pending) = self.requests.remove(&request) else {
            return true; // given up
        };
        if pending.attempts == 1 {
            self.record_round_trip(from, pending.sent_at, now);
        }
        if let Some(asked) = self.punching.asked.get_mut(&request) {
            asked.peer = Some(peer);
        }
        self.punching.low_probes(peer, request.0);
        true
    }

    /// An `Introduction` from `from`: probes toward the asker, if it comes from our tracker
    /// and within the limits.
    pub(super) fn introduced(
        &mut self,
        now: Instant,
        from: SocketAddr,
        nonce: u64,
        peer: SocketAddr,
    ) {
        let ours = self
            .registration
            .as_ref()
            .is_some_and(|r| r.tracker == from);
        if !ours
            || self.punching.scheduled.len() + PROBE_AFTER.len() > MAX_SCHEDULED_PROBES
            || !self.punching.per_source.allow(now, peer.ip())
            || !self
                .punching
                .total
                .allow(now, IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        {
            return;
        }
        self.punching.low_probes(peer, nonce);
        for after in PROBE_AFTER {
            let at = now + after;
            // Kept in time order: every introduction schedules at the same offsets.
            let i = self.punching.scheduled.partition_point(|s| s.0 <= at);
            self.punching.scheduled.insert(i, (at, peer, nonce));
        }
    }

    /// A `Probe` from `from`: ends the punch it answers, if ours and the tracker answered.
    pub(super) fn probed(&mut self, from: SocketAddr, nonce: u64) {
        let request = RequestId(nonce);
        if self
            .punching
            .asked
            .get(&request)
            .is_some_and(|a| a.peer.is_some())
        {
            self.punching.asked.remove(&request);
            self.events.push_back(Event::Punched {
                request,
                peer: from,
            });
        }
    }

    /// Sends the probes due and gives up the punches past their time.
    pub(super) fn punch_timeout(&mut self, now: Instant) {
        while self.punching.scheduled.front().is_some_and(|s| s.0 <= now) {
            let (_, to, nonce) = self.punching.scheduled.pop_front().expect("checked");
            self.punching.out.push_back(Probe {
                transmit: Transmit {
                    to,
                    payload: Message::Probe { nonce }.encode(),
                },
                ttl: None,
            });
        }
        let late: Vec<RequestId> = self
            .punching
            .asked
            .iter()
            .filter(|(_, a)| a.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for request in late {
            let asked = self.punching.asked.remove(&request).expect("listed");
            self.requests.remove(&request);
            self.events.push_back(Event::PunchFailed {
                request,
                silent: asked.peer.unwrap_or(asked.tracker),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{EndpointConfig, Incoming};
    use crate::wire::{decode, TransportKind};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn probes(ep: &mut Endpoint) -> Vec<Probe> {
        std::iter::from_fn(|| ep.poll_probe()).collect()
    }

    /// A peer registered with `tracker`, as the one introduced.
    fn registered(now: Instant, tracker: SocketAddr) -> Endpoint {
        let mut ep = Endpoint::new(EndpointConfig::default(), 2);
        ep.keep_registered(
            now,
            tracker,
            "bob".into(),
            10001,
            TransportKind::Udp,
            Duration::from_secs(10),
        );
        ep
    }

    #[test]
    fn the_asker_sends_low_probes_then_waits_for_the_peers_probe() {
        let tracker = addr("198.51.100.1:9000");
        let bob = addr("203.0.113.2:10001");
        let now = Instant::now();
        let mut ep = Endpoint::new(EndpointConfig::default(), 1);
        let (id, first) = ep.punch(now, tracker, "bob");
        assert_eq!(first.to, tracker);
        // Padded, as the first request to a tracker we hold no token of: answered at once.
        let Ok(Message::Initial { body, pad }) = decode(&first.payload) else {
            panic!("an Introduce without a token goes as an Initial");
        };
        assert!(matches!(
            Message::open_initial(&body, &pad),
            Ok((Message::Introduce { ref name, .. }, _)) if name == "bob"
        ));
        // A forged answer from elsewhere changes nothing.
        let answer = Message::Introduced {
            request: id,
            peer: Some(bob),
        };
        assert!(ep.handle(now, bob, answer.clone()).is_none());
        assert!(probes(&mut ep).is_empty());
        assert!(ep.handle(now, tracker, answer).is_none());
        let sent = probes(&mut ep);
        assert_eq!(sent.len(), PUNCH_TTL_PROBES);
        for p in &sent {
            assert_eq!((p.transmit.to, p.ttl), (bob, Some(PUNCH_TTL)));
            assert_eq!(
                decode(&p.transmit.payload),
                Ok(Message::Probe { nonce: id.0 })
            );
        }
        assert_eq!(ep.poll_event(), None, "nothing until bob's probe");
        // A probe with another nonce is not bob's.
        ep.handle(now, bob, Message::Probe { nonce: id.0 ^ 1 });
        assert_eq!(ep.poll_event(), None);
        // Bob's probe may come from another port than the tracker saw: that is where he is.
        let from = addr("203.0.113.2:40000");
        ep.handle(now, from, Message::Probe { nonce: id.0 });
        assert_eq!(
            ep.poll_event(),
            Some(Event::Punched {
                request: id,
                peer: from
            })
        );
        assert_eq!(ep.poll_timeout(), None, "nothing left to wait for");
    }

    #[test]
    fn an_unknown_peer_is_an_ordinary_answer() {
        let tracker = addr("198.51.100.1:9000");
        let now = Instant::now();
        let mut ep = Endpoint::new(EndpointConfig::default(), 1);
        let (id, _) = ep.punch(now, tracker, "nobody");
        let answer = Message::Introduced {
            request: id,
            peer: None,
        };
        assert!(matches!(
            ep.handle(now, tracker, answer),
            Some(Incoming::Answer { request, .. }) if request == id
        ));
        assert_eq!(ep.poll_timeout(), None);
    }

    #[test]
    fn a_punch_gives_up_in_time_naming_who_was_silent() {
        let tracker = addr("198.51.100.1:9000");
        let bob = addr("203.0.113.2:10001");
        let now = Instant::now();
        let mut ep = Endpoint::new(EndpointConfig::default(), 1);
        let (silent_tracker, _) = ep.punch(now, tracker, "bob");
        let (silent_peer, _) = ep.punch(now, tracker, "bob");
        ep.handle(
            now,
            tracker,
            Message::Introduced {
                request: silent_peer,
                peer: Some(bob),
            },
        );
        let mut t = now;
        while let Some(at) = ep.poll_timeout() {
            assert!(at <= now + PUNCH_WAIT, "no wait past PUNCH_WAIT");
            t = at;
            ep.handle_timeout(t);
            while ep.poll_transmit().is_some() {}
        }
        let events: Vec<Event> = std::iter::from_fn(|| ep.poll_event()).collect();
        assert!(events.contains(&Event::PunchFailed {
            request: silent_tracker,
            silent: tracker
        }));
        assert!(events.contains(&Event::PunchFailed {
            request: silent_peer,
            silent: bob
        }));
        assert_eq!(t, now + PUNCH_WAIT);
    }

    #[test]
    fn the_introduced_peer_probes_low_then_full_only_for_its_tracker() {
        let tracker = addr("198.51.100.1:9000");
        let alice = addr("192.0.2.7:5555");
        let now = Instant::now();
        let mut ep = registered(now, tracker);
        let intro = Message::Introduction {
            nonce: 42,
            peer: alice,
        };
        // Not from our tracker: ignored.
        ep.handle(now, addr("192.0.2.99:9000"), intro.clone());
        assert!(probes(&mut ep).is_empty());
        ep.handle(now, tracker, intro);
        let low = probes(&mut ep);
        assert_eq!(low.len(), PUNCH_TTL_PROBES);
        assert!(low
            .iter()
            .all(|p| p.ttl == Some(PUNCH_TTL) && p.transmit.to == alice));
        let mut full = Vec::new();
        for after in PROBE_AFTER {
            assert_eq!(ep.poll_timeout(), Some(now + after));
            ep.handle_timeout(now + after);
            full.extend(probes(&mut ep));
        }
        assert_eq!(full.len(), PROBE_AFTER.len());
        for p in &full {
            assert_eq!((p.transmit.to, p.ttl), (alice, None));
            let len = p.transmit.payload.len();
            assert!(len <= 32, "a probe is small: {len} bytes");
        }
    }

    /// A flood of introductions (forged, or a pushy asker) makes the peer send a bounded
    /// number of small probes: per asker's IP and in all.
    #[test]
    fn introductions_are_bounded_per_asker_and_in_total() {
        let tracker = addr("198.51.100.1:9000");
        let now = Instant::now();
        let mut ep = registered(now, tracker);
        for i in 0..100 {
            let intro = Message::Introduction {
                nonce: i,
                peer: addr("192.0.2.7:5555"),
            };
            ep.handle(now, tracker, intro);
        }
        let burst = INTRODUCTIONS_PER_SOURCE.burst as usize;
        assert_eq!(probes(&mut ep).len(), burst * PUNCH_TTL_PROBES);
        for i in 0..1000u32 {
            let [.., a, b] = i.to_be_bytes();
            let asker = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, a, b, 1)), 5555);
            let intro = Message::Introduction {
                nonce: u64::from(i),
                peer: asker,
            };
            ep.handle(now, tracker, intro);
        }
        let total = INTRODUCTIONS_TOTAL.burst as usize;
        assert_eq!(probes(&mut ep).len(), (total - burst) * PUNCH_TTL_PROBES);
    }
}
