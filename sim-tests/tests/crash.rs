//! Crashes mid-transfer (`sim.crash`, then `sim.bounce`): of the sender, of the receiver and
//! of the tracker. The survivor of a crashed transfer ends with a clear error and no file; a
//! retry after the restart gets the exact bytes (a restarted receiver resumes from the prefix
//! it recorded); the sender frees a dead receiver's upload;
//! peers re-register after the tracker returns; a crashed peer expires from the tracker.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use p2p_core::service::ServiceError;
use p2p_proto::transfer::TransferError;
use p2p_proto::wire::PIECE_SIZE;
use p2p_sim_tests::harness::run_sim;
use p2p_sim_tests::{
    busy, check_download, fast_registry, fetch, run_for, run_until, seeded_tests, spawn_fetch,
    timed_out, tracker_addr, wait_progress, Checked, Cluster, Net, PeerOpts,
};

const FILE: usize = 1 << 20;

/// A leecher that keeps little in flight (256 KiB, or 16 chunks, 1 MiB, on TCP): a crash
/// once some bytes arrived is mid-transfer. (A receiver finishes on its last verified
/// chunk: with the whole file in flight when the link freezes, a sender's crash would
/// change nothing, rightly, and a receiver might finish before its crash.)
fn small_window() -> PeerOpts {
    PeerOpts::default().tune(|c| c.receiver.window_bytes = 256 * 1024)
}

/// Raised by a client when the test should act (crash a host).
type Flag = Rc<Cell<bool>>;

/// Waits until `flag` is down again (the test lowers it once it has acted).
async fn acted(flag: &Flag) {
    while flag.get() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Freezes the seeder–leecher link once some bytes arrived, asks the test to crash `victim`,
/// and releases the link (what was in flight arrives late, as on a real network).
async fn crash_mid_transfer(
    progress: &mut tokio::sync::watch::Receiver<p2p_core::service::Progress>,
    flag: &Flag,
    at: u64,
) -> turmoil::Result {
    if !wait_progress(progress, at, Duration::from_secs(30)).await {
        return Err("no progress before the crash".into());
    }
    turmoil::hold("seeder", "leecher");
    flag.set(true);
    acted(flag).await;
    turmoil::release("seeder", "leecher");
    Ok(())
}

/// A transfer whose other side died: a clear error (timeout, or an abort), nothing on disk.
fn clear_failure(e: &ServiceError) -> bool {
    timed_out(e) || matches!(e, ServiceError::Transfer(TransferError::Aborted(_)))
}

fn crash_sender(seed: u64, net: Net) -> turmoil::Result {
    let first = 1;
    let mut cl = Cluster::new(seed, net);
    let mut sim = cl.builder(Duration::from_secs(120)).build();
    cl.add_tracker(&mut sim, fast_registry(), None);
    cl.add_peer(
        &mut sim,
        "seeder",
        PeerOpts::sharing(&[("big.bin", 4 * FILE)]),
    );
    cl.add_peer(&mut sim, "leecher", small_window());
    let f = cl.file("seeder", "big.bin");
    let dest = cl.download_dir("leecher").join("big.bin");
    let flag = Flag::default();
    let (handles, client_flag) = (cl.handles.clone(), flag.clone());
    sim.client("ctl", async move {
        let h = handles.get("leecher").await;
        let (task, mut progress) = spawn_fetch(&h, "seeder", "big.bin", &dest).await?;
        crash_mid_transfer(&mut progress, &client_flag, first).await?;
        let res = task.await?;
        match check_download(&res, &dest, &f)? {
            Checked::Failed(e) if clear_failure(&e) => {}
            other => return Err(format!("expected a clear failure, got {other:?}").into()),
        }
        // The seeder is back: a new download gets the exact bytes.
        let res = fetch(&h, "seeder", "big.bin", &dest).await;
        match check_download(&res, &dest, &f)? {
            Checked::Complete => Ok(()),
            Checked::Failed(e) => Err(format!("retry after the restart failed: {e}").into()),
        }
    });
    run_until(&mut sim, Duration::from_secs(60), || flag.get())?;
    crash_then_restart(&mut sim, "seeder", &flag, Duration::from_secs(2))
}

/// Crashes `host` (its disk survives), lets the others run `down` without it, restarts it,
/// and runs the scenario to its end; `flag` tells the crashed host's code its life ended.
fn crash_then_restart(
    sim: &mut turmoil::Sim<'_>,
    host: &str,
    flag: &Cell<bool>,
    down: Duration,
) -> turmoil::Result {
    sim.crash(host);
    flag.set(false);
    run_for(sim, down)?;
    sim.bounce(host);
    run_sim(sim)
}

seeded_tests! {
    crash_sender_udp => |s| crash_sender(s, Net::Udp);
    crash_sender_tcp => |s| crash_sender(s, Net::Tcp);
}

/// Crashes the leecher mid-transfer and restarts it; its next life downloads again. With
/// `resume`, the leecher records its verified prefix every piece and is crashed past the
/// first MiB of a 4 MiB file: the new download must resume from the recorded prefix.
fn crash_receiver(seed: u64, net: Net, resume: bool) -> turmoil::Result {
    let (size, first) = if resume {
        (4 * FILE, FILE as u64)
    } else {
        (4 * FILE, 1)
    };
    let mut cl = Cluster::new(seed, net);
    let mut sim = cl.builder(Duration::from_secs(120)).build();
    cl.add_tracker(&mut sim, fast_registry(), None);
    // One upload slot: the new download can start only once the dead one was freed.
    cl.add_peer(
        &mut sim,
        "seeder",
        PeerOpts::sharing(&[("big.bin", size)]).tune(|c| c.max_uploads = 1),
    );
    let leecher = if resume {
        PeerOpts::default().tune(|c| {
            c.receiver.window_bytes = 256 * 1024;
            c.save_every = u64::from(PIECE_SIZE);
        })
    } else {
        small_window()
    };
    cl.add_peer(&mut sim, "leecher", leecher);
    let f = cl.file("seeder", "big.bin");
    let dest = cl.download_dir("leecher").join("big.bin");
    let flag = Flag::default();
    let (handles, client_flag, trace) = (cl.handles.clone(), flag.clone(), cl.trace.clone());
    sim.client("ctl", async move {
        let h = handles.get("leecher").await;
        let (task, mut progress) = spawn_fetch(&h, "seeder", "big.bin", &dest).await?;
        crash_mid_transfer(&mut progress, &client_flag, first).await?;
        // The leecher died with its endpoint: the download future sees a closed endpoint.
        match task.await? {
            Err(ServiceError::Closed) => {}
            other => {
                return Err(
                    format!("expected Closed from a crashed endpoint, got {other:?}").into(),
                )
            }
        }
        // Its next life downloads again, to the same place (over the stale partial file).
        let h = handles.get_boot("leecher", 2).await;
        for attempt in 1.. {
            let res = fetch(&h, "seeder", "big.bin", &dest).await;
            match check_download(&res, &dest, &f)? {
                Checked::Complete => {
                    let from = res.map(|r| r.resumed_from).unwrap_or_default();
                    trace.record(
                        "ctl",
                        format_args!("complete at attempt {attempt} from {from}"),
                    );
                    if resume && (from == 0 || from % u64::from(PIECE_SIZE) != 0) {
                        return Err(
                            format!("did not resume from a recorded prefix ({from})").into()
                        );
                    }
                    return Ok(());
                }
                // The seeder still serves the dead transfer until its idle timeout.
                Checked::Failed(e) if busy(&e) && attempt < 30 => {
                    tokio::time::sleep(Duration::from_secs(1)).await
                }
                Checked::Failed(e) => return Err(format!("attempt {attempt} failed: {e}").into()),
            }
        }
        unreachable!()
    });
    run_until(&mut sim, Duration::from_secs(60), || flag.get())?;
    crash_then_restart(&mut sim, "leecher", &flag, Duration::from_secs(1))
}

seeded_tests! {
    crash_receiver_udp => |s| crash_receiver(s, Net::Udp, false);
    crash_receiver_resumes_udp => |s| crash_receiver(s, Net::Udp, true);
    crash_receiver_tcp => |s| crash_receiver(s, Net::Tcp, false);
}

/// Every name `via`'s tracker lists, or `None` when it does not answer.
async fn listed(h: &p2p_core::service::EndpointHandle) -> Option<Vec<String>> {
    let peers = h.list_peers(tracker_addr()).await.ok()?;
    Some(peers.into_iter().map(|p| p.name.to_string()).collect())
}

/// Polls the tracker (through `h`) until it lists exactly `want`, for at most `limit`.
async fn until_listed(
    h: &p2p_core::service::EndpointHandle,
    want: &[&str],
    limit: Duration,
) -> turmoil::Result {
    let end = tokio::time::Instant::now() + limit;
    loop {
        let got = listed(h).await;
        if got
            .as_deref()
            .is_some_and(|g| g.iter().map(String::as_str).eq(want.iter().copied()))
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= end {
            return Err(format!("the tracker lists {got:?}, not {want:?}, after {limit:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn crash_tracker(seed: u64, net: Net) -> turmoil::Result {
    let mut cl = Cluster::new(seed, net);
    let mut sim = cl.builder(Duration::from_secs(120)).build();
    cl.add_tracker(&mut sim, fast_registry(), None);
    cl.add_peer(&mut sim, "seeder", PeerOpts::sharing(&[("big.bin", FILE)]));
    cl.add_peer(&mut sim, "leecher", PeerOpts::default());
    cl.add_peer(&mut sim, "other", PeerOpts::default());
    let f = cl.file("seeder", "big.bin");
    let dest = cl.download_dir("leecher").join("big.bin");
    let flag = Flag::default();
    let (handles, client_flag) = (cl.handles.clone(), flag.clone());
    let all = ["leecher", "other", "seeder"];
    sim.client("ctl", async move {
        let h = handles.get("leecher").await;
        until_listed(&h, &all, Duration::from_secs(10)).await?;
        let (task, mut progress) = spawn_fetch(&h, "seeder", "big.bin", &dest).await?;
        if !wait_progress(&mut progress, 1, Duration::from_secs(30)).await {
            return Err("no progress before the crash".into());
        }
        client_flag.set(true);
        acted(&client_flag).await;
        // Peers talk directly: the transfer does not need the tracker.
        let res = task.await?;
        if check_download(&res, &dest, &f)? != Checked::Complete {
            return Err(format!("the transfer failed while the tracker was down: {res:?}").into());
        }
        // Heartbeats re-register everyone with the restarted tracker.
        until_listed(&h, &all, Duration::from_secs(10)).await
    });
    run_until(&mut sim, Duration::from_secs(60), || flag.get())?;
    crash_then_restart(&mut sim, "tracker", &flag, Duration::from_secs(2))
}

seeded_tests! {
    crash_tracker_udp => |s| crash_tracker(s, Net::Udp);
    crash_tracker_tcp => |s| crash_tracker(s, Net::Tcp);
}

fn crashed_peer_expires(seed: u64, net: Net) -> turmoil::Result {
    let mut cl = Cluster::new(seed, net);
    let mut sim = cl.builder(Duration::from_secs(60)).build();
    cl.add_tracker(&mut sim, fast_registry(), None);
    cl.add_peer(&mut sim, "alice", PeerOpts::default());
    cl.add_peer(&mut sim, "bob", PeerOpts::default());
    let flag = Flag::default();
    let (handles, client_flag) = (cl.handles.clone(), flag.clone());
    sim.client("ctl", async move {
        let h = handles.get("alice").await;
        until_listed(&h, &["alice", "bob"], Duration::from_secs(10)).await?;
        client_flag.set(true);
        acted(&client_flag).await;
        // TTL 3 s: bob is gone soon after, alice stays.
        until_listed(&h, &["alice"], Duration::from_secs(6)).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        until_listed(&h, &["alice"], Duration::ZERO).await
    });
    run_until(&mut sim, Duration::from_secs(30), || flag.get())?;
    sim.crash("bob");
    flag.set(false);
    run_sim(&mut sim)?;
    if !cl
        .trace
        .events()
        .iter()
        .any(|e| e.host == "tracker" && e.what == "expired bob")
    {
        return Err(format!("the tracker never expired bob:\n{}", cl.trace.dump()).into());
    }
    Ok(())
}

seeded_tests! {
    crashed_peer_expires_udp => |s| crashed_peer_expires(s, Net::Udp);
    crashed_peer_expires_tcp => |s| crashed_peer_expires(s, Net::Tcp);
}
