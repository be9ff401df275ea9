//! The tracker's relay over real UDP sockets on 127.0.0.1: a tracker from
//! [`run_tracker_with`], a peer B registered from a plain socket, an asker A that opens a
//! session from another (the `Retry` token dance done by hand), and the `Relayed` datagrams
//! between them, byte for byte, with a stranger's dropped and a flood cut to the session's
//! rate.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use p2p_core::service::{run_tracker_with, RelayConfig, RelayEvent, TrackerSettings};
use p2p_core::transport::Transport;
use p2p_proto::wire::{decode, Message, RegisterOutcome, RequestId, TransportKind};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

/// The simplest UDP transport: one message per datagram, no limits of its own beyond UDP's.
struct PlainUdp(UdpSocket);

#[async_trait]
impl Transport for PlainUdp {
    async fn send_to(&self, to: SocketAddr, msg: &[u8]) -> std::io::Result<()> {
        self.0.send_to(msg, to).await.map(drop)
    }

    async fn recv_from(&self) -> std::io::Result<(SocketAddr, Bytes)> {
        let mut buf = vec![0u8; 65_536];
        let (n, from) = self.0.recv_from(&mut buf).await?;
        buf.truncate(n);
        Ok((from, Bytes::from(buf)))
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn max_message_size(&self) -> usize {
        65_507
    }
}

/// Bytes per second one session may forward in these tests.
const SESSION_RATE: u64 = 1024 * 1024;

/// A tracker on 127.0.0.1 with the relay's sessions capped at [`SESSION_RATE`]; its address
/// and its relay events.
async fn tracker() -> (SocketAddr, mpsc::Receiver<RelayEvent>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let settings = TrackerSettings {
        relay: RelayConfig {
            session_rate: SESSION_RATE,
            ..RelayConfig::default()
        },
        key_seed: Some(23),
        ..TrackerSettings::default()
    };
    let (tx, rx) = mpsc::channel(64);
    let transports = vec![Arc::new(PlainUdp(socket)) as Arc<dyn Transport>];
    tokio::spawn(run_tracker_with(transports, settings, None, Some(tx)));
    (addr, rx)
}

/// The next message on `socket`, within 2 s.
async fn next(socket: &UdpSocket) -> (SocketAddr, Vec<u8>) {
    let mut buf = vec![0u8; 65_536];
    let (n, from) = timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
        .await
        .expect("an answer within 2 s")
        .unwrap();
    buf.truncate(n);
    (from, buf)
}

/// Sends `request` to `tracker` from `socket` and returns the answer, after the `Retry`
/// token round trip if the tracker asks for one.
async fn rpc(socket: &UdpSocket, tracker: SocketAddr, request: Message) -> Message {
    let mut msg = request.clone();
    for _ in 0..2 {
        socket.send_to(&msg.encode(), tracker).await.unwrap();
        match decode(&next(socket).await.1).unwrap() {
            Message::Retry { token, .. } => msg = request.with_token(Some(token)),
            answer => return answer,
        }
    }
    panic!("the tracker asked for a token twice")
}

/// B: a plain socket registered as `bob`.
async fn register_bob(tracker: SocketAddr) -> UdpSocket {
    let bob = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let register = Message::Register {
        request: RequestId(1),
        name: "bob".into(),
        port: bob.local_addr().unwrap().port(),
        transport: TransportKind::Udp,
    };
    let answer = rpc(&bob, tracker, register).await;
    assert!(
        matches!(
            answer,
            Message::RegisterReply {
                outcome: RegisterOutcome::Accepted { .. },
                ..
            }
        ),
        "{answer:?}"
    );
    bob
}

/// A: a plain socket with a relay session to `bob`.
async fn open_session(tracker: SocketAddr) -> (UdpSocket, u64) {
    let alice = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let open = Message::RelayOpen {
        request: RequestId(7),
        name: "bob".into(),
    };
    match rpc(&alice, tracker, open).await {
        Message::RelayOpened { request, session } => {
            assert_eq!(request, RequestId(7));
            (alice, session)
        }
        other => panic!("{other:?}"),
    }
}

fn relayed(session: u64, payload: &[u8]) -> Vec<u8> {
    Message::Relayed {
        session,
        payload: Bytes::copy_from_slice(payload),
    }
    .encode()
}

/// Both ways the other end gets the very bytes sent, from the tracker; a stranger's datagram
/// with the right session id goes nowhere; the log hears of the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_both_ways_byte_for_byte_and_drops_a_strangers_datagram() {
    let (tracker, mut events) = tracker().await;
    let bob = register_bob(tracker).await;
    let (alice, session) = open_session(tracker).await;
    match events.recv().await {
        Some(RelayEvent::Opened { from, name, to, .. }) => {
            assert_eq!(from, alice.local_addr().unwrap());
            assert_eq!(to, bob.local_addr().unwrap());
            assert_eq!(name, "bob");
        }
        other => panic!("{other:?}"),
    }

    let there = relayed(session, b"a datagram for bob");
    alice.send_to(&there, tracker).await.unwrap();
    assert_eq!(next(&bob).await, (tracker, there));
    let back = relayed(session, &[0xAB; 1200]);
    bob.send_to(&back, tracker).await.unwrap();
    assert_eq!(next(&alice).await, (tracker, back));

    // A stranger who learnt the session id: dropped. Alice's datagram sent after it is the
    // next one bob gets.
    let mallory = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    mallory
        .send_to(&relayed(session, b"from mallory"), tracker)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = relayed(session, b"alice again");
    alice.send_to(&after, tracker).await.unwrap();
    assert_eq!(next(&bob).await.1, after);
    // Nor does a made-up session get anywhere (and the tracker does not answer it).
    alice
        .send_to(&relayed(session ^ 1, b"guess"), tracker)
        .await
        .unwrap();
    let nothing = timeout(Duration::from_millis(200), async {
        let (mut b, mut a) = ([0u8; 2048], [0u8; 2048]);
        tokio::select! {
            r = bob.recv_from(&mut b) => r.map(|(n, _)| n),
            r = alice.recv_from(&mut a) => r.map(|(n, _)| n),
        }
    })
    .await;
    assert!(
        nothing.is_err(),
        "a datagram of an unknown session went somewhere"
    );
}

/// A flood at three times the session's rate is cut to about that rate (its bucket's burst
/// plus the rate over the time): dropped, not queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_cut_to_the_sessions_rate() {
    let (tracker, _events) = tracker().await;
    let bob = register_bob(tracker).await;
    let (alice, session) = open_session(tracker).await;

    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok(Ok((n, _))) =
            timeout(Duration::from_millis(500), bob.recv_from(&mut buf)).await
        {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    });

    let datagram = relayed(session, &[7u8; 8 * 1024]);
    let per_tick = 4; // 32 KiB every 10 ms: 3.2 MiB/s, about three times the cap
    let start = Instant::now();
    let mut sent = 0u64;
    for tick in 1..=100u32 {
        for _ in 0..per_tick {
            alice.send_to(&datagram, tracker).await.unwrap();
            sent += datagram.len() as u64;
        }
        tokio::time::sleep_until(start + Duration::from_millis(10) * tick).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    reader.await.unwrap();
    let got = received.load(Ordering::Relaxed) as f64;
    // The bucket holds 256 KiB at first (one largest message), then refills at the rate.
    let most = 256.0 * 1024.0 + SESSION_RATE as f64 * elapsed;
    eprintln!(
        "sent {sent} bytes in {elapsed:.2} s, forwarded {got} (the cap lets {most:.0} through)"
    );
    assert!(got <= most * 1.05, "{got} bytes forwarded, over the cap");
    assert!(
        got >= most * 0.5,
        "{got} bytes forwarded, far under the cap"
    );
    assert!(got < sent as f64 / 2.0, "the flood was not cut");
}
