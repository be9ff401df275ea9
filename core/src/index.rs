//! `ShareIndex`: the files a peer shares, with stable short IDs, sizes and BLAKE3 hashes.
//!
//! Every regular file under the share folder counts (recursively). Symbolic links are never
//! followed, so nothing outside the folder can be shared by accident. IDs are given in sorted
//! order of relative path at the first scan; files that appear later get the next free IDs,
//! and a path keeps its ID while the peer runs. Hashes are recomputed only when a file's size or
//! modification time changes.
//!
//! Each folder of the share that holds files (at any depth), the share's top folder too, is
//! also a *collection* (see [`crate::collection`]): an entry whose path is the folder's with a
//! trailing `/` (`photos/`, `photos/2024/`; the top folder's is `/`), whose size is the total
//! of its files and whose hash is its manifest's. Collections of subfolders are listed after
//! the files of the scan that found them, with IDs of their own (stable while the folder
//! holds files); the top folder's, with ID `000`, is not listed (a listing of a flat share
//! stays as it was) but is found by its hash and announced like the others. A collection has
//! no bytes: [`ShareIndex::get`] knows files only, so a request to download one is refused
//! as for a file that does not exist. At most [`MAX_COLLECTIONS`] folders (the first in path
//! order) get a collection, so that a listing stays within what a client takes (files and
//! collections together at most 200,000 entries); the others are still fetched by path.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use std::sync::Arc;

use crate::collection::{collection_path, ManifestHasher, MAX_MANIFEST_FILES, ROOT_PATH};
use crate::transfer::{PieceHasher, PieceTable};
use crate::wire::{ContentHash, FileId, IndexEntry, MAX_PATH_LEN, PIECE_SIZE};

/// Temporary download files end with this suffix; the index skips them.
pub const PARTIAL_SUFFIX: &str = ".p2p-part";
/// Resume state files end with this suffix; the index skips them.
pub const STATE_SUFFIX: &str = ".p2p-state";
/// A resume state being written ends with this suffix; the index skips it.
pub const STATE_TMP_SUFFIX: &str = ".p2p-state.tmp";
/// The lock file of a download in progress ends with this suffix; the index skips it.
pub const LOCK_SUFFIX: &str = ".p2p-lock";

/// Whether `name` is one of the files a download in progress keeps beside its destination.
pub fn is_download_file(name: &str) -> bool {
    [PARTIAL_SUFFIX, STATE_SUFFIX, STATE_TMP_SUFFIX, LOCK_SUFFIX]
        .iter()
        .any(|s| name.ends_with(s))
}
/// Deepest folder nesting scanned.
const MAX_DEPTH: usize = 32;
/// Most files indexed.
const MAX_FILES: usize = 100_000;
/// Most folders given a collection entry: with [`MAX_FILES`] files, a listing holds at most
/// 200,000 entries, what a client takes (`MAX_INDEX_ENTRIES`).
pub const MAX_COLLECTIONS: usize = 100_000;
/// The ID of the collection of the share's top folder (never a file's: those start at 1).
pub const ROOT_COLLECTION_ID: FileId = FileId(0);

#[derive(Clone, Debug)]
struct Indexed {
    entry: IndexEntry,
    modified: Option<SystemTime>,
    pieces: Arc<Vec<ContentHash>>,
}

/// What the index knows of one shared file.
#[derive(Clone, Debug)]
pub struct SharedFile {
    /// The entry as listed.
    pub entry: IndexEntry,
    /// Absolute path.
    pub path: PathBuf,
    /// Modification time when hashed (a change means the content may differ).
    pub modified: Option<SystemTime>,
    /// BLAKE3 of each [`PIECE_SIZE`] piece.
    pub pieces: Arc<Vec<ContentHash>>,
}

/// How [`ShareIndex`] hashes a file into its content hash and piece hashes.
type HashFile = fn(&Path, u32) -> io::Result<(ContentHash, Vec<ContentHash>)>;

/// The share folder's index. A clone is cheap (the maps are shared until a scan finds a
/// change), so that a scan can run on another thread beside the index it compares with.
#[derive(Clone, Debug)]
pub struct ShareIndex {
    root: PathBuf,
    by_path: Arc<BTreeMap<String, Indexed>>,
    /// Each file's path by ID, and the lowest ID by content hash: a request's lookup costs
    /// O(1), not a scan of 100,000 entries. Rebuilt with `by_path`.
    by_id: Arc<HashMap<FileId, String>>,
    by_hash: Arc<HashMap<ContentHash, FileId>>,
    /// Files that could not be read when last seen (size, modification time): tried again
    /// only once they change, so that one unreadable file does not make every rescan a
    /// change (and re-hash every folder's manifest).
    unreadable: Arc<BTreeMap<String, (u64, Option<SystemTime>)>>,
    /// Hashes one file ([`hash_pieces`]; tests make it fail).
    hash_file: HashFile,
    next_id: u32,
    /// The collection entries, by path (`photos/`; the top folder's is `/`).
    collections: Arc<BTreeMap<String, IndexEntry>>,
}

impl ShareIndex {
    /// An empty index of `root`; call [`ShareIndex::refresh`] to fill it.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ShareIndex {
            root: root.into(),
            by_path: Arc::default(),
            by_id: Arc::default(),
            by_hash: Arc::default(),
            unreadable: Arc::default(),
            hash_file: hash_pieces,
            next_id: 1,
            collections: Arc::default(),
        }
    }

    /// The share folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder the entries' paths are relative to: the share folder, or the folder of a
    /// shared single file.
    fn base(&self) -> &Path {
        if self.single_file() {
            self.root.parent().unwrap_or(Path::new("."))
        } else {
            &self.root
        }
    }

    /// The share is one file (`p2p share FILE`), not a folder.
    fn single_file(&self) -> bool {
        fs::symlink_metadata(&self.root).is_ok_and(|m| m.is_file())
    }

    /// Rescans the folder: new files get new IDs, changed files are re-hashed, removed files
    /// leave the index. Fails only when the folder itself cannot be read. A share that is a
    /// single file lists that file alone, under its name. Returns whether anything changed
    /// (a file came, went, or changed size or modification time): a scan that finds the
    /// folder as it was costs its directory reads and one `stat` per file, nothing more.
    pub fn refresh(&mut self) -> io::Result<bool> {
        let mut found = Vec::new();
        if self.single_file() {
            let meta = fs::symlink_metadata(&self.root)?;
            let name = relative_name(self.base(), &self.root)
                .ok_or_else(|| io::Error::other("the shared file's name is not valid UTF-8"))?;
            found.push((name, meta.len(), meta.modified().ok()));
        } else {
            walk(&self.root, "", 0, &mut found)?;
        }
        // The walk stops one file past the cap: that one only says that there are more.
        if found.len() > MAX_FILES {
            found.truncate(MAX_FILES);
            tracing::warn!(
                root = %self.root.display(),
                "the share holds more than {MAX_FILES} files; only the first {MAX_FILES} (in path order) are shared"
            );
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        // Unreadable as before: as if not there (tried again when they change).
        let still_unreadable = |rel: &String, size: u64, modified: Option<SystemTime>| {
            self.unreadable.get(rel) == Some(&(size, modified))
        };
        let readable = found
            .iter()
            .filter(|(rel, size, modified)| !still_unreadable(rel, *size, *modified));
        let same = found.len() == self.by_path.len() + self.unreadable.len()
            && readable
                .zip(self.by_path.iter())
                .all(|((rel, size, modified), (path, i))| {
                    rel == path && *size == i.entry.size && *modified == i.modified
                })
            && found
                .iter()
                .filter(|(rel, size, modified)| still_unreadable(rel, *size, *modified))
                .count()
                == self.unreadable.len();
        if same {
            return Ok(false);
        }
        let mut next = BTreeMap::new();
        let mut unreadable = BTreeMap::new();
        // Whether any file came, went or changed: only then are the collections hashed again.
        let mut changed = false;
        // Files of the old index found again (changed or not); fewer than it holds: some went.
        let mut kept = 0;
        for (rel, size, modified) in found {
            if still_unreadable(&rel, size, modified) {
                unreadable.insert(rel, (size, modified));
                continue;
            }
            let known = self.by_path.get(&rel);
            kept += usize::from(known.is_some());
            let entry = match known {
                Some(old) if old.entry.size == size && old.modified == modified => old.clone(),
                other => {
                    changed = true;
                    let (hash, pieces) = match (self.hash_file)(&self.base().join(&rel), PIECE_SIZE)
                    {
                        Ok(hashed) => hashed,
                        Err(e) => {
                            tracing::warn!(path = %rel, error = %e, "not shared: the file cannot be read (tried again when it changes)");
                            unreadable.insert(rel, (size, modified));
                            continue;
                        }
                    };
                    let id = match other {
                        Some(old) => old.entry.id,
                        None => {
                            let id = FileId(self.next_id);
                            self.next_id += 1;
                            id
                        }
                    };
                    Indexed {
                        entry: IndexEntry {
                            id,
                            path: rel.clone(),
                            size,
                            hash,
                        },
                        modified,
                        pieces: Arc::new(pieces),
                    }
                }
            };
            next.insert(rel, entry);
        }
        changed |= kept < self.by_path.len();
        let mut by_hash = HashMap::with_capacity(next.len());
        for i in next.values() {
            let lowest = by_hash.entry(i.entry.hash).or_insert(i.entry.id);
            *lowest = (*lowest).min(i.entry.id);
        }
        self.by_id = Arc::new(
            next.values()
                .map(|i| (i.entry.id, i.entry.path.clone()))
                .collect(),
        );
        self.by_hash = Arc::new(by_hash);
        self.unreadable = Arc::new(unreadable);
        self.by_path = Arc::new(next);
        if changed {
            self.collections = Arc::new(self.hash_collections());
        }
        Ok(changed)
    }

    /// All listed entries, files and collections of subfolders, in ID order (the top
    /// folder's collection is not listed: see the [module documentation](self)).
    pub fn entries(&self) -> Vec<IndexEntry> {
        let files = self.by_path.values().map(|i| i.entry.clone());
        let folders = self.collections.values().filter(|c| c.path != ROOT_PATH);
        let mut v: Vec<IndexEntry> = files.chain(folders.cloned()).collect();
        v.sort_by_key(|e| e.id);
        v
    }

    /// The collection entry with content `hash` (the top folder's included), if any (the
    /// lowest ID of those): its entry as of the last scan.
    pub fn find_collection(&self, hash: ContentHash) -> Option<IndexEntry> {
        let found = self.collections.values().filter(|c| c.hash == hash);
        found.min_by_key(|c| c.id).cloned()
    }

    /// The content hashes to announce to the tracker: the files' (but empty files, whose
    /// content everyone has) and every collection's, the top folder's included.
    pub fn content_hashes(&self) -> Vec<ContentHash> {
        let files = self.by_path.values().map(|i| &i.entry);
        let files = files.filter(|e| e.size > 0).map(|e| e.hash);
        files
            .chain(self.collections.values().map(|c| c.hash))
            .collect()
    }

    /// The collection entries of the folders that hold files, in one pass over the files in
    /// path order: the files below a folder come together in that order, so each folder's
    /// manifest is hashed as its files pass, with one hasher per folder of the current path.
    /// A folder keeps its ID; a new one takes the next free ID.
    fn hash_collections(&mut self) -> BTreeMap<String, IndexEntry> {
        let mut done = BTreeMap::new();
        if self.single_file() || self.by_path.is_empty() {
            return done;
        }
        let mut open: Vec<OpenFolder> = Vec::new();
        let mut opened = 0;
        for (path, file) in self.by_path.iter() {
            while open.last().is_some_and(|f| !path.starts_with(&f.prefix)) {
                close_folder(open.pop().expect("checked"), &mut done);
            }
            // Every folder of the path not open yet, the top one first.
            let mut from = open.last().map_or(0, |f| f.prefix.len());
            if open.is_empty() {
                open.push(OpenFolder::new(String::new(), &mut opened));
            }
            while let Some(slash) = path[from..].find('/') {
                from += slash + 1;
                open.push(OpenFolder::new(path[..from].to_string(), &mut opened));
            }
            for folder in &mut open {
                folder.add(&path[folder.prefix.len()..], &file.entry);
            }
        }
        while let Some(folder) = open.pop() {
            close_folder(folder, &mut done);
        }
        if opened > MAX_COLLECTIONS {
            tracing::warn!(
                root = %self.root.display(),
                "the share has more than {MAX_COLLECTIONS} folders; only the first {MAX_COLLECTIONS} (in path order) are listed as collections"
            );
        }
        self.give_ids(&mut done);
        done
    }

    /// IDs for `fresh` collections: a folder's old one, else the next free one (in path
    /// order); the top folder's is [`ROOT_COLLECTION_ID`].
    fn give_ids(&mut self, fresh: &mut BTreeMap<String, IndexEntry>) {
        for (path, entry) in fresh.iter_mut() {
            entry.id = if path == ROOT_PATH {
                ROOT_COLLECTION_ID
            } else if let Some(old) = self.collections.get(path) {
                old.id
            } else {
                let id = FileId(self.next_id);
                self.next_id += 1;
                id
            };
        }
    }

    /// A shared file with content `hash`, if any (the lowest ID of those).
    pub fn find_hash(&self, hash: ContentHash) -> Option<SharedFile> {
        self.get(*self.by_hash.get(&hash)?)
    }

    /// The file with `id`, if shared. Files only: a collection has no bytes to serve.
    pub fn get(&self, id: FileId) -> Option<SharedFile> {
        let path = self.by_id.get(&id)?;
        self.by_path.get(path).map(|i| SharedFile {
            entry: i.entry.clone(),
            path: self.base().join(&i.entry.path),
            modified: i.modified,
            pieces: i.pieces.clone(),
        })
    }
}

/// A folder whose files are being hashed into its manifest (see
/// [`ShareIndex::hash_collections`]).
struct OpenFolder {
    /// What the paths of its files start with: `""` for the top folder, else `path/`.
    prefix: String,
    /// `None`: past [`MAX_COLLECTIONS`], or past [`MAX_MANIFEST_FILES`] files: no collection.
    hasher: Option<ManifestHasher>,
}

impl OpenFolder {
    /// The folder `prefix`, the `opened`-th in path order (counted here).
    fn new(prefix: String, opened: &mut usize) -> Self {
        *opened += 1;
        let hasher = (*opened <= MAX_COLLECTIONS).then(ManifestHasher::new);
        OpenFolder { prefix, hasher }
    }

    /// Adds `file`, whose path below the folder is `rel`, unless `rel` is unsafe (a client
    /// rebuilding the manifest leaves it out the same way: `Manifest::from_listing`).
    fn add(&mut self, rel: &str, file: &IndexEntry) {
        let Some(hasher) = self.hasher.as_mut() else {
            return;
        };
        if hasher.files() == MAX_MANIFEST_FILES {
            self.hasher = None;
        } else if safe_relative(rel).is_some() {
            hasher.add(rel, file.size, file.hash);
        }
    }
}

/// Records `folder`'s collection entry in `done` (ID given later), if it has one and files.
fn close_folder(folder: OpenFolder, done: &mut BTreeMap<String, IndexEntry>) {
    let Some(hasher) = folder.hasher.filter(|h| h.files() > 0) else {
        return;
    };
    let path = collection_path(folder.prefix.trim_end_matches('/'));
    let entry = IndexEntry {
        id: ROOT_COLLECTION_ID,
        path: path.clone(),
        size: hasher.size(),
        hash: hasher.finish(),
    };
    done.insert(path, entry);
}

/// BLAKE3 of a file's content, read in 64 KiB blocks.
pub fn hash_file(path: &Path) -> io::Result<ContentHash> {
    hash_pieces(path, PIECE_SIZE).map(|(h, _)| h)
}

/// BLAKE3 of a file's content and its [`PieceTable`] hashes for `piece_size` pieces (a valid
/// piece size), in one read and one pass of hashing: the file's hash is made of the pieces'.
pub fn hash_pieces(path: &Path, piece_size: u32) -> io::Result<(ContentHash, Vec<ContentHash>)> {
    if !PieceTable::valid_piece_size(piece_size) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid piece size {piece_size}"),
        ));
    }
    let mut f = File::open(path)?;
    let size = f.metadata()?.len();
    let mut pieces = Vec::new();
    let mut buf = vec![0u8; piece_size as usize];
    let mut read = 0u64;
    loop {
        // Fill one piece (reads may be short).
        let mut filled = 0;
        while filled < buf.len() {
            let n = f.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        let start = read;
        read += filled as u64;
        if read > size {
            break; // grew while read: refused below
        }
        let mut hasher = PieceHasher::new(start, piece_size, size);
        hasher.update(&buf[..filled]);
        pieces.push(hasher.finish());
        if filled < buf.len() {
            break;
        }
    }
    let table = PieceTable {
        piece_size,
        hashes: pieces,
    };
    match table.root(size) {
        Some(hash) if read == size => Ok((hash, table.hashes)),
        _ => Err(io::Error::other("the file changed while it was hashed")),
    }
}

/// Appends to `out` the files below `dir`, whose path relative to the share is `prefix`
/// (`""` for the top folder), in path order: their `/`-separated relative paths (valid
/// UTF-8, at most [`MAX_PATH_LEN`] bytes; others are left out), sizes and modification times.
///
/// The kind of an entry comes from the directory listing, and a file's size and time from
/// `fstatat` relative to its directory, without following links (a link is never followed,
/// in or out of the share), so that no full path is resolved again for each of 100,000
/// files.
fn walk(
    dir: &Path,
    prefix: &str,
    depth: usize,
    out: &mut Vec<(String, u64, Option<SystemTime>)>,
) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let mut names: Vec<_> = fs::read_dir(dir)?.filter_map(Result::ok).collect();
    names.sort_by_key(|e| e.file_name());
    for entry in names {
        if out.len() > MAX_FILES {
            return Ok(());
        }
        let (Ok(kind), Some(name)) = (
            entry.file_type(),
            entry.file_name().to_str().map(str::to_owned),
        ) else {
            continue;
        };
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if kind.is_dir() {
            let _ = walk(&entry.path(), &rel, depth + 1, out);
        } else if kind.is_file() && rel.len() <= MAX_PATH_LEN && !is_download_file(&rel) {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            out.push((rel, meta.len(), meta.modified().ok()));
        }
    }
    Ok(())
}

/// `path` relative to `root` as a `/`-separated UTF-8 string, or `None` when it is not valid
/// UTF-8, too long, or not plainly under `root`.
fn relative_name(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            _ => return None,
        }
    }
    let s = parts.join("/");
    (!s.is_empty() && s.len() <= MAX_PATH_LEN).then_some(s)
}

/// The file name a download of `path` (as a peer announced it) may be saved under: its last
/// component, refused when it is empty, `.`/`..`, hidden-temporary, or holds a separator or NUL.
pub fn safe_file_name(path: &str) -> Option<String> {
    let name = path.rsplit(['/', '\\']).next()?;
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('\0')
        || name.chars().any(|c| c.is_control())
        || is_download_file(name);
    (!bad).then(|| name.to_string())
}

/// The relative path a file of a downloaded folder may be saved under: `path` (as a peer
/// announced it, `/`-separated) below `folder`, each component a [`safe_file_name`] (so no
/// `..`, no absolute path, no separators but `/`, no control characters), at most
/// `MAX_DEPTH` deep. `None` when `path` is not below `folder/` or any component is unsafe.
pub fn safe_relative_path(folder: &str, path: &str) -> Option<PathBuf> {
    let folder = folder.trim_end_matches('/');
    let rest = path.strip_prefix(folder)?.strip_prefix('/')?;
    safe_relative(rest)
}

/// `rest` (a `/`-separated path relative to a folder) as a path that stays below that folder:
/// the rules of [`safe_relative_path`], which a collection's manifest follows too.
pub fn safe_relative(rest: &str) -> Option<PathBuf> {
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.is_empty() || parts.len() > MAX_DEPTH {
        return None;
    }
    let mut out = PathBuf::new();
    for part in parts {
        // Each component alone: `safe_file_name` of it must be itself (nothing cut off).
        if safe_file_name(part).as_deref() != Some(part) || part.contains('\\') {
            return None;
        }
        out.push(part);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_sorted_paths_and_stay_stable() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("b.txt"), b"b").unwrap();
        fs::write(dir.path().join("a.txt"), b"a").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/c.txt"), b"c").unwrap();
        let mut idx = ShareIndex::new(dir.path());
        idx.refresh().unwrap();
        let names: Vec<_> = idx
            .entries()
            .iter()
            .map(|e| (e.id.to_string(), e.path.clone()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("001".into(), "a.txt".into()),
                ("002".into(), "b.txt".into()),
                ("003".into(), "sub/c.txt".into()),
                ("004".into(), "sub/".into())
            ]
        );
        // A new file that sorts first still gets the next ID; old IDs do not move (`sub/`,
        // a collection, took 004).
        fs::write(dir.path().join("0.txt"), b"zero").unwrap();
        idx.refresh().unwrap();
        let e = idx.entries();
        assert_eq!(e[0].path, "a.txt");
        assert_eq!((e[3].id, e[3].path.as_str()), (FileId(4), "sub/"));
        assert_eq!(e[4].path, "0.txt");
        assert_eq!(e[4].id, FileId(5));
        assert_eq!(e[4].hash, ContentHash::of(b"zero"));
    }

    /// A tree with a nested folder, two files of one name and an empty file.
    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, bytes) in [
            ("top.txt", &b"top"[..]),
            ("pics/a.txt", b"one"),
            ("pics/empty", b""),
            ("pics/sub/a.txt", b"two"),
            ("pics/sub/deeper/b.bin", b"three"),
            ("other/a.txt", b"four"),
        ] {
            let p = dir.path().join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, bytes).unwrap();
        }
        dir
    }

    #[test]
    fn each_folder_with_files_is_a_collection_a_listing_can_check() {
        use crate::collection::{is_collection, Manifest};
        let dir = tree();
        let mut idx = ShareIndex::new(dir.path());
        idx.refresh().unwrap();
        let entries = idx.entries();
        let listed: Vec<_> = entries.iter().map(|e| (e.id.0, e.path.as_str())).collect();
        assert_eq!(
            listed,
            [
                (1, "other/a.txt"),
                (2, "pics/a.txt"),
                (3, "pics/empty"),
                (4, "pics/sub/a.txt"),
                (5, "pics/sub/deeper/b.bin"),
                (6, "top.txt"),
                (7, "other/"),
                (8, "pics/"),
                (9, "pics/sub/"),
                (10, "pics/sub/deeper/"),
            ]
        );
        // Each collection is what a client rebuilds from the listing.
        for c in entries.iter().filter(|e| is_collection(e)) {
            let (m, skipped) = Manifest::from_listing(&c.path, &entries).unwrap();
            assert!(skipped.is_empty());
            assert_eq!((c.hash, c.size), (m.hash(), m.size()), "{}", c.path);
            // Found by its hash; never served as a file.
            assert_eq!(idx.find_collection(c.hash).as_ref(), Some(c));
            assert!(idx.get(c.id).is_none());
        }
        let (all, _) = Manifest::from_listing("", &entries).unwrap();
        assert_eq!(all.files().len(), 6);
        let root = idx.find_collection(all.hash()).expect("the top folder's");
        assert_eq!((root.id, root.path.as_str()), (ROOT_COLLECTION_ID, "/"));
        assert_eq!(root.size, 3 + 3 + 3 + 5 + 4);
        let announced = idx.content_hashes();
        assert!(announced.contains(&root.hash));
        assert_eq!(announced.len(), 5 + 5, "non-empty files and collections");
    }

    /// `refresh` says whether anything changed; a scan of a folder as it was keeps the maps
    /// it shares with a copy (nothing rebuilt).
    #[test]
    fn a_changed_file_changes_its_folders_hashes_not_their_ids() {
        let dir = tree();
        let mut idx = ShareIndex::new(dir.path());
        assert!(idx.refresh().unwrap(), "the first scan finds every file");
        let before = idx.entries();
        let copy = idx.clone();
        assert!(!idx.refresh().unwrap(), "nothing changed");
        assert!(Arc::ptr_eq(&copy.by_path, &idx.by_path));
        assert!(Arc::ptr_eq(&copy.collections, &idx.collections));
        fs::write(dir.path().join("pics/sub/a.txt"), b"TWO!").unwrap();
        assert!(idx.refresh().unwrap(), "a file changed");
        assert_eq!(
            copy.entries(),
            before,
            "a copy keeps the index it was made of"
        );
        let after = idx.entries();
        for (b, a) in before.iter().zip(&after) {
            assert_eq!((b.id, &b.path), (a.id, &a.path));
            let should_change = ["pics/sub/a.txt", "pics/", "pics/sub/"].contains(&a.path.as_str());
            assert_eq!(b.hash != a.hash, should_change, "{}", a.path);
        }
        // A folder emptied of files is no collection any more; the others keep their IDs.
        fs::remove_file(dir.path().join("other/a.txt")).unwrap();
        assert!(idx.refresh().unwrap(), "a file went");
        let paths: Vec<_> = idx.entries().into_iter().map(|e| e.path).collect();
        assert!(!paths.contains(&"other/".to_string()), "{paths:?}");
        let pics = idx
            .entries()
            .into_iter()
            .find(|e| e.path == "pics/")
            .unwrap();
        assert_eq!(pics.id, FileId(8));
    }

    /// A file that cannot be read is left out, and left alone by later scans until it
    /// changes: a scan that finds the folder as it was is no change (it was: every rescan
    /// hashed every folder's manifest again). Lookups by ID and by hash find every file.
    #[test]
    fn an_unreadable_file_is_left_out_until_it_changes() {
        fn fails_on_b(path: &Path, piece: u32) -> io::Result<(ContentHash, Vec<ContentHash>)> {
            if path.ends_with("b.bin") {
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, "test"));
            }
            hash_pieces(path, piece)
        }
        let dir = tree();
        let mut idx = ShareIndex::new(dir.path());
        idx.hash_file = fails_on_b;
        assert!(idx.refresh().unwrap());
        let files: Vec<_> = idx
            .entries()
            .into_iter()
            .filter(|e| !e.path.ends_with('/'))
            .collect();
        assert_eq!(files.len(), 5, "{files:?}");
        assert!(files.iter().all(|e| !e.path.ends_with("b.bin")));
        for e in &files {
            let got = idx.get(e.id).expect("found by ID");
            assert_eq!(got.entry, *e);
            assert_eq!(got.path, dir.path().join(&e.path));
            if e.size > 0 {
                assert_eq!(
                    idx.find_hash(e.hash).expect("found by hash").entry.hash,
                    e.hash
                );
            }
        }
        let copy = idx.clone();
        assert!(
            !idx.refresh().unwrap(),
            "the unreadable file, unchanged, is no change"
        );
        assert!(Arc::ptr_eq(&copy.collections, &idx.collections));
        // Changed and readable now: shared.
        idx.hash_file = hash_pieces;
        fs::write(dir.path().join("pics/sub/deeper/b.bin"), b"three!").unwrap();
        assert!(idx.refresh().unwrap());
        let b = idx
            .entries()
            .into_iter()
            .find(|e| e.path.ends_with("b.bin"))
            .expect("shared");
        assert_eq!(idx.get(b.id).expect("by ID").entry, b);
        assert!(idx.get(FileId(999)).is_none());
    }

    #[test]
    fn folder_paths_keep_their_tree_and_never_escape() {
        let ok = |f: &str, p: &str| safe_relative_path(f, p);
        assert_eq!(ok("sub", "sub/a.txt"), Some(PathBuf::from("a.txt")));
        assert_eq!(
            ok("sub/", "sub/x/y/b.bin"),
            Some(PathBuf::from("x/y/b.bin"))
        );
        assert_eq!(ok("sub", "sub2/a.txt"), None, "another folder");
        assert_eq!(ok("sub", "sub"), None);
        for bad in [
            "sub/../etc/passwd",
            "sub/./a",
            "sub//a",
            "sub/a/",
            "sub/a\\b",
            "sub/.a.txt.p2p-part",
            "sub/a\u{1b}[2J",
        ] {
            assert_eq!(ok("sub", bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_single_file_share_lists_that_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("one.txt"), b"one").unwrap();
        fs::write(dir.path().join("other.txt"), b"other").unwrap();
        let mut idx = ShareIndex::new(dir.path().join("one.txt"));
        idx.refresh().unwrap();
        let e = idx.entries();
        assert_eq!(e.len(), 1, "a single file is no collection");
        assert!(idx.content_hashes() == [ContentHash::of(b"one")]);
        assert_eq!((e[0].path.as_str(), e[0].size), ("one.txt", 3));
        assert_eq!(e[0].hash, ContentHash::of(b"one"));
        let shared = idx.get(e[0].id).unwrap();
        assert_eq!(shared.path, dir.path().join("one.txt"));
    }

    #[test]
    fn skips_symlinks_and_partials() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("linkdir")).unwrap();
        fs::write(dir.path().join(format!("x{PARTIAL_SUFFIX}")), b"p").unwrap();
        fs::write(dir.path().join("real"), b"r").unwrap();
        let mut idx = ShareIndex::new(dir.path());
        idx.refresh().unwrap();
        let paths: Vec<_> = idx.entries().into_iter().map(|e| e.path).collect();
        assert_eq!(paths, vec!["real".to_string()]);
    }

    #[test]
    fn piece_hashes_cover_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        // none, one partial, one exact, several with a short last one, a power of two
        for len in [0u32, 1000, 1024, 2500, 4096, 5 * 1024 + 3] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            fs::write(&path, &bytes).unwrap();
            let (whole, pieces) = hash_pieces(&path, 1024).unwrap();
            assert_eq!(whole, ContentHash::of(&bytes), "{len}");
            assert_eq!(pieces, PieceTable::of(&bytes, 1024).hashes, "{len}");
            assert_eq!(pieces.len(), bytes.len().div_ceil(1024), "{len}");
        }
        let err = hash_pieces(&path, 1000).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    }

    #[test]
    fn safe_names_never_escape() {
        assert_eq!(
            safe_file_name("dir/file1.txt").as_deref(),
            Some("file1.txt")
        );
        for bad in ["..", "a/..", "", "x/", "a\0b", "/", "a\\..", "x.p2p-part"] {
            assert_eq!(safe_file_name(bad), None, "{bad:?}");
        }
        assert_eq!(safe_file_name("/etc/passwd").as_deref(), Some("passwd"));
    }
}
