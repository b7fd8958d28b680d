//! A container's folder under the runtime's `--root`: `record.json` (what create learnt),
//! `config.json` (the bundle's config as it was at create), `exec.fifo` (present from create
//! until start: the init waits on it). The status is never stored: it is read from the kernel
//! (is the init alive, with the recorded start time; is its group frozen; is the fifo there).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::unistd::Pid;
use oci_spec::runtime::{ContainerState, Spec, State, StateBuilder};
use serde::{Deserialize, Serialize};

use crate::cgroups::{Groups, CONTAINER_TAG};

/// What `create` recorded. `pid` is 0 while the container is being created.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub pid: i32,
    /// The init's start time in clock ticks: (pid, start) names one process for the machine's
    /// uptime, so a reused pid is never taken for the container.
    pub start_ticks: u64,
    pub created: String,
    /// The group's path relative to each cgroup hierarchy's root.
    pub cgroup: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// The init moved itself into the v2 group after its clone (feather_sys's `V2Entry`):
    /// `exec` enters the same way, never paying a clone the kernel kills at birth first.
    #[serde(default)]
    pub v2_after_clone: bool,
}

impl Record {
    pub fn v2_entry(&self) -> feather_sys::cgroup::V2Entry {
        if self.v2_after_clone {
            feather_sys::cgroup::V2Entry::AfterClone
        } else {
            feather_sys::cgroup::V2Entry::AtClone
        }
    }
}

/// The status the runtime specification names, plus runc's `paused`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

pub struct Container {
    pub dir: PathBuf,
    pub record: Record,
}

/// Ids become folder names: only what runc accepts, and never `.` or `..`.
pub fn validate_id(id: &str) -> Result<()> {
    let fine = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'));
    if !fine {
        bail!("invalid container id {id:?}: use letters, digits, '_', '-', '.', '+'");
    }
    Ok(())
}

/// Refuses a runtime root a user other than root could change, as feather refuses such a state
/// root (`feather_core::strict_modes`, StrictModes): feather-oci acts in it as root, by path,
/// so whoever could change a folder on its way could have root write or read any file through
/// it. A root not made yet is fine here ([`root_dir`] makes it).
pub fn check_root(root: &Path) -> Result<()> {
    feather_core::strict_modes::check_state_root(&std::path::absolute(root)?)?;
    Ok(())
}

/// Makes the runtime root where it is missing, one folder at a time (0700), each looked at once
/// made, after the same check as [`check_root`].
pub fn root_dir(root: &Path) -> Result<()> {
    feather_core::strict_modes::made_state_root(&std::path::absolute(root)?, None)
        .with_context(|| format!("create the runtime root {}", root.display()))?;
    Ok(())
}

impl Container {
    pub fn fifo(&self) -> PathBuf {
        self.dir.join("exec.fifo")
    }

    /// Makes the container's folder in `root` (made and judged by [`root_dir`] before); an
    /// existing one means the id is taken.
    pub fn make(root: &Path, record: Record) -> Result<Container> {
        let dir = root.join(&record.id);
        match fs::DirBuilder::new().mode(0o711).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                bail!("container with id {} already exists", record.id)
            }
            Err(e) => return Err(e).with_context(|| format!("create {}", dir.display())),
        }
        let container = Container { dir, record };
        container.save()?;
        Ok(container)
    }

    pub fn load(root: &Path, id: &str) -> Result<Container> {
        validate_id(id)?;
        let dir = root.join(id);
        let text = match fs::read_to_string(dir.join("record.json")) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!(
                    "container {id} does not exist under the runtime root {} (`feather-oci --root {} list` lists the ones that do)",
                    root.display(),
                    root.display()
                )
            }
            Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
        };
        let record = serde_json::from_str(&text)
            .with_context(|| format!("{}/record.json is damaged", dir.display()))?;
        Ok(Container { dir, record })
    }

    pub fn exists(root: &Path, id: &str) -> bool {
        root.join(id).join("record.json").exists()
    }

    pub fn save(&self) -> Result<()> {
        let path = self.dir.join("record.json");
        let temporary = self.dir.join(".record.json.tmp");
        let mut file = fs::File::create(&temporary)
            .with_context(|| format!("write {}", temporary.display()))?;
        file.write_all(serde_json::to_string(&self.record)?.as_bytes())?;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        fs::rename(&temporary, &path).with_context(|| format!("write {}", path.display()))
    }

    pub fn config(&self) -> Result<Spec> {
        Spec::load(self.dir.join("config.json"))
            .with_context(|| format!("read the config of container {}", self.record.id))
    }

    /// The group the record names, as it names it: to read (`ps`, the status) and to act on
    /// where the container's own processes decide nothing. `kill --all` and `delete`, which
    /// act on every process in it, take [`Container::own_groups`].
    pub fn groups(&self) -> Groups {
        Groups::new(&self.record.cgroup)
    }

    /// The group create made for this container, or one its init provably has to itself
    /// (see [`own_groups`]).
    pub fn own_groups(&self) -> Result<Groups, NotItsGroup> {
        own_groups(self)
    }

    /// The group the record names, if create would ever name it (never a hierarchy's root,
    /// nor a path with `..`): to read (`ps`, `list`, the status, `events --stats`).
    pub fn named_groups(&self) -> Result<Groups, NotItsGroup> {
        named_groups(&self.record)
    }

    /// The group create made and marked for this container ([`marked_groups`]).
    pub fn marked_groups(&self) -> Result<Groups, NotItsGroup> {
        marked_groups(self)
    }

    /// The mark create sets on this container's group ([`mark`]).
    pub fn mark(&self) -> PathBuf {
        let root = self.dir.parent().unwrap_or(Path::new("/"));
        mark(root, &self.record.id)
    }

    /// The init, if it is still the process create started.
    pub fn init_alive(&self) -> bool {
        self.record.pid > 0
            && feather_sys::process::start_ticks(Pid::from_raw(self.record.pid))
                == Some(self.record.start_ticks)
            && !is_zombie(self.record.pid)
    }

    /// A pidfd of the init, if it is still the process create started: taken before the check,
    /// so that a signal or `setns` through it never reaches a process that was given the
    /// init's pid after the init ended (checked first, the pid could be reused before the open).
    pub fn init_pidfd(&self) -> Option<OwnedFd> {
        let pidfd = feather_sys::process::pidfd_open(Pid::from_raw(self.record.pid)).ok()?;
        self.init_alive().then_some(pidfd)
    }

    pub fn status(&self) -> Status {
        if self.record.pid == 0 {
            return Status::Creating;
        }
        if !self.init_alive() {
            return Status::Stopped;
        }
        if self.fifo().exists() {
            return Status::Created;
        }
        if self.named_groups().is_ok_and(|groups| groups.is_frozen()) {
            return Status::Paused;
        }
        Status::Running
    }

    /// The state JSON of the runtime specification, with runc's extra fields (`rootfs`,
    /// `created`, `owner`) that engines read, and runc's `paused`.
    pub fn state_json(&self) -> Result<serde_json::Value> {
        let status = self.status();
        let spec_status = match status {
            Status::Creating => ContainerState::Creating,
            Status::Created => ContainerState::Created,
            Status::Running | Status::Paused => ContainerState::Running,
            Status::Stopped => ContainerState::Stopped,
        };
        let state: State = StateBuilder::default()
            .version(oci_spec::runtime::VERSION.to_owned())
            .id(self.record.id.clone())
            .status(spec_status)
            .pid(if status == Status::Stopped {
                0
            } else {
                self.record.pid
            })
            .bundle(self.record.bundle.clone())
            .annotations(self.record.annotations.clone())
            .build()?;
        let mut value = serde_json::to_value(state)?;
        value["status"] = status.name().into();
        value["rootfs"] = self.record.rootfs.display().to_string().into();
        value["created"] = self.record.created.clone().into();
        value["owner"] = "".into();
        Ok(value)
    }
}

/// Why the group a record names is not one create made for its container.
#[derive(Debug, thiserror::Error)]
pub enum NotItsGroup {
    #[error("cgroup {0:?}, a group feather-oci never makes")]
    NeverMade(String),
    #[error(
        "cgroup {0:?}, which feather-oci did not make for this container (it bears no mark \
         {CONTAINER_TAG} naming it, and holds a process outside its init's own pid namespace, \
         or its init has ended)"
    )]
    NotMarked(String),
    #[error(
        "cgroup {0:?}, which bears the mark {CONTAINER_TAG} of container {1:?}, not this one's \
         (a container of this id in another runtime root, or one made there and never deleted)"
    )]
    MarkedForAnother(String, PathBuf),
}

/// The mark create sets on the group of container `id` of runtime root `root`
/// ([`Groups::mark_for`]): the container's folder, under the root's canonical path. Two
/// runtime roots (two engines, or one engine's two `--root`s) may each hold a container of one
/// id in one group path (containerd's `/default/web`): the root tells them apart.
pub fn mark(root: &Path, id: &str) -> PathBuf {
    let root = root
        .canonicalize()
        .or_else(|_| std::path::absolute(root))
        .unwrap_or_else(|_| root.to_owned());
    root.join(id)
}

/// The group `container`'s record names, if create (or restore) made it for this container:
/// a group create would name ([`crate::cgroups::relative_path`]: never a hierarchy's root,
/// where every process is, nor a path with `..` or in `feather/`) bearing create's mark
/// naming the container's runtime root and id ([`mark`]; `trusted.*`: no one but root sets
/// it, create sets it on the group it made or joined empty, and refuses one bearing another
/// container's). A record names its group as freely as its pid: the group of another
/// runtime's container, a service's, `init.scope`, where a forged or stale record names one.
pub fn marked_groups(container: &Container) -> Result<Groups, NotItsGroup> {
    let groups = named_groups(&container.record)?;
    match groups.mark() {
        Some(mark) if mark == container.mark() => Ok(groups),
        Some(mark) => Err(NotItsGroup::MarkedForAnother(
            container.record.cgroup.clone(),
            mark,
        )),
        None => Err(NotItsGroup::NotMarked(container.record.cgroup.clone())),
    }
}

/// The group `kill --all`, `delete`, `pause`, `resume`, `update`, `exec` and `checkpoint` act
/// on: the one create marked for the container ([`marked_groups`]), or, for a group bearing
/// no mark of this form (a container made before feather-oci marked every group with its
/// root, or where `trusted.*` cannot be set), one its init provably has to itself
/// ([`held_by_the_inits_namespace`]). A group bearing another container's mark is never it.
pub fn own_groups(container: &Container) -> Result<Groups, NotItsGroup> {
    let why = match marked_groups(container) {
        Ok(groups) => return Ok(groups),
        Err(why) => why,
    };
    // No mark, or one of the form feather-oci set before it named the root (the id alone).
    let unmarked = match &why {
        NotItsGroup::NotMarked(_) => true,
        NotItsGroup::MarkedForAnother(_, mark) => mark.as_os_str() == container.record.id.as_str(),
        NotItsGroup::NeverMade(_) => false,
    };
    if unmarked {
        let groups = named_groups(&container.record)?;
        if held_by_the_inits_namespace(container, &groups) {
            return Ok(groups);
        }
    }
    Err(why)
}

/// The group a record names, if create would ever name it ([`crate::cgroups::relative_path`]).
fn named_groups(record: &Record) -> Result<Groups, NotItsGroup> {
    let group = &record.cgroup;
    match crate::cgroups::relative_path(Some(Path::new(group)), &record.id) {
        Ok(relative) if relative == *group => Ok(Groups::new(&relative)),
        _ => Err(NotItsGroup::NeverMade(group.clone())),
    }
}

/// Whether an unmarked group is the container's by what the kernel says: its init is alive
/// (the process create started, [`Container::init_pidfd`]) and in it, and every process in
/// it is in the init's pid namespace, which is neither this command's nor pid 1's. No
/// service, `init.scope` or other container's group (each in the host's pid namespace, or
/// another of its own) passes. A container sharing the host's pid namespace never passes:
/// its unmarked group is left to its init alone (docs/oci.md).
fn held_by_the_inits_namespace(container: &Container, groups: &Groups) -> bool {
    let Some(_held) = container.init_pidfd() else {
        return false;
    };
    let init = container.record.pid;
    let Some(its) = pid_namespace(&init.to_string()) else {
        return false;
    };
    if [pid_namespace("self"), pid_namespace("1")].contains(&Some(its)) {
        return false;
    }
    let members = groups.members();
    members.contains(&Pid::from_raw(init))
        && members
            .iter()
            .all(|pid| pid_namespace(&pid.to_string()) == Some(its))
}

/// The pid namespace of process `of` (a pid, `self`), as (device, inode).
fn pid_namespace(of: &str) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(format!("/proc/{of}/ns/pid"))
        .ok()
        .map(|meta| (meta.dev(), meta.ino()))
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat.rfind(')')?;
            stat[after + 1..]
                .split_whitespace()
                .next()
                .map(|s| s == "Z")
        })
        .unwrap_or(true)
}

/// Every container id under `root`.
pub fn ids(root: &Path) -> Vec<String> {
    let mut ids: Vec<String> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("record.json").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ids.sort();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(pid: i32, start_ticks: u64) -> Container {
        Container {
            dir: PathBuf::from("/nonexistent"),
            record: Record {
                pid,
                start_ticks,
                ..Record::default()
            },
        }
    }

    /// A group the test made, removed when dropped (also when the test fails).
    struct TestGroup(String);

    impl TestGroup {
        fn new(what: &str) -> TestGroup {
            let name = format!("feather-oci-test-{what}-{}", std::process::id());
            let cgroup = feather_sys::cgroup::Cgroup::new(crate::hierarchies::detect(), &name);
            cgroup.create(&Default::default()).unwrap();
            TestGroup(name)
        }
    }

    impl Drop for TestGroup {
        fn drop(&mut self) {
            Groups::new(&self.0).remove();
        }
    }

    fn in_root(root: &str, cgroup: &str) -> Container {
        Container {
            dir: Path::new(root).join("c1"),
            record: Record {
                id: "c1".to_owned(),
                cgroup: cgroup.to_owned(),
                ..Record::default()
            },
        }
    }

    /// A record naming a hierarchy's root (where every process is), a path create never
    /// names (`..`, a leading `/` it would have taken off), a group bearing no mark, or one
    /// bearing the mark of the container of the same id in another runtime root, has no group
    /// of its own: `kill --all`, `delete`, `pause`, `exec` act on none of them, and `ps` and
    /// the status read none. The group marked for this root and id is the container's.
    #[test]
    fn only_the_group_marked_for_the_containers_root_and_id_is_its_own() {
        for named in ["", "/", "a/../..", "a/../b", "/system.slice", "."] {
            let container = in_root("/feather-oci-test-root-a", named);
            assert!(
                matches!(container.own_groups(), Err(NotItsGroup::NeverMade(_))),
                "{named:?}"
            );
            assert!(container.named_groups().is_err(), "{named:?}");
        }
        let unmarked = TestGroup::new("unmarked");
        assert!(matches!(
            in_root("/feather-oci-test-root-a", &unmarked.0).own_groups(),
            Err(NotItsGroup::NotMarked(group)) if group == unmarked.0
        ));
        let marked = TestGroup::new("marked");
        let ours = in_root("/feather-oci-test-root-a", &marked.0);
        Groups::new(&marked.0).mark_for(&ours.mark()).unwrap();
        let same_id_elsewhere = in_root("/feather-oci-test-root-b", &marked.0);
        assert!(matches!(
            same_id_elsewhere.own_groups(),
            Err(NotItsGroup::MarkedForAnother(_, mark)) if mark == ours.mark()
        ));
        assert!(ours.own_groups().is_ok());
    }

    /// The pidfd `kill`, `exec`, `destroy` and hiding act through: given for the init create
    /// recorded, refused for a process that holds its pid with another start time (a pid
    /// reused after the init ended) and for a container still being created (pid 0).
    #[test]
    fn the_inits_pidfd_is_given_only_for_the_process_create_recorded() {
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let started = feather_sys::process::start_ticks(pid).unwrap();
        let same = recorded(pid.as_raw(), started).init_pidfd();
        let reused = recorded(pid.as_raw(), started + 1).init_pidfd();
        let creating = recorded(0, 0).init_pidfd();
        if let Some(init) = &same {
            feather_sys::process::signal(init, nix::sys::signal::Signal::SIGKILL).unwrap();
        } else {
            let _ = child.kill();
        }
        let status = child.wait().unwrap();
        assert!(same.is_some() && reused.is_none() && creating.is_none());
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "the pidfd is the recorded process's"
        );
    }
}
