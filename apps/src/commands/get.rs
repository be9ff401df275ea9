//! `p2p get NAME ID`: download one file, verified, resumable, with progress: from that peer,
//! and from every other peer the tracker says has the same content (see [`super::swarm_get`];
//! `--one-source` keeps to the named peer). `p2p get blake3:HEX` fetches content by its hash
//! from whoever has it. A folder comes as a collection (see [`collection`]): `p2p get PEER
//! FOLDER`, `PEER ID` of a folder's entry, or a ticket or hash of one recreate its tree.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use p2p_core::index::hash_file;
use p2p_core::service::{Progress, ServiceError};
use p2p_proto::transfer::TransferError;
use p2p_proto::wire::{AbortReason, FileId, IndexEntry};
use serde_json::json;
use tokio::sync::watch;

use super::swarm_get;
use crate::cli::GetArgs;
use crate::failure::{describe, fail, failure, Kind, WithKind};
use crate::output::{clean, human_bytes, mib_per_s};
use crate::session::{self, check_folder, dest_for, Mode, Reached, Route};
use crate::signals::Shutdown;
use crate::ticket::{Sharer, Ticket};
use p2p_core::collection::is_collection;
use p2p_core::service::swarm::Source;

pub(crate) mod collection;

pub(crate) async fn run(mut args: GetArgs) -> Result<()> {
    let command_start = std::time::Instant::now();
    let mut shutdown = Shutdown::install();
    if args.secure && args.dht.dht && crate::dht::record::parse_peer_key(&args.peer).is_some() {
        // Holders are asked in sealed sessions (seal_requests), or left out: by name, by
        // ticket or by content hash; not yet a peer found by its key on the DHT.
        fail!(
            Kind::Usage,
            "--secure needs a peer the tracker names, a ticket or a content hash (a peer's key \
             on the DHT is not sealed yet)"
        );
    }
    if Ticket::looks_like(&args.peer) {
        let ticket = Ticket::parse(&args.peer).map_err(|e| failure(Kind::Usage, e.to_string()))?;
        if let Some(extra) = &args.id {
            fail!(
                Kind::Usage,
                "`{}` after a ticket: `p2p get TICKET` takes nothing else",
                clean(extra)
            );
        }
        // A ticket of a peer on the DHT alone names no tracker.
        let tracker = match ticket.tracker.as_str() {
            "" if args.dht.dht => None,
            "" => fail!(
                Kind::Usage,
                "this ticket names no tracker: its content is announced on the DHT; add --dht"
            ),
            named => Some(crate::address::resolve(named).map_err(|e| {
                failure(
                    Kind::TrackerUnreachable,
                    format!("the ticket's tracker `{}`: {e}", clean(named)),
                )
            })?),
        };
        // A ticket that carries its tracker's key: that tracker is talked to sealed, under
        // that key, as with --tracker-key (which would name another tracker's key here).
        if let Some(key) = ticket.tracker_key {
            args.tracker.tracker_key = Some(key);
            args.tracker.key_from = session::KeyFrom::Ticket;
        }
        let folder = ticket.folder();
        let sharer = ticket.sharer.as_ref();
        return by_hash(&args, tracker, ticket.hash, folder, sharer, &mut shutdown).await;
    }
    if let Some(hash) = swarm_get::parse_hash(&args.peer) {
        let hash = hash.map_err(|e| failure(Kind::Usage, e))?;
        if let Some(extra) = &args.id {
            fail!(
                Kind::Usage,
                "`{}` after a content hash: `p2p get blake3:HEX` takes nothing else",
                clean(extra)
            );
        }
        // With --dht, a tracker left at its default is not asked: the DHT alone.
        let tracker = (!args.dht.dht || args.tracker.tracker_given).then_some(args.tracker.tracker);
        return by_hash(&args, tracker, hash, None, None, &mut shutdown).await;
    }
    // A peer named by its identity key (`KEY` or `NAME@KEY`): found by its record on the DHT.
    // (Without --dht, 64 hex digits stay a peer name, as before.)
    if let Some((name, key)) = crate::dht::record::parse_peer_key(&args.peer) {
        if args.dht.dht {
            return by_key(&args, name, key, command_start, &mut shutdown).await;
        }
        if name.is_some() {
            fail!(
                Kind::Usage,
                "`{}` names a peer by its key: its record is on the DHT; add --dht",
                clean(&args.peer)
            );
        }
    }
    let wanted = wanted(&args)?;
    check_folder(&args.out, "--out")?;
    let t = &args.tracker;
    // The tracker is asked from the socket the download will most likely use: the hole
    // punch's introduction goes with the lookup, from the socket that then punches.
    let via = download_client(&args, t.transport, t.tracker, t.tracker_key).await?;
    let (found, early) = session::find_and_punch(&via, t.tracker, &args.peer, Mode::Cli).await?;
    let (mut info, key) = (found.info, found.key);
    let reusable = info.transport == t.transport
        && crate::address::client_bind(info.addr) == crate::address::client_bind(t.tracker);
    let to_peer = match reusable {
        true => via,
        false => {
            via.shutdown().await;
            download_client(&args, info.transport, info.addr, t.tracker_key).await?
        }
    };
    // Through the NATs first, from the socket the download uses.
    let route = session::route_to(&to_peer, t.tracker, &mut info, early).await;
    if route == Route::Relayed && !args.json {
        eprintln!(
            "peer `{}` cannot be reached directly: going through the tracker's relay (slower)",
            clean(&info.name)
        );
    }
    if args.secure {
        seal(&args, &to_peer, &info, key).await?;
    }
    let at = Fetching {
        to_peer: &to_peer,
        tracker: t.tracker,
        info: &info,
        route,
        command_start,
    };
    from_peer(&args, &at, &wanted, &mut shutdown).await
}

/// `--secure`: makes the sealed session with the peer `info` (IK toward `key`, the one the
/// tracker binds its name to, else XX), or fails saying why: the peer does not accept sealed
/// sessions (it answers plaintext), does not answer at all, or proves another key.
async fn seal(
    args: &GetArgs,
    to_peer: &p2p_core::service::EndpointHandle,
    info: &p2p_proto::wire::PeerInfo,
    key: Option<p2p_proto::identity::PublicKey>,
) -> Result<()> {
    use p2p_core::secure::SecureError;
    use p2p_proto::identity::fingerprint;
    let name = clean(&info.name);
    match to_peer.connect(info.addr, key).await {
        Ok(Some(proved)) => {
            if !args.json {
                let how = match key {
                    Some(_) => "the key the tracker binds its name to",
                    None => "the tracker binds no key to its name",
                };
                eprintln!(
                    "sealed session with `{name}`: identity key {} ({how})",
                    fingerprint(&proved)
                );
            }
            Ok(())
        }
        Ok(None) => unreachable!("a --secure client runs the secure channel"),
        Err(ServiceError::Secure {
            error: SecureError::WrongKey { expected, got },
            ..
        }) => fail!(
            Kind::Secure,
            "peer `{name}` at {} proves identity key {}, but the tracker binds the name to {}: \
             refusing (someone may be in the way)",
            info.addr,
            fingerprint(&got),
            fingerprint(&expected)
        ),
        Err(ServiceError::Secure {
            error: SecureError::Timeout { .. },
            ..
        }) => {
            // Silence: a peer without --secure (it drops what it cannot read), or none at
            // all. A plaintext request from another socket tells which.
            if session::answers_plaintext(info.transport, info.addr).await {
                fail!(
                    Kind::Secure,
                    "peer `{name}` does not accept sealed sessions (it runs with --no-secure, \
                     or an older build), or get without --secure"
                );
            }
            fail!(
                Kind::PeerUnreachable,
                "peer `{name}` at {} does not answer; it may have just left",
                info.addr
            )
        }
        Err(e) => Err(e).with_kind(Kind::Secure, || {
            format!("no sealed session with peer `{name}` at {}", info.addr)
        }),
    }
}

/// Which file `args` asks for of a named peer: its ID or path (`args.id`).
fn wanted(args: &GetArgs) -> Result<Wanted> {
    let Some(id) = args.id.as_deref() else {
        fail!(
            Kind::Usage,
            "which file of `{}`? give its ID: `p2p get {} ID` (`p2p ls {}` lists them)",
            clean(&args.peer),
            clean(&args.peer),
            clean(&args.peer)
        );
    };
    // An ID (`003`), or a path as `p2p ls` lists it (`sub/a.txt`).
    match id.parse::<FileId>() {
        Ok(id) => Ok(Wanted::Id(id)),
        Err(_) if !id.trim().is_empty() && !id.trim().starts_with('-') => {
            Ok(Wanted::Path(id.to_string()))
        }
        Err(e) => Err(failure(Kind::Usage, e)),
    }
}

/// Fetches `wanted` of the peer `at` names (reached at `at.info.addr` through `at.to_peer`),
/// then lets the endpoint finish.
async fn from_peer(
    args: &GetArgs,
    at: &Fetching<'_>,
    wanted: &Wanted,
    shutdown: &mut Shutdown,
) -> Result<()> {
    let (to_peer, info) = (at.to_peer, at.info);
    let peer = Reached {
        handle: to_peer.clone(),
        info: info.clone(),
    };
    // A path may name a file or a folder: one listing answers both.
    let (mut found, mut listing) = match wanted {
        Wanted::Id(id) => (peer.entry(*id).await?, None),
        Wanted::Path(path) => {
            let listing = peer.index().await?;
            let found = listing.1.iter().find(|e| e.path == *path).cloned();
            (found, Some(listing))
        }
    };
    if let Some(folder) = found
        .as_ref()
        .filter(|e| is_collection(e) && listing.is_none())
    {
        // A folder's entry: its files are in the listing, checked against the entry as
        // that same listing has it.
        let fresh = peer.index().await?;
        let id = folder.id;
        found = fresh.1.iter().find(|e| e.id == id).cloned();
        listing = Some(fresh);
    }
    let (share, listing) = listing.unwrap_or_default();
    let listed = (share.as_str(), listing.as_slice());
    let result = match (found, wanted) {
        (Some(entry), _) if is_collection(&entry) => {
            collection::fetch_listed(args, at, listed, &entry, shutdown).await
        }
        (Some(entry), _) => fetch_file(args, at, entry, shutdown).await,
        (None, Wanted::Path(folder)) => {
            collection::fetch_folder(args, at, listed, folder, shutdown).await
        }
        (None, Wanted::Id(id)) => Err(failure(
            Kind::UnknownFile,
            format!(
                "peer `{}` has no file {id}: run `p2p ls {}` to see its files",
                clean(&info.name),
                clean(&info.name)
            ),
        )),
    };
    // The download finished on its last verified chunk: stay until the sender's FIN is
    // answered (a round trip; at most 1 s), so that it does not retry until its timeout.
    to_peer.shutdown().await;
    result
}

/// What a download from the named peer needs besides its entry.
struct Fetching<'a> {
    to_peer: &'a p2p_core::service::EndpointHandle,
    tracker: std::net::SocketAddr,
    info: &'a p2p_proto::wire::PeerInfo,
    route: Route,
    command_start: std::time::Instant,
}

/// Fetches `entry` of the peer into `args.out` (from every holder unless `--one-source`),
/// and reports it.
async fn fetch_file(
    args: &GetArgs,
    at: &Fetching<'_>,
    entry: IndexEntry,
    shutdown: &mut Shutdown,
) -> Result<()> {
    let (to_peer, info, route, command_start) = (at.to_peer, at.info, at.route, at.command_start);
    let dest = dest_for(&args.out, &entry.path)?;
    if already_present(args, &dest, &entry)? {
        return Ok(());
    }
    // The named peer's piece table comes while the tracker is asked for other sources:
    // one round trip for both.
    let mut table = None;
    if !args.one_source {
        // Other peers with the same content send their share too. A tracker that does not
        // know (an older one) or is slow costs at most a moment, then the named peer alone.
        let (others, own) = tokio::join!(
            tokio::time::timeout(
                OTHERS_WAIT,
                swarm_get::holders(to_peer, at.tracker, entry.hash),
            ),
            to_peer.piece_table(info.addr, &entry)
        );
        table = Some(own);
        if let Ok(Ok(holders)) = others {
            let others = swarm_get::sources(to_peer, holders, entry.hash, &[info.addr]).await;
            if !others.is_empty() {
                let first = Source {
                    name: info.name.to_string(),
                    addr: info.addr,
                    entry: entry.clone(),
                    partial: false,
                };
                return swarm_get::run(
                    args,
                    to_peer,
                    &swarm_get::Finders::tracker(at.tracker),
                    entry.hash,
                    Some(first),
                    others,
                    shutdown,
                )
                .await;
            }
        }
    }
    let mut interrupted;
    let mut wait = FIRST_BUSY_WAIT;
    let give_up = tokio::time::Instant::now() + args.busy_wait;
    let mut attempt_start;
    let result = loop {
        attempt_start = std::time::Instant::now();
        let (tx, rx) = watch::channel(Progress::default());
        let queue_watcher = queue_notice(rx.clone(), info.name.to_string(), args.json);
        let watcher = if args.json {
            checkpoints(rx)
        } else if std::io::stderr().is_terminal() {
            progress_bar(&entry, rx)
        } else {
            tokio::spawn(async {})
        };
        let download = async {
            // The table fetched above, the first time; fetched again after a busy refusal.
            let table = match table.take() {
                Some(table) => table?,
                None => to_peer.piece_table(info.addr, &entry).await?,
            };
            let (peer, entry, dest) = (info.addr, entry.clone(), dest.clone());
            to_peer
                .download_with_table(peer, entry, table, dest, Some(tx))
                .await
        };
        let (result, stopped) = until_stopped(download, to_peer, shutdown).await;
        interrupted = stopped;
        watcher.abort();
        queue_watcher.abort();
        // A sender with every upload slot taken: wait (doubling) and ask again, within
        // --busy-wait; the verified part, if any, is kept meanwhile.
        let busy = matches!(
            result.as_ref().map_err(ServiceError::cause),
            Err(ServiceError::Transfer(TransferError::Aborted(
                AbortReason::Busy
            )))
        );
        let now = tokio::time::Instant::now();
        if !busy || interrupted || now >= give_up {
            break result;
        }
        // Jittered, so that gets refused together do not all come back together (100 gets
        // started at once came back in lockstep: 8 served, then the seeder idle until the
        // next round, 76 % of the time), and the last try lands at --busy-wait's end.
        let pause = jitter(wait).min(give_up - now);
        if !args.json && std::io::stderr().is_terminal() {
            eprint!("\r\x1b[2K");
        }
        eprintln!(
            "{} is busy (every upload slot taken); asking again in {:.1} s",
            clean(&info.name),
            pause.as_secs_f64()
        );
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.wait() => {
                interrupted = true;
                break result;
            }
        }
        wait = (wait * 2).min(MAX_BUSY_WAIT);
    };
    if !args.json && std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
    if let Some(e) = interrupted
        .then(|| self::interrupted(&result, entry.size))
        .flatten()
    {
        return Err(e);
    }
    if let Err(ServiceError::DestinationExists(_)) = &result {
        // Another download (another `get`, a menu) finished it while this one looked it up.
        if already_present(args, &dest, &entry)? {
            return Ok(());
        }
    }
    let r = result.with_context(|| {
        format!(
            "download of {} from {} failed",
            clean(&entry.path),
            clean(&info.name)
        )
    })?;
    if let Some(why) = &r.discarded {
        eprintln!("note: {why}");
    }
    if r.refetched > 0 && !args.json {
        eprintln!(
            "note: a piece failed its hash check {} time(s); each time the download went on \
             from the end of the verified part (the figures below are the last attempt's, \
             from {} of {})",
            r.refetched,
            human_bytes(r.resumed_from),
            human_bytes(r.size)
        );
    } else if r.resumed_from > 0 && !args.json {
        eprintln!(
            "resumed at {} of {} (the verified part was kept)",
            human_bytes(r.resumed_from),
            human_bytes(r.size)
        );
    }
    let done = Outcome {
        size: r.size,
        received: r.received,
        elapsed: r.elapsed,
        // From the command's start: the tracker, the entry and piece table, then the data.
        first_byte: r
            .first_byte
            .map(|fb| attempt_start.duration_since(command_start) + fb),
        resumed_from: r.resumed_from,
        refetched: r.refetched,
        already: false,
        route: Some(route),
        sources: None,
    };
    report(args, &r.path, &done);
    Ok(())
}

/// Which file of the peer: by the ID or the path `p2p ls` shows.
enum Wanted {
    Id(FileId),
    Path(String),
}

/// How long `get PEER ID` waits for the tracker to name other sources of the content.
pub(super) const OTHERS_WAIT: Duration = Duration::from_secs(1);

/// A client endpoint of `kind` (in `to`'s address family) set up for downloads as `args`
/// say: fsync, preallocation, idle timeout, window budget; talking to the tracker in a
/// sealed session that proves `tracker_key`, if given.
async fn download_client(
    args: &GetArgs,
    kind: p2p_proto::wire::TransportKind,
    to: std::net::SocketAddr,
    tracker_key: Option<p2p_proto::identity::PublicKey>,
) -> Result<p2p_core::service::EndpointHandle> {
    let tracker = args.tracker.tracker;
    let (idle, fsync, preallocate, window) = (
        args.idle_timeout,
        !args.no_fsync,
        !args.no_preallocate,
        args.window,
    );
    let bind = args
        .listen
        .unwrap_or_else(|| crate::address::client_bind(to));
    // `--serve` registers: the name is bound to the user's key, as a peer's is.
    let identity = match args.serve {
        Some(_) => crate::identity::load_or_create()?,
        None => None,
    };
    // `--secure`: a fresh key of its own for each download (the peer learns nothing that
    // ties two of them together); every peer message must come sealed.
    let secure = args.secure.then(|| p2p_core::secure::SecureSettings {
        require_sealed: true,
        seal_requests: true,
        ..p2p_core::secure::SecureSettings::new(p2p_proto::identity::Identity::from_secret(
            rand::random(),
        ))
    });
    let key_from = args.tracker.key_from;
    session::endpoint_keyed(kind, bind, None, Default::default(), key_from, |c| {
        c.fsync = fsync;
        c.preallocate = preallocate;
        c.receiver.idle_timeout = idle;
        c.receiver.window_bytes = window;
        // The budget, not a chunk count, sets the window: room for it in chunks of 1 KiB.
        c.receiver.window = c.receiver.window.max((window / 1024) as u32);
        c.identity = identity;
        c.secure = secure;
        session::pin_tracker(c, tracker, tracker_key);
    })
    .await
}

/// Runs `download` to its end; on a signal first, stops the endpoint cleanly (it aborts the
/// transfers, records what is verified and answers with what was kept) and waits for that
/// answer. `true` with it: the user stopped it.
pub(super) async fn until_stopped<T>(
    download: impl std::future::Future<Output = T>,
    handle: &p2p_core::service::EndpointHandle,
    shutdown: &mut Shutdown,
) -> (T, bool) {
    tokio::pin!(download);
    tokio::select! {
        r = &mut download => (r, false),
        _ = shutdown.wait() => {
            handle.shutdown().await;
            (download.await, true)
        }
    }
}

/// The error of a download the user stopped (Ctrl-C, SIGTERM), saying what a rerun resumes
/// from; `None` when it finished just as the signal came.
pub(super) fn interrupted<T>(result: &Result<T, ServiceError>, size: u64) -> Option<anyhow::Error> {
    match result {
        Err(ServiceError::Incomplete { kept, partial, .. }) => Some(failure(
            Kind::Interrupted,
            format!(
                "interrupted: {} verified of {} kept in {}; run the same get again to resume",
                human_bytes(*kept),
                human_bytes(size),
                partial.display()
            ),
        )),
        Err(_) => Some(failure(
            Kind::Interrupted,
            "interrupted before anything was verified; nothing was kept",
        )),
        Ok(_) => None,
    }
}

/// `p2p get blake3:HEX`: the content from every peer the tracker (if any) says has it, and
/// with `--dht` every peer announced on the DHT; a collection's tree when the holders list
/// the hash as a folder's. `folder`: the folder's name from a ticket of one.
///
/// The tracker is the fast path: when it names sources, the download starts with them and
/// the DHT's finds join while it runs; when it names none (or is unreachable, or none was
/// given), the DHT lookup is waited for, at most [`LOOKUP_WAIT`](crate::dht::lookup::LOOKUP_WAIT).
async fn by_hash(
    args: &GetArgs,
    tracker: Option<std::net::SocketAddr>,
    hash: p2p_proto::wire::ContentHash,
    folder: Option<&str>,
    sharer: Option<&Sharer>,
    shutdown: &mut Shutdown,
) -> Result<()> {
    check_folder(&args.out, "--out")?;
    let kind = args.tracker.transport;
    let reach = tracker.or(args.dht.dht_bootstrap.first().copied());
    let handle = download_client(
        args,
        kind,
        reach.unwrap_or(ANY_IPV4),
        tracker.and(args.tracker.tracker_key),
    )
    .await?;
    // The DHT lookup starts at once, beside the tracker's answer; so does the resolution of
    // the sharer's record, for a ticket that names its key.
    let (node, first_lookup) = match args.dht.dht {
        true => start_lookup(args, &handle, hash).await,
        false => (Err(String::new()), None),
    };
    let record = match (&node, sharer) {
        (Ok(node), Some(sharer)) => {
            let (node, key) = (node.clone(), sharer.key);
            let wait = crate::dht::publish::RESOLVE_WAIT;
            Some(tokio::spawn(async move {
                crate::dht::publish::resolve(&node, &key, wait).await
            }))
        }
        _ => None,
    };
    let (mut tracker_failed, mut dht_said) = (None, String::new());
    let asked = match tracker {
        Some(t) => Some(
            swarm_get::holders(&handle, t, hash)
                .await
                .with_kind(Kind::TrackerUnreachable, || {
                    format!(
                        "cannot ask the tracker at {t} who has {}{} (start one with `p2p tracker`, or pass --tracker ADDR)",
                        swarm_get::HASH_PREFIX,
                        hash.to_hex()
                    )
                }),
        ),
        None => None,
    };
    let holders = match asked {
        Some(Ok(holders)) => holders,
        // Without the DHT, as before it: the tracker's error is the answer.
        Some(Err(e)) if !args.dht.dht => return Err(e),
        Some(Err(e)) => {
            tracker_failed = Some(e);
            Vec::new()
        }
        None => Vec::new(),
    };
    // Holders the client can reach: its transport, its address family (what `sources` asks).
    let local = handle.local_addr();
    let named = holders
        .iter()
        .filter(|p| p.transport == kind && p.addr.is_ipv4() == local.is_ipv4())
        .count();
    let mut found = swarm_get::sources(&handle, holders, hash, &[]).await;
    if found.is_empty() && named > 0 && args.secure && !args.dht.dht {
        // Each was asked in a sealed session, and none answered in one.
        handle.shutdown().await;
        fail!(
            Kind::Secure,
            "the tracker names {named} peer(s) with {}{}, but none accepts sealed sessions \
             (they run with --no-secure, or an older build): get without --secure",
            swarm_get::HASH_PREFIX,
            hash.to_hex()
        );
    }
    if found.is_empty() && args.dht.dht {
        // The sharer's own record first (its peers named as it names them), then whoever
        // announced the content.
        let mut peers = Vec::new();
        let mut record_said = None;
        if let (Some(task), Some(sharer)) = (record, sharer) {
            match task.await {
                Ok(Ok(signed)) => peers = record_candidates(&signed.record, sharer),
                Ok(Err(e)) => record_said = Some(format!("the sharer's record: {e}")),
                Err(_) => record_said = Some("the sharer's record: the lookup stopped".into()),
            }
        }
        if let Some(lookup) = first_lookup {
            let (announced, said) = dht_candidates(lookup, kind, hash).await;
            for p in announced {
                if !peers
                    .iter()
                    .any(|q: &p2p_proto::wire::PeerInfo| q.addr == p.addr)
                {
                    peers.push(p);
                }
            }
            dht_said = said;
        }
        if peers.iter().any(|p| p.transport != kind) && !peers.iter().any(|p| p.transport == kind) {
            record_said = Some(format!(
                "the sharer listens on {}: add --transport {}",
                peers[0].transport, peers[0].transport
            ));
        }
        found = one_per_peer(swarm_get::sources(&handle, peers, hash, &[]).await);
        if let Some(said) = record_said {
            dht_said = format!("{dht_said}; {said}");
        }
    }
    if found.is_empty() && args.dht.dht {
        handle.shutdown().await;
        let why = match node {
            Err(e) => e,
            Ok(_) => dht_said,
        };
        return Err(nobody_found(tracker_failed, why, folder));
    }
    let finders = swarm_get::Finders {
        tracker,
        dht: node.ok(),
    };
    // A collection fetched through the DHT alone takes each file from the holder that
    // listed the folder: `Fetching` needs a tracker address (none answers there).
    let tracker_or_default = tracker.unwrap_or(args.tracker.tracker);
    let result = match folder {
        _ if found.iter().any(|s| is_collection(&s.entry)) => {
            collection::fetch_by_hash(
                args,
                &handle,
                tracker_or_default,
                hash,
                found,
                folder,
                shutdown,
            )
            .await
        }
        Some(folder) if found.is_empty() => {
            Err(collection::nobody_has(hash, tracker_or_default, folder))
        }
        _ => swarm_get::run(args, &handle, &finders, hash, None, found, shutdown).await,
    };
    handle.shutdown().await;
    result
}

/// The peers a ticket's sharer record names as candidates: the sharer's own entry when the
/// record has it, else every peer of the key (the sharer may have restarted under another
/// name; the content hash checks whatever they send).
fn record_candidates(
    record: &crate::dht::record::PeerRecord,
    sharer: &Sharer,
) -> Vec<p2p_proto::wire::PeerInfo> {
    let named: Vec<_> = record
        .peers
        .iter()
        .filter(|p| p.name == sharer.name)
        .collect();
    let entries = match named.is_empty() {
        true => record.peers.iter().collect(),
        false => named,
    };
    entries
        .into_iter()
        .flat_map(|p| {
            p.addrs.iter().map(|addr| p2p_proto::wire::PeerInfo {
                name: std::sync::Arc::from(p.name.as_str()),
                addr: *addr,
                transport: p.transport,
            })
        })
        .collect()
}

/// `sources` with one address per named peer (a record lists several addresses of a peer:
/// the first that answered is kept); sources named by their address (`dht:...`) all stay.
fn one_per_peer(sources: Vec<Source>) -> Vec<Source> {
    let mut seen = std::collections::HashSet::new();
    sources
        .into_iter()
        .filter(|s| s.name.starts_with("dht:") || seen.insert(s.name.clone()))
        .collect()
}

/// `p2p get KEY ID --dht` (or `NAME@KEY ID`): resolves the key's record on the DHT, picks the
/// peer (the one named, or the record's only one), reaches it at the first of its addresses
/// that answers, then fetches as `p2p get NAME ID` does. Other holders of the content join
/// from a tracker only when one was given.
async fn by_key(
    args: &GetArgs,
    name: Option<String>,
    key: p2p_proto::identity::PublicKey,
    command_start: std::time::Instant,
    shutdown: &mut Shutdown,
) -> Result<()> {
    use crate::dht::{publish, record};
    let wanted = wanted(args)?;
    check_folder(&args.out, "--out")?;
    let reach = args.dht.dht_bootstrap.first().copied().unwrap_or(ANY_IPV4);
    let bind = crate::dht::bind_for(crate::address::client_bind(reach));
    let node = crate::dht::DhtNode::start(&args.dht.dht_bootstrap, bind)
        .await
        .map_err(|e| failure(Kind::Failed, e.to_string()))?;
    let signed = match publish::resolve(&node, &key, publish::RESOLVE_WAIT).await {
        Ok(signed) => signed,
        Err(e @ publish::ResolveError::NotFound { nodes: 0, .. }) => {
            return Err(failure(
                Kind::UnknownPeer,
                format!(
                    "{e}: no DHT node answered (bootstrap: {}): check --dht-bootstrap",
                    node.bootstrap()
                ),
            ))
        }
        Err(e @ publish::ResolveError::NotFound { .. }) => {
            return Err(failure(Kind::UnknownPeer, e.to_string()))
        }
        Err(e @ publish::ResolveError::Invalid { .. }) => {
            return Err(failure(Kind::Failed, e.to_string()))
        }
    };
    let peer = record::pick(&signed.record, &key, name.as_deref())
        .map_err(|e| failure(Kind::UnknownPeer, e.to_string()))?
        .clone();
    let age = publish::unix_now().saturating_sub(peer.at);
    let to_peer = download_client(args, peer.transport, peer.addrs[0], None).await?;
    // The first address that answers (a cheap request: one entry).
    let mut reached = None;
    for addr in &peer.addrs {
        if to_peer.entry(*addr, FileId(1)).await.is_ok() {
            reached = Some(*addr);
            break;
        }
    }
    let Some(addr) = reached else {
        to_peer.shutdown().await;
        let addrs: Vec<String> = peer.addrs.iter().map(|a| a.to_string()).collect();
        fail!(
            Kind::PeerUnreachable,
            "peer `{}` of key {} does not answer at {} (its record was refreshed {} ago)",
            clean(&peer.name),
            record::hex(&key),
            addrs.join(", "),
            humantime::format_duration(Duration::from_secs(age))
        );
    };
    let info = p2p_proto::wire::PeerInfo {
        name: std::sync::Arc::from(peer.name.as_str()),
        addr,
        transport: peer.transport,
    };
    // Without a tracker given, nobody to ask for other holders: the named peer alone.
    let mut args = args.clone();
    args.one_source |= !args.tracker.tracker_given;
    let at = Fetching {
        to_peer: &to_peer,
        tracker: args.tracker.tracker,
        info: &info,
        route: Route::Direct,
        command_start,
    };
    from_peer(&args, &at, &wanted, shutdown).await
}

/// Where a download client binds when neither a tracker nor a DHT bootstrap node was given
/// (the public bootstrap nodes): any IPv4 interface.
const ANY_IPV4: std::net::SocketAddr = std::net::SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
    0,
);

/// Starts `get --dht`'s DHT node (bound beside `handle`) and its first lookup of `hash`, in a
/// task of its own; or why the DHT cannot be used.
async fn start_lookup(
    args: &GetArgs,
    handle: &p2p_core::service::EndpointHandle,
    hash: p2p_proto::wire::ContentHash,
) -> (
    Result<crate::dht::DhtNode, String>,
    Option<tokio::task::JoinHandle<(crate::dht::lookup::Lookup, String)>>,
) {
    let bind = crate::dht::bind_for(handle.local_addr());
    match crate::dht::DhtNode::start(&args.dht.dht_bootstrap, bind).await {
        Ok(node) => {
            let (n, kind) = (node.clone(), handle.kind());
            let task = tokio::spawn(async move {
                let wait = crate::dht::lookup::LOOKUP_WAIT;
                let found = crate::dht::lookup::lookup(&n, &hash, kind, wait).await;
                (found, n.bootstrap())
            });
            (Ok(node), Some(task))
        }
        Err(e) => (Err(e.to_string()), None),
    }
}

/// The candidates the first DHT lookup found, as peers to ask, and what to say if none of
/// them has the content.
async fn dht_candidates(
    lookup: tokio::task::JoinHandle<(crate::dht::lookup::Lookup, String)>,
    kind: p2p_proto::wire::TransportKind,
    hash: p2p_proto::wire::ContentHash,
) -> (Vec<p2p_proto::wire::PeerInfo>, String) {
    let Ok((found, bootstrap)) = lookup.await else {
        return (Vec::new(), "the DHT lookup stopped".into());
    };
    let hex = hash.to_hex();
    let secs = crate::dht::lookup::LOOKUP_WAIT.as_secs();
    let said = match (found.found.len(), found.nodes_known) {
        (0, 0) => format!(
            "no DHT node answered within {secs} s (bootstrap: {bootstrap}): check --dht-bootstrap"
        ),
        (0, n) => format!(
            "nobody announced {}{hex} on the DHT (looked up for up to {secs} s; {n} DHT nodes known)",
            swarm_get::HASH_PREFIX
        ),
        (k, _) => format!(
            "the DHT named {k} address{} for {}{hex}, and none of them answered for it",
            if k == 1 { "" } else { "es" },
            swarm_get::HASH_PREFIX
        ),
    };
    (
        crate::dht::plan::merge(Vec::new(), &found.found, kind),
        said,
    )
}

/// The error of a `get --dht` by hash that found no source: what the DHT said (`dht`), after
/// the tracker's error if it could not be asked; for a folder's ticket, naming the folder.
fn nobody_found(
    tracker_failed: Option<anyhow::Error>,
    dht: String,
    folder: Option<&str>,
) -> anyhow::Error {
    let dht = match folder {
        Some(folder) => format!(
            "nobody reachable shares the folder `{}`: {dht}",
            clean(folder.trim_end_matches('/'))
        ),
        None => dht,
    };
    match tracker_failed {
        Some(e) => failure(
            Kind::TrackerUnreachable,
            format!("{}; and {dht}", describe(&e)),
        ),
        None => failure(Kind::UnknownFile, dht),
    }
}

/// When `dest` exists: reports it and returns `true` if it holds `entry`'s content, fails if
/// it holds anything else. `false`: nothing is there.
pub(super) fn already_present(args: &GetArgs, dest: &Path, entry: &IndexEntry) -> Result<bool> {
    if std::fs::symlink_metadata(dest).is_err() {
        return Ok(false);
    }
    if hash_file(dest).ok() != Some(entry.hash) {
        fail!(
            Kind::DestinationExists,
            "{} already exists with other content; move it away or pass another --out",
            dest.display()
        );
    }
    let present = Outcome {
        size: entry.size,
        received: 0,
        elapsed: Duration::ZERO,
        first_byte: None,
        resumed_from: 0,
        refetched: 0,
        already: true,
        route: None,
        sources: None,
    };
    report(args, dest, &present);
    Ok(true)
}

/// What `get` reports of a file it fetched (or found already present).
pub(super) struct Outcome {
    pub(super) size: u64,
    pub(super) received: u64,
    pub(super) elapsed: Duration,
    /// Time from the command's start to the first byte of the file.
    pub(super) first_byte: Option<Duration>,
    pub(super) resumed_from: u64,
    pub(super) refetched: u32,
    pub(super) already: bool,
    /// How the peer was reached (`None`: nothing was fetched).
    pub(super) route: Option<Route>,
    /// A multi-source download: each source and what it sent (`--json`'s `sources`).
    pub(super) sources: Option<Vec<serde_json::Value>>,
}

pub(super) fn report(args: &GetArgs, path: &std::path::Path, o: &Outcome) {
    let &Outcome {
        size,
        received,
        elapsed,
        first_byte,
        resumed_from,
        refetched,
        already,
        route,
        ref sources,
    } = o;
    let secs = elapsed.as_secs_f64();
    if args.json {
        println!(
            "{}",
            json!({
                "path": path.display().to_string(),
                "size": size,
                "received": received,
                "resumed_from": resumed_from,
                "refetched": refetched,
                "elapsed_ms": elapsed.as_millis() as u64,
                "first_byte_ms": first_byte.map(|d| d.as_millis() as u64),
                "mib_per_s": mib_per_s(received, secs),
                "already_present": already,
                "route": route.map(Route::as_str),
                "sources": sources,
                "sealed": args.secure,
                "verified": true,
            })
        );
    } else if already {
        println!("{} (already present, same content)", path.display());
    } else {
        eprintln!(
            "saved {} ({}) in {:.2} s, {:.1} MiB/s, BLAKE3 verified",
            path.display(),
            human_bytes(size),
            secs,
            mib_per_s(received, secs)
        );
        println!("{}", path.display());
    }
}

/// In `--json` mode: one line on stderr per checkpoint recorded (what a resume would keep).
/// Says once, on stderr, that the sender put the request in its line (every upload slot
/// taken), and how many are ahead; a JSON line under `--json`.
fn queue_notice(
    mut rx: watch::Receiver<Progress>,
    peer: String,
    json: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let Some(ahead) = rx.borrow().queued else {
                continue;
            };
            if json {
                eprintln!("{}", json!({ "queued_ahead": ahead }));
            } else {
                eprintln!(
                    "{} is busy (every upload slot taken): waiting in line, {ahead} ahead",
                    clean(&peer)
                );
            }
            return;
        }
    })
}

fn checkpoints(mut rx: watch::Receiver<Progress>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = 0;
        while rx.changed().await.is_ok() {
            let p = *rx.borrow();
            if p.saved > last {
                last = p.saved;
                eprintln!(
                    "{}",
                    json!({"checkpoint": p.saved, "received": p.received, "total": p.total})
                );
            }
        }
    })
}

/// First wait before a busy sender is asked again; it doubles up to [`MAX_BUSY_WAIT`], each
/// wait [`jitter`]ed. Short: a slot frees as soon as any upload ends, and a refused `Request`
/// costs the seeder one small message.
const FIRST_BUSY_WAIT: Duration = Duration::from_millis(250);
const MAX_BUSY_WAIT: Duration = Duration::from_secs(1);

/// `wait` times a random factor in [0.5, 1.5).
fn jitter(wait: Duration) -> Duration {
    wait.mul_f64(0.5 + rand::random::<f64>())
}

/// No progress this long shows the bar as stalled (progress comes every 256 KiB: slower than
/// about 50 KiB/s reads as stalled too).
const STALLED: Duration = Duration::from_secs(5);

/// The progress bar on a terminal: the file's name, percentage, bytes, rate, elapsed time and
/// what is left, fitted to the terminal's width. A resumed download starts the bar at what
/// was kept, and its rate and eta count only what arrives now.
fn progress_bar(
    entry: &IndexEntry,
    mut rx: watch::Receiver<Progress>,
) -> tokio::task::JoinHandle<()> {
    let name = clean(&entry.path);
    let total = entry.size;
    tokio::spawn(async move {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {percent:>3}% {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {elapsed} eta {eta}",
            )
            .expect("valid template"),
        );
        bar.set_message(name.clone());
        let mut started = false;
        let mut last = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let received = rx.borrow().received;
                    bar.set_position(received);
                    if !started {
                        // The first figure is where the download starts (a resume's kept part).
                        started = true;
                        bar.reset_eta();
                    }
                    if last.elapsed() >= STALLED {
                        bar.set_message(name.clone());
                    }
                    last = tokio::time::Instant::now();
                }
                _ = tick.tick() => {
                    // Nothing for a while: say so, rather than freeze.
                    let quiet = last.elapsed();
                    if started && quiet >= STALLED {
                        bar.set_message(format!("{name} (stalled {}s)", quiet.as_secs()));
                    }
                }
            }
        }
    })
}
