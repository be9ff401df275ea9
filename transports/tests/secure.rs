//! Encrypted transfers between endpoints over real loopback sockets (UDP and TCP): the file
//! arrives byte for byte, and nothing either side sent carries any of its bytes in the
//! clear (a tap under each endpoint's transport sees every message, as anyone on the path
//! would); a peer proving another key than the one expected is refused, naming both; a
//! peer that requires sealed traffic does not serve a plaintext client.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use common::{messages, Seen, Tap};
use p2p_core::secure::{SecureError, SecureSettings};
use p2p_core::service::{spawn_endpoint, EndpointConfig, EndpointHandle, ServiceError};
use p2p_core::transport::SharedTransport;
use p2p_proto::identity::{fingerprint, Identity};
use p2p_proto::secure::{SecureConfig, SEALED_ONLY};
use p2p_proto::wire::{FileId, TransportKind};

fn identity(n: u8) -> Identity {
    Identity::from_secret([n; 32])
}

fn settings(n: u8, require_sealed: bool) -> SecureSettings {
    SecureSettings {
        require_sealed,
        config: SecureConfig {
            seed: Some([n; 32]),
            ..SecureConfig::default()
        },
        ..SecureSettings::new(identity(n))
    }
}

/// An endpoint on 127.0.0.1 over `kind`, its traffic recorded in `seen`.
async fn endpoint(
    kind: TransportKind,
    share: Option<&Path>,
    secure: Option<SecureSettings>,
    seen: &Seen,
) -> EndpointHandle {
    let inner = p2p_transports::bind(kind, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let tap: SharedTransport = Arc::new(Tap {
        inner,
        seen: seen.clone(),
    });
    let config = EndpointConfig {
        share: share.map(Path::to_path_buf),
        fsync: false,
        rpc_attempts: 3,
        secure,
        ..EndpointConfig::default()
    };
    spawn_endpoint(tap, kind, config).unwrap().0
}

/// Bytes no window of which repeats (a xorshift stream).
fn content(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A share folder holding one small file, `a.bin`, and an empty record for the taps of the
/// endpoints a test makes.
fn small_share() -> (tempfile::TempDir, Seen) {
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("a.bin"), content(1000)).unwrap();
    (share, Seen::default())
}

const WINDOW: usize = 32;

/// How many messages in `seen` carry some 32-byte run of `file`.
fn leaks(seen: &[Vec<u8>], file: &[u8]) -> usize {
    let windows: HashSet<&[u8]> = file.windows(WINDOW).collect();
    seen.iter()
        .filter(|m| m.windows(WINDOW).any(|w| windows.contains(w)))
        .count()
}

/// A seeder sharing one file and a leech, both over `kind`, with encryption or without;
/// the leech downloads the file. Returns the file and every message either side sent.
async fn transfer(kind: TransportKind, encrypted: bool) -> (Vec<u8>, Vec<Vec<u8>>) {
    let share = tempfile::tempdir().unwrap();
    let file = content(700_000);
    std::fs::write(share.path().join("private.bin"), &file).unwrap();
    let seen = Seen::default();
    let seeder = endpoint(
        kind,
        Some(share.path()),
        encrypted.then(|| settings(1, true)),
        &seen,
    )
    .await;
    let leech = endpoint(kind, None, encrypted.then(|| settings(2, false)), &seen).await;
    let from = seeder.local_addr();
    let (_, entries) = leech.index(from).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("private.bin");
    leech
        .download(from, entries[0].clone(), dest.clone(), None)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), file, "byte for byte");
    if encrypted {
        assert_eq!(leech.peer_key(from), Some(identity(1).public()));
    } else {
        assert_eq!(leech.peer_key(from), None);
    }
    leech.shutdown().await;
    seeder.shutdown().await;
    (file, messages(&seen))
}

async fn encrypted_transfer_leaks_nothing(kind: TransportKind) {
    // Without encryption the tap finds the file: the check below can fail.
    let (file, seen) = transfer(kind, false).await;
    assert!(leaks(&seen, &file) > 10, "{kind:?}: plaintext is visible");
    let (file, seen) = transfer(kind, true).await;
    // The file went through the tap, in sealed frames.
    let sealed: usize = seen
        .iter()
        .filter(|m| m.starts_with(b"P2N\x05"))
        .map(Vec::len)
        .sum();
    assert!(sealed > file.len(), "{kind:?}: {sealed} sealed bytes");
    // Large frames among them (loopback's 60 KiB chunks), which the receiver opens in
    // pooled buffers rather than in copies.
    assert!(
        seen.iter()
            .any(|m| m.starts_with(b"P2N\x05") && m.len() >= 32 * 1024),
        "{kind:?}: no large frame"
    );
    assert_eq!(leaks(&seen, &file), 0, "{kind:?}: file bytes in the clear");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_udp_transfer_is_exact_and_shows_nothing() {
    encrypted_transfer_leaks_nothing(TransportKind::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_tcp_transfer_is_exact_and_shows_nothing() {
    encrypted_transfer_leaks_nothing(TransportKind::Tcp).await;
}

/// A client that expects another key than the seeder's is refused with both fingerprints,
/// and gets nothing from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_another_key_is_refused() {
    let (share, seen) = small_share();
    let kind = TransportKind::Udp;
    let seeder = endpoint(kind, Some(share.path()), Some(settings(1, true)), &seen).await;
    let leech = endpoint(kind, None, Some(settings(2, false)), &seen).await;
    let listed = identity(9).public();
    let err = leech
        .connect(seeder.local_addr(), Some(listed))
        .await
        .unwrap_err();
    let ServiceError::Secure {
        error: SecureError::WrongKey { expected, got },
        ..
    } = &err
    else {
        panic!("not refused for its key: {err}");
    };
    assert_eq!((*expected, *got), (listed, identity(1).public()));
    let text = err.to_string();
    assert!(text.contains(&fingerprint(&listed)), "{text}");
    assert!(text.contains(&fingerprint(&identity(1).public())), "{text}");
    // With the right key, the same peer is reached.
    assert_eq!(
        leech
            .connect(seeder.local_addr(), Some(identity(1).public()))
            .await
            .unwrap(),
        Some(identity(1).public())
    );
}

/// A seeder that requires sealed traffic serves a plaintext client nothing: its requests
/// are refused with [`SEALED_ONLY`], in plaintext, so that it knows why (and a download's
/// transfer request is aborted with the same reason).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_only_peer_refuses_plaintext_requests() {
    let (share, seen) = small_share();
    let kind = TransportKind::Udp;
    let seeder = endpoint(kind, Some(share.path()), Some(settings(1, true)), &seen).await;
    let plain = endpoint(kind, None, None, &seen).await;
    let err = plain.index(seeder.local_addr()).await.unwrap_err();
    assert_eq!(err, ServiceError::Refused(SEALED_ONLY.into()));
    let err = plain
        .entry(seeder.local_addr(), FileId(1))
        .await
        .unwrap_err();
    assert_eq!(err, ServiceError::Refused(SEALED_ONLY.into()));
    // A client that seals (without requiring it) is served as before.
    let sealed = endpoint(kind, None, Some(settings(2, false)), &seen).await;
    let (_, entries) = sealed.index(seeder.local_addr()).await.unwrap();
    assert_eq!(entries.len(), 1);
}

/// A peer that accepts sealed sessions but does not seal its own requests
/// ([`SecureSettings::seal_requests`] off) still fetches from a plaintext peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_accepting_sealed_sessions_still_asks_plaintext_peers() {
    let (share, seen) = small_share();
    let kind = TransportKind::Udp;
    let plain = endpoint(kind, Some(share.path()), None, &seen).await;
    let accepting = SecureSettings {
        seal_requests: false,
        ..settings(3, false)
    };
    let client = endpoint(kind, None, Some(accepting), &seen).await;
    let (_, entries) = client.index(plain.local_addr()).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(client.peer_key(plain.local_addr()), None);
}

/// A seeder's session with a downloader evicted mid-transfer (its table full: here one
/// session, taken by another client's handshake) never lets the rest of the file go in
/// plaintext: the chunks are withheld, the download fails, and the tap under the seeder sees
/// no run of the file in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_session_does_not_fall_back_to_plaintext() {
    let share = tempfile::tempdir().unwrap();
    let file = content(4 << 20);
    std::fs::write(share.path().join("private.bin"), &file).unwrap();
    let seen = Seen::default();
    let kind = TransportKind::Udp;
    let spawn = |secure: SecureSettings, share: Option<&Path>, seen: &Seen| {
        let (share, seen) = (share.map(Path::to_path_buf), seen.clone());
        async move {
            let inner = p2p_transports::bind(kind, "127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            let tap: SharedTransport = Arc::new(Tap { inner, seen });
            let mut config = EndpointConfig {
                share,
                fsync: false,
                rpc_attempts: 3,
                // 4 MiB in about 8 s: time for a second client to come in mid-transfer.
                max_upload_rate: Some(512 << 10),
                secure: Some(secure),
                ..EndpointConfig::default()
            };
            config.receiver.idle_timeout = std::time::Duration::from_secs(2);
            spawn_endpoint(tap, kind, config).unwrap().0
        }
    };
    let mut seeder_settings = settings(1, false);
    seeder_settings.config.max_sessions = 1;
    let seeder = spawn(seeder_settings, Some(share.path()), &seen).await;
    let elsewhere = Seen::default();
    let leech = spawn(settings(2, false), None, &elsewhere).await;
    let other = spawn(settings(3, false), None, &elsewhere).await;
    let from = seeder.local_addr();
    let (_, entries) = leech.index(from).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let (tx, mut rx) = tokio::sync::watch::channel(Default::default());
    let download = {
        let (leech, entry, dest) = (leech.clone(), entries[0].clone(), out.path().join("p.bin"));
        tokio::spawn(async move { leech.download(from, entry, dest, Some(tx)).await })
    };
    // Some bytes arrived: the transfer runs. Another client's session takes the table's
    // only place.
    while rx.borrow_and_update().received == 0 {
        rx.changed().await.unwrap();
    }
    assert_eq!(
        other.connect(from, None).await.unwrap(),
        Some(identity(1).public())
    );
    let result = download.await.unwrap();
    assert!(result.is_err(), "the download cannot go on: {result:?}");
    assert_eq!(leaks(&messages(&seen), &file), 0, "file bytes in the clear");
}
