//! Two processes, one destination: concurrent `get`s of one file into one folder, over UDP
//! and TCP, overlapping at the start, in the middle and at the finish; the menu and a `get`
//! meeting; symlinks planted at the partial, state and lock files. Every run: the file under
//! the final name is exact or absent, exit 0 only with the exact file, nothing left behind.
//!
//! The seeder's `--max-upload-rate` keeps a download in flight for a second or two; each
//! overlap is timed by what the first process reports (`--json` checkpoints), never by sleeps.

mod common;

use std::fs;

use common::*;

const MIB: usize = 1024 * 1024;
const SIZE: usize = 24 * MIB + 777;

/// A tracker and a seeder `seed` of `big.bin` at 16 MiB/s (1.5 s per download).
fn seeding_big(transport: &str, seed: u64) -> Net {
    let mut net = Net::start();
    net.seeder("seed", transport)
        .file("big.bin", &random_bytes(SIZE, seed))
        .args(&["--max-upload-rate", "16MiB"])
        .start();
    net
}

/// `p2p get seed 1 --out out --json`, started.
fn get(net: &Net, transport: &str) -> Proc {
    net.get("seed", "1")
        .transport(transport)
        .out("out")
        .json()
        .spawn()
}

/// What every run must end with: the exact file under its name (or nothing, when
/// `must_exist` is false) and no partial, state or lock file left behind.
fn check_final(net: &Net, must_exist: bool) {
    let out = net.path("out");
    let dest = out.join("big.bin");
    match fs::read(&dest) {
        Ok(bytes) => assert!(
            bytes == net.bytes("big.bin"),
            "{} is not the exact file ({} bytes)",
            dest.display(),
            bytes.len()
        ),
        Err(_) => assert!(!must_exist, "{} is missing", dest.display()),
    }
    let left: Vec<_> = fs::read_dir(&out)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().all(|n| n == "big.bin"),
        "left behind in out/: {left:?}"
    );
}

/// The outcome of one `get`: exit 0 only with the exact file (reported as saved, or already
/// present); otherwise a clear refusal naming the other download.
#[derive(Debug, PartialEq)]
enum Outcome {
    Saved,
    AlreadyPresent,
    Refused,
}

fn outcome(net: &Net, p: &mut Proc) -> Outcome {
    let (status, out) = p.wait_output();
    if status.success() {
        let dest = net.path("out/big.bin");
        assert!(
            fs::read(&dest).unwrap() == net.bytes("big.bin"),
            "exit 0 without the exact file: {out}"
        );
        let report = out
            .lines()
            .find(|l| l.starts_with('{') && l.contains("\"path\""))
            .unwrap_or_else(|| panic!("no report: {out}"));
        let v: serde_json::Value = serde_json::from_str(report).unwrap();
        if v["already_present"] == true {
            Outcome::AlreadyPresent
        } else {
            Outcome::Saved
        }
    } else {
        assert!(
            // (With its pid, unless the holder had not written it yet.)
            out.contains("is already being downloaded by another p2p process"),
            "a failed get says why, naming the other download: {out}"
        );
        Outcome::Refused
    }
}

/// `n` gets started together: exactly one downloads, the others are refused (or, had one
/// finished first, find the file present).
fn together(transport: &str, n: usize) {
    let net = seeding_big(transport, n as u64);
    let mut gets: Vec<Proc> = (0..n).map(|_| get(&net, transport)).collect();
    let outcomes: Vec<Outcome> = gets.iter_mut().map(|p| outcome(&net, p)).collect();
    let saved = outcomes.iter().filter(|o| **o == Outcome::Saved).count();
    assert_eq!(saved, 1, "exactly one downloads: {outcomes:?}");
    check_final(&net, true);
}

#[test]
fn two_gets_started_together_udp() {
    together("udp", 2);
}

#[test]
fn three_gets_started_together_tcp() {
    together("tcp", 3);
}

/// Second (and third) gets while the first is halfway: refused at once, naming the first's
/// pid; the first completes with the exact file.
fn midway(transport: &str, others: usize) {
    let net = seeding_big(transport, 10 + others as u64);
    let mut first = get(&net, transport);
    first.wait_checkpoint(1);
    let pid = first.child.id();
    for _ in 0..others {
        let mut late = get(&net, transport);
        let (status, out) = late.wait_output();
        assert!(!status.success(), "{out}");
        assert!(
            out.contains(&format!(
                "already being downloaded by another p2p process (pid {pid})"
            )),
            "{out}"
        );
        assert!(out.contains("wait for it to finish"), "{out}");
    }
    assert_eq!(outcome(&net, &mut first), Outcome::Saved);
    check_final(&net, true);
}

#[test]
fn gets_in_the_middle_of_a_download_are_refused_udp() {
    midway("udp", 2);
}

#[test]
fn gets_in_the_middle_of_a_download_are_refused_tcp() {
    midway("tcp", 1);
}

/// A second get as the first one finishes (its last checkpoint before the end reported):
/// refused while the first holds the file, or finding it present once named. A third, after
/// the first exited, finds it present.
fn at_the_finish(transport: &str) {
    let net = seeding_big(transport, 20);
    let mut first = get(&net, transport);
    // Checkpoints come every second; at 16 MiB/s the last one before the end is past 8 MiB.
    first.wait_checkpoint(8 * MIB as u64);
    let mut second = get(&net, transport);
    assert_eq!(outcome(&net, &mut first), Outcome::Saved);
    let o = outcome(&net, &mut second);
    assert!(o != Outcome::Saved, "the file was downloaded twice");
    let mut third = get(&net, transport);
    assert_eq!(outcome(&net, &mut third), Outcome::AlreadyPresent);
    check_final(&net, true);
}

#[test]
fn a_get_as_the_first_finishes_udp() {
    at_the_finish("udp");
}

#[test]
fn a_get_as_the_first_finishes_tcp() {
    at_the_finish("tcp");
}

/// The menu and a `get` in another terminal, both into one folder: whichever claims it first
/// downloads, the other is refused; the file is exact.
#[test]
fn the_menu_and_a_get_meet() {
    let net = seeding_big("udp", 30);
    let mut menu = net
        .menu()
        .name("menu")
        .share("share")
        .downloads(net.path("out"))
        .spawn();
    menu.wait_for("c -peer_name -id");
    menu.send("c seed 001");
    menu.wait_for("Downloading big.bin");
    let mut get = get(&net, "udp");
    let got = outcome(&net, &mut get);
    let menu_line = menu.wait_for("[menu] ");
    match got {
        Outcome::Saved => assert!(
            menu_line.contains("already being downloaded by another p2p process"),
            "{menu_line}"
        ),
        Outcome::Refused => assert!(menu_line.contains("Saved"), "{menu_line}"),
        Outcome::AlreadyPresent => assert!(menu_line.contains("Saved"), "{menu_line}"),
    }
    menu.send("q");
    check_final(&net, true);
}

/// Symlinks planted at the partial, the state and the lock file, each pointing at a file
/// outside `--out`: the download never writes through them, and completes.
#[test]
fn planted_symlinks_are_never_followed() {
    for transport in ["udp", "tcp"] {
        let net = seeding_big(transport, 40);
        let out = net.path("out");
        fs::create_dir_all(&out).unwrap();
        let victim = net.path("victim.txt");
        fs::write(&victim, b"do not touch").unwrap();
        for suffix in [".p2p-part", ".p2p-state", ".p2p-lock", ".p2p-state.tmp"] {
            std::os::unix::fs::symlink(&victim, hidden(&out, "big.bin", suffix)).unwrap();
        }
        let mut get = get(&net, transport);
        assert_eq!(outcome(&net, &mut get), Outcome::Saved);
        assert_eq!(fs::read(&victim).unwrap(), b"do not touch");
        check_final(&net, true);
    }
}

/// A symlink planted at the partial while a download runs (it is not followed when the
/// download goes on, nor when a resume starts): the final file is exact or absent.
#[test]
fn a_partial_replaced_by_a_symlink_mid_download_is_never_published() {
    let net = seeding_big("udp", 50);
    let victim = net.path("victim.bin");
    fs::write(&victim, b"not the download").unwrap();
    let mut first = get(&net, "udp");
    first.wait_checkpoint(1);
    let partial = hidden(&net.path("out"), "big.bin", ".p2p-part");
    fs::remove_file(&partial).unwrap();
    std::os::unix::fs::symlink(&victim, &partial).unwrap();
    let (status, out) = first.wait_output();
    let dest = net.path("out/big.bin");
    assert!(!status.success(), "the partial vanished, yet: {out}");
    assert!(
        fs::symlink_metadata(&dest).is_err(),
        "nothing under the final name: {out}"
    );
    assert_eq!(fs::read(&victim).unwrap(), b"not the download");
    // A new get starts over (the link is removed, not followed) and completes.
    let mut again = get(&net, "udp");
    assert_eq!(outcome(&net, &mut again), Outcome::Saved);
    assert_eq!(fs::read(&victim).unwrap(), b"not the download");
    check_final(&net, true);
}
