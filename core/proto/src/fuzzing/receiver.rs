//! The [`ChunkReceiver`] target.

use std::time::{Duration, Instant};

use super::shared::{assert_sendable, content, Input, RunSummary};
use crate::testing::{abort_reason, seal};
use crate::transfer::{chunk_count, ChunkReceiver, ReceiverConfig, ReceiverEvent};
use crate::wire::{decode, BoundedVec, ContentHash, FileId, Message, RequestId, TransferId};

/// What the receiver harness knows of the transfer and of the events seen so far.
struct ReceiverCheck {
    window: u32,
    /// Bytes the hasher was fed before the transfer (resume).
    prefix: Vec<u8>,
    written: Vec<u8>,
    accepted: Option<(u64, u32, ContentHash)>,
    /// End of the verified prefix last reported.
    verified: u64,
    terminal: bool,
    summary: RunSummary,
    /// Offloaded hashing: pieces handed out and not yet reported back.
    jobs: Vec<crate::transfer::PieceJob>,
    /// Report them newest first (out of order).
    reverse: bool,
}

impl ReceiverCheck {
    /// Drains transmits and events of `r` and checks every invariant; hands back the hashes
    /// of pieces it was given to hash, then drains again.
    fn drain(&mut self, r: &mut ChunkReceiver, now: Instant) {
        self.drain_once(r, now);
        while !self.jobs.is_empty() {
            let mut jobs = std::mem::take(&mut self.jobs);
            if self.reverse {
                jobs.reverse();
            }
            for job in jobs {
                r.piece_hashed(job.index(), job.hash());
            }
            self.drain_once(r, now);
        }
    }

    fn drain_once(&mut self, r: &mut ChunkReceiver, now: Instant) {
        while let Some(m) = r.poll_transmit(now) {
            assert_sendable(&m);
            if self.terminal {
                // After a failure, nothing; after success, the answers to a sender that
                // missed the end: FIN-ACK, and the ACK of every chunk.
                let ok = self.summary.finished
                    && match &m {
                        Message::FinAck { .. } => true,
                        Message::Ack {
                            cumulative, sack, ..
                        } => {
                            let (size, chunk_size, _) = self.accepted.expect("finished");
                            let rest = size - self.prefix.len() as u64;
                            sack.0.is_empty()
                                && *cumulative == crate::transfer::chunk_count(rest, chunk_size)
                        }
                        _ => false,
                    };
                assert!(ok, "receiver sent {m:?} after it ended");
            }
            if let Message::Ack {
                cumulative,
                sack,
                window,
                ..
            } = &m
            {
                assert_eq!(*window, self.window, "advertised window changed");
                let mut prev = *cumulative;
                for &(s, e) in &sack.0 {
                    assert!(s > prev, "sack ranges overlap or touch: {sack:?}");
                    assert!(
                        e <= cumulative + u64::from(self.window),
                        "sack beyond the advertised window"
                    );
                    prev = e;
                }
            }
        }
        while let Some(e) = r.poll_event() {
            assert!(
                !self.terminal,
                "receiver event {e:?} after the transfer ended"
            );
            match e {
                ReceiverEvent::Queued { .. } => {
                    assert!(self.accepted.is_none(), "queued after the accept");
                }
                ReceiverEvent::Accepted {
                    size,
                    hash,
                    chunk_size,
                } => {
                    assert!(self.accepted.is_none(), "accepted twice");
                    assert!(self.written.is_empty(), "accepted after writing");
                    self.accepted = Some((size, chunk_size, hash));
                }
                ReceiverEvent::Write(bytes) => {
                    assert!(self.accepted.is_some(), "write before accept");
                    assert!(!bytes.is_empty(), "empty write");
                    self.written.extend_from_slice(&bytes);
                }
                ReceiverEvent::HashPiece(job) => {
                    assert!(self.accepted.is_some(), "piece to hash before accept");
                    self.jobs.push(job);
                }
                ReceiverEvent::Finished { received, hash } => {
                    assert_eq!(r.hash_backlog(), 0, "finished with pieces unhashed");
                    self.terminal = true;
                    self.summary.finished = true;
                    let (size, _, announced) = self.accepted.expect("finished before accept");
                    assert_eq!(received, self.written.len() as u64, "Finished.received");
                    assert_eq!(hash, announced, "finished with another hash than announced");
                    let mut all = self.prefix.clone();
                    all.extend_from_slice(&self.written);
                    assert_eq!(all.len() as u64, size, "finished with a wrong length");
                    assert_eq!(
                        ContentHash::of(&all),
                        announced,
                        "finished with wrong bytes"
                    );
                }
                ReceiverEvent::PieceVerified { verified } => {
                    let have = (self.prefix.len() + self.written.len()) as u64;
                    assert!(
                        verified <= have,
                        "verified {verified} of {have} bytes written"
                    );
                    assert!(verified > self.verified, "verified prefix did not grow");
                    self.verified = verified;
                }
                ReceiverEvent::Failed(_) => {
                    self.terminal = true;
                    self.summary.failed = true;
                }
            }
        }
        assert!(
            r.buffered_chunks() <= self.window as usize,
            "buffered {} chunks with a window of {}",
            r.buffered_chunks(),
            self.window
        );
        assert_eq!(
            r.received(),
            self.written.len() as u64,
            "received() vs writes"
        );
        assert_eq!(r.is_done(), self.terminal, "is_done() vs events");
        assert_eq!(
            r.poll_timeout().is_none(),
            r.is_done(),
            "poll_timeout must be Some exactly while running"
        );
    }
}

/// Feeds a [`ChunkReceiver`] a sequence of sender messages and timer ticks read from `data`
/// (synthesized Accept/Data/Fin/Abort variants, decoded raw frames, clock steps) and checks:
/// no panic; `buffered_chunks() <= window`; the written bytes add up to `received()`; events
/// come in order with at most one Finished/Failed and nothing after it; a Finished transfer's
/// bytes hash to the announced hash; every transmitted message is valid on the wire.
pub fn receiver_target(data: &[u8]) {
    receiver_run(data);
}

/// [`receiver_target`], returning how the transfer ended.
pub fn receiver_run(data: &[u8]) -> RunSummary {
    let mut input = Input { data };
    let flags = input.u8();
    let size = u64::from(input.u16() & 0x1fff);
    let chunk_size = 1 + u32::from(input.u16() % 1024);
    let window = 1 + u32::from(input.u8() % 16);
    let ack_every = 1 + u32::from(input.u8() % 4);
    let seed = input.u8();
    let start_byte = input.u8();
    let hash = ContentHash::of(&content(seed, 0, size));
    let total = chunk_count(size, chunk_size);
    let expected = match flags & 3 {
        0 | 1 => None,
        2 => Some((size, hash)),
        _ => Some((size + 1, hash)),
    };
    // Pieces of the smallest valid size; a resume starts at one of their boundaries (or
    // one piece past the end, which must be refused).
    let piece = crate::transfer::MIN_PIECE_SIZE;
    let start_piece = if flags & 4 != 0 {
        u64::from(start_byte) % (size.div_ceil(u64::from(piece)) + 2)
    } else {
        0
    };
    let start_offset = start_piece * u64::from(piece);
    let prefix = content(seed, 0, start_offset.min(size));
    let table = crate::transfer::PieceTable::of(&content(seed, 0, size), piece);
    let config = ReceiverConfig {
        window,
        max_chunk_size: 2048,
        request_retry: Duration::from_millis(100),
        idle_timeout: Duration::from_secs(5),
        ack_every,
        ack_delay: Duration::from_millis(5),
        window_bytes: u64::MAX,
        offload_hashing: flags & 0x20 != 0,
        reack: flags & 0x80 == 0,
        // A fuzzed link may stall for long: only the idle timeout ends it here.
        min_rate: 0,
        min_rate_window: Duration::from_secs(60),
    };
    let transfer = TransferId(7);
    let mut now = Instant::now();
    // A resume past byte 0 trusts its pieces, not a whole-file hash, so it needs `expected`
    // (see `resume_without_expected_never_reports_an_unverified_hash` in
    // core/tests/transfer_findings.rs): mostly resume the way the endpoint does, with it.
    let expected = match expected {
        None if start_offset > 0 && flags & 0x10 == 0 => Some((size, hash)),
        other => other,
    };
    let mut r = if start_offset == 0 && flags & 8 == 0 {
        ChunkReceiver::new(now, transfer, FileId(1), expected, config)
    } else {
        ChunkReceiver::resume(
            now,
            transfer,
            FileId(1),
            expected,
            start_offset,
            table,
            config,
        )
    };
    let mut check = ReceiverCheck {
        window,
        prefix,
        written: Vec::new(),
        accepted: None,
        verified: 0,
        terminal: false,
        summary: RunSummary::default(),
        jobs: Vec::new(),
        reverse: flags & 0x40 != 0,
    };
    check.drain(&mut r, now);

    let data_msg = |check: &ReceiverCheck, seq: u64| -> Message {
        let (asize, acs, _) = check.accepted.unwrap_or((size, chunk_size, hash));
        let offset = start_offset.saturating_add(seq.saturating_mul(u64::from(acs)));
        let len = if offset < asize {
            (asize - offset).min(u64::from(acs))
        } else {
            u64::from(acs).min(16)
        };
        Message::Data {
            transfer,
            seq,
            payload: content(seed, offset.min(1 << 40), len).into(),
        }
    };
    // The next chunk the receiver expects, as far as the harness can tell.
    let next_seq = |check: &ReceiverCheck| -> u64 {
        let acs = check.accepted.map_or(chunk_size, |a| a.1);
        (check.written.len() as u64).div_ceil(u64::from(acs.max(1)))
    };

    let mut steps = 0;
    while !input.is_empty() && steps < 4096 {
        steps += 1;
        let mut msgs: Vec<Message> = Vec::new();
        match input.u8() % 18 {
            0 => msgs.push(Message::Accept {
                transfer,
                size,
                chunk_size,
                hash,
            }),
            1 => msgs.push(Message::Accept {
                transfer,
                size,
                chunk_size: u32::from(input.u16()),
                hash,
            }),
            2 => {
                let other = u64::from(input.u16() & 0x1fff);
                msgs.push(Message::Accept {
                    transfer,
                    size: other,
                    chunk_size,
                    hash: ContentHash::of(&content(seed, 0, other)),
                });
            }
            3 => msgs.push(Message::Accept {
                transfer,
                size,
                chunk_size,
                hash: ContentHash([input.u8(); 32]),
            }),
            4 => {
                let seq = (next_seq(&check) + u64::from(input.u8() % 24)).saturating_sub(4);
                msgs.push(data_msg(&check, seq));
            }
            5 => {
                let seq = (next_seq(&check) + u64::from(input.u8() % 24)).saturating_sub(4);
                let pos = usize::from(input.u8());
                let mut m = data_msg(&check, seq);
                if let Message::Data { payload, .. } = &mut m {
                    if !payload.is_empty() {
                        let i = pos % payload.len();
                        let mut p = payload.to_vec();
                        p[i] ^= 0x55;
                        *payload = p.into();
                    }
                }
                msgs.push(m);
            }
            6 => {
                let seq = next_seq(&check);
                let delta = input.u8();
                let mut m = data_msg(&check, seq);
                if let Message::Data { payload, .. } = &mut m {
                    let mut p = payload.to_vec();
                    if delta & 0x80 != 0 {
                        p.truncate(p.len().saturating_sub(usize::from(delta & 0x7f)));
                    } else {
                        p.extend(std::iter::repeat_n(0, usize::from(delta) + 1));
                    }
                    *payload = p.into();
                }
                msgs.push(m);
            }
            7 => msgs.push(data_msg(&check, u64::from(input.u16()))),
            8 => {
                let (asize, _, ahash) = check.accepted.unwrap_or((size, chunk_size, hash));
                msgs.push(Message::Fin {
                    transfer,
                    size: asize,
                    hash: ahash,
                });
            }
            9 => {
                let (asize, _, mut ahash) = check.accepted.unwrap_or((size, chunk_size, hash));
                let b = input.u8();
                ahash.0[usize::from(b % 32)] ^= 1;
                msgs.push(Message::Fin {
                    transfer,
                    size: if b & 0x80 != 0 { asize + 1 } else { asize },
                    hash: if b & 0x40 != 0 { ahash } else { hash },
                });
            }
            10 => msgs.push(Message::Abort {
                transfer,
                reason: abort_reason(input.u8()),
            }),
            11 => msgs.push(match input.u8() % 4 {
                0 => Message::Request {
                    transfer,
                    file: FileId(1),
                    offset: 0,
                    end: None,
                },
                1 => Message::FinAck { transfer },
                2 => Message::Ack {
                    transfer,
                    cumulative: 0,
                    sack: BoundedVec(vec![]),
                    window: 1,
                },
                _ => Message::UnregisterReply {
                    request: RequestId(1),
                },
            }),
            12 => {
                now += Duration::from_millis(u64::from(input.u16()));
                if r.poll_timeout().is_some_and(|t| now >= t) {
                    r.handle_timeout(now);
                }
            }
            13 => {
                if let Some(t) = r.poll_timeout() {
                    now = now.max(t);
                    r.handle_timeout(now);
                }
            }
            14 => {
                let n = usize::from(input.u8());
                if let Ok(m) = decode(&seal(input.bytes(n))) {
                    msgs.push(m);
                }
            }
            15 => {
                let n = usize::from(input.u8());
                if let Ok(m) = decode(input.bytes(n)) {
                    msgs.push(m);
                }
            }
            16 => {
                // A burst of in-order chunks, so that whole files are reachable.
                let first = next_seq(&check);
                let n = u64::from(input.u8() % 64);
                let limit = check.accepted.map_or(total, |(s, c, _)| chunk_count(s, c));
                for seq in first..(first + n).min(limit) {
                    msgs.push(data_msg(&check, seq));
                }
            }
            _ => r.abort(abort_reason(input.u8())),
        }
        for m in msgs {
            r.handle_message(now, &m);
            check.drain(&mut r, now);
        }
        check.drain(&mut r, now);
    }
    check.summary
}
