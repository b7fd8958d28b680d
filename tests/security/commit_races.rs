//! `feather commit`, `diff` and `reset` against a layer that changes under them: a VM (or, for
//! a stopped VM, the test standing in for it) swaps folders and files of its layer for symlinks
//! to host folders outside the base while commit runs. Nothing outside the base may be changed
//! and nothing the VM cannot see may be copied into the base.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::{Feather, ScratchBase, ScratchDir};

const MARKER: &str = "marker\n";
const SECRET: &str = "secret\n";
const NAMES: [&str; 3] = ["a", "b", "file"];
/// Commits tried while a running VM swaps its layer.
const ROUNDS_LIVE: usize = 60;

/// Host folders outside the base: markers that must stay as they are, and a secret folder
/// (0700, files 0600) no VM sees, whose content must never reach the base.
struct Outside {
    markers: ScratchDir,
    secret: ScratchDir,
}

impl Outside {
    fn new(label: &str) -> Self {
        let markers = ScratchDir::new(&format!("{label}-markers"));
        let secret = ScratchDir::new(&format!("{label}-secret"));
        fs::set_permissions(&secret.path, fs::Permissions::from_mode(0o700)).unwrap();
        for name in NAMES {
            fs::write(markers.path.join(name), MARKER).unwrap();
            let file = secret.path.join(name);
            fs::write(&file, SECRET).unwrap();
            fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        }
        Outside { markers, secret }
    }

    fn assert_untouched(&self, base: &ScratchBase, round: usize) {
        for name in NAMES {
            assert_eq!(
                fs::read_to_string(self.markers.path.join(name))
                    .ok()
                    .as_deref(),
                Some(MARKER),
                "round {round}: commit changed or deleted a file outside the base ({name})"
            );
            assert_eq!(
                fs::read_to_string(self.secret.path.join(name))
                    .ok()
                    .as_deref(),
                Some(SECRET),
                "round {round}: commit changed a secret file ({name})"
            );
        }
        if let Some(copied) = file_with_content(&base.path, SECRET.as_bytes()) {
            panic!(
                "round {round}: a secret file was copied into the base: {}",
                copied.display()
            );
        }
    }
}

/// A regular file under `dir` holding exactly `content` (symlinks are not followed).
fn file_with_content(dir: &Path, content: &[u8]) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let meta = entry.path().symlink_metadata().ok()?;
        if meta.is_dir() {
            if let Some(found) = file_with_content(&entry.path(), content) {
                return Some(found);
            }
        } else if meta.is_file()
            && meta.len() == content.len() as u64
            && fs::read(entry.path()).ok()? == content
        {
            return Some(entry.path());
        }
    }
    None
}

/// The host's version of the folders the VM replaces, put back after each round (a round may
/// commit the VM's symlink over the host's folder, as commit should).
fn restore_base(base: &ScratchBase) {
    let opaque = base.file("data/opaque");
    if opaque.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
        fs::remove_file(&opaque).unwrap();
    }
    base.write("data/opaque/a", "host\n");
    base.write("data/opaque/b", "host\n");
    let file = base.file("data/file");
    if file.symlink_metadata().is_ok() {
        fs::remove_file(&file).unwrap();
    }
    base.write("data/file", "host\n");
    let _ = fs::remove_file(base.file("data/big"));
}

/// The VM's changes that give commit something to walk and a big file that keeps it busy:
/// /data/opaque made anew (an opaque folder hiding the host's a and b), /data/file changed.
const CHANGES: &str = "rm -rf /data/opaque && mkdir /data/opaque && echo vm > /data/opaque/a \
     && echo vm > /data/file && dd if=/dev/zero of=/data/big bs=1M count=16 2>/dev/null";

/// Stops a background loop when dropped, also when the test fails.
struct Background {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Exchanges (renameat2 RENAME_EXCHANGE, atomic) each layer entry with its symlink partner,
/// back and forth, as fast as it can: what a hostile VM does to its layer.
fn swap_forever(pairs: Vec<(PathBuf, PathBuf)>) -> Background {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        while !flag.load(Ordering::SeqCst) {
            for (a, b) in &pairs {
                let _ = nix::fcntl::renameat2(
                    nix::fcntl::AT_FDCWD,
                    a,
                    nix::fcntl::AT_FDCWD,
                    b,
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                );
            }
        }
    });
    Background {
        stop,
        thread: Some(thread),
    }
}

#[test]
fn commit_never_follows_a_symlink_swapped_into_the_layer_while_it_runs() {
    let feather = Feather::new("commit-swap");
    let base = ScratchBase::new("commit-swap");
    let outside = Outside::new("commit-swap");
    restore_base(&base);
    feather.start_over("vm", &base, &[]);
    feather.sh("vm", CHANGES);
    // Stopped, the VM cannot be frozen or race: the test swaps its layer instead, so only the
    // descriptor discipline stands between commit and the host.
    feather.ok(&["stop", "vm"]);
    let upper = feather.vm_dir("vm").join("upper/data");
    let partners = feather.root.join("partners");
    fs::create_dir(&partners).unwrap();
    let mut pairs = Vec::new();
    for (entry, target) in [
        ("opaque", outside.markers.path.clone()),
        ("opaque", outside.secret.path.clone()),
        ("file", outside.markers.path.join("file")),
        ("file", outside.secret.path.join("file")),
    ] {
        let partner = partners.join(format!("{entry}-{}", pairs.len()));
        symlink(&target, &partner).unwrap();
        pairs.push((upper.join(entry), partner));
    }
    let swapping = swap_forever(pairs);
    let mut applied = 0;
    for round in 0..100 {
        if feather.run(&["commit", "vm", "--force"]).code == 0 {
            applied += 1;
        }
        let _ = feather.run(&["diff", "vm"]);
        outside.assert_untouched(&base, round);
        restore_base(&base);
    }
    drop(swapping);
    assert!(applied > 0, "no commit went through in 100 rounds");
}

#[test]
fn commit_of_a_running_vm_that_swaps_its_layer_in_a_loop_stays_in_the_base() {
    let feather = Feather::new("commit-live");
    let base = ScratchBase::new("commit-live");
    let outside = Outside::new("commit-live");
    restore_base(&base);
    feather.start_over("vm", &base, &[]);
    feather.sh("vm", CHANGES);
    // Renames are one process each, so the layer flips between a folder and a symlink (to
    // the markers, or to the secret folder) many times while one commit runs.
    let script = "M=$0; S=$1; ln -s \"$S\" /data/to-s; ln -s \"$M/file\" /data/to-m; \
         while :; do \
         mv /data/opaque /data/zz; mv /data/to-s /data/opaque; \
         mv /data/opaque /data/to-s; mv /data/zz /data/opaque; \
         mv /data/file /data/zf; mv /data/to-m /data/file; \
         mv /data/file /data/to-m; mv /data/zf /data/file; \
         done </dev/null >/dev/null 2>&1 &";
    feather.ok(&[
        "exec",
        "vm",
        "--",
        "sh",
        "-c",
        &format!(
            "sh -c '{script}' '{}' '{}'",
            outside.markers.path.display(),
            outside.secret.path.display()
        ),
    ]);
    let mut applied = 0;
    for round in 0..ROUNDS_LIVE {
        if feather.run(&["commit", "vm", "--force"]).code == 0 {
            applied += 1;
        }
        outside.assert_untouched(&base, round);
        restore_base(&base);
    }
    assert!(
        applied > 0,
        "no commit of the running VM went through in {ROUNDS_LIVE} rounds"
    );
}

/// The VM's v2 cgroup folder, where `cgroup.freeze` and `cgroup.events` are.
fn v2_cgroup(feather: &Feather) -> PathBuf {
    feather
        .cgroup_dirs("vm")
        .into_iter()
        .find(|dir| dir.join("cgroup.freeze").exists())
        .expect("the VM has a cgroup on the v2 hierarchy")
}

fn frozen(cgroup: &Path) -> bool {
    fs::read_to_string(cgroup.join("cgroup.events"))
        .unwrap_or_default()
        .lines()
        .any(|line| line == "frozen 1")
}

/// Watches `cgroup` until dropped; true if it was ever seen frozen.
fn watch_frozen(cgroup: PathBuf) -> (Arc<AtomicBool>, Background) {
    let seen = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (seen_by, stop_by) = (seen.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        while !stop_by.load(Ordering::SeqCst) {
            if frozen(&cgroup) {
                seen_by.store(true, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    (
        seen,
        Background {
            stop,
            thread: Some(thread),
        },
    )
}

#[test]
fn commit_freezes_a_running_vm_for_its_duration_and_thaws_it_also_on_error() {
    let feather = Feather::new("commit-freeze");
    let base = ScratchBase::new("commit-freeze");
    base.write("data/edit", "host\n");
    feather.start_over("vm", &base, &[]);
    feather.sh(
        "vm",
        "dd if=/dev/zero of=/data/big bs=1M count=128 2>/dev/null && echo vm > /data/edit",
    );
    let cgroup = v2_cgroup(&feather);
    let (seen, watching) = watch_frozen(cgroup.clone());
    let started = Instant::now();
    feather.ok(&["commit", "vm", "/data/big"]);
    let took = started.elapsed();
    drop(watching);
    assert!(
        seen.load(Ordering::SeqCst),
        "the VM was never frozen during a commit of {took:?}"
    );
    assert!(!frozen(&cgroup), "the VM is thawed after the commit");
    assert_eq!(feather.sh("vm", "echo alive"), "alive\n");

    // A failing commit (the host changed the file after the VM copied it) thaws it too.
    std::thread::sleep(Duration::from_millis(20));
    base.write("data/edit", "host changed\n");
    let error = feather.fails(&["commit", "vm"]);
    assert!(error.contains("/data/edit"), "{error}");
    assert!(!frozen(&cgroup), "the VM is thawed after a failed commit");
    assert_eq!(feather.sh("vm", "echo alive"), "alive\n");
}

#[test]
fn symlinks_of_the_layer_are_committed_as_symlinks_never_followed() {
    let feather = Feather::new("commit-links");
    let base = ScratchBase::new("commit-links");
    let outside = Outside::new("commit-links");
    feather.start_over("vm", &base, &[]);
    let markers = outside.markers.path.display().to_string();
    let secret = outside.secret.path.display().to_string();
    feather.sh(
        "vm",
        &format!(
            "ln -s '{markers}' /data/to-markers && ln -s '{secret}/a' /data/to-secret \
             && ln -s ../etc /data/relative && mkdir /data/dir && ln -s '{markers}/b' /data/dir/link"
        ),
    );
    feather.ok(&["commit", "vm"]);
    for (link, target) in [
        ("data/to-markers", markers.clone()),
        ("data/to-secret", format!("{secret}/a")),
        ("data/relative", "../etc".to_owned()),
        ("data/dir/link", format!("{markers}/b")),
    ] {
        let path = base.file(link);
        assert!(
            path.symlink_metadata().unwrap().file_type().is_symlink(),
            "{link} is committed as a symlink"
        );
        assert_eq!(fs::read_link(&path).unwrap(), PathBuf::from(target));
    }
    outside.assert_untouched(&base, 0);
    // reset empties the layer without following its symlinks.
    feather.ok(&["stop", "vm"]);
    feather.ok(&["reset", "vm"]);
    outside.assert_untouched(&base, 1);
    assert_eq!(
        fs::read_dir(outside.markers.path.clone()).unwrap().count(),
        NAMES.len()
    );
}

#[test]
fn reset_never_follows_a_symlink_swapped_into_the_layer() {
    let feather = Feather::new("reset-swap");
    let base = ScratchBase::new("reset-swap");
    let outside = Outside::new("reset-swap");
    feather.start_over("vm", &base, &[]);
    feather.sh(
        "vm",
        "mkdir -p /data/tree/deep && for i in $(seq 1 200); do echo x > /data/tree/deep/f$i; done",
    );
    feather.ok(&["stop", "vm"]);
    let upper = feather.vm_dir("vm").join("upper/data");
    let partner = feather.root.join("partner");
    symlink(&outside.markers.path, &partner).unwrap();
    let swapping = swap_forever(vec![(upper.join("tree"), partner.clone())]);
    let outcome = feather.run(&["reset", "vm"]);
    drop(swapping);
    outside.assert_untouched(&base, 0);
    assert!(
        outside.markers.path.symlink_metadata().unwrap().is_dir(),
        "{outcome:?}"
    );
}

#[test]
fn a_sparse_file_stays_sparse_when_committed_and_diff_shows_its_size() {
    let feather = Feather::new("commit-sparse");
    let base = ScratchBase::new("commit-sparse");
    feather.start_over("vm", &base, &[]);
    // 256 MiB long, 4 KiB of data at its end.
    feather.sh(
        "vm",
        "dd if=/dev/urandom of=/data/sparse bs=4096 count=1 seek=65535 2>/dev/null",
    );
    let listing = feather.ok(&["diff", "vm"]);
    let line = listing
        .lines()
        .find(|l| l.ends_with("/data/sparse"))
        .unwrap_or_else(|| panic!("{listing}"));
    assert!(line.contains("256.0M"), "diff shows the length: {line}");
    assert!(
        line.contains("on disk"),
        "diff shows the space it takes: {line}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&feather.ok(&["diff", "vm", "--json"])).unwrap();
    let entry = json
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "/data/sparse")
        .unwrap();
    assert_eq!(entry["size"], 256 * 1024 * 1024);
    assert!(
        entry["allocated"].as_u64().unwrap() < 1024 * 1024,
        "{entry}"
    );

    feather.ok(&["commit", "vm"]);
    let meta = base.file("data/sparse").metadata().unwrap();
    assert_eq!(meta.len(), 256 * 1024 * 1024);
    assert!(
        meta.blocks() * 512 <= 64 * 1024,
        "the committed file takes {} bytes on disk: it was made dense",
        meta.blocks() * 512
    );
    let tail = |path: &Path| {
        use std::os::unix::fs::FileExt;
        let mut data = vec![0u8; 4096];
        let file = fs::File::open(path).unwrap();
        file.read_exact_at(&mut data, 256 * 1024 * 1024 - 4096)
            .unwrap();
        data
    };
    assert_eq!(
        tail(&feather.vm_dir("vm").join("upper/data/sparse")),
        tail(&base.file("data/sparse")),
        "its data is copied"
    );
}

#[test]
fn commit_freezes_a_throw_away_vm_without_limits_too() {
    let feather = Feather::new("commit-nolimits");
    let base = ScratchBase::new("commit-nolimits");
    // A throw-away VM without any limit (not even the default pids limit) once had no cgroup,
    // and its commit was refused while it ran: it could not be frozen.
    let mut child = feather
        .command()
        .args([
            "run",
            "--rm",
            "tmp",
            "--pids",
            "max",
            "--base",
            base.as_str(),
        ])
        .args(["--", "sh", "-c", "echo vm > /data/new; sleep 3"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    feather.eventually("the throw-away VM runs and changed a file", || {
        feather
            .run(&["diff", "tmp", "--json"])
            .stdout
            .contains("/data/new")
    });
    let committed = feather.ok(&["commit", "tmp"]);
    let _ = child.wait();
    assert!(committed.contains("/data/new"), "{committed}");
    assert_eq!(base.read("data/new").as_deref(), Some("vm\n"));
}

/// Makes `/a` in running VM `vm` 3000 folders deep: two chains of 1500, one moved to the end
/// of the other (a shell cannot name the bottom: its path is longer than PATH_MAX).
fn nest_3000_deep(feather: &Feather, vm: &str) {
    let made = feather.sh(
        vm,
        "chain() { mkdir $1 && cd $1 && i=0; while [ $i -lt 1500 ]; do mkdir d && cd d; \
         i=$((i+1)); done; pwd; }; leaf=$(chain /a); (chain /b >/dev/null); \
         mv /b \"$leaf/\" && echo made",
    );
    assert_eq!(made.trim(), "made");
}

/// `feather ARGS` with a soft limit of `files` open files (1024: what most hosts give).
fn with_file_limit(feather: &Feather, files: u32, args: &[&str]) -> crate::support::Outcome {
    let mut prlimit = std::process::Command::new("prlimit");
    prlimit.arg(format!("--nofile={files}:"));
    feather_through(prlimit, feather, args)
}

/// `feather ARGS` started by `runner`, a program that prepares the process and then runs the
/// command line that follows its own arguments.
fn feather_through(
    mut runner: std::process::Command,
    feather: &Feather,
    args: &[&str],
) -> crate::support::Outcome {
    runner
        .arg(Feather::bin())
        .arg("--root")
        .arg(&feather.root)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
        .into()
}

#[test]
fn reset_and_rm_remove_a_layer_nested_thousands_deep() {
    let feather = Feather::new("deep-remove");
    let base = ScratchBase::new("deep-remove");
    feather.start_over("vm", &base, &["--net", "none"]);
    nest_3000_deep(&feather, "vm");
    feather.ok(&["stop", "vm"]);
    let reset = with_file_limit(&feather, 1024, &["reset", "vm"]);
    assert_eq!(reset.code, 0, "{}", reset.stderr);
    let upper = feather.vm_dir("vm").join("upper");
    assert!(!upper.join("a").exists(), "the layer was emptied");
    feather.ok(&["start", "vm"]);
    nest_3000_deep(&feather, "vm");
    feather.ok(&["stop", "vm"]);
    let rm = with_file_limit(&feather, 1024, &["rm", "vm"]);
    assert_eq!(rm.code, 0, "{}", rm.stderr);
    let left: Vec<_> = fs::read_dir(feather.root.join("vms"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "the VM's folder was left behind: {left:?}");
}

#[test]
fn diff_and_commit_of_a_layer_nested_thousands_deep_end_in_an_answer_not_a_crash() {
    let feather = Feather::new("deep-layer");
    let base = ScratchBase::new("deep-layer");
    feather.start_over("vm", &base, &["--net", "none"]);
    // Two chains of 1500 folders, one moved to the end of the other: 3000 deep (no path
    // names the bottom, longer than PATH_MAX; the walks recursed one level a call, and
    // overflowed the stack at about 2000 in a debug build).
    nest_3000_deep(&feather, "vm");
    // The walk holds a folder open a level: room for 3000 (and for the old walk to reach the
    // bottom of its stack first).
    let diff = with_file_limit(&feather, 8192, &["diff", "vm", "--json"]);
    assert_eq!(diff.code, 0, "{}", diff.stderr);
    let changes: Vec<serde_json::Value> = serde_json::from_str(&diff.stdout).unwrap();
    let deepest = changes
        .iter()
        .filter_map(|c| c["path"].as_str())
        .map(|p| p.matches('/').count())
        .max()
        .unwrap();
    assert!(deepest > 3000, "{deepest}");
    // The bottom is past what a path can name: commit fails there, saying so, and the VM
    // (frozen meanwhile) runs on.
    let commit = with_file_limit(&feather, 8192, &["commit", "vm"]);
    assert_eq!(commit.code, 1, "{}", commit.stderr);
    assert!(
        commit.stderr.contains("File name too long"),
        "{}",
        commit.stderr
    );
    assert_eq!(feather.sh("vm", "echo runs").trim(), "runs");
}

#[test]
fn diff_and_commit_of_a_layer_deeper_than_the_open_file_limit_say_where_and_what_to_do() {
    let feather = Feather::new("deep-files");
    let base = ScratchBase::new("deep-files");
    feather.start_over("vm", &base, &["--net", "none"]);
    nest_3000_deep(&feather, "vm");
    // The walk holds two descriptors a level: 1024 (what most hosts give) ends it near 500.
    for args in [&["diff", "vm"][..], &["commit", "vm"]] {
        let ended = with_file_limit(&feather, 1024, args);
        assert_eq!(ended.code, 1, "{args:?}: {}", ended.stderr);
        for said in [
            "levels deep",
            "at /a/d/d/d/",
            "open-file limit is 1024",
            "ulimit -n",
        ] {
            assert!(ended.stderr.contains(said), "{args:?}: {}", ended.stderr);
        }
    }
    assert_eq!(feather.sh("vm", "echo runs").trim(), "runs");
}

/// `feather ARGS` under a soft limit of 64 open files, 50 of them taken before it starts
/// (descriptors 10 to 59, as a process's other work would hold them).
fn with_most_descriptors_taken(feather: &Feather, args: &[&str]) -> crate::support::Outcome {
    let mut bash = std::process::Command::new("bash");
    bash.arg("-c")
        .arg("for fd in $(seq 10 59); do eval \"exec $fd</dev/null\"; done; exec prlimit --nofile=64: \"$@\"")
        .arg("bash");
    feather_through(bash, feather, args)
}

#[test]
fn diff_and_commit_out_of_descriptors_held_elsewhere_do_not_blame_the_layers_depth() {
    let feather = Feather::new("crowded-files");
    let base = ScratchBase::new("crowded-files");
    feather.start_over("vm", &base, &["--net", "none"]);
    feather.sh("vm", "mkdir -p /a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t");
    for args in [&["diff", "vm"][..], &["commit", "vm"]] {
        let ended = with_most_descriptors_taken(&feather, args);
        assert_eq!(ended.code, 1, "{args:?}: {}", ended.stderr);
        assert!(
            !ended.stderr.contains("levels deep"),
            "{args:?}: {}",
            ended.stderr
        );
        for said in ["ran out of descriptors", "held only", "ulimit -n"] {
            assert!(ended.stderr.contains(said), "{args:?}: {}", ended.stderr);
        }
    }
    assert_eq!(feather.sh("vm", "echo runs").trim(), "runs");
}
