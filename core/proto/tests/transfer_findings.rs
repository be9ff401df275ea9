//! Transfer-machine cases found by fuzzing (`fuzz/`, `p2p_proto::fuzzing`), kept as plain
//! tests through the public API. A case that still shows a core bug is `#[ignore]`d with the
//! reason, and passes once the bug is fixed.

use std::time::Instant;

use p2p_proto::transfer::{ChunkReceiver, PieceTable, ReceiverConfig, ReceiverEvent};
use p2p_proto::wire::{ContentHash, FileId, Message, TransferId};

/// The events a receiver has queued.
fn events(r: &mut ChunkReceiver) -> Vec<ReceiverEvent> {
    std::iter::from_fn(|| r.poll_event()).collect()
}

/// Found by the `receiver` fuzz target: a receiver resumed past byte 0 without `expected`
/// verifies every piece but never the whole-file hash, so it used to report `Finished` with
/// whatever hash the sender announced, although `Finished.hash` is documented as verified.
/// Now such a resume is refused; whatever the machine does, it never finishes with a hash
/// other than the file's.
#[test]
fn resume_without_expected_never_reports_an_unverified_hash() {
    let now = Instant::now();
    let file: Vec<u8> = (0..10240u32).map(|i| (i * 7) as u8).collect();
    let transfer = TransferId(1);
    let mut r = ChunkReceiver::resume(
        now,
        transfer,
        FileId(1),
        None,
        5120,
        PieceTable::of(&file, 1024),
        ReceiverConfig::default(),
    );
    let announced = ContentHash([1; 32]); // not the file's hash
    r.handle_message(
        now,
        &Message::Accept {
            transfer,
            size: 10240,
            chunk_size: 1024,
            hash: announced,
        },
    );
    for seq in 0..5u64 {
        let at = 5120 + seq as usize * 1024;
        r.handle_message(
            now,
            &Message::Data {
                transfer,
                seq,
                payload: file[at..at + 1024].to_vec().into(),
            },
        );
    }
    r.handle_message(
        now,
        &Message::Fin {
            transfer,
            size: 10240,
            hash: announced,
        },
    );
    for e in events(&mut r) {
        if let ReceiverEvent::Finished { hash, .. } = e {
            assert_eq!(
                hash,
                ContentHash::of(&file),
                "Finished with an unverified hash"
            );
        }
    }
}

/// The same resume with `expected` from the index (as the endpoint does it) refuses the
/// sender's wrong hash at `Accept`, before any byte.
#[test]
fn resume_with_expected_refuses_a_wrong_announced_hash() {
    let now = Instant::now();
    let file: Vec<u8> = (0..10240u32).map(|i| (i * 7) as u8).collect();
    let transfer = TransferId(1);
    let mut r = ChunkReceiver::resume(
        now,
        transfer,
        FileId(1),
        Some((10240, ContentHash::of(&file))),
        5120,
        PieceTable::of(&file, 1024),
        ReceiverConfig::default(),
    );
    r.handle_message(
        now,
        &Message::Accept {
            transfer,
            size: 10240,
            chunk_size: 1024,
            hash: ContentHash([1; 32]),
        },
    );
    let events = events(&mut r);
    assert!(
        matches!(events.last(), Some(ReceiverEvent::Failed(_))),
        "{events:?}"
    );
    assert!(r.is_done());
}
