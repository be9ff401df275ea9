//! The thread that hashes downloaded pieces off the I/O task.

use std::io;

use tokio::sync::mpsc;

use crate::transfer::PieceJob;
use crate::wire::{ContentHash, TransferId};

/// A thread that hashes the pieces of every download of an endpoint, in the order given; it
/// ends when the endpoint drops the worker.
pub(super) struct HashWorker {
    pub(super) jobs: std::sync::mpsc::Sender<(TransferId, PieceJob)>,
    pub(super) results: mpsc::UnboundedReceiver<(TransferId, u64, ContentHash)>,
}

/// Bytes a download may have waiting for the hashing thread; past that the I/O task hashes
/// pieces itself, so memory stays bounded if hashing falls behind.
pub(super) const MAX_HASH_BACKLOG: u64 = 4 * 1024 * 1024;

impl HashWorker {
    pub(super) fn spawn() -> io::Result<Self> {
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
pub(super) async fn next_hash(
    worker: &mut Option<HashWorker>,
) -> Option<(TransferId, u64, ContentHash)> {
    match worker {
        Some(w) => w.results.recv().await,
        None => std::future::pending().await,
    }
}
