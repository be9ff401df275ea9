//! Replays the checked-in cargo-fuzz corpus (`fuzz/corpus/<target>/*`) through the matching
//! `p2p_proto::fuzzing` function, so `cargo test` exercises every seed and every input the
//! fuzzer kept, on stable and without libFuzzer.
//!
//! The hand-written seeds come from [`seeds`]; regenerate them with
//! `WRITE_FUZZ_SEEDS=1 cargo test -p p2p-core --test fuzz_corpus -- --ignored write_seed_corpus`.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use p2p_proto::fuzzing::{
    decode_target, receiver_run, receiver_target, registry_target, sample_messages, seal,
    sender_run, sender_target, RunSummary,
};
use p2p_proto::wire::HEADER_LEN;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 4] = [
    ("decode", decode_target),
    ("receiver", receiver_target),
    ("sender", sender_target),
    ("registry", registry_target),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// Runs every file of `target`'s corpus, reporting all failing files at once.
fn replay(target: &str, run: Target) {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} unreadable: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let bytes = fs::read(path).expect("corpus file readable");
            catch_unwind(AssertUnwindSafe(|| run(&bytes))).is_err()
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} `{target}` corpus files fail: {failed:#?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn decode_corpus_replays() {
    replay("decode", decode_target);
}

#[test]
fn receiver_corpus_replays() {
    replay("receiver", receiver_target);
}

#[test]
fn sender_corpus_replays() {
    replay("sender", sender_target);
}

#[test]
fn registry_corpus_replays() {
    replay("registry", registry_target);
}

#[test]
fn seeds_pass_their_targets() {
    for (target, run) in TARGETS {
        for (name, bytes) in seeds(target) {
            let ok = catch_unwind(AssertUnwindSafe(|| run(&bytes))).is_ok();
            assert!(ok, "seed {target}/{name} fails");
        }
    }
}

/// The transfer seeds reach the end they were written for, so the op languages stay wired to
/// what the seeds' names say.
#[test]
fn transfer_seeds_reach_their_outcome() {
    const FINISHED: RunSummary = RunSummary {
        finished: true,
        failed: false,
    };
    const FAILED: RunSummary = RunSummary {
        finished: false,
        failed: true,
    };
    let outcome = |target: &str, name: &str| -> RunSummary {
        let (_, bytes) = seeds(target)
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no seed {target}/{name}"));
        match target {
            "receiver" => receiver_run(&bytes),
            _ => sender_run(&bytes),
        }
    };
    for name in ["clean", "reordered", "resume", "empty-file"] {
        assert_eq!(outcome("receiver", name), FINISHED, "receiver/{name}");
    }
    for name in [
        "request-retries-then-timeout",
        "corrupt-chunk-hash-mismatch",
        "abort-mid-transfer",
        "bad-chunk-size",
        "expected-mismatch",
        "local-abort",
    ] {
        assert_eq!(outcome("receiver", name), FAILED, "receiver/{name}");
    }
    for name in [
        "clean",
        "reliable",
        "empty-file",
        "resumed-at-end",
        "fin-retries",
    ] {
        assert_eq!(outcome("sender", name), FINISHED, "sender/{name}");
    }
    for name in [
        "timeouts",
        "peer-abort",
        "local-abort",
        "zero-window-then-idle",
    ] {
        assert_eq!(outcome("sender", name), FAILED, "sender/{name}");
    }
}

/// Writes [`seeds`] into `fuzz/corpus/<target>/seed-<name>`.
#[test]
#[ignore = "writes the seed corpus into the source tree; run by hand with WRITE_FUZZ_SEEDS=1"]
fn write_seed_corpus() {
    if std::env::var_os("WRITE_FUZZ_SEEDS").is_none() {
        return;
    }
    for (target, _) in TARGETS {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).expect("create corpus dir");
        for (name, bytes) in seeds(target) {
            fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
        }
    }
}

/// A small byte-program builder for the op languages of `p2p_proto::fuzzing`.
#[derive(Default)]
struct Prog(Vec<u8>);

impl Prog {
    fn u8(mut self, b: u8) -> Self {
        self.0.push(b);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn ops(mut self, ops: &[u8]) -> Self {
        self.0.extend_from_slice(ops);
        self
    }
    fn repeat(mut self, ops: &[u8], n: usize) -> Self {
        for _ in 0..n {
            self.0.extend_from_slice(ops);
        }
        self
    }
}

/// Receiver program header: flags (bit 1: expected known, bits 0+1: expected wrong, bit 2:
/// resume), size, chunk size - 1, window - 1, ack_every - 1, content seed, resume chunk.
fn receiver(flags: u8, size: u16, chunk: u16, window: u8, start: u8) -> Prog {
    Prog::default()
        .u8(flags)
        .u16(size)
        .u16(chunk - 1)
        .u8(window - 1)
        .u8(1)
        .u8(7)
        .u8(start)
}

/// Sender program header: flags (bit 0: reliable), size, chunk size - 1, max_window - 1,
/// initial_window - 1, dup_thresh - 1, start chunk.
fn sender(flags: u8, size: u16, chunk: u8, max_window: u8, start: u8) -> Prog {
    Prog::default()
        .u8(flags)
        .u16(size)
        .u8(chunk - 1)
        .u8(max_window - 1)
        .u8(3)
        .u8(2)
        .u8(start)
}

/// Registry program header: ttl in ms - 1, max_peers - 1.
fn registry(ttl_ms: u16, max_peers: u8) -> Prog {
    Prog::default().u16(ttl_ms - 1).u8(max_peers - 1)
}

// Receiver ops.
const R_ACCEPT: u8 = 0;
const R_ACCEPT_CHUNK: u8 = 1;
const R_DATA_NEAR: u8 = 4;
const R_DATA_FLIP: u8 = 5;
const R_DATA_LEN: u8 = 6;
const R_FIN: u8 = 8;
const R_FIN_BAD: u8 = 9;
const R_ABORT: u8 = 10;
const R_OTHER: u8 = 11;
const R_ADVANCE: u8 = 12;
const R_TIMER: u8 = 13;
const R_SEALED: u8 = 14;
const R_BURST: u8 = 16;
const R_LOCAL_ABORT: u8 = 17;

// Sender ops.
const S_ACK: u8 = 0;
const S_ACK_RAW: u8 = 1;
const S_ACK_ALL: u8 = 2;
const S_FIN_ACK: u8 = 3;
const S_ABORT: u8 = 4;
const S_REQUEST: u8 = 5;
const S_ADVANCE: u8 = 6;
const S_TIMER: u8 = 7;
const S_SEALED: u8 = 8;
const S_LOCAL_ABORT: u8 = 9;
const S_OTHER: u8 = 10;

// Registry ops.
const G_REGISTER: u8 = 0;
const G_UNREGISTER: u8 = 2;
const G_EXPIRE: u8 = 3;
const G_LIST: u8 = 4;
const G_ADVANCE: u8 = 5;

/// The hand-written seeds of `target`: (name, bytes).
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let named = |v: Vec<(&str, Prog)>| -> Vec<(String, Vec<u8>)> {
        v.into_iter().map(|(n, p)| (n.to_string(), p.0)).collect()
    };
    match target {
        "decode" => sample_messages()
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let bytes = m.encode();
                let kind = format!("{m:?}");
                let kind: String = kind.chars().take_while(|c| c.is_alphanumeric()).collect();
                // Alternate full frames and bare bodies (the target also seals its input).
                let bytes = if i % 2 == 0 {
                    bytes
                } else {
                    bytes[HEADER_LEN..].to_vec()
                };
                (format!("{i:02}-{}", kind.to_lowercase()), bytes)
            })
            .chain([("huge-list-claim".to_string(), {
                let mut body = vec![0x81, 0xa9];
                body.extend_from_slice(b"IndexPage");
                body.extend_from_slice(&[0x95, 1, 0, 1, 0xa0, 0xdd, 0xff, 0xff, 0xff, 0xff]);
                seal(&body)
            })])
            .collect(),
        "receiver" => named(vec![
            (
                "clean",
                receiver(2, 1000, 100, 16, 0).ops(&[R_ACCEPT, R_BURST, 10, R_FIN]),
            ),
            (
                "reordered",
                receiver(0, 700, 100, 4, 0)
                    .ops(&[R_ACCEPT])
                    .ops(&[R_DATA_NEAR, 6, R_DATA_NEAR, 5, R_DATA_NEAR, 4])
                    .ops(&[R_DATA_NEAR, 4, R_DATA_NEAR, 4, R_DATA_NEAR, 3])
                    .ops(&[R_BURST, 10, R_FIN]),
            ),
            (
                "request-retries-then-timeout",
                receiver(0, 500, 100, 8, 0).repeat(&[R_TIMER], 40),
            ),
            (
                "resume",
                receiver(6, 1000, 100, 8, 3).ops(&[R_ACCEPT, R_BURST, 10, R_FIN]),
            ),
            (
                "corrupt-chunk-hash-mismatch",
                receiver(0, 300, 100, 8, 0)
                    .ops(&[R_ACCEPT, R_DATA_FLIP, 4, 9])
                    .ops(&[R_BURST, 5, R_FIN]),
            ),
            (
                "abort-mid-transfer",
                receiver(0, 300, 100, 8, 0).ops(&[R_ACCEPT, R_BURST, 1, R_ABORT, 3, R_FIN]),
            ),
            (
                "bad-chunk-size",
                receiver(0, 300, 100, 8, 0).ops(&[R_ACCEPT_CHUNK, 0, 0, R_ACCEPT]),
            ),
            (
                "empty-file",
                receiver(2, 0, 100, 8, 0).ops(&[R_ACCEPT, R_FIN, R_FIN]),
            ),
            (
                "expected-mismatch",
                receiver(3, 500, 100, 8, 0).ops(&[R_ACCEPT, R_BURST, 5]),
            ),
            (
                "local-abort",
                receiver(0, 500, 100, 8, 0).ops(&[R_ACCEPT, R_BURST, 2, R_LOCAL_ABORT, 6]),
            ),
            (
                "wrong-fin-and-lengths",
                receiver(0, 250, 100, 8, 0)
                    .ops(&[R_ACCEPT, R_DATA_LEN, 0x81, R_DATA_LEN, 3, R_BURST, 3])
                    .ops(&[R_FIN_BAD, 0x80, R_FIN]),
            ),
            (
                "idle-and-delayed-acks",
                receiver(0, 900, 100, 8, 0)
                    .ops(&[R_ACCEPT, R_BURST, 1, R_ADVANCE])
                    .u16(3)
                    .ops(&[R_TIMER, R_OTHER, 2, R_BURST, 8, R_TIMER, R_TIMER, R_TIMER]),
            ),
            (
                "sealed-junk",
                receiver(0, 100, 100, 8, 0).ops(&[R_SEALED, 4, 0x81, 0xa1, b'x', 0x90, R_ACCEPT]),
            ),
        ]),
        "sender" => named(vec![
            (
                "clean",
                sender(0, 1000, 50, 16, 0)
                    .repeat(&[S_ACK_ALL], 12)
                    .ops(&[S_FIN_ACK]),
            ),
            (
                "reliable",
                sender(1, 1000, 50, 8, 0)
                    .repeat(&[S_ACK_ALL], 12)
                    .ops(&[S_FIN_ACK]),
            ),
            ("timeouts", sender(0, 3000, 64, 8, 0).repeat(&[S_TIMER], 30)),
            (
                "sack-fast-retransmit",
                sender(0, 2000, 64, 16, 0)
                    .ops(&[S_ACK, 0])
                    .u16(0b1111_1110)
                    .u8(30)
                    .ops(&[S_ACK, 1])
                    .u16(0xfffe)
                    .u8(30)
                    .ops(&[S_TIMER, S_ACK_ALL, S_ACK_ALL, S_ACK_ALL]),
            ),
            (
                "empty-file",
                sender(0, 0, 10, 4, 0).ops(&[S_TIMER, S_FIN_ACK]),
            ),
            (
                "resumed-at-end",
                sender(0, 100, 10, 4, 200).ops(&[S_FIN_ACK]),
            ),
            (
                "peer-abort",
                sender(0, 500, 10, 4, 0).ops(&[S_ACK_ALL, S_ABORT, 2, S_ACK_ALL]),
            ),
            (
                "local-abort",
                sender(0, 500, 10, 4, 0).ops(&[S_ACK_ALL, S_LOCAL_ABORT, 6, S_TIMER]),
            ),
            (
                "lost-accept-request",
                sender(0, 500, 10, 4, 0).ops(&[S_REQUEST, 0, S_REQUEST, 1, S_ACK_ALL]),
            ),
            (
                "raw-acks",
                sender(0, 500, 10, 8, 0)
                    .ops(&[S_ACK_RAW])
                    .u16(2)
                    .u8(2)
                    .u16(4)
                    .u16(6)
                    .u16(7)
                    .u16(8)
                    .u16(16),
            ),
            (
                "zero-window-then-idle",
                sender(0, 500, 10, 8, 0)
                    .ops(&[S_ACK, 0, 0, 0, 0])
                    .ops(&[S_ADVANCE])
                    .u16(6000)
                    .ops(&[S_TIMER]),
            ),
            (
                "fin-retries",
                sender(0, 30, 10, 8, 0)
                    .ops(&[S_ACK_ALL])
                    .repeat(&[S_TIMER], 6)
                    .ops(&[S_OTHER, 0, S_SEALED, 2, 0x91, 0x01, S_FIN_ACK]),
            ),
        ]),
        "registry" => named(vec![
            (
                "register-list",
                registry(1000, 4).ops(&[G_REGISTER, 0, 1, 1, 0, G_LIST]),
            ),
            (
                "name-taken",
                registry(1000, 4).ops(&[G_REGISTER, 0, 1, 1, 0, G_REGISTER, 0, 2, 1, 0]),
            ),
            (
                "expire-then-reuse",
                registry(100, 4)
                    .ops(&[G_REGISTER, 1, 1, 1, 0, G_ADVANCE])
                    .u16(200)
                    .ops(&[G_REGISTER, 1, 2, 1, 0, G_EXPIRE, G_LIST]),
            ),
            (
                "full",
                registry(1000, 2).ops(&[
                    G_REGISTER, 0, 1, 1, 0, G_REGISTER, 1, 1, 2, 0, G_REGISTER, 2, 1, 3, 0,
                ]),
            ),
            (
                "full-then-expired-slot",
                registry(50, 1)
                    .ops(&[G_REGISTER, 0, 1, 1, 0, G_ADVANCE])
                    .u16(60)
                    .ops(&[G_REGISTER, 1, 1, 1, 0]),
            ),
            (
                "unregister-owner-only",
                registry(1000, 4).ops(&[
                    G_REGISTER,
                    3,
                    1,
                    1,
                    0,
                    G_UNREGISTER,
                    3,
                    2,
                    G_UNREGISTER,
                    3,
                    1,
                    G_LIST,
                ]),
            ),
            (
                "bad-names-and-port",
                registry(1000, 4).ops(&[
                    G_REGISTER, 5, 1, 1, 0, G_REGISTER, 6, 1, 1, 0, G_REGISTER, 7, 1, 1, 0,
                    G_REGISTER, 0, 1, 0, 0,
                ]),
            ),
            (
                "heartbeat-keeps-alive",
                registry(100, 4)
                    .ops(&[G_REGISTER, 0, 1, 1, 0, G_ADVANCE])
                    .u16(80)
                    .ops(&[G_REGISTER, 0, 1, 1, 0, G_ADVANCE])
                    .u16(80)
                    .ops(&[G_EXPIRE, G_LIST]),
            ),
            (
                "transport-change-refused",
                registry(1000, 4).ops(&[G_REGISTER, 0, 1, 1, 0, G_REGISTER, 0, 1, 1, 1]),
            ),
            (
                "port-change-refused",
                registry(1000, 4).ops(&[G_REGISTER, 0, 1, 1, 0, G_REGISTER, 0, 1, 2, 0]),
            ),
            (
                "churn",
                registry(30, 3)
                    .repeat(&[G_REGISTER, 0, 1, 1, 0, G_REGISTER, 1, 2, 1, 1], 3)
                    .ops(&[G_ADVANCE])
                    .u16(20)
                    .repeat(&[G_REGISTER, 2, 3, 1, 0, G_EXPIRE, G_UNREGISTER, 1, 2], 3),
            ),
            (
                "long-idle",
                registry(65535, 4)
                    .ops(&[G_REGISTER, 4, 0, 3, 1, G_ADVANCE])
                    .u16(65535)
                    .ops(&[G_LIST, G_EXPIRE]),
            ),
        ]),
        other => panic!("no target `{other}`"),
    }
}
