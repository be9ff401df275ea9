//! `p2p resolve KEY`: the signed record of an identity key on the DHT (see
//! `crate::dht::record`), checked, and printed: each peer of the key, its transport, its
//! addresses and when it last published them; `NAME@KEY` prints that peer alone.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use crate::cli::ResolveArgs;
use crate::dht::publish::{resolve, unix_now, ResolveError, RESOLVE_WAIT};
use crate::dht::record::{hex, parse_peer_key, pick, RecordPeer};
use crate::failure::{fail, failure, Kind};
use crate::output::clean;

pub(crate) async fn run(args: ResolveArgs) -> Result<()> {
    let Some((name, key)) = parse_peer_key(&args.key) else {
        fail!(
            Kind::Usage,
            "`{}` is not a key: give 64 hex digits (as `p2p peer --dht` prints it), or NAME@KEY",
            clean(&args.key)
        );
    };
    let reach = args
        .dht_bootstrap
        .first()
        .copied()
        .unwrap_or(std::net::SocketAddr::from(([192, 0, 2, 1], 0)));
    let bind = crate::dht::bind_for(crate::address::client_bind(reach));
    let node = crate::dht::DhtNode::start(&args.dht_bootstrap, bind)
        .await
        .map_err(|e| failure(Kind::Failed, e.to_string()))?;
    let signed = match resolve(&node, &key, RESOLVE_WAIT).await {
        Ok(signed) => signed,
        Err(e @ ResolveError::NotFound { nodes: 0, .. }) => fail!(
            Kind::UnknownPeer,
            "{e}: no DHT node answered (bootstrap: {}): check --dht-bootstrap",
            node.bootstrap()
        ),
        Err(e @ ResolveError::NotFound { .. }) => fail!(Kind::UnknownPeer, "{e}"),
        Err(e @ ResolveError::Invalid { .. }) => fail!(Kind::Failed, "{e}"),
    };
    let peers: Vec<&RecordPeer> = match &name {
        Some(_) => vec![pick(&signed.record, &key, name.as_deref())
            .map_err(|e| failure(Kind::UnknownPeer, e.to_string()))?],
        None => signed.record.peers.iter().collect(),
    };
    let now = unix_now();
    if args.json {
        let peers: Vec<_> = peers
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "transport": p.transport.to_string(),
                    "addrs": p.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "at": p.at,
                })
            })
            .collect();
        let out = json!({"key": hex(&key), "seq": signed.seq, "peers": peers});
        println!("{out}");
        return Ok(());
    }
    let signed_ago = now.saturating_sub((signed.seq / 1000).max(0) as u64);
    println!(
        "key {} ({} peer{}; record signed {} ago, seq {}):",
        hex(&key),
        peers.len(),
        if peers.len() == 1 { "" } else { "s" },
        ago(signed_ago),
        signed.seq
    );
    for p in peers {
        let addrs: Vec<String> = p.addrs.iter().map(|a| a.to_string()).collect();
        println!(
            "  - {} ({} {}), published {} ago",
            clean(&p.name),
            addrs.join(", "),
            p.transport,
            ago(now.saturating_sub(p.at))
        );
    }
    Ok(())
}

/// A number of seconds as people read it (`12s`, `3m 5s`).
fn ago(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}
