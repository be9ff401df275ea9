//! `p2p`: share files between peers through a tracker, over UDP or TCP.

mod cli;
mod commands;
mod output;
mod session;
mod signals;

use clap::Parser;

use cli::{Cli, Command};
use commands::{completions, demo, get, ls, man, peer, peers, tracker};

fn main() {
    let cli = Cli::parse();
    // Text generated from the definitions: no runtime, no logs.
    let generated = match cli.command {
        Command::Completions(args) => Some(completions::run(args)),
        Command::Man(args) => Some(man::run(args)),
        command => {
            run(command, cli.verbose);
            None
        }
    };
    if let Some(Err(e)) = generated {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(command: Command, verbose: u8) {
    let log = output::init_logging(verbose);
    // A one-shot command runs one transfer at a time: on one thread, its socket reads and
    // its protocol work never wait for each other across cores (pieces are still hashed on a
    // thread of their own). Peers, trackers and the demo serve many at once.
    let mut builder = match command {
        Command::Get(_) | Command::Peers(_) | Command::Ls(_) => {
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
            Command::Peers(args) => peers::run(args).await,
            Command::Ls(args) => ls::run(args).await,
            Command::Get(args) => get::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Completions(_) | Command::Man(_) => unreachable!("run without a runtime"),
        }
    });
    if let Err(e) = result {
        // Whatever came from the network (a peer's abort reason, a tracker's refusal) is
        // escaped: it must not drive the terminal.
        eprintln!("error: {}", output::clean(&format!("{e:#}")));
        drop(log); // the log lines still queued go out first (waits at most a second)
        std::process::exit(1);
    }
    // Background tasks (connections, endpoints) must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    drop(log);
}
