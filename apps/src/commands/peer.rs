//! `p2p peer`: share a folder, register with the tracker, and offer the interactive menu
//! (`i`, `c`, `r`, `q`) of the original program.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use p2p_core::index::hash_file;
use p2p_core::service::{EndpointHandle, ServiceError};
use p2p_proto::tracker::validate_name;
use p2p_proto::wire::FileId;
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};

use crate::cli::PeerArgs;
use crate::failure::{describe, describe_service, fail, failure, Kind};
use crate::output::{clean, human_bytes, print_index};
use crate::session::{
    bind_error, check_folder, check_share, dest_for, endpoint, reach, Mode, Reached,
};
use crate::signals::Shutdown;

type StdinLines = Lines<BufReader<Stdin>>;

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
    let bind = match (args.listen, args.port) {
        (Some(addr), _) => addr,
        (None, Some(port)) => SocketAddr::from(([0, 0, 0, 0], port)),
        (None, None) if args.no_menu => SocketAddr::from(([0, 0, 0, 0], 0)),
        (None, None) => loop {
            let answer = ask(&mut lines, "Enter port number (e.g., 10001): ")
                .await
                .context("no port given: pass --port PORT")?;
            match answer.parse::<u16>() {
                Ok(p) => break SocketAddr::from(([0, 0, 0, 0], p)),
                Err(_) if interactive => println!("`{answer}` is not a port number (0-65535)."),
                Err(_) => fail!(Kind::Usage, "`{answer}` is not a port number (0-65535)"),
            }
        },
    };
    let name = match args.name.clone() {
        Some(n) => n,
        None if args.no_menu => fail!(Kind::Usage, "--no-menu needs --name NAME"),
        None => ask(&mut lines, "Enter peer name: ")
            .await
            .context("no name given: pass --name NAME")?,
    };
    validate_name(&name)
        .map_err(|e| failure(Kind::InvalidName, format!("{e}: choose another --name")))?;
    check_share(&args.share, "--share")?;
    check_folder(&args.downloads, "--downloads")?;
    let kind = args.transport;
    let handle = endpoint(
        kind,
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
        },
    )
    .await
    .map_err(|e| {
        let flag = if args.listen.is_some() {
            "--listen"
        } else {
            "--port"
        };
        bind_error(e, bind, flag)
    })?;
    let local = handle.local_addr();
    match handle
        .register(args.tracker, &name, local.port(), kind, args.heartbeat)
        .await
    {
        Ok(()) => {}
        Err(ServiceError::Refused(reason)) => {
            fail!(Kind::NameRefused, "the tracker refused `{name}`: {reason}")
        }
        Err(ServiceError::NoAnswer(addr)) => fail!(
            Kind::TrackerUnreachable,
            "no answer from the tracker at {addr} over {kind}: start one with `p2p tracker` or pass --tracker ADDR"
        ),
        Err(e) => bail!("cannot register with the tracker: {e}"),
    }
    let menu = Menu {
        handle: handle.clone(),
        tracker: args.tracker,
        downloads: args.downloads.clone(),
        me: name.clone(),
    };
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
                    Ok(Some(line)) => {
                        if !menu.handle_line(&line).await {
                            leave(&handle, args.tracker, &name).await;
                            println!("Leaving system. Goodbye!");
                            return Ok(());
                        }
                        prompt("Choose: ");
                    }
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
    println!("  r                  : refresh the list of peers");
    println!("  ?                  : show these commands");
    println!("  q                  : quit");
}

struct Menu {
    handle: EndpointHandle,
    tracker: SocketAddr,
    downloads: PathBuf,
    me: String,
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

    /// Runs one menu line; returns false on `q`.
    async fn handle_line(&self, line: &str) -> bool {
        let words: Vec<&str> = line
            .split_whitespace()
            .map(|w| w.strip_prefix('-').unwrap_or(w))
            .collect();
        // The command letter in any case (`I alice`); names and IDs as typed.
        let command = words.first().map(|w| w.to_lowercase());
        match (command.as_deref(), &words[words.len().min(1)..]) {
            (None, _) => {}
            (Some("q" | "quit" | "exit"), []) => return false,
            (Some("r" | "refresh"), []) => self.print_peers().await,
            (Some("h" | "help" | "?"), []) => print_commands(),
            (Some("i"), [peer]) => self.show_index(peer).await,
            (Some("c"), [peer, id]) => match id.parse::<FileId>() {
                Ok(id) => self.start_download(peer, id).await,
                Err(e) => println!("{e}"),
            },
            _ => println!(
                "Unknown command `{}`. Use: i NAME (list files), c NAME ID (download), r (refresh), q (quit), ? (help).",
                clean(line.trim())
            ),
        }
        true
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

    async fn start_download(&self, peer: &str, id: FileId) {
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
        println!(
            "Downloading {} ({}) from {peer} in the background...",
            clean(&entry.path),
            human_bytes(entry.size)
        );
        let peer = peer.to_string();
        let me = self.me.clone();
        let hash = entry.hash;
        tokio::spawn(async move {
            match via.download(addr, entry, dest, None).await {
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
