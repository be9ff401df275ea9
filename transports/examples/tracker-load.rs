//! Load generator for the tracker: a tracker on its own thread (one core, UDP on loopback,
//! per-address rate limit raised as in aquatic's load tests) and peers on another, sending from
//! as many 127.x.y.z addresses as there are peers, each keeping a few requests in flight.
//!
//! ```text
//! cargo run --release -p p2p-transports --example tracker-load -- [PEERS] [SECONDS]
//! ```
//!
//! Registers PEERS names (default 10,000; 50 per /24, under the tracker's per-network limit
//! of new names), then measures for SECONDS (default 5) each: Heartbeat, and ListPeers (every
//! page of the listing in turn). Prints replies/s and p50/p99 latency per kind, the tracker
//! thread's CPU use, and replies per CPU-second of it: the rate one core sustains when the
//! load generator does not share it (on a 2-core machine it does).
//!
//! ```text
//! cargo run --release -p p2p-transports --example tracker-load -- PEERS SECONDS ADDR PID
//! ```
//!
//! drives a tracker already running at ADDR (a `p2p tracker` process, PID) instead, with
//! its default limits, and prints its resident memory at the end (SECONDS 0: register only).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p_core::service::run_tracker_limited;
use p2p_core::transport::SharedTransport;
use p2p_proto::limits::RateConfig;
use p2p_proto::tracker::RegistryConfig;
use p2p_proto::wire::{decode, Message, RequestId, Token, TransportKind};
use p2p_transports::UdpTransport;
use tokio::net::UdpSocket;

/// Requests each peer keeps in flight.
const DEPTH: usize = 4;
/// Peers sending at once (each from its own address); with fewer peers, each sends more.
const SENDERS: usize = 256;

fn peer_ip(i: usize) -> IpAddr {
    // 50 names per /24: 127.(10 + i / 12,500).((i / 50) % 250).(1 + i % 50)
    IpAddr::V4(Ipv4Addr::new(
        127,
        10 + (i / 12_500) as u8,
        ((i / 50) % 250) as u8,
        1 + (i % 50) as u8,
    ))
}

fn name(i: usize) -> String {
    format!("load{i:05}")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Heartbeat,
    ListPeers,
}

fn request(kind: Kind, i: usize, id: u64, pages: u32, token: Token) -> Vec<u8> {
    let request = RequestId(id);
    let msg = match kind {
        Kind::Heartbeat => Message::Heartbeat {
            request,
            name: name(i),
            port: 7000,
            transport: TransportKind::Udp,
        },
        Kind::ListPeers => Message::ListPeers {
            request,
            page: (id % u64::from(pages.max(1))) as u32,
        },
    };
    // With the token that proves this address (as the real clients send it).
    msg.with_token(Some(token)).encode()
}

/// Sends `msg` from `s` as a real client does: asked for proof (a `Retry`), sends it again
/// with the token. Returns the answer and the token.
async fn ask(s: &UdpSocket, to: SocketAddr, msg: &Message) -> std::io::Result<(Message, Token)> {
    let mut buf = vec![0u8; 2048];
    s.send_to(&msg.encode(), to).await?;
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), s.recv_from(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    let token = match decode(&buf[..n]) {
        Ok(Message::Retry { token, .. }) => token,
        other => return Err(std::io::Error::other(format!("expected Retry: {other:?}"))),
    };
    s.send_to(&msg.with_token(Some(token)).encode(), to).await?;
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), s.recv_from(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    let reply = decode(&buf[..n]).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok((reply, token))
}

/// One sender: peer `i`'s address, DEPTH requests in flight, latencies collected.
async fn sender(
    tracker: SocketAddr,
    kind: Kind,
    i: usize,
    pages: u32,
    stop: Arc<AtomicBool>,
) -> std::io::Result<Vec<Duration>> {
    let socket = UdpSocket::bind(SocketAddr::new(peer_ip(i), 0)).await?;
    let probe = Message::ListPeers {
        request: RequestId(u64::MAX),
        page: 0,
    };
    let (_, token) = ask(&socket, tracker, &probe).await?;
    let mut sent_at = [Instant::now(); DEPTH];
    let mut lat = Vec::new();
    let mut next = 0u64;
    for (slot, at) in sent_at.iter_mut().enumerate() {
        *at = Instant::now();
        socket
            .send_to(
                &request(kind, i, next * DEPTH as u64 + slot as u64, pages, token),
                tracker,
            )
            .await?;
    }
    next += 1;
    let mut buf = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(200), socket.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => {
                let id = match decode(&buf[..n]) {
                    Ok(Message::RegisterReply { request, .. })
                    | Ok(Message::PeerList { request, .. }) => request.0,
                    _ => continue,
                };
                let slot = (id % DEPTH as u64) as usize;
                lat.push(sent_at[slot].elapsed());
                sent_at[slot] = Instant::now();
                let id = next * DEPTH as u64 + slot as u64;
                next += 1;
                socket
                    .send_to(&request(kind, i, id, pages, token), tracker)
                    .await?;
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                // Lost (or dropped by a full queue): send every slot again.
                for (slot, at) in sent_at.iter_mut().enumerate() {
                    *at = Instant::now();
                    let id = next * DEPTH as u64 + slot as u64;
                    socket
                        .send_to(&request(kind, i, id, pages, token), tracker)
                        .await?;
                }
                next += 1;
            }
        }
    }
    Ok(lat)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// CPU time (user + system) the thread with this `/proc` path has used so far.
fn thread_cpu(task: &std::path::Path) -> Duration {
    let stat = std::fs::read_to_string(task.join("stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 14th field of
    // the line, stime the 15th, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    Duration::from_millis(fields.iter().sum::<u64>() * 10)
}

async fn measure(
    tracker: SocketAddr,
    task: &std::path::Path,
    kind: Kind,
    peers: usize,
    pages: u32,
    secs: u64,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let senders = peers.min(SENDERS);
    let mut tasks = Vec::new();
    for s in 0..senders {
        // With many peers, senders take turns over their addresses' names.
        let i = s * (peers / senders).max(1);
        tasks.push(tokio::spawn(sender(tracker, kind, i, pages, stop.clone())));
    }
    let started = Instant::now();
    let cpu_before = thread_cpu(task);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let cpu = thread_cpu(task).saturating_sub(cpu_before);
    let mut lat = Vec::new();
    for t in tasks {
        if let Ok(Ok(l)) = t.await {
            lat.extend(l);
        }
    }
    lat.sort();
    // The replies counted arrived within `elapsed` (a few in flight at the stop are lost to
    // the count); the tracker thread's CPU time over the same span gives the rate one core
    // would sustain with a load generator that does not share it.
    let replies = lat.len() as f64;
    println!(
        "{:<10} {:>6} peers  {:>9.0} replies/s  p50 {:>7.1?}  p99 {:>7.1?}  tracker CPU {:>3.0}%  {:>9.0} replies per CPU-second",
        format!("{kind:?}"),
        peers,
        replies / elapsed.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64(),
        replies / cpu.as_secs_f64().max(1e-3),
    );
}

/// Registers `peers` names, each from its own address; returns the listing's page count.
async fn register_all(tracker: SocketAddr, peers: usize) -> std::io::Result<u32> {
    let mut pending: Vec<usize> = (0..peers).collect();
    for _round in 0..20 {
        let mut failed = Vec::new();
        for chunk in pending.chunks(500) {
            // Each address proves itself (Retry, token), then registers.
            let mut tasks = Vec::new();
            for &i in chunk {
                tasks.push(tokio::spawn(async move {
                    let s = UdpSocket::bind(SocketAddr::new(peer_ip(i), 0)).await?;
                    let msg = Message::Register {
                        request: RequestId(i as u64),
                        name: name(i),
                        port: 7000,
                        transport: TransportKind::Udp,
                    };
                    ask(&s, tracker, &msg).await
                }));
            }
            for (&i, t) in chunk.iter().zip(tasks) {
                if !matches!(t.await, Ok(Ok((Message::RegisterReply { .. }, _)))) {
                    failed.push(i);
                }
            }
        }
        if failed.is_empty() {
            break;
        }
        pending = failed;
    }
    let s = UdpSocket::bind(SocketAddr::new(peer_ip(0), 0)).await?;
    let list = Message::ListPeers {
        request: RequestId(1),
        page: 0,
    };
    match ask(&s, tracker, &list).await.map(|(m, _)| m) {
        Ok(Message::PeerList { pages, .. }) => Ok(pages),
        other => Err(std::io::Error::other(format!("no listing: {other:?}"))),
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let peers: usize = args.next().map_or(10_000, |s| s.parse().expect("PEERS"));
    let secs: u64 = args.next().map_or(5, |s| s.parse().expect("SECONDS"));
    let external: Option<(SocketAddr, u32)> = args.next().map(|addr| {
        let pid = args.next().expect("PID of the tracker at ADDR");
        (
            addr.parse().expect("ADDR as IP:PORT"),
            pid.parse().expect("PID"),
        )
    });
    let (tracker, task) = match external {
        Some((addr, pid)) => (addr, std::path::PathBuf::from(format!("/proc/{pid}"))),
        None => spawn_tracker(peers),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let started = Instant::now();
        let pages = register_all(tracker, peers).await?;
        println!(
            "registered {peers} peers in {:.2?} ({pages} listing pages); tracker on one thread, load on another",
            started.elapsed()
        );
        if secs > 0 {
            measure(tracker, &task, Kind::Heartbeat, peers, pages, secs).await;
            measure(tracker, &task, Kind::ListPeers, peers, pages, secs).await;
        }
        if external.is_some() {
            report_memory(&task);
        }
        Ok(())
    })
}

/// Prints the resident memory (now and peak) of the process at `proc` (`/proc/PID`).
fn report_memory(proc: &std::path::Path) {
    let status = std::fs::read_to_string(proc.join("status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map_or("?".to_string(), |v| v.trim().to_string())
    };
    println!("tracker RSS {} (peak {})", field("VmRSS:"), field("VmHWM:"));
}

/// Starts a tracker in this process on its own thread (one core, rate limit raised); returns
/// its address and its thread's `/proc` path.
fn spawn_tracker(peers: usize) -> (SocketAddr, std::path::PathBuf) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let t = UdpTransport::bind("127.0.0.1:0".parse().unwrap())
                .await
                .expect("bind");
            let task = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
            tx.send((
                p2p_core::transport::Transport::local_addr(&t).expect("addr"),
                std::path::Path::new("/proc").join(task),
            ))
            .expect("send");
            let t: SharedTransport = Arc::new(t);
            let config = RegistryConfig {
                max_peers: peers.max(10_000),
                ..RegistryConfig::default()
            };
            let rate = RateConfig {
                per_second: 1e9,
                burst: 1e9,
                ..RateConfig::default()
            };
            let _ = run_tracker_limited(vec![t], config, rate, None).await;
        });
    });
    rx.recv().expect("tracker address")
}
