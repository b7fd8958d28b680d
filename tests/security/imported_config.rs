//! An imported VM's `config.toml` comes from the archive (`restore --import`) or the sending
//! host (`feather serve`), and names things of the receiving host: the tree the VM runs over,
//! paths of it seen read-only, ports on every address, tags policy rules select VMs by, user
//! namespaces. Each is accepted only when it is what the receiving root chose (`/`, or the
//! `--base`, `--allow-userns`, `--allow-publish`, `--tag` it gives), everything else refused
//! naming the field and what to do, before anything is imported (security row 66).
//! The archive's layer folders of filesystems under the base (`mounts/<layer>/{upper,work}`)
//! must be folders, in the archive and wherever a start or restore mounts them (row 65).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::checkpoint_records::archive_of;
use crate::support::{assert_no_mount_under, Feather, ScratchBase, ScratchDir, TestSubnet};

/// An archive of the checkpointed VM in `vm_dir` whose config `edit` changed.
fn crafted(feather: &Feather, vm_dir: &Path, edit: impl FnOnce(&mut toml::Table)) -> PathBuf {
    crafted_text(feather, vm_dir, |text| {
        let mut config: toml::Table = toml::from_str(text).unwrap();
        edit(&mut config);
        toml::to_string(&config).unwrap()
    })
}

/// An archive of the checkpointed VM in `vm_dir` whose config.toml is what `edit` makes of it.
fn crafted_text(feather: &Feather, vm_dir: &Path, edit: impl FnOnce(&str) -> String) -> PathBuf {
    crafted_folder(feather, vm_dir, |crafted| {
        let path = crafted.join("config.toml");
        let text = edit(&fs::read_to_string(&path).unwrap());
        fs::write(&path, text).unwrap();
    })
}

/// An archive of the checkpointed VM in `vm_dir`, its folder as `edit` leaves it.
fn crafted_folder(feather: &Feather, vm_dir: &Path, edit: impl FnOnce(&Path)) -> PathBuf {
    let crafted = feather.root.join("crafted");
    let _ = fs::remove_dir_all(&crafted);
    fs::create_dir(&crafted).unwrap();
    for member in ["config.toml", "state.json", "upper", "mounts", "checkpoint"] {
        if vm_dir.join(member).exists() {
            let status = Command::new("cp")
                .args(["-a", "--"])
                .arg(vm_dir.join(member))
                .arg(&crafted)
                .status()
                .unwrap();
            assert!(status.success(), "copied {member}");
        }
    }
    edit(&crafted);
    let members = ["config.toml", "state.json", "upper", "mounts", "checkpoint"];
    let archive = archive_of(feather, &crafted, &members);
    fs::remove_dir_all(&crafted).unwrap();
    archive
}

fn set(config: &mut toml::Table, key: &str, value: impl Into<toml::Value>) {
    config.insert(key.into(), value.into());
}

fn network(config: &mut toml::Table) -> &mut toml::Table {
    config
        .entry("network")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .unwrap()
}

/// A VM over `base`, checkpointed in a state root of its own.
fn checkpointed_vm(label: &str, base: &ScratchBase) -> Feather {
    let feather = Feather::new(label);
    feather.require_criu();
    feather.start_over("vm", base, &["--net", "none"]);
    feather.ok(&["checkpoint", "vm"]);
    feather
}

/// Imports `archive` as VM `vm` with `accepting` flags; asserts it is refused with a message
/// holding each of `said`, and that nothing was imported.
fn refused(elsewhere: &Feather, archive: &Path, accepting: &[&str], said: &[&str], what: &str) {
    let mut args = vec!["restore", "vm", "--import", archive.to_str().unwrap()];
    args.extend_from_slice(accepting);
    let outcome = elsewhere.run(&args);
    assert_ne!(
        outcome.code, 0,
        "{what}: imported, printed {}",
        outcome.stdout
    );
    for words in said {
        assert!(
            outcome.stderr.contains(words),
            "{what}: the refusal says {words:?}: {}",
            outcome.stderr
        );
    }
    assert_eq!(
        elsewhere.ok(&["ls", "--json"]).trim(),
        "[]",
        "{what}: imported"
    );
}

#[test]
fn an_imported_vm_runs_over_no_host_tree_the_receiver_did_not_name() {
    let base = ScratchBase::new("import-base");
    let feather = checkpointed_vm("import-base", &base);
    let vm_dir = feather.vm_dir("vm");
    let elsewhere = Feather::new("import-base-dst");
    // A host tree the receiving root never chose: a folder with a marker, as `/root` would be.
    let host_tree = ScratchBase::new("import-host-tree");
    let archive = crafted(&feather, &vm_dir, |config| {
        set(config, "base", host_tree.as_str())
    });
    let expected = ["config.toml's base is", host_tree.as_str(), "--base"];
    refused(&elsewhere, &archive, &[], &expected, "another tree");
    // Another tree than the one the receiver names is refused as well.
    let named = ["--base", base.as_str()];
    refused(
        &elsewhere,
        &archive,
        &named,
        &expected,
        "another tree than --base",
    );

    // The VM's own base, exported as it is: refused until the receiver names that tree, then
    // restored and running over it.
    let archive = feather.root.join("vm.tar.zst");
    feather.ok(&["restore", "vm"]);
    feather.ok(&["checkpoint", "vm", "--export", archive.to_str().unwrap()]);
    let said = [
        "config.toml's base is",
        base.as_str(),
        "runs imported VMs over /",
    ];
    refused(&elsewhere, &archive, &[], &said, "its own base, unnamed");
    let mut args = vec!["restore", "vm", "--import", archive.to_str().unwrap()];
    args.extend_from_slice(&named);
    elsewhere.ok(&args);
    assert_eq!(elsewhere.status("vm"), "running");
    assert_eq!(elsewhere.sh("vm", "echo back").trim(), "back");
}

#[test]
fn paths_and_settings_no_create_makes_are_refused() {
    let base = ScratchBase::new("import-fields");
    // A link in the base to a host folder outside it: `--ro` never records one.
    let outside = ScratchBase::new("import-fields-outside");
    std::os::unix::fs::symlink(&outside.path, base.file("elsewhere")).unwrap();
    let feather = checkpointed_vm("import-fields", &base);
    let outside_before = fs::read_dir(&outside.path).unwrap().count();
    let vm_dir = feather.vm_dir("vm");
    let elsewhere = Feather::new("import-fields-dst");
    let accepting = ["--base", base.as_str()];
    type Edit = Box<dyn FnOnce(&mut toml::Table)>;
    let cases: Vec<(&str, Edit, &[&str])> = vec![
        (
            "a read-only path through a link",
            Box::new(|c| set(c, "read_only", vec!["/elsewhere"])),
            &["config.toml's read_only is /elsewhere", "symbolic link"],
        ),
        (
            "a read-only path climbing out",
            Box::new(|c| set(c, "read_only", vec!["/bin/../../tmp"])),
            &["config.toml's read_only is", "`..`"],
        ),
        (
            "a scaffold folder outside the layer",
            Box::new(|c| set(c, "scaffold", vec!["/../../made"])),
            &["config.toml's scaffold is /../../made", "made by hand"],
        ),
        (
            "the host's network",
            Box::new(|c| set(network(c), "mode", "host")),
            &["config.toml's network mode is host"],
        ),
        (
            "a throw-away VM",
            Box::new(|c| set(c, "ephemeral", true)),
            &["config.toml's ephemeral is true"],
        ),
        (
            "no process at all",
            Box::new(|c| {
                let limits = c.get_mut("limits").unwrap().as_table_mut().unwrap();
                limits.insert("pids".into(), 0.into());
            }),
            &["config.toml's limits.pids is 0"],
        ),
        (
            "egress without a network",
            Box::new(|c| set(network(c), "egress", true)),
            &[
                "config.toml's network is none",
                "--egress needs --net private",
            ],
        ),
        (
            "a private network without an address",
            Box::new(|c| set(network(c), "mode", "private")),
            &["config.toml's network.address is none"],
        ),
        (
            "a host port published twice",
            Box::new(|c| {
                let port = toml::Table::from_iter([
                    ("host_port".to_owned(), toml::Value::from(18090)),
                    ("vm_port".to_owned(), toml::Value::from(80)),
                ]);
                let network = network(c);
                set(network, "mode", "private");
                set(network, "address", "10.79.0.5");
                let port = toml::Value::Table(port);
                set(network, "publish", vec![port.clone(), port]);
            }),
            &["config.toml's network is private", "published twice"],
        ),
        (
            "host port 0",
            Box::new(|c| {
                let port = toml::Table::from_iter([
                    ("host_port".to_owned(), toml::Value::from(0)),
                    ("vm_port".to_owned(), toml::Value::from(80)),
                ]);
                let network = network(c);
                set(network, "mode", "private");
                set(network, "address", "10.79.0.5");
                set(network, "publish", vec![toml::Value::Table(port)]);
            }),
            &["config.toml's network is private", "from 1 to 65535"],
        ),
        (
            "a field this feather does not know",
            Box::new(|c| set(c, "mounts_from_host", vec!["/etc"])),
            &["holds `mounts_from_host`", "as new as"],
        ),
    ];
    for (what, edit, said) in cases {
        let archive = crafted(&feather, &vm_dir, edit);
        refused(&elsewhere, &archive, &accepting, said, what);
    }
    // Valid TOML, only longer than any config: read whole, it would be imported.
    let archive = crafted_text(&feather, &vm_dir, |text| {
        format!("{text}\n# {}\n", "x".repeat(2 << 20))
    });
    let said = ["config.toml is longer than the 1 MiB"];
    refused(
        &elsewhere,
        &archive,
        &accepting,
        &said,
        "a config larger than any feather writes",
    );
    assert_eq!(
        fs::read_dir(&outside.path).unwrap().count(),
        outside_before,
        "nothing was made in the host folder"
    );
}

/// A case of what the receiver must accept: named, the config's change, what the refusal
/// says, the flag that accepts it.
type OptIn = (
    &'static str,
    fn(&mut toml::Table),
    &'static [&'static str],
    &'static str,
);

#[test]
fn what_widens_a_vm_on_the_receiver_needs_the_receivers_word() {
    let base = ScratchBase::new("import-optin");
    let feather = checkpointed_vm("import-optin", &base);
    let vm_dir = feather.vm_dir("vm");
    let elsewhere = Feather::new("import-optin-dst");
    let named = ["--base", base.as_str()];
    let cases: [OptIn; 4] = [
        (
            "user namespaces",
            |c| set(c, "allow_userns", true),
            &["config.toml's allow_userns is true", "--allow-userns"],
            "--allow-userns",
        ),
        (
            "a tag policy rules select",
            |c| set(c, "tags", vec!["trusted"]),
            &["config.toml's tags is trusted", "--tag trusted"],
            "--tag=trusted",
        ),
        (
            "a published port",
            |c| {
                let port = toml::Table::from_iter([
                    ("host_port".to_owned(), toml::Value::from(18089)),
                    ("vm_port".to_owned(), toml::Value::from(80)),
                ]);
                let network = network(c);
                set(network, "mode", "private");
                set(network, "address", "10.79.0.5");
                set(network, "publish", vec![toml::Value::Table(port)]);
            },
            &["config.toml's publish is 18089:80", "--allow-publish"],
            "--allow-publish",
        ),
        (
            "egress masqueraded as the receiver",
            |c| {
                let network = network(c);
                set(network, "mode", "private");
                set(network, "address", "10.79.0.5");
                set(network, "egress", true);
            },
            &["config.toml's network.egress is true", "--allow-egress"],
            "--allow-egress",
        ),
    ];
    for (what, edit, said, _) in &cases {
        let archive = crafted(&feather, &vm_dir, edit);
        refused(&elsewhere, &archive, &named, said, what);
    }
    // With the receiver's word for user namespaces and the tag the VM is imported, and runs.
    let archive = crafted(&feather, &vm_dir, |c| {
        (cases[0].1)(c);
        (cases[1].1)(c);
    });
    let mut args = vec!["restore", "vm", "--import", archive.to_str().unwrap()];
    args.extend_from_slice(&named);
    args.extend([cases[0].3, cases[1].3]);
    elsewhere.ok(&args);
    assert_eq!(elsewhere.sh("vm", "echo back").trim(), "back");
}

#[test]
fn an_imported_address_that_is_no_vms_is_refused() {
    let base = ScratchBase::new("import-address");
    let feather = checkpointed_vm("import-address", &base);
    let vm_dir = feather.vm_dir("vm");
    let elsewhere = Feather::new("import-address-dst");
    let subnet = TestSubnet::of("10.79");
    let prefix = subnet.cidr.trim_end_matches(".0/24");
    for last in ["1", "0", "255"] {
        let address = format!("{prefix}.{last}");
        let archive = crafted(&feather, &vm_dir, |c| {
            let network = network(c);
            set(network, "mode", "private");
            set(network, "address", address.as_str());
        });
        let outcome = elsewhere
            .command()
            .args(["restore", "vm", "--import", archive.to_str().unwrap()])
            .args(["--base", base.as_str()])
            .env("FEATHER_SUBNET", &subnet.cidr)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&outcome.stderr);
        assert!(!outcome.status.success(), "{address} imported");
        assert!(
            stderr.contains(&format!("keeps its address {address} when restored"))
                && stderr.contains("no address of a VM"),
            "{address}: {stderr}"
        );
        assert_eq!(elsewhere.ok(&["ls", "--json"]).trim(), "[]", "{address}");
    }
}

/// A restoring keeper handed a network namespace (`--netns-fd`, as `feather serve` hands it the
/// one it made ahead) refuses one that is its own, the host's: the restored VM would share it.
#[test]
fn a_restoring_keeper_handed_the_hosts_network_namespace_refuses_to_start() {
    use std::os::fd::AsRawFd;
    let base = ScratchBase::new("keeper-netns");
    let feather = checkpointed_vm("keeper-netns", &base);
    let keeper = Path::new(Feather::bin()).with_file_name("feather-keeper");
    // Not close-on-exec: the keeper inherits both under these numbers, as from `restore`.
    let own = nix::fcntl::open(
        "/proc/self/ns/net",
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let (_ready_read, ready_write) = nix::unistd::pipe().unwrap();
    let (own_fd, ready_fd) = (
        own.as_raw_fd().to_string(),
        ready_write.as_raw_fd().to_string(),
    );
    let mut child = Command::new(keeper)
        .arg("__keeper")
        .arg("--state-dir")
        .arg(&feather.root)
        .arg("--run-dir")
        .arg(feather.root.join("run"))
        .args([
            "--ready-fd",
            &ready_fd,
            "--restore",
            "--netns-fd",
            &own_fd,
            "vm",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop((own, ready_write));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the keeper restored the VM in the host's network namespace and runs");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut said = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut said).unwrap();
    assert!(!status.success(), "{said}");
    assert!(
        said.contains(&format!("--netns-fd {own_fd}")) && said.contains("own network namespace"),
        "{said}"
    );
    assert_eq!(feather.status("vm"), "checkpointed");
}

/// A disk cap's project id is the receiving host's choice, as at `create --disk`: an archive
/// naming one (another VM's, the administrator's) gets one of its own, or an image.
#[test]
fn an_imported_disk_cap_names_no_project_of_the_receiver() {
    let base = ScratchBase::new("import-disk");
    let feather = checkpointed_vm("import-disk", &base);
    let vm_dir = feather.vm_dir("vm");
    let elsewhere = Feather::new("import-disk-dst");
    // Below the ids feather chooses from: one an administrator numbered by hand.
    let theirs = 4242;
    let archive = crafted(&feather, &vm_dir, |c| {
        let disk = toml::Table::from_iter([
            ("by".to_owned(), toml::Value::from("project-quota")),
            ("bytes".to_owned(), toml::Value::from(64 << 20)),
            ("project".to_owned(), toml::Value::from(theirs)),
        ]);
        let limits = c.get_mut("limits").unwrap().as_table_mut().unwrap();
        limits.insert("disk".into(), toml::Value::Table(disk));
    });
    let accepting = ["--base", base.as_str()];
    let mut args = vec!["restore", "vm", "--import", archive.to_str().unwrap()];
    args.extend_from_slice(&accepting);
    elsewhere.ok(&args);
    let config: toml::Table =
        toml::from_str(&fs::read_to_string(elsewhere.vm_dir("vm").join("config.toml")).unwrap())
            .unwrap();
    let disk = config["limits"]["disk"].as_table().unwrap();
    assert_eq!(disk["bytes"].as_integer(), Some(64 << 20), "{disk:?}");
    assert_ne!(
        disk.get("project").and_then(|p| p.as_integer()),
        Some(theirs),
        "the archive's project id was kept: {disk:?}"
    );
    assert_eq!(elsewhere.sh("vm", "echo back").trim(), "back");
}

/// Records this host writes while a migration runs are never in an export: a crafted `hold`
/// would make the restore wait for a host process (pid 1), `released-to` refuse it; nor are
/// the files of the receiver's `criu lazy-pages`.
#[test]
fn records_no_export_writes_are_refused() {
    let base = ScratchBase::new("import-records");
    let feather = checkpointed_vm("import-records", &base);
    let vm_dir = feather.vm_dir("vm");
    let elsewhere = Feather::new("import-records-dst");
    let accepting = ["--base", base.as_str()];
    let ticks = feather_testkit::stat::Stat::of(1).unwrap().start_ticks;
    let records = [
        ("hold", format!("1 {ticks}")),
        ("released-to", "elsewhere:7000".to_owned()),
        ("lazy-pages", "127.0.0.1:1".to_owned()),
        // The receiver's `criu lazy-pages`: a plain file at its socket's name (a socket is
        // refused by the archive's shape already), its status and its log.
        ("lazy-pages.socket", String::new()),
        ("lazy-pages.status", "\0".to_owned()),
        ("lazy-pages.log", "(00.000000) lazy-pages\n".to_owned()),
    ];
    for (record, text) in records {
        let archive = crafted_folder(&feather, &vm_dir, |crafted| {
            fs::write(crafted.join("checkpoint").join(record), &text).unwrap()
        });
        let said = [format!("holds checkpoint/{record}, which no export holds")];
        let said: Vec<&str> = said.iter().map(String::as_str).collect();
        refused(&elsewhere, &archive, &accepting, &said, record);
    }
}

/// The layer of a host filesystem under the base comes in an archive as
/// `mounts/<layer>/{upper,work}`, and a start or restore mounts them as that overlay's upper
/// and work folders: a link there, in an archive or put in the VM's folder later, would make
/// a host folder (`/etc`) the VM's writable layer. Refused naming it, the folder untouched.
#[test]
fn an_archive_whose_layer_folder_is_a_link_is_refused() {
    let mut base = ScratchBase::new("import-layer-link");
    base.mount_tmpfs("data");
    let feather = checkpointed_vm("import-layer-link", &base);
    let vm_dir = feather.vm_dir("vm");
    // A host folder on the state roots' filesystem, as overlayfs needs it beside `work`.
    let victim = ScratchDir::new("import-layer-victim");
    let elsewhere = Feather::new("import-layer-link-dst");
    let accepting = ["--base", base.as_str()];
    type Craft<'a> = (&'a str, Box<dyn Fn(&Path) + 'a>, &'a str);
    let cases: [Craft<'_>; 3] = [
        (
            "a link at the layer's upper",
            Box::new(|crafted| swap_for_link(&crafted.join("mounts/data/upper"), &victim.path)),
            "holds mounts/data/upper as a link",
        ),
        (
            "a link at the layer's work",
            Box::new(|crafted| swap_for_link(&crafted.join("mounts/data/work"), &victim.path)),
            "holds mounts/data/work as a link",
        ),
        (
            "a link for the layer's folder",
            Box::new(|crafted| swap_for_link(&crafted.join("mounts/data"), &victim.path)),
            "holds mounts/data as a link",
        ),
    ];
    for (what, craft, said) in cases {
        let archive = crafted_folder(&feather, &vm_dir, craft);
        let said = [said, "made by hand or altered; nothing was imported"];
        refused(&elsewhere, &archive, &accepting, &said, what);
        assert_no_mount_under(&elsewhere.root);
        assert_eq!(
            fs::read_dir(&victim.path).unwrap().count(),
            0,
            "{what}: the host folder was written"
        );
    }
}

/// Defence where the layers are mounted: a VM's `mounts/<layer>/upper` replaced by a link
/// after the import (by hand, a backup's restore, an older feather's import) fails its start
/// and its restore naming the folder, and the host folder the link names is never the VM's.
#[test]
fn a_layer_folder_replaced_by_a_link_fails_the_start_and_the_restore() {
    let mut base = ScratchBase::new("layer-link-later");
    base.mount_tmpfs("data");
    let feather = checkpointed_vm("layer-link-later", &base);
    let archive = feather.root.join("vm.tar.zst");
    feather.ok(&["restore", "vm"]);
    feather.ok(&["checkpoint", "vm", "--export", archive.to_str().unwrap()]);
    let elsewhere = Feather::new("layer-link-later-dst");
    let mut args = vec!["restore", "vm", "--import", archive.to_str().unwrap()];
    args.extend(["--base", base.as_str()]);
    elsewhere.ok(&args);
    let victim = ScratchDir::new("layer-link-later-victim");
    let vm_dir = elsewhere.vm_dir("vm");
    let upper = vm_dir.join("mounts/data/upper");
    let kept = vm_dir.join("kept-upper");
    let said = format!("the layer folder {} is a link", upper.display());
    for (what, step) in [
        ("start", &["start", "vm"][..]),
        ("restore", &["restore", "vm"]),
    ] {
        if what == "start" {
            elsewhere.ok(&["stop", "vm"]);
        } else {
            elsewhere.ok(&["checkpoint", "vm"]);
        }
        fs::rename(&upper, &kept).unwrap();
        std::os::unix::fs::symlink(&victim.path, &upper).unwrap();
        let refused = elsewhere.fails(step);
        assert!(refused.contains(&said), "{what}: {refused}");
        assert_no_mount_under(&vm_dir);
        assert_eq!(
            fs::read_dir(&victim.path).unwrap().count(),
            0,
            "{what}: the host folder was written"
        );
        fs::remove_file(&upper).unwrap();
        fs::rename(&kept, &upper).unwrap();
        elsewhere.ok(step);
        assert_eq!(elsewhere.sh("vm", "echo back").trim(), "back", "{what}");
    }
}

/// Replaces the folder (or file) `path` with a link to `target`.
fn swap_for_link(path: &Path, target: &Path) {
    fs::remove_dir_all(path).unwrap();
    std::os::unix::fs::symlink(target, path).unwrap();
}
