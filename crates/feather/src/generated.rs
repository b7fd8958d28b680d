//! What is generated from the command line's own clap definitions, so that it can never
//! drift from the parser: shell completion scripts and the manual pages.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::Cli;

/// `feather completions SHELL`: the script, made whole before it is written (a closed pipe is
/// an error like any other here). Bash, zsh and fish get a script that asks `feather` itself
/// what to complete (crate::completion), so it also knows the VMs' names.
pub fn completions(shell: clap_complete::Shell, out: &mut impl Write) -> anyhow::Result<()> {
    let mut script = Vec::new();
    crate::completion::registration(shell, &mut script)
        .and_then(|()| out.write_all(&script))
        .and_then(|()| out.flush())
        .context("cannot write the completion script")
}

/// `feather man DIR`: `feather.1` and one page per command (`feather-create.1`,
/// `feather-service-start.1`, …), the hidden internal commands left out.
pub fn man_pages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot make the folder {} for manual pages", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write manual pages into {}", dir.display()))
}
