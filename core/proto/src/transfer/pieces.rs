//! The BLAKE3 piece tree: a file's [`PieceTable`] (one hash per piece, adding up to the
//! file's BLAKE3), the [`PieceHasher`] that hashes one piece into its entry, and the
//! [`PieceJob`] a receiver hands its driver when the driver hashes pieces
//! ([`ReceiverConfig::offload_hashing`](super::ReceiverConfig::offload_hashing)); and
//! [`Staged`], which feeds BLAKE3 in runs long enough for its many-chunks-at-once path (the
//! piece hasher's, and a receiver's whole-file hash without a table).

use bytes::Bytes;

use crate::wire::ContentHash;

/// The hashes of every piece of a file, as the sender's index has them.
///
/// A piece's hash is its node in the file's BLAKE3 tree (its chaining value at its offset, as
/// in bao), so the pieces combine into the file's BLAKE3 itself: a table is checked against
/// the listed hash before it is used ([`PieceTable::root`]), and then every piece against the
/// table as it arrives. No byte is hashed twice. A file of one piece has its BLAKE3 as its
/// only piece hash; an empty file has no pieces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PieceTable {
    /// Bytes per piece (the last piece may be shorter): a power of two, at least
    /// [`MIN_PIECE_SIZE`], so that a piece is a whole subtree of the BLAKE3 tree.
    pub piece_size: u32,
    /// One hash per piece.
    pub hashes: Vec<ContentHash>,
}

/// Smallest piece: one BLAKE3 chunk.
pub const MIN_PIECE_SIZE: u32 = 1024;

impl PieceTable {
    /// Whether `piece_size` makes pieces whole subtrees of the BLAKE3 tree.
    pub fn valid_piece_size(piece_size: u32) -> bool {
        piece_size >= MIN_PIECE_SIZE && piece_size.is_power_of_two()
    }

    /// Computes the table of `bytes` (for tests and tools; peers get it from the index).
    /// `piece_size` must be [valid](Self::valid_piece_size).
    pub fn of(bytes: &[u8], piece_size: u32) -> Self {
        let size = bytes.len() as u64;
        PieceTable {
            piece_size,
            hashes: bytes
                .chunks(piece_size.max(1) as usize)
                .enumerate()
                .map(|(i, piece)| {
                    let mut h =
                        PieceHasher::new(i as u64 * u64::from(piece_size), piece_size, size);
                    h.update(piece);
                    h.finish()
                })
                .collect(),
        }
    }

    /// The BLAKE3 of the `size`-byte file these pieces make, or `None` when the table cannot
    /// be one of such a file (bad piece size, wrong number of pieces).
    pub fn root(&self, size: u64) -> Option<ContentHash> {
        if !Self::valid_piece_size(self.piece_size)
            || self.hashes.len() as u64 != size.div_ceil(u64::from(self.piece_size))
        {
            return None;
        }
        match self.hashes.as_slice() {
            [] => Some(ContentHash::of(b"")),
            [only] => Some(*only),
            all => Some(ContentHash(*merge(all, true).as_bytes())),
        }
    }
}

/// Merges the chaining values of consecutive whole subtrees as BLAKE3's tree does: the left
/// part is the largest power of two of pieces that leaves the right part non-empty.
fn merge(cvs: &[ContentHash], root: bool) -> blake3::Hash {
    use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, Mode};
    debug_assert!(cvs.len() >= 2);
    let split = 1 << (usize::BITS - 1 - (cvs.len() - 1).leading_zeros());
    let side = |part: &[ContentHash]| match part {
        [one] => one.0,
        more => *merge(more, false).as_bytes(),
    };
    let (left, right) = (side(&cvs[..split]), side(&cvs[split..]));
    if root {
        merge_subtrees_root(&left, &right, Mode::Hash)
    } else {
        blake3::Hash::from_bytes(merge_subtrees_non_root(&left, &right, Mode::Hash))
    }
}

/// Largest piece handed to the driver to hash
/// ([`ReceiverConfig::offload_hashing`](super::ReceiverConfig::offload_hashing)): a piece is
/// held in memory until it is complete, and the piece size comes from the sender. Larger
/// pieces are hashed by the receiver as they stream in.
pub const MAX_OFFLOADED_PIECE: u32 = 1024 * 1024;

/// Bytes a [`Staged`] hasher collects before it hashes them.
const STAGE: usize = 16 * 1024;

/// A BLAKE3 hasher fed in runs of at least [`STAGE`] bytes. BLAKE3 hashes many 1 KiB chunks
/// at once (SIMD) only when one update holds them; datagram payloads are smaller (1,404 bytes
/// on a 1,500-byte MTU), and fed one by one they were hashed a block at a time, at a quarter
/// of the speed. Large updates go straight through.
#[derive(Clone, Debug)]
pub(super) struct Staged {
    hasher: blake3::Hasher,
    stage: Vec<u8>,
}

impl Staged {
    pub(super) fn new(hasher: blake3::Hasher) -> Self {
        Staged {
            hasher,
            stage: Vec::new(),
        }
    }

    pub(super) fn update(&mut self, mut bytes: &[u8]) {
        if self.stage.is_empty() && bytes.len() >= STAGE {
            self.hasher.update(bytes);
            return;
        }
        while !bytes.is_empty() {
            if self.stage.capacity() == 0 {
                self.stage.reserve_exact(STAGE);
            }
            let take = (STAGE - self.stage.len()).min(bytes.len());
            self.stage.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.stage.len() == STAGE {
                self.hasher.update(&self.stage);
                self.stage.clear();
            }
        }
    }

    /// The hasher, with every byte fed so far.
    pub(super) fn hasher(&mut self) -> &blake3::Hasher {
        if !self.stage.is_empty() {
            self.hasher.update(&self.stage);
            self.stage.clear();
        }
        &self.hasher
    }
}

/// A completed piece whose hash the driver computes
/// ([`ReceiverEvent::HashPiece`](super::ReceiverEvent::HashPiece)): its bytes
/// are slices of the received messages, not copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PieceJob {
    pub(super) index: u64,
    pub(super) piece_size: u32,
    pub(super) file_size: u64,
    pub(super) parts: Vec<Bytes>,
}

impl PieceJob {
    /// Which piece.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The piece's hash, as its [`PieceTable`] entry would be (callable on any thread).
    pub fn hash(&self) -> ContentHash {
        let start = self.index * u64::from(self.piece_size);
        let mut h = PieceHasher::new(start, self.piece_size, self.file_size);
        for part in &self.parts {
            h.update(part);
        }
        h.finish()
    }
}

/// Hashes one piece of a file into its [`PieceTable`] entry.
#[derive(Clone, Debug)]
pub struct PieceHasher {
    hasher: Staged,
    /// The piece is the whole file: its hash is the file's BLAKE3.
    whole: bool,
}

impl PieceHasher {
    /// The piece starting at `start` (a multiple of `piece_size`, which must be
    /// [valid](PieceTable::valid_piece_size)) of a `size`-byte file.
    pub fn new(start: u64, piece_size: u32, size: u64) -> Self {
        use blake3::hazmat::HasherExt;
        let mut hasher = blake3::Hasher::new();
        // (A start off the chunk grid is a caller's bug; it gives a hash that matches
        // nothing rather than a panic.)
        if start > 0 && start.is_multiple_of(u64::from(MIN_PIECE_SIZE)) {
            hasher.set_input_offset(start);
        }
        PieceHasher {
            hasher: Staged::new(hasher),
            whole: start == 0 && size <= u64::from(piece_size),
        }
    }

    /// Feeds the piece's next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    /// The piece's hash.
    pub fn finish(&mut self) -> ContentHash {
        use blake3::hazmat::HasherExt;
        let whole = self.whole;
        let hasher = self.hasher.hasher();
        if whole {
            hasher.finalize().into()
        } else {
            ContentHash(hasher.finalize_non_root())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Staging changes how bytes reach BLAKE3, never the hash: any split of the input gives
    /// the hash of the whole, for a file and for a piece.
    #[test]
    fn staged_hashing_gives_the_hash_of_the_whole_input_for_any_split() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let splits: [&[usize]; 4] = [
            &[1404],
            &[1, STAGE - 1, STAGE, STAGE + 1, 3],
            &[STAGE * 3, 5, 70_000],
            &[65_536],
        ];
        for len in [0, 1, 1404, STAGE - 1, STAGE, STAGE + 1, 100_000, 300_000] {
            let input = &data[..len];
            for split in splits {
                let mut staged = Staged::new(blake3::Hasher::new());
                let mut piece = PieceHasher::new(0, PIECE, len as u64);
                let (mut at, mut k) = (0, 0);
                while at < len {
                    let n = split[k % split.len()].min(len - at);
                    staged.update(&input[at..at + n]);
                    piece.update(&input[at..at + n]);
                    at += n;
                    k += 1;
                }
                assert_eq!(staged.hasher().finalize(), blake3::hash(input), "len {len}");
                let mut whole = PieceHasher::new(0, PIECE, len as u64);
                whole.update(input);
                assert_eq!(piece.finish(), whole.finish(), "len {len} {split:?}");
            }
        }
    }

    const PIECE: u32 = 256 * 1024;
}
