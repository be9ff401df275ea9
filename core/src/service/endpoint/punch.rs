//! Hole punching through the tracker, for a client: the protocol (who sends which probe
//! when, and the limits) is [`p2p_proto::endpoint::punch`]'s; here, the call that waits for
//! it and the driver's part (sending probes, some with a TTL of their own).

use std::net::SocketAddr;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::driver::Driver;
use super::{Command, EndpointHandle, ServiceError};
use crate::wire::{Message, RequestId};

/// What a punch found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Punched {
    /// The peer's probe came from this address: its NAT lets us in; talk to it there.
    Open(SocketAddr),
    /// The tracker knows no live UDP peer of that name.
    NotListed,
}

impl EndpointHandle {
    /// Asks `tracker` to introduce this endpoint to the UDP peer `name` and punches through
    /// both NATs (see [`p2p_proto::endpoint::punch`]): returns where the peer answered from.
    /// [`ServiceError::NoAnswer`] names who stayed silent within
    /// [`PUNCH_WAIT`](p2p_proto::endpoint::punch::PUNCH_WAIT): the tracker (one without
    /// introductions), or the peer's public address (a peer that predates them, a symmetric
    /// NAT, UDP blocked). Send the peer nothing before this returns: a datagram that reaches
    /// its router before its own probe left spoils the punch.
    pub async fn punch(&self, tracker: SocketAddr, name: &str) -> Result<Punched, ServiceError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Punch {
            tracker,
            name: name.to_string(),
            reply,
        })
        .await?;
        match rx.await.map_err(|_| ServiceError::Closed)?? {
            Message::Introduced {
                peer: Some(peer), ..
            } => Ok(Punched::Open(peer)),
            Message::Introduced { peer: None, .. } => Ok(Punched::NotListed),
            _ => Err(ServiceError::Protocol(tracker)),
        }
    }
}

impl EndpointHandle {
    /// Asks `tracker` to relay between this endpoint and the peer `name` (for a peer that
    /// cannot be reached directly or through a punched hole): returns the address to talk
    /// to it at, a virtual one that this endpoint's transport wraps for the relay (see
    /// [`crate::relay`]). The tracker's refusal (no such peer, no relay, relay full) is
    /// [`ServiceError::Refused`] with its reason.
    pub async fn relay(&self, tracker: SocketAddr, name: &str) -> Result<SocketAddr, ServiceError> {
        let ask = Message::RelayOpen {
            request: RequestId(0),
            name: name.to_string(),
        };
        match self.rpc(tracker, ask).await? {
            Message::RelayOpened { session, .. } => Ok(self.relay.open(tracker, session)),
            Message::Error { reason, .. } => Err(ServiceError::Refused(reason)),
            _ => Err(ServiceError::Protocol(tracker)),
        }
    }
}

impl Driver {
    /// Starts a punch; `reply` hears `Introduced { peer }` with where the peer's probe came
    /// from.
    pub(super) async fn start_punch(
        &mut self,
        tracker: SocketAddr,
        name: String,
        reply: oneshot::Sender<Result<Message, ServiceError>>,
    ) {
        let (id, first) = self.proto.punch(Instant::now().into_std(), tracker, &name);
        let _ = self.transport.send_to(tracker, &first.payload).await;
        self.replies.insert(id, reply);
    }

    /// Sends the probes the protocol logic queued.
    pub(super) async fn send_probes(&mut self) {
        while let Some(p) = self.proto.poll_probe() {
            let t = p.transmit;
            let _ = match p.ttl {
                Some(ttl) => self.transport.send_to_ttl(t.to, &t.payload, ttl).await,
                None => self.transport.send_to(t.to, &t.payload).await,
            };
        }
    }
}
