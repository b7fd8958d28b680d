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

    /// The group create made for this container (see [`own_groups`]).
    pub fn own_groups(&self) -> Result<Groups, NotItsGroup> {
        own_groups(&self.record)
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
        if self.groups().is_frozen() {
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
         {CONTAINER_TAG} naming it)"
    )]
    NotMarked(String),
}

/// The group `record` names, if create (or restore) made it for this container: a group
/// create would name ([`crate::cgroups::relative_path`]: never a hierarchy's root, where
/// every process is, nor a path with `..` or in `feather/`) bearing create's mark naming the
/// id ([`Groups::mark_for`], `trusted.*`: no one but root sets it, and create sets it only on
/// the group it made, which held no process then). A record names its group as freely as its
/// pid: the group of another runtime's container, a service's, `init.scope`, where a forged or
/// stale record names one; never signalled nor removed for it.
pub fn own_groups(record: &Record) -> Result<Groups, NotItsGroup> {
    let group = &record.cgroup;
    let Ok(relative) = crate::cgroups::relative_path(Some(Path::new(group)), &record.id) else {
        return Err(NotItsGroup::NeverMade(group.clone()));
    };
    let groups = Groups::new(&relative);
    match groups.is_marked_for(&record.id) {
        true => Ok(groups),
        false => Err(NotItsGroup::NotMarked(group.clone())),
    }
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

    /// A record naming a hierarchy's root (where every process is), a path that leaves it, or
    /// a group bearing no mark for its id has no group of its own: `kill --all` and `delete`
    /// act on none of them.
    #[test]
    fn a_group_the_record_merely_names_is_not_the_containers() {
        let named = |cgroup: &str| {
            own_groups(&Record {
                id: "c1".to_owned(),
                cgroup: cgroup.to_owned(),
                ..Record::default()
            })
        };
        for root in ["", "/", "a/../.."] {
            assert!(
                matches!(named(root), Err(NotItsGroup::NeverMade(_))),
                "{root:?}"
            );
        }
        let unmarked = format!("feather-oci-test-unmarked-{}", std::process::id());
        assert!(matches!(
            named(&unmarked),
            Err(NotItsGroup::NotMarked(group)) if group == unmarked
        ));
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
