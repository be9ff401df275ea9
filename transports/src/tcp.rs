//! TCP: messages as length-prefixed frames (`u32` little-endian length, then the message) on
//! connections opened on demand and cached per remote address. An accepted connection is
//! cached under the remote's address too, so replies go back on it.
//!
//! A frame length is checked against the limit before anything is allocated; connections
//! beyond the cap are refused; a connection silent for `idle_timeout` is closed.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use p2p_core::transport::Transport;
use p2p_core::wire::{DATA_OVERHEAD, MAX_MESSAGE};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
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
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            max_message: 64 * 1024 + DATA_OVERHEAD,
            max_connections: 256,
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

type Outbox = mpsc::Sender<Vec<u8>>;

struct Shared {
    config: TcpConfig,
    conns: StdMutex<HashMap<SocketAddr, Outbox>>,
    inbox: mpsc::Sender<(SocketAddr, Vec<u8>)>,
}

/// A TCP listener plus a connection cache, as a [`Transport`].
pub struct TcpTransport {
    local: SocketAddr,
    shared: Arc<Shared>,
    inbox: Mutex<mpsc::Receiver<(SocketAddr, Vec<u8>)>>,
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
        self.shared.conns.lock().expect("conns lock").clear();
    }
}

impl TcpTransport {
    /// Listens on `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr, config: TcpConfig) -> io::Result<Self> {
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
                    continue;
                };
                let full = accept_shared.conns.lock().expect("conns lock").len()
                    >= accept_shared.config.max_connections;
                if full {
                    tracing::debug!(%remote, "connection refused: cap reached");
                    drop(stream);
                    continue;
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
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let (tx, rx) = mpsc::channel(256);
    shared
        .conns
        .lock()
        .expect("conns lock")
        .insert(remote, tx.clone());
    let reader_shared = shared.clone();
    let reader_tx = tx.clone();
    tokio::spawn(async move {
        let _ = read_frames(&reader_shared, read, remote).await;
        let mut conns = reader_shared.conns.lock().expect("conns lock");
        if conns
            .get(&remote)
            .is_some_and(|o| o.same_channel(&reader_tx))
        {
            conns.remove(&remote);
        }
    });
    tokio::spawn(write_frames(write, rx));
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
        // Flush only when nothing else is queued: large writes, no per-message flush.
        if w.flush().await.is_err() {
            return;
        }
    }
}

#[async_trait]
impl Transport for TcpTransport {
    async fn send_to(&self, to: SocketAddr, msg: &[u8]) -> io::Result<()> {
        if msg.len() > self.shared.config.max_message {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("message of {} bytes exceeds the frame limit", msg.len()),
            ));
        }
        let outbox = self.outbox(to).await?;
        outbox
            .send(msg.to_vec())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "connection closed"))
    }

    async fn recv_from(&self) -> io::Result<(SocketAddr, Vec<u8>)> {
        self.inbox
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "transport closed"))
    }

    fn try_recv_from(&self) -> Option<(SocketAddr, Vec<u8>)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_cross_and_replies_use_the_same_connection() {
        let a = TcpTransport::bind("127.0.0.1:0".parse().unwrap(), TcpConfig::default())
            .await
            .unwrap();
        let b = TcpTransport::bind("127.0.0.1:0".parse().unwrap(), TcpConfig::default())
            .await
            .unwrap();
        a.send_to(b.local_addr().unwrap(), b"hello").await.unwrap();
        let (from, msg) = b.recv_from().await.unwrap();
        assert_eq!(msg, b"hello");
        b.send_to(from, b"back").await.unwrap();
        let (from_b, msg) = a.recv_from().await.unwrap();
        assert_eq!(msg, b"back");
        assert_eq!(from_b, b.local_addr().unwrap());
    }

    #[tokio::test]
    async fn oversized_frame_header_closes_the_connection_without_allocating() {
        let a = TcpTransport::bind("127.0.0.1:0".parse().unwrap(), TcpConfig::default())
            .await
            .unwrap();
        let mut s = TcpStream::connect(a.local_addr().unwrap()).await.unwrap();
        s.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        let mut buf = [0u8; 1];
        // The transport closes the connection: read sees EOF (or a reset).
        let n = s.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0);
    }
}
