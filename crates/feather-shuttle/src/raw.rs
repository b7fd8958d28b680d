//! Every `unsafe` call of feather-shuttle: the three calls of the new mount API that hand a
//! file of one VM to another (nix offers none of them). Each wrapper is the smallest safe
//! interface over one system call.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

// uapi/linux/mount.h
const OPEN_TREE_CLONE: libc::c_uint = 0x01;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
pub const MOUNT_ATTR_RDONLY: u64 = 0x01;
pub const MOUNT_ATTR_NOSUID: u64 = 0x02;
pub const MOUNT_ATTR_NODEV: u64 = 0x04;

/// `struct mount_attr` (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
#[derive(Default)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `open_tree(fd, "", OPEN_TREE_CLONE | AT_EMPTY_PATH)`: a detached bind mount of exactly the
/// file or folder `fd` refers to (no submounts). The caller must be in the mount namespace
/// that holds `fd`'s mount.
pub fn clone_tree(fd: &impl AsFd) -> Result<OwnedFd, Errno> {
    let empty = c"";
    // SAFETY: `fd` is a live descriptor borrowed for the call, `empty` a valid NUL-terminated
    // string that outlives it; the kernel only reads them. On success the return value is a
    // new descriptor that nothing else owns.
    let result = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            fd.as_fd().as_raw_fd(),
            empty.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    let raw = Errno::result(result)?;
    // SAFETY: open_tree returned a fresh descriptor (checked non-negative above), owned by
    // no one else; the cast is lossless for a descriptor number.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as i32) })
}

/// `mount_setattr(tree, "", AT_EMPTY_PATH, {attr_set})`: sets mount flags (read-only,
/// nosuid, nodev) on a mount made by [`clone_tree`].
pub fn set_mount_flags(tree: &impl AsFd, attr_set: u64) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set,
        ..MountAttr::default()
    };
    let empty = c"";
    // SAFETY: `tree` is a live descriptor; `empty` and `attr` live across the call and the
    // size passed is exactly `attr`'s, which the kernel only reads.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_fd().as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(result).map(drop)
}

/// `move_mount(tree, "", point, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)`:
/// attaches the detached mount `tree` on exactly the file or folder `point` refers to (an
/// `O_PATH` descriptor), in the caller's mount namespace: no name is looked up, so nothing a
/// VM renames meanwhile can move where it lands.
pub fn attach_tree(tree: &impl AsFd, point: &impl AsFd) -> Result<(), Errno> {
    let empty = c"";
    // SAFETY: both descriptors are live for the call; `empty` is a valid NUL-terminated
    // string that outlives it, only read by the kernel.
    let result = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_fd().as_raw_fd(),
            empty.as_ptr(),
            point.as_fd().as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    Errno::result(result).map(drop)
}
