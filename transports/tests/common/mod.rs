//! What the integration tests of the transports share: a tap under an endpoint's transport.

#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use p2p_core::transport::{FileRange, SharedTransport, Transport};

/// What a [`Tap`] saw: every message sent, with its destination.
pub type Seen = Arc<Mutex<Vec<(SocketAddr, Vec<u8>)>>>;

/// A transport that records every message sent through it (as anyone on the path would see
/// it) and passes everything on to `inner`.
pub struct Tap {
    pub inner: SharedTransport,
    pub seen: Seen,
}

impl Tap {
    fn record(&self, to: SocketAddr, msg: &[u8]) {
        self.seen.lock().unwrap().push((to, msg.to_vec()));
    }
}

/// The messages of `seen`, without their destinations.
pub fn messages(seen: &Seen) -> Vec<Vec<u8>> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(_, m)| m.clone())
        .collect()
}

#[async_trait]
impl Transport for Tap {
    async fn send_to(&self, to: SocketAddr, msg: &[u8]) -> io::Result<()> {
        self.record(to, msg);
        self.inner.send_to(to, msg).await
    }

    async fn send_to_ttl(&self, to: SocketAddr, msg: &[u8], ttl: u8) -> io::Result<()> {
        self.record(to, msg);
        self.inner.send_to_ttl(to, msg, ttl).await
    }

    fn send_room(&self, to: SocketAddr) -> usize {
        self.inner.send_room(to)
    }

    async fn send_owned(&self, to: SocketAddr, msg: Vec<u8>) -> io::Result<()> {
        self.record(to, &msg);
        self.inner.send_owned(to, msg).await
    }

    async fn send_file(&self, to: SocketAddr, head: Vec<u8>, body: FileRange) -> io::Result<()> {
        self.record(to, &body.after(head.clone())?);
        self.inner.send_file(to, head, body).await
    }

    fn sends_file(&self, to: SocketAddr, len: usize) -> bool {
        self.inner.sends_file(to, len)
    }

    fn max_batch(&self, to: SocketAddr, len: usize) -> usize {
        self.inner.max_batch(to, len)
    }

    async fn send_batch(&self, to: SocketAddr, msgs: &[u8], segment: usize) -> io::Result<()> {
        self.record(to, msgs);
        self.inner.send_batch(to, msgs, segment).await
    }

    async fn recv_from(&self) -> io::Result<(SocketAddr, Bytes)> {
        self.inner.recv_from().await
    }

    fn try_recv_from(&self) -> Option<(SocketAddr, Bytes)> {
        self.inner.try_recv_from()
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_message_size(&self) -> usize {
        self.inner.max_message_size()
    }

    fn max_message_size_to(&self, to: SocketAddr) -> usize {
        self.inner.max_message_size_to(to)
    }

    fn is_reliable(&self) -> bool {
        self.inner.is_reliable()
    }

    fn is_reliable_to(&self, to: SocketAddr) -> bool {
        self.inner.is_reliable_to(to)
    }

    async fn flush(&self, within: std::time::Duration) {
        self.inner.flush(within).await
    }

    fn forget(&self, to: SocketAddr) {
        self.inner.forget(to)
    }
}
