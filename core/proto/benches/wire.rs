//! Encoding and decoding cost of the hot messages: `Data` with a UDP-sized (1404 B) and a
//! TCP-sized (64 KiB) payload, and an `Ack` carrying the most SACK ranges allowed (32).
//!
//! `cargo bench -p p2p-core --bench wire` (add `-- --quick` for a short run; note that
//! `cargo bench -p p2p-core -- --quick` fails: the lib's libtest bench harness rejects `--quick`,
//! so select the criterion targets with `--bench '*'` or `--bench wire`).
//!
//! On this project's VMs (AMD EPYC, glibc), a `memcpy` of 64 KiB goes through `rep movsb` and
//! costs tens of µs (about 1-2 GiB/s, versus ~2 µs with
//! `GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=2147483647`): it dominates
//! `data_64KiB/build + encode_into` (the payload copy), not the encoding itself.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use p2p_proto::wire::{decode, BoundedVec, Message, TransferId, MAX_SACK_RANGES};

/// UDP chunk payload (1452-byte datagrams).
const UDP_CHUNK: usize = 1404;
/// TCP chunk payload.
const TCP_CHUNK: usize = 64 * 1024;

fn payload(len: usize) -> Vec<u8> {
    // Not compressible, not all zeros: a cheap xorshift stream.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn data(len: usize) -> Message {
    Message::Data {
        transfer: TransferId(0x0123_4567_89AB_CDEF),
        seq: 1_234_567,
        payload: payload(len).into(),
    }
}

fn ack_full_sack() -> Message {
    // 32 disjoint ranges above the cumulative point, as after scattered losses.
    let base = 1_000_000u64;
    let sack = (0..MAX_SACK_RANGES as u64)
        .map(|i| (base + 1 + i * 4, base + 3 + i * 4))
        .collect();
    Message::Ack {
        transfer: TransferId(0x0123_4567_89AB_CDEF),
        cumulative: base,
        sack: BoundedVec(sack),
        window: 1024,
    }
}

fn bench_data(c: &mut Criterion, name: &str, len: usize) {
    let msg = data(len);
    let bytes = msg.encode();
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(len as u64));
    g.bench_function("encode", |b| b.iter(|| black_box(&msg).encode()));
    let mut buf = Vec::with_capacity(bytes.len());
    g.bench_function("encode_into reused buffer", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&msg).encode_into(&mut buf);
            black_box(buf.len())
        })
    });
    g.bench_function("decode", |b| {
        b.iter(|| decode(black_box(&bytes)).expect("valid message"))
    });
    // What a driver does per chunk on the sending side: copy the file bytes into a message
    // and encode it into its (reused) send buffer.
    let file_bytes = payload(len);
    g.bench_function("build + encode_into", |b| {
        b.iter(|| {
            buf.clear();
            let m = Message::Data {
                transfer: TransferId(1),
                seq: 7,
                payload: black_box(&file_bytes).clone().into(),
            };
            m.encode_into(&mut buf);
            black_box(buf.len())
        })
    });
    g.finish();
}

fn wire(c: &mut Criterion) {
    bench_data(c, "data_1404B", UDP_CHUNK);
    bench_data(c, "data_64KiB", TCP_CHUNK);

    let ack = ack_full_sack();
    let bytes = ack.encode();
    let mut g = c.benchmark_group("ack_32_sack");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| b.iter(|| black_box(&ack).encode()));
    g.bench_function("decode", |b| {
        b.iter(|| decode(black_box(&bytes)).expect("valid message"))
    });
    g.finish();
}

criterion_group!(benches, wire);
criterion_main!(benches);
