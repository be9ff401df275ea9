//! Signals that stop a command.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGINT and SIGTERM, listened for from [`Shutdown::install`] on: a signal that arrives
/// before anyone waits (say, right after a peer printed that it is registered) is kept, not
/// lost to the default action.
pub(crate) struct Shutdown {
    term: Signal,
    int: Signal,
}

impl Shutdown {
    /// Starts listening now.
    pub(crate) fn install() -> Self {
        Shutdown {
            term: signal(SignalKind::terminate()).expect("cannot install SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("cannot install SIGINT handler"),
        }
    }

    /// Resolves on the first SIGINT or SIGTERM since [`Shutdown::install`] (cancel-safe).
    pub(crate) async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
