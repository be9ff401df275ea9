//! [`NatUdp`]: a NAT in front of a peer's simulated UDP socket, with the mapping and
//! filtering rules of RFC 4787 and the timeouts of Linux conntrack, so that hole punching
//! (`p2p_proto::endpoint::punch`) can be run under simulation.
//!
//! # Where the NAT sits
//!
//! turmoil gives each host one IP and no routing hooks, so the NAT lives on the host it
//! hides: the host's IP plays the router's public address. The peer's own socket (the
//! *private* socket, bound at the port it registers) never sends: every datagram it is
//! asked to send goes out of a *mapping* socket, bound at a public port the NAT picks (see
//! [`NatTable`]), and what arrives at a mapping socket is handed up only if the mapping's
//! filter lets it in. What arrives at the private socket is dropped (counted in
//! [`NatStats::to_private`]): from outside, the address a tracker lists for a NATed peer (its
//! IP and the port it claims) leads nowhere, as behind a real router.
//!
//! The NAT's state ([`NatTable`], shared through a [`NatHandle`]) outlives the peer host's
//! restarts, as a router's does; the sockets are the host's and are bound again on demand.
//!
//! # What is modelled
//!
//! - **Mapping** ([`Mapping`]): endpoint-independent (one public port for every destination:
//!   "cone", what Linux `masquerade` gives a socket), or address-and-port-dependent (a new
//!   public port per destination: "symmetric", `masquerade random-fully`). Public ports are
//!   drawn from the seed, never reused within a run; a port is not preserved (Linux keeps
//!   the source port when it is free; many home routers do not).
//! - **Filtering** ([`Filtering`]): a datagram to a public port is let in only from an
//!   address and port that the private socket has sent to through that port
//!   (address-and-port-dependent, Linux), from such an address on any port
//!   (address-dependent), or from anyone while the mapping lives (endpoint-independent).
//! - **Timeouts**: each flow (public port, remote) lives [`NatConfig::unreplied`] after its
//!   last datagram either way until something came back, then [`NatConfig::replied`]
//!   (Linux: 30 s and 120 s; Linux extends to 120 s only for a flow still active 2 s after
//!   its first reply, a nuance left out). A mapping lives while one of its flows does.
//! - **The conntrack clash** ([`NatConfig::remap_on_clash`], Linux): a datagram from R that
//!   reaches public port P before the host has sent to R is dropped but recorded (for the
//!   unreplied timeout); the host's own datagram to R then cannot use P (its reply tuple is
//!   taken) and leaves from another port, which R's side does not know. This is why the
//!   punching code opens its own NAT with low-TTL probes before the other side's full probes
//!   arrive (`docs/NAT.md`).
//! - **TTL** (`Transport::send_to_ttl`): the router is the first hop. A datagram with a TTL
//!   of 1 or less dies at the router, before it is translated: no state. Otherwise the router
//!   maps it, and it needs a TTL above 1 + [`NatConfig::hops_beyond`] to reach its
//!   destination; `hops_beyond` counts the routers after ours, the far side's NAT included
//!   (default 3, as `docs/NAT.md` assumes across the internet). A probe of TTL 2 therefore
//!   opens our own mapping toward the peer and dies at the first router beyond: the far NAT
//!   never sees it and records nothing, which is all the punching code relies on. The model
//!   does not carry the TTL to the far side: a datagram that survives the path is delivered
//!   as any other.
//! - **Loss on the LAN**, between the host and its router ([`NatConfig::lan_drop_first`]):
//!   the router never sees the datagram. Faults past the router are those of the
//!   [`FaultyTransport`](crate::FaultyTransport) each mapping socket may be wrapped in.
//!
//! Everything is decided from the simulated clock and the seed: no wall clock, no unseeded
//! randomness.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use p2p_core::service::{DownloadReport, EndpointHandle, Punched, ServiceError};
use p2p_core::transport::{SharedTransport, Transport};
use p2p_proto::wire::{decode, Message, CONTROL_BUDGET};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cluster::{find_entry, peer_addr, tracker_addr};
use crate::faulty::DropFirst;
use crate::trace::Trace;
use crate::udp::SimUdp;

/// Linux `nf_conntrack_udp_timeout`: a UDP flow nothing came back on.
pub const LINUX_UDP_UNREPLIED: Duration = Duration::from_secs(30);
/// Linux `nf_conntrack_udp_timeout_stream`: a UDP flow with traffic both ways.
pub const LINUX_UDP_REPLIED: Duration = Duration::from_secs(120);
/// Routers between a NAT and a peer across the internet, the far NAT included.
pub const HOPS_BEYOND: u8 = 3;

/// How a NAT picks the public port of a datagram (RFC 4787, 4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// One public port per private socket, whatever the destination ("cone"; Linux
    /// `masquerade`).
    EndpointIndependent,
    /// A public port per destination address and port ("symmetric"; Linux `masquerade
    /// random-fully`).
    AddressAndPortDependent,
}

/// Which datagrams a NAT lets in through a public port (RFC 4787, 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filtering {
    /// From anyone while the mapping lives ("full cone").
    EndpointIndependent,
    /// From an IP the private socket sent to through that port ("restricted cone").
    AddressDependent,
    /// From an IP and port the private socket sent to through that port (Linux).
    AddressAndPortDependent,
}

/// Settings of a NAT. [`NatConfig::cone`] and [`NatConfig::symmetric`] are Linux's.
#[derive(Clone, Debug)]
pub struct NatConfig {
    /// How public ports are picked.
    pub mapping: Mapping,
    /// What is let in.
    pub filtering: Filtering,
    /// Life of a flow nothing came back on, after its last datagram.
    pub unreplied: Duration,
    /// Life of a flow something came back on, after its last datagram.
    pub replied: Duration,
    /// An unsolicited datagram from R to port P makes the host's next datagram to R leave
    /// from another port (Linux conntrack; see the module documentation).
    pub remap_on_clash: bool,
    /// Routers after this NAT on the way to any destination, the far NAT included: a
    /// datagram needs a TTL above `1 + hops_beyond` to arrive.
    pub hops_beyond: u8,
    /// Public ports, inclusive (away from the peers' and tracker's ports and turmoil's
    /// ephemeral ones).
    pub ports: (u16, u16),
    /// The first `n` datagrams the host sends that match are lost between the host and the
    /// router: the NAT never sees them.
    pub lan_drop_first: Option<DropFirst>,
}

impl NatConfig {
    /// A Linux router with `masquerade`: endpoint-independent mapping (per socket),
    /// address-and-port-dependent filtering, 30 s / 120 s, the conntrack clash, the far
    /// side [`HOPS_BEYOND`] routers away.
    pub fn cone() -> Self {
        NatConfig {
            mapping: Mapping::EndpointIndependent,
            filtering: Filtering::AddressAndPortDependent,
            unreplied: LINUX_UDP_UNREPLIED,
            replied: LINUX_UDP_REPLIED,
            remap_on_clash: true,
            hops_beyond: HOPS_BEYOND,
            ports: (20_000, 48_999),
            lan_drop_first: None,
        }
    }

    /// A Linux router with `masquerade random-fully`: a random public port per
    /// destination, otherwise as [`NatConfig::cone`].
    pub fn symmetric() -> Self {
        NatConfig {
            mapping: Mapping::AddressAndPortDependent,
            ..Self::cone()
        }
    }

    /// With flows living `unreplied` / `replied` after their last datagram.
    pub fn timeouts(mut self, unreplied: Duration, replied: Duration) -> Self {
        self.unreplied = unreplied;
        self.replied = replied;
        self
    }

    /// With this filtering.
    pub fn filtering(mut self, filtering: Filtering) -> Self {
        self.filtering = filtering;
        self
    }

    /// Losing the first `n` datagrams the host sends that match `matches` before they reach
    /// the router.
    pub fn lan_dropping_first(mut self, matches: fn(&Message) -> bool, n: u32) -> Self {
        self.lan_drop_first = Some((matches, n));
        self
    }
}

/// What a NAT did, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Mappings made (public ports allocated), remaps on a clash included.
    pub mappings: u64,
    /// Of those, made because the usual port clashed with an unsolicited datagram's entry.
    pub remapped_on_clash: u64,
    /// Mappings forgotten after their flows' timeouts.
    pub expired: u64,
    /// Datagrams translated and sent on.
    pub sent: u64,
    /// Datagrams that died at the router (TTL 1 or less): no state.
    pub died_at_nat: u64,
    /// Datagrams translated whose TTL ran out beyond the router (low-TTL probes).
    pub died_beyond: u64,
    /// Datagrams lost between the host and the router.
    pub lan_dropped: u64,
    /// Datagrams let in.
    pub accepted: u64,
    /// Datagrams to a public port that the filter dropped (or to a port with no mapping).
    pub filtered: u64,
    /// Datagrams sent to the private socket's address (they never get in).
    pub to_private: u64,
}

/// Something a NAT did that is worth a line in the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NatEvent {
    /// A new public port, first used toward `toward`.
    Mapped {
        /// The public port.
        port: u16,
        /// The destination that made it.
        toward: SocketAddr,
    },
    /// A new public port toward `toward`, because `instead_of` clashed with an unsolicited
    /// datagram's entry.
    Remapped {
        /// The new public port.
        port: u16,
        /// The destination.
        toward: SocketAddr,
        /// The port it would have used.
        instead_of: u16,
    },
    /// Every flow of `port` timed out.
    Expired {
        /// The public port forgotten.
        port: u16,
    },
    /// A datagram from `from` to `port` was dropped by the filter.
    Filtered {
        /// The public port.
        port: u16,
        /// Its source.
        from: SocketAddr,
    },
}

impl fmt::Display for NatEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatEvent::Mapped { port, toward } => write!(f, "nat: mapped :{port} toward {toward}"),
            NatEvent::Remapped {
                port,
                toward,
                instead_of,
            } => write!(
                f,
                "nat: remapped :{port} toward {toward} (:{instead_of} clashes)"
            ),
            NatEvent::Expired { port } => write!(f, "nat: :{port} expired"),
            NatEvent::Filtered { port, from } => write!(f, "nat: filtered {from} -> :{port}"),
        }
    }
}

/// What became of a datagram the host sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outbound {
    /// Translated to public port `port` and sent on (`new`: the mapping was just made).
    Sent {
        /// The public port it leaves from.
        port: u16,
        /// The mapping was made for it.
        new: bool,
    },
    /// Translated (the mapping toward its destination made or refreshed), then its TTL ran
    /// out beyond the router.
    DiedBeyond {
        /// The public port it opened.
        port: u16,
        /// The mapping was made for it.
        new: bool,
    },
    /// Lost before the router translated it (TTL 1, or lost on the LAN): no state.
    Dropped,
    /// No public port left.
    NoPort,
}

impl Outbound {
    /// The public port the datagram opened, if any.
    pub fn port(self) -> Option<u16> {
        match self {
            Outbound::Sent { port, .. } | Outbound::DiedBeyond { port, .. } => Some(port),
            Outbound::Dropped | Outbound::NoPort => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Flow {
    last: Instant,
    replied: bool,
}

/// The state of one NAT for one private socket, without I/O: which public port a datagram
/// leaves from, which datagrams get in, when mappings expire (see the module docs).
#[derive(Debug)]
pub struct NatTable {
    config: NatConfig,
    rng: SmallRng,
    /// Public port → its flows (remote → last datagram).
    mappings: BTreeMap<u16, BTreeMap<SocketAddr, Flow>>,
    /// Endpoint-independent mapping: the port every destination uses.
    shared: Option<u16>,
    /// Per destination: its port (dependent mapping, or a remap after a clash).
    by_dest: BTreeMap<SocketAddr, u16>,
    /// Entries of unsolicited datagrams: (public port, remote) → when they lapse.
    unsolicited: BTreeMap<(u16, SocketAddr), Instant>,
    /// Ports ever allocated (never reused).
    used: BTreeSet<u16>,
    lan_dropped: u32,
    stats: NatStats,
    events: Vec<NatEvent>,
}

impl NatTable {
    /// A NAT with `config`, its ports drawn from `seed`.
    pub fn new(config: NatConfig, seed: u64) -> Self {
        assert!(config.ports.0 <= config.ports.1, "empty port range");
        NatTable {
            config,
            rng: SmallRng::seed_from_u64(seed),
            mappings: BTreeMap::new(),
            shared: None,
            by_dest: BTreeMap::new(),
            unsolicited: BTreeMap::new(),
            used: BTreeSet::new(),
            lan_dropped: 0,
            stats: NatStats::default(),
            events: Vec::new(),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &NatConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> &NatStats {
        &self.stats
    }

    /// The events since the last call.
    pub fn take_events(&mut self) -> Vec<NatEvent> {
        std::mem::take(&mut self.events)
    }

    fn expires(&self, f: &Flow) -> Instant {
        f.last
            + if f.replied {
                self.config.replied
            } else {
                self.config.unreplied
            }
    }

    /// Forgets the flows, mappings and unsolicited entries past their time.
    fn purge(&mut self, now: Instant) {
        let (unreplied, replied) = (self.config.unreplied, self.config.replied);
        let alive = |f: &Flow| f.last + if f.replied { replied } else { unreplied } > now;
        let mut dead = Vec::new();
        for (port, flows) in self.mappings.iter_mut() {
            flows.retain(|_, f| alive(f));
            if flows.is_empty() {
                dead.push(*port);
            }
        }
        for port in dead {
            self.mappings.remove(&port);
            self.stats.expired += 1;
            self.events.push(NatEvent::Expired { port });
        }
        if self.shared.is_some_and(|p| !self.mappings.contains_key(&p)) {
            self.shared = None;
        }
        let mappings = &self.mappings;
        self.by_dest.retain(|_, p| mappings.contains_key(p));
        self.unsolicited.retain(|_, until| *until > now);
    }

    /// The public ports alive at `now`.
    pub fn live_ports(&mut self, now: Instant) -> Vec<u16> {
        self.purge(now);
        self.mappings.keys().copied().collect()
    }

    /// The public port a datagram to `to` would leave from at `now`, if one exists for it.
    pub fn port_toward(&mut self, now: Instant, to: SocketAddr) -> Option<u16> {
        self.purge(now);
        self.existing_port(to)
    }

    /// When the flow (`port`, `remote`) will lapse, if it is alive at `now`.
    pub fn flow_expiry(&mut self, now: Instant, port: u16, remote: SocketAddr) -> Option<Instant> {
        self.purge(now);
        let f = *self.mappings.get(&port)?.get(&remote)?;
        Some(self.expires(&f))
    }

    fn existing_port(&self, to: SocketAddr) -> Option<u16> {
        if let Some(&p) = self.by_dest.get(&to) {
            return Some(p);
        }
        match self.config.mapping {
            Mapping::AddressAndPortDependent => None,
            Mapping::EndpointIndependent => self.shared.filter(|p| !self.clashes(*p, to)),
        }
    }

    fn clashes(&self, port: u16, to: SocketAddr) -> bool {
        self.config.remap_on_clash && self.unsolicited.contains_key(&(port, to))
    }

    /// A fresh public port: from a point drawn from the seed, the next never used.
    fn allocate(&mut self) -> Option<u16> {
        let (lo, hi) = self.config.ports;
        let span = u32::from(hi - lo) + 1;
        if self.used.len() as u32 >= span {
            return None;
        }
        let start = self.rng.gen_range(0..span);
        let port = (0..span)
            .map(|i| lo + ((start + i) % span) as u16)
            .find(|p| !self.used.contains(p))?;
        self.used.insert(port);
        Some(port)
    }

    /// True when `msg`, sent by the host, is lost before the router
    /// ([`NatConfig::lan_drop_first`]); counts it.
    pub fn lost_on_lan(&mut self, msg: &[u8]) -> bool {
        let Some((matches, n)) = self.config.lan_drop_first else {
            return false;
        };
        if self.lan_dropped >= n || !decode(msg).is_ok_and(|m| matches(&m)) {
            return false;
        }
        self.lan_dropped += 1;
        self.stats.lan_dropped += 1;
        true
    }

    /// The host sends a datagram to `to` at `now`, with IP TTL `ttl` (`None`: the usual,
    /// which always arrives).
    pub fn outbound(&mut self, now: Instant, to: SocketAddr, ttl: Option<u8>) -> Outbound {
        self.purge(now);
        if ttl.is_some_and(|t| t <= 1) {
            self.stats.died_at_nat += 1;
            return Outbound::Dropped;
        }
        let (port, new) = match self.existing_port(to) {
            Some(p) => (p, false),
            None => {
                let Some(p) = self.allocate() else {
                    return Outbound::NoPort;
                };
                self.mappings.insert(p, BTreeMap::new());
                self.stats.mappings += 1;
                match (self.config.mapping, self.shared) {
                    (Mapping::EndpointIndependent, None) => {
                        self.shared = Some(p);
                        self.events.push(NatEvent::Mapped {
                            port: p,
                            toward: to,
                        });
                    }
                    (Mapping::EndpointIndependent, Some(instead_of)) => {
                        self.by_dest.insert(to, p);
                        self.stats.remapped_on_clash += 1;
                        self.events.push(NatEvent::Remapped {
                            port: p,
                            toward: to,
                            instead_of,
                        });
                    }
                    (Mapping::AddressAndPortDependent, _) => {
                        self.by_dest.insert(to, p);
                        self.events.push(NatEvent::Mapped {
                            port: p,
                            toward: to,
                        });
                    }
                }
                (p, true)
            }
        };
        let flow = self
            .mappings
            .get_mut(&port)
            .expect("mapped above")
            .entry(to)
            .or_insert(Flow {
                last: now,
                replied: false,
            });
        flow.last = now;
        match ttl {
            Some(t) if t - 1 <= self.config.hops_beyond => {
                self.stats.died_beyond += 1;
                Outbound::DiedBeyond { port, new }
            }
            _ => {
                self.stats.sent += 1;
                Outbound::Sent { port, new }
            }
        }
    }

    /// A datagram from `from` reaches public port `port` at `now`: true if it is let in.
    pub fn inbound(&mut self, now: Instant, port: u16, from: SocketAddr) -> bool {
        self.purge(now);
        let filtering = self.config.filtering;
        let accepted = self
            .mappings
            .get(&port)
            .is_some_and(|flows| match filtering {
                Filtering::EndpointIndependent => true,
                Filtering::AddressDependent => flows.keys().any(|r| r.ip() == from.ip()),
                Filtering::AddressAndPortDependent => flows.contains_key(&from),
            });
        if accepted {
            let flow = self
                .mappings
                .get_mut(&port)
                .expect("checked")
                .entry(from)
                .or_insert(Flow {
                    last: now,
                    replied: true,
                });
            flow.last = now;
            flow.replied = true;
            self.stats.accepted += 1;
        } else {
            self.stats.filtered += 1;
            if self.config.remap_on_clash {
                self.unsolicited
                    .insert((port, from), now + self.config.unreplied);
            }
            self.events.push(NatEvent::Filtered { port, from });
        }
        accepted
    }

    /// Forgets `port` (its socket could not be bound).
    fn forget(&mut self, port: u16) {
        self.mappings.remove(&port);
        if self.shared == Some(port) {
            self.shared = None;
        }
        self.by_dest.retain(|_, p| *p != port);
    }
}

/// A shared [`NatTable`]: the state of one NAT, which a test can look at while the
/// simulation runs.
#[derive(Clone, Debug)]
pub struct NatHandle {
    inner: Arc<Mutex<NatTable>>,
}

fn sim_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl NatHandle {
    /// A NAT with `config`, its ports drawn from `seed`.
    pub fn new(config: NatConfig, seed: u64) -> Self {
        NatHandle {
            inner: Arc::new(Mutex::new(NatTable::new(config, seed))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NatTable> {
        self.inner.lock().expect("nat lock")
    }

    /// A copy of the counters.
    pub fn stats(&self) -> NatStats {
        self.lock().stats().clone()
    }

    /// The public ports alive now (call inside the simulation).
    pub fn live_ports(&self) -> Vec<u16> {
        self.lock().live_ports(sim_now())
    }

    /// The public port a datagram to `to` would leave from now, if one exists for it (call
    /// inside the simulation).
    pub fn port_toward(&self, to: SocketAddr) -> Option<u16> {
        self.lock().port_toward(sim_now(), to)
    }
}

/// Binds a mapping's socket at a public port of the current host: a [`SimUdp`], maybe
/// wrapped in a [`FaultyTransport`](crate::FaultyTransport) (faults beyond the router).
pub type BindPort = Arc<
    dyn Fn(u16) -> Pin<Box<dyn Future<Output = io::Result<SharedTransport>> + Send>> + Send + Sync,
>;

/// A [`Transport`] behind a NAT (see the module documentation): sends through the mapping
/// sockets its [`NatTable`] picks, takes in what their filters let in. Must be created and
/// used inside a simulated host.
pub struct NatUdp {
    private: Arc<SimUdp>,
    table: NatHandle,
    bind_port: BindPort,
    /// Mapping sockets by public port, with the task that receives on each.
    sockets: tokio::sync::Mutex<BTreeMap<u16, (SharedTransport, JoinHandle<()>)>>,
    private_task: JoinHandle<()>,
    tx: mpsc::Sender<(SocketAddr, Bytes)>,
    rx: tokio::sync::Mutex<mpsc::Receiver<(SocketAddr, Bytes)>>,
    max_message: usize,
    log: Option<(Trace, String)>,
}

impl fmt::Debug for NatUdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatUdp")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// Datagrams let in and not yet taken: a socket's receive buffer.
const QUEUE: usize = 1024;

impl NatUdp {
    /// Binds the private socket at `private` (which drops whatever reaches it) behind the NAT
    /// `table`; mapping sockets are bound with `bind_port`; messages of at most
    /// `max_message` bytes. With `log`, the NAT's events go to that trace under that host.
    pub async fn bind(
        private: SocketAddr,
        table: NatHandle,
        bind_port: BindPort,
        max_message: usize,
        log: Option<(Trace, String)>,
    ) -> io::Result<Self> {
        let private = Arc::new(SimUdp::bind_with(private, max_message).await?);
        let private_task = {
            let (private, table, log) = (private.clone(), table.clone(), log.clone());
            tokio::spawn(async move {
                while let Ok((from, _)) = private.recv_from().await {
                    table.lock().stats.to_private += 1;
                    if let Some((trace, host)) = &log {
                        trace.record(host, format_args!("nat: dropped {from} -> private port"));
                    }
                }
            })
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        Ok(NatUdp {
            private,
            table,
            bind_port,
            sockets: tokio::sync::Mutex::new(BTreeMap::new()),
            private_task,
            tx,
            rx: tokio::sync::Mutex::new(rx),
            max_message,
            log,
        })
    }

    /// The NAT's state.
    pub fn handle(&self) -> &NatHandle {
        &self.table
    }

    fn record(log: &Option<(Trace, String)>, events: Vec<NatEvent>) {
        if let Some((trace, host)) = log {
            for e in events {
                trace.record(host, &e);
            }
        }
    }

    /// The socket of public port `port`, bound (with its receiving task) if it is not yet.
    async fn socket(
        &self,
        sockets: &mut BTreeMap<u16, (SharedTransport, JoinHandle<()>)>,
        port: u16,
    ) -> io::Result<SharedTransport> {
        if let Some((s, _)) = sockets.get(&port) {
            return Ok(s.clone());
        }
        let socket = match (self.bind_port)(port).await {
            Ok(s) => s,
            Err(e) => {
                self.table.lock().forget(port);
                return Err(e);
            }
        };
        let (sock, table, tx, log) = (
            socket.clone(),
            self.table.clone(),
            self.tx.clone(),
            self.log.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((from, bytes)) = sock.recv_from().await {
                let (accepted, events) = {
                    let mut t = table.lock();
                    (t.inbound(sim_now(), port, from), t.take_events())
                };
                Self::record(&log, events);
                if accepted {
                    // A full queue drops, as a full socket buffer does.
                    let _ = tx.try_send((from, bytes));
                }
            }
        });
        sockets.insert(port, (socket.clone(), task));
        Ok(socket)
    }

    async fn send(&self, to: SocketAddr, msg: &[u8], ttl: Option<u8>) -> io::Result<()> {
        if msg.len() > self.max_message.max(CONTROL_BUDGET) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("message of {} bytes exceeds the datagram limit", msg.len()),
            ));
        }
        // One send at a time: a mapping is made and its socket bound before the next.
        let mut sockets = self.sockets.lock().await;
        let (verdict, events, live) = {
            let mut t = self.table.lock();
            let now = sim_now();
            let verdict = if t.lost_on_lan(msg) {
                Outbound::Dropped
            } else {
                t.outbound(now, to, ttl)
            };
            (verdict, t.take_events(), t.live_ports(now))
        };
        Self::record(&self.log, events);
        // The sockets of expired mappings are closed.
        sockets.retain(|port, (_, task)| {
            let keep = live.binary_search(port).is_ok();
            if !keep {
                task.abort();
            }
            keep
        });
        match verdict {
            Outbound::Sent { port, .. } => {
                let socket = self.socket(&mut sockets, port).await?;
                socket.send_to(to, msg).await
            }
            Outbound::DiedBeyond { port, .. } => {
                // Bound, so that what comes back through the new mapping is received.
                self.socket(&mut sockets, port).await.map(|_| ())
            }
            Outbound::Dropped | Outbound::NoPort => Ok(()),
        }
    }
}

impl Drop for NatUdp {
    fn drop(&mut self) {
        self.private_task.abort();
        for (_, task) in self.sockets.get_mut().values() {
            task.abort();
        }
    }
}

#[async_trait]
impl Transport for NatUdp {
    async fn send_to(&self, to: SocketAddr, msg: &[u8]) -> io::Result<()> {
        self.send(to, msg, None).await
    }

    async fn send_to_ttl(&self, to: SocketAddr, msg: &[u8], ttl: u8) -> io::Result<()> {
        self.send(to, msg, Some(ttl)).await
    }

    /// Cancel-safe: the receiving tasks queue what gets in; this only takes from the queue.
    async fn recv_from(&self) -> io::Result<(SocketAddr, Bytes)> {
        let mut rx = self.rx.lock().await;
        rx.recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "NAT closed"))
    }

    fn try_recv_from(&self) -> Option<(SocketAddr, Bytes)> {
        self.rx.try_lock().ok()?.try_recv().ok()
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.private.local_addr()
    }

    fn max_message_size(&self) -> usize {
        self.max_message
    }
}

/// How a download reached its peer, as `p2p get --json` reports it (`route`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// At the address the tracker lists.
    Direct(SocketAddr),
    /// Through a hole punched with the tracker's introduction, at the address the peer's
    /// probe came from.
    Punched(SocketAddr),
    /// Through the tracker's relay, at the session's virtual address.
    Relayed(SocketAddr),
}

impl Route {
    /// Where the peer was talked to.
    pub fn addr(self) -> SocketAddr {
        match self {
            Route::Direct(a) | Route::Punched(a) | Route::Relayed(a) => a,
        }
    }
}

/// What [`punch_fetch`] did.
#[derive(Debug)]
pub struct PunchedFetch {
    /// What the punch found.
    pub punch: Result<Punched, ServiceError>,
    /// How the peer was reached.
    pub route: Route,
    /// The download.
    pub result: Result<DownloadReport, ServiceError>,
}

/// How long the listed address is given to answer when the punch failed, before the relay
/// is asked for (as `p2p get` does: `apps/src/session.rs`, `DIRECT_WAIT`).
const DIRECT_WAIT: Duration = Duration::from_millis(1500);

/// `p2p get` as the CLI does it (`apps/src/session.rs`, `route_to`): punches through the
/// NATs toward the UDP peer `seeder` with the tracker's introduction, then looks `path` up in
/// its index and downloads it into `dest` at the address the peer's probe came from; when
/// the punch fails, at the address the tracker lists (`peer_addr`) if the peer answers there
/// within [`DIRECT_WAIT`], else through the tracker's relay, else at the listed address
/// anyway; when the peer is not listed, at the listed address.
pub async fn punch_fetch(
    via: &EndpointHandle,
    seeder: &str,
    path: &str,
    dest: &Path,
) -> PunchedFetch {
    let punch = via.punch(tracker_addr(), seeder).await;
    let listed = peer_addr(seeder);
    let route = match punch {
        Ok(Punched::Open(at)) => Route::Punched(at),
        Ok(Punched::NotListed) => Route::Direct(listed),
        Err(_) => {
            let ask = via.entry(listed, p2p_proto::wire::FileId(0));
            let answered = matches!(
                tokio::time::timeout(DIRECT_WAIT, ask).await,
                Ok(Ok(_) | Err(ServiceError::Refused(_)))
            );
            match answered {
                true => Route::Direct(listed),
                false => match via.relay(tracker_addr(), seeder).await {
                    Ok(at) => Route::Relayed(at),
                    Err(_) => Route::Direct(listed),
                },
            }
        }
    };
    let result = match find_entry(via, route.addr(), path).await {
        Ok(entry) => {
            via.download(route.addr(), entry, dest.to_path_buf(), None)
                .await
        }
        Err(e) => Err(e),
    };
    PunchedFetch {
        punch,
        route,
        result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const TRACKER: &str = "198.51.100.1:9000";
    const BOB: &str = "203.0.113.2:40000";
    const CAROL: &str = "192.0.2.9:7000";
    const S: Duration = Duration::from_secs(1);

    #[test]
    fn cone_maps_one_port_for_every_destination_and_filters_by_address_and_port() {
        let t0 = Instant::now();
        let mut nat = NatTable::new(NatConfig::cone(), 1);
        let Outbound::Sent { port, new: true } = nat.outbound(t0, addr(TRACKER), None) else {
            panic!("first datagram makes a mapping");
        };
        assert_eq!(
            nat.outbound(t0, addr(BOB), None),
            Outbound::Sent { port, new: false },
            "same public port toward everyone"
        );
        assert!(nat.inbound(t0, port, addr(TRACKER)));
        assert!(nat.inbound(t0, port, addr(BOB)));
        // Not sent to: its IP on another port, another IP, another public port.
        assert!(!nat.inbound(t0, port, addr("203.0.113.2:40001")));
        assert!(!nat.inbound(t0, port, addr(CAROL)));
        assert!(!nat.inbound(t0, port + 1, addr(BOB)));
        let s = nat.stats();
        assert_eq!((s.mappings, s.sent, s.accepted, s.filtered), (1, 2, 2, 3));
    }

    #[test]
    fn symmetric_maps_a_port_per_destination() {
        let t0 = Instant::now();
        let mut nat = NatTable::new(NatConfig::symmetric(), 1);
        let a = nat.outbound(t0, addr(TRACKER), None).port().unwrap();
        let b = nat.outbound(t0, addr(BOB), None).port().unwrap();
        let b2 = nat
            .outbound(t0, addr("203.0.113.2:40001"), None)
            .port()
            .unwrap();
        assert!(a != b && b != b2 && a != b2);
        assert_eq!(nat.port_toward(t0, addr(BOB)), Some(b));
        // Bob's answer gets in only at the port that was used toward him.
        assert!(nat.inbound(t0, b, addr(BOB)));
        assert!(!nat.inbound(t0, a, addr(BOB)));
    }

    #[test]
    fn other_filterings() {
        let t0 = Instant::now();
        let mut nat = NatTable::new(NatConfig::cone().filtering(Filtering::AddressDependent), 1);
        let p = nat.outbound(t0, addr(BOB), None).port().unwrap();
        assert!(
            nat.inbound(t0, p, addr("203.0.113.2:1")),
            "same IP, any port"
        );
        assert!(!nat.inbound(t0, p, addr(CAROL)));
        let mut nat = NatTable::new(
            NatConfig::cone().filtering(Filtering::EndpointIndependent),
            1,
        );
        let p = nat.outbound(t0, addr(BOB), None).port().unwrap();
        assert!(nat.inbound(t0, p, addr(CAROL)), "anyone, while mapped");
        assert!(
            !nat.inbound(t0, p + 1, addr(CAROL)),
            "not where nothing is mapped"
        );
    }

    /// Linux: 30 s after the last datagram while nothing came back, 120 s once it did; a
    /// mapping that expired comes back on a new port.
    #[test]
    fn flows_expire_after_their_idle_time() {
        let t0 = Instant::now();
        let mut nat = NatTable::new(NatConfig::cone(), 1);
        let p = nat.outbound(t0, addr(BOB), None).port().unwrap();
        assert_eq!(nat.flow_expiry(t0, p, addr(BOB)), Some(t0 + 30 * S));
        // Refreshed by another datagram out.
        nat.outbound(t0 + 20 * S, addr(BOB), None);
        assert!(nat.inbound(t0 + 49 * S, p, addr(BOB)), "alive at 49 s");
        assert_eq!(
            nat.flow_expiry(t0 + 49 * S, p, addr(BOB)),
            Some(t0 + 169 * S)
        );
        assert!(nat.inbound(t0 + 168 * S, p, addr(BOB)), "replied: 120 s");
        assert_eq!(nat.live_ports(t0 + 287 * S), vec![p]);
        assert_eq!(nat.live_ports(t0 + 288 * S), Vec::<u16>::new());
        assert_eq!(nat.stats().expired, 1);
        assert!(
            !nat.inbound(t0 + 289 * S, p, addr(BOB)),
            "expired: filtered"
        );
        let again = nat.outbound(t0 + 290 * S, addr(BOB), None);
        assert!(matches!(again, Outbound::Sent { new: true, port } if port != p));
        // An unreplied flow alone lapses after 30 s.
        let mut nat = NatTable::new(NatConfig::cone().timeouts(5 * S, 10 * S), 2);
        let p = nat.outbound(t0, addr(TRACKER), None).port().unwrap();
        assert_eq!(nat.live_ports(t0 + 4 * S), vec![p]);
        assert!(nat.live_ports(t0 + 5 * S).is_empty());
    }

    /// A mapping lives while any of its flows does; a lapsed flow's remote is filtered.
    #[test]
    fn a_cone_mapping_outlives_its_idle_flows() {
        let t0 = Instant::now();
        let mut nat = NatTable::new(NatConfig::cone(), 1);
        let p = nat.outbound(t0, addr(BOB), None).port().unwrap();
        for s in (0..100).step_by(10) {
            nat.outbound(t0 + s * S, addr(TRACKER), None);
        }
        assert_eq!(
            nat.port_toward(t0 + 95 * S, addr(BOB)),
            Some(p),
            "same port again"
        );
        assert!(
            !nat.inbound(t0 + 95 * S, p, addr(BOB)),
            "bob's flow lapsed at 30 s"
        );
    }

    #[test]
    fn ttl_1_dies_at_the_router_and_a_low_ttl_opens_only_our_mapping() {
        let t0 = Instant::now();
        let mut nat = NatTable::new(NatConfig::cone(), 1);
        assert_eq!(nat.outbound(t0, addr(BOB), Some(1)), Outbound::Dropped);
        assert!(nat.live_ports(t0).is_empty(), "no state from a TTL of 1");
        let Outbound::DiedBeyond { port, new: true } = nat.outbound(t0, addr(BOB), Some(2)) else {
            panic!("TTL 2 opens the mapping and dies beyond");
        };
        assert!(nat.inbound(t0, port, addr(BOB)), "bob is let in");
        // TTL 4 is the least that crosses 3 routers beyond ours.
        assert_eq!(
            nat.outbound(t0, addr(BOB), Some(4)),
            Outbound::DiedBeyond { port, new: false }
        );
        assert_eq!(
            nat.outbound(t0, addr(BOB), Some(5)),
            Outbound::Sent { port, new: false }
        );
        let s = nat.stats();
        assert_eq!((s.died_at_nat, s.died_beyond, s.sent), (1, 2, 1));
    }

    /// Linux conntrack: an unsolicited datagram from bob is recorded, and the host's own
    /// datagram to bob then leaves from another port; others keep the usual one.
    #[test]
    fn an_unsolicited_datagram_moves_the_hosts_next_one_to_another_port() {
        let t0 = Instant::now();
        let mut nat = NatTable::new(NatConfig::cone(), 1);
        let p = nat.outbound(t0, addr(TRACKER), None).port().unwrap();
        assert!(!nat.inbound(t0, p, addr(BOB)));
        let q = nat.outbound(t0 + S, addr(BOB), None).port().unwrap();
        assert_ne!(q, p);
        assert_eq!(nat.stats().remapped_on_clash, 1);
        assert_eq!(nat.port_toward(t0 + S, addr(TRACKER)), Some(p));
        assert_eq!(nat.port_toward(t0 + S, addr(CAROL)), Some(p));
        assert!(!nat.inbound(t0 + S, p, addr(BOB)), "still not let in at p");
        assert!(nat.inbound(t0 + S, q, addr(BOB)));
        // Without the clash rule, the usual port.
        let mut c = NatConfig::cone();
        c.remap_on_clash = false;
        let mut nat = NatTable::new(c, 1);
        let p = nat.outbound(t0, addr(TRACKER), None).port().unwrap();
        assert!(!nat.inbound(t0, p, addr(BOB)));
        assert_eq!(nat.outbound(t0, addr(BOB), None).port(), Some(p));
    }

    /// Two hosts behind cone NATs, A at public IP 1, B at public IP 2, each mapped toward the
    /// tracker: the exchange of `docs/NAT.md`, datagram by datagram through both tables.
    /// Both sending full probes at once gets nothing through; A opening its own NAT with
    /// low-TTL probes first, then B probing, does.
    #[test]
    fn punching_order_both_at_once_fails_low_ttl_first_works() {
        let t0 = Instant::now();
        let (ip_a, ip_b) = ("10.0.0.1", "10.0.0.2");
        let public = |ip: &str, port: u16| addr(&format!("{ip}:{port}"));
        let setup = |seed| {
            let mut a = NatTable::new(NatConfig::cone(), seed);
            let mut b = NatTable::new(NatConfig::cone(), seed + 1);
            let pa = a.outbound(t0, addr(TRACKER), None).port().unwrap();
            let pb = b.outbound(t0, addr(TRACKER), None).port().unwrap();
            (a, b, public(ip_a, pa), public(ip_b, pb))
        };
        // Both at once: A's probe reaches B's NAT before B's leaves, and B's reaches A's
        // NAT before A's leaves (crossing on the wire).
        let (mut a, mut b, a_seen, b_seen) = setup(10);
        let a_out = a.outbound(t0, b_seen, None).port().unwrap();
        assert!(!b.inbound(t0, b_seen.port(), public(ip_a, a_out)));
        let b_out = b.outbound(t0, a_seen, None).port().unwrap();
        assert_ne!(b_out, b_seen.port(), "B's NAT moved B to another port");
        assert!(
            !a.inbound(t0, a_seen.port(), public(ip_b, b_out)),
            "not let in"
        );
        // And every later datagram either way stays out.
        let a_again = a.outbound(t0 + S, b_seen, None).port().unwrap();
        assert!(!b.inbound(t0 + S, b_seen.port(), public(ip_a, a_again)));
        // The punching order: A's low probe, then B's low and full probes.
        let (mut a, mut b, a_seen, b_seen) = setup(20);
        assert!(matches!(
            a.outbound(t0, b_seen, Some(2)),
            Outbound::DiedBeyond { new: false, .. }
        ));
        assert!(matches!(
            b.outbound(t0, a_seen, Some(2)),
            Outbound::DiedBeyond { new: false, .. }
        ));
        let b_out = b.outbound(t0, a_seen, None).port().unwrap();
        assert_eq!(b_out, b_seen.port());
        assert!(a.inbound(t0, a_seen.port(), b_seen), "B's probe gets in");
        let a_out = a.outbound(t0, b_seen, None).port().unwrap();
        assert_eq!(a_out, a_seen.port());
        assert!(b.inbound(t0, b_seen.port(), a_seen), "and A's requests");
    }

    #[test]
    fn lan_loss_hits_the_first_matching_datagrams_only() {
        let probe = Message::Probe { nonce: 1 }.encode();
        let other = Message::Probe { nonce: 2 }.encode();
        let mut nat = NatTable::new(
            NatConfig::cone().lan_dropping_first(|m| matches!(m, Message::Probe { nonce: 1 }), 1),
            1,
        );
        assert!(!nat.lost_on_lan(&other));
        assert!(nat.lost_on_lan(&probe));
        assert!(!nat.lost_on_lan(&probe));
        assert_eq!(nat.stats().lan_dropped, 1);
    }

    #[test]
    fn ports_come_from_the_seed() {
        let t0 = Instant::now();
        let ports = |seed| {
            let mut nat = NatTable::new(NatConfig::symmetric(), seed);
            (0..20u16)
                .map(|i| {
                    let to = SocketAddr::from(([192, 0, 2, 1], 1000 + i));
                    nat.outbound(t0, to, None).port().unwrap()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(ports(7), ports(7));
        assert_ne!(ports(7), ports(8));
        let p = ports(7);
        let distinct: BTreeSet<_> = p.iter().collect();
        assert_eq!(distinct.len(), p.len(), "never reused");
        assert!(p.iter().all(|p| (20_000..=48_999).contains(p)));
    }

    #[test]
    fn a_small_range_runs_out() {
        let t0 = Instant::now();
        let mut c = NatConfig::symmetric();
        c.ports = (30_000, 30_001);
        let mut nat = NatTable::new(c, 1);
        assert!(nat.outbound(t0, addr(BOB), None).port().is_some());
        assert!(nat.outbound(t0, addr(CAROL), None).port().is_some());
        assert_eq!(nat.outbound(t0, addr(TRACKER), None), Outbound::NoPort);
    }
}
