//! `feather`: the command-line front of feather VMs. It runs the frequent commands (run, exec,
//! create, start, stop, rm, ls, …) itself and hands the others to `feather-full`, installed
//! beside it, so that this binary, started for every exec and run, stays small (see
//! feather::app).
//!
//! It starts without Rust's runtime (`#![no_main]`: the C library calls [`main`] below). That
//! runtime's start finds the main thread's stack by reading `/proc/self/maps` (through glibc's
//! `pthread_getattr_np`, which also asks for the CPU affinity and the stack's limit) and installs
//! a handler and an alternate stack for SIGSEGV and SIGBUS only to print "has overflowed its
//! stack" before the crash; about 20 system calls and 10 page faults of every exec and run.
//! What the front needs of it — stdin, stdout and stderr open, SIGPIPE ignored — it does
//! itself, and it flushes stdout at its end as the runtime would. The command line is std's all
//! the same (glibc hands it to std before `main`).
// Under `cargo test` the test harness brings its own `main`.
#![cfg_attr(not(test), no_main)]

// The unwinder (what panics and backtraces use) linked into this binary, whole and ahead of
// the libraries the standard library names, so that nothing is left for libgcc_s.so.1: that
// library, which otherwise the loader maps, relocates and initialises at every start (its
// constructor asks the CPU for its features, which traps to the hypervisor in a VM), is then
// not loaded at all. (The release build, scripts/build-release, links libc statically too;
// a debug build keeps it dynamic.)
#[link(name = "gcc_eh", kind = "static", modifiers = "+whole-archive,-bundle")]
extern "C" {}

/// The program's entry, called by the C library's start code with the command line (which
/// std reads from what glibc handed it, not from these).
#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    feather_sys::process::start_without_rusts_runtime();
    // Linked statically (the release build), glibc must never load the host's NSS modules:
    // users and groups from /etc/passwd and /etc/group only (the one such lookup the front
    // links is std's home directory, for a `~` completed with HOME unset).
    #[cfg(target_feature = "crt-static")]
    feather_sys::process::nss_files_only();
    let code = feather::app::front();
    // The runtime's end: what is buffered for stdout is written before the exit.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    feather::app::exit_status(code)
}
