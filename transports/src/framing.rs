//! The TCP framing, on any `tokio::io` stream: messages as length-prefixed frames (`u32`
//! little-endian length, then the message). [`TcpTransport`](crate::TcpTransport) runs it on
//! `tokio::net::TcpStream`, the simulations (`p2p-sim-tests`) on turmoil's TCP streams.
//!
//! - [`FrameReader`] cuts a stream into frames: the length is checked against the limit
//!   (never above [`MAX_MESSAGE`]) before anything is allocated, the first byte of a frame
//!   must come within the idle timeout and the whole frame within the frame timeout;
//! - [`write_frames`] drains a connection's queue of [`Frame`]s: whole messages, and file
//!   frames (a head, then a range of a file) that a [`FileSender`] writes: [`CopyFile`] reads
//!   the range and writes it through the stream, the real transport sends it from the page
//!   cache (`sendfile`);
//! - [`check_size`] refuses a message too large for a frame before it is queued.

use std::future::Future;
use std::io;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use p2p_core::transport::FileRange;
use p2p_proto::wire::{DATA_OVERHEAD, MAX_MESSAGE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

/// The default largest message: a 64 KiB chunk and its envelope.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024 + DATA_OVERHEAD;

/// Refuses (`InvalidInput`) a message of `len` bytes when it exceeds `max_message`.
pub fn check_size(len: usize, max_message: usize) -> io::Result<()> {
    if len > max_message {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message of {len} bytes exceeds the frame limit"),
        ));
    }
    Ok(())
}

/// The 4-byte length that starts a frame of `len` bytes.
fn frame_header(len: usize) -> [u8; 4] {
    (len as u32).to_le_bytes()
}

/// One frame queued for a connection.
#[derive(Debug)]
pub enum Frame {
    /// A whole message.
    Message(Vec<u8>),
    /// A message head, then bytes of a file (zeros past its end).
    File {
        /// The head.
        head: Vec<u8>,
        /// The payload.
        body: FileRange,
    },
    /// Nothing to send: the writer answers once every frame queued before it is written to
    /// the stream (a flush before the process exits).
    Flushed(tokio::sync::oneshot::Sender<()>),
}

/// Bytes read per block.
const READ_BLOCK: usize = 256 * 1024;
/// Read blocks kept for reuse by all connections together (4 MiB).
const SPARE_BLOCKS: usize = 16;
/// Least a read may ask for at the start of a frame before a fresh block is taken.
const MIN_READ: usize = 16 * 1024;

/// Read blocks given up while frames in them were still held (queued, being written or
/// hashed), shared by every connection of a transport: reused once those frames are gone,
/// instead of going back to the allocator (which returned them to the kernel, to be faulted
/// in again). At most 16 blocks, whatever the number of connections.
#[derive(Debug, Default)]
pub struct BlockPool(StdMutex<Vec<BytesMut>>);

/// Cuts a stream into frames read in large blocks and handed on as slices of them: no copy,
/// no zeroing, few syscalls. A frame still queued pins at most its block.
///
/// A read that may run past the current frame stops `tail` bytes short of the block's end,
/// `tail` being the largest frame (up to half a block): a frame that starts before that point
/// fits in the block, and the reads that complete it stop at its end. So a frame never
/// straddles two blocks and no byte is ever moved to a new block (frames larger than half a
/// block, on a transport configured for them, are the exception).
#[derive(Debug)]
pub struct FrameReader<'a> {
    /// Unread bytes, at the end of the current block.
    buf: BytesMut,
    spare: &'a BlockPool,
    /// The largest frame body accepted.
    limit: usize,
    tail: usize,
    /// Size of the current block (a pooled one, or larger for an oversized frame).
    block: usize,
    /// Bytes moved to a new block (the exception above).
    moved: usize,
}

impl<'a> FrameReader<'a> {
    /// A reader of frames up to `max_message` bytes (and never above [`MAX_MESSAGE`]), its
    /// blocks taken from and given back to `spare`.
    pub fn new(spare: &'a BlockPool, max_message: usize) -> Self {
        Self::with_limit(spare, max_message.min(MAX_MESSAGE))
    }

    /// `limit`: the largest frame body accepted.
    fn with_limit(spare: &'a BlockPool, limit: usize) -> Self {
        let mut reader = FrameReader {
            buf: BytesMut::new(),
            spare,
            limit,
            tail: (4 + limit).min(READ_BLOCK / 2),
            block: 0,
            moved: 0,
        };
        reader.next_block(0);
        reader
    }

    /// The next frame's message; `None` when the stream ends between frames.
    ///
    /// Waits for the first byte of a frame up to `idle_timeout`; from then on the whole
    /// frame (rest of the length, then the body) must arrive within `frame_timeout`. A length
    /// of 0 or above the limit is `InvalidData`: the stream cannot be resynchronised.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        read: &mut R,
        idle_timeout: Duration,
        frame_timeout: Duration,
    ) -> io::Result<Option<Bytes>> {
        self.at_boundary();
        if self.buf.is_empty() {
            match tokio::time::timeout(idle_timeout, self.fill(read, 1)).await {
                Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "idle connection")),
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Ok(r) => r?,
            }
        }
        let deadline = tokio::time::Instant::now() + frame_timeout;
        let stalled = || io::Error::new(io::ErrorKind::TimedOut, "stalled frame");
        tokio::time::timeout_at(deadline, self.fill(read, 4))
            .await
            .map_err(|_| stalled())??;
        let b = &self.buf;
        let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len == 0 || len > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad frame length",
            ));
        }
        tokio::time::timeout_at(deadline, self.fill(read, 4 + len))
            .await
            .map_err(|_| stalled())??;
        Ok(Some(self.take(len)))
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
        let mut spare = self.spare.0.lock().expect("spare lock");
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

/// Writes the file frames of a connection whose write half is a `W`.
pub trait FileSender<W>: Send {
    /// Writes the frame of `head` and then `body`'s bytes (zeros past the end of the file)
    /// to `w`, in which earlier frames may still be buffered.
    fn send_file(
        &mut self,
        w: &mut BufWriter<W>,
        head: &[u8],
        body: &FileRange,
    ) -> impl Future<Output = io::Result<()>> + Send;
}

/// The length and head of the frame of `head` and `body`: what goes before the file's
/// bytes.
pub fn file_frame_prefix(head: &[u8], body: &FileRange) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(4 + head.len());
    prefix.extend_from_slice(&frame_header(head.len() + body.len));
    prefix.extend_from_slice(head);
    prefix
}

/// A [`FileSender`] for any stream: reads the range and writes the frame like a message.
#[derive(Clone, Copy, Debug, Default)]
pub struct CopyFile;

impl<W: AsyncWrite + Unpin + Send> FileSender<W> for CopyFile {
    async fn send_file(
        &mut self,
        w: &mut BufWriter<W>,
        head: &[u8],
        body: &FileRange,
    ) -> io::Result<()> {
        // A failed read is the upload's to handle (it aborts): the frame is skipped.
        match body.after(file_frame_prefix(head, body)) {
            Ok(frame) => write_framed(w, &frame).await,
            Err(_) => Ok(()),
        }
    }
}

/// Frames this large skip the write buffer.
const LARGE_FRAME: usize = 32 * 1024;
/// Bytes buffered by a connection's writer.
const WRITE_BUFFER: usize = 256 * 1024;

/// Writes the frames queued in `rx` to `write` until the queue closes or a write fails: small
/// frames gathered in a buffer flushed only when nothing else is queued, large ones straight
/// to the stream, file frames by `files`.
pub async fn write_frames<W, F>(write: W, mut rx: mpsc::Receiver<Frame>, mut files: F)
where
    W: AsyncWrite + Unpin + Send,
    F: FileSender<W>,
{
    let mut w = BufWriter::with_capacity(WRITE_BUFFER, write);
    while let Some(frame) = rx.recv().await {
        let mut next = Some(frame);
        while let Some(frame) = next.take() {
            let written = match frame {
                Frame::Message(m) => write_message(&mut w, &m).await,
                Frame::File { head, body } => files.send_file(&mut w, &head, &body).await,
                Frame::Flushed(done) => {
                    let flushed = w.flush().await;
                    let _ = done.send(());
                    flushed
                }
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

/// Queues a [`Frame::Flushed`] marker behind each of `queues` and waits until their writers
/// reach them, `within` in all (a queue whose writer is gone answers at once).
pub async fn flush_queues(queues: Vec<mpsc::Sender<Frame>>, within: std::time::Duration) {
    let mut waits = tokio::task::JoinSet::new();
    for queue in queues {
        waits.spawn(async move {
            let (done, flushed) = tokio::sync::oneshot::channel();
            if queue.send(Frame::Flushed(done)).await.is_ok() {
                let _ = flushed.await;
            }
        });
    }
    let _ =
        tokio::time::timeout(within, async { while waits.join_next().await.is_some() {} }).await;
}

/// Writes the frame of message `m`.
async fn write_message<W: AsyncWrite + Unpin>(w: &mut BufWriter<W>, m: &[u8]) -> io::Result<()> {
    let header = frame_header(m.len());
    if m.len() >= LARGE_FRAME {
        // A large frame goes straight to the stream (one vectored write of length and
        // message), not through the buffer's copy.
        let mut frame = Buf::chain(&header[..], m);
        w.flush().await?;
        w.get_mut().write_all_buf(&mut frame).await
    } else {
        w.write_all(&header).await?;
        w.write_all(m).await
    }
}

/// Writes `frame`, which already starts with its length.
async fn write_framed<W: AsyncWrite + Unpin>(w: &mut BufWriter<W>, frame: &[u8]) -> io::Result<()> {
    if frame.len() >= LARGE_FRAME {
        w.flush().await?;
        w.get_mut().write_all(frame).await
    } else {
        w.write_all(frame).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

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

    const LONG: Duration = Duration::from_secs(60);

    /// Cuts `stream` into frames as the connection reader does: the frames, and the bytes
    /// moved between blocks.
    async fn cut(stream: Vec<u8>, reads: Vec<usize>, limit: usize) -> (Vec<Bytes>, usize) {
        let spare = BlockPool::default();
        let mut frames = FrameReader::with_limit(&spare, limit);
        let mut src = Trickle {
            data: stream,
            pos: 0,
            sizes: reads,
            turn: 0,
        };
        let mut out = Vec::new();
        while let Some(frame) = frames.next(&mut src, LONG, LONG).await.unwrap() {
            out.push(frame);
        }
        (out, frames.moved)
    }

    #[tokio::test]
    async fn frames_never_straddle_read_blocks_so_no_byte_is_moved() {
        let limit = DEFAULT_MAX_MESSAGE;
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
    async fn bad_lengths_and_cut_frames_are_errors_before_any_allocation() {
        let spare = &BlockPool::default();
        let next = move |bytes: Vec<u8>| async move {
            let mut src = Trickle {
                data: bytes,
                pos: 0,
                sizes: vec![usize::MAX],
                turn: 0,
            };
            let mut frames = FrameReader::new(spare, usize::MAX);
            frames.next(&mut src, LONG, LONG).await
        };
        // The limit is never above MAX_MESSAGE, whatever the configured size.
        for len in [0, MAX_MESSAGE as u32 + 1, u32::MAX] {
            let err = next(len.to_le_bytes().to_vec()).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "length {len}");
        }
        // The stream ends inside a length, or inside a body.
        let err = next(vec![5, 0]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let err = next(vec![5, 0, 0, 0, 1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(next(vec![]).await.unwrap(), None);
        assert_eq!(
            check_size(10, 9).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(check_size(9, 9).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_is_idle_and_a_partial_frame_is_stalled() {
        let spare = BlockPool::default();
        let (mut tx, mut rx) = tokio::io::duplex(1024);
        let mut frames = FrameReader::new(&spare, DEFAULT_MAX_MESSAGE);
        let idle = Duration::from_secs(60);
        let frame = Duration::from_secs(10);
        let err = frames.next(&mut rx, idle, frame).await.unwrap_err();
        assert_eq!(err.to_string(), "idle connection");
        tx.write_all(&[3, 0, 0, 0, 1]).await.unwrap();
        let err = frames.next(&mut rx, idle, frame).await.unwrap_err();
        assert_eq!(err.to_string(), "stalled frame");
    }

    #[tokio::test]
    async fn written_messages_and_file_frames_read_back_in_order() {
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), &content).unwrap();
        let file = Arc::new(std::fs::File::open(dir.path().join("f")).unwrap());
        let range = |offset: u64, len: usize| FileRange {
            file: file.clone(),
            offset,
            len,
            on_read_error: None,
        };
        let (queue, rx) = mpsc::channel(64);
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(write_frames(a, rx, CopyFile));
        let big = vec![9u8; 60_000];
        let frames = [
            Frame::Message(b"small".to_vec()),
            Frame::File {
                head: b"head".to_vec(),
                body: range(10, 50_000),
            },
            Frame::Message(big.clone()),
            // A file that shrank: zeros complete the frame.
            Frame::File {
                head: b"tail".to_vec(),
                body: range(99_990, 20),
            },
            Frame::File {
                head: b"h".to_vec(),
                body: range(0, 3),
            },
        ];
        for f in frames {
            queue.send(f).await.unwrap();
        }
        drop(queue);
        let expect = [
            b"small".to_vec(),
            [&b"head"[..], &content[10..50_010]].concat(),
            big,
            [&b"tail"[..], &content[99_990..], &[0; 10][..]].concat(),
            [&b"h"[..], &content[..3]].concat(),
        ];
        let spare = BlockPool::default();
        let mut reader = FrameReader::new(&spare, DEFAULT_MAX_MESSAGE);
        for want in expect {
            let got = reader.next(&mut b, LONG, LONG).await.unwrap().unwrap();
            assert!(got[..] == want[..], "frame of {} bytes differs", want.len());
        }
        writer.await.unwrap();
        assert_eq!(reader.next(&mut b, LONG, LONG).await.unwrap(), None);
    }
}
