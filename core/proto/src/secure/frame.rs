//! The secure channel's frames: three handshake frames and the `Sealed` data frame, each
//! behind a 4-byte header (`"P2N"` and a type byte) that no protocol v1 message starts with
//! (those start with `"P2P"`), so a frame is told from a plaintext message by its first bytes
//! alone, as [`is_relayed`](crate::wire::is_relayed) tells a relayed datagram.
//!
//! Every frame has a fixed layout and, but for `Sealed`, a fixed size; [`Frame::parse`] checks
//! the size before it looks at anything else and borrows from the input (no allocation).

use super::SecureError;

/// First bytes of every frame: `"P2N"` (where a v1 message has `"P2P"`).
pub const FRAME_MAGIC: [u8; 3] = *b"P2N";

/// Type byte of an IK initiation (the initiator knows the responder's key).
pub const TYPE_INIT_IK: u8 = 1;
/// Type byte of an XX initiation (the initiator does not know the responder's key).
pub const TYPE_INIT_XX: u8 = 2;
/// Type byte of a response (IK's second message or XX's second).
pub const TYPE_RESPONSE: u8 = 3;
/// Type byte of XX's third message (the initiator's key).
pub const TYPE_FINISH: u8 = 4;
/// Type byte of a data frame.
pub const TYPE_SEALED: u8 = 5;

/// Bytes of the header every frame starts with: magic and type.
pub const FRAME_HEADER: usize = 4;
/// Bytes of the AEAD tag of a sealed payload.
pub const TAG_LEN: usize = 16;
/// Bytes of a `Sealed` frame before its ciphertext: header, receiver index, nonce.
pub const SEALED_HEAD: usize = FRAME_HEADER + 4 + 8;
/// Bytes a `Sealed` frame adds to its plaintext: head and tag.
pub const SEAL_OVERHEAD: usize = SEALED_HEAD + TAG_LEN;
/// Largest plaintext one `Sealed` frame carries (a Noise message is at most 65,535 bytes,
/// tag included).
pub const MAX_SEALED_PLAINTEXT: usize = 65_535 - TAG_LEN;

/// Bytes of the handshake payload that carries a peer's Ed25519 key, sealed (key and tag).
const KEY_PAYLOAD: usize = 32 + TAG_LEN;
/// Noise bytes of an IK initiation: e, s (sealed), the initiator's Ed25519 key (sealed).
pub const IK_INIT_NOISE: usize = 32 + 32 + TAG_LEN + KEY_PAYLOAD;
/// Zeros an XX initiation carries after its ephemeral key, so that the response (which
/// carries the responder's keys) is never more than 3 times the initiation's bytes.
pub const XX_PADDING: usize = 32;
/// Noise bytes of an XX initiation: e, then the padding as its (unencrypted) payload.
pub const XX_INIT_NOISE: usize = 32 + XX_PADDING;
/// Noise bytes of an IK response: e, the responder's Ed25519 key (sealed).
pub const IK_RESPONSE_NOISE: usize = 32 + KEY_PAYLOAD;
/// Noise bytes of an XX response: e, s (sealed), the responder's Ed25519 key (sealed).
pub const XX_RESPONSE_NOISE: usize = 32 + 32 + TAG_LEN + KEY_PAYLOAD;
/// Noise bytes of an XX finish: s (sealed), the initiator's Ed25519 key (sealed).
pub const XX_FINISH_NOISE: usize = 32 + TAG_LEN + KEY_PAYLOAD;

/// Bytes of an initiation frame before its Noise message: header, sender index.
pub const INIT_HEAD: usize = FRAME_HEADER + 4;
/// Bytes of a response frame before its Noise message: header, sender and receiver index.
pub const RESPONSE_HEAD: usize = FRAME_HEADER + 8;
/// Bytes of a finish frame before its Noise message: header, receiver index.
pub const FINISH_HEAD: usize = FRAME_HEADER + 4;

/// Whether `bytes` start like a secure frame (magic only, nothing checked further): what a
/// transport looks at in every message to tell frames from plaintext.
pub fn is_frame(bytes: &[u8]) -> bool {
    bytes.len() >= FRAME_HEADER && bytes[..3] == FRAME_MAGIC
}

/// A parsed frame, borrowing its variable parts from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// First handshake message, IK (`ik`) or XX.
    Init {
        /// IK: the initiator knows the responder's static key.
        ik: bool,
        /// The initiator's index for the session: the responder's frames carry it.
        sender: u32,
        /// The Noise message.
        noise: &'a [u8],
    },
    /// Second handshake message.
    Response {
        /// The responder's index for the session.
        sender: u32,
        /// The initiator's index, from the initiation.
        receiver: u32,
        /// The Noise message (IK or XX: told apart by the initiator's state).
        noise: &'a [u8],
    },
    /// XX's third handshake message.
    Finish {
        /// The responder's index.
        receiver: u32,
        /// The Noise message.
        noise: &'a [u8],
    },
    /// A data frame.
    Sealed {
        /// The index the receiver chose for the session.
        receiver: u32,
        /// The AEAD nonce (the sender's counter).
        nonce: u64,
        /// Ciphertext and tag.
        ciphertext: &'a [u8],
    },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl<'a> Frame<'a> {
    /// Parses `bytes`: a typed error for anything that is not exactly one of the layouts.
    pub fn parse(bytes: &'a [u8]) -> Result<Frame<'a>, SecureError> {
        if !is_frame(bytes) {
            return Err(SecureError::Malformed("not a frame"));
        }
        let exact = |len: usize| {
            if bytes.len() == len {
                Ok(())
            } else {
                Err(SecureError::Malformed("wrong length for its type"))
            }
        };
        match bytes[3] {
            t @ (TYPE_INIT_IK | TYPE_INIT_XX) => {
                let ik = t == TYPE_INIT_IK;
                exact(INIT_HEAD + if ik { IK_INIT_NOISE } else { XX_INIT_NOISE })?;
                Ok(Frame::Init {
                    ik,
                    sender: u32_at(bytes, FRAME_HEADER),
                    noise: &bytes[INIT_HEAD..],
                })
            }
            TYPE_RESPONSE => {
                let len = bytes.len();
                if len != RESPONSE_HEAD + IK_RESPONSE_NOISE
                    && len != RESPONSE_HEAD + XX_RESPONSE_NOISE
                {
                    return Err(SecureError::Malformed("wrong length for its type"));
                }
                Ok(Frame::Response {
                    sender: u32_at(bytes, FRAME_HEADER),
                    receiver: u32_at(bytes, FRAME_HEADER + 4),
                    noise: &bytes[RESPONSE_HEAD..],
                })
            }
            TYPE_FINISH => {
                exact(FINISH_HEAD + XX_FINISH_NOISE)?;
                Ok(Frame::Finish {
                    receiver: u32_at(bytes, FRAME_HEADER),
                    noise: &bytes[FINISH_HEAD..],
                })
            }
            TYPE_SEALED => {
                if bytes.len() < SEAL_OVERHEAD || bytes.len() > SEALED_HEAD + 65_535 {
                    return Err(SecureError::Malformed("wrong length for its type"));
                }
                let mut nonce = [0; 8];
                nonce.copy_from_slice(&bytes[FRAME_HEADER + 4..SEALED_HEAD]);
                Ok(Frame::Sealed {
                    receiver: u32_at(bytes, FRAME_HEADER),
                    nonce: u64::from_le_bytes(nonce),
                    ciphertext: &bytes[SEALED_HEAD..],
                })
            }
            _ => Err(SecureError::Malformed("unknown frame type")),
        }
    }

    /// Appends the frame's bytes to `out` (the inverse of [`parse`](Self::parse)).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        if let Frame::Sealed {
            receiver,
            nonce,
            ciphertext,
        } = *self
        {
            out.extend_from_slice(&sealed_head(receiver, nonce));
            out.extend_from_slice(ciphertext);
            return;
        }
        out.extend_from_slice(&FRAME_MAGIC);
        match *self {
            Frame::Init { ik, sender, noise } => {
                out.push(if ik { TYPE_INIT_IK } else { TYPE_INIT_XX });
                out.extend_from_slice(&sender.to_le_bytes());
                out.extend_from_slice(noise);
            }
            Frame::Response {
                sender,
                receiver,
                noise,
            } => {
                out.push(TYPE_RESPONSE);
                out.extend_from_slice(&sender.to_le_bytes());
                out.extend_from_slice(&receiver.to_le_bytes());
                out.extend_from_slice(noise);
            }
            Frame::Finish { receiver, noise } => {
                out.push(TYPE_FINISH);
                out.extend_from_slice(&receiver.to_le_bytes());
                out.extend_from_slice(noise);
            }
            Frame::Sealed { .. } => unreachable!("encoded above"),
        }
    }

    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// The head of a `Sealed` frame (everything before the ciphertext).
pub(super) fn sealed_head(receiver: u32, nonce: u64) -> [u8; SEALED_HEAD] {
    let mut head = [0; SEALED_HEAD];
    head[..3].copy_from_slice(&FRAME_MAGIC);
    head[3] = TYPE_SEALED;
    head[4..8].copy_from_slice(&receiver.to_le_bytes());
    head[8..].copy_from_slice(&nonce.to_le_bytes());
    head
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{is_relayed, Message, RequestId, MAGIC};

    /// Frames and v1 messages are told apart by their first bytes, both ways.
    #[test]
    fn frames_and_messages_never_look_alike() {
        let msg = Message::ListPeers {
            request: RequestId(1),
            page: 0,
        }
        .encode();
        assert!(!is_frame(&msg));
        let sealed = Frame::Sealed {
            receiver: 1,
            nonce: 2,
            ciphertext: &[0; 20],
        }
        .encode();
        assert!(is_frame(&sealed));
        assert!(!sealed.starts_with(&MAGIC));
        assert!(!is_relayed(&sealed));
        assert!(crate::wire::decode(&sealed).is_err());
    }

    /// Every frame round-trips, and a byte more or less is refused.
    #[test]
    fn frames_round_trip_and_lengths_are_exact() {
        let ik = [7; IK_INIT_NOISE];
        let xx = [8; XX_INIT_NOISE];
        let resp = [9; IK_RESPONSE_NOISE];
        let resp_xx = [9; XX_RESPONSE_NOISE];
        let fin = [10; XX_FINISH_NOISE];
        let frames = [
            Frame::Init {
                ik: true,
                sender: 5,
                noise: &ik,
            },
            Frame::Init {
                ik: false,
                sender: 6,
                noise: &xx,
            },
            Frame::Response {
                sender: 1,
                receiver: 2,
                noise: &resp,
            },
            Frame::Response {
                sender: 1,
                receiver: 2,
                noise: &resp_xx,
            },
            Frame::Finish {
                receiver: 3,
                noise: &fin,
            },
            Frame::Sealed {
                receiver: u32::MAX,
                nonce: u64::MAX,
                ciphertext: &[1; TAG_LEN + 3],
            },
        ];
        for f in frames {
            let bytes = f.encode();
            assert_eq!(Frame::parse(&bytes), Ok(f.clone()));
            assert!(Frame::parse(&bytes[..bytes.len() - 1]).is_err() || f.is_sealed());
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Frame::parse(&longer).is_err() || f.is_sealed());
        }
        assert!(Frame::parse(&[b'P', b'2', b'N', TYPE_SEALED]).is_err());
        assert!(Frame::parse(&[b'P', b'2', b'N', 99, 0, 0, 0, 0]).is_err());
    }

    /// A response is never more than 3 times its initiation (no amplification).
    #[test]
    fn responses_are_at_most_three_times_initiations() {
        let ik_init = INIT_HEAD + IK_INIT_NOISE;
        let xx_init = INIT_HEAD + XX_INIT_NOISE;
        assert!(RESPONSE_HEAD + IK_RESPONSE_NOISE <= 3 * ik_init);
        assert!(RESPONSE_HEAD + XX_RESPONSE_NOISE <= 3 * xx_init);
    }

    impl Frame<'_> {
        fn is_sealed(&self) -> bool {
            matches!(self, Frame::Sealed { .. })
        }
    }
}
