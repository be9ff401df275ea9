//! The sliding replay window of a session's received nonces (as WireGuard's, RFC 6479):
//! a nonce is taken once, in any order, as long as it is no more than [`WINDOW`] below the
//! highest taken; a duplicate or an older one is refused.

/// Nonces remembered below the highest one taken.
pub const WINDOW: u64 = 2048;

const WORDS: usize = (WINDOW / 64) as usize;

/// Which of the last [`WINDOW`] nonces were taken.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// One past the highest nonce taken (0: none yet).
    next: u64,
    /// Bit `n % WINDOW` is set when nonce `n` (within the window) was taken.
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            next: 0,
            bits: [0; WORDS],
        }
    }
}

impl ReplayWindow {
    /// Whether `nonce` would be taken now (cheap; checked before decrypting).
    pub fn may_take(&self, nonce: u64) -> bool {
        if nonce >= self.next {
            return nonce != u64::MAX;
        }
        if self.next - nonce > WINDOW {
            return false;
        }
        let (word, bit) = Self::slot(nonce);
        self.bits[word] & bit == 0
    }

    /// Takes `nonce` (after the frame it came in proved authentic): false if it is a
    /// duplicate or too old.
    pub fn take(&mut self, nonce: u64) -> bool {
        if !self.may_take(nonce) {
            return false;
        }
        if nonce >= self.next {
            // Clear the slots of the nonces skipped over (at most the whole window).
            let skipped = (nonce - self.next).min(WINDOW);
            if skipped == WINDOW {
                self.bits = [0; WORDS];
            } else {
                for n in self.next..self.next + skipped {
                    let (word, bit) = Self::slot(n);
                    self.bits[word] &= !bit;
                }
            }
            self.next = nonce + 1;
        }
        let (word, bit) = Self::slot(nonce);
        self.bits[word] |= bit;
        true
    }

    fn slot(nonce: u64) -> (usize, u64) {
        let i = nonce % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn duplicates_and_old_nonces_are_refused() {
        let mut w = ReplayWindow::default();
        assert!(w.take(0));
        assert!(!w.take(0));
        assert!(w.take(5));
        assert!(w.take(3), "reordered, inside the window");
        assert!(!w.take(3));
        assert!(w.take(5 + WINDOW));
        assert!(!w.take(5), "now too old");
        assert!(w.take(6), "exactly WINDOW - 1 below the highest");
        assert!(!w.take(u64::MAX));
        assert!(w.take(1 << 40));
        assert!(!w.take(6));
    }

    proptest! {
        /// Against a model (the set of every nonce taken): a nonce is taken iff it was never
        /// taken and is within the window of the highest taken.
        #[test]
        fn matches_a_model(nonces in proptest::collection::vec(0u64..5000, 0..600)) {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::HashSet::new();
            let mut highest: Option<u64> = None;
            for n in nonces {
                let fresh = !seen.contains(&n);
                let in_window = highest.is_none_or(|h| n + WINDOW > h);
                prop_assert_eq!(w.take(n), fresh && in_window, "nonce {}", n);
                if fresh && in_window {
                    seen.insert(n);
                    highest = Some(highest.map_or(n, |h| h.max(n)));
                }
            }
        }
    }
}
