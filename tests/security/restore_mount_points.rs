//! A restore mounts the layers of the host's filesystems under the base, as a start does
//! (row 64), on mount points that are names in the VM's tree, which its layer controls: a
//! link a crafted layer put at one must not steer where the layer lands. CRIU binds the layer
//! from that name and recreates the VM's mount there, so the restore is refused, naming the
//! path and what to do.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use crate::support::{assert_no_mount_under, Feather, ScratchBase};

const MARKER: &str = "host-filesystem-marker";

#[test]
fn a_link_at_a_layered_mount_point_refuses_the_restore_and_steers_nothing() {
    let mut base = ScratchBase::new("restore-link");
    let feather = Feather::new("restore-link");
    feather.require_criu();
    base.mount_tmpfs("mnt/point");
    base.write("mnt/point/marker", MARKER);
    feather.start_over("vm", &base, &["--net", "none"]);
    feather.sh("vm", "mkdir /victim; cat /mnt/point/marker");
    feather.ok(&["checkpoint", "vm"]);
    let vm_dir = feather.vm_dir("vm");
    let upper = vm_dir.join("upper");
    fs::create_dir_all(upper.join("mnt")).unwrap();

    // As a crafted layer would hold it: an absolute link at the mount point, which in the
    // restoring keeper's mount namespace resolves against the host's root, to the VM's
    // /victim as the host sees it. Without the fix CRIU refused it without naming the path.
    let point = upper.join("mnt/point");
    symlink(vm_dir.join("rootfs/victim"), &point).unwrap();
    assert_refused(&feather, &vm_dir);
    fs::remove_file(&point).unwrap();

    // A link on the way to the mount point, to a host folder without `point`: without the fix
    // the restore made the folder `point` on the host, where the link points.
    let host_folder = vm_dir
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("host-folder");
    fs::create_dir(&host_folder).unwrap();
    fs::remove_dir(upper.join("mnt")).unwrap();
    symlink(&host_folder, upper.join("mnt")).unwrap();
    let outcome = feather.run(&["restore", "vm"]);
    assert!(
        !host_folder.join("point").exists(),
        "the restore made a folder where the link points"
    );
    assert_ne!(outcome.code, 0, "restored over a link: {}", outcome.stdout);
    assert_refused(&feather, &vm_dir);
    fs::remove_file(upper.join("mnt")).unwrap();

    feather.ok(&["restore", "vm"]);
    assert_eq!(
        feather.sh("vm", "cat /mnt/point/marker; ls -A /victim"),
        MARKER,
        "the checkpoint restores once the link is gone, the layer at its own place"
    );
    // Dropped in reverse order of declaration, also on a failure: `feather` (stopping the VM)
    // first, then `base` (unmounting its tmpfs).
}

/// A restore of `vm` is refused naming the mount point and the VM's layer, and leaves no mount
/// behind and the layer of the host's filesystem nowhere.
fn assert_refused(feather: &Feather, vm_dir: &Path) {
    let refused = feather.fails(&["restore", "vm"]);
    let what_to_do = format!(
        "remove that entry from the VM's layer ({})",
        vm_dir.join("upper").display()
    );
    assert!(
        refused.contains("/mnt/point, which is not a folder in the VM")
            && refused.contains(&what_to_do),
        "the restore names the path and what to do: {refused}"
    );
    assert_no_mount_under(vm_dir);
    assert!(
        !vm_dir.join("upper/victim/marker").exists(),
        "the layer landed where the link points"
    );
}
