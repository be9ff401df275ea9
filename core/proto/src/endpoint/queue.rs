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
//!
//! Slots are shared in turns (processor sharing): while someone waits who could take its
//! slot, an upload whose receiver has acknowledged it gives the slot up after
//! [`EndpointConfig::upload_turn`](super::EndpointConfig::upload_turn)
//! ([`Event::Paused`]: its sender stops, keeping its state) and goes to the back of the line;
//! in turn it is [`Event::Resumed`]. Its receiver hears `Queued` about every second
//! meanwhile, which keeps it waiting. With one slot each to the end, 100 downloads from 8
//! slots ran at rates 9x apart: the last ones ran alone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::{Endpoint, Event, Transmit, UploadSlot};
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

/// One place in line.
#[derive(Clone, Debug)]
pub(super) struct Waiting {
    from: SocketAddr,
    transfer: TransferId,
    /// When its `Request` last came (a paused upload: when its receiver was last told
    /// `Queued`).
    seen: Instant,
    what: InLine,
}

/// What waits in a place in line.
#[derive(Clone, Debug)]
enum InLine {
    /// A new `Request`, for bytes `offset..end` of `file`.
    Request {
        file: FileId,
        offset: u64,
        end: Option<u64>,
    },
    /// A paused upload, waiting for its next turn.
    Paused,
}

impl Waiting {
    fn is_paused(&self) -> bool {
        matches!(self.what, InLine::Paused)
    }
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
                    seen: now,
                    what: InLine::Request { file, offset, end },
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

    /// How many wait in line (new requests and paused uploads).
    pub fn line_len(&self) -> usize {
        self.waiting.len()
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
            let (file, offset, end) = match w.what {
                InLine::Request { file, offset, end } => (file, offset, end),
                InLine::Paused => {
                    self.resume_paused(now, (w.from, w.transfer));
                    continue;
                }
            };
            // The slot is held from now on: what is admitted next counts it.
            self.upload_started(now, w.from, w.transfer);
            self.events.push_back(Event::Admitted {
                from: w.from,
                transfer: w.transfer,
                file,
                offset,
                end,
            });
        }
    }

    /// Gives paused upload `key` its slot back for a turn ([`Event::Resumed`]).
    pub(super) fn resume_paused(&mut self, now: Instant, key: (SocketAddr, TransferId)) {
        if let Some(mut slot) = self.paused.remove(&key) {
            slot.started = now;
            // What was delivered past the last turn's quantum (the window in flight when
            // it paused, a head start before anyone waited) counts toward this turn: equal
            // bytes per turn in the long run, whatever each sender's window.
            slot.turn_from = slot.delivered.min(slot.turn_from + super::UPLOAD_QUANTUM);
            self.uploads.insert(key, slot);
            self.events.push_back(Event::Resumed {
                to: key.0,
                transfer: key.1,
            });
        }
    }

    fn forget_stale(&mut self, now: Instant) {
        // (A paused upload leaves the line when it ends: `upload_ended`.)
        self.waiting
            .retain(|w| w.is_paused() || now < w.seen + WAITING_STALE);
    }

    /// Removes a paused upload's place in line.
    pub(super) fn leave_line(&mut self, from: SocketAddr, transfer: TransferId) {
        self.waiting
            .retain(|w| !(w.is_paused() && w.from == from && w.transfer == transfer));
    }

    /// The uploads whose turn is over or will be, with someone in line who could take
    /// their slot (within the total cap and that one's address cap, once the slot is
    /// free), and when their turn ends. O((uploads + line) log), no pairs.
    fn turns_over(&self) -> Vec<((SocketAddr, TransferId), Instant)> {
        let turn = self.config.upload_turn;
        if turn.is_zero() || self.waiting.is_empty() || self.uploads.is_empty() {
            return Vec::new();
        }
        // Freeing one slot leaves the total below its cap.
        if self.uploads.len() > self.config.max_uploads {
            return Vec::new();
        }
        let mut held: BTreeMap<IpAddr, usize> = BTreeMap::new();
        for (a, _) in self.uploads.keys() {
            *held.entry(a.ip()).or_default() += 1;
        }
        let in_line: BTreeSet<IpAddr> = self.waiting.iter().map(|w| w.from.ip()).collect();
        // Addresses in line with room under their cap now: any slot freed serves them.
        let cap = self.config.max_uploads_per_peer;
        let with_room: Vec<IpAddr> = in_line
            .iter()
            .filter(|ip| held.get(ip).copied().unwrap_or(0) < cap)
            .copied()
            .collect();
        self.uploads
            .iter()
            .filter(|(_, u)| u.proven && !u.done)
            .filter(|((a, _), _)| {
                // Someone of its own address (one slot fewer held), or another with room.
                in_line.contains(&a.ip()) || with_room.iter().any(|ip| *ip != a.ip())
            })
            .map(|(k, u)| {
                let least = u.rtt * super::TURN_RTTS;
                let served = u.delivered - u.turn_from >= super::UPLOAD_QUANTUM;
                let len = if served { least } else { turn.max(least) };
                (*k, u.started + len)
            })
            .collect()
    }

    /// When the next upload's turn ends (someone in line could take its slot).
    pub(super) fn next_turn_timeout(&self) -> Option<Instant> {
        let turns = self.turns_over().into_iter().map(|(_, at)| at).min();
        let reminders = self
            .waiting
            .iter()
            .filter(|w| w.is_paused())
            .map(|w| w.seen + crate::transfer::QUEUED_RETRY)
            .min();
        turns.into_iter().chain(reminders).min()
    }

    /// Pauses the uploads whose turn is over (longest in their slot first), each to the back
    /// of the line, and admits who can come in.
    pub(super) fn rotate(&mut self, now: Instant) {
        loop {
            let Some((key, _)) = self
                .turns_over()
                .into_iter()
                .filter(|(_, at)| *at <= now)
                .min_by_key(|(_, at)| *at)
            else {
                return;
            };
            let slot: UploadSlot = self.uploads.remove(&key).expect("listed");
            self.paused.insert(key, slot);
            let (from, transfer) = key;
            self.waiting.push_back(Waiting {
                from,
                transfer,
                seen: now,
                what: InLine::Paused,
            });
            self.events.push_back(Event::Paused { to: from, transfer });
            self.admit_waiting(now);
            // Its receiver hears where it waits (unless its turn came again at once).
            if let Some(ahead) = self
                .waiting
                .iter()
                .position(|w| w.is_paused() && (w.from, w.transfer) == key)
            {
                self.queued_notice(from, transfer, ahead);
            }
        }
    }

    /// Tells each paused upload's receiver, about every second, that it waits in line (its
    /// download would time out in the silence otherwise).
    pub(super) fn remind_paused(&mut self, now: Instant) {
        let due: Vec<(usize, SocketAddr, TransferId)> = self
            .waiting
            .iter_mut()
            .enumerate()
            .filter(|(_, w)| w.is_paused() && now >= w.seen + crate::transfer::QUEUED_RETRY)
            .map(|(i, w)| {
                w.seen = now;
                (i, w.from, w.transfer)
            })
            .collect();
        for (ahead, to, transfer) in due {
            self.queued_notice(to, transfer, ahead);
        }
    }

    fn queued_notice(&mut self, to: SocketAddr, transfer: TransferId, ahead: usize) {
        self.transmits.push_back(Transmit {
            to,
            payload: Message::Queued {
                transfer,
                ahead: ahead as u32,
            }
            .encode(),
        });
    }
}
