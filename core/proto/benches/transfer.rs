//! Per-chunk cost of the transfer state machines: a `ChunkSender` and a `ChunkReceiver` move an
//! in-memory 8 MiB file to each other, with no network, no loss and a fake clock, the way the
//! endpoint drives them (drain transmits, then events, then timers). Throughput is in file
//! bytes, so `time / (8 MiB / chunk size)` is the cost of one chunk through both machines.
//!
//! - `machines`: messages are handed over as values (the state machines alone, plus building
//!   each `Data` from the file bytes, which a driver has to do anyway);
//! - `machines+wire`: every message is also encoded and decoded, as on a real transport.
//!
//! Chunk sizes and settings follow the endpoint: 1404-byte chunks with congestion control
//! (UDP), 64 KiB chunks with a fixed window (TCP, `reliable`).
//!
//! `cargo bench -p p2p-core --bench transfer` (add `-- --quick` for a short run; with `--quick`,
//! select the criterion targets: `cargo bench -p p2p-core --bench '*' -- --quick`, because the
//! lib's libtest bench harness rejects `--quick`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use p2p_proto::transfer::{
    ChunkReceiver, ChunkSender, ReceiverConfig, ReceiverEvent, SenderConfig, SenderTransmit,
};
use p2p_proto::wire::{decode, ContentHash, FileId, Message, TransferId};

const FILE_SIZE: usize = 8 * 1024 * 1024;
/// Fake time that passes per round of the loop.
const TICK: Duration = Duration::from_micros(20);

fn file_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// UDP-like (`reliable == false`) or TCP-like settings for `chunk_size`.
fn sender_config(chunk_size: u32, reliable: bool) -> SenderConfig {
    let mut c = SenderConfig {
        chunk_size,
        ..SenderConfig::default()
    };
    if reliable {
        c.reliable = true;
        c.min_rto = c.min_rto.max(Duration::from_secs(1));
    }
    c
}

/// Through the wire encoding, or as values.
fn carry(msg: Message, wire: bool) -> Message {
    if wire {
        decode(&msg.encode()).expect("our own encoding decodes")
    } else {
        msg
    }
}

/// Moves `file` from a sender to a receiver; returns the bytes the receiver handed out.
fn run(file: &[u8], hash: ContentHash, config: &SenderConfig, wire: bool) -> u64 {
    let size = file.len() as u64;
    let id = TransferId(42);
    let mut now = Instant::now();
    let mut sender = ChunkSender::new(now, id, size, hash, 0, config.clone());
    let mut receiver = ChunkReceiver::new(
        now,
        id,
        FileId(1),
        Some((size, hash)),
        ReceiverConfig::default(),
    );
    let mut written = 0u64;
    let mut finished = false;
    // Generous bound: a stuck loop must fail the bench, not hang it.
    let max_rounds = 100 * (file.len() / config.chunk_size as usize + 100);
    for _ in 0..max_rounds {
        while let Some(m) = receiver.poll_transmit(now) {
            let m = carry(m, wire);
            sender.handle_message(now, &m);
        }
        while let Some(t) = sender.poll_transmit(now) {
            let m = match t {
                SenderTransmit::Control(m) => m,
                SenderTransmit::Chunk { seq, offset, len } => {
                    let start = offset as usize;
                    Message::Data {
                        transfer: id,
                        seq,
                        payload: file[start..start + len as usize].to_vec().into(),
                    }
                }
            };
            receiver.handle_message(now, &carry(m, wire));
        }
        while let Some(e) = receiver.poll_event() {
            match e {
                ReceiverEvent::Write(bytes) => written += black_box(bytes).len() as u64,
                ReceiverEvent::Finished { .. } => finished = true,
                ReceiverEvent::Failed(err) => panic!("transfer failed: {err}"),
                _ => {}
            }
        }
        while sender.poll_event().is_some() {}
        if finished && sender.is_done() {
            assert_eq!(written, size, "receiver wrote every byte");
            return written;
        }
        now += TICK;
        if receiver.poll_timeout().is_some_and(|t| t <= now) {
            receiver.handle_timeout(now);
        }
        if sender.poll_timeout().is_some_and(|t| t <= now) {
            sender.handle_timeout(now);
        }
    }
    panic!("transfer did not finish in {max_rounds} rounds ({written} of {size} bytes written)");
}

fn transfer(c: &mut Criterion) {
    let file = file_bytes(FILE_SIZE);
    let hash = ContentHash::of(&file);
    let cases = [
        ("udp_1404B", sender_config(1404, false)),
        ("tcp_64KiB", sender_config(64 * 1024, true)),
    ];
    for wire in [false, true] {
        let name = if wire { "machines+wire" } else { "machines" };
        let mut g = c.benchmark_group(format!("transfer_8MiB/{name}"));
        g.throughput(Throughput::Bytes(FILE_SIZE as u64));
        g.sample_size(10);
        for (label, config) in &cases {
            g.bench_function(*label, |b| b.iter(|| run(&file, hash, config, wire)));
        }
        g.finish();
    }
}

criterion_group!(benches, transfer);
criterion_main!(benches);
