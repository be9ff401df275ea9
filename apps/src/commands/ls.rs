//! `p2p ls NAME`: the files a peer shares, and its folders as collections (one line each,
//! marked as a folder with its file count; `p2p get NAME ID` of one fetches its tree).

use std::collections::HashMap;

use anyhow::Result;
use p2p_core::collection::is_collection;
use p2p_proto::wire::IndexEntry;
use serde_json::json;

use crate::cli::LsArgs;
use crate::output::{clean, human_bytes, id_width, print_index};
use crate::session::{self, reach, Mode};

pub(crate) async fn run(args: LsArgs) -> Result<()> {
    let t = &args.tracker;
    let via = session::tracker_client(t).await?;
    let peer = reach(&via, t.tracker, &args.peer, Mode::Cli, |_| {}).await?;
    let (share, entries) = peer.index().await?;
    let counts = file_counts(&entries);
    if args.json {
        let list: Vec<_> = entries.iter().map(|e| entry_json(e, &counts)).collect();
        println!("{}", serde_json::Value::Array(list));
    } else if entries.iter().any(is_collection) {
        print_with_folders(&share, &entries, &counts);
    } else {
        print_index(&peer.info.name, &share, &entries);
    }
    Ok(())
}

/// One entry for `--json`: `collection` says whether it is a folder, and a folder has its
/// number of `files` (at any depth).
fn entry_json(e: &IndexEntry, counts: &HashMap<&str, usize>) -> serde_json::Value {
    let mut v = json!({
        "id": e.id.to_string(),
        "path": e.path,
        "size": e.size,
        "hash": e.hash.to_hex(),
        "collection": is_collection(e),
    });
    if is_collection(e) {
        v["files"] = json!(counts.get(e.path.as_str()).copied().unwrap_or(0));
    }
    v
}

/// The listing as `print_index` prints it, a folder's line marked as such:
/// `ID: 004 -> share/pics/ (folder, 2 files, 305.0 KiB)`.
fn print_with_folders(share: &str, entries: &[IndexEntry], counts: &HashMap<&str, usize>) {
    let share = clean(share);
    let width = id_width(entries);
    let mut sorted: Vec<&IndexEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| e.id);
    for e in sorted {
        let what = match counts.get(e.path.as_str()).filter(|_| is_collection(e)) {
            Some(n) => format!(
                "folder, {n} file{}, {}",
                if *n == 1 { "" } else { "s" },
                human_bytes(e.size)
            ),
            None => human_bytes(e.size),
        };
        println!(
            "ID: {:0width$} -> {share}/{} ({what})",
            e.id.0,
            clean(&e.path)
        );
    }
}

/// How many files each folder of the listing holds at any depth, by the folder's collection
/// path (`pics/`): one pass over the files and their folders.
fn file_counts(entries: &[IndexEntry]) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for e in entries.iter().filter(|e| !is_collection(e)) {
        for (at, _) in e.path.match_indices('/') {
            *counts.entry(&e.path[..=at]).or_insert(0) += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_proto::wire::{ContentHash, FileId};

    #[test]
    fn folders_count_their_files_at_any_depth() {
        let e = |path: &str| IndexEntry {
            id: FileId(1),
            path: path.into(),
            size: 1,
            hash: ContentHash::of(b""),
        };
        let entries = [e("a/x"), e("a/b/y"), e("a/b/z"), e("c"), e("a/"), e("a/b/")];
        let counts = file_counts(&entries);
        assert_eq!(counts.get("a/"), Some(&3));
        assert_eq!(counts.get("a/b/"), Some(&2));
        assert_eq!(counts.len(), 2);
        let folder = entry_json(&entries[4], &counts);
        assert_eq!(
            (folder["collection"].as_bool(), folder["files"].as_u64()),
            (Some(true), Some(3))
        );
        let file = entry_json(&entries[0], &counts);
        assert_eq!(file["collection"].as_bool(), Some(false));
        assert!(file.get("files").is_none());
    }
}
