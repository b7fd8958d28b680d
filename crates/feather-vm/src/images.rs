//! The files of a VM's checkpoint folder that both sides read: the asker's (`feather
//! checkpoint`, `restore`, `migrate`, `serve`: [`crate::checkpoint`], [`crate::migration`]) and
//! the keeper's, which dumps and restores the VM ([`crate::snapshot`]).

use std::fs;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use feather_core::VmDir;
use feather_sys::process;
use nix::unistd::Pid;

/// The file in an images folder that says a dump completed.
pub(crate) const INVENTORY: &str = "inventory.img";

/// The VM's layers over other host filesystems at the time of the dump (see [`ExternalLayer`]).
pub(crate) const LAYERS: &str = "layers.json";

/// The subnet of the VM's address (`--net private`) where it was checkpointed.
pub(crate) const SUBNET: &str = "subnet.json";

/// Present when the VM's network namespace was not dumped (`--net none`: loopback only;
/// `--net private`: what feather made and nothing else, `feather_net::as_made`; the VM cannot
/// change either): the restoring side makes one anew, as at a start, and hands it to CRIU.
/// Saves CRIU's `ip` and `iptables-save` runs at the dump, their counterparts at the restore,
/// and the veth pair CRIU made.
pub(crate) const EXTERNAL_NETNS: &str = "external-netns";

/// Present, saying why, when a private network's namespace differed from what feather made and
/// CRIU dumped it whole.
pub(crate) const NETNS_DUMPED: &str = "netns-dumped";

/// Present while a VM restored for a migration waits for `feather serve` to confirm it; holds
/// that serve's pid and start time ([`Receiver`]). See `snapshot::await_release`.
pub(crate) const HOLD: &str = "hold";

/// A layer of the VM over another host filesystem (a separate /home, a tmpfs under /mnt). CRIU
/// does not dump these overlays (it could not mount them again: their options name host
/// folders in feather's escaped spelling, which it mangles); the restoring side mounts each
/// from the VM's own folder and hands it to CRIU under its key.
///
/// The files feather generates for the VM (`/etc/hosts`, …) are listed here too, with
/// `generated`: they are bound from the VM's run folder, which lies elsewhere in another state
/// root, so the restoring side names where its own copies are.
///
/// So are the masks over kernel folders (`/proc/acpi`, `/sys/firmware`, …), with `mask`: empty
/// read-only tmpfs, which CRIU would otherwise archive with `tar --gzip` and unpack again, a
/// program run each way per mask during a migration's freeze; the restoring side mounts one
/// such tmpfs and hands it to CRIU for each. And so is the read-only tmpfs at `/sys/fs/cgroup`
/// with `cgroup_top`, the folders it holds for the cgroup hierarchies bound there, which CRIU
/// binds again on them. And so is each hierarchy bound there, with `cgroup_services`: the
/// restoring side hands CRIU the `services/` folder of the VM's group in that hierarchy, as a
/// start binds it; left to CRIU, which mounts a cgroup hierarchy anew at the cgroup
/// namespace's root, the restored VM had its own group there, its limits writable; its
/// `groups` are the units' groups in it, which CRIU leaves out.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct ExternalLayer {
    pub(crate) key: String,
    pub(crate) mount_point: PathBuf,
    #[serde(default)]
    pub(crate) generated: bool,
    #[serde(default)]
    pub(crate) mask: bool,
    #[serde(default)]
    pub(crate) cgroup_top: Option<Vec<PathBuf>>,
    #[serde(default)]
    pub(crate) cgroup_services: bool,
    /// With `cgroup_services`: the groups below that `services/` folder at the dump, with their
    /// processes and limits, which the restore puts back (see [`crate::service_groups`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) groups: Vec<crate::service_groups::SavedGroup>,
}

/// Present while a VM received by a post-copy migration has its memory fetched from the
/// sender's page server by `criu lazy-pages` (started by `feather serve`): its restore is lazy.
pub(crate) const LAZY: &str = "lazy-pages";

/// The marker a sending host leaves in the VM's checkpoint folder from the moment it lets the
/// VM go until the receiver says it runs there: a restore here would run it twice.
pub(crate) const RELEASED_TO: &str = "released-to";

/// The `feather serve` a VM received by migration waits for (in [`HOLD`]): a process named by
/// its pid and its start time (`/proc/PID/stat` field 22), which together name one process for
/// the machine's uptime. The pid alone names whatever has it now: once that serve ended, any
/// process that got its pid — a VM's among them, whose command line is the VM's to choose —
/// would pass for it, and a copy the sender kept would be restored here as well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Receiver {
    pub(crate) pid: i32,
    /// None in a hold an older feather wrote (its pid alone): such a receiver counts as ended.
    start_ticks: Option<u64>,
}

impl Receiver {
    /// This process, as the receiver of a migration; None when its start time cannot be
    /// read (no /proc): a hold without it would count as a receiver that ended, and the copy
    /// would be refused while this process still receives it.
    pub(crate) fn this_process() -> Option<Receiver> {
        let pid = std::process::id() as i32;
        Some(Receiver {
            pid,
            start_ticks: Some(process::start_ticks(Pid::from_raw(pid))?),
        })
    }

    /// The text of a [`HOLD`] file: the pid and the start time.
    pub(crate) fn to_text(self) -> String {
        match self.start_ticks {
            Some(ticks) => format!("{} {ticks}", self.pid),
            None => self.pid.to_string(),
        }
    }

    fn parse(text: &str) -> Option<Receiver> {
        let mut words = text.split_whitespace();
        let pid = words.next()?.parse().ok()?;
        let start_ticks = match words.next() {
            Some(ticks) => Some(ticks.parse().ok()?),
            None => None,
        };
        Some(Receiver { pid, start_ticks })
    }

    /// A pidfd of the receiver while it runs; None once it ended, whatever has its pid since.
    /// The pidfd is opened first: a process started when the receiver did, found at its pid
    /// after that, is the one the pidfd holds (the pid was not free in between).
    pub(crate) fn pidfd(self) -> Option<OwnedFd> {
        let start_ticks = self.start_ticks?;
        let pid = Pid::from_raw(self.pid);
        let pidfd = process::pidfd_open(pid).ok()?;
        (process::start_ticks(pid) == Some(start_ticks)).then_some(pidfd)
    }

    /// Whether the receiver still runs (see [`Receiver::pidfd`]).
    pub(crate) fn runs(self) -> bool {
        self.pidfd().is_some()
    }
}

/// The `feather serve` a VM received by migration waits for, if it waits.
pub(crate) fn held_for(vm: &VmDir) -> Option<Receiver> {
    Receiver::parse(&fs::read_to_string(vm.checkpoint_dir().join(HOLD)).ok()?)
}
