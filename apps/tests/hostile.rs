//! Hostile input against the real `p2p` services.
//!
//! Each test starts its own services (see [`services::Services`]): a tracker, a seeding peer
//! over UDP and a seeding peer over TCP, as processes on 127.0.0.1 on fresh ports with small
//! limits (`--rate-limit 50`, `--max-peers 100`, `--max-connections 64`). It fires one hostile
//! case at them from raw `std::net` sockets (see [`raw`]), checks how the services answered,
//! and ends with [`services::Services::assert_unharmed`]: the services must (a) still be
//! running, (b) still serve byte-identical downloads to a plain `p2p get`, and (c) have stayed
//! below a memory bound (peak RSS, `VmHWM`). Tests share no state, so they run in parallel
//! and one failure hides no other.
//!
//! Attack traffic comes from other loopback addresses (127.0.0.N, N >= 2) so that it has its
//! own per-IP rate-limit bucket and the real clients on 127.0.0.1 are not throttled.
//!
//! Waiting is always on a socket read (with a timeout) or a process line, never a sleep; the
//! only pauses are the bounded pacing of the slow-byte senders.
//!
//! The last four tests are findings of this suite, kept as regression tests.

mod common;
#[path = "hostile/raw.rs"]
mod raw;
#[path = "hostile/services.rs"]
mod services;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{run, stdout, Proc};
use p2p_proto::fuzzing::seal;
use p2p_proto::wire::{
    AbortReason, BoundedVec, ContentHash, FileId, IndexEntry, Message, RegisterOutcome, Token,
    TransferId, TransportKind, DATA_OVERHEAD, HEADER_LEN, MAGIC, MAX_NAME_LEN, PROTOCOL_VERSION,
};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use raw::*;
use services::{all_files, json_of, Services, BIG, DOTS, NESTED, SMALL};

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
// 1. Random datagrams
// ---------------------------------------------------------------------------------------------

/// Thousands of random datagrams (0..2000 bytes, and a few up to 65507) at the tracker and the
/// UDP peer: dropped silently.
#[test]
fn random_datagrams_are_dropped_without_a_reply() {
    let s = Services::start();
    let mut rng = SmallRng::seed_from_u64(1);
    let noise = udp_from(2);
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
    }
    let noise_replies = drain_udp(&noise, QUIET, Duration::from_secs(3));
    assert!(
        noise_replies.is_empty(),
        "random bytes got answers: {noise_replies:?}"
    );
    s.note(format!(
        "1 random datagrams: {sent} sent to tracker and udp peer; pure noise (0..2000 B and \
         up to 65507 B) dropped silently (0 replies)"
    ));
    s.assert_unharmed();
}

/// Envelope-shaped noise (a correct header around a random body) and valid messages with
/// random bytes flipped and the checksum fixed: whatever is answered is a well-formed message.
#[test]
fn sealed_noise_and_mutated_messages_get_only_well_formed_replies() {
    let s = Services::start();
    let mut rng = SmallRng::seed_from_u64(1);
    let shaped = udp_from(3);
    let samples = sample_messages(&s);
    let mut sent = 0;
    for target in [s.tracker_addr, s.udp_addr] {
        for _ in 0..2000 {
            let len = rng.gen_range(0..1400);
            let mut body = vec![0u8; len];
            rng.fill_bytes(&mut body);
            if len > 0 && rng.gen_bool(0.5) {
                // A plausible MessagePack start: a map or an array marker.
                body[0] = if rng.gen_bool(0.5) { 0x81 } else { 0x92 };
            }
            let _ = shaped.send_to(&seal(&body), target);
            sent += 1;
        }
        for _ in 0..2000 {
            let m = &samples[rng.gen_range(0..samples.len())];
            let mut body = m.encode()[HEADER_LEN..].to_vec();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..body.len());
                body[i] = rng.gen();
            }
            let _ = shaped.send_to(&seal(&body), target);
            sent += 1;
        }
    }
    // Every reply is decoded: an undecodable one fails the test.
    let shaped_replies = drain_udp(&shaped, QUIET, Duration::from_secs(5));
    s.note(format!(
        "1 random datagrams: {sent} sent to tracker and udp peer; sealed noise and mutated \
         valid messages got {} replies (mutations that still decode are ordinary requests)",
        shaped_replies.len()
    ));
    s.assert_unharmed();
}

/// Well-formed messages of every kind, for mutation.
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
            end: None,
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

// ---------------------------------------------------------------------------------------------
// 2. Malformed envelopes
// ---------------------------------------------------------------------------------------------

/// Malformed envelopes: (what, bytes): unknown versions, bad magic, a bad checksum, a flipped
/// body byte, a trailing byte and every proper prefix of 5 valid messages.
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
            end: None,
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
            seal(&enc[HEADER_LEN..]),
            enc,
            "the test's seal matches the product's envelope"
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

/// Every malformed envelope, and the empty datagram, at the tracker and the UDP peer: none is
/// answered, and the same socket is served right after.
#[test]
fn malformed_udp_envelopes_are_dropped_and_the_socket_is_still_served() {
    let s = Services::start();
    let bad = malformed_envelopes(&s);
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
    s.note(format!(
        "2 malformed envelopes: {} variants (versions 0/2/9/255, 4 bad magics, bad checksum, \
         flipped body byte, trailing byte, every proper prefix of 5 messages) + the empty \
         datagram, over UDP: dropped silently; the same socket is answered right after",
        bad.len()
    ));
    s.assert_unharmed();
}

/// Every malformed envelope as a well-delimited TCP frame, then a probe, to the tracker and the
/// TCP peer: only the probe is answered and the connection is kept.
#[test]
fn malformed_envelopes_in_tcp_frames_are_dropped_and_the_connection_is_kept() {
    let s = Services::start();
    let bad = malformed_envelopes(&s);
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
    s.note(format!(
        "2 malformed envelopes: {} variants as TCP frames: dropped silently; the same \
         connection is answered right after",
        bad.len()
    ));
    s.assert_unharmed();
}

// ---------------------------------------------------------------------------------------------
// 3. TCP framing
// ---------------------------------------------------------------------------------------------

/// Three connections trickle one byte per 250 ms into a frame (two to the tracker, one with
/// the length itself trickled, one to the TCP peer): meanwhile a `get` over TCP is served
/// promptly, and the service closes each stalled connection.
#[test]
fn a_tcp_get_is_not_held_up_by_stalled_frames_and_they_are_closed() {
    let s = Services::start();
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
    let out = s.dir().join("out-slow");
    let took = s.get_identical("tcp-seeder", BIG, "tcp", &out);
    assert!(
        took < FRAME_TIMEOUT / 2,
        "a stalled frame held up a get: {took:?}"
    );
    s.note(format!(
        "3 stalled frames: while 3 connections trickle one byte per 250 ms into a frame, a \
         get over tcp (tracker and peer) took {:.2} s",
        took.as_secs_f64()
    ));
    for (what, t) in slow {
        let closed = t.join().unwrap();
        let closed = closed.unwrap_or_else(|| panic!("{what}: the stalled connection stayed open"));
        s.note(format!(
            "3 stalled frame ({what}): connection closed by the service after {:.1} s",
            closed.as_secs_f64()
        ));
    }
    s.assert_unharmed();
}

/// Length prefixes of 0, u32::MAX, one above the limit and 1 GiB, truncated headers and
/// frames, and unframed garbage, at the tracker and the TCP peer: the connection is closed
/// (and nothing allocated for the claimed length: see the memory bound).
#[test]
fn bad_length_prefixes_and_truncated_frames_close_the_tcp_connection() {
    let s = Services::start();
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
    }
    s.note(
        "3 tcp framing: length 0, u32::MAX, limit+1 and 1 GiB headers -> connection closed at \
         once, nothing allocated; truncated header/frame then close, 4000 garbage bytes -> \
         connection closed (tracker and tcp peer)",
    );
    s.assert_unharmed();
}

/// 50 well-delimited frames of random bytes, then a probe, at the tracker and the TCP peer:
/// the garbage is dropped, the connection kept and the probe answered.
#[test]
fn well_delimited_garbage_frames_are_dropped_and_the_tcp_connection_is_kept() {
    let s = Services::start();
    let mut rng = SmallRng::seed_from_u64(3);
    for (target, probe, what) in [
        (s.tracker_addr, list_peers(0), "tracker/tcp"),
        (s.tcp_addr, index_request(0), "tcp peer"),
    ] {
        let mut c = tcp_from(6, target);
        for _ in 0..50 {
            let len = rng.gen_range(1..3000);
            let mut b = vec![0u8; len];
            rng.fill_bytes(&mut b);
            c.write_all(&frame(&b)).unwrap();
        }
        c.write_all(&frame(&probe.encode())).unwrap();
        let reply = decode_reply(&read_frame(&mut c).expect("answer after garbage frames"));
        assert!(
            matches!(reply, Message::PeerList { .. } | Message::IndexPage { .. }),
            "{what}: {reply:?}"
        );
    }
    s.note(
        "3 tcp framing: 50 well-delimited garbage frames -> dropped, connection kept and \
         answered (tracker and tcp peer)",
    );
    s.assert_unharmed();
}

/// 16 connections each to the tracker and the TCP peer send 400 maximum-size frames with a
/// correct header and a wrong checksum, as fast as the services take them: dropped silently,
/// and the services stay below the memory bound.
#[test]
fn maximum_size_frame_flood_stays_within_the_memory_bound() {
    let (connections, frames) = (16, 400);
    let s = Services::start();
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
    s.note(format!(
        "3 big-frame flood: {connections} connections x {frames} frames of {TCP_MAX_FRAME} B \
         (valid header, wrong checksum) to the tracker and to the tcp peer, {mib:.0} MiB in \
         {:.1} s; {completed} of {} senders got everything accepted; dropped silently",
        started.elapsed().as_secs_f64(),
        2 * connections
    ));
    s.assert_unharmed();
}

/// 300 connections that send nothing to `target`; `real` (a get) must still get through, and
/// at most `--max-connections` of them may stay open.
fn idle_connection_flood(
    s: &Services,
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
    s.note(format!(
        "3 idle flood on {what}: 300 silent connections (cap {MAX_CONNECTIONS}): the real get \
         over tcp took {:.2} s; {} idle connections closed by eviction, {open} left open",
        took.as_secs_f64(),
        300 - open
    ));
}

#[test]
fn idle_connection_flood_on_the_tcp_peer_is_evicted_and_a_get_still_succeeds() {
    let s = Services::start();
    let out = s.dir().join("out-idle");
    idle_connection_flood(&s, s.tcp_addr, "tcp peer", || {
        s.get_identical("tcp-seeder", BIG, "tcp", &out)
    });
    s.assert_unharmed();
}

#[test]
fn idle_connection_flood_on_the_tracker_is_evicted_and_a_get_still_succeeds() {
    let s = Services::start();
    let out = s.dir().join("out-idle-tracker");
    idle_connection_flood(&s, s.tracker_addr, "tracker/tcp", || {
        s.get_identical("udp-seeder", SMALL, "tcp", &out)
    });
    s.assert_unharmed();
}

// ---------------------------------------------------------------------------------------------
// 4. Ids, names and paths
// ---------------------------------------------------------------------------------------------

/// What an answer must look like.
type Expect = fn(&Message) -> bool;

/// Requests for file ids, offsets and pages that do not exist, with the answer each must get.
fn bad_id_cases(s: &Services) -> Vec<(&'static str, Message, Expect)> {
    let small = s.file_id(SMALL);
    let size = fs::metadata(s.share.join(SMALL)).unwrap().len();
    let hash = ContentHash::of(&fs::read(s.share.join(SMALL)).unwrap());
    let mut n = 0u64;
    let mut transfer = || {
        n += 1;
        TransferId(0x1D5_0000 + n)
    };
    vec![
        (
            "Request file 0",
            Message::Request {
                transfer: transfer(),
                file: FileId(0),
                offset: 0,
                end: None,
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
                end: None,
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
                end: None,
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
                end: None,
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
                end: None,
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
    ]
}

const BAD_IDS_NOTE: &str = "Request for file 0 / u32::MAX / 4242 -> Abort NoSuchFile; offset \
    past the end / u64::MAX -> Abort BadRequest; PieceRequest for missing files or a wrong hash \
    -> Error; first = u32::MAX -> empty PieceHashes; missing index pages -> Error";

#[test]
fn missing_files_offsets_and_pages_are_refused_by_the_udp_peer() {
    let s = Services::start();
    let cases = bad_id_cases(&s);
    let sock = udp_from(8);
    for (what, msg, ok) in &cases {
        let reply = ask_udp(&sock, s.udp_addr, msg);
        assert!(
            reply.as_ref().is_some_and(ok),
            "udp peer, {what}: unexpected answer {reply:?}"
        );
    }
    s.note(format!(
        "4 bad ids ({} cases, udp peer): {BAD_IDS_NOTE}",
        cases.len()
    ));
    s.assert_unharmed();
}

#[test]
fn missing_files_offsets_and_pages_are_refused_by_the_tcp_peer() {
    let s = Services::start();
    let cases = bad_id_cases(&s);
    let mut c = tcp_from(8, s.tcp_addr);
    for (what, msg, ok) in &cases {
        c.write_all(&frame(&msg.encode())).unwrap();
        let reply = decode_reply(&read_frame(&mut c).expect("an answer"));
        assert!(ok(&reply), "tcp peer, {what}: unexpected answer {reply:?}");
    }
    s.note(format!(
        "4 bad ids ({} cases, tcp peer): {BAD_IDS_NOTE}",
        cases.len()
    ));
    s.assert_unharmed();
}

/// Names that break the rules: refused, or dropped when over the wire limit; path-like names,
/// if ever accepted, are listed at the sender's own IP; nothing invalid is ever listed.
#[test]
fn invalid_names_are_refused_and_names_over_the_wire_limit_dropped() {
    let s = Services::start();
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
    // Path-like names: refused since 3f5316d (see `path_like_and_invisible_names_are_refused`).
    // Whatever the outcome here, an accepted one is listed at the sender's own IP, never
    // anything claimed.
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
    s.note(format!(
        "4 bad names: empty, space, NUL, tab, newline, ESC -> RegisterReply Refused (invalid \
         name); 65 and 1000 bytes -> dropped silently (wire limit, no reply), never listed; \
         path-like names refused: {refused:?}, ACCEPTED: {accepted:?} (listed at the \
         sender's IP)"
    ));
    s.assert_unharmed();
}

/// Downloads of `..evil` and `sub/dir/x.txt` land inside `--out` as their last component
/// only, and nothing else is created anywhere.
#[test]
fn odd_shared_names_download_inside_out_as_their_last_component() {
    let s = Services::start();
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
    s.note(
        "4 download names: `..evil` saved as out/..evil, `sub/dir/x.txt` as out/x.txt (udp \
         and tcp); nothing else created anywhere; symlinks to a file and a folder outside the \
         share are not listed by `p2p ls`",
    );
    s.assert_unharmed();
}

/// A malicious peer announces paths that climb out of `--out`: each is saved as its last
/// component inside `--out` or refused as an unsafe file name; nothing lands outside.
#[test]
fn paths_announced_by_a_malicious_peer_never_escape_out() {
    let s = Services::start();
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
            let err = common::stderr(&o);
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
    s.note(format!(
        "4 malicious sender paths: saved as the last component inside --out only: {}; refused \
         with `unsafe file name`: {}; nothing created outside --out",
        saved.join(", "),
        refused.join(", ")
    ));
    s.assert_unharmed();
}

// ---------------------------------------------------------------------------------------------
// 5. Name hijack
// ---------------------------------------------------------------------------------------------

/// Another address claims a live peer's name (Register or Heartbeat from another IP, another
/// port or another transport): refused; an Unregister from another IP removes nothing.
#[test]
fn a_live_peers_name_cannot_be_taken_or_unregistered_from_another_address() {
    let s = Services::start();
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
            }) => assert!(
                // The seeders sign their registrations: their names are bound to their key,
                // which refuses the name to anyone else first.
                reason.contains("belongs to another peer") || reason.contains("already used"),
                "{what}: {reason}"
            ),
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
    s.note(
        "5 name hijack: Register/Heartbeat of a live name from another IP, another port or \
         another transport -> RegisterReply Refused (`belongs to another peer`: the name is \
         bound to the seeder's identity key); \
         Unregister from another IP -> answered, nothing removed; both real peers listed at \
         their own addresses",
    );
    s.assert_unharmed();
}

// ---------------------------------------------------------------------------------------------
// 6. Floods
// ---------------------------------------------------------------------------------------------

/// The most answers a flood of `elapsed` seconds may get from one IP: the burst, the refill,
/// and a little slack.
fn rate_bound(elapsed: f64) -> usize {
    (BURST + RATE * elapsed).ceil() as usize + 5
}

#[test]
fn index_request_flood_over_udp_is_rate_limited() {
    let s = Services::start();
    let sock = udp_from(30);
    let started = Instant::now();
    let req = index_request(0).encode();
    for _ in 0..5000 {
        let _ = sock.send_to(&req, s.udp_addr);
    }
    let replies = drain_udp(&sock, QUIET, Duration::from_secs(10)).len();
    let elapsed = started.elapsed().as_secs_f64();
    let bound = rate_bound(elapsed);
    assert!(
        (1..=bound).contains(&replies),
        "udp peer answered {replies} of 5000 index requests in {elapsed:.2} s (bound {bound})"
    );
    s.note(format!(
        "6 IndexRequest flood (udp): 5000 sent, {replies} answered in {elapsed:.2} s (burst \
         {BURST} + {RATE}/s allows {bound}); the rest dropped (rate-limited)"
    ));
    s.assert_unharmed();
}

#[test]
fn index_request_flood_over_one_tcp_connection_is_rate_limited() {
    let s = Services::start();
    let req = index_request(0).encode();
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
    let bound = rate_bound(elapsed);
    assert!(
        (1..=bound).contains(&replies),
        "tcp peer answered {replies} of 5000 index requests in {elapsed:.2} s (bound {bound})"
    );
    s.note(format!(
        "6 IndexRequest flood (tcp, one connection): 5000 sent, {replies} answered in \
         {elapsed:.2} s (bound {bound}); the rest dropped (rate-limited)"
    ));
    s.assert_unharmed();
}

#[test]
fn list_peers_flood_at_the_tracker_is_rate_limited() {
    let s = Services::start();
    let sock = udp_from(32);
    let started = Instant::now();
    let req = list_peers(0).encode();
    for _ in 0..5000 {
        let _ = sock.send_to(&req, s.tracker_addr);
    }
    let replies = drain_udp(&sock, QUIET, Duration::from_secs(10)).len();
    let elapsed = started.elapsed().as_secs_f64();
    let bound = rate_bound(elapsed);
    assert!(
        (1..=bound).contains(&replies),
        "tracker answered {replies} of 5000 list requests in {elapsed:.2} s (bound {bound})"
    );
    s.note(format!(
        "6 ListPeers flood (tracker/udp): 5000 sent, {replies} answered in {elapsed:.2} s \
         (bound {bound})"
    ));
    s.assert_unharmed();
}

/// Registrations with distinct names from 20 addresses (each has its own burst, so well over
/// `--max-peers` get through the rate limit): the table stops at its cap, refusing the rest
/// as full, and the real peers stay listed.
#[test]
fn register_flood_is_capped_at_max_peers_and_real_peers_stay_listed() {
    let s = Services::start();
    let socks: Vec<UdpSocket> = (100..120).map(udp_from).collect();
    // Each address proves itself first (a flood from forged addresses would stop there).
    let probe = register("flood-probe", 999, TransportKind::Udp);
    let tokens: Vec<Token> = socks
        .iter()
        .map(|sock| prove(sock, s.tracker_addr, &probe))
        .collect();
    for i in 0..5000usize {
        let (sock, token) = (&socks[i % socks.len()], tokens[i % socks.len()]);
        let msg = register(&format!("flood-{i}"), 1000 + i as u16, TransportKind::Udp);
        let _ = sock.send_to(&msg.with_token(Some(token)).encode(), s.tracker_addr);
    }
    let (mut accepted, mut full, mut too_many, mut other) = (0, 0, 0, 0);
    let too_many_reason = p2p_proto::tracker::RegisterError::TooManyNew.to_string();
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
                Message::RegisterReply {
                    outcome: RegisterOutcome::Refused { reason },
                    ..
                } if reason == too_many_reason => too_many += 1,
                _ => other += 1,
            }
        }
    }
    let listed = s.assert_real_peers_listed("udp");
    assert!(
        listed <= MAX_PEERS,
        "{listed} peers listed with --max-peers {MAX_PEERS}"
    );
    // All 20 addresses are in one /24: new names from it stop at the per-network burst,
    // before the table (100) is full.
    let burst = p2p_proto::tracker::NEW_NAMES.burst as usize;
    assert!(
        accepted <= burst && too_many > 0 && other == 0,
        "accepted {accepted}, full {full}, too many {too_many}, other {other}"
    );
    s.note(format!(
        "6 Register flood: 5000 distinct names from 20 IPs of one /24: {accepted} accepted, \
         {too_many} refused (too many new names from the network), {full} refused (`tracker is \
         full`), the rest rate-limited; {listed} peers listed (cap {MAX_PEERS}); real peers \
         still listed"
    ));
    s.assert_unharmed();
}

// ---------------------------------------------------------------------------------------------
// 7. Transfer level
// ---------------------------------------------------------------------------------------------

/// Transfer messages for transfers that do not exist: Ack for chunks never sent, Fin with a
/// wrong hash, Data, Abort, FinAck, Accept; 200 of each kind.
fn stray_transfer_messages() -> Vec<Message> {
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
    stray
}

#[test]
fn stray_transfer_messages_over_udp_are_dropped_except_fin_answered_by_fin_ack() {
    let s = Services::start();
    let stray = stray_transfer_messages();
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
    s.note(format!(
        "7 stray transfer messages ({} over udp: Ack for chunks never sent, Fin with a wrong \
         hash, Data, Abort, FinAck, Accept for unknown transfers): dropped, except a Fin, \
         answered by one stateless FinAck ({} replies)",
        stray.len(),
        replies.len()
    ));
    s.assert_unharmed();
}

#[test]
fn stray_transfer_messages_over_tcp_are_dropped_except_fin_answered_by_fin_ack() {
    let s = Services::start();
    let stray = stray_transfer_messages();
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
    s.note(format!(
        "7 stray transfer messages ({} over tcp): dropped, except a Fin, answered by one \
         stateless FinAck ({tcp_replies} replies)",
        stray.len()
    ));
    s.assert_unharmed();
}

/// A real transfer started from a raw socket, then fed acknowledgements for chunks never sent
/// (cumulative 2^40 and u64::MAX, SACK ranges past the end) and an early FinAck: the sender
/// ignores them (no Fin, no chunk past the window) and times the silent receiver out.
#[test]
fn bogus_acks_do_not_advance_a_real_transfer_and_the_sender_times_out() {
    let s = Services::start();
    let (peer, file) = (s.udp_addr, s.file_id(BIG));
    let sock = udp_from(41);
    let transfer = TransferId(0xB0_6005);
    let request = Message::Request {
        transfer,
        file,
        offset: 0,
        end: None,
    };
    let token = prove(&sock, peer, &request);
    sock.send_to(&request.with_token(Some(token)).encode(), peer)
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
    s.note(format!(
        "7 bogus Ack on a real transfer: Acks with cumulative 2^40 / u64::MAX and SACK ranges \
         past the end, and an early FinAck -> ignored: only chunks 0..={max_seq} were \
         (re)sent ({data} Data), no Fin, and the sender sent Abort(Timeout) after {:.1} s \
         (--idle-timeout {PEER_IDLE:?})",
        took.as_secs_f64()
    ));
    s.assert_unharmed();
}

/// 20 concurrent Requests from one IP: at most 8 (the per-IP upload cap) are accepted at
/// once, every other waits in line (`Queued`), each answered once.
#[test]
fn uploads_to_one_ip_are_capped_and_the_rest_wait_in_line() {
    let s = Services::start();
    let sock = udp_from(42);
    let file = s.file_id(SMALL);
    let request = |t: u64| Message::Request {
        transfer: TransferId(0x5107_0000 + t),
        file,
        offset: 0,
        end: None,
    };
    // Without proof of the address (what a forged source gets): a Retry each, no larger than
    // 3x the Request, no Accept, no chunk, no slot.
    let mut sent = 0;
    for t in 0..20u64 {
        let bytes = request(t).encode();
        sent += bytes.len();
        sock.send_to(&bytes, s.udp_addr).unwrap();
    }
    let unproven = drain_udp(&sock, QUIET, Duration::from_secs(3));
    let token = match unproven.first() {
        Some(Message::RetryTransfer { token, .. }) => *token,
        other => panic!("expected RetryTransfer, got {other:?}"),
    };
    let got: usize = unproven.iter().map(|m| m.encode().len()).sum();
    assert!(
        unproven
            .iter()
            .all(|m| matches!(m, Message::RetryTransfer { .. }))
            && got <= 3 * sent,
        "{got} bytes for {sent}: {unproven:?}"
    );
    for t in 0..20u64 {
        let m = request(t).with_token(Some(token));
        sock.send_to(&m.encode(), s.udp_addr).unwrap();
    }
    let replies = drain_udp(&sock, QUIET, Duration::from_secs(3));
    // The first answer to each transfer: an Accept (a slot) or Queued (in line). Later ones
    // (those in line admitted once an upload nobody acknowledges loses its slot) come after.
    let mut first: std::collections::BTreeMap<TransferId, &Message> = Default::default();
    for m in &replies {
        if let Message::Accept { transfer, .. } | Message::Queued { transfer, .. } = m {
            first.entry(*transfer).or_insert(m);
        }
    }
    let accepted = first
        .values()
        .filter(|m| matches!(m, Message::Accept { .. }))
        .count();
    let queued = first
        .values()
        .filter(|m| matches!(m, Message::Queued { .. }))
        .count();
    assert!(accepted <= 8, "{accepted} uploads to one IP at once");
    assert_eq!(accepted + queued, 20, "{replies:?}");
    s.note(format!(
        "7 upload slots: 20 Requests from one IP without a token -> 20 RetryTransfer ({got} \
         bytes for {sent}), nothing else; with the token -> {accepted} accepted (per-IP cap \
         8), {queued} in line (Queued)"
    ));
    s.assert_unharmed();
}

// ---------------------------------------------------------------------------------------------
// Findings of this suite, kept as regression tests: the first three were fixed in 3f5316d,
// the last in 4885cc7.
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

/// A peer's abort reason (free text on the wire) reaches `get`'s stderr escaped: no escape
/// sequence, bell or bidi override gets to the terminal (issue 18).
#[test]
fn abort_reasons_from_a_peer_are_not_printed_raw_by_get() {
    let dir = tempfile::tempdir().unwrap();
    let (_t, tr) = common::tracker(dir.path(), &[]);
    let tracker: SocketAddr = tr.parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let fake = fake_peer(
        tracker,
        4,
        "aborter",
        vec![(ABORTING_FILE, "x.txt".into(), b"x".to_vec())],
        stop.clone(),
    );
    let out = dir.path().join("out");
    let got = run(
        dir.path(),
        &[
            "get",
            "aborter",
            "666",
            "--tracker",
            &tr,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    stop.store(true, Ordering::Relaxed);
    fake.join().unwrap();
    let err = String::from_utf8_lossy(&got.stderr).to_string();
    assert!(!got.status.success(), "{err}");
    assert!(err.contains("aborted by the other side"), "{err}");
    assert!(
        !err.contains(['\x1b', '\x07', '\u{202e}']),
        "raw control characters on stderr: {err:?}"
    );
}

/// A tracker whose stdout and stderr nobody reads (a pipe left full) keeps answering: 2,000
/// refused registrations, each an event line, fill the pipe many times over, and every one is
/// still answered, as is a listing after them (issue 18: it stopped after 700).
#[test]
fn a_tracker_whose_output_nobody_reads_keeps_answering() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(common::bin())
        .args([
            "tracker",
            "--listen",
            "127.0.0.1:0",
            "--rate-limit",
            "100000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the first line (the address), then never again.
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let addr: SocketAddr = first
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {first:?}"));
    let holder = udp_from(21);
    assert!(matches!(
        try_register(&holder, addr, "alice"),
        Some(RegisterOutcome::Accepted { .. })
    ));
    let thief = udp_from(22);
    for i in 0..2000 {
        let outcome = try_register(&thief, addr, "alice");
        assert!(
            matches!(outcome, Some(RegisterOutcome::Refused { .. })),
            "refusal {i}: {outcome:?}"
        );
    }
    let listed = ask_udp(&thief, addr, &list_peers(0));
    assert!(
        matches!(listed, Some(Message::PeerList { .. })),
        "{listed:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
    drop(out);
}

/// A raw socket to forge source addresses with, the services under attack, and a victim: a
/// socket at `udp_from(n)` that asks for nothing (it only counts what it gets). `None`, once
/// it said that the test is skipped, without CAP_NET_RAW.
fn spoofing(n: u8) -> Option<(socket2::Socket, Services, UdpSocket)> {
    let Some(raw) = spoofer() else {
        eprintln!("SKIPPED: opening a raw socket needs CAP_NET_RAW (run as root)");
        return None;
    };
    let s = Services::start();
    Some((raw, s, udp_from(n)))
}

/// Sends each of `forged` (to, datagram) `rounds` times from `raw` as if from `victim`, and
/// collects what reaches the victim: the messages, their encoded bytes and the bytes forged,
/// in all. Asserts that the forged datagrams did arrive (10 answers at the victim at least:
/// a test that saw none would prove nothing), that every answer is one `allowed` accepts
/// (`allowed`: the kinds' names, for the failure message, and the test of a message) and
/// that nothing was amplified (at most 3 times the forged bytes came back).
fn forge_from(
    raw: &socket2::Socket,
    victim: &UdpSocket,
    forged: &[(SocketAddr, Vec<u8>)],
    rounds: usize,
    allowed: (&str, fn(&Message) -> bool),
) -> (Vec<Message>, usize, usize) {
    let victim_addr = victim.local_addr().unwrap();
    let mut sent = 0;
    for _ in 0..rounds {
        for (to, bytes) in forged {
            sent += bytes.len();
            send_spoofed(raw, victim_addr, *to, bytes);
        }
    }
    let got = drain_udp(victim, QUIET, Duration::from_secs(3));
    let got_bytes: usize = got.iter().map(|m| m.encode().len()).sum();
    assert!(
        got.len() >= 10,
        "only {} answers reached the victim",
        got.len()
    );
    let (kinds, is_allowed) = allowed;
    assert!(
        got.iter().all(is_allowed),
        "the victim got more than {kinds}: {got:?}"
    );
    assert!(
        got_bytes <= 3 * sent,
        "amplified: {got_bytes} bytes at the victim for {sent} forged"
    );
    (got, got_bytes, sent)
}

/// Forged `Initial`s (first requests sent padded to 420 bytes, answered at once) from a raw
/// socket at a victim's address: what reaches the victim is an `Answer` (the reply with a
/// token) or a `Retry`, each at most three times the forged datagram, over the tracker's
/// `Lookup` and `ListPeers` and a peer's first index page and an entry (its largest answer).
#[test]
fn forged_initials_are_answered_within_three_times_their_size() {
    let Some((raw, s, victim)) = spoofing(67) else {
        return;
    };
    let file = s.file_id(BIG);
    let forged = [
        (s.udp_addr, index_request(0)),
        (
            s.udp_addr,
            Message::EntryRequest {
                request: rid(90),
                file,
            },
        ),
        (s.tracker_addr, list_peers(0)),
        (
            s.tracker_addr,
            Message::Lookup {
                request: rid(91),
                name: "udp-seeder".into(),
            },
        ),
    ]
    .map(|(to, msg)| (to, msg.initial().encode()));
    let smallest = forged
        .iter()
        .map(|(_, b)| b.len())
        .min()
        .unwrap_or(usize::MAX);
    let answers = |m: &Message| matches!(m, Message::Answer { .. } | Message::Retry { .. });
    let (got, got_bytes, sent) =
        forge_from(&raw, &victim, &forged, 5, ("Answer or Retry", answers));
    let largest = got.iter().map(|m| m.encode().len()).max().unwrap_or(0);
    assert!(
        largest <= 3 * smallest,
        "one answer of {largest} bytes for a forged Initial of {smallest}"
    );
    s.assert_real_peers_listed("udp");
    s.note(format!(
        "forged Initials (raw socket): 20 Lookup/ListPeers/IndexRequest/EntryRequest from the \
         victim's address ({sent} bytes, {smallest} each at least) -> {} Answer/Retry at the \
         victim ({got_bytes} bytes, {largest} the largest: {:.2}x)",
        got.len(),
        got_bytes as f64 / sent as f64
    ));
    s.assert_unharmed();
}

/// Forged source addresses, sent from a raw socket (as an off-path attacker can): a forged
/// `Request` and `IndexRequest` draw only a small `Retry` at the victim (never the window of
/// chunks or a listing: at most 3x what was sent); a forged `Unregister` of a live peer,
/// `Register` of a new name at the victim's address and `Heartbeat` for it change nothing at
/// the tracker.
#[test]
fn forged_source_addresses_get_nothing_but_a_small_retry() {
    // The victim: an address that asked for nothing (a socket only to count what it gets).
    let Some((raw, s, victim)) = spoofing(66) else {
        return;
    };
    let victim_addr = victim.local_addr().unwrap();
    let file = s.file_id(BIG);
    let forged = [
        (
            s.udp_addr,
            Message::Request {
                transfer: TransferId(0xF0_0001),
                file,
                offset: 0,
                end: None,
            },
        ),
        (s.udp_addr, index_request(0)),
        (s.tracker_addr, list_peers(0)),
        (
            s.tracker_addr,
            register("victim-name", victim_addr.port(), TransportKind::Udp),
        ),
    ]
    .map(|(to, msg)| (to, msg.encode()));
    // The forged datagrams did arrive: each answered with a Retry, sent to the victim.
    let retries = |m: &Message| matches!(m, Message::Retry { .. } | Message::RetryTransfer { .. });
    let (got, got_bytes, sent) = forge_from(&raw, &victim, &forged, 10, ("Retry", retries));
    // The real peer's name, forged from its own address: not removed, not moved.
    let seeder_ip = SocketAddr::new(s.udp_addr.ip(), 40_000);
    let bye = Message::Unregister {
        request: rid(77),
        name: "udp-seeder".into(),
    };
    let moved = Message::Heartbeat {
        request: rid(78),
        name: "udp-seeder".into(),
        port: victim_addr.port(),
        transport: TransportKind::Udp,
    };
    for msg in [&bye, &moved] {
        send_spoofed(&raw, seeder_ip, s.tracker_addr, &msg.encode());
    }
    let peers = s.peers("udp");
    assert!(
        !peers.iter().any(|p| p["name"] == "victim-name"),
        "a forged Register took a name: {peers:?}"
    );
    s.assert_real_peers_listed("udp");
    s.note(format!(
        "8 forged sources (raw socket): 40 Request/IndexRequest/ListPeers/Register from the \
         victim's address ({sent} bytes) -> {} Retry at the victim ({got_bytes} bytes), no \
         chunk, no listing, no name; a forged Unregister and Heartbeat of udp-seeder changed \
         nothing",
        got.len()
    ));
    s.assert_unharmed();
}
