//! Endpoints over real loopback sockets, for what only real threads show.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use p2p_core::service::endpoint::partial_path;
use p2p_core::service::lock::LockError;
use p2p_core::service::{
    spawn_endpoint, DownloadReport, EndpointConfig, EndpointHandle, ServiceError,
};
use p2p_proto::wire::{IndexEntry, TransportKind};

async fn endpoint(share: Option<&Path>) -> (EndpointHandle, tokio::task::JoinHandle<()>) {
    endpoint_capped(share, None).await
}

async fn endpoint_capped(
    share: Option<&Path>,
    max_upload_rate: Option<u64>,
) -> (EndpointHandle, tokio::task::JoinHandle<()>) {
    let transport = p2p_transports::bind(TransportKind::Udp, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let config = EndpointConfig {
        share: share.map(Path::to_path_buf),
        fsync: false,
        max_upload_rate,
        ..EndpointConfig::default()
    };
    spawn_endpoint(transport, TransportKind::Udp, config).unwrap()
}

fn entry(entries: &[IndexEntry], path: &str) -> IndexEntry {
    entries.iter().find(|e| e.path == path).unwrap().clone()
}

/// A seeder sharing `a.bin` and `b.bin`, and a leech whose download of `a.bin` is being
/// finished and blocked there: once the download is under way (its destination claimed; the
/// seeder's upload rate is capped so that the rest takes a while), a FIFO appears at its
/// destination, so the finishing job finds a name in the way and reads it to compare
/// contents, which blocks until the test writes to it. The test's own open of the FIFO for
/// writing returns exactly when that job is blocked in it.
struct Blocked {
    _share: tempfile::TempDir,
    out: tempfile::TempDir,
    seeder: EndpointHandle,
    leech: EndpointHandle,
    leech_task: tokio::task::JoinHandle<()>,
    entries: Vec<IndexEntry>,
    a: Vec<u8>,
    b: Vec<u8>,
    dest_a: PathBuf,
    first: tokio::task::JoinHandle<Result<DownloadReport, ServiceError>>,
    fifo: std::fs::File,
}

async fn blocked_finish() -> Blocked {
    let share = tempfile::tempdir().unwrap();
    let a: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let b: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(share.path().join("a.bin"), &a).unwrap();
    std::fs::write(share.path().join("b.bin"), &b).unwrap();
    let (seeder, _) = endpoint_capped(Some(share.path()), Some(200_000)).await;
    let (leech, leech_task) = endpoint(None).await;
    let from = seeder.local_addr();
    let (_, entries) = leech.index(from).await.unwrap();

    let out = tempfile::tempdir().unwrap();
    let dest_a = out.path().join("a.bin");
    let (progress, mut seen) = tokio::sync::watch::channel(Default::default());
    let first = {
        let (leech, e, dest) = (leech.clone(), entry(&entries, "a.bin"), dest_a.clone());
        tokio::spawn(async move { leech.download(from, e, dest, Some(progress)).await })
    };
    // Its size published: the destination is claimed, and was free when claimed.
    seen.wait_for(|p: &p2p_core::service::Progress| p.total.is_some())
        .await
        .expect("the download runs");
    let made = std::process::Command::new("mkfifo")
        .arg(&dest_a)
        .status()
        .expect("mkfifo (coreutils) runs");
    assert!(made.success());
    let fifo = {
        let dest = dest_a.clone();
        tokio::task::spawn_blocking(move || std::fs::OpenOptions::new().write(true).open(dest))
            .await
            .unwrap()
            .unwrap()
    };
    Blocked {
        _share: share,
        out,
        seeder,
        leech,
        leech_task,
        entries,
        a,
        b,
        dest_a,
        first,
        fifo,
    }
}

/// Writes other content into the FIFO: the blocked download then reports the name in the way
/// and leaves nothing to resume.
async fn unblock(t: &mut Blocked) -> ServiceError {
    t.fifo.write_all(b"something else").unwrap();
    t.fifo.flush().unwrap();
    let fifo = std::mem::replace(&mut t.fifo, tempfile::tempfile().unwrap());
    drop(fifo);
    let err = (&mut t.first).await.unwrap().unwrap_err();
    assert!(
        matches!(&err, ServiceError::DestinationDiffers(dest) if *dest == t.dest_a),
        "{err}"
    );
    assert!(!partial_path(&t.dest_a).exists());
    err
}

/// Finishing a download (sync, rename; a 1 GiB fsync takes seconds) happens off the I/O
/// task: meanwhile the endpoint goes on with other transfers, and the destination stays
/// taken until the finish is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_being_finished_does_not_hold_up_the_endpoint() {
    let mut t = blocked_finish().await;
    let from = t.seeder.local_addr();

    // The finishing job is blocked now. Another download goes through all the same...
    let dest_b = t.out.path().join("b.bin");
    let other = t
        .leech
        .download(from, entry(&t.entries, "b.bin"), dest_b.clone(), None);
    let report = tokio::time::timeout(Duration::from_secs(20), other)
        .await
        .expect("the endpoint is held up by a download being finished")
        .unwrap();
    assert_eq!(report.size, t.b.len() as u64);
    assert!(std::fs::read(&dest_b).unwrap() == t.b);
    // ...while the destination being finished is still taken.
    let again = t
        .leech
        .download(from, entry(&t.entries, "a.bin"), t.dest_a.clone(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&again, ServiceError::Locked(LockError::Held { dest, .. }) if *dest == t.dest_a),
        "{again}"
    );
    assert!(!t.first.is_finished());

    unblock(&mut t).await;
    // Once finished, the destination is free again.
    std::fs::remove_file(&t.dest_a).unwrap();
    let report = t
        .leech
        .download(from, entry(&t.entries, "a.bin"), t.dest_a.clone(), None)
        .await
        .unwrap();
    assert_eq!(report.size, t.a.len() as u64);
    assert!(std::fs::read(&t.dest_a).unwrap() == t.a);
}

/// An endpoint that shuts down waits for the download being finished: the process may exit
/// right after, and the file must be named (or the caller told why not) first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_download_being_finished() {
    let mut t = blocked_finish().await;
    let leech = t.leech.clone();
    let shutdown = tokio::spawn(async move { leech.shutdown().await });
    // The endpoint's task does not end while the job is blocked (a bound, not a sleep: the
    // task ending within it fails the test).
    let early = tokio::time::timeout(Duration::from_millis(500), &mut t.leech_task).await;
    assert!(
        early.is_err(),
        "the endpoint closed with a download being finished"
    );
    unblock(&mut t).await;
    shutdown.await.unwrap();
    (&mut t.leech_task).await.unwrap();
}

/// A sender played by hand over a raw socket: the leech's download completes on the last
/// chunk, before any FIN; and once its receiver is gone, the leech's endpoint still answers
/// that sender's late chunk with the ACK of every chunk, and its FIN with FIN-ACK, so that a
/// sender whose final ACK was lost ends cleanly too.
#[tokio::test]
async fn a_finished_download_answers_its_sender_after_the_receiver_is_gone() {
    use p2p_proto::wire::{decode, BoundedVec, ContentHash, FileId, Message, PIECE_SIZE};
    use tokio::net::UdpSocket;

    let file: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
    let hash = ContentHash::of(&file);
    let entry = IndexEntry {
        id: FileId(7),
        path: "f.bin".into(),
        size: file.len() as u64,
        hash,
    };
    let (chunk, chunks) = (1000usize, 5u64);
    let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (leech, _task) = endpoint(None).await;
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("f.bin");
    let download = {
        let (leech, entry, dest) = (leech.clone(), entry.clone(), dest.clone());
        let from = sender.local_addr().unwrap();
        tokio::spawn(async move { leech.download(from, entry, dest, None).await })
    };
    let mut buf = vec![0u8; 65536];
    let mut recv = async || -> (std::net::SocketAddr, Message) {
        let got = tokio::time::timeout(Duration::from_secs(10), sender.recv_from(&mut buf));
        let (n, from) = got
            .await
            .expect("no answer from the leech in 10 s")
            .unwrap();
        (from, decode(&buf[..n]).unwrap())
    };
    let piece_hashes = |request| Message::PieceHashes {
        request,
        piece_size: PIECE_SIZE,
        pieces: 1,
        first: 0,
        hashes: BoundedVec(vec![hash]),
    };
    // The piece table, then the request: accept it and send every chunk, no FIN.
    let (leech_addr, transfer) = loop {
        match recv().await {
            (from, Message::PieceRequest { request, .. }) => {
                sender
                    .send_to(&piece_hashes(request).encode(), from)
                    .await
                    .unwrap();
            }
            (from, Message::Request { transfer, .. }) => break (from, transfer),
            _ => {}
        }
    };
    let accept = Message::Accept {
        transfer,
        size: file.len() as u64,
        chunk_size: chunk as u32,
        hash,
    };
    sender.send_to(&accept.encode(), leech_addr).await.unwrap();
    let data = |seq: u64| Message::Data {
        transfer,
        seq,
        payload: file[seq as usize * chunk..][..chunk].to_vec().into(),
    };
    for seq in 0..chunks {
        sender
            .send_to(&data(seq).encode(), leech_addr)
            .await
            .unwrap();
    }
    let report = download.await.unwrap().expect("complete without a FIN");
    assert_eq!(std::fs::read(&dest).unwrap(), file);
    assert_eq!(report.received, file.len() as u64);

    // One more round trip through the leech's endpoint (a piece-table request, answered
    // here): the finished download has left its table of transfers since.
    let asked = {
        let (leech, entry) = (leech.clone(), entry.clone());
        let from = sender.local_addr().unwrap();
        tokio::spawn(async move { leech.piece_table(from, &entry).await })
    };
    loop {
        if let (from, Message::PieceRequest { request, .. }) = recv().await {
            sender
                .send_to(&piece_hashes(request).encode(), from)
                .await
                .unwrap();
            break;
        }
    }
    asked.await.unwrap().unwrap();

    // The last chunk again (as a tail probe would): the ACK of every chunk.
    sender
        .send_to(&data(chunks - 1).encode(), leech_addr)
        .await
        .unwrap();
    loop {
        match recv().await {
            (_, Message::Ack { cumulative, .. }) if cumulative == chunks => break,
            (_, Message::Ack { cumulative, .. }) if cumulative < chunks => {} // an earlier one
            (_, other) => panic!("expected the final ACK, got {other:?}"),
        }
    }
    let fin = Message::Fin {
        transfer,
        size: file.len() as u64,
        hash,
    };
    sender.send_to(&fin.encode(), leech_addr).await.unwrap();
    loop {
        match recv().await {
            (_, Message::FinAck { transfer: t }) if t == transfer => break,
            (_, Message::Ack { .. }) => {}
            (_, other) => panic!("expected FIN-ACK, got {other:?}"),
        }
    }
    leech.shutdown().await;
}

/// A lying seeder played over a raw socket: it answers every request it gets (opening a
/// padded `Initial`; its answers go plain) with what `answer` makes of it (the request, and
/// how many came before), until the test ends; counts the requests.
async fn liar(
    answer: impl Fn(p2p_proto::wire::Message, u32) -> Option<p2p_proto::wire::Message> + Send + 'static,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU32>,
) {
    use std::sync::atomic::{AtomicU32, Ordering};
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let count = std::sync::Arc::new(AtomicU32::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let msg = match p2p_proto::wire::decode(&buf[..n]) {
                // A first request comes padded (anti-amplification): the liar reads it.
                Ok(p2p_proto::wire::Message::Initial { body, pad }) => {
                    match p2p_proto::wire::Message::open_initial(&body, &pad) {
                        Ok((msg, _)) => msg,
                        Err(_) => continue,
                    }
                }
                Ok(msg) => msg,
                Err(_) => continue,
            };
            let k = seen.fetch_add(1, Ordering::SeqCst);
            if let Some(reply) = answer(msg, k) {
                let _ = sock.send_to(&reply.encode(), from).await;
            }
        }
    });
    (addr, count)
}

fn lying_entry(id: u32) -> p2p_proto::wire::IndexEntry {
    IndexEntry {
        id: p2p_proto::wire::FileId(id),
        path: format!("f{id}"),
        size: 1,
        hash: p2p_proto::wire::ContentHash::of(b"x"),
    }
}

/// An index claiming 2^32-1 pages is refused at its first page, and one whose page count
/// changes from page to page is a protocol error once the listing started over a few times
/// (an honest share may change between pages, once): a listing never grows without end
/// (issue 18).
#[tokio::test]
async fn a_lying_index_is_refused_before_it_grows() {
    use p2p_proto::wire::{BoundedVec, Message};
    use std::sync::atomic::Ordering;
    let (leech, _task) = endpoint(None).await;
    let page = |request, pages, id| Message::IndexPage {
        request,
        page: 0,
        pages,
        share: "lies".into(),
        entries: BoundedVec(vec![lying_entry(id)]),
    };
    let (endless, asked) = liar(move |m, k| match m {
        Message::IndexRequest { request, .. } => Some(page(request, u32::MAX, k)),
        _ => None,
    })
    .await;
    let err = leech.index(endless).await.unwrap_err();
    assert!(
        matches!(
            err,
            ServiceError::TooLarge {
                what: "index pages",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "one page asked for, not more"
    );
    let (shifty, _) = liar(move |m, k| match m {
        Message::IndexRequest { request, .. } => Some(page(request, 3 + k, k)),
        _ => None,
    })
    .await;
    let err = leech.index(shifty).await.unwrap_err();
    assert!(matches!(err, ServiceError::Protocol(_)), "{err}");
}

/// A listed size of 2^60 bytes is refused from the first page of its piece table (the number
/// of pieces follows from the size), before a hash more is fetched (issue 18).
#[tokio::test]
async fn a_piece_table_too_large_for_its_listed_size_is_refused_at_once() {
    use p2p_proto::wire::{BoundedVec, ContentHash, Message, PIECE_SIZE};
    use std::sync::atomic::Ordering;
    let (leech, _task) = endpoint(None).await;
    let huge = IndexEntry {
        size: 1 << 60,
        ..lying_entry(1)
    };
    let pieces = u32::MAX; // as many as it can say (2^42 would be needed)
    let (seeder, asked) = liar(move |m, _| match m {
        Message::PieceRequest { request, first, .. } => Some(Message::PieceHashes {
            request,
            piece_size: PIECE_SIZE,
            pieces,
            first,
            hashes: BoundedVec(vec![ContentHash::of(b"x"); 32]),
        }),
        _ => None,
    })
    .await;
    let err = leech.piece_table(seeder, &huge).await.unwrap_err();
    assert!(
        matches!(
            err,
            ServiceError::TooLarge {
                what: "pieces for one file",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(asked.load(Ordering::SeqCst), 1);
}

/// Requests for the first index page are answered from a scan of the share begun after they
/// came (a file added just before shows), on a blocking thread; many at once share scans and
/// every one is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_index_pages_come_from_a_fresh_scan_and_all_are_answered() {
    use p2p_proto::wire::{decode, Message, RequestId};
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("a.txt"), b"a").unwrap();
    let (seeder, _task) = endpoint(Some(share.path())).await;
    let to = seeder.local_addr();
    // Added after the endpoint indexed the share at its start.
    std::fs::write(share.path().join("b.txt"), b"b").unwrap();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = vec![0u8; 65536];
    // A stranger is asked to prove its address first: a small Retry with a token.
    let first = Message::IndexRequest {
        request: RequestId(999),
        page: 0,
    };
    sock.send_to(&first.encode(), to).await.unwrap();
    let (len, _) = sock.recv_from(&mut buf).await.unwrap();
    let token = match decode(&buf[..len]).unwrap() {
        Message::Retry {
            request: RequestId(999),
            token,
        } => token,
        other => panic!("expected a Retry, got {other:?}"),
    };
    let n = 50u64;
    for i in 0..n {
        let ask = Message::IndexRequest {
            request: RequestId(i),
            page: 0,
        };
        sock.send_to(&ask.with_token(Some(token)).encode(), to)
            .await
            .unwrap();
    }
    let mut answered = std::collections::BTreeSet::new();
    while answered.len() < n as usize {
        let got = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf)).await;
        let (len, _) = got.expect("an index request went unanswered").unwrap();
        match decode(&buf[..len]).unwrap() {
            Message::IndexPage {
                request, entries, ..
            } => {
                let names: Vec<&str> = entries.0.iter().map(|e| e.path.as_str()).collect();
                assert_eq!(names, ["a.txt", "b.txt"], "a stale listing");
                answered.insert(request.0);
            }
            other => panic!("{other:?}"),
        }
    }
}

/// A seeder on a raw socket that answers the requests `answer` knows (with the position
/// they ask from, and the reply) only once 16 wait, or none came for 100 ms (the last ones),
/// but one for position 0 at once: a client asking one page per round trip would wait for
/// ever. Returns its address, the switch that stops it, and then the most requests it held
/// at once.
async fn holding_seeder(
    answer: impl Fn(&p2p_proto::wire::Message) -> Option<(u32, p2p_proto::wire::Message)>
        + Send
        + 'static,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<usize>,
) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let seeder = sock.local_addr().unwrap();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let most_held = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        let mut held = Vec::new();
        let mut most = 0;
        loop {
            let quiet = tokio::time::sleep(Duration::from_millis(100));
            let got = tokio::select! {
                _ = &mut stopped => return most,
                r = sock.recv_from(&mut buf) => Some(r.unwrap()),
                _ = quiet, if !held.is_empty() => None,
            };
            if let Some((n, from)) = got {
                if let Some((at, reply)) = p2p_proto::wire::decode(&buf[..n])
                    .ok()
                    .and_then(|m| answer(&m))
                {
                    held.push((at, reply, from));
                    most = most.max(held.len());
                }
                if held.len() < 16 && held.first().is_some_and(|h| h.0 != 0) {
                    continue;
                }
            }
            for (_, reply, from) in held.drain(..) {
                sock.send_to(&reply.encode(), from).await.unwrap();
            }
        }
    });
    (seeder, stop, most_held)
}

/// A large file's piece table is fetched with many pages in flight: a seeder that answers
/// only once it holds 16 unanswered page requests (a one-page-per-round-trip client would
/// wait forever) gets them, and a page it answers short leaves a gap that is asked for
/// again; the table comes out whole and in order (issue 19: one page per round trip made a
/// 1 GiB download wait 13.5 s on a 100 ms path before its first byte).
#[tokio::test]
async fn piece_table_pages_are_fetched_many_at_once_and_gaps_asked_again() {
    use p2p_proto::wire::{BoundedVec, ContentHash, Message, MAX_PIECE_HASHES, PIECE_SIZE};
    let pieces = 64 * MAX_PIECE_HASHES as u32; // 64 pages
    let table: Vec<ContentHash> = (0..pieces)
        .map(|i| ContentHash::of(&i.to_le_bytes()))
        .collect();
    let entry = IndexEntry {
        size: u64::from(pieces) * u64::from(PIECE_SIZE),
        ..lying_entry(1)
    };
    let served = table.clone();
    let (seeder, stop, most_held) = holding_seeder(move |m| match m {
        Message::PieceRequest { request, first, .. } => {
            let start = *first as usize;
            // The fourth page comes back short.
            let len = if start == 3 * MAX_PIECE_HASHES {
                16
            } else {
                MAX_PIECE_HASHES
            };
            let end = (start + len).min(served.len());
            Some((
                *first,
                Message::PieceHashes {
                    request: *request,
                    piece_size: PIECE_SIZE,
                    pieces,
                    first: *first,
                    hashes: BoundedVec(served[start..end].to_vec()),
                },
            ))
        }
        _ => None,
    })
    .await;
    let (leech, _task) = endpoint(None).await;
    let got = leech.piece_table(seeder, &entry).await.unwrap();
    assert_eq!(got.piece_size, PIECE_SIZE);
    assert!(got.hashes == table, "the table came out wrong");
    stop.send(()).unwrap();
    let most = most_held.await.unwrap();
    assert!(
        most >= 16,
        "at most {most} page requests were in flight at once"
    );
}

/// A peer's index of many pages comes whole and in order from a seeder that answers only
/// once it holds 16 unanswered page requests (page 0 alone first): a client asking one page
/// per round trip would wait forever (issue 20: `ls` of a 100,000-file share took a round
/// trip per 16 files).
#[tokio::test]
async fn index_pages_are_fetched_many_at_once() {
    use p2p_proto::wire::{BoundedVec, Message};
    const PAGES: u32 = 40;
    let (seeder, stop, most_held) = holding_seeder(|m| match m {
        Message::IndexRequest { request, page } => Some((
            *page,
            Message::IndexPage {
                request: *request,
                page: *page,
                pages: PAGES,
                share: "many".into(),
                entries: BoundedVec((0..3).map(|i| lying_entry(page * 3 + i)).collect()),
            },
        )),
        _ => None,
    })
    .await;
    let (leech, _task) = endpoint(None).await;
    let (share, entries) = leech.index(seeder).await.unwrap();
    assert_eq!(share, "many");
    let ids: Vec<u32> = entries.iter().map(|e| e.id.0).collect();
    assert_eq!(
        ids,
        (0..PAGES * 3).collect::<Vec<_>>(),
        "whole and in order"
    );
    stop.send(()).unwrap();
    let most = most_held.await.unwrap();
    assert!(
        most >= 16,
        "at most {most} page requests were in flight at once"
    );
}

/// The sharer hears of each upload: who, which file, from where, and how it ended.
#[tokio::test]
async fn the_sharer_is_told_of_each_upload() {
    use p2p_core::service::UploadNotice;
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("a.bin"), vec![7u8; 300_000]).unwrap();
    let (tx, mut notices) = tokio::sync::mpsc::channel(16);
    let transport = p2p_transports::bind(TransportKind::Udp, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let config = EndpointConfig {
        share: Some(share.path().to_path_buf()),
        upload_notices: Some(tx),
        ..EndpointConfig::default()
    };
    let (seeder, _task) = spawn_endpoint(transport, TransportKind::Udp, config).unwrap();
    let (leech, _ltask) = endpoint(None).await;
    let (_, entries) = leech.index(seeder.local_addr()).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let e = entry(&entries, "a.bin");
    leech
        .download(seeder.local_addr(), e, out.path().join("a.bin"), None)
        .await
        .unwrap();
    let me = leech.local_addr();
    match notices.recv().await {
        Some(UploadNotice::Started {
            peer,
            path,
            size,
            offset,
        }) => {
            assert_eq!(
                (peer, path.as_str(), size, offset),
                (me, "a.bin", 300_000, 0)
            );
        }
        other => panic!("{other:?}"),
    }
    match notices.recv().await {
        Some(UploadNotice::Finished {
            peer, path, bytes, ..
        }) => assert_eq!((peer, path.as_str(), bytes), (me, "a.bin", 300_000)),
        other => panic!("{other:?}"),
    }
}

/// `entry` asks for one file's entry alone; a file the index does not hold is `None`.
#[tokio::test]
async fn one_entry_is_asked_for_alone() {
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("a.txt"), b"a").unwrap();
    std::fs::write(share.path().join("b.txt"), b"bb").unwrap();
    let (seeder, _task) = endpoint(Some(share.path())).await;
    let (leech, _ltask) = endpoint(None).await;
    let to = seeder.local_addr();
    let b = leech.entry(to, p2p_proto::wire::FileId(2)).await.unwrap();
    let b = b.expect("file 2");
    assert_eq!((b.path.as_str(), b.size), ("b.txt", 2));
    let (_, all) = leech.index(to).await.unwrap();
    assert_eq!(
        all.iter().find(|e| e.id == b.id),
        Some(&b),
        "as the listing says"
    );
    let none = leech.entry(to, p2p_proto::wire::FileId(99)).await.unwrap();
    assert_eq!(none, None);
}
