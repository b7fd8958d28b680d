//! The registry entries killed test runs left, forgotten by every test crate that makes state
//! roots: tests/support's (functional, security, web) and tests/oci's, which includes this
//! file (`#[path]`), so that a run of one suite alone sweeps too. Here rather than in
//! crates/feather-testkit, which every crate's unit tests use and which would otherwise
//! depend on feather-core, itself one of those crates.

use std::path::Path;

use feather_testkit::TESTS_DIR;

/// Forgets, once per test process, the registry entries of roots in [`TESTS_DIR`] whose folder
/// is gone and whose test process has ended (`feather_testkit::made_by_an_ended_test`): a
/// test killed, its folders removed since (`/tmp/feather-tests` cleared by hand), left entries
/// that every start on the host went on reading. Never a live test's entry (its process
/// exists), nor one of a root whose folder is still there (tests/support's sweep tears those
/// down), nor any outside [`TESTS_DIR`]; whatever kind of folder holds it (a functional root,
/// a scratch base, an OCI test's folder).
pub fn forget_entries_of_ended_tests() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(forget_entries_of_ended_tests_now);
}

/// [`forget_entries_of_ended_tests`], now.
pub fn forget_entries_of_ended_tests_now() {
    feather_core::roots::Registry::host()
        .forget_gone_below(Path::new(TESTS_DIR), feather_testkit::made_by_an_ended_test)
}
