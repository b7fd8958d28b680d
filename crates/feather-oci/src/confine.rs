//! feather's IPC confinement on top of whatever config.json asks (`org.feather.confine`, on by
//! default): the seccomp deny list and the Landlock scope every feather VM runs under
//! (crates/feather-confine, docs/confinement.md), so that a container cannot do what a
//! feather VM cannot, whatever profile its engine sent — or none.
//!
//! - **seccomp**: feather's deny list is installed right after the config's own filters, at
//!   the point the config's are ([`crate::process::become_program`]). Stacked filters all
//!   apply and the strictest answer wins: the config's profile keeps every denial it makes, and
//!   feather's are added.
//! - **Landlock**: the init makes one domain for the container before it starts anything, so
//!   the services and the program, which descend from it, share it. Signals are scoped always;
//!   abstract unix sockets when the container shares the host's network namespace — a network
//!   namespace of its own fences them already, and CRIU's parasite code must reach an abstract
//!   socket of CRIU's to checkpoint the container (feather VMs make the same choice).
//! - **exec**: a process joined from outside cannot enter the init's domain (a domain is
//!   inherited, never joined). It gets the deny list and, in a container on the host's network
//!   namespace, a domain of its own scoping abstract sockets and signals (it then reaches
//!   neither the host's abstract sockets nor the container's, nor signals the container's
//!   processes); in a network namespace of its own the namespaces fence it, as the program.
//!
//! `org.feather.confine=none` turns it off. Without the annotation it is off for a privileged
//! container only (CAP_SYS_ADMIN in the config's bounding set: `docker run --privileged`, a
//! privileged pod): its engine asked for a container that may mount, load BPF and use
//! keyrings (Docker-in-Docker, a CNI plugin), which the deny list refuses, and Docker 20.10
//! has no `--annotation` to say so otherwise. `org.feather.confine=ipc` confines it anyway.

use std::os::unix::fs::MetadataExt;

use anyhow::{bail, Context, Result};
use feather_confine::landlock::{self, Scoping};
use feather_confine::seccomp::Profile;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::process::Filters;

/// What `org.feather.confine` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Confine {
    /// feather's seccomp deny list and Landlock scope, on top of the config's.
    #[default]
    Ipc,
    /// The config's confinement only, as under runc.
    None,
}

impl Confine {
    pub fn parse(key: &str, value: &str) -> Result<Confine> {
        match value {
            "ipc" => Ok(Confine::Ipc),
            "none" => Ok(Confine::None),
            other => bail!("annotation {key}={other:?}: use \"ipc\" (the default) or \"none\""),
        }
    }
}

/// The confinement of one container, decided on the host side (by `create` for the init, by
/// `exec` for its process) where the host's network namespace can be told apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Confinement {
    pub confine: Confine,
    /// The container shares the runtime's (the host's) network namespace: no namespace in the
    /// config, or one joined by a path that leads to the runtime's own.
    pub host_network: bool,
}

/// The host kernel's global knobs under /proc that a container's root could otherwise write
/// or read whatever its config says: made read-only, as every engine's default config asks.
/// A config without `readonlyPaths` still gets them under feather's confinement, so that such
/// a container cannot do what a feather VM cannot (write `vm.swappiness`, trigger sysrq).
pub const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The host's kernel memory, its timers and keys, masked likewise.
pub const MASKED: &[&str] = &[
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/sys/firmware",
];

impl Confinement {
    /// Whether feather's confinement is on for this container.
    pub fn is_on(&self) -> bool {
        self.confine == Confine::Ipc
    }

    /// `asked`: the annotation's value, if it was given.
    pub fn of(asked: Option<Confine>, spec: &Spec) -> Confinement {
        let confine = asked.unwrap_or(if is_privileged(spec) {
            Confine::None
        } else {
            Confine::Ipc
        });
        Confinement {
            confine,
            host_network: shares_host_network(spec),
        }
    }

    fn on(&self) -> bool {
        self.confine == Confine::Ipc
    }

    /// The container's Landlock domain keeps it from the host's abstract unix sockets: it is
    /// confined and shares the host's network namespace (where those sockets live).
    pub fn scopes_abstract_sockets(&self) -> bool {
        self.on() && self.host_network
    }

    /// feather's seccomp filters, for the program after the config's (none when turned off).
    pub fn filters(&self) -> Result<Filters> {
        if !self.on() {
            return Ok(Filters::new());
        }
        let profile = Profile::default();
        let mut filters: Filters = feather_confine::seccomp::compile_clone3(profile)
            .context("org.feather.confine")?
            .into_iter()
            .collect();
        filters.push(feather_confine::seccomp::compile(profile).context("org.feather.confine")?);
        Ok(filters)
    }

    /// The container's Landlock domain, made by the init for itself and all it starts. Needs
    /// CAP_SYS_ADMIN (no_new_privs stays as the config says): call it before the capability
    /// sets are applied.
    pub fn scope_init(&self) -> Result<()> {
        if !self.on() {
            return Ok(());
        }
        let scoped = if self.host_network {
            landlock::scope_ipc()
        } else {
            landlock::scope_signals()
        };
        report_unsupported(scoped.context("org.feather.confine")?);
        Ok(())
    }

    /// The Landlock domain of an `exec`'d process (see the module's comment).
    pub fn scope_exec(&self) -> Result<()> {
        if !self.on() || !self.host_network {
            return Ok(());
        }
        report_unsupported(landlock::scope_ipc().context("org.feather.confine")?);
        Ok(())
    }

    /// What the container's services run under: what a VM's processes do — feather's deny
    /// list (unless turned off) and Docker's default capability set — not the config's
    /// `process`, which describes the program.
    pub fn confine_services(&self) -> Result<()> {
        if self.on() {
            feather_confine::seccomp::install(Profile::default())
                .context("org.feather.services: confine the service manager")?;
        }
        feather_confine::capabilities::reduce_to_default()
            .context("org.feather.services: reduce the service manager's capabilities")?;
        Ok(())
    }
}

/// Older kernels have no scoping; the container then relies on its namespaces, as a VM does.
fn report_unsupported(scoping: Scoping) {
    if scoping == Scoping::Unsupported {
        eprintln!(
            "feather-oci: {}; abstract sockets and signals are confined by the container's \
             namespaces only",
            landlock::support()
        );
    }
}

/// CAP_SYS_ADMIN in the bounding set: what engines give a privileged container, and what
/// the deny list would take back.
fn is_privileged(spec: &Spec) -> bool {
    spec.process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
        .and_then(|c| c.bounding().as_ref())
        .is_some_and(|set| set.contains(&oci_spec::runtime::Capability::SysAdmin))
}

fn shares_host_network(spec: &Spec) -> bool {
    shares_host_namespace(spec, LinuxNamespaceType::Network)
}

/// The container is in the runtime's (the host's) namespace of this type: none in the config,
/// or one joined by a path that leads to the runtime's own.
pub fn shares_host_namespace(spec: &Spec, typ: LinuxNamespaceType) -> bool {
    let namespace = spec
        .linux()
        .iter()
        .flat_map(|l| l.namespaces().iter().flatten())
        .find(|ns| ns.typ() == typ);
    let Some(namespace) = namespace else {
        return true;
    };
    let Some(path) = namespace.path() else {
        return false;
    };
    let inode = |path: &std::path::Path| std::fs::metadata(path).map(|m| (m.dev(), m.ino()));
    let own = std::path::Path::new("/proc/self/ns").join(proc_ns_name(typ));
    // A path that cannot be read is taken for the host's: the stricter answer is the safe guess.
    match (inode(path), inode(&own)) {
        (Ok(joined), Ok(own)) => joined == own,
        _ => true,
    }
}

/// The type's name under `/proc/self/ns`, spelt out: a name that does not exist there would
/// make every namespace joined by a path count as the host's.
fn proc_ns_name(typ: LinuxNamespaceType) -> &'static str {
    match typ {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder};

    fn spec_with_network(path: Option<&str>) -> Spec {
        let mut namespace = LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Network)
            .build()
            .unwrap();
        namespace.set_path(path.map(std::path::PathBuf::from));
        let mut spec = Spec::default();
        spec.set_linux(Some(
            LinuxBuilder::default()
                .namespaces(vec![namespace])
                .build()
                .unwrap(),
        ));
        spec
    }

    #[test]
    fn the_host_network_is_told_from_a_namespace_of_its_own() {
        assert!(!shares_host_network(&spec_with_network(None)));
        assert!(shares_host_network(&spec_with_network(Some(
            "/proc/self/ns/net"
        ))));
        let mut none = Spec::default();
        none.set_linux(Some(
            LinuxBuilder::default().namespaces(vec![]).build().unwrap(),
        ));
        assert!(shares_host_network(&none));
    }

    #[test]
    fn privileged_containers_are_unconfined_unless_asked() {
        let mut privileged = Spec::default();
        let process = privileged.process().clone().unwrap();
        assert!(
            process
                .capabilities()
                .as_ref()
                .and_then(|c| c.bounding().as_ref())
                .is_some_and(|b| !b.contains(&oci_spec::runtime::Capability::SysAdmin)),
            "oci-spec's default process is runc's unprivileged example"
        );
        assert_eq!(Confinement::of(None, &privileged).confine, Confine::Ipc);
        let mut capabilities = process.capabilities().clone().unwrap();
        let mut bounding = capabilities.bounding().clone().unwrap();
        bounding.insert(oci_spec::runtime::Capability::SysAdmin);
        capabilities.set_bounding(Some(bounding));
        let mut process = process;
        process.set_capabilities(Some(capabilities));
        privileged.set_process(Some(process));
        assert_eq!(Confinement::of(None, &privileged).confine, Confine::None);
        let forced = Confinement::of(Some(Confine::Ipc), &privileged);
        assert_eq!(forced.confine, Confine::Ipc);
    }

    #[test]
    fn turned_off_means_no_filters() {
        let off = Confinement {
            confine: Confine::None,
            host_network: true,
        };
        assert!(off.filters().unwrap().is_empty());
        let on = Confinement {
            confine: Confine::Ipc,
            host_network: false,
        };
        assert!(!on.filters().unwrap().is_empty());
    }
}
