//! `feather`: the command-line front of feather VMs. It runs the frequent commands (run, exec,
//! create, start, stop, rm, ls, …) itself and hands the others to `feather-full`, installed
//! beside it, so that this binary, started for every exec and run, stays small (see
//! feather::app).

fn main() -> std::process::ExitCode {
    feather::app::front()
}
