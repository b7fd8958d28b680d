//! `feather-full`: every command of the `feather` command line, the web view, migration,
//! checkpoints, `check`, manual pages and completion scripts included; `feather` hands it those
//! (see feather::app). It parses the same command line, so it may also be run directly.

fn main() -> std::process::ExitCode {
    feather::app::full()
}
