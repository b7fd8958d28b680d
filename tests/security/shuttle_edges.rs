//! Shuttle's host-side edges, attacked from a VM's root: the hand-over clean-up (the share
//! helper is host root inside the target VM's mounts), the broker's sockets in a VM, the D-Bus
//! proxy's confinement, and whose identity a channel carries.

use std::fs;
use std::path::Path;

use crate::support::{Feather, HostDir, ScratchBase};

/// Where `a` keeps the file it hands over (in its own layer).
const DOCS: &str = "/srv/feather-shuttle-edges";

/// Whether `/proc/sys/kernel/core_pattern` in the view of process `pid` opens for writing.
/// Nothing is ever written: the file is opened for appending and closed at once.
fn core_pattern_opens_for_writing(pid: i64) -> bool {
    fs::OpenOptions::new()
        .append(true)
        .open(format!("/proc/{pid}/root/proc/sys/kernel/core_pattern"))
        .map(drop)
        .is_ok()
}

fn init_pid(feather: &Feather, vm: &str) -> i64 {
    feather.inspect(vm)["state"]["init_pid"]
        .as_i64()
        .expect("the VM runs")
}

fn host_mounts() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|line| line.contains("feather/shared") || line.contains(" /proc/sys "))
        .map(str::to_owned)
        .collect()
}

/// The target of a hand-over replaces `/run/feather/shared/<id>` with a symlink to `/proc`
/// (its program does it before it ends, and a loop of b's keeps doing it), the file handed
/// over being named `sys`: the clean-up, host root in b's mounts, must unmount its own mount
/// and nothing else — b's read-only `/proc/sys` stays.
#[test]
fn the_hand_over_clean_up_unmounts_its_own_mount_only() {
    let feather = Feather::new("edges-handover");
    let base = ScratchBase::new("edges-handover");
    let host = HostDir::new("edges-handover");
    let open = host.feather_open();
    feather.write_policy(
        "10-test",
        &format!(
            "invoke swap a b allow command=\"/bin/sh -c 'd=${{0%/*}}; mv $d $d.x 2>/dev/null && ln -s /proc $d; exit 0'\"\n\
             files {DOCS}/** a b allow mode=ro\n"
        ),
    );
    feather.ok(&["create", "a", "--net", "none"]);
    feather.ok(&["create", "b", "--base", base.as_str(), "--net", "none"]);
    feather.ok(&["start", "a"]);
    feather.ok(&["start", "b"]);
    let b = init_pid(&feather, "b");
    assert!(
        !core_pattern_opens_for_writing(b),
        "b's /proc/sys is read-only to begin with"
    );
    let before = host_mounts();
    feather.sh(
        "b",
        "mkdir -p /run/feather/shared; \
         (while :; do for d in /run/feather/shared/a-*; do \
            case $d in *.x) continue;; esac; \
            [ -d \"$d\" ] && [ ! -L \"$d\" ] && mv \"$d\" \"$d.x\" 2>/dev/null && ln -s /proc \"$d\"; \
          done; done) </dev/null >/dev/null 2>&1 &",
    );
    feather.sh("a", &format!("mkdir -p {DOCS} && echo handed > {DOCS}/sys"));
    for round in 0..12 {
        let outcome = feather.run(&[
            "exec",
            "a",
            "--",
            open.as_str(),
            "swap",
            &format!("{DOCS}/sys"),
        ]);
        // The loop may also win before the mount is made (the request then fails): either way
        // the clean-up ran.
        assert!(
            outcome.code == 0 || outcome.code == 125,
            "round {round}: {}{}",
            outcome.stdout,
            outcome.stderr
        );
        assert!(
            !core_pattern_opens_for_writing(b),
            "round {round}: the clean-up unmounted b's read-only /proc/sys"
        );
    }
    let b_mounts = fs::read_to_string(format!("/proc/{b}/mountinfo")).unwrap();
    assert!(
        !b_mounts.contains("feather/shared"),
        "every hand-over mount is gone from b: {b_mounts}"
    );
    assert!(
        b_mounts
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/proc/sys")),
        "b still has its /proc/sys mount: {b_mounts}"
    );
    assert_eq!(host_mounts(), before, "the host's mounts are unchanged");
    assert!(!Path::new("/run/feather/shared").join("sys").exists());
}
