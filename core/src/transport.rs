//! The `Transport` trait: a message-oriented channel that every service runs on.
//!
//! Implementations: UDP and TCP in `p2p-transports`, turmoil's simulated network and the
//! fault-injecting wrapper in `p2p-sim-tests`. The core never opens a socket itself.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::service::storage::FileHandle;

/// Frames of a stream transport's queue to one peer that chunks may take (64 KiB chunks:
/// 4 MiB); the queue holds [`CONTROL_FRAMES`] more, for control messages only.
pub const CHUNK_FRAMES: usize = 64;
/// Frames of a stream transport's queue kept for control messages (answers, ACKs, requests):
/// a chunk is queued only while more than this many are free.
pub const CONTROL_FRAMES: usize = 128;

/// A message-oriented transport: whole messages in, whole messages out.
///
/// `recv_from` must be cancel-safe (services call it inside `tokio::select!`).
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Sends one whole message to `to`. Messages larger than [`Transport::max_message_size`]
    /// are refused with `InvalidInput`.
    async fn send_to(&self, to: SocketAddr, msg: &[u8]) -> io::Result<()>;

    /// [`send_to`](Self::send_to) with the IP TTL (hop limit) `ttl` on this one message: a
    /// hole-punching probe that opens our own NAT and dies before the other side's. The
    /// default sends it with the usual TTL (a transport without hops, or that cannot).
    async fn send_to_ttl(&self, to: SocketAddr, msg: &[u8], ttl: u8) -> io::Result<()> {
        let _ = ttl;
        self.send_to(to, msg).await
    }

    /// How many messages `to` takes now without [`send_to`](Self::send_to) waiting (a
    /// stream transport's queue for that peer; unbounded for a datagram socket, whose sends
    /// never wait on one peer). A sender of many chunks to many peers skips, for now, a peer
    /// with no room, instead of waiting on it while the others starve.
    fn send_room(&self, _to: SocketAddr) -> usize {
        usize::MAX
    }

    /// Whether a chunk may be queued for `to` now: while more than the room kept for
    /// control messages is free ([`CHUNK_FRAMES`] of a stream's queue are for chunks).
    fn chunk_room(&self, to: SocketAddr) -> bool {
        self.send_room(to) > CONTROL_FRAMES
    }

    /// [`send_to`](Self::send_to) of a message the caller gives away, which a transport that
    /// queues messages (TCP) keeps instead of copying.
    async fn send_owned(&self, to: SocketAddr, msg: Vec<u8>) -> io::Result<()> {
        self.send_to(to, &msg).await
    }

    /// Sends `head` followed by the bytes of `body` as one message to `to`: how the endpoint
    /// sends the chunks [`sends_file`](Self::sends_file) picks, whose heads
    /// ([`Message::encode_data_head`](crate::wire::Message::encode_data_head)) leave the
    /// payload out of the envelope's checksum. This default reads the range into the message;
    /// TCP and UDP override it to send the range from the page cache (`sendfile`). If the
    /// file has become shorter than the range, the missing bytes go as zeros (or, on UDP, the
    /// datagram may go short and be dropped as malformed), which the receiver's piece check
    /// rejects: a file that changes while it is sent never passes for the listed one. A
    /// failed read of the file is an error that [`FileReadError::is`] recognises.
    async fn send_file(&self, to: SocketAddr, head: Vec<u8>, body: FileRange) -> io::Result<()> {
        let msg = body.after(head)?;
        self.send_owned(to, msg).await
    }

    /// True when a chunk of `len` payload bytes to `to` should go through
    /// [`send_file`](Self::send_file), its payload left out of the envelope's checksum (the
    /// receiver's piece hashes check it), rather than be read into a checksummed datagram.
    /// By default only on reliable transports, which checksum what they carry; UDP also for
    /// large chunks to a loopback address, where copying them costs more than the system
    /// calls saved by batching, and nothing corrupts a datagram.
    fn sends_file(&self, _to: SocketAddr, _len: usize) -> bool {
        self.is_reliable()
    }

    /// Most messages of `len` bytes one [`send_batch`](Self::send_batch) takes (1: the
    /// transport does not batch).
    fn max_batch(&self, _to: SocketAddr, _len: usize) -> usize {
        1
    }

    /// Sends `msgs`, consecutive messages of `segment` bytes each (the last may be shorter),
    /// to `to`: in one system call where the transport can (UDP segmentation offload), one by
    /// one otherwise.
    async fn send_batch(&self, to: SocketAddr, msgs: &[u8], segment: usize) -> io::Result<()> {
        send_each(self, to, msgs, segment).await
    }

    /// Waits for the next whole message and the address it came from.
    async fn recv_from(&self) -> io::Result<(SocketAddr, Bytes)>;

    /// Returns a message that is already waiting, without blocking; `None` when there is none
    /// (or the transport cannot tell). Lets a service drain a burst before it answers.
    fn try_recv_from(&self) -> Option<(SocketAddr, Bytes)> {
        None
    }

    /// The address this transport listens on.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Largest message this transport carries whole.
    fn max_message_size(&self) -> usize;

    /// Largest message worth sending to `to`: a transport may allow more on paths it knows
    /// to be wide (UDP to a loopback address carries 64 KiB datagrams unfragmented).
    fn max_message_size_to(&self, _to: SocketAddr) -> usize {
        self.max_message_size()
    }

    /// True when the transport itself delivers messages reliably and in order (TCP); the
    /// sender may then skip congestion control and retransmission timers, while ACK/FIN still
    /// confirm delivery end to end.
    fn is_reliable(&self) -> bool {
        false
    }

    /// [`is_reliable`](Self::is_reliable) for messages to `to`: a transport that carries some
    /// destinations over a lossy hop (a relay) says so here.
    fn is_reliable_to(&self, _to: SocketAddr) -> bool {
        self.is_reliable()
    }

    /// Closes every connection to `to` that this transport caches (no-op for datagrams).
    fn forget(&self, _to: SocketAddr) {}

    /// Waits until every message sent so far has been handed to the operating system, or
    /// `within` has passed. A datagram is handed over by `send_to` itself (no-op); a stream
    /// transport queues messages for its connections' writers, and a process that exits
    /// right after its last `send_to` (a `get` answering its sender's FIN) would take them
    /// along unsent.
    async fn flush(&self, _within: std::time::Duration) {}
}

/// Sends `msgs`, consecutive messages of `segment` bytes each (the last may be shorter), one
/// by one: [`Transport::send_batch`] without segmentation offload.
pub async fn send_each<T: Transport + ?Sized>(
    transport: &T,
    to: SocketAddr,
    msgs: &[u8],
    segment: usize,
) -> io::Result<()> {
    for msg in msgs.chunks(segment.max(1)) {
        transport.send_to(to, msg).await?;
    }
    Ok(())
}

/// Called when a [`FileRange`] cannot be read.
pub type OnReadError = Arc<dyn Fn() + Send + Sync>;

/// A byte range of an open file: the payload of a chunk, for [`Transport::send_file`].
#[derive(Clone)]
pub struct FileRange {
    /// The file, shared with the upload that reads it.
    pub file: FileHandle,
    /// First byte.
    pub offset: u64,
    /// Bytes.
    pub len: usize,
    /// Called when the range cannot be read (see [`FileRange::read_failed`]), so that the
    /// upload hears of a failure inside a transport that sends the range later (TCP queues
    /// it for its connection's writer).
    pub on_read_error: Option<OnReadError>,
}

impl fmt::Debug for FileRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileRange")
            .field("file", &self.file)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl FileRange {
    /// `head` followed by the range's bytes (zeros past the end of the file): the message
    /// [`Transport::send_file`] sends, read into memory. On a failed read (reported to
    /// [`on_read_error`](Self::on_read_error)), a transport that queued the range skips the
    /// message: the stream stays whole for the `Abort` the upload sends next.
    pub fn after(&self, head: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut msg = head;
        let at = msg.len();
        msg.resize(at + self.len, 0);
        self.read_into(&mut msg[at..])?;
        Ok(msg)
    }

    /// Reads the range into `into` (`len` bytes); past the end of the file, `into` keeps its
    /// zeros. A failure is a [`FileReadError`].
    pub fn read_into(&self, into: &mut [u8]) -> io::Result<()> {
        self.file.read_into(into, self.offset).map_err(|e| {
            self.read_failed();
            FileReadError::wrap(e)
        })
    }

    /// Records that the range could not be read (a transport that reads it by other means,
    /// `sendfile`, calls this on a disk error).
    pub fn read_failed(&self) {
        if let Some(call) = &self.on_read_error {
            call();
        }
    }
}

/// A [`FileRange`] that could not be read: the disk failed, not the network. The sender
/// then ends the transfer (the chunk will never go) instead of waiting for the receiver to
/// time out.
#[derive(Debug)]
pub struct FileReadError(pub io::Error);

impl FileReadError {
    /// `e`, marked as a failed file read (same kind).
    pub fn wrap(e: io::Error) -> io::Error {
        io::Error::new(e.kind(), FileReadError(e))
    }

    /// Whether `e` is a failed file read.
    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<FileReadError>())
    }
}

impl fmt::Display for FileReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot read the file: {}", self.0)
    }
}

impl std::error::Error for FileReadError {}

/// A shared, type-erased transport.
pub type SharedTransport = Arc<dyn Transport>;
