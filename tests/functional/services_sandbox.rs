//! Sandboxing settings the VM's service manager applies to a unit's processes
//! (`NoNewPrivileges=`, `CapabilityBoundingSet=`, `AmbientCapabilities=`), and the ones it lists
//! as not applied.

use crate::services::{service, services, vm, write_unit};
use crate::support::Feather;

/// The `Key:\tvalue` lines of /proc/self/status a unit's process printed into its log (read
/// as written: `service logs` escapes the tabs).
fn status_lines(feather: &Feather, vm: &str, unit: &str) -> String {
    feather.sh(vm, &format!("cat /var/log/feather/{unit}.service.log"))
}

#[test]
fn services_no_new_privileges_and_the_capability_bounding_set_are_applied() {
    let feather = Feather::new("svc-sandbox");
    vm(&feather, "sb");
    let report =
        "ExecStart=/bin/sh -c 'grep -E \"^(CapBnd|CapEff|NoNewPrivs)\" /proc/self/status'\n";
    write_unit(
        &feather,
        "sb",
        "tight.service",
        &format!(
            "[Service]\nType=oneshot\nRemainAfterExit=yes\nNoNewPrivileges=yes\n\
             CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_KILL\nCapabilityBoundingSet=~CAP_KILL\n\
             PrivateTmp=yes\n{report}"
        ),
    );
    write_unit(
        &feather,
        "sb",
        "plain.service",
        &format!("[Service]\nType=oneshot\nRemainAfterExit=yes\n{report}"),
    );
    write_unit(
        &feather,
        "sb",
        "plus.service",
        &format!(
            "[Service]\nType=oneshot\nRemainAfterExit=yes\nNoNewPrivileges=yes\n\
             CapabilityBoundingSet=CAP_KILL\n{}",
            report.replace("ExecStart=", "ExecStart=+")
        ),
    );
    feather.ok(&["service", "start", "sb", "tight", "plain", "plus"]);
    let tight = status_lines(&feather, "sb", "tight");
    // CAP_NET_BIND_SERVICE is capability 10.
    assert!(tight.contains("CapBnd:\t0000000000000400"), "{tight}");
    assert!(tight.contains("CapEff:\t0000000000000400"), "{tight}");
    assert!(tight.contains("NoNewPrivs:\t1"), "{tight}");
    // Without the settings (and with `+`, full privileges), the VM's own set, no_new_privs off.
    for unit in ["plain", "plus"] {
        let text = status_lines(&feather, "sb", unit);
        assert!(text.contains("CapBnd:\t00000000a00425fb"), "{unit}: {text}");
        assert!(text.contains("NoNewPrivs:\t0"), "{unit}: {text}");
    }
    // Everything is applied (PrivateTmp= too: tight's process came from the VM's spawner).
    let list = services(&feather, "sb");
    assert_eq!(
        service(&list, "tight.service")["not_applied"],
        serde_json::json!([])
    );
}

#[test]
fn services_restrict_address_families_refuses_other_sockets() {
    let feather = Feather::new("svc-families");
    vm(&feather, "af");
    let script = "import socket\n\
        for name in (\"AF_UNIX\", \"AF_INET\", \"AF_INET6\"):\n\
        \x20   try:\n\
        \x20       socket.socket(getattr(socket, name), socket.SOCK_STREAM).close()\n\
        \x20       print(name, \"ok\")\n\
        \x20   except OSError as e:\n\
        \x20       print(name, \"errno\", e.errno)";
    feather.sh(
        "af",
        &format!("mkdir -p /opt/probe && cat > /opt/probe/families.py <<'EOF'\n{script}\nEOF"),
    );
    for (unit, setting) in [
        ("unixonly", "RestrictAddressFamilies=AF_UNIX\n"),
        ("noinet6", "RestrictAddressFamilies=~AF_INET6\n"),
        ("open", ""),
    ] {
        write_unit(
            &feather,
            "af",
            &format!("{unit}.service"),
            &format!(
                "[Service]\nType=oneshot\nRemainAfterExit=yes\n{setting}\
                 ExecStart=/usr/bin/python3 /opt/probe/families.py\n\
                 ExecStart=/bin/grep NoNewPrivs /proc/self/status\n"
            ),
        );
    }
    feather.ok(&["service", "start", "af", "unixonly", "noinet6", "open"]);
    let log = |unit: &str| status_lines(&feather, "af", unit);
    let eafnosupport = "errno 97";
    let unixonly = log("unixonly");
    assert!(unixonly.contains("AF_UNIX ok"), "{unixonly}");
    assert!(
        unixonly.contains(&format!("AF_INET {eafnosupport}")),
        "{unixonly}"
    );
    assert!(
        unixonly.contains(&format!("AF_INET6 {eafnosupport}")),
        "{unixonly}"
    );
    // The filter implies no_new_privs, as systemd implies it without CAP_SYS_ADMIN.
    assert!(unixonly.contains("NoNewPrivs:\t1"), "{unixonly}");
    let noinet6 = log("noinet6");
    assert!(
        noinet6.contains("AF_INET ok") && noinet6.contains(&format!("AF_INET6 {eafnosupport}")),
        "{noinet6}"
    );
    let open = log("open");
    assert!(
        open.contains("AF_INET ok") && open.contains("AF_INET6 ok"),
        "{open}"
    );
    assert!(open.contains("NoNewPrivs:\t0"), "{open}");
}

#[test]
fn services_system_call_filter_uses_the_groups_of_the_installed_systemd() {
    let feather = Feather::new("svc-syscalls");
    vm(&feather, "sc");
    let units = [
        // A deny list with an errno: uname(2) fails, the shell goes on.
        (
            "deny-errno",
            "SystemCallFilter=~uname\nSystemCallErrorNumber=EPERM\n",
            "ExecStart=/bin/sh -c 'uname -s || echo uname refused'\n",
        ),
        // Without an errno a refused call ends the process (SIGSYS): the command fails.
        (
            "deny-kill",
            "SystemCallFilter=~uname\n",
            "ExecStart=/bin/uname -s\n",
        ),
        // An allow list of systemd's groups, as redis-server.service has it: a service runs.
        (
            "allow",
            "SystemCallFilter=@system-service\nSystemCallFilter=~@privileged @resources\n",
            "ExecStart=/bin/sh -c 'uname -s; echo ran'\n",
        ),
    ];
    for (unit, filter, command) in units {
        write_unit(
            &feather,
            "sc",
            &format!("{unit}.service"),
            &format!("[Service]\nType=oneshot\nRemainAfterExit=yes\n{filter}{command}"),
        );
    }
    feather.ok(&["service", "start", "sc", "deny-errno", "allow"]);
    let refused = status_lines(&feather, "sc", "deny-errno");
    assert!(
        refused.contains("uname refused") && !refused.contains("Linux"),
        "{refused}"
    );
    let allowed = status_lines(&feather, "sc", "allow");
    assert!(
        allowed.contains("Linux") && allowed.contains("ran"),
        "{allowed}"
    );
    let killed = feather.fails(&["service", "start", "sc", "deny-kill"]);
    assert!(killed.contains("deny-kill.service failed"), "{killed}");
    let log = status_lines(&feather, "sc", "deny-kill");
    assert!(log.contains("signal 31") || log.contains("SIGSYS"), "{log}");
    assert!(!log.contains("Linux"), "{log}");
}

#[test]
fn services_ambient_capabilities_survive_the_user_change() {
    let feather = Feather::new("svc-ambient");
    vm(&feather, "amb");
    // pdns-recursor's way to bind port 53 as its own user.
    let report = "ExecStart=/bin/sh -c 'id -u; grep -E \"^Cap(Amb|Eff)\" /proc/self/status'\n";
    write_unit(
        &feather,
        "amb",
        "bind53.service",
        &format!(
            "[Service]\nType=oneshot\nRemainAfterExit=yes\nUser=nobody\n\
             AmbientCapabilities=CAP_NET_BIND_SERVICE\n{report}"
        ),
    );
    write_unit(
        &feather,
        "amb",
        "nocaps.service",
        &format!("[Service]\nType=oneshot\nRemainAfterExit=yes\nUser=nobody\n{report}"),
    );
    feather.ok(&["service", "start", "amb", "bind53", "nocaps"]);
    let kept = status_lines(&feather, "amb", "bind53");
    assert!(kept.contains("65534\n"), "{kept}");
    assert!(kept.contains("CapAmb:\t0000000000000400"), "{kept}");
    assert!(kept.contains("CapEff:\t0000000000000400"), "{kept}");
    let none = status_lines(&feather, "amb", "nocaps");
    assert!(none.contains("CapAmb:\t0000000000000000"), "{none}");
    assert!(none.contains("CapEff:\t0000000000000000"), "{none}");
    assert!(
        service(&services(&feather, "amb"), "bind53.service")["not_applied"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}
