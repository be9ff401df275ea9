//! [`Cluster`]: builds a simulation of one tracker and named peers, each a turmoil host
//! with its own share folder of generated files (content from the seed), and gives test
//! clients what they need to drive it: endpoint handles, addresses, counters and a trace.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2p_core::service::{
    run_tracker_with, spawn_endpoint, DownloadReport, EndpointConfig, EndpointHandle, Progress,
    RelayConfig, RelayEvent, ServiceError, TrackerEvent, TrackerSettings,
};
use p2p_core::transport::SharedTransport;
use p2p_proto::tracker::RegistryConfig;
use p2p_proto::transfer::{ReceiverConfig, SenderConfig};
use p2p_proto::wire::{IndexEntry, Message, TransportKind, DATA_OVERHEAD};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use tokio::sync::watch;

use crate::disk::SimDisk;
use crate::faulty::{
    Bottleneck, FaultConfig, FaultRates, FaultStats, FaultyTransport, SharedStats, Targeted,
};
use crate::harness::{check_download, Checked};
use crate::nat::{BindPort, NatConfig, NatHandle, NatUdp};
use crate::tcp::{SimTcp, SimTcpConfig};
use crate::trace::Trace;
use crate::udp::{SimUdp, SIM_UDP_MESSAGE};

/// Simulated time per step of a simulation: every host is polled once per step, busy or
/// idle, so a longer step runs the suite faster (2 ms: ~100x real time, 1 ms: ~72x); the
/// protocol's shortest timer is 25 ms.
pub const TICK: Duration = Duration::from_millis(2);

/// Port the tracker listens on.
pub const TRACKER_PORT: u16 = 9000;
/// Port every peer listens on (each peer is its own host).
pub const PEER_PORT: u16 = 7000;
/// Host name of the tracker.
pub const TRACKER: &str = "tracker";

/// Which simulated transport a cluster runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    /// [`SimUdp`], one message per datagram.
    Udp,
    /// [`SimTcp`], framed messages on cached connections.
    Tcp,
}

impl Net {
    /// The kind peers register with.
    pub fn kind(self) -> TransportKind {
        match self {
            Net::Udp => TransportKind::Udp,
            Net::Tcp => TransportKind::Tcp,
        }
    }

    /// Largest message of this transport with its default settings.
    pub fn max_message(self) -> usize {
        match self {
            Net::Udp => SIM_UDP_MESSAGE,
            Net::Tcp => SimTcpConfig::default().max_message,
        }
    }

    /// Payload bytes per chunk the endpoint uses on this transport (see `spawn_endpoint`).
    pub fn chunk_size(self) -> usize {
        self.max_message()
            .saturating_sub(DATA_OVERHEAD)
            .clamp(64, p2p_proto::wire::MAX_CHUNK)
    }

    /// Binds this transport on `port` of the current host, wrapped in a [`FaultyTransport`]
    /// when `faults` is given (counting into `stats`).
    ///
    /// With `log`, every message is recorded in that trace under that host name (the
    /// transport is then always wrapped, with no faults when `faults` is `None`).
    pub async fn bind(
        self,
        port: u16,
        faults: Option<FaultConfig>,
        stats: SharedStats,
        log: Option<(Trace, String)>,
    ) -> io::Result<SharedTransport> {
        let addr = SocketAddr::from(([0, 0, 0, 0], port));
        let faults = match (faults, &log) {
            (None, Some(_)) => Some(FaultConfig::send_side(0, FaultRates::NONE)),
            (f, _) => f,
        };
        fn wrap<T: p2p_core::transport::Transport>(
            t: T,
            f: FaultConfig,
            stats: SharedStats,
            log: Option<(Trace, String)>,
        ) -> SharedTransport {
            let t = FaultyTransport::with_stats(t, f, stats);
            match log {
                Some((trace, host)) => Arc::new(t.with_log(trace, &host)),
                None => Arc::new(t),
            }
        }
        Ok(match (self, faults) {
            (Net::Udp, None) => Arc::new(SimUdp::bind(addr).await?),
            (Net::Udp, Some(f)) => wrap(SimUdp::bind(addr).await?, f, stats, log),
            (Net::Tcp, None) => Arc::new(SimTcp::bind(addr, SimTcpConfig::default()).await?),
            (Net::Tcp, Some(f)) => wrap(
                SimTcp::bind(addr, SimTcpConfig::default()).await?,
                f,
                stats,
                log,
            ),
        })
    }
}

/// Tracker timings shortened for simulation: TTL 3 s, heartbeat every 1 s.
pub fn fast_registry() -> RegistryConfig {
    RegistryConfig {
        ttl: Duration::from_secs(3),
        heartbeat: Duration::from_secs(1),
        max_peers: 1000,
    }
}

/// Endpoint timings shortened for simulation: idle timeouts of 10 s (five retransmissions at
/// the largest RTO), RTO at most 2 s, 8 attempts per request.
pub fn fast_endpoint(share: Option<PathBuf>, id_seed: u64) -> EndpointConfig {
    EndpointConfig {
        share,
        sender: SenderConfig {
            idle_timeout: Duration::from_secs(10),
            max_rto: Duration::from_secs(2),
            ..SenderConfig::default()
        },
        receiver: ReceiverConfig {
            idle_timeout: Duration::from_secs(10),
            ..ReceiverConfig::default()
        },
        rpc_retry: Duration::from_millis(250),
        rpc_attempts: 8,
        id_seed,
        // Pieces hashed and downloads finished on the I/O task: a thread would not follow
        // the simulated clock.
        hash_thread: false,
        finish_thread: false,
        rescan_thread: false,
        checkpoint_thread: false,
        ..EndpointConfig::default()
    }
}

/// A generated file in a peer's share folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedFile {
    /// Path relative to the share folder.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the content.
    pub hash: blake3::Hash,
    /// Where the content is on disk (in the sharing peer's folder).
    pub source: PathBuf,
}

/// Writes `size` bytes of content determined by `seed` and `path` under `dir/path`.
pub fn generate_file(dir: &Path, path: &str, size: usize, seed: u64) -> io::Result<SharedFile> {
    let mut rng = SmallRng::seed_from_u64(mix(seed, path));
    let mut bytes = vec![0u8; size];
    rng.fill_bytes(&mut bytes);
    let full = dir.join(path);
    if let Some(parent) = full.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&full, &bytes)?;
    Ok(SharedFile {
        path: path.to_string(),
        size: size as u64,
        hash: blake3::hash(&bytes),
        source: full,
    })
}

/// A 64-bit mix of a seed and a label (stable across runs and platforms).
pub fn mix(seed: u64, label: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(label.as_bytes());
    let out = h.finalize();
    u64::from_le_bytes(out.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The endpoint handles of the running peers, published by each peer host when it (re)starts.
#[derive(Clone, Debug, Default)]
pub struct Handles {
    inner: Arc<Mutex<BTreeMap<String, (u64, EndpointHandle)>>>,
}

impl Handles {
    fn publish(&self, name: &str, boot: u64, h: EndpointHandle) {
        self.inner
            .lock()
            .expect("handles lock")
            .insert(name.to_string(), (boot, h));
    }

    /// The handle of `name`'s latest life, if it has started.
    pub fn try_get(&self, name: &str) -> Option<(u64, EndpointHandle)> {
        self.inner.lock().expect("handles lock").get(name).cloned()
    }

    /// Waits (in simulated time) until `name` has started at least `min_boot` times, and
    /// returns the handle of its latest life.
    pub async fn get_boot(&self, name: &str, min_boot: u64) -> EndpointHandle {
        loop {
            if let Some((boot, h)) = self.try_get(name) {
                if boot >= min_boot {
                    return h;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `name` has started, and returns its handle.
    pub async fn get(&self, name: &str) -> EndpointHandle {
        self.get_boot(name, 1).await
    }

    /// How many times `name` has started.
    pub fn boots(&self, name: &str) -> u64 {
        self.try_get(name).map_or(0, |(b, _)| b)
    }
}

/// Adjusts a peer's endpoint settings before it starts.
pub type Tune = Arc<dyn Fn(&mut EndpointConfig) + Send + Sync>;

/// How one peer is set up.
#[derive(Clone)]
pub struct PeerOpts {
    /// Files to generate in its share folder: (relative path, size).
    pub files: Vec<(String, usize)>,
    /// Faults of its transport, if any (the seed is derived from the scenario's).
    pub faults: Option<(FaultRates, FaultRates)>,
    /// Register with the tracker on start (retrying until it answers).
    pub register: bool,
    /// Adjusts the endpoint settings.
    pub tune: Option<Tune>,
    /// Faults aimed at particular messages it sends (see [`Targeted`]).
    pub targeted: Targeted,
    /// Its disk, when simulated (see [`SimDisk`]); the real one otherwise.
    pub disk: Option<SimDisk>,
    /// The NAT it sits behind, if any (UDP only; see [`NatUdp`]).
    pub nat: Option<NatConfig>,
    /// Generate its files as those of every peer with the same label (the same content at the
    /// same paths: sources of one download); `None`, content of its own.
    pub content: Option<String>,
    /// A bottleneck on what it sends (UDP only; see [`Bottleneck`]).
    pub bottleneck: Option<Bottleneck>,
}

impl Default for PeerOpts {
    fn default() -> Self {
        PeerOpts {
            files: Vec::new(),
            faults: None,
            register: true,
            tune: None,
            targeted: Targeted::default(),
            disk: None,
            nat: None,
            content: None,
            bottleneck: None,
        }
    }
}

impl PeerOpts {
    /// Shares `files` (path, size) and registers on start.
    pub fn sharing(files: &[(&str, usize)]) -> Self {
        PeerOpts {
            files: files.iter().map(|(p, s)| (p.to_string(), *s)).collect(),
            ..Self::default()
        }
    }

    /// Sending through `link` (UDP only).
    pub fn bottleneck(mut self, link: Bottleneck) -> Self {
        self.bottleneck = Some(link);
        self
    }

    /// With these faults on the send and receive sides.
    pub fn faults(mut self, send: FaultRates, recv: FaultRates) -> Self {
        self.faults = Some((send, recv));
        self
    }

    /// With the same content as every peer of this `label` (see [`PeerOpts::content`]).
    pub fn same_content(mut self, label: &str) -> Self {
        self.content = Some(label.to_string());
        self
    }

    /// Losing the first `n` messages it sends that match `matches`, on top of any faults.
    pub fn dropping_first(mut self, matches: fn(&Message) -> bool, n: u32) -> Self {
        self.targeted.drop_first = Some((matches, n));
        self
    }

    /// Flipping a byte at the end of the first `n` messages it sends that match `matches`
    /// (see [`Targeted::corrupt_first`]).
    pub fn corrupting_first(mut self, matches: fn(&Message) -> bool, n: u32) -> Self {
        self.targeted.corrupt_first = Some((matches, n));
        self
    }

    /// Sending chunks of at least `min` payload bytes from the file, their payload outside
    /// the checksum, as the UDP transport sends large datagrams
    /// (see [`Targeted::send_file_from`]).
    pub fn sending_files_from(mut self, min: usize) -> Self {
        self.targeted.send_file_from = Some(min);
        self
    }

    /// On `disk` (shared by all its lives: what a crash left is there after a restart).
    pub fn on_disk(mut self, disk: &SimDisk) -> Self {
        self.disk = Some(disk.clone());
        self
    }

    /// Behind a NAT with `config` (see [`NatUdp`]): its transport's faults apply past the
    /// router, on each mapping's socket (each with its own fault RNG and targeted counts).
    pub fn behind(mut self, config: NatConfig) -> Self {
        self.nat = Some(config);
        self
    }

    /// Without registering with the tracker.
    pub fn unregistered(mut self) -> Self {
        self.register = false;
        self
    }

    /// With endpoint settings adjusted by `f` (after any adjustment given before).
    pub fn tune(mut self, f: impl Fn(&mut EndpointConfig) + Send + Sync + 'static) -> Self {
        self.tune = Some(match self.tune.take() {
            None => Arc::new(f),
            Some(before) => Arc::new(move |c: &mut EndpointConfig| {
                before(c);
                f(c);
            }),
        });
        self
    }
}

/// One tracker and named peers in a turmoil simulation, with their folders, counters and
/// trace. Create it, add hosts to a `turmoil::Sim` with [`Cluster::add_tracker`] and
/// [`Cluster::add_peer`], then drive the peers from a client through [`Cluster::handles`].
pub struct Cluster {
    /// The scenario's seed.
    pub seed: u64,
    /// The transport every host uses.
    pub net: Net,
    /// Event log of this run.
    pub trace: Trace,
    /// Endpoint handles of the running peers.
    pub handles: Handles,
    /// Record every message of every host in the trace (see [`FaultyTransport::with_log`]);
    /// set before adding hosts. Also switched on by the environment variable `SIM_LOG=1`.
    pub log_messages: bool,
    /// The tracker's relay (on, with the defaults, unless changed before it is added).
    pub relay: RelayConfig,
    dir: tempfile::TempDir,
    stats: BTreeMap<String, SharedStats>,
    files: BTreeMap<String, Vec<SharedFile>>,
    nats: BTreeMap<String, NatHandle>,
}

impl Cluster {
    /// A new cluster for `seed` on `net`, with a fresh temporary folder.
    pub fn new(seed: u64, net: Net) -> Self {
        Cluster {
            seed,
            net,
            trace: Trace::new(),
            handles: Handles::default(),
            log_messages: std::env::var("SIM_LOG").is_ok_and(|v| v == "1"),
            relay: RelayConfig::default(),
            dir: tempfile::tempdir().expect("temporary folder"),
            stats: BTreeMap::new(),
            files: BTreeMap::new(),
            nats: BTreeMap::new(),
        }
    }

    /// A turmoil builder seeded with the scenario's seed, running at most `duration` of
    /// simulated time in steps of [`TICK`], with room for bursts in UDP queues.
    pub fn builder(&self, duration: Duration) -> turmoil::Builder {
        let mut b = turmoil::Builder::new();
        b.rng_seed(self.seed)
            .simulation_duration(duration)
            .tick_duration(TICK)
            .udp_capacity(1024)
            .tcp_capacity(1024);
        b
    }

    /// A simulation for `duration` whose messages all take 10 ms: turmoil's random latency
    /// reorders datagrams, which would blur what one fault alone costs (a spurious
    /// retransmission may overtake the message a targeted fault hit).
    pub fn fixed_latency(&self, duration: Duration) -> turmoil::Sim<'static> {
        self.builder(duration)
            .min_message_latency(Duration::from_millis(10))
            .max_message_latency(Duration::from_millis(10))
            .build()
    }

    /// A simulation for `duration` whose messages all take `one_way` (a path of twice that
    /// round trip), with room in the UDP queues for a window of a long path.
    pub fn long_path(&self, duration: Duration, one_way: Duration) -> turmoil::Sim<'static> {
        self.builder(duration)
            .min_message_latency(one_way)
            .max_message_latency(one_way)
            .udp_capacity(1 << 16)
            .build()
    }

    /// Adds a client that has `leech` fetch `path` from `seeder` into its download folder,
    /// checks the scenario's invariant ([`check_download`]), then hands the outcome and its
    /// verdict to `judge`.
    pub fn fetch_checked(
        &self,
        sim: &mut turmoil::Sim<'static>,
        leech: &str,
        seeder: &str,
        path: &str,
        judge: impl FnOnce(Result<DownloadReport, ServiceError>, Checked) -> Result<(), String>
            + 'static,
    ) {
        let f = self.file(seeder, path);
        let dest = self.download_dir(leech).join(path);
        let handles = self.handles.clone();
        let (leech, seeder, path) = (leech.to_string(), seeder.to_string(), path.to_string());
        sim.client("ctl", async move {
            let h = handles.get(&leech).await;
            let res = fetch(&h, &seeder, &path, &dest).await;
            let checked = check_download(&res, &dest, &f)?;
            Ok(judge(res, checked)?)
        });
    }

    /// The share folder of `peer`.
    pub fn share_dir(&self, peer: &str) -> PathBuf {
        self.dir.path().join(peer).join("share")
    }

    /// A folder for `peer`'s downloads (created).
    pub fn download_dir(&self, peer: &str) -> PathBuf {
        let d = self.dir.path().join(peer).join("downloads");
        std::fs::create_dir_all(&d).expect("download folder");
        d
    }

    /// The files generated for `peer`.
    pub fn files(&self, peer: &str) -> &[SharedFile] {
        self.files.get(peer).map_or(&[], |v| v.as_slice())
    }

    /// The file `path` shared by `peer`.
    ///
    /// # Panics
    ///
    /// When there is no such file.
    pub fn file(&self, peer: &str, path: &str) -> SharedFile {
        self.files(peer)
            .iter()
            .find(|f| f.path == path)
            .cloned()
            .unwrap_or_else(|| panic!("{peer} shares no {path}"))
    }

    /// The fault counters of `host` (zero when it has no faulty transport).
    pub fn stats(&self, host: &str) -> FaultStats {
        self.stats
            .get(host)
            .map(|s| s.lock().expect("stats lock").clone())
            .unwrap_or_default()
    }

    /// The NAT `host` sits behind.
    ///
    /// # Panics
    ///
    /// When it sits behind none.
    pub fn nat(&self, host: &str) -> NatHandle {
        self.nats
            .get(host)
            .cloned()
            .unwrap_or_else(|| panic!("{host} is behind no NAT"))
    }

    fn fault_config(
        &self,
        host: &str,
        faults: Option<(FaultRates, FaultRates)>,
    ) -> Option<FaultConfig> {
        faults.map(|(send, recv)| FaultConfig {
            send,
            recv,
            ..FaultConfig::send_side(mix(self.seed, host), FaultRates::NONE)
        })
    }

    /// Adds the tracker host (named [`TRACKER`]); its events go to the trace. `faults` are
    /// (send, receive) rates of its transport.
    pub fn add_tracker(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        registry: RegistryConfig,
        faults: Option<(FaultRates, FaultRates)>,
    ) {
        self.add_tracker_targeted(sim, registry, faults, Targeted::default());
    }

    /// [`Cluster::add_tracker`], with faults aimed at particular messages the tracker sends
    /// (e.g. its first `Introduction`).
    pub fn add_tracker_targeted(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        registry: RegistryConfig,
        faults: Option<(FaultRates, FaultRates)>,
        targeted: Targeted,
    ) {
        let stats = SharedStats::default();
        self.stats.insert(TRACKER.into(), stats.clone());
        let mut faults = self.fault_config(TRACKER, faults);
        if !targeted.is_none() {
            let config = faults.get_or_insert_with(|| {
                FaultConfig::send_side(mix(self.seed, TRACKER), FaultRates::NONE)
            });
            config.targeted = targeted;
        }
        let (net, trace, seed, relay) = (self.net, self.trace.clone(), self.seed, self.relay);
        let log = self
            .log_messages
            .then(|| (trace.clone(), TRACKER.to_string()));
        let boots = Arc::new(AtomicU64::new(0));
        sim.host(TRACKER, move || {
            let log = log.clone();
            let (faults, stats, trace, registry) = (
                faults.clone(),
                stats.clone(),
                trace.clone(),
                registry.clone(),
            );
            let boot = boots.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                trace.record(TRACKER, format_args!("boot {boot}"));
                let t = net.bind(TRACKER_PORT, faults, stats, log).await?;
                let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
                let log = trace.clone();
                tokio::spawn(async move {
                    while let Some(e) = rx.recv().await {
                        log.record(TRACKER, describe(&e));
                    }
                });
                let (relay_tx, mut relay_rx) = tokio::sync::mpsc::channel(1024);
                let log = trace.clone();
                tokio::spawn(async move {
                    while let Some(e) = relay_rx.recv().await {
                        log.record(TRACKER, describe_relay(&e));
                    }
                });
                let settings = TrackerSettings {
                    registry,
                    relay,
                    key_seed: Some(mix(seed, "tracker tokens")),
                    ..TrackerSettings::default()
                };
                run_tracker_with(vec![t], settings, Some(tx), Some(relay_tx)).await?;
                Ok(())
            }
        });
    }

    /// Adds a peer host `name` that shares the generated `opts.files`, publishes its
    /// endpoint handle in [`Cluster::handles`] and, if asked, registers with the tracker as
    /// `name` (retrying until the tracker answers). Restarted by `sim.bounce`, it starts a
    /// new life with fresh request and transfer ids.
    pub fn add_peer(&mut self, sim: &mut turmoil::Sim<'_>, name: &str, opts: PeerOpts) {
        let share = self.share_dir(name);
        std::fs::create_dir_all(&share).expect("share folder");
        let files = opts
            .files
            .iter()
            .map(|(p, s)| {
                let label = opts.content.as_deref().unwrap_or(name);
                generate_file(&share, p, *s, mix(self.seed, label)).expect("generate")
            })
            .collect();
        self.files.insert(name.to_string(), files);
        let stats = SharedStats::default();
        self.stats.insert(name.to_string(), stats.clone());
        let mut faults = self.fault_config(name, opts.faults);
        if !opts.targeted.is_none() {
            let config = faults.get_or_insert_with(|| {
                FaultConfig::send_side(mix(self.seed, name), FaultRates::NONE)
            });
            config.targeted = opts.targeted;
        }
        if let Some(link) = opts.bottleneck {
            assert_eq!(self.net, Net::Udp, "{name}: a bottleneck drops: UDP only");
            faults
                .get_or_insert_with(|| {
                    FaultConfig::send_side(mix(self.seed, name), FaultRates::NONE)
                })
                .bottleneck = Some(link);
        }
        let (net, trace, handles, seed) = (
            self.net,
            self.trace.clone(),
            self.handles.clone(),
            self.seed,
        );
        let name = name.to_string();
        let log = self
            .log_messages
            .then(|| (self.trace.clone(), name.clone()));
        let nat = opts.nat.clone().map(|config| {
            assert_eq!(net, Net::Udp, "{name}: a NAT is modelled for UDP only");
            let nat = NatHandle::new(config, mix(self.seed, &format!("{name}/nat")));
            self.nats.insert(name.clone(), nat.clone());
            nat
        });
        let boots = Arc::new(AtomicU64::new(0));
        sim.host(name.clone(), move || {
            let log = log.clone();
            let nat = nat.clone();
            let boot = boots.fetch_add(1, Ordering::SeqCst) + 1;
            let mut config =
                fast_endpoint(Some(share.clone()), mix(seed, &format!("{name}#{boot}")));
            if let Some(disk) = &opts.disk {
                config.storage = Arc::new(disk.clone());
            }
            if let Some(tune) = &opts.tune {
                tune(&mut config);
            }
            let (faults, stats, trace, handles, name, register) = (
                faults.clone(),
                stats.clone(),
                trace.clone(),
                handles.clone(),
                name.clone(),
                opts.register,
            );
            async move {
                trace.record(&name, format_args!("boot {boot}"));
                let t = match nat {
                    None => net.bind(PEER_PORT, faults, stats, log).await?,
                    Some(nat) => {
                        let events = Some((trace.clone(), name.clone()));
                        bind_behind_nat(nat, faults, stats, log, events).await?
                    }
                };
                let (h, task) = spawn_endpoint(t, net.kind(), config)?;
                handles.publish(&name, boot, h.clone());
                if register {
                    let tracker = tracker_addr();
                    loop {
                        match h
                            .register(tracker, &name, PEER_PORT, net.kind(), None)
                            .await
                        {
                            Ok(()) => {
                                trace.record(&name, "registered");
                                break;
                            }
                            Err(ServiceError::Refused(r)) => {
                                trace.record(&name, format_args!("register refused: {r}"));
                                break;
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                        }
                    }
                }
                let _ = task.await;
                Ok(())
            }
        });
    }
}

impl Drop for Cluster {
    /// With message logging on, writes the trace to `<temp dir>/p2p-sim-<seed>-<n>.log`.
    fn drop(&mut self) {
        if self.log_messages {
            static RUNS: AtomicU64 = AtomicU64::new(0);
            let n = RUNS.fetch_add(1, Ordering::SeqCst);
            let path = std::env::temp_dir().join(format!("p2p-sim-{}-{n}.log", self.seed));
            if std::fs::write(&path, self.trace.dump()).is_ok() {
                eprintln!("   trace: {}", path.display());
            }
        }
    }
}

/// A [`NatUdp`] at [`PEER_PORT`] behind `nat`: each mapping's socket is a [`SimUdp`],
/// wrapped as [`Net::bind`] wraps a host's, with a fault seed of its own.
async fn bind_behind_nat(
    nat: NatHandle,
    faults: Option<FaultConfig>,
    stats: SharedStats,
    log: Option<(Trace, String)>,
    events: Option<(Trace, String)>,
) -> io::Result<SharedTransport> {
    let bind_port: BindPort = Arc::new(move |port| {
        let faults = faults.clone().map(|mut f| {
            f.seed = mix(f.seed, &format!("nat port {port}"));
            f
        });
        let (stats, log) = (stats.clone(), log.clone());
        Box::pin(async move { Net::Udp.bind(port, faults, stats, log).await })
    });
    let private = SocketAddr::from(([0, 0, 0, 0], PEER_PORT));
    let t = NatUdp::bind(private, nat, bind_port, SIM_UDP_MESSAGE, events).await?;
    Ok(Arc::new(t))
}

/// A relay event as the trace records it (without the session id, a secret).
fn describe_relay(e: &RelayEvent) -> String {
    match e {
        RelayEvent::Opened { from, name, .. } => format!("relay opened: {from} to {name}"),
        RelayEvent::Refused { name, reason, .. } => format!("relay refused {name}: {reason}"),
        RelayEvent::Closed {
            name,
            reason,
            forwarded,
            ..
        } => format!("relay to {name} closed ({reason:?}) after {forwarded} bytes"),
    }
}

fn describe(e: &TrackerEvent) -> String {
    match e {
        TrackerEvent::Registered { name, .. } => format!("registered {name}"),
        TrackerEvent::Refused { name, reason, .. } => format!("refused {name}: {reason}"),
        TrackerEvent::Unregistered { name } => format!("unregistered {name}"),
        TrackerEvent::Expired { name } => format!("expired {name}"),
    }
}

/// The tracker's address (call inside the simulation).
pub fn tracker_addr() -> SocketAddr {
    SocketAddr::new(turmoil::lookup(TRACKER), TRACKER_PORT)
}

/// Where peer `host` listens (call inside the simulation).
pub fn peer_addr(host: &str) -> SocketAddr {
    SocketAddr::new(turmoil::lookup(host), PEER_PORT)
}

/// The IP of `host` (call inside the simulation).
pub fn host_ip(host: &str) -> IpAddr {
    turmoil::lookup(host)
}

/// Looks `path` up in `from`'s index (through `via`'s endpoint) and downloads it into
/// `dest`.
pub async fn fetch(
    via: &EndpointHandle,
    from: &str,
    path: &str,
    dest: &Path,
) -> Result<DownloadReport, ServiceError> {
    let peer = peer_addr(from);
    let entry = find_entry(via, peer, path).await?;
    via.download(peer, entry, dest.to_path_buf(), None).await
}

/// Like [`fetch`], but runs the download in a task of the calling client and returns at
/// once with the task and the download's progress.
pub async fn spawn_fetch(
    via: &EndpointHandle,
    from: &str,
    path: &str,
    dest: &Path,
) -> Result<(FetchTask, watch::Receiver<Progress>), ServiceError> {
    let peer = peer_addr(from);
    let entry = find_entry(via, peer, path).await?;
    let (tx, rx) = watch::channel(Progress::default());
    let (via, dest) = (via.clone(), dest.to_path_buf());
    let task = tokio::spawn(async move { via.download(peer, entry, dest, Some(tx)).await });
    Ok((task, rx))
}

/// A download running in a client task.
pub type FetchTask = tokio::task::JoinHandle<Result<DownloadReport, ServiceError>>;

/// Waits (in simulated time) until `progress` shows at least `bytes` received; false when the
/// download ended first (its sender side was dropped) or `limit` passed.
pub async fn wait_progress(
    progress: &mut watch::Receiver<Progress>,
    bytes: u64,
    limit: Duration,
) -> bool {
    let wait = async {
        loop {
            if progress.borrow_and_update().received >= bytes {
                return true;
            }
            if progress.changed().await.is_err() {
                return false;
            }
        }
    };
    tokio::time::timeout(limit, wait).await.unwrap_or(false)
}

/// `path`'s entry in the index of the peer at `peer`.
pub async fn find_entry(
    via: &EndpointHandle,
    peer: SocketAddr,
    path: &str,
) -> Result<IndexEntry, ServiceError> {
    let (_, entries) = via.index(peer).await?;
    entries
        .into_iter()
        .find(|e| e.path == path)
        .ok_or_else(|| ServiceError::Refused(format!("{peer} does not share {path}")))
}
