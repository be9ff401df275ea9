//! `p2p tracker`: the registry of live peers, on UDP and TCP at the same port.

use anyhow::{Context, Result};
use p2p_core::service::{run_tracker_limited, TrackerEvent};
use p2p_proto::tracker::RegistryConfig;
use tokio::sync::mpsc;

use crate::cli::TrackerArgs;
use crate::output::clean;
use crate::session::bind_both;
use crate::signals::Shutdown;

pub(crate) async fn run(args: TrackerArgs) -> Result<()> {
    let mut shutdown = Shutdown::install();
    let (udp, tcp) = bind_both(args.listen, args.limits.tcp()).await?;
    let addr = udp.local_addr()?;
    let config = RegistryConfig {
        ttl: args.peer_ttl,
        heartbeat: args.heartbeat.min(args.peer_ttl),
        max_peers: args.max_peers,
    };
    println!(
        "tracker listening on {addr} (udp+tcp), peer ttl {}, heartbeat {}",
        humantime::format_duration(config.ttl),
        humantime::format_duration(config.heartbeat)
    );
    // Events are printed on a thread of their own: if nobody reads our stdout, only that
    // thread waits, its queue fills, and the tracker drops events instead of stalling.
    let (tx, mut rx) = mpsc::channel(EVENT_QUEUE);
    std::thread::spawn(move || {
        while let Some(e) = rx.blocking_recv() {
            match e {
                TrackerEvent::Registered {
                    name,
                    addr,
                    transport,
                } => println!("registered {} at {addr} ({transport})", clean(&name)),
                TrackerEvent::Refused { name, from, reason } => {
                    println!("refused {} from {from}: {}", clean(&name), clean(&reason))
                }
                TrackerEvent::Unregistered { name } => println!("unregistered {}", clean(&name)),
                TrackerEvent::Expired { name } => println!("expired {}", clean(&name)),
            }
        }
    });
    tokio::select! {
        r = run_tracker_limited(vec![udp, tcp], config, args.limits.rate(), Some(tx)) => {
            r.context("tracker stopped")?
        }
        _ = shutdown.wait() => println!("tracker stopping"),
    }
    Ok(())
}

/// Events waiting to be printed, at most.
const EVENT_QUEUE: usize = 1024;
