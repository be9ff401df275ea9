//! Piece verification of a [`ChunkReceiver`]: in-order bytes are hashed piece by piece here,
//! or handed to the driver to hash (`offload_hashing`) and reported back.

use super::*;

impl ChunkReceiver {
    /// The driver's report for a [`ReceiverEvent::HashPiece`]: piece `index` hashes to
    /// `hash`. A mismatch fails the transfer; a match extends the verified prefix once every
    /// piece before it matched too.
    pub fn piece_hashed(&mut self, index: u64, hash: ContentHash) {
        if self.state == State::Done || self.hashing == 0 || index < self.next_verified {
            return;
        }
        let Some(table) = &self.pieces else {
            return;
        };
        self.hashing -= 1;
        if table.hashes.get(index as usize) != Some(&hash) {
            return self.fail(
                TransferError::PieceMismatch { piece: index },
                Some(AbortReason::HashMismatch),
            );
        }
        let piece = u64::from(table.piece_size);
        self.hashed.insert(index);
        let before = self.next_verified;
        while self.hashed.remove(&self.next_verified) {
            self.next_verified += 1;
        }
        if self.next_verified > before {
            let verified = (self.next_verified * piece).min(self.size);
            self.events
                .push_back(ReceiverEvent::PieceVerified { verified });
        }
        self.try_finish();
    }

    /// Bytes handed to the driver to hash and not yet reported (whole pieces; at most
    /// [`MAX_OFFLOADED_PIECE`] each).
    pub fn hash_backlog(&self) -> u64 {
        let piece = self.pieces.as_ref().map_or(0, |t| u64::from(t.piece_size));
        self.hashing * piece
    }

    pub(super) fn deliver(&mut self, payload: Bytes) {
        if self.state == State::Done {
            return; // a piece failed earlier in this burst
        }
        if let Some(h) = self.hasher.as_mut() {
            h.update(&payload);
        }
        let start = self.offset + self.received;
        self.received += payload.len() as u64;
        self.next_seq += 1;
        self.events.push_back(ReceiverEvent::Write(payload.clone()));
        if self.config.offload_hashing {
            return self.hand_out_pieces(start, payload);
        }
        let verdicts = self.check_pieces(start, &payload);
        for v in verdicts {
            match v {
                Ok(verified) => self
                    .events
                    .push_back(ReceiverEvent::PieceVerified { verified }),
                Err(piece) => {
                    return self.fail(
                        TransferError::PieceMismatch { piece },
                        Some(AbortReason::HashMismatch),
                    )
                }
            }
        }
    }

    /// Offloaded hashing: adds `bytes` (starting at absolute offset `start`) to the piece being
    /// received, and hands out each piece it completes.
    fn hand_out_pieces(&mut self, start: u64, mut bytes: Bytes) {
        let Some(table) = &self.pieces else {
            return;
        };
        let (piece_size, piece) = (table.piece_size, u64::from(table.piece_size));
        let mut pos = start;
        while !bytes.is_empty() {
            let piece_end = ((pos / piece + 1) * piece).min(self.size);
            let take = ((piece_end - pos) as usize).min(bytes.len());
            self.piece_parts.push(bytes.split_to(take));
            pos += take as u64;
            if pos == piece_end {
                self.hashing += 1;
                self.events.push_back(ReceiverEvent::HashPiece(PieceJob {
                    index: (pos - 1) / piece,
                    piece_size,
                    file_size: self.size,
                    parts: std::mem::take(&mut self.piece_parts),
                }));
            }
        }
    }

    /// Feeds `bytes` (starting at absolute offset `start`) to the piece hasher; returns, for
    /// each piece completed, the end of the verified prefix or the failing piece.
    fn check_pieces(&mut self, start: u64, mut bytes: &[u8]) -> Vec<Result<u64, u64>> {
        let Some(table) = &self.pieces else {
            return Vec::new();
        };
        let piece = u64::from(table.piece_size);
        let mut pos = start;
        let mut verdicts = Vec::new();
        while !bytes.is_empty() {
            let piece_end = ((pos / piece + 1) * piece).min(self.size);
            let take = ((piece_end - pos) as usize).min(bytes.len());
            let Some(hasher) = self.piece_hasher.as_mut() else {
                break; // not accepted yet: cannot be
            };
            hasher.update(&bytes[..take]);
            bytes = &bytes[take..];
            pos += take as u64;
            if pos == piece_end {
                let index = (pos - 1) / piece;
                let got = hasher.finish();
                if pos < self.size {
                    *hasher = PieceHasher::new(pos, table.piece_size, self.size);
                }
                if table.hashes.get(index as usize) == Some(&got) {
                    verdicts.push(Ok(pos));
                } else {
                    verdicts.push(Err(index));
                    break;
                }
            }
        }
        verdicts
    }
}
