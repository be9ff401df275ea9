//! Peer identities with the real binary on 127.0.0.1: a peer's name is bound at the tracker
//! to the identity key in the user's data folder (`identity.key`, made on first use, 0600),
//! so that a peer with another key cannot take it, even after its peer left, while the
//! key's holder registers it again at once.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// `p2p peer --name NAME` against `tracker`, sharing `share`, with the identity key file
/// `key` (`P2P_IDENTITY`).
fn peer_with_key(dir: &Path, tracker: &str, name: &str, share: &Path, key: &Path) -> Command {
    let mut cmd = command(dir);
    cmd.args([
        "peer",
        "--name",
        name,
        "--listen",
        "127.0.0.1:0",
        "--tracker",
        tracker,
    ])
    .arg("--share")
    .arg(share)
    .arg("--no-menu")
    .env("P2P_IDENTITY", key);
    cmd
}

#[test]
fn a_name_belongs_to_the_key_that_registered_it() {
    let net = Net::start();
    let (dir, addr) = (net.dir().to_path_buf(), net.addr().to_string());
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let (alice_key, mallory_key) = (dir.join("alice.key"), dir.join("mallory.key"));
    // Alice's first start makes her key, private to her, and registers.
    let mut alice = Proc::spawn_command(peer_with_key(&dir, &addr, "alice", &share, &alice_key));
    alice.wait_for("registered with");
    let text = std::fs::read_to_string(&alice_key).unwrap();
    assert_eq!(text.trim().len(), 64, "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&alice_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let refused = |what: &str| {
        let out = run_command(
            peer_with_key(&dir, &addr, "alice", &share, &mallory_key),
            &[],
        );
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "{what}: mallory registered alice: {err}"
        );
        assert!(err.contains("belongs to another peer"), "{what}: {err}");
    };
    refused("while alice runs");
    // `p2p config` shows where her key is and its fingerprint, the one the refusal names.
    let mut config = command(&dir);
    config
        .args(["config", "--json"])
        .env("P2P_IDENTITY", &alice_key);
    let shown = json(&run_command(config, &[]));
    assert_eq!(shown["identity"]["path"], alice_key.display().to_string());
    let fingerprint = shown["identity"]["key"]
        .as_str()
        .expect("a key")
        .to_string();
    let mut mallory = peer_with_key(&dir, &addr, "alice", &share, &mallory_key);
    mallory.stdin(std::process::Stdio::null());
    let err = stderr(&run_command(mallory, &[]));
    assert!(err.contains(&format!("(key {fingerprint})")), "{err}");
    // Alice leaves (she unregisters): the name stays hers.
    alice.interrupt();
    assert!(alice.wait_exit().success());
    refused("after alice left");
    // Alice, again with her key: registered at once.
    let mut again = Proc::spawn_command(peer_with_key(&dir, &addr, "alice", &share, &alice_key));
    again.wait_for("registered with");
    let listed = run(&dir, &["peers", "--tracker", &addr, "--json"]);
    assert!(stdout(&listed).contains("\"alice\""), "{}", stdout(&listed));
}

/// With `--bindings FILE`, a restarted tracker still knows whose names are whose: the
/// binding is written to the file within seconds, read back at the next start, and the name
/// is refused to another key there, while its own key registers at once. A file that cannot
/// be read stops the tracker with the reason.
#[test]
fn a_restarted_tracker_keeps_its_name_bindings() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let file = dir.join("bindings.txt");
    let file_arg = file.to_str().unwrap();
    let (alice_key, mallory_key) = (dir.join("alice.key"), dir.join("mallory.key"));
    let (mut first, addr) = tracker(dir, &["--bindings", file_arg]);
    first.wait_for("name bindings kept in");
    let mut alice = Proc::spawn_command(peer_with_key(dir, &addr, "alice", &share, &alice_key));
    alice.wait_for("registered with");
    // Written within BINDINGS_SAVE_EVERY (5 s) of the binding; bounded wait.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::fs::read_to_string(&file).is_ok_and(|t| t.contains(" alice\n")) {
        assert!(std::time::Instant::now() < deadline, "never saved");
        std::thread::sleep(std::time::Duration::from_millis(50)); // polling a file, not a sync
    }
    alice.kill();
    first.kill();
    // A new tracker (another port) with the same file: alice's name is still hers.
    let (mut second, addr) = tracker(dir, &["--bindings", file_arg]);
    let line = second.wait_for("name bindings kept in");
    assert!(line.contains("1 restored"), "{line}");
    let out = run_command(
        peer_with_key(dir, &addr, "alice", &share, &mallory_key),
        &[],
    );
    assert!(!out.status.success(), "mallory took alice after a restart");
    assert!(
        stderr(&out).contains("belongs to another peer"),
        "{}",
        stderr(&out)
    );
    let mut again = Proc::spawn_command(peer_with_key(dir, &addr, "alice", &share, &alice_key));
    again.wait_for("registered with");
    // A bindings path that cannot be read (a folder): the tracker says so and stops.
    let out = run(
        dir,
        &[
            "tracker",
            "--listen",
            "127.0.0.1:0",
            "--bindings",
            dir.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot read --bindings"),
        "{}",
        stderr(&out)
    );
}
