//! Announce and lookup on a local Mainline DHT of 50 nodes on 127.0.0.1 (the crate's
//! `Testnet`, in this process): a hash one node announces is found by another; found still
//! when nodes that stored it stop; a hash nobody announced is not found, within the bound.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use mainline::Testnet;
use p2p_proto::wire::{ContentHash, TransportKind};

use super::announce::announce_all;
use super::lookup::{lookup, LOOKUP_WAIT};
use super::{DhtKey, DhtNode};

/// Nodes in the local DHT.
const NODES: usize = 50;

/// A local DHT of [`NODES`] nodes on 127.0.0.1, each knowing every other.
fn testnet() -> Testnet {
    Testnet::builder(NODES)
        .bind_address(Ipv4Addr::LOCALHOST)
        .build()
        .expect("a local DHT")
}

/// The testnet's bootstrap addresses (the first three nodes).
fn bootstrap(net: &Testnet) -> Vec<SocketAddr> {
    net.bootstrap
        .iter()
        .take(3)
        .map(|a| a.parse().expect("an address"))
        .collect()
}

/// A client node of the testnet, on the loopback.
async fn client(net: &Testnet) -> DhtNode {
    DhtNode::start(&bootstrap(net), Ipv4Addr::LOCALHOST)
        .await
        .expect("a DHT node")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn here(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
}

#[test]
fn announced_hash_is_found_by_another_node() {
    let net = testnet();
    runtime().block_on(async {
        let (seeder, leecher) = (client(&net).await, client(&net).await);
        let hash = ContentHash::of(b"announced_hash_is_found_by_another_node");
        let done = announce_all(&seeder, &[hash], TransportKind::Udp, 7001).await;
        assert_eq!((done.stored, done.failed), (1, 0));

        let found = lookup(&leecher, &hash, TransportKind::Udp, LOOKUP_WAIT).await;
        assert_eq!(found.found, [here(7001)]);
        // Under the other transport's key: nothing (a TCP download could not use it).
        let tcp = lookup(&leecher, &hash, TransportKind::Tcp, LOOKUP_WAIT).await;
        assert!(tcp.found.is_empty(), "{:?}", tcp.found);
        assert!(tcp.nodes_known > 0);
    });
}

#[test]
fn lookup_finds_the_seeder_after_nodes_that_stored_it_stop() {
    let mut net = testnet();
    let rt = runtime();
    let hash = ContentHash::of(b"lookup_finds_the_seeder_after_churn");
    let key = DhtKey::of(&hash, TransportKind::Udp);
    rt.block_on(async {
        let seeder = client(&net).await;
        let done = announce_all(&seeder, &[hash], TransportKind::Udp, 7002).await;
        assert_eq!(done.stored, 1);
    });
    // Stop the 10 nodes closest to the key (half of those that stored the announce: BEP 5
    // stores on the 20 closest) and 10 others, keeping the bootstrap nodes.
    #[allow(deprecated)]
    let mut by_distance: Vec<(mainline::Id, usize)> = net
        .nodes
        .iter()
        .enumerate()
        .skip(3)
        .map(|(i, n)| (n.info().id().xor(&key.id()), i))
        .collect();
    by_distance.sort();
    let mut stopped: Vec<usize> = by_distance.iter().take(10).map(|&(_, i)| i).collect();
    stopped.extend(by_distance.iter().rev().take(10).map(|&(_, i)| i));
    stopped.sort_unstable_by(|a, b| b.cmp(a));
    for i in stopped {
        drop(net.nodes.remove(i));
    }
    assert_eq!(net.nodes.len(), NODES - 20);
    rt.block_on(async {
        let leecher = client(&net).await;
        let found = lookup(&leecher, &hash, TransportKind::Udp, LOOKUP_WAIT).await;
        assert_eq!(found.found, [here(7002)]);
    });
}

#[test]
fn hash_nobody_announced_is_not_found_within_the_bound() {
    let net = testnet();
    runtime().block_on(async {
        let leecher = client(&net).await;
        let hash = ContentHash::of(b"nobody announced this");
        let wait = Duration::from_secs(3);
        let started = tokio::time::Instant::now();
        let found = lookup(&leecher, &hash, TransportKind::Udp, wait).await;
        assert!(found.found.is_empty());
        assert!(found.nodes_known > 0, "the DHT was reached");
        // The bound holds (with room for the node count asked at the end).
        assert!(started.elapsed() < wait + Duration::from_secs(2));
    });
}
