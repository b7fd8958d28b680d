//! The two halves of every cell: the listener, which makes one endpoint of every channel in
//! its place and answers on them, and the client, which tries each from another place.
//!
//! The listener prints one JSON line describing its endpoints ([`Published`]), serves until
//! its stdin closes (or [`LISTENER_LIFETIME`] passes), removes everything it made, and prints
//! a second line with what it heard ([`Heard`]). The client prints one JSON line of
//! [`Attempt`]s. Both are `feather-probe`'s [`SUBCOMMAND`], so that they run inside VMs exactly
//! as any other program there does.
//!
//! Modules: [`shared`] (what both halves and the probe use), `listener`, `client` (with
//! `kernel`, the machine-wide operations, and `bus`, D-Bus), `landlock`; this one only
//! dispatches.

use std::io::BufRead;

mod bus;
mod client;
mod kernel;
mod landlock;
mod listener;
pub mod shared;

use client::attempt;
use landlock::{landlock_listen, landlock_try};
use listener::listen;
pub use shared::{
    print_line, sysv_key, Attempt, ClientPlan, Heard, Published, LISTENER_LIFETIME, SOCKET_DIRS,
    UNIX_KINDS,
};

/// The subcommand of `feather-probe` (crate::run::AGENT_PROGRAM) that runs the agent, on the
/// host and inside VMs.
pub const SUBCOMMAND: &str = "__ipcprobe";

/// `feather-probe __ipcprobe listen --token T [--uevents] [--no-x11]` or `feather-probe
/// __ipcprobe attempt PLAN`.
pub fn main(args: &[String]) -> i32 {
    match args.first().map(String::as_str) {
        Some("listen") => {
            let token = args
                .iter()
                .position(|a| a == "--token")
                .and_then(|i| args.get(i + 1))
                .filter(|t| {
                    !t.is_empty() && t.len() < 40 && t.bytes().all(|b| b.is_ascii_alphanumeric())
                });
            match token {
                Some(token) => listen(
                    token,
                    args.iter().any(|a| a == "--uevents"),
                    !args.iter().any(|a| a == "--no-x11"),
                ),
                None => {
                    eprintln!(
                        "feather-probe __ipcprobe listen: --token needs 1-39 letters or digits"
                    );
                    2
                }
            }
        }
        Some("attempt") => match args.get(1).map(|json| plan_from(json)) {
            Some(Ok(plan)) => {
                print_line(&serde_json::to_string(&attempt(&plan)).unwrap_or_default());
                0
            }
            Some(Err(e)) => {
                eprintln!("feather-probe __ipcprobe attempt: bad plan: {e}");
                2
            }
            None => {
                eprintln!("feather-probe __ipcprobe attempt: missing plan");
                2
            }
        },
        Some("ping") => 0,
        Some("landlock-listen") => landlock_listen(
            args.get(1).map(String::as_str).unwrap_or("fprobe-landlock"),
            !args.iter().any(|a| a == "--unscoped"),
        ),
        Some("landlock-try") => {
            let pid = args.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
            let name = args.get(2).map(String::as_str).unwrap_or("fprobe-landlock");
            landlock_try(pid, name, !args.iter().any(|a| a == "--unscoped"))
        }
        _ => {
            eprintln!(
                "feather-probe __ipcprobe: expected `listen` or `attempt` (used by `feather check ipc`)"
            );
            2
        }
    }
}
/// The client's plan: the JSON argument, or with `-` one line of stdin (for a client that
/// must start before its listener exists: init's first program).
fn plan_from(argument: &str) -> serde_json::Result<ClientPlan> {
    if argument != "-" {
        return serde_json::from_str(argument);
    }
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    serde_json::from_str(&line)
}
