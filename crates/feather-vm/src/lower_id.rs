//! What names a folder on its filesystem in any mount namespace and across reboots, for the
//! record of what a VM's layers lie over (`layers::SeenLowers`), and what init tells its
//! keeper it holds beneath each layer (`boot::FromInitBoot::Pinned`). Plain data and the
//! calls that read it, so that the boot messages need nothing else of the layers.

use std::os::fd::AsFd;

use serde::{Deserialize, Serialize};

/// What names a lower folder on its filesystem, in any mount namespace and across reboots,
/// where the filesystem has an id of its own: the filesystem (`statfs` type and id: ext4's and
/// btrfs's from their UUID, a tmpfs's random; FAT's, exFAT's, f2fs's, XFS's, squashfs's and
/// erofs's are only their device number, which another volume in the same slot repeats), its
/// 16-byte volume UUID where it gives one (`FS_IOC_GETFSUUID`, on kernels that have it: XFS,
/// ext4, btrfs (one for all its subvolumes), f2fs, erofs, tmpfs; so an XFS, f2fs or erofs
/// volume is told from another in its slot), and the folder's handle on it
/// (`name_to_handle_at`, mount id aside: its inode and, where the filesystem keeps one,
/// generation, random on tmpfs, ext4 and XFS, so a folder made anew has another). Without a
/// handle, or with neither an id of its own nor a UUID, it tells nothing ([`FolderOn::proves`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderOn {
    pub(crate) kind: i64,
    pub(crate) fsid: u64,
    /// The handle's type and bytes (`TYPE:HEX`); None where the filesystem gives none.
    pub(crate) handle: Option<String>,
    /// The filesystem's volume UUID in hex; None where it gives none, and in a record by a
    /// feather from before it (review lowroots29: XFS was refused for want of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) uuid: Option<String>,
}

impl FolderOn {
    pub(crate) fn of(dir: &impl AsFd) -> std::io::Result<FolderOn> {
        let kind = nix::sys::statfs::fstatfs(dir)?.filesystem_type().0 as i64;
        let fsid = nix::sys::statvfs::fstatvfs(dir)?.filesystem_id();
        let handle = feather_sys::mount::file_handle(dir)
            .ok()
            .map(|(kind, bytes)| format!("{kind}:{}", hex(&bytes)));
        // FUSE gives none, and asking reopens the folder, which a daemon that hangs would hold.
        let uuid = match kind == FUSE_SUPER_MAGIC {
            true => None,
            false => feather_sys::mount::volume_uuid(dir).map(|uuid| hex(&uuid)),
        };
        Ok(FolderOn {
            kind,
            fsid,
            handle,
            uuid,
        })
    }

    /// Whether this, recorded of a folder on the device `dev` (its st_dev), tells that folder
    /// from one on another filesystem: a handle on a filesystem with an id of its own or a
    /// volume UUID. FUSE reports neither (its id 0), and every FUSE mount's root has the same
    /// handle; FAT, exFAT and squashfs report their device number (`huge_encode_dev`, the
    /// st_dev) and no 16-byte UUID, which a volume put in the same slot repeats, with the same
    /// root handle on FAT (review lowers28 M1: drive B in drive A's slot passed for A). XFS's,
    /// f2fs's and erofs's id is their device number too, but their UUID tells the volume (on
    /// a kernel with FS_IOC_GETFSUUID; without it they are refused as FAT is).
    pub(crate) fn proves(&self, dev: u64) -> bool {
        self.handle.is_some() && (self.uuid.is_some() || self.has_an_id_of_its_own(dev))
    }

    /// Whether the filesystem id, recorded of a folder on the device `dev`, names the
    /// filesystem by itself: neither FUSE's 0 nor the device number.
    fn has_an_id_of_its_own(&self, dev: u64) -> bool {
        self.fsid != 0 && self.fsid != dev
    }

    /// Whether the UUID this recorded is not found now (a kernel without FS_IOC_GETFSUUID,
    /// booted since; a reopen through `/proc/self/fd` refused) where nothing else tells the
    /// volume (XFS): then nothing proves the folder either way (review lowroots29 L3: it was
    /// said to be another filesystem). Where the id is the filesystem's own (ext4's, from its
    /// UUID), the rest proves it ([`FolderOn::matches`]).
    pub(crate) fn lost_its_proof(&self, now: &FolderOn, dev: u64) -> bool {
        self.uuid.is_some() && now.uuid.is_none() && !self.has_an_id_of_its_own(dev)
    }

    /// Whether `now`, what names the folder found now, is what this recorded of a folder on
    /// the device `dev`: a recorded UUID must be found again, unless none is found now and
    /// the id is the filesystem's own; a record without one (by a feather from before it, or
    /// of a filesystem without) is proved by the rest
    /// ([`FolderOn::proves`]). Where the recorded id was only the device number and a UUID
    /// was recorded (XFS), the UUID names the volume and the id is not compared: a reboot
    /// that numbers the disks in another order (sdb → sdc, dm-2 → dm-3) changes it (review
    /// lowroots29 M2).
    pub(crate) fn matches(&self, now: &FolderOn, dev: u64) -> bool {
        let uuid = self.uuid.is_none()
            || self.uuid == now.uuid
            || now.uuid.is_none() && self.has_an_id_of_its_own(dev);
        let fsid = self.fsid == now.fsid || (self.uuid.is_some() && self.fsid == dev);
        (self.kind, &self.handle) == (now.kind, &now.handle) && fsid && uuid
    }
}

const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A folder's (st_dev, st_ino).
pub(crate) fn folder_id(dir: &impl AsFd) -> std::io::Result<(u64, u64)> {
    let stat = nix::sys::stat::fstat(dir)?;
    Ok((stat.st_dev, stat.st_ino))
}

/// What init found beneath a layer as it mounted it (`rootfs::assemble`), told to its keeper
/// (`boot::FromInitBoot::Pinned`), or a restoring child as it mounted the restored layers
/// (`snapshot::restore_child`), and which the keeper confirms its record with
/// (`layers::SeenLowers::confirm`). The keeper's record is taken before init's clone (or the
/// restoring child's fork), and the host may mount another filesystem at a layer's place
/// meanwhile, which init then layers (review gl27 L4; for a restore, lowroots29); what names a
/// folder does so in any mount namespace (its mount id would not).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedLower {
    /// The layer's folder name (`layers::escape` of its mount point).
    pub(crate) layer: String,
    /// The folder's (st_dev, st_ino) and what names it; None where it could not be read.
    pub(crate) folder: Option<((u64, u64), FolderOn)>,
    /// The layer lies over an empty folder of feather's, not the base's: a restored layer
    /// whose filesystem the host removed while the restore mounted it.
    #[serde(default)]
    pub(crate) over_nothing: bool,
}

impl PinnedLower {
    /// What `lower`, the folder held open beneath the layer `layer` (its folder name), is.
    pub fn of(layer: String, lower: &impl AsFd) -> PinnedLower {
        let folder = folder_id(lower).and_then(|id| Ok((id, FolderOn::of(lower)?)));
        PinnedLower {
            layer,
            folder: folder.ok(),
            over_nothing: false,
        }
    }

    /// The layer `layer` (its folder name) mounted over nothing of the base's.
    pub fn over_nothing(layer: String) -> PinnedLower {
        PinnedLower {
            layer,
            folder: None,
            over_nothing: true,
        }
    }
}
