//! Finishing a verified download: sync, publish under the final name, answer the caller.

use super::download::incomplete;
use super::{DownloadReport, IoFailure, IoOp, Progress, ServiceError};

use std::io;
use std::path::PathBuf;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::service::lock::DestinationLock;
use crate::service::resume::{self, PartialWriter, PendingCheckpoint};
use crate::service::storage::SharedStorage;

/// What is left to do once a download's last piece is verified: wait for the checkpoint in
/// flight, flush (and sync) the file, give it its final name, remove the state file, then
/// answer and free the destination. Owns all it needs, so it can run on a blocking thread
/// ([`EndpointConfig::finish_thread`]).
pub(super) struct Finish {
    pub(super) writer: Option<PartialWriter>,
    pub(super) checkpoint: PendingCheckpoint,
    pub(super) sync: bool,
    pub(super) partial: PathBuf,
    /// End of the prefix recorded in the state file.
    pub(super) saved: u64,
    /// The report, but for the elapsed time; its `path` is the destination.
    pub(super) report: DownloadReport,
    pub(super) started: Instant,
    pub(super) reply: Option<oneshot::Sender<Result<DownloadReport, ServiceError>>>,
    /// The claim on the destination, given up once the file has its name.
    pub(super) lock: Option<DestinationLock>,
    pub(super) progress: watch::Sender<Progress>,
    pub(super) storage: SharedStorage,
}

impl Drop for Finish {
    /// Even if the job panics, the destination is not claimed forever.
    fn drop(&mut self) {
        self.release();
    }
}

impl Finish {
    pub(super) fn run(mut self) {
        // A checkpoint still being recorded would write the state file after it is removed.
        // One that failed fails the download: after a failed sync the kernel may have
        // dropped the file's unwritten pages, and a later sync would not say so.
        let checkpoint = match self.checkpoint.wait() {
            Some(Ok(saved)) => {
                self.saved = self.saved.max(saved);
                let saved = self.saved;
                self.progress.send_modify(|p| p.saved = saved);
                Ok(())
            }
            Some(Err(e)) => Err(ServiceError::Io(IoFailure::new(
                IoOp::RecordProgress,
                &self.partial,
                &e,
            ))),
            None => Ok(()),
        };
        let result = match checkpoint.and_then(|()| self.finish_file()) {
            Ok(()) => Ok(DownloadReport {
                elapsed: self.started.elapsed(),
                ..self.report.clone()
            }),
            Err(e) => Err(incomplete(
                &*self.storage,
                e,
                self.saved,
                &self.report.path,
                &self.partial,
            )),
        };
        // Free the destination before answering: whoever hears the answer may reuse it.
        self.release();
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(result);
        }
    }

    pub(super) fn release(&mut self) {
        self.lock = None;
    }

    pub(super) fn finish_file(&mut self) -> Result<(), ServiceError> {
        let writer = self.writer.take().expect("finished once");
        let (partial, dest) = (&self.partial, &self.report.path);
        let file = writer
            .finish(self.sync)
            .map_err(|e| ServiceError::Io(IoFailure::new(IoOp::Finish, partial, &e)))?;
        // The very file written and verified takes the name, whatever sits at the partial's
        // path now; never replacing an existing file silently.
        let storage = &*self.storage;
        match storage.publish(&file, partial, dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let existing = storage.hash_file(dest).ok();
                if storage.same_file(&file, partial) {
                    let _ = storage.remove(partial);
                }
                if existing != Some(self.report.hash) {
                    // Nothing is left to resume: no state file pointing at a removed partial.
                    resume::discard(storage, dest);
                    self.saved = 0;
                    return Err(ServiceError::DestinationDiffers(dest.clone()));
                }
            }
            Err(e) => return Err(ServiceError::Io(IoFailure::new(IoOp::Publish, dest, &e))),
        }
        resume::discard_state(storage, dest);
        Ok(())
    }
}
