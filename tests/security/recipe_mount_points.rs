//! The isolation recipe's mount points are names in the VM's tree, which its layer controls:
//! a link left there by an earlier run (or a crafted layer) must not steer where a mount of
//! the recipe lands. The layer of a host filesystem under the base is then not made (the VM's
//! own entry shadows it); the VM's own /proc, /sys, /dev, /run refuse the start.

use std::fs;
use std::os::unix::fs::symlink;

use crate::support::{assert_no_mount_under, Feather, ScratchBase};

const MARKER: &str = "host-filesystem-marker";

/// A VM over a scratch base whose first run leaves `/mnt/point -> link` in its layer (and the
/// folder `/victim` and `/mnt/victim`); then the host mounts a tmpfs holding a marker at the
/// base's `mnt/point`, and the VM starts again. Returns what the VM sees.
fn restart_over_a_linked_mount_point(label: &str, link: impl Fn(&Feather) -> String) -> String {
    let mut base = ScratchBase::new(label);
    let feather = Feather::new(label);
    feather.start_over("vm", &base, &["--net", "none"]);
    let target = link(&feather);
    feather.sh(
        "vm",
        &format!("mkdir -p /victim /mnt/victim && ln -s {target} /mnt/point"),
    );
    feather.ok(&["stop", "vm"]);
    base.mount_tmpfs("mnt/point");
    base.write("mnt/point/marker", MARKER);
    feather.ok(&["start", "vm"]);
    let log = fs::read_to_string(feather.vm_dir("vm").join("keeper.log")).unwrap_or_default();
    assert!(
        log.contains("/mnt/point is not a folder in the VM"),
        "the keeper's log says the VM's entry shadows the filesystem: {log}"
    );
    feather.sh(
        "vm",
        "readlink /mnt/point; cat /victim/marker /mnt/victim/marker /mnt/point/marker 2>&1; \
         grep -c ' /victim \\| /mnt/victim ' /proc/self/mountinfo || true",
    )
    // Dropped in reverse order of declaration, also on a failure: `feather` (stopping the VM)
    // first, then `base` (unmounting its tmpfs).
}

#[test]
fn a_relative_link_at_a_layered_mount_point_does_not_steer_the_layer() {
    let seen = restart_over_a_linked_mount_point("recipe-relative", |_| "../victim".into());
    assert_the_link_steered_nothing(&seen, seen.starts_with("../victim\n"));
}

#[test]
fn an_absolute_link_at_a_layered_mount_point_does_not_steer_the_layer() {
    // Before the pivot an absolute link resolves against the host's root: to the VM's tree
    // as the host sees it, the folder /victim inside.
    let seen = restart_over_a_linked_mount_point("recipe-absolute", |feather| {
        feather
            .vm_dir("vm")
            .join("rootfs/victim")
            .display()
            .to_string()
    });
    assert_the_link_steered_nothing(&seen, seen.contains("rootfs/victim\n"));
}

/// What the VM saw (`restart_over_a_linked_mount_point`): its link still there (`link_stays`),
/// the host filesystem's marker nowhere the link leads, and no mount at the link's target.
fn assert_the_link_steered_nothing(seen: &str, link_stays: bool) {
    assert!(link_stays, "the VM's link stays: {seen}");
    assert!(
        !seen.contains(MARKER),
        "the layer landed where the link points: {seen}"
    );
    assert!(
        seen.ends_with("0\n"),
        "a mount at the link's target: {seen}"
    );
}

#[test]
fn a_link_at_proc_sys_dev_or_run_in_a_vms_layer_refuses_the_start() {
    for name in ["proc", "sys", "dev", "run"] {
        a_link_at_an_own_filesystem_refuses_the_start(name);
    }
}

/// What a crafted layer or a committed base could hold; a running VM cannot mount, so an
/// earlier run of it could not put a link over its own `/name` mount point.
fn a_link_at_an_own_filesystem_refuses_the_start(name: &str) {
    let label = format!("recipe-{name}");
    let base = ScratchBase::new(&label);
    let feather = Feather::new(&label);
    feather.ok(&["create", "vm", "--base", base.as_str(), "--net", "none"]);
    let upper = feather.vm_dir("vm").join("upper");
    fs::create_dir_all(upper.join("victim")).unwrap();
    symlink("victim", upper.join(name)).unwrap();
    let refused = feather.fails(&["start", "vm"]);
    assert!(
        refused.contains(&format!("/{name},")) && refused.contains("feather reset"),
        "the start names the path and what to do: {refused}"
    );
    assert_no_mount_under(&feather.vm_dir("vm"));
    fs::remove_file(upper.join(name)).unwrap();
    feather.ok(&["start", "vm"]);
    // The fifth field of a mountinfo line is where the mount is.
    let own = format!("grep -c '^[0-9]* [0-9]* [0-9:]* [^ ]* /{name} ' /proc/self/mountinfo");
    assert_eq!(feather.sh("vm", &own), "1\n", "the VM's own /{name}");
}
