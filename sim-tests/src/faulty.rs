//! [`FaultyTransport`]: a wrapper that drops, duplicates, reorders, delays and corrupts
//! messages on their way out (send side) and on their way in (receive side), driven by a
//! seeded RNG so every run replays exactly from its seed.
//!
//! turmoil supplies latency, partitions, link flapping and crashes; it has no independent
//! per-message loss, duplication or corruption: this wrapper supplies those. It also counts
//! what it did ([`FaultStats`]), including the `Data` messages the endpoint asked it to send,
//! so tests can bound the work a transfer costs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use p2p_core::transport::Transport;
use p2p_proto::wire::{decode, Message, CONTROL_BUDGET};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::trace::Trace;

/// Probabilities (each in `0.0..=1.0`) of the faults applied to each message in one
/// direction; each fault is rolled independently.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultRates {
    /// The message is lost.
    pub drop: f64,
    /// The message is delivered twice.
    pub duplicate: f64,
    /// The message is held back and released after the next one (or after
    /// [`FaultConfig::reorder_hold`] when nothing follows).
    pub reorder: f64,
    /// The message is delayed by up to [`FaultConfig::max_delay`] (simulated time).
    pub delay: f64,
    /// Random bits of the message are flipped, or it is truncated.
    pub corrupt: f64,
}

impl FaultRates {
    /// No fault at all.
    pub const NONE: FaultRates = FaultRates {
        drop: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        delay: 0.0,
        corrupt: 0.0,
    };

    /// Only loss, at rate `p`.
    pub fn loss(p: f64) -> Self {
        FaultRates {
            drop: p,
            ..Self::NONE
        }
    }

    /// Only duplication, at rate `p`.
    pub fn duplication(p: f64) -> Self {
        FaultRates {
            duplicate: p,
            ..Self::NONE
        }
    }

    /// Only reordering (hold-back), at rate `p`.
    pub fn reordering(p: f64) -> Self {
        FaultRates {
            reorder: p,
            ..Self::NONE
        }
    }

    /// Only delay, at rate `p`.
    pub fn delaying(p: f64) -> Self {
        FaultRates {
            delay: p,
            ..Self::NONE
        }
    }

    /// Only corruption (bit flips or truncation), at rate `p`.
    pub fn corruption(p: f64) -> Self {
        FaultRates {
            corrupt: p,
            ..Self::NONE
        }
    }

    /// True when no fault can happen.
    pub fn is_none(&self) -> bool {
        *self == Self::NONE
    }
}

/// Which messages a targeted fault hits: a predicate, and how many of the first that match.
pub type DropFirst = (fn(&Message) -> bool, u32);

/// Faults aimed at particular messages, on top of the random rates.
#[derive(Clone, Copy, Debug, Default)]
pub struct Targeted {
    /// The first `n` messages sent that match are lost (e.g. a download's first `Request`).
    pub drop_first: Option<DropFirst>,
    /// The first `n` messages sent that match arrive with their last byte flipped: in a
    /// `Data` message, a payload byte.
    pub corrupt_first: Option<DropFirst>,
    /// Chunks of at least this many payload bytes go through `send_file`, their payload
    /// outside the checksum, as the UDP transport sends large datagrams (the simulated
    /// network's datagrams are too small for that otherwise).
    pub send_file_from: Option<usize>,
}

impl Targeted {
    /// True when it aims at nothing.
    pub fn is_none(&self) -> bool {
        self.drop_first.is_none() && self.corrupt_first.is_none() && self.send_file_from.is_none()
    }
}

/// Settings of a [`FaultyTransport`].
#[derive(Clone, Debug)]
pub struct FaultConfig {
    /// Seed of the fault RNG.
    pub seed: u64,
    /// Faults applied to messages this side sends.
    pub send: FaultRates,
    /// Faults applied to messages this side receives.
    pub recv: FaultRates,
    /// Longest delay of a delayed message.
    pub max_delay: Duration,
    /// Longest a reordered message is held back when no other message follows it.
    pub reorder_hold: Duration,
    /// Faults aimed at particular messages, whatever the rates.
    pub targeted: Targeted,
    /// A bottleneck link on the send side (datagram transports only), if any.
    pub bottleneck: Option<Bottleneck>,
}

/// Bytes a datagram takes on the bottleneck's link besides its payload (IPv4 and UDP
/// headers).
const LINK_OVERHEAD: u64 = 28;

/// A bottleneck router on the way out: messages leave at most `bytes_per_sec` (each waits
/// for those before it, as on a serial link), and one that would wait longer than `queue`
/// is dropped (a drop-tail queue of that many seconds of the link). Turmoil's latency comes
/// on top: a long path with a narrow link, where a sender that overruns it loses messages.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bottleneck {
    /// The link's rate.
    pub bytes_per_sec: u64,
    /// The longest a message waits in the router's queue.
    pub queue: Duration,
}

impl Bottleneck {
    /// A link of `mbit` Mbit/s with a queue of `queue`.
    pub fn mbit(mbit: u64, queue: Duration) -> Self {
        Bottleneck {
            bytes_per_sec: mbit * 1_000_000 / 8,
            queue,
        }
    }
}

impl FaultConfig {
    /// Faults `send` on the way out, none on the way in.
    pub fn send_side(seed: u64, send: FaultRates) -> Self {
        FaultConfig {
            seed,
            send,
            recv: FaultRates::NONE,
            max_delay: Duration::from_millis(200),
            reorder_hold: Duration::from_millis(50),
            targeted: Targeted::default(),
            bottleneck: None,
        }
    }

    /// Faults `recv` on the way in, none on the way out.
    pub fn recv_side(seed: u64, recv: FaultRates) -> Self {
        FaultConfig {
            recv,
            ..Self::send_side(seed, FaultRates::NONE)
        }
    }

    /// The same faults in both directions.
    pub fn both(seed: u64, rates: FaultRates) -> Self {
        FaultConfig {
            recv: rates,
            ..Self::send_side(seed, rates)
        }
    }
}

/// What one direction of a [`FaultyTransport`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Messages that entered this direction.
    pub messages: u64,
    /// Messages lost on purpose.
    pub dropped: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Messages held back behind a later one.
    pub reordered: u64,
    /// Messages delayed.
    pub delayed: u64,
    /// Messages with flipped bits.
    pub corrupted: u64,
    /// Messages cut short.
    pub truncated: u64,
    /// Messages dropped by a full bottleneck queue (see [`Bottleneck`]).
    pub queue_dropped: u64,
}

/// Counters of a [`FaultyTransport`]; share them with [`FaultyTransport::with_stats`] to read
/// them from a test (also across host restarts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// The send side.
    pub send: DirectionStats,
    /// The receive side.
    pub recv: DirectionStats,
    /// `Data` messages the owner asked to send (before any fault).
    pub data_sent: u64,
    /// Of those, chunks already sent before to the same address and transfer
    /// (retransmissions).
    pub data_resent: u64,
    /// Payload bytes of those `Data` messages, retransmissions included.
    pub data_payload_bytes: u64,
}

/// Counters shared between a transport and a test.
pub type SharedStats = Arc<Mutex<FaultStats>>;

/// A message waiting to be delivered: source or destination, bytes.
type Msg = (SocketAddr, Vec<u8>);

#[derive(Debug)]
struct State {
    rng: SmallRng,
    next_id: u64,
    /// Send side: the message held back, with its id.
    send_held: Option<(u64, Msg)>,
    /// Receive side: messages ready to hand out, in order.
    ready: VecDeque<Msg>,
    /// Receive side: delayed messages by (due time, id).
    delayed: BTreeMap<(Instant, u64), Msg>,
    /// Receive side: the message held back and when it is released anyway.
    recv_held: Option<(Instant, Msg)>,
    /// Chunks sent, by (destination, transfer, seq), to count retransmissions.
    seen: BTreeSet<(SocketAddr, u64, u64)>,
    /// Messages lost so far to [`Targeted::drop_first`].
    dropped_first: u32,
    /// Messages corrupted so far by [`Targeted::corrupt_first`].
    corrupted_first: u32,
    /// When the bottleneck's link has sent everything queued so far.
    link_free_at: Option<Instant>,
}

/// What to do with one message, decided under the lock.
#[derive(Debug, Default)]
struct Plan {
    drop: bool,
    corrupt: Option<Corruption>,
    duplicate: bool,
    delay: Option<Duration>,
    hold: bool,
}

#[derive(Debug)]
enum Corruption {
    Flip(Vec<usize>),
    Truncate(usize),
}

/// A [`Transport`] wrapper that injects seeded faults. See the module docs.
pub struct FaultyTransport<T: Transport> {
    inner: Arc<T>,
    config: FaultConfig,
    state: Arc<Mutex<State>>,
    stats: SharedStats,
    log: Option<(Trace, String)>,
}

impl<T: Transport> std::fmt::Debug for FaultyTransport<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyTransport")
            .field("config", &self.config)
            .finish()
    }
}

impl<T: Transport> FaultyTransport<T> {
    /// Wraps `inner`, with fresh counters.
    pub fn new(inner: T, config: FaultConfig) -> Self {
        Self::with_stats(inner, config, SharedStats::default())
    }

    /// Wraps `inner`, adding to the counters `stats`.
    pub fn with_stats(inner: T, config: FaultConfig, stats: SharedStats) -> Self {
        FaultyTransport {
            inner: Arc::new(inner),
            state: Arc::new(Mutex::new(State {
                rng: SmallRng::seed_from_u64(config.seed),
                next_id: 0,
                send_held: None,
                ready: VecDeque::new(),
                delayed: BTreeMap::new(),
                recv_held: None,
                seen: BTreeSet::new(),
                dropped_first: 0,
                corrupted_first: 0,
                link_free_at: None,
            })),
            config,
            stats,
            log: None,
        }
    }

    /// Also records every message and the faults applied to it in `trace`, as `host`: a
    /// message-level log for debugging one seed (costly; off by default).
    pub fn with_log(mut self, trace: Trace, host: &str) -> Self {
        self.log = Some((trace, host.to_string()));
        self
    }

    fn note(&self, dir: &str, peer: SocketAddr, msg: &[u8], plan: &Plan) {
        if let Some((trace, host)) = &self.log {
            let what = match decode(msg) {
                Ok(Message::Data { transfer, seq, .. }) => format!("Data {} #{seq}", transfer.0),
                Ok(Message::Ack {
                    transfer,
                    cumulative,
                    sack,
                    ..
                }) => format!("Ack {} cum {cumulative} sack {:?}", transfer.0, sack.0),
                Ok(m) => {
                    let s = format!("{m:?}");
                    s.chars().take(120).collect()
                }
                Err(e) => format!("undecodable ({e})"),
            };
            trace.record(host, format_args!("{dir} {peer} {what} {plan:?}"));
        }
    }

    /// The counters this transport adds to.
    pub fn stats(&self) -> SharedStats {
        self.stats.clone()
    }

    /// A copy of the counters now.
    pub fn snapshot(&self) -> FaultStats {
        self.stats.lock().expect("stats lock").clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fault state lock")
    }

    fn count_data(&self, st: &mut State, to: SocketAddr, msg: Option<&Message>) {
        if let Some(Message::Data {
            transfer,
            seq,
            payload,
        }) = msg
        {
            let mut stats = self.stats.lock().expect("stats lock");
            stats.data_sent += 1;
            stats.data_payload_bytes += payload.len() as u64;
            if !st.seen.insert((to, transfer.0, *seq)) {
                stats.data_resent += 1;
            }
        }
    }

    /// The targeted fault (see [`Targeted`]) that hits the message of `len` bytes being sent,
    /// if any: lost, or its last byte flipped.
    fn targeted(&self, st: &mut State, msg: Option<&Message>, len: usize) -> Option<Plan> {
        let targeted = self.config.targeted;
        if Self::first_matching(targeted.drop_first, &mut st.dropped_first, msg) {
            Some(Plan {
                drop: true,
                ..Plan::default()
            })
        } else if Self::first_matching(targeted.corrupt_first, &mut st.corrupted_first, msg) {
            Some(Plan {
                corrupt: Some(Corruption::Flip(vec![len * 8 - 1])),
                ..Plan::default()
            })
        } else {
            None
        }
    }

    /// True when `msg` is one of the first `n` that match `which` (counted in `count`).
    fn first_matching(which: Option<DropFirst>, count: &mut u32, msg: Option<&Message>) -> bool {
        let Some((matches, n)) = which else {
            return false;
        };
        if *count >= n || !msg.is_some_and(matches) {
            return false;
        }
        *count += 1;
        true
    }

    /// Rolls the faults of `rates` for a message of `len` bytes and counts them in `dir`.
    fn plan(
        &self,
        st: &mut State,
        rates: &FaultRates,
        len: usize,
        dir: &mut DirectionStats,
    ) -> Plan {
        let mut plan = Plan::default();
        dir.messages += 1;
        if rates.is_none() {
            return plan;
        }
        let rng = &mut st.rng;
        if rng.gen_bool(rates.drop) {
            dir.dropped += 1;
            plan.drop = true;
            return plan;
        }
        if len > 0 && rng.gen_bool(rates.corrupt) {
            if rng.gen_bool(0.5) {
                let flips = rng.gen_range(1..=3);
                plan.corrupt = Some(Corruption::Flip(
                    (0..flips).map(|_| rng.gen_range(0..len * 8)).collect(),
                ));
                dir.corrupted += 1;
            } else {
                plan.corrupt = Some(Corruption::Truncate(rng.gen_range(0..len)));
                dir.truncated += 1;
            }
        }
        if rng.gen_bool(rates.duplicate) {
            dir.duplicated += 1;
            plan.duplicate = true;
        }
        if rng.gen_bool(rates.delay) {
            dir.delayed += 1;
            let max = self.config.max_delay.as_micros().max(1) as u64;
            plan.delay = Some(Duration::from_micros(rng.gen_range(1..=max)));
        }
        if rng.gen_bool(rates.reorder) {
            dir.reordered += 1;
            plan.hold = true;
        }
        plan
    }

    fn apply(corrupt: &Option<Corruption>, msg: &[u8]) -> Vec<u8> {
        let mut out = msg.to_vec();
        match corrupt {
            None => {}
            Some(Corruption::Flip(bits)) => {
                for &b in bits {
                    out[b / 8] ^= 1 << (b % 8);
                }
            }
            Some(Corruption::Truncate(n)) => out.truncate(*n),
        }
        out
    }

    /// Handles a message that just arrived from the inner transport: every outcome lands in
    /// the state's queues, without an await, so `recv_from` stays cancel-safe.
    fn on_incoming(&self, from: SocketAddr, msg: &[u8]) {
        let mut st = self.lock();
        let plan = {
            let mut stats = self.stats.lock().expect("stats lock");
            let rates = self.config.recv;
            self.plan(&mut st, &rates, msg.len(), &mut stats.recv)
        };
        self.note("recv", from, msg, &plan);
        if plan.drop {
            return;
        }
        let bytes = Self::apply(&plan.corrupt, msg);
        let now = Instant::now();
        let copies = if plan.duplicate { 2 } else { 1 };
        for _ in 0..copies {
            if let Some(d) = plan.delay {
                let id = st.next_id;
                st.next_id += 1;
                st.delayed.insert((now + d, id), (from, bytes.clone()));
            } else if plan.hold && st.recv_held.is_none() {
                st.recv_held = Some((now + self.config.reorder_hold, (from, bytes.clone())));
            } else {
                st.ready.push_back((from, bytes.clone()));
                // The held message goes out after the one that overtook it.
                if let Some((_, held)) = st.recv_held.take() {
                    st.ready.push_back(held);
                }
            }
        }
    }

    /// Moves delayed and held messages whose time has come to the ready queue; returns the
    /// next moment something becomes due.
    fn release_due(st: &mut State, now: Instant) -> Option<Instant> {
        while let Some(entry) = st.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let msg = entry.remove();
            st.ready.push_back(msg);
        }
        if st.recv_held.as_ref().is_some_and(|(at, _)| *at <= now) {
            let (_, msg) = st.recv_held.take().expect("checked");
            st.ready.push_back(msg);
        }
        let delayed = st.delayed.keys().next().map(|k| k.0);
        let held = st.recv_held.as_ref().map(|h| h.0);
        delayed.into_iter().chain(held).min()
    }

    fn spawn_send(&self, after: Option<Duration>, to: SocketAddr, bytes: Vec<u8>) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if let Some(d) = after {
                tokio::time::sleep(d).await;
            }
            let _ = inner.send_to(to, &bytes).await;
        });
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[async_trait]
impl<T: Transport> Transport for FaultyTransport<T> {
    /// Low-TTL probes (hole punching) go straight to the inner transport, which lets them die
    /// where their TTL ends: the faults here are the far network's, which they never reach.
    async fn send_to_ttl(&self, to: SocketAddr, msg: &[u8], ttl: u8) -> io::Result<()> {
        self.inner.send_to_ttl(to, msg, ttl).await
    }

    async fn send_to(&self, to: SocketAddr, msg: &[u8]) -> io::Result<()> {
        if msg.len() > self.inner.max_message_size().max(CONTROL_BUDGET) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("message of {} bytes exceeds the limit", msg.len()),
            ));
        }
        let (plan, release, hold_id) = {
            let mut st = self.lock();
            // Decoded once, for the counters and the targeted faults; a request sent with a
            // token (`Message::Validated`) counts as the request it carries.
            let decoded = decode(msg).ok().map(|m| match m {
                Message::Validated { ref body, .. } => Message::open_validated(body).unwrap_or(m),
                m => m,
            });
            self.count_data(&mut st, to, decoded.as_ref());
            let mut plan = {
                let mut stats = self.stats.lock().expect("stats lock");
                match self.targeted(&mut st, decoded.as_ref(), msg.len()) {
                    Some(plan) => {
                        stats.send.messages += 1;
                        stats.send.dropped += u64::from(plan.drop);
                        stats.send.corrupted += u64::from(plan.corrupt.is_some());
                        plan
                    }
                    None => {
                        let rates = self.config.send;
                        self.plan(&mut st, &rates, msg.len(), &mut stats.send)
                    }
                }
            };
            // Through the bottleneck (plain sends only: a held or delayed message is another
            // fault's), after the faults of the path before it.
            if let Some(link) = self.config.bottleneck {
                if !plan.drop && !plan.hold && plan.delay.is_none() {
                    let now = Instant::now();
                    let start = st.link_free_at.map_or(now, |t| t.max(now));
                    if start - now > link.queue {
                        plan.drop = true;
                        self.stats.lock().expect("stats lock").send.queue_dropped += 1;
                    } else {
                        let wire = msg.len() as u64 + LINK_OVERHEAD;
                        let sent =
                            start + Duration::from_nanos(wire * 1_000_000_000 / link.bytes_per_sec);
                        st.link_free_at = Some(sent);
                        plan.delay = Some(sent - now);
                    }
                }
            }
            let hold = plan.hold && !plan.drop && st.send_held.is_none();
            // A held message is released right after the next one goes out.
            let release = if hold { None } else { st.send_held.take() };
            let hold_id = hold.then(|| {
                let id = st.next_id;
                st.next_id += 1;
                id
            });
            (plan, release, hold_id)
        };
        self.note("send", to, msg, &plan);
        let result = if plan.drop {
            Ok(())
        } else {
            let bytes = Self::apply(&plan.corrupt, msg);
            let copies = if plan.duplicate { 2 } else { 1 };
            if let Some(id) = hold_id {
                self.lock().send_held = Some((id, (to, bytes.clone())));
                let (state, inner, wait) = (
                    self.state.clone(),
                    self.inner.clone(),
                    self.config.reorder_hold,
                );
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let held = {
                        let mut st = state.lock().expect("fault state lock");
                        match &st.send_held {
                            Some((held_id, _)) if *held_id == id => st.send_held.take(),
                            _ => None,
                        }
                    };
                    if let Some((_, (to, bytes))) = held {
                        let _ = inner.send_to(to, &bytes).await;
                    }
                });
                if plan.duplicate {
                    self.spawn_send(plan.delay, to, bytes);
                }
                Ok(())
            } else if plan.delay.is_some() {
                for _ in 0..copies {
                    self.spawn_send(plan.delay, to, bytes.clone());
                }
                Ok(())
            } else {
                let r = self.inner.send_to(to, &bytes).await;
                if plan.duplicate {
                    let _ = self.inner.send_to(to, &bytes).await;
                }
                r
            }
        };
        if let Some((_, (held_to, held))) = release {
            let _ = self.inner.send_to(held_to, &held).await;
        }
        result
    }

    /// Cancel-safe: every message taken from the inner transport is stored in the wrapper's
    /// queues before the next await.
    async fn recv_from(&self) -> io::Result<(SocketAddr, Bytes)> {
        loop {
            let next_due = {
                let mut st = self.lock();
                let due = Self::release_due(&mut st, Instant::now());
                if let Some(m) = st.ready.pop_front() {
                    return Ok((m.0, m.1.into()));
                }
                due
            };
            // `biased`: tokio's default random branch order is not seeded, so it would make
            // runs differ.
            tokio::select! {
                biased;
                r = self.inner.recv_from() => {
                    let (from, msg) = r?;
                    self.on_incoming(from, &msg);
                }
                _ = sleep_until(next_due) => {}
            }
        }
    }

    fn try_recv_from(&self) -> Option<(SocketAddr, Bytes)> {
        {
            let mut st = self.lock();
            Self::release_due(&mut st, Instant::now());
            if let Some(m) = st.ready.pop_front() {
                return Some((m.0, m.1.into()));
            }
        }
        while let Some((from, msg)) = self.inner.try_recv_from() {
            self.on_incoming(from, &msg);
            if let Some(m) = self.lock().ready.pop_front() {
                return Some((m.0, m.1.into()));
            }
        }
        None
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_message_size(&self) -> usize {
        self.inner.max_message_size()
    }

    fn is_reliable(&self) -> bool {
        self.inner.is_reliable()
    }

    fn sends_file(&self, to: SocketAddr, len: usize) -> bool {
        self.inner.sends_file(to, len)
            || self
                .config
                .targeted
                .send_file_from
                .is_some_and(|min| len >= min)
    }

    async fn flush(&self, within: std::time::Duration) {
        self.inner.flush(within).await
    }

    fn forget(&self, to: SocketAddr) {
        self.inner.forget(to)
    }
}
