//! The real `p2p` binary on 127.0.0.1: tracker + peers as processes, over UDP and TCP.

mod common;

use std::fs;

use common::*;

/// Chunk of a UDP seeder on loopback (60 KiB datagrams), and with 1,452-byte datagrams.
const UDP_CHUNK: usize = p2p_transports::LOOPBACK_UDP_MESSAGE - p2p_proto::wire::DATA_OVERHEAD;
const MTU_CHUNK: usize = 1452 - p2p_proto::wire::DATA_OVERHEAD;
/// TCP payload per chunk.
const TCP_CHUNK: usize = 64 * 1024;

fn json(o: &std::process::Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

fn transfers_every_edge_size(transport: &str, chunk: usize, seeder_args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    fs::create_dir(&share).unwrap();
    let sizes = [0, 1, chunk, chunk + 1, 20 * 1024 * 1024 + 7];
    for (i, size) in sizes.iter().enumerate() {
        write_file(
            &share,
            &format!("f{i}-{size}.bin"),
            &random_bytes(*size, i as u64),
        );
    }
    let (_t, tr) = tracker(dir.path(), &[]);
    let _seeder = peer(dir.path(), "seeder", &tr, &share, transport, seeder_args);
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let _other = peer(dir.path(), "other", &tr, &empty, transport, &[]);

    let peers = json(&run(
        dir.path(),
        &[
            "peers",
            "--tracker",
            &tr,
            "--transport",
            transport,
            "--json",
        ],
    ));
    let names: Vec<&str> = peers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["other", "seeder"]);
    assert!(peers
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["transport"] == transport));

    let index = json(&run(
        dir.path(),
        &[
            "ls",
            "seeder",
            "--tracker",
            &tr,
            "--transport",
            transport,
            "--json",
        ],
    ));
    let index = index.as_array().unwrap();
    assert_eq!(index.len(), sizes.len());
    for (i, (entry, size)) in index.iter().zip(sizes).enumerate() {
        assert_eq!(entry["id"], format!("{:03}", i + 1));
        assert_eq!(entry["size"], size as u64);
    }
    // The plain listing keeps the original program's format.
    let plain = stdout(&run(
        dir.path(),
        &["ls", "seeder", "--tracker", &tr, "--transport", transport],
    ));
    assert!(plain.contains("ID: 001 -> share/f0-0.bin"), "{plain}");

    let out = dir.path().join("out");
    for (i, size) in sizes.iter().enumerate() {
        let id = format!("{:03}", i + 1);
        let mut args = vec![
            "get",
            "seeder",
            &id,
            "--tracker",
            &tr,
            "--transport",
            transport,
            "--out",
            out.to_str().unwrap(),
            "--json",
        ];
        // Every other file without fsync: the same bytes, the same clean-up.
        if i % 2 == 1 {
            args.push("--no-fsync");
        }
        let o = run(dir.path(), &args);
        let report = json(&o);
        let name = format!("f{i}-{size}.bin");
        assert_eq!(report["path"], out.join(&name).display().to_string());
        assert_eq!(report["size"], *size as u64);
        let got = fs::read(out.join(&name)).unwrap();
        assert!(
            got == fs::read(share.join(&name)).unwrap(),
            "{name} differs over {transport}"
        );
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
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    fs::create_dir(&share).unwrap();
    write_file(&share, "x.bin", &random_bytes(100_000, 9));
    let (_t, tr) = tracker(dir.path(), &[]);
    let _seeder = peer(dir.path(), "tcp-seeder", &tr, &share, "tcp", &[]);
    // The tracker is asked over UDP; the peer is reached over TCP.
    let o = run(
        dir.path(),
        &[
            "get",
            "tcp-seeder",
            "1",
            "--tracker",
            &tr,
            "--transport",
            "udp",
            "--out",
            "out",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "out/x.bin");
    assert_eq!(
        fs::read(dir.path().join("out/x.bin")).unwrap(),
        fs::read(share.join("x.bin")).unwrap()
    );
}

#[test]
fn interactive_menu_lists_downloads_refreshes_and_quits() {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    fs::create_dir(&share).unwrap();
    write_file(&share, "file1.txt", b"menu test\n");
    let mine = dir.path().join("mine");
    fs::create_dir(&mine).unwrap();
    let (_t, tr) = tracker(dir.path(), &[]);
    let _seeder = peer(dir.path(), "alice", &tr, &share, "udp", &[]);

    let mut menu = Proc::spawn(
        dir.path(),
        &[
            "peer",
            "--tracker",
            &tr,
            "--share",
            mine.to_str().unwrap(),
            "--downloads",
            "dl",
        ],
    );
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
    assert_eq!(
        fs::read(dir.path().join("dl/file1.txt")).unwrap(),
        b"menu test\n"
    );
    menu.send("what");
    menu.wait_for("Unknown command");
    menu.send("r");
    menu.wait_for("  - bob");
    menu.send("q");
    menu.wait_for("Leaving system. Goodbye!");
    assert!(menu.wait_exit().success());
    // bob unregistered on the way out.
    let peers = json(&run(dir.path(), &["peers", "--tracker", &tr, "--json"]));
    assert_eq!(peers.as_array().unwrap().len(), 1);
}

#[test]
fn live_name_from_another_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_t, tr) = tracker(dir.path(), &[]);
    let _first = peer(dir.path(), "taken", &tr, dir.path(), "udp", &[]);
    let o = run(
        dir.path(),
        &[
            "peer",
            "--name",
            "taken",
            "--listen",
            "127.0.0.1:0",
            "--tracker",
            &tr,
            "--share",
            ".",
            "--no-menu",
        ],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("refused `taken`") && err.contains("already used"),
        "{err}"
    );
}

#[test]
fn killed_peer_expires_after_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let (mut t, tr) = tracker(dir.path(), &["--peer-ttl", "1s", "--heartbeat", "200ms"]);
    let mut victim = peer(dir.path(), "victim", &tr, dir.path(), "udp", &[]);
    let _stays = peer(dir.path(), "stays", &tr, dir.path(), "tcp", &[]);
    victim.kill(); // SIGKILL: no goodbye
    t.wait_for("expired victim");
    let peers = json(&run(dir.path(), &["peers", "--tracker", &tr, "--json"]));
    let names: Vec<&str> = peers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["stays"], "heartbeats keep the live one");
}

#[test]
fn sigterm_unregisters_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    let (mut t, tr) = tracker(dir.path(), &[]);
    let mut p = peer(dir.path(), "polite", &tr, dir.path(), "udp", &[]);
    p.terminate();
    t.wait_for("unregistered polite");
    assert!(p.wait_exit().success());
}

#[test]
fn sigterm_with_the_tracker_gone_leaves_without_waiting_out_the_retries() {
    let dir = tempfile::tempdir().unwrap();
    let (mut t, tr) = tracker(dir.path(), &[]);
    let mut p = peer(dir.path(), "orphan", &tr, dir.path(), "udp", &[]);
    t.kill();
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
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    fs::create_dir(&share).unwrap();
    write_file(&share, "a.txt", b"a");
    let (_t, tr) = tracker(dir.path(), &[]);
    let _p = peer(dir.path(), "p", &tr, &share, "udp", &[]);

    let o = run(dir.path(), &["get", "nobody", "1", "--tracker", &tr]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown peer `nobody`"),
        "{}",
        stderr(&o)
    );

    let o = run(dir.path(), &["get", "p", "42", "--tracker", &tr]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("has no file 042"), "{}", stderr(&o));

    // A port with nothing behind it (the tracker's own port over a different IP is not used).
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    for transport in ["udp", "tcp"] {
        let started = std::time::Instant::now();
        let o = run(
            dir.path(),
            &["peers", "--tracker", &dead_addr, "--transport", transport],
        );
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains("cannot reach the tracker"),
            "{}",
            stderr(&o)
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    let o = run(dir.path(), &["get", "p", "abc", "--tracker", &tr]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a file id"), "{}", stderr(&o));
}

#[test]
fn existing_different_file_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    fs::create_dir(&share).unwrap();
    write_file(&share, "a.txt", b"from the peer");
    let (_t, tr) = tracker(dir.path(), &[]);
    let _p = peer(dir.path(), "p", &tr, &share, "udp", &[]);
    fs::create_dir(dir.path().join("out")).unwrap();
    write_file(&dir.path().join("out"), "a.txt", b"mine, precious");
    let o = run(
        dir.path(),
        &["get", "p", "1", "--tracker", &tr, "--out", "out"],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("already exists with other content"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        fs::read(dir.path().join("out/a.txt")).unwrap(),
        b"mine, precious"
    );
    // Same content: nothing to do, success.
    write_file(&dir.path().join("out"), "a.txt", b"from the peer");
    let o = run(
        dir.path(),
        &["get", "p", "1", "--tracker", &tr, "--out", "out"],
    );
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
