//! `p2p ls NAME`: the files a peer shares.

use anyhow::Result;
use serde_json::json;

use crate::address::{client_for, client_for_with};
use crate::cli::LsArgs;
use crate::output::print_index;
use crate::session::{find_peer, Mode, Reached};

pub(crate) async fn run(args: LsArgs) -> Result<()> {
    let t = &args.tracker;
    let via = client_for(t.transport, t.tracker).await?;
    let info = find_peer(&via, t.tracker, &args.peer, Mode::Cli).await?;
    // As `session::reach` does, with a socket of the peer's address family (IPv4 or IPv6).
    let handle = if info.transport == via.kind() {
        via
    } else {
        client_for_with(info.transport, info.addr, |_| {}).await?
    };
    let peer = Reached { handle, info };
    let (share, entries) = peer.index().await?;
    if args.json {
        let list: Vec<_> = entries
            .iter()
            .map(|e| json!({"id": e.id.to_string(), "path": e.path, "size": e.size, "hash": e.hash.to_hex()}))
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        print_index(&peer.info.name, &share, &entries);
    }
    Ok(())
}
