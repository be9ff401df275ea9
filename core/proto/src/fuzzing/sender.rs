//! The [`ChunkSender`] target.

use std::time::{Duration, Instant};

use super::shared::{assert_sendable, Input, RunSummary};
use crate::testing::{abort_reason, seal};
use crate::transfer::{chunk_count, ChunkSender, SenderConfig, SenderEvent, SenderTransmit};
use crate::wire::{decode, BoundedVec, ContentHash, FileId, Message, TransferId};

/// What the sender harness knows of the transfer and of what was seen so far.
struct SenderCheck {
    start_offset: u64,
    size: u64,
    hash: ContentHash,
    config: SenderConfig,
    total: u64,
    /// One past the highest chunk ever transmitted (the sender's `next_new`).
    sent_end: u64,
    acked: u64,
    chunk_transmits: u64,
    bytes: u64,
    terminal: bool,
    summary: RunSummary,
    fin_acked: bool,
    aborts_after_done: u32,
}

impl SenderCheck {
    /// Drains transmits and events of `s` at `now` and checks every invariant.
    fn drain(&mut self, s: &mut ChunkSender, now: Instant) {
        let mut guard = 0;
        while let Some(t) = s.poll_transmit(now) {
            guard += 1;
            assert!(guard < 100_000, "poll_transmit never returns None");
            match t {
                SenderTransmit::Chunk { seq, offset, len } => {
                    assert!(
                        !s.is_done(),
                        "chunk {seq} transmitted after the transfer ended"
                    );
                    let cs = u64::from(self.config.chunk_size);
                    assert!(seq < self.total, "chunk {seq} beyond the file");
                    assert_eq!(
                        offset,
                        self.start_offset + seq * cs,
                        "offset of chunk {seq}"
                    );
                    assert!(u64::from(len) <= cs, "chunk longer than chunk_size");
                    assert!(offset + u64::from(len) <= self.size, "chunk past the end");
                    assert_eq!(u64::from(len), (self.size - offset).min(cs), "short chunk");
                    assert!(seq >= s.acked_chunks(), "resent chunk {seq} already acked");
                    assert!(
                        seq < s.acked_chunks() + self.config.max_window,
                        "chunk {seq} beyond max_window {} past ack {}",
                        self.config.max_window,
                        s.acked_chunks()
                    );
                    self.sent_end = self.sent_end.max(seq + 1);
                    self.chunk_transmits += 1;
                    self.bytes += u64::from(len);
                }
                SenderTransmit::Control(m) => {
                    assert_sendable(&m);
                    match &m {
                        Message::Accept {
                            size,
                            chunk_size,
                            hash,
                            ..
                        } => {
                            assert_eq!(
                                (*size, *chunk_size, *hash),
                                (self.size, self.config.chunk_size, self.hash)
                            );
                            assert!(!s.is_done(), "Accept after the transfer ended");
                        }
                        Message::Fin { size, hash, .. } => {
                            assert_eq!((*size, *hash), (self.size, self.hash), "Fin totals");
                            assert_eq!(s.acked_chunks(), self.total, "Fin before every ack");
                            assert!(!s.is_done(), "Fin after the transfer ended");
                        }
                        Message::Abort { .. } => {
                            assert!(s.is_done(), "Abort sent while running");
                            self.aborts_after_done += 1;
                            assert!(self.aborts_after_done <= 1, "Abort sent twice");
                        }
                        other => panic!("sender emitted {other:?}"),
                    }
                }
            }
        }
        while let Some(e) = s.poll_event() {
            assert!(
                !self.terminal,
                "sender event {e:?} after the transfer ended"
            );
            self.terminal = true;
            self.summary.failed = e != SenderEvent::Finished;
            self.summary.finished = e == SenderEvent::Finished;
            if e == SenderEvent::Finished {
                assert!(self.fin_acked, "finished without a FinAck");
                assert_eq!(s.acked_chunks(), self.total, "finished before every ack");
            }
        }
        assert!(
            s.acked_chunks() >= self.acked,
            "cumulative ack went backwards"
        );
        self.acked = s.acked_chunks();
        assert!(self.acked <= self.total, "acked past the end");
        assert_eq!(s.is_done(), self.terminal, "is_done() vs events");
        assert_eq!(
            s.poll_timeout().is_none(),
            s.is_done(),
            "poll_timeout must be Some exactly while running"
        );
        let st = s.stats();
        assert_eq!(st.bytes_sent, self.bytes, "stats.bytes_sent");
        assert_eq!(
            st.chunks_sent + st.chunks_retransmitted,
            self.chunk_transmits,
            "stats chunk counters"
        );
    }
}

/// Feeds a [`ChunkSender`] arbitrary receiver messages (Ack, FinAck, Abort, Request, decoded
/// raw frames) and timer ticks read from `data`, and checks: no panic; every chunk transmit
/// lies inside the file (`offset + len <= size`, `len <= chunk_size`) and inside
/// `[acked, acked + max_window)`; `poll_timeout` is `Some` exactly while not done; nothing but
/// one `Abort` goes out after the end; `Fin` only once every chunk is acknowledged; at most one
/// Finished/Failed event, Finished only after a FinAck.
pub fn sender_target(data: &[u8]) {
    sender_run(data);
}

/// [`sender_target`], returning how the transfer ended.
pub fn sender_run(data: &[u8]) -> RunSummary {
    let mut input = Input { data };
    let flags = input.u8();
    let size = if flags & 2 != 0 {
        u64::from(input.u32()) << 8
    } else {
        u64::from(input.u16() & 0x3fff)
    };
    let config = SenderConfig {
        chunk_size: 1 + u32::from(input.u8() % 64),
        max_window: 1 + u64::from(input.u8() % 32),
        initial_window: 1 + u64::from(input.u8() % 16),
        initial_rto: Duration::from_millis(300),
        min_rto: Duration::from_millis(50),
        max_rto: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(5),
        dup_thresh: 1 + u64::from(input.u8() % 4),
        reliable: flags & 1 != 0,
        congestion: if flags & 16 != 0 {
            crate::transfer::congestion::CongestionKind::NewReno
        } else {
            crate::transfer::congestion::CongestionKind::Bbr
        },
        pacing: flags & 32 == 0,
    };
    let start_chunk = u64::from(input.u8());
    let hash = ContentHash([flags; 32]);
    let transfer = TransferId(9);
    let mut now = Instant::now();
    let start_offset = (start_chunk * u64::from(config.chunk_size)).min(size);
    let total = chunk_count(size - start_offset, config.chunk_size);
    let mut s = ChunkSender::new(now, transfer, size, hash, start_offset, config.clone());
    let mut check = SenderCheck {
        size,
        hash,
        total,
        start_offset,
        sent_end: 0,
        acked: 0,
        chunk_transmits: 0,
        bytes: 0,
        terminal: false,
        summary: RunSummary::default(),
        fin_acked: false,
        aborts_after_done: 0,
        config,
    };
    check.drain(&mut s, now);

    let mut steps = 0;
    while !input.is_empty() && steps < 4096 {
        steps += 1;
        let mut msg: Option<Message> = None;
        match input.u8() % 12 {
            0 => {
                // A plausible ACK: a cumulative point among the chunks sent, plus SACK ranges
                // drawn from a bitmap of the next chunks.
                let span = check.sent_end - check.acked;
                let cumulative = check.acked + u64::from(input.u8()) % (span + 1);
                let bits = input.u16();
                let mut sack: Vec<(u64, u64)> = Vec::new();
                for i in 0..16u64 {
                    let seq = cumulative + 1 + i;
                    if bits & (1 << i) == 0 || seq >= check.sent_end {
                        continue;
                    }
                    match sack.last_mut() {
                        Some((_, e)) if *e == seq => *e += 1,
                        _ => sack.push((seq, seq + 1)),
                    }
                }
                msg = Some(Message::Ack {
                    transfer,
                    cumulative,
                    sack: BoundedVec(sack),
                    window: u32::from(input.u8() % 40),
                });
            }
            1 => {
                let cumulative = u64::from(input.u16());
                let n = input.u8() % 4;
                let sack = (0..n).map(|_| (u64::from(input.u16()), u64::from(input.u16())));
                msg = Some(Message::Ack {
                    transfer,
                    cumulative,
                    sack: BoundedVec(sack.collect()),
                    window: u32::from(input.u16()),
                });
            }
            2 => {
                msg = Some(Message::Ack {
                    transfer,
                    cumulative: check.sent_end,
                    sack: BoundedVec(vec![]),
                    window: 64,
                })
            }
            3 => msg = Some(Message::FinAck { transfer }),
            4 => {
                msg = Some(Message::Abort {
                    transfer,
                    reason: abort_reason(input.u8()),
                })
            }
            5 => {
                msg = Some(Message::Request {
                    transfer,
                    file: FileId(1),
                    offset: u64::from(input.u8()),
                    end: None,
                })
            }
            6 => {
                now += Duration::from_millis(u64::from(input.u16()));
                if s.poll_timeout().is_some_and(|t| now >= t) {
                    s.handle_timeout(now);
                }
            }
            7 => {
                if let Some(t) = s.poll_timeout() {
                    now = now.max(t);
                    s.handle_timeout(now);
                }
            }
            8 => {
                let n = usize::from(input.u8());
                msg = decode(&seal(input.bytes(n))).ok();
            }
            9 => s.abort(abort_reason(input.u8())),
            10 => {
                msg = Some(match input.u8() % 3 {
                    0 => Message::Fin {
                        transfer,
                        size,
                        hash,
                    },
                    1 => Message::Data {
                        transfer,
                        seq: 0,
                        payload: vec![1].into(),
                    },
                    _ => Message::Accept {
                        transfer,
                        size,
                        chunk_size: 1,
                        hash,
                    },
                })
            }
            _ => {
                // An early timer call: allowed, must be harmless.
                now += Duration::from_millis(u64::from(input.u8()));
                s.handle_timeout(now);
            }
        }
        if let Some(m) = msg {
            // Only what `decode` would let through reaches the sender.
            if m.validate().is_ok() {
                if matches!(m, Message::FinAck { .. }) && s.acked_chunks() == check.total {
                    check.fin_acked = true;
                }
                s.handle_message(now, &m);
            }
        }
        check.drain(&mut s, now);
    }
    check.summary
}
