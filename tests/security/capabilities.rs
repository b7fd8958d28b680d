use crate::support::running_vm;

/// Docker's default set without CAP_MKNOD, as a CapEff mask: CHOWN(0) DAC_OVERRIDE(1) FOWNER(3)
/// FSETID(4) KILL(5) SETGID(6) SETUID(7) SETPCAP(8) NET_BIND_SERVICE(10) NET_RAW(13)
/// SYS_CHROOT(18) AUDIT_WRITE(29) SETFCAP(31).
const DEFAULT_SET: u64 = (1 << 0)
    | (1 << 1)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 10)
    | (1 << 13)
    | (1 << 18)
    | (1 << 29)
    | (1 << 31);

fn cap_mask(status: &str, field: &str) -> u64 {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

#[test]
fn root_in_a_vm_holds_only_the_default_capability_set() {
    let (feather, _base) = running_vm("caps-set");
    for process in ["self", "1"] {
        let status = feather.sh("vm", &format!("cat /proc/{process}/status"));
        assert_eq!(
            cap_mask(&status, "CapEff:"),
            DEFAULT_SET,
            "{process}: {status}"
        );
        assert_eq!(
            cap_mask(&status, "CapBnd:"),
            DEFAULT_SET,
            "{process}: {status}"
        );
    }
}

#[test]
fn root_in_a_vm_cannot_remount_mount_or_make_devices() {
    let (feather, _base) = running_vm("caps-deny");
    let outcome = feather.run(&["exec", "vm", "--", "sh", "-c", "mount -o remount,rw /sys 2>&1; mount -t tmpfs none /tmp 2>&1; mknod /tmp/sda b 8 0 2>&1; echo done"]);
    let out = outcome.stdout.to_lowercase();
    assert_eq!(
        out.matches("operation not permitted").count() + out.matches("permission denied").count(),
        3,
        "{out}"
    );
    assert!(out.ends_with("done\n"));
}

#[test]
fn the_vm_sees_no_raw_devices() {
    let (feather, _base) = running_vm("caps-dev");
    assert_eq!(
        feather.sh(
            "vm",
            "ls /dev | grep -E '^(sd|vd|nvme|mem|kmem|port|kmsg)' || echo none"
        ),
        "none\n"
    );
    // A device node smuggled into the layer could not be opened: the layer is mounted nodev.
    assert_eq!(
        feather.sh("vm", "grep ' / ' /proc/self/mounts | grep -c nodev"),
        "1\n"
    );
}

#[test]
fn kernel_interfaces_that_control_the_host_are_read_only_or_masked() {
    let (feather, _base) = running_vm("caps-proc");
    let out = feather.sh("vm", "{ echo 1 > /proc/sys/kernel/panic; } 2>&1; { echo x > /sys/kernel/uevent_helper; } 2>&1; cat /proc/kcore | head -c 1 | wc -c; echo end");
    assert!(out.matches("Read-only file system").count() >= 2, "{out}");
    assert!(out.ends_with("0\nend\n"), "{out}");
}
