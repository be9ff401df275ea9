//! The README's walk-through, played in pseudo-terminals as a person types it: the `p2p`
//! command found on PATH (a folder holding a `p2p` symlink to the built binary, as an install
//! leaves it), a tracker and two peers in three terminals, the menu's prompts, tab completion
//! of a peer name and a file ID, a download that finishes, `d`, `q`. Then the live lines of
//! two downloads running, and `d` listing an upload on the sharing side.
//!
//! Everything runs on 127.0.0.1 with ports found free, in a temporary home (`HOME`, so the
//! menu's history and any config file are the test's own). Waiting is always for text the
//! program prints, with a deadline; never a sleep.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rexpect::reader::Options;
use rexpect::session::{spawn_with_options, PtySession};

/// Deadline for each awaited piece of output.
const DEADLINE_MS: u64 = 30_000;

/// A port free for UDP and TCP on every interface (the tracker serves both on one port).
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("0.0.0.0:0").expect("bind a UDP socket");
        let port = udp.local_addr().expect("local address").port();
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

/// The temporary machine: a home, a PATH with `p2p` on it, a tracker address.
struct Machine {
    root: tempfile::TempDir,
    tracker: String,
}

impl Machine {
    /// A home folder, and a `bin` folder with `p2p` in it, as `cargo install` leaves it.
    fn new() -> Machine {
        let root = tempfile::tempdir().expect("temporary folder");
        let bin = root.path().join("bin");
        fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_p2p"), bin.join("p2p")).unwrap();
        fs::create_dir_all(root.path().join("home")).unwrap();
        Machine {
            root,
            tracker: format!("127.0.0.1:{}", free_port()),
        }
    }

    fn home(&self) -> PathBuf {
        self.root.path().join("home")
    }

    /// A terminal running `line` through the shell, in `dir`: `p2p` is found on PATH.
    fn terminal(&self, name: &'static str, dir: &Path, line: &str) -> Terminal {
        let path = format!(
            "{}:{}",
            self.root.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("exec {line}"))
            .current_dir(dir)
            .env_clear()
            .env("PATH", path)
            .env("HOME", self.home())
            .env("TERM", "xterm")
            .env("LANG", "C.UTF-8")
            // The README's default tracker is 0.0.0.0:9000; the test's is on a free port.
            .env("P2P_TRACKER", &self.tracker);
        let session = spawn_with_options(
            cmd,
            Options::new()
                .timeout_ms(Some(DEADLINE_MS))
                .strip_ansi_escape_codes(true),
        )
        .unwrap_or_else(|e| panic!("cannot start `{line}` in a terminal: {e}"));
        Terminal { name, session }
    }

    /// Terminal 1: `p2p tracker`, on the test's address.
    fn tracker(&self) -> Terminal {
        let mut t = self.terminal(
            "tracker",
            &self.home(),
            &format!("p2p tracker --listen {}", self.tracker),
        );
        t.expect("tracker listening on");
        t
    }
}

/// A program in a pseudo-terminal, read as a person reads it.
struct Terminal {
    name: &'static str,
    session: PtySession,
}

impl Terminal {
    /// Waits until `text` is printed; returns what came before it.
    fn expect(&mut self, text: &str) -> String {
        match self.session.exp_string(text) {
            Ok(before) => before,
            Err(e) => panic!("terminal {}: {text:?} never came: {e}", self.name),
        }
    }

    /// Waits until text matching `regex` is printed; returns it.
    fn expect_regex(&mut self, regex: &str) -> String {
        match self.session.exp_regex(regex) {
            Ok((_, found)) => found,
            Err(e) => panic!("terminal {}: /{regex}/ never came: {e}", self.name),
        }
    }

    /// Types `keys` (no Enter).
    fn keys(&mut self, keys: &str) {
        self.session.send(keys).expect("type");
        self.session.flush().expect("type");
    }

    /// Types `line` and Enter.
    fn enter(&mut self, line: &str) {
        self.keys(&format!("{line}\r"));
    }

    /// Waits for the process to end (its terminal closes first); its exit code.
    fn exit_code(&mut self) -> Option<i32> {
        if let Err(e) = self.session.exp_eof() {
            panic!("terminal {}: the program did not end: {e}", self.name);
        }
        match self.session.process().wait() {
            Ok(rexpect::process::WaitStatus::Exited(_, code)) => Some(code),
            _ => None,
        }
    }
}

/// A folder like the repository's: `shared/` holds the project's three sample files.
fn repository(m: &Machine) -> PathBuf {
    let repo = m.home().join("p2p");
    let shared = repo.join("shared");
    fs::create_dir_all(&shared).unwrap();
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    for name in ["file1.txt", "file2.txt", "file3.txt"] {
        fs::copy(samples.join(name), shared.join(name)).unwrap();
    }
    repo
}

/// The README's walk-through, terminal by terminal, by the command's name on PATH.
#[test]
fn readme_walkthrough_in_three_terminals() {
    let m = Machine::new();
    let repo = repository(&m);

    // Install check: `p2p --version`, in any terminal.
    let mut version = m.terminal("version", &m.home(), "p2p --version");
    version.expect(concat!("p2p ", env!("CARGO_PKG_VERSION")));
    assert_eq!(version.exit_code(), Some(0));

    let _tracker = m.tracker();

    // Terminal 2: `p2p peer` in the repository, answering the prompts.
    let alice_port = free_port();
    let mut alice = m.terminal("alice", &repo, "p2p peer");
    alice.expect("Enter port number (e.g., 10001): ");
    alice.enter(&alice_port.to_string());
    alice.expect("Enter peer name: ");
    alice.enter("alice");
    alice.expect(&format!("Hello, alice (listening on port {alice_port})"));
    alice.expect("Current Peers:");
    alice.expect("  - alice");
    alice.expect("q                  : quit");
    alice.expect("Choose: ");

    // Terminal 3: `mkdir -p ~/Music && cd ~`, then a peer sharing it.
    fs::create_dir_all(m.home().join("Music")).unwrap();
    let bob_port = free_port();
    let mut bob = m.terminal(
        "bob",
        &m.home(),
        &format!("p2p peer --name bob --port {bob_port} --share ~/Music"),
    );
    bob.expect("Hello, bob");
    bob.expect("  - alice");
    bob.expect("Choose: ");

    // A peer name completed with Tab: `al` is only alice.
    bob.keys("i al\t");
    bob.expect("i alice");
    bob.enter("");
    bob.expect("ID: 001 -> shared/file1.txt (18 B)");
    bob.expect("ID: 002 -> shared/file2.txt (74 B)");
    bob.expect("ID: 003 -> shared/file3.txt (26.9 KiB)");
    bob.expect("Choose: ");

    // A file ID completed from the index just shown: Tab twice lists them with their paths.
    bob.keys("c al\t00\t\t");
    bob.expect("001 file1.txt");
    bob.expect("003 file3.txt");
    bob.enter("3");
    bob.expect("Downloading file3.txt (26.9 KiB) from alice in the background");
    bob.expect("[bob] Saved ./downloads/file3.txt (26.9 KiB, BLAKE3 verified) from alice");
    assert_eq!(
        fs::read(m.home().join("downloads/file3.txt")).unwrap(),
        fs::read(repo.join("shared/file3.txt")).unwrap(),
        "the saved file is the shared one"
    );

    // Alice saw the upload; once she has listed the peers it names bob.
    alice.expect("upload: sending file3.txt (26.9 KiB) to 127.0.0.1:");
    alice.expect("upload: sent file3.txt to 127.0.0.1:");
    // Two commands typed at once: the second waits for its prompt, it is not lost.
    alice.keys("R\rd\r");
    alice.expect("  - bob");
    alice.expect("No downloads running.");
    alice.expect("No uploads running.");
    alice.expect("Uploads ended: 1 finished (26.9 KiB sent).");

    bob.enter("d");
    bob.expect("No downloads running.");
    bob.enter("q");
    bob.expect("Leaving system. Goodbye!");
    assert_eq!(bob.exit_code(), Some(0));
    alice.enter("quit");
    alice.expect("Leaving system. Goodbye!");
    assert_eq!(alice.exit_code(), Some(0));

    // The commands are in the history file, for the next session's arrow keys.
    let history = fs::read_to_string(m.home().join(".local/share/p2p/menu-history"))
        .expect("the menu keeps its history");
    for command in ["i alice", "c alice 003", "d", "R", "quit"] {
        assert!(
            history.lines().any(|l| l == command),
            "{command:?} not in {history:?}"
        );
    }
}

/// Bytes that do not compress, so that no layer could make the transfer instant.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Two downloads running: each has a live line above the prompt (without typing anything)
/// with its bytes, percent and rate or stall; the sharer's `d` lists both uploads by the
/// downloader's name; `q` asks first; the downloads finish; Ctrl-C then leaves.
#[test]
fn running_downloads_have_live_lines_and_the_sharer_lists_its_uploads() {
    let m = Machine::new();
    let folder = m.home().join("seed");
    fs::create_dir_all(folder.join("shared")).unwrap();
    let album = noise(4 << 20, 1);
    let video = noise(4 << 20, 2);
    fs::write(folder.join("shared/album.flac"), &album).unwrap();
    fs::write(folder.join("shared/video.mkv"), &video).unwrap();
    let _tracker = m.tracker();
    let mut alice = m.terminal(
        "alice",
        &folder,
        &format!(
            "p2p peer --name alice --port {} --max-upload-rate 1MiB",
            free_port()
        ),
    );
    alice.expect("Choose: ");
    fs::create_dir_all(m.home().join("Music")).unwrap();
    let bob_port = free_port();
    let mut bob = m.terminal(
        "bob",
        &m.home(),
        &format!("p2p peer --name bob --port {bob_port} --share Music"),
    );
    bob.expect("Choose: ");
    alice.enter("r");
    alice.expect("  - bob");

    bob.enter("c alice 001");
    bob.expect("Downloading album.flac (4.0 MiB) from alice in the background");
    bob.enter("c alice 002");
    bob.expect("Downloading video.mkv (4.0 MiB) from alice in the background");
    // Each file takes at least 3 s under alice's 1 MiB/s cap: both run for all that follows.
    bob.enter("q");
    bob.expect("2 download(s) running: album.flac from alice, video.mkv from alice.");
    bob.expect("Quit anyway? [y/N] ");
    bob.enter("n");
    bob.expect("Not quitting: the downloads go on.");
    alice.expect("upload: sending video.mkv (4.0 MiB) to bob");
    alice.enter("d");
    alice.expect("Uploads running:");
    let to_bob = format!("to bob (127.0.0.1:{bob_port})");
    alice.expect(&format!("album.flac (4.0 MiB) {to_bob}"));
    alice.expect(&format!("video.mkv (4.0 MiB) {to_bob}"));
    // Nothing typed: the live lines come on their own, with a rate once measured (or a
    // stall, when the other upload has the whole rate cap).
    let pace = r"[0-9.]+ (B|KiB|MiB)/s|stalled \d+ s";
    bob.expect_regex(&format!(
        r"album\.flac from alice: [0-9.]+ (B|KiB|MiB) of 4\.0 MiB \(\d+%\), ({pace}), \d+ s"
    ));
    bob.expect_regex(&format!(
        r"video\.mkv from alice: [0-9.]+ (B|KiB|MiB) of 4\.0 MiB \(\d+%\), ({pace}), \d+ s"
    ));

    for _ in 0..2 {
        bob.expect("[bob] Saved ./downloads/");
    }
    assert_eq!(
        fs::read(m.home().join("downloads/album.flac")).unwrap(),
        album
    );
    assert_eq!(
        fs::read(m.home().join("downloads/video.mkv")).unwrap(),
        video
    );
    bob.enter("d");
    bob.expect("No downloads running.");
    // Ctrl-C is `q`: with nothing running, it leaves at once.
    bob.keys("\x03");
    bob.expect("Leaving system. Goodbye!");
    assert_eq!(bob.exit_code(), Some(0));

    alice.enter("d");
    alice.expect("No uploads running.");
    alice.expect("Uploads ended: 2 finished (8.0 MiB sent).");
}

/// With its output piped, the menu prints no live lines, even while a download runs for
/// seconds: scripts read the lines they always did.
#[test]
fn piped_output_has_no_live_lines() {
    let m = Machine::new();
    let folder = m.home().join("seed");
    fs::create_dir_all(folder.join("shared")).unwrap();
    fs::write(folder.join("shared/big.bin"), noise(3 << 20, 3)).unwrap();
    let _tracker = m.tracker();
    let mut alice = m.terminal(
        "alice",
        &folder,
        &format!(
            "p2p peer --name alice --port {} --max-upload-rate 1MiB",
            free_port()
        ),
    );
    alice.expect("Choose: ");
    let mut bob = Command::new(env!("CARGO_BIN_EXE_p2p"))
        .args(["peer", "--name", "bob", "--port", "0", "--share", "."])
        .current_dir(m.home())
        .env("HOME", m.home())
        .env("P2P_TRACKER", &m.tracker)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start bob");
    let mut stdin = bob.stdin.take().expect("stdin");
    writeln!(stdin, "c alice 001").unwrap();
    stdin.flush().unwrap();
    let stdout = BufReader::new(bob.stdout.take().expect("stdout"));
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Bob's output up to the saved file, each line within the deadline.
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("[bob] Saved ")) {
        match lines.recv_timeout(std::time::Duration::from_millis(DEADLINE_MS)) {
            Ok(line) => seen.push(line),
            Err(e) => panic!("no `[bob] Saved` ({e}); saw {seen:#?}"),
        }
    }
    let _ = bob.kill();
    let _ = bob.wait();
    let text = seen.join("\n");
    assert!(text.contains("[bob] Saved "), "{text}");
    assert!(!text.contains("big.bin from alice: "), "{text}");
    assert!(
        !text.contains('\u{2193}') && !text.contains('\x1b'),
        "{text}"
    );
}
