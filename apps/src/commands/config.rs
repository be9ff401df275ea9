//! `p2p config`: the settings in effect, where each comes from (flag, environment, config
//! file, built-in default), and the config file's path: what to look at when a command does
//! not use the tracker or the folder one expected.

use anyhow::{bail, Result};
use serde_json::json;

use crate::cli::ConfigArgs;
use crate::config::{self, FileStatus, Key, Origin, Source, CONFIG_ENV};
use crate::output::clean;

pub(crate) fn run(args: ConfigArgs) -> Result<()> {
    if args.path {
        let status = config::file_path();
        let Some(path) = status.path else {
            bail!("no config folder is known (no home folder): set HOME, or name a file with {CONFIG_ENV}");
        };
        println!("{}", path.display());
        return Ok(());
    }
    let rows: Vec<Row> = Key::ALL.iter().map(|&key| Row::of(&args, key)).collect();
    if args.json {
        print_json(&args.file, &rows);
    } else {
        print_text(&args.file, &rows);
    }
    Ok(())
}

/// One setting as `p2p config` shows it.
struct Row {
    key: Key,
    /// The value in effect; `None` when unset.
    value: Option<String>,
    /// The value as written, when it reads differently (a host name for an address).
    written: Option<String>,
    source: Source,
}

impl Row {
    fn of(args: &ConfigArgs, key: Key) -> Row {
        let origin = args.origins.iter().find(|o| o.key == key);
        let value = match key {
            Key::Tracker => Some(args.tracker.to_string()),
            Key::Name => args.name.clone(),
            Key::Share => Some(args.share.display().to_string()),
            Key::Downloads => Some(args.downloads.display().to_string()),
            Key::Transport => Some(args.transport.to_string()),
            Key::DhtBootstrap => Some(match args.dht_bootstrap.as_slice() {
                [] => crate::dht::DEFAULT_BOOTSTRAP.join(","),
                given => given
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            }),
            Key::TrackerIdentity => args.tracker_key.map(|k| crate::dht::record::hex(&k)),
        };
        let written = origin
            .and_then(|o: &Origin| o.written.clone())
            .filter(|w| Some(w) != value.as_ref());
        Row {
            key,
            value,
            source: match (key, origin.map(|o| &o.source)) {
                // No built-in value in the flag's definition: the defaults are the DHT's.
                (Key::DhtBootstrap, Some(Source::Unset)) => Source::Default,
                (_, Some(source)) => source.clone(),
                // Without an origin the setting was not looked up: only `--path` skips that.
                (_, None) => Source::Default,
            },
            written: if key == Key::Tracker { written } else { None },
        }
    }

    /// Where the value came from, for people.
    fn from(&self) -> String {
        match &self.source {
            Source::Flag => format!("flag --{}", self.key.name()),
            Source::Env => format!("env {}", self.key.env()),
            Source::File { line } => format!("file, line {line}"),
            Source::Default => "default".into(),
            Source::Unset => "not set".into(),
        }
    }
}

fn source_name(s: &Source) -> &'static str {
    match s {
        Source::Flag => "flag",
        Source::Env => "env",
        Source::File { .. } => "file",
        Source::Default => "default",
        Source::Unset => "unset",
    }
}

fn file_line(status: &FileStatus) -> String {
    let Some(path) = &status.path else {
        return format!("config file: none (no home folder; {CONFIG_ENV} can name one)");
    };
    let named = if status.from_env {
        format!(", named by {CONFIG_ENV}")
    } else {
        String::new()
    };
    let state = if status.read {
        "read"
    } else {
        "not found; create it to set defaults, see `p2p config --help`"
    };
    format!("config file: {} ({state}{named})", path.display())
}

/// The line about the identity key (`crate::identity`).
fn identity_line() -> String {
    match crate::identity::describe() {
        (None, _) => "identity key: none (no data folder; P2P_IDENTITY can name a file)".into(),
        (Some(path), Some(key)) => format!("identity key: {} (key {key})", path.display()),
        (Some(path), None) => format!(
            "identity key: {} (not made yet: the first `p2p peer` makes it)",
            path.display()
        ),
    }
}

fn print_text(status: &FileStatus, rows: &[Row]) {
    println!("{}", file_line(status));
    println!("{}", identity_line());
    for row in rows {
        let mut value = match &row.value {
            Some(v) => clean(v),
            None if row.key == Key::Name => "(asked by `p2p peer`)".into(),
            None => "-".into(),
        };
        if let Some(w) = &row.written {
            value = format!("{value} ({})", clean(w));
        }
        println!("{:<10} {:<40} {}", row.key.name(), value, row.from());
    }
    println!("Precedence: flag > environment (P2P_*) > config file > default.");
}

fn print_json(status: &FileStatus, rows: &[Row]) {
    let mut settings = serde_json::Map::new();
    for row in rows {
        let mut v = json!({
            "value": row.value,
            "from": source_name(&row.source),
        });
        if let Some(w) = &row.written {
            v["written"] = json!(w);
        }
        match &row.source {
            Source::Env => v["variable"] = json!(row.key.env()),
            Source::File { line } => v["line"] = json!(line),
            _ => {}
        }
        settings.insert(row.key.name().to_string(), v);
    }
    let file = json!({
        "path": status.path.as_ref().map(|p| p.display().to_string()),
        "exists": status.read,
        "from_env": status.from_env,
    });
    let (path, key) = crate::identity::describe();
    let identity = json!({
        "path": path.map(|p| p.display().to_string()),
        "key": key,
    });
    println!(
        "{}",
        json!({"file": file, "identity": identity, "settings": settings})
    );
}
