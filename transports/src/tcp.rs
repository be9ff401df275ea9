//! TCP: messages as length-prefixed frames ([`crate::framing`]) on connections opened on
//! demand and cached per remote address. An accepted connection is cached under the remote's
//! address too, so replies go back on it.
//!
//! A chunk's payload goes from the page cache to the socket with `sendfile`: the sender never
//! reads it into user space (see [`Transport::send_file`]).
//!
//! A frame length is checked against the limit before anything is allocated; a frame must
//! arrive whole within `frame_timeout` (no one-byte-a-second stalls); a connection silent for
//! `idle_timeout` is closed; at the connection cap, the connection idle longest is closed to
//! make room, so idle or stalled connections can never lock real peers out.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use nix::sys::sendfile::sendfile64;
use nix::sys::socket::{send, MsgFlags};
use p2p_core::transport::{FileRange, Transport};
use tokio::io::{AsyncWriteExt, BufWriter, Interest};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex};

use crate::framing::{
    check_size, file_frame_prefix, flush_queues, write_frames, BlockPool, FileSender, Frame,
    FrameReader, DEFAULT_MAX_MESSAGE,
};

/// Settings of a [`TcpTransport`].
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// Largest message carried.
    pub max_message: usize,
    /// Most open connections (accepted + opened).
    pub max_connections: usize,
    /// A connection that receives nothing this long is closed.
    pub idle_timeout: Duration,
    /// A frame whose first byte arrived must be complete within this long.
    pub frame_timeout: Duration,
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
    /// A connection whose queue stays full this long (its peer reads nothing) is closed, and
    /// the message that waited fails: the sender's event loop never waits longer on one peer.
    pub write_stall: Duration,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            max_message: DEFAULT_MAX_MESSAGE,
            max_connections: 256,
            idle_timeout: Duration::from_secs(60),
            frame_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            write_stall: Duration::from_secs(5),
        }
    }
}

/// Frames queued for one connection.
type Outbox = mpsc::Sender<Frame>;

/// Frames one connection's queue holds: [`CHUNK_FRAMES`](p2p_core::transport::CHUNK_FRAMES)
/// for a sender's chunks, the rest kept for control messages, so that a burst of answers
/// (a 1 GiB file's 128 piece-table pages, asked at once) fits beside them. With 64 in all,
/// a seeder dropped 40 such answers in one `get` (a full queue drops a control message),
/// and the `get` waited 250 ms to ask again (1 in 15 back-to-back TCP gets).
const QUEUE_FRAMES: usize = p2p_core::transport::CHUNK_FRAMES + p2p_core::transport::CONTROL_FRAMES;

struct Conn {
    outbox: Outbox,
    /// Milliseconds since the transport started, at the last complete frame (or connect).
    last_active: Arc<AtomicU64>,
    reader: tokio::task::AbortHandle,
    writer: tokio::task::AbortHandle,
}

impl Conn {
    /// Closes the whole socket: both halves' tasks end, and with them the stream.
    fn close(self) {
        self.reader.abort();
        self.writer.abort();
    }
}

struct Shared {
    config: TcpConfig,
    started: Instant,
    conns: StdMutex<HashMap<SocketAddr, Conn>>,
    inbox: mpsc::Sender<(SocketAddr, Bytes)>,
    /// Read blocks, shared by every connection.
    spare: BlockPool,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Closes the connection that has been idle longest.
    fn evict_idlest(&self) {
        let mut conns = self.conns.lock().expect("conns lock");
        let idlest = conns
            .iter()
            .min_by_key(|(_, c)| c.last_active.load(Ordering::Relaxed))
            .map(|(a, _)| *a);
        if let Some(addr) = idlest {
            if let Some(c) = conns.remove(&addr) {
                c.close();
                tracing::debug!(%addr, "closed the idlest connection to make room");
            }
        }
    }
}

/// A TCP listener plus a connection cache, as a [`Transport`].
pub struct TcpTransport {
    local: SocketAddr,
    shared: Arc<Shared>,
    inbox: Mutex<mpsc::Receiver<(SocketAddr, Bytes)>>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("local", &self.local)
            .finish()
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.accept_task.abort();
        for (_, c) in self.shared.conns.lock().expect("conns lock").drain() {
            c.close();
        }
    }
}

/// A listener on `addr` as std's (address reuse, a backlog of 1,024), and on `[::]`
/// dual-stack whatever the system's default, as the UDP socket on the same port is.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

impl TcpTransport {
    /// Listens on `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr, config: TcpConfig) -> io::Result<Self> {
        let listener = listen(addr)?;
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let shared = Arc::new(Shared {
            config,
            started: Instant::now(),
            conns: StdMutex::new(HashMap::new()),
            spare: BlockPool::default(),
            inbox: tx,
        });
        let accept_shared = shared.clone();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((stream, remote)) = listener.accept().await else {
                    continue;
                };
                // A dual-stack listener (`[::]`) reports IPv4 peers as IPv4-mapped.
                let remote = crate::udp::canonical(remote);
                let full = accept_shared.conns.lock().expect("conns lock").len()
                    >= accept_shared.config.max_connections;
                if full {
                    accept_shared.evict_idlest();
                }
                start_connection(&accept_shared, stream, remote);
            }
        });
        Ok(TcpTransport {
            local,
            shared,
            inbox: Mutex::new(rx),
            accept_task,
        })
    }

    /// Frames the connection to `to` takes now without waiting (unbounded: no connection
    /// yet, or a closed one, which a send opens anew).
    fn room(&self, to: SocketAddr) -> usize {
        match self.shared.conns.lock().expect("conns lock").get(&to) {
            Some(c) if !c.outbox.is_closed() => c.outbox.capacity(),
            _ => usize::MAX,
        }
    }

    async fn queue(&self, to: SocketAddr, frame: Frame) -> io::Result<()> {
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "connection closed");
        let outbox = self.outbox(to).await?;
        let frame = match outbox.try_send(frame) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(closed()),
            Err(mpsc::error::TrySendError::Full(frame)) => frame,
        };
        // Full: wait for room, but not for a peer that reads nothing.
        match tokio::time::timeout(self.shared.config.write_stall, outbox.send(frame)).await {
            Ok(sent) => sent.map_err(|_| closed()),
            Err(_) => {
                self.forget(to);
                tracing::debug!(%to, "closed a connection whose peer reads nothing");
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{to} reads nothing; connection closed"),
                ))
            }
        }
    }

    async fn outbox(&self, to: SocketAddr) -> io::Result<Outbox> {
        if let Some(c) = self.shared.conns.lock().expect("conns lock").get(&to) {
            if !c.outbox.is_closed() {
                return Ok(c.outbox.clone());
            }
        }
        let full = self.shared.conns.lock().expect("conns lock").len()
            >= self.shared.config.max_connections;
        if full {
            self.shared.evict_idlest();
        }
        Ok(connect_in_background(&self.shared, self.local, to))
    }
}

/// Connects to `to` from our listening IP when it is a specific one (a multi-homed host,
/// or one of 127/8's addresses): the other side sees the address it can reach us at, and
/// the tracker registers that one, not whichever address the route picks.
async fn connect_from(local: SocketAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let ip = local.ip();
    if ip.is_unspecified() || ip.is_ipv4() != to.is_ipv4() {
        return TcpStream::connect(to).await;
    }
    let socket = if ip.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(to).await
}

/// A connection to `to`, listed at once, whose frames wait in its outbox while a task of its
/// own connects (within `connect_timeout`), then reads and writes. The sender never waits
/// for the handshake: a peer that is gone (a connect that times out) costs its own frames,
/// never the caller's time (the endpoint's loop sends to every peer from one task).
fn connect_in_background(shared: &Arc<Shared>, local: SocketAddr, to: SocketAddr) -> Outbox {
    let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
    let last_active = Arc::new(AtomicU64::new(shared.now_ms()));
    let task_shared = shared.clone();
    let task_tx = tx.clone();
    let task_active = last_active.clone();
    // Hold the lock while the task starts, so that it cannot finish before it is listed.
    let mut conns = shared.conns.lock().expect("conns lock");
    let task = tokio::spawn(async move {
        let connect_timeout = task_shared.config.connect_timeout;
        match tokio::time::timeout(connect_timeout, connect_from(local, to)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                let (read, write) = stream.into_split();
                task_active.store(task_shared.now_ms(), Ordering::Relaxed);
                let reader = async {
                    let _ = read_frames(&task_shared, read, to, &task_active).await;
                    forget_conn(&task_shared, to, &task_tx);
                    drop(task_tx);
                };
                tokio::join!(reader, write_frames(write, rx, SendFile));
            }
            Ok(Err(e)) => {
                tracing::debug!(%to, error = %e, "connect failed");
                forget_conn(&task_shared, to, &task_tx);
            }
            Err(_) => {
                tracing::debug!(%to, "connect timed out");
                forget_conn(&task_shared, to, &task_tx);
            }
        }
    });
    let abort = task.abort_handle();
    if let Some(old) = conns.insert(
        to,
        Conn {
            outbox: tx.clone(),
            last_active,
            reader: abort.clone(),
            writer: abort,
        },
    ) {
        old.close();
    }
    tx
}

/// Removes the connection to `remote` from the cache if it is still the one of `outbox`.
fn forget_conn(shared: &Shared, remote: SocketAddr, outbox: &Outbox) {
    let mut conns = shared.conns.lock().expect("conns lock");
    if conns
        .get(&remote)
        .is_some_and(|c| c.outbox.same_channel(outbox))
    {
        conns.remove(&remote);
    }
}

fn start_connection(shared: &Arc<Shared>, stream: TcpStream, remote: SocketAddr) -> Outbox {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
    let last_active = Arc::new(AtomicU64::new(shared.now_ms()));
    let reader_shared = shared.clone();
    let reader_tx = tx.clone();
    let reader_active = last_active.clone();
    // Hold the lock while the reader starts, so that it cannot finish before it is listed.
    let mut conns = shared.conns.lock().expect("conns lock");
    let reader = tokio::spawn(async move {
        let _ = read_frames(&reader_shared, read, remote, &reader_active).await;
        forget_conn(&reader_shared, remote, &reader_tx);
    });
    let writer = tokio::spawn(write_frames(write, rx, SendFile));
    if let Some(old) = conns.insert(
        remote,
        Conn {
            outbox: tx.clone(),
            last_active,
            reader: reader.abort_handle(),
            writer: writer.abort_handle(),
        },
    ) {
        old.close();
    }
    drop(conns);
    tx
}

async fn read_frames(
    shared: &Shared,
    mut read: OwnedReadHalf,
    from: SocketAddr,
    last_active: &AtomicU64,
) -> io::Result<()> {
    let config = &shared.config;
    let mut frames = FrameReader::new(&shared.spare, config.max_message);
    while let Some(msg) = frames
        .next(&mut read, config.idle_timeout, config.frame_timeout)
        .await?
    {
        last_active.store(shared.now_ms(), Ordering::Relaxed);
        if shared.inbox.send((from, msg)).await.is_err() {
            return Ok(()); // transport dropped
        }
    }
    Ok(()) // closed between frames
}

/// Sends file frames from the page cache with `sendfile`.
struct SendFile;

impl FileSender<OwnedWriteHalf> for SendFile {
    async fn send_file(
        &mut self,
        w: &mut BufWriter<OwnedWriteHalf>,
        head: &[u8],
        body: &FileRange,
    ) -> io::Result<()> {
        w.flush().await?;
        write_file_frame(w.get_ref().as_ref(), head, body).await
    }
}

/// Writes a frame of `head` and then `body`'s bytes, which `sendfile` hands from the page
/// cache to the socket without a copy through user space. The head goes with `MSG_MORE`, so
/// that it leaves in one segment with the payload.
async fn write_file_frame(stream: &TcpStream, head: &[u8], body: &FileRange) -> io::Result<()> {
    let prefix = file_frame_prefix(head, body);
    let Some(file) = body.file.os_file() else {
        // Not a file of the operating system's (a simulated disk): read it. A failed read
        // is the upload's to handle (it aborts): the frame is skipped.
        return match body.after(prefix) {
            Ok(frame) => send_all(stream, &frame, MsgFlags::empty()).await,
            Err(_) => Ok(()),
        };
    };
    // nix names no MSG_MORE; the kernel's value.
    let more = MsgFlags::from_bits_retain(nix::libc::MSG_MORE);
    send_all(stream, &prefix, more).await?;
    let mut offset = body.offset as nix::libc::off64_t;
    let mut left = body.len;
    while left > 0 {
        let sent = match when_writable(stream, || sendfile64(stream, file, Some(&mut offset), left))
            .await
        {
            Ok(n) => n,
            Err(e)
                if e.raw_os_error()
                    .is_some_and(|c| SENDFILE_UNSUPPORTED.contains(&c)) =>
            {
                // A file sendfile cannot take (some FUSE or special files): read it.
                let rest = FileRange {
                    file: body.file.clone(),
                    offset: offset as u64,
                    len: left,
                    on_read_error: body.on_read_error.clone(),
                };
                // The frame is begun: a failed read leaves zeros, which the receiver's piece
                // check rejects (and the upload aborts).
                let mut bytes = vec![0; left];
                if rest.read_into(&mut bytes).is_err() {
                    bytes.fill(0);
                }
                return send_all(stream, &bytes, MsgFlags::empty()).await;
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => {
                // The disk, not the socket: the upload stops (`FileRange::on_read_error`);
                // zeros keep the frame whole for the `Abort` that follows.
                body.read_failed();
                return send_all(stream, &vec![0; left], MsgFlags::empty()).await;
            }
            Err(e) => return Err(e),
        };
        if sent == 0 {
            // The file became shorter: zeros keep the frame whole, and the receiver's piece
            // check rejects them (see `Transport::send_file`).
            return send_all(stream, &vec![0; left], MsgFlags::empty()).await;
        }
        left -= sent;
    }
    Ok(())
}

/// `sendfile` errors that mean "not for this file": the bytes are read and sent instead.
const SENDFILE_UNSUPPORTED: [i32; 3] =
    [nix::libc::EINVAL, nix::libc::ENOSYS, nix::libc::EOPNOTSUPP];

/// Sends all of `bytes` with `flags`.
async fn send_all(stream: &TcpStream, bytes: &[u8], flags: MsgFlags) -> io::Result<()> {
    let mut done = 0;
    while done < bytes.len() {
        done += when_writable(stream, || {
            send(
                stream.as_raw_fd(),
                &bytes[done..],
                flags | MsgFlags::MSG_NOSIGNAL,
            )
        })
        .await?;
    }
    Ok(())
}

/// Runs the non-blocking `op` on `stream` once the socket can take more.
async fn when_writable<T>(
    stream: &TcpStream,
    mut op: impl FnMut() -> nix::Result<T>,
) -> io::Result<T> {
    loop {
        stream.writable().await?;
        match stream.try_io(Interest::WRITABLE, || op().map_err(io::Error::from)) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            r => return r,
        }
    }
}

#[async_trait]
impl Transport for TcpTransport {
    async fn send_to(&self, to: SocketAddr, msg: &[u8]) -> io::Result<()> {
        self.send_owned(to, msg.to_vec()).await
    }

    fn send_room(&self, to: SocketAddr) -> usize {
        self.room(to)
    }

    /// Queues `msg` itself, without a copy.
    async fn send_owned(&self, to: SocketAddr, msg: Vec<u8>) -> io::Result<()> {
        check_size(msg.len(), self.shared.config.max_message)?;
        self.queue(to, Frame::Message(msg)).await
    }

    /// Queues `head` and the file range; the connection's writer sends the range with
    /// `sendfile`.
    async fn send_file(&self, to: SocketAddr, head: Vec<u8>, body: FileRange) -> io::Result<()> {
        check_size(head.len() + body.len, self.shared.config.max_message)?;
        self.queue(to, Frame::File { head, body }).await
    }

    async fn recv_from(&self) -> io::Result<(SocketAddr, Bytes)> {
        self.inbox
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "transport closed"))
    }

    fn try_recv_from(&self) -> Option<(SocketAddr, Bytes)> {
        self.inbox.try_lock().ok()?.try_recv().ok()
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn max_message_size(&self) -> usize {
        self.shared.config.max_message
    }

    fn is_reliable(&self) -> bool {
        true
    }

    /// Queues a [`Frame::Flushed`] marker behind what each connection has queued, and
    /// waits for the writers to reach them (all at once, `within` in all).
    async fn flush(&self, within: Duration) {
        let outboxes: Vec<Outbox> = {
            let conns = self.shared.conns.lock().expect("conns lock");
            conns.values().map(|c| c.outbox.clone()).collect()
        };
        flush_queues(outboxes, within).await;
    }

    fn forget(&self, to: SocketAddr) {
        if let Some(c) = self.shared.conns.lock().expect("conns lock").remove(&to) {
            c.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A transport on a free loopback port, default settings.
    async fn local() -> TcpTransport {
        TcpTransport::bind("127.0.0.1:0".parse().unwrap(), TcpConfig::default())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn frames_cross_and_replies_use_the_same_connection() {
        let a = local().await;
        let b = local().await;
        a.send_to(b.local_addr().unwrap(), b"hello").await.unwrap();
        let (from, msg) = b.recv_from().await.unwrap();
        assert_eq!(msg, &b"hello"[..]);
        b.send_to(from, b"back").await.unwrap();
        let (from_b, msg) = a.recv_from().await.unwrap();
        assert_eq!(msg, &b"back"[..]);
        assert_eq!(from_b, b.local_addr().unwrap());
    }

    /// `send_to` only queues a frame for the connection's writer; a transport dropped right
    /// after (a process exiting after its last answer) takes what is queued along, unless
    /// it was flushed first.
    #[tokio::test]
    async fn a_flush_before_the_drop_delivers_every_queued_frame() {
        let a = local().await;
        let b = local().await;
        let to = b.local_addr().unwrap();
        let frames = 48u8;
        for i in 0..frames {
            a.send_owned(to, vec![i; 60_000]).await.unwrap();
        }
        a.flush(Duration::from_secs(10)).await;
        drop(a);
        for i in 0..frames {
            let (_, msg) = tokio::time::timeout(Duration::from_secs(5), b.recv_from())
                .await
                .unwrap_or_else(|_| panic!("frame {i} of {frames} never arrived"))
                .unwrap();
            assert_eq!((msg.len(), msg[0]), (60_000, i));
        }
    }

    #[tokio::test]
    async fn file_frames_carry_the_file_bytes_in_order_with_other_messages() {
        let a = local().await;
        let b = local().await;
        let to = b.local_addr().unwrap();
        let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), &content).unwrap();
        let file = Arc::new(std::fs::File::open(dir.path().join("f")).unwrap());
        let range = |offset: u64, len: usize| FileRange {
            file: file.clone(),
            offset,
            len,
            on_read_error: None,
        };
        a.send_to(to, b"before").await.unwrap();
        a.send_file(to, b"head".to_vec(), range(1000, 60_000))
            .await
            .unwrap();
        a.send_to(to, b"after").await.unwrap();
        // Past the end of the file (it shrank): the frame is completed with zeros.
        a.send_file(to, b"tail".to_vec(), range(199_900, 1000))
            .await
            .unwrap();
        // Too large for a frame: refused before anything is queued.
        let err = a.send_file(to, vec![], range(0, 70_000)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);

        let mut expect: Vec<Vec<u8>> = vec![b"before".to_vec()];
        expect.push([&b"head"[..], &content[1000..61_000]].concat());
        expect.push(b"after".to_vec());
        expect.push([&b"tail"[..], &content[199_900..], &[0; 900][..]].concat());
        for want in expect {
            let (_, got) = b.recv_from().await.unwrap();
            assert_eq!(got.len(), want.len());
            assert!(got[..] == want[..], "frame of {} bytes differs", want.len());
        }
    }

    #[tokio::test]
    async fn idle_connections_at_the_cap_make_room_for_real_ones() {
        let config = TcpConfig {
            max_connections: 4,
            ..TcpConfig::default()
        };
        let server = TcpTransport::bind("127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let mut idle = Vec::new();
        for _ in 0..10 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let client = local().await;
        client.send_to(addr, b"real").await.unwrap();
        let (from, msg) = server.recv_from().await.unwrap();
        assert_eq!(msg, &b"real"[..]);
        server.send_to(from, b"answer").await.unwrap();
        assert_eq!(client.recv_from().await.unwrap().1, &b"answer"[..]);
        assert!(server.shared.conns.lock().unwrap().len() <= 4);
    }

    #[tokio::test]
    async fn oversized_frame_header_closes_the_connection_without_allocating() {
        let a = local().await;
        let mut s = TcpStream::connect(a.local_addr().unwrap()).await.unwrap();
        s.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        let mut buf = [0u8; 1];
        // The transport closes the connection: read sees EOF (or a reset).
        let n = s.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0);
    }

    /// `send_room` tells when a peer's queue is full, so that a sender can skip it instead
    /// of waiting: a peer that reads nothing fills its queue (0 room) while one not connected
    /// yet has room without bound.
    #[tokio::test]
    async fn send_room_falls_to_zero_for_a_peer_that_reads_nothing() {
        let a = TcpTransport::bind("127.0.0.1:0".parse().unwrap(), TcpConfig::default())
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let deaf = listener.local_addr().unwrap();
        let _accepted = tokio::spawn(async move { listener.accept().await.unwrap().0 });
        let other: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(a.send_room(deaf), usize::MAX, "not connected yet");
        let big = vec![7u8; 60_000];
        let mut sent = 0;
        while a.send_room(deaf) > 0 {
            // With room, a send never waits.
            tokio::time::timeout(Duration::from_secs(1), a.send_to(deaf, &big))
                .await
                .expect("a send with room waited")
                .unwrap();
            sent += 1;
            assert!(sent < 100_000, "the queue never filled");
        }
        assert!(sent >= 64, "full after {sent} messages");
        assert_eq!(a.send_room(other), usize::MAX);
    }

    /// A listener on `[::]` accepts IPv4 peers and knows them by their plain IPv4 address,
    /// so that its answer goes back over the same connection. Skipped where the machine has
    /// no IPv6.
    #[tokio::test]
    async fn a_dual_stack_listener_speaks_plain_ipv4() {
        let Ok(server) = TcpTransport::bind("[::]:0".parse().unwrap(), TcpConfig::default()).await
        else {
            eprintln!("skipped: this machine cannot bind [::]");
            return;
        };
        let port = server.local_addr().unwrap().port();
        let client = TcpTransport::bind("127.0.0.1:0".parse().unwrap(), TcpConfig::default())
            .await
            .unwrap();
        client
            .send_to(SocketAddr::from(([127, 0, 0, 1], port)), b"ping")
            .await
            .unwrap();
        let (from, msg) = server.recv_from().await.unwrap();
        assert_eq!(&msg[..], b"ping");
        assert!(from.is_ipv4(), "reported as {from}");
        server.send_to(from, b"pong").await.unwrap();
        let (_, msg) = client.recv_from().await.unwrap();
        assert_eq!(&msg[..], b"pong");
    }

    /// A peer that reads nothing fills its connection's queue; the next send waits at most
    /// `write_stall`, fails, and closes the whole connection (the peer sees it end), while a
    /// send to a peer that reads goes through (issue 18: one such client held a peer for 70 s).
    #[tokio::test]
    async fn a_peer_that_reads_nothing_is_cut_off_after_the_write_stall() {
        let config = TcpConfig {
            write_stall: Duration::from_millis(300),
            ..TcpConfig::default()
        };
        let a = TcpTransport::bind("127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let deaf = listener.local_addr().unwrap();
        let accepted = tokio::spawn(async move { listener.accept().await.unwrap().0 });
        let big = vec![7u8; 60_000];
        let started = Instant::now();
        let mut failed = None;
        for i in 0..10_000 {
            if let Err(e) = a.send_to(deaf, &big).await {
                failed = Some((i, e));
                break;
            }
        }
        let (sent, err) = failed.expect("every send to a peer that reads nothing succeeded");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(
            sent >= 64,
            "failed after {sent} sends, before the queue was full"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "sends waited {:?}",
            started.elapsed()
        );
        // The deaf peer's socket is closed: reading what was sent ends in end of stream.
        let mut deaf_side = accepted.await.unwrap();
        let mut sink = vec![0u8; 1 << 20];
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match deaf_side.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            drained.is_ok(),
            "the connection to the deaf peer stayed open"
        );
        // Others are still served.
        let b = local().await;
        a.send_to(b.local_addr().unwrap(), b"hello").await.unwrap();
        let (_, got) = tokio::time::timeout(Duration::from_secs(5), b.recv_from())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], b"hello");
    }

    /// A transport listening on one address of 127/8 connects from that address: the other
    /// side (a tracker registering us) sees the IP we listen on, not 127.0.0.1 (issue 20).
    #[tokio::test]
    async fn connections_come_from_the_listening_ip() {
        let a = TcpTransport::bind("127.9.1.2:0".parse().unwrap(), TcpConfig::default())
            .await
            .unwrap();
        let b = local().await;
        a.send_to(b.local_addr().unwrap(), b"who am i")
            .await
            .unwrap();
        let (from, got) = tokio::time::timeout(Duration::from_secs(5), b.recv_from())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], b"who am i");
        assert_eq!(from.ip(), "127.9.1.2".parse::<std::net::IpAddr>().unwrap());
    }
}
