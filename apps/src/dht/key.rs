//! The DHT key of a content hash: where a peer announces content on the Mainline DHT and
//! where `get` looks it up.
//!
//! A key is 20 bytes (a BEP 5 info hash): the first 20 bytes of
//! `BLAKE3("p2p-dht-v1:" || transport || ":" || content hash)`, where `transport` is `udp` or
//! `tcp` (the transport the announcing peer listens on: a UDP downloader finds only the peers
//! it can talk to) and the content hash is the 32 raw bytes of the file's or the collection's
//! BLAKE3 hash.
//!
//! - **Never the raw hash's prefix**: a BitTorrent v2 swarm's info hash could then coincide
//!   with ours (and BitTorrent clients would connect to our peers and we to theirs); with the
//!   domain string in front, a collision needs a BLAKE3 collision.
//! - **One-way**: a DHT node that stores the key learns nothing about the content unless it
//!   already knows the content hash (and so could fetch it anyway).
//! - **Versioned**: `v1` changes if the derivation ever does; peers of another version then
//!   simply do not meet on the DHT, as with the wire protocol's version byte.

use std::fmt;

use p2p_proto::wire::{ContentHash, TransportKind};

/// What every key's preimage starts with: the scheme's name and version.
pub(crate) const KEY_DOMAIN: &str = "p2p-dht-v1:";

/// A 20-byte Mainline DHT key (info hash) derived from a content hash (see the
/// [module documentation](self)).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct DhtKey(pub(crate) [u8; 20]);

impl DhtKey {
    /// The key under which peers listening on `transport` announce `hash`.
    pub(crate) fn of(hash: &ContentHash, transport: TransportKind) -> DhtKey {
        let mut preimage = Vec::with_capacity(KEY_DOMAIN.len() + 4 + 32);
        preimage.extend_from_slice(KEY_DOMAIN.as_bytes());
        preimage.extend_from_slice(transport_label(transport).as_bytes());
        preimage.push(b':');
        preimage.extend_from_slice(&hash.0);
        let digest = ContentHash::of(&preimage);
        let mut key = [0u8; 20];
        key.copy_from_slice(&digest.0[..20]);
        DhtKey(key)
    }

    /// The key as the `mainline` crate takes it.
    pub(crate) fn id(&self) -> mainline::Id {
        mainline::Id::from_bytes(self.0).expect("20 bytes make an Id")
    }
}

/// The transport's name in the key's preimage.
fn transport_label(transport: TransportKind) -> &'static str {
    match transport {
        TransportKind::Udp => "udp",
        TransportKind::Tcp => "tcp",
    }
}

impl fmt::Display for DhtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for DhtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DhtKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The derivation is a contract between builds: this vector pins it.
    #[test]
    fn key_of_a_known_hash_is_pinned() {
        let hash = ContentHash::of(b"hello");
        let key = DhtKey::of(&hash, TransportKind::Udp);
        let mut preimage = b"p2p-dht-v1:udp:".to_vec();
        preimage.extend_from_slice(&hash.0);
        assert_eq!(key.0[..], ContentHash::of(&preimage).0[..20]);
        assert_eq!(key.to_string(), PINNED_UDP_KEY_OF_HELLO);
    }

    /// `DhtKey::of(blake3("hello"), udp)`, as computed when the scheme was written.
    const PINNED_UDP_KEY_OF_HELLO: &str = "9ec53dce975057f9946535d1e1add851151a0b2d";

    #[test]
    fn key_is_not_the_hash_prefix() {
        for seed in 0..64u8 {
            let hash = ContentHash::of(&[seed]);
            let key = DhtKey::of(&hash, TransportKind::Udp);
            assert_ne!(key.0[..], hash.0[..20]);
        }
    }

    #[test]
    fn transports_and_contents_get_their_own_keys() {
        let a = ContentHash::of(b"a");
        let b = ContentHash::of(b"b");
        assert_ne!(
            DhtKey::of(&a, TransportKind::Udp),
            DhtKey::of(&a, TransportKind::Tcp)
        );
        assert_ne!(
            DhtKey::of(&a, TransportKind::Udp),
            DhtKey::of(&b, TransportKind::Udp)
        );
        assert_eq!(
            DhtKey::of(&a, TransportKind::Udp),
            DhtKey::of(&a, TransportKind::Udp)
        );
    }

    #[test]
    fn key_converts_to_a_mainline_id() {
        let key = DhtKey::of(&ContentHash::of(b"x"), TransportKind::Tcp);
        assert_eq!(key.id().as_bytes(), &key.0);
    }
}
