//! Prints the table of calls the VM seccomp filter denies, with their reasons, as
//! `crates/feather-confine/seccomp-table.md` and `docs/confinement.md` hold it:
//!
//! ```sh
//! cargo run -q -p feather-confine --example seccomp-table > crates/feather-confine/seccomp-table.md
//! ```
//!
//! (The unit test `the_documented_table_is_the_filter` fails while either file is stale.)

fn main() {
    print!("{}", feather_confine::seccomp::markdown_table());
}
