//! Reaching the network: endpoints for the commands, the tracker's list, a peer over its
//! own transport, and where downloads go.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use p2p_core::index::safe_file_name;
use p2p_core::secure::{SecureError, SecureSettings};
use p2p_core::service::{
    spawn_endpoint, EndpointConfig, EndpointHandle, FoundPeer, Punched, ServiceError,
};
use p2p_core::transport::{SharedTransport, Transport};
use p2p_proto::secure::SEALED_ONLY;
use p2p_proto::wire::{FileId, IndexEntry, PeerInfo, TransportKind};
use p2p_transports::{TcpConfig, TcpTransport, UdpTransport};

use crate::failure::{fail, failure, Kind, WithKind};
use crate::output::{clean, nfc};

/// A seed for transfer ids that differs between runs.
pub(crate) fn random_seed() -> u64 {
    rand::random::<u64>() >> 1
}

/// Where the tracker's key a client pins came from: what a wrong key's error names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyFrom {
    /// `--tracker-key` (or its variable or config entry).
    Flag,
    /// A `p2p3` ticket.
    Ticket,
}

/// Starts an endpoint of `kind` on `bind`, sharing `share` if given.
pub(crate) async fn endpoint(
    kind: TransportKind,
    bind: SocketAddr,
    share: Option<PathBuf>,
    net: p2p_transports::NetConfig,
    tune: impl FnOnce(&mut EndpointConfig),
) -> Result<EndpointHandle> {
    endpoint_keyed(kind, bind, share, net, KeyFrom::Flag, tune).await
}

/// [`endpoint`], its tracker's key (if `tune` pins one) taken from `key_from`.
pub(crate) async fn endpoint_keyed(
    kind: TransportKind,
    bind: SocketAddr,
    share: Option<PathBuf>,
    net: p2p_transports::NetConfig,
    key_from: KeyFrom,
    tune: impl FnOnce(&mut EndpointConfig),
) -> Result<EndpointHandle> {
    let transport = p2p_transports::bind_with(kind, bind, net)
        .await
        .with_context(|| format!("cannot listen on {bind} ({kind})"))?;
    let mut config = EndpointConfig {
        share,
        id_seed: random_seed(),
        ..EndpointConfig::default()
    };
    tune(&mut config);
    let pinned = config
        .secure
        .as_ref()
        .map(|s| s.pinned.clone())
        .unwrap_or_default();
    let (handle, _task) =
        spawn_endpoint(transport, kind, config).context("cannot read the share folder")?;
    // A tracker whose key was given: its session first, so that a wrong key or a tracker
    // without --secure is told as such (the requests would wait for it anyway).
    for (tracker, key) in pinned {
        if let Err(e) = handle.connect(tracker, Some(key)).await {
            let why = match e {
                ServiceError::Secure {
                    error: SecureError::Timeout { .. },
                    ..
                } => format!(
                    "the tracker at {tracker} does not answer a sealed session: is it running \
                     with --secure? (without --tracker-key it is asked in plaintext)"
                ),
                ServiceError::Secure {
                    error: SecureError::WrongKey { got, .. },
                    ..
                } => {
                    let (named_by, hint) = match key_from {
                        KeyFrom::Flag => ("--tracker-key", "check the key it printed at start"),
                        KeyFrom::Ticket => (
                            "the ticket",
                            "the ticket is stale (a tracker set up anew) or forged: ask the \
                             sharer for a new one",
                        ),
                    };
                    format!(
                        "the tracker at {tracker} proves the key {} where {named_by} names {}: \
                         {hint}",
                        crate::dht::record::hex(&got),
                        crate::dht::record::hex(&key)
                    )
                }
                other => format!("no sealed session with the tracker at {tracker}: {other}"),
            };
            handle.shutdown().await;
            return Err(failure(Kind::Secure, why));
        }
    }
    Ok(handle)
}

/// Has `config` talk to `tracker` in a sealed session proving `key` only (`--tracker-key`),
/// with its secure settings if it has some, else with a fresh key of its own that seals
/// nothing else.
pub(crate) fn pin_tracker(
    config: &mut EndpointConfig,
    tracker: SocketAddr,
    key: Option<p2p_proto::identity::PublicKey>,
) {
    let Some(key) = key else { return };
    let secure = config.secure.get_or_insert_with(|| SecureSettings {
        seal_requests: false,
        ..SecureSettings::new(p2p_proto::identity::Identity::from_secret(rand::random()))
    });
    secure.pinned.push((tracker, key));
}

/// An ephemeral client endpoint of `kind` on the loopback or any interface, in `to`'s
/// address family ([`client_bind`](crate::address::client_bind)).
pub(crate) async fn client(kind: TransportKind, to: SocketAddr) -> Result<EndpointHandle> {
    client_with(kind, to, |_| {}).await
}

/// A client endpoint for talking to the tracker `t` names (sealed, with `--tracker-key`).
pub(crate) async fn tracker_client(t: &crate::cli::TrackerOpts) -> Result<EndpointHandle> {
    let (tracker, key) = (t.tracker, t.tracker_key);
    client_with(t.transport, tracker, |c| pin_tracker(c, tracker, key)).await
}

/// [`client`], with its configuration adjusted by `tune`.
pub(crate) async fn client_with(
    kind: TransportKind,
    to: SocketAddr,
    tune: impl FnOnce(&mut EndpointConfig),
) -> Result<EndpointHandle> {
    let bind = crate::address::client_bind(to);
    endpoint(kind, bind, None, Default::default(), tune).await
}

/// Where a command runs, for hints that name what the user can type there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A `p2p` command line.
    Cli,
    /// The peer's interactive menu.
    Menu,
}

impl Mode {
    /// How to see who is online.
    fn list_peers(self) -> &'static str {
        match self {
            Mode::Cli => "run `p2p peers`",
            Mode::Menu => "type `r`",
        }
    }
}

/// Looks `name` up at the tracker (`Lookup`: one round trip), or, from a tracker too old
/// to answer that, in its whole list; with the identity key the tracker bound the name to.
pub(crate) async fn find_peer(
    via: &EndpointHandle,
    tracker: SocketAddr,
    name: &str,
    mode: Mode,
) -> Result<FoundPeer> {
    let unreachable = || {
        match mode {
        Mode::Cli => format!(
            "cannot reach the tracker at {tracker} (start one with `p2p tracker`, or pass --tracker ADDR)"
        ),
        Mode::Menu => format!(
            "cannot reach the tracker at {tracker} (is it still running? this peer was started with --tracker {tracker})"
        ),
    }
    };
    let wanted = nfc(name);
    let found = match via.lookup(tracker, &wanted).await {
        Ok(found) => found,
        Err(ServiceError::NoAnswer(_) | ServiceError::Protocol(_)) => {
            let peers = via
                .list_peers(tracker)
                .await
                .with_kind(Kind::TrackerUnreachable, unreachable)?;
            peers
                .into_iter()
                .find(|p| *p.name == *wanted)
                .map(|info| FoundPeer { info, key: None })
        }
        Err(e) => return Err(e).with_kind(Kind::TrackerUnreachable, unreachable),
    };
    match found {
        Some(p) => Ok(p),
        None => fail!(
            Kind::UnknownPeer,
            "unknown peer `{}`: {} to see who is online",
            clean(name),
            mode.list_peers()
        ),
    }
}

/// A punch asked for in the same flight as the lookup (see [`find_and_punch`]): what it
/// found, from the endpoint it was asked from.
pub(crate) struct EarlyPunch {
    from: EndpointHandle,
    found: Result<Punched, ServiceError>,
}

/// [`find_peer`] through `via`, and, over UDP to a tracker on another host, the hole punch
/// toward `name` asked for at the same time (`Introduce` goes padded, like the lookup, and
/// is answered at once): the punch costs no round trip of its own. [`route_to`] takes it
/// when it routes from `via`. Toward a tracker on this host the peers are most likely here
/// too (reached directly): no introduction is asked for.
pub(crate) async fn find_and_punch(
    via: &EndpointHandle,
    tracker: SocketAddr,
    name: &str,
    mode: Mode,
) -> Result<(FoundPeer, Option<EarlyPunch>)> {
    if via.kind() != TransportKind::Udp || tracker.ip().is_loopback() {
        return Ok((find_peer(via, tracker, name, mode).await?, None));
    }
    let wanted = nfc(name);
    let punch = async {
        Ok(EarlyPunch {
            from: via.clone(),
            found: via.punch(tracker, &wanted).await,
        })
    };
    // A failed lookup ends it at once: the punch is not waited for.
    let (found, early) = tokio::try_join!(find_peer(via, tracker, name, mode), punch)?;
    Ok((found, Some(early)))
}

/// How a peer is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// At the address the tracker lists.
    Direct,
    /// Through a hole punched in both NATs with the tracker's introduction.
    Punched,
    /// Through the tracker's relay: every datagram goes to the tracker and back out.
    Relayed,
}

impl Route {
    /// As `get --json` reports it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Punched => "punched",
            Route::Relayed => "relayed",
        }
    }
}

/// How long the listed address of a peer no hole was punched to is given to answer before
/// the tracker's relay is asked for.
const DIRECT_WAIT: std::time::Duration = std::time::Duration::from_millis(1500);

/// Finds a way from `handle` to the peer `info` before anything else is sent to it, and
/// points `info.addr` at it. Peers on this machine (a loopback address) are reached
/// directly. A UDP peer: through a hole punched in both NATs (see
/// [`EndpointHandle::punch`]). If that fails, and for a TCP peer: at its listed address if
/// it answers there within [`DIRECT_WAIT`], else through the tracker's relay
/// ([`EndpointHandle::relay`]: a symmetric NAT, UDP blocked, a TCP peer behind a NAT). When
/// the relay refuses too, the listed address is what is left (and the error of the
/// download says it does not answer).
///
/// `early`: a punch already asked for with the lookup ([`find_and_punch`]), taken if it was
/// asked from `handle`.
pub(crate) async fn route_to(
    handle: &EndpointHandle,
    tracker: SocketAddr,
    info: &mut PeerInfo,
    early: Option<EarlyPunch>,
) -> Route {
    if info.addr.ip().is_loopback() {
        return Route::Direct;
    }
    if info.transport == TransportKind::Udp {
        let early = early.filter(|e| e.from.same_endpoint(handle));
        let punched = match early {
            Some(e) => e.found,
            None => handle.punch(tracker, &info.name).await,
        };
        match punched {
            Ok(Punched::Open(at)) => {
                tracing::debug!(peer = %clean(&info.name), %at, "hole punched");
                info.addr = at;
                return Route::Punched;
            }
            Ok(Punched::NotListed) => return Route::Direct,
            Err(e) => {
                tracing::info!(peer = %clean(&info.name), error = %e, "no hole punched");
            }
        }
    }
    if answers(handle, info.addr).await {
        return Route::Direct;
    }
    match handle.relay(tracker, &info.name).await {
        Ok(at) => {
            tracing::info!(peer = %clean(&info.name), "reached through the tracker's relay");
            info.addr = at;
            Route::Relayed
        }
        Err(e) => {
            // Said before the failure it most likely leads to, which names the address.
            eprintln!(
                "note: peer `{}` answers neither directly nor through a punched hole, and the \
                 tracker did not relay: {}",
                clean(&info.name),
                clean(&e.to_string())
            );
            Route::Direct
        }
    }
}

/// Whether the peer at `addr` answers a plaintext request (any answer) within
/// [`DIRECT_WAIT`], asked from a plain client endpoint of its own (`--secure` wants to know
/// whether a peer that does not answer a handshake answers at all).
pub(crate) async fn answers_plaintext(kind: TransportKind, addr: SocketAddr) -> bool {
    match client(kind, addr).await {
        Ok(plain) => {
            let answered = answers(&plain, addr).await;
            plain.shutdown().await;
            answered
        }
        Err(_) => false,
    }
}

/// The error of a peer that takes sealed sessions only, for a plain client: what to do.
fn sealed_only(name: &str) -> anyhow::Error {
    failure(
        Kind::Secure,
        format!(
            "peer `{}` accepts sealed sessions only: add --secure",
            clean(name)
        ),
    )
}

/// Whether the peer at `addr` answers a request (any answer) within [`DIRECT_WAIT`].
async fn answers(handle: &EndpointHandle, addr: SocketAddr) -> bool {
    let ask = handle.entry(addr, p2p_proto::wire::FileId(0));
    matches!(
        tokio::time::timeout(DIRECT_WAIT, ask).await,
        Ok(Ok(_) | Err(ServiceError::Refused(_)))
    )
}

/// A peer found through the tracker, and an endpoint that speaks its transport.
pub(crate) struct Reached {
    pub(crate) handle: EndpointHandle,
    pub(crate) info: PeerInfo,
}

/// Looks `name` up through `via` and returns an endpoint for it: `via` itself when it speaks
/// the peer's transport, else a new client endpoint tuned by `tune`.
pub(crate) async fn reach(
    via: &EndpointHandle,
    tracker: SocketAddr,
    name: &str,
    mode: Mode,
    tune: impl FnOnce(&mut EndpointConfig),
) -> Result<Reached> {
    let (FoundPeer { mut info, .. }, early) = find_and_punch(via, tracker, name, mode).await?;
    // `via` was opened to reach the tracker: it reaches the peer too if the peer listens on
    // the same transport in the same address family (an IPv4 socket cannot reach IPv6).
    let handle = if info.transport == via.kind() && info.addr.is_ipv4() == tracker.is_ipv4() {
        via.clone()
    } else {
        client_with(info.transport, info.addr, tune).await?
    };
    route_to(&handle, tracker, &mut info, early).await;
    Ok(Reached { handle, info })
}

impl Reached {
    /// The peer's entry for file `id`: asked for alone (one round trip, whatever the size of
    /// the share), then, if it is not in the peer's index as it stands, looked for in a full
    /// listing (which has the peer rescan its folder first).
    pub(crate) async fn entry(&self, id: FileId) -> Result<Option<IndexEntry>> {
        match self.handle.entry(self.info.addr, id).await {
            Ok(Some(entry)) if entry.id == id => return Ok(Some(entry)),
            Err(ServiceError::Refused(r)) if r == SEALED_ONLY => {
                return Err(sealed_only(&self.info.name))
            }
            // No answer: the listing would get none either.
            Err(e @ ServiceError::NoAnswer(_)) => {
                return Err(e).with_kind(Kind::PeerUnreachable, || {
                    format!(
                        "peer `{}` at {} does not answer; it may have just left",
                        clean(&self.info.name),
                        self.info.addr
                    )
                })
            }
            _ => {}
        }
        let (_, entries) = self.index().await?;
        Ok(entries.into_iter().find(|e| e.id == id))
    }

    /// The peer's share name and index.
    pub(crate) async fn index(&self) -> Result<(String, Vec<IndexEntry>)> {
        let listing = self.handle.index(self.info.addr).await;
        if matches!(&listing, Err(ServiceError::Refused(r)) if r == SEALED_ONLY) {
            return Err(sealed_only(&self.info.name));
        }
        listing.with_kind(Kind::PeerUnreachable, || {
            format!(
                "peer `{}` at {} does not answer; it may have just left",
                clean(&self.info.name),
                self.info.addr
            )
        })
    }
}

/// Where a download of `path` goes in `dir`; creates `dir`.
pub(crate) fn dest_for(dir: &Path, path: &str) -> Result<PathBuf> {
    let name = safe_file_name(path).with_context(|| {
        format!(
            "the peer announced an unsafe file name `{}`; refusing",
            clean(path)
        )
    })?;
    create_folder(dir, "the download folder")?;
    Ok(dir.join(name))
}

/// Fails (of kind [`Kind::NotAFolder`]) when `dir`, or a folder above it, is a file: `what`
/// (e.g. `--out`) says which option named it. A missing `dir` is fine: it is created later.
pub(crate) fn check_folder(dir: &Path, what: &str) -> Result<()> {
    for above in dir.ancestors().filter(|a| !a.as_os_str().is_empty()) {
        match std::fs::metadata(above) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) if above == dir => fail!(
                Kind::NotAFolder,
                "{what} {} is a file, not a folder: pass a folder (it is created if missing)",
                dir.display()
            ),
            Ok(_) => fail!(
                Kind::NotAFolder,
                "{what} {}: {} is a file, not a folder: pass a folder (it is created if missing)",
                dir.display(),
                above.display()
            ),
            Err(_) => {}
        }
    }
    Ok(())
}

/// Creates `dir` (and the folders above it), saying which path is a file when one is.
pub(crate) fn create_folder(dir: &Path, what: &str) -> Result<()> {
    check_folder(dir, what)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {what} {}", dir.display()))
}

/// Fails (of kind [`Kind::NotAFolder`]) unless `dir` is an existing folder, for a folder to
/// share given by `flag` (`--share`).
pub(crate) fn check_share(dir: &Path, flag: &str) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(failure(
            Kind::NotAFolder,
            format!(
                "the share folder {} is a file, not a folder: pass a folder with {flag} DIR",
                dir.display()
            ),
        )),
        Err(_) => Err(failure(
            Kind::NotAFolder,
            format!(
                "the share folder {} does not exist: create it (mkdir -p {}) or pass {flag} DIR",
                dir.display(),
                dir.display()
            ),
        )),
    }
}

/// An error binding `addr` for `flag` (`--port`, `--listen`): a port in use says so and what
/// to do, anything else is left as it is.
pub(crate) fn bind_error(e: anyhow::Error, addr: SocketAddr, flag: &str) -> anyhow::Error {
    let in_use = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
    });
    if in_use {
        failure(
            Kind::PortInUse,
            format!(
                "another program listens on {}: pick another {flag}",
                addr.port()
            ),
        )
    } else {
        e
    }
}

/// Binds UDP and TCP on the same port (when the port is 0, retries until one fits both).
pub(crate) async fn bind_both(
    listen: std::net::SocketAddr,
    tcp_config: TcpConfig,
) -> Result<(SharedTransport, SharedTransport)> {
    let mut last_err = None;
    for _ in 0..20 {
        let udp = UdpTransport::bind(listen)
            .await
            .with_context(|| {
                format!("cannot listen on {listen}/udp (is another tracker running? try --listen)")
            })
            .map_err(|e| bind_error(e, listen, "--listen"))?;
        let addr = udp.local_addr()?;
        match TcpTransport::bind(addr, tcp_config.clone()).await {
            Ok(tcp) => return Ok((Arc::new(udp), Arc::new(tcp))),
            Err(e) if listen.port() == 0 => last_err = Some(e),
            Err(e) => {
                let e = anyhow::Error::new(e).context(format!(
                    "cannot listen on {addr}/tcp (is another tracker running? try --listen)"
                ));
                return Err(bind_error(e, addr, "--listen"));
            }
        }
    }
    Err(last_err.expect("tried")).context("no free port for both UDP and TCP")
}
