//! Multi-source downloads: one file fetched from every peer that has it at once.
//!
//! The file's pieces (the verified units of its [`PieceTable`]) are handed out in runs to the
//! sources; each run is one transfer of its own ([`EndpointHandle::fetch_range`]: a ranged
//! `Request`, congestion-controlled, every piece checked against the table as it arrives)
//! written straight into one shared partial file at its own offsets. A source asks for its
//! next run when one ends, so a faster source fetches more; runs grow with a source's
//! measured rate (about two seconds' worth). A run whose source makes no progress is taken
//! back and handed to the others. When nothing is left to hand out, an idle source fetches
//! the rest of the slowest run as well (the endgame), and whichever copy ends first wins.
//!
//! A source that sends a piece failing its hash is banned from the download (and named in the
//! report); one that stops answering is dropped after two strikes; one that is busy is asked
//! again later. New sources may join while the download runs.
//!
//! The state file records the verified pieces as a bitmap (after the partial file is synced,
//! as for a single-source download), so an interrupted download resumes from whatever mix of
//! sources is there next time. Bytes are written before their hash is checked, so pieces two
//! fetches wrote at once (the endgame's) are read back and checked before the file takes its
//! name.

mod plan;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::plan::{from_bitmap, Plan};
use super::endpoint::{
    DownloadReport, EndpointHandle, IoFailure, IoOp, PartialServed, Progress, RangeJob,
    ServiceError, NOT_HELD,
};
use super::resume::{self, partial_path, read_state, save_state, Discarded, DownloadState};
use super::storage::{Entry, FileHandle, SharedStorage, Storage};
use crate::transfer::{PieceHasher, PieceTable, TransferError};
use crate::wire::{AbortReason, ContentHash, IndexEntry};

/// A peer that has the content: where it is and how it lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// Its name (for the report).
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The file as it lists it (its id there; the size and hash are the content's).
    pub entry: IndexEntry,
    /// A download in progress: it serves only the pieces it verified so far, which are
    /// asked for ([`EndpointHandle::have`]) as it goes.
    pub partial: bool,
}

/// Tunables of a multi-source download.
#[derive(Clone, Debug)]
pub struct SwarmConfig {
    /// Runs fetched from one source at once (the next one's request overlaps the end of the
    /// last).
    pub per_source: usize,
    /// Most sources used at once.
    pub max_sources: usize,
    /// A run whose source verified nothing for this long is taken back.
    pub stall: Duration,
    /// Time a run should take at the source's measured rate (sets its length).
    pub run_time: Duration,
    /// Longest run, in pieces.
    pub max_run: u64,
    /// First run of a source, in pieces.
    pub first_run: u64,
    /// Memory for data in flight of the whole download, shared among its runs (as
    /// `ReceiverConfig::window_bytes` is for a single-source one).
    pub window_bytes: u64,
    /// Serve the verified pieces to others while downloading (see
    /// [`EndpointHandle::serve_partial`]), and fetch them in an order of this endpoint's own
    /// (from a point set by its address) rather than from the start, so that downloaders
    /// that start together hold different pieces to trade.
    pub serve: bool,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            per_source: 2,
            max_sources: 16,
            stall: Duration::from_secs(10),
            run_time: Duration::from_secs(2),
            max_run: 64,
            first_run: 4,
            window_bytes: crate::transfer::DEFAULT_WINDOW_BYTES,
            serve: false,
        }
    }
}

/// What became of a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceState {
    /// Usable.
    Active,
    /// Dropped for the rest of the download, and why.
    Dropped(String),
}

/// One source's part in a download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceReport {
    /// Its name.
    pub name: String,
    /// Its address.
    pub addr: SocketAddr,
    /// Verified bytes it sent.
    pub bytes: u64,
    /// Runs being fetched from it now.
    pub active: usize,
    /// Times it failed (a run that stalled or broke off; failures of one outage count once).
    pub failures: u32,
    /// Runs it was given.
    pub runs: u32,
    /// Whether it is still used.
    pub state: SourceState,
}

/// Progress of a multi-source download.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwarmProgress {
    /// File size (0 until the piece table is in).
    pub total: u64,
    /// Verified bytes (those of a resumed partial included).
    pub have: u64,
    /// Verified bytes the partial held at the start.
    pub resumed: u64,
    /// Bytes recorded in the state file (what a resume keeps).
    pub saved: u64,
    /// Every source heard of so far.
    pub sources: Vec<SourceReport>,
}

impl SwarmProgress {
    /// Sources in use now.
    pub fn active_sources(&self) -> usize {
        self.sources
            .iter()
            .filter(|s| s.state == SourceState::Active)
            .count()
    }
}

/// A completed multi-source download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmReport {
    /// Where the file now is.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its verified BLAKE3.
    pub hash: ContentHash,
    /// Time from start to verified file.
    pub elapsed: Duration,
    /// Verified bytes a partial download held at the start.
    pub resumed_from: u64,
    /// A stale partial download found and discarded, and why.
    pub discarded: Option<Discarded>,
    /// Every source and what it sent.
    pub sources: Vec<SourceReport>,
    /// Pieces written by two fetches at once and found bad on reading back (fetched again).
    pub refetched: u64,
}

/// Downloads the content `hash` (of `size` bytes) from `sources` (and those that arrive on
/// `more` while it runs) into `dest`. See the [module](self) documentation.
#[allow(clippy::too_many_arguments)]
pub async fn swarm_download(
    handle: &EndpointHandle,
    hash: ContentHash,
    size: u64,
    sources: Vec<Source>,
    more: Option<mpsc::UnboundedReceiver<Source>>,
    dest: PathBuf,
    progress: watch::Sender<SwarmProgress>,
    config: SwarmConfig,
) -> Result<SwarmReport, ServiceError> {
    let (storage, fsync, thread) = handle.storage();
    let storage = storage.clone();
    let _lock = storage.lock(&dest).map_err(ServiceError::Locked)?;
    if !matches!(storage.entry(&dest), Ok(Entry::Missing)) {
        return Err(ServiceError::DestinationExists(dest));
    }
    let mut swarm = Swarm {
        handle: handle.clone(),
        hash,
        size,
        dest,
        storage,
        fsync,
        thread,
        config,
        sources: Vec::new(),
        fetches: BTreeMap::new(),
        running: JoinSet::new(),
        next_id: 0,
        progress,
        started: Instant::now(),
        saved: 0,
        saved_at: Instant::now(),
        dirty: false,
        lookups: JoinSet::new(),
        avail: Vec::new(),
        offered: 0,
        grew_at: Instant::now(),
        origin: 0,
        served: None,
    };
    for s in sources {
        swarm.add_source(s);
    }
    swarm.run(more).await
}

struct SourceSlot {
    source: Source,
    state: SourceState,
    active: usize,
    /// Verified bytes from it.
    bytes: u64,
    /// Bytes per second over its finished runs.
    rate: Option<f64>,
    /// Failures in a row.
    strikes: u32,
    /// When the last one was counted.
    struck_at: Option<Instant>,
    /// Strikes in all (for the report).
    failures: u32,
    /// Runs given to it.
    runs: u32,
    /// Not asked again before this.
    backoff: Option<Instant>,
    /// The pieces it serves, as it last said (`None`: a whole file, all of them).
    has: Option<Vec<bool>>,
    /// Its pieces are being asked for.
    asking: bool,
    /// When they were last asked for.
    asked_at: Option<Instant>,
}

struct Fetch {
    source: usize,
    pieces: Range<u64>,
    /// Pieces of the run verified so far (from its start).
    verified_to: u64,
    progress: watch::Receiver<Progress>,
    cancel: Arc<AtomicBool>,
    started: Instant,
    moved_at: Instant,
    /// Taken back for making no progress (its cancel is set).
    stalled: bool,
    /// The other fetch of the same pieces (the endgame).
    twin: Option<u64>,
}

struct Swarm {
    handle: EndpointHandle,
    hash: ContentHash,
    size: u64,
    dest: PathBuf,
    storage: SharedStorage,
    fsync: bool,
    thread: bool,
    config: SwarmConfig,
    sources: Vec<SourceSlot>,
    fetches: BTreeMap<u64, Fetch>,
    running: JoinSet<(u64, Result<DownloadReport, ServiceError>)>,
    next_id: u64,
    progress: watch::Sender<SwarmProgress>,
    started: Instant,
    /// Verified bytes on record in the state file.
    saved: u64,
    saved_at: Instant,
    /// Pieces verified since the last checkpoint.
    dirty: bool,
    /// Lookups of the pieces partial sources serve.
    lookups: JoinSet<(usize, Result<Vec<bool>, ServiceError>)>,
    /// Partial sources (in use) that serve each piece.
    avail: Vec<u16>,
    /// The sum of `avail`: pieces offered by partial sources, counted once per source.
    offered: u64,
    /// When a piece was last verified or newly offered by a partial source.
    grew_at: Instant,
    /// Where runs start looking for free pieces ([`SwarmConfig::serve`]).
    origin: u64,
    /// This download, served to others ([`SwarmConfig::serve`]).
    served: Option<PartialServed>,
}

/// How often progress is sampled and stalls looked for.
const TICK: Duration = Duration::from_millis(100);
/// A checkpoint is recorded at most this often.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Failures in a row that drop a source.
const STRIKES: u32 = 2;
/// Wait before a busy or failing source is asked again.
const BACKOFF: Duration = Duration::from_secs(1);
/// Failures of a source this close to its last strike are part of the same one.
const STRIKE_EPISODE: Duration = Duration::from_secs(2);
/// Least memory for data in flight of one run.
const MIN_RUN_WINDOW: u64 = 2 << 20;
/// Piece tables tried (from different sources) before the download fails.
const TABLE_TRIES: usize = 4;
/// How often a partial source is asked which pieces it serves.
const HAVE_REFRESH: Duration = Duration::from_secs(1);

impl Swarm {
    fn add_source(&mut self, source: Source) {
        let known = self
            .sources
            .iter()
            .any(|s| s.source.addr == source.addr && s.source.entry.id == source.entry.id);
        if known
            || source.entry.hash != self.hash
            || source.entry.size != self.size
            || is_me(self.handle.local_addr(), source.addr)
        {
            return;
        }
        // A partial source serves nothing until it says which pieces.
        let has = source.partial.then(Vec::new);
        self.sources.push(SourceSlot {
            source,
            state: SourceState::Active,
            active: 0,
            bytes: 0,
            rate: None,
            strikes: 0,
            struck_at: None,
            failures: 0,
            runs: 0,
            backoff: None,
            has,
            asking: false,
            asked_at: None,
        });
    }

    /// Drops source `i` for the rest of the download; its runs in flight are cancelled (the
    /// caller pokes the endpoint).
    /// Runs that may be in flight at once: two per source in use, the twins of the endgame.
    fn max_runs(&self) -> usize {
        let usable = self.sources.len().min(self.config.max_sources).max(1);
        usable * self.config.per_source
    }

    fn drop_source(&mut self, i: usize, why: String) {
        let slot = &mut self.sources[i];
        if slot.state == SourceState::Active {
            tracing::info!(source = %slot.source.name, addr = %slot.source.addr, %why, "source dropped");
            slot.state = SourceState::Dropped(why);
            if let Some(has) = slot.has.take() {
                for (a, _) in self.avail.iter_mut().zip(has).filter(|(_, h)| *h) {
                    *a = a.saturating_sub(1);
                    self.offered = self.offered.saturating_sub(1);
                }
            }
        }
        for f in self.fetches.values().filter(|f| f.source == i) {
            f.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// The content's piece table, from the first source that gives one adding up to the hash.
    async fn table(&mut self) -> Result<PieceTable, ServiceError> {
        let mut last = None;
        for i in 0..self.sources.len() {
            if self.sources[i].state != SourceState::Active || i >= TABLE_TRIES {
                continue;
            }
            let (addr, entry) = (
                self.sources[i].source.addr,
                self.sources[i].source.entry.clone(),
            );
            match self.handle.piece_table(addr, &entry).await {
                Ok(t) if t.root(self.size) == Some(self.hash) => return Ok(t),
                Ok(_) => {
                    self.drop_source(
                        i,
                        "its piece table does not add up to the content hash".into(),
                    );
                    last = Some(ServiceError::Protocol(addr));
                }
                Err(e) => {
                    self.drop_source(i, e.to_string());
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ServiceError::Refused("no source has this content".into())))
    }

    async fn run(
        mut self,
        mut more: Option<mpsc::UnboundedReceiver<Source>>,
    ) -> Result<SwarmReport, ServiceError> {
        let table = self.table().await?;
        let piece = u64::from(table.piece_size);
        let (file, have, discarded) = self.open_partial(table.piece_size)?;
        let mut plan = Plan::new(have);
        self.avail = vec![0; plan.pieces() as usize];
        if self.config.serve {
            self.origin = origin(self.handle.local_addr(), self.hash, plan.pieces());
            let name = self
                .dest
                .file_name()
                .map_or_else(|| "download".into(), |n| n.to_string_lossy().into_owned());
            let have = (0..plan.pieces() as usize)
                .map(|i| plan.recordable(i))
                .collect();
            self.served = self
                .handle
                .serve_partial(
                    name,
                    self.hash,
                    self.size,
                    table.clone(),
                    file.clone(),
                    self.partial(),
                    have,
                )
                .await;
        }
        let resumed = bytes_of(&plan, piece, self.size);
        self.saved = resumed;
        self.progress.send_modify(|p| {
            p.total = self.size;
            p.have = resumed;
            p.resumed = resumed;
            p.saved = resumed;
        });
        let mut refetched = 0;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome: Result<(), ServiceError> = loop {
            self.sample(&mut plan, piece);
            self.refresh_haves(plan.pieces());
            if plan.complete() && self.fetches.is_empty() {
                // Pieces two fetches wrote are read back: a bad twin may have written over
                // what the good one verified.
                let bad = recheck(&file, &table, self.size, plan.take_contested()).map_err(|e| {
                    ServiceError::Io(IoFailure::new(IoOp::Finish, &self.partial(), &e))
                });
                match bad {
                    Ok(bad) if bad.is_empty() => break Ok(()),
                    Ok(bad) => {
                        tracing::warn!(
                            pieces = bad.len(),
                            "pieces written twice failed on reading back; fetching them again"
                        );
                        refetched += bad.len() as u64;
                        for i in bad {
                            plan.lost(i);
                        }
                        self.dirty = true;
                    }
                    Err(e) => break Err(e),
                }
            }
            if plan.complete() {
                // Only twins of the endgame left: they are not needed.
                let mut poke = false;
                for f in self.fetches.values() {
                    poke |= !f.cancel.swap(true, Ordering::Relaxed);
                }
                if poke {
                    self.handle.poke().await;
                }
            } else {
                self.assign(&mut plan, &table, &file, piece);
                if self.fetches.is_empty() {
                    // Nothing running and nobody to ask, now or after a wait: what sources
                    // join later would be found by a new run (which resumes).
                    // Partial sources may yet verify what is missing (for `stall` after
                    // the last sign of it).
                    let waiting = self.sources.iter().any(|s| {
                        s.state == SourceState::Active
                            && (s.backoff.is_some()
                                || (s.has.is_some() && self.grew_at.elapsed() < self.config.stall))
                    });
                    if !waiting {
                        break Err(self.no_sources_left());
                    }
                }
            }
            self.publish(&plan, piece);
            if self.dirty && self.saved_at.elapsed() >= SAVE_EVERY {
                if let Err(e) = self.checkpoint(&file, &plan, &table).await {
                    break Err(e);
                }
            }
            // Biased, in a fixed order: a simulation replays exactly from its seed.
            tokio::select! {
                biased;
                Some(joined) = self.running.join_next() => {
                    let Ok((id, result)) = joined else { continue };
                    if let Err(e) = self.ended(&mut plan, piece, id, result).await {
                        break Err(e);
                    }
                }
                Some(joined) = self.lookups.join_next() => {
                    if let Ok((i, result)) = joined {
                        self.have_answered(&plan, i, result);
                    }
                }
                got = recv_source(&mut more) => match got {
                    Some(s) => self.add_source(s),
                    None => more = None,
                },
                _ = tick.tick() => {
                    self.unstall().await;
                    let now = Instant::now();
                    for s in &mut self.sources {
                        if s.backoff.is_some_and(|t| t <= now) {
                            s.backoff = None;
                        }
                    }
                }
            }
        };
        match outcome {
            Ok(()) => {
                self.publish(&plan, piece);
                self.finish(&file)?;
                let sources = self.progress.borrow().sources.clone();
                Ok(SwarmReport {
                    path: self.dest.clone(),
                    size: self.size,
                    hash: self.hash,
                    elapsed: self.started.elapsed(),
                    resumed_from: resumed,
                    discarded,
                    sources,
                    refetched,
                })
            }
            Err(e) => {
                for f in self.fetches.values() {
                    f.cancel.store(true, Ordering::Relaxed);
                }
                self.handle.poke().await;
                while let Some(Ok((id, result))) = self.running.join_next().await {
                    let _ = self.ended(&mut plan, piece, id, result).await;
                }
                self.publish(&plan, piece);
                if self.dirty {
                    let _ = self.checkpoint(&file, &plan, &table).await;
                }
                Err(if self.saved > 0 {
                    ServiceError::Incomplete {
                        cause: Box::new(e),
                        kept: self.saved,
                        partial: self.partial(),
                    }
                } else {
                    resume::discard(&*self.storage, &self.dest);
                    e
                })
            }
        }
    }

    fn partial(&self) -> PathBuf {
        partial_path(&self.dest)
    }

    /// The error when no source is left: each one's reason.
    fn no_sources_left(&self) -> ServiceError {
        let why: Vec<String> = self
            .sources
            .iter()
            .map(|s| match &s.state {
                SourceState::Dropped(why) => {
                    format!("{} ({}): {why}", s.source.name, s.source.addr)
                }
                SourceState::Active if s.has.is_some() => format!(
                    "{} ({}): downloading too, without the pieces still missing",
                    s.source.name, s.source.addr
                ),
                SourceState::Active => format!("{} ({}): idle", s.source.name, s.source.addr),
            })
            .collect();
        if why.is_empty() {
            return ServiceError::Refused("no source has this content".into());
        }
        ServiceError::Refused(format!("no source left to fetch from: {}", why.join("; ")))
    }

    /// Opens (or creates) the partial file, at the file's full length, and what of it a
    /// matching state file says is verified; anything stale is removed.
    fn open_partial(
        &self,
        piece_size: u32,
    ) -> Result<(FileHandle, Vec<bool>, Option<Discarded>), ServiceError> {
        let storage = &*self.storage;
        let partial = self.partial();
        let pieces = self.size.div_ceil(u64::from(piece_size));
        let write_failed =
            |e: std::io::Error| ServiceError::Io(IoFailure::new(IoOp::Write, &partial, &e));
        let kept = resumable(
            storage, &self.dest, self.size, self.hash, piece_size, pieces,
        );
        let (have, discarded) = match kept {
            Ok(have) => (have, None),
            Err(why) => {
                resume::discard(storage, &self.dest);
                (None, why)
            }
        };
        let (file, have) = match have {
            Some(have) => (storage.open_partial(&partial).map_err(write_failed)?, have),
            None => (
                storage.create_partial(&partial).map_err(write_failed)?,
                vec![false; pieces as usize],
            ),
        };
        file.set_len(self.size).map_err(write_failed)?;
        Ok((file, have, discarded))
    }

    /// Hands runs to every source that has room for one.
    fn assign(&mut self, plan: &mut Plan, table: &PieceTable, file: &FileHandle, piece: u64) {
        let now = Instant::now();
        let in_use = self.sources.iter().filter(|s| s.active > 0).count();
        // Fastest first: in the endgame the first idle source takes the twin run.
        let mut order: Vec<usize> = (0..self.sources.len()).collect();
        order.sort_by(|&a, &b| {
            let rate = |i: usize| self.sources[i].rate.unwrap_or(0.0);
            rate(b).total_cmp(&rate(a))
        });
        for i in order {
            loop {
                let s = &self.sources[i];
                // On probation until its first verified piece: one run of one piece, so that
                // a source lying from the start costs one piece, not runs of them.
                let proven = s.bytes > 0;
                let per_source = if proven { self.config.per_source } else { 1 };
                let usable = s.state == SourceState::Active
                    && s.backoff.is_none_or(|t| t <= now)
                    && s.active < per_source
                    && (s.active > 0 || in_use < self.config.max_sources);
                if !usable {
                    break;
                }
                let usable_sources = self
                    .sources
                    .iter()
                    .filter(|s| s.state == SourceState::Active)
                    .count()
                    .max(1) as u64;
                let want = match s.rate {
                    _ if !proven => 1,
                    Some(rate) => (rate * self.config.run_time.as_secs_f64() / piece as f64) as u64,
                    None => self.config.first_run,
                }
                .clamp(1, self.config.max_run)
                // The tail is shared out, not taken by the first to ask.
                .min(
                    plan.free_count()
                        .div_ceil(usable_sources * self.config.per_source as u64)
                        .max(1),
                );
                let (pieces, twin) = match self.take_for(plan, i, want) {
                    Some(run) => (run, None),
                    None => match self.endgame_pick(i) {
                        Some((twin, run)) => {
                            plan.duplicate(run.clone());
                            (run, Some(twin))
                        }
                        None => break,
                    },
                };
                self.start(i, pieces, twin, table, file, piece);
            }
        }
    }

    /// A run of at most `want` free pieces for source `i`: of those it serves, from
    /// `origin`. A whole source is given first the pieces no partial source serves (those
    /// only it can give), in order from the start unless this download spreads its order
    /// ([`SwarmConfig::serve`]).
    fn take_for(&self, plan: &mut Plan, i: usize, want: u64) -> Option<Range<u64>> {
        match &self.sources[i].has {
            Some(has) => plan.take_run_where(want, self.origin, |p| {
                has.get(p as usize).copied().unwrap_or(false)
            }),
            None if !self.config.serve && !self.partials_offer() => plan.take_run(want),
            // From a point of its own for each run: downloaders that all look for the pieces
            // nobody has would otherwise converge on the same ones, and the seeder send them
            // twice.
            None => {
                let from = match self.config.serve {
                    true => spread(self.origin, self.next_id, plan.pieces()),
                    false => 0,
                };
                plan.take_run_where(want, from, |p| self.avail[p as usize] == 0)
                    .or_else(|| plan.take_run_where(want, from, |_| true))
            }
        }
    }

    /// Whether a partial source in use serves any piece.
    fn partials_offer(&self) -> bool {
        self.offered > 0
    }

    /// Asks each partial source in use which pieces it serves, every [`HAVE_REFRESH`] (one
    /// question at a time).
    fn refresh_haves(&mut self, pieces: u64) {
        let now = Instant::now();
        for (i, s) in self.sources.iter_mut().enumerate() {
            let due = s.asked_at.is_none_or(|t| now >= t + HAVE_REFRESH);
            if s.state != SourceState::Active || s.has.is_none() || s.asking || !due {
                continue;
            }
            s.asking = true;
            let (handle, addr, hash) = (self.handle.clone(), s.source.addr, self.hash);
            self.lookups
                .spawn(async move { (i, handle.have(addr, hash, pieces).await) });
        }
    }

    /// A partial source said which pieces it serves (or failed to).
    fn have_answered(&mut self, plan: &Plan, i: usize, result: Result<Vec<bool>, ServiceError>) {
        let slot = &mut self.sources[i];
        slot.asking = false;
        slot.asked_at = Some(Instant::now());
        if slot.state != SourceState::Active {
            return;
        }
        match result {
            Ok(new) => {
                let Some(old) = slot.has.as_mut() else {
                    return;
                };
                old.resize(new.len(), false);
                let mut grew = false;
                for (p, (was, now)) in old.iter_mut().zip(&new).enumerate() {
                    if *now && !*was {
                        self.avail[p] = self.avail[p].saturating_add(1);
                        self.offered += 1;
                        grew |= !plan.have()[p];
                    } else if *was && !*now {
                        self.avail[p] = self.avail[p].saturating_sub(1);
                        self.offered = self.offered.saturating_sub(1);
                    }
                    *was = *now;
                }
                if grew {
                    self.grew_at = Instant::now();
                }
            }
            Err(ServiceError::Refused(_)) => {
                self.drop_source(i, "no longer has this content".into());
            }
            Err(e) => self.strike(i, e.to_string()),
        }
    }

    /// The endgame: the run of another source with the most pieces left that has no twin yet,
    /// and those pieces. (A twin is never replaced while it runs: with slow sources, twins
    /// replaced before their first piece would be replaced again, for ever; a twin that makes
    /// no progress at all is taken back at `stall`, which frees its run for another.)
    fn endgame_pick(&self, source: usize) -> Option<(u64, Range<u64>)> {
        self.fetches
            .iter()
            .filter(|(_, f)| f.source != source && f.twin.is_none())
            .filter(|(_, f)| !f.cancel.load(Ordering::Relaxed))
            .filter(|(_, f)| f.pieces.start + f.verified_to < f.pieces.end)
            .filter(|(_, f)| match &self.sources[source].has {
                None => true,
                Some(has) => (f.pieces.start + f.verified_to..f.pieces.end)
                    .all(|p| has.get(p as usize).copied().unwrap_or(false)),
            })
            .max_by_key(|(_, f)| {
                (
                    f.pieces.end - f.pieces.start - f.verified_to,
                    std::cmp::Reverse(f.started),
                )
            })
            .map(|(&id, f)| (id, f.pieces.start + f.verified_to..f.pieces.end))
    }

    fn start(
        &mut self,
        source: usize,
        pieces: Range<u64>,
        twin: Option<u64>,
        table: &PieceTable,
        file: &FileHandle,
        piece: u64,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        let range = pieces.start * piece..(pieces.end * piece).min(self.size);
        let (tx, rx) = watch::channel(Progress::default());
        let cancel = Arc::new(AtomicBool::new(false));
        let job = RangeJob {
            peer: self.sources[source].source.addr,
            entry: self.sources[source].source.entry.clone(),
            table: table.clone(),
            file: file.clone(),
            range,
            cancel: cancel.clone(),
            // The download's budget shared among the runs it may have at once (at least
            // `MIN_RUN_WINDOW` each): many sources do not multiply its memory.
            window_bytes: Some(
                (self.config.window_bytes / self.max_runs() as u64).max(MIN_RUN_WINDOW),
            ),
        };
        let handle = self.handle.clone();
        self.running
            .spawn(async move { (id, handle.fetch_range(job, tx).await) });
        if let Some(t) = twin.and_then(|t| self.fetches.get_mut(&t)) {
            t.twin = Some(id);
        }
        let now = Instant::now();
        self.fetches.insert(
            id,
            Fetch {
                source,
                pieces,
                verified_to: 0,
                progress: rx,
                cancel,
                started: now,
                moved_at: now,
                stalled: false,
                twin,
            },
        );
        self.sources[source].active += 1;
        self.sources[source].runs += 1;
    }

    /// Takes in the pieces every running fetch verified since the last look.
    fn sample(&mut self, plan: &mut Plan, piece: u64) {
        let ids: Vec<u64> = self.fetches.keys().copied().collect();
        for id in ids {
            self.sample_one(plan, piece, id);
        }
    }

    fn sample_one(&mut self, plan: &mut Plan, piece: u64, id: u64) {
        let Some(f) = self.fetches.get_mut(&id) else {
            return;
        };
        let verified = f.progress.borrow().verified;
        let start = f.pieces.start;
        let upto = if verified >= self.size {
            f.pieces.end
        } else {
            (verified / piece).clamp(start, f.pieces.end)
        };
        if upto > start + f.verified_to {
            let mut bytes = 0;
            for i in start + f.verified_to..upto {
                if !plan.have()[i as usize] {
                    bytes += piece_len(i, piece, self.size);
                }
                plan.verified(i);
                if let Some(served) = self.served.as_ref().filter(|_| plan.recordable(i as usize)) {
                    served.mark(i);
                }
            }
            self.grew_at = Instant::now();
            f.verified_to = upto - start;
            f.moved_at = Instant::now();
            self.sources[f.source].bytes += bytes;
            self.dirty = true;
        }
    }

    /// A fetch ended: its pieces are taken in, what it did not verify is handed out again,
    /// and its source is judged by how it ended.
    async fn ended(
        &mut self,
        plan: &mut Plan,
        piece: u64,
        id: u64,
        result: Result<DownloadReport, ServiceError>,
    ) -> Result<(), ServiceError> {
        self.sample_one(plan, piece, id);
        let Some(f) = self.fetches.remove(&id) else {
            return Ok(());
        };
        plan.release(f.pieces.start + f.verified_to..f.pieces.end);
        self.sources[f.source].active -= 1;
        if let Some(t) = f.twin.and_then(|t| self.fetches.get_mut(&t)) {
            if t.twin == Some(id) {
                t.twin = None;
            }
            if result.is_ok() {
                t.cancel.store(true, Ordering::Relaxed);
                self.handle.poke().await;
            }
        }
        let cancelled = f.cancel.load(Ordering::Relaxed);
        tracing::debug!(
            source = %self.sources[f.source].source.name,
            pieces = ?f.pieces,
            verified = f.verified_to,
            took = ?f.started.elapsed(),
            cancelled,
            result = ?result.as_ref().map(|r| r.received),
            "run ended"
        );
        let slot = &mut self.sources[f.source];
        match result {
            Ok(report) => {
                let secs = report.elapsed.as_secs_f64().max(1e-3);
                let rate = report.received as f64 / secs;
                slot.rate = Some(match slot.rate {
                    Some(old) => 0.5 * old + 0.5 * rate,
                    None => rate,
                });
                slot.strikes = 0;
                slot.struck_at = None;
                Ok(())
            }
            Err(_) if cancelled => Ok(()),
            Err(e) => {
                let verdict = self.judge(f.source, e);
                // A dropped source's other runs were cancelled: the endpoint ends them now.
                self.handle.poke().await;
                verdict
            }
        }
    }

    /// What a failed fetch says about its source.
    fn judge(&mut self, i: usize, e: ServiceError) -> Result<(), ServiceError> {
        use TransferError as T;
        let slot = &mut self.sources[i];
        match e.cause() {
            ServiceError::Io(_) | ServiceError::NoSpace { .. } | ServiceError::Closed => Err(e),
            ServiceError::Transfer(T::PieceMismatch { piece }) => {
                let why =
                    format!("sent piece {piece}, which fails its hash: banned from this download");
                self.drop_source(i, why);
                Ok(())
            }
            ServiceError::Transfer(
                T::Changed(_)
                | T::Aborted(AbortReason::NoSuchFile | AbortReason::FileChanged)
                | T::HashMismatch,
            ) => {
                self.drop_source(i, "no longer has this content".into());
                Ok(())
            }
            ServiceError::Transfer(T::Aborted(AbortReason::Busy)) => {
                slot.backoff = Some(Instant::now() + BACKOFF);
                Ok(())
            }
            // A partial source without those pieces after all (it started again, say): its
            // pieces are asked for again; not a failure.
            ServiceError::Transfer(T::Aborted(AbortReason::Other(why))) if why == NOT_HELD => {
                slot.backoff = Some(Instant::now() + BACKOFF);
                slot.asked_at = None;
                Ok(())
            }
            other => {
                let why = other.to_string();
                self.strike(i, why);
                Ok(())
            }
        }
    }

    /// A failure of source `i`: it is asked again after [`BACKOFF`], and dropped at its
    /// [`STRIKES`]th. Failures within [`STRIKE_EPISODE`] of the last strike (its runs in
    /// flight failing together, one outage) are one strike.
    fn strike(&mut self, i: usize, why: String) {
        let now = Instant::now();
        let slot = &mut self.sources[i];
        slot.backoff = Some(now + BACKOFF);
        if slot.struck_at.is_some_and(|t| now < t + STRIKE_EPISODE) {
            return;
        }
        slot.struck_at = Some(now);
        slot.strikes += 1;
        slot.failures += 1;
        if slot.strikes >= STRIKES {
            self.drop_source(i, why);
        }
    }

    /// Takes back the runs whose source verified nothing for `stall` (they end, then their
    /// pieces go to others).
    async fn unstall(&mut self) {
        let stall = self.config.stall;
        let mut stalled = Vec::new();
        for f in self.fetches.values_mut() {
            if !f.stalled && !f.cancel.load(Ordering::Relaxed) && f.moved_at.elapsed() >= stall {
                f.stalled = true;
                f.cancel.store(true, Ordering::Relaxed);
                stalled.push(f.source);
            }
        }
        // One silence of a source is one strike, however many of its runs it stalled.
        stalled.sort_unstable();
        stalled.dedup();
        if stalled.is_empty() {
            return;
        }
        for i in stalled {
            // A stalled run counts as a failure of its source.
            tracing::info!(source = %self.sources[i].source.name, "run stalled: taken back");
            self.strike(i, format!("sent nothing for {} s", stall.as_secs()));
        }
        self.handle.poke().await;
    }

    fn publish(&self, plan: &Plan, piece: u64) {
        let have = bytes_of(plan, piece, self.size);
        let sources: Vec<SourceReport> = self
            .sources
            .iter()
            .map(|s| SourceReport {
                name: s.source.name.clone(),
                addr: s.source.addr,
                bytes: s.bytes,
                active: s.active,
                failures: s.failures,
                runs: s.runs,
                state: s.state.clone(),
            })
            .collect();
        let saved = self.saved;
        self.progress.send_if_modified(|p| {
            let changed = p.have != have || p.sources != sources || p.saved != saved;
            p.have = have;
            p.saved = saved;
            p.sources = sources;
            changed
        });
    }

    /// Syncs the partial file, then records the verified pieces (as a single-source
    /// download's checkpoint does: the state never names bytes not on disk).
    async fn checkpoint(
        &mut self,
        file: &FileHandle,
        plan: &Plan,
        table: &PieceTable,
    ) -> Result<(), ServiceError> {
        let piece = u64::from(table.piece_size);
        let unsynced_boot = if self.fsync {
            None
        } else {
            match self.storage.boot_id() {
                Some(boot) => Some(boot),
                None => return Ok(()), // unsynced bytes cannot be vouched for here
            }
        };
        let state = DownloadState {
            version: 1,
            size: self.size,
            hash: self.hash,
            piece_size: table.piece_size,
            verified: (plan.prefix() * piece).min(self.size),
            unsynced_boot,
            pieces: Some(serde_bytes::ByteBuf::from(plan.bitmap())),
        };
        let have = bytes_of(plan, piece, self.size);
        let (storage, dest, file, fsync) = (
            self.storage.clone(),
            self.dest.clone(),
            file.clone(),
            self.fsync,
        );
        let record = move || -> std::io::Result<()> {
            if fsync {
                file.sync_data()?;
            }
            save_state(&*storage, &dest, &state, fsync)
        };
        let res = if self.thread {
            tokio::task::spawn_blocking(record)
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        } else {
            tokio::time::sleep(self.storage.sync_delay()).await;
            record()
        };
        self.saved_at = Instant::now();
        self.dirty = false;
        res.map_err(|e| {
            ServiceError::Io(IoFailure::new(IoOp::RecordProgress, &self.partial(), &e))
        })?;
        self.saved = have;
        Ok(())
    }

    /// Syncs the complete file, gives it its name and removes the state file.
    fn finish(&self, file: &FileHandle) -> Result<(), ServiceError> {
        let storage = &*self.storage;
        let partial = self.partial();
        if self.fsync {
            file.sync_all()
                .map_err(|e| ServiceError::Io(IoFailure::new(IoOp::Finish, &partial, &e)))?;
        }
        match storage.publish(file, &partial, &self.dest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let existing = storage.hash_file(&self.dest).ok();
                if storage.same_file(file, &partial) {
                    let _ = storage.remove(&partial);
                }
                if existing != Some(self.hash) {
                    resume::discard(storage, &self.dest);
                    return Err(ServiceError::DestinationDiffers(self.dest.clone()));
                }
            }
            Err(e) => {
                return Err(ServiceError::Io(IoFailure::new(
                    IoOp::Publish,
                    &self.dest,
                    &e,
                )))
            }
        }
        resume::discard_state(storage, &self.dest);
        Ok(())
    }
}

async fn recv_source(more: &mut Option<mpsc::UnboundedReceiver<Source>>) -> Option<Source> {
    match more {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Whether a source at `addr` is this endpoint, listening on `local` (it finds itself among
/// the holders once it serves the download): the same address, or the same port on the
/// loopback when it listens on every interface.
fn is_me(local: SocketAddr, addr: SocketAddr) -> bool {
    addr == local
        || (local.ip().is_unspecified() && addr.ip().is_loopback() && addr.port() == local.port())
}

/// Where a download that spreads its order ([`SwarmConfig::serve`]) starts looking for
/// pieces: a point of the file set by the endpoint's address and the content, so that
/// downloaders starting together start apart (and a simulation replays it exactly).
fn origin(local: SocketAddr, hash: ContentHash, pieces: u64) -> u64 {
    let seed = ContentHash::of(format!("{local} {}", hash.to_hex()).as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&seed.0[..8]);
    u64::from_le_bytes(first) % pieces.max(1)
}

/// A pseudo-random piece of `pieces` for run `run` of a download whose order starts at
/// `origin`.
fn spread(origin: u64, run: u64, pieces: u64) -> u64 {
    // SplitMix64: cheap, and the same from the same origin (a simulation replays).
    let mut z = origin.wrapping_add(run.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % pieces.max(1)
}

/// Bytes of piece `i`.
fn piece_len(i: u64, piece: u64, size: u64) -> u64 {
    (size - i * piece).min(piece)
}

/// Verified bytes of `plan`.
fn bytes_of(plan: &Plan, piece: u64, size: u64) -> u64 {
    let n = plan.pieces();
    let last_have = n > 0 && plan.have()[(n - 1) as usize];
    let full = plan.have_count() - u64::from(last_have);
    full * piece
        + if last_have {
            piece_len(n - 1, piece, size)
        } else {
            0
        }
}

/// The verified pieces of a partial download of `dest` that a state file vouches for
/// (`Ok(None)`: nothing to resume), or why it must be discarded.
fn resumable(
    storage: &dyn Storage,
    dest: &Path,
    size: u64,
    hash: ContentHash,
    piece_size: u32,
    pieces: u64,
) -> Result<Option<Vec<bool>>, Option<Discarded>> {
    let partial = partial_path(dest);
    let len = match storage.entry(&partial) {
        Ok(Entry::File { len }) => Some(len),
        Ok(Entry::Other) => return Err(Some(Discarded::NotAFile(partial))),
        _ => None,
    };
    let state = read_state(storage, dest);
    let (len, st) = match (len, state) {
        (None, None) => return Ok(None),
        (Some(len), Some(st)) => (len, st),
        _ => return Err(Some(Discarded::NoValidState)),
    };
    let piece = u64::from(piece_size);
    if st.version != 1 {
        return Err(Some(Discarded::UnknownFormat));
    }
    if st.size != size {
        return Err(Some(Discarded::SizeChanged {
            now: size,
            was: st.size,
        }));
    }
    if st.hash != hash {
        return Err(Some(Discarded::ContentChanged));
    }
    if st.piece_size != piece_size || (!st.verified.is_multiple_of(piece) && st.verified != size) {
        return Err(Some(Discarded::PieceSizeChanged));
    }
    if st.unsynced_boot.is_some() && st.unsynced_boot != storage.boot_id() {
        return Err(Some(Discarded::UnsyncedBeforeRestart));
    }
    let mut have = match &st.pieces {
        Some(bits) => from_bitmap(bits, pieces).ok_or(Some(Discarded::UnknownFormat))?,
        None => vec![false; pieces as usize],
    };
    // The prefix a single-source download recorded counts too.
    for h in have.iter_mut().take(st.verified.div_ceil(piece) as usize) {
        *h = true;
    }
    // Every verified piece must lie within what the partial holds.
    let last = have
        .iter()
        .rposition(|&h| h)
        .map_or(0, |i| (i as u64 + 1) * piece);
    if len < last.min(size) {
        return Err(Some(Discarded::Truncated));
    }
    Ok(Some(have))
}

/// Reads `pieces` back from `file` and checks each against `table`; returns the bad ones.
fn recheck(
    file: &FileHandle,
    table: &PieceTable,
    size: u64,
    pieces: std::collections::BTreeSet<u64>,
) -> std::io::Result<Vec<u64>> {
    let piece = u64::from(table.piece_size);
    let mut bad = Vec::new();
    let mut buf = vec![0u8; table.piece_size as usize];
    for i in pieces {
        let len = piece_len(i, piece, size) as usize;
        file.read_exact_at(&mut buf[..len], i * piece)?;
        let mut h = PieceHasher::new(i * piece, table.piece_size, size);
        h.update(&buf[..len]);
        if table.hashes.get(i as usize) != Some(&h.finish()) {
            bad.push(i);
        }
    }
    Ok(bad)
}
