//! The services under attack: a tracker, a seeding peer over UDP and a seeding peer over TCP,
//! started afresh for each test on ephemeral ports in a temporary folder, and the checks every
//! test ends with.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use p2p_proto::wire::FileId;

use crate::common::{peer, random_bytes, run, stderr, stdout, write_file, Proc};
use crate::MEMORY_BOUND_KIB;

pub const SMALL: &str = "small.txt";
pub const BIG: &str = "big.bin";
pub const DOTS: &str = "..evil";
pub const NESTED: &str = "sub/dir/x.txt";

pub struct Services {
    dir: tempfile::TempDir,
    pub share: PathBuf,
    tracker: Proc,
    tr: String,
    pub tracker_addr: SocketAddr,
    udp_peer: Proc,
    pub udp_addr: SocketAddr,
    tcp_peer: Proc,
    pub tcp_addr: SocketAddr,
    /// (id, relative path) of the shared files, as `p2p ls` lists them.
    files: Vec<(String, String)>,
    /// Findings of the test, printed as they come and again at the end (`--nocapture` or a
    /// failure shows them).
    log: RefCell<Vec<String>>,
    started: Instant,
}

fn listen_addr(p: &Proc) -> SocketAddr {
    let line = p
        .seen
        .iter()
        .find(|l| l.contains(" listening on "))
        .expect("the peer printed its address");
    line.split_whitespace().nth(4).unwrap().parse().unwrap()
}

pub fn json_of(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

impl Services {
    /// Starts the three services with small limits (`--rate-limit 50`, `--max-peers 100`,
    /// `--max-connections 64`, peers' `--idle-timeout 3s`) sharing `small.txt`, `big.bin`
    /// (1 MiB + 7), `..evil`, `sub/dir/x.txt` and two symlinks out of the share, which must not
    /// be listed.
    pub fn start() -> Services {
        let started = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        fs::create_dir_all(share.join("sub/dir")).unwrap();
        write_file(&share, SMALL, b"a small shared file\n");
        write_file(&share, BIG, &random_bytes(1024 * 1024 + 7, 42));
        write_file(&share, DOTS, b"a file whose name starts with two dots\n");
        write_file(&share, NESTED, b"nested three folders deep\n");
        // Links out of the share must never be listed.
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        write_file(dir.path(), "secret.txt", b"the secret outside the share\n");
        write_file(&outside, "secret2.txt", b"another secret\n");
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), share.join("leak.txt")).unwrap();
        std::os::unix::fs::symlink(&outside, share.join("leakdir")).unwrap();

        let limits = ["--rate-limit", "50", "--max-connections", "64"];
        let mut t_args = vec!["--max-peers", "100"];
        t_args.extend_from_slice(&limits);
        let (tracker, tr) = crate::common::tracker(dir.path(), &t_args);
        let mut p_args = vec!["--idle-timeout", "3s"];
        p_args.extend_from_slice(&limits);
        let udp_peer = peer(dir.path(), "udp-seeder", &tr, &share, "udp", &p_args);
        let tcp_peer = peer(dir.path(), "tcp-seeder", &tr, &share, "tcp", &p_args);
        let udp_addr = listen_addr(&udp_peer);
        let tcp_addr = listen_addr(&tcp_peer);
        let tracker_addr = tr.parse().unwrap();
        let mut s = Services {
            dir,
            share,
            tracker,
            tr,
            tracker_addr,
            udp_peer,
            udp_addr,
            tcp_peer,
            tcp_addr,
            files: Vec::new(),
            log: RefCell::new(Vec::new()),
            started,
        };
        for peer in ["udp-seeder", "tcp-seeder"] {
            let listing = s.ls(peer, "udp");
            let paths: Vec<&str> = listing.iter().map(|(_, p)| p.as_str()).collect();
            assert_eq!(
                paths,
                vec![DOTS, BIG, SMALL, NESTED],
                "{peer}: symlinks out of the share are not listed"
            );
            s.files = listing;
        }
        eprintln!(
            "services: tracker {} (pid {}), udp peer {} (pid {}), tcp peer {} (pid {})",
            s.tracker_addr,
            s.tracker.child.id(),
            s.udp_addr,
            s.udp_peer.child.id(),
            s.tcp_addr,
            s.tcp_peer.child.id()
        );
        s
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Records a finding of the test.
    pub fn note(&self, line: impl Into<String>) {
        let line = line.into();
        eprintln!("  {line}");
        self.log.borrow_mut().push(line);
    }

    fn ls(&self, peer: &str, transport: &str) -> Vec<(String, String)> {
        let v = json_of(&run(
            self.dir(),
            &[
                "ls",
                peer,
                "--tracker",
                &self.tr,
                "--transport",
                transport,
                "--json",
            ],
        ));
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["id"].as_str().unwrap().to_string(),
                    e["path"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    pub fn id_of(&self, path: &str) -> &str {
        &self.files.iter().find(|(_, p)| p == path).unwrap().0
    }

    pub fn file_id(&self, path: &str) -> FileId {
        self.id_of(path).parse().unwrap()
    }

    pub fn peers(&self, transport: &str) -> Vec<serde_json::Value> {
        json_of(&run(
            self.dir(),
            &[
                "peers",
                "--tracker",
                &self.tr,
                "--transport",
                transport,
                "--json",
            ],
        ))
        .as_array()
        .unwrap()
        .clone()
    }

    /// Runs `p2p get` and returns its output and how long it took.
    pub fn get(&self, peer: &str, id: &str, transport: &str, out: &Path) -> (Output, Duration) {
        let started = Instant::now();
        let o = run(
            self.dir(),
            &[
                "get",
                peer,
                id,
                "--tracker",
                &self.tr,
                "--transport",
                transport,
                "--out",
                out.to_str().unwrap(),
                "--json",
            ],
        );
        (o, started.elapsed())
    }

    /// `p2p get` of a shared file must succeed, byte-identical, saved as its last component.
    pub fn get_identical(&self, peer: &str, path: &str, transport: &str, out: &Path) -> Duration {
        let (o, took) = self.get(peer, self.id_of(path), transport, out);
        let report = json_of(&o);
        let last = path.rsplit('/').next().unwrap();
        let dest = out.join(last);
        assert_eq!(report["path"], dest.display().to_string(), "{path}");
        assert!(
            fs::read(&dest).unwrap() == fs::read(self.share.join(path)).unwrap(),
            "{path} from {peer} (tracker over {transport}) differs"
        );
        took
    }

    /// Real peers are listed with their own addresses; returns how many peers are listed.
    pub fn assert_real_peers_listed(&self, transport: &str) -> usize {
        let peers = self.peers(transport);
        for (name, addr, kind) in [
            ("udp-seeder", self.udp_addr, "udp"),
            ("tcp-seeder", self.tcp_addr, "tcp"),
        ] {
            let p = peers
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{name} is no longer listed: {peers:?}"));
            assert_eq!(p["addr"], addr.to_string(), "{name} keeps its own address");
            assert_eq!(p["transport"], kind);
        }
        peers.len()
    }

    fn assert_alive(&mut self, when: &str) {
        for (name, p) in [
            ("tracker", &mut self.tracker),
            ("udp peer", &mut self.udp_peer),
            ("tcp peer", &mut self.tcp_peer),
        ] {
            let status = p.child.try_wait().unwrap();
            assert!(
                status.is_none(),
                "{name} died {when}: {status:?}; output: {:#?}",
                p.seen
            );
        }
    }

    /// What every test ends with, after its attack: the services (a) are still running,
    /// (b) still serve every shared file byte-identical to a plain `p2p get`, from both peers
    /// with the tracker reached over both transports, and still list both real peers at their
    /// own addresses, and (c) stayed below the memory bound (peak RSS, `VmHWM`).
    pub fn assert_unharmed(mut self) {
        eprintln!("== after the attack");
        self.assert_alive("during the attack");
        let out = self.dir().join("out-final");
        for (peer, transport) in [
            ("udp-seeder", "udp"),
            ("tcp-seeder", "tcp"),
            ("tcp-seeder", "udp"),
            ("udp-seeder", "tcp"),
        ] {
            let out = out.join(format!("{peer}-{transport}"));
            for path in [SMALL, BIG, DOTS, NESTED] {
                self.get_identical(peer, path, transport, &out);
            }
        }
        self.assert_real_peers_listed("tcp");
        self.assert_alive("after the final downloads");
        for (name, p) in [
            ("tracker", &self.tracker),
            ("udp peer", &self.udp_peer),
            ("tcp peer", &self.tcp_peer),
        ] {
            let kib = vm_hwm_kib(p.child.id());
            self.note(format!(
                "VmHWM {name}: {kib} kB ({:.1} MiB)",
                kib as f64 / 1024.0
            ));
            assert!(
                kib < MEMORY_BOUND_KIB,
                "{name} peaked at {kib} kB (bound {MEMORY_BOUND_KIB} kB)"
            );
        }
        eprintln!(
            "\n== summary ({:.1} s)",
            self.started.elapsed().as_secs_f64()
        );
        for l in self.log.borrow().iter() {
            eprintln!("- {l}");
        }
    }
}

/// Peak resident memory of a process, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Every regular file under `root` (symlinks not followed).
pub fn all_files(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) if m.is_file() => {
                    out.insert(p);
                }
                _ => {}
            }
        }
    }
    out
}
