//! An imported VM's layer comes from the archive (`restore --import`), which another host, or a
//! VM's own layer, made: every extended attribute in it is its author's choice. It arrives with
//! only what a layer needs (`feather-migrate` `archive::TAR_OPTIONS`), and without the overlay
//! identity of the layer it was copied from: the kernel gives each import an overlay of its own
//! filesystem id, which a Shuttle hand-over's clean-up goes by (security row 70).

use std::path::Path;

use crate::checkpoint_records::archive_of;
use crate::support::{Feather, ScratchBase};

/// The UUID a crafted archive gives its layer: the overlay's filesystem id would be
/// 8888888888888888 (its halves xor-ed).
const CRAFTED_UUID: [u8; 16] = [
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
];

/// The filesystem id of the VM's root, as a process of the VM sees it (`statfs` of `/`).
fn root_fsid(feather: &Feather) -> String {
    let fsid = feather.sh("vm", "stat -f -c %i /").trim().to_owned();
    assert!(!fsid.is_empty(), "the VM's stat said nothing");
    fsid
}

/// `restore vm --import archive` into a new state root named after `label`, over `base`.
fn imported(label: &str, archive: &Path, base: &ScratchBase) -> Feather {
    let elsewhere = Feather::new(label);
    elsewhere.ok(&[
        "restore",
        "vm",
        "--import",
        archive.to_str().unwrap(),
        "--base",
        base.as_str(),
    ]);
    assert_eq!(elsewhere.status("vm"), "running");
    elsewhere
}

/// The overlayfs attribute `name` of `path` below the VM's layer.
fn overlay_attribute(feather: &Feather, path: &str, name: &str) -> Option<Vec<u8>> {
    let at = feather.vm_dir("vm").join("upper").join(path);
    xattr::get(&at, format!("trusted.overlay.{name}")).unwrap()
}

/// Two imports of one export, and an archive crafted with overlayfs's records of the layer
/// (UUID, origin) and its redirects and metacopy marks: each imported VM's overlay has a
/// filesystem id of its own, none the exported VM's or the crafted one, and no record or mark
/// came along. Before, `trusted.overlay.uuid` travelled: both imports had the exported VM's id.
#[test]
fn an_imported_layer_has_an_overlay_id_of_its_own_and_no_overlay_records() {
    let base = ScratchBase::new("import-layer");
    base.write("data/base-file", "the base's\n");
    let feather = Feather::new("import-layer");
    feather.require_criu();
    feather.start_over("vm", &base, &["--net", "none"]);
    // A copy-up: overlayfs records the base's file it came from (`origin`) and marks its folder.
    feather.sh("vm", "echo from the VM >> /data/base-file");
    let source_fsid = root_fsid(&feather);
    let archive = feather.root.join("vm.tar.zst");
    feather.ok(&["checkpoint", "vm", "--export", archive.to_str().unwrap()]);
    for (path, name) in [("", "uuid"), ("data/base-file", "origin")] {
        assert!(
            overlay_attribute(&feather, path, name).is_some(),
            "the VM's layer holds no {name} at {path:?} to leave behind"
        );
    }

    let first = imported("import-layer-1", &archive, &base);
    let second = imported("import-layer-2", &archive, &base);
    let exported_uuid = overlay_attribute(&feather, "", "uuid");

    // A crafted archive of the same VM: its layer's UUID chosen, a folder redirected to the
    // base's /data, a file marked as metacopy, all archived by a tar that keeps every attribute.
    let upper = feather.vm_dir("vm").join("upper");
    xattr::set(&upper, "trusted.overlay.uuid", &CRAFTED_UUID).unwrap();
    std::fs::create_dir(upper.join("redirected")).unwrap();
    xattr::set(
        upper.join("redirected"),
        "trusted.overlay.redirect",
        b"/data",
    )
    .unwrap();
    std::fs::write(upper.join("metacopied"), "").unwrap();
    xattr::set(upper.join("metacopied"), "trusted.overlay.metacopy", b"").unwrap();
    let members = ["config.toml", "state.json", "upper", "mounts", "checkpoint"];
    let crafted = archive_of(&feather, &feather.vm_dir("vm"), &members);
    let third = imported("import-layer-3", &crafted, &base);

    let fsids = [&first, &second, &third].map(root_fsid);
    let mut all = vec![source_fsid.clone()];
    all.extend(fsids.iter().cloned());
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        4,
        "the exported VM's root was {source_fsid}, the imports' {fsids:?}: an import shares an \
         overlay id"
    );
    for (n, vm) in [&first, &second, &third].into_iter().enumerate() {
        let uuid = overlay_attribute(vm, "", "uuid");
        assert!(uuid.is_some(), "import {n}: the kernel made no UUID");
        assert_ne!(uuid, exported_uuid, "import {n}: the exported layer's UUID");
        assert_ne!(
            uuid.as_deref(),
            Some(&CRAFTED_UUID[..]),
            "import {n}: the crafted UUID"
        );
        let origin = overlay_attribute(vm, "data/base-file", "origin");
        assert_eq!(origin, None, "import {n}: the copy-up's origin came along");
        assert_eq!(
            vm.sh("vm", "cat /data/base-file"),
            "the base's\nfrom the VM\n",
            "import {n}: the copied-up file"
        );
    }
    for (path, name) in [("redirected", "redirect"), ("metacopied", "metacopy")] {
        let found = overlay_attribute(&third, path, name);
        assert_eq!(found, None, "the crafted {name} came along");
    }
}
