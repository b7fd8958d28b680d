//! What a restored container's processes came back with, checked while CRIU leaves the tree
//! stopped, before any of it runs ([`crate::restore`]).
//!
//! CRIU runs as the host's root and gives each task the capabilities, seccomp filters and
//! namespaces its images say; a checkpoint this host did not take (an imported archive, a
//! pulled checkpoint image) may say any. Each thread of the tree, as
//! `/proc/PID/task/TID` shows it (read with [`feather_confine::restored`], as `feather
//! restore` reads a VM's), must hold no more than a process of this config can:
//! - each capability set within the config's bounding set and that same set of
//!   `process.capabilities` (a set-uid or file-capability program fills its permitted and
//!   effective sets from the bounding set). Measured in the container's user namespace (the
//!   host's, or the init's when the config gives it one); a thread in a user namespace the
//!   container made holds capabilities over that namespace's objects only;
//! - the seccomp filters feather-oci installs for the config at the bottom of its stack: the
//!   config's `linux.seccomp` as feather-oci compiles it, then feather's deny list
//!   (`org.feather.confine`); above them, filters the container stacked itself. None when the
//!   config installs none;
//! - for each kind of namespace the config gives the container its own, not the host's (the
//!   runtime's) and, for the mount namespace, not the one CRIU ran in (a copy of the host's
//!   tree); without a user namespace of its own, the init in the host's.
//!
//! What it cannot see: the restored mount tree comes from the images (its automatic binds
//! are checked before CRIU runs, [`crate::restore`]).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use feather_confine::restored::{foreign_filters, namespace, walk_tree, Credentials, Program};
use oci_spec::runtime::{LinuxCapabilities, LinuxNamespaceType, Spec};

/// What a process of the container may hold.
pub struct Allowed {
    /// (status field, mask) for each capability set.
    caps: Vec<(&'static str, u64)>,
    /// The filters feather-oci installs, the first installed first; empty: none.
    filters: Vec<Program>,
    /// The kinds the container has of its own: (/proc's name, the user's).
    own: Vec<(&'static str, &'static str)>,
}

/// The kinds of namespace: /proc's name, the config's type, the user's name.
const KINDS: [(&str, LinuxNamespaceType, &str); 8] = [
    ("pid", LinuxNamespaceType::Pid, "pid"),
    ("mnt", LinuxNamespaceType::Mount, "mount"),
    ("net", LinuxNamespaceType::Network, "network"),
    ("ipc", LinuxNamespaceType::Ipc, "IPC"),
    ("uts", LinuxNamespaceType::Uts, "UTS"),
    ("user", LinuxNamespaceType::User, "user"),
    ("cgroup", LinuxNamespaceType::Cgroup, "cgroup"),
    ("time", LinuxNamespaceType::Time, "time"),
];

impl Allowed {
    pub fn for_config(spec: &Spec) -> Result<Allowed> {
        let process = spec.process().as_ref().context("process")?;
        let given = process.capabilities().as_ref();
        let set = |pick: Pick, field: &str| {
            crate::process::cap_set(given.and_then(|g| pick(g).as_ref()), field).map(|s| mask(&s))
        };
        let bounding = set(|g| g.bounding(), "process.capabilities.bounding")?;
        let caps = vec![
            ("CapBnd", bounding),
            (
                "CapPrm",
                bounding | set(|g| g.permitted(), "process.capabilities.permitted")?,
            ),
            (
                "CapEff",
                bounding | set(|g| g.effective(), "process.capabilities.effective")?,
            ),
            (
                "CapInh",
                bounding | set(|g| g.inheritable(), "process.capabilities.inheritable")?,
            ),
            (
                "CapAmb",
                bounding | set(|g| g.ambient(), "process.capabilities.ambient")?,
            ),
        ];
        let feather = crate::annotations::Feather::parse(spec)?;
        let confinement = crate::confine::Confinement::of(feather.confine, spec);
        let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
        let mut compiled = seccomp
            .as_ref()
            .map(crate::seccomp::compile)
            .transpose()?
            .unwrap_or_default();
        compiled.extend(confinement.filters()?);
        let filters = compiled.iter().map(as_program).collect();
        let own = KINDS
            .iter()
            .filter(|(_, typ, _)| !crate::confine::shares_host_namespace(spec, *typ))
            .map(|(kind, _, said)| (*kind, *said))
            .collect();
        Ok(Allowed { caps, filters, own })
    }

    fn has_own(&self, kind: &str) -> bool {
        self.own.iter().any(|(k, _)| *k == kind)
    }
}

/// One of `process.capabilities`' sets.
type Pick = fn(&LinuxCapabilities) -> &Option<oci_spec::runtime::Capabilities>;

fn mask(set: &caps::CapsHashSet) -> u64 {
    set.iter().fold(0, |mask, cap| mask | (1u64 << cap.index()))
}

fn as_program(program: &seccompiler::BpfProgram) -> Program {
    program
        .iter()
        .map(|i| feather_sys::seccomp::Instruction {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect()
}

/// The runtime's namespaces (the host's) and the one CRIU ran in, which no restored process
/// of a container with its own may be in.
pub struct Outside {
    host: Vec<(&'static str, PathBuf)>,
    restoring_mnt: Option<PathBuf>,
}

impl Outside {
    /// `restoring_mnt`: the mount namespace CRIU ran in (`mnt:[…]`), if known.
    pub fn here(restoring_mnt: Option<PathBuf>) -> Result<Outside> {
        let me = Path::new("/proc/self");
        let host = KINDS
            .iter()
            .filter(|(kind, _, _)| me.join("ns").join(kind).exists())
            .map(|(kind, _, _)| {
                namespace(me, kind)
                    .map(|ns| (*kind, ns))
                    .with_context(|| format!("read the runtime's {kind} namespace"))
            })
            .collect::<Result<_>>()?;
        Ok(Outside {
            host,
            restoring_mnt,
        })
    }

    fn hosts(&self, kind: &str) -> Option<&Path> {
        self.host
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, ns)| ns.as_path())
    }
}

/// Checks every thread of the stopped tree under `init` (a host pid); the first one holding
/// more than `allowed` refuses, naming it and what differs.
pub fn check_tree(init: i32, allowed: &Allowed, outside: &Outside) -> Result<()> {
    let container_user = match allowed.has_own("user") {
        true => namespace(Path::new(&format!("/proc/{init}")), "user")
            .context("read the restored init's user namespace")?,
        false => outside
            .hosts("user")
            .context("the runtime's user namespace is unknown")?
            .to_path_buf(),
    };
    walk_tree(
        init,
        |thread| check_thread(&thread, allowed, outside, &container_user),
        |what, e| anyhow::anyhow!("cannot read {what} to check the restored processes: {e}"),
    )
}

fn check_thread(
    thread: &feather_confine::restored::Thread,
    allowed: &Allowed,
    outside: &Outside,
    container_user: &Path,
) -> Result<()> {
    let status_path = thread.path.join("status");
    let status = fs::read_to_string(&status_path).with_context(|| {
        format!(
            "cannot read {} to check the restored processes",
            status_path.display()
        )
    })?;
    let creds = Credentials::parse(&status)
        .with_context(|| format!("cannot read the credentials in {}", status_path.display()))?;
    // CRIU restores zombies too (a child its parent has not waited for).
    if creds.ended {
        return Ok(());
    }
    let why = match excess(thread, &creds, allowed, outside, container_user)? {
        None => return Ok(()),
        Some(why) => why,
    };
    bail!(
        "refusing the restore: the restored process {} (thread {}, {:?}) holds more than a \
         process of this config can: {why}. The checkpoint was taken under another config or \
         altered; restore it with the config it was taken with, or restore a checkpoint this \
         host or a trusted one took",
        thread.pid,
        feather_confine::restored::thread_id(thread.path),
        creds.name
    )
}

/// Why one thread holds more than the config gives, for the user.
fn excess(
    thread: &feather_confine::restored::Thread,
    creds: &Credentials,
    allowed: &Allowed,
    outside: &Outside,
    container_user: &Path,
) -> Result<Option<String>> {
    let ns = |kind: &str| {
        namespace(thread.path, kind)
            .with_context(|| format!("cannot read the namespaces of {}", thread.path.display()))
    };
    for (kind, said) in &allowed.own {
        let Some(hosts) = outside.hosts(kind) else {
            continue;
        };
        if ns(kind)? == hosts {
            return Ok(Some(format!(
                "it is in the host's {said} namespace, where the config gives the container \
                 its own"
            )));
        }
    }
    if allowed.has_own("mnt") && outside.restoring_mnt.as_deref() == Some(ns("mnt")?.as_path()) {
        return Ok(Some(
            "it is in the mount namespace CRIU ran in (a copy of the host's tree), not the \
             container's"
                .into(),
        ));
    }
    let user = ns("user")?;
    if thread.init && user != container_user {
        return Ok(Some(format!(
            "the init is in a user namespace ({}) other than the host's, where the config \
             gives the container none of its own",
            user.display()
        )));
    }
    if user == container_user {
        if let Some(why) = beyond_caps(creds, allowed) {
            return Ok(Some(why));
        }
    }
    if allowed.filters.is_empty() {
        return Ok(None);
    }
    if creds.seccomp != 2 {
        return Ok(Some(format!(
            "Seccomp is {}, where the config runs every process under seccomp filters (mode 2)",
            creds.seccomp
        )));
    }
    let tid = feather_confine::restored::thread_id(thread.path);
    let held = feather_sys::seccomp::filters_of(tid.parse().context("not a thread id")?)
        .map_err(|e| anyhow::anyhow!("cannot read the seccomp filters of thread {tid}: {e}"))?;
    Ok(foreign_filters(
        &held,
        vec![allowed.filters.iter().collect()],
    ))
}

fn beyond_caps(creds: &Credentials, allowed: &Allowed) -> Option<String> {
    for (field, held) in &creds.caps {
        let may = allowed
            .caps
            .iter()
            .find(|(f, _)| f == field)
            .map_or(0, |(_, m)| *m);
        let beyond = held & !may;
        if beyond != 0 {
            return Some(format!(
                "{field} holds {held:016x}, with {} beyond what process.capabilities allows \
                 there ({may:016x}: {})",
                feather_confine::capabilities::names_of(beyond).join(", "),
                feather_confine::capabilities::names_of(may).join(", "),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with these capabilities (every set) and namespaces.
    fn config(caps: &[&str], namespaces: &[&str]) -> Spec {
        let namespaces: Vec<_> = namespaces
            .iter()
            .map(|n| serde_json::json!({ "type": n }))
            .collect();
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "args": ["sleep"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                "capabilities": {"bounding": caps, "permitted": caps, "effective": caps}
            },
            "root": {"path": "rootfs"},
            "linux": {"namespaces": namespaces}
        }))
        .unwrap()
    }

    /// Every capability this kernel knows, as a config names them.
    fn all_caps() -> Vec<String> {
        caps::runtime::thread_all_supported()
            .iter()
            .map(|cap| cap.to_string())
            .collect()
    }

    /// Ends a process the test started, by its pid, on drop.
    struct Started(std::process::Child);

    impl Drop for Started {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn refusal(spec: &Spec, process: &Started) -> String {
        let allowed = Allowed::for_config(spec).unwrap();
        let outside = Outside::here(None).unwrap();
        let pid = process.0.id() as i32;
        format!("{:#}", check_tree(pid, &allowed, &outside).unwrap_err())
    }

    /// A process of the test's (the host's namespaces, every capability, no filter) measured
    /// as a restored container's: refused on its pid namespace where the config gives the
    /// container one, on its mount namespace where that is the one CRIU ran in, on its
    /// bounding set where the config gives it no namespace, naming the capability.
    #[test]
    fn a_process_in_the_hosts_namespaces_or_beyond_the_configs_capabilities_is_refused() {
        let sleep = Started(
            std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap(),
        );
        let why = refusal(&config(&["CAP_KILL"], &["pid", "mount"]), &sleep);
        assert!(
            why.contains("the host's pid namespace") && why.contains(&sleep.0.id().to_string()),
            "{why}"
        );
        let mnt = namespace(Path::new(&format!("/proc/{}", sleep.0.id())), "mnt").unwrap();
        let allowed = Allowed::for_config(&config(&["CAP_KILL"], &["mount"])).unwrap();
        // Its mount namespace the one CRIU ran in, and not the host's (as a copy of it is not).
        let mut outside = Outside::here(Some(mnt)).unwrap();
        outside.host.retain(|(kind, _)| *kind != "mnt");
        let why = check_tree(sleep.0.id() as i32, &allowed, &outside).unwrap_err();
        assert!(
            format!("{why:#}").contains("the mount namespace CRIU ran in"),
            "{why:#}"
        );
        let why = refusal(&config(&["CAP_KILL"], &[]), &sleep);
        assert!(
            why.contains("CapBnd") && why.contains("CAP_SYS_ADMIN") && why.contains("\"sleep\""),
            "{why}"
        );
    }

    /// Where the config installs a filter, a process under none is refused naming its mode;
    /// where it installs none (a privileged config: no feather deny list) it passes.
    #[test]
    fn a_process_without_the_configs_filters_is_refused_unless_it_installs_none() {
        let sleep = Started(
            std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap(),
        );
        let every: Vec<String> = all_caps();
        let every: Vec<&str> = every.iter().map(String::as_str).collect();
        let unfiltered = config(&every, &[]);
        let allowed = Allowed::for_config(&unfiltered).unwrap();
        assert!(allowed.filters.is_empty());
        let outside = Outside::here(None).unwrap();
        check_tree(sleep.0.id() as i32, &allowed, &outside).unwrap();
        let mut filtered = unfiltered;
        let seccomp = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO"}]
        });
        let mut linux = filtered.linux().clone().unwrap();
        linux.set_seccomp(Some(serde_json::from_value(seccomp).unwrap()));
        filtered.set_linux(Some(linux));
        let why = refusal(&filtered, &sleep);
        assert!(why.contains("Seccomp is 0"), "{why}");
    }
}
