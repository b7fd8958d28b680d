//! Every field of config.json feather-oci cannot honour is refused here, by its name in the
//! specification, before anything is made: the engine shows the error and nothing is left
//! behind. What is honoured is listed in docs/oci.md.

use std::collections::HashMap;

use anyhow::{bail, Result};
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Spec};

/// Refuses what feather-oci cannot do, naming the field.
pub fn check(spec: &Spec) -> Result<()> {
    if !spec.version().starts_with("1.") {
        bail!(
            "ociVersion {:?}: feather-oci reads version 1 configs",
            spec.version()
        );
    }
    let Some(process) = spec.process() else {
        bail!("process: a container needs a process to run");
    };
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        bail!("process.args: must name the program to run");
    }
    refuse_set("process.ioPriority", process.io_priority().is_some())?;
    refuse_set("process.scheduler", process.scheduler().is_some())?;
    refuse_set(
        "process.execCPUAffinity",
        process.exec_cpu_affinity().is_some(),
    )?;
    let Some(linux) = spec.linux() else {
        bail!("linux: feather-oci runs Linux containers; the section is missing");
    };
    let has =
        |typ: LinuxNamespaceType| linux.namespaces().iter().flatten().find(|n| n.typ() == typ);
    let mapped = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    match has(LinuxNamespaceType::User) {
        Some(ns) if ns.path().is_some() => bail!("linux.namespaces[user].path: joining another user namespace is not supported by feather-oci"),
        Some(_) => crate::userns::check(linux)?,
        None if mapped => bail!("linux.uidMappings: mappings need a new user namespace (linux.namespaces[user])"),
        None => {}
    }
    refuse_set(
        "linux.namespaces[time]",
        has(LinuxNamespaceType::Time).is_some(),
    )?;
    if has(LinuxNamespaceType::Mount).is_none() {
        bail!("linux.namespaces: feather-oci needs a mount namespace (type \"mount\"), new or joined by path");
    }
    // New or joined by path (the names are then set in that namespace, as runc does); never
    // the runtime's own, which is the host's.
    let own_uts = has(LinuxNamespaceType::Uts).is_some();
    if spec.hostname().as_ref().is_some_and(|h| !h.is_empty()) && !own_uts {
        bail!(
            "hostname: setting it needs a UTS namespace of the container's (linux.namespaces[uts])"
        );
    }
    if spec.domainname().as_ref().is_some_and(|h| !h.is_empty()) && !own_uts {
        bail!("domainname: setting it needs a UTS namespace of the container's (linux.namespaces[uts])");
    }
    if let Some(sysctls) = linux.sysctl() {
        check_sysctls(spec, sysctls)?;
    }
    refuse_set("linux.intelRdt", linux.intel_rdt().is_some())?;
    refuse_set("linux.personality", linux.personality().is_some())?;
    refuse_set("linux.timeOffsets", linux.time_offsets().is_some())?;
    refuse_set("linux.memoryPolicy", linux.memory_policy().is_some())?;
    refuse_set(
        "linux.netDevices",
        linux.net_devices().as_ref().is_some_and(|d| !d.is_empty()),
    )?;
    if let Some(propagation) = linux.rootfs_propagation() {
        if crate::mounts::propagation_flag(propagation).is_none() && !propagation.is_empty() {
            bail!("linux.rootfsPropagation {propagation:?}: expected shared, slave, private or unbindable (optionally r-prefixed)");
        }
    }
    if let Some(seccomp) = linux.seccomp() {
        refuse_set(
            "linux.seccomp.listenerPath",
            seccomp.listener_path().is_some(),
        )?;
        refuse_set(
            "linux.seccomp.flags",
            seccomp.flags().as_ref().is_some_and(|f| !f.is_empty()),
        )?;
    }
    if let Some(resources) = linux.resources() {
        check_resources(resources)?;
    }
    for mount in spec.mounts().iter().flatten() {
        if !mount.destination().is_absolute() {
            bail!(
                "mounts[{}].destination: must be an absolute path",
                mount.destination().display()
            );
        }
        let options = mount.options().clone().unwrap_or_default();
        if options.iter().any(|o| o == "tmpcopyup") {
            bail!(
                "mounts[{}].options \"tmpcopyup\": not supported by feather-oci",
                mount.destination().display()
            );
        }
        let is_bind = mount.typ().as_deref() == Some("bind")
            || options.iter().any(|o| o == "bind" || o == "rbind");
        if crate::idmap::requested(&options).is_some() && !is_bind {
            bail!(
                "mounts[{}].options idmap: only bind mounts are id-mapped by feather-oci",
                mount.destination().display()
            );
        }
    }
    crate::annotations::Feather::parse(spec)?;
    if crate::annotations::Feather::parse(spec)?.base_is_host() {
        if crate::userns::is_new(spec) {
            bail!("linux.namespaces[user]: not supported with org.feather.base=host (the host's files would all belong to nobody)");
        }
        return Ok(());
    }
    if spec.root().is_none() {
        bail!(
            "root: the container's root filesystem is missing (or annotate org.feather.base=host)"
        );
    }
    Ok(())
}

/// `linux.sysctl`: only knobs of a namespace the container has of its own, as runc, crun and
/// youki allow. Any other write lands in the host's knob, as host root without a user
/// namespace (`kernel.core_pattern`: a program run as host root at the next crash).
fn check_sysctls(spec: &Spec, sysctls: &HashMap<String, String>) -> Result<()> {
    for key in sysctls.keys() {
        crate::mounts::sysctl_path(key)?;
        // On the dotted form: a `/` is a dot inside a component (an interface's name).
        let Some((typ, name)) = namespace_of_sysctl(key) else {
            bail!("linux.sysctl[{key}]: not a knob of a namespace the container can have of its own, so it would change the host's; feather-oci sets kernel.msg*, kernel.sem*, kernel.shm* and fs.mqueue.* (ipc namespace), net.* (network namespace), kernel.hostname and kernel.domainname (uts namespace)");
        };
        if crate::confine::shares_host_namespace(spec, typ) {
            bail!("linux.sysctl[{key}]: needs a {name} namespace of the container's own (linux.namespaces[{name}], new or joined by a path that is not the host's); in the host's it would change the host's knob");
        }
    }
    Ok(())
}

/// The namespace whose copy of the knob a container changes, as the kernel keeps them.
fn namespace_of_sysctl(key: &str) -> Option<(LinuxNamespaceType, &'static str)> {
    const IPC: [&str; 4] = ["kernel.msg", "kernel.sem", "kernel.shm", "fs.mqueue."];
    if IPC.iter().any(|prefix| key.starts_with(prefix)) {
        Some((LinuxNamespaceType::Ipc, "ipc"))
    } else if key.starts_with("net.") {
        Some((LinuxNamespaceType::Network, "network"))
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Some((LinuxNamespaceType::Uts, "uts"))
    } else {
        None
    }
}

pub fn check_resources_public(resources: &LinuxResources) -> Result<()> {
    check_resources(resources)
}

fn check_resources(resources: &LinuxResources) -> Result<()> {
    if let Some(devices) = resources.devices() {
        crate::devices::policy_of_config(devices)?;
    }
    if let Some(memory) = resources.memory() {
        crate::cgroups::check_memory_v1_fields(memory)?;
    }
    if let Some(cpu) = resources.cpu() {
        refuse_set(
            "linux.resources.cpu.realtimeRuntime",
            cpu.realtime_runtime().is_some_and(|r| r != 0),
        )?;
        refuse_set(
            "linux.resources.cpu.idle",
            cpu.idle().is_some_and(|i| i != 0),
        )?;
        refuse_set(
            "linux.resources.cpu.burst",
            cpu.burst().is_some_and(|b| b != 0),
        )?;
    }
    refuse_set("linux.resources.network", resources.network().is_some())?;
    refuse_set(
        "linux.resources.rdma",
        resources.rdma().as_ref().is_some_and(|r| !r.is_empty()),
    )?;
    // cpuset, block I/O, huge pages and `unified`: by what this host has.
    crate::controllers::check(resources)
}

fn refuse_set(field: &str, set: bool) -> Result<()> {
    if set {
        bail!("{field}: not supported by feather-oci (leave it out of the config)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_keys_map_to_the_namespace_that_holds_them() {
        for (key, namespace) in [
            ("kernel.shmmax", Some(LinuxNamespaceType::Ipc)),
            ("kernel.msgmnb", Some(LinuxNamespaceType::Ipc)),
            ("kernel.sem", Some(LinuxNamespaceType::Ipc)),
            ("fs.mqueue.msg_max", Some(LinuxNamespaceType::Ipc)),
            ("net.ipv4.ip_forward", Some(LinuxNamespaceType::Network)),
            ("kernel.domainname", Some(LinuxNamespaceType::Uts)),
            ("kernel.core_pattern", None),
            ("kernel.hostnamex", None),
            ("vm.swappiness", None),
            ("fs.mqueue", None),
        ] {
            assert_eq!(namespace_of_sysctl(key).map(|(t, _)| t), namespace, "{key}");
        }
    }

    /// A `/` in a key is a dot inside a component (the kubelet's and sysctl(8)'s form): the two
    /// swap, as runc and crun do; the namespace is decided on the dotted form. A key whose
    /// path would have an empty, `.` or `..` component is refused by name.
    #[test]
    fn a_slash_in_a_sysctl_key_is_a_dot_inside_a_component() {
        use std::path::Path;
        let path = crate::mounts::sysctl_path;
        let vlan = "net.ipv4.conf.eth0/100.forwarding";
        assert_eq!(
            path(vlan).unwrap(),
            Path::new("net/ipv4/conf/eth0.100/forwarding")
        );
        assert_eq!(
            namespace_of_sysctl(vlan).map(|(t, _)| t),
            Some(LinuxNamespaceType::Network)
        );
        assert_eq!(path("kernel.shmmax").unwrap(), Path::new("kernel/shmmax"));
        for bad in [
            "net.ipv4.conf.//.forwarding",
            "net.ipv4.conf./..forwarding",
            "net..ipv4",
            ".net.ipv4",
            "net.ipv4.",
            "net.ipv4.conf.eth0/100.forwarding.//.//",
            "",
        ] {
            let error = path(bad).unwrap_err().to_string();
            assert!(
                error.contains(&format!("linux.sysctl[{bad}]")),
                "{bad}: {error}"
            );
        }
    }
}
