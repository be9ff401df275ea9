//! Running a scenario: the replay line, stepping a simulation until a condition holds or a
//! simulated deadline passes, and the download invariant every scenario asserts.

use std::path::Path;
use std::time::Duration;

use p2p_core::service::resume::{load_state, partial_path, state_path};
use p2p_core::service::{DownloadReport, ServiceError};
use p2p_proto::transfer::TransferError;
use p2p_proto::wire::AbortReason;

use crate::cluster::SharedFile;

/// Runs `body` for `seed`, after printing the line that replays exactly this run:
/// `replay: SIM_SEEDS=<seed> cargo test -p p2p-sim-tests --test <file> <test>`.
///
/// `file` is the test file (pass `file!()`), `test` the test function's name. A failure
/// (an `Err` from `body`, or a panic inside it) panics with the replay line again.
pub fn run_scenario(file: &str, test: &str, seed: u64, body: impl FnOnce(u64) -> turmoil::Result) {
    let stem = Path::new(file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let replay = format!("SIM_SEEDS={seed} cargo test -p p2p-sim-tests --test {stem} {test}");
    eprintln!("replay: {replay}");
    let started = std::time::Instant::now();
    match body(seed) {
        Ok(()) => eprintln!("   ok: {test} seed {seed} in {:.2?}", started.elapsed()),
        Err(e) => panic!("{test} failed for seed {seed}: {e}\nreplay: {replay}"),
    }
}

/// Steps `sim` until `done()` holds (returns `Ok(true)`), the clients have all finished
/// (`Ok(false)`), or `limit` of simulated time has passed since the call (an error).
pub fn run_until(
    sim: &mut turmoil::Sim<'_>,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> turmoil::Result<bool> {
    let end = sim.elapsed() + limit;
    loop {
        if done() {
            return Ok(true);
        }
        if sim.elapsed() >= end {
            return Err(format!("condition not reached within {limit:?} of simulated time").into());
        }
        if sim.step()? {
            return Ok(false);
        }
    }
}

/// Steps `sim` for `span` of simulated time (or until every client has finished: `Ok(false)`).
pub fn run_for(sim: &mut turmoil::Sim<'_>, span: Duration) -> turmoil::Result<bool> {
    let end = sim.elapsed() + span;
    while sim.elapsed() < end {
        if sim.step()? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// How a download ended, once checked against the invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checked {
    /// The destination holds exactly the source bytes; no partial or state file is left.
    Complete,
    /// An error, and no file under the final name. Either nothing is left on disk, or (for
    /// [`ServiceError::Incomplete`]) the partial file holds exactly the source's first `kept`
    /// bytes and its state file records them, ready for a resume.
    Failed(ServiceError),
}

/// True when `e` says one side went silent: a transfer timeout, the other side's abort
/// for a timeout, or an incomplete download kept for a resume because of either.
pub fn timed_out(e: &ServiceError) -> bool {
    matches!(
        e.cause(),
        ServiceError::Transfer(
            TransferError::Timeout { .. } | TransferError::Aborted(AbortReason::Timeout),
        )
    )
}

/// True when `e` is the sender's refusal for lack of upload slots ("busy"), also when it ends
/// an incomplete download kept for a resume.
pub fn busy(e: &ServiceError) -> bool {
    matches!(
        e.cause(),
        ServiceError::Transfer(TransferError::Aborted(AbortReason::Busy))
    )
}

/// The invariant of every scenario: a download ends with exactly the source bytes under
/// `dest` and no partial or state file, or with an error, no file under the final name and
/// either nothing left or a verified, recorded prefix of the source (see [`Checked`]).
/// Returns which, or what broke the invariant.
pub fn check_download(
    result: &Result<DownloadReport, ServiceError>,
    dest: &Path,
    source: &SharedFile,
) -> Result<Checked, String> {
    let partial = partial_path(dest);
    let state = state_path(dest);
    match result {
        Ok(report) => {
            if partial.exists() || state.exists() {
                return Err(format!(
                    "download done but {} or {} is left behind",
                    partial.display(),
                    state.display()
                ));
            }
            let bytes = std::fs::read(dest).map_err(|e| {
                format!(
                    "download reported done but {} is unreadable: {e}",
                    dest.display()
                )
            })?;
            let got = blake3::hash(&bytes);
            if got != source.hash {
                return Err(format!(
                    "WRONG FILE: {} has hash {got} ({} bytes), expected {} ({} bytes)",
                    dest.display(),
                    bytes.len(),
                    source.hash,
                    source.size
                ));
            }
            if report.hash.0 != *source.hash.as_bytes() || report.size != bytes.len() as u64 {
                return Err(format!("report {report:?} does not describe the file"));
            }
            Ok(Checked::Complete)
        }
        Err(e) => {
            if dest.exists() {
                return Err(format!(
                    "download failed ({e}) but {} exists under the final name",
                    dest.display()
                ));
            }
            match e {
                ServiceError::Incomplete { kept, .. } => {
                    let recorded = load_state(dest).map(|s| s.verified);
                    if recorded != Some(*kept) {
                        return Err(format!("{e}: but the state file records {recorded:?}"));
                    }
                    let bytes = std::fs::read(&partial)
                        .map_err(|err| format!("{e}: but the partial file is unreadable: {err}"))?;
                    let want = std::fs::read(&source.source)
                        .map_err(|err| format!("cannot read the source: {err}"))?;
                    let k = *kept as usize;
                    if k == 0 || bytes.len() < k || want.len() < k || bytes[..k] != want[..k] {
                        return Err(format!(
                            "WRONG PREFIX: {e}: the partial file ({} bytes) does not start \
                             with the source's first {k} bytes",
                            bytes.len()
                        ));
                    }
                }
                _ => {
                    // A download that failed before it started (e.g. no answer to the
                    // piece-table request) leaves an earlier verified prefix alone; anything
                    // else on disk is garbage.
                    if partial.exists() || state.exists() {
                        let recorded = load_state(dest).map(|s| s.verified).unwrap_or(0);
                        let bytes = std::fs::read(&partial).unwrap_or_default();
                        let want = std::fs::read(&source.source).unwrap_or_default();
                        let k = recorded as usize;
                        if k == 0 || bytes.len() < k || want.len() < k || bytes[..k] != want[..k] {
                            return Err(format!(
                                "download failed ({e}) and left {} / {} that are no verified \
                                 prefix of the source",
                                partial.display(),
                                state.display()
                            ));
                        }
                    }
                }
            }
            Ok(Checked::Failed(e.clone()))
        }
    }
}

/// One `#[test]` per line, each running its scenario through [`run_seeds`] under its own
/// name (so the name printed with a failing seed is the test's):
///
/// ```ignore
/// seeded_tests! {
///     /// Doc comments and attributes go through.
///     crash_sender_udp => |seed| crash_sender(seed, Net::Udp);
///     crash_sender_tcp => |seed| crash_sender(seed, Net::Tcp);
/// }
/// ```
#[macro_export]
macro_rules! seeded_tests {
    ($($(#[$meta:meta])* $name:ident => |$seed:ident| $body:expr;)+) => {
        $(
            $(#[$meta])*
            #[test]
            fn $name() {
                $crate::run_seeds(file!(), stringify!($name), |$seed| $body);
            }
        )+
    };
}

/// Runs `body` through [`run_scenario`] for every seed of
/// [`seeds_from_env`](crate::seeds_from_env), going on after a failure, then fails with the
/// list of every failing seed.
pub fn run_seeds(file: &str, test: &str, body: impl Fn(u64) -> turmoil::Result) {
    let mut failed = Vec::new();
    for seed in crate::seeds_from_env() {
        let run = std::panic::AssertUnwindSafe(|| run_scenario(file, test, seed, &body));
        if std::panic::catch_unwind(run).is_err() {
            failed.push(seed);
        }
    }
    if !failed.is_empty() {
        let list = failed
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        panic!("{test} failed for seeds {list} (replay: SIM_SEEDS={list} and the line above)");
    }
}
