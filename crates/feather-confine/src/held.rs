//! A restored tree held still while it is checked ([`crate::restored`]): its cgroup frozen
//! from CRIU's `pre-resume` notification on, thawed only once every process of it passed.
//!
//! CRIU's "left stopped" (`--leave-stopped`) is a SIGSTOP it queues for each task just before
//! it detaches from them (cr-restore.c, `finalize_restore` then `finalize_restore_detach`): a
//! SIGCONT cancels it, and a task the images give a POSIX timer signalling SIGCONT every
//! millisecond, or a descriptor whose owner is sent SIGCONT (`F_SETSIG`), goes on running
//! while it is being checked, with what the images gave it, until the refusal kills it. So the
//! group is frozen at `pre-resume`, the last hook before CRIU detaches, while every task is
//! still stopped under CRIU's ptrace (at the end of its `rt_sigreturn`) and none has run an
//! instruction of its images' program yet:
//!
//! ```text
//!   CRIU: tasks restored, seized ─ SIGSTOP queued ─ pre-resume ──────────── detach ─ answer
//!   us:                                             │ criu moved out of the      │
//!                                                   │ group, group frozen, the    │
//!                                                   │ kernel's word awaited       │
//!                                                   └─▶ answered                  └─▶ check
//!   the tree: ─ ptrace-stopped ──────────────────── frozen ──────────────────────────────▶
//! ```
//!
//! A frozen task runs nothing however many SIGCONTs its timers send: the window the checks
//! get runs from `pre-resume` until [`Hold::thaw`], and the tree runs nothing of its own in
//! it. CRIU, which runs in the
//! group (the restored tasks inherit its cgroup), is moved to the caller's own group first: it
//! must run on to detach.
//!
//! The v2 freezer (`cgroup.freeze`, Linux 5.2; on a hybrid machine too: freezing is v2's own,
//! no controller), never the v1 one: a task v2 froze waits in a trap of the signal code that
//! a ptrace stop still reaches, so the checks can seize it and read its seccomp filters
//! (`PTRACE_SECCOMP_GET_FILTER` needs the thread in a ptrace stop) and it goes back to the
//! trap once detached, where a task the v1 freezer froze is `TASK_FROZEN` and never enters the
//! stop `PTRACE_INTERRUPT` asks for: the read waited for good (seen on Linux 6.18). A task v2
//! froze takes SIGKILL; SIGCONT, SIGSTOP and every other signal wait for the thaw.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the kernel may take to report the group frozen: its tasks are all stopped, under
/// CRIU's ptrace, and freeze at once.
const FREEZE_PATIENCE: Duration = Duration::from_secs(10);

/// The group a restored tree is in, to freeze at CRIU's `pre-resume` and check frozen after.
#[derive(Clone, Debug)]
pub struct Hold {
    /// The v2 hierarchy's mount point.
    mount: PathBuf,
    /// The group's folder in it.
    group: PathBuf,
}

impl Hold {
    /// The group `relative` (to the hierarchy's root) of the v2 hierarchy mounted at `mount`;
    /// an error naming what is missing where the kernel has no v2 freezer for it.
    pub fn v2(mount: &Path, relative: &Path) -> io::Result<Hold> {
        let relative = relative.strip_prefix("/").unwrap_or(relative);
        let hold = Hold {
            mount: mount.to_path_buf(),
            group: mount.join(relative),
        };
        let freeze = hold.group.join("cgroup.freeze");
        match freeze.exists() {
            true => Ok(hold),
            false => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{}: missing; holding a restored tree still needs the cgroup v2 freezer \
                     (Linux 5.2 or later)",
                    freeze.display()
                ),
            )),
        }
    }

    /// The group's folder.
    pub fn group(&self) -> &Path {
        &self.group
    }

    /// At CRIU's `pre-resume` (`criu`: its pid, in the group): moves CRIU to the caller's own
    /// group in the v2 hierarchy, freezes the group and waits until the kernel says every task
    /// of it is frozen. On any failure every process left in the group is killed (CRIU too,
    /// if it could not be moved out) and the group left frozen: nothing of the tree runs
    /// unchecked (CRIU ignores the hook's answer and detaches), and CRIU's detach then fails.
    pub fn freeze_or_kill(&self, criu: i32) -> io::Result<()> {
        let frozen = self.move_out(criu).and_then(|()| self.freeze());
        if frozen.is_err() {
            self.kill_members();
        }
        frozen
    }

    /// Whether the group is held still: frozen as asked (`cgroup.freeze` 1), and every task
    /// of it and of the groups below it frozen, as the kernel says (`frozen 1` in
    /// `cgroup.events`).
    pub fn is_frozen(&self) -> io::Result<bool> {
        let asked = read(&self.group.join("cgroup.freeze"))?.trim() == "1";
        let events = read(&self.group.join("cgroup.events"))?;
        Ok(asked && events.lines().any(|line| line == "frozen 1"))
    }

    /// [`Hold::is_frozen`], waited for while the group is still asked to be frozen: a task
    /// CRIU's detach woke leaves the frozen count until it traps again in the freezer (no
    /// instruction of its own in between), which a CPU-limited group may delay; the kernel's
    /// word is awaited up to [`FREEZE_PATIENCE`]. A group no longer asked (`cgroup.freeze` 0:
    /// something thawed it) is not held, at once.
    pub fn is_held(&self) -> io::Result<bool> {
        let deadline = Instant::now() + FREEZE_PATIENCE;
        loop {
            if self.is_frozen()? {
                return Ok(true);
            }
            let asked = read(&self.group.join("cgroup.freeze"))?.trim() == "1";
            if !asked || Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Lets the group's tasks run again (those still stopped by CRIU's SIGSTOP wait for a
    /// SIGCONT).
    pub fn thaw(&self) -> io::Result<()> {
        write(&self.group.join("cgroup.freeze"), "0")
    }

    /// The processes of the group and of every group below it (pids as the caller's pid
    /// namespace numbers them).
    pub fn processes(&self) -> io::Result<BTreeSet<i32>> {
        self.listed("cgroup.procs")
    }

    /// The threads of the group and of every group below it.
    pub fn threads(&self) -> io::Result<BTreeSet<i32>> {
        self.listed("cgroup.threads")
    }

    /// The ids `file` lists in the group and every group below it.
    fn listed(&self, file: &str) -> io::Result<BTreeSet<i32>> {
        let mut ids = BTreeSet::new();
        let mut pending = vec![self.group.clone()];
        while let Some(group) = pending.pop() {
            let listed = read(&group.join(file))?;
            ids.extend(
                listed
                    .split_whitespace()
                    .filter_map(|id| id.parse::<i32>().ok()),
            );
            for entry in fs::read_dir(&group).map_err(at(&group))? {
                let entry = entry.map_err(at(&group))?;
                if entry.file_type().map_err(at(&group))?.is_dir() {
                    pending.push(entry.path());
                }
            }
        }
        Ok(ids)
    }

    /// CRIU to the caller's own group, out of the one about to freeze.
    fn move_out(&self, criu: i32) -> io::Result<()> {
        let own = self.own_group()?;
        if own.starts_with(&self.group) {
            return Err(io::Error::other(format!(
                "this process is in {}, the group to freeze itself",
                own.display()
            )));
        }
        write(&own.join("cgroup.procs"), &criu.to_string())
    }

    /// The caller's group in the v2 hierarchy, as /proc/self/cgroup names it (`0::PATH`).
    fn own_group(&self) -> io::Result<PathBuf> {
        let text = read(Path::new("/proc/self/cgroup"))?;
        let path = text
            .lines()
            .find_map(|line| {
                let mut fields = line.splitn(3, ':');
                let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
                (id == "0" && controllers.is_empty()).then(|| path.to_string())
            })
            .ok_or_else(|| {
                io::Error::other(format!(
                    "/proc/self/cgroup names no group of this process in {}",
                    self.mount.display()
                ))
            })?;
        Ok(self.mount.join(path.trim_start_matches('/')))
    }

    /// Freezes the group and waits until the kernel says every task of it is frozen.
    pub fn freeze(&self) -> io::Result<()> {
        write(&self.group.join("cgroup.freeze"), "1")?;
        let deadline = Instant::now() + FREEZE_PATIENCE;
        while !self.is_frozen()? {
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{}: the kernel did not report the group frozen within {} s",
                        self.group.display(),
                        FREEZE_PATIENCE.as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// SIGKILL to every process of the group and the groups below it (frozen ones die too):
    /// `cgroup.kill` (Linux 5.14), which needs no listing, else to each listed. Never thawed
    /// here: a process a failed listing missed stays frozen, not running unchecked; the
    /// caller's removal of the group kills, thaws and removes it.
    fn kill_members(&self) {
        if write(&self.group.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for pid in self.processes().unwrap_or_default() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn at(path: &Path) -> impl Fn(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn read(path: &Path) -> io::Result<String> {
    fs::read_to_string(path).map_err(at(path))
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(at(path))
}

/// A v2 group of a test's own holding processes the test started, to hold them as a restore
/// holds a restored tree: for the tests of the checks (feather-oci's, feather-vm's, these).
/// Declared after those processes, so dropped before them: thawed, its processes moved back
/// to the root group, removed.
pub struct TestGroup(Hold);

impl TestGroup {
    /// `feather-test-LABEL-PID` (this process's pid) holding `pids`, not frozen yet.
    pub fn holding(label: &str, pids: &[i32]) -> io::Result<TestGroup> {
        let mount = feather_sys::mountinfo::mounts()?
            .into_iter()
            .find(|m| m.fs_type == "cgroup2")
            .ok_or_else(|| io::Error::other("no cgroup v2 hierarchy is mounted"))?
            .mount_point;
        let group = mount.join(format!("feather-test-{label}-{}", std::process::id()));
        fs::create_dir(&group).map_err(at(&group))?;
        // Removed again on drop, also if what follows fails.
        let group = TestGroup(Hold { mount, group });
        for pid in pids {
            write(&group.0.group.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(group)
    }

    /// [`TestGroup::holding`], frozen.
    pub fn frozen(label: &str, pids: &[i32]) -> io::Result<TestGroup> {
        let group = TestGroup::holding(label, pids)?;
        group.0.freeze()?;
        Ok(group)
    }

    pub fn hold(&self) -> &Hold {
        &self.0
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = self.0.thaw();
        for pid in self.0.processes().unwrap_or_default() {
            let _ = write(&self.0.mount.join("cgroup.procs"), &pid.to_string());
        }
        let _ = fs::remove_dir(&self.0.group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restored::{walk_tree, Unchecked};

    /// A process the test started, killed and reaped on drop.
    struct Started(std::process::Child);

    impl Drop for Started {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn start(program: &str, args: &[&str]) -> Started {
        Started(
            std::process::Command::new(program)
                .args(args)
                .spawn()
                .unwrap(),
        )
    }

    fn pid(process: &Started) -> i32 {
        process.0.id() as i32
    }

    /// The processes `walk_tree` visits from `init`, or why it refused.
    fn walked(init: i32, hold: &Hold) -> Result<Vec<i32>, String> {
        let mut visited = Vec::new();
        walk_tree(
            init,
            hold,
            |thread| {
                visited.push(thread.pid);
                Ok(())
            },
            |unchecked: Unchecked| unchecked.to_string(),
        )?;
        Ok(visited)
    }

    /// A process of the frozen group that is no descendant of the init (as a restored zombie's
    /// children are, reparented outside the tree) is visited too; the walk from `children`
    /// alone never reached it.
    #[test]
    fn every_process_of_the_frozen_group_is_walked_not_only_inits_descendants() {
        let init = start("sleep", &["60"]);
        let stray = start("sleep", &["60"]);
        let group = TestGroup::frozen("walk", &[pid(&init), pid(&stray)]).unwrap();
        let visited = walked(pid(&init), group.hold()).unwrap();
        assert_eq!(visited, vec![pid(&init), pid(&stray)]);
    }

    /// A group not frozen, or a live process of init's tree outside the frozen group, is
    /// refused, naming the group or the process.
    #[test]
    fn a_tree_not_held_still_is_refused() {
        let init = start("sh", &["-c", "sleep 60 & wait"]);
        let children = format!("/proc/{}/task/{}/children", pid(&init), pid(&init));
        let child = loop {
            let listed = fs::read_to_string(&children).unwrap();
            if let Some(child) = listed.split_whitespace().next() {
                break child.parse::<i32>().unwrap();
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // Not the test's child: ended by its pid, which the frozen shell keeps from reuse.
        let _child = KilledOnDrop(child);
        let group = TestGroup::holding("outside", &[pid(&init)]).unwrap();
        let why = walked(pid(&init), group.hold()).unwrap_err();
        assert!(why.contains("is not frozen"), "{why}");
        group.hold().freeze().unwrap();
        let why = walked(pid(&init), group.hold()).unwrap_err();
        assert!(
            why.contains(&format!("process {child}")) && why.contains("not in the frozen group"),
            "{why}"
        );
    }

    /// The kill of a hold that failed leaves the group frozen: a process it missed stays
    /// frozen, not running unchecked. Before, it thawed the group once its SIGKILLs were sent,
    /// and a failed listing had sent none.
    #[test]
    fn a_failed_hold_kills_its_group_and_never_thaws_it() {
        let mut member = start("sleep", &["60"]);
        let group = TestGroup::frozen("kill", &[pid(&member)]).unwrap();
        group.hold().kill_members();
        let status = member.0.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{status:?}"
        );
        let asked = read(&group.hold().group.join("cgroup.freeze")).unwrap();
        assert_eq!(asked.trim(), "1", "the group was thawed");
    }

    struct KilledOnDrop(i32);

    impl Drop for KilledOnDrop {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
