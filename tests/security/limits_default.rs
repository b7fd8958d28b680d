//! Limits a VM has without asking (a pids limit), the disk cap on its layer, and no user
//! namespaces inside it unless it was created with --allow-userns.
//!
//! Tests that fill a VM's processes to its limit have `limit` in their name: they run one at a
//! time (.config/nextest.toml).

use std::fs;

use crate::support::{Feather, ProjectQuotaFs, ScratchBase};

/// Forks sleeping children until fork fails (or 5000, so that it ends also where nothing
/// limits it), kills and reaps them, and prints how many it had and the error that stopped it.
const FORK_UNTIL_REFUSED: &str = r#"
import errno, os, signal, time
children, error = [], "none"
while len(children) < 5000:
    try:
        pid = os.fork()
    except OSError as e:
        error = errno.errorcode[e.errno]
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.kill(pid, signal.SIGKILL)
for pid in children:
    os.waitpid(pid, 0)
print(len(children), error)
"#;

fn pids_max(feather: &Feather, vm: &str) -> String {
    let dir = feather
        .cgroup_dirs(vm)
        .into_iter()
        .find(|d| d.join("pids.max").exists())
        .expect("a pids controller");
    fs::read_to_string(dir.join("pids.max"))
        .unwrap()
        .trim()
        .to_owned()
}

fn listed_limits(feather: &Feather, vm: &str) -> serde_json::Value {
    let rows: serde_json::Value = serde_json::from_str(&feather.ok(&["ls", "--json"])).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|row| row["name"] == vm)
        .unwrap_or_else(|| panic!("{vm} is listed: {rows}"))["limits"]
        .clone()
}

#[test]
fn a_vm_created_without_limits_has_a_pids_limit_that_stops_a_fork_bomb() {
    let feather = Feather::new("limit-default-pids");
    feather.ok(&["create", "vm"]);
    feather.ok(&["start", "vm"]);
    assert_eq!(pids_max(&feather, "vm"), "2048");
    assert_eq!(listed_limits(&feather, "vm")["pids"], 2048);
    assert_eq!(feather.inspect("vm")["config"]["limits"]["pids"], 2048);
    assert!(
        feather.ok(&["ls"]).contains("pids 2048"),
        "the table shows the limit"
    );
    let out = feather.ok(&["exec", "vm", "--", "python3", "-c", FORK_UNTIL_REFUSED]);
    let (count, error) = out.trim().split_once(' ').unwrap();
    let count: u32 = count.parse().unwrap();
    assert_eq!(error, "EAGAIN", "fork was refused by the limit: {out}");
    assert!(
        (1900..2048).contains(&count),
        "stopped near 2048 tasks: {out}"
    );
    // The VM is still usable once the children are gone.
    assert_eq!(feather.sh("vm", "echo alive"), "alive\n");
}

#[test]
fn pids_max_asks_for_no_limit_and_a_number_for_its_own() {
    let feather = Feather::new("pids-options");
    let base = ScratchBase::new("pids-options");
    feather.start_over("free", &base, &["--pids", "max"]);
    feather.start_over("few", &base, &["--pids", "64", "--memory", "64M"]);
    assert_eq!(pids_max(&feather, "free"), "max");
    assert_eq!(
        listed_limits(&feather, "free")["pids"],
        serde_json::Value::Null
    );
    assert_eq!(pids_max(&feather, "few"), "64");
    let few = listed_limits(&feather, "few");
    assert_eq!(few["pids"], 64);
    assert_eq!(few["memory"], 64 << 20);
    let table = feather.ok(&["ls"]);
    assert!(table.contains("mem 64M pids 64"), "{table}");
    assert!(feather
        .fails(&["create", "x", "--pids", "lots"])
        .contains("max"));
}

/// The mounts under `root` (a state root), as /proc/self/mountinfo lists them.
fn mounts_under(root: &std::path::Path) -> Vec<String> {
    let root = root.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(&root))
        .map(str::to_owned)
        .collect()
}

fn disk_cap_mechanism(feather: &Feather, vm: &str) -> String {
    feather.inspect(vm)["config"]["limits"]["disk"]["by"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn disk_limit_without_project_quotas_is_a_filesystem_image_that_stops_writes_at_the_cap() {
    // The tests' state roots are on the host's filesystem, mounted without prjquota (and this
    // kernel has no quota formats): the cap is an image of its own.
    let feather = Feather::new("limit-disk-image");
    let base = ScratchBase::new("limit-disk-image");
    feather.ok(&["create", "vm", "--base", base.as_str(), "--disk", "16M"]);
    assert_eq!(disk_cap_mechanism(&feather, "vm"), "image");
    feather.ok(&["start", "vm"]);
    assert_eq!(listed_limits(&feather, "vm")["disk"], 16 << 20);
    let out = feather.run(&[
        "exec",
        "vm",
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=/big bs=1M count=64",
    ]);
    assert_ne!(out.code, 0, "64 MiB fit under a 16 MiB cap: {out:?}");
    assert!(out.stderr.contains("No space left"), "{out:?}");
    // The host holds at most the cap for the VM: the image is sparse and never grows past it.
    use std::os::unix::fs::MetadataExt;
    let image = fs::metadata(feather.vm_dir("vm").join("disk.img")).unwrap();
    assert!(
        image.blocks() * 512 <= 16 << 20,
        "the image takes {} bytes on the host",
        image.blocks() * 512
    );
    let used = feather.ok(&["ls", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&used).unwrap();
    let disk_bytes = rows[0]["disk_bytes"]
        .as_u64()
        .expect("ls shows the layer's use");
    assert!(
        disk_bytes > 8 << 20 && disk_bytes <= 16 << 20,
        "{disk_bytes}"
    );
    // What the VM wrote is its layer's, seen by diff, kept across a stop and start.
    assert!(feather.ok(&["diff", "vm"]).contains("/big"));
    feather.ok(&["stop", "vm"]);
    feather.ok(&["start", "vm"]);
    feather.ok(&["exec", "vm", "--", "test", "-s", "/big"]);
    feather.ok(&["stop", "vm"]);
    feather.ok(&["reset", "vm"]);
    assert!(
        !feather.ok(&["diff", "vm"]).contains("/big"),
        "reset empties it"
    );
    assert!(
        !mounts_under(&feather.root).is_empty(),
        "the image stays mounted"
    );
    feather.ok(&["rm", "vm"]);
    assert_eq!(
        mounts_under(&feather.root),
        Vec::<String>::new(),
        "rm unmounts it all"
    );
}

#[test]
fn a_disk_image_left_unmounted_by_a_reboot_is_mounted_again_before_its_layer_is_used() {
    let feather = Feather::new("limit-disk-reboot");
    let base = ScratchBase::new("limit-disk-reboot");
    feather.ok(&["create", "vm", "--base", base.as_str(), "--disk", "16M"]);
    feather.ok(&["run", "vm", "--", "sh", "-c", "echo kept > /marker"]);
    feather.ok(&["stop", "vm"]);
    // What a reboot does: every mount gone.
    for point in mounts_under(&feather.root).iter().rev() {
        let status = std::process::Command::new("umount")
            .arg(point)
            .status()
            .unwrap();
        assert!(status.success(), "umount {point}");
    }
    assert!(!feather.vm_dir("vm").join("disk/upper/marker").exists());
    assert!(
        feather.ok(&["diff", "vm"]).contains("/marker"),
        "diff mounts it first"
    );
    feather.ok(&["start", "vm"]);
    assert_eq!(
        feather.ok(&["exec", "vm", "--", "cat", "/marker"]),
        "kept\n"
    );
}

#[test]
fn disk_limit_smaller_than_an_image_holds_is_refused_by_name() {
    let feather = Feather::new("limit-disk-refused");
    let base = ScratchBase::new("limit-disk-refused");
    let error = feather.fails(&["create", "vm", "--base", base.as_str(), "--disk", "1M"]);
    assert!(
        error.contains("project quotas on ") && error.contains(" at /"),
        "names the filesystem and its mount point: {error}"
    );
    assert!(error.contains("at least 8M"), "says what to do: {error}");
    assert!(
        !feather.vm_dir("vm").exists(),
        "no half-made VM is left behind"
    );
}

#[test]
fn disk_limit_caps_what_a_vm_writes_on_a_project_quota_filesystem() {
    let quota_fs = match ProjectQuotaFs::new("limit-disk", 96) {
        Ok(fs) => fs,
        Err(why) => {
            // This kernel cannot enforce project quotas (no quota formats): feather must then
            // choose an image even on a filesystem formatted for them.
            eprintln!("{why}: checking the fallback instead");
            let plain = ProjectQuotaFs::without_prjquota("limit-disk-plain", 96);
            let root = plain.mount.join("root");
            fs::create_dir(&root).unwrap();
            let feather = Feather::at(root);
            feather.ok(&["create", "vm", "--disk", "16M"]);
            assert_eq!(disk_cap_mechanism(&feather, "vm"), "image");
            feather.ok(&["rm", "vm"]);
            return;
        }
    };
    let root = quota_fs.mount.join("root");
    fs::create_dir(&root).unwrap();
    let feather = Feather::at(root);
    // Over the host's / for python3; the file's name is this test's own.
    let big = format!("var/tmp/feather-disk-limit-{}", std::process::id());
    feather.ok(&["create", "vm", "--disk", "16M"]);
    assert_eq!(disk_cap_mechanism(&feather, "vm"), "project-quota");
    feather.ok(&["start", "vm"]);
    assert_eq!(listed_limits(&feather, "vm")["disk"], 16 << 20);
    let script = format!("dd if=/dev/zero of=/{big} bs=1M count=64");
    let out = feather.run(&["exec", "vm", "--", "sh", "-c", &script]);
    assert_ne!(out.code, 0, "64 MiB fit under a 16 MiB cap: {out:?}");
    assert!(
        out.stderr.contains("Disk quota exceeded") || out.stderr.contains("No space left"),
        "{out:?}"
    );
    let held = fs::metadata(feather.vm_dir("vm").join("upper").join(&big))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(held <= 16 << 20, "the layer holds {held} bytes");
    assert!(
        !std::path::Path::new("/").join(&big).exists(),
        "the host's tree is untouched"
    );
    // A VM's root may not move its files out of the project (FS_IOC_FSSETXATTR, project 0).
    let moved = feather.run(&[
        "exec",
        "vm",
        "--",
        "python3",
        "-c",
        "import fcntl, os, struct\n\
         fd = os.open('/var/tmp', os.O_RDONLY)\n\
         try:\n    fcntl.ioctl(fd, 0x401c5820, struct.pack('7I', 0, 0, 0, 0, 0, 0, 0))\n    print('moved')\n\
         except OSError as e:\n    print(e.strerror)\n",
    ]);
    assert_eq!(moved.stdout, "Operation not permitted\n", "{moved:?}");
    // The VM and its cap go; the project is free again.
    feather.ok(&["rm", "--force", "vm"]);
}

/// An imported VM is held to its cap in the folders its archive brought: tar gives a file no
/// project and a folder no inherit flag, and a VM's start marks only the layer's top folders,
/// so `/data` (made before the export) took the VM's writes uncapped, and the usage `ls` shows
/// left out what the archive held (review img24 M1).
#[test]
fn an_imported_vms_existing_folders_are_held_to_its_cap() {
    let quota_fs = match ProjectQuotaFs::new("limit-disk-imported", 160) {
        Ok(fs) => fs,
        Err(why) => {
            // Without project quotas the cap is an image, which the layers move into
            // (a_vm_with_a_disk_image_moves_to_another_root_with_its_layer_and_cap).
            eprintln!("{why}: nothing of project quotas to check here");
            return;
        }
    };
    let (sent, received) = (quota_fs.mount.join("sent"), quota_fs.mount.join("received"));
    fs::create_dir(&sent).unwrap();
    fs::create_dir(&received).unwrap();
    let sender = Feather::at(sent);
    sender.ok(&["create", "vm", "--disk", "8M", "--net", "none"]);
    sender.ok(&["start", "vm"]);
    let seed = "mkdir /data && dd if=/dev/urandom of=/data/seed bs=1M count=2";
    sender.ok(&["exec", "vm", "--", "sh", "-c", seed]);
    let archive = quota_fs.mount.join("vm.tar.zst");
    let archive = archive.to_str().unwrap();
    sender.ok(&["checkpoint", "vm", "--export", archive]);
    sender.ok(&["rm", "--force", "vm"]);

    let feather = Feather::at(received);
    feather.ok(&["restore", "vm", "--import", archive]);
    assert_eq!(disk_cap_mechanism(&feather, "vm"), "project-quota");
    let rows: serde_json::Value = serde_json::from_str(&feather.ok(&["ls", "--json"])).unwrap();
    let disk_bytes = rows[0]["disk_bytes"]
        .as_u64()
        .expect("ls shows the layer's use");
    assert!(
        disk_bytes >= 2 << 20,
        "the archive's 2 MiB are not counted: {disk_bytes}"
    );
    let fill = "dd if=/dev/zero of=/data/big bs=1M count=64";
    let out = feather.run(&["exec", "vm", "--", "sh", "-c", fill]);
    assert_ne!(
        out.code, 0,
        "64 MiB fit in /data under an 8 MiB cap: {out:?}"
    );
    assert!(out.stderr.contains("Disk quota exceeded"), "{out:?}");
    feather.ok(&["rm", "--force", "vm"]);
}

/// Prints what unshare(CLONE_NEWUSER), clone(CLONE_NEWUSER), setns into a user namespace and
/// clone3 give, one `call: error` line each ("ok" when they succeed).
const USERNS_CALLS: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER, SIGCHLD = 0x10000000, 17
def report(call, result):
    print(call + ": " + ("ok" if result >= 0 else os.strerror(ctypes.get_errno())))
pid = os.fork()
if pid == 0:
    os._exit(0 if libc.unshare(CLONE_NEWUSER) == 0 else 1)
_, status = os.waitpid(pid, 0)
print("unshare: " + ("ok" if os.waitstatus_to_exitcode(status) == 0 else "refused"))
r = libc.syscall(56, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)
if r == 0:
    os._exit(0)
if r > 0:
    os.waitpid(r, 0)
report("clone", r)
fd = os.open("/proc/self/ns/user", os.O_RDONLY)
report("setns", libc.setns(fd, 0))
report("clone3", libc.syscall(435, 0, 0))
"#;

#[test]
fn user_namespaces_are_refused_in_a_vm_by_default() {
    let feather = Feather::new("userns-refused");
    feather.ok(&["create", "vm"]);
    feather.ok(&["start", "vm"]);
    assert_eq!(feather.inspect("vm")["config"]["allow_userns"], false);
    let out = feather.ok(&["exec", "vm", "--", "python3", "-c", USERNS_CALLS]);
    assert_eq!(
        out,
        "unshare: refused\nclone: Operation not permitted\nsetns: Operation not permitted\n\
         clone3: Function not implemented\n"
    );
    let unshare = feather.run(&["exec", "vm", "--", "unshare", "-U", "-r", "true"]);
    assert_ne!(unshare.code, 0, "{unshare:?}");
    assert!(
        unshare.stderr.contains("Operation not permitted"),
        "{unshare:?}"
    );
    let net_admin = feather.run(&[
        "exec", "vm", "--", "unshare", "-Urn", "ip", "link", "set", "lo", "up",
    ]);
    assert_ne!(net_admin.code, 0, "{net_admin:?}");
    // New namespaces other than a user namespace need CAP_SYS_ADMIN, which a VM lacks.
    for kind in ["-n", "-m", "-i", "-u", "-p"] {
        let other = feather.run(&["exec", "vm", "--", "unshare", kind, "true"]);
        assert!(
            other.code != 0 && other.stderr.contains("Operation not permitted"),
            "unshare {kind}: {other:?}"
        );
    }
}

#[test]
fn ordinary_programs_start_processes_and_threads_without_clone3() {
    let feather = Feather::new("userns-clone3");
    feather.ok(&["create", "vm"]);
    feather.ok(&["start", "vm"]);
    // glibc's posix_spawn and pthread_create try clone3 first and fall back on ENOSYS.
    let script = "import os, subprocess, threading\n\
        print(subprocess.run(['echo', 'spawned'], capture_output=True, text=True).stdout, end='', flush=True)\n\
        pid = os.posix_spawn('/bin/echo', ['echo', 'posix_spawn'], os.environ)\n\
        os.waitpid(pid, 0)\n\
        t = threading.Thread(target=print, args=('thread',))\n\
        t.start(); t.join()\n";
    assert_eq!(
        feather.ok(&["exec", "vm", "--", "python3", "-c", script]),
        "spawned\nposix_spawn\nthread\n"
    );
    assert_eq!(feather.sh("vm", "echo piped | cat"), "piped\n");
    // A threaded service: memcached starts its worker threads with pthread_create.
    feather.ok(&["service", "start", "vm", "memcached"]);
    let stats = feather.ok(&[
        "exec",
        "vm",
        "--",
        "python3",
        "-c",
        "import socket\n\
         s = socket.create_connection(('127.0.0.1', 11211))\n\
         s.sendall(b'stats\\r\\nquit\\r\\n')\n\
         print(s.makefile().read())\n",
    ]);
    assert!(stats.contains("STAT threads "), "{stats}");
}

#[test]
fn user_namespaces_work_in_a_vm_created_with_allow_userns() {
    let feather = Feather::new("userns-allowed");
    feather.ok(&["create", "vm", "--allow-userns"]);
    feather.ok(&["start", "vm"]);
    assert_eq!(feather.inspect("vm")["config"]["allow_userns"], true);
    let out = feather.ok(&[
        "exec",
        "vm",
        "--",
        "unshare",
        "-Urn",
        "sh",
        "-c",
        "ip link set lo up && ip link add v0 type veth peer name v1 && echo net-admin",
    ]);
    assert_eq!(out, "net-admin\n");
    let calls = feather.ok(&["exec", "vm", "--", "python3", "-c", USERNS_CALLS]);
    assert!(calls.starts_with("unshare: ok\nclone: ok\n"), "{calls}");
    assert!(
        !calls.contains("clone3: Function not implemented"),
        "{calls}"
    );
}

#[test]
fn a_vm_with_a_disk_image_moves_to_another_root_with_its_layer_and_cap() {
    let feather = Feather::new("limit-disk-export");
    let base = ScratchBase::new("limit-disk-export");
    feather.ok(&[
        "create",
        "vm",
        "--base",
        base.as_str(),
        "--disk",
        "16M",
        "--net",
        "none",
    ]);
    feather.ok(&["start", "vm"]);
    feather.ok(&["exec", "vm", "--", "sh", "-c", "echo kept > /marker"]);
    let archive = feather.root.join("vm.tar.zst");
    let archive = archive.to_str().unwrap();
    feather.ok(&["checkpoint", "vm", "--export", archive]);

    let elsewhere = Feather::new("limit-disk-import");
    // The receiver names the tree the VM runs over (row 66).
    elsewhere.ok(&[
        "restore",
        "vm",
        "--import",
        archive,
        "--base",
        base.as_str(),
    ]);
    assert_eq!(disk_cap_mechanism(&elsewhere, "vm"), "image");
    assert!(elsewhere.vm_dir("vm").join("disk.img").exists());
    assert_eq!(
        elsewhere.ok(&["exec", "vm", "--", "cat", "/marker"]),
        "kept\n"
    );
    let out = elsewhere.run(&[
        "exec",
        "vm",
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=/big bs=1M count=64",
    ]);
    assert!(
        out.stderr.contains("No space left"),
        "the cap came along: {out:?}"
    );
}

#[test]
fn another_roots_disk_image_is_never_a_layer_of_a_vm() {
    // A mount inside a state root (a VM's disk image) is hidden from every VM; a VM over the
    // host's / must not layer it as one of the host's filesystems either.
    let capped = Feather::new("limit-disk-other");
    let base = ScratchBase::new("limit-disk-other");
    capped.ok(&["create", "small", "--base", base.as_str(), "--disk", "16M"]);
    let image = capped.vm_dir("small").join("disk");
    assert!(!mounts_under(&capped.root).is_empty());

    let feather = Feather::new("limit-disk-viewer");
    feather.ok(&["create", "vm", "--net", "none"]);
    feather.ok(&["start", "vm"]);
    let layers = feather.inspect("vm")["layers"].to_string();
    assert!(
        !layers.contains(image.to_str().unwrap()),
        "another root's disk image became a layer: {layers}"
    );
}

/// Python removing the group folder `sys.argv[1]` and every group below it, bottom up,
/// however deep (relative steps only).
const REMOVE_GROUPS: &str = "import os, sys\n\
os.chdir(sys.argv[1])\n\
below = []\n\
while True:\n\
\x20   inner = [e.name for e in os.scandir('.') if e.is_dir(follow_symlinks=False)]\n\
\x20   if inner:\n\
\x20       below.append(inner[0]); os.chdir(inner[0]); continue\n\
\x20   if not below:\n\
\x20       break\n\
\x20   name = below.pop(); os.chdir('..'); os.rmdir(name)\n\
os.chdir('/'); os.rmdir(sys.argv[1])\n";

/// Removes, when dropped, what the test left of a VM's groups (on failure: a leak on the host).
struct Groups(Vec<std::path::PathBuf>);

impl Drop for Groups {
    fn drop(&mut self) {
        for dir in self.0.iter().filter(|dir| dir.exists()) {
            let _ = std::process::Command::new("python3")
                .args(["-c", REMOVE_GROUPS])
                .arg(dir)
                .status();
        }
    }
}

#[test]
fn the_groups_a_vm_nests_past_path_max_go_with_it() {
    let feather = Feather::new("deep-groups");
    feather.ok(&["create", "vm", "--net", "none"]);
    feather.ok(&["start", "vm"]);
    let groups = Groups(feather.cgroup_dirs("vm"));
    // The VM's services subtree of the pids hierarchy is its own to make groups in (for its
    // units): 2300 nested, past what a path of the host can name (PATH_MAX) from the top.
    let made = feather.ok(&[
        "exec",
        "vm",
        "--",
        "python3",
        "-c",
        "import os\nos.chdir('/sys/fs/cgroup/pids')\n\
         for _ in range(2300):\n\x20   os.mkdir('g'); os.chdir('g')\nprint('made')\n",
    ]);
    assert_eq!(made.trim(), "made");
    feather.ok(&["stop", "vm"]);
    let left: Vec<_> = groups.0.iter().filter(|dir| dir.exists()).collect();
    assert!(
        left.is_empty(),
        "the VM's groups stayed after its end: {left:?}"
    );
}

/// Python in a VM, in its services subtree of the v2 hierarchy: raises the bounds that folder
/// shows (its own, the VM's to write), then nests groups until the kernel refuses one and
/// removes them, then makes sibling groups until it refuses one (at most 3000 each); prints
/// both counts.
const MANY_GROUPS: &str = "import os\n\
os.chdir('/sys/fs/cgroup/unified')\n\
for knob in ('cgroup.max.descendants', 'cgroup.max.depth'):\n\
\x20   open(knob, 'w').write('max')\n\
nested = 0\n\
try:\n\
\x20   while nested < 3000:\n\
\x20       os.mkdir('n'); os.chdir('n'); nested += 1\n\
except OSError:\n\
\x20   pass\n\
for _ in range(nested):\n\
\x20   os.chdir('..'); os.rmdir('n')\n\
siblings = 0\n\
try:\n\
\x20   while siblings < 3000:\n\
\x20       os.mkdir('s%d' % siblings); siblings += 1\n\
except OSError:\n\
\x20   pass\n\
print(nested, siblings)\n";

#[test]
fn a_vm_makes_a_bounded_number_of_cgroups_on_v2_however_it_sets_its_own() {
    if !std::path::Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists()
        && !std::path::Path::new("/sys/fs/cgroup/cgroup.procs").exists()
    {
        eprintln!("skipped: this host mounts no cgroup v2 hierarchy");
        return;
    }
    let feather = Feather::new("many-groups");
    feather.ok(&["create", "vm", "--net", "none"]);
    feather.ok(&["start", "vm"]);
    let groups = Groups(feather.cgroup_dirs("vm"));
    let made = feather.ok(&["exec", "vm", "--", "python3", "-c", MANY_GROUPS]);
    // The VM's group allows 1000 groups below it, 16 levels deep (the keeper's MAX_CGROUPS
    // and MAX_CGROUP_DEPTH): `services/` is one of them, one level down.
    assert_eq!(
        made.trim(),
        "15 999",
        "groups nested, then made side by side"
    );
    feather.ok(&["stop", "vm"]);
    drop(groups);
}
