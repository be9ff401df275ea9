//! `p2p share PATH`: share one file or folder as a peer without a menu, and print a ticket:
//! on another machine, `p2p get TICKET` fetches it from whoever has it. With `--dht` it also
//! announces the content on the DHT (`p2p peer --dht`); with `--dht` and no tracker given, on
//! the DHT alone, and its tickets name no tracker. A folder gets one
//! ticket for the whole folder (its collection hash: `p2p get` recreates the tree), then one
//! per file (the first [`MAX_TICKETS`]).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Result;
use p2p_core::collection::{is_collection, Manifest};
use p2p_core::service::EndpointHandle;
use p2p_proto::wire::IndexEntry;

use crate::cli::ShareArgs;
use crate::failure::{fail, Kind, WithKind};
use crate::output::{clean, human_bytes};
use crate::ticket::{Sharer, Ticket};

/// Tickets printed for a folder; the rest are listed by `p2p ls NAME`.
const MAX_TICKETS: usize = 20;

pub(crate) async fn run(mut args: ShareArgs) -> Result<()> {
    args.peer.share = args.path.clone();
    if args.peer.name.is_none() {
        args.peer.name = Some(format!("share-{:04x}", rand::random::<u16>()));
    }
    super::peer::run_as(args.peer, true).await
}

/// PATH exists and is a file or a folder.
pub(crate) fn check_path(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() || m.is_dir() => Ok(()),
        Ok(_) => fail!(
            Kind::NotAFolder,
            "{} is neither a file nor a folder: share a file or a folder",
            path.display()
        ),
        Err(e) => fail!(Kind::NotAFolder, "cannot share {}: {e}", path.display()),
    }
}

/// Where `handle`'s endpoint reaches itself: its address, the loopback for an unspecified one.
pub(crate) fn own_address(handle: &EndpointHandle) -> SocketAddr {
    let local = handle.local_addr();
    if local.ip().is_unspecified() {
        SocketAddr::new(
            if local.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            local.port(),
        )
    } else {
        local
    }
}

/// Prints the tickets of what this peer shares, asking its own endpoint for its index as
/// another peer would see it: for a folder, first the folder's (its collection, which the
/// endpoint must know by hash), then each file's (the first [`MAX_TICKETS`]). `tracker`: the
/// tracker the tickets name; `None` for a peer on the DHT alone (its tickets name none, and
/// `p2p get TICKET --dht` looks the content up on the DHT). `sharer`: this peer's key and
/// name when it publishes a record on the DHT (`p2p2` tickets, which carry them).
pub(crate) async fn print_tickets(
    handle: &EndpointHandle,
    tracker: Option<SocketAddr>,
    name: &str,
    sharer: Option<Sharer>,
    tracker_key: Option<p2p_proto::identity::PublicKey>,
) -> Result<()> {
    let me = own_address(handle);
    let (share, entries) = handle
        .index(me)
        .await
        .with_kind(Kind::Failed, || "cannot list what this peer shares".into())?;
    if entries.is_empty() {
        println!("nothing to share yet: the folder holds no file");
        return Ok(());
    }
    match tracker {
        Some(t) if t.ip().is_loopback() => eprintln!(
            "note: the tickets name the tracker at {t}, which only this machine reaches; \
             for other machines, run a tracker they reach and pass --tracker HOST:PORT"
        ),
        Some(_) => {}
        None => eprintln!(
            "note: the tickets name no tracker: `p2p get TICKET --dht` finds the content on the DHT"
        ),
    }
    // The tracker's key rides along when this peer talks to it sealed: a `get` of the
    // ticket then does too.
    let tracker_key = tracker.and(tracker_key);
    let tracker = tracker.map(|t| t.to_string()).unwrap_or_default();
    let ids = (&sharer, tracker_key);
    let folder = print_folder_ticket(handle, me, &tracker, &share, &entries, ids).await;
    let files: Vec<&IndexEntry> = entries.iter().filter(|e| !is_collection(e)).collect();
    if folder {
        println!("each file alone:");
    }
    for e in files.iter().take(MAX_TICKETS) {
        let ticket = Ticket {
            tracker: tracker.clone(),
            hash: e.hash,
            size: e.size,
            name: e.path.rsplit('/').next().unwrap_or(&e.path).to_string(),
            sharer: sharer.clone(),
            tracker_key,
        };
        println!("{} ({}):", clean(&e.path), human_bytes(e.size));
        println!("  p2p get {ticket}");
    }
    if files.len() > MAX_TICKETS {
        println!(
            "... and {} more files: `p2p ls {}` lists them, `p2p get {} ID` fetches one",
            files.len() - MAX_TICKETS,
            clean(name),
            clean(name)
        );
    }
    Ok(())
}

/// For a folder share, prints the ticket of the whole folder and returns `true`: the
/// collection of every file listed (`entries`), whose hash this peer's endpoint (at `me`)
/// must answer for. A single shared file has no collection: `false`, nothing printed.
/// `ids`: the sharer and the tracker's key the ticket carries.
async fn print_folder_ticket(
    handle: &EndpointHandle,
    me: SocketAddr,
    tracker: &str,
    share: &str,
    entries: &[IndexEntry],
    (sharer, tracker_key): (&Option<Sharer>, Option<p2p_proto::identity::PublicKey>),
) -> bool {
    let Ok((manifest, skipped)) = Manifest::from_listing("", entries) else {
        return false;
    };
    let hash = manifest.hash();
    let known = handle.entry_by_hash(me, hash).await;
    if !known.is_ok_and(|e| e.is_some_and(|e| is_collection(&e.entry))) {
        return false;
    }
    let count = manifest.files().len();
    println!(
        "{}/ ({count} file{}, {}), the whole folder:",
        clean(share),
        if count == 1 { "" } else { "s" },
        human_bytes(manifest.size())
    );
    let ticket = Ticket {
        sharer: sharer.clone(),
        tracker_key,
        ..Ticket::for_folder(tracker.to_string(), hash, manifest.size(), share)
    };
    println!("  p2p get {ticket}");
    for path in skipped {
        println!(
            "  (without `{}`: its name cannot be recreated safely elsewhere)",
            clean(&path)
        );
    }
    true
}
