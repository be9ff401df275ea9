//! Sealed sessions with the real binary on 127.0.0.1: `p2p get --secure` from a peer started
//! with `--secure-only` gets the exact bytes over a session that proved the key the tracker
//! binds the peer's name to (IK), over UDP and TCP; a plain `get` from that peer fails at
//! once, saying what to do; `get --secure` from a peer with `--no-secure` fails saying that
//! peer does not accept sealed sessions; a peer started with no flag serves both kinds of
//! client.

mod common;

use common::*;

/// The identity key fingerprint a `--secure` peer printed (`..., proving identity key FP`).
fn proved_key(line: &str) -> String {
    line.rsplit(' ').next().unwrap().to_string()
}

/// The fingerprint a `get --secure` printed on stderr for the session it made.
fn sealed_key(err: &str) -> String {
    let line = err
        .lines()
        .find(|l| l.contains("sealed session with"))
        .unwrap_or_else(|| panic!("no sealed session reported: {err}"));
    let after = line.split("identity key ").nth(1).unwrap();
    after.split_whitespace().next().unwrap().to_string()
}

fn secure_get_is_exact(transport: &str) {
    let mut net = Net::start();
    let bytes = random_bytes(3 << 20, 7);
    let seeder = net
        .seeder("alice", transport)
        .file("a.bin", &bytes)
        .args(&["--secure-only"])
        .start();
    let key = proved_key(&seeder.wait_for("sealed sessions only, proving identity key"));
    // Exact bytes, reported sealed.
    let report = net
        .get("alice", "1")
        .transport(transport)
        .out("out")
        .arg("--secure")
        .run_json();
    assert_eq!(report["sealed"], true, "{report}");
    assert_eq!(report["verified"], true, "{report}");
    assert!(std::fs::read(net.path("out/a.bin")).unwrap() == net.bytes("a.bin"));
    // The session proved the peer's own key, the one the tracker binds `alice` to.
    let out = net
        .get("alice", "1")
        .transport(transport)
        .out("out2")
        .arg("--secure")
        .run();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(sealed_key(&err), key, "{err}");
    assert!(
        err.contains("the key the tracker binds its name to"),
        "{err}"
    );
    assert!(std::fs::read(net.path("out2/a.bin")).unwrap() == net.bytes("a.bin"));
}

#[test]
fn a_secure_get_from_a_sealed_only_peer_is_exact_udp() {
    secure_get_is_exact("udp");
}

#[test]
fn a_secure_get_from_a_sealed_only_peer_is_exact_tcp() {
    secure_get_is_exact("tcp");
}

#[test]
fn a_plain_get_from_a_sealed_only_peer_fails_clearly() {
    let mut net = Net::start();
    net.seeder("alice", "udp")
        .file("a.bin", &random_bytes(10_000, 8))
        .args(&["--secure-only"])
        .start();
    let out = net.get("alice", "1").out("out").run();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("peer `alice` accepts sealed sessions only: add --secure"),
        "{err}"
    );
    assert!(!net.path("out/a.bin").exists());
    // For scripts: the kind.
    let out = net.get("alice", "1").out("out").json().run();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "secure", "{v}");
    // `ls` says the same.
    let out = net.ls("alice").run();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("accepts sealed sessions only"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_secure_get_from_a_plain_peer_fails_clearly() {
    let mut net = Net::start();
    net.seeder("bob", "udp")
        .file("b.bin", &random_bytes(10_000, 9))
        .args(&["--no-secure"])
        .start();
    let out = net.get("bob", "1").out("out").arg("--secure").run();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("peer `bob` does not accept sealed sessions (it runs with --no-secure"),
        "{err}"
    );
    assert!(!net.path("out/b.bin").exists());
}

/// A peer started with no flag accepts sealed sessions (the default) and serves plaintext
/// clients too.
#[test]
fn a_default_peer_serves_sealed_and_plain_clients() {
    let mut net = Net::start();
    net.seeder("carol", "udp")
        .file("c.bin", &random_bytes(200_000, 10))
        .start()
        .wait_for("sealed sessions accepted (plaintext too), proving identity key");
    let sealed = net
        .get("carol", "1")
        .out("sealed")
        .arg("--secure")
        .run_json();
    assert_eq!(sealed["sealed"], true, "{sealed}");
    let plain = net.get("carol", "1").out("plain").run_json();
    assert_eq!(plain["sealed"], false, "{plain}");
    for dir in ["sealed", "plain"] {
        let got = std::fs::read(net.path(format!("{dir}/c.bin"))).unwrap();
        assert!(got == net.bytes("c.bin"), "{dir}");
    }
}

/// The key a `p2p tracker --secure` printed (`... tracker key HEX (clients: ...)`).
fn tracker_key(net: &mut Net) -> String {
    let line = net
        .tracker()
        .wait_for("sealed sessions accepted: tracker key");
    let key = line.split("tracker key ").nth(1).unwrap();
    key.split_whitespace().next().unwrap().to_string()
}

/// `p2p tracker --secure` and `--tracker-key` on a peer and on `get`, `ls` and `peers`: the
/// peer registers and the clients find it in sealed sessions (over UDP and TCP), and the
/// download is exact.
#[test]
fn a_secure_tracker_serves_clients_that_know_its_key() {
    for transport in ["udp", "tcp"] {
        let mut net = Net::start_with(&["--secure"]);
        let key = tracker_key(&mut net);
        let bytes = random_bytes(100_000, 9);
        net.seeder("alice", transport)
            .file("a.bin", &bytes)
            .args(&["--tracker-key", &key])
            .start();
        let report = net
            .get("alice", "1")
            .transport(transport)
            .out("out")
            .args(&["--tracker-key", &key])
            .run_json();
        assert_eq!(report["verified"], true, "{report}");
        assert!(std::fs::read(net.path("out/a.bin")).unwrap() == bytes);
        let out = net.peers().args(&["--tracker-key", &key]).run();
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("alice"));
        let out = net.ls("alice").args(&["--tracker-key", &key]).run();
        assert!(out.status.success(), "{}", stderr(&out));
        // Plaintext clients are still served.
        assert!(net.ls("alice").run().status.success());
    }
}

/// A key that is not the tracker's is refused naming both keys; a tracker without --secure
/// is said to be one; a key that is no key is a usage error.
#[test]
fn a_wrong_tracker_key_fails_clearly() {
    let mut net = Net::start_with(&["--secure"]);
    let key = tracker_key(&mut net);
    let other: String = p2p_proto::identity::Identity::from_secret([7; 32])
        .public()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let out = net.peers().args(&["--tracker-key", &other]).run();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "proves the key {key} where --tracker-key names {other}"
        )),
        "{err}"
    );
    let out = net.peers().args(&["--tracker-key", "abc"]).run();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("64 hex digits"), "{}", stderr(&out));
    // From the config file, as from the flag; the flag wins.
    let config = net.path(".xdg-config/p2p");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.toml"),
        format!("tracker-key = \"{other}\"\n"),
    )
    .unwrap();
    let out = net.peers().run();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("where --tracker-key names {other}")));
    assert!(net
        .peers()
        .args(&["--tracker-key", &key])
        .run()
        .status
        .success());
    let plain = Net::start();
    let out = plain.peers().args(&["--tracker-key", &key]).run();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("does not answer a sealed session: is it running with --secure?"),
        "{err}"
    );
}

/// `get NAME ID --secure` takes the other holders of the content too, each in a sealed
/// session of its own, and leaves out a holder that does not accept sealed sessions: the
/// bytes are exact, the sealed holders each sent some, the plain one none.
#[test]
fn a_secure_get_takes_every_sealed_holder_and_no_plain_one() {
    let mut net = Net::start();
    let bytes = random_bytes(8 << 20, 10);
    // Capped, so that one source cannot finish before the other starts.
    let capped = ["--max-upload-rate", "2MiB"];
    for (name, extra) in [
        ("alice", "--secure-only"),
        ("bob", "--secure-only"),
        ("carol", "--no-secure"),
    ] {
        let mut args = capped.to_vec();
        if !extra.is_empty() {
            args.push(extra);
        }
        net.seeder(name, "udp")
            .share(&format!("share-{name}"))
            .file("a.bin", &bytes)
            .args(&args)
            .start();
    }
    let report = net.get("alice", "1").out("out").arg("--secure").run_json();
    assert_eq!(report["sealed"], true, "{report}");
    assert!(std::fs::read(net.path("out/a.bin")).unwrap() == bytes);
    let sent: Vec<(String, u64)> = report["sources"]
        .as_array()
        .unwrap_or_else(|| panic!("a single source: {report}"))
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    let of = |n: &str| sent.iter().find(|(name, _)| name == n).map_or(0, |s| s.1);
    assert!(of("alice") > 0 && of("bob") > 0, "{sent:?}");
    assert_eq!(of("carol"), 0, "{sent:?}");
}

/// A sharer that talks to its tracker sealed (`--tracker-key`) prints `p2p3` tickets, which
/// carry the tracker's key: `get TICKET`, given no key, talks to that tracker sealed under
/// it and gets the exact file; the same ticket with another key in it is refused, naming
/// both keys (the key in the ticket is what the tracker must prove).
#[test]
fn a_ticket_carries_the_trackers_key() {
    let mut net = Net::start_with(&["--secure"]);
    let key = tracker_key(&mut net);
    let bytes = random_bytes(150_000, 12);
    std::fs::create_dir_all(net.path("to-share")).unwrap();
    write_file(&net.path("to-share"), "t.bin", &bytes);
    let folder = net.path("to-share/t.bin");
    let mut sharer = net
        .cmd(&[
            "share",
            folder.to_str().unwrap(),
            "--name",
            "tina",
            "--listen",
            "127.0.0.1:0",
            "--tracker-key",
            &key,
        ])
        .spawn();
    let line = sharer.wait_for("p2p get p2p");
    let ticket = line.split_whitespace().last().unwrap().to_string();
    assert!(ticket.starts_with("p2p3"), "{line}");
    let report = net.cmd(&["get", &ticket]).out("out").run_json();
    assert_eq!(report["verified"], true, "{report}");
    assert!(std::fs::read(net.path("out/t.bin")).unwrap() == bytes);

    // The tracker's key is the ticket's last 32 bytes: put another one there.
    let mut raw = data_encoding::BASE32_NOPAD
        .decode(ticket[4..].to_ascii_uppercase().as_bytes())
        .unwrap();
    let n = raw.len();
    let other = p2p_proto::identity::Identity::from_secret([8; 32]).public();
    raw[n - 32..].copy_from_slice(&other);
    let forged = format!(
        "p2p3{}",
        data_encoding::BASE32_NOPAD
            .encode(&raw)
            .to_ascii_lowercase()
    );
    let out = net.cmd(&["get", &forged]).out("forged").run();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let other: String = other.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        err.contains(&format!(
            "proves the key {key} where the ticket names {other}"
        )),
        "{err}"
    );
    assert!(!net.path("forged/t.bin").exists());
}
