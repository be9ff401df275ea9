//! Hostile input against the real `p2p` services.
//!
//! A tracker, a seeding peer over UDP and a seeding peer over TCP run as processes on
//! 127.0.0.1 with small limits (`--rate-limit 50`, `--max-peers 100`, `--max-connections 64`).
//! Every case below is fired at them from raw `std::net` sockets; afterwards the services must
//! (a) still be running, (b) still serve byte-identical downloads to a plain `p2p get`, and
//! (c) have stayed below a memory bound (peak RSS, `VmHWM`).
//!
//! Attack traffic comes from other loopback addresses (127.0.0.N, N >= 2, all routed to `lo`
//! on Linux) so that each case has its own per-IP rate-limit bucket and the real clients on
//! 127.0.0.1 are not throttled by the floods.
//!
//! Waiting is always on a socket read (with a timeout) or a process line, never a sleep; the
//! only pauses are the bounded pacing of the slow-byte senders.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::*;
use p2p_proto::wire::{
    decode, AbortReason, BoundedVec, ContentHash, FileId, IndexEntry, Message, RegisterOutcome,
    RequestId, TransferId, TransportKind, DATA_OVERHEAD, HEADER_LEN, MAGIC, MAX_NAME_LEN,
    PIECE_SIZE, PROTOCOL_VERSION,
};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

/// `--rate-limit` of every service: requests per second per source IP (burst: twice that).
const RATE: f64 = 50.0;
const BURST: f64 = 2.0 * RATE;
/// `--max-peers` of the tracker.
const MAX_PEERS: usize = 100;
/// `--max-connections` of every service.
const MAX_CONNECTIONS: usize = 64;
/// `--idle-timeout` of the seeding peers: a silent receiver's transfer ends after this.
const PEER_IDLE: Duration = Duration::from_secs(3);
/// Largest TCP frame the services accept (`TcpConfig::default().max_message`).
const TCP_MAX_FRAME: usize = 64 * 1024 + DATA_OVERHEAD;
/// `TcpConfig::default().frame_timeout`: a started frame must be complete within this.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Peak memory allowed to each service.
const MEMORY_BOUND_KIB: u64 = 150 * 1024;
/// How long a request waits for its reply.
const REPLY_WAIT: Duration = Duration::from_secs(2);
/// Silence after which "no reply" is concluded (replies on loopback take microseconds).
const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// Raw traffic helpers
// ---------------------------------------------------------------------------------------------

fn attacker_ip(n: u8) -> Ipv4Addr {
    assert!(n >= 2, "127.0.0.1 is for the real clients");
    Ipv4Addr::new(127, 0, 0, n)
}

/// A UDP socket on 127.0.0.`n`.
fn udp_from(n: u8) -> UdpSocket {
    let s = UdpSocket::bind((attacker_ip(n), 0)).expect("bind an attacker UDP socket");
    s.set_read_timeout(Some(QUIET)).unwrap();
    s
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// A blocking TCP connection from 127.0.0.`n` (std cannot bind before connecting; tokio can).
fn tcp_from(n: u8, to: SocketAddr) -> TcpStream {
    let from = SocketAddr::from((attacker_ip(n), 0));
    let stream = runtime()
        .block_on(async move {
            let s = tokio::net::TcpSocket::new_v4()?;
            s.bind(from)?;
            s.connect(to).await?.into_std()
        })
        .unwrap_or_else(|e| panic!("connect {from} -> {to}: {e}"));
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(REPLY_WAIT)).unwrap();
    stream
}

/// CRC-32 (IEEE, as crc32fast computes it), to seal bodies we craft.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An envelope with the given version around `body`, with a correct checksum.
fn seal(version: u8, body: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.push(version);
    out.extend_from_slice(&crc32(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// A TCP frame: `u32` little-endian length, then the bytes.
fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut f = (bytes.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(bytes);
    f
}

fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let n = u32::from_le_bytes(len) as usize;
    assert!(n <= TCP_MAX_FRAME, "service sent a frame of {n} bytes");
    let mut buf = vec![0; n];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

fn decode_reply(bytes: &[u8]) -> Message {
    decode(bytes).unwrap_or_else(|e| panic!("a service sent an undecodable message: {e}"))
}

/// Messages arriving on `sock` until it has been silent for `quiet`, at most for `max`.
fn drain_udp(sock: &UdpSocket, quiet: Duration, max: Duration) -> Vec<Message> {
    let until = Instant::now() + max;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return out;
        }
        sock.set_read_timeout(Some(quiet.min(left))).unwrap();
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => out.push(decode_reply(&buf[..n])),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return out
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// The first message on `sock` that `want` accepts, within [`REPLY_WAIT`].
fn await_udp(sock: &UdpSocket, want: impl Fn(&Message) -> bool) -> Option<Message> {
    await_udp_within(sock, REPLY_WAIT, want)
}

/// The first message on `sock` that `want` accepts, within `wait`.
fn await_udp_within(
    sock: &UdpSocket,
    wait: Duration,
    want: impl Fn(&Message) -> bool,
) -> Option<Message> {
    let until = Instant::now() + wait;
    let mut buf = vec![0u8; 65_536];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                let m = decode_reply(&buf[..n]);
                if want(&m) {
                    return Some(m);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// Sends `msg` and returns the first reply; like the real clients, sends again after a
/// second of silence (a datagram can be lost even on loopback when a buffer is full), three
/// sends in all.
fn ask_udp(sock: &UdpSocket, to: SocketAddr, msg: &Message) -> Option<Message> {
    let bytes = msg.encode();
    (0..3).find_map(|_| {
        sock.send_to(&bytes, to).unwrap();
        await_udp_within(sock, Duration::from_secs(1), |_| true)
    })
}

/// Whether the service closed `s` within `within` (end of stream or reset); bytes it sends
/// meanwhile are skipped.
fn closed_by_peer(s: &mut TcpStream, within: Duration) -> bool {
    let until = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true, // reset
        }
    }
}

/// Whether `s` is still open right now (a non-blocking read would block).
fn still_open(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let mut r = s;
    let open = loop {
        match r.read(&mut buf) {
            Ok(0) => break false,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break true,
            Err(_) => break false,
        }
    };
    s.set_nonblocking(false).unwrap();
    open
}

fn rid(n: u64) -> RequestId {
    RequestId(n)
}

fn list_peers(page: u32) -> Message {
    Message::ListPeers {
        request: rid(7),
        page,
    }
}

fn index_request(page: u32) -> Message {
    Message::IndexRequest {
        request: rid(8),
        page,
    }
}

fn register(name: &str, port: u16, transport: TransportKind) -> Message {
    Message::Register {
        request: rid(9),
        name: name.to_string(),
        port,
        transport,
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
fn all_files(root: &Path) -> BTreeSet<PathBuf> {
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

// ---------------------------------------------------------------------------------------------
// The services under attack
// ---------------------------------------------------------------------------------------------

struct Services {
    dir: tempfile::TempDir,
    share: PathBuf,
    tracker: Proc,
    tr: String,
    tracker_addr: SocketAddr,
    udp_peer: Proc,
    udp_addr: SocketAddr,
    tcp_peer: Proc,
    tcp_addr: SocketAddr,
    /// (id, relative path) of the shared files, as `p2p ls` lists them.
    files: Vec<(String, String)>,
}

const SMALL: &str = "small.txt";
const BIG: &str = "big.bin";
const DOTS: &str = "..evil";
const NESTED: &str = "sub/dir/x.txt";

fn listen_addr(p: &Proc) -> SocketAddr {
    let line = p
        .seen
        .iter()
        .find(|l| l.contains(" listening on "))
        .expect("the peer printed its address");
    line.split_whitespace().nth(4).unwrap().parse().unwrap()
}

fn json_of(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

impl Services {
    fn start() -> Services {
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
        let (tracker, tr) = common::tracker(dir.path(), &t_args);
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
        s
    }

    fn dir(&self) -> &Path {
        self.dir.path()
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

    fn id_of(&self, path: &str) -> &str {
        &self.files.iter().find(|(_, p)| p == path).unwrap().0
    }

    fn file_id(&self, path: &str) -> FileId {
        self.id_of(path).parse().unwrap()
    }

    fn peers(&self, transport: &str) -> Vec<serde_json::Value> {
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
    fn get(&self, peer: &str, id: &str, transport: &str, out: &Path) -> (Output, Duration) {
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
    fn get_identical(&self, peer: &str, path: &str, transport: &str, out: &Path) -> Duration {
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

    /// Real peers are listed with their own addresses.
    fn assert_real_peers_listed(&self, transport: &str) -> usize {
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
}

/// Findings of the run, printed at the end (`--nocapture` shows them).
#[derive(Default)]
struct Log(Vec<String>);

impl Log {
    fn note(&mut self, line: impl Into<String>) {
        let line = line.into();
        eprintln!("  {line}");
        self.0.push(line);
    }
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

/// Case 1: thousands of random datagrams, plus envelope-shaped noise (a correct header around a
/// random body) and valid messages with random bytes flipped and the checksum fixed.
fn random_datagrams(s: &Services, log: &mut Log) {
    let mut rng = SmallRng::seed_from_u64(1);
    let noise = udp_from(2);
    let shaped = udp_from(3);
    let samples = sample_messages(s);
    let mut sent = 0;
    for target in [s.tracker_addr, s.udp_addr] {
        for _ in 0..3000 {
            let len = rng.gen_range(0..2000);
            let mut b = vec![0u8; len];
            rng.fill_bytes(&mut b);
            let _ = noise.send_to(&b, target);
            sent += 1;
        }
        for len in [65_507, 65_000, 9000, 1453] {
            let mut b = vec![0u8; len];
            rng.fill_bytes(&mut b);
            let _ = noise.send_to(&b, target);
            sent += 1;
        }
        for _ in 0..2000 {
            let len = rng.gen_range(0..1400);
            let mut body = vec![0u8; len];
            rng.fill_bytes(&mut body);
            if len > 0 && rng.gen_bool(0.5) {
                // A plausible MessagePack start: a map or an array marker.
                body[0] = if rng.gen_bool(0.5) { 0x81 } else { 0x92 };
            }
            let _ = shaped.send_to(&seal(PROTOCOL_VERSION, &body), target);
            sent += 1;
        }
        for _ in 0..2000 {
            let m = &samples[rng.gen_range(0..samples.len())];
            let mut body = m.encode()[HEADER_LEN..].to_vec();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..body.len());
                body[i] = rng.gen();
            }
            let _ = shaped.send_to(&seal(PROTOCOL_VERSION, &body), target);
            sent += 1;
        }
    }
    let noise_replies = drain_udp(&noise, QUIET, Duration::from_secs(3));
    assert!(
        noise_replies.is_empty(),
        "random bytes got answers: {noise_replies:?}"
    );
    let shaped_replies = drain_udp(&shaped, QUIET, Duration::from_secs(5));
    log.note(format!(
        "1 random datagrams: {sent} sent to tracker and udp peer; pure noise (0..2000 B and \
         up to 65507 B) dropped silently (0 replies); sealed noise and mutated valid messages \
         got {} replies (mutations that still decode are ordinary requests)",
        shaped_replies.len()
    ));
}

/// Well-formed messages of every kind, for mutation and truncation.
fn sample_messages(s: &Services) -> Vec<Message> {
    let hash = ContentHash::of(b"x");
    vec![
        register("mutant", 4000, TransportKind::Udp),
        Message::Heartbeat {
            request: rid(1),
            name: "udp-seeder".into(),
            port: 4001,
            transport: TransportKind::Udp,
        },
        Message::Unregister {
            request: rid(2),
            name: "udp-seeder".into(),
        },
        list_peers(0),
        index_request(0),
        Message::PieceRequest {
            request: rid(3),
            file: s.file_id(BIG),
            hash,
            first: 0,
        },
        Message::Request {
            transfer: TransferId(77),
            file: FileId(999),
            offset: 0,
        },
        Message::Ack {
            transfer: TransferId(78),
            cumulative: 3,
            sack: BoundedVec(vec![(5, 7), (9, 12)]),
            window: 64,
        },
        Message::Fin {
            transfer: TransferId(79),
            size: 10,
            hash,
        },
        Message::Data {
            transfer: TransferId(80),
            seq: 1,
            payload: vec![7; 100].into(),
        },
        Message::Abort {
            transfer: TransferId(81),
            reason: AbortReason::Other("because".into()),
        },
        Message::IndexPage {
            request: rid(4),
            page: 0,
            pages: 1,
            share: "s".into(),
            entries: BoundedVec(vec![IndexEntry {
                id: FileId(1),
                path: "../x".into(),
                size: 1,
                hash,
            }]),
        },
    ]
}

/// The malformed-envelope variants of case 2: (what, bytes).
fn malformed_envelopes(s: &Services) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let valid = [
        list_peers(0),
        index_request(0),
        register("fine-name", 4100, TransportKind::Udp),
        Message::Request {
            transfer: TransferId(5),
            file: s.file_id(SMALL),
            offset: 0,
        },
        Message::Ack {
            transfer: TransferId(6),
            cumulative: 1,
            sack: BoundedVec(vec![(3, 4), (6, 9)]),
            window: 32,
        },
    ];
    for m in &valid {
        let enc = m.encode();
        assert_eq!(
            seal(PROTOCOL_VERSION, &enc[HEADER_LEN..]),
            enc,
            "our CRC-32 matches the product's"
        );
        for v in [0u8, 2, 9, 255] {
            let mut b = enc.clone();
            b[MAGIC.len()] = v;
            out.push((format!("version {v}"), b));
        }
        for magic in [*b"P2Q", *b"p2p", [0, 0, 0], *b"PP2"] {
            let mut b = enc.clone();
            b[..3].copy_from_slice(&magic);
            out.push((format!("magic {magic:?}"), b));
        }
        let mut b = enc.clone();
        b[HEADER_LEN - 1] ^= 0x40;
        out.push(("checksum byte flipped".into(), b));
        let mut b = enc.clone();
        let last = b.len() - 1;
        b[last] ^= 1;
        out.push(("body byte flipped, checksum kept".into(), b));
        let mut b = enc.clone();
        b.push(0);
        out.push(("trailing byte".into(), b));
        for cut in 1..enc.len() {
            out.push((format!("prefix of {cut} bytes"), enc[..cut].to_vec()));
        }
    }
    out
}

/// Case 2 over UDP and TCP: unknown versions, bad magic, bad checksums, every prefix of valid
/// messages. None may be answered, and the same socket must be served right after.
fn malformed_envelopes_case(s: &Services, log: &mut Log) {
    let bad = malformed_envelopes(s);
    for (target, probe, what) in [
        (s.tracker_addr, list_peers(0), "tracker/udp"),
        (s.udp_addr, index_request(0), "udp peer"),
    ] {
        let sock = udp_from(4);
        for (_, b) in &bad {
            sock.send_to(b, target).unwrap();
        }
        let _ = sock.send_to(&[], target); // the empty datagram too
        let replies = drain_udp(&sock, QUIET, Duration::from_secs(3));
        assert!(
            replies.is_empty(),
            "{what} answered malformed input: {replies:?}"
        );
        let reply = ask_udp(&sock, target, &probe);
        assert!(
            matches!(
                reply,
                Some(Message::PeerList { .. } | Message::IndexPage { .. })
            ),
            "{what} still serves the same socket: {reply:?}"
        );
    }
    for (target, probe, what) in [
        (s.tracker_addr, list_peers(0), "tracker/tcp"),
        (s.tcp_addr, index_request(0), "tcp peer"),
    ] {
        let mut c = tcp_from(5, target);
        let mut all = Vec::new();
        for (_, b) in &bad {
            all.extend(frame(b));
        }
        all.extend(frame(&probe.encode()));
        c.write_all(&all).unwrap();
        // The first (and only) reply answers the probe: nothing before it was answered.
        let reply = decode_reply(&read_frame(&mut c).expect("a reply to the probe"));
        assert!(
            matches!(reply, Message::PeerList { .. } | Message::IndexPage { .. }),
            "{what}: {reply:?}"
        );
        assert!(
            !closed_by_peer(&mut c, QUIET),
            "{what} keeps a connection whose frames were well delimited"
        );
    }
    log.note(format!(
        "2 malformed envelopes: {} variants (versions 0/2/9/255, 4 bad magics, bad checksum, \
         flipped body byte, trailing byte, every proper prefix of 5 messages) + the empty \
         datagram, over UDP and as TCP frames: dropped silently; the same socket/connection \
         is answered right after",
        bad.len()
    ));
}

/// A background sender that opens a frame and never completes it, one byte at a time.
/// `split_header`: the 4 length bytes are themselves trickled over ~9 s before the body.
fn slow_sender(from: u8, to: SocketAddr, split_header: bool) -> JoinHandle<Option<Duration>> {
    thread::spawn(move || {
        let mut c = tcp_from(from, to);
        let started = Instant::now();
        let deadline = started + FRAME_TIMEOUT * 2 + Duration::from_secs(5);
        let mut pending: Vec<(Duration, u8)> = Vec::new();
        let len = 1000u32.to_le_bytes();
        if split_header {
            for (i, b) in len.iter().enumerate() {
                pending.push((Duration::from_secs(3) * i as u32, *b));
            }
        } else {
            for b in len {
                pending.push((Duration::ZERO, b));
            }
        }
        let mut at = pending.last().unwrap().0;
        for _ in 0..1000 {
            at += Duration::from_millis(250);
            pending.push((at, b'x'));
        }
        for (when, byte) in pending {
            // Pace: the next byte is due at `when`; meanwhile watch for the service closing.
            loop {
                let now = Instant::now();
                if now >= deadline {
                    return None;
                }
                let due = started + when;
                if now >= due {
                    break;
                }
                if closed_by_peer(&mut c, (due - now).min(Duration::from_millis(250))) {
                    return Some(started.elapsed());
                }
            }
            if c.write_all(&[byte]).is_err() {
                return Some(started.elapsed());
            }
        }
        None
    })
}

/// Case 3: TCP framing abuse, big-frame floods, idle connection floods.
fn tcp_framing(s: &Services, log: &mut Log) {
    let mut rng = SmallRng::seed_from_u64(3);
    for (target, what) in [(s.tracker_addr, "tracker/tcp"), (s.tcp_addr, "tcp peer")] {
        let cases: Vec<(&str, Vec<u8>, bool)> = vec![
            ("length 0", vec![0, 0, 0, 0], false),
            (
                "length u32::MAX (4 GiB)",
                u32::MAX.to_le_bytes().to_vec(),
                false,
            ),
            (
                "length one above the limit",
                ((TCP_MAX_FRAME + 1) as u32).to_le_bytes().to_vec(),
                false,
            ),
            ("length 1 GiB", (1u32 << 30).to_le_bytes().to_vec(), false),
            ("2 bytes of a header, then close", vec![5, 0], true),
            (
                "header claiming 100 bytes, 10 sent, then close",
                [100u32.to_le_bytes().to_vec(), vec![1; 10]].concat(),
                true,
            ),
            (
                "header claiming the maximum, half sent, then close",
                [
                    (TCP_MAX_FRAME as u32).to_le_bytes().to_vec(),
                    vec![0; TCP_MAX_FRAME / 2],
                ]
                .concat(),
                true,
            ),
            (
                "4000 garbage bytes, then close",
                {
                    let mut b = vec![0u8; 4000];
                    rng.fill_bytes(&mut b);
                    b
                },
                true,
            ),
        ];
        for (case, bytes, half_close) in cases {
            let mut c = tcp_from(6, target);
            c.write_all(&bytes).unwrap();
            if half_close {
                // The service may have reset the connection already: nothing to shut down.
                let _ = c.shutdown(Shutdown::Write);
            }
            assert!(
                closed_by_peer(&mut c, REPLY_WAIT),
                "{what}: {case}: the service must close the connection"
            );
        }
        // Well-delimited garbage keeps the connection: it is answered afterwards.
        let mut c = tcp_from(6, target);
        for _ in 0..50 {
            let len = rng.gen_range(1..3000);
            let mut b = vec![0u8; len];
            rng.fill_bytes(&mut b);
            c.write_all(&frame(&b)).unwrap();
        }
        let probe = if target == s.tracker_addr {
            list_peers(0)
        } else {
            index_request(0)
        };
        c.write_all(&frame(&probe.encode())).unwrap();
        let reply = decode_reply(&read_frame(&mut c).expect("answer after garbage frames"));
        assert!(
            matches!(reply, Message::PeerList { .. } | Message::IndexPage { .. }),
            "{what}: {reply:?}"
        );
    }
    log.note(
        "3 tcp framing: length 0, u32::MAX, limit+1 and 1 GiB headers -> connection closed at \
         once, nothing allocated; truncated header/frame then close, 4000 garbage bytes -> \
         connection closed; 50 well-delimited garbage frames -> dropped, connection kept and \
         answered (tracker and tcp peer)",
    );
}

/// Case 3, memory: many connections sending maximum-size frames with a correct header and a
/// wrong checksum, as fast as the services take them.
fn big_frame_flood(s: &Services, log: &mut Log, connections: usize, frames: usize) {
    let mut body = vec![0u8; TCP_MAX_FRAME];
    SmallRng::seed_from_u64(4).fill_bytes(&mut body);
    body[..3].copy_from_slice(&MAGIC);
    body[3] = PROTOCOL_VERSION;
    body[4..8].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    let framed = Arc::new(frame(&body));
    let started = Instant::now();
    let mut threads = Vec::new();
    for target in [s.tracker_addr, s.tcp_addr] {
        for i in 0..connections {
            let framed = framed.clone();
            threads.push(thread::spawn(move || {
                let mut c = tcp_from(70 + i as u8, target);
                for _ in 0..frames {
                    if c.write_all(&framed).is_err() {
                        return false;
                    }
                }
                true
            }));
        }
    }
    let completed = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|ok| *ok)
        .count();
    let mib = (2 * connections * frames * framed.len()) as f64 / (1024.0 * 1024.0);
    log.note(format!(
        "3 big-frame flood: {connections} connections x {frames} frames of {TCP_MAX_FRAME} B \
         (valid header, wrong checksum) to the tracker and to the tcp peer, {mib:.0} MiB in \
         {:.1} s; {completed} of {} senders got everything accepted; dropped silently",
        started.elapsed().as_secs_f64(),
        2 * connections
    ));
}

/// Case 3: many connections that send nothing; real traffic must still get through.
fn idle_connection_flood(
    log: &mut Log,
    target: SocketAddr,
    what: &str,
    real: impl FnOnce() -> Duration,
) {
    let mut idle: Vec<TcpStream> = (0..300).map(|_| tcp_from(7, target)).collect();
    let took = real();
    // Evicted connections are closed by the service; a few may close a moment later.
    let mut open = 0;
    for _ in 0..20 {
        open = idle.iter().filter(|c| still_open(c)).count();
        if open <= MAX_CONNECTIONS {
            break;
        }
        // Wait on one open connection for its close (a socket read, not a sleep).
        if let Some(c) = idle.iter_mut().find(|c| still_open(c)) {
            closed_by_peer(c, Duration::from_millis(100));
        }
    }
    assert!(
        open <= MAX_CONNECTIONS,
        "{what}: {open} of 300 idle connections still open with --max-connections {MAX_CONNECTIONS}"
    );
    log.note(format!(
        "3 idle flood on {what}: 300 silent connections (cap {MAX_CONNECTIONS}): the real get \
         over tcp took {:.2} s; {} idle connections closed by eviction, {open} left open",
        took.as_secs_f64(),
        300 - open
    ));
}

/// What an answer must look like.
type Expect = fn(&Message) -> bool;

/// Case 4a: requests for file ids and pages that do not exist.
fn bad_ids(s: &Services, log: &mut Log) {
    let small = s.file_id(SMALL);
    let size = fs::metadata(s.share.join(SMALL)).unwrap().len();
    let hash = ContentHash::of(&fs::read(s.share.join(SMALL)).unwrap());
    let mut n = 0u64;
    let mut transfer = || {
        n += 1;
        TransferId(0x1D5_0000 + n)
    };
    let cases: Vec<(&str, Message, Expect)> = vec![
        (
            "Request file 0",
            Message::Request {
                transfer: transfer(),
                file: FileId(0),
                offset: 0,
            },
            |m| {
                matches!(
                    m,
                    Message::Abort {
                        reason: AbortReason::NoSuchFile,
                        ..
                    }
                )
            },
        ),
        (
            "Request file u32::MAX",
            Message::Request {
                transfer: transfer(),
                file: FileId(u32::MAX),
                offset: 0,
            },
            |m| {
                matches!(
                    m,
                    Message::Abort {
                        reason: AbortReason::NoSuchFile,
                        ..
                    }
                )
            },
        ),
        (
            "Request file 4242",
            Message::Request {
                transfer: transfer(),
                file: FileId(4242),
                offset: 0,
            },
            |m| {
                matches!(
                    m,
                    Message::Abort {
                        reason: AbortReason::NoSuchFile,
                        ..
                    }
                )
            },
        ),
        (
            "Request offset past the end",
            Message::Request {
                transfer: transfer(),
                file: small,
                offset: size + 1,
            },
            |m| {
                matches!(
                    m,
                    Message::Abort {
                        reason: AbortReason::BadRequest,
                        ..
                    }
                )
            },
        ),
        (
            "Request offset u64::MAX",
            Message::Request {
                transfer: transfer(),
                file: small,
                offset: u64::MAX,
            },
            |m| {
                matches!(
                    m,
                    Message::Abort {
                        reason: AbortReason::BadRequest,
                        ..
                    }
                )
            },
        ),
        (
            "PieceRequest file 0",
            Message::PieceRequest {
                request: rid(20),
                file: FileId(0),
                hash,
                first: 0,
            },
            |m| matches!(m, Message::Error { .. }),
        ),
        (
            "PieceRequest file u32::MAX",
            Message::PieceRequest {
                request: rid(21),
                file: FileId(u32::MAX),
                hash,
                first: 0,
            },
            |m| matches!(m, Message::Error { .. }),
        ),
        (
            "PieceRequest with a wrong hash",
            Message::PieceRequest {
                request: rid(22),
                file: small,
                hash: ContentHash([0; 32]),
                first: 0,
            },
            |m| matches!(m, Message::Error { .. }),
        ),
        (
            "PieceRequest first = u32::MAX",
            Message::PieceRequest {
                request: rid(23),
                file: small,
                hash,
                first: u32::MAX,
            },
            |m| matches!(m, Message::PieceHashes { hashes, .. } if hashes.0.is_empty()),
        ),
        ("IndexRequest page u32::MAX", index_request(u32::MAX), |m| {
            matches!(m, Message::Error { .. })
        }),
        ("IndexRequest page 1 of 1", index_request(1), |m| {
            matches!(m, Message::Error { .. })
        }),
    ];
    let sock = udp_from(8);
    for (what, msg, ok) in &cases {
        let reply = ask_udp(&sock, s.udp_addr, msg);
        assert!(
            reply.as_ref().is_some_and(ok),
            "udp peer, {what}: unexpected answer {reply:?}"
        );
    }
    let mut c = tcp_from(8, s.tcp_addr);
    for (what, msg, ok) in &cases {
        c.write_all(&frame(&msg.encode())).unwrap();
        let reply = decode_reply(&read_frame(&mut c).expect("an answer"));
        assert!(ok(&reply), "tcp peer, {what}: unexpected answer {reply:?}");
    }
    log.note(format!(
        "4 bad ids ({} cases, udp and tcp peer): Request for file 0 / u32::MAX / 4242 -> Abort \
         NoSuchFile; offset past the end / u64::MAX -> Abort BadRequest; PieceRequest for \
         missing files or a wrong hash -> Error; first = u32::MAX -> empty PieceHashes; \
         missing index pages -> Error",
        cases.len()
    ));
}

/// The registration outcome for `name`, or `None` when the tracker stayed silent.
fn try_register(sock: &UdpSocket, tracker: SocketAddr, name: &str) -> Option<RegisterOutcome> {
    match ask_udp(sock, tracker, &register(name, 4200, TransportKind::Udp)) {
        Some(Message::RegisterReply { outcome, .. }) => Some(outcome),
        None => None,
        Some(other) => panic!("tracker answered a Register with {other:?}"),
    }
}

/// Case 4b: names that break the rules.
fn bad_names(s: &Services, log: &mut Log) {
    let sock = udp_from(9);
    let long = "x".repeat(MAX_NAME_LEN + 1);
    let huge = "y".repeat(1000);
    for name in [
        "",
        "has space",
        "nul\0byte",
        "tab\tname",
        "new\nline",
        "esc\x1b[31m",
    ] {
        let outcome = try_register(&sock, s.tracker_addr, name);
        assert!(
            matches!(outcome, Some(RegisterOutcome::Refused { .. })),
            "name {name:?}: {outcome:?}"
        );
    }
    // Names over the wire limit do not even decode: dropped before the tracker sees them.
    for name in [long.as_str(), huge.as_str()] {
        let msg = register(name, 4200, TransportKind::Udp);
        sock.send_to(&msg.encode(), s.tracker_addr).unwrap();
    }
    let replies = drain_udp(&sock, QUIET, REPLY_WAIT);
    assert!(
        replies.is_empty(),
        "names of 65 and 1000 bytes are dropped silently: {replies:?}"
    );
    // Path-like names: the product's rules (validate_name) allow them; see the ignored test
    // `path_like_names_are_refused`. Whatever the outcome, an accepted one is listed at the
    // sender's own IP, never anything claimed.
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    for name in ["..", "../etc", "a/b", "/"] {
        match try_register(&sock, s.tracker_addr, name) {
            Some(RegisterOutcome::Accepted { .. }) => accepted.push(name),
            Some(RegisterOutcome::Refused { .. }) => refused.push(name),
            None => panic!("no answer to the name {name:?}"),
        }
    }
    let peers = s.peers("udp");
    for name in &accepted {
        let p = peers.iter().find(|p| p["name"] == *name).unwrap();
        assert_eq!(p["addr"], format!("{}:4200", attacker_ip(9)));
    }
    for p in &peers {
        let name = p["name"].as_str().unwrap();
        assert!(
            !name.is_empty() && name.len() <= MAX_NAME_LEN && !name.contains([' ', '\0', '\t']),
            "listed: {name:?}"
        );
    }
    log.note(format!(
        "4 bad names: empty, space, NUL, tab, newline, ESC -> RegisterReply Refused (invalid \
         name); 65 and 1000 bytes -> dropped silently (wire limit, no reply), never listed; \
         path-like names refused: {refused:?}, ACCEPTED: {accepted:?} (listed at the \
         sender's IP)"
    ));
}

/// Case 4c: downloads of odd names land inside `--out` as their last component only.
fn download_paths(s: &Services, log: &mut Log) {
    let before: BTreeSet<PathBuf> = all_files(s.dir());
    let out = s.dir().join("out-names");
    s.get_identical("udp-seeder", DOTS, "udp", &out);
    s.get_identical("udp-seeder", NESTED, "udp", &out);
    s.get_identical("tcp-seeder", NESTED, "tcp", &out);
    let created: Vec<PathBuf> = all_files(s.dir()).difference(&before).cloned().collect();
    assert_eq!(
        created,
        vec![out.join(DOTS), out.join("x.txt")],
        "only the two files, inside --out"
    );
    assert!(!s.dir().join("sub").exists() && !out.join("sub").exists());
    log.note(
        "4 download names: `..evil` saved as out/..evil, `sub/dir/x.txt` as out/x.txt (udp \
         and tcp); nothing else created anywhere; symlinks to a file and a folder outside the \
         share are not listed by `p2p ls`",
    );
}

/// A fake peer that announces the given (id, path, content) files and serves them honestly,
/// whatever their names: a malicious sender trying to make `get` write outside `--out`.
fn fake_peer(
    tracker: SocketAddr,
    n: u8,
    name: &str,
    files: Vec<(u32, String, Vec<u8>)>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    let sock = udp_from(n);
    let port = sock.local_addr().unwrap().port();
    match ask_udp(&sock, tracker, &register(name, port, TransportKind::Udp)) {
        Some(Message::RegisterReply {
            outcome: RegisterOutcome::Accepted { .. },
            ..
        }) => {}
        other => panic!("fake peer not registered: {other:?}"),
    }
    thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = vec![0u8; 65_536];
        let find = |id: FileId| files.iter().find(|f| f.0 == id.0).map(|f| &f.2);
        let mut transfers = std::collections::BTreeMap::new();
        while !stop.load(Ordering::Relaxed) {
            let Ok((len, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Ok(msg) = decode(&buf[..len]) else {
                continue;
            };
            let fin = |transfer, content: &Vec<u8>| Message::Fin {
                transfer,
                size: content.len() as u64,
                hash: ContentHash::of(content),
            };
            let mut replies = Vec::new();
            match msg {
                Message::IndexRequest { request, .. } => replies.push(Message::IndexPage {
                    request,
                    page: 0,
                    pages: 1,
                    share: "evil-share".into(),
                    entries: BoundedVec(
                        files
                            .iter()
                            .map(|(id, path, content)| IndexEntry {
                                id: FileId(*id),
                                path: path.clone(),
                                size: content.len() as u64,
                                hash: ContentHash::of(content),
                            })
                            .collect(),
                    ),
                }),
                Message::PieceRequest { request, file, .. } => {
                    if let Some(content) = find(file) {
                        replies.push(Message::PieceHashes {
                            request,
                            piece_size: PIECE_SIZE,
                            pieces: 1,
                            first: 0,
                            hashes: BoundedVec(vec![ContentHash::of(content)]),
                        });
                    }
                }
                Message::Request { transfer, file, .. } => {
                    if let Some(content) = find(file) {
                        transfers.insert(transfer, file);
                        replies.push(Message::Accept {
                            transfer,
                            size: content.len() as u64,
                            chunk_size: 1024,
                            hash: ContentHash::of(content),
                        });
                        replies.push(Message::Data {
                            transfer,
                            seq: 0,
                            payload: content.clone().into(),
                        });
                        replies.push(fin(transfer, content));
                    }
                }
                // The one chunk went out with the Accept: whatever is acknowledged, finish.
                Message::Ack { transfer, .. } => {
                    if let Some(content) = transfers.get(&transfer).and_then(|f| find(*f)) {
                        replies.push(fin(transfer, content));
                    }
                }
                _ => {}
            }
            for r in replies {
                let _ = sock.send_to(&r.encode(), from);
            }
        }
    })
}

/// Case 4d: a malicious peer announces paths that climb out of `--out`.
fn malicious_paths(s: &Services, log: &mut Log) {
    let abs = s.dir().join("abs-escape.txt");
    let files: Vec<(u32, String, Vec<u8>)> = vec![
        (1, "../../escape-dotdot.txt".into(), b"one".to_vec()),
        (2, abs.display().to_string(), b"two".to_vec()),
        (3, "..\\..\\win-escape.txt".into(), b"three".to_vec()),
        (4, "a/../../../mid-escape.txt".into(), b"four".to_vec()),
        (5, "..".into(), b"five".to_vec()),
        (6, "trailing/".into(), b"six".to_vec()),
        (7, "x/.hidden.p2p-part".into(), b"seven".to_vec()),
        (8, "/".into(), b"eight".to_vec()),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let fake = fake_peer(s.tracker_addr, 60, "evil-peer", files.clone(), stop.clone());
    let before: BTreeSet<PathBuf> = all_files(s.dir());
    let out = s.dir().join("out-evil");
    let mut saved = Vec::new();
    let mut refused = Vec::new();
    for (id, path, content) in &files {
        let (o, _) = s.get("evil-peer", &id.to_string(), "udp", &out);
        if o.status.success() {
            let report = json_of(&o);
            let dest = PathBuf::from(report["path"].as_str().unwrap());
            assert_eq!(
                dest.parent(),
                Some(out.as_path()),
                "{path:?} saved at {dest:?}"
            );
            assert_eq!(&fs::read(&dest).unwrap(), content);
            saved.push(format!(
                "{path:?} -> out/{}",
                dest.file_name().unwrap().to_string_lossy()
            ));
        } else {
            let err = stderr(&o);
            assert!(err.contains("unsafe file name"), "{path:?}: {err}");
            refused.push(format!("{path:?}"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    fake.join().unwrap();
    let created: Vec<PathBuf> = all_files(s.dir()).difference(&before).cloned().collect();
    for p in &created {
        assert!(p.starts_with(&out), "created outside --out: {p:?}");
    }
    assert!(!abs.exists());
    assert_eq!(saved.len(), 4, "saved {saved:?}, refused {refused:?}");
    log.note(format!(
        "4 malicious sender paths: saved as the last component inside --out only: {}; refused \
         with `unsafe file name`: {}; nothing created outside --out",
        saved.join(", "),
        refused.join(", ")
    ));
}

/// Case 5: another address claims a live peer's name.
fn name_hijack(s: &Services, log: &mut Log) {
    let other = udp_from(11);
    let same_ip = UdpSocket::bind("127.0.0.1:0").unwrap();
    let cases: Vec<(&str, &UdpSocket, Message)> = vec![
        (
            "Register udp-seeder from another IP, its own port",
            &other,
            register("udp-seeder", s.udp_addr.port(), TransportKind::Udp),
        ),
        (
            "Register udp-seeder from its own IP, another port",
            &same_ip,
            register("udp-seeder", s.udp_addr.port() ^ 1, TransportKind::Udp),
        ),
        (
            "Heartbeat tcp-seeder from another IP",
            &other,
            Message::Heartbeat {
                request: rid(30),
                name: "tcp-seeder".into(),
                port: s.tcp_addr.port(),
                transport: TransportKind::Tcp,
            },
        ),
        (
            "Register tcp-seeder from its own IP and port, over udp",
            &same_ip,
            register("tcp-seeder", s.tcp_addr.port(), TransportKind::Udp),
        ),
    ];
    for (what, sock, msg) in &cases {
        sock.set_read_timeout(Some(REPLY_WAIT)).unwrap();
        let reply = ask_udp(sock, s.tracker_addr, msg);
        match reply {
            Some(Message::RegisterReply {
                outcome: RegisterOutcome::Refused { reason },
                ..
            }) => assert!(reason.contains("already used"), "{what}: {reason}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    // Unregister from another IP: answered, but nothing removed.
    let reply = ask_udp(
        &other,
        s.tracker_addr,
        &Message::Unregister {
            request: rid(31),
            name: "udp-seeder".into(),
        },
    );
    assert!(matches!(reply, Some(Message::UnregisterReply { .. })));
    s.assert_real_peers_listed("udp");
    log.note(
        "5 name hijack: Register/Heartbeat of a live name from another IP, another port or \
         another transport -> RegisterReply Refused (`already used by a live peer`); \
         Unregister from another IP -> answered, nothing removed; both real peers listed at \
         their own addresses",
    );
}

/// Case 6: request floods against the per-IP rate limit, and a registration flood against the
/// table size.
fn floods(s: &Services, log: &mut Log) {
    // Index requests over UDP.
    let sock = udp_from(30);
    let started = Instant::now();
    let req = index_request(0).encode();
    for _ in 0..5000 {
        let _ = sock.send_to(&req, s.udp_addr);
    }
    let replies = drain_udp(&sock, QUIET, Duration::from_secs(10)).len();
    let elapsed = started.elapsed().as_secs_f64();
    let bound = (BURST + RATE * elapsed).ceil() as usize + 5;
    assert!(
        (1..=bound).contains(&replies),
        "udp peer answered {replies} of 5000 index requests in {elapsed:.2} s (bound {bound})"
    );
    log.note(format!(
        "6 IndexRequest flood (udp): 5000 sent, {replies} answered in {elapsed:.2} s (burst \
         {BURST} + {RATE}/s allows {bound}); the rest dropped (rate-limited)"
    ));

    // Index requests over one TCP connection.
    let mut c = tcp_from(31, s.tcp_addr);
    let mut all = Vec::new();
    for _ in 0..5000 {
        all.extend(frame(&req));
    }
    let started = Instant::now();
    c.write_all(&all).unwrap();
    let mut replies = 0;
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while read_frame(&mut c).is_ok() {
        replies += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let bound = (BURST + RATE * elapsed).ceil() as usize + 5;
    assert!(
        (1..=bound).contains(&replies),
        "tcp peer answered {replies} of 5000 index requests in {elapsed:.2} s (bound {bound})"
    );
    log.note(format!(
        "6 IndexRequest flood (tcp, one connection): 5000 sent, {replies} answered in \
         {elapsed:.2} s (bound {bound}); the rest dropped (rate-limited)"
    ));

    // List requests at the tracker.
    let sock = udp_from(32);
    let started = Instant::now();
    let req = list_peers(0).encode();
    for _ in 0..5000 {
        let _ = sock.send_to(&req, s.tracker_addr);
    }
    let replies = drain_udp(&sock, QUIET, Duration::from_secs(10)).len();
    let elapsed = started.elapsed().as_secs_f64();
    let bound = (BURST + RATE * elapsed).ceil() as usize + 5;
    assert!(
        (1..=bound).contains(&replies),
        "tracker answered {replies} of 5000 list requests in {elapsed:.2} s (bound {bound})"
    );
    log.note(format!(
        "6 ListPeers flood (tracker/udp): 5000 sent, {replies} answered in {elapsed:.2} s \
         (bound {bound})"
    ));

    // Registrations with distinct names from 20 addresses (each has its own burst, so well
    // over --max-peers get through the rate limit).
    let socks: Vec<UdpSocket> = (100..120).map(udp_from).collect();
    for i in 0..5000usize {
        let sock = &socks[i % socks.len()];
        let msg = register(&format!("flood-{i}"), 1000 + i as u16, TransportKind::Udp);
        let _ = sock.send_to(&msg.encode(), s.tracker_addr);
    }
    let (mut accepted, mut full, mut other) = (0, 0, 0);
    for (i, sock) in socks.iter().enumerate() {
        // Replies to all sockets are interleaved: once the first is quiet, all are complete.
        let quiet = if i == 0 {
            QUIET
        } else {
            Duration::from_millis(20)
        };
        for m in drain_udp(sock, quiet, Duration::from_secs(5)) {
            match m {
                Message::RegisterReply {
                    outcome: RegisterOutcome::Accepted { .. },
                    ..
                } => accepted += 1,
                Message::RegisterReply {
                    outcome: RegisterOutcome::Refused { reason },
                    ..
                } if reason.contains("full") => full += 1,
                _ => other += 1,
            }
        }
    }
    let listed = s.assert_real_peers_listed("udp");
    assert!(
        listed <= MAX_PEERS,
        "{listed} peers listed with --max-peers {MAX_PEERS}"
    );
    assert!(accepted < MAX_PEERS && full > 0 && other == 0);
    log.note(format!(
        "6 Register flood: 5000 distinct names from 20 IPs: {accepted} accepted, {full} refused \
         (`tracker is full`), the rest rate-limited; {listed} peers listed (cap {MAX_PEERS}); \
         real peers still listed"
    ));
}

/// Case 7: transfer messages for transfers that do not exist.
fn stray_transfer_messages(s: &Services, log: &mut Log) {
    let mut rng = SmallRng::seed_from_u64(7);
    let mut stray = Vec::new();
    for _ in 0..200 {
        let transfer = TransferId(rng.gen());
        let hash = ContentHash(rng.gen());
        stray.push(Message::Ack {
            transfer,
            cumulative: rng.gen_range(1..1_000_000),
            sack: BoundedVec(vec![]),
            window: rng.gen(),
        });
        stray.push(Message::Fin {
            transfer: TransferId(rng.gen()),
            size: rng.gen(),
            hash,
        });
        stray.push(Message::Data {
            transfer: TransferId(rng.gen()),
            seq: rng.gen(),
            payload: vec![0xAA; rng.gen_range(0..1300)].into(),
        });
        stray.push(Message::Abort {
            transfer: TransferId(rng.gen()),
            reason: AbortReason::Other("go away".into()),
        });
        stray.push(Message::FinAck {
            transfer: TransferId(rng.gen()),
        });
        stray.push(Message::Accept {
            transfer: TransferId(rng.gen()),
            size: rng.gen(),
            chunk_size: 1024,
            hash,
        });
    }
    let sock = udp_from(40);
    for m in &stray {
        sock.send_to(&m.encode(), s.udp_addr).unwrap();
    }
    let replies = drain_udp(&sock, QUIET, Duration::from_secs(5));
    let fins = stray
        .iter()
        .filter(|m| matches!(m, Message::Fin { .. }))
        .count();
    assert!(
        replies.iter().all(|m| matches!(m, Message::FinAck { .. })),
        "only a stray Fin is answered (stateless FinAck): {replies:?}"
    );
    assert!(replies.len() <= fins);
    let mut c = tcp_from(40, s.tcp_addr);
    for m in &stray {
        c.write_all(&frame(&m.encode())).unwrap();
    }
    c.set_read_timeout(Some(QUIET)).unwrap();
    let mut tcp_replies = 0;
    while let Ok(f) = read_frame(&mut c) {
        let m = decode_reply(&f);
        assert!(matches!(m, Message::FinAck { .. }), "{m:?}");
        tcp_replies += 1;
    }
    log.note(format!(
        "7 stray transfer messages ({} each over udp and tcp: Ack for chunks never sent, Fin \
         with a wrong hash, Data, Abort, FinAck, Accept for unknown transfers): dropped, \
         except a Fin, answered by one stateless FinAck ({} over udp, {tcp_replies} over tcp)",
        stray.len(),
        replies.len()
    ));
}

/// Case 7: a real transfer started from a raw socket, then fed acknowledgements for chunks
/// never sent; the sender must ignore them and time the receiver out. Runs in the background.
fn bogus_ack_transfer(peer: SocketAddr, file: FileId) -> JoinHandle<String> {
    thread::spawn(move || {
        let sock = udp_from(41);
        let transfer = TransferId(0xB0_6005);
        sock.send_to(
            &Message::Request {
                transfer,
                file,
                offset: 0,
            }
            .encode(),
            peer,
        )
        .unwrap();
        let accept = await_udp(&sock, |m| matches!(m, Message::Accept { .. }));
        assert!(accept.is_some(), "the peer accepts the request");
        let started = Instant::now();
        for ack in [
            Message::Ack {
                transfer,
                cumulative: 1 << 40,
                sack: BoundedVec(vec![]),
                window: 1024,
            },
            Message::Ack {
                transfer,
                cumulative: u64::MAX,
                sack: BoundedVec(vec![]),
                window: u32::MAX,
            },
            Message::Ack {
                transfer,
                cumulative: 0,
                sack: BoundedVec(vec![(1_000_000, 2_000_000), (2_000_001, u64::MAX)]),
                window: 1024,
            },
            Message::FinAck { transfer },
        ] {
            sock.send_to(&ack.encode(), peer).unwrap();
        }
        let mut max_seq = 0;
        let mut data = 0;
        let mut fin = false;
        let mut buf = vec![0u8; 65_536];
        let deadline = started + PEER_IDLE + Duration::from_secs(8);
        let end = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no Abort within {:?}", deadline - started);
            sock.set_read_timeout(Some(left)).unwrap();
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                continue;
            };
            match decode_reply(&buf[..n]) {
                Message::Data { seq, .. } => {
                    data += 1;
                    max_seq = max_seq.max(seq);
                }
                Message::Fin { .. } => fin = true,
                Message::Abort { reason, .. } => break reason,
                _ => {}
            }
        };
        let took = started.elapsed();
        assert_eq!(
            end,
            AbortReason::Timeout,
            "the sender times the receiver out"
        );
        assert!(!fin, "a Fin means the bogus Acks were believed");
        assert!(
            max_seq < 64,
            "chunk {max_seq} sent: the bogus Acks opened the window"
        );
        assert!(took >= PEER_IDLE - Duration::from_millis(100), "{took:?}");
        format!(
            "7 bogus Ack on a real transfer: Acks with cumulative 2^40 / u64::MAX and SACK \
             ranges past the end, and an early FinAck -> ignored: only chunks 0..={max_seq} \
             were (re)sent ({data} Data), no Fin, and the sender sent Abort(Timeout) after \
             {:.1} s (--idle-timeout {PEER_IDLE:?})",
            took.as_secs_f64()
        )
    })
}

/// Case 7: more concurrent requests from one IP than it may have uploads.
fn upload_slots(s: &Services, log: &mut Log) {
    let sock = udp_from(42);
    let file = s.file_id(SMALL);
    for t in 0..20u64 {
        let m = Message::Request {
            transfer: TransferId(0x5107_0000 + t),
            file,
            offset: 0,
        };
        sock.send_to(&m.encode(), s.udp_addr).unwrap();
    }
    let replies = drain_udp(&sock, QUIET, Duration::from_secs(3));
    let accepted: BTreeSet<TransferId> = replies
        .iter()
        .filter_map(|m| match m {
            Message::Accept { transfer, .. } => Some(*transfer),
            _ => None,
        })
        .collect();
    let busy = replies
        .iter()
        .filter(|m| {
            matches!(
                m,
                Message::Abort {
                    reason: AbortReason::Busy,
                    ..
                }
            )
        })
        .count();
    assert!(accepted.len() <= 8, "{} uploads to one IP", accepted.len());
    assert_eq!(accepted.len() + busy, 20, "{replies:?}");
    log.note(format!(
        "7 upload slots: 20 Requests from one IP -> {} accepted (per-IP cap 8), {busy} \
         refused with Abort(Busy)",
        accepted.len()
    ));
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

#[test]
fn hostile_inputs_leave_services_alive_correct_and_bounded() {
    let run_started = Instant::now();
    let mut s = Services::start();
    let mut log = Log::default();
    eprintln!(
        "services: tracker {} (pid {}), udp peer {} (pid {}), tcp peer {} (pid {})",
        s.tracker_addr,
        s.tracker.child.id(),
        s.udp_addr,
        s.udp_peer.child.id(),
        s.tcp_addr,
        s.tcp_peer.child.id()
    );

    // Background attacks that take time: stalled frames and a transfer fed bogus Acks.
    let slow = [
        (
            "tracker/tcp, body trickled",
            slow_sender(50, s.tracker_addr, false),
        ),
        (
            "tracker/tcp, header trickled",
            slow_sender(51, s.tracker_addr, true),
        ),
        (
            "tcp peer, body trickled",
            slow_sender(52, s.tcp_addr, false),
        ),
    ];
    let bogus = bogus_ack_transfer(s.udp_addr, s.file_id(BIG));

    eprintln!("== 1. random datagrams");
    random_datagrams(&s, &mut log);
    eprintln!("== 2. malformed envelopes");
    malformed_envelopes_case(&s, &mut log);
    eprintln!("== 3. tcp framing");
    // While the stalled frames trickle, real traffic over TCP is served promptly.
    let out = s.dir().join("out-slow");
    let took = s.get_identical("tcp-seeder", BIG, "tcp", &out);
    assert!(
        took < FRAME_TIMEOUT / 2,
        "a stalled frame held up a get: {took:?}"
    );
    log.note(format!(
        "3 stalled frames: while 3 connections trickle one byte per 250 ms into a frame, a \
         get over tcp (tracker and peer) took {:.2} s",
        took.as_secs_f64()
    ));
    tcp_framing(&s, &mut log);
    big_frame_flood(&s, &mut log, 16, 400);
    let out = s.dir().join("out-idle");
    idle_connection_flood(&mut log, s.tcp_addr, "tcp peer", || {
        s.get_identical("tcp-seeder", BIG, "tcp", &out)
    });
    eprintln!("== 4. ids, names and paths");
    bad_ids(&s, &mut log);
    bad_names(&s, &mut log);
    download_paths(&s, &mut log);
    malicious_paths(&s, &mut log);
    eprintln!("== 5. name hijack");
    name_hijack(&s, &mut log);
    eprintln!("== 6. floods");
    floods(&s, &mut log);
    eprintln!("== 7. transfer-level");
    stray_transfer_messages(&s, &mut log);
    upload_slots(&s, &mut log);
    log.note(bogus.join().expect("bogus-ack case"));
    for (what, t) in slow {
        let closed = t.join().unwrap();
        let closed = closed.unwrap_or_else(|| panic!("{what}: the stalled connection stayed open"));
        log.note(format!(
            "3 stalled frame ({what}): connection closed by the service after {:.1} s",
            closed.as_secs_f64()
        ));
    }
    // Last, an idle flood on the tracker's TCP port, while a get reaches it over TCP.
    let out = s.dir().join("out-idle-tracker");
    idle_connection_flood(&mut log, s.tracker_addr, "tracker/tcp", || {
        s.get_identical("udp-seeder", SMALL, "tcp", &out)
    });

    eprintln!("== after the attacks");
    s.assert_alive("during the attacks");
    let out = s.dir().join("out-final");
    for (peer, transport) in [
        ("udp-seeder", "udp"),
        ("tcp-seeder", "tcp"),
        ("tcp-seeder", "udp"),
        ("udp-seeder", "tcp"),
    ] {
        let out = out.join(format!("{peer}-{transport}"));
        for path in [SMALL, BIG, DOTS, NESTED] {
            s.get_identical(peer, path, transport, &out);
        }
    }
    s.assert_real_peers_listed("tcp");
    s.assert_alive("after the final downloads");
    for (name, p) in [
        ("tracker", &s.tracker),
        ("udp peer", &s.udp_peer),
        ("tcp peer", &s.tcp_peer),
    ] {
        let kib = vm_hwm_kib(p.child.id());
        log.note(format!(
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
        run_started.elapsed().as_secs_f64()
    );
    for l in &log.0 {
        eprintln!("- {l}");
    }
}

// ---------------------------------------------------------------------------------------------
// Findings of this suite. The first three were fixed in 3f5316d and stay as regression tests;
// the last is still open and kept as an ignored test asserting the expected behaviour.
// ---------------------------------------------------------------------------------------------

/// Found here: names with `/`, `..` and invisible or bidi-override characters were accepted.
#[test]
fn path_like_and_invisible_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_t, tr) = common::tracker(dir.path(), &[]);
    let tracker: SocketAddr = tr.parse().unwrap();
    let sock = udp_from(2);
    let mut accepted = Vec::new();
    for name in [
        "..",
        "../etc",
        "a/b",
        "/",
        "seeder\u{200b}",
        "\u{202e}txt.exe",
    ] {
        if !matches!(
            try_register(&sock, tracker, name),
            Some(RegisterOutcome::Refused { .. })
        ) {
            accepted.push(name);
        }
    }
    assert!(accepted.is_empty(), "accepted: {accepted:?}");
}

/// Found here: the tracker printed a refused name raw, so a Register could forge log lines
/// (`registered forged at ...`) or send escape sequences to the operator's terminal.
#[test]
fn refused_names_are_not_printed_raw_by_the_tracker() {
    let dir = tempfile::tempdir().unwrap();
    let (mut t, tr) = common::tracker(dir.path(), &[]);
    let tracker: SocketAddr = tr.parse().unwrap();
    let sock = udp_from(2);
    for name in [
        "x\nregistered forged at 6.6.6.6:66 (udp)",
        "clear\x1b[2J\x1b]0;pwned\x07",
    ] {
        let outcome = try_register(&sock, tracker, name);
        assert!(matches!(outcome, Some(RegisterOutcome::Refused { .. })));
    }
    // Printed after the refusals: once it shows, everything before it was seen.
    let outcome = try_register(&sock, tracker, "sentinel");
    assert!(matches!(outcome, Some(RegisterOutcome::Accepted { .. })));
    t.wait_for("registered sentinel");
    let forged: Vec<&String> = t
        .seen
        .iter()
        .filter(|l| l.starts_with("registered forged") || l.contains(['\x1b', '\x07']))
        .collect();
    assert!(forged.is_empty(), "tracker log: {forged:?}");
}

/// Found here: a frame could take twice the frame timeout (the length bytes and the body each
/// had their own 10 s), so a header trickled over 9 s kept the connection ~19 s.
#[test]
fn a_started_frame_is_dropped_after_the_frame_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (_t, tr) = common::tracker(dir.path(), &[]);
    let closed = slow_sender(2, tr.parse().unwrap(), true)
        .join()
        .unwrap()
        .expect("the stalled connection is closed");
    assert!(
        closed < FRAME_TIMEOUT + Duration::from_millis(1500),
        "closed only after {closed:?}"
    );
}

#[test]
fn announced_paths_are_not_printed_raw_by_ls_or_the_menu() {
    let dir = tempfile::tempdir().unwrap();
    let (_t, tr) = common::tracker(dir.path(), &[]);
    let tracker: SocketAddr = tr.parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let fake = fake_peer(
        tracker,
        3,
        "sentinel",
        vec![
            (
                1,
                "a\nID: 099 -> share/forged.txt (1 B)".into(),
                b"a".to_vec(),
            ),
            (2, "b\x1b[2J\x1b]0;pwned\x07".into(), b"b".to_vec()),
        ],
        stop.clone(),
    );
    let ls = run(dir.path(), &["ls", "sentinel", "--tracker", &tr]);
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let mut menu = Proc::spawn(
        dir.path(),
        &[
            "peer",
            "--name",
            "viewer",
            "--listen",
            "127.0.0.1:0",
            "--tracker",
            &tr,
            "--share",
            empty.to_str().unwrap(),
        ],
    );
    menu.wait_for("Available commands:");
    menu.send("i sentinel");
    menu.wait_for("ID: 002");
    stop.store(true, Ordering::Relaxed);
    fake.join().unwrap();
    let forged = |l: &str| l.starts_with("ID: 099") || l.contains(['\x1b', '\x07']);
    let listing = stdout(&ls);
    let from_ls: Vec<&str> = listing.lines().filter(|l| forged(l)).collect();
    let from_menu: Vec<&String> = menu.seen.iter().filter(|l| forged(l)).collect();
    assert!(
        from_ls.is_empty() && from_menu.is_empty(),
        "p2p ls: {from_ls:?}; menu: {from_menu:?}"
    );
}
