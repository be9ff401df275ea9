//! Reaching a tracker as people write its address: host names, `[IPv6]:PORT`, the clear
//! errors for names that do not resolve and ports that are missing; defaults from `P2P_*`
//! variables and the config file (flag > env > file > default), `p2p config`; downloads over
//! `[::1]` on UDP and TCP. The real `p2p` binary, on 127.0.0.1 and ::1 only.
//!
//! Every command whose settings matter here runs with `XDG_CONFIG_HOME` in a temporary folder
//! and without inherited `P2P_*` variables: the real home's config file is never read.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use p2p_proto::wire::{decode, paginate, BoundedVec, Message, PeerInfo, RequestId, TransportKind};
use p2p_proto::wire::{CONTROL_BUDGET, MAX_NAME_LEN};

/// A `p2p` command line with a controlled environment: `XDG_CONFIG_HOME` is `dir/xdg` (so the
/// config file is `dir/xdg/p2p/config.toml`), no inherited `P2P_*`, plus `env`.
fn isolated(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = command(dir);
    cmd.args(args);
    cmd.env("XDG_CONFIG_HOME", dir.join("xdg"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs [`isolated`] to completion; kills it and panics past [`DEADLINE`].
/// A long-running [`isolated`] process whose output lines are read as they come.
fn env_proc(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
    Proc::spawn_command(isolated(dir, args, env))
}

fn run_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    run_command(isolated(dir, args, env), args)
}

/// The config file the commands of [`isolated`] read, written with `text`.
fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("xdg/p2p/config.toml");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, text).unwrap();
    path
}

/// The names in a `peers --json` listing.
fn names(peers: &serde_json::Value) -> Vec<String> {
    let peers = peers.as_array().expect("a JSON array");
    peers
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

fn port_of(addr: &str) -> u16 {
    addr.parse::<SocketAddr>().expect("an address").port()
}

/// A tracker and a UDP seeder `alice` sharing `a.bin`.
fn alice() -> Net {
    let mut net = Net::start();
    net.seeder("alice", "udp")
        .file("a.bin", &random_bytes(70_000, 23))
        .start();
    net
}

fn assert_usage_error(o: &Output, expected: &str) {
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(o));
    let err = stderr(o);
    assert!(err.contains(expected), "expected {expected:?} in: {err}");
}

#[test]
fn host_names_reach_the_tracker_for_peers_ls_and_get() {
    let net = alice();
    let by_name = format!("localhost:{}", port_of(net.addr()));

    let peers = net.peers().tracker(&by_name).run_json();
    assert_eq!(names(&peers), ["alice"]);
    let peers = net.peers().tracker(&by_name).transport("tcp").run_json();
    assert_eq!(names(&peers), ["alice"]);

    let index = net.ls("alice").tracker(&by_name).run_json();
    assert_eq!(index[0]["path"], "a.bin", "{index}");

    let report = net
        .get("alice", "1")
        .tracker(&by_name)
        .out("out")
        .run_json();
    assert_eq!(report["verified"], true, "{report}");
    assert!(fs::read(net.path("out/a.bin")).unwrap() == net.bytes("a.bin"));
}

#[test]
fn a_tracker_listens_on_a_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut tracker = Proc::spawn(dir.path(), &["tracker", "--listen", "localhost:0"]);
    let line = tracker.wait_for("tracker listening on");
    let addr: SocketAddr = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(addr.ip().is_loopback(), "{line}");
    assert_ne!(addr.port(), 0, "{line}");
}

#[test]
fn bad_host_names_and_missing_ports_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // `.invalid` never resolves (RFC 6761).
    let o = run_env(d, &["peers", "--tracker", "nosuch.invalid:9000"], &[]);
    assert_usage_error(
        &o,
        "error: --tracker `nosuch.invalid:9000`: cannot resolve the host name (",
    );
    assert_usage_error(
        &o,
        "check the name, or give an IP address such as 192.0.2.7:9000",
    );

    let o = run_env(d, &["ls", "alice", "--tracker", "localhost"], &[]);
    assert_usage_error(
        &o,
        "error: --tracker `localhost` has no port: add one, e.g. localhost:9000",
    );
    let o = run_env(d, &["get", "alice", "1", "--tracker", "[::1]"], &[]);
    assert_usage_error(
        &o,
        "--tracker `[::1]` has no port: add one, e.g. [::1]:9000",
    );
    let o = run_env(d, &["tracker", "--listen", "0.0.0.0"], &[]);
    assert_usage_error(
        &o,
        "--listen `0.0.0.0` has no port: add one, e.g. 0.0.0.0:9000",
    );
    let o = run_env(d, &["peer", "--listen", "udp://localhost:1"], &[]);
    assert_usage_error(&o, "--listen `udp://localhost:1`: give the address alone");

    // With --json, the same error is also one JSON object on stdout.
    let o = run_env(
        d,
        &["peers", "--json", "--tracker", "nosuch.invalid:9"],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "usage");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("--tracker `nosuch.invalid:9`: cannot resolve"),
        "{message}"
    );
}

#[test]
fn environment_and_config_file_set_the_tracker_and_flags_win() {
    let net = alice();
    let d = net.dir();
    let port = port_of(net.addr());
    let by_name = format!("localhost:{port}");
    let tracker = net.addr().to_string();
    let peers = |args: &[&str], env: &[(&str, &str)]| {
        let mut argv = vec!["peers", "--json"];
        argv.extend_from_slice(args);
        names(&json(&run_env(d, &argv, env)))
    };

    // P2P_TRACKER alone.
    assert_eq!(peers(&[], &[("P2P_TRACKER", &by_name)]), ["alice"]);
    // A flag wins: the variable is not even resolved.
    let unresolvable = ("P2P_TRACKER", "nosuch.invalid:9");
    assert_eq!(peers(&["--tracker", &tracker], &[unresolvable]), ["alice"]);

    // The config file alone.
    write_config(d, &format!("tracker = \"{by_name}\"\n"));
    assert_eq!(peers(&[], &[]), ["alice"]);
    // The environment wins over the file, a flag over both.
    write_config(d, "tracker = \"nosuch.invalid:9\"\n");
    assert_eq!(peers(&[], &[("P2P_TRACKER", &tracker)]), ["alice"]);
    assert_eq!(peers(&["--tracker", &tracker], &[]), ["alice"]);
    let o = run_env(d, &["peers"], &[]);
    assert_usage_error(
        &o,
        "line 1, key `tracker`: `nosuch.invalid:9`: cannot resolve",
    );

    // P2P_CONFIG names another file, which replaces the usual one.
    let other = net.path("elsewhere.toml");
    fs::write(
        &other,
        format!("tracker = \"{tracker}\"\ntransport = \"tcp\"\n"),
    )
    .unwrap();
    let via_other = [("P2P_CONFIG", other.to_str().unwrap())];
    assert_eq!(peers(&[], &via_other), ["alice"]);

    // `downloads` is where `get` saves.
    write_config(d, &format!("tracker = \"{tracker}\"\ndownloads = \"dl\"\n"));
    let o = run_env(d, &["get", "alice", "1"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "dl/a.bin");
    assert!(fs::read(net.path("dl/a.bin")).unwrap() == net.bytes("a.bin"));
    let o = run_env(
        d,
        &["get", "alice", "1", "--out", "o"],
        &[("P2P_DOWNLOADS", "e")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "o/a.bin");
}

#[test]
fn a_peer_takes_its_name_share_and_tracker_from_the_environment_and_the_file() {
    let net = alice();
    let d = net.dir();
    let share = net.path("carols");
    fs::create_dir_all(&share).unwrap();
    fs::write(share.join("c.txt"), b"from the config file\n").unwrap();
    let by_name = format!("localhost:{}", port_of(net.addr()));
    write_config(
        d,
        &format!(
            "# carol's defaults\nshare = \"{}\"\ntracker = \"{by_name}\"\n",
            share.display()
        ),
    );
    let mut carol = env_proc(
        d,
        &["peer", "--listen", "127.0.0.1:0", "--no-menu"],
        &[("P2P_NAME", "carol")],
    );
    let line = carol.wait_for("registered with");
    assert!(
        line.starts_with("peer carol listening on 127.0.0.1:"),
        "{line}"
    );
    assert!(
        line.contains(&format!("sharing {}", share.display())),
        "{line}"
    );
    assert!(
        line.ends_with(&format!("registered with {}", net.addr())),
        "{line}"
    );

    let index = net.ls("carol").run_json();
    assert_eq!(index[0]["path"], "c.txt", "{index}");
}

#[test]
fn config_shows_each_setting_and_where_it_comes_from() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = write_config(d, "# mine\nname = \"alice\"\ntransport = \"tcp\"\n");

    let o = run_env(d, &["config", "--path"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), file.display().to_string());
    let o = run_env(d, &["config", "--path"], &[("P2P_CONFIG", "/x/y.toml")]);
    assert_eq!(stdout(&o).trim(), "/x/y.toml");

    let env = [("P2P_TRACKER", "localhost:9100")];
    let args = ["config", "--json", "--share", "mine"];
    let v = json(&run_env(d, &args, &env));
    assert_eq!(v["file"]["path"], file.display().to_string());
    assert_eq!(v["file"]["exists"], true);
    let s = &v["settings"];
    assert_eq!(s["tracker"]["from"], "env", "{v}");
    assert_eq!(s["tracker"]["variable"], "P2P_TRACKER");
    assert_eq!(s["tracker"]["written"], "localhost:9100");
    let tracker: SocketAddr = s["tracker"]["value"].as_str().unwrap().parse().unwrap();
    assert!(tracker.ip().is_loopback() && tracker.port() == 9100, "{v}");
    assert_eq!(s["name"]["from"], "file");
    assert_eq!(s["name"]["line"], 2);
    assert_eq!(s["name"]["value"], "alice");
    assert_eq!(s["share"]["from"], "flag");
    assert_eq!(s["share"]["value"], "mine");
    assert_eq!(s["downloads"]["from"], "default");
    assert_eq!(s["downloads"]["value"], "./downloads");
    assert_eq!(s["transport"]["from"], "file");
    assert_eq!(s["transport"]["value"], "tcp");

    let text = stdout(&run_env(d, &["config", "--transport", "udp"], &env));
    let row = |key: &str| {
        let row = text.lines().find(|l| l.starts_with(key));
        row.unwrap_or_else(|| panic!("no {key} row in:\n{text}"))
            .to_string()
    };
    assert!(text.starts_with(&format!("config file: {} (read)", file.display())));
    assert!(row("tracker").contains("(localhost:9100)"), "{text}");
    assert!(row("tracker").ends_with("env P2P_TRACKER"), "{text}");
    assert!(row("name").ends_with("file, line 2"), "{text}");
    assert!(row("share").ends_with("default"), "{text}");
    assert!(row("transport").ends_with("flag --transport"), "{text}");

    // Without a file, every setting is the built-in default, and the name is unset.
    fs::remove_file(&file).unwrap();
    let v = json(&run_env(d, &["config", "--json"], &[]));
    assert_eq!(v["file"]["exists"], false);
    for key in ["tracker", "share", "downloads", "transport"] {
        assert_eq!(v["settings"][key]["from"], "default", "{key}: {v}");
    }
    assert_eq!(v["settings"]["tracker"]["value"], "127.0.0.1:9000");
    assert_eq!(v["settings"]["name"]["from"], "unset");
}

#[test]
fn a_bad_config_file_or_variable_is_a_usage_error_that_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = write_config(d, "name = \"alice\"\n\ntracker = 9000\n");
    let o = run_env(d, &["peers"], &[]);
    let place = format!("config file {}, line 3, key `tracker`: ", file.display());
    assert_usage_error(&o, &place);
    assert_usage_error(&o, "tracker = \"192.0.2.7:9000\"");
    // `--path` still says where the file is, to fix it.
    let o = run_env(d, &["config", "--path"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));

    write_config(d, "trackr = \"localhost:9000\"\n");
    let o = run_env(d, &["config"], &[]);
    assert_usage_error(
        &o,
        "line 1, key `trackr`: unknown key `trackr`; the keys are",
    );

    fs::remove_file(&file).unwrap();
    let o = run_env(d, &["get", "a", "1"], &[("P2P_TRANSPORT", "quic")]);
    assert_usage_error(
        &o,
        "P2P_TRANSPORT `quic` is not a transport: use udp or tcp",
    );
    let o = run_env(d, &["peers"], &[("P2P_TRACKER", "localhost")]);
    assert_usage_error(&o, "P2P_TRACKER `localhost` has no port");
    let o = run_env(d, &["peers"], &[("P2P_CONFIG", "/nonexistent/p2p.toml")]);
    assert_usage_error(
        &o,
        "P2P_CONFIG names /nonexistent/p2p.toml, which does not exist",
    );
    // Commands without these settings read neither.
    let o = run_env(d, &["man", "config"], &[("P2P_TRACKER", "localhost")]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Whether this machine can bind ::1 (an IPv6 loopback), for UDP and TCP.
fn ipv6_loopback() -> bool {
    let udp = std::net::UdpSocket::bind("[::1]:0");
    let tcp = std::net::TcpListener::bind("[::1]:0");
    udp.is_ok() && tcp.is_ok()
}

#[test]
fn downloads_over_ipv6_are_byte_exact_on_udp_and_tcp() {
    if !ipv6_loopback() {
        eprintln!("skipped: ::1 cannot be bound on this machine");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut tracker = Proc::spawn(d, &["tracker", "--listen", "[::1]:0"]);
    let line = tracker.wait_for("tracker listening on");
    let addr = line.split_whitespace().nth(3).unwrap().to_string();
    assert!(addr.starts_with("[::1]:"), "{line}");

    let share = d.join("share");
    fs::create_dir_all(&share).unwrap();
    let bytes = random_bytes(3 * 1024 * 1024 + 17, 6);
    fs::write(share.join("six.bin"), &bytes).unwrap();
    let mut seeders = Vec::new();
    for transport in ["udp", "tcp"] {
        let name = format!("six-{transport}");
        // The UDP seeder listens on every interface (`--port`): in the tracker's family,
        // `[::]`, dual-stack.
        let (flag, value) = match transport {
            "udp" => ("--port", "0"),
            _ => ("--listen", "[::1]:0"),
        };
        let mut p = Proc::spawn(
            d,
            &[
                "peer",
                "--name",
                &name,
                flag,
                value,
                "--tracker",
                &addr,
                "--share",
                "share",
                "--downloads",
                "dl",
                "--transport",
                transport,
                "--no-menu",
            ],
        );
        p.wait_for("registered with");
        tracker.wait_for(&format!("registered {name} at [::1]:"));
        seeders.push(p);
    }

    // The tracker's list carries the IPv6 addresses, over either transport.
    for via in ["udp", "tcp"] {
        let o = run(
            d,
            &["peers", "--json", "--tracker", &addr, "--transport", via],
        );
        let peers = json(&o);
        assert_eq!(names(&peers), ["six-tcp", "six-udp"]);
        for p in peers.as_array().unwrap() {
            let a: SocketAddr = p["addr"].as_str().unwrap().parse().unwrap();
            assert_eq!(a.ip(), "::1".parse::<std::net::IpAddr>().unwrap(), "{p}");
        }
    }
    for transport in ["udp", "tcp"] {
        let name = format!("six-{transport}");
        // Asked over UDP, the TCP seeder is reached over TCP (and the reverse).
        let index = json(&run(d, &["ls", &name, "--json", "--tracker", &addr]));
        assert_eq!(index[0]["path"], "six.bin", "{index}");
        let out = format!("out-{transport}");
        let o = run(
            d,
            &[
                "get",
                &name,
                "1",
                "--json",
                "--tracker",
                &addr,
                "--out",
                &out,
            ],
        );
        let report = json(&o);
        assert_eq!(report["verified"], true, "{report}");
        let got = fs::read(d.join(&out).join("six.bin")).unwrap();
        assert!(got == bytes, "six.bin differs over {transport} on ::1");
    }
}

/// The tracker's answer carries IPv6 addresses exactly, beside IPv4 ones, and a page of the
/// longest IPv6 entries still fits one control message.
#[test]
fn tracker_messages_carry_ipv6_addresses() {
    let addrs = [
        "[::1]:9000",
        "192.0.2.7:9000",
        "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
        "[::ffff:192.0.2.8]:1",
        "[fe80::1]:10001",
    ];
    let peers: Vec<PeerInfo> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| PeerInfo {
            name: format!("p{i}").into(),
            addr: a.parse().unwrap(),
            transport: TransportKind::Udp,
        })
        .collect();
    let msg = Message::PeerList {
        request: RequestId(7),
        page: 0,
        pages: 1,
        peers: BoundedVec(peers),
    };
    assert_eq!(decode(&msg.encode()).unwrap(), msg);

    let longest: Vec<PeerInfo> = (0..500)
        .map(|i| PeerInfo {
            name: format!("{i:0>width$}", width = MAX_NAME_LEN).into(),
            addr: format!("[2001:db8:ffff:ffff:ffff:ffff:ffff:{i:x}]:65535")
                .parse()
                .unwrap(),
            transport: TransportKind::Tcp,
        })
        .collect();
    let pages = paginate(longest.clone());
    let n = pages.len() as u32;
    let mut back = Vec::new();
    for (i, page) in pages.into_iter().enumerate() {
        let msg = Message::PeerList {
            request: RequestId(u64::MAX),
            page: i as u32,
            pages: n,
            peers: BoundedVec(page),
        };
        let bytes = msg.encode();
        assert!(
            bytes.len() <= CONTROL_BUDGET,
            "page {i}: {} bytes",
            bytes.len()
        );
        match decode(&bytes).unwrap() {
            Message::PeerList { peers, .. } => back.extend(peers.0),
            other => panic!("decoded {other:?}"),
        }
    }
    assert_eq!(back, longest);
}

/// A peer listening on one address of a host with several (here 127.0.0.7 of the loopback's
/// 127/8, the tracker on 127.0.0.1) is listed at that address, not at another of the
/// machine's, and serves from it: over UDP and over TCP, whose registration comes from a
/// connection of its own (issue 20: "on a multi-homed host the TCP registration must not
/// take the connection's source address blindly").
#[test]
fn a_peer_on_one_address_of_many_is_listed_and_reached_there() {
    for transport in ["udp", "tcp"] {
        let net = Net::start();
        let bytes = random_bytes(300_000, 7);
        let share = net.path("share-multi");
        fs::create_dir_all(&share).unwrap();
        fs::write(share.join("f.bin"), &bytes).unwrap();
        let mut peer = Proc::spawn(
            net.dir(),
            &[
                "peer",
                "--name",
                "multi",
                "--listen",
                "127.0.0.7:0",
                "--tracker",
                net.addr(),
                "--share",
                share.to_str().unwrap(),
                "--transport",
                transport,
                "--no-menu",
            ],
        );
        peer.wait_for("registered with");
        let listed = net.peers().transport(transport).run_json();
        let addr = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "multi")
            .map(|p| p["addr"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{transport}: multi not listed: {listed}"));
        assert!(
            addr.starts_with("127.0.0.7:"),
            "{transport}: listed at {addr}"
        );
        let report = net
            .get("multi", "001")
            .transport(transport)
            .out("out")
            .run_json();
        assert_eq!(
            std::fs::read(net.path("out").join("f.bin")).unwrap(),
            bytes,
            "{transport}: {report}"
        );
    }
}
