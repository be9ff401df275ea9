//! Two processes, one destination: concurrent `get`s of one file into one folder, over UDP
//! and TCP, overlapping at the start, in the middle and at the finish; the menu and a `get`
//! meeting; symlinks planted at the partial, state and lock files. Every run: the file under
//! the final name is exact or absent, exit 0 only with the exact file, nothing left behind.
//!
//! The seeder's `--max-upload-rate` keeps a download in flight for a second or two; each
//! overlap is timed by what the first process reports (`--json` checkpoints), never by sleeps.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

const MIB: usize = 1024 * 1024;
const SIZE: usize = 24 * MIB + 777;

struct Setup {
    dir: tempfile::TempDir,
    tracker: String,
    content: Vec<u8>,
    _procs: Vec<Proc>,
}

impl Setup {
    /// A tracker and a seeder of `big.bin` at 16 MiB/s (1.5 s per download).
    fn new(transport: &str, seed: u64) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        fs::create_dir(&share).unwrap();
        let content = random_bytes(SIZE, seed);
        write_file(&share, "big.bin", &content);
        let (t, tracker) = tracker(dir.path(), &[]);
        let seeder = peer(
            dir.path(),
            "seed",
            &tracker,
            &share,
            transport,
            &["--max-upload-rate", "16MiB"],
        );
        Setup {
            dir,
            tracker,
            content,
            _procs: vec![t, seeder],
        }
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// `p2p get seed 1 --out out --json`, started.
    fn get(&self, transport: &str) -> Proc {
        Proc::spawn(
            self.dir.path(),
            &[
                "get",
                "seed",
                "1",
                "--tracker",
                &self.tracker,
                "--transport",
                transport,
                "--out",
                "out",
                "--json",
            ],
        )
    }

    /// What every run must end with: the exact file under its name (or nothing, when
    /// `must_exist` is false) and no partial, state or lock file left behind.
    fn check_final(&self, must_exist: bool) {
        let dest = self.out().join("big.bin");
        match fs::read(&dest) {
            Ok(bytes) => assert!(
                bytes == self.content,
                "{} is not the exact file ({} bytes)",
                dest.display(),
                bytes.len()
            ),
            Err(_) => assert!(!must_exist, "{} is missing", dest.display()),
        }
        let left: Vec<_> = fs::read_dir(self.out())
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.iter().all(|n| n == "big.bin"),
            "left behind in out/: {left:?}"
        );
    }
}

/// The outcome of one `get`: exit 0 only with the exact file (reported as saved, or already
/// present); otherwise a clear refusal naming the other download.
#[derive(Debug, PartialEq)]
enum Outcome {
    Saved,
    AlreadyPresent,
    Refused,
}

fn outcome(s: &Setup, p: &mut Proc) -> Outcome {
    let (status, out) = p.wait_output();
    if status.success() {
        let dest = s.out().join("big.bin");
        assert!(
            fs::read(&dest).unwrap() == s.content,
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
            out.contains("is already being downloaded by another p2p process (pid "),
            "a failed get says why, naming the other download: {out}"
        );
        Outcome::Refused
    }
}

/// Waits until `get --json` reports a checkpoint of at least `at_least` bytes.
fn wait_checkpoint(p: &mut Proc, at_least: u64) {
    loop {
        let line = p.wait_for("\"checkpoint\"");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["checkpoint"].as_u64().unwrap() >= at_least {
            return;
        }
    }
}

/// `n` gets started together: exactly one downloads, the others are refused (or, had one
/// finished first, find the file present).
fn together(transport: &str, n: usize) {
    let s = Setup::new(transport, n as u64);
    let mut gets: Vec<Proc> = (0..n).map(|_| s.get(transport)).collect();
    let outcomes: Vec<Outcome> = gets.iter_mut().map(|p| outcome(&s, p)).collect();
    let saved = outcomes.iter().filter(|o| **o == Outcome::Saved).count();
    assert_eq!(saved, 1, "exactly one downloads: {outcomes:?}");
    s.check_final(true);
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
    let s = Setup::new(transport, 10 + others as u64);
    let mut first = s.get(transport);
    wait_checkpoint(&mut first, 1);
    let pid = first.child.id();
    for _ in 0..others {
        let mut late = s.get(transport);
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
    assert_eq!(outcome(&s, &mut first), Outcome::Saved);
    s.check_final(true);
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
    let s = Setup::new(transport, 20);
    let mut first = s.get(transport);
    // Checkpoints come every second; at 16 MiB/s the last one before the end is past 8 MiB.
    wait_checkpoint(&mut first, 8 * MIB as u64);
    let mut second = s.get(transport);
    assert_eq!(outcome(&s, &mut first), Outcome::Saved);
    let o = outcome(&s, &mut second);
    assert!(o != Outcome::Saved, "the file was downloaded twice");
    let mut third = s.get(transport);
    assert_eq!(outcome(&s, &mut third), Outcome::AlreadyPresent);
    s.check_final(true);
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
    let s = Setup::new("udp", 30);
    let out = s.out();
    let mut menu = Proc::spawn(
        s.dir.path(),
        &[
            "peer",
            "--name",
            "menu",
            "--listen",
            "127.0.0.1:0",
            "--tracker",
            &s.tracker,
            "--share",
            s.dir.path().join("share").to_str().unwrap(),
            "--downloads",
            out.to_str().unwrap(),
        ],
    );
    menu.wait_for("c -peer_name -id");
    menu.send("c seed 001");
    menu.wait_for("Downloading big.bin");
    let mut get = s.get("udp");
    let got = outcome(&s, &mut get);
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
    s.check_final(true);
}

/// Symlinks planted at the partial, the state and the lock file, each pointing at a file
/// outside `--out`: the download never writes through them, and completes.
#[test]
fn planted_symlinks_are_never_followed() {
    for transport in ["udp", "tcp"] {
        let s = Setup::new(transport, 40);
        let out = s.out();
        fs::create_dir_all(&out).unwrap();
        let victim = s.dir.path().join("victim.txt");
        fs::write(&victim, b"do not touch").unwrap();
        for suffix in [".p2p-part", ".p2p-state", ".p2p-lock", ".p2p-state.tmp"] {
            std::os::unix::fs::symlink(&victim, hidden(&out, suffix)).unwrap();
        }
        let mut get = s.get(transport);
        assert_eq!(outcome(&s, &mut get), Outcome::Saved);
        assert_eq!(fs::read(&victim).unwrap(), b"do not touch");
        s.check_final(true);
    }
}

/// A symlink planted at the partial while a download runs (it is not followed when the
/// download goes on, nor when a resume starts): the final file is exact or absent.
#[test]
fn a_partial_replaced_by_a_symlink_mid_download_is_never_published() {
    let s = Setup::new("udp", 50);
    let victim = s.dir.path().join("victim.bin");
    fs::write(&victim, b"not the download").unwrap();
    let mut first = s.get("udp");
    wait_checkpoint(&mut first, 1);
    let partial = hidden(&s.out(), ".p2p-part");
    fs::remove_file(&partial).unwrap();
    std::os::unix::fs::symlink(&victim, &partial).unwrap();
    let (status, out) = first.wait_output();
    let dest = s.out().join("big.bin");
    assert!(!status.success(), "the partial vanished, yet: {out}");
    assert!(
        fs::symlink_metadata(&dest).is_err(),
        "nothing under the final name: {out}"
    );
    assert_eq!(fs::read(&victim).unwrap(), b"not the download");
    // A new get starts over (the link is removed, not followed) and completes.
    let mut again = s.get("udp");
    assert_eq!(outcome(&s, &mut again), Outcome::Saved);
    assert_eq!(fs::read(&victim).unwrap(), b"not the download");
    s.check_final(true);
}

fn hidden(out: &Path, suffix: &str) -> PathBuf {
    out.join(format!(".big.bin{suffix}"))
}
