//! UDP: one message per datagram.
//!
//! Sending: a batch of equal-size chunks leaves in one system call with segmentation offload
//! (GSO, through `quinn-udp`). Receiving: receive offload (GRO) on, so that the kernel may
//! hand over a run of datagrams from one sender in one read, and `recvmmsg` (also through
//! `quinn-udp`) fills up to four blocks per call. Datagrams land in a small pool of
//! 64 KiB blocks and are handed on as slices of them; a block is reused once no message
//! points into it any more, so the hot path neither allocates nor zeroes memory.
//!
//! Large chunks to a loopback address ([`SEND_FILE_MIN`] bytes or more) leave from the page
//! cache: the head corked with `MSG_MORE`, then `sendfile` of the range
//! ([`Transport::send_file`]), under a lock every send takes, so that no other datagram joins
//! a corked one.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use nix::sys::sendfile::sendfile64;
use nix::sys::socket::{sendmsg, sendto, sockopt, ControlMessage, MsgFlags, SockaddrStorage};
use p2p_core::transport::{FileRange, Transport};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::Mutex;

/// Largest message sent by default: fits a 1500-byte Ethernet MTU with IPv6 and UDP headers
/// (1500 − 40 − 8), so nothing is fragmented on a real network.
pub const DEFAULT_UDP_MESSAGE: usize = 1452;
/// Largest message sent to a loopback address: 60 KiB of payload per datagram, no
/// fragmentation on the loopback interface (MTU 64 KiB).
pub const LOOPBACK_UDP_MESSAGE: usize = 60 * 1024 + p2p_proto::wire::DATA_OVERHEAD;
/// Kernel socket buffer asked for. Without privileges the kernel caps it at
/// `net.core.rmem_max`/`wmem_max`; with CAP_NET_ADMIN the forced variants lift the cap.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Settings of a [`UdpTransport`].
#[derive(Clone, Debug)]
pub struct UdpConfig {
    /// Largest datagram sent (at most 65,507 bytes).
    pub max_message: usize,
    /// Largest datagram sent to a loopback address.
    pub loopback_message: usize,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            max_message: DEFAULT_UDP_MESSAGE,
            loopback_message: LOOPBACK_UDP_MESSAGE,
        }
    }
}

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_507;

/// Chunks of at least this many bytes to a loopback address leave from the page cache
/// ([`Transport::send_file`]): a copy of them costs more than the two system calls each
/// takes. A real network's chunks are read into batches and keep their checksum.
pub const SEND_FILE_MIN: usize = 16 * 1024;

/// A UDP socket as a [`Transport`].
#[derive(Debug)]
pub struct UdpTransport {
    socket: UdpSocket,
    /// quinn-udp's view of the socket: segmentation offload (GSO) for batches.
    state: UdpSocketState,
    max_message: usize,
    loopback_message: usize,
    /// Receive offload is on for this socket.
    gro: bool,
    /// Datagrams read but not yet handed out, and the blocks they were read into.
    inbox: Mutex<Inbox>,
    /// Receive system calls that returned data (for tests).
    reads: AtomicU64,
    /// Held across every send: a datagram sent from a file is built by two system calls
    /// (the head, corked, then `sendfile`), and nothing else may join it in between.
    send_lock: StdMutex<()>,
    /// `sendfile` to this socket works (cleared at its first refusal).
    sendfile: AtomicBool,
    /// An IPv6 socket, dual-stack when bound to `[::]`: IPv4 peers are written to as
    /// IPv4-mapped addresses and reported as plain IPv4 ([`canonical`]).
    v6: bool,
}

/// `addr` with an IPv4-mapped IPv6 address (`[::ffff:192.0.2.7]:p`, what a dual-stack
/// socket reports for an IPv4 peer) as the plain IPv4 address: one peer, one address,
/// whichever socket it came in on.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Room for any datagram, and for the longest run receive offload merges (64 KiB).
const RECV_BLOCK: usize = 65_536;
/// Blocks one read may fill (datagrams or offload runs from several senders).
const READ_BATCH: usize = 4;
/// Blocks kept for reuse: 4 MiB at most. Past this, a read takes a fresh block and the pool
/// drops its oldest one (freed once the messages in it are).
const POOL_BLOCKS: usize = 64;

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("ready", &self.ready.len())
            .field("blocks", &self.blocks.len())
            .finish()
    }
}

#[derive(Default)]
struct Inbox {
    ready: VecDeque<(SocketAddr, Bytes)>,
    blocks: Vec<Arc<Vec<u8>>>,
    /// Next pool slot to replace when every block is still in use.
    evict: usize,
}

/// A receive block shared by the messages sliced out of it.
struct Block(Arc<Vec<u8>>);

impl AsRef<[u8]> for Block {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Inbox {
    /// Indices of up to `n` blocks no message points into, adding blocks as needed.
    fn free_blocks(&mut self, n: usize) -> Vec<usize> {
        let mut free: Vec<usize> = (0..self.blocks.len())
            .filter(|&i| Arc::get_mut(&mut self.blocks[i]).is_some())
            .take(n)
            .collect();
        while free.len() < n {
            let block = Arc::new(vec![0; RECV_BLOCK]);
            if self.blocks.len() < POOL_BLOCKS {
                self.blocks.push(block);
                free.push(self.blocks.len() - 1);
            } else {
                // Every block is pinned by messages still queued somewhere: replace one.
                let i = (0..POOL_BLOCKS)
                    .map(|k| (self.evict + k) % POOL_BLOCKS)
                    .find(|i| !free.contains(i))
                    .expect("n <= READ_BATCH < POOL_BLOCKS");
                self.evict = (i + 1) % POOL_BLOCKS;
                self.blocks[i] = block;
                free.push(i);
            }
        }
        free
    }

    /// Queues the datagrams block `i` received: a run of `meta.len` bytes, one datagram per
    /// `meta.stride`. A large run stays in its block (no copy); a small one is copied out, so
    /// that the block is free again at once and a queued ACK never pins 64 KiB.
    fn take(&mut self, i: usize, meta: &RecvMeta) {
        let len = meta.len.min(RECV_BLOCK);
        let stride = if meta.stride == 0 { len } else { meta.stride };
        let from = canonical(meta.addr);
        if len == 0 {
            self.ready.push_back((from, Bytes::new()));
            return;
        }
        if len < RECV_BLOCK / 2 {
            for d in self.blocks[i][..len].chunks(stride) {
                self.ready.push_back((from, Bytes::copy_from_slice(d)));
            }
        } else {
            let whole = Bytes::from_owner(Block(self.blocks[i].clone()));
            for start in (0..len).step_by(stride) {
                let msg = whole.slice(start..(start + stride).min(len));
                self.ready.push_back((from, msg));
            }
        }
    }
}

impl UdpTransport {
    /// Binds `addr` (port 0 picks a free port) with large socket buffers.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::bind_with(addr, DEFAULT_UDP_MESSAGE)
    }

    /// Binds `addr`, sending messages of at most `max_message` bytes (and, to a loopback
    /// address, of at most the larger of that and [`LOOPBACK_UDP_MESSAGE`]).
    pub fn bind_with(addr: SocketAddr, max_message: usize) -> io::Result<Self> {
        Self::bind_config(
            addr,
            UdpConfig {
                max_message,
                loopback_message: max_message.max(LOOPBACK_UDP_MESSAGE),
            },
        )
    }

    /// Binds `addr` with `config`.
    pub fn bind_config(addr: SocketAddr, config: UdpConfig) -> io::Result<Self> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            // `[::]` serves IPv4 peers too, whatever the system's default.
            let _ = socket.set_only_v6(false);
        }
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
        let gro = nix::sys::socket::setsockopt(&socket, sockopt::UdpGroSegment, &true).is_ok();
        Ok(UdpTransport {
            socket: UdpSocket::from_std(socket.into())?,
            state,
            max_message: config.max_message.min(MAX_DATAGRAM),
            loopback_message: config.loopback_message.min(MAX_DATAGRAM),
            gro,
            inbox: Mutex::new(Inbox::default()),
            reads: AtomicU64::new(0),
            send_lock: StdMutex::new(()),
            sendfile: AtomicBool::new(true),
            v6: addr.is_ipv6(),
        })
    }

    /// `to` as this socket writes to it: an IPv4 address as IPv4-mapped on an IPv6 socket.
    fn wire_addr(&self, to: SocketAddr) -> SocketAddr {
        match to {
            SocketAddr::V4(v4) if self.v6 => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            _ => to,
        }
    }

    /// True when the kernel may merge datagrams for this socket (receive offload).
    pub fn receive_offload(&self) -> bool {
        self.gro
    }

    /// Receive system calls that returned data so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// One non-blocking read of up to `READ_BATCH` datagrams (or offload runs) into free
    /// blocks; what arrived goes to `inbox.ready`.
    fn read(&self, inbox: &mut Inbox) -> io::Result<()> {
        let free = inbox.free_blocks(READ_BATCH);
        let mut meta = [RecvMeta::default(); READ_BATCH];
        let n = {
            let mut bufs: Vec<IoSliceMut<'_>> = inbox
                .blocks
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| free.contains(i))
                .map(|(_, b)| IoSliceMut::new(Arc::get_mut(b).expect("a free block")))
                .collect();
            self.state
                .recv((&self.socket).into(), &mut bufs, &mut meta)?
        };
        self.reads.fetch_add(1, Ordering::Relaxed);
        // `bufs` was built in index order: datagram k landed in the k-th smallest free index.
        let mut order = free;
        order.sort_unstable();
        for (m, &i) in meta[..n].iter().zip(&order) {
            inbox.take(i, m);
        }
        Ok(())
    }

    /// The segment size that marks a datagram of `len` bytes to `to` as one segment, where
    /// that leaves its checksum to the device: on loopback, for a datagram that fits its
    /// MTU with IPv6 headers (the kernel refuses a marked datagram larger than the MTU
    /// rather than fragmenting it), with a kernel that has segmentation offload.
    fn whole_segment(&self, to: SocketAddr, len: usize) -> Option<u16> {
        let fits = to.ip().is_loopback() && len <= MAX_BATCH_BYTES;
        (fits && self.state.max_gso_segments() > 1).then_some(len as u16)
    }

    /// Refuses a message of `len` bytes too large for a datagram to `to`.
    fn check_size(&self, to: SocketAddr, len: usize) -> io::Result<()> {
        let limit = self
            .max_message_size_to(to)
            .max(p2p_proto::wire::CONTROL_BUDGET);
        if len > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("message of {len} bytes exceeds the datagram limit"),
            ));
        }
        Ok(())
    }

    fn send_lock(&self) -> MutexGuard<'_, ()> {
        // Nothing below panics while a datagram is corked (every path finishes or abandons
        // its datagram before returning): a poisoned lock is still good.
        self.send_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One non-blocking attempt to send `head` and `body` as one datagram: the head opens
    /// a corked datagram (`MSG_MORE`), `sendfile` appends the range from the page cache and
    /// sends it. On every return nothing is left corked. `WouldBlock` means the datagram did
    /// not go whole (when the socket cannot queue a part of a corked datagram, the kernel
    /// discards the parts queued before: `udp_flush_pending_frames`); the caller waits and
    /// sends it again.
    fn try_send_file(&self, to: SocketAddr, head: &[u8], body: &FileRange) -> io::Result<()> {
        let _sending = self.send_lock();
        let addr = SockaddrStorage::from(self.wire_addr(to));
        // nix names no MSG_MORE; the kernel's value.
        let more = MsgFlags::from_bits_retain(nix::libc::MSG_MORE) | MsgFlags::MSG_DONTWAIT;
        if let Some(segment) = self.whole_segment(to, head.len() + body.len) {
            // Marked for segmentation offload as one segment of its own length: the kernel
            // then leaves the checksum to the device, which on loopback means none at all.
            // Unmarked, a corked datagram is checksummed in software: over the page cache
            // when sent, and again by the receiver as it copies it out (18 % of a loopback
            // receiver's CPU).
            let gso = [ControlMessage::UdpGsoSegments(&segment)];
            let iov = [IoSlice::new(head)];
            sendmsg(self.socket.as_raw_fd(), &iov, &gso, more, Some(&addr))?;
        } else {
            sendto(self.socket.as_raw_fd(), head, &addr, more)?;
        }
        let mut offset = body.offset as i64;
        let mut left = body.len;
        while left > 0 {
            let Some(file) = body.file.os_file() else {
                return Err(io::Error::other("not a file of the operating system's"));
            };
            match sendfile64(&self.socket, file, Some(&mut offset), left) {
                Ok(0) => {
                    // The file became shorter since `send_file` looked. The kernel sends a
                    // corked datagram as soon as `sendfile` meets the end of the file, so
                    // this one may have gone short (the receiver drops it as malformed: a
                    // loss); zeros finish it if not, and go as a stray datagram (dropped
                    // too) if so. Either way nothing is left corked.
                    let zeros = vec![0; left];
                    sendto(
                        self.socket.as_raw_fd(),
                        &zeros,
                        &addr,
                        MsgFlags::MSG_DONTWAIT,
                    )?;
                    return Ok(());
                }
                Ok(n) => left -= n,
                Err(e) => {
                    // Refused by the socket (full: EAGAIN), the kernel has discarded the
                    // corked datagram; refused on the file's side (a read error, or a file
                    // sendfile cannot take), the head is still corked. An empty send without
                    // MSG_MORE leaves nothing corked either way: it sends what is pending (a
                    // datagram the receiver drops as malformed), or an empty datagram (which
                    // it drops too), or fails, which discards what is pending. This datagram
                    // is lost; `WouldBlock` makes the caller wait and send it again, and the
                    // sender's retransmission repairs any other loss.
                    let _ = sendto(self.socket.as_raw_fd(), &[], &addr, MsgFlags::MSG_DONTWAIT);
                    if SENDFILE_UNSUPPORTED.contains(&(e as i32)) {
                        // A file (or kernel) sendfile cannot take: read chunks from now on.
                        tracing::warn!("sendfile refused ({e}): UDP chunks are read instead");
                        self.sendfile.store(false, Ordering::Relaxed);
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }
}

/// `sendfile` errors that mean "not for this file": the bytes are read and sent instead.
const SENDFILE_UNSUPPORTED: [i32; 3] =
    [nix::libc::EINVAL, nix::libc::ENOSYS, nix::libc::EOPNOTSUPP];

/// Most bytes one segmented send carries (the IP length field's limit, less headers).
const MAX_BATCH_BYTES: usize = 65_000;

/// Raises the socket buffers past the unprivileged cap where allowed (root); silently keeps
/// the granted size elsewhere.
fn force_buffers(socket: &Socket) {
    use nix::sys::socket::setsockopt;
    let _ = setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER);
    let _ = setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER);
}

#[async_trait]
impl Transport for UdpTransport {
    async fn send_to(&self, to: SocketAddr, msg: &[u8]) -> io::Result<()> {
        self.check_size(to, msg.len())?;
        let addr = SockaddrStorage::from(self.wire_addr(to));
        self.socket
            .async_io(Interest::WRITABLE, || {
                let _sending = self.send_lock();
                sendto(self.socket.as_raw_fd(), msg, &addr, MsgFlags::MSG_DONTWAIT)
                    .map(|_| ())
                    .map_err(io::Error::from)
            })
            .await
    }

    /// Sets the socket's TTL (and IPv6 hop limit) for this one datagram, under the send lock
    /// so that no other datagram leaves with it, then puts the socket's own back.
    async fn send_to_ttl(&self, to: SocketAddr, msg: &[u8], ttl: u8) -> io::Result<()> {
        self.check_size(to, msg.len())?;
        let addr = SockaddrStorage::from(self.wire_addr(to));
        let sock = socket2::SockRef::from(&self.socket);
        self.socket
            .async_io(Interest::WRITABLE, || {
                let _sending = self.send_lock();
                let v4 = sock.ttl().ok();
                let v6 = if self.v6 {
                    sock.unicast_hops_v6().ok()
                } else {
                    None
                };
                // On a dual-stack socket, IPv4-mapped destinations take IP_TTL. Only what
                // could be read is changed, so that it can be put back.
                if v4.is_some() {
                    let _ = sock.set_ttl(u32::from(ttl));
                }
                if v6.is_some() {
                    let _ = sock.set_unicast_hops_v6(u32::from(ttl));
                }
                let sent = sendto(self.socket.as_raw_fd(), msg, &addr, MsgFlags::MSG_DONTWAIT)
                    .map(|_| ())
                    .map_err(io::Error::from);
                if let Some(v4) = v4 {
                    let _ = sock.set_ttl(v4);
                }
                if let Some(v6) = v6 {
                    let _ = sock.set_unicast_hops_v6(v6);
                }
                sent
            })
            .await
    }

    /// Sends the range from the page cache (the head corked, then `sendfile`); where
    /// `sendfile` does not work, reads it into the datagram.
    async fn send_file(&self, to: SocketAddr, head: Vec<u8>, body: FileRange) -> io::Result<()> {
        // A range past the end of the file (it shrank) is read: its missing bytes go as zeros
        // in the one datagram, which `sendfile` cannot do (see `try_send_file`).
        self.check_size(to, head.len() + body.len)?;
        let end = body.offset + body.len as u64;
        let short = body.file.len().map_or(true, |len| len < end);
        if short || body.file.os_file().is_none() || !self.sendfile.load(Ordering::Relaxed) {
            return self.send_to(to, &body.after(head)?).await;
        }
        self.socket
            .async_io(Interest::WRITABLE, || self.try_send_file(to, &head, &body))
            .await
    }

    /// Chunks of [`SEND_FILE_MIN`] bytes or more to a loopback address, while `sendfile`
    /// works. Elsewhere (a path given large datagrams with `--max-datagram`) payloads keep
    /// their checksum, so that corruption on a real network stays a loss.
    fn sends_file(&self, to: SocketAddr, len: usize) -> bool {
        len >= SEND_FILE_MIN && to.ip().is_loopback() && self.sendfile.load(Ordering::Relaxed)
    }

    fn max_batch(&self, _to: SocketAddr, len: usize) -> usize {
        self.state
            .max_gso_segments()
            .min(MAX_BATCH_BYTES / len.max(1))
            .max(1)
    }

    async fn send_batch(&self, to: SocketAddr, msgs: &[u8], segment: usize) -> io::Result<()> {
        if msgs.len() <= segment || self.max_batch(to, segment) <= 1 {
            return p2p_core::transport::send_each(self, to, msgs, segment).await;
        }
        let transmit = Transmit {
            destination: self.wire_addr(to),
            ecn: None,
            contents: msgs,
            segment_size: Some(segment),
            src_ip: None,
        };
        self.socket
            .async_io(Interest::WRITABLE, || {
                let _sending = self.send_lock();
                self.state.try_send((&self.socket).into(), &transmit)
            })
            .await
    }

    async fn recv_from(&self) -> io::Result<(SocketAddr, Bytes)> {
        let mut inbox = self.inbox.lock().await;
        loop {
            if let Some(m) = inbox.ready.pop_front() {
                return Ok(m);
            }
            // Cancel-safe: a read either completes (its datagrams are queued in the inbox)
            // or never happened.
            self.socket
                .async_io(Interest::READABLE, || self.read(&mut inbox))
                .await?;
        }
    }

    fn try_recv_from(&self) -> Option<(SocketAddr, Bytes)> {
        let mut inbox = self.inbox.try_lock().ok()?;
        if inbox.ready.is_empty() {
            self.socket
                .try_io(Interest::READABLE, || self.read(&mut inbox))
                .ok()?;
        }
        inbox.ready.pop_front()
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn max_message_size(&self) -> usize {
        self.max_message
    }

    fn max_message_size_to(&self, to: SocketAddr) -> usize {
        if to.ip().is_loopback() {
            self.loopback_message
        } else {
            self.max_message
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A transport on a free loopback port, 1452-byte datagrams (60 KiB to loopback).
    fn local() -> UdpTransport {
        UdpTransport::bind_with("127.0.0.1:0".parse().unwrap(), 1452).unwrap()
    }

    /// A socket on `[::]` serves IPv4 peers too: they are reported as plain IPv4 addresses
    /// (not `[::ffff:127.0.0.1]`), and an answer to that address reaches them. Skipped with
    /// a note where the machine has no IPv6.
    #[tokio::test]
    async fn a_dual_stack_socket_speaks_plain_ipv4() {
        let Ok(server) = UdpTransport::bind_with("[::]:0".parse().unwrap(), 1452) else {
            eprintln!("skipped: this machine cannot bind [::]");
            return;
        };
        let port = server.local_addr().unwrap().port();
        let client = local();
        client
            .send_to(SocketAddr::from(([127, 0, 0, 1], port)), b"ping")
            .await
            .unwrap();
        let (from, msg) = server.recv_from().await.unwrap();
        assert_eq!(&msg[..], b"ping");
        assert_eq!(from, client.local_addr().unwrap(), "reported as plain IPv4");
        server.send_to(from, b"pong").await.unwrap();
        let (back, msg) = client.recv_from().await.unwrap();
        assert_eq!(&msg[..], b"pong");
        assert_eq!(back.port(), port);
    }

    /// A batch leaves as separate datagrams, whole and in order, with segmentation offload
    /// where the kernel has it and one by one where not; the last may be shorter.
    #[tokio::test]
    async fn a_batch_arrives_as_separate_datagrams() {
        let a = local();
        let b = local();
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
        // With segmentation and receive offload, the kernel hands the batch over in fewer
        // reads than datagrams (on loopback, in one).
        if b.receive_offload() && a.max_batch(to, segment) > 1 {
            assert!(b.reads() < 20, "{} reads for 20 datagrams", b.reads());
        }
    }

    /// A file whose bytes are `i % 251`, shared as a [`FileRange`] source.
    fn pattern_file(dir: &tempfile::TempDir, len: u32) -> (Vec<u8>, Arc<std::fs::File>) {
        let content: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("f"), &content).unwrap();
        let file = Arc::new(std::fs::File::open(dir.path().join("f")).unwrap());
        (content, file)
    }

    /// `send_file` sends the head and the range as one datagram, between other messages,
    /// at any offset; a range past the end of the file (it shrank) is completed with zeros;
    /// one too large for a datagram is refused. Only large chunks are sent this way.
    #[tokio::test]
    async fn a_file_range_leaves_as_one_datagram() {
        let a = local();
        let b = local();
        let to = b.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (content, file) = pattern_file(&dir, 300_000);
        let range = |offset: u64, len: usize| FileRange {
            file: file.clone(),
            offset,
            len,
            on_read_error: None,
        };
        a.send_to(to, b"before").await.unwrap();
        a.send_file(to, b"head".to_vec(), range(8192, 61_440))
            .await
            .unwrap();
        a.send_file(to, b"odd".to_vec(), range(12_388, 61_440))
            .await
            .unwrap();
        a.send_to(to, b"after").await.unwrap();
        a.send_file(to, b"tail".to_vec(), range(299_000, 20_000))
            .await
            .unwrap();
        let err = a
            .send_file(to, vec![], range(0, LOOPBACK_UDP_MESSAGE + 1))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);

        let expect: Vec<Vec<u8>> = vec![
            b"before".to_vec(),
            [&b"head"[..], &content[8192..8192 + 61_440]].concat(),
            [&b"odd"[..], &content[12_388..12_388 + 61_440]].concat(),
            b"after".to_vec(),
            [&b"tail"[..], &content[299_000..], &[0; 19_000][..]].concat(),
        ];
        for want in expect {
            let (from, got) = b.recv_from().await.unwrap();
            assert_eq!(from, a.local_addr().unwrap());
            assert_eq!(got.len(), want.len());
            assert!(
                got[..] == want[..],
                "datagram of {} bytes differs",
                want.len()
            );
        }
        assert!(b.try_recv_from().is_none());
        assert!(a.sends_file(to, SEND_FILE_MIN));
        assert!(!a.sends_file(to, SEND_FILE_MIN - 1));
        // Not on a real network, whatever the datagram size allows.
        assert!(!a.sends_file("192.0.2.1:9".parse().unwrap(), SEND_FILE_MIN));
    }

    /// Only a datagram to loopback is marked as one segment (its checksum left to the
    /// device): elsewhere the path's MTU may be smaller than the datagram, and the kernel
    /// would refuse it instead of fragmenting it.
    #[tokio::test]
    async fn only_loopback_datagrams_skip_the_software_checksum() {
        let a = local();
        if a.state.max_gso_segments() <= 1 {
            return; // no segmentation offload: nothing is ever marked
        }
        let len = 61_480;
        assert_eq!(
            a.whole_segment("127.0.0.1:9".parse().unwrap(), len),
            Some(61_480)
        );
        assert_eq!(
            a.whole_segment("[::1]:9".parse().unwrap(), len),
            Some(61_480)
        );
        assert_eq!(a.whole_segment("192.0.2.1:9".parse().unwrap(), len), None);
        assert_eq!(a.whole_segment("[::1]:9".parse().unwrap(), 65_488), None);
    }

    /// When `sendfile` fails on the file's side (here: an `O_DIRECT` file read at an
    /// unaligned offset, which it refuses with `EINVAL`), the corked head is pushed on its own
    /// (the receiver drops it as malformed), never joined to the next message; and chunks are
    /// read from then on.
    #[tokio::test]
    async fn a_failed_sendfile_leaves_nothing_corked() {
        use std::os::unix::fs::OpenOptionsExt;
        let a = local();
        let b = local();
        let to = b.local_addr().unwrap();
        // On the crate's own filesystem: /tmp may be a tmpfs, which has no O_DIRECT.
        let dir = tempfile::TempDir::new_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        pattern_file(&dir, 200_000);
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(dir.path().join("f"));
        let Ok(direct) = direct else {
            eprintln!("skipped: this filesystem has no O_DIRECT");
            return;
        };
        let range = FileRange {
            file: Arc::new(direct),
            offset: 100,
            len: 20_000,
            on_read_error: None,
        };
        let sent = a.send_file(to, b"head".to_vec(), range).await;
        if sent.is_ok() {
            eprintln!("skipped: sendfile took an unaligned O_DIRECT read here");
            return;
        }
        a.send_to(to, b"after").await.unwrap();
        loop {
            let (_, msg) = b.recv_from().await.unwrap();
            if &msg[..] == b"after" {
                break;
            }
            assert!(
                msg.is_empty() || &msg[..] == b"head",
                "{:?}",
                &msg[..msg.len().min(16)]
            );
        }
        assert!(
            !a.sends_file(to, SEND_FILE_MIN),
            "sendfile should be off after EINVAL"
        );
    }

    /// A datagram built from a file takes two system calls; messages other tasks send at the
    /// same time never join it (nor split it): every datagram that arrives is exactly one
    /// of those sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn other_sends_never_join_a_datagram_built_from_a_file() {
        const FILE_SENDS: usize = 300;
        const SMALL_SENDS: usize = 2000;
        let a = Arc::new(local());
        let b = Arc::new(local());
        let to = b.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (content, file) = pattern_file(&dir, 64 * 1024);
        let whole = [&b"head"[..], &content[..32 * 1024]].concat();
        let small = a.clone();
        let chatter = tokio::spawn(async move {
            for i in 0..SMALL_SENDS {
                small
                    .send_to(to, format!("small {i}").as_bytes())
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
        });
        let receiver = b.clone();
        let received = tokio::spawn(async move {
            let (mut files, mut smalls) = (0, 0);
            while files + smalls < FILE_SENDS + SMALL_SENDS {
                let got = tokio::time::timeout(Duration::from_secs(2), receiver.recv_from()).await;
                let Ok(Ok((_, msg))) = got else {
                    break; // the rest was dropped (a full receive buffer)
                };
                if msg.starts_with(b"small ") && msg.len() < 16 {
                    smalls += 1;
                } else {
                    assert!(
                        msg[..] == whole[..],
                        "a datagram of {} bytes is mixed",
                        msg.len()
                    );
                    files += 1;
                }
            }
            (files, smalls)
        });
        for _ in 0..FILE_SENDS {
            let range = FileRange {
                file: file.clone(),
                offset: 0,
                len: 32 * 1024,
                on_read_error: None,
            };
            a.send_file(to, b"head".to_vec(), range).await.unwrap();
            tokio::task::yield_now().await;
        }
        chatter.await.unwrap();
        let (files, smalls) = received.await.unwrap();
        assert!(
            files > 0 && smalls > 0,
            "{files} file datagrams, {smalls} small ones"
        );
    }

    /// Blocks come back to the pool once the messages in them are dropped, and messages
    /// still held keep their bytes while later datagrams arrive.
    #[tokio::test]
    async fn large_datagrams_are_slices_of_reused_blocks() {
        let a = local();
        let b = local();
        let to = b.local_addr().unwrap();
        let len = 50_000;
        let mut held = Vec::new();
        for round in 0..3u8 {
            for i in 0..10u8 {
                a.send_to(to, &vec![round * 10 + i; len]).await.unwrap();
                let (_, msg) = b.recv_from().await.unwrap();
                assert!(msg.iter().all(|&x| x == round * 10 + i));
                if round == 0 {
                    held.push(msg); // pins its block
                }
            }
        }
        // Round 0's blocks stay pinned (and intact); rounds 1 and 2 reuse the same blocks.
        for (i, m) in held.iter().enumerate() {
            assert!(m.iter().all(|&x| x == i as u8), "held message {i} changed");
        }
        let blocks = b.inbox.lock().await.blocks.len();
        assert!(blocks <= 10 + 2 * READ_BATCH, "{blocks} blocks");
    }
}
