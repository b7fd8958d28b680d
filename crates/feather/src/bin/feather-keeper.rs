//! `feather-keeper`: a running VM's keeper (host side) and, re-executed from inside the VM, its
//! init (pid 1). Both stay resident for the VM's whole life, so they run this small binary,
//! which links only the VM core (crates/feather-vm), not the command line: its relocated data,
//! heap and touched code are what an idle VM costs (docs/benchmarks.md, 3a).
//!
//! `feather start` runs `feather-keeper __keeper --state-dir DIR --run-dir DIR --ready-fd FD
//! [--restore] [--terminal TTY] NAME`; the keeper clones the VM's init, which re-executes this binary from
//! inside the VM as `feather-keeper __init FD RESUMED` (see feather_vm::init).
//!
//! It is also the helper that work entering a VM's mount namespace runs as: a fresh
//! single-threaded process, which the multi-threaded keeper cannot be. The shuttle broker runs
//! `feather-keeper __shuttle-share PLAN` (hands a path of one VM to another) and
//! `feather-keeper __dbus-proxy PLAN` (xdg-dbus-proxy, jailed). No feather process runs the
//! `feather` command line.

use std::process::ExitCode;

use feather_core::StateRoot;
use feather_shuttle::{dbus, transfer};
use feather_vm::init::INIT_SUBCOMMAND;
use feather_vm::keeper::KEEPER_SUBCOMMAND;

const USAGE: &str = "feather-keeper keeps a running feather VM; `feather start VM` starts it \
    (usage: feather-keeper __keeper --state-dir DIR --run-dir DIR --ready-fd FD [--restore] \
    [--terminal TTY] NAME); its other subcommands are feather's helper processes \
    (__shuttle-share, __dbus-proxy)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.split_first() {
        Some((command, rest)) if command == KEEPER_SUBCOMMAND => keeper(rest),
        Some((command, [fd, resumed])) if command == INIT_SUBCOMMAND => init(fd, resumed),
        Some((command, [plan])) if command == transfer::HELPER_SUBCOMMAND => {
            Ok(transfer::helper_main(plan))
        }
        Some((command, [plan])) if command == dbus::JAIL_SUBCOMMAND => Ok(dbus::jail_main(plan)),
        _ => Err(USAGE.to_owned()),
    };
    match code {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(why) => {
            eprintln!("feather-keeper: {why}");
            ExitCode::from(2)
        }
    }
}

fn keeper(args: &[String]) -> Result<i32, String> {
    let (mut state_dir, mut run_dir, mut ready_fd, mut restore, mut terminal, mut name) =
        (None, None, None, false, None, None);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().cloned().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--state-dir" => state_dir = Some(value()?),
            "--run-dir" => run_dir = Some(value()?),
            "--ready-fd" => ready_fd = Some(value()?),
            "--restore" => restore = true,
            // Where `ask` policy rules ask: the terminal `feather start` ran from.
            "--terminal" => terminal = Some(value()?.into()),
            _ if name.is_none() && !arg.starts_with('-') => name = Some(arg.clone()),
            _ => return Err(format!("unexpected argument {arg:?}; {USAGE}")),
        }
    }
    let (Some(state_dir), Some(run_dir), Some(ready_fd), Some(name)) =
        (state_dir, run_dir, ready_fd, name)
    else {
        return Err(USAGE.to_owned());
    };
    let ready = inherited(&ready_fd)?;
    let name = name.parse().map_err(|e| format!("{e}"))?;
    let root = StateRoot::with_dirs(state_dir.into(), run_dir.into());
    Ok(feather_vm::keeper::main_background(
        root, name, ready, restore, terminal,
    ))
}

fn init(fd: &str, resumed: &str) -> Result<i32, String> {
    let keeper = inherited(fd)?;
    let resumed = serde_json::from_str(resumed).map_err(|e| format!("{INIT_SUBCOMMAND}: {e}"))?;
    feather_vm::init::resume(keeper.into(), resumed)
}

/// The descriptor named on the command line by the process that started this one.
fn inherited(fd: &str) -> Result<std::os::fd::OwnedFd, String> {
    let fd = fd
        .parse()
        .map_err(|_| format!("{fd:?} is not a descriptor number"))?;
    // SAFETY: the keeper's (or init's) parent left exactly this descriptor open for it and
    // names it once on the command line; it is taken here, at start, before this process
    // opens or wraps any descriptor of its own, and main takes each named number once.
    unsafe { feather_sys::process::inherited_fd(fd) }.map_err(|e| e.to_string())
}
