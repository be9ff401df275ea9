//! The simulated transports themselves: SimUdp and SimTcp carry whole messages and refuse
//! oversized ones, SimTcp replies on the accepted connection and drops a connection whose
//! frame header announces too much, FaultyTransport's faults replay from their seed, and its
//! `recv_from` loses nothing when cancelled over and over (it runs inside `select!`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2p_core::transport::Transport;
use p2p_proto::wire::{Message, TransferId, MAX_MESSAGE};
use p2p_sim_tests::harness::run_sim;
use p2p_sim_tests::{
    run_seeds, FaultConfig, FaultRates, FaultStats, FaultyTransport, SimTcp, SimTcpConfig, SimUdp,
    SIM_UDP_MESSAGE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn any(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

fn to(host: &str, port: u16) -> SocketAddr {
    SocketAddr::new(turmoil::lookup(host), port)
}

#[test]
fn sim_udp_carries_messages_and_refuses_oversized_ones() {
    run_seeds(
        file!(),
        "sim_udp_carries_messages_and_refuses_oversized_ones",
        |seed| {
            let mut sim = turmoil::Builder::new().rng_seed(seed).build();
            sim.host("b", || async {
                let t = SimUdp::bind(any(1)).await?;
                loop {
                    let (from, msg) = t.recv_from().await?;
                    t.send_to(from, &msg).await?;
                }
            });
            sim.client("a", async {
                let t = SimUdp::bind(any(1)).await?;
                let big = vec![7u8; SIM_UDP_MESSAGE];
                t.send_to(to("b", 1), &big).await?;
                let (_, back) = t.recv_from().await?;
                assert_eq!(back, big);
                let err = t.send_to(to("b", 1), &vec![0; SIM_UDP_MESSAGE + 1]).await;
                assert_eq!(err.unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
                Ok(())
            });
            run_sim(&mut sim)
        },
    );
}

#[test]
fn sim_tcp_replies_on_the_accepted_connection() {
    run_seeds(
        file!(),
        "sim_tcp_replies_on_the_accepted_connection",
        |seed| {
            let mut sim = turmoil::Builder::new().rng_seed(seed).build();
            sim.host("b", || async {
                let t = SimTcp::bind(any(2), SimTcpConfig::default()).await?;
                loop {
                    let (from, msg) = t.recv_from().await?;
                    // `from` is the caller's ephemeral port: only the cached connection reaches it.
                    t.send_to(from, &msg).await?;
                }
            });
            sim.client("a", async {
                let t = SimTcp::bind(any(2), SimTcpConfig::default()).await?;
                for n in [1usize, 1000, 64 * 1024] {
                    let msg = vec![n as u8; n];
                    t.send_to(to("b", 2), &msg).await?;
                    let (from, back) = t.recv_from().await?;
                    assert_eq!(from, to("b", 2));
                    assert_eq!(back, msg);
                }
                Ok(())
            });
            run_sim(&mut sim)
        },
    );
}

#[test]
fn sim_tcp_drops_a_connection_announcing_a_huge_frame() {
    run_seeds(
        file!(),
        "sim_tcp_drops_a_connection_announcing_a_huge_frame",
        |seed| {
            let mut sim = turmoil::Builder::new().rng_seed(seed).build();
            sim.host("b", || async {
                let t = SimTcp::bind(any(3), SimTcpConfig::default()).await?;
                loop {
                    t.recv_from().await?;
                }
            });
            sim.client("a", async {
                let mut s = turmoil::net::TcpStream::connect(to("b", 3)).await?;
                s.write_all(&((MAX_MESSAGE as u32) + 1).to_le_bytes())
                    .await?;
                let mut buf = [0u8; 1];
                // The transport closes the connection: EOF or a reset, never a hang.
                let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                    .await?
                    .unwrap_or(0);
                assert_eq!(n, 0);
                Ok(())
            });
            run_sim(&mut sim)
        },
    );
}

/// Sends `n` numbered messages through faulty transports and returns what arrived (in
/// order) and the sender's and receiver's counters.
fn faulty_run(
    seed: u64,
    rates: FaultRates,
    n: u32,
    cancel: bool,
) -> (Vec<u32>, FaultStats, FaultStats) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let stats = Arc::new(Mutex::new((FaultStats::default(), FaultStats::default())));
    let mut sim = turmoil::Builder::new().rng_seed(seed).build();
    let (g, st) = (got.clone(), stats.clone());
    sim.host("rx", move || {
        let (g, st) = (g.clone(), st.clone());
        async move {
            let t = FaultyTransport::new(
                SimUdp::bind(any(4)).await?,
                FaultConfig::recv_side(seed, rates),
            );
            loop {
                let next = if cancel {
                    // Cancel the receive over and over: nothing may be lost by it.
                    match tokio::time::timeout(Duration::from_micros(300), t.recv_from()).await {
                        Ok(r) => r?,
                        Err(_) => {
                            st.lock().unwrap().1 = t.snapshot();
                            continue;
                        }
                    }
                } else {
                    t.recv_from().await?
                };
                if let Ok(Message::Data { seq, .. }) = p2p_proto::wire::decode(&next.1) {
                    g.lock().unwrap().push(seq as u32);
                }
                st.lock().unwrap().1 = t.snapshot();
            }
        }
    });
    let st = stats.clone();
    sim.client("tx", async move {
        let t = FaultyTransport::new(
            SimUdp::bind(any(4)).await?,
            FaultConfig::send_side(seed ^ 1, rates),
        );
        for seq in 0..n {
            let m = Message::Data {
                transfer: TransferId(1),
                seq: u64::from(seq),
                payload: vec![seq as u8; 100].into(),
            };
            t.send_to(to("rx", 4), &m.encode()).await?;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        st.lock().unwrap().0 = t.snapshot();
        Ok(())
    });
    run_sim(&mut sim).expect("the faulty run");
    let got = got.lock().unwrap().clone();
    let (s, r) = stats.lock().unwrap().clone();
    (got, s, r)
}

#[test]
fn faulty_transport_replays_from_its_seed() {
    let rates = FaultRates {
        drop: 0.1,
        duplicate: 0.1,
        reorder: 0.1,
        delay: 0.1,
        corrupt: 0.1,
    };
    run_seeds(file!(), "faulty_transport_replays_from_its_seed", |seed| {
        let a = faulty_run(seed, rates, 300, false);
        let b = faulty_run(seed, rates, 300, false);
        if a != b {
            return Err(format!("two runs of seed {seed} differ:\n{a:?}\n{b:?}").into());
        }
        let (got, s, r) = a;
        // Counters add up: what arrived decodes to the messages sent, less the dropped and
        // corrupted ones, plus duplicates.
        assert_eq!(s.data_sent, 300);
        assert!(s.send.dropped > 0 && r.recv.dropped > 0, "{s:?} {r:?}");
        assert!(s.send.reordered > 0 && r.recv.duplicated > 0, "{s:?} {r:?}");
        let in_order = got.windows(2).all(|w| w[0] <= w[1]);
        assert!(!in_order, "reordering and delay should show");
        Ok(())
    });
}

#[test]
fn faulty_recv_is_cancel_safe() {
    // Delays and hold-backs park messages inside the wrapper; cancelling `recv_from` again
    // and again must lose none of them.
    let rates = FaultRates {
        duplicate: 0.0,
        reorder: 0.3,
        delay: 0.3,
        ..FaultRates::NONE
    };
    run_seeds(file!(), "faulty_recv_is_cancel_safe", |seed| {
        let (mut got, _, r) = faulty_run(seed, rates, 200, true);
        got.sort_unstable();
        if got != (0..200).collect::<Vec<_>>() {
            return Err(format!("lost or extra messages: {} of 200 ({r:?})", got.len()).into());
        }
        Ok(())
    });
}
