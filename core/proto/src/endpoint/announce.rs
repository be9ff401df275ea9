//! Keeping the tracker's record of what this peer shares fresh: the content hashes the driver
//! hands [`Endpoint::set_announced`] go to the tracker in `Announce` batches while the
//! endpoint is registered ([`Endpoint::keep_registered`]).
//!
//! An announcement is [`MAX_ANNOUNCE_HASHES`] hashes a batch, the first with `first` set (it
//! replaces what the tracker held for us), sent alone; once it is answered, the others follow,
//! at most [`ANNOUNCE_IN_FLIGHT`] unanswered at once, up to the cap the tracker's answer
//! names (`limit`). Each batch is a request like any other: sent again on silence, following
//! the tracker's `Retry` with its token. An announcement starts:
//!
//! - when the registration is accepted (`keep_registered`), if there is something to announce;
//! - when the set changes (a rescan of the share found other files);
//! - when a heartbeat's reply says the tracker holds another count than our last announcement
//!   left it with (`RegisterOutcome::Accepted::held`; `None` counts as 0): it forgot us (a
//!   restart, or our entry expired) or kept something stale. Only replies to heartbeats sent
//!   after that announcement count, so a reply that overtook it starts nothing.
//!
//! A refused batch (`Error`) or one never answered ends the announcement; the next one starts
//! after [`ANNOUNCE_RETRY`], doubling up to [`ANNOUNCE_RETRY_MAX`] while they keep failing
//! (an older tracker, which drops `Announce`, costs a few datagrams every few minutes).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::Endpoint;
use crate::wire::{BoundedVec, ContentHash, Message, RequestId, MAX_ANNOUNCE_HASHES};

/// Batches of an announcement unanswered at once, at most.
pub const ANNOUNCE_IN_FLIGHT: usize = 4;
/// The first wait before an announcement that failed starts again.
pub const ANNOUNCE_RETRY: Duration = Duration::from_secs(5);
/// The longest wait before an announcement that keeps failing starts again.
pub const ANNOUNCE_RETRY_MAX: Duration = Duration::from_secs(300);

/// The announcement being sent.
struct Sending {
    tracker: SocketAddr,
    /// The first batch, until it is answered (the others wait for it: a later batch that
    /// reached the tracker before it would be wiped by it).
    first: Option<RequestId>,
    /// Index in `wanted` of the next hash to send.
    next: usize,
    /// Batches sent and not answered yet.
    in_flight: BTreeSet<RequestId>,
    /// The largest count the tracker answered (it only grows within an announcement).
    held: u32,
}

/// See the [module documentation](self).
pub(super) struct Announcer {
    /// What to announce: sorted, without duplicates; `None` until the driver says.
    wanted: Option<Vec<ContentHash>>,
    sending: Option<Sending>,
    /// What the tracker held for us after our last complete announcement at this
    /// registration.
    confirmed: Option<u32>,
    /// Counts completed announcements: a heartbeat carries the number current when it was
    /// sent, and its reply is compared only if none completed since.
    generation: u64,
    /// The tracker's cap on hashes per peer, once it said.
    limit: Option<u32>,
    /// A failed announcement starts again then.
    retry_at: Option<Instant>,
    /// The wait after the next failure.
    backoff: Duration,
}

impl Default for Announcer {
    fn default() -> Self {
        Announcer {
            wanted: None,
            sending: None,
            confirmed: None,
            generation: 0,
            limit: None,
            retry_at: None,
            backoff: ANNOUNCE_RETRY,
        }
    }
}

impl Announcer {
    pub(super) fn next_timeout(&self) -> Option<Instant> {
        self.retry_at
    }

    /// The generation a heartbeat sent now carries.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    fn owns(&self, request: RequestId) -> bool {
        self.sending
            .as_ref()
            .is_some_and(|s| s.in_flight.contains(&request))
    }
}

impl Endpoint {
    /// The content hashes to announce to the tracker (in any order; duplicates count once),
    /// replacing the set given before. While registered, the tracker hears of a change at
    /// once; before that, once the registration is accepted. See the
    /// [`announce`](crate::endpoint::announce) module.
    pub fn set_announced(&mut self, now: Instant, mut hashes: Vec<ContentHash>) {
        hashes.sort_unstable_by_key(|h| h.0);
        hashes.dedup();
        if self.announcer.wanted.as_ref() == Some(&hashes) {
            return;
        }
        self.announcer.wanted = Some(hashes);
        if self.announcer.retry_at.is_none() {
            self.start_announcement(now);
        } // else: the retry comes with the new set
    }

    /// The hashes the tracker holds for us after our last complete announcement (`None`:
    /// none completed since we registered).
    pub fn announced_held(&self) -> Option<u32> {
        self.announcer.confirmed
    }

    /// Whether an announcement is being sent.
    pub fn announcing(&self) -> bool {
        self.announcer.sending.is_some()
    }

    /// A new registration (`keep_registered`): whatever the tracker held for us is unknown.
    pub(super) fn announce_registered(&mut self, now: Instant) {
        self.stop_announcing();
        if self
            .announcer
            .wanted
            .as_ref()
            .is_some_and(|w| !w.is_empty())
        {
            self.start_announcement(now);
        }
    }

    /// Unregistered: nothing more is announced until the next registration.
    pub(super) fn stop_announcing(&mut self) {
        if let Some(sending) = self.announcer.sending.take() {
            for id in sending.in_flight {
                self.requests.remove(&id);
            }
        }
        let a = &mut self.announcer;
        a.confirmed = None;
        a.retry_at = None;
        a.backoff = ANNOUNCE_RETRY;
        a.generation += 1;
    }

    /// Starts a new announcement of the wanted set (dropping one in progress), if registered.
    fn start_announcement(&mut self, now: Instant) {
        let Some(tracker) = self.registration.as_ref().map(|r| r.tracker) else {
            return;
        };
        if self.announcer.wanted.is_none() {
            return;
        }
        if let Some(old) = self.announcer.sending.take() {
            for id in old.in_flight {
                self.requests.remove(&id);
            }
        }
        self.announcer.retry_at = None;
        self.announcer.generation += 1;
        self.announcer.sending = Some(Sending {
            tracker,
            first: None,
            next: 0,
            in_flight: BTreeSet::new(),
            held: 0,
        });
        self.send_batch(now, true);
    }

    /// Sends the next batch of the announcement in progress.
    fn send_batch(&mut self, now: Instant, first: bool) {
        let (Some(reg), Some(wanted), Some(sending)) = (
            self.registration.as_ref(),
            self.announcer.wanted.as_ref(),
            self.announcer.sending.as_ref(),
        ) else {
            return;
        };
        let end = self.announcer.limit.map_or(wanted.len(), |l| {
            wanted.len().min(usize::try_from(l).unwrap_or(usize::MAX))
        });
        let start = sending.next.min(end);
        let stop = (start + MAX_ANNOUNCE_HASHES).min(end);
        let msg = Message::Announce {
            request: RequestId(0),
            name: reg.name.clone(),
            first,
            hashes: BoundedVec(wanted[start..stop].to_vec()),
        };
        let tracker = sending.tracker;
        let (id, transmit) = self.request(now, tracker, msg);
        self.transmits.push_back(transmit);
        let sending = self.announcer.sending.as_mut().expect("checked above");
        sending.next = stop;
        sending.in_flight.insert(id);
        if first {
            sending.first = Some(id);
        }
    }

    /// Sends what may go now, or completes the announcement.
    fn pump_announcement(&mut self, now: Instant) {
        loop {
            let a = &self.announcer;
            let (Some(sending), Some(wanted)) = (a.sending.as_ref(), a.wanted.as_ref()) else {
                return;
            };
            let end = a.limit.map_or(wanted.len(), |l| {
                wanted.len().min(usize::try_from(l).unwrap_or(usize::MAX))
            });
            if sending.first.is_some() {
                return; // the others wait for the first
            }
            if sending.next < end && sending.in_flight.len() < ANNOUNCE_IN_FLIGHT {
                self.send_batch(now, false);
                continue;
            }
            if sending.next >= end && sending.in_flight.is_empty() {
                let held = sending.held;
                let a = &mut self.announcer;
                a.sending = None;
                a.confirmed = Some(held);
                a.backoff = ANNOUNCE_RETRY;
                a.generation += 1;
            }
            return;
        }
    }

    /// The answer to batch `request` from `from`, if it is one of ours: `Some((held,
    /// limit))` for `Announced`, `None` for a refusal. Returns whether it was ours.
    pub(super) fn announce_answered(
        &mut self,
        now: Instant,
        from: SocketAddr,
        request: RequestId,
        answer: Option<(u32, u32)>,
    ) -> bool {
        if !self.announcer.owns(request) || self.requests.get(&request).is_none_or(|r| r.to != from)
        {
            return false;
        }
        let pending = self.requests.remove(&request).expect("checked");
        if pending.attempts == 1 {
            self.record_round_trip(from, pending.sent_at, now);
        }
        let Some((held, limit)) = answer else {
            self.announcement_failed(now);
            return true;
        };
        self.announcer.limit = Some(limit);
        let sending = self.announcer.sending.as_mut().expect("owned");
        sending.in_flight.remove(&request);
        if sending.first == Some(request) {
            sending.first = None;
        }
        sending.held = sending.held.max(held);
        self.pump_announcement(now);
        true
    }

    /// Request `request` was never answered: if it was one of our batches, the announcement
    /// failed (returns whether it was ours).
    pub(super) fn announce_unanswered(&mut self, now: Instant, request: RequestId) -> bool {
        if !self.announcer.owns(request) {
            return false;
        }
        self.announcement_failed(now);
        true
    }

    /// Drops the announcement in progress and tries again later.
    fn announcement_failed(&mut self, now: Instant) {
        if let Some(sending) = self.announcer.sending.take() {
            for id in sending.in_flight {
                self.requests.remove(&id);
            }
        }
        let a = &mut self.announcer;
        a.confirmed = None;
        a.retry_at = Some(now + a.backoff);
        a.backoff = (a.backoff * 2).min(ANNOUNCE_RETRY_MAX);
    }

    /// A failed announcement's wait is over.
    pub(super) fn announce_timeout(&mut self, now: Instant) {
        if self.announcer.retry_at.is_some_and(|at| at <= now) {
            self.announcer.retry_at = None;
            if self.registration.is_some() {
                self.start_announcement(now);
            }
        }
    }

    /// The tracker accepted a heartbeat sent at announcement generation `generation`, and
    /// holds `held` hashes for us: a count other than our last announcement's means it
    /// forgot us (or holds something stale), and we announce again.
    pub(super) fn heartbeat_held(&mut self, now: Instant, generation: u64, held: Option<u32>) {
        let a = &self.announcer;
        if generation != a.generation || a.sending.is_some() || a.retry_at.is_some() {
            return; // an announcement started or ended since, or one waits to start again
        }
        let Some(wanted) = a.wanted.as_ref() else {
            return; // nothing known to compare with
        };
        let held = held.unwrap_or(0);
        let stale = match a.confirmed {
            Some(confirmed) => held != confirmed,
            None => !wanted.is_empty() || held != 0,
        };
        if stale {
            self.start_announcement(now);
        }
    }
}
