//! Finding sources on the BitTorrent Mainline DHT with the real binary and no tracker: a local
//! DHT of 50 nodes on 127.0.0.1 runs in this test process (the `mainline` crate's `Testnet`),
//! a seeder `p2p peer --dht` announces its share there, and `p2p get blake3:HEX --dht` (or
//! `get TICKET --dht`) finds it and downloads it byte-exact; also after DHT nodes that stored
//! the announce stop, beside a tracker that knows no holder, and with a clear error when
//! nobody announced the content.

mod common;

use std::net::Ipv4Addr;

use common::*;
use mainline::Testnet;
use p2p_proto::wire::ContentHash;

/// Nodes in the local DHT.
const NODES: usize = 50;

/// A local DHT of [`NODES`] nodes on 127.0.0.1, each knowing every other.
fn testnet() -> Testnet {
    Testnet::builder(NODES)
        .bind_address(Ipv4Addr::LOCALHOST)
        .build()
        .expect("a local DHT")
}

/// The DHT key of `hash` for UDP peers, derived here as docs/DHT.md writes it (a check of
/// the documented derivation): the first 20 bytes of BLAKE3("p2p-dht-v1:udp:" || hash).
fn udp_key(hash: &ContentHash) -> [u8; 20] {
    let mut preimage = b"p2p-dht-v1:udp:".to_vec();
    preimage.extend_from_slice(&hash.0);
    ContentHash::of(&preimage).0[..20].try_into().unwrap()
}

/// A seeder on the DHT alone (no tracker) sharing `share/` of `dir` with `bytes` as
/// `big.bin`, once its first announce round is done; the line it printed for the round.
fn dht_seeder(dir: &std::path::Path, boot: &str, bytes: &[u8]) -> (Proc, String) {
    std::fs::create_dir_all(dir.join("share")).unwrap();
    write_file(&dir.join("share"), "big.bin", bytes);
    let mut seeder = Proc::spawn(
        dir,
        &[
            "peer",
            "--dht",
            "--dht-bootstrap",
            boot,
            "--listen",
            "127.0.0.1:0",
            "--share",
            "share",
            "--no-menu",
        ],
    );
    seeder.wait_for("on the DHT (no tracker)");
    let round = seeder.wait_for("dht: announced");
    (seeder, round)
}

fn hash_arg(bytes: &[u8]) -> String {
    format!("blake3:{}", ContentHash::of(bytes).to_hex())
}

/// `get` of `what` from the DHT alone into `dir/out`, with `--json`.
fn dht_get(dir: &std::path::Path, boot: &str, what: &str) -> std::process::Output {
    run(
        dir,
        &[
            "get",
            what,
            "--dht",
            "--dht-bootstrap",
            boot,
            "--out",
            "out",
            "--json",
        ],
    )
}

/// The names of the sources a `get --json` report lists (each sent some bytes).
fn source_names(report: &serde_json::Value) -> Vec<String> {
    match report["sources"].as_array() {
        Some(sources) => sources
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect(),
        None => Vec::new(),
    }
}

#[test]
fn get_by_hash_finds_a_seeder_on_the_dht_without_tracker() {
    let net = testnet();
    let boot = net.bootstrap[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let bytes = random_bytes(3 * 1024 * 1024 + 77, 25);
    let (_seeder, round) = dht_seeder(dir.path(), &boot, &bytes);
    // The file and the share's collection.
    assert!(round.contains("announced 2 content hashes"), "{round}");

    let out = dht_get(dir.path(), &boot, &hash_arg(&bytes));
    let report = json(&out);
    assert_eq!(
        std::fs::read(dir.path().join("out/big.bin")).unwrap(),
        bytes
    );
    assert_eq!(report["verified"], true);
    let names = source_names(&report);
    assert!(
        names.iter().all(|n| n.starts_with("dht:127.0.0.1:")),
        "{names:?}"
    );
}

#[test]
fn share_ticket_without_tracker_is_fetched_through_the_dht() {
    let net = testnet();
    let boot = net.bootstrap[1].clone();
    let dir = tempfile::tempdir().unwrap();
    let bytes = random_bytes(700_000, 26);
    let file = write_file(dir.path(), "song.ogg", &bytes);
    let mut share = Proc::spawn(
        dir.path(),
        &[
            "share",
            file.to_str().unwrap(),
            "--dht",
            "--dht-bootstrap",
            &boot,
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let line = share.wait_for("p2p get p2p1");
    let ticket = line.split_whitespace().nth(2).unwrap().to_string();
    share.wait_for("dht: announced");

    // Without --dht, a ticket that names no tracker says what to add.
    let refused = run(dir.path(), &["get", &ticket, "--out", "out"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("add --dht"),
        "{}",
        stderr(&refused)
    );

    let out = dht_get(dir.path(), &boot, &ticket);
    json(&out);
    assert_eq!(
        std::fs::read(dir.path().join("out/song.ogg")).unwrap(),
        bytes
    );
}

#[test]
fn dht_finds_the_seeder_after_nodes_that_stored_its_announce_stop() {
    let mut net = testnet();
    let boot = net.bootstrap[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let bytes = random_bytes(1024 * 1024, 27);
    let (_seeder, _) = dht_seeder(dir.path(), &boot, &bytes);

    // Stop the 10 nodes closest to the key (half of the 20 that store an announce) and the
    // 10 farthest, keeping the first 3 (the bootstrap nodes).
    let key = mainline::Id::from_bytes(udp_key(&ContentHash::of(&bytes))).unwrap();
    #[allow(deprecated)]
    let mut by_distance: Vec<(mainline::Id, usize)> = net
        .nodes
        .iter()
        .enumerate()
        .skip(3)
        .map(|(i, n)| (n.info().id().xor(&key), i))
        .collect();
    by_distance.sort();
    let mut stopped: Vec<usize> = by_distance.iter().take(10).map(|&(_, i)| i).collect();
    stopped.extend(by_distance.iter().rev().take(10).map(|&(_, i)| i));
    stopped.sort_unstable_by(|a, b| b.cmp(a));
    for i in stopped {
        drop(net.nodes.remove(i));
    }
    assert_eq!(net.nodes.len(), NODES - 20);

    let out = dht_get(dir.path(), &boot, &hash_arg(&bytes));
    json(&out);
    assert_eq!(
        std::fs::read(dir.path().join("out/big.bin")).unwrap(),
        bytes
    );
}

#[test]
fn tracker_without_holders_is_joined_by_the_dht() {
    let net = testnet();
    let boot = net.bootstrap[2].clone();
    let dir = tempfile::tempdir().unwrap();
    let (_tracker, tracker) = tracker(dir.path(), &[]);
    let bytes = random_bytes(500_000, 28);
    let (_seeder, _) = dht_seeder(dir.path(), &boot, &bytes);

    // The tracker knows nobody with it; the DHT does.
    let out = run(
        dir.path(),
        &[
            "get",
            &hash_arg(&bytes),
            "--tracker",
            &tracker,
            "--dht",
            "--dht-bootstrap",
            &boot,
            "--out",
            "out",
            "--json",
        ],
    );
    json(&out);
    assert_eq!(
        std::fs::read(dir.path().join("out/big.bin")).unwrap(),
        bytes
    );
}

#[test]
fn hash_nobody_announced_fails_clearly_within_the_bound() {
    let net = testnet();
    let boot = net.bootstrap[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let wanted = hash_arg(b"nobody shares this");
    let out = dht_get(dir.path(), &boot, &wanted);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains(&format!("nobody announced {wanted} on the DHT (")),
        "{said}"
    );
    assert!(said.contains("DHT nodes known)"), "{said}");
    assert_eq!(json_error_kind(&out), "unknown_file");
    assert!(!dir.path().join("out").join("big.bin").exists());
}

/// The `kind` of the JSON error a failed `--json` command printed on stdout.
fn json_error_kind(o: &std::process::Output) -> String {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("a JSON error");
    v["error"]["kind"].as_str().unwrap().to_string()
}
