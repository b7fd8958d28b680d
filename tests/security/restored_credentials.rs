//! A restored VM's processes come back with no more than a process of that VM may hold: the
//! keeper reads each thread's credentials while CRIU leaves the tree stopped, and refuses the
//! restore otherwise (crates/feather-vm/src/restored_creds.rs), keeping the checkpoint.

use std::fs;

use crate::support::{count, start_counting, Feather, ScratchBase};

/// A VM checkpointed under a configuration allowing user namespaces runs under one filter
/// (no `clone3` filter); restored under a configuration without them, its processes lack the
/// filter every process of such a VM runs under, so the restore is refused, naming the
/// process and the field, and the checkpoint stays: restored under its own configuration
/// again, the VM goes on counting where it was.
#[test]
fn a_process_under_fewer_filters_than_the_vm_is_refused() {
    let feather = Feather::new("creds-filters");
    let base = ScratchBase::new("creds-filters");
    feather.start_over("vm", &base, &["--net", "none", "--allow-userns"]);
    feather.require_criu();
    start_counting(&feather, "vm");
    feather.eventually("the loop counts", || count(&feather, "vm") > 0);
    feather.ok(&["checkpoint", "vm"]);

    let config = feather.vm_dir("vm").join("config.toml");
    let allowing = fs::read_to_string(&config).unwrap();
    assert!(allowing.contains("allow_userns = true"), "{allowing}");
    fs::write(
        &config,
        allowing.replace("allow_userns = true", "allow_userns = false"),
    )
    .unwrap();
    let refused = feather.fails(&["restore", "vm"]);
    assert!(
        refused.contains("refusing the restore")
            && refused.contains("Seccomp_filters is 1")
            && refused.contains("at least 2")
            && refused.contains("feather-init"),
        "{refused}"
    );
    assert_eq!(feather.status("vm"), "checkpointed", "{refused}");
    assert!(feather
        .vm_dir("vm")
        .join("checkpoint/inventory.img")
        .exists());

    fs::write(&config, allowing).unwrap();
    feather.ok(&["restore", "vm"]);
    assert_eq!(feather.status("vm"), "running");
    let resumed = count(&feather, "vm");
    feather.eventually("the restored loop counts on", || {
        count(&feather, "vm") > resumed
    });
    feather.ok(&["stop", "vm"]);
    feather.ok(&["rm", "vm"]);
}
