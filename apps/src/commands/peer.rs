//! `p2p peer`: share a folder, register with the tracker, and offer the interactive menu
//! (`i`, `c`, `r`, `q`) of the original program, with `d` for the downloads and uploads
//! running.
//!
//! On a terminal the menu is a console (`crate::console`): line editing, history, tab
//! completion, and a live line per running download. With piped input it reads plain lines
//! and prints exactly what scripts expect.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::dht::record;
use anyhow::{bail, Context, Result};
use p2p_core::collection::is_collection;
use p2p_core::index::hash_file;
use p2p_core::secure::SecureSettings;
use p2p_core::service::{EndpointHandle, Progress, ServiceError, UploadNotice};
use p2p_proto::tracker::validate_name;
use p2p_proto::wire::{FileId, IndexEntry};
use tokio::sync::{mpsc, watch};

use super::get::collection;
use super::swarm_get;
use crate::cli::PeerArgs;
use crate::console::{
    ask, download_line, locked, Answer, Input, Known, KnownFile, Meter, Printer, ScreenMsg, Uploads,
};
use crate::failure::{describe, describe_service, fail, failure, kind_of, Kind, WithKind};
use crate::output::{clean, human_bytes, id_width, nfc, print_index};
use crate::session::{
    bind_error, check_folder, check_share, dest_for, endpoint, reach, Mode, Reached,
};
use crate::signals::Shutdown;
use p2p_core::service::swarm::{swarm_download, Source, SwarmConfig, SwarmProgress};

/// Upload notices waiting to be printed (more are dropped: the terminal never holds up
/// uploads).
const UPLOAD_NOTICES: usize = 256;

/// One line for an upload notice, for the sharer's terminal; `name` is the downloader's, when
/// the menu's last listing of peers tells who listens at its address.
fn upload_line(n: &UploadNotice, name: Option<String>) -> String {
    let who = |peer: &SocketAddr| match &name {
        Some(name) => format!("{} ({peer})", clean(name)),
        None => peer.to_string(),
    };
    match n {
        UploadNotice::Started {
            peer,
            path,
            size,
            offset: 0,
        } => format!(
            "upload: sending {} ({}) to {}",
            clean(path),
            human_bytes(*size),
            who(peer)
        ),
        UploadNotice::Started {
            peer,
            path,
            size,
            offset,
        } => format!(
            "upload: sending {} to {}, resuming at {} of {}",
            clean(path),
            who(peer),
            human_bytes(*offset),
            human_bytes(*size)
        ),
        UploadNotice::Finished {
            peer,
            path,
            bytes,
            elapsed,
        } => {
            let secs = elapsed.as_secs_f64().max(1e-3);
            format!(
                "upload: sent {} to {}: {} in {secs:.1} s ({}/s)",
                clean(path),
                who(peer),
                human_bytes(*bytes),
                human_bytes((*bytes as f64 / secs) as u64)
            )
        }
        UploadNotice::Failed { peer, path, reason } => format!(
            "upload: {} to {} stopped: {}",
            clean(path),
            who(peer),
            clean(reason)
        ),
    }
}

/// Keeps the upload table of `d` and prints a line per upload notice (in the menu, above the
/// prompt).
async fn print_uploads(
    mut rx: mpsc::Receiver<UploadNotice>,
    printer: Printer,
    uploads: Arc<Mutex<Uploads>>,
    known: Arc<Mutex<Known>>,
) {
    while let Some(n) = rx.recv().await {
        locked(&uploads).record(Instant::now(), &n);
        let peer = match &n {
            UploadNotice::Started { peer, .. }
            | UploadNotice::Finished { peer, .. }
            | UploadNotice::Failed { peer, .. } => *peer,
        };
        let name = locked(&known).name_at(peer);
        printer.line(upload_line(&n, name));
    }
}

pub(crate) async fn run(args: PeerArgs) -> Result<()> {
    run_as(args, false).await
}

/// `run`, or with `ticket`, `p2p share`: no menu, and once registered, a ticket per shared
/// file for `p2p get` (the share may be a single file).
pub(crate) async fn run_as(mut args: PeerArgs, ticket: bool) -> Result<()> {
    let mut shutdown = Shutdown::install();
    let interactive = std::io::stdin().is_terminal() && !ticket;
    // What flags name is checked before any question: a mistake there never costs answers.
    if ticket {
        args.no_menu = true;
        super::share::check_path(&args.share)?;
    } else {
        check_share(&args.share, "--share")?;
    }
    check_folder(&args.downloads, "--downloads")?;
    let given_name = args.name.as_deref().map(nfc);
    if let Some(name) = &given_name {
        validate_name(name)
            .map_err(|e| failure(Kind::InvalidName, format!("{e}: choose another --name")))?;
    }
    let kind = args.transport;
    // `--dht` with no tracker given: the DHT alone; nothing registers, and the menu, whose
    // commands ask the tracker, is not offered.
    let dht_only = args.dht.dht && !args.tracker_given;
    if dht_only && !args.no_menu {
        fail!(
            Kind::Usage,
            "the menu needs a tracker (`i`, `c` and `r` ask it): with --dht and no tracker, pass \
             --no-menu (the peer then serves and announces on the DHT), or give --tracker ADDR"
        );
    }
    let known = Arc::new(Mutex::new(Known::default()));
    let mut input = match args.no_menu {
        true => None,
        false => Some(Input::open(&known)),
    };
    // Uploads are told on the terminal, a line each (see `print_uploads`).
    let (notices, notices_rx) = mpsc::channel(UPLOAD_NOTICES);
    // Each answer is checked as soon as it is given, and asked again when it does not do:
    // the port by listening on it, then the tracker, then the name by registering it.
    let handle = match (args.listen, args.port) {
        (Some(addr), _) => listen(&args, &notices, addr, "--listen").await?,
        (None, Some(port)) => {
            listen(&args, &notices, any_interface(port, args.tracker), "--port").await?
        }
        (None, None) if args.no_menu => {
            listen(&args, &notices, any_interface(0, args.tracker), "--port").await?
        }
        (None, None) => loop {
            let Some(input) = input.as_mut() else {
                fail!(Kind::Usage, "--no-menu needs --port PORT")
            };
            let answer = ask(input, "Enter port number (e.g., 10001): ")
                .await
                .context("no port given: pass --port PORT")?;
            let Ok(port) = answer.parse::<u16>() else {
                println!("`{}` is not a port number (0-65535).", clean(&answer));
                continue;
            };
            match listen(&args, &notices, any_interface(port, args.tracker), "--port").await {
                Ok(handle) => break handle,
                Err(e) if kind_of(&e) == Kind::PortInUse => {
                    println!("Another program listens on {port}: pick another port.")
                }
                Err(e) => return Err(e),
            }
        },
    };
    let local = handle.local_addr();
    let name = match given_name {
        _ if dht_only => given_name.unwrap_or_else(|| format!("dht-{:04x}", rand::random::<u16>())),
        Some(name) => {
            register(&handle, &args, &name).await?;
            name
        }
        None => {
            let Some(input) = input.as_mut() else {
                fail!(Kind::Usage, "--no-menu needs --name NAME")
            };
            handle
                .list_peers(args.tracker)
                .await
                .with_kind(Kind::TrackerUnreachable, || {
                    format!(
                        "cannot reach the tracker at {} over {kind} (start one with `p2p tracker`, or pass --tracker ADDR)",
                        args.tracker
                    )
                })?;
            loop {
                let name = ask(input, "Enter peer name: ")
                    .await
                    .context("no name given: pass --name NAME")?;
                let name = nfc(&name);
                if let Err(e) = validate_name(&name) {
                    println!("{e}: choose another name.");
                    continue;
                }
                match register(&handle, &args, &name).await {
                    Ok(()) => break name,
                    Err(e) if kind_of(&e) == Kind::NameRefused => {
                        println!("{}; choose another name.", describe(&e))
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    };
    let uploads = Arc::new(Mutex::new(Uploads::default()));
    let printer = input.as_ref().map_or_else(Printer::plain, Input::printer);
    tokio::spawn(print_uploads(
        notices_rx,
        printer.clone(),
        uploads.clone(),
        known.clone(),
    ));
    let sharer = match args.dht.dht {
        true => start_dht(&args, &handle, printer.clone(), dht_only, &name).await?,
        false => None,
    };
    let Some(mut input) = input else {
        match dht_only {
            true => println!(
                "peer {name} listening on {local} ({kind}), sharing {}, on the DHT (no tracker)",
                args.share.display(),
            ),
            false => println!(
                "peer {name} listening on {local} ({kind}), sharing {}, registered with {}",
                args.share.display(),
                args.tracker
            ),
        }
        print_secure(&args);
        if ticket {
            let tracker = (!dht_only).then_some(args.tracker);
            super::share::print_tickets(&handle, tracker, &name, sharer, args.tracker_key).await?;
        }
        shutdown.wait().await;
        match dht_only {
            true => handle.shutdown().await,
            false => leave(&handle, args.tracker, &name).await,
        }
        println!("Leaving system. Goodbye!");
        return Ok(());
    };
    let mut menu = Menu {
        handle: handle.clone(),
        tracker: args.tracker,
        downloads: args.downloads.clone(),
        me: name.clone(),
        running: Default::default(),
        uploads,
        known,
        printer: printer.clone(),
        next_download: 0,
        confirming_quit: false,
    };
    tokio::spawn(show_progress(menu.running.clone(), printer));
    println!("Hello, {name} (listening on port {})", local.port());
    print_secure(&args);
    menu.print_peers().await;
    print_commands();
    let quit = menu_loop(&mut menu, &mut input, &mut shutdown, interactive).await;
    if !quit {
        println!();
    }
    leave(&handle, args.tracker, &name).await;
    println!("Leaving system. Goodbye!");
    Ok(())
}

/// Runs menu commands until `q` (true), or until a signal or the end of a terminal's input
/// (false). Input that runs out without a terminal (a script's commands) keeps the peer
/// serving until a signal.
async fn menu_loop(
    menu: &mut Menu,
    input: &mut Input,
    shutdown: &mut Shutdown,
    interactive: bool,
) -> bool {
    input.ask(CHOOSE, true);
    let mut reading = true;
    loop {
        tokio::select! {
            answer = input.answer(), if reading => {
                let step = match answer {
                    Answer::Line(line) => menu.handle_line(&line).await,
                    // Ctrl-C is `q`: asks first when downloads run, and confirms when asked.
                    Answer::Interrupted if menu.confirming_quit => Step::Quit,
                    Answer::Interrupted => menu.handle_line("q").await,
                    // End of input: a terminal means the user left; a pipe or file just
                    // ran out of commands, so keep serving until a signal.
                    Answer::Eof | Answer::Failed(_) if interactive => return false,
                    Answer::Eof | Answer::Failed(_) => {
                        reading = false;
                        continue;
                    }
                };
                match step {
                    Step::Stay => input.ask(CHOOSE, true),
                    Step::Asked => input.ask(QUIT_ANYWAY, false),
                    Step::Quit => return true,
                }
            },
            _ = shutdown.wait() => return false,
        }
    }
}

/// The menu's prompt.
const CHOOSE: &str = "Choose: ";

/// The question `q` asks when downloads run.
const QUIT_ANYWAY: &str = "Quit anyway? [y/N] ";

/// How often the downloads' meters are read (and their live lines refreshed on a console).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Samples every running download's progress each second (for the rates `d` shows) and, on
/// a console whose prompt shows, prints their live lines above it.
async fn show_progress(running: Arc<Mutex<BTreeMap<u64, Running>>>, printer: Printer) {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let lines: Vec<String> = locked(&running)
            .values_mut()
            .map(|r| format!("  ↓ {}", r.line(Instant::now())))
            .collect();
        if let Some(screen) = printer.screen() {
            if screen.prompt_showing() && !lines.is_empty() {
                screen.send(ScreenMsg::Status(lines));
            }
        }
    }
}

/// Says whether sealed sessions are accepted (the default) or required, with the identity
/// key the sessions prove (what a downloader may check it against); nothing with
/// --no-secure.
fn print_secure(args: &PeerArgs) {
    let what = match (args.secure_only, args.no_secure) {
        (true, _) => "sealed sessions only",
        (false, false) => "sealed sessions accepted (plaintext too)",
        (false, true) => return,
    };
    // Without a key (no data folder: warned at start) there are no sealed sessions.
    if let Some(key) = crate::identity::describe().1 {
        println!("{what}, proving identity key {key}");
    }
}

/// Every interface on `port`, in the tracker's address family: the tracker registers the
/// address a peer's messages come from, so a peer of an IPv6 tracker must send from IPv6.
/// (`[::]` serves IPv4 too: the transports listen dual-stack.)
fn any_interface(port: u16, tracker: SocketAddr) -> SocketAddr {
    let ip: std::net::IpAddr = if tracker.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    SocketAddr::new(ip, port)
}

async fn listen(
    args: &PeerArgs,
    notices: &mpsc::Sender<UploadNotice>,
    bind: SocketAddr,
    flag: &str,
) -> Result<EndpointHandle> {
    // The names this peer registers are bound to the user's key at the tracker; the sealed
    // sessions (accepted unless --no-secure) prove that same key.
    let identity = crate::identity::load_or_create()?;
    let accept = !args.no_secure && (identity.is_some() || args.secure || args.secure_only);
    let secure = match (accept, &identity) {
        // Sealed with the tracker only (`--tracker-key`), under the same key.
        (false, Some(identity)) if args.tracker_key.is_some() => Some(SecureSettings {
            seal_requests: false,
            ..SecureSettings::new(identity.clone())
        }),
        (false, _) => None,
        (true, Some(identity)) => Some(SecureSettings {
            require_sealed: args.secure_only,
            seal_requests: args.secure_only,
            ..SecureSettings::new(identity.clone())
        }),
        (true, None) => fail!(
            Kind::Usage,
            "--secure needs an identity key, and there is no data folder to keep one in: set \
             {}=FILE",
            crate::identity::IDENTITY_ENV
        ),
    };
    endpoint(
        args.transport,
        bind,
        Some(args.share.clone()),
        p2p_transports::NetConfig {
            tcp: args.limits.tcp(),
            udp: match args.max_datagram {
                Some(size) => p2p_transports::UdpConfig {
                    max_message: size.into(),
                    loopback_message: size.into(),
                },
                None => Default::default(),
            },
        },
        |c| {
            c.max_uploads = args.max_uploads;
            c.max_uploads_per_peer = args.max_uploads_per_peer;
            c.upload_turn = args.upload_turn;
            c.max_upload_rate = args.max_upload_rate;
            c.rate = args.limits.rate();
            c.sender.idle_timeout = args.idle_timeout;
            c.receiver.idle_timeout = args.idle_timeout;
            c.upload_notices = Some(notices.clone());
            c.identity = identity;
            c.secure = secure;
            crate::session::pin_tracker(c, args.tracker, args.tracker_key);
        },
    )
    .await
    .map_err(|e| bind_error(e, bind, flag))
}

/// Reports of announce rounds waiting to be printed (more are dropped).
const DHT_REPORTS: usize = 4;

/// `--dht`: starts a DHT node beside the endpoint (on its IPv4 address) and keeps what the
/// endpoint shares announced there with its port (see `crate::dht::announce`), printing a
/// line after each round; and keeps this peer's entry (`name`) in its key's signed record
/// (see `crate::dht::publish`), printing a line after each publish. A node that cannot start
/// fails the peer when the DHT is all it has (`dht_only`), else is a warning. Returns the
/// sharer its tickets name (its key and name) when it publishes a record.
async fn start_dht(
    args: &PeerArgs,
    handle: &EndpointHandle,
    printer: Printer,
    dht_only: bool,
    name: &str,
) -> Result<Option<crate::ticket::Sharer>> {
    let bind = crate::dht::bind_for(handle.local_addr());
    let node = match crate::dht::DhtNode::start(&args.dht.dht_bootstrap, bind).await {
        Ok(node) => node,
        Err(e) if dht_only => return Err(failure(Kind::Failed, e.to_string())),
        Err(e) => {
            eprintln!("warning: not on the DHT: {e}");
            return Ok(None);
        }
    };
    let sharer = start_record(args, handle, &node, printer.clone(), name)?;
    let (reports, mut rx) = mpsc::channel(DHT_REPORTS);
    let me = super::share::own_address(handle);
    let port = handle.local_addr().port();
    let announcer = crate::dht::announce::keep_announced(
        node.clone(),
        handle.clone(),
        me,
        args.transport,
        port,
        reports,
    );
    tokio::spawn(announcer);
    tokio::spawn(async move {
        while let Some((done, deferred)) = rx.recv().await {
            let nodes = node.nodes_known().await;
            let mut line = format!(
                "dht: announced {} content hash{} on port {port} ({nodes} DHT nodes known)",
                done.stored,
                if done.stored == 1 { "" } else { "es" }
            );
            if done.failed > 0 {
                line += &format!("; {} failed (run with -v for why)", done.failed);
            }
            if deferred > 0 {
                line += &format!("; {deferred} more in the next rounds");
            }
            printer.line(line);
        }
    });
    Ok(sharer)
}

/// Publishes of the peer record waiting to be printed (more are dropped).
const RECORD_REPORTS: usize = 4;

/// Starts keeping this peer's entry (`name`, its endpoint's addresses and transport) in the
/// signed record of the user's identity key on the DHT, printing a line after each publish;
/// the sharer tickets name. None (with a warning) without an identity key.
fn start_record(
    args: &PeerArgs,
    handle: &EndpointHandle,
    node: &crate::dht::DhtNode,
    printer: Printer,
    name: &str,
) -> Result<Option<crate::ticket::Sharer>> {
    use crate::dht::record::hex;
    let Some(identity) = crate::identity::load_or_create()? else {
        eprintln!("warning: no identity key: no peer record is published on the DHT");
        return Ok(None);
    };
    let key = identity.public();
    let (reports, mut rx) = mpsc::channel(RECORD_REPORTS);
    tokio::spawn(crate::dht::publish::keep_published(
        node.clone(),
        identity,
        name.to_string(),
        args.transport,
        handle.local_addr(),
        reports,
    ));
    let me = name.to_string();
    tokio::spawn(async move {
        while let Some(report) = rx.recv().await {
            let line = match report {
                Ok(done) => {
                    let addrs = record::pick(&done.record.record, &key, Some(&me))
                        .map(|p| {
                            p.addrs
                                .iter()
                                .map(|a| a.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default();
                    format!(
                        "dht: record published: {} at {addrs} under key {} (stored on {} DHT \
                         node{}; `p2p get {}@{} ID --dht` reaches this peer)",
                        clean(&me),
                        hex(&key),
                        done.stored_at,
                        if done.stored_at == 1 { "" } else { "s" },
                        clean(&me),
                        hex(&key),
                    )
                }
                Err(e) => format!("dht: the peer record was not published ({e}); trying again"),
            };
            printer.line(line);
        }
    });
    Ok(Some(crate::ticket::Sharer {
        key,
        name: name.to_string(),
    }))
}

/// Registers `name` with the tracker.
async fn register(handle: &EndpointHandle, args: &PeerArgs, name: &str) -> Result<()> {
    let kind = args.transport;
    let port = handle.local_addr().port();
    match handle
        .register(args.tracker, name, port, kind, args.heartbeat)
        .await
    {
        Ok(()) => Ok(()),
        Err(ServiceError::Refused(reason)) => {
            fail!(Kind::NameRefused, "the tracker refused `{}`: {reason}", clean(name))
        }
        Err(ServiceError::NoAnswer(addr)) => fail!(
            Kind::TrackerUnreachable,
            "no answer from the tracker at {addr} over {kind}: start one with `p2p tracker` or pass --tracker ADDR"
        ),
        Err(e) => bail!("cannot register with the tracker: {e}"),
    }
}

/// How long leaving waits for the tracker to confirm: quitting stays quick when the tracker
/// is gone, and the registration expires anyway.
const LEAVE_WAIT: std::time::Duration = std::time::Duration::from_millis(1500);

async fn leave(handle: &EndpointHandle, tracker: SocketAddr, name: &str) {
    match tokio::time::timeout(LEAVE_WAIT, handle.unregister(tracker, name)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!(
                "warning: could not unregister from the tracker: {} (it will expire)",
                clean(&e.to_string())
            )
        }
        Err(_) => eprintln!(
            "warning: the tracker {tracker} did not confirm within {:.1} s that we left (our entry will expire)",
            LEAVE_WAIT.as_secs_f64()
        ),
    }
    handle.shutdown().await;
}

fn print_commands() {
    println!("Available commands:");
    println!("  i -peer_name       : show the files a peer shares");
    println!("  c -peer_name -id   : download file <id> from that peer");
    println!("  d                  : list the downloads running and the uploads");
    println!("  r                  : refresh the list of peers");
    println!("  ?                  : show these commands");
    println!("  q                  : quit");
}

struct Menu {
    handle: EndpointHandle,
    tracker: SocketAddr,
    downloads: PathBuf,
    me: String,
    /// The downloads running, by a number of their own.
    running: Arc<Mutex<BTreeMap<u64, Running>>>,
    /// The uploads, from the endpoint's notices.
    uploads: Arc<Mutex<Uploads>>,
    /// The peers and files shown so far (for tab completion and to name downloaders).
    known: Arc<Mutex<Known>>,
    /// Where lines that come while the prompt shows go.
    printer: Printer,
    next_download: u64,
    /// `q` was typed with downloads running: the next line answers "Quit anyway?".
    confirming_quit: bool,
}

/// A download started from the menu, until it ends.
struct Running {
    peer: String,
    path: String,
    size: u64,
    progress: watch::Receiver<Progress>,
    meter: Meter,
}

impl Running {
    /// Its line for `d` and the live status: bytes, percent, rate or "stalled", time.
    fn line(&mut self, now: Instant) -> String {
        let p = *self.progress.borrow();
        let total = p.total.unwrap_or(self.size);
        let reading = self.meter.observe(now, p.received, total);
        download_line(&self.path, &self.peer, &reading)
    }
}

/// What the menu does after a line.
enum Step {
    /// Prompt for the next command.
    Stay,
    /// A question was asked: its answer is the next line.
    Asked,
    /// Leave.
    Quit,
}

impl Menu {
    async fn print_peers(&self) {
        match self.handle.list_peers(self.tracker).await {
            Ok(peers) => {
                println!("Current Peers:");
                for p in &peers {
                    println!("  - {}", clean(&p.name));
                }
                locked(&self.known).set_listing(&peers);
            }
            Err(e) => println!(
                "Cannot reach the tracker at {}: {}",
                self.tracker,
                clean(&e.to_string())
            ),
        }
    }

    /// Runs one menu line.
    async fn handle_line(&mut self, line: &str) -> Step {
        if std::mem::take(&mut self.confirming_quit) {
            if matches!(line.trim().to_lowercase().as_str(), "y" | "yes") {
                return Step::Quit;
            }
            println!("Not quitting: the downloads go on.");
            return Step::Stay;
        }
        let words: Vec<&str> = line
            .split_whitespace()
            .map(|w| w.strip_prefix('-').unwrap_or(w))
            .collect();
        // The command letter in any case (`I alice`); names and IDs as typed.
        let command = words.first().map(|w| w.to_lowercase());
        match (command.as_deref(), &words[words.len().min(1)..]) {
            (None, _) => {}
            (Some("q" | "quit" | "exit"), []) => return self.quit(),
            (Some("r" | "refresh"), []) => self.print_peers().await,
            (Some("h" | "help" | "?"), []) => print_commands(),
            (Some("d" | "downloads" | "uploads"), []) => self.print_transfers(),
            (Some("i"), [peer]) => self.show_index(peer).await,
            (Some("c"), [peer, id]) => match id.parse::<FileId>() {
                Ok(id) => self.start_download(peer, id).await,
                Err(e) => println!("{e}"),
            },
            _ => println!(
                "Unknown command `{}`. Use: i NAME (list files), c NAME ID (download), d (downloads), r (refresh), q (quit), ? (help).",
                clean(line.trim())
            ),
        }
        Step::Stay
    }

    /// `q`: leaves at once, or first asks when downloads are running.
    fn quit(&mut self) -> Step {
        let running: Vec<String> = locked(&self.running)
            .values()
            .map(|r| format!("{} from {}", clean(&r.path), clean(&r.peer)))
            .collect();
        if running.is_empty() {
            return Step::Quit;
        }
        println!(
            "{} download(s) running: {}. Quitting stops them; their verified parts are kept, and the same `c PEER ID` resumes them later.",
            running.len(),
            running.join(", ")
        );
        self.confirming_quit = true;
        Step::Asked
    }

    /// `d`: one line per download running, with its progress, then the uploads.
    fn print_transfers(&self) {
        let now = Instant::now();
        let mut running = locked(&self.running);
        if running.is_empty() {
            println!("No downloads running.");
        } else {
            println!("Downloads running:");
            for r in running.values_mut() {
                println!("  {}", r.line(now));
            }
        }
        drop(running);
        let known = locked(&self.known);
        for line in locked(&self.uploads).lines(now, |a| known.name_at(a)) {
            println!("{line}");
        }
    }

    /// `peer`, reached through the tracker, over its transport.
    async fn reach(&self, peer: &str) -> Result<Reached> {
        reach(&self.handle, self.tracker, peer, Mode::Menu, |_| {}).await
    }

    async fn show_index(&self, peer: &str) {
        let reached = match self.reach(peer).await {
            Ok(r) => r,
            Err(e) => return println!("{}", describe(&e)),
        };
        match reached.index().await {
            Ok((share, entries)) => {
                print_index(&reached.info.name, &share, &entries);
                let width = id_width(&entries);
                let files = entries
                    .iter()
                    .map(|e| KnownFile {
                        id: format!("{:0width$}", e.id.0),
                        path: e.path.clone(),
                    })
                    .collect();
                locked(&self.known).set_files(&reached.info.name, files);
            }
            Err(e) => println!("{}", describe(&e)),
        }
    }

    /// `c PEER ID`: downloads the file (or, for a folder's entry, every file of the folder
    /// into `--downloads/FOLDER-NAME/`) in the background, from every holder.
    async fn start_download(&mut self, peer: &str, id: FileId) {
        let prepared = async {
            let reached = self.reach(peer).await?;
            let (_, entries) = reached.index().await?;
            let (via, addr) = (reached.handle, reached.info.addr);
            let entry = entries
                .iter()
                .find(|e| e.id == id)
                .cloned()
                .with_context(|| {
                    format!("{peer} has no file {id}: type `i {peer}` to list its files")
                })?;
            let target = target_of(&self.downloads, &entries, &entry)?;
            Ok::<_, anyhow::Error>((via, addr, entry, target))
        }
        .await;
        let (via, addr, entry, target) = match prepared {
            Ok(p) => p,
            Err(e) => return println!("{}", describe(&e)),
        };
        let (tx, progress) = watch::channel(Progress::default());
        let number = self.next_download;
        self.next_download += 1;
        locked(&self.running).insert(
            number,
            Running {
                peer: peer.to_string(),
                path: entry.path.clone(),
                size: entry.size,
                progress,
                meter: Meter::new(Instant::now()),
            },
        );
        let what = match &target {
            Target::File(_) => String::new(),
            Target::Folder { plan, .. } => format!("folder {} files, ", plan.files.len()),
        };
        println!(
            "Downloading {} ({what}{}) from {} in the background (`d` shows its progress)...",
            clean(&entry.path),
            human_bytes(entry.size),
            clean(peer)
        );
        let from = Origin {
            via,
            tracker: self.tracker,
            peer: peer.to_string(),
            addr,
        };
        let me = self.me.clone();
        let running = self.running.clone();
        let printer = self.printer.clone();
        tokio::spawn(async move {
            let line = match target {
                Target::File(dest) => {
                    let hash = entry.hash;
                    let (result, peers) = from.fetch(entry, dest, tx).await;
                    outcome(result, &peers, hash).await
                }
                Target::Folder { root, plan } => from.fetch_tree(root, plan, tx).await,
            };
            locked(&running).remove(&number);
            printer.line(format!("[{me}] {line}"));
        });
    }
}

/// Where `c` puts `entry` of a listing (`entries`): a file's destination in `downloads`, or
/// for a folder's entry (a collection), its files checked against its hash and the folder
/// they go in.
fn target_of(downloads: &Path, entries: &[IndexEntry], entry: &IndexEntry) -> Result<Target> {
    if !is_collection(entry) {
        return Ok(Target::File(dest_for(downloads, &entry.path)?));
    }
    let plan = collection::plan(entries, &entry.path, Some(entry.hash)).map_err(|e| {
        anyhow::anyhow!(
            "cannot download the folder {}: {e}; type `i` and `c` again",
            clean(&entry.path)
        )
    })?;
    let name = collection::folder_name(&entry.path, "", None)?;
    Ok(Target::Folder {
        root: downloads.join(name),
        plan,
    })
}

/// What `c` downloads.
enum Target {
    /// One file, to this destination.
    File(PathBuf),
    /// A folder's files, below `root`.
    Folder {
        root: PathBuf,
        plan: collection::Plan,
    },
}

/// The peer a `c` downloads from, and how to reach it and the tracker.
struct Origin {
    via: EndpointHandle,
    tracker: SocketAddr,
    peer: String,
    addr: SocketAddr,
}

impl Origin {
    /// Downloads `entry` of the peer to `dest`, joined by every other peer the tracker says
    /// has the content; returns the result and who sent it (for the sentence).
    async fn fetch(
        &self,
        entry: IndexEntry,
        dest: PathBuf,
        tx: watch::Sender<Progress>,
    ) -> (
        Result<p2p_core::service::DownloadReport, ServiceError>,
        String,
    ) {
        let (via, hash) = (&self.via, entry.hash);
        let others = match tokio::time::timeout(
            super::get::OTHERS_WAIT,
            swarm_get::holders(via, self.tracker, hash),
        )
        .await
        {
            Ok(Ok(holders)) => swarm_get::sources(via, holders, hash, &[self.addr]).await,
            _ => Vec::new(),
        };
        if others.is_empty() {
            let result = via.download(self.addr, entry, dest, Some(tx)).await;
            return (result, self.peer.clone());
        }
        let from = format!("{} and {} more", clean(&self.peer), others.len());
        let first = Source {
            name: self.peer.clone(),
            addr: self.addr,
            entry,
            partial: false,
        };
        (swarm_into(via, first, others, dest, tx).await, from)
    }

    /// Downloads the files of a folder (`plan`) below `root`, one after the other, each as
    /// [`Origin::fetch`] does; its progress is published as one download of the folder's total.
    /// Returns the sentence to print.
    async fn fetch_tree(
        &self,
        root: PathBuf,
        plan: collection::Plan,
        tx: watch::Sender<Progress>,
    ) -> String {
        let started = Instant::now();
        let (count, total) = (plan.files.len(), plan.size);
        tx.send_modify(|p| p.total = Some(total));
        let mut done = 0;
        for (entry, rel) in plan.files {
            let dir = rel.parent().map_or(root.clone(), |p| root.join(p));
            let path = entry.path.clone();
            let size = entry.size;
            if let Err(why) = self.fetch_tree_file(entry, &dir, &tx, done).await {
                return format!(
                    "Download of the folder {} from {} stopped at {}: {why}. The same `c` resumes it.",
                    root.display(),
                    clean(&self.peer),
                    clean(&path)
                );
            }
            done += size;
        }
        format!(
            "Saved folder {} ({count} file{}, {}, each BLAKE3 verified) from {} in {:.2} s",
            root.display(),
            if count == 1 { "" } else { "s" },
            human_bytes(total),
            clean(&self.peer),
            started.elapsed().as_secs_f64()
        )
    }

    /// One file of a folder into `dir`: skipped if there with the same content, created if
    /// empty, else fetched; its progress added to the folder's (`done` bytes before it).
    async fn fetch_tree_file(
        &self,
        entry: IndexEntry,
        dir: &Path,
        tx: &watch::Sender<Progress>,
        done: u64,
    ) -> Result<(), String> {
        let dest = dest_for(dir, &entry.path).map_err(|e| describe(&e))?;
        if present(&dest, entry.hash).await? {
            tx.send_modify(|p| p.received = done + entry.size);
            return Ok(());
        }
        if entry.size == 0 && entry.hash == p2p_proto::wire::ContentHash::of(b"") {
            return std::fs::File::create_new(&dest)
                .map(drop)
                .map_err(|e| format!("cannot create {}: {e}", dest.display()));
        }
        let (ftx, mut frx) = watch::channel(Progress::default());
        let folder = tx.clone();
        let forward = tokio::spawn(async move {
            while frx.changed().await.is_ok() {
                let p = *frx.borrow();
                folder.send_modify(|q| {
                    q.received = done + p.received;
                    q.saved = done + p.saved;
                });
            }
        });
        let hash = entry.hash;
        let (result, _) = self.fetch(entry, dest.clone(), ftx).await;
        forward.abort();
        match result {
            Ok(_) => Ok(()),
            Err(ServiceError::DestinationExists(_)) if present(&dest, hash).await? => Ok(()),
            Err(e) => Err(describe_service(&e)),
        }
    }
}

/// Whether `dest` holds content `hash` already (`false`: nothing there); other content there
/// is an error, which says so.
async fn present(dest: &Path, hash: p2p_proto::wire::ContentHash) -> Result<bool, String> {
    if std::fs::symlink_metadata(dest).is_err() {
        return Ok(false);
    }
    let path = dest.to_path_buf();
    let same = tokio::task::spawn_blocking(move || hash_file(&path).ok())
        .await
        .ok()
        .flatten()
        == Some(hash);
    match same {
        true => Ok(true),
        false => Err(format!(
            "{} already exists with other content; move it away",
            dest.display()
        )),
    }
}

/// A multi-source download from `first` and `others`, its progress published as a single
/// download's (for `d` and the live line), its report as one.
async fn swarm_into(
    via: &EndpointHandle,
    first: Source,
    others: Vec<Source>,
    dest: PathBuf,
    tx: watch::Sender<Progress>,
) -> Result<p2p_core::service::DownloadReport, ServiceError> {
    let (hash, size) = (first.entry.hash, first.entry.size);
    let (stx, mut srx) = watch::channel(SwarmProgress::default());
    let forward = tokio::spawn(async move {
        while srx.changed().await.is_ok() {
            let p = srx.borrow().clone();
            tx.send_modify(|q| {
                q.total = Some(size);
                q.received = p.have;
                q.saved = p.saved;
            });
        }
    });
    let mut sources = vec![first];
    sources.extend(others);
    let result = swarm_download(
        via,
        hash,
        size,
        sources,
        None,
        dest,
        stx,
        // The peer is registered: others downloading the same content get what it verified.
        SwarmConfig {
            serve: true,
            ..SwarmConfig::default()
        },
    )
    .await;
    forward.abort();
    result.map(|r| p2p_core::service::DownloadReport {
        path: r.path,
        size: r.size,
        received: r.size - r.resumed_from,
        hash: r.hash,
        elapsed: r.elapsed,
        first_byte: None,
        resumed_from: r.resumed_from,
        discarded: r.discarded,
        refetched: 0,
    })
}

/// What a download from `peer` came to, in a sentence.
async fn outcome(
    result: Result<p2p_core::service::DownloadReport, ServiceError>,
    peer: &str,
    hash: p2p_proto::wire::ContentHash,
) -> String {
    match result {
        Ok(r) => format!(
            "Saved {} ({}, BLAKE3 verified) from {} in {:.2} s",
            r.path.display(),
            human_bytes(r.size),
            clean(peer),
            r.elapsed.as_secs_f64()
        ),
        Err(ServiceError::DestinationExists(path)) => {
            let same = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || hash_file(&path).ok())
                    .await
                    .ok()
                    .flatten()
                    == Some(hash)
            };
            if same {
                format!("{} is already present (same content)", path.display())
            } else {
                format!(
                    "{} already exists with other content; move it away to download it",
                    path.display()
                )
            }
        }
        Err(e) => format!(
            "Download from {} failed: {}",
            clean(peer),
            clean(&describe_service(&e))
        ),
    }
}
