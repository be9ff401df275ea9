//! Cost of sealing and opening one message of a secure session (AES-256-GCM with an
//! explicit nonce, plus the frame head and the replay window): a UDP-sized (1,404 B) and a
//! loopback-sized (60 KiB) `Data` payload. `seal + open` is what one chunk costs the two
//! sides together, on top of the plaintext protocol.
//!
//! `cargo bench -p p2p-proto --bench secure` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use p2p_proto::identity::Identity;
use p2p_proto::secure::{Frame, Received, SecureConfig, Session, SessionTable};

fn table(secret: u8) -> SessionTable {
    SessionTable::new(
        &Identity::from_secret([secret; 32]),
        SecureConfig {
            seed: Some([secret; 32]),
            ..SecureConfig::default()
        },
    )
}

/// The two ends of one established session: `a` seals, `b` opens.
fn sessions() -> (Arc<Session>, SessionTable) {
    let (pa, pb): (SocketAddr, SocketAddr) = (
        "10.0.0.1:7000".parse().unwrap(),
        "10.0.0.2:7000".parse().unwrap(),
    );
    let (mut a, mut b) = (table(1), table(2));
    let now = Instant::now();
    a.connect(now, pb, Some(b.public())).expect("connect");
    for _ in 0..4 {
        while let Some((_, f)) = a.poll_transmit() {
            b.handle(now, pa, &f);
        }
        while let Some((_, f)) = b.poll_transmit() {
            a.handle(now, pb, &f);
        }
    }
    let session = a.session_to(pb).expect("handshake finished");
    // The responder's session is confirmed by the first data frame.
    let first = session.seal(b"hello").unwrap();
    assert!(matches!(b.handle(now, pa, &first), Received::Opened { .. }));
    (session, b)
}

fn bench_size(c: &mut Criterion, name: &str, len: usize) {
    let payload: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
    let (session, mut b) = sessions();
    let from: SocketAddr = "10.0.0.1:7000".parse().unwrap();
    let now = Instant::now();
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(len as u64));
    let mut out = Vec::with_capacity(len + 64);
    g.bench_function("seal", |bench| {
        bench.iter(|| {
            out.clear();
            session.seal_into(black_box(&payload), &mut out).unwrap();
            black_box(out.len())
        })
    });
    g.bench_function("seal + open", |bench| {
        bench.iter(|| {
            out.clear();
            session.seal_into(black_box(&payload), &mut out).unwrap();
            match b.handle(now, from, &out) {
                Received::Opened { plaintext, .. } => black_box(plaintext.len()),
                other => panic!("not opened: {other:?}"),
            }
        })
    });
    g.finish();
    // Every frame carried a fresh nonce: none was refused as a replay.
    assert!(matches!(Frame::parse(&out), Ok(Frame::Sealed { .. })));
}

fn benches(c: &mut Criterion) {
    bench_size(c, "sealed_1404B", 1404);
    bench_size(c, "sealed_60KiB", 60 * 1024);
}

criterion_group!(secure, benches);
criterion_main!(secure);
