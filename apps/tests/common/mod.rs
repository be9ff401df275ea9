//! Drives the real `p2p` binary: processes on 127.0.0.1, their output read line by line.
//! Waiting is always for a line the process prints (with a generous deadline that only
//! matters when something is broken), never a sleep.
//!
//! [`Net`] is the set-up the tests share: a tracker in a temporary folder, seeders sharing
//! files written for them, and `get` / `ls` / `peers` / menu command lines against it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Deadline for anything that should take well under a second.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_p2p")
}

/// A running `p2p` process whose stdout and stderr lines are collected.
pub struct Proc {
    pub child: Child,
    lines: Receiver<String>,
    pub seen: Vec<String>,
    pub stdin: Option<ChildStdin>,
}

/// The variables that set `p2p`'s defaults (see `p2p config`).
pub const SETTINGS_ENV: &[&str] = &[
    "P2P_TRACKER",
    "P2P_NAME",
    "P2P_SHARE",
    "P2P_DOWNLOADS",
    "P2P_TRANSPORT",
    "P2P_DHT_BOOTSTRAP",
    "P2P_CONFIG",
    "P2P_TRACKER_KEY",
    "P2P_IDENTITY",
];

/// `p2p` in `dir`, in an environment of its own: no inherited `P2P_*` variables, and the
/// config and data folders under `dir` (so that no config file or menu history of the
/// machine's user changes what a test sees, nor a test what the user has).
pub fn command(dir: &Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.current_dir(dir);
    for var in SETTINGS_ENV {
        cmd.env_remove(var);
    }
    cmd.env("XDG_CONFIG_HOME", dir.join(".xdg-config"))
        .env("XDG_DATA_HOME", dir.join(".xdg-data"));
    cmd
}

impl Proc {
    pub fn spawn(dir: &Path, args: &[&str]) -> Proc {
        let mut cmd = command(dir);
        cmd.args(args);
        Proc::spawn_command(cmd)
    }

    /// Starts `cmd` (a `p2p` command line, or one that execs it), its stdout and stderr read
    /// line by line.
    pub fn spawn_command(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn p2p");
        let (tx, rx) = channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for stream in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                // Split on both newlines and prompts: a prompt has no newline after it.
                let mut reader = BufReader::new(stream);
                let mut buf = Vec::new();
                while reader
                    .read_until(b'\n', &mut buf)
                    .map(|n| n > 0)
                    .unwrap_or(false)
                {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    buf.clear();
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        Proc {
            child,
            lines: rx,
            seen: Vec::new(),
            stdin,
        }
    }

    /// Waits for a line containing `needle` and returns it.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            let line = self.next_line(until, needle);
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Waits until each of `needles` is in a line, in any order: stdout and stderr are read
    /// by threads of their own, so a line of one may come before an earlier line of the other.
    pub fn wait_for_each(&mut self, needles: &[&str]) {
        let until = Instant::now() + DEADLINE;
        let mut left = needles.to_vec();
        while !left.is_empty() {
            let line = self.next_line(until, &left.join(" | "));
            left.retain(|n| !line.contains(n));
        }
    }

    /// The next line of output (kept in `seen`); panics at `until` or at the end of output,
    /// saying what was awaited.
    fn next_line(&mut self, until: Instant, awaited: &str) -> String {
        let left = until.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "no line with {awaited:?} within {DEADLINE:?}; saw: {:#?}",
                    self.seen
                )
            }
            Err(RecvTimeoutError::Disconnected) => panic!(
                "process ended before printing {awaited:?}; saw: {:#?}",
                self.seen
            ),
        }
    }

    /// Waits until `get --json` reports (on stderr) a checkpoint of at least `at_least`
    /// bytes; returns it.
    pub fn wait_checkpoint(&mut self, at_least: u64) -> u64 {
        loop {
            let line = self.wait_for("\"checkpoint\"");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let c = v["checkpoint"].as_u64().unwrap();
            if c >= at_least {
                return c;
            }
        }
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to stdin");
        stdin.flush().unwrap();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGINT, as Ctrl-C in a terminal does.
    pub fn interrupt(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
    }

    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits for the process to exit and for the end of its output; returns its status and
    /// every line it printed (stdout and stderr).
    pub fn wait_output(&mut self) -> (std::process::ExitStatus, String) {
        let status = self.wait_exit();
        let until = Instant::now() + DEADLINE;
        loop {
            match self
                .lines
                .recv_timeout(until.saturating_duration_since(Instant::now()))
            {
                Ok(l) => self.seen.push(l),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("output did not end; saw {:#?}", self.seen)
                }
            }
        }
        (status, self.seen.join("\n"))
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < until,
                "process did not exit; saw {:#?}",
                self.seen
            );
            // Drain output while waiting so the pipe never fills.
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(l);
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tracker on an ephemeral port; returns it and its address.
pub fn tracker(dir: &Path, extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["tracker", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut p = Proc::spawn(dir, &args);
    let line = p.wait_for("tracker listening on");
    let addr = line.split_whitespace().nth(3).unwrap().to_string();
    (p, addr)
}

/// A peer without menu, registered; waits until the tracker has it.
pub fn peer(
    dir: &Path,
    name: &str,
    tracker: &str,
    share: &Path,
    transport: &str,
    extra: &[&str],
) -> Proc {
    let share = share.to_str().unwrap();
    let mut args = vec![
        "peer",
        "--name",
        name,
        "--listen",
        "127.0.0.1:0",
        "--tracker",
        tracker,
        "--share",
        share,
        "--transport",
        transport,
        "--no-menu",
    ];
    args.extend_from_slice(extra);
    let mut p = Proc::spawn(dir, &args);
    p.wait_for("registered with");
    p
}

/// Runs a one-shot command to completion; kills it and panics if it runs past [`DEADLINE`].
pub fn run(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = command(dir);
    cmd.args(args);
    run_command(cmd, args)
}

/// Runs `cmd` (`p2p args`, for the message) to completion, its output captured; kills it and
/// panics if it runs past [`DEADLINE`].
pub fn run_command(mut cmd: Command, args: &[&str]) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run p2p");
    let pid = child.id().to_string();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(out) => out.expect("run p2p"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("p2p {args:?} did not finish within {DEADLINE:?}")
        }
    }
}

/// The JSON a successful `--json` command printed; panics with its output otherwise.
pub fn json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0; len];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Where a download keeps `name` until it is verified: `.{name}{suffix}` in `out`, with
/// `suffix` one of `.p2p-part`, `.p2p-state`, `.p2p-lock`, `.p2p-state.tmp`.
pub fn hidden(out: &Path, name: &str, suffix: &str) -> PathBuf {
    out.join(format!(".{name}{suffix}"))
}

/// A swarm on 127.0.0.1 in a fresh temporary folder: a tracker on a free port, the seeding
/// peers started with [`Net::seeder`], and command lines against the tracker ([`Net::get`],
/// [`Net::ls`], [`Net::peers`], [`Net::menu`]) run in that folder. Dropping it kills every
/// process it started, then removes the folder.
///
/// ```ignore
/// let mut net = Net::start();
/// net.seeder("seed", "udp").file("a.bin", &bytes).start();
/// let report = net.get("seed", "1").out("out").run_json();
/// assert!(fs::read(net.path("out/a.bin")).unwrap() == net.bytes("a.bin"));
/// ```
pub struct Net {
    // Fields drop in order: the processes go before their folder.
    seeders: Vec<Seeder>,
    tracker: Proc,
    addr: String,
    /// What the seeders share, by path in their share folder.
    files: BTreeMap<String, Vec<u8>>,
    dir: tempfile::TempDir,
}

struct Seeder {
    name: String,
    share: PathBuf,
    proc: Proc,
}

impl Net {
    /// A tracker with its default settings.
    pub fn start() -> Net {
        Net::start_with(&[])
    }

    /// A tracker started with `tracker_args` (e.g. `--peer-ttl 1s`).
    pub fn start_with(tracker_args: &[&str]) -> Net {
        let dir = tempfile::tempdir().unwrap();
        let (tracker, addr) = tracker(dir.path(), tracker_args);
        Net {
            seeders: Vec::new(),
            tracker,
            addr,
            files: BTreeMap::new(),
            dir,
        }
    }

    /// The temporary folder: every process runs in it, relative paths are from it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `rel` in the temporary folder.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The tracker's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The tracker's process (its log lines, or to kill it).
    pub fn tracker(&mut self) -> &mut Proc {
        &mut self.tracker
    }

    /// A seeding peer (`p2p peer --no-menu`) named `name`, listening on a free port over
    /// `transport`, sharing the folder `share` (see [`SeederBuilder::share`]).
    pub fn seeder(&mut self, name: &str, transport: &str) -> SeederBuilder<'_> {
        let share = self.path("share");
        SeederBuilder {
            net: self,
            name: name.to_string(),
            transport: transport.to_string(),
            share,
            files: Vec::new(),
            args: Vec::new(),
        }
    }

    fn seeder_of(&self, name: &str) -> &Seeder {
        self.seeders
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no seeder `{name}` was started"))
    }

    /// The process of the seeder `name`.
    pub fn peer(&mut self, name: &str) -> &mut Proc {
        let i = self.seeders.iter().position(|s| s.name == name);
        let i = i.unwrap_or_else(|| panic!("no seeder `{name}` was started"));
        &mut self.seeders[i].proc
    }

    /// The address the seeder `name` listens on, as it printed it.
    pub fn peer_addr(&self, name: &str) -> SocketAddr {
        let seeder = self.seeder_of(name);
        let line = seeder
            .proc
            .seen
            .iter()
            .find(|l| l.contains(" listening on "))
            .expect("the peer printed its address");
        line.split_whitespace().nth(4).unwrap().parse().unwrap()
    }

    /// The bytes shared as `file` (its path in the share folder): what a download must give.
    pub fn bytes(&self, file: &str) -> &[u8] {
        self.files
            .get(file)
            .unwrap_or_else(|| panic!("no seeder shares `{file}`"))
    }

    /// Replaces `file` in the folder the seeder `peer` shares (and what [`Net::bytes`] says).
    pub fn rewrite(&mut self, peer: &str, file: &str, bytes: &[u8]) {
        write_file(&self.seeder_of(peer).share, file, bytes);
        self.files.insert(file.to_string(), bytes.to_vec());
    }

    /// A command line `p2p <args> --tracker <the tracker>`, run in [`Net::dir`].
    pub fn cmd(&self, args: &[&str]) -> Cmd {
        Cmd {
            dir: self.dir().to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            tracker: self.addr.clone(),
        }
    }

    /// `p2p get <peer> <id>`.
    pub fn get(&self, peer: &str, id: &str) -> Cmd {
        self.cmd(&["get", peer, id])
    }

    /// `p2p ls <peer>`.
    pub fn ls(&self, peer: &str) -> Cmd {
        self.cmd(&["ls", peer])
    }

    /// `p2p peers`.
    pub fn peers(&self) -> Cmd {
        self.cmd(&["peers"])
    }

    /// `p2p peer` with its interactive menu; without [`Cmd::name`] it asks for a port and a
    /// name first.
    pub fn menu(&self) -> Cmd {
        self.cmd(&["peer"])
    }
}

/// A seeder to start: see [`Net::seeder`].
pub struct SeederBuilder<'a> {
    net: &'a mut Net,
    name: String,
    transport: String,
    share: PathBuf,
    files: Vec<(String, Vec<u8>)>,
    args: Vec<String>,
}

impl<'a> SeederBuilder<'a> {
    /// Shares the folder `rel` of [`Net::dir`] (created if missing) instead of `share`.
    pub fn share(mut self, rel: &str) -> Self {
        self.share = self.net.path(rel);
        self
    }

    /// Writes `bytes` as `name` (a path, its folders created) into the share folder.
    pub fn file(mut self, name: &str, bytes: &[u8]) -> Self {
        self.files.push((name.to_string(), bytes.to_vec()));
        self
    }

    /// More arguments for `p2p peer`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Creates the share folder and writes the files into it.
    fn prepare(&mut self) {
        fs::create_dir_all(&self.share).unwrap();
        for (name, bytes) in self.files.drain(..) {
            if let Some(b) = self.net.files.get(&name) {
                assert!(*b == bytes, "`{name}` is shared with other bytes already");
            }
            let path = self.share.join(&name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &bytes).unwrap();
            self.net.files.insert(name, bytes);
        }
    }

    /// Starts the peer and waits until it is registered; the [`Net`] keeps it (see
    /// [`Net::peer`]).
    pub fn start(mut self) -> &'a mut Proc {
        assert!(
            self.net.seeders.iter().all(|s| s.name != self.name),
            "seeder `{}` is running already",
            self.name
        );
        self.prepare();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let proc = peer(
            self.net.dir(),
            &self.name,
            &self.net.addr,
            &self.share,
            &self.transport,
            &args,
        );
        self.net.seeders.push(Seeder {
            name: self.name,
            share: self.share,
            proc,
        });
        &mut self.net.seeders.last_mut().unwrap().proc
    }

    /// Runs the peer to completion instead (for a peer that must be refused).
    pub fn run(mut self) -> Output {
        self.prepare();
        let mut cmd = self
            .net
            .cmd(&["peer", "--name", &self.name, "--listen", "127.0.0.1:0"]);
        cmd = cmd.arg("--share").arg(&self.share);
        cmd = cmd.transport(&self.transport).arg("--no-menu");
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        cmd.args(&args).run()
    }
}

/// A `p2p` command line against a [`Net`]'s tracker, built flag by flag, then run to
/// completion ([`Cmd::run`], [`Cmd::run_json`]) or started ([`Cmd::spawn`]) in [`Net::dir`].
#[derive(Clone)]
pub struct Cmd {
    dir: PathBuf,
    args: Vec<String>,
    tracker: String,
}

impl Cmd {
    /// One more argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        let arg = arg.as_ref().to_str().expect("UTF-8 argument");
        self.args.push(arg.to_string());
        self
    }

    /// More arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// `--tracker <addr>` instead of the net's tracker.
    pub fn tracker(mut self, addr: &str) -> Self {
        self.tracker = addr.to_string();
        self
    }

    /// `--transport <transport>`.
    pub fn transport(self, transport: &str) -> Self {
        self.args(&["--transport", transport])
    }

    /// `--out <dir>`, as given (a relative path is from [`Net::dir`]).
    pub fn out(self, dir: impl AsRef<Path>) -> Self {
        self.arg("--out").arg(dir.as_ref())
    }

    /// `--json` (once).
    pub fn json(self) -> Self {
        if self.args.iter().any(|a| a == "--json") {
            return self;
        }
        self.arg("--json")
    }

    /// For the menu: `--name <name>`, listening on a free port of 127.0.0.1.
    pub fn name(self, name: &str) -> Self {
        self.args(&["--name", name, "--listen", "127.0.0.1:0"])
    }

    /// For the menu: shares the folder `rel` of [`Net::dir`], created if missing.
    pub fn share(self, rel: &str) -> Self {
        let share = self.dir.join(rel);
        fs::create_dir_all(&share).unwrap();
        self.arg("--share").arg(share)
    }

    /// For the menu: `--downloads <dir>`, as given.
    pub fn downloads(self, dir: impl AsRef<Path>) -> Self {
        self.arg("--downloads").arg(dir.as_ref())
    }

    fn argv(&self) -> Vec<&str> {
        let mut argv: Vec<&str> = self.args.iter().map(String::as_str).collect();
        argv.extend(["--tracker", &self.tracker]);
        argv
    }

    /// Runs to completion (bounded by [`DEADLINE`]).
    pub fn run(&self) -> Output {
        run(&self.dir, &self.argv())
    }

    /// With `--json`, runs to completion; the JSON it printed, which it must have printed
    /// successfully.
    pub fn run_json(&self) -> serde_json::Value {
        json(&self.clone().json().run())
    }

    /// Starts it; its output is read as it comes.
    pub fn spawn(&self) -> Proc {
        Proc::spawn(&self.dir, &self.argv())
    }
}
