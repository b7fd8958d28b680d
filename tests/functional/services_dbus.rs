//! `Type=dbus` services: ready only once their `BusName=` has an owner on the VM's own D-Bus
//! system bus, which the service manager watches (NameHasOwner, NameOwnerChanged). A unit of
//! that type brings the bus with it (systemd's implicit `Requires=dbus.socket`); a name that
//! never appears, or a bus that does not answer, ends in a message that says so.

use std::process::Stdio;

use super::services::{service, services, vm, write_unit};
use crate::support::Feather;

const POLKIT_NAME: &str = "org.freedesktop.PolicyKit1";

/// Whether `name` has an owner on the VM's system bus, asked with dbus-send inside the VM.
fn has_owner(feather: &Feather, vm: &str, name: &str) -> bool {
    let answer = feather.sh(
        vm,
        &format!("dbus-send --system --print-reply=literal --dest=org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus.NameHasOwner string:{name}"),
    );
    answer.trim() == "boolean true"
}

#[test]
fn polkit_is_ready_once_its_bus_name_appears_on_the_vms_own_bus() {
    let feather = Feather::new("svc-dbus-ready");
    vm(&feather, "pk");
    // polkit.service (Debian's polkitd) is Type=dbus, BusName=org.freedesktop.PolicyKit1, and
    // names no dependency on dbus: the implicit Requires=/After=dbus.socket brings the bus.
    feather.ok(&["service", "start", "pk", "polkit"]);
    let list = services(&feather, "pk");
    for unit in ["dbus.socket", "dbus.service"] {
        assert_eq!(service(&list, unit)["state"], "active", "{list:?}");
    }
    let polkit = service(&list, "polkit.service");
    assert_eq!(
        (polkit["state"].as_str(), polkit["ready"].as_bool()),
        (Some("active"), Some(true)),
        "{polkit}"
    );
    assert_eq!(
        polkit["status_text"],
        format!("owns bus name {POLKIT_NAME}")
    );
    // The owner of the name is the unit's main process, on the VM's bus.
    let owner_pid = feather.sh(
        "pk",
        &format!("dbus-send --system --print-reply=literal --dest=org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus.GetConnectionUnixProcessID string:{POLKIT_NAME}"),
    );
    assert_eq!(
        owner_pid.split_whitespace().last(),
        Some(polkit["main_pid"].to_string().as_str()),
        "{owner_pid}"
    );
    // The manager waited for the name after starting polkitd (the syslog line in which
    // polkitd says it took the name may be filed before or after the manager's own).
    let log = feather.sh("pk", "cat /var/log/feather/polkit.service.log");
    let at = |text: &str| {
        log.find(text)
            .unwrap_or_else(|| panic!("{text:?} not in the log:\n{log}"))
    };
    assert!(at("waiting for bus name") < at("acquired: ready"), "{log}");
    at("Acquired the name");
    let table = feather.ok(&["service", "ls", "pk"]);
    assert!(
        table.contains(&format!("owns bus name {POLKIT_NAME}")),
        "{table}"
    );

    // A unit that takes its name only after 4 s (no Type=: BusName= makes it Type=dbus, as in
    // systemd) is activating, waiting for the name, until then.
    feather.ok(&["service", "stop", "pk", "polkit"]);
    assert!(!has_owner(&feather, "pk", POLKIT_NAME));
    write_unit(
        &feather,
        "pk",
        "late-polkit.service",
        &format!("[Service]\nBusName={POLKIT_NAME}\nExecStart=/bin/sh -c 'sleep 4; exec /usr/lib/polkit-1/polkitd --no-debug'\n"),
    );
    let start = feather
        .command()
        .args(["service", "start", "pk", "late-polkit"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    feather.eventually("late-polkit is waiting for its bus name", || {
        services(&feather, "pk")
            .iter()
            .any(|s| s["name"] == "late-polkit.service" && s["state"] == "activating")
    });
    let list = services(&feather, "pk");
    let late = service(&list, "late-polkit.service");
    assert_eq!(late["ready"], false, "{late}");
    assert_eq!(
        late["status_text"],
        format!("waiting for bus name {POLKIT_NAME} on the VM's D-Bus system bus"),
        "{late}"
    );
    let table = feather.ok(&["service", "ls", "pk"]);
    assert!(table.contains("waiting for bus name"), "{table}");
    assert!(!has_owner(&feather, "pk", POLKIT_NAME));
    let output = start.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let late = service(&services(&feather, "pk"), "late-polkit.service").clone();
    assert_eq!(
        (late["state"].as_str(), late["ready"].as_bool()),
        (Some("active"), Some(true)),
        "{late}"
    );
    assert!(has_owner(&feather, "pk", POLKIT_NAME));
}

#[test]
fn a_bus_name_that_never_appears_fails_the_start_with_a_timeout_that_says_so() {
    let feather = Feather::new("svc-dbus-never");
    vm(&feather, "nv");
    write_unit(
        &feather,
        "nv",
        "never.service",
        "[Service]\nType=dbus\nBusName=org.feather.Never\nExecStart=/bin/sleep 1000\nTimeoutStartSec=2\n",
    );
    let e = feather.fails(&["service", "start", "nv", "never"]);
    assert!(
        e.contains("never.service failed: timed out after 2s waiting for its bus name org.feather.Never to appear on the VM's D-Bus system bus (Type=dbus, TimeoutStartSec=)"),
        "{e}"
    );
    let list = services(&feather, "nv");
    let never = service(&list, "never.service");
    assert_eq!(
        (never["state"].as_str(), never["main_pid"].as_i64()),
        (Some("failed"), None),
        "{never}"
    );
    // The bus itself came up with it and stays: only the unit failed.
    assert_eq!(service(&list, "dbus.service")["state"], "active");
    assert!(
        !feather.sh("nv", "ps -eo args").contains("sleep 1000"),
        "the failed unit's process was left running"
    );
}

#[test]
fn a_type_dbus_unit_says_when_the_vms_bus_is_missing_or_silent() {
    let feather = Feather::new("svc-dbus-nobus");
    vm(&feather, "nb");
    write_unit(
        &feather,
        "nb",
        "needs-bus.service",
        "[Service]\nType=dbus\nBusName=org.feather.NeedsBus\nExecStart=/bin/sleep 1000\nTimeoutStartSec=2\n",
    );
    // dbus.service whose daemon does not run: the socket listens (the manager holds it), but
    // nothing answers on it.
    feather.sh(
        "nb",
        "mkdir -p /etc/systemd/system/dbus.service.d && printf '[Service]\\nExecStart=\\nExecStart=/bin/false\\n' > /etc/systemd/system/dbus.service.d/broken.conf",
    );
    let e = feather.fails(&["service", "start", "nb", "needs-bus"]);
    assert!(e.contains("dbus.service failed"), "{e}");
    assert!(
        e.contains("needs-bus.service failed: timed out after 2s waiting for its bus name org.feather.NeedsBus")
            && e.contains("the bus could not be reached: /run/dbus/system_bus_socket accepted the connection, but no dbus-daemon answered"),
        "{e}"
    );
    // No dbus.socket at all (masked in the VM): the start is refused, naming the bus.
    feather.sh("nb", "ln -sf /dev/null /etc/systemd/system/dbus.socket");
    let e = feather.fails(&["service", "start", "nb", "polkit"]);
    assert!(
        e.contains("polkit.service is Type=dbus and so requires the VM's own D-Bus system bus, dbus.socket, which is not available: unit dbus.socket is masked"),
        "{e}"
    );
}
