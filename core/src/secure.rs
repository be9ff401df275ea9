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
//!   receives (`recv_from`) hands in, and retransmits on silence.
//! - Sends to an address with a session are sealed; sends to one without go as they are
//!   (trackers, hole-punching probes, peers without encryption).
//! - Received frames are opened and handed up as coming from their address; handshake
//!   initiations are answered here. Plaintext passes through, but with
//!   [`SecureSettings::require_sealed`] a peer-to-peer message
//!   ([`p2p_proto::secure::is_peer_message`]) that arrives in plaintext is dropped:
//!   then every listing, entry, piece table and transfer message handed up came sealed
//!   from the key [`SecureTransport::peer_key`] names for its address.
//! - Each sealed message is 32 bytes longer ([`SEAL_OVERHEAD`]): the largest message the
//!   wrapper takes is that much smaller than its inner transport's, and at most
//!   [`MAX_SEALED_PLAINTEXT`]. Chunks sent from a file are read and sealed (no `sendfile`).

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant as StdInstant;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use p2p_proto::identity::{Identity, PublicKey};
use p2p_proto::secure::{is_frame, is_peer_message, Connect, Received, SecureEvent, SessionTable};
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
    /// Limits, timers and (for simulations) the seed of the handshakes' randomness.
    pub config: SecureConfig,
}

impl SecureSettings {
    /// Settings for `identity`: plaintext peers still served, default limits, the system's
    /// randomness.
    pub fn new(identity: Identity) -> Self {
        SecureSettings {
            identity,
            require_sealed: false,
            config: SecureConfig::default(),
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
}

struct State {
    table: SessionTable,
    /// Callers of `connect` waiting for a handshake with an address.
    waiters: Vec<(SocketAddr, oneshot::Sender<Result<PublicKey, SecureError>>)>,
    stats: SecureStats,
}

/// A transport whose traffic with peers it has sessions with is sealed (see the
/// [module](self) docs).
pub struct SecureTransport {
    inner: SharedTransport,
    state: Mutex<State>,
    require_sealed: bool,
    /// The clock's origin for the sans-IO table (tokio's clock, turmoil's in simulations).
    epoch: (Instant, StdInstant),
}

impl std::fmt::Debug for SecureTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureTransport")
            .field("table", &self.lock().table)
            .finish_non_exhaustive()
    }
}

impl SecureTransport {
    /// Wraps `inner` with `settings`.
    pub fn new(inner: SharedTransport, settings: &SecureSettings) -> Arc<Self> {
        Arc::new(SecureTransport {
            inner,
            state: Mutex::new(State {
                table: SessionTable::new(&settings.identity, settings.config.clone()),
                waiters: Vec::new(),
                stats: SecureStats::default(),
            }),
            require_sealed: settings.require_sealed,
            epoch: (Instant::now(), StdInstant::now()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Now, on tokio's clock, as the `std` instant the sans-IO table takes.
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
            let now = self.now();
            match s.table.connect(now, addr, expected)? {
                Connect::Established(key) => return Ok(key),
                Connect::Pending => {
                    let (tx, rx) = oneshot::channel();
                    s.waiters.push((addr, tx));
                    rx
                }
            }
        };
        self.flush().await;
        let mut rx = rx;
        let got = loop {
            let next = self.lock().table.poll_timeout();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(self.deadline(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = &mut rx => break r.unwrap_or(Err(SecureError::Forgotten))?,
                _ = sleep => {
                    self.drive(self.now());
                    self.flush().await;
                }
            }
        };
        match expected {
            Some(e) if e != got => Err(SecureError::WrongKey { expected: e, got }),
            _ => Ok(got),
        }
    }

    /// Runs the table's timers if due, and hands out its events.
    fn drive(&self, now: StdInstant) {
        let mut s = self.lock();
        if s.table.poll_timeout().is_some_and(|t| t <= now) {
            s.table.handle_timeout(now);
        }
        Self::dispatch(&mut s);
    }

    /// Hands the table's events to the `connect` callers waiting for them.
    fn dispatch(s: &mut State) {
        while let Some(ev) = s.table.poll_event() {
            let (addr, result) = match ev {
                SecureEvent::Connected { addr, peer } => (addr, Ok(peer)),
                SecureEvent::Failed { addr, error } => (addr, Err(error)),
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

    /// The handshake frames the table has to send.
    fn transmits(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut s = self.lock();
        std::iter::from_fn(|| s.table.poll_transmit()).collect()
    }

    /// Sends the handshake frames the table has (a failed send is a loss: the handshake's
    /// retransmission repairs it).
    async fn flush(&self) {
        for (to, frame) in self.transmits() {
            let _ = self.inner.send_owned(to, frame).await;
        }
    }

    /// Sends the handshake frames without waiting here (from the receive path, which must
    /// not wait on one peer's send).
    fn flush_later(&self) {
        let frames = self.transmits();
        if frames.is_empty() {
            return;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            for (to, frame) in frames {
                let _ = inner.send_owned(to, frame).await;
            }
        });
    }

    /// The session to seal messages to `to` with (timers run on the way).
    fn session_to(&self, to: SocketAddr) -> Option<Arc<p2p_proto::secure::Session>> {
        let now = self.now();
        let mut s = self.lock();
        if s.table.poll_timeout().is_some_and(|t| t <= now) {
            s.table.handle_timeout(now);
            Self::dispatch(&mut s);
            drop(s);
            self.flush_later();
            s = self.lock();
        }
        s.table.session_to(to)
    }

    /// A received message: handed up (opened, or plaintext let through), or `None` (a
    /// handshake frame handled, or a message dropped).
    fn receive(&self, from: SocketAddr, bytes: Bytes) -> Option<(SocketAddr, Bytes)> {
        if !is_frame(&bytes) {
            if self.require_sealed && decode_bytes(&bytes).is_ok_and(|m| is_peer_message(&m)) {
                self.lock().stats.dropped_plaintext += 1;
                return None;
            }
            return Some((from, bytes));
        }
        let now = self.now();
        let mut s = self.lock();
        if s.table.poll_timeout().is_some_and(|t| t <= now) {
            s.table.handle_timeout(now);
        }
        let r = s.table.handle(now, from, &bytes);
        Self::dispatch(&mut s);
        drop(s);
        match r {
            Received::Opened { plaintext, .. } => Some((from, Bytes::from(plaintext))),
            Received::Handshake => {
                self.flush_later();
                None
            }
            Received::Dropped(e) => {
                tracing::trace!(%from, error = %e, "secure frame dropped");
                self.lock().stats.dropped_frames += 1;
                self.flush_later();
                None
            }
            Received::Plaintext => Some((from, bytes)),
        }
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
        match self.session_to(to) {
            Some(s) => self.inner.send_owned(to, Self::seal(&s, msg)?).await,
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
        match self.session_to(to) {
            Some(s) => self.inner.send_owned(to, Self::seal(&s, &msg)?).await,
            None => self.inner.send_owned(to, msg).await,
        }
    }

    /// With a session, the range is read and sealed with its head (no `sendfile`).
    async fn send_file(&self, to: SocketAddr, head: Vec<u8>, body: FileRange) -> io::Result<()> {
        match self.session_to(to) {
            Some(s) => {
                let msg = body.after(head)?;
                self.inner.send_owned(to, Self::seal(&s, &msg)?).await
            }
            None => self.inner.send_file(to, head, body).await,
        }
    }

    fn sends_file(&self, to: SocketAddr, len: usize) -> bool {
        self.inner.sends_file(to, len)
    }

    fn max_batch(&self, to: SocketAddr, len: usize) -> usize {
        self.inner.max_batch(to, len + SEAL_OVERHEAD)
    }

    /// With a session, each segment is sealed (and grows by [`SEAL_OVERHEAD`]); the sealed
    /// segments go in one batch.
    async fn send_batch(&self, to: SocketAddr, msgs: &[u8], segment: usize) -> io::Result<()> {
        let Some(s) = self.session_to(to) else {
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

    fn max_message_size_to(&self, to: SocketAddr) -> usize {
        sealed_limit(self.inner.max_message_size_to(to))
    }

    fn is_reliable(&self) -> bool {
        self.inner.is_reliable()
    }

    fn is_reliable_to(&self, to: SocketAddr) -> bool {
        self.inner.is_reliable_to(to)
    }

    /// Also drops the sessions with `to`.
    fn forget(&self, to: SocketAddr) {
        {
            let mut s = self.lock();
            s.table.forget(to);
            Self::dispatch(&mut s);
        }
        self.inner.forget(to);
    }
}

/// The largest plaintext that fits a message of `inner` bytes once sealed.
fn sealed_limit(inner: usize) -> usize {
    inner
        .saturating_sub(SEAL_OVERHEAD)
        .min(MAX_SEALED_PLAINTEXT)
}
