//! `feather-probe`: the IPC probe's agent (crates/feather-ipcprobe), run by `feather check ipc`
//! on the host and inside VMs as `feather-probe __ipcprobe listen|attempt …`, and the keeper of
//! the probe's throw-away VM, `feather-probe __ipcprobe-throwaway STATE_DIR RUN_DIR VM` (a fresh
//! single-threaded process, which may clone a VM's init), and the agent's way into an OCI
//! container, `feather-probe __ipcprobe-enter-oci RUNTIME_ROOT ID ARGV…`. A binary of its own: the probe's code
//! stays out of `feather-keeper`, whose relocated data every running VM pays for twice (its
//! keeper and its init), and the probe never runs the `feather` command line.

use std::process::ExitCode;

use feather_ipcprobe::{agent, run};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.split_first() {
        Some((command, rest)) if command == agent::SUBCOMMAND => agent::main(rest),
        Some((command, rest)) if command == run::THROWAWAY_SUBCOMMAND => run::throwaway_main(rest),
        Some((command, rest)) if command == run::ENTER_OCI_SUBCOMMAND => run::enter_oci_main(rest),
        _ => {
            eprintln!(
                "feather-probe is the IPC probe's agent; `feather check ipc` runs it (usage: \
                 feather-probe {} listen|attempt|ping … | {} STATE_DIR RUN_DIR VM | {} \
                 RUNTIME_ROOT ID ARGV…)",
                agent::SUBCOMMAND,
                run::THROWAWAY_SUBCOMMAND,
                run::ENTER_OCI_SUBCOMMAND
            );
            2
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
