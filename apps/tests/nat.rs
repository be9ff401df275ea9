//! Peers behind real NATs: network namespaces joined by veth pairs, two private LANs each
//! behind a router namespace that masquerades (`scripts/nat-lab.sh`), the tracker on the
//! public side, and the real `p2p` binary in each namespace (`ip netns exec`).
//!
//! Runs only where namespaces can be made (root, `ip netns`, iptables present or
//! installable); elsewhere each test prints `skipped: ...` and passes. Waiting is for lines
//! the processes print, with deadlines, never a sleep.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::channel;
use std::time::Duration;

mod common;
use common::{random_bytes, Proc, SETTINGS_ENV};

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
        Proc::spawn_command(self.command(ns, args))
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
        self.tracker_with(&[])
    }

    /// The tracker in the public namespace, with `extra` flags.
    fn tracker_with(&self, extra: &[&str]) -> Proc {
        let mut args = vec!["tracker", "--listen", TRACKER];
        args.extend(extra);
        let mut t = self.spawn("pub", &args);
        t.wait_for("tracker listening on");
        t
    }

    /// A seeder named `name` in namespace `ns`, sharing `share`, registered over UDP.
    fn seeder(&self, ns: &str, name: &str, share: &str) -> Proc {
        self.seeder_on(ns, name, share, "udp")
    }

    /// A seeder named `name` in namespace `ns`, sharing `share`, registered over `transport`.
    fn seeder_on(&self, ns: &str, name: &str, share: &str, transport: &str) -> Proc {
        self.seeder_with(ns, name, share, transport, &[])
    }

    /// [`Lab::seeder_on`] with `extra` flags.
    fn seeder_with(
        &self,
        ns: &str,
        name: &str,
        share: &str,
        transport: &str,
        extra: &[&str],
    ) -> Proc {
        let mut args = vec![
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
            transport,
            "--no-menu",
        ];
        args.extend(extra);
        let mut p = self.spawn(ns, &args);
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

fn json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("JSON")
}

/// `get NAME 001 --json` in `ns` into `out`.
fn get(lab: &Lab, ns: &str, name: &str, out: &Path) -> Output {
    get_on(lab, ns, name, out, "udp")
}

/// `get NAME 001 --json --transport TRANSPORT` in `ns` into `out`.
fn get_on(lab: &Lab, ns: &str, name: &str, out: &Path, transport: &str) -> Output {
    get_with(lab, ns, name, out, transport, &[])
}

/// [`get_on`] with `extra` flags.
fn get_with(
    lab: &Lab,
    ns: &str,
    name: &str,
    out: &Path,
    transport: &str,
    extra: &[&str],
) -> Output {
    let mut args = vec![
        "get",
        name,
        "001",
        "--tracker",
        TRACKER,
        "--transport",
        transport,
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    args.extend(extra);
    lab.run(ns, &args)
}

/// Alice behind NAT A and bob behind NAT B (both Linux masquerade: cone-like) each share a
/// file; each downloads the other's, byte-exact over UDP, through a hole the tracker's
/// introduction punched in both NATs. Without it nothing gets in: the tracker lists alice at
/// router A's address, where router A has no mapping for bob (the first version of this
/// test, before punching, showed bob's `get` failing with "does not answer").
#[test]
fn peers_behind_two_cone_nats_download_from_each_other_through_a_punched_hole() {
    let test = "peers_behind_two_cone_nats_download_from_each_other_through_a_punched_hole";
    let Some(lab) = Lab::up(test, &[]) else {
        return;
    };
    let _tracker = lab.tracker();
    let alice_bytes = random_bytes(3_000_000, 1);
    let bob_bytes = random_bytes(1_000_000, 2);
    let alice_share = lab.share("alice", "from-alice.bin", &alice_bytes);
    let bob_share = lab.share("bob", "from-bob.bin", &bob_bytes);
    let _alice = lab.seeder("a", "alice", &alice_share);
    let _bob = lab.seeder("b", "bob", &bob_share);
    let listed = json(&lab.run("b", &["peers", "--tracker", TRACKER, "--json"])).to_string();
    assert!(
        listed.contains("172.16.1.2:10001"),
        "alice at router A: {listed}"
    );
    assert!(
        listed.contains("172.16.2.2:10001"),
        "bob at router B: {listed}"
    );

    let out_b = lab.path("out-b");
    let report = json(&get(&lab, "b", "alice", &out_b));
    eprintln!("bob got alice's file: {report}");
    assert_eq!(report["route"], "punched", "{report}");
    assert_eq!(
        std::fs::read(out_b.join("from-alice.bin")).unwrap(),
        alice_bytes
    );

    let out_a = lab.path("out-a");
    let report = json(&get(&lab, "a", "bob", &out_a));
    eprintln!("alice got bob's file: {report}");
    assert_eq!(report["route"], "punched", "{report}");
    assert_eq!(
        std::fs::read(out_a.join("from-bob.bin")).unwrap(),
        bob_bytes
    );

    // `ls` punches too.
    let ls = json(&lab.run("a", &["ls", "bob", "--tracker", TRACKER, "--json"]));
    assert!(ls.to_string().contains("from-bob.bin"), "{ls}");
}

/// Behind a symmetric-like NAT (`--random-fully`: a new port for every destination), the
/// mapping the tracker sees is not the one toward the other peer: punching fails, and with a
/// tracker that does not relay, `get` says the peer does not answer.
#[test]
fn without_a_relay_a_symmetric_nat_defeats_punching() {
    let test = "without_a_relay_a_symmetric_nat_defeats_punching";
    let Some(lab) = Lab::up(test, &["--symmetric", "a"]) else {
        return;
    };
    let _tracker = lab.tracker_with(&["--no-relay"]);
    let share = lab.share("alice", "file.bin", &random_bytes(100_000, 1));
    let _alice = lab.seeder("a", "alice", &share);
    let out = lab.path("out-b");
    let get = get(&lab, "b", "alice", &out);
    let stderr = String::from_utf8_lossy(&get.stderr);
    assert!(!get.status.success(), "{stderr}");
    assert!(stderr.contains("does not answer"), "{stderr}");
    assert!(stderr.contains("this tracker does not relay"), "{stderr}");
    assert!(!out.join("file.bin").exists());
}

/// Alice behind a symmetric-like NAT, bob behind a cone NAT, the tracker relaying (its
/// default): no hole can be punched, so each `get` goes through the tracker's relay, and
/// both downloads are byte-exact over UDP, reported as `"route": "relayed"`.
#[test]
fn a_symmetric_nat_is_crossed_through_the_relay_both_ways() {
    let test = "a_symmetric_nat_is_crossed_through_the_relay_both_ways";
    let Some(lab) = Lab::up(test, &["--symmetric", "a"]) else {
        return;
    };
    let _tracker = lab.tracker();
    let alice_bytes = random_bytes(2_000_000, 3);
    let bob_bytes = random_bytes(700_000, 4);
    let _alice = lab.seeder(
        "a",
        "alice",
        &lab.share("alice", "from-alice.bin", &alice_bytes),
    );
    let _bob = lab.seeder("b", "bob", &lab.share("bob", "from-bob.bin", &bob_bytes));
    let out_b = lab.path("out-b");
    let report = json(&get(&lab, "b", "alice", &out_b));
    assert_eq!(report["route"], "relayed", "{report}");
    assert_eq!(
        std::fs::read(out_b.join("from-alice.bin")).unwrap(),
        alice_bytes
    );
    let out_a = lab.path("out-a");
    let report = json(&get(&lab, "a", "bob", &out_a));
    assert_eq!(report["route"], "relayed", "{report}");
    assert_eq!(
        std::fs::read(out_a.join("from-bob.bin")).unwrap(),
        bob_bytes
    );
}

/// Alice shares over TCP behind a NAT (nothing forwarded): her listed address takes no
/// connection, so bob's `get --transport tcp` goes through the tracker's relay (over the
/// connection alice keeps to the tracker) and is byte-exact.
#[test]
fn a_tcp_peer_behind_a_nat_is_reached_through_the_relay() {
    let test = "a_tcp_peer_behind_a_nat_is_reached_through_the_relay";
    let Some(lab) = Lab::up(test, &[]) else {
        return;
    };
    let _tracker = lab.tracker();
    let bytes = random_bytes(1_500_000, 5);
    let _alice = lab.seeder_on("a", "alice", &lab.share("alice", "tcp.bin", &bytes), "tcp");
    let out = lab.path("out-b");
    let report = json(&get_on(&lab, "b", "alice", &out, "tcp"));
    assert_eq!(report["route"], "relayed", "{report}");
    assert_eq!(std::fs::read(out.join("tcp.bin")).unwrap(), bytes);
}

/// A tracker with `--secure`, named by its key (`--tracker-key`) by the peers and by `get`:
/// the lookups, the registrations and the relay sessions go sealed to it, and a symmetric
/// NAT is still crossed through its relay, both ways, byte-exact.
#[test]
fn a_sealed_tracker_relays_across_a_symmetric_nat() {
    let test = "a_sealed_tracker_relays_across_a_symmetric_nat";
    let Some(lab) = Lab::up(test, &["--symmetric", "a"]) else {
        return;
    };
    let mut tracker = lab.spawn("pub", &["tracker", "--listen", TRACKER, "--secure"]);
    let line = tracker.wait_for("sealed sessions accepted: tracker key");
    let key = line
        .split("tracker key ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a key on the line")
        .to_string();
    let sealed = ["--tracker-key", key.as_str()];
    let alice_bytes = random_bytes(1_200_000, 6);
    let bob_bytes = random_bytes(500_000, 7);
    let alice_share = lab.share("alice", "from-alice.bin", &alice_bytes);
    let bob_share = lab.share("bob", "from-bob.bin", &bob_bytes);
    let _alice = lab.seeder_with("a", "alice", &alice_share, "udp", &sealed);
    let _bob = lab.seeder_with("b", "bob", &bob_share, "udp", &sealed);
    let out_b = lab.path("out-b");
    let report = json(&get_with(&lab, "b", "alice", &out_b, "udp", &sealed));
    assert_eq!(report["route"], "relayed", "{report}");
    assert_eq!(
        std::fs::read(out_b.join("from-alice.bin")).unwrap(),
        alice_bytes
    );
    let out_a = lab.path("out-a");
    let report = json(&get_with(&lab, "a", "bob", &out_a, "udp", &sealed));
    assert_eq!(report["route"], "relayed", "{report}");
    assert_eq!(
        std::fs::read(out_a.join("from-bob.bin")).unwrap(),
        bob_bytes
    );
}
