//! `p2p peers`: who is online, as the tracker lists them.

use anyhow::Result;
use serde_json::json;

use super::swarm_get;
use crate::cli::PeersArgs;
use crate::failure::{failure, Kind, WithKind};
use crate::output::clean;
use crate::session;

pub(crate) async fn run(args: PeersArgs) -> Result<()> {
    let t = &args.tracker;
    let has = match args.has.as_deref().map(|h| {
        swarm_get::parse_hash(h).unwrap_or_else(|| {
            Err(format!(
                "--has {}: expected blake3: and 64 hex digits",
                clean(h)
            ))
        })
    }) {
        Some(Ok(hash)) => Some(hash),
        Some(Err(e)) => return Err(failure(Kind::Usage, e)),
        None => None,
    };
    let via = session::tracker_client(t).await?;
    let peers = match has {
        Some(hash) => via.who_has(t.tracker, hash).await,
        None => via.list_peers(t.tracker).await,
    };
    let peers = peers.with_kind(Kind::TrackerUnreachable, || {
        format!(
            "cannot reach the tracker at {} over {} (start one with `p2p tracker`, or pass --tracker ADDR)",
            t.tracker, t.transport
        )
    })?;
    if args.json {
        let list: Vec<_> = peers
            .iter()
            .map(|p| json!({"name": p.name, "addr": p.addr.to_string(), "transport": p.transport.to_string()}))
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else if peers.is_empty() && has.is_some() {
        println!("No live peer shares it.");
    } else if peers.is_empty() {
        println!("No peers online.");
    } else {
        println!("Current Peers:");
        for p in peers {
            println!("  - {} ({} {})", clean(&p.name), p.addr, p.transport);
        }
    }
    Ok(())
}
