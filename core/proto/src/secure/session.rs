//! One established session: the two transport keys of a finished Noise handshake, used
//! with explicit nonces, the peer's identity key, the index each side chose, the send
//! counter and the replay window.
//!
//! The keys are Noise's own (the handshake's split, [`SessionKeys::split`]) and the cipher
//! is the one the protocol names, AES-256-GCM from `ring`, nonce and empty associated data
//! as Noise lays them out: a frame is what snow's `StatelessTransportState` would seal (a
//! test holds the two to the same bytes). `ring` is called directly only because it seals
//! and opens in place, where snow copies every message into a second buffer.
//!
//! A session is shared (`Arc`): sealing needs only `&self` (the counter is atomic), so a
//! driver seals outside any lock on the table; opening takes the replay window's lock only
//! around the window check.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use snow::HandshakeState;

use super::frame::{sealed_head, MAX_SEALED_PLAINTEXT, SEALED_HEAD, TAG_LEN};
use super::replay::ReplayWindow;
use super::SecureError;
use crate::identity::PublicKey;

/// The transport keys of a finished handshake: one to seal with, one to open with.
pub(super) struct SessionKeys {
    send: LessSafeKey,
    recv: LessSafeKey,
}

impl SessionKeys {
    /// The keys `state`, a finished handshake, splits into (Noise's `Split()`): the
    /// initiator seals with the first and opens with the second, the responder the other
    /// way round.
    pub(super) fn split(state: &mut HandshakeState) -> Result<SessionKeys, SecureError> {
        if !state.is_handshake_finished() {
            return Err(SecureError::Handshake("not finished"));
        }
        let (mut first, mut second) = state.dangerously_get_raw_split();
        let key = |k: &[u8; 32]| {
            UnboundKey::new(&AES_256_GCM, k)
                .map(LessSafeKey::new)
                .map_err(|_| SecureError::Handshake("no AES-256-GCM key"))
        };
        let keys = if state.is_initiator() {
            (key(&first), key(&second))
        } else {
            (key(&second), key(&first))
        };
        first.fill(0);
        second.fill(0);
        Ok(SessionKeys {
            send: keys.0?,
            recv: keys.1?,
        })
    }
}

/// Noise's AES-GCM nonce: 4 zero bytes, then the counter big-endian.
fn noise_nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// An established secure session with one peer.
pub struct Session {
    keys: SessionKeys,
    peer: PublicKey,
    local_index: u32,
    remote_index: u32,
    next_nonce: AtomicU64,
    replay: Mutex<ReplayWindow>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &crate::identity::fingerprint(&self.peer))
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(super) fn new(
        keys: SessionKeys,
        peer: PublicKey,
        local_index: u32,
        remote_index: u32,
    ) -> Self {
        Session {
            keys,
            peer,
            local_index,
            remote_index,
            next_nonce: AtomicU64::new(0),
            replay: Mutex::new(ReplayWindow::default()),
        }
    }

    /// The peer's Ed25519 identity key, proven by the handshake.
    pub fn peer(&self) -> PublicKey {
        self.peer
    }

    /// The index this side chose (the peer's frames carry it).
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// Appends to `out` a `Sealed` frame of `plaintext` (at most
    /// [`MAX_SEALED_PLAINTEXT`] bytes) under the next nonce.
    pub fn seal_into(&self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), SecureError> {
        if plaintext.len() > MAX_SEALED_PLAINTEXT {
            return Err(SecureError::TooLarge(plaintext.len()));
        }
        let start = out.len();
        out.reserve(SEALED_HEAD + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&[0; SEALED_HEAD]);
        out.extend_from_slice(plaintext);
        self.seal_in_place(out, start)
    }

    /// Seals in place the frame that starts at `frame[start]`: [`SEALED_HEAD`] bytes of
    /// room for its head (whatever they hold), then the plaintext (at most
    /// [`MAX_SEALED_PLAINTEXT`] bytes), which is encrypted where it lies; the tag is appended.
    /// A sender that reads a chunk straight into such a buffer seals it without a copy. On
    /// an error, `frame` is cut back to `start`.
    pub fn seal_in_place(&self, frame: &mut Vec<u8>, start: usize) -> Result<(), SecureError> {
        let at = start + SEALED_HEAD;
        let refuse = |frame: &mut Vec<u8>, e: SecureError| {
            frame.truncate(start);
            Err(e)
        };
        let Some(len) = frame.len().checked_sub(at) else {
            return refuse(frame, SecureError::Malformed("no room for the head"));
        };
        if len > MAX_SEALED_PLAINTEXT {
            return refuse(frame, SecureError::TooLarge(len));
        }
        let nonce = self.next_nonce.fetch_add(1, Ordering::Relaxed);
        if nonce >= u64::MAX - 1 {
            return refuse(frame, SecureError::Exhausted);
        }
        frame[start..at].copy_from_slice(&sealed_head(self.remote_index, nonce));
        let sealed = self.keys.send.seal_in_place_separate_tag(
            noise_nonce(nonce),
            Aad::empty(),
            &mut frame[at..],
        );
        match sealed {
            Ok(tag) => {
                frame.extend_from_slice(tag.as_ref());
                Ok(())
            }
            Err(_) => refuse(frame, SecureError::Handshake("cipher refused to seal")),
        }
    }

    /// A `Sealed` frame of `plaintext`.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, SecureError> {
        let mut out = Vec::with_capacity(plaintext.len() + super::SEAL_OVERHEAD);
        self.seal_into(plaintext, &mut out)?;
        Ok(out)
    }

    /// Opens `in_out` (a `Sealed` frame's ciphertext and tag under `nonce`) where it lies:
    /// the plaintext's length, its bytes at the start of `in_out`. Refused if it fails
    /// authentication, or if the nonce was taken before or is too old (replay window); then
    /// `in_out` holds nothing of use.
    pub fn open_in_place(&self, nonce: u64, in_out: &mut [u8]) -> Result<usize, SecureError> {
        if in_out.len() < TAG_LEN {
            return Err(SecureError::Malformed("shorter than a tag"));
        }
        if nonce >= u64::MAX - 1 || !self.window().may_take(nonce) {
            return Err(SecureError::Replayed(nonce));
        }
        let n = self
            .keys
            .recv
            .open_in_place(noise_nonce(nonce), Aad::empty(), in_out)
            .map_err(|_| SecureError::Unauthentic)?
            .len();
        // Taken only now that the frame proved authentic: a forged frame cannot use up a
        // nonce.
        if !self.window().take(nonce) {
            return Err(SecureError::Replayed(nonce));
        }
        Ok(n)
    }

    fn window(&self) -> std::sync::MutexGuard<'_, ReplayWindow> {
        self.replay.lock().unwrap_or_else(|e| e.into_inner())
    }
}
