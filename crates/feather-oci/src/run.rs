//! `run`: `create` and `start` in one command, as runc's. In the foreground it waits for the
//! program, passes on the signals it gets, relays the terminal itself when the config asks
//! for one and no `--console-socket` is given, then deletes the container (unless `--keep`)
//! and returns the program's exit code. With `--detach` it returns once the program runs
//! (the init goes to the engine's subreaper, as after `create`).

use std::path::Path;

use anyhow::{Context, Result};
use nix::unistd::Pid;

use crate::create::CreateArgs;
use crate::foreground::{ConsoleListener, Foreground};
use crate::store::Container;

pub struct RunArgs {
    pub create: CreateArgs,
    pub detach: bool,
    /// Keep the stopped container (for `state`, `delete`) instead of deleting it.
    pub keep: bool,
}

/// Returns the exit code to exit with (0 when detached).
pub fn run(root: &Path, mut args: RunArgs) -> Result<i32> {
    // create's re-execution from a read-only mount (feather_sys::own_program) restarts the
    // command: first thing, before the terminal is made.
    feather_sys::own_program::run_from_read_only_mount().context("run")?;
    let id = args.create.id.clone();
    let console = relayed_terminal(root, &mut args)?;
    crate::create::create(root, &args.create)?;
    if args.detach {
        return start_or_remove(root, &id).map(|()| 0);
    }
    // From here on, signals are the program's: held until it runs, then passed on.
    let foreground = Foreground::hold_signals();
    let master = console.as_ref().map(ConsoleListener::receive).transpose();
    let (foreground, master) = match (foreground, master) {
        (Ok(foreground), Ok(master)) => (foreground, master),
        (Err(error), _) | (_, Err(error)) => {
            let _ = crate::ops::delete(root, &id, true);
            return Err(error);
        }
    };
    drop(console);
    start_or_remove(root, &id)?;
    let pid = Pid::from_raw(Container::load(root, &id)?.record.pid);
    let code = foreground.wait(pid, master)?;
    if !args.keep {
        crate::ops::delete(root, &id, true)?;
    }
    Ok(code)
}

/// A console socket of this command's own when the config asks for a terminal and none is
/// given (to relay the terminal in the foreground; refused with `--detach`, as runc).
fn relayed_terminal(root: &Path, args: &mut RunArgs) -> Result<Option<ConsoleListener>> {
    if args.create.console_socket.is_some() || !wants_terminal(&args.create.bundle)? {
        return Ok(None);
    }
    if args.detach {
        anyhow::bail!(
            "process.terminal with --detach: give --console-socket (nobody would relay the terminal)"
        );
    }
    let listener = ConsoleListener::new(root, &args.create.id)?;
    args.create.console_socket = Some(listener.path.clone());
    Ok(Some(listener))
}

fn wants_terminal(bundle: &Path) -> Result<bool> {
    let spec = oci_spec::runtime::Spec::load(bundle.join("config.json"))
        .map_err(|e| anyhow::anyhow!("{}/config.json: {e}", bundle.display()))?;
    Ok(spec.process().as_ref().and_then(|p| p.terminal()) == Some(true))
}

/// `start`; a container that cannot start is removed (run leaves nothing behind).
fn start_or_remove(root: &Path, id: &str) -> Result<()> {
    crate::ops::start(root, id).inspect_err(|_| {
        let _ = crate::ops::delete(root, id, true);
    })
}
