//! What a fill of the pool ([`crate::pool::fill_detached`]) makes of itself before it starts
//! any VM: nothing of the caller whose run or command started it. The keepers and inits it
//! starts inherit its process, and serve later runs of other callers, so it takes fixed
//! process attributes, an environment of feather's settings only (see
//! [`crate::pooled::filler_command`]), no terminal, and a cgroup of feather's own: the end of
//! the caller's unit or job kills no pooled VM, and no caller is charged for one.

use std::fs;

use feather_core::StateRoot;
use feather_sys::cgroup::{Cgroup, Hierarchies};
use nix::sys::resource::{getrlimit, setrlimit, RLIM_INFINITY};
use nix::sys::stat::{umask, Mode};

use crate::error::{failed, Result};
use crate::workload::{Inherited, LIMITS};

/// The group, below `feather/` in each hierarchy (beside the VMs'), the fills' processes and
/// the pooled VMs' keepers live in.
pub const POOL_GROUP: &str = "feather/pool";

/// Makes this process one of no caller's: fixed umask, nice value, CPUs and limits (as far as
/// it may), feather's settings only in its environment, in feather's pool group.
pub fn become_no_callers(root: &StateRoot) -> Result<()> {
    keep_only_feathers_settings();
    take_fixed_attributes();
    enter_pool_group().map_err(|why| {
        failed(
            &root.dir().display(),
            format!(
                "the pool's fill cannot move into cgroup {POOL_GROUP}: {why}; its VMs would end \
                 with the unit of whoever started it"
            ),
        )
    })
}

/// Removes every variable of the environment but those that shape a VM (what the keepers and
/// inits this process starts inherit).
fn keep_only_feathers_settings() {
    for (key, _) in std::env::vars_os() {
        let kept = key.to_str().is_some_and(crate::pooled::kept_by_a_fill);
        if !kept {
            std::env::remove_var(&key);
        }
    }
    std::env::set_var("PATH", crate::workload::DEFAULT_PATH);
}

/// umask 022, nice 0, every CPU, each limit the host's init's (pid 1: what a login's
/// processes start from), or, where a caller lowered a hard limit (raising it back takes
/// CAP_SYS_RESOURCE, which a host may withhold), that hard limit: the same for every fill as
/// far as it may. A command run in a pooled VM gets its caller's
/// ([`crate::workload::Inherited`]) when they fit under its keeper's ([`limits_fit`]).
fn take_fixed_attributes() {
    umask(Mode::from_bits_truncate(0o022));
    let mut every = nix::sched::CpuSet::new();
    for cpu in 0..nix::sched::CpuSet::count() {
        let _ = every.set(cpu);
    }
    let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &every);
    let _ = feather_sys::process::set_nice(0);
    for (resource, host) in LIMITS.into_iter().zip(limits_of("1")) {
        let Some((soft, hard)) = host else {
            continue;
        };
        if setrlimit(resource, soft, hard).is_err() {
            if let Ok((_, held)) = getrlimit(resource) {
                let _ = setrlimit(resource, soft.min(held), held);
            }
        }
    }
}

/// Whether a caller's limits can be given to a command in the pooled VM whose keeper is
/// `keeper`: none of its hard limits is above the keeper's (the VM's init has the keeper's;
/// raising one takes a capability a VM's processes may not have).
pub fn limits_fit(inherited: &Inherited, keeper: i32) -> bool {
    let keepers = limits_of(&keeper.to_string());
    inherited
        .limits
        .iter()
        .zip(keepers)
        .all(|(&(_, hard), held)| held.is_some_and(|(_, held_hard)| hard <= held_hard))
}

/// What a process passes on to every process it starts, beyond its limits, and a VM's init and
/// commands keep: its network namespace (a VM's bridge, tables and uplink are made in it), its
/// `NoNewPrivs`, seccomp mode, capability bounding and ambient sets, LSM label and audit login
/// uid. A pooled VM has its keeper's; its caller's command would have the caller's.
#[derive(Debug, PartialEq, Eq)]
struct Context {
    network: Option<String>,
    status: Vec<Option<String>>,
    label: Option<Vec<u8>>,
    login_uid: Option<String>,
}

/// The fields of `/proc/<pid>/status` in [`Context`].
const CONTEXT_STATUS: [&str; 4] = ["NoNewPrivs", "Seccomp", "CapBnd", "CapAmb"];

fn context_of(pid: &str) -> Context {
    let proc = |what: &str| format!("/proc/{pid}/{what}");
    Context {
        network: fs::read_link(proc("ns/net"))
            .ok()
            .map(|link| link.display().to_string()),
        status: status_fields(pid, &CONTEXT_STATUS),
        label: fs::read(proc("attr/current")).ok(),
        login_uid: fs::read_to_string(proc("loginuid")).ok(),
    }
}

/// The values of `fields` in `/proc/<pid>/status`, where there.
fn status_fields(pid: &str, fields: &[&str]) -> Vec<Option<String>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    fields
        .iter()
        .map(|field| {
            status.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                (name == *field).then(|| value.trim().to_owned())
            })
        })
        .collect()
}

/// Whether this process's command would run in the pooled VM whose keeper is `keeper` as in a
/// VM of its own: its [`Context`] is the keeper's. Another caller's VM stays in the pool.
pub fn context_fits(keeper: i32) -> bool {
    context_of("self") == context_of(&keeper.to_string())
}

/// The namespaces a fill must share with the host's init.
const HOST_NAMESPACES: [&str; 8] = ["net", "mnt", "uts", "ipc", "pid", "cgroup", "user", "time"];

/// What of this process's context is not the host's (its init's namespaces, where readable, and
/// capability bounding set, no `NoNewPrivs`, no seccomp filter), if anything: a fill made so makes no
/// VM, as its VMs would pass a caller's constraints (or lack of them) on to other callers.
pub fn not_the_hosts_context() -> Option<String> {
    for namespace in HOST_NAMESPACES {
        let of = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/{namespace}")).ok();
        // Where the host's init's cannot be read (a container whose init is not ours to
        // inspect), the other checks still hold.
        let (ours, hosts) = (of("self"), of("1"));
        if hosts.is_some() && ours != hosts {
            return Some(format!(
                "its {namespace} namespace ({ours:?}) is not the host's ({hosts:?})"
            ));
        }
    }
    let ours = status_fields("self", &CONTEXT_STATUS);
    let hosts = status_fields("1", &CONTEXT_STATUS);
    let none = Some("0".to_owned());
    let expected = [none.clone(), none, hosts[2].clone(), hosts[3].clone()];
    for ((name, ours), expected) in CONTEXT_STATUS.iter().zip(ours).zip(expected) {
        if ours != expected {
            return Some(format!(
                "its {name} is {ours:?}, not {expected:?} as the host's"
            ));
        }
    }
    None
}

/// Each of [`LIMITS`] (soft, hard) as process `pid` has it, where readable.
fn limits_of(pid: &str) -> Vec<Option<(u64, u64)>> {
    // /proc/<pid>/limits names each limit (26 columns), then soft and hard values.
    const NAMES: [&str; 16] = [
        "Max address space",
        "Max core file size",
        "Max cpu time",
        "Max data size",
        "Max file size",
        "Max file locks",
        "Max locked memory",
        "Max msgqueue size",
        "Max nice priority",
        "Max open files",
        "Max processes",
        "Max resident set",
        "Max realtime priority",
        "Max realtime timeout",
        "Max pending signals",
        "Max stack size",
    ];
    let value = |text: &str| match text {
        "unlimited" => Some(RLIM_INFINITY),
        number => number.parse().ok(),
    };
    let table = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    NAMES
        .iter()
        .map(|name| {
            let line = table.lines().find(|line| line.starts_with(name))?;
            let mut fields = line.get(26..)?.split_whitespace();
            Some((value(fields.next()?)?, value(fields.next()?)?))
        })
        .collect()
}

/// Moves this process into [`POOL_GROUP`] in every hierarchy (made if missing).
fn enter_pool_group() -> std::result::Result<(), String> {
    let group = Cgroup::new(Hierarchies::detect(), POOL_GROUP);
    for dir in group.dirs() {
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    group.add(nix::unistd::getpid()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_limits_are_read_for_every_limit() {
        let limits = limits_of("1");
        assert_eq!(limits.len(), LIMITS.len());
        assert!(limits.iter().all(Option::is_some), "{limits:?}");
    }
}
