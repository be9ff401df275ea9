//! Per-chunk cost of the transfer state machines: a `ChunkSender` and a `ChunkReceiver` move an
//! in-memory 8 MiB file to each other on `p2p_proto::testing::Pair`, with no loss and a fake
//! clock, the way the endpoint drives them (drain transmits, then events, then timers; every
//! message due at an instant handled before either side answers). Throughput is in file bytes,
//! so `time / (8 MiB / chunk size)` is the cost of one chunk through both machines (and the
//! pair's bookkeeping: a queue insertion and removal per message).
//!
//! - `machines`: messages are handed over as values (the state machines alone, plus building
//!   each `Data` from the file bytes, which a driver has to do anyway);
//! - `machines+wire`: every message is also encoded and decoded, as on a real transport.
//!
//! Chunk sizes and settings follow the endpoint: 1404-byte chunks with congestion control
//! (UDP), 64 KiB chunks with a fixed window (TCP, `reliable`).
//!
//! `cargo bench -p p2p-proto --bench transfer` (add `-- --quick` for a short run; with
//! `--quick`, select the criterion targets: `cargo bench -p p2p-proto --bench '*' -- --quick`,
//! because the lib's libtest bench harness rejects `--quick`).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use p2p_proto::testing::{Carry, Pair, PairConfig};
use p2p_proto::transfer::{ReceiverConfig, SenderConfig};
use p2p_proto::wire::TransferId;

const FILE_SIZE: usize = 8 * 1024 * 1024;
/// One-way delay: a round trip of 20 µs.
const LATENCY: Duration = Duration::from_micros(10);

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

/// A clean link of [`LATENCY`], messages carried as `carry` says, handled in bursts; the
/// written bytes only counted.
fn pair_config(sender: SenderConfig, carry: Carry) -> PairConfig {
    PairConfig {
        transfer: TransferId(42),
        sender,
        receiver: ReceiverConfig::default(),
        expected: true,
        pieces: None,
        latency: LATENCY,
        carry,
        burst: usize::MAX,
        keep_written: false,
    }
}

/// Moves the pair's file from its sender to its receiver; returns the bytes the receiver
/// handed out.
fn run(pair: &mut Pair) -> u64 {
    let size = pair.file().len() as u64;
    let chunk_size = u64::from(pair.sender_config.chunk_size);
    // Generous bound: a stuck pair must fail the bench, not hang it.
    let max_steps = 100 * (size / chunk_size + 100) as usize;
    let outcome = pair.run(max_steps);
    assert!(outcome.finished(), "transfer did not finish: {outcome:?}");
    assert_eq!(outcome.written, size, "receiver wrote every byte");
    outcome.written
}

fn transfer(c: &mut Criterion) {
    let file = file_bytes(FILE_SIZE);
    let cases = [
        ("udp_1404B", sender_config(1404, false)),
        ("tcp_64KiB", sender_config(64 * 1024, true)),
    ];
    for carry in [Carry::Values, Carry::Wire] {
        let name = match carry {
            Carry::Values => "machines",
            Carry::Wire => "machines+wire",
        };
        let mut g = c.benchmark_group(format!("transfer_8MiB/{name}"));
        g.throughput(Throughput::Bytes(FILE_SIZE as u64));
        g.sample_size(10);
        for (label, config) in &cases {
            let config = pair_config(config.clone(), carry);
            g.bench_function(*label, |b| {
                // Copying and hashing the file is the setup, not measured.
                b.iter_batched(
                    || Pair::new(file.clone(), config.clone()),
                    |mut pair| {
                        run(&mut pair);
                        pair
                    },
                    BatchSize::PerIteration,
                )
            });
        }
        g.finish();
    }
}

criterion_group!(benches, transfer);
criterion_main!(benches);
