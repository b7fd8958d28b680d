//! Row 62 of docs/security.md: the programs feather's host side starts (criu, tar, nft, the share helper, the
//! keeper…) inherit their stdin, stdout, stderr and the descriptors they are passed by name,
//! nothing else: not a descriptor of a VM the starter holds, not one its own starter left open.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::support::{Feather, ScratchBase};

/// The descriptor number the test's caller leaves open on a marker file, as a careless caller
/// of `feather` (a shell's `9<file`, a service manager's socket) would.
const LEFT_OPEN: u32 = 9;

/// A stand-in for CRIU that appends the descriptors it was started with (`number target`
/// lines, after a `--- arguments` line) to `listing`, then runs the real one. Python's: a
/// shell holds descriptors of its own while it redirects.
fn listing_criu(at: &Path, listing: &Path) {
    let script = format!(
        r#"#!/usr/bin/python3
import os, sys
held = []
for fd in os.listdir("/proc/self/fd"):
    try:
        held.append(fd + " " + os.readlink("/proc/self/fd/" + fd))
    except OSError:
        pass  # the listing's own folder, closed since
with open("{listing}", "a") as out:
    out.write("--- " + " ".join(sys.argv[1:]) + "\n" + "".join(h + "\n" for h in held))
os.execv("/usr/local/lib/feather/criu", ["criu"] + sys.argv[1:])
"#,
        listing = listing.display()
    );
    fs::write(at, script).unwrap();
    fs::set_permissions(at, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// `feather ARGS` with descriptor [`LEFT_OPEN`] open on `marker` and `FEATHER_CRIU` set.
fn feather_leaving_open(feather: &Feather, marker: &Path, criu: &Path, args: &[&str]) {
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!("exec \"$@\" {LEFT_OPEN}<\"$MARKER\""))
        .arg("sh")
        .arg(Feather::bin())
        .arg("--root")
        .arg(&feather.root)
        .args(args)
        .env("MARKER", marker)
        .env("FEATHER_CRIU", criu)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "feather {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Each run of the stand-in: its arguments and the descriptors it held beyond stdio and its
/// own script (which the interpreter may still hold).
fn unexpected_descriptors(listing: &str, script: &Path) -> Vec<(String, Vec<String>)> {
    let script = script.display().to_string();
    let mut runs: Vec<(String, Vec<String>)> = Vec::new();
    for line in listing.lines() {
        if let Some(args) = line.strip_prefix("--- ") {
            runs.push((args.to_owned(), Vec::new()));
            continue;
        }
        let Some((args, extra)) = runs.last_mut() else {
            continue;
        };
        let (number, target) = line.split_once(' ').unwrap_or((line, ""));
        // `criu swrk N` is passed its end of the channel, number N.
        let passed = args.strip_prefix("swrk ") == Some(number);
        if !["0", "1", "2"].contains(&number) && target != script && !passed {
            extra.push(line.to_owned());
        }
    }
    runs
}

#[test]
fn criu_started_by_the_cli_and_by_the_keeper_holds_only_what_it_was_passed() {
    let feather = Feather::new("fds-criu");
    let base = ScratchBase::new("fds-criu");
    let marker = base.file("marker");
    fs::write(&marker, "left open by feather's caller\n").unwrap();
    let criu = base.file("criu");
    let listing = base.file("criu-descriptors");
    listing_criu(&criu, &listing);
    feather.ok(&["create", "vm", "--base", base.as_str(), "--net", "none"]);
    // The keeper is started by a `feather start` that was left a descriptor.
    feather_leaving_open(&feather, &marker, &criu, &["start", "vm"]);
    let keeper = feather.inspect("vm")["state"]["keeper_pid"]
        .as_i64()
        .unwrap();
    let keeper_holds: Vec<_> = fs::read_dir(format!("/proc/{keeper}/fd"))
        .unwrap()
        .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
        .collect();
    assert!(
        !keeper_holds.contains(&marker),
        "the keeper kept its starter's descriptor: {keeper_holds:?}"
    );
    // `feather checkpoint` runs `criu --version` and `criu check` itself; the keeper runs
    // `criu swrk` for the dump, with the VM's descriptors open in it.
    feather_leaving_open(&feather, &marker, &criu, &["checkpoint", "vm"]);
    let listing = fs::read_to_string(&listing).unwrap();
    let runs = unexpected_descriptors(&listing, &criu);
    assert!(
        runs.iter().any(|(args, _)| args.starts_with("swrk ")),
        "the dump ran no criu swrk: {listing}"
    );
    for (args, extra) in &runs {
        assert!(
            extra.is_empty(),
            "criu {args} was started with descriptors it was not passed: {extra:?}"
        );
    }
    assert_eq!(feather.status("vm"), "checkpointed");
}
