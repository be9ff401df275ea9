//! Fuzz entry points for the protocol core, shared by the cargo-fuzz targets in `fuzz/` and by
//! the corpus replay test `core/proto/tests/fuzz_corpus.rs` (so `cargo test` runs the corpus on
//! stable).
//!
//! Each `*_target` takes arbitrary bytes and panics only when an invariant of the code under
//! test breaks: the bytes are read as a small program (a header, then operations) that drives
//! one state machine with a fake clock, checking its outputs after every step. Reading past
//! the end of the input yields zeros, so every byte string is a valid program.
//!
//! Not part of the stable API: hidden from the docs, free to change with the fuzz targets.

// One file per target (the decoder, the sender, the receiver, the tracker registry), and the
// helpers they share: the byte-program reader, the synthetic file content. The envelope for
// mutated bodies and the sample messages are `crate::testing`'s, re-exported here for the fuzz
// targets and other crates' tests.
mod decode;
mod receiver;
mod registry;
mod sender;
mod shared;

pub use crate::testing::{sample_messages, seal};
pub use decode::decode_target;
pub use receiver::{receiver_run, receiver_target};
pub use registry::{check_registry_ops, registry_target, RegistryOp, REGISTRY_NAMES};
pub use sender::{sender_run, sender_target};
pub use shared::RunSummary;
