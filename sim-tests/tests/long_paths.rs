//! Long, narrow paths over UDP: 100 ms each way (a 200 ms round trip) with a 40 Mbit/s
//! bottleneck and a 100 ms drop-tail queue on the seeder's way out (see [`Bottleneck`]).
//! The window must grow to fill the path (its bandwidth x round trip is 1 MB, far more than
//! the initial window), the start-up must stay a few round trips, and loss must be recovered
//! without waiting whole timeouts. Rates are of simulated time: exact, the same every run.

use std::time::Duration;

use p2p_sim_tests::harness::run_sim;
use p2p_sim_tests::{
    fast_registry, run_seeds, Bottleneck, Checked, Cluster, FaultRates, Net, PeerOpts,
};

const ONE_WAY: Duration = Duration::from_millis(100);
const RTT: Duration = Duration::from_millis(200);
const LINK_MBIT: u64 = 40;
const FILE: usize = 12 * 1024 * 1024;
/// The share of the link's rate a download must reach without loss ([`LOSS_FLOOR`] with 1 %
/// loss). Today's sender reaches 61 % without loss and 48 % or more with 1 % loss (seeds
/// 1-40): BBR's start-up doubles the window each round up to 2.89 times the measured
/// bandwidth-delay product and ends on a round that lost over 2 % to the 100 ms queue (with
/// its RTT showing one), then drains for at most two rounds; the steady state paces at the
/// measured rate, and a retransmission timeout keeps the model. The 12 MiB file is short
/// for the path: start-up alone takes about seven round trips. The queue still drops about
/// a sixth of what start-up sends (1,725 of 11,248 datagrams): ending start-up on the
/// queue's delay (HyStart++) cut that to 122, but left a flow sharing the link with one TCP
/// flow a tenth of it, and was dropped. The aim (issue 19) is 90 %.
const FLOOR: f64 = 0.55;
/// The share of the link's rate a download must reach with 1 % loss.
const LOSS_FLOOR: f64 = 0.45;

/// The link's rate in bytes per second of payload (before the headers of each datagram).
fn link_bytes_per_sec() -> f64 {
    (LINK_MBIT * 1_000_000 / 8) as f64
}

/// Runs one download of [`FILE`] from a seeder behind the bottleneck, with `loss` of what
/// the seeder sends lost before the bottleneck, and hands the report to `judge`.
fn long_path(
    seed: u64,
    loss: f64,
    judge: impl FnOnce(Duration, Duration) -> Result<(), String> + 'static,
) -> turmoil::Result {
    let mut cl = Cluster::new(seed, Net::Udp);
    let mut sim = cl.long_path(Duration::from_secs(120), ONE_WAY);
    cl.add_tracker(&mut sim, fast_registry(), None);
    let link = Bottleneck::mbit(LINK_MBIT, Duration::from_millis(100));
    let seeder = PeerOpts::sharing(&[("big.bin", FILE)])
        .faults(FaultRates::loss(loss), FaultRates::NONE)
        .bottleneck(link);
    cl.add_peer(&mut sim, "seeder", seeder);
    cl.add_peer(&mut sim, "leech", PeerOpts::default());
    cl.fetch_checked(&mut sim, "leech", "seeder", "big.bin", |res, checked| {
        if let Checked::Failed(e) = checked {
            return Err(format!("download failed: {e}"));
        }
        let report = res.expect("checked");
        let first = report.first_byte.ok_or("no first byte")?;
        judge(report.elapsed, first)
    });
    run_sim(&mut sim)?;
    let dropped = cl.stats("seeder").send.queue_dropped;
    let st = cl.stats("seeder");
    eprintln!(
        "seed {seed}: the bottleneck's queue dropped {dropped} datagrams; data sent {} resent {}",
        st.data_sent, st.data_resent
    );
    Ok(())
}

/// With no loss but the queue's, the window grows to the path: at least [`FLOOR`] of the
/// link's rate over the whole transfer, start-up and the piece table included (12 MiB take
/// 2.5 s at the link's rate, 13 round trips; start-up about 7). The first byte comes two
/// round trips after the request: the piece table (every page at once) and the request.
#[test]
fn the_window_grows_to_fill_a_long_narrow_path() {
    run_seeds(
        file!(),
        "the_window_grows_to_fill_a_long_narrow_path",
        |seed| {
            long_path(seed, 0.0, |elapsed, first| {
                let rate = FILE as f64 / elapsed.as_secs_f64();
                eprintln!(
                    "{:.2} MB/s of {:.2} ({:.0} %), first byte after {first:?}",
                    rate / 1e6,
                    link_bytes_per_sec() / 1e6,
                    100.0 * rate / link_bytes_per_sec()
                );
                if rate < FLOOR * link_bytes_per_sec() {
                    return Err(format!(
                        "{:.2} MB/s: under 55 % of the link's {:.2}",
                        rate / 1e6,
                        link_bytes_per_sec() / 1e6
                    ));
                }
                if first > 2 * RTT + Duration::from_millis(50) {
                    return Err(format!(
                        "first byte after {first:?}: more than two round trips"
                    ));
                }
                Ok(())
            })
        },
    );
}

/// 1 % of the seeder's datagrams lost on top of the queue's drops: the download still ends
/// with the exact bytes at a share of the link's rate (losses repaired from the
/// ACKs' ranges within a round trip or two, not after timeouts that would idle a 200 ms
/// path): [`LOSS_FLOOR`].
#[test]
fn loss_on_a_long_narrow_path_is_repaired_without_stalling() {
    run_seeds(
        file!(),
        "loss_on_a_long_narrow_path_is_repaired_without_stalling",
        |seed| {
            long_path(seed, 0.01, |elapsed, _| {
                let rate = FILE as f64 / elapsed.as_secs_f64();
                eprintln!(
                    "1 % loss: {:.2} MB/s of {:.2} ({:.0} %)",
                    rate / 1e6,
                    link_bytes_per_sec() / 1e6,
                    100.0 * rate / link_bytes_per_sec()
                );
                if rate < LOSS_FLOOR * link_bytes_per_sec() {
                    return Err(format!(
                        "{:.2} MB/s under 1 % loss: under 45 % of the link's {:.2}",
                        rate / 1e6,
                        link_bytes_per_sec() / 1e6
                    ));
                }
                Ok(())
            })
        },
    );
}
