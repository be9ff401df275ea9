//! `Holders`: the tracker's content index, which registered peers announced which BLAKE3
//! content hashes (`Announce`), for `WhoHas`.
//!
//! Two maps kept in step: each peer's announced hashes (a set, so a hash counts once per
//! peer), and each hash's holders (peer names, in the order they announced it). The
//! [`Registry`](super::Registry) owns the index and drops a peer's hashes whenever the peer
//! goes (expiry, unregistration, its name taken over after it lapsed), so only registered
//! peers are ever listed.
//!
//! Bounds: at most [`HoldersConfig::per_peer`] hashes for one peer and
//! [`HoldersConfig::total`] (peer, hash) entries in all; hashes past either are dropped, not
//! refused. An entry costs about 120 bytes (the hash in the peer's set and as a key of the
//! holders map, the holder's name pointer), so the default total is about 240 MB at most.
//! Adding a hash is O(1); removing a peer is O(its hashes × their holders), which is at most
//! the total. A page of holders is a slice of one hash's list: O(page), whatever the table.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::wire::{ContentHash, RequestId};

/// Limits of the content index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldersConfig {
    /// Most hashes kept for one peer.
    pub per_peer: usize,
    /// Most (peer, hash) entries kept in all.
    pub total: usize,
}

/// Hashes kept for one peer, by default.
pub const MAX_HASHES_PER_PEER: usize = 20_000;
/// Entries kept in all, by default.
pub const MAX_HASH_ENTRIES: usize = 2_000_000;

impl Default for HoldersConfig {
    fn default() -> Self {
        HoldersConfig {
            per_peer: MAX_HASHES_PER_PEER,
            total: MAX_HASH_ENTRIES,
        }
    }
}

/// What one peer announced.
#[derive(Debug)]
struct Announcement {
    /// The name, shared with the holders lists (removal compares pointers).
    name: Arc<str>,
    /// The request id of the batch that started it (`first`): a copy of that batch that
    /// comes again (sent again, or duplicated on the way) after later batches must not wipe
    /// them.
    started_by: RequestId,
    hashes: HashSet<ContentHash>,
}

/// See the [module documentation](self).
#[derive(Debug, Default)]
pub(super) struct Holders {
    config: HoldersConfig,
    peers: HashMap<String, Announcement>,
    by_hash: HashMap<ContentHash, Vec<Arc<str>>>,
    entries: usize,
}

impl Holders {
    pub(super) fn new(config: HoldersConfig) -> Self {
        Holders {
            config,
            ..Holders::default()
        }
    }

    pub(super) fn config(&self) -> &HoldersConfig {
        &self.config
    }

    /// Takes a batch of `name`'s announcement (the peer is known to be registered); returns
    /// the hashes now kept for it, or `None` for a later batch with no announcement started
    /// (the tracker forgot it since its first batch, which must come again).
    pub(super) fn announce(
        &mut self,
        name: &str,
        request: RequestId,
        first: bool,
        hashes: &[ContentHash],
    ) -> Option<u32> {
        let restart = first && self.peers.get(name).is_none_or(|a| a.started_by != request);
        if restart {
            self.forget(name);
            self.peers.insert(
                name.to_string(),
                Announcement {
                    name: name.into(),
                    started_by: request,
                    hashes: HashSet::new(),
                },
            );
        }
        let announcement = self.peers.get_mut(name)?;
        for hash in hashes {
            if announcement.hashes.len() >= self.config.per_peer
                || self.entries >= self.config.total
            {
                break; // past a cap: the rest are dropped
            }
            if announcement.hashes.insert(*hash) {
                self.by_hash
                    .entry(*hash)
                    .or_default()
                    .push(announcement.name.clone());
                self.entries += 1;
            }
        }
        Some(announcement.hashes.len() as u32)
    }

    /// Drops everything `name` announced.
    pub(super) fn forget(&mut self, name: &str) {
        let Some(gone) = self.peers.remove(name) else {
            return;
        };
        self.entries -= gone.hashes.len();
        for hash in gone.hashes {
            if let Some(holders) = self.by_hash.get_mut(&hash) {
                // Order kept: a page walk sees each holder at most once while others leave.
                if let Some(at) = holders.iter().position(|n| Arc::ptr_eq(n, &gone.name)) {
                    holders.remove(at);
                }
                if holders.is_empty() {
                    self.by_hash.remove(&hash);
                }
            }
        }
    }

    /// Hashes kept for `name` (`None`: it announced nothing since it registered).
    pub(super) fn held(&self, name: &str) -> Option<u32> {
        self.peers.get(name).map(|a| a.hashes.len() as u32)
    }

    /// The names of the peers that announced `hash`, oldest first.
    pub(super) fn of(&self, hash: &ContentHash) -> &[Arc<str>] {
        self.by_hash.get(hash).map_or(&[], Vec::as_slice)
    }

    /// (peer, hash) entries kept.
    pub(super) fn entries(&self) -> usize {
        self.entries
    }

    /// Checks that both maps agree (tests).
    #[cfg(test)]
    pub(super) fn check(&self) {
        let mut counted = 0;
        for (name, a) in &self.peers {
            assert_eq!(&*a.name, name.as_str());
            assert!(a.hashes.len() <= self.config.per_peer);
            for h in &a.hashes {
                let holders = &self.by_hash[h];
                assert_eq!(
                    holders.iter().filter(|n| Arc::ptr_eq(n, &a.name)).count(),
                    1
                );
            }
            counted += a.hashes.len();
        }
        assert_eq!(counted, self.entries);
        assert!(self.entries <= self.config.total);
        let listed: usize = self.by_hash.values().map(Vec::len).sum();
        assert_eq!(listed, self.entries);
        assert!(self.by_hash.values().all(|v| !v.is_empty()));
    }
}
