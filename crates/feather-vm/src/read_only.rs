//! `create --ro PATH`: paths of the base a VM sees as read-only bind mounts of the base's own
//! files, not through its layer. A lookup there costs what it costs on the host (through the
//! overlay every path component's permission is checked on two inodes and every open opens a
//! second file: docs/design.md, "The overlay's cost per file"), a write fails with EROFS, and
//! nothing there ever reaches the layer, so `diff` and `commit` have nothing to show under it.
//!
//! A path is checked once, when the VM is created, and recorded as the VM sees it: absolute,
//! without `..`, reached in the base without following any symbolic link (a link could lead
//! out of the base), outside the folders the VM gets its own of (`/proc`, `/sys`, `/dev`,
//! `/run`) and outside every folder hidden from VMs (every state root's folders). A folder
//! hidden from VMs that lies *under* a read-only path stays hidden: the recipe hides the state
//! folders after it has bound the read-only paths. At each start the path is opened the same
//! way again (`rootfs::bind_read_only`), so a link put there since cannot steer the bind.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use feather_core::Error;
use nix::fcntl::OFlag;

use crate::hiding::MOUNT_POINTS;

/// The read-only paths `requested` (as typed) for a VM over `base`, checked and in the form
/// the VM's config records; `hidden` are the host folders no VM may see.
pub fn resolve(
    base: &Path,
    requested: &[PathBuf],
    hidden: &[PathBuf],
) -> Result<Vec<PathBuf>, Error> {
    let mut paths: Vec<PathBuf> = Vec::new();
    for path in requested {
        let checked = check(base, path, hidden)?;
        if !paths.contains(&checked) {
            paths.push(checked);
        }
    }
    Ok(paths)
}

fn check(base: &Path, path: &Path, hidden: &[PathBuf]) -> Result<PathBuf, Error> {
    let refuse = |why: String| Error::InvalidValue {
        what: "--ro",
        value: path.display().to_string(),
        why,
    };
    if !path.is_absolute() {
        return Err(refuse(
            "give the path as the VM sees it, from its root, e.g. /usr".into(),
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(refuse("give the path without `..`".into()));
    }
    let rel: PathBuf = path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    let Some(first) = rel.components().next() else {
        return Err(refuse(
            "the whole root cannot be read-only (the VM must write somewhere): name folders \
             such as /usr"
                .into(),
        ));
    };
    if MOUNT_POINTS.iter().any(|m| first.as_os_str() == *m) {
        return Err(refuse(format!(
            "the VM gets a /{} of its own; nothing of the base is seen there",
            first.as_os_str().to_string_lossy()
        )));
    }
    let host_path = base.join(&rel);
    if let Some(folder) = hidden_by(&host_path, hidden) {
        return Err(refuse(format!(
            "it lies in {}, which feather hides from every VM (its state)",
            folder.display()
        )));
    }
    let opened = open_in_base(base, &rel).map_err(|e| {
        refuse(match e.raw_os_error() {
            Some(libc::ELOOP) => format!(
                "a symbolic link is on the way in the base {}: give the path it leads to \
                 (`readlink -f`), which must lie in the base",
                base.display()
            ),
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => {
                format!(
                    "there is no such file or folder in the base {}",
                    base.display()
                )
            }
            _ => format!("cannot open it in the base {}: {e}", base.display()),
        })
    })?;
    // Another name for a hidden folder (the host bound a state folder elsewhere) is refused
    // too: what is compared is the folder itself.
    let meta = std::fs::File::from(opened).metadata().map_err(|e| {
        refuse(format!(
            "cannot read it in the base {}: {e}",
            base.display()
        ))
    })?;
    if let Some(folder) = hidden.iter().find(|h| {
        std::fs::metadata(h).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
    }) {
        return Err(refuse(format!(
            "it is {}, which feather hides from every VM (its state)",
            folder.display()
        )));
    }
    Ok(Path::new("/").join(rel))
}

/// The hidden folder `host_path` is or lies in, if any.
fn hidden_by<'a>(host_path: &Path, hidden: &'a [PathBuf]) -> Option<&'a PathBuf> {
    hidden.iter().find(|folder| host_path.starts_with(folder))
}

/// Opens `rel` in `base` (a path the host chose) without following any link and without
/// leaving it. A link as the last component is refused too (ELOOP): `O_PATH` would open the
/// link itself.
pub(crate) fn open_in_base(base: &Path, rel: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    let base = feather_sys::beneath::open_root(base)?;
    let opened = feather_sys::beneath::open_beneath(&base, rel, OFlag::O_PATH)?;
    let stat = nix::sys::stat::fstat(&opened)?;
    if stat.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
    }
    Ok(opened)
}

/// Whether the VM path `path` is at or under one of the read-only paths `read_only`.
pub fn covers(read_only: &[PathBuf], path: &Path) -> bool {
    read_only.iter().any(|ro| path.starts_with(ro))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(base: &Path, path: &str, hidden: &[PathBuf]) -> String {
        resolve(base, &[PathBuf::from(path)], hidden)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_path_is_recorded_as_the_vm_sees_it() {
        let base = Path::new("/");
        let paths = [PathBuf::from("/usr/"), "/usr".into(), "/etc/./".into()];
        assert_eq!(
            resolve(base, &paths, &[]).unwrap(),
            vec![PathBuf::from("/usr"), PathBuf::from("/etc")]
        );
    }

    #[test]
    fn paths_the_vm_must_not_see_through_are_refused_with_the_reason() {
        let base = Path::new("/");
        let hidden = [PathBuf::from("/var/lib/feather")];
        assert!(refused(base, "usr", &[]).contains("from its root"));
        assert!(refused(base, "/usr/../etc", &[]).contains("without `..`"));
        assert!(refused(base, "/", &[]).contains("whole root"));
        for own in ["/proc", "/sys/fs", "/dev", "/run/user"] {
            assert!(refused(base, own, &[]).contains("of its own"), "{own}");
        }
        assert!(refused(base, "/var/lib/feather", &hidden).contains("hides from every VM"));
        assert!(refused(base, "/var/lib/feather/vms", &hidden).contains("hides from every VM"));
        assert!(refused(base, "/no/such/folder", &[]).contains("no such file"));
    }

    #[test]
    fn a_link_on_the_way_is_refused_and_named() {
        let scratch = feather_testkit::ScratchDir::new("ro");
        let dir = scratch.0.clone();
        std::fs::create_dir_all(dir.join("real")).unwrap();
        let _ = std::os::unix::fs::symlink("/etc", dir.join("out"));
        let _ = std::os::unix::fs::symlink("real", dir.join("inside"));
        let out = refused(&dir, "/out", &[]);
        let inside = refused(&dir, "/inside", &[]);
        assert_eq!(
            resolve(&dir, &[PathBuf::from("/real")], &[]).unwrap(),
            vec![PathBuf::from("/real")]
        );
        assert!(out.contains("symbolic link"), "{out}");
        assert!(inside.contains("symbolic link"), "{inside}");
    }
}
