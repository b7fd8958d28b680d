//! `feather`: the command-line front of feather VMs. It runs the frequent commands (run, exec,
//! create, start, stop, rm, ls, …) itself and hands the others to `feather-full`, installed
//! beside it, so that this binary, started for every exec and run, stays small (see
//! feather::app).

// The unwinder (what panics and backtraces use) linked into this binary, whole and ahead of
// the libraries the standard library names, so that nothing is left for libgcc_s.so.1: that
// library, which otherwise the loader maps, relocates and initialises at every start (its
// constructor asks the CPU for its features, which traps to the hypervisor in a VM), is then
// not loaded at all. libc stays dynamic (see docs/design.md, "Exec and the front binary").
#[link(name = "gcc_eh", kind = "static", modifiers = "+whole-archive,-bundle")]
extern "C" {}

fn main() -> std::process::ExitCode {
    feather::app::front()
}
