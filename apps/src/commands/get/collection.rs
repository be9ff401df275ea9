//! `get` of a collection (a folder shared as one hash; see `p2p_core::collection`): by a
//! ticket or `blake3:HEX` of a folder, by `PEER ID` of a folder's entry, or by `PEER FOLDER`.
//!
//! No manifest travels: the listing of a peer that has the collection is taken, the manifest
//! rebuilt from the files below the folder ([`plan`]) and checked against the collection hash
//! (a folder changed since the hash was handed out is refused, with the reason), then each
//! file is fetched by its own hash as `get PEER ID` fetches one (from every holder, verified,
//! resumable) into `--out/FOLDER-NAME/RELATIVE-PATH`. Files already there are skipped, a
//! partial one resumes; empty files are created without asking anyone.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use p2p_core::collection::{folder_prefix, is_collection, Manifest, ManifestError};
use p2p_core::index::{safe_file_name, safe_relative};
use p2p_core::service::swarm::Source;
use p2p_core::service::EndpointHandle;
use p2p_proto::wire::{ContentHash, IndexEntry, PeerInfo};
use serde_json::json;

use super::{already_present, fetch_file, report, Fetching, Outcome};
use crate::cli::GetArgs;
use crate::failure::{fail, failure, Kind};
use crate::output::{clean, human_bytes};
use crate::session::{dest_for, Route};
use crate::signals::Shutdown;

/// The files of a collection as one peer lists them, checked against its hash.
pub(crate) struct Plan {
    /// The collection hash the files were checked against (or, for a folder its peer lists
    /// without one, the hash they make).
    pub(crate) hash: ContentHash,
    /// Total size of the files.
    pub(crate) size: u64,
    /// Each file: the peer's entry for it, and its path below the folder.
    pub(crate) files: Vec<(IndexEntry, PathBuf)>,
    /// Files below the folder left out for an unsafe path (as the peer's hash leaves them).
    pub(crate) skipped: Vec<String>,
}

/// Why a listing gives no plan for a collection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlanError {
    /// No file below the folder.
    #[error("no file below it")]
    Empty,
    /// The files below it are not a manifest (a hostile or broken listing).
    #[error("its files are not a valid collection: {0}")]
    Invalid(#[from] ManifestError),
    /// They hash to another collection: the folder changed since its hash was handed out.
    #[error("its files hash to {}{}, not to {}{}", HASH, .got.to_hex(), HASH, .want.to_hex())]
    Changed {
        /// The hash asked for.
        want: ContentHash,
        /// The hash the files make now.
        got: ContentHash,
    },
}

/// How a content hash is written on the command line.
const HASH: &str = super::swarm_get::HASH_PREFIX;

/// The plan for the collection entry `path` (`photos/`, or `/` for the whole share) in a
/// peer's `listing`: its files in manifest order, checked against `want` if given.
pub(crate) fn plan(
    listing: &[IndexEntry],
    path: &str,
    want: Option<ContentHash>,
) -> Result<Plan, PlanError> {
    let prefix = folder_prefix(path).ok_or(PlanError::Empty)?;
    let (manifest, skipped) = Manifest::from_listing(prefix, listing)?;
    if manifest.files().is_empty() {
        return Err(PlanError::Empty);
    }
    let got = manifest.hash();
    if let Some(want) = want.filter(|w| *w != got) {
        return Err(PlanError::Changed { want, got });
    }
    let by_path: HashMap<&str, &IndexEntry> = listing
        .iter()
        .filter(|e| !is_collection(e))
        .map(|e| (e.path.as_str(), e))
        .collect();
    let files = manifest
        .files()
        .iter()
        .filter_map(|f| {
            let entry = by_path.get(format!("{prefix}{}", f.path).as_str())?;
            Some(((*entry).clone(), safe_relative(&f.path)?))
        })
        .collect();
    Ok(Plan {
        hash: got,
        size: manifest.size(),
        files,
        skipped,
    })
}

/// The name a collection entry's folder is saved under: its last component, or for the
/// whole share (`/`) the share's name; `hint` (a ticket's name) first, when given.
pub(crate) fn folder_name(path: &str, share: &str, hint: Option<&str>) -> Result<String> {
    let wanted = match hint {
        Some(hint) => hint.trim_end_matches('/'),
        None if path == p2p_core::collection::ROOT_PATH => share,
        None => path.trim_end_matches('/'),
    };
    match safe_file_name(wanted) {
        Some(name) => Ok(name),
        None => fail!(
            Kind::Failed,
            "the folder's name `{}` is unsafe; refusing",
            clean(wanted)
        ),
    }
}

/// `get` of the collection entry `entry` of the peer `at` names, from the listing `listing`
/// (and share name `share`) it comes from: checks the files against the entry's hash, then
/// fetches the tree. An entry its own listing's files do not back is refused, as the file
/// with an unsafe name (ending with `/`) it then is.
pub(super) async fn fetch_listed(
    args: &GetArgs,
    at: &Fetching<'_>,
    (share, listing): (&str, &[IndexEntry]),
    entry: &IndexEntry,
    shutdown: &mut Shutdown,
) -> Result<()> {
    let plan = match plan(listing, &entry.path, Some(entry.hash)) {
        Ok(plan) => plan,
        // The entry and the files come from one listing: a peer whose folder entry its own
        // files do not back lists a file under a name that ends with `/`.
        Err(e) => fail!(
            Kind::Failed,
            "peer `{}` announced an unsafe file name `{}` (listed as a folder, but {e}); refusing",
            clean(&at.info.name),
            clean(&entry.path)
        ),
    };
    let name = folder_name(&entry.path, share, None)?;
    fetch_tree(args, at, &name, plan, shutdown).await
}

/// `get PEER FOLDER` (`FOLDER`, `FOLDER/`, or `/` for the whole share): the collection the
/// peer lists for it, checked against its hash; a peer that lists no collection for it (one
/// from before collections) has its files below `FOLDER/` fetched all the same.
pub(super) async fn fetch_folder(
    args: &GetArgs,
    at: &Fetching<'_>,
    (share, listing): (&str, &[IndexEntry]),
    folder: &str,
    shutdown: &mut Shutdown,
) -> Result<()> {
    let path = p2p_core::collection::collection_path(folder.trim_matches('/'));
    let listed = listing.iter().find(|e| e.path == path);
    if let Some(entry) = listed {
        return fetch_listed(args, at, (share, listing), entry, shutdown).await;
    }
    let plan = match plan(listing, &path, None) {
        Ok(plan) => plan,
        Err(PlanError::Empty) => fail!(
            Kind::UnknownFile,
            "peer `{}` has no file or folder `{}`: run `p2p ls {}` to see its files",
            clean(&at.info.name),
            clean(folder),
            clean(&at.info.name)
        ),
        Err(e) => fail!(Kind::UnknownFile, "cannot fetch `{}`: {e}", clean(folder)),
    };
    let name = folder_name(&path, share, None)?;
    fetch_tree(args, at, &name, plan, shutdown).await
}

/// `get TICKET` or `get blake3:HEX` of a collection: the first of `found` (the holders whose
/// entry for `hash` is a collection) whose listing checks against it gives the files, each
/// then fetched from every holder. `hint`: the folder's name from the ticket.
pub(super) async fn fetch_by_hash(
    args: &GetArgs,
    handle: &EndpointHandle,
    tracker: SocketAddr,
    hash: ContentHash,
    found: Vec<Source>,
    hint: Option<&str>,
    shutdown: &mut Shutdown,
) -> Result<()> {
    let command_start = std::time::Instant::now();
    let mut why = Vec::new();
    for source in found.iter().filter(|s| is_collection(&s.entry)) {
        let listing = match handle.index(source.addr).await {
            Ok(listing) => listing,
            Err(e) => {
                why.push(format!("{}: cannot list it: {e}", clean(&source.name)));
                continue;
            }
        };
        let plan = match plan(&listing.1, &source.entry.path, Some(hash)) {
            Ok(plan) => plan,
            Err(e) => {
                why.push(format!("{}: {e}", clean(&source.name)));
                continue;
            }
        };
        let name = folder_name(&source.entry.path, &listing.0, hint)?;
        let info = PeerInfo {
            name: source.name.as_str().into(),
            addr: source.addr,
            transport: handle.kind(),
        };
        let at = Fetching {
            to_peer: handle,
            tracker,
            info: &info,
            route: Route::Direct,
            command_start,
        };
        return fetch_tree(args, &at, &name, plan, shutdown).await;
    }
    fail!(
        Kind::UnknownFile,
        "no peer has the folder {HASH}{} as it was when its hash was handed out: it changed \
         since the ticket was made (ask its sharer for a new ticket; `p2p share` prints one). \
         {}",
        hash.to_hex(),
        why.join("; ")
    )
}

/// What `get` of a collection nobody has says: for a ticket of a folder, that the folder
/// may have changed since the ticket was made.
pub(super) fn nobody_has(hash: ContentHash, tracker: SocketAddr, folder: &str) -> anyhow::Error {
    failure(
        Kind::UnknownFile,
        format!(
            "nobody reachable shares the folder `{}` ({HASH}{}) as it was when the ticket was \
             made: its sharer changed it since (ask for a new ticket) or left; the tracker at \
             {tracker} knows no live peer with it",
            clean(folder.trim_end_matches('/')),
            hash.to_hex()
        ),
    )
}

/// Fetches every file of `plan` below `--out/name/`, in manifest order, then reports the
/// folder.
async fn fetch_tree(
    args: &GetArgs,
    at: &Fetching<'_>,
    name: &str,
    plan: Plan,
    shutdown: &mut Shutdown,
) -> Result<()> {
    let root = args.out.join(name);
    let count = plan.files.len();
    if !args.json {
        eprintln!(
            "{name}/: {count} file{} ({}) from {}",
            if count == 1 { "" } else { "s" },
            human_bytes(plan.size),
            clean(&at.info.name)
        );
    }
    for path in &plan.skipped {
        eprintln!("skipped `{}`: an unsafe path from the peer", clean(path));
    }
    let started = std::time::Instant::now();
    for (entry, rel) in plan.files {
        let dir = match rel.parent() {
            Some(p) => root.join(p),
            None => root.clone(),
        };
        let mut one = args.clone();
        one.out = dir;
        if entry.size == 0 {
            create_empty(&one, &entry)?;
        } else {
            fetch_file(&one, at, entry, shutdown).await?;
        }
    }
    report_tree(args, &root, &plan.hash, count, plan.size, started.elapsed());
    Ok(())
}

/// An empty file of the collection, created where it goes (its content is known: nobody is
/// asked); one with other content there already is refused.
fn create_empty(args: &GetArgs, entry: &IndexEntry) -> Result<()> {
    let dest = dest_for(&args.out, &entry.path)?;
    if already_present(args, &dest, entry)? {
        return Ok(());
    }
    if entry.hash != ContentHash::of(b"") {
        fail!(
            Kind::Failed,
            "the peer lists `{}` as empty but with the hash of other content; refusing",
            clean(&entry.path)
        );
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&dest)
        .with_context(|| format!("cannot create {}", dest.display()))?;
    let made = Outcome {
        size: 0,
        received: 0,
        elapsed: Duration::ZERO,
        first_byte: None,
        resumed_from: 0,
        refetched: 0,
        already: false,
        route: None,
        sources: None,
    };
    report(args, &dest, &made);
    Ok(())
}

/// The folder's line once every file is there: on stderr for people, a JSON line on stdout
/// (after the files') with `--json`.
fn report_tree(
    args: &GetArgs,
    root: &Path,
    hash: &ContentHash,
    files: usize,
    size: u64,
    elapsed: Duration,
) {
    if args.json {
        println!(
            "{}",
            json!({
                "collection": format!("{HASH}{}", hash.to_hex()),
                "path": root.display().to_string(),
                "files": files,
                "size": size,
                "elapsed_ms": elapsed.as_millis() as u64,
                "verified": true,
            })
        );
    } else {
        eprintln!(
            "saved folder {} ({files} file{}, {}), each file BLAKE3 verified",
            root.display(),
            if files == 1 { "" } else { "s" },
            human_bytes(size)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_proto::wire::FileId;

    fn entry(id: u32, path: &str, content: &[u8]) -> IndexEntry {
        IndexEntry {
            id: FileId(id),
            path: path.into(),
            size: content.len() as u64,
            hash: ContentHash::of(content),
        }
    }

    #[test]
    fn a_plan_checks_the_listing_against_the_hash() {
        let mut listing = vec![
            entry(1, "pics/b.txt", b"b"),
            entry(2, "pics/sub/a.txt", b"a"),
            entry(3, "other.txt", b"o"),
        ];
        let (m, _) = Manifest::from_listing("pics/", &listing).unwrap();
        let p = plan(&listing, "pics/", Some(m.hash())).unwrap();
        let got: Vec<_> = p
            .files
            .iter()
            .map(|(e, rel)| (e.id.0, rel.clone()))
            .collect();
        assert_eq!(
            got,
            [(1, PathBuf::from("b.txt")), (2, PathBuf::from("sub/a.txt"))]
        );
        assert_eq!(p.size, 2);
        // The whole share.
        assert_eq!(plan(&listing, "/", None).unwrap().files.len(), 3);
        // A file changed since: refused, saying what the files make now.
        listing[1] = entry(2, "pics/sub/a.txt", b"A");
        assert!(matches!(
            plan(&listing, "pics/", Some(m.hash())),
            Err(PlanError::Changed { want, .. }) if want == m.hash()
        ));
        assert!(matches!(
            plan(&listing, "none/", None),
            Err(PlanError::Empty)
        ));
    }

    #[test]
    fn folder_names_are_safe() {
        assert_eq!(folder_name("a/b/", "s", None).unwrap(), "b");
        assert_eq!(folder_name("/", "share", None).unwrap(), "share");
        assert_eq!(
            folder_name("/", "share", Some("photos/")).unwrap(),
            "photos"
        );
        assert!(folder_name("/", "..", None).is_err());
    }
}
