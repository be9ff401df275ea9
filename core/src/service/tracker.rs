//! The tracker service: runs one [`Tracker`] (the answers, without I/O) on any number of
//! transports, and expires silent peers on time (and with them the content they announced).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::limits::RateConfig;
pub use crate::tracker::TrackerEvent;
use crate::tracker::{HoldersConfig, RegistryConfig, Tracker};
use crate::transport::SharedTransport;
use crate::wire::{decode, Message};

type Events = Option<mpsc::Sender<TrackerEvent>>;

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

/// [`run_tracker_limited`] with address tokens keyed from `key_seed` (simulations pass
/// theirs, to replay exactly).
pub async fn run_tracker_seeded(
    transports: Vec<SharedTransport>,
    config: RegistryConfig,
    rate: RateConfig,
    key_seed: u64,
    events: Option<mpsc::Sender<TrackerEvent>>,
) -> std::io::Result<()> {
    let tracker = Tracker::new(config, rate).with_key_seed(key_seed);
    serve(transports, tracker, events).await
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
    let tracker = Tracker::new(config, rate)
        .with_key_seed(random_seed())
        .with_holders(holders);
    serve(transports, tracker, events).await
}

/// Runs `tracker` on `transports`, with its expiry timer.
async fn serve(
    transports: Vec<SharedTransport>,
    tracker: Tracker,
    events: Option<mpsc::Sender<TrackerEvent>>,
) -> std::io::Result<()> {
    let registry = Arc::new(Mutex::new(tracker));
    let mut tasks = tokio::task::JoinSet::new();
    for t in transports {
        let registry = registry.clone();
        let events = events.clone();
        tasks.spawn(async move {
            loop {
                let (from, bytes) = t.recv_from().await?;
                let proven = t.is_reliable();
                let (reply, others) = handle(&registry, &events, from, &bytes, proven);
                if let Some(reply) = reply {
                    // A failed reply is the client's problem (it retries); keep serving.
                    let _ = t.send_to(from, &reply.encode()).await;
                }
                // Introductions, after the answer: its asker sends its low-TTL probes on
                // the answer, before the introduced peer's probes can reach it.
                for (to, msg) in others {
                    let _ = t.send_to(to, &msg.encode()).await;
                }
            }
        });
    }
    let expiry_registry = registry.clone();
    tasks.spawn(async move {
        loop {
            let next = expiry_registry
                .lock()
                .expect("registry lock")
                .next_expiry()
                .map(Instant::from_std);
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => tokio::time::sleep(EMPTY_TABLE_RECHECK).await,
            }
            let gone = expiry_registry
                .lock()
                .expect("registry lock")
                .expire(Instant::now().into_std());
            for name in gone {
                emit(&events, TrackerEvent::Expired { name });
            }
        }
    });
    // The first task to end ends the tracker (a transport error).
    match tasks.join_next().await {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(std::io::Error::other(e)),
        None => Ok(()),
    }
}

/// How long the expiry task waits when the table is empty (a registration wakes nothing, so
/// it re-checks at this pace).
const EMPTY_TABLE_RECHECK: std::time::Duration = std::time::Duration::from_millis(250);

fn emit(events: &Events, e: TrackerEvent) {
    if let Some(tx) = events {
        let _ = tx.try_send(e); // full: dropped, never waited for
    }
}

fn handle(
    tracker: &Mutex<Tracker>,
    events: &Events,
    from: SocketAddr,
    bytes: &[u8],
    addresses_proven: bool,
) -> (Option<Message>, Vec<(SocketAddr, Message)>) {
    // Undecodable input is dropped silently: answering would let strangers make us talk.
    let Ok(msg) = decode(bytes) else {
        return (None, Vec::new());
    };
    let now = Instant::now().into_std();
    let mut tracker = tracker.lock().expect("registry lock");
    let (reply, event) = tracker.handle_on(now, from, msg, addresses_proven);
    let others = std::iter::from_fn(|| tracker.poll_transmit()).collect();
    drop(tracker);
    if let Some(e) = event {
        emit(events, e);
    }
    (reply, others)
}
