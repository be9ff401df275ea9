//! What the targets share: the reader of byte programs, the synthetic file content, message
//! checks, and how a run ended. (`seal` and the abort reasons by number are
//! [`crate::testing`]'s.)

use crate::wire::{decode, Message};

/// Reads fuzz input as little-endian integers; past the end every read yields zero.
pub(super) struct Input<'a> {
    pub(super) data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(super) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub(super) fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    pub(super) fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub(super) fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub(super) fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    pub(super) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
}

/// Byte `i` of the synthetic file the transfer targets send (any length, never stored).
fn content_byte(seed: u8, i: u64) -> u8 {
    let x = i
        .wrapping_add(u64::from(seed))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8
}

pub(super) fn content(seed: u8, from: u64, len: u64) -> Vec<u8> {
    (from..from + len).map(|i| content_byte(seed, i)).collect()
}

/// Checks that `msg` is one the peer would accept: valid limits and an exact round trip.
pub(super) fn assert_sendable(msg: &Message) {
    assert_eq!(
        msg.validate(),
        Ok(()),
        "state machine emitted an invalid {msg:?}"
    );
    assert_eq!(
        decode(&msg.encode()).as_ref(),
        Ok(msg),
        "emitted message does not round-trip"
    );
}

/// How a target's run ended, for tests that check a seed reaches what it was written for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// A Finished event was seen.
    pub finished: bool,
    /// A Failed event was seen.
    pub failed: bool,
}
