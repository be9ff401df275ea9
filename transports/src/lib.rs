//! Real network adapters of [`p2p_core::transport::Transport`]: [`UdpTransport`] (one message
//! per datagram) and [`TcpTransport`] (length-prefixed frames on cached connections).

#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

mod tcp;
mod udp;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use p2p_core::transport::SharedTransport;
use p2p_core::wire::TransportKind;

pub use tcp::{TcpConfig, TcpTransport};
pub use udp::{UdpTransport, DEFAULT_UDP_MESSAGE, LOOPBACK_UDP_MESSAGE};

/// Binds a transport of `kind` on `addr` with default settings.
pub async fn bind(kind: TransportKind, addr: SocketAddr) -> io::Result<SharedTransport> {
    bind_with(kind, addr, TcpConfig::default()).await
}

/// Binds a transport of `kind` on `addr`; `tcp` configures a TCP transport.
pub async fn bind_with(
    kind: TransportKind,
    addr: SocketAddr,
    tcp: TcpConfig,
) -> io::Result<SharedTransport> {
    Ok(match kind {
        TransportKind::Udp => Arc::new(UdpTransport::bind(addr).await?),
        TransportKind::Tcp => Arc::new(TcpTransport::bind(addr, tcp).await?),
    })
}
