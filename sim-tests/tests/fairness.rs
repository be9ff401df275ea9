//! Uploads share a seeder's capped rate fairly: two downloads started together from a seeder
//! with `max_upload_rate` progress at about the same pace (one used to take nearly all of it:
//! each flush served the uploads in the same order, and the first drained the tokens).

use std::time::Duration;

use p2p_sim_tests::{
    check_download, fast_registry, run_sim, seeded_tests, spawn_fetch, Checked, Cluster, Net,
    PeerOpts,
};

const SIZE: usize = 2 << 20;
/// The seeder's cap: 1 MiB/s for both uploads together.
const RATE: u64 = 1 << 20;

/// The download still running when the other finished had `behind` bytes.
fn fair(behind: u64) -> Result<(), String> {
    if (behind as usize) < SIZE / 2 {
        return Err(format!(
            "unfair: one download done while the other had {behind} of {SIZE} bytes"
        ));
    }
    Ok(())
}

fn two_capped_uploads(seed: u64, net: Net) -> turmoil::Result {
    let mut cl = Cluster::new(seed, net);
    let mut sim = cl.builder(Duration::from_secs(120)).build();
    cl.add_tracker(&mut sim, fast_registry(), None);
    cl.add_peer(
        &mut sim,
        "seeder",
        PeerOpts::sharing(&[("big.bin", SIZE)]).tune(|c| c.max_upload_rate = Some(RATE)),
    );
    cl.add_peer(&mut sim, "alice", PeerOpts::default());
    cl.add_peer(&mut sim, "bob", PeerOpts::default());
    let f = cl.file("seeder", "big.bin");
    let (da, db) = (
        cl.download_dir("alice").join("big.bin"),
        cl.download_dir("bob").join("big.bin"),
    );
    let handles = cl.handles.clone();
    sim.client("ctl", async move {
        let (ha, hb) = (handles.get("alice").await, handles.get("bob").await);
        let (mut ta, pa) = spawn_fetch(&ha, "seeder", "big.bin", &da).await?;
        let (mut tb, pb) = spawn_fetch(&hb, "seeder", "big.bin", &db).await?;
        // Whichever finishes first: the other has come at least half as far.
        let (ra, rb) = tokio::select! {
            r = &mut ta => {
                let behind = pb.borrow().received;
                fair(behind)?;
                (r?, tb.await?)
            }
            r = &mut tb => {
                let behind = pa.borrow().received;
                fair(behind)?;
                (ta.await?, r?)
            }
        };
        for (res, dest) in [(&ra, &da), (&rb, &db)] {
            if check_download(res, dest, &f)? != Checked::Complete {
                return Err(format!("a download failed: {res:?}").into());
            }
        }
        Ok(())
    });
    run_sim(&mut sim)
}

seeded_tests! {
    two_capped_uploads_share_the_rate_udp => |s| two_capped_uploads(s, Net::Udp);
    two_capped_uploads_share_the_rate_tcp => |s| two_capped_uploads(s, Net::Tcp);
}
