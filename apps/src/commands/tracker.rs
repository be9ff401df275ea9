//! `p2p tracker`: the registry of live peers, on UDP and TCP at the same port.

use anyhow::{Context, Result};
use p2p_core::secure::SecureSettings;
use p2p_core::service::{
    run_tracker_with, BindingsFile, RelayConfig, RelayEvent, TrackerEvent, TrackerSettings,
};
use p2p_proto::tracker::{CloseReason, RegistryConfig};
use tokio::sync::mpsc;

use crate::cli::TrackerArgs;
use crate::output::clean;
use crate::session::bind_both;
use crate::signals::Shutdown;

pub(crate) async fn run(args: TrackerArgs) -> Result<()> {
    let mut shutdown = Shutdown::install();
    let (udp, tcp) = bind_both(args.listen, args.limits.tcp()).await?;
    let addr = udp.local_addr()?;
    let config = RegistryConfig {
        ttl: args.peer_ttl,
        heartbeat: args.heartbeat.min(args.peer_ttl),
        max_peers: args.max_peers,
    };
    println!(
        "tracker listening on {addr} (udp+tcp), peer ttl {}, heartbeat {}",
        humantime::format_duration(config.ttl),
        humantime::format_duration(config.heartbeat)
    );
    let relay = relay_config(&args);
    println!("{}", describe_relay(&relay));
    // Events are printed on a thread of their own: if nobody reads our stdout, only that
    // thread waits, its queue fills, and the tracker drops events instead of stalling.
    let (tx, mut rx) = mpsc::channel(EVENT_QUEUE);
    std::thread::spawn(move || {
        while let Some(e) = rx.blocking_recv() {
            match e {
                TrackerEvent::Registered {
                    name,
                    addr,
                    transport,
                } => println!("registered {} at {addr} ({transport})", clean(&name)),
                TrackerEvent::Refused { name, from, reason } => {
                    println!("refused {} from {from}: {}", clean(&name), clean(&reason))
                }
                TrackerEvent::Unregistered { name } => println!("unregistered {}", clean(&name)),
                TrackerEvent::Expired { name } => println!("expired {}", clean(&name)),
            }
        }
    });
    let (relay_tx, relay_rx) = mpsc::channel(EVENT_QUEUE);
    std::thread::spawn(move || print_relay_events(relay_rx));
    let bindings = match &args.bindings {
        Some(path) => {
            let max = config.max_peers.saturating_mul(4).max(16);
            let (file, skipped) = BindingsFile::load(path.clone(), max).with_context(|| {
                format!(
                    "cannot read --bindings {}: fix its permissions, or pass another file",
                    path.display()
                )
            })?;
            let skipped = match skipped {
                0 => String::new(),
                n => format!(" ({n} unreadable lines skipped)"),
            };
            println!(
                "name bindings kept in {}: {} restored{skipped}",
                path.display(),
                file.restored.len()
            );
            Some(file)
        }
        None => None,
    };
    let secure = match args.secure {
        true => Some(secure_settings(config.max_peers)?),
        false => None,
    };
    let settings = TrackerSettings {
        registry: config,
        rate: args.limits.rate(),
        relay,
        bindings,
        secure,
        ..TrackerSettings::default()
    };
    tokio::select! {
        r = run_tracker_with(vec![udp, tcp], settings, Some(tx), Some(relay_tx)) => {
            r.context("tracker stopped")?
        }
        _ = shutdown.wait() => println!("tracker stopping"),
    }
    Ok(())
}

/// `--secure`: sealed sessions proving the user's identity key (the one `p2p peer` uses),
/// room for a session per listed peer and then some; prints the key clients pass as
/// `--tracker-key`.
fn secure_settings(max_peers: usize) -> Result<SecureSettings> {
    let Some(identity) = crate::identity::load_or_create()? else {
        crate::failure::fail!(
            crate::failure::Kind::Usage,
            "--secure needs an identity key, and there is no data folder to keep one in: set \
             {}=FILE",
            crate::identity::IDENTITY_ENV
        );
    };
    let key = crate::dht::record::hex(&identity.public());
    println!("sealed sessions accepted: tracker key {key} (clients: --tracker-key {key})");
    let mut settings = SecureSettings {
        seal_requests: false,
        ..SecureSettings::new(identity)
    };
    settings.config.max_sessions = settings
        .config
        .max_sessions
        .max(max_peers.saturating_mul(2));
    Ok(settings)
}

/// Events waiting to be printed, at most.
const EVENT_QUEUE: usize = 1024;

/// The relay's caps from the command line.
fn relay_config(args: &TrackerArgs) -> RelayConfig {
    let defaults = RelayConfig::default();
    RelayConfig {
        enabled: !args.no_relay,
        total_rate: args.relay_rate,
        // A session may take at most the whole rate.
        session_rate: args.relay_session_rate.min(args.relay_rate),
        peer_rate: args.relay_peer_rate.min(args.relay_rate),
        max_sessions: args.relay_sessions,
        ..defaults
    }
}

/// The startup line that says whether, and how much, the tracker relays.
fn describe_relay(relay: &RelayConfig) -> String {
    if !relay.enabled {
        return "relay off (--no-relay)".to_string();
    }
    format!(
        "relay on: {} in all, {} per relayed peer, {} per session, {} sessions at most ({} per peer, {} per IP)",
        rate(relay.total_rate),
        rate(relay.peer_rate),
        rate(relay.session_rate),
        relay.max_sessions,
        relay.per_peer,
        relay.per_ip
    )
}

/// `bytes` per second, in MiB/s or KiB/s.
fn rate(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB/s", bytes / MIB)
    } else if bytes >= MIB {
        format!("{:.1} MiB/s", bytes as f64 / MIB as f64)
    } else {
        format!("{:.0} KiB/s", bytes as f64 / 1024.0)
    }
}

/// Prints the relay's events until the tracker stops (on a thread of its own, as the
/// peers' events are). Session ids are secrets: never printed.
fn print_relay_events(mut rx: mpsc::Receiver<RelayEvent>) {
    while let Some(e) = rx.blocking_recv() {
        match e {
            RelayEvent::Opened { from, name, to, .. } => {
                println!("relay opened {from} <-> {} at {to}", clean(&name))
            }
            RelayEvent::Refused { name, from, reason } => {
                println!(
                    "relay refused {from} -> {}: {}",
                    clean(&name),
                    clean(&reason)
                )
            }
            RelayEvent::Closed {
                name,
                reason,
                forwarded,
                dropped,
                ..
            } => {
                let why = match reason {
                    CloseReason::Idle => "idle",
                    CloseReason::PeerLeft => "peer left",
                };
                println!(
                    "relay closed to {} ({why}): {forwarded} bytes forwarded, {dropped} datagrams dropped over the caps",
                    clean(&name)
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_line_says_what_the_caps_are() {
        assert_eq!(
            describe_relay(&RelayConfig::default()),
            "relay on: 64 MiB/s in all, 32 MiB/s per relayed peer, 16 MiB/s per session, 256 sessions at most (16 per peer, 16 per IP)"
        );
        assert_eq!(
            describe_relay(&RelayConfig::off()),
            "relay off (--no-relay)"
        );
        assert_eq!(rate(1536 * 1024), "1.5 MiB/s");
        assert_eq!(rate(512 * 1024), "512 KiB/s");
    }
}
