//! A VM's marker of an attached network, `<run>/<name>/network-attached`: written by its
//! keeper before anything of the VM's is made on the host (under the root's network lock when
//! it joins the bridge), naming the host end of its veth pair; removed with the VM's network
//! (`Attachment::detach`), or, after a keeper that died, by the clean-up at the VM's next
//! start, stop or rm (`remove_leftovers`), which reads it to know what to remove.
//!
//! While its keeper lives, the marker also says that the VM uses the root's network, whether
//! its veth is there yet or not, and every removal of the root's bridge and tables counts it
//! ([`in_use`]). A restore of a VM whose namespace CRIU dumped joins the root's network under
//! its lock (`Attachment::attach_for_restore`) and lets go of the lock before CRIU makes the
//! VM's veth pair: a removal that looked in between found no VM's port and took the bridge and
//! tables down under the restore, which failed, or brought its VM back without a network. (A
//! start, and a restore whose namespace is made anew, write the marker and make the veth under
//! one hold of that lock; a pooled namespace counts as claimed until it is taken, and its
//! marker, written before, covers a look that read the bridge's ports before the entry was
//! marked taken and the claimed entries after.) A marker whose keeper is gone says nothing:
//! the VM's namespace, and its veth with it, went with the keeper's init, and a crashed
//! keeper's marker must not keep its root's network for good.

use std::fs;

use feather_core::{StateRoot, VmDir, VmName};
use feather_sys::process;
use nix::unistd::Pid;

/// The marker's name in the VM's run folder.
pub(crate) const FILE: &str = "network-attached";

/// Whether a VM of `root` whose keeper lives has its marker written, other than the one whose
/// host end is `except` (the caller's own VM, being detached). The run folders of throw-away
/// VMs set aside for their teardown (`.removing-…`, no VM's name) are not looked at: their VMs
/// have ended.
pub(crate) fn in_use(root: &StateRoot, except: Option<&str>) -> bool {
    let Ok(folders) = fs::read_dir(root.run_dir()) else {
        return false;
    };
    folders.flatten().any(|folder| {
        let Ok(recorded) = fs::read_to_string(folder.path().join(FILE)) else {
            return false;
        };
        if except.is_some_and(|own| recorded.trim() == own) {
            return false;
        }
        let name = folder.file_name();
        let Some(name) = name.to_str().and_then(|name| name.parse::<VmName>().ok()) else {
            return false;
        };
        keeper_lives(&root.vm(&name))
    })
}

/// Whether the keeper recorded in the VM's keeper lock (`VmDir::last_keeper`: its pid, start
/// time and boot) is still that process, and not a zombie. Read, not locked: a look that took
/// the lock, however briefly, could make a keeper starting that VM that moment find it taken
/// and refuse to start. Every keeper records itself before it writes the marker; a record of
/// another boot, or none, is no live keeper's.
fn keeper_lives(vm: &VmDir) -> bool {
    vm.last_keeper().is_some_and(|(pid, started)| {
        let pid = Pid::from_raw(pid);
        process::start_ticks(pid) == Some(started) && process::is_alive(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    /// A state root of its own under the temporary folder, removed when dropped.
    struct Root(StateRoot, PathBuf);

    impl Root {
        fn new(label: &str) -> Root {
            let top = std::env::temp_dir()
                .join(format!("feather-attached-{label}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&top);
            let root = StateRoot::with_dirs(top.join("state"), top.join("run"));
            Root(root, top)
        }

        /// VM `name` with its marker naming `host_end` and `record` as its keeper lock's text.
        fn vm(&self, name: &str, host_end: &str, record: &str) {
            let (vms, run) = (
                self.0.dir().join("vms").join(name),
                self.0.run_dir().join(name),
            );
            fs::create_dir_all(&vms).unwrap();
            fs::create_dir_all(&run).unwrap();
            fs::write(vms.join("keeper.lock"), record).unwrap();
            fs::write(run.join(FILE), host_end).unwrap();
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.1);
        }
    }

    fn this_process(started: u64) -> String {
        let boot = fs::read_to_string(Path::new("/proc/sys/kernel/random/boot_id")).unwrap();
        format!("{} {started} {}\n", std::process::id(), boot.trim())
    }

    fn own_ticks() -> u64 {
        process::start_ticks(Pid::this()).unwrap()
    }

    #[test]
    fn a_marker_counts_while_its_recorded_keeper_lives() {
        let root = Root::new("live");
        root.vm("a", "fth1", &this_process(own_ticks()));
        assert!(in_use(&root.0, None));
        assert!(in_use(&root.0, Some("fth2")), "another VM's marker counts");
        assert!(
            !in_use(&root.0, Some("fth1")),
            "the caller's own marker does not"
        );
    }

    #[test]
    fn a_marker_of_a_keeper_that_is_gone_does_not_count() {
        let root = Root::new("gone");
        // Its pid now names a process that started at another time (the pid was reused).
        root.vm("a", "fth1", &this_process(own_ticks() + 1));
        // A record of another boot.
        let other_boot = format!(
            "{} {} 00000000-0000-0000-0000-000000000000\n",
            std::process::id(),
            own_ticks()
        );
        root.vm("b", "fth2", &other_boot);
        // No record at all (an older keeper), and a garbled one.
        root.vm("c", "fth3", "");
        root.vm("d", "fth4", "not a record");
        assert!(!in_use(&root.0, None));
    }

    #[test]
    fn a_set_aside_vm_s_marker_does_not_count() {
        let root = Root::new("aside");
        // A throw-away VM set aside for its teardown: its name is no VM's name.
        root.vm(".removing-a", "fth1", &this_process(own_ticks()));
        assert!(!in_use(&root.0, None));
    }
}
