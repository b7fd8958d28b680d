//! The mount tree a restored tree came back with, checked while CRIU leaves it stopped: CRIU
//! mounts what the images say (proc, sysfs, cgroup2 anew, with the flags an entry holds, and
//! only the binds the images list), so a checkpoint the host did not take can leave out the
//! read-only binds over the kernel's knobs, a mask, or `/sys`'s read-only flag. Without a user
//! namespace of its own (Docker's default config, every VM) the tree's root is the host's: a
//! writable `/proc/sys/kernel/core_pattern` or `/sys/kernel/uevent_helper` has the host run a
//! program of its choosing as root. What the tree must have is the caller's, derived from what
//! its create or start makes ([`Expected`]); each mount namespace of the tree is read from one
//! of its threads: `/proc/PID/task/TID/mountinfo`, and each path looked up from that thread's
//! root ([`check_tree`]).

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use feather_sys::mountinfo::MountEntry;
use nix::fcntl::OFlag;

/// A path that must be read-only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOnly {
    pub path: PathBuf,
    /// With every mount beneath it (a read-only bind made recursively).
    pub recursive: bool,
}

/// What the caller's create or start gives every mount tree of its kind.
#[derive(Clone, Debug, Default)]
pub struct Expected {
    /// Read-only, or masked. A path below `/proc` (`/sys`) is a knob of that filesystem:
    /// required below every proc (sysfs) mount of the tree.
    pub read_only: Vec<ReadOnly>,
    /// Covered by `/dev/null` (character device 1:3) or, a folder, by an empty read-only
    /// tmpfs; below every proc or sysfs mount as above.
    pub masked: Vec<PathBuf>,
    /// Whether a sysfs mount may be writable (else each is read-only).
    pub sysfs_writable: bool,
    /// The cgroup folders the tree's own (as mountinfo's `root` field shows them to the
    /// host's cgroup namespace): a `cgroup` or `cgroup2` mount rooted elsewhere must be
    /// read-only.
    pub cgroup_roots: Vec<PathBuf>,
    /// What existed before CRIU ran and what of it the restore exposes: every mount must be
    /// accounted for by it ([`crate::restored_sources`]).
    pub before: Option<crate::restored_sources::Before>,
    /// The files the restorer handed CRIU to give the tree (`inherit_fd`: a container's
    /// standard input, output and error), by `(st_dev, st_ino)`: of the files on a mount no
    /// namespace of the tree has, these alone pass ([`crate::restored_descriptors`]).
    pub handed: Vec<(u64, u64)>,
}

pub use crate::restored_descriptors::handed_files;
pub use crate::restored_paths::Found;
use crate::restored_paths::{look_up, read_in_proc, unentered};
use crate::restored_reach::Namespace;

/// What a refusal of a kernel knob (a read-only path, a mask, a sysfs or cgroup mount's
/// flags) adds: its two likely causes, and what to do for each (review m26 M8: every refusal
/// said "a checkpoint altered", also where the host differs).
pub const KNOB_CAUSES: &str = "either the checkpoint was taken under another kernel or \
    config (a kernel path absent at the dump and present here, other read-only or masked \
    paths): restore it with the config it was taken with, on a like kernel, or start anew; or \
    it was altered to leave the kernel's knobs writable: restore only checkpoints this host or \
    a trusted one took";

/// What a refusal of a mount the restore cannot account for ([`crate::restored_sources`])
/// adds: its two likely causes, and what to do for each.
pub const SOURCE_CAUSES: &str = "a mount the restore cannot account for: either a host mount \
    changed while the restore ran (restore again only if you changed that host mount \
    yourself: a checkpoint can be made to pass only by a race, which retries help), or the checkpoint was altered to bind or \
    mount a host filesystem in the tree: restore only checkpoints this host or a trusted one \
    took";

/// Judges one mount tree: `mounts`, its mountinfo; `look`, what is at a path. The refusal
/// names the path, what is wrong with it and its likely causes ([`KNOB_CAUSES`],
/// [`SOURCE_CAUSES`]).
pub fn judge(mounts: &[MountEntry], expected: &Expected, look: &mut LookUp) -> Result<(), String> {
    let knob = |why: String| format!("{why}; {KNOB_CAUSES}");
    for mount in mounts {
        if let Some(before) = &expected.before {
            crate::restored_sources::account(mount, before)
                .map_err(|why| format!("{why}; {SOURCE_CAUSES}"))?;
        }
        judge_filesystem(mount, expected).map_err(knob)?;
    }
    for read_only in &expected.read_only {
        for path in kernel_places(mounts, &read_only.path) {
            if let Some(why) = judge_read_only(mounts, &path, read_only.recursive, look)? {
                return Err(knob(why));
            }
        }
    }
    for masked in &expected.masked {
        for path in kernel_places(mounts, masked) {
            if let found @ (Found::Link | Found::At { .. }) = look(&path)? {
                if !is_mask(mounts, &found) {
                    return Err(knob(format!(
                        "{} is not masked (neither /dev/null nor an empty read-only tmpfs \
                         covers it)",
                        path.display()
                    )));
                }
            }
        }
    }
    Ok(())
}

/// A sysfs mount's and a cgroup mount's own flags.
fn judge_filesystem(mount: &MountEntry, expected: &Expected) -> Result<(), String> {
    let point = mount.mount_point.display();
    if mount.fs_type == "sysfs" && !expected.sysfs_writable && !mount.is_read_only() {
        return Err(format!(
            "the sysfs at {point} is writable (mount options {}), where it is read-only",
            mount.options
        ));
    }
    let cgroup = mount.fs_type == "cgroup" || mount.fs_type == "cgroup2";
    let own = expected
        .cgroup_roots
        .iter()
        .any(|root| mount.root.starts_with(root));
    if cgroup && !own && !mount.is_read_only() {
        return Err(format!(
            "the {} at {point} is writable and shows the cgroup folder {}, which is not the \
             tree's own",
            mount.fs_type,
            mount.root.display()
        ));
    }
    Ok(())
}

/// `path` itself, and, below `/proc` (`/sys`), the same file of every proc (sysfs) mount of
/// the tree: a whole one's, a bind's that shows it, or where a bind shows a part of it.
fn kernel_places(mounts: &[MountEntry], path: &Path) -> Vec<PathBuf> {
    let mut places = vec![path.to_path_buf()];
    let kinds = [("/proc", "proc"), ("/sys", "sysfs")];
    for (top, fs_type) in kinds {
        let Ok(rest) = path.strip_prefix(top) else {
            continue;
        };
        for mount in mounts.iter().filter(|m| m.fs_type == fs_type) {
            let shown = mount.root.strip_prefix("/").unwrap_or(&mount.root);
            let place = match rest.strip_prefix(shown) {
                Ok(below) if below.as_os_str().is_empty() => mount.mount_point.clone(),
                Ok(below) => mount.mount_point.join(below),
                Err(_) if shown.starts_with(rest) => mount.mount_point.clone(),
                Err(_) => continue,
            };
            if !places.contains(&place) {
                places.push(place);
            }
        }
    }
    places
}

/// `path` (and with `recursive` each mount below it) read-only or a mask: why not, if not (an
/// error: what could not be looked at).
fn judge_read_only(
    mounts: &[MountEntry],
    path: &Path,
    recursive: bool,
    look: &mut LookUp,
) -> Result<Option<String>, String> {
    let mut places = vec![path.to_path_buf()];
    if recursive {
        let below = mounts
            .iter()
            .map(|m| &m.mount_point)
            .filter(|point| point.starts_with(path) && point.as_path() != path);
        places.extend(below.cloned());
    }
    for place in places {
        let found = look(&place)?;
        let writable = match &found {
            Found::Missing => false,
            Found::Link => true,
            Found::At { mount, .. } => {
                !is_mask(mounts, &found)
                    && !mount_of(mounts, *mount).is_some_and(|m| m.is_read_only())
            }
        };
        if writable {
            let under = match place == path {
                true => String::new(),
                false => format!(" (below {})", path.display()),
            };
            return Ok(Some(format!(
                "{}{under} is writable{}, where it is read-only",
                place.display(),
                match found {
                    Found::Link => " or reached through a link",
                    _ => "",
                },
            )));
        }
    }
    Ok(None)
}

/// Whether `found` is what a mask leaves at a path: `/dev/null`, or an empty folder on a
/// read-only tmpfs.
fn is_mask(mounts: &[MountEntry], found: &Found) -> bool {
    let Found::At {
        mount,
        null,
        empty_folder,
    } = found
    else {
        return false;
    };
    let empty_tmpfs =
        || mount_of(mounts, *mount).is_some_and(|m| m.fs_type == "tmpfs" && m.is_read_only());
    *null || (*empty_folder && empty_tmpfs())
}

/// Whether `found` is on a mount the lookups do not enter ([`crate::restored_paths`]).
fn on_unentered_mount(mounts: &[MountEntry], found: &Found) -> bool {
    matches!(found, Found::At { mount, .. } if unentered(mounts, *mount).is_some())
}

fn mount_of(mounts: &[MountEntry], id: u64) -> Option<&MountEntry> {
    mounts.iter().find(|m| m.id == id)
}

/// Checks the mount tree of every mount namespace the threads of the tree under
/// `init` (a host pid, held still in `hold`'s frozen group) are in; the refusal names the
/// path, the namespace and a pid.
/// Then what every thread holds (descriptors, working folder, root, mapped files) is checked
/// against the places these namespaces cover ([`crate::restored_descriptors`]): a mask or a
/// read-only bind added after CRIU opened them, or one an image stacked over a mount it
/// names, covers nothing a descriptor holds beneath it.
pub fn check_tree(init: i32, hold: &crate::held::Hold, expected: &Expected) -> Result<(), String> {
    let mut seen = Vec::new();
    crate::restored::walk_tree(
        init,
        hold,
        |thread| check_namespace_of(&thread, &mut seen, expected),
        |unchecked| unchecked.to_string(),
    )?;
    let namespaces: Vec<Namespace> = seen.into_iter().map(|(_, covered)| covered).collect();
    crate::restored_descriptors::check(init, hold, &namespaces, &expected.handed)
        .map_err(|refusal| refusal.with_causes(KNOB_CAUSES))
}

/// The places of `mounts` the check requires covered ([`kernel_places`]), for the check of
/// what the tree's threads hold.
fn covered(mounts: Vec<MountEntry>, expected: &Expected) -> Namespace {
    let places = |paths: Vec<&PathBuf>| -> Vec<PathBuf> {
        let places = paths
            .into_iter()
            .flat_map(|path| kernel_places(&mounts, path));
        places.collect()
    };
    let masked = places(expected.masked.iter().collect());
    let recursive = |want: bool| {
        let paths = expected
            .read_only
            .iter()
            .filter(move |r| r.recursive == want);
        places(paths.map(|r| &r.path).collect())
    };
    let (read_only, read_only_alone) = (recursive(true), recursive(false));
    Namespace {
        mounts,
        masked,
        read_only,
        read_only_alone,
    }
}

/// Checks the mount namespace of `thread` unless one of `seen` (read whole from the
/// namespace's root: the same for every thread in it, whatever its own root); each seen with
/// its table and covered places.
fn check_namespace_of(
    thread: &crate::restored::Thread,
    seen: &mut Vec<(PathBuf, Namespace)>,
    expected: &Expected,
) -> Result<(), String> {
    let namespace = match crate::restored::namespace(thread.path, "mnt") {
        Ok(namespace) => namespace,
        // A zombie has no namespace left, and runs nothing again; only a thread the kernel
        // says is one (`State:` Z or X) or gone is passed over (review m26 M6, mntcheck26
        // MC-7: any unreadable namespace was, its mounts never read).
        Err(_) if crate::held::has_ended(thread.path) => return Ok(()),
        Err(e) => {
            return Err(format!(
                "cannot read the mount namespace of process {} (thread {}) to check its \
                 mounts: {e}; it is no zombie, whose namespace alone may be passed over",
                thread.pid,
                crate::restored::thread_id(thread.path)
            ))
        }
    };
    if seen.iter().any(|(known, _)| known == &namespace) {
        return Ok(());
    }
    let mounts = check_thread_view(thread.path, expected).map_err(|why| {
        let command = fs::read_to_string(format!("/proc/{}/comm", thread.pid)).unwrap_or_default();
        format!(
            "in the mount namespace {} of process {} ({:?}): {why}",
            namespace.display(),
            thread.pid,
            command.trim_end_matches('\n')
        )
    })?;
    seen.push((namespace, covered(mounts, expected)));
    Ok(())
}

/// One mount namespace of the tree judged whole: a thread of this process with its own root
/// and cwd (`unshare(CLONE_FS)`) joins it (`setns` makes the namespace's root its root), reads
/// its own mountinfo through the host's proc and looks each path up from that root. Not a
/// tree thread's own view: `task/TID/mountinfo` lists only what lies beneath that thread's
/// root, and a task CRIU chrooted into a folder (its root and cwd are the images',
/// `fs-N.img`) would hide a writable proc outside it that its cwd or a descriptor still
/// reaches (review mntcheck26 MC-1).
fn check_thread_view(thread: &Path, expected: &Expected) -> Result<Vec<MountEntry>, String> {
    let ns_path = thread.join("ns/mnt");
    let namespace =
        fs::File::open(&ns_path).map_err(|e| format!("cannot open {}: {e}", ns_path.display()))?;
    let proc = nix::fcntl::open(
        "/proc",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("cannot open /proc: {e}"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| judge_namespace(&namespace, &proc, expected))
            .join()
            .unwrap_or_else(|_| Err("the thread judging the mount namespace panicked".into()))
    })
}

/// In a thread of its own, ended after: joins `namespace`, reads its mountinfo through
/// `proc` (the host's), judges it with paths looked up from the namespace's root; the table.
fn judge_namespace(
    namespace: &fs::File,
    proc: &OwnedFd,
    expected: &Expected,
) -> Result<Vec<MountEntry>, String> {
    let (mounts, root) = join_namespace(namespace, proc)?;
    refuse_stacked_root(&mounts)?;
    judge(&mounts, expected, &mut |path| {
        look_up(proc, &root, &mounts, path)
    })?;
    Ok(mounts)
}

/// Refuses a mount at `/` whose parent is another mount of the namespace: a mount stacked on
/// its root, which paths looked up from the namespace's root (the bottom) never meet. The
/// kernel's view, whatever the images spelled (review rest28 N6: `/.` in an image).
fn refuse_stacked_root(mounts: &[MountEntry]) -> Result<(), String> {
    let stacked = mounts.iter().find(|m| {
        m.mount_point == Path::new("/")
            && m.parent != m.id
            && mounts.iter().any(|p| p.id == m.parent)
    });
    match stacked {
        Some(m) => Err(format!(
            "the mount at / is {} {} (device {}), mounted over the namespace's root (its \
             parent, mount {}, is a mount of the namespace), which no dump holds",
            m.fs_type, m.source, m.device, m.parent
        )),
        None => Ok(()),
    }
}

/// In the calling thread, which must be one of its own, ended after: a root and cwd of the
/// thread's own, then `namespace` joined; its mountinfo (read through `proc`, the host's) and
/// its root.
fn join_namespace(
    namespace: &fs::File,
    proc: &OwnedFd,
) -> Result<(Vec<MountEntry>, OwnedFd), String> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
        .map_err(|e| format!("cannot take a root of the thread's own: {e}"))?;
    nix::sched::setns(namespace, nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("cannot join the mount namespace: {e}"))?;
    let text = read_in_proc(proc, "thread-self/mountinfo")?;
    let root = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("cannot open the namespace's root: {e}"))?;
    Ok((feather_sys::mountinfo::parse(text), root))
}

/// The places the check requires masked ([`judge`]: each of `masked` beneath every proc and
/// sysfs mount, as the namespace's root shows them) that the mount namespace `namespace`
/// (`/proc/PID/ns/mnt`) has and no mask covers yet, each from that root: what a restorer
/// masks before the check when a dump lacked a mask (review r27 R7: taken from one process's
/// view, a chrooted unit's own proc or a second proc mount went unmasked, and the restore was
/// refused). Looked up as the check looks them up, in a thread of this process that joins the
/// namespace. A place whose mask would lie on a mount of one of the peer groups `kept_off`
/// (`shared:N`) is left out: a mask mounted there would propagate to its peers, which may be
/// the host's (the check then refuses it unmasked).
pub fn unmasked_places(
    namespace: &fs::File,
    masked: &[PathBuf],
    kept_off: &[String],
) -> Result<Vec<PathBuf>, String> {
    let places = places_lacking(namespace, masked, kept_off, &|mounts, _, found, _| {
        let shown = matches!(found, Found::Link | Found::At { .. });
        // A mask's mount would look at the place (its `fstat`) there: left to the check,
        // which refuses it unmasked without entering it (review rest28 N8).
        Ok(shown && !is_mask(mounts, found) && !on_unentered_mount(mounts, found))
    })?;
    refuse_masking_late(&places)?;
    Ok(places)
}

/// Files whose open is judged by the opener's credentials alone: a descriptor of one that
/// CRIU opened, as host root, before a mask is placed keeps what it grants, whatever the mask
/// and the restored credentials (`/proc/kcore`: every page of kernel memory, checked against
/// `CAP_SYS_RAWIO` at open only; review fixes29 N1). A dump that lacks their mask is refused,
/// never masked after CRIU ran.
const GRANTED_AT_OPEN: &[&str] = &["kcore"];

fn refuse_masking_late(places: &[PathBuf]) -> Result<(), String> {
    match places
        .iter()
        .find(|place| GRANTED_AT_OPEN.iter().any(|name| place.ends_with(name)))
    {
        Some(place) => Err(format!(
            "the checkpoint's images leave {} unmasked: a descriptor CRIU opened there before a \
             mask would still read kernel memory; checkpoint it again with the mask in place",
            place.display()
        )),
        None => Ok(()),
    }
}

/// What is at a path of the namespace ([`look_up`] on its root and table).
type LookUp<'a> = dyn FnMut(&Path) -> Result<Found, String> + 'a;

/// What a place is judged by in [`places_lacking`]: the namespace's mounts, the place, what
/// its lookup found (looked up once, review restore30 L7), and what is at a path of it;
/// whether it lacks what the check requires.
type Lacks = dyn Fn(&[MountEntry], &Path, &Found, &mut LookUp) -> Result<bool, String> + Sync;

/// Each place of `paths` (beneath every proc and sysfs mount of the namespace `namespace`, as
/// [`kernel_places`] gives them) that `lacks` says lacks what the check requires, once, but
/// those whose new mount would lie on a mount of a peer group of `kept_off`; looked up in a
/// thread of this process that joins the namespace.
fn places_lacking(
    namespace: &fs::File,
    paths: &[PathBuf],
    kept_off: &[String],
    lacks: &Lacks,
) -> Result<Vec<PathBuf>, String> {
    let proc = nix::fcntl::open(
        "/proc",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("cannot open /proc: {e}"))?;
    let lacking = || {
        let (mounts, root) = join_namespace(namespace, &proc)?;
        let mut look = |path: &Path| look_up(&proc, &root, &mounts, path);
        let mut places = Vec::new();
        for path in paths.iter().flat_map(|path| kernel_places(&mounts, path)) {
            if places.contains(&path) {
                continue;
            }
            let found = look(&path)?;
            let kept = peer_group_of(&mounts, &found).is_some_and(|g| kept_off.contains(g));
            if !kept && lacks(&mounts, &path, &found, &mut look)? {
                places.push(path);
            }
        }
        Ok(places)
    };
    std::thread::scope(|scope| {
        scope
            .spawn(lacking)
            .join()
            .unwrap_or_else(|_| Err("the thread looking for kernel paths panicked".into()))
    })
}

/// The peer group (`shared:N`) of the mount a new mount at a path would lie on, if it is
/// shared: what is mounted on it propagates to its peers. That mount is the one the path's
/// lookup `found` it on: the top of the stack mounted at the path itself, if any (a mask at a
/// mount point lies on the mount there, not on the one below it: review rest28 N7), by its id
/// (review rest29 L2: by the longest mount point, a string two mounts may share, a hidden one
/// or one of another parent could be judged instead). None for a path not found on a mount.
fn peer_group_of<'a>(mounts: &'a [MountEntry], found: &Found) -> Option<&'a String> {
    let Found::At { mount, .. } = found else {
        return None;
    };
    let on = mount_of(mounts, *mount)?;
    on.optional.iter().find(|f| f.starts_with("shared:"))
}

/// The cgroup folder `host_path` (a folder of a cgroup hierarchy the host mounted) as a
/// mountinfo `root` field shows it: [`Expected::cgroup_roots`].
pub fn cgroup_root(host_path: &Path) -> Option<PathBuf> {
    let mounts = feather_sys::mountinfo::mounts().ok()?;
    cgroup_root_in(&mounts, host_path)
}

fn cgroup_root_in(mounts: &[MountEntry], host_path: &Path) -> Option<PathBuf> {
    mounts
        .iter()
        .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2")
        .filter_map(|m| Some((m, host_path.strip_prefix(&m.mount_point).ok()?)))
        .max_by_key(|(m, _)| m.mount_point.components().count())
        .map(|(m, rest)| m.root.join(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mountinfo of a container as feather-oci creates it with Docker's config: /proc
    /// with its knobs read-only and kcore masked, /sys read-only, its cgroup bound read-only.
    const CREATED: &str = "\
        100 99 0:50 / / rw,relatime - overlay overlay rw\n\
        101 100 0:51 / /proc rw,nosuid,nodev,noexec - proc proc rw\n\
        102 101 0:51 /sys /proc/sys ro,nosuid,nodev,noexec - proc proc rw\n\
        103 101 0:51 /sysrq-trigger /proc/sysrq-trigger ro,nosuid,nodev,noexec - proc proc rw\n\
        104 101 0:5 /null /proc/kcore rw,nosuid - devtmpfs udev rw\n\
        105 100 0:52 / /sys ro,nosuid,nodev,noexec - sysfs sysfs rw\n\
        106 105 0:53 / /sys/firmware ro,nosuid,nodev,noexec - tmpfs tmpfs ro\n\
        107 105 0:30 /feather/c1 /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw\n";

    fn docker() -> Expected {
        let knob = |path: &str| ReadOnly {
            path: path.into(),
            recursive: true,
        };
        Expected {
            read_only: vec![knob("/proc/sys"), knob("/proc/sysrq-trigger")],
            masked: vec!["/proc/kcore".into(), "/sys/firmware".into()],
            sysfs_writable: false,
            cgroup_roots: vec!["/feather/c1".into()],
            before: None,
            handed: Vec::new(),
        }
    }

    /// What a look-up finds at each path: the mount at the longest mount point above it;
    /// `/dev/null` where a devtmpfs's `/null` is mounted, an empty folder on a tmpfs.
    fn looker(mounts: &[MountEntry]) -> impl FnMut(&Path) -> Result<Found, String> + '_ {
        |path: &Path| {
            let mount = mounts
                .iter()
                .filter(|m| path.starts_with(&m.mount_point))
                .max_by_key(|m| m.mount_point.components().count())
                .expect("the root covers every path");
            Ok(Found::At {
                mount: mount.id,
                null: mount.root == Path::new("/null"),
                empty_folder: mount.fs_type == "tmpfs",
            })
        }
    }

    fn judged(text: &str, expected: &Expected) -> Result<(), String> {
        let mounts = feather_sys::mountinfo::parse(text);
        let mut look = looker(&mounts);
        judge(&mounts, expected, &mut look)
    }

    fn without(line: &str) -> String {
        CREATED
            .lines()
            .filter(|l| !l.starts_with(line))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// A thread whose mount namespace cannot be read is refused unless its status says it is
    /// a zombie: before, any such thread was passed over, its mounts never read.
    #[test]
    fn only_a_zombie_s_unreadable_namespace_is_passed_over() {
        let scratch = feather_testkit::ScratchDir::new("ns");
        let thread = scratch.0.join("thread");
        fs::create_dir(&thread).unwrap();
        let checked = |state: &str| {
            fs::write(
                thread.join("status"),
                format!("Name:\tx\nState:\t{state}\n"),
            )
            .unwrap();
            let visited = crate::restored::Thread {
                pid: 7,
                path: &thread,
                init: true,
                child_of_init: false,
            };
            check_namespace_of(&visited, &mut Vec::new(), &docker())
        };
        let sleeping = checked("S (sleeping)");
        let zombie = checked("Z (zombie)");
        let why = sleeping.unwrap_err();
        assert!(
            why.contains("cannot read the mount namespace of process 7"),
            "{why}"
        );
        zombie.unwrap();
    }

    /// A mount over the namespace's root is refused; the root alone passes (review rest28
    /// N6).
    #[test]
    fn a_mount_stacked_on_the_namespaces_root_is_refused() {
        let created = feather_sys::mountinfo::parse(CREATED);
        assert_eq!(refuse_stacked_root(&created), Ok(()));
        let stacked = format!("{CREATED}110 100 0:60 / / rw - proc proc rw\n");
        let refusal = refuse_stacked_root(&feather_sys::mountinfo::parse(&stacked)).unwrap_err();
        assert!(refusal.contains("over the namespace's root"), "{refusal}");
    }

    #[test]
    fn the_tree_create_makes_passes() {
        assert_eq!(judged(CREATED, &docker()), Ok(()));
    }

    /// A refusal says its two likely causes, by kind: a knob's, a checkpoint of another kernel
    /// or config or one altered; a mount not accounted for, a host mount that changed during
    /// the restore or a checkpoint altered to bind a host filesystem. Before, the callers
    /// called every refusal "a checkpoint altered to leave the kernel's knobs writable".
    #[test]
    fn a_refusal_names_its_likely_causes_by_kind() {
        let knob = judged(&without("102 "), &docker()).unwrap_err();
        assert!(
            knob.contains("taken under another kernel or config")
                && knob.contains("altered to leave the kernel's knobs writable")
                && !knob.contains("account for"),
            "{knob}"
        );
        let host = feather_sys::mountinfo::parse("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n");
        let expected = Expected {
            before: Some(crate::restored_sources::Before::of(
                &crate::restored_sources::Tables {
                    where_criu_ran: host.clone(),
                    restorers: host,
                    ..Default::default()
                },
                &[],
                false,
            )),
            ..docker()
        };
        let bound = format!("{CREATED}108 100 8:1 /etc /mnt rw - ext4 /dev/sda1 rw\n");
        let source = judged(&bound, &expected).unwrap_err();
        assert!(
            source.contains("a mount the restore cannot account for")
                && source.contains("a host mount changed while the restore ran")
                && !source.contains("knobs"),
            "{source}"
        );
    }

    #[test]
    fn a_knob_left_writable_is_refused_naming_it() {
        let refusal = judged(&without("102 "), &docker()).unwrap_err();
        assert!(refusal.contains("/proc/sys is writable"), "{refusal}");
        let rw = CREATED.replace("/proc/sysrq-trigger ro,", "/proc/sysrq-trigger rw,");
        let refusal = judged(&rw, &docker()).unwrap_err();
        assert!(
            refusal.contains("/proc/sysrq-trigger is writable"),
            "{refusal}"
        );
    }

    #[test]
    fn a_writable_mount_below_a_recursive_read_only_path_is_refused() {
        let below =
            format!("{CREATED}108 102 0:54 / /proc/sys/fs/binfmt_misc rw - binfmt_misc x rw\n");
        let refusal = judged(&below, &docker()).unwrap_err();
        assert!(
            refusal.contains("/proc/sys/fs/binfmt_misc (below /proc/sys) is writable"),
            "{refusal}"
        );
    }

    #[test]
    fn a_second_proc_needs_its_knobs_read_only_too() {
        let second = format!("{CREATED}108 100 0:55 / /mnt/proc rw - proc proc rw\n");
        let refusal = judged(&second, &docker()).unwrap_err();
        assert!(refusal.contains("/mnt/proc/sys is writable"), "{refusal}");
        let part = format!("{CREATED}108 100 0:51 /sys/kernel /mnt/k rw - proc proc rw\n");
        let refusal = judged(&part, &docker()).unwrap_err();
        assert!(refusal.contains("/mnt/k is writable"), "{refusal}");
    }

    #[test]
    fn a_mask_left_out_or_writable_is_refused() {
        let refusal = judged(&without("104 "), &docker()).unwrap_err();
        assert!(refusal.contains("/proc/kcore is not masked"), "{refusal}");
        let rw = CREATED
            .replace("tmpfs tmpfs ro", "tmpfs tmpfs rw")
            .replace("/sys/firmware ro,", "/sys/firmware rw,");
        let refusal = judged(&rw, &docker()).unwrap_err();
        assert!(refusal.contains("/sys/firmware is not masked"), "{refusal}");
    }

    #[test]
    fn a_writable_sysfs_is_refused_unless_allowed() {
        let rw = CREATED.replace(" /sys ro,", " /sys rw,");
        let refusal = judged(&rw, &docker()).unwrap_err();
        assert!(
            refusal.contains("the sysfs at /sys is writable"),
            "{refusal}"
        );
        let allowed = Expected {
            sysfs_writable: true,
            ..docker()
        };
        assert_eq!(judged(&rw, &allowed), Ok(()));
    }

    #[test]
    fn a_writable_cgroup_mount_must_show_the_trees_own_group() {
        let own = CREATED.replace("/sys/fs/cgroup ro,", "/sys/fs/cgroup rw,");
        assert_eq!(judged(&own, &docker()), Ok(()));
        let host = own.replace("/feather/c1 /sys/fs/cgroup", "/ /sys/fs/cgroup");
        let refusal = judged(&host, &docker()).unwrap_err();
        assert!(
            refusal.contains(
                "the cgroup2 at /sys/fs/cgroup is writable and shows the cgroup folder /,"
            ),
            "{refusal}"
        );
    }

    #[test]
    fn a_path_reached_through_a_link_is_refused_and_a_missing_one_passes() {
        let mounts = feather_sys::mountinfo::parse(CREATED);
        let mut link = |_: &Path| Ok(Found::Link);
        let refusal = judge(&mounts, &docker(), &mut link).unwrap_err();
        assert!(refusal.contains("or reached through a link"), "{refusal}");
        let mut missing = |_: &Path| Ok(Found::Missing);
        assert_eq!(judge(&mounts, &docker(), &mut missing), Ok(()));
    }

    /// A process (busybox's `sleep`) in a mount namespace of its own (a copy of the host's),
    /// chrooted into a tmpfs with a proc of its own; `read_only` says which `/proc/sys` are
    /// bound read-only: `none`, `inner` (the chroot's only), `all` (the namespace's `/proc`'s
    /// too), `held` (as `all`, the namespace's bound after the sleep's descriptor 3 was opened
    /// on `/proc/interrupts` and 4 on the folder `/proc/sys/kernel`, as CRIU opens a restored
    /// task's before the restorer binds), `fuse` (as `all`, with two FUSE filesystems whose
    /// server never answers, as a
    /// frozen one's would not: at the chroot's `fuse` and, writable, at its
    /// `proc/sys/fs/binfmt_misc`; the sleep holds their `/dev/fuse` descriptors, and its end
    /// aborts them). Killed on drop.
    struct Chrooted {
        child: std::process::Child,
        /// Removed after the child ends (fields drop after [`Drop::drop`]).
        folder: feather_testkit::ScratchDir,
    }

    impl Chrooted {
        fn start(read_only: &str) -> Chrooted {
            let folder = feather_testkit::ScratchDir::new(&format!("restored-mounts-{read_only}"));
            let script = "set -e; R=$1; mount -t tmpfs t $R; mkdir $R/bin $R/proc; \
                 cp /usr/bin/busybox $R/bin/; mount -t proc proc $R/proc; \
                 ro() { mount --bind $1 $1; mount -o remount,bind,ro $1; }; \
                 if [ $2 != none ]; then ro $R/proc/sys; fi; \
                 if [ $2 = all ] || [ $2 = fuse ]; then ro /proc/sys; fi; \
                 if [ $2 = held ]; then exec 3</proc/interrupts 4</proc/sys/kernel; \
                     ro /proc/sys; fi; \
                 fuse() { mount -i -t fuse -o fd=$1,rootmode=40000,user_id=0,group_id=0 \
                     never $2; }; \
                 if [ $2 = fuse ]; then exec 3<>/dev/fuse 4<>/dev/fuse; mkdir $R/fuse; \
                     fuse 3 $R/fuse; fuse 4 $R/proc/sys/fs/binfmt_misc; fi; \
                 exec chroot $R /bin/busybox sleep 1000";
            let child = std::process::Command::new("unshare")
                .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
                .arg(&folder.0)
                .arg(read_only)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut chrooted = Chrooted { child, folder };
            let name = format!("/proc/{}/comm", chrooted.child.id());
            // Generous on a loaded host; a set-up that fails (a mount the kernel refuses:
            // FUSE or binfmt_misc not there) ends the script at once and says why.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while std::time::Instant::now() < deadline {
                if fs::read_to_string(&name).is_ok_and(|n| n == "busybox\n") {
                    return chrooted;
                }
                if let Some(status) = chrooted.child.try_wait().unwrap() {
                    let mut said = String::new();
                    let stderr = chrooted.child.stderr.as_mut().unwrap();
                    std::io::Read::read_to_string(stderr, &mut said).unwrap();
                    panic!("the chrooted sleep's set-up ({read_only}) failed, {status}: {said}");
                }
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            panic!("the chrooted sleep did not start in 60 s");
        }
    }

    impl Chrooted {
        /// Its pid, a group holding it frozen (`label`), and its mount namespace.
        fn frozen(&self, label: &str) -> (i32, crate::held::TestGroup, fs::File) {
            let pid = self.child.id() as i32;
            let held = crate::held::TestGroup::frozen(label, &[pid]).unwrap();
            let namespace = fs::File::open(format!("/proc/{pid}/ns/mnt")).unwrap();
            (pid, held, namespace)
        }
    }

    impl Drop for Chrooted {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// `/proc/sys` read-only with every mount below it, in a copy of the host's namespace (its
    /// sysfs and cgroup mounts are writable).
    /// [`check_tree`], the process's standard input, output and error (the test's) handed
    /// to it as a restore hands the tree its own.
    fn check_handing_stdio(
        pid: i32,
        hold: &crate::held::Hold,
        expected: &Expected,
    ) -> Result<(), String> {
        let handed = crate::restored_descriptors::stdio_of(pid);
        check_tree(
            pid,
            hold,
            &Expected {
                handed,
                ..expected.clone()
            },
        )
    }

    fn proc_sys_read_only() -> Expected {
        Expected {
            read_only: vec![ReadOnly {
                path: "/proc/sys".into(),
                recursive: true,
            }],
            sysfs_writable: true,
            cgroup_roots: vec!["/".into()],
            ..Expected::default()
        }
    }

    /// The real reading, of the whole namespace: a process whose own proc has `/proc/sys`
    /// writable is refused naming it and its mount namespace; so is one chrooted into a
    /// folder whose proc is read-only while the namespace's `/proc/sys` outside the chroot is
    /// writable (its cwd or a descriptor could reach it: review mntcheck26 MC-1 — read from
    /// the thread's own view it passed); with both read-only it passes (paths looked up from
    /// the namespace's root, not the reader's).
    #[test]
    fn a_real_trees_mounts_are_read_whole_from_its_namespace() {
        let without_masks = proc_sys_read_only();
        let expected = Expected {
            masked: vec!["/proc/interrupts".into()],
            ..without_masks.clone()
        };
        for writable in ["none", "inner"] {
            let chrooted = Chrooted::start(writable);
            let pid = chrooted.child.id() as i32;
            let label = format!("mounts-{writable}");
            let held = crate::held::TestGroup::frozen(&label, &[pid]).unwrap();
            let refusal = check_handing_stdio(pid, held.hold(), &without_masks).unwrap_err();
            assert!(
                refusal.contains(&format!("of process {pid} (\""))
                    && refusal.contains("\"): /proc/sys is writable"),
                "{writable}: {refusal}"
            );
        }
        let read_only = Chrooted::start("all");
        let pid = read_only.child.id() as i32;
        let held = crate::held::TestGroup::frozen("mounts-ro", &[pid]).unwrap();
        assert_eq!(
            check_handing_stdio(pid, held.hold(), &without_masks),
            Ok(())
        );
        let refusal = check_handing_stdio(pid, held.hold(), &expected).unwrap_err();
        assert!(
            refusal.contains("/proc/interrupts is not masked"),
            "{refusal}"
        );
    }

    /// A descriptor opened before the cover over its place reaches past it, and fails the
    /// check though every path passes (review rest29 H1, fixes29 N1): the folder
    /// `/proc/sys/kernel` held on the writable proc beneath a read-only bind of `/proc/sys`
    /// (`openat` from it writes `core_pattern`), `/proc/interrupts` held on the proc beneath
    /// its mask (it still reads). Each refusal names the process, the descriptor and the
    /// place.
    #[test]
    fn a_descriptor_opened_beneath_a_later_cover_is_refused() {
        let chrooted = Chrooted::start("held");
        let (pid, held, namespace) = chrooted.frozen("held");
        let read_only = proc_sys_read_only();
        let refusal = check_handing_stdio(pid, held.hold(), &read_only).unwrap_err();
        assert!(
            refusal.contains(&format!(
                "restored process {pid} (thread {pid}) holds descriptor 4 on /proc/sys/kernel"
            )) && refusal.contains("shows /proc/sys writable"),
            "{refusal}"
        );
        let masked = Expected {
            read_only: Vec::new(),
            masked: vec!["/proc/interrupts".into()],
            ..read_only
        };
        let places = unmasked_places(&namespace, &masked.masked, &[]).unwrap();
        let pidfd = feather_sys::process::pidfd_open(nix::unistd::Pid::from_raw(pid)).unwrap();
        feather_sys::process::mask_in_mount_namespace_of(&pidfd, &places).unwrap();
        let refusal = check_handing_stdio(pid, held.hold(), &masked).unwrap_err();
        assert!(
            refusal.contains("holds descriptor 3 on /proc/interrupts")
                && refusal.contains("shows /proc/interrupts unmasked"),
            "{refusal}"
        );
    }

    /// The check never waits on a filesystem a process answers (review rest28 N8: a frozen
    /// tree's FUSE server never does): a FUSE mount below `/proc/sys`, writable, is refused as
    /// writable by what the table says of it, and a read-only path beneath a FUSE mount is
    /// refused naming that mount, neither entered. Each check runs on a thread of its own,
    /// waited for 30 s at most: before, the first waited in `fstat`, the second in the
    /// lookup, for good (the sleep's end, the FUSE connection's abort, frees them).
    #[test]
    fn the_check_never_waits_on_a_fuse_filesystem() {
        let chrooted = Chrooted::start("fuse");
        let (pid, held, namespace) = chrooted.frozen("fuse");
        let nothing_else = Expected {
            sysfs_writable: true,
            cgroup_roots: vec!["/".into()],
            ..Expected::default()
        };
        let read_only = |path: PathBuf, recursive| Expected {
            read_only: vec![ReadOnly { path, recursive }],
            ..nothing_else.clone()
        };
        let checks = [
            read_only("/proc/sys".into(), true),
            read_only(chrooted.folder.0.join("fuse/etc"), false),
        ];
        let refusals = checks.map(|expected| {
            let hold = held.hold().clone();
            within_30_s(move || check_handing_stdio(pid, &hold, &expected)).unwrap_err()
        });
        let proc_sys = chrooted.folder.0.join("proc/sys");
        assert!(
            refusals[0].contains(&format!(
                "{}/fs/binfmt_misc (below {}) is writable",
                proc_sys.display(),
                proc_sys.display()
            )),
            "{}",
            refusals[0]
        );
        let fuse = chrooted.folder.0.join("fuse");
        assert!(
            refusals[1].contains(&format!(
                "lies beneath the fuse mount at {} (never)",
                fuse.display()
            )),
            "{}",
            refusals[1]
        );
        // A mask is not mounted there (its `fstat` would wait): the check refuses the place
        // unmasked.
        let masked = vec![proc_sys.join("fs/binfmt_misc")];
        let to_mask = masked.clone();
        let places = within_30_s(move || unmasked_places(&namespace, &to_mask, &[]));
        assert_eq!(places, Ok(Vec::new()));
        let hold = held.hold().clone();
        let unmasked = Expected {
            masked,
            ..nothing_else
        };
        let refusal = within_30_s(move || check_handing_stdio(pid, &hold, &unmasked)).unwrap_err();
        assert!(refusal.contains("binfmt_misc is not masked"), "{refusal}");
    }

    /// What `job` gives, on a thread of its own, waited for 30 s at most: a test's deadline
    /// for what must not wait on a FUSE server (the thread is left waiting otherwise).
    fn within_30_s<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> T {
        let (said, answer) = std::sync::mpsc::channel();
        std::thread::spawn(move || said.send(job()));
        answer
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("waited on the FUSE server")
    }

    /// A dump that lacks the mask over `/proc/kcore` is refused, not masked after CRIU ran:
    /// a descriptor CRIU opened there first would read kernel memory through the mask; every
    /// other place lacking its mask is masked. (Judged on the places [`unmasked_places`]
    /// found: this host's kernel has no `/proc/kcore`, CONFIG_PROC_KCORE being off.)
    #[test]
    fn an_unmasked_kcore_is_refused_not_masked() {
        let lacking = |paths: &[&str]| {
            refuse_masking_late(&paths.iter().map(PathBuf::from).collect::<Vec<_>>())
        };
        let refusal = lacking(&["/proc/interrupts", "/tmp/chroot/proc/kcore"]).unwrap_err();
        assert!(
            refusal.contains("/tmp/chroot/proc/kcore unmasked")
                && refusal.contains("kernel memory"),
            "{refusal}"
        );
        assert_eq!(lacking(&["/proc/interrupts", "/proc/keys"]), Ok(()));
    }

    /// The places to mask are every proc mount's of the namespace, from its root, a chrooted
    /// process's own proc too (review r27 R7: a process's view of fixed paths missed it); once
    /// masked there the check passes, and none is left.
    #[test]
    fn every_procs_unmasked_place_is_found_from_the_namespaces_root() {
        let chrooted = Chrooted::start("none");
        let (pid, held, namespace) = chrooted.frozen("unmasked");
        let masked = [PathBuf::from("/proc/interrupts")];
        let places = unmasked_places(&namespace, &masked, &[]).unwrap();
        assert_eq!(
            places,
            [masked[0].clone(), chrooted.folder.0.join("proc/interrupts")]
        );
        let pidfd = feather_sys::process::pidfd_open(nix::unistd::Pid::from_raw(pid)).unwrap();
        feather_sys::process::mask_in_mount_namespace_of(&pidfd, &places).unwrap();
        assert_eq!(
            unmasked_places(&namespace, &masked, &[]).unwrap(),
            Vec::<PathBuf>::new()
        );
        let expected = Expected {
            masked: masked.to_vec(),
            sysfs_writable: true,
            cgroup_roots: vec!["/".into()],
            ..Expected::default()
        };
        assert_eq!(check_handing_stdio(pid, held.hold(), &expected), Ok(()));
    }

    /// A place on a shared mount is told as such (feather-oci masks none there: the mask
    /// would reach the mount's peers), by the mount a mask there would lie on: the top one
    /// mounted at the place itself, if any, else the one it lies beneath. Before, a mount at
    /// the place was passed over for the one below it (review rest28 N7): `/proc/kcore` bound
    /// shared under a private `/proc` was told unshared, `/sys/firmware` private under a
    /// shared `/sys` shared.
    #[test]
    fn a_place_on_a_shared_mount_is_told() {
        let mounts = feather_sys::mountinfo::parse(
            "1 0 0:60 / / rw shared:1 - overlay o rw\n\
             2 1 0:70 / /proc rw - proc proc rw\n\
             3 1 0:71 / /sys ro shared:9 - sysfs sysfs ro\n\
             4 3 0:72 / /sys/firmware ro - tmpfs tmpfs ro\n\
             5 2 0:70 /kcore /proc/kcore rw shared:12 - proc proc rw\n\
             6 2 0:70 /acpi /proc/acpi rw shared:13 - proc proc rw\n\
             7 6 0:73 / /proc/acpi ro - tmpfs tmpfs ro\n",
        );
        fn group<'a>(mounts: &'a [MountEntry], path: &str) -> Option<&'a str> {
            let found = looker(mounts)(Path::new(path)).unwrap();
            peer_group_of(mounts, &found).map(String::as_str)
        }
        assert_eq!(group(&mounts, "/proc/interrupts"), None);
        assert_eq!(group(&mounts, "/proc/kcore"), Some("shared:12"));
        assert_eq!(group(&mounts, "/sys/firmware"), None);
        assert_eq!(group(&mounts, "/sys/firmware/efi"), None);
        assert_eq!(group(&mounts, "/sys/kernel"), Some("shared:9"));
        assert_eq!(group(&mounts, "/etc/x"), Some("shared:1"));
        // The mount the lookup found, by its id: not another at the same point (a hidden
        // one, or of another parent) the table lists first (review rest29 L2).
        let found = |mount| Found::At {
            mount,
            null: false,
            empty_folder: true,
        };
        assert_eq!(peer_group_of(&mounts, &found(7)), None);
        assert_eq!(
            peer_group_of(&mounts, &found(6)).map(String::as_str),
            Some("shared:13")
        );
        assert_eq!(peer_group_of(&mounts, &Found::Missing), None);
    }

    #[test]
    fn a_cgroup_folder_is_shown_relative_to_its_hierarchys_root() {
        let host = feather_sys::mountinfo::parse(
            "30 1 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n\
             31 1 0:31 /machines /srv/cg rw - cgroup2 cgroup2 rw\n",
        );
        let root = cgroup_root_in(&host, Path::new("/sys/fs/cgroup/feather/c1"));
        assert_eq!(root, Some(PathBuf::from("/feather/c1")));
        let root = cgroup_root_in(&host, Path::new("/srv/cg/vm"));
        assert_eq!(root, Some(PathBuf::from("/machines/vm")));
        assert_eq!(cgroup_root_in(&host, Path::new("/tmp")), None);
    }
}
