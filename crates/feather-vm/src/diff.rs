//! What a VM changed, read from its layers: every path where the VM's view differs from the
//! host's. `commit` applies exactly this list.
//!
//! overlayfs records changes as plain files in the upper layer: a copied-up or new file, a
//! whiteout (a 0:0 character device) for a deletion, and an "opaque" directory for a folder
//! that was removed and made anew, which hides everything beneath it in the lower layer.
//!
//! A running VM can change its upper layer while we read it, so it is read only through
//! descriptors (`feather_sys::beneath`): each layer's upper folder and the base beneath it are
//! pinned once, every entry is opened beneath them without following any symlink, and its
//! type is what fstat on that descriptor says. A symlink in the layer is an entry, never a way.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use feather_core::VmConfig;
use feather_sys::beneath::{self, Entry, Spared};
use feather_sys::mountinfo::{self, MountEntry};
use serde::Serialize;

use crate::hiding::StateFolders;
use crate::layers::{Layer, SeenLowers, Unseen};

/// How deep beneath a folder the VM deleted or replaced `diff` looks for a state folder (see
/// `Guarded::holds_state_folder`); the host's trees, not the VM's, and roots lie near the top.
const HOLDS_DEPTH: usize = 64;

/// How many entries (folders, by the listing's type) that search opens beneath one such
/// folder before it gives up and takes the folder for one holding a state folder
/// ([`Forbidden::Unsearched`]): the host's tree is not the VM's to size, and a VM that deletes
/// `/usr` would otherwise make every `diff` walk it (review lowroots29 M6). A debug build
/// takes another from [`HOLDS_ENTRIES_HOOK`], for tests.
const HOLDS_ENTRIES: usize = 20_000;

/// The test-only variable that sets [`HOLDS_ENTRIES`] (see [`crate::test_hooks`]).
pub const HOLDS_ENTRIES_HOOK: &str = "FEATHER_TEST_HOLDS_ENTRIES";

/// [`HOLDS_ENTRIES`], or the number [`HOLDS_ENTRIES_HOOK`] holds in a debug build.
fn holds_entries() -> usize {
    crate::test_hooks::set(HOLDS_ENTRIES_HOOK)
        .and_then(|value| value.to_str()?.parse().ok())
        .unwrap_or(HOLDS_ENTRIES)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, PartialOrd, Ord)]
pub enum ChangeKind {
    /// The path exists in the VM and not on the host.
    Added,
    /// The path exists in both and differs in content, type, mode or owner.
    Modified,
    /// The path exists on the host and the VM deleted it.
    Deleted,
}

impl ChangeKind {
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Modified => 'M',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// What a file the VM made would grant whoever runs it on the host, beyond its owner's rights.
/// None shows in the file's content, and file capabilities not even in `ls -l`: `diff` names
/// them, and `commit` applies them only when asked (`--keep-privileges`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Privilege {
    /// An executable with the set-user-ID bit: it runs as its owner.
    SetUid,
    /// An executable with the set-group-ID bit: it runs with its group.
    SetGid,
    /// `security.capability`: it runs with the capabilities the attribute names.
    FileCapabilities,
}

impl Privilege {
    pub fn word(self) -> &'static str {
        match self {
            Privilege::SetUid => "set-user-ID",
            Privilege::SetGid => "set-group-ID",
            Privilege::FileCapabilities => "file capabilities",
        }
    }
}

/// How the VM changed who may use an entry. For an entry the base has: each change of its
/// mode, owner, group or POSIX ACLs (`diff` shows them all). For a new one: what lets a user
/// other than root write where root's programs may live. Those that widen access ([`Access::widens`])
/// `commit` applies only when asked (`--keep-privileges`): a folder of root's made
/// world-writable, or given to another user, lets that user replace what root runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "change")]
pub enum Access {
    /// Permission bits (set-ID and sticky bits included): the base's, then the VM's.
    Mode { from: u32, to: u32 },
    /// The owning user: the base's, then the VM's.
    Owner { from: u32, to: u32 },
    /// The owning group: the base's, then the VM's.
    Group { from: u32, to: u32 },
    /// Its POSIX ACLs (`system.posix_acl_access`, `system.posix_acl_default`) differ from
    /// the base's.
    Acl,
    /// A new file or folder anyone may write (a folder without the sticky bit).
    WorldWritable { mode: u32 },
    /// A new file or folder owned by another user than root and than the host folder it lands
    /// in, where not anyone may write (as in `/tmp`).
    OtherOwner { owner: u32, folder_owner: u32 },
    /// A new file or folder its group may write, that group being neither root's nor the host
    /// folder's it lands in.
    GroupWritable { group: u32, mode: u32 },
    /// A new file or folder with a POSIX ACL that names a user or group, or a folder with a
    /// default ACL (what root later makes in it inherits it): the mode does not show either.
    NewAcl,
    /// A new or changed symlink whose target, resolved in the base, passes through or lies in
    /// a folder a user other than root may write (without the sticky bit): that user chooses
    /// what the link leads to.
    LinkThroughWritable { folder: PathBuf },
}

impl Access {
    /// Whether it lets more users at the entry than the base did: new permission bits for
    /// the group or others (or a set-ID bit), a dropped sticky bit, another owner or group,
    /// other ACLs; every finding about a new entry. A mode that only takes away does not, nor
    /// does an owner or group given to root (review fixes23 C9).
    pub fn widens(&self) -> bool {
        match *self {
            Access::Mode { from, to } => {
                let added = to & !from;
                added & 0o6077 != 0 || from & 0o1000 != 0 && to & 0o1000 == 0
            }
            Access::Owner { to, .. } | Access::Group { to, .. } => to != 0,
            _ => true,
        }
    }

    /// For people: `mode 0755→0777`, `owner 0→65534`, `ACL`.
    pub fn shown(&self) -> String {
        match *self {
            Access::Mode { from, to } => format!("mode {from:04o}→{to:04o}"),
            Access::Owner { from, to } => format!("owner {from}→{to}"),
            Access::Group { from, to } => format!("group {from}→{to}"),
            Access::Acl => "ACL".into(),
            Access::WorldWritable { mode } => format!("new, world-writable {mode:04o}"),
            Access::OtherOwner {
                owner,
                folder_owner,
            } => format!("new, owner {owner} in a folder of {folder_owner}'s"),
            Access::GroupWritable { group, mode } => {
                format!("new, group {group} may write {mode:04o}")
            }
            Access::NewAcl => "new, ACL".into(),
            Access::LinkThroughWritable { ref folder } => format!(
                "link through {}, which others than root may write",
                feather_core::display::escape_path(folder)
            ),
        }
    }
}

/// Why a change lies where the VM never writes by itself: the mounts that keep it out of such
/// folders are detached in a mount namespace that ended, and a process of the VM that kept a
/// descriptor there writes beneath them into its layer (docs/security.md). `diff` marks such
/// changes and `commit` refuses them: they say the VM got past a defence (or wrote there
/// before the folder was guarded: a root registered since, a layer imported from a host where
/// that path was none), and applying one would write what the VM was never let see into the
/// host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Forbidden {
    /// At or beneath a folder hidden from every VM (a registered state root's folders, the
    /// registry of roots; over the host's `/`, also the host's `/proc`, `/sys`, `/dev` and
    /// `/run` beneath the VM's own), or a deletion or replacement of a folder that holds one.
    Hidden,
    /// At or beneath one of the VM's `--ro` paths (or a deletion or replacement of a folder
    /// that holds one), which the VM sees read-only.
    ReadOnly,
    /// A socket or device node: nothing a commit could apply (a socket is a live endpoint of
    /// a process of the VM's; a device node a VM cannot make, so it came with an imported
    /// layer). `commit` passes over them before writing anything, and says so.
    Special,
    /// At or beneath a filesystem mounted on the host where the VM's layer does not reach (one
    /// mounted under the base after the VM's start, an automount point), or a deletion or
    /// replacement of a folder that holds one. overlayfs never crosses into what is mounted
    /// under its lower folder: the VM saw (and changed) the base's own folder there, and
    /// applying the change would write, or empty, the filesystem mounted over it.
    HostMount,
    /// A deletion or replacement of a host folder too large to search for a state folder
    /// within [`HOLDS_ENTRIES`]: it may hold one, and `commit` does not remove what it could
    /// not search.
    Unsearched,
}

impl Forbidden {
    pub fn word(self) -> &'static str {
        match self {
            Forbidden::Hidden => "in a folder hidden from VMs",
            Forbidden::ReadOnly => "under a --ro path",
            Forbidden::Special => "a socket or device node",
            Forbidden::HostMount => {
                "at, beneath or over a host mount the VM's layer does not cover"
            }
            Forbidden::Unsearched => "removes a host folder too large to search for a state root",
        }
    }

    /// Whether the change says the VM got past a defence ([`Forbidden::Hidden`],
    /// [`Forbidden::ReadOnly`]).
    pub fn past_a_defence(self) -> bool {
        matches!(self, Forbidden::Hidden | Forbidden::ReadOnly)
    }

    /// Whether `commit` refuses a selection that holds such a change (every kind but
    /// [`Forbidden::Special`], which it passes over).
    pub fn refused(self) -> bool {
        self != Forbidden::Special
    }
}

/// The folders, as a VM sees them, where none of its changes may reach the base (see
/// [`Forbidden`]).
#[derive(Clone, Debug, Default)]
pub struct Guarded {
    folders: Vec<(PathBuf, Forbidden)>,
    /// The base, by path, where a symlink's target is resolved (none: targets are not judged).
    base: Option<PathBuf>,
    /// The folders no symlink may lead into: the state roots' and the registry, not the host's
    /// `/dev`, `/proc` or `/run` (a unit masked by a link to `/dev/null` is common).
    link_guarded: Vec<PathBuf>,
    /// Whether changes at, beneath or over a host mount the layer does not cover are marked
    /// ([`Forbidden::HostMount`]; an OCI container's are not: nothing of them is committed).
    host_mounts: bool,
    /// The state folders by identity or root id: a lower folder that is one, and all beneath
    /// it, is [`Forbidden::Hidden`] whatever path reaches it (the source of a bind mount of a
    /// root: review fixes23 C4; a root after a reboot: gl27 M2).
    spared: Spared,
}

impl Guarded {
    /// The guarded folders of a VM with `config`, given the host folders hidden from every VM
    /// (`hidden`: `hiding::state_folders`). A hidden folder counts wherever it lies in the
    /// base, also beneath the VM's own `/run` or `/proc`, where the VM sees nothing of it but a
    /// descriptor kept in an ended namespace does.
    pub fn for_vm(config: &VmConfig, hidden: &StateFolders) -> Guarded {
        let spared = hidden.spared.clone();
        let hidden = &hidden.folders;
        let bases = [
            config.base.clone(),
            std::fs::canonicalize(&config.base).unwrap_or_else(|_| config.base.clone()),
        ];
        let mut folders: Vec<(PathBuf, Forbidden)> = hidden
            .iter()
            .filter_map(|folder| bases.iter().find_map(|b| folder.strip_prefix(b).ok()))
            .map(|rel| (Path::new("/").join(rel), Forbidden::Hidden))
            .collect();
        let link_guarded = folders.iter().map(|(folder, _)| folder.clone()).collect();
        if bases.iter().any(|b| b == Path::new("/")) {
            // The host's own, hidden beneath the VM's by its hiding layer (layers::hiding_layer).
            folders.extend(
                crate::hiding::MOUNT_POINTS
                    .iter()
                    .map(|m| (Path::new("/").join(m), Forbidden::Hidden)),
            );
        }
        folders.extend(
            config
                .read_only
                .iter()
                .map(|path| (path.clone(), Forbidden::ReadOnly)),
        );
        Guarded {
            folders,
            base: Some(bases[1].clone()),
            link_guarded,
            host_mounts: true,
            spared,
        }
    }

    /// Whether the host's entry `fd`, of metadata `meta`, is a state folder, by its identity
    /// or the root id it holds.
    fn is_state_folder(&self, fd: &impl AsFd, meta: &Metadata) -> bool {
        self.spared.is(fd, meta)
    }

    /// Why a deletion or replacement of the host's folder `lower` is forbidden, if it is: it
    /// holds a state folder (by identity) anywhere beneath
    /// it on its own mount: deleting or replacing it would empty that root, also one reached
    /// where no path of a root is (review gl27 H1). What it cannot read, and what lies deeper
    /// than [`HOLDS_DEPTH`] levels, is passed over: the removal itself refuses at a state
    /// folder ([`beneath::remove_tree_sparing`]); this lets `diff` show it, and `commit`
    /// refuse before it writes anything.
    fn holds_state_folder(&self, lower: &impl AsFd) -> Option<Forbidden> {
        let bounds = beneath::Bounds {
            depth: HOLDS_DEPTH,
            entries: holds_entries(),
        };
        match beneath::holds_spared(lower, &self.spared, bounds) {
            beneath::Search::Holds => Some(Forbidden::Hidden),
            beneath::Search::Clear => None,
            beneath::Search::Unfinished => Some(Forbidden::Unsearched),
        }
    }

    /// Why a change at `path` (the VM's) is forbidden, if it is: it lies at or beneath a
    /// guarded folder, or it `removes` (deletes or replaces with a non-folder) what the host
    /// has at `path`, and that holds a guarded folder: applied, it would remove a state root.
    pub fn forbids(&self, path: &Path, removes: bool) -> Option<Forbidden> {
        self.folders
            .iter()
            .find(|(folder, _)| path.starts_with(folder) || removes && folder.starts_with(path))
            .map(|(_, why)| *why)
    }

    /// What a symlink the VM made at `link` (its path) pointing to `target` would do on the
    /// host: its target is resolved in the base as root would resolve it from there (by path:
    /// the base's own links followed, up to 40), and it is [`Forbidden::Hidden`] when it leads
    /// into a hidden folder (another VM's layer, a state root), and widens access when a user
    /// other than root may change where it leads (see [`LinkTarget`]).
    pub fn judge_link(&self, link: &Path, target: &Path) -> (Option<Forbidden>, Vec<Access>) {
        let Some(base) = &self.base else {
            return (None, Vec::new());
        };
        let folder = link.parent().unwrap_or(Path::new("/"));
        let walk = LinkTarget::resolve(base, &folder.join(target));
        let hidden = walk.visited.iter().any(|path| {
            self.link_guarded
                .iter()
                .any(|folder| path.starts_with(folder))
        });
        let access = walk
            .writable
            .map(|folder| Access::LinkThroughWritable { folder })
            .into_iter()
            .collect();
        (hidden.then_some(Forbidden::Hidden), access)
    }
}

/// Where a symlink's target leads in the base: every path (the VM's) its resolution passes
/// through, and the first folder on the way a user other than root may change: a folder such a
/// user owns or may write without the sticky bit, the folder of a missing entry that such a
/// user may write at all (sticky `/tmp` included: anyone may make `/tmp/ls`), or the target
/// itself when such a user owns it or may write it.
struct LinkTarget {
    visited: Vec<PathBuf>,
    writable: Option<PathBuf>,
}

impl LinkTarget {
    fn resolve(base: &Path, start: &Path) -> LinkTarget {
        let mut walk = LinkTarget {
            visited: Vec::new(),
            writable: None,
        };
        let mut pending: Vec<OsString> = components(start);
        let mut current = PathBuf::from("/");
        let mut hops = 0;
        while let Some(name) = pending.pop() {
            if name == ".." {
                current.pop();
                continue;
            }
            let next = current.join(&name);
            walk.visited.push(next.clone());
            let on_host = base.join(next.strip_prefix("/").unwrap_or(&next));
            let last = pending.is_empty();
            match std::fs::symlink_metadata(&on_host) {
                Ok(meta) if meta.file_type().is_symlink() && hops < 40 => {
                    hops += 1;
                    let Ok(points) = std::fs::read_link(&on_host) else {
                        break;
                    };
                    if points.is_absolute() {
                        current = PathBuf::from("/");
                    }
                    pending.extend(components(&points));
                    continue;
                }
                Ok(meta) => {
                    if walk.writable.is_none() && others_may_change(&meta, !last || meta.is_dir()) {
                        walk.writable = Some(next.clone());
                    }
                }
                // Missing: whoever may write its folder may make it (beneath it, nothing is).
                Err(_) => {
                    let parent = base.join(current.strip_prefix("/").unwrap_or(&current));
                    let parent_open = std::fs::symlink_metadata(parent)
                        .is_ok_and(|meta| others_may_change(&meta, false));
                    if walk.writable.is_none() && parent_open {
                        walk.writable = Some(current.clone());
                    }
                }
            }
            current = next;
        }
        walk
    }
}

/// The components of `path` in reverse (to be popped in order), `.` dropped.
fn components(path: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(name) => Some(name.to_os_string()),
            std::path::Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    names.reverse();
    names
}

/// Whether a user other than root may change the entry `meta` describes: that user owns it, or
/// anyone or a group other than root's may write it (with the sticky bit, when `sticky_counts`,
/// no one but an entry's owner may rename or remove what lies in it).
fn others_may_change(meta: &Metadata, sticky_counts: bool) -> bool {
    let mode = meta.mode();
    let sticky = sticky_counts && mode & 0o1000 != 0;
    meta.uid() != 0 || !sticky && (mode & 0o002 != 0 || mode & 0o020 != 0 && meta.gid() != 0)
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// The path as the VM sees it. In JSON: the exact text when it is UTF-8; otherwise the
    /// text with each invalid byte as `\xNN`, and `path_bytes` holds the exact bytes.
    #[serde(serialize_with = "path_as_text")]
    pub path: PathBuf,
    /// The exact bytes of `path`, present in JSON only when the path is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_bytes: Option<Vec<u8>>,
    /// Length in bytes of the VM's version (0 for a folder or a deletion).
    pub size: u64,
    /// Disk space the VM's version of a regular file takes (a sparse file takes less than its
    /// length; a small file may take more); the length for symlinks and FIFOs.
    pub allocated: u64,
    /// What the VM's version would grant whoever runs it (regular files only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub privileges: Vec<Privilege>,
    /// How the VM changed who may use the entry (see [`Access`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<Access>,
    /// Where the VM's version points, when it is a symlink (as `path`: escaped when not UTF-8).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "link_as_text"
    )]
    pub link_target: Option<PathBuf>,
    /// Why the change may never be applied to the base, when it lies where the VM cannot write
    /// by itself; `commit` refuses it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forbidden: Option<Forbidden>,
    /// Which layer (index into the list `diff` was given) holds the change.
    #[serde(skip)]
    pub layer: usize,
    /// The path relative to that layer's mount point.
    #[serde(skip)]
    pub rel: PathBuf,
}

impl Change {
    /// What the VM's version would grant, for people: "set-user-ID, file capabilities"; empty
    /// when nothing.
    pub fn privileges_shown(&self) -> String {
        let words: Vec<_> = self.privileges.iter().map(|p| p.word()).collect();
        words.join(", ")
    }

    /// Every change of who may use the entry, for people: "mode 0755→0777, owner 0→65534";
    /// empty when none.
    pub fn access_shown(&self) -> String {
        let words: Vec<_> = self.access.iter().map(Access::shown).collect();
        words.join(", ")
    }

    /// Those changes of who may use the entry that widen it (see [`Access::widens`]), for
    /// people; empty when none.
    pub fn widened_shown(&self) -> String {
        let words: Vec<_> = self
            .access
            .iter()
            .filter(|a| a.widens())
            .map(Access::shown)
            .collect();
        words.join(", ")
    }
}

fn link_as_text<S: serde::Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match path {
        Some(path) => path_as_text(path, s),
        None => s.serialize_none(),
    }
}

fn path_as_text<S: serde::Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&feather_core::display::utf8_or_escaped(
        path.as_os_str().as_bytes(),
    ))
}

/// One layer, pinned: its upper folder, and the host folder beneath it (absent if the host
/// has none there any more, or if it is not the filesystem the VM saw there: `unseen`).
pub struct Tree {
    pub layer: Layer,
    pub upper: File,
    pub lower: Option<File>,
    /// The host folder beneath the layer is on another mount than the one the layer lay over
    /// at the VM's start (see [`crate::layers::SeenLowers`]): a filesystem mounted there since,
    /// or the base's folder beneath one unmounted since. It is never opened for reading or
    /// writing, and every change of the layer is marked [`Forbidden::HostMount`]. Also a layer
    /// the record does not name, or cannot tell from another ([`Unseen`]).
    pub unseen: Option<Unseen>,
}

/// Pins every layer's upper folder and, beneath the base (`base`, opened once), its lower one,
/// where that is still on the mount `seen` recorded for it (when there is a record).
pub fn open_trees(
    layers: Vec<Layer>,
    base: &File,
    base_path: &Path,
    seen: Option<&SeenLowers>,
) -> std::io::Result<Vec<Tree>> {
    layers
        .into_iter()
        .map(|layer| {
            let upper = beneath::open_root(&layer.upper)?;
            let mut lower = crate::layers::open_lower(base, base_path, &layer)?;
            let unseen = SeenLowers::judge(seen, &layer, lower.as_ref())?;
            if unseen.is_some() {
                lower = None;
            }
            Ok(Tree {
                layer,
                upper,
                lower,
                unseen,
            })
        })
        .collect()
}

/// Every change in every layer, sorted by path (a folder before what it holds), those in the
/// VM's guarded folders marked (`hidden`: the host folders hidden from every VM).
pub fn diff(
    trees: &[Tree],
    config: &VmConfig,
    hidden: &StateFolders,
) -> std::io::Result<Vec<Change>> {
    diff_trees(trees, &config.scaffold, &Guarded::for_vm(config, hidden))
}

/// [`diff`] of any overlay's layers (an OCI container's too), passing over the paths in
/// `scaffold` (mount points the runtime made, not the workload) and marking those `guarded`.
pub fn diff_trees(
    trees: &[Tree],
    scaffold: &[PathBuf],
    guarded: &Guarded,
) -> std::io::Result<Vec<Change>> {
    let mut changes = Vec::new();
    let mounted = match guarded.host_mounts {
        true => mountinfo::mounts()?,
        false => Vec::new(),
    };
    for (index, tree) in trees.iter().enumerate() {
        let host_mounts = match &tree.lower {
            Some(lower) if guarded.host_mounts => mounts_beneath(lower, &mounted)?,
            _ => Vec::new(),
        };
        let walk = Walk {
            index,
            tree,
            scaffold,
            guarded,
            host_mounts: &host_mounts,
        };
        let lower = match &tree.lower {
            Some(lower) => Some(lower.try_clone()?),
            None => None,
        };
        walk.all(
            &mut changes,
            tree.upper.try_clone()?,
            lower,
            tree.unseen.is_some(),
        )?;
    }
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(changes)
}

/// The filesystems mounted on the host beneath the folder `lower` (of `mounted`, the host's
/// mounts), as paths relative to it: none of them is part of what the layer's overlay shows.
fn mounts_beneath(lower: &File, mounted: &[MountEntry]) -> std::io::Result<Vec<PathBuf>> {
    use std::os::fd::AsRawFd;
    let at = std::fs::read_link(format!("/proc/self/fd/{}", lower.as_raw_fd()))?;
    Ok(mounted
        .iter()
        .filter_map(|mount| mount.mount_point.strip_prefix(&at).ok())
        .filter(|rel| !rel.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .collect())
}

struct Walk<'a> {
    index: usize,
    tree: &'a Tree,
    scaffold: &'a [PathBuf],
    guarded: &'a Guarded,
    /// The host's mounts beneath the tree's lower folder, relative to it ([`mounts_beneath`]).
    host_mounts: &'a [PathBuf],
}

/// One folder of the upper layer being walked (`upper`, pinned) beside its host counterpart
/// (`lower`, if the host has a folder there), and the names in it still to be seen.
/// `replaced`: the folder hides its lower counterpart entirely (it or an ancestor is opaque,
/// or new), so lower entries it lacks are deletions. `host`: the base folder its new entries
/// land in (see [`HostFolder`]). `beyond`: the base has a host mount at the folder or above it
/// (see [`Forbidden::HostMount`]), so its lower counterpart is out of reach.
struct Folder {
    rel: PathBuf,
    upper: File,
    lower: Option<File>,
    replaced: bool,
    beyond: bool,
    host: HostFolder,
    /// Whether its lower counterpart, or one above it, is a state folder (by identity).
    in_state: bool,
    names: Vec<OsString>,
    next: usize,
}

impl Folder {
    fn open(
        rel: PathBuf,
        upper: File,
        lower: Option<File>,
        replaced: bool,
        (above, in_state_above): (HostFolder, bool),
        guarded: &Guarded,
    ) -> std::io::Result<Folder> {
        let names = beneath::names(&upper)?;
        let lower_meta = lower.as_ref().map(File::metadata).transpose()?;
        let host = lower_meta.as_ref().map_or(above, HostFolder::of);
        let in_state = in_state_above
            || lower
                .as_ref()
                .zip(lower_meta)
                .is_some_and(|(lower, meta)| guarded.is_state_folder(lower, &meta));
        Ok(Folder {
            rel,
            upper,
            lower,
            replaced,
            beyond: false,
            host,
            in_state,
            names,
            next: 0,
        })
    }
}

/// Who may write the base's folder a new entry of the VM's is judged against: the base's own
/// copy of the entry's folder, or, where the base has none, of the nearest folder above it that
/// it has. Never the VM's copy, which the VM chowns and chmods as it likes: that is a change
/// of its own, which the admin may leave out (review fixes23 C1).
#[derive(Clone, Copy, Debug)]
struct HostFolder {
    uid: u32,
    gid: u32,
    mode: u32,
}

impl HostFolder {
    /// Root's 0755: what commit makes of a missing folder (layer roots without a base below).
    const ROOTS: HostFolder = HostFolder {
        uid: 0,
        gid: 0,
        mode: 0o755,
    };

    fn of(meta: &Metadata) -> HostFolder {
        HostFolder {
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
        }
    }
}

impl Walk<'_> {
    /// The change at `rel`; `beyond`: the base has a host mount there or above (a lookup
    /// found it, see [`Folder`]).
    fn change(
        &self,
        kind: ChangeKind,
        rel: &Path,
        upper: Option<&Entry>,
        beyond: bool,
    ) -> std::io::Result<Change> {
        self.change_of_access(kind, rel, upper, Vec::new(), beyond)
    }

    /// [`Walk::change`] with what the VM changed of who may use the entry.
    fn change_of_access(
        &self,
        kind: ChangeKind,
        rel: &Path,
        upper: Option<&Entry>,
        access: Vec<Access>,
        beyond: bool,
    ) -> std::io::Result<Change> {
        let privileges = match upper {
            Some(entry) if kind != ChangeKind::Deleted => privileges(entry)?,
            _ => Vec::new(),
        };
        let path = self.tree.layer.vm_path(rel);
        let mut access = access;
        let mut forbidden_link = None;
        let mut link_target = None;
        if let Some(entry) = upper.filter(|e| e.meta.file_type().is_symlink()) {
            let target = PathBuf::from(entry.link_target()?);
            let (forbidden, widened) = self.guarded.judge_link(&path, &target);
            forbidden_link = forbidden;
            access.extend(widened);
            link_target = Some(target);
        }
        let special = upper.is_some_and(|e| is_special(&e.meta)) && kind != ChangeKind::Deleted;
        let upper = upper.map(|entry| &entry.meta);
        // A deletion, or a file over the host's folder (commit removes the folder first).
        let removes = kind == ChangeKind::Deleted
            || kind == ChangeKind::Modified && upper.is_some_and(|meta| !meta.is_dir());
        let host_mount =
            self.guarded.host_mounts && (beyond || self.reaches_a_host_mount(rel, removes));
        let forbidden = self
            .guarded
            .forbids(&path, removes)
            .or(forbidden_link)
            .or(host_mount.then_some(Forbidden::HostMount))
            .or(special.then_some(Forbidden::Special));
        let path_bytes = std::str::from_utf8(path.as_os_str().as_bytes())
            .is_err()
            .then(|| path.as_os_str().as_bytes().to_vec());
        let (size, allocated) = match upper {
            Some(meta) if kind == ChangeKind::Deleted || meta.is_dir() => (0, 0),
            Some(meta) if meta.is_file() => (meta.len(), meta.blocks() * 512),
            // A symlink's target or a FIFO takes no data blocks worth showing.
            Some(meta) => (meta.len(), meta.len()),
            _ => (0, 0),
        };
        Ok(Change {
            kind,
            path,
            path_bytes,
            size,
            allocated,
            privileges,
            access,
            link_target,
            forbidden,
            layer: self.index,
            rel: rel.to_path_buf(),
        })
    }

    /// Whether a change at `rel` lies at or beneath one of the host's mounts under the tree's
    /// lower folder, or `removes` what the base has at `rel` and that holds one.
    fn reaches_a_host_mount(&self, rel: &Path, removes: bool) -> bool {
        self.host_mounts
            .iter()
            .any(|mount| rel.starts_with(mount) || removes && mount.starts_with(rel))
    }

    /// Walks the upper layer from its root (`upper`) beside the host's (`lower`), depth first
    /// with a stack of open folders, not by recursion: the VM chooses how deep its folders
    /// nest, and a recursive walk of a few thousand levels overflowed the stack and aborted
    /// feather (the web view's server with it, where it showed the VM's changes).
    /// `beyond`: the lower folder is not the filesystem the VM saw ([`Tree::unseen`]).
    fn all(
        &self,
        changes: &mut Vec<Change>,
        upper: File,
        lower: Option<File>,
        beyond: bool,
    ) -> std::io::Result<()> {
        let mut top = Folder::open(
            PathBuf::new(),
            upper,
            lower,
            false,
            (HostFolder::ROOTS, false),
            self.guarded,
        )?;
        top.beyond = beyond;
        let mut open = vec![top];
        while let Some(folder) = open.last_mut() {
            let Some(name) = folder.names.get(folder.next).cloned() else {
                let done = open.pop().expect("a folder is open");
                self.deletions(changes, &done)?;
                continue;
            };
            folder.next += 1;
            match self.entry(changes, folder, &name) {
                Ok(Some(inner)) => open.push(inner),
                Ok(None) => {}
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                    let at = self.tree.layer.vm_path(&folder.rel);
                    return Err(out_of_descriptors(&at, &open));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// When `folder` hides its lower counterpart: the lower entries it lacks, as deletions.
    fn deletions(&self, changes: &mut Vec<Change>, folder: &Folder) -> std::io::Result<()> {
        if let (true, Some(lower)) = (folder.replaced, &folder.lower) {
            for name in beneath::names(lower)?
                .iter()
                .filter(|n| !folder.names.contains(n))
            {
                let rel = folder.rel.join(name);
                let mut change = self.change(ChangeKind::Deleted, &rel, None, folder.beyond)?;
                let why = match folder.in_state || self.is_state_folder_in(lower, name) {
                    true => Some(Forbidden::Hidden),
                    false => self.holds_state_folder_in(lower, name),
                };
                if let Some(why) = why {
                    mark(std::slice::from_mut(&mut change), why);
                }
                changes.push(change);
            }
        }
        Ok(())
    }

    /// The change (if any) at entry `name` of `folder`, and the folder to walk next when it is
    /// one the walk goes into; the change marked [`Forbidden::Hidden`] when `folder` lies in a
    /// state folder, or the entry is one (by identity, see [`Guarded::is_state_folder`]).
    fn entry(
        &self,
        changes: &mut Vec<Change>,
        folder: &Folder,
        name: &OsStr,
    ) -> std::io::Result<Option<Folder>> {
        let first = changes.len();
        let (inner, why) = self.entry_unmarked(changes, folder, name)?;
        if let Some(why) = why {
            mark(&mut changes[first..], why);
        }
        Ok(inner)
    }

    /// Whether the entry `name` of the host's folder `lower` is a state folder.
    fn is_state_folder_in(&self, lower: &File, name: &OsStr) -> bool {
        // Across a mount, as `fstatat` looked: a root on a filesystem of its own is one.
        matches!(
            Entry::open(lower, Path::new(name)),
            Ok(Some(entry)) if self.guarded.is_state_folder(&entry.fd, &entry.meta)
        )
    }

    /// [`Walk::entry`] unmarked, and why to mark what it found, if it is to be.
    fn entry_unmarked(
        &self,
        changes: &mut Vec<Change>,
        folder: &Folder,
        name: &OsStr,
    ) -> std::io::Result<(Option<Folder>, Option<Forbidden>)> {
        let rel = folder.rel.join(name);
        let in_state = folder.in_state.then_some(Forbidden::Hidden);
        if self.scaffold.contains(&self.tree.layer.vm_path(&rel)) {
            return Ok((None, None));
        }
        let Some(upper) = Entry::open(&folder.upper, Path::new(name))? else {
            return Ok((None, None)); // gone since it was listed
        };
        let lower = match &folder.lower {
            Some(dir) => match Entry::open_on_mount(dir, Path::new(name)) {
                Err(e) if beneath::at_a_mount(&e) => {
                    let inner = self.at_host_mount(changes, folder, name, &upper)?;
                    return Ok((inner, in_state));
                }
                found => found?,
            },
            None => None,
        };
        // A folder of the host the VM deleted, or replaced with something else, holding a
        // state folder: committing that would empty it (review gl27 H1).
        let removes_a_root = |lower: &Entry| match lower.meta.is_dir() && !upper.meta.is_dir() {
            true => self.guarded.holds_state_folder(&lower.fd),
            false => None,
        };
        let why = in_state.or_else(|| {
            let lower = lower.as_ref()?;
            match self.guarded.is_state_folder(&lower.fd, &lower.meta) {
                true => Some(Forbidden::Hidden),
                false => removes_a_root(lower),
            }
        });
        let inner = self.entry_found(changes, folder, &rel, &upper, lower)?;
        Ok((inner, why))
    }

    /// Why a deletion of the host's folder `name` in `lower` is forbidden, if it is (see
    /// [`Guarded::holds_state_folder`]).
    fn holds_state_folder_in(&self, lower: &File, name: &OsStr) -> Option<Forbidden> {
        match beneath::open_dir_on_mount(lower, Path::new(name)) {
            Ok(Some(folder)) => self.guarded.holds_state_folder(&folder),
            _ => None,
        }
    }

    /// [`Walk::entry_unmarked`] of the entry at `rel`, `upper` in the layer, `lower` the
    /// host's if it has one.
    fn entry_found(
        &self,
        changes: &mut Vec<Change>,
        folder: &Folder,
        rel: &Path,
        upper: &Entry,
        lower: Option<Entry>,
    ) -> std::io::Result<Option<Folder>> {
        let name = rel.file_name().unwrap_or_default();
        let rel = rel.to_path_buf();
        let meta = &upper.meta;
        let beyond = folder.beyond;
        if is_whiteout(meta) {
            // Beyond a host mount the VM's deletion is listed (marked) though the lower at
            // hand is not what it deleted from.
            if lower.is_some() || beyond {
                changes.push(self.change(ChangeKind::Deleted, &rel, None, beyond)?);
            }
            return Ok(None);
        }
        let inner = |lower_dir: Option<&File>, hides: bool| -> std::io::Result<Option<Folder>> {
            let Some(child) = beneath::open_dir(&folder.upper, Path::new(name))? else {
                return Ok(None); // replaced since it was opened: nothing to follow
            };
            let (lower_child, beyond) = match lower_dir {
                Some(dir) => match beneath::open_dir_on_mount(dir, Path::new(name)) {
                    Err(e) if beneath::at_a_mount(&e) => (None, true),
                    found => (found?, beyond),
                },
                None => (None, beyond),
            };
            let hides = hides || is_opaque(&child);
            let above = (folder.host, folder.in_state);
            let mut inner =
                Folder::open(rel.clone(), child, lower_child, hides, above, self.guarded)?;
            inner.beyond = beyond;
            Ok(Some(inner))
        };
        match &lower {
            None => {
                let access = new_access(upper, folder.host)?;
                let change = ChangeKind::Added;
                changes.push(self.change_of_access(change, &rel, Some(upper), access, beyond)?);
                if meta.is_dir() {
                    return inner(None, true);
                }
            }
            Some(lower) if meta.is_dir() && lower.meta.is_dir() => {
                let access = access_changes(upper, lower)?;
                if !same_metadata(meta, &lower.meta) || !access.is_empty() {
                    let change = ChangeKind::Modified;
                    let found = self.change_of_access(change, &rel, Some(upper), access, beyond);
                    changes.push(found?);
                }
                return inner(folder.lower.as_ref(), folder.replaced);
            }
            Some(lower) => {
                if !same_entry(upper, lower)? {
                    let access = access_changes(upper, lower)?;
                    let change = ChangeKind::Modified;
                    let found = self.change_of_access(change, &rel, Some(upper), access, beyond);
                    changes.push(found?);
                }
                if meta.is_dir() {
                    // A folder where the host has something else: it hides nothing below.
                    return inner(None, true);
                }
            }
        }
        Ok(None)
    }

    /// The change at entry `name` (`upper`) of `folder` where the base has a host mount (see
    /// [`Forbidden::HostMount`]): the VM saw the base's own folder there, which no lookup
    /// reaches past the mount, so it is compared with nothing. A whiteout is a deletion, any
    /// other entry a modification, each marked, and what a folder holds is walked as new,
    /// each entry marked too.
    fn at_host_mount(
        &self,
        changes: &mut Vec<Change>,
        folder: &Folder,
        name: &OsStr,
        upper: &Entry,
    ) -> std::io::Result<Option<Folder>> {
        let rel = folder.rel.join(name);
        if is_whiteout(&upper.meta) {
            changes.push(self.change(ChangeKind::Deleted, &rel, None, true)?);
            return Ok(None);
        }
        changes.push(self.change(ChangeKind::Modified, &rel, Some(upper), true)?);
        if !upper.meta.is_dir() {
            return Ok(None);
        }
        let Some(child) = beneath::open_dir(&folder.upper, Path::new(name))? else {
            return Ok(None); // replaced since it was opened: nothing to follow
        };
        let above = (folder.host, folder.in_state);
        let mut inner = Folder::open(rel, child, None, true, above, self.guarded)?;
        inner.beyond = true;
        Ok(Some(inner))
    }
}

/// Marks `changes` `why` ([`Forbidden::Hidden`]: found in a state folder or at one, by
/// identity; [`Forbidden::Unsearched`]), unless already refused for another reason.
fn mark(changes: &mut [Change], why: Forbidden) {
    for change in changes {
        if !change.forbidden.is_some_and(Forbidden::refused) {
            change.forbidden = Some(why);
        }
    }
}

/// The error of a walk that ran out of descriptors in the folder `at` (the VM's path) with
/// the folders `open` on its stack: [`too_deep`] when the walk's own descriptors are most of
/// the process's limit, else [`crowded_out`] (the process's other work holds the rest: the
/// web view's connections, other walks), which moving folders in the VM would not help.
fn out_of_descriptors(at: &Path, open: &[Folder]) -> std::io::Error {
    use nix::sys::resource::{getrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or_default();
    let held: u64 = open.iter().map(|f| 1 + u64::from(f.lower.is_some())).sum();
    if held.saturating_mul(2) >= soft {
        too_deep(at, open.len(), (soft, hard))
    } else {
        crowded_out(held, (soft, hard))
    }
}

/// The error of a walk that ran out of descriptors while holding `held` of the process's
/// `limits` (soft, hard): the rest were the process's others'.
fn crowded_out(held: u64, (soft, hard): (u64, u64)) -> std::io::Error {
    std::io::Error::other(format!(
        "this process ran out of descriptors (its open-file limit is {soft}), of which the \
         walk of the VM's layer held only {held}: the rest are held by the process's other \
         work (the web view's connections, other walks); try again once it has less to do, \
         or raise the limit (`ulimit -n N`, up to the hard limit {hard})"
    ))
}

/// The error of a walk that ran out of descriptors at `depth` levels, in the folder `at` (the
/// VM's path): it holds two a level (the layer's folder and the host's), and a VM nests its
/// folders as deep as it likes; a plain "Too many open files" said neither where nor what to do.
fn too_deep(at: &Path, depth: usize, (soft, hard): (u64, u64)) -> std::io::Error {
    // The path can be thousands of levels long: its first ones say where it is.
    let shown: PathBuf = at.components().take(12).collect();
    let more = if at.components().count() > 12 {
        "/…"
    } else {
        ""
    };
    std::io::Error::other(format!(
        "its folders nest {depth} levels deep and more at {}{more}, past the descriptors this \
         process may open (two a level; its open-file limit is {soft}): raise that limit \
         (`ulimit -n N`, up to the hard limit {hard}) and try again, or move those folders \
         higher up inside the VM",
        feather_core::display::escape_path(&shown)
    ))
}

/// The privileges a regular file of the VM's carries (see [`Privilege`]), read from the
/// opened file: its mode, and whether it has a `security.capability` attribute.
fn privileges(entry: &Entry) -> std::io::Result<Vec<Privilege>> {
    use xattr::FileExt;
    let meta = &entry.meta;
    if !meta.is_file() {
        return Ok(Vec::new());
    }
    let mode = meta.mode();
    let executable = mode & 0o111 != 0;
    let mut found = Vec::new();
    if executable && mode & 0o4000 != 0 {
        found.push(Privilege::SetUid);
    }
    // Set-group-ID without group execute marks mandatory locking, not a privilege.
    if mode & 0o2010 == 0o2010 {
        found.push(Privilege::SetGid);
    }
    if entry.reopen()?.get_xattr("security.capability")?.is_some() {
        found.push(Privilege::FileCapabilities);
    }
    Ok(found)
}

/// What the VM changed of who may use an entry the base has (`upper` its version, `lower` the
/// base's): every change of mode, owner, group and POSIX ACLs.
fn access_changes(upper: &Entry, lower: &Entry) -> std::io::Result<Vec<Access>> {
    let (vm, base) = (&upper.meta, &lower.meta);
    let mut found = Vec::new();
    let (from, to) = (base.mode() & 0o7777, vm.mode() & 0o7777);
    // A link's mode is always 0777, and what it points to is judged where it points.
    if from != to && !vm.file_type().is_symlink() {
        found.push(Access::Mode { from, to });
    }
    if base.uid() != vm.uid() {
        found.push(Access::Owner {
            from: base.uid(),
            to: vm.uid(),
        });
    }
    if base.gid() != vm.gid() {
        found.push(Access::Group {
            from: base.gid(),
            to: vm.gid(),
        });
    }
    if acls(upper)? != acls(lower)? {
        found.push(Access::Acl);
    }
    Ok(found)
}

/// What lets others than root write a new file, folder or FIFO of the VM's (`upper`), landing
/// in the base's folder `folder`: anyone may write it; it belongs to another user than that
/// folder's owner, or a group other than root's and the folder's may write it (unless anyone
/// may write the folder, as `/tmp`: any user could have made the entry); or it has an ACL that
/// names a user or group, or a default ACL.
/// Links are judged where they point (`Guarded::judge_link`).
fn new_access(upper: &Entry, folder: HostFolder) -> std::io::Result<Vec<Access>> {
    let meta = &upper.meta;
    if !meta.is_file() && !meta.is_dir() && !meta.file_type().is_fifo() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    let mode = meta.mode() & 0o7777;
    let sticky_folder = meta.is_dir() && mode & 0o1000 != 0;
    if mode & 0o002 != 0 && !sticky_folder {
        found.push(Access::WorldWritable { mode });
    }
    // Root's own entry lets nobody else in, whoever owns the folder.
    let open_folder = folder.mode & 0o002 != 0;
    if meta.uid() != 0 && meta.uid() != folder.uid && !open_folder {
        found.push(Access::OtherOwner {
            owner: meta.uid(),
            folder_owner: folder.uid,
        });
    }
    let group = meta.gid();
    if mode & 0o020 != 0 && group != 0 && group != folder.gid && !open_folder && !sticky_folder {
        found.push(Access::GroupWritable { group, mode });
    }
    let [access_acl, default_acl] = acls(upper)?;
    if access_acl.is_some_and(|acl| names_anyone(&acl)) || default_acl.is_some() {
        found.push(Access::NewAcl);
    }
    Ok(found)
}

/// Whether a `system.posix_acl_access` value (a 4-byte version, then 8-byte entries: tag,
/// permissions, id) names a user or group (ACL_USER 0x02, ACL_GROUP 0x08) beyond the owner,
/// owning group and others that the mode shows. One that cannot be read counts as naming.
fn names_anyone(acl: &[u8]) -> bool {
    let Some(entries) = acl.get(4..) else {
        return true;
    };
    entries.len() % 8 != 0
        || entries
            .chunks(8)
            .any(|e| matches!(u16::from_le_bytes([e[0], e[1]]), 0x02 | 0x08))
}

/// A socket or device node (a whiteout, a 0/0 character device, is not one).
fn is_special(meta: &Metadata) -> bool {
    let kind = meta.file_type();
    kind.is_socket() || kind.is_block_device() || kind.is_char_device() && !is_whiteout(meta)
}

/// The POSIX ACL attributes of a file or folder (none for other entries, which have none).
fn acls(entry: &Entry) -> std::io::Result<[Option<Vec<u8>>; 2]> {
    use xattr::FileExt;
    if !entry.meta.is_file() && !entry.meta.is_dir() {
        return Ok([None, None]);
    }
    let file = entry.reopen()?;
    let read = |name: &str| match file.get_xattr(name) {
        // A filesystem without ACLs has none to differ.
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(None),
        other => other,
    };
    Ok([
        read("system.posix_acl_access")?,
        read("system.posix_acl_default")?,
    ])
}

pub(crate) fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

pub(crate) fn is_opaque(dir: &File) -> bool {
    use xattr::FileExt;
    matches!(dir.get_xattr("trusted.overlay.opaque"), Ok(Some(value)) if value == b"y")
}

fn same_metadata(a: &Metadata, b: &Metadata) -> bool {
    a.mode() == b.mode() && a.uid() == b.uid() && a.gid() == b.gid()
}

/// Whether two non-folder entries are the same to a reader: type, mode, owner, and content or
/// link target.
pub(crate) fn same_entry(a: &Entry, b: &Entry) -> std::io::Result<bool> {
    if !same_metadata(&a.meta, &b.meta) {
        return Ok(false);
    }
    if a.meta.file_type().is_symlink() {
        return Ok(a.link_target()? == b.link_target()?);
    }
    if a.meta.is_file() {
        return Ok(a.meta.len() == b.meta.len() && same_content(&a.reopen()?, &b.reopen()?)?);
    }
    Ok(a.meta.rdev() == b.meta.rdev())
}

fn same_content(mut a: &File, mut b: &File) -> std::io::Result<bool> {
    let (mut buf_a, mut buf_b) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = a.read(&mut buf_a)?;
        if n == 0 {
            return Ok(b.read(&mut buf_b[..1])? == 0);
        }
        b.read_exact(&mut buf_b[..n])?;
        if buf_a[..n] != buf_b[..n] {
            return Ok(false);
        }
    }
}
