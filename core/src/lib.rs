//! # p2p-core
//!
//! The async driver of the p2p protocol: it runs the sans-IO machines of [`p2p_proto`] on a
//! [`Transport`](transport::Transport), the disk and tokio's clock.
//!
//! - [`transport`]: the message-oriented [`Transport`](transport::Transport) trait the UDP and
//!   TCP adapters (and the simulations' sockets) implement;
//! - [`index`]: the share folder's index (stable IDs, sizes, BLAKE3 hashes of files and
//!   pieces, and of each folder as a collection), read from disk;
//! - [`secure`]: end-to-end encrypted, authenticated peer traffic: a transport wrapper
//!   running `p2p_proto::secure`'s Noise sessions;
//! - [`collection`]: folders as collections: the manifest of a folder's files and its hash;
//! - [`service`]: the tokio services: the tracker, and the peer endpoint (serve files,
//!   download, list), with partial files, checkpoints and destination locks.
//!
//! The drivers use only `tokio::time`, so the same code runs on real sockets and in turmoil's
//! simulated network.

#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

// The protocol modules, under the paths the driver's code uses.
use p2p_proto::{identity, limits, tracker, transfer, wire};

pub mod collection;
pub mod index;
pub mod relay;
pub mod secure;
pub mod service;
pub mod transport;
