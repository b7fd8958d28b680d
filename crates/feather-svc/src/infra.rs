//! Host-infrastructure units: the parts of a machine's boot and hardware management that a VM
//! does not get a private copy of. A dependency on one of them counts as satisfied, so that a
//! service that depends on one still starts; this table says what stands in for each inside a
//! VM. `docs/services.md` shows the same table.

use crate::name::UnitName;

/// One row: a unit name or a pattern (`*` matches any run of characters), and the stand-in.
pub struct Infrastructure {
    pub pattern: &'static str,
    pub stand_in: &'static str,
}

const LOGS: &str = "feather's per-service log capture (/var/log/feather/UNIT.log in the VM)";
const BOOT: &str =
    "reached: the VM's init (feather) has assembled the VM before any service starts";
const NETWORK: &str = "the VM's own network namespace, set up by feather (loopback, and its address where one is given)";
const CONSOLE: &str = "`feather exec -t VM -- …` gives a terminal in the VM";
const HOST_ONLY: &str =
    "belongs to the host (hardware, disks, kernel, boot); a VM has nothing of it to manage";

/// Checked in order; the first matching row applies.
pub const TABLE: &[Infrastructure] = &[
    Infrastructure { pattern: "systemd-journald*", stand_in: LOGS },
    Infrastructure { pattern: "systemd-journal-*", stand_in: LOGS },
    Infrastructure { pattern: "syslog.socket", stand_in: "a syslog daemon duplicated in the VM (rsyslog) opens the VM's own /dev/log itself" },
    Infrastructure { pattern: "systemd-udev*", stand_in: "the VM's small static /dev, made when it starts" },
    Infrastructure { pattern: "udev.service", stand_in: "the VM's small static /dev, made when it starts" },
    Infrastructure { pattern: "systemd-logind.service", stand_in: "none needed: services in a VM have no seats or login sessions" },
    Infrastructure { pattern: "dbus-org.freedesktop.login1.service", stand_in: "none needed: services in a VM have no seats or login sessions" },
    Infrastructure { pattern: "user@*", stand_in: "none: a VM has no user sessions" },
    Infrastructure { pattern: "user-runtime-dir@*", stand_in: "none: a VM has no user sessions" },
    Infrastructure { pattern: "systemd-networkd*", stand_in: NETWORK },
    Infrastructure { pattern: "networking.service", stand_in: NETWORK },
    Infrastructure { pattern: "NetworkManager*", stand_in: NETWORK },
    Infrastructure { pattern: "ifup@*", stand_in: NETWORK },
    Infrastructure { pattern: "ifupdown-*", stand_in: NETWORK },
    Infrastructure { pattern: "systemd-resolved.service", stand_in: "the host's /etc/resolv.conf, seen through the VM's copy-on-write root" },
    Infrastructure { pattern: "systemd-timesyncd.service", stand_in: "the host's clock: a VM cannot set it" },
    Infrastructure { pattern: "systemd-time-wait-sync.service", stand_in: "the host's clock: a VM cannot set it" },
    Infrastructure { pattern: "chrony*", stand_in: "the host's clock: a VM cannot set it" },
    Infrastructure { pattern: "ntp*", stand_in: "the host's clock: a VM cannot set it" },
    Infrastructure { pattern: "getty@*", stand_in: CONSOLE },
    Infrastructure { pattern: "serial-getty@*", stand_in: CONSOLE },
    Infrastructure { pattern: "container-getty@*", stand_in: CONSOLE },
    Infrastructure { pattern: "console-getty.service", stand_in: CONSOLE },
    Infrastructure { pattern: "autovt@*", stand_in: CONSOLE },
    Infrastructure { pattern: "getty-static.service", stand_in: CONSOLE },
    Infrastructure { pattern: "systemd-tmpfiles-*", stand_in: "the VM's fresh /run and /tmp; the manager makes the /run folders of the host's tmpfiles.d when it starts, and RuntimeDirectory= and its kin" },
    Infrastructure { pattern: "systemd-*", stand_in: "a machine-level job of systemd that feather's init does, or that has no meaning in a VM" },
    Infrastructure { pattern: "emergency.service", stand_in: BOOT },
    Infrastructure { pattern: "rescue.service", stand_in: BOOT },
    Infrastructure { pattern: "debug-shell.service", stand_in: CONSOLE },
    Infrastructure { pattern: "kmod*", stand_in: HOST_ONLY },
    Infrastructure { pattern: "modprobe@*", stand_in: HOST_ONLY },
    Infrastructure { pattern: "keyboard-setup.service", stand_in: HOST_ONLY },
    Infrastructure { pattern: "console-setup.service", stand_in: HOST_ONLY },
    Infrastructure { pattern: "cryptdisks*", stand_in: HOST_ONLY },
    Infrastructure { pattern: "e2scrub*", stand_in: HOST_ONLY },
    Infrastructure { pattern: "fstrim.service", stand_in: HOST_ONLY },
    Infrastructure { pattern: "lvm2*", stand_in: HOST_ONLY },
    Infrastructure { pattern: "apparmor.service", stand_in: HOST_ONLY },
    Infrastructure { pattern: "procps.service", stand_in: HOST_ONLY },
    Infrastructure { pattern: "hwclock.service", stand_in: HOST_ONLY },
    Infrastructure { pattern: "initrd-*", stand_in: HOST_ONLY },
    Infrastructure { pattern: "*.mount", stand_in: "the VM's root and API filesystems, assembled by feather" },
    Infrastructure { pattern: "*.automount", stand_in: "the VM's root and API filesystems, assembled by feather" },
    Infrastructure { pattern: "*.swap", stand_in: HOST_ONLY },
    Infrastructure { pattern: "*.device", stand_in: HOST_ONLY },
    Infrastructure { pattern: "*.slice", stand_in: "the VM's own cgroup, made by its keeper" },
    Infrastructure { pattern: "*.scope", stand_in: "the VM's own cgroup, made by its keeper" },
    // The synchronization points of a boot. A VM is "booted" before its first service starts.
    Infrastructure { pattern: "sysinit.target", stand_in: BOOT },
    Infrastructure { pattern: "basic.target", stand_in: BOOT },
    Infrastructure { pattern: "local-fs.target", stand_in: BOOT },
    Infrastructure { pattern: "local-fs-pre.target", stand_in: BOOT },
    Infrastructure { pattern: "remote-fs.target", stand_in: BOOT },
    Infrastructure { pattern: "remote-fs-pre.target", stand_in: BOOT },
    Infrastructure { pattern: "network.target", stand_in: NETWORK },
    Infrastructure { pattern: "network-pre.target", stand_in: NETWORK },
    Infrastructure { pattern: "network-online.target", stand_in: NETWORK },
    Infrastructure { pattern: "nss-lookup.target", stand_in: BOOT },
    Infrastructure { pattern: "nss-user-lookup.target", stand_in: BOOT },
    Infrastructure { pattern: "time-set.target", stand_in: "the host's clock: a VM cannot set it" },
    Infrastructure { pattern: "time-sync.target", stand_in: "the host's clock: a VM cannot set it" },
    Infrastructure { pattern: "paths.target", stand_in: BOOT },
    Infrastructure { pattern: "sockets.target", stand_in: BOOT },
    Infrastructure { pattern: "timers.target", stand_in: BOOT },
    Infrastructure { pattern: "slices.target", stand_in: BOOT },
    Infrastructure { pattern: "swap.target", stand_in: BOOT },
    Infrastructure { pattern: "cryptsetup*.target", stand_in: BOOT },
    Infrastructure { pattern: "veritysetup*.target", stand_in: BOOT },
    Infrastructure { pattern: "integritysetup*.target", stand_in: BOOT },
    Infrastructure { pattern: "remote-cryptsetup.target", stand_in: BOOT },
    Infrastructure { pattern: "remote-veritysetup.target", stand_in: BOOT },
    Infrastructure { pattern: "getty.target", stand_in: CONSOLE },
    Infrastructure { pattern: "getty-pre.target", stand_in: CONSOLE },
    Infrastructure { pattern: "machines.target", stand_in: HOST_ONLY },
    Infrastructure { pattern: "emergency.target", stand_in: BOOT },
    Infrastructure { pattern: "rescue.target", stand_in: BOOT },
    Infrastructure { pattern: "shutdown.target", stand_in: "`feather stop` stops the VM's services in reverse order" },
    Infrastructure { pattern: "umount.target", stand_in: "`feather stop` stops the VM's services in reverse order" },
    Infrastructure { pattern: "final.target", stand_in: "`feather stop` stops the VM's services in reverse order" },
    Infrastructure { pattern: "reboot.target", stand_in: HOST_ONLY },
    Infrastructure { pattern: "poweroff.target", stand_in: HOST_ONLY },
    Infrastructure { pattern: "halt.target", stand_in: HOST_ONLY },
    Infrastructure { pattern: "kexec.target", stand_in: HOST_ONLY },
    Infrastructure { pattern: "exit.target", stand_in: HOST_ONLY },
    Infrastructure { pattern: "ctrl-alt-del.target", stand_in: HOST_ONLY },
    Infrastructure { pattern: "sleep.target", stand_in: HOST_ONLY },
    Infrastructure { pattern: "suspend*.target", stand_in: HOST_ONLY },
    Infrastructure { pattern: "hibernate.target", stand_in: HOST_ONLY },
    Infrastructure { pattern: "hybrid-sleep.target", stand_in: HOST_ONLY },
    Infrastructure { pattern: "system-update*.target", stand_in: HOST_ONLY },
    Infrastructure { pattern: "initrd*.target", stand_in: HOST_ONLY },
    Infrastructure { pattern: "first-boot-complete.target", stand_in: BOOT },
    Infrastructure { pattern: "factory-reset.target", stand_in: HOST_ONLY },
    Infrastructure { pattern: "boot-complete.target", stand_in: BOOT },
    Infrastructure { pattern: "sound.target", stand_in: HOST_ONLY },
    Infrastructure { pattern: "bluetooth.target", stand_in: HOST_ONLY },
    Infrastructure { pattern: "printer.target", stand_in: HOST_ONLY },
    Infrastructure { pattern: "smartcard.target", stand_in: HOST_ONLY },
    Infrastructure { pattern: "usb-gadget.target", stand_in: HOST_ONLY },
    Infrastructure { pattern: "tpm2.target", stand_in: HOST_ONLY },
    Infrastructure { pattern: "blockdev@*", stand_in: HOST_ONLY },
    Infrastructure { pattern: "sigpwr.target", stand_in: HOST_ONLY },
    Infrastructure { pattern: "storage-target-mode.target", stand_in: HOST_ONLY },
];

/// What stands in for `name` inside a VM, if it is host infrastructure.
pub fn stand_in(name: &UnitName) -> Option<&'static str> {
    TABLE
        .iter()
        .find(|row| matches(row.pattern, name.as_str()))
        .map(|row| row.stand_in)
}

/// Glob match where `*` matches any run of characters.
fn matches(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            let Some(rest) = text.strip_prefix(head) else {
                return false;
            };
            if !tail.contains('*') {
                return rest.ends_with(tail);
            }
            (0..=rest.len())
                .filter(|&i| rest.is_char_boundary(i))
                .any(|i| matches(tail, &rest[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infra(name: &str) -> bool {
        stand_in(&UnitName::parse(name).unwrap()).is_some()
    }

    #[test]
    fn the_table_covers_host_infrastructure_and_nothing_a_user_duplicates() {
        for name in [
            "systemd-journald.service",
            "systemd-journald-dev-log.socket",
            "systemd-udevd.service",
            "systemd-logind.service",
            "systemd-networkd.service",
            "systemd-resolved.service",
            "getty@tty1.service",
            "serial-getty@ttyS0.service",
            "systemd-tmpfiles-setup.service",
            "sysinit.target",
            "network-online.target",
            "dev-mqueue.mount",
            "user.slice",
        ] {
            assert!(infra(name), "{name} should be infrastructure");
        }
        for name in [
            "nginx.service",
            "redis-server.service",
            "postgresql@15-main.service",
            "dbus.service",
            "dbus.socket",
            "rsyslog.service",
            "cron.service",
            "ssh.service",
            "multi-user.target",
        ] {
            assert!(!infra(name), "{name} should be duplicable");
        }
        assert_eq!(
            stand_in(&UnitName::parse("systemd-journald.service").unwrap()),
            Some(LOGS)
        );
    }
}
