//! Fuzz entry points for the protocol core, shared by the cargo-fuzz targets in `fuzz/` and by
//! the corpus replay test `core/tests/fuzz_corpus.rs` (so `cargo test` runs the corpus on
//! stable).
//!
//! Each `*_target` takes arbitrary bytes and panics only when an invariant of the code under
//! test breaks: the bytes are read as a small program (a header, then operations) that drives
//! one state machine with a fake clock, checking its outputs after every step. Reading past
//! the end of the input yields zeros, so every byte string is a valid program.
//!
//! Not part of the stable API: hidden from the docs, free to change with the fuzz targets.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::tracker::{validate_name, RegisterError, Registry, RegistryConfig};
use crate::transfer::{
    chunk_count, ChunkReceiver, ChunkSender, ReceiverConfig, ReceiverEvent, SenderConfig,
    SenderEvent, SenderTransmit,
};
use crate::wire::{
    decode, AbortReason, BoundedVec, ContentHash, FileId, Message, RequestId, TransferId,
    TransportKind, HEADER_LEN, MAGIC, PROTOCOL_VERSION,
};

/// Wraps a message body in a valid envelope (magic, version, CRC-32 of `body`), so that
/// mutated bodies get past the checksum and reach the body decoder.
pub fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.push(PROTOCOL_VERSION);
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Reads fuzz input as little-endian integers; past the end every read yields zero.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
}

/// Byte `i` of the synthetic file the transfer targets send (any length, never stored).
fn content_byte(seed: u8, i: u64) -> u8 {
    let x = i
        .wrapping_add(u64::from(seed))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8
}

fn content(seed: u8, from: u64, len: u64) -> Vec<u8> {
    (from..from + len).map(|i| content_byte(seed, i)).collect()
}

fn abort_reason(b: u8) -> AbortReason {
    match b % 8 {
        0 => AbortReason::NoSuchFile,
        1 => AbortReason::Busy,
        2 => AbortReason::BadRequest,
        3 => AbortReason::FileChanged,
        4 => AbortReason::Timeout,
        5 => AbortReason::HashMismatch,
        6 => AbortReason::Shutdown,
        _ => AbortReason::Other("fuzz".into()),
    }
}

/// Checks that `msg` is one the peer would accept: valid limits and an exact round trip.
fn assert_sendable(msg: &Message) {
    assert_eq!(
        msg.validate(),
        Ok(()),
        "state machine emitted an invalid {msg:?}"
    );
    assert_eq!(
        decode(&msg.encode()).as_ref(),
        Ok(msg),
        "emitted message does not round-trip"
    );
}

/// `decode` never panics on any input, and whatever it accepts re-encodes to an equal message.
pub fn decode_target(data: &[u8]) {
    for bytes in [data.to_vec(), seal(data)] {
        if let Ok(m) = decode(&bytes) {
            assert_eq!(m.validate(), Ok(()), "decode returned an invalid message");
            let again = m.encode();
            assert_eq!(
                decode(&again),
                Ok(m),
                "re-encoded message does not round-trip"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Receiver
// ---------------------------------------------------------------------------------------------

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
    fn drain(&mut self, r: &mut ChunkReceiver) {
        self.drain_once(r);
        while !self.jobs.is_empty() {
            let mut jobs = std::mem::take(&mut self.jobs);
            if self.reverse {
                jobs.reverse();
            }
            for job in jobs {
                r.piece_hashed(job.index(), job.hash());
            }
            self.drain_once(r);
        }
    }

    fn drain_once(&mut self, r: &mut ChunkReceiver) {
        while let Some(m) = r.poll_transmit() {
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

/// How a target's run ended, for tests that check a seed reaches what it was written for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// A Finished event was seen.
    pub finished: bool,
    /// A Failed event was seen.
    pub failed: bool,
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
    check.drain(&mut r);

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
            r.handle_message(now, m);
            check.drain(&mut r);
        }
        check.drain(&mut r);
    }
    check.summary
}

// ---------------------------------------------------------------------------------------------
// Sender
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------------------------

/// One step of a registry scenario.
#[derive(Clone, Debug)]
pub enum RegistryOp {
    /// `register(name, source, port, transport)`.
    Register {
        /// Index into [`REGISTRY_NAMES`].
        name: u8,
        /// Last octet of the source IP (`10.0.0.x`).
        ip: u8,
        /// Source port (ignored by the registry) and listening port.
        port: u16,
        /// UDP or TCP.
        tcp: bool,
    },
    /// `unregister(name, source_ip)`.
    Unregister {
        /// Index into [`REGISTRY_NAMES`].
        name: u8,
        /// Last octet of the source IP.
        ip: u8,
    },
    /// `expire(now)`.
    Expire,
    /// `list(now)` (checked after every op anyway).
    List,
    /// Advance the clock by this many milliseconds.
    Advance(u32),
}

/// The small name space the registry scenarios draw from (the last three are invalid names).
pub const REGISTRY_NAMES: [&str; 8] = ["alice", "bob", "carol", "dave", "eve", "", "a b", "x\n"];

/// Runs `ops` against a [`Registry`] with `config`, next to a model of which peer holds which
/// name until when, and checks: `len() <= max_peers`; `list()` has unique, sorted names and
/// only live entries at the address and transport of their last successful registration; a
/// live name is never taken over from another address or transport; `expire` drops only
/// expired entries and leaves none; `Full` only when every slot holds a live peer;
/// `unregister` succeeds only from the registered IP.
pub fn check_registry_ops(config: RegistryConfig, ops: &[RegistryOp]) {
    let max = config.max_peers;
    let ttl = config.ttl;
    let mut reg = Registry::new(config);
    let mut now = Instant::now();
    // name -> (addr, transport, valid_until) of the last successful registration.
    let mut model: BTreeMap<String, (SocketAddr, TransportKind, Instant)> = BTreeMap::new();
    let ip_of = |x: u8| IpAddr::V4(Ipv4Addr::new(10, 0, 0, x % 4));
    for op in ops {
        match *op {
            RegistryOp::Register {
                name,
                ip,
                port,
                tcp,
            } => {
                let name = REGISTRY_NAMES[usize::from(name) % REGISTRY_NAMES.len()];
                let port = port % 4; // small, with port 0 (invalid) in range
                let transport = if tcp {
                    TransportKind::Tcp
                } else {
                    TransportKind::Udp
                };
                let source = SocketAddr::new(ip_of(ip), 40_000 + port);
                let addr = SocketAddr::new(source.ip(), port);
                let live = |m: &BTreeMap<String, (SocketAddr, TransportKind, Instant)>| {
                    m.values().filter(|e| e.2 > now).count()
                };
                let holder = model.get(name).filter(|e| e.2 > now).copied();
                let result = reg.register(now, name, source, port, transport);
                match &result {
                    Ok(_) => {
                        assert!(
                            validate_name(name).is_ok() && port != 0,
                            "accepted bad input"
                        );
                        if let Some((a, t, _)) = holder {
                            assert_eq!(
                                (a, t),
                                (addr, transport),
                                "live name `{name}` taken over from {a} by {addr}"
                            );
                        }
                        model.insert(name.to_string(), (addr, transport, now + ttl));
                    }
                    Err(RegisterError::NameTaken { holder: h, .. }) => {
                        let (a, t, _) = holder.expect("NameTaken for a name no live peer holds");
                        assert_eq!(*h, a, "NameTaken names the wrong holder");
                        assert!((a, t) != (addr, transport), "refresh refused");
                    }
                    Err(RegisterError::Full(n)) => {
                        assert_eq!(*n, max);
                        assert!(holder.is_none(), "refresh refused as full");
                        assert!(live(&model) >= max, "Full with free slots");
                    }
                    Err(RegisterError::BadName(_)) => assert!(validate_name(name).is_err()),
                    Err(RegisterError::BadPort) => assert_eq!(port, 0),
                }
            }
            RegistryOp::Unregister { name, ip } => {
                let name = REGISTRY_NAMES[usize::from(name) % REGISTRY_NAMES.len()];
                let ip = ip_of(ip);
                if reg.unregister(name, ip) {
                    let (a, _, _) = model
                        .remove(name)
                        .expect("unregistered a name never registered");
                    assert_eq!(a.ip(), ip, "unregistered from another IP");
                }
            }
            RegistryOp::Expire => {
                for gone in reg.expire(now) {
                    let (_, _, until) = model.remove(&gone).expect("expired an unknown name");
                    assert!(until <= now, "expired the live entry `{gone}`");
                }
                assert_eq!(reg.len(), reg.list(now).len(), "expire left dead entries");
            }
            RegistryOp::List => {}
            RegistryOp::Advance(ms) => now += Duration::from_millis(u64::from(ms)),
        }
        assert!(reg.len() <= max, "{} entries, limit {max}", reg.len());
        let list = reg.list(now);
        assert!(
            list.windows(2).all(|w| w[0].name < w[1].name),
            "list not unique and sorted: {list:?}"
        );
        for p in &list {
            let (a, t, until) = model
                .get(&p.name)
                .unwrap_or_else(|| panic!("listed `{}` never registered", p.name));
            assert!(*until > now, "listed the expired entry `{}`", p.name);
            assert_eq!((p.addr, p.transport), (*a, *t), "listed a stale address");
        }
        let live = model.values().filter(|e| e.2 > now).count();
        assert_eq!(list.len(), live, "a live entry is missing from the list");
    }
}

/// Reads a registry scenario from `data` (config, then operations) and runs
/// [`check_registry_ops`] on it.
pub fn registry_target(data: &[u8]) {
    let mut input = Input { data };
    let config = RegistryConfig {
        ttl: Duration::from_millis(1 + u64::from(input.u16())),
        heartbeat: Duration::from_secs(1),
        max_peers: 1 + usize::from(input.u8() % 4),
    };
    let mut ops = Vec::new();
    while !input.is_empty() && ops.len() < 4096 {
        ops.push(match input.u8() % 6 {
            0 | 1 => RegistryOp::Register {
                name: input.u8(),
                ip: input.u8(),
                port: u16::from(input.u8()),
                tcp: input.bool(),
            },
            2 => RegistryOp::Unregister {
                name: input.u8(),
                ip: input.u8(),
            },
            3 => RegistryOp::Expire,
            4 => RegistryOp::List,
            _ => RegistryOp::Advance(u32::from(input.u16())),
        });
    }
    check_registry_ops(config, &ops);
}

/// One message of every variant (with every `AbortReason` and `RegisterOutcome`), for seed
/// corpora and tests.
pub fn sample_messages() -> Vec<Message> {
    let transfer = TransferId(3);
    let request = RequestId(11);
    let hash = ContentHash::of(b"hello");
    let peer = crate::wire::PeerInfo {
        name: "alice".into(),
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 9001),
        transport: TransportKind::Udp,
    };
    let peer6 = crate::wire::PeerInfo {
        name: "bob".into(),
        addr: "[2001:db8::1]:9002".parse().expect("valid address"),
        transport: TransportKind::Tcp,
    };
    let entry = crate::wire::IndexEntry {
        id: FileId(1),
        path: "docs/file1.txt".into(),
        size: 1234,
        hash,
    };
    let mut out = vec![
        Message::Register {
            request,
            name: "alice".into(),
            port: 9001,
            transport: TransportKind::Udp,
        },
        Message::Heartbeat {
            request,
            name: "alice".into(),
            port: 9001,
            transport: TransportKind::Tcp,
        },
        Message::RegisterReply {
            request,
            outcome: crate::wire::RegisterOutcome::Accepted {
                ttl_ms: 30_000,
                heartbeat_ms: 10_000,
            },
        },
        Message::RegisterReply {
            request,
            outcome: crate::wire::RegisterOutcome::Refused {
                reason: "name taken".into(),
            },
        },
        Message::Unregister {
            request,
            name: "alice".into(),
        },
        Message::UnregisterReply { request },
        Message::ListPeers { request, page: 0 },
        Message::PeerList {
            request,
            page: 0,
            pages: 1,
            peers: BoundedVec(vec![peer, peer6]),
        },
        Message::IndexRequest { request, page: 0 },
        Message::IndexPage {
            request,
            page: 0,
            pages: 2,
            share: "shared".into(),
            entries: BoundedVec(vec![entry]),
        },
        Message::Error {
            request,
            reason: "no such page".into(),
        },
        Message::PieceRequest {
            request,
            file: FileId(1),
            hash,
            first: 0,
        },
        Message::PieceHashes {
            request,
            piece_size: crate::wire::PIECE_SIZE,
            pieces: 3,
            first: 1,
            hashes: BoundedVec(vec![hash, ContentHash([7; 32])]),
        },
        Message::Request {
            transfer,
            file: FileId(1),
            offset: 0,
        },
        Message::Request {
            transfer,
            file: FileId(1),
            offset: u64::from(crate::wire::PIECE_SIZE),
        },
        Message::Accept {
            transfer,
            size: 5,
            chunk_size: 1024,
            hash,
        },
        Message::Data {
            transfer,
            seq: 0,
            payload: bytes::Bytes::from_static(b"hello"),
        },
        Message::Ack {
            transfer,
            cumulative: 1,
            sack: BoundedVec(vec![(3, 5), (7, 8)]),
            window: 64,
        },
        Message::Fin {
            transfer,
            size: 5,
            hash,
        },
        Message::FinAck { transfer },
    ];
    out.extend((0..8).map(|b| Message::Abort {
        transfer,
        reason: abort_reason(b),
    }));
    out
}
