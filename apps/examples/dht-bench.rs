//! What finding content on the Mainline DHT costs, on a local DHT of NODES nodes on
//! 127.0.0.1 (the `mainline` crate's `Testnet`, in this process): the time a lookup of an
//! announced hash takes (to its first address, which is when `get --dht` can start, and to
//! the query's end, which waits out the crate's 2 s request timeout for nodes that do not
//! answer), median of ROUNDS; and the traffic of one announce and one lookup, read
//! from the loopback interface's counters (`/proc/net/dev`), which count only
//! this process's datagrams when it runs in a network namespace of its own:
//!
//! ```sh
//! cargo build --release -p p2p-apps --example dht-bench
//! sudo unshare -n sh -c 'ip link set lo up && target/release/examples/dht-bench 50 20'
//! ```
//!
//! Outside such a namespace the traffic figures include whatever else uses the loopback.
//! Keys are derived as `p2p` derives them (`apps/src/dht/key.rs`, compiled in).
//!
//! It also measures a signed peer record (`apps/src/dht/record.rs`, compiled in: a record of
//! one peer with one IPv4 address): one publish as a peer makes it (a read of the key's
//! current record, then the put), and one resolution (to its first valid item, which is when
//! `get KEY --dht` can go on, and to the query's end).

#[allow(dead_code)]
#[path = "../src/dht/key.rs"]
mod key;

#[allow(dead_code)]
#[path = "../src/dht/record.rs"]
mod record;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use mainline::{Dht, Testnet};
use p2p_proto::wire::{ContentHash, TransportKind};

/// Bytes and packets sent on the loopback so far (each datagram is counted once: on lo, a
/// packet sent is the packet received), from `/proc/net/dev` (of this network namespace).
fn loopback() -> (u64, u64) {
    let dev = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let Some(lo) = dev.lines().find(|l| l.trim_start().starts_with("lo:")) else {
        return (0, 0);
    };
    let fields: Vec<u64> = lo
        .split_once(':')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // Received bytes and packets, then 6 more fields, then transmitted bytes and packets.
    match fields.as_slice() {
        [_, _, _, _, _, _, _, _, tx_bytes, tx_packets, ..] => (*tx_bytes, *tx_packets),
        _ => (0, 0),
    }
}

/// `after - before`, less 28 bytes of IPv4 and UDP headers per datagram: the DHT's bytes.
fn traffic(before: (u64, u64), after: (u64, u64)) -> (u64, u64) {
    let packets = after.1 - before.1;
    let bytes = (after.0 - before.0).saturating_sub(28 * packets);
    (bytes, packets)
}

fn node(net: &Testnet) -> mainline::async_dht::AsyncDht {
    Dht::builder()
        .bootstrap(&net.bootstrap[..3])
        .bind_address(Ipv4Addr::LOCALHOST)
        .port(0)
        .build()
        .expect("a DHT node")
        .as_async()
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let net = Testnet::builder(nodes)
        .bind_address(Ipv4Addr::LOCALHOST)
        .build()
        .expect("a local DHT");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let (mut first, mut done) = (Vec::new(), Vec::new());
        let (mut announce_traffic, mut lookup_traffic) = (Vec::new(), Vec::new());
        let (mut publish_traffic, mut resolve_traffic) = (Vec::new(), Vec::new());
        let (mut resolve_first, mut resolve_done) = (Vec::new(), Vec::new());
        let mut value_len = 0;
        for round in 0..rounds {
            let seeder = node(&net);
            let leecher = node(&net);
            // Let both finish joining (their own bootstrap lookups) before counting.
            let _ = seeder.bootstrapped().await;
            let _ = leecher.bootstrapped().await;
            let hash = ContentHash::of(format!("dht-bench {round}").as_bytes());
            let key = key::DhtKey::of(&hash, TransportKind::Udp).id();

            let before = loopback();
            seeder
                .announce_peer(key, Some(7000))
                .await
                .expect("announced");
            announce_traffic.push(traffic(before, loopback()));

            let before = loopback();
            let started = Instant::now();
            let mut answers = leecher.get_peers(key);
            let mut got_first = None;
            while let Some(batch) = answers.next().await {
                if got_first.is_none() && !batch.is_empty() {
                    got_first = Some(started.elapsed());
                }
            }
            done.push(started.elapsed());
            lookup_traffic.push(traffic(before, loopback()));
            first.push(got_first.expect("the announced hash is found"));

            // A peer record: published by the seeder's node, resolved by the leecher's.
            let secret = ContentHash::of(format!("dht-bench key {round}").as_bytes()).0;
            let public = p2p_proto::identity::Identity::from_secret(secret).public();
            let peer = record::RecordPeer {
                name: "bench-peer".into(),
                transport: TransportKind::Udp,
                addrs: vec!["192.0.2.7:7000".parse().expect("an address")],
                at: 1_765_000_000,
            };
            let rec = record::PeerRecord { peers: vec![peer] };
            value_len = rec.encode().len();
            let before = loopback();
            let current = seeder
                .get_mutable_most_recent(&public, Some(record::SALT))
                .await;
            assert!(current.is_none());
            let item = record::seal(secret, &rec, 1_765_000_000_000).expect("sealed");
            seeder.put_mutable(item, None).await.expect("published");
            publish_traffic.push(traffic(before, loopback()));

            let before = loopback();
            let started = Instant::now();
            let mut items = leecher.get_mutable(&public, Some(record::SALT), None);
            let mut got_first = None;
            while let Some(item) = items.next().await {
                if got_first.is_none() && record::open(&item, &public).is_ok() {
                    got_first = Some(started.elapsed());
                }
            }
            resolve_done.push(started.elapsed());
            resolve_traffic.push(traffic(before, loopback()));
            resolve_first.push(got_first.expect("the record is found"));
        }
        let mid = |v: &mut Vec<(u64, u64)>| {
            v.sort();
            v[v.len() / 2]
        };
        let (a_bytes, a_packets) = mid(&mut announce_traffic);
        let (l_bytes, l_packets) = mid(&mut lookup_traffic);
        println!("local DHT of {nodes} nodes on 127.0.0.1, {rounds} rounds, medians:");
        println!(
            "lookup of an announced hash: first address after {:.1} ms, query done after {:.1} ms",
            median(&mut first).as_secs_f64() * 1e3,
            median(&mut done).as_secs_f64() * 1e3
        );
        println!(
            "one announce: {a_bytes} bytes in {a_packets} datagrams (requests and answers, \
             UDP payload); one lookup: {l_bytes} bytes in {l_packets} datagrams"
        );
        let (p_bytes, p_packets) = mid(&mut publish_traffic);
        let (r_bytes, r_packets) = mid(&mut resolve_traffic);
        println!(
            "peer record ({value_len}-byte value): resolved to its first valid item after \
             {:.1} ms, query done after {:.1} ms",
            median(&mut resolve_first).as_secs_f64() * 1e3,
            median(&mut resolve_done).as_secs_f64() * 1e3
        );
        println!(
            "one record publish (read, then put): {p_bytes} bytes in {p_packets} datagrams; \
             one resolution: {r_bytes} bytes in {r_packets} datagrams; publishing every 30 min: \
             {:.1} KiB/hour",
            (p_bytes * 2) as f64 / 1024.0
        );
        for hashes in [10u64, 1_000] {
            // Every hash announced 4 times an hour (every 15 min).
            println!(
                "announcing {hashes} hashes: {:.1} KiB/hour",
                (a_bytes * 4 * hashes) as f64 / 1024.0
            );
        }
    });
}
