//! Thin tokio drivers that run the state machines on a [`Transport`](crate::transport::Transport):
//! the [`tracker`] service and the peer [`endpoint`] (serves files and index pages, downloads,
//! talks to the tracker). They use only `tokio::time` for time and `std::fs` for files, so the
//! same code runs on real sockets and, deterministically, inside a turmoil simulation.

pub mod endpoint;
pub mod lock;
pub mod resume;
pub mod storage;
pub mod swarm;
pub mod tracker;

pub use endpoint::{
    spawn_endpoint, DownloadReport, EndpointConfig, EndpointHandle, FoundPeer, HeldEntry,
    PartialServed, Progress, Punched, ServiceError, UploadNotice, NOT_HELD, PIECE_REFETCHES,
};
pub use p2p_proto::wire::paginate;
pub use tracker::{
    random_seed, run_tracker, run_tracker_limited, run_tracker_seeded, run_tracker_with,
    BindingsFile, RelayConfig, RelayEvent, TrackerEvent, TrackerSettings, BINDINGS_REFRESH,
    BINDINGS_SAVE_EVERY,
};
