//! Per-message faults from [`FaultyTransport`] on every host, over UDP: duplication,
//! reordering, delay, corruption (bit flips and truncation), and all of them together with
//! loss. Three leechers download from one seeder at once; every download ends with the exact
//! bytes, and the counters show the faults really happened.

use std::time::Duration;

use p2p_core::service::{DownloadReport, ServiceError};
use p2p_proto::wire::Message;
use p2p_sim_tests::harness::run_sim;
use p2p_sim_tests::{
    check_download, fast_registry, fetch, run_seeds, Checked, Cluster, FaultRates, FaultStats, Net,
    PeerOpts,
};

const LEECHERS: [&str; 3] = ["leech1", "leech2", "leech3"];

/// Runs the scenario with `send`/`recv` faults on every host; returns every host's counters
/// (tracker, seeder, leechers). `idle` is both sides' idle timeout; the first `lost_accepts`
/// `Accept`s the seeder sends are lost on top of the random faults.
fn faults_scenario(
    seed: u64,
    send: FaultRates,
    recv: FaultRates,
    idle: Duration,
    lost_accepts: u32,
) -> turmoil::Result<Vec<FaultStats>> {
    let mut cl = Cluster::new(seed, Net::Udp);
    let mut sim = cl.builder(Duration::from_secs(200)).build();
    let tune = move |c: &mut p2p_core::service::EndpointConfig| {
        c.rpc_attempts = 20;
        c.sender.idle_timeout = idle;
        c.receiver.idle_timeout = idle;
    };
    cl.add_tracker(&mut sim, fast_registry(), Some((send, recv)));
    cl.add_peer(
        &mut sim,
        "seeder",
        PeerOpts::sharing(&[("a.bin", 180_000), ("b.bin", 1), ("c/d.bin", 50_000)])
            .faults(send, recv)
            .tune(tune)
            .dropping_first(|m| matches!(m, Message::Accept { .. }), lost_accepts),
    );
    for l in LEECHERS {
        cl.add_peer(
            &mut sim,
            l,
            PeerOpts::default().faults(send, recv).tune(tune),
        );
    }
    for (l, path) in LEECHERS.iter().zip(["a.bin", "b.bin", "c/d.bin"]) {
        let f = cl.file("seeder", path);
        let dest = cl.download_dir(l).join("out.bin");
        let (handles, trace) = (cl.handles.clone(), cl.trace.clone());
        let l = l.to_string();
        sim.client(format!("ctl-{l}"), async move {
            let h = handles.get(&l).await;
            let res = fetch(&h, "seeder", path, &dest).await;
            trace.record(
                &l,
                format_args!("{path}: {:?}", res.as_ref().map(|r| r.size)),
            );
            match check_download(&res, &dest, &f)? {
                Checked::Complete => Ok(()),
                Checked::Failed(e) => Err(format!("{l}: {path} failed: {e}").into()),
            }
        });
    }
    run_sim(&mut sim)?;
    Ok(["tracker", "seeder", "leech1", "leech2", "leech3"]
        .iter()
        .map(|h| cl.stats(h))
        .collect())
}

fn total(stats: &[FaultStats], f: impl Fn(&FaultStats) -> u64) -> u64 {
    stats.iter().map(f).sum()
}

fn run(test: &str, send: FaultRates, recv: FaultRates, check: impl Fn(&[FaultStats]) -> bool) {
    run_seeds(file!(), test, |seed| {
        // 20 s: ten retransmissions at the largest RTO, so that only a fault pattern far
        // beyond these rates could time a transfer out.
        let stats = faults_scenario(seed, send, recv, Duration::from_secs(20), 0)?;
        if !check(&stats) {
            return Err(format!("the faults did not happen: {stats:?}").into());
        }
        Ok(())
    });
}

#[test]
fn duplication() {
    let r = FaultRates::duplication(0.2);
    run("duplication", r, r, |s| {
        total(s, |x| x.send.duplicated) > 10 && total(s, |x| x.recv.duplicated) > 10
    });
}

#[test]
fn reordering() {
    let r = FaultRates::reordering(0.2);
    run("reordering", r, r, |s| {
        total(s, |x| x.send.reordered) > 10 && total(s, |x| x.recv.reordered) > 10
    });
}

#[test]
fn delay() {
    let r = FaultRates::delaying(0.2);
    run("delay", r, r, |s| {
        total(s, |x| x.send.delayed + x.recv.delayed) > 20
    });
}

#[test]
fn corruption() {
    let r = FaultRates::corruption(0.1);
    run("corruption", r, r, |s| {
        total(s, |x| x.send.corrupted + x.recv.corrupted) > 5
            && total(s, |x| x.send.truncated + x.recv.truncated) > 5
    });
}

#[test]
fn all_faults_together() {
    let r = FaultRates {
        drop: 0.05,
        duplicate: 0.05,
        reorder: 0.05,
        delay: 0.05,
        corrupt: 0.05,
    };
    run("all_faults_together", r, r, |s| {
        total(s, |x| x.send.dropped + x.recv.dropped) > 0
            && total(s, |x| {
                x.send.corrupted + x.recv.corrupted + x.send.truncated
            }) > 0
    });
}

/// Regression (seeds 50 and 134 of `SIM_SEEDS=0..200`, where the 10 % corruption hit an
/// `Accept`): a leecher whose `Accept` was lost used to ignore the sender's `Data` and fail
/// with "no answer from the peer" while the peer answered all along. Data while requesting
/// now counts as life and triggers a new Request at once. The seeder's first `Accept` is lost
/// on purpose, so that one leecher meets this for every seed, under the same corruption.
#[test]
fn lost_accept_while_data_flows() {
    let r = FaultRates::corruption(0.1);
    run_seeds(file!(), "lost_accept_while_data_flows", |seed| {
        // 20 s idle, as in the other fault scenarios: with 10 s, a run of Requests all lost
        // to corruption can time a download out (seed 2 did, with a 2 ms tick), which is not
        // the bug this is about.
        let stats = faults_scenario(seed, r, r, Duration::from_secs(20), 1)?;
        // Corruption drops nothing: the seeder's one loss is the Accept.
        let lost = stats[1].send.dropped;
        if lost != 1 {
            return Err(format!("the seeder lost {lost} messages, not its first Accept").into());
        }
        Ok(())
    });
}

/// Bytes per piece (the index's piece size).
const PIECE: usize = p2p_proto::wire::PIECE_SIZE as usize;

/// A seeder sends its chunks as the UDP transport sends large datagrams (through
/// `send_file`: the payload is checked by the piece hashes only), and the first `n` chunks it
/// sends that match `damaged` (of any transfer) have a payload byte flipped past the
/// checksum. A leecher fetches the file of `pieces` pieces and a bit; `check` judges the
/// report or the error. Returns how many chunks were damaged.
fn damaged_payloads(
    seed: u64,
    pieces: usize,
    damaged: fn(&Message) -> bool,
    n: u32,
    check: fn(Result<DownloadReport, ServiceError>) -> Result<(), String>,
) -> turmoil::Result<u64> {
    let mut cl = Cluster::new(seed, Net::Udp);
    let mut sim = cl.fixed_latency(Duration::from_secs(60));
    cl.add_tracker(&mut sim, fast_registry(), None);
    cl.add_peer(
        &mut sim,
        "seeder",
        PeerOpts::sharing(&[("a.bin", pieces * PIECE + 1000)])
            .sending_files_from(1)
            .corrupting_first(damaged, n),
    );
    cl.add_peer(&mut sim, "leech", PeerOpts::default());
    cl.fetch_checked(&mut sim, "leech", "seeder", "a.bin", move |res, _| {
        check(res)
    });
    run_sim(&mut sim)?;
    Ok(cl.stats("seeder").send.corrupted)
}

/// One damaged payload fails its piece, and the download goes on from the end of the
/// verified part: the pieces before it are kept, and the file ends exact. (Chunk 400 lies in
/// the third piece: about 187 chunks per piece.)
#[test]
fn a_piece_damaged_past_the_checksum_is_fetched_again() {
    run_seeds(
        file!(),
        "a_piece_damaged_past_the_checksum_is_fetched_again",
        |seed| {
            let chunk_400 = |m: &Message| matches!(m, Message::Data { seq: 400, .. });
            let damaged = damaged_payloads(seed, 4, chunk_400, 1, |res| {
                let report = res.map_err(|e| format!("download failed: {e}"))?;
                if report.refetched != 1 || report.resumed_from != 2 * PIECE as u64 {
                    return Err(format!(
                        "refetched {} times from byte {}: want once, from the end of piece 1",
                        report.refetched, report.resumed_from
                    ));
                }
                Ok(())
            })?;
            if damaged != 1 {
                return Err(format!("{damaged} messages damaged, not the one chunk").into());
            }
            Ok(())
        },
    );
}

/// A piece fails in every attempt (chunk 200 of each transfer lies in the piece after the
/// verified part): after the first attempt and its 3 refetches the download fails, naming
/// the bad piece and keeping the four verified pieces before it for a resume.
#[test]
fn refetches_are_bounded() {
    run_seeds(file!(), "refetches_are_bounded", |seed| {
        let chunk_200 = |m: &Message| matches!(m, Message::Data { seq: 200, .. });
        let damaged = damaged_payloads(seed, 8, chunk_200, 10, |res| match res {
            Err(e @ ServiceError::Incomplete { kept, .. })
                if e.bad_piece() == Some(4) && kept == 4 * PIECE as u64 =>
            {
                Ok(())
            }
            other => Err(format!(
                "want a failure at piece 4 with 4 pieces kept, got {other:?}"
            )),
        })?;
        let attempts = u64::from(p2p_core::service::PIECE_REFETCHES) + 1;
        if damaged != attempts {
            return Err(format!("{damaged} chunks damaged, want one per attempt").into());
        }
        Ok(())
    });
}
