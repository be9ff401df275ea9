//! The endpoint on a clock of its own: every time is an argument.

use super::*;
use crate::wire::{decode, BoundedVec, ContentHash, FileId};

fn addr(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, last], port))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn list_peers() -> Message {
    Message::ListPeers {
        request: RequestId(0),
        page: 0,
    }
}

fn peer_list(request: RequestId) -> Message {
    Message::PeerList {
        request,
        page: 0,
        pages: 1,
        peers: BoundedVec(Vec::new()),
    }
}

impl Endpoint {
    /// [`Endpoint::handle`] of `msg` sent with a valid token for `from`.
    fn handle_proven(&mut self, now: Instant, from: SocketAddr, msg: Message) -> Option<Incoming> {
        let token = self.validator.issue(now, from.ip());
        self.handle(now, from, msg.with_token(Some(token)))
    }
}

fn decoded(t: &Transmit) -> Message {
    decode(&t.payload).expect("the endpoint sends well-formed messages")
}

fn data(transfer: TransferId) -> Message {
    Message::Data {
        transfer,
        seq: 3,
        payload: bytes::Bytes::from_static(b"chunk"),
    }
}

fn fin(transfer: TransferId) -> Message {
    Message::Fin {
        transfer,
        size: 5,
        hash: ContentHash::of(b"chunk"),
    }
}

fn final_ack(transfer: TransferId) -> Message {
    Message::Ack {
        transfer,
        cumulative: 4,
        sack: BoundedVec(Vec::new()),
        window: 0,
    }
}

#[test]
fn a_request_is_sent_again_with_doubling_waits_then_fails() {
    let config = EndpointConfig::default();
    let mut ep = Endpoint::new(config.clone(), 7);
    let (to, t0) = (addr(1, 9000), Instant::now());
    let (id, first) = ep.request(t0, to, list_peers());
    assert_eq!(first.to, to);
    // No token from `to` yet: padded, to be answered at once.
    match decoded(&first) {
        Message::Initial { body, pad } => match Message::open_initial(&body, &pad) {
            Ok((Message::ListPeers { request, .. }, size)) => {
                assert_eq!(request, id);
                assert!(size >= crate::wire::INITIAL_SIZE, "{size}");
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    let mut now = t0;
    let mut wait = config.rpc_retry;
    for attempt in 2..=config.rpc_attempts {
        assert_eq!(ep.poll_timeout(), Some(now + wait), "attempt {attempt}");
        now += wait;
        ep.handle_timeout(now);
        let again = ep.poll_transmit().expect("sent again");
        // Later attempts as a server older than `Initial` expects.
        assert!(
            matches!(decoded(&again), Message::ListPeers { request, .. } if request == id),
            "the same request, same id"
        );
        assert!(ep.poll_transmit().is_none());
        wait = (wait * 2).min(MAX_RPC_WAIT);
    }
    // Just before the last wait ends nothing happens; at its end, the request fails.
    ep.handle_timeout(now + wait - ms(1));
    assert!(ep.poll_event().is_none() && ep.poll_transmit().is_none());
    ep.handle_timeout(now + wait);
    assert_eq!(ep.poll_event(), Some(Event::NoAnswer { request: id, to }));
    assert!(ep.poll_transmit().is_none());
    assert_eq!(ep.poll_timeout(), None);
    // A late answer is not taken for anything.
    assert!(ep.handle(now + wait, to, peer_list(id)).is_none());
}

#[test]
fn an_answer_counts_only_from_the_address_asked_and_only_first_sends_measure_round_trips() {
    let mut ep = Endpoint::new(EndpointConfig::default(), 0);
    let (to, t0) = (addr(1, 9000), Instant::now());
    let (id, _) = ep.request(t0, to, list_peers());
    // Spoofed from elsewhere: dropped, the request still pending.
    assert!(ep
        .handle(t0 + ms(5), addr(66, 9000), peer_list(id))
        .is_none());
    assert!(ep.poll_timeout().is_some());
    match ep.handle(t0 + ms(30), to, peer_list(id)) {
        Some(Incoming::Answer { request, .. }) => assert_eq!(request, id),
        other => panic!("{other:?}"),
    }
    assert_eq!(ep.round_trip(to, t0 + ms(30)), Some(ms(30)));
    // Answered after a resend (Karn): no sample, the old one stays.
    let (id2, _) = ep.request(t0 + ms(100), to, list_peers());
    ep.handle_timeout(t0 + ms(100) + EndpointConfig::default().rpc_retry);
    assert!(ep.poll_transmit().is_some());
    let late = t0 + ms(900);
    assert!(matches!(
        ep.handle(late, to, peer_list(id2)),
        Some(Incoming::Answer { .. })
    ));
    assert_eq!(ep.round_trip(to, late), Some(ms(30)));
    // And it goes stale.
    assert_eq!(ep.round_trip(to, t0 + ms(30) + ROUND_TRIP_FRESH), None);
}

#[test]
fn round_trips_are_remembered_for_a_bounded_set_of_recent_peers() {
    let mut ep = Endpoint::new(EndpointConfig::default(), 0);
    let t0 = Instant::now();
    let mut now = t0;
    for i in 0..=MAX_ROUND_TRIPS {
        now += ms(1);
        let peer = SocketAddr::from(([10, 1, (i / 256) as u8, (i % 256) as u8], 7));
        ep.record_round_trip(peer, now - ms(2), now);
    }
    assert_eq!(ep.round_trips.len(), MAX_ROUND_TRIPS);
    let first = SocketAddr::from(([10, 1, 0, 0], 7));
    assert_eq!(ep.round_trip(first, now), None, "the oldest made room");
}

#[test]
fn transfer_messages_reach_a_download_only_from_its_sender() {
    let mut ep = Endpoint::new(EndpointConfig::default(), 0);
    let (sender, now) = (addr(2, 10001), Instant::now());
    let transfer = ep.new_transfer_id();
    ep.download_started(transfer, sender);
    assert!(matches!(
        ep.handle(now, sender, data(transfer)),
        Some(Incoming::Download { transfer: t, msg: Message::Data { .. } }) if t == transfer
    ));
    // The same transfer id from another address, or another id: dropped, nothing answered.
    assert!(ep.handle(now, addr(3, 10001), data(transfer)).is_none());
    assert!(ep.handle(now, sender, data(TransferId(999))).is_none());
    let abort = Message::Abort {
        transfer,
        reason: AbortReason::Busy,
    };
    assert!(ep.handle(now, addr(3, 10001), abort.clone()).is_none());
    assert!(matches!(
        ep.handle(now, sender, abort),
        Some(Incoming::Download { .. })
    ));
    assert!(ep.poll_transmit().is_none());
}

#[test]
fn a_finished_download_answers_its_senders_late_chunks_and_fin_for_a_while() {
    let mut ep = Endpoint::new(EndpointConfig::default(), 0);
    let (sender, t0) = (addr(2, 10001), Instant::now());
    let transfer = ep.new_transfer_id();
    ep.download_started(transfer, sender);
    ep.download_ended(t0, transfer, Some(final_ack(transfer)));
    assert!(ep.owes_fin_ack(t0));
    // A chunk again (the final ACK was lost): the final ACK again.
    assert!(ep.handle(t0 + ms(10), sender, data(transfer)).is_none());
    let t = ep.poll_transmit().expect("answered");
    assert_eq!((t.to, decoded(&t)), (sender, final_ack(transfer)));
    // Not to anyone else.
    assert!(ep
        .handle(t0 + ms(10), addr(9, 10001), fin(transfer))
        .is_none());
    assert!(ep.poll_transmit().is_none());
    // Its FIN: FIN-ACK, and nothing is owed any more.
    assert!(ep.handle(t0 + ms(20), sender, fin(transfer)).is_none());
    let t = ep.poll_transmit().expect("answered");
    assert_eq!(decoded(&t), Message::FinAck { transfer });
    assert!(!ep.owes_fin_ack(t0 + ms(20)));
    // After LINGER, forgotten.
    assert!(ep.handle(t0 + LINGER, sender, fin(transfer)).is_none());
    assert!(ep.poll_transmit().is_none());
    // A failed download (no final ACK) owes nothing.
    let failed = ep.new_transfer_id();
    ep.download_started(failed, sender);
    ep.download_ended(t0, failed, None);
    assert!(ep.handle(t0, sender, fin(failed)).is_none());
    assert!(ep.poll_transmit().is_none());
}

#[test]
fn lingering_downloads_are_bounded() {
    let mut ep = Endpoint::new(EndpointConfig::default(), 0);
    let (sender, now) = (addr(2, 10001), Instant::now());
    let first = ep.new_transfer_id();
    ep.download_started(first, sender);
    ep.download_ended(now, first, Some(final_ack(first)));
    for _ in 0..MAX_LINGERING {
        let t = ep.new_transfer_id();
        ep.download_started(t, sender);
        ep.download_ended(now, t, Some(final_ack(t)));
    }
    assert_eq!(ep.lingering.len(), MAX_LINGERING);
    assert!(ep.handle(now, sender, fin(first)).is_none());
    assert!(ep.poll_transmit().is_none(), "the oldest was forgotten");
}

/// Every transmit waiting, decoded.
fn sent(ep: &mut Endpoint) -> Vec<(SocketAddr, Message)> {
    std::iter::from_fn(|| ep.poll_transmit())
        .map(|t| (t.to, decoded(&t)))
        .collect()
}

/// The transfers admitted from the line since last asked, in order.
fn admitted(ep: &mut Endpoint) -> Vec<u64> {
    std::iter::from_fn(|| ep.poll_event())
        .filter_map(|e| match e {
            Event::Admitted { transfer, .. } => Some(transfer.0),
            _ => None,
        })
        .collect()
}

/// Uploads run up to the per-IP and total caps; past them a `Request` waits in line
/// (`Queued`, with the number ahead of it) and is admitted in turn as slots free, an
/// address at its cap letting the next in line pass.
#[test]
fn uploads_are_admitted_up_to_the_caps_and_the_rest_wait_in_line() {
    let config = EndpointConfig {
        max_uploads: 3,
        max_uploads_per_peer: 2,
        ..EndpointConfig::default()
    };
    let mut ep = Endpoint::new(config, 0);
    let now = Instant::now();
    let request = |t: u64| Message::Request {
        transfer: TransferId(t),
        file: FileId(1),
        offset: 0,
        end: None,
    };
    let a = addr(2, 10001);
    for t in 1..=2 {
        match ep.handle_proven(now, a, request(t)) {
            Some(Incoming::NewUpload { from, transfer, .. }) => {
                ep.upload_started(now, from, transfer);
            }
            other => panic!("{other:?}"),
        }
    }
    // A third from the same IP (another port): in line.
    assert!(ep.handle_proven(now, addr(2, 10002), request(3)).is_none());
    assert_eq!(
        sent(&mut ep),
        [(
            addr(2, 10002),
            Message::Queued {
                transfer: TransferId(3),
                ahead: 0
            }
        )]
    );
    // Another IP queues behind it, and passes it: its own address has room.
    assert!(ep.handle_proven(now, addr(3, 1), request(4)).is_none());
    assert!(matches!(
        &sent(&mut ep)[..],
        [(_, Message::Queued { ahead: 1, .. })]
    ));
    assert_eq!(admitted(&mut ep), [4]);
    // Every slot taken: the next waits, and asking again keeps its place.
    assert!(ep.handle_proven(now, addr(4, 1), request(5)).is_none());
    assert!(ep.handle_proven(now, addr(4, 1), request(5)).is_none());
    assert!(matches!(
        &sent(&mut ep)[..],
        [
            (_, Message::Queued { ahead: 1, .. }),
            (_, Message::Queued { ahead: 1, .. })
        ]
    ));
    assert!(admitted(&mut ep).is_empty());
    // A Request again for an upload in progress (its Accept was lost) goes to it, and its
    // ACKs too; an ACK for nothing is dropped.
    assert!(matches!(
        ep.handle_proven(now, a, request(1)),
        Some(Incoming::Upload { .. })
    ));
    assert!(matches!(
        ep.handle_proven(now, a, final_ack(TransferId(1))),
        Some(Incoming::Upload { .. })
    ));
    assert!(ep
        .handle_proven(now, addr(9, 1), final_ack(TransferId(1)))
        .is_none());
    // Once one ends, the first in line gets its slot.
    ep.upload_ended(a, TransferId(1));
    ep.admit_waiting(now);
    assert_eq!(admitted(&mut ep), [3]);
    ep.upload_ended(addr(3, 1), TransferId(4));
    ep.admit_waiting(now);
    assert_eq!(admitted(&mut ep), [5]);
}

/// The line is bounded (per IP, then `Busy`) and forgets a request not repeated within
/// WAITING_STALE (its receiver went away, or never existed).
#[test]
fn the_line_is_bounded_and_forgets_who_stops_asking() {
    use super::queue::{MAX_WAITING_PER_IP, WAITING_STALE};
    let config = EndpointConfig {
        max_uploads: 1,
        max_uploads_per_peer: 1,
        ..EndpointConfig::default()
    };
    let mut ep = Endpoint::new(config, 0);
    let now = Instant::now();
    ep.upload_started(now, addr(2, 1), TransferId(1));
    let from = addr(3, 1);
    for t in 0..MAX_WAITING_PER_IP as u64 + 1 {
        assert!(ep.handle_proven(now, from, request(100 + t)).is_none());
    }
    let replies = sent(&mut ep);
    assert_eq!(replies.len(), MAX_WAITING_PER_IP + 1);
    assert!(matches!(
        replies.last(),
        Some((
            _,
            Message::Abort {
                reason: AbortReason::Busy,
                ..
            }
        ))
    ));
    // Nobody asks again: after WAITING_STALE the line is empty, and a slot that frees goes
    // to a newcomer at once.
    let later = now + WAITING_STALE;
    ep.upload_ended(addr(2, 1), TransferId(1));
    assert!(matches!(
        ep.handle_proven(later, addr(4, 1), request(9)),
        Some(Incoming::NewUpload { .. })
    ));
    assert!(admitted(&mut ep).is_empty());
}

#[test]
fn requests_for_our_share_are_rate_limited_per_ip() {
    let config = EndpointConfig {
        rate: RateConfig {
            per_second: 10.0,
            burst: 5.0,
            max_sources: 16,
        },
        ..EndpointConfig::default()
    };
    let mut ep = Endpoint::new(config, 0);
    let now = Instant::now();
    let index = |page| Message::IndexRequest {
        request: RequestId(1),
        page,
    };
    let served = (0..50)
        .filter(|_| ep.handle_proven(now, addr(5, 1), index(0)).is_some())
        .count();
    assert!(
        (5..=6).contains(&served),
        "{served} of a burst of 50 served"
    );
    // Another IP is not held back by the first one's flood.
    assert!(ep.handle_proven(now, addr(6, 1), index(0)).is_some());
    // The first one gets its rate back with time.
    assert!(ep
        .handle_proven(now + Duration::from_secs(1), addr(5, 1), index(0))
        .is_some());
}

/// A listing costs about one request of the rate limit: its next pages cost a 64th.
#[test]
fn a_whole_listing_costs_about_one_request() {
    let config = EndpointConfig {
        rate: RateConfig {
            per_second: 1.0,
            burst: 2.0,
            max_sources: 16,
        },
        ..EndpointConfig::default()
    };
    let mut ep = Endpoint::new(config, 0);
    let now = Instant::now();
    let from = addr(5, 1);
    let page = |page| Message::IndexRequest {
        request: RequestId(1),
        page,
    };
    assert!(ep.handle_proven(now, from, page(0)).is_some());
    let next = (1..=80)
        .filter(|&p| ep.handle_proven(now, from, page(p)).is_some())
        .count();
    assert_eq!(next, 64, "64 more pages for the price of one, then none");
}

/// A request without proof of its address gets a `Retry` at most 3 times its size, and takes
/// no slot; sent again with the token, it is served. A token for another IP proves nothing.
#[test]
fn requests_without_a_token_get_a_small_retry_and_nothing_else() {
    let mut ep = Endpoint::new(EndpointConfig::default(), 0);
    let now = Instant::now();
    let from = addr(7, 1);
    let asks = [
        Message::IndexRequest {
            request: RequestId(1),
            page: 0,
        },
        Message::PieceRequest {
            request: RequestId(2),
            file: FileId(1),
            hash: ContentHash::of(b"x"),
            first: 0,
        },
        request(3),
    ];
    for ask in asks {
        assert!(ep.handle(now, from, ask.clone()).is_none(), "{ask:?}");
        let retry = ep.poll_transmit().expect("a retry");
        let (got, sent) = (retry.payload.len(), ask.encode().len());
        assert!(got <= 3 * sent, "{ask:?}: {got} bytes for {sent}");
        let token = match decoded(&retry) {
            Message::Retry { token, .. } | Message::RetryTransfer { token, .. } => token,
            other => panic!("{other:?}"),
        };
        assert!(ep.uploads.is_empty(), "no slot taken");
        assert!(ep
            .handle(now, addr(8, 1), ask.with_token(Some(token)))
            .is_none());
        assert!(matches!(
            decoded(&ep.poll_transmit().expect("a retry")),
            Message::Retry { .. } | Message::RetryTransfer { .. }
        ));
        assert!(
            ep.handle(now, from, ask.with_token(Some(token))).is_some(),
            "{ask:?}"
        );
    }
}

/// Our own requests follow a `Retry`: sent again at once with the token, which later
/// requests to that IP carry from the start; a `Retry` from anyone else is ignored.
#[test]
fn a_retry_is_followed_with_the_token() {
    let mut ep = Endpoint::new(EndpointConfig::default(), 0);
    let now = Instant::now();
    let tracker = addr(1, 9000);
    let (id, first) = ep.request(now, tracker, list_peers());
    assert!(matches!(decoded(&first), Message::Initial { .. }));
    let token = crate::wire::Token(42);
    let retry = Message::Retry { request: id, token };
    assert!(ep.handle(now, addr(66, 9000), retry.clone()).is_none());
    assert!(
        ep.poll_transmit().is_none(),
        "not from the tracker: ignored"
    );
    assert!(ep.handle(now, tracker, retry).is_none());
    let again = ep.poll_transmit().expect("sent again");
    match decoded(&again) {
        Message::Validated { token: t, body } => {
            assert_eq!(t, token);
            assert!(matches!(
                Message::open_validated(&body),
                Ok(Message::ListPeers { .. })
            ));
        }
        other => panic!("{other:?}"),
    }
    let (_, next) = ep.request(now, tracker, list_peers());
    assert!(matches!(decoded(&next), Message::Validated { .. }));
    // At most MAX_RETRIES per request.
    for _ in 0..MAX_RETRIES + 2 {
        ep.handle(now, tracker, Message::Retry { request: id, token });
    }
    let mut resent = 0;
    while ep.poll_transmit().is_some() {
        resent += 1;
    }
    assert_eq!(resent as u32, MAX_RETRIES - 1);
}

#[test]
fn the_heartbeat_runs_every_period_until_unregistered() {
    let mut ep = Endpoint::new(EndpointConfig::default(), 0);
    let (tracker, t0) = (addr(1, 9000), Instant::now());
    let every = Duration::from_secs(10);
    ep.keep_registered(
        t0,
        tracker,
        "alice".into(),
        10001,
        TransportKind::Udp,
        every,
    );
    assert_eq!(ep.poll_timeout(), Some(t0 + every));
    ep.handle_timeout(t0 + every);
    let t = ep.poll_transmit().expect("heartbeat");
    assert_eq!(t.to, tracker);
    assert!(matches!(decoded(&t), Message::Heartbeat { name, port: 10001, .. } if name == "alice"));
    assert_eq!(ep.poll_timeout(), Some(t0 + every * 2));
    // A refused heartbeat is reported: the answer to the heartbeat just sent, from the
    // tracker, once; forged refusals (another address, another id) are ignored silently.
    let Message::Heartbeat { request: sent, .. } = decoded(&t) else {
        unreachable!()
    };
    let refused = |request| Message::RegisterReply {
        request,
        outcome: RegisterOutcome::Refused {
            reason: "no".into(),
        },
    };
    assert!(ep.handle(t0, addr(7, 9000), refused(sent)).is_none());
    assert!(ep
        .handle(t0, tracker, refused(RequestId(sent.0 ^ 1)))
        .is_none());
    assert!(ep.poll_event().is_none());
    assert!(ep.handle(t0, tracker, refused(sent)).is_none());
    assert!(matches!(
        ep.poll_event(),
        Some(Event::HeartbeatRefused { .. })
    ));
    assert!(ep.handle(t0, tracker, refused(sent)).is_none());
    assert!(ep.poll_event().is_none(), "reported once");
    // Unregistering stops it, and a registration confirmed late does not restart it.
    let bye = Message::Unregister {
        request: RequestId(0),
        name: "alice".into(),
    };
    let (id, _) = ep.request(t0 + every, tracker, bye);
    ep.cancel(id);
    assert_eq!(ep.poll_timeout(), None);
    ep.keep_registered(
        t0 + every,
        tracker,
        "alice".into(),
        10001,
        TransportKind::Udp,
        every,
    );
    assert_eq!(ep.poll_timeout(), None);
}

#[test]
fn a_requests_first_wait_is_four_round_trips_within_bounds() {
    let default = ms(500);
    assert_eq!(request_retry_after(ms(30), default), ms(120));
    assert_eq!(request_retry_after(ms(1), default), MIN_REQUEST_RETRY);
    assert_eq!(request_retry_after(ms(400), default), default);
    // A configured wait shorter than the floor stays as configured.
    assert_eq!(request_retry_after(ms(1), ms(10)), ms(10));
}

#[test]
fn ids_are_unpredictable_per_purpose_and_replay_from_their_seed() {
    let mut a = Endpoint::new(EndpointConfig::default(), 42);
    let mut b = Endpoint::new(EndpointConfig::default(), 42);
    let mut c = Endpoint::new(EndpointConfig::default(), 43);
    let (to, now) = (addr(1, 9000), Instant::now());
    let ta: Vec<TransferId> = (0..4).map(|_| a.new_transfer_id()).collect();
    let tb: Vec<TransferId> = (0..4).map(|_| b.new_transfer_id()).collect();
    let tc: Vec<TransferId> = (0..4).map(|_| c.new_transfer_id()).collect();
    assert_eq!(ta, tb, "the same seed replays");
    assert!(
        ta.iter().all(|t| !tc.contains(t)),
        "another seed, other ids"
    );
    // Not a sequence: no two consecutive ids differ by a small step.
    assert!(
        ta.windows(2).all(|w| w[1].0.abs_diff(w[0].0) > 1 << 32),
        "{ta:?}"
    );
    // A request id made next says nothing of the transfer ids.
    let (r, _) = a.request(now, to, list_peers());
    assert!(
        ta.iter().all(|t| t.0.abs_diff(r.0) > 1 << 32),
        "{r:?} {ta:?}"
    );
}

fn request(t: u64) -> Message {
    Message::Request {
        transfer: TransferId(t),
        file: FileId(1),
        offset: 0,
        end: None,
    }
}

/// Forged `Request`s (their "receivers" never acknowledge) cannot keep every slot: past
/// UNPROVEN_GRACE the oldest unproven upload gives its slot to a new request; an upload whose
/// receiver acknowledged is never evicted.
#[test]
fn uploads_that_nobody_acknowledges_give_their_slots_to_new_requests() {
    let config = EndpointConfig {
        max_uploads: 2,
        max_uploads_per_peer: 2,
        ..EndpointConfig::default()
    };
    let mut ep = Endpoint::new(config, 0);
    let t0 = Instant::now();
    let (real, forged) = (addr(2, 1), addr(66, 1));
    for (t, from) in [(1, real), (2, forged)] {
        assert!(matches!(
            ep.handle_proven(t0, from, request(t)),
            Some(Incoming::NewUpload { .. })
        ));
        ep.upload_started(t0, from, TransferId(t));
    }
    // The real receiver acknowledges; the forged one never does.
    assert!(matches!(
        ep.handle_proven(t0 + ms(20), real, final_ack(TransferId(1))),
        Some(Incoming::Upload { .. })
    ));
    // Within the grace, a new request waits in line.
    let newcomer = addr(3, 1);
    assert!(ep
        .handle_proven(t0 + ms(500), newcomer, request(3))
        .is_none());
    assert!(matches!(&sent(&mut ep)[..], [(_, Message::Queued { .. })]));
    assert!(ep.poll_event().is_none());
    // Past it (the newcomer asking again), the forged upload's slot goes to the newcomer.
    let later = t0 + UNPROVEN_GRACE;
    assert!(ep.handle_proven(later, newcomer, request(3)).is_none());
    assert_eq!(
        ep.poll_event(),
        Some(Event::Evicted {
            to: forged,
            transfer: TransferId(2)
        })
    );
    assert_eq!(admitted(&mut ep), [3]);
    // Now both slots hold uploads: one proven, one young: the next waits, and nothing is
    // evicted for it.
    sent(&mut ep);
    assert!(ep
        .handle_proven(later + ms(10), addr(4, 1), request(5))
        .is_none());
    assert!(matches!(&sent(&mut ep)[..], [(_, Message::Queued { .. })]));
    assert!(
        ep.poll_event().is_none(),
        "a proven upload is never evicted"
    );
}

/// With one IP at its cap, only an unproven upload of that IP makes room for it.
#[test]
fn the_per_ip_cap_evicts_only_that_ips_unproven_uploads() {
    let config = EndpointConfig {
        max_uploads: 10,
        max_uploads_per_peer: 1,
        ..EndpointConfig::default()
    };
    let mut ep = Endpoint::new(config, 0);
    let t0 = Instant::now();
    let (a, b) = (addr(2, 1), addr(3, 1));
    ep.upload_started(t0, a, TransferId(1));
    ep.upload_started(t0, b, TransferId(2));
    let later = t0 + UNPROVEN_GRACE;
    assert!(matches!(
        ep.handle_proven(later, addr(2, 2), request(3)),
        Some(Incoming::NewUpload { .. })
    ));
    assert_eq!(
        ep.poll_event(),
        Some(Event::Evicted {
            to: a,
            transfer: TransferId(1)
        })
    );
    assert!(ep.poll_event().is_none(), "b's upload kept");
}

/// On a transport that proves addresses itself (TCP), requests need no token.
#[test]
fn a_stream_transport_needs_no_token() {
    let config = EndpointConfig {
        addresses_proven: true,
        ..EndpointConfig::default()
    };
    let mut ep = Endpoint::new(config, 0);
    let ask = Message::IndexRequest {
        request: RequestId(1),
        page: 0,
    };
    assert!(matches!(
        ep.handle(Instant::now(), addr(7, 1), ask),
        Some(Incoming::IndexRequest { .. })
    ));
}

/// An entry request is served once its sender proved its address, and its answer goes to the
/// request that asked.
#[test]
fn entry_requests_are_validated_and_routed() {
    let mut ep = Endpoint::new(EndpointConfig::default(), 0);
    let now = Instant::now();
    let from = addr(7, 1);
    let ask = Message::EntryRequest {
        request: RequestId(5),
        file: FileId(3),
    };
    assert!(ep.handle(now, from, ask.clone()).is_none());
    assert!(matches!(
        decoded(&ep.poll_transmit().unwrap()),
        Message::Retry { .. }
    ));
    assert!(matches!(
        ep.handle_proven(now, from, ask),
        Some(Incoming::EntryRequest {
            file: FileId(3),
            ..
        })
    ));
    let peer = addr(8, 1);
    let (id, _) = ep.request(
        now,
        peer,
        Message::EntryRequest {
            request: RequestId(0),
            file: FileId(1),
        },
    );
    let reply = Message::EntryReply {
        request: id,
        entry: None,
        partial: false,
    };
    assert!(matches!(
        ep.handle(now, peer, reply),
        Some(Incoming::Answer { request, .. }) if request == id
    ));
}

/// A lookup by content is served, like one by ID, once its sender proved its address.
#[test]
fn entry_by_hash_is_validated_and_routed() {
    let mut ep = Endpoint::new(EndpointConfig::default(), 0);
    let now = Instant::now();
    let from = addr(7, 2);
    let hash = crate::wire::ContentHash::of(b"content");
    let ask = Message::EntryByHash {
        request: RequestId(6),
        hash,
    };
    assert!(ep.handle(now, from, ask.clone()).is_none());
    assert!(matches!(
        decoded(&ep.poll_transmit().unwrap()),
        Message::Retry { .. }
    ));
    assert!(matches!(
        ep.handle_proven(now, from, ask),
        Some(Incoming::EntryByHash { hash: h, .. }) if h == hash
    ));
}

/// What a sans-IO tracker and endpoint said to each other.
#[derive(Default)]
struct Exchanged {
    /// The `Announce` batches the tracker got (opened): `(first, hashes)`.
    batches: Vec<(bool, usize)>,
    /// What came back to the driver.
    incoming: Vec<Incoming>,
}

/// Moves every datagram between `ep` (at `peer`) and the tracker `t` (at `tracker`) until
/// both are quiet, all at `now`.
fn exchange(
    ep: &mut Endpoint,
    t: &mut crate::tracker::Tracker,
    now: Instant,
    (peer, tracker): (SocketAddr, SocketAddr),
) -> Exchanged {
    let mut seen = Exchanged::default();
    while let Some(sent) = ep.poll_transmit() {
        assert_eq!(sent.to, tracker);
        let msg = decoded(&sent);
        let opened = match &msg {
            Message::Validated { body, .. } => Message::open_validated(body).unwrap(),
            other => other.clone(),
        };
        if let Message::Announce { first, hashes, .. } = &opened {
            seen.batches.push((*first, hashes.0.len()));
        }
        if let (Some(reply), _) = t.handle(now, peer, msg) {
            seen.incoming.extend(ep.handle(now, tracker, reply));
        }
    }
    seen
}

fn hashes(range: std::ops::Range<u32>) -> Vec<ContentHash> {
    range.map(|i| ContentHash::of(&i.to_le_bytes())).collect()
}

/// Registers `name` through the tracker, then keeps it registered, as the driver does.
fn register_with(
    ep: &mut Endpoint,
    t: &mut crate::tracker::Tracker,
    now: Instant,
    ends: (SocketAddr, SocketAddr),
    every: Duration,
) -> Exchanged {
    let register = Message::Register {
        request: RequestId(0),
        name: "alice".into(),
        port: ends.0.port(),
        transport: TransportKind::Udp,
    };
    let (id, first) = ep.request(now, ends.1, register);
    ep.transmits.push_front(first);
    let seen = exchange(ep, t, now, ends);
    assert!(
        matches!(
            seen.incoming.as_slice(),
            [Incoming::Answer { request, answer: Message::RegisterReply { outcome: RegisterOutcome::Accepted { .. }, .. } }] if *request == id
        ),
        "{:?}",
        seen.incoming
    );
    ep.keep_registered(
        now,
        ends.1,
        "alice".into(),
        ends.0.port(),
        TransportKind::Udp,
        every,
    );
    exchange(ep, t, now, ends)
}

/// The hashes go to the tracker once the registration is accepted (the first batch alone,
/// then the rest), are not sent again while the tracker's heartbeat replies hold as many, and
/// are announced again, from a first batch, once a reply says the tracker forgot them (here a
/// restarted tracker); a changed set is announced at once, the same set not again.
#[test]
fn announcements_follow_the_registration_and_the_trackers_memory() {
    use crate::tracker::{RegistryConfig, Tracker};
    let mut t = Tracker::new(RegistryConfig::default(), RateConfig::default()).with_key_seed(1);
    let mut ep = Endpoint::new(EndpointConfig::default(), 3);
    let ends = (addr(2, 10001), addr(1, 9000));
    let (t0, every) = (Instant::now(), Duration::from_secs(10));
    // 60 hashes, some twice: counted once.
    let mut wanted = hashes(0..60);
    wanted.extend(hashes(10..20));
    ep.set_announced(t0, wanted);
    assert!(ep.poll_transmit().is_none(), "not registered yet");
    let seen = register_with(&mut ep, &mut t, t0, ends, every);
    assert_eq!(seen.batches, vec![(true, 24), (false, 24), (false, 12)]);
    assert!(seen.incoming.is_empty(), "the driver hears nothing of it");
    assert_eq!(t.registry().held("alice"), Some(60));
    assert_eq!(ep.announced_held(), Some(60));
    assert!(!ep.announcing());
    // Heartbeats that find the count: nothing more.
    let mut now = t0;
    for _ in 0..3 {
        now += every;
        ep.handle_timeout(now);
        assert!(exchange(&mut ep, &mut t, now, ends).batches.is_empty());
    }
    // The tracker restarts (forgets everything): the next heartbeat registers us again (after
    // its new token), its reply holds nothing, and the hashes go again.
    let mut t = Tracker::new(RegistryConfig::default(), RateConfig::default()).with_key_seed(2);
    now += every;
    ep.handle_timeout(now); // a heartbeat without a valid token: a Retry, sent again at once
    assert!(exchange(&mut ep, &mut t, now, ends).batches.is_empty());
    ep.handle_timeout(now);
    let seen = exchange(&mut ep, &mut t, now, ends);
    assert_eq!(seen.batches, vec![(true, 24), (false, 24), (false, 12)]);
    assert_eq!(t.registry().held("alice"), Some(60));
    // A changed set goes at once; the same one again sends nothing.
    ep.set_announced(now, hashes(100..105));
    assert_eq!(
        exchange(&mut ep, &mut t, now, ends).batches,
        vec![(true, 5)]
    );
    assert_eq!(t.registry().held("alice"), Some(5));
    ep.set_announced(now, hashes(100..105));
    assert!(ep.poll_transmit().is_none());
    // An emptied set clears what the tracker holds.
    ep.set_announced(now, Vec::new());
    assert_eq!(
        exchange(&mut ep, &mut t, now, ends).batches,
        vec![(true, 0)]
    );
    assert_eq!(t.registry().held("alice"), Some(0));
}

fn announced(request: RequestId, held: u32, limit: u32) -> Message {
    Message::Announced {
        request,
        held,
        limit,
    }
}

/// The announce batches in `sent`: `(request, first, hashes)`.
fn batches(sent: &[(SocketAddr, Message)]) -> Vec<(RequestId, bool, usize)> {
    sent.iter()
        .filter_map(|(_, m)| match m {
            Message::Announce {
                request,
                first,
                hashes,
                ..
            } => Some((*request, *first, hashes.0.len())),
            _ => None,
        })
        .collect()
}

/// Registered with a tracker that this test plays by hand.
fn registered(now: Instant) -> (Endpoint, SocketAddr) {
    let mut ep = Endpoint::new(EndpointConfig::default(), 5);
    let tracker = addr(1, 9000);
    ep.keep_registered(
        now,
        tracker,
        "alice".into(),
        10001,
        TransportKind::Udp,
        Duration::from_secs(10),
    );
    (ep, tracker)
}

/// The first batch goes alone; then at most ANNOUNCE_IN_FLIGHT batches wait for answers, and
/// no more hashes than the tracker's cap go at all.
#[test]
fn an_announcement_keeps_a_few_batches_in_flight_within_the_trackers_cap() {
    use super::announce::ANNOUNCE_IN_FLIGHT;
    let now = Instant::now();
    let (mut ep, tracker) = registered(now);
    ep.set_announced(now, hashes(0..1000));
    let first = batches(&sent(&mut ep));
    assert_eq!(first.len(), 1);
    assert!(first[0].1, "first");
    // The cap: 200 hashes, so 176 after the first 24, in batches of 24 (7 more, the last 8).
    assert!(ep
        .handle(now, tracker, announced(first[0].0, 24, 200))
        .is_none());
    let mut wave = batches(&sent(&mut ep));
    assert_eq!(wave.len(), ANNOUNCE_IN_FLIGHT);
    let mut total = 24;
    let mut held = 24;
    while !wave.is_empty() {
        assert!(wave.iter().all(|b| !b.1), "later batches");
        let mut next = Vec::new();
        for (id, _, n) in wave {
            total += n;
            held += n as u32;
            assert!(ep.handle(now, tracker, announced(id, held, 200)).is_none());
            let more = batches(&sent(&mut ep));
            assert!(more.len() <= 1, "one answer, at most one more batch");
            next.extend(more);
        }
        wave = next;
    }
    assert_eq!(total, 200);
    assert_eq!(ep.announced_held(), Some(200));
    assert!(!ep.announcing());
    assert_eq!(
        ep.poll_timeout(),
        Some(now + Duration::from_secs(10)),
        "the heartbeat only"
    );
}

/// A refused batch (or one never answered) ends the announcement; it starts again, from a
/// first batch, after ANNOUNCE_RETRY, then waits doubling while it keeps failing.
#[test]
fn a_failed_announcement_starts_again_later() {
    use super::announce::{ANNOUNCE_RETRY, ANNOUNCE_RETRY_MAX};
    let t0 = Instant::now();
    let (mut ep, tracker) = registered(t0);
    ep.set_announced(t0, hashes(0..30));
    let first = batches(&sent(&mut ep))[0].0;
    let refusal = Message::Error {
        request: first,
        reason: "`alice` is registered from another address".into(),
    };
    // From elsewhere: not an answer.
    assert!(ep.handle(t0, addr(66, 9000), refusal.clone()).is_none());
    assert!(ep.announcing());
    assert!(ep.handle(t0, tracker, refusal).is_none());
    assert!(!ep.announcing());
    assert!(ep.poll_event().is_none(), "nothing for the driver");
    assert_eq!(ep.poll_timeout(), Some(t0 + ANNOUNCE_RETRY));
    ep.handle_timeout(t0 + ANNOUNCE_RETRY);
    let again = batches(&sent(&mut ep));
    assert!(matches!(again.as_slice(), [(_, true, 24)]), "{again:?}");
    // Never answered: every attempt, then the next wait, twice as long.
    let mut now = t0 + ANNOUNCE_RETRY;
    while ep.announcing() {
        now = ep.poll_timeout().unwrap();
        ep.handle_timeout(now);
        sent(&mut ep);
    }
    assert!(ep.poll_event().is_none(), "no NoAnswer for the driver");
    assert_eq!(ep.announcer.next_timeout(), Some(now + ANNOUNCE_RETRY * 2));
    assert!(
        ANNOUNCE_RETRY * 64 > ANNOUNCE_RETRY_MAX,
        "the waits are bounded"
    );
}

/// Only replies to heartbeats sent after the last announcement completed are compared: one
/// that overtook it starts nothing; after unregistering nothing is announced.
#[test]
fn heartbeat_replies_from_before_an_announcement_do_not_restart_it() {
    let every = Duration::from_secs(10);
    let t0 = Instant::now();
    let (mut ep, tracker) = registered(t0);
    ep.set_announced(t0, hashes(0..5));
    let first = batches(&sent(&mut ep))[0].0;
    // A heartbeat goes while the announcement is in flight...
    ep.handle_timeout(t0 + every);
    let beat = sent(&mut ep)
        .into_iter()
        .find_map(|(_, m)| match m {
            Message::Heartbeat { request, .. } => Some(request),
            _ => None,
        })
        .expect("a heartbeat");
    // ... the announcement completes, then the heartbeat's older reply comes.
    assert!(ep
        .handle(t0 + every, tracker, announced(first, 5, 100))
        .is_none());
    let reply = |request, held| Message::RegisterReply {
        request,
        outcome: RegisterOutcome::Accepted {
            ttl_ms: 30_000,
            heartbeat_ms: 10_000,
            held,
        },
    };
    assert!(ep.handle(t0 + every, tracker, reply(beat, None)).is_none());
    assert!(batches(&sent(&mut ep)).is_empty(), "an older reply");
    // The next heartbeat's reply counts.
    ep.handle_timeout(t0 + every * 2);
    let beat = sent(&mut ep)
        .into_iter()
        .find_map(|(_, m)| match m {
            Message::Heartbeat { request, .. } => Some(request),
            _ => None,
        })
        .expect("a heartbeat");
    assert!(ep
        .handle(t0 + every * 2, tracker, reply(beat, Some(3)))
        .is_none());
    assert!(matches!(batches(&sent(&mut ep)).as_slice(), [(_, true, 5)]));
    // Unregistering drops the announcement and stops them.
    let bye = Message::Unregister {
        request: RequestId(0),
        name: "alice".into(),
    };
    ep.request(t0 + every * 2, tracker, bye);
    assert!(!ep.announcing());
    ep.set_announced(t0 + every * 2, hashes(0..9));
    assert!(batches(&sent(&mut ep)).is_empty());
}

/// With an identity, name requests go signed; a tracker that never answers them (one that
/// predates `Signed` and drops it) gets the same request again unsigned before the request
/// fails, and from then on unsigned ones; a tracker that answers keeps getting signed ones.
#[test]
fn signed_name_requests_fall_back_to_unsigned_for_an_older_tracker() {
    let config = EndpointConfig {
        identity: Some(crate::identity::Identity::from_secret([4; 32])),
        ..EndpointConfig::default()
    };
    let mut ep = Endpoint::new(config, 1);
    let (old, now) = (addr(9, 9000), Instant::now());
    let register = Message::Register {
        request: RequestId(0),
        name: "alice".into(),
        port: 7000,
        transport: crate::wire::TransportKind::Udp,
    };
    let (id, first) = ep.request(now, old, register.clone());
    assert!(matches!(decoded(&first), Message::Signed { .. }));
    // Every attempt unanswered: the retries go signed, then the same request unsigned.
    let mut t = now;
    let mut sent = Vec::new();
    while sent.iter().all(|m| matches!(m, Message::Signed { .. })) {
        t += ms(10_000);
        ep.handle_timeout(t);
        assert!(ep.poll_event().is_none(), "failed before trying unsigned");
        while let Some(tx) = ep.poll_transmit() {
            sent.push(decoded(&tx));
        }
        assert!(sent.len() < 20, "never tried unsigned: {sent:?}");
    }
    assert!(
        matches!(sent.last(), Some(Message::Register { request, .. }) if *request == id),
        "{sent:?}"
    );
    // The next name request to it goes unsigned at once; to another tracker, signed.
    let (_, next) = ep.request(t, old, register.clone());
    assert!(matches!(decoded(&next), Message::Register { .. }));
    let (_, other) = ep.request(t, addr(8, 9000), register);
    assert!(matches!(decoded(&other), Message::Signed { .. }));
}

/// A lookup from an address that proved nothing yet, padded as an `Initial`, is served at
/// once: its answer goes with a token for the asker's next requests, no more than three
/// times the bytes that came; an answer too large for that goes as a `Retry` instead. What
/// may not be answered before proof (a transfer, a name) is dropped when it comes that way.
/// The same `Initial` sent again (a forged source repeating one datagram, found by the
/// raw-socket test: answers after the first went plain) is answered as an `Answer` each
/// time; with [`MAX_INITIALS`] awaiting answers, a new one is dropped, never answered
/// plain, until the unanswered ones have waited [`INITIAL_ANSWER_WAIT`].
#[test]
fn every_initial_is_answered_wrapped_and_their_table_is_bounded() {
    let mut server = Endpoint::new(EndpointConfig::default(), 3);
    let now = Instant::now();
    let asker = addr(9, 4000);
    let ask = |id| {
        Message::EntryRequest {
            request: RequestId(id),
            file: crate::wire::FileId(1),
        }
        .initial()
    };
    let reply = |id| Message::EntryReply {
        request: RequestId(id),
        entry: None,
        partial: false,
    };
    for _ in 0..3 {
        assert!(server.handle(now, asker, ask(5)).is_some());
    }
    for _ in 0..3 {
        let sent = server.answer_for(now, asker, reply(5));
        assert!(matches!(sent, Message::Answer { .. }), "{sent:?}");
    }
    assert_eq!(
        server.answer_for(now, asker, reply(5)),
        reply(5),
        "three asked"
    );
    // Fill the table from many addresses (under the rate limit: one each).
    for n in 0..MAX_INITIALS as u16 {
        let from = SocketAddr::from(([10, 1, (n >> 8) as u8, n as u8], 4000));
        assert!(server.handle(now, from, ask(1)).is_some(), "{n}");
    }
    let late = addr(9, 4001);
    assert!(server.handle(now, late, ask(6)).is_none(), "full: dropped");
    assert_eq!(
        server.answer_for(now, late, reply(6)),
        reply(6),
        "not awaited"
    );
    let later = now + INITIAL_ANSWER_WAIT;
    assert!(server.handle(later, late, ask(7)).is_some(), "room again");
    let sent = server.answer_for(later, late, reply(7));
    assert!(matches!(sent, Message::Answer { .. }), "{sent:?}");
}

#[test]
fn an_initial_lookup_is_answered_at_once_within_three_times_its_size() {
    let mut server = Endpoint::new(EndpointConfig::default(), 3);
    let now = Instant::now();
    let asker = addr(9, 4000);
    let ask = Message::EntryRequest {
        request: RequestId(5),
        file: crate::wire::FileId(1),
    }
    .initial();
    let came = ask.encode().len();
    match server.handle(now, asker, ask) {
        Some(Incoming::EntryRequest { request, .. }) => assert_eq!(request, RequestId(5)),
        other => panic!("{other:?}"),
    }
    assert!(server.poll_transmit().is_none(), "no Retry");
    let reply = Message::EntryReply {
        request: RequestId(5),
        entry: None,
        partial: false,
    };
    let sent = server.answer_for(now, asker, reply.clone());
    assert!(sent.encode().len() <= 3 * came);
    let Message::Answer { token, body } = &sent else {
        panic!("{sent:?}");
    };
    assert_eq!(Message::open_answer(body), Ok(reply.clone()));
    // The token proves the asker's address from then on.
    let next = Message::IndexRequest {
        request: RequestId(6),
        page: 0,
    };
    assert!(matches!(
        server.handle(now, asker, next.with_token(Some(*token))),
        Some(Incoming::IndexRequest { .. })
    ));
    // Answered once: a second reply to that request goes as it is.
    assert_eq!(server.answer_for(now, asker, reply.clone()), reply);
    // Too large an answer: a Retry.
    server.handle(
        now,
        asker,
        Message::HaveRequest {
            request: RequestId(7),
            hash: crate::wire::ContentHash::of(b"x"),
            first: 0,
        }
        .initial(),
    );
    let big = Message::Error {
        request: RequestId(7),
        reason: "x".repeat(crate::wire::INITIAL_SIZE * 3),
    };
    assert!(matches!(
        server.answer_for(now, asker, big),
        Message::Retry {
            request: RequestId(7),
            ..
        }
    ));
    // A transfer's Request or a name request cannot come that way.
    for not_at_once in [
        Message::Request {
            transfer: TransferId(1),
            file: crate::wire::FileId(1),
            offset: 0,
            end: None,
        },
        Message::Unregister {
            request: RequestId(8),
            name: "alice".into(),
        },
    ] {
        assert!(!not_at_once.answerable_at_once());
        let body = rmp_serde::to_vec(&not_at_once).unwrap();
        let msg = Message::Initial {
            body,
            pad: vec![0; 400],
        };
        assert!(server.handle(now, asker, msg).is_none(), "{not_at_once:?}");
        assert!(server.poll_transmit().is_none(), "{not_at_once:?}");
    }
}

/// An `Answer` to our `Initial` is taken as the answer, and its token kept for the next
/// requests; from another address, or for no request of ours, it is ignored.
#[test]
fn an_answer_answers_and_gives_a_token() {
    let mut ep = Endpoint::new(EndpointConfig::default(), 0);
    let now = Instant::now();
    let tracker = addr(1, 9000);
    let (id, _) = ep.request(now, tracker, list_peers());
    let answer = Message::Answer {
        token: crate::wire::Token(42),
        body: rmp_serde::to_vec(&peer_list(id)).unwrap(),
    };
    assert!(ep.handle(now, addr(66, 9000), answer.clone()).is_none());
    let stray = Message::Answer {
        token: crate::wire::Token(43),
        body: rmp_serde::to_vec(&peer_list(RequestId(id.0 ^ 1))).unwrap(),
    };
    assert!(ep.handle(now, tracker, stray).is_none());
    match ep.handle(now, tracker, answer) {
        Some(Incoming::Answer { request, .. }) => assert_eq!(request, id),
        other => panic!("{other:?}"),
    }
    let (_, next) = ep.request(now, tracker, list_peers());
    match decoded(&next) {
        Message::Validated { token, .. } => assert_eq!(token, crate::wire::Token(42)),
        other => panic!("{other:?}"),
    }
}

/// Transfer `t` from `from` asks and is admitted at once (the driver starts it).
fn start_upload(ep: &mut Endpoint, now: Instant, from: SocketAddr, t: u64) {
    match ep.handle_proven(now, from, request(t)) {
        Some(Incoming::NewUpload { from, transfer, .. }) => ep.upload_started(now, from, transfer),
        other => panic!("{other:?}"),
    }
}

/// The uploads' events since last asked: (kind, transfer) for pauses, resumptions and
/// admissions.
fn turns(ep: &mut Endpoint) -> Vec<(&'static str, u64)> {
    std::iter::from_fn(|| ep.poll_event())
        .filter_map(|e| match e {
            Event::Paused { transfer, .. } => Some(("paused", transfer.0)),
            Event::Resumed { transfer, .. } => Some(("resumed", transfer.0)),
            Event::Admitted { transfer, .. } => Some(("admitted", transfer.0)),
            _ => None,
        })
        .collect()
}

/// With someone in line who could take it, an acknowledged upload gives its slot up when
/// its turn is over, waits at the back of the line (its receiver told `Queued` about every
/// second), and resumes in turn; with nobody in line, uploads keep their slots.
#[test]
fn uploads_take_turns_while_others_wait() {
    let turn = ms(2000);
    let config = EndpointConfig {
        max_uploads: 32,
        max_uploads_per_peer: 1,
        upload_turn: turn,
        ..EndpointConfig::default()
    };
    let mut ep = Endpoint::new(config, 0);
    let t0 = Instant::now();
    let a = |port: u16| addr(2, port);
    start_upload(&mut ep, t0, a(1), 1);
    assert!(ep
        .handle_proven(t0, a(1), final_ack(TransferId(1)))
        .is_some());
    assert_eq!(ep.poll_timeout(), None, "nobody waits: no turns");
    assert!(ep.handle_proven(t0, a(2), request(2)).is_none());
    sent(&mut ep);
    assert_eq!(ep.poll_timeout(), Some(t0 + turn));
    ep.handle_timeout(t0 + turn - ms(1));
    assert_eq!(turns(&mut ep), []);
    ep.handle_timeout(t0 + turn);
    assert_eq!(turns(&mut ep), [("paused", 1), ("admitted", 2)]);
    let queued = |t: u64| {
        (
            a(t as u16),
            Message::Queued {
                transfer: TransferId(t),
                ahead: 0,
            },
        )
    };
    assert_eq!(sent(&mut ep), [queued(1)]);
    // A paused upload still takes its receiver's ACKs (and its Abort).
    assert!(matches!(
        ep.handle_proven(t0 + turn, a(1), final_ack(TransferId(1))),
        Some(Incoming::Upload { .. })
    ));
    // Upload 2 is acknowledged (an unacknowledged one has no turns: it may be a forged
    // Request's, and is evicted, not paused).
    assert!(ep
        .handle_proven(t0 + turn + ms(100), a(2), final_ack(TransferId(2)))
        .is_some());
    // The paused one's receiver hears every second that it waits.
    assert_eq!(ep.poll_timeout(), Some(t0 + turn + ms(1000)));
    ep.handle_timeout(t0 + turn + ms(999));
    assert!(sent(&mut ep).is_empty());
    ep.handle_timeout(t0 + turn + ms(1000));
    assert_eq!(sent(&mut ep), [queued(1)]);
    assert_eq!(turns(&mut ep), []);
    // Upload 2's turn ends: 1 resumes.
    ep.handle_timeout(t0 + turn + turn);
    assert_eq!(turns(&mut ep), [("paused", 2), ("resumed", 1)]);
    assert_eq!(sent(&mut ep), [queued(2)]);
    // A paused upload that ends leaves the line; then nobody waits and nobody yields.
    ep.upload_ended(a(2), TransferId(2));
    assert!(ep.poll_timeout().is_none());
    ep.handle_timeout(t0 + ms(9000));
    assert_eq!(turns(&mut ep), []);
    assert!(sent(&mut ep).is_empty(), "no reminder for an ended upload");
}

/// Turns are per address cap: an upload yields only to someone who could take its slot
/// (a waiter whose own address is at its cap, from another address, could not).
#[test]
fn an_upload_yields_only_to_someone_who_could_take_its_slot() {
    let config = EndpointConfig {
        max_uploads: 32,
        max_uploads_per_peer: 1,
        upload_turn: ms(500),
        ..EndpointConfig::default()
    };
    let mut ep = Endpoint::new(config, 0);
    let t0 = Instant::now();
    for (t, from) in [(1, addr(2, 1)), (2, addr(3, 1))] {
        start_upload(&mut ep, t0, from, t);
        assert!(ep
            .handle_proven(t0, from, final_ack(TransferId(t)))
            .is_some());
    }
    // A second request from 10.0.0.2 waits: only upload 1 (same address) may yield to it.
    assert!(ep.handle_proven(t0, addr(2, 2), request(3)).is_none());
    ep.handle_timeout(t0 + ms(500));
    assert_eq!(turns(&mut ep), [("paused", 1), ("admitted", 3)]);
}

/// One upload slot (turns of 5 s at most), taken by upload 1 from `addr(2, 1)`, whose
/// receiver acknowledged it; `Request` 2 from `addr(3, 1)` waits in line.
fn one_slot_taken_and_one_waiting() -> (Endpoint, Instant) {
    let config = EndpointConfig {
        max_uploads: 1,
        upload_turn: ms(5000),
        ..EndpointConfig::default()
    };
    let mut ep = Endpoint::new(config, 0);
    let t0 = Instant::now();
    start_upload(&mut ep, t0, addr(2, 1), 1);
    assert!(ep
        .handle_proven(t0, addr(2, 1), final_ack(TransferId(1)))
        .is_some());
    assert!(ep.handle_proven(t0, addr(3, 1), request(2)).is_none());
    (ep, t0)
}

/// A turn ends once the receiver acknowledged a quantum of bytes (and a few round trips
/// passed), long before the longest turn: equal bytes per turn.
#[test]
fn a_turn_ends_at_its_quantum_of_bytes() {
    use super::UPLOAD_QUANTUM;
    let (mut ep, t0) = one_slot_taken_and_one_waiting();
    let key = (addr(2, 1), TransferId(1));
    // Most of a quantum: the turn goes on (to the longest turn's end).
    ep.upload_progress(t0 + ms(10), key, Some(ms(1)), UPLOAD_QUANTUM - 1, false);
    assert_eq!(turns(&mut ep), []);
    assert_eq!(ep.poll_timeout(), Some(t0 + ms(5000)));
    // The quantum: over now.
    ep.upload_progress(t0 + ms(20), key, Some(ms(1)), UPLOAD_QUANTUM, false);
    assert_eq!(turns(&mut ep), [("paused", 1), ("admitted", 2)]);
    // Its next turn counts from what was acknowledged at its start.
    ep.upload_ended(addr(3, 1), TransferId(2));
    ep.handle_timeout(t0 + ms(30));
    assert_eq!(turns(&mut ep), [("resumed", 1)]);
    assert!(ep.handle_proven(t0, addr(4, 1), request(3)).is_none());
    ep.upload_progress(t0 + ms(40), key, Some(ms(1)), UPLOAD_QUANTUM + 10, false);
    assert_eq!(turns(&mut ep), []);
    ep.upload_progress(t0 + ms(50), key, Some(ms(1)), 2 * UPLOAD_QUANTUM, false);
    assert_eq!(turns(&mut ep), [("paused", 1), ("admitted", 3)]);
    // An upload with everything acknowledged keeps its slot for its FIN exchange (paused,
    // it would hold the FIN its receiver waits for).
    let three = (addr(4, 1), TransferId(3));
    assert!(ep
        .handle_proven(t0, addr(4, 1), final_ack(TransferId(3)))
        .is_some());
    ep.upload_progress(t0 + ms(60), three, Some(ms(1)), 3 * UPLOAD_QUANTUM, true);
    ep.handle_timeout(t0 + ms(9000));
    assert_eq!(turns(&mut ep), []);
}

/// A paused upload whose receiver then acknowledges everything (what was in flight when it
/// paused was the rest of the file: on a stream, a socket buffer's worth) is resumed at
/// once for its FIN: its receiver, with every byte and no FIN, would otherwise wait a whole
/// round of the line, and one that waited past its minimum rate failed.
#[test]
fn a_paused_upload_acknowledged_to_its_end_resumes_for_its_fin() {
    use super::UPLOAD_QUANTUM;
    let (mut ep, t0) = one_slot_taken_and_one_waiting();
    assert!(ep.handle_proven(t0, addr(4, 1), request(3)).is_none());
    sent(&mut ep);
    let key = (addr(2, 1), TransferId(1));
    ep.upload_progress(t0 + ms(10), key, Some(ms(1)), UPLOAD_QUANTUM, false);
    assert_eq!(turns(&mut ep), [("paused", 1), ("admitted", 2)]);
    assert_eq!(
        sent(&mut ep),
        [(
            key.0,
            Message::Queued {
                transfer: key.1,
                ahead: 1
            }
        )]
    );
    // Acknowledged to its end while it waits behind 3.
    ep.upload_progress(t0 + ms(20), key, Some(ms(1)), 3 * UPLOAD_QUANTUM, true);
    assert_eq!(turns(&mut ep), [("resumed", 1)]);
    assert!(ep.is_upload(key.0, key.1));
    // It left the line: no more reminders, and 3 is next.
    ep.handle_timeout(t0 + ms(2000));
    assert!(
        !sent(&mut ep)
            .iter()
            .any(|(to, m)| *to == key.0 && matches!(m, Message::Queued { .. })),
        "no Queued for an upload out of the line"
    );
    ep.upload_ended(key.0, key.1);
    ep.upload_ended(addr(3, 1), TransferId(2));
    ep.handle_timeout(t0 + ms(2001));
    assert_eq!(turns(&mut ep), [("admitted", 3)]);
}
