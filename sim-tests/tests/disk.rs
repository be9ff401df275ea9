//! The disk fails: on a [`SimDisk`], writes and reads fail (`EIO`), the disk fills up
//! (`ENOSPC`), syncs fail or are slow, the state file cannot be written, the publish fails,
//! and the downloader's machine loses power mid-way (its unsynced writes dropped or torn).
//!
//! Every scenario asserts the invariant ([`check_download`]): the final name holds the
//! verified bytes or nothing; a failed download leaves nothing or a recorded, verified
//! prefix; the error says what failed. Then the disk is repaired (or the machine restarted)
//! and the download is run again: it completes, resuming from exactly what the failure kept
//! (after a power loss: from what was truly synced).
//!
//! Where in the transfer a fault strikes is drawn from the seed.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use p2p_core::service::endpoint::{IoOp, ServiceError};
use p2p_core::service::resume::{load_state, partial_path};
use p2p_core::service::{DownloadReport, EndpointHandle};
use p2p_proto::transfer::TransferError;
use p2p_proto::wire::{AbortReason, PIECE_SIZE};
use p2p_sim_tests::{
    busy, check_download, fast_registry, fetch, mix, run_for, run_sim, run_until, seeded_tests,
    spawn_fetch, wait_progress, Checked, Cluster, DiskFault, Net, PeerOpts, SharedFile, SimDisk,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const PIECE: u64 = PIECE_SIZE as u64;
/// Eight pieces.
const SIZE: usize = 8 * PIECE_SIZE as usize;

/// Which side's disk fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Leecher,
    Seeder,
}

/// A leecher that records its verified prefix at every piece and keeps little in flight, so
/// that a fault strikes mid-transfer with checkpoints behind it.
fn leecher(disk: &SimDisk) -> PeerOpts {
    PeerOpts::default().on_disk(disk).tune(|c| {
        c.save_every = PIECE;
        c.receiver.window_bytes = 256 * 1024;
    })
}

/// Runs `fetch` until it is not refused as busy (the seeder may still serve a transfer the
/// other side gave up).
async fn fetch_retrying_busy(
    h: &EndpointHandle,
    dest: &std::path::Path,
) -> Result<DownloadReport, ServiceError> {
    let mut attempt = 0;
    loop {
        let res = fetch(h, "seeder", "big.bin", dest).await;
        match &res {
            Err(e) if busy(e) && attempt < 30 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            _ => return res,
        }
    }
}

/// The retry after the repair: completes, resuming from exactly `kept`.
fn completes_from(
    res: &Result<DownloadReport, ServiceError>,
    dest: &std::path::Path,
    f: &SharedFile,
    kept: u64,
) -> Result<(), String> {
    match check_download(res, dest, f)? {
        Checked::Complete => {}
        Checked::Failed(e) => return Err(format!("the retry after the repair failed: {e}")),
    }
    let from = res.as_ref().map(|r| r.resumed_from).unwrap_or_default();
    if from != kept {
        return Err(format!(
            "the retry resumed from {from}, but the failure kept {kept}"
        ));
    }
    Ok(())
}

/// One disk fault scenario: where the fault is, what it is (drawn from the seed), what
/// error the download must end with, and the circumstances.
#[derive(Clone, Copy)]
struct Case {
    side: Side,
    draw: fn(&mut SmallRng) -> DiskFault,
    expect: fn(&ServiceError) -> bool,
    /// The leecher reserves the file's space first (the default).
    preallocate: bool,
    /// Each sync takes this long, in simulated time.
    slow: Option<Duration>,
}

impl Case {
    /// A fault on the leecher's disk.
    fn leecher(draw: fn(&mut SmallRng) -> DiskFault, expect: fn(&ServiceError) -> bool) -> Self {
        Case {
            side: Side::Leecher,
            draw,
            expect,
            preallocate: true,
            slow: None,
        }
    }
}

/// Downloads `big.bin` with the case's fault on its side's disk, checks the invariant and
/// that the error is the expected one, then repairs the disk and downloads again: the retry
/// completes from what the failure kept.
fn fault_then_resume(seed: u64, net: Net, case: Case) -> turmoil::Result {
    let mut rng = SmallRng::seed_from_u64(mix(seed, "disk fault"));
    let fault = (case.draw)(&mut rng);
    let disk = SimDisk::new(mix(seed, "disk"));
    disk.fail(fault);
    if let Some(delay) = case.slow {
        disk.slow_syncs(delay);
    }
    let mut cl = Cluster::new(seed, net);
    let mut sim = cl.builder(Duration::from_secs(300)).build();
    cl.add_tracker(&mut sim, fast_registry(), None);
    let seeder = PeerOpts::sharing(&[("big.bin", SIZE)]);
    let preallocate = case.preallocate;
    let (seeder, leech) = match case.side {
        Side::Leecher => (seeder, leecher(&disk)),
        Side::Seeder => (seeder.on_disk(&disk), leecher(&SimDisk::new(0))),
    };
    cl.add_peer(&mut sim, "seeder", seeder);
    cl.add_peer(
        &mut sim,
        "leecher",
        leech.tune(move |c| c.preallocate = preallocate),
    );
    let f = cl.file("seeder", "big.bin");
    let dest = cl.download_dir("leecher").join("big.bin");
    let handles = cl.handles.clone();
    let expect = case.expect;
    sim.client("ctl", async move {
        let h = handles.get("leecher").await;
        let res = fetch(&h, "seeder", "big.bin", &dest).await;
        let kept = match check_download(&res, &dest, &f)? {
            Checked::Complete => {
                return Err(format!("the download succeeded despite {fault:?}").into())
            }
            Checked::Failed(e) if expect(&e) => match e {
                ServiceError::Incomplete { kept, .. } => kept,
                _ => 0,
            },
            Checked::Failed(e) => {
                return Err(format!("{fault:?}: not the expected error: {e} ({e:?})").into())
            }
        };
        if disk.injected().is_empty() {
            return Err(format!("{fault:?} was never hit").into());
        }
        if kept % PIECE != 0 {
            return Err(format!("kept {kept} bytes, not whole pieces").into());
        }
        disk.heal();
        let res = fetch_retrying_busy(&h, &dest).await;
        Ok(completes_from(&res, &dest, &f, kept)?)
    });
    run_sim(&mut sim)
}

/// A failed disk operation `op` of the download (maybe ending an incomplete one).
fn io_failed(e: &ServiceError, op: IoOp) -> bool {
    matches!(e.cause(), ServiceError::Io(io) if io.op == op)
}

/// A write failed: while the bytes came in, or when the last ones were flushed at the end.
fn write_failed(e: &ServiceError) -> bool {
    io_failed(e, IoOp::Write) || io_failed(e, IoOp::Finish)
}

fn disk_full(e: &ServiceError) -> bool {
    write_failed(e)
        && matches!(e.cause(), ServiceError::Io(io) if io.kind == std::io::ErrorKind::StorageFull)
}

fn no_room_at_start(e: &ServiceError) -> bool {
    matches!(e, ServiceError::NoSpace { .. })
}

fn progress_not_recorded(e: &ServiceError) -> bool {
    io_failed(e, IoOp::RecordProgress)
}

fn finish_failed(e: &ServiceError) -> bool {
    io_failed(e, IoOp::Finish)
}

fn publish_failed(e: &ServiceError) -> bool {
    io_failed(e, IoOp::Publish)
}

/// The sender said its disk failed (not a timeout: it did not just go silent).
fn sender_disk_failed(e: &ServiceError) -> bool {
    matches!(
        e.cause(),
        ServiceError::Transfer(TransferError::Aborted(AbortReason::DiskError))
    )
}

/// Somewhere inside the file.
fn inside(rng: &mut SmallRng) -> u64 {
    rng.gen_range(1..SIZE as u64)
}

fn write_error(seed: u64, net: Net) -> turmoil::Result {
    let draw = |r: &mut SmallRng| DiskFault::WriteError { after: inside(r) };
    fault_then_resume(seed, net, Case::leecher(draw, write_failed))
}

/// Without preallocation the disk fills up mid-download.
fn disk_full_mid_download(seed: u64, net: Net) -> turmoil::Result {
    let draw = |r: &mut SmallRng| DiskFault::NoSpace { after: inside(r) };
    let case = Case {
        preallocate: false,
        ..Case::leecher(draw, disk_full)
    };
    fault_then_resume(seed, net, case)
}

/// With preallocation a disk too small fails the download at once, leaving nothing.
fn disk_full_at_start(seed: u64, net: Net) -> turmoil::Result {
    let draw = |r: &mut SmallRng| DiskFault::NoSpace { after: inside(r) };
    fault_then_resume(seed, net, Case::leecher(draw, no_room_at_start))
}

/// The n-th checkpoint's sync fails (and every later one).
fn checkpoint_sync_error(seed: u64, net: Net) -> turmoil::Result {
    let draw = |r: &mut SmallRng| DiskFault::CheckpointSyncError {
        nth: r.gen_range(1..=4),
    };
    fault_then_resume(seed, net, Case::leecher(draw, progress_not_recorded))
}

/// The n-th state file cannot be written (and every later one).
fn state_write_error(seed: u64, net: Net) -> turmoil::Result {
    let draw = |r: &mut SmallRng| DiskFault::StateWriteError {
        nth: r.gen_range(1..=4),
    };
    fault_then_resume(seed, net, Case::leecher(draw, progress_not_recorded))
}

/// The finished file's `fsync` fails: nothing under the final name, the recorded prefix kept.
fn finish_sync_error(seed: u64, net: Net) -> turmoil::Result {
    let draw = |_: &mut SmallRng| DiskFault::FinishSyncError;
    fault_then_resume(seed, net, Case::leecher(draw, finish_failed))
}

/// Giving the verified file its name fails.
fn publish_error(seed: u64, net: Net) -> turmoil::Result {
    let draw = |_: &mut SmallRng| DiskFault::PublishError;
    fault_then_resume(seed, net, Case::leecher(draw, publish_failed))
}

/// The seeder's disk fails reading the file mid-transfer: the leecher hears why at once
/// and keeps what it verified.
fn sender_read_error(seed: u64, net: Net) -> turmoil::Result {
    let draw = |r: &mut SmallRng| DiskFault::ReadError { after: inside(r) };
    let case = Case {
        side: Side::Seeder,
        ..Case::leecher(draw, sender_disk_failed)
    };
    fault_then_resume(seed, net, case)
}

/// A slow disk (each sync 300 ms of simulated time): checkpoints lag behind the network,
/// and a write fault strikes while one may be in flight.
fn slow_disk_write_error(seed: u64, net: Net) -> turmoil::Result {
    let draw = |r: &mut SmallRng| DiskFault::WriteError { after: inside(r) };
    let case = Case {
        slow: Some(Duration::from_millis(300)),
        ..Case::leecher(draw, write_failed)
    };
    fault_then_resume(seed, net, case)
}

seeded_tests! {
    write_error_mid_download_udp => |s| write_error(s, Net::Udp);
    write_error_mid_download_tcp => |s| write_error(s, Net::Tcp);
    disk_full_mid_download_udp => |s| disk_full_mid_download(s, Net::Udp);
    disk_full_at_start_udp => |s| disk_full_at_start(s, Net::Udp);
    checkpoint_sync_error_udp => |s| checkpoint_sync_error(s, Net::Udp);
    state_write_error_udp => |s| state_write_error(s, Net::Udp);
    finish_sync_error_udp => |s| finish_sync_error(s, Net::Udp);
    finish_sync_error_tcp => |s| finish_sync_error(s, Net::Tcp);
    publish_error_udp => |s| publish_error(s, Net::Udp);
    sender_read_error_udp => |s| sender_read_error(s, Net::Udp);
    sender_read_error_tcp => |s| sender_read_error(s, Net::Tcp);
    slow_disk_write_error_udp => |s| slow_disk_write_error(s, Net::Udp);
}

/// Raised by the client when the test should crash the leecher.
type Flag = Rc<Cell<bool>>;

/// The leecher's machine loses power mid-download, at a point drawn from the seed: its
/// unsynced writes are dropped or torn. After the restart, the partial file's recorded
/// prefix is intact, and the download resumes from exactly it (with `fsync`), or (without
/// `fsync`: nothing was synced) the partial is discarded and the download starts over.
fn power_loss_then_resume(seed: u64, net: Net, fsync: bool) -> turmoil::Result {
    let mut rng = SmallRng::seed_from_u64(mix(seed, "crash point"));
    // In the first half: the crash must come before the last bytes are in (on TCP the window
    // is 1 MiB).
    let at = rng.gen_range(1..SIZE as u64 / 2);
    let disk = SimDisk::new(mix(seed, "disk"));
    disk.slow_syncs(Duration::from_millis(rng.gen_range(0..200)));
    let mut cl = Cluster::new(seed, net);
    let mut sim = cl.builder(Duration::from_secs(300)).build();
    cl.add_tracker(&mut sim, fast_registry(), None);
    // One upload slot: the new download starts only once the dead one was freed.
    cl.add_peer(
        &mut sim,
        "seeder",
        PeerOpts::sharing(&[("big.bin", SIZE)]).tune(|c| c.max_uploads = 1),
    );
    cl.add_peer(
        &mut sim,
        "leecher",
        leecher(&disk).tune(move |c| c.fsync = fsync),
    );
    let f = cl.file("seeder", "big.bin");
    let dest = cl.download_dir("leecher").join("big.bin");
    let flag = Flag::default();
    let recorded = Rc::new(Cell::new(None::<u64>));
    let (handles, client_flag, client_recorded) =
        (cl.handles.clone(), flag.clone(), recorded.clone());
    let (client_dest, client_f) = (dest.clone(), f.clone());
    sim.client("ctl", async move {
        let (dest, f) = (client_dest, client_f);
        let h = handles.get("leecher").await;
        let (task, mut progress) = spawn_fetch(&h, "seeder", "big.bin", &dest).await?;
        if !wait_progress(&mut progress, at, Duration::from_secs(60)).await {
            return Err("no progress before the crash".into());
        }
        // Nothing more reaches the leecher until it is down.
        turmoil::hold("seeder", "leecher");
        client_flag.set(true);
        while client_flag.get() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        turmoil::release("seeder", "leecher");
        match task.await? {
            Err(ServiceError::Closed) => {}
            other => {
                return Err(format!("expected Closed from a crashed leecher, got {other:?}").into())
            }
        }
        let h = handles.get_boot("leecher", 2).await;
        let res = fetch_retrying_busy(&h, &dest).await;
        let kept = client_recorded.get().expect("recorded after the crash");
        if fsync {
            return Ok(completes_from(&res, &dest, &f, kept)?);
        }
        // Nothing written before the power loss is trusted (its state names the old boot).
        Ok(completes_from(&res, &dest, &f, 0)?)
    });
    run_until(&mut sim, Duration::from_secs(120), || flag.get())?;
    sim.crash("leecher");
    disk.crash()?;
    // What the power loss left: the recorded prefix must be on disk, intact.
    let state = load_state(&dest);
    let verified = state.as_ref().map_or(0, |s| s.verified);
    let partial = std::fs::read(partial_path(&dest)).unwrap_or_default();
    if fsync {
        if (partial.len() as u64) < verified {
            return Err(format!(
                "the state records {verified} bytes but the partial holds {} after the crash",
                partial.len()
            )
            .into());
        }
        let source = std::fs::read(&f.source)?;
        if partial[..verified as usize] != source[..verified as usize] {
            return Err("the recorded prefix was damaged by the crash".into());
        }
    }
    recorded.set(Some(verified));
    flag.set(false);
    run_for(&mut sim, Duration::from_secs(1))?;
    sim.bounce("leecher");
    run_sim(&mut sim)
}

seeded_tests! {
    power_loss_then_resume_udp => |s| power_loss_then_resume(s, Net::Udp, true);
    power_loss_then_resume_tcp => |s| power_loss_then_resume(s, Net::Tcp, true);
    power_loss_without_fsync_starts_over_udp => |s| power_loss_then_resume(s, Net::Udp, false);
}

/// Two downloads race for one destination on a slow disk: one wins, the other is refused
/// (the destination is claimed, or already there); the winner's bytes are exact.
fn race_for_one_destination(seed: u64, net: Net) -> turmoil::Result {
    let disk = SimDisk::new(mix(seed, "disk"));
    disk.slow_syncs(Duration::from_millis(100));
    let mut cl = Cluster::new(seed, net);
    let mut sim = cl.builder(Duration::from_secs(300)).build();
    cl.add_tracker(&mut sim, fast_registry(), None);
    cl.add_peer(&mut sim, "seeder", PeerOpts::sharing(&[("big.bin", SIZE)]));
    cl.add_peer(&mut sim, "leecher", leecher(&disk));
    let f = cl.file("seeder", "big.bin");
    let dest = cl.download_dir("leecher").join("big.bin");
    let handles = cl.handles.clone();
    sim.client("ctl", async move {
        let h = handles.get("leecher").await;
        let (a, _) = spawn_fetch(&h, "seeder", "big.bin", &dest).await?;
        let (b, _) = spawn_fetch(&h, "seeder", "big.bin", &dest).await?;
        let (a, b) = (a.await?, b.await?);
        let mut complete = 0;
        for res in [&a, &b] {
            match res {
                Ok(_) => match check_download(res, &dest, &f)? {
                    Checked::Complete => complete += 1,
                    other => return Err(format!("reported done but {other:?}").into()),
                },
                Err(ServiceError::Locked(_) | ServiceError::DestinationExists(_)) => {}
                Err(e) => return Err(format!("unexpected failure: {e} ({e:?})").into()),
            }
        }
        if complete != 1 || std::fs::read(&dest)? != std::fs::read(&f.source)? {
            return Err(format!("expected one exact download: {a:?} / {b:?}").into());
        }
        Ok(())
    });
    run_sim(&mut sim)
}

seeded_tests! {
    race_for_one_destination_udp => |s| race_for_one_destination(s, Net::Udp);
}
