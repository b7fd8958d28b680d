//! The policy folders, watched for changes: the kernel signals the broker's thread when an
//! entry of a policy folder (or of the folder above it, and of the folder its real path is in
//! where a link leads to it) is made, removed, renamed or written (dnotify:
//! [`feather_sys::dnotify`]), and the thread then looks at the folders. What is not told (a
//! grandparent replaced, a mount over the folder, a linked rule file written where it lives,
//! another machine's change on NFS or FUSE, a write through `mmap` alone): docs/shuttle.md.
//!
//! Not inotify: its instances are counted per user across the whole host
//! (`fs.inotify.max_user_instances`, 128 by default), every keeper runs as root, as do the
//! host's own root daemons and every VM's root (a VM has no user namespace of its own), and a
//! broker holds its watch for as long as its VM runs: a hundred running VMs took root's last
//! instances from systemd, udev and `criu check`. dnotify has no instance to run out of; a
//! watch is an open descriptor of the folder.
//!
//! A look compares each rule file's content, not only its times: on a filesystem (or a kernel
//! before 6.13) whose timestamps are coarse, an edit that keeps a file's size within one tick
//! would otherwise go unseen, and a removed rule stay in force. dnotify tells each write as it
//! happens, not the close after the last, so a difference is acted on once a second look finds
//! the same, taken once the folders have been left alone for [`SETTLE`] (a file being written is
//! not read half-way, however slowly it is written). Files that are
//! not rule files (an editor's swap file, a `.tmp` about to be renamed) are not looked at.
//!
//! A kernel that refuses dnotify (built without it, or `fs.dir-notify-enable=0`) leaves the
//! broker looking every [`LOOK_EVERY`] instead, trying again to be told at each look.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use feather_sys::dnotify::{Changes, Signals, Watched};
use nix::poll::PollTimeout;

/// How often a broker the kernel will not tell looks at the policy folders.
pub(crate) const LOOK_EVERY: Duration = Duration::from_secs(1);

/// How long after a look that found a difference the next one is taken, which must find the
/// same for the change to count. A change told while a difference waits for that look puts it
/// off to [`SETTLE`] after the change (dnotify tells each write: a file written slowly, or
/// removed and put back, is looked at once it has been left alone that long).
pub(crate) const SETTLE: Duration = Duration::from_millis(100);

/// How long changes told one after another may put off the second look, from the first that
/// found the difference: a file that never stops changing is still looked at every [`SETTLE`]
/// after that, and counts once two looks find it the same.
pub(crate) const SETTLE_AT_MOST: Duration = Duration::from_secs(1);

/// The policy folders, watched. A folder that does not exist yet is waited for too.
pub(crate) struct PolicyWatch {
    dirs: Vec<PathBuf>,
    /// How the thread that started the watch is told (None before [`PolicyWatch::start`]).
    signals: Option<Signals>,
    /// Where `signals` comes from ([`Signals::here`]; tests have the kernel refuse).
    signals_here: fn() -> feather_sys::Result<Signals>,
    /// How a folder is watched ([`Signals::watch`]; tests have the folder go first).
    watch_folder: fn(&Signals, &Path, Changes) -> feather_sys::Result<Watched>,
    /// What is watched now: each policy folder that exists, and the nearest folder above each
    /// that exists (which alone is told of the folder's making, removal or renaming).
    watched: Vec<Watched>,
    /// Why the kernel does not tell (the folders are then looked at every second); None when
    /// it does.
    why: Option<feather_sys::SysError>,
    /// What the last look that counted saw.
    seen: Vec<Look>,
    /// A difference waiting for a second look.
    settling: Option<Vec<Look>>,
    /// When the look that found the difference now settling was taken.
    settling_since: Option<Instant>,
    /// When the next look is due; None: when the kernel tells of a change.
    next: Option<Instant>,
}

/// What a look at one folder saw: the folder's inode, then its rule files by name (None for a
/// link to nothing); None where there is no folder. The folder's own times are left out: they
/// move with every entry made or removed, rule file or not.
type Look = Option<(u64, Vec<(OsString, Option<Seen>)>)>;

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
    /// The folders `dirs` as they are now; nothing is told of their changes until
    /// [`PolicyWatch::start`].
    pub(crate) fn new(dirs: Vec<PathBuf>) -> PolicyWatch {
        PolicyWatch {
            seen: dirs.iter().map(|dir| look_at(dir)).collect(),
            dirs,
            signals: None,
            signals_here: Signals::here,
            watch_folder: Signals::watch,
            watched: Vec::new(),
            why: None,
            settling: None,
            settling_since: None,
            next: None,
        }
    }

    /// Has the changes told to the calling thread from now on (the one that waits on
    /// [`PolicyWatch::fd`]), and makes a look due at once: what changed since
    /// [`PolicyWatch::new`] was told to no one.
    pub(crate) fn start(&mut self) {
        self.arm();
        self.next = Some(Instant::now());
    }

    /// Why changes are found by looking every second (the kernel would not tell); None when
    /// it tells.
    pub(crate) fn looking(&self) -> Option<&feather_sys::SysError> {
        self.why.as_ref()
    }

    /// The descriptor that becomes readable on a change.
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.signals.as_ref().map(|signals| signals.as_fd())
    }

    /// How long a wait for other things may last before the next look is due (rounded up to
    /// the millisecond, so that it is never spun through); none while nothing is due.
    pub(crate) fn timeout(&self) -> PollTimeout {
        match self.next {
            None => PollTimeout::NONE,
            Some(next) => {
                feather_sys::timed::poll_timeout(next.saturating_duration_since(Instant::now()))
            }
        }
    }

    /// Whether the folders changed since the last call that said so: a look is taken if the
    /// kernel told of a change or one is due, and a difference counts once a second look finds
    /// the same.
    pub(crate) fn changed(&mut self) -> bool {
        let told = self.signals.as_ref().is_some_and(Signals::taken);
        if told {
            let now = Instant::now();
            self.next = Some(match (self.settling_since, self.next) {
                // A difference waits for its second look: a change restarts the quiet period
                // (each write is told, and a look now would take the file half-written), up
                // to SETTLE_AT_MOST from the first look; it never brings the look forward.
                (Some(since), Some(next)) => (now + SETTLE).min(since + SETTLE_AT_MOST).max(next),
                _ => now,
            });
        }
        if self.next.is_none_or(|next| Instant::now() < next) {
            return false;
        }
        // Watched before the look: a change after it is told, one before it is seen.
        let armed = self.arm();
        let now: Vec<Look> = self.dirs.iter().map(|dir| look_at(dir)).collect();
        let counted = match self.settling.take() {
            // A difference from what counted last waits for a second look.
            None => {
                if now != self.seen {
                    self.settling = Some(now);
                    self.settling_since = Some(Instant::now());
                }
                false
            }
            // The difference held for a second look: it counts.
            Some(before) if before == now => {
                self.seen = now;
                true
            }
            // Still changing: looked at again shortly.
            Some(_) => {
                self.settling = Some(now);
                false
            }
        };
        if self.settling.is_none() {
            self.settling_since = None;
        }
        self.next = if self.settling.is_some() || !armed {
            Some(Instant::now() + SETTLE)
        } else if self.why.is_some() {
            Some(Instant::now() + LOOK_EVERY)
        } else {
            None
        };
        counted
    }

    /// Watches each policy folder that exists and the nearest folder above each that exists
    /// (and, for a policy folder that is a link or under one, the folder its real path is in:
    /// the link's target renamed away is told there only), keeping the watches of folders
    /// already watched; where the kernel refuses, says why (the folders are then looked at
    /// every second). False if a folder went while it was
    /// being watched: what is watched may then not tell of the next change, and the caller
    /// looks (and arms) again shortly.
    fn arm(&mut self) -> bool {
        if self.signals.is_none() {
            match (self.signals_here)() {
                Ok(signals) => self.signals = Some(signals),
                Err(why) => {
                    self.why = Some(why);
                    return true;
                }
            }
        }
        let Some(signals) = &self.signals else {
            return true;
        };
        let mut wanted: Vec<(&Path, Changes)> = Vec::new();
        let mut real_aboves: Vec<PathBuf> = Vec::new();
        for dir in &self.dirs {
            let above = dir.ancestors().skip(1).find(|up| up.is_dir());
            let above_real = above.and_then(|above| std::fs::canonicalize(above).ok());
            if let Some(real_above) =
                real_above(dir).filter(|real| Some(real) != above_real.as_ref())
            {
                real_aboves.push(real_above);
            }
            let folders = dir
                .is_dir()
                .then_some((dir.as_path(), Changes::ENTRIES_AND_WRITES))
                .into_iter()
                .chain(above.map(|above| (above, Changes::ENTRIES)));
            for folder in folders {
                if !wanted.contains(&folder) {
                    wanted.push(folder);
                }
            }
        }
        for real_above in &real_aboves {
            let folder = (real_above.as_path(), Changes::ENTRIES);
            if !wanted.contains(&folder) {
                wanted.push(folder);
            }
        }
        let mut kept = Vec::new();
        let mut why = None;
        let mut whole = true;
        for (folder, changes) in wanted {
            let Ok(meta) = std::fs::metadata(folder) else {
                whole = false;
                continue;
            };
            if let Some(at) = self.watched.iter().position(|w| w.is(&meta, changes)) {
                kept.push(self.watched.swap_remove(at));
                continue;
            }
            match (self.watch_folder)(signals, folder, changes) {
                Ok(watched) => kept.push(watched),
                Err(e) if e.errno == nix::errno::Errno::ENOENT => whole = false,
                Err(e) => why = Some(e),
            }
        }
        // The old watches end only now: a change while the new ones were made was told.
        self.watched = kept;
        self.why = why;
        whole
    }
}

/// The folder `dir`'s real path is in, through every link on the way (which the folder above
/// in `dir`'s own path may not be); for a link to nothing (yet), `dir` itself or one on the way
/// to it, the nearest folder that exists on the way to where it leads, which is told when
/// something is put there.
fn real_above(dir: &Path) -> Option<PathBuf> {
    let mut path = dir.to_path_buf();
    // A link to a link is followed, up to the kernel's own limit of 40.
    for _ in 0..40 {
        if let Ok(real) = std::fs::canonicalize(&path) {
            return real.parent().map(Path::to_path_buf);
        }
        match std::fs::read_link(&path) {
            Ok(target) => path = path.parent()?.join(target),
            Err(_) => {
                // The nearest entry on the way that exists: a link there (to nothing, or to
                // a folder without the rest of the way) is followed, the rest joined to it.
                let (up, meta) = path
                    .ancestors()
                    .skip(1)
                    .find_map(|up| Some((up, std::fs::symlink_metadata(up).ok()?)))?;
                if !meta.file_type().is_symlink() {
                    let up = up.ancestors().find(|up| up.is_dir())?;
                    return std::fs::canonicalize(up).ok();
                }
                let rest = path.strip_prefix(up).ok()?.to_path_buf();
                let target = std::fs::read_link(up).ok()?;
                path = up.parent()?.join(target).join(rest);
            }
        }
    }
    None
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

/// One look at `dir`: the folder, and each rule file with its content (a link to nothing as
/// such).
fn look_at(dir: &Path) -> Look {
    let own = std::fs::metadata(dir).ok()?;
    let mut entries: Vec<(OsString, Option<Seen>)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            if !crate::policy::is_rule_file(&path) {
                return None;
            }
            // What the policy reads as a rule file (through links): its content too.
            let meta = std::fs::metadata(&path).ok();
            let content = meta
                .as_ref()
                .filter(|meta| meta.is_file())
                .and_then(|_| std::fs::read(&path).ok())
                .map(|bytes| feather_sys::fnv::fnv1a_64(&bytes));
            Some((entry.file_name(), meta.map(|meta| seen(&meta, content))))
        })
        .collect();
    entries.sort();
    Some((own.ino(), entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{poll, PollFd, PollFlags};

    /// A watch that looks every second, as where the kernel refuses dnotify.
    fn looking(dirs: Vec<PathBuf>) -> PolicyWatch {
        let mut watch = PolicyWatch::new(dirs);
        watch.signals_here = || {
            Err(feather_sys::SysError {
                op: "fcntl F_NOTIFY",
                target: "policy.d".into(),
                errno: nix::errno::Errno::EINVAL,
            })
        };
        watch.start();
        assert!(watch.looking().is_some());
        assert!(watch.fd().is_none());
        assert!(
            !watch.changed(),
            "the first look, due at once, finds nothing new"
        );
        assert!(
            watch.timeout() != PollTimeout::NONE,
            "the next is set for a time"
        );
        watch
    }

    /// Takes the next look now rather than when it is due; whether it counted a change.
    fn look_now(watch: &mut PolicyWatch) -> bool {
        watch.next = Some(Instant::now());
        watch.changed()
    }

    /// A change counts at the second look that finds it, not at the first.
    fn settled(watch: &mut PolicyWatch) -> bool {
        !look_now(watch) && look_now(watch)
    }

    /// Sets the next look an hour off (so that no test depends on how long it takes); when.
    fn hour_off(watch: &mut PolicyWatch) -> Option<Instant> {
        watch.next = Some(Instant::now() + Duration::from_secs(3600));
        watch.next
    }

    /// Whether the kernel has told of a change: the descriptor is readable now, without
    /// waiting (a folder's change is signalled within the call that makes it).
    fn told_now(watch: &PolicyWatch) -> bool {
        let mut fds = [PollFd::new(watch.fd().unwrap(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
    }

    /// Waits as the broker does (the descriptor, or the next look's time) until the watch
    /// counts a change or has nothing more to look at; whether it counted one.
    fn counted(watch: &mut PolicyWatch) -> bool {
        loop {
            if watch.changed() {
                return true;
            }
            if watch.timeout() == PollTimeout::NONE && !told_now(watch) {
                return false;
            }
            let mut fds = [PollFd::new(watch.fd().unwrap(), PollFlags::POLLIN)];
            poll(&mut fds, watch.timeout()).unwrap();
        }
    }

    /// Where the kernel will not tell, the broker looks: every kind of change a rule file or
    /// its folder goes through is seen, once it has held for a second look; a look that finds
    /// nothing new says so; a file that is not a rule file is no change; a look is never
    /// taken before it is due.
    #[test]
    fn without_dnotify_every_change_is_found_by_looking() {
        let root_scratch = feather_testkit::ScratchDir::new("policy-watch-looking");
        let root = root_scratch.0.clone();
        let dir = root.join("policy.d");
        let mut watch = looking(vec![dir.clone()]);
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
        assert!(!look_now(&mut watch), "not a rule file: no change");
        assert!(!look_now(&mut watch), "nor at a second look");
        std::fs::rename(&next, &rules).unwrap();
        assert!(settled(&mut watch), "renamed over the first");
        std::fs::remove_file(&rules).unwrap();
        assert!(settled(&mut watch), "removed");
        std::fs::write(dir.join("30.policy"), "x").unwrap();
        hour_off(&mut watch);
        assert!(!watch.changed(), "not looked at before its time");
        assert!(settled(&mut watch));
    }

    /// A file still being written when a look finds it changed is not taken half-way: the
    /// change counts only once a second look finds it as the first did.
    #[test]
    fn a_change_counts_once_a_second_look_finds_it_the_same() {
        let root_scratch = feather_testkit::ScratchDir::new("policy-watch-settle");
        let root = root_scratch.0.clone();
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
    }

    /// The kernel tells (dnotify): each change is signalled as it is made, so the broker
    /// sleeps without a timeout between changes and holds no inotify instance. The folder is
    /// waited for through the one above, and so is its making again after its removal.
    #[test]
    fn the_kernel_tells_of_every_change_and_nothing_is_looked_at_in_between() {
        let root_scratch = feather_testkit::ScratchDir::new("policy-watch-told");
        let root = root_scratch.0.clone();
        let dir = root.join("policy.d");
        let mut watch = PolicyWatch::new(vec![dir.clone()]);
        let inotify_before = inotify_instances();
        watch.start();
        assert!(watch.looking().is_none(), "{:?}", watch.looking());
        assert!(!counted(&mut watch), "nothing yet");
        assert_eq!(watch.timeout(), PollTimeout::NONE, "no look is due");
        assert_eq!(inotify_instances(), inotify_before, "no inotify instance");

        std::fs::create_dir(&dir).unwrap();
        assert!(told_now(&watch), "the folder made, told through its parent");
        assert!(counted(&mut watch));
        std::fs::write(dir.join("10.policy"), "x").unwrap();
        assert!(told_now(&watch), "a rule file in the folder watched since");
        assert!(counted(&mut watch));
        assert_eq!(watch.timeout(), PollTimeout::NONE);

        let temporary = dir.join(".20.policy.tmp");
        std::fs::write(&temporary, "ipc tcp:5432 web db allow\n").unwrap();
        assert!(told_now(&watch), "a write to any file is told");
        assert!(!counted(&mut watch), "but is no change of the policy");
        std::fs::rename(&temporary, dir.join("20.policy")).unwrap();
        assert!(told_now(&watch), "renamed into place");
        assert!(counted(&mut watch));

        std::fs::remove_dir_all(&dir).unwrap();
        assert!(counted(&mut watch), "the folder removed");
        std::fs::create_dir(&dir).unwrap();
        assert!(told_now(&watch), "made again: told through its parent");
        assert!(counted(&mut watch));
        std::fs::write(dir.join("10.policy"), "y").unwrap();
        assert!(told_now(&watch), "the new folder is watched");
        assert!(counted(&mut watch));
    }

    /// dnotify tells each write as it happens: a change told while a difference waits for its
    /// second look restarts the quiet period instead of taking that look at once, which would
    /// count a file half-written (a rule cut short, the policy then malformed) or one removed
    /// on its way back (renamed into place from a `.tmp`).
    #[test]
    fn a_change_told_while_settling_puts_the_second_look_off() {
        let root_scratch = feather_testkit::ScratchDir::new("policy-watch-told-settle");
        let root = root_scratch.0.clone();
        let dir = root.join("policy.d");
        std::fs::create_dir(&dir).unwrap();
        let rules = dir.join("10.policy");
        std::fs::write(&rules, "ipc tcp:5432 web db allow\n").unwrap();
        let mut watch = PolicyWatch::new(vec![dir.clone()]);
        watch.start();
        assert!(!counted(&mut watch), "nothing yet");

        std::fs::write(&rules, "ipc tcp:5432 web").unwrap();
        assert!(told_now(&watch));
        assert!(!watch.changed(), "the first look finds it: settling");
        let set = hour_off(&mut watch);
        std::fs::write(dir.join(".x.tmp"), "").unwrap();
        assert!(told_now(&watch));
        assert!(
            !watch.changed(),
            "a signal while settling does not cut the settle short"
        );
        assert_eq!(watch.next, set, "nor brings the look forward");
        watch.next = Some(Instant::now() + SETTLE);
        std::fs::write(&rules, "ipc tcp:5432 web db1 allow\n").unwrap();
        assert!(counted(&mut watch), "counted once left alone");
        assert_eq!(
            watch.seen[0].as_ref().unwrap().1[0]
                .1
                .as_ref()
                .unwrap()
                .content,
            Some(feather_sys::fnv::fnv1a_64(b"ipc tcp:5432 web db1 allow\n")),
            "as written in the end"
        );

        // Removed, then put back through a rename: never counted as removed.
        std::fs::remove_file(&rules).unwrap();
        assert!(told_now(&watch));
        assert!(!watch.changed(), "found gone: settling");
        let set = hour_off(&mut watch);
        let temporary = dir.join(".10.policy.tmp");
        std::fs::write(&temporary, "ipc tcp:5432 web db2 allow\n").unwrap();
        std::fs::rename(&temporary, &rules).unwrap();
        assert!(told_now(&watch));
        assert!(
            !watch.changed(),
            "put back while settling: not looked at yet"
        );
        assert_eq!(watch.next, set, "the look left where it was");
        watch.next = Some(Instant::now() + SETTLE);
        assert!(counted(&mut watch));
        assert_eq!(watch.seen[0].as_ref().unwrap().1.len(), 1, "still there");

        std::fs::write(&rules, "ipc tcp:5432 web").unwrap();
        assert!(told_now(&watch));
        assert!(!watch.changed(), "settling");
        // Changes told one after another put the look off no further than SETTLE_AT_MOST
        // from the first: past it, one told leaves the look due at that bound, already passed.
        let first = Instant::now() - SETTLE_AT_MOST;
        (watch.settling_since, watch.next) = (Some(first), Some(first));
        std::fs::write(dir.join(".x.tmp"), "z").unwrap();
        assert!(told_now(&watch));
        assert!(
            watch.changed(),
            "looked at past SETTLE_AT_MOST, not put off again: the same, counted"
        );
    }

    /// A policy folder that is a link: its target renamed away, and a new folder renamed into
    /// its place, are told in the folder the target is in, which is watched too (also while
    /// the link leads to nothing).
    #[test]
    fn a_linked_policy_folder_swapped_under_its_link_is_told() {
        let root_scratch = feather_testkit::ScratchDir::new("policy-watch-linked");
        let root = root_scratch.0.clone();
        let (etc, srv) = (root.join("etc"), root.join("srv"));
        std::fs::create_dir_all(srv.join("pol")).unwrap();
        std::fs::create_dir_all(srv.join("pol.new")).unwrap();
        std::fs::write(srv.join("pol.new/10.policy"), "x").unwrap();
        std::fs::create_dir(&etc).unwrap();
        let dir = etc.join("policy.d");
        std::os::unix::fs::symlink(srv.join("pol"), &dir).unwrap();
        let mut watch = PolicyWatch::new(vec![dir.clone()]);
        watch.start();
        assert!(!counted(&mut watch), "nothing yet");

        std::fs::rename(srv.join("pol"), srv.join("pol.old")).unwrap();
        assert!(told_now(&watch), "the link's target renamed away");
        assert!(counted(&mut watch), "the folder gone");
        std::fs::rename(srv.join("pol.new"), srv.join("pol")).unwrap();
        assert!(
            told_now(&watch),
            "another renamed into its place, told while the link led to nothing"
        );
        assert!(counted(&mut watch), "another folder in its place");
        std::fs::write(dir.join("20.policy"), "y").unwrap();
        assert!(told_now(&watch), "the new folder is watched");
        assert!(counted(&mut watch));
    }

    /// A link on the way to a policy folder that leads to nothing (`/etc/feather` to a
    /// `/srv/feather` not made yet) is followed: the folder where its target would be made is
    /// watched, and told when it is. Before, the search stopped at the folder the link is in.
    #[test]
    fn a_link_to_nothing_on_the_way_to_a_policy_folder_is_followed() {
        let root_scratch = feather_testkit::ScratchDir::new("policy-watch-link-on-the-way");
        let root = root_scratch.0.clone();
        let (etc, srv) = (root.join("etc"), root.join("srv"));
        std::fs::create_dir(&etc).unwrap();
        std::fs::create_dir(&srv).unwrap();
        std::os::unix::fs::symlink(srv.join("feather"), etc.join("feather")).unwrap();
        let dir = etc.join("feather/policy.d");
        let real_root = std::fs::canonicalize(&root).unwrap();
        assert_eq!(real_above(&dir), Some(real_root.join("srv")));
        // Through a relative link to a link, too.
        std::os::unix::fs::symlink("feather", etc.join("feather.link")).unwrap();
        assert_eq!(
            real_above(&etc.join("feather.link/policy.d")),
            Some(real_root.join("srv"))
        );

        let mut watch = PolicyWatch::new(vec![dir.clone()]);
        watch.start();
        assert!(!counted(&mut watch), "nothing yet");
        std::fs::create_dir(srv.join("feather")).unwrap();
        assert!(
            told_now(&watch),
            "the link's target made: told where it was made"
        );
        assert!(!counted(&mut watch), "no policy folder yet");
        assert_eq!(real_above(&dir), Some(real_root.join("srv/feather")));
        std::fs::create_dir(srv.join("feather/policy.d")).unwrap();
        assert!(
            told_now(&watch),
            "the policy folder made, told in the target"
        );
        std::fs::write(dir.join("10.policy"), "x").unwrap();
        assert!(counted(&mut watch));
    }

    /// A thread that could not have its signalfd (its descriptor limit, say) asks again at
    /// each look, and is told from then on.
    #[test]
    fn the_signalfd_refused_once_is_asked_for_again_at_the_next_look() {
        static REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let root_scratch = feather_testkit::ScratchDir::new("policy-watch-signalfd-again");
        let root = root_scratch.0.clone();
        let dir = root.join("policy.d");
        std::fs::create_dir(&dir).unwrap();
        let mut watch = PolicyWatch::new(vec![dir.clone()]);
        watch.signals_here = || {
            if REFUSED.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return Signals::here();
            }
            Err(feather_sys::SysError {
                op: "signalfd",
                target: "SIGURG".into(),
                errno: nix::errno::Errno::EMFILE,
            })
        };
        watch.start();
        assert!(watch.looking().is_some(), "refused: looking");
        assert!(watch.fd().is_none());
        assert!(!look_now(&mut watch));
        assert!(watch.fd().is_some(), "asked again at the look");
        assert!(watch.looking().is_none(), "{:?}", watch.looking());
        std::fs::write(dir.join("10.policy"), "x").unwrap();
        assert!(told_now(&watch), "and told");
    }

    /// A folder gone between the look for it and its watch (ENOENT): what is watched may not
    /// tell of the next change, so a look (and another try at the watch) is due shortly, even
    /// where the look finds nothing new.
    #[test]
    fn a_folder_gone_while_being_watched_is_watched_again_at_a_look_soon() {
        static GONE_NEXT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let root_scratch = feather_testkit::ScratchDir::new("policy-watch-gone-while-watched");
        let root = root_scratch.0.clone();
        let (above, dir) = (root.join("a/b"), root.join("a/b/policy.d"));
        std::fs::create_dir(root.join("a")).unwrap();
        let mut watch = PolicyWatch::new(vec![dir.clone()]);
        watch.watch_folder = |signals, folder, changes| {
            if GONE_NEXT.swap(false, std::sync::atomic::Ordering::SeqCst) {
                return Err(feather_sys::SysError {
                    op: "open",
                    target: folder.display().to_string(),
                    errno: nix::errno::Errno::ENOENT,
                });
            }
            signals.watch(folder, changes)
        };
        watch.start();
        assert!(!counted(&mut watch), "nothing yet");
        std::fs::create_dir(&above).unwrap();
        assert!(told_now(&watch), "the folder above made");
        GONE_NEXT.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(!watch.changed(), "no policy folder yet: nothing new");
        assert!(
            watch.timeout() != PollTimeout::NONE,
            "its watch failed: a look is due to watch again"
        );
        assert!(!look_now(&mut watch));
        assert_eq!(watch.timeout(), PollTimeout::NONE, "watched: none is due");
        std::fs::create_dir(&dir).unwrap();
        assert!(told_now(&watch), "the policy folder made, told through it");
        assert!(counted(&mut watch));
    }

    /// How many inotify instances this process holds.
    fn inotify_instances() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| target.as_os_str() == "anon_inode:inotify")
            })
            .count()
    }
}
