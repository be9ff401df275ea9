//! Multi-source `get`: by content (`p2p get blake3:HEX`), and `p2p get PEER ID` when the
//! tracker knows other peers with the same content. Every source sends a share of the
//! pieces at once (see `p2p_core::service::swarm`); the terminal shows one bar with the total
//! rate and the number of sources, `--json` the bytes each source sent.
//!
//! Sources come from the tracker (`WhoHas`) and, with `--dht`, from the Mainline DHT
//! (`crate::dht`): the addresses announced under the content's key, named `dht:ADDR`. Every
//! candidate, wherever it came from, is asked for its entry of the hash before it is used,
//! and every piece it sends is checked against the hash.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use p2p_core::service::swarm::{
    swarm_download, Source, SourceReport, SourceState, SwarmConfig, SwarmProgress,
};
use p2p_core::service::{EndpointHandle, HeldEntry, ServiceError};
use p2p_proto::wire::{ContentHash, PeerInfo, TransportKind};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::cli::GetArgs;
use crate::dht::{lookup::lookup, plan::merge, DhtNode};
use crate::failure::{fail, Kind};
use crate::output::{clean, human_bytes};
use crate::session::dest_for;
use crate::signals::Shutdown;

/// Prefix of a content address on the command line.
pub(crate) const HASH_PREFIX: &str = "blake3:";

/// Most sources looked up and used for one download.
const MAX_SOURCES: usize = 16;
/// How long a source's lookup may take before the download goes on without it.
const LOOKUP_WAIT: Duration = Duration::from_secs(3);
/// How long its answer to `EntryByHash` is waited for before its listing is asked for.
const ASK_WAIT: Duration = Duration::from_secs(1);
/// How often the tracker is asked again for sources while a download runs: soon after it
/// starts (downloaders starting together find each other), then every 5 s.
const REFRESH_SOURCES: Duration = Duration::from_secs(5);
const REFRESH_FIRST: Duration = Duration::from_millis(500);
/// How often the DHT is asked again for sources while a download runs (each lookup a few
/// dozen small datagrams), and how long each may take.
const REFRESH_DHT: Duration = Duration::from_secs(30);
const DHT_REFRESH_WAIT: Duration = Duration::from_secs(5);

/// `blake3:` and 64 hex digits, as `p2p ls --json` and the share tickets write a hash.
pub(crate) fn parse_hash(s: &str) -> Option<Result<ContentHash, String>> {
    let hex = s.strip_prefix(HASH_PREFIX)?;
    let bad = || format!("`{s}` is not a content hash: expected {HASH_PREFIX} and 64 hex digits");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(Err(bad()));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| bad())
            .ok()?;
    }
    Some(Ok(ContentHash(out)))
}

/// The live peers the tracker says share `hash`.
pub(crate) async fn holders(
    via: &EndpointHandle,
    tracker: SocketAddr,
    hash: ContentHash,
) -> Result<Vec<PeerInfo>, ServiceError> {
    via.who_has(tracker, hash).await
}

/// The sources among `peers` that `handle` can reach (its transport, its address family) and
/// that list `hash`, each with its entry, looked up at once; those slower than
/// [`LOOKUP_WAIT`] or that do not list it are left out.
pub(crate) async fn sources(
    handle: &EndpointHandle,
    peers: Vec<PeerInfo>,
    hash: ContentHash,
    skip: &[SocketAddr],
) -> Vec<Source> {
    let mut lookups = JoinSet::new();
    let local = handle.local_addr();
    for p in peers
        .into_iter()
        .filter(|p| p.transport == handle.kind() && p.addr.is_ipv4() == local.is_ipv4())
        .filter(|p| !skip.contains(&p.addr))
        .take(MAX_SOURCES)
    {
        let h = handle.clone();
        lookups.spawn(async move {
            // One round trip; a peer that predates `EntryByHash` does not answer it, and is
            // looked up in its listing instead.
            let asked = tokio::time::timeout(ASK_WAIT, h.entry_by_hash(p.addr, hash)).await;
            let held =
                match asked {
                    Ok(Ok(held)) => held,
                    _ => {
                        let listing =
                            tokio::time::timeout(LOOKUP_WAIT - ASK_WAIT, h.index(p.addr)).await;
                        match listing {
                            Ok(Ok((_, entries))) => entries
                                .into_iter()
                                .find(|e| e.hash == hash)
                                .map(|entry| HeldEntry {
                                    entry,
                                    partial: false,
                                }),
                            _ => None,
                        }
                    }
                };
            held.map(|held| Source {
                name: p.name.to_string(),
                addr: p.addr,
                entry: held.entry,
                partial: held.partial,
            })
        });
    }
    let mut found = Vec::new();
    while let Some(joined) = lookups.join_next().await {
        if let Ok(Some(s)) = joined {
            found.push(s);
        }
    }
    // A stable order (the scheduler hands out runs in source order).
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// Where a download finds sources: the tracker (none with `--dht` and no tracker given) and
/// the DHT (with `--dht`).
#[derive(Clone, Debug)]
pub(crate) struct Finders {
    /// The tracker to ask `WhoHas`.
    pub(crate) tracker: Option<SocketAddr>,
    /// The DHT node to look the content up with.
    pub(crate) dht: Option<DhtNode>,
}

impl Finders {
    /// The tracker alone (today's behaviour without `--dht`).
    pub(crate) fn tracker(tracker: SocketAddr) -> Finders {
        Finders {
            tracker: Some(tracker),
            dht: None,
        }
    }

    /// The candidates they know now: the tracker's holders, then the DHT's finds (within
    /// `dht_wait`) that the tracker did not name; an unreachable tracker counts as none.
    async fn candidates(
        &self,
        handle: &EndpointHandle,
        hash: ContentHash,
        dht_wait: Duration,
    ) -> Vec<PeerInfo> {
        let holders = match self.tracker {
            Some(t) => handle.who_has(t, hash).await.unwrap_or_default(),
            None => Vec::new(),
        };
        match &self.dht {
            Some(node) => {
                let found = lookup(node, &hash, handle.kind(), dht_wait).await;
                merge(holders, &found.found, handle.kind())
            }
            None => holders,
        }
    }
}

/// Downloads `hash` from `first` (if given) and every other source the tracker or the DHT
/// knows (`finders`), with `handle` (a client endpoint tuned for the download).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    args: &GetArgs,
    handle: &EndpointHandle,
    finders: &Finders,
    hash: ContentHash,
    first: Option<Source>,
    others: Vec<Source>,
    shutdown: &mut Shutdown,
) -> Result<()> {
    let mut found: Vec<Source> = first.into_iter().collect();
    found.extend(others);
    let Some(lead) = found.first().cloned() else {
        let tracker = finders
            .tracker
            .map_or("no tracker was given".to_string(), |t| {
                format!(
                    "the tracker at {t} knows no live {} peer with it",
                    transport_name(handle.kind())
                )
            });
        fail!(
            Kind::UnknownFile,
            "nobody reachable shares {HASH_PREFIX}{}: {tracker} (`p2p peers` shows who is online)",
            hash.to_hex(),
        );
    };
    let dest = dest_for(&args.out, &lead.entry.path)?;
    if super::get::already_present(args, &dest, &lead.entry)? {
        return Ok(());
    }
    let serving = match (&args.serve, finders.tracker) {
        (Some(name), Some(tracker)) => serve_as(args, handle, tracker, name).await,
        (Some(_), None) => {
            eprintln!("warning: not serving while downloading: --serve registers with a tracker, and none was given");
            None
        }
        (None, _) => None,
    };
    // New sources found while it runs join in.
    let (more_tx, more_rx) = mpsc::unbounded_channel();
    let finder = {
        let (handle, mut known, me, finders) = (
            handle.clone(),
            found.iter().map(|s| s.addr).collect::<Vec<_>>(),
            serving.clone(),
            finders.clone(),
        );
        tokio::spawn(async move {
            let mut every = REFRESH_FIRST;
            let mut dht_due = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(every).await;
                every = (every * 2).min(REFRESH_SOURCES);
                // The DHT every REFRESH_DHT (the first time at once: with a tracker's holders
                // the download started without waiting for it), the tracker every time.
                let mut asked = finders.clone();
                if tokio::time::Instant::now() < dht_due {
                    asked.dht = None;
                } else {
                    dht_due = tokio::time::Instant::now() + REFRESH_DHT;
                }
                let mut peers = asked.candidates(&handle, hash, DHT_REFRESH_WAIT).await;
                // Serving, this download is a holder too.
                peers.retain(|p| Some(&*p.name) != me.as_deref());
                for s in sources(&handle, peers, hash, &known).await {
                    known.push(s.addr);
                    if more_tx.send(s).is_err() {
                        return;
                    }
                }
            }
        })
    };
    let (tx, rx) = watch::channel(SwarmProgress::default());
    let watcher = if args.json {
        checkpoints(rx)
    } else if std::io::stderr().is_terminal() {
        progress_bar(clean(&lead.entry.path), rx)
    } else {
        tokio::spawn(async {})
    };
    let download = swarm_download(
        handle,
        hash,
        lead.entry.size,
        found,
        Some(more_rx),
        dest.clone(),
        tx,
        SwarmConfig {
            window_bytes: args.window,
            serve: serving.is_some(),
            ..SwarmConfig::default()
        },
    );
    let (result, interrupted) = super::get::until_stopped(download, handle, shutdown).await;
    finder.abort();
    if let (Some(name), Some(tracker)) = (serving, finders.tracker) {
        let _ = handle.unregister(tracker, &name).await;
    }
    watcher.abort();
    if !args.json && std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
    if let Some(e) = interrupted
        .then(|| super::get::interrupted(&result, lead.entry.size))
        .flatten()
    {
        return Err(e);
    }
    if let Err(ServiceError::DestinationExists(_)) = &result {
        if super::get::already_present(args, &dest, &lead.entry)? {
            return Ok(());
        }
    }
    let r = result.with_context(|| {
        format!(
            "download of {} ({HASH_PREFIX}{}) failed",
            clean(&lead.entry.path),
            hash.to_hex()
        )
    })?;
    if let Some(why) = &r.discarded {
        eprintln!("note: {why}");
    }
    if !args.json {
        if r.resumed_from > 0 {
            eprintln!(
                "resumed at {} of {} (the verified part was kept)",
                human_bytes(r.resumed_from),
                human_bytes(r.size)
            );
        }
        describe_sources(&r.sources);
    }
    let received = r.size - r.resumed_from;
    let done = super::get::Outcome {
        size: r.size,
        received,
        elapsed: r.elapsed,
        first_byte: None,
        resumed_from: r.resumed_from,
        refetched: r.refetched as u32,
        already: false,
        route: None,
        sources: Some(r.sources.iter().map(source_json).collect()),
    };
    super::get::report(args, &r.path, &done);
    Ok(())
}

/// `--serve [NAME]`: registers the download's endpoint with the tracker as NAME (or
/// `get-XXXX`), so that other downloaders find the pieces it verified; the name registered,
/// or `None` (with a warning: the download goes on without serving) if the tracker refused.
async fn serve_as(
    args: &GetArgs,
    handle: &EndpointHandle,
    tracker: SocketAddr,
    name: &str,
) -> Option<String> {
    let name = match name {
        "" => format!("get-{:04x}", rand::random::<u16>()),
        name => name.to_string(),
    };
    let port = handle.local_addr().port();
    match handle
        .register(tracker, &name, port, handle.kind(), None)
        .await
    {
        Ok(()) => {
            if !args.json {
                eprintln!(
                    "serving the verified pieces to other downloaders as {} on {}",
                    clean(&name),
                    handle.local_addr()
                );
            }
            Some(name)
        }
        Err(e) => {
            eprintln!(
                "warning: not serving while downloading: the tracker at {tracker} refused `{}`: {} (pick another name with --serve NAME)",
                clean(&name),
                clean(&e.to_string())
            );
            None
        }
    }
}

fn transport_name(kind: TransportKind) -> &'static str {
    match kind {
        TransportKind::Udp => "UDP",
        TransportKind::Tcp => "TCP",
    }
}

/// One line per source on stderr: what it sent, and why it was dropped if it was.
fn describe_sources(sources: &[SourceReport]) {
    let used = sources.iter().filter(|s| s.bytes > 0).count();
    let parts: Vec<String> = sources
        .iter()
        .filter(|s| s.bytes > 0)
        .map(|s| match s.failures {
            0 => format!("{} {}", clean(&s.name), human_bytes(s.bytes)),
            n => format!(
                "{} {} ({n} failure{})",
                clean(&s.name),
                human_bytes(s.bytes),
                if n == 1 { "" } else { "s" }
            ),
        })
        .collect();
    eprintln!(
        "from {used} source{}: {}",
        if used == 1 { "" } else { "s" },
        parts.join(", ")
    );
    for s in sources {
        if let SourceState::Dropped(why) = &s.state {
            eprintln!("dropped {} ({}): {}", clean(&s.name), s.addr, clean(why));
        }
    }
}

fn source_json(s: &SourceReport) -> serde_json::Value {
    json!({
        "name": s.name,
        "addr": s.addr.to_string(),
        "bytes": s.bytes,
        "failures": s.failures,
        "dropped": match &s.state {
            SourceState::Active => None,
            SourceState::Dropped(why) => Some(why.clone()),
        },
    })
}

/// In `--json` mode: one line on stderr per checkpoint recorded.
fn checkpoints(mut rx: watch::Receiver<SwarmProgress>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = 0;
        while rx.changed().await.is_ok() {
            let p = rx.borrow().clone();
            if p.saved > last {
                last = p.saved;
                eprintln!(
                    "{}",
                    json!({"checkpoint": p.saved, "received": p.have, "total": p.total, "sources": p.active_sources()})
                );
            }
        }
    })
}

/// One bar: the file, the sources in use, percent, bytes, total rate, elapsed, eta.
fn progress_bar(
    name: String,
    mut rx: watch::Receiver<SwarmProgress>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {percent:>3}% {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {elapsed} eta {eta}",
            )
            .expect("valid template"),
        );
        bar.set_message(name.clone());
        let mut started = false;
        while rx.changed().await.is_ok() {
            let p = rx.borrow().clone();
            if p.total == 0 {
                continue;
            }
            bar.set_length(p.total);
            bar.set_position(p.have);
            if !started {
                started = true;
                bar.reset_eta();
            }
            let n = p.active_sources();
            bar.set_message(format!(
                "{name} ({n} source{})",
                if n == 1 { "" } else { "s" }
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_parse_only_in_full() {
        let hex = "ab".repeat(32);
        assert_eq!(
            parse_hash(&format!("blake3:{hex}")),
            Some(Ok(ContentHash([0xab; 32])))
        );
        assert!(parse_hash("alice").is_none());
        assert!(matches!(parse_hash("blake3:abc"), Some(Err(_))));
        assert!(matches!(
            parse_hash(&format!("blake3:{}", "zz".repeat(32))),
            Some(Err(_))
        ));
    }
}
