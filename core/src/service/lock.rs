//! One writer per destination, across processes: a download holds an exclusive `flock` on
//! `.NAME.p2p-lock` beside its destination from before it looks at the partial and state
//! files until after the verified file has its final name. A second download of the same
//! destination, in this process or any other, is refused at once, naming the holder's pid.
//!
//! The lock file is removed by its holder when it lets go, so none is left behind. A process
//! that opened the file just before it was removed may then lock an orphan inode; that is why
//! [`DestinationLock::acquire`] checks, once it holds the lock, that the path still names the
//! very inode it locked, and starts over otherwise (the classic lock-and-unlink pattern).
//!
//! Nothing here follows a symbolic link: a link planted at the lock, partial or state path is
//! removed (the link, never its target) rather than written through.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::storage::same_os_file as same_file;
use crate::index::LOCK_SUFFIX;

/// Attempts to lock a path that keeps being replaced under us before giving up.
const MAX_ATTEMPTS: usize = 8;

/// Why a destination could not be locked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// Another download (in this process or another) writes this destination.
    #[error("{} is already being downloaded {}; wait for it to finish, or choose another folder", dest.display(), holder_text(*holder))]
    Held {
        /// The destination.
        dest: PathBuf,
        /// The process that holds it, when it said so.
        holder: Option<u32>,
    },
    /// The lock file could not be created or locked.
    #[error("cannot lock {}: {reason}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

fn holder_text(holder: Option<u32>) -> String {
    match holder {
        Some(pid) if pid == std::process::id() => "by this process".into(),
        Some(pid) => format!("by another p2p process (pid {pid})"),
        None => "by another p2p process".into(),
    }
}

/// The lock file of a download of `dest`.
pub fn lock_path(dest: &Path) -> PathBuf {
    super::resume::sibling(dest, LOCK_SUFFIX)
}

/// An exclusive claim on a destination and its partial and state files; released (and its
/// lock file removed) on drop.
#[derive(Debug)]
pub struct DestinationLock {
    file: File,
    path: PathBuf,
}

impl DestinationLock {
    /// Claims `dest`, or says who holds it.
    pub fn acquire(dest: &Path) -> Result<Self, LockError> {
        let path = lock_path(dest);
        let io_err = |e: io::Error| LockError::Io {
            path: path.clone(),
            reason: e.to_string(),
        };
        for _ in 0..MAX_ATTEMPTS {
            let mut file = match open_regular(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // removed meanwhile
                Err(e) => return Err(io_err(e)),
            };
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                    return Err(LockError::Held {
                        dest: dest.to_path_buf(),
                        holder: read_pid(&mut file),
                    });
                }
                Err(e) => return Err(io_err(e.into())),
            }
            // Locked; but is it still the file at `path`, or one its holder removed?
            if !same_file(&file, &path) {
                continue;
            }
            let stamped = file
                .set_len(0)
                .and_then(|()| file.seek(SeekFrom::Start(0)))
                .and_then(|_| writeln!(file, "{}", std::process::id()));
            if let Err(e) = stamped {
                let _ = fs::remove_file(&path);
                return Err(io_err(e));
            }
            return Ok(DestinationLock { file, path });
        }
        Err(io_err(io::Error::other(
            "the lock file keeps being replaced; is another program removing it?",
        )))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DestinationLock {
    fn drop(&mut self) {
        // Remove the file while still holding the lock (whoever opened it meanwhile sees that
        // it is gone once it gets the lock), then let go by closing it.
        if same_file(&self.file, &self.path) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Opens (creating it if needed, mode 0600) the regular file at `path` for reading and
/// writing, never through a symbolic link: whatever else is there (a link, a fifo) is removed
/// first, once.
fn open_regular(path: &Path) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc_flags::NOFOLLOW_NONBLOCK)
            .open(path)
    };
    match fs::symlink_metadata(path) {
        Ok(m) if !m.is_file() => remove_planted(path)?,
        _ => {}
    }
    let file = open()?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// Removes what sits at `path` in place of a regular file (a symlink, a fifo...; a folder is
/// an error).
pub(crate) fn remove_planted(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
            e.kind(),
            format!(
                "{} is not a regular file and cannot be removed: {e}",
                path.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// Open flags: never follow a symlink; never block opening a fifo.
pub(crate) mod libc_flags {
    /// `O_NOFOLLOW | O_NONBLOCK`.
    pub(crate) const NOFOLLOW_NONBLOCK: i32 =
        rustix::fs::OFlags::NOFOLLOW.bits() as i32 | rustix::fs::OFlags::NONBLOCK.bits() as i32;
    /// `O_NOFOLLOW`.
    pub(crate) const NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.take(32).read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_is_refused_naming_the_holder_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("big.bin");
        let first = DestinationLock::acquire(&dest).unwrap();
        assert!(lock_path(&dest).exists());
        match DestinationLock::acquire(&dest) {
            Err(LockError::Held { holder, dest: d }) => {
                assert_eq!(holder, Some(std::process::id()));
                assert_eq!(d, dest);
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        assert!(
            !lock_path(&dest).exists(),
            "the lock file is removed on release"
        );
        let again = DestinationLock::acquire(&dest).unwrap();
        drop(again);
    }

    #[test]
    fn a_lock_on_a_removed_inode_is_not_a_claim() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        let first = DestinationLock::acquire(&dest).unwrap();
        // A process that opened the lock file before its holder removed it...
        let stale = open_regular(&lock_path(&dest)).unwrap();
        drop(first);
        // ...gets the lock on the orphan inode, which no longer counts:
        rustix::fs::flock(&stale, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
        assert!(!same_file(&stale, &lock_path(&dest)));
        // and a new claim gets a fresh file, despite the stale holder.
        let second = DestinationLock::acquire(&dest).unwrap();
        assert!(same_file(&second.file, &lock_path(&dest)));
    }

    #[test]
    fn a_symlink_planted_at_the_lock_is_removed_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep me").unwrap();
        std::os::unix::fs::symlink(&victim, lock_path(&dest)).unwrap();
        let lock = DestinationLock::acquire(&dest).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep me");
        assert!(fs::symlink_metadata(lock.path()).unwrap().is_file());
    }
}
