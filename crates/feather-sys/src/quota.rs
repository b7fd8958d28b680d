//! Project quotas: a cap on the bytes a set of folders may hold, enforced by the filesystem
//! itself (ext4 with the `quota` and `project` features mounted with `prjquota`, xfs mounted
//! with `prjquota`). Every file belongs to a project (an id); a folder with the inherit flag
//! passes its project to whatever is made in it; the quota of a project caps their sum.

use std::os::fd::BorrowedFd;

use nix::errno::Errno;

use crate::raw;

/// Quota type of projects (`PRJQUOTA` in <linux/quota.h>).
const PRJQUOTA: libc::c_int = 2;
/// New files and folders take their parent folder's project.
const FS_XFLAG_PROJINHERIT: u32 = 0x200;
/// Quota limits in `if_dqblk` count blocks of this many bytes.
const QUOTA_BLOCK: u64 = 1024;

/// Ok when the filesystem holding `dir` enforces project quotas now. ESRCH: it has quotas but
/// project quotas are off (not mounted with `prjquota`); ENOSYS or EOPNOTSUPP: it has none.
pub fn enforced(dir: BorrowedFd) -> Result<(), Errno> {
    raw::quotactl_fd_getinfo(dir, PRJQUOTA)
}

fn get(dir: BorrowedFd, project: u32) -> Result<libc::dqblk, Errno> {
    let mut block = zeroed_dqblk();
    raw::quotactl_fd_dqblk(
        dir,
        libc::QCMD(libc::Q_GETQUOTA, PRJQUOTA),
        project,
        &mut block,
    )?;
    Ok(block)
}

fn zeroed_dqblk() -> libc::dqblk {
    libc::dqblk {
        dqb_bhardlimit: 0,
        dqb_bsoftlimit: 0,
        dqb_curspace: 0,
        dqb_ihardlimit: 0,
        dqb_isoftlimit: 0,
        dqb_curinodes: 0,
        dqb_btime: 0,
        dqb_itime: 0,
        dqb_valid: 0,
    }
}

/// Whether `project` has files or limits on the filesystem holding `dir`.
pub fn in_use(dir: BorrowedFd, project: u32) -> Result<bool, Errno> {
    let block = get(dir, project)?;
    Ok(block.dqb_curspace > 0
        || block.dqb_curinodes > 0
        || block.dqb_bhardlimit > 0
        || block.dqb_ihardlimit > 0)
}

/// Bytes the files of `project` hold on the filesystem holding `dir`.
pub fn usage(dir: BorrowedFd, project: u32) -> Result<u64, Errno> {
    get(dir, project).map(|block| block.dqb_curspace)
}

/// Caps `project` at `bytes` (rounded up to the next KiB) on the filesystem holding `dir`;
/// 0 removes the cap. Needs CAP_SYS_ADMIN.
pub fn set_limit(dir: BorrowedFd, project: u32, bytes: u64) -> Result<(), Errno> {
    let mut block = zeroed_dqblk();
    block.dqb_bhardlimit = bytes.div_ceil(QUOTA_BLOCK);
    block.dqb_bsoftlimit = block.dqb_bhardlimit;
    block.dqb_valid = libc::QIF_BLIMITS;
    raw::quotactl_fd_dqblk(
        dir,
        libc::QCMD(libc::Q_SETQUOTA, PRJQUOTA),
        project,
        &mut block,
    )
}

/// Puts the folder `dir` into `project` and has everything made in it inherit the project.
pub fn assign(dir: BorrowedFd, project: u32) -> Result<(), Errno> {
    let mut attr = raw::fs_get_xattr(dir)?;
    if attr.projid == project && attr.xflags & FS_XFLAG_PROJINHERIT != 0 {
        return Ok(());
    }
    attr.projid = project;
    attr.xflags |= FS_XFLAG_PROJINHERIT;
    raw::fs_set_xattr(dir, &attr)
}

/// Puts the plain file `file` into `project` (the inherit flag is a folder's): its blocks are
/// charged to the project from now on, and so are those it gains.
pub fn assign_file(file: BorrowedFd, project: u32) -> Result<(), Errno> {
    let mut attr = raw::fs_get_xattr(file)?;
    if attr.projid == project {
        return Ok(());
    }
    attr.projid = project;
    raw::fs_set_xattr(file, &attr)
}

/// Whether the folder `dir` passes its project to what is made in it.
pub fn inherits(dir: BorrowedFd) -> Result<bool, Errno> {
    raw::fs_get_xattr(dir).map(|attr| attr.xflags & FS_XFLAG_PROJINHERIT != 0)
}

/// The project of the file `fd` is open on.
pub fn project_of(fd: BorrowedFd) -> Result<u32, Errno> {
    raw::fs_get_xattr(fd).map(|attr| attr.projid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// The calls' shapes, on whatever filesystem holds the temporary folder: project 0 and the
    /// inherit flag are accepted even where projects are not, and the quota state is an answer,
    /// not a fault.
    #[test]
    fn a_folder_takes_the_inherit_flag_and_the_quota_state_is_read() {
        let scratch = feather_testkit::ScratchDir::new("quota");
        let path = scratch.0.join("project");
        std::fs::create_dir(&path).unwrap();
        let dir = std::fs::File::open(&path).unwrap();
        let outcome = raw::fs_get_xattr(dir.as_fd()).map(|_| {
            assign(dir.as_fd(), 0).expect("project 0 with the inherit flag");
            let attr = raw::fs_get_xattr(dir.as_fd()).unwrap();
            (attr.projid, attr.xflags & FS_XFLAG_PROJINHERIT != 0)
        });
        let state = enforced(dir.as_fd());
        drop(dir);
        std::fs::remove_dir(&path).unwrap();
        match outcome {
            Ok(attrs) => assert_eq!(attrs, (0, true)),
            // tmpfs and others have no extended attributes of this kind.
            Err(errno) => assert!(matches!(errno, Errno::ENOTTY | Errno::EOPNOTSUPP)),
        }
        if let Err(errno) = state {
            assert!(
                matches!(errno, Errno::ESRCH | Errno::ENOSYS | Errno::EOPNOTSUPP),
                "{errno}"
            );
        }
    }
}
