//! Tab completion for the menu: command words, then peer names (from the last listing of
//! peers), then file IDs (from the last index shown of that peer).
//!
//! What the menu has seen is kept in [`Known`], shared with the menu, which updates it as it
//! prints listings; completion only ever offers what the user has already been shown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use p2p_proto::wire::PeerInfo;

use rustyline::completion::{Completer, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::Helper;

/// The menu's command words, as completion offers them (the menu accepts them in any case).
const COMMANDS: [&str; 10] = [
    "?",
    "c",
    "d",
    "downloads",
    "exit",
    "help",
    "i",
    "q",
    "quit",
    "r",
];

/// One file of a peer's index, as last shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KnownFile {
    /// The ID as the listing printed it (`003`).
    pub(crate) id: String,
    /// Its path in the share, for the list of candidates.
    pub(crate) path: String,
}

/// What the menu has shown so far: the names of the last peer listing and each peer's last
/// index.
#[derive(Default, Debug)]
pub(crate) struct Known {
    peers: Vec<String>,
    /// Who listens where, from the last listing (to name the peers that download from us).
    addrs: BTreeMap<SocketAddr, String>,
    files: BTreeMap<String, Vec<KnownFile>>,
}

impl Known {
    /// A fresh listing of the tracker's peers.
    pub(crate) fn set_listing(&mut self, peers: &[PeerInfo]) {
        self.set_peers(peers.iter().map(|p| p.name.to_string()));
        self.addrs = peers.iter().map(|p| (p.addr, p.name.to_string())).collect();
    }

    /// The peer listening at `addr`, as the last listing had it.
    pub(crate) fn name_at(&self, addr: SocketAddr) -> Option<String> {
        self.addrs.get(&addr).cloned()
    }

    /// The peers of a fresh listing (`r`, or the one shown at start).
    pub(crate) fn set_peers(&mut self, peers: impl IntoIterator<Item = String>) {
        self.peers = peers.into_iter().collect();
    }

    /// The index of `peer` just shown (`i peer`); the peer is remembered too.
    pub(crate) fn set_files(&mut self, peer: &str, files: Vec<KnownFile>) {
        if !self.peers.iter().any(|p| p == peer) {
            self.peers.push(peer.to_string());
        }
        self.files.insert(peer.to_string(), files);
    }

    /// Candidates for the word that ends at the end of `before` (the line up to the cursor):
    /// the byte where that word starts, and the candidates.
    pub(crate) fn complete(&self, before: &str) -> (usize, Vec<Pair>) {
        let start = before
            .rfind(char::is_whitespace)
            .map(|i| i + before[i..].chars().next().map_or(1, char::len_utf8))
            .unwrap_or(0);
        let done: Vec<&str> = before[..start].split_whitespace().collect();
        // The menu takes `-alice` for `alice` (the original program's help wrote `-peer_name`).
        let (start, word) = match before[start..].strip_prefix('-') {
            Some(rest) if !done.is_empty() => (start + 1, rest),
            _ => (start, &before[start..]),
        };
        let command = done.first().map(|c| c.to_lowercase());
        let candidates = match (command.as_deref(), done.len()) {
            (None, _) => commands(word),
            (Some("i"), 1) => self.peer_names(word, ""),
            (Some("c"), 1) => self.peer_names(word, " "),
            (Some("c"), 2) => self.file_ids(done[1].trim_start_matches('-'), word),
            _ => Vec::new(),
        };
        (start, candidates)
    }

    /// Peers whose name starts with `word`, each followed by `then`.
    fn peer_names(&self, word: &str, then: &str) -> Vec<Pair> {
        self.peers
            .iter()
            .filter(|p| p.starts_with(word))
            .map(|p| Pair {
                display: p.clone(),
                replacement: format!("{p}{then}"),
            })
            .collect()
    }

    /// IDs of `peer`'s last index that start with `word`, shown with their paths.
    fn file_ids(&self, peer: &str, word: &str) -> Vec<Pair> {
        let Some(files) = self.files.get(peer) else {
            return Vec::new();
        };
        files
            .iter()
            .filter(|f| f.id.starts_with(word))
            .map(|f| Pair {
                display: format!("{} {}", f.id, crate::output::clean(&f.path)),
                replacement: f.id.clone(),
            })
            .collect()
    }
}

/// Command words that start with `word`, in any case; `i` and `c` are followed by a space,
/// since a peer name comes next.
fn commands(word: &str) -> Vec<Pair> {
    let word = word.to_lowercase();
    COMMANDS
        .iter()
        .filter(|c| c.starts_with(&word))
        .map(|c| Pair {
            display: c.to_string(),
            replacement: match *c {
                "i" | "c" => format!("{c} "),
                _ => c.to_string(),
            },
        })
        .collect()
}

/// The rustyline helper of the menu: completion from [`Known`]; no hints, colours or
/// validation.
pub(crate) struct MenuHelper {
    pub(crate) known: Arc<Mutex<Known>>,
}

impl Completer for MenuHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = line.get(..pos).unwrap_or(line);
        // A poisoned lock only means a menu task panicked; what it holds is still a list.
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        Ok(known.complete(before))
    }
}

impl Hinter for MenuHelper {
    type Hint = String;
}

impl Highlighter for MenuHelper {}

impl Validator for MenuHelper {}

impl Helper for MenuHelper {}

#[cfg(test)]
mod tests {
    use super::{Known, KnownFile};

    fn known() -> Known {
        let mut k = Known::default();
        k.set_peers(["alice".to_string(), "albert".to_string(), "bob".to_string()]);
        k.set_files(
            "alice",
            vec![
                KnownFile {
                    id: "001".into(),
                    path: "file1.txt".into(),
                },
                KnownFile {
                    id: "012".into(),
                    path: "file12.txt".into(),
                },
            ],
        );
        k
    }

    fn replacements(k: &Known, before: &str) -> (usize, Vec<String>) {
        let (start, pairs) = k.complete(before);
        (start, pairs.into_iter().map(|p| p.replacement).collect())
    }

    #[test]
    fn command_words_complete_in_any_case() {
        let k = known();
        assert_eq!(replacements(&k, "q"), (0, vec!["q".into(), "quit".into()]));
        assert_eq!(replacements(&k, "Qu"), (0, vec!["quit".into()]));
        assert_eq!(replacements(&k, "i"), (0, vec!["i ".into()]));
        assert_eq!(replacements(&k, "x"), (0, vec![]));
    }

    #[test]
    fn peer_names_come_from_the_last_listing() {
        let mut k = known();
        assert_eq!(
            replacements(&k, "i al"),
            (2, vec!["alice".into(), "albert".into()])
        );
        assert_eq!(replacements(&k, "c b"), (2, vec!["bob ".into()]));
        assert_eq!(replacements(&k, "C -b"), (3, vec!["bob ".into()]));
        k.set_peers(["carol".to_string()]);
        assert_eq!(replacements(&k, "i b"), (2, vec![]));
        // Names are compared as typed: peers are told apart by case.
        assert_eq!(replacements(&k, "i C"), (2, vec![]));
    }

    #[test]
    fn file_ids_come_from_that_peers_last_index() {
        let k = known();
        assert_eq!(
            replacements(&k, "c alice "),
            (8, vec!["001".into(), "012".into()])
        );
        assert_eq!(replacements(&k, "c alice 01"), (8, vec!["012".into()]));
        assert_eq!(replacements(&k, "c bob 0"), (6, vec![]));
        assert_eq!(replacements(&k, "c alice 001 "), (12, vec![]));
        let (_, pairs) = k.complete("c alice 00");
        assert_eq!(pairs[0].display, "001 file1.txt");
    }

    #[test]
    fn unicode_names_complete_on_character_boundaries() {
        let mut k = Known::default();
        k.set_peers(["héllo".to_string(), "名前".to_string()]);
        assert_eq!(replacements(&k, "i hé"), (2, vec!["héllo".into()]));
        assert_eq!(replacements(&k, "i\u{3000}名"), (4, vec!["名前".into()]));
    }
}
