//! Removing CRIU's network lock from a VM's dumped network namespace after a failed post-copy
//! dump.
//!
//! CRIU locks a network namespace it dumps with iptables rules in it (a chain `CRIU` that drops
//! every packet but its own, jumped to from INPUT and OUTPUT) and removes them at the end of
//! the dump only when the processes are to run on — decided, in CRIU 4.1, before the lazy page
//! transfer (see `tcp_repair`). When that transfer fails, the VM runs on behind the lock,
//! unreachable. The keeper removes it as CRIU's `iptables_network_unlock_internal` would: the
//! same `iptables-restore` input, in the VM's namespace.

use std::io::Write;
use std::process::Stdio;

use nix::unistd::Pid;

const DELETE_JUMPS: &str = "*filter\n:CRIU - [0:0]\n-D INPUT -j CRIU\n-D OUTPUT -j CRIU\nCOMMIT\n";
const DELETE_CHAIN: &str = "*filter\n:CRIU - [0:0]\n-X CRIU\nCOMMIT\n";

/// Removes CRIU's lock from the network namespace of `init` (IPv4 and IPv6).
pub(crate) fn remove(init: Pid) -> Result<(), String> {
    for tool in ["iptables-restore", "ip6tables-restore"] {
        for rules in [DELETE_JUMPS, DELETE_CHAIN] {
            restore(init, tool, rules)?;
        }
    }
    Ok(())
}

/// `tool --noflush` with `rules` on its input, in the network namespace of `init`.
fn restore(init: Pid, tool: &str, rules: &str) -> Result<(), String> {
    let mut child = feather_sys::process::command("nsenter")
        .arg(format!("--net=/proc/{init}/ns/net"))
        .args(["--", tool, "-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nsenter {tool}: {e}"))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(rules.as_bytes())
            .map_err(|e| format!("{tool}: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("{tool}: {e}"))?;
    match output.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{tool} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}
