//! `p2p share PATH`: share one file or folder as a peer without a menu, and print a ticket
//! for each file: on another machine, `p2p get TICKET` fetches it from whoever has it.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Result;
use p2p_core::service::EndpointHandle;

use crate::cli::ShareArgs;
use crate::failure::{fail, Kind, WithKind};
use crate::output::{clean, human_bytes};
use crate::ticket::Ticket;

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

/// Prints a ticket for each shared file (the first [`MAX_TICKETS`] of a folder), asking the
/// peer's own endpoint for its index, as another peer would see it.
pub(crate) async fn print_tickets(
    handle: &EndpointHandle,
    tracker: SocketAddr,
    name: &str,
) -> Result<()> {
    let local = handle.local_addr();
    let me = if local.ip().is_unspecified() {
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
    };
    let (_, entries) = handle
        .index(me)
        .await
        .with_kind(Kind::Failed, || "cannot list what this peer shares".into())?;
    if entries.is_empty() {
        println!("nothing to share yet: the folder holds no file");
        return Ok(());
    }
    if tracker.ip().is_loopback() {
        eprintln!(
            "note: the tickets name the tracker at {tracker}, which only this machine reaches; \
             for other machines, run a tracker they reach and pass --tracker HOST:PORT"
        );
    }
    for e in entries.iter().take(MAX_TICKETS) {
        let ticket = Ticket {
            tracker: tracker.to_string(),
            hash: e.hash,
            size: e.size,
            name: e.path.rsplit('/').next().unwrap_or(&e.path).to_string(),
        };
        println!("{} ({}):", clean(&e.path), human_bytes(e.size));
        println!("  p2p get {ticket}");
    }
    if entries.len() > MAX_TICKETS {
        println!(
            "... and {} more files: `p2p ls {}` lists them, `p2p get {} ID` fetches one",
            entries.len() - MAX_TICKETS,
            clean(name),
            clean(name)
        );
    }
    Ok(())
}
