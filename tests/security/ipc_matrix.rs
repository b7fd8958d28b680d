//! The IPC confinement matrix: every channel, host→VM, VM→host, VM→VM and inside one VM, run
//! by the real probe (`feather check ipc`) in VMs over the host's `/`. Every cell is asserted
//! against its expectation, and the run writes `docs/ipc-matrix.md`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use feather_ipcprobe::{Direction, Expect, Kind, Matrix};

use crate::support::{start_ticks, Feather};

/// The outcome each cell must have, channel by channel (host→VM, VM→host, VM→VM, inside; the
/// init→exec column must match inside).
/// Writing the expectations out, instead of deriving them from the probe, is what makes a
/// regression in any one cell fail: a channel that starts to leak, or stops working inside.
fn expected() -> BTreeMap<&'static str, [&'static [Kind]; 4]> {
    use Kind::*;
    const BLOCKED: &[Kind] = &[Refused, Invisible, Denied];
    const GONE: &[Kind] = &[Invisible];
    const WORKS: &[Kind] = &[Reached];
    const NONE: &[Kind] = &[];
    let mut table: BTreeMap<&'static str, [&'static [Kind]; 4]> = BTreeMap::new();
    for channel in ["sysv-shm", "sysv-sem", "sysv-msg", "posix-mq", "posix-shm"] {
        table.insert(channel, [GONE, GONE, GONE, WORKS]);
    }
    for dir in ["/run", "/var/run"] {
        for kind in ["stream", "dgram", "seqpacket"] {
            let channel: &'static str = Box::leak(format!("unix-{kind}:{dir}").into_boxed_str());
            table.insert(channel, [GONE, GONE, GONE, WORKS]);
        }
    }
    // Host sockets in /tmp, /root and made before the VM started are seen through the lower
    // layer, but connecting to them fails with ECONNREFUSED: the VM's inode is overlayfs's,
    // not the host socket's.
    for dir in ["/tmp", "/root", "lower"] {
        for kind in ["stream", "dgram", "seqpacket"] {
            let channel: &'static str = Box::leak(format!("unix-{kind}:{dir}").into_boxed_str());
            table.insert(channel, [GONE, &[Refused], GONE, WORKS]);
        }
    }
    table.insert("unix-abstract", [&[Refused], &[Refused], &[Refused], WORKS]);
    table.insert("x11-abstract", [&[Refused], &[Refused], &[Refused], WORKS]);
    table.insert("x11-path", [GONE, &[Refused], GONE, WORKS]);
    table.insert("fifo", [GONE, &[Refused], GONE, WORKS]);
    table.insert("tcp-loopback", [&[Refused], &[Refused], &[Refused], WORKS]);
    table.insert("udp-loopback", [&[Refused], &[Refused], &[Refused], WORKS]);
    // Each VM has an address of its own (`--net private`): the host reaches it there by design;
    // feather's nftables policy refuses VM→host and drops VM→VM (docs/network.md).
    table.insert("tcp-host-address", [WORKS, &[Refused], &[Refused], WORKS]);
    table.insert("udp-host-address", [WORKS, &[Refused], &[Refused], WORKS]);
    table.insert("netlink-route", [GONE, GONE, GONE, WORKS]);
    table.insert("file-read", [GONE, WORKS, GONE, WORKS]);
    table.insert("file-write", [GONE, GONE, GONE, WORKS]);
    for channel in ["flock", "posix-lock", "ofd-lock", "inotify-client-watches"] {
        table.insert(channel, [GONE, GONE, GONE, WORKS]);
    }
    table.insert("inotify-listener-watches", [GONE, WORKS, GONE, WORKS]);
    // The host client finds no key of the VM's (the VM could not make one); VM clients are
    // denied keyctl by the seccomp filter, also inside their own VM.
    for channel in ["keyring-user", "keyring-session"] {
        table.insert(channel, [GONE, &[Denied], &[Denied], &[Denied]]);
    }
    for channel in [
        "proc-environ",
        "proc-fd",
        "proc-mem",
        "process_vm_readv",
        "signal",
        "ptrace",
    ] {
        table.insert(channel, [GONE, GONE, GONE, WORKS]);
    }
    table.insert(
        "dbus-system",
        [NONE, &[Invisible, NotApplicable], NONE, NONE],
    );
    table.insert(
        "dbus-session",
        [NONE, &[Invisible, Refused, NotApplicable], NONE, NONE],
    );
    // Uevents of devices of no network namespace (the probe's host raises one of /dev/null)
    // would reach every namespace: the seccomp filter refuses a VM the uevent socket.
    table.insert("netlink-uevent", [NONE, &[Denied], NONE, NONE]);
    table.insert("netlink-audit", [NONE, BLOCKED, NONE, NONE]);
    // The client in the VM is given a host terminal as its `feather exec` stdin and controlling
    // terminal; feather passes the VM pipes of its own and a session of the VM's, so no host
    // terminal is there to inject into (the seccomp filter would also deny TIOCSTI/TIOCLINUX).
    for channel in ["tiocsti", "tioclinux"] {
        table.insert(channel, [NONE, &[Invisible, Denied], NONE, NONE]);
    }
    for channel in [
        "hostname-write",
        "clock-write",
        "sysctl-write",
        "sysfs-write",
        "mount",
        "module-load",
        "module-unload",
        "kexec",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "io_uring",
        "fanotify-filesystem",
    ] {
        table.insert(channel, [NONE, &[Denied], NONE, NONE]);
    }
    // The VM's sysfs has no cgroup hierarchy mounted: there is nothing to write.
    table.insert("cgroupfs-write", [NONE, BLOCKED, NONE, NONE]);
    table
}

/// System V objects on the host under the keys of the run's host listeners.
fn probe_keys_on_host(tag: &str) -> Vec<String> {
    let keys: Vec<i64> = ["l", "h"]
        .iter()
        .map(|s| feather_ipcprobe::agent::sysv_key(&format!("{tag}{s}")) as i64)
        .collect();
    ["shm", "sem", "msg"]
        .iter()
        .flat_map(|kind| {
            fs::read_to_string(format!("/proc/sysvipc/{kind}"))
                .unwrap_or_default()
                .lines()
                .skip(1)
                .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
                .filter(|key| key.parse::<i64>().is_ok_and(|k| keys.contains(&k)))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn probe_files_on_host(tag: &str) -> Vec<String> {
    ["/tmp", "/run", "/root", "/dev/shm", "/dev/mqueue"]
        .iter()
        .flat_map(|dir| {
            fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| e.path().display().to_string())
                        .filter(|p| p.contains(tag))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .collect()
}

/// Cells whose outcome is not among `expected()`'s, or that do not hold their expectation.
fn regressions(matrix: &Matrix) -> Vec<String> {
    let expected = expected();
    let mut wrong = Vec::new();
    for row in &matrix.rows {
        let Some(kinds) = expected.get(row.channel.as_str()) else {
            wrong.push(format!(
                "{}: a channel this test does not know; add its expectations",
                row.channel
            ));
            continue;
        };
        for (i, direction) in Direction::ALL.iter().enumerate() {
            let cell = row.cells.iter().find(|c| c.direction == *direction);
            // init's program → an exec'd one must behave as two exec'd programs do.
            let kinds = if *direction == Direction::InitToExec {
                kinds[3]
            } else {
                kinds[i]
            };
            match (cell, kinds.is_empty()) {
                (None, true) => {}
                (None, false) => {
                    wrong.push(format!("{} {}: no cell", row.channel, direction.label()))
                }
                (Some(cell), _) if !kinds.contains(&cell.outcome.kind) => wrong.push(format!(
                    "{} {}: {} ({}), expected {:?}",
                    row.channel,
                    direction.label(),
                    cell.outcome.kind.word(),
                    cell.outcome.detail,
                    kinds
                )),
                (Some(cell), _) if !cell.holds() => wrong.push(format!(
                    "{} {}: does not hold its expectation {:?}",
                    row.channel,
                    direction.label(),
                    cell.expect
                )),
                _ => {}
            }
        }
    }
    for channel in expected.keys() {
        if !matrix.rows.iter().any(|r| r.channel == *channel) {
            wrong.push(format!("{channel}: the probe no longer tries it"));
        }
    }
    wrong
}

fn probe(feather: &Feather, args: &[&str]) -> (Matrix, crate::support::Outcome) {
    let outcome = feather.run(args);
    let matrix: Matrix = serde_json::from_str(&outcome.stdout).unwrap_or_else(|e| {
        panic!(
            "check ipc printed no matrix ({e}): {}{}",
            outcome.stdout, outcome.stderr
        )
    });
    (matrix, outcome)
}

#[test]
fn every_ipc_channel_is_confined_across_vms_and_works_inside_one() {
    let feather = Feather::new("ipc-matrix");
    let (matrix, outcome) = probe(&feather, &["check", "ipc", "--json"]);

    let wrong = regressions(&matrix);
    assert!(
        wrong.is_empty(),
        "IPC matrix regressions:\n{}",
        wrong.join("\n")
    );
    assert_eq!(
        outcome.code, 0,
        "check ipc exits 0 when every cell holds: {}",
        outcome.stderr
    );

    // One-way flows by design are named, with their reason, in the matrix.
    for channel in ["file-read", "inotify-listener-watches", "keyring-user"] {
        let row = matrix.rows.iter().find(|r| r.channel == channel).unwrap();
        assert!(
            row.by_design.as_deref().is_some_and(|why| why.len() > 40),
            "{channel} lacks its reason"
        );
    }
    assert_eq!(
        matrix
            .cell("file-read", Direction::VmToHost)
            .unwrap()
            .expect,
        Expect::OneWayByDesign
    );

    // The probe left nothing behind on the host: no System V objects, queues or files, no VMs.
    let tag = format!("fp{}", outcome_pid_hint(&matrix));
    let keys = probe_keys_on_host(&tag);
    assert!(keys.is_empty(), "System V objects left: {keys:?}");
    assert!(
        probe_files_on_host(&tag).is_empty(),
        "files left: {:?}",
        probe_files_on_host(&tag)
    );
    assert!(
        !Path::new("/tmp/.X11-unix/X0").exists(),
        "the X11 socket was left"
    );
    assert_eq!(
        feather.ok(&["ls", "--json"]).trim(),
        "[]",
        "the probe's VMs were removed"
    );

    // `feather check ipc VM` probes a running VM of the user's and leaves it running. (In the
    // same test: two probes at once would see each other's display :0 socket.)
    feather.ok(&["create", "mine"]);
    feather.ok(&["start", "mine"]);
    let outcome = feather.run(&["check", "ipc", "mine"]);
    assert_eq!(outcome.code, 0, "{}{}", outcome.stdout, outcome.stderr);
    assert!(
        outcome
            .stdout
            .contains("every cross-boundary channel is blocked"),
        "{}",
        outcome.stdout
    );
    assert!(
        outcome.stdout.contains("VM A is the user's VM mine"),
        "{}",
        outcome.stdout
    );
    assert_eq!(feather.status("mine"), "running");
    let listing: serde_json::Value = serde_json::from_str(&feather.ok(&["ls", "--json"])).unwrap();
    assert_eq!(
        listing.as_array().unwrap().len(),
        1,
        "only the user's VM is left: {listing}"
    );
}

/// The token prefix of the run, as its details show it (`fp<pid>`).
fn outcome_pid_hint(matrix: &Matrix) -> String {
    matrix
        .rows
        .iter()
        .flat_map(|r| &r.cells)
        .find_map(|c| {
            let at = c.outcome.detail.find("/fp")?;
            let digits: String = c.outcome.detail[at + 3..]
                .chars()
                .take_while(|ch| ch.is_ascii_digit())
                .collect();
            (!digits.is_empty()).then_some(digits)
        })
        .unwrap_or_else(|| "no-such-run".into())
}

#[test]
fn check_ipc_of_a_vm_that_cannot_run_the_probe_fails_clearly_and_makes_nothing() {
    let feather = Feather::new("ipc-bad-vm");
    let missing = feather.run(&["check", "ipc", "no-such-vm"]);
    assert_eq!(missing.code, 1);
    assert!(
        missing
            .stderr
            .contains("cannot run the probe in VM no-such-vm"),
        "{}",
        missing.stderr
    );
    // A VM over a scratch base does not show the feather binary.
    let base = crate::support::ScratchBase::new("ipc-bad-vm");
    feather.ok(&["create", "bare", "--base", base.as_str()]);
    feather.ok(&["start", "bare"]);
    let bare = feather.run(&["check", "ipc", "bare"]);
    assert_eq!(bare.code, 1);
    assert!(
        bare.stderr.contains("its base must show that file"),
        "{}",
        bare.stderr
    );
    let listing: serde_json::Value = serde_json::from_str(&feather.ok(&["ls", "--json"])).unwrap();
    assert_eq!(
        listing.as_array().unwrap().len(),
        1,
        "no probe VM was made: {listing}"
    );
}

/// A shuttle rule opens exactly its own cell: VM B reaches a unix socket of VM A's at the path
/// the rule names, through B's broker, and every other cell stays as without rules.
/// (In the same group as the test above: two probes at once would see each other's display :0.)
#[test]
fn a_policy_rule_opens_exactly_its_cell_and_nothing_else() {
    let feather = Feather::new("ipc-matrix-policy");
    let label = format!("s{}", std::process::id());
    let (a, b) = (format!("ipcprobe-a-{label}"), format!("ipcprobe-b-{label}"));
    let rule_file = feather.write_policy(
        "10-probe",
        &format!("# the VM→VM listener (token fp{label}v) is in A; its client in B\nipc unix:/run/fp{label}v.stream {b} {a} allow\n"),
    );
    let (matrix, outcome) = probe(&feather, &["check", "ipc", "--json", "--label", &label]);

    let opened = matrix.cell("unix-stream:/run", Direction::VmToVm).unwrap();
    assert_eq!(opened.outcome.kind, Kind::Reached, "{:?}", opened.outcome);
    assert_eq!(opened.expect, Expect::OpenedByPolicy);
    assert_eq!(
        opened.rule.as_deref(),
        Some(format!("{}:2", rule_file.display()).as_str())
    );
    let others: Vec<String> = regressions(&matrix)
        .into_iter()
        .filter(|wrong| !wrong.starts_with("unix-stream:/run VM→VM:"))
        .collect();
    assert!(
        others.is_empty(),
        "cells the rule does not name changed:\n{}",
        others.join("\n")
    );
    assert_eq!(
        outcome.code, 0,
        "an opened cell is not a leak: {}",
        outcome.stderr
    );
    // The same socket of A's at another path, and the other kinds of socket, stay closed.
    for channel in [
        "unix-stream:/var/run",
        "unix-dgram:/run",
        "unix-seqpacket:/run",
    ] {
        let cell = matrix.cell(channel, Direction::VmToVm).unwrap();
        assert_ne!(
            cell.outcome.kind,
            Kind::Reached,
            "{channel}: {:?}",
            cell.outcome
        );
    }
    let audit = feather.ok(&["audit", "--json", "--vm", &b]);
    assert!(
        audit
            .lines()
            .any(|line| line.contains("\"outcome\":\"allowed\"")
                && line.contains(&format!("unix:/run/fp{label}v.stream"))),
        "the crossing is in the audit log: {audit}"
    );
}

/// The probe's listener in a VM is a process of the VM, run from the VM's view of the agent's
/// binary, which the VM's root can replace; what it prints is the VM's word. Here the VM's
/// listener names a host file (which the host's client would append to) and a host process by
/// its pid and start time under a token of the VM's choosing (which the host's client would
/// signal, trace and read). `check ipc` refuses such a listener: the host acts only on names
/// derived from the token it chose. Both harmless markers stay as they were.
#[test]
fn a_listener_in_a_vm_that_names_host_files_and_processes_moves_the_host_to_nothing() {
    let feather = Feather::new("ipc-forged");
    let host = crate::support::HostDir::new("ipc-forged");
    let victim = host.0.join("victim");
    fs::write(&victim, "marker").unwrap();
    let token = format!("redteamdecoy{}", std::process::id());
    let mut decoy = std::process::Command::new("/bin/sh")
        .args(["-c", "while :; do sleep 1; done", "decoy", &token])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let forged = serde_json::json!({
        "token": token,
        "pid": decoy.id(),
        "start_ticks": start_ticks(decoy.id()),
        "buffer_addr": 0,
        "sysv_key": 0,
        "mq_name": format!("/{token}"),
        "shm_path": format!("/dev/shm/{token}"),
        "tcp_port": 1,
        "udp_port": 1,
        "abstract_name": format!("{token}-abstract"),
        "fifo": format!("/tmp/{token}.fifo"),
        "file": victim.display().to_string(),
        "watched": format!("/tmp/{token}.watched"),
        "churned": format!("/tmp/{token}.churned"),
        "netns": 0,
        "interfaces": [],
        "dbus_system": false,
        "missing": [],
    });
    let agent = Path::new(Feather::bin()).with_file_name("feather-probe");
    feather.ok(&["create", "forger"]);
    feather.ok(&["start", "forger"]);
    // The VM's root replaces the agent in its own view (its layer; the host's file stays).
    let script = format!(
        "#!/bin/sh\ncase \"$2\" in\nping) exit 0 ;;\nlisten) echo '{forged}'; cat >/dev/null; \
         echo '{{\"events\":[]}}' ;;\n*) exit 1 ;;\nesac\n"
    );
    feather.sh(
        "forger",
        &format!(
            "rm -f {agent} && cat > {agent} <<'EOF'\n{script}EOF\nchmod 755 {agent}",
            agent = agent.display()
        ),
    );
    let outcome = feather.run(&["check", "ipc", "forger", "--json"]);
    let alive = decoy.try_wait().unwrap().is_none();
    let _ = decoy.kill();
    let _ = decoy.wait();
    assert_eq!(
        fs::read_to_string(&victim).unwrap(),
        "marker",
        "the host's client wrote to a host file the VM named: {}{}",
        outcome.stdout,
        outcome.stderr
    );
    assert!(
        alive,
        "the host's client signalled a host process the VM named: {}{}",
        outcome.stdout, outcome.stderr
    );
    assert_eq!(outcome.code, 1, "{}{}", outcome.stdout, outcome.stderr);
    assert!(
        outcome.stderr.contains("refused"),
        "the refusal says why: {}",
        outcome.stderr
    );
}
