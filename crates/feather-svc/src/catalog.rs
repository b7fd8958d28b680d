//! The catalogue: the services installed on a machine (its unit files and SysV scripts), and
//! for each whether feather can run a private copy in a VM, and if not, why.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::graph::DependencyGraph;
use crate::name::UnitName;
use crate::paths::{inside, Fragment, UnitPaths};
use crate::unit::{ServiceType, Unit};
use crate::{infra, sysv, SvcError};

#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub name: String,
    /// `unit`, `template` or `sysv`.
    pub source: &'static str,
    pub path: Option<PathBuf>,
    pub description: Option<String>,
    #[serde(rename = "type")]
    pub service_type: Option<ServiceType>,
    pub duplicable: bool,
    /// Why not, or (for some that can) what to know.
    pub note: Option<String>,
}

/// Every service of the machine whose root is `root`, sorted by name.
pub fn catalog(root: &Path) -> crate::Result<Vec<Entry>> {
    let paths = UnitPaths::new(root);
    let mut entries = Vec::new();
    for name in paths.all_names() {
        if name.kind() != "service" {
            continue;
        }
        match paths.find(&name)? {
            // Aliases are listed under the name they point to.
            Some(Fragment::File { name: real, .. }) if real != name => continue,
            _ => {}
        }
        entries.push(entry(&paths, &name));
    }
    for script in sysv::scripts(root)? {
        let name = UnitName::parse(&format!("{}.service", script.name))?;
        if paths.find(&name)?.is_some() {
            // A unit of the same name replaces the script, as with systemd.
            continue;
        }
        let (duplicable, note) = if script.is_boot_script() {
            (
                false,
                Some("a boot-time script of the host (Default-Start: S)".to_owned()),
            )
        } else if let Some(stand_in) = infra::stand_in(&name) {
            (
                false,
                Some(format!("host infrastructure; in a VM: {stand_in}")),
            )
        } else {
            (
                true,
                Some("SysV script, run as a forking service".to_owned()),
            )
        };
        entries.push(Entry {
            name: name.to_string(),
            source: "sysv",
            description: script.short_description.clone(),
            path: Some(script.path.clone()),
            service_type: Some(ServiceType::Forking),
            duplicable,
            note,
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

fn entry(paths: &UnitPaths, name: &UnitName) -> Entry {
    let mut entry = Entry {
        name: name.to_string(),
        source: if name.is_template() {
            "template"
        } else {
            "unit"
        },
        path: None,
        description: None,
        service_type: None,
        duplicable: false,
        note: None,
    };
    if let Some(stand_in) = infra::stand_in(name) {
        entry.note = Some(format!("host infrastructure; in a VM: {stand_in}"));
        if let Ok(Some(Fragment::File { path, .. })) = paths.find(name) {
            entry.path = Some(path);
        }
        return entry;
    }
    // A template is checked through an instance of it.
    let probe = if name.is_template() {
        name.with_instance("instance")
    } else {
        name.clone()
    };
    let unit = match paths.load(&probe) {
        Ok(unit) => unit,
        Err(SvcError::Masked { path, .. }) => {
            entry.path = Some(path);
            entry.note = Some("masked on the host".into());
            return entry;
        }
        Err(e) => {
            entry.note = Some(e.to_string());
            return entry;
        }
    };
    entry.path = unit.fragment.clone();
    entry.description = unit.description.clone();
    entry.service_type = unit.service.as_ref().map(|s| s.kind);
    match why_not(paths, &unit, &probe) {
        Some(reason) => entry.note = Some(reason),
        None => {
            entry.duplicable = true;
            if name.is_template() {
                entry.note = Some(format!("start an instance: {}", name.with_instance("NAME")));
            } else if let Some(name) = unit
                .service
                .as_ref()
                .filter(|s| s.kind == ServiceType::Dbus)
                .and_then(|s| s.bus_name.as_deref())
            {
                entry.note = Some(format!(
                    "Type=dbus: ready once {name} has an owner on the VM's own system bus (starts dbus with it)"
                ));
            }
        }
    }
    entry
}

/// Why `unit` cannot run in a VM, if it cannot.
pub fn why_not(paths: &UnitPaths, unit: &Unit, name: &UnitName) -> Option<String> {
    if let Err(e) = validate(unit) {
        return Some(e.to_string());
    }
    if let Some(missing) = missing_program(paths.root(), unit) {
        return Some(format!(
            "its program {} is not installed",
            missing.display()
        ));
    }
    if unit.exec.dynamic_user {
        return Some("DynamicUser=yes is not supported in VMs yet".into());
    }
    let graph = match DependencyGraph::closure(paths, std::slice::from_ref(name)) {
        Err(e) => return Some(e.to_string()),
        Ok(graph) => graph,
    };
    if let Err(e) = graph.start_waves() {
        return Some(e.to_string());
    }
    graph
        .units
        .values()
        .find_map(needs_the_host)
        .map(|e| e.to_string())
}

/// A unit that only the host's kernel or devices can serve: a VM's copy could start but never
/// do its work, so the catalogue says no.
#[derive(Debug, thiserror::Error)]
pub enum HostOnly {
    #[error("{unit} requires {mount}: {what}, which a VM can neither mount nor serve (mounting needs CAP_SYS_ADMIN, which a VM does not have; the server is the host's kernel)")]
    KernelFilesystem {
        unit: String,
        mount: String,
        what: &'static str,
    },
    #[error("{unit} needs the device {device} (DeviceAllow=), which a VM's /dev does not have (a VM gets only null, zero, full, random, urandom, tty, ptmx and its own pts, shm and mqueue)")]
    Device { unit: String, device: String },
}

/// Mount units of kernel filesystems whose users talk to a server in the host's kernel.
const KERNEL_FILESYSTEMS: &[(&str, &str)] = &[
    (
        "proc-fs-nfsd.mount",
        "the kernel's NFS server (the nfsd filesystem at /proc/fs/nfsd)",
    ),
    (
        "var-lib-nfs-rpc_pipefs.mount",
        "rpc_pipefs, through which NFS's id mapping and security daemons serve the kernel's NFS",
    ),
    (
        "run-rpc_pipefs.mount",
        "rpc_pipefs, through which NFS's id mapping and security daemons serve the kernel's NFS",
    ),
    (
        "proc-sys-fs-binfmt_misc.mount",
        "binfmt_misc, where binary formats are registered for the whole host",
    ),
    (
        "sys-kernel-config.mount",
        "configfs, the kernel's configurable objects (iSCSI and USB gadget targets)",
    ),
];

/// The device nodes a VM's /dev has (feather-vm's rootfs makes it); `/dev/pts/…` too.
const VM_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
];

/// Why `unit` can only work on the host: a kernel filesystem it requires, or a device its
/// `DeviceAllow=` names that a VM lacks.
pub fn needs_the_host(unit: &Unit) -> Option<HostOnly> {
    let deps = &unit.dependencies;
    let mount = deps.requires.iter().chain(&deps.binds_to).find_map(|dep| {
        KERNEL_FILESYSTEMS
            .iter()
            .find(|(mount, _)| mount == dep)
            .map(|(mount, what)| HostOnly::KernelFilesystem {
                unit: unit.name.to_string(),
                mount: (*mount).to_owned(),
                what,
            })
    });
    mount.or_else(|| {
        unit.exec
            .device_allow
            .iter()
            .find(|d| !VM_DEVICES.contains(&d.as_str()) && !d.starts_with("/dev/pts/"))
            .map(|device| HostOnly::Device {
                unit: unit.name.to_string(),
                device: device.clone(),
            })
    })
}

/// A unit systemd would refuse to start, though its syntax is fine.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("{unit} has Accept=yes and Service={service}: an accepting socket starts instances of {stem}@.service, Service= is not allowed with it")]
    AcceptWithService {
        unit: String,
        service: String,
        stem: String,
    },
    #[error("{0} has no ExecStart= (only Type=oneshot may go without)")]
    NoExecStart(String),
    #[error("{0} has neither ExecStart= nor ExecStop=")]
    NothingToRun(String),
    #[error("{0} is Type=dbus but has no BusName=: there is no name to wait for on the bus")]
    DbusWithoutBusName(String),
    #[error("{0} has more than one ExecStart=, which only Type=oneshot allows")]
    SeveralExecStart(String),
}

/// The checks systemd makes when it loads a service, beyond syntax.
pub fn validate(unit: &Unit) -> Result<(), Invalid> {
    let name = || unit.name.to_string();
    if let Some(socket) = unit.socket.as_ref().filter(|s| s.accept) {
        if let Some(service) = &socket.service {
            return Err(Invalid::AcceptWithService {
                unit: name(),
                service: service.clone(),
                stem: unit.name.stem().to_owned(),
            });
        }
    }
    let Some(service) = &unit.service else {
        return Ok(());
    };
    if service.exec_start.is_empty() && service.kind != ServiceType::Oneshot {
        return Err(Invalid::NoExecStart(name()));
    }
    if service.exec_start.is_empty() && service.exec_stop.is_empty() {
        return Err(Invalid::NothingToRun(name()));
    }
    if service.kind == ServiceType::Dbus && service.bus_name.is_none() {
        return Err(Invalid::DbusWithoutBusName(name()));
    }
    if service.exec_start.len() > 1 && service.kind != ServiceType::Oneshot {
        return Err(Invalid::SeveralExecStart(name()));
    }
    Ok(())
}

/// The first program of the unit's start commands that does not exist below `root`.
pub fn missing_program(root: &Path, unit: &Unit) -> Option<PathBuf> {
    let service = unit.service.as_ref()?;
    service
        .exec_start_pre
        .iter()
        .chain(&service.exec_start)
        .filter(|c| !c.ignore_failure)
        .map(|c| resolve_program(root, &c.path))
        .find_map(|found| found.err())
}

/// The search path systemd uses for programs given without a `/`.
const PROGRAM_PATH: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// The program `path` as found below `root`, or the path that is missing.
pub fn resolve_program(root: &Path, path: &str) -> Result<PathBuf, PathBuf> {
    let executable = |p: &Path| {
        std::fs::metadata(inside(root, &p.to_string_lossy()))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if path.starts_with('/') {
        let p = PathBuf::from(path);
        return if executable(&p) { Ok(p) } else { Err(p) };
    }
    PROGRAM_PATH
        .iter()
        .map(|dir| Path::new(dir).join(path))
        .find(|p| executable(p))
        .ok_or_else(|| PathBuf::from(path))
}
