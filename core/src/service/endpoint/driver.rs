//! The endpoint's task: its loop (commands, messages, timers, hashes), routing of incoming
//! messages to the machines they belong to, and the flush that sends what every machine has to send.

use super::download::Download;
use super::hashing::{next_hash, HashWorker};
use super::rpc::{Replies, LINGER_ON_SHUTDOWN};
use super::upload::{Batch, Upload, CHANGE_CHECK};
use super::{Command, EndpointConfig, ServiceError, UploadNotice};

use std::collections::BTreeMap;
use std::fs::{self};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::index::ShareIndex;
use crate::relay::RelaySessions;
use crate::transfer::{SenderConfig, SenderEvent, SenderTransmit};
use crate::transport::{FileRange, FileReadError, SharedTransport};

use crate::wire::{
    decode_bytes, AbortReason, IndexEntry, Message, RequestId, TransferId, DATA_OVERHEAD,
};
use p2p_proto::endpoint::{Endpoint, Event, Incoming};

pub(super) struct Driver {
    pub(super) transport: SharedTransport,
    pub(super) config: EndpointConfig,
    pub(super) sender_config: SenderConfig,
    pub(super) rx: mpsc::Receiver<Command>,
    pub(super) index: Option<ShareIndex>,
    pub(super) index_pages: Vec<Vec<IndexEntry>>,
    /// The protocol logic without I/O: routing, requests and their retries, the heartbeat,
    /// admission, rate limits, lingering answers, round trips.
    pub(super) proto: Endpoint,
    /// Who waits for the answer of each request.
    pub(super) replies: Replies,
    pub(super) uploads: BTreeMap<(SocketAddr, TransferId), Upload>,
    pub(super) downloads: BTreeMap<TransferId, Download>,
    /// Upload rate cap: bytes that may be sent now, and when they were last topped up.
    pub(super) upload_tokens: f64,
    pub(super) tokens_at: Instant,
    /// Uploads wait until then for tokens.
    pub(super) throttled_until: Option<Instant>,
    /// When to try again the uploads whose transport queue had no room (a stream peer that
    /// reads slower than we send): they are skipped meanwhile, never waited on.
    pub(super) blocked_until: Option<Instant>,
    /// A flush stopped at its burst limit: flush again once incoming messages are read.
    pub(super) more_to_send: bool,
    /// Datagrams of uploads gathered for one send; kept, empty, between flushes (its buffer
    /// is reused without being zeroed again: see [`DatagramBuf`]).
    pub(super) batch: Batch,
    /// Hashes the pieces of downloads (`EndpointConfig::hash_thread`).
    pub(super) hasher: Option<HashWorker>,
    /// A rescan of the share folder running on a blocking thread
    /// (`EndpointConfig::rescan_thread`); its index (if it found a change) replaces ours
    /// when done.
    pub(super) rescanning: Option<tokio::task::JoinHandle<Option<ShareIndex>>>,
    /// Requests for the first index page waiting for the next scan, and those the running
    /// scan will answer.
    pub(super) index_waiting: Vec<(SocketAddr, RequestId)>,
    pub(super) index_scanning: Vec<(SocketAddr, RequestId)>,
    /// Downloads being finished on blocking threads (`EndpointConfig::finish_thread`); a
    /// shutdown waits for them.
    pub(super) finishing: tokio::task::JoinSet<()>,
    /// Woken when a transport could not read a file an upload sends (see
    /// [`FileRange::on_read_error`]).
    pub(super) disk_alarm: Arc<Notify>,
    /// Which upload a flush serves first (see `flush`).
    pub(super) upload_turn: usize,
    /// Downloads in progress served to others (see `partials.rs`).
    pub(super) partials: super::Partials,
    /// The relay sessions of the transport (a relaying wrapper).
    pub(super) relay: Arc<RelaySessions>,
}

/// Most messages handled from one burst before the endpoint answers.
pub(super) const BURST: usize = 64;
/// Most messages one upload sends per flush before incoming messages are read again.
pub(super) const UPLOAD_BURST: usize = 32;

/// How soon an upload whose transport queue was full is tried again.
const SEND_ROOM_RETRY: std::time::Duration = std::time::Duration::from_millis(1);

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
                // An upload's file could not be read: `flush` stops it.
                _ = self.disk_alarm.notified() => {}
                index = rescanned(&mut self.rescanning) => self.rescan_done(index),
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
        let proto = self.proto.poll_timeout().map(Instant::from_std);
        let up = self
            .uploads
            .values()
            .filter_map(|u| u.machine.poll_timeout().map(Instant::from_std));
        let down = self
            .downloads
            .values()
            .filter_map(|d| d.machine.poll_timeout().map(Instant::from_std));
        // While throttled, uploads' own deadlines still count (RTO, idle), plus the refill.
        proto
            .into_iter()
            .chain(up)
            .chain(down)
            .chain(self.throttled_until)
            .chain(self.blocked_until)
            .min()
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
                // The tracker may relay others to us (`crate::relay`).
                self.relay.allow(tracker);
                self.proto.keep_registered(
                    Instant::now().into_std(),
                    tracker,
                    name,
                    port,
                    transport,
                    every,
                );
            }
            Command::Download {
                peer,
                entry,
                dest,
                table,
                progress,
                reply,
            } => self.start_download(peer, entry, dest, table, progress, reply),
            Command::Range {
                job,
                progress,
                reply,
            } => self.start_range(job, progress, reply),
            Command::Poke => self.cancel_ranges(),
            Command::Reannounce => self.announce_index(),
            Command::Punch {
                tracker,
                name,
                reply,
            } => self.start_punch(tracker, name, reply).await,
            Command::Shutdown { .. } => unreachable!("handled by the loop"),
        }
    }

    pub(super) fn on_message(&mut self, from: SocketAddr, bytes: &Bytes) {
        let Ok(msg) = decode_bytes(bytes) else {
            return; // corrupt or foreign: dropped like a lost datagram
        };
        let now = Instant::now().into_std();
        match self.proto.handle(now, from, msg) {
            None => {}
            Some(Incoming::Answer { request, answer }) => self.replies.answer(request, answer),
            Some(Incoming::IndexRequest {
                from,
                request,
                page,
            }) => self.serve_index(from, request, page),
            Some(Incoming::EntryRequest {
                from,
                request,
                file,
            }) => {
                // From the index as it is, if the file is still as indexed (size, mtime);
                // else `None`, and the client takes a full listing, which rescans (as it
                // finds files added since).
                let entry = self
                    .index
                    .as_ref()
                    .and_then(|i| i.get(file))
                    .filter(unchanged)
                    .map(|s| s.entry);
                let reply = entry_reply(request, entry, || self.partials.by_id(file));
                self.queue_stateless(from, reply);
            }
            Some(Incoming::EntryByHash {
                from,
                request,
                hash,
            }) => {
                // As for `EntryRequest`: from the index as it is, if the file is unchanged;
                // else a collection (a folder) of that hash, as last scanned (the client
                // checks the folder against the hash in a fresh listing); else a download in
                // progress of that content.
                let entry = self.index.as_ref().and_then(|i| {
                    let file = i.find_hash(hash).filter(unchanged).map(|s| s.entry);
                    file.or_else(|| i.find_collection(hash))
                });
                let reply = entry_reply(request, entry, || self.partials.by_hash(hash));
                self.queue_stateless(from, reply);
            }
            Some(Incoming::HaveRequest {
                from,
                request,
                hash,
                first,
            }) => self.serve_have(from, request, hash, first),
            Some(Incoming::PieceRequest {
                from,
                request,
                file,
                hash,
                first,
            }) => self.serve_pieces(from, request, file, hash, first),
            Some(Incoming::NewUpload {
                from,
                transfer,
                file,
                offset,
                end,
            }) => self.serve_request(now, from, transfer, file, (offset, end)),
            Some(Incoming::Upload {
                from,
                transfer,
                msg,
            }) => {
                if matches!(msg, Message::Request { .. }) {
                    tracing::debug!(%from, ?transfer, "request again: our accept was lost");
                }
                let stream = self.reliable_to(from);
                if let Some(up) = self.uploads.get_mut(&(from, transfer)) {
                    up.machine.handle_message(now, &msg);
                    let delivered = up.machine.delivered_bytes();
                    // A stream's RTT is mostly its queues (megabytes on loopback): turns of a
                    // few of those let some uploads take 30 MiB a turn and others 4.
                    let rtt = if stream { None } else { up.machine.min_rtt() };
                    let done = up.machine.all_acked();
                    self.proto
                        .upload_progress(now, (from, transfer), rtt, delivered, done);
                }
            }
            Some(Incoming::Download { transfer, msg }) => {
                if let Some(d) = self.downloads.get_mut(&transfer) {
                    d.machine.handle_message(now, &msg);
                    self.pump_download(transfer);
                }
            }
        }
        self.on_events();
    }

    /// Hands what became of requests to their callers.
    pub(super) fn on_events(&mut self) {
        while let Some(event) = self.proto.poll_event() {
            match event {
                Event::NoAnswer { request, to } => {
                    self.replies.fail(request, ServiceError::NoAnswer(to))
                }
                Event::Evicted { to, transfer } => {
                    tracing::debug!(%to, ?transfer, "upload evicted: nothing acknowledged");
                    if let Some(up) = self.uploads.get_mut(&(to, transfer)) {
                        up.machine.abort(AbortReason::Busy);
                    }
                }
                Event::Paused { to, transfer } => {
                    if let Some(up) = self.uploads.get_mut(&(to, transfer)) {
                        tracing::debug!(%to, ?transfer, delivered = up.machine.delivered_bytes(), "upload paused: its turn is over");
                        up.machine.pause(Instant::now().into_std());
                    }
                }
                Event::Resumed { to, transfer } => {
                    if let Some(up) = self.uploads.get_mut(&(to, transfer)) {
                        tracing::debug!(%to, ?transfer, delivered = up.machine.delivered_bytes(), "upload resumed");
                        up.machine.resume(Instant::now().into_std());
                        self.more_to_send = true;
                    }
                }
                Event::Punched { request, peer } => self.replies.answer(
                    request,
                    Message::Introduced {
                        request,
                        peer: Some(peer),
                    },
                ),
                Event::PunchFailed { request, silent } => {
                    self.replies.fail(request, ServiceError::NoAnswer(silent))
                }
                Event::Admitted {
                    from,
                    transfer,
                    file,
                    offset,
                    end,
                } => {
                    // Served as a new request (which takes the slot again if the file opens).
                    self.proto.upload_ended(from, transfer);
                    let now = Instant::now().into_std();
                    self.serve_request(now, from, transfer, file, (offset, end));
                }
                Event::HeartbeatRefused { tracker, reason } => {
                    tracing::warn!(%tracker, ?reason, "heartbeat refused")
                }
            }
        }
    }

    pub(super) fn queue_stateless(&mut self, to: SocketAddr, msg: Message) {
        let transport = self.transport.clone();
        // The answer to a request that came as an `Initial` goes with a token, or as a
        // `Retry` if it is too large to go before the asker proved its address.
        let msg = self.proto.answer_for(Instant::now().into_std(), to, msg);
        let bytes = msg.encode();
        tokio::spawn(async move {
            send_unless_full(&transport, to, &bytes).await;
        });
    }

    pub(super) fn on_timeout(&mut self) {
        // Ranges nobody waits for any more end here at the latest.
        self.cancel_ranges();
        let now = Instant::now();
        // Requests: resend or give up; the heartbeat.
        self.proto.handle_timeout(now.into_std());
        self.on_events();
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
        self.blocked_until = None;
        if let Some(rate) = self.config.max_upload_rate {
            let rate = rate as f64;
            let elapsed = tokio_now.duration_since(self.tokens_at).as_secs_f64();
            // At most a tenth of a second's worth in hand: no big bursts after a pause.
            self.upload_tokens = (self.upload_tokens + elapsed * rate).min(rate / 10.0);
            self.tokens_at = tokio_now;
            self.throttled_until = None;
        }
        // While others wait for a slot, no upload has more than a turn's quantum in flight
        // (a turn ends on what is delivered; the rest arrives during the pause).
        let in_flight_cap = match self.proto.line_len() {
            0 => u64::MAX,
            _ => p2p_proto::endpoint::UPLOAD_QUANTUM,
        };
        // Round robin: a flush starts with the upload after the last one that sent a chunk,
        // so that under a rate cap, where the first served takes what is left, each gets
        // its turn.
        let order: Vec<(SocketAddr, TransferId)> = self.uploads.keys().copied().collect();
        let first = self.upload_turn % order.len().max(1);
        let turns = order[first..].iter().chain(&order[..first]);
        for (turn, &(to, transfer)) in turns.enumerate() {
            let Some(up) = self.uploads.get_mut(&(to, transfer)) else {
                continue;
            };
            up.machine.cap_in_flight(in_flight_cap);
            if !up.partial && tokio_now >= up.next_check {
                up.next_check = tokio_now + CHANGE_CHECK;
                let meta = fs::metadata(&up.path).ok();
                let same =
                    meta.is_some_and(|m| m.len() == up.size && m.modified().ok() == up.modified);
                if !same {
                    tracing::info!(%to, path = %up.path.display(), "file changed while sent");
                    up.machine.abort(AbortReason::FileChanged);
                }
            }
            if up.read_failed.load(Ordering::Relaxed) && !up.machine.is_done() {
                tracing::warn!(%to, path = %up.path.display(), "upload stopped: the file cannot be read");
                up.machine.abort(AbortReason::DiskError);
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
                if !transport.chunk_room(to) && !up.machine.is_done() {
                    // This peer's queue is full: the others go first, and it is tried again
                    // shortly (the event loop never waits on one peer).
                    self.blocked_until = Some(tokio_now + SEND_ROOM_RETRY);
                    break;
                }
                let Some(t) = up.machine.poll_transmit(now) else {
                    break;
                };
                match t {
                    SenderTransmit::Control(m) => {
                        batch.send(&transport, to).await;
                        buf.clear();
                        m.encode_into(&mut buf);
                        send_unless_full(&transport, to, &buf).await;
                    }
                    SenderTransmit::Chunk { seq, offset, len } => {
                        self.upload_tokens -= f64::from(len);
                        self.upload_turn = first + turn + 1;
                        if transport.sends_file(to, len as usize) {
                            batch.send(&transport, to).await;
                            let mut head = Vec::with_capacity(DATA_OVERHEAD);
                            Message::encode_data_head(&mut head, transfer, seq, len as usize);
                            let body = FileRange {
                                file: up.file.clone(),
                                offset,
                                len: len as usize,
                                on_read_error: Some(up.on_read_error.clone()),
                            };
                            if let Err(e) = transport.send_file(to, head, body).await {
                                if FileReadError::is(&e) {
                                    tracing::warn!(path = %up.path.display(), error = %e, "upload stopped");
                                    up.machine.abort(AbortReason::DiskError);
                                }
                            }
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
                            |into| up.reader.read(&*up.file, into, offset),
                        );
                        if let Err(e) = read {
                            // Shorter than listed: changed; anything else: the disk failed.
                            let reason = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                                AbortReason::FileChanged
                            } else {
                                tracing::warn!(path = %up.path.display(), error = %e, "upload stopped");
                                AbortReason::DiskError
                            };
                            up.machine.abort(reason);
                        } else {
                            batch.added(&transport, to, start).await;
                        }
                    }
                }
            }
            batch.send(&transport, to).await;
            while let Some(e) = up.machine.poll_event() {
                let notice = match e {
                    SenderEvent::Finished => {
                        tracing::debug!(%to, ?transfer, stats = ?up.machine.stats(), "sent");
                        UploadNotice::Finished {
                            peer: to,
                            path: up.listed.clone(),
                            bytes: up.size - up.offset,
                            elapsed: up.started.elapsed(),
                        }
                    }
                    SenderEvent::Failed(err) => {
                        tracing::debug!(%to, ?transfer, stats = ?up.machine.stats(), "upload failed: {err}");
                        UploadNotice::Failed {
                            peer: to,
                            path: up.listed.clone(),
                            reason: err.to_string(),
                        }
                    }
                };
                if let Some(tx) = &self.config.upload_notices {
                    let _ = tx.try_send(notice);
                }
            }
        }
        self.batch = batch;
        let proto = &mut self.proto;
        let before = self.uploads.len();
        self.uploads.retain(|&(to, transfer), u| {
            let keep = !u.machine.is_done();
            if !keep {
                proto.upload_ended(to, transfer);
            }
            keep
        });
        if self.uploads.len() < before {
            // Slots freed: the next in line are served.
            self.proto.admit_waiting(now);
            self.on_events();
        }
        for (transfer, d) in self.downloads.iter_mut() {
            while let Some(m) = d.machine.poll_transmit(now) {
                buf.clear();
                if matches!(m, Message::Request { .. }) {
                    tracing::debug!(to = %d.peer, ?transfer, "request");
                    // With the token the sender gave us, if any (see `p2p_proto::validation`).
                    self.proto.wrap(d.peer, &m).encode_into(&mut buf);
                } else {
                    m.encode_into(&mut buf);
                }
                send_unless_full(&transport, d.peer, &buf).await;
            }
        }
        let proto = &mut self.proto;
        let now = Instant::now().into_std();
        self.downloads.retain(|&transfer, d| {
            let keep = !d.machine.is_done() || d.reply.is_some();
            if !keep {
                // Dropped with it: its claim on the destination (a finishing one's job holds
                // that claim until the file has its name). Its sender may not know the end
                // yet: the endpoint answers it for a while.
                let owed = d.machine.final_ack().filter(|_| !d.machine.fin_answered());
                proto.download_ended(now, transfer, owed);
            }
            keep
        });
        self.send_proto_transmits().await;
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
        self.proto.cancel_all();
        self.replies.close();
        // A download being finished is synced and named, and its caller answered, before the
        // endpoint says it is closed (the process may exit right after).
        while self.finishing.join_next().await.is_some() {}
        // The downloads just finished go to `lingering`; then their senders see their FINs
        // answered (one round trip, normally), so that a process that exits now leaves none
        // of them retrying until its timeout.
        self.flush().await;
        let deadline = Instant::now() + LINGER_ON_SHUTDOWN;
        let transport = self.transport.clone();
        while self.proto.owes_fin_ack(deadline.into_std()) {
            let Ok(got) = tokio::time::timeout_at(deadline, transport.recv_from()).await else {
                break;
            };
            let Ok((from, bytes)) = got else {
                break; // e.g. an ICMP unreachable: the sender is gone
            };
            let Ok(msg) = decode_bytes(&bytes) else {
                continue;
            };
            // Only the answers owed are sent; anything else is past caring.
            let _ = self.proto.handle(Instant::now().into_std(), from, msg);
            self.send_proto_transmits().await;
        }
        // On a stream, what was just sent (the FIN answers, the downloads' last ACKs) waits
        // in the connections' queues: out before the process may exit.
        self.transport.flush(LINGER_ON_SHUTDOWN).await;
    }

    /// Sends what the protocol logic queued: answers owed, requests again, heartbeats,
    /// refusals.
    pub(super) async fn send_proto_transmits(&mut self) {
        while let Some(t) = self.proto.poll_transmit() {
            tracing::trace!(to = %t.to, len = t.payload.len(), head = ?&t.payload[..t.payload.len().min(4)], "transmit");
            send_unless_full(&self.transport, t.to, &t.payload).await;
        }
        self.send_probes().await;
    }
}

/// Sends a control message (an ACK, a request, an answer, an `Abort`) to `to`, unless its
/// queue is full (a TCP peer that reads nothing): then it is dropped, as a datagram would be
/// lost, and the protocol's timers repair it (a later ACK covers it, a request is sent
/// again, a transfer times out). The event loop never waits on one peer's queue.
async fn send_unless_full(transport: &SharedTransport, to: SocketAddr, bytes: &[u8]) {
    if transport.send_room(to) == 0 {
        tracing::debug!(%to, "control message dropped: the peer's queue is full");
        return;
    }
    let _ = transport.send_to(to, bytes).await;
}

impl Driver {
    /// Whether nothing sent to `peer` is lost on the way (the transport says, per destination:
    /// TCP, but not through a relay).
    pub(super) fn reliable_to(&self, peer: SocketAddr) -> bool {
        self.transport.is_reliable_to(peer)
    }
}

/// The answer to an entry lookup: `entry` from the share, else the entry of a download in
/// progress that `partial` finds (marked as such), else none.
fn entry_reply(
    request: RequestId,
    entry: Option<IndexEntry>,
    partial: impl FnOnce() -> Option<Arc<super::partials::PartialShare>>,
) -> Message {
    match entry {
        Some(entry) => Message::EntryReply {
            request,
            entry: Some(entry),
            partial: false,
        },
        None => {
            let found = partial();
            Message::EntryReply {
                request,
                partial: found.is_some(),
                entry: found.map(|p| p.entry.clone()),
            }
        }
    }
}

/// Whether a shared file is still as indexed (size and mtime).
fn unchanged(s: &crate::index::SharedFile) -> bool {
    fs::metadata(&s.path).is_ok_and(|m| m.len() == s.entry.size && m.modified().ok() == s.modified)
}

/// The index a rescan made (`None`: it found no change, or failed); never, without one
/// running.
async fn rescanned(
    rescan: &mut Option<tokio::task::JoinHandle<Option<ShareIndex>>>,
) -> Option<ShareIndex> {
    match rescan {
        Some(job) => job.await.ok().flatten(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
