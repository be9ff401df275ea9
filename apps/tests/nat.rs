//! Peers behind real NATs: network namespaces joined by veth pairs, two private LANs each
//! behind a router namespace that masquerades (`scripts/nat-lab.sh`), the tracker on the
//! public side, and the real `p2p` binary in each namespace (`ip netns exec`).
//!
//! Runs only where namespaces can be made (root, `ip netns`, iptables present or
//! installable); elsewhere each test prints `skipped: ...` and passes. Waiting is for lines
//! the processes print, with deadlines, never a sleep.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

mod common;
use common::{random_bytes, SETTINGS_ENV};

const DEADLINE: Duration = Duration::from_secs(30);
/// The tracker's address in the lab (on the public router's `lo`).
const TRACKER: &str = "172.16.0.1:9000";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nat-lab.sh")
}

/// Why namespaces cannot be made here, if they cannot.
fn unavailable() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root (network namespaces need it)".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        _ => Some("`ip netns` does not work here".into()),
    }
}

/// A lab brought up by `nat-lab.sh up`, taken down on drop (also when a test fails).
struct Lab {
    prefix: String,
    dir: tempfile::TempDir,
}

impl Lab {
    /// `None` (after printing why) where namespaces cannot be made.
    fn up(test: &str, extra: &[&str]) -> Option<Lab> {
        if let Some(why) = unavailable() {
            eprintln!("skipped: {test}: {why}");
            return None;
        }
        let out = Command::new("bash")
            .arg(script())
            .arg("up")
            .args(extra)
            .output()
            .expect("run nat-lab.sh");
        if !out.status.success() {
            eprintln!(
                "skipped: {test}: nat-lab.sh up failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        let prefix = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let dir = tempfile::tempdir().unwrap();
        Some(Lab { prefix, dir })
    }

    /// `p2p args` inside namespace `ns`, in the lab's folder, without the user's settings.
    fn command(&self, ns: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &format!("{}-{ns}", self.prefix)])
            .arg(env!("CARGO_BIN_EXE_p2p"))
            .args(args)
            .current_dir(self.dir.path())
            .env("XDG_CONFIG_HOME", self.dir.path().join(".xdg-config"))
            .env("XDG_DATA_HOME", self.dir.path().join(".xdg-data"));
        for var in SETTINGS_ENV {
            cmd.env_remove(var);
        }
        cmd
    }

    fn spawn(&self, ns: &str, args: &[&str]) -> Proc {
        Proc::spawn(self.command(ns, args))
    }

    /// Runs a one-shot `p2p` command in `ns` to its end (killed past the deadline).
    fn run(&self, ns: &str, args: &[&str]) -> Output {
        let child = self
            .command(ns, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn p2p");
        let pid = child.id();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(DEADLINE) {
            Ok(out) => out.expect("p2p ran"),
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                panic!("p2p {args:?} in {ns} did not finish within {DEADLINE:?}")
            }
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A folder `name` holding `file` with `bytes`.
    fn share(&self, name: &str, file: &str, bytes: &[u8]) -> String {
        let dir = self.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), bytes).unwrap();
        dir.to_str().unwrap().to_string()
    }

    /// The tracker in the public namespace.
    fn tracker(&self) -> Proc {
        let mut t = self.spawn("pub", &["tracker", "--listen", TRACKER]);
        t.wait_for("tracker listening on");
        t
    }

    /// A seeder named `name` in namespace `ns`, sharing `share`, registered over UDP.
    fn seeder(&self, ns: &str, name: &str, share: &str) -> Proc {
        let mut p = self.spawn(
            ns,
            &[
                "peer",
                "--name",
                name,
                "--port",
                "10001",
                "--tracker",
                TRACKER,
                "--share",
                share,
                "--transport",
                "udp",
                "--no-menu",
            ],
        );
        p.wait_for("registered with");
        p
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", &self.prefix])
            .status();
    }
}

/// A running process whose output lines are collected.
struct Proc {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn p2p");
        let (tx, lines) = channel();
        let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [out, err] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn wait_for(&mut self, needle: &str) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!("no line with {needle:?} ({e}); saw {:#?}", self.seen),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // `ip netns exec` execs p2p: this is p2p's own pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("JSON")
}

/// Today's situation without rendezvous: alice registers from behind NAT A and the tracker
/// lists her at router A's public address (her port kept by masquerade), but bob, behind
/// NAT B, cannot download from her there: router A has no mapping that lets bob's datagrams
/// in.
#[test]
fn a_peer_behind_nat_is_listed_but_not_reachable_directly() {
    let Some(lab) = Lab::up(
        "a_peer_behind_nat_is_listed_but_not_reachable_directly",
        &[],
    ) else {
        return;
    };
    let _tracker = lab.tracker();
    let share = lab.share("alice", "file.bin", &random_bytes(100_000, 1));
    let _alice = lab.seeder("a", "alice", &share);
    let peers = json(&lab.run("b", &["peers", "--tracker", TRACKER, "--json"]));
    let listed = peers.to_string();
    assert!(
        listed.contains("172.16.1.2:10001"),
        "alice at router A's address: {listed}"
    );
    let out = lab.path("out-b");
    let get = lab.run(
        "b",
        &[
            "get",
            "alice",
            "001",
            "--tracker",
            TRACKER,
            "--out",
            out.to_str().unwrap(),
            "--json",
        ],
    );
    let stderr = String::from_utf8_lossy(&get.stderr);
    assert!(!get.status.success(), "no way in yet: {stderr}");
    assert!(stderr.contains("does not answer"), "{stderr}");
    assert!(!out.join("file.bin").exists());
}
