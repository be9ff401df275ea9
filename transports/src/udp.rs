//! UDP: one message per datagram.

use std::io;
use std::net::SocketAddr;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use p2p_core::transport::Transport;
use quinn_udp::{Transmit, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::Mutex;

/// Largest message sent by default: fits a 1500-byte Ethernet MTU with IPv6 and UDP headers
/// (1500 − 40 − 8), so nothing is fragmented on a real network.
pub const DEFAULT_UDP_MESSAGE: usize = 1452;
/// Largest message sent to a loopback address: 60 KiB of payload per datagram, no
/// fragmentation on the loopback interface (MTU 64 KiB).
pub const LOOPBACK_UDP_MESSAGE: usize = 60 * 1024 + p2p_core::wire::DATA_OVERHEAD;
/// Kernel socket buffer asked for. Without privileges the kernel caps it at
/// `net.core.rmem_max`/`wmem_max`; with CAP_NET_ADMIN the forced variants lift the cap.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// A UDP socket as a [`Transport`].
#[derive(Debug)]
pub struct UdpTransport {
    socket: UdpSocket,
    /// quinn-udp's view of the socket: segmentation offload (GSO) for batches.
    state: UdpSocketState,
    max_message: usize,
    /// Where the next datagram lands (see [`take`]).
    buf: Mutex<BytesMut>,
}

/// Room for any datagram.
const RECV_BLOCK: usize = 65_536;

/// Takes the datagram just received out of `buf`. A large one keeps its block (no copy); a
/// small one is copied out and the block reused, so that a buffered message never pins more
/// than twice its size.
fn take(buf: &mut BytesMut) -> Bytes {
    let msg = if buf.len() >= RECV_BLOCK / 2 {
        buf.split().freeze()
    } else {
        let small = Bytes::copy_from_slice(buf);
        buf.clear();
        small
    };
    buf.reserve(RECV_BLOCK);
    msg
}

impl UdpTransport {
    /// Binds `addr` (port 0 picks a free port) with large socket buffers.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::bind_with(addr, DEFAULT_UDP_MESSAGE)
    }

    /// Binds `addr`, sending messages of at most `max_message` bytes.
    pub fn bind_with(addr: SocketAddr, max_message: usize) -> io::Result<Self> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
        force_buffers(&socket);
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        // quinn-udp learns what the kernel offers (segmentation offload) on a socket of its
        // own: its set-up also sets options this socket must not have (receive offload, and
        // path-MTU probing, which would stop the kernel fragmenting on a path with an MTU
        // below 1,500 bytes).
        let probe = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        let state = UdpSocketState::new((&probe).into())?;
        drop(probe);
        Ok(UdpTransport {
            socket: UdpSocket::from_std(socket.into())?,
            state,
            max_message: max_message.min(65_507),
            buf: Mutex::new(BytesMut::with_capacity(RECV_BLOCK)),
        })
    }
}

/// Most bytes one segmented send carries (the IP length field's limit, less headers).
const MAX_BATCH_BYTES: usize = 65_000;

/// Raises the socket buffers past the unprivileged cap where allowed (root); silently keeps
/// the granted size elsewhere.
fn force_buffers(socket: &Socket) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER);
    let _ = setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER);
}

#[async_trait]
impl Transport for UdpTransport {
    async fn send_to(&self, to: SocketAddr, msg: &[u8]) -> io::Result<()> {
        if msg.len()
            > self
                .max_message_size_to(to)
                .max(p2p_core::wire::CONTROL_BUDGET)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("message of {} bytes exceeds the datagram limit", msg.len()),
            ));
        }
        self.socket.send_to(msg, to).await.map(|_| ())
    }

    fn max_batch(&self, _to: SocketAddr, len: usize) -> usize {
        self.state
            .max_gso_segments()
            .min(MAX_BATCH_BYTES / len.max(1))
            .max(1)
    }

    async fn send_batch(&self, to: SocketAddr, msgs: &[u8], segment: usize) -> io::Result<()> {
        if msgs.len() <= segment || self.max_batch(to, segment) <= 1 {
            for msg in msgs.chunks(segment.max(1)) {
                self.send_to(to, msg).await?;
            }
            return Ok(());
        }
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: msgs,
            segment_size: Some(segment),
            src_ip: None,
        };
        self.socket
            .async_io(Interest::WRITABLE, || {
                self.state.try_send((&self.socket).into(), &transmit)
            })
            .await
    }

    async fn recv_from(&self) -> io::Result<(SocketAddr, Bytes)> {
        let mut buf = self.buf.lock().await;
        let (n, from) = self.socket.recv_buf_from(&mut *buf).await?;
        debug_assert_eq!(buf.len(), n);
        Ok((from, take(&mut buf)))
    }

    fn try_recv_from(&self) -> Option<(SocketAddr, Bytes)> {
        let mut buf = self.buf.try_lock().ok()?;
        let (n, from) = self.socket.try_recv_buf_from(&mut *buf).ok()?;
        debug_assert_eq!(buf.len(), n);
        Some((from, take(&mut buf)))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn max_message_size(&self) -> usize {
        self.max_message
    }

    fn max_message_size_to(&self, to: SocketAddr) -> usize {
        if to.ip().is_loopback() {
            self.max_message.max(LOOPBACK_UDP_MESSAGE)
        } else {
            self.max_message
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch leaves as separate datagrams, whole and in order, with segmentation offload
    /// where the kernel has it and one by one where not; the last may be shorter.
    #[tokio::test]
    async fn a_batch_arrives_as_separate_datagrams() {
        let a = UdpTransport::bind_with("127.0.0.1:0".parse().unwrap(), 1452).unwrap();
        let b = UdpTransport::bind_with("127.0.0.1:0".parse().unwrap(), 1452).unwrap();
        let to = b.local_addr().unwrap();
        let segment = 1000;
        assert!(a.max_batch(to, segment) >= 1);
        let mut msgs = Vec::new();
        for i in 0..20u8 {
            let len = if i == 19 { 321 } else { segment };
            msgs.extend(std::iter::repeat_n(i, len));
        }
        a.send_batch(to, &msgs, segment).await.unwrap();
        for i in 0..20u8 {
            let (from, msg) = b.recv_from().await.unwrap();
            assert_eq!(from, a.local_addr().unwrap());
            let len = if i == 19 { 321 } else { segment };
            assert_eq!(&msg[..], &vec![i; len][..], "datagram {i}");
        }
        assert!(b.try_recv_from().is_none());
    }
}
