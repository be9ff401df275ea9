//! The tracker's answers to register, heartbeat, unregister, list, introduce, announce,
//! who-has and relay-open requests, as a function of its state and the time: the async
//! service only receives, calls [`Tracker::handle`] (or [`Tracker::relay`] for a relayed
//! datagram) and sends.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    HoldersConfig, RegisterError, Registry, RegistryConfig, Relay, RelayConfig, RelayEvent,
};
use crate::endpoint::NEXT_PAGE_COST;
use crate::limits::{RateConfig, RateLimiter};
use crate::validation::AddressValidator;
use crate::wire::{paginate, BoundedVec, Message, PeerInfo, RegisterOutcome, TransportKind};

/// Something the tracker did, for its log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrackerEvent {
    /// A new peer registered.
    Registered {
        /// Its name.
        name: String,
        /// Where it listens.
        addr: SocketAddr,
        /// On which transport.
        transport: TransportKind,
    },
    /// A registration was refused.
    Refused {
        /// The wanted name.
        name: String,
        /// Who asked.
        from: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A peer left.
    Unregistered {
        /// Its name.
        name: String,
    },
    /// A peer stopped sending heartbeats and was dropped.
    Expired {
        /// Its name.
        name: String,
    },
}

/// The registry and the per-source request limiters: the whole state of a tracker.
#[derive(Debug)]
pub struct Tracker {
    registry: Registry,
    limiter: RateLimiter,
    /// New names per network (see [`network_of`]): a flood of registrations from many
    /// addresses of one network cannot fill the table at once.
    new_names: RateLimiter,
    /// What listings page through (see [`Listings`]).
    listings: Listings,
    /// Requests prove their source address first (see [`crate::validation`]): a forged
    /// address can neither register, refresh nor remove a name, nor be sent a listing.
    validator: AddressValidator,
    /// Introductions each introduced peer's IP is sent (see [`INTRODUCTIONS`]).
    introductions: RateLimiter,
    /// Messages to others than the requester (introductions), for [`Tracker::poll_transmit`].
    outbox: VecDeque<(SocketAddr, Message)>,
    /// Relay sessions (see [`super::relay`]).
    relay: Relay,
}

/// Introductions sent to one peer's IP: a requester cannot make the tracker pester a peer
/// (each introduction makes it send a few probes).
pub const INTRODUCTIONS: RateConfig = RateConfig {
    per_second: 8.0,
    burst: 16.0,
    max_sources: 4096,
};

/// The live peers cut into pages at one moment: a listing pages through one snapshot, so a
/// listing taken while peers join or leave has each peer at most once, and a page costs a
/// copy of itself, not a walk of the table.
#[derive(Debug)]
struct Snapshot {
    generation: u64,
    pages: Vec<Vec<PeerInfo>>,
}

/// Snapshots of the registry for listings: a new one is cut (at most every
/// [`SNAPSHOT_EVERY`]) when a listing starts after the table changed; a lister's later pages
/// come from the snapshot its page 0 came from, while that is among the last
/// [`KEPT_SNAPSHOTS`] (else from the newest).
#[derive(Debug, Default)]
struct Listings {
    /// Newest last.
    kept: VecDeque<Arc<Snapshot>>,
    /// When the newest was cut.
    cut_at: Option<Instant>,
    /// The table changed since the newest was cut.
    dirty: bool,
    generation: u64,
    /// The snapshot each lister started from, in two generations of [`LISTERS`] / 2 (as in
    /// the rate limiter): bounded, O(1).
    listers: HashMap<SocketAddr, u64>,
    listers_before: HashMap<SocketAddr, u64>,
}

/// Least time between two snapshots of a table of more than [`ALWAYS_FRESH`] peers: such a
/// table, when busy, is listed at most this stale.
pub const SNAPSHOT_EVERY: Duration = Duration::from_millis(100);
/// Tables of at most this many peers are cut afresh for every listing after a change (cheap
/// at this size; a peer that just registered is listed at once).
pub const ALWAYS_FRESH: usize = 1024;
/// Snapshots kept for listings in progress.
pub const KEPT_SNAPSHOTS: usize = 4;
/// Listers whose snapshot is remembered.
pub const LISTERS: usize = 4096;

impl Listings {
    /// The snapshot page `page` of a listing by `from` comes from.
    fn snapshot(
        &mut self,
        now: Instant,
        reg: &Registry,
        from: SocketAddr,
        page: u32,
    ) -> Arc<Snapshot> {
        if page > 0 {
            let mine = self
                .listers
                .get(&from)
                .or_else(|| self.listers_before.get(&from))
                .copied();
            if let Some(s) = mine.and_then(|g| self.kept.iter().find(|s| s.generation == g)) {
                return s.clone();
            }
        }
        let stale = self.dirty
            && (reg.len() <= ALWAYS_FRESH
                || self
                    .cut_at
                    .is_none_or(|at| now.saturating_duration_since(at) >= SNAPSHOT_EVERY));
        if stale || self.kept.is_empty() {
            self.generation += 1;
            let snapshot = Arc::new(Snapshot {
                generation: self.generation,
                pages: paginate(reg.list(now)),
            });
            if self.kept.len() == KEPT_SNAPSHOTS {
                self.kept.pop_front();
            }
            self.kept.push_back(snapshot);
            self.cut_at = Some(now);
            self.dirty = false;
        }
        let newest = self.kept.back().expect("cut above").clone();
        if page == 0 {
            if !self.listers.contains_key(&from) && self.listers.len() >= LISTERS / 2 {
                self.listers_before = std::mem::take(&mut self.listers);
            }
            self.listers_before.remove(&from);
            self.listers.insert(from, newest.generation);
        }
        newest
    }
}

/// New names one network may register: this many per second, and this many at once.
pub const NEW_NAMES: RateConfig = RateConfig {
    per_second: 1.0,
    burst: 64.0,
    max_sources: 4096,
};

/// The network an address belongs to, for limits per network: its /24 (IPv4) or /48 (IPv6).
pub fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
        }
    }
}

/// The transport a message came on: a stream transport (the only kind that proves source
/// addresses itself) is TCP, any other UDP.
fn transport_of(addresses_proven: bool) -> TransportKind {
    if addresses_proven {
        TransportKind::Tcp
    } else {
        TransportKind::Udp
    }
}

impl Tracker {
    /// An empty tracker; requests beyond `rate` per source IP are dropped.
    pub fn new(config: RegistryConfig, rate: RateConfig) -> Self {
        Tracker {
            registry: Registry::new(config),
            limiter: RateLimiter::new(rate),
            new_names: RateLimiter::new(NEW_NAMES),
            listings: Listings::default(),
            validator: AddressValidator::new(0),
            introductions: RateLimiter::new(INTRODUCTIONS),
            outbox: VecDeque::new(),
            relay: Relay::new(RelayConfig::default(), 0),
        }
    }

    /// With address tokens and relay session ids keyed from `seed` (pass something random:
    /// whoever knows it can forge tokens and guess session ids; simulations pass their seed).
    pub fn with_key_seed(mut self, seed: u64) -> Self {
        self.validator = AddressValidator::new(seed);
        self.relay = Relay::new(*self.relay.config(), seed);
        self
    }

    /// With the relay capped by `relay` instead of [`RelayConfig::default`] (or turned off:
    /// [`RelayConfig::off`]). Call after [`Tracker::with_key_seed`] or before, either way.
    pub fn with_relay(self, relay: RelayConfig) -> Self {
        Tracker {
            relay: self.relay.with_config(relay),
            ..self
        }
    }

    /// The relay's caps.
    pub fn relay_config(&self) -> &RelayConfig {
        self.relay.config()
    }

    /// Relay sessions open now.
    pub fn relay_sessions(&self) -> usize {
        self.relay.len()
    }

    /// Where to forward a [`Message::Relayed`] datagram of `session`, `len` bytes as
    /// received, that came from `from` at `now`: the session's other end, to send the very
    /// bytes received to, on the transport they came in on. `None`: drop it (no such session,
    /// not from one of its two ends, or over a rate cap). Relayed datagrams are neither
    /// token-validated nor counted by the per-IP request limiter: the session id, told only
    /// to the asker at its validated address, is the proof.
    pub fn relay(
        &mut self,
        now: Instant,
        from: SocketAddr,
        session: u64,
        len: usize,
    ) -> Option<SocketAddr> {
        self.relay_on(now, from, session, len, false)
    }

    /// [`Tracker::relay`] of a datagram that came on a transport which proves source
    /// addresses itself when `addresses_proven` (TCP), as [`Tracker::handle_on`] takes it: a
    /// session forwards only on the transport its peer registered on.
    pub fn relay_on(
        &mut self,
        now: Instant,
        from: SocketAddr,
        session: u64,
        len: usize,
        addresses_proven: bool,
    ) -> Option<SocketAddr> {
        let via = transport_of(addresses_proven);
        self.relay
            .forward(now, &self.registry, from, via, session, len)
    }

    /// The next thing the relay did (a session opened, refused or ended), for the log. Call
    /// after [`Tracker::handle`], [`Tracker::relay`] and [`Tracker::expire`] until `None`;
    /// at most [`RELAY_EVENTS`](super::RELAY_EVENTS) wait, later ones are dropped.
    pub fn poll_relay_event(&mut self) -> Option<RelayEvent> {
        self.relay.poll_event()
    }

    /// With the content index (`Announce`, `WhoHas`) bounded by `holders` instead of
    /// [`HoldersConfig::default`].
    pub fn with_holders(self, holders: HoldersConfig) -> Self {
        Tracker {
            registry: self.registry.with_holders(holders),
            ..self
        }
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The registry, to change (restoring saved bindings).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The answer to `msg` from `from` at `now` (`None`: nothing to answer: not a tracker
    /// request, or over the sender's rate limit), and what happened, for the log.
    pub fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        msg: Message,
    ) -> (Option<Message>, Option<TrackerEvent>) {
        self.handle_on(now, from, msg, false)
    }

    /// [`Tracker::handle`] of a message that came on a transport which proves source
    /// addresses itself when `addresses_proven` (TCP's handshake): it needs no token.
    pub fn handle_on(
        &mut self,
        now: Instant,
        from: SocketAddr,
        msg: Message,
        addresses_proven: bool,
    ) -> (Option<Message>, Option<TrackerEvent>) {
        // Flooding is dropped like a lost datagram. The next page of a listing a proven
        // requester walks costs a 64th of a request (`NEXT_PAGE_COST`: a whole listing of
        // 10,000 peers, 300-odd pages, counts about as 6 requests, as the peers' index pages
        // do), and so does the next batch of an announcement (20,000 hashes, 834 batches,
        // count as 14 requests); what the message is shows only once it is opened, so the
        // 64th is taken first and the rest once the message is known to be something else.
        if !self.limiter.allow_cost(now, from.ip(), NEXT_PAGE_COST) {
            return (None, None);
        }
        // A lookup without a token, padded: answered at once, within three times its size
        // (as a `Retry` if its answer would be larger).
        if let Message::Initial { body, pad } = &msg {
            let Ok((inner, size)) = Message::open_initial(body, pad) else {
                return (None, None);
            };
            // Its padding stands for the proof: the answer and what it sets off (an
            // `Introduction`'s few probes toward the asker) stay within three times its size.
            let (reply, event) = self.handle_opened(now, from, inner, true, addresses_proven);
            let token = self.validator.issue(now, from.ip());
            return (reply.map(|r| r.answer_initial_or_retry(token, size)), event);
        }
        self.handle_opened(now, from, msg, addresses_proven, addresses_proven)
    }

    /// [`Tracker::handle_on`] of a message past the rate limit's first cost, not an `Initial`
    /// (an `Initial`'s request, opened). `addresses_proven`: it needs no token (a stream's, or
    /// a padded `Initial`'s); `stream`: it came on a stream transport (TCP).
    fn handle_opened(
        &mut self,
        now: Instant,
        from: SocketAddr,
        msg: Message,
        addresses_proven: bool,
        stream: bool,
    ) -> (Option<Message>, Option<TrackerEvent>) {
        let token = match &msg {
            Message::Validated { token, .. } => Some(*token),
            _ => None,
        };
        let Some((msg, proven)) = self.validator.open(now, from.ip(), msg) else {
            return (None, None);
        };
        // A signed name request holds only with a token valid for its sender's address, on
        // TCP too (the signature covers the token: a request seen on the path cannot be
        // replayed from elsewhere); without one it is asked for one.
        let (msg, signer, must_prove) = match msg {
            Message::Signed { key, sig, body } => match token {
                Some(_) => match crate::identity::open(token, &key, &sig, &body) {
                    Some((inner, key)) => (inner, Some(key), !proven),
                    None => return (None, None), // a bad signature: dropped
                },
                None => match Message::open_validated(&body) {
                    Ok(inner) if crate::identity::is_name_request(&inner) => (inner, None, true),
                    _ => return (None, None),
                },
            },
            other => (other, None, false),
        };
        let next_page = match &msg {
            Message::ListPeers { page, .. } | Message::WhoHas { page, .. } => *page > 0,
            Message::Announce { first, .. } => !first,
            _ => false,
        } && (proven || addresses_proven);
        if !next_page
            && !self
                .limiter
                .allow_cost(now, from.ip(), 1.0 - NEXT_PAGE_COST)
        {
            return (None, None);
        }
        if must_prove || (!proven && !addresses_proven) {
            let request = match &msg {
                Message::Register { request, .. }
                | Message::Heartbeat { request, .. }
                | Message::Unregister { request, .. }
                | Message::ListPeers { request, .. }
                | Message::Introduce { request, .. }
                | Message::Announce { request, .. }
                | Message::WhoHas { request, .. }
                | Message::Lookup { request, .. }
                | Message::RelayOpen { request, .. } => *request,
                _ => return (None, None),
            };
            let token = self.validator.issue(now, from.ip());
            return (Some(Message::Retry { request, token }), None);
        }
        let reg = &mut self.registry;
        // A key's `Register` may take its name over from another IP; a heartbeat never does.
        let take_over = matches!(msg, Message::Register { .. });
        match msg {
            Message::Register {
                request,
                name,
                port,
                transport,
            }
            | Message::Heartbeat {
                request,
                name,
                port,
                transport,
            } => {
                let fresh = !reg.holds(&name, now);
                let result = if fresh && !self.new_names.allow(now, network_of(from.ip())) {
                    Err(RegisterError::TooManyNew)
                } else {
                    reg.register_as(now, &name, from, port, transport, signer, take_over)
                };
                if fresh || result == Ok(true) {
                    self.listings.dirty = true;
                }
                let (outcome, event) = match result {
                    Ok(new) => (
                        RegisterOutcome::Accepted {
                            ttl_ms: reg.config().ttl.as_millis() as u64,
                            heartbeat_ms: reg.config().heartbeat.as_millis() as u64,
                            // Only to a peer that announced (`None` keeps the reply as older
                            // peers decode it): a peer that finds a count other than its
                            // announcement's announces again.
                            held: reg.held(&name),
                        },
                        new.then(|| TrackerEvent::Registered {
                            name,
                            addr: SocketAddr::new(from.ip(), port),
                            transport,
                        }),
                    ),
                    Err(e) => {
                        let reason = e.to_string();
                        let event = TrackerEvent::Refused {
                            name,
                            from,
                            reason: reason.clone(),
                        };
                        (RegisterOutcome::Refused { reason }, Some(event))
                    }
                };
                (Some(Message::RegisterReply { request, outcome }), event)
            }
            Message::Unregister { request, name } => {
                let event = reg
                    .unregister_as(now, &name, from.ip(), signer)
                    .then_some(TrackerEvent::Unregistered { name });
                if let Some(TrackerEvent::Unregistered { name }) = &event {
                    self.relay.peer_left(name);
                }
                self.listings.dirty |= event.is_some();
                (Some(Message::UnregisterReply { request }), event)
            }
            Message::Introduce { request, name } => {
                // UDP only: the asker's address must be the socket it will punch from, and
                // a TCP source port is an ephemeral one.
                let peer = match reg.seen(&name, now) {
                    Some((seen, TransportKind::Udp)) if !stream => Some(seen),
                    _ => None,
                };
                if let Some(seen) = peer {
                    if !self.introductions.allow(now, seen.ip()) {
                        return (None, None); // dropped like a lost datagram
                    }
                    let nonce = request.0;
                    let intro = Message::Introduction { nonce, peer: from };
                    self.outbox.push_back((seen, intro));
                }
                (Some(Message::Introduced { request, peer }), None)
            }
            Message::Announce {
                request,
                name,
                first,
                hashes,
            } => {
                let reply = match reg.announce(now, &name, from, request, first, &hashes.0) {
                    Ok(held) => Message::Announced {
                        request,
                        held,
                        limit: u32::try_from(reg.holders_config().per_peer).unwrap_or(u32::MAX),
                    },
                    Err(e) => Message::Error {
                        request,
                        reason: e.to_string(),
                    },
                };
                (Some(reply), None)
            }
            Message::WhoHas {
                request,
                hash,
                page,
            } => {
                let reply = match reg.holders(now, &hash, page) {
                    (pages, Some(peers)) => Message::Holders {
                        request,
                        hash,
                        page,
                        pages,
                        peers: BoundedVec(peers),
                    },
                    (pages, None) => Message::Error {
                        request,
                        reason: format!("no page {page} (there are {pages})"),
                    },
                };
                (Some(reply), None)
            }
            Message::RelayOpen { request, name } => {
                let via = transport_of(stream);
                let reply = match self.relay.open(now, reg, from, via, request, &name) {
                    Ok(session) => Message::RelayOpened { request, session },
                    Err(e) => Message::Error {
                        request,
                        reason: e.to_string(),
                    },
                };
                (Some(reply), None)
            }
            Message::Lookup { request, name } => {
                let peer = reg.live(now, &name);
                let key = peer.as_ref().and_then(|_| reg.key_of(&name)).map(Vec::from);
                (Some(Message::Found { request, peer, key }), None)
            }
            Message::ListPeers { request, page } => {
                let snapshot = self.listings.snapshot(now, reg, from, page);
                let n = snapshot.pages.len() as u32;
                let reply = match snapshot.pages.get(page as usize) {
                    Some(peers) => Message::PeerList {
                        request,
                        page,
                        pages: n,
                        peers: BoundedVec(peers.clone()),
                    },
                    None => Message::Error {
                        request,
                        reason: format!("no page {page} (there are {n})"),
                    },
                };
                (Some(reply), None)
            }
            _ => (None, None),
        }
    }

    /// A message for someone other than the requester that [`Tracker::handle`] produced
    /// (an `Introduction` for the peer asked for), to send on the transport the request
    /// came on. Call after each `handle` until `None`.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Message)> {
        self.outbox.pop_front()
    }

    /// When the next silent peer expires, or the next relay session falls idle.
    pub fn next_expiry(&self) -> Option<Instant> {
        match (self.registry.next_expiry(), self.relay.next_expiry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Drops the peers silent for their whole lifetime at `now` and returns their names;
    /// ends the relay sessions idle at `now` and those of peers no longer live (see
    /// [`Tracker::poll_relay_event`]).
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let gone = self.registry.expire(now);
        self.listings.dirty |= !gone.is_empty();
        self.relay.expire(now, &self.registry);
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::AnnounceError;
    use crate::wire::{ContentHash, RequestId};
    use std::time::Duration;

    impl Tracker {
        /// [`Tracker::handle`] of `msg` sent with a valid token for `from`.
        fn handle_proven(
            &mut self,
            now: Instant,
            from: SocketAddr,
            msg: Message,
        ) -> (Option<Message>, Option<TrackerEvent>) {
            let token = self.validator.issue(now, from.ip());
            self.handle(now, from, msg.with_token(Some(token)))
        }
    }

    /// What `id` sends for `msg` with a valid token for `from`: the request signed over it.
    fn signed(
        t: &mut Tracker,
        now: Instant,
        from: SocketAddr,
        id: &crate::identity::Identity,
        msg: &Message,
    ) -> Message {
        let token = t.validator.issue(now, from.ip());
        id.sign(Some(token), msg).with_token(Some(token))
    }

    fn refused(reply: Option<Message>) -> Option<String> {
        match reply {
            Some(Message::RegisterReply {
                outcome: RegisterOutcome::Refused { reason },
                ..
            }) => Some(reason),
            _ => None,
        }
    }

    /// A name signed for by a key is bound to it: another key, and unsigned requests, are
    /// refused the name (even once its peer left), from any address and over TCP too; the
    /// key's holder takes it at once from a new address, and alone may remove it. A bare
    /// signed request is asked for a token, and a signature over another address's token
    /// does not hold.
    #[test]
    fn a_name_signed_for_is_bound_to_its_key() {
        use crate::identity::Identity;
        let mut t = Tracker::new(RegistryConfig::default(), RateConfig::default()).with_key_seed(5);
        let now = Instant::now();
        let (alice, mallory) = (
            Identity::from_secret([1; 32]),
            Identity::from_secret([2; 32]),
        );
        let home: SocketAddr = "10.0.0.1:5555".parse().unwrap();
        let evil: SocketAddr = "10.0.0.66:5555".parse().unwrap();
        let reg = register("alice", 10001);
        // Bare: a Retry, nothing registered; then signed over its token: registered, bound.
        let (reply, _) = t.handle(now, home, alice.sign(None, &reg));
        assert!(matches!(reply, Some(Message::Retry { .. })), "{reply:?}");
        assert_eq!(t.registry().len(), 0);
        let msg = signed(&mut t, now, home, &alice, &reg);
        assert_eq!(refused(t.handle(now, home, msg.clone()).0), None);
        assert_eq!(t.registry().key_of("alice"), Some(alice.public()));
        // The same bytes replayed from elsewhere: the token is not the replayer's; over TCP
        // (addresses proven) too.
        assert!(matches!(
            t.handle(now, evil, msg.clone()).0,
            Some(Message::Retry { .. })
        ));
        assert!(matches!(
            t.handle_on(now, evil, msg, true).0,
            Some(Message::Retry { .. })
        ));
        // Another key, or no key, even after alice unregistered: refused, by name.
        let later = now + Duration::from_secs(3600);
        let unreg = Message::Unregister {
            request: RequestId(9),
            name: "alice".into(),
        };
        let msg = signed(&mut t, later, home, &alice, &unreg);
        t.handle(later, home, msg);
        assert_eq!(t.registry().len(), 0, "alice left");
        let msg = signed(&mut t, later, evil, &mallory, &reg);
        let why = refused(t.handle(later, evil, msg).0).expect("refused to mallory");
        assert!(why.contains("belongs to another peer"), "{why}");
        let why = refused(t.handle_proven(later, evil, reg.clone()).0).expect("refused unsigned");
        assert!(why.contains("belongs to another peer"), "{why}");
        // Alice again, from a new address, while her old entry is live: hers at once.
        let msg = signed(&mut t, later, home, &alice, &reg);
        t.handle(later, home, msg);
        let moved: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let msg = signed(&mut t, later, moved, &alice, &register("alice", 10002));
        assert_eq!(refused(t.handle(later, moved, msg).0), None);
        let listed = t.registry().list(later);
        assert_eq!(
            listed[0].addr,
            "192.0.2.7:10002".parse::<SocketAddr>().unwrap()
        );
        // A second process of the same key on that machine, on another port: the name is
        // taken while the first lives (as for anyone); the old address's heartbeat too.
        let msg = signed(&mut t, later, moved, &alice, &register("alice", 10003));
        let why = refused(t.handle(later, moved, msg).0).expect("refused on one machine");
        assert!(why.contains("already used"), "{why}");
        let beat = Message::Heartbeat {
            request: RequestId(11),
            name: "alice".into(),
            port: 10001,
            transport: TransportKind::Udp,
        };
        let msg = signed(&mut t, later, home, &alice, &beat);
        assert!(
            refused(t.handle(later, home, msg).0).is_some(),
            "the old address lost it"
        );
        // Unsigned Unregister from her old IP, or Mallory's signed one: nothing removed.
        t.handle_proven(later, home, unreg.clone());
        let msg = signed(&mut t, later, moved, &mallory, &unreg);
        t.handle(later, moved, msg);
        assert_eq!(t.registry().len(), 1);
        // The binding lapses a day after the last proof: the name is free again.
        let gone = later + crate::tracker::BINDING_KEEP + t.registry().config().ttl;
        t.expire(gone);
        let msg = signed(&mut t, gone, evil, &mallory, &reg);
        assert_eq!(refused(t.handle(gone, evil, msg).0), None);
        assert_eq!(t.registry().key_of("alice"), Some(mallory.public()));
    }

    /// `Lookup` names one live peer with the key its name is bound to (none for an unsigned
    /// peer), nobody for a name not live, and needs an address proof like a listing.
    #[test]
    fn a_lookup_names_the_peer_and_its_key() {
        use crate::identity::Identity;
        let mut t = Tracker::new(RegistryConfig::default(), RateConfig::default()).with_key_seed(5);
        let now = Instant::now();
        let alice = Identity::from_secret([1; 32]);
        let home: SocketAddr = "10.0.0.1:5555".parse().unwrap();
        let msg = signed(&mut t, now, home, &alice, &register("alice", 10001));
        assert_eq!(refused(t.handle(now, home, msg).0), None);
        let bob: SocketAddr = "10.0.0.2:5555".parse().unwrap();
        assert_eq!(
            refused(t.handle_proven(now, bob, register("bob", 10002)).0),
            None
        );
        let asker: SocketAddr = "10.9.9.9:4000".parse().unwrap();
        let lookup = |name: &str| Message::Lookup {
            request: RequestId(7),
            name: name.into(),
        };
        let (reply, _) = t.handle(now, asker, lookup("alice"));
        assert!(matches!(reply, Some(Message::Retry { .. })), "{reply:?}");
        match t.handle_proven(now, asker, lookup("alice")).0 {
            Some(Message::Found {
                request: RequestId(7),
                peer: Some(p),
                key: Some(key),
            }) => {
                assert_eq!(&*p.name, "alice");
                assert_eq!(p.addr, "10.0.0.1:10001".parse::<SocketAddr>().unwrap());
                assert_eq!(key, alice.public().to_vec());
            }
            other => panic!("{other:?}"),
        }
        match t.handle_proven(now, asker, lookup("bob")).0 {
            Some(Message::Found {
                peer: Some(p),
                key: None,
                ..
            }) => assert_eq!(&*p.name, "bob"),
            other => panic!("{other:?}"),
        }
        // Padded as an `Initial` by an asker with no token: answered at once, with one,
        // within three times the bytes that came; a name request cannot come that way.
        let initial = lookup("alice").initial();
        let came = initial.encode().len();
        let stranger: SocketAddr = "10.9.9.10:4000".parse().unwrap();
        match t.handle(now, stranger, initial).0 {
            Some(answer @ Message::Answer { .. }) => {
                assert!(answer.encode().len() <= 3 * came);
                let Message::Answer { token, body } = answer else {
                    unreachable!()
                };
                assert!(matches!(
                    Message::open_answer(&body),
                    Ok(Message::Found {
                        peer: Some(_),
                        key: Some(_),
                        ..
                    })
                ));
                assert!(matches!(
                    t.handle(now, stranger, lookup("bob").with_token(Some(token)))
                        .0,
                    Some(Message::Found { .. })
                ));
            }
            other => panic!("{other:?}"),
        }
        let body = rmp_serde::to_vec(&register("mallory", 1)).unwrap();
        let sneaky = Message::Initial {
            body,
            pad: vec![0; 400],
        };
        assert_eq!(t.handle(now, stranger, sneaky).0, None);
        assert_eq!(t.registry().len(), 2);
        // Gone (expired), or never there: nobody, and no key either.
        let later = now + t.registry().config().ttl + Duration::from_secs(1);
        for name in ["alice", "carol"] {
            match t.handle_proven(later, asker, lookup(name)).0 {
                Some(Message::Found {
                    peer: None,
                    key: None,
                    ..
                }) => {}
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    /// A request from a forged address (it never sees its token) gets a `Retry` and changes
    /// nothing: no name registered, refreshed or removed, no listing sent.
    #[test]
    fn requests_without_proof_change_nothing_and_get_a_small_retry() {
        let mut t = Tracker::new(RegistryConfig::default(), RateConfig::default()).with_key_seed(5);
        let now = Instant::now();
        let alice: SocketAddr = "10.0.0.1:5555".parse().unwrap();
        t.handle_proven(now, alice, register("alice", 10001));
        assert_eq!(t.registry().len(), 1);
        let forged = [
            Message::Unregister {
                request: RequestId(2),
                name: "alice".into(),
            },
            register("mallory", 10001),
            Message::Heartbeat {
                request: RequestId(3),
                name: "alice".into(),
                port: 6666,
                transport: TransportKind::Udp,
            },
            Message::ListPeers {
                request: RequestId(4),
                page: 0,
            },
        ];
        for msg in forged {
            let (reply, event) = t.handle(now, alice, msg.clone());
            assert_eq!(event, None, "{msg:?}");
            let reply = reply.expect("a retry").encode();
            assert!(reply.len() <= 3 * msg.encode().len(), "{msg:?}: amplified");
            // A made-up token is no better.
            let fake = msg.with_token(Some(crate::wire::Token(7)));
            assert!(matches!(
                t.handle(now, alice, fake).0,
                Some(Message::Retry { .. })
            ));
        }
        let listed = t.registry().list(now);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].addr.port(), 10001, "alice untouched");
    }

    /// A tracker with bob registered from behind a NAT (his port 10001 mapped to 40000):
    /// the tracker, the time, where it sees bob, and alice, who asks for him.
    fn bob_registered_alice_asking() -> (Tracker, Instant, SocketAddr, SocketAddr) {
        let mut t = Tracker::new(RegistryConfig::default(), RateConfig::default()).with_key_seed(5);
        let now = Instant::now();
        let bob_seen: SocketAddr = "203.0.113.2:40000".parse().unwrap();
        t.handle_proven(now, bob_seen, register("bob", 10001));
        (t, now, bob_seen, "198.51.100.7:5555".parse().unwrap())
    }

    /// Alice's `Introduce` to bob, as request `id`.
    fn introduce(id: u64) -> Message {
        Message::Introduce {
            request: RequestId(id),
            name: "bob".into(),
        }
    }

    /// `Introduce` needs proof, answers the asker with the peer's seen address (no larger
    /// than the request), and queues an `Introduction` naming the asker for the peer.
    #[test]
    fn introduce_answers_the_seen_address_and_tells_the_peer() {
        let (mut t, now, bob_seen, alice) = bob_registered_alice_asking();
        let ask = introduce(77);
        assert!(matches!(
            t.handle(now, alice, ask.clone()).0,
            Some(Message::Retry { .. })
        ));
        assert_eq!(t.poll_transmit(), None, "no introduction without proof");
        let token = t.validator.issue(now, alice.ip());
        let request = ask.with_token(Some(token));
        let reply = t.handle(now, alice, request.clone()).0.unwrap();
        assert_eq!(
            reply,
            Message::Introduced {
                request: RequestId(77),
                peer: Some(bob_seen)
            }
        );
        assert!(
            reply.encode().len() <= request.encode().len(),
            "no amplification"
        );
        assert_eq!(
            t.poll_transmit(),
            Some((
                bob_seen,
                Message::Introduction {
                    nonce: 77,
                    peer: alice
                }
            ))
        );
        assert_eq!(t.poll_transmit(), None);
        // No such peer: `None`, and nobody is told anything.
        let ask = Message::Introduce {
            request: RequestId(78),
            name: "carol".into(),
        };
        let (reply, _) = t.handle(now, alice, ask.with_token(Some(token)));
        assert!(matches!(
            reply,
            Some(Message::Introduced { peer: None, .. })
        ));
        assert_eq!(t.poll_transmit(), None);
        // Over TCP (a source port that is not the peer's socket): no introduction.
        let ask = Message::Introduce {
            request: RequestId(79),
            name: "bob".into(),
        };
        let (reply, _) = t.handle_on(now, alice, ask, true);
        assert!(matches!(
            reply,
            Some(Message::Introduced { peer: None, .. })
        ));
        assert_eq!(t.poll_transmit(), None);
    }

    /// An `Introduce` padded as an `Initial` (sent with the lookup, before any token) is
    /// answered and the peer introduced at once: the answer and the peer's probes toward
    /// the asker stay within three times the request. Over TCP it introduces nobody.
    #[test]
    fn a_padded_introduce_is_answered_and_introduced_at_once() {
        use crate::endpoint::punch::PROBES_PER_INTRODUCTION;
        let (mut t, now, bob_seen, alice) = bob_registered_alice_asking();
        let initial = introduce(91).initial();
        let Some(answer @ Message::Answer { .. }) = t.handle(now, alice, initial.clone()).0 else {
            panic!("a padded introduce is answered at once");
        };
        let Message::Answer { body, .. } = &answer else {
            unreachable!()
        };
        assert_eq!(
            Message::open_answer(body).unwrap(),
            Message::Introduced {
                request: RequestId(91),
                peer: Some(bob_seen)
            }
        );
        assert_eq!(
            t.poll_transmit(),
            Some((
                bob_seen,
                Message::Introduction {
                    nonce: 91,
                    peer: alice
                }
            ))
        );
        let probe = Message::Probe { nonce: 91 }.encode().len();
        assert!(
            answer.encode().len() + PROBES_PER_INTRODUCTION * probe <= 3 * initial.encode().len(),
            "within three times the request"
        );
        // On TCP the source port is not the asker's socket: nobody is introduced.
        let (reply, _) = t.handle_on(now, alice, initial, true);
        let Some(Message::Answer { body, .. }) = reply else {
            panic!("answered");
        };
        assert!(matches!(
            Message::open_answer(&body),
            Ok(Message::Introduced { peer: None, .. })
        ));
        assert_eq!(t.poll_transmit(), None);
    }

    /// However many introductions are asked for, one peer is sent a bounded number.
    #[test]
    fn introductions_to_one_peer_are_bounded() {
        let mut t = Tracker::new(RegistryConfig::default(), RateConfig::default()).with_key_seed(5);
        let now = Instant::now();
        let bob: SocketAddr = "203.0.113.2:40000".parse().unwrap();
        t.handle_proven(now, bob, register("bob", 10001));
        let mut sent = 0;
        for i in 0..100u8 {
            let asker = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)), 5555);
            let ask = Message::Introduce {
                request: RequestId(u64::from(i)),
                name: "bob".into(),
            };
            t.handle_proven(now, asker, ask);
            sent += std::iter::from_fn(|| t.poll_transmit()).count();
        }
        assert_eq!(sent, INTRODUCTIONS.burst as usize);
    }

    fn relay_open(request: u64, name: &str) -> Message {
        Message::RelayOpen {
            request: RequestId(request),
            name: name.into(),
        }
    }

    /// `RelayOpen` needs proof, answers a session that forwards between the asker and the
    /// peer's seen address (and nobody else); its events tell the log; unregistering the
    /// peer ends it; a refusal is an `Error` with the reason; the relay can be turned off.
    #[test]
    fn relay_open_needs_proof_and_the_session_forwards_between_its_ends() {
        let mut t = Tracker::new(RegistryConfig::default(), RateConfig::default()).with_key_seed(5);
        let now = Instant::now();
        let bob: SocketAddr = "203.0.113.2:40000".parse().unwrap();
        let alice: SocketAddr = "198.51.100.7:5555".parse().unwrap();
        t.handle_proven(now, bob, register("bob", 10001));
        assert!(matches!(
            t.handle(now, alice, relay_open(1, "bob")).0,
            Some(Message::Retry { .. })
        ));
        assert_eq!(t.relay_sessions(), 0, "no session without proof");
        let Some(Message::RelayOpened { request, session }) =
            t.handle_proven(now, alice, relay_open(2, "bob")).0
        else {
            panic!("no session");
        };
        assert_eq!(request, RequestId(2));
        assert!(matches!(
            t.poll_relay_event(),
            Some(RelayEvent::Opened { from, to, .. }) if from == alice && to == bob
        ));
        assert_eq!(t.relay(now, alice, session, 100), Some(bob));
        assert_eq!(t.relay(now, bob, session, 100), Some(alice));
        let stranger: SocketAddr = "192.0.2.1:5555".parse().unwrap();
        assert_eq!(t.relay(now, stranger, session, 100), None);
        assert_eq!(t.relay_on(now, alice, session, 100, true), None, "over TCP");
        // Over TCP to a UDP peer: refused with the reason.
        let (reply, _) = t.handle_on(now, alice, relay_open(3, "bob"), true);
        assert_eq!(
            reply,
            Some(Message::Error {
                request: RequestId(3),
                reason: "peer bob listens on UDP; ask over UDP".into()
            })
        );
        // Bob leaves: the session ends.
        let bye = Message::Unregister {
            request: RequestId(4),
            name: "bob".into(),
        };
        t.handle_proven(now, bob, bye);
        assert_eq!(t.relay_sessions(), 0);
        assert_eq!(t.relay(now, alice, session, 100), None);
        // Turned off.
        let mut off = Tracker::new(RegistryConfig::default(), RateConfig::default())
            .with_relay(crate::tracker::RelayConfig::off())
            .with_key_seed(5);
        assert!(!off.relay_config().enabled, "kept across with_key_seed");
        off.handle_proven(now, bob, register("bob", 10001));
        assert!(matches!(
            off.handle_proven(now, alice, relay_open(5, "bob")).0,
            Some(Message::Error { reason, .. }) if reason == "this tracker does not relay"
        ));
    }

    /// Idle sessions end with the tracker's expiry, whose next deadline covers them.
    #[test]
    fn idle_relay_sessions_end_with_the_expiry() {
        let mut t = Tracker::new(RegistryConfig::default(), RateConfig::default());
        let now = Instant::now();
        let bob: SocketAddr = "203.0.113.2:40000".parse().unwrap();
        let alice: SocketAddr = "198.51.100.7:5555".parse().unwrap();
        t.handle_proven(now, bob, register("bob", 10001));
        let later = now + Duration::from_secs(20);
        t.handle_proven(later, alice, relay_open(1, "bob"));
        assert_eq!(t.relay_sessions(), 1);
        let idle = t.relay_config().idle;
        // Bob keeps beating; the session's deadline comes after his first one.
        let mut at = later;
        while at < later + idle {
            at += Duration::from_secs(10);
            t.handle_proven(at, bob, register("bob", 10001));
        }
        assert_eq!(t.next_expiry(), Some(later + idle));
        t.expire(later + idle);
        assert_eq!(t.relay_sessions(), 0);
    }

    fn register(name: &str, port: u16) -> Message {
        Message::Register {
            request: RequestId(1),
            name: name.into(),
            port,
            transport: TransportKind::Udp,
        }
    }

    #[test]
    fn registers_refuses_a_taken_name_lists_and_expires_on_a_clock_of_its_own() {
        let config = RegistryConfig::default();
        let ttl = config.ttl;
        let mut t = Tracker::new(config, RateConfig::default());
        let now = Instant::now();
        let alice: SocketAddr = "10.0.0.1:5555".parse().unwrap();
        let (reply, event) = t.handle_proven(now, alice, register("alice", 10001));
        assert!(matches!(
            reply,
            Some(Message::RegisterReply {
                outcome: RegisterOutcome::Accepted { .. },
                ..
            })
        ));
        let holder = SocketAddr::new(alice.ip(), 10001);
        assert_eq!(
            event,
            Some(TrackerEvent::Registered {
                name: "alice".into(),
                addr: holder,
                transport: TransportKind::Udp
            })
        );
        // A refresh is no news.
        assert_eq!(
            t.handle_proven(now, alice, register("alice", 10001)).1,
            None
        );
        // Another address wants the name.
        let mallory: SocketAddr = "10.0.0.66:5555".parse().unwrap();
        let (reply, event) = t.handle_proven(now, mallory, register("alice", 10002));
        let reason = RegisterError::NameTaken {
            name: "alice".into(),
            holder,
        }
        .to_string();
        assert_eq!(
            reply,
            Some(Message::RegisterReply {
                request: RequestId(1),
                outcome: RegisterOutcome::Refused {
                    reason: reason.clone()
                }
            })
        );
        assert!(matches!(event, Some(TrackerEvent::Refused { from, .. }) if from == mallory));
        // Listed, one page.
        let list = Message::ListPeers {
            request: RequestId(2),
            page: 0,
        };
        match t.handle_proven(now, mallory, list).0 {
            Some(Message::PeerList {
                pages: 1, peers, ..
            }) => {
                assert_eq!(peers.0.len(), 1);
                assert_eq!(peers.0[0].addr, holder);
            }
            other => panic!("{other:?}"),
        }
        // A page past the end is an error, not silence.
        let past = Message::ListPeers {
            request: RequestId(3),
            page: 1,
        };
        assert!(matches!(
            t.handle_proven(now, mallory, past).0,
            Some(Message::Error { .. })
        ));
        // Silent past its lifetime: gone.
        assert_eq!(t.next_expiry(), Some(now + ttl));
        assert_eq!(
            t.expire(now + ttl + Duration::from_millis(1)),
            vec!["alice".to_string()]
        );
        assert!(t.registry().is_empty());
    }

    #[test]
    fn only_the_holders_ip_unregisters_a_name_and_messages_for_peers_are_ignored() {
        let mut t = Tracker::new(RegistryConfig::default(), RateConfig::default());
        let now = Instant::now();
        let alice: SocketAddr = "10.0.0.1:5555".parse().unwrap();
        t.handle_proven(now, alice, register("alice", 10001));
        let bye = Message::Unregister {
            request: RequestId(4),
            name: "alice".into(),
        };
        let (reply, event) = t.handle_proven(now, "10.0.0.66:1".parse().unwrap(), bye.clone());
        assert_eq!(
            reply,
            Some(Message::UnregisterReply {
                request: RequestId(4)
            })
        );
        assert_eq!(event, None, "not alice's address: still registered");
        let (_, event) = t.handle_proven(now, alice, bye);
        assert_eq!(
            event,
            Some(TrackerEvent::Unregistered {
                name: "alice".into()
            })
        );
        let fin = Message::FinAck {
            transfer: crate::wire::TransferId(1),
        };
        assert_eq!(t.handle_proven(now, alice, fin), (None, None));
    }

    #[test]
    fn requests_beyond_the_rate_limit_are_dropped() {
        let rate = RateConfig {
            per_second: 1.0,
            burst: 3.0,
            max_sources: 8,
        };
        let mut t = Tracker::new(RegistryConfig::default(), rate);
        let now = Instant::now();
        let from: SocketAddr = "10.0.0.9:1".parse().unwrap();
        let list = Message::ListPeers {
            request: RequestId(1),
            page: 0,
        };
        let answered = (0..20)
            .filter(|_| t.handle_proven(now, from, list.clone()).0.is_some())
            .count();
        assert!((3..=4).contains(&answered), "{answered}");
    }

    /// A flood of new names from many addresses of one network is cut at NEW_NAMES's burst;
    /// another network still registers, and names already held refresh freely.
    #[test]
    fn new_names_are_limited_per_network() {
        let mut t = Tracker::new(RegistryConfig::default(), RateConfig::default());
        let now = Instant::now();
        let burst = NEW_NAMES.burst as usize;
        let from = |net: u8, host: u8| SocketAddr::from(([10, 0, net, host], 5555));
        let accepted = |reply: &Option<Message>| {
            matches!(
                reply,
                Some(Message::RegisterReply {
                    outcome: RegisterOutcome::Accepted { .. },
                    ..
                })
            )
        };
        let mut ok = 0;
        for i in 0..200u32 {
            let (reply, _) =
                t.handle_proven(now, from(1, (i % 250) as u8), register(&format!("n{i}"), 1));
            if accepted(&reply) {
                ok += 1;
            } else {
                let reason = RegisterError::TooManyNew.to_string();
                assert!(
                    matches!(&reply, Some(Message::RegisterReply { outcome: RegisterOutcome::Refused { reason: r }, .. }) if *r == reason),
                    "{reply:?}"
                );
            }
        }
        assert_eq!(ok, burst);
        assert!(accepted(
            &t.handle_proven(now, from(2, 1), register("other-net", 1)).0
        ));
        // Held names refresh (heartbeats) without touching the limit.
        for _ in 0..100 {
            assert!(accepted(
                &t.handle_proven(now, from(1, 0), register("n0", 1)).0
            ));
        }
        assert_eq!(
            network_of("10.0.1.77".parse().unwrap()),
            "10.0.1.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            network_of("2001:db8:1:2:3::9".parse().unwrap()),
            "2001:db8:1::".parse::<IpAddr>().unwrap()
        );
    }

    /// Registers `names`, each from its own address (a /24 of its own, past NEW_NAMES).
    fn register_all(t: &mut Tracker, now: Instant, names: impl Iterator<Item = String>) {
        for (i, name) in names.enumerate() {
            let from = SocketAddr::from(([10, (i / 250) as u8, (i % 250) as u8, 1], 5555));
            t.handle_proven(now, from, register(&name, 10001));
        }
    }

    /// Every page of a listing by `from`, as names.
    fn list_all(t: &mut Tracker, now: Instant, from: SocketAddr) -> Vec<String> {
        let mut names = Vec::new();
        let mut page = 0;
        loop {
            let list = Message::ListPeers {
                request: RequestId(9),
                page,
            };
            match t.handle_proven(now, from, list).0 {
                Some(Message::PeerList { pages, peers, .. }) => {
                    names.extend(peers.0.into_iter().map(|p| p.name.to_string()));
                    page += 1;
                    if page >= pages {
                        return names;
                    }
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// A whole listing costs its requester about one request plus a 64th per further page: a
    /// lister with a burst of 10 requests walks 2,000 peers (60-odd pages) twice,
    /// while first pages still cost a whole request each (10 of them, then nothing).
    #[test]
    fn a_listing_counts_as_about_one_request() {
        let rate = RateConfig {
            per_second: 0.001,
            burst: 10.0,
            ..RateConfig::default()
        };
        let mut t = Tracker::new(RegistryConfig::default(), rate);
        let now = Instant::now();
        // Registered by a tracker without that limit, then listed by this one.
        let mut open = Tracker::new(RegistryConfig::default(), RateConfig::default());
        register_all(&mut open, now, (0..2000).map(|i| format!("peer{i:04}")));
        t.registry = open.registry;
        t.listings.dirty = true;
        let lister: SocketAddr = "10.99.0.1:4000".parse().unwrap();
        assert_eq!(list_all(&mut t, now, lister).len(), 2000);
        assert_eq!(list_all(&mut t, now, lister).len(), 2000, "a second walk");
        let other: SocketAddr = "10.99.0.2:4000".parse().unwrap();
        let first = Message::ListPeers {
            request: RequestId(1),
            page: 0,
        };
        let answered = (0..20)
            .filter(|_| t.handle_proven(now, other, first.clone()).0.is_some())
            .count();
        assert_eq!(answered, 10, "first pages cost a whole request");
    }

    /// A listing taken while peers join pages through the table as it was at its first page:
    /// each peer once, none of the newcomers; the next listing sees them all.
    #[test]
    fn a_listing_pages_through_one_snapshot() {
        let mut t = Tracker::new(RegistryConfig::default(), RateConfig::default());
        let now = Instant::now();
        register_all(&mut t, now, (0..300).map(|i| format!("peer{i:03}")));
        let lister: SocketAddr = "10.99.0.1:4000".parse().unwrap();
        let first = Message::ListPeers {
            request: RequestId(1),
            page: 0,
        };
        let Some(Message::PeerList { pages, peers, .. }) = t.handle_proven(now, lister, first).0
        else {
            panic!("no first page");
        };
        assert!(pages > 3, "{pages} pages");
        let mut names: Vec<String> = peers.0.into_iter().map(|p| p.name.to_string()).collect();
        // Newcomers that sort first would shift every later page of a fresh cut.
        let later = now + SNAPSHOT_EVERY;
        register_all(&mut t, later, (0..100).map(|i| format!("a-new{i:03}")));
        for page in 1..pages {
            let list = Message::ListPeers {
                request: RequestId(2),
                page,
            };
            match t.handle_proven(later, lister, list).0 {
                Some(Message::PeerList {
                    peers, pages: n, ..
                }) => {
                    assert_eq!(n, pages, "the page count of the listing's snapshot");
                    names.extend(peers.0.into_iter().map(|p| p.name.to_string()));
                }
                other => panic!("{other:?}"),
            }
        }
        let want: Vec<String> = (0..300).map(|i| format!("peer{i:03}")).collect();
        assert_eq!(names, want, "each peer of the snapshot once, in order");
        // A new listing sees the newcomers.
        let again = list_all(&mut t, later, lister);
        assert_eq!(again.len(), 400);
    }

    /// A small table is listed as it is (a peer that just registered, or left, at once); a
    /// large one at most SNAPSHOT_EVERY stale.
    #[test]
    fn snapshots_follow_changes() {
        let mut t = Tracker::new(RegistryConfig::default(), RateConfig::default());
        let now = Instant::now();
        let lister: SocketAddr = "10.99.0.1:4000".parse().unwrap();
        register_all(&mut t, now, (0..3).map(|i| format!("p{i}")));
        assert_eq!(list_all(&mut t, now, lister).len(), 3);
        register_all(&mut t, now, (3..5).map(|i| format!("p{i}")));
        assert_eq!(list_all(&mut t, now, lister).len(), 5);
        let bye = Message::Unregister {
            request: RequestId(4),
            name: "p0".into(),
        };
        t.handle_proven(now, SocketAddr::from(([10, 0, 0, 1], 5555)), bye);
        assert_eq!(list_all(&mut t, now, lister), vec!["p1", "p2", "p3", "p4"]);
        // A large table: cut at most every SNAPSHOT_EVERY.
        let big = ALWAYS_FRESH + 100;
        register_all(&mut t, now, (0..big).map(|i| format!("q{i:05}")));
        let fresh = now + SNAPSHOT_EVERY;
        let listed = list_all(&mut t, fresh, lister).len();
        assert_eq!(listed, big + 4);
        register_all(&mut t, fresh, std::iter::once("r".to_string()));
        assert_eq!(
            list_all(&mut t, fresh, lister).len(),
            listed,
            "within SNAPSHOT_EVERY"
        );
        let later = fresh + SNAPSHOT_EVERY;
        assert_eq!(list_all(&mut t, later, lister).len(), listed + 1);
    }

    /// On a transport that proves addresses itself (TCP), requests need no token.
    #[test]
    fn a_stream_transport_needs_no_token() {
        let mut t = Tracker::new(RegistryConfig::default(), RateConfig::default());
        let now = Instant::now();
        let from: SocketAddr = "10.0.0.1:5555".parse().unwrap();
        let (reply, event) = t.handle_on(now, from, register("alice", 10001), true);
        assert!(matches!(reply, Some(Message::RegisterReply { .. })));
        assert!(matches!(event, Some(TrackerEvent::Registered { .. })));
    }

    fn announce(name: &str, request: u64, first: bool, hashes: &[ContentHash]) -> Message {
        Message::Announce {
            request: RequestId(request),
            name: name.into(),
            first,
            hashes: BoundedVec(hashes.to_vec()),
        }
    }

    fn who_has(hash: ContentHash, page: u32) -> Message {
        Message::WhoHas {
            request: RequestId(5),
            hash,
            page,
        }
    }

    /// The `held` of the reply to a heartbeat of `name` from `from`.
    fn heartbeat_held(t: &mut Tracker, now: Instant, from: SocketAddr, name: &str) -> Option<u32> {
        let beat = Message::Heartbeat {
            request: RequestId(3),
            name: name.into(),
            port: 10001,
            transport: TransportKind::Udp,
        };
        match t.handle_proven(now, from, beat).0 {
            Some(Message::RegisterReply {
                outcome: RegisterOutcome::Accepted { held, .. },
                ..
            }) => held,
            other => panic!("{other:?}"),
        }
    }

    /// Announce and WhoHas need proof; the registered address announces (answered with the
    /// count kept and the cap), a forger is refused with a reason and changes nothing, and
    /// anyone asks who has a hash.
    #[test]
    fn the_holder_announces_a_forger_is_refused_and_anyone_asks() {
        let holders = HoldersConfig {
            per_peer: 30,
            total: 1000,
        };
        let mut t = Tracker::new(RegistryConfig::default(), RateConfig::default())
            .with_key_seed(5)
            .with_holders(holders);
        let now = Instant::now();
        let alice: SocketAddr = "203.0.113.2:40000".parse().unwrap();
        let mallory: SocketAddr = "198.51.100.66:40000".parse().unwrap();
        t.handle_proven(now, alice, register("alice", 10001));
        let h: Vec<ContentHash> = (0..24u32)
            .map(|i| ContentHash::of(&i.to_le_bytes()))
            .collect();
        // Without proof: a retry, and nothing kept.
        for msg in [announce("alice", 1, true, &h), who_has(h[0], 0)] {
            assert!(matches!(
                t.handle(now, alice, msg).0,
                Some(Message::Retry { .. })
            ));
        }
        assert_eq!(t.registry().hash_entries(), 0);
        // The forger, proven at its own address.
        let (reply, _) = t.handle_proven(now, mallory, announce("alice", 2, true, &h));
        let reason = AnnounceError::NotFromHolder("alice".into()).to_string();
        assert_eq!(
            reply,
            Some(Message::Error {
                request: RequestId(2),
                reason
            })
        );
        assert_eq!(t.registry().hash_entries(), 0);
        assert_eq!(heartbeat_held(&mut t, now, alice, "alice"), None);
        // The holder: 24, then 6 more of the next 24 (the cap is 30).
        let (reply, _) = t.handle_proven(now, alice, announce("alice", 3, true, &h));
        assert_eq!(
            reply,
            Some(Message::Announced {
                request: RequestId(3),
                held: 24,
                limit: 30
            })
        );
        let more: Vec<ContentHash> = (24..48u32)
            .map(|i| ContentHash::of(&i.to_le_bytes()))
            .collect();
        let (reply, _) = t.handle_proven(now, alice, announce("alice", 4, false, &more));
        assert!(matches!(reply, Some(Message::Announced { held: 30, .. })));
        assert_eq!(heartbeat_held(&mut t, now, alice, "alice"), Some(30));
        // Anyone asks.
        match t.handle_proven(now, mallory, who_has(h[3], 0)).0 {
            Some(Message::Holders {
                hash,
                page: 0,
                pages: 1,
                peers,
                ..
            }) => {
                assert_eq!(hash, h[3]);
                assert_eq!(peers.0.len(), 1);
                assert_eq!(&*peers.0[0].name, "alice");
                assert_eq!(peers.0[0].addr, SocketAddr::new(alice.ip(), 10001));
            }
            other => panic!("{other:?}"),
        }
        let unknown = ContentHash::of(b"nobody has this");
        assert!(matches!(
            t.handle_proven(now, mallory, who_has(unknown, 0)).0,
            Some(Message::Holders { pages: 1, peers, .. }) if peers.0.is_empty()
        ));
        assert!(matches!(
            t.handle_proven(now, mallory, who_has(unknown, 1)).0,
            Some(Message::Error { .. })
        ));
    }

    /// A tracker that forgot a peer (it expired, or the tracker restarted) says so in the
    /// heartbeat reply that registers it again: `held: None`.
    #[test]
    fn a_forgotten_peers_heartbeat_reply_holds_nothing() {
        let mut t = Tracker::new(RegistryConfig::default(), RateConfig::default());
        let now = Instant::now();
        let alice: SocketAddr = "10.0.0.1:5555".parse().unwrap();
        t.handle_proven(now, alice, register("alice", 10001));
        let h = [ContentHash::of(b"a")];
        t.handle_proven(now, alice, announce("alice", 1, true, &h));
        assert_eq!(heartbeat_held(&mut t, now, alice, "alice"), Some(1));
        let later = now + RegistryConfig::default().ttl;
        assert_eq!(t.expire(later), vec!["alice".to_string()]);
        assert_eq!(heartbeat_held(&mut t, later, alice, "alice"), None);
        assert_eq!(t.registry().hash_entries(), 0);
        // An empty announcement is one too.
        t.handle_proven(later, alice, announce("alice", 2, true, &[]));
        assert_eq!(heartbeat_held(&mut t, later, alice, "alice"), Some(0));
    }

    /// The later batches of an announcement and the later pages of a who-has cost a 64th of
    /// a request, as the next pages of a listing do; first batches and first pages a whole one.
    #[test]
    fn later_batches_and_pages_cost_a_64th() {
        let rate = RateConfig {
            per_second: 0.001,
            burst: 4.0,
            ..RateConfig::default()
        };
        let mut t = Tracker::new(RegistryConfig::default(), rate);
        let now = Instant::now();
        let alice: SocketAddr = "10.0.0.1:5555".parse().unwrap();
        t.handle_proven(now, alice, register("alice", 10001));
        let h = [ContentHash::of(b"a")];
        assert!(t
            .handle_proven(now, alice, announce("alice", 1, true, &h))
            .0
            .is_some());
        // 2 of the burst of 4 spent; 60 + 49 64ths of the rest.
        let batches = (0..60)
            .filter(|i| {
                let msg = announce("alice", 10 + i, false, &h);
                t.handle_proven(now, alice, msg).0.is_some()
            })
            .count();
        assert_eq!(batches, 60);
        let pages = (1..50)
            .filter(|&page| t.handle_proven(now, alice, who_has(h[0], page)).0.is_some())
            .count();
        assert_eq!(pages, 49, "answered: Error, past the one page");
        let firsts = (0..10)
            .filter(|_| t.handle_proven(now, alice, who_has(h[0], 0)).0.is_some())
            .count();
        assert_eq!(firsts, 0, "less than one request left");
    }
}
