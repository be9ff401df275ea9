//! Keeping a peer's content announced on the DHT: every content hash its endpoint shares
//! (files and folder collections: what it announces to a tracker) under its [`DhtKey`] with
//! the endpoint's port, again every [`ANNOUNCE_EVERY`] (BEP 5 nodes forget an announce after
//! about 30 min), and the new hashes as soon as a check of the share finds them.
//!
//! Bounded: at most [`ANNOUNCES_IN_FLIGHT`] announces at once, at most
//! [`MAX_PER_ROUND`](super::plan::MAX_PER_ROUND) hashes a round (a larger share is announced
//! in turns, with a log line saying how many wait), and the share is checked at most every
//! [`CHECK_EVERY`] (less often when listing it takes long).

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use p2p_core::collection::{is_collection, Manifest};
use p2p_core::service::EndpointHandle;
use p2p_proto::wire::{ContentHash, TransportKind};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::plan::{fresh, plan_round, MAX_PER_ROUND};
use super::{DhtKey, DhtNode};

/// How often every hash is announced again.
pub(crate) const ANNOUNCE_EVERY: Duration = Duration::from_secs(15 * 60);
/// Announces running at once, at most (each is a lookup of the key's closest nodes, then an
/// `announce_peer` to each of them).
pub(crate) const ANNOUNCES_IN_FLIGHT: usize = 8;
/// How often the share is checked for new content (a listing of the endpoint's own index:
/// a rescan of the folder that hashes only what changed).
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(60);
/// A check of the share takes at most this share of the time: one that takes 1 s waits
/// 100 s for the next.
const CHECK_DUTY: u32 = 100;

/// What one batch of announces came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Announced {
    /// Announces the DHT accepted (stored by at least one node).
    pub(crate) stored: usize,
    /// Announces that failed (no node reached, or every one refused).
    pub(crate) failed: usize,
}

/// Announces every hash of `hashes` under its key for `transport` with `port`, at most
/// [`ANNOUNCES_IN_FLIGHT`] at once.
pub(crate) async fn announce_all(
    node: &DhtNode,
    hashes: &[ContentHash],
    transport: TransportKind,
    port: u16,
) -> Announced {
    let mut running = JoinSet::new();
    let mut outcome = Announced::default();
    let mut next = hashes.iter();
    loop {
        while running.len() < ANNOUNCES_IN_FLIGHT {
            let Some(hash) = next.next() else { break };
            let (dht, key) = (node.inner().clone(), DhtKey::of(hash, transport));
            running.spawn(async move { (key, dht.announce_peer(key.id(), Some(port)).await) });
        }
        let Some(joined) = running.join_next().await else {
            return outcome;
        };
        match joined {
            Ok((_, Ok(_))) => outcome.stored += 1,
            Ok((key, Err(e))) => {
                tracing::debug!(%key, error = %e, "DHT announce failed");
                outcome.failed += 1;
            }
            Err(_) => outcome.failed += 1,
        }
    }
}

/// The content hashes `endpoint` shares, as it announces them to a tracker: every file's but
/// empty ones (everyone has that content), every subfolder's collection (both as its listing
/// shows them) and the share's own collection (not listed: the manifest of the listing, if the
/// endpoint answers for its hash as a folder's); sorted, each once. `me`: the endpoint's own
/// address, reachable from itself.
pub(crate) async fn shared_hashes(
    endpoint: &EndpointHandle,
    me: SocketAddr,
) -> Result<Vec<ContentHash>, p2p_core::service::ServiceError> {
    let (_, entries) = endpoint.index(me).await?;
    let mut set: BTreeSet<[u8; 32]> = entries
        .iter()
        .filter(|e| e.size > 0 || is_collection(e))
        .map(|e| e.hash.0)
        .collect();
    if let Ok((manifest, _)) = Manifest::from_listing("", &entries) {
        let top = manifest.hash();
        let held = endpoint.entry_by_hash(me, top).await;
        if held.is_ok_and(|h| h.is_some_and(|h| is_collection(&h.entry))) {
            set.insert(top.0);
        }
    }
    Ok(set.into_iter().map(ContentHash).collect())
}

/// What the announcer tells its caller after each round (for the peer's output).
pub(crate) type RoundReport = (Announced, usize);

/// Keeps what `endpoint` (reachable at `me`, listening on `port` over `transport`) shares
/// announced on the DHT through `node`, until the task is dropped. After each full round,
/// sends what it came to and how many hashes wait for a later round on `reports` (a full
/// channel skips a report: the announcer never waits for its reader).
pub(crate) async fn keep_announced(
    node: DhtNode,
    endpoint: EndpointHandle,
    me: SocketAddr,
    transport: TransportKind,
    port: u16,
    reports: tokio::sync::mpsc::Sender<RoundReport>,
) {
    let mut cursor = 0;
    // The share at the last check: what is not in it is new.
    let mut before: HashSet<ContentHash> = HashSet::new();
    let mut fresh_this_period = 0;
    let mut next_round = Instant::now();
    loop {
        let started = Instant::now();
        let share = match shared_hashes(&endpoint, me).await {
            Ok(share) => share,
            Err(e) => {
                tracing::warn!("cannot list the share to announce it on the DHT: {e}");
                tokio::time::sleep(CHECK_EVERY).await;
                continue;
            }
        };
        let check_took = started.elapsed();
        if Instant::now() >= next_round {
            let round = plan_round(&share, cursor, MAX_PER_ROUND);
            if round.deferred > 0 {
                tracing::info!(
                    "the share holds {} content hashes: announcing {} on the DHT this round, \
                     the other {} in the next rounds (at most {MAX_PER_ROUND} every {} min)",
                    share.len(),
                    round.hashes.len(),
                    round.deferred,
                    ANNOUNCE_EVERY.as_secs() / 60
                );
            }
            let done = announce_all(&node, &round.hashes, transport, port).await;
            let _ = reports.try_send((done, round.deferred));
            cursor = round.next;
            fresh_this_period = 0;
            next_round = Instant::now() + ANNOUNCE_EVERY;
        } else {
            let cap = MAX_PER_ROUND.saturating_sub(fresh_this_period);
            let new = fresh(&before, &share, cap);
            if !new.is_empty() {
                let done = announce_all(&node, &new, transport, port).await;
                tracing::info!(
                    stored = done.stored,
                    failed = done.failed,
                    "announced new content on the DHT"
                );
                fresh_this_period += new.len();
            }
        }
        before = share.into_iter().collect();
        let pause = CHECK_EVERY.max(check_took * CHECK_DUTY);
        tokio::time::sleep_until(next_round.min(Instant::now() + pause)).await;
    }
}
