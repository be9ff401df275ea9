//! The tracker service: runs one [`Tracker`] (the answers, without I/O) on any number of
//! transports, expires silent peers on time (and with them the content they announced and
//! the relay sessions to them), and relays: a `Relayed` datagram takes a fast path (decode,
//! ask the tracker where to, send the very bytes received on the transport they came on).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::limits::RateConfig;
use crate::secure::{SecureSettings, SecureTransport};
use crate::tracker::{
    decode_bindings, encode_bindings, HoldersConfig, RegistryConfig, SavedBinding, Tracker,
};
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
    /// Where the names' key bindings are kept across restarts (`None`: in memory only).
    pub bindings: Option<BindingsFile>,
    /// Sealed sessions with clients (`p2p tracker --secure`): the tracker proves its key
    /// to a client that asks for a session (clients that know the key seal everything and
    /// take sealed answers only), and answers plaintext requests in plaintext as before.
    /// Relayed datagrams are forwarded as they came (they are between peers: sealed by them
    /// if at all).
    pub secure: Option<SecureSettings>,
}

/// A tracker's name bindings on disk (the format: [`p2p_proto::tracker::encode_bindings`]):
/// read with [`BindingsFile::load`] before the tracker starts, restored into it, and written
/// again (whole, to a temporary file renamed over it) within [`BINDINGS_SAVE_EVERY`] of a
/// name being bound to a new key, and every [`BINDINGS_REFRESH`] for the times of the
/// proofs. A binding made less than [`BINDINGS_SAVE_EVERY`] before the tracker stops is
/// lost.
#[derive(Clone, Debug)]
pub struct BindingsFile {
    /// The file.
    pub path: PathBuf,
    /// The bindings read from it.
    pub restored: Vec<SavedBinding>,
}

/// How soon a new binding is saved.
pub const BINDINGS_SAVE_EVERY: Duration = Duration::from_secs(5);
/// How often the bindings are saved when none is new (their proofs' times move on).
pub const BINDINGS_REFRESH: Duration = Duration::from_secs(600);

impl BindingsFile {
    /// The bindings in `path` (none if it does not exist yet), at most `max`, and how many
    /// lines of it were skipped as unreadable.
    pub fn load(path: PathBuf, max: usize) -> std::io::Result<(BindingsFile, usize)> {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let (restored, skipped) = if text.is_empty() {
            (Vec::new(), 0)
        } else {
            decode_bindings(&text, unix_now(), max)
        };
        Ok((BindingsFile { path, restored }, skipped))
    }

    /// Writes `bindings` to the file: to a temporary file beside it first, renamed over it,
    /// so that a crash leaves the old file or the new one.
    fn save(&self, bindings: &[SavedBinding]) -> std::io::Result<()> {
        let text = encode_bindings(bindings, unix_now());
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Saves the tracker's bindings to `file` when they change (see [`BindingsFile`]). A failed
/// write is tried again at the next change or refresh; it never stops the tracker.
async fn keep_bindings(tracker: Arc<Mutex<Tracker>>, file: BindingsFile) -> std::io::Result<()> {
    let mut saved_gen = tracker
        .lock()
        .expect("registry lock")
        .registry()
        .bindings_changed();
    let mut saved_at = Instant::now();
    let file = Arc::new(file);
    loop {
        tokio::time::sleep(BINDINGS_SAVE_EVERY).await;
        let (gen, bindings) = {
            let t = tracker.lock().expect("registry lock");
            let reg = t.registry();
            (
                reg.bindings_changed(),
                reg.bindings(Instant::now().into_std()),
            )
        };
        if gen == saved_gen && saved_at.elapsed() < BINDINGS_REFRESH {
            continue;
        }
        let to = file.clone();
        let written = tokio::task::spawn_blocking(move || to.save(&bindings)).await;
        if let Ok(Ok(())) = written {
            saved_gen = gen;
            saved_at = Instant::now();
        } else {
            tracing::warn!(file = %file.path.display(), "could not save the name bindings");
        }
    }
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
    let mut tracker = Tracker::new(settings.registry, settings.rate)
        .with_key_seed(settings.key_seed.unwrap_or_else(random_seed))
        .with_holders(settings.holders)
        .with_relay(settings.relay);
    if let Some(file) = &settings.bindings {
        let now = Instant::now().into_std();
        for (name, key, age) in &file.restored {
            tracker
                .registry_mut()
                .restore_binding(now, name, *key, *age);
        }
    }
    let log = Log {
        events,
        relay: relay_events,
    };
    serve(transports, tracker, log, settings.bindings, settings.secure).await
}

/// Runs `tracker` on `transports`, with its expiry timer (and the keeper of its bindings).
async fn serve(
    transports: Vec<SharedTransport>,
    tracker: Tracker,
    log: Log,
    bindings: Option<BindingsFile>,
    secure: Option<SecureSettings>,
) -> std::io::Result<()> {
    let registry = Arc::new(Mutex::new(tracker));
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(file) = bindings {
        tasks.spawn(keep_bindings(registry.clone(), file));
    }
    for plain in transports {
        let (registry, log) = (registry.clone(), log.clone());
        // Requests and answers through the sealing wrapper; relayed datagrams straight.
        let t: SharedTransport = match &secure {
            Some(s) => SecureTransport::new(plain.clone(), s),
            None => plain.clone(),
        };
        tasks.spawn(async move {
            loop {
                let (from, bytes) = t.recv_from().await?;
                receive(&*t, &*plain, &registry, &log, from, bytes).await;
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

/// Serves one message `bytes` that came from `from` on `t` (answered on `t`; a relayed
/// datagram is forwarded on `plain`, `t` without its sealing wrapper if it has one).
async fn receive(
    t: &dyn Transport,
    plain: &dyn Transport,
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
            if plain.send_room(to) > 0 {
                let _ = plain.send_to(to, &bytes).await;
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
