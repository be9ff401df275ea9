//! A tracker run with sealed sessions (`p2p tracker --secure`) and clients that know its key
//! (`--tracker-key`), over real loopback sockets: every message between them, both ways, is
//! a sealed frame (nothing the tracker says can be read or rewritten on the path), and the
//! answers are right; a client pinned to an address sends it nothing in plaintext and takes
//! nothing from it in plaintext (a forged answer is dropped), and a key other than the pinned
//! one is refused, naming both.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Seen, Tap};
use p2p_core::secure::{SecureError, SecureSettings};
use p2p_core::service::{
    run_tracker_with, spawn_endpoint, EndpointConfig, EndpointHandle, ServiceError, TrackerSettings,
};
use p2p_core::transport::SharedTransport;
use p2p_proto::identity::Identity;
use p2p_proto::secure::{is_frame, SecureConfig};
use p2p_proto::wire::{Message, RequestId, TransportKind};

fn settings(n: u8) -> SecureSettings {
    SecureSettings {
        seal_requests: false,
        config: SecureConfig {
            seed: Some([n; 32]),
            ..SecureConfig::default()
        },
        ..SecureSettings::new(Identity::from_secret([n; 32]))
    }
}

async fn tapped(kind: TransportKind, seen: &Seen) -> SharedTransport {
    let inner = p2p_transports::bind(kind, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    Arc::new(Tap {
        inner,
        seen: seen.clone(),
    })
}

/// A tracker on 127.0.0.1 over `kind` with sealed sessions under key 9, its sends in `seen`.
async fn secure_tracker(kind: TransportKind, seen: &Seen) -> SocketAddr {
    let t = tapped(kind, seen).await;
    let addr = t.local_addr().unwrap();
    let settings = TrackerSettings {
        key_seed: Some(9),
        secure: Some(settings(9)),
        ..TrackerSettings::default()
    };
    tokio::spawn(run_tracker_with(vec![t], settings, None, None));
    addr
}

/// A client endpoint over `kind` with secure settings of key `n` pinned to `pins`.
async fn client(
    kind: TransportKind,
    n: u8,
    pins: &[(SocketAddr, u8)],
    seen: &Seen,
) -> EndpointHandle {
    let mut secure = settings(n);
    secure.pinned = pins
        .iter()
        .map(|&(a, k)| (a, Identity::from_secret([k; 32]).public()))
        .collect();
    let config = EndpointConfig {
        rpc_attempts: 3,
        // Registers signed with the key its sessions prove.
        identity: Some(Identity::from_secret([n; 32])),
        secure: Some(secure),
        ..EndpointConfig::default()
    };
    spawn_endpoint(tapped(kind, seen).await, kind, config)
        .unwrap()
        .0
}

async fn sealed_both_ways(kind: TransportKind) {
    let tracker_seen = Seen::default();
    let tracker = secure_tracker(kind, &tracker_seen).await;
    let (alice_seen, bob_seen) = (Seen::default(), Seen::default());
    let alice = client(kind, 1, &[(tracker, 9)], &alice_seen).await;
    alice
        .register(tracker, "alice", alice.local_addr().port(), kind, None)
        .await
        .expect("registered in a sealed session");
    let bob = client(kind, 2, &[(tracker, 9)], &bob_seen).await;
    let found = bob
        .lookup(tracker, "alice")
        .await
        .unwrap()
        .expect("alice is live");
    assert_eq!(found.info.addr, alice.local_addr());
    assert_eq!(found.key, Some(Identity::from_secret([1; 32]).public()));
    let listed = bob.list_peers(tracker).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        bob.peer_key(tracker),
        Some(Identity::from_secret([9; 32]).public())
    );
    for (who, seen) in [("alice", &alice_seen), ("bob", &bob_seen)] {
        let to_tracker: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(to, _)| *to == tracker)
            .cloned()
            .collect();
        assert!(!to_tracker.is_empty());
        assert!(
            to_tracker.iter().all(|(_, m)| is_frame(m)),
            "{who} sent the tracker a plaintext message"
        );
    }
    let answers = tracker_seen.lock().unwrap().clone();
    assert!(answers.len() >= 3, "answers to register, lookup, list");
    assert!(
        answers.iter().all(|(_, m)| is_frame(m)),
        "the tracker answered in plaintext"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_traffic_is_sealed_both_ways_udp() {
    sealed_both_ways(TransportKind::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_traffic_is_sealed_both_ways_tcp() {
    sealed_both_ways(TransportKind::Tcp).await;
}

/// An address pinned to a key that nobody there holds (a raw socket plays a tracker that
/// does not run sealed sessions, or someone between): the client sends it handshake
/// initiations only, never its request; a plaintext answer forged from there is dropped, and
/// the request fails as unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_address_gets_nothing_in_plaintext_and_is_not_believed_in_plaintext() {
    let fake = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let at = fake.local_addr().unwrap();
    let seen = Seen::default();
    let c = client(TransportKind::Udp, 3, &[(at, 9)], &seen).await;
    let asking = {
        let c = c.clone();
        tokio::spawn(async move { c.lookup(at, "alice").await })
    };
    let mut buf = vec![0; 2048];
    let mut got = 0;
    while got < 2 {
        let (n, from) = fake.recv_from(&mut buf).await.unwrap();
        assert!(
            is_frame(&buf[..n]),
            "a plaintext message to a pinned address"
        );
        got += 1;
        // A forged answer, in plaintext, for every request id the client may have used.
        for id in 0..64u64 {
            let forged = Message::Found {
                request: RequestId(id),
                peer: None,
                key: None,
            };
            fake.send_to(&forged.encode(), from).await.unwrap();
        }
    }
    let answer = tokio::time::timeout(Duration::from_secs(30), asking)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            answer,
            Err(ServiceError::NoAnswer(_)) | Err(ServiceError::Secure { .. })
        ),
        "a forged plaintext answer was believed: {answer:?}"
    );
    let sent = seen.lock().unwrap().clone();
    assert!(sent
        .iter()
        .filter(|(to, _)| *to == at)
        .all(|(_, m)| is_frame(m)));
    let stats = c.secure_stats().unwrap();
    assert!(
        stats.dropped_plaintext >= 128,
        "every forged answer dropped: {stats:?}"
    );
}

/// A tracker proving another key than the pinned one: the session is refused naming both
/// keys, and the client's request never reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracker_with_another_key_is_refused() {
    let tracker = secure_tracker(TransportKind::Udp, &Seen::default()).await;
    let seen = Seen::default();
    let c = client(TransportKind::Udp, 4, &[(tracker, 8)], &seen).await;
    let err = c
        .connect(tracker, Some(Identity::from_secret([8; 32]).public()))
        .await
        .unwrap_err();
    match err {
        ServiceError::Secure {
            error: SecureError::WrongKey { expected, got },
            ..
        } => {
            assert_eq!(expected, Identity::from_secret([8; 32]).public());
            assert_eq!(got, Identity::from_secret([9; 32]).public());
        }
        other => panic!("expected WrongKey, got {other:?}"),
    }
    let sent = seen.lock().unwrap().clone();
    assert!(
        sent.iter().all(|(_, m)| is_frame(m)),
        "a plaintext message to the tracker"
    );
}

/// A tracker restarted on the same address (here: a new tracker, with a new session table,
/// on the same socket once the old one is stopped) forgets its sessions and drops their
/// frames unanswered: once the old session has been silent for `PINNED_SILENCE`, the client's next
/// request makes a new one, and is answered (takes that long: about 20 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_tracker_gets_a_new_session() {
    let start = |t: SharedTransport| {
        let settings = TrackerSettings {
            key_seed: Some(9),
            secure: Some(settings(9)),
            ..TrackerSettings::default()
        };
        tokio::spawn(run_tracker_with(vec![t], settings, None, None))
    };
    let first = tapped(TransportKind::Udp, &Seen::default()).await;
    let addr = first.local_addr().unwrap();
    let running = start(first.clone());
    let c = client(TransportKind::Udp, 5, &[(addr, 9)], &Seen::default()).await;
    assert_eq!(
        c.lookup(addr, "nobody").await.unwrap().map(|f| f.info),
        None
    );
    // Stopped: its receiving tasks end with it (a JoinSet's tasks are aborted when it is
    // dropped), so only the new tracker reads the socket.
    running.abort();
    let _ = running.await;
    let _restarted = start(first);
    // The old session's frames go unanswered until it counts as silent; then a new one.
    let mut answered = false;
    for _ in 0..40 {
        if c.lookup(addr, "nobody").await.is_ok() {
            answered = true;
            break;
        }
    }
    assert!(answered, "no answer from the restarted tracker");
}
