//! Handshakes and sessions between two tables on a fake clock, with frames lost, reordered,
//! duplicated, tampered with, or garbage.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::session::SessionKeys;
use super::*;
use crate::identity::Identity;

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 7000))
}

fn table(secret: u8, seed: u8) -> SessionTable {
    SessionTable::new(
        &Identity::from_secret([secret; 32]),
        SecureConfig {
            seed: Some([seed; 32]),
            ..SecureConfig::default()
        },
    )
}

/// The initiation a fresh table (identity secret 1, randomness seeded with `seed`) sends to
/// `to` (IK toward `expected`, else XX): one more initiator, as a flood brings them.
fn initiation(seed: u8, now: Instant, to: SocketAddr, expected: Option<PublicKey>) -> Vec<u8> {
    let mut a = table(1, seed);
    a.connect(now, to, expected).unwrap();
    a.poll_transmit().unwrap().1
}

/// Two tables, `a` at `addr(1)` and `b` at `addr(2)`, and what each has sent.
struct Pair {
    a: SessionTable,
    b: SessionTable,
    now: Instant,
    /// Frames from a to b, and from b to a, not yet delivered.
    to_b: Vec<Vec<u8>>,
    to_a: Vec<Vec<u8>>,
    events_a: Vec<SecureEvent>,
    events_b: Vec<SecureEvent>,
}

impl Pair {
    fn new() -> Self {
        Pair {
            a: table(1, 11),
            b: table(2, 22),
            now: Instant::now(),
            to_b: vec![],
            to_a: vec![],
            events_a: vec![],
            events_b: vec![],
        }
    }

    fn collect(&mut self) {
        while let Some((to, f)) = self.a.poll_transmit() {
            assert_eq!(to, addr(2));
            self.to_b.push(f);
        }
        while let Some((to, f)) = self.b.poll_transmit() {
            assert_eq!(to, addr(1));
            self.to_a.push(f);
        }
        self.events_a
            .extend(std::iter::from_fn(|| self.a.poll_event()));
        self.events_b
            .extend(std::iter::from_fn(|| self.b.poll_event()));
    }

    /// Delivers everything in flight, both ways, until nothing moves.
    fn deliver(&mut self) {
        for _ in 0..10 {
            self.collect();
            if self.to_a.is_empty() && self.to_b.is_empty() {
                return;
            }
            for f in std::mem::take(&mut self.to_b) {
                self.b.handle(self.now, addr(1), &f);
            }
            for f in std::mem::take(&mut self.to_a) {
                self.a.handle(self.now, addr(2), &f);
            }
        }
    }

    /// a starts a handshake with b (IK toward `expected`, else XX); its initiation waits in
    /// `to_b`.
    fn start(&mut self, expected: Option<PublicKey>) {
        self.a.connect(self.now, addr(2), expected).unwrap();
        self.collect();
    }

    /// Delivers a's initiation (the one in flight) to b, and returns it.
    fn deliver_initiation(&mut self) -> Vec<u8> {
        self.collect();
        let init = self.to_b.pop().expect("an initiation");
        self.b.handle(self.now, addr(1), &init);
        init
    }

    /// Takes b's response (the one in flight) off the wire, undelivered.
    fn take_response(&mut self) -> Vec<u8> {
        self.collect();
        self.to_a.pop().expect("a response")
    }

    /// Starts XX and delivers the initiation to b and b's response to a, nothing more: a's
    /// finish waits in `to_b`.
    fn xx_until_finish(&mut self) {
        self.start(None);
        self.deliver_initiation();
        let resp = self.take_response();
        self.a.handle(self.now, addr(2), &resp);
        self.collect();
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
        self.collect();
    }

    /// Moves the clock to a's next timer (unless past it already) and fires what is due.
    fn advance_to_a_timer(&mut self) {
        let at = self.a.poll_timeout().expect("a timer while connecting");
        self.now = self.now.max(at);
        self.advance(Duration::ZERO);
    }

    /// Advances the clock `steps` times by `by`, losing everything a sends to b meanwhile
    /// (and what was in flight before).
    fn advance_losing_to_b(&mut self, steps: u32, by: Duration) {
        for _ in 0..steps {
            self.to_b.clear();
            self.advance(by);
        }
    }

    fn b_key(&self) -> PublicKey {
        self.b.public()
    }
}

fn handshake(expected: Option<PublicKey>) -> Pair {
    let mut p = Pair::new();
    let now = p.now;
    assert_eq!(p.a.connect(now, addr(2), expected), Ok(Connect::Pending));
    p.deliver();
    p
}

/// IK: one round trip; each side knows the other's key, and a message sealed by one opens
/// at the other as itself.
#[test]
fn ik_handshake_then_messages_both_ways() {
    let mut p = Pair::new();
    let key = p.b_key();
    p.start(Some(key));
    assert_eq!(p.to_b.len(), 1);
    let init_len = p.to_b[0].len();
    p.deliver();
    assert_eq!(
        p.events_a,
        [SecureEvent::Connected {
            addr: addr(2),
            peer: key
        }]
    );
    assert_eq!(
        p.events_b,
        [SecureEvent::Accepted {
            addr: addr(1),
            peer: p.a.public()
        }]
    );
    assert_eq!(p.a.peer_key(addr(2)), Some(key));
    assert_eq!(
        p.a.connect(p.now, addr(2), Some(key)),
        Ok(Connect::Established(key))
    );
    assert!(init_len > 0);
    exchange(&mut p);
}

/// XX: the initiator learns the responder's key without knowing it before.
#[test]
fn xx_handshake_then_messages_both_ways() {
    let mut p = handshake(None);
    let key = p.b_key();
    assert_eq!(
        p.events_a,
        [SecureEvent::Connected {
            addr: addr(2),
            peer: key
        }]
    );
    assert_eq!(p.b.peer_key(addr(1)), Some(p.a.public()));
    exchange(&mut p);
}

/// A message each way, opened as sealed, with the sender's key.
fn exchange(p: &mut Pair) {
    let now = p.now;
    sealed_arrives(&p.a, addr(1), &mut p.b, addr(2), now, b"hello b");
    sealed_arrives(&p.b, addr(2), &mut p.a, addr(1), now, b"hello a");
}

/// `msg`, sealed by `from` (at `from_addr`) to `to` (at `to_addr`), opens there as itself,
/// with `from`'s key.
fn sealed_arrives(
    from: &SessionTable,
    from_addr: SocketAddr,
    to: &mut SessionTable,
    to_addr: SocketAddr,
    now: Instant,
    msg: &[u8],
) {
    let s = from
        .session_to(to_addr)
        .unwrap_or_else(|| panic!("{from_addr} has a session to {to_addr}"));
    let frame = s.seal(msg).unwrap();
    assert_eq!(
        to.handle(now, from_addr, &frame),
        Received::Opened {
            plaintext: msg.to_vec(),
            peer: from.public()
        }
    );
}

/// An initiator expecting another key than the responder's refuses it, naming both.
#[test]
fn a_wrong_key_is_refused() {
    let mallory = Identity::from_secret([9; 32]).public();
    // IK toward the wrong key: the responder cannot read the initiation and says nothing;
    // after the IK tries, XX names the key it holds, and the handshake fails with both.
    let mut p = handshake(Some(mallory));
    assert!(p.a.session_to(addr(2)).is_none());
    assert!(p.b.session_to(addr(1)).is_none());
    for _ in 0..10 {
        p.advance_to_a_timer();
        p.deliver();
        if !p.events_a.is_empty() {
            break;
        }
    }
    assert_eq!(
        p.events_a,
        [SecureEvent::Failed {
            addr: addr(2),
            error: SecureError::WrongKey {
                expected: mallory,
                got: p.b_key()
            }
        }]
    );
    assert!(p.a.session_to(addr(2)).is_none());
    // XX, then the key checked: refused with both keys named.
    let mut p = handshake(None);
    let got = p.b_key();
    assert_eq!(
        p.a.connect(p.now, addr(2), Some(mallory)),
        Err(SecureError::WrongKey {
            expected: mallory,
            got
        })
    );
    let text = SecureError::WrongKey {
        expected: mallory,
        got,
    }
    .to_string();
    assert!(text.contains(&fingerprint(&mallory)) && text.contains(&fingerprint(&got)));
    p.deliver();
}

/// An IK initiation toward a key the responder does not hold times out after its tries.
#[test]
fn an_unanswered_initiation_is_sent_again_then_fails() {
    let mut p = Pair::new();
    let mallory = Identity::from_secret([9; 32]).public();
    p.start(Some(mallory));
    let mut sent = p.to_b.len();
    p.to_b.clear();
    for _ in 0..20 {
        p.advance_to_a_timer();
        sent += p.to_b.len();
        p.to_b.clear();
        if !p.events_a.is_empty() {
            break;
        }
    }
    assert_eq!(sent, 5);
    assert_eq!(
        p.events_a,
        [SecureEvent::Failed {
            addr: addr(2),
            error: SecureError::Timeout { attempts: 5 }
        }]
    );
    assert!(!p.a.is_connecting(addr(2)));
}

/// A lost response: the initiation goes again, and the responder answers the repeat with
/// the same response (no new session, no new work).
#[test]
fn a_lost_response_is_repaired_without_new_work() {
    let mut p = Pair::new();
    let key = p.b_key();
    p.start(Some(key));
    let init = p.deliver_initiation();
    let first = p.take_response();
    assert_eq!(p.b.sessions(), 1);
    p.advance(Duration::from_millis(300));
    let again = p.to_b.pop().expect("the initiation again");
    assert_eq!(again, init);
    p.b.handle(p.now, addr(1), &again);
    p.collect();
    assert_eq!(p.to_a.pop(), Some(first.clone()));
    assert_eq!(p.b.sessions(), 1);
    p.a.handle(p.now, addr(2), &first);
    exchange(&mut p);
}

/// XX with the finish lost: the initiator sends it again until the responder's first frame.
#[test]
fn a_lost_finish_is_sent_again() {
    let mut p = Pair::new();
    p.xx_until_finish();
    assert_eq!(p.to_b.len(), 1, "the finish");
    p.to_b.clear();
    assert!(p.b.session_to(addr(1)).is_none());
    p.advance(Duration::from_millis(300));
    assert_eq!(p.to_b.len(), 1, "the finish again");
    p.deliver();
    exchange(&mut p);
    // Once b's frame came, no more finishes.
    p.advance(Duration::from_secs(5));
    assert!(p.to_b.is_empty());
}

/// XX with the finish damaged on the way (any byte): the responder refuses it, and the
/// genuine finish sent again still completes the handshake (snow leaves a state that failed
/// to read unusable: the responder builds its state again).
#[test]
fn a_damaged_finish_does_not_kill_the_handshake() {
    let mut p = Pair::new();
    p.xx_until_finish();
    let finish = p.to_b.pop().expect("the finish");
    for i in 0..finish.len() {
        let mut bad = finish.clone();
        bad[i] ^= 0x40;
        // Dropped, or (its magic damaged) no frame at all.
        assert!(
            matches!(
                p.b.handle(p.now, addr(1), &bad),
                Received::Dropped(_) | Received::Plaintext
            ),
            "byte {i}"
        );
        assert!(p.b.session_to(addr(1)).is_none(), "byte {i}");
    }
    assert_eq!(p.b.handshakes(), 1, "still waiting for the finish");
    p.advance(Duration::from_millis(300));
    assert_eq!(p.to_b.len(), 1, "the finish again");
    p.deliver();
    assert!(p.b.session_to(addr(1)).is_some());
    exchange(&mut p);
}

/// XX with every finish the timer sends lost: the finish goes along with the next message
/// sealed to the peer (at most once a retransmission interval) until the peer's first
/// frame, so the session is not a dead one.
#[test]
fn a_finish_lost_every_time_goes_along_with_messages() {
    let mut p = Pair::new();
    p.xx_until_finish();
    // The timer's tries: at 0, 0.3, 0.9, 2.1 and 4.5 s, all lost; spent at 9.3 s, before
    // b drops its handshake (10 s).
    p.advance_losing_to_b(95, Duration::from_millis(100));
    assert!(p.to_b.is_empty());
    assert!(p.b.session_to(addr(1)).is_none());
    let finish = p.a.finish_along(p.now, addr(2)).expect("the finish, along");
    assert_eq!(p.a.finish_along(p.now, addr(2)), None, "once an interval");
    p.b.handle(p.now, addr(1), &finish);
    exchange(&mut p);
    p.now += Duration::from_secs(1);
    assert_eq!(p.a.finish_along(p.now, addr(2)), None, "b was heard from");
}

/// XX with every finish lost and nothing else sent: once the peer has surely dropped its
/// handshake, the initiator's session, never heard from, is dropped too (a new `connect`
/// makes a new one).
#[test]
fn a_session_never_heard_from_is_dropped() {
    let mut p = Pair::new();
    p.xx_until_finish();
    p.advance_losing_to_b(12, Duration::from_secs(1));
    assert!(p.a.session_to(addr(2)).is_none());
    assert_eq!(p.a.connect(p.now, addr(2), None), Ok(Connect::Pending));
}

/// Damaged responses restart the initiation (a failed read spoils snow's state), but use up
/// none of its tries: more of them than there are tries, and the handshake still completes.
#[test]
fn damaged_responses_use_up_no_tries() {
    let mut p = Pair::new();
    p.start(None);
    for _ in 0..SecureConfig::default().attempts + 2 {
        p.deliver_initiation();
        let mut resp = p.take_response();
        let last = resp.len() - 1;
        resp[last] ^= 1;
        assert_eq!(
            p.a.handle(p.now, addr(2), &resp),
            Received::Dropped(SecureError::Unauthentic)
        );
    }
    // The last restart's initiation is lost; the timer's next try sends it again.
    p.collect();
    p.to_b.clear();
    p.advance(Duration::from_millis(300));
    assert_eq!(p.to_b.len(), 1);
    p.deliver();
    assert!(p
        .events_a
        .iter()
        .all(|e| matches!(e, SecureEvent::Connected { .. })));
    assert_eq!(p.events_a.len(), 1);
    exchange(&mut p);
}

/// A session in which the peer was heard from leaves its address marked when it ends (so
/// that a driver does not fall back to plaintext toward it), for two idle timeouts; one
/// that never heard from the peer (an IK responder's unconfirmed session, which a forged
/// initiation from any address can make) leaves nothing; `forget` clears the mark.
#[test]
fn ended_sessions_are_remembered_when_the_peer_was_heard_from() {
    let mut p = handshake(None);
    exchange(&mut p);
    let idle = SecureConfig::default().idle_timeout;
    for _ in 0..idle.as_secs() + 2 {
        p.advance(Duration::from_secs(1));
    }
    assert!(p.a.session_to(addr(2)).is_none() && p.b.session_to(addr(1)).is_none());
    assert!(p.a.ended_with(addr(2)) && p.b.ended_with(addr(1)));
    assert!(!p.a.ended_with(addr(3)));
    for _ in 0..idle.as_secs() {
        p.advance(Duration::from_secs(1));
    }
    assert!(!p.a.ended_with(addr(2)) && !p.b.ended_with(addr(1)));
    // An IK initiation nobody follows up: b's unconfirmed session goes, unmarked.
    let mut q = Pair::new();
    let key = q.b_key();
    q.start(Some(key));
    q.deliver_initiation();
    assert_eq!(q.b.sessions(), 1);
    q.advance_losing_to_b(12, Duration::from_secs(1));
    assert_eq!(q.b.sessions(), 0);
    assert!(!q.b.ended_with(addr(1)));
    // Forgetting an address clears its mark.
    let mut r = handshake(None);
    exchange(&mut r);
    r.a.forget(addr(2));
    assert!(r.a.session_to(addr(2)).is_none());
    assert!(!r.a.ended_with(addr(2)));
}

/// Data frames lost, reordered and duplicated: every one opens once, duplicates are refused.
#[test]
fn reordered_frames_open_and_duplicates_do_not() {
    let mut p = handshake(None);
    let s = p.a.session_to(addr(2)).unwrap();
    let frames: Vec<Vec<u8>> = (0..100u32)
        .map(|i| s.seal(&i.to_le_bytes()).unwrap())
        .collect();
    let mut order: Vec<usize> = (0..100).rev().collect();
    order.retain(|i| i % 7 != 3); // lost
    for &i in &order {
        match p.b.handle(p.now, addr(1), &frames[i]) {
            Received::Opened { plaintext, .. } => assert_eq!(plaintext, (i as u32).to_le_bytes()),
            other => panic!("frame {i}: {other:?}"),
        }
    }
    for &i in &order {
        assert_eq!(
            p.b.handle(p.now, addr(1), &frames[i]),
            Received::Dropped(SecureError::Replayed(i as u64))
        );
    }
}

/// Any flipped bit of a data frame, or a frame from another address, is refused.
#[test]
fn tampered_frames_are_refused() {
    let mut p = handshake(None);
    let s = p.a.session_to(addr(2)).unwrap();
    let frame = s.seal(b"secret bytes").unwrap();
    for i in 0..frame.len() {
        for bit in [0x01, 0x80] {
            let mut bad = frame.clone();
            bad[i] ^= bit;
            assert!(
                !matches!(p.b.handle(p.now, addr(1), &bad), Received::Opened { .. }),
                "byte {i} bit {bit:#x}"
            );
        }
    }
    assert_eq!(
        p.b.handle(p.now, addr(3), &frame),
        Received::Dropped(SecureError::WrongAddress)
    );
    // The genuine frame still opens: the forgeries used up nothing.
    assert!(matches!(
        p.b.handle(p.now, addr(1), &frame),
        Received::Opened { .. }
    ));
}

/// The plaintext is nowhere in the frame.
#[test]
fn sealed_frames_do_not_carry_the_plaintext() {
    let p = handshake(None);
    let s = p.a.session_to(addr(2)).unwrap();
    let secret = b"the contents of a private file, long enough to find";
    let frame = s.seal(secret).unwrap();
    assert!(!frame.windows(8).any(|w| secret.windows(8).any(|x| x == w)));
}

/// A session's frames are Noise's transport messages: what snow's own transport state
/// seals under the same handshake and nonce, byte for byte, and each side opens the other's.
#[test]
fn sealed_frames_are_noise_transport_messages() {
    let build = |seed: u8, initiator: bool| {
        let b = snow::Builder::with_resolver(
            "Noise_NN_25519_AESGCM_BLAKE2s".parse().unwrap(),
            super::keys::seeded_resolver(&[seed; 32]),
        );
        if initiator {
            b.build_initiator().unwrap()
        } else {
            b.build_responder().unwrap()
        }
    };
    let (mut hi, mut hr) = (build(1, true), build(2, false));
    let (mut m, mut p) = ([0u8; 256], [0u8; 256]);
    let n = hi.write_message(&[], &mut m).unwrap();
    hr.read_message(&m[..n], &mut p).unwrap();
    let n = hr.write_message(&[], &mut m).unwrap();
    hi.read_message(&m[..n], &mut p).unwrap();
    let ours_i = Session::new(SessionKeys::split(&mut hi).unwrap(), [0; 32], 1, 2);
    let ours_r = Session::new(SessionKeys::split(&mut hr).unwrap(), [0; 32], 2, 1);
    let (snow_i, snow_r) = (
        hi.into_stateless_transport_mode().unwrap(),
        hr.into_stateless_transport_mode().unwrap(),
    );
    let plaintext: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    for (ours, theirs, peer) in [(&ours_i, &snow_i, &snow_r), (&ours_r, &snow_r, &snow_i)] {
        for nonce in 0..3u64 {
            let frame = ours.seal(&plaintext).unwrap();
            let Ok(Frame::Sealed {
                nonce: got,
                ciphertext,
                ..
            }) = Frame::parse(&frame)
            else {
                panic!("not a sealed frame")
            };
            assert_eq!(got, nonce);
            let mut expected = vec![0; plaintext.len() + TAG_LEN];
            theirs
                .write_message(nonce, &plaintext, &mut expected)
                .unwrap();
            assert_eq!(ciphertext, &expected[..], "nonce {nonce}");
            let mut opened = vec![0; ciphertext.len()];
            let n = peer.read_message(nonce, ciphertext, &mut opened).unwrap();
            assert_eq!(&opened[..n], &plaintext[..]);
        }
    }
    // And the other way: snow seals, ours opens (in place), once per nonce.
    let mut frame = vec![0; plaintext.len() + TAG_LEN];
    snow_r.write_message(9, &plaintext, &mut frame).unwrap();
    let n = ours_i.open_in_place(9, &mut frame.clone()).unwrap();
    assert_eq!(n, plaintext.len());
    assert_eq!(
        ours_i.open_in_place(9, &mut frame.clone()),
        Err(SecureError::Replayed(9))
    );
    assert_eq!(
        ours_i.open_in_place(10, &mut frame.clone()),
        Err(SecureError::Unauthentic),
        "a nonce other than the sealer's"
    );
}

/// Sealing in place: the frame begins where the caller's buffer left off, with room for
/// its head; what the buffer held before stays; a frame too large is refused and cut back.
#[test]
fn frames_are_sealed_in_place_after_what_the_buffer_holds() {
    let mut p = handshake(None);
    let s = p.a.session_to(addr(2)).unwrap();
    let mut buf = b"before".to_vec();
    buf.extend_from_slice(&[0xAA; SEALED_HEAD]);
    buf.extend_from_slice(b"a chunk read from a file");
    s.seal_in_place(&mut buf, 6).unwrap();
    assert_eq!(&buf[..6], b"before");
    assert_eq!(buf.len(), 6 + SEAL_OVERHEAD + 24);
    match p.b.handle(p.now, addr(1), &buf[6..]) {
        Received::Opened { plaintext, .. } => assert_eq!(plaintext, b"a chunk read from a file"),
        other => panic!("not opened: {other:?}"),
    }
    let mut big = vec![0; 3 + SEALED_HEAD + MAX_SEALED_PLAINTEXT + 1];
    assert_eq!(
        s.seal_in_place(&mut big, 3),
        Err(SecureError::TooLarge(MAX_SEALED_PLAINTEXT + 1))
    );
    assert_eq!(big.len(), 3);
    let mut short = vec![0; SEALED_HEAD - 1];
    assert!(s.seal_in_place(&mut short, 0).is_err());
    assert!(short.is_empty());
}

/// Idle sessions expire; an initiation flood from one IP is cut by its rate limit.
#[test]
fn idle_sessions_expire_and_floods_are_limited() {
    let mut p = handshake(None);
    assert_eq!(p.a.sessions(), 1);
    p.advance(Duration::from_secs(181));
    p.advance(Duration::from_secs(1));
    assert_eq!(p.a.sessions(), 0);
    assert_eq!(p.b.sessions(), 0);

    let mut b = table(2, 22);
    let key = b.public();
    let now = Instant::now();
    let mut answered = 0;
    for n in 0..100u8 {
        let init = initiation(n, now, addr(2), Some(key));
        if b.handle(now, addr(1), &init) == Received::Handshake {
            answered += 1;
        }
    }
    assert_eq!(answered, 40, "the per-IP burst");
    assert!(b.sessions() <= SESSIONS_PER_ADDR);
}

/// The session table stays within its bound when many peers connect.
#[test]
fn the_session_table_is_bounded() {
    let mut b = SessionTable::new(
        &Identity::from_secret([2; 32]),
        SecureConfig {
            seed: Some([2; 32]),
            max_sessions: 8,
            max_handshakes: 4,
            ..SecureConfig::default()
        },
    );
    let key = b.public();
    let now = Instant::now();
    for n in 0..30u8 {
        b.handle(now, addr(n), &initiation(n, now, addr(n), Some(key)));
        b.handle(now, addr(n), &initiation(n + 100, now, addr(n), None));
        assert!(b.sessions() <= 8 && b.handshakes() <= 4);
    }
}

proptest! {
    /// Garbage, and damaged real frames, never panic, never open, never grow the table
    /// beyond what real initiations may.
    #[test]
    fn garbage_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        typ in 1u8..6,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        let mut p = handshake(None);
        let now = p.now;
        let _ = p.b.handle(now, addr(1), &bytes);
        let mut framed = FRAME_MAGIC.to_vec();
        framed.push(typ);
        framed.extend_from_slice(&bytes);
        let opened = matches!(p.b.handle(now, addr(1), &framed), Received::Opened { .. });
        prop_assert!(!opened);
        let s = p.a.session_to(addr(2)).unwrap();
        let mut frame = s.seal(&bytes).unwrap();
        for (at, x) in flips {
            let i = at % frame.len();
            frame[i] ^= x.max(1);
        }
        let opened = matches!(p.b.handle(now, addr(1), &frame), Received::Opened { .. });
        prop_assert!(!opened);
        prop_assert!(p.b.sessions() <= 2);
    }
}
