//! Transfers as the [`Endpoint`] sees them: upload admission (caps, refusals, the slots of
//! uploads nobody acknowledges), and the answers a finished download still owes its sender.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{
    Endpoint, Event, Lingering, Transmit, UploadSlot, LINGER, MAX_LINGERING, UNPROVEN_GRACE,
};
use crate::wire::{AbortReason, Message, TransferId};

impl Endpoint {
    /// Refuses transfer `transfer` of `from` with an `Abort` for `reason`.
    pub fn refuse(&mut self, from: SocketAddr, transfer: TransferId, reason: AbortReason) {
        self.transmits.push_back(Transmit {
            to: from,
            payload: Message::Abort { transfer, reason }.encode(),
        });
    }

    /// The driver serves upload `(from, transfer)` from `now` on.
    pub fn upload_started(&mut self, now: Instant, from: SocketAddr, transfer: TransferId) {
        self.uploads.insert(
            (from, transfer),
            UploadSlot {
                started: now,
                proven: false,
                rtt: Duration::ZERO,
                delivered: 0,
                turn_from: 0,
                done: false,
            },
        );
    }

    /// Whether a new upload for `from` fits the caps (total, and per IP), after taking the
    /// slot of the oldest upload whose receiver acknowledged nothing in [`UNPROVEN_GRACE`]
    /// if that makes room ([`Event::Evicted`]): forged `Request`s cannot hold every slot.
    pub(super) fn make_room(&mut self, now: Instant, from: SocketAddr) -> bool {
        let same_ip = |a: &SocketAddr| a.ip() == from.ip();
        let from_peer = self.uploads.keys().filter(|(a, _)| same_ip(a)).count();
        let per_peer_full = from_peer >= self.config.max_uploads_per_peer;
        let full = self.uploads.len() >= self.config.max_uploads;
        if !per_peer_full && !full {
            return true;
        }
        // With the per-IP cap reached, only a slot of that IP makes room.
        let victim = self
            .uploads
            .iter()
            .filter(|((a, _), u)| {
                !u.proven && now >= u.started + UNPROVEN_GRACE && (!per_peer_full || same_ip(a))
            })
            .min_by_key(|(_, u)| u.started)
            .map(|(k, _)| *k);
        let Some((to, transfer)) = victim else {
            return false;
        };
        self.uploads.remove(&(to, transfer));
        self.events.push_back(Event::Evicted { to, transfer });
        // Both caps hold now unless the per-IP one was reached by another IP's upload.
        self.uploads.len() < self.config.max_uploads
            && self.uploads.keys().filter(|(a, _)| same_ip(a)).count()
                < self.config.max_uploads_per_peer
    }

    /// Upload `(from, transfer)` is over.
    pub fn upload_ended(&mut self, from: SocketAddr, transfer: TransferId) {
        self.uploads.remove(&(from, transfer));
        if self.paused.remove(&(from, transfer)).is_some() {
            self.leave_line(from, transfer);
        }
    }

    /// How upload `(from, transfer)` goes: `delivered` bytes are on their way for good
    /// ([`ChunkSender::delivered_bytes`](crate::transfer::ChunkSender::delivered_bytes)),
    /// `done` when all are acknowledged (such an upload keeps its slot for its FIN, and
    /// one paused resumes at once: its receiver waits for that FIN), and its sender's smallest
    /// RTT is `rtt` (its turns last [`TURN_RTTS`](super::TURN_RTTS) of
    /// those at least). A turn that reached [`UPLOAD_QUANTUM`](super::UPLOAD_QUANTUM)
    /// bytes ends here, if someone waits.
    pub fn upload_progress(
        &mut self,
        now: Instant,
        (from, transfer): (SocketAddr, TransferId),
        rtt: Option<Duration>,
        delivered: u64,
        done: bool,
    ) {
        let key = (from, transfer);
        let Some(slot) = self.uploads.get_mut(&key).or(self.paused.get_mut(&key)) else {
            return;
        };
        slot.rtt = rtt.unwrap_or(slot.rtt);
        slot.delivered = slot.delivered.max(delivered);
        slot.done |= done;
        let over = slot.delivered - slot.turn_from >= super::UPLOAD_QUANTUM;
        if done && self.paused.contains_key(&key) {
            // What it had sent before pausing all arrived (on a stream, the whole socket
            // buffer): only its FIN is left, which its receiver waits for, and which costs
            // no slot's worth of sending. It takes its slot back at once, even past the cap.
            self.leave_line(from, transfer);
            self.resume_paused(now, key);
            return;
        }
        if over && !self.waiting.is_empty() && self.uploads.contains_key(&key) {
            self.rotate(now);
        }
    }

    /// Whether `(from, transfer)` is an upload of ours, in its slot or paused.
    pub(super) fn is_upload(&self, from: SocketAddr, transfer: TransferId) -> bool {
        let key = (from, transfer);
        self.uploads.contains_key(&key) || self.paused.contains_key(&key)
    }

    /// Our download `transfer` from `peer` runs from now on.
    pub fn download_started(&mut self, transfer: TransferId, peer: SocketAddr) {
        self.downloads.insert(transfer, peer);
    }

    /// Our download `transfer` is over. With `final_ack` (it completed and its sender's FIN
    /// was not answered yet), its sender's late chunks and FIN are answered for [`LINGER`].
    pub fn download_ended(
        &mut self,
        now: Instant,
        transfer: TransferId,
        final_ack: Option<Message>,
    ) {
        let Some(peer) = self.downloads.remove(&transfer) else {
            return;
        };
        let Some(final_ack) = final_ack else {
            return;
        };
        while self
            .lingering
            .front()
            .is_some_and(|l| l.until <= now || self.lingering.len() >= MAX_LINGERING)
        {
            self.lingering.pop_front();
        }
        self.lingering.push_back(Lingering {
            transfer,
            peer,
            final_ack,
            until: now + LINGER,
            closed: false,
        });
    }

    /// Whether a finished download's sender has not seen its FIN answered yet, and would
    /// still be answered after `deadline` (a shutdown waits until then for those FINs).
    pub fn owes_fin_ack(&self, deadline: Instant) -> bool {
        self.lingering
            .iter()
            .any(|l| !l.closed && l.until > deadline)
    }

    /// The answer of a finished download whose receiver is gone to its sender's late `Data`
    /// (the final ACK again) or `Fin` (FIN-ACK).
    pub(super) fn answer_lingering(
        &mut self,
        now: Instant,
        from: SocketAddr,
        msg: &Message,
    ) -> Option<Message> {
        let transfer = match msg {
            Message::Data { transfer, .. } | Message::Fin { transfer, .. } => *transfer,
            _ => return None,
        };
        let l = self
            .lingering
            .iter_mut()
            .find(|l| l.transfer == transfer && l.peer == from && l.until > now)?;
        Some(match msg {
            Message::Fin { .. } => {
                l.closed = true;
                Message::FinAck { transfer }
            }
            _ => l.final_ack.clone(),
        })
    }
}
