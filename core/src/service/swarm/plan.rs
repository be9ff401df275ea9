//! Which pieces of a multi-source download are verified, which are being fetched (by how
//! many fetches at once), and which are free to hand out: the bookkeeping of the scheduler,
//! without time or I/O, so that every rule is unit-tested.

use std::collections::BTreeSet;
use std::ops::Range;

/// The pieces of one download.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// Verified and written.
    have: Vec<bool>,
    have_count: u64,
    /// Fetches covering each piece now (two in the endgame).
    taken: Vec<u8>,
    /// Pieces taken and not verified.
    busy: u64,
    /// Pieces that two fetches wrote (a duplicate of the endgame): re-read and checked from
    /// the file before the download is declared complete, since a fetch writes bytes before
    /// its hash check and a bad twin may write over what the good one verified.
    contested: BTreeSet<u64>,
    /// Every piece below is verified, taken, or in `returned`.
    cursor: u64,
    /// Pieces below `cursor` that are free again (their fetch failed or was cancelled).
    returned: BTreeSet<u64>,
}

impl Plan {
    /// A plan of `pieces` pieces, those with `have[i]` verified already.
    pub(crate) fn new(have: Vec<bool>) -> Self {
        let have_count = have.iter().filter(|&&h| h).count() as u64;
        let n = have.len();
        Plan {
            have,
            have_count,
            taken: vec![0; n],
            busy: 0,
            contested: BTreeSet::new(),
            cursor: 0,
            returned: BTreeSet::new(),
        }
    }

    pub(crate) fn pieces(&self) -> u64 {
        self.have.len() as u64
    }

    pub(crate) fn have(&self) -> &[bool] {
        &self.have
    }

    pub(crate) fn have_count(&self) -> u64 {
        self.have_count
    }

    pub(crate) fn complete(&self) -> bool {
        self.have_count == self.pieces()
    }

    fn free(&self, i: u64) -> bool {
        !self.have[i as usize] && self.taken[i as usize] == 0
    }

    /// Pieces neither verified nor taken.
    pub(crate) fn free_count(&self) -> u64 {
        self.pieces() - self.have_count - self.busy
    }

    /// Takes the first run of free pieces, at most `max` long (at least one piece).
    pub(crate) fn take_run(&mut self, max: u64) -> Option<Range<u64>> {
        let start = match self.returned.first() {
            Some(&i) => i,
            None => {
                while self.cursor < self.pieces() && !self.free(self.cursor) {
                    self.cursor += 1;
                }
                if self.cursor == self.pieces() {
                    return None;
                }
                self.cursor
            }
        };
        let mut end = start;
        while end < self.pieces() && end - start < max.max(1) && self.free(end) {
            self.taken[end as usize] = 1;
            self.busy += 1;
            self.returned.remove(&end);
            end += 1;
        }
        // Every piece up to `end` is now taken, verified or returned.
        self.cursor = self.cursor.max(end);
        Some(start..end)
    }

    /// Takes a run of free pieces for which `ok` holds (those a source has, those nobody
    /// else has yet), at most `max` long: from the first such piece at or after `origin`
    /// (wrapping round), up to a piece that is not, or the end of the file.
    pub(crate) fn take_run_where(
        &mut self,
        max: u64,
        origin: u64,
        ok: impl Fn(u64) -> bool,
    ) -> Option<Range<u64>> {
        let n = self.pieces();
        let origin = if n == 0 { 0 } else { origin % n };
        let start = (origin..n)
            .chain(0..origin)
            .find(|&i| self.free(i) && ok(i))?;
        let mut end = start;
        while end < n && end - start < max.max(1) && self.free(end) && ok(end) {
            self.taken[end as usize] = 1;
            self.busy += 1;
            // Below the cursor, a free piece is in `returned`; above it, the cursor finds it.
            self.returned.remove(&end);
            end += 1;
        }
        Some(start..end)
    }

    /// A second fetch of `pieces` (the endgame): they are contested from now on.
    pub(crate) fn duplicate(&mut self, pieces: Range<u64>) {
        for i in pieces {
            if !self.have[i as usize] {
                if self.taken[i as usize] == 0 {
                    self.busy += 1;
                    self.returned.remove(&i);
                }
                self.taken[i as usize] = self.taken[i as usize].saturating_add(1);
                self.contested.insert(i);
            }
        }
    }

    /// Piece `i` is verified (and written).
    pub(crate) fn verified(&mut self, i: u64) {
        if !self.have[i as usize] {
            self.have[i as usize] = true;
            self.have_count += 1;
            if self.taken[i as usize] > 0 {
                self.busy -= 1;
            }
        }
    }

    /// A fetch of `pieces` ended: those it did not verify are free again unless another
    /// fetch still covers them.
    pub(crate) fn release(&mut self, pieces: Range<u64>) {
        for i in pieces {
            let t = &mut self.taken[i as usize];
            if *t == 0 {
                continue;
            }
            *t -= 1;
            if *t == 0 && !self.have[i as usize] {
                self.busy -= 1;
                if i < self.cursor {
                    self.returned.insert(i);
                }
            }
        }
    }

    /// Piece `i`, found bad on re-reading, is wanted again.
    pub(crate) fn lost(&mut self, i: u64) {
        if !self.have[i as usize] {
            return;
        }
        self.have[i as usize] = false;
        self.have_count -= 1;
        if self.taken[i as usize] > 0 {
            self.busy += 1;
        } else if i < self.cursor {
            self.returned.insert(i);
        }
    }

    /// The contested pieces (and forgets them: the caller checks them now).
    pub(crate) fn take_contested(&mut self) -> BTreeSet<u64> {
        std::mem::take(&mut self.contested)
    }

    /// Whether piece `i` is verified and not contested: what a checkpoint may vouch for (a
    /// contested piece is trusted only once read back, at the end).
    pub(crate) fn recordable(&self, i: usize) -> bool {
        self.have[i] && !self.contested.contains(&(i as u64))
    }

    /// Recordable pieces as a bitmap (bit `i % 8` of byte `i / 8`).
    pub(crate) fn bitmap(&self) -> Vec<u8> {
        let mut bits = vec![0u8; self.have.len().div_ceil(8)];
        for i in (0..self.have.len()).filter(|&i| self.recordable(i)) {
            bits[i / 8] |= 1 << (i % 8);
        }
        bits
    }

    /// Recordable pieces from piece 0 on, without a gap.
    pub(crate) fn prefix(&self) -> u64 {
        (0..self.have.len())
            .take_while(|&i| self.recordable(i))
            .count() as u64
    }
}

/// The verified pieces a bitmap of `pieces` pieces records (`None`: not such a bitmap).
pub(crate) fn from_bitmap(bits: &[u8], pieces: u64) -> Option<Vec<bool>> {
    if bits.len() as u64 != pieces.div_ceil(8) {
        return None;
    }
    Some(
        (0..pieces)
            .map(|i| bits[(i / 8) as usize] & (1 << (i % 8)) != 0)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs taken where a condition holds start at the origin, wrap round, stop at a piece
    /// that fails it, and mix with in-order runs without handing a piece out twice.
    #[test]
    fn runs_where_a_source_has_the_pieces() {
        let mut p = Plan::new(vec![false; 10]);
        let odd_gap = |i: u64| i != 7;
        assert_eq!(p.take_run_where(4, 5, odd_gap), Some(5..7));
        assert_eq!(p.take_run_where(4, 5, odd_gap), Some(8..10));
        assert_eq!(p.take_run_where(4, 5, odd_gap), Some(0..4));
        assert_eq!(p.take_run(4), Some(4..5));
        assert_eq!(p.take_run(4), Some(7..8));
        assert_eq!(p.take_run(4), None);
        assert_eq!(p.take_run_where(4, 0, |_| true), None);
        // Given back, a piece is found by both ways of taking, once.
        p.release(5..7);
        assert_eq!(p.take_run_where(1, 9, |i| i == 6), Some(6..7));
        assert_eq!(p.take_run(4), Some(5..6));
        assert_eq!(p.take_run(4), None);
        assert_eq!(p.free_count(), 0);
    }

    #[test]
    fn runs_are_handed_out_in_order_and_never_twice() {
        let mut p = Plan::new(vec![false; 10]);
        assert_eq!(p.take_run(4), Some(0..4));
        assert_eq!(p.take_run(4), Some(4..8));
        assert_eq!(p.take_run(4), Some(8..10));
        assert_eq!(p.take_run(4), None);
        assert_eq!(p.free_count(), 0);
    }

    #[test]
    fn verified_pieces_are_skipped() {
        let mut have = vec![false; 8];
        have[0] = true;
        have[3] = true;
        let mut p = Plan::new(have);
        assert_eq!(p.have_count(), 2);
        assert_eq!(p.take_run(8), Some(1..3));
        assert_eq!(p.take_run(8), Some(4..8));
        assert_eq!(p.take_run(8), None);
    }

    #[test]
    fn a_failed_fetch_gives_back_what_it_did_not_verify() {
        let mut p = Plan::new(vec![false; 8]);
        let run = p.take_run(4).unwrap();
        p.verified(0);
        p.verified(1);
        p.release(run);
        assert_eq!(p.free_count(), 6);
        assert_eq!(p.take_run(2), Some(2..4), "the returned pieces first");
        assert_eq!(p.take_run(8), Some(4..8));
        assert_eq!(p.take_run(8), None);
        // A returned run goes on into the untouched pieces after it.
        let mut p = Plan::new(vec![false; 8]);
        let run = p.take_run(4).unwrap();
        p.release(run);
        assert_eq!(p.take_run(6), Some(0..6));
        assert_eq!(p.take_run(6), Some(6..8));
    }

    #[test]
    fn a_duplicated_piece_stays_taken_until_both_fetches_end() {
        let mut p = Plan::new(vec![false; 4]);
        let a = p.take_run(4).unwrap();
        p.verified(0);
        p.duplicate(1..4);
        p.release(a);
        assert_eq!(p.take_run(4), None, "the twin still holds 1..4");
        p.release(1..4);
        assert_eq!(p.take_run(4), Some(1..4));
        for i in 1..4 {
            p.verified(i);
        }
        // Until read back, contested pieces are not recorded.
        assert_eq!(p.bitmap(), vec![0b0001]);
        assert_eq!(p.prefix(), 1);
        assert_eq!(p.take_contested(), BTreeSet::from([1, 2, 3]));
        assert_eq!(p.bitmap(), vec![0b1111]);
    }

    #[test]
    fn a_piece_lost_on_rereading_is_fetched_again() {
        let mut p = Plan::new(vec![false; 3]);
        let run = p.take_run(3).unwrap();
        for i in run.clone() {
            p.verified(i);
        }
        p.release(run);
        assert!(p.complete());
        p.lost(1);
        assert!(!p.complete());
        assert_eq!(p.take_run(3), Some(1..2));
    }

    #[test]
    fn bitmaps_round_trip() {
        let have: Vec<bool> = (0..21).map(|i| i % 3 == 0).collect();
        let p = Plan::new(have.clone());
        assert_eq!(from_bitmap(&p.bitmap(), 21), Some(have));
        assert_eq!(from_bitmap(&p.bitmap(), 30), None);
        assert_eq!(p.prefix(), 1);
    }
}
