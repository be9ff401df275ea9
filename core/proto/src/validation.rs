//! Address validation: before a peer or the tracker sends anything larger than a request, or
//! gives a request a slot or a name, the requester proves that it receives at its source
//! address, as QUIC's Retry does. A request without proof is answered with a small
//! [`Message::Retry`] carrying a [`Token`]; the requester sends it again
//! [`Message::Validated`] with that token, and keeps the token for its later requests to the
//! same IP.
//!
//! A token is a keyed BLAKE3 of the IP and the time's epoch: checked without any state kept
//! per address, valid for one to two [`TOKEN_EPOCH`]s, unforgeable without the key (random
//! per process). A forged source address never sees its token, so it gets no more than a
//! `Retry` the size of its request (no amplification), takes no upload slot, and cannot
//! register, refresh or remove a name.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::wire::{Message, Token};

/// How long a token stays valid at least (and at most twice this).
pub const TOKEN_EPOCH: Duration = Duration::from_secs(120);

/// Issues and checks tokens.
#[derive(Debug)]
pub struct AddressValidator {
    key: [u8; 32],
    /// The start of epoch 0: the first time the validator was used.
    start: Option<Instant>,
}

impl AddressValidator {
    /// A validator keyed from `seed` (pass something random: whoever knows it can forge
    /// tokens; simulations pass their seed).
    pub fn new(seed: u64) -> Self {
        AddressValidator {
            key: blake3::derive_key("p2p address validation v1", &seed.to_le_bytes()),
            start: None,
        }
    }

    fn epoch(&mut self, now: Instant) -> u64 {
        let start = *self.start.get_or_insert(now);
        now.saturating_duration_since(start).as_secs() / TOKEN_EPOCH.as_secs()
    }

    fn mac(&self, ip: IpAddr, epoch: u64) -> Token {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        match ip {
            IpAddr::V4(v4) => h.update(&v4.octets()),
            IpAddr::V6(v6) => h.update(&v6.octets()),
        };
        h.update(&epoch.to_le_bytes());
        let out = h.finalize();
        Token(u64::from_le_bytes(
            out.as_bytes()[..8].try_into().expect("8 bytes"),
        ))
    }

    /// The token of `ip` now.
    pub fn issue(&mut self, now: Instant, ip: IpAddr) -> Token {
        let epoch = self.epoch(now);
        self.mac(ip, epoch)
    }

    /// Whether `token` proves `ip` now (issued in this epoch or the one before).
    pub fn check(&mut self, now: Instant, ip: IpAddr, token: Token) -> bool {
        let epoch = self.epoch(now);
        token == self.mac(ip, epoch) || (epoch > 0 && token == self.mac(ip, epoch - 1))
    }

    /// Unwraps `msg`: the request and whether its sender proved `ip` (a request that needs
    /// no proof counts as proven). `None`: a `Validated` whose body is not a valid request.
    pub fn open(&mut self, now: Instant, ip: IpAddr, msg: Message) -> Option<(Message, bool)> {
        match msg {
            Message::Validated { token, body } => {
                let inner = Message::open_validated(&body).ok()?;
                Some((inner, self.check(now, ip, token)))
            }
            msg => {
                let proven = !msg.needs_proof();
                Some((msg, proven))
            }
        }
    }
}

/// Most tokens a [`TokenCache`] keeps.
pub const MAX_TOKENS: usize = 4096;

/// The tokens a requester was given, by the address (IP and port) of the server that gave
/// them: each server keys its own tokens, and several may listen on one IP (peers on one
/// machine, or behind one NAT), so a token from one is worthless to the next. Bounded:
/// cleared when full, which costs each server one `Retry` more.
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: HashMap<SocketAddr, Token>,
}

impl TokenCache {
    /// The token for requests to `server`, if any.
    pub fn get(&self, server: SocketAddr) -> Option<Token> {
        self.tokens.get(&server).copied()
    }

    /// Keeps `token` for requests to `server`.
    pub fn insert(&mut self, server: SocketAddr, token: Token) {
        if self.tokens.len() >= MAX_TOKENS && !self.tokens.contains_key(&server) {
            self.tokens.clear();
        }
        self.tokens.insert(server, token);
    }

    /// `msg` as it goes to `server`: with its token, if any and if it needs one.
    pub fn wrap(&self, server: SocketAddr, msg: &Message) -> Message {
        msg.with_token(self.get(server))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, RequestId};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_token_proves_its_ip_for_one_to_two_epochs_only() {
        let mut v = AddressValidator::new(7);
        let t0 = Instant::now();
        let token = v.issue(t0, ip("10.0.0.1"));
        assert!(v.check(t0, ip("10.0.0.1"), token));
        assert!(!v.check(t0, ip("10.0.0.2"), token), "another IP");
        assert!(!v.check(t0, ip("10.0.0.1"), Token(token.0 ^ 1)), "forged");
        assert!(
            v.check(t0 + TOKEN_EPOCH, ip("10.0.0.1"), token),
            "the next epoch"
        );
        assert!(
            !v.check(t0 + TOKEN_EPOCH * 2, ip("10.0.0.1"), token),
            "expired"
        );
        let other = AddressValidator::new(8).issue(t0, ip("10.0.0.1"));
        assert!(!v.check(t0, ip("10.0.0.1"), other), "another key");
    }

    #[test]
    fn validated_requests_round_trip_and_only_requests_are_wrapped() {
        let mut v = AddressValidator::new(1);
        let now = Instant::now();
        let list = Message::ListPeers {
            request: RequestId(3),
            page: 2,
        };
        let token = v.issue(now, ip("10.0.0.1"));
        let wrapped = list.with_token(Some(token));
        let decoded = decode(&wrapped.encode()).unwrap();
        assert!(matches!(decoded, Message::Validated { .. }));
        assert_eq!(
            v.open(now, ip("10.0.0.1"), decoded.clone()),
            Some((list.clone(), true))
        );
        assert_eq!(
            v.open(now, ip("10.0.0.9"), decoded),
            Some((list.clone(), false))
        );
        assert_eq!(
            v.open(now, ip("10.0.0.1"), list.clone()),
            Some((list, false))
        );
        // A reply is never wrapped, and needs no proof.
        let fin = Message::FinAck {
            transfer: crate::wire::TransferId(1),
        };
        assert_eq!(fin.with_token(Some(token)), fin);
        assert_eq!(v.open(now, ip("10.0.0.1"), fin.clone()), Some((fin, true)));
    }

    #[test]
    fn a_validated_body_must_be_one_request() {
        let mut v = AddressValidator::new(1);
        let now = Instant::now();
        let token = v.issue(now, ip("10.0.0.1"));
        let nested = Message::ListPeers {
            request: RequestId(1),
            page: 0,
        }
        .with_token(Some(token));
        let twice = Message::Validated {
            token,
            body: rmp_serde::to_vec(&nested).unwrap(),
        };
        assert_eq!(v.open(now, ip("10.0.0.1"), twice), None, "no nesting");
        let garbage = Message::Validated {
            token,
            body: vec![0xc1; 10],
        };
        assert_eq!(v.open(now, ip("10.0.0.1"), garbage), None);
        let huge = Message::Validated {
            token,
            body: vec![0; crate::wire::MAX_VALIDATED_BODY + 1],
        };
        assert!(decode(&huge.encode()).is_err(), "over the limit");
    }

    /// Two servers on one IP (peers on one machine, behind one NAT) key their own tokens: the
    /// one from each goes back to it, never to the other (which would refuse it, and a client
    /// alternating between them would never be served: seen with 8 seeders on 127.0.0.1).
    #[test]
    fn tokens_are_kept_per_server_not_per_ip() {
        let now = Instant::now();
        let (a, b): (SocketAddr, SocketAddr) = (
            "10.0.0.1:7001".parse().unwrap(),
            "10.0.0.1:7002".parse().unwrap(),
        );
        let (mut va, mut vb) = (AddressValidator::new(1), AddressValidator::new(2));
        let me = ip("10.0.0.9");
        let mut cache = TokenCache::default();
        cache.insert(a, va.issue(now, me));
        cache.insert(b, vb.issue(now, me));
        let ask = Message::IndexRequest {
            request: RequestId(1),
            page: 0,
        };
        assert!(matches!(
            va.open(now, me, cache.wrap(a, &ask)),
            Some((_, true))
        ));
        assert!(matches!(
            vb.open(now, me, cache.wrap(b, &ask)),
            Some((_, true))
        ));
        // The other server's token proves nothing here.
        assert!(matches!(
            va.open(now, me, cache.wrap(b, &ask)),
            Some((_, false))
        ));
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut c = TokenCache::default();
        for n in 0..(MAX_TOKENS as u32 + 10) {
            c.insert(
                SocketAddr::new(IpAddr::from(n.to_be_bytes()), 9),
                Token(u64::from(n)),
            );
            assert!(c.tokens.len() <= MAX_TOKENS);
        }
    }
}
