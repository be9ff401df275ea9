//! The secure channel between peers, sans-IO: Noise handshakes (`snow`) that prove each
//! side's identity key and agree on fresh keys, and sessions that seal every message into a
//! `Sealed` frame with an explicit nonce, so that datagrams may be lost, reordered or
//! duplicated (a replay window refuses the duplicates).
//!
//! - **Identity.** A peer's Noise static key is its Ed25519 identity key
//!   ([`crate::identity::Identity`]) in X25519 form (the secret scalar, and the public
//!   point mapped to Montgomery form): one key pair, one identity. Each side sends its
//!   Ed25519 key inside the handshake (encrypted), and the other checks that it maps to
//!   the X25519 key the handshake proved.
//! - **Patterns.** `Noise_IK_25519_AESGCM_BLAKE2s` when the initiator knows the
//!   responder's key (one round trip, the initiator's identity hidden from onlookers);
//!   `Noise_XX_25519_AESGCM_BLAKE2s` when it does not (one and a half round trips).
//!   Forward secrecy from both sides' ephemeral keys. AES-256-GCM (from `ring`, hardware
//!   AES) seals 3x as fast as ChaCha20-Poly1305 on the machines peers run on.
//! - **Frames** ([`frame`]): `"P2N"` and a type byte, never the `"P2P"` of a v1 message.
//!   Each side picks a random 32-bit index for a session; the other side's frames carry
//!   it, so a data frame is routed without a lookup by address.
//! - **Amplification.** A response is at most 3 times its initiation (XX's initiation is
//!   padded for that); initiations are rate-limited per source IP and in all; a repeated
//!   initiation is answered with the same response, without new work.
//!
//! [`SessionTable`] holds everything and is driven as the other state machines are
//! (`connect`/`handle`/`handle_timeout` in, `poll_transmit`/`poll_event`/`poll_timeout`
//! out); data is sealed and opened by a [`Session`].

pub mod frame;
mod keys;
mod policy;
mod replay;
mod session;
mod table;

pub use frame::{
    is_frame, Frame, FRAME_HEADER, FRAME_MAGIC, MAX_SEALED_PLAINTEXT, SEALED_HEAD, SEAL_OVERHEAD,
    TAG_LEN,
};
pub use keys::{x25519_public, NOISE_IK, NOISE_XX, PROLOGUE};
pub use policy::{is_peer_message, sealed_only_refusal, SEALED_ONLY};
pub use replay::{ReplayWindow, WINDOW as REPLAY_WINDOW};
pub use session::Session;
pub use table::{Connect, Received, SecureConfig, SecureEvent, SessionTable, SESSIONS_PER_ADDR};

use crate::identity::{fingerprint, PublicKey};

/// What went wrong with a handshake or a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecureError {
    /// The peer proved a key other than the one expected (from a listing or a ticket).
    #[error(
        "the peer's identity key is {} where {} was expected",
        fingerprint(got),
        fingerprint(expected)
    )]
    WrongKey {
        /// The key expected.
        expected: PublicKey,
        /// The key the peer proved.
        got: PublicKey,
    },
    /// No answer to the handshake after every try.
    #[error("no answer to the secure handshake after {attempts} tries")]
    Timeout {
        /// Initiations sent.
        attempts: u32,
    },
    /// Bytes that are no valid frame.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// A key that is no valid Ed25519 public key.
    #[error("not a valid Ed25519 public key")]
    InvalidKey,
    /// The handshake could not go on.
    #[error("secure handshake failed: {0}")]
    Handshake(&'static str),
    /// A frame that fails authentication (forged or damaged).
    #[error("frame fails authentication")]
    Unauthentic,
    /// A frame for a session or handshake this side does not have.
    #[error("frame for an unknown session")]
    UnknownSession,
    /// A data frame from another address than its session's.
    #[error("frame from another address than its session's")]
    WrongAddress,
    /// A data frame whose nonce was seen before, or is too old for the replay window.
    #[error("nonce {0} replayed or too old")]
    Replayed(u64),
    /// Too many handshakes from this source or in all.
    #[error("handshake rate limit reached")]
    RateLimited,
    /// A message larger than one frame carries.
    #[error("message of {0} bytes too large to seal")]
    TooLarge(usize),
    /// The session sent 2^64 - 1 frames: a new handshake is needed.
    #[error("session nonces exhausted")]
    Exhausted,
    /// The handshake was dropped to make room for newer ones.
    #[error("too many handshakes in progress")]
    Busy,
    /// The handshake was dropped because its address was forgotten.
    #[error("handshake abandoned: the peer was forgotten")]
    Forgotten,
}

#[cfg(test)]
mod tests;
