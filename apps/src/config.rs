//! Defaults for the settings the commands share (tracker, name, share, downloads, transport),
//! from `P2P_*` environment variables and a small TOML file in the platform's config folder
//! (`~/.config/p2p/config.toml` on Linux, under `$XDG_CONFIG_HOME` when set; `P2P_CONFIG`
//! names another file). A flag wins over the environment, the environment over the file, the
//! file over the built-in default. They are applied to the parsed command line before any
//! command runs, so that a command's arguments arrive filled.
//!
//! ```toml
//! # ~/.config/p2p/config.toml
//! tracker = "tracker.example.org:9000"
//! name = "alice"
//! share = "~/Music"
//! downloads = "~/Downloads"
//! transport = "udp"
//! dht-bootstrap = "router.bittorrent.com:6881,dht.transmissionbt.com:6881"
//! tracker-key = "6f8c27ba3755dde3776881ce89312419fd4340228a0c796e72f6b6eeb27fe007"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::ArgMatches;
use p2p_proto::wire::TransportKind;
use serde::Deserialize;

use crate::cli::Command;
use crate::output::nfc;

/// A setting that may come from the environment or the config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Key {
    /// Where the tracker is (`--tracker`).
    Tracker,
    /// The peer's name (`p2p peer --name`).
    Name,
    /// The folder a peer shares (`p2p peer --share`).
    Share,
    /// Where downloads go (`p2p peer --downloads`, `p2p get --out`).
    Downloads,
    /// UDP or TCP (`--transport`).
    Transport,
    /// The DHT nodes to join the Mainline DHT through (`--dht-bootstrap`).
    DhtBootstrap,
    /// The tracker's identity key, to talk to it sealed (`--tracker-key`).
    TrackerIdentity,
}

impl Key {
    /// Every key, in the order `p2p config` lists them.
    pub(crate) const ALL: [Key; 7] = [
        Key::Tracker,
        Key::Name,
        Key::Share,
        Key::Downloads,
        Key::Transport,
        Key::DhtBootstrap,
        Key::TrackerIdentity,
    ];

    /// Its name in the config file.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Key::Tracker => "tracker",
            Key::Name => "name",
            Key::Share => "share",
            Key::Downloads => "downloads",
            Key::Transport => "transport",
            Key::DhtBootstrap => "dht-bootstrap",
            Key::TrackerIdentity => "tracker-key",
        }
    }

    /// Its environment variable.
    pub(crate) fn env(self) -> &'static str {
        match self {
            Key::Tracker => "P2P_TRACKER",
            Key::Name => "P2P_NAME",
            Key::Share => "P2P_SHARE",
            Key::Downloads => "P2P_DOWNLOADS",
            Key::Transport => "P2P_TRANSPORT",
            Key::DhtBootstrap => "P2P_DHT_BOOTSTRAP",
            Key::TrackerIdentity => "P2P_TRACKER_KEY",
        }
    }
}

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The command line.
    Flag,
    /// The key's `P2P_*` variable.
    Env,
    /// The config file, at this line.
    File { line: usize },
    /// The built-in default.
    Default,
    /// Nowhere: the command asks (`p2p peer` asks for a name).
    Unset,
}

/// A setting as it was written and where, for `p2p config`.
#[derive(Clone, Debug)]
pub(crate) struct Origin {
    /// Which setting.
    pub(crate) key: Key,
    /// Where its value came from.
    pub(crate) source: Source,
    /// The value as written there (`localhost:9000` for a tracker now at 127.0.0.1:9000).
    pub(crate) written: Option<String>,
}

/// The config file: where it is looked for, and whether it is there.
#[derive(Clone, Debug, Default)]
pub(crate) struct FileStatus {
    /// Its path; `None` without `P2P_CONFIG` and without a home folder.
    pub(crate) path: Option<PathBuf>,
    /// Named by `P2P_CONFIG` rather than the platform's config folder.
    pub(crate) from_env: bool,
    /// It exists and was read.
    pub(crate) read: bool,
}

/// A setting that cannot be used, with where it was written and what to do. Shown as a usage
/// error (exit code 2).
#[derive(Debug)]
pub(crate) struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The variable naming another config file.
pub(crate) const CONFIG_ENV: &str = "P2P_CONFIG";

/// Where the config file is looked for: `P2P_CONFIG` when set, else `config.toml` in the
/// platform's config folder for p2p.
pub(crate) fn file_path() -> FileStatus {
    if let Some(path) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
        return FileStatus {
            path: Some(PathBuf::from(path)),
            from_env: true,
            read: false,
        };
    }
    let dirs = directories::ProjectDirs::from("", "", "p2p");
    FileStatus {
        path: dirs.map(|d| d.config_dir().join("config.toml")),
        from_env: false,
        read: false,
    }
}

/// The values the environment and the config file give, as written.
pub(crate) struct Layers {
    env: BTreeMap<Key, String>,
    file: FileValuesByKey,
    status: FileStatus,
}

impl Layers {
    /// Reads the `P2P_*` variables and the config file (a missing file is fine, unless
    /// `P2P_CONFIG` names it).
    pub(crate) fn load() -> Result<Layers, ConfigError> {
        let mut env = BTreeMap::new();
        for key in Key::ALL {
            match std::env::var(key.env()) {
                Ok(v) if !v.trim().is_empty() => {
                    env.insert(key, v.trim().to_string());
                }
                Ok(_) | Err(std::env::VarError::NotPresent) => {}
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(ConfigError(format!(
                        "{} is not valid UTF-8: set it again, or unset it",
                        key.env()
                    )))
                }
            }
        }
        let mut status = file_path();
        let file = match &status.path {
            Some(path) => read_file(path, status.from_env)?,
            None => None,
        };
        status.read = file.is_some();
        Ok(Layers {
            env,
            file: file.unwrap_or_default(),
            status,
        })
    }

    /// Where the config file was looked for.
    pub(crate) fn status(&self) -> &FileStatus {
        &self.status
    }

    /// The value `key` has in the environment or else in the file, and where it came from.
    fn layered(&self, key: Key) -> Option<(&str, Source)> {
        if let Some(v) = self.env.get(&key) {
            return Some((v, Source::Env));
        }
        let (v, line) = self.file.get(&key)?;
        Some((v, Source::File { line: *line }))
    }

    /// `why` a value of `key` taken from `source` cannot be used, saying where it was written.
    fn error(&self, key: Key, source: &Source, why: String) -> ConfigError {
        match source {
            Source::File { line } => ConfigError(format!(
                "{}: {why} (fix the line or remove it)",
                self.file_place(*line, Some(key.name()))
            )),
            _ => ConfigError(format!(
                "{} {why} (fix {} or unset it)",
                key.env(),
                key.env()
            )),
        }
    }

    fn file_place(&self, line: usize, key: Option<&str>) -> String {
        let path = self.status.path.as_deref().unwrap_or(Path::new("?"));
        file_place(path, line, key)
    }
}

/// `config file PATH, line N, key `K``.
fn file_place(path: &Path, line: usize, key: Option<&str>) -> String {
    match key {
        Some(key) => format!("config file {}, line {line}, key `{key}`", path.display()),
        None => format!("config file {}, line {line}", path.display()),
    }
}

/// The config file's values as written, each with its line.
type FileValuesByKey = BTreeMap<Key, (String, usize)>;

/// The keys of the config file, each with its line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileValues {
    tracker: Option<toml::Spanned<String>>,
    name: Option<toml::Spanned<String>>,
    share: Option<toml::Spanned<String>>,
    downloads: Option<toml::Spanned<String>>,
    transport: Option<toml::Spanned<String>>,
    #[serde(rename = "dht-bootstrap")]
    dht_bootstrap: Option<toml::Spanned<String>>,
    #[serde(rename = "tracker-key")]
    tracker_key: Option<toml::Spanned<String>>,
}

/// Reads and checks the config file at `path`; `None` when it does not exist and was not named
/// by `P2P_CONFIG` (`named`).
fn read_file(path: &Path, named: bool) -> Result<Option<FileValuesByKey>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ConfigError(format!(
                "{CONFIG_ENV} names {}, which does not exist: create it, or unset {CONFIG_ENV}",
                path.display()
            )))
        }
        Err(e) => {
            return Err(ConfigError(format!(
                "cannot read the config file {}: {e}",
                path.display()
            )))
        }
    };
    parse_file(path, &text).map(Some)
}

/// The values of a config file's `text`, with their lines; an error names the file, the line
/// and the key.
fn parse_file(path: &Path, text: &str) -> Result<FileValuesByKey, ConfigError> {
    let values: FileValues = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
    let mut out = BTreeMap::new();
    let fields = [
        (Key::Tracker, values.tracker),
        (Key::Name, values.name),
        (Key::Share, values.share),
        (Key::Downloads, values.downloads),
        (Key::Transport, values.transport),
        (Key::DhtBootstrap, values.dht_bootstrap),
        (Key::TrackerIdentity, values.tracker_key),
    ];
    for (key, value) in fields {
        let Some(value) = value else { continue };
        let line = line_of(text, value.span().start);
        let v = value.into_inner();
        if v.trim().is_empty() {
            return Err(ConfigError(format!(
                "{}: the value is empty: give one, or remove the line",
                file_place(path, line, Some(key.name()))
            )));
        }
        out.insert(key, (v.trim().to_string(), line));
    }
    Ok(out)
}

/// A TOML error for people: the file, the line and the key it is on, what is wrong, what to do.
fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
    let key = key_on_line(text, line);
    let message = e.message().trim().replace('\n', " ");
    let (message, hint) = match message.strip_prefix("unknown field ") {
        Some(rest) => {
            let keys: Vec<_> = Key::ALL.iter().map(|k| k.name()).collect();
            let unknown = rest.split(',').next().unwrap_or(rest);
            (
                format!("unknown key {unknown}"),
                format!("the keys are {}", keys.join(", ")),
            )
        }
        None => (
            message,
            "each line is `key = \"value\"`, e.g. tracker = \"192.0.2.7:9000\"".to_string(),
        ),
    };
    ConfigError(format!(
        "{}: {message}; {hint}",
        file_place(path, line, key.as_deref())
    ))
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The key a `key = value` line sets, if the line looks like one.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let l = text.lines().nth(line.checked_sub(1)?)?;
    let (key, _) = l.split_once('=')?;
    let key = key.trim().trim_matches('"');
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    plain.then(|| key.to_string())
}

/// The tracker address `text` names (see [`crate::address::resolve`]).
fn tracker(text: &str) -> Result<SocketAddr, String> {
    crate::address::resolve(text).map_err(|e| e.to_string())
}

/// A peer name, checked as the tracker would.
fn name(text: &str) -> Result<Option<String>, String> {
    p2p_proto::tracker::validate_name(&nfc(text))
        .map_err(|e| format!("`{text}`: {e}: choose another name"))?;
    Ok(Some(text.to_string()))
}

/// A folder; `~` or `~/…` starts from the home folder, as in a shell.
fn folder(text: &str) -> Result<PathBuf, String> {
    let home = || directories::BaseDirs::new().map(|d| d.home_dir().to_path_buf());
    if text == "~" {
        return home().ok_or_else(|| format!("`{text}`: no home folder is known"));
    }
    match text.strip_prefix("~/") {
        Some(rest) => home()
            .map(|h| h.join(rest))
            .ok_or_else(|| format!("`{text}`: no home folder is known: give a full path")),
        None => Ok(PathBuf::from(text)),
    }
}

/// DHT bootstrap nodes: `HOST:PORT`s separated by commas or spaces, each resolved as
/// `--dht-bootstrap` is (IPv4).
fn dht_bootstrap(text: &str) -> Result<Vec<SocketAddr>, String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| match crate::address::resolve(t) {
            Ok(a) if a.is_ipv4() => Ok(a),
            Ok(a) => Err(format!(
                "`{t}` ({a}): the DHT is reached over IPv4: give an IPv4 address or a name with one"
            )),
            Err(e) => Err(format!("`{t}`: {e}")),
        })
        .collect()
}

fn tracker_key(text: &str) -> Result<Option<p2p_proto::identity::PublicKey>, String> {
    crate::cli::parse_tracker_key(text).map(Some)
}

fn transport(text: &str) -> Result<TransportKind, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not a transport: use udp or tcp"))
}

/// Fills what a command line left out from the environment and the config file, for the
/// commands that take these settings; records where each came from.
struct Filler<'a> {
    layers: &'a Layers,
    matches: &'a ArgMatches,
    origins: Vec<Origin>,
}

impl Filler<'_> {
    /// Sets `slot` (the argument `id`, given by `--id` on the command line) from the layers
    /// when the command line did not give it.
    fn fill<T>(
        &mut self,
        slot: &mut T,
        id: &str,
        key: Key,
        convert: fn(&str) -> Result<T, String>,
    ) -> Result<(), ConfigError> {
        let raw = || {
            let mut values = self.matches.get_raw(id)?;
            values.next().map(|v| v.to_string_lossy().into_owned())
        };
        let origin = match self.matches.value_source(id) {
            Some(ValueSource::CommandLine) => Origin {
                key,
                source: Source::Flag,
                written: raw(),
            },
            _ => match self.layers.layered(key) {
                Some((text, source)) => {
                    *slot = convert(text).map_err(|why| self.layers.error(key, &source, why))?;
                    Origin {
                        key,
                        source,
                        written: Some(text.to_string()),
                    }
                }
                None => match raw() {
                    Some(text) => Origin {
                        key,
                        source: Source::Default,
                        written: Some(text),
                    },
                    None => Origin {
                        key,
                        source: Source::Unset,
                        written: None,
                    },
                },
            },
        };
        self.origins.push(origin);
        Ok(())
    }

    fn tracker_opts(&mut self, t: &mut crate::cli::TrackerOpts) -> Result<(), ConfigError> {
        self.fill(&mut t.tracker, "tracker", Key::Tracker, tracker)?;
        t.tracker_given = self.given(Key::Tracker);
        self.fill(
            &mut t.tracker_key,
            "tracker_key",
            Key::TrackerIdentity,
            tracker_key,
        )?;
        self.fill(&mut t.transport, "transport", Key::Transport, transport)
    }

    /// Whether `key` was set by a flag, the environment or the config file (not a default).
    fn given(&self, key: Key) -> bool {
        self.origins.iter().any(|o| {
            o.key == key && matches!(o.source, Source::Flag | Source::Env | Source::File { .. })
        })
    }

    /// The settings of `p2p peer` and `p2p share` but the share.
    fn peer_opts(&mut self, a: &mut crate::cli::PeerArgs) -> Result<(), ConfigError> {
        self.fill(&mut a.tracker, "tracker", Key::Tracker, tracker)?;
        a.tracker_given = self.given(Key::Tracker);
        self.fill(
            &mut a.tracker_key,
            "tracker_key",
            Key::TrackerIdentity,
            tracker_key,
        )?;
        self.dht_opts(&mut a.dht)?;
        self.fill(&mut a.name, "name", Key::Name, name)?;
        self.fill(&mut a.downloads, "downloads", Key::Downloads, folder)?;
        self.fill(&mut a.transport, "transport", Key::Transport, transport)
    }

    fn dht_opts(&mut self, d: &mut crate::cli::DhtOpts) -> Result<(), ConfigError> {
        self.fill(
            &mut d.dht_bootstrap,
            "dht_bootstrap",
            Key::DhtBootstrap,
            dht_bootstrap,
        )
    }
}

/// Fills the settings `command` takes and did not get as flags (`matches`: its own matches)
/// from the environment and the config file. Commands without such settings read neither.
pub(crate) fn apply(command: &mut Command, matches: &ArgMatches) -> Result<(), ConfigError> {
    // `p2p config --path` must work when the file is broken: it says where to fix it.
    let reads_settings = match command {
        Command::Peer(_)
        | Command::Share(_)
        | Command::Peers(_)
        | Command::Ls(_)
        | Command::Get(_)
        | Command::Resolve(_) => true,
        Command::Config(a) => !a.path,
        _ => false,
    };
    if !reads_settings {
        return Ok(());
    }
    let layers = Layers::load()?;
    let mut f = Filler {
        layers: &layers,
        matches,
        origins: Vec::new(),
    };
    match command {
        Command::Peer(a) => {
            f.peer_opts(a)?;
            f.fill(&mut a.share, "share", Key::Share, folder)?;
        }
        Command::Share(a) => {
            // PATH is the share: a --share flag would be ignored, so it is refused.
            if matches.value_source("share") == Some(clap::parser::ValueSource::CommandLine) {
                return Err(ConfigError(
                    "`p2p share PATH` shares PATH: drop --share".into(),
                ));
            }
            f.peer_opts(&mut a.peer)?;
        }
        Command::Peers(a) => f.tracker_opts(&mut a.tracker)?,
        Command::Ls(a) => f.tracker_opts(&mut a.tracker)?,
        Command::Get(a) => {
            f.tracker_opts(&mut a.tracker)?;
            f.dht_opts(&mut a.dht)?;
            f.fill(&mut a.out, "out", Key::Downloads, folder)?;
        }
        Command::Resolve(a) => f.fill(
            &mut a.dht_bootstrap,
            "dht_bootstrap",
            Key::DhtBootstrap,
            dht_bootstrap,
        )?,
        Command::Config(a) => {
            f.fill(&mut a.tracker, "tracker", Key::Tracker, tracker)?;
            f.fill(&mut a.name, "name", Key::Name, name)?;
            f.fill(&mut a.share, "share", Key::Share, folder)?;
            f.fill(&mut a.downloads, "downloads", Key::Downloads, folder)?;
            f.fill(&mut a.transport, "transport", Key::Transport, transport)?;
            f.fill(
                &mut a.dht_bootstrap,
                "dht_bootstrap",
                Key::DhtBootstrap,
                dht_bootstrap,
            )?;
            f.fill(
                &mut a.tracker_key,
                "tracker_key",
                Key::TrackerIdentity,
                tracker_key,
            )?;
            a.origins = std::mem::take(&mut f.origins);
            a.file = layers.status().clone();
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileValuesByKey, String> {
        parse_file(Path::new("/c/config.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_file_gives_each_key_with_its_line() {
        let values = parse(
            "# defaults\ntracker = \"localhost:9000\"\n\nname = 'alice'\ntransport = \"tcp\"\n",
        )
        .unwrap();
        assert_eq!(values[&Key::Tracker], ("localhost:9000".into(), 2));
        assert_eq!(values[&Key::Name], ("alice".into(), 4));
        assert_eq!(values[&Key::Transport], ("tcp".into(), 5));
        assert!(!values.contains_key(&Key::Share));
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn a_bad_file_names_the_file_line_and_key() {
        let e = parse("name = \"a\"\ntracker = 9000\n").unwrap_err();
        assert!(
            e.starts_with("config file /c/config.toml, line 2, key `tracker`: "),
            "{e}"
        );
        assert!(e.contains("tracker = \"192.0.2.7:9000\""), "{e}");

        let e = parse("\n\ntrackr = \"x:1\"\n").unwrap_err();
        assert!(
            e.starts_with(
                "config file /c/config.toml, line 3, key `trackr`: unknown key `trackr`;"
            ),
            "{e}"
        );
        assert!(
            e.contains("the keys are tracker, name, share, downloads, transport, dht-bootstrap"),
            "{e}"
        );

        // Unquoted: not TOML.
        let e = parse("tracker = localhost:9000\n").unwrap_err();
        assert!(
            e.starts_with("config file /c/config.toml, line 1, key `tracker`: "),
            "{e}"
        );

        let e = parse("share = \"  \"\n").unwrap_err();
        assert!(e.contains("line 1, key `share`: the value is empty"), "{e}");
    }

    #[test]
    fn values_are_checked_as_flags_are() {
        assert!(tracker("127.0.0.1:9000").is_ok());
        assert!(tracker("localhost").unwrap_err().contains("has no port"));
        assert_eq!(transport("TCP"), Ok(TransportKind::Tcp));
        assert!(transport("quic").unwrap_err().contains("use udp or tcp"));
        assert_eq!(
            dht_bootstrap("127.0.0.1:6881, 127.0.0.2:6882"),
            Ok(vec![
                "127.0.0.1:6881".parse().unwrap(),
                "127.0.0.2:6882".parse().unwrap()
            ])
        );
        assert!(dht_bootstrap("[::1]:6881").unwrap_err().contains("IPv4"));
        assert!(dht_bootstrap("nowhere").unwrap_err().contains("nowhere"));
        assert_eq!(name("alice"), Ok(Some("alice".into())));
        assert!(name("a b").is_err());
        assert_eq!(folder("dl"), Ok(PathBuf::from("dl")));
        if let Some(home) = directories::BaseDirs::new() {
            assert_eq!(folder("~/Music"), Ok(home.home_dir().join("Music")));
            assert_eq!(folder("~"), Ok(home.home_dir().to_path_buf()));
        }
    }

    #[test]
    fn line_numbers_count_from_one() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
        assert_eq!(key_on_line("x = 1\n  y=2", 2), Some("y".into()));
        assert_eq!(key_on_line("[table]", 1), None);
    }
}
