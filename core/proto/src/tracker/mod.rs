//! The tracker: which peers are live, under which names, until when ([`Registry`]), and the
//! answers to their requests ([`Tracker`]), without I/O.

mod handler;
mod registry;

pub use handler::{
    network_of, Tracker, TrackerEvent, ALWAYS_FRESH, INTRODUCTIONS, KEPT_SNAPSHOTS, LISTERS,
    NEW_NAMES, SNAPSHOT_EVERY,
};
pub use registry::{validate_name, RegisterError, Registry, RegistryConfig};
