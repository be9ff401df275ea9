//! The line of `Request`s waiting for an upload slot: with every slot taken, a proven
//! `Request` waits in line (answered [`Message::Queued`]) instead of being refused `Busy`, and
//! is admitted in turn when a slot frees ([`Event::Admitted`]). 100 `get`s of one file from
//! one machine used to be refused 92 at a time and retry blindly, leaving slots idle between
//! one upload's end and the next retry.
//!
//! The line is bounded ([`MAX_WAITING`] in all, [`MAX_WAITING_PER_IP`] per address: a full
//! line answers `Busy`), and forgets a `Request` not repeated for [`WAITING_STALE`] (its
//! receiver repeats it about every second while queued), so a receiver that went away, or a
//! forger (who never holds a token for the address it forges), holds no place for long.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Endpoint, Event, Transmit};
use crate::wire::{FileId, Message, TransferId};

/// Requests waiting for a slot, in all.
pub const MAX_WAITING: usize = 1024;
/// Requests waiting for a slot from one IP address: fewer than the default per-IP request
/// rate (200/s), so that their repeats, one a second each, are never rate-limited away.
pub const MAX_WAITING_PER_IP: usize = 128;
/// A waiting `Request` not repeated this long is forgotten (receivers repeat it every
/// [`QUEUED_RETRY`](crate::transfer::QUEUED_RETRY), backing off to 4 s when the `Queued`
/// answers are lost).
pub const WAITING_STALE: Duration = Duration::from_secs(6);

/// One `Request` in line.
#[derive(Clone, Debug)]
pub(super) struct Waiting {
    from: SocketAddr,
    transfer: TransferId,
    file: FileId,
    offset: u64,
    end: Option<u64>,
    /// When its `Request` last came.
    seen: Instant,
}

impl Endpoint {
    /// Puts `transfer`'s `Request` in line (or notes that it came again) and answers
    /// `Queued`; `false` if the line is full (the caller refuses it `Busy`).
    pub(super) fn wait_in_line(
        &mut self,
        now: Instant,
        from: SocketAddr,
        transfer: TransferId,
        file: FileId,
        (offset, end): (u64, Option<u64>),
    ) -> bool {
        self.forget_stale(now);
        let at = match self
            .waiting
            .iter()
            .position(|w| w.from == from && w.transfer == transfer)
        {
            Some(at) => {
                self.waiting[at].seen = now;
                at
            }
            None => {
                let same_ip = self
                    .waiting
                    .iter()
                    .filter(|w| w.from.ip() == from.ip())
                    .count();
                if self.waiting.len() >= MAX_WAITING || same_ip >= MAX_WAITING_PER_IP {
                    return false;
                }
                self.waiting.push_back(Waiting {
                    from,
                    transfer,
                    file,
                    offset,
                    end,
                    seen: now,
                });
                self.waiting.len() - 1
            }
        };
        self.transmits.push_back(Transmit {
            to: from,
            payload: Message::Queued {
                transfer,
                ahead: at as u32,
            }
            .encode(),
        });
        true
    }

    /// Whether requests wait in line (a new one then queues behind them).
    pub(super) fn line_waiting(&mut self, now: Instant) -> bool {
        self.forget_stale(now);
        !self.waiting.is_empty()
    }

    /// Admits, in order, the waiting requests that fit the upload caps now (after an upload
    /// ended): each an [`Event::Admitted`], for the driver to serve.
    pub fn admit_waiting(&mut self, now: Instant) {
        self.forget_stale(now);
        let mut i = 0;
        while i < self.waiting.len() {
            // As a new request would be: within both caps, after taking the slot of an
            // upload nobody acknowledges (`make_room`).
            if !self.make_room(now, self.waiting[i].from) {
                if self.uploads.len() >= self.config.max_uploads {
                    break; // full for everyone
                }
                i += 1; // its address has its share: the next one in line may not
                continue;
            }
            let w = self.waiting.remove(i).expect("in range");
            // The slot is held from now on: what is admitted next counts it.
            self.upload_started(now, w.from, w.transfer);
            self.events.push_back(Event::Admitted {
                from: w.from,
                transfer: w.transfer,
                file: w.file,
                offset: w.offset,
                end: w.end,
            });
        }
    }

    fn forget_stale(&mut self, now: Instant) {
        self.waiting.retain(|w| now < w.seen + WAITING_STALE);
    }
}
