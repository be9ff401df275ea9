//! Which messages belong to the peer-to-peer protocol (and must arrive sealed where a peer
//! requires it) and which stay plaintext: the tracker's protocol (its name requests are
//! signed instead), hole-punching probes, and the small answers both sides send.

use crate::wire::{AbortReason, Message};

/// The reason a peer that takes sealed traffic only gives, in plaintext, to a plaintext
/// request ([`sealed_only_refusal`]): what a client without a secure channel reads instead
/// of silence.
pub const SEALED_ONLY: &str = "sealed sessions only";

/// What a peer that takes sealed traffic only answers a plaintext peer-to-peer request with:
/// an `Error` saying [`SEALED_ONLY`] for a request with an id (also inside a `Validated` or
/// `Initial`), an `Abort` saying it for a transfer `Request`; `None` for anything else
/// (answers, transfer traffic: dropped in silence, never answered, so that two such peers
/// never answer each other). The caller still keeps the answer within three times the
/// request's size and rate-limits it: it goes to an address nobody proved.
pub fn sealed_only_refusal(msg: &Message) -> Option<Message> {
    match msg {
        Message::Validated { body, .. } | Message::Initial { body, .. } => {
            Message::open_validated(body)
                .ok()
                .and_then(|m| sealed_only_refusal(&m))
        }
        Message::Request { transfer, .. } => Some(Message::Abort {
            transfer: *transfer,
            reason: AbortReason::Other(SEALED_ONLY.into()),
        }),
        m if is_peer_message(m) => m.request_id().map(|request| Message::Error {
            request,
            reason: SEALED_ONLY.into(),
        }),
        _ => None,
    }
}

/// Whether `msg` is a peer-to-peer message: a listing, an entry, a piece table, a transfer,
/// which a peer that requires sealed traffic takes only inside a secure session. Tracker
/// requests and answers, `Probe`s and the replies either side sends (`Error`, `Retry`) are
/// not: they stay plaintext (an on-path attacker who forges them can only make a request
/// fail, which dropping it does as well). A `Validated` or `Initial` request, and an
/// `Answer`, are what they carry.
pub fn is_peer_message(msg: &Message) -> bool {
    match msg {
        Message::IndexRequest { .. }
        | Message::IndexPage { .. }
        | Message::PieceRequest { .. }
        | Message::PieceHashes { .. }
        | Message::Request { .. }
        | Message::Accept { .. }
        | Message::Data { .. }
        | Message::Ack { .. }
        | Message::Fin { .. }
        | Message::FinAck { .. }
        | Message::Abort { .. }
        | Message::RetryTransfer { .. }
        | Message::EntryRequest { .. }
        | Message::EntryReply { .. }
        | Message::Queued { .. }
        | Message::EntryByHash { .. }
        | Message::HaveRequest { .. }
        | Message::Have { .. } => true,
        // Undecodable: not taken either way.
        Message::Validated { body, .. } | Message::Initial { body, .. } => {
            Message::open_validated(body).map_or(true, |m| is_peer_message(&m))
        }
        Message::Answer { body, .. } => {
            Message::open_answer(body).map_or(true, |m| is_peer_message(&m))
        }
        Message::Register { .. }
        | Message::Heartbeat { .. }
        | Message::RegisterReply { .. }
        | Message::Unregister { .. }
        | Message::UnregisterReply { .. }
        | Message::ListPeers { .. }
        | Message::PeerList { .. }
        | Message::Error { .. }
        | Message::Retry { .. }
        | Message::Introduce { .. }
        | Message::Introduced { .. }
        | Message::Introduction { .. }
        | Message::Probe { .. }
        | Message::Announce { .. }
        | Message::Announced { .. }
        | Message::WhoHas { .. }
        | Message::Holders { .. }
        | Message::RelayOpen { .. }
        | Message::Signed { .. }
        | Message::RelayOpened { .. }
        | Message::Relayed { .. }
        | Message::Lookup { .. }
        | Message::Found { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{FileId, RequestId, Token, TransferId};

    /// Plaintext requests get a refusal naming [`SEALED_ONLY`], no larger than the request
    /// (so within three times it); answers and transfer traffic get none.
    #[test]
    fn sealed_only_peers_refuse_requests_and_answer_nothing_else() {
        let index = Message::IndexRequest {
            request: RequestId(7),
            page: 0,
        };
        let refusal = Message::Error {
            request: RequestId(7),
            reason: SEALED_ONLY.into(),
        };
        assert_eq!(sealed_only_refusal(&index), Some(refusal.clone()));
        assert_eq!(sealed_only_refusal(&index.initial()), Some(refusal.clone()));
        let validated = index.with_token(Some(Token(5)));
        assert_eq!(sealed_only_refusal(&validated), Some(refusal.clone()));
        let entry = Message::EntryRequest {
            request: RequestId(7),
            file: FileId(1),
        };
        let (e, r) = (entry.encode().len(), refusal.encode().len());
        assert!(r <= 3 * e, "{r} bytes of refusal for {e} of request");
        let req = Message::Request {
            transfer: TransferId(3),
            file: FileId(1),
            offset: 0,
            end: None,
        };
        assert!(matches!(
            sealed_only_refusal(&req),
            Some(Message::Abort { transfer: TransferId(3), reason: AbortReason::Other(r) }) if r == SEALED_ONLY
        ));
        for quiet in [
            refusal,
            Message::Ack {
                transfer: TransferId(3),
                cumulative: 1,
                sack: Default::default(),
                window: 0,
            },
            Message::ListPeers {
                request: RequestId(1),
                page: 0,
            },
        ] {
            assert_eq!(sealed_only_refusal(&quiet), None, "{quiet:?}");
        }
    }

    #[test]
    fn transfers_are_peer_messages_and_tracker_requests_are_not() {
        let req = Message::Request {
            transfer: TransferId(1),
            file: FileId(1),
            offset: 0,
            end: None,
        };
        assert!(is_peer_message(&req));
        assert!(is_peer_message(&req.with_token(Some(Token(5)))));
        let list = Message::ListPeers {
            request: RequestId(1),
            page: 0,
        };
        assert!(!is_peer_message(&list));
        assert!(!is_peer_message(&list.with_token(Some(Token(5)))));
        assert!(!is_peer_message(&Message::Probe { nonce: 3 }));
        // Wrapped first requests and their answers are what they carry.
        let index = Message::IndexRequest {
            request: RequestId(2),
            page: 0,
        };
        assert!(is_peer_message(&index.initial()));
        assert!(!is_peer_message(&list.initial()));
        let page = Message::IndexPage {
            request: RequestId(2),
            page: 0,
            pages: 1,
            share: "shared".into(),
            entries: crate::wire::BoundedVec(vec![]),
        };
        let answer = page.answer_initial(Token(9), 420).expect("fits");
        assert!(is_peer_message(&answer));
        let lookup = Message::Lookup {
            request: RequestId(3),
            name: "alice".into(),
        };
        assert!(!is_peer_message(&lookup));
        assert!(!is_peer_message(&lookup.initial()));
    }
}
