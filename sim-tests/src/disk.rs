//! [`SimDisk`]: a [`Storage`] that fails on purpose, for the simulations.
//!
//! It keeps the bytes in real files (each host's folders are real temporary folders, so the
//! scenario's invariant is checked on what is really there) and adds what a real disk does
//! to a program in its worst moments:
//!
//! - **faults** at chosen points ([`DiskFault`]): `EIO` on writes or reads once so many bytes
//!   went through, `ENOSPC` once the disk holds so many bytes (the write that crosses the
//!   line writes its first part, as a real one does), the n-th checkpoint sync failing (and
//!   every later one: after a failed `fsync` the kernel may have dropped the dirty pages, so
//!   nothing after it can be trusted), a failed final `fsync`, a failed state-file write, a
//!   failed publish;
//! - **slow syncs** ([`SimDisk::slow_syncs`]): a checkpoint completes that much later in
//!   simulated time;
//! - **crashes** ([`SimDisk::crash`]): every write not yet synced is dropped, kept, or torn
//!   (kept up to a random byte), chosen from the disk's seed; so is a state file replaced
//!   without a sync (kept, the old one back, or empty, as ext4 may leave it). The machine
//!   then has a new boot id.
//!
//! Model: directory operations (create, rename, link, remove) are durable at once; file
//! contents only once synced. Syncs themselves cost nothing real (no `fsync` reaches the
//! host's disk).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2p_core::service::storage::{Disk, Entry, FileHandle, Opened, Storage, StoredFile};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// A fault a [`SimDisk`] injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFault {
    /// Writes fail with `EIO` once `after` bytes were written to the disk in all.
    WriteError {
        /// Bytes written before the fault.
        after: u64,
    },
    /// Writes and reservations fail with `ENOSPC` once the files written hold `after`
    /// bytes in all.
    NoSpace {
        /// Bytes written before the disk is full.
        after: u64,
    },
    /// Reads (of a shared file, by an upload) fail with `EIO` once `after` bytes were read.
    ReadError {
        /// Bytes read before the fault.
        after: u64,
    },
    /// The `nth` data sync (1-based; a checkpoint's) fails, and every later one.
    CheckpointSyncError {
        /// Which sync fails first.
        nth: u32,
    },
    /// Full syncs (a finished download's `fsync`) fail.
    FinishSyncError,
    /// The `nth` state-file write (1-based) fails, and every later one.
    StateWriteError {
        /// Which write fails first.
        nth: u32,
    },
    /// Giving a finished download its final name fails.
    PublishError,
}

/// What one open file wrote since its last sync.
#[derive(Debug)]
struct Unsynced {
    /// The file (its inode, whatever its name is now).
    file: Arc<File>,
    /// Its length when last synced (or opened).
    synced_len: u64,
    /// Writes since, in order: (offset, bytes).
    writes: Vec<(u64, Vec<u8>)>,
}

/// A state file replaced without a sync: its previous content, if it had one.
#[derive(Debug)]
struct UnsyncedState {
    previous: Option<Vec<u8>>,
}

#[derive(Debug)]
struct Inner {
    faults: Vec<DiskFault>,
    rng: SmallRng,
    written: u64,
    read: u64,
    data_syncs: u32,
    state_writes: u32,
    sync_delay: Duration,
    /// Open files by a key of their own.
    files: HashMap<u64, Unsynced>,
    next_file: u64,
    states: HashMap<PathBuf, UnsyncedState>,
    crashes: u64,
    /// Faults injected so far, by kind (for tests to check that the fault happened).
    injected: Vec<DiskFault>,
}

/// A simulated disk shared by one host's lives (clone it into the host's closure): faults,
/// slow syncs and crashes that lose what was not synced. See the module documentation.
#[derive(Clone, Debug)]
pub struct SimDisk {
    inner: Arc<Mutex<Inner>>,
    boot: Arc<AtomicU64>,
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("{what}: input/output error (simulated)"))
}

fn enospc() -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        "no space left on device (simulated)",
    )
}

impl SimDisk {
    /// A disk without faults; `seed` decides what a crash keeps.
    pub fn new(seed: u64) -> Self {
        SimDisk {
            inner: Arc::new(Mutex::new(Inner {
                faults: Vec::new(),
                rng: SmallRng::seed_from_u64(seed),
                written: 0,
                read: 0,
                data_syncs: 0,
                state_writes: 0,
                sync_delay: Duration::ZERO,
                files: HashMap::new(),
                next_file: 0,
                states: HashMap::new(),
                crashes: 0,
                injected: Vec::new(),
            })),
            boot: Arc::new(AtomicU64::new(1)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("disk lock")
    }

    /// Adds `fault`.
    pub fn fail(&self, fault: DiskFault) -> &Self {
        self.lock().faults.push(fault);
        self
    }

    /// Removes every fault and resets the counters they count with (the disk was
    /// repaired, or space freed).
    pub fn heal(&self) {
        let mut d = self.lock();
        d.faults.clear();
        d.written = 0;
        d.read = 0;
        d.data_syncs = 0;
        d.state_writes = 0;
    }

    /// Makes each sync take `delay` of simulated time before its checkpoint is recorded.
    pub fn slow_syncs(&self, delay: Duration) -> &Self {
        self.lock().sync_delay = delay;
        self
    }

    /// The faults that were hit so far (one entry per failed operation).
    pub fn injected(&self) -> Vec<DiskFault> {
        self.lock().injected.clone()
    }

    /// Bytes written so far (since the last [`heal`](Self::heal)).
    pub fn written(&self) -> u64 {
        self.lock().written
    }

    /// The host lost power: every write not synced is dropped, kept or torn, every state
    /// file replaced without a sync is kept, rolled back or left empty (chosen from the
    /// seed), and the next boot has a new id. Call it while the host is down (after
    /// `sim.crash`, before `sim.bounce`). Returns how many unsynced writes were not kept
    /// whole.
    pub fn crash(&self) -> io::Result<usize> {
        let mut d = self.lock();
        let d = &mut *d;
        let mut lost = 0;
        let mut files: Vec<_> = d.files.drain().collect();
        files.sort_by_key(|(k, _)| *k);
        for (_, f) in files {
            f.file.set_len(f.synced_len)?;
            for (offset, bytes) in f.writes {
                match d.rng.gen_range(0..3) {
                    0 => f.file.write_all_at(&bytes, offset)?,
                    1 => lost += 1,
                    _ => {
                        let keep = d.rng.gen_range(0..bytes.len().max(1));
                        f.file.write_all_at(&bytes[..keep], offset)?;
                        lost += 1;
                    }
                }
            }
        }
        let mut states: Vec<_> = d.states.drain().collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        for (path, st) in states {
            match d.rng.gen_range(0..3) {
                0 => {}
                1 => {
                    lost += 1;
                    match st.previous {
                        Some(bytes) => std::fs::write(&path, bytes)?,
                        None => {
                            let _ = std::fs::remove_file(&path);
                        }
                    }
                }
                _ => {
                    lost += 1;
                    std::fs::write(&path, b"")?;
                }
            }
        }
        d.crashes += 1;
        self.boot.fetch_add(1, Ordering::SeqCst);
        Ok(lost)
    }

    /// How many times [`crash`](Self::crash) was called.
    pub fn crashes(&self) -> u64 {
        self.lock().crashes
    }

    /// The first fault of the kind `pick` selects, if any.
    fn fault(&self, pick: impl Fn(&DiskFault) -> bool) -> Option<DiskFault> {
        self.lock().faults.iter().copied().find(pick)
    }

    fn injected_now(&self, fault: DiskFault) {
        self.lock().injected.push(fault);
    }

    /// A file of this disk: tracked (writes and syncs recorded) when `track`, else a
    /// read-only file whose reads count.
    fn wrap(&self, file: File, track: bool) -> io::Result<FileHandle> {
        let file = Arc::new(file);
        let key = if track {
            let len = file.metadata()?.len();
            let mut d = self.lock();
            let key = d.next_file;
            d.next_file += 1;
            d.files.insert(
                key,
                Unsynced {
                    file: file.clone(),
                    synced_len: len,
                    writes: Vec::new(),
                },
            );
            Some(key)
        } else {
            None
        };
        Ok(Arc::new(SimFile {
            disk: self.clone(),
            file,
            key,
        }))
    }
}

/// A descriptor of its own on the operating system's file behind `handle` (one of [`Disk`]).
fn os_file(handle: &FileHandle) -> io::Result<File> {
    handle
        .os_file()
        .ok_or_else(|| io::Error::other("not a file of the disk"))?
        .try_clone()
}

/// A file open on a [`SimDisk`].
#[derive(Debug)]
struct SimFile {
    disk: SimDisk,
    file: Arc<File>,
    /// Key of its [`Unsynced`] record (a partial file); `None` for a shared file read by an
    /// upload, which shows no `os_file` so that every read goes through [`read_at`].
    key: Option<u64>,
}

impl SimFile {
    /// Records a synced state: what was written is durable now.
    fn synced(&self) -> io::Result<()> {
        let len = self.file.metadata()?.len();
        if let Some(key) = self.key {
            if let Some(u) = self.disk.lock().files.get_mut(&key) {
                u.synced_len = len;
                u.writes.clear();
            }
        }
        Ok(())
    }
}

impl StoredFile for SimFile {
    fn read_at(&self, into: &mut [u8], offset: u64) -> io::Result<usize> {
        if let Some(f @ DiskFault::ReadError { after }) = self
            .disk
            .fault(|f| matches!(f, DiskFault::ReadError { .. }))
        {
            let mut d = self.disk.lock();
            if d.read + into.len() as u64 > after {
                d.injected.push(f);
                return Err(eio("read"));
            }
        }
        let n = self.file.read_at(into, offset)?;
        self.disk.lock().read += n as u64;
        Ok(n)
    }

    fn write_all_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        let limit = self
            .disk
            .fault(|f| matches!(f, DiskFault::WriteError { .. } | DiskFault::NoSpace { .. }));
        let written = self.disk.lock().written;
        let (fits, err) = match limit {
            Some(f @ (DiskFault::WriteError { after } | DiskFault::NoSpace { after }))
                if written + bytes.len() as u64 > after =>
            {
                let fits = after.saturating_sub(written) as usize;
                let err = if matches!(f, DiskFault::NoSpace { .. }) {
                    enospc()
                } else {
                    eio("write")
                };
                self.disk.injected_now(f);
                (fits, Some(err))
            }
            _ => (bytes.len(), None),
        };
        let part = &bytes[..fits.min(bytes.len())];
        self.file.write_all_at(part, offset)?;
        let mut d = self.disk.lock();
        d.written += part.len() as u64;
        if let Some(u) = self.key.and_then(|k| d.files.get_mut(&k)) {
            u.writes.push((offset, part.to_vec()));
        }
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        if let Some(key) = self.key {
            if let Some(u) = self.disk.lock().files.get_mut(&key) {
                // A truncation is durable at once (a metadata change, journaled); writes
                // past it are gone.
                u.synced_len = u.synced_len.min(len);
                u.writes.retain_mut(|(offset, bytes)| {
                    bytes.truncate(len.saturating_sub(*offset) as usize);
                    !bytes.is_empty()
                });
            }
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let failing = self
            .disk
            .fault(|f| matches!(f, DiskFault::CheckpointSyncError { .. }));
        let n = {
            let mut d = self.disk.lock();
            d.data_syncs += 1;
            d.data_syncs
        };
        if let Some(f @ DiskFault::CheckpointSyncError { nth }) = failing {
            if n >= nth {
                self.disk.injected_now(f);
                return Err(eio("fsync"));
            }
        }
        self.synced()
    }

    fn sync_all(&self) -> io::Result<()> {
        if let Some(f) = self.disk.fault(|f| matches!(f, DiskFault::FinishSyncError)) {
            self.disk.injected_now(f);
            return Err(eio("fsync"));
        }
        self.synced()
    }

    fn allocate(&self, from: u64, size: u64) -> io::Result<()> {
        if let Some(f @ DiskFault::NoSpace { after }) =
            self.disk.fault(|f| matches!(f, DiskFault::NoSpace { .. }))
        {
            if self.disk.written() + size.saturating_sub(from) > after {
                self.disk.injected_now(f);
                return Err(enospc());
            }
        }
        Ok(())
    }

    fn os_file(&self) -> Option<&File> {
        // A partial file shows its descriptor (to be published by it); a shared file does
        // not, so that transports read it through `read_at`, where faults are.
        self.key.map(|_| &*self.file)
    }
}

impl Storage for SimDisk {
    fn entry(&self, path: &Path) -> io::Result<Entry> {
        Disk.entry(path)
    }

    fn open_read(&self, path: &Path) -> io::Result<Opened> {
        let opened = Disk.open_read(path)?;
        Ok(Opened {
            file: self.wrap(os_file(&opened.file)?, false)?,
            ..opened
        })
    }

    fn open_partial(&self, path: &Path) -> io::Result<FileHandle> {
        let file = p2p_core::service::storage::open_nofollow(path, true)?;
        self.wrap(file, true)
    }

    fn create_partial(&self, path: &Path) -> io::Result<FileHandle> {
        let handle = Disk.create_partial(path)?;
        self.wrap(os_file(&handle)?, true)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.lock().states.remove(path);
        Disk.remove(path)
    }

    fn read_small(&self, path: &Path, max: u64) -> io::Result<Vec<u8>> {
        Disk.read_small(path, max)
    }

    fn replace(&self, path: &Path, tmp: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
        {
            let mut d = self.lock();
            d.state_writes += 1;
            let n = d.state_writes;
            let failing = d
                .faults
                .iter()
                .copied()
                .find(|f| matches!(f, DiskFault::StateWriteError { nth } if n >= *nth));
            if let Some(f) = failing {
                d.injected.push(f);
                return Err(eio("write of the state file"));
            }
        }
        let previous = if durable {
            None
        } else {
            Some(std::fs::read(path).ok())
        };
        // No real fsync: durability is this disk's bookkeeping.
        Disk.replace(path, tmp, bytes, false)?;
        let mut d = self.lock();
        match previous {
            None => {
                d.states.remove(path);
            }
            Some(previous) => {
                // Rolled back to what was last synced, not to an unsynced predecessor.
                let previous = match d.states.remove(path) {
                    Some(older) => older.previous,
                    None => previous,
                };
                d.states
                    .insert(path.to_path_buf(), UnsyncedState { previous });
            }
        }
        Ok(())
    }

    fn publish(&self, file: &FileHandle, partial: &Path, dest: &Path) -> io::Result<()> {
        if let Some(f) = self.fault(|f| matches!(f, DiskFault::PublishError)) {
            self.injected_now(f);
            return Err(eio("link"));
        }
        Disk.publish(file, partial, dest)
    }

    fn same_file(&self, file: &FileHandle, path: &Path) -> bool {
        Disk.same_file(file, path)
    }

    fn boot_id(&self) -> Option<String> {
        Some(format!("sim-boot-{}", self.boot.load(Ordering::SeqCst)))
    }

    fn sync_delay(&self) -> Duration {
        self.lock().sync_delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_keeps_what_was_synced_and_at_most_what_was_written() {
        for seed in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("part");
            let disk = SimDisk::new(seed);
            let f = disk.create_partial(&path).unwrap();
            f.write_all_at(&[1; 100], 0).unwrap();
            f.sync_data().unwrap();
            f.write_all_at(&[2; 100], 100).unwrap();
            f.write_all_at(&[3; 100], 200).unwrap();
            let boot = disk.boot_id();
            disk.crash().unwrap();
            assert_ne!(disk.boot_id(), boot, "a new boot");
            let bytes = std::fs::read(&path).unwrap();
            assert!(bytes.len() >= 100 && bytes.len() <= 300, "{}", bytes.len());
            assert_eq!(
                &bytes[..100],
                &[1; 100],
                "synced bytes survive (seed {seed})"
            );
            for (i, b) in bytes.iter().enumerate().skip(100) {
                let want = if i < 200 { 2 } else { 3 };
                assert!(*b == want || *b == 0, "byte {i} is {b} (seed {seed})");
            }
        }
    }

    #[test]
    fn a_write_past_the_limit_writes_its_first_part_then_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        let disk = SimDisk::new(1);
        disk.fail(DiskFault::NoSpace { after: 150 });
        let f = disk.create_partial(&path).unwrap();
        f.write_all_at(&[1; 100], 0).unwrap();
        let e = f.write_all_at(&[2; 100], 100).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 150);
        assert!(f.allocate(150, 1000).is_err(), "no room to reserve either");
        assert_eq!(disk.injected().len(), 2);
        disk.heal();
        f.write_all_at(&[2; 50], 150).unwrap();
    }

    #[test]
    fn failed_syncs_and_state_writes_fail_from_the_nth_on() {
        let dir = tempfile::tempdir().unwrap();
        let disk = SimDisk::new(1);
        disk.fail(DiskFault::CheckpointSyncError { nth: 2 });
        disk.fail(DiskFault::StateWriteError { nth: 2 });
        let f = disk.create_partial(&dir.path().join("p")).unwrap();
        f.sync_data().unwrap();
        assert!(f.sync_data().is_err());
        assert!(f.sync_data().is_err());
        let (state, tmp) = (dir.path().join("s"), dir.path().join("t"));
        disk.replace(&state, &tmp, b"one", true).unwrap();
        assert!(disk.replace(&state, &tmp, b"two", true).is_err());
        assert_eq!(std::fs::read(&state).unwrap(), b"one");
    }

    #[test]
    fn an_unsynced_state_file_may_roll_back_or_empty_on_a_crash() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..30 {
            let dir = tempfile::tempdir().unwrap();
            let (state, tmp) = (dir.path().join("s"), dir.path().join("t"));
            let disk = SimDisk::new(seed);
            disk.replace(&state, &tmp, b"synced", true).unwrap();
            disk.replace(&state, &tmp, b"new", false).unwrap();
            disk.replace(&state, &tmp, b"newer", false).unwrap();
            disk.crash().unwrap();
            let got = std::fs::read(&state).unwrap();
            assert!(
                [&b"newer"[..], b"synced", b""].contains(&&got[..]),
                "{got:?}"
            );
            seen.insert(got);
        }
        assert_eq!(seen.len(), 3, "every outcome happens for some seed");
    }
}
