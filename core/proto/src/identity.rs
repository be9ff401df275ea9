//! Peer identity: a long-term Ed25519 key pair whose holder alone may take, keep or give up a
//! name bound to it at a tracker.
//!
//! A peer with an identity sends its name requests (`Register`, `Heartbeat`, `Unregister`)
//! as [`Message::Signed`]: the request's bytes, its public key, and a signature of
//! [`CONTEXT`], the address token the message travels with, and those bytes. The token binds
//! the signature to the peer's address (the tracker issued it to that IP), so a signed
//! request seen on the path cannot be replayed from elsewhere; a bare `Signed` (no token) is
//! answered with a `Retry`. The tracker binds a name to the first key that proves it (see
//! `tracker::registry`), and from then on refuses the name to any other key, and to
//! unsigned requests, for as long as it remembers the binding.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::wire::{Message, Token};

/// What every signature covers first: this protocol's name requests, version 1.
pub const CONTEXT: &[u8] = b"p2p name request v1\0";

/// An Ed25519 public key.
pub type PublicKey = [u8; 32];

/// A peer's key pair.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", fingerprint(&self.public()))
    }
}

impl Identity {
    /// The key pair of the 32-byte secret `secret` (keep it private: whoever has it is the
    /// peer).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Identity {
            key: SigningKey::from_bytes(&secret),
        }
    }

    /// The 32 secret bytes, for signing with another library's Ed25519 types (the DHT's
    /// BEP 44 records, whose signed bytes never start with [`CONTEXT`]). Keep them private.
    pub fn secret(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        self.key.verifying_key().to_bytes()
    }

    /// The X25519 secret of this identity (the Ed25519 secret scalar, unreduced): the static
    /// key of its secure channels, whose public half is
    /// [`x25519_public`](crate::secure::x25519_public) of [`public`](Self::public).
    pub(crate) fn x25519_secret(&self) -> [u8; 32] {
        self.key.to_scalar_bytes()
    }

    /// `msg` signed over `token` (0 without one).
    pub fn sign(&self, token: Option<Token>, msg: &Message) -> Message {
        let body = rmp_serde::to_vec(msg).expect("encoding to a Vec never fails");
        let sig = self.key.sign(&signed_bytes(token, &body));
        Message::Signed {
            key: self.public().to_vec(),
            sig: sig.to_bytes().to_vec(),
            body,
        }
    }
}

/// Whether `msg` is a name request, which a peer with an identity signs.
pub fn is_name_request(msg: &Message) -> bool {
    matches!(
        msg,
        Message::Register { .. } | Message::Heartbeat { .. } | Message::Unregister { .. }
    )
}

/// The name request a [`Message::Signed`] carries, and the key that signed it, if its
/// signature over `token` holds and the request is a name request; `None` otherwise.
pub fn open(
    token: Option<Token>,
    key: &[u8],
    sig: &[u8],
    body: &[u8],
) -> Option<(Message, PublicKey)> {
    let key: PublicKey = key.try_into().ok()?;
    let sig: [u8; 64] = sig.try_into().ok()?;
    let verifying = VerifyingKey::from_bytes(&key).ok()?;
    verifying
        .verify(&signed_bytes(token, body), &Signature::from_bytes(&sig))
        .ok()?;
    let msg = Message::open_validated(body).ok()?;
    is_name_request(&msg).then_some((msg, key))
}

/// A short, readable form of `key` for logs and errors (its first 8 bytes in hex).
pub fn fingerprint(key: &PublicKey) -> String {
    key[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn signed_bytes(token: Option<Token>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CONTEXT.len() + 8 + body.len());
    out.extend_from_slice(CONTEXT);
    out.extend_from_slice(&token.map_or(0, |t| t.0).to_le_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{RequestId, TransportKind};

    fn register() -> Message {
        Message::Register {
            request: RequestId(7),
            name: "alice".into(),
            port: 7000,
            transport: TransportKind::Udp,
        }
    }

    fn parts(m: &Message) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        match m {
            Message::Signed { key, sig, body } => (key.clone(), sig.clone(), body.clone()),
            other => panic!("not signed: {other:?}"),
        }
    }

    /// A signed request opens with its key under the token it was signed over, and under no
    /// other token, key or body; it round-trips through the wire.
    #[test]
    fn a_signature_holds_for_its_token_only() {
        let alice = Identity::from_secret([1; 32]);
        let signed = alice.sign(Some(Token(42)), &register());
        let decoded = crate::wire::decode(&signed.encode()).unwrap();
        assert_eq!(decoded, signed);
        let (key, sig, body) = parts(&signed);
        assert_eq!(
            open(Some(Token(42)), &key, &sig, &body),
            Some((register(), alice.public()))
        );
        assert_eq!(open(Some(Token(43)), &key, &sig, &body), None);
        assert_eq!(open(None, &key, &sig, &body), None);
        let mallory = Identity::from_secret([2; 32]).public();
        assert_eq!(open(Some(Token(42)), &mallory, &sig, &body), None);
        let mut other = body.clone();
        *other.last_mut().unwrap() ^= 1;
        assert_eq!(open(Some(Token(42)), &key, &sig, &other), None);
    }

    /// Only name requests are signed and opened.
    #[test]
    fn only_name_requests_open() {
        let alice = Identity::from_secret([3; 32]);
        let other = Message::ListPeers {
            request: RequestId(1),
            page: 0,
        };
        let (key, sig, body) = parts(&alice.sign(None, &other));
        assert_eq!(open(None, &key, &sig, &body), None);
        assert!(is_name_request(&register()));
        assert!(!is_name_request(&other));
    }
}
