//! Shell completion that knows what only feather knows: the installed script calls back into
//! `feather` (with `FEATHER_COMPLETE=SHELL` in its environment) for each completion, so that
//! subcommands, flags and the names of this state root's VMs are completed from the same
//! clap definitions the parser uses.

use clap::CommandFactory;
use clap_complete::env::{Bash, EnvCompleter, Fish, Zsh};
use clap_complete::CompleteEnv;

use crate::cli::Cli;

/// The variable that turns a run of `feather` into a completion request. Feather's own name,
/// not clap's default `COMPLETE`, so that an unrelated setting never hijacks a command.
const REQUEST: &str = "FEATHER_COMPLETE";

/// The name a shell finds the binary by, both what is completed and what answers.
const BIN: &str = "feather";

/// Answers a completion request and exits, if this run is one; otherwise returns.
pub fn answer_if_asked() {
    CompleteEnv::with_factory(Cli::command)
        .var(REQUEST)
        .bin(BIN)
        .completer(BIN)
        .complete();
}

/// `feather completions SHELL`: the script a shell loads once.
pub fn registration(
    shell: clap_complete::Shell,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let completer: &dyn EnvCompleter = match shell {
        clap_complete::Shell::Bash => &Bash,
        clap_complete::Shell::Zsh => &Zsh,
        clap_complete::Shell::Fish => &Fish,
        other => return static_script(other, out),
    };
    completer.write_registration(REQUEST, BIN, BIN, BIN, out)
}

/// Shells the call-back protocol does not serve get the static script (no VM names).
fn static_script(shell: clap_complete::Shell, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    clap_complete::generate(shell, &mut Cli::command(), BIN, out);
    Ok(())
}
