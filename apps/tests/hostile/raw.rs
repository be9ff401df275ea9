//! Raw attack traffic: `std::net` sockets on attacker addresses, TCP framing by hand, bounded
//! reads of the services' answers, a stalled-frame sender and a fake peer.
//!
//! Attack traffic comes from other loopback addresses (127.0.0.N, N >= 2, all routed to `lo`
//! on Linux) so that each attack has its own per-IP rate-limit bucket and the real clients on
//! 127.0.0.1 are not throttled by the floods. Waiting is always on a socket read with a
//! timeout, never a sleep; the only pauses are the bounded pacing of the stalled-frame sender.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use p2p_proto::wire::{
    decode, AbortReason, BoundedVec, ContentHash, FileId, IndexEntry, Message, RegisterOutcome,
    RequestId, Token, TransportKind, PIECE_SIZE,
};

use crate::{FRAME_TIMEOUT, QUIET, REPLY_WAIT, TCP_MAX_FRAME};

pub fn attacker_ip(n: u8) -> Ipv4Addr {
    assert!(n >= 2, "127.0.0.1 is for the real clients");
    Ipv4Addr::new(127, 0, 0, n)
}

/// A UDP socket on 127.0.0.`n`.
pub fn udp_from(n: u8) -> UdpSocket {
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
pub fn tcp_from(n: u8, to: SocketAddr) -> TcpStream {
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

/// A TCP frame: `u32` little-endian length, then the bytes.
pub fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut f = (bytes.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(bytes);
    f
}

pub fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let n = u32::from_le_bytes(len) as usize;
    assert!(n <= TCP_MAX_FRAME, "service sent a frame of {n} bytes");
    let mut buf = vec![0; n];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

pub fn decode_reply(bytes: &[u8]) -> Message {
    decode(bytes).unwrap_or_else(|e| panic!("a service sent an undecodable message: {e}"))
}

/// Messages arriving on `sock` until it has been silent for `quiet`, at most for `max`.
pub fn drain_udp(sock: &UdpSocket, quiet: Duration, max: Duration) -> Vec<Message> {
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
pub fn await_udp(sock: &UdpSocket, want: impl Fn(&Message) -> bool) -> Option<Message> {
    await_udp_within(sock, REPLY_WAIT, want)
}

/// The first message on `sock` that `want` accepts, within `wait`.
pub fn await_udp_within(
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
/// sends in all, and proves its address when asked (a `Retry`: the request again, with the
/// token; see `p2p_proto::validation`).
pub fn ask_udp(sock: &UdpSocket, to: SocketAddr, msg: &Message) -> Option<Message> {
    let mut bytes = msg.encode();
    let mut sends = 0;
    let mut retries = 0;
    while sends < 3 {
        sock.send_to(&bytes, to).unwrap();
        match await_udp_within(sock, Duration::from_secs(1), |_| true) {
            Some(Message::Retry { token, .. } | Message::RetryTransfer { token, .. })
                if retries < 3 =>
            {
                retries += 1;
                bytes = msg.with_token(Some(token)).encode();
            }
            Some(reply) => return Some(reply),
            None => sends += 1,
        }
    }
    None
}

/// A token proving `sock`'s address to `to`, got by sending `probe` (a request `to` answers
/// with a `Retry`).
pub fn prove(sock: &UdpSocket, to: SocketAddr, probe: &Message) -> Token {
    sock.send_to(&probe.encode(), to).unwrap();
    match await_udp(sock, |m| {
        matches!(m, Message::Retry { .. } | Message::RetryTransfer { .. })
    }) {
        Some(Message::Retry { token, .. } | Message::RetryTransfer { token, .. }) => token,
        other => panic!("{to} asked no proof for {probe:?}: {other:?}"),
    }
}

/// Whether the service closed `s` within `within` (end of stream or reset); bytes it sends
/// meanwhile are skipped.
pub fn closed_by_peer(s: &mut TcpStream, within: Duration) -> bool {
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
pub fn still_open(s: &TcpStream) -> bool {
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

pub fn rid(n: u64) -> RequestId {
    RequestId(n)
}

pub fn list_peers(page: u32) -> Message {
    Message::ListPeers {
        request: rid(7),
        page,
    }
}

pub fn index_request(page: u32) -> Message {
    Message::IndexRequest {
        request: rid(8),
        page,
    }
}

pub fn register(name: &str, port: u16, transport: TransportKind) -> Message {
    Message::Register {
        request: rid(9),
        name: name.to_string(),
        port,
        transport,
    }
}

/// The registration outcome for `name`, or `None` when the tracker stayed silent.
pub fn try_register(sock: &UdpSocket, tracker: SocketAddr, name: &str) -> Option<RegisterOutcome> {
    match ask_udp(sock, tracker, &register(name, 4200, TransportKind::Udp)) {
        Some(Message::RegisterReply { outcome, .. }) => Some(outcome),
        None => None,
        Some(other) => panic!("tracker answered a Register with {other:?}"),
    }
}

/// A sender from 127.0.0.`from` that opens a frame and never completes it, one byte at a
/// time; the thread returns how long the service took to close the connection (`None`: it
/// stayed open). The frame has started when this returns (its first byte is written here).
/// `split_header`: the 4 length bytes are themselves trickled over ~9 s before the body.
pub fn slow_sender(from: u8, to: SocketAddr, split_header: bool) -> JoinHandle<Option<Duration>> {
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
    // The first byte is due at once.
    let first_written = c.write_all(&[pending[0].1]).is_ok();
    thread::spawn(move || {
        if !first_written {
            return Some(started.elapsed());
        }
        for &(when, byte) in &pending[1..] {
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

/// The file id for which [`fake_peer`] answers a `Request` with an `Abort` whose reason is
/// [`EVIL_REASON`] (terminal escapes, a bidi override) instead of the file.
pub const ABORTING_FILE: u32 = 666;
/// What [`fake_peer`] gives as its reason to abort [`ABORTING_FILE`].
pub const EVIL_REASON: &str = "\x1b[2J\x1b]0;owned\x07 \u{202e}txt.exe";

/// A fake peer on 127.0.0.`n`, registered at `tracker` as `name`, that announces the given
/// (id, path, content) files and serves them honestly, whatever their names: a malicious
/// sender trying to make `get` write outside `--out` (and, for [`ABORTING_FILE`], to drive
/// the terminal with its abort reason). Runs until `stop` is set.
pub fn fake_peer(
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
        let mut transfers = BTreeMap::new();
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
                Message::EntryRequest { request, file } => replies.push(Message::EntryReply {
                    request,
                    entry: files.iter().find(|(id, ..)| *id == file.0).map(
                        |(id, path, content)| IndexEntry {
                            id: FileId(*id),
                            path: path.clone(),
                            size: content.len() as u64,
                            hash: ContentHash::of(content),
                        },
                    ),
                    partial: false,
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
                Message::Request { transfer, file, .. } if file.0 == ABORTING_FILE => {
                    replies.push(Message::Abort {
                        transfer,
                        reason: AbortReason::Other(EVIL_REASON.into()),
                    });
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

/// A raw IPv4 socket that sends UDP datagrams with any source address (`IP_HDRINCL`), as an
/// off-path attacker does; `None` without the privilege (CAP_NET_RAW) to open one.
pub fn spoofer() -> Option<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP)).ok()?;
    s.set_header_included_v4(true).ok()?;
    Some(s)
}

/// Sends `payload` to `to` in a UDP datagram whose IP source is `from` (forged).
pub fn send_spoofed(raw: &socket2::Socket, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
    let (SocketAddr::V4(from), SocketAddr::V4(to)) = (from, to) else {
        panic!("IPv4 only");
    };
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = Vec::with_capacity(total);
    // IPv4 header; the kernel fills in the checksum and the id (raw(7)).
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&from.ip().octets());
    p.extend_from_slice(&to.ip().octets());
    // UDP header; checksum 0: none (allowed over IPv4).
    p.extend_from_slice(&from.port().to_be_bytes());
    p.extend_from_slice(&to.port().to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    raw.send_to(&p, &socket2::SockAddr::from(SocketAddr::V4(to)))
        .expect("send a spoofed datagram");
}
