//! Which messages belong to the peer-to-peer protocol (and must arrive sealed where a peer
//! requires it) and which stay plaintext: the tracker's protocol (its name requests are
//! signed instead), hole-punching probes, and the small answers both sides send.

use crate::wire::Message;

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
