//! The endpoint's task: its loop (commands, messages, timers, hashes), routing of incoming
//! messages to the machines they belong to, and the flush that sends what every machine has to send.

use super::download::Download;
use super::hashing::{next_hash, HashWorker};
use super::rpc::{
    set_request_id, Lingering, PendingRpc, Registration, RoundTrips, LINGER_ON_SHUTDOWN,
};
use super::upload::{Batch, Upload, CHANGE_CHECK};
use super::{Command, EndpointConfig, ServiceError};

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::index::ShareIndex;
use crate::limits::RateLimiter;
use crate::transfer::{SenderConfig, SenderEvent, SenderTransmit};
use crate::transport::{FileRange, SharedTransport};
use crate::wire::{
    decode_bytes, AbortReason, IndexEntry, Message, RegisterOutcome, RequestId, TransferId,
    DATA_OVERHEAD,
};

pub(super) struct Driver {
    pub(super) transport: SharedTransport,
    pub(super) config: EndpointConfig,
    pub(super) sender_config: SenderConfig,
    pub(super) rx: mpsc::Receiver<Command>,
    pub(super) index: Option<ShareIndex>,
    pub(super) index_pages: Vec<Vec<IndexEntry>>,
    pub(super) next_id: u64,
    pub(super) rpcs: BTreeMap<RequestId, PendingRpc>,
    /// The last round trip measured to each address (by requests answered at the first
    /// attempt), and when: a download asks again after a few of them, not after the
    /// default wait ([`RoundTrips`]).
    pub(super) round_trips: RoundTrips,
    pub(super) uploads: BTreeMap<(SocketAddr, TransferId), Upload>,
    pub(super) downloads: BTreeMap<TransferId, Download>,
    pub(super) registration: Option<Registration>,
    pub(super) limiter: RateLimiter,
    /// Upload rate cap: bytes that may be sent now, and when they were last topped up.
    pub(super) upload_tokens: f64,
    pub(super) tokens_at: Instant,
    /// Uploads wait until then for tokens.
    pub(super) throttled_until: Option<Instant>,
    /// A flush stopped at its burst limit: flush again once incoming messages are read.
    pub(super) more_to_send: bool,
    /// Names unregistered since their last `Register`: a late heartbeat arming is ignored.
    pub(super) left: BTreeSet<String>,
    /// Datagrams of uploads gathered for one send; kept, empty, between flushes (its buffer
    /// is reused without being zeroed again: see [`DatagramBuf`]).
    pub(super) batch: Batch,
    /// Hashes the pieces of downloads (`EndpointConfig::hash_thread`).
    pub(super) hasher: Option<HashWorker>,
    /// Downloads being finished on blocking threads (`EndpointConfig::finish_thread`); a
    /// shutdown waits for them.
    pub(super) finishing: tokio::task::JoinSet<()>,
    /// Finished downloads whose receivers are gone, oldest first: their senders may not know
    /// yet (see [`Lingering`]).
    pub(super) lingering: VecDeque<Lingering>,
}

/// Most messages handled from one burst before the endpoint answers.
pub(super) const BURST: usize = 64;
/// Most messages one upload sends per flush before incoming messages are read again.
pub(super) const UPLOAD_BURST: usize = 32;

impl Driver {
    pub(super) async fn run(mut self) {
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

    pub(super) fn next_deadline(&self) -> Option<Instant> {
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

    pub(super) fn take_id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    pub(super) async fn on_command(&mut self, cmd: Command) {
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

    pub(super) fn on_message(&mut self, from: SocketAddr, bytes: &Bytes) {
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
                        self.round_trips
                            .record(from, rpc.sent_at, Instant::from_std(now));
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

    pub(super) fn queue_stateless(&mut self, to: SocketAddr, msg: Message) {
        let transport = self.transport.clone();
        let bytes = msg.encode();
        tokio::spawn(async move {
            let _ = transport.send_to(to, &bytes).await;
        });
    }

    pub(super) fn on_timeout(&mut self) {
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
    pub(super) async fn flush(&mut self) {
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
        let now = Instant::now();
        self.downloads.retain(|&transfer, d| {
            let keep = !d.machine.is_done() || d.reply.is_some();
            if !keep {
                // Dropped with it: its claim on the destination (a finishing one's job holds
                // that claim until the file has its name).
                Lingering::remember(lingering, transfer, d, now);
            }
            keep
        });
    }

    pub(super) async fn shutdown(&mut self) {
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

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
