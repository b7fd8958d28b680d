//! Device access of a VM's processes: only the devices its `/dev` holds, refused by every
//! mechanism the host has — the v1 `devices` controller, and the cgroup-v2 device program of
//! the group above every VM's, which the VM's v2 group inherits (the only mechanism a pure
//! cgroup-v2 host has) — from its start, and again after a restore (CRIU restores no cgroup
//! settings).
//!
//! A VM holds no `CAP_MKNOD` and its layers are `nodev`, so the test (host root) stands in for
//! any way a device node could reach it: it makes a node of one of the host's disks in the
//! VM's `/dev` through init's `/proc/PID/root`, and the VM opens it, never reading a byte.

use std::path::{Path, PathBuf};

use crate::support::{Feather, ScratchBase};
use feather_testkit::a_disk;

const REFUSED: &str = "Operation not permitted";

/// Makes `/dev/hostdisk` in running VM `vm`: a node of a disk of the host.
fn place_a_disk_node(feather: &Feather, vm: &str) {
    let init = feather.inspect(vm)["state"]["init_pid"].as_i64().unwrap();
    let node = format!("/proc/{init}/root/dev/hostdisk");
    let _ = std::fs::remove_file(&node);
    let disk = a_disk();
    let (major, minor) = disk.split_once(':').unwrap();
    let made = std::process::Command::new("mknod")
        .args([&node, "b", major, minor])
        .status()
        .unwrap();
    assert!(made.success(), "mknod {node} b {disk}");
}

/// Each probe's line: `NAME=ok`, or `NAME=` and the shell's complaint.
fn probe(feather: &Feather, vm: &str) -> String {
    feather.sh(
        vm,
        "try() { if (eval \"$2\") 2>/tmp/e; then echo $1=ok; else echo $1=$(cat /tmp/e); fi; }; \
         try DISK_READ ': < /dev/hostdisk'; try NULL_WRITE ': >> /dev/null'; \
         try URANDOM_READ ': < /dev/urandom'; try PTMX ': < /dev/pts/ptmx'",
    )
}

fn line<'a>(output: &'a str, name: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {output:?}"))
}

/// The VM's own devices work, the host's disk is refused.
fn assert_only_its_own_devices(output: &str) {
    assert!(line(output, "DISK_READ").contains(REFUSED), "{output}");
    for own in ["NULL_WRITE", "URANDOM_READ", "PTMX"] {
        assert_eq!(line(output, own), "ok", "{output}");
    }
}

/// The VM's group in the hierarchy mounted at `/sys/fs/cgroup/<hierarchy>`, if it has one.
fn group_in(feather: &Feather, vm: &str, hierarchy: &str) -> Option<PathBuf> {
    let mount = Path::new("/sys/fs/cgroup").join(hierarchy);
    feather
        .cgroup_dirs(vm)
        .into_iter()
        .find(|dir| dir.starts_with(&mount))
}

/// The VM's v2 group: under `/sys/fs/cgroup/unified` on a hybrid host, else `/sys/fs/cgroup`.
fn v2_group(feather: &Feather, vm: &str) -> PathBuf {
    group_in(feather, vm, "unified")
        .or_else(|| {
            let pure = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
            pure.then(|| feather.cgroup_dirs(vm).into_iter().next())
                .flatten()
        })
        .expect("a v2 group")
}

/// The ids among `ids` of the programs named `name`.
fn named(ids: &[u32], name: &str) -> Vec<u32> {
    ids.iter()
        .copied()
        .filter(|&id| feather_sys::bpf::program_name(id).unwrap().as_deref() == Some(name))
        .collect()
}

/// The ids of the VM device programs (by their name: this build's policy) among `ids`.
fn vm_programs(ids: &[u32]) -> Vec<u32> {
    named(ids, &feather_confine::devices::vm_program_name())
}

/// The group above every VM's v2 group, which holds the VM device program.
fn every_vms_group(feather: &Feather, vm: &str) -> PathBuf {
    v2_group(feather, vm).parent().unwrap().to_owned()
}

/// While it lives, the group above every VM's holds no VM device program of this build: a
/// stand-in of the same policy under another name (no VM runs meanwhile with less) took its
/// place, under the lock starts take. The stand-in goes at the end.
struct ProgramTakenAway {
    every_vms: PathBuf,
    stand_in: u32,
}

const STAND_IN: &str = "test_stand_in";

impl ProgramTakenAway {
    fn new(every_vms: &Path) -> ProgramTakenAway {
        let group = std::fs::File::open(every_vms).unwrap();
        let locked = nix::fcntl::Flock::lock(group, nix::fcntl::FlockArg::LockExclusive).unwrap();
        let policy = feather_confine::devices::vm_policy();
        let program = feather_sys::bpf::load_device_program(
            &feather_confine::devices::program(&policy),
            c"Apache-2.0",
            STAND_IN,
        )
        .unwrap();
        feather_sys::bpf::attach_device_program(every_vms, &program).unwrap();
        let held = feather_sys::bpf::device_programs(every_vms).unwrap();
        let stand_in = *named(&held, STAND_IN).last().unwrap();
        for id in vm_programs(&held) {
            feather_sys::bpf::detach_device_program(every_vms, id).unwrap();
        }
        drop(locked);
        ProgramTakenAway {
            every_vms: every_vms.to_owned(),
            stand_in,
        }
    }
}

impl Drop for ProgramTakenAway {
    fn drop(&mut self) {
        let _ = feather_sys::bpf::detach_device_program(&self.every_vms, self.stand_in);
    }
}

/// The VM's v2 group runs the VM device program, inherited from the group above it: none of
/// its own, one in effect.
fn assert_runs_the_vm_program(group: &Path) {
    let own = feather_sys::bpf::device_programs(group).unwrap();
    assert_eq!(
        own,
        Vec::<u32>::new(),
        "no device program of the VM's own group"
    );
    let effective = feather_sys::bpf::effective_device_programs(group).unwrap();
    assert_eq!(
        vm_programs(&effective).len(),
        1,
        "the VM device program in effect on {}: {effective:?}",
        group.display()
    );
}

/// Lets the VM's v1 devices group allow every device (where this host has one), so only the
/// v2 program stands.
fn open_v1_devices(feather: &Feather, vm: &str) {
    if let Some(dir) = group_in(feather, vm, "devices") {
        std::fs::write(dir.join("devices.allow"), "a").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("devices.list"))
                .unwrap()
                .trim(),
            "a *:* rwm"
        );
    }
}

#[test]
fn the_v2_device_program_alone_keeps_a_vm_from_the_hosts_disks() {
    let feather = Feather::new("devices-v2");
    let base = ScratchBase::new("devices-v2");
    feather.start_over("vm", &base, &["--net", "none"]);
    open_v1_devices(&feather, "vm");
    place_a_disk_node(&feather, "vm");
    assert_only_its_own_devices(&probe(&feather, "vm"));
    assert_runs_the_vm_program(&v2_group(&feather, "vm"));
}

#[test]
fn every_vm_runs_the_one_device_program_a_start_loaded_for_the_host() {
    let feather = Feather::new("devices-shared");
    let base = ScratchBase::new("devices-shared");
    feather.start_over("one", &base, &["--net", "none"]);
    let every_vms = every_vms_group(&feather, "one");
    feather.ok(&["stop", "one"]);
    let taken = ProgramTakenAway::new(&every_vms);
    feather.ok(&["start", "one"]);
    feather.start_over("two", &base, &["--net", "none"]);
    let in_effect = |vm: &str| {
        let group = v2_group(&feather, vm);
        assert_runs_the_vm_program(&group);
        vm_programs(&feather_sys::bpf::effective_device_programs(&group).unwrap())
    };
    assert_eq!(
        in_effect("one"),
        in_effect("two"),
        "one program, not one per VM"
    );
    drop(taken);
}

#[test]
fn an_older_builds_device_program_is_replaced_at_the_next_start() {
    let feather = Feather::new("devices-older");
    let base = ScratchBase::new("devices-older");
    feather.start_over("vm", &base, &["--net", "none"]);
    let every_vms = every_vms_group(&feather, "vm");
    // An older build's program, as it would have named it. It lets everything through, so
    // beside the current one it weakens nothing for the VMs of the tests running meanwhile.
    let mut allow_all = feather_confine::devices::Policy::default();
    allow_all
        .apply(feather_confine::devices::Rule {
            allow: true,
            kind: None,
            major: None,
            minor: None,
            access: feather_confine::devices::MKNOD
                | feather_confine::devices::READ
                | feather_confine::devices::WRITE,
        })
        .unwrap();
    let older = feather_sys::bpf::Versioned {
        family: feather_confine::devices::VM_PROGRAM_FAMILY,
        version: feather_confine::devices::VM_POLICY_VERSION - 1,
        tag: "000old",
    }
    .name();
    let program = feather_sys::bpf::load_device_program(
        &feather_confine::devices::program(&allow_all),
        c"Apache-2.0",
        &older,
    )
    .unwrap();
    feather_sys::bpf::attach_device_program(&every_vms, &program).unwrap();
    drop(program);
    // (A start of another test's VM may detach it first: either way a start did.)
    feather.ok(&["stop", "vm"]);
    feather.ok(&["start", "vm"]);
    let held = feather_sys::bpf::device_programs(&every_vms).unwrap();
    assert_eq!(
        named(&held, &older),
        Vec::<u32>::new(),
        "the older program detached"
    );
    assert_runs_the_vm_program(&v2_group(&feather, "vm"));
}

#[test]
fn a_restored_vm_keeps_its_device_rules() {
    let feather = Feather::new("devices-restore");
    let base = ScratchBase::new("devices-restore");
    feather.start_over("vm", &base, &["--net", "none"]);
    let every_vms = every_vms_group(&feather, "vm");
    feather.ok(&["checkpoint", "vm"]);
    // The restore must set the program up itself: the start's is taken away.
    let taken = ProgramTakenAway::new(&every_vms);
    feather.ok(&["restore", "vm"]);
    drop(taken);
    place_a_disk_node(&feather, "vm");
    assert_only_its_own_devices(&probe(&feather, "vm"));
    if let Some(dir) = group_in(&feather, "vm", "devices") {
        let list = std::fs::read_to_string(dir.join("devices.list")).unwrap();
        assert!(!list.contains("a *:*"), "{list}");
    }
    assert_runs_the_vm_program(&v2_group(&feather, "vm"));
}

#[test]
fn a_throw_away_vm_without_limits_keeps_the_hosts_disks_out_of_reach() {
    let feather = Feather::new("devices-rm");
    // `--pids max` and no other limit: such a VM once had no cgroup, hence no device rules.
    // It waits (at most 20 s) for the node the test places, then probes.
    let script = "n=0; while [ ! -e /dev/hostdisk ] && [ $n -lt 400 ]; do sleep 0.05; \
                  n=$((n+1)); done; try() { if (eval \"$2\") 2>/tmp/e; then echo $1=ok; \
                  else echo $1=$(cat /tmp/e); fi; }; try DISK_READ ': < /dev/hostdisk'; \
                  try NULL_WRITE ': >> /dev/null'; try URANDOM_READ ': < /dev/urandom'; \
                  try PTMX ': < /dev/pts/ptmx'";
    let run = feather
        .command()
        .args(["run", "--rm", "--pids", "max", "--net", "none", "tmp", "--"])
        .args(["sh", "-c", script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    feather.eventually("the throw-away VM runs", || {
        feather
            .run(&["inspect", "tmp"])
            .stdout
            .contains("\"running\"")
    });
    place_a_disk_node(&feather, "tmp");
    let output = run.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_only_its_own_devices(&stdout);
}
