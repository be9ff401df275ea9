//! Looking content up on the DHT: `get_peers` on its key, bounded in time and in the
//! addresses kept.

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::time::Duration;

use futures_lite::StreamExt;
use p2p_proto::wire::{ContentHash, TransportKind};
use tokio::time::Instant;

use super::plan::MAX_FOUND;
use super::{DhtKey, DhtNode};

/// The longest a lookup waits for its first address: past it, nobody announced the content
/// (or the DHT is unreachable), and `get` says so.
pub(crate) const LOOKUP_WAIT: Duration = Duration::from_secs(10);

/// How long a lookup goes on collecting after its first address, for the holders that the
/// next nodes on the path know (the download starts with what came by then; later finds join
/// it through the next lookups).
pub(crate) const SETTLE: Duration = Duration::from_millis(300);

/// What a lookup found.
#[derive(Debug, Default)]
pub(crate) struct Lookup {
    /// The addresses announced under the key, each once, at most [`MAX_FOUND`].
    pub(crate) found: Vec<SocketAddrV4>,
    /// The DHT nodes the node knew when the lookup ended (for the message when nothing was
    /// found: 0 means the DHT was not reached at all).
    pub(crate) nodes_known: usize,
    /// How long the first address took to come (when `get` can start), if one came (read by
    /// the 100-peer simulation, logged otherwise).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) first_after: Option<Duration>,
}

/// Looks `hash` up on the DHT under the key of `transport` (the peers a download over it can
/// talk to): the addresses that came within `wait`, or within [`SETTLE`] after the first.
pub(crate) async fn lookup(
    node: &DhtNode,
    hash: &ContentHash,
    transport: TransportKind,
    wait: Duration,
) -> Lookup {
    let key = DhtKey::of(hash, transport);
    let mut answers = node.inner().get_peers(key.id());
    let started = Instant::now();
    let deadline = started + wait;
    let mut settle: Option<Instant> = None;
    let mut first_after = None;
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    loop {
        let until = settle.map_or(deadline, |s| s.min(deadline));
        let Ok(Some(batch)) = tokio::time::timeout_at(until, answers.next()).await else {
            // The time is up, or the query asked every node it could.
            break;
        };
        for addr in batch {
            if found.len() < MAX_FOUND && addr.port() != 0 && seen.insert(addr) {
                found.push(addr);
            }
        }
        if !found.is_empty() && settle.is_none() {
            settle = Some(Instant::now() + SETTLE);
            first_after = Some(started.elapsed());
        }
    }
    tracing::debug!(%key, found = found.len(), ?first_after, "DHT lookup done");
    Lookup {
        found,
        nodes_known: node.nodes_known().await,
        first_after,
    }
}
