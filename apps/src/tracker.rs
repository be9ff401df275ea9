//! `p2p tracker`: the registry of live peers, on UDP and TCP at the same port.

use std::sync::Arc;

use anyhow::{Context, Result};
use p2p_core::service::{run_tracker_limited, TrackerEvent};
use p2p_core::transport::{SharedTransport, Transport};
use p2p_proto::tracker::RegistryConfig;
use p2p_transports::{TcpConfig, TcpTransport, UdpTransport};
use tokio::sync::mpsc;

use crate::cli::TrackerArgs;
use crate::common::clean;

pub(crate) async fn run(args: TrackerArgs) -> Result<()> {
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
    let (tx, mut rx) = mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
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
    tokio::select! {
        r = run_tracker_limited(vec![udp, tcp], config, args.limits.rate(), Some(tx)) => {
            r.context("tracker stopped")?
        }
        _ = crate::peer::shutdown_signal() => println!("tracker stopping"),
    }
    printer.abort();
    Ok(())
}

/// Binds UDP and TCP on the same port (when the port is 0, retries until one fits both).
pub(crate) async fn bind_both(
    listen: std::net::SocketAddr,
    tcp_config: TcpConfig,
) -> Result<(SharedTransport, SharedTransport)> {
    let mut last_err = None;
    for _ in 0..20 {
        let udp = UdpTransport::bind(listen).await.with_context(|| {
            format!("cannot listen on {listen}/udp (is another tracker running? try --listen)")
        })?;
        let addr = udp.local_addr()?;
        match TcpTransport::bind(addr, tcp_config.clone()).await {
            Ok(tcp) => return Ok((Arc::new(udp), Arc::new(tcp))),
            Err(e) if listen.port() == 0 => last_err = Some(e),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot listen on {addr}/tcp (is another tracker running? try --listen)"
                    )
                })
            }
        }
    }
    Err(last_err.expect("tried")).context("no free port for both UDP and TCP")
}
