//! What the commands print: sizes, rates, names from the network made safe for a terminal,
//! listings, and the log.

use p2p_proto::wire::IndexEntry;

/// Logs go to stderr; `-v` raises the level, `RUST_LOG` overrides. They are written by a
/// thread of their own from a bounded queue, and dropped when it is full: a stderr nobody
/// reads never stalls a peer or a tracker. Keep the guard until exit (it flushes the queue).
pub(crate) fn init_logging(
    verbose: u8,
    color: crate::cli::Color,
) -> tracing_appender::non_blocking::WorkerGuard {
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE)
        .finish(std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_ansi(color.on_stderr())
        .with_env_filter(filter)
        .with_writer(writer)
        .try_init();
    guard
}

/// Log lines waiting to be written, at most.
const LOG_QUEUE: usize = 4096;

/// Prints a peer's index as `ID: 003 -> share/file3.txt (26.9 KiB)` lines, in ID order,
/// the IDs as wide as the largest (at least 3 digits), so that the columns line up.
pub(crate) fn print_index(peer: &str, share: &str, entries: &[IndexEntry]) {
    if entries.is_empty() {
        println!("{} shares no files.", clean(peer));
        return;
    }
    let share = clean(share);
    let mut sorted: Vec<&IndexEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| e.id);
    let width = id_width(entries);
    for e in sorted {
        println!(
            "ID: {:0width$} -> {share}/{} ({})",
            e.id.0,
            clean(&e.path),
            human_bytes(e.size)
        );
    }
}

/// Digits of the largest ID in `entries`, at least 3 (`001`).
pub(crate) fn id_width(entries: &[IndexEntry]) -> usize {
    let largest = entries.iter().map(|e| e.id.0).max().unwrap_or(0);
    largest.to_string().len().max(3)
}

/// A name as the tracker keeps it: in Unicode NFC form, so that `héllo` typed as `e` plus a
/// combining accent is the same name as with a precomposed `é`.
pub(crate) fn nfc(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    name.nfc().collect()
}

/// `12.3 MiB`-style sizes.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// MiB/s for `bytes` in `secs`.
pub(crate) fn mib_per_s(bytes: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    bytes as f64 / (1024.0 * 1024.0) / secs
}

/// `s` made safe to print on a terminal: control characters and invisible or
/// direction-changing formatting characters (which a remote party could use to forge lines or
/// send escape sequences) are shown escaped, like `\u{1b}`.
pub(crate) fn clean(s: &str) -> String {
    let invisible = |c: char| matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}');
    s.chars()
        .map(|c| {
            if c.is_control() || invisible(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{clean, id_width};

    #[test]
    fn id_width_follows_the_largest_id() {
        let entry = |id| p2p_proto::wire::IndexEntry {
            id: p2p_proto::wire::FileId(id),
            path: String::new(),
            size: 0,
            hash: p2p_proto::wire::ContentHash([0; 32]),
        };
        assert_eq!(id_width(&[]), 3);
        assert_eq!(id_width(&[entry(1), entry(999)]), 3);
        assert_eq!(id_width(&[entry(1000), entry(2)]), 4);
        assert_eq!(id_width(&[entry(123_456)]), 6);
    }

    #[test]
    fn clean_escapes_what_could_forge_terminal_output() {
        assert_eq!(clean("file1.txt"), "file1.txt");
        assert_eq!(clean("a\nb"), "a\\u{a}b");
        assert_eq!(clean("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(clean("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(clean("héllo"), "héllo");
    }
}
