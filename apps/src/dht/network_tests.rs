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

// --- Signed peer records (BEP 44) ---

use p2p_proto::identity::Identity;

use super::publish::{publish, resolve, resolve_timed, ResolveError, RESOLVE_WAIT};
use super::record::{self, seal, PeerRecord, RecordPeer};

fn entry(name: &str, port: u16) -> RecordPeer {
    RecordPeer {
        name: name.into(),
        transport: TransportKind::Udp,
        addrs: vec![SocketAddr::V4(here(port))],
        at: super::publish::unix_now(),
    }
}

#[test]
fn published_record_is_resolved_by_another_node() {
    let net = testnet();
    runtime().block_on(async {
        let (alice_node, bob_node) = (client(&net).await, client(&net).await);
        let alice = Identity::from_secret([11; 32]);
        let done = publish(&alice_node, &alice, entry("alice", 7101), 0)
            .await
            .expect("published");
        assert!(done.stored_at > 0);

        let got = resolve(&bob_node, &alice.public(), RESOLVE_WAIT)
            .await
            .expect("resolved");
        assert_eq!(got, done.record);
        let peer = record::pick(&got.record, &alice.public(), Some("alice")).unwrap();
        assert_eq!(peer.addrs, [SocketAddr::V4(here(7101))]);

        // A key that published nothing: a clear error, within the bound.
        let nobody = Identity::from_secret([12; 32]).public();
        let wait = Duration::from_secs(3);
        let started = tokio::time::Instant::now();
        let e = resolve(&bob_node, &nobody, wait).await.unwrap_err();
        assert!(
            matches!(e, ResolveError::NotFound { nodes, .. } if nodes > 0),
            "{e}"
        );
        assert!(
            e.to_string().starts_with(&format!(
                "no record for key {} on the DHT (looked up for up to 3 s",
                record::hex(&nobody)
            )),
            "{e}"
        );
        assert!(started.elapsed() < wait + Duration::from_secs(2));
    });
}

/// Mallory stores a record under alice's key signed with her own key: the DHT nodes refuse
/// it, and alice's record is still the one resolved.
#[test]
fn forged_record_is_not_accepted() {
    let net = testnet();
    runtime().block_on(async {
        let (alice_node, mallory_node, bob_node) =
            (client(&net).await, client(&net).await, client(&net).await);
        let alice = Identity::from_secret([21; 32]);
        let real = publish(&alice_node, &alice, entry("alice", 7201), 0)
            .await
            .expect("published");

        let lie = PeerRecord {
            peers: vec![entry("alice", 6666)],
        };
        let by_mallory = seal([22; 32], &lie, real.record.seq + 1_000).unwrap();
        let forged = mainline::MutableItem::new_signed_unchecked(
            alice.public(),
            *by_mallory.signature(),
            by_mallory.value(),
            by_mallory.seq(),
            Some(record::SALT),
        );
        let put = mallory_node.inner().put_mutable(forged, None).await;
        assert!(put.is_err(), "a DHT node stored a forged record: {put:?}");

        let got = resolve(&bob_node, &alice.public(), RESOLVE_WAIT)
            .await
            .expect("resolved");
        assert_eq!(got, real.record);
    });
}

/// A record published again with new addresses replaces the old one (a higher seq); an
/// older one put afterwards is refused by the nodes that have the newer.
#[test]
fn newer_seq_replaces_older_record() {
    let net = testnet();
    runtime().block_on(async {
        let (alice_node, bob_node) = (client(&net).await, client(&net).await);
        let alice = Identity::from_secret([31; 32]);
        let first = publish(&alice_node, &alice, entry("alice", 7301), 0)
            .await
            .expect("published");
        let second = publish(&alice_node, &alice, entry("alice", 7302), first.record.seq)
            .await
            .expect("published again");
        assert!(second.record.seq > first.record.seq);

        let got = resolve(&bob_node, &alice.public(), RESOLVE_WAIT)
            .await
            .expect("resolved");
        assert_eq!(got.seq, second.record.seq);
        assert_eq!(got.record.peers[0].addrs, [SocketAddr::V4(here(7302))]);

        // The old record again (validly signed, lower seq): refused, the new one stays.
        let stale = seal([31; 32], &first.record.record, first.record.seq).unwrap();
        assert!(alice_node.inner().put_mutable(stale, None).await.is_err());
        let got = resolve(&bob_node, &alice.public(), RESOLVE_WAIT)
            .await
            .expect("resolved");
        assert_eq!(got.seq, second.record.seq);
    });
}

/// Two peers of one key each keep their own entry in the key's record.
#[test]
fn two_peers_of_one_key_share_its_record() {
    let net = testnet();
    runtime().block_on(async {
        let (one, two, reader) = (client(&net).await, client(&net).await, client(&net).await);
        let user = Identity::from_secret([41; 32]);
        let a = publish(&one, &user, entry("laptop", 7401), 0)
            .await
            .unwrap();
        let b = publish(&two, &user, entry("desktop", 7402), 0)
            .await
            .unwrap();
        assert!(b.record.seq > a.record.seq);
        let got = resolve(&reader, &user.public(), RESOLVE_WAIT)
            .await
            .unwrap();
        let names: Vec<&str> = got.record.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["desktop", "laptop"]);
        let laptop = record::pick(&got.record, &user.public(), Some("laptop")).unwrap();
        assert_eq!(laptop.addrs, [SocketAddr::V4(here(7401))]);
    });
}

// --- Discovery with >= 100 peers ---

/// `n` values of a duration list: (median, 90th percentile, max) in ms.
fn spread(mut times: Vec<Duration>) -> (u128, u128, u128) {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_millis();
    (at(0.5), at(0.9), at(1.0))
}

/// A local DHT of `nodes` nodes where the first `peers` of them are peers: each announces a
/// content hash of its own and publishes its record; then each looks up the next one's hash
/// and resolves the next one's key. Every lookup must find its announcer (and nobody else),
/// every resolution its record. Prints the times (first address, first record).
fn simulate(nodes: usize, peers: usize) {
    assert!(peers <= nodes);
    let started = std::time::Instant::now();
    let net = Testnet::builder(nodes)
        .bind_address(Ipv4Addr::LOCALHOST)
        .build()
        .expect("a local DHT");
    let built = started.elapsed();
    let at: Vec<DhtNode> = net.nodes[..peers].iter().map(DhtNode::of_testnet).collect();
    let ids: Vec<Identity> = (0..peers)
        .map(|i| Identity::from_secret(ContentHash::of(&i.to_le_bytes()).0))
        .collect();
    let hash = |i: usize| ContentHash::of(format!("content of peer {i}").as_bytes());
    let port = |i: usize| 20_000 + i as u16;
    // Each peer's work runs beside the others', at most this many at once (2 shared cores).
    const AT_ONCE: usize = 16;
    runtime().block_on(async {
        let mut set = tokio::task::JoinSet::new();
        let mut announced = 0;
        for i in 0..peers {
            while set.len() >= AT_ONCE {
                announced += set.join_next().await.unwrap().unwrap();
            }
            let (node, id) = (at[i].clone(), ids[i].clone());
            let (h, p) = (hash(i), port(i));
            set.spawn(async move {
                let done = announce_all(&node, &[h], TransportKind::Udp, p).await;
                let name = format!("peer-{i}");
                publish(&node, &id, entry(&name, p), 0)
                    .await
                    .expect("published");
                done.stored
            });
        }
        while let Some(done) = set.join_next().await {
            announced += done.unwrap();
        }
        assert_eq!(announced, peers, "every announce was stored");
        let published = started.elapsed();

        let mut lookups = Vec::new();
        let mut records = Vec::new();
        let mut set = tokio::task::JoinSet::new();
        let mut collect = |(l, r): (Duration, Duration)| {
            lookups.push(l);
            records.push(r);
        };
        for (i, node) in at.iter().enumerate().take(peers) {
            while set.len() >= AT_ONCE {
                collect(set.join_next().await.unwrap().unwrap());
            }
            let next = (i + 1) % peers;
            let (node, key) = (node.clone(), ids[next].public());
            let (h, p) = (hash(next), port(next));
            set.spawn(async move {
                let found = lookup(&node, &h, TransportKind::Udp, LOOKUP_WAIT).await;
                assert_eq!(found.found, [here(p)], "peer {i} looking up peer {next}");
                let (got, first) = resolve_timed(&node, &key, RESOLVE_WAIT).await;
                let got = got.unwrap_or_else(|e| panic!("peer {i} resolving peer {next}: {e}"));
                let name = format!("peer-{next}");
                let peer = record::pick(&got.record, &key, Some(&name)).unwrap();
                assert_eq!(peer.addrs, [SocketAddr::V4(here(p))]);
                (found.first_after.unwrap(), first.unwrap())
            });
        }
        while let Some(done) = set.join_next().await {
            collect(done.unwrap());
        }
        assert_eq!(lookups.len(), peers);
        let (lm, l90, lmax) = spread(lookups);
        let (rm, r90, rmax) = spread(records);
        eprintln!(
            "{nodes} DHT nodes, {peers} peers ({AT_ONCE} at once): built in {:.1} s, \
             announced and published in {:.1} s, all looked up in {:.1} s; \
             lookup to first address: median {lm} ms, p90 {l90} ms, max {lmax} ms; \
             record resolved: median {rm} ms, p90 {r90} ms, max {rmax} ms",
            built.as_secs_f64(),
            (published - built).as_secs_f64(),
            (started.elapsed() - published).as_secs_f64(),
        );
    });
}

/// 120 DHT nodes, 100 of them peers that announce, publish, look up and resolve.
#[test]
fn hundred_peers_find_each_other() {
    simulate(120, 100);
}

/// The heavier version (500 nodes, 500 peers; about a minute on 2 cores, 40 s of it building
/// the DHT): `cargo test -p p2p-apps --bin p2p dht::network_tests::five_hundred -- --ignored
/// --nocapture`.
#[test]
#[ignore = "heavier: about a minute on 2 cores"]
fn five_hundred_peers_find_each_other() {
    simulate(500, 500);
}
