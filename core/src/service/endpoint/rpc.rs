//! Requests this endpoint makes (to the tracker and other peers) with retries, its
//! registration heartbeat, round trips remembered per peer, and the answers finished
//! downloads still owe their senders.

use super::download::Download;
use super::driver::Driver;
use super::ServiceError;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::wire::{Message, RequestId, TransferId, TransportKind};

pub(super) struct PendingRpc {
    pub(super) to: SocketAddr,
    pub(super) bytes: Vec<u8>,
    /// When it was first sent: with a single attempt, its answer is a round-trip sample.
    pub(super) sent_at: Instant,
    pub(super) attempts: u32,
    pub(super) wait: Duration,
    pub(super) next_at: Instant,
    pub(super) reply: oneshot::Sender<Result<Message, ServiceError>>,
}

pub(super) struct Registration {
    pub(super) tracker: SocketAddr,
    pub(super) name: String,
    pub(super) port: u16,
    pub(super) transport: TransportKind,
    pub(super) every: Duration,
    pub(super) next_at: Instant,
}

/// A finished download, remembered after its receiver is gone so that its sender still
/// learns the end: a receiver finishes on its last verified chunk, before the sender's FIN,
/// so the sender may yet send a chunk again (its copy of the final ACK was lost) and will
/// send its FIN. (TCP's TIME-WAIT, for the same reason.)
pub(super) struct Lingering {
    pub(super) transfer: TransferId,
    pub(super) peer: SocketAddr,
    /// The ACK of every chunk ([`ChunkReceiver::final_ack`]).
    pub(super) final_ack: Message,
    pub(super) until: Instant,
    /// The sender's FIN came and was answered: it knows.
    pub(super) closed: bool,
}

impl Lingering {
    /// Remembers the finished download `d` in `queue`, unless its sender knows already.
    pub(super) fn remember(
        queue: &mut VecDeque<Lingering>,
        transfer: TransferId,
        d: &Download,
        now: Instant,
    ) {
        let Some(final_ack) = d.machine.final_ack() else {
            return; // failed: nothing to answer
        };
        if d.machine.fin_answered() {
            return;
        }
        while queue
            .front()
            .is_some_and(|l| l.until <= now || queue.len() >= MAX_LINGERING)
        {
            queue.pop_front();
        }
        queue.push_back(Lingering {
            transfer,
            peer: d.peer,
            final_ack,
            until: now + LINGER,
            closed: false,
        });
    }
}

/// How long a finished download answers its sender after its receiver is gone (past the
/// sender's FIN retries, which back off to its largest RTO), and how many are remembered.
pub(super) const LINGER: Duration = Duration::from_secs(20);
pub(super) const MAX_LINGERING: usize = 1024;
/// How long a shutdown waits for the senders of finished downloads to see their FIN
/// answered (normally one round trip), so that a `get` that exits at once leaves no sender
/// retrying until its timeout.
pub(super) const LINGER_ON_SHUTDOWN: Duration = Duration::from_secs(1);

/// Round trips measured to recent peers, at most [`MAX_ROUND_TRIPS`] of them.
#[derive(Default)]
pub(super) struct RoundTrips(BTreeMap<SocketAddr, (Duration, Instant)>);

/// Peers whose round trip is remembered, and for how long a measure is trusted.
pub(super) const MAX_ROUND_TRIPS: usize = 256;
pub(super) const ROUND_TRIP_FRESH: Duration = Duration::from_secs(60);

impl RoundTrips {
    /// Records the answer, at `now`, of a request first sent at `sent_at` to `peer`.
    pub(super) fn record(&mut self, peer: SocketAddr, sent_at: Instant, now: Instant) {
        if self.0.len() >= MAX_ROUND_TRIPS && !self.0.contains_key(&peer) {
            // Make room by forgetting the oldest measure (stale ones are ignored anyway).
            let oldest = self
                .0
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(a, _)| *a);
            if let Some(oldest) = oldest {
                self.0.remove(&oldest);
            }
        }
        self.0.insert(peer, (now.duration_since(sent_at), now));
    }

    /// The round trip to `peer`, if measured recently (before `now`).
    pub(super) fn recent(&self, peer: SocketAddr, now: Instant) -> Option<Duration> {
        self.0
            .get(&peer)
            .filter(|(_, at)| now.saturating_duration_since(*at) < ROUND_TRIP_FRESH)
            .map(|(rtt, _)| *rtt)
    }
}

/// A download's first wait for the sender's answer to its `Request`, given a round trip to
/// that sender measured just before: four of them (the answer may also wait for the sender to
/// open the file), at least [`MIN_REQUEST_RETRY`], at most `default`.
pub(super) fn request_retry_after(rtt: Duration, default: Duration) -> Duration {
    (rtt * 4).max(MIN_REQUEST_RETRY).min(default)
}

/// Shortest first wait for an answer to a `Request` (see [`request_retry_after`]).
pub(super) const MIN_REQUEST_RETRY: Duration = Duration::from_millis(25);

pub(super) fn set_request_id(msg: &mut Message, id: RequestId) {
    match msg {
        Message::Register { request, .. }
        | Message::Heartbeat { request, .. }
        | Message::Unregister { request, .. }
        | Message::ListPeers { request, .. }
        | Message::IndexRequest { request, .. }
        | Message::PieceRequest { request, .. } => *request = id,
        _ => {}
    }
}

impl Driver {
    pub(super) async fn start_rpc(
        &mut self,
        to: SocketAddr,
        mut msg: Message,
        reply: Option<oneshot::Sender<Result<Message, ServiceError>>>,
    ) {
        match &msg {
            Message::Unregister { name, .. } => {
                // Leaving: the heartbeat must not register us again, not even one armed by a
                // `register` whose reply is still on its way.
                if self.registration.as_ref().is_some_and(|r| &r.name == name) {
                    self.registration = None;
                }
                self.left.insert(name.clone());
            }
            Message::Register { name, .. } => {
                self.left.remove(name);
            }
            _ => {}
        }
        let id = RequestId(self.take_id());
        set_request_id(&mut msg, id);
        let bytes = msg.encode();
        let sent = self.transport.send_to(to, &bytes).await;
        let Some(reply) = reply else {
            return; // fire and forget (heartbeats)
        };
        if let Err(e) = sent {
            if e.kind() == io::ErrorKind::ConnectionRefused {
                let _ = reply.send(Err(ServiceError::NoAnswer(to)));
                return;
            }
        }
        let wait = self.config.rpc_retry;
        self.rpcs.insert(
            id,
            PendingRpc {
                to,
                bytes,
                sent_at: Instant::now(),
                attempts: 1,
                wait,
                next_at: Instant::now() + wait,
                reply,
            },
        );
    }

    /// The answer of a finished download whose receiver is gone to its sender's late `Data`
    /// (the final ACK again) or `Fin` (FIN-ACK).
    pub(super) fn answer_lingering(&mut self, from: SocketAddr, msg: &Message) -> Option<Message> {
        let transfer = match msg {
            Message::Data { transfer, .. } | Message::Fin { transfer, .. } => *transfer,
            _ => return None,
        };
        let now = Instant::now();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_asked_again_after_four_round_trips_within_bounds() {
        let default = Duration::from_millis(500);
        let ms = Duration::from_millis;
        assert_eq!(request_retry_after(ms(30), default), ms(120));
        assert_eq!(request_retry_after(ms(1), default), MIN_REQUEST_RETRY);
        assert_eq!(request_retry_after(ms(400), default), default);
        // A configured wait shorter than the floor stays as configured.
        assert_eq!(request_retry_after(ms(1), ms(10)), ms(10));
    }

    /// On a clock of its own: nothing here reads the time.
    #[test]
    fn round_trips_are_remembered_for_a_bounded_set_of_recent_peers() {
        let mut rtts = RoundTrips::default();
        let peer = |i: usize| SocketAddr::from(([10, 0, (i / 256) as u8, (i % 256) as u8], 7));
        let ms = Duration::from_millis;
        let sent = Instant::now();
        let mut now = sent + ms(30);
        rtts.record(peer(0), sent, now);
        assert_eq!(rtts.recent(peer(0), now), Some(ms(30)));
        assert_eq!(rtts.recent(peer(1), now), None);
        for i in 1..=MAX_ROUND_TRIPS {
            now += ms(1);
            rtts.record(peer(i), now - ms(2), now);
        }
        assert_eq!(rtts.0.len(), MAX_ROUND_TRIPS);
        assert_eq!(rtts.recent(peer(0), now), None, "the oldest made room");
        assert_eq!(rtts.recent(peer(MAX_ROUND_TRIPS), now), Some(ms(2)));
        now += ROUND_TRIP_FRESH;
        assert_eq!(rtts.recent(peer(MAX_ROUND_TRIPS), now), None, "stale");
    }
}
