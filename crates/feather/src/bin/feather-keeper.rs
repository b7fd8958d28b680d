//! `feather-keeper`: a running VM's keeper (host side) and, re-executed from inside the VM, its
//! init (pid 1). Both stay resident for the VM's whole life, so they run this small binary,
//! which links only the VM core (crates/feather-vm), not the command line: its relocated data,
//! heap and touched code are what an idle VM costs (docs/benchmarks.md, 3a).
//!
//! Its command lines are built and parsed by one module, feather_vm::launch: `feather start`
//! runs it as a background keeper, which clones the VM's init, which re-executes this binary
//! from inside the VM.
//!
//! It is also the helper that work entering a VM's mount namespace runs as: a fresh
//! single-threaded process, which the multi-threaded keeper cannot be. The shuttle broker runs
//! `feather-keeper __shuttle-share PLAN` (hands a path of one VM to another) and
//! `feather-keeper __dbus-proxy PLAN` (xdg-dbus-proxy, jailed). No feather process runs the
//! `feather` command line.
//!
//! Like the front (crates/feather/src/main.rs), it starts without Rust's runtime and links the
//! unwinder in: it is exec'd twice at every start of a kept VM (the keeper, then init again
//! from inside the VM through the VM's copy of the loader), and each time the runtime read
//! `/proc/self/maps` and set up a stack-overflow handler, and the loader mapped, relocated and
//! initialised libgcc_s.so.1 (whose copy init then needed bound into the VM as well).
// Under `cargo test` the test harness brings its own `main`, and nothing calls the rest.
#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code))]

// The unwinder linked in whole, so that nothing is left for libgcc_s.so.1 (see the front).
#[link(name = "gcc_eh", kind = "static", modifiers = "+whole-archive,-bundle")]
extern "C" {}

use std::ffi::OsString;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;

use feather_core::StateRoot;
use feather_shuttle::{dbus, transfer};
use feather_vm::launch::{FinishArgs, InitArgs, KeeperArgs, Launch};
use feather_vm::peers::RootPeers;

/// The program's entry, called by the C library's start code (std reads the command line from
/// what glibc handed it, not from these).
#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    feather_sys::process::start_without_rusts_runtime();
    let code = run();
    // The runtime's end: what is buffered for stdout is written before the exit.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::ffi::c_int::from(code)
}

/// What the program does; its exit status.
fn run() -> u8 {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if let Some(code) = helper(&args) {
        return u8::try_from(code).unwrap_or(1);
    }
    let code = match Launch::parse(&args) {
        Ok(Launch::Keeper(args)) => {
            let named: Vec<RawFd> = std::iter::once(args.ready_fd)
                .chain(args.netns_fd)
                .collect();
            take_only(&named).and_then(|()| keeper(args))
        }
        Ok(Launch::Init(args)) => init(args),
        Ok(Launch::Finish(args)) => take_only(&finish_fds(&args)).and_then(|()| finish(args)),
        Err(e) => Err(anyhow::Error::from(e)),
    };
    match code {
        Ok(code) => u8::try_from(code).unwrap_or(1),
        Err(e) => {
            eprintln!("feather-keeper: {e:#}");
            2
        }
    }
}

/// One of feather's helper processes, if `args` name one: its exit status.
fn helper(args: &[OsString]) -> Option<i32> {
    let (main, plan): (fn(&str) -> i32, _) = match args {
        [command, plan] if command == transfer::HELPER_SUBCOMMAND => (transfer::helper_main, plan),
        [command, plan] if command == dbus::JAIL_SUBCOMMAND => (dbus::jail_main, plan),
        _ => return None,
    };
    let plan = plan.to_str()?;
    if let Err(e) = take_only(&[]) {
        eprintln!("feather-keeper: {e:#}");
        return Some(2);
    }
    Some(main(plan))
}

fn keeper(args: KeeperArgs) -> anyhow::Result<i32> {
    let ready = inherited(args.ready_fd)?;
    let netns = args.netns_fd.map(inherited).transpose()?;
    if let Some(netns) = &netns {
        feather_sys::net::another_network_namespace(std::os::fd::AsFd::as_fd(netns))
            .map_err(|why| anyhow::anyhow!("--netns-fd {}: {why}", args.netns_fd.unwrap_or(-1)))?;
    }
    let root = StateRoot::with_dirs(args.state_dir, args.run_dir);
    // The other VMs of the state root, as the VM's broker reaches them; the binary wires them
    // in, so that the keeper depends on nothing above it.
    let peers = Arc::new(RootPeers::new(&root));
    Ok(feather_vm::keeper::main_background(
        root,
        args.name,
        ready,
        args.restore,
        netns,
        args.terminal,
        peers,
    ))
}

fn init(args: InitArgs) -> anyhow::Result<i32> {
    let keeper = inherited(args.keeper_fd)?;
    feather_vm::init::resume(keeper.into(), args.resumed)
}

/// Finishes a throw-away VM's teardown that the `feather run --rm` which ran it hands over
/// (feather_vm::finisher: started once the VM's command runs, it waits for that first), holding its
/// keeper lock, which comes with it, until done; then lingers for the root's network.
fn finish(args: FinishArgs) -> anyhow::Result<i32> {
    let socket = inherited(args.socket_fd)?;
    // It may linger for minutes after its caller is gone: in no folder of the caller's (which
    // it would keep from being unmounted), its paths made absolute first. (Its process group
    // is its own already: the terminal's signals are not for it.)
    let state_dir = std::path::absolute(&args.state_dir).unwrap_or(args.state_dir);
    let run_dir = std::path::absolute(&args.run_dir).unwrap_or(args.run_dir);
    let _ = std::env::set_current_dir("/");
    let root = StateRoot::with_dirs(state_dir, run_dir);
    // Started with /dev/null as its stdio (the caller's terminal is not its own, and the caller
    // is gone by the time it has something to say): what it says goes to the root's teardown
    // log, from before its wait (opened while the VM runs, off the run's way to its exit
    // status). Without one, it still tears down.
    if let Ok(log) = root.open_teardown_log() {
        let _ = feather_sys::process::redirect_stderr(&log);
    }
    // The run ended without handing its teardown over (killed, or failed, after its VM had
    // been told Start): nothing is this process's to do; what is left, the next feather
    // command cleans up.
    let Some((lock, held)) = feather_vm::finisher::await_hand_over(&socket) else {
        return Ok(0);
    };
    drop(socket);
    // The VM's mount namespace, held by its keeper so that init's exit did not unmount it, and
    // its layer in memory, let go first now that the keeper has let go of its own copies (the
    // socket's end): the VM's tree is unmounted before its folders are removed.
    held.release();
    let lingering = feather_vm::lifecycle::finish_handed_off(&root, &args.folder);
    drop(lock);
    if let Some(lingering) = lingering {
        feather_vm::lifecycle::linger_for_the_next_vm(lingering);
    }
    Ok(0)
}

/// Keeps of the descriptors this process's starter left open only stdin, stdout, stderr and
/// those it named (`named`), all close-on-exec: whatever else the starter leaked (a caller's
/// descriptor of `feather start`, one of another thread) is closed, and what this process
/// takes over never reaches the programs it starts (nft, criu, the share helper) unnamed.
/// Not init's: it runs in the VM and keeps its own rules.
fn take_only(named: &[RawFd]) -> anyhow::Result<()> {
    feather_sys::process::close_other_fds(named);
    Ok(feather_sys::process::inherited_close_on_exec()?)
}

/// The descriptors a finisher is passed: its end of the front's socket.
fn finish_fds(args: &FinishArgs) -> Vec<RawFd> {
    vec![args.socket_fd]
}

/// The descriptor named on the command line by the process that started this one.
fn inherited(fd: RawFd) -> anyhow::Result<OwnedFd> {
    // SAFETY: the keeper's (or init's) parent left exactly this descriptor open for it and
    // names it once on the command line; it is taken here, at start, before this process
    // opens or wraps any descriptor of its own, and main takes each named number once.
    Ok(unsafe { feather_sys::process::inherited_fd(fd) }?)
}
