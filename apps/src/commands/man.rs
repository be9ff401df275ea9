//! `p2p man [COMMAND]`: the manual page (roff) of p2p or of one of its commands, generated
//! from the same definitions as the parser.

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::{Cli, ManArgs};

pub(crate) fn run(args: ManArgs) -> Result<()> {
    let mut cmd = Cli::command();
    // Built, each subcommand knows its full name (`p2p-get`) and usage (`p2p get ...`).
    cmd.build();
    let page = match &args.command {
        None => cmd,
        Some(name) => cmd
            .find_subcommand(name)
            .cloned()
            .with_context(|| format!("no command `{name}`: run `p2p --help` to list them"))?,
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut out)
        .context("cannot render the manual page")?;
    use std::io::Write;
    std::io::stdout()
        .write_all(&out)
        .context("cannot write the manual page")?;
    Ok(())
}
