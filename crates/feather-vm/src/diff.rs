//! What a VM changed, read from its layers: every path where the VM's view differs from the
//! host's. `commit` applies exactly this list.
//!
//! overlayfs records changes as plain files in the upper layer: a copied-up or new file, a
//! whiteout (a 0:0 character device) for a deletion, and an "opaque" directory for a folder
//! that was removed and made anew, which hides everything beneath it in the lower layer.

use std::fs::{self, Metadata};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use feather_core::VmConfig;
use serde::Serialize;

use crate::layers::Layer;

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

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// The path as the VM sees it.
    pub path: PathBuf,
    /// Where the VM's version is (absent for a deletion, where it is the whiteout).
    #[serde(skip)]
    pub upper: PathBuf,
    /// The host path the change would be applied to.
    #[serde(skip)]
    pub lower: PathBuf,
}

/// Every change in every layer, sorted by path (a folder before what it holds).
pub fn diff(layers: &[Layer], config: &VmConfig) -> std::io::Result<Vec<Change>> {
    let mut changes = Vec::new();
    for layer in layers {
        walk(layer, config, &mut changes, Path::new(""), false)?;
    }
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(changes)
}

/// Walks one folder of the upper layer. `replaced`: the folder hides its lower counterpart
/// entirely (it or an ancestor is opaque, or new), so lower entries it lacks are deletions.
fn walk(
    layer: &Layer,
    config: &VmConfig,
    changes: &mut Vec<Change>,
    rel: &Path,
    replaced: bool,
) -> std::io::Result<()> {
    let upper_dir = layer.upper.join(rel);
    let mut names: Vec<_> = fs::read_dir(&upper_dir)?
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in &names {
        let rel_child = rel.join(name);
        let vm_path = layer.vm_path(&rel_child);
        if config.scaffold.contains(&vm_path) {
            continue;
        }
        let upper = layer.upper.join(&rel_child);
        let lower = layer.lower_path(&rel_child);
        let upper_meta = fs::symlink_metadata(&upper)?;
        let lower_meta = lstat(&lower)?;
        let change = |kind| Change {
            kind,
            path: vm_path.clone(),
            upper: upper.clone(),
            lower: lower.clone(),
        };
        if is_whiteout(&upper_meta) {
            if lower_meta.is_some() {
                changes.push(change(ChangeKind::Deleted));
            }
            continue;
        }
        match (&lower_meta, upper_meta.is_dir()) {
            (None, _) => {
                changes.push(change(ChangeKind::Added));
                if upper_meta.is_dir() {
                    walk(layer, config, changes, &rel_child, true)?;
                }
            }
            (Some(lower_meta), true) if lower_meta.is_dir() => {
                if !same_metadata(&upper_meta, lower_meta) {
                    changes.push(change(ChangeKind::Modified));
                }
                let hides_lower = replaced || is_opaque(&upper);
                walk(layer, config, changes, &rel_child, hides_lower)?;
            }
            (Some(lower_meta), _) => {
                if !same_entry(&upper, &upper_meta, &lower, lower_meta)? {
                    changes.push(change(ChangeKind::Modified));
                }
                if upper_meta.is_dir() {
                    walk(layer, config, changes, &rel_child, true)?;
                }
            }
        }
    }
    if replaced {
        let lower_dir = layer.lower_path(rel);
        if let Ok(entries) = fs::read_dir(&lower_dir) {
            let mut hidden: Vec<_> = entries
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| !names.contains(n))
                .collect();
            hidden.sort();
            for name in hidden {
                let rel_child = rel.join(&name);
                changes.push(Change {
                    kind: ChangeKind::Deleted,
                    path: layer.vm_path(&rel_child),
                    upper: layer.upper.join(&rel_child),
                    lower: lower_dir.join(&name),
                });
            }
        }
    }
    Ok(())
}

pub(crate) fn lstat(path: &Path) -> std::io::Result<Option<Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

pub(crate) fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(dir: &Path) -> bool {
    matches!(xattr::get(dir, "trusted.overlay.opaque"), Ok(Some(value)) if value == b"y")
}

fn same_metadata(a: &Metadata, b: &Metadata) -> bool {
    a.mode() == b.mode() && a.uid() == b.uid() && a.gid() == b.gid()
}

/// Whether two non-folder entries are the same to a reader: type, mode, owner, and content or
/// link target.
pub(crate) fn same_entry(
    a: &Path,
    a_meta: &Metadata,
    b: &Path,
    b_meta: &Metadata,
) -> std::io::Result<bool> {
    if !same_metadata(a_meta, b_meta) {
        return Ok(false);
    }
    if a_meta.file_type().is_symlink() {
        return Ok(fs::read_link(a)? == fs::read_link(b)?);
    }
    if a_meta.is_file() {
        return Ok(a_meta.len() == b_meta.len() && same_content(a, b)?);
    }
    Ok(a_meta.rdev() == b_meta.rdev())
}

fn same_content(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (mut a, mut b) = (fs::File::open(a)?, fs::File::open(b)?);
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
