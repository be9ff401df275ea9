//! Resume state: a download in progress is `.NAME.p2p-part` (the bytes) plus
//! `.NAME.p2p-state` (which prefix of them is verified, and of which file), beside the
//! destination. The state is written atomically (temporary file, fsync, rename, fsync of the
//! folder) and only after the bytes it vouches for were flushed and synced, so after a crash it
//! never claims more than the disk holds. A resume trusts exactly that prefix: nothing is
//! re-read or re-hashed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::index::{PARTIAL_SUFFIX, STATE_SUFFIX};
use crate::wire::ContentHash;

/// Largest state file read back (it is a few dozen bytes).
const MAX_STATE_FILE: u64 = 4096;

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
}

/// The temporary file a download of `dest` is written to.
pub fn partial_path(dest: &Path) -> PathBuf {
    sibling(dest, PARTIAL_SUFFIX)
}

/// The state file of a download of `dest`.
pub fn state_path(dest: &Path) -> PathBuf {
    sibling(dest, STATE_SUFFIX)
}

fn sibling(dest: &Path, suffix: &str) -> PathBuf {
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
    file: File,
    buf: Vec<u8>,
    written: u64,
    failed: bool,
}

/// Bytes buffered before a write to the file.
const WRITE_BLOCK: usize = 1024 * 1024;

impl PartialWriter {
    /// Appends to `file`, which holds `len` bytes already.
    pub fn new(file: File, len: u64) -> Self {
        PartialWriter {
            file,
            buf: Vec::with_capacity(WRITE_BLOCK),
            written: len,
            failed: false,
        }
    }

    /// Appends `bytes` (buffered). After a failure every call fails.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("an earlier write failed"));
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
        if let Err(e) = self.file.write_all(&self.buf) {
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

    /// Flushes, syncs and closes.
    pub fn finish(mut self) -> io::Result<()> {
        self.flush()?;
        self.file.sync_all()
    }
}

/// Writes `state` for `dest` atomically.
pub fn save_state(dest: &Path, state: &DownloadState) -> io::Result<()> {
    let path = state_path(dest);
    let tmp = path.with_extension("tmp");
    let bytes = rmp_serde::to_vec(state).map_err(io::Error::other)?;
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, &path)?;
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

/// Reads the state of a download of `dest`, if any and readable.
pub fn load_state(dest: &Path) -> Option<DownloadState> {
    let path = state_path(dest);
    let meta = fs::metadata(&path).ok()?;
    if meta.len() > MAX_STATE_FILE {
        return None;
    }
    let bytes = fs::read(&path).ok()?;
    rmp_serde::from_slice(&bytes).ok()
}

/// Removes the partial and state files of `dest` (missing files are fine).
pub fn discard(dest: &Path) {
    let _ = fs::remove_file(partial_path(dest));
    let _ = fs::remove_file(state_path(dest));
}

/// Where a download of a file of `size` bytes with `hash`, verified by pieces of `piece_size`,
/// into `dest` starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumePlan {
    /// First byte to fetch (0: from scratch).
    pub offset: u64,
    /// A partial download was found but belonged to other content; it was removed. Says why.
    pub discarded: Option<String>,
}

/// Looks for a resumable partial download of `dest`: keeps it (truncated to its verified
/// prefix) when its state matches the file, removes it otherwise.
pub fn plan_resume(dest: &Path, size: u64, hash: ContentHash, piece_size: u32) -> ResumePlan {
    let partial = partial_path(dest);
    let partial_len = fs::metadata(&partial).ok().map(|m| m.len());
    let state = load_state(dest);
    let fresh = ResumePlan {
        offset: 0,
        discarded: None,
    };
    match (partial_len, state) {
        (None, None) => fresh,
        (Some(len), Some(st)) => {
            let reason = if st.version != 1 {
                Some("unknown state format".to_string())
            } else if st.size != size {
                Some(format!("the source is now {size} bytes, was {}", st.size))
            } else if st.hash != hash {
                Some("the source content changed (different BLAKE3)".to_string())
            } else if st.piece_size != piece_size
                || (!st.verified.is_multiple_of(u64::from(piece_size.max(1)))
                    && st.verified != size)
            {
                Some("different piece size".to_string())
            } else if len < st.verified {
                Some("the partial file is shorter than its state says".to_string())
            } else {
                None
            };
            match reason {
                None => {
                    let truncated = OpenOptions::new()
                        .write(true)
                        .open(&partial)
                        .and_then(|f| f.set_len(st.verified));
                    match truncated {
                        Ok(()) => ResumePlan {
                            offset: st.verified,
                            discarded: None,
                        },
                        Err(e) => {
                            discard(dest);
                            ResumePlan {
                                offset: 0,
                                discarded: Some(format!("cannot reuse the partial file: {e}")),
                            }
                        }
                    }
                }
                Some(why) => {
                    discard(dest);
                    ResumePlan {
                        offset: 0,
                        discarded: Some(format!("stale partial download discarded: {why}")),
                    }
                }
            }
        }
        _ => {
            discard(dest);
            ResumePlan {
                offset: 0,
                discarded: Some("partial download without a valid state discarded".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(verified: u64) -> DownloadState {
        DownloadState {
            version: 1,
            size: 1000,
            hash: ContentHash::of(b"x"),
            piece_size: 100,
            verified,
        }
    }

    #[test]
    fn resumes_at_the_verified_prefix_and_truncates_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.bin");
        fs::write(partial_path(&dest), vec![7u8; 450]).unwrap();
        save_state(&dest, &state(300)).unwrap();
        let plan = plan_resume(&dest, 1000, ContentHash::of(b"x"), 100);
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
        save_state(&dest, &state(300)).unwrap();
        let plan = plan_resume(&dest, 1000, ContentHash::of(b"y"), 100);
        assert_eq!(plan.offset, 0);
        assert!(plan.discarded.unwrap().contains("changed"));
        assert!(!partial_path(&dest).exists() && !state_path(&dest).exists());
    }

    #[test]
    fn garbage_state_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.bin");
        fs::write(partial_path(&dest), vec![7u8; 300]).unwrap();
        fs::write(state_path(&dest), b"\xff\x00garbage").unwrap();
        let plan = plan_resume(&dest, 1000, ContentHash::of(b"x"), 100);
        assert_eq!(plan.offset, 0);
        assert!(plan.discarded.is_some());
    }
}
