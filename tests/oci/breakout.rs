//! runc's container-breakout CVEs, performed against feather-oci by a hostile image and the
//! root of the container it runs, each proving success with a harmless marker.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::support::*;

const MARKER: &[u8] = b"FEATHER-CVE-2019-5736-MARKER";

/// A process `exec`ed into the container: opens the binary of the container's program
/// (`$1`, its pid) through `/proc/PID/exe`, says so, waits until that process is gone, then
/// appends the marker to the binary through its descriptor — what overwrote runc's. Says
/// `refused` when the process is out of its reach.
const ATTACKER: &str = r#"
if ! head -c 1 /proc/$1/exe > /dev/null 2>&1; then echo refused > /tmp/result; echo done >> /tmp/result; exit 0; fi
exec 3</proc/$1/exe && echo opened > /tmp/result
while readlink /proc/$1/exe >/dev/null 2>&1; do sleep 0.05; done
printf FEATHER-CVE-2019-5736-MARKER >> /proc/self/fd/3 && echo wrote >> /tmp/result
echo done >> /tmp/result
"#;

/// CVE-2019-5736: the image's program is a script whose interpreter is `/proc/self/exe`, so
/// the container's init, exec'ing it, runs the runtime's own binary as the container's root;
/// a process of the container opens its `/proc/PID/exe` and, once it exited, writes through
/// the descriptor. (The container shares the host's pid namespace, as with `--pid=host`, so
/// that the attacker outlives it; the write is the same in a pid namespace of its own, where
/// it is a race.) feather-oci runs `create`/`run`/`exec` from a read-only view of its
/// binary: the write fails (EROFS) and the host's binary stays as it was. (Since the runtime
/// made itself not dumpable, the kernel also keeps the container's root from opening this
/// process's `/proc/PID/exe` at all; `host_binary::a_container_cannot_write_the_runtime_binary_that_enters_it`
/// still reaches the binary and proves the read-only view.)
#[test]
fn the_container_cannot_write_the_runtime_binary_through_proc_pid_exe() {
    let scratch = Scratch::new("exe");
    // A copy of its own: no other test runs it (a running binary refuses writers: ETXTBSY),
    // and if the attack succeeds, only the copy holds the marker.
    let binary = scratch.path("feather-oci");
    fs::copy(runtime_bin(), &binary).unwrap();
    let runtime = Runtime::new(&scratch);
    let copy = |args: &[&str], output: Stdio| {
        let status = Command::new(&binary)
            .arg("--root")
            .arg(&runtime.root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(output)
            .status()
            .unwrap();
        assert!(status.success(), "{args:?}: {status}");
    };
    let mut config = base_config(&["/bin/evil"]);
    config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|ns| ns["type"] != "pid");
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let rootfs = bundle.dir.join("rootfs");
    let evil = rootfs.join("bin/evil");
    fs::write(&evil, "#!/proc/self/exe\n").unwrap();
    fs::set_permissions(&evil, fs::Permissions::from_mode(0o755)).unwrap();
    // The runtime run as `evil` prints a usage error to a full pipe: it waits there, in the
    // container, until the container has its binary open.
    let (mut drain, full) = full_pipe();
    copy(
        &[
            "run",
            "--detach",
            "--bundle",
            bundle.dir.to_str().unwrap(),
            "exe",
        ],
        full.into(),
    );
    let pid = runtime.state("exe")["pid"].to_string();
    let log = fs::File::create(scratch.path("exec.log")).unwrap();
    copy(
        &[
            "exec", "--detach", "exe", "sh", "-c", ATTACKER, "attacker", &pid,
        ],
        log.into(),
    );

    let result = rootfs.join("tmp/result");
    let opened = eventually(Duration::from_secs(30), || {
        fs::read_to_string(&result).is_ok_and(|r| r.contains("opened") || r.contains("refused"))
    });
    assert!(opened, "the attacker never tried the runtime's binary");
    let mut drained = Vec::new();
    drain.read_to_end(&mut drained).unwrap();
    let finished = eventually(Duration::from_secs(30), || {
        fs::read_to_string(&result).is_ok_and(|r| r.contains("done"))
    });
    let reported = fs::read_to_string(&result).unwrap_or_default();
    assert!(finished, "the attack did not finish: {reported:?}");
    let written = fs::read(&binary).unwrap();
    assert!(
        !written.ends_with(MARKER) && !reported.contains("wrote"),
        "the container wrote into the runtime's binary on the host: {reported:?}"
    );
    assert_eq!(
        written.len() as u64,
        fs::metadata(runtime_bin()).unwrap().len()
    );
}

/// A pipe whose buffer is full (a writer to it waits until the reader drains it) and its
/// reader, whose `read_to_end` returns once every writer is gone.
fn full_pipe() -> (fs::File, OwnedFd) {
    let (reader, writer) = nix::unistd::pipe().unwrap();
    fcntl(&writer, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    let mut filling = fs::File::from(writer);
    for chunk in [&[b'.'; 4096][..], b"."] {
        while filling.write(chunk).is_ok() {}
    }
    fcntl(&filling, FcntlArg::F_SETFL(OFlag::empty())).unwrap();
    (fs::File::from(reader), filling.into())
}

/// CVE-2025-31133: maskedPaths are covered with a bind of `/dev/null`. An image whose
/// `/dev/null` is a link to a kernel knob (here the container's own hostname, a harmless one of
/// its UTS namespace; `/proc/sys/kernel/core_pattern` in the advisory) turned a container's own
/// `/dev/null` into a writable bind of that knob at `/proc/timer_list`, past `/proc/sys` being
/// read-only. feather-oci covers the masked paths with the host's `/dev/null`.
#[test]
fn a_masked_path_is_the_hosts_dev_null_whatever_the_images_dev_null_is() {
    let scratch = Scratch::new("mask");
    let runtime = Runtime::new(&scratch);
    let script = "echo masked-knob > /proc/timer_list; hostname";
    let mut config = base_config(&["sh", "-c", script]);
    // No tmpfs on /dev: the image's /dev is the container's (as in configs that bind one).
    config["mounts"]
        .as_array_mut()
        .unwrap()
        .retain(|m| m["destination"] != "/dev");
    let bundle = Bundle::new(&scratch, "bundle", &config);
    std::os::unix::fs::symlink(
        "/proc/sys/kernel/hostname",
        bundle.dir.join("rootfs/dev/null"),
    )
    .unwrap();
    let outcome = runtime.run(&["run", "--bundle", bundle.dir.to_str().unwrap(), "mask"]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(
        outcome.stdout.trim(),
        "box",
        "the write to the masked /proc/timer_list reached a kernel knob: {outcome:?}"
    );
}

/// The init looks `HOME` up in the container's /etc/passwd when the config has none. An image
/// whose /etc/passwd is a link to `/dev/zero` had the init read it into memory without end
/// (here until the container's 64 MiB limit killed it): a regular file only, and a bounded
/// read; the program starts with `HOME=/`.
#[test]
fn an_etc_passwd_without_end_does_not_hold_the_program() {
    let scratch = Scratch::new("passwd");
    let runtime = Runtime::new(&scratch);
    let mut config = base_config(&["sh", "-c", "echo home=$HOME"]);
    config["linux"]["resources"] = serde_json::json!({"memory": {"limit": 64 << 20}});
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let passwd = bundle.dir.join("rootfs/etc/passwd");
    fs::remove_file(&passwd).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &passwd).unwrap();
    let outcome = runtime.run(&["run", "--bundle", bundle.dir.to_str().unwrap(), "passwd"]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(outcome.stdout.trim(), "home=/", "{outcome:?}");
}

/// CVE-2025-52881: the runtime's writes into the container's `/proc` (`domainname`, the
/// sysctls, `oom_score_adj`, and the reopening of `exec.fifo` through `/proc/self/fd`) were made
/// by path, so whatever that path leads to received them. Here the image's `/proc` is a link
/// into a volume another container prepared (a `proc/` tree whose files are binds of a kernel
/// knob: the container's own hostname, a harmless one of its UTS namespace; `sysrq-trigger` or
/// `core_pattern` in the advisory). feather-oci writes through a procfs of its own, opened
/// before any of the container's mounts and never by a path the container controls.
#[test]
fn writes_into_proc_reach_the_containers_procfs_whatever_its_proc_path_leads_to() {
    let scratch = Scratch::new("procw");
    let runtime = Runtime::new(&scratch);
    let volume = scratch.path("volume");
    let knob = std::path::Path::new("/proc/sys/kernel/hostname");
    let mut redirected = vec![
        "proc/sys/kernel/domainname".to_owned(),
        "proc/self/oom_score_adj".to_owned(),
    ];
    redirected.extend((3..32).map(|fd| format!("proc/self/fd/{fd}")));
    for inside in &redirected {
        let file = volume.join(inside);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, "").unwrap();
        nix::mount::mount(
            Some(knob),
            &file,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
    }
    let script = "hostname; cat /kernel/sys/kernel/domainname /kernel/self/oom_score_adj";
    let mut config = base_config(&["sh", "-c", script]);
    config["domainname"] = serde_json::json!("dn-marker");
    config["process"]["oomScoreAdj"] = serde_json::json!(7);
    let mounts = config["mounts"].as_array_mut().unwrap();
    mounts.push(serde_json::json!({"destination": "/shared", "type": "bind", "source": volume, "options": ["rbind"]}));
    mounts.push(serde_json::json!({"destination": "/kernel", "type": "proc", "source": "proc"}));
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let rootfs = bundle.dir.join("rootfs");
    fs::create_dir_all(rootfs.join("shared/proc")).unwrap();
    fs::remove_dir(rootfs.join("proc")).unwrap();
    std::os::unix::fs::symlink("/shared/proc", rootfs.join("proc")).unwrap();
    let outcome = runtime.run(&["run", "--bundle", bundle.dir.to_str().unwrap(), "procw"]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    let lines: Vec<&str> = outcome.stdout.lines().collect();
    assert_eq!(
        lines,
        ["box", "dn-marker", "7"],
        "a write meant for the container's /proc reached another kernel knob: {outcome:?}"
    );
}

/// The container's root, watching for `exec`'s child (the only process of the container whose
/// parent is outside it: `PPid: 0`, pid 1 aside), tries to read its environment, its
/// descriptors' links and its root, then says `found`. The test holds the child meanwhile in
/// its `execve`, after it took the container's credentials: the program it execs is a file the
/// test holds a write lease on ([`LEASE_HOLDER`]), so the kernel waits before opening it — the
/// window in which a runtime process of the container's uid and capabilities is open to ptrace
/// and `/proc/PID/{environ,fd,mem}` unless it is not dumpable.
const WATCHER: &str = r#"
echo ready > /tmp/result
tries=0
while [ $tries -lt 600 ]; do
  for status in /proc/[0-9]*/status; do
    pid=${status#/proc/}; pid=${pid%/status}
    [ "$pid" = 1 ] && continue
    grep -q '^PPid:[[:space:]]*0$' $status 2>/dev/null || continue
    if cat /proc/$pid/environ > /tmp/environ 2>/dev/null; then echo read-environ >> /tmp/result; fi
    for fd in /proc/$pid/fd/*; do readlink $fd >> /tmp/fds 2>/dev/null && echo read-fd >> /tmp/result; done
    if ls /proc/$pid/root/ > /dev/null 2>&1; then echo read-root >> /tmp/result; fi
    echo found >> /tmp/result
    exec sleep 60
  done
  tries=$((tries + 1))
  sleep 0.05
done
echo released-unfound >> /tmp/result
"#;

/// Holds a write lease on the file `argv[1]` (an open of it for reading then waits until the
/// lease is given up, up to the kernel's `lease-break-time`), says `held`, and gives it up at
/// the first line on stdin. The lease-break signal is ignored: the holder decides when.
const LEASE_HOLDER: &str = r#"
import fcntl, os, signal, sys
signal.signal(signal.SIGIO, signal.SIG_IGN)
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
print("held", flush=True)
sys.stdin.readline()
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
"#;

/// A runtime process inside the container (here `exec`'s child, between taking the container's
/// credentials and its `execve`) is not dumpable: the container's root cannot read its
/// environment (the engine's, on the host) nor reach its descriptors through `/proc/PID`. (With
/// `org.feather.confine=none`: feather's Landlock domain would also refuse the access.)
#[test]
fn the_container_cannot_reach_into_the_runtime_process_that_enters_it() {
    let scratch = Scratch::new("dumpable");
    let runtime = Runtime::new(&scratch);
    let mut config = base_config(&["sh", "-c", WATCHER]);
    config["annotations"] = serde_json::json!({"org.feather.confine": "none"});
    runtime.allow_annotations(&["org.feather.confine=none"]);
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let rootfs = bundle.dir.join("rootfs");
    // A busybox of its own (an inode nothing else has open, as a write lease needs).
    let held = rootfs.join("bin/busybox-held");
    fs::copy(rootfs.join("bin/busybox"), &held).unwrap();
    runtime.run_detached("dumpable", &bundle);
    let result = rootfs.join("tmp/result");
    assert!(
        eventually(Duration::from_secs(20), || fs::read_to_string(&result)
            .is_ok_and(|r| r.contains("ready"))),
        "the watcher did not start"
    );
    let mut holder = Command::new("python3")
        .args(["-c", LEASE_HOLDER])
        .arg(&held)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut said,
    )
    .unwrap();
    assert_eq!(said.trim(), "held", "the lease was not taken");
    let exec = runtime
        .command()
        .env("FEATHER_HOST_SECRET", "host-secret-marker")
        .args(["exec", "dumpable", "/bin/busybox-held", "echo", "exec-ran"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let found = eventually(Duration::from_secs(30), || {
        fs::read_to_string(&result).is_ok_and(|r| r.contains("found"))
    });
    // Gives the lease up: the child's execve goes on.
    drop(holder.stdin.take());
    let _ = holder.wait();
    let exec: Outcome = exec.wait_with_output().unwrap().into();
    assert_eq!(exec.code, 0, "{exec:?}");
    assert_eq!(exec.stdout.trim(), "exec-ran", "{exec:?}");
    let reported = fs::read_to_string(&result).unwrap_or_default();
    assert!(found, "the watcher never saw exec's child: {reported:?}");
    let environ = fs::read(rootfs.join("tmp/environ")).unwrap_or_default();
    assert!(
        !reported.contains("read-environ")
            && !reported.contains("read-fd")
            && !reported.contains("read-root")
            && !String::from_utf8_lossy(&environ).contains("host-secret-marker"),
        "the container reached into the runtime's process: {reported:?}"
    );
}

/// The init (and `exec`'s child) looks `HOME` up in the container's /etc/passwd when the
/// config has none. An image whose /etc/passwd is a FIFO nobody writes held the runtime in
/// `open` — and with it `run`, or the engine waiting on `create` — for as long as the
/// container liked: it is opened without waiting, found not to be a regular file, and the
/// program starts with `HOME=/`.
#[test]
fn an_etc_passwd_fifo_does_not_hold_the_runtime() {
    let scratch = Scratch::new("passwdfifo");
    let runtime = Runtime::new(&scratch);
    let bundle = Bundle::new(
        &scratch,
        "bundle",
        &base_config(&["sh", "-c", "echo home=$HOME"]),
    );
    let passwd = bundle.dir.join("rootfs/etc/passwd");
    fs::remove_file(&passwd).unwrap();
    nix::unistd::mkfifo(&passwd, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let mut child = runtime
        .command()
        .args(["run", "--bundle"])
        .arg(&bundle.dir)
        .arg("passwdfifo")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let finished = eventually(Duration::from_secs(30), || {
        child.try_wait().unwrap().is_some()
    });
    if !finished {
        // Lets the runtime's open go on (and the test end): a writer that writes nothing.
        let _ = nix::fcntl::open(
            &passwd,
            OFlag::O_WRONLY | OFlag::O_NONBLOCK,
            nix::sys::stat::Mode::empty(),
        );
    }
    let outcome: Outcome = child.wait_with_output().unwrap().into();
    assert!(
        finished,
        "the container's /etc/passwd, a FIFO, held the runtime: {outcome:?}"
    );
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(outcome.stdout.trim(), "home=/", "{outcome:?}");
}

/// CVE-2025-52565: with `process.terminal`, `/dev/console` is a bind of the terminal. An image
/// whose `/dev` is its own and whose `/dev/console` is a link to a kernel knob (the
/// container's hostname here) must not turn that bind into a bind over the knob; feather-oci
/// binds the terminal's own descriptor onto `/dev/console` opened without following links,
/// and refuses a link there. Without the link, `/dev/console` is the program's terminal.
#[test]
fn dev_console_is_the_terminal_and_never_what_an_image_link_names() {
    let scratch = Scratch::new("console");
    let runtime = Runtime::new(&scratch);
    let script = "test /dev/console -ef /proc/self/fd/0 && echo console-is-the-terminal; hostname";
    let mut config = base_config(&["sh", "-c", script]);
    config["process"]["terminal"] = serde_json::json!(true);
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let line = |id: &str| {
        format!(
            "{} --root {} run --bundle {} {id}",
            runtime_bin(),
            runtime.root.display(),
            bundle.dir.display()
        )
    };
    let outcome = with_terminal(&line("console"));
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert!(
        outcome.stdout.contains("console-is-the-terminal"),
        "{outcome:?}"
    );

    // The image's own /dev (no tmpfs), with /dev/console a link to the hostname knob.
    config["mounts"]
        .as_array_mut()
        .unwrap()
        .retain(|m| m["destination"] != "/dev");
    config["process"]["args"] =
        serde_json::json!(["sh", "-c", "echo console-knob > /dev/console; hostname"]);
    bundle.set_config(&config);
    std::os::unix::fs::symlink(
        "/proc/sys/kernel/hostname",
        bundle.dir.join("rootfs/dev/console"),
    )
    .unwrap();
    let outcome = with_terminal(&line("console-link"));
    assert!(
        !outcome.stdout.contains("console-knob"),
        "the terminal was bound over the knob the image's /dev/console names: {outcome:?}"
    );
    assert!(
        outcome.stdout.contains("/dev/console") && outcome.code != 0,
        "a link at /dev/console is refused by name: {outcome:?}"
    );
}

/// `exec`'s child closes every descriptor of the caller but the standard ones and
/// `--preserve-fds`, after it entered the container. It listed them in `/proc/self/fd` — the
/// container's `/proc`, which here is a link into a volume with an empty `self/fd`: nothing
/// was closed, and a descriptor the engine left inheritable (a host file, here holding a
/// marker) reached the container's program. feather-oci closes by number (`close_range`).
#[test]
fn a_lying_proc_self_fd_keeps_no_host_descriptor_open_in_exec() {
    let scratch = Scratch::new("fds");
    let runtime = Runtime::new(&scratch);
    let volume = scratch.path("volume");
    fs::create_dir_all(volume.join("proc/self/fd")).unwrap();
    let mut config = base_config(&["sleep", "60"]);
    let mounts = config["mounts"].as_array_mut().unwrap();
    mounts.push(serde_json::json!({"destination": "/shared", "type": "bind", "source": volume, "options": ["rbind"]}));
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let rootfs = bundle.dir.join("rootfs");
    fs::create_dir_all(rootfs.join("shared/proc")).unwrap();
    fs::remove_dir(rootfs.join("proc")).unwrap();
    std::os::unix::fs::symlink("/shared/proc", rootfs.join("proc")).unwrap();
    runtime.run_detached("fds", &bundle);

    // A host file the engine left open without close-on-exec (this test process is its own:
    // nextest runs each test in a process of its own).
    let secret = scratch.path("host-secret");
    fs::write(&secret, "host-fd-marker\n").unwrap();
    let file = fs::File::open(&secret).unwrap();
    fcntl(&file, FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let script = format!("cat <&{fd} || echo closed");
    let exec = runtime.run(&["exec", "fds", "sh", "-c", &script]);
    drop(file);
    assert!(
        !exec.stdout.contains("host-fd-marker"),
        "the container's program read a host descriptor of the runtime: {exec:?}"
    );
    assert!(exec.stdout.contains("closed"), "{exec:?}");
}

/// A process holding a mount namespace of its own, for a container to join by `path`, whose
/// `/proc` is a tmpfs where every `self/fd/N` is a link to `victim` — what the namespace's
/// owner (another container) can make of it. Killed on drop.
struct LyingNamespace(std::process::Child);

impl LyingNamespace {
    fn new(victim: &std::path::Path) -> LyingNamespace {
        let script = format!(
            "mount -t tmpfs lie /proc && mkdir -p /proc/self/fd && i=0 && \
             while [ $i -lt 256 ]; do ln -s {victim} /proc/self/fd/$i; i=$((i+1)); done && \
             echo ready && exec sleep 600",
            victim = victim.display()
        );
        let mut holder = LyingNamespace(
            Command::new("unshare")
                .args(["--mount", "--propagation", "private", "sh", "-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut said = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.0.stdout.take().unwrap()),
            &mut said,
        )
        .unwrap();
        assert_eq!(said.trim(), "ready", "the namespace was not made");
        holder
    }

    fn path(&self) -> String {
        format!("/proc/{}/ns/mnt", self.0.id())
    }
}

impl Drop for LyingNamespace {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// runc's CVE-2021-30465 class: a container joining a mount namespace by `path` has its root
/// assembled there, and the runtime mounted on `/proc/self/fd/N` of the descriptors it had
/// resolved — a path through that namespace's `/proc`, which its owner makes what it likes.
/// Here every such link leads to the container's `/victim`: the container's procfs, its `/dev`
/// and the rest landed there (or create failed on the way). feather-oci mounts with the new
/// mount API on the descriptors themselves (`move_mount`), no path looked up.
#[test]
fn a_joined_mount_namespaces_proc_cannot_move_the_containers_mounts() {
    let scratch = Scratch::new("joinmnt");
    let runtime = Runtime::new(&scratch);
    let script = "test -e /proc/self/status && echo own-proc; ls -A /victim | wc -l; hostname";
    let mut config = base_config(&["sh", "-c", script]);
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let victim = bundle.dir.join("rootfs/victim");
    fs::create_dir(&victim).unwrap();
    let namespace = LyingNamespace::new(&victim);
    for ns in config["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "mount" {
            ns["path"] = serde_json::json!(namespace.path());
        }
    }
    bundle.set_config(&config);
    let outcome = runtime.run(&["run", "--bundle", bundle.dir.to_str().unwrap(), "joinmnt"]);
    let lines: Vec<&str> = outcome.stdout.lines().collect();
    assert_eq!(
        (outcome.code, lines.as_slice()),
        (0, ["own-proc", "0", "box"].as_slice()),
        "the container's mounts went where the joined namespace's /proc led: {outcome:?}"
    );
}

/// `linux.maskedPaths` and `readonlyPaths` under `/proc` and `/sys` were found by path after
/// the mounts were made. The image's `/proc` and `/sys` are links into a volume shared with
/// another container, which moves the folders the container's procfs and sysfs are mounted on
/// (`mv proc real`, here at a known moment: a `createRuntime` hook, run between the mounts
/// and the masks) and puts plain ones in their place: the masks found nothing and the
/// read-only bind covered a plain folder, leaving the container's real procfs at
/// `/shared/real` unmasked and writable (here its hostname knob takes a marker) and its
/// sysfs's `firmware` unmasked. feather-oci finds them beneath the procfs and sysfs mounts it
/// made, held by their descriptors.
#[test]
fn masked_and_read_only_paths_cover_the_containers_procfs_wherever_a_volume_moved_it() {
    let scratch = Scratch::new("procmove");
    let runtime = Runtime::new(&scratch);
    let volume = scratch.path("volume");
    fs::create_dir_all(volume.join("proc")).unwrap();
    fs::create_dir_all(volume.join("sys")).unwrap();
    let script = "echo ro-marker > /shared/real/sys/kernel/hostname; hostname; \
                  grep -q . /shared/real/timer_list && echo timer-list-readable; \
                  ls /shared/realsys/firmware | grep -q . && echo firmware-listed; true";
    let mut config = base_config(&["sh", "-c", script]);
    config["annotations"] = serde_json::json!({"org.feather.confine": "none"});
    runtime.allow_annotations(&["org.feather.confine=none"]);
    // The volume first: the procfs is mounted inside it, through the image's link.
    config["mounts"].as_array_mut().unwrap().insert(
        0,
        serde_json::json!({"destination": "/shared", "type": "bind", "source": volume, "options": ["rbind"]}),
    );
    let moved = format!(
        "mv {v}/proc {v}/real && mkdir -p {v}/proc/sys && mv {v}/sys {v}/realsys && mkdir {v}/sys",
        v = volume.display()
    );
    config["hooks"] =
        serde_json::json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", moved]}]});
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let rootfs = bundle.dir.join("rootfs");
    for kernel in ["proc", "sys"] {
        fs::remove_dir(rootfs.join(kernel)).unwrap();
        std::os::unix::fs::symlink(format!("/shared/{kernel}"), rootfs.join(kernel)).unwrap();
    }
    let outcome = runtime.run(&["run", "--bundle", bundle.dir.to_str().unwrap(), "procmove"]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert!(
        volume.join("real").is_dir() && volume.join("realsys").is_dir(),
        "the hook did not move the procfs and sysfs: {outcome:?}"
    );
    assert_eq!(
        outcome.stdout.trim(),
        "box",
        "the container's procfs or sysfs was left writable or unmasked: {outcome:?}"
    );
}

/// Writes a marker into the hostname knob of the procfs the program starts in (`sys/kernel/
/// hostname`, relative: the working folder), then prints the hostname. In the container's own
/// `/proc`, read-only, the write fails; in a procfs of the runtime's, it renames the container.
const CWD_PROBE: &str = "echo cwd-marker > sys/kernel/hostname 2>/dev/null; hostname";

/// runc's CVE-2024-21626: `process.cwd` is the image's `WORKDIR` as the engines pass it, and the
/// runtime `chdir`ed to it while its own descriptors were still open — `/proc/self/fd/N` then
/// started the program in one of them. feather-oci's init and `exec`'s child hold the
/// runtime's private procfs until `execve`: unmasked, its `/proc/sys` writable (the hostname
/// knob here; `core_pattern` and `sysrq-trigger` of the host without a user namespace).
/// feather-oci resolves the working folder inside the root without following a magic link.
#[test]
fn a_working_folder_through_proc_self_fd_never_starts_the_program_in_a_runtime_descriptor() {
    let scratch = Scratch::new("cwdfd");
    let runtime = Runtime::new(&scratch);
    let mut config = base_config(&["sh", "-c", CWD_PROBE]);
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let outcomes: Vec<(i32, Outcome)> = (3..20)
        .map(|fd| {
            config["process"]["cwd"] = serde_json::json!(format!("/proc/self/fd/{fd}"));
            bundle.set_config(&config);
            let id = format!("cwdfd{fd}");
            let run = ["run", "--bundle", bundle.dir.to_str().unwrap(), &id];
            (fd, runtime.run(&run))
        })
        .collect();
    for (fd, outcome) in &outcomes {
        assert!(
            !outcome.stdout.contains("cwd-marker"),
            "the init started the program in its descriptor {fd}: {outcome:?}"
        );
    }
    for (_, outcome) in &outcomes {
        assert!(
            outcome.code != 0 && outcome.stderr.contains("process.cwd"),
            "a working folder through /proc/self/fd is refused by name: {outcome:?}"
        );
    }
    config["process"]["cwd"] = serde_json::json!("/");
    config["process"]["args"] = serde_json::json!(["sleep", "60"]);
    bundle.set_config(&config);
    runtime.run_detached("cwdexec", &bundle);
    let execs: Vec<(i32, Outcome)> = (3..20)
        .map(|fd| {
            let cwd = format!("/proc/self/fd/{fd}");
            let exec = ["exec", "--cwd", &cwd, "cwdexec", "sh", "-c", CWD_PROBE];
            (fd, runtime.run(&exec))
        })
        .collect();
    for (fd, exec) in &execs {
        assert!(
            !exec.stdout.contains("cwd-marker"),
            "exec's child started the program in its descriptor {fd}: {exec:?}"
        );
    }
    for (_, exec) in &execs {
        assert!(
            exec.code != 0 && exec.stderr.contains("process.cwd"),
            "{exec:?}"
        );
    }
}

/// The descriptors a hostile image tries: the runtime's own (its private procfs, the host's
/// `/proc/PID/task` an `exec` remembers before it enters the container) sit among these.
const RUNTIME_FDS: std::ops::Range<i32> = 3..32;

/// Run by the program found: names its binary, then writes a marker into it through
/// `/proc/self/exe` once it no longer runs it (the container's busybox in its place) — what
/// overwrote the host's binaries after runc's CVE-2024-21626 attacks 2 and 3.
const EXE_WRITER: &str = r#"echo "exe=$(readlink /proc/$$/exe)"; exec 3</proc/self/exe; exec /bin/busybox sh -c "echo FEATHER-CVE-2024-21626-MARKER >> /proc/self/fd/3 && echo wrote""#;

/// A "host binary" the test owns (a copy of busybox in `scratch/hostbin`) and a bundle whose
/// image reaches it only through the runtime's descriptors: `/pN` → `/proc/self/fd/N/../../..`
/// and that folder's path (N the host's `/proc/PID/task`: `..` twice to the host's `/proc`
/// mount, once more to the host's `/`), `PATH` through them first, `/probeN/sh` a link to
/// `/proc/self/fd/N/../../..` and the host binary's path, and a script
/// `/bin/scriptN` whose interpreter is `/pN/sh`. A sleeper is running in it as `id`.
struct HostBinaryBait {
    host_binary: std::path::PathBuf,
    original: Vec<u8>,
    bundle: Bundle,
}

impl HostBinaryBait {
    fn new(scratch: &Scratch, runtime: &Runtime, id: &str) -> HostBinaryBait {
        let folder = scratch.path("hostbin");
        fs::create_dir_all(&folder).unwrap();
        let host_binary = folder.join("sh");
        fs::copy("/bin/busybox", &host_binary).unwrap();
        let original = fs::read(&host_binary).unwrap();
        let mut config = base_config(&["sleep", "600"]);
        let path: Vec<String> = RUNTIME_FDS.map(|n| format!("/p{n}")).collect();
        let path = format!("PATH={}:/bin", path.join(":"));
        config["process"]["env"] = serde_json::json!([path]);
        let bundle = Bundle::new(scratch, "bundle", &config);
        let rootfs = bundle.dir.join("rootfs");
        for n in RUNTIME_FDS {
            let target = format!("/proc/self/fd/{n}/../../..{}", folder.display());
            std::os::unix::fs::symlink(target, rootfs.join(format!("p{n}"))).unwrap();
            // Named `sh`, as busybox takes the program's name for the applet to run.
            let probe = rootfs.join(format!("probe{n}"));
            fs::create_dir(&probe).unwrap();
            let target = format!("/proc/self/fd/{n}/../../..{}/sh", folder.display());
            std::os::unix::fs::symlink(target, probe.join("sh")).unwrap();
            let script = rootfs.join(format!("bin/script{n}"));
            fs::write(&script, format!("#!/p{n}/sh\n{EXE_WRITER}\n")).unwrap();
            fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        }
        runtime.run_detached(id, &bundle);
        HostBinaryBait {
            host_binary,
            original,
            bundle,
        }
    }

    /// Asserts that `outcome` never ran the host binary, and that the binary is as it was.
    fn assert_untouched(&self, what: &str, outcome: &Outcome) {
        let folder = self.host_binary.parent().unwrap().display().to_string();
        assert!(
            !outcome.stdout.contains(&folder),
            "{what} ran the host's binary {}: {outcome:?}",
            self.host_binary.display()
        );
        assert!(
            fs::read(&self.host_binary).unwrap() == self.original,
            "{what}: the container wrote into the host's binary {}: {outcome:?}",
            self.host_binary.display()
        );
    }
}

/// runc's CVE-2024-21626, attacks 2 and 3: the child `exec` forks into the container held
/// directories of the host until its execve — close-on-exec, but the kernel resolves the
/// program's path before it closes those. An image whose `PATH` (or `/bin/sh`) leads through
/// `/proc/self/fd/N/../../..` had `exec CTR sh` run a binary of the host in the container,
/// which the container's root then overwrote through `/proc/PID/exe` (host root's next use of
/// it runs the container's code). feather-oci closes every descriptor but stdio,
/// `--preserve-fds` and its error socket before it searches PATH and execs; the search also
/// passes over a folder reached through a magic link. The init (`run`) is held to the same.
/// This test does not prove the close: the magic-link filter alone passes over every `/pN`,
/// so it passes with the close reverted (review fixes24 L6). The `#!` case of the next test,
/// which the kernel resolves itself at execve, is the one that fails without the close; this
/// one guards the filter and the PATH route end to end.
#[test]
fn an_exec_through_proc_self_fd_never_runs_or_writes_a_host_binary() {
    let scratch = Scratch::new("execfd");
    let runtime = Runtime::new(&scratch);
    let bait = HostBinaryBait::new(&scratch, &runtime, "execfd");
    let exec = runtime.run(&["exec", "execfd", "sh", "-c", EXE_WRITER]);
    bait.assert_untouched("exec's PATH search", &exec);
    assert!(
        exec.stdout.starts_with("exe=/bin/busybox\n"),
        "exec runs the image's own sh, found after the links: {exec:?}"
    );
    let bundle = &bait.bundle.dir;
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(bundle.join("config.json")).unwrap()).unwrap();
    config["process"]["args"] = serde_json::json!(["sh", "-c", EXE_WRITER]);
    bait.bundle.set_config(&config);
    let run = runtime.run(&["run", "--bundle", bundle.to_str().unwrap(), "execfdinit"]);
    bait.assert_untouched("the init's PATH search", &run);
    assert!(
        run.stdout.starts_with("exe=/bin/busybox\n"),
        "the init runs the image's own sh: {run:?}"
    );
}

/// As above, with the link in the program's own name (`args[0]` an absolute path through
/// `/proc/self/fd`) and in a script's `#!` line, which the kernel alone resolves at execve:
/// each is refused or fails to exec, and never runs or changes the host's binary.
#[test]
fn an_exec_of_a_program_or_interpreter_through_proc_self_fd_never_runs_a_host_binary() {
    let scratch = Scratch::new("execlink");
    let runtime = Runtime::new(&scratch);
    let bait = HostBinaryBait::new(&scratch, &runtime, "execlink");
    for n in RUNTIME_FDS {
        let probe = format!("/probe{n}/sh");
        let exec = runtime.run(&["exec", "execlink", &probe, "-c", EXE_WRITER]);
        bait.assert_untouched(&format!("exec of {probe}"), &exec);
        assert!(exec.code != 0, "exec of {probe}: {exec:?}");
        let script = format!("/bin/script{n}");
        let exec = runtime.run(&["exec", "execlink", &script]);
        bait.assert_untouched(&format!("exec of {script} (#!/p{n}/sh)"), &exec);
        assert!(exec.code != 0, "exec of {script}: {exec:?}");
    }
}

/// The working folder and `HOME` are found with openat2 before the config's seccomp profile
/// is loaded: a profile written before openat2 existed (runtime-tools' default) refuses it,
/// and without `noNewPrivileges` the profile is loaded before the user changes.
#[test]
fn a_profile_refusing_openat2_still_gets_its_working_folder_and_home() {
    let scratch = Scratch::new("openat2");
    let runtime = Runtime::new(&scratch);
    let mut config = base_config(&["sh", "-c", "echo $HOME; pwd"]);
    config["process"]["cwd"] = serde_json::json!("/tmp");
    config["process"]["noNewPrivileges"] = serde_json::json!(false);
    config["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["openat2"], "action": "SCMP_ACT_ERRNO"}]
    });
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let outcome = runtime.run(&["run", "--bundle", bundle.dir.to_str().unwrap(), "openat2"]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(outcome.stdout, "/root\n/tmp\n", "{outcome:?}");
}

/// A bind whose source lies inside the container's rootfs (`rootfs/data`, relative to the
/// bundle) was opened as a host path: a link the image put there, to a host folder, bound the
/// host's folder into the container (by the init for a bind, by `create` for an id-mapped
/// one). Such a source is the image's path and is resolved inside the root: the link names
/// the container's own folder of that path.
#[test]
fn a_bind_source_inside_the_rootfs_is_the_containers_never_the_hosts() {
    let scratch = Scratch::new("bindsrc");
    let runtime = Runtime::new(&scratch);
    let host = scratch.path("host-folder");
    fs::create_dir_all(&host).unwrap();
    fs::write(host.join("marker"), "host-marker\n").unwrap();
    let mut config = base_config(&["cat", "/mnt/data/marker", "/mnt/mapped/marker"]);
    let map = serde_json::json!([{"containerID": 0, "hostID": 1000, "size": 10}]);
    let mounts = config["mounts"].as_array_mut().unwrap();
    mounts.push(serde_json::json!(
        {"destination": "/mnt/data", "type": "bind", "source": "rootfs/data", "options": ["rbind"]}
    ));
    mounts.push(serde_json::json!({
        "destination": "/mnt/mapped", "type": "bind", "source": "rootfs/data",
        "options": ["bind", "idmap"], "uidMappings": map, "gidMappings": map
    }));
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let rootfs = bundle.dir.join("rootfs");
    std::os::unix::fs::symlink(&host, rootfs.join("data")).unwrap();
    let own = rootfs.join(host.strip_prefix("/").unwrap());
    fs::create_dir_all(&own).unwrap();
    fs::write(own.join("marker"), "container-marker\n").unwrap();
    let outcome = runtime.run(&["run", "--bundle", bundle.dir.to_str().unwrap(), "bindsrc"]);
    assert!(
        !outcome.stdout.contains("host-marker"),
        "the image's link bound a host folder into the container: {outcome:?}"
    );
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(
        outcome.stdout, "container-marker\ncontainer-marker\n",
        "{outcome:?}"
    );
}

/// A bind source inside the rootfs whose name climbs through one of the image's links
/// (`rootfs/link/../data`, `link` → a host folder's subfolder) was opened as a host path: the
/// host's folder beside the link's target came into the container. Its `..` is taken by name,
/// as engines clean paths: it is the container's `/data`.
#[test]
fn a_bind_source_climbing_through_an_images_link_is_the_containers_never_the_hosts() {
    let scratch = Scratch::new("bindclimb");
    let runtime = Runtime::new(&scratch);
    let host = scratch.path("host-folder");
    fs::create_dir_all(host.join("sub")).unwrap();
    fs::create_dir_all(host.join("data")).unwrap();
    fs::write(host.join("data/marker"), "host-marker\n").unwrap();
    let mut config = base_config(&["cat", "/mnt/data/marker"]);
    config["mounts"].as_array_mut().unwrap().push(serde_json::json!(
        {"destination": "/mnt/data", "type": "bind", "source": "rootfs/link/../data", "options": ["rbind"]}
    ));
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let rootfs = bundle.dir.join("rootfs");
    std::os::unix::fs::symlink(host.join("sub"), rootfs.join("link")).unwrap();
    fs::create_dir_all(rootfs.join("data")).unwrap();
    fs::write(rootfs.join("data/marker"), "container-marker\n").unwrap();
    let outcome = runtime.run(&["run", "--bundle", bundle.dir.to_str().unwrap(), "bindclimb"]);
    assert!(
        !outcome.stdout.contains("host-marker"),
        "a link of the image's led the bind to a host folder: {outcome:?}"
    );
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(outcome.stdout, "container-marker\n", "{outcome:?}");
}

/// A bind with flags of its own (`ro`) was remounted with exactly those (`MS_BIND|MS_REMOUNT`),
/// which cleared the `nosuid`, `nodev` and `noexec` of the source's mount: a volume the host
/// mounted `nosuid,nodev` came into the container as one where set-user-ID programs and device
/// nodes work. feather-oci adds a bind's flags to its source's (`mount_setattr` on the
/// detached copy).
#[test]
fn a_binds_own_flags_keep_the_sources_nosuid_nodev_and_noexec() {
    let scratch = Scratch::new("bindflags");
    let runtime = Runtime::new(&scratch);
    let volume = scratch.path("volume");
    fs::create_dir_all(&volume).unwrap();
    let inert = nix::mount::MsFlags::MS_NOSUID
        | nix::mount::MsFlags::MS_NODEV
        | nix::mount::MsFlags::MS_NOEXEC;
    nix::mount::mount(
        Some("tmpfs"),
        &volume,
        Some("tmpfs"),
        inert,
        Some("size=1m"),
    )
    .unwrap();
    let mut config = base_config(&["grep", " /data ", "/proc/self/mountinfo"]);
    config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!(
            {"destination": "/data", "type": "bind", "source": volume, "options": ["rbind", "ro"]}
        ));
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let outcome = runtime.run(&["run", "--bundle", bundle.dir.to_str().unwrap(), "bindflags"]);
    assert_eq!(outcome.code, 0, "{outcome:?}");
    let flags: Vec<&str> = outcome
        .stdout
        .split(' ')
        .nth(5)
        .unwrap_or_default()
        .split(',')
        .collect();
    for flag in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(
            flags.contains(&flag),
            "the bind of a {flag} source lost it: {outcome:?}"
        );
    }
}

/// A file of the test's, left open without close-on-exec in this process (nextest runs each
/// test in a process of its own) as an engine or shim might leave one when it starts the
/// runtime: every runtime this test starts inherits it. Closed on drop.
struct LeftOpen {
    path: std::path::PathBuf,
    _file: fs::File,
}

impl LeftOpen {
    fn new(scratch: &Scratch) -> LeftOpen {
        let path = scratch.path("engine-left-open-marker");
        fs::write(&path, "left open\n").unwrap();
        let file = fs::File::open(&path).unwrap();
        fcntl(&file, FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
        LeftOpen { path, _file: file }
    }

    /// Fails unless `listing` (descriptor targets) names the left-open file nowhere.
    fn assert_absent_from(&self, listing: &str, what: &str) {
        assert!(
            !listing.contains(self.path.to_str().unwrap()),
            "{what} got the descriptor the runtime's caller left open:\n{listing}"
        );
    }
}

/// The hooks the runtime starts (row 62 of docs/security.md) get stdin, stdout and stderr:
/// not a descriptor the engine left open when it started the runtime, nor one of the
/// runtime's own. Each hook lists its descriptors' targets; before, every hook started by
/// `create`, `start` and `delete` held the engine's file.
#[test]
fn hooks_get_no_descriptor_the_engine_left_open() {
    let scratch = Scratch::new("hookfds");
    let runtime = Runtime::new(&scratch);
    let left_open = LeftOpen::new(&scratch);
    let log = scratch.path("hook-descriptors");
    let hook = |name: &str| {
        let script = format!(
            "for f in /proc/$$/fd/*; do readlink \"$f\"; done >> {log}; echo ran {name} >> {log}",
            log = log.display()
        );
        serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", script]})
    };
    let mut config = base_config(&["true"]);
    config["hooks"] = serde_json::json!({
        "prestart": [hook("prestart")],
        "createRuntime": [hook("createRuntime")],
        "poststart": [hook("poststart")],
        "poststop": [hook("poststop")]
    });
    crate::spec::run_to_end(&runtime, &scratch, "hookfds", &config);
    let listing = fs::read_to_string(&log).unwrap();
    for name in ["prestart", "createRuntime", "poststart", "poststop"] {
        assert!(listing.contains(&format!("ran {name}")), "{listing}");
    }
    left_open.assert_absent_from(&listing, "a hook");
}

/// `restore`'s criu gets the restore's stdio, its channel and the descriptors the request
/// names (row 62 of docs/security.md): not a descriptor the engine left open when it started
/// the runtime. A stand-in criu lists its descriptors, then runs the real one; before, it held
/// the engine's file.
#[test]
fn restores_criu_gets_no_descriptor_the_engine_left_open() {
    let scratch = Scratch::new("criufds");
    let runtime = Runtime::new(&scratch);
    let bundle = Bundle::new(&scratch, "bundle", &base_config(&["sleep", "600"]));
    let images = scratch.path("images");
    let images = images.to_str().unwrap();
    assert_eq!(
        runtime
            .create("criufds-a", &bundle, &scratch.path("out"))
            .code,
        0
    );
    assert_eq!(runtime.run(&["start", "criufds-a"]).code, 0);
    let outcome = runtime.run(&["checkpoint", "--image-path", images, "criufds-a"]);
    assert_eq!(outcome.code, 0, "{outcome:?}");

    let left_open = LeftOpen::new(&scratch);
    let listing = scratch.path("criu-descriptors");
    let criu = scratch.path("listing-criu");
    fs::write(
        &criu,
        format!(
            "#!/usr/bin/python3\nimport os, sys\nheld = []\nfor fd in os.listdir(\"/proc/self/fd\"):\n    try:\n        held.append(os.readlink(\"/proc/self/fd/\" + fd))\n    except OSError:\n        pass\nwith open(\"{listing}\", \"a\") as out:\n    out.write(\"--- \" + \" \".join(sys.argv[1:]) + \"\\n\" + \"\".join(h + \"\\n\" for h in held))\nos.execv(\"/usr/local/lib/feather/criu\", [\"criu\"] + sys.argv[1:])\n",
            listing = listing.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&criu, fs::Permissions::from_mode(0o755)).unwrap();
    // The restore's stdout and stderr are files, as the dumped tree's were (`create`'s).
    let output = fs::File::create(scratch.path("out2")).unwrap();
    let outcome: Outcome = runtime
        .command()
        .args(["restore", "--detach", "--image-path", images, "--bundle"])
        .arg(&bundle.dir)
        .arg("criufds-b")
        .env("FEATHER_CRIU", &criu)
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .output()
        .unwrap()
        .into();
    let outcome = Outcome {
        stderr: fs::read_to_string(scratch.path("out2")).unwrap_or_default(),
        ..outcome
    };
    let said = fs::read_to_string(&listing).unwrap_or_default();
    if outcome.code == 0 {
        assert_eq!(runtime.run(&["kill", "criufds-b", "KILL"]).code, 0);
        runtime.wait_stopped("criufds-b");
        assert_eq!(runtime.run(&["delete", "criufds-b"]).code, 0);
    }
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert!(
        said.contains("--- swrk"),
        "the stand-in ran criu swrk: {said}"
    );
    left_open.assert_absent_from(&said, "criu");
}
