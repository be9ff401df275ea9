//! `p2p demo`: a tracker and two peers on 127.0.0.1 ephemeral ports; the second downloads
//! every file the first shares, over UDP and then over TCP, and each copy is checked byte for
//! byte against its source.

use std::path::Path;

use anyhow::{bail, Context, Result};
use p2p_core::service::run_tracker;
use p2p_proto::tracker::RegistryConfig;
use p2p_proto::wire::TransportKind;

use crate::cli::DemoArgs;
use crate::output::{human_bytes, mib_per_s};
use crate::session::{bind_both, check_share, dest_for, endpoint, find_peer, Mode};

pub(crate) async fn run(args: DemoArgs) -> Result<()> {
    if !args.share.exists() {
        bail!(
            "the share folder {} does not exist: run the demo from the repository root or pass --share DIR",
            args.share.display()
        );
    }
    check_share(&args.share, "--share")?;
    let (udp, tcp) = bind_both("127.0.0.1:0".parse()?, Default::default()).await?;
    let tracker = udp.local_addr()?;
    tokio::spawn(run_tracker(vec![udp, tcp], RegistryConfig::default(), None));
    println!("tracker on {tracker} (udp+tcp)");
    let out = tempfile::tempdir().context("cannot create a temporary folder")?;
    let mut rows = Vec::new();
    let mut failures = 0;
    for kind in [TransportKind::Udp, TransportKind::Tcp] {
        let loopback = "127.0.0.1:0".parse()?;
        let seeder = endpoint(
            kind,
            loopback,
            Some(args.share.clone()),
            Default::default(),
            |_| {},
        )
        .await?;
        let leecher = endpoint(kind, loopback, None, Default::default(), |_| {}).await?;
        let seeder_name = format!("seeder-{kind}");
        seeder
            .register(
                tracker,
                &seeder_name,
                seeder.local_addr().port(),
                kind,
                None,
            )
            .await?;
        leecher
            .register(
                tracker,
                &format!("leecher-{kind}"),
                leecher.local_addr().port(),
                kind,
                None,
            )
            .await?;
        println!(
            "{seeder_name} on {} and leecher-{kind} on {}",
            seeder.local_addr(),
            leecher.local_addr()
        );
        let info = find_peer(&leecher, tracker, &seeder_name, Mode::Cli)
            .await?
            .info;
        let (_, entries) = leecher.index(info.addr).await?;
        let dir = out.path().join(kind.to_string());
        std::fs::create_dir_all(&dir)?;
        for entry in entries {
            let dest = dest_for(&dir, &entry.path)?;
            let source = args.share.join(&entry.path);
            let result = leecher
                .download(info.addr, entry.clone(), dest.clone(), None)
                .await;
            let (ok, secs) = match result {
                Ok(r) => (same_bytes(&source, &r.path)?, r.elapsed.as_secs_f64()),
                Err(e) => {
                    eprintln!("{} over {kind}: {e}", entry.path);
                    (false, 0.0)
                }
            };
            if !ok {
                failures += 1;
            }
            rows.push((entry.path, entry.size, kind, secs, ok));
        }
        leecher.shutdown().await;
        seeder.shutdown().await;
    }
    println!();
    println!(
        "{:<28} {:>10} {:>9} {:>9} {:>9}  result",
        "file", "bytes", "transport", "time", "MiB/s"
    );
    for (path, size, kind, secs, ok) in &rows {
        println!(
            "{:<28} {:>10} {:>9} {:>8.3}s {:>9.1}  {}",
            path,
            size,
            kind.to_string(),
            secs,
            mib_per_s(*size, *secs),
            if *ok { "identical" } else { "DIFFERENT" }
        );
    }
    let total: u64 = rows.iter().map(|r| r.1).sum();
    println!("\n{} transfers, {} in all", rows.len(), human_bytes(total));
    if failures > 0 {
        bail!("{failures} transfer(s) did not produce an identical copy");
    }
    println!("demo ok: every copy is byte-identical to its source");
    Ok(())
}

fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    let a = std::fs::read(a).with_context(|| format!("cannot read {}", a.display()))?;
    let b = std::fs::read(b).with_context(|| format!("cannot read {}", b.display()))?;
    Ok(a == b)
}
