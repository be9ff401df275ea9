//! Running a scenario: the replay line, stepping a simulation until a condition holds or a
//! simulated deadline passes, and the download invariant every scenario asserts.
//!
//! Each run reports its real time and the simulated time it stepped. The simulated time is
//! counted by the stepping functions here ([`run_sim`], [`run_until`], [`run_for`]), so a
//! scenario drives its `Sim` through them rather than through `Sim::run` or `Sim::step`.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use p2p_core::service::resume::{load_state, partial_path, state_path};
use p2p_core::service::{DownloadReport, ServiceError};
use p2p_proto::transfer::TransferError;
use p2p_proto::wire::AbortReason;

use crate::cluster::SharedFile;

thread_local! {
    /// Simulated time stepped on this thread by [`run_sim`], [`run_until`] and [`run_for`]
    /// since the current [`run_scenario`] began (a sim runs on the thread that steps it).
    static SIMULATED: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// Adds the simulated time `sim` went through since `from` to this thread's count.
fn count_simulated(sim: &turmoil::Sim<'_>, from: Duration) {
    let stepped = sim.elapsed().saturating_sub(from);
    SIMULATED.with(|s| s.set(s.get() + stepped));
}

/// Real and simulated time of one run, as `run_scenario` prints them:
/// `in 0.4120s, simulated 37.120s (90x)`.
fn times(real: Duration, simulated: Duration) -> String {
    let real_s = real.as_secs_f64();
    if simulated.is_zero() {
        // Stepped through `Sim::run` or `Sim::step` directly, or no sim at all.
        return format!("in {real_s:.4}s, simulated ?");
    }
    let sim_s = simulated.as_secs_f64();
    format!(
        "in {real_s:.4}s, simulated {sim_s:.3}s ({:.0}x)",
        sim_s / real_s.max(1e-9)
    )
}

/// Runs `body` for `seed`, after printing the line that replays exactly this run:
/// `replay: SIM_SEEDS=<seed> cargo test -p p2p-sim-tests --test <file> <test>`.
///
/// `file` is the test file (pass `file!()`), `test` the test function's name. Afterwards it
/// prints `   ok: <test> seed <seed> in <real>s, simulated <sim>s (<ratio>x)`, or on a
/// failure (an `Err` from `body`, or a panic inside it) `FAILED: <test> seed <seed> in ...`,
/// then panics with the replay line again. The simulated time is what [`run_sim`],
/// [`run_until`] and [`run_for`] stepped during the run (`simulated ?` when none did).
pub fn run_scenario(file: &str, test: &str, seed: u64, body: impl FnOnce(u64) -> turmoil::Result) {
    let stem = Path::new(file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let replay = format!("SIM_SEEDS={seed} cargo test -p p2p-sim-tests --test {stem} {test}");
    eprintln!("replay: {replay}");
    SIMULATED.with(|s| s.set(Duration::ZERO));
    let started = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| body(seed)));
    let took = times(started.elapsed(), SIMULATED.with(Cell::get));
    match outcome {
        Ok(Ok(())) => eprintln!("   ok: {test} seed {seed} {took}"),
        Ok(Err(e)) => {
            eprintln!("FAILED: {test} seed {seed} {took}");
            panic!("{test} failed for seed {seed}: {e}\nreplay: {replay}")
        }
        Err(panic) => {
            eprintln!("FAILED: {test} seed {seed} {took}\nreplay: {replay}");
            resume_unwind(panic)
        }
    }
}

/// Runs `sim` until every client has finished, as `Sim::run` does, and counts the
/// simulated time for the run's report (see [`run_scenario`]).
pub fn run_sim(sim: &mut turmoil::Sim<'_>) -> turmoil::Result {
    let from = sim.elapsed();
    let result = sim.run();
    count_simulated(sim, from);
    result
}

/// Steps `sim` until `done()` holds (returns `Ok(true)`), the clients have all finished
/// (`Ok(false)`), or `limit` of simulated time has passed since the call (an error).
pub fn run_until(
    sim: &mut turmoil::Sim<'_>,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> turmoil::Result<bool> {
    let from = sim.elapsed();
    let end = from + limit;
    let result: turmoil::Result<bool> = loop {
        if done() {
            break Ok(true);
        }
        if sim.elapsed() >= end {
            break Err(format!("condition not reached within {limit:?} of simulated time").into());
        }
        match sim.step() {
            Ok(false) => {}
            Ok(true) => break Ok(false),
            Err(e) => break Err(e),
        }
    };
    count_simulated(sim, from);
    result
}

/// Steps `sim` for `span` of simulated time (or until every client has finished: `Ok(false)`).
pub fn run_for(sim: &mut turmoil::Sim<'_>, span: Duration) -> turmoil::Result<bool> {
    let from = sim.elapsed();
    let end = from + span;
    let mut result: turmoil::Result<bool> = Ok(true);
    while sim.elapsed() < end {
        match sim.step() {
            Ok(false) => {}
            Ok(true) => {
                result = Ok(false);
                break;
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    count_simulated(sim, from);
    result
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
