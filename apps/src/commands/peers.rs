//! `p2p peers`: who is online, as the tracker lists them.

use anyhow::Result;
use serde_json::json;

use crate::cli::PeersArgs;
use crate::failure::{Kind, WithKind};
use crate::output::clean;
use crate::session;

pub(crate) async fn run(args: PeersArgs) -> Result<()> {
    let t = &args.tracker;
    let via = session::client(t.transport, t.tracker).await?;
    let peers = via.list_peers(t.tracker).await.with_kind(Kind::TrackerUnreachable, || {
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
