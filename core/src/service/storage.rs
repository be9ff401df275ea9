//! The storage seam: the few file operations downloads and uploads use, behind a trait, so
//! that the simulations can run the very same driver code on a disk that fails on purpose
//! (`p2p-sim-tests`' `SimDisk`: seeded I/O errors, a full disk, failed syncs, slow syncs, and
//! crashes that lose or tear whatever was not synced).
//!
//! [`Disk`] is the real implementation: positional reads and writes, `fallocate`, `fsync`,
//! state files replaced atomically, and the finished file linked under its final name from
//! its open descriptor, never through a symbolic link planted at any of these paths.
//!
//! What stays outside the seam: walking and hashing the share folder (the index), which
//! only reads.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::lock::{libc_flags, remove_planted, DestinationLock, LockError};
use crate::wire::ContentHash;

/// An open file of a [`Storage`], shared between the tasks that use it (a download's writer
/// and its checkpoints; an upload and the chunks a transport still has queued).
pub type FileHandle = Arc<dyn StoredFile>;

/// What a path holds, looked at without following a symbolic link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Nothing.
    Missing,
    /// A regular file of this many bytes.
    File {
        /// Its length.
        len: u64,
    },
    /// Something else: a symbolic link, a folder, a fifo.
    Other,
}

/// A file opened for reading, with what identifies its version.
#[derive(Debug)]
pub struct Opened {
    /// The file.
    pub file: FileHandle,
    /// Its length when opened.
    pub len: u64,
    /// Its modification time when opened, if known.
    pub modified: Option<SystemTime>,
}

/// The file operations of downloads and uploads. Every path is used as given: the driver
/// builds them beside the destination (`.NAME.p2p-part`, `.NAME.p2p-state`).
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// What `path` holds, not following a link.
    fn entry(&self, path: &Path) -> io::Result<Entry>;

    /// Opens the shared file at `path` for reading (an upload).
    fn open_read(&self, path: &Path) -> io::Result<Opened>;

    /// Opens the existing partial file at `path` for reading and writing: a regular file,
    /// never through a link.
    fn open_partial(&self, path: &Path) -> io::Result<FileHandle>;

    /// Creates an empty partial file at `path`, removing whatever was there (a planted link
    /// is removed, never written through).
    fn create_partial(&self, path: &Path) -> io::Result<FileHandle>;

    /// Removes the file at `path` (a link is removed, never its target).
    fn remove(&self, path: &Path) -> io::Result<()>;

    /// Reads the small regular file at `path` (a state file), failing when it holds more
    /// than `max` bytes; never through a link.
    fn read_small(&self, path: &Path, max: u64) -> io::Result<Vec<u8>>;

    /// Replaces the file at `path` with `bytes` atomically, through `tmp` (write, rename);
    /// with `durable`, synced too (the file before the rename, the folder after).
    fn replace(&self, path: &Path, tmp: &Path, bytes: &[u8], durable: bool) -> io::Result<()>;

    /// Gives the finished download `file` (open on `partial`) the name `dest`, never
    /// replacing anything there (`AlreadyExists`), and removes the partial's name if it is
    /// still this file's.
    fn publish(&self, file: &FileHandle, partial: &Path, dest: &Path) -> io::Result<()>;

    /// Whether `path` names (not following links) the very file `file` is open on.
    fn same_file(&self, file: &FileHandle, path: &Path) -> bool;

    /// Claims `dest` for one download (see [`DestinationLock`]).
    fn lock(&self, dest: &Path) -> Result<DestinationLock, LockError> {
        DestinationLock::acquire(dest)
    }

    /// BLAKE3 of the file at `path` (a destination that appeared meanwhile).
    fn hash_file(&self, path: &Path) -> io::Result<ContentHash> {
        crate::index::hash_file(path)
    }

    /// This boot of the machine, if known: bytes written without a sync are worthless after
    /// another boot.
    fn boot_id(&self) -> Option<String>;

    /// How long a sync takes on this storage, in the driver's (tokio's) time. Zero for the
    /// real disk, whose syncs run on a thread and take what they take; a simulated slow disk
    /// makes checkpoints complete late in simulated time.
    fn sync_delay(&self) -> Duration {
        Duration::ZERO
    }
}

/// A file open on a [`Storage`]. Writes are positional: a partial file is written at the
/// offsets the download has reached, whoever else holds the file.
// A file's length, not a collection's: an empty file is nothing special here.
#[allow(clippy::len_without_is_empty)]
pub trait StoredFile: Send + Sync + fmt::Debug {
    /// Reads at most `into.len()` bytes at `offset` (0 at the end of the file).
    fn read_at(&self, into: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Writes all of `bytes` at `offset`. On an error some prefix of them may be written.
    fn write_all_at(&self, bytes: &[u8], offset: u64) -> io::Result<()>;

    /// The file's length.
    fn len(&self) -> io::Result<u64>;

    /// Cuts or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Makes the file's data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;

    /// Makes the file's data and metadata durable (`fsync`).
    fn sync_all(&self) -> io::Result<()>;

    /// Reserves the space of bytes `from..size` without changing the length; `Ok` when the
    /// storage cannot reserve (nothing lost); an error only when the space is not there,
    /// having given back any part of it already reserved.
    fn allocate(&self, from: u64, size: u64) -> io::Result<()>;

    /// The operating system's file, for `sendfile` and linking by descriptor; `None` on a
    /// storage that has none (or hides it, to see every read).
    fn os_file(&self) -> Option<&File> {
        None
    }

    /// Fills `into` from `offset`; past the end of the file, `into` keeps what it holds.
    fn read_into(&self, into: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < into.len() {
            match self.read_at(&mut into[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Fills all of `into` from `offset` (`UnexpectedEof` past the end).
    fn read_exact_at(&self, into: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < into.len() {
            match self.read_at(&mut into[done..], offset + done as u64) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A shared, type-erased storage.
pub type SharedStorage = Arc<dyn Storage>;

/// The real disk.
#[derive(Clone, Copy, Debug, Default)]
pub struct Disk;

impl Disk {
    /// The real disk, shared.
    pub fn shared() -> SharedStorage {
        Arc::new(Disk)
    }
}

impl StoredFile for File {
    fn read_at(&self, into: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, into, offset)
    }

    fn write_all_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, bytes, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }

    /// `fallocate` with `FALLOC_FL_KEEP_SIZE`: a disk too full for the file fails the
    /// download at its start rather than near its end, the file is laid out in few extents,
    /// and each write into the page cache skips the filesystem's delayed-allocation
    /// bookkeeping (on ext4, about a tenth of the receiver's CPU time).
    fn allocate(&self, from: u64, size: u64) -> io::Result<()> {
        if size <= from {
            return Ok(());
        }
        match rustix::fs::fallocate(
            self,
            rustix::fs::FallocateFlags::KEEP_SIZE,
            from,
            size - from,
        ) {
            Err(e) if e == rustix::io::Errno::NOSPC || e == rustix::io::Errno::FBIG => {
                // Give back whatever was reserved before the disk ran out.
                let _ = File::set_len(self, from);
                Err(e.into())
            }
            // Not supported here (or not for this file): nothing reserved, nothing lost.
            _ => Ok(()),
        }
    }

    fn os_file(&self) -> Option<&File> {
        Some(self)
    }
}

impl Storage for Disk {
    fn entry(&self, path: &Path) -> io::Result<Entry> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_file() => Ok(Entry::File { len: m.len() }),
            Ok(_) => Ok(Entry::Other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Entry::Missing),
            Err(e) => Err(e),
        }
    }

    fn open_read(&self, path: &Path) -> io::Result<Opened> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        Ok(Opened {
            len: meta.len(),
            modified: meta.modified().ok(),
            file: Arc::new(file),
        })
    }

    fn open_partial(&self, path: &Path) -> io::Result<FileHandle> {
        let file = open_nofollow(path, true)?;
        Ok(Arc::new(file))
    }

    fn create_partial(&self, path: &Path) -> io::Result<FileHandle> {
        remove_planted(path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc_flags::NOFOLLOW)
            .open(path)?;
        Ok(Arc::new(file))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn read_small(&self, path: &Path, max: u64) -> io::Result<Vec<u8>> {
        let file = open_nofollow(path, false)?;
        let mut bytes = Vec::new();
        (&file).take(max + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > max {
            return Err(io::Error::other(format!(
                "{} is larger than {max} bytes",
                path.display()
            )));
        }
        Ok(bytes)
    }

    fn replace(&self, path: &Path, tmp: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
        {
            // A fresh file: whatever sits at `tmp` (a planted symlink too) is removed, never
            // written through.
            remove_planted(tmp)?;
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc_flags::NOFOLLOW)
                .open(tmp)?;
            f.write_all(bytes)?;
            if durable {
                f.sync_all()?;
            }
        }
        fs::rename(tmp, path)?;
        if !durable {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            // Make the rename itself durable; not every filesystem allows opening a folder.
            if let Ok(d) = File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// What takes the name is the very file written and verified, not whatever the partial's
    /// path names at this moment: it is linked from its descriptor (`/proc/self/fd`). Where
    /// that is not possible (no `/proc`), the partial's path is first checked to name this
    /// file, then linked (or, on a filesystem without hard links, renamed without replacing).
    fn publish(&self, file: &FileHandle, partial: &Path, dest: &Path) -> io::Result<()> {
        use rustix::fs::{linkat, renameat_with, AtFlags, RenameFlags, CWD};
        use std::os::fd::AsRawFd;

        let Some(os) = file.os_file() else {
            return Err(io::Error::other("not a file of this disk"));
        };
        let by_fd = format!("/proc/self/fd/{}", os.as_raw_fd());
        match linkat(CWD, by_fd.as_str(), CWD, dest, AtFlags::SYMLINK_FOLLOW) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::EXIST => return Err(e.into()),
            Err(_) => {
                if !same_os_file(os, partial) {
                    return Err(io::Error::other(format!(
                        "{} was replaced while the download was being finished",
                        partial.display()
                    )));
                }
                match fs::hard_link(partial, dest) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(e),
                    Err(_) => {
                        return match renameat_with(CWD, partial, CWD, dest, RenameFlags::NOREPLACE)
                        {
                            Err(e) if e == rustix::io::Errno::INVAL => {
                                // No RENAME_NOREPLACE here: check, then rename.
                                if fs::symlink_metadata(dest).is_ok() {
                                    return Err(io::ErrorKind::AlreadyExists.into());
                                }
                                fs::rename(partial, dest)
                            }
                            other => other.map_err(io::Error::from),
                        };
                    }
                }
            }
        }
        if same_os_file(os, partial) {
            let _ = fs::remove_file(partial);
        }
        Ok(())
    }

    fn same_file(&self, file: &FileHandle, path: &Path) -> bool {
        file.os_file().is_some_and(|f| same_os_file(f, path))
    }

    fn boot_id(&self) -> Option<String> {
        let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let id = id.trim();
        (!id.is_empty()).then(|| id.to_string())
    }
}

/// Opens the regular file at `path` (for reading and writing with `write`; else for
/// reading), never through a symbolic link (`O_NOFOLLOW`) and never anything but a regular
/// file.
pub fn open_nofollow(path: &Path, write: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc_flags::NOFOLLOW_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(file)
}

/// Whether `path` names (without following links) the very file `file` is open on.
pub(crate) fn same_os_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preallocation_reserves_the_space_but_keeps_the_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        fs::write(&path, vec![1u8; 1000]).unwrap();
        let file = Disk.open_partial(&path).unwrap();
        file.allocate(1000, 4 << 20).unwrap();
        let meta = fs::metadata(&path).unwrap();
        // The length still says what was written: a resume trusts nothing beyond it.
        assert_eq!(meta.len(), 1000);
        let os = file.os_file().unwrap();
        let supported =
            rustix::fs::fallocate(os, rustix::fs::FallocateFlags::KEEP_SIZE, 0, 1).is_ok();
        if supported {
            assert!(meta.blocks() * 512 >= 4 << 20, "{} blocks", meta.blocks());
        }
        // Writing goes on at the end of what was written.
        file.write_all_at(b"abc", 1000).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 1003);
        assert_eq!(file.len().unwrap(), 1003);
        // Nothing to reserve: a no-op.
        file.allocate(5000, 10).unwrap();
    }

    #[test]
    fn entries_are_looked_at_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"12345").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(Disk.entry(&file).unwrap(), Entry::File { len: 5 });
        assert_eq!(Disk.entry(&link).unwrap(), Entry::Other);
        assert_eq!(Disk.entry(dir.path()).unwrap(), Entry::Other);
        assert_eq!(
            Disk.entry(&dir.path().join("none")).unwrap(),
            Entry::Missing
        );
        assert!(Disk.open_partial(&link).is_err(), "never through a link");
        assert!(Disk.read_small(&link, 100).is_err());
        assert!(Disk.read_small(&file, 4).is_err(), "larger than allowed");
        assert_eq!(Disk.read_small(&file, 5).unwrap(), b"12345");
    }
}
