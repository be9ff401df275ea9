//! The uploads of this peer, as its upload notices tell them: what is being sent, to whom,
//! since when; and what the finished ones sent.
//!
//! A notice says when an upload starts and how it ends, not how far it is: the bytes sent
//! are known once it has finished (the endpoint reports no progress for uploads).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use p2p_core::service::UploadNotice;

use crate::output::{clean, human_bytes};

/// One upload under way.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sending {
    path: String,
    size: u64,
    /// Where it started (above 0: the downloader resumes).
    offset: u64,
    since: Instant,
}

/// The uploads running and a tally of the finished ones.
#[derive(Debug, Default)]
pub(crate) struct Uploads {
    /// Uploads under way, by downloader and path (one downloader may fetch a file twice at
    /// once: they end in the order they started).
    running: BTreeMap<(SocketAddr, String), Vec<Sending>>,
    finished: u64,
    failed: u64,
    sent: u64,
}

impl Uploads {
    /// Takes a notice into account.
    pub(crate) fn record(&mut self, now: Instant, notice: &UploadNotice) {
        match notice {
            UploadNotice::Started {
                peer,
                path,
                size,
                offset,
            } => self
                .running
                .entry((*peer, path.clone()))
                .or_default()
                .push(Sending {
                    path: path.clone(),
                    size: *size,
                    offset: *offset,
                    since: now,
                }),
            UploadNotice::Finished {
                peer, path, bytes, ..
            } => {
                self.end(*peer, path);
                self.finished += 1;
                self.sent += bytes;
            }
            UploadNotice::Failed { peer, path, .. } => {
                self.end(*peer, path);
                self.failed += 1;
            }
        }
    }

    /// Forgets the oldest upload of `path` to `peer`.
    fn end(&mut self, peer: SocketAddr, path: &str) {
        let key = (peer, path.to_string());
        if let Some(list) = self.running.get_mut(&key) {
            if !list.is_empty() {
                list.remove(0);
            }
            if list.is_empty() {
                self.running.remove(&key);
            }
        }
    }

    /// How many uploads are under way.
    pub(crate) fn running(&self) -> usize {
        self.running.values().map(Vec::len).sum()
    }

    /// The lines of `d` for uploads: one per upload under way, then the tally of the ended
    /// ones. `name_of` names a downloader's address when the menu knows who listens there.
    pub(crate) fn lines(
        &self,
        now: Instant,
        name_of: impl Fn(SocketAddr) -> Option<String>,
    ) -> Vec<String> {
        let mut lines = Vec::new();
        if self.running() == 0 {
            lines.push("No uploads running.".to_string());
        } else {
            lines.push("Uploads running:".to_string());
            for ((peer, _), list) in &self.running {
                let to = match name_of(*peer) {
                    Some(name) => format!("{} ({peer})", clean(&name)),
                    None => peer.to_string(),
                };
                for s in list {
                    lines.push(format!("  {}", sending_line(s, &to, now)));
                }
            }
        }
        if self.finished + self.failed > 0 {
            let stopped = match self.failed {
                0 => String::new(),
                n => format!(", {n} stopped early"),
            };
            lines.push(format!(
                "Uploads ended: {} finished ({} sent){stopped}.",
                self.finished,
                human_bytes(self.sent),
            ));
        }
        lines
    }
}

/// `notes.txt (6 B) to bob (127.0.0.1:10002), 3 s` (`from 12.0 MiB` for a resume).
fn sending_line(s: &Sending, to: &str, now: Instant) -> String {
    let from = if s.offset > 0 {
        format!(", from {}", human_bytes(s.offset))
    } else {
        String::new()
    };
    format!(
        "{} ({}) to {to}{from}, {} s",
        clean(&s.path),
        human_bytes(s.size),
        now.saturating_duration_since(s.since).as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn started(peer: SocketAddr, path: &str, offset: u64) -> UploadNotice {
        UploadNotice::Started {
            peer,
            path: path.into(),
            size: 2048,
            offset,
        }
    }

    #[test]
    fn uploads_are_listed_until_they_end_then_tallied() {
        let t0 = Instant::now();
        let bob: SocketAddr = "127.0.0.1:10002".parse().unwrap();
        let eve: SocketAddr = "127.0.0.1:10003".parse().unwrap();
        let mut u = Uploads::default();
        assert_eq!(u.lines(t0, |_| None), ["No uploads running."]);
        u.record(t0, &started(bob, "a.txt", 0));
        u.record(t0, &started(eve, "a.txt", 1024));
        u.record(t0, &started(bob, "a.txt", 0));
        assert_eq!(u.running(), 3);
        let names = |a: SocketAddr| (a == bob).then(|| "bob".to_string());
        let later = t0 + Duration::from_secs(3);
        assert_eq!(
            u.lines(later, names),
            [
                "Uploads running:",
                "  a.txt (2.0 KiB) to bob (127.0.0.1:10002), 3 s",
                "  a.txt (2.0 KiB) to bob (127.0.0.1:10002), 3 s",
                "  a.txt (2.0 KiB) to 127.0.0.1:10003, from 1.0 KiB, 3 s",
            ]
        );
        u.record(
            later,
            &UploadNotice::Finished {
                peer: bob,
                path: "a.txt".into(),
                bytes: 2048,
                elapsed: Duration::from_secs(3),
            },
        );
        u.record(
            later,
            &UploadNotice::Failed {
                peer: eve,
                path: "a.txt".into(),
                reason: "idle".into(),
            },
        );
        assert_eq!(u.running(), 1);
        assert_eq!(
            u.lines(later, names),
            [
                "Uploads running:",
                "  a.txt (2.0 KiB) to bob (127.0.0.1:10002), 3 s",
                "Uploads ended: 1 finished (2.0 KiB sent), 1 stopped early.",
            ]
        );
    }

    #[test]
    fn an_end_without_a_start_is_ignored() {
        let mut u = Uploads::default();
        u.record(
            Instant::now(),
            &UploadNotice::Failed {
                peer: "127.0.0.1:1".parse().unwrap(),
                path: "x".into(),
                reason: "busy".into(),
            },
        );
        assert_eq!(u.running(), 0);
    }
}
