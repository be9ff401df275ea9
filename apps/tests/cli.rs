//! The real `p2p` binary on 127.0.0.1: tracker + peers as processes, over UDP and TCP.

mod common;

use std::fs;

use common::*;

/// Chunk of a UDP seeder on loopback (60 KiB datagrams), and with 1,452-byte datagrams.
const UDP_CHUNK: usize = p2p_transports::LOOPBACK_UDP_MESSAGE - p2p_proto::wire::DATA_OVERHEAD;
const MTU_CHUNK: usize = 1452 - p2p_proto::wire::DATA_OVERHEAD;
/// TCP payload per chunk.
const TCP_CHUNK: usize = 64 * 1024;

/// The names in a `peers --json` listing.
fn names(peers: &serde_json::Value) -> Vec<&str> {
    let peers = peers.as_array().unwrap();
    peers.iter().map(|p| p["name"].as_str().unwrap()).collect()
}

fn transfers_every_edge_size(transport: &str, chunk: usize, seeder_args: &[&str]) {
    let sizes = [0, 1, chunk, chunk + 1, 20 * 1024 * 1024 + 7];
    let file = |i: usize| format!("f{i}-{}.bin", sizes[i]);
    let mut net = Net::start();
    let mut seeder = net.seeder("seeder", transport).args(seeder_args);
    for (i, size) in sizes.iter().enumerate() {
        seeder = seeder.file(&file(i), &random_bytes(*size, i as u64));
    }
    seeder.start();
    net.seeder("other", transport).share("empty").start();

    let peers = net.peers().transport(transport).run_json();
    assert_eq!(names(&peers), vec!["other", "seeder"]);
    assert!(peers
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["transport"] == transport));

    let index = net.ls("seeder").transport(transport).run_json();
    let index = index.as_array().unwrap();
    assert_eq!(index.len(), sizes.len());
    for (i, (entry, size)) in index.iter().zip(sizes).enumerate() {
        assert_eq!(entry["id"], format!("{:03}", i + 1));
        assert_eq!(entry["size"], size as u64);
    }
    // The plain listing keeps the original program's format.
    let plain = stdout(&net.ls("seeder").transport(transport).run());
    assert!(plain.contains("ID: 001 -> share/f0-0.bin"), "{plain}");

    let out = net.path("out");
    for (i, size) in sizes.iter().enumerate() {
        let id = format!("{:03}", i + 1);
        let mut get = net.get("seeder", &id).transport(transport).out(&out);
        // Every other file without fsync: the same bytes, the same clean-up.
        if i % 2 == 1 {
            get = get.arg("--no-fsync");
        }
        let report = get.run_json();
        let name = file(i);
        assert_eq!(report["path"], out.join(&name).display().to_string());
        assert_eq!(report["size"], *size as u64);
        // An empty file has no first byte.
        assert_eq!(report["first_byte_ms"].is_null(), *size == 0, "{report}");
        let got = fs::read(out.join(&name)).unwrap();
        assert!(got == net.bytes(&name), "{name} differs over {transport}");
    }
    // Nothing temporary is left behind.
    let leftovers: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn udp_end_to_end_every_edge_size() {
    transfers_every_edge_size("udp", UDP_CHUNK, &[]);
}

/// Datagrams of a real network's size (1,500-byte MTU) on loopback: many small chunks through
/// segmentation and receive offload, read-ahead and staged hashing.
#[test]
fn udp_end_to_end_with_mtu_sized_datagrams() {
    transfers_every_edge_size("udp", MTU_CHUNK, &["--max-datagram", "1452"]);
}

#[test]
fn tcp_end_to_end_every_edge_size() {
    transfers_every_edge_size("tcp", TCP_CHUNK, &[]);
}

#[test]
fn peer_is_reached_over_its_own_transport() {
    let mut net = Net::start();
    net.seeder("tcp-seeder", "tcp")
        .file("x.bin", &random_bytes(100_000, 9))
        .start();
    // The tracker is asked over UDP; the peer is reached over TCP.
    let o = net.get("tcp-seeder", "1").transport("udp").out("out").run();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "out/x.bin");
    assert_eq!(fs::read(net.path("out/x.bin")).unwrap(), net.bytes("x.bin"));
}

#[test]
fn interactive_menu_lists_downloads_refreshes_and_quits() {
    let mut net = Net::start();
    net.seeder("alice", "udp")
        .file("file1.txt", b"menu test\n")
        .start();

    let mut menu = net.menu().share("mine").downloads("dl").spawn();
    menu.send("0"); // Enter port number (e.g., 10001):
    menu.send("bob"); // Enter peer name:
    menu.wait_for(
        "Enter port number (e.g., 10001): Enter peer name: Hello, bob (listening on port",
    );
    menu.wait_for("Current Peers:");
    menu.wait_for("  - alice");
    menu.wait_for("Available commands:");
    menu.wait_for("c -peer_name -id");
    menu.send("i alice");
    menu.wait_for("ID: 001 -> share/file1.txt");
    menu.send("c alice 001");
    menu.wait_for("Saved dl/file1.txt");
    assert_eq!(fs::read(net.path("dl/file1.txt")).unwrap(), b"menu test\n");
    menu.send("what");
    menu.wait_for("Unknown command");
    // Help, commands in any case, and hints that name what can be typed here.
    menu.send("?");
    menu.wait_for("show these commands");
    menu.send("I alice");
    menu.wait_for("ID: 001 -> share/file1.txt");
    menu.send("i nobody");
    menu.wait_for("unknown peer `nobody`: type `r` to see who is online");
    menu.send("r");
    menu.wait_for("  - bob");
    menu.send("q");
    menu.wait_for("Leaving system. Goodbye!");
    assert!(menu.wait_exit().success());
    // bob unregistered on the way out.
    let peers = net.peers().run_json();
    assert_eq!(peers.as_array().unwrap().len(), 1);
}

#[test]
fn live_name_from_another_address_is_refused() {
    let mut net = Net::start();
    net.seeder("taken", "udp").start();
    let o = net.seeder("taken", "udp").run();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("refused `taken`") && err.contains("already used"),
        "{err}"
    );
}

#[test]
fn killed_peer_expires_after_the_ttl() {
    let mut net = Net::start_with(&["--peer-ttl", "1s", "--heartbeat", "200ms"]);
    net.seeder("victim", "udp").start();
    net.seeder("stays", "tcp").start();
    net.peer("victim").kill(); // SIGKILL: no goodbye
    net.tracker().wait_for("expired victim");
    let peers = net.peers().run_json();
    assert_eq!(names(&peers), vec!["stays"], "heartbeats keep the live one");
}

#[test]
fn sigterm_unregisters_the_peer() {
    let mut net = Net::start();
    net.seeder("polite", "udp").start();
    net.peer("polite").terminate();
    net.tracker().wait_for("unregistered polite");
    assert!(net.peer("polite").wait_exit().success());
}

#[test]
fn sigterm_with_the_tracker_gone_leaves_without_waiting_out_the_retries() {
    let mut net = Net::start();
    net.seeder("orphan", "udp").start();
    net.tracker().kill();
    let p = net.peer("orphan");
    p.terminate();
    // Leaving gives the tracker a bounded wait (less than the request's own retries, which
    // would say "no answer" instead), then says why the entry is left to expire.
    p.wait_for_each(&[
        "did not confirm within 1.5 s that we left (our entry will expire)",
        "Leaving system. Goodbye!",
    ]);
    assert!(p.wait_exit().success());
}

#[test]
fn clear_errors_for_unknown_peer_id_and_unreachable_tracker() {
    let mut net = Net::start();
    net.seeder("p", "udp").file("a.txt", b"a").start();

    let o = net.get("nobody", "1").run();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown peer `nobody`"),
        "{}",
        stderr(&o)
    );

    let o = net.get("p", "42").run();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("has no file 042"), "{}", stderr(&o));

    // A port with nothing behind it (the tracker's own port over a different IP is not used).
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    for transport in ["udp", "tcp"] {
        let started = std::time::Instant::now();
        let o = net.peers().tracker(&dead_addr).transport(transport).run();
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains("cannot reach the tracker"),
            "{}",
            stderr(&o)
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    // Not a number: a path as `p2p ls` lists it, which p does not have.
    let o = net.get("p", "abc").run();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("has no file or folder `abc`"),
        "{}",
        stderr(&o)
    );
    let o = net.cmd(&["get", "p"]).run();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("give its ID"), "{}", stderr(&o));
}

#[test]
fn existing_different_file_is_never_replaced() {
    let mut net = Net::start();
    net.seeder("p", "udp")
        .file("a.txt", b"from the peer")
        .start();
    let out = net.path("out");
    fs::create_dir(&out).unwrap();
    write_file(&out, "a.txt", b"mine, precious");
    let o = net.get("p", "1").out("out").run();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("already exists with other content"),
        "{}",
        stderr(&o)
    );
    assert_eq!(fs::read(out.join("a.txt")).unwrap(), b"mine, precious");
    // Same content: nothing to do, success.
    write_file(&out, "a.txt", b"from the peer");
    let o = net.get("p", "1").out("out").run();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn demo_runs_and_verifies() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let o = run(root, &["demo"]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("demo ok"), "{out}");
    let rows = out.lines().filter(|l| l.ends_with("  identical")).count();
    assert_eq!(rows, 6, "3 sample files x 2 transports: {out}");
}

/// Six gets at once from a seeder that serves two per IP: the others wait in its line
/// (`get` says so, with how many are ahead) and every one ends with the exact file (issue
/// 20: 81 of 100 failed at once with "sender busy"; then they retried blindly, leaving
/// slots idle).
#[test]
fn gets_beyond_the_upload_slots_wait_in_line_until_served() {
    let mut net = Net::start();
    let bytes = random_bytes(2 * 1024 * 1024, 12);
    net.seeder("seed", "udp")
        .file("f.bin", &bytes)
        .args(&["--max-uploads-per-peer", "2", "--max-upload-rate", "8MiB"])
        .start();
    let mut gets: Vec<_> = (0..6)
        .map(|i| net.get("seed", "1").out(format!("out{i}")).spawn())
        .collect();
    let mut waited = 0;
    for (i, g) in gets.iter_mut().enumerate() {
        let (status, out) = g.wait_output();
        assert!(status.success(), "get {i}: {out}");
        waited += out.matches("waiting in line").count();
        assert!(!out.contains("asking again"), "get {i} was refused: {out}");
        assert!(fs::read(net.path(format!("out{i}/f.bin"))).unwrap() == bytes);
    }
    assert!(
        waited >= 2,
        "{waited} gets waited in line: six at once over two slots must queue some"
    );
}

/// `get --window` takes a memory budget from 1 MiB to 1 GiB: the smallest still downloads
/// a file three times its size byte-exact; one outside the range is a usage error that says
/// the range.
#[test]
fn get_takes_a_window_budget_within_its_range() {
    let mut net = Net::start();
    let bytes = random_bytes(3 * 1024 * 1024 + 5, 14);
    net.seeder("seed", "udp").file("w.bin", &bytes).start();
    let o = net.get("seed", "1").args(&["--window", "1MiB"]).run();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(fs::read(net.path("downloads/w.bin")).unwrap() == bytes);
    for bad in ["512k", "2G", "lots"] {
        let o = net.get("seed", "1").args(&["--window", bad]).run();
        assert_eq!(o.status.code(), Some(2), "--window {bad}: {}", stderr(&o));
        assert!(stderr(&o).contains("--window"), "{}", stderr(&o));
    }
}

/// Every command: `--help` with examples, `--version`.
const COMMANDS: [&str; 8] = [
    "tracker",
    "peer",
    "peers",
    "ls",
    "get",
    "demo",
    "completions",
    "man",
];

#[test]
fn every_command_has_help_with_examples_and_a_version() {
    let dir = tempfile::tempdir().unwrap();
    let version = env!("CARGO_PKG_VERSION");
    for command in COMMANDS {
        let o = run(dir.path(), &[command, "--help"]);
        assert!(o.status.success(), "{command} --help: {}", stderr(&o));
        let help = stdout(&o);
        assert!(
            help.contains("Examples:") && help.contains(&format!("\n  p2p {command}")),
            "{command} --help has no example of itself: {help}"
        );
        let o = run(dir.path(), &[command, "--version"]);
        assert!(o.status.success(), "{command} --version: {}", stderr(&o));
        assert!(stdout(&o).contains(version), "{}", stdout(&o));
    }
    let o = run(dir.path(), &["--help"]);
    assert!(stdout(&o).contains("Examples:"), "{}", stdout(&o));
}

#[test]
fn transport_values_are_listed_in_help_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    for command in ["peer", "peers", "ls", "get"] {
        let help = stdout(&run(dir.path(), &[command, "--help"]));
        let at = help.find("--transport").expect("a --transport flag");
        let after = &help[at..];
        assert!(
            after.contains("Possible values") && after.contains("- udp") && after.contains("- tcp"),
            "{command}: {help}"
        );
        let short = stdout(&run(dir.path(), &[command, "-h"]));
        assert!(short.contains("[possible values: udp, tcp]"), "{short}");
    }
    let o = run(dir.path(), &["peers", "--transport", "quic"]);
    assert_eq!(o.status.code(), Some(2), "a usage error");
    assert!(
        stderr(&o).contains("[possible values: udp, tcp]"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn completions_are_generated_for_each_shell() {
    let dir = tempfile::tempdir().unwrap();
    let expect = [
        ("bash", "complete -F _p2p"),
        ("zsh", "#compdef p2p"),
        ("fish", "complete -c p2p"),
        ("elvish", "p2p"),
        ("powershell", "Register-ArgumentCompleter"),
    ];
    for (shell, marker) in expect {
        let o = run(dir.path(), &["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        assert!(script.contains(marker), "{shell}: {script}");
        // Generated from the parser's definitions: the newest flags are there.
        assert!(script.contains("busy-wait"), "{shell}: {script}");
    }
    let o = run(dir.path(), &["completions", "cmd.exe"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("possible values"), "{}", stderr(&o));
}

#[test]
fn man_pages_are_generated_from_the_same_definitions() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(dir.path(), &["man"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let page = stdout(&o);
    assert!(page.contains(".TH p2p 1"), "{page}");
    for command in COMMANDS {
        assert!(
            page.contains(&format!("p2p\\-{command}(1)")),
            "{command}: {page}"
        );
    }
    let o = run(dir.path(), &["man", "get"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let page = stdout(&o);
    assert!(page.contains(".TH p2p-get 1"), "{page}");
    assert!(page.contains("\\-\\-busy\\-wait"), "{page}");
    assert!(page.contains("Examples:"), "{page}");
    // A page man(1) can lay out, when man is installed here.
    if let Ok(m) = std::process::Command::new("man")
        .args(["-l", "-"])
        .env("MANPAGER", "cat")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        use std::io::Write;
        let mut m = m;
        m.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
        let out = m.wait_with_output().unwrap();
        if out.status.success() {
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("busy"),
                "man laid the page out without its flags"
            );
        }
    }
}

/// A free port of 127.0.0.1 (nothing listens on it once this returns).
fn dead_tracker() -> String {
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    dead.local_addr().unwrap().to_string()
}

/// Under `--json`, a failure is one JSON object on stdout with a stable `kind`, and every
/// failure exits with its kind's documented code (README: "Exit codes").
#[test]
fn json_errors_carry_a_stable_kind_and_exit_codes_follow_it() {
    let mut net = Net::start();
    net.seeder("p", "udp").file("a.txt", b"a").start();
    let dead = dead_tracker();
    let cases = [
        (net.get("nobody", "1"), "unknown_peer", 4),
        (net.ls("nobody"), "unknown_peer", 4),
        (net.get("p", "42"), "unknown_file", 4),
        (net.get("p", "abc"), "unknown_file", 4),
        (net.cmd(&["get", "p"]), "usage", 2),
        (net.peers().tracker(&dead), "tracker_unreachable", 5),
        (net.peers().transport("quic"), "usage", 2),
        (net.get("p", "1").arg("--no-such-flag"), "usage", 2),
    ];
    for (cmd, kind, code) in cases {
        let o = cmd.clone().json().run();
        assert_eq!(o.status.code(), Some(code), "{kind}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{kind}: not JSON ({e}): {}", stdout(&o)));
        assert_eq!(v["error"]["kind"], kind, "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(!message.is_empty() && !message.starts_with("error:"), "{v}");
        // People still read it on stderr.
        assert!(stderr(&o).contains("error: "), "{}", stderr(&o));
        // Without --json: the same code, and nothing on stdout.
        let o = cmd.run();
        assert_eq!(o.status.code(), Some(code), "{kind}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{}", stdout(&o));
    }
    // Success is still exit 0 with the listing.
    assert_eq!(net.ls("p").run().status.code(), Some(0));
}

#[test]
fn a_share_that_is_a_file_or_missing_says_which() {
    let net = Net::start();
    write_file(net.dir(), "notes.txt", b"not a folder");
    let peer = |share: &str| {
        net.cmd(&[
            "peer",
            "--name",
            "x",
            "--listen",
            "127.0.0.1:0",
            "--no-menu",
        ])
        .args(&["--share", share])
        .run()
    };
    let o = peer("notes.txt");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "the share folder notes.txt is a file, not a folder: pass a folder with --share DIR"
        ),
        "{}",
        stderr(&o)
    );
    let o = peer("Music");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the share folder Music does not exist: create it (mkdir -p Music)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_out_or_downloads_folder_that_is_a_file_says_so() {
    let mut net = Net::start();
    net.seeder("p", "udp").file("a.txt", b"a").start();
    write_file(net.dir(), "notes.txt", b"mine");
    let o = net.get("p", "1").out("notes.txt").run();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--out notes.txt is a file, not a folder"),
        "{}",
        stderr(&o)
    );
    let o = net.get("p", "1").out("notes.txt/sub").json().run();
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "not_a_folder");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("notes.txt is a file, not a folder"),
        "{v}"
    );
    assert_eq!(fs::read(net.path("notes.txt")).unwrap(), b"mine");
    // The menu's --downloads, checked before it registers.
    let o = net
        .menu()
        .name("m")
        .share("mine")
        .downloads("notes.txt")
        .run();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--downloads notes.txt is a file, not a folder"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_port_in_use_says_so_and_what_to_do() {
    let mut net = Net::start();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cases = [
        ("udp", udp.local_addr().unwrap()),
        ("tcp", tcp.local_addr().unwrap()),
    ];
    for (transport, taken) in cases {
        let o = net
            .cmd(&["peer", "--name", "x", "--no-menu"])
            .share("mine")
            .args(&["--listen", &taken.to_string()])
            .transport(transport)
            .run();
        assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
        let want = format!(
            "another program listens on {}: pick another --listen",
            taken.port()
        );
        assert!(stderr(&o).contains(&want), "{transport}: {}", stderr(&o));
        // The tracker: UDP and TCP on one port, either one taken.
        let o = run(net.dir(), &["tracker", "--listen", &taken.to_string()]);
        assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
        assert!(stderr(&o).contains(&want), "tracker: {}", stderr(&o));
    }
    // Nothing registered on the way.
    assert_eq!(names(&net.peers().run_json()), Vec::<&str>::new());
    net.tracker().kill();
}

/// `ls` lines up its columns: IDs as wide as the largest (at least 3 digits), in ID order
/// even when a file added later sorts first by name.
#[test]
fn ls_pads_ids_to_the_largest_and_lists_them_in_id_order() {
    let mut net = Net::start();
    let mut seeder = net.seeder("many", "udp");
    for i in 0..1000 {
        seeder = seeder.file(&format!("f{i:04}.txt"), b"x");
    }
    seeder.start();
    let lines = |net: &Net| -> Vec<String> {
        let o = net.ls("many").run();
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o).lines().map(str::to_string).collect()
    };
    let listed = lines(&net);
    assert_eq!(listed.len(), 1000);
    assert_eq!(listed[0], "ID: 0001 -> share/f0000.txt (1 B)");
    assert_eq!(listed[999], "ID: 1000 -> share/f0999.txt (1 B)");
    // Added while the peer runs: the next ID, listed last although its name sorts first.
    write_file(&net.path("share"), "a-new.txt", b"new");
    let listed = lines(&net);
    assert_eq!(listed.len(), 1001, "the listing rescans the share");
    assert_eq!(listed[1000], "ID: 1001 -> share/a-new.txt (3 B)");
    let ids: Vec<&str> = listed.iter().map(|l| &l[4..8]).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "not in ID order");
    // IDs as printed are accepted back.
    let o = net.get("many", "0001").out("out").run();
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Logs carry no colour codes into a file or a pipe, unless asked; `--color` is checked.
#[test]
fn logs_have_colour_only_on_a_terminal_or_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dead_tracker();
    let logs = |extra: &[&str]| {
        let mut args = vec!["-v", "peers", "--tracker", &dead];
        args.extend_from_slice(extra);
        let o = run(dir.path(), &args);
        assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
        stderr(&o)
    };
    let plain = logs(&[]);
    assert!(plain.contains("DEBUG"), "-v logs nothing to test: {plain}");
    assert!(!plain.contains('\x1b'), "{plain:?}");
    assert!(!logs(&["--color", "never"]).contains('\x1b'));
    assert!(logs(&["--color", "always"]).contains("\x1b["));
    let o = run(dir.path(), &["peers", "--color", "sometimes"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("[possible values: auto, always, never]"),
        "{}",
        stderr(&o)
    );
}

/// `d` lists the downloads running; `q` with one running says what it stops and asks first.
#[test]
fn menu_lists_running_downloads_and_asks_before_quitting_them() {
    let mut net = Net::start();
    let size = 32 * 1024 * 1024;
    net.seeder("alice", "udp")
        .file("big.bin", &random_bytes(size, 21))
        .args(&["--max-upload-rate", "2MiB"])
        .start();
    let mut menu = net.menu().name("bob").share("mine").downloads("dl").spawn();
    menu.wait_for("d                  : list the downloads running");
    menu.send("d");
    menu.wait_for("No downloads running.");
    menu.send("c alice 001");
    menu.wait_for("Downloading big.bin (32.0 MiB) from alice in the background");
    menu.send("D");
    let line = menu.wait_for("big.bin from alice: ");
    assert!(line.contains(" of 32.0 MiB ("), "{line}");
    menu.send("q");
    menu.wait_for("1 download(s) running: big.bin from alice. Quitting stops them");
    menu.send("n");
    menu.wait_for("Not quitting: the downloads go on.");
    menu.send("d");
    menu.wait_for("big.bin from alice: ");
    menu.send("q");
    menu.wait_for("1 download(s) running");
    menu.send("y");
    menu.wait_for("Leaving system. Goodbye!");
    assert!(menu.wait_exit().success());
    assert!(
        !net.path("dl/big.bin").exists(),
        "the download was stopped, not finished"
    );
}

/// The prompts check each answer at once and ask again: the port by listening on it, the
/// tracker before the name is asked, the name by registering it.
#[test]
fn menu_prompts_check_each_answer_and_ask_again() {
    let mut net = Net::start();
    net.seeder("taken", "udp").start();
    let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let mut menu = net.menu().share("mine").spawn();
    menu.send("abc");
    menu.wait_for("`abc` is not a port number (0-65535).");
    menu.send(&port.to_string());
    menu.wait_for(&format!(
        "Another program listens on {port}: pick another port."
    ));
    menu.send("0");
    menu.send("no spaces");
    menu.wait_for(": choose another name.");
    menu.send("taken");
    menu.wait_for("the tracker refused `taken`");
    menu.send("fresh");
    menu.wait_for("Hello, fresh (listening on port");
    menu.send("q");
    menu.wait_for("Leaving system. Goodbye!");
    assert!(menu.wait_exit().success());
    let asked = menu.seen.join("\n");
    assert_eq!(asked.matches("Enter peer name: ").count(), 3, "{asked}");

    // No tracker: said before the name is asked.
    let o = net.menu().share("mine").tracker(&dead_tracker()).spawn();
    let mut o = o;
    o.send("0");
    let (status, output) = o.wait_output();
    assert_eq!(status.code(), Some(5), "{output}");
    assert!(output.contains("cannot reach the tracker"), "{output}");
    assert!(!output.contains("Enter peer name"), "{output}");
}

/// Names in any script, one spelling each (NFC); names that could deceive are refused.
#[test]
fn unicode_names_are_accepted_normalised_and_deceptive_ones_refused() {
    let mut net = Net::start();
    // Registered as typed with a combining accent (NFD): kept as NFC.
    net.seeder("he\u{301}llo", "udp")
        .file("a.txt", b"bonjour")
        .start();
    assert_eq!(names(&net.peers().run_json()), vec!["h\u{e9}llo"]);
    for spelling in ["h\u{e9}llo", "he\u{301}llo"] {
        let o = net.ls(spelling).run();
        assert!(o.status.success(), "{spelling:?}: {}", stderr(&o));
        assert!(
            stdout(&o).contains("ID: 001 -> share/a.txt"),
            "{}",
            stdout(&o)
        );
    }
    for bad in ["p\u{430}ypal", "evil\u{202e}txt", "two words"] {
        let o = net.seeder(bad, "udp").run();
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("choose another --name"),
            "{}",
            stderr(&o)
        );
    }
}

/// A `--no-menu` seeder prints a line per upload: who fetches which file, and how it ended.
#[test]
fn a_seeder_prints_a_line_per_upload() {
    let mut net = Net::start();
    net.seeder("seeder", "udp")
        .file("song.ogg", &random_bytes(300_000, 5))
        .start();
    let out = net.path("out");
    let report = net.get("seeder", "001").out(&out).run_json();
    assert_eq!(report["size"], 300_000);
    // Time to the first byte, from the command's start (tracker, entry, piece table).
    assert!(report["first_byte_ms"].is_u64(), "{report}");
    let seeder = net.peer("seeder");
    let started = seeder.wait_for("upload: sending song.ogg (293.0 KiB) to 127.0.0.1:");
    let done = seeder.wait_for("upload: sent song.ogg to 127.0.0.1:");
    assert!(done.contains("293.0 KiB in "), "{started}\n{done}");
}
