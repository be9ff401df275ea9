//! End-to-end encrypted, authenticated traffic between peers: a [`Transport`] wrapper that
//! seals every message to a peer it has a secure session with, and opens what such peers
//! send, so the whole protocol above runs unchanged.
//!
//! The sessions, handshakes and frames are `p2p_proto::secure`'s ([`SessionTable`]); this
//! wrapper only moves their bytes. It sits above the relay wrapper, so a relayed peer's
//! traffic is sealed end to end and the relay forwards ciphertext.
//!
//! - [`SecureTransport::connect`] makes (or finds) a session with an address and returns the
//!   peer's identity key; with an expected key (a listing's), another key is refused with
//!   [`SecureError::WrongKey`]. It waits for the handshake's answer, which the task that
//!   receives (`recv_from`) hands in.
//! - A task of the wrapper's own, spawned where it is made, starts the handshakes `connect`
//!   asks for, sends every handshake frame (each on a task of its own, so that one peer's full
//!   queue holds up no other) and runs the table's timers (retransmissions, expiry): frames
//!   leave from, and time is read on, the runtime the transport belongs to (a simulated
//!   host's, in turmoil, whatever task calls `connect`). It sleeps until the next deadline or
//!   a wake-up, and ends once the transport is dropped.
//! - An XX initiator's session that has not heard from the peer yet sends its finish again
//!   just before a message sealed to the peer (at most once a retransmission interval), so
//!   that finishes all lost on the way leave no dead session while there is traffic.
//! - Sends to an address with a session are sealed; sends to one without go as they are
//!   (trackers, hole-punching probes, peers without encryption), except peer-to-peer
//!   messages to an address whose session ended after the peer was heard from in it
//!   ([`SessionTable::ended_with`]): those are withheld, never sent in plaintext (a session
//!   evicted by a flood of handshakes must not let the rest of a transfer go in the clear).
//! - Received frames are opened and handed up as coming from their address; handshake
//!   initiations are answered here. Plaintext passes through, but with
//!   [`SecureSettings::require_sealed`] a peer-to-peer message
//!   ([`p2p_proto::secure::is_peer_message`]) that arrives in plaintext is dropped:
//!   then every listing, entry, piece table and transfer message handed up came sealed
//!   from the key [`SecureTransport::peer_key`] names for its address. A plaintext request
//!   dropped so is answered, in plaintext, with a refusal saying
//!   [`SEALED_ONLY`](p2p_proto::secure::SEALED_ONLY) (rate-limited per source IP, and no
//!   larger than three times the request), so that a client without encryption reads why
//!   rather than silence.
//! - A *pinned* address ([`SecureSettings::pinned`]: a tracker run with `--secure`, whose
//!   key the user gave) talks sealed only, under its key: what is sent there before a
//!   session exists is held (a few messages) while the handshake the first send starts runs,
//!   then sealed and sent (dropped if the handshake fails); plaintext from there, and sealed
//!   frames of a session with another key, are dropped. So every answer handed up as the
//!   tracker's came from the holder of its key.
//! - Each sealed message is 32 bytes longer ([`SEAL_OVERHEAD`]): the largest message the
//!   wrapper takes is that much smaller than its inner transport's, and at most
//!   [`MAX_SEALED_PLAINTEXT`]. Chunks sent from a file are read into their frame and sealed
//!   in place (no `sendfile`); received frames are opened in one copy.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant as StdInstant;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use p2p_proto::identity::{Identity, PublicKey};
use p2p_proto::limits::{RateConfig, RateLimiter};
use p2p_proto::secure::{
    is_frame, is_peer_message, sealed_only_refusal, Connect, Received, SecureEvent, SessionTable,
    SEALED_HEAD,
};
pub use p2p_proto::secure::{SecureConfig, SecureError, MAX_SEALED_PLAINTEXT, SEAL_OVERHEAD};

use crate::transport::{FileRange, SharedTransport, Transport};
use crate::wire::decode_bytes;

/// How an endpoint runs its secure channel ([`crate::service::EndpointConfig::secure`]).
#[derive(Clone, Debug)]
pub struct SecureSettings {
    /// The identity the channel proves (the same key that signs name requests).
    pub identity: Identity,
    /// Drop peer-to-peer messages that arrive in plaintext (see the [module](self) docs).
    /// Off, a peer without encryption is still served, in plaintext.
    pub require_sealed: bool,
    /// This side's own peer-to-peer requests make a secure session with the peer first (a
    /// handshake if there is none) and fail without one. Off, they go in plaintext to a peer
    /// with no session (a peer that accepts sealed sessions, but asks for none itself).
    pub seal_requests: bool,
    /// Limits, timers and (for simulations) the seed of the handshakes' randomness.
    pub config: SecureConfig,
    /// Addresses that talk sealed only, each under its key (a tracker run with `--secure`):
    /// see the [module](self) docs.
    pub pinned: Vec<(SocketAddr, PublicKey)>,
}

impl SecureSettings {
    /// Settings for `identity`: plaintext peers still served, own requests sealed, default
    /// limits, the system's randomness.
    pub fn new(identity: Identity) -> Self {
        SecureSettings {
            identity,
            require_sealed: false,
            seal_requests: true,
            config: SecureConfig::default(),
            pinned: Vec::new(),
        }
    }
}

/// Counters of what the wrapper dropped, for tests and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecureStats {
    /// Frames dropped (forged, damaged, replayed, unknown session, rate-limited).
    pub dropped_frames: u64,
    /// Peer-to-peer messages dropped for arriving in plaintext.
    pub dropped_plaintext: u64,
    /// Refusals ([`SEALED_ONLY`](p2p_proto::secure::SEALED_ONLY)) sent for them.
    pub refusals: u64,
    /// Peer-to-peer messages not sent, to a peer whose sealed session ended, rather than
    /// sent in plaintext.
    pub withheld: u64,
    /// Messages to a pinned address dropped unsent: held while its handshake failed, or
    /// pushed out of its full hold.
    pub held_dropped: u64,
}

/// Messages held for one pinned address while its handshake runs; a newer one pushes the
/// oldest out (the protocol above retransmits what matters).
pub const HELD_PER_ADDR: usize = 16;

/// A pinned address silent this long in its session (a tracker restarted, which forgot the
/// session and drops its frames unanswered) gets a new handshake at the next send: twice a
/// tracker's default heartbeat period, so a live one is never taken for dead.
pub const PINNED_SILENCE: std::time::Duration = std::time::Duration::from_secs(20);

type Reply = oneshot::Sender<Result<PublicKey, SecureError>>;

struct State {
    table: SessionTable,
    /// Calls of `connect` for the handshake task to start (on its clock: a caller may run
    /// on another, a simulated client's).
    connects: Vec<(SocketAddr, Option<PublicKey>, Reply)>,
    /// Callers of `connect` waiting for a handshake with an address.
    waiters: Vec<(SocketAddr, Reply)>,
    /// Refusals of plaintext requests, per source IP.
    refusals: RateLimiter,
    stats: SecureStats,
    /// Messages for pinned addresses waiting for their handshake.
    held: BTreeMap<SocketAddr, VecDeque<Vec<u8>>>,
    /// Held messages whose session is there now, to seal and send.
    ready: Vec<(SocketAddr, VecDeque<Vec<u8>>)>,
    /// When each pinned address last sent a sealed message, or its session was made (on
    /// tokio's clock); every pinned address has an entry, `None` until then.
    heard: BTreeMap<SocketAddr, Option<Instant>>,
}

/// Refusals of plaintext requests a source IP gets: a few a second (a client retries a
/// request a handful of times; one refusal is enough for it).
const REFUSALS: RateConfig = RateConfig {
    per_second: 2.0,
    burst: 4.0,
    max_sources: 1024,
};

/// A transport whose traffic with peers it has sessions with is sealed (see the
/// [module](self) docs).
pub struct SecureTransport {
    inner: SharedTransport,
    state: Mutex<State>,
    require_sealed: bool,
    /// Addresses that talk sealed only, and their keys ([`SecureSettings::pinned`]).
    pinned: BTreeMap<SocketAddr, PublicKey>,
    /// The clock's origin for the sans-IO table (tokio's clock, turmoil's in simulations).
    epoch: (Instant, StdInstant),
    /// Wakes the task that sends handshake frames and runs the table's timers.
    wake: Arc<Notify>,
    /// Buffers large frames are opened in.
    buffers: FramePool,
}

impl Drop for SecureTransport {
    fn drop(&mut self) {
        // The timer task holds a weak reference only: let it see that it is gone.
        self.wake.notify_one();
    }
}

impl std::fmt::Debug for SecureTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureTransport")
            .field("table", &self.lock().table)
            .finish_non_exhaustive()
    }
}

impl SecureTransport {
    /// Wraps `inner` with `settings`, and starts the task that sends handshake frames and
    /// runs the handshakes' timers (on the current tokio runtime, so that every frame leaves
    /// from the task context the transport was made in: a simulated host's, in turmoil).
    pub fn new(inner: SharedTransport, settings: &SecureSettings) -> Arc<Self> {
        let wake = Arc::new(Notify::new());
        let t = Arc::new(SecureTransport {
            inner,
            state: Mutex::new(State {
                table: SessionTable::new(&settings.identity, settings.config.clone()),
                connects: Vec::new(),
                waiters: Vec::new(),
                refusals: RateLimiter::new(REFUSALS),
                stats: SecureStats::default(),
                held: BTreeMap::new(),
                ready: Vec::new(),
                heard: settings.pinned.iter().map(|&(a, _)| (a, None)).collect(),
            }),
            require_sealed: settings.require_sealed,
            pinned: settings.pinned.iter().copied().collect(),
            epoch: (Instant::now(), StdInstant::now()),
            wake: wake.clone(),
            buffers: FramePool::default(),
        });
        tokio::spawn(run_handshakes(Arc::downgrade(&t), wake));
        t
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Now, on tokio's clock, as the `std` instant the sans-IO table takes. Only the tasks
    /// of the runtime the transport was made on call it (its driver, the handshake task): in
    /// a simulation each host has a clock of its own.
    fn now(&self) -> StdInstant {
        self.epoch.1 + Instant::now().saturating_duration_since(self.epoch.0)
    }

    /// A deadline of the table, on tokio's clock.
    fn deadline(&self, at: StdInstant) -> Instant {
        self.epoch.0 + at.saturating_duration_since(self.epoch.1)
    }

    /// This side's identity key.
    pub fn public(&self) -> PublicKey {
        self.lock().table.public()
    }

    /// The identity key of the peer at `addr`, if a session with it is established: what
    /// proves who sent a sealed message from `addr`.
    pub fn peer_key(&self, addr: SocketAddr) -> Option<PublicKey> {
        self.lock().table.peer_key(addr)
    }

    /// What was dropped so far.
    pub fn stats(&self) -> SecureStats {
        self.lock().stats
    }

    /// Makes sure a secure session with `addr` exists and returns the peer's identity key:
    /// an existing session is reused; otherwise a handshake runs (IK with `expected`, XX
    /// without), retransmitted on silence, and this waits for its end. A peer whose key is
    /// not `expected` is refused ([`SecureError::WrongKey`]). The answer arrives through
    /// [`recv_from`](Transport::recv_from): some task must be receiving (the endpoint's
    /// driver is).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected: Option<PublicKey>,
    ) -> Result<PublicKey, SecureError> {
        let rx = {
            let mut s = self.lock();
            if let Some(got) = s.table.peer_key(addr) {
                return match expected {
                    Some(e) if e != got => Err(SecureError::WrongKey { expected: e, got }),
                    _ => Ok(got),
                };
            }
            // The handshake task starts it, on the transport's own clock.
            let (tx, rx) = oneshot::channel();
            s.connects.push((addr, expected, tx));
            rx
        };
        self.wake.notify_one();
        let got = rx.await.unwrap_or(Err(SecureError::Forgotten))?;
        match expected {
            Some(e) if e != got => Err(SecureError::WrongKey { expected: e, got }),
            _ => Ok(got),
        }
    }

    /// Starts the handshakes `connect` asked for, runs the table's timers if due, and hands
    /// out its events.
    fn drive(&self, now: StdInstant) {
        let mut s = self.lock();
        for (addr, expected, reply) in std::mem::take(&mut s.connects) {
            match s.table.connect(now, addr, expected) {
                Ok(Connect::Established(key)) => {
                    // Messages held for a pinned address go now (no `Connected` will come).
                    if let Some(held) = s.held.remove(&addr) {
                        s.ready.push((addr, held));
                    }
                    let _ = reply.send(Ok(key));
                }
                Ok(Connect::Pending) => s.waiters.push((addr, reply)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if s.table.poll_timeout().is_some_and(|t| t <= now) {
            s.table.handle_timeout(now);
        }
        Self::dispatch(&mut s);
    }

    /// Hands the table's events to the `connect` callers waiting for them.
    fn dispatch(s: &mut State) {
        while let Some(ev) = s.table.poll_event() {
            let (addr, result) = match ev {
                SecureEvent::Connected { addr, peer } => {
                    if let Some(held) = s.held.remove(&addr) {
                        s.ready.push((addr, held));
                    }
                    if let Some(heard) = s.heard.get_mut(&addr) {
                        *heard = Some(Instant::now());
                    }
                    (addr, Ok(peer))
                }
                SecureEvent::Failed { addr, error } => {
                    if let Some(held) = s.held.remove(&addr) {
                        tracing::warn!(%addr, %error, dropped = held.len(), "no sealed session with a pinned address");
                        s.stats.held_dropped += held.len() as u64;
                    }
                    (addr, Err(error))
                }
                SecureEvent::Accepted { addr, peer } => {
                    tracing::debug!(%addr, peer = %p2p_proto::identity::fingerprint(&peer), "secure session accepted");
                    continue;
                }
            };
            let mut i = 0;
            while i < s.waiters.len() {
                if s.waiters[i].0 == addr {
                    let (_, tx) = s.waiters.swap_remove(i);
                    let _ = tx.send(result.clone());
                } else {
                    i += 1;
                }
            }
        }
        s.waiters.retain(|(_, tx)| !tx.is_closed());
    }

    /// Holds `msg` for pinned address `to`, which has no session (as its caller found),
    /// and has the handshake task start one toward its key unless one is on its way;
    /// `false` (nothing held) when `to` is not pinned.
    fn hold(&self, to: SocketAddr, msg: Vec<u8>) -> bool {
        let Some(&key) = self.pinned.get(&to) else {
            return false;
        };
        {
            let mut s = self.lock();
            let s = &mut *s;
            let held = s.held.entry(to).or_default();
            if held.len() >= HELD_PER_ADDR {
                held.pop_front();
                s.stats.held_dropped += 1;
            }
            held.push_back(msg);
            if s.table.session_to(to).is_some() {
                // Made since the caller looked: send at once.
                let held = s.held.remove(&to).unwrap_or_default();
                s.ready.push((to, held));
            } else if !s.table.is_connecting(to) && !s.connects.iter().any(|c| c.0 == to) {
                // Nobody waits on this handshake's answer but the held messages.
                let (tx, _) = oneshot::channel();
                s.connects.push((to, Some(key), tx));
            }
        }
        self.flush_ready();
        self.wake.notify_one();
        true
    }

    /// Seals and sends the held messages whose session is there (each address's on a task
    /// of its own: the caller never waits on one peer's queue).
    fn flush_ready(&self) {
        let ready = std::mem::take(&mut self.lock().ready);
        for (to, held) in ready {
            let Some(session) = self.lock().table.session_to(to) else {
                continue;
            };
            let inner = self.inner.clone();
            tokio::spawn(async move {
                for msg in held {
                    if let Ok(frame) = session.seal(&msg) {
                        let _ = inner.send_owned(to, frame).await;
                    }
                }
            });
        }
    }

    /// The handshake frames the table has to send.
    fn transmits(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut s = self.lock();
        std::iter::from_fn(|| s.table.poll_transmit()).collect()
    }

    /// The session to seal messages to `to` with, after sending the XX finish first if the
    /// peer has not been heard from (see [`SessionTable::finish_along`]). A pinned address
    /// silent for [`PINNED_SILENCE`] has none: its session is dropped, for a new handshake.
    async fn session_to(&self, to: SocketAddr) -> Option<Arc<p2p_proto::secure::Session>> {
        let now = self.now();
        let (session, finish) = {
            let mut s = self.lock();
            let heard = s.heard.get_mut(&to);
            if let Some(heard) =
                heard.filter(|at| at.is_some_and(|at| at.elapsed() >= PINNED_SILENCE))
            {
                tracing::debug!(%to, "pinned address silent in its session: a new handshake");
                *heard = None;
                s.table.forget(to);
                Self::dispatch(&mut s);
            }
            let session = s.table.session_to(to)?;
            (session, s.table.finish_along(now, to))
        };
        if let Some(frame) = finish {
            // A lost finish is repaired by the next one.
            let _ = self.inner.send_owned(to, frame).await;
        }
        Some(session)
    }

    /// Whether what goes to `to` now is sealed, or must be: a session with it, a pinned
    /// address, one whose session ended (its messages are withheld rather than sent in
    /// plaintext), or every peer when plaintext is refused. What a transfer's chunk size is
    /// chosen by when it starts (a session made with its receiver later, which a client of
    /// this build never does, would find its chunks too large to seal, and the transfer
    /// would fail).
    fn sealed_to(&self, to: SocketAddr) -> bool {
        if self.require_sealed || self.pinned.contains_key(&to) {
            return true;
        }
        let s = self.lock();
        s.table.session_to(to).is_some() || s.table.ended_with(to)
    }

    /// A received message: handed up (opened, or plaintext let through), or `None` (a
    /// handshake frame handled, or a message dropped).
    fn receive(&self, from: SocketAddr, bytes: Bytes) -> Option<(SocketAddr, Bytes)> {
        if !is_frame(&bytes) {
            if self.pinned.contains_key(&from) {
                tracing::trace!(%from, "plaintext from a pinned address dropped");
                self.lock().stats.dropped_plaintext += 1;
                return None;
            }
            if !self.require_sealed {
                return Some((from, bytes));
            }
            return match decode_bytes(&bytes) {
                Ok(m) if is_peer_message(&m) => {
                    self.refuse(from, &m, bytes.len());
                    None
                }
                _ => Some((from, bytes)),
            };
        }
        let now = self.now();
        // A large frame is opened in place in a pooled buffer, a small one in a copy.
        let mut pooled = (bytes.len() >= POOLED_FRAME).then(|| self.buffers.filled(&bytes));
        let mut s = self.lock();
        let r = match pooled.as_mut() {
            Some(buf) => s.table.handle_in_place(now, from, buf.as_mut()),
            None => s.table.handle(now, from, &bytes),
        };
        Self::dispatch(&mut s);
        let flush = !s.ready.is_empty();
        drop(s);
        if flush {
            self.flush_ready();
        }
        let (plaintext, peer) = match r {
            Received::Opened { plaintext, peer } => (Bytes::from(plaintext), peer),
            Received::OpenedInPlace { len, peer } => {
                let buf = pooled.take().expect("opened in the pooled buffer");
                (buf.into_bytes(SEALED_HEAD, len), peer)
            }
            Received::Handshake => {
                self.wake.notify_one();
                return None;
            }
            Received::Dropped(e) => {
                tracing::trace!(%from, error = %e, "secure frame dropped");
                let mut s = self.lock();
                s.stats.dropped_frames += 1;
                // A damaged response restarts its handshake: the new initiation goes out
                // (other drops leave nothing to send, and wake nobody).
                if s.table.has_transmit() {
                    drop(s);
                    self.wake.notify_one();
                }
                return None;
            }
            Received::Plaintext => return Some((from, bytes)),
        };
        if self.pinned.get(&from).is_some_and(|&key| key != peer) {
            tracing::debug!(%from, "sealed under another key than the pinned one: dropped");
            self.lock().stats.dropped_frames += 1;
            return None;
        }
        if let Some(heard) = self.lock().heard.get_mut(&from) {
            *heard = Some(Instant::now());
        }
        Some((from, plaintext))
    }

    /// Whether a message to `to`, which has no session, is withheld rather than sent in
    /// plaintext: `to` had a session that ended ([`SessionTable::ended_with`]) and the
    /// message is a peer-to-peer one (`None`: a file's chunks, which are). Counted; the
    /// transfer's own retransmissions and timeouts see a loss.
    fn withheld(&self, to: SocketAddr, msg: Option<&[u8]>) -> bool {
        if !self.lock().table.ended_with(to) {
            return false;
        }
        let peer =
            msg.is_none_or(|m| p2p_proto::wire::decode(m).is_ok_and(|m| is_peer_message(&m)));
        if peer {
            tracing::debug!(%to, "withheld: its sealed session ended, and it goes in no plaintext");
            self.lock().stats.withheld += 1;
        }
        peer
    }

    /// A plaintext peer-to-peer message `msg` of `len` bytes from `from`, dropped: counted,
    /// and a request answered with its refusal if the source's rate allows and the refusal
    /// is no larger than three times the request. Sent without waiting here (the receive
    /// path must not wait on one peer's send).
    fn refuse(&self, from: SocketAddr, msg: &p2p_proto::wire::Message, len: usize) {
        let now = self.now();
        let refusal = {
            let mut s = self.lock();
            s.stats.dropped_plaintext += 1;
            let Some(refusal) = sealed_only_refusal(msg).map(|m| m.encode()) else {
                return;
            };
            if refusal.len() > 3 * len || !s.refusals.allow(now, from.ip()) {
                return;
            }
            s.stats.refusals += 1;
            refusal
        };
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let _ = inner.send_owned(from, refusal).await;
        });
    }

    /// `msg` sealed for `session`.
    fn seal(session: &p2p_proto::secure::Session, msg: &[u8]) -> io::Result<Vec<u8>> {
        session
            .seal(msg)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }
}

#[async_trait]
impl Transport for SecureTransport {
    async fn send_to(&self, to: SocketAddr, msg: &[u8]) -> io::Result<()> {
        match self.session_to(to).await {
            Some(s) => self.inner.send_owned(to, Self::seal(&s, msg)?).await,
            None if self.pinned.contains_key(&to) => {
                self.hold(to, msg.to_vec());
                Ok(())
            }
            None if self.withheld(to, Some(msg)) => Ok(()),
            None => self.inner.send_to(to, msg).await,
        }
    }

    /// Probes go as they are (their TTL kills them on the way; they carry nothing).
    async fn send_to_ttl(&self, to: SocketAddr, msg: &[u8], ttl: u8) -> io::Result<()> {
        self.inner.send_to_ttl(to, msg, ttl).await
    }

    fn send_room(&self, to: SocketAddr) -> usize {
        self.inner.send_room(to)
    }

    async fn send_owned(&self, to: SocketAddr, msg: Vec<u8>) -> io::Result<()> {
        match self.session_to(to).await {
            Some(s) => self.inner.send_owned(to, Self::seal(&s, &msg)?).await,
            None if self.pinned.contains_key(&to) => {
                self.hold(to, msg);
                Ok(())
            }
            None if self.withheld(to, Some(&msg)) => Ok(()),
            None => self.inner.send_owned(to, msg).await,
        }
    }

    /// With a session, the range is read (no `sendfile`) into the frame, after room for
    /// the frame's head and the message's, and sealed where it lies.
    async fn send_file(&self, to: SocketAddr, head: Vec<u8>, body: FileRange) -> io::Result<()> {
        match self.session_to(to).await {
            Some(s) => {
                let mut frame = Vec::with_capacity(SEAL_OVERHEAD + head.len() + body.len);
                frame.extend_from_slice(&[0; SEALED_HEAD]);
                frame.extend_from_slice(&head);
                let mut frame = body.after(frame)?;
                s.seal_in_place(&mut frame, 0)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                self.inner.send_owned(to, frame).await
            }
            // A chunk of a file: never in plaintext to a pinned address, nor to a peer whose
            // session ended.
            None if self.pinned.contains_key(&to) || self.withheld(to, None) => Ok(()),
            None => self.inner.send_file(to, head, body).await,
        }
    }

    fn sends_file(&self, to: SocketAddr, len: usize) -> bool {
        self.inner.sends_file(to, len)
    }

    fn max_batch(&self, to: SocketAddr, len: usize) -> usize {
        match self.sealed_to(to) {
            true => self.inner.max_batch(to, len + SEAL_OVERHEAD),
            false => self.inner.max_batch(to, len),
        }
    }

    /// With a session, each segment is sealed (and grows by [`SEAL_OVERHEAD`]); the sealed
    /// segments go in one batch.
    async fn send_batch(&self, to: SocketAddr, msgs: &[u8], segment: usize) -> io::Result<()> {
        let Some(s) = self.session_to(to).await else {
            // Chunks of a file.
            if self.pinned.contains_key(&to) || self.withheld(to, None) {
                return Ok(());
            }
            return self.inner.send_batch(to, msgs, segment).await;
        };
        let segment = segment.max(1);
        let count = msgs.len().div_ceil(segment);
        let mut sealed = Vec::with_capacity(msgs.len() + count * SEAL_OVERHEAD);
        for msg in msgs.chunks(segment) {
            s.seal_into(msg, &mut sealed)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        }
        self.inner
            .send_batch(to, &sealed, segment + SEAL_OVERHEAD)
            .await
    }

    async fn recv_from(&self) -> io::Result<(SocketAddr, Bytes)> {
        loop {
            let (from, bytes) = self.inner.recv_from().await?;
            if let Some(got) = self.receive(from, bytes) {
                return Ok(got);
            }
        }
    }

    fn try_recv_from(&self) -> Option<(SocketAddr, Bytes)> {
        loop {
            let (from, bytes) = self.inner.try_recv_from()?;
            if let Some(got) = self.receive(from, bytes) {
                return Some(got);
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_message_size(&self) -> usize {
        sealed_limit(self.inner.max_message_size())
    }

    /// [`SEAL_OVERHEAD`] less than the inner transport's only toward an address whose
    /// messages are sealed ([`sealed_to`](Self::sealed_to)): a plaintext client's chunks keep
    /// their full, aligned size (64 KiB over TCP), where 32 bytes less cost a plaintext TCP
    /// transfer from a peer accepting sealed sessions 20-40 % of its speed.
    fn max_message_size_to(&self, to: SocketAddr) -> usize {
        let inner = self.inner.max_message_size_to(to);
        match self.sealed_to(to) {
            true => sealed_limit(inner),
            false => inner,
        }
    }

    fn is_reliable(&self) -> bool {
        self.inner.is_reliable()
    }

    fn is_reliable_to(&self, to: SocketAddr) -> bool {
        self.inner.is_reliable_to(to)
    }

    /// Also drops the sessions with `to`.
    async fn flush(&self, within: std::time::Duration) {
        self.inner.flush(within).await
    }

    fn forget(&self, to: SocketAddr) {
        {
            let mut s = self.lock();
            s.table.forget(to);
            Self::dispatch(&mut s);
        }
        self.inner.forget(to);
    }
}

/// The task of a [`SecureTransport`] that sends its handshake frames and runs its timers
/// (retransmissions, expiry). It holds the transport weakly, and only between two waits:
/// dropping the transport wakes it, and it ends.
///
/// Each frame goes out on a task of its own, so that one peer's full queue never holds up
/// another's handshake (a failed send is a loss: the retransmission repairs it). Those tasks
/// are spawned from this one, so they run where the transport was made.
async fn run_handshakes(weak: Weak<SecureTransport>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(t) = weak.upgrade() else { return };
            t.drive(t.now());
            t.flush_ready();
            for (to, frame) in t.transmits() {
                let inner = t.inner.clone();
                tokio::spawn(async move {
                    let _ = inner.send_owned(to, frame).await;
                });
            }
            let next = t.lock().table.poll_timeout();
            next.map(|at| t.deadline(at))
        };
        match next {
            Some(at) => {
                // Biased: tokio's random branch order is not the simulation's seed.
                tokio::select! {
                    biased;
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// Frames of at least this many bytes are opened in a pooled buffer of their own ([`FramePool`]);
/// smaller ones (ACKs, chunks on real paths) in a copy of their size. A held message so pins
/// at most twice its bytes.
const POOLED_FRAME: usize = 32 * 1024;
/// Buffers a [`FramePool`] keeps for reuse (at most 4 MiB).
const POOLED_BUFFERS: usize = 64;

/// Buffers that large frames are opened in, each taken back when the message handed up in it
/// is dropped: allocated fresh for every frame, a 60 KiB buffer cost a page fault per 4 KiB
/// (the allocator gave each freed one back to the kernel), a tenth of a sealed transfer's
/// receiving thread.
#[derive(Default)]
struct FramePool(Arc<Mutex<Vec<Vec<u8>>>>);

impl FramePool {
    /// A buffer holding a copy of `frame`.
    fn filled(&self, frame: &[u8]) -> PooledFrame {
        let spare = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut buf = spare.unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);
        PooledFrame {
            buf,
            shown: 0..0,
            pool: Arc::downgrade(&self.0),
        }
    }
}

/// A buffer of a [`FramePool`], back in the pool when dropped.
struct PooledFrame {
    buf: Vec<u8>,
    /// What [`as_ref`](AsRef::as_ref) shows, once handed up.
    shown: std::ops::Range<usize>,
    pool: Weak<Mutex<Vec<Vec<u8>>>>,
}

impl PooledFrame {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// The `len` bytes at `at`, as a message that gives the buffer back when dropped.
    fn into_bytes(mut self, at: usize, len: usize) -> Bytes {
        self.shown = at..at + len;
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PooledFrame {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.shown.clone()]
    }
}

impl Drop for PooledFrame {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < POOLED_BUFFERS {
                pool.push(std::mem::take(&mut self.buf));
            }
        }
    }
}

/// The largest plaintext that fits a message of `inner` bytes once sealed.
fn sealed_limit(inner: usize) -> usize {
    inner
        .saturating_sub(SEAL_OVERHEAD)
        .min(MAX_SEALED_PLAINTEXT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A transport that records what is sent and never receives anything.
    #[derive(Default)]
    struct Silent {
        sent: Mutex<Vec<(SocketAddr, Vec<u8>)>>,
    }

    #[async_trait]
    impl Transport for Silent {
        async fn send_to(&self, to: SocketAddr, msg: &[u8]) -> io::Result<()> {
            self.sent.lock().unwrap().push((to, msg.to_vec()));
            Ok(())
        }

        async fn recv_from(&self) -> io::Result<(SocketAddr, Bytes)> {
            std::future::pending().await
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok(SocketAddr::from(([10, 0, 0, 1], 7000)))
        }

        fn max_message_size(&self) -> usize {
            65_507
        }
    }

    fn settings() -> SecureSettings {
        SecureSettings {
            config: SecureConfig {
                seed: Some([5; 32]),
                ..SecureConfig::default()
            },
            ..SecureSettings::new(Identity::from_secret([4; 32]))
        }
    }

    /// Tasks alive on this runtime once the ones that can run have run (bounded: a task
    /// that never settles fails the test rather than hanging it).
    async fn alive_after_settling() -> usize {
        let metrics = tokio::runtime::Handle::current().metrics();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        metrics.num_alive_tasks()
    }

    /// Messages keep the inner transport's full size toward an address that is not sealed
    /// to (a plaintext client's chunks stay 64 KiB over TCP), and lose the seal's overhead
    /// toward a pinned one, or toward everyone when plaintext is refused.
    #[tokio::test]
    async fn only_sealed_messages_give_up_the_overhead() {
        let inner = Arc::new(Silent::default());
        let plain = SocketAddr::from(([10, 0, 0, 2], 7000));
        let tracker = SocketAddr::from(([10, 0, 0, 3], 7000));
        let pinned = SecureSettings {
            pinned: vec![(tracker, Identity::from_secret([6; 32]).public())],
            ..settings()
        };
        let t = SecureTransport::new(inner.clone(), &pinned);
        assert_eq!(t.max_message_size_to(plain), 65_507);
        assert_eq!(t.max_message_size_to(tracker), 65_507 - SEAL_OVERHEAD);
        assert_eq!(t.max_message_size(), 65_507 - SEAL_OVERHEAD);
        let strict = SecureSettings {
            require_sealed: true,
            ..settings()
        };
        let t = SecureTransport::new(inner, &strict);
        assert_eq!(t.max_message_size_to(plain), 65_507 - SEAL_OVERHEAD);
    }

    /// A frame's buffer goes back to the pool when the message cut from it is dropped, and
    /// the next frame is opened in it; the pool keeps no more than its bound.
    #[test]
    fn frame_buffers_are_reused_once_their_message_is_dropped() {
        let pool = FramePool::default();
        let mut frame = pool.filled(&[7; 40_000]);
        frame.as_mut()[16] = 9;
        let msg = frame.into_bytes(16, 100);
        assert_eq!(msg.len(), 100);
        assert_eq!((msg[0], msg[1]), (9, 7));
        let at = msg.as_ptr();
        let copy = msg.clone();
        drop(msg);
        assert!(pool.0.lock().unwrap().is_empty(), "a clone still holds it");
        drop(copy);
        let again = pool.filled(&[8; 40_000]);
        assert_eq!(again.buf.as_ptr().wrapping_add(16), at, "the same buffer");
        drop(again);
        let held: Vec<_> = (0..POOLED_BUFFERS + 10)
            .map(|_| pool.filled(&[1; 10]))
            .collect();
        drop(held);
        assert_eq!(pool.0.lock().unwrap().len(), POOLED_BUFFERS);
    }

    /// A peer that never answers: the transport's own task sends the initiation again on
    /// its schedule (nobody else drives it), the caller gets `Timeout` after every try, and
    /// once the transport is dropped its task ends.
    #[tokio::test(start_paused = true)]
    async fn the_handshake_task_retransmits_then_ends_with_the_transport() {
        let inner = Arc::new(Silent::default());
        let t = SecureTransport::new(inner.clone(), &settings());
        assert_eq!(alive_after_settling().await, 1, "the handshake task");
        let peer = SocketAddr::from(([10, 0, 0, 2], 7000));
        let started = Instant::now();
        let r = t.connect(peer, None).await;
        let attempts = SecureConfig::default().attempts;
        assert_eq!(r, Err(SecureError::Timeout { attempts }));
        let sent = inner.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), attempts as usize);
        assert!(sent.iter().all(|(to, f)| *to == peer && f == &sent[0].1));
        // 300 ms, doubling: the last try's wait ends the handshake.
        assert!(started.elapsed() >= Duration::from_millis(300 * (1 << attempts) - 300));
        // Idle now: no timer left, the task waits without waking.
        assert_eq!(alive_after_settling().await, 1);
        drop(t);
        assert_eq!(alive_after_settling().await, 0, "the task ended");
    }
}
