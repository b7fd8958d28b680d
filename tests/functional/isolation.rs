use std::process::Command;

use crate::support::{Feather, ScratchBase};

#[test]
fn the_vm_has_its_own_pids_hostname_and_network() {
    let feather = Feather::new("iso-ns");
    let base = ScratchBase::new("iso-ns");
    feather.start_over("box1", &base, &["--net", "none"]);
    // Its init is pid 1, and no host process is visible.
    let pids = feather.sh("box1", "ls /proc | grep -E '^[0-9]+$'");
    let pids: Vec<u32> = pids.lines().map(|l| l.parse().unwrap()).collect();
    assert!(pids.contains(&1), "{pids:?}");
    // init, its spawner, and this pipeline's shell, ls and grep.
    assert!(
        pids.len() <= 5,
        "only the VM's processes are visible: {pids:?}"
    );
    assert_eq!(feather.sh("box1", "cat /proc/1/comm"), "feather-init\n");
    assert_eq!(feather.sh("box1", "hostname"), "box1\n");
    assert_eq!(feather.sh("box1", "ls /sys/class/net"), "lo\n");
    // Loopback works inside.
    assert_eq!(feather.sh("box1", "grep -c '' /proc/net/dev"), "3\n");
}

#[test]
fn system_v_ipc_of_the_host_is_invisible() {
    let feather = Feather::new("iso-ipc");
    let base = ScratchBase::new("iso-ipc");
    let made = Command::new("ipcmk")
        .args(["-M", "4096"])
        .output()
        .expect("ipcmk (util-linux) runs");
    let id: String = String::from_utf8_lossy(&made.stdout)
        .chars()
        .filter(|c| c.is_ascii_digit())
        .collect();
    let _cleanup = scopeguard(move || {
        let _ = Command::new("ipcrm").args(["-m", &id]).status();
    });
    let host_segments = std::fs::read_to_string("/proc/sysvipc/shm")
        .unwrap()
        .lines()
        .count();
    assert!(host_segments >= 2, "the host has the segment just made");
    let out = feather.ok(&[
        "run",
        "--rm",
        "--base",
        base.as_str(),
        "--",
        "cat",
        "/proc/sysvipc/shm",
    ]);
    assert_eq!(out.lines().count(), 1, "only the header: {out}");
}

#[test]
fn the_state_folder_and_other_vms_layers_are_hidden() {
    let feather = Feather::new("iso-state");
    feather.ok(&["create", "peer"]);
    feather.ok(&["start", "peer"]);
    feather.sh("peer", "echo secret > /root/peer-secret");
    let root = feather.root.to_str().unwrap().to_owned();
    let script = format!("ls -A {root} | wc -l; cat {root}/vms/peer/upper/root/peer-secret >/dev/null 2>&1 && echo visible || echo hidden");
    assert_eq!(
        feather.ok(&["run", "--rm", "--", "sh", "-c", &script]),
        "0\nhidden\n",
        "the state root is an empty folder inside"
    );
}

/// Runs `f` when dropped, also when the test panics.
pub fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[test]
fn shm_run_and_cgroups_are_the_vms_own() {
    let (feather, _base) = crate::support::running_vm("iso-shm");
    let host_shm =
        std::path::PathBuf::from(format!("/dev/shm/feather-test-{}", std::process::id()));
    std::fs::write(&host_shm, "host").unwrap();
    let _cleanup = scopeguard({
        let host_shm = host_shm.clone();
        move || {
            let _ = std::fs::remove_file(host_shm);
        }
    });
    let name = host_shm.file_name().unwrap().to_str().unwrap();
    let script = format!(
        "test -e /dev/shm/{name} && echo host-shm-visible; ls -A /run; echo vm > /dev/shm/mine; \
         grep -c ' /dev/mqueue mqueue ' /proc/self/mounts; grep -c ' /dev/pts devpts ' /proc/self/mounts; \
         grep -v ':/$' /proc/self/cgroup | wc -l"
    );
    // /run holds only what feather put there (/run/lock, and init's own program in
    // /run/.feather-init); the cgroup view is rooted at the VM's group.
    assert_eq!(feather.sh("vm", &script), ".feather-init\nlock\n1\n1\n0\n");
    assert!(!std::path::Path::new("/dev/shm/mine").exists());
}

/// The masks over kernel folders (/proc/acpi, /sys/firmware and the others the host has) are
/// one empty read-only tmpfs: the first folder masked gets it, every other a bind of it with
/// the same flags. Each superblock a VM mounts costs every memory cgroup of the host a share
/// of its shrinker bitmap (docs/design.md, "An idle VM's kernel memory"); before, each mask
/// was a tmpfs of its own.
#[test]
fn the_masks_over_kernel_folders_are_one_read_only_tmpfs() {
    let feather = Feather::new("iso-masks");
    let base = ScratchBase::new("iso-masks");
    feather.start_over("vm", &base, &["--net", "none"]);
    let script = r#"for p in /proc/acpi /proc/asound /proc/scsi /sys/firmware \
         /sys/devices/virtual/powercap /sys/fs/selinux; do
  line=$(grep " $p " /proc/self/mountinfo) || continue
  echo "$(echo "$line" | cut -d' ' -f3,6) $(echo "$line" | sed 's/.* - //; s/,inode64//') \
$(touch $p/marker 2>/dev/null && echo writable || echo read-only)"
done"#;
    let masks = feather.sh("vm", script);
    let lines: Vec<(&str, &str)> = masks
        .lines()
        .map(|line| line.split_once(' ').unwrap())
        .collect();
    if lines.len() < 2 {
        eprintln!("skipped: fewer than two masked folders on this host: {masks}");
        return;
    }
    let (device, flags) = lines[0];
    assert!(
        flags.starts_with("ro,nosuid,nodev,noexec") && flags.ends_with(" read-only"),
        "{masks}"
    );
    for (dev, rest) in &lines {
        assert_eq!(*dev, device, "a mask is a tmpfs of its own:\n{masks}");
        assert_eq!(*rest, flags, "{masks}");
    }
}
