//! A checkpoint's records (`layers.json`, its `format`) travel with it: in the VM's folder, in
//! an archive `restore --import` takes from another host. A restore derives host folders from
//! the names in `layers.json` (a layer's folders, the folders of the tmpfs at
//! `/sys/fs/cgroup`), so every entry is checked as it is read, and a format this feather does
//! not know is refused, before anything is made, removed or imported (security row 65).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::support::{assert_no_mount_under, Feather, ScratchBase};

const MARKER: &str = "left alone";

#[test]
fn layers_json_naming_places_outside_the_vm_is_refused_at_restore_and_import() {
    let (feather, base) = checkpointed_vm("records");
    let vm_dir = feather.vm_dir("vm");
    let list = vm_dir.join("checkpoint/layers.json");
    let original = fs::read(&list).unwrap();
    let outside = Outside::new(&feather);
    let target = outside.made.to_str().unwrap().to_owned();
    // Up from the tmpfs folder of the VM's run folder to `/`, then down to the target.
    let climbed = format!("{}{}", "../".repeat(40), target.trim_start_matches('/'));

    let doctored: Vec<(&str, Value)> = vec![
        // Without the fix the restoring keeper made these folders on the host (as root).
        (
            "an absolute cgroup folder",
            with_cgroup_folder(&original, &target),
        ),
        (
            "a climbing cgroup folder",
            with_cgroup_folder(&original, &climbed),
        ),
        (
            "a layer climbing out",
            with_entry(
                &original,
                json!({"key": "feather-layer-9", "mount_point": format!("/mnt/{climbed}")}),
            ),
        ),
        (
            "a layer at an empty name",
            with_entry(
                &original,
                json!({"key": "feather-layer-9", "mount_point": "/mnt//x"}),
            ),
        ),
        ("a duplicate", with_duplicate(&original)),
    ];
    for (what, records) in &doctored {
        fs::write(&list, serde_json::to_vec_pretty(records).unwrap()).unwrap();
        let outcome = feather.run(&["restore", "vm"]);
        outside.assert_untouched(what);
        assert!(
            outcome.code != 0
                && outcome
                    .stderr
                    .contains("its checkpoint's layers.json: entry")
                && outcome.stderr.contains("nothing was made or restored"),
            "{what}: the restore names the file, the entry and what to do: {outcome:?}"
        );
        assert_no_mount_under(&vm_dir);
        assert_eq!(feather.status("vm"), "checkpointed", "{what}");

        // The same checkpoint in a hand-made archive, as another host would send it.
        let archive = hand_made_archive(&feather, &vm_dir);
        let elsewhere = Feather::new("records-import");
        let refused = elsewhere.fails(&import_over(&archive, &base));
        let named = format!("layers.json in {}: entry", archive.display());
        assert!(
            refused.contains(&named) && refused.contains("nothing was imported"),
            "{what}: the import names the archive, the entry and what to do: {refused}"
        );
        assert_eq!(
            elsewhere.ok(&["ls", "--json"]).trim(),
            "[]",
            "{what}: imported"
        );
        outside.assert_untouched(what);
    }

    fs::write(&list, &original).unwrap();
    feather.ok(&["restore", "vm"]);
    assert_eq!(feather.sh("vm", "echo back").trim(), "back");
}

/// A layer's lower folder is the base's folder at its mount point: one at or beneath a state
/// root's folder would mount an overlay of that root (other VMs' layers) into the restored VM,
/// which a start never does (mounts in state folders are no VM's layers) and the VM's hiding
/// covers only in a layer above it (review rev25 L1). Refused at restore and import alike.
#[test]
fn a_layer_over_a_state_root_is_refused_at_restore_and_import() {
    let (feather, base) = checkpointed_vm("records-state");
    // A second state root inside the base, registered as any root is when first used.
    fs::create_dir_all(base.file("srv/other")).unwrap();
    let other = Feather::at(base.file("srv/other"));
    other.ok(&["ls"]);
    let vm_dir = feather.vm_dir("vm");
    let list = vm_dir.join("checkpoint/layers.json");
    let original = fs::read(&list).unwrap();
    for point in ["/srv/other", "/srv/other/vms"] {
        let records = with_entry(
            &original,
            json!({"key": "feather-layer-9", "mount_point": point}),
        );
        fs::write(&list, serde_json::to_vec_pretty(&records).unwrap()).unwrap();
        let outcome = feather.run(&["restore", "vm"]);
        assert!(
            outcome.code != 0
                && outcome
                    .stderr
                    .contains("its checkpoint's layers.json: entry")
                && outcome.stderr.contains("a state folder of this host's")
                && outcome.stderr.contains("nothing was made or restored"),
            "{point}: the restore names the entry and why: {outcome:?}"
        );
        assert_no_mount_under(&vm_dir);
        assert_eq!(feather.status("vm"), "checkpointed", "{point}");

        let archive = hand_made_archive(&feather, &vm_dir);
        let elsewhere = Feather::new("records-state-import");
        let refused = elsewhere.fails(&import_over(&archive, &base));
        assert!(
            refused.contains("a state folder of this host's")
                && refused.contains("nothing was imported"),
            "{point}: the import names why: {refused}"
        );
        assert_eq!(elsewhere.ok(&["ls", "--json"]).trim(), "[]", "{point}");
    }
    fs::write(&list, &original).unwrap();
}

#[test]
fn a_checkpoint_of_a_newer_format_is_refused_and_an_unversioned_one_restores() {
    let (feather, base) = checkpointed_vm("format");
    let vm_dir = feather.vm_dir("vm");
    let format = vm_dir.join("checkpoint/format");
    assert_eq!(
        fs::read_to_string(&format).unwrap(),
        "2\n",
        "a dump names its format"
    );

    fs::write(&format, "3\n").unwrap();
    let refused = feather.fails(&["restore", "vm"]);
    assert!(
        refused.contains("its checkpoint's format: format 3: written by a newer feather")
            && refused.contains("restore it with a feather as new as the one that took it"),
        "{refused}"
    );
    assert_eq!(feather.status("vm"), "checkpointed");
    let archive = hand_made_archive(&feather, &vm_dir);
    let elsewhere = Feather::new("format-import");
    let refused = elsewhere.fails(&import_over(&archive, &base));
    assert!(
        refused.contains(&format!("format in {}: format 3", archive.display()))
            && refused.contains("import it with a feather as new as the one that exported it"),
        "{refused}"
    );
    assert_eq!(elsewhere.ok(&["ls", "--json"]).trim(), "[]");

    // A checkpoint of a feather before the format file is read as it always was.
    fs::remove_file(&format).unwrap();
    feather.ok(&["restore", "vm"]);
    assert_eq!(feather.sh("vm", "echo back").trim(), "back");
}

#[test]
fn an_archive_whose_records_or_layers_are_not_what_an_export_makes_is_refused() {
    let (feather, base) = checkpointed_vm("shape");
    let vm_dir = feather.vm_dir("vm");
    let outside = Outside::new(&feather);
    let crafted = feather.root.join("crafted");
    let copy = |what: &str| {
        let status = Command::new("cp")
            .args(["-a", "--"])
            .arg(vm_dir.join(what))
            .arg(&crafted)
            .status()
            .unwrap();
        assert!(status.success(), "copied {what}");
    };
    let cases: [(&str, &dyn Fn()); 3] = [
        // Without the check the imported VM's layer was the host folder the link names.
        ("a link at upper", &|| {
            std::os::unix::fs::symlink(&outside.dir, crafted.join("upper")).unwrap()
        }),
        // Without the check the import waited for a writer for ever.
        ("a FIFO for the format", &|| {
            let format = crafted.join("checkpoint/format");
            fs::remove_file(&format).unwrap();
            nix::unistd::mkfifo(&format, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        }),
        ("a member no export holds", &|| {
            fs::create_dir(crafted.join("work")).unwrap();
            std::os::unix::fs::symlink(&outside.dir, crafted.join("work/link")).unwrap()
        }),
    ];
    for (what, craft) in cases {
        let _ = fs::remove_dir_all(&crafted);
        fs::create_dir(&crafted).unwrap();
        for member in ["config.toml", "state.json", "checkpoint"] {
            copy(member);
        }
        craft();
        let archive = archive_of(
            &feather,
            &crafted,
            &["config.toml", "state.json", "upper", "checkpoint", "work"],
        );
        let elsewhere = Feather::new("shape-import");
        let refused = elsewhere.fails(&import_over(&archive, &base));
        assert!(
            refused.contains("made by hand or altered; nothing was imported"),
            "{what}: the import says what is wrong: {refused}"
        );
        assert_eq!(
            elsewhere.ok(&["ls", "--json"]).trim(),
            "[]",
            "{what}: imported"
        );
        outside.assert_untouched(what);
    }
    let _ = fs::remove_dir_all(&crafted);
}

/// A checkpointed VM `vm` in a new state root, over a new base.
fn checkpointed_vm(label: &str) -> (Feather, ScratchBase) {
    let feather = Feather::new(label);
    feather.require_criu();
    let base = ScratchBase::new(label);
    feather.start_over("vm", &base, &["--net", "none"]);
    feather.ok(&["checkpoint", "vm"]);
    (feather, base)
}

/// A host folder outside every VM, holding a marker: nothing may be made or removed in it.
struct Outside {
    dir: PathBuf,
    made: PathBuf,
}

impl Outside {
    fn new(feather: &Feather) -> Outside {
        let dir = feather.root.join("outside");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("marker"), MARKER).unwrap();
        let made = dir.join("made");
        Outside { dir, made }
    }

    fn assert_untouched(&self, what: &str) {
        assert!(!self.made.exists(), "{what}: a folder was made outside");
        assert_eq!(
            fs::read_to_string(self.dir.join("marker")).ok().as_deref(),
            Some(MARKER),
            "{what}: the marker outside was removed"
        );
    }
}

fn records(original: &[u8]) -> Vec<Value> {
    serde_json::from_slice(original).unwrap()
}

/// The records with `folder` added to the folders of the tmpfs at `/sys/fs/cgroup`.
fn with_cgroup_folder(original: &[u8], folder: &str) -> Value {
    let mut entries = records(original);
    let top = entries
        .iter_mut()
        .find(|e| e["key"] == "feather-cgroup-top")
        .expect("the checkpoint lists the tmpfs at /sys/fs/cgroup");
    top["cgroup_top"]
        .as_array_mut()
        .unwrap()
        .push(json!(folder));
    Value::Array(entries)
}

fn with_entry(original: &[u8], entry: Value) -> Value {
    let mut entries = records(original);
    entries.push(entry);
    Value::Array(entries)
}

/// The records with the first cgroup hierarchy listed twice, under another key.
fn with_duplicate(original: &[u8]) -> Value {
    let mut entries = records(original);
    let mut copy = entries
        .iter()
        .find(|e| e["cgroup_services"] == true)
        .expect("the checkpoint lists a cgroup hierarchy")
        .clone();
    copy["key"] = json!("feather-cgroup-99");
    entries.push(copy);
    Value::Array(entries)
}

/// `restore vm --import archive` over the VM's own base, which the receiver names (row 66).
fn import_over<'a>(archive: &'a Path, base: &'a ScratchBase) -> [&'a str; 6] {
    let archive = archive.to_str().unwrap();
    [
        "restore",
        "vm",
        "--import",
        archive,
        "--base",
        base.as_str(),
    ]
}

/// The VM's folder as an archive `restore --import` takes, made with tar as feather makes it.
fn hand_made_archive(feather: &Feather, vm_dir: &Path) -> PathBuf {
    let members = ["config.toml", "state.json", "upper", "mounts", "checkpoint"];
    archive_of(feather, vm_dir, &members)
}

/// Those of `members` that are in `dir`, archived with tar as feather archives a VM's folder.
pub(crate) fn archive_of(feather: &Feather, dir: &Path, members: &[&str]) -> PathBuf {
    let archive = feather.root.join("hand-made.tar.zst");
    let _ = fs::remove_file(&archive);
    let status = Command::new("tar")
        .args([
            "--create",
            "--zstd",
            "--numeric-owner",
            "--xattrs",
            "--file",
        ])
        .arg(&archive)
        .arg("--directory")
        .arg(dir)
        .args(
            members
                .iter()
                .filter(|member| dir.join(member).symlink_metadata().is_ok()),
        )
        .status()
        .unwrap();
    assert!(status.success(), "tar made the archive");
    archive
}
