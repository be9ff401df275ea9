//! Hole punching through simulated NATs ([`NatUdp`](p2p_sim_tests::NatUdp)): peers behind
//! cone (Linux `masquerade`) and symmetric (`random-fully`) NATs, the tracker public.
//! Downloads go as `p2p get` does them ([`punch_fetch`]): punch with the tracker's
//! introduction, then fetch at the address the peer's probe came from, or at the listed
//! address when the punch fails.
//!
//! Every download ends byte-exact through the punched route, or with a clear error (no
//! answer, or a timeout) in bounded simulated time: never a hang, never a wrong file.
//!
//! Latency is 10 to 30 ms a datagram: random, but within the triangle inequality the
//! punching order relies on (`docs/NAT.md`); `heavy_jitter_*` uses turmoil's default 0 to
//! 100 ms, which breaks it.

use std::path::Path;
use std::time::Duration;

use p2p_core::service::ServiceError;
use p2p_proto::tracker::{RegistryConfig, RelayConfig};
use p2p_proto::wire::Message;
use p2p_sim_tests::faulty::Targeted;
use p2p_sim_tests::harness::run_sim;
use p2p_sim_tests::{
    check_download, fast_registry, fetch, host_ip, punch_fetch, run_seeds, seeded_tests, timed_out,
    tracker_addr, Checked, Cluster, FaultRates, NatConfig, Net, PeerOpts, PunchedFetch, Route,
    SharedFile, Trace, PEER_PORT,
};

const SEEDER: &str = "seeder";
const LEECH: &str = "leech";
/// Two pieces and a bit: the transfer runs a while through both mappings.
const FILE: &str = "film.bin";
const SIZE: usize = 600_000;
/// The longest a failed get may take: the punch's 2 s, then the listed address's retries.
const FAIL_WITHIN: Duration = Duration::from_secs(30);

fn is_probe(m: &Message) -> bool {
    matches!(m, Message::Probe { .. })
}

fn is_introduction(m: &Message) -> bool {
    matches!(m, Message::Introduction { .. })
}

/// How a scenario is set up.
struct Setup {
    seeder: PeerOpts,
    leech: PeerOpts,
    registry: RegistryConfig,
    tracker_faults: Option<(FaultRates, FaultRates)>,
    tracker_targeted: Targeted,
    /// Latency of every datagram: (least, most); `None`: turmoil's default.
    latency: Option<(Duration, Duration)>,
    duration: Duration,
    /// The tracker's relay: off unless a scenario is about it, so that a failed punch shows
    /// as a failed download.
    relay: RelayConfig,
}

impl Setup {
    /// Seeder and leech behind these NATs (`None`: public).
    fn new(seeder: Option<NatConfig>, leech: Option<NatConfig>) -> Self {
        let mut s = PeerOpts::sharing(&[(FILE, SIZE)]);
        s.nat = seeder;
        // The leech is `p2p get`'s client: not registered.
        let mut l = PeerOpts::default().unregistered();
        l.nat = leech;
        Setup {
            seeder: s,
            leech: l,
            registry: fast_registry(),
            tracker_faults: None,
            tracker_targeted: Targeted::default(),
            latency: Some((Duration::from_millis(10), Duration::from_millis(30))),
            duration: Duration::from_secs(120),
            relay: RelayConfig::off(),
        }
    }

    /// With the tracker's relay on.
    fn relaying(mut self) -> Self {
        self.relay = RelayConfig::default();
        self
    }

    fn build(self, seed: u64) -> (Cluster, turmoil::Sim<'static>) {
        let mut cl = Cluster::new(seed, Net::Udp);
        cl.relay = self.relay;
        let mut b = cl.builder(self.duration);
        if let Some((least, most)) = self.latency {
            b.min_message_latency(least).max_message_latency(most);
        }
        let mut sim = b.build();
        cl.add_tracker_targeted(
            &mut sim,
            self.registry,
            self.tracker_faults,
            self.tracker_targeted,
        );
        cl.add_peer(&mut sim, SEEDER, self.seeder);
        cl.add_peer(&mut sim, LEECH, self.leech);
        (cl, sim)
    }
}

/// One `get` of [`FILE`] by the leech, checked against the invariant.
struct Get {
    out: PunchedFetch,
    checked: Checked,
    took: Duration,
}

/// Gets [`FILE`] from the seeder into `dest` through `punch_fetch`, waiting first for the
/// seeder's registration; checks the invariant and records the outcome in `trace`.
async fn get(cl: &Client, dest: &Path) -> Result<Get, String> {
    let h = cl.handles.get(LEECH).await;
    let t0 = tokio::time::Instant::now();
    let out = punch_fetch(&h, SEEDER, FILE, dest).await;
    let took = t0.elapsed();
    let checked = check_download(&out.result, dest, &cl.file)?;
    cl.trace.record(
        "ctl",
        format_args!(
            "get: punch {:?}, route {:?}, {:?} in {took:?}",
            out.punch, out.route, checked
        ),
    );
    Ok(Get { out, checked, took })
}

/// What a test client needs of the cluster.
#[derive(Clone)]
struct Client {
    handles: p2p_sim_tests::Handles,
    trace: Trace,
    file: SharedFile,
}

impl Client {
    fn of(cl: &Cluster) -> Self {
        Client {
            handles: cl.handles.clone(),
            trace: cl.trace.clone(),
            file: cl.file(SEEDER, FILE),
        }
    }
}

/// Waits (simulated time) until the seeder is registered.
async fn registered(cl: &Client) -> Result<(), String> {
    for _ in 0..1000 {
        if cl
            .trace
            .events()
            .iter()
            .any(|e| e.host == SEEDER && e.what == "registered")
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err("the seeder never registered".into())
}

/// The get completed byte-exact through a punched hole at `at`.
fn punched(g: &Get) -> Result<std::net::SocketAddr, String> {
    match (&g.checked, g.out.route) {
        (Checked::Complete, Route::Punched(at)) => Ok(at),
        _ => Err(format!(
            "expected a punched download, got punch {:?}, route {:?}, {:?}",
            g.out.punch, g.out.route, g.checked
        )),
    }
}

/// A clear error: no answer (naming who) or a timeout.
fn clear(e: &ServiceError) -> bool {
    match e.cause() {
        ServiceError::NoAnswer(_) => e.to_string().contains("no answer from"),
        other => timed_out(other),
    }
}

/// The get failed, with a clear error, in bounded time, leaving nothing wrong on disk.
fn failed_clearly(g: &Get) -> Result<(), String> {
    match &g.checked {
        Checked::Failed(e) if clear(e) && g.took <= FAIL_WITHIN => Ok(()),
        other => Err(format!(
            "expected a clear failure within {FAIL_WITHIN:?}, got {other:?} after {:?} (punch \
             {:?}, route {:?})",
            g.took, g.out.punch, g.out.route
        )),
    }
}

/// A completed punched download, or a clear error in bounded time.
fn completed_or_clear(g: &Get) -> Result<(), String> {
    if matches!(g.checked, Checked::Complete) {
        punched(g).map(|_| ())
    } else {
        failed_clearly(g)
    }
}

/// Both behind cone NATs: the download is punched, byte-exact, at the seeder's public
/// mapping (the address the tracker saw), and each side's low-TTL probes died beyond its
/// own router.
fn cone_nats(seed: u64) -> turmoil::Result {
    let (cl, mut sim) = Setup::new(Some(NatConfig::cone()), Some(NatConfig::cone())).build(seed);
    let c = Client::of(&cl);
    let (seeder_nat, leech_nat) = (cl.nat(SEEDER), cl.nat(LEECH));
    let dest = cl.download_dir(LEECH).join(FILE);
    sim.client("ctl", async move {
        registered(&c).await?;
        let g = get(&c, &dest).await?;
        let at = punched(&g)?;
        let seen = seeder_nat.port_toward(tracker_addr());
        if at.ip() != host_ip(SEEDER) || Some(at.port()) != seen || at.port() == PEER_PORT {
            return Err(format!("punched at {at}, the seeder's mapping is {seen:?}").into());
        }
        let (s, l) = (seeder_nat.stats(), leech_nat.stats());
        if s.died_beyond < 2 || l.died_beyond < 2 || s.remapped_on_clash + l.remapped_on_clash > 0 {
            return Err(format!("seeder NAT {s:?}, leech NAT {l:?}").into());
        }
        Ok(())
    });
    run_sim(&mut sim)
}

/// A public seeder, the leech behind a cone NAT: punched too, at the listed address.
fn public_seeder(seed: u64) -> turmoil::Result {
    let (cl, mut sim) = Setup::new(None, Some(NatConfig::cone())).build(seed);
    let c = Client::of(&cl);
    let dest = cl.download_dir(LEECH).join(FILE);
    sim.client("ctl", async move {
        registered(&c).await?;
        let g = get(&c, &dest).await?;
        let at = punched(&g)?;
        if at != p2p_sim_tests::peer_addr(SEEDER) {
            return Err(format!("punched at {at}, not the listed address").into());
        }
        Ok(())
    });
    run_sim(&mut sim)
}

/// Without a punch, a seeder behind a NAT is listed but not reachable: no answer.
fn unpunched_is_unreachable(seed: u64) -> turmoil::Result {
    let (cl, mut sim) = Setup::new(Some(NatConfig::cone()), None).build(seed);
    let c = Client::of(&cl);
    let seeder_nat = cl.nat(SEEDER);
    let dest = cl.download_dir(LEECH).join(FILE);
    sim.client("ctl", async move {
        registered(&c).await?;
        let h = c.handles.get(LEECH).await;
        let res = fetch(&h, SEEDER, FILE, &dest).await;
        match check_download(&res, &dest, &c.file)? {
            Checked::Failed(ServiceError::NoAnswer(a)) if a == p2p_sim_tests::peer_addr(SEEDER) => {
            }
            other => return Err(format!("expected no answer, got {other:?}").into()),
        }
        if seeder_nat.stats().to_private == 0 {
            return Err("nothing reached the private address".into());
        }
        Ok(())
    });
    run_sim(&mut sim)
}

/// The seeder's NAT forgets idle mappings after 5 s and it heartbeats every 8 s: between a
/// lapse and the next heartbeat the tracker still names the dead mapping, and a get fails
/// clearly (the introduction goes nowhere); after the heartbeat, from a new public port, a
/// get is punched there.
fn mapping_expires(seed: u64) -> turmoil::Result {
    let short = Duration::from_secs(5);
    let mut setup = Setup::new(
        Some(NatConfig::cone().timeouts(short, short)),
        Some(NatConfig::cone()),
    );
    setup.registry = RegistryConfig {
        heartbeat: Duration::from_secs(8),
        ttl: Duration::from_secs(30),
        ..fast_registry()
    };
    let (cl, mut sim) = setup.build(seed);
    let c = Client::of(&cl);
    let seeder_nat = cl.nat(SEEDER);
    let dest = cl.download_dir(LEECH).join(FILE);
    sim.client("ctl", async move {
        registered(&c).await?;
        let tracker = tracker_addr();
        let first = seeder_nat
            .port_toward(tracker)
            .ok_or("no mapping toward the tracker")?;
        let wait = |what: &'static str, done: Box<dyn Fn() -> bool>| async move {
            for _ in 0..2000 {
                if done() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(format!("{what} never happened"))
        };
        let nat = seeder_nat.clone();
        wait("expiry", Box::new(move || nat.live_ports().is_empty())).await?;
        c.trace.record("ctl", "the seeder's mapping expired");
        let g = get(&c, &dest).await?;
        failed_clearly(&g)?;
        let stale = std::net::SocketAddr::new(host_ip(SEEDER), first);
        if !matches!(g.out.punch, Err(ServiceError::NoAnswer(a)) if a == stale) {
            return Err(format!("the punch should name {stale}: {:?}", g.out.punch).into());
        }
        let nat = seeder_nat.clone();
        wait(
            "a new mapping",
            Box::new(move || nat.port_toward(tracker).is_some_and(|p| p != first)),
        )
        .await?;
        // The tracker hears the heartbeat a moment after it leaves.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let g = get(&c, &dest).await?;
        let at = punched(&g)?;
        if at.port() == first || Some(at.port()) != seeder_nat.port_toward(tracker) {
            return Err(format!("punched at {at}: not the new mapping").into());
        }
        Ok(())
    });
    run_sim(&mut sim)
}

/// One side behind a symmetric NAT, the tracker not relaying (`--no-relay`): the peer's
/// probes come from a port the other NAT never sent to (or go to one that was not opened
/// toward them): the get fails clearly, in bounded time, with nothing on disk.
fn symmetric(seed: u64, seeder_symmetric: bool) -> turmoil::Result {
    let (s, l) = if seeder_symmetric {
        (NatConfig::symmetric(), NatConfig::cone())
    } else {
        (NatConfig::cone(), NatConfig::symmetric())
    };
    let (cl, mut sim) = Setup::new(Some(s), Some(l)).build(seed);
    let c = Client::of(&cl);
    let (seeder_nat, leech_nat) = (cl.nat(SEEDER), cl.nat(LEECH));
    let dest = cl.download_dir(LEECH).join(FILE);
    sim.client("ctl", async move {
        registered(&c).await?;
        let g = get(&c, &dest).await?;
        failed_clearly(&g)?;
        if !matches!(g.out.punch, Err(ServiceError::NoAnswer(_))) {
            return Err(format!("the punch should fail: {:?}", g.out.punch).into());
        }
        // The seeder's probes reached the leech's NAT through a port it never sent to
        // (symmetric seeder), or at a port not opened toward them (symmetric leech).
        let (s, l) = (seeder_nat.stats(), leech_nat.stats());
        let symmetric = if seeder_symmetric { &s } else { &l };
        if l.filtered == 0 || symmetric.mappings < 2 {
            return Err(format!("seeder NAT {s:?}, leech NAT {l:?}").into());
        }
        Ok(())
    });
    run_sim(&mut sim)
}

/// One side behind a symmetric NAT, the tracker relaying: the punch fails, the listed
/// address does not answer, and the download goes through the tracker's relay, byte-exact;
/// the tracker opened one session to the seeder and forwarded the file's bytes.
fn symmetric_relayed(seed: u64, seeder_symmetric: bool) -> turmoil::Result {
    let (s, l) = if seeder_symmetric {
        (NatConfig::symmetric(), NatConfig::cone())
    } else {
        (NatConfig::cone(), NatConfig::symmetric())
    };
    let (cl, mut sim) = Setup::new(Some(s), Some(l)).relaying().build(seed);
    let c = Client::of(&cl);
    let dest = cl.download_dir(LEECH).join(FILE);
    sim.client("ctl", async move {
        registered(&c).await?;
        let g = get(&c, &dest).await?;
        if !matches!(
            (&g.checked, g.out.route),
            (Checked::Complete, Route::Relayed(_))
        ) {
            return Err(format!(
                "expected a relayed download, got punch {:?}, route {:?}, {:?}",
                g.out.punch, g.out.route, g.checked
            )
            .into());
        }
        let opened = c
            .trace
            .events()
            .iter()
            .filter(|e| e.what.starts_with("relay opened") && e.what.ends_with(SEEDER))
            .count();
        if opened != 1 {
            return Err(format!("{opened} relay sessions opened to the seeder, not 1").into());
        }
        Ok(())
    });
    run_sim(&mut sim)
}

/// The tracker's first `Introduction` is lost: the seeder never probes, the get fails
/// clearly; the next get is punched.
fn introduction_lost(seed: u64) -> turmoil::Result {
    let mut setup = Setup::new(Some(NatConfig::cone()), Some(NatConfig::cone()));
    setup.tracker_targeted.drop_first = Some((is_introduction, 1));
    let (cl, mut sim) = setup.build(seed);
    let c = Client::of(&cl);
    let dest = cl.download_dir(LEECH).join(FILE);
    sim.client("ctl", async move {
        registered(&c).await?;
        failed_clearly(&get(&c, &dest).await?)?;
        punched(&get(&c, &dest).await?)?;
        Ok(())
    });
    run_sim(&mut sim)
}

/// The seeder's first `lost` full probes are lost past its router (its low ones die
/// there anyway). Two lost: the third gets through. Three lost: the get fails clearly, and
/// the next one is punched.
fn probes_lost(seed: u64, lost: u32) -> turmoil::Result {
    let mut setup = Setup::new(Some(NatConfig::cone()), Some(NatConfig::cone()));
    setup.seeder = setup.seeder.dropping_first(is_probe, lost);
    let (cl, mut sim) = setup.build(seed);
    let c = Client::of(&cl);
    let dest = cl.download_dir(LEECH).join(FILE);
    sim.client("ctl", async move {
        registered(&c).await?;
        let g = get(&c, &dest).await?;
        if lost < 3 {
            punched(&g)?;
        } else {
            failed_clearly(&g)?;
            punched(&get(&c, &dest).await?)?;
        }
        Ok(())
    });
    run_sim(&mut sim)
}

/// The leech's low-TTL probes are lost on its LAN, before its router. One of the two: the
/// other opens the mapping, punched. Both: the seeder's full probes reach the leech's
/// router unsolicited, which records them (Linux conntrack) and moves the leech's own
/// datagrams to the seeder to another port: the get fails clearly. The record lives 30 s
/// after the last such probe, and every later punch within that time fails the same way
/// (each refreshes it); a get after it lapsed is punched.
fn low_probes_lost(seed: u64, lost: u32) -> turmoil::Result {
    let mut setup = Setup::new(
        Some(NatConfig::cone()),
        Some(NatConfig::cone().lan_dropping_first(is_probe, lost)),
    );
    setup.duration = Duration::from_secs(200);
    let (cl, mut sim) = setup.build(seed);
    let c = Client::of(&cl);
    let leech_nat = cl.nat(LEECH);
    let dest = cl.download_dir(LEECH).join(FILE);
    sim.client("ctl", async move {
        registered(&c).await?;
        let g = get(&c, &dest).await?;
        if lost < 2 {
            punched(&g)?;
            return Ok(());
        }
        failed_clearly(&g)?;
        let s = leech_nat.stats();
        if s.lan_dropped != 2 || s.filtered == 0 {
            return Err(format!("leech NAT {s:?}").into());
        }
        // Within the record's life: fails again, the leech's NAT remapping on the clash.
        failed_clearly(&get(&c, &dest).await?)?;
        if leech_nat.stats().remapped_on_clash == 0 {
            return Err(format!("no remap: {:?}", leech_nat.stats()).into());
        }
        tokio::time::sleep(NatConfig::cone().unreplied + Duration::from_secs(1)).await;
        punched(&get(&c, &dest).await?)?;
        Ok(())
    });
    run_sim(&mut sim)
}

/// 10 % loss both ways on every host (past the routers): each of three gets completes
/// through the punched route or fails clearly.
fn lossy(seed: u64) -> turmoil::Result {
    let loss = FaultRates::loss(0.1);
    let mut setup = Setup::new(Some(NatConfig::cone()), Some(NatConfig::cone()));
    setup.seeder = setup.seeder.faults(loss, loss);
    setup.leech = setup.leech.faults(loss, loss);
    setup.tracker_faults = Some((loss, loss));
    setup.duration = Duration::from_secs(300);
    let (cl, mut sim) = setup.build(seed);
    let c = Client::of(&cl);
    let dest = cl.download_dir(LEECH).join(FILE);
    sim.client("ctl", async move {
        registered(&c).await?;
        for _ in 0..3 {
            let g = get(&c, &dest).await?;
            completed_or_clear(&g)?;
            if let Checked::Complete = g.checked {
                std::fs::remove_file(&dest).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    });
    run_sim(&mut sim)
}

/// turmoil's default latency, 0 to 100 ms a datagram, independently: the tracker's
/// answer may reach the leech after the seeder's first full probe reached the leech's
/// router, which then records it and moves the leech to another port (see
/// `low_probes_lost`). Each get completes through the punched route or fails clearly.
fn heavy_jitter(seed: u64) -> turmoil::Result {
    let mut setup = Setup::new(Some(NatConfig::cone()), Some(NatConfig::cone()));
    setup.latency = None;
    let (cl, mut sim) = setup.build(seed);
    let c = Client::of(&cl);
    let leech_nat = cl.nat(LEECH);
    let dest = cl.download_dir(LEECH).join(FILE);
    sim.client("ctl", async move {
        registered(&c).await?;
        let g = get(&c, &dest).await?;
        let remapped = leech_nat.stats().remapped_on_clash;
        eprintln!(
            "   heavy jitter: route {:?}, {:?}, leech NAT remapped on a clash {remapped} times",
            g.out.route, g.checked
        );
        completed_or_clear(&g)?;
        Ok(())
    });
    run_sim(&mut sim)
}

seeded_tests! {
    cone_nats_punched_download => |seed| cone_nats(seed);
    public_seeder_nated_leech_punched => |seed| public_seeder(seed);
    nated_seeder_unreachable_without_punch => |seed| unpunched_is_unreachable(seed);
    mapping_expires_and_comes_back_after_heartbeat => |seed| mapping_expires(seed);
    symmetric_seeder_fails_clearly => |seed| symmetric(seed, true);
    symmetric_leech_fails_clearly => |seed| symmetric(seed, false);
    symmetric_seeder_relayed => |seed| symmetric_relayed(seed, true);
    symmetric_leech_relayed => |seed| symmetric_relayed(seed, false);
    introduction_lost_fails_clearly_then_punches => |seed| introduction_lost(seed);
    two_full_probes_lost_third_punches => |seed| probes_lost(seed, 2);
    all_full_probes_lost_fails_clearly_then_punches => |seed| probes_lost(seed, 3);
    one_low_probe_lost_on_lan_punches => |seed| low_probes_lost(seed, 1);
    both_low_probes_lost_fail_until_the_record_lapses => |seed| low_probes_lost(seed, 2);
    lossy_cone_nats_complete_or_fail_clearly => |seed| lossy(seed);
    heavy_jitter_completes_or_fails_clearly => |seed| heavy_jitter(seed);
}

/// The same seed twice: the same trace (NAT events included).
#[test]
fn nat_runs_replay_exactly() {
    run_seeds(file!(), "nat_runs_replay_exactly", |seed| {
        let digest = |seed| -> Result<String, Box<dyn std::error::Error>> {
            let (cl, mut sim) =
                Setup::new(Some(NatConfig::cone()), Some(NatConfig::cone())).build(seed);
            let c = Client::of(&cl);
            let dest = cl.download_dir(LEECH).join(FILE);
            sim.client("ctl", async move {
                registered(&c).await?;
                punched(&get(&c, &dest).await?)?;
                Ok(())
            });
            run_sim(&mut sim)?;
            Ok(cl.trace.digest())
        };
        let (a, b) = (digest(seed)?, digest(seed)?);
        if a != b {
            return Err(format!("two runs of seed {seed} differ: {a} vs {b}").into());
        }
        Ok(())
    });
}
