//! Sandboxing settings the VM's service manager applies to a unit's processes
//! (`NoNewPrivileges=`, `CapabilityBoundingSet=`), and the ones it lists as not applied.

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
    // What is not applied is listed, and only that.
    let list = services(&feather, "sb");
    assert_eq!(
        service(&list, "tight.service")["not_applied"],
        serde_json::json!(["Service.PrivateTmp"])
    );
}
