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

pub use crate::common::json as json_of;
use crate::common::{random_bytes, write_file, Net, Proc};
use crate::MEMORY_BOUND_KIB;

pub const SMALL: &str = "small.txt";
pub const BIG: &str = "big.bin";
pub const DOTS: &str = "..evil";
pub const NESTED: &str = "sub/dir/x.txt";

/// The services, as named in messages, and the seeder each is (`None`: the tracker).
const SERVICES: [(&str, Option<&str>); 3] = [
    ("tracker", None),
    ("udp peer", Some("udp-seeder")),
    ("tcp peer", Some("tcp-seeder")),
];

pub struct Services {
    net: Net,
    pub share: PathBuf,
    pub tracker_addr: SocketAddr,
    pub udp_addr: SocketAddr,
    pub tcp_addr: SocketAddr,
    /// (id, relative path) of the shared files, as `p2p ls` lists them.
    files: Vec<(String, String)>,
    /// Findings of the test, printed as they come and again at the end (`--nocapture` or a
    /// failure shows them).
    log: RefCell<Vec<String>>,
    started: Instant,
}

impl Services {
    /// Starts the three services with small limits (`--rate-limit 50`, `--max-peers 100`,
    /// `--max-connections 64`, peers' `--idle-timeout 3s`) sharing `small.txt`, `big.bin`
    /// (1 MiB + 7), `..evil`, `sub/dir/x.txt` and two symlinks out of the share, which must not
    /// be listed.
    pub fn start() -> Services {
        let started = Instant::now();
        let limits = ["--rate-limit", "50", "--max-connections", "64"];
        let mut net = Net::start_with(&[&["--max-peers", "100"][..], &limits].concat());
        let share = net.path("share");
        fs::create_dir(&share).unwrap();
        // Links out of the share must never be listed.
        let outside = net.path("outside");
        fs::create_dir(&outside).unwrap();
        write_file(net.dir(), "secret.txt", b"the secret outside the share\n");
        write_file(&outside, "secret2.txt", b"another secret\n");
        std::os::unix::fs::symlink(net.path("secret.txt"), share.join("leak.txt")).unwrap();
        std::os::unix::fs::symlink(&outside, share.join("leakdir")).unwrap();

        let p_args = [&["--idle-timeout", "3s"][..], &limits].concat();
        net.seeder("udp-seeder", "udp")
            .file(SMALL, b"a small shared file\n")
            .file(BIG, &random_bytes(1024 * 1024 + 7, 42))
            .file(DOTS, b"a file whose name starts with two dots\n")
            .file(NESTED, b"nested three folders deep\n")
            .args(&p_args)
            .start();
        // The same folder.
        net.seeder("tcp-seeder", "tcp").args(&p_args).start();
        let mut s = Services {
            share,
            tracker_addr: net.addr().parse().unwrap(),
            udp_addr: net.peer_addr("udp-seeder"),
            tcp_addr: net.peer_addr("tcp-seeder"),
            net,
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
        let pids = SERVICES.map(|(_, seeder)| s.proc(seeder).child.id());
        eprintln!(
            "services: tracker {} (pid {}), udp peer {} (pid {}), tcp peer {} (pid {})",
            s.tracker_addr, pids[0], s.udp_addr, pids[1], s.tcp_addr, pids[2]
        );
        s
    }

    /// The process of a service (`None`: the tracker).
    fn proc(&mut self, seeder: Option<&str>) -> &mut Proc {
        match seeder {
            None => self.net.tracker(),
            Some(name) => self.net.peer(name),
        }
    }

    pub fn dir(&self) -> &Path {
        self.net.dir()
    }

    /// Records a finding of the test.
    pub fn note(&self, line: impl Into<String>) {
        let line = line.into();
        eprintln!("  {line}");
        self.log.borrow_mut().push(line);
    }

    fn ls(&self, peer: &str, transport: &str) -> Vec<(String, String)> {
        let v = self.net.ls(peer).transport(transport).run_json();
        v.as_array()
            .unwrap()
            .iter()
            // Files only: a folder's collection entry (`sub/`) is no file to fetch.
            .filter(|e| e["collection"] != true)
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
        let peers = self.net.peers().transport(transport).run_json();
        peers.as_array().unwrap().clone()
    }

    /// Runs `p2p get` and returns its output and how long it took.
    pub fn get(&self, peer: &str, id: &str, transport: &str, out: &Path) -> (Output, Duration) {
        let started = Instant::now();
        let get = self.net.get(peer, id).transport(transport).out(out).json();
        (get.run(), started.elapsed())
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
        for (name, seeder) in SERVICES {
            let p = self.proc(seeder);
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
        for (name, seeder) in SERVICES {
            let kib = vm_hwm_kib(self.proc(seeder).child.id());
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
