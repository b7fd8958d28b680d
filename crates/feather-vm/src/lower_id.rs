//! What names a folder on its filesystem in any mount namespace and across reboots, for the
//! record of what a VM's layers lie over (`layers::SeenLowers`), and what init tells its
//! keeper it holds beneath each layer (`boot::FromInitBoot::Pinned`). Plain data and the
//! calls that read it, so that the boot messages need nothing else of the layers.

use std::os::fd::AsFd;

use serde::{Deserialize, Serialize};

/// What names a lower folder on its filesystem, in any mount namespace and across reboots,
/// where the filesystem has an id of its own: the filesystem (`statfs` type and id: ext4's and
/// btrfs's from their UUID, a tmpfs's random; FAT's, exFAT's, f2fs's, XFS's, squashfs's and
/// erofs's are only their device number, which another volume in the same slot repeats, so
/// those tell nothing, [`FolderOn::proves`]) and the folder's handle on it (`name_to_handle_at`, mount id aside: its inode and, where
/// the filesystem keeps one, generation, random on tmpfs and ext4, so a folder made anew has
/// another).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderOn {
    pub(crate) kind: i64,
    pub(crate) fsid: u64,
    /// The handle's type and bytes (`TYPE:HEX`); None where the filesystem gives none.
    pub(crate) handle: Option<String>,
}

impl FolderOn {
    pub(crate) fn of(dir: &impl AsFd) -> std::io::Result<FolderOn> {
        let kind = nix::sys::statfs::fstatfs(dir)?.filesystem_type().0 as i64;
        let fsid = nix::sys::statvfs::fstatvfs(dir)?.filesystem_id();
        let handle = feather_sys::mount::file_handle(dir)
            .ok()
            .map(|(kind, bytes)| {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                format!("{kind}:{hex}")
            });
        Ok(FolderOn { kind, fsid, handle })
    }

    /// Whether this, recorded of a folder on the device `dev` (its st_dev), tells that folder
    /// from one on another filesystem: a handle on a filesystem with an id of its own. FUSE
    /// reports none (0), and every FUSE mount's root has the same handle; FAT, exFAT, f2fs, XFS,
    /// squashfs and erofs report their device number (`huge_encode_dev`, the st_dev), which a
    /// volume put in the same slot repeats, with the same root handle on FAT (review
    /// lowers28 M1: drive B in drive A's slot passed for A).
    pub(crate) fn proves(&self, dev: u64) -> bool {
        self.handle.is_some() && self.fsid != 0 && self.fsid != dev
    }
}

/// A folder's (st_dev, st_ino).
pub(crate) fn folder_id(dir: &impl AsFd) -> std::io::Result<(u64, u64)> {
    let stat = nix::sys::stat::fstat(dir)?;
    Ok((stat.st_dev, stat.st_ino))
}

/// What init found beneath a layer as it mounted it (`rootfs::assemble`), told to its keeper
/// (`boot::FromInitBoot::Pinned`), which confirms the record with it
/// (`layers::SeenLowers::confirm`). The keeper's record is taken before init's clone, and the host
/// may mount another filesystem at a layer's place meanwhile, which init then layers (review
/// gl27 L4); what names a folder does so in any mount namespace (its mount id would not).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedLower {
    /// The layer's folder name (`layers::escape` of its mount point).
    pub(crate) layer: String,
    /// The folder's (st_dev, st_ino) and what names it; None where init could not read them.
    pub(crate) folder: Option<((u64, u64), FolderOn)>,
}

impl PinnedLower {
    /// What `lower`, the folder init holds open beneath the layer `layer` (its folder name),
    /// is.
    pub fn of(layer: String, lower: &impl AsFd) -> PinnedLower {
        let folder = folder_id(lower).and_then(|id| Ok((id, FolderOn::of(lower)?)));
        PinnedLower {
            layer,
            folder: folder.ok(),
        }
    }
}
