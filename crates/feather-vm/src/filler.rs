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
        let kept = key
            .to_str()
            .is_some_and(|key| crate::pooled::SHAPING_SETTINGS.contains(&key));
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
