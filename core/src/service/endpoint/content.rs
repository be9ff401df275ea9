//! Content by hash: announcing the hashes a peer shares to its tracker, and asking the
//! tracker who shares a hash.
//!
//! Announcing is the protocol logic's (`p2p_proto::endpoint::announce`): the driver hands it
//! the share's hashes after each scan (see `upload.rs`), and it keeps the tracker's record
//! fresh while registered. Asking is [`EndpointHandle::who_has`].

use std::collections::BTreeSet;
use std::net::SocketAddr;

use tokio::task::JoinSet;

use super::{EndpointHandle, ServiceError, PIECE_PAGES_IN_FLIGHT};
use crate::tracker::HOLDERS_PER_PAGE;
use crate::wire::{ContentHash, Message, PeerInfo, RequestId};

/// Most holders [`EndpointHandle::who_has`] returns.
pub(super) const MAX_HOLDERS: usize = 256;
/// Most pages of holders [`EndpointHandle::who_has`] asks for: enough for [`MAX_HOLDERS`]
/// at our tracker's page size ([`HOLDERS_PER_PAGE`]: 29 pages), with room for pages thinned
/// by peers that just left.
pub(super) const MAX_HOLDER_PAGES: u32 = 64;

const _: () = assert!(MAX_HOLDERS.div_ceil(HOLDERS_PER_PAGE) <= MAX_HOLDER_PAGES as usize);

/// One page of holders, as checked by `EndpointHandle::holders_page` (`None`: the page is
/// past the end, as when holders left since the first page).
type HoldersPage = Option<(u32, Vec<PeerInfo>)>;

impl EndpointHandle {
    /// The live peers that announced content `hash` to `tracker` (each once, in the order
    /// they announced it; none for a hash nobody announced). Page 0 says how many pages
    /// there are; the others are asked for up to [`PIECE_PAGES_IN_FLIGHT`] at once. Bounded:
    /// at most 256 peers from at most 64 pages, however many the tracker claims.
    ///
    /// ```no_run
    /// # async fn example(handle: p2p_core::service::EndpointHandle) -> Result<(), p2p_core::service::ServiceError> {
    /// let tracker = "127.0.0.1:9000".parse().unwrap();
    /// let hash = p2p_proto::wire::ContentHash::of(b"the file's bytes");
    /// for peer in handle.who_has(tracker, hash).await? {
    ///     println!("{} at {} ({})", peer.name, peer.addr, peer.transport);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn who_has(
        &self,
        tracker: SocketAddr,
        hash: ContentHash,
    ) -> Result<Vec<PeerInfo>, ServiceError> {
        let Some((pages, first)) = self.holders_page(tracker, hash, 0).await? else {
            return Err(ServiceError::Protocol(tracker)); // page 0 always exists
        };
        let mut held = std::collections::BTreeMap::new();
        held.insert(0, first);
        let pages = pages.min(MAX_HOLDER_PAGES);
        let mut asked = JoinSet::new();
        let mut next = 1;
        let mut count = held[&0].len();
        while (next < pages || !asked.is_empty()) && count < MAX_HOLDERS {
            while asked.len() < PIECE_PAGES_IN_FLIGHT && next < pages {
                asked.spawn(self.clone().owned_holders_page(tracker, hash, next));
                next += 1;
            }
            let Some(joined) = asked.join_next().await else {
                break;
            };
            let (page, got) = joined.map_err(|_| ServiceError::Closed)?;
            if let Some((_, peers)) = got? {
                count += peers.len();
                held.insert(page, peers);
            }
        }
        // In page order, each name once (a peer may move to a later page as others leave).
        let mut names = BTreeSet::new();
        let mut all: Vec<PeerInfo> = held
            .into_values()
            .flatten()
            .filter(|p| names.insert(p.name.clone()))
            .collect();
        all.truncate(MAX_HOLDERS);
        Ok(all)
    }

    /// [`EndpointHandle::holders_page`] on owned arguments, for a task of its own; with the
    /// page it asked for.
    async fn owned_holders_page(
        self,
        tracker: SocketAddr,
        hash: ContentHash,
        page: u32,
    ) -> (u32, Result<HoldersPage, ServiceError>) {
        (page, self.holders_page(tracker, hash, page).await)
    }

    /// Page `page` of the holders of `hash`, checked to be that page of that hash: its page
    /// count and peers. `None` when the tracker says there is no such page (fewer holders
    /// now than when the first page came).
    async fn holders_page(
        &self,
        tracker: SocketAddr,
        hash: ContentHash,
        page: u32,
    ) -> Result<HoldersPage, ServiceError> {
        let msg = Message::WhoHas {
            request: RequestId(0),
            hash,
            page,
        };
        match self.rpc(tracker, msg).await? {
            Message::Holders {
                hash: got,
                page: got_page,
                pages,
                peers,
                ..
            } if got == hash && got_page == page => Ok(Some((pages, peers.0))),
            Message::Error { .. } if page > 0 => Ok(None),
            Message::Error { reason, .. } => Err(ServiceError::Refused(reason)),
            _ => Err(ServiceError::Protocol(tracker)),
        }
    }
}
