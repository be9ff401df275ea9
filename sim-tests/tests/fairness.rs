//! Uploads share a seeder's capped rate fairly: two downloads started together from a seeder
//! with `max_upload_rate` progress at about the same pace (one used to take nearly all of it:
//! each flush served the uploads in the same order, and the first drained the tokens).

use std::path::Path;
use std::time::Duration;

use p2p_core::service::{DownloadReport, ServiceError};
use p2p_sim_tests::{
    check_download, fast_registry, run_sim, seeded_tests, spawn_fetch, Checked, Cluster, Net,
    PeerOpts, SharedFile,
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

/// Every download ended complete, with the source's exact bytes at its destination.
fn all_complete<'a>(
    downloads: impl IntoIterator<Item = (&'a Result<DownloadReport, ServiceError>, &'a Path)>,
    source: &SharedFile,
) -> Result<(), String> {
    for (res, dest) in downloads {
        if check_download(res, dest, source)? != Checked::Complete {
            return Err(format!("a download failed: {res:?}"));
        }
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
        all_complete([(&ra, da.as_path()), (&rb, db.as_path())], &f)?;
        Ok(())
    });
    run_sim(&mut sim)
}

seeded_tests! {
    two_capped_uploads_share_the_rate_udp => |s| two_capped_uploads(s, Net::Udp);
    two_capped_uploads_share_the_rate_tcp => |s| two_capped_uploads(s, Net::Tcp);
}

/// One upload slot, three downloads asking at once: the slot is lent in turns
/// (`upload_turn`), so when the first download completes the other two have each come a
/// good part of the way (first come, first served to the end, they had not started), and
/// all three end byte-exact.
fn three_downloads_share_one_slot(seed: u64, net: Net) -> turmoil::Result {
    let mut cl = Cluster::new(seed, net);
    let mut sim = cl.builder(Duration::from_secs(120)).build();
    cl.add_tracker(&mut sim, fast_registry(), None);
    cl.add_peer(
        &mut sim,
        "seeder",
        PeerOpts::sharing(&[("big.bin", SIZE)]).tune(|c| {
            c.max_uploads = 1;
            c.max_upload_rate = Some(RATE);
            c.upload_turn = Duration::from_millis(300);
        }),
    );
    let names = ["alice", "bob", "carol"];
    for name in names {
        cl.add_peer(&mut sim, name, PeerOpts::default());
    }
    let f = cl.file("seeder", "big.bin");
    let dests: Vec<_> = names
        .iter()
        .map(|n| cl.download_dir(n).join("big.bin"))
        .collect();
    let handles = cl.handles.clone();
    sim.client("ctl", async move {
        let mut fetches = Vec::new();
        for (name, dest) in names.iter().zip(&dests) {
            let h = handles.get(name).await;
            fetches.push(spawn_fetch(&h, "seeder", "big.bin", dest).await?);
        }
        let (tasks, progress): (Vec<_>, Vec<_>) = fetches.into_iter().unzip();
        let [mut ta, mut tb, mut tc] = <[_; 3]>::try_from(tasks).expect("three");
        let mut results = [None, None, None];
        let done = tokio::select! {
            r = &mut ta => { results[0] = Some(r?); 0 }
            r = &mut tb => { results[1] = Some(r?); 1 }
            r = &mut tc => { results[2] = Some(r?); 2 }
        };
        // The two still running: each a quarter of the way at least (in turns of three,
        // about two thirds).
        for (i, p) in progress.iter().enumerate().filter(|(i, _)| *i != done) {
            let got = p.borrow().received;
            if got < SIZE as u64 / 4 {
                return Err(format!(
                    "download {i} had {got} of {SIZE} bytes when the first ended: no turns"
                )
                .into());
            }
        }
        for (i, t) in [ta, tb, tc].into_iter().enumerate() {
            if i != done {
                results[i] = Some(t.await?);
            }
        }
        let results = results
            .iter()
            .map(|r| r.as_ref().expect("every download ended"));
        all_complete(results.zip(dests.iter().map(|d| d.as_path())), &f)?;
        Ok(())
    });
    run_sim(&mut sim)
}

seeded_tests! {
    one_slot_is_lent_in_turns_udp => |s| three_downloads_share_one_slot(s, Net::Udp);
    one_slot_is_lent_in_turns_tcp => |s| three_downloads_share_one_slot(s, Net::Tcp);
}
