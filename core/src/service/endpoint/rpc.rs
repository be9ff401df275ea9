//! Requests this endpoint makes (to the tracker and other peers): the protocol logic (ids,
//! retries, round trips) is [`p2p_proto::endpoint::Endpoint`]'s; here, who waits for each
//! answer.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::driver::Driver;
use super::ServiceError;
use crate::wire::{Message, RequestId};

/// How long a shutdown waits for the senders of finished downloads to see their FIN
/// answered (normally one round trip), so that a `get` that exits at once leaves no sender
/// retrying until its timeout.
pub(super) const LINGER_ON_SHUTDOWN: Duration = Duration::from_secs(1);

/// The callers waiting for answers, by request.
#[derive(Default)]
pub(super) struct Replies(BTreeMap<RequestId, oneshot::Sender<Result<Message, ServiceError>>>);

impl Replies {
    /// `reply` waits for the answer to request `id`.
    pub(super) fn insert(
        &mut self,
        id: RequestId,
        reply: oneshot::Sender<Result<Message, ServiceError>>,
    ) {
        self.0.insert(id, reply);
    }

    /// Request `id` was answered.
    pub(super) fn answer(&mut self, id: RequestId, answer: Message) {
        if let Some(reply) = self.0.remove(&id) {
            let _ = reply.send(Ok(answer));
        }
    }

    /// Request `id` failed.
    pub(super) fn fail(&mut self, id: RequestId, err: ServiceError) {
        if let Some(reply) = self.0.remove(&id) {
            let _ = reply.send(Err(err));
        }
    }

    /// The endpoint is closing: every caller hears so.
    pub(super) fn close(&mut self) {
        for (_, reply) in std::mem::take(&mut self.0) {
            let _ = reply.send(Err(ServiceError::Closed));
        }
    }
}

impl Driver {
    /// Sends request `msg` to `to`; `reply` hears the answer (`None`: fire and forget).
    pub(super) async fn start_rpc(
        &mut self,
        to: SocketAddr,
        msg: Message,
        reply: Option<oneshot::Sender<Result<Message, ServiceError>>>,
    ) {
        let (id, first) = self.proto.request(Instant::now().into_std(), to, msg);
        let sent = self.transport.send_to(to, &first.payload).await;
        let Some(reply) = reply else {
            self.proto.cancel(id); // fire and forget
            return;
        };
        if let Err(e) = sent {
            if e.kind() == io::ErrorKind::ConnectionRefused {
                self.proto.cancel(id);
                let _ = reply.send(Err(ServiceError::NoAnswer(to)));
                return;
            }
        }
        self.replies.0.insert(id, reply);
    }
}
