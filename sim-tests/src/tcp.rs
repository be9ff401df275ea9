//! [`SimTcp`]: the [`Transport`] trait over turmoil's simulated TCP, mirroring the real TCP
//! transport: messages as length-prefixed frames (`u32` little-endian length, then the
//! message) on connections opened on demand and cached per remote address; an accepted
//! connection is cached under the remote's address too, so replies go back on it.
//!
//! A frame length is checked against the limit (and [`MAX_MESSAGE`]) before anything is
//! allocated; connections beyond the cap are refused; a connection silent for `idle_timeout`
//! is closed.
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
use p2p_core::transport::Transport;
use p2p_proto::wire::{DATA_OVERHEAD, MAX_MESSAGE};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, Mutex};
use turmoil::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
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
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
    /// Longest a `send_to` waits for room in a connection's queue before it gives up on the
    /// connection (`None`: wait forever, like the real transport).
    pub send_timeout: Option<Duration>,
}

impl Default for SimTcpConfig {
    fn default() -> Self {
        SimTcpConfig {
            max_message: 64 * 1024 + DATA_OVERHEAD,
            max_connections: 256,
            idle_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            send_timeout: Some(Duration::from_secs(1)),
        }
    }
}

type Outbox = mpsc::Sender<Vec<u8>>;

struct Shared {
    config: SimTcpConfig,
    conns: StdMutex<HashMap<SocketAddr, Outbox>>,
    inbox: mpsc::Sender<(SocketAddr, Vec<u8>)>,
}

/// A turmoil TCP listener plus a connection cache, as a [`Transport`].
pub struct SimTcp {
    local: SocketAddr,
    shared: Arc<Shared>,
    inbox: Mutex<mpsc::Receiver<(SocketAddr, Vec<u8>)>>,
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

    async fn outbox(&self, to: SocketAddr) -> io::Result<Outbox> {
        if let Some(o) = self.shared.conns.lock().expect("conns lock").get(&to) {
            if !o.is_closed() {
                return Ok(o.clone());
            }
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
    let (read, write) = stream.into_split();
    let (tx, rx) = mpsc::channel(256);
    shared
        .conns
        .lock()
        .expect("conns lock")
        .insert(remote, tx.clone());
    let reader_shared = shared.clone();
    let reader_tx = tx.clone();
    let writer = tokio::spawn(write_frames(write, rx));
    tokio::spawn(async move {
        let _ = read_frames(&reader_shared, read, remote).await;
        let mut conns = reader_shared.conns.lock().expect("conns lock");
        if conns
            .get(&remote)
            .is_some_and(|o| o.same_channel(&reader_tx))
        {
            conns.remove(&remote);
        }
        drop(conns);
        // A dead stream in turmoil never drains: stop writing on it too.
        writer.abort();
    });
    tx
}

async fn read_frames(shared: &Shared, mut read: OwnedReadHalf, from: SocketAddr) -> io::Result<()> {
    let limit = shared.config.max_message.min(MAX_MESSAGE);
    loop {
        let mut len = [0u8; 4];
        tokio::time::timeout(shared.config.idle_timeout, read.read_exact(&mut len))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "idle connection"))??;
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 || len > limit {
            // A frame we will never accept: the stream cannot be resynchronised.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad frame length",
            ));
        }
        let mut msg = vec![0; len];
        tokio::time::timeout(shared.config.idle_timeout, read.read_exact(&mut msg))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "stalled frame"))??;
        if shared.inbox.send((from, msg)).await.is_err() {
            return Ok(()); // transport dropped
        }
    }
}

async fn write_frames(write: OwnedWriteHalf, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut w = BufWriter::with_capacity(256 * 1024, write);
    while let Some(msg) = rx.recv().await {
        let mut batch = Some(msg);
        while let Some(m) = batch.take() {
            if w.write_all(&(m.len() as u32).to_le_bytes()).await.is_err()
                || w.write_all(&m).await.is_err()
            {
                return;
            }
            batch = rx.try_recv().ok();
        }
        // Flush only when nothing else is queued.
        if w.flush().await.is_err() {
            return;
        }
    }
}

#[async_trait]
impl Transport for SimTcp {
    async fn send_to(&self, to: SocketAddr, msg: &[u8]) -> io::Result<()> {
        if msg.len() > self.shared.config.max_message {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("message of {} bytes exceeds the frame limit", msg.len()),
            ));
        }
        let outbox = self.outbox(to).await?;
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "connection closed");
        match self.shared.config.send_timeout {
            None => outbox.send(msg.to_vec()).await.map_err(|_| closed()),
            Some(limit) => match tokio::time::timeout(limit, outbox.send(msg.to_vec())).await {
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

    /// Cancel-safe: `mpsc::Receiver::recv` is.
    async fn recv_from(&self) -> io::Result<(SocketAddr, Bytes)> {
        self.inbox
            .lock()
            .await
            .recv()
            .await
            .map(|(from, msg)| (from, Bytes::from(msg)))
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "transport closed"))
    }

    fn try_recv_from(&self) -> Option<(SocketAddr, Bytes)> {
        let (from, msg) = self.inbox.try_lock().ok()?.try_recv().ok()?;
        Some((from, Bytes::from(msg)))
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
