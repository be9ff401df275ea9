//! The tracker's state: which peers are live, under which names, until when.

mod registry;

pub use registry::{validate_name, RegisterError, Registry, RegistryConfig};
