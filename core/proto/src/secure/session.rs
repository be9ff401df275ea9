//! One established session: the two transport ciphers of a finished Noise handshake, used
//! with explicit nonces (snow's `StatelessTransportState`), the peer's identity key, the
//! index each side chose, the send counter and the replay window.
//!
//! A session is shared (`Arc`): sealing needs only `&self` (the counter is atomic), so a
//! driver seals outside any lock on the table; opening takes the replay window's lock only
//! around the window check.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use snow::StatelessTransportState;

use super::frame::{push_sealed_head, MAX_SEALED_PLAINTEXT, TAG_LEN};
use super::replay::ReplayWindow;
use super::SecureError;
use crate::identity::PublicKey;

/// An established secure session with one peer.
pub struct Session {
    cipher: StatelessTransportState,
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
        cipher: StatelessTransportState,
        peer: PublicKey,
        local_index: u32,
        remote_index: u32,
    ) -> Self {
        Session {
            cipher,
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
        let nonce = self.next_nonce.fetch_add(1, Ordering::Relaxed);
        if nonce >= u64::MAX - 1 {
            return Err(SecureError::Exhausted);
        }
        let start = out.len();
        push_sealed_head(out, self.remote_index, nonce);
        let at = out.len();
        out.resize(at + plaintext.len() + TAG_LEN, 0);
        match self.cipher.write_message(nonce, plaintext, &mut out[at..]) {
            Ok(n) if n == plaintext.len() + TAG_LEN => Ok(()),
            _ => {
                out.truncate(start);
                Err(SecureError::Handshake("cipher refused to seal"))
            }
        }
    }

    /// A `Sealed` frame of `plaintext`.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, SecureError> {
        let mut out = Vec::with_capacity(plaintext.len() + super::SEAL_OVERHEAD);
        self.seal_into(plaintext, &mut out)?;
        Ok(out)
    }

    /// The plaintext of a `Sealed` frame's `ciphertext` under `nonce`: refused if it fails
    /// authentication, or if the nonce was taken before or is too old (replay window).
    pub fn open(&self, nonce: u64, ciphertext: &[u8]) -> Result<Vec<u8>, SecureError> {
        if ciphertext.len() < TAG_LEN {
            return Err(SecureError::Malformed("shorter than a tag"));
        }
        if !self.window().may_take(nonce) {
            return Err(SecureError::Replayed(nonce));
        }
        // Room for the tag too: the cipher then opens in place in `plain` instead of in a
        // copy of its own.
        let mut plain = vec![0; ciphertext.len()];
        match self.cipher.read_message(nonce, ciphertext, &mut plain) {
            Ok(n) if n == ciphertext.len() - TAG_LEN => plain.truncate(n),
            _ => return Err(SecureError::Unauthentic),
        }
        // Taken only now that the frame proved authentic: a forged frame cannot use up a
        // nonce.
        if !self.window().take(nonce) {
            return Err(SecureError::Replayed(nonce));
        }
        Ok(plain)
    }

    fn window(&self) -> std::sync::MutexGuard<'_, ReplayWindow> {
        self.replay.lock().unwrap_or_else(|e| e.into_inner())
    }
}
