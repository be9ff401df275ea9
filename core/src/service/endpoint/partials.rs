//! Downloads in progress, served to others: a multi-source download that serves
//! ([`EndpointHandle::serve_partial`]) registers its partial file here, and the endpoint then
//! answers for its content as for a shared file, but only for the pieces verified so far:
//! `EntryByHash` with the entry marked `partial`, `HaveRequest` with those pieces' bits,
//! `PieceRequest` from the download's piece table, and a `Request` for a range only when
//! every piece of it is verified (else it is refused as [`NOT_HELD`], which the asker takes
//! as "ask again later", not as a failure). Its content hash is announced to the tracker
//! like those of the share, so that one seeder and many downloaders spread the load as
//! BitTorrent does.
//!
//! A piece is marked only after its bytes are written and verified, and never while another
//! fetch may still write over it (see the swarm's contested pieces): what is served is
//! always what the piece table says.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use super::{Command, EndpointHandle};
use crate::service::storage::FileHandle;
use crate::transfer::PieceTable;
use crate::wire::{ContentHash, FileId, IndexEntry, MAX_HAVE_BYTES};

/// Ids of partial downloads served start here, above any index's (which count from 1).
pub(super) const FIRST_PARTIAL_ID: u32 = 0x8000_0000;

/// The abort reason a request for pieces not verified yet gets.
pub const NOT_HELD: &str = "those pieces are not downloaded yet";

/// One download in progress, as served.
pub(super) struct PartialShare {
    /// As listed: its id here, its name, the content's size and hash.
    pub(super) entry: IndexEntry,
    /// The partial file (shared with the download: reads never move a cursor).
    pub(super) file: FileHandle,
    /// Where it is (for the log).
    pub(super) path: PathBuf,
    /// The content's piece table.
    pub(super) table: PieceTable,
    /// Pieces verified and safe to serve.
    have: Mutex<Vec<bool>>,
}

impl PartialShare {
    fn have(&self) -> MutexGuard<'_, Vec<bool>> {
        self.have.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether every piece of bytes `range` is served.
    pub(super) fn holds(&self, range: std::ops::Range<u64>) -> bool {
        let piece = u64::from(self.table.piece_size);
        if range.start >= range.end || range.end > self.entry.size {
            return false;
        }
        let have = self.have();
        (range.start / piece..range.end.div_ceil(piece)).all(|i| have[i as usize])
    }

    /// Bits of the pieces served from piece `first` on (rounded down to a multiple of 8), at
    /// most [`MAX_HAVE_BYTES`] of them: the answer to a `HaveRequest`.
    pub(super) fn bits(&self, first: u32) -> (u32, Vec<u8>) {
        let have = self.have();
        bits_of(have.len(), first, |i| have[i])
    }
}

/// Bits of the pieces among `pieces` for which `has` holds, from piece `first` (rounded down
/// to a multiple of 8) on, at most [`MAX_HAVE_BYTES`] of them; and that first piece.
pub(super) fn bits_of(pieces: usize, first: u32, has: impl Fn(usize) -> bool) -> (u32, Vec<u8>) {
    let start = (first as usize).min(pieces) / 8 * 8;
    let end = pieces.min(start + 8 * MAX_HAVE_BYTES);
    let mut bits = vec![0u8; (end - start).div_ceil(8)];
    for i in start..end {
        if has(i) {
            bits[(i - start) / 8] |= 1 << ((i - start) % 8);
        }
    }
    (start as u32, bits)
}

/// The registry of partial downloads served, shared by an endpoint and its handles.
#[derive(Clone, Default)]
pub(super) struct Partials {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    by_hash: HashMap<ContentHash, Arc<PartialShare>>,
    next_id: u32,
}

impl std::fmt::Debug for Partials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Partials({})", self.lock().by_hash.len())
    }
}

impl Partials {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The download in progress of content `hash`, if one is served.
    pub(super) fn by_hash(&self, hash: ContentHash) -> Option<Arc<PartialShare>> {
        self.lock().by_hash.get(&hash).cloned()
    }

    /// The download in progress listed as `id`, if one is served.
    pub(super) fn by_id(&self, id: FileId) -> Option<Arc<PartialShare>> {
        if id.0 < FIRST_PARTIAL_ID {
            return None;
        }
        let inner = self.lock();
        inner.by_hash.values().find(|p| p.entry.id == id).cloned()
    }

    /// The content hashes served (to announce).
    pub(super) fn hashes(&self) -> Vec<ContentHash> {
        self.lock().by_hash.keys().copied().collect()
    }
}

/// A download in progress being served ([`EndpointHandle::serve_partial`]): mark its pieces
/// as they are verified; dropping it stops serving them (and withdraws the announcement).
pub struct PartialServed {
    share: Arc<PartialShare>,
    partials: Partials,
    tx: mpsc::Sender<Command>,
}

impl PartialServed {
    /// Piece `i` is verified and written, and nothing will write over it: serve it.
    pub fn mark(&self, i: u64) {
        if let Some(h) = self.share.have().get_mut(i as usize) {
            *h = true;
        }
    }
}

impl Drop for PartialServed {
    fn drop(&mut self) {
        let mut inner = self.partials.lock();
        let ours = inner
            .by_hash
            .get(&self.share.entry.hash)
            .is_some_and(|p| Arc::ptr_eq(p, &self.share));
        if ours {
            inner.by_hash.remove(&self.share.entry.hash);
        }
        drop(inner);
        // The announcement follows at the endpoint's next look if its queue is full.
        let _ = self.tx.try_send(Command::Reannounce);
    }
}

impl EndpointHandle {
    /// Serves the pieces of a download in progress: content `hash` of `size` bytes with piece
    /// table `table`, in the partial file `file` at `path`, listed as `name`; `have` says
    /// which pieces are verified already. Its hash is announced to the tracker while this
    /// endpoint is registered. `None` when this endpoint already serves a download of that
    /// content.
    #[allow(clippy::too_many_arguments)]
    pub async fn serve_partial(
        &self,
        name: String,
        hash: ContentHash,
        size: u64,
        table: PieceTable,
        file: FileHandle,
        path: PathBuf,
        have: Vec<bool>,
    ) -> Option<PartialServed> {
        let share = {
            let mut inner = self.partials.lock();
            if inner.by_hash.contains_key(&hash) {
                return None;
            }
            let id = FileId(FIRST_PARTIAL_ID | (inner.next_id & !FIRST_PARTIAL_ID));
            inner.next_id = inner.next_id.wrapping_add(1);
            let share = Arc::new(PartialShare {
                entry: IndexEntry {
                    id,
                    path: name,
                    size,
                    hash,
                },
                file,
                path,
                table,
                have: Mutex::new(have),
            });
            inner.by_hash.insert(hash, share.clone());
            share
        };
        let _ = self.tx.send(Command::Reannounce).await;
        Some(PartialServed {
            share,
            partials: self.partials.clone(),
            tx: self.tx.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bits are packed low bit first from a multiple of 8, and capped at `MAX_HAVE_BYTES`.
    #[test]
    fn bits_are_packed_from_a_byte_boundary() {
        let have: Vec<bool> = (0..20).map(|i| i % 3 == 0).collect();
        let bits_of = |have: &[bool], first| bits_of(have.len(), first, |i| have[i]);
        let (first, bits) = bits_of(&have, 0);
        assert_eq!(first, 0);
        assert_eq!(bits, vec![0b0100_1001, 0b1001_0010, 0b0000_0100]);
        let (first, bits) = bits_of(&have, 9);
        assert_eq!(first, 8);
        assert_eq!(bits, vec![0b1001_0010, 0b0000_0100]);
        let (first, bits) = bits_of(&have, 64);
        assert_eq!((first, bits), (16, vec![0b0000_0100]));
        let big = vec![true; 8 * MAX_HAVE_BYTES + 100];
        let (_, bits) = bits_of(&big, 0);
        assert_eq!(bits.len(), MAX_HAVE_BYTES);
    }
}
