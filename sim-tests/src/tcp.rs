//! [`SimTcp`]: the [`Transport`] trait over turmoil's simulated TCP, with the real TCP
//! transport's framing ([`p2p_transports::framing`], the same code on turmoil's streams):
//! messages as length-prefixed frames on connections opened on demand and cached per remote
//! address; an accepted connection is cached under the remote's address too, so replies go
//! back on it. File frames (head, then a range of a file) are read and written through the
//! stream (turmoil has no `sendfile`).
//!
//! A frame length is checked against the limit (and `MAX_MESSAGE`) before anything is
//! allocated; connections beyond the cap are refused; a connection silent for `idle_timeout`
//! is closed, and a frame must arrive whole within `frame_timeout`.
//!
//! turmoil's TCP never re-sends: a segment dropped by a partition or a flapping link leaves
//! the stream stalled for good. Such a connection is noticed by its idle timeout (and by
//! [`SimTcpConfig::send_timeout`], see there) and replaced by a fresh one on the next send.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use p2p_core::transport::{FileRange, Transport};
use p2p_transports::framing::{
    check_size, flush_queues, write_frames, BlockPool, CopyFile, Frame, FrameReader,
    DEFAULT_MAX_MESSAGE,
};
use tokio::sync::{mpsc, Mutex};
use turmoil::net::tcp::OwnedReadHalf;
use turmoil::net::{TcpListener, TcpStream};

/// Settings of a [`SimTcp`].
#[derive(Clone, Debug)]
pub struct SimTcpConfig {
    /// Largest message carried.
    pub max_message: usize,
    /// Most open connections (accepted + opened).
    pub max_connections: usize,
    /// A connection that receives nothing this long is closed. Shorter than the real
    /// transport's 60 s: a turmoil stream that lost a segment stays silent for good, and this
    /// is how the transport notices and reconnects.
    pub idle_timeout: Duration,
    /// A frame whose first byte arrived must be complete within this long.
    pub frame_timeout: Duration,
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
    /// Longest a `send_to` waits for room in a connection's queue before it gives up on the
    /// connection (`None`: wait forever, like the real transport).
    pub send_timeout: Option<Duration>,
}

impl Default for SimTcpConfig {
    fn default() -> Self {
        SimTcpConfig {
            max_message: DEFAULT_MAX_MESSAGE,
            max_connections: 256,
            idle_timeout: Duration::from_secs(5),
            frame_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            send_timeout: Some(Duration::from_secs(1)),
        }
    }
}

type Outbox = mpsc::Sender<Frame>;

struct Shared {
    config: SimTcpConfig,
    conns: StdMutex<HashMap<SocketAddr, Outbox>>,
    inbox: mpsc::Sender<(SocketAddr, Bytes)>,
    /// Read blocks, shared by every connection.
    spare: BlockPool,
}

/// A turmoil TCP listener plus a connection cache, as a [`Transport`].
pub struct SimTcp {
    local: SocketAddr,
    shared: Arc<Shared>,
    inbox: Mutex<mpsc::Receiver<(SocketAddr, Bytes)>>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for SimTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimTcp")
            .field("local", &self.local)
            .finish()
    }
}

impl Drop for SimTcp {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.shared.conns.lock().expect("conns lock").clear();
    }
}

impl SimTcp {
    /// Listens on `addr` inside the current simulated host.
    pub async fn bind(addr: SocketAddr, config: SimTcpConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(4096);
        let shared = Arc::new(Shared {
            config,
            conns: StdMutex::new(HashMap::new()),
            inbox: tx,
            spare: BlockPool::default(),
        });
        let accept_shared = shared.clone();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((stream, remote)) = listener.accept().await else {
                    // Never spin: a busy loop would stop simulated time.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let full = accept_shared.conns.lock().expect("conns lock").len()
                    >= accept_shared.config.max_connections;
                if full {
                    drop(stream);
                    continue;
                }
                start_connection(&accept_shared, stream, remote);
            }
        });
        Ok(SimTcp {
            local,
            shared,
            inbox: Mutex::new(rx),
            accept_task,
        })
    }

    /// Queues `frame` for `to`, giving up on a connection that stopped draining (see
    /// [`SimTcpConfig::send_timeout`]).
    async fn queue(&self, to: SocketAddr, frame: Frame) -> io::Result<()> {
        let outbox = self.outbox(to).await?;
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "connection closed");
        match self.shared.config.send_timeout {
            None => outbox.send(frame).await.map_err(|_| closed()),
            Some(limit) => match tokio::time::timeout(limit, outbox.send(frame)).await {
                Ok(r) => r.map_err(|_| closed()),
                Err(_) => {
                    // The stream stopped draining (a dead turmoil connection): drop it so
                    // the next send opens a fresh one.
                    self.forget(to);
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection stalled",
                    ))
                }
            },
        }
    }

    async fn outbox(&self, to: SocketAddr) -> io::Result<Outbox> {
        if let Some(o) = self.shared.conns.lock().expect("conns lock").get(&to) {
            if !o.is_closed() {
                return Ok(o.clone());
            }
        }
        Ok(connect_in_background(&self.shared, to))
    }
}

/// As the real transport: the connection is listed at once and its frames wait while a task
/// connects; a peer that is gone costs its own frames, never the sender's time.
fn connect_in_background(shared: &Arc<Shared>, to: SocketAddr) -> Outbox {
    let (tx, rx) = mpsc::channel(256);
    shared
        .conns
        .lock()
        .expect("conns lock")
        .insert(to, tx.clone());
    let task_shared = shared.clone();
    let task_tx = tx.clone();
    tokio::spawn(async move {
        let timeout = task_shared.config.connect_timeout;
        match tokio::time::timeout(timeout, TcpStream::connect(to)).await {
            Ok(Ok(stream)) => run_connection(task_shared, stream, to, task_tx, rx).await,
            _ => forget_conn(&task_shared, to, &task_tx),
        }
    });
    tx
}

/// Removes the connection to `remote` if it is still the one of `outbox`.
fn forget_conn(shared: &Shared, remote: SocketAddr, outbox: &Outbox) {
    let mut conns = shared.conns.lock().expect("conns lock");
    if conns.get(&remote).is_some_and(|o| o.same_channel(outbox)) {
        conns.remove(&remote);
    }
}

/// Reads and writes an established connection until its reader ends.
async fn run_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    remote: SocketAddr,
    outbox: Outbox,
    rx: mpsc::Receiver<Frame>,
) {
    let (read, write) = stream.into_split();
    let writer = tokio::spawn(write_frames(write, rx, CopyFile));
    let _ = read_frames(&shared, read, remote).await;
    forget_conn(&shared, remote, &outbox);
    // A dead stream in turmoil never drains: stop writing on it too.
    writer.abort();
}

fn start_connection(shared: &Arc<Shared>, stream: TcpStream, remote: SocketAddr) -> Outbox {
    let (tx, rx) = mpsc::channel(256);
    shared
        .conns
        .lock()
        .expect("conns lock")
        .insert(remote, tx.clone());
    tokio::spawn(run_connection(
        shared.clone(),
        stream,
        remote,
        tx.clone(),
        rx,
    ));
    tx
}

async fn read_frames(shared: &Shared, mut read: OwnedReadHalf, from: SocketAddr) -> io::Result<()> {
    let config = &shared.config;
    let mut frames = FrameReader::new(&shared.spare, config.max_message);
    while let Some(msg) = frames
        .next(&mut read, config.idle_timeout, config.frame_timeout)
        .await?
    {
        if shared.inbox.send((from, msg)).await.is_err() {
            return Ok(()); // transport dropped
        }
    }
    Ok(())
}

#[async_trait]
impl Transport for SimTcp {
    async fn send_to(&self, to: SocketAddr, msg: &[u8]) -> io::Result<()> {
        self.send_owned(to, msg.to_vec()).await
    }

    /// Queues `msg` itself, without a copy.
    async fn send_owned(&self, to: SocketAddr, msg: Vec<u8>) -> io::Result<()> {
        check_size(msg.len(), self.shared.config.max_message)?;
        self.queue(to, Frame::Message(msg)).await
    }

    /// As the real transport: a [`Frame::Flushed`] marker behind each connection's queue.
    async fn flush(&self, within: std::time::Duration) {
        let outboxes: Vec<Outbox> = {
            let conns = self.shared.conns.lock().expect("conns lock");
            conns.values().cloned().collect()
        };
        flush_queues(outboxes, within).await;
    }

    /// Queues `head` and the file range as one file frame, as the real transport does; the
    /// connection's writer reads the range.
    async fn send_file(&self, to: SocketAddr, head: Vec<u8>, body: FileRange) -> io::Result<()> {
        check_size(head.len() + body.len, self.shared.config.max_message)?;
        self.queue(to, Frame::File { head, body }).await
    }

    /// Cancel-safe: `mpsc::Receiver::recv` is.
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
        self.shared.conns.lock().expect("conns lock").remove(&to);
    }
}
