//! `p2p`: share files between peers through a tracker, over UDP or TCP.

mod address;
mod cli;
mod commands;
mod config;
mod console;
mod dht;
mod failure;
mod identity;
mod output;
mod session;
mod signals;
mod ticket;

use cli::Command;
use commands::{completions, demo, get, ls, man, peer, peers, resolve, tracker};
use failure::Kind;

fn main() {
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
    };
    // Text generated from the definitions: no runtime, no logs.
    let generated = match cli.command {
        Command::Completions(args) => completions::run(args),
        Command::Man(args) => man::run(args),
        Command::Config(args) => commands::config::run(args),
        command => run(command, cli.verbose, cli.color),
    };
    if let Err(e) = generated {
        exit_with(&e, false);
    }
}

/// Exits on a command line clap refused (code 2), as JSON too when `--json` was asked for;
/// `--help` and `--version` print and exit 0.
fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    let asked_json = std::env::args_os().any(|a| a == "--json");
    if asked_json && !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let message = e.render().to_string();
        let first = message.lines().next().unwrap_or_default();
        let first = first.strip_prefix("error: ").unwrap_or(first);
        print_json_error(Kind::Usage, first);
    }
    e.exit()
}

fn print_json_error(kind: Kind, message: &str) {
    println!(
        "{}",
        serde_json::json!({"error": {"kind": kind.name(), "message": message}})
    );
}

/// Prints `e` (on stderr; also as JSON on stdout when `json`) and exits with its kind's code.
fn exit_with(e: &anyhow::Error, json: bool) -> ! {
    let kind = failure::kind_of(e);
    // Whatever came from the network (a peer's abort reason, a tracker's refusal) is
    // escaped: it must not drive the terminal.
    let message = failure::describe(e);
    if json {
        print_json_error(kind, &message);
    }
    eprintln!("error: {message}");
    std::process::exit(kind.exit_code())
}

fn run(command: Command, verbose: u8, color: cli::Color) -> anyhow::Result<()> {
    let log = output::init_logging(verbose, color);
    tracing::debug!(version = env!("CARGO_PKG_VERSION"), "starting {command:?}");
    let json = match &command {
        Command::Get(a) => a.json,
        Command::Peers(a) => a.json,
        Command::Ls(a) => a.json,
        Command::Resolve(a) => a.json,
        _ => false,
    };
    // A one-shot command runs one transfer at a time: on one thread, its socket reads and
    // its protocol work never wait for each other across cores (pieces are still hashed on a
    // thread of their own). Peers, trackers and the demo serve many at once.
    let mut builder = match command {
        Command::Get(_) | Command::Peers(_) | Command::Ls(_) | Command::Resolve(_) => {
            tokio::runtime::Builder::new_current_thread()
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = builder
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    let result = runtime.block_on(async move {
        match command {
            Command::Tracker(args) => tracker::run(args).await,
            Command::Peer(args) => peer::run(args).await,
            Command::Share(args) => commands::share::run(args).await,
            Command::Peers(args) => peers::run(args).await,
            Command::Ls(args) => ls::run(args).await,
            Command::Get(args) => get::run(args).await,
            Command::Resolve(args) => resolve::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Completions(_) | Command::Man(_) | Command::Config(_) => {
                unreachable!("run without a runtime")
            }
        }
    });
    if let Err(e) = result {
        drop(log); // the log lines still queued go out first (waits at most a second)
        exit_with(&e, json);
    }
    // Background tasks (connections, endpoints) must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    drop(log);
    Ok(())
}
