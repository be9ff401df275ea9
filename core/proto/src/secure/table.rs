//! [`SessionTable`]: every secure session and handshake of one endpoint, sans-IO.
//!
//! Inputs: [`connect`](SessionTable::connect) (start a handshake as initiator),
//! [`handle`](SessionTable::handle) (a received message: a frame is handled, anything else is
//! plaintext) and [`handle_timeout`](SessionTable::handle_timeout). Outputs:
//! [`poll_transmit`](SessionTable::poll_transmit) (handshake frames to send),
//! [`poll_event`](SessionTable::poll_event) (handshakes finished or failed) and
//! [`poll_timeout`](SessionTable::poll_timeout). Data goes through the [`Session`] that
//! [`session_to`](SessionTable::session_to) returns.
//!
//! Bounds: at most `max_sessions` sessions (the one idle longest goes first) and
//! `max_handshakes` handshakes in progress (the oldest goes first); at most
//! [`SESSIONS_PER_ADDR`] sessions per address; handshake initiations cost a token per source
//! IP and one in a bucket shared by all; a repeated initiation gets the same response again
//! without new work.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use snow::params::NoiseParams;
use snow::{Builder, HandshakeState};

use super::frame::{
    Frame, IK_INIT_NOISE, IK_RESPONSE_NOISE, SEALED_HEAD, XX_FINISH_NOISE, XX_INIT_NOISE,
    XX_PADDING, XX_RESPONSE_NOISE,
};
use super::keys::{seeded_resolver, x25519_public, Entropy, NOISE_IK, NOISE_XX, PROLOGUE};
use super::session::SessionKeys;
use super::{SecureError, Session};
use crate::identity::{Identity, PublicKey};
use crate::limits::{RateConfig, RateLimiter};

/// Most sessions kept with one address (both sides may have started one at once, and a
/// peer that restarts starts anew).
pub const SESSIONS_PER_ADDR: usize = 4;

/// Limits and timers of a [`SessionTable`].
#[derive(Clone, Debug)]
pub struct SecureConfig {
    /// Most established sessions; the one idle longest is dropped for a new one.
    pub max_sessions: usize,
    /// Most handshakes in progress (both roles); the oldest is dropped for a new one.
    pub max_handshakes: usize,
    /// Handshake initiations answered per source IP.
    pub per_ip: RateConfig,
    /// Handshake initiations answered in all, per second.
    pub total_per_second: f64,
    /// Burst of `total_per_second`.
    pub total_burst: f64,
    /// A session that received nothing for this long is dropped.
    pub idle_timeout: Duration,
    /// A responder's handshake (or session not yet confirmed by a data frame) is dropped
    /// after this long.
    pub handshake_timeout: Duration,
    /// First retransmission of an unanswered initiation; doubles each time. At least 1 ms
    /// (a zero would make every retransmission due at once, forever).
    pub retransmit: Duration,
    /// Initiations sent before a handshake fails ([`SecureError::Timeout`]).
    pub attempts: u32,
    /// IK initiations sent (of `attempts`) before the initiator falls back to XX, which
    /// tells a peer holding another key apart from a silent one.
    pub ik_attempts: u32,
    /// Seed of every random choice (ephemeral keys, indices): tests and simulations replay
    /// with one; `None` takes the operating system's randomness (what real peers must do:
    /// ephemeral keys from a known seed give no forward secrecy).
    pub seed: Option<[u8; 32]>,
}

impl Default for SecureConfig {
    fn default() -> Self {
        SecureConfig {
            max_sessions: 4096,
            max_handshakes: 1024,
            per_ip: RateConfig {
                per_second: 20.0,
                burst: 40.0,
                max_sources: 4096,
            },
            total_per_second: 1000.0,
            total_burst: 200.0,
            idle_timeout: Duration::from_secs(180),
            handshake_timeout: Duration::from_secs(10),
            retransmit: Duration::from_millis(300),
            attempts: 5,
            ik_attempts: 3,
            seed: None,
        }
    }
}

/// What a handshake produced, for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecureEvent {
    /// A handshake this side started is done: `addr` holds `peer`'s key.
    Connected {
        /// The peer's address.
        addr: SocketAddr,
        /// Its identity key.
        peer: PublicKey,
    },
    /// A handshake this side started failed.
    Failed {
        /// The peer's address.
        addr: SocketAddr,
        /// Why.
        error: SecureError,
    },
    /// A peer started a session with this side (informational).
    Accepted {
        /// The peer's address.
        addr: SocketAddr,
        /// Its identity key.
        peer: PublicKey,
    },
}

/// What [`SessionTable::handle`] made of a received message.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Not a frame: a plaintext message, to pass on as it is.
    Plaintext,
    /// A data frame, opened: its plaintext, from `peer`.
    Opened {
        /// The message it carried.
        plaintext: Vec<u8>,
        /// Who sealed it.
        peer: PublicKey,
    },
    /// A data frame opened where it lay ([`SessionTable::handle_in_place`]): its
    /// plaintext is the `len` bytes after the frame's head ([`SEALED_HEAD`]).
    OpenedInPlace {
        /// Bytes of the plaintext.
        len: usize,
        /// Who sealed it.
        peer: PublicKey,
    },
    /// A handshake frame, handled (answers in `poll_transmit`, outcomes in `poll_event`).
    Handshake,
    /// A frame dropped, and why (for counters and tests; never answered).
    Dropped(SecureError),
}

/// What [`SessionTable::connect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connect {
    /// A session exists: the peer's key.
    Established(PublicKey),
    /// A handshake is under way: wait for its [`SecureEvent`].
    Pending,
}

/// A handshake's role and its role's state.
enum Role {
    Initiator {
        expected: Option<PublicKey>,
        /// IK (else XX).
        ik: bool,
        /// The initiation, sent again on timeout.
        frame: Vec<u8>,
        attempts: u32,
        next_at: Instant,
        backoff: Duration,
    },
    /// An XX responder waiting for the finish.
    Responder {
        remote_index: u32,
        /// The response, sent again for a repeated initiation.
        response: Vec<u8>,
        init_digest: [u8; 32],
        /// The initiation's Noise message and the seed of this side's randomness: what
        /// builds the state again after a damaged finish (snow leaves a state that failed
        /// to read a message unusable).
        init_noise: Vec<u8>,
        seed: [u8; 32],
    },
}

/// Where an initiation is in its retransmissions.
struct Schedule {
    attempts: u32,
    next_at: Instant,
    backoff: Duration,
    started: Instant,
}

struct Handshake {
    state: Box<HandshakeState>,
    addr: SocketAddr,
    role: Role,
    started: Instant,
}

struct Entry {
    session: Arc<Session>,
    addr: SocketAddr,
    last_received: Instant,
    created: Instant,
    /// A data frame (or the XX finish) proved the peer holds the session; an IK responder's
    /// session is not confirmed until then (its initiation may be a replay).
    confirmed: bool,
    /// The response this side sent (IK responder): a repeat of the initiation gets it again.
    response: Option<(Vec<u8>, [u8; 32])>,
    /// The XX finish this side sent (initiator), sent again until the peer's first frame.
    finish: Option<Finish>,
}

/// An XX initiator's finish, until the peer's first frame shows it arrived: the timer sends
/// it again [`SecureConfig::attempts`] times, and after that it goes along with the
/// messages sealed to the peer ([`SessionTable::finish_along`]), so that a session whose
/// finishes were all lost is not a dead one while there is traffic.
struct Finish {
    frame: Vec<u8>,
    attempts: u32,
    /// When the timer sends it again; `None` once its tries are spent.
    next_at: Option<Instant>,
    backoff: Duration,
    /// When it was last sent (by the timer or along with a message).
    sent_at: Instant,
}

/// Every secure session and handshake of one endpoint (see the [module](self) docs).
///
/// Its maps are ordered ones: timers that fire together send their frames in one order
/// every run, so a seeded simulation replays exactly.
pub struct SessionTable {
    config: SecureConfig,
    static_secret: [u8; 32],
    public: PublicKey,
    entropy: Entropy,
    sessions: BTreeMap<u32, Entry>,
    /// The session to seal with, per address: the newest confirmed one.
    by_addr: BTreeMap<SocketAddr, u32>,
    handshakes: BTreeMap<u32, Handshake>,
    /// Initiations in progress, per address.
    connecting: BTreeMap<SocketAddr, u32>,
    /// Responder state by the digest of the initiation that made it (repeats answered again).
    by_init: BTreeMap<[u8; 32], u32>,
    /// Addresses whose last session ended after the peer was heard from in it, and when it
    /// was last heard from: what [`ended_with`](Self::ended_with) answers.
    ended: BTreeMap<SocketAddr, Instant>,
    per_ip: RateLimiter,
    total: RateLimiter,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<SecureEvent>,
    next_sweep: Option<Instant>,
}

impl std::fmt::Debug for SessionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTable")
            .field("sessions", &self.sessions.len())
            .field("handshakes", &self.handshakes.len())
            .finish_non_exhaustive()
    }
}

/// The one key every handshake counts against in the total bucket.
const ALL: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
/// How often idle sessions and stale handshakes are looked for.
const SWEEP: Duration = Duration::from_secs(1);

fn params(ik: bool) -> NoiseParams {
    let name = if ik { NOISE_IK } else { NOISE_XX };
    name.parse().expect("a valid Noise protocol name")
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// The indices of the entries of `map` that `pick` chooses, collected (so that the caller
/// may then remove them from the table that holds `map`).
fn keys_where<V>(map: &BTreeMap<u32, V>, pick: impl Fn(&V) -> bool) -> Vec<u32> {
    map.iter()
        .filter(|(_, v)| pick(v))
        .map(|(&i, _)| i)
        .collect()
}

impl SessionTable {
    /// A table for `identity`, with no session.
    pub fn new(identity: &Identity, mut config: SecureConfig) -> Self {
        config.retransmit = config.retransmit.max(Duration::from_millis(1));
        let entropy = match config.seed {
            Some(seed) => Entropy::Seeded { seed, counter: 0 },
            None => Entropy::System,
        };
        SessionTable {
            static_secret: identity.x25519_secret(),
            public: identity.public(),
            entropy,
            sessions: BTreeMap::new(),
            by_addr: BTreeMap::new(),
            handshakes: BTreeMap::new(),
            connecting: BTreeMap::new(),
            by_init: BTreeMap::new(),
            ended: BTreeMap::new(),
            per_ip: RateLimiter::new(config.per_ip),
            total: RateLimiter::new(RateConfig {
                per_second: config.total_per_second,
                burst: config.total_burst,
                max_sources: 2,
            }),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_sweep: None,
            config,
        }
    }

    /// This side's identity key.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The session to seal messages to `addr` with, if one is established.
    pub fn session_to(&self, addr: SocketAddr) -> Option<Arc<Session>> {
        let index = self.by_addr.get(&addr)?;
        self.sessions.get(index).map(|e| e.session.clone())
    }

    /// The identity key of the peer at `addr`, if a session with it is established.
    pub fn peer_key(&self, addr: SocketAddr) -> Option<PublicKey> {
        self.session_to(addr).map(|s| s.peer())
    }

    /// Sessions established now.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Handshakes in progress now.
    pub fn handshakes(&self) -> usize {
        self.handshakes.len()
    }

    /// Whether a handshake with `addr`, started by this side, is in progress.
    pub fn is_connecting(&self, addr: SocketAddr) -> bool {
        self.connecting.contains_key(&addr)
    }

    /// Starts a handshake with `addr` as initiator, unless a session or a handshake with it
    /// exists: IK if `expected` (the peer's key, from a listing) is known, XX otherwise. A
    /// session with another key than `expected` is refused ([`SecureError::WrongKey`]).
    pub fn connect(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        expected: Option<PublicKey>,
    ) -> Result<Connect, SecureError> {
        if let Some(peer) = self.peer_key(addr) {
            return match expected {
                Some(e) if e != peer => Err(SecureError::WrongKey {
                    expected: e,
                    got: peer,
                }),
                _ => Ok(Connect::Established(peer)),
            };
        }
        if self.connecting.contains_key(&addr) {
            return Ok(Connect::Pending);
        }
        let schedule = Schedule {
            attempts: 1,
            next_at: now + self.config.retransmit,
            backoff: self.config.retransmit,
            started: now,
        };
        self.initiate(addr, expected, expected.is_some(), schedule)?;
        Ok(Connect::Pending)
    }

    /// Sends an initiation to `addr` (IK toward `expected` if `ik`, XX otherwise) and
    /// records the handshake with `schedule`.
    fn initiate(
        &mut self,
        addr: SocketAddr,
        expected: Option<PublicKey>,
        ik: bool,
        schedule: Schedule,
    ) -> Result<(), SecureError> {
        let remote = match expected.filter(|_| ik) {
            Some(key) => Some(x25519_public(&key).ok_or(SecureError::InvalidKey)?),
            None => None,
        };
        let resolver = self.entropy.resolver();
        let builder = Builder::with_resolver(params(ik), resolver)
            .prologue(PROLOGUE)
            .and_then(|b| b.local_private_key(&self.static_secret));
        let builder = match (builder, remote.as_ref()) {
            (Ok(b), Some(r)) => b.remote_public_key(r),
            (b, None) => b,
            (Err(e), _) => Err(e),
        };
        let mut state = builder
            .and_then(|b| b.build_initiator())
            .map_err(|_| SecureError::Handshake("cannot start"))?;
        let index = self.free_index();
        let mut noise = [0u8; IK_INIT_NOISE];
        let (payload, want): (&[u8], usize) = if ik {
            (&self.public, IK_INIT_NOISE)
        } else {
            (&[0; XX_PADDING], XX_INIT_NOISE)
        };
        match state.write_message(payload, &mut noise) {
            Ok(n) if n == want => {}
            _ => return Err(SecureError::Handshake("cannot write the initiation")),
        }
        let frame = Frame::Init {
            ik,
            sender: index,
            noise: &noise[..want],
        }
        .encode();
        self.make_room_for_handshake();
        self.transmits.push_back((addr, frame.clone()));
        self.handshakes.insert(
            index,
            Handshake {
                state: Box::new(state),
                addr,
                role: Role::Initiator {
                    expected,
                    ik,
                    frame,
                    attempts: schedule.attempts,
                    next_at: schedule.next_at,
                    backoff: schedule.backoff,
                },
                started: schedule.started,
            },
        );
        self.connecting.insert(addr, index);
        Ok(())
    }

    /// Handles a message received from `from`: plaintext (not a frame) is left to the
    /// caller; a data frame is opened; a handshake frame is answered or completes a
    /// handshake. Never panics, whatever the bytes.
    pub fn handle(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Received {
        if !super::is_frame(bytes) {
            return Received::Plaintext;
        }
        let frame = match Frame::parse(bytes) {
            Ok(f) => f,
            Err(e) => return Received::Dropped(e),
        };
        let r = match frame {
            Frame::Sealed {
                receiver,
                nonce,
                ciphertext,
            } => {
                // A frame of no session here is dropped before it costs a copy.
                if let Err(e) = self.session_at(receiver, from) {
                    return Received::Dropped(e);
                }
                let mut plaintext = ciphertext.to_vec();
                return match self.open(now, from, receiver, nonce, &mut plaintext) {
                    Ok((len, peer)) => {
                        plaintext.truncate(len);
                        Received::Opened { plaintext, peer }
                    }
                    Err(e) => Received::Dropped(e),
                };
            }
            Frame::Init { ik, sender, noise } => self.on_init(now, from, ik, sender, noise, bytes),
            Frame::Response {
                sender,
                receiver,
                noise,
            } => self.on_response(now, from, sender, receiver, noise),
            Frame::Finish { receiver, noise } => self.on_finish(now, from, receiver, noise),
        };
        match r {
            Ok(()) => Received::Handshake,
            Err(e) => Received::Dropped(e),
        }
    }

    /// As [`handle`](Self::handle), for a message in a buffer the caller lends: a data
    /// frame is opened where it lies (no copy) and comes back as
    /// [`Received::OpenedInPlace`]; anything else as `handle` answers it (a frame dropped
    /// may leave `bytes` changed).
    pub fn handle_in_place(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &mut [u8],
    ) -> Received {
        let (receiver, nonce) = match Frame::parse(bytes) {
            Ok(Frame::Sealed {
                receiver, nonce, ..
            }) => (receiver, nonce),
            _ => return self.handle(now, from, bytes),
        };
        match self.open(now, from, receiver, nonce, &mut bytes[SEALED_HEAD..]) {
            Ok((len, peer)) => Received::OpenedInPlace { len, peer },
            Err(e) => Received::Dropped(e),
        }
    }

    /// Opens `ciphertext` in place: the plaintext's length (its bytes at the start of
    /// `ciphertext`) and who sealed it.
    fn open(
        &mut self,
        now: Instant,
        from: SocketAddr,
        receiver: u32,
        nonce: u64,
        ciphertext: &mut [u8],
    ) -> Result<(usize, PublicKey), SecureError> {
        let entry = self.session_at(receiver, from)?;
        let len = entry.session.open_in_place(nonce, ciphertext)?;
        entry.last_received = now;
        entry.finish = None;
        let peer = entry.session.peer();
        if !entry.confirmed {
            entry.confirmed = true;
            if let Some((_, d)) = entry.response.take() {
                self.by_init.remove(&d);
            }
            self.by_addr.insert(from, receiver);
        }
        Ok((len, peer))
    }

    /// The session `receiver` names, if `from` is its address.
    fn session_at(&mut self, receiver: u32, from: SocketAddr) -> Result<&mut Entry, SecureError> {
        match self.sessions.get_mut(&receiver) {
            None => Err(SecureError::UnknownSession),
            Some(entry) if entry.addr != from => Err(SecureError::WrongAddress),
            Some(entry) => Ok(entry),
        }
    }

    fn on_init(
        &mut self,
        now: Instant,
        from: SocketAddr,
        ik: bool,
        sender: u32,
        noise: &[u8],
        bytes: &[u8],
    ) -> Result<(), SecureError> {
        // A repeat of an initiation already answered: the same answer, no new work.
        let d = digest(bytes);
        if let Some(&index) = self.by_init.get(&d) {
            let again = match (self.handshakes.get(&index), self.sessions.get(&index)) {
                (Some(h), _) if h.addr == from => match &h.role {
                    Role::Responder { response, .. } => Some(response.clone()),
                    Role::Initiator { .. } => None,
                },
                (_, Some(e)) if e.addr == from => e.response.as_ref().map(|(r, _)| r.clone()),
                _ => None,
            };
            if let Some(response) = again {
                self.transmits.push_back((from, response));
                return Ok(());
            }
        }
        if !self.per_ip.allow(now, from.ip()) || !self.total.allow(now, ALL) {
            return Err(SecureError::RateLimited);
        }
        self.sweep(now);
        let seed = self
            .entropy
            .handshake_seed()
            .ok_or(SecureError::Handshake("no randomness"))?;
        let mut state = self.responder(ik, &seed)?;
        let mut payload = [0u8; 64];
        let n = state
            .read_message(noise, &mut payload)
            .map_err(|_| SecureError::Unauthentic)?;
        let index = self.free_index();
        if ik {
            // e, es, s, ss: the initiator's key is known now.
            let peer = self.check_peer_key(&state, &payload[..n])?;
            let response = self.write_response(&mut state, IK_RESPONSE_NOISE, index, sender)?;
            let cipher = SessionKeys::split(&mut state)?;
            self.transmits.push_back((from, response.clone()));
            let session = Session::new(cipher, peer, index, sender);
            self.insert_session(now, from, session, false, Some((response, d)));
            self.events
                .push_back(SecureEvent::Accepted { addr: from, peer });
        } else {
            if n != XX_PADDING || payload[..n].iter().any(|&b| b != 0) {
                return Err(SecureError::Malformed("XX padding"));
            }
            let response = self.write_response(&mut state, XX_RESPONSE_NOISE, index, sender)?;
            self.transmits.push_back((from, response.clone()));
            self.make_room_for_handshake();
            self.by_init.insert(d, index);
            self.handshakes.insert(
                index,
                Handshake {
                    state: Box::new(state),
                    addr: from,
                    role: Role::Responder {
                        remote_index: sender,
                        response,
                        init_digest: d,
                        init_noise: noise.to_vec(),
                        seed,
                    },
                    started: now,
                },
            );
        }
        Ok(())
    }

    fn on_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        sender: u32,
        receiver: u32,
        noise: &[u8],
    ) -> Result<(), SecureError> {
        if !self.is_handshake_with(receiver, from, true) {
            return Err(SecureError::UnknownSession);
        }
        let ik = matches!(
            &self.handshakes[&receiver].role,
            Role::Initiator { ik: true, .. }
        );
        let want = if ik {
            IK_RESPONSE_NOISE
        } else {
            XX_RESPONSE_NOISE
        };
        if noise.len() != want {
            return Err(SecureError::Malformed("wrong length for its handshake"));
        }
        // A failed read leaves snow's state unusable: a forged response would kill the
        // handshake, so it is read on a copy... which snow does not offer; instead the
        // initiation is restarted (see `restart_initiation`).
        let (payload, n) = self.read_handshake(receiver, noise, Self::restart_initiation)?;
        let h = self.handshakes.remove(&receiver).expect("checked above");
        self.connecting.remove(&from);
        let Role::Initiator { expected, .. } = h.role else {
            unreachable!("checked above")
        };
        let mut state = h.state;
        let peer = self
            .check_peer_key(&state, &payload[..n])
            .and_then(|peer| match expected {
                Some(e) if e != peer => Err(SecureError::WrongKey {
                    expected: e,
                    got: peer,
                }),
                _ => Ok(peer),
            });
        let peer = match peer {
            Ok(p) => p,
            Err(error) => {
                self.events.push_back(SecureEvent::Failed {
                    addr: from,
                    error: error.clone(),
                });
                return Err(error);
            }
        };
        let mut finish = None;
        if !ik {
            let mut out = [0u8; XX_FINISH_NOISE];
            match state.write_message(&self.public, &mut out) {
                Ok(n) if n == XX_FINISH_NOISE => {}
                _ => return Err(SecureError::Handshake("cannot write the finish")),
            }
            let frame = Frame::Finish {
                receiver: sender,
                noise: &out,
            }
            .encode();
            self.transmits.push_back((from, frame.clone()));
            finish = Some(Finish {
                frame,
                attempts: 1,
                next_at: Some(now + self.config.retransmit),
                backoff: self.config.retransmit,
                sent_at: now,
            });
        }
        let cipher = SessionKeys::split(&mut state)?;
        let session = Session::new(cipher, peer, receiver, sender);
        self.insert_session(now, from, session, true, None);
        if let Some(f) = finish {
            if let Some(e) = self.sessions.get_mut(&receiver) {
                e.finish = Some(f);
            }
        }
        self.events
            .push_back(SecureEvent::Connected { addr: from, peer });
        Ok(())
    }

    fn on_finish(
        &mut self,
        now: Instant,
        from: SocketAddr,
        receiver: u32,
        noise: &[u8],
    ) -> Result<(), SecureError> {
        if !self.is_handshake_with(receiver, from, false) {
            // A repeated finish of a session already made, or a stranger's.
            return Err(SecureError::UnknownSession);
        }
        // A damaged or forged finish: the genuine one (sent again by the initiator until
        // this side's first frame) must still complete the handshake, but snow does not undo
        // what a failed read did to its state. Build it again.
        let (payload, n) = self.read_handshake(receiver, noise, Self::rebuild_responder)?;
        let h = self.handshakes.remove(&receiver).expect("checked above");
        let Role::Responder {
            remote_index,
            init_digest,
            ..
        } = h.role
        else {
            unreachable!("checked above")
        };
        self.by_init.remove(&init_digest);
        let peer = self.check_peer_key(&h.state, &payload[..n])?;
        let mut state = h.state;
        let cipher = SessionKeys::split(&mut state)?;
        let session = Session::new(cipher, peer, receiver, remote_index);
        self.insert_session(now, from, session, true, None);
        self.events
            .push_back(SecureEvent::Accepted { addr: from, peer });
        Ok(())
    }

    /// Whether `index` is a handshake in progress with `from` in which this side is the
    /// initiator (`initiator`) or the responder: what a response, or a finish, must name
    /// as its receiver (anything else is a stranger's, or late).
    fn is_handshake_with(&self, index: u32, from: SocketAddr, initiator: bool) -> bool {
        self.handshakes.get(&index).is_some_and(|h| {
            h.addr == from && matches!(h.role, Role::Initiator { .. }) == initiator
        })
    }

    /// Reads `noise` into handshake `index`'s state (which must exist): the payload and its
    /// length. A failed read leaves the state unusable, so `repair` puts the handshake right
    /// (or drops it) before the read's [`SecureError::Unauthentic`] goes back.
    fn read_handshake(
        &mut self,
        index: u32,
        noise: &[u8],
        repair: fn(&mut Self, u32),
    ) -> Result<([u8; 64], usize), SecureError> {
        let h = self.handshakes.get_mut(&index).expect("checked above");
        let mut payload = [0u8; 64];
        match h.state.read_message(noise, &mut payload) {
            Ok(n) => Ok((payload, n)),
            Err(_) => {
                repair(self, index);
                Err(SecureError::Unauthentic)
            }
        }
    }

    /// A responder's handshake state for pattern IK (`ik`) or XX, its randomness from `seed`.
    fn responder(&self, ik: bool, seed: &[u8; 32]) -> Result<HandshakeState, SecureError> {
        Builder::with_resolver(params(ik), seeded_resolver(seed))
            .prologue(PROLOGUE)
            .and_then(|b| b.local_private_key(&self.static_secret))
            .and_then(|b| b.build_responder())
            .map_err(|_| SecureError::Handshake("cannot start"))
    }

    /// Writes a responder's Noise message (this side's key as payload) with `state`, which
    /// must come to exactly `want` bytes (the size its pattern fixes: a frame of any other
    /// size would be refused by the initiator's parser), and frames it as the response
    /// from `index` to the initiator's `sender`.
    fn write_response(
        &self,
        state: &mut HandshakeState,
        want: usize,
        index: u32,
        sender: u32,
    ) -> Result<Vec<u8>, SecureError> {
        let mut out = [0u8; XX_RESPONSE_NOISE];
        let wrote = state
            .write_message(&self.public, &mut out)
            .map_err(|_| SecureError::Handshake("cannot write the response"))?;
        if wrote != want {
            return Err(SecureError::Handshake("cannot write the response"));
        }
        Ok(Frame::Response {
            sender: index,
            receiver: sender,
            noise: &out[..wrote],
        }
        .encode())
    }

    /// Builds XX responder `index`'s state again, as it was once its response was written
    /// (same initiation, same randomness, so the same response); drops the handshake if
    /// that fails.
    fn rebuild_responder(&mut self, index: u32) {
        let Some(Handshake {
            role:
                Role::Responder {
                    response,
                    init_noise,
                    seed,
                    ..
                },
            ..
        }) = self.handshakes.get(&index)
        else {
            return;
        };
        let rebuilt = self.responder(false, seed).ok().and_then(|mut state| {
            let mut payload = [0u8; 64];
            state.read_message(init_noise, &mut payload).ok()?;
            let mut out = [0u8; XX_RESPONSE_NOISE];
            let n = state.write_message(&self.public, &mut out).ok()?;
            // The response holds this noise message at its end.
            response.ends_with(&out[..n]).then_some(state)
        });
        match rebuilt {
            Some(state) => {
                if let Some(h) = self.handshakes.get_mut(&index) {
                    *h.state = state;
                }
            }
            None => self.drop_handshake(index, None),
        }
    }

    /// The Ed25519 key in a handshake payload, checked against the X25519 static key the
    /// handshake proved.
    fn check_peer_key(
        &self,
        state: &HandshakeState,
        payload: &[u8],
    ) -> Result<PublicKey, SecureError> {
        let key: PublicKey = payload
            .try_into()
            .map_err(|_| SecureError::Malformed("identity payload"))?;
        let x = x25519_public(&key).ok_or(SecureError::InvalidKey)?;
        match state.get_remote_static() {
            Some(s) if s == x => Ok(key),
            _ => Err(SecureError::Handshake("identity key does not match")),
        }
    }

    /// A forged or damaged response broke initiation `index`'s state: start it over with a
    /// new one (fresh ephemeral key), sent now, on the same schedule. The restart is no try
    /// of its own (damaged responses must not use up the tries that silence would) and does
    /// not move the schedule (forged ones must not hold the handshake off its timeout).
    fn restart_initiation(&mut self, index: u32) {
        self.reinitiate(index, |ik, schedule| (ik, schedule));
    }

    /// Replaces initiation `index` with a new one to the same address, toward the same
    /// expected key: `next` gives the new one's pattern (IK if true) and schedule from the
    /// old one's. A new one that cannot start fails the handshake ([`SecureEvent::Failed`]).
    fn reinitiate(&mut self, index: u32, next: impl FnOnce(bool, Schedule) -> (bool, Schedule)) {
        let Some(h) = self.handshakes.remove(&index) else {
            return;
        };
        self.connecting.remove(&h.addr);
        let Role::Initiator {
            expected,
            ik,
            attempts,
            next_at,
            backoff,
            ..
        } = h.role
        else {
            return;
        };
        let (ik, schedule) = next(
            ik,
            Schedule {
                attempts,
                next_at,
                backoff,
                started: h.started,
            },
        );
        if let Err(error) = self.initiate(h.addr, expected, ik, schedule) {
            self.events.push_back(SecureEvent::Failed {
                addr: h.addr,
                error,
            });
        }
    }

    fn insert_session(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        session: Session,
        confirmed: bool,
        response: Option<(Vec<u8>, [u8; 32])>,
    ) {
        let index = session.local_index();
        // At most SESSIONS_PER_ADDR with one address: its oldest goes.
        let mut same: Vec<(Instant, u32)> = self
            .sessions
            .iter()
            .filter(|(_, e)| e.addr == addr)
            .map(|(&i, e)| (e.created, i))
            .collect();
        if same.len() >= SESSIONS_PER_ADDR {
            same.sort();
            self.remove_session(same[0].1);
        }
        if self.sessions.len() >= self.config.max_sessions {
            let idlest = self
                .sessions
                .iter()
                .min_by_key(|(_, e)| (e.confirmed, e.last_received))
                .map(|(&i, _)| i);
            if let Some(i) = idlest {
                self.remove_session(i);
            }
        }
        if let Some((_, d)) = &response {
            self.by_init.insert(*d, index);
        }
        if confirmed || !self.by_addr.contains_key(&addr) {
            self.by_addr.insert(addr, index);
        }
        self.sessions.insert(
            index,
            Entry {
                session: Arc::new(session),
                addr,
                last_received: now,
                created: now,
                confirmed,
                response,
                finish: None,
            },
        );
        self.next_sweep.get_or_insert(now + SWEEP);
    }

    fn remove_session(&mut self, index: u32) {
        let Some(e) = self.sessions.remove(&index) else {
            return;
        };
        if let Some((_, d)) = e.response {
            self.by_init.remove(&d);
        }
        let heard = e.confirmed && e.finish.is_none();
        if heard && !self.sessions.values().any(|o| o.addr == e.addr) {
            if self.ended.len() >= self.config.max_sessions && !self.ended.contains_key(&e.addr) {
                let oldest = self.ended.iter().min_by_key(|(_, &t)| t).map(|(&a, _)| a);
                if let Some(a) = oldest {
                    self.ended.remove(&a);
                }
            }
            self.ended.insert(e.addr, e.last_received);
        }
        if self.by_addr.get(&e.addr) == Some(&index) {
            self.by_addr.remove(&e.addr);
            // Another session with the address, if any, takes over (the newest confirmed).
            let next = self
                .sessions
                .iter()
                .filter(|(_, o)| o.addr == e.addr)
                .max_by_key(|(_, o)| (o.confirmed, o.created))
                .map(|(&i, _)| i);
            if let Some(i) = next {
                self.by_addr.insert(e.addr, i);
            }
        }
    }

    fn make_room_for_handshake(&mut self) {
        if self.handshakes.len() < self.config.max_handshakes {
            return;
        }
        let oldest = self
            .handshakes
            .iter()
            .min_by_key(|(_, h)| h.started)
            .map(|(&i, _)| i);
        if let Some(i) = oldest {
            self.drop_handshake(i, None);
        }
    }

    fn drop_handshake(&mut self, index: u32, error: Option<SecureError>) {
        let Some(h) = self.handshakes.remove(&index) else {
            return;
        };
        match h.role {
            Role::Initiator { .. } => {
                self.connecting.remove(&h.addr);
                self.events.push_back(SecureEvent::Failed {
                    addr: h.addr,
                    error: error.unwrap_or(SecureError::Busy),
                });
            }
            Role::Responder { init_digest, .. } => {
                self.by_init.remove(&init_digest);
            }
        }
    }

    /// An index used by no session or handshake of this table.
    fn free_index(&mut self) -> u32 {
        loop {
            let i = self.entropy.u32();
            if !self.sessions.contains_key(&i) && !self.handshakes.contains_key(&i) {
                return i;
            }
        }
    }

    /// Whether `addr` had a session in which the peer was heard from, now ended (idle,
    /// dropped for room), within the last two [`SecureConfig::idle_timeout`]s since it was
    /// last heard from: a driver must not fall back to plaintext toward it (an attacker who
    /// floods the table to evict a session must not get the rest of a transfer in the clear).
    /// [`forget`](Self::forget) clears it.
    pub fn ended_with(&self, addr: SocketAddr) -> bool {
        self.ended.contains_key(&addr)
    }

    /// Forgets every session and handshake with `addr` (the peer is gone, or the caller
    /// wants a new handshake).
    pub fn forget(&mut self, addr: SocketAddr) {
        let gone = keys_where(&self.sessions, |e| e.addr == addr);
        for i in gone {
            self.remove_session(i);
        }
        let gone = keys_where(&self.handshakes, |h| h.addr == addr);
        for i in gone {
            self.drop_handshake(i, Some(SecureError::Forgotten));
        }
        self.ended.remove(&addr);
    }

    /// Retransmits unanswered initiations (and XX finishes), fails handshakes out of tries,
    /// drops idle sessions and stale responder state.
    pub fn handle_timeout(&mut self, now: Instant) {
        let cfg = self.config.clone();
        let mut failed = Vec::new();
        let mut fallback = Vec::new();
        for (&i, h) in self.handshakes.iter_mut() {
            if let Role::Initiator {
                frame,
                ik,
                attempts,
                next_at,
                backoff,
                ..
            } = &mut h.role
            {
                if *next_at > now {
                    continue;
                }
                if *attempts >= cfg.attempts {
                    failed.push(i);
                    continue;
                }
                if *ik && *attempts >= cfg.ik_attempts {
                    fallback.push(i);
                    continue;
                }
                *attempts += 1;
                *backoff *= 2;
                *next_at = now + *backoff;
                self.transmits.push_back((h.addr, frame.clone()));
            }
        }
        for i in failed {
            let attempts = self.config.attempts;
            self.drop_handshake(i, Some(SecureError::Timeout { attempts }));
        }
        for i in fallback {
            self.fall_back_to_xx(now, i);
        }
        for e in self.sessions.values_mut() {
            let Some(f) = &mut e.finish else { continue };
            if f.next_at.is_none_or(|at| at > now) {
                continue;
            }
            if f.attempts >= cfg.attempts {
                f.next_at = None;
                continue;
            }
            f.attempts += 1;
            f.backoff *= 2;
            f.next_at = Some(now + f.backoff);
            f.sent_at = now;
            self.transmits.push_back((e.addr, f.frame.clone()));
        }
        if self.next_sweep.is_some_and(|t| t <= now) {
            self.sweep(now);
        }
    }

    /// IK initiation `index` went unanswered [`SecureConfig::ik_attempts`] times: the peer
    /// may hold another key than the one expected (it cannot read an IK initiation then, and
    /// must not answer what it cannot read). Go on with XX, which names the key it holds:
    /// the handshake then ends in [`SecureError::WrongKey`] rather than a timeout.
    fn fall_back_to_xx(&mut self, now: Instant, index: u32) {
        self.reinitiate(index, |_, old| {
            let schedule = Schedule {
                attempts: old.attempts + 1,
                next_at: now + old.backoff * 2,
                backoff: old.backoff * 2,
                started: old.started,
            };
            (false, schedule)
        });
    }

    /// Drops idle sessions and stale responder state (at most once a [`SWEEP`]).
    fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|t| t > now) {
            return;
        }
        let cfg = self.config.clone();
        let stale = keys_where(&self.sessions, |e| {
            let idle = now.saturating_duration_since(e.last_received);
            // Unconfirmed (an IK responder's), or never heard from (an XX initiator's, whose
            // finish the peer dropped with its handshake by now): dead.
            let unheard = !e.confirmed || e.finish.is_some();
            idle >= cfg.idle_timeout || (unheard && idle >= cfg.handshake_timeout)
        });
        for i in stale {
            self.remove_session(i);
        }
        let stale = keys_where(&self.handshakes, |h| {
            matches!(h.role, Role::Responder { .. })
                && now.saturating_duration_since(h.started) >= cfg.handshake_timeout
        });
        for i in stale {
            self.drop_handshake(i, None);
        }
        let keep = cfg.idle_timeout * 2;
        self.ended
            .retain(|_, heard| now.saturating_duration_since(*heard) < keep);
        self.next_sweep =
            (!self.sessions.is_empty() || !self.handshakes.is_empty() || !self.ended.is_empty())
                .then_some(now + SWEEP);
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retransmits = self.handshakes.values().filter_map(|h| match &h.role {
            Role::Initiator { next_at, .. } => Some(*next_at),
            Role::Responder { .. } => None,
        });
        let finishes = self
            .sessions
            .values()
            .filter_map(|e| e.finish.as_ref().and_then(|f| f.next_at));
        retransmits.chain(finishes).chain(self.next_sweep).min()
    }

    /// The XX finish to send to `addr` just before a message sealed to it, if the session
    /// with it has not heard from the peer yet (so the finish may have been lost every time)
    /// and the finish did not go out in the last [`SecureConfig::retransmit`]; `None`
    /// otherwise (almost always).
    pub fn finish_along(&mut self, now: Instant, addr: SocketAddr) -> Option<Vec<u8>> {
        let index = self.by_addr.get(&addr)?;
        let f = self.sessions.get_mut(index)?.finish.as_mut()?;
        if now < f.sent_at + self.config.retransmit {
            return None;
        }
        f.sent_at = now;
        Some(f.frame.clone())
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) has a frame to give.
    pub fn has_transmit(&self) -> bool {
        !self.transmits.is_empty()
    }

    /// The next handshake frame to send: (to, bytes).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The next handshake outcome.
    pub fn poll_event(&mut self) -> Option<SecureEvent> {
        self.events.pop_front()
    }
}
