//! TCP: messages as length-prefixed frames (`u32` little-endian length, then the message) on
//! connections opened on demand and cached per remote address. An accepted connection is
//! cached under the remote's address too, so replies go back on it.
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
use bytes::{Buf, BufMut, Bytes, BytesMut};
use nix::sys::sendfile::sendfile64;
use nix::sys::socket::{send, MsgFlags};
use p2p_core::transport::{FileRange, Transport};
use p2p_proto::wire::{DATA_OVERHEAD, MAX_MESSAGE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufWriter, Interest};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex};

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
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            max_message: 64 * 1024 + DATA_OVERHEAD,
            max_connections: 256,
            idle_timeout: Duration::from_secs(60),
            frame_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

/// One frame queued for a connection.
#[derive(Debug)]
enum Frame {
    /// A whole message.
    Message(Vec<u8>),
    /// A message head, then bytes of a file, sent from the page cache.
    File { head: Vec<u8>, body: FileRange },
}

/// Frames queued for one connection.
type Outbox = mpsc::Sender<Frame>;

struct Conn {
    outbox: Outbox,
    /// Milliseconds since the transport started, at the last complete frame (or connect).
    last_active: Arc<AtomicU64>,
    reader: tokio::task::AbortHandle,
}

struct Shared {
    config: TcpConfig,
    started: Instant,
    conns: StdMutex<HashMap<SocketAddr, Conn>>,
    inbox: mpsc::Sender<(SocketAddr, Bytes)>,
    /// Read blocks given up while frames in them were still held (queued, being written or
    /// hashed), shared by every connection: reused once those frames are gone, instead of
    /// going back to the allocator (which returned them to the kernel, to be faulted in
    /// again). At most [`SPARE_BLOCKS`], whatever the number of connections.
    spare: StdMutex<Vec<BytesMut>>,
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
                c.reader.abort();
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
            c.reader.abort();
        }
    }
}

impl TcpTransport {
    /// Listens on `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr, config: TcpConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let shared = Arc::new(Shared {
            config,
            started: Instant::now(),
            conns: StdMutex::new(HashMap::new()),
            spare: StdMutex::new(Vec::new()),
            inbox: tx,
        });
        let accept_shared = shared.clone();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((stream, remote)) = listener.accept().await else {
                    continue;
                };
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

    fn check_size(&self, len: usize) -> io::Result<()> {
        if len > self.shared.config.max_message {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("message of {len} bytes exceeds the frame limit"),
            ));
        }
        Ok(())
    }

    async fn queue(&self, to: SocketAddr, frame: Frame) -> io::Result<()> {
        let outbox = self.outbox(to).await?;
        outbox
            .send(frame)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "connection closed"))
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
        let stream =
            tokio::time::timeout(self.shared.config.connect_timeout, TcpStream::connect(to))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connecting to {to} timed out"),
                    )
                })??;
        Ok(start_connection(&self.shared, stream, to))
    }
}

fn start_connection(shared: &Arc<Shared>, stream: TcpStream, remote: SocketAddr) -> Outbox {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let (tx, rx) = mpsc::channel(64);
    let last_active = Arc::new(AtomicU64::new(shared.now_ms()));
    let reader_shared = shared.clone();
    let reader_tx = tx.clone();
    let reader_active = last_active.clone();
    // Hold the lock while the reader starts, so that it cannot finish before it is listed.
    let mut conns = shared.conns.lock().expect("conns lock");
    let reader = tokio::spawn(async move {
        let _ = read_frames(&reader_shared, read, remote, &reader_active).await;
        let mut conns = reader_shared.conns.lock().expect("conns lock");
        if conns
            .get(&remote)
            .is_some_and(|c| c.outbox.same_channel(&reader_tx))
        {
            conns.remove(&remote);
        }
    });
    if let Some(old) = conns.insert(
        remote,
        Conn {
            outbox: tx.clone(),
            last_active,
            reader: reader.abort_handle(),
        },
    ) {
        old.reader.abort();
    }
    drop(conns);
    tokio::spawn(write_frames(write, rx));
    tx
}

async fn read_frames(
    shared: &Shared,
    mut read: OwnedReadHalf,
    from: SocketAddr,
    last_active: &AtomicU64,
) -> io::Result<()> {
    let limit = shared.config.max_message.min(MAX_MESSAGE);
    let mut frames = FrameReader::new(&shared.spare, limit);
    loop {
        // Wait for the first byte of a frame up to the idle timeout; from then on the whole
        // frame (rest of the length, then the body) must arrive before one deadline.
        frames.at_boundary();
        if frames.buf.is_empty() {
            match tokio::time::timeout(shared.config.idle_timeout, frames.fill(&mut read, 1)).await
            {
                Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "idle connection")),
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()), // closed between frames
                Ok(r) => r?,
            }
        }
        let deadline = tokio::time::Instant::now() + shared.config.frame_timeout;
        let stalled = || io::Error::new(io::ErrorKind::TimedOut, "stalled frame");
        tokio::time::timeout_at(deadline, frames.fill(&mut read, 4))
            .await
            .map_err(|_| stalled())??;
        let b = &frames.buf;
        let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len == 0 || len > limit {
            // A frame we will never accept: the stream cannot be resynchronised.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad frame length",
            ));
        }
        tokio::time::timeout_at(deadline, frames.fill(&mut read, 4 + len))
            .await
            .map_err(|_| stalled())??;
        let msg = frames.take(len);
        last_active.store(shared.now_ms(), Ordering::Relaxed);
        if shared.inbox.send((from, msg)).await.is_err() {
            return Ok(()); // transport dropped
        }
    }
}

/// Bytes read per block.
const READ_BLOCK: usize = 256 * 1024;
/// Read blocks kept for reuse by all connections together (4 MiB).
const SPARE_BLOCKS: usize = 16;
/// Least a read may ask for at the start of a frame before a fresh block is taken.
const MIN_READ: usize = 16 * 1024;

/// Cuts a stream into frames read in large blocks and handed on as slices of them: no copy,
/// no zeroing, few syscalls. A frame still queued pins at most its block.
///
/// A read that may run past the current frame stops `tail` bytes short of the block's end,
/// `tail` being the largest frame (up to half a block): a frame that starts before that point
/// fits in the block, and the reads that complete it stop at its end. So a frame never
/// straddles two blocks and no byte is ever moved to a new block (frames larger than half a
/// block, on a transport configured for them, are the exception).
struct FrameReader<'a> {
    /// Unread bytes, at the end of the current block.
    buf: BytesMut,
    spare: &'a StdMutex<Vec<BytesMut>>,
    tail: usize,
    /// Size of the current block (a pooled one, or larger for an oversized frame).
    block: usize,
    /// Bytes moved to a new block (the exception above).
    moved: usize,
}

impl<'a> FrameReader<'a> {
    /// `limit`: the largest frame body accepted.
    fn new(spare: &'a StdMutex<Vec<BytesMut>>, limit: usize) -> Self {
        let mut reader = FrameReader {
            buf: BytesMut::new(),
            spare,
            tail: (4 + limit).min(READ_BLOCK / 2),
            block: 0,
            moved: 0,
        };
        reader.next_block(0);
        reader
    }

    /// At a frame boundary: takes a fresh block when this one has too little room left for
    /// a read, which costs nothing when no bytes of the next frame are in it yet.
    fn at_boundary(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() < self.tail + MIN_READ {
            self.next_block(0);
        }
    }

    /// Reads until `buf` holds at least `want` bytes.
    async fn fill<R: AsyncRead + Unpin>(&mut self, read: &mut R, want: usize) -> io::Result<()> {
        if want > self.buf.capacity() {
            self.next_block(want);
        }
        while self.buf.len() < want {
            let room = self.buf.capacity() - self.buf.len();
            let need = want - self.buf.len();
            let n = need.max(room.saturating_sub(self.tail)).min(room);
            if read.read_buf(&mut (&mut self.buf).limit(n)).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }

    /// The frame of `len` bytes after its 4-byte length, all of it in `buf`.
    fn take(&mut self, len: usize) -> Bytes {
        self.buf.advance(4);
        self.buf.split_to(len).freeze()
    }

    /// Moves the unread bytes to a fresh block of at least `at_least` bytes: a spare one no
    /// frame points into any more, or a new one. The old block becomes a spare (or is freed
    /// once its frames are, when there are spares enough).
    fn next_block(&mut self, at_least: usize) {
        let mut spare = self.spare.lock().expect("spare lock");
        let size = at_least.max(READ_BLOCK);
        let pooled = if size == READ_BLOCK {
            let reusable = spare.iter_mut().position(|b| b.try_reclaim(READ_BLOCK));
            reusable.map(|i| spare.swap_remove(i))
        } else {
            None
        };
        let mut next = pooled.unwrap_or_else(|| BytesMut::with_capacity(size));
        self.moved += self.buf.len();
        next.extend_from_slice(&self.buf);
        let mut old = std::mem::replace(&mut self.buf, next);
        old.clear();
        if self.block == READ_BLOCK && spare.len() < SPARE_BLOCKS {
            spare.push(old);
        }
        self.block = size;
    }
}

/// Frames this large skip the write buffer.
const LARGE_FRAME: usize = 32 * 1024;

async fn write_frames(write: OwnedWriteHalf, mut rx: mpsc::Receiver<Frame>) {
    let mut w = BufWriter::with_capacity(256 * 1024, write);
    while let Some(frame) = rx.recv().await {
        let mut next = Some(frame);
        while let Some(frame) = next.take() {
            let written = match frame {
                Frame::Message(m) => write_message(&mut w, &m).await,
                Frame::File { head, body } => match w.flush().await {
                    Ok(()) => write_file_frame(w.get_ref().as_ref(), &head, &body).await,
                    Err(e) => Err(e),
                },
            };
            if written.is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        // Flush only when nothing else is queued: large writes, no per-message flush.
        if w.flush().await.is_err() {
            return;
        }
    }
}

async fn write_message(w: &mut BufWriter<OwnedWriteHalf>, m: &[u8]) -> io::Result<()> {
    let header = (m.len() as u32).to_le_bytes();
    if m.len() >= LARGE_FRAME {
        // A large frame goes straight to the socket (one vectored write of length and
        // message), not through the buffer's copy.
        let mut frame = Buf::chain(&header[..], m);
        w.flush().await?;
        w.get_mut().write_all_buf(&mut frame).await
    } else {
        w.write_all(&header).await?;
        w.write_all(m).await
    }
}

/// Writes a frame of `head` and then `body`'s bytes, which `sendfile` hands from the page
/// cache to the socket without a copy through user space. The head goes with `MSG_MORE`, so
/// that it leaves in one segment with the payload.
async fn write_file_frame(stream: &TcpStream, head: &[u8], body: &FileRange) -> io::Result<()> {
    let mut prefix = Vec::with_capacity(4 + head.len());
    prefix.extend_from_slice(&((head.len() + body.len) as u32).to_le_bytes());
    prefix.extend_from_slice(head);
    // nix names no MSG_MORE; the kernel's value.
    let more = MsgFlags::from_bits_retain(nix::libc::MSG_MORE);
    send_all(stream, &prefix, more).await?;
    let mut offset = body.offset as nix::libc::off64_t;
    let mut left = body.len;
    while left > 0 {
        let sent = match when_writable(stream, || {
            sendfile64(stream, &*body.file, Some(&mut offset), left)
        })
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
                };
                let mut bytes = vec![0; left];
                rest.read_into(&mut bytes)?;
                return send_all(stream, &bytes, MsgFlags::empty()).await;
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

    /// Queues `msg` itself, without a copy.
    async fn send_owned(&self, to: SocketAddr, msg: Vec<u8>) -> io::Result<()> {
        self.check_size(msg.len())?;
        self.queue(to, Frame::Message(msg)).await
    }

    /// Queues `head` and the file range; the connection's writer sends the range with
    /// `sendfile`.
    async fn send_file(&self, to: SocketAddr, head: Vec<u8>, body: FileRange) -> io::Result<()> {
        self.check_size(head.len() + body.len)?;
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

    fn forget(&self, to: SocketAddr) {
        if let Some(c) = self.shared.conns.lock().expect("conns lock").remove(&to) {
            c.reader.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Gives at most the next of `sizes` bytes per read (cycling), like a socket that
    /// delivers a stream in arbitrary pieces.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        sizes: Vec<usize>,
        turn: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            out: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            let me = &mut *self;
            let size = me.sizes[me.turn % me.sizes.len()];
            me.turn += 1;
            let n = size.min(out.remaining()).min(me.data.len() - me.pos);
            out.put_slice(&me.data[me.pos..me.pos + n]);
            me.pos += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Frames of the given body sizes (each body's bytes tell its index and offset).
    fn framed(sizes: &[usize]) -> (Vec<Vec<u8>>, Vec<u8>) {
        let bodies: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 7 + j % 253) as u8).collect())
            .collect();
        let mut stream = Vec::new();
        for b in &bodies {
            stream.extend_from_slice(&(b.len() as u32).to_le_bytes());
            stream.extend_from_slice(b);
        }
        (bodies, stream)
    }

    /// Cuts `stream` into frames as the connection reader does: the frames, and the bytes
    /// moved between blocks.
    async fn cut(stream: Vec<u8>, reads: Vec<usize>, limit: usize) -> (Vec<Bytes>, usize) {
        let spare = StdMutex::new(Vec::new());
        let mut frames = FrameReader::new(&spare, limit);
        let total = stream.len();
        let mut src = Trickle {
            data: stream,
            pos: 0,
            sizes: reads,
            turn: 0,
        };
        let mut out = Vec::new();
        loop {
            frames.at_boundary();
            if frames.buf.is_empty() && src.pos == total {
                return (out, frames.moved);
            }
            frames.fill(&mut src, 4).await.unwrap();
            let b = &frames.buf;
            let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
            assert!(len <= limit);
            frames.fill(&mut src, 4 + len).await.unwrap();
            out.push(frames.take(len));
        }
    }

    #[tokio::test]
    async fn frames_never_straddle_read_blocks_so_no_byte_is_moved() {
        let limit = TcpConfig::default().max_message;
        // Full chunks, ACK-sized messages and odd sizes, over 40 blocks' worth.
        let pattern = [limit, 20, limit, limit - 1, 7, 1000, limit, 33_333, 1];
        let sizes: Vec<usize> = pattern.iter().cycle().take(300).copied().collect();
        let (bodies, stream) = framed(&sizes);
        // Reads as large as asked, reads of odd sizes, and one byte at a time now and then.
        for reads in [
            vec![usize::MAX],
            vec![70_001, 3, 65_536, 1, 200_000],
            vec![1, 4096],
        ] {
            let (got, moved) = cut(stream.clone(), reads.clone(), limit).await;
            assert_eq!(got.len(), bodies.len(), "reads {reads:?}");
            for (i, (g, b)) in got.iter().zip(&bodies).enumerate() {
                assert!(g[..] == b[..], "frame {i} differs (reads {reads:?})");
            }
            assert_eq!(moved, 0, "bytes moved between blocks (reads {reads:?})");
        }
    }

    #[tokio::test]
    async fn frames_larger_than_half_a_block_still_arrive_whole() {
        let limit = 600_000;
        let sizes = [200_000, 10, 590_000, 129_000, 600_000, 5];
        let (bodies, stream) = framed(&sizes);
        for reads in [vec![usize::MAX], vec![50_000, 1, 77_777]] {
            let (got, _) = cut(stream.clone(), reads, limit).await;
            assert_eq!(got.len(), bodies.len());
            for (g, b) in got.iter().zip(&bodies) {
                assert!(g[..] == b[..]);
            }
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
}
