//! Collections: a folder shared as one content-addressed unit.
//!
//! A folder's **manifest** lists each file below it: its path relative to the folder
//! (`/`-separated), its size and its BLAKE3 content hash, sorted by path (byte order). The
//! **collection hash** is the BLAKE3 of the manifest's bytes, so one hash names a whole tree:
//! its paths, its sizes and its contents.
//!
//! The manifest is a pure function of the folder's entries in a peer's index, so nothing new
//! travels on the wire: a peer lists each folder of its share as a *collection entry* (an
//! [`IndexEntry`] whose path ends with `/`, whose size is the total of its files and whose hash
//! is the collection hash; see [`crate::index::ShareIndex`]) and announces the collection hash
//! to the tracker like a file's. A client that wants a collection takes the listing of a peer
//! that has it, rebuilds the manifest from the files below the folder
//! ([`Manifest::from_listing`]), checks that it hashes to the collection hash (the peer's
//! folder did not change since the hash was handed out), then fetches each file by its own
//! hash, from every holder, as any file.
//!
//! # Encoding (version 1)
//!
//! ```text
//! "p2p-collection" (14 bytes) | version: 1 (1 byte)
//! then per file, in increasing byte order of path, no two alike:
//!   path length (u16, little endian) | path (UTF-8) | size (u64, little endian) | hash (32 bytes)
//! ```
//!
//! Paths follow the same rules as a downloaded folder's files
//! ([`crate::index::safe_relative`]): no empty, `.` or `..` component, no backslash, no
//! control character, no download temporary's name, at most 32 components and
//! [`MAX_PATH_LEN`] bytes; and no path is both a file and a folder of another. A manifest holds
//! at most [`MAX_MANIFEST_FILES`] files. Decoding accepts only this canonical form, so a
//! collection hash names exactly one manifest.

use std::collections::HashSet;

use crate::index::safe_relative;
use crate::wire::{ContentHash, IndexEntry, MAX_PATH_LEN};

/// What every manifest starts with (before its version byte).
pub const MANIFEST_MAGIC: &[u8; 14] = b"p2p-collection";
/// The manifest format this code writes and reads.
pub const MANIFEST_VERSION: u8 = 1;
/// Most files one manifest lists (the share index's own cap on files: a folder of a share
/// always fits). A listing with more files below a folder is refused, not cut.
pub const MAX_MANIFEST_FILES: usize = 100_000;
/// The path of the collection entry of a share's top folder (the whole share).
pub const ROOT_PATH: &str = "/";

/// Bytes each file adds to a manifest besides its path.
const FILE_OVERHEAD: usize = 2 + 8 + 32;

/// Whether `entry` of a peer's index is a collection (a folder), not a file: its path ends
/// with `/`. A collection has no bytes of its own to download.
pub fn is_collection(entry: &IndexEntry) -> bool {
    entry.path.ends_with('/')
}

/// The path of a collection entry for `folder` (a folder's path in the share, `/`-separated,
/// without a trailing `/`; `""` for the share's top folder).
pub fn collection_path(folder: &str) -> String {
    if folder.is_empty() {
        ROOT_PATH.to_string()
    } else {
        format!("{folder}/")
    }
}

/// What the paths of the files of the collection entry `path` start with in the listing:
/// `photos/` for `photos/`, `""` for [`ROOT_PATH`]. `None` when `path` is not a collection's.
pub fn folder_prefix(path: &str) -> Option<&str> {
    match path {
        ROOT_PATH => Some(""),
        p if p.ends_with('/') && !p.starts_with('/') => Some(p),
        _ => None,
    }
}

/// One file of a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestFile {
    /// Path relative to the collection's folder, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the content.
    pub hash: ContentHash,
}

/// A folder's manifest: its files, checked and in canonical order. See the
/// [module documentation](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    files: Vec<ManifestFile>,
    size: u64,
}

/// Why a list of files, a listing or a byte string is not a manifest.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// More files than [`MAX_MANIFEST_FILES`].
    #[error("the folder holds more than {limit} files, more than one collection may list")]
    TooManyFiles {
        /// The limit.
        limit: usize,
    },
    /// A path a download could not safely recreate.
    #[error("`{0}` is not a safe relative path")]
    UnsafePath(String),
    /// The same path twice.
    #[error("`{0}` is listed twice")]
    Duplicate(String),
    /// A path that is a file and also a folder of another file.
    #[error("`{0}` is listed as a file and as a folder")]
    FileAndFolder(String),
    /// The files' sizes add up past 2^64 bytes.
    #[error("the files' sizes add up to more than 2^64 bytes")]
    TooLarge,
    /// Bytes that do not start with [`MANIFEST_MAGIC`].
    #[error("not a manifest: it does not start with `p2p-collection`")]
    BadMagic,
    /// A manifest of another version.
    #[error("manifest version {0} is not known here (this build reads version 1): update p2p")]
    UnknownVersion(u8),
    /// The bytes end inside a file's record.
    #[error("the manifest is cut short")]
    Truncated,
    /// Paths not in strictly increasing order: not the canonical encoding.
    #[error("`{0}` is out of order: not a canonical manifest")]
    NotCanonical(String),
}

impl Manifest {
    /// The manifest of `files` (in any order): sorted by path, after checking every path
    /// ([`safe_relative`]), that none repeats or is also another's folder, the count and the
    /// total size.
    pub fn new(mut files: Vec<ManifestFile>) -> Result<Manifest, ManifestError> {
        if files.len() > MAX_MANIFEST_FILES {
            return Err(ManifestError::TooManyFiles {
                limit: MAX_MANIFEST_FILES,
            });
        }
        if let Some(bad) = files.iter().find(|f| !safe_path(&f.path)) {
            return Err(ManifestError::UnsafePath(bad.path.clone()));
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        if let Some(w) = files.windows(2).find(|w| w[0].path == w[1].path) {
            return Err(ManifestError::Duplicate(w[0].path.clone()));
        }
        check_no_file_is_a_folder(&files)?;
        let size = files
            .iter()
            .try_fold(0u64, |sum, f| sum.checked_add(f.size))
            .ok_or(ManifestError::TooLarge)?;
        Ok(Manifest { files, size })
    }

    /// The manifest of the folder whose files' paths start with `prefix` in `entries` (a
    /// peer's listing; `prefix` as [`folder_prefix`] gives it): every file below it, at any
    /// depth, with its path relative to the folder. Collection entries are not files and are
    /// left out; so are files whose relative path is unsafe, which come back as the second
    /// item (the sharing peer leaves them out of its collection hash the same way).
    pub fn from_listing(
        prefix: &str,
        entries: &[IndexEntry],
    ) -> Result<(Manifest, Vec<String>), ManifestError> {
        let mut files = Vec::new();
        let mut skipped = Vec::new();
        for e in entries.iter().filter(|e| !is_collection(e)) {
            let Some(rel) = e.path.strip_prefix(prefix) else {
                continue;
            };
            if !safe_path(rel) {
                skipped.push(e.path.clone());
                continue;
            }
            if files.len() == MAX_MANIFEST_FILES {
                return Err(ManifestError::TooManyFiles {
                    limit: MAX_MANIFEST_FILES,
                });
            }
            files.push(ManifestFile {
                path: rel.to_string(),
                size: e.size,
                hash: e.hash,
            });
        }
        Ok((Manifest::new(files)?, skipped))
    }

    /// The files, sorted by path.
    pub fn files(&self) -> &[ManifestFile] {
        &self.files
    }

    /// The total size of the files.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The collection hash: BLAKE3 of [`Manifest::encode`]'s bytes (hashed as they are
    /// produced, never held whole).
    pub fn hash(&self) -> ContentHash {
        let mut h = ManifestHasher::new();
        for f in &self.files {
            h.add(&f.path, f.size, f.hash);
        }
        h.finish()
    }

    /// The manifest's bytes (see the [module documentation](self)).
    pub fn encode(&self) -> Vec<u8> {
        let body: usize = self
            .files
            .iter()
            .map(|f| FILE_OVERHEAD + f.path.len())
            .sum();
        let mut out = Vec::with_capacity(MANIFEST_MAGIC.len() + 1 + body);
        out.extend_from_slice(&header());
        for f in &self.files {
            out.extend_from_slice(&record(&f.path, f.size, f.hash));
        }
        out
    }

    /// Reads a manifest, accepting only its canonical encoding; checks every length before
    /// using it and every path as [`Manifest::new`] does. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let rest = bytes
            .strip_prefix(MANIFEST_MAGIC.as_slice())
            .ok_or(ManifestError::BadMagic)?;
        let (&version, mut rest) = rest.split_first().ok_or(ManifestError::BadMagic)?;
        if version != MANIFEST_VERSION {
            return Err(ManifestError::UnknownVersion(version));
        }
        let mut files: Vec<ManifestFile> = Vec::new();
        while !rest.is_empty() {
            if files.len() == MAX_MANIFEST_FILES {
                return Err(ManifestError::TooManyFiles {
                    limit: MAX_MANIFEST_FILES,
                });
            }
            let (file, tail) = read_record(rest)?;
            if files.last().is_some_and(|last| last.path >= file.path) {
                return Err(ManifestError::NotCanonical(file.path));
            }
            files.push(file);
            rest = tail;
        }
        Manifest::new(files)
    }
}

/// The collection hash of a manifest fed one file at a time, in increasing path order, each
/// path already checked: how a share's index hashes all its folders in one pass over its
/// sorted files. Gives what [`Manifest::hash`] gives for the same files.
pub(crate) struct ManifestHasher {
    hasher: blake3::Hasher,
    files: usize,
    size: u64,
}

impl ManifestHasher {
    /// A manifest with no file yet.
    pub(crate) fn new() -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&header());
        ManifestHasher {
            hasher,
            files: 0,
            size: 0,
        }
    }

    /// Adds the next file (`path` relative to the folder, greater than the previous one).
    pub(crate) fn add(&mut self, path: &str, size: u64, hash: ContentHash) {
        self.hasher.update(&record(path, size, hash));
        self.files += 1;
        self.size = self.size.saturating_add(size);
    }

    /// Files added so far.
    pub(crate) fn files(&self) -> usize {
        self.files
    }

    /// Their total size.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The collection hash.
    pub(crate) fn finish(self) -> ContentHash {
        ContentHash(*self.hasher.finalize().as_bytes())
    }
}

/// Whether `path` may be a manifest's (relative, safe, not too long).
fn safe_path(path: &str) -> bool {
    path.len() <= MAX_PATH_LEN && safe_relative(path).is_some()
}

/// Magic and version.
fn header() -> [u8; 15] {
    let mut h = [0u8; 15];
    h[..14].copy_from_slice(MANIFEST_MAGIC);
    h[14] = MANIFEST_VERSION;
    h
}

/// One file's bytes (its path is at most [`MAX_PATH_LEN`] bytes: it fits the `u16`).
fn record(path: &str, size: u64, hash: ContentHash) -> Vec<u8> {
    let mut r = Vec::with_capacity(FILE_OVERHEAD + path.len());
    r.extend_from_slice(&(path.len() as u16).to_le_bytes());
    r.extend_from_slice(path.as_bytes());
    r.extend_from_slice(&size.to_le_bytes());
    r.extend_from_slice(&hash.0);
    r
}

/// One file's record at the start of `bytes`, and what follows it.
fn read_record(bytes: &[u8]) -> Result<(ManifestFile, &[u8]), ManifestError> {
    let (len, rest) = take(bytes, 2)?;
    let len = u16::from_le_bytes([len[0], len[1]]) as usize;
    if len > MAX_PATH_LEN {
        return Err(ManifestError::UnsafePath(format!(
            "(a path of {len} bytes)"
        )));
    }
    let (path, rest) = take(rest, len)?;
    let path = String::from_utf8(path.to_vec())
        .map_err(|_| ManifestError::UnsafePath("(a path that is not UTF-8)".into()))?;
    let (size, rest) = take(rest, 8)?;
    let mut size_bytes = [0u8; 8];
    size_bytes.copy_from_slice(size);
    let (hash, rest) = take(rest, 32)?;
    let mut hash_bytes = [0u8; 32];
    hash_bytes.copy_from_slice(hash);
    let file = ManifestFile {
        path,
        size: u64::from_le_bytes(size_bytes),
        hash: ContentHash(hash_bytes),
    };
    Ok((file, rest))
}

/// The first `n` bytes of `bytes` and the rest.
fn take(bytes: &[u8], n: usize) -> Result<(&[u8], &[u8]), ManifestError> {
    if bytes.len() < n {
        return Err(ManifestError::Truncated);
    }
    Ok(bytes.split_at(n))
}

/// Fails when a file's path is also the folder of another (`a` and `a/b`): a tree cannot
/// hold both.
fn check_no_file_is_a_folder(files: &[ManifestFile]) -> Result<(), ManifestError> {
    let paths: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    for f in files {
        let mut at = f.path.as_str();
        while let Some(cut) = at.rfind('/') {
            at = &at[..cut];
            if paths.contains(at) {
                return Err(ManifestError::FileAndFolder(at.to_string()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::FileId;
    use proptest::prelude::*;

    fn file(path: &str, size: u64, content: &[u8]) -> ManifestFile {
        ManifestFile {
            path: path.into(),
            size,
            hash: ContentHash::of(content),
        }
    }

    fn sample() -> Manifest {
        Manifest::new(vec![
            file("sub/a.txt", 3, b"two"),
            file("a.txt", 3, b"one"),
            file("empty", 0, b""),
            file("sub2/a.txt", 5, b"three"),
        ])
        .unwrap()
    }

    #[test]
    fn files_come_sorted_with_their_total() {
        let m = sample();
        let paths: Vec<_> = m.files().iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["a.txt", "empty", "sub/a.txt", "sub2/a.txt"]);
        assert_eq!(m.size(), 11);
    }

    #[test]
    fn the_hash_is_blake3_of_the_encoding_which_round_trips() {
        let m = sample();
        let bytes = m.encode();
        assert!(bytes.starts_with(b"p2p-collection\x01"));
        assert_eq!(m.hash(), ContentHash::of(&bytes));
        assert_eq!(Manifest::decode(&bytes), Ok(m));
    }

    #[test]
    fn the_encoding_is_pinned() {
        // Version 1's bytes: a change here changes every collection hash (a new version).
        let m = Manifest::new(vec![file("a", 1, b"x")]).unwrap();
        let mut want = b"p2p-collection\x01\x01\x00a\x01\x00\x00\x00\x00\x00\x00\x00".to_vec();
        want.extend_from_slice(&ContentHash::of(b"x").0);
        assert_eq!(m.encode(), want);
    }

    #[test]
    fn unsafe_repeated_or_clashing_paths_are_refused() {
        for bad in [
            "../x",
            "a/../b",
            "/abs",
            "a//b",
            "a/",
            "",
            "a\\b",
            "x\u{1b}[2J",
            ".",
            "a/.x.p2p-part",
        ] {
            assert_eq!(
                Manifest::new(vec![file(bad, 0, b"")]),
                Err(ManifestError::UnsafePath(bad.into())),
                "{bad:?}"
            );
        }
        let twice = Manifest::new(vec![file("a", 1, b"a"), file("a", 1, b"a")]);
        assert_eq!(twice, Err(ManifestError::Duplicate("a".into())));
        let clash = Manifest::new(vec![
            file("a", 1, b"a"),
            file("a b", 1, b"a"),
            file("a/b", 1, b"b"),
        ]);
        assert_eq!(clash, Err(ManifestError::FileAndFolder("a".into())));
        let huge = Manifest::new(vec![file("a", u64::MAX, b"a"), file("b", 1, b"b")]);
        assert_eq!(huge, Err(ManifestError::TooLarge));
    }

    #[test]
    fn too_many_files_are_refused_not_cut() {
        let files: Vec<_> = (0..=MAX_MANIFEST_FILES)
            .map(|i| ManifestFile {
                path: format!("f{i}"),
                size: 0,
                hash: ContentHash([0; 32]),
            })
            .collect();
        let limit = MAX_MANIFEST_FILES;
        assert_eq!(
            Manifest::new(files),
            Err(ManifestError::TooManyFiles { limit })
        );
    }

    #[test]
    fn damaged_or_foreign_bytes_say_what_is_wrong() {
        let bytes = sample().encode();
        assert_eq!(
            Manifest::decode(&bytes[..bytes.len() - 1]),
            Err(ManifestError::Truncated)
        );
        assert_eq!(Manifest::decode(b"hello"), Err(ManifestError::BadMagic));
        let mut v2 = bytes.clone();
        v2[14] = 2;
        assert_eq!(Manifest::decode(&v2), Err(ManifestError::UnknownVersion(2)));
        // The same files in another order: not canonical, so refused.
        let m = sample();
        let mut swapped = header().to_vec();
        for f in m.files().iter().rev() {
            swapped.extend_from_slice(&record(&f.path, f.size, f.hash));
        }
        assert!(matches!(
            Manifest::decode(&swapped),
            Err(ManifestError::NotCanonical(_))
        ));
        // An empty manifest is a manifest (of a folder with no file).
        assert_eq!(Manifest::decode(&header()).unwrap().files(), []);
    }

    fn entry(id: u32, path: &str, size: u64, hash: ContentHash) -> IndexEntry {
        IndexEntry {
            id: FileId(id),
            path: path.into(),
            size,
            hash,
        }
    }

    #[test]
    fn a_listing_gives_the_manifest_of_the_files_below_a_folder() {
        let h = ContentHash::of;
        let listing = vec![
            entry(1, "pics/a.txt", 3, h(b"one")),
            entry(2, "pics/sub/a.txt", 3, h(b"two")),
            entry(3, "pics2/a.txt", 5, h(b"three")),
            entry(4, "pics/bad\u{7}", 1, h(b"x")),
            entry(5, "pics/", 7, h(b"whatever")),
            entry(6, "top.txt", 1, h(b"t")),
        ];
        let (m, skipped) = Manifest::from_listing("pics/", &listing).unwrap();
        let paths: Vec<_> = m.files().iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["a.txt", "sub/a.txt"]);
        assert_eq!(skipped, ["pics/bad\u{7}"]);
        let (root, _) = Manifest::from_listing("", &listing).unwrap();
        assert_eq!(
            root.files().len(),
            4,
            "every file; the collection entry is not one"
        );
    }

    #[test]
    fn collection_paths_and_prefixes() {
        assert_eq!(collection_path(""), "/");
        assert_eq!(collection_path("a/b"), "a/b/");
        assert_eq!(folder_prefix("/"), Some(""));
        assert_eq!(folder_prefix("a/b/"), Some("a/b/"));
        assert_eq!(folder_prefix("a/b"), None);
        assert_eq!(folder_prefix("/etc/"), None);
    }

    /// A safe path component.
    fn component() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 ._é-]{1,8}".prop_filter("not . or ..", |c| c != "." && c != "..")
    }

    /// Files with distinct, safe paths of up to 3 components (none both file and folder).
    fn files() -> impl Strategy<Value = Vec<ManifestFile>> {
        let one = (
            prop::collection::vec(component(), 1..4),
            any::<u32>(),
            any::<[u8; 32]>(),
        );
        prop::collection::vec(one, 0..12).prop_map(|v| {
            let mut out: Vec<ManifestFile> = Vec::new();
            for (parts, size, hash) in v {
                let path = parts.join("/");
                let clash = out.iter().any(|f| {
                    f.path == path
                        || f.path.starts_with(&format!("{path}/"))
                        || path.starts_with(&format!("{}/", f.path))
                });
                if !clash {
                    out.push(ManifestFile {
                        path,
                        size: size.into(),
                        hash: ContentHash(hash),
                    });
                }
            }
            out
        })
    }

    proptest! {
        /// Any order of the same files: the same bytes and hash; the bytes read back.
        #[test]
        fn encoding_is_deterministic_and_round_trips(files in files(), seed in any::<u64>()) {
            let m = Manifest::new(files.clone()).unwrap();
            let mut shuffled = files;
            let n = shuffled.len().max(1);
            shuffled.rotate_left((seed as usize) % n);
            shuffled.reverse();
            let again = Manifest::new(shuffled).unwrap();
            prop_assert_eq!(m.encode(), again.encode());
            prop_assert_eq!(m.hash(), again.hash());
            prop_assert_eq!(Manifest::decode(&m.encode()), Ok(m.clone()));
        }

        /// Changing one file's path, size or hash changes the collection hash.
        #[test]
        fn any_change_changes_the_hash(files in files(), which in any::<usize>(), what in 0..3u8) {
            prop_assume!(!files.is_empty());
            let m = Manifest::new(files.clone()).unwrap();
            let mut changed = files;
            let i = which % changed.len();
            match what {
                0 => changed[i].path.push('x'),
                1 => changed[i].size ^= 1,
                _ => changed[i].hash.0[0] ^= 1,
            }
            // A renamed file may now clash with another: then it is not a manifest at all.
            if let Ok(other) = Manifest::new(changed) {
                prop_assert_ne!(m.hash(), other.hash());
            }
        }

        /// Decoding arbitrary bytes never panics, and whatever decodes re-encodes to itself.
        #[test]
        fn decoding_is_total(bytes in prop::collection::vec(any::<u8>(), 0..200), tail in any::<bool>()) {
            let input = if tail { [header().as_slice(), &bytes].concat() } else { bytes };
            if let Ok(m) = Manifest::decode(&input) {
                prop_assert_eq!(m.encode(), input);
            }
        }

        /// The one-pass hasher gives the manifest's hash.
        #[test]
        fn the_streaming_hash_is_the_manifests(files in files()) {
            let m = Manifest::new(files).unwrap();
            let mut h = ManifestHasher::new();
            for f in m.files() {
                h.add(&f.path, f.size, f.hash);
            }
            prop_assert_eq!(h.files(), m.files().len());
            prop_assert_eq!(h.size(), m.size());
            prop_assert_eq!(h.finish(), m.hash());
        }
    }
}
