//! [`Trace`]: an event log of `(simulated time, host, event)` that test clients and helper
//! hosts append to, with a BLAKE3 digest so that two runs of one seed can be compared.

use std::fmt::{self, Display};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One entry of a [`Trace`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// Simulated time since the start of the run.
    pub at: Duration,
    /// The host (or client) that saw it.
    pub host: String,
    /// What happened.
    pub what: String,
}

impl Display for TraceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>10.3?} {:<10} {}", self.at, self.host, self.what)
    }
}

/// A shared, append-only event log. Cloning shares the log.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    events: Arc<Mutex<Vec<TraceEvent>>>,
}

impl Trace {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `what`, seen by `host`, at the current simulated time (zero outside a
    /// simulation).
    pub fn record(&self, host: &str, what: impl Display) {
        let at = turmoil::sim_elapsed().unwrap_or_default();
        self.events.lock().expect("trace lock").push(TraceEvent {
            at,
            host: host.to_string(),
            what: what.to_string(),
        });
    }

    /// A copy of every event so far.
    pub fn events(&self) -> Vec<TraceEvent> {
        self.events.lock().expect("trace lock").clone()
    }

    /// Number of events so far.
    pub fn len(&self) -> usize {
        self.events.lock().expect("trace lock").len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// BLAKE3 over every event (time in nanoseconds, host, text), in order, as hex.
    pub fn digest(&self) -> String {
        let mut h = blake3::Hasher::new();
        for e in self.events.lock().expect("trace lock").iter() {
            h.update(&e.at.as_nanos().to_le_bytes());
            h.update(e.host.as_bytes());
            h.update(&[0]);
            h.update(e.what.as_bytes());
            h.update(&[0]);
        }
        h.finalize().to_hex().to_string()
    }

    /// The whole log, one event a line.
    pub fn dump(&self) -> String {
        self.events().iter().map(|e| format!("{e}\n")).collect()
    }
}
