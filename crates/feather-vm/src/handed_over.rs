//! What a VM handed over to other VMs (Shuttle's file hand-over, docs/shuttle.md), and how
//! that ends with the VM's stop.
//!
//! A hand-over is a mount of the source VM's overlay in the target VM. A process of the
//! target that keeps a file of it open (or its working folder, or a mapping in it) keeps that
//! overlay alive after the source stopped: it could go on writing the source's layer while
//! `commit` or `diff` read it, and the source's next start would mount the layer a second
//! time beside it (overlayfs: "upperdir is in-use", undefined behaviour). Linux has no
//! `revoke()`, so:
//!
//! 1. The broker records each hand-over before it mounts it ([`note`]): the target and the
//!    filesystem ids (`statfs` `f_fsid`) of the source's overlays it hands files of over, in
//!    the source's folder, so a keeper killed at any point leaves the record behind. (A file
//!    of another filesystem, such as the source's `/run`, is no layer, and not recorded.)
//! 2. The source's stop, once its hand-overs are unmounted (the broker's end), ends every
//!    process of each target VM that still holds a file of those filesystems ([`end_holders`]),
//!    found by what the kernel says of the target's processes (members of its cgroup): the
//!    filesystem of each open file, working folder, root, executable and mapping, reached
//!    through the host's `/proc/PID/...` links, never a path the target could name. It says so
//!    in the stop's answer and in both VMs' keeper logs. A crashed keeper's recovery does the
//!    same ([`crate::lifecycle::recover`]).
//! 3. A stopped VM's layer that was handed over is used again (its start, restore, `diff`,
//!    `commit`, `reset`, `rm`) only when the kernel says no overlay of it lives
//!    ([`feather_sys::mount::overlay_upper_in_use`], [`refuse_while_alive`]): whatever kept one
//!    (a holder step 2 could not find, a host process), the command is refused, naming what
//!    holds it. The record goes once the layer is seen free.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use feather_core::atomic::{write_atomic, Durability};
use feather_core::display::escape_for_terminal;
use feather_core::{StateRoot, VmConfig, VmDir, VmName, VmStatus};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::{failed, Result};
use crate::layers;

/// The record's name in the source VM's folder.
const RECORD: &str = "handed-over.json";

/// How long the search of processes may take: the refusal's search of the host's.
const SEARCH_PATIENCE: Duration = Duration::from_secs(10);

/// How long ending what the targets hold may take, every target and round together (locks,
/// freezes, searches, exits): well inside what a stopping client waits for the stop's answer
/// (`lifecycle::stop`: the grace and 30 s, of which the broker's end may take 10). A target
/// not done by then is not waited for: what it still holds keeps the source's layer refused
/// (step 3), which the stop says.
const PATIENCE: Duration = Duration::from_secs(12);

/// How long the target's processes may take to freeze before they are searched unfrozen, and
/// how long the ended ones may take to exit.
const FREEZE_PATIENCE: Duration = Duration::from_secs(2);
const EXIT_PATIENCE: Duration = Duration::from_secs(5);

/// Rounds of search and end: a holder that passed a descriptor on before it was frozen (or in
/// an unfrozen search) is found by the next.
const ROUNDS: usize = 3;

/// Per target VM, the filesystem ids handed over to it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    targets: BTreeMap<String, BTreeSet<u64>>,
}

/// One writer of records at a time in this process (the broker's connection threads).
static WRITING: Mutex<()> = Mutex::new(());

fn read_record(vm: &VmDir) -> Option<Record> {
    let text = std::fs::read(vm.path().join(RECORD)).ok()?;
    // A record that does not parse (cut short by a power cut before its rename was synced,
    // which `Whole` allows) still says that something was handed over.
    Some(serde_json::from_slice(&text).unwrap_or_default())
}

/// Whether `vm` handed something over since its layer was last seen free.
pub fn recorded(vm: &VmDir) -> bool {
    vm.path().join(RECORD).exists()
}

/// Records that `source` hands files of the filesystems `fsids` over to `target` (see the
/// module's step 1). Written whole before the rename (a crash leaves the old record or the
/// new one).
///
/// An id that is the upper folder's own filesystem's (an overlay without a UUID of its own
/// reports that: `uuid=auto` with an upper layer lacking `trusted.overlay.uuid`) is not
/// recorded: it would name every file of that filesystem, the host's programs a target runs
/// among them. The target is recorded all the same (its holders are then not looked for, which
/// its source's stop says; the kernel's check of the layer still guards its next use).
pub fn note(source: &VmDir, target: &str, fsids: &[u64]) -> Result<()> {
    let _one = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    let not_layers = upper_filesystems(source);
    let mut record = read_record(source).unwrap_or_default();
    record
        .targets
        .entry(target.to_owned())
        .or_default()
        .extend(fsids.iter().filter(|fsid| !not_layers.contains(fsid)));
    let text = serde_json::to_vec_pretty(&record)
        .map_err(|e| failed(source.name(), format!("recording a hand-over: {e}")))?;
    write_atomic(&source.path().join(RECORD), &text, Durability::Whole)
        .map_err(|e| failed(source.name(), format!("recording a hand-over: {e}")))
}

/// The filesystem ids of the filesystems `vm`'s upper folders are on: what an overlay of them
/// without a UUID of its own reports as its id, which names no layer.
fn upper_filesystems(vm: &VmDir) -> BTreeSet<u64> {
    let Ok(config) = vm.read_config() else {
        return BTreeSet::new();
    };
    layers::existing(vm, &config)
        .iter()
        .filter_map(|layer| {
            nix::sys::statvfs::statvfs(&layer.upper)
                .ok()
                .map(|s| s.filesystem_id())
        })
        .collect()
}

/// A process of a target VM that held a file of what the source handed over.
#[derive(Clone, Debug)]
pub struct Holder {
    pub host_pid: i32,
    /// Its pid in the target VM, if known.
    pub pid_in_vm: Option<i32>,
    /// Its command line, escaped for a terminal (the target chose it).
    pub command: String,
    /// What held the file: `fd 3`, `working folder`, `mapping`, ….
    pub what: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {}", self.host_pid)?;
        if let Some(pid) = self.pid_in_vm {
            write!(f, " ({pid} in the VM)")?;
        }
        write!(f, " `{}` ({})", self.command, self.what)
    }
}

/// What the end of a source's hand-overs did, for the stop's answer and the logs.
#[derive(Debug, Default)]
pub struct Ended {
    /// One sentence per target where processes were ended or something is left.
    pub said: Vec<String>,
}

impl Ended {
    /// Writes each sentence into the keeper's log (its stderr), and passes itself on.
    pub fn say_in_log(self, vm: &VmName) -> Ended {
        for said in &self.said {
            eprintln!("feather keeper {vm}: {said}");
        }
        self
    }
}

/// Ends what each target VM still holds of the files `source` handed over (the module's
/// step 2): called once the source's hand-overs are unmounted and its own processes are gone.
/// Bounded in time whatever the targets do; says what it did in the target's keeper log, and
/// returns it for the caller to say (the stop's answer, the source's keeper log).
pub fn end_holders(root: &StateRoot, source: &VmDir) -> Ended {
    let mut ended = Ended::default();
    // A freeze an earlier stop of this source made and could not undo (its keeper killed
    // meanwhile) is undone first: never taken for another's freeze below.
    let deadline = Instant::now() + PATIENCE;
    ended.said.extend(thaw_left_frozen(root, source, deadline));
    let Some(record) = read_record(source) else {
        return ended;
    };
    let not_layers = upper_filesystems(source);
    for (target, fsids) in &record.targets {
        if target == source.name().as_str() {
            continue;
        }
        ended.said.extend(end_in_target(
            root,
            source,
            target,
            fsids,
            &not_layers,
            deadline,
        ));
    }
    ended
}

/// The start of the name of the marker a source's stop leaves in the source's folder while it
/// holds a target's group frozen (the target's name follows): made before the freeze, removed
/// after the thaw, so a keeper killed in between leaves it for the clean-up to read.
const FROZEN_MARKER: &str = "handed-over.frozen.";

/// A target's group this source froze: thawed, and its marker removed, when dropped.
struct OurFreeze {
    frozen: Option<feather_sys::cgroup::Frozen>,
    marker: std::path::PathBuf,
}

impl Drop for OurFreeze {
    fn drop(&mut self) {
        drop(self.frozen.take());
        let _ = std::fs::remove_file(&self.marker);
    }
}

/// Freezes `cgroup` (the target's) for the search, marked first in `source`'s folder (see
/// [`FROZEN_MARKER`]); None if it did not freeze in time (thawed again, unmarked).
fn freeze_marked(
    source: &VmDir,
    target: &str,
    cgroup: &feather_sys::cgroup::Cgroup,
    patience: Duration,
) -> Option<OurFreeze> {
    let marker = source.path().join(format!("{FROZEN_MARKER}{target}"));
    write_atomic(&marker, b"", Durability::Whole).ok()?;
    let frozen = cgroup.freeze(patience).ok();
    if frozen.is_none() {
        let _ = std::fs::remove_file(&marker);
        return None;
    }
    Some(OurFreeze { frozen, marker })
}

/// Thaws each target group `source`'s markers say its stop froze and did not thaw (the stop's
/// keeper was killed in between), unless a migration let that target go (its release record:
/// its copy here is never thawed); what it did, one sentence each. Under the target's operation
/// lock, which a checkpoint or `commit` of the target holds while it freezes the group, and a
/// source's stop while it does: a group frozen then is no one else's freeze, so ours.
fn thaw_left_frozen(root: &StateRoot, source: &VmDir, deadline: Instant) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(source.path()) else {
        return Vec::new();
    };
    let mut said = Vec::new();
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(target) = file.to_str().and_then(|f| f.strip_prefix(FROZEN_MARKER)) else {
            continue;
        };
        let Some(vm) = target
            .parse::<VmName>()
            .ok()
            .and_then(|name| root.open(&name).ok())
        else {
            // The target is gone, and its group with it.
            let _ = std::fs::remove_file(entry.path());
            continue;
        };
        let Ok(Some(_op)) = vm.lock_operations_within(within(FREEZE_PATIENCE, deadline)) else {
            said.push(format!(
                "VM {target} may still be frozen by an earlier stop of VM {} whose keeper was \
                 killed: busy now, it is thawed at VM {}'s next clean-up",
                source.name(),
                source.name()
            ));
            continue;
        };
        // A copy a migration let go may run at its receiver: frozen, it stays so (the
        // release's own rule), whoever froze it.
        if let Some((to, _)) = crate::images::released_to(&vm) {
            said.push(format!(
                "VM {target}, which an earlier stop of VM {} had frozen and left so when its \
                 keeper was killed, stays frozen: a migration let it go to {}, where it may run, \
                 so its copy here is never thawed (`feather rm {target}` removes it)",
                source.name(),
                escape_for_terminal(&to)
            ));
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        if let Some(dir) = vm
            .read_config()
            .ok()
            .and_then(|config| crate::vm_group::cgroup_path(&config).v2_dir())
        {
            let freeze = dir.join("cgroup.freeze");
            if std::fs::read_to_string(&freeze).is_ok_and(|t| t.trim() == "1")
                && std::fs::write(&freeze, "0").is_ok()
            {
                said.push(format!(
                    "thawed VM {target}, which an earlier stop of VM {} had frozen and left so \
                     when its keeper was killed",
                    source.name()
                ));
            }
        }
        let _ = std::fs::remove_file(entry.path());
    }
    said
}

/// [`end_holders`] for one target; what it says, if anything was held.
fn end_in_target(
    root: &StateRoot,
    source_dir: &VmDir,
    target: &str,
    fsids: &BTreeSet<u64>,
    not_layers: &BTreeSet<u64>,
    deadline: Instant,
) -> Option<String> {
    let source = source_dir.name();
    let name: VmName = target.parse().ok()?;
    let vm = root.open(&name).ok()?;
    let state = vm.read_state().ok()?;
    // A VM that neither runs nor crashed (its keeper gone, its processes maybe not) has no
    // processes left: its pid namespace ended with its init.
    if !matches!(state.status, VmStatus::Running | VmStatus::Crashed) {
        return None;
    }
    let config = vm.read_config().ok()?;
    let cgroup = crate::vm_group::cgroup_path(&config);
    // A filesystem id the target's own root has too (a layer copied with its overlay UUID, or
    // one overlayfs gives no id of its own) cannot tell the source's files from the target's;
    // nor can the id of the filesystem the source's upper folders are on (what an overlay
    // without a UUID reports), which a record written before such ids were left out may hold.
    // An empty set: every id was left out when it was recorded.
    let own = state
        .init_pid
        .and_then(|pid| fsid_of(&format!("/proc/{pid}/root")));
    let wanted: BTreeSet<u64> = fsids
        .iter()
        .copied()
        .filter(|fsid| Some(*fsid) != own && *fsid != 0 && !not_layers.contains(fsid))
        .collect();
    let mut unsure = (wanted.len() != fsids.len() || fsids.is_empty()).then(|| {
        format!(
            "a file system VM {source} handed over to VM {target} cannot be told apart from \
             VM {target}'s own files (an overlay with no id of its own, or one VM {target}'s \
             root shares); its holders were not looked for (VM {source}'s layer stays refused \
             while any live)"
        )
    });
    // The target's operation lock, held while its group is frozen: a checkpoint or `commit`
    // of the target (which freeze it themselves) and another source's stop wait meanwhile, so
    // that no one thaws a freeze another made. Not had in time (the target is being stopped,
    // say): searched unfrozen.
    let op = vm
        .lock_operations_within(within(FREEZE_PATIENCE, deadline))
        .ok()
        .flatten();
    let mut killed: Vec<Holder> = Vec::new();
    let mut left: Vec<Holder> = Vec::new();
    let mut unfinished = false;
    for _ in 0..ROUNDS {
        if wanted.is_empty() {
            break;
        }
        // Frozen, the target's processes can neither open, fork nor pass a descriptor on
        // while they are searched; SIGKILL still ends a frozen process. A group another
        // freeze holds (one whose guard was lost with its process) is searched as it is and
        // left frozen; this source's own left-over freeze was thawed before
        // (`thaw_left_frozen`). The freeze is marked in the source's folder first.
        let already = cgroup
            .v2_dir()
            .and_then(|dir| std::fs::read_to_string(dir.join("cgroup.freeze")).ok())
            .is_some_and(|text| text.trim() == "1");
        let frozen = (!already && op.is_some())
            .then(|| {
                freeze_marked(
                    source_dir,
                    target,
                    &cgroup,
                    within(FREEZE_PATIENCE, deadline),
                )
            })
            .flatten();
        let members = cgroup.members();
        let (found, complete) = search(&members, &wanted, deadline);
        unfinished |= !complete;
        let mut pidfds: Vec<OwnedFd> = Vec::new();
        left.clear();
        for holder in found {
            let pid = Pid::from_raw(holder.host_pid);
            // Pinned, then checked again: the process the pidfd names is a member of the
            // target's group and holds the file now (an unfrozen one may have ended, and its
            // number been taken by another).
            let pinned = feather_sys::process::pidfd_open(pid).ok().filter(|_| {
                cgroup.members().contains(&pid) && !search(&[pid], &wanted, deadline).0.is_empty()
            });
            match pinned {
                Some(pidfd) if feather_sys::process::signal(&pidfd, Signal::SIGKILL).is_ok() => {
                    pidfds.push(pidfd);
                    killed.push(holder);
                }
                _ => left.push(holder),
            }
        }
        drop(frozen);
        await_exits(&pidfds, deadline.min(Instant::now() + EXIT_PATIENCE));
        if pidfds.is_empty() || Instant::now() >= deadline {
            break;
        }
    }
    drop(op);
    let still = search(&cgroup.members(), &wanted, deadline);
    if !still.0.is_empty() {
        left = still.0;
    }
    unfinished |= !still.1;
    if killed.is_empty() && left.is_empty() && !unfinished && unsure.is_none() {
        return None;
    }
    let mut said = Vec::new();
    if !killed.is_empty() {
        said.push(format!(
            "ended {} process{} of VM {target} that still held files VM {source} had handed \
             over to it: {}",
            killed.len(),
            if killed.len() == 1 { "" } else { "es" },
            list(&killed)
        ));
    }
    if !left.is_empty() {
        said.push(format!(
            "VM {target} still holds files VM {source} handed over: {} (VM {source}'s layer \
             stays refused until they end)",
            list(&left)
        ));
    }
    if unfinished {
        said.push(format!(
            "VM {target}'s processes could not all be looked at within the stop's {} s (VM \
             {source}'s layer stays refused while any holds a file of it)",
            PATIENCE.as_secs()
        ));
    }
    said.extend(unsure.take());
    let said = said.join("; ");
    tell_target(&vm, source, &said);
    Some(said)
}

fn list(holders: &[Holder]) -> String {
    holders
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A line in the target's keeper log, where its owner looks for why its processes ended.
fn tell_target(target: &VmDir, source: &VmName, said: &str) {
    let line = format!(
        "feather keeper {}: VM {source} stopped: {said} (a hand-over ends with its source: \
         docs/shuttle.md)\n",
        target.name()
    );
    if let Ok(mut log) = std::fs::OpenOptions::new()
        .append(true)
        .open(target.keeper_log())
    {
        let _ = log.write_all(line.as_bytes());
    }
}

/// `patience` from now, but not past `deadline`.
fn within(patience: Duration, deadline: Instant) -> Duration {
    patience.min(deadline.saturating_duration_since(Instant::now()))
}

/// Waits until every process in `pidfds` has exited, or `deadline`.
fn await_exits(pidfds: &[OwnedFd], deadline: Instant) {
    for pidfd in pidfds {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            if millis == 0 {
                return;
            }
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(millis)) {
                Ok(n) if n > 0 => break,
                Err(nix::errno::Errno::EINTR) => {}
                _ => {}
            }
        }
    }
}

/// The filesystem id of what `link` leads to (a `/proc/PID/...` magic link: the kernel's own
/// reference, no name looked up), or None if it is gone.
fn fsid_of(link: &str) -> Option<u64> {
    nix::sys::statvfs::statvfs(link)
        .ok()
        .map(|s| s.filesystem_id())
}

/// [`fsid_of`] for an overlay only: a file of any other filesystem is no layer's, whatever its
/// id (an overlay without a UUID of its own reports its upper filesystem's, the host's, say).
fn overlay_fsid_of(link: &str) -> Option<u64> {
    use nix::sys::statfs::{statfs, OVERLAYFS_SUPER_MAGIC};
    if statfs(link).ok()?.filesystem_type() != OVERLAYFS_SUPER_MAGIC {
        return None;
    }
    fsid_of(link)
}

/// The processes among `pids` that hold a file on a filesystem of `fsids` (a descriptor, a
/// working folder, a root, an executable or a mapping, of any of their threads), and whether
/// all of them were looked at before `deadline`.
fn search(pids: &[Pid], fsids: &BTreeSet<u64>, deadline: Instant) -> (Vec<Holder>, bool) {
    let mut found = Vec::new();
    for &pid in pids {
        if Instant::now() >= deadline {
            return (found, false);
        }
        if let Some(what) = holds(pid, fsids, deadline) {
            let described = feather_sys::process::describe(pid);
            found.push(Holder {
                host_pid: pid.as_raw(),
                pid_in_vm: feather_sys::process::pid_in_child_namespace(pid),
                command: described
                    .map(|d| escape_for_terminal(&d.command).into_owned())
                    .unwrap_or_else(|| "?".to_owned()),
                what,
            });
        }
    }
    (found, true)
}

/// What of `pid` holds a file on a filesystem of `fsids`, if anything.
fn holds(pid: Pid, fsids: &BTreeSet<u64>, deadline: Instant) -> Option<String> {
    let on = |link: &str| overlay_fsid_of(link).is_some_and(|fsid| fsids.contains(&fsid));
    // Each entry of a `/proc` folder of links, until the deadline.
    let any_in = |folder: &str| -> Option<String> {
        let entries = std::fs::read_dir(folder).ok()?;
        for entry in entries.flatten() {
            if Instant::now() >= deadline {
                return None;
            }
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if on(&format!("{folder}/{name}")) {
                return Some(name.into_owned());
            }
        }
        None
    };
    let base = format!("/proc/{pid}");
    if on(&format!("{base}/exe")) {
        return Some("its program".to_owned());
    }
    if any_in(&format!("{base}/map_files")).is_some() {
        return Some("a mapping".to_owned());
    }
    // Every thread: one may have a working folder, root or descriptor table of its own.
    let tasks = std::fs::read_dir(format!("{base}/task")).ok()?;
    for task in tasks.flatten() {
        let task = task.path();
        let task = task.to_string_lossy();
        for (link, what) in [("cwd", "working folder"), ("root", "root folder")] {
            if on(&format!("{task}/{link}")) {
                return Some(what.to_owned());
            }
        }
        if let Some(fd) = any_in(&format!("{task}/fd")) {
            return Some(format!("fd {fd}"));
        }
    }
    None
}

/// Refuses what would use `vm`'s layer (a start, restore, `diff`, `commit`, `reset`, `rm`)
/// while an overlay of it made by an earlier run still lives (the module's step 3), if the VM
/// handed something over since its layer was last seen free (its record is there): the kernel
/// is asked then only (half a millisecond a layer, and a line in the kernel's log each time,
/// "upperdir is in-use" or, when free, "workdir and upperdir must reside under the same
/// mount", which ordinary commands must not write). Once asked, an old overlay anything kept
/// is found (a process of the host whose working folder was in the VM, say, beside what a
/// target kept); a VM that never handed anything over is not asked about, and an overlay of
/// it kept by a host process is not guarded against (as before hand-overs). A VM whose keeper
/// is alive (starting, running, or stopping and letting go
/// of its mounts) is using its own overlay, which is no earlier run's: not asked about; a
/// start or `reset` waits for a stopping keeper's end first (`lifecycle::await_last_keeper`).
pub fn refuse_while_alive(vm: &VmDir, config: &VmConfig) -> Result<()> {
    if !recorded(vm) || kept(vm) {
        return Ok(());
    }
    match refuse_unless_free(vm, config) {
        // A start that came meanwhile: the VM's own overlay.
        Err(_) if kept(vm) => Ok(()),
        answer => answer,
    }
}

/// Whether a keeper of `vm` is alive (a VM that reads running has one): the process its lock
/// file records, by pid and start time. Not by trying the lock, which a keeper starting at that
/// moment would find taken (`diff` takes no operation lock, and may come during a start).
fn kept(vm: &VmDir) -> bool {
    // A zombie (ended, its parent not yet told) is no keeper any more.
    let recorded_alive = vm.last_keeper().is_some_and(|(pid, started)| {
        let pid = Pid::from_raw(pid);
        feather_sys::process::start_ticks(pid) == Some(started)
            && feather_sys::process::is_alive(pid)
    });
    recorded_alive
        || vm
            .read_state()
            .is_ok_and(|state| state.status == VmStatus::Running)
}

/// [`refuse_while_alive`] without waiting for a keeper: the kernel's answer now. A free layer
/// lets the record of hand-overs go.
fn refuse_unless_free(vm: &VmDir, config: &VmConfig) -> Result<()> {
    for layer in layers::existing(vm, config) {
        if !layer.upper.is_dir() {
            continue;
        }
        let in_use = feather_sys::mount::overlay_upper_in_use(&layer.upper).map_err(|e| {
            failed(
                vm.name(),
                format!("cannot tell whether its layer is still in use: {e}"),
            )
        })?;
        if in_use {
            return Err(still_alive(vm, &layer.upper));
        }
    }
    let _ = std::fs::remove_file(vm.path().join(RECORD));
    Ok(())
}

/// Removes the record if the kernel says no overlay of `vm`'s layers lives (at the end of a
/// stop, once the keeper let go of the VM's mounts); otherwise says what still holds one.
pub fn settle(vm: &VmDir, config: &VmConfig) {
    if read_record(vm).is_none() {
        return;
    }
    if let Err(why) = refuse_unless_free(vm, config) {
        eprintln!("feather keeper {}: {why}", vm.name());
    }
}

/// The filesystem id overlayfs gives an overlay of `upper` (`statfs`'s `f_fsid`): derived from
/// the layer's UUID, which overlayfs keeps in the upper folder's `trusted.overlay.uuid` (the
/// two halves xor-ed, as the kernel's `uuid_to_fsid`, read as glibc's `statvfs` packs it). Used
/// only to name what holds an old overlay; None for a layer without one.
fn layer_fsid(upper: &Path) -> Option<u64> {
    let uuid = xattr::get(upper, "trusted.overlay.uuid").ok()??;
    let (low, high) = uuid.split_at_checked(8)?;
    let low = u64::from_le_bytes(low.try_into().ok()?);
    let high = u64::from_le_bytes(high.get(..8)?.try_into().ok()?);
    Some(low ^ high)
}

/// The refusal: which layer, and what holds it (searched among every process of the host,
/// once, now that something is known to): a file of the layer's own filesystem id, or of one
/// the VM handed over.
fn still_alive(vm: &VmDir, upper: &Path) -> crate::error::VmError {
    let record = read_record(vm).unwrap_or_default();
    let mut fsids: BTreeSet<u64> = record.targets.values().flatten().copied().collect();
    fsids.extend(layer_fsid(upper));
    let pids: Vec<Pid> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .map(Pid::from_raw)
                .collect()
        })
        .unwrap_or_default();
    let (holders, _) = search(&pids, &fsids, Instant::now() + SEARCH_PATIENCE);
    let who = if holders.is_empty() {
        "no process was found holding a file of it (a descriptor sent over a unix socket and \
         not yet received holds it too)"
            .to_owned()
    } else {
        format!("held by {}", list(&holders))
    };
    let kept = if record.targets.is_empty() {
        String::new()
    } else {
        let targets: Vec<&str> = record.targets.keys().map(String::as_str).collect();
        format!(" (it handed files over to {})", targets.join(", "))
    };
    failed(
        vm.name(),
        format!(
            "an overlay of its layer {} from an earlier run is still alive{kept}: {who}; \
             mounting or changing the layer beside it could lose or corrupt files. End those \
             processes (or stop the VMs they run in) and try again",
            upper.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// What the search finds, on the real kernel (as root, as feather's tests run): a process
    /// with a file of an overlay open, one working in it, one running its program, one mapping
    /// a library of it, and not one that holds nothing of it; a file of the host's own
    /// filesystem is not the overlay's.
    #[test]
    fn the_search_finds_each_way_a_process_holds_an_overlays_file_and_no_other() {
        let scratch = feather_testkit::ScratchDir::new("holders");
        let dir = scratch.0.clone();
        let [lower, upper, work, merged] =
            ["lower", "upper", "work", "merged"].map(|n| dir.join(n));
        for folder in [&lower, &upper, &work, &merged] {
            std::fs::create_dir_all(folder).unwrap();
        }
        feather_sys::mount::overlay(
            &[lower.as_path()],
            &upper,
            &work,
            &merged,
            feather_sys::mount::LayerSync::Volatile,
        )
        .unwrap();
        // A program of the overlay's, mapped by the process that runs it.
        std::fs::copy("/bin/sleep", merged.join("sleep")).unwrap();
        std::fs::write(merged.join("marker"), "harmless").unwrap();
        let fsid = nix::sys::statvfs::statvfs(&merged).unwrap().filesystem_id();
        let sleep = |program: &Path| {
            let mut command = Command::new(program);
            command
                .arg("100")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            command
        };
        let by_fd = sleep(Path::new("/bin/sleep"))
            .stdin(std::fs::File::open(merged.join("marker")).unwrap())
            .spawn()
            .unwrap();
        let by_cwd = sleep(Path::new("/bin/sleep"))
            .stdin(Stdio::null())
            .current_dir(&merged)
            .spawn()
            .unwrap();
        let by_program = sleep(&merged.join("sleep"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        // A library of the overlay's, mapped by a program of the host's.
        std::fs::create_dir_all(merged.join("lib")).unwrap();
        std::fs::copy(
            "/lib/x86_64-linux-gnu/libc.so.6",
            merged.join("lib/libc.so.6"),
        )
        .unwrap();
        let by_mapping = sleep(Path::new("/bin/sleep"))
            .stdin(Stdio::null())
            .env("LD_LIBRARY_PATH", merged.join("lib"))
            .spawn()
            .unwrap();
        let bystander = sleep(Path::new("/bin/sleep"))
            .stdin(std::fs::File::open("/proc/self/status").unwrap())
            .spawn()
            .unwrap();
        let mut children = [by_fd, by_cwd, by_program, by_mapping, bystander];
        let pids: Vec<Pid> = children
            .iter()
            .map(|c| Pid::from_raw(c.id() as i32))
            .collect();
        // Each is searched once it sleeps: ld.so maps the libraries after the spawn returned
        // (its exec done), and the mapping one is found only then.
        for (pid, child) in pids.iter().zip(children.iter_mut()) {
            let asleep = || {
                std::fs::read_to_string(format!("/proc/{pid}/syscall")).is_ok_and(|text| {
                    text.split_whitespace().next().is_some_and(|call| {
                        [libc::SYS_clock_nanosleep, libc::SYS_nanosleep]
                            .iter()
                            .any(|number| call == number.to_string())
                    })
                })
            };
            // One that ended is not waited for (the assertions below fail, after the clean-up).
            while !asleep() && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let wanted = BTreeSet::from([fsid]);
        let (found, complete) = search(&pids, &wanted, Instant::now() + SEARCH_PATIENCE);
        let host = nix::sys::statvfs::statvfs("/").unwrap().filesystem_id();
        let (of_host, _) = search(
            &pids[4..],
            &BTreeSet::from([host]),
            Instant::now() + SEARCH_PATIENCE,
        );
        for child in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH);
        assert!(complete);
        let found: Vec<(i32, String)> = found.into_iter().map(|h| (h.host_pid, h.what)).collect();
        assert_eq!(
            found,
            [
                (pids[0].as_raw(), "fd 0".to_owned()),
                (pids[1].as_raw(), "working folder".to_owned()),
                (pids[2].as_raw(), "its program".to_owned()),
                (pids[3].as_raw(), "a mapping".to_owned()),
            ]
        );
        // The bystander's files are the host's (its program, its root): not the overlay's, and
        // not found even by the host's id (what an overlay without a UUID of its own reports),
        // being no overlay's.
        assert!(of_host.is_empty());
    }
}
