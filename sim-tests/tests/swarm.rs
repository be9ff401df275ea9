//! Multi-source downloads (`p2p_core::service::swarm`): one file from several sources at
//! once, every source doing a share of the work; sources that lie, vanish or get cut off;
//! a resume from a mix of sources; churn (sources crashing and joining mid-way). UDP runs
//! with 2 % loss on top.
//!
//! Every scenario ends with the exact bytes under the final name (and no partial or state
//! file), or with a clear error, nothing under the final name and a partial file whose
//! recorded pieces are the source's bytes.
//!
//! Hosts are crashed or restarted by the test thread between steps, on a client's request
//! ([`Acts`]), as `crash.rs` does with its flag.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use p2p_core::service::resume::{load_state, partial_path, state_path};
use p2p_core::service::swarm::{
    swarm_download, Source, SourceReport, SourceState, SwarmConfig, SwarmProgress, SwarmReport,
};
use p2p_core::service::{EndpointHandle, ServiceError};
use p2p_proto::wire::PIECE_SIZE;
use p2p_sim_tests::harness::run_sim;
use p2p_sim_tests::{
    fast_registry, find_entry, peer_addr, run_until, seeded_tests, tracker_addr, Cluster,
    FaultRates, Net, PeerOpts, SharedFile, Trace,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

const FILE: &str = "big.bin";
/// Piece size of every shared file (the share index's).
const PIECE: u64 = PIECE_SIZE as u64;

fn seeder(net: Net, size: usize) -> PeerOpts {
    let mut o = PeerOpts::sharing(&[(FILE, size)]).same_content("swarm");
    if net == Net::Udp {
        o.faults = Some((FaultRates::loss(0.02), FaultRates::NONE));
    }
    o
}

/// A source whose uploads together send at most `rate` bytes a second, so that a download
/// lasts long enough for something to happen mid-way.
fn capped(net: Net, size: usize, rate: u64) -> PeerOpts {
    seeder(net, size).tune(move |c| c.max_upload_rate = Some(rate))
}

/// The sources `names`, as the downloader finds them (each one's index entry of `FILE`).
async fn sources(via: &EndpointHandle, names: &[String]) -> Result<Vec<Source>, ServiceError> {
    let mut out = Vec::new();
    for name in names {
        let addr = peer_addr(name);
        let entry = find_entry(via, addr, FILE).await?;
        out.push(Source {
            name: name.clone(),
            addr,
            entry,
            partial: false,
        });
    }
    Ok(out)
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|n| n.to_string()).collect()
}

/// The download is exact and complete, and no partial or state file is left.
fn check_exact(
    res: &Result<SwarmReport, ServiceError>,
    dest: &Path,
    f: &SharedFile,
) -> Result<(), String> {
    let report = res.as_ref().map_err(|e| format!("download failed: {e}"))?;
    let got = std::fs::read(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    if blake3::hash(&got) != f.hash || got.len() as u64 != f.size {
        return Err("the downloaded file differs from the source".into());
    }
    if report.size != f.size || report.hash.0 != *f.hash.as_bytes() {
        return Err(format!(
            "report says {} bytes of {:?}",
            report.size, report.hash
        ));
    }
    let partial = partial_path(dest);
    let state = state_path(dest);
    if partial.exists() || state.exists() {
        return Err("partial or state file left behind".into());
    }
    Ok(())
}

/// A failed download: nothing under the final name, and either nothing left at all or (for
/// [`ServiceError::Incomplete`]) a partial file whose pieces the state file records are
/// exactly the source's, `kept` bytes of them. Returns the bytes kept.
fn check_kept(e: &ServiceError, dest: &Path, f: &SharedFile) -> Result<u64, String> {
    if dest.exists() {
        return Err(format!(
            "failed ({e}) but {} exists under the final name",
            dest.display()
        ));
    }
    let (partial, state) = (partial_path(dest), state_path(dest));
    let ServiceError::Incomplete { kept, .. } = e else {
        if partial.exists() || state.exists() {
            return Err(format!(
                "failed ({e}) without keeping anything, but left files behind"
            ));
        }
        return Ok(0);
    };
    let st = load_state(dest).ok_or_else(|| format!("{e}: but no readable state file"))?;
    let got = std::fs::read(&partial).map_err(|err| format!("{e}: partial file: {err}"))?;
    let want = std::fs::read(&f.source).map_err(|err| format!("the source: {err}"))?;
    let pieces = f.size.div_ceil(PIECE);
    let bits = st.pieces.as_ref().map(|b| b.to_vec()).unwrap_or_default();
    let mut recorded = 0;
    for i in 0..pieces {
        let in_prefix = i * PIECE < st.verified;
        let in_bitmap = bits
            .get((i / 8) as usize)
            .is_some_and(|b| b & (1 << (i % 8)) != 0);
        if !(in_prefix || in_bitmap) {
            continue;
        }
        let r = (i * PIECE) as usize..((i + 1) * PIECE).min(f.size) as usize;
        if got.get(r.clone()) != Some(&want[r.clone()]) {
            return Err(format!(
                "WRONG PIECE: {e}: the state file records piece {i}, which differs from the source"
            ));
        }
        recorded += r.len() as u64;
    }
    if recorded != *kept || *kept == 0 {
        return Err(format!("{e}: the state file records {recorded} bytes"));
    }
    Ok(*kept)
}

/// [`check_exact`], and the report, recorded in the trace (whose digest then covers it).
fn exact(
    trace: &Trace,
    res: Result<SwarmReport, ServiceError>,
    dest: &Path,
    f: &SharedFile,
) -> Result<SwarmReport, String> {
    check_exact(&res, dest, f)?;
    let r = res.expect("checked");
    trace.record(
        "ctl",
        format_args!(
            "done in {:?}, resumed from {}, {} refetched",
            r.elapsed, r.resumed_from, r.refetched
        ),
    );
    for s in &r.sources {
        trace.record(
            "ctl",
            format_args!("{}: {} bytes, {:?}", s.name, s.bytes, s.state),
        );
    }
    Ok(r)
}

fn report_of<'a>(sources: &'a [SourceReport], name: &str) -> Result<&'a SourceReport, String> {
    sources
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| format!("{name} is not in the report"))
}

/// Every source in `names` is still in use.
fn all_active(sources: &[SourceReport], names: &[String]) -> Result<(), String> {
    for n in names {
        let s = report_of(sources, n)?;
        if s.state != SourceState::Active {
            return Err(format!("{n} was dropped: {:?} (all: {sources:?})", s.state));
        }
    }
    Ok(())
}

/// The verified bytes of every source add up to `want`.
fn adds_up(sources: &[SourceReport], want: u64) -> Result<(), String> {
    let total: u64 = sources.iter().map(|s| s.bytes).sum();
    if total != want {
        return Err(format!(
            "sources sent {total} verified bytes, expected {want}: {sources:?}"
        ));
    }
    Ok(())
}

/// A swarm download running in a task of the calling client.
struct Running {
    task: JoinHandle<Result<SwarmReport, ServiceError>>,
    progress: watch::Receiver<SwarmProgress>,
}

fn spawn_swarm(
    h: &EndpointHandle,
    found: Vec<Source>,
    more: Option<mpsc::UnboundedReceiver<Source>>,
    dest: &Path,
    config: SwarmConfig,
) -> Running {
    let (tx, progress) = watch::channel(SwarmProgress::default());
    let (h, dest) = (h.clone(), dest.to_path_buf());
    let (hash, size) = (found[0].entry.hash, found[0].entry.size);
    let task =
        tokio::spawn(
            async move { swarm_download(&h, hash, size, found, more, dest, tx, config).await },
        );
    Running { task, progress }
}

/// Waits (in simulated time) until the download's progress satisfies `cond`, and returns it;
/// an error naming `what` (and how the download ended, if it did) when the download ended
/// first or `limit` passed.
async fn reach(
    run: &mut Running,
    limit: Duration,
    what: &str,
    cond: impl Fn(&SwarmProgress) -> bool,
) -> Result<SwarmProgress, String> {
    let progress = &mut run.progress;
    let wait = async {
        loop {
            {
                let p = progress.borrow_and_update();
                if cond(&p) {
                    return Some(p.clone());
                }
            }
            if progress.changed().await.is_err() {
                return None;
            }
        }
    };
    match tokio::time::timeout(limit, wait).await {
        Ok(Some(p)) => Ok(p),
        Ok(None) => {
            let last = run.progress.borrow().clone();
            let ended = (&mut run.task).await.map_err(|e| e.to_string())?;
            Err(format!(
                "the download ended before {what} ({} of {} bytes): {ended:?}",
                last.have, last.total
            ))
        }
        Err(_) => Err(format!(
            "no {what} within {limit:?}: {:?}",
            *run.progress.borrow()
        )),
    }
}

/// At least `percent` of the file verified.
fn past(percent: u64) -> impl Fn(&SwarmProgress) -> bool {
    move |p| p.total > 0 && p.have * 100 >= p.total * percent
}

/// What a client asks the test thread to do to the simulation.
#[derive(Clone, Debug)]
enum Act {
    Crash(String),
    Bounce(String),
}

/// Requests of the clients, carried out by [`drive`] between two steps.
#[derive(Clone, Default)]
struct Acts(Rc<RefCell<VecDeque<Act>>>);

impl Acts {
    /// Asks for `acts` and waits (in simulated time) until they are carried out.
    async fn request(&self, acts: impl IntoIterator<Item = Act>) {
        self.0.borrow_mut().extend(acts);
        while !self.0.borrow().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn crash(&self, host: &str) {
        self.request([Act::Crash(host.to_string())]).await
    }
}

/// Runs `sim` until its clients have finished, carrying out their requests as they come.
fn drive(sim: &mut turmoil::Sim<'_>, acts: &Acts) -> turmoil::Result {
    while run_until(sim, Duration::from_secs(3600), || {
        !acts.0.borrow().is_empty()
    })? {
        let todo: Vec<Act> = acts.0.borrow_mut().drain(..).collect();
        for act in todo {
            match act {
                Act::Crash(host) => sim.crash(host),
                Act::Bounce(host) => sim.bounce(host),
            }
        }
    }
    Ok(())
}

/// Four sources and a downloader: the file is exact, and every source sent a share of it.
fn four_sources(cl: &mut Cluster) -> turmoil::Result {
    four_sources_at(cl, None)
}

/// [`four_sources`] with every message taking `one_way` (a long path: with 50 ms, a 100 ms
/// round trip on top of the 2 % loss of UDP), or turmoil's default latency.
fn four_sources_at(cl: &mut Cluster, one_way: Option<Duration>) -> turmoil::Result {
    let net = cl.net;
    const SIZE: usize = 6 << 20;
    let mut builder = cl.builder(Duration::from_secs(120));
    if let Some(d) = one_way {
        builder.min_message_latency(d).max_message_latency(d);
    }
    let mut sim = builder.build();
    cl.add_tracker(&mut sim, fast_registry(), None);
    let names: Vec<String> = (0..4).map(|i| format!("seed{i}")).collect();
    for n in &names {
        cl.add_peer(&mut sim, n, seeder(net, SIZE));
    }
    cl.add_peer(&mut sim, "leecher", PeerOpts::default());
    let f = cl.file("seed0", FILE);
    let dest = cl.download_dir("leecher").join(FILE);
    let (handles, trace) = (cl.handles.clone(), cl.trace.clone());
    sim.client("ctl", async move {
        let h = handles.get("leecher").await;
        for n in &names {
            handles.get(n).await;
        }
        let found = sources(&h, &names).await?;
        let (tx, _rx) = watch::channel(SwarmProgress::default());
        let res = swarm_download(
            &h,
            found[0].entry.hash,
            found[0].entry.size,
            found,
            None,
            dest.clone(),
            tx,
            SwarmConfig::default(),
        )
        .await;
        let report = exact(&trace, res, &dest, &f)?;
        adds_up(&report.sources, f.size)?;
        for s in &report.sources {
            // Each of four gets runs in turn, the faster more (uncapped, on a lossy link, the
            // split varies: seed 7 gave one source 8 %), and none does most of the work alone.
            if s.bytes == 0 || s.bytes > f.size * 3 / 4 {
                return Err(format!(
                    "{} sent {} bytes of {}: {:?}",
                    s.name, s.bytes, f.size, report.sources
                )
                .into());
            }
        }
        all_active(&report.sources, &names)?;
        Ok(())
    });
    run_sim(&mut sim)
}

seeded_tests! {
    four_sources_share_the_work_udp => |s| four_sources(&mut Cluster::new(s, Net::Udp));
    four_sources_share_the_work_tcp => |s| four_sources(&mut Cluster::new(s, Net::Tcp));
    four_sources_over_a_100_ms_lossy_path_udp => |s| {
        four_sources_at(&mut Cluster::new(s, Net::Udp), Some(Duration::from_millis(50)))
    };
}

/// Flips a byte in the middle of every odd piece of `path` (of every piece, with `all`), then
/// puts its modification time back: its peer, which checks size and mtime only, goes on
/// listing and serving it under the hash it indexed.
fn corrupt_pieces(path: &Path, all: bool) -> std::io::Result<()> {
    let mtime = std::fs::metadata(path)?.modified()?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let size = file.metadata()?.len();
    let (first, step) = if all { (0, 1) } else { (1, 2) };
    for i in (first..size.div_ceil(PIECE)).step_by(step) {
        let at = (i * PIECE + PIECE / 2).min(size - 1);
        let mut b = [0u8];
        file.seek(SeekFrom::Start(at))?;
        file.read_exact(&mut b)?;
        b[0] ^= 0xA5;
        file.seek(SeekFrom::Start(at))?;
        file.write_all(&b)?;
    }
    file.sync_all()?;
    file.set_modified(mtime)?;
    drop(file);
    let now = std::fs::metadata(path)?;
    if now.modified()? != mtime || now.len() != size {
        return Err(std::io::Error::other("the modification time did not stick"));
    }
    Ok(())
}

/// One of four sources lies: its file was changed behind its index (every odd piece, or with
/// `all` every piece), so the bytes it sends do not match the hash it lists. It is banned at
/// its first bad piece, having sent at most a run's worth of good pieces before; the others
/// finish the exact file. Lying from its first piece, it costs one piece: a source is given
/// one run of one piece until it has sent a verified one.
fn lying_source(cl: &mut Cluster, all: bool) -> turmoil::Result {
    let net = cl.net;
    const SIZE: usize = 6 << 20;
    let mut sim = cl.builder(Duration::from_secs(120)).build();
    cl.add_tracker(&mut sim, fast_registry(), None);
    let names = names(&["seed0", "liar", "seed2", "seed3"]);
    for n in &names {
        cl.add_peer(&mut sim, n, seeder(net, SIZE));
    }
    cl.add_peer(&mut sim, "leecher", PeerOpts::default());
    let f = cl.file("seed0", FILE);
    let lie = cl.file("liar", FILE).source;
    let dest = cl.download_dir("leecher").join(FILE);
    let (handles, trace) = (cl.handles.clone(), cl.trace.clone());
    sim.client("ctl", async move {
        let h = handles.get("leecher").await;
        for n in &names {
            handles.get(n).await;
        }
        // The listing indexes the liar's file as it is (honest); then it changes.
        let found = sources(&h, &names).await?;
        corrupt_pieces(&lie, all)?;
        let listed = find_entry(&h, peer_addr("liar"), FILE).await?;
        if listed != found[1].entry {
            return Err(format!("the liar lists {listed:?} now, not {:?}", found[1].entry).into());
        }
        let config = SwarmConfig::default();
        // Its first run is the most it can be given before its first bad piece.
        let one_run = config.first_run * PIECE;
        let run = spawn_swarm(&h, found, None, &dest, config);
        let res = run.task.await?;
        let report = exact(&trace, res, &dest, &f)?;
        adds_up(&report.sources, f.size)?;
        let liar = report_of(&report.sources, "liar")?;
        match &liar.state {
            SourceState::Dropped(why) if why.contains("hash") => {}
            other => return Err(format!("the liar is {other:?}: {:?}", report.sources).into()),
        }
        if liar.bytes > one_run {
            return Err(format!(
                "the liar had {} verified bytes (more than a run)",
                liar.bytes
            )
            .into());
        }
        if all && (liar.runs != 1 || liar.bytes != 0) {
            return Err(format!(
                "a liar from the first piece had {} runs and {} verified bytes (one run of one \
                 piece expected)",
                liar.runs, liar.bytes
            )
            .into());
        }
        let honest: Vec<String> = names.iter().filter(|n| *n != "liar").cloned().collect();
        all_active(&report.sources, &honest)?;
        Ok(())
    });
    run_sim(&mut sim)
}

seeded_tests! {
    lying_source_is_banned_udp => |s| lying_source(&mut Cluster::new(s, Net::Udp), false);
    lying_source_is_banned_tcp => |s| lying_source(&mut Cluster::new(s, Net::Tcp), false);
    lying_from_the_first_piece_costs_one_piece_udp => |s| lying_source(&mut Cluster::new(s, Net::Udp), true);
}

/// A shorter stall than the default (10 s), so that a dead source is found out while the
/// download still runs.
fn quick_stall() -> SwarmConfig {
    SwarmConfig {
        stall: Duration::from_secs(3),
        ..SwarmConfig::default()
    }
}

/// One of four sources crashes (for good) once a quarter of the file is in: the others
/// finish the exact file, and the dead one is dropped.
fn source_vanishes(cl: &mut Cluster) -> turmoil::Result {
    let net = cl.net;
    const SIZE: usize = 12 << 20;
    const RATE: u64 = 512 * 1024;
    let mut sim = cl.builder(Duration::from_secs(120)).build();
    cl.add_tracker(&mut sim, fast_registry(), None);
    let all: Vec<String> = (0..4).map(|i| format!("seed{i}")).collect();
    for n in &all {
        cl.add_peer(&mut sim, n, capped(net, SIZE, RATE));
    }
    cl.add_peer(&mut sim, "leecher", PeerOpts::default());
    let f = cl.file("seed0", FILE);
    let dest = cl.download_dir("leecher").join(FILE);
    let (handles, acts, trace) = (cl.handles.clone(), Acts::default(), cl.trace.clone());
    let client_acts = acts.clone();
    sim.client("ctl", async move {
        let h = handles.get("leecher").await;
        for n in &all {
            handles.get(n).await;
        }
        let found = sources(&h, &all).await?;
        let mut run = spawn_swarm(&h, found, None, &dest, quick_stall());
        let at = reach(&mut run, Duration::from_secs(60), "a quarter", past(25)).await?;
        trace.record(
            "ctl",
            format_args!("crash seed2 at {} of {}", at.have, at.total),
        );
        client_acts.crash("seed2").await;
        let res = run.task.await?;
        let report = exact(&trace, res, &dest, &f)?;
        adds_up(&report.sources, f.size)?;
        // It lost its runs to the others: dropped, or (when the rest finished first) struck
        // once for the silence and not used since.
        let crashed = report_of(&report.sources, "seed2")?;
        match &crashed.state {
            SourceState::Dropped(why) => trace.record("ctl", format_args!("seed2 dropped: {why}")),
            SourceState::Active if crashed.failures > 0 => trace.record(
                "ctl",
                format_args!("seed2 failed {} time(s)", crashed.failures),
            ),
            other => {
                return Err(format!("the crashed source is {other:?}: {:?}", report.sources).into())
            }
        }
        let alive: Vec<String> = all.iter().filter(|n| *n != "seed2").cloned().collect();
        all_active(&report.sources, &alive)?;
        Ok(())
    });
    drive(&mut sim, &acts)
}

seeded_tests! {
    vanished_source_is_dropped_udp => |s| source_vanishes(&mut Cluster::new(s, Net::Udp));
    /// Regression: each message to the dead source (an ACK, the `Abort` of its stalled run,
    /// the `Request` of a new run) used to wait out the TCP connect timeout (3 s) inside the
    /// endpoint's loop, stalling every other source too; connects now run in the background.
    vanished_source_is_dropped_tcp => |s| source_vanishes(&mut Cluster::new(s, Net::Tcp));
}

/// The leecher is cut off from every source for `outage` once 30 % of the file is in and a
/// checkpoint is recorded, then the network heals. The download either completes (exact), or
/// fails with a clear error that keeps the verified pieces; then a second download to the same
/// place resumes from exactly those and completes (exact).
///
/// UDP only: turmoil's TCP never re-sends, so a partition breaks a TCP stream for good.
fn partition_heals(cl: &mut Cluster, outage: Duration) -> turmoil::Result {
    const SIZE: usize = 8 << 20;
    const RATE: u64 = 512 * 1024;
    let net = cl.net;
    assert_eq!(net, Net::Udp, "turmoil's TCP does not survive a partition");
    let mut sim = cl.builder(Duration::from_secs(180)).build();
    cl.add_tracker(&mut sim, fast_registry(), None);
    let all = names(&["seed0", "seed1", "seed2"]);
    for n in &all {
        cl.add_peer(&mut sim, n, capped(net, SIZE, RATE));
    }
    cl.add_peer(&mut sim, "leecher", PeerOpts::default());
    let f = cl.file("seed0", FILE);
    let dest = cl.download_dir("leecher").join(FILE);
    let (handles, trace) = (cl.handles.clone(), cl.trace.clone());
    sim.client("ctl", async move {
        let h = handles.get("leecher").await;
        for n in &all {
            handles.get(n).await;
        }
        let found = sources(&h, &all).await?;
        let mut run = spawn_swarm(&h, found.clone(), None, &dest, SwarmConfig::default());
        let at = reach(&mut run, Duration::from_secs(60), "30 % saved", |p| {
            past(30)(p) && p.saved > 0
        })
        .await?;
        trace.record(
            "ctl",
            format_args!("partition at {} (saved {})", at.have, at.saved),
        );
        for n in &all {
            turmoil::partition("leecher", n.as_str());
        }
        tokio::time::sleep(outage).await;
        for n in &all {
            turmoil::repair("leecher", n.as_str());
        }
        let res = run.task.await?;
        let e = match res {
            Ok(r) => {
                exact(&trace, Ok(r), &dest, &f)?;
                eprintln!("   partition of {outage:?}: completed");
                return Ok(());
            }
            Err(e) => e,
        };
        let kept = check_kept(&e, &dest, &f)?;
        if kept == 0 {
            return Err(format!("failed and kept nothing to resume: {e}").into());
        }
        eprintln!("   partition of {outage:?}: failed ({e}); resuming");
        let again = spawn_swarm(&h, found, None, &dest, SwarmConfig::default());
        let res = again.task.await?;
        let report = exact(&trace, res, &dest, &f)?;
        if report.resumed_from != kept {
            return Err(format!(
                "resumed from {}, but {kept} bytes were kept",
                report.resumed_from
            )
            .into());
        }
        adds_up(&report.sources, f.size - kept)?;
        Ok(())
    });
    run_sim(&mut sim)
}

seeded_tests! {
    /// Shorter than the stall and the idle timeouts: the runs go on after the repair.
    partition_heals_udp => |s| partition_heals(&mut Cluster::new(s, Net::Udp), Duration::from_secs(4));
    /// Longer than the stall (10 s, twice per source): every source is dropped, and the
    /// download fails with its pieces kept.
    partition_outlasts_the_sources_udp => |s| partition_heals(&mut Cluster::new(s, Net::Udp), Duration::from_secs(25));
}

/// A download from sources a and b is stopped past 30 % with a checkpoint recorded (its task
/// aborted; with `crash`, the leecher crashed and restarted too), and a and b crash for good.
/// A second download from c and d resumes from at least what the first recorded, and is exact.
fn resume_from_others(cl: &mut Cluster, crash: bool) -> turmoil::Result {
    let net = cl.net;
    const SIZE: usize = 8 << 20;
    const RATE: u64 = 512 * 1024;
    let mut sim = cl.builder(Duration::from_secs(120)).build();
    cl.add_tracker(&mut sim, fast_registry(), None);
    let all = names(&["a", "b", "c", "d"]);
    for n in &all {
        cl.add_peer(&mut sim, n, capped(net, SIZE, RATE));
    }
    cl.add_peer(&mut sim, "leecher", PeerOpts::default());
    let f = cl.file("a", FILE);
    let dest = cl.download_dir("leecher").join(FILE);
    let (handles, acts, trace) = (cl.handles.clone(), Acts::default(), cl.trace.clone());
    let client_acts = acts.clone();
    sim.client("ctl", async move {
        let h = handles.get("leecher").await;
        for n in &all {
            handles.get(n).await;
        }
        let mut found = sources(&h, &all).await?;
        let later = found.split_off(2);
        let mut run = spawn_swarm(&h, found, None, &dest, SwarmConfig::default());
        reach(&mut run, Duration::from_secs(60), "30 % saved", |p| {
            past(30)(p) && p.saved > 0
        })
        .await?;
        run.task.abort();
        let stopped = run.progress.borrow().clone();
        trace.record(
            "ctl",
            format_args!("stopped at {} (saved {})", stopped.have, stopped.saved),
        );
        let mut acts = vec![Act::Crash("a".into()), Act::Crash("b".into())];
        if crash {
            acts.extend([Act::Crash("leecher".into()), Act::Bounce("leecher".into())]);
        }
        client_acts.request(acts).await;
        if dest.exists() {
            return Err("a file under the final name after the stop".into());
        }
        let h = if crash {
            handles.get_boot("leecher", 2).await
        } else {
            h
        };
        let again = spawn_swarm(&h, later, None, &dest, SwarmConfig::default());
        let res = again.task.await?;
        let report = exact(&trace, res, &dest, &f)?;
        trace.record("ctl", format_args!("resumed from {}", report.resumed_from));
        if report.resumed_from < stopped.saved || report.resumed_from == 0 {
            return Err(format!(
                "resumed from {}, but {} bytes were recorded",
                report.resumed_from, stopped.saved
            )
            .into());
        }
        adds_up(&report.sources, f.size - report.resumed_from)?;
        all_active(&report.sources, &names(&["c", "d"]))?;
        Ok(())
    });
    drive(&mut sim, &acts)
}

seeded_tests! {
    resume_from_other_sources_after_crash_udp => |s| resume_from_others(&mut Cluster::new(s, Net::Udp), true);
    resume_from_other_sources_after_abort_udp => |s| resume_from_others(&mut Cluster::new(s, Net::Udp), false);
    /// Passes for every seed, but its simulated times are not the same from one process to
    /// the next (see `same_seed_same_swarm_run_after_crash_tcp`).
    resume_from_other_sources_after_crash_tcp => |s| resume_from_others(&mut Cluster::new(s, Net::Tcp), true);
    /// Regression: the aborted download's runs to the dead a and b used to stall the
    /// endpoint's loop 3 s per message (see `vanished_source_is_dropped_tcp`).
    resume_from_other_sources_after_abort_tcp => |s| resume_from_others(&mut Cluster::new(s, Net::Tcp), false);
}

/// Ten peers: a leecher, eight sources (two of which crash, at 20 % and at 55 %) and a ninth
/// source that joins through the `more` channel at 35 %. The file is exact, the late source
/// did part of the work, the two dead sources are dropped and the others are not.
fn churn(cl: &mut Cluster) -> turmoil::Result {
    let net = cl.net;
    const SIZE: usize = 24 << 20;
    const RATE: u64 = 512 * 1024;
    let mut sim = cl.builder(Duration::from_secs(120)).build();
    cl.add_tracker(&mut sim, fast_registry(), None);
    let all: Vec<String> = (0..8)
        .map(|i| format!("seed{i}"))
        .chain(["late".into()])
        .collect();
    for n in &all {
        cl.add_peer(&mut sim, n, capped(net, SIZE, RATE));
    }
    cl.add_peer(&mut sim, "leecher", PeerOpts::default());
    let f = cl.file("seed0", FILE);
    let dest = cl.download_dir("leecher").join(FILE);
    let (handles, acts, trace) = (cl.handles.clone(), Acts::default(), cl.trace.clone());
    let client_acts = acts.clone();
    sim.client("ctl", async move {
        let h = handles.get("leecher").await;
        for n in &all {
            handles.get(n).await;
        }
        let mut found = sources(&h, &all).await?;
        let late = found.pop().expect("nine");
        let (tx, rx) = mpsc::unbounded_channel();
        // Short runs, so that the first ones do not hand out the whole file to the eight.
        let config = SwarmConfig {
            first_run: 2,
            max_run: 4,
            ..quick_stall()
        };
        let mut run = spawn_swarm(&h, found, Some(rx), &dest, config.clone());
        let limit = Duration::from_secs(60);
        // What each dead source had sent when it died: it may add what was in flight then
        // (its two runs, at most), never more.
        let sent_by = |p: &SwarmProgress, name: &str| {
            p.sources
                .iter()
                .find(|s| s.name == name)
                .map_or(0, |s| s.bytes)
        };
        let mut at_death = Vec::new();
        let at = reach(&mut run, limit, "20 %", past(20)).await?;
        trace.record("ctl", format_args!("crash seed3 at {}", at.have));
        at_death.push(("seed3", sent_by(&at, "seed3")));
        client_acts.crash("seed3").await;
        let at = reach(&mut run, limit, "35 %", past(35)).await?;
        trace.record("ctl", format_args!("late source at {}", at.have));
        tx.send(late)
            .map_err(|_| "the download stopped listening for sources")?;
        let at = reach(&mut run, limit, "55 %", past(55)).await?;
        trace.record("ctl", format_args!("crash seed6 at {}", at.have));
        at_death.push(("seed6", sent_by(&at, "seed6")));
        client_acts.crash("seed6").await;
        let res = run.task.await?;
        let report = exact(&trace, res, &dest, &f)?;
        adds_up(&report.sources, f.size)?;
        let joined = report_of(&report.sources, "late")?;
        if joined.bytes == 0 || joined.state != SourceState::Active {
            return Err(format!("the late source: {joined:?}").into());
        }
        // A dead source lost its runs to the others: it sent nothing after its runs in flight
        // (it may not even have been struck, when the others finished its pieces first).
        let in_flight = 2 * config.max_run * u64::from(p2p_proto::wire::PIECE_SIZE);
        for (dead, then) in at_death {
            let s = report_of(&report.sources, dead)?;
            if s.bytes > then + in_flight {
                return Err(format!(
                    "{dead} sent {} bytes after it crashed: {:?}",
                    s.bytes - then,
                    report.sources
                )
                .into());
            }
        }
        let alive: Vec<String> = all
            .iter()
            .filter(|n| *n != "seed3" && *n != "seed6")
            .cloned()
            .collect();
        all_active(&report.sources, &alive)?;
        Ok(())
    });
    drive(&mut sim, &acts)
}

seeded_tests! {
    churn_of_ten_peers_udp => |s| churn(&mut Cluster::new(s, Net::Udp));
    /// Regression of the same stall as `vanished_source_is_dropped_tcp`.
    churn_of_ten_peers_tcp => |s| churn(&mut Cluster::new(s, Net::Tcp));
}

/// Runs `scenario` twice for `seed` on `net`, each time on a fresh cluster, and compares the
/// two traces (crashes, progress marks, every source's share and state, the simulated time
/// each download took): the same seed must replay the same run.
fn replays(
    seed: u64,
    net: Net,
    scenario: impl Fn(&mut Cluster) -> turmoil::Result,
) -> turmoil::Result {
    let once = || -> turmoil::Result<(String, String)> {
        let mut cl = Cluster::new(seed, net);
        scenario(&mut cl)?;
        Ok((cl.trace.digest(), cl.trace.dump()))
    };
    let (d1, t1) = once()?;
    let (d2, t2) = once()?;
    if d1 == d2 {
        return Ok(());
    }
    let first = t1
        .lines()
        .zip(t2.lines())
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    let show = |t: &str| {
        t.lines()
            .skip(first.saturating_sub(2))
            .take(6)
            .collect::<Vec<_>>()
            .join("\n")
    };
    Err(format!(
        "seed {seed} replayed differently (line {first}):\n--- run 1\n{}\n--- run 2\n{}",
        show(&t1),
        show(&t2)
    )
    .into())
}

seeded_tests! {
    same_seed_same_swarm_run_udp => |s| replays(s, Net::Udp, churn);
    same_seed_same_swarm_run_tcp => |s| replays(s, Net::Tcp, |cl| lying_source(cl, false));
    /// A TCP run with a crash does not replay exactly after other runs in the same process
    /// (seed 1 twice in one thread: the resumed download took 6.122 s, then 6.222 s). Not the
    /// swarm's doing: a crash drops the host's tokio runtime, whose tasks (TCP streams among
    /// them) are dropped shard by shard, and a task's shard is its id modulo 4, ids coming from
    /// a process-wide counter; so the order in which the dead host's streams close, and what
    /// follows in the simulation, depends on how many tasks the process spawned before.
    /// `crash.rs`'s `crash_tracker_tcp` does the same (`SIM_SEEDS=5,5`: 2.476 s, then 2.426 s).
    #[ignore = "TCP runs with a crash do not replay after other runs in the process: a crashed runtime drops its tasks in an order set by tokio's global task ids (most seeds; which ones depends on what ran before; crash_tracker_tcp too)"]
    same_seed_same_swarm_run_after_crash_tcp => |s| replays(s, Net::Tcp, |cl| resume_from_others(cl, true));
}

/// Downloaders serve: `first` and `second` fetch one file from a capped seeder, each serving
/// what it verified (`SwarmConfig::serve`). `second` starts when `first` is 40 % done, finds
/// `first` through the tracker as a download in progress (`WhoHas`, then `EntryByHash`
/// marked partial) and takes from it the pieces it has, asking as it goes which it has
/// (`HaveRequest`). Both files are exact; `first` sent `second` at least a quarter of the
/// file, so the seeder sent that much less than two copies.
fn downloader_serves(cl: &mut Cluster) -> turmoil::Result {
    let net = cl.net;
    const SIZE: usize = 8 << 20;
    const RATE: u64 = 1 << 20;
    let mut sim = cl.builder(Duration::from_secs(120)).build();
    cl.add_tracker(&mut sim, fast_registry(), None);
    cl.add_peer(&mut sim, "seed", capped(net, SIZE, RATE));
    cl.add_peer(&mut sim, "first", PeerOpts::default());
    cl.add_peer(&mut sim, "second", PeerOpts::default());
    let f = cl.file("seed", FILE);
    let dest1 = cl.download_dir("first").join(FILE);
    let dest2 = cl.download_dir("second").join(FILE);
    let (handles, trace) = (cl.handles.clone(), cl.trace.clone());
    sim.client("ctl", async move {
        let h1 = handles.get("first").await;
        let h2 = handles.get("second").await;
        handles.get("seed").await;
        let seed = sources(&h1, &names(&["seed"])).await?;
        let hash = seed[0].entry.hash;
        let config = SwarmConfig {
            serve: true,
            ..SwarmConfig::default()
        };
        let mut run1 = spawn_swarm(&h1, seed.clone(), None, &dest1, config.clone());
        let at = reach(&mut run1, Duration::from_secs(60), "40 %", past(40)).await?;
        trace.record("ctl", format_args!("second starts at {}", at.have));
        // Whoever the tracker says has the content, as `p2p get` finds them: `first` among
        // them once its announcement is in (a few heartbeats at most).
        let mut holders = Vec::new();
        for _ in 0..20 {
            holders = h2.who_has(tracker_addr(), hash).await?;
            if holders.iter().any(|p| &*p.name == "first") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let first = holders
            .iter()
            .find(|p| &*p.name == "first")
            .ok_or_else(|| format!("the tracker does not list first as a holder: {holders:?}"))?;
        let held = h2
            .entry_by_hash(first.addr, hash)
            .await?
            .ok_or("first does not answer for the content it downloads")?;
        if !held.partial {
            return Err("first's entry is not marked as a download in progress".into());
        }
        let mut found = seed;
        found.push(Source {
            name: "first".into(),
            addr: first.addr,
            entry: held.entry,
            partial: true,
        });
        let run2 = spawn_swarm(&h2, found, None, &dest2, config);
        let (res1, res2) = (run1.task.await?, run2.task.await?);
        exact(&trace, res1, &dest1, &f)?;
        let report = exact(&trace, res2, &dest2, &f)?;
        adds_up(&report.sources, f.size)?;
        let from_first = report_of(&report.sources, "first")?;
        if from_first.bytes < f.size / 4 {
            return Err(format!(
                "first sent second only {} bytes of {}: {:?}",
                from_first.bytes, f.size, report.sources
            )
            .into());
        }
        Ok(())
    });
    run_sim(&mut sim)
}

seeded_tests! {
    downloader_serves_what_it_verified_udp => |s| downloader_serves(&mut Cluster::new(s, Net::Udp));
    downloader_serves_what_it_verified_tcp => |s| downloader_serves(&mut Cluster::new(s, Net::Tcp));
}
