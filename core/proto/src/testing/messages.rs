//! Messages for tests and seed corpora: [`seal`] puts any body in a valid envelope, and
//! [`sample_messages`] gives one message of every variant.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::wire::{
    AbortReason, BoundedVec, ContentHash, FileId, Message, RequestId, TransferId, TransportKind,
    HEADER_LEN, MAGIC, PROTOCOL_VERSION,
};

/// Wraps a message body in a valid envelope (magic, version, CRC-32 of `body`), so that
/// mutated bodies get past the checksum and reach the body decoder.
pub fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.push(PROTOCOL_VERSION);
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// One message of every variant (with every `AbortReason` and `RegisterOutcome`), for seed
/// corpora and tests.
pub fn sample_messages() -> Vec<Message> {
    let transfer = TransferId(3);
    let request = RequestId(11);
    let hash = ContentHash::of(b"hello");
    let peer = crate::wire::PeerInfo {
        name: "alice".into(),
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 9001),
        transport: TransportKind::Udp,
    };
    let peer6 = crate::wire::PeerInfo {
        name: "bob".into(),
        addr: "[2001:db8::1]:9002".parse().expect("valid address"),
        transport: TransportKind::Tcp,
    };
    let entry = crate::wire::IndexEntry {
        id: FileId(1),
        path: "docs/file1.txt".into(),
        size: 1234,
        hash,
    };
    let mut out = vec![
        Message::Register {
            request,
            name: "alice".into(),
            port: 9001,
            transport: TransportKind::Udp,
        },
        Message::Heartbeat {
            request,
            name: "alice".into(),
            port: 9001,
            transport: TransportKind::Tcp,
        },
        Message::RegisterReply {
            request,
            outcome: crate::wire::RegisterOutcome::Accepted {
                ttl_ms: 30_000,
                heartbeat_ms: 10_000,
                held: None,
            },
        },
        Message::RegisterReply {
            request,
            outcome: crate::wire::RegisterOutcome::Refused {
                reason: "name taken".into(),
            },
        },
        Message::Unregister {
            request,
            name: "alice".into(),
        },
        Message::UnregisterReply { request },
        Message::ListPeers { request, page: 0 },
        Message::PeerList {
            request,
            page: 0,
            pages: 1,
            peers: BoundedVec(vec![peer.clone(), peer6]),
        },
        Message::IndexRequest { request, page: 0 },
        Message::IndexPage {
            request,
            page: 0,
            pages: 2,
            share: "shared".into(),
            entries: BoundedVec(vec![entry.clone()]),
        },
        Message::Error {
            request,
            reason: "no such page".into(),
        },
        Message::PieceRequest {
            request,
            file: FileId(1),
            hash,
            first: 0,
        },
        Message::PieceHashes {
            request,
            piece_size: crate::wire::PIECE_SIZE,
            pieces: 3,
            first: 1,
            hashes: BoundedVec(vec![hash, ContentHash([7; 32])]),
        },
        Message::Request {
            transfer,
            file: FileId(1),
            offset: 0,
            end: None,
        },
        Message::Request {
            transfer,
            file: FileId(1),
            offset: u64::from(crate::wire::PIECE_SIZE),
            end: None,
        },
        Message::Accept {
            transfer,
            size: 5,
            chunk_size: 1024,
            hash,
        },
        Message::Data {
            transfer,
            seq: 0,
            payload: bytes::Bytes::from_static(b"hello"),
        },
        Message::Ack {
            transfer,
            cumulative: 1,
            sack: BoundedVec(vec![(3, 5), (7, 8)]),
            window: 64,
        },
        Message::Fin {
            transfer,
            size: 5,
            hash,
        },
        Message::FinAck { transfer },
        Message::Retry {
            request,
            token: crate::wire::Token(7),
        },
        Message::RetryTransfer {
            transfer,
            token: crate::wire::Token(7),
        },
        Message::EntryRequest {
            request,
            file: FileId(1),
        },
        Message::EntryReply {
            request,
            entry: None,
            partial: false,
        },
        Message::Request {
            transfer,
            file: FileId(1),
            offset: 0,
            end: None,
        }
        .with_token(Some(crate::wire::Token(7))),
        Message::Introduce {
            request,
            name: "bob".into(),
        }
        .with_token(Some(crate::wire::Token(7))),
        Message::Introduced {
            request,
            peer: Some("203.0.113.2:40000".parse().expect("an address")),
        },
        Message::Introduced {
            request,
            peer: None,
        },
        Message::Introduction {
            nonce: 7,
            peer: "[2001:db8::1]:5555".parse().expect("an address"),
        },
        Message::Probe { nonce: 7 },
        Message::Queued {
            transfer: TransferId(8),
            ahead: 41,
        },
        Message::Request {
            transfer,
            file: FileId(1),
            offset: u64::from(crate::wire::PIECE_SIZE),
            end: Some(3 * u64::from(crate::wire::PIECE_SIZE)),
        },
        Message::Announce {
            request,
            name: "alice".into(),
            first: true,
            hashes: BoundedVec(vec![hash, ContentHash([9; 32])]),
        }
        .with_token(Some(crate::wire::Token(7))),
        Message::Announced {
            request,
            held: 2,
            limit: 20_000,
        },
        Message::WhoHas {
            request,
            hash,
            page: 0,
        },
        Message::Holders {
            request,
            hash,
            page: 0,
            pages: 1,
            peers: BoundedVec(vec![peer.clone()]),
        },
        Message::EntryByHash { request, hash },
        Message::HaveRequest {
            request,
            hash,
            first: 8,
        },
        Message::Have {
            request,
            hash,
            pieces: 20,
            first: 8,
            bits: vec![0b1010_0101, 0b0000_1111],
        },
        Message::RelayOpen {
            request,
            name: "bob".into(),
        },
        Message::RelayOpened {
            request,
            session: 0x5eed_0f5e_5511_0011,
        },
        crate::identity::Identity::from_secret([9; 32]).sign(
            Some(crate::wire::Token(77)),
            &Message::Unregister {
                request,
                name: "alice".into(),
            },
        ),
        Message::Lookup {
            request,
            name: "alice".into(),
        },
        Message::Found {
            request,
            peer: Some(peer.clone()),
            key: Some(vec![7; 32]),
        },
        Message::Found {
            request,
            peer: None,
            key: None,
        },
        Message::EntryRequest {
            request,
            file: FileId(1),
        }
        .initial(),
        Message::Answer {
            token: crate::wire::Token(77),
            body: rmp_serde::to_vec(&Message::EntryReply {
                request,
                entry: Some(entry.clone()),
                partial: false,
            })
            .expect("encodes"),
        },
        Message::Relayed {
            session: 0x5eed_0f5e_5511_0011,
            payload: bytes::Bytes::from(Message::EntryByHash { request, hash }.encode()),
        },
    ];
    out.extend((0..8).map(|b| Message::Abort {
        transfer,
        reason: abort_reason(b),
    }));
    out
}

/// The abort reason `b` picks: every variant, by `b % 9`.
pub(crate) fn abort_reason(b: u8) -> AbortReason {
    match b % 9 {
        0 => AbortReason::NoSuchFile,
        1 => AbortReason::Busy,
        2 => AbortReason::BadRequest,
        3 => AbortReason::FileChanged,
        4 => AbortReason::Timeout,
        5 => AbortReason::HashMismatch,
        6 => AbortReason::Shutdown,
        7 => AbortReason::DiskError,
        _ => AbortReason::Other("fuzz".into()),
    }
}
