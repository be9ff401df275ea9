//! Drives the real `p2p` binary: processes on 127.0.0.1, their output read line by line.
//! Waiting is always for a line the process prints (with a generous deadline that only
//! matters when something is broken), never a sleep.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
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

impl Proc {
    pub fn spawn(dir: &Path, args: &[&str]) -> Proc {
        let mut child = Command::new(bin())
            .args(args)
            .current_dir(dir)
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

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to stdin");
        stdin.flush().unwrap();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// Runs a one-shot command to completion.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    let started = Instant::now();
    let out = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run p2p");
    assert!(
        started.elapsed() < DEADLINE,
        "p2p {args:?} took {:?}",
        started.elapsed()
    );
    out
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
