//! Start-up in round trips, on a fixed 20 ms round trip: what a download asks before its
//! first byte must not grow with the file's size. Counted in simulated time, so the count is
//! exact and the same every run.

use std::time::Duration;

use p2p_proto::wire::{MAX_PIECE_HASHES, PIECE_SIZE};
use p2p_sim_tests::harness::run_sim;
use p2p_sim_tests::{find_entry, peer_addr, run_seeds, Cluster, Net, PeerOpts};

/// Pieces in a page of the piece table, as a size.
const PAGE_BYTES: usize = MAX_PIECE_HASHES * PIECE_SIZE as usize;

/// A file whose piece table is three pages fetches all of them in one round trip: the pages
/// the listed size needs go out with the first (before, the first page came back before the
/// others were asked for: two round trips). One round trip is 20 ms here; the table must
/// come within 30 (one, plus the ticks of the simulation), and its pages are each asked for
/// once (the seeder answers three pages).
#[test]
fn a_piece_table_of_three_pages_takes_one_round_trip() {
    const SIZE: usize = 2 * PAGE_BYTES + 1_000;
    for net in [Net::Udp, Net::Tcp] {
        let test = format!("a_piece_table_of_three_pages_takes_one_round_trip_{net:?}");
        run_seeds(file!(), &test, |seed| {
            let mut cl = Cluster::new(seed, net);
            cl.log_messages = true;
            let mut sim = cl.fixed_latency(Duration::from_secs(30));
            cl.add_tracker(&mut sim, p2p_sim_tests::fast_registry(), None);
            cl.add_peer(&mut sim, "seeder", PeerOpts::sharing(&[("big.bin", SIZE)]));
            cl.add_peer(&mut sim, "leech", PeerOpts::default());
            let handles = cl.handles.clone();
            let file = cl.file("seeder", "big.bin");
            let (_, pieces) = p2p_core::index::hash_pieces(&file.source, PIECE_SIZE)?;
            sim.client("ctl", async move {
                let h = handles.get("leech").await;
                let seeder = peer_addr("seeder");
                // The entry first: the seeder has proven the leech's address after it.
                let entry = find_entry(&h, seeder, "big.bin").await?;
                let start = tokio::time::Instant::now();
                let table = h.piece_table(seeder, &entry).await?;
                let took = start.elapsed();
                if table.hashes != pieces {
                    return Err("the piece table differs from the file's".into());
                }
                if took > Duration::from_millis(30) {
                    return Err(format!("3 pages took {took:?}: more than one round trip").into());
                }
                Ok(())
            });
            run_sim(&mut sim)?;
            // Requests go wrapped in the seeder's token: count its answers.
            let answered = cl
                .trace
                .events()
                .iter()
                .filter(|e| e.host == "seeder" && e.what.starts_with("send "))
                .filter(|e| e.what.contains(" PieceHashes "))
                .count();
            if answered != 3 {
                return Err(format!("{answered} piece pages answered, not 3").into());
            }
            Ok(())
        });
    }
}
