//! Real network adapters of [`p2p_core::transport::Transport`]: [`UdpTransport`] (one message
//! per datagram) and [`TcpTransport`] (length-prefixed frames on cached connections), whose
//! [`framing`] runs on any `tokio::io` stream (the simulations run it on turmoil's TCP).

#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod framing;
mod tcp;
mod udp;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use p2p_core::transport::SharedTransport;
use p2p_proto::wire::TransportKind;

pub use tcp::{TcpConfig, TcpTransport};
pub use udp::{UdpConfig, UdpTransport, DEFAULT_UDP_MESSAGE, LOOPBACK_UDP_MESSAGE, SEND_FILE_MIN};

/// Settings of either transport.
#[derive(Clone, Debug, Default)]
pub struct NetConfig {
    /// For a TCP transport.
    pub tcp: TcpConfig,
    /// For a UDP transport.
    pub udp: UdpConfig,
}

/// Binds a transport of `kind` on `addr` with default settings.
pub async fn bind(kind: TransportKind, addr: SocketAddr) -> io::Result<SharedTransport> {
    bind_with(kind, addr, NetConfig::default()).await
}

/// Binds a transport of `kind` on `addr`, configured by `config`.
pub async fn bind_with(
    kind: TransportKind,
    addr: SocketAddr,
    config: NetConfig,
) -> io::Result<SharedTransport> {
    Ok(match kind {
        TransportKind::Udp => Arc::new(UdpTransport::bind_config(addr, config.udp)?),
        TransportKind::Tcp => Arc::new(TcpTransport::bind(addr, config.tcp).await?),
    })
}
