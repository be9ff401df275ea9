//! The tracker: which peers are live, under which names, until when ([`Registry`]), what
//! content they announced ([`HoldersConfig`]), the answers to their requests ([`Tracker`]),
//! and the relay between peers that cannot reach each other ([`Relay`]), without I/O.

mod bindings;
mod handler;
mod holders;
mod registry;
mod relay;

pub use bindings::{decode_bindings, encode_bindings, SavedBinding, BINDINGS_HEADER};
pub use handler::{
    network_of, Tracker, TrackerEvent, ALWAYS_FRESH, INTRODUCTIONS, KEPT_SNAPSHOTS, LISTERS,
    NEW_NAMES, SNAPSHOT_EVERY,
};
pub use holders::{HoldersConfig, MAX_HASHES_PER_PEER, MAX_HASH_ENTRIES};
pub use registry::{
    validate_name, AnnounceError, RegisterError, Registry, RegistryConfig, BINDING_KEEP,
    HOLDERS_PER_PAGE,
};
pub use relay::{
    CloseReason, Relay, RelayConfig, RelayError, RelayEvent, RELAY_EVENTS, SESSION_BYTES,
};
