//! # p2p-sim-tests
//!
//! Deterministic network-fault simulations of the p2p system on [turmoil]: a tracker and
//! peers run the real `p2p-core` services on simulated transports, under loss, duplication,
//! reordering, corruption, partitions, link flapping and crashes, and every run replays
//! exactly from its seed.
//!
//! - [`SimUdp`] and [`SimTcp`]: the `Transport` trait over turmoil's UDP and TCP;
//! - [`FaultyTransport`]: seeded per-message faults on either side, with counters;
//! - [`NatUdp`]: a NAT (cone or symmetric mapping, filtering, timeouts, low-TTL probes) in
//!   front of a peer's simulated UDP socket, for hole punching;
//! - [`SimDisk`]: a disk with seeded faults (`EIO`, `ENOSPC`, failed syncs, slow syncs) and
//!   crashes that lose or tear what was not synced;
//! - [`seeds_from_env`]: the seeds to run (`SIM_SEEDS=1000..1100` or `7,42`);
//! - [`run_scenario`] and [`check_download`]: the replay line and the invariant;
//! - [`Cluster`]: tracker and peer hosts with generated share folders, handles and a
//!   [`Trace`] whose digest shows that a seed replays exactly.
//!
//! Scenarios live in `tests/`. Replay one seed of one test with the line it prints:
//! `SIM_SEEDS=7 cargo test -p p2p-sim-tests --test loss loss_10_percent`.

#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod cluster;
pub mod disk;
pub mod faulty;
pub mod harness;
pub mod nat;
pub mod seeds;
pub mod tcp;
pub mod trace;
pub mod udp;

pub use cluster::{
    fast_endpoint, fast_registry, fetch, find_entry, generate_file, host_ip, mix, peer_addr,
    spawn_fetch, tracker_addr, wait_progress, Cluster, FetchTask, Handles, Net, PeerOpts,
    SharedFile, Tune, PEER_PORT, TICK, TRACKER, TRACKER_PORT,
};
pub use disk::{DiskFault, SimDisk};
pub use faulty::{
    Bottleneck, DirectionStats, FaultConfig, FaultRates, FaultStats, FaultyTransport, SharedStats,
};
pub use harness::{
    busy, check_download, run_for, run_scenario, run_seeds, run_sim, run_until, timed_out, Checked,
};
pub use nat::{
    punch_fetch, Filtering, Mapping, NatConfig, NatHandle, NatStats, NatTable, NatUdp,
    PunchedFetch, Route,
};
pub use seeds::{parse_seeds, seeds_from_env, DEFAULT_SEEDS};
pub use tcp::{SimTcp, SimTcpConfig};
pub use trace::{Trace, TraceEvent};
pub use udp::{SimUdp, SIM_UDP_MESSAGE};
