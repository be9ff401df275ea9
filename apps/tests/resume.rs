//! Nothing lost: interrupted downloads resume from their verified prefix, on real sockets with
//! the real binary. The seeding peer's `--max-upload-rate` keeps a transfer in flight long
//! enough to interrupt it, and `get --json` reports each recorded checkpoint on stderr, so the
//! tests act on what the processes report, never on timing guesses.

mod common;

use std::fs;
use std::path::Path;

use common::*;

const MIB: usize = 1024 * 1024;

#[test]
fn killed_receiver_resumes_without_fetching_the_whole_file_again() {
    let size = 60 * MIB + 123;
    let mut net = Net::start();
    net.seeder("seed", "udp")
        .file("big.bin", &random_bytes(size, 1))
        .args(&["--max-upload-rate", "20MiB"])
        .start();
    let get = net.get("seed", "1").out("out").json();

    let mut first = get.spawn();
    let kept = first.wait_checkpoint((size / 2) as u64);
    first.kill(); // SIGKILL: no chance to clean up
    let out = net.path("out");
    assert!(hidden(&out, "big.bin", ".p2p-part").exists());
    assert!(hidden(&out, "big.bin", ".p2p-state").exists());
    assert!(
        !out.join("big.bin").exists(),
        "nothing under the final name before it is verified"
    );

    let report = get.run_json();
    let resumed = report["resumed_from"].as_u64().unwrap();
    let received = report["received"].as_u64().unwrap();
    // A resume is not a refetch: no piece failed its hash check.
    assert_eq!(report["refetched"].as_u64(), Some(0), "{report}");
    assert!(
        resumed >= kept,
        "resumed at {resumed}, a checkpoint of {kept} was recorded"
    );
    assert_eq!(resumed + received, size as u64);
    assert!(
        received < size as u64 / 2,
        "fetched {received} of {size} again"
    );
    assert!(fs::read(out.join("big.bin")).unwrap() == net.bytes("big.bin"));
    assert!(!hidden(&out, "big.bin", ".p2p-part").exists());
    assert!(!hidden(&out, "big.bin", ".p2p-state").exists());
}

#[test]
fn killed_sender_leaves_a_partial_that_a_second_seeder_completes() {
    let size = 24 * MIB + 5;
    let content = random_bytes(size, 2);
    let mut net = Net::start();
    net.seeder("a", "udp")
        .share("a")
        .file("movie.bin", &content)
        .args(&["--max-upload-rate", "8MiB"])
        .start();
    let mut getter = net
        .get("a", "1")
        .out("out")
        .json()
        .args(&["--idle-timeout", "2s"])
        .spawn();
    let kept = getter.wait_checkpoint((size / 3) as u64);
    net.peer("a").kill();
    // Byte counts read in human units; a stop with a part kept is exit 3, kind `incomplete`.
    let line = getter.wait_for("run the same download again to resume");
    assert!(line.contains(" MiB verified kept in "), "{line}");
    let (status, output) = getter.wait_output();
    assert_eq!(status.code(), Some(3), "{output}");
    assert!(output.contains(r#""kind":"incomplete""#), "{output}");
    let out = net.path("out");
    assert!(!out.join("movie.bin").exists());

    net.seeder("b", "tcp")
        .share("b")
        .file("movie.bin", &content)
        .start();
    let report = net.get("b", "1").out("out").run_json();
    assert!(report["resumed_from"].as_u64().unwrap() >= kept);
    assert!(report["received"].as_u64().unwrap() < (size as u64) * 2 / 3);
    assert!(fs::read(out.join("movie.bin")).unwrap() == content);
}

#[test]
fn changed_source_discards_the_stale_partial() {
    let size = 16 * MIB;
    let mut net = Net::start();
    // 2.7 s of transfer: the first checkpoint (at 1 s) is recorded well before the end, even
    // when other tests keep the disk busy (at 12 MiB/s, a slow fsync once let it finish first).
    net.seeder("seed", "udp")
        .file("doc.bin", &random_bytes(size, 3))
        .args(&["--max-upload-rate", "6MiB"])
        .start();
    let mut first = net.get("seed", "1").out("out").json().spawn();
    first.wait_checkpoint(1);
    first.kill();
    // The source changes: the next listing has a new size and hash.
    net.rewrite("seed", "doc.bin", &random_bytes(size + 1000, 4));
    let o = net.get("seed", "1").out("out").run();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("stale partial download discarded"),
        "{}",
        stderr(&o)
    );
    assert!(fs::read(net.path("out/doc.bin")).unwrap() == net.bytes("doc.bin"));
}

#[test]
fn file_changing_on_the_sender_aborts_with_a_reason() {
    let size = 16 * MIB;
    let mut net = Net::start();
    net.seeder("seed", "tcp")
        .file("live.log", &random_bytes(size, 5))
        .args(&["--max-upload-rate", "8MiB"])
        .start();
    let mut getter = net.get("seed", "1").out("out").json().spawn();
    getter.wait_checkpoint(1);
    // Rewrite the file in place while it is being sent. The sender notices (it checks the
    // file's size and mtime every 100 ms) and aborts with "file changed on the sender"; if
    // changed bytes were read before that, the receiver's piece check catches them first
    // ("... changed on the sender"). Either way: a reason, and no file.
    net.rewrite("seed", "live.log", &random_bytes(size, 6));
    getter.wait_for("changed on the sender");
    assert!(!getter.wait_exit().success());
    assert!(
        !net.path("out/live.log").exists(),
        "never a mixed file under the final name"
    );
}

/// A small tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Tmpfs(path.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_gives_a_clear_error_and_keeps_the_verified_part() {
    let mut net = Net::start();
    let Some(disk) = Tmpfs::mount(&net.path("small"), "6m") else {
        eprintln!("SKIPPED full_disk test: cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)");
        return;
    };
    let size = 10 * MIB;
    net.seeder("seed", "udp")
        .file("fat.bin", &random_bytes(size, 7))
        .start();
    let get = |extra: &[&str]| net.get("seed", "1").out(&disk.0).args(extra).run();
    // By default the whole file's space is reserved first: the download fails at once,
    // naming the room it needs, and leaves nothing behind.
    let o = get(&[]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("not enough disk space in") && err.contains("for the 10.0 MiB left"),
        "{err}"
    );
    assert!(err.contains("free some space"), "{err}");
    let left: Vec<_> = fs::read_dir(&disk.0).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    // Without the reservation, the disk fills during the download: the verified part stays.
    let o = get(&["--no-preallocate"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("MiB verified kept"), "{err}");
    assert!(!disk.0.join("fat.bin").exists());

    disk.resize("32m");
    let o = get(&["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(report["resumed_from"].as_u64().unwrap() > 0, "{report}");
    assert!(fs::read(disk.0.join("fat.bin")).unwrap() == net.bytes("fat.bin"));
}

/// Ctrl-C (SIGINT) stops a get cleanly: exit 3, a message that says it was interrupted,
/// how much verified data was kept and how to resume (not "peer shutting down"), the kept
/// part on disk, and the next get resumes from it.
#[test]
fn an_interrupted_get_says_so_and_resumes() {
    let size = 40 * MIB + 7;
    let mut net = Net::start();
    net.seeder("seed", "udp")
        .file("big.bin", &random_bytes(size, 9))
        .args(&["--max-upload-rate", "10MiB"])
        .start();
    let get = net.get("seed", "1").out("out").json();
    let mut first = get.spawn();
    first.wait_checkpoint(1);
    first.interrupt();
    let (status, output) = first.wait_output();
    assert_eq!(status.code(), Some(3), "{output}");
    assert!(output.contains(r#""kind":"interrupted""#), "{output}");
    assert!(
        output.contains("interrupted:") && output.contains("run the same get again to resume"),
        "{output}"
    );
    assert!(!output.contains("shutting down"), "{output}");
    let out = net.path("out");
    assert!(hidden(&out, "big.bin", ".p2p-part").exists());
    let report = get.run_json();
    assert!(report["resumed_from"].as_u64().unwrap() > 0, "{report}");
    assert!(fs::read(out.join("big.bin")).unwrap() == net.bytes("big.bin"));
}
