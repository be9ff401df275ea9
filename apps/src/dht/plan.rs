//! The pure parts of DHT announcing and lookup: which hashes an announce round covers (a
//! bounded number, rotating through the rest), which are new since the last round, and how the
//! addresses the DHT returns join the tracker's holders. No I/O and no clock: unit-tested here.

use std::collections::{BTreeSet, HashSet};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;

use p2p_proto::wire::{ContentHash, PeerInfo, TransportKind};

/// Most content hashes announced in one round (every [`super::ANNOUNCE_EVERY`]). A share with
/// more is announced in turns: each round takes the next `MAX_PER_ROUND` (wrapping), so every
/// hash is announced once every `ceil(n / MAX_PER_ROUND)` rounds; past 2,000 hashes some of
/// them are off the DHT part of the time (BEP 5 nodes drop an announce after about 30 min).
pub(crate) const MAX_PER_ROUND: usize = 1_000;

/// Most addresses one lookup keeps: more than [`crate::commands::swarm_get`] uses as sources,
/// so that those that do not answer leave enough.
pub(crate) const MAX_FOUND: usize = 64;

/// What one announce round covers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Round {
    /// The hashes to announce now (at most the cap).
    pub(crate) hashes: Vec<ContentHash>,
    /// How many of the share's hashes wait for a later round.
    pub(crate) deferred: usize,
    /// Where the next round starts.
    pub(crate) next: usize,
}

/// The round starting at `cursor` over `all` (sorted, without duplicates): every hash when
/// they fit in `cap`, else `cap` of them from `cursor` on, wrapping to the start.
pub(crate) fn plan_round(all: &[ContentHash], cursor: usize, cap: usize) -> Round {
    if all.len() <= cap {
        return Round {
            hashes: all.to_vec(),
            deferred: 0,
            next: 0,
        };
    }
    let start = cursor % all.len();
    let hashes = all.iter().cycle().skip(start).take(cap).copied().collect();
    Round {
        hashes,
        deferred: all.len() - cap,
        next: (start + cap) % all.len(),
    }
}

/// The hashes of `now` that `before` (the share at its last check) lacks, at most `cap`:
/// announced at once when the share changes, without waiting for the next round.
pub(crate) fn fresh(
    before: &HashSet<ContentHash>,
    now: &[ContentHash],
    cap: usize,
) -> Vec<ContentHash> {
    now.iter()
        .filter(|h| !before.contains(h))
        .take(cap)
        .copied()
        .collect()
}

/// The tracker's `holders` followed by the addresses the DHT returned that none of them has,
/// each named `dht:ADDR` (the DHT says where, not who) and taken to speak `transport` (the
/// key it was found under says so); duplicates dropped, at most [`MAX_FOUND`] from the DHT.
pub(crate) fn merge(
    holders: Vec<PeerInfo>,
    found: &[SocketAddrV4],
    transport: TransportKind,
) -> Vec<PeerInfo> {
    let mut seen: BTreeSet<SocketAddr> = holders.iter().map(|p| p.addr).collect();
    let mut all = holders;
    let from_tracker = all.len();
    for addr in found {
        let addr = SocketAddr::V4(*addr);
        if all.len() - from_tracker >= MAX_FOUND {
            break;
        }
        if !seen.insert(addr) {
            continue;
        }
        all.push(PeerInfo {
            name: Arc::from(dht_name(addr)),
            addr,
            transport,
        });
    }
    all
}

/// How a source found on the DHT is named in reports: `dht:1.2.3.4:7000`.
pub(crate) fn dht_name(addr: SocketAddr) -> String {
    format!("dht:{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(n: u8) -> Vec<ContentHash> {
        let mut v: Vec<_> = (0..n).map(|i| ContentHash::of(&[i])).collect();
        v.sort_by_key(|h| h.0);
        v
    }

    #[test]
    fn a_small_share_is_announced_whole_every_round() {
        let all = hashes(5);
        let round = plan_round(&all, 3, 10);
        assert_eq!(round.hashes, all);
        assert_eq!((round.deferred, round.next), (0, 0));
    }

    #[test]
    fn a_large_share_rotates_through_every_hash() {
        let all = hashes(10);
        let mut cursor = 0;
        let mut covered = HashSet::new();
        for _ in 0..3 {
            let round = plan_round(&all, cursor, 4);
            assert_eq!(round.hashes.len(), 4);
            assert_eq!(round.deferred, 6);
            covered.extend(round.hashes);
            cursor = round.next;
        }
        // 3 rounds of 4 cover all 10 (wrapping at the end).
        assert_eq!(covered.len(), 10);
        assert_eq!(cursor, 2);
    }

    #[test]
    fn a_cursor_past_a_shrunk_share_wraps() {
        let all = hashes(6);
        let round = plan_round(&all, 100, 4);
        assert_eq!(round.hashes[0], all[100 % 6]);
    }

    #[test]
    fn only_new_hashes_are_fresh_and_they_are_capped() {
        let all = hashes(6);
        let before: HashSet<_> = all[..2].iter().copied().collect();
        assert_eq!(fresh(&before, &all, 10), all[2..].to_vec());
        assert_eq!(fresh(&before, &all, 3), all[2..5].to_vec());
        assert!(fresh(&all.iter().copied().collect(), &all, 10).is_empty());
    }

    fn peer(name: &str, addr: &str) -> PeerInfo {
        PeerInfo {
            name: Arc::from(name),
            addr: addr.parse().unwrap(),
            transport: TransportKind::Udp,
        }
    }

    #[test]
    fn dht_finds_join_the_tracker_holders_once_each() {
        let holders = vec![peer("alice", "127.0.0.1:7000")];
        let found: Vec<SocketAddrV4> = ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7001"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let all = merge(holders, &found, TransportKind::Udp);
        let names: Vec<&str> = all.iter().map(|p| &*p.name).collect();
        assert_eq!(names, ["alice", "dht:127.0.0.1:7001"]);
    }

    #[test]
    fn dht_finds_are_capped() {
        let found: Vec<SocketAddrV4> = (0..500u16)
            .map(|p| SocketAddrV4::new([127, 0, 0, 1].into(), 1000 + p))
            .collect();
        let all = merge(Vec::new(), &found, TransportKind::Tcp);
        assert_eq!(all.len(), MAX_FOUND);
        assert!(all.iter().all(|p| p.transport == TransportKind::Tcp));
    }
}
