//! The `feather` command line, shared by its two binaries: `feather` (src/main.rs), the small
//! front that runs the frequent commands itself, and `feather-full` (src/bin/feather-full.rs),
//! which runs every command and to which the front hands the others (see [`app`]).

pub mod app;
mod candidates;
mod cli;
mod completion;
mod full;
mod generated;
mod oci;
mod opening;
mod output;
mod parse;
mod progress;
mod service;
mod shuttle;
