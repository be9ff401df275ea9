//! File sizes at the chunk boundaries (0, 1, chunk−1, chunk, chunk+1) and a file of several
//! MiB, over UDP and TCP, on a clean network: every download is exact.

use std::time::Duration;

use p2p_sim_tests::harness::run_sim;
use p2p_sim_tests::{
    check_download, fast_registry, fetch, run_seeds, Checked, Cluster, Net, PeerOpts,
};

fn sizes_scenario(test: &str, net: Net, sizes: &[usize]) {
    run_seeds(file!(), test, |seed| {
        let mut cl = Cluster::new(seed, net);
        let mut sim = cl.builder(Duration::from_secs(120)).build();
        let files: Vec<(String, usize)> = sizes.iter().map(|s| (format!("f{s}.bin"), *s)).collect();
        let refs: Vec<(&str, usize)> = files.iter().map(|(p, s)| (p.as_str(), *s)).collect();
        cl.add_tracker(&mut sim, fast_registry(), None);
        cl.add_peer(&mut sim, "seeder", PeerOpts::sharing(&refs));
        cl.add_peer(&mut sim, "leecher", PeerOpts::default());
        let dest = cl.download_dir("leecher");
        let want: Vec<_> = files.iter().map(|(p, _)| cl.file("seeder", p)).collect();
        let handles = cl.handles.clone();
        let trace = cl.trace.clone();
        sim.client("ctl", async move {
            let h = handles.get("leecher").await;
            for f in want {
                let out = dest.join(&f.path);
                let res = fetch(&h, "seeder", &f.path, &out).await;
                trace.record(
                    "ctl",
                    format_args!("{}: {:?}", f.path, res.as_ref().map(|r| r.size)),
                );
                match check_download(&res, &out, &f)? {
                    Checked::Complete => {}
                    Checked::Failed(e) => return Err(format!("{} failed: {e}", f.path).into()),
                }
            }
            Ok(())
        });
        run_sim(&mut sim)
    });
}

fn boundary_sizes(net: Net) -> Vec<usize> {
    let c = net.chunk_size();
    vec![0, 1, c - 1, c, c + 1, 2 * c + 1]
}

#[test]
fn chunk_boundaries_udp() {
    sizes_scenario("chunk_boundaries_udp", Net::Udp, &boundary_sizes(Net::Udp));
}

#[test]
fn chunk_boundaries_tcp() {
    sizes_scenario("chunk_boundaries_tcp", Net::Tcp, &boundary_sizes(Net::Tcp));
}

#[test]
fn several_mib_udp() {
    sizes_scenario("several_mib_udp", Net::Udp, &[3 << 20]);
}

#[test]
fn several_mib_tcp() {
    sizes_scenario("several_mib_tcp", Net::Tcp, &[6 << 20]);
}
