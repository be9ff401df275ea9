//! Finding sources on the BitTorrent Mainline DHT with the real binary and no tracker: a local
//! DHT of 50 nodes on 127.0.0.1 runs in this test process (the `mainline` crate's `Testnet`),
//! a seeder `p2p peer --dht` announces its share there, and `p2p get blake3:HEX --dht` (or
//! `get TICKET --dht`) finds it and downloads it byte-exact; also after DHT nodes that stored
//! the announce stop, beside a tracker that knows no holder, and with a clear error when
//! nobody announced the content. Signed peer records: a peer's record resolves (`p2p
//! resolve`), and a peer named by its key (`get KEY ID --dht`), or the sharer a `p2p2`
//! ticket names, is reached through it with no tracker.

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

/// A local DHT ([`testnet`]), the address of its bootstrap node `n`, and an empty folder for
/// the test's files.
fn dht_setup(n: usize) -> (Testnet, String, tempfile::TempDir) {
    let net = testnet();
    let boot = net.bootstrap[n].clone();
    (net, boot, tempfile::tempdir().unwrap())
}

/// The DHT key of `hash` for UDP peers, derived here as docs/DHT.md writes it (a check of
/// the documented derivation): the first 20 bytes of BLAKE3("p2p-dht-v1:udp:" || hash).
fn udp_key(hash: &ContentHash) -> [u8; 20] {
    let mut preimage = b"p2p-dht-v1:udp:".to_vec();
    preimage.extend_from_slice(&hash.0);
    ContentHash::of(&preimage).0[..20].try_into().unwrap()
}

/// `p2p peer` on the DHT alone (no tracker), with `extra` flags, sharing `share/` of `dir`
/// with `bytes` as `big.bin`.
fn dht_peer(dir: &std::path::Path, boot: &str, bytes: &[u8], extra: &[&str]) -> Proc {
    std::fs::create_dir_all(dir.join("share")).unwrap();
    write_file(&dir.join("share"), "big.bin", bytes);
    let mut args = vec![
        "peer",
        "--dht",
        "--dht-bootstrap",
        boot,
        "--listen",
        "127.0.0.1:0",
        "--share",
        "share",
    ];
    args.extend_from_slice(extra);
    args.push("--no-menu");
    Proc::spawn(dir, &args)
}

/// A seeder on the DHT alone (no tracker) sharing `share/` of `dir` with `bytes` as
/// `big.bin`, once its first announce round is done; the line it printed for the round.
fn dht_seeder(dir: &std::path::Path, boot: &str, bytes: &[u8]) -> (Proc, String) {
    let mut seeder = dht_peer(dir, boot, bytes, &[]);
    seeder.wait_for("on the DHT (no tracker)");
    let round = seeder.wait_for("dht: announced");
    (seeder, round)
}

/// `p2p share FILE --dht` on loopback (with `extra` flags), and the ticket it prints: a
/// `p2p2` ticket, which carries the sharer's key.
fn dht_share(
    dir: &std::path::Path,
    boot: &str,
    file: &std::path::Path,
    extra: &[&str],
) -> (Proc, String) {
    let mut args = vec![
        "share",
        file.to_str().unwrap(),
        "--dht",
        "--dht-bootstrap",
        boot,
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let mut share = Proc::spawn(dir, &args);
    let line = share.wait_for("p2p get p2p");
    let ticket = line.split_whitespace().nth(2).unwrap().to_string();
    assert!(ticket.starts_with("p2p2"), "{ticket}");
    (share, ticket)
}

fn hash_arg(bytes: &[u8]) -> String {
    format!("blake3:{}", ContentHash::of(bytes).to_hex())
}

/// `get` of `what` from the DHT alone into `dir/out`, with `--json`.
fn dht_get(dir: &std::path::Path, boot: &str, what: &str) -> std::process::Output {
    dht_get_into(dir, boot, &[what], "out", &["--json"])
}

/// `get` of `what` (a hash or a ticket, or a peer's key and a file's ID) from the DHT alone
/// into `dir/out`, with `extra` flags.
fn dht_get_into(
    dir: &std::path::Path,
    boot: &str,
    what: &[&str],
    out: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["--dht", "--dht-bootstrap", boot, "--out", out]);
    args.extend_from_slice(extra);
    run(dir, &args)
}

/// `rel` (below `dir`) came whole: it holds `bytes`, byte for byte.
fn assert_fetched(dir: &std::path::Path, rel: &str, bytes: &[u8]) {
    assert_eq!(std::fs::read(dir.join(rel)).unwrap(), bytes, "{rel}");
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
    let (_net, boot, dir) = dht_setup(0);
    let bytes = random_bytes(3 * 1024 * 1024 + 77, 25);
    let (_seeder, round) = dht_seeder(dir.path(), &boot, &bytes);
    // The file and the share's collection.
    assert!(round.contains("announced 2 content hashes"), "{round}");

    let out = dht_get(dir.path(), &boot, &hash_arg(&bytes));
    let report = json(&out);
    assert_fetched(dir.path(), "out/big.bin", &bytes);
    assert_eq!(report["verified"], true);
    let names = source_names(&report);
    assert!(
        names.iter().all(|n| n.starts_with("dht:127.0.0.1:")),
        "{names:?}"
    );
}

#[test]
fn share_ticket_without_tracker_is_fetched_through_the_dht() {
    let (_net, boot, dir) = dht_setup(1);
    let bytes = random_bytes(700_000, 26);
    let file = write_file(dir.path(), "song.ogg", &bytes);
    // With --dht the sharer publishes its record: its tickets carry its key (`p2p2`).
    let (mut share, ticket) = dht_share(dir.path(), &boot, &file, &[]);
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
    assert_fetched(dir.path(), "out/song.ogg", &bytes);
}

#[test]
fn dht_finds_the_seeder_after_nodes_that_stored_its_announce_stop() {
    let (mut net, boot, dir) = dht_setup(0);
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
    assert_fetched(dir.path(), "out/big.bin", &bytes);
}

#[test]
fn tracker_without_holders_is_joined_by_the_dht() {
    let (_net, boot, dir) = dht_setup(2);
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
    assert_fetched(dir.path(), "out/big.bin", &bytes);
}

#[test]
fn hash_nobody_announced_fails_clearly_within_the_bound() {
    let (_net, boot, dir) = dht_setup(0);
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

/// The key a peer's "dht: record published" line names (64 hex digits after "under key").
fn published_key(line: &str) -> String {
    let key = line
        .split("under key ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no key in {line}"));
    assert_eq!(key.len(), 64, "{line}");
    key.to_string()
}

/// A peer on the DHT alone named `name`, sharing `share/` of `dir` with `bytes` as
/// `big.bin`, once its record is published; the key it published it under.
fn dht_peer_with_record(
    dir: &std::path::Path,
    boot: &str,
    name: &str,
    bytes: &[u8],
) -> (Proc, String) {
    let mut peer = dht_peer(dir, boot, bytes, &["--name", name]);
    let line = peer.wait_for("dht: record published");
    assert!(line.contains(&format!("{name} at 127.0.0.1:")), "{line}");
    (peer, published_key(&line))
}

#[test]
fn peer_named_by_its_key_is_reached_through_its_record() {
    let (_net, boot, dir) = dht_setup(0);
    let bytes = random_bytes(2 * 1024 * 1024 + 5, 29);
    let (_peer, key) = dht_peer_with_record(dir.path(), &boot, "alice", &bytes);

    // The record, as `p2p resolve` prints it.
    let out = run(
        dir.path(),
        &["resolve", &key, "--dht-bootstrap", &boot, "--json"],
    );
    let record = json(&out);
    assert_eq!(record["key"], key.as_str());
    assert_eq!(record["peers"][0]["name"], "alice");
    assert_eq!(record["peers"][0]["transport"], "udp");
    let addr = record["peers"][0]["addrs"][0].as_str().unwrap().to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");

    // No tracker runs: the peer is found by its key alone, and the file comes byte-exact.
    let out = dht_get_into(dir.path(), &boot, &[&key, "001"], "out", &["--json"]);
    let report = json(&out);
    assert_eq!(report["verified"], true);
    assert_fetched(dir.path(), "out/big.bin", &bytes);
    // NAME@KEY: the same peer; another name is refused, saying which the record has.
    let bob = format!("bob@{key}");
    let out = dht_get_into(dir.path(), &boot, &[&bob, "001"], "out2", &[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("the record of key {key} names `alice`, not `bob`")),
        "{}",
        stderr(&out)
    );
    let alice = format!("alice@{key}");
    let out = dht_get_into(dir.path(), &boot, &[&alice, "001"], "out3", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_fetched(dir.path(), "out3/big.bin", &bytes);
}

#[test]
fn key_without_a_record_fails_clearly_within_the_bound() {
    let (_net, boot, dir) = dht_setup(1);
    let key = "ab".repeat(32);
    let started = std::time::Instant::now();
    let out = run(dir.path(), &["resolve", &key, "--dht-bootstrap", &boot]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "no record for key {key} on the DHT (looked up for up to 10 s"
        )),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    // A key's form without --dht: a usage error that says what to add.
    let out = run(dir.path(), &["get", &format!("alice@{key}"), "001"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("add --dht"), "{}", stderr(&out));
}

/// A `p2p2` ticket names its sharer's key: with no tracker, the sharer is found by its record
/// (the source is named as the record names it, not `dht:ADDR` as an announce's would be).
#[test]
fn ticket_with_the_sharers_key_is_fetched_through_its_record() {
    let (_net, boot, dir) = dht_setup(2);
    let bytes = random_bytes(900_000, 30);
    let file = write_file(dir.path(), "clip.bin", &bytes);
    let (mut share, ticket) = dht_share(dir.path(), &boot, &file, &["--name", "sharer"]);
    share.wait_for("dht: record published");

    let out = dht_get(dir.path(), &boot, &ticket);
    let report = json(&out);
    assert_fetched(dir.path(), "out/clip.bin", &bytes);
    assert_eq!(source_names(&report), ["sharer"]);
}
