//! The tracker's relay, without I/O: sessions between an asker (A) and a registered peer (B)
//! that cannot reach each other otherwise (a symmetric NAT, UDP blocked, a TCP peer behind a
//! NAT), with caps on sessions and bytes.
//!
//! A opens a session with a `RelayOpen` (address-validated like any request that takes a
//! slot), answered with an unguessable session id ([`Relay::open`]). From then on each
//! `Relayed { session, payload }` datagram that comes from one of the session's two ends (A's
//! address exactly, or B's address as the registry sees it now) is forwarded to the other
//! end, byte for byte, if the rate caps allow it ([`Relay::forward`]); anything else is
//! dropped. Nothing is buffered: over a cap a datagram is dropped, as a bottleneck router
//! drops, and the transfer's congestion control adapts. A session costs a constant
//! [`SESSION_BYTES`] at most, whatever goes through it.
//!
//! A session ends when no datagram went either way for [`RelayConfig::idle`], or when B
//! leaves the registry (unregisters, expires, or registers again on another transport):
//! [`Relay::expire`] (run with the tracker's expiry) and [`Relay::forward`] (lazily) end it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::Registry;
use crate::wire::{RequestId, TransportKind};

/// The relay's caps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RelayConfig {
    /// Whether the tracker relays at all (`RelayOpen` is refused when not).
    pub enabled: bool,
    /// Bytes per second forwarded by all sessions together (datagrams as received).
    pub total_rate: u64,
    /// Bytes per second forwarded by one session, both ways together.
    pub session_rate: u64,
    /// Bytes per second forwarded to and from one relayed peer (B), all its sessions
    /// together.
    pub peer_rate: u64,
    /// Most sessions open at once.
    pub max_sessions: usize,
    /// Most sessions open at once to one relayed peer (B, by name).
    pub per_peer: usize,
    /// Most sessions open at once asked from one IP address (A's).
    pub per_ip: usize,
    /// A session with no datagram either way for this long ends.
    pub idle: Duration,
    /// How much sending the rate buckets hold at once: a burst of this long at the rate
    /// passes whole, the rest of a longer one is dropped.
    pub burst: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            enabled: true,
            total_rate: 64 * 1024 * 1024,
            session_rate: 16 * 1024 * 1024,
            peer_rate: 32 * 1024 * 1024,
            max_sessions: 256,
            per_peer: 16,
            per_ip: 16,
            idle: Duration::from_secs(60),
            burst: Duration::from_millis(200),
        }
    }
}

impl RelayConfig {
    /// A relay that refuses every session.
    pub fn off() -> Self {
        RelayConfig {
            enabled: false,
            ..RelayConfig::default()
        }
    }
}

/// Why a `RelayOpen` was refused; the `Display` text is the `Error` reason sent to the asker.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RelayError {
    /// The relay is turned off.
    #[error("this tracker does not relay")]
    Off,
    /// No live peer holds the name.
    #[error("no live peer named {0}")]
    NoSuchPeer(String),
    /// The asker came on another transport than the one the peer registered on: the relay
    /// forwards on the transport a datagram came in on, so both ends must use the peer's.
    #[error("peer {name} listens on {transport}; ask over {transport}")]
    OtherTransport {
        /// The peer.
        name: String,
        /// Its transport, in capitals (`UDP`, `TCP`).
        transport: String,
    },
    /// The asker is the peer itself (same address).
    #[error("you are peer {0}: there is nothing to relay")]
    ToSelf(String),
    /// [`RelayConfig::max_sessions`] reached.
    #[error("the relay is full: {0} sessions (try again later, or reach the peer directly)")]
    Full(usize),
    /// [`RelayConfig::per_peer`] reached.
    #[error("peer {name} already has {sessions} relayed sessions (try again later)")]
    PeerBusy {
        /// The peer.
        name: String,
        /// Its sessions.
        sessions: usize,
    },
    /// [`RelayConfig::per_ip`] reached.
    #[error("your address {ip} already has {sessions} relayed sessions (try again once one has been idle for {idle_secs} s)")]
    AskerBusy {
        /// The asker's IP.
        ip: IpAddr,
        /// Its sessions.
        sessions: usize,
        /// [`RelayConfig::idle`], in seconds.
        idle_secs: u64,
    },
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// No datagram either way for [`RelayConfig::idle`].
    Idle,
    /// The relayed peer left the registry (unregistered, expired, or registered again on
    /// another transport).
    PeerLeft,
}

/// Something the relay did, for the tracker's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayEvent {
    /// A session was opened (or asked for again by its asker).
    Opened {
        /// The session id (the secret that lets datagrams through: keep it out of shared logs).
        session: u64,
        /// The asker (A).
        from: SocketAddr,
        /// The relayed peer (B).
        name: String,
        /// Where B's datagrams come from.
        to: SocketAddr,
    },
    /// A `RelayOpen` was refused.
    Refused {
        /// The peer asked for.
        name: String,
        /// The asker.
        from: SocketAddr,
        /// Why (the reason sent to the asker).
        reason: String,
    },
    /// A session ended.
    Closed {
        /// The session id.
        session: u64,
        /// The relayed peer.
        name: String,
        /// Why.
        reason: CloseReason,
        /// Bytes forwarded, both ways.
        forwarded: u64,
        /// Datagrams dropped over the caps.
        dropped: u64,
    },
}

/// Upper bound of the memory one session takes: its table entry (the addresses, the peer's
/// name of at most [`MAX_NAME_LEN`](crate::wire::MAX_NAME_LEN) bytes, a token bucket,
/// counters) and its share of the map's nodes. Datagrams are never buffered.
pub const SESSION_BYTES: usize = 512;

/// Events kept for [`Relay::poll_event`] at most (more are dropped: the log is lossy).
pub const RELAY_EVENTS: usize = 1024;

/// A token bucket in bytes.
#[derive(Clone, Copy, Debug)]
struct ByteBucket {
    tokens: f64,
    /// When it was last refilled (`None`: never used yet).
    at: Option<Instant>,
}

impl ByteBucket {
    /// A full bucket.
    fn full(rate: u64, burst: Duration) -> Self {
        ByteBucket {
            tokens: capacity(rate, burst),
            at: None,
        }
    }

    /// Refills it for the time since the last call.
    fn refill(&mut self, now: Instant, rate: u64, burst: Duration) {
        let elapsed = self
            .at
            .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
        self.tokens = (self.tokens + elapsed * rate as f64).min(capacity(rate, burst));
        self.at = Some(now);
    }
}

/// What a bucket of `rate` bytes/s holding `burst` of it holds: at least one largest
/// datagram, so that any rate lets datagrams through.
fn capacity(rate: u64, burst: Duration) -> f64 {
    (rate as f64 * burst.as_secs_f64()).max(crate::wire::MAX_MESSAGE as f64)
}

/// One session.
#[derive(Debug)]
struct Session {
    /// The asker's address: its `RelayOpen` came from there (validated).
    a: SocketAddr,
    /// The relayed peer's address as last seen by the registry.
    b: SocketAddr,
    /// The relayed peer's name.
    name: Box<str>,
    /// The transport both ends use.
    transport: TransportKind,
    /// The request that opened it (a repeat answers the same session).
    request: RequestId,
    bucket: ByteBucket,
    last_active: Instant,
    forwarded: u64,
    dropped: u64,
}

/// The sessions and the caps.
#[derive(Debug)]
pub struct Relay {
    config: RelayConfig,
    /// Key of the session ids.
    key: [u8; 32],
    /// Ids handed out so far (the id is a keyed hash of it).
    counter: u64,
    /// By id; a BTreeMap so that what is walked is walked in the same order in every replay.
    sessions: BTreeMap<u64, Session>,
    /// All sessions' bytes together.
    total: ByteBucket,
    /// Each relayed peer's bytes, all its sessions together (while it has one).
    peers: HashMap<Box<str>, ByteBucket>,
    events: VecDeque<RelayEvent>,
}

impl Relay {
    /// An empty relay with `config`, whose session ids are keyed from `seed` (pass something
    /// random; simulations pass their seed).
    pub fn new(config: RelayConfig, seed: u64) -> Self {
        Relay {
            config,
            key: blake3::derive_key("p2p relay sessions v1", &seed.to_le_bytes()),
            counter: 0,
            sessions: BTreeMap::new(),
            total: ByteBucket::full(config.total_rate, config.burst),
            peers: HashMap::new(),
            events: VecDeque::new(),
        }
    }

    /// This relay with the caps `config` instead, its key kept (set before any session
    /// opens).
    pub fn with_config(self, config: RelayConfig) -> Self {
        Relay {
            config,
            total: ByteBucket::full(config.total_rate, config.burst),
            ..self
        }
    }

    /// The caps.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Sessions open now.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True when no session is open.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Opens a session for the `RelayOpen` `request` that came from `from` (its address
    /// proven) over `via`, to the live peer `name`: returns the session id to answer with, or
    /// why not. The same request from the same address again (its answer was lost) gets the
    /// same session.
    pub fn open(
        &mut self,
        now: Instant,
        reg: &Registry,
        from: SocketAddr,
        via: TransportKind,
        request: RequestId,
        name: &str,
    ) -> Result<u64, RelayError> {
        let result = self.admit(now, reg, from, via, request, name);
        let event = match &result {
            Ok(session) => RelayEvent::Opened {
                session: *session,
                from,
                name: name.to_string(),
                to: self.sessions.get(session).map_or(from, |s| s.b),
            },
            Err(e) => RelayEvent::Refused {
                name: name.to_string(),
                from,
                reason: e.to_string(),
            },
        };
        self.push_event(event);
        result
    }

    /// [`Relay::open`] without the event.
    fn admit(
        &mut self,
        now: Instant,
        reg: &Registry,
        from: SocketAddr,
        via: TransportKind,
        request: RequestId,
        name: &str,
    ) -> Result<u64, RelayError> {
        if !self.config.enabled {
            return Err(RelayError::Off);
        }
        let Some((seen, transport)) = reg.seen(name, now) else {
            return Err(RelayError::NoSuchPeer(name.to_string()));
        };
        if transport != via {
            return Err(RelayError::OtherTransport {
                name: name.to_string(),
                transport: transport.to_string().to_uppercase(),
            });
        }
        if seen == from {
            return Err(RelayError::ToSelf(name.to_string()));
        }
        if let Some((&id, s)) = self
            .sessions
            .iter_mut()
            .find(|(_, s)| s.a == from && s.request == request && *s.name == *name)
        {
            s.last_active = now;
            return Ok(id);
        }
        self.check_caps(from.ip(), name)?;
        let id = self.new_id();
        let session = Session {
            a: from,
            b: seen,
            name: name.into(),
            transport,
            request,
            bucket: ByteBucket::full(self.config.session_rate, self.config.burst),
            last_active: now,
            forwarded: 0,
            dropped: 0,
        };
        self.sessions.insert(id, session);
        Ok(id)
    }

    /// Refuses a new session from `ip` to `name` over a cap.
    fn check_caps(&self, ip: IpAddr, name: &str) -> Result<(), RelayError> {
        let cfg = &self.config;
        if self.sessions.len() >= cfg.max_sessions {
            return Err(RelayError::Full(self.sessions.len()));
        }
        let to_peer = self.sessions.values().filter(|s| *s.name == *name).count();
        if to_peer >= cfg.per_peer {
            return Err(RelayError::PeerBusy {
                name: name.to_string(),
                sessions: to_peer,
            });
        }
        let from_ip = self.sessions.values().filter(|s| s.a.ip() == ip).count();
        if from_ip >= cfg.per_ip {
            return Err(RelayError::AskerBusy {
                ip,
                sessions: from_ip,
                idle_secs: cfg.idle.as_secs(),
            });
        }
        Ok(())
    }

    /// A fresh session id: a keyed hash of a counter (unguessable without the key), never 0
    /// and never one in use.
    fn new_id(&mut self) -> u64 {
        loop {
            self.counter += 1;
            let hash = blake3::keyed_hash(&self.key, &self.counter.to_le_bytes());
            let id = u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
            if id != 0 && !self.sessions.contains_key(&id) {
                return id;
            }
        }
    }

    /// Where to forward a `Relayed` datagram of `session`, `len` bytes as received, that
    /// came from `from` over `via` at `now`: the session's other end, or `None` (drop it: no
    /// such session, a stranger's, another transport's, or over a rate cap). B's address is
    /// the one the registry sees now (followed when B's NAT mapping changes); a session
    /// whose B left ends here.
    pub fn forward(
        &mut self,
        now: Instant,
        reg: &Registry,
        from: SocketAddr,
        via: TransportKind,
        session: u64,
        len: usize,
    ) -> Option<SocketAddr> {
        let s = self.sessions.get_mut(&session)?;
        if s.transport != via {
            return None;
        }
        match reg.seen(&s.name, now) {
            Some((seen, transport)) if transport == s.transport => s.b = seen,
            _ => {
                self.close(session, CloseReason::PeerLeft);
                return None;
            }
        }
        let to = if from == s.a {
            s.b
        } else if from == s.b {
            s.a
        } else {
            return None; // a stranger: not counted, as it costs the session nothing
        };
        let (cfg, len_f) = (&self.config, len as f64);
        let peer = self
            .peers
            .entry(s.name.clone())
            .or_insert_with(|| ByteBucket::full(cfg.peer_rate, cfg.burst));
        s.bucket.refill(now, cfg.session_rate, cfg.burst);
        peer.refill(now, cfg.peer_rate, cfg.burst);
        self.total.refill(now, cfg.total_rate, cfg.burst);
        if s.bucket.tokens < len_f || peer.tokens < len_f || self.total.tokens < len_f {
            s.dropped += 1;
            return None;
        }
        s.bucket.tokens -= len_f;
        peer.tokens -= len_f;
        self.total.tokens -= len_f;
        s.forwarded += len as u64;
        s.last_active = now;
        Some(to)
    }

    /// Ends the sessions to `name` (it left the registry).
    pub fn peer_left(&mut self, name: &str) {
        let ids: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| *s.name == *name)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.close(id, CloseReason::PeerLeft);
        }
    }

    /// Ends the sessions idle for [`RelayConfig::idle`] at `now`, and those whose peer is no
    /// longer live in `reg`. At most [`RelayConfig::max_sessions`] looked at.
    pub fn expire(&mut self, now: Instant, reg: &Registry) {
        let idle = self.config.idle;
        let ended: Vec<(u64, CloseReason)> = self
            .sessions
            .iter()
            .filter_map(|(&id, s)| {
                if now.saturating_duration_since(s.last_active) >= idle {
                    Some((id, CloseReason::Idle))
                } else if reg.seen(&s.name, now).is_none_or(|(_, t)| t != s.transport) {
                    Some((id, CloseReason::PeerLeft))
                } else {
                    None
                }
            })
            .collect();
        for (id, reason) in ended {
            self.close(id, reason);
        }
    }

    /// When the next session falls idle, if any.
    pub fn next_expiry(&self) -> Option<Instant> {
        let idle = self.config.idle;
        self.sessions.values().map(|s| s.last_active + idle).min()
    }

    /// The next thing that happened, for the log.
    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    fn close(&mut self, id: u64, reason: CloseReason) {
        if let Some(s) = self.sessions.remove(&id) {
            if !self.sessions.values().any(|o| o.name == s.name) {
                self.peers.remove(&s.name);
            }
            self.push_event(RelayEvent::Closed {
                session: id,
                name: s.name.into(),
                reason,
                forwarded: s.forwarded,
                dropped: s.dropped,
            });
        }
    }

    fn push_event(&mut self, event: RelayEvent) {
        if self.events.len() < RELAY_EVENTS {
            self.events.push_back(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::RegistryConfig;

    const A: &str = "198.51.100.7:5555";
    const B: &str = "203.0.113.2:40000";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A registry with `bob` at B over UDP, and a relay with `config`.
    fn setup(config: RelayConfig) -> (Registry, Relay, Instant) {
        let now = Instant::now();
        let mut reg = Registry::new(RegistryConfig::default());
        reg.register(now, "bob", addr(B), 10001, TransportKind::Udp)
            .unwrap();
        (reg, Relay::new(config, 7), now)
    }

    fn open(relay: &mut Relay, reg: &Registry, now: Instant, from: &str, req: u64) -> u64 {
        relay
            .open(
                now,
                reg,
                addr(from),
                TransportKind::Udp,
                RequestId(req),
                "bob",
            )
            .unwrap()
    }

    #[test]
    fn a_session_forwards_both_ways_and_drops_strangers() {
        let (reg, mut relay, now) = setup(RelayConfig::default());
        let id = open(&mut relay, &reg, now, A, 1);
        assert!(matches!(
            relay.poll_event(),
            Some(RelayEvent::Opened { session, name, to, .. })
                if session == id && name == "bob" && to == addr(B)
        ));
        assert_eq!(
            relay.forward(now, &reg, addr(A), TransportKind::Udp, id, 100),
            Some(addr(B))
        );
        assert_eq!(
            relay.forward(now, &reg, addr(B), TransportKind::Udp, id, 100),
            Some(addr(A))
        );
        // A stranger with the right id, A's IP on another port, an unknown id: dropped.
        assert_eq!(
            relay.forward(now, &reg, addr("192.0.2.9:1"), TransportKind::Udp, id, 100),
            None
        );
        assert_eq!(
            relay.forward(
                now,
                &reg,
                addr("198.51.100.7:5556"),
                TransportKind::Udp,
                id,
                1
            ),
            None
        );
        assert_eq!(
            relay.forward(now, &reg, addr(A), TransportKind::Udp, id ^ 1, 100),
            None
        );
        // The right id and address over the other transport: dropped.
        assert_eq!(
            relay.forward(now, &reg, addr(A), TransportKind::Tcp, id, 100),
            None
        );
        assert_eq!(relay.len(), 1);
    }

    #[test]
    fn ids_are_unpredictable_and_replay_from_the_seed() {
        let (reg, mut relay, now) = setup(RelayConfig::default());
        let ids: Vec<u64> = (0..4).map(|i| open(&mut relay, &reg, now, A, i)).collect();
        let mut again = Relay::new(RelayConfig::default(), 7);
        let same: Vec<u64> = (0..4).map(|i| open(&mut again, &reg, now, A, i)).collect();
        assert_eq!(ids, same, "the same seed, the same ids");
        let mut other = Relay::new(RelayConfig::default(), 8);
        assert_ne!(open(&mut other, &reg, now, A, 0), ids[0]);
        assert!(ids.windows(2).all(|w| w[0] != w[1] && w[1] != w[0] + 1));
    }

    #[test]
    fn a_repeated_open_answers_the_same_session() {
        let (reg, mut relay, now) = setup(RelayConfig::default());
        let id = open(&mut relay, &reg, now, A, 1);
        assert_eq!(open(&mut relay, &reg, now, A, 1), id);
        assert_ne!(
            open(&mut relay, &reg, now, A, 2),
            id,
            "a new request, a new one"
        );
        assert_eq!(relay.len(), 2);
    }

    #[test]
    fn refusals_say_why() {
        let (mut reg, mut relay, now) = setup(RelayConfig::default());
        let ask =
            |relay: &mut Relay, reg: &Registry, from: &str, via: TransportKind, name: &str| {
                relay
                    .open(now, reg, addr(from), via, RequestId(1), name)
                    .unwrap_err()
                    .to_string()
            };
        assert_eq!(
            ask(&mut relay, &reg, A, TransportKind::Udp, "carol"),
            "no live peer named carol"
        );
        reg.register(
            now,
            "tee",
            addr("203.0.113.3:5000"),
            7000,
            TransportKind::Tcp,
        )
        .unwrap();
        assert_eq!(
            ask(&mut relay, &reg, A, TransportKind::Udp, "tee"),
            "peer tee listens on TCP; ask over TCP"
        );
        assert_eq!(
            ask(&mut relay, &reg, A, TransportKind::Tcp, "bob"),
            "peer bob listens on UDP; ask over UDP"
        );
        assert_eq!(
            ask(&mut relay, &reg, B, TransportKind::Udp, "bob"),
            "you are peer bob: there is nothing to relay"
        );
        let mut off = Relay::new(RelayConfig::off(), 7);
        assert_eq!(
            ask(&mut off, &reg, A, TransportKind::Udp, "bob"),
            "this tracker does not relay"
        );
        assert!(relay.is_empty());
        assert!(matches!(
            relay.poll_event(),
            Some(RelayEvent::Refused { reason, .. }) if reason == "no live peer named carol"
        ));
    }

    #[test]
    fn caps_refuse_with_their_numbers() {
        let config = RelayConfig {
            max_sessions: 5,
            per_peer: 3,
            per_ip: 2,
            ..RelayConfig::default()
        };
        let (mut reg, mut relay, now) = setup(config);
        reg.register(now, "dan", addr("203.0.113.4:40000"), 1, TransportKind::Udp)
            .unwrap();
        let open_from = |relay: &mut Relay, from: &str, name: &str| {
            relay.open(
                now,
                &reg,
                addr(from),
                TransportKind::Udp,
                RequestId(9),
                name,
            )
        };
        open_from(&mut relay, "10.0.0.1:1", "bob").unwrap();
        open_from(&mut relay, "10.0.0.1:2", "bob").unwrap();
        let e = open_from(&mut relay, "10.0.0.1:3", "bob").unwrap_err();
        assert_eq!(
            e.to_string(),
            "your address 10.0.0.1 already has 2 relayed sessions (try again once one has been idle for 60 s)"
        );
        open_from(&mut relay, "10.0.0.2:1", "bob").unwrap();
        let e = open_from(&mut relay, "10.0.0.3:1", "bob").unwrap_err();
        assert_eq!(
            e.to_string(),
            "peer bob already has 3 relayed sessions (try again later)"
        );
        open_from(&mut relay, "10.0.0.3:1", "dan").unwrap();
        open_from(&mut relay, "10.0.0.4:1", "dan").unwrap();
        let e = open_from(&mut relay, "10.0.0.5:1", "dan").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the relay is full: 5 sessions (try again later, or reach the peer directly)"
        );
        assert_eq!(relay.len(), 5);
    }

    /// Over a session's rate its datagrams are dropped, not queued; the rate comes back
    /// with time. The total rate cuts all sessions together.
    #[test]
    fn rate_caps_drop_what_is_over() {
        let config = RelayConfig {
            session_rate: 1_000_000,
            total_rate: 1_500_000,
            burst: Duration::from_millis(500),
            ..RelayConfig::default()
        };
        let (reg, mut relay, now) = setup(config);
        let one = open(&mut relay, &reg, now, A, 1);
        let two = open(&mut relay, &reg, now, "198.51.100.8:5555", 2);
        let send = |relay: &mut Relay, at: Instant, from: &str, id: u64, n: usize| {
            (0..n)
                .filter(|_| {
                    relay
                        .forward(at, &reg, addr(from), TransportKind::Udp, id, 1000)
                        .is_some()
                })
                .count()
        };
        // A burst of half a second of the session's rate passes, the rest is dropped.
        assert_eq!(send(&mut relay, now, A, one, 800), 500);
        // The total bucket has 250 KB left of its 750 KB.
        assert_eq!(send(&mut relay, now, "198.51.100.8:5555", two, 800), 250);
        // 100 ms later: 100 KB more for the first session, 150 KB more in all.
        let later = now + Duration::from_millis(100);
        assert_eq!(send(&mut relay, later, A, one, 800), 100);
        assert_eq!(send(&mut relay, later, "198.51.100.8:5555", two, 800), 50);
        // Sustained: per second, the session's rate.
        let mut passed = 0;
        for ms in 1..=2000u64 {
            let at = later + Duration::from_millis(ms);
            passed += send(&mut relay, at, A, one, 2);
        }
        assert!((1900..=2100).contains(&passed), "{passed} KB in 2 s");
    }

    /// The per-peer rate cuts all the sessions to one relayed peer together, whatever each
    /// session's own cap.
    #[test]
    fn a_relayed_peers_sessions_share_its_rate() {
        let config = RelayConfig {
            session_rate: 1_000_000,
            peer_rate: 600_000,
            total_rate: 10_000_000,
            burst: Duration::from_millis(500),
            ..RelayConfig::default()
        };
        let (reg, mut relay, now) = setup(config);
        let one = open(&mut relay, &reg, now, A, 1);
        let two = open(&mut relay, &reg, now, "198.51.100.8:5555", 2);
        let mut send = |from: &str, id: u64| {
            (0..400)
                .filter(|_| {
                    relay
                        .forward(now, &reg, addr(from), TransportKind::Udp, id, 1000)
                        .is_some()
                })
                .count()
        };
        // Half a second of bob's 600 KB/s: 300 KB between his two sessions.
        assert_eq!(send(A, one), 300);
        assert_eq!(send("198.51.100.8:5555", two), 0);
    }

    #[test]
    fn idle_sessions_end_and_traffic_keeps_them() {
        let idle = Duration::from_secs(20); // within bob's registration's 30 s
        let (reg, mut relay, now) = setup(RelayConfig {
            idle,
            ..RelayConfig::default()
        });
        let quiet = open(&mut relay, &reg, now, A, 1);
        let busy = open(&mut relay, &reg, now, A, 2);
        assert_eq!(relay.next_expiry(), Some(now + idle));
        let mid = now + idle / 2;
        assert!(relay
            .forward(mid, &reg, addr(B), TransportKind::Udp, busy, 10)
            .is_some());
        relay.expire(now + idle, &reg);
        assert_eq!(relay.len(), 1);
        while let Some(e) = relay.poll_event() {
            if let RelayEvent::Closed {
                session, reason, ..
            } = e
            {
                assert_eq!((session, reason), (quiet, CloseReason::Idle));
            }
        }
        assert_eq!(
            relay.forward(now + idle, &reg, addr(A), TransportKind::Udp, quiet, 10),
            None
        );
        assert_eq!(relay.next_expiry(), Some(mid + idle));
    }

    #[test]
    fn sessions_end_when_their_peer_leaves() {
        let (mut reg, mut relay, now) = setup(RelayConfig::default());
        let id = open(&mut relay, &reg, now, A, 1);
        relay.peer_left("bob");
        assert!(relay.is_empty());
        // Lazily: its entry lapsed (expiry has not run yet).
        let id2 = open(&mut relay, &reg, now, A, 2);
        assert_ne!(id, id2);
        let lapsed = now + RegistryConfig::default().ttl;
        assert_eq!(
            relay.forward(lapsed, &reg, addr(A), TransportKind::Udp, id2, 10),
            None
        );
        assert!(relay.is_empty());
        // By the expiry: unregistered behind the relay's back.
        let id3 = open(&mut relay, &reg, now, A, 3);
        assert!(reg.unregister("bob", addr(B).ip()));
        relay.expire(now, &reg);
        assert!(relay.is_empty());
        let closed: Vec<_> = std::iter::from_fn(|| relay.poll_event())
            .filter_map(|e| match e {
                RelayEvent::Closed {
                    session, reason, ..
                } => Some((session, reason)),
                _ => None,
            })
            .collect();
        assert_eq!(
            closed,
            vec![
                (id, CloseReason::PeerLeft),
                (id2, CloseReason::PeerLeft),
                (id3, CloseReason::PeerLeft)
            ]
        );
    }

    /// B's NAT mapping changes (its heartbeats now come from another port): its datagrams
    /// from the new address pass, A's go there, and the old address is a stranger.
    #[test]
    fn the_peers_new_address_is_followed() {
        let (mut reg, mut relay, now) = setup(RelayConfig::default());
        let id = open(&mut relay, &reg, now, A, 1);
        let moved = addr("203.0.113.2:40001");
        let later = now + Duration::from_secs(31);
        reg.register(later, "bob", moved, 10001, TransportKind::Udp)
            .unwrap();
        assert_eq!(
            relay.forward(later, &reg, addr(A), TransportKind::Udp, id, 10),
            Some(moved)
        );
        assert_eq!(
            relay.forward(later, &reg, moved, TransportKind::Udp, id, 10),
            Some(addr(A))
        );
        assert_eq!(
            relay.forward(later, &reg, addr(B), TransportKind::Udp, id, 10),
            None
        );
    }

    #[test]
    fn a_session_costs_a_bounded_few_bytes() {
        let entry = std::mem::size_of::<Session>() + std::mem::size_of::<u64>();
        let name = crate::wire::MAX_NAME_LEN;
        // A BTreeMap node holds up to 11 entries plus a few words; count the whole entry
        // twice over for its share of node slack.
        assert!(2 * entry + name <= SESSION_BYTES, "{entry} + {name}");
    }
}
