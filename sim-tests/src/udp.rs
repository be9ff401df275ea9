//! [`SimUdp`]: the [`Transport`] trait over turmoil's simulated UDP socket, one message per
//! datagram, with the same size limit as the real UDP transport.

use std::io;
use std::net::SocketAddr;

use async_trait::async_trait;
use bytes::Bytes;
use p2p_core::transport::Transport;
use p2p_proto::wire::CONTROL_BUDGET;
use tokio::sync::Mutex;
use turmoil::net::UdpSocket;

/// Largest message sent, as in the real UDP transport: a 1500-byte MTU less IPv6 and UDP
/// headers.
pub const SIM_UDP_MESSAGE: usize = 1452;

/// Routers between any two simulated hosts, as the IP TTL sees them: a datagram sent with a
/// TTL of at most this many dies on the way ([`Transport::send_to_ttl`]). Four: a host's
/// first-hop router (its NAT, if it has one: see [`NatUdp`](crate::NatUdp)) and
/// [`HOPS_BEYOND`](crate::nat::HOPS_BEYOND) more, as across the internet.
pub const SIM_HOPS: u8 = 1 + crate::nat::HOPS_BEYOND;

/// A turmoil UDP socket as a [`Transport`]. Must be created and used inside a simulated host.
#[derive(Debug)]
pub struct SimUdp {
    socket: UdpSocket,
    max_message: usize,
    buf: Mutex<Vec<u8>>,
}

impl SimUdp {
    /// Binds `addr` inside the current simulated host (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::bind_with(addr, SIM_UDP_MESSAGE).await
    }

    /// Binds `addr`, sending messages of at most `max_message` bytes.
    pub async fn bind_with(addr: SocketAddr, max_message: usize) -> io::Result<Self> {
        Ok(SimUdp {
            socket: UdpSocket::bind(addr).await?,
            max_message: max_message.min(65_507),
            buf: Mutex::new(vec![0; 65_536]),
        })
    }
}

#[async_trait]
impl Transport for SimUdp {
    async fn send_to(&self, to: SocketAddr, msg: &[u8]) -> io::Result<()> {
        if msg.len() > self.max_message.max(CONTROL_BUDGET) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("message of {} bytes exceeds the datagram limit", msg.len()),
            ));
        }
        self.socket.send_to(msg, to).await.map(|_| ())
    }

    /// A datagram whose TTL does not outlast [`SIM_HOPS`] routers dies on the way (sent
    /// successfully, never delivered), as a hole-punching probe of TTL 2 from a host with a
    /// public address does; with a larger TTL it is sent as any other.
    async fn send_to_ttl(&self, to: SocketAddr, msg: &[u8], ttl: u8) -> io::Result<()> {
        if ttl <= SIM_HOPS && msg.len() <= self.max_message.max(CONTROL_BUDGET) {
            return Ok(());
        }
        self.send_to(to, msg).await
    }

    /// Cancel-safe: turmoil's `recv_from` keeps a datagram it has taken off the queue in the
    /// socket until a call completes, and the copy out of `buf` happens without an await.
    async fn recv_from(&self) -> io::Result<(SocketAddr, Bytes)> {
        let mut buf = self.buf.lock().await;
        let (n, from) = self.socket.recv_from(&mut buf).await?;
        Ok((from, Bytes::copy_from_slice(&buf[..n])))
    }

    fn try_recv_from(&self) -> Option<(SocketAddr, Bytes)> {
        let mut buf = self.buf.try_lock().ok()?;
        let (n, from) = self.socket.try_recv_from(&mut buf).ok()?;
        Some((from, Bytes::copy_from_slice(&buf[..n])))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn max_message_size(&self) -> usize {
        self.max_message
    }
}
