//! Peers reached through a relay: a [`Transport`] wrapper that makes a relayed peer look like
//! any other address to the endpoint above it.
//!
//! When no direct or punched path reaches a peer (a symmetric NAT, UDP blocked, a TCP peer
//! behind a NAT), a client asks the tracker to relay (`RelayOpen`, answered with a session
//! id). Every datagram of the session then travels wrapped as `Relayed { session, payload }`
//! to the tracker, which forwards it, byte for byte, to the other end; the other end's answers
//! come back the same way. This wrapper does the wrapping: each session gets a **virtual
//! address** (`[fd72:656c:6179::N]:1`, a unique-local IPv6 address no real peer has) that the
//! endpoint uses as the peer's address; a send to it is wrapped and goes to the relay, and a
//! `Relayed` datagram from the relay is unwrapped and handed up as coming from it. Everything
//! above (tokens, rate limits, transfers, congestion control) runs unchanged, end to end.
//!
//! Which relayed datagrams are taken: on the side that opened a session, those of that session
//! from that relay; on the relayed peer's side, those from a relay it allowed (the trackers
//! it registered with, see [`RelayTransport::allow`]), whatever the session (it learns of a
//! session from its first datagram). The table of sessions is bounded
//! ([`MAX_RELAY_SESSIONS`]): the oldest session is forgotten first.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;

use crate::transport::{FileRange, SharedTransport, Transport};
use crate::wire::{decode_bytes, is_relayed, Message, RELAY_OVERHEAD};

/// Most relay sessions one endpoint keeps.
pub const MAX_RELAY_SESSIONS: usize = 1024;

/// The first 64 bits of every virtual address ("relay" in ASCII after `fd`: unique-local).
const VIRTUAL_PREFIX: [u16; 4] = [0xfd72, 0x656c, 0x6179, 0];
/// The port of every virtual address.
const VIRTUAL_PORT: u16 = 1;

/// Whether `addr` is the virtual address of a relayed peer.
pub fn is_virtual(addr: SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V6(ip) => ip.segments()[..4] == VIRTUAL_PREFIX,
        IpAddr::V4(_) => false,
    }
}

/// The virtual address of session number `n`.
fn virtual_addr(n: u64) -> SocketAddr {
    let p = VIRTUAL_PREFIX;
    let ip = Ipv6Addr::new(
        p[0],
        p[1],
        p[2],
        p[3],
        (n >> 48) as u16,
        (n >> 32) as u16,
        (n >> 16) as u16,
        n as u16,
    );
    SocketAddr::new(ip.into(), VIRTUAL_PORT)
}

/// The sessions known: each one's virtual address, its relay and id.
#[derive(Default)]
struct Sessions {
    by_virtual: HashMap<SocketAddr, (SocketAddr, u64)>,
    by_session: HashMap<(SocketAddr, u64), SocketAddr>,
    /// Oldest first, for eviction.
    order: VecDeque<SocketAddr>,
    /// Relays whose unknown sessions are taken (as the relayed peer).
    allowed: HashSet<SocketAddr>,
    next: u64,
}

impl Sessions {
    /// The virtual address of session `session` of `relay`, made if new.
    fn address(&mut self, relay: SocketAddr, session: u64) -> SocketAddr {
        if let Some(&v) = self.by_session.get(&(relay, session)) {
            return v;
        }
        if self.order.len() >= MAX_RELAY_SESSIONS {
            if let Some(old) = self.order.pop_front() {
                if let Some(key) = self.by_virtual.remove(&old) {
                    self.by_session.remove(&key);
                }
            }
        }
        self.next += 1;
        let v = virtual_addr(self.next);
        self.by_virtual.insert(v, (relay, session));
        self.by_session.insert((relay, session), v);
        self.order.push_back(v);
        v
    }
}

/// A transport that also reaches peers through relays (see the [module](self) docs).
pub struct RelayTransport {
    inner: SharedTransport,
    table: Arc<RelaySessions>,
}

/// The relay sessions of a [`RelayTransport`], shared with whoever opens or allows them
/// (an endpoint's handle), without keeping its socket open.
#[derive(Default)]
pub struct RelaySessions(Mutex<Sessions>);

impl std::fmt::Debug for RelaySessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RelaySessions({})", self.lock().order.len())
    }
}

impl RelaySessions {
    fn lock(&self) -> MutexGuard<'_, Sessions> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Session `session` of `relay` (one this endpoint opened): the virtual address its peer
    /// is reached at.
    pub fn open(&self, relay: SocketAddr, session: u64) -> SocketAddr {
        self.lock().address(relay, session)
    }

    /// Takes sessions `relay` starts (this endpoint registered with it: it may relay others
    /// to us).
    pub fn allow(&self, relay: SocketAddr) {
        let mut s = self.lock();
        if s.allowed.len() < MAX_RELAY_SESSIONS {
            s.allowed.insert(relay);
        }
    }
}

impl RelayTransport {
    /// Wraps `inner`.
    pub fn new(inner: SharedTransport) -> Arc<Self> {
        Arc::new(RelayTransport {
            inner,
            table: Arc::default(),
        })
    }

    /// Its sessions.
    pub fn sessions(&self) -> Arc<RelaySessions> {
        self.table.clone()
    }

    fn table(&self) -> MutexGuard<'_, Sessions> {
        self.table.lock()
    }

    /// The relay and session of virtual address `to`, if it is one still known.
    fn route(&self, to: SocketAddr) -> Option<(SocketAddr, u64)> {
        if !is_virtual(to) {
            return None;
        }
        self.table().by_virtual.get(&to).copied()
    }

    /// `msg` for virtual address `to`, wrapped for its relay; an error if the session is
    /// forgotten (the caller's transfer then times out, as on a lost path).
    fn wrap(&self, to: SocketAddr, msg: &[u8]) -> io::Result<(SocketAddr, Vec<u8>)> {
        let (relay, session) = self.route(to).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotConnected, "relay session forgotten")
        })?;
        let wrapped = Message::Relayed {
            session,
            payload: Bytes::copy_from_slice(msg),
        };
        Ok((relay, wrapped.encode()))
    }

    /// A datagram from `from`: as is, or unwrapped from a relayed one (`None`: a relayed
    /// datagram not taken, dropped).
    fn unwrap(&self, from: SocketAddr, bytes: Bytes) -> Option<(SocketAddr, Bytes)> {
        if !is_relayed(&bytes) {
            return Some((from, bytes));
        }
        let Ok(Message::Relayed { session, payload }) = decode_bytes(&bytes) else {
            return None;
        };
        let mut s = self.table();
        let known = s.by_session.get(&(from, session)).copied();
        let v = match known {
            Some(v) => v,
            None if s.allowed.contains(&from) => s.address(from, session),
            None => return None,
        };
        Some((v, payload))
    }
}

#[async_trait]
impl Transport for RelayTransport {
    async fn send_to(&self, to: SocketAddr, msg: &[u8]) -> io::Result<()> {
        if !is_virtual(to) {
            return self.inner.send_to(to, msg).await;
        }
        let (relay, wrapped) = self.wrap(to, msg)?;
        self.inner.send_owned(relay, wrapped).await
    }

    async fn send_to_ttl(&self, to: SocketAddr, msg: &[u8], ttl: u8) -> io::Result<()> {
        if is_virtual(to) {
            return self.send_to(to, msg).await;
        }
        self.inner.send_to_ttl(to, msg, ttl).await
    }

    fn send_room(&self, to: SocketAddr) -> usize {
        match self.route(to) {
            Some((relay, _)) => self.inner.send_room(relay),
            None => self.inner.send_room(to),
        }
    }

    async fn send_owned(&self, to: SocketAddr, msg: Vec<u8>) -> io::Result<()> {
        if is_virtual(to) {
            return self.send_to(to, &msg).await;
        }
        self.inner.send_owned(to, msg).await
    }

    async fn send_file(&self, to: SocketAddr, head: Vec<u8>, body: FileRange) -> io::Result<()> {
        if is_virtual(to) {
            let msg = body.after(head)?;
            return self.send_to(to, &msg).await;
        }
        self.inner.send_file(to, head, body).await
    }

    fn sends_file(&self, to: SocketAddr, len: usize) -> bool {
        !is_virtual(to) && self.inner.sends_file(to, len)
    }

    fn max_batch(&self, to: SocketAddr, len: usize) -> usize {
        match is_virtual(to) {
            true => 1,
            false => self.inner.max_batch(to, len),
        }
    }

    async fn send_batch(&self, to: SocketAddr, msgs: &[u8], segment: usize) -> io::Result<()> {
        if is_virtual(to) {
            return crate::transport::send_each(self, to, msgs, segment).await;
        }
        self.inner.send_batch(to, msgs, segment).await
    }

    async fn recv_from(&self) -> io::Result<(SocketAddr, Bytes)> {
        loop {
            let (from, bytes) = self.inner.recv_from().await?;
            if let Some(got) = self.unwrap(from, bytes) {
                return Ok(got);
            }
        }
    }

    fn try_recv_from(&self) -> Option<(SocketAddr, Bytes)> {
        loop {
            let (from, bytes) = self.inner.try_recv_from()?;
            if let Some(got) = self.unwrap(from, bytes) {
                return Some(got);
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_message_size(&self) -> usize {
        self.inner.max_message_size()
    }

    fn max_message_size_to(&self, to: SocketAddr) -> usize {
        match self.route(to) {
            Some((relay, _)) => self
                .inner
                .max_message_size_to(relay)
                .saturating_sub(RELAY_OVERHEAD),
            None => self.inner.max_message_size_to(to),
        }
    }

    fn is_reliable(&self) -> bool {
        self.inner.is_reliable()
    }

    /// Never for a relayed peer: the relay drops what exceeds its rate, even over TCP.
    fn is_reliable_to(&self, to: SocketAddr) -> bool {
        !is_virtual(to) && self.inner.is_reliable_to(to)
    }

    async fn flush(&self, within: std::time::Duration) {
        self.inner.flush(within).await
    }

    fn forget(&self, to: SocketAddr) {
        if !is_virtual(to) {
            self.inner.forget(to);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Virtual addresses are told apart from real ones, IPv6 included, and never repeat.
    #[test]
    fn virtual_addresses_are_recognised() {
        let a = virtual_addr(1);
        let b = virtual_addr(u64::MAX);
        assert!(is_virtual(a) && is_virtual(b) && a != b);
        for real in [
            "127.0.0.1:1",
            "[::1]:1",
            "[fd72:656c:6178::1]:1",
            "10.0.0.1:9000",
        ] {
            assert!(!is_virtual(real.parse().unwrap()), "{real}");
        }
    }

    /// Sessions map to one virtual address each, found both ways, and the table forgets the
    /// oldest first once full.
    #[test]
    fn the_session_table_is_bounded() {
        let mut s = Sessions::default();
        let relay: SocketAddr = "10.0.0.1:9000".parse().unwrap();
        let first = s.address(relay, 7);
        assert_eq!(s.address(relay, 7), first);
        assert_eq!(s.by_virtual[&first], (relay, 7));
        for n in 0..MAX_RELAY_SESSIONS as u64 {
            s.address(relay, 100 + n);
        }
        assert_eq!(s.by_virtual.len(), MAX_RELAY_SESSIONS);
        assert!(!s.by_virtual.contains_key(&first));
        assert!(!s.by_session.contains_key(&(relay, 7)));
    }
}
