//! Endpoints over real loopback sockets, for what only real threads show.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use p2p_core::service::endpoint::partial_path;
use p2p_core::service::{spawn_endpoint, EndpointConfig, EndpointHandle};
use p2p_core::wire::{IndexEntry, TransportKind};

async fn endpoint(share: Option<&Path>) -> EndpointHandle {
    let transport = p2p_transports::bind(TransportKind::Udp, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let config = EndpointConfig {
        share: share.map(Path::to_path_buf),
        fsync: false,
        ..EndpointConfig::default()
    };
    spawn_endpoint(transport, TransportKind::Udp, config)
        .unwrap()
        .0
}

fn entry(entries: &[IndexEntry], path: &str) -> IndexEntry {
    entries.iter().find(|e| e.path == path).unwrap().clone()
}

/// Finishing a download (sync, rename; a 1 GiB fsync takes seconds) happens off the I/O
/// task: meanwhile the endpoint goes on with other transfers, and the destination stays
/// taken until the finish is done.
///
/// The destination is a FIFO: the finishing job finds a name in the way and reads it to
/// compare contents, which blocks until the test writes to it; the test's own open of the
/// FIFO for writing returns exactly when that job is blocked in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_being_finished_does_not_hold_up_the_endpoint() {
    let share = tempfile::tempdir().unwrap();
    let a: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let b: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(share.path().join("a.bin"), &a).unwrap();
    std::fs::write(share.path().join("b.bin"), &b).unwrap();
    let seeder = endpoint(Some(share.path())).await;
    let leech = endpoint(None).await;
    let from = seeder.local_addr();
    let (_, entries) = leech.index(from).await.unwrap();

    let out = tempfile::tempdir().unwrap();
    let dest_a = out.path().join("a.bin");
    let made = std::process::Command::new("mkfifo")
        .arg(&dest_a)
        .status()
        .expect("mkfifo (coreutils) runs");
    assert!(made.success());
    let first = {
        let (leech, e, dest) = (leech.clone(), entry(&entries, "a.bin"), dest_a.clone());
        tokio::spawn(async move { leech.download(from, e, dest, None).await })
    };
    let fifo = {
        let dest = dest_a.clone();
        tokio::task::spawn_blocking(move || std::fs::OpenOptions::new().write(true).open(dest))
            .await
            .unwrap()
            .unwrap()
    };

    // The finishing job is blocked now. Another download goes through all the same...
    let dest_b = out.path().join("b.bin");
    let other = leech.download(from, entry(&entries, "b.bin"), dest_b.clone(), None);
    let report = tokio::time::timeout(Duration::from_secs(20), other)
        .await
        .expect("the endpoint is held up by a download being finished")
        .unwrap();
    assert_eq!(report.size, b.len() as u64);
    assert!(std::fs::read(&dest_b).unwrap() == b);
    // ...while the destination being finished is still taken.
    let again = leech
        .download(from, entry(&entries, "a.bin"), dest_a.clone(), None)
        .await
        .unwrap_err();
    assert!(
        again.to_string().contains("already being downloaded"),
        "{again}"
    );
    assert!(!first.is_finished());

    // Other content in the way: the download says so and leaves nothing to resume.
    let mut fifo = fifo;
    fifo.write_all(b"something else").unwrap();
    drop(fifo);
    let err = first.await.unwrap().unwrap_err();
    assert!(
        err.to_string()
            .contains("already exists with other content"),
        "{err}"
    );
    assert!(!partial_path(&dest_a).exists());
    // Once finished, the destination is free again.
    std::fs::remove_file(&dest_a).unwrap();
    let report = leech
        .download(from, entry(&entries, "a.bin"), dest_a.clone(), None)
        .await
        .unwrap();
    assert_eq!(report.size, a.len() as u64);
    assert!(std::fs::read(&dest_a).unwrap() == a);
}
