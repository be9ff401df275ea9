//! Publishing a peer's signed record on the DHT and resolving a key's record (see
//! [`record`](super::record) for the format): a peer with `--dht` keeps its entry in its
//! key's record, again every [`REPUBLISH_EVERY`] (BEP 44 nodes may forget an item after about
//! 2 hours) and as soon as its addresses change (checked every [`ADDRESS_CHECK_EVERY`]);
//! `get` and `resolve` read the record of a key, bounded by [`RESOLVE_WAIT`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_lite::StreamExt;
use p2p_proto::identity::{Identity, PublicKey};
use p2p_proto::wire::TransportKind;
use tokio::time::Instant;

use super::lookup::SETTLE;
use super::record::{self, hex, merged, open, seal, RecordError, RecordPeer, Signed, SALT};
use super::DhtNode;

/// How often a peer publishes its record again.
pub(crate) const REPUBLISH_EVERY: Duration = Duration::from_secs(30 * 60);
/// How often a peer checks whether its addresses changed (a new record goes out at once if
/// they did).
pub(crate) const ADDRESS_CHECK_EVERY: Duration = Duration::from_secs(60);
/// The longest a resolution waits for a record: past it, the key has none on the DHT.
pub(crate) const RESOLVE_WAIT: Duration = Duration::from_secs(10);
/// A publish that failed is tried again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Why a key's record cannot be had.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ResolveError {
    /// No DHT node had a record of the key (or none answered).
    #[error(
        "no record for key {key} on the DHT (looked up for up to {secs} s; {nodes} DHT nodes known)"
    )]
    NotFound {
        /// The key (hex).
        key: String,
        /// The bound, in seconds.
        secs: u64,
        /// The nodes the lookup node knew at the end (0: the DHT was not reached).
        nodes: usize,
    },
    /// Records came, and none passed the checks.
    #[error("the record found for key {key} is not valid: {source}")]
    Invalid {
        /// The key (hex).
        key: String,
        /// What is wrong with it.
        source: RecordError,
    },
}

/// The record of `key`: the valid item of the highest seq among those that came within
/// `wait`, or within [`SETTLE`] after the first valid one (a node that missed the latest
/// publish may answer first with an older one).
pub(crate) async fn resolve(
    node: &DhtNode,
    key: &PublicKey,
    wait: Duration,
) -> Result<Signed, ResolveError> {
    resolve_timed(node, key, wait).await.0
}

/// [`resolve`], and how long the first valid record took to come, if one came.
pub(crate) async fn resolve_timed(
    node: &DhtNode,
    key: &PublicKey,
    wait: Duration,
) -> (Result<Signed, ResolveError>, Option<Duration>) {
    let mut items = node.inner().get_mutable(key, Some(SALT), None);
    let started = Instant::now();
    let deadline = started + wait;
    let mut first_after = None;
    let mut settle: Option<Instant> = None;
    let mut best: Option<Signed> = None;
    let mut invalid: Option<RecordError> = None;
    loop {
        let until = settle.map_or(deadline, |s| s.min(deadline));
        let Ok(Some(item)) = tokio::time::timeout_at(until, items.next()).await else {
            break;
        };
        match open(&item, key) {
            Ok(signed) => {
                if best.as_ref().is_none_or(|b| signed.seq > b.seq) {
                    best = Some(signed);
                }
                if settle.is_none() {
                    settle = Some(Instant::now() + SETTLE);
                    first_after = Some(started.elapsed());
                }
            }
            Err(e) => {
                tracing::debug!(key = %hex(key), error = %e, "a DHT node gave an invalid record");
                invalid = Some(e);
            }
        }
    }
    let result = match (best, invalid) {
        (Some(best), _) => Ok(best),
        (None, Some(source)) => Err(ResolveError::Invalid {
            key: hex(key),
            source,
        }),
        (None, None) => Err(ResolveError::NotFound {
            key: hex(key),
            secs: wait.as_secs(),
            nodes: node.nodes_known().await,
        }),
    };
    (result, first_after)
}

/// What a publish came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Published {
    /// The record as published.
    pub(crate) record: Signed,
    /// How many DHT nodes stored it.
    pub(crate) stored_at: u32,
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    /// The record does not fit (never for a record of one peer).
    #[error(transparent)]
    Record(#[from] RecordError),
    /// No DHT node stored it.
    #[error("no DHT node stored the record: {0}")]
    Put(#[from] mainline::errors::PutMutableError),
}

/// Publishes `me` in the record of `identity`'s key: reads the current record (to keep the
/// entries of the key's other peers and to sign a seq above it), merges `me` in, signs it
/// with a seq above both that and `last_seq` (0: none yet), and stores it on the DHT.
pub(crate) async fn publish(
    node: &DhtNode,
    identity: &Identity,
    me: RecordPeer,
    last_seq: i64,
) -> Result<Published, PublishError> {
    let key = identity.public();
    let current = resolve(node, &key, RESOLVE_WAIT).await.ok();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let record = merged(current.as_ref().map(|c| &c.record), me, now.as_secs());
    let now_ms = i64::try_from(now.as_millis()).unwrap_or(i64::MAX);
    let seq = now_ms
        .max(current.as_ref().map_or(0, |c| c.seq.saturating_add(1)))
        .max(last_seq.saturating_add(1));
    let item = seal(identity.secret(), &record, seq)?;
    let outcome = node.inner().put_mutable(item, None).await?;
    Ok(Published {
        record: Signed { record, seq },
        stored_at: outcome.stored_at,
    })
}

/// The unix time now, in seconds.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The addresses of this host's interfaces (empty when they cannot be listed).
fn interface_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ifaddr in addrs {
        let Some(address) = ifaddr.address else {
            continue;
        };
        if let Some(v4) = address.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = address.as_sockaddr_in6() {
            out.push(IpAddr::V6(v6.ip()));
        }
    }
    out
}

/// The addresses a peer listening on `listen` publishes now (see
/// [`record::addresses_for`]), with the address DHT nodes see this host at.
pub(crate) async fn own_addresses(node: &DhtNode, listen: SocketAddr) -> Vec<SocketAddr> {
    let public: Option<Ipv4Addr> = match listen.ip().is_unspecified() {
        true => node.inner().info().await.public_address().map(|a| *a.ip()),
        false => None,
    };
    record::addresses_for(listen, public, &interface_addresses())
}

/// What the publisher tells its caller after each publish (for the peer's output).
pub(crate) type PublishReport = Result<Published, String>;

/// Keeps the entry of the peer `name` (listening on `listen` over `transport`) in the record
/// of `identity`'s key on the DHT through `node`, until the task is dropped: publishes it at
/// once, again every [`REPUBLISH_EVERY`], when its addresses change, and [`RETRY_AFTER`] a
/// failure. Sends each outcome on `reports` (a full channel skips one: the publisher never
/// waits for its reader).
pub(crate) async fn keep_published(
    node: DhtNode,
    identity: Identity,
    name: String,
    transport: TransportKind,
    listen: SocketAddr,
    reports: tokio::sync::mpsc::Sender<PublishReport>,
) {
    let mut last_seq = 0;
    let mut published: Option<Vec<SocketAddr>> = None;
    let mut next_publish = Instant::now();
    loop {
        let addrs = own_addresses(&node, listen).await;
        let changed = published.as_ref().is_some_and(|p| *p != addrs);
        if changed || Instant::now() >= next_publish {
            let me = RecordPeer {
                name: name.clone(),
                transport,
                addrs: addrs.clone(),
                at: unix_now(),
            };
            match publish(&node, &identity, me, last_seq).await {
                Ok(done) => {
                    last_seq = done.record.seq;
                    published = Some(addrs);
                    next_publish = Instant::now() + REPUBLISH_EVERY;
                    let _ = reports.try_send(Ok(done));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "publishing the peer record failed");
                    next_publish = Instant::now() + RETRY_AFTER;
                    let _ = reports.try_send(Err(e.to_string()));
                }
            }
        }
        let check = Instant::now() + ADDRESS_CHECK_EVERY;
        tokio::time::sleep_until(next_publish.min(check)).await;
    }
}
