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
