//! The tracker's name bindings on disk: which name is bound to which identity key, so that a
//! restarted tracker does not hand a name to whoever asks first (see
//! [`Registry::restore_binding`](super::Registry::restore_binding)).
//!
//! A text file, one binding per line: the key in hex (64 digits), the Unix time in seconds of
//! its last proof, the name (names hold no spaces), separated by single spaces; a first line
//! `# p2p tracker bindings v1`. Lines that do not parse are skipped and counted.

use std::fmt::Write;
use std::time::Duration;

use crate::identity::PublicKey;

/// The first line of a bindings file.
pub const BINDINGS_HEADER: &str = "# p2p tracker bindings v1";

/// One binding: the name, its key, and how long ago (before the time of the file's reading
/// or writing) it was last proven.
pub type SavedBinding = (String, PublicKey, Duration);

/// The file's text for `bindings` at Unix time `now_unix` (seconds), sorted by name.
pub fn encode_bindings(bindings: &[SavedBinding], now_unix: u64) -> String {
    let mut sorted: Vec<&SavedBinding> = bindings.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::with_capacity(32 + bindings.len() * 96);
    out.push_str(BINDINGS_HEADER);
    out.push('\n');
    for (name, key, age) in sorted {
        for b in key {
            let _ = write!(out, "{b:02x}");
        }
        let _ = writeln!(out, " {} {name}", now_unix.saturating_sub(age.as_secs()));
    }
    out
}

/// The bindings of a file's `text` read at Unix time `now_unix`, at most `max` of them, and
/// how many lines were skipped (unreadable, or a second line for a name). Proofs dated in
/// the future count as made now. A file without the header is read as empty, all skipped.
pub fn decode_bindings(text: &str, now_unix: u64, max: usize) -> (Vec<SavedBinding>, usize) {
    let mut lines = text.lines();
    if lines.next().map(str::trim_end) != Some(BINDINGS_HEADER) {
        return (Vec::new(), text.lines().count());
    }
    let mut seen = std::collections::HashSet::new();
    let (mut out, mut skipped) = (Vec::new(), 0);
    for line in lines.filter(|l| !l.trim().is_empty()) {
        match parse_line(line, now_unix) {
            Some(b) if out.len() < max && seen.insert(b.0.clone()) => out.push(b),
            _ => skipped += 1,
        }
    }
    (out, skipped)
}

fn parse_line(line: &str, now_unix: u64) -> Option<SavedBinding> {
    let mut parts = line.splitn(3, ' ');
    let (hex, when, name) = (parts.next()?, parts.next()?, parts.next()?);
    if hex.len() != 64 || name.is_empty() {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    let when: u64 = when.parse().ok()?;
    Some((
        name.to_string(),
        key,
        Duration::from_secs(now_unix.saturating_sub(when)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_survive_the_file() {
        let saved = vec![
            ("bob".to_string(), [0xab; 32], Duration::from_secs(60)),
            ("名前".to_string(), [1; 32], Duration::from_secs(0)),
        ];
        let text = encode_bindings(&saved, 1_000_000);
        assert!(text.starts_with(BINDINGS_HEADER));
        // Read an hour later: each an hour older.
        let (back, skipped) = decode_bindings(&text, 1_003_600, 10);
        assert_eq!(skipped, 0);
        assert_eq!(back.len(), 2);
        assert_eq!(
            back[0],
            ("bob".into(), [0xab; 32], Duration::from_secs(3660))
        );
        assert_eq!(back[1], ("名前".into(), [1; 32], Duration::from_secs(3600)));
    }

    #[test]
    fn damaged_lines_are_skipped_and_counted() {
        let key = "ab".repeat(32);
        let text = format!(
            "{BINDINGS_HEADER}\n{key} 100 alice\nzz{} 100 bob\n{key} soon carol\n{key} 100\n\
             {key} 100 alice\n{key} 200 dave\n\n",
            &key[2..]
        );
        let (back, skipped) = decode_bindings(&text, 1000, 10);
        let names: Vec<&str> = back.iter().map(|b| b.0.as_str()).collect();
        assert_eq!(names, ["alice", "dave"]);
        assert_eq!(skipped, 4, "bad hex, bad time, no name, a second alice");
        // At most `max`; a file of something else: nothing.
        assert_eq!(decode_bindings(&text, 1000, 1).0.len(), 1);
        assert_eq!(decode_bindings("hello\nworld\n", 1000, 10), (Vec::new(), 2));
        // A time in the future counts as now.
        assert_eq!(decode_bindings(&text, 50, 10).0[0].2, Duration::ZERO);
    }
}
