//! `p2p peer`: share a folder, register with the tracker, and offer the interactive menu
//! (`i`, `c`, `r`, `q`) of the original program, with `d` for the downloads running.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use p2p_core::index::hash_file;
use p2p_core::service::{EndpointHandle, Progress, ServiceError, UploadNotice};
use p2p_proto::tracker::validate_name;
use p2p_proto::wire::FileId;
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};
use tokio::sync::{mpsc, watch};

use crate::cli::PeerArgs;
use crate::failure::{describe, describe_service, fail, failure, kind_of, Kind, WithKind};
use crate::output::{clean, human_bytes, nfc, print_index};
use crate::session::{
    bind_error, check_folder, check_share, dest_for, endpoint, reach, Mode, Reached,
};
use crate::signals::Shutdown;

type StdinLines = Lines<BufReader<Stdin>>;

/// Upload notices waiting to be printed (more are dropped: the terminal never holds up
/// uploads).
const UPLOAD_NOTICES: usize = 256;

/// One line for an upload notice, for the sharer's terminal.
fn upload_line(n: &UploadNotice) -> String {
    match n {
        UploadNotice::Started {
            peer,
            path,
            size,
            offset: 0,
        } => format!(
            "upload: sending {} ({}) to {peer}",
            clean(path),
            human_bytes(*size)
        ),
        UploadNotice::Started {
            peer,
            path,
            size,
            offset,
        } => format!(
            "upload: sending {} to {peer}, resuming at {} of {}",
            clean(path),
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
                "upload: sent {} to {peer}: {} in {secs:.1} s ({}/s)",
                clean(path),
                human_bytes(*bytes),
                human_bytes((*bytes as f64 / secs) as u64)
            )
        }
        UploadNotice::Failed { peer, path, reason } => format!(
            "upload: {} to {peer} stopped: {}",
            clean(path),
            clean(reason)
        ),
    }
}

/// Prints a line per upload notice; in the menu, above a fresh prompt.
async fn print_uploads(mut rx: mpsc::Receiver<UploadNotice>, in_menu: bool) {
    while let Some(n) = rx.recv().await {
        if in_menu {
            // Over the prompt line (its text is typed anew only when it was empty).
            println!("\r{}", upload_line(&n));
            prompt("Choose: ");
        } else {
            println!("{}", upload_line(&n));
        }
    }
}

fn prompt(text: &str) {
    print!("{text}");
    let _ = std::io::stdout().flush();
}

async fn ask(lines: &mut StdinLines, question: &str) -> Result<String> {
    prompt(question);
    match lines.next_line().await? {
        Some(l) => Ok(l.trim().to_string()),
        None => bail!("no answer on standard input"),
    }
}

pub(crate) async fn run(args: PeerArgs) -> Result<()> {
    let mut shutdown = Shutdown::install();
    let interactive = std::io::stdin().is_terminal();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    // What flags name is checked before any question: a mistake there never costs answers.
    check_share(&args.share, "--share")?;
    check_folder(&args.downloads, "--downloads")?;
    let given_name = args.name.as_deref().map(nfc);
    if let Some(name) = &given_name {
        validate_name(name)
            .map_err(|e| failure(Kind::InvalidName, format!("{e}: choose another --name")))?;
    }
    let kind = args.transport;
    // Uploads are told on the terminal, a line each (see `print_uploads`).
    let (notices, notices_rx) = mpsc::channel(UPLOAD_NOTICES);
    // Each answer is checked as soon as it is given, and asked again when it does not do:
    // the port by listening on it, then the tracker, then the name by registering it.
    let handle = match (args.listen, args.port) {
        (Some(addr), _) => listen(&args, &notices, addr, "--listen").await?,
        (None, Some(port)) => {
            listen(
                &args,
                &notices,
                SocketAddr::from(([0, 0, 0, 0], port)),
                "--port",
            )
            .await?
        }
        (None, None) if args.no_menu => {
            listen(
                &args,
                &notices,
                SocketAddr::from(([0, 0, 0, 0], 0)),
                "--port",
            )
            .await?
        }
        (None, None) => loop {
            let answer = ask(&mut lines, "Enter port number (e.g., 10001): ")
                .await
                .context("no port given: pass --port PORT")?;
            let Ok(port) = answer.parse::<u16>() else {
                println!("`{}` is not a port number (0-65535).", clean(&answer));
                continue;
            };
            match listen(
                &args,
                &notices,
                SocketAddr::from(([0, 0, 0, 0], port)),
                "--port",
            )
            .await
            {
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
        Some(name) => {
            register(&handle, &args, &name).await?;
            name
        }
        None if args.no_menu => fail!(Kind::Usage, "--no-menu needs --name NAME"),
        None => {
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
                let name = ask(&mut lines, "Enter peer name: ")
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
    let mut menu = Menu {
        handle: handle.clone(),
        tracker: args.tracker,
        downloads: args.downloads.clone(),
        me: name.clone(),
        running: Default::default(),
        next_download: 0,
        confirming_quit: false,
    };
    let in_menu = !args.no_menu;
    tokio::spawn(print_uploads(notices_rx, in_menu));
    if args.no_menu {
        println!(
            "peer {name} listening on {local} ({kind}), sharing {}, registered with {}",
            args.share.display(),
            args.tracker
        );
        shutdown.wait().await;
    } else {
        println!("Hello, {name} (listening on port {})", local.port());
        menu.print_peers().await;
        print_commands();
        prompt("Choose: ");
        let mut reading = true;
        loop {
            tokio::select! {
                line = lines.next_line(), if reading => match line {
                    Ok(Some(line)) => match menu.handle_line(&line).await {
                        Step::Stay => prompt("Choose: "),
                        Step::Asked => {}
                        Step::Quit => {
                            leave(&handle, args.tracker, &name).await;
                            println!("Leaving system. Goodbye!");
                            return Ok(());
                        }
                    },
                    // End of input: a terminal means the user left; a pipe or file just
                    // ran out of commands, so keep serving until a signal.
                    _ if interactive => break,
                    _ => reading = false,
                },
                _ = shutdown.wait() => break,
            }
        }
        println!();
    }
    leave(&handle, args.tracker, &name).await;
    println!("Leaving system. Goodbye!");
    Ok(())
}

/// Starts the endpoint on `bind` (named by `flag`, for the message when the port is taken).
async fn listen(
    args: &PeerArgs,
    notices: &mpsc::Sender<UploadNotice>,
    bind: SocketAddr,
    flag: &str,
) -> Result<EndpointHandle> {
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
            c.max_upload_rate = args.max_upload_rate;
            c.rate = args.limits.rate();
            c.sender.idle_timeout = args.idle_timeout;
            c.receiver.idle_timeout = args.idle_timeout;
            c.upload_notices = Some(notices.clone());
        },
    )
    .await
    .map_err(|e| bind_error(e, bind, flag))
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
    println!("  d                  : list the downloads running");
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
    started: Instant,
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
                for p in peers {
                    println!("  - {}", clean(&p.name));
                }
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
            (Some("d" | "downloads"), []) => self.print_downloads(),
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
        let running: Vec<String> = {
            let running = self.running.lock().expect("not poisoned");
            running
                .values()
                .map(|r| format!("{} from {}", clean(&r.path), clean(&r.peer)))
                .collect()
        };
        if running.is_empty() {
            return Step::Quit;
        }
        println!(
            "{} download(s) running: {}. Quitting stops them; their verified parts are kept, and the same `c PEER ID` resumes them later.",
            running.len(),
            running.join(", ")
        );
        prompt("Quit anyway? [y/N] ");
        self.confirming_quit = true;
        Step::Asked
    }

    /// `d`: one line per download running, with its progress.
    fn print_downloads(&self) {
        let running = self.running.lock().expect("not poisoned");
        if running.is_empty() {
            println!("No downloads running.");
            return;
        }
        println!("Downloads running:");
        for r in running.values() {
            let p = *r.progress.borrow();
            let total = p.total.unwrap_or(r.size);
            let percent = (p.received * 100).checked_div(total).unwrap_or(100);
            println!(
                "  {} from {}: {} of {} ({percent}%), {:.0} s",
                clean(&r.path),
                clean(&r.peer),
                human_bytes(p.received),
                human_bytes(total),
                r.started.elapsed().as_secs_f64()
            );
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
            Ok((share, entries)) => print_index(&reached.info.name, &share, &entries),
            Err(e) => println!("{}", describe(&e)),
        }
    }

    async fn start_download(&mut self, peer: &str, id: FileId) {
        let prepared = async {
            let reached = self.reach(peer).await?;
            let (_, entries) = reached.index().await?;
            let (via, addr) = (reached.handle, reached.info.addr);
            let entry = entries.into_iter().find(|e| e.id == id).with_context(|| {
                format!("{peer} has no file {id}: type `i {peer}` to list its files")
            })?;
            let dest = dest_for(&self.downloads, &entry.path)?;
            Ok::<_, anyhow::Error>((via, addr, entry, dest))
        }
        .await;
        let (via, addr, entry, dest) = match prepared {
            Ok(p) => p,
            Err(e) => return println!("{}", describe(&e)),
        };
        let (tx, progress) = watch::channel(Progress::default());
        let number = self.next_download;
        self.next_download += 1;
        self.running.lock().expect("not poisoned").insert(
            number,
            Running {
                peer: peer.to_string(),
                path: entry.path.clone(),
                size: entry.size,
                progress,
                started: Instant::now(),
            },
        );
        println!(
            "Downloading {} ({}) from {} in the background (`d` shows its progress)...",
            clean(&entry.path),
            human_bytes(entry.size),
            clean(peer)
        );
        let peer = peer.to_string();
        let me = self.me.clone();
        let hash = entry.hash;
        let running = self.running.clone();
        tokio::spawn(async move {
            let result = via.download(addr, entry, dest, Some(tx)).await;
            running.lock().expect("not poisoned").remove(&number);
            match result {
                Ok(r) => println!(
                    "\n[{me}] Saved {} ({}, BLAKE3 verified) from {peer} in {:.2} s",
                    r.path.display(),
                    human_bytes(r.size),
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
                        println!(
                            "\n[{me}] {} is already present (same content)",
                            path.display()
                        );
                    } else {
                        println!(
                            "\n[{me}] {} already exists with other content; move it away to download it",
                            path.display()
                        );
                    }
                }
                Err(e) => println!(
                    "\n[{me}] Download from {} failed: {}",
                    clean(&peer),
                    clean(&describe_service(&e))
                ),
            }
            prompt("Choose: ");
        });
    }
}
