//! The tracker service: runs one [`Tracker`] (the answers, without I/O) on any number of
//! transports, expires silent peers on time (and with them the content they announced and
//! the relay sessions to them), and relays: a `Relayed` datagram takes a fast path (decode,
//! ask the tracker where to, send the very bytes received on the transport they came on).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::limits::RateConfig;
use crate::tracker::{HoldersConfig, RegistryConfig, Tracker};
pub use crate::tracker::{RelayConfig, RelayEvent, TrackerEvent};
use crate::transport::{SharedTransport, Transport};
use crate::wire::{decode_bytes, Message};

/// Where the tracker's events go, if anywhere: peers (registrations, expiries) and the relay
/// (sessions opened, refused, ended). A reader that falls behind loses events; the tracker
/// never waits on its log.
#[derive(Clone, Debug, Default)]
struct Log {
    events: Option<mpsc::Sender<TrackerEvent>>,
    relay: Option<mpsc::Sender<RelayEvent>>,
}

/// Everything a tracker runs with besides its transports, for [`run_tracker_with`]. The
/// default is what `p2p tracker` runs with by default, keyed from [`random_seed`].
#[derive(Clone, Debug, Default)]
pub struct TrackerSettings {
    /// The registry's lifetimes and size.
    pub registry: RegistryConfig,
    /// Requests per second accepted per source IP (relayed datagrams are not counted).
    pub rate: RateConfig,
    /// The content index's bounds (`Announce`, `WhoHas`).
    pub holders: HoldersConfig,
    /// The relay's caps, or [`RelayConfig::off`].
    pub relay: RelayConfig,
    /// Key of the address tokens and relay session ids: `None` for a random one;
    /// simulations pass theirs, to replay exactly.
    pub key_seed: Option<u64>,
}

/// Runs the tracker on `transports` until one of them fails, with the default per-source
/// rate limit. Events go to `events`, if given; when its reader falls behind (a log on a
/// pipe nobody reads), events are dropped: the tracker never waits on its log.
pub async fn run_tracker(
    transports: Vec<SharedTransport>,
    config: RegistryConfig,
    events: Option<mpsc::Sender<TrackerEvent>>,
) -> std::io::Result<()> {
    run_tracker_limited(transports, config, RateConfig::default(), events).await
}

/// [`run_tracker`] with a given per-source rate limit: requests beyond it are dropped.
pub async fn run_tracker_limited(
    transports: Vec<SharedTransport>,
    config: RegistryConfig,
    rate: RateConfig,
    events: Option<mpsc::Sender<TrackerEvent>>,
) -> std::io::Result<()> {
    run_tracker_seeded(transports, config, rate, random_seed(), events).await
}

/// A seed nobody else can guess (the standard library's per-process random hash keys).
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

/// [`run_tracker_limited`] with address tokens and relay session ids keyed from `key_seed`
/// (simulations pass theirs, to replay exactly).
pub async fn run_tracker_seeded(
    transports: Vec<SharedTransport>,
    config: RegistryConfig,
    rate: RateConfig,
    key_seed: u64,
    events: Option<mpsc::Sender<TrackerEvent>>,
) -> std::io::Result<()> {
    let settings = TrackerSettings {
        registry: config,
        rate,
        key_seed: Some(key_seed),
        ..TrackerSettings::default()
    };
    run_tracker_with(transports, settings, events, None).await
}

/// [`run_tracker_limited`] with the content index (`Announce`, `WhoHas`) bounded by
/// `holders`: hashes kept per peer and in all.
pub async fn run_tracker_with_holders(
    transports: Vec<SharedTransport>,
    config: RegistryConfig,
    holders: HoldersConfig,
    rate: RateConfig,
    events: Option<mpsc::Sender<TrackerEvent>>,
) -> std::io::Result<()> {
    let settings = TrackerSettings {
        registry: config,
        rate,
        holders,
        ..TrackerSettings::default()
    };
    run_tracker_with(transports, settings, events, None).await
}

/// Runs the tracker on `transports` with `settings` (the relay's caps among them) until one
/// of them fails. Peer events go to `events` and relay events to `relay_events`, if given;
/// a reader that falls behind loses events, the tracker never waits on its log.
pub async fn run_tracker_with(
    transports: Vec<SharedTransport>,
    settings: TrackerSettings,
    events: Option<mpsc::Sender<TrackerEvent>>,
    relay_events: Option<mpsc::Sender<RelayEvent>>,
) -> std::io::Result<()> {
    let tracker = Tracker::new(settings.registry, settings.rate)
        .with_key_seed(settings.key_seed.unwrap_or_else(random_seed))
        .with_holders(settings.holders)
        .with_relay(settings.relay);
    let log = Log {
        events,
        relay: relay_events,
    };
    serve(transports, tracker, log).await
}

/// Runs `tracker` on `transports`, with its expiry timer.
async fn serve(
    transports: Vec<SharedTransport>,
    tracker: Tracker,
    log: Log,
) -> std::io::Result<()> {
    let registry = Arc::new(Mutex::new(tracker));
    let mut tasks = tokio::task::JoinSet::new();
    for t in transports {
        let (registry, log) = (registry.clone(), log.clone());
        tasks.spawn(async move {
            loop {
                let (from, bytes) = t.recv_from().await?;
                receive(&*t, &registry, &log, from, bytes).await;
            }
        });
    }
    tasks.spawn(expire_on_time(registry, log));
    // The first task to end ends the tracker (a transport error).
    match tasks.join_next().await {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(std::io::Error::other(e)),
        None => Ok(()),
    }
}

/// Serves one message `bytes` that came from `from` on `t`.
async fn receive(
    t: &dyn Transport,
    tracker: &Mutex<Tracker>,
    log: &Log,
    from: SocketAddr,
    bytes: Bytes,
) {
    // Undecodable input is dropped silently: answering would let strangers make us talk.
    let Ok(msg) = decode_bytes(&bytes) else {
        return;
    };
    if let Message::Relayed { session, .. } = msg {
        let proven = t.is_reliable();
        if let Some(to) = relay_to(tracker, log, from, session, bytes.len(), proven) {
            // Over a full stream to `to`, dropped as over a cap: never waited for.
            if t.send_room(to) > 0 {
                let _ = t.send_to(to, &bytes).await;
            }
        }
        return;
    }
    let (reply, others) = handle(tracker, log, from, msg, t.is_reliable());
    if let Some(reply) = reply {
        // A failed reply is the client's problem (it retries); keep serving.
        let _ = t.send_to(from, &reply.encode()).await;
    }
    // Introductions, after the answer: its asker sends its low-TTL probes on the answer,
    // before the introduced peer's probes can reach it.
    for (to, msg) in others {
        let _ = t.send_to(to, &msg.encode()).await;
    }
}

/// Expires silent peers and idle relay sessions on time.
async fn expire_on_time(tracker: Arc<Mutex<Tracker>>, log: Log) -> std::io::Result<()> {
    loop {
        let next = tracker
            .lock()
            .expect("registry lock")
            .next_expiry()
            .map(Instant::from_std);
        match next {
            Some(at) => tokio::time::sleep_until(at).await,
            None => tokio::time::sleep(EMPTY_TABLE_RECHECK).await,
        }
        let mut t = tracker.lock().expect("registry lock");
        let gone = t.expire(Instant::now().into_std());
        let relayed = relay_events(&mut t);
        drop(t);
        for name in gone {
            emit(&log.events, TrackerEvent::Expired { name });
        }
        for e in relayed {
            emit(&log.relay, e);
        }
    }
}

/// How long the expiry task waits when the table is empty (a registration wakes nothing, so
/// it re-checks at this pace).
const EMPTY_TABLE_RECHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// Sends `e` to `to` unless its queue is full (then it is dropped, never waited for).
fn emit<E>(to: &Option<mpsc::Sender<E>>, e: E) {
    if let Some(tx) = to {
        let _ = tx.try_send(e);
    }
}

/// The relay's events waiting in `tracker` (none, usually: no allocation then).
fn relay_events(tracker: &mut Tracker) -> Vec<RelayEvent> {
    std::iter::from_fn(|| tracker.poll_relay_event()).collect()
}

/// Where a `Relayed` datagram of `session`, `len` bytes, from `from` (on a transport that
/// proves addresses when `addresses_proven`) goes (`None`: drop it).
fn relay_to(
    tracker: &Mutex<Tracker>,
    log: &Log,
    from: SocketAddr,
    session: u64,
    len: usize,
    addresses_proven: bool,
) -> Option<SocketAddr> {
    let now = Instant::now().into_std();
    let mut t = tracker.lock().expect("registry lock");
    let to = t.relay_on(now, from, session, len, addresses_proven);
    let relayed = relay_events(&mut t);
    drop(t);
    for e in relayed {
        emit(&log.relay, e);
    }
    to
}

/// The answer to the request `msg` from `from`, and messages for others.
fn handle(
    tracker: &Mutex<Tracker>,
    log: &Log,
    from: SocketAddr,
    msg: Message,
    addresses_proven: bool,
) -> (Option<Message>, Vec<(SocketAddr, Message)>) {
    let now = Instant::now().into_std();
    let mut tracker = tracker.lock().expect("registry lock");
    let (reply, event) = tracker.handle_on(now, from, msg, addresses_proven);
    let others = std::iter::from_fn(|| tracker.poll_transmit()).collect();
    let relayed = relay_events(&mut tracker);
    drop(tracker);
    if let Some(e) = event {
        emit(&log.events, e);
    }
    for e in relayed {
        emit(&log.relay, e);
    }
    (reply, others)
}
