//! Encrypted transfers in simulation: every host runs its endpoint with the secure channel,
//! the seeder takes only sealed peer traffic, and two leechers' downloads end with the exact
//! bytes, each leecher holding a session that proved the seeder's key.
//!
//! - Over UDP, under every per-message fault at once (loss, duplication, reordering, delay,
//!   corruption and truncation), on both sides of every host: handshake frames meet the same
//!   faults as data (a lost initiation or finish is sent again; a damaged or duplicated
//!   frame is dropped by its authentication or the replay window, and a damaged finish does
//!   not break the responder's handshake).
//! - Over TCP, without per-message faults (a stream loses, duplicates, reorders and damages
//!   nothing; the other TCP scenarios run the same way): sessions with leechers seen at their
//!   connections' ephemeral ports.
//! - One seed runs twice to the same trace (every message of every host, with its faults).

use std::time::Duration;

use p2p_core::secure::SecureSettings;
use p2p_core::service::EndpointConfig;
use p2p_proto::identity::Identity;
use p2p_proto::secure::SecureConfig;
use p2p_sim_tests::harness::run_sim;
use p2p_sim_tests::{
    check_download, fast_registry, fetch, mix, peer_addr, run_seeds, Checked, Cluster, FaultRates,
    Net, PeerOpts,
};

const LEECHERS: [&str; 2] = ["leech1", "leech2"];

/// The identity of host `name` in run `seed`.
fn identity(seed: u64, name: &str) -> Identity {
    let n = mix(seed, &format!("identity {name}"));
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&n.to_le_bytes());
    Identity::from_secret(secret)
}

/// Turns the secure channel on for host `name`, its randomness from the run's seed.
fn secure(seed: u64, name: &str, require_sealed: bool) -> impl Fn(&mut EndpointConfig) {
    let identity = identity(seed, name);
    move |c: &mut EndpointConfig| {
        c.rpc_attempts = 20;
        c.sender.idle_timeout = Duration::from_secs(20);
        c.receiver.idle_timeout = Duration::from_secs(20);
        // The faults here lose about a third of all round trips: more tries than the
        // default's 5 (as `rpc_attempts` above).
        let mut config = SecureConfig {
            attempts: 10,
            ..SecureConfig::default()
        };
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&c.id_seed.to_le_bytes());
        config.seed = Some(s);
        c.secure = Some(SecureSettings {
            require_sealed,
            config,
            ..SecureSettings::new(identity.clone())
        });
    }
}

/// Runs the scenario for `seed` over `net`; returns the trace's digest and dump (with
/// `log`, the trace holds every message of every host).
fn scenario(seed: u64, net: Net, log: bool) -> turmoil::Result<(String, String)> {
    let r = match net {
        Net::Udp => FaultRates {
            drop: 0.05,
            duplicate: 0.05,
            reorder: 0.05,
            delay: 0.05,
            corrupt: 0.05,
        },
        _ => FaultRates::NONE,
    };
    let mut cl = Cluster::new(seed, net);
    cl.log_messages |= log;
    let mut sim = cl.builder(Duration::from_secs(200)).build();
    cl.add_tracker(&mut sim, fast_registry(), Some((r, r)));
    cl.add_peer(
        &mut sim,
        "seeder",
        PeerOpts::sharing(&[("a.bin", 300_000), ("b.bin", 70_000)])
            .faults(r, r)
            .tune(secure(seed, "seeder", true)),
    );
    for l in LEECHERS {
        cl.add_peer(
            &mut sim,
            l,
            PeerOpts::default()
                .faults(r, r)
                .tune(secure(seed, l, false)),
        );
    }
    let seeder_key = identity(seed, "seeder").public();
    for (l, path) in LEECHERS.iter().zip(["a.bin", "b.bin"]) {
        let f = cl.file("seeder", path);
        let dest = cl.download_dir(l).join("out.bin");
        let (handles, trace) = (cl.handles.clone(), cl.trace.clone());
        let l = l.to_string();
        sim.client(format!("ctl-{l}"), async move {
            let h = handles.get(&l).await;
            let res = fetch(&h, "seeder", path, &dest).await;
            if h.peer_key(peer_addr("seeder")) != Some(seeder_key) {
                return Err(format!("{l}: no session proving the seeder's key ({res:?})").into());
            }
            match check_download(&res, &dest, &f)? {
                Checked::Complete => {
                    trace.record(&l, format_args!("{path} complete, sealed by the seeder"));
                    Ok(())
                }
                Checked::Failed(e) => Err(format!("{l}: {path} failed: {e}").into()),
            }
        });
    }
    run_sim(&mut sim)?;
    let faults: u64 = ["seeder", "leech1", "leech2"]
        .iter()
        .map(|h| {
            let s = cl.stats(h);
            s.send.dropped + s.recv.dropped + s.send.corrupted + s.recv.corrupted
        })
        .sum();
    if r != FaultRates::NONE && faults == 0 {
        return Err("no fault happened".into());
    }
    Ok((cl.trace.digest(), cl.trace.dump()))
}

#[test]
fn encrypted_transfers_under_all_faults_udp() {
    run_seeds(
        file!(),
        "encrypted_transfers_under_all_faults_udp",
        |seed| scenario(seed, Net::Udp, false).map(drop),
    );
}

#[test]
fn encrypted_transfers_tcp() {
    run_seeds(file!(), "encrypted_transfers_tcp", |seed| {
        scenario(seed, Net::Tcp, false).map(drop)
    });
}

/// Handshakes take their randomness from the run's seed and frames leave from their hosts'
/// own tasks: a seed replays to the same trace.
#[test]
fn same_seed_same_trace_encrypted() {
    run_seeds(file!(), "same_seed_same_trace_encrypted", |seed| {
        let (d1, t1) = scenario(seed, Net::Udp, true)?;
        let (d2, t2) = scenario(seed, Net::Udp, true)?;
        let sealed = t1.lines().filter(|l| l.contains("undecodable")).count();
        if sealed < 50 {
            return Err(format!("only {sealed} sealed frames in the trace").into());
        }
        if d1 != d2 {
            let first = t1
                .lines()
                .zip(t2.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            let line = |t: &str| t.lines().nth(first).unwrap_or("").to_string();
            return Err(format!(
                "replayed differently at line {first}:\n  run 1: {}\n  run 2: {}",
                line(&t1),
                line(&t2)
            )
            .into());
        }
        Ok(())
    });
}
