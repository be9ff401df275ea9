//! The receiver alone, driven by hand.

use super::*;

/// Chunk `seq` of transfer `t`.
fn data_msg(t: TransferId, seq: u64, payload: Bytes) -> Message {
    Message::Data {
        transfer: t,
        seq,
        payload,
    }
}

/// After a silence of twice the request's round trip the last ACK goes again, backing
/// off; never with `reack` off (a reliable transport).
#[test]
fn the_last_ack_is_repeated_after_a_silence_unless_reack_is_off() {
    for reack in [true, false] {
        let start = Instant::now();
        let t = TransferId(3);
        let data = vec![7u8; 4000];
        let config = ReceiverConfig {
            reack,
            ..ReceiverConfig::default()
        };
        let mut r = ChunkReceiver::new(start, t, FileId(1), None, config);
        assert!(matches!(
            r.poll_transmit(start),
            Some(Message::Request { .. })
        ));
        let now = start + Duration::from_millis(30); // the request's round trip
        let accept = Message::Accept {
            transfer: t,
            size: data.len() as u64,
            chunk_size: 1000,
            hash: ContentHash::of(&data),
        };
        r.handle_message(now, &accept);
        for seq in 0..2 {
            r.handle_message(now, &data_msg(t, seq, Bytes::from(vec![7u8; 1000])));
        }
        assert!(matches!(
            r.poll_transmit(now),
            Some(Message::Ack { cumulative: 2, .. })
        ));
        assert_eq!(r.poll_transmit(now), None);
        let mut acks = Vec::new();
        while let Some(at) = r.poll_timeout() {
            if at > now + Duration::from_millis(500) {
                break; // only the idle timeout is left
            }
            r.handle_timeout(at);
            while let Some(m) = r.poll_transmit(now) {
                assert!(matches!(m, Message::Ack { cumulative: 2, .. }), "{m:?}");
                acks.push(at - now);
            }
        }
        let ms = Duration::from_millis;
        if reack {
            assert_eq!(
                acks,
                vec![ms(60), ms(180), ms(420)],
                "at 60 ms, then backing off"
            );
        } else {
            assert!(acks.is_empty(), "{acks:?}");
        }
    }
}

/// The sender picks the piece size: pieces larger than `MAX_OFFLOADED_PIECE` are hashed
/// as they stream in, never held whole for the driver.
#[test]
fn large_pieces_are_hashed_in_place_even_when_offloading() {
    let piece = MAX_OFFLOADED_PIECE * 2;
    let size = piece as usize + 5000;
    let data: Vec<u8> = (0..size as u32).map(|i| (i % 249) as u8).collect();
    let table = PieceTable::of(&data, piece);
    let hash = ContentHash::of(&data);
    let now = Instant::now();
    let t = TransferId(9);
    let config = ReceiverConfig {
        offload_hashing: true,
        ..ReceiverConfig::default()
    };
    let expected = Some((size as u64, hash));
    let mut r = ChunkReceiver::resume(now, t, FileId(1), expected, 0, table, config);
    let chunk = 64 * 1024;
    let accept = Message::Accept {
        transfer: t,
        size: size as u64,
        chunk_size: chunk as u32,
        hash,
    };
    r.handle_message(now, &accept);
    for (seq, part) in data.chunks(chunk).enumerate() {
        let payload = Bytes::copy_from_slice(part);
        let seq = seq as u64;
        r.handle_message(now, &data_msg(t, seq, payload));
    }
    let size = size as u64;
    r.handle_message(
        now,
        &Message::Fin {
            transfer: t,
            size,
            hash,
        },
    );
    let events: Vec<_> = std::iter::from_fn(|| r.poll_event()).collect();
    assert!(!events
        .iter()
        .any(|e| matches!(e, ReceiverEvent::HashPiece(_))));
    let verified = u64::from(piece);
    assert!(events.contains(&ReceiverEvent::PieceVerified { verified }));
    assert!(matches!(
        events.last(),
        Some(ReceiverEvent::Finished { .. })
    ));
}

/// Offloaded hashing: each completed piece is handed out once, reports may come in any
/// order, the verified prefix grows only over reported pieces, and the `Fin` is answered
/// only once every piece is reported good.
#[test]
fn offloaded_pieces_are_verified_in_order_and_hold_the_fin() {
    let piece = 1024u32;
    let data: Vec<u8> = (0..3500u32).map(|i| (i * 13 % 251) as u8).collect();
    let table = PieceTable::of(&data, piece);
    let hash = ContentHash::of(&data);
    let now = Instant::now();
    let config = ReceiverConfig {
        offload_hashing: true,
        ..ReceiverConfig::default()
    };
    let t = TransferId(5);
    // Accepted, nothing delivered yet.
    let start_fresh = |table: PieceTable| {
        let mut r = ChunkReceiver::resume(
            now,
            t,
            FileId(1),
            Some((3500, hash)),
            0,
            table,
            config.clone(),
        );
        let accept = Message::Accept {
            transfer: t,
            size: 3500,
            chunk_size: 700,
            hash,
        };
        r.handle_message(now, &accept);
        r
    };
    // Accepted, then every chunk delivered.
    let start = |table: PieceTable| {
        let mut r = start_fresh(table);
        for seq in 0..5u64 {
            let payload = Bytes::copy_from_slice(&data[seq as usize * 700..][..700]);
            r.handle_message(now, &data_msg(t, seq, payload));
        }
        r
    };
    let events = |r: &mut ChunkReceiver| std::iter::from_fn(|| r.poll_event()).collect::<Vec<_>>();
    let finacks = |r: &mut ChunkReceiver| {
        std::iter::from_fn(|| r.poll_transmit(now))
            .filter(|m| matches!(m, Message::FinAck { .. }))
            .count()
    };
    let fin = Message::Fin {
        transfer: t,
        size: 3500,
        hash,
    };

    let mut r = start(table.clone());
    let mut jobs = Vec::new();
    let mut written = Vec::new();
    for e in events(&mut r) {
        match e {
            ReceiverEvent::HashPiece(job) => jobs.push(job),
            ReceiverEvent::Write(b) => written.extend_from_slice(&b),
            ReceiverEvent::Accepted { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(written, data);
    assert_eq!(
        jobs.iter().map(PieceJob::index).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert_eq!(r.hash_backlog(), 4 * 1024, "four pieces of 1 KiB");
    r.handle_message(now, &fin.clone());
    assert_eq!(finacks(&mut r), 0, "FinAck before the pieces are hashed");
    // Pieces 3 and 1 first: nothing verified until piece 0 is.
    for i in [3, 1] {
        r.piece_hashed(i, jobs[i as usize].hash());
    }
    assert!(events(&mut r).is_empty());
    r.piece_hashed(0, jobs[0].hash());
    assert_eq!(
        events(&mut r),
        [ReceiverEvent::PieceVerified { verified: 2048 }]
    );
    r.piece_hashed(2, jobs[2].hash());
    assert_eq!(
        events(&mut r),
        [
            ReceiverEvent::PieceVerified { verified: 3500 },
            ReceiverEvent::Finished {
                received: 3500,
                hash
            }
        ]
    );
    assert_eq!(finacks(&mut r), 1);

    // A chunk that waits out of order is copied if small, so that it never pins the
    // (possibly much larger) buffer it arrived in.
    let mut r = start_fresh(table.clone());
    let block = Bytes::from(vec![7u8; 4096]);
    let payload = block.slice(..700);
    r.handle_message(now, &data_msg(t, 2, payload));
    let kept = r.early.get(&2).expect("buffered out of order");
    assert!(
        !std::ptr::eq(kept.as_ptr(), block.as_ptr()),
        "early chunk still in its block"
    );

    // A piece that hashes wrong fails the transfer, whatever else was reported.
    let mut r = start(table);
    let jobs: Vec<PieceJob> = events(&mut r)
        .into_iter()
        .filter_map(|e| match e {
            ReceiverEvent::HashPiece(job) => Some(job),
            _ => None,
        })
        .collect();
    r.piece_hashed(0, jobs[0].hash());
    r.piece_hashed(1, jobs[2].hash());
    assert!(matches!(
        events(&mut r).last(),
        Some(ReceiverEvent::Failed(TransferError::PieceMismatch {
            piece: 1
        }))
    ));
    assert!(r.is_done());
}

/// Chunks that bring nothing (outside the file, of the wrong length, or already here) and a
/// FIN before the last chunk do not restart the idle timer: a sender that only sends those,
/// one every 10 s, fails the transfer at the idle timeout, not never (issue 18).
#[test]
fn only_new_chunks_keep_a_transfer_alive() {
    let start = Instant::now();
    let t = TransferId(9);
    let data = vec![5u8; 4000];
    let hash = ContentHash::of(&data);
    let config = ReceiverConfig::default();
    let idle = config.idle_timeout;
    let mut r = ChunkReceiver::new(start, t, FileId(1), Some((4000, hash)), config);
    let accept = Message::Accept {
        transfer: t,
        size: 4000,
        chunk_size: 1000,
        hash,
    };
    r.handle_message(start, &accept);
    r.handle_message(start, &data_msg(t, 0, Bytes::from(vec![5u8; 1000])));
    let useless = [
        data_msg(t, 99, Bytes::from(vec![5u8; 1000])), // past the end
        data_msg(t, 1, Bytes::from(vec![5u8; 10])),    // wrong length
        data_msg(t, 0, Bytes::from(vec![5u8; 1000])),  // a duplicate
        Message::Fin {
            transfer: t,
            size: 4000,
            hash,
        },
    ];
    let mut now = start;
    for m in useless.iter().cycle().take(8) {
        now += Duration::from_secs(10).min(idle / 2);
        if now >= start + idle {
            break;
        }
        r.handle_message(now, m);
    }
    assert_eq!(r.poll_timeout().map(|t| t <= start + idle), Some(true));
    r.handle_timeout(start + idle);
    let failed = std::iter::from_fn(|| r.poll_event())
        .any(|e| matches!(e, ReceiverEvent::Failed(TransferError::Timeout { .. })));
    assert!(
        failed,
        "the transfer outlived its idle timeout on useless messages"
    );
    // A new chunk, by contrast, restarts the timer.
    let mut r = ChunkReceiver::new(
        start,
        t,
        FileId(1),
        Some((4000, hash)),
        ReceiverConfig::default(),
    );
    r.handle_message(start, &accept);
    r.handle_message(
        start + idle / 2,
        &data_msg(t, 0, Bytes::from(vec![5u8; 1000])),
    );
    r.handle_timeout(start + idle);
    assert!(
        !std::iter::from_fn(|| r.poll_event()).any(|e| matches!(e, ReceiverEvent::Failed(_))),
        "a transfer that made progress half an idle timeout ago was failed"
    );
}

/// A sender that delivers a new chunk just often enough to beat the idle timeout (one every
/// 10 s: 100 bytes/s) is failed as too slow at the end of the first minimum-rate span; one
/// that keeps above the minimum is not (issue 18: a trickling seeder held a `get` for ever).
#[test]
fn a_trickling_sender_fails_the_minimum_rate() {
    let start = Instant::now();
    let t = TransferId(11);
    let size = 100_000u64;
    let hash = ContentHash::of(&vec![1u8; size as usize]);
    let config = ReceiverConfig {
        offload_hashing: true,
        ..ReceiverConfig::default()
    };
    let window = config.min_rate_window;
    assert!(config.idle_timeout > Duration::from_secs(10));
    let run = |every: Duration| {
        let mut r = ChunkReceiver::new(start, t, FileId(1), Some((size, hash)), config.clone());
        let accept = Message::Accept {
            transfer: t,
            size,
            chunk_size: 1000,
            hash,
        };
        r.handle_message(start, &accept);
        let mut now = start;
        let mut seq = 0;
        while now < start + window * 2 && seq < 100 {
            // Every timer due before the next chunk fires first, as a driver would.
            let next = now + every;
            while let Some(at) = r.poll_timeout().filter(|&at| at <= next) {
                r.handle_timeout(at);
                while r.poll_transmit(at).is_some() {} // the ACKs due
            }
            now = next;
            r.handle_message(now, &data_msg(t, seq, Bytes::from(vec![1u8; 1000])));
            seq += 1;
            if let Some(e) = std::iter::from_fn(|| r.poll_event())
                .find_map(|e| matches!(e, ReceiverEvent::Failed(_)).then_some(e))
            {
                return Some((now - start, e));
            }
        }
        None
    };
    let (after, failed) = run(Duration::from_secs(10)).expect("the trickle was never failed");
    assert!(
        matches!(
            failed,
            ReceiverEvent::Failed(TransferError::Timeout {
                phase: TimeoutPhase::TooSlow { .. },
                ..
            })
        ),
        "{failed:?}"
    );
    assert!(
        after <= window + Duration::from_secs(10),
        "failed only after {after:?}"
    );
    // 1,000 bytes every 0.5 s (2 KB/s), over two spans: kept.
    assert!(run(Duration::from_millis(500)).is_none());
}

/// A `Request` waiting in the sender's line (`Queued`) stays alive past the idle timeout as
/// long as the answers come, asks again about every second, and proceeds at the `Accept`.
#[test]
fn a_queued_request_waits_its_turn() {
    let start = Instant::now();
    let t = TransferId(12);
    let config = ReceiverConfig::default();
    let idle = config.idle_timeout;
    let mut r = ChunkReceiver::new(start, t, FileId(1), None, config);
    assert!(matches!(
        r.poll_transmit(start),
        Some(Message::Request { .. })
    ));
    let queued = Message::Queued {
        transfer: t,
        ahead: 3,
    };
    let mut now = start;
    let mut asked = 0;
    while now < start + idle * 2 {
        r.handle_message(now, &queued);
        let next = r.poll_timeout().expect("a retry is due");
        assert!(
            next <= now + QUEUED_RETRY,
            "the next ask after {:?}",
            next - now
        );
        now = next;
        r.handle_timeout(now);
        while let Some(m) = r.poll_transmit(now) {
            assert!(matches!(m, Message::Request { .. }), "{m:?}");
            asked += 1;
        }
    }
    assert!(
        !std::iter::from_fn(|| r.poll_event()).any(|e| matches!(e, ReceiverEvent::Failed(_))),
        "a queued request was given up"
    );
    assert!(
        asked >= 25,
        "asked again only {asked} times in {:?}",
        idle * 2
    );
    let data = vec![4u8; 10];
    r.handle_message(
        now,
        &Message::Accept {
            transfer: t,
            size: 10,
            chunk_size: 10,
            hash: ContentHash::of(&data),
        },
    );
    assert!(
        std::iter::from_fn(|| r.poll_event()).any(|e| matches!(e, ReceiverEvent::Accepted { .. }))
    );
}
