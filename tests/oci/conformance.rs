//! opencontainers' own conformance suite, runtime-tools' validation programs, run against
//! feather-oci by `scripts/oci-conformance` (built from tests/oci/runtime-tools with Debian's Go
//! packages, which setup.sh installs). Every case must pass except those listed, each with its
//! reason, in tests/oci/conformance-exceptions.txt; a new failure fails this test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{run, runtime_bin, Scratch};

/// The suite's programs make about 4000 cases here; far fewer means it did not run.
const FEWEST_CASES: usize = 3500;

/// The checkout (this test belongs to crates/feather-oci).
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `PROGRAM CASE` → reason, from the exceptions file.
fn exceptions() -> BTreeMap<String, String> {
    let path = repository().join("tests/oci/conformance-exceptions.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (key, reason) = line
                .split_once(" | ")
                .unwrap_or_else(|| panic!("{}: no reason in {line:?}", path.display()));
            (key.trim().to_owned(), reason.trim().to_owned())
        })
        .collect()
}

/// A failing summary line (`not ok PROGRAM CASE description`) is excepted by `PROGRAM CASE`
/// or `PROGRAM *`.
fn is_excepted(line: &str, exceptions: &BTreeMap<String, String>) -> bool {
    let mut words = line.trim_start_matches("not ok ").split(' ');
    let (Some(program), Some(case)) = (words.next(), words.next()) else {
        return false;
    };
    exceptions.contains_key(&format!("{program} {case}"))
        || exceptions.contains_key(&format!("{program} *"))
}

#[test]
fn runtime_tools_validation_passes_but_for_the_listed_exceptions() {
    let scratch = Scratch::new("conformance");
    let script = repository().join("scripts/oci-conformance");
    // Go's build cache outlives the test (never in the checkout): the 59 programs then build
    // in seconds instead of a minute and more.
    let outcome = run(Command::new(script)
        .arg(runtime_bin())
        .arg(scratch.path("work"))
        .env("GOCACHE", "/tmp/feather-tests/oci-conformance-gocache"));
    assert_eq!(outcome.code, 0, "scripts/oci-conformance: {outcome:?}");
    let results: Vec<&str> = outcome
        .stdout
        .lines()
        .filter(|l| l.starts_with("ok ") || l.starts_with("not ok "))
        .collect();
    assert!(
        results.len() >= FEWEST_CASES,
        "only {} cases ran: {}",
        results.len(),
        outcome.stdout
    );
    let exceptions = exceptions();
    let new_failures: Vec<&str> = results
        .iter()
        .copied()
        .filter(|l| l.starts_with("not ok ") && !is_excepted(l, &exceptions))
        .collect();
    let passed = results.iter().filter(|l| l.starts_with("ok ")).count();
    eprintln!(
        "runtime-tools validation: {passed} of {} cases passed",
        results.len()
    );
    assert!(
        new_failures.is_empty(),
        "failures not in tests/oci/conformance-exceptions.txt (each program's TAP is in {}/tap \
         while the test runs):\n{}",
        scratch.path("work").display(),
        new_failures.join("\n")
    );
}
