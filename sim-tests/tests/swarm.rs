//! Multi-source downloads (`p2p_core::service::swarm`): one file from several sources at
//! once, every source doing a share of the work; sources that lie, vanish or get cut off;
//! a resume from a mix of sources. UDP runs with 2 % loss on top.

use std::path::Path;
use std::time::Duration;

use p2p_core::service::swarm::{
    swarm_download, Source, SourceState, SwarmConfig, SwarmProgress, SwarmReport,
};
use p2p_core::service::{EndpointHandle, ServiceError};
use p2p_sim_tests::harness::run_sim;
use p2p_sim_tests::{
    fast_registry, find_entry, peer_addr, seeded_tests, Cluster, FaultRates, Net, PeerOpts,
    SharedFile,
};
use tokio::sync::watch;

const FILE: &str = "big.bin";

fn seeder(net: Net, size: usize) -> PeerOpts {
    let mut o = PeerOpts::sharing(&[(FILE, size)]).same_content("swarm");
    if net == Net::Udp {
        o.faults = Some((FaultRates::loss(0.02), FaultRates::NONE));
    }
    o
}

/// The sources `names`, as the downloader finds them (each one's index entry of `FILE`).
async fn sources(via: &EndpointHandle, names: &[String]) -> Result<Vec<Source>, ServiceError> {
    let mut out = Vec::new();
    for name in names {
        let addr = peer_addr(name);
        let entry = find_entry(via, addr, FILE).await?;
        out.push(Source {
            name: name.clone(),
            addr,
            entry,
        });
    }
    Ok(out)
}

/// The download is exact and complete, and no partial or state file is left.
fn check_exact(res: &Result<SwarmReport, ServiceError>, dest: &Path, f: &SharedFile) -> Result<(), String> {
    let report = res.as_ref().map_err(|e| format!("download failed: {e}"))?;
    let got = std::fs::read(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    if blake3::hash(&got) != f.hash || got.len() as u64 != f.size {
        return Err("the downloaded file differs from the source".into());
    }
    if report.size != f.size {
        return Err(format!("report says {} bytes", report.size));
    }
    let partial = p2p_core::service::resume::partial_path(dest);
    let state = p2p_core::service::resume::state_path(dest);
    if partial.exists() || state.exists() {
        return Err("partial or state file left behind".into());
    }
    Ok(())
}

/// Four sources and a downloader: the file is exact, and every source sent a share of it.
fn four_sources(seed: u64, net: Net) -> turmoil::Result {
    const SIZE: usize = 6 << 20;
    let mut cl = Cluster::new(seed, net);
    let mut sim = cl.builder(Duration::from_secs(120)).build();
    cl.add_tracker(&mut sim, fast_registry(), None);
    let names: Vec<String> = (0..4).map(|i| format!("seed{i}")).collect();
    for n in &names {
        cl.add_peer(&mut sim, n, seeder(net, SIZE));
    }
    cl.add_peer(&mut sim, "leecher", PeerOpts::default());
    let f = cl.file("seed0", FILE);
    let dest = cl.download_dir("leecher").join(FILE);
    let handles = cl.handles.clone();
    sim.client("ctl", async move {
        let h = handles.get("leecher").await;
        for n in &names {
            handles.get(n).await;
        }
        let found = sources(&h, &names).await?;
        let (tx, _rx) = watch::channel(SwarmProgress::default());
        let res = swarm_download(
            &h,
            found[0].entry.hash,
            found[0].entry.size,
            found,
            None,
            dest.clone(),
            tx,
            SwarmConfig::default(),
        )
        .await;
        check_exact(&res, &dest, &f)?;
        let report = res.expect("checked");
        let total: u64 = report.sources.iter().map(|s| s.bytes).sum();
        if total != f.size {
            return Err(format!("sources sent {total} verified bytes of {}", f.size).into());
        }
        for s in &report.sources {
            // Each of four gets runs in turn: far more than nothing.
            if s.bytes < f.size / 10 {
                return Err(format!("{} sent only {} bytes: {:?}", s.name, s.bytes, report.sources).into());
            }
            if s.state != SourceState::Active {
                return Err(format!("{} was dropped: {:?}", s.name, s.state).into());
            }
        }
        Ok(())
    });
    run_sim(&mut sim)
}

seeded_tests! {
    four_sources_share_the_work_udp => |s| four_sources(s, Net::Udp);
    four_sources_share_the_work_tcp => |s| four_sources(s, Net::Tcp);
}
