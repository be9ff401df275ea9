//! # p2p-proto
//!
//! The sans-IO protocol of the p2p file sharing system: everything that decides what to send
//! and what a message means, and nothing that sends, reads a file or looks at the clock.
//!
//! - [`wire`]: protocol v1 messages and their total, bounded decoder;
//! - [`transfer`]: the chunk/ACK/FIN sender and receiver state machines, their congestion
//!   control, pacing and round-trip estimate;
//! - [`tracker`]: the registry of live peers (names, addresses, expiry);
//! - [`limits`]: per-source rate limiting;
//! - [`secure`]: the encrypted, authenticated channel between peers (Noise handshakes,
//!   sealed frames with explicit nonces, replay window);
//! - [`validation`]: address validation (tokens, `Retry`) before anything larger than a
//!   request goes to an address;
//! - `fuzzing` (feature `testing`): the programs the fuzz targets, the property tests and the
//!   corpus tests run against the machines above;
//! - `testing` (feature `testing`): the sender/receiver `Pair` on a simulated link and clock,
//!   `seal` and sample messages, for tests and benches.
//!
//! Time is an argument (`now: Instant`) everywhere; file bytes are ranges the caller reads
//! (`SenderTransmit::Chunk`) or writes. The dependencies (serde, rmp-serde, bytes, blake3,
//! crc32fast, thiserror, ed25519-dalek, snow) cannot reach tokio, a socket or a file:
//! `cargo tree -p p2p-proto` shows it (snow's getrandom reads the system's randomness for
//! ephemeral keys, unless a seed is given). The async driver that runs these machines on real or simulated sockets is
//! `p2p-core`.

#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod endpoint;
#[cfg(feature = "testing")]
pub mod fuzzing;
pub mod identity;
pub mod limits;
pub mod secure;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tracker;
pub mod transfer;
pub mod validation;
pub mod wire;
