//! The peer endpoint: one tokio task that owns a transport and every state machine on it.
//!
//! It serves the share folder (index pages, file transfers as [`ChunkSender`]s), runs
//! downloads ([`ChunkReceiver`]s writing to a temporary file that is renamed only once the
//! BLAKE3 hash matches), sends requests to the tracker and other peers with retries, and keeps
//! its tracker registration alive with heartbeats. The application talks to it through a
//! cloneable [`EndpointHandle`].
//!
//! The loop is: drain every machine's transmits, then wait for the first of a command, an
//! incoming message or the earliest machine deadline.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::lock::LockError;
pub use super::resume::{partial_path, Discarded};
use crate::index::ShareIndex;
use crate::limits::RateConfig;
use crate::relay::{RelaySessions, RelayTransport};
use crate::secure::{SecureError, SecureSettings, SecureTransport};
use crate::transfer::{PieceTable, ReceiverConfig, SenderConfig, TransferError};
use crate::transport::SharedTransport;
use crate::wire::{
    ContentHash, IndexEntry, Message, RegisterOutcome, RequestId, TransportKind, DATA_OVERHEAD,
    MAX_CHUNK,
};
use p2p_proto::identity::PublicKey;

mod content;
mod download;
mod driver;
mod finish;
mod hashing;
mod listing;
mod partials;
mod punch;
mod rpc;
mod upload;

use super::storage::{Disk, FileHandle, SharedStorage};
use driver::Driver;
use hashing::HashWorker;
use p2p_proto::endpoint::{Endpoint, EndpointConfig as ProtoConfig};
use rpc::Replies;
use upload::Batch;

pub use listing::{FoundPeer, HeldEntry};
use partials::Partials;
pub use partials::{PartialServed, NOT_HELD};
pub use punch::Punched;

/// Settings of an endpoint.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Folder to share; `None` serves nothing (one-shot clients).
    pub share: Option<PathBuf>,
    /// Sender tunables (the chunk size is fitted to the transport).
    pub sender: SenderConfig,
    /// Receiver tunables.
    pub receiver: ReceiverConfig,
    /// Most transfers served at once.
    pub max_uploads: usize,
    /// Most transfers served at once to one IP address.
    pub max_uploads_per_peer: usize,
    /// With requests waiting for a slot, how long an upload holds its slot before it lends
    /// it to the next in line and waits for another turn (zero: to the end).
    pub upload_turn: Duration,
    /// Rate limit of requests (index, piece hashes, new transfers) per source IP.
    pub rate: RateConfig,
    /// A download records its verified prefix (flush, sync, state file) every this many bytes
    /// or every [`SAVE_INTERVAL`], whichever comes first. Recording runs on a blocking thread,
    /// never in the way of the network.
    pub save_every: u64,
    /// Downloads sync to disk (`fsync`): each checkpoint before it is recorded, and the
    /// finished file before it takes its final name, so that not even a power cut leaves a
    /// torn file under that name. Off, files are as durable as the page cache (like `cp`): a
    /// crashed process loses nothing, a power cut may lose the file (never to a corrupt
    /// resume: unsynced checkpoints are dropped after a restart).
    pub fsync: bool,
    /// A download reserves the disk space of the whole file when it starts (see
    /// [`StoredFile::allocate`](crate::service::storage::StoredFile::allocate)): a disk too small fails it at once, with nothing left behind,
    /// instead of after most of the file was fetched. Off, space is taken as bytes arrive.
    pub preallocate: bool,
    /// Cap on the bytes per second sent by all uploads together (`None`: no cap).
    pub max_upload_rate: Option<u64>,
    /// First wait before a request is sent again.
    pub rpc_retry: Duration,
    /// Sends of a request before it fails.
    pub rpc_attempts: u32,
    /// Seed of transfer and request ids, so that a restarted endpoint does not reuse the ids
    /// of its previous life (pass something random; simulations pass their seed).
    pub id_seed: u64,
    /// The peer's identity key: its name requests to trackers go signed, so that the name it
    /// registers is bound to it (see [`p2p_proto::identity`]). `None`: unsigned, as peers
    /// without one always were.
    pub identity: Option<p2p_proto::identity::Identity>,
    /// Encrypted, authenticated traffic with peers ([`crate::secure`]): `Some`, the
    /// endpoint's transport is wrapped in a [`SecureTransport`], peers that start a secure
    /// session are answered, and (with [`SecureSettings::seal_requests`]) the client side
    /// makes one with a peer (a handshake, see [`EndpointHandle::connect`]) before its first
    /// peer-to-peer request to it. `None` (the default): everything plaintext, as before.
    pub secure: Option<SecureSettings>,
    /// Downloads hash their pieces on a thread of the endpoint's own, so that the I/O task
    /// (receive, write) and the hashing run on two cores. Off, pieces are hashed on the I/O
    /// task; simulations turn it off, as a thread's timing is not the simulated clock's.
    pub hash_thread: bool,
    /// A download whose last piece is verified is finished (flushed, synced with `fsync`,
    /// given its final name) on a blocking thread, so that the I/O task goes on serving
    /// other transfers meanwhile: syncing a large file takes seconds. Off, on the I/O task
    /// (simulations, for the simulated clock).
    pub finish_thread: bool,
    /// A request for the first page of our index is answered after a rescan of the share
    /// folder on a blocking thread, so that walking a large share and hashing new files never
    /// hold up the I/O task; requests that come while a scan runs share the next one. Off, on
    /// the I/O task (simulations, for the simulated clock).
    pub rescan_thread: bool,
    /// Checkpoints (sync the partial file, write the state file) are recorded on a blocking
    /// thread. Off, on the I/O task once [`Storage::sync_delay`](super::storage::Storage::sync_delay) has passed (simulations, for
    /// the simulated clock).
    pub checkpoint_thread: bool,
    /// Where downloads and uploads read and write files: the real disk, or a simulated one.
    pub storage: SharedStorage,
    /// Where to tell of uploads starting and ending (for the sharer's terminal); notices are
    /// dropped when the reader falls behind, never waited for.
    pub upload_notices: Option<tokio::sync::mpsc::Sender<UploadNotice>>,
}

/// What became of an upload (see [`EndpointConfig::upload_notices`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UploadNotice {
    /// A peer started downloading one of our files.
    Started {
        /// Who.
        peer: SocketAddr,
        /// The file, as listed (relative to the share folder; from our own index).
        path: String,
        /// Its size.
        size: u64,
        /// Where the download starts (greater than 0: a resume).
        offset: u64,
    },
    /// It has the whole file, verified.
    Finished {
        /// Who.
        peer: SocketAddr,
        /// The file.
        path: String,
        /// Bytes sent in this upload (from its offset on).
        bytes: u64,
        /// How long it took.
        elapsed: Duration,
    },
    /// It ended before that.
    Failed {
        /// Who.
        peer: SocketAddr,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            share: None,
            sender: SenderConfig::default(),
            receiver: ReceiverConfig::default(),
            max_uploads: 32,
            max_uploads_per_peer: 8,
            upload_turn: p2p_proto::endpoint::DEFAULT_UPLOAD_TURN,
            rate: RateConfig::default(),
            save_every: 64 * 1024 * 1024,
            fsync: true,
            preallocate: true,
            max_upload_rate: None,
            rpc_retry: Duration::from_millis(250),
            rpc_attempts: 5,
            id_seed: 0,
            identity: None,
            secure: None,
            hash_thread: true,
            finish_thread: true,
            rescan_thread: true,
            checkpoint_thread: true,
            storage: Disk::shared(),
            upload_notices: None,
        }
    }
}

/// Why an endpoint operation failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ServiceError {
    /// No answer after every retry.
    #[error("no answer from {0} (is it running and reachable?)")]
    NoAnswer(SocketAddr),
    /// The other side refused.
    #[error("{0}")]
    Refused(String),
    /// The transfer failed.
    #[error("transfer failed: {0}")]
    Transfer(#[from] TransferError),
    /// A local file operation failed.
    #[error(transparent)]
    Io(IoFailure),
    /// The disk has no room for the rest of a download (it was refused before any transfer).
    #[error("not enough disk space in {} for the {needed} bytes left to fetch ({message}); free some space and run the download again", folder.display())]
    NoSpace {
        /// The folder of the download.
        folder: PathBuf,
        /// Bytes that would have been written.
        needed: u64,
        /// What the system said.
        message: String,
    },
    /// A file with other content took the destination's name while the download ran; the
    /// download was dropped, nothing is left to resume.
    #[error("{} already exists with other content; move it away or choose another --out", .0.display())]
    DestinationDiffers(PathBuf),
    /// The download stopped; its verified prefix is kept for a resume.
    #[error("{cause}; {kept} verified bytes kept in {}: run the same download again to resume", partial.display())]
    Incomplete {
        /// Why it stopped.
        cause: Box<ServiceError>,
        /// Verified bytes kept.
        kept: u64,
        /// The partial file.
        partial: PathBuf,
    },
    /// Another download (in this process or another) is writing the same destination.
    #[error(transparent)]
    Locked(LockError),
    /// The destination appeared (another download finished it, or something else put a file
    /// there) before this download claimed it; nothing was transferred.
    #[error("{} already exists", .0.display())]
    DestinationExists(PathBuf),
    /// The other side answered nonsense.
    #[error("unexpected answer from {0}")]
    Protocol(SocketAddr),
    /// The other side announced more than this endpoint takes (a lying or broken peer).
    #[error("{peer} announces more {what} than the {limit} this peer takes; refused")]
    TooLarge {
        /// Who announced it.
        peer: SocketAddr,
        /// Of what.
        what: &'static str,
        /// The most taken.
        limit: u64,
    },
    /// The endpoint has stopped.
    #[error("the endpoint has stopped")]
    Closed,
    /// No secure session with a peer: its handshake failed, or it proved another key than
    /// the one expected ([`SecureError::WrongKey`]).
    #[error("secure channel to {peer}: {error}")]
    Secure {
        /// The peer.
        peer: SocketAddr,
        /// Why.
        error: SecureError,
    },
}

/// Most pages of one peer's index a listing takes (a share of 100,000 files is a few
/// thousand pages).
pub const MAX_INDEX_PAGES: u32 = 100_000;
/// Times a listing starts over when the peer's page count changes under it.
const INDEX_RESTARTS: u32 = 3;
/// Most files of one peer's index a listing takes (twice what a share indexes).
pub const MAX_INDEX_ENTRIES: usize = 200_000;
/// Most pieces a download takes (32 MiB of hashes: a 256 GiB file at 256 KiB pieces).
pub const MAX_PIECES: u64 = 1 << 20;

/// Pages of a piece table (or an index, or a list of holders) asked for at once: the table
/// of a file up to 1 GiB (4,096 pieces, 128 pages) in one round trip, however long it is.
/// The pages after the first cost a 64th of a request of the sender's per-address rate
/// limit, so 128 in flight cost two requests of its burst (about 140 KB of answers).
pub const PIECE_PAGES_IN_FLIGHT: usize = 128;

/// One page of a piece table, as checked by `EndpointHandle::piece_page`.
struct PiecePage {
    piece_size: u32,
    pieces: u32,
    first: u32,
    hashes: Vec<ContentHash>,
}

/// A download records its verified prefix at least this often.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// Progress of a download.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the file present so far (a resumed download starts above 0).
    pub received: u64,
    /// Bytes recorded as verified in the state file (what a resume would keep).
    pub saved: u64,
    /// Total bytes, once the sender accepted.
    pub total: Option<u64>,
    /// Before that: the request waits in the sender's line behind this many others.
    pub queued: Option<u32>,
    /// End of the verified prefix of this transfer's bytes (absolute; written to the file,
    /// not necessarily synced). Kept up to date for a range ([`EndpointHandle::fetch_range`]).
    pub verified: u64,
}

/// A completed, verified download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloadReport {
    /// Where the file now is.
    pub path: PathBuf,
    /// File size.
    pub size: u64,
    /// Bytes received over the network for it.
    pub received: u64,
    /// Its verified BLAKE3.
    pub hash: ContentHash,
    /// Time from request to verified file.
    pub elapsed: Duration,
    /// Time from request to the first byte received (`None`: nothing was left to fetch).
    pub first_byte: Option<Duration>,
    /// Byte the transfer started at (non-zero: resumed from a partial download).
    pub resumed_from: u64,
    /// A stale partial download found and discarded, and why.
    pub discarded: Option<Discarded>,
    /// Times a piece failed its hash check and the download went on from the end of the
    /// verified part ([`PIECE_REFETCHES`] at most). `resumed_from`, `received` and `elapsed`
    /// then describe the last attempt, from the end of the verified part to the verified
    /// file (so that their rate is that attempt's).
    pub refetched: u32,
}

/// A download whose piece fails its hash check fetches the file again from the end of its
/// verified part, at most this many times, before it fails: a chunk whose payload only the
/// piece hashes check (a large datagram, see `Transport::sends_file`) and that was damaged
/// past the UDP checksum costs a piece, not the download. A sender whose file no longer
/// matches its index fails every time.
pub const PIECE_REFETCHES: u32 = 3;

impl ServiceError {
    /// The piece that failed its hash check, when that is why a download stopped.
    pub fn bad_piece(&self) -> Option<u64> {
        match self.cause() {
            ServiceError::Transfer(TransferError::PieceMismatch { piece }) => Some(*piece),
            _ => None,
        }
    }

    /// Why it failed, past the verified bytes a download kept ([`ServiceError::Incomplete`]).
    pub fn cause(&self) -> &ServiceError {
        match self {
            ServiceError::Incomplete { cause, .. } => cause.cause(),
            other => other,
        }
    }
}

/// A local file operation that failed: which, on what, and what the system said.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("cannot {op} {}: {message}", path.display())]
pub struct IoFailure {
    /// What was being done.
    pub op: IoOp,
    /// The file it was done to.
    pub path: PathBuf,
    /// The error's kind.
    pub kind: io::ErrorKind,
    /// The error as the system worded it.
    pub message: String,
}

impl IoFailure {
    /// `op` on `path` failed with `err`.
    pub fn new(op: IoOp, path: &Path, err: &io::Error) -> Self {
        IoFailure {
            op,
            path: path.to_path_buf(),
            kind: err.kind(),
            message: err.to_string(),
        }
    }
}

/// The file operations of a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Creating, opening or writing the partial file.
    Write,
    /// Recording the verified prefix in the state file beside the partial.
    RecordProgress,
    /// Flushing (and syncing) the finished file.
    Finish,
    /// Giving the verified file its final name.
    Publish,
}

impl std::fmt::Display for IoOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoOp::Write => "write",
            IoOp::RecordProgress => "record progress beside",
            IoOp::Finish => "write the downloaded file",
            IoOp::Publish => "move the file into",
        })
    }
}

enum Command {
    Rpc {
        to: SocketAddr,
        msg: Message,
        reply: oneshot::Sender<Result<Message, ServiceError>>,
    },
    KeepRegistered {
        tracker: SocketAddr,
        name: String,
        port: u16,
        transport: TransportKind,
        every: Duration,
    },
    Download {
        peer: SocketAddr,
        entry: IndexEntry,
        dest: PathBuf,
        table: PieceTable,
        progress: watch::Sender<Progress>,
        reply: oneshot::Sender<Result<DownloadReport, ServiceError>>,
    },
    Range {
        job: RangeJob,
        progress: watch::Sender<Progress>,
        reply: oneshot::Sender<Result<DownloadReport, ServiceError>>,
    },
    /// Looks at the ranges whose caller cancelled them (nothing else to do).
    Poke,
    /// The downloads in progress served changed: announce the content hashes again.
    Reannounce,
    Shutdown {
        done: oneshot::Sender<()>,
    },
    Punch {
        tracker: SocketAddr,
        name: String,
        reply: oneshot::Sender<Result<Message, ServiceError>>,
    },
}

/// One source's share of a multi-source download ([`EndpointHandle::fetch_range`]): bytes
/// `range` of `entry` (as `peer` lists it), checked against `table`, written into `file` at
/// their own offsets.
#[derive(Clone, Debug)]
pub struct RangeJob {
    /// The source.
    pub peer: SocketAddr,
    /// The file, as the source lists it (its id there; size and hash are the content's).
    pub entry: IndexEntry,
    /// The content's piece table (checked against its hash).
    pub table: PieceTable,
    /// The partial file, shared by every range of the download.
    pub file: FileHandle,
    /// The bytes wanted: piece boundaries (or the file's end).
    pub range: std::ops::Range<u64>,
    /// Set (then [`EndpointHandle::poke`]) to stop the transfer; its answer then comes soon,
    /// and no byte of it is written after that answer.
    pub cancel: Arc<AtomicBool>,
    /// Memory for this run's data in flight, at most (`None`: the endpoint's receive window
    /// budget): a download of many runs at once shares its budget among them.
    pub window_bytes: Option<u64>,
}

/// A cloneable handle to a running endpoint.
#[derive(Clone, Debug)]
pub struct EndpointHandle {
    tx: mpsc::Sender<Command>,
    local: SocketAddr,
    kind: TransportKind,
    storage: SharedStorage,
    fsync: bool,
    checkpoint_thread: bool,
    /// Downloads in progress served to others.
    partials: Partials,
    /// The relay sessions of the endpoint's transport (not the transport: a handle never
    /// keeps the socket open).
    relay: Arc<RelaySessions>,
    /// The secure wrapper of the endpoint's transport, if [`EndpointConfig::secure`] (weak:
    /// a handle never keeps the socket open).
    secure: Option<std::sync::Weak<SecureTransport>>,
    /// [`SecureSettings::seal_requests`]: peer-to-peer requests make a session first.
    seal_requests: bool,
}

/// Starts an endpoint on `transport` and returns its handle. The endpoint stops when
/// [`EndpointHandle::shutdown`] is called or every handle is dropped.
pub fn spawn_endpoint(
    transport: SharedTransport,
    kind: TransportKind,
    config: EndpointConfig,
) -> io::Result<(EndpointHandle, tokio::task::JoinHandle<()>)> {
    let local = transport.local_addr()?;
    // Every endpoint can reach peers through a relay, and be reached through one.
    let relay = RelayTransport::new(transport);
    let transport: SharedTransport = relay.clone();
    // Above the relay: a relayed peer's traffic is sealed end to end.
    let secure = config
        .secure
        .as_ref()
        .map(|s| SecureTransport::new(transport.clone(), s));
    let transport: SharedTransport = match &secure {
        Some(s) => s.clone(),
        None => transport,
    };
    let mut index = config.share.as_ref().map(ShareIndex::new);
    if let Some(idx) = index.as_mut() {
        idx.refresh()?;
    }
    let (tx, rx) = mpsc::channel(64);
    let hasher = if config.hash_thread {
        Some(HashWorker::spawn()?)
    } else {
        None
    };
    let mut sender = config.sender.clone();
    sender.chunk_size = chunk_size_for(transport.max_message_size());
    let reliable = transport.is_reliable();
    if reliable {
        sender.reliable = true;
        sender.min_rto = sender.min_rto.max(Duration::from_secs(1));
    }
    let mut driver = Driver {
        transport,
        sender_config: sender,
        rx,
        index,
        proto: Endpoint::new(
            ProtoConfig {
                rpc_retry: config.rpc_retry,
                rpc_attempts: config.rpc_attempts,
                rate: config.rate,
                max_uploads: config.max_uploads,
                max_uploads_per_peer: config.max_uploads_per_peer,
                upload_turn: config.upload_turn,
                // A stream's source address is proven by its handshake.
                addresses_proven: reliable,
                identity: config.identity.clone(),
            },
            config.id_seed,
        ),
        replies: Replies::default(),
        uploads: BTreeMap::new(),
        downloads: BTreeMap::new(),
        index_pages: Vec::new(),
        upload_tokens: 0.0,
        tokens_at: Instant::now(),
        throttled_until: None,
        blocked_until: None,
        more_to_send: false,
        hasher,
        rescanning: None,
        index_waiting: Vec::new(),
        index_scanning: Vec::new(),
        batch: Batch::default(),
        finishing: tokio::task::JoinSet::new(),
        disk_alarm: Default::default(),
        upload_turn: 0,
        partials: Partials::default(),
        relay: relay.sessions(),
        config,
    };
    // The first scan's content hashes, announced once registered.
    driver.announce_index();
    let handle = EndpointHandle {
        tx,
        local,
        kind,
        storage: driver.config.storage.clone(),
        fsync: driver.config.fsync,
        checkpoint_thread: driver.config.checkpoint_thread,
        partials: driver.partials.clone(),
        relay: relay.sessions(),
        secure: secure.as_ref().map(Arc::downgrade),
        seal_requests: driver
            .config
            .secure
            .as_ref()
            .is_some_and(|s| s.seal_requests),
    };
    let task = tokio::spawn(driver.run());
    Ok((handle, task))
}

impl EndpointHandle {
    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The transport kind it runs on.
    pub fn kind(&self) -> TransportKind {
        self.kind
    }

    /// Whether `other` is a handle of this same endpoint (a clone of this one).
    pub fn same_endpoint(&self, other: &EndpointHandle) -> bool {
        self.tx.same_channel(&other.tx)
    }

    /// Makes sure a secure session with `peer` exists (a handshake if there is none, see
    /// [`SecureTransport::connect`]) and returns the key it proved; `expected` (a listing's
    /// key) refuses any other with [`SecureError::WrongKey`]. `Ok(None)`: this endpoint runs
    /// without [`EndpointConfig::secure`]. Peer-to-peer requests call it themselves when
    /// [`SecureSettings::seal_requests`] (with no expected key, so that an existing session
    /// is reused); call it first to check a key, or to seal to one peer without it.
    pub async fn connect(
        &self,
        peer: SocketAddr,
        expected: Option<PublicKey>,
    ) -> Result<Option<PublicKey>, ServiceError> {
        let Some(weak) = &self.secure else {
            return Ok(None);
        };
        let secure = weak.upgrade().ok_or(ServiceError::Closed)?;
        match secure.connect(peer, expected).await {
            Ok(key) => Ok(Some(key)),
            Err(error) => Err(ServiceError::Secure { peer, error }),
        }
    }

    /// [`connect`](Self::connect) before a peer-to-peer request to `peer`, when this
    /// endpoint seals its requests ([`SecureSettings::seal_requests`]).
    async fn seal_to(&self, peer: SocketAddr) -> Result<(), ServiceError> {
        if self.seal_requests {
            self.connect(peer, None).await?;
        }
        Ok(())
    }

    /// The identity key of `peer` proven by a secure session with it, if there is one.
    pub fn peer_key(&self, peer: SocketAddr) -> Option<PublicKey> {
        self.secure.as_ref()?.upgrade()?.peer_key(peer)
    }

    /// What the secure channel dropped so far (`None`: no secure channel).
    pub fn secure_stats(&self) -> Option<crate::secure::SecureStats> {
        Some(self.secure.as_ref()?.upgrade()?.stats())
    }

    async fn send(&self, cmd: Command) -> Result<(), ServiceError> {
        self.tx.send(cmd).await.map_err(|_| ServiceError::Closed)
    }

    /// Sends `msg` (its request id is replaced) to `to` and waits for the matching reply,
    /// retrying on silence.
    pub async fn rpc(&self, to: SocketAddr, msg: Message) -> Result<Message, ServiceError> {
        if p2p_proto::secure::is_peer_message(&msg) {
            self.seal_to(to).await?;
        }
        let (reply, rx) = oneshot::channel();
        self.send(Command::Rpc { to, msg, reply }).await?;
        rx.await.map_err(|_| ServiceError::Closed)?
    }

    /// Registers with the tracker as `name`, listening on `port` over `transport`, and keeps
    /// the registration alive with heartbeats (which also re-register after a tracker
    /// restart). Returns the tracker's refusal reason as [`ServiceError::Refused`].
    pub async fn register(
        &self,
        tracker: SocketAddr,
        name: &str,
        port: u16,
        transport: TransportKind,
        heartbeat: Option<Duration>,
    ) -> Result<(), ServiceError> {
        let reply = self
            .rpc(
                tracker,
                Message::Register {
                    request: RequestId(0),
                    name: name.to_string(),
                    port,
                    transport,
                },
            )
            .await?;
        match reply {
            Message::RegisterReply {
                outcome:
                    RegisterOutcome::Accepted {
                        heartbeat_ms,
                        ttl_ms,
                        ..
                    },
                ..
            } => {
                let suggested = Duration::from_millis(heartbeat_ms.clamp(50, ttl_ms.max(50)));
                let every = heartbeat.unwrap_or(suggested);
                self.send(Command::KeepRegistered {
                    tracker,
                    name: name.to_string(),
                    port,
                    transport,
                    every,
                })
                .await
            }
            Message::RegisterReply {
                outcome: RegisterOutcome::Refused { reason },
                ..
            } => Err(ServiceError::Refused(reason)),
            _ => Err(ServiceError::Protocol(tracker)),
        }
    }

    /// Removes `name` from the tracker.
    pub async fn unregister(&self, tracker: SocketAddr, name: &str) -> Result<(), ServiceError> {
        let msg = Message::Unregister {
            request: RequestId(0),
            name: name.to_string(),
        };
        match self.rpc(tracker, msg).await? {
            Message::UnregisterReply { .. } => Ok(()),
            _ => Err(ServiceError::Protocol(tracker)),
        }
    }

    /// Downloads `entry` from `peer` to `dest`: into `dest`'s partial sibling, resuming a
    /// matching partial download if there is one, every piece verified as it arrives, renamed
    /// to `dest` once complete. Progress is published on `progress` while the future runs.
    pub async fn download(
        &self,
        peer: SocketAddr,
        entry: IndexEntry,
        dest: PathBuf,
        progress: Option<watch::Sender<Progress>>,
    ) -> Result<DownloadReport, ServiceError> {
        self.seal_to(peer).await?;
        let table = self.piece_table(peer, &entry).await?;
        self.download_with_table(peer, entry, table, dest, progress)
            .await
    }

    /// [`EndpointHandle::download`] with `entry`'s piece table in hand (fetched with
    /// [`EndpointHandle::piece_table`] while the caller asked something else: a round trip
    /// saved on a long path).
    pub async fn download_with_table(
        &self,
        peer: SocketAddr,
        entry: IndexEntry,
        table: PieceTable,
        dest: PathBuf,
        progress: Option<watch::Sender<Progress>>,
    ) -> Result<DownloadReport, ServiceError> {
        let progress = progress.unwrap_or_else(|| watch::channel(Progress::default()).0);
        let mut refetched = 0;
        loop {
            let (reply, rx) = oneshot::channel();
            self.send(Command::Download {
                peer,
                entry: entry.clone(),
                dest: dest.clone(),
                table: table.clone(),
                progress: progress.clone(),
                reply,
            })
            .await?;
            match rx.await.map_err(|_| ServiceError::Closed)? {
                Err(e) if refetched < PIECE_REFETCHES && e.bad_piece().is_some() => {
                    refetched += 1;
                    tracing::info!(%peer, error = ?e, "fetching again from the end of the verified part");
                }
                Ok(mut report) => {
                    report.refetched = refetched;
                    return Ok(report);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Fetches `job`'s bytes into its file: the pieces are verified as they come and written
    /// at their own offsets; [`Progress::verified`] follows the verified prefix (whose bytes
    /// are written, not synced). No destination, state file or rename: the caller (a
    /// multi-source download) owns those. On failure the bytes before `verified` stay good.
    pub async fn fetch_range(
        &self,
        job: RangeJob,
        progress: watch::Sender<Progress>,
    ) -> Result<DownloadReport, ServiceError> {
        self.seal_to(job.peer).await?;
        let (reply, rx) = oneshot::channel();
        self.send(Command::Range {
            job,
            progress,
            reply,
        })
        .await?;
        rx.await.map_err(|_| ServiceError::Closed)?
    }

    /// Makes the endpoint look at cancelled ranges now ([`RangeJob::cancel`]).
    pub async fn poke(&self) {
        let _ = self.send(Command::Poke).await;
    }

    /// Where this endpoint's downloads are stored, and how ([`EndpointConfig::fsync`],
    /// [`EndpointConfig::checkpoint_thread`]).
    pub fn storage(&self) -> (&SharedStorage, bool, bool) {
        (&self.storage, self.fsync, self.checkpoint_thread)
    }

    /// Aborts every transfer (the other sides are told) and stops the endpoint.
    pub async fn shutdown(&self) {
        let (done, rx) = oneshot::channel();
        if self.send(Command::Shutdown { done }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Payload bytes per chunk for messages of at most `max_message` bytes: a whole number of
/// 4 KiB pages when that is 16 KiB or more (a sealed message's 32 bytes less would
/// otherwise make every chunk straddle a page, and the pieces' boundaries, of the file).
fn chunk_size_for(max_message: usize) -> u32 {
    let size = max_message
        .saturating_sub(DATA_OVERHEAD)
        .clamp(64, MAX_CHUNK);
    match size >= 16 * 1024 {
        true => (size & !(PAGE - 1)) as u32,
        false => size as u32,
    }
}

/// Bytes of a page, what large chunks are a multiple of.
const PAGE: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    /// Large chunks are whole pages, whatever the seal takes off the message; small ones
    /// (a real path's datagrams) keep every byte.
    #[test]
    fn large_chunks_are_whole_pages() {
        assert_eq!(chunk_size_for(64 * 1024 + DATA_OVERHEAD), 64 * 1024);
        assert_eq!(chunk_size_for(64 * 1024 + DATA_OVERHEAD - 32), 60 * 1024);
        assert_eq!(chunk_size_for(60 * 1024 + DATA_OVERHEAD - 32), 56 * 1024);
        assert_eq!(chunk_size_for(1452), 1404);
        assert_eq!(chunk_size_for(1452 - 32), 1372);
        assert_eq!(chunk_size_for(10), 64);
        assert_eq!(chunk_size_for(usize::MAX), MAX_CHUNK as u32);
    }
}
