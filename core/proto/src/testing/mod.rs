//! Test harnesses of the protocol core, for this crate's tests, the property tests, the
//! benches and other crates' tests (feature `testing`; always in `cargo test` of this crate):
//!
//! - [`Pair`]: a [`ChunkReceiver`](crate::transfer::ChunkReceiver) and the
//!   [`ChunkSender`](crate::transfer::ChunkSender) its `Request` starts, on a simulated link
//!   (latency, and a [`Fate`] per message from a closure or a seeded [`RandomLink`]) with a
//!   fake clock, moving messages through the real wire encoding;
//! - [`seal`] and [`sample_messages`]: a valid envelope around any body, and one message of
//!   every variant.
//!
//! The fuzz programs, which drive one machine each from a byte program, are
//! [`crate::fuzzing`]'s.
//!
//! Not part of the stable API: free to change with the tests.

mod link;
mod messages;
mod pair;

pub use link::{Dir, Fate, Odds, RandomLink, Sent};
pub(crate) use messages::abort_reason;
pub use messages::{sample_messages, seal};
pub use pair::{Carry, Outcome, Pair, PairConfig, Pieces};
