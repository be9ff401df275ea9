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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, File};
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::lock::{self, DestinationLock, LockError};
use super::paging::paginate;
pub use super::resume::partial_path;
use super::resume::{
    self, plan_resume, save_state, Checkpointer, DownloadState, PartialWriter, PendingCheckpoint,
    ResumePlan,
};
use crate::index::ShareIndex;
use crate::limits::{RateConfig, RateLimiter};
use crate::transfer::{
    ChunkReceiver, ChunkSender, PieceJob, PieceTable, ReceiverConfig, ReceiverEvent, SenderConfig,
    SenderEvent, SenderTransmit, TransferError,
};
use crate::transport::{FileRange, SharedTransport};
use crate::wire::{
    decode_bytes, AbortReason, BoundedVec, ContentHash, DatagramBuf, FileId, IndexEntry, Message,
    PeerInfo, RegisterOutcome, RequestId, TransferId, TransportKind, DATA_OVERHEAD, MAX_CHUNK,
    MAX_PIECE_HASHES, PIECE_SIZE,
};

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
    /// [`resume::preallocate`]): a disk too small fails it at once, with nothing left behind,
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
    /// Downloads hash their pieces on a thread of the endpoint's own, so that the I/O task
    /// (receive, write) and the hashing run on two cores. Off, pieces are hashed on the I/O
    /// task; simulations turn it off, as a thread's timing is not the simulated clock's.
    pub hash_thread: bool,
    /// A download whose last piece is verified is finished (flushed, synced with `fsync`,
    /// given its final name) on a blocking thread, so that the I/O task goes on serving
    /// other transfers meanwhile: syncing a large file takes seconds. Off, on the I/O task
    /// (simulations, for the simulated clock).
    pub finish_thread: bool,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            share: None,
            sender: SenderConfig::default(),
            receiver: ReceiverConfig::default(),
            max_uploads: 32,
            max_uploads_per_peer: 8,
            rate: RateConfig::default(),
            save_every: 64 * 1024 * 1024,
            fsync: true,
            preallocate: true,
            max_upload_rate: None,
            rpc_retry: Duration::from_millis(250),
            rpc_attempts: 5,
            id_seed: 0,
            hash_thread: true,
            finish_thread: true,
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
    /// A local file problem.
    #[error("{0}")]
    Io(String),
    /// The download stopped; its verified prefix is kept for a resume.
    #[error("{reason}; {kept} verified bytes kept in {}: run the same download again to resume", partial.display())]
    Incomplete {
        /// Why it stopped.
        reason: String,
        /// Verified bytes kept.
        kept: u64,
        /// The partial file.
        partial: PathBuf,
        /// The piece that failed its hash check, when that is why it stopped.
        bad_piece: Option<u64>,
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
    /// The endpoint has stopped.
    #[error("the endpoint has stopped")]
    Closed,
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
    /// Byte the transfer started at (non-zero: resumed from a partial download).
    pub resumed_from: u64,
    /// A stale partial download found and discarded, and why.
    pub discarded: Option<String>,
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
        match self {
            ServiceError::Transfer(TransferError::PieceMismatch { piece }) => Some(*piece),
            ServiceError::Incomplete { bad_piece, .. } => *bad_piece,
            _ => None,
        }
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
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// A cloneable handle to a running endpoint.
#[derive(Clone, Debug)]
pub struct EndpointHandle {
    tx: mpsc::Sender<Command>,
    local: SocketAddr,
    kind: TransportKind,
}

/// Starts an endpoint on `transport` and returns its handle. The endpoint stops when
/// [`EndpointHandle::shutdown`] is called or every handle is dropped.
pub fn spawn_endpoint(
    transport: SharedTransport,
    kind: TransportKind,
    config: EndpointConfig,
) -> io::Result<(EndpointHandle, tokio::task::JoinHandle<()>)> {
    let local = transport.local_addr()?;
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
    if transport.is_reliable() {
        sender.reliable = true;
        sender.min_rto = sender.min_rto.max(Duration::from_secs(1));
    }
    let driver = Driver {
        transport,
        sender_config: sender,
        rx,
        index,
        next_id: config.id_seed,
        rpcs: BTreeMap::new(),
        round_trips: RoundTrips::default(),
        uploads: BTreeMap::new(),
        downloads: BTreeMap::new(),
        registration: None,
        index_pages: Vec::new(),
        limiter: RateLimiter::new(config.rate),
        upload_tokens: 0.0,
        tokens_at: Instant::now(),
        throttled_until: None,
        more_to_send: false,
        left: BTreeSet::new(),
        hasher,
        batch: Batch::default(),
        finishing: tokio::task::JoinSet::new(),
        lingering: VecDeque::new(),
        config,
    };
    let task = tokio::spawn(driver.run());
    Ok((EndpointHandle { tx, local, kind }, task))
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

    async fn send(&self, cmd: Command) -> Result<(), ServiceError> {
        self.tx.send(cmd).await.map_err(|_| ServiceError::Closed)
    }

    /// Sends `msg` (its request id is replaced) to `to` and waits for the matching reply,
    /// retrying on silence.
    pub async fn rpc(&self, to: SocketAddr, msg: Message) -> Result<Message, ServiceError> {
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

    /// Every live peer the tracker knows, all pages.
    pub async fn list_peers(&self, tracker: SocketAddr) -> Result<Vec<PeerInfo>, ServiceError> {
        let mut all = Vec::new();
        let mut page = 0;
        loop {
            let msg = Message::ListPeers {
                request: RequestId(0),
                page,
            };
            match self.rpc(tracker, msg).await? {
                Message::PeerList { peers, pages, .. } => {
                    all.extend(peers.0);
                    page += 1;
                    if page >= pages {
                        return Ok(all);
                    }
                }
                Message::Error { reason, .. } => return Err(ServiceError::Refused(reason)),
                _ => return Err(ServiceError::Protocol(tracker)),
            }
        }
    }

    /// A peer's whole index, all pages, and the name of its share folder.
    pub async fn index(&self, peer: SocketAddr) -> Result<(String, Vec<IndexEntry>), ServiceError> {
        let mut all = Vec::new();
        let mut page = 0;
        loop {
            let msg = Message::IndexRequest {
                request: RequestId(0),
                page,
            };
            match self.rpc(peer, msg).await? {
                Message::IndexPage {
                    entries,
                    pages,
                    share,
                    ..
                } => {
                    all.extend(entries.0);
                    page += 1;
                    if page >= pages {
                        return Ok((share, all));
                    }
                }
                Message::Error { reason, .. } => return Err(ServiceError::Refused(reason)),
                _ => return Err(ServiceError::Protocol(peer)),
            }
        }
    }

    /// The piece hashes of `entry` on `peer`, all pages.
    pub async fn piece_table(
        &self,
        peer: SocketAddr,
        entry: &IndexEntry,
    ) -> Result<PieceTable, ServiceError> {
        let mut hashes = Vec::new();
        loop {
            let msg = Message::PieceRequest {
                request: RequestId(0),
                file: entry.id,
                hash: entry.hash,
                first: hashes.len() as u32,
            };
            match self.rpc(peer, msg).await? {
                Message::PieceHashes {
                    piece_size,
                    pieces,
                    first,
                    hashes: page,
                    ..
                } => {
                    if !PieceTable::valid_piece_size(piece_size) {
                        return Err(ServiceError::Protocol(peer));
                    }
                    let expected = entry.size.div_ceil(u64::from(piece_size));
                    if first as usize != hashes.len()
                        || u64::from(pieces) != expected
                        || (page.0.is_empty() && hashes.len() < pieces as usize)
                    {
                        return Err(ServiceError::Protocol(peer));
                    }
                    hashes.extend(page.0);
                    if hashes.len() >= pieces as usize {
                        return Ok(PieceTable { piece_size, hashes });
                    }
                }
                Message::Error { reason, .. } => return Err(ServiceError::Refused(reason)),
                _ => return Err(ServiceError::Protocol(peer)),
            }
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
        let table = self.piece_table(peer, &entry).await?;
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
                    tracing::info!(%peer, "{e}: fetching again from the end of the verified part");
                }
                Ok(mut report) => {
                    report.refetched = refetched;
                    return Ok(report);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Aborts every transfer (the other sides are told) and stops the endpoint.
    pub async fn shutdown(&self) {
        let (done, rx) = oneshot::channel();
        if self.send(Command::Shutdown { done }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

struct PendingRpc {
    to: SocketAddr,
    bytes: Vec<u8>,
    /// When it was first sent: with a single attempt, its answer is a round-trip sample.
    sent_at: Instant,
    attempts: u32,
    wait: Duration,
    next_at: Instant,
    reply: oneshot::Sender<Result<Message, ServiceError>>,
}

struct Upload {
    machine: ChunkSender,
    /// Shared with chunks a transport still has queued ([`FileRange`]).
    file: Arc<File>,
    reader: ReadAhead,
    path: PathBuf,
    size: u64,
    modified: Option<SystemTime>,
    next_check: Instant,
}

/// Reads small chunks of an upload from a block read ahead: a run of 1,404-byte chunks (a
/// 1,500-byte MTU) costs one `pread` per 46 chunks instead of one each. Large chunks, and
/// chunks before the block (retransmissions), are read directly.
#[derive(Default)]
struct ReadAhead {
    block: Vec<u8>,
    /// File offset of `block[0]`.
    start: u64,
}

/// Bytes read ahead per upload.
const READ_AHEAD: usize = 64 * 1024;

impl ReadAhead {
    /// Fills `into` with the file's bytes from `offset`.
    fn read(&mut self, file: &File, into: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset + into.len() as u64;
        if into.len() > READ_AHEAD / 8 || offset < self.start {
            return file.read_exact_at(into, offset);
        }
        if end > self.start + self.block.len() as u64 {
            self.block.resize(READ_AHEAD, 0);
            let mut got = 0;
            while got < READ_AHEAD {
                match file.read_at(&mut self.block[got..], offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.block.clear();
                        return Err(e);
                    }
                }
            }
            self.block.truncate(got);
            self.start = offset;
            if got < into.len() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let at = (offset - self.start) as usize;
        into.copy_from_slice(&self.block[at..at + into.len()]);
        Ok(())
    }
}

/// How often a file being sent is checked for changes.
const CHANGE_CHECK: Duration = Duration::from_millis(100);

struct Download {
    peer: SocketAddr,
    machine: ChunkReceiver,
    dest: PathBuf,
    partial: PathBuf,
    writer: Option<PartialWriter>,
    checkpoints: Checkpointer,
    size: u64,
    hash: ContentHash,
    piece_size: u32,
    offset: u64,
    /// End of the verified prefix (absolute).
    verified: u64,
    /// End of the prefix recorded in the state file.
    saved: u64,
    /// When the last checkpoint started.
    saved_at: Instant,
    discarded: Option<String>,
    started: Instant,
    progress: watch::Sender<Progress>,
    reply: Option<oneshot::Sender<Result<DownloadReport, ServiceError>>>,
    /// Handed to a [`Finish`] job, which answers `reply` and frees the destination.
    finishing: bool,
    /// Bytes received as last published on `progress`.
    shown: u64,
    /// The claim on `dest`; given up before `reply` is answered (a [`Finish`] job takes it).
    lock: Option<DestinationLock>,
}

struct Registration {
    tracker: SocketAddr,
    name: String,
    port: u16,
    transport: TransportKind,
    every: Duration,
    next_at: Instant,
}

struct Driver {
    transport: SharedTransport,
    config: EndpointConfig,
    sender_config: SenderConfig,
    rx: mpsc::Receiver<Command>,
    index: Option<ShareIndex>,
    index_pages: Vec<Vec<IndexEntry>>,
    next_id: u64,
    rpcs: BTreeMap<RequestId, PendingRpc>,
    /// The last round trip measured to each address (by requests answered at the first
    /// attempt), and when: a download asks again after a few of them, not after the
    /// default wait ([`RoundTrips`]).
    round_trips: RoundTrips,
    uploads: BTreeMap<(SocketAddr, TransferId), Upload>,
    downloads: BTreeMap<TransferId, Download>,
    registration: Option<Registration>,
    limiter: RateLimiter,
    /// Upload rate cap: bytes that may be sent now, and when they were last topped up.
    upload_tokens: f64,
    tokens_at: Instant,
    /// Uploads wait until then for tokens.
    throttled_until: Option<Instant>,
    /// A flush stopped at its burst limit: flush again once incoming messages are read.
    more_to_send: bool,
    /// Names unregistered since their last `Register`: a late heartbeat arming is ignored.
    left: BTreeSet<String>,
    /// Datagrams of uploads gathered for one send; kept, empty, between flushes (its buffer
    /// is reused without being zeroed again: see [`DatagramBuf`]).
    batch: Batch,
    /// Hashes the pieces of downloads (`EndpointConfig::hash_thread`).
    hasher: Option<HashWorker>,
    /// Downloads being finished on blocking threads (`EndpointConfig::finish_thread`); a
    /// shutdown waits for them.
    finishing: tokio::task::JoinSet<()>,
    /// Finished downloads whose receivers are gone, oldest first: their senders may not know
    /// yet (see [`Lingering`]).
    lingering: VecDeque<Lingering>,
}

/// A finished download, remembered after its receiver is gone so that its sender still
/// learns the end: a receiver finishes on its last verified chunk, before the sender's FIN,
/// so the sender may yet send a chunk again (its copy of the final ACK was lost) and will
/// send its FIN. (TCP's TIME-WAIT, for the same reason.)
struct Lingering {
    transfer: TransferId,
    peer: SocketAddr,
    /// The ACK of every chunk ([`ChunkReceiver::final_ack`]).
    final_ack: Message,
    until: Instant,
    /// The sender's FIN came and was answered: it knows.
    closed: bool,
}

impl Lingering {
    /// Remembers the finished download `d` in `queue`, unless its sender knows already.
    fn remember(queue: &mut VecDeque<Lingering>, transfer: TransferId, d: &Download) {
        let Some(final_ack) = d.machine.final_ack() else {
            return; // failed: nothing to answer
        };
        if d.machine.fin_answered() {
            return;
        }
        let now = Instant::now();
        while queue
            .front()
            .is_some_and(|l| l.until <= now || queue.len() >= MAX_LINGERING)
        {
            queue.pop_front();
        }
        queue.push_back(Lingering {
            transfer,
            peer: d.peer,
            final_ack,
            until: now + LINGER,
            closed: false,
        });
    }
}

/// How long a finished download answers its sender after its receiver is gone (past the
/// sender's FIN retries, which back off to its largest RTO), and how many are remembered.
const LINGER: Duration = Duration::from_secs(20);
const MAX_LINGERING: usize = 1024;
/// How long a shutdown waits for the senders of finished downloads to see their FIN
/// answered (normally one round trip), so that a `get` that exits at once leaves no sender
/// retrying until its timeout.
const LINGER_ON_SHUTDOWN: Duration = Duration::from_secs(1);

/// Reserves the space of bytes `from..size` of the download's `partial` file
/// ([`resume::preallocate`]); when the disk is too small, removes a partial that holds
/// nothing yet (`from` 0) and says how much room is missing.
fn reserve_space(file: &File, partial: &Path, from: u64, size: u64) -> Result<(), String> {
    resume::preallocate(file, from, size).map_err(|e| {
        if from == 0 {
            let _ = fs::remove_file(partial);
        }
        let folder = partial.parent().unwrap_or(Path::new("."));
        format!(
            "not enough disk space in {} for the {} bytes left to fetch ({e}); \
             free some space and run the download again",
            folder.display(),
            size - from
        )
    })
}

/// Round trips measured to recent peers, at most [`MAX_ROUND_TRIPS`] of them.
#[derive(Default)]
struct RoundTrips(BTreeMap<SocketAddr, (Duration, Instant)>);

/// Peers whose round trip is remembered, and for how long a measure is trusted.
const MAX_ROUND_TRIPS: usize = 256;
const ROUND_TRIP_FRESH: Duration = Duration::from_secs(60);

impl RoundTrips {
    /// Records the answer, now, of a request first sent at `sent_at` to `peer`.
    fn record(&mut self, peer: SocketAddr, sent_at: Instant) {
        let now = Instant::now();
        if self.0.len() >= MAX_ROUND_TRIPS && !self.0.contains_key(&peer) {
            // Make room by forgetting the oldest measure (stale ones are ignored anyway).
            let oldest = self
                .0
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(a, _)| *a);
            if let Some(oldest) = oldest {
                self.0.remove(&oldest);
            }
        }
        self.0.insert(peer, (now.duration_since(sent_at), now));
    }

    /// The round trip to `peer`, if measured recently.
    fn recent(&self, peer: SocketAddr) -> Option<Duration> {
        self.0
            .get(&peer)
            .filter(|(_, at)| at.elapsed() < ROUND_TRIP_FRESH)
            .map(|(rtt, _)| *rtt)
    }
}

/// A download's first wait for the sender's answer to its `Request`, given a round trip to
/// that sender measured just before: four of them (the answer may also wait for the sender to
/// open the file), at least [`MIN_REQUEST_RETRY`], at most `default`.
fn request_retry_after(rtt: Duration, default: Duration) -> Duration {
    (rtt * 4).max(MIN_REQUEST_RETRY).min(default)
}

/// Shortest first wait for an answer to a `Request` (see [`request_retry_after`]).
const MIN_REQUEST_RETRY: Duration = Duration::from_millis(25);

/// Bytes received between two progress updates of a download.
const PROGRESS_STEP: u64 = 256 * 1024;

/// A thread that hashes the pieces of every download of an endpoint, in the order given; it
/// ends when the endpoint drops the worker.
struct HashWorker {
    jobs: std::sync::mpsc::Sender<(TransferId, PieceJob)>,
    results: mpsc::UnboundedReceiver<(TransferId, u64, ContentHash)>,
}

/// Bytes a download may have waiting for the hashing thread; past that the I/O task hashes
/// pieces itself, so memory stays bounded if hashing falls behind.
const MAX_HASH_BACKLOG: u64 = 4 * 1024 * 1024;

impl HashWorker {
    fn spawn() -> io::Result<Self> {
        let (jobs, queued) = std::sync::mpsc::channel::<(TransferId, PieceJob)>();
        let (done, results) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("p2p-hash".into())
            .spawn(move || {
                for (transfer, job) in queued {
                    if done.send((transfer, job.index(), job.hash())).is_err() {
                        break;
                    }
                }
            })?;
        Ok(HashWorker { jobs, results })
    }
}

/// The next hash the worker reports (never, without a worker).
async fn next_hash(worker: &mut Option<HashWorker>) -> Option<(TransferId, u64, ContentHash)> {
    match worker {
        Some(w) => w.results.recv().await,
        None => std::future::pending().await,
    }
}

/// Datagrams of one size gathered for one segmented send (UDP GSO): each new one is encoded
/// at the end of `bytes`.
#[derive(Default)]
struct Batch {
    bytes: DatagramBuf,
    /// Size of each datagram (the first one's).
    segment: usize,
    count: usize,
    /// Most datagrams the transport takes in one send.
    max: usize,
}

impl Batch {
    fn full(&self) -> bool {
        self.count > 0 && self.count >= self.max
    }

    /// Takes in the datagram just encoded at `bytes[start..]`; one of another size is sent
    /// on its own (segments must be equal but for the last).
    async fn added(&mut self, transport: &SharedTransport, to: SocketAddr, start: usize) {
        let len = self.bytes.len() - start;
        if self.count == 0 {
            self.segment = len;
            self.max = transport.max_batch(to, len).max(1);
        } else if len != self.segment {
            let odd = self.bytes.split_off(start);
            self.send(transport, to).await;
            let _ = transport.send_to(to, &odd).await;
            return;
        }
        self.count += 1;
    }

    /// Sends what is gathered.
    async fn send(&mut self, transport: &SharedTransport, to: SocketAddr) {
        if self.count > 0 {
            let _ = transport
                .send_batch(to, self.bytes.as_slice(), self.segment)
                .await;
        }
        self.bytes.clear();
        self.count = 0;
    }
}

/// In-order chunks per ACK on a reliable transport (a sixteenth of the default window).
const RELIABLE_ACK_EVERY: u32 = 8;

/// Most messages handled from one burst before the endpoint answers.
const BURST: usize = 64;
/// Most messages one upload sends per flush before incoming messages are read again.
const UPLOAD_BURST: usize = 32;

impl Driver {
    async fn run(mut self) {
        let transport = self.transport.clone();
        loop {
            self.flush().await;
            let deadline = self.next_deadline();
            let more = self.more_to_send;
            // `biased`: branches are polled in this order, not at random, so that a simulation
            // replays exactly from its seed. Timers come before the network so that a flood of
            // messages cannot starve retransmissions and timeouts.
            tokio::select! {
                biased;
                cmd = self.rx.recv() => match cmd {
                    None => break,
                    Some(Command::Shutdown { done }) => {
                        self.shutdown().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(cmd) => self.on_command(cmd).await,
                },
                _ = sleep_until(deadline) => self.on_timeout(),
                Some((transfer, index, hash)) = next_hash(&mut self.hasher) => {
                    if let Some(d) = self.downloads.get_mut(&transfer) {
                        d.machine.piece_hashed(index, hash);
                    }
                    self.pump_download(transfer);
                }
                r = transport.recv_from() => {
                    let Ok((from, bytes)) = r else {
                        // A transport error (e.g. an ICMP unreachable surfacing on UDP) is
                        // not fatal: the protocol's timers cover lost messages.
                        continue;
                    };
                    self.on_message(from, &bytes);
                    for _ in 0..BURST {
                        match transport.try_recv_from() {
                            Some((from, bytes)) => self.on_message(from, &bytes),
                            None => break,
                        }
                    }
                }
                // Nothing arrived and uploads have more to send: go round again.
                _ = std::future::ready(()), if more => {}
            }
        }
        self.shutdown().await;
    }

    fn next_deadline(&self) -> Option<Instant> {
        let rpcs = self.rpcs.values().map(|r| r.next_at);
        let up = self
            .uploads
            .values()
            .filter_map(|u| u.machine.poll_timeout().map(Instant::from_std));
        let down = self
            .downloads
            .values()
            .filter_map(|d| d.machine.poll_timeout().map(Instant::from_std));
        let reg = self.registration.as_ref().map(|r| r.next_at);
        // While throttled, uploads' own deadlines still count (RTO, idle), plus the refill.
        rpcs.chain(up)
            .chain(down)
            .chain(reg)
            .chain(self.throttled_until)
            .min()
    }

    fn take_id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    async fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Rpc { to, msg, reply } => self.start_rpc(to, msg, Some(reply)).await,
            Command::KeepRegistered {
                tracker,
                name,
                port,
                transport,
                every,
            } => {
                if self.left.contains(&name) {
                    return; // unregistered while the registration was being confirmed
                }
                self.registration = Some(Registration {
                    tracker,
                    name,
                    port,
                    transport,
                    every,
                    next_at: Instant::now() + every,
                });
            }
            Command::Download {
                peer,
                entry,
                dest,
                table,
                progress,
                reply,
            } => self.start_download(peer, entry, dest, table, progress, reply),
            Command::Shutdown { .. } => unreachable!("handled by the loop"),
        }
    }

    async fn start_rpc(
        &mut self,
        to: SocketAddr,
        mut msg: Message,
        reply: Option<oneshot::Sender<Result<Message, ServiceError>>>,
    ) {
        match &msg {
            Message::Unregister { name, .. } => {
                // Leaving: the heartbeat must not register us again, not even one armed by a
                // `register` whose reply is still on its way.
                if self.registration.as_ref().is_some_and(|r| &r.name == name) {
                    self.registration = None;
                }
                self.left.insert(name.clone());
            }
            Message::Register { name, .. } => {
                self.left.remove(name);
            }
            _ => {}
        }
        let id = RequestId(self.take_id());
        set_request_id(&mut msg, id);
        let bytes = msg.encode();
        let sent = self.transport.send_to(to, &bytes).await;
        let Some(reply) = reply else {
            return; // fire and forget (heartbeats)
        };
        if let Err(e) = sent {
            if e.kind() == io::ErrorKind::ConnectionRefused {
                let _ = reply.send(Err(ServiceError::NoAnswer(to)));
                return;
            }
        }
        let wait = self.config.rpc_retry;
        self.rpcs.insert(
            id,
            PendingRpc {
                to,
                bytes,
                sent_at: Instant::now(),
                attempts: 1,
                wait,
                next_at: Instant::now() + wait,
                reply,
            },
        );
    }

    fn start_download(
        &mut self,
        peer: SocketAddr,
        entry: IndexEntry,
        dest: PathBuf,
        table: PieceTable,
        progress: watch::Sender<Progress>,
        reply: oneshot::Sender<Result<DownloadReport, ServiceError>>,
    ) {
        // One writer per destination, across processes: claimed before anything looks at
        // its partial file, held until the verified file has its name (or the download
        // failed and kept what it could).
        let lock = match DestinationLock::acquire(&dest) {
            Ok(lock) => lock,
            Err(e) => {
                let _ = reply.send(Err(ServiceError::Locked(e)));
                return;
            }
        };
        if fs::symlink_metadata(&dest).is_ok() {
            // Another download finished it (or something else put it there) meanwhile: the
            // caller compares it with what it wanted.
            let _ = reply.send(Err(ServiceError::DestinationExists(dest)));
            return;
        }
        // Only once the destination is ours: look at (and maybe discard) its partial file.
        let plan: ResumePlan = plan_resume(&dest, entry.size, entry.hash, table.piece_size);
        let partial = partial_path(&dest);
        let opened = if plan.offset > 0 {
            resume::open_nofollow(&partial, true)
                .and_then(|f| f.metadata().map(|m| (f, m.len())))
                .and_then(|(f, len)| {
                    if len == plan.offset {
                        Ok(f)
                    } else {
                        Err(io::Error::other("partial file changed under us"))
                    }
                })
        } else {
            resume::create_partial(&partial)
        };
        let opened = opened
            .map_err(|e| format!("cannot write {}: {e}", partial.display()))
            .and_then(|f| {
                if self.config.preallocate {
                    reserve_space(&f, &partial, plan.offset, entry.size)?;
                }
                let second = f
                    .try_clone()
                    .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
                Ok((
                    PartialWriter::new(f, plan.offset),
                    Checkpointer::new(second, dest.clone(), self.config.fsync),
                ))
            });
        let (writer, checkpoints) = match opened {
            Ok(pair) => pair,
            Err(why) => {
                drop(lock);
                let _ = reply.send(Err(ServiceError::Io(why)));
                return;
            }
        };
        let transfer = TransferId(self.take_id());
        let now = Instant::now();
        let piece_size = table.piece_size;
        let mut receiver_config = self.config.receiver.clone();
        let rtt = self.round_trips.recent(peer);
        if let Some(rtt) = rtt.filter(|_| !self.transport.is_reliable()) {
            // The piece table just came from this peer: a `Request` unanswered for a few of
            // its round trips was lost (or its answer was), and waiting the default half
            // second for it would be most of a small download's time on a lossy path. (A
            // reliable transport loses nothing: there, asking again would only add noise.)
            receiver_config.request_retry =
                request_retry_after(rtt, self.config.receiver.request_retry);
        }
        // Pieces go to the driver to hash: the hashing thread's, or, without one, hashed right
        // here in `pump_download` (the same path, so simulations cover it).
        receiver_config.offload_hashing = true;
        if self.transport.is_reliable() {
            // Nothing is lost on a reliable stream: ACKs only pace the window, and fewer of
            // them spare both sides a message each.
            receiver_config.ack_every = receiver_config.ack_every.max(RELIABLE_ACK_EVERY);
            receiver_config.reack = false;
        }
        let machine = ChunkReceiver::resume(
            now.into_std(),
            transfer,
            entry.id,
            Some((entry.size, entry.hash)),
            plan.offset,
            table,
            receiver_config,
        );
        progress.send_modify(|p| {
            p.total = Some(entry.size);
            p.received = plan.offset;
        });
        self.downloads.insert(
            transfer,
            Download {
                peer,
                machine,
                dest,
                partial,
                writer: Some(writer),
                checkpoints,
                size: entry.size,
                hash: entry.hash,
                piece_size,
                offset: plan.offset,
                verified: plan.offset,
                saved: plan.offset,
                saved_at: now,
                discarded: plan.discarded,
                started: now,
                progress,
                reply: Some(reply),
                finishing: false,
                shown: plan.offset,
                lock: Some(lock),
            },
        );
        self.pump_download(transfer);
    }

    fn on_message(&mut self, from: SocketAddr, bytes: &Bytes) {
        let Ok(msg) = decode_bytes(bytes) else {
            return; // corrupt or foreign: dropped like a lost datagram
        };
        let now = Instant::now().into_std();
        match msg {
            Message::RegisterReply { request, .. }
            | Message::UnregisterReply { request }
            | Message::PeerList { request, .. }
            | Message::IndexPage { request, .. }
            | Message::PieceHashes { request, .. }
            | Message::Error { request, .. } => {
                if self.rpcs.get(&request).is_some_and(|r| r.to == from) {
                    let rpc = self.rpcs.remove(&request).expect("checked");
                    if rpc.attempts == 1 {
                        // Karn: an answer to a request sent again may answer either copy.
                        self.round_trips.record(from, rpc.sent_at);
                    }
                    let _ = rpc.reply.send(Ok(msg));
                } else if let (
                    Some(reg),
                    Message::RegisterReply {
                        outcome: RegisterOutcome::Refused { reason },
                        ..
                    },
                ) = (&self.registration, &msg)
                {
                    tracing::warn!(tracker = %reg.tracker, "heartbeat refused: {reason}");
                }
            }
            Message::IndexRequest { request, page } => {
                if self.limiter.allow(now, from.ip()) {
                    self.serve_index(from, request, page);
                }
            }
            Message::PieceRequest {
                request,
                file,
                hash,
                first,
            } => {
                if self.limiter.allow(now, from.ip()) {
                    self.serve_pieces(from, request, file, hash, first);
                }
            }
            Message::Request {
                transfer,
                file,
                offset,
            } => self.serve_request(now, from, transfer, file, offset),
            Message::Ack { transfer, .. } | Message::FinAck { transfer } => {
                if let Some(up) = self.uploads.get_mut(&(from, transfer)) {
                    up.machine.handle_message(now, &msg);
                }
            }
            Message::Accept { transfer, .. }
            | Message::Data { transfer, .. }
            | Message::Fin { transfer, .. } => match self.downloads.get_mut(&transfer) {
                Some(d) if d.peer == from => {
                    d.machine.handle_message(now, msg);
                    self.pump_download(transfer);
                }
                Some(_) => {}
                None => {
                    if let Some(answer) = self.answer_lingering(from, &msg) {
                        self.queue_stateless(from, answer);
                    }
                }
            },
            Message::Abort { transfer, .. } => {
                if let Some(up) = self.uploads.get_mut(&(from, transfer)) {
                    up.machine.handle_message(now, &msg);
                } else if let Some(d) = self.downloads.get_mut(&transfer) {
                    if d.peer == from {
                        d.machine.handle_message(now, msg);
                        self.pump_download(transfer);
                    }
                }
            }
            // Tracker requests are not ours to answer.
            Message::Register { .. }
            | Message::Heartbeat { .. }
            | Message::Unregister { .. }
            | Message::ListPeers { .. } => {}
        }
    }

    /// The answer of a finished download whose receiver is gone to its sender's late `Data`
    /// (the final ACK again) or `Fin` (FIN-ACK).
    fn answer_lingering(&mut self, from: SocketAddr, msg: &Message) -> Option<Message> {
        let transfer = match msg {
            Message::Data { transfer, .. } | Message::Fin { transfer, .. } => *transfer,
            _ => return None,
        };
        let now = Instant::now();
        let l = self
            .lingering
            .iter_mut()
            .find(|l| l.transfer == transfer && l.peer == from && l.until > now)?;
        Some(match msg {
            Message::Fin { .. } => {
                l.closed = true;
                Message::FinAck { transfer }
            }
            _ => l.final_ack.clone(),
        })
    }

    fn queue_stateless(&mut self, to: SocketAddr, msg: Message) {
        let transport = self.transport.clone();
        let bytes = msg.encode();
        tokio::spawn(async move {
            let _ = transport.send_to(to, &bytes).await;
        });
    }

    fn serve_index(&mut self, from: SocketAddr, request: RequestId, page: u32) {
        let Some(index) = self.index.as_mut() else {
            return self.queue_stateless(
                from,
                Message::Error {
                    request,
                    reason: "this endpoint shares nothing".into(),
                },
            );
        };
        if page == 0 || self.index_pages.is_empty() {
            if let Err(e) = index.refresh() {
                tracing::warn!("cannot rescan the share folder: {e}");
            }
            self.index_pages = paginate(index.entries());
        }
        let pages = self.index_pages.len() as u32;
        let reply = match self.index_pages.get(page as usize) {
            Some(entries) => Message::IndexPage {
                request,
                page,
                pages,
                share: share_name(index.root()),
                entries: BoundedVec(entries.clone()),
            },
            None => Message::Error {
                request,
                reason: format!("no index page {page} (there are {pages})"),
            },
        };
        self.queue_stateless(from, reply);
    }

    fn serve_pieces(
        &mut self,
        from: SocketAddr,
        request: RequestId,
        file: FileId,
        hash: ContentHash,
        first: u32,
    ) {
        let shared = self.index.as_ref().and_then(|i| i.get(file));
        let reply = match shared {
            None => Message::Error {
                request,
                reason: format!("no file {file}"),
            },
            Some(f) if f.entry.hash != hash => Message::Error {
                request,
                reason: format!("file {file} changed since it was listed"),
            },
            Some(f) => {
                let start = (first as usize).min(f.pieces.len());
                let end = (start + MAX_PIECE_HASHES).min(f.pieces.len());
                Message::PieceHashes {
                    request,
                    piece_size: PIECE_SIZE,
                    pieces: f.pieces.len() as u32,
                    first: start as u32,
                    hashes: BoundedVec(f.pieces[start..end].to_vec()),
                }
            }
        };
        self.queue_stateless(from, reply);
    }

    fn serve_request(
        &mut self,
        now: std::time::Instant,
        from: SocketAddr,
        transfer: TransferId,
        file: FileId,
        offset: u64,
    ) {
        if let Some(up) = self.uploads.get_mut(&(from, transfer)) {
            tracing::debug!(%from, ?transfer, "request again: our accept was lost");
            up.machine.handle_message(
                now,
                &Message::Request {
                    transfer,
                    file,
                    offset,
                },
            );
            return;
        }
        let refuse = |reason| Message::Abort { transfer, reason };
        if !self.limiter.allow(now, from.ip()) {
            return; // flooding: dropped like a lost datagram
        }
        let from_peer = self
            .uploads
            .keys()
            .filter(|(a, _)| a.ip() == from.ip())
            .count();
        if self.uploads.len() >= self.config.max_uploads
            || from_peer >= self.config.max_uploads_per_peer
        {
            return self.queue_stateless(from, refuse(AbortReason::Busy));
        }
        let Some(shared) = self.index.as_ref().and_then(|i| i.get(file)) else {
            return self.queue_stateless(from, refuse(AbortReason::NoSuchFile));
        };
        if offset > shared.entry.size {
            return self.queue_stateless(from, refuse(AbortReason::BadRequest));
        }
        let opened = File::open(&shared.path).and_then(|f| f.metadata().map(|m| (f, m)));
        let file = match opened {
            Ok((f, m)) if m.len() == shared.entry.size && m.modified().ok() == shared.modified => f,
            Ok(_) => return self.queue_stateless(from, refuse(AbortReason::FileChanged)),
            Err(_) => return self.queue_stateless(from, refuse(AbortReason::NoSuchFile)),
        };
        let mut config = self.sender_config.clone();
        config.chunk_size = chunk_size_for(self.transport.max_message_size_to(from));
        let machine = ChunkSender::new(
            now,
            transfer,
            shared.entry.size,
            shared.entry.hash,
            offset,
            config,
        );
        tracing::debug!(%from, ?transfer, path = %shared.entry.path, offset, "serving");
        self.uploads.insert(
            (from, transfer),
            Upload {
                machine,
                file: Arc::new(file),
                reader: ReadAhead::default(),
                path: shared.path,
                size: shared.entry.size,
                modified: shared.modified,
                next_check: Instant::now() + CHANGE_CHECK,
            },
        );
    }

    /// Applies a download's events: write bytes, record verified pieces, publish progress,
    /// finish or fail (keeping the verified prefix for a resume).
    fn pump_download(&mut self, transfer: TransferId) {
        let save_every = self.config.save_every;
        let Some(d) = self.downloads.get_mut(&transfer) else {
            return;
        };
        let mut outcome: Option<Result<DownloadReport, ServiceError>> = None;
        let mut finished = None;
        if let Err(e) = d.checkpoint_done() {
            d.machine
                .abort(AbortReason::Other("receiver cannot write".into()));
            outcome = Some(Err(e));
        }
        while let Some(event) = d.machine.poll_event() {
            match event {
                ReceiverEvent::Accepted { .. } => {}
                ReceiverEvent::HashPiece(job) => {
                    // To the hashing thread, unless it is too far behind (or gone).
                    let job = match &self.hasher {
                        Some(w) if d.machine.hash_backlog() <= MAX_HASH_BACKLOG => {
                            w.jobs.send((transfer, job)).err().map(|e| e.0 .1)
                        }
                        _ => Some(job),
                    };
                    if let Some(job) = job {
                        d.machine.piece_hashed(job.index(), job.hash());
                    }
                }
                ReceiverEvent::Write(bytes) => {
                    let res = d.writer.as_mut().map(|w| w.write(&bytes));
                    if let Some(Err(e)) = res {
                        d.machine
                            .abort(AbortReason::Other("receiver cannot write".into()));
                        outcome.get_or_insert(Err(ServiceError::Io(format!(
                            "cannot write {}: {e}",
                            d.partial.display()
                        ))));
                    }
                    // Watchers are woken once per piece's worth of bytes, not per chunk (a
                    // wake-up cost more than the rest of a small chunk's bookkeeping).
                    let received = d.offset + d.machine.received();
                    if received >= d.shown + PROGRESS_STEP || received == d.size {
                        d.shown = received;
                        d.progress.send_modify(|p| p.received = received);
                    }
                }
                ReceiverEvent::PieceVerified { verified } => {
                    d.verified = verified;
                    let due =
                        verified - d.saved >= save_every || d.saved_at.elapsed() >= SAVE_INTERVAL;
                    if d.writer.is_some() && due && !d.checkpoints.busy() {
                        if let Err(e) = d.start_checkpoint() {
                            d.machine
                                .abort(AbortReason::Other("receiver cannot write".into()));
                            outcome.get_or_insert(Err(ServiceError::Io(format!(
                                "cannot write {}: {e}",
                                d.partial.display()
                            ))));
                        }
                    }
                }
                ReceiverEvent::Finished { received, hash } => {
                    finished = Some((received, hash));
                }
                ReceiverEvent::Failed(e) => {
                    outcome.get_or_insert(Err(ServiceError::Transfer(e)));
                }
            }
        }
        if let Some(result) = outcome {
            let result = match result {
                Ok(r) => Ok(r),
                Err(e) => Err(d.keep_partial(e)),
            };
            // Free the destination before answering: whoever hears the answer may resume.
            d.lock = None;
            if let Some(reply) = d.reply.take() {
                let _ = reply.send(result);
            }
        } else if let Some((received, hash)) = finished {
            match d.finish(received, hash, self.config.fsync) {
                Some(job) if self.config.finish_thread => {
                    while self.finishing.try_join_next().is_some() {}
                    self.finishing.spawn_blocking(move || job.run());
                }
                Some(job) => job.run(),
                None => {
                    if let Some(reply) = d.reply.take() {
                        let _ = reply.send(Err(ServiceError::Io("download already closed".into())));
                    }
                }
            }
        }
    }

    fn on_timeout(&mut self) {
        let now = Instant::now();
        // Requests: resend or give up.
        let due: Vec<RequestId> = self
            .rpcs
            .iter()
            .filter(|(_, r)| r.next_at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let rpc = self.rpcs.get_mut(&id).expect("listed");
            if rpc.attempts >= self.config.rpc_attempts {
                let rpc = self.rpcs.remove(&id).expect("listed");
                let _ = rpc.reply.send(Err(ServiceError::NoAnswer(rpc.to)));
                continue;
            }
            rpc.attempts += 1;
            rpc.wait = (rpc.wait * 2).min(Duration::from_secs(1));
            rpc.next_at = now + rpc.wait;
            let (to, bytes) = (rpc.to, rpc.bytes.clone());
            let transport = self.transport.clone();
            tokio::spawn(async move {
                let _ = transport.send_to(to, &bytes).await;
            });
        }
        if let Some(reg) = self.registration.as_mut() {
            if reg.next_at <= now {
                reg.next_at = now + reg.every;
                let msg = Message::Heartbeat {
                    request: RequestId(0),
                    name: reg.name.clone(),
                    port: reg.port,
                    transport: reg.transport,
                };
                let (tracker, mut msg) = (reg.tracker, msg);
                set_request_id(&mut msg, RequestId(self.take_id()));
                self.queue_stateless(tracker, msg);
            }
        }
        let std_now = now.into_std();
        for (&(to, transfer), up) in self.uploads.iter_mut() {
            if up.machine.poll_timeout().is_some_and(|t| t <= std_now) {
                let (in_flight, srtt, rto) = up.machine.timers();
                let timeouts = up.machine.stats().timeouts;
                up.machine.handle_timeout(std_now);
                if up.machine.stats().timeouts > timeouts {
                    tracing::debug!(
                        %to, ?transfer, in_flight, ?srtt, ?rto,
                        acked = up.machine.acked_chunks(),
                        "retransmission timeout"
                    );
                }
            }
        }
        let due: Vec<TransferId> = self
            .downloads
            .iter()
            .filter(|(_, d)| d.machine.poll_timeout().is_some_and(|t| t <= std_now))
            .map(|(t, _)| *t)
            .collect();
        for t in due {
            if let Some(d) = self.downloads.get_mut(&t) {
                d.machine.handle_timeout(std_now);
            }
            self.pump_download(t);
        }
    }

    /// Sends everything every machine wants to send, and drops finished machines.
    async fn flush(&mut self) {
        self.more_to_send = false;
        let now = Instant::now().into_std();
        let transport = self.transport.clone();
        let mut buf = Vec::with_capacity(transport.max_message_size().min(256 * 1024));
        // A chunk the transport takes as a head plus a file range (`sends_file`: on TCP, and
        // large datagrams) leaves its payload out of the checksum; others are read into
        // batches of checksummed datagrams.
        // Emptied after each upload, so one buffer serves them all, flush after flush.
        let mut batch = std::mem::take(&mut self.batch);
        let tokio_now = Instant::now();
        if let Some(rate) = self.config.max_upload_rate {
            let rate = rate as f64;
            let elapsed = tokio_now.duration_since(self.tokens_at).as_secs_f64();
            // At most a tenth of a second's worth in hand: no big bursts after a pause.
            self.upload_tokens = (self.upload_tokens + elapsed * rate).min(rate / 10.0);
            self.tokens_at = tokio_now;
            self.throttled_until = None;
        }
        for (&(to, transfer), up) in self.uploads.iter_mut() {
            if tokio_now >= up.next_check {
                up.next_check = tokio_now + CHANGE_CHECK;
                let meta = fs::metadata(&up.path).ok();
                let same =
                    meta.is_some_and(|m| m.len() == up.size && m.modified().ok() == up.modified);
                if !same {
                    tracing::info!(%to, path = %up.path.display(), "file changed while sent");
                    up.machine.abort(AbortReason::FileChanged);
                }
            }
            let mut sent = 0;
            loop {
                if sent == UPLOAD_BURST && !up.machine.is_done() {
                    // Let ACKs in before sending more: on a slow link a long flush would
                    // leave them unread until the idle timeout.
                    self.more_to_send = true;
                    break;
                }
                sent += 1;
                if let Some(rate) = self.config.max_upload_rate {
                    // A finished machine only has its last word (an Abort) left: never hold it.
                    if self.upload_tokens < 0.0 && !up.machine.is_done() {
                        let wait = -self.upload_tokens / rate as f64;
                        self.throttled_until =
                            Some(tokio_now + Duration::from_secs_f64(wait.max(0.001)));
                        break;
                    }
                }
                let Some(t) = up.machine.poll_transmit(now) else {
                    break;
                };
                match t {
                    SenderTransmit::Control(m) => {
                        batch.send(&transport, to).await;
                        buf.clear();
                        m.encode_into(&mut buf);
                        let _ = transport.send_to(to, &buf).await;
                    }
                    SenderTransmit::Chunk { seq, offset, len } => {
                        self.upload_tokens -= f64::from(len);
                        if transport.sends_file(to, len as usize) {
                            batch.send(&transport, to).await;
                            let mut head = Vec::with_capacity(DATA_OVERHEAD);
                            Message::encode_data_head(&mut head, transfer, seq, len as usize);
                            let body = FileRange {
                                file: up.file.clone(),
                                offset,
                                len: len as usize,
                            };
                            let _ = transport.send_file(to, head, body).await;
                            continue;
                        }
                        // Read from the file straight into the end of the batch of datagrams.
                        if batch.full() {
                            batch.send(&transport, to).await;
                        }
                        let start = batch.bytes.len();
                        let read = Message::encode_data_into(
                            &mut batch.bytes,
                            transfer,
                            seq,
                            len as usize,
                            |into| up.reader.read(&up.file, into, offset),
                        );
                        if read.is_err() {
                            up.machine.abort(AbortReason::FileChanged);
                        } else {
                            batch.added(&transport, to, start).await;
                        }
                    }
                }
            }
            batch.send(&transport, to).await;
            while let Some(e) = up.machine.poll_event() {
                match e {
                    SenderEvent::Finished => {
                        tracing::debug!(%to, ?transfer, stats = ?up.machine.stats(), "sent")
                    }
                    SenderEvent::Failed(err) => {
                        tracing::debug!(%to, ?transfer, "upload failed: {err}")
                    }
                }
            }
        }
        self.batch = batch;
        self.uploads.retain(|_, u| !u.machine.is_done());
        for (transfer, d) in self.downloads.iter_mut() {
            while let Some(m) = d.machine.poll_transmit() {
                if matches!(m, Message::Request { .. }) {
                    tracing::debug!(to = %d.peer, ?transfer, "request");
                }
                buf.clear();
                m.encode_into(&mut buf);
                let _ = transport.send_to(d.peer, &buf).await;
            }
        }
        let lingering = &mut self.lingering;
        self.downloads.retain(|&transfer, d| {
            let keep = !d.machine.is_done() || d.reply.is_some();
            if !keep {
                // Dropped with it: its claim on the destination (a finishing one's job holds
                // that claim until the file has its name).
                Lingering::remember(lingering, transfer, d);
            }
            keep
        });
    }

    async fn shutdown(&mut self) {
        for up in self.uploads.values_mut() {
            up.machine.abort(AbortReason::Shutdown);
        }
        let ids: Vec<TransferId> = self.downloads.keys().copied().collect();
        for t in ids {
            if let Some(d) = self.downloads.get_mut(&t) {
                d.machine.abort(AbortReason::Shutdown);
            }
            self.pump_download(t);
        }
        self.flush().await;
        for (_, rpc) in std::mem::take(&mut self.rpcs) {
            let _ = rpc.reply.send(Err(ServiceError::Closed));
        }
        // A download being finished is synced and named, and its caller answered, before the
        // endpoint says it is closed (the process may exit right after).
        while self.finishing.join_next().await.is_some() {}
        // The downloads just finished go to `lingering`; then their senders see their FINs
        // answered (one round trip, normally), so that a process that exits now leaves none
        // of them retrying until its timeout.
        self.flush().await;
        let deadline = Instant::now() + LINGER_ON_SHUTDOWN;
        let transport = self.transport.clone();
        while self
            .lingering
            .iter()
            .any(|l| !l.closed && l.until > deadline)
        {
            let Ok(got) = tokio::time::timeout_at(deadline, transport.recv_from()).await else {
                break;
            };
            let Ok((from, bytes)) = got else {
                break; // e.g. an ICMP unreachable: the sender is gone
            };
            let Ok(msg) = decode_bytes(&bytes) else {
                continue;
            };
            if let Some(answer) = self.answer_lingering(from, &msg) {
                let _ = transport.send_to(from, &answer.encode()).await;
            }
        }
    }
}

impl Download {
    fn state(&self, verified: u64) -> DownloadState {
        DownloadState {
            version: 1,
            size: self.size,
            hash: self.hash,
            piece_size: self.piece_size,
            verified,
            unsynced_boot: None,
        }
    }

    /// Writes out what is buffered and starts recording the verified prefix (in the
    /// background: see [`Checkpointer`]).
    fn start_checkpoint(&mut self) -> io::Result<()> {
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        w.flush()?;
        let verified = self.verified.min(w.written());
        if verified > self.saved {
            self.checkpoints.start(self.state(verified));
        }
        self.saved_at = Instant::now();
        Ok(())
    }

    /// Takes in a recorded checkpoint, if one finished.
    fn checkpoint_done(&mut self) -> Result<(), ServiceError> {
        match self.checkpoints.poll() {
            Some(res) => self.recorded(res),
            None => Ok(()),
        }
    }

    fn recorded(&mut self, res: io::Result<u64>) -> Result<(), ServiceError> {
        match res {
            Ok(saved) => {
                self.saved = self.saved.max(saved);
                let saved = self.saved;
                self.progress.send_modify(|p| p.saved = saved);
                Ok(())
            }
            Err(e) => Err(ServiceError::Io(format!(
                "cannot record progress beside {}: {e}",
                self.partial.display()
            ))),
        }
    }

    /// After a failure: keep the verified prefix (flushed and recorded) for a resume, or
    /// remove everything when nothing was verified. Returns the error to report.
    fn keep_partial(&mut self, err: ServiceError) -> ServiceError {
        // Keep what is both verified and known to be on disk (after a failed write, e.g. a
        // full disk, the file holds exactly `written()` good bytes), down to a piece boundary.
        if let Some(res) = self.checkpoints.wait() {
            let _ = self.recorded(res);
        }
        if let Some(mut w) = self.writer.take() {
            // Only synced bytes may be recorded as durable.
            let synced = w.sync().is_ok();
            let piece = u64::from(self.piece_size.max(1));
            let on_disk = w.written().min(self.verified);
            let keep = if on_disk == self.size {
                on_disk
            } else {
                on_disk / piece * piece
            };
            // Drop the unverified tail first: on a full disk that frees room for the state.
            let _ = w.truncate(keep.max(self.saved));
            if synced
                && keep > self.saved
                && save_state(&self.dest, &self.state(keep), true).is_ok()
            {
                self.saved = keep;
            }
        }
        incomplete(err, self.saved, &self.dest, &self.partial)
    }

    /// The work left once the last piece is verified, as a job that owns what it needs
    /// (`None` when the download was already closed).
    fn finish(&mut self, received: u64, hash: ContentHash, sync: bool) -> Option<Finish> {
        let writer = self.writer.take()?;
        self.finishing = true;
        Some(Finish {
            writer: Some(writer),
            checkpoint: self.checkpoints.take(),
            sync,
            partial: self.partial.clone(),
            saved: self.saved,
            report: DownloadReport {
                path: self.dest.clone(),
                size: self.size,
                received,
                hash,
                elapsed: Duration::ZERO,
                resumed_from: self.offset,
                discarded: self.discarded.take(),
                refetched: 0,
            },
            started: self.started,
            reply: self.reply.take(),
            lock: self.lock.take(),
            // The job publishes the checkpoint it waits for; nothing else is published after.
            progress: std::mem::replace(&mut self.progress, watch::channel(Progress::default()).0),
        })
    }
}

/// After a failure: the error to report, once the state file is gone if nothing was kept.
fn incomplete(err: ServiceError, saved: u64, dest: &Path, partial: &Path) -> ServiceError {
    if saved == 0 {
        resume::discard(dest);
        return err;
    }
    ServiceError::Incomplete {
        reason: err.to_string(),
        kept: saved,
        partial: partial.to_path_buf(),
        bad_piece: err.bad_piece(),
    }
}

/// What is left to do once a download's last piece is verified: wait for the checkpoint in
/// flight, flush (and sync) the file, give it its final name, remove the state file, then
/// answer and free the destination. Owns all it needs, so it can run on a blocking thread
/// ([`EndpointConfig::finish_thread`]).
struct Finish {
    writer: Option<PartialWriter>,
    checkpoint: PendingCheckpoint,
    sync: bool,
    partial: PathBuf,
    /// End of the prefix recorded in the state file.
    saved: u64,
    /// The report, but for the elapsed time; its `path` is the destination.
    report: DownloadReport,
    started: Instant,
    reply: Option<oneshot::Sender<Result<DownloadReport, ServiceError>>>,
    /// The claim on the destination, given up once the file has its name.
    lock: Option<DestinationLock>,
    progress: watch::Sender<Progress>,
}

impl Drop for Finish {
    /// Even if the job panics, the destination is not claimed forever.
    fn drop(&mut self) {
        self.release();
    }
}

impl Finish {
    fn run(mut self) {
        // A checkpoint still being recorded would write the state file after it is removed.
        if let Some(Ok(saved)) = self.checkpoint.wait() {
            self.saved = self.saved.max(saved);
            let saved = self.saved;
            self.progress.send_modify(|p| p.saved = saved);
        }
        let result = match self.finish_file() {
            Ok(()) => Ok(DownloadReport {
                elapsed: self.started.elapsed(),
                ..self.report.clone()
            }),
            Err(e) => Err(incomplete(e, self.saved, &self.report.path, &self.partial)),
        };
        // Free the destination before answering: whoever hears the answer may reuse it.
        self.release();
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(result);
        }
    }

    fn release(&mut self) {
        self.lock = None;
    }

    fn finish_file(&mut self) -> Result<(), ServiceError> {
        let io_err = |what: &str, e: io::Error| ServiceError::Io(format!("{what}: {e}"));
        let writer = self.writer.take().expect("finished once");
        let file = writer
            .finish(self.sync)
            .map_err(|e| io_err("cannot write the downloaded file", e))?;
        let (partial, dest) = (&self.partial, &self.report.path);
        // The very file written and verified takes the name, whatever sits at the partial's
        // path now; never replacing an existing file silently.
        match resume::publish(&file, partial, dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let existing = crate::index::hash_file(dest).ok();
                if lock::same_file(&file, partial) {
                    let _ = fs::remove_file(partial);
                }
                if existing != Some(self.report.hash) {
                    // Nothing is left to resume: no state file pointing at a removed partial.
                    resume::discard(dest);
                    self.saved = 0;
                    return Err(ServiceError::Io(format!(
                        "{} already exists with other content; move it away or choose another --out",
                        dest.display()
                    )));
                }
            }
            Err(e) => {
                return Err(io_err(
                    &format!("cannot move the file into {}", dest.display()),
                    e,
                ))
            }
        }
        resume::discard_state(dest);
        Ok(())
    }
}

/// The last component of the share folder, as shown to other peers (at most 255 bytes).
fn share_name(root: &Path) -> String {
    let name = root
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "share".into());
    let mut end = name.len().min(255);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// Payload bytes per chunk for messages of at most `max_message` bytes.
fn chunk_size_for(max_message: usize) -> u32 {
    max_message
        .saturating_sub(DATA_OVERHEAD)
        .clamp(64, MAX_CHUNK) as u32
}

fn set_request_id(msg: &mut Message, id: RequestId) {
    match msg {
        Message::Register { request, .. }
        | Message::Heartbeat { request, .. }
        | Message::Unregister { request, .. }
        | Message::ListPeers { request, .. }
        | Message::IndexRequest { request, .. }
        | Message::PieceRequest { request, .. } => *request = id,
        _ => {}
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_asked_again_after_four_round_trips_within_bounds() {
        let default = Duration::from_millis(500);
        let ms = Duration::from_millis;
        assert_eq!(request_retry_after(ms(30), default), ms(120));
        assert_eq!(request_retry_after(ms(1), default), MIN_REQUEST_RETRY);
        assert_eq!(request_retry_after(ms(400), default), default);
        // A configured wait shorter than the floor stays as configured.
        assert_eq!(request_retry_after(ms(1), ms(10)), ms(10));
    }

    #[tokio::test(start_paused = true)]
    async fn round_trips_are_remembered_for_a_bounded_set_of_recent_peers() {
        let mut rtts = RoundTrips::default();
        let peer = |i: usize| SocketAddr::from(([10, 0, (i / 256) as u8, (i % 256) as u8], 7));
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(30)).await;
        rtts.record(peer(0), sent);
        assert_eq!(rtts.recent(peer(0)), Some(Duration::from_millis(30)));
        assert_eq!(rtts.recent(peer(1)), None);
        for i in 1..=MAX_ROUND_TRIPS {
            tokio::time::advance(Duration::from_millis(1)).await;
            rtts.record(peer(i), Instant::now());
        }
        assert_eq!(rtts.0.len(), MAX_ROUND_TRIPS);
        assert_eq!(rtts.recent(peer(0)), None, "the oldest made room");
        assert!(rtts.recent(peer(MAX_ROUND_TRIPS)).is_some());
        tokio::time::advance(ROUND_TRIP_FRESH).await;
        assert_eq!(rtts.recent(peer(MAX_ROUND_TRIPS)), None, "stale");
    }

    /// Read-ahead gives exactly the file's bytes for sequential, backward and large reads,
    /// and a clear error past the end.
    #[test]
    fn read_ahead_returns_the_files_bytes() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let mut r = ReadAhead::default();
        let mut check = |offset: u64, len: usize| {
            let mut into = vec![0; len];
            r.read(&file, &mut into, offset).unwrap();
            assert!(into[..] == data[offset as usize..][..len], "{offset}+{len}");
        };
        let mut offset = 0;
        while offset + 1404 <= 200_000 {
            check(offset, 1404);
            offset += 1404;
        }
        check(1404 * 3, 1404); // a retransmission, behind the block
        check(100, 60_000); // a large chunk
        check(199_000, 1000); // the tail
        let mut into = vec![0; 1404];
        let err = r.read(&file, &mut into, 199_000).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
