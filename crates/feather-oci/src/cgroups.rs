//! A container's cgroup: the config's `linux.cgroupsPath` (or `feather-oci/<id>`) in every
//! hierarchy, on v1, v2 and hybrid hosts. Memory, pids and CPU quota go through feather-sys's
//! [`Cgroup`] (which writes each limit to whichever hierarchy holds its controller); the v1
//! files it does not know (cpu.shares, the freezer) are written here, and the device list
//! goes to [`crate::devices`]'s policy, on v1 and v2.

use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use feather_sys::cgroup::{Cgroup, Limits, V2Entry};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxMemory, LinuxResources};

use crate::hierarchies::{v1_mount, v2_mount};

pub struct Groups {
    cgroup: Cgroup,
    relative: PathBuf,
}

/// The cgroup v2 hierarchy a restore holds its restored tree still in ([`Groups::hold`]); an
/// error saying so and what to do where none is mounted (a v1-only machine).
pub fn v2_for_holding() -> Result<PathBuf> {
    v2_mount().context(
        "no cgroup v2 hierarchy is mounted: a restore holds the restored processes still with \
         the v2 freezer (cgroup.freeze), also on a machine whose other controllers are v1; \
         mount one (cgroup2, at /sys/fs/cgroup/unified on a hybrid machine)",
    )
}

/// Every cgroup hierarchy mounted: (name inside /sys/fs/cgroup, mount point).
pub fn hierarchies() -> Vec<(String, PathBuf)> {
    crate::hierarchies::mounts()
        .into_iter()
        .filter_map(|m| {
            let name = m.mount_point.file_name()?.to_str()?.to_owned();
            Some((name, m.mount_point))
        })
        .collect()
}

/// `linux.cgroupsPath` as a path relative to each hierarchy's root. systemd's
/// `slice:prefix:name` form needs systemd, which this machine does not run.
pub fn relative_path(configured: Option<&Path>, id: &str) -> Result<String> {
    let Some(path) = configured else {
        return Ok(format!("feather-oci/{id}"));
    };
    let text = path.to_string_lossy();
    if text.contains(':') {
        bail!("linux.cgroupsPath {text:?} is a systemd slice; feather-oci manages cgroupfs paths only (use the engine's cgroupfs cgroup manager)");
    }
    let relative = text.trim_start_matches('/');
    if relative.is_empty() || relative.split('/').any(|c| c == ".." || c == ".") {
        bail!("linux.cgroupsPath {text:?} must name a group below the hierarchy's root");
    }
    if relative.split('/').find(|c| !c.is_empty()) == Some(VMS_GROUP) {
        bail!("linux.cgroupsPath {text:?} lies in `{VMS_GROUP}/`, the group of feather's VMs, whose device program every group below it runs: name a group elsewhere (the default is feather-oci/<id>)");
    }
    Ok(relative.to_owned())
}

/// The extended attribute naming the container whose group create made ([`Groups::mark_for`]).
/// `trusted.*`: only a process with `CAP_SYS_ADMIN` in the host's user namespace sets it, so a
/// group someone else made (another runtime's, a service's, one a test made) never bears it.
pub const CONTAINER_TAG: &str = "trusted.feather-oci.container";

/// What create made of a container's group, for [`crate::ops::undo`] of a create that fails:
/// it removes only a group create made, never one it joined or never reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Made {
    #[default]
    Nothing,
    /// An existing group, found empty and joined (as runc joins one).
    Joined,
    /// A group create made anew.
    New,
}

/// The group of feather's VMs (crates/feather-vm): a container's group is never in it.
const VMS_GROUP: &str = "feather";

impl Groups {
    pub fn new(relative: &str) -> Groups {
        let cgroup = Cgroup::new(crate::hierarchies::detect(), relative);
        // As feather-sys keeps it: plain names only, so that no folder joined here (the
        // freezer's, the v1 controllers' of crate::controllers) leaves its hierarchy either.
        let relative = cgroup.relative().to_path_buf();
        Groups { cgroup, relative }
    }

    fn v1_dir(&self, controller: &str) -> Option<PathBuf> {
        v1_mount(controller).map(|m| m.join(&self.relative))
    }

    fn freezer_dir(&self) -> Option<PathBuf> {
        self.v1_dir("freezer")
    }

    /// The group's folder in `name`'s hierarchy (as `/sys/fs/cgroup/<name>` calls it).
    pub fn dir_in(&self, hierarchy: &Path) -> PathBuf {
        hierarchy.join(&self.relative)
    }

    /// Refuses a group found holding processes (runc's behaviour): a container's `kill --all`
    /// and `delete` signal every process of its group, which must then all be its own. Called
    /// before the container's folder exists, so that the failure's clean-up kills nothing.
    pub fn refuse_occupied(&self) -> Result<()> {
        let found = self.members();
        if found.is_empty() {
            return Ok(());
        }
        bail!(
            "linux.cgroupsPath {}: the group already holds processes ({}): a container's group \
             must hold only its own, as its kill and delete signal every process in it; name \
             an empty group, or move those processes out",
            self.relative.display(),
            found
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// Makes the group everywhere for the container whose mark is `mark` (its folder,
    /// [`crate::store::mark`]) and applies `resources`, saying how a new process may enter
    /// the v2 folder ([`V2Entry`]). The group is marked ([`Groups::mark_as_made_for`]) right
    /// after its folders are made, before its limits and device program: a create killed past
    /// that point leaves a group its `delete` knows for the container's. `made` says what was
    /// made, from before the first folder on, for [`crate::ops::undo`] of a failed create.
    pub fn make(
        &self,
        resources: Option<&LinuxResources>,
        mark: &Path,
        over_the_host: bool,
        made: &mut Made,
    ) -> Result<V2Entry> {
        let limits = resources.map(limits_of).transpose()?.unwrap_or_default();
        self.refuse_marked_for_another(mark)?;
        *made = match self.exists() {
            true => Made::Joined,
            false => Made::New,
        };
        let v2_entry = self
            .cgroup
            .make_folders_keeping()
            .map_err(|e| anyhow::anyhow!("make the container's cgroup: {e}"))?;
        self.mark_as_made_for(mark, over_the_host)?;
        self.cgroup
            .apply_limits(&limits)
            .map_err(|e| anyhow::anyhow!("linux.resources: {e}"))?;
        if let Some(dir) = self.freezer_dir() {
            fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        }
        crate::controllers::create(&self.relative)?;
        if let Some(resources) = resources {
            self.apply_extras(resources)?;
        }
        // A config that lists no device rules gets runc's defaults alone (runc's emulator
        // starts from "deny all"): a hand-written config without `linux.resources.devices`
        // must not leave the host's disks open to a container holding CAP_MKNOD.
        if resources
            .and_then(|r| r.devices().as_ref())
            .is_none_or(|d| d.is_empty())
        {
            self.apply_devices(&[])?;
        }
        Ok(v2_entry)
    }

    /// What a new process needs to start in the group without being moved by pid, which
    /// waits for an RCU grace period (feather_sys's [`Cgroup::entry`]): the hierarchies
    /// feather-sys knows, and the freezer's and [`crate::controllers::V1_OWN`]'s.
    pub fn entry(&self, v2: V2Entry) -> Result<Entry> {
        let common = self
            .cgroup
            .entry(v2)
            .map_err(|e| anyhow::anyhow!("join the container's cgroup: {e}"))?;
        let known = self.cgroup.dirs();
        let mut tasks: Vec<(fs::File, PathBuf)> = Vec::new();
        for dir in self
            .freezer_dir()
            .into_iter()
            .chain(crate::controllers::v1_dirs(&self.relative))
        {
            if known.contains(&dir) || tasks.iter().any(|(_, path)| path.parent() == Some(&dir)) {
                continue;
            }
            let path = dir.join("tasks");
            let file = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .with_context(|| format!("join the container's cgroup: open {}", path.display()))?;
            tasks.push((file, path));
        }
        Ok(Entry { common, tasks })
    }

    /// `update --resources`: the same fields as at create.
    pub fn update(&self, resources: &LinuxResources) -> Result<()> {
        let limits = limits_of(resources)?;
        let write = |controller: &str, v1: &str, v2: &str, value: Option<String>| -> Result<()> {
            let Some(value) = value else { return Ok(()) };
            if let Some(dir) = self.v1_dir(controller) {
                return write(&dir.join(v1), &value);
            }
            match v2_mount() {
                Some(mount) => write(&mount.join(&self.relative).join(v2), &value),
                None => bail!("the {controller} cgroup controller is not available"),
            }
        };
        write(
            "memory",
            "memory.limit_in_bytes",
            "memory.max",
            limits.memory_bytes.map(|b| b.to_string()),
        )?;
        write(
            "pids",
            "pids.max",
            "pids.max",
            limits.pids.map(|p| p.to_string()),
        )?;
        self.apply_extras(resources)
    }

    /// cpu.shares, the CFS quota and period, memory+swap, the device list, and what
    /// [`crate::controllers`] applies (cpuset, block I/O, huge pages, `unified`).
    fn apply_extras(&self, resources: &LinuxResources) -> Result<()> {
        if let Some(swap) = resources
            .memory()
            .as_ref()
            .and_then(|m| m.swap())
            .filter(|s| *s > 0)
        {
            self.apply_swap(swap, resources.memory().as_ref().and_then(|m| m.limit()))?;
        }
        if let Some(memory) = resources.memory() {
            self.apply_memory_v1(memory)?;
        }
        if let Some(cpu) = resources.cpu() {
            if let Some(dir) = self.v1_dir("cpu") {
                if let Some(shares) = cpu.shares() {
                    write(&dir.join("cpu.shares"), &shares.to_string())?;
                }
                if let Some(period) = cpu.period() {
                    write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
                }
                if let Some(quota) = cpu.quota() {
                    write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
            }
        }
        // An empty list changes nothing on `update`; at create it means the defaults (below).
        if let Some(devices) = resources.devices().as_ref().filter(|d| !d.is_empty()) {
            self.apply_devices(devices)?;
        }
        crate::controllers::apply(&self.relative, resources, &|controller| {
            self.cgroup
                .enable_v2(controller)
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
    }

    /// The memory fields only v1 has files for ([`check_memory_v1_fields`] refused them
    /// elsewhere).
    fn apply_memory_v1(&self, memory: &LinuxMemory) -> Result<()> {
        let Some(dir) = self.v1_dir("memory") else {
            return Ok(());
        };
        for (field, file, value) in memory_v1_fields(memory) {
            if let Some(value) = value {
                write(&dir.join(file), &value)
                    .with_context(|| format!("linux.resources.memory.{field}"))?;
            }
        }
        Ok(())
    }

    /// `memory.swap` is memory plus swap, as v1's `memory.memsw.limit_in_bytes` (written after
    /// the memory limit, which it must not be below); v2's `memory.swap.max` is swap alone.
    fn apply_swap(&self, swap: i64, limit: Option<i64>) -> Result<()> {
        let field = "linux.resources.memory.swap";
        if let Some(dir) = self.v1_dir("memory") {
            let file = dir.join("memory.memsw.limit_in_bytes");
            if !file.exists() {
                bail!("{field}: swap accounting is off on this machine (boot with swapaccount=1)");
            }
            return write(&file, &swap.to_string()).context(field);
        }
        match v2_mount() {
            Some(mount) => {
                let only_swap = swap - limit.unwrap_or(0).max(0);
                let file = mount.join(&self.relative).join("memory.swap.max");
                write(&file, &only_swap.max(0).to_string()).context(field)
            }
            None => bail!("{field}: no memory controller"),
        }
    }

    /// The device list (with runc's always-allowed devices after it) as one policy
    /// ([`crate::devices`]), enforced by every devices mechanism this host has: the v1
    /// controller's lines, and a device program on the container's v2 group. On a pure v2
    /// host the program is all there is, so a failure to load or attach it fails `create`;
    /// on a hybrid host the v1 controller decides (as runc has it) and the program is defence
    /// in depth — the container's processes are in a v2 group of its own here too
    /// (feather-sys puts them in each hierarchy) — whose failure is only a warning.
    fn apply_devices(&self, rules: &[LinuxDeviceCgroup]) -> Result<()> {
        let list = crate::devices::listed(rules)?;
        let policy = crate::devices::policy_of(&list)?;
        let v1 = self.v1_dir("devices");
        if let Some(dir) = &v1 {
            for (file, line) in crate::devices::v1_lines(&list) {
                write(&dir.join(file), &line)
                    .with_context(|| format!("linux.resources.devices: the v1 rule {line:?}"))?;
            }
        }
        let Some(mount) = v2_mount() else {
            if v1.is_none() {
                bail!("linux.resources.devices: this host has neither a v1 devices controller nor a cgroup v2 hierarchy to enforce them with");
            }
            return Ok(());
        };
        let dir = mount.join(&self.relative);
        match crate::devices::enforce_v2(&dir, &policy) {
            Ok(()) => Ok(()),
            Err(e) if v1.is_some() => {
                eprintln!("feather-oci: warning: linux.resources.devices: the v1 devices controller enforces them; the cgroup v2 device program (defence in depth) was not set: {e:#}");
                Ok(())
            }
            Err(e) => Err(anyhow::Error::new(e).context(format!(
                "linux.resources.devices: cannot enforce them with a cgroup device program on {} (no container runs with its device rules unenforced)",
                dir.display()
            ))),
        }
    }

    pub fn add(&self, pid: Pid) -> Result<()> {
        self.cgroup
            .add(pid)
            .map_err(|e| anyhow::anyhow!("join the container's cgroup: {e}"))?;
        if let Some(dir) = self.freezer_dir() {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        for dir in crate::controllers::v1_dirs(&self.relative) {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    pub fn members(&self) -> Vec<Pid> {
        self.cgroup.members()
    }

    /// Whether the group has a folder in any hierarchy.
    pub fn exists(&self) -> bool {
        self.cgroup.exists()
    }

    /// Marks the group as the container's whose folder is `mark` ([`CONTAINER_TAG`],
    /// [`crate::store::mark`]: its canonical runtime root and its id, as two runtime roots
    /// may each hold a container of one id), once create made it: the hiding of a new state
    /// root joins only an init found in a group so marked (crate::hiding), and `kill --all`
    /// and `delete` signal and remove only a group so marked (crate::store::own_groups),
    /// never one a record merely names.
    pub fn mark_for(&self, mark: &Path) -> Result<()> {
        self.cgroup
            .tag(CONTAINER_TAG, mark.as_os_str().as_bytes())
            .map_err(|e| anyhow::anyhow!("mark the container's cgroup: {e}"))
    }

    /// [`Groups::mark_for`] as `create` and `restore` need it: a container over the host
    /// needs the mark (crate::hiding trusts its init by it), so a failure fails it; any other
    /// runs without one where the group's filesystem takes no `trusted.*` attribute (a
    /// runtime with `CAP_SYS_ADMIN` in a user namespace only), with a warning (docs/oci.md,
    /// "Whose group `kill --all` and `delete` act on", says what is done to it then).
    fn mark_as_made_for(&self, mark: &Path, over_the_host: bool) -> Result<()> {
        match self.mark_for(mark) {
            Ok(()) => Ok(()),
            Err(error) if over_the_host => Err(error),
            Err(error) => {
                crate::log::warn(&format!(
                    "{error:#}: container {} runs with its group {} unmarked (see \"Whose \
                     group\" in feather-oci's docs for what kill --all, delete, pause and exec \
                     do then)",
                    mark.display(),
                    self.relative.display()
                ));
                Ok(())
            }
        }
    }

    /// The mark the group bears ([`Groups::mark_for`]), if any.
    pub fn mark(&self) -> Option<PathBuf> {
        let bytes = self.cgroup.tag_value(CONTAINER_TAG)?;
        Some(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
    }

    /// Create's refusal of a group bearing another container's mark: that container was made
    /// in it and never deleted (its engine's root may be another, with a container of the
    /// same id), and its `delete` would kill this container and remove its group.
    fn refuse_marked_for_another(&self, mark: &Path) -> Result<()> {
        match self.mark() {
            Some(other) if other != mark => bail!(
                "linux.cgroupsPath {}: the group is container {}'s (it bears its mark \
                 {CONTAINER_TAG}), which was never deleted: delete that container (feather-oci \
                 --root <its folder's parent> delete --force <its id>), or, if its folder is \
                 gone, remove the empty group; or name another group",
                self.relative.display(),
                other.display()
            ),
            _ => Ok(()),
        }
    }

    /// `kill --all`: sends `signal` to every process of the group, as runc does. SIGKILL goes
    /// through the kernel's `cgroup.kill` where it has it (forks in flight included). Else the
    /// group is frozen first, so that none of its processes forks a child past the listing or
    /// ends and leaves its pid to another process, and each member is signalled through a
    /// pidfd ([`Cgroup::member_pidfds`]). A frozen process keeps the signal until it is thawed:
    /// a paused container stays paused (its processes take the signal when resumed), except
    /// after SIGKILL, when the group is thawed so that they die.
    pub fn signal_all(&self, signal: Signal) -> Result<()> {
        if !self.cgroup.exists() {
            // A create killed before it made the group: no process to signal.
            return Ok(());
        }
        let paused = self.is_frozen();
        if signal == Signal::SIGKILL && self.cgroup.kill_at_once() {
            return self.freeze(false);
        }
        // Without a freezer the pidfds still never reach a process outside the group; only a
        // child forked during the listing may miss the signal.
        let froze = match self.freeze(true) {
            Ok(()) => true,
            Err(error) => {
                crate::log::warn(&format!(
                    "signalling the container's processes without freezing their group: {error:#}"
                ));
                false
            }
        };
        for pidfd in self.cgroup.member_pidfds() {
            let _ = feather_sys::process::signal(&pidfd, signal);
        }
        if froze && (!paused || signal == Signal::SIGKILL) {
            self.freeze(false)?;
        }
        Ok(())
    }

    /// Kills every process of the group (see [`Groups::signal_all`]), then, thawed (a frozen
    /// group's processes die only once thawed), feather-sys's kill until the group is empty:
    /// what a freeze that failed let fork past the listing.
    /// On a hybrid machine the v2 group is thawed too, once everything in it is killed: a
    /// refused restore froze it there ([`Groups::hold`]), and a group that outlives `remove`
    /// would otherwise start the next container of its path frozen.
    pub fn kill_all(&self) {
        if let Err(error) = self.signal_all(Signal::SIGKILL) {
            crate::log::warn(&format!("{error:#}"));
        }
        let _ = self.freeze(false);
        self.cgroup.kill_all();
        if let Ok(hold) = self.hold() {
            let _ = hold.thaw();
        }
    }

    pub fn remove(&self) {
        let _ = self.cgroup.remove(Duration::from_secs(2));
        self.remove_if_empty();
    }

    /// Removes each of the group's folders that holds no process and no group (an `rmdir`,
    /// which the kernel refuses for any other): nothing is killed, nothing else removed.
    pub fn remove_if_empty(&self) {
        let dirs = self.cgroup.dirs().into_iter().chain(self.freezer_dir());
        for dir in dirs.chain(crate::controllers::v1_dirs(&self.relative)) {
            let _ = fs::remove_dir(dir);
        }
    }

    /// The folder whose freezer holds the group's processes: the v1 freezer where the machine
    /// has it, otherwise the v2 group (`cgroup.freeze`).
    pub fn freezer_group(&self) -> Result<PathBuf> {
        if let Some(dir) = self.freezer_dir() {
            return Ok(dir);
        }
        match v2_mount() {
            Some(mount) => Ok(mount.join(&self.relative)),
            None => bail!("neither a v1 freezer nor a v2 hierarchy is mounted: cannot freeze"),
        }
    }

    /// The group's v2 freezer, where a restore holds the restored tree still
    /// ([`feather_confine::held`], which says why not the v1 one).
    pub fn hold(&self) -> Result<feather_confine::held::Hold> {
        let mount = v2_for_holding()?;
        Ok(feather_confine::held::Hold::v2(&mount, &self.relative)?)
    }

    /// Freezes or thaws every process of the group: the v1 freezer where the machine has it,
    /// otherwise v2's `cgroup.freeze`.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        if let Some(dir) = self.freezer_dir() {
            let want = if frozen { "FROZEN" } else { "THAWED" };
            write(&dir.join("freezer.state"), want)?;
            let deadline = Instant::now() + Duration::from_secs(5);
            while read(&dir.join("freezer.state")).as_deref() != Some(want) {
                if Instant::now() > deadline {
                    bail!("the freezer of {} did not reach {want}", dir.display());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            return Ok(());
        }
        let Some(mount) = v2_mount() else {
            bail!("neither a v1 freezer nor a v2 hierarchy is mounted: cannot pause");
        };
        let dir = mount.join(&self.relative);
        write(&dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
        if !frozen {
            // Not waited for: a group whose parent is frozen stays frozen after its own thaw.
            return Ok(());
        }
        // Frozen once the kernel says so in `cgroup.events`: until then a process may still run.
        let events = dir.join("cgroup.events");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !read(&events).is_some_and(|e| e.lines().any(|l| l == "frozen 1")) {
            if Instant::now() > deadline {
                // Thawed again: a caller that takes the error for "not frozen" never thaws
                // (a task stuck in the kernel, on a hung NFS or FUSE server, delays the freeze).
                let _ = write(&dir.join("cgroup.freeze"), "0");
                bail!("{} did not report frozen 1 in time", events.display());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    pub fn is_frozen(&self) -> bool {
        if let Some(dir) = self.freezer_dir() {
            return matches!(
                read(&dir.join("freezer.state")).as_deref(),
                Some("FROZEN" | "FREEZING")
            );
        }
        v2_mount().is_some_and(|m| {
            read(&m.join(&self.relative).join("cgroup.events"))
                .is_some_and(|events| events.lines().any(|l| l == "frozen 1"))
        })
    }

    /// runc's `events --stats` data: what `ctr task metrics` and the kubelet read.
    pub fn stats(&self) -> serde_json::Value {
        let number = |controller: &str, file: &str| -> Option<u64> {
            read(&self.v1_dir(controller)?.join(file))?.parse().ok()
        };
        serde_json::json!({
            "cpu": {"usage": {"total": number("cpuacct", "cpuacct.usage").unwrap_or(0)}},
            "memory": {
                "usage": {
                    "usage": self.cgroup.memory_usage().unwrap_or(0),
                    "limit": number("memory", "memory.limit_in_bytes").unwrap_or(0),
                    "max": number("memory", "memory.max_usage_in_bytes").unwrap_or(0),
                },
            },
            "pids": {
                "current": number("pids", "pids.current").unwrap_or(self.members().len() as u64),
            },
        })
    }
}

/// The limits feather-sys applies. Fields it cannot apply are refused by name in
/// [`crate::validate`], before anything is made.
fn limits_of(resources: &LinuxResources) -> Result<Limits> {
    let mut limits = Limits::default();
    if let Some(memory) = resources.memory() {
        limits.memory_bytes = memory.limit().filter(|l| *l > 0).map(|l| l as u64);
    }
    if let Some(pids) = resources.pids() {
        limits.pids = Some(pids.limit()).filter(|l| *l > 0).map(|l| l as u64);
    }
    // The CFS quota is written by `apply_extras` where cpu is a v1 controller; on v2 it is
    // given as a number of cores.
    if v1_mount("cpu").is_none() {
        if let Some(cpu) = resources.cpu() {
            if let (Some(quota), period) = (cpu.quota(), cpu.period().unwrap_or(100_000)) {
                if quota > 0 && period > 0 {
                    limits.cpus = Some(quota as f64 / period as f64);
                }
            }
        }
    }
    Ok(limits)
}

fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// Each memory field v1's memory controller has a file for, with what to write there (None
/// when the config leaves it out). `kernel` is written as given: Linux 6.x takes the write and
/// leaves kernel memory unlimited (the field is deprecated in the runtime specification).
fn memory_v1_fields(memory: &LinuxMemory) -> [(&'static str, &'static str, Option<String>); 5] {
    [
        (
            "reservation",
            "memory.soft_limit_in_bytes",
            memory
                .reservation()
                .filter(|r| *r > 0)
                .map(|r| r.to_string()),
        ),
        (
            "kernel",
            "memory.kmem.limit_in_bytes",
            memory.kernel().map(|k| k.to_string()),
        ),
        (
            "kernelTCP",
            "memory.kmem.tcp.limit_in_bytes",
            memory.kernel_tcp().map(|k| k.to_string()),
        ),
        (
            "swappiness",
            "memory.swappiness",
            memory.swappiness().map(|s| s.to_string()),
        ),
        (
            "disableOOMKiller",
            "memory.oom_control",
            memory
                .disable_oom_killer()
                .filter(|d| *d)
                .map(|_| "1".to_owned()),
        ),
    ]
}

/// The memory fields v2 has no file for are refused, by name, on a host whose memory
/// controller is not a v1 hierarchy (or whose v1 hierarchy lacks that file).
pub fn check_memory_v1_fields(memory: &LinuxMemory) -> Result<()> {
    let dir = v1_mount("memory");
    for (field, file, value) in memory_v1_fields(memory) {
        if value.is_some() && !dir.as_ref().is_some_and(|d| d.join(file).exists()) {
            bail!("linux.resources.memory.{field}: this host's memory controller has no {file} (a cgroup v1 file)");
        }
    }
    Ok(())
}

/// Open folders and files of a group for a new process to start in it ([`Groups::entry`]).
pub struct Entry {
    common: feather_sys::cgroup::Entry,
    tasks: Vec<(fs::File, PathBuf)>,
}

impl Entry {
    /// The v2 folder to clone the process into (`CLONE_INTO_CGROUP`), if any.
    pub fn v2(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.common.v2()
    }

    /// How the process enters the v2 group (kept in the container's record, for `exec`).
    pub fn v2_entry(&self) -> V2Entry {
        self.common.v2_entry()
    }

    /// The same group, entered by the new process itself after its clone (see
    /// [`feather_sys::cgroup::Entry::moved_after_clone`]): for a clone the kernel killed at
    /// birth. Its files were opened in this process's namespaces, before any was joined.
    pub fn moved_after_clone(self) -> Entry {
        Entry {
            common: self.common.moved_after_clone(),
            tasks: self.tasks,
        }
    }

    /// In the new process, while it has one thread and before it forks: moves it into every
    /// group it was not cloned into.
    pub fn enter(&self) -> Result<()> {
        self.common
            .enter()
            .map_err(|e| anyhow::anyhow!("join the container's cgroup: {e}"))?;
        for (file, path) in &self.tasks {
            let mut file = file;
            std::io::Write::write_all(&mut file, b"0").with_context(|| {
                format!(
                    "join the container's cgroup: write 0 to {} (the group was removed, or \
                     left without CPUs or memory nodes, by something other than the runtime: \
                     see that it is usable, or delete the container and create it again)",
                    path.display()
                )
            })?;
        }
        Ok(())
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).with_context(|| format!("write {value:?} to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_in_the_vms_group_is_refused_by_name() {
        for path in ["/feather", "feather/c1", "//feather/x/y"] {
            let e = relative_path(Some(Path::new(path)), "c1").unwrap_err();
            assert!(
                e.to_string().contains("the group of feather's VMs"),
                "{path}: {e}"
            );
        }
        for path in ["/feather-oci/c1", "/kubepods/featherx", "/a/feather"] {
            assert!(relative_path(Some(Path::new(path)), "c1").is_ok(), "{path}");
        }
        assert_eq!(relative_path(None, "c1").unwrap(), "feather-oci/c1");
    }
}

#[cfg(test)]
mod kill_tests {
    use super::*;

    /// A group a restore froze (v2, [`Groups::hold`]) is thawed by its kill, on a hybrid
    /// machine too, where `freeze(false)` thaws only the v1 freezer: a group that outlived its
    /// removal would otherwise start the next container of its path frozen.
    #[test]
    fn a_killed_group_is_left_thawed_in_v2_too() {
        let groups = Groups::new(&format!("feather-oci-test-killall-{}", std::process::id()));
        let mut made = Made::Nothing;
        (groups.make(None, Path::new("/test"), false, &mut made)).unwrap();
        let mut sleep = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        groups.add(Pid::from_raw(sleep.id() as i32)).unwrap();
        let hold = groups.hold().unwrap();
        hold.freeze().unwrap();
        groups.kill_all();
        let _ = sleep.kill();
        let _ = sleep.wait();
        let asked = fs::read_to_string(hold.group().join("cgroup.freeze")).unwrap();
        let _ = hold.thaw();
        groups.remove();
        assert_eq!(asked.trim(), "0", "the v2 group was left frozen");
    }
}
