//! The policy folders, watched for changes: with inotify where the host has an instance to
//! spare, else by looking at them every [`LOOK_EVERY`].
//!
//! inotify instances are counted per user across the whole host
//! (`fs.inotify.max_user_instances`, 128 by default), and every keeper runs as root beside the
//! host's own root daemons: from about the 128th running VM on a host, `inotify_init` fails
//! with EMFILE. A broker that then gave up would open no channel whatever the policy says.
//! Such a broker looks instead: it learns of a change within a second rather than at once, for
//! one wake-up a second.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::PollTimeout;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// How often a broker without an inotify instance looks at the policy folders.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The policy folders, watched. A folder that does not exist yet is waited for too.
pub struct PolicyWatch {
    dirs: Vec<PathBuf>,
    how: How,
}

enum How {
    /// Told by inotify, through the nearest folder above a missing one.
    Told(Inotify),
    /// Looking: what the last look saw, and when the next is due.
    Looking { seen: Vec<Look>, next: Instant },
}

/// What a look at one folder saw: its own identity and times, then each entry's, by name;
/// None where there is no folder.
type Look = Option<(Stamp, Vec<(OsString, Stamp)>)>;

/// Inode, size, and modification and change times (to the nanosecond): an edit in place, a
/// rename over, a chmod or a replacement each changes one of them.
type Stamp = (u64, u64, i64, i64, i64, i64);

impl PolicyWatch {
    /// Watches `dirs` by inotify, or by looking where the host has no instance to spare (see
    /// [`PolicyWatch::looking`]).
    pub fn new(dirs: Vec<PathBuf>) -> PolicyWatch {
        PolicyWatch::with(
            dirs,
            Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK),
        )
    }

    fn with(dirs: Vec<PathBuf>, inotify: nix::Result<Inotify>) -> PolicyWatch {
        let how = match inotify {
            Ok(inotify) => How::Told(inotify),
            Err(_) => How::Looking {
                seen: dirs.iter().map(|dir| look_at(dir)).collect(),
                next: Instant::now() + LOOK_EVERY,
            },
        };
        let watch = PolicyWatch { dirs, how };
        watch.arm();
        watch
    }

    /// Whether changes are found by looking (no inotify instance could be had).
    pub fn looking(&self) -> bool {
        matches!(self.how, How::Looking { .. })
    }

    /// The descriptor that becomes readable on a change, when inotify tells.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.how {
            How::Told(inotify) => Some(inotify.as_fd()),
            How::Looking { .. } => None,
        }
    }

    /// How long a wait for other things may last before the next look is due (rounded up to
    /// the millisecond, so that it is never spun through).
    pub fn timeout(&self) -> PollTimeout {
        match &self.how {
            How::Told(_) => PollTimeout::NONE,
            How::Looking { next, .. } => {
                let left = next.saturating_duration_since(Instant::now());
                PollTimeout::try_from(left.as_nanos().div_ceil(1_000_000))
                    .unwrap_or(PollTimeout::MAX)
            }
        }
    }

    /// Whether the folders changed since the last call: inotify's events read (and the
    /// watches added again, a folder made since being watched from now on), or, looking, a
    /// look taken if one is due.
    pub fn changed(&mut self) -> bool {
        match &mut self.how {
            How::Told(inotify) => {
                let mut any = false;
                while let Ok(events) = inotify.read_events() {
                    if events.is_empty() {
                        break;
                    }
                    any = true;
                }
                if any {
                    self.arm();
                }
                any
            }
            How::Looking { seen, next } => {
                if Instant::now() < *next {
                    return false;
                }
                *next = Instant::now() + LOOK_EVERY;
                let now: Vec<Look> = self.dirs.iter().map(|dir| look_at(dir)).collect();
                std::mem::replace(seen, now) != *seen
            }
        }
    }

    /// Adds the inotify watches (again); nothing when looking.
    fn arm(&self) {
        let How::Told(inotify) = &self.how else {
            return;
        };
        // A rule file counts once written (close) or moved in; a new empty file does not.
        let in_folder = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_ONLYDIR;
        let above =
            AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_ONLYDIR;
        for dir in &self.dirs {
            if inotify.add_watch(dir, in_folder).is_ok() {
                continue;
            }
            let mut up = dir.parent();
            while let Some(parent) = up {
                if inotify.add_watch(parent, above).is_ok() {
                    break;
                }
                up = parent.parent();
            }
        }
    }
}

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    (
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    )
}

/// One look at `dir` (rule files are read through links, as the policy reads them).
fn look_at(dir: &Path) -> Look {
    let own = std::fs::metadata(dir).ok()?;
    let mut entries: Vec<(OsString, Stamp)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let meta = std::fs::metadata(entry.path()).ok()?;
            Some((entry.file_name(), stamp(&meta)))
        })
        .collect();
    entries.sort();
    Some((stamp(&own), entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "feather-policy-watch-{label}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Takes the next look now rather than in a second.
    fn look_now(watch: &mut PolicyWatch) -> bool {
        if let How::Looking { next, .. } = &mut watch.how {
            *next = Instant::now();
        }
        watch.changed()
    }

    /// With no inotify instance to be had (EMFILE: the host's 128 taken), the broker looks:
    /// every kind of change a rule file or its folder goes through is seen at the next look,
    /// and a look that finds nothing new says so; a look is never due before its time.
    #[test]
    fn without_an_inotify_instance_every_change_is_found_by_looking() {
        let root = scratch("looking");
        let dir = root.join("policy.d");
        let mut watch = PolicyWatch::with(vec![dir.clone()], Err(nix::errno::Errno::EMFILE));
        assert!(watch.looking());
        assert!(watch.fd().is_none());
        assert_ne!(watch.timeout(), PollTimeout::NONE);
        assert!(!look_now(&mut watch), "nothing yet");
        std::fs::create_dir(&dir).unwrap();
        assert!(look_now(&mut watch), "the folder made");
        let rules = dir.join("10.policy");
        std::fs::write(&rules, "ipc unix:/run/a.sock web db allow\n").unwrap();
        assert!(look_now(&mut watch), "a rule file written");
        assert!(!look_now(&mut watch), "no change since");
        std::fs::write(&rules, "ipc unix:/run/b.sock web db allow\n").unwrap();
        assert!(look_now(&mut watch), "the same file rewritten, same size");
        let next = dir.join("20.policy.new");
        std::fs::write(&next, "").unwrap();
        assert!(look_now(&mut watch), "another file");
        std::fs::rename(&next, &rules).unwrap();
        assert!(look_now(&mut watch), "renamed over the first");
        std::fs::remove_file(&rules).unwrap();
        assert!(look_now(&mut watch), "removed");
        std::fs::write(dir.join("30.policy"), "x").unwrap();
        assert!(!watch.changed(), "not looked at before its time");
        assert!(look_now(&mut watch));
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// With an instance, inotify tells: nothing to look at, no timeout.
    #[test]
    fn with_an_inotify_instance_the_kernel_tells() {
        let root = scratch("told");
        let dir = root.join("policy.d");
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .expect("one of the host's inotify instances (fs.inotify.max_user_instances)");
        let mut watch = PolicyWatch::with(vec![dir.clone()], Ok(inotify));
        assert!(!watch.looking());
        assert_eq!(watch.timeout(), PollTimeout::NONE);
        assert!(!watch.changed());
        std::fs::create_dir(&dir).unwrap();
        assert!(watch.changed(), "the folder made, seen through its parent");
        std::fs::write(dir.join("10.policy"), "x").unwrap();
        assert!(watch.changed(), "a rule file in the folder watched since");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
