//! `p2p completions SHELL`: a completion script for SHELL, generated from the same
//! definitions as the parser, so it never lags behind the flags.

use anyhow::Result;
use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};

pub(crate) fn run(args: CompletionsArgs) -> Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "p2p", &mut std::io::stdout());
    Ok(())
}
