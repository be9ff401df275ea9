//! Serving the share: index pages, piece tables, and files as chunk senders read ahead from
//! disk; after each scan of the share, its content hashes go to the protocol logic, which
//! announces them to the tracker.

use super::driver::Driver;
use super::partials::{self, NOT_HELD};
use super::{chunk_size_for, UploadNotice};
use crate::index::ShareIndex;
use p2p_proto::endpoint::Endpoint;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::service::storage::{FileHandle, StoredFile};
use crate::transfer::ChunkSender;
use crate::transport::{OnReadError, SharedTransport};
use crate::wire::paginate;
use crate::wire::{
    AbortReason, BoundedVec, ContentHash, DatagramBuf, FileId, IndexEntry, Message, RequestId,
    TransferId, MAX_PIECE_HASHES, PIECE_SIZE,
};

pub(super) struct Upload {
    pub(super) machine: ChunkSender,
    /// Shared with chunks a transport still has queued ([`FileRange`]).
    pub(super) file: FileHandle,
    pub(super) reader: ReadAhead,
    pub(super) path: PathBuf,
    pub(super) size: u64,
    pub(super) modified: Option<SystemTime>,
    pub(super) next_check: Instant,
    /// Raised by a transport that could not read a chunk of the file ([`FileRange`]).
    pub(super) read_failed: Arc<AtomicBool>,
    /// What a transport calls then: raises `read_failed`, wakes the driver.
    pub(super) on_read_error: OnReadError,
    /// The file as listed, for notices.
    pub(super) listed: String,
    /// First byte sent.
    pub(super) offset: u64,
    pub(super) started: Instant,
    /// A download in progress (its file changes as it is written; its served pieces never
    /// do, and the open file stays valid when it takes its final name).
    pub(super) partial: bool,
}

/// What an admitted request is served from.
struct Served {
    entry: IndexEntry,
    file: FileHandle,
    path: PathBuf,
    modified: Option<SystemTime>,
    partial: bool,
}

/// The piece hashes of `pieces` from `first` on, as many as one message takes.
fn piece_hashes(
    request: RequestId,
    pieces: &[ContentHash],
    piece_size: u32,
    first: u32,
) -> Message {
    let start = (first as usize).min(pieces.len());
    let end = (start + MAX_PIECE_HASHES).min(pieces.len());
    Message::PieceHashes {
        request,
        piece_size,
        pieces: pieces.len() as u32,
        first: start as u32,
        hashes: BoundedVec(pieces[start..end].to_vec()),
    }
}

/// Reads small chunks of an upload from a block read ahead: a run of 1,404-byte chunks (a
/// 1,500-byte MTU) costs one `pread` per 46 chunks instead of one each. Large chunks, and
/// chunks before the block (retransmissions), are read directly.
#[derive(Default)]
pub(super) struct ReadAhead {
    pub(super) block: Vec<u8>,
    /// File offset of `block[0]`.
    pub(super) start: u64,
}

/// Bytes read ahead per upload.
pub(super) const READ_AHEAD: usize = 64 * 1024;

impl ReadAhead {
    /// Fills `into` with the file's bytes from `offset`.
    pub(super) fn read(
        &mut self,
        file: &dyn StoredFile,
        into: &mut [u8],
        offset: u64,
    ) -> io::Result<()> {
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

/// Most requests for the first index page waiting for a scan of the share; more are dropped
/// (their senders ask again).
const MAX_INDEX_WAITING: usize = 1024;

/// How often a file being sent is checked for changes.
pub(super) const CHANGE_CHECK: Duration = Duration::from_millis(100);

/// Datagrams of one size gathered for one segmented send (UDP GSO): each new one is encoded
/// at the end of `bytes`.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) bytes: DatagramBuf,
    /// Size of each datagram (the first one's).
    pub(super) segment: usize,
    pub(super) count: usize,
    /// Most datagrams the transport takes in one send.
    pub(super) max: usize,
}

impl Batch {
    pub(super) fn full(&self) -> bool {
        self.count > 0 && self.count >= self.max
    }

    /// Takes in the datagram just encoded at `bytes[start..]`; one of another size is sent
    /// on its own (segments must be equal but for the last).
    pub(super) async fn added(
        &mut self,
        transport: &SharedTransport,
        to: SocketAddr,
        start: usize,
    ) {
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
    pub(super) async fn send(&mut self, transport: &SharedTransport, to: SocketAddr) {
        if self.count > 0 {
            let _ = transport
                .send_batch(to, self.bytes.as_slice(), self.segment)
                .await;
        }
        self.bytes.clear();
        self.count = 0;
    }
}

/// The content hashes of `index`'s files and collections, to announce (the protocol logic
/// sorts them and drops duplicates). Empty files are left out: everyone has their content.
/// See [`ShareIndex::content_hashes`].
fn content_hashes(index: &ShareIndex) -> Vec<ContentHash> {
    index.content_hashes()
}

/// The last component of the share folder, as shown to other peers (at most 255 bytes).
pub(super) fn share_name(root: &Path) -> String {
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

impl Driver {
    pub(super) fn serve_index(&mut self, from: SocketAddr, request: RequestId, page: u32) {
        let Some(index) = self.index.as_mut() else {
            return self.queue_stateless(
                from,
                Message::Error {
                    request,
                    reason: "this endpoint shares nothing".into(),
                },
            );
        };
        if page == 0 {
            // The first page is answered from a scan of the folder begun after the request
            // came, so that a listing shows the folder as it is.
            if !self.config.rescan_thread {
                match index.refresh() {
                    Ok(false) => {}
                    Ok(true) => {
                        self.index_pages = paginate(index.entries());
                        self.announce_index();
                    }
                    Err(e) => tracing::warn!("cannot rescan the share folder: {e}"),
                }
            } else {
                // Off the I/O task: requests wait for the next scan, which begins as soon
                // as none is running; one scan answers every request that came before it.
                if self.index_waiting.len() < MAX_INDEX_WAITING {
                    self.index_waiting.push((from, request));
                }
                self.start_rescan();
                return;
            }
        }
        self.paginate_once();
        let reply = self.index_page(request, page);
        self.queue_stateless(from, reply);
    }

    /// Starts a scan of the share folder on a blocking thread for the requests waiting for
    /// one, unless a scan runs already (its end starts the next).
    pub(super) fn start_rescan(&mut self) {
        if self.rescanning.is_some() || self.index_waiting.is_empty() {
            return;
        }
        let Some(index) = self.index.as_ref() else {
            return;
        };
        // Cheap: the copy shares the index's maps until the scan finds a change.
        let mut copy = index.clone();
        self.rescanning = Some(tokio::task::spawn_blocking(move || match copy.refresh() {
            Ok(true) => Some(copy),
            Ok(false) => None,
            Err(e) => {
                tracing::warn!("cannot rescan the share folder: {e}");
                None
            }
        }));
        self.index_scanning = std::mem::take(&mut self.index_waiting);
    }

    /// A scan ended: its index replaces ours if it found a change (`index`), the requests
    /// that waited for it get their first page, and those that came meanwhile start the
    /// next scan. A scan that found the folder as it was leaves the pages as they are.
    pub(super) fn rescan_done(&mut self, index: Option<ShareIndex>) {
        self.rescanning = None;
        if let Some(index) = index {
            self.index_pages = paginate(index.entries());
            self.index = Some(index);
            self.announce_index();
        }
        self.paginate_once();
        for (from, request) in std::mem::take(&mut self.index_scanning) {
            let reply = self.index_page(request, 0);
            self.queue_stateless(from, reply);
        }
        self.start_rescan();
    }

    /// Splits the index into pages if it was not yet (pages are kept until a scan finds a
    /// change).
    fn paginate_once(&mut self) {
        if let (true, Some(index)) = (self.index_pages.is_empty(), self.index.as_ref()) {
            self.index_pages = paginate(index.entries());
        }
    }

    /// Hands the content hashes of the index as last scanned to the protocol logic, which
    /// announces them to the tracker while registered (again only when they changed; see
    /// `p2p_proto::endpoint::announce`).
    pub(super) fn announce_index(&mut self) {
        let mut hashes = self.index.as_ref().map(content_hashes).unwrap_or_default();
        hashes.extend(self.partials.hashes());
        let now = Instant::now().into_std();
        self.proto.set_announced(now, hashes);
    }

    /// Page `page` of the index as last scanned.
    fn index_page(&self, request: RequestId, page: u32) -> Message {
        let pages = self.index_pages.len() as u32;
        match (self.index_pages.get(page as usize), self.index.as_ref()) {
            (Some(entries), Some(index)) => Message::IndexPage {
                request,
                page,
                pages,
                share: share_name(index.root()),
                entries: BoundedVec(entries.clone()),
            },
            _ => Message::Error {
                request,
                reason: format!("no index page {page} (there are {pages})"),
            },
        }
    }

    pub(super) fn serve_pieces(
        &mut self,
        from: SocketAddr,
        request: RequestId,
        file: FileId,
        hash: ContentHash,
        first: u32,
    ) {
        if let Some(p) = self.partials.by_id(file) {
            let reply = match p.entry.hash == hash {
                true => piece_hashes(request, &p.table.hashes, p.table.piece_size, first),
                false => Message::Error {
                    request,
                    reason: format!("file {file} changed since it was listed"),
                },
            };
            return self.queue_stateless(from, reply);
        }
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
            Some(f) => piece_hashes(request, &f.pieces, PIECE_SIZE, first),
        };
        self.queue_stateless(from, reply);
    }

    /// Which pieces of content `hash` are served, from piece `first` on: those verified of a
    /// download in progress, all of a shared file.
    pub(super) fn serve_have(
        &mut self,
        from: SocketAddr,
        request: RequestId,
        hash: ContentHash,
        first: u32,
    ) {
        let reply = if let Some(p) = self.partials.by_hash(hash) {
            let (first, bits) = p.bits(first);
            Message::Have {
                request,
                hash,
                pieces: p.table.hashes.len() as u32,
                first,
                bits,
            }
        } else if let Some(f) = self.index.as_ref().and_then(|i| i.find_hash(hash)) {
            let (first, bits) = partials::bits_of(f.pieces.len(), first, |_| true);
            Message::Have {
                request,
                hash,
                pieces: f.pieces.len() as u32,
                first,
                bits,
            }
        } else {
            Message::Error {
                request,
                reason: format!("no content {}", hash.to_hex()),
            }
        };
        self.queue_stateless(from, reply);
    }

    pub(super) fn serve_request(
        &mut self,
        now: std::time::Instant,
        from: SocketAddr,
        transfer: TransferId,
        file: FileId,
        (offset, end): (u64, Option<u64>),
    ) {
        // Admitted by the protocol logic (rate, upload slots); refusals go back as `Abort`s.
        let refuse = |proto: &mut Endpoint, reason| proto.refuse(from, transfer, reason);
        if let Some(p) = self.partials.by_id(file) {
            let wanted = offset..end.unwrap_or(p.entry.size);
            if !p.holds(wanted) {
                return refuse(&mut self.proto, AbortReason::Other(NOT_HELD.into()));
            }
            let served = Served {
                entry: p.entry.clone(),
                file: p.file.clone(),
                path: p.path.clone(),
                modified: None,
                partial: true,
            };
            return self.start_upload(now, from, transfer, served, (offset, end));
        }
        let Some(shared) = self.index.as_ref().and_then(|i| i.get(file)) else {
            return refuse(&mut self.proto, AbortReason::NoSuchFile);
        };
        if offset > shared.entry.size || end.is_some_and(|end| end <= offset) {
            return refuse(&mut self.proto, AbortReason::BadRequest);
        }
        let file = match self.config.storage.open_read(&shared.path) {
            Ok(o) if o.len == shared.entry.size && o.modified == shared.modified => o.file,
            Ok(_) => return refuse(&mut self.proto, AbortReason::FileChanged),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return refuse(&mut self.proto, AbortReason::NoSuchFile)
            }
            Err(e) => {
                tracing::warn!(path = %shared.path.display(), error = %e, "cannot open a shared file");
                return refuse(&mut self.proto, AbortReason::DiskError);
            }
        };
        let served = Served {
            entry: shared.entry,
            file,
            path: shared.path,
            modified: shared.modified,
            partial: false,
        };
        self.start_upload(now, from, transfer, served, (offset, end));
    }

    /// Starts sending bytes `offset..end` of `shared` (admitted, opened) to `from`.
    fn start_upload(
        &mut self,
        now: std::time::Instant,
        from: SocketAddr,
        transfer: TransferId,
        shared: Served,
        (offset, end): (u64, Option<u64>),
    ) {
        let mut config = self.sender_config.clone();
        config.chunk_size = chunk_size_for(self.transport.max_message_size_to(from));
        if !self.reliable_to(from) {
            // A relayed peer: the relay drops what exceeds its rate, even over TCP.
            config.reliable = false;
            config.min_rto = self.config.sender.min_rto;
        }
        let machine = ChunkSender::new(
            now,
            transfer,
            shared.entry.size,
            shared.entry.hash,
            offset,
            config,
        );
        let machine = match end {
            Some(end) => machine.ending_at(end),
            None => machine,
        };
        tracing::debug!(%from, ?transfer, path = %shared.entry.path, offset, ?end, "serving");
        let read_failed = Arc::new(AtomicBool::new(false));
        let on_read_error: OnReadError = {
            let (flag, alarm) = (read_failed.clone(), self.disk_alarm.clone());
            Arc::new(move || {
                flag.store(true, Ordering::Relaxed);
                alarm.notify_one();
            })
        };
        self.proto.upload_started(now, from, transfer);
        self.uploads.insert(
            (from, transfer),
            Upload {
                machine,
                file: shared.file,
                reader: ReadAhead::default(),
                path: shared.path,
                size: shared.entry.size,
                modified: shared.modified,
                next_check: Instant::now() + CHANGE_CHECK,
                read_failed,
                on_read_error,
                listed: shared.entry.path.clone(),
                offset,
                started: Instant::now(),
                partial: shared.partial,
            },
        );
        self.notify_upload(UploadNotice::Started {
            peer: from,
            path: shared.entry.path,
            size: shared.entry.size,
            offset,
        });
    }

    /// Tells the sharer of an upload (lossy: never waits on the reader).
    pub(super) fn notify_upload(&self, notice: UploadNotice) {
        if let Some(tx) = &self.config.upload_notices {
            let _ = tx.try_send(notice);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Read-ahead gives exactly the file's bytes for sequential, backward and large reads,
    /// and a clear error past the end.
    #[test]
    fn read_ahead_returns_the_files_bytes() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, &data).unwrap();
        let file = std::fs::File::open(&path).unwrap();
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
