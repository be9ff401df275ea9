//! Multi-source downloads with the real binary on 127.0.0.1: `p2p get blake3:HEX` from every
//! peer that shares the content, `p2p get PEER ID` joined by the others (and `--one-source`
//! keeping to one), `p2p share FILE` and its ticket, `p2p peers --has`, and what a hash
//! nobody shares gets.

mod common;

use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1024 * 1024;
const SIZE: usize = 12 * MIB + 1234;

/// A tracker and three seeders `s0`..`s2` of the same `big.bin`, each capped at 16 MiB/s so
/// that one alone cannot take the whole file before the others start; returns the net and
/// the content's hash (`blake3:HEX`) once the tracker lists all three for it.
fn three_seeders(transport: &str, seed: u64) -> (Net, String) {
    three_seeders_at(transport, seed, "16MiB")
}

/// [`three_seeders`], each capped at `rate`.
fn three_seeders_at(transport: &str, seed: u64, rate: &str) -> (Net, String) {
    let mut net = Net::start();
    let bytes = random_bytes(SIZE, seed);
    for i in 0..3 {
        net.seeder(&format!("s{i}"), transport)
            .share(&format!("share{i}"))
            .file("big.bin", &bytes)
            .args(&["--max-upload-rate", rate])
            .start();
    }
    let listing = net.ls("s0").transport(transport).run_json();
    let hash = format!("blake3:{}", listing[0]["hash"].as_str().unwrap());
    wait_holders(&net, transport, &hash, 3);
    (net, hash)
}

/// Polls `p2p peers --has HASH` until it lists `n` peers (their announcements reached the
/// tracker), within [`DEADLINE`].
fn wait_holders(net: &Net, transport: &str, hash: &str, n: usize) -> Vec<String> {
    let until = Instant::now() + DEADLINE;
    loop {
        let listed = net
            .peers()
            .args(&["--has", hash])
            .transport(transport)
            .run_json();
        let names: Vec<String> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        if names.len() >= n {
            return names;
        }
        assert!(
            Instant::now() < until,
            "the tracker lists {names:?} for {hash}, not {n} peers"
        );
        std::thread::sleep(Duration::from_millis(50)); // polling a process's view, not a sync
    }
}

/// `report["sources"]`: each source's name and bytes; every one of them sent some.
fn sources(report: &serde_json::Value) -> Vec<(String, u64)> {
    report["sources"]
        .as_array()
        .unwrap_or_else(|| panic!("no sources in {report}"))
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn check_file(net: &Net, out: &str) {
    let got = std::fs::read(net.path(out).join("big.bin")).unwrap();
    assert!(got == net.bytes("big.bin"), "{out}/big.bin differs");
    let left: Vec<_> = std::fs::read_dir(net.path(out))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["big.bin"], "left behind in {out}");
}

fn by_hash(transport: &str) {
    let (net, hash) = three_seeders(transport, 22);
    let report = net
        .cmd(&["get", &hash])
        .transport(transport)
        .out("out")
        .run_json();
    check_file(&net, "out");
    let got = sources(&report);
    assert_eq!(got.len(), 3, "{report}");
    assert!(
        got.iter().all(|(_, b)| *b > 0),
        "a source sent nothing: {got:?}"
    );
    assert_eq!(got.iter().map(|(_, b)| b).sum::<u64>(), SIZE as u64);
}

#[test]
fn get_by_hash_takes_every_seeder_udp() {
    by_hash("udp");
}

#[test]
fn get_by_hash_takes_every_seeder_tcp() {
    by_hash("tcp");
}

/// `get blake3:HEX --secure` asks every holder in a sealed session of its own: with only a
/// holder that takes none (`--no-secure`), it fails saying so; with two default peers beside
/// it, the file comes sealed from those two, exact, and the plaintext-only one sends nothing.
#[test]
fn a_secure_get_by_hash_takes_the_sealed_holders_only() {
    let mut net = Net::start();
    let bytes = random_bytes(SIZE, 24);
    net.seeder("plain", "udp")
        .share("share-plain")
        .file("big.bin", &bytes)
        .args(&["--no-secure"])
        .start();
    let listing = net.ls("plain").run_json();
    let hash = format!("blake3:{}", listing[0]["hash"].as_str().unwrap());
    wait_holders(&net, "udp", &hash, 1);
    let out = net.cmd(&["get", &hash]).out("none").arg("--secure").run();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("but none accepts sealed sessions (they run with --no-secure"),
        "{err}"
    );
    for i in 0..2 {
        net.seeder(&format!("s{i}"), "udp")
            .share(&format!("share{i}"))
            .file("big.bin", &bytes)
            .args(&["--max-upload-rate", "16MiB"])
            .start();
    }
    wait_holders(&net, "udp", &hash, 3);
    let report = net
        .cmd(&["get", &hash])
        .out("out")
        .arg("--secure")
        .run_json();
    assert_eq!(report["sealed"], true, "{report}");
    check_file(&net, "out");
    let mut names: Vec<String> = sources(&report).into_iter().map(|(n, _)| n).collect();
    names.sort();
    assert_eq!(names, ["s0", "s1"], "{report}");
}

#[test]
fn get_peer_id_is_joined_by_the_other_seeders_unless_one_source() {
    let (net, _) = three_seeders("udp", 23);
    let report = net.get("s1", "1").out("many").run_json();
    check_file(&net, "many");
    let got = sources(&report);
    assert_eq!(got.len(), 3, "{report}");
    assert_eq!(got[0].0, "s1", "the named peer comes first: {got:?}");

    let one = net.get("s1", "1").out("one").arg("--one-source").run_json();
    check_file(&net, "one");
    assert!(one["sources"].is_null(), "{one}");
}

#[test]
fn a_shared_file_gets_a_ticket_that_fetches_it() {
    let net = Net::start();
    let bytes = random_bytes(3 * MIB + 5, 24);
    std::fs::create_dir_all(net.path("mine")).unwrap();
    let file = write_file(&net.path("mine"), "photo.raw", &bytes);
    let mut sharer = net
        .cmd(&["share", file.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .spawn();
    let line = sharer.wait_for("p2p get p2p1");
    let ticket = line.split_whitespace().last().unwrap().to_string();
    // The ticket names the tracker: no --tracker needed (a wrong one is ignored).
    let out = run(
        net.dir(),
        &[
            "get",
            &ticket,
            "--out",
            "fetched",
            "--json",
            "--tracker",
            "127.0.0.1:9",
        ],
    );
    let report = json(&out);
    let got = std::fs::read(net.path("fetched").join("photo.raw")).unwrap();
    assert!(got == bytes, "the ticket fetched other bytes");
    assert_eq!(report["size"].as_u64(), Some(bytes.len() as u64));
    // A damaged ticket says so.
    let cut = run(net.dir(), &["get", &ticket[..ticket.len() - 7]]);
    assert_eq!(cut.status.code(), Some(2), "{}", stderr(&cut));
    assert!(stderr(&cut).contains("damaged"), "{}", stderr(&cut));
}

#[test]
fn a_hash_nobody_shares_is_not_found() {
    let net = Net::start();
    let hash = format!("blake3:{}", "ab".repeat(32));
    let out = net.cmd(&["get", &hash]).out("out").run();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("nobody"), "{}", stderr(&out));
    let bad = net.cmd(&["get", "blake3:12"]).run();
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}

#[test]
fn the_menu_downloads_from_every_holder_too() {
    let (net, _) = three_seeders("udp", 25);
    let mut menu = net.menu().name("m").share("mine").downloads("dl").spawn();
    menu.wait_for("q                  : quit");
    menu.send("c s2 1");
    menu.wait_for("Downloading big.bin");
    let line = menu.wait_for("Saved ");
    assert!(line.contains("from s2 and 2 more"), "{line}");
    check_file(&net, "dl");
    menu.send("q");
}

#[test]
fn a_folder_comes_with_its_tree() {
    let mut net = Net::start();
    let (a, b, c) = (
        random_bytes(5000, 1),
        random_bytes(300_000, 2),
        random_bytes(77, 3),
    );
    net.seeder("s", "udp")
        .file("pics/a.txt", &a)
        .file("pics/sub/b.bin", &b)
        .file("pics2/a.txt", &c)
        .start();
    let out = net.get("s", "pics").out("out").run();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(net.path("out/pics/a.txt")).unwrap(), a);
    assert_eq!(std::fs::read(net.path("out/pics/sub/b.bin")).unwrap(), b);
    assert!(!net.path("out/pics2").exists(), "pics2 is another folder");
    // Again: everything is there already, nothing is fetched.
    let again = net.get("s", "pics/").out("out").run();
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("already present"),
        "{}",
        stdout(&again)
    );
    // A folder nobody has.
    let none = net.get("s", "nope").out("out").run();
    assert_eq!(none.status.code(), Some(4), "{}", stderr(&none));
}

/// Two processes, one destination: a second multi-source `get` of a file another one is
/// writing is refused at once (exit 6, named), and the first one's file is exact.
#[test]
fn a_second_process_on_the_same_destination_is_refused() {
    // 12 MiB at 3 x 2 MiB/s: about 2 s, long enough for a checkpoint (every second).
    let (net, hash) = three_seeders_at("udp", 26, "2MiB");
    let mut first = net.cmd(&["get", &hash]).out("out").json().spawn();
    first.wait_checkpoint(1);
    let second = net.cmd(&["get", &hash]).out("out").run();
    assert_eq!(second.status.code(), Some(6), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("already being downloaded"),
        "{}",
        stderr(&second)
    );
    assert!(first.wait_exit().success());
    check_file(&net, "out");
}

/// Downloaders serve: `get --serve` registers the download, and a second downloader of the
/// same content finds it through the tracker and takes from it pieces it verified. One
/// seeder capped at 4 MiB/s (12 MiB: about 3 s alone); the second `get` starts once the
/// first has a checkpoint and the tracker lists it as a holder. Both copies are exact, the
/// second's report names the first as a source that sent bytes, and the first is gone from
/// the tracker's list once it is done.
fn downloaders_serve(transport: &str) {
    let mut net = Net::start();
    let bytes = random_bytes(SIZE, 27);
    net.seeder("s0", transport)
        .share("share0")
        .file("big.bin", &bytes)
        .args(&["--max-upload-rate", "4MiB"])
        .start();
    let listing = net.ls("s0").transport(transport).run_json();
    let hash = format!("blake3:{}", listing[0]["hash"].as_str().unwrap());
    wait_holders(&net, transport, &hash, 1);
    let mut first = net
        .cmd(&["get", &hash, "--serve", "first"])
        .transport(transport)
        .out("out1")
        .json()
        .spawn();
    first.wait_checkpoint(1);
    let holders = wait_holders(&net, transport, &hash, 2);
    assert!(holders.contains(&"first".to_string()), "{holders:?}");
    let report = net
        .cmd(&["get", &hash, "--serve", "second"])
        .transport(transport)
        .out("out2")
        .run_json();
    check_file(&net, "out2");
    let got = sources(&report);
    let from_first = got.iter().find(|(n, _)| n == "first").map_or(0, |s| s.1);
    assert!(from_first > 0, "the first downloader sent nothing: {got:?}");
    assert_eq!(got.iter().map(|(_, b)| b).sum::<u64>(), SIZE as u64);
    assert!(first.wait_exit().success());
    check_file(&net, "out1");
    let left = wait_holders(&net, transport, &hash, 1);
    assert!(!left.contains(&"first".to_string()), "{left:?}");
}

#[test]
fn a_downloader_serves_what_it_verified_udp() {
    downloaders_serve("udp");
}

#[test]
fn a_downloader_serves_what_it_verified_tcp() {
    downloaders_serve("tcp");
}
