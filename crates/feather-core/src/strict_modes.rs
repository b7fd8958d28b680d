//! Whether a state root's folder is one only root can change, as sshd's StrictModes checks a
//! user's files: feather acts there as root, by path, between its checks and its uses, so a
//! local user who owns the root's folder (`sudo feather --root ~/vms …`) or any folder above
//! it, or can write to one, could swap `pool/`, `vms/` or a settings file for their own — a
//! link to `/etc/sudoers.d` for root to write into, a FIFO or `/dev/zero` for root to read,
//! a held lock — at any moment. The folders are looked at on the descriptors the kernel's own
//! lookup goes through ([`feather_sys::lookup`]), links included, never by a path looked up
//! again.

use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};

use feather_sys::fstab::UsersMountPoints;
use feather_sys::lookup::{Lookup, Step, UsersMount};

use crate::error::{Error, IoContext, Result, RootFault};

/// Anyone but the owner may write (`S_IWGRP | S_IWOTH`).
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// Entries of a folder with it may be renamed or removed only by their owner (`/tmp`).
const STICKY: u32 = 0o1000;

/// What feather makes in a state root and then acts on by path, as root: each must be root's
/// as the root's folder is, or its owner could swap what is in it.
const ROOTS_OWN: [&str; 6] = [
    "vms",
    "run",
    "pool",
    "policy.d",
    "network-leases",
    "network.toml",
];

/// As many folders as [`made_state_root`] makes, or finds made by someone else, for one root.
const MAX_MADE: usize = 256;

/// The mount points this host's `/etc/fstab` lets users mount on; refused while a line lets
/// them mount on a path that may lead anywhere: no folder can be told safe from such a mount,
/// so every state root is refused, a fault of the host's, not of any root's. A command that
/// goes through every registered root asks this once first and says it once.
pub fn users_mount_points() -> Result<UsersMountPoints> {
    let points = UsersMountPoints::of_this_host();
    match points.anywhere() {
        Some(anywhere) => Err(Error::UsersMayMountAnywhere {
            lines: anywhere.lines.join("; "),
            passing: anywhere.passing,
        }),
        None => Ok(points),
    }
}

/// Refuses the state root `dir` unless every folder and link its lookup goes through is
/// owned by root (or this process's user) and no one else can write to it (the sticky `/tmp`
/// aside: no one can move what root made in it), the root's own folder not even with the
/// sticky bit (its names are feather's), nor any of its entries feather makes ([`ROOTS_OWN`]),
/// and none is a mount point `/etc/fstab` lets users mount on; every root is refused while an
/// fstab line lets users mount on a path that may lead anywhere ([`users_mount_points`]).
/// A part not made yet is fine here; [`made_state_root`] makes it and looks again. The
/// lookup is handed back, the folder it ended in pinned.
pub fn check_state_root(dir: &Path) -> Result<Lookup> {
    check_walked(dir, feather_sys::lookup::walk(dir))
}

/// [`check_state_root`] of `walked`, a walk of `dir` taken a moment ago by the same command.
pub(crate) fn check_walked(dir: &Path, walked: std::io::Result<Lookup>) -> Result<Lookup> {
    let users_points = users_mount_points()?;
    let lookup = judged(dir, dir, walked)?;
    for step in &lookup.steps {
        if let Some(why) = untrusted(step, false, &users_points) {
            return Err(untrusted_root(dir, &step.path, why, RootFault::Above));
        }
    }
    if lookup.missing.is_none() {
        // The folder the walk ended in, not the last name it went through: `x/..` is `x`'s
        // folder above.
        let end = &lookup.end.step;
        if let Some(why) = untrusted(end, true, &users_points) {
            return Err(untrusted_root(dir, &end.path, why, RootFault::Own));
        }
        check_entries(dir, &lookup, &users_points)?;
    }
    Ok(lookup)
}

/// [`check_state_root`], with the missing part of the root made one folder at a time (0700)
/// in the folder the walk pinned, each walked and looked at again once made: a folder or
/// link someone else put there first is judged as any other, never followed by mkdir.
/// `walked`: a walk of `dir` the command took a moment ago (to tell whether `dir` is the
/// default root: [`crate::StateRoot::named`]), judged instead of a first walk of its own.
pub fn made_state_root(dir: &Path, walked: Option<std::io::Result<Lookup>>) -> Result<Lookup> {
    let mut walked = walked;
    for _ in 0..MAX_MADE {
        let walk = walked
            .take()
            .unwrap_or_else(|| feather_sys::lookup::walk(dir));
        let lookup = check_walked(dir, walk)?;
        let Some(missing) = &lookup.missing else {
            return Ok(lookup);
        };
        if missing
            .components()
            .any(|part| part == Component::ParentDir)
        {
            // `x/../y` with `x` missing would make a stray `x` beside the root.
            return Err(Error::InvalidValue {
                what: "state root",
                value: dir.display().to_string(),
                why: format!(
                    "`..` in {}, a part not made yet: name the root without `..`",
                    missing.display()
                ),
            });
        }
        let Some(Component::Normal(name)) = missing.components().next() else {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                source: ErrorKind::InvalidInput.into(),
            });
        };
        let name = Path::new(name);
        match feather_sys::lookup::make_folder(&lookup.end.pinned, name, 0o700) {
            Err(e) if e.kind() != ErrorKind::AlreadyExists => {
                return Err(e).at(lookup.end.step.path.join(name));
            }
            _ => {}
        }
    }
    Err(Error::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::other(format!("more than {MAX_MADE} folders to make")),
    })
}

/// Refuses the root's folder `opened` by path unless it is the one the check ended in
/// (`checked`, by device and inode): another put in its place since, or none at all, was
/// renamed there by someone who can rename in a folder above it.
pub fn same_root(dir: &Path, checked: &Lookup, opened: Option<&std::fs::File>) -> Result<()> {
    let end = &checked.end.step;
    let opened = opened.map(|file| file.metadata().at(dir)).transpose()?;
    if opened.is_some_and(|meta| meta.dev() == end.meta.dev() && meta.ino() == end.meta.ino()) {
        return Ok(());
    }
    let why = Untrusted::Modes("was replaced by another folder while feather looked at it".into());
    Err(untrusted_root(dir, &end.path, why, RootFault::Replaced))
}

/// Refuses an entry of the root feather makes ([`ROOTS_OWN`]) that is not root's, or that
/// others may write to: looked at in the pinned root folder, a link not followed.
fn check_entries(dir: &Path, lookup: &Lookup, users_points: &UsersMountPoints) -> Result<()> {
    let root = &lookup.end;
    for name in ROOTS_OWN {
        let entry = root.step.path.join(name);
        let step = judged(
            dir,
            &entry,
            feather_sys::lookup::look_at(root, Path::new(name)),
        )?;
        let Some(step) = step else { continue };
        if step.meta.file_type().is_symlink() {
            check_linked_entry(dir, &entry, users_points)?;
            continue;
        }
        if let Some(why) = untrusted(&step, true, users_points) {
            return Err(untrusted_root(dir, &entry, why, RootFault::Own));
        }
    }
    Ok(())
}

/// An entry that is a link (an admin's `policy.d` kept elsewhere) is judged where it leads:
/// root reads and writes there by path, so every folder and link on the way must be as the
/// root's own path's are, and what it ends in as an entry. What it leads to is not the root's
/// own: the advice is never to take it over.
fn check_linked_entry(dir: &Path, entry: &Path, users_points: &UsersMountPoints) -> Result<()> {
    let lookup = judged(dir, entry, feather_sys::lookup::walk(entry))?;
    let end = lookup.missing.is_none().then_some(&lookup.end.step);
    let judged = lookup.steps.iter().map(|step| (step, false));
    for (step, the_end) in judged.chain(end.map(|end| (end, true))) {
        if let Some(why) = untrusted(step, the_end, users_points) {
            return Err(untrusted_root(dir, &step.path, why, RootFault::Above));
        }
    }
    Ok(())
}

/// `walked` (a walk of `path`, or a look in it, for the root `root`) as this module's result: a
/// mount whose files a user decides, where the walk stopped before it asked that mount
/// anything ([`UsersMount`]), is refused as [`untrusted`] refuses one.
fn judged<T>(root: &Path, path: &Path, walked: std::io::Result<T>) -> Result<T> {
    walked.map_err(|e| {
        if let Some(mount) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<UsersMount>())
        {
            let why = Untrusted::Mount(mount.why.clone());
            return untrusted_root(root, &mount.path, why, RootFault::UsersMount);
        }
        Error::Io {
            path: path.to_path_buf(),
            source: e,
        }
    })
}

/// What [`untrusted`] found: a mount a user made (whatever the folder's modes), or modes.
enum Untrusted {
    Mount(String),
    Modes(String),
}

/// The refusal of `root` for `folder`; `fault`: what its modes' fault is (the root's own, a
/// folder above), unless the fault is the mount it is on.
fn untrusted_root(root: &Path, folder: &Path, why: Untrusted, fault: RootFault) -> Error {
    let (why, fault) = match why {
        Untrusted::Mount(why) => (why, RootFault::UsersMount),
        Untrusted::Modes(why) => (why, fault),
    };
    Error::UntrustedRoot {
        root: root.to_path_buf(),
        folder: folder.to_path_buf(),
        why,
        fault,
    }
}

/// What makes a folder or link of a root's lookup one a user other than root could change:
/// a mount point a user may mount on (`users_points`), or what it reports. (A mount whose
/// owners a user decides, whatever it reports, never reaches here: the walk itself ends at
/// it, before it is asked anything, and [`judged`] refuses it.)
fn untrusted(step: &Step, the_root: bool, users_points: &UsersMountPoints) -> Option<Untrusted> {
    if step.meta.is_dir() {
        if let Some(why) = users_points.at(&step.path) {
            return Some(Untrusted::Mount(why));
        }
    }
    modes_untrusted(&step.meta, the_root).map(Untrusted::Modes)
}

/// What of a folder's or link's owner and mode lets a user other than root change it.
fn modes_untrusted(meta: &std::fs::Metadata, the_root: bool) -> Option<String> {
    let owner = meta.uid();
    if owner != 0 && owner != feather_sys::creds::effective_uid() {
        return Some(format!("is owned by uid {owner}, not root"));
    }
    let mode = meta.mode() & 0o7777;
    let shared = mode & WRITABLE_BY_OTHERS != 0;
    if meta.file_type().is_symlink() || !shared {
        return None;
    }
    if the_root {
        return Some(format!("is writable by group or others (mode {mode:04o})"));
    }
    (mode & STICKY == 0)
        .then(|| format!("is writable by group or others without the sticky bit (mode {mode:04o})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    /// A scratch folder of the test's own, root's and 0755, removed on drop.
    use feather_testkit::ScratchDir as Scratch;

    fn refusal(dir: &Path) -> (PathBuf, String) {
        match check_state_root(dir) {
            Err(Error::UntrustedRoot { folder, why, .. }) => (folder, why),
            other => panic!("{} was not refused: {other:?}", dir.display()),
        }
    }

    fn set_mode(dir: &Path, mode: u32) {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_root_in_a_folder_only_root_changes_is_taken_made_or_not() {
        let scratch = Scratch::new("fine");
        let root = scratch.0.join("root");
        check_state_root(&root.join("not/made/yet")).unwrap();
        fs::create_dir(&root).unwrap();
        set_mode(&root, 0o700);
        check_state_root(&root).unwrap();
        // A link to it is fine where the link is root's, in a folder only root changes.
        std::os::unix::fs::symlink(&root, scratch.0.join("link")).unwrap();
        check_state_root(&scratch.0.join("link")).unwrap();
        // A relative one, through `..`: walked from the link's folder, as the kernel does.
        let back = Path::new("..")
            .join(scratch.0.file_name().unwrap())
            .join("root");
        std::os::unix::fs::symlink(&back, scratch.0.join("relative")).unwrap();
        check_state_root(&scratch.0.join("relative")).unwrap();
        std::os::unix::fs::lchown(&root, Some(65534), None).unwrap();
        assert_eq!(refusal(&scratch.0.join("relative")).0, root);
    }

    #[test]
    fn a_folder_above_the_root_writable_by_others_is_refused_unless_sticky() {
        let scratch = Scratch::new("shared");
        let root = scratch.0.join("root");
        fs::create_dir(&root).unwrap();
        set_mode(&scratch.0, 0o775);
        let (folder, why) = refusal(&root);
        assert_eq!(folder, scratch.0);
        assert!(
            why.contains("writable by group") && why.contains("0775"),
            "{why}"
        );
        // Missing, the root is refused the same: its folder would be made where others can
        // put theirs first.
        refusal(&scratch.0.join("not-yet"));
        set_mode(&scratch.0, 0o1777);
        check_state_root(&root).unwrap();
    }

    #[test]
    fn a_root_folder_writable_by_others_is_refused_even_sticky() {
        let scratch = Scratch::new("root-shared");
        let root = scratch.0.join("root");
        fs::create_dir(&root).unwrap();
        set_mode(&root, 0o1777);
        let (folder, why) = refusal(&root);
        assert_eq!(folder, root);
        assert!(why.contains("1777"), "{why}");
    }

    #[test]
    fn a_folder_of_another_user_on_the_way_is_refused_links_included() {
        let scratch = Scratch::new("owned");
        let users = scratch.0.join("home");
        let root = scratch.0.join("root");
        fs::create_dir(&users).unwrap();
        fs::create_dir(&root).unwrap();
        let link = users.join("vms");
        std::os::unix::fs::symlink(&root, &link).unwrap();
        std::os::unix::fs::lchown(&users, Some(65534), Some(65534)).unwrap();
        // Through a user's folder to a root only root changes: the user can point the link
        // elsewhere at any moment.
        let (folder, why) = refusal(&link);
        assert_eq!(folder, users);
        assert!(why.contains("uid 65534"), "{why}");
        // The root's own folder a user's.
        std::os::unix::fs::lchown(&root, Some(65534), None).unwrap();
        assert_eq!(refusal(&root).0, root);
        // A link of a user's in a sticky folder: the user may replace it.
        std::os::unix::fs::lchown(&root, Some(0), None).unwrap();
        let sticky = Scratch::new("sticky");
        set_mode(&sticky.0, 0o1777);
        let in_sticky = sticky.0.join("link");
        std::os::unix::fs::symlink(&root, &in_sticky).unwrap();
        std::os::unix::fs::lchown(&in_sticky, Some(65534), None).unwrap();
        assert_eq!(refusal(&in_sticky).0, in_sticky);
    }

    /// `x/..` is the folder above `x`, and that one is judged as the root's own: a sticky
    /// `/tmp` is fine on the way, never as a root.
    #[test]
    fn a_root_ending_in_dot_dot_is_judged_as_the_folder_it_reaches() {
        let scratch = Scratch::new("up");
        let below = scratch.0.join("below");
        fs::create_dir(&below).unwrap();
        set_mode(&scratch.0, 0o1777);
        let (folder, why) = refusal(&below.join(".."));
        assert_eq!(folder, scratch.0);
        assert!(why.contains("1777"), "{why}");
        set_mode(&scratch.0, 0o755);
        check_state_root(&below.join("..")).unwrap();
    }

    /// `--root /x/missing/../y` would make a stray `missing` beside the root: refused, and
    /// nothing is made.
    #[test]
    fn a_root_with_dot_dot_in_its_part_not_made_yet_is_refused_before_anything_is_made() {
        let scratch = Scratch::new("dotdot-made");
        let asked = scratch.0.join("stray/../root");
        match made_state_root(&asked, None) {
            Err(Error::InvalidValue { why, .. }) => assert!(why.contains("`..`"), "{why}"),
            other => panic!("{} was not refused: {other:?}", asked.display()),
        }
        assert_eq!(fs::read_dir(&scratch.0).unwrap().count(), 0);
        made_state_root(&scratch.0.join("root"), None).unwrap();
    }

    /// What feather makes in a root and acts on there by path must be root's too: a user's
    /// `pool/` in a root only root changes is refused, and the advice is to take back that
    /// entry alone (never `chown -R`, which would change the files of the VMs' layers).
    #[test]
    fn an_entry_of_the_root_a_user_owns_or_others_may_write_is_refused() {
        let scratch = Scratch::new("entries");
        let pool = scratch.0.join("pool");
        fs::create_dir(&pool).unwrap();
        check_state_root(&scratch.0).unwrap();
        std::os::unix::fs::lchown(&pool, Some(65534), None).unwrap();
        let refused = check_state_root(&scratch.0).unwrap_err().to_string();
        assert!(
            refused.contains(&format!("{} is owned by uid 65534", pool.display())),
            "{refused}"
        );
        assert!(
            refused.contains(&format!("chown root: {}", pool.display()))
                && !refused.contains("chown -R"),
            "{refused}"
        );
        std::os::unix::fs::lchown(&pool, Some(0), None).unwrap();
        let settings = scratch.0.join("network.toml");
        fs::write(&settings, "").unwrap();
        set_mode(&settings, 0o666);
        assert_eq!(refusal(&scratch.0).0, settings);
    }

    /// An entry that is a link is judged where it leads: a root's `policy.d` linked into a
    /// user's folder is refused (root would read its rules there, and make leases in such a
    /// `network-leases`); linked to a folder only root changes, it is fine.
    #[test]
    fn an_entry_linked_elsewhere_is_judged_where_it_leads() {
        let scratch = Scratch::new("linked");
        let root = scratch.0.join("root");
        let rules = scratch.0.join("rules");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&rules).unwrap();
        std::os::unix::fs::symlink(&rules, root.join("policy.d")).unwrap();
        check_state_root(&root).unwrap();
        std::os::unix::fs::lchown(&rules, Some(65534), None).unwrap();
        let (folder, why) = refusal(&root);
        assert_eq!(folder, rules, "{why}");
        let refused = check_state_root(&root).unwrap_err().to_string();
        assert!(!refused.contains("chown root:"), "{refused}");
    }

    /// A folder above the root that is not root's (a user's home) is not the admin's to
    /// take: the advice is a root elsewhere, never to chown it.
    #[test]
    fn a_folder_above_the_root_is_never_advised_to_be_chowned() {
        let scratch = Scratch::new("home");
        let home = scratch.0.join("alice");
        fs::create_dir(&home).unwrap();
        std::os::unix::fs::lchown(&home, Some(65534), None).unwrap();
        let refused = check_state_root(&home.join("vms")).unwrap_err().to_string();
        assert!(refused.contains("choose a root"), "{refused}");
        assert!(!refused.contains("chown"), "{refused}");
    }
}
