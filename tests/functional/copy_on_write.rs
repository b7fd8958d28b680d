use std::fs;
use std::os::unix::fs::PermissionsExt;

use std::process::Command;

use crate::support::{Feather, RecordHold, ScratchBase};

#[test]
fn writes_deletes_renames_and_chmods_stay_in_the_vm() {
    let feather = Feather::new("cow");
    let base = ScratchBase::new("cow");
    base.write("data/keep", "host\n");
    base.write("data/edit", "host\n");
    base.write("data/gone", "host\n");
    base.write("data/move", "host\n");
    base.write("data/mode", "host\n");
    fs::create_dir_all(base.file("data/tree/sub")).unwrap();
    base.write("data/tree/sub/leaf", "host\n");
    feather.start_over("cow", &base, &[]);
    feather.sh(
        "cow",
        "echo vm > /data/edit && rm /data/gone && mv /data/move /data/moved && chmod 600 /data/mode \
         && echo new > /data/new && rm -r /data/tree && mkdir /data/tree && echo fresh > /data/tree/other",
    );
    // The VM sees its own changes...
    assert_eq!(
        feather.sh(
            "cow",
            "cat /data/edit /data/moved /data/new /data/tree/other"
        ),
        "vm\nhost\nnew\nfresh\n"
    );
    assert_eq!(
        feather.sh("cow", "ls /data/tree; stat -c %a /data/mode; ls /data"),
        "other\n600\nedit\nkeep\nmode\nmoved\nnew\ntree\n"
    );
    // ...and the host none of them.
    assert_eq!(base.read("data/edit").unwrap(), "host\n");
    assert!(base.file("data/gone").exists() && base.file("data/move").exists());
    assert!(!base.file("data/moved").exists() && !base.file("data/new").exists());
    assert_eq!(
        fs::metadata(base.file("data/mode"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
    assert_eq!(base.read("data/tree/sub/leaf").unwrap(), "host\n");
    // The changes live in the VM's layer and survive a restart.
    feather.ok(&["stop", "cow"]);
    feather.ok(&["start", "cow"]);
    assert_eq!(
        feather.sh("cow", "cat /data/edit; test -e /data/gone || echo gone"),
        "vm\ngone\n"
    );
}

#[test]
fn a_vm_sees_host_files_and_later_host_updates_it_never_wrote() {
    let feather = Feather::new("cow-live");
    let base = ScratchBase::new("cow-live");
    base.write("etc/config", "v1\n");
    feather.start_over("live", &base, &[]);
    assert_eq!(feather.sh("live", "cat /etc/config"), "v1\n");
    // Rewritten in place on the host: the VM, which never wrote it, reads the new content.
    base.write("etc/config", "v2\n");
    assert_eq!(feather.sh("live", "cat /etc/config"), "v2\n");
    // A file the host adds later appears too.
    base.write("etc/added-later", "new\n");
    assert_eq!(feather.sh("live", "cat /etc/added-later"), "new\n");
}

#[test]
fn the_default_base_is_the_host_itself() {
    let feather = Feather::new("cow-host");
    let host = fs::read_to_string("/etc/debian_version").unwrap();
    let inside = feather.ok(&["run", "--rm", "--", "cat", "/etc/debian_version"]);
    assert_eq!(inside, host);
}

#[test]
fn two_vms_do_not_see_each_others_changes() {
    let feather = Feather::new("cow-two");
    let base = ScratchBase::new("cow-two");
    for vm in ["left", "right"] {
        feather.start_over(vm, &base, &[]);
    }
    feather.sh("left", "echo left > /data/mine; rm /etc/passwd");
    assert_eq!(
        feather.sh("right", "ls /data; test -e /etc/passwd && echo has-passwd"),
        "has-passwd\n"
    );
    assert_eq!(feather.sh("left", "cat /data/mine"), "left\n");
}

/// The host may unmount a filesystem under the base between the start's listing of its mounts
/// and the VM's own copy of them (an automount expiring, another program's scratch mount):
/// the VM starts without that filesystem's layer (it sees the base's folder there, or nothing
/// where the folder went too), and every other filesystem is layered as ever. The start held
/// just after the listing, the test unmounts `srv` (its folder stays) and `opt` (its folder
/// removed too); `data` stays mounted.
#[test]
fn a_filesystem_unmounted_while_the_vm_starts_is_passed_over() {
    let feather = Feather::new("cow-vanished");
    let mut base = ScratchBase::new("cow-vanished");
    base.write("srv/under-the-mount", "base\n");
    let [srv, opt, _data] = mount_tmpfs_with_a_file(&mut base, ["srv", "opt", "data"]);
    feather.ok(&["create", "vm", "--base", base.as_str(), "--net", "none"]);
    let mut hold = RecordHold::after_mount_list("cow-vanished");
    let start = hold.start(&feather, "vm");
    unmount(&srv);
    unmount(&opt);
    fs::remove_dir(&opt).unwrap();
    hold.release();
    assert_started(start);
    assert_eq!(
        feather.sh(
            "vm",
            "ls /srv; ls -d /opt 2>&1 | sed 's/.*: //'; cat /data/on-tmpfs; \
             grep -c ' /srv \\| /opt ' /proc/self/mountinfo || true"
        ),
        "under-the-mount\nNo such file or directory\ndata tmpfs\n0\n"
    );
    feather.ok(&["stop", "vm"]);
}

/// The base swapped for a link while the VM starts (held after the keeper's checks, before
/// init mounts the root overlay): the overlay never lies over the tree the link names. Init
/// opens the base following no link and mounts the overlay on what it opened; the start fails
/// naming the base. Before, the root overlay's lower was the base's path, and the VM ran over
/// the decoy.
#[test]
fn a_base_swapped_for_a_link_while_the_vm_starts_is_not_followed() {
    let feather = Feather::new("cow-swapped");
    let base = ScratchBase::new("cow-swapped");
    let decoy = ScratchBase::new("cow-swapped-decoy");
    decoy.write("decoy", "the link's tree\n");
    feather.ok(&["create", "vm", "--base", base.as_str(), "--net", "none"]);
    let mut hold = RecordHold::after_mount_list("cow-swapped");
    let start = hold.start(&feather, "vm");
    let real = std::path::PathBuf::from(format!("{}-real", base.as_str()));
    fs::rename(base.as_str(), &real).unwrap();
    std::os::unix::fs::symlink(decoy.as_str(), base.as_str()).unwrap();
    hold.release();
    let started = start.wait_with_output().unwrap();
    fs::remove_file(base.as_str()).unwrap();
    fs::rename(&real, base.as_str()).unwrap();
    let stderr = String::from_utf8_lossy(&started.stderr);
    assert!(
        !started.status.success()
            && stderr.contains(&format!(
                "{} is a link now, or has one on its path",
                base.as_str()
            )),
        "{stderr}"
    );
}

/// Later, once the VM's init has its own copy of the host's mounts: unmounting a filesystem on
/// the host does not reach that copy (`srv`: layered as found), but removing its folder there
/// detaches it (`opt`: unmounted, its folder removed and made again, as an automount's is),
/// and the kernel then refused it as the layer's lower layer (EINVAL) and the start failed.
/// It is passed over instead: the VM sees the folder made again, empty.
#[test]
fn a_filesystem_whose_folder_the_host_removes_while_init_layers_it_is_passed_over() {
    let feather = Feather::new("cow-detached");
    let mut base = ScratchBase::new("cow-detached");
    let [srv, opt, _data] = mount_tmpfs_with_a_file(&mut base, ["srv", "opt", "data"]);
    feather.ok(&["create", "vm", "--base", base.as_str(), "--net", "none"]);
    let mut hold = RecordHold::after_mounts_found("cow-detached");
    let start = hold.start(&feather, "vm");
    unmount(&srv);
    unmount(&opt);
    fs::remove_dir(&opt).unwrap();
    fs::create_dir(&opt).unwrap();
    hold.release();
    assert_started(start);
    assert_eq!(
        feather.sh(
            "vm",
            "cat /srv/on-tmpfs /data/on-tmpfs; ls -A /opt; grep -c ' /opt ' /proc/self/mountinfo \
             || true"
        ),
        "srv tmpfs\ndata tmpfs\n0\n"
    );
    feather.ok(&["stop", "vm"]);
}

/// Mounts a tmpfs at each of `rels` under `base`, holding a file `on-tmpfs` that names it.
fn mount_tmpfs_with_a_file<const N: usize>(
    base: &mut ScratchBase,
    rels: [&str; N],
) -> [std::path::PathBuf; N] {
    rels.map(|rel| {
        let at = base.mount_tmpfs(rel);
        fs::write(at.join("on-tmpfs"), format!("{rel} tmpfs\n")).unwrap();
        at
    })
}

fn unmount(at: &std::path::Path) {
    let status = Command::new("umount").arg(at).status().unwrap();
    assert!(status.success(), "umount {}", at.display());
}

fn assert_started(start: std::process::Child) {
    let started = start.wait_with_output().unwrap();
    assert!(
        started.status.success(),
        "the start fails over a filesystem unmounted meanwhile: {}",
        String::from_utf8_lossy(&started.stderr)
    );
}

#[test]
fn other_filesystems_under_the_base_are_copy_on_write_too() {
    let feather = Feather::new("cow-submount");
    let mut base = ScratchBase::new("cow-submount");
    let mounted = base.mount_tmpfs("srv");
    fs::write(mounted.join("on-tmpfs"), "host\n").unwrap();
    feather.start_over("sub", &base, &[]);
    assert_eq!(
        feather.sh(
            "sub",
            "cat /srv/on-tmpfs; echo vm > /srv/on-tmpfs; echo x > /srv/added; cat /srv/on-tmpfs"
        ),
        "host\nvm\n"
    );
    assert_eq!(
        fs::read_to_string(mounted.join("on-tmpfs")).unwrap(),
        "host\n"
    );
    assert!(!mounted.join("added").exists());
    assert_eq!(
        crate::support::diff_paths(&feather.ok(&["diff", "sub"])),
        "A /srv/added\nM /srv/on-tmpfs\n"
    );
    feather.ok(&["stop", "sub"]);
}
