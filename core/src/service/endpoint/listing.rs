//! What a client asks before it downloads: the tracker's peers, a peer's index (or one entry
//! of it), and a file's piece table, each paged and bounded against peers that lie.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::identity::PublicKey;
use crate::transfer::PieceTable;
use crate::wire::{
    ContentHash, FileId, IndexEntry, Message, PeerInfo, RequestId, MAX_PIECE_HASHES, PIECE_SIZE,
};

use tokio::task::JoinSet;

use super::{EndpointHandle, PiecePage, ServiceError};

/// A peer's entry for some content ([`EndpointHandle::entry_by_hash`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldEntry {
    /// The entry (its id there; the content's size and hash).
    pub entry: IndexEntry,
    /// A download in progress: only some pieces are served ([`EndpointHandle::have`]).
    pub partial: bool,
}

/// One page of a peer's index, as checked by `EndpointHandle::index_page`.
struct IndexPage {
    page: u32,
    pages: u32,
    share: String,
    entries: Vec<IndexEntry>,
}
use super::{
    INDEX_RESTARTS, MAX_INDEX_ENTRIES, MAX_INDEX_PAGES, MAX_PIECES, PIECE_PAGES_IN_FLIGHT,
};

/// A live peer as the tracker's [`EndpointHandle::lookup`] names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundPeer {
    /// The peer, as a listing shows it.
    pub info: PeerInfo,
    /// The identity key its name is bound to at the tracker (`None`: it proved none).
    pub key: Option<PublicKey>,
}

impl EndpointHandle {
    /// The live peer `name` at `tracker`, and the key its name is bound to (`None`: nobody of
    /// that name is live): one round trip, whatever the size of the table. An older tracker
    /// does not answer (`NoAnswer`); [`list_peers`](Self::list_peers) is then the way.
    pub async fn lookup(
        &self,
        tracker: SocketAddr,
        name: &str,
    ) -> Result<Option<FoundPeer>, ServiceError> {
        let msg = Message::Lookup {
            request: RequestId(0),
            name: name.to_string(),
        };
        match self.rpc(tracker, msg).await? {
            Message::Found { peer: None, .. } => Ok(None),
            Message::Found {
                peer: Some(info),
                key,
                ..
            } if *info.name == *name => Ok(Some(FoundPeer {
                info,
                key: key.and_then(|k| k.try_into().ok()),
            })),
            Message::Error { reason, .. } => Err(ServiceError::Refused(reason)),
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
                        // Sorted by name, each once, whatever the tracker's pages were cut
                        // from (ours list one snapshot; an older one may shift entries
                        // between pages while peers join).
                        all.sort_by(|a, b| a.name.cmp(&b.name));
                        all.dedup_by(|a, b| a.name == b.name);
                        return Ok(all);
                    }
                }
                Message::Error { reason, .. } => return Err(ServiceError::Refused(reason)),
                _ => return Err(ServiceError::Protocol(tracker)),
            }
        }
    }

    /// The index entry of file `id` of a peer (`None`: it has no such file now): what a
    /// download needs, without the whole listing.
    pub async fn entry(
        &self,
        peer: SocketAddr,
        id: FileId,
    ) -> Result<Option<IndexEntry>, ServiceError> {
        let msg = Message::EntryRequest {
            request: RequestId(0),
            file: id,
        };
        match self.rpc(peer, msg).await? {
            Message::EntryReply { entry, .. } => Ok(entry),
            Message::Error { reason, .. } => Err(ServiceError::Refused(reason)),
            _ => Err(ServiceError::Protocol(peer)),
        }
    }

    /// The index entry of a peer's file with content `hash` (`None`: it shares none now), or
    /// of its download in progress of that content.
    pub async fn entry_by_hash(
        &self,
        peer: SocketAddr,
        hash: ContentHash,
    ) -> Result<Option<HeldEntry>, ServiceError> {
        let msg = Message::EntryByHash {
            request: RequestId(0),
            hash,
        };
        match self.rpc(peer, msg).await? {
            Message::EntryReply { entry, partial, .. } => Ok(entry
                .filter(|e| e.hash == hash)
                .map(|entry| HeldEntry { entry, partial })),
            Message::Error { reason, .. } => Err(ServiceError::Refused(reason)),
            _ => Err(ServiceError::Protocol(peer)),
        }
    }

    /// Which of the `pieces` pieces of content `hash` a peer serves (all of them for a whole
    /// file; those verified so far for a download in progress), one page of bits at a time.
    /// A reply that does not fit the content (another piece count, a page out of place) is
    /// the peer's fault.
    pub async fn have(
        &self,
        peer: SocketAddr,
        hash: ContentHash,
        pieces: u64,
    ) -> Result<Vec<bool>, ServiceError> {
        let mut have = vec![false; pieces as usize];
        let mut next = 0u64;
        while next < pieces {
            let msg = Message::HaveRequest {
                request: RequestId(0),
                hash,
                first: next as u32,
            };
            let (first, bits) = match self.rpc(peer, msg).await? {
                Message::Have {
                    hash: got,
                    pieces: count,
                    first,
                    bits,
                    ..
                } if got == hash && u64::from(count) == pieces && u64::from(first) == next => {
                    (first, bits)
                }
                Message::Error { reason, .. } => return Err(ServiceError::Refused(reason)),
                _ => return Err(ServiceError::Protocol(peer)),
            };
            if bits.is_empty() {
                return Err(ServiceError::Protocol(peer));
            }
            for (i, h) in have
                .iter_mut()
                .enumerate()
                .skip(first as usize)
                .take(8 * bits.len())
            {
                let bit = i - first as usize;
                *h = bits[bit / 8] & (1 << (bit % 8)) != 0;
            }
            next += 8 * bits.len() as u64;
        }
        Ok(have)
    }

    /// A peer's whole index: page 0 says how many pages there are, then up to
    /// [`PIECE_PAGES_IN_FLIGHT`] of the others are asked for at once (a 100,000-file share is
    /// 6,000-odd pages: one at a time, that many round trips). A lying peer's index must not
    /// grow without end: the page count may not change between pages, and both it and the
    /// entries are capped. A share rescanned mid-listing (for another client's page 0) may
    /// change the count honestly: the listing starts over, a few times at most.
    pub async fn index(&self, peer: SocketAddr) -> Result<(String, Vec<IndexEntry>), ServiceError> {
        for _ in 0..=INDEX_RESTARTS {
            if let Some(listing) = self.index_walk(peer).await? {
                return Ok(listing);
            }
        }
        Err(ServiceError::Protocol(peer))
    }

    /// One walk through a peer's index pages; `None` when the page count changed under it.
    async fn index_walk(
        &self,
        peer: SocketAddr,
    ) -> Result<Option<(String, Vec<IndexEntry>)>, ServiceError> {
        let first = self.index_page(peer, 0).await?;
        let pages = first.pages;
        if pages > MAX_INDEX_PAGES {
            return Err(ServiceError::TooLarge {
                peer,
                what: "index pages",
                limit: u64::from(MAX_INDEX_PAGES),
            });
        }
        let mut count = first.entries.len();
        let mut held: BTreeMap<u32, Vec<IndexEntry>> = BTreeMap::new();
        held.insert(0, first.entries);
        let mut asked = JoinSet::new();
        let mut next = 1;
        while next < pages || !asked.is_empty() {
            while asked.len() < PIECE_PAGES_IN_FLIGHT && next < pages {
                asked.spawn(self.clone().owned_index_page(peer, next));
                next += 1;
            }
            let Some(joined) = asked.join_next().await else {
                break;
            };
            let page = joined.map_err(|_| ServiceError::Closed)??;
            if page.pages != pages {
                return Ok(None); // dropping `asked` cancels the rest
            }
            count += page.entries.len();
            if count > MAX_INDEX_ENTRIES {
                return Err(ServiceError::TooLarge {
                    peer,
                    what: "files in its index",
                    limit: MAX_INDEX_ENTRIES as u64,
                });
            }
            held.insert(page.page, page.entries);
        }
        let all = held.into_values().flatten().collect();
        Ok(Some((first.share, all)))
    }

    /// [`EndpointHandle::index_page`] on owned arguments, for a task of its own.
    async fn owned_index_page(
        self,
        peer: SocketAddr,
        page: u32,
    ) -> Result<IndexPage, ServiceError> {
        self.index_page(peer, page).await
    }

    /// Page `page` of a peer's index, checked to be the page asked for.
    async fn index_page(&self, peer: SocketAddr, page: u32) -> Result<IndexPage, ServiceError> {
        let msg = Message::IndexRequest {
            request: RequestId(0),
            page,
        };
        match self.rpc(peer, msg).await? {
            Message::IndexPage {
                page: got,
                pages,
                share,
                entries,
                ..
            } if got == page => Ok(IndexPage {
                page,
                pages,
                share,
                entries: entries.0,
            }),
            Message::Error { reason, .. } => Err(ServiceError::Refused(reason)),
            _ => Err(ServiceError::Protocol(peer)),
        }
    }

    /// The piece hashes of `entry` on `peer`, all pages. Peers cut files into
    /// [`PIECE_SIZE`] pieces, [`MAX_PIECE_HASHES`] a page, so the pages the listed size
    /// needs are asked for with the first one, up to [`PIECE_PAGES_IN_FLIGHT`] at once: a
    /// table of that many pages costs one round trip, not two. The first page says how the
    /// table really is (a peer may cut otherwise); a guessed page that does not fit it is
    /// dropped, and what is missing is asked for, so a large file's table costs a few round
    /// trips, not one per page.
    pub async fn piece_table(
        &self,
        peer: SocketAddr,
        entry: &IndexEntry,
    ) -> Result<PieceTable, ServiceError> {
        let mut pages = JoinSet::new();
        // Pages asked for on the guess: their failures are not the download's.
        let mut guessed: BTreeSet<usize> = BTreeSet::new();
        // None past the pieces a file may have: that size is refused at the first page.
        let guess = match entry.size.div_ceil(u64::from(PIECE_SIZE)) {
            n if n <= MAX_PIECES => n as usize,
            _ => 0,
        };
        for start in (MAX_PIECE_HASHES..guess)
            .step_by(MAX_PIECE_HASHES)
            .take(PIECE_PAGES_IN_FLIGHT - 1)
        {
            guessed.insert(start);
            pages.spawn(self.clone().owned_piece_page(peer, entry.clone(), start));
        }
        let first = self.piece_page(peer, entry, 0).await?;
        let (piece_size, pieces) = (first.piece_size, first.pieces as usize);
        let mut hashes = first.hashes;
        let per_page = hashes.len().max(1);
        // Pages in hand that are not contiguous yet, and the starts asked for and pending.
        let mut held: BTreeMap<usize, Vec<ContentHash>> = BTreeMap::new();
        let mut pending: BTreeSet<usize> = guessed.clone();
        let mut next = match guessed.last() {
            Some(&last) if piece_size == PIECE_SIZE && per_page == MAX_PIECE_HASHES => {
                last + per_page
            }
            _ => hashes.len(),
        };
        while hashes.len() < pieces {
            // A short page (or a dropped guess) leaves a gap no pending page covers: ask
            // from its start.
            let have = hashes.len();
            if pending.range(..=have).next().is_none() && !held.contains_key(&have) {
                next = next.max(have);
                if next > have {
                    pending.insert(have);
                    pages.spawn(self.clone().owned_piece_page(peer, entry.clone(), have));
                }
            }
            while pages.len() < PIECE_PAGES_IN_FLIGHT && next < pieces {
                pending.insert(next);
                pages.spawn(self.clone().owned_piece_page(peer, entry.clone(), next));
                next += per_page;
            }
            let Some(joined) = pages.join_next().await else {
                return Err(ServiceError::Protocol(peer));
            };
            let (at, page) = joined.map_err(|_| ServiceError::Closed)?;
            pending.remove(&at);
            let page = match page {
                Ok(page) if page.piece_size == piece_size && page.pieces as usize == pieces => page,
                // A guess past the table's end, or cut otherwise: asked again if needed.
                _ if guessed.remove(&at) => continue,
                Ok(_) => return Err(ServiceError::Protocol(peer)),
                Err(e) => return Err(e),
            };
            guessed.remove(&at);
            held.insert(page.first as usize, page.hashes);
            // Take in order what joins on, past overlaps.
            loop {
                let have = hashes.len();
                held.retain(|&at, h| at + h.len() > have);
                let Some((&at, _)) = held.range(..=have).next_back() else {
                    break;
                };
                let page = held.remove(&at).expect("listed");
                hashes.extend_from_slice(&page[have - at..]);
            }
        }
        Ok(PieceTable { piece_size, hashes })
    }

    /// [`EndpointHandle::piece_page`] on owned arguments, for a task of its own.
    async fn owned_piece_page(
        self,
        peer: SocketAddr,
        entry: IndexEntry,
        first: usize,
    ) -> (usize, Result<PiecePage, ServiceError>) {
        (first, self.piece_page(peer, &entry, first as u32).await)
    }

    /// One page of `entry`'s piece hashes on `peer`, from piece `first`, checked against the
    /// listing: a valid piece size, as many pieces as the listed size needs (within
    /// [`MAX_PIECES`]), the page asked for, and hashes unless the table is complete.
    async fn piece_page(
        &self,
        peer: SocketAddr,
        entry: &IndexEntry,
        first: u32,
    ) -> Result<PiecePage, ServiceError> {
        let msg = Message::PieceRequest {
            request: RequestId(0),
            file: entry.id,
            hash: entry.hash,
            first,
        };
        match self.rpc(peer, msg).await? {
            Message::PieceHashes {
                piece_size,
                pieces,
                first: got,
                hashes,
                ..
            } => {
                if !PieceTable::valid_piece_size(piece_size) {
                    return Err(ServiceError::Protocol(peer));
                }
                let expected = entry.size.div_ceil(u64::from(piece_size));
                if expected > MAX_PIECES {
                    // Derived from the listed size, before anything more is fetched.
                    return Err(ServiceError::TooLarge {
                        peer,
                        what: "pieces for one file",
                        limit: MAX_PIECES,
                    });
                }
                let end = u64::from(got) + hashes.0.len() as u64;
                if got != first
                    || u64::from(pieces) != expected
                    || end > expected
                    || (hashes.0.is_empty() && u64::from(first) < expected)
                {
                    return Err(ServiceError::Protocol(peer));
                }
                Ok(PiecePage {
                    piece_size,
                    pieces,
                    first: got,
                    hashes: hashes.0,
                })
            }
            Message::Error { reason, .. } => Err(ServiceError::Refused(reason)),
            _ => Err(ServiceError::Protocol(peer)),
        }
    }
}
