//! Per-message loss of 0, 1, 5, 10, 30 and 50 % on every host's send side (tracker
//! included), over UDP: a seeder serves two leechers at once; every download ends with the
//! exact bytes (up to 30 %: always; at 50 %, with smaller files: exact bytes or a clear
//! timeout) and, at 10 %,
//! the data sent stays within a stated factor of the file size.

use std::time::Duration;

use p2p_core::service::ServiceError;
use p2p_proto::wire::Message;
use p2p_sim_tests::harness::run_sim;
use p2p_sim_tests::{
    check_download, fast_registry, fetch, run_seeds, timed_out, Checked, Cluster, FaultRates, Net,
    PeerOpts,
};

const FILE: usize = 200 * 1024;
const LEECHERS: [&str; 2] = ["leech1", "leech2"];

/// Runs the loss scenario at `percent` % loss, the seeder's first `lost_accepts` `Accept`s
/// lost on top of it; returns (completed downloads, data payload bytes the seeder sent, file
/// bytes).
fn loss_scenario(seed: u64, percent: u32, lost_accepts: u32) -> turmoil::Result<(usize, u64, u64)> {
    // At 50 % most chunks are sent about four times over, mostly after an RTO with a
    // one-chunk window: a smaller file keeps the run short.
    let size = if percent >= 50 { FILE / 8 } else { FILE };
    let p = f64::from(percent) / 100.0;
    let rates = FaultRates::loss(p);
    let mut cl = Cluster::new(seed, Net::Udp);
    // A fixed latency: the sender's reaction to reordering would blur the cost of loss.
    let mut sim = cl.fixed_latency(Duration::from_secs(300));
    // Requests must survive the loss of request and reply: more attempts, longer idle
    // timeouts as the loss grows.
    let tune = move |c: &mut p2p_core::service::EndpointConfig| {
        c.rpc_attempts = 40;
        let idle = Duration::from_secs(if percent >= 30 { 30 } else { 10 });
        c.sender.idle_timeout = idle;
        c.receiver.idle_timeout = idle;
    };
    cl.add_tracker(&mut sim, fast_registry(), Some((rates, FaultRates::NONE)));
    cl.add_peer(
        &mut sim,
        "seeder",
        PeerOpts::sharing(&[("a.bin", size), ("b.bin", size / 2 + 7)])
            .faults(rates, FaultRates::NONE)
            .tune(tune)
            .dropping_first(|m| matches!(m, Message::Accept { .. }), lost_accepts),
    );
    for l in LEECHERS {
        cl.add_peer(
            &mut sim,
            l,
            PeerOpts::default()
                .faults(rates, FaultRates::NONE)
                .tune(tune),
        );
    }
    let done = std::rc::Rc::new(std::cell::Cell::new(0usize));
    for (i, l) in LEECHERS.iter().enumerate() {
        let f = cl.file("seeder", if i == 0 { "a.bin" } else { "b.bin" });
        let dest = cl.download_dir(l).join(&f.path);
        let (handles, trace, done) = (cl.handles.clone(), cl.trace.clone(), done.clone());
        let l = l.to_string();
        sim.client(format!("ctl-{l}"), async move {
            let h = handles.get(&l).await;
            let res = fetch(&h, "seeder", &f.path, &dest).await;
            trace.record(
                &l,
                format_args!("{}: {:?}", f.path, res.as_ref().map(|r| r.size)),
            );
            match check_download(&res, &dest, &f)? {
                Checked::Complete => done.set(done.get() + 1),
                Checked::Failed(e) => {
                    let clear = timed_out(&e) || matches!(e, ServiceError::NoAnswer(_));
                    eprintln!("   {l}: {} failed at {percent}% loss: {e}", f.path);
                    if percent < 50 || !clear {
                        return Err(
                            format!("{l}: {} failed at {percent}% loss: {e}", f.path).into()
                        );
                    }
                }
            }
            Ok(())
        });
    }
    run_sim(&mut sim)?;
    Ok((
        done.get(),
        cl.stats("seeder").data_payload_bytes,
        (size + size / 2 + 7) as u64,
    ))
}

fn run_loss(test: &str, percent: u32) {
    run_seeds(file!(), test, |seed| {
        let (done, sent, file_bytes) = loss_scenario(seed, percent, 0)?;
        let file_bytes = file_bytes as f64;
        eprintln!(
            "   {percent}% loss: {done}/2 complete, seeder sent {:.2}x the file bytes",
            sent as f64 / file_bytes
        );
        if percent == 10 && sent as f64 > 1.5 * file_bytes {
            return Err(format!(
                "at 10% loss the seeder sent {sent} bytes, over 1.5x {file_bytes}"
            )
            .into());
        }
        Ok(())
    });
}

#[test]
fn loss_0_percent() {
    run_loss("loss_0_percent", 0);
}

#[test]
fn loss_1_percent() {
    run_loss("loss_1_percent", 1);
}

#[test]
fn loss_5_percent() {
    run_loss("loss_5_percent", 5);
}

#[test]
fn loss_10_percent() {
    run_loss("loss_10_percent", 10);
}

#[test]
fn loss_30_percent() {
    run_loss("loss_30_percent", 30);
}

#[test]
fn loss_50_percent() {
    run_loss("loss_50_percent", 50);
}

/// Regression (seed 36 of `SIM_SEEDS=0..200` at 30 % loss, where an `Accept` was lost): the
/// leecher, ignoring the `Data` that followed, failed with "no answer from the peer for 30s"
/// while the seeder answered all along. Fixed in e98baa3 (Data while requesting counts as
/// life and triggers a new Request). The seeder's first `Accept` is lost on purpose, so that
/// every seed meets it: both downloads must still end exact.
#[test]
fn loss_30_percent_lost_accept() {
    run_seeds(file!(), "loss_30_percent_lost_accept", |seed| {
        let (done, ..) = loss_scenario(seed, 30, 1)?;
        if done != 2 {
            return Err(format!("{done}/2 downloads complete").into());
        }
        Ok(())
    });
}

/// A leecher's first `Request` is lost. It asks again after a few round trips of the piece
/// table request just answered (4 × 20 ms here), not after the default half second: the
/// download takes well under that half second.
#[test]
fn a_lost_request_costs_round_trips_not_the_default_wait() {
    run_seeds(
        file!(),
        "a_lost_request_costs_round_trips_not_the_default_wait",
        |seed| {
            let mut cl = Cluster::new(seed, Net::Udp);
            let mut sim = cl.fixed_latency(Duration::from_secs(30));
            cl.add_tracker(&mut sim, fast_registry(), None);
            cl.add_peer(&mut sim, "seeder", PeerOpts::sharing(&[("a.bin", FILE)]));
            cl.add_peer(
                &mut sim,
                "leech",
                PeerOpts::default().dropping_first(|m| matches!(m, Message::Request { .. }), 1),
            );
            cl.fetch_checked(&mut sim, "leech", "seeder", "a.bin", |res, checked| {
                if let Checked::Failed(e) = checked {
                    return Err(format!("download failed: {e}"));
                }
                let elapsed = res.expect("checked").elapsed;
                // Asked again at 80 ms: about 150 ms in all; at the default 500 ms, 560 ms.
                if elapsed >= Duration::from_millis(300) {
                    return Err(format!("the lost request cost too long: {elapsed:?}"));
                }
                Ok(())
            });
            run_sim(&mut sim)?;
            let lost = cl.stats("leech").send.dropped;
            if lost != 1 {
                return Err(format!("{lost} messages lost, not the one request").into());
            }
            Ok(())
        },
    );
}
