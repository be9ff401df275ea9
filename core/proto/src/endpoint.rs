//! The peer endpoint's protocol logic, without I/O: which machine an incoming message belongs
//! to, requests with their retries, the registration heartbeat, the content hashes announced
//! to the tracker ([`announce`]), upload admission and rate limits, the answers a finished
//! download still owes its sender, and round trips per peer.
//!
//! Like quinn-proto's `Endpoint`, it is driven from outside with the time passed in:
//! [`Endpoint::handle`] takes a decoded message and says where it goes ([`Incoming`]),
//! [`Endpoint::poll_transmit`] gives what to send, [`Endpoint::poll_timeout`] when to call
//! [`Endpoint::handle_timeout`], and [`Endpoint::poll_event`] what became of requests. The
//! transfer machines themselves ([`ChunkSender`](crate::transfer::ChunkSender),
//! [`ChunkReceiver`](crate::transfer::ChunkReceiver)) and the files stay with the driver,
//! which tells the endpoint when transfers start and end.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use p2p_proto::endpoint::{Endpoint, EndpointConfig, Event, Incoming};
//! use p2p_proto::wire::{BoundedVec, Message, RequestId};
//!
//! let mut ep = Endpoint::new(EndpointConfig::default(), 0);
//! let tracker = "127.0.0.1:9000".parse().unwrap();
//! let now = Instant::now();
//! let (id, first) = ep.request(now, tracker, Message::ListPeers { request: RequestId(0), page: 0 });
//! assert_eq!(first.to, tracker); // the driver sends it, and calls handle_timeout when due
//! let answer = Message::PeerList { request: id, page: 0, pages: 1, peers: BoundedVec(Vec::new()) };
//! match ep.handle(now + Duration::from_millis(20), tracker, answer) {
//!     Some(Incoming::Answer { request, .. }) => assert_eq!(request, id),
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(ep.round_trip(tracker, now), Some(Duration::from_millis(20)));
//! assert!(ep.poll_event().is_none() && ep.poll_timeout().is_none());
//! ```

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::limits::{RateConfig, RateLimiter};
use crate::validation::{AddressValidator, TokenCache};
use crate::wire::{AbortReason, Message, RegisterOutcome, RequestId, TransferId, TransportKind};

/// What the next page of a listing (index, piece hashes, the tracker's peers) costs a proven
/// requester, in requests of its rate limit: a whole listing counts about as one request
/// (a 100,000-file index, 6,000-odd pages, as about 100: half a second of the default
/// 200 per second, so that `ls` of it again at once is not held back).
pub const NEXT_PAGE_COST: f64 = 1.0 / 64.0;

/// What a request for a listing's page starting at `position` (0: its first page) costs.
pub fn page_cost(position: u32) -> f64 {
    if position == 0 {
        1.0
    } else {
        NEXT_PAGE_COST
    }
}

/// `Retry`s one request follows before it waits for its next attempt instead.
pub const MAX_RETRIES: u32 = 3;

/// Settings of an [`Endpoint`].
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// First wait before a request is sent again (doubled each time, at most [`MAX_RPC_WAIT`]).
    pub rpc_retry: Duration,
    /// Sends of a request before it fails.
    pub rpc_attempts: u32,
    /// Rate limit of requests (index, piece hashes, new transfers) per source IP.
    pub rate: RateConfig,
    /// Most transfers served at once.
    pub max_uploads: usize,
    /// Most transfers served at once to one IP address.
    pub max_uploads_per_peer: usize,
    /// With requests waiting in line, how long an upload holds its slot before it gives it
    /// to the next in line and waits for another turn (processor sharing of the slots;
    /// zero: an upload holds its slot to the end).
    pub upload_turn: Duration,
    /// The transport proves source addresses itself (TCP's handshake): requests need no
    /// token (see [`crate::validation`]).
    pub addresses_proven: bool,
    /// The peer's identity: its name requests go signed ([`crate::identity`]).
    pub identity: Option<crate::identity::Identity>,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            rpc_retry: Duration::from_millis(250),
            rpc_attempts: 5,
            rate: RateConfig::default(),
            max_uploads: 32,
            max_uploads_per_peer: 8,
            upload_turn: DEFAULT_UPLOAD_TURN,
            addresses_proven: false,
            identity: None,
        }
    }
}

/// The endpoint's timers, in one place.
///
/// | timer | value | what it bounds |
/// |---|---|---|
/// | request retry | `EndpointConfig::rpc_retry`, doubling up to [`MAX_RPC_WAIT`] | a lost request or answer |
/// | heartbeat | the `every` of [`Endpoint::keep_registered`] | the tracker's entry lifetime |
/// | [`LINGER`] | 20 s | answers owed by a finished download to its sender |
/// | [`ROUND_TRIP_FRESH`] | 60 s | how long a measured round trip is trusted |
/// | [`MIN_REQUEST_RETRY`] | 25 ms | the shortest first wait for an `Accept` |
pub const MAX_RPC_WAIT: Duration = Duration::from_secs(1);

/// How long a finished download answers its sender after its receiver is gone (past the
/// sender's FIN retries, which back off to its largest RTO).
pub const LINGER: Duration = Duration::from_secs(20);
/// Most finished downloads remembered for their senders.
pub const MAX_LINGERING: usize = 1024;
/// Peers whose round trip is remembered.
pub const MAX_ROUND_TRIPS: usize = 256;
/// How long a measured round trip is trusted.
pub const ROUND_TRIP_FRESH: Duration = Duration::from_secs(60);
/// Shortest first wait for an answer to a `Request` (see [`request_retry_after`]).
pub const MIN_REQUEST_RETRY: Duration = Duration::from_millis(25);

/// What an id is for (a domain of the id generator).
#[derive(Clone, Copy)]
enum IdPurpose {
    Request = 1,
    Transfer = 2,
}

struct Pending {
    to: SocketAddr,
    /// The request, sent with the token for `to` when there is one.
    msg: Message,
    /// `Retry`s followed.
    retries: u32,
    /// When it was first sent: answered at the first attempt, a round-trip sample.
    sent_at: Instant,
    attempts: u32,
    wait: Duration,
    next_at: Instant,
}

struct Registration {
    /// The id of the last heartbeat sent: only its answer is taken (a refusal anyone could
    /// forge would otherwise be logged at will).
    last_heartbeat: Option<RequestId>,
    /// The announcement generation when it was sent (see [`announce`]).
    heartbeat_generation: u64,
    tracker: SocketAddr,
    name: String,
    port: u16,
    transport: TransportKind,
    every: Duration,
    next_at: Instant,
}

/// A finished download, remembered after its receiver is gone so that its sender still
/// learns the end: a receiver finishes on its last verified chunk, before the sender's FIN,
/// so the sender may yet send a chunk again (its copy of the final ACK was lost) and will
/// send its FIN. (TCP's TIME-WAIT, for the same reason.)
struct Lingering {
    transfer: TransferId,
    peer: SocketAddr,
    /// The ACK of every chunk.
    final_ack: Message,
    until: Instant,
    /// The sender's FIN came and was answered: it knows.
    closed: bool,
}

/// An upload slot: taken when a transfer is admitted, kept while the upload runs.
struct UploadSlot {
    /// When it got its slot (this turn).
    started: Instant,
    /// The smallest RTT the sender measured to its receiver, as the driver last reported
    /// it ([`Endpoint::upload_rtt`]): a turn lasts a few of them at least (the smallest, not
    /// the smoothed: 100 downloads on one machine inflate the smoothed RTT with queues, and
    /// turns as long made the rates 10x apart).
    rtt: Duration,
    /// Bytes delivered so far ([`ChunkSender::delivered_bytes`](crate::transfer::ChunkSender::delivered_bytes):
    /// acknowledged, or taken by a stream), as last reported, and at the start of this
    /// turn: a turn ends once [`UPLOAD_QUANTUM`] more are delivered.
    delivered: u64,
    turn_from: u64,
    /// Everything is acknowledged: it only waits for its `FinAck`, and is never paused.
    done: bool,
    /// An ACK came from the receiver's address: it receives there (a forged `Request`'s
    /// victim never acknowledges anything).
    proven: bool,
}

/// How long an upload whose receiver has acknowledged nothing holds its slot against a new
/// `Request` once every slot is taken (a real receiver acknowledges within a round trip or
/// two; a forged `Request`'s victim never does).
pub const UNPROVEN_GRACE: Duration = Duration::from_secs(1);

/// Default [`EndpointConfig::upload_turn`], the longest turn: most end sooner, at
/// [`UPLOAD_QUANTUM`] bytes. Measured with `scripts/many-gets.sh` (100 downloads, 8 slots):
/// one slot each to the end, rates 9x apart; turns of 500 ms, 28x (the first downloads
/// ended within their first turn); 100 ms, 3-10x.
pub const DEFAULT_UPLOAD_TURN: Duration = Duration::from_secs(1);
/// A turn ends once this many bytes more of the upload are delivered (acknowledged; on a
/// stream, sent) (and
/// [`TURN_RTTS`] round trips passed), or after [`EndpointConfig::upload_turn`]: equal
/// bytes per turn (deficit round robin), so that the downloads sharing the slots progress at
/// equal rates whatever each sender's pace (turns of equal time gave a fast sender more).
pub const UPLOAD_QUANTUM: u64 = 4 << 20;
/// A turn lasts at least this many of the upload's smallest RTTs: on a long path the
/// chunks of a turn take a round trip to be acknowledged, and a turn of one would spend
/// most of itself filling the pipe.
pub const TURN_RTTS: u32 = 4;

/// See the [module documentation](self).
pub struct Endpoint {
    config: EndpointConfig,
    /// Key of the id generator ([`Endpoint::new_transfer_id`]).
    id_key: [u8; 32],
    /// Ids made so far.
    ids: u64,
    requests: BTreeMap<RequestId, Pending>,
    registration: Option<Registration>,
    /// Names unregistered since their last `Register`: a late heartbeat arming is ignored.
    left: BTreeSet<String>,
    limiter: RateLimiter,
    /// Checks that requesters receive at their address (see [`crate::validation`]).
    validator: AddressValidator,
    /// Tokens others gave us.
    tokens: TokenCache,
    /// Requests that came as [`Message::Initial`] and await their answer, with the bytes
    /// they came with ([`Endpoint::answer_for`]).
    initials: HashMap<(SocketAddr, RequestId), AwaitedInitial>,
    /// Trackers that never answered a signed name request (they predate `Signed`): ours go
    /// to them unsigned. At most [`MAX_UNSIGNED_TRACKERS`].
    unsigned: Vec<SocketAddr>,
    uploads: BTreeMap<(SocketAddr, TransferId), UploadSlot>,
    /// Uploads that gave their slot to the line for a turn (see [`queue`]): waiting in it
    /// to resume, holding no slot.
    paused: BTreeMap<(SocketAddr, TransferId), UploadSlot>,
    downloads: BTreeMap<TransferId, SocketAddr>,
    lingering: VecDeque<Lingering>,
    /// The last round trip measured to each address, and when.
    round_trips: BTreeMap<SocketAddr, (Duration, Instant)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Hole punching, as asker and as the peer asked for (see [`punch`]).
    punching: punch::Punching,
    /// Requests waiting for an upload slot, in order (see [`queue`]).
    waiting: VecDeque<queue::Waiting>,
    /// The content hashes announced to the tracker (see [`announce`]).
    announcer: announce::Announcer,
}

impl Endpoint {
    /// An endpoint whose ids come from `id_seed` (pass something random: ids are then
    /// unpredictable to anyone who does not see them, and a restarted endpoint does not reuse
    /// those of its previous life; simulations pass their seed, and replay).
    pub fn new(config: EndpointConfig, id_seed: u64) -> Self {
        Endpoint {
            limiter: RateLimiter::new(config.rate),
            validator: AddressValidator::new(id_seed),
            tokens: TokenCache::default(),
            initials: HashMap::new(),
            unsigned: Vec::new(),
            config,
            id_key: blake3::derive_key("p2p endpoint ids v1", &id_seed.to_le_bytes()),
            ids: 0,
            requests: BTreeMap::new(),
            registration: None,
            left: BTreeSet::new(),
            uploads: BTreeMap::new(),
            paused: BTreeMap::new(),
            downloads: BTreeMap::new(),
            lingering: VecDeque::new(),
            round_trips: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            punching: punch::Punching::default(),
            waiting: VecDeque::new(),
            announcer: announce::Announcer::default(),
        }
    }

    /// A fresh id for a download of ours. Ids are a keyed hash of a counter and their
    /// purpose: unpredictable (an off-path party cannot aim an `Abort` at a transfer, or an
    /// answer at a request, by guessing), and a transfer id says nothing of request ids.
    pub fn new_transfer_id(&mut self) -> TransferId {
        TransferId(self.new_id(IdPurpose::Transfer))
    }

    fn new_request_id(&mut self) -> RequestId {
        RequestId(self.new_id(IdPurpose::Request))
    }

    fn new_id(&mut self, purpose: IdPurpose) -> u64 {
        self.ids += 1;
        let mut h = blake3::Hasher::new_keyed(&self.id_key);
        h.update(&[purpose as u8]);
        h.update(&self.ids.to_le_bytes());
        let bytes: [u8; 8] = h.finalize().as_bytes()[..8].try_into().expect("8 bytes");
        u64::from_le_bytes(bytes)
    }

    /// Sends `msg` (a request: its id is set here) to `to`, again until answered or
    /// [`EndpointConfig::rpc_attempts`] sends went unanswered ([`Event::NoAnswer`]). Returns
    /// its id and the first send, which the caller makes at once.
    pub fn request(
        &mut self,
        now: Instant,
        to: SocketAddr,
        mut msg: Message,
    ) -> (RequestId, Transmit) {
        match &msg {
            Message::Unregister { name, .. } => {
                // Leaving: the heartbeat must not register us again, not even one armed by a
                // `register` whose reply is still on its way.
                if self.registration.as_ref().is_some_and(|r| &r.name == name) {
                    self.registration = None;
                    self.stop_announcing();
                }
                self.left.insert(name.clone());
            }
            Message::Register { name, .. } => {
                self.left.remove(name);
            }
            _ => {}
        }
        let id = self.new_request_id();
        set_request_id(&mut msg, id);
        // To a server we hold no token of, a lookup goes padded, to be answered at once
        // (its next attempt goes as usual: a server older than `Initial` drops it).
        let initial = self.tokens.get(to).is_none()
            && !self.config.addresses_proven
            && msg.answerable_at_once();
        let payload = if initial {
            msg.initial().encode()
        } else {
            self.seal(to, &msg).encode()
        };
        let wait = self.config.rpc_retry;
        self.requests.insert(
            id,
            Pending {
                to,
                msg,
                retries: 0,
                sent_at: now,
                attempts: 1,
                wait,
                next_at: now + wait,
            },
        );
        (id, Transmit { to, payload })
    }

    /// Forgets request `id` (its caller gave up, or its first send failed for good).
    pub fn cancel(&mut self, id: RequestId) {
        self.requests.remove(&id);
    }

    /// Forgets every request (shutting down; the driver tells their callers).
    pub fn cancel_all(&mut self) {
        self.requests.clear();
    }

    /// Keeps `name` registered at `tracker` with a heartbeat every `every` (unless `name`
    /// was unregistered since its `Register` was sent), and announces to it the content
    /// hashes given to [`Endpoint::set_announced`].
    pub fn keep_registered(
        &mut self,
        now: Instant,
        tracker: SocketAddr,
        name: String,
        port: u16,
        transport: TransportKind,
        every: Duration,
    ) {
        if self.left.contains(&name) {
            return; // unregistered while the registration was being confirmed
        }
        self.registration = Some(Registration {
            last_heartbeat: None,
            heartbeat_generation: 0,
            tracker,
            name,
            port,
            transport,
            every,
            next_at: now + every,
        });
        self.announce_registered(now);
    }

    /// Routes a message from `from`. `None`: answered here (see [`Endpoint::poll_transmit`])
    /// or dropped (unknown, from the wrong address, over the rate limit).
    pub fn handle(&mut self, now: Instant, from: SocketAddr, msg: Message) -> Option<Incoming> {
        // A lookup may come as an `Initial`: answered at once, within three times its size
        // (`answer_for`). An `Answer` is the answer to ours, and a token.
        let (msg, initial) = match msg {
            Message::Initial { body, pad } => {
                let (inner, size) = Message::open_initial(&body, &pad).ok()?;
                if !self.limiter.allow(now, from.ip()) {
                    return None;
                }
                (inner, Some(size))
            }
            Message::Answer { token, body } => {
                let inner = Message::open_answer(&body).ok()?;
                let id = inner.answered_request()?;
                if self.requests.get(&id).is_none_or(|r| r.to != from) {
                    return None;
                }
                self.tokens.insert(from, token);
                return self.handle(now, from, inner);
            }
            msg => (msg, None),
        };
        // A request proves its sender's address with a token, or is answered with a `Retry`.
        let (msg, proven) = self.validator.open(now, from.ip(), msg)?;
        let proven = proven || self.config.addresses_proven || initial.is_some();
        if let (Some(size), Some(id)) = (initial, msg.request_id()) {
            // Each one answered once, as an `Answer` (the same id sent again counts again).
            // Too many awaiting answers: dropped like a lost datagram, never answered plain.
            if self.initials.len() >= MAX_INITIALS {
                // Those never answered (refused, dropped) make room after a while.
                self.initials
                    .retain(|_, i| now.saturating_duration_since(i.at) < INITIAL_ANSWER_WAIT);
            }
            let full = self.initials.len() >= MAX_INITIALS;
            match self.initials.entry((from, id)) {
                Entry::Occupied(mut i) => {
                    let i = i.get_mut();
                    i.size = i.size.min(size);
                    i.waiting += 1;
                    i.at = now;
                }
                Entry::Vacant(_) if full => return None,
                Entry::Vacant(v) => {
                    v.insert(AwaitedInitial {
                        size,
                        waiting: 1,
                        at: now,
                    });
                }
            }
        }
        match msg {
            Message::IndexRequest { request, .. }
            | Message::PieceRequest { request, .. }
            | Message::EntryRequest { request, .. }
            | Message::EntryByHash { request, .. }
            | Message::HaveRequest { request, .. }
                if !proven =>
            {
                self.retry(now, from, |token| Message::Retry { request, token });
                return None;
            }
            Message::Request { transfer, .. } if !proven && !self.is_upload(from, transfer) => {
                self.retry(now, from, |token| Message::RetryTransfer {
                    transfer,
                    token,
                });
                return None;
            }
            _ => {}
        }
        match msg {
            Message::Retry { request, token } => {
                if let Some(r) = self
                    .requests
                    .get_mut(&request)
                    .filter(|r| r.to == from && r.retries < MAX_RETRIES)
                {
                    // Asked for proof: again, at once, with it.
                    self.tokens.insert(from, token);
                    r.retries += 1;
                    r.sent_at = now;
                    r.next_at = now + r.wait;
                    self.transmits.push_back(Transmit {
                        to: from,
                        payload: seal(
                            signer(&self.config, &self.unsigned, from),
                            &self.tokens,
                            from,
                            &r.msg,
                        )
                        .encode(),
                    });
                } else if let Some(reg) = self
                    .registration
                    .as_mut()
                    .filter(|reg| reg.tracker == from && reg.last_heartbeat == Some(request))
                {
                    // A heartbeat without a (valid) token: the next one goes at once, with it.
                    self.tokens.insert(from, token);
                    reg.last_heartbeat = None;
                    reg.next_at = now;
                }
                None
            }
            Message::RetryTransfer { transfer, token } => {
                if self.downloads.get(&transfer) != Some(&from) {
                    return None;
                }
                self.tokens.insert(from, token);
                Some(Incoming::Download { transfer, msg })
            }
            // Opened above: never nested.
            Message::Validated { .. } | Message::Initial { .. } | Message::Answer { .. } => None,
            Message::Introduced { request, peer }
                if self.punch_answered(now, from, request, peer) =>
            {
                None
            }
            Message::Introduction { nonce, peer } => {
                self.introduced(now, from, nonce, peer);
                None
            }
            Message::Probe { nonce } => {
                self.probed(from, nonce);
                None
            }
            Message::Announced {
                request,
                held,
                limit,
            } if self.announce_answered(now, from, request, Some((held, limit))) => None,
            Message::Error { request, .. } if self.announce_answered(now, from, request, None) => {
                None
            }
            Message::RegisterReply { request, .. }
            | Message::UnregisterReply { request }
            | Message::PeerList { request, .. }
            | Message::IndexPage { request, .. }
            | Message::EntryReply { request, .. }
            | Message::Have { request, .. }
            | Message::RelayOpened { request, .. }
            | Message::Found { request, .. }
            | Message::PieceHashes { request, .. }
            | Message::Introduced { request, .. }
            | Message::Announced { request, .. }
            | Message::Holders { request, .. }
            | Message::Error { request, .. } => {
                if self.requests.get(&request).is_some_and(|r| r.to == from) {
                    let pending = self.requests.remove(&request).expect("checked");
                    if pending.attempts == 1 {
                        // Karn: an answer to a request sent again may answer either copy.
                        self.record_round_trip(from, pending.sent_at, now);
                    }
                    return Some(Incoming::Answer {
                        request,
                        answer: msg,
                    });
                }
                let (Some(reg), Message::RegisterReply { request, outcome }) =
                    (&mut self.registration, msg)
                else {
                    return None;
                };
                if reg.tracker != from || reg.last_heartbeat != Some(request) {
                    return None;
                }
                match outcome {
                    RegisterOutcome::Refused { reason } => {
                        reg.last_heartbeat = None;
                        self.events.push_back(Event::HeartbeatRefused {
                            tracker: from,
                            reason,
                        });
                    }
                    RegisterOutcome::Accepted { held, .. } => {
                        let generation = reg.heartbeat_generation;
                        self.heartbeat_held(now, generation, held);
                    }
                }
                None
            }
            Message::EntryRequest { request, file } => self
                .limiter
                .allow(now, from.ip())
                .then_some(Incoming::EntryRequest {
                    from,
                    request,
                    file,
                }),
            Message::EntryByHash { request, hash } => {
                self.limiter
                    .allow(now, from.ip())
                    .then_some(Incoming::EntryByHash {
                        from,
                        request,
                        hash,
                    })
            }
            Message::HaveRequest {
                request,
                hash,
                first,
            } => self
                .limiter
                .allow(now, from.ip())
                .then_some(Incoming::HaveRequest {
                    from,
                    request,
                    hash,
                    first,
                }),
            Message::IndexRequest { request, page } => self
                .limiter
                .allow_cost(now, from.ip(), page_cost(page))
                .then_some(Incoming::IndexRequest {
                    from,
                    request,
                    page,
                }),
            Message::PieceRequest {
                request,
                file,
                hash,
                first,
            } => self
                .limiter
                .allow_cost(now, from.ip(), page_cost(first))
                .then_some(Incoming::PieceRequest {
                    from,
                    request,
                    file,
                    hash,
                    first,
                }),
            Message::Request {
                transfer,
                file,
                offset,
                end,
            } => {
                if self.is_upload(from, transfer) {
                    return Some(Incoming::Upload {
                        from,
                        transfer,
                        msg,
                    });
                }
                if !self.limiter.allow(now, from.ip()) {
                    return None; // flooding: dropped like a lost datagram
                }
                // First come, first served: behind those waiting, or when every slot is
                // taken, in line (a full line: `Busy`).
                if self.line_waiting(now) || !self.make_room(now, from) {
                    if !self.wait_in_line(now, from, transfer, file, (offset, end)) {
                        self.refuse(from, transfer, AbortReason::Busy);
                    }
                    self.admit_waiting(now);
                    return None;
                }
                Some(Incoming::NewUpload {
                    from,
                    transfer,
                    file,
                    offset,
                    end,
                })
            }
            Message::Ack { transfer, .. } | Message::FinAck { transfer } => {
                let key = (from, transfer);
                let slot = match self.uploads.get_mut(&key) {
                    Some(slot) => slot,
                    None => self.paused.get_mut(&key)?,
                };
                slot.proven = true;
                Some(Incoming::Upload {
                    from,
                    transfer,
                    msg,
                })
            }
            Message::Accept { transfer, .. }
            | Message::Data { transfer, .. }
            | Message::Queued { transfer, .. }
            | Message::Fin { transfer, .. } => match self.downloads.get(&transfer) {
                Some(&peer) if peer == from => Some(Incoming::Download { transfer, msg }),
                Some(_) => None,
                None => {
                    if let Some(answer) = self.answer_lingering(now, from, &msg) {
                        self.transmits.push_back(Transmit {
                            to: from,
                            payload: answer.encode(),
                        });
                    }
                    None
                }
            },
            Message::Abort { transfer, .. } => {
                if self.is_upload(from, transfer) {
                    Some(Incoming::Upload {
                        from,
                        transfer,
                        msg,
                    })
                } else if self.downloads.get(&transfer) == Some(&from) {
                    Some(Incoming::Download { transfer, msg })
                } else {
                    None
                }
            }
            // Tracker requests are not ours to answer.
            Message::Register { .. }
            | Message::Heartbeat { .. }
            | Message::Unregister { .. }
            | Message::ListPeers { .. }
            | Message::Introduce { .. }
            | Message::Announce { .. }
            | Message::WhoHas { .. }
            | Message::RelayOpen { .. }
            | Message::Lookup { .. }
            | Message::Signed { .. } => None,
            // A relayed datagram is unwrapped by the endpoint's transport (see
            // `p2p_core::relay`) before it gets here; one that gets here is stray.
            Message::Relayed { .. } => None,
        }
    }

    /// The round trip to `peer`, if measured recently (before `now`).
    pub fn round_trip(&self, peer: SocketAddr, now: Instant) -> Option<Duration> {
        self.round_trips
            .get(&peer)
            .filter(|(_, at)| now.saturating_duration_since(*at) < ROUND_TRIP_FRESH)
            .map(|(rtt, _)| *rtt)
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// What became of a request or the registration.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let requests = self.requests.values().map(|r| r.next_at);
        let heartbeat = self.registration.as_ref().map(|r| r.next_at);
        let punching = self.punching.next_timeout();
        let announcing = self.announcer.next_timeout();
        let turns = self.next_turn_timeout();
        requests
            .chain(heartbeat)
            .chain(punching)
            .chain(announcing)
            .chain(turns)
            .min()
    }

    /// Sends requests again or gives up on them, sends the heartbeat when due, and starts
    /// again an announcement that failed.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Punches first: one past its time takes its `Introduce` with it.
        self.punch_timeout(now);
        // Slots freed by evictions, or a line that moved on past those who left; uploads
        // whose turn is over give theirs to the line; paused ones hear that they wait.
        self.admit_waiting(now);
        self.rotate(now);
        self.remind_paused(now);
        let due: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| r.next_at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let r = self.requests.get_mut(&id).expect("listed");
            if r.attempts >= self.config.rpc_attempts {
                if self.announce_unanswered(now, id) {
                    continue; // ours: the announcement starts again later
                }
                let r = self.requests.get_mut(&id).expect("listed");
                let signed = self.config.identity.is_some()
                    && crate::identity::is_name_request(&r.msg)
                    && !self.unsigned.contains(&r.to);
                if signed && self.unsigned.len() < MAX_UNSIGNED_TRACKERS {
                    // A tracker older than `Signed` drops it without a word: the same
                    // request again, unsigned, as such a tracker expects.
                    self.unsigned.push(r.to);
                    r.attempts = 1;
                    r.retries = 0;
                    r.wait = self.config.rpc_retry;
                    r.sent_at = now;
                    r.next_at = now + r.wait;
                    self.transmits.push_back(Transmit {
                        to: r.to,
                        payload: self.tokens.wrap(r.to, &r.msg).encode(),
                    });
                    continue;
                }
                let r = self.requests.remove(&id).expect("listed");
                self.events.push_back(Event::NoAnswer {
                    request: id,
                    to: r.to,
                });
                continue;
            }
            r.attempts += 1;
            r.wait = (r.wait * 2).min(MAX_RPC_WAIT);
            r.next_at = now + r.wait;
            self.transmits.push_back(Transmit {
                to: r.to,
                payload: seal(
                    signer(&self.config, &self.unsigned, r.to),
                    &self.tokens,
                    r.to,
                    &r.msg,
                )
                .encode(),
            });
        }
        self.announce_timeout(now);
        let generation = self.announcer.generation();
        let heartbeat = match self.registration.as_mut() {
            Some(reg) if reg.next_at <= now => {
                reg.next_at = now + reg.every;
                reg.heartbeat_generation = generation;
                Some((
                    reg.tracker,
                    Message::Heartbeat {
                        request: RequestId(0),
                        name: reg.name.clone(),
                        port: reg.port,
                        transport: reg.transport,
                    },
                ))
            }
            _ => None,
        };
        if let Some((tracker, mut msg)) = heartbeat {
            // Fire and forget: the next one comes anyway.
            let id = self.new_request_id();
            set_request_id(&mut msg, id);
            if let Some(reg) = self.registration.as_mut() {
                reg.last_heartbeat = Some(id);
            }
            self.transmits.push_back(Transmit {
                to: tracker,
                payload: self.seal(tracker, &msg).encode(),
            });
        }
    }

    /// `msg` as it goes to `to`: with the token `to` gave us, if it needs one (the driver
    /// sends a download's `Request` through this).
    pub fn wrap(&self, to: SocketAddr, msg: &Message) -> Message {
        self.seal(to, msg)
    }

    /// `msg` as it goes to `to` ([`seal`]).
    fn seal(&self, to: SocketAddr, msg: &Message) -> Message {
        seal(
            signer(&self.config, &self.unsigned, to),
            &self.tokens,
            to,
            msg,
        )
    }

    /// `reply` as it goes to `to`: the answer to a request that came as an `Initial` goes as
    /// an [`Message::Answer`] with `to`'s token, or, if that would be more than three times
    /// the `Initial`'s size, as a `Retry` (then `to` asks again with the token). Others as
    /// they are.
    pub fn answer_for(&mut self, now: Instant, to: SocketAddr, reply: Message) -> Message {
        let Some(key) = reply.answered_request().map(|id| (to, id)) else {
            return reply;
        };
        let Some(i) = self.initials.get_mut(&key) else {
            return reply;
        };
        let size = i.size;
        i.waiting -= 1;
        if i.waiting == 0 {
            self.initials.remove(&key);
        }
        let token = self.validator.issue(now, to.ip());
        reply.answer_initial_or_retry(token, size)
    }

    /// Sends `msg` to `from` if the rate limit allows: the answer to a request whose sender
    /// has not proven its address, no larger than the request.
    fn retry(
        &mut self,
        now: Instant,
        from: SocketAddr,
        msg: impl FnOnce(crate::wire::Token) -> Message,
    ) {
        if self.limiter.allow(now, from.ip()) {
            let token = self.validator.issue(now, from.ip());
            self.transmits.push_back(Transmit {
                to: from,
                payload: msg(token).encode(),
            });
        }
    }

    fn record_round_trip(&mut self, peer: SocketAddr, sent_at: Instant, now: Instant) {
        if self.round_trips.len() >= MAX_ROUND_TRIPS && !self.round_trips.contains_key(&peer) {
            // Make room by forgetting the oldest measure (stale ones are ignored anyway).
            let oldest = self
                .round_trips
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(a, _)| *a);
            if let Some(oldest) = oldest {
                self.round_trips.remove(&oldest);
            }
        }
        self.round_trips
            .insert(peer, (now.saturating_duration_since(sent_at), now));
    }
}

/// A download's first wait for the sender's answer to its `Request`, given a round trip to
/// that sender measured just before: four of them (the answer may also wait for the sender to
/// open the file), at least [`MIN_REQUEST_RETRY`], at most `default`.
pub fn request_retry_after(rtt: Duration, default: Duration) -> Duration {
    (rtt * 4).max(MIN_REQUEST_RETRY).min(default)
}

/// Most trackers remembered as predating `Signed`.
const MAX_UNSIGNED_TRACKERS: usize = 16;

/// The identity that signs name requests to `to`: ours, unless `to` predates `Signed`.
fn signer<'a>(
    config: &'a EndpointConfig,
    unsigned: &[SocketAddr],
    to: SocketAddr,
) -> Option<&'a crate::identity::Identity> {
    config.identity.as_ref().filter(|_| !unsigned.contains(&to))
}

/// `msg` as it goes to `to`: a name request signed with `identity` (over the token `to`
/// gave us, if any: without one the tracker answers with a `Retry`), then with that token if
/// it needs one.
fn seal(
    identity: Option<&crate::identity::Identity>,
    tokens: &TokenCache,
    to: SocketAddr,
    msg: &Message,
) -> Message {
    match identity {
        Some(id) if crate::identity::is_name_request(msg) => {
            let token = tokens.get(to);
            id.sign(token, msg).with_token(token)
        }
        _ => tokens.wrap(to, msg),
    }
}

/// Most requests that came as `Initial` whose answers are awaited.
const MAX_INITIALS: usize = 1024;
/// How long an `Initial`'s answer is awaited before its place may go to another (a first
/// index page waits for a rescan of the share: seconds at 100,000 files).
const INITIAL_ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Requests of one id from one address that came as `Initial`s and await their answers.
#[derive(Debug)]
struct AwaitedInitial {
    /// The smallest of their sizes (what an `Answer` may be three times of).
    size: usize,
    /// Answers still to give.
    waiting: u32,
    /// When the last came.
    at: Instant,
}

fn set_request_id(msg: &mut Message, id: RequestId) {
    if let Some(request) = msg.request_id_mut() {
        *request = id;
    }
}

pub mod announce;
mod events;
pub mod punch;
pub mod queue;
mod transfers;

pub use events::{Event, Incoming, Transmit};
pub use punch::Probe;

#[cfg(test)]
mod tests;
