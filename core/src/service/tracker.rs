//! The tracker service: answers register, heartbeat, unregister and list requests on any
//! number of transports, sharing one [`Registry`], and expires silent peers on time.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::paging::paginate;
use crate::limits::{RateConfig, RateLimiter};
use crate::tracker::{Registry, RegistryConfig};
use crate::transport::SharedTransport;
use crate::wire::{decode, BoundedVec, Message, RegisterOutcome, TransportKind};

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

type Events = Option<mpsc::UnboundedSender<TrackerEvent>>;

/// Runs the tracker on `transports` until one of them fails, with the default per-source
/// rate limit. Events go to `events`, if given.
pub async fn run_tracker(
    transports: Vec<SharedTransport>,
    config: RegistryConfig,
    events: Option<mpsc::UnboundedSender<TrackerEvent>>,
) -> std::io::Result<()> {
    run_tracker_limited(transports, config, RateConfig::default(), events).await
}

/// The registry and the per-source request limiter, under one lock.
#[derive(Debug)]
struct State {
    registry: Registry,
    limiter: RateLimiter,
}

/// [`run_tracker`] with a given per-source rate limit: requests beyond it are dropped.
pub async fn run_tracker_limited(
    transports: Vec<SharedTransport>,
    config: RegistryConfig,
    rate: RateConfig,
    events: Option<mpsc::UnboundedSender<TrackerEvent>>,
) -> std::io::Result<()> {
    let registry = Arc::new(Mutex::new(State {
        registry: Registry::new(config),
        limiter: RateLimiter::new(rate),
    }));
    let mut tasks = tokio::task::JoinSet::new();
    for t in transports {
        let registry = registry.clone();
        let events = events.clone();
        tasks.spawn(async move {
            loop {
                let (from, bytes) = t.recv_from().await?;
                if let Some(reply) = handle(&registry, &events, from, &bytes) {
                    // A failed reply is the client's problem (it retries); keep serving.
                    let _ = t.send_to(from, &reply.encode()).await;
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
                .registry
                .next_expiry()
                .map(Instant::from_std);
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => tokio::time::sleep(EMPTY_TABLE_RECHECK).await,
            }
            let gone = expiry_registry
                .lock()
                .expect("registry lock")
                .registry
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
        let _ = tx.send(e);
    }
}

fn handle(
    state: &Mutex<State>,
    events: &Events,
    from: SocketAddr,
    bytes: &[u8],
) -> Option<Message> {
    // Undecodable input is dropped silently: answering would let strangers make us talk.
    let msg = decode(bytes).ok()?;
    let now = Instant::now().into_std();
    let mut state = state.lock().expect("registry lock");
    if !state.limiter.allow(now, from.ip()) {
        return None; // flooding: dropped like a lost datagram
    }
    let reg = &mut state.registry;
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
            let outcome = match reg.register(now, &name, from, port, transport) {
                Ok(new) => {
                    if new {
                        emit(
                            events,
                            TrackerEvent::Registered {
                                name: name.clone(),
                                addr: SocketAddr::new(from.ip(), port),
                                transport,
                            },
                        );
                    }
                    RegisterOutcome::Accepted {
                        ttl_ms: reg.config().ttl.as_millis() as u64,
                        heartbeat_ms: reg.config().heartbeat.as_millis() as u64,
                    }
                }
                Err(e) => {
                    let reason = e.to_string();
                    emit(
                        events,
                        TrackerEvent::Refused {
                            name: name.clone(),
                            from,
                            reason: reason.clone(),
                        },
                    );
                    RegisterOutcome::Refused { reason }
                }
            };
            Some(Message::RegisterReply { request, outcome })
        }
        Message::Unregister { request, name } => {
            if reg.unregister(&name, from.ip()) {
                emit(events, TrackerEvent::Unregistered { name });
            }
            Some(Message::UnregisterReply { request })
        }
        Message::ListPeers { request, page } => {
            let pages = paginate(reg.list(now));
            let n = pages.len() as u32;
            match pages.into_iter().nth(page as usize) {
                Some(peers) => Some(Message::PeerList {
                    request,
                    page,
                    pages: n,
                    peers: BoundedVec(peers),
                }),
                None => Some(Message::Error {
                    request,
                    reason: format!("no page {page} (there are {n})"),
                }),
            }
        }
        _ => None,
    }
}
