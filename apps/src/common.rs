//! Helpers shared by the commands.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use p2p_core::service::{spawn_endpoint, EndpointConfig, EndpointHandle};
use p2p_proto::wire::{PeerInfo, TransportKind};

/// Logs go to stderr; `-v` raises the level, `RUST_LOG` overrides.
pub(crate) fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A seed for transfer ids that differs between runs.
pub(crate) fn random_seed() -> u64 {
    rand::random::<u64>() >> 1
}

/// Starts an endpoint of `kind` on `bind`, sharing `share` if given.
pub(crate) async fn endpoint(
    kind: TransportKind,
    bind: SocketAddr,
    share: Option<PathBuf>,
    net: p2p_transports::NetConfig,
    tune: impl FnOnce(&mut EndpointConfig),
) -> Result<EndpointHandle> {
    let transport = p2p_transports::bind_with(kind, bind, net)
        .await
        .with_context(|| format!("cannot listen on {bind} ({kind})"))?;
    let mut config = EndpointConfig {
        share,
        id_seed: random_seed(),
        ..EndpointConfig::default()
    };
    tune(&mut config);
    let (handle, _task) =
        spawn_endpoint(transport, kind, config).context("cannot read the share folder")?;
    Ok(handle)
}

/// An ephemeral client endpoint of `kind` on the loopback or any interface, as fits `to`.
pub(crate) async fn client(kind: TransportKind, to: SocketAddr) -> Result<EndpointHandle> {
    client_with(kind, to, |_| {}).await
}

/// [`client`], with its configuration adjusted by `tune`.
pub(crate) async fn client_with(
    kind: TransportKind,
    to: SocketAddr,
    tune: impl FnOnce(&mut EndpointConfig),
) -> Result<EndpointHandle> {
    let bind: SocketAddr = if to.ip().is_loopback() {
        "127.0.0.1:0".parse().expect("valid")
    } else {
        "0.0.0.0:0".parse().expect("valid")
    };
    endpoint(kind, bind, None, Default::default(), tune).await
}

/// Looks `name` up in the tracker's list.
pub(crate) async fn find_peer(
    via: &EndpointHandle,
    tracker: SocketAddr,
    name: &str,
) -> Result<PeerInfo> {
    let peers = via
        .list_peers(tracker)
        .await
        .with_context(|| format!("cannot reach the tracker at {tracker} (start one with `p2p tracker`, or pass --tracker ADDR)"))?;
    match peers.into_iter().find(|p| p.name == name) {
        Some(p) => Ok(p),
        None => bail!("unknown peer `{name}`: run `p2p peers` to see who is online"),
    }
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
    use super::clean;

    #[test]
    fn clean_escapes_what_could_forge_terminal_output() {
        assert_eq!(clean("file1.txt"), "file1.txt");
        assert_eq!(clean("a\nb"), "a\\u{a}b");
        assert_eq!(clean("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(clean("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(clean("héllo"), "héllo");
    }
}
