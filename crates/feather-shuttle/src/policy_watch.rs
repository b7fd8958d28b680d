//! The policy folders, watched for changes: with inotify where the host has an instance to
//! spare, else by looking at them every [`LOOK_EVERY`].
//!
//! inotify instances are counted per user across the whole host
//! (`fs.inotify.max_user_instances`, 128 by default), and every keeper runs as root, as do the
//! host's own root daemons and every VM's root (a VM has no user namespace of its own): once
//! they hold them all, `inotify_init` fails with EMFILE. A broker that then gave up would open
//! no channel whatever the policy says. Such a broker looks instead, and tries for an instance
//! again at each look: it learns of a change about a second later rather than at once, for one
//! wake-up a second.
//!
//! A look compares each rule file's content, not only its times: on a filesystem (or a kernel
//! before 6.13) whose timestamps are coarse, an edit that keeps a file's size within one tick
//! would otherwise go unseen, and a removed rule stay in force. A difference is acted on once a
//! second look [`SETTLE`] later finds the same (a file being written is not read half-way, as
//! inotify's close-after-write never is).

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::PollTimeout;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// How often a broker without an inotify instance looks at the policy folders.
pub(crate) const LOOK_EVERY: Duration = Duration::from_secs(1);

/// How long after a look that found a difference the next one is taken, which must find the
/// same for the change to count.
pub(crate) const SETTLE: Duration = Duration::from_millis(100);

/// The policy folders, watched. A folder that does not exist yet is waited for too.
pub(crate) struct PolicyWatch {
    dirs: Vec<PathBuf>,
    how: How,
    /// Where an inotify instance comes from ([`new_inotify`]; tests have none).
    instance: fn() -> nix::Result<Inotify>,
}

enum How {
    /// Told by inotify, through the nearest folder above a missing one.
    Told(Inotify),
    Looking(Looks),
}

/// A watch that looks: why it could not have an inotify instance, what the last look that
/// counted saw, a difference waiting for a second look, and when the next look is due.
struct Looks {
    why: Errno,
    seen: Vec<Look>,
    settling: Option<Vec<Look>>,
    next: Instant,
}

/// What a look at one folder saw: the folder itself, then its entries by name; None where there
/// is no folder.
type Look = Option<(Seen, Vec<(OsString, Seen)>)>;

/// One file or folder as a look saw it (through links, as the policy reads rule files).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    inode: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
    /// A rule file's content (FNV-1a), which shows an edit whatever the timestamps' tick.
    content: Option<u64>,
}

impl PolicyWatch {
    /// Watches `dirs` by inotify, or by looking where the host has no instance to spare (see
    /// [`PolicyWatch::looking`]).
    pub(crate) fn new(dirs: Vec<PathBuf>) -> PolicyWatch {
        PolicyWatch::with(dirs, new_inotify)
    }

    fn with(dirs: Vec<PathBuf>, instance: fn() -> nix::Result<Inotify>) -> PolicyWatch {
        let how = match instance() {
            Ok(inotify) => How::Told(inotify),
            Err(why) => How::Looking(Looks {
                why,
                seen: dirs.iter().map(|dir| look_at(dir)).collect(),
                settling: None,
                next: Instant::now() + LOOK_EVERY,
            }),
        };
        let watch = PolicyWatch {
            dirs,
            how,
            instance,
        };
        watch.arm();
        watch
    }

    /// Why changes are found by looking (no inotify instance could be had); None when inotify
    /// tells.
    pub(crate) fn looking(&self) -> Option<Errno> {
        match &self.how {
            How::Told(_) => None,
            How::Looking(looks) => Some(looks.why),
        }
    }

    /// The descriptor that becomes readable on a change, when inotify tells.
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.how {
            How::Told(inotify) => Some(inotify.as_fd()),
            How::Looking(_) => None,
        }
    }

    /// How long a wait for other things may last before the next look is due (rounded up to
    /// the millisecond, so that it is never spun through).
    pub(crate) fn timeout(&self) -> PollTimeout {
        match &self.how {
            How::Told(_) => PollTimeout::NONE,
            How::Looking(looks) => feather_sys::timed::poll_timeout(
                looks.next.saturating_duration_since(Instant::now()),
            ),
        }
    }

    /// Whether the folders changed since the last call: inotify's events read (and the
    /// watches added again, a folder made since being watched from now on), or, looking, a
    /// look taken if one is due. A looking watch that can have an inotify instance again
    /// takes it, and says changed: what happened since its last look is not known.
    pub(crate) fn changed(&mut self) -> bool {
        let looks = match &mut self.how {
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
                return any;
            }
            How::Looking(looks) => looks,
        };
        if Instant::now() < looks.next {
            return false;
        }
        if let Ok(inotify) = (self.instance)() {
            self.how = How::Told(inotify);
            self.arm();
            return true;
        }
        let now: Vec<Look> = self.dirs.iter().map(|dir| look_at(dir)).collect();
        let counted = match looks.settling.take() {
            // A difference from what counted last waits for a second look.
            None => {
                if now != looks.seen {
                    looks.settling = Some(now);
                }
                false
            }
            // The difference held for a second look: it counts.
            Some(before) if before == now => {
                looks.seen = now;
                true
            }
            // Still changing: looked at again shortly.
            Some(_) => {
                looks.settling = Some(now);
                false
            }
        };
        let wait = match looks.settling {
            Some(_) => SETTLE,
            None => LOOK_EVERY,
        };
        looks.next = Instant::now() + wait;
        counted
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

fn new_inotify() -> nix::Result<Inotify> {
    Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
}

fn seen(meta: &std::fs::Metadata, content: Option<u64>) -> Seen {
    Seen {
        inode: meta.ino(),
        size: meta.size(),
        modified: (meta.mtime(), meta.mtime_nsec()),
        changed: (meta.ctime(), meta.ctime_nsec()),
        content,
    }
}

/// One look at `dir`: the folder, each entry, and the content of each rule file.
fn look_at(dir: &Path) -> Look {
    let own = std::fs::metadata(dir).ok()?;
    let mut entries: Vec<(OsString, Seen)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            let meta = std::fs::metadata(&path).ok()?;
            let rules = meta.is_file() && crate::policy::is_rule_file(&path);
            let content = rules
                .then(|| std::fs::read(&path).ok())
                .flatten()
                .map(|bytes| feather_sys::fnv::fnv1a_64(&bytes));
            Some((entry.file_name(), seen(&meta, content)))
        })
        .collect();
    entries.sort();
    Some((seen(&own, None), entries))
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

    /// A watch that looks, whatever the host's inotify instances (EMFILE: all taken).
    fn looking(dirs: Vec<PathBuf>) -> PolicyWatch {
        let watch = PolicyWatch::with(dirs, || Err(Errno::EMFILE));
        assert_eq!(watch.looking(), Some(Errno::EMFILE));
        watch
    }

    /// Takes the next look now rather than when it is due; whether it counted a change.
    fn look_now(watch: &mut PolicyWatch) -> bool {
        let How::Looking(looks) = &mut watch.how else {
            panic!("the watch looks");
        };
        looks.next = Instant::now();
        watch.changed()
    }

    /// A change counts at the second look that finds it, not at the first.
    fn settled(watch: &mut PolicyWatch) -> bool {
        !look_now(watch) && look_now(watch)
    }

    /// With no inotify instance to be had (EMFILE: the host's 128 taken), the broker looks:
    /// every kind of change a rule file or its folder goes through is seen, once it has held
    /// for a second look; a look that finds nothing new says so; a look is never taken before
    /// it is due.
    #[test]
    fn without_an_inotify_instance_every_change_is_found_by_looking() {
        let root = scratch("looking");
        let dir = root.join("policy.d");
        let mut watch = looking(vec![dir.clone()]);
        assert!(watch.fd().is_none());
        assert!(watch.timeout() <= PollTimeout::try_from(1000).unwrap());
        assert!(!look_now(&mut watch), "nothing yet");
        std::fs::create_dir(&dir).unwrap();
        assert!(settled(&mut watch), "the folder made");
        let rules = dir.join("10.policy");
        std::fs::write(&rules, "ipc tcp:5432 web db1 allow\n").unwrap();
        assert!(settled(&mut watch), "a rule file written");
        assert!(!look_now(&mut watch), "no change since");
        assert!(!look_now(&mut watch), "nor since");
        std::fs::write(&rules, "ipc tcp:5432 web db2 allow\n").unwrap();
        assert!(
            settled(&mut watch),
            "the same file rewritten, same size (its times may not move on a coarse filesystem)"
        );
        let next = dir.join("20.policy.new");
        std::fs::write(&next, "").unwrap();
        assert!(settled(&mut watch), "another file");
        std::fs::rename(&next, &rules).unwrap();
        assert!(settled(&mut watch), "renamed over the first");
        std::fs::remove_file(&rules).unwrap();
        assert!(settled(&mut watch), "removed");
        std::fs::write(dir.join("30.policy"), "x").unwrap();
        assert!(!watch.changed(), "not looked at before its time");
        assert!(settled(&mut watch));
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A file still being written when a look finds it changed is not taken half-way: the
    /// change counts only once a second look finds it as the first did.
    #[test]
    fn a_change_counts_once_a_second_look_finds_it_the_same() {
        let root = scratch("settle");
        let dir = root.join("policy.d");
        std::fs::create_dir(&dir).unwrap();
        let mut watch = looking(vec![dir.clone()]);
        let rules = dir.join("10.policy");
        std::fs::write(&rules, "ipc tcp:5432 web").unwrap();
        assert!(!look_now(&mut watch), "first seen mid-write: not yet");
        std::fs::write(&rules, "ipc tcp:5432 web db allow\n").unwrap();
        assert!(!look_now(&mut watch), "still changing: not yet");
        assert!(look_now(&mut watch), "the same at the next look: counted");
        assert!(!look_now(&mut watch), "counted once");
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// With an instance, inotify tells: nothing to look at, no timeout. (Skipped, saying so,
    /// where the host has no instance to spare: that is the other test's case.)
    #[test]
    fn with_an_inotify_instance_the_kernel_tells() {
        let root = scratch("told");
        let dir = root.join("policy.d");
        let mut watch = PolicyWatch::new(vec![dir.clone()]);
        if watch.looking() == Some(Errno::EMFILE) {
            eprintln!("skipped: every inotify instance of this user is taken");
            return;
        }
        assert!(watch.looking().is_none());
        assert_eq!(watch.timeout(), PollTimeout::NONE);
        assert!(!watch.changed());
        std::fs::create_dir(&dir).unwrap();
        assert!(watch.changed(), "the folder made, seen through its parent");
        std::fs::write(dir.join("10.policy"), "x").unwrap();
        assert!(watch.changed(), "a rule file in the folder watched since");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
