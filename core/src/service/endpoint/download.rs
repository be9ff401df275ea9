//! Downloads: claiming the destination, the partial file and its checkpoints, feeding the
//! receiver machine, and what is kept when a download fails.

use super::driver::Driver;
use super::finish::Finish;
use super::hashing::MAX_HASH_BACKLOG;
use super::{
    partial_path, DownloadReport, IoFailure, IoOp, Progress, RangeJob, ServiceError, SAVE_INTERVAL,
};
use p2p_proto::endpoint::request_retry_after;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::service::lock::DestinationLock;
use crate::service::resume::{
    self, plan_resume, save_state, Checkpointer, Discarded, DownloadState, PartialWriter,
    ResumePlan,
};
use crate::service::storage::{Entry, FileHandle, SharedStorage, Storage};
use crate::transfer::{ChunkReceiver, PieceTable, ReceiverEvent};
use crate::wire::{AbortReason, ContentHash, IndexEntry, TransferId};

pub(super) struct Download {
    pub(super) peer: SocketAddr,
    pub(super) machine: ChunkReceiver,
    pub(super) dest: PathBuf,
    pub(super) partial: PathBuf,
    pub(super) writer: Option<PartialWriter>,
    pub(super) checkpoints: Checkpointer,
    pub(super) size: u64,
    pub(super) hash: ContentHash,
    pub(super) piece_size: u32,
    pub(super) offset: u64,
    /// End of the verified prefix (absolute).
    pub(super) verified: u64,
    /// End of the prefix recorded in the state file.
    pub(super) saved: u64,
    /// When the last checkpoint started.
    pub(super) saved_at: Instant,
    pub(super) discarded: Option<Discarded>,
    pub(super) started: Instant,
    pub(super) progress: watch::Sender<Progress>,
    pub(super) reply: Option<oneshot::Sender<Result<DownloadReport, ServiceError>>>,
    /// Handed to a [`Finish`] job, which answers `reply` and frees the destination.
    pub(super) finishing: bool,
    /// Bytes received as last published on `progress`.
    pub(super) shown: u64,
    /// The claim on `dest`; given up before `reply` is answered (a [`Finish`] job takes it).
    pub(super) lock: Option<DestinationLock>,
    /// Where the partial, state and final files are.
    pub(super) storage: SharedStorage,
    /// When the first byte came.
    pub(super) first_byte: Option<Instant>,
    /// One range of a multi-source download ([`Driver::start_range`]), with its caller's
    /// cancel flag: no destination, no state file, no rename; answered when the range is
    /// verified (or failed), with every verified byte written.
    pub(super) range: Option<Arc<AtomicBool>>,
}

/// Reserves the space of bytes `from..size` of the download's `partial` file
/// ([`StoredFile::allocate`](crate::service::storage::StoredFile::allocate)); when the disk
/// is too small, removes a partial that holds nothing yet (`from` 0) and says how much room
/// is missing.
pub(super) fn reserve_space(
    storage: &dyn Storage,
    file: &FileHandle,
    partial: &Path,
    from: u64,
    size: u64,
) -> Result<(), ServiceError> {
    file.allocate(from, size).map_err(|e| {
        if from == 0 {
            let _ = storage.remove(partial);
        }
        ServiceError::NoSpace {
            folder: partial.parent().unwrap_or(Path::new(".")).to_path_buf(),
            needed: size - from,
            message: e.to_string(),
        }
    })
}

/// Bytes received between two progress updates of a download.
pub(super) const PROGRESS_STEP: u64 = 256 * 1024;

/// In-order chunks per ACK on a reliable transport (a sixteenth of the default window).
pub(super) const RELIABLE_ACK_EVERY: u32 = 8;

impl Driver {
    pub(super) fn start_download(
        &mut self,
        peer: SocketAddr,
        entry: IndexEntry,
        dest: PathBuf,
        table: PieceTable,
        progress: watch::Sender<Progress>,
        reply: oneshot::Sender<Result<DownloadReport, ServiceError>>,
    ) {
        // One writer per destination, across processes: claimed before anything looks at
        // its partial file, held until the verified file has its name (or the download
        // failed and kept what it could).
        let storage = self.config.storage.clone();
        let lock = match storage.lock(&dest) {
            Ok(lock) => lock,
            Err(e) => {
                let _ = reply.send(Err(ServiceError::Locked(e)));
                return;
            }
        };
        if !matches!(storage.entry(&dest), Ok(Entry::Missing)) {
            // Another download finished it (or something else put it there) meanwhile: the
            // caller compares it with what it wanted.
            let _ = reply.send(Err(ServiceError::DestinationExists(dest)));
            return;
        }
        // Only once the destination is ours: look at (and maybe discard) its partial file.
        let plan: ResumePlan =
            plan_resume(&*storage, &dest, entry.size, entry.hash, table.piece_size);
        let partial = partial_path(&dest);
        let opened = if plan.offset > 0 {
            storage
                .open_partial(&partial)
                .and_then(|f| f.len().map(|len| (f, len)))
                .and_then(|(f, len)| {
                    if len == plan.offset {
                        Ok(f)
                    } else {
                        Err(io::Error::other("partial file changed under us"))
                    }
                })
        } else {
            storage.create_partial(&partial)
        };
        let write_failed =
            |e: io::Error| ServiceError::Io(IoFailure::new(IoOp::Write, &partial, &e));
        let opened = opened.map_err(write_failed).and_then(|f| {
            if self.config.preallocate {
                reserve_space(&*storage, &f, &partial, plan.offset, entry.size)?;
            }
            Ok((
                PartialWriter::new(f.clone(), plan.offset),
                Checkpointer::new(
                    storage.clone(),
                    f,
                    dest.clone(),
                    self.config.fsync,
                    self.config.checkpoint_thread,
                ),
            ))
        });
        let (writer, checkpoints) = match opened {
            Ok(pair) => pair,
            Err(why) => {
                drop(lock);
                let _ = reply.send(Err(why));
                return;
            }
        };
        let transfer = self.proto.new_transfer_id();
        let now = Instant::now();
        let piece_size = table.piece_size;
        let receiver_config = self.download_receiver_config(peer, now);
        let machine = ChunkReceiver::resume(
            now.into_std(),
            transfer,
            entry.id,
            Some((entry.size, entry.hash)),
            plan.offset,
            table,
            receiver_config,
        );
        progress.send_modify(|p| {
            p.total = Some(entry.size);
            p.received = plan.offset;
        });
        self.proto.download_started(transfer, peer);
        self.downloads.insert(
            transfer,
            Download {
                peer,
                machine,
                dest,
                partial,
                writer: Some(writer),
                checkpoints,
                size: entry.size,
                hash: entry.hash,
                piece_size,
                offset: plan.offset,
                verified: plan.offset,
                saved: plan.offset,
                saved_at: now,
                discarded: plan.discarded,
                started: now,
                progress,
                reply: Some(reply),
                finishing: false,
                shown: plan.offset,
                lock: Some(lock),
                storage,
                first_byte: None,
                range: None,
            },
        );
        self.pump_download(transfer);
    }

    /// Starts fetching one range of a multi-source download into its shared partial file.
    pub(super) fn start_range(
        &mut self,
        job: RangeJob,
        progress: watch::Sender<Progress>,
        reply: oneshot::Sender<Result<DownloadReport, ServiceError>>,
    ) {
        let RangeJob {
            peer,
            entry,
            table,
            file,
            range,
            cancel,
            window_bytes,
        } = job;
        let transfer = self.proto.new_transfer_id();
        let now = Instant::now();
        let piece_size = table.piece_size;
        let mut receiver_config = self.download_receiver_config(peer, now);
        if let Some(budget) = window_bytes {
            receiver_config.window_bytes = receiver_config.window_bytes.min(budget);
        }
        let machine = ChunkReceiver::range(
            now.into_std(),
            transfer,
            entry.id,
            (entry.size, entry.hash),
            range.clone(),
            table,
            receiver_config,
        );
        progress.send_modify(|p| {
            p.total = Some(entry.size);
            p.received = range.start;
            p.verified = range.start;
        });
        let storage = self.config.storage.clone();
        // Never started: a range records nothing (its caller keeps the state).
        let checkpoints =
            Checkpointer::new(storage.clone(), file.clone(), PathBuf::new(), false, false);
        self.proto.download_started(transfer, peer);
        self.downloads.insert(
            transfer,
            Download {
                peer,
                machine,
                dest: PathBuf::new(),
                partial: PathBuf::from("(multi-source partial file)"),
                writer: Some(PartialWriter::new(file, range.start)),
                checkpoints,
                size: entry.size,
                hash: entry.hash,
                piece_size,
                offset: range.start,
                verified: range.start,
                saved: 0,
                saved_at: now,
                discarded: None,
                started: now,
                progress,
                reply: Some(reply),
                finishing: false,
                shown: range.start,
                lock: None,
                storage,
                first_byte: None,
                range: Some(cancel),
            },
        );
        self.pump_download(transfer);
    }

    /// The receiver settings of a new download from `peer`.
    fn download_receiver_config(
        &self,
        peer: SocketAddr,
        now: Instant,
    ) -> crate::transfer::ReceiverConfig {
        let mut receiver_config = self.config.receiver.clone();
        let rtt = self.proto.round_trip(peer, now.into_std());
        let reliable = self.reliable_to(peer);
        if let Some(rtt) = rtt.filter(|_| !reliable) {
            // The piece table just came from this peer: a `Request` unanswered for a few of
            // its round trips was lost (or its answer was), and waiting the default half
            // second for it would be most of a small download's time on a lossy path. (A
            // reliable transport loses nothing: there, asking again would only add noise.)
            receiver_config.request_retry =
                request_retry_after(rtt, self.config.receiver.request_retry);
        }
        // Pieces go to the driver to hash: the hashing thread's, or, without one, hashed right
        // here in `pump_download` (the same path, so simulations cover it).
        receiver_config.offload_hashing = true;
        if reliable {
            // Nothing is lost on a reliable stream: ACKs only pace the window, and fewer of
            // them spare both sides a message each.
            receiver_config.ack_every = receiver_config.ack_every.max(RELIABLE_ACK_EVERY);
            receiver_config.reack = false;
        }
        receiver_config
    }

    /// Stops the ranges whose caller cancelled them (or stopped waiting for them).
    pub(super) fn cancel_ranges(&mut self) {
        let cancelled: Vec<TransferId> = self
            .downloads
            .iter()
            .filter(|(_, d)| {
                d.range.as_ref().is_some_and(|flag| {
                    flag.load(Ordering::Relaxed) || d.reply.as_ref().is_some_and(|r| r.is_closed())
                })
            })
            .map(|(&t, _)| t)
            .collect();
        for t in cancelled {
            if let Some(d) = self.downloads.get_mut(&t) {
                d.machine
                    .abort(AbortReason::Other("not needed any more".into()));
            }
            self.pump_download(t);
        }
    }

    /// Applies a download's events: write bytes, record verified pieces, publish progress,
    /// finish or fail (keeping the verified prefix for a resume).
    pub(super) fn pump_download(&mut self, transfer: TransferId) {
        let save_every = self.config.save_every;
        let Some(d) = self.downloads.get_mut(&transfer) else {
            return;
        };
        let mut outcome: Option<Result<DownloadReport, ServiceError>> = None;
        let mut finished = None;
        if let Err(e) = d.checkpoint_done() {
            d.machine.abort(AbortReason::DiskError);
            outcome = Some(Err(e));
        }
        while let Some(event) = d.machine.poll_event() {
            match event {
                ReceiverEvent::Queued { ahead } => {
                    // Before the Accept: in the sender's line. After it: the sender shares
                    // its slots in turns and this one waits for its next (a short pause,
                    // not news for the terminal).
                    if !d.machine.is_accepted() {
                        d.progress.send_modify(|p| p.queued = Some(ahead));
                    }
                }
                ReceiverEvent::Accepted { .. } => {
                    d.progress.send_modify(|p| p.queued = None);
                }
                ReceiverEvent::HashPiece(job) => {
                    // To the hashing thread, unless it is too far behind (or gone).
                    let job = match &self.hasher {
                        Some(w) if d.machine.hash_backlog() <= MAX_HASH_BACKLOG => {
                            w.jobs.send((transfer, job)).err().map(|e| e.0 .1)
                        }
                        _ => Some(job),
                    };
                    if let Some(job) = job {
                        d.machine.piece_hashed(job.index(), job.hash());
                    }
                }
                ReceiverEvent::Write(bytes) => {
                    d.first_byte.get_or_insert_with(Instant::now);
                    let res = d.writer.as_mut().map(|w| w.write(&bytes));
                    if let Some(Err(e)) = res {
                        d.machine.abort(AbortReason::DiskError);
                        outcome.get_or_insert(Err(ServiceError::Io(IoFailure::new(
                            IoOp::Write,
                            &d.partial,
                            &e,
                        ))));
                    }
                    // Watchers are woken once per piece's worth of bytes, not per chunk (a
                    // wake-up cost more than the rest of a small chunk's bookkeeping).
                    let received = d.offset + d.machine.received();
                    if received >= d.shown + PROGRESS_STEP || received == d.size {
                        d.shown = received;
                        d.progress.send_modify(|p| p.received = received);
                    }
                }
                ReceiverEvent::PieceVerified { verified } if d.range.is_some() => {
                    // Its bytes leave our buffer before the caller hears of them: the caller
                    // may record them (after a sync of the file) at once.
                    d.verified = verified;
                    if let Some(Err(e)) = d.writer.as_mut().map(|w| w.flush()) {
                        d.machine.abort(AbortReason::DiskError);
                        outcome.get_or_insert(Err(ServiceError::Io(IoFailure::new(
                            IoOp::Write,
                            &d.partial,
                            &e,
                        ))));
                    } else {
                        d.progress.send_modify(|p| p.verified = verified);
                    }
                }
                ReceiverEvent::PieceVerified { verified } => {
                    d.verified = verified;
                    let due =
                        verified - d.saved >= save_every || d.saved_at.elapsed() >= SAVE_INTERVAL;
                    if d.writer.is_some() && due && !d.checkpoints.busy() {
                        if let Err(e) = d.start_checkpoint() {
                            d.machine.abort(AbortReason::DiskError);
                            outcome.get_or_insert(Err(ServiceError::Io(IoFailure::new(
                                IoOp::Write,
                                &d.partial,
                                &e,
                            ))));
                        }
                    }
                }
                ReceiverEvent::Finished { received, hash } => {
                    finished = Some((received, hash));
                }
                ReceiverEvent::Failed(e) => {
                    outcome.get_or_insert(Err(ServiceError::Transfer(e)));
                }
            }
        }
        if d.range.is_some() && (outcome.is_some() || finished.is_some()) {
            // A range: its verified bytes are written (flushed at each piece); nothing else
            // to keep or publish.
            let result = match (outcome, finished) {
                (Some(Err(e)), _) => Err(e),
                (_, Some((received, hash))) => Ok(DownloadReport {
                    path: PathBuf::new(),
                    size: d.size,
                    received,
                    hash,
                    elapsed: d.started.elapsed(),
                    first_byte: d.first_byte.map(|t| t.duration_since(d.started)),
                    resumed_from: d.offset,
                    discarded: None,
                    refetched: 0,
                }),
                (Some(Ok(r)), None) => Ok(r),
                (None, None) => unreachable!("checked"),
            };
            d.writer = None;
            if let Some(reply) = d.reply.take() {
                let _ = reply.send(result);
            }
        } else if let Some(result) = outcome {
            let result = match result {
                Ok(r) => Ok(r),
                Err(e) => Err(d.keep_partial(e)),
            };
            // Free the destination before answering: whoever hears the answer may resume.
            d.lock = None;
            if let Some(reply) = d.reply.take() {
                let _ = reply.send(result);
            }
        } else if let Some((received, hash)) = finished {
            match d.finish(received, hash, self.config.fsync) {
                Some(job) if self.config.finish_thread => {
                    while self.finishing.try_join_next().is_some() {}
                    self.finishing.spawn_blocking(move || job.run());
                }
                Some(job) => job.run(),
                None => {
                    if let Some(reply) = d.reply.take() {
                        let _ = reply.send(Err(ServiceError::Closed));
                    }
                }
            }
        }
    }
}

impl Download {
    pub(super) fn state(&self, verified: u64) -> DownloadState {
        DownloadState {
            version: 1,
            size: self.size,
            hash: self.hash,
            piece_size: self.piece_size,
            verified,
            unsynced_boot: None,
            pieces: None,
        }
    }

    /// Writes out what is buffered and starts recording the verified prefix (in the
    /// background: see [`Checkpointer`]).
    pub(super) fn start_checkpoint(&mut self) -> io::Result<()> {
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        w.flush()?;
        let verified = self.verified.min(w.written());
        if verified > self.saved {
            self.checkpoints.start(self.state(verified));
        }
        self.saved_at = Instant::now();
        Ok(())
    }

    /// Takes in a recorded checkpoint, if one finished.
    pub(super) fn checkpoint_done(&mut self) -> Result<(), ServiceError> {
        match self.checkpoints.poll() {
            Some(res) => self.recorded(res),
            None => Ok(()),
        }
    }

    pub(super) fn recorded(&mut self, res: io::Result<u64>) -> Result<(), ServiceError> {
        match res {
            Ok(saved) => {
                self.saved = self.saved.max(saved);
                let saved = self.saved;
                self.progress.send_modify(|p| p.saved = saved);
                Ok(())
            }
            Err(e) => Err(ServiceError::Io(IoFailure::new(
                IoOp::RecordProgress,
                &self.partial,
                &e,
            ))),
        }
    }

    /// After a failure: keep the verified prefix (flushed and recorded) for a resume, or
    /// remove everything when nothing was verified. Returns the error to report.
    pub(super) fn keep_partial(&mut self, err: ServiceError) -> ServiceError {
        // Keep what is both verified and known to be on disk (after a failed write, e.g. a
        // full disk, the file holds exactly `written()` good bytes), down to a piece boundary.
        if let Some(res) = self.checkpoints.wait() {
            let _ = self.recorded(res);
        }
        if let Some(mut w) = self.writer.take() {
            // Only synced bytes may be recorded as durable.
            let synced = w.sync().is_ok();
            let piece = u64::from(self.piece_size.max(1));
            let on_disk = w.written().min(self.verified);
            let keep = if on_disk == self.size {
                on_disk
            } else {
                on_disk / piece * piece
            };
            // Drop the unverified tail first: on a full disk that frees room for the state.
            let _ = w.truncate(keep.max(self.saved));
            if synced
                && keep > self.saved
                && save_state(&*self.storage, &self.dest, &self.state(keep), true).is_ok()
            {
                self.saved = keep;
            }
        }
        incomplete(&*self.storage, err, self.saved, &self.dest, &self.partial)
    }

    /// The work left once the last piece is verified, as a job that owns what it needs
    /// (`None` when the download was already closed).
    pub(super) fn finish(
        &mut self,
        received: u64,
        hash: ContentHash,
        sync: bool,
    ) -> Option<Finish> {
        let writer = self.writer.take()?;
        self.finishing = true;
        Some(Finish {
            writer: Some(writer),
            checkpoint: self.checkpoints.take(),
            sync,
            partial: self.partial.clone(),
            saved: self.saved,
            report: DownloadReport {
                path: self.dest.clone(),
                size: self.size,
                received,
                hash,
                elapsed: Duration::ZERO,
                first_byte: self.first_byte.map(|t| t.duration_since(self.started)),
                resumed_from: self.offset,
                discarded: self.discarded.take(),
                refetched: 0,
            },
            started: self.started,
            reply: self.reply.take(),
            lock: self.lock.take(),
            storage: self.storage.clone(),
            // The job publishes the checkpoint it waits for; nothing else is published after.
            progress: std::mem::replace(&mut self.progress, watch::channel(Progress::default()).0),
        })
    }
}

/// After a failure: the error to report, once the state file is gone if nothing was kept.
pub(super) fn incomplete(
    storage: &dyn Storage,
    err: ServiceError,
    saved: u64,
    dest: &Path,
    partial: &Path,
) -> ServiceError {
    if saved == 0 {
        resume::discard(storage, dest);
        return err;
    }
    ServiceError::Incomplete {
        cause: Box::new(err),
        kept: saved,
        partial: partial.to_path_buf(),
    }
}
