//! # p2p-core
//!
//! The transport-agnostic heart of the p2p file sharing system.
//!
//! - [`wire`]: protocol v1 messages and their total, bounded decoder;
//! - [`tracker`]: the registry of live peers (names, addresses, expiry);
//! - [`index`]: the share folder's index (stable IDs, sizes, BLAKE3 hashes of files and pieces);
//! - [`limits`]: per-source rate limiting;
//! - [`transfer`]: the chunk/ACK/FIN sender and receiver state machines (sans-IO);
//! - [`transport`]: the message-oriented [`Transport`](transport::Transport) trait;
//! - [`service`]: thin tokio drivers that run the state machines on a transport: the tracker
//!   service and the peer endpoint (serve files, download, list).
//!
//! The state machines never touch a socket, a file or the clock; the drivers use only
//! `tokio::time`, so the same code runs on real sockets and in turmoil's simulated network.

#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

#[doc(hidden)]
pub mod fuzzing;
pub mod index;
pub mod limits;
pub mod service;
pub mod tracker;
pub mod transfer;
pub mod transport;
pub mod wire;
