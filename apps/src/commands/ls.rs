//! `p2p ls NAME`: the files a peer shares.

use anyhow::Result;
use serde_json::json;

use crate::cli::LsArgs;
use crate::output::print_index;
use crate::session::{self, reach, Mode};

pub(crate) async fn run(args: LsArgs) -> Result<()> {
    let t = &args.tracker;
    let via = session::client(t.transport, t.tracker).await?;
    let peer = reach(&via, t.tracker, &args.peer, Mode::Cli, |_| {}).await?;
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
