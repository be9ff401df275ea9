//! Resume state: a download in progress is `.NAME.p2p-part` (the bytes) plus
//! `.NAME.p2p-state` (which prefix of them is verified, and of which file), beside the
//! destination. The state is written atomically (temporary file, fsync, rename, fsync of the
//! folder) and only after the bytes it vouches for were flushed and synced, so after a crash it
//! never claims more than the disk holds. A resume trusts exactly that prefix: nothing is
//! re-read or re-hashed.
//!
//! Syncing runs at the disk's pace, which may be far below the network's, so a
//! [`Checkpointer`] does it on a blocking thread: the I/O task only writes into the page cache
//! and starts a checkpoint; the network path never waits for the disk. A download may also
//! skip syncing altogether (`p2p get --no-fsync`): its state then names the boot it was
//! written in, and a resume after a restart of the system discards it instead of trusting
//! bytes that may never have reached the disk.
//!
//! Every file operation goes through a [`Storage`]: the real disk, or a simulated one.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::storage::{Disk, Entry, FileHandle, Storage};
use crate::index::{PARTIAL_SUFFIX, STATE_SUFFIX, STATE_TMP_SUFFIX};
use crate::wire::ContentHash;

/// Largest state file read back (a few dozen bytes, plus a multi-source download's piece
/// bitmap: 128 KiB for the largest file a download takes, `MAX_PIECES` pieces).
const MAX_STATE_FILE: u64 = 256 * 1024;

/// What a state file records.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DownloadState {
    /// Format version.
    pub version: u8,
    /// Size of the source file.
    pub size: u64,
    /// BLAKE3 of the source file.
    pub hash: ContentHash,
    /// Bytes per piece the verification used.
    pub piece_size: u32,
    /// Bytes `0..verified` of the partial file are written, synced and verified.
    pub verified: u64,
    /// Set when those bytes were *not* synced (a download without fsync): the boot they were
    /// written in. They are as good as synced while the system stays up (the page cache
    /// holds them), and worthless after a restart.
    #[serde(default)]
    pub unsynced_boot: Option<String>,
    /// A multi-source download's verified pieces, one bit each (bit `i % 8` of byte `i / 8`
    /// for piece `i`), beyond the prefix; `None` for a single-source download (whose state
    /// files stay as they were). A single-source resume of it keeps the prefix only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pieces: Option<serde_bytes::ByteBuf>,
}

/// The temporary file a download of `dest` is written to.
pub fn partial_path(dest: &Path) -> PathBuf {
    sibling(dest, PARTIAL_SUFFIX)
}

/// The state file of a download of `dest`.
pub fn state_path(dest: &Path) -> PathBuf {
    sibling(dest, STATE_SUFFIX)
}

/// `.NAME` + `suffix` beside `dest`.
pub(crate) fn sibling(dest: &Path, suffix: &str) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}{suffix}"))
}

/// Appends to a partial file through a buffer, and knows exactly how far the file holds what
/// was written: after a failed write (a full disk) the bytes before [`PartialWriter::written`]
/// are intact and may still be kept.
#[derive(Debug)]
pub struct PartialWriter {
    file: FileHandle,
    buf: Vec<u8>,
    written: u64,
    failed: bool,
}

/// Bytes buffered before a write to the file.
const WRITE_BLOCK: usize = 128 * 1024;
/// A write at least this large with nothing buffered goes straight to the file.
const DIRECT_WRITE: usize = 32 * 1024;

impl PartialWriter {
    /// Appends to `file`, which holds `len` bytes already.
    pub fn new(file: FileHandle, len: u64) -> Self {
        PartialWriter {
            file,
            buf: Vec::with_capacity(WRITE_BLOCK),
            written: len,
            failed: false,
        }
    }

    /// Appends `bytes` (buffered; a large write with nothing buffered goes straight to the
    /// file, saving a copy). After a failure every call fails.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("an earlier write failed"));
        }
        if self.buf.is_empty() && bytes.len() >= DIRECT_WRITE {
            if let Err(e) = self.file.write_all_at(bytes, self.written) {
                self.failed = true;
                return Err(e);
            }
            self.written += bytes.len() as u64;
            return Ok(());
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= WRITE_BLOCK {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffer to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("an earlier write failed"));
        }
        if let Err(e) = self.file.write_all_at(&self.buf, self.written) {
            self.failed = true;
            return Err(e);
        }
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Flushes (if nothing failed) and syncs the file to disk.
    pub fn sync(&mut self) -> io::Result<()> {
        if !self.failed {
            self.flush()?;
        }
        self.file.sync_data()
    }

    /// File length known to hold exactly what was written.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Cuts the file to `len` bytes (frees the space of a torn tail, e.g. on a full disk).
    pub fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.written = self.written.min(len);
        Ok(())
    }

    /// Flushes and, with `sync`, makes the file durable (`fsync`); returns the file, so that
    /// the caller can publish the very file written (see [`Storage::publish`]).
    pub fn finish(mut self, sync: bool) -> io::Result<FileHandle> {
        self.flush()?;
        if sync {
            self.file.sync_all()?;
        }
        Ok(self.file)
    }
}

/// Records checkpoints of one download off the I/O task: each one syncs the partial file,
/// then writes the state file (so the state never names bytes that are not on disk), on a
/// blocking thread; or, in a simulation, on the I/O task once the storage's
/// [`sync_delay`](Storage::sync_delay) has passed in simulated time. At most one is in
/// flight.
#[derive(Debug)]
pub struct Checkpointer {
    storage: Arc<dyn Storage>,
    file: FileHandle,
    dest: PathBuf,
    /// `None`: sync the bytes before recording them; `Some(boot)`: record them unsynced.
    unsynced_boot: Option<String>,
    /// Record on a blocking thread (else on the I/O task).
    thread: bool,
    in_flight: Option<InFlight>,
}

/// A checkpoint being recorded.
enum InFlight {
    /// On a blocking thread, which answers here.
    Thread(mpsc::Receiver<io::Result<u64>>),
    /// Not started: runs when `due` has passed (or when waited for).
    Deferred {
        due: Instant,
        job: Box<dyn FnOnce() -> io::Result<u64> + Send>,
    },
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InFlight::Thread(_) => f.write_str("Thread"),
            InFlight::Deferred { due, .. } => f.debug_struct("Deferred").field("due", due).finish(),
        }
    }
}

impl InFlight {
    fn wait(self) -> io::Result<u64> {
        match self {
            InFlight::Thread(rx) => rx
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("checkpoint lost"))),
            InFlight::Deferred { job, .. } => job(),
        }
    }
}

impl Checkpointer {
    /// Checkpoints of the download of `dest`, whose partial file `file` is (a handle on), on
    /// `storage`. Without `sync`, checkpoints are recorded unsynced for this boot (synced
    /// anyway when the boot is unknown). With `thread`, each is recorded on a blocking
    /// thread; else on the I/O task, in [`poll`](Self::poll), once the storage's sync delay
    /// has passed.
    pub fn new(
        storage: Arc<dyn Storage>,
        file: FileHandle,
        dest: PathBuf,
        sync: bool,
        thread: bool,
    ) -> Self {
        Checkpointer {
            unsynced_boot: if sync { None } else { storage.boot_id() },
            storage,
            file,
            dest,
            thread,
            in_flight: None,
        }
    }

    /// Whether a checkpoint is being recorded.
    pub fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Starts recording `state` (whose bytes must already be written to the file). Must be
    /// called in a tokio runtime, and only when not [`busy`](Self::busy).
    pub fn start(&mut self, mut state: DownloadState) {
        debug_assert!(!self.busy());
        let (storage, file, dest) = (self.storage.clone(), self.file.clone(), self.dest.clone());
        state.unsynced_boot = self.unsynced_boot.clone();
        let job = move || {
            let durable = state.unsynced_boot.is_none();
            let synced = if durable { file.sync_data() } else { Ok(()) };
            synced
                .and_then(|()| save_state(&*storage, &dest, &state, durable))
                .map(|()| state.verified)
        };
        self.in_flight = Some(if self.thread {
            let (tx, rx) = mpsc::sync_channel(1);
            tokio::task::spawn_blocking(move || {
                let _ = tx.send(job());
            });
            InFlight::Thread(rx)
        } else {
            InFlight::Deferred {
                due: Instant::now() + self.storage.sync_delay(),
                job: Box::new(job),
            }
        });
    }

    /// The outcome of the checkpoint in flight, once it is recorded (the verified prefix now
    /// on record, or why it could not be).
    pub fn poll(&mut self) -> Option<io::Result<u64>> {
        let res = match self.in_flight.as_ref()? {
            InFlight::Thread(rx) => match rx.try_recv() {
                Ok(res) => res,
                Err(mpsc::TryRecvError::Empty) => return None,
                Err(mpsc::TryRecvError::Disconnected) => Err(io::Error::other("checkpoint lost")),
            },
            InFlight::Deferred { due, .. } if Instant::now() < *due => return None,
            InFlight::Deferred { .. } => self.in_flight.take()?.wait(),
        };
        self.in_flight = None;
        Some(res)
    }

    /// Waits for the checkpoint in flight, if any (before the state file is replaced or
    /// removed by the caller).
    pub fn wait(&mut self) -> Option<io::Result<u64>> {
        self.take().wait()
    }

    /// The checkpoint in flight, if any, to be waited for elsewhere (on the thread that
    /// finishes the download); none is in flight here afterwards.
    pub fn take(&mut self) -> PendingCheckpoint {
        PendingCheckpoint(self.in_flight.take())
    }
}

/// A checkpoint being recorded, taken from its [`Checkpointer`].
#[derive(Debug)]
pub struct PendingCheckpoint(Option<InFlight>);

impl PendingCheckpoint {
    /// Waits for it: the verified prefix now on record, or why it could not be (`None`: there
    /// was none in flight, or it was waited for already).
    pub fn wait(&mut self) -> Option<io::Result<u64>> {
        Some(self.0.take()?.wait())
    }
}

/// Writes `state` for `dest` atomically; `durable`: synced too (write, fsync, rename, fsync
/// of the folder).
pub fn save_state(
    storage: &dyn Storage,
    dest: &Path,
    state: &DownloadState,
    durable: bool,
) -> io::Result<()> {
    let bytes = rmp_serde::to_vec(state).map_err(io::Error::other)?;
    storage.replace(
        &state_path(dest),
        &sibling(dest, STATE_TMP_SUFFIX),
        &bytes,
        durable,
    )
}

/// Reads the state of a download of `dest` from `storage`, if any and readable.
pub fn read_state(storage: &dyn Storage, dest: &Path) -> Option<DownloadState> {
    let bytes = storage.read_small(&state_path(dest), MAX_STATE_FILE).ok()?;
    rmp_serde::from_slice(&bytes).ok()
}

/// Reads the state of a download of `dest` on the real disk, if any and readable.
pub fn load_state(dest: &Path) -> Option<DownloadState> {
    read_state(&Disk, dest)
}

/// Removes the partial and state files of `dest` (missing files are fine; a link is removed,
/// never its target).
pub fn discard(storage: &dyn Storage, dest: &Path) {
    let _ = storage.remove(&partial_path(dest));
    discard_state(storage, dest);
}

/// Removes the state file of `dest` (a missing one is fine).
pub fn discard_state(storage: &dyn Storage, dest: &Path) {
    let _ = storage.remove(&state_path(dest));
}

/// Where a download of a file of `size` bytes with `hash`, verified by pieces of `piece_size`,
/// into `dest` starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumePlan {
    /// First byte to fetch (0: from scratch).
    pub offset: u64,
    /// A partial download was found but could not be resumed; it was removed. Says why.
    pub discarded: Option<Discarded>,
}

/// Why a partial download found at the start was removed instead of resumed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Discarded {
    /// Something other than a regular file stood at the partial's name.
    #[error("{} was not a regular file; removed", .0.display())]
    NotAFile(PathBuf),
    /// The state file is of a format this build does not know.
    #[error("stale partial download discarded: unknown state format")]
    UnknownFormat,
    /// The source has another size now.
    #[error("stale partial download discarded: the source is now {now} bytes, was {was}")]
    SizeChanged {
        /// The size listed now.
        now: u64,
        /// The size the partial was for.
        was: u64,
    },
    /// The source has other content now.
    #[error("stale partial download discarded: the source content changed (different BLAKE3)")]
    ContentChanged,
    /// The piece table has another piece size now.
    #[error("stale partial download discarded: different piece size")]
    PieceSizeChanged,
    /// The partial holds fewer bytes than its state records.
    #[error("stale partial download discarded: the partial file is shorter than its state says")]
    Truncated,
    /// Written without fsync, before the system restarted: its bytes may not be on disk.
    #[error("stale partial download discarded: it was written without fsync before the system restarted")]
    UnsyncedBeforeRestart,
    /// The partial could not be opened or truncated to its verified prefix.
    #[error("cannot reuse the partial file: {0}")]
    CannotReuse(String),
    /// A partial without a state file, or a state file without a partial.
    #[error("partial download without a valid state discarded")]
    NoValidState,
}

/// Looks for a resumable partial download of `dest`: keeps it (truncated to its verified
/// prefix) when its state matches the file, removes it otherwise.
pub fn plan_resume(
    storage: &dyn Storage,
    dest: &Path,
    size: u64,
    hash: ContentHash,
    piece_size: u32,
) -> ResumePlan {
    let partial = partial_path(dest);
    // Never through a link: anything but a regular file there is stale (and removed below).
    let partial_len = match storage.entry(&partial) {
        Ok(Entry::File { len }) => Some(Some(len)),
        Ok(Entry::Other) => Some(None),
        Ok(Entry::Missing) | Err(_) => None,
    };
    let partial_len = match partial_len {
        Some(None) => {
            discard(storage, dest);
            return ResumePlan {
                offset: 0,
                discarded: Some(Discarded::NotAFile(partial)),
            };
        }
        Some(Some(len)) => Some(len),
        None => None,
    };
    let state = read_state(storage, dest);
    let fresh = ResumePlan {
        offset: 0,
        discarded: None,
    };
    match (partial_len, state) {
        (None, None) => fresh,
        (Some(len), Some(st)) => {
            let reason = if st.version != 1 {
                Some(Discarded::UnknownFormat)
            } else if st.size != size {
                Some(Discarded::SizeChanged {
                    now: size,
                    was: st.size,
                })
            } else if st.hash != hash {
                Some(Discarded::ContentChanged)
            } else if st.piece_size != piece_size
                || (!st.verified.is_multiple_of(u64::from(piece_size.max(1)))
                    && st.verified != size)
            {
                Some(Discarded::PieceSizeChanged)
            } else if len < st.verified {
                Some(Discarded::Truncated)
            } else if st.unsynced_boot.is_some() && st.unsynced_boot != storage.boot_id() {
                Some(Discarded::UnsyncedBeforeRestart)
            } else {
                None
            };
            match reason {
                None => {
                    let truncated = storage
                        .open_partial(&partial)
                        .and_then(|f| f.set_len(st.verified));
                    match truncated {
                        Ok(()) => ResumePlan {
                            offset: st.verified,
                            discarded: None,
                        },
                        Err(e) => {
                            discard(storage, dest);
                            ResumePlan {
                                offset: 0,
                                discarded: Some(Discarded::CannotReuse(e.to_string())),
                            }
                        }
                    }
                }
                Some(why) => {
                    discard(storage, dest);
                    ResumePlan {
                        offset: 0,
                        discarded: Some(why),
                    }
                }
            }
        }
        _ => {
            discard(storage, dest);
            ResumePlan {
                offset: 0,
                discarded: Some(Discarded::NoValidState),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::storage::Disk;
    use std::fs;

    fn state(verified: u64) -> DownloadState {
        DownloadState {
            version: 1,
            size: 1000,
            hash: ContentHash::of(b"x"),
            piece_size: 100,
            verified,
            unsynced_boot: None,
            pieces: None,
        }
    }

    #[test]
    fn unsynced_state_is_trusted_in_its_own_boot_only() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.bin");
        let Some(boot) = Disk.boot_id() else {
            return; // no boot id here: unsynced checkpoints are never written (see new)
        };
        fs::write(partial_path(&dest), vec![7u8; 300]).unwrap();
        let same_boot = DownloadState {
            unsynced_boot: Some(boot),
            ..state(300)
        };
        save_state(&Disk, &dest, &same_boot, false).unwrap();
        assert_eq!(
            plan_resume(&Disk, &dest, 1000, ContentHash::of(b"x"), 100).offset,
            300
        );

        let other_boot = DownloadState {
            unsynced_boot: Some("an earlier boot".into()),
            ..state(300)
        };
        save_state(&Disk, &dest, &other_boot, false).unwrap();
        let plan = plan_resume(&Disk, &dest, 1000, ContentHash::of(b"x"), 100);
        assert_eq!(plan.offset, 0);
        assert_eq!(plan.discarded, Some(Discarded::UnsyncedBeforeRestart));
        assert!(!partial_path(&dest).exists() && !state_path(&dest).exists());
    }

    #[test]
    fn a_state_file_without_the_boot_field_still_reads() {
        // Written before `unsynced_boot` existed: five fields, synced.
        #[derive(Serialize)]
        struct Old {
            version: u8,
            size: u64,
            hash: ContentHash,
            piece_size: u32,
            verified: u64,
        }
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.bin");
        let old = Old {
            version: 1,
            size: 1000,
            hash: ContentHash::of(b"x"),
            piece_size: 100,
            verified: 200,
        };
        fs::write(state_path(&dest), rmp_serde::to_vec(&old).unwrap()).unwrap();
        assert_eq!(load_state(&dest), Some(state(200)));
    }

    #[test]
    fn resumes_at_the_verified_prefix_and_truncates_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.bin");
        fs::write(partial_path(&dest), vec![7u8; 450]).unwrap();
        save_state(&Disk, &dest, &state(300), true).unwrap();
        let plan = plan_resume(&Disk, &dest, 1000, ContentHash::of(b"x"), 100);
        assert_eq!(
            plan,
            ResumePlan {
                offset: 300,
                discarded: None
            }
        );
        assert_eq!(fs::metadata(partial_path(&dest)).unwrap().len(), 300);
    }

    #[test]
    fn changed_source_discards_the_partial() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.bin");
        fs::write(partial_path(&dest), vec![7u8; 300]).unwrap();
        save_state(&Disk, &dest, &state(300), true).unwrap();
        let plan = plan_resume(&Disk, &dest, 1000, ContentHash::of(b"y"), 100);
        assert_eq!(plan.offset, 0);
        assert_eq!(plan.discarded, Some(Discarded::ContentChanged));
        assert!(!partial_path(&dest).exists() && !state_path(&dest).exists());
    }

    #[test]
    fn garbage_state_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.bin");
        fs::write(partial_path(&dest), vec![7u8; 300]).unwrap();
        fs::write(state_path(&dest), b"\xff\x00garbage").unwrap();
        let plan = plan_resume(&Disk, &dest, 1000, ContentHash::of(b"x"), 100);
        assert_eq!(plan.offset, 0);
        assert!(plan.discarded.is_some());
    }

    #[test]
    fn publish_names_the_file_written_not_what_sits_at_the_partial_path() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.bin");
        let partial = partial_path(&dest);
        let mut w = PartialWriter::new(Disk.create_partial(&partial).unwrap(), 0);
        w.write(b"verified bytes").unwrap();
        let file = w.finish(false).unwrap();
        // Another writer moves the partial away and puts its own file there before the finish.
        fs::rename(&partial, dir.path().join("moved")).unwrap();
        fs::write(&partial, b"someone else's bytes").unwrap();
        Disk.publish(&file, &partial, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"verified bytes");
        assert_eq!(
            fs::read(&partial).unwrap(),
            b"someone else's bytes",
            "a partial that is not ours is left alone"
        );
        // Had it removed ours, nothing would take the name (the written file has none left).
        let dest2 = dir.path().join("g.bin");
        let partial2 = partial_path(&dest2);
        let mut w = PartialWriter::new(Disk.create_partial(&partial2).unwrap(), 0);
        w.write(b"verified bytes").unwrap();
        let file = w.finish(false).unwrap();
        fs::remove_file(&partial2).unwrap();
        fs::write(&partial2, b"someone else's bytes").unwrap();
        assert!(Disk.publish(&file, &partial2, &dest2).is_err());
        assert!(fs::symlink_metadata(&dest2).is_err());
    }

    #[test]
    fn publish_never_replaces_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.bin");
        let partial = partial_path(&dest);
        let mut w = PartialWriter::new(Disk.create_partial(&partial).unwrap(), 0);
        w.write(b"new").unwrap();
        let file = w.finish(false).unwrap();
        fs::write(&dest, b"old").unwrap();
        let e = Disk.publish(&file, &partial, &dest).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&dest).unwrap(), b"old");
        assert!(partial.exists(), "kept for the caller to decide");
    }

    #[test]
    fn symlinks_planted_at_the_partial_and_state_are_removed_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, b"precious").unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let dest = out.join("f.bin");
        // At the partial: a resume plan removes the link, a new partial is a fresh file.
        std::os::unix::fs::symlink(&outside, partial_path(&dest)).unwrap();
        save_state(&Disk, &dest, &state(300), true).unwrap();
        let plan = plan_resume(&Disk, &dest, 1000, ContentHash::of(b"x"), 100);
        assert_eq!(plan.offset, 0);
        assert!(plan.discarded.is_some());
        assert!(fs::symlink_metadata(partial_path(&dest)).is_err());
        std::os::unix::fs::symlink(&outside, partial_path(&dest)).unwrap();
        let f = Disk.create_partial(&partial_path(&dest)).unwrap();
        f.write_all_at(b"download", 0).unwrap();
        assert_eq!(fs::read(&outside).unwrap(), b"precious");
        assert!(fs::symlink_metadata(partial_path(&dest)).unwrap().is_file());
        // At the state file: never read through, and a new state replaces the link itself.
        fs::write(
            dir.path().join("fake-state"),
            rmp_serde::to_vec(&state(300)).unwrap(),
        )
        .unwrap();
        std::os::unix::fs::symlink(dir.path().join("fake-state"), state_path(&dest)).unwrap();
        assert_eq!(load_state(&dest), None);
        // At the state's temporary file: removed, never written through.
        std::os::unix::fs::symlink(&outside, sibling(&dest, STATE_TMP_SUFFIX)).unwrap();
        save_state(&Disk, &dest, &state(100), true).unwrap();
        assert_eq!(fs::read(&outside).unwrap(), b"precious");
        assert_eq!(load_state(&dest), Some(state(100)));
    }
}
