//! Behaviour of the sender and receiver together, on the in-memory network with a fake clock
//! of [`crate::testing::Pair`] (the quinn-proto `Pair` pattern): every message goes through
//! the real wire encoding, and a test-supplied link function decides what happens to each one.

use std::time::{Duration, Instant};

use super::*;
use crate::testing::{Dir, Fate, Pair, PairConfig, Sent};
use crate::wire::{ContentHash, FileId, Message, TransferId};

/// Chunks of `chunk_size` bytes, windows of 64 chunks on both sides, 10 ms each way.
fn config(chunk_size: u32) -> PairConfig {
    PairConfig {
        sender: SenderConfig {
            chunk_size,
            max_window: 64,
            ..SenderConfig::default()
        },
        receiver: ReceiverConfig {
            window: 64,
            ..ReceiverConfig::default()
        },
        ..PairConfig::default()
    }
}

/// A link that drops the first `n` messages `pick` selects and delivers everything else.
fn drop_first(
    n: usize,
    pick: impl Fn(Dir, &Message) -> bool + 'static,
) -> impl FnMut(&Sent<'_>) -> Fate {
    let mut dropped = 0;
    move |s| {
        if dropped < n && pick(s.dir, s.msg) {
            dropped += 1;
            Fate::Drop
        } else {
            Fate::Deliver
        }
    }
}

/// Chunk `seq` on its way to the receiver.
fn data_to_receiver(seq: u64) -> impl Fn(Dir, &Message) -> bool {
    move |dir, m| dir == Dir::ToReceiver && matches!(m, Message::Data { seq: s, .. } if *s == seq)
}

fn sample(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn delivers_small_files_of_every_edge_size() {
    for len in [0, 1, 99, 100, 101, 1000, 6400] {
        let mut pair = Pair::new(sample(len), config(100));
        pair.drive(100_000);
        assert!(pair.finished(), "len {len}: {:?}", pair.receiver_events);
        assert_eq!(pair.written, pair.file(), "len {len}");
        assert_eq!(pair.sender_events, vec![SenderEvent::Finished], "len {len}");
        assert!(pair.receiver.is_done());
    }
}

#[test]
fn no_retransmission_on_a_clean_link() {
    let mut pair = Pair::new(sample(50_000), config(100));
    pair.drive(100_000);
    assert!(pair.finished());
    assert_eq!(pair.stats().chunks_retransmitted, 0);
    assert_eq!(pair.stats().timeouts, 0);
}

/// 4,000 chunks of 100 bytes over a 100 ms RTT path, with windows of 1,000 chunks on both
/// sides.
fn long_wide_pair() -> Pair {
    let mut config = config(100);
    config.latency = Duration::from_millis(50);
    config.sender.max_window = 1000;
    config.receiver.window = 1000;
    Pair::new(sample(400_000), config)
}

/// On a long path with a large window, pacing sends the window in bursts of a couple of
/// milliseconds' worth instead of all at once, and still finishes in about the same number
/// of round trips.
#[test]
fn pacing_spreads_the_window_over_the_rtt() {
    let run = |pacing: bool| {
        let mut pair = long_wide_pair();
        pair.sender_config.pacing = pacing;
        let start = pair.now;
        pair.drive(1_000_000);
        assert!(pair.finished(), "pacing {pacing}");
        assert_eq!(pair.written, pair.file(), "pacing {pacing}");
        let mut burst = 0;
        for same in pair.data_sent_at.chunk_by(|a, b| a == b) {
            burst = burst.max(same.len());
        }
        (burst, pair.now - start, pair.stats().chunks_retransmitted)
    };
    let (paced_burst, paced_time, paced_rtx) = run(true);
    let (burst, time, _) = run(false);
    // At most 2 ms of a 1,000-chunk window per 100 ms RTT (20 chunks), or the first
    // window, sent before any RTT was measured.
    let first_window = SenderConfig::default().initial_window as usize;
    assert!(
        paced_burst <= 20.max(first_window),
        "paced burst of {paced_burst}"
    );
    assert!(burst > 100, "unpaced burst of {burst}");
    assert_eq!(paced_rtx, 0);
    assert!(
        paced_time < time * 3 / 2,
        "paced {paced_time:?}, unpaced {time:?}"
    );
}

/// A pacing wait that has passed is dropped by `handle_timeout`, so a driver that does not
/// poll for transmits meanwhile (rate-limited) is never woken for it again.
#[test]
fn a_passed_pacing_wait_is_not_reported_again() {
    let mut pair = long_wide_pair();
    // Run until the pacer holds a chunk back: nothing to send now, a wait of under 5 ms.
    let mut held = None;
    for _ in 0..100_000 {
        pair.step();
        let now = pair.now;
        let Some(s) = pair.sender.as_mut() else {
            continue;
        };
        let soon = s
            .poll_timeout()
            .filter(|&t| t < now + Duration::from_millis(5));
        if soon.is_some() && s.poll_transmit(now).is_none() {
            held = s.poll_timeout();
            break;
        }
    }
    let at = held.expect("the pacer held a chunk back");
    let s = pair.sender.as_mut().unwrap();
    s.handle_timeout(at);
    assert!(
        s.poll_timeout().is_some_and(|t| t > at),
        "a passed deadline reported again"
    );
}

#[test]
fn retransmits_lost_chunk_by_fast_retransmit() {
    let mut pair =
        Pair::new(sample(5000), config(100)).with_link(drop_first(1, data_to_receiver(3)));
    pair.drive(100_000);
    assert!(pair.finished());
    assert_eq!(pair.written, pair.file());
    assert_eq!(pair.stats().chunks_retransmitted, 1);
    assert_eq!(pair.stats().timeouts, 0, "SACK evidence, not the timer");
}

/// A lost last chunk has no later chunk whose ACK would expose it: the tail loss probe
/// sends it again after two RTTs, long before the retransmission timer.
#[test]
fn lost_last_chunk_is_repaired_by_the_tail_probe() {
    let mut pair =
        Pair::new(sample(1000), config(100)).with_link(drop_first(1, data_to_receiver(9)));
    pair.drive(100_000);
    assert!(pair.finished());
    assert_eq!(pair.written, pair.file());
    assert_eq!(pair.stats().chunks_retransmitted, 1);
    assert_eq!(pair.stats().timeouts, 0, "the probe, not the timer");
}

/// When the probe is lost too, the retransmission timer still repairs the tail.
#[test]
fn lost_last_chunk_and_lost_probe_are_repaired_on_timeout() {
    let mut pair =
        Pair::new(sample(1000), config(100)).with_link(drop_first(2, data_to_receiver(9)));
    pair.drive(100_000);
    assert!(pair.finished());
    assert_eq!(pair.written, pair.file());
    assert!(pair.stats().timeouts >= 1);
}

#[test]
fn lost_request_accept_fin_and_finack_are_repaired() {
    let mut seen = std::collections::HashSet::new();
    let mut pair = Pair::new(sample(300), config(100)).with_link(move |s| {
        let m = s.msg;
        let kind = std::mem::discriminant(m);
        let control = matches!(
            m,
            Message::Request { .. }
                | Message::Accept { .. }
                | Message::Fin { .. }
                | Message::FinAck { .. }
        );
        if control && seen.insert(kind) {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    pair.drive(100_000);
    assert!(pair.finished());
    assert_eq!(pair.written, pair.file());
    assert_eq!(pair.sender_events, vec![SenderEvent::Finished]);
}

/// A lost `Accept` costs a round trip: the receiver asks again at the first `Data` it must
/// drop, and the sender sends those chunks again after the new `Accept`, instead of both
/// waiting for their timers (the Request retry, then the initial one-second RTO).
#[test]
fn lost_accept_costs_a_round_trip_not_a_timeout() {
    let accept = |_, m: &Message| matches!(m, Message::Accept { .. });
    let mut pair = Pair::new(sample(5000), config(100)).with_link(drop_first(1, accept));
    let took = pair.time_to_finish();
    assert_eq!(pair.written, pair.file());
    assert_eq!(pair.stats().timeouts, 0);
    assert!(
        took < Duration::from_millis(200),
        "took {took:?} at a 20 ms RTT"
    );
    pair.drive(100_000);
    assert_eq!(pair.sender_events, vec![SenderEvent::Finished]);
}

/// More holes than an ACK has SACK ranges: the receiver reports the highest ranges, so the
/// sender learns of every chunk that arrived above the holes and sends again only the lost
/// ones. (Reporting the lowest ranges, it took the newest arrivals for losses.)
#[test]
fn more_holes_than_sack_ranges_cost_no_needless_retransmission() {
    let mut config = config(100);
    config.sender.max_window = 400;
    config.sender.initial_window = 400;
    config.receiver.window = 400;
    let mut first = std::collections::HashSet::new();
    let mut pair = Pair::new(sample(40_000), config).with_link(move |s| match s.msg {
        // The first send of every odd chunk below 300, all in the first flight: 150 holes.
        Message::Data { seq, .. } if s.dir == Dir::ToReceiver && seq % 2 == 1 && *seq < 300 => {
            if first.insert(*seq) {
                Fate::Drop
            } else {
                Fate::Deliver
            }
        }
        _ => Fate::Deliver,
    });
    pair.drive(100_000);
    assert!(pair.finished());
    assert_eq!(pair.written, pair.file());
    assert_eq!(pair.stats().chunks_retransmitted, 150);
    assert_eq!(pair.stats().timeouts, 0);
}

/// The receiver finishes on its last verified chunk, not on the sender's FIN: a lost FIN
/// costs it nothing (it used to cost a retransmission timeout, at least 200 ms).
#[test]
fn the_receiver_finishes_without_waiting_for_a_lost_fin() {
    let fin = |_, m: &Message| matches!(m, Message::Fin { .. });
    let mut pair = Pair::new(sample(5000), config(100)).with_link(drop_first(1, fin));
    let took = pair.time_to_finish();
    assert_eq!(pair.written, pair.file());
    assert!(
        took < Duration::from_millis(150),
        "took {took:?} at a 20 ms RTT"
    );
    // The sender repeats its FIN and has it answered.
    pair.drive(100_000);
    assert_eq!(pair.sender_events, vec![SenderEvent::Finished]);
    let finished = pair
        .receiver_events
        .iter()
        .filter(|e| matches!(e, ReceiverEvent::Finished { .. }));
    assert_eq!(finished.count(), 1);
}

/// A finished receiver's last ACK was lost: the sender's tail probe (its last chunk again)
/// gets the ACK of every chunk in answer, then the FIN its FIN-ACK.
#[test]
fn a_lost_final_ack_is_answered_after_the_receiver_finished() {
    let chunks = 50;
    let last_ack =
        move |_, m: &Message| matches!(m, Message::Ack { cumulative, .. } if *cumulative == chunks);
    let mut pair = Pair::new(sample(5000), config(100)).with_link(drop_first(1, last_ack));
    pair.drive(100_000);
    assert!(pair.finished());
    assert_eq!(pair.written, pair.file());
    assert_eq!(pair.sender_events, vec![SenderEvent::Finished]);
    assert_eq!(pair.stats().timeouts, 0, "the probe, not the timer");
    assert_eq!(pair.stats().chunks_retransmitted, 1, "one probe");
}

/// Every ACK of the first flight is lost (as when one ACK answers a whole burst of
/// datagrams, and that one is lost): the sender, window full and no RTT measured yet, would
/// wait for its initial one-second RTO. The receiver, hearing nothing more, sends its ACK
/// again after twice the request's round trip.
#[test]
fn lost_acks_of_the_first_flight_are_repeated_before_the_initial_rto() {
    let ack = |_, m: &Message| matches!(m, Message::Ack { .. });
    let mut pair = Pair::new(sample(10_000), config(100)).with_link(drop_first(8, ack));
    let took = pair.time_to_finish();
    assert_eq!(pair.written, pair.file());
    assert_eq!(pair.stats().timeouts, 0);
    assert!(
        took < Duration::from_millis(300),
        "took {took:?} at a 20 ms RTT"
    );
}

/// The receiver's window is full (64 chunks, all sent in the first flight) and the first
/// chunk is lost twice: its retransmission is then all that is in flight, and nothing sent
/// after it can expose its loss. The probe sends it again after two RTTs, not the RTO.
#[test]
fn a_lost_retransmission_with_the_window_full_is_probed_not_timed_out() {
    let mut pair =
        Pair::new(sample(20_000), config(100)).with_link(drop_first(2, data_to_receiver(0)));
    pair.sender_config.initial_window = 64;
    pair.drive(100_000);
    assert!(pair.finished());
    assert_eq!(pair.written, pair.file());
    assert_eq!(
        pair.stats().timeouts,
        0,
        "the probe, not the timer: {:?}",
        pair.stats()
    );
}

#[test]
fn duplicates_and_reordering_do_not_corrupt() {
    // The 7th, 14th, ... message sent is duplicated; the 3rd, 10th, ... arrives 25 ms late.
    let mut pair = Pair::new(sample(20_000), config(100)).with_link(|s| match s.n % 7 {
        6 => Fate::Duplicate,
        2 => Fate::Delay(Duration::from_millis(25)),
        _ => Fate::Deliver,
    });
    pair.drive(200_000);
    assert!(pair.finished());
    assert_eq!(pair.written, pair.file());
}

#[test]
fn dead_link_ends_both_sides_with_timeout() {
    // Nothing reaches the receiver from the 21st message on.
    let mut pair = Pair::new(sample(5000), config(100)).with_link(|s| {
        if s.n >= 20 && s.dir == Dir::ToReceiver {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    pair.drive(100_000);
    assert!(matches!(
        pair.receiver_events.last(),
        Some(ReceiverEvent::Failed(TransferError::Timeout { .. }))
    ));
    assert!(matches!(
        pair.sender_events.last(),
        Some(SenderEvent::Failed(_))
    ));
    assert!(pair.written.len() < pair.file().len());
}

#[test]
fn changed_file_is_refused_before_any_byte() {
    let mut pair = Pair::new(sample(500), config(100));
    pair.change_file(|f| f[0] ^= 1); // the sender now has other content than the index said
    pair.drive(100_000);
    assert!(matches!(
        pair.receiver_events.last(),
        Some(ReceiverEvent::Failed(TransferError::Changed(_)))
    ));
    assert!(pair.written.is_empty());
}

#[test]
fn ack_for_unsent_chunks_is_ignored() {
    let now = Instant::now();
    let mut s = ChunkSender::new(
        now,
        TransferId(1),
        100_000,
        ContentHash::of(b""),
        0,
        SenderConfig {
            chunk_size: 100,
            ..SenderConfig::default()
        },
    );
    while s.poll_transmit(now).is_some() {}
    s.handle_message(
        now,
        &Message::Ack {
            transfer: TransferId(1),
            cumulative: 20, // only 16 (the initial window) were sent
            sack: crate::wire::BoundedVec(vec![]),
            window: 64,
        },
    );
    assert_eq!(s.acked_chunks(), 0);
    assert!(!s.is_done());
}

#[test]
fn receiver_ignores_data_beyond_window_and_wrong_lengths() {
    let now = Instant::now();
    let mut r = ChunkReceiver::new(
        now,
        TransferId(1),
        FileId(1),
        None,
        ReceiverConfig {
            window: 4,
            ..ReceiverConfig::default()
        },
    );
    r.handle_message(
        now,
        &Message::Accept {
            transfer: TransferId(1),
            size: 1000,
            chunk_size: 100,
            hash: ContentHash::of(b"x"),
        },
    );
    r.handle_message(
        now,
        &Message::Data {
            transfer: TransferId(1),
            seq: 9,
            payload: vec![0; 100].into(),
        },
    );
    r.handle_message(
        now,
        &Message::Data {
            transfer: TransferId(1),
            seq: 1,
            payload: vec![0; 7].into(),
        },
    );
    r.handle_message(
        now,
        &Message::Data {
            transfer: TransferId(1),
            seq: 50,
            payload: vec![0; 100].into(),
        },
    );
    assert_eq!(r.buffered_chunks(), 0);
    assert_eq!(r.received(), 0);
}

#[test]
fn wrong_hash_at_fin_fails_without_finish() {
    let now = Instant::now();
    let mut r = ChunkReceiver::new(
        now,
        TransferId(1),
        FileId(1),
        None,
        ReceiverConfig::default(),
    );
    r.handle_message(
        now,
        &Message::Accept {
            transfer: TransferId(1),
            size: 3,
            chunk_size: 100,
            hash: ContentHash::of(b"abd"),
        },
    );
    r.handle_message(
        now,
        &Message::Data {
            transfer: TransferId(1),
            seq: 0,
            payload: b"abc".to_vec().into(),
        },
    );
    r.handle_message(
        now,
        &Message::Fin {
            transfer: TransferId(1),
            size: 3,
            hash: ContentHash::of(b"abd"),
        },
    );
    let events: Vec<_> = std::iter::from_fn(|| r.poll_event()).collect();
    assert!(matches!(
        events.last(),
        Some(ReceiverEvent::Failed(TransferError::HashMismatch))
    ));
    assert!(
        std::iter::from_fn(|| r.poll_transmit(now)).any(|m| matches!(
            m,
            Message::Abort {
                reason: AbortReason::HashMismatch,
                ..
            }
        ))
    );
}

/// Every 5th data chunk arrives 3 ms late (a quarter RTT is 5 ms): the later chunks are
/// SACKed first. Until the sender has seen reordering, three later chunks acknowledged make a
/// loss (the packet threshold): the delayed chunks of the first flight (16 chunks: 0, 5, 10,
/// 15) are sent again. Their first sends' ACKs, within half an RTT of the second, show the
/// reordering, and from then on no chunk of the 40 delayed is declared lost before a
/// round trip plus the reordering window. (Without that detection: 55 chunks sent again.)
#[test]
fn reordering_costs_retransmissions_in_the_first_flight_only() {
    let mut pair = Pair::new(sample(20_000), config(100)).with_link(|s| match s.msg {
        Message::Data { seq, .. } if s.dir == Dir::ToReceiver && seq % 5 == 0 => {
            Fate::Delay(Duration::from_millis(3))
        }
        _ => Fate::Deliver,
    });
    pair.drive(200_000);
    assert!(pair.finished());
    assert_eq!(pair.written, pair.file());
    assert!(pair.stats().chunks_retransmitted <= 4, "{:?}", pair.stats());
}

/// A sender of transfer `transfer` (a 1,000,000-byte file in 1,000-byte chunks, `config`
/// otherwise) that took its `Request` at `t0`.
fn requested_sender(t0: Instant, transfer: TransferId, config: SenderConfig) -> ChunkSender {
    let config = SenderConfig {
        chunk_size: 1000,
        ..config
    };
    let mut s = ChunkSender::new(t0, transfer, 1_000_000, ContentHash::of(b"x"), 0, config);
    s.handle_message(t0, &file_request(transfer));
    s
}

/// The `Request` of transfer `transfer` for all of file 1.
fn file_request(transfer: TransferId) -> Message {
    Message::Request {
        transfer,
        file: FileId(1),
        offset: 0,
        end: None,
    }
}

/// The sequence numbers of the chunks `s` sends now.
fn chunks_sent(s: &mut ChunkSender, now: Instant) -> Vec<u64> {
    std::iter::from_fn(|| s.poll_transmit(now))
        .filter_map(|t| match t {
            SenderTransmit::Chunk { seq, .. } => Some(seq),
            _ => None,
        })
        .collect()
}

/// A forged `Request` repeated every half second (its "receiver" never acknowledges) gets the
/// window sent again once, not each time, and does not keep the upload alive: it ends at the
/// idle timeout (issue 18's amplification).
#[test]
fn repeated_requests_neither_resend_the_window_each_time_nor_keep_an_upload_alive() {
    let t0 = Instant::now();
    let transfer = TransferId(5);
    let idle = SenderConfig::default().idle_timeout;
    let mut s = requested_sender(t0, transfer, SenderConfig::default());
    let request = file_request(transfer);
    let chunks = |s: &mut ChunkSender, now| chunks_sent(s, now).len();
    let first = chunks(&mut s, t0);
    assert!(first > 0);
    let mut now = t0;
    let mut again = Vec::new();
    while now < t0 + idle - Duration::from_millis(500) {
        now += Duration::from_millis(500);
        s.handle_message(now, &request);
        again.push(chunks(&mut s, now));
        if s.poll_timeout().is_some_and(|t| t <= now) {
            s.handle_timeout(now);
        }
    }
    let resent: usize = again.iter().sum();
    assert!(
        resent <= first * 2,
        "{resent} chunks sent again for {} repeated Requests (first flight {first})",
        again.len()
    );
    s.handle_timeout(t0 + idle);
    assert!(
        s.is_done(),
        "the upload outlived its idle timeout on Requests alone"
    );
}

/// One source's share of a multi-source download: only the pieces of the range are sent,
/// each verified, and both sides finish (on a clean and on a lossy link).
#[test]
fn a_range_is_sent_and_verified_alone() {
    use crate::testing::{Odds, Pieces, RandomLink};
    let file = sample(40_000);
    for seed in 0..8 {
        let config = PairConfig {
            pieces: Some(Pieces {
                piece_size: 4096,
                offset: 8192,
                end: Some(8192 + 3 * 4096),
            }),
            ..config(700)
        };
        let mut link = RandomLink::new(seed, Odds::LOSSY);
        let mut pair = Pair::new(file.clone(), config).with_link(move |s| link.fate(s));
        let outcome = pair.run(200_000);
        assert!(outcome.finished(), "seed {seed}: {outcome:?}");
        assert_eq!(pair.written, &file[..8192 + 3 * 4096], "seed {seed}");
        let verified = pair.receiver_events.iter().filter_map(|e| match e {
            ReceiverEvent::PieceVerified { verified } => Some(*verified),
            _ => None,
        });
        assert_eq!(verified.last(), Some(8192 + 3 * 4096), "seed {seed}");
    }
}

/// A range must end at a piece boundary (or the file's end) past its start.
#[test]
fn a_range_off_the_piece_grid_is_refused_before_asking() {
    let file = sample(40_000);
    for end in [8192 + 100, 8192, 4096, 50_000] {
        let config = PairConfig {
            pieces: Some(crate::testing::Pieces {
                piece_size: 4096,
                offset: 8192,
                end: Some(end),
            }),
            ..config(700)
        };
        let pair = Pair::new(file.clone(), config);
        assert!(pair.receiver.is_done(), "end {end}");
    }
}

/// A sender paused far longer than both idle timeouts (its upload slot lent to others in
/// turn), its receiver told `Queued` every second meanwhile: neither side gives up, and the
/// transfer completes byte-exact once resumed. Without the reminders the receiver gives up.
#[test]
fn a_paused_transfer_outlives_the_idle_timeouts_and_completes_when_resumed() {
    use std::cell::Cell;
    use std::rc::Rc;
    for remind in [true, false] {
        let cut = Rc::new(Cell::new(false));
        let link_cut = cut.clone();
        let mut pair = Pair::new(sample(200_000), config(1000)).with_link(move |_| {
            if link_cut.get() {
                Fate::Drop
            } else {
                Fate::Deliver
            }
        });
        while pair.receiver.received() < 50_000 {
            assert!(pair.step());
        }
        let now = pair.now;
        pair.sender.as_mut().expect("requested").pause(now);
        // What was in flight is lost, and the receiver's ACKs go nowhere.
        cut.set(true);
        let transfer = pair.receiver.transfer();
        let paused_at = pair.now;
        let mut told = paused_at;
        while pair.now < paused_at + Duration::from_secs(40) && pair.receiver_end().is_none() {
            if remind && pair.now >= told + Duration::from_secs(1) {
                told = pair.now;
                let queued = Message::Queued { transfer, ahead: 3 };
                pair.receiver.handle_message(pair.now, &queued);
            }
            if !pair.step() {
                break; // nothing due: the receiver has ended
            }
        }
        assert!(pair.sender_end().is_none(), "{:?}", pair.sender_end());
        if !remind {
            assert!(
                matches!(
                    pair.receiver_end(),
                    Some(ReceiverEvent::Failed(TransferError::Timeout { .. }))
                ),
                "{:?}",
                pair.receiver_end()
            );
            continue;
        }
        assert!(pair.receiver_end().is_none(), "{:?}", pair.receiver_end());
        cut.set(false);
        let now = pair.now;
        pair.sender.as_mut().expect("requested").resume(now);
        pair.drive(100_000);
        assert!(pair.finished(), "{:?}", pair.receiver_events);
        assert_eq!(pair.written, pair.file());
    }
}

/// `cap_in_flight` bounds the chunks in flight below what the windows allow (at least one),
/// and lifting it lets the window fill again.
#[test]
fn a_cap_on_bytes_in_flight_holds_below_the_window() {
    let t0 = Instant::now();
    let config = SenderConfig {
        pacing: false,
        ..SenderConfig::default()
    };
    let mut s = requested_sender(t0, TransferId(9), config);
    let chunks = |s: &mut ChunkSender| chunks_sent(s, t0).len();
    let window = s.congestion_window() as usize;
    assert!(window > 5, "the initial window is {window} chunks");
    s.cap_in_flight(5_500);
    assert_eq!(chunks(&mut s), 5, "5 whole chunks fit in 5,500 bytes");
    s.cap_in_flight(10);
    assert_eq!(
        chunks(&mut s),
        0,
        "5 in flight, over a cap of less than a chunk"
    );
    s.cap_in_flight(u64::MAX);
    assert_eq!(chunks(&mut s), window - 5, "the window again");
}
