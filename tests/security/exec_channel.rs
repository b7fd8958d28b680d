//! `feather exec` and the VM (issue 12, findings 4 and 5): the command gets pipes feather owns,
//! never a descriptor of its caller, and the channel to init cannot be answered by a VM process
//! that forges socket names.

use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{python_daemon, running_vm, sha256_hex, vm_host_pids, Feather, ScratchBase};

#[test]
fn the_callers_files_never_reach_the_command() {
    let (feather, _base) = running_vm("exec-fds");
    let host = ScratchBase::new("exec-fds-host");
    // stdin: a read-only file of the test's, opened read-only; stdout: a file holding a line
    // the command must not read back; stderr: a file.
    let marker = host.file("marker");
    fs::write(&marker, "untouched\n").unwrap();
    fs::set_permissions(&marker, fs::Permissions::from_mode(0o444)).unwrap();
    let out_path = host.file("out");
    fs::write(&out_path, "host-secret\n").unwrap();
    let err_path = host.file("err");
    let stdin = fs::File::open(&marker).unwrap();
    let stdout = fs::OpenOptions::new().append(true).open(&out_path).unwrap();
    let stderr = fs::File::create(&err_path).unwrap();
    // Reopening /proc/self/fd/N reopens whatever the descriptor is: with the caller's file,
    // for writing, or for reading what it holds.
    let script = "read -t 1 line < /proc/self/fd/1; echo \"read-back:$line\" >&2; \
                  echo overwritten > /proc/self/fd/0; echo appended >> /proc/self/fd/0; \
                  for n in 0 1 2; do readlink /proc/self/fd/$n; done";
    let status = feather
        .command()
        .args(["exec", "vm", "--", "sh", "-c", script])
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr)
        .status()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(fs::read_to_string(&marker).unwrap(), "untouched\n");
    assert_eq!(
        fs::metadata(&marker).unwrap().permissions().mode() & 0o7777,
        0o444
    );
    let out = fs::read_to_string(&out_path).unwrap();
    let links: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(links.len(), 3, "{out}");
    assert!(
        links.iter().all(|link| link.starts_with("pipe:[")),
        "the command's stdio must be pipes of feather's: {links:?}"
    );
    let err = fs::read_to_string(&err_path).unwrap();
    assert!(!err.contains("host-secret"), "{err}");
}

#[test]
fn a_process_left_running_in_the_vm_keeps_nothing_of_the_caller() {
    let (feather, _base) = running_vm("exec-left");
    // The caller's stdin is a pipe the test owns; a background loop of the command reads from
    // its stdin for good.
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    let callers_pipe = nix::sys::stat::fstat(read_end.as_fd()).unwrap().st_ino;
    // (A background list's stdin would be /dev/null: it takes the command's through fd 3.)
    let script = "exec 3<&0; (while :; do if read -r line; then echo \"$line\" >> /run/seen; fi; \
                  sleep 0.05; done) <&3 3<&- >/dev/null 2>&1 & echo $! > /run/reader; echo started";
    let output = feather
        .command()
        .args(["exec", "vm", "--", "sh", "-c", script])
        .stdin(Stdio::from(read_end))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "started\n");
    // The reader lives on after exec returned ...
    assert_eq!(
        feather.sh("vm", "kill -0 \"$(cat /run/reader)\" && echo alive"),
        "alive\n"
    );
    // ... and no process of the VM holds the caller's pipe ...
    for pid in vm_host_pids(&feather, "vm") {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let held = fs::metadata(fd.path()).is_ok_and(|m| m.ino() == callers_pipe);
            assert!(
                !held,
                "VM process {pid} holds the caller's stdin ({:?})",
                fd.path()
            );
        }
    }
    // ... so what the caller's stdin gets next reaches nobody in the VM.
    let mut writer = fs::File::from(write_end);
    let _ = writer.write_all(b"typed-after-exec\n");
    std::thread::sleep(Duration::from_millis(500));
    let seen = feather.sh("vm", "cat /run/seen 2>/dev/null; true");
    assert!(!seen.contains("typed-after-exec"), "{seen}");
}

/// A VM process that does what the old lookup of init's socket invited: abstract sockets whose
/// names hold a newline and then a line of `/proc/net/unix` as the kernel prints it, naming
/// init's listening socket's inode with the impostor's name; it adds them until the first
/// line of the table that the old lookup would take is a forged one. The impostor listens
/// there and writes whatever reaches it to /run/impostor.log.
const IMPOSTOR: &str = r#"
import os, socket

def chosen(init_inodes):
    # What feather once did: the first listening (00010000) SOCK_SEQPACKET (0005) line whose
    # inode is one of init's, and its name after the '@'.
    with open("/proc/net/unix") as table:
        for line in table.read().splitlines()[1:]:
            f = line.split()
            if len(f) == 8 and f[3] == "00010000" and f[4] == "0005" and f[6] in init_inodes:
                return f[7][1:] if f[7].startswith("@") else None
    return None

import sys
# The inodes of init's listening sockets, as the host sees them: in a `--net host` VM the table
# also lists every other VM's and host program's sockets, so the forgery must beat init's line.
init_inodes = sys.argv[1:]
impostor = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
impostor.bind(b"\0evil-init")
impostor.listen(64)
carriers = []
# Where a name lands in the table is up to the kernel's hash: carriers are added in batches,
# so that finding one early enough costs a few reads of the table, not one per carrier.
while chosen(init_inodes) != "evil-init" and len(carriers) < 4000:
    for _ in range(64):
        for inode in init_inodes:
            forged = f"0000000000000000: 00000002 00000000 00010000 0005 01 {inode} @evil-init"
            carrier = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            carrier.bind(f"\0c{len(carriers)}\n{forged}".encode())
            carriers.append(carrier)
with open("/run/impostor.ready", "w") as ready:
    ready.write(str(len(carriers)))
while True:
    connection, _ = impostor.accept()
    data = connection.recv(200000)
    with open("/run/impostor.log", "ab") as log:
        log.write(data + b"\n")
    connection.close()
"#;

/// The inodes of the sockets process `pid` holds.
fn socket_inodes(pid: i64) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| fs::read_link(entry.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect()
}

/// The inodes of `pid`'s listening SOCK_SEQPACKET sockets, as its network namespace's table
/// lists them before any forgery is there.
fn listening_inodes(pid: i64) -> Vec<String> {
    let inodes = socket_inodes(pid);
    fs::read_to_string(format!("/proc/{pid}/net/unix"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() >= 7 && f[3] == "00010000" && f[4] == "0005")
        .filter(|f| inodes.iter().any(|i| i == f[6]))
        .map(|f| f[6].to_owned())
        .collect()
}

/// Starts VM `vm` with `--net NET` and the impostor in it; returns init's host pid and the
/// VM's /run as the host reads it (exec itself is what the impostor tries to catch).
fn impostor_in_place(feather: &Feather, net: &str) -> (i64, std::path::PathBuf) {
    feather.ok(&["create", "vm", "--net", net]);
    feather.ok(&["start", "vm"]);
    let init = feather.inspect("vm")["state"]["init_pid"].as_i64().unwrap();
    // Only init's listening socket is worth forging: a carrier per other inode of init would
    // spend the impostor's bound on lines the old lookup never takes.
    let inodes = listening_inodes(init);
    assert!(!inodes.is_empty(), "init listens for exec");
    let inodes: Vec<&str> = inodes.iter().map(String::as_str).collect();
    python_daemon(feather, "vm", IMPOSTOR, &inodes);
    let vm_run = std::path::PathBuf::from(format!("/proc/{init}/root/run"));
    feather.eventually("the impostor is in place", || {
        vm_run.join("impostor.ready").exists()
    });
    (init, vm_run)
}

/// The pre-fix lookup of init's command socket, as feather did it: from init's descriptors and
/// its network namespace's `/proc/net/unix`.
fn old_lookup(init: i64) -> Option<String> {
    let inodes = socket_inodes(init);
    let table = fs::read_to_string(format!("/proc/{init}/net/unix")).ok()?;
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|f| {
            f.len() == 8 && f[3] == "00010000" && f[4] == "0005" && inodes.iter().any(|i| i == f[6])
        })
        .and_then(|f| f[7].strip_prefix('@').map(str::to_owned))
}

#[test]
fn forged_socket_names_never_answer_exec() {
    for net in ["none", "host"] {
        // Over the host's own root: the impostor is the host's python3. Where the VM has its
        // own network namespace the forgery must fool a lookup by /proc/net/unix — the attack
        // is real; a placing of the names that happens not to is tried again with a fresh VM.
        // (Where the VM shares the host's namespace, the table also holds every socket of the
        // host and of the other tests running, and whether a forgery lands before init's line
        // is luck; there the impostor still listens, and exec must still never reach it.)
        let (feather, vm_run) = (0..3)
            .find_map(|attempt| {
                let feather = Feather::new(&format!("exec-forged-{net}-{attempt}"));
                let (init, vm_run) = impostor_in_place(&feather, net);
                let fooled = || old_lookup(init).as_deref() == Some("evil-init");
                (net == "host" || fooled()).then_some((feather, vm_run))
            })
            .expect("a forgery fools the old lookup in one of three VMs");
        let outcomes: Vec<_> = (0..25)
            .map(|_| {
                feather.run(&[
                    "exec",
                    "-e",
                    "SECRET=exec-channel-marker",
                    "vm",
                    "--",
                    "sh",
                    "-c",
                    "echo $SECRET",
                ])
            })
            .collect();
        let log = fs::read_to_string(vm_run.join("impostor.log"));
        assert!(log.is_err(), "the impostor was reached ({net}): {log:?}");
        for outcome in outcomes {
            assert_eq!(
                (outcome.code, outcome.stdout.as_str()),
                (0, "exec-channel-marker\n"),
                "{net}: {}",
                outcome.stderr
            );
        }
    }
}

#[test]
fn exec_relays_large_binary_data_both_ways_intact() {
    let (feather, _base) = running_vm("exec-large");
    let mut data = vec![0u8; 20_000_000];
    fs::File::open("/dev/urandom")
        .and_then(|mut random| std::io::Read::read_exact(&mut random, &mut data))
        .unwrap();
    let mut child = feather
        .command()
        .args(["exec", "vm", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&sent));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(output.stdout.len(), data.len());
    assert_eq!(sha256_hex(&output.stdout), sha256_hex(&data));
    assert!(output.stderr.is_empty());
}

#[test]
fn exec_keeps_stdin_stdout_stderr_and_the_exit_code_apart() {
    let (feather, _base) = running_vm("exec-streams");
    let mut child = feather
        .command()
        .args(["exec", "vm", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"x\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        (output.status.code(), output.stdout.as_slice()),
        (Some(0), b"x\n".as_slice())
    );
    let outcome = feather.run(&[
        "exec",
        "vm",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 42",
    ]);
    assert_eq!(
        (
            outcome.code,
            outcome.stdout.as_str(),
            outcome.stderr.as_str()
        ),
        (42, "out\n", "err\n")
    );
    // stdin from /dev/null, and no stdin at all: an empty stdin.
    assert_eq!(
        feather.ok(&["exec", "vm", "--", "sh", "-c", "cat; echo done"]),
        "done\n"
    );
    let closed = std::process::Command::new("sh")
        .args([
            "-c",
            "exec \"$0\" --root \"$1\" exec vm -- sh -c 'cat; echo done' <&-",
        ])
        .arg(Feather::bin())
        .arg(&feather.root)
        .output()
        .unwrap();
    assert_eq!(
        (
            closed.status.code(),
            String::from_utf8_lossy(&closed.stdout)
        ),
        (Some(0), "done\n".into()),
        "{}",
        String::from_utf8_lossy(&closed.stderr)
    );
}

/// How soon an exec whose command ignores its stdin must end: one that waited for that stdin
/// would wait for good; a loaded host can take seconds for an exec (not a measure of speed).
const PROMPTLY: Duration = Duration::from_secs(60);

#[test]
fn a_command_that_ignores_its_stdin_ends_promptly() {
    let (feather, _base) = running_vm("exec-ignore");
    // A stdin that never ends (the test keeps the pipe open and silent), then one that never
    // stops giving.
    let (read_end, _held_open) = nix::unistd::pipe().unwrap();
    let started = Instant::now();
    let outcome = feather
        .command()
        .args(["exec", "vm", "--", "sh", "-c", "echo done"])
        .stdin(Stdio::from(read_end))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&outcome.stdout), "done\n");
    assert!(started.elapsed() < PROMPTLY, "{:?}", started.elapsed());
    let started = Instant::now();
    let endless = std::process::Command::new("sh")
        .args(["-c", "yes | \"$0\" --root \"$1\" exec vm -- sh -c 'exit 3'"])
        .arg(Feather::bin())
        .arg(&feather.root)
        .output()
        .unwrap();
    assert_eq!(endless.status.code(), Some(3));
    assert!(started.elapsed() < PROMPTLY, "{:?}", started.elapsed());
}

#[test]
fn a_throw_away_vms_command_gets_pipes_and_a_session_of_the_vms_own() {
    let feather = Feather::new("run-rm-fds");
    let base = ScratchBase::new("run-rm-fds");
    let host = ScratchBase::new("run-rm-fds-host");
    let marker = host.file("marker");
    fs::write(&marker, "untouched\n").unwrap();
    fs::set_permissions(&marker, fs::Permissions::from_mode(0o444)).unwrap();
    // Field 6 of /proc/self/stat is the session: 0 inside the VM if its leader is outside
    // (the caller's session, whose terminal /dev/tty would open).
    let script = "echo overwritten > /proc/self/fd/0; \
                  for n in 0 1 2; do readlink /proc/self/fd/$n; done; \
                  for n in 1 $$; do read -r a b c d e s rest < /proc/$n/stat; echo $s; done";
    let output = feather
        .command()
        .args([
            "run",
            "--rm",
            "--base",
            base.as_str(),
            "--",
            "sh",
            "-c",
            script,
        ])
        .stdin(fs::File::open(&marker).unwrap())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(fs::read_to_string(&marker).unwrap(), "untouched\n");
    let out = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[..3].iter().all(|l| l.starts_with("pipe:[")), "{out}");
    assert_eq!(
        &lines[3..],
        &["1", "1"],
        "init and the command are the VM's session: {out}"
    );
}

#[test]
fn exec_with_a_terminal_opens_one_of_the_vms_devpts_whatever_its_dev_ptmx_is() {
    let (feather, _base) = running_vm("exec-ptmx");
    // The VM's /dev/ptmx is a symlink in its writable /dev: VM root points it elsewhere.
    feather.sh("vm", "rm -f /dev/ptmx && ln -s /dev/null /dev/ptmx");
    // The caller sits at a host terminal.
    let host = nix::pty::openpty(None, None).unwrap();
    let script =
        "test -t 0 && [ \"$(stat -L -c %d /proc/self/fd/0)\" = \"$(stat -c %d /dev/pts)\" ] \
                  && [ \"$(stat -L -c %d /proc/self/fd/2)\" = \"$(stat -c %d /dev/pts)\" ] \
                  && echo vm-devpts";
    let output = feather
        .command()
        .args(["exec", "-t", "vm", "--", "sh", "-c", script])
        .stdin(Stdio::from(host.slave))
        .output()
        .unwrap();
    drop(host.master);
    assert_eq!(
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).replace('\r', "")
        ),
        (Some(0), "vm-devpts\n".to_owned()),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_throw_away_vms_command_still_gets_the_callers_interrupt() {
    // The VM is a session of its own, out of reach of the caller's terminal: Ctrl-C reaches
    // feather only, which passes it on.
    let feather = Feather::new("run-rm-int");
    let base = ScratchBase::new("run-rm-int");
    let script = "trap 'echo caught; exit 7' INT; echo ready; while :; do sleep 0.05; done";
    let mut child = feather
        .command()
        .args([
            "run",
            "--rm",
            "--base",
            base.as_str(),
            "--",
            "sh",
            "-c",
            script,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 6];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    assert_eq!(&first, b"ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "caught\n");
    assert_eq!(child.wait().unwrap().code(), Some(7));
}
