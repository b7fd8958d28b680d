//! feather's default network policy, in nftables: two tables per state root, both named after
//! its bridge — `inet` for what reaches or leaves the host, `bridge` for what passes between
//! ports of the bridge (VM to VM, which the `inet` family never sees). Each VM has a chain of
//! its own in both, reached through a verdict map, where later work adds the channels a
//! policy opens; empty chains fall through to the drop rules.
//!
//! - host → VM: allowed (the host's output is not filtered; replies are `established`)
//! - VM → host services: dropped (`inet input`)
//! - VM → VM: dropped (`bridge forward`, frames from any `fth*` port: this kernel has neither
//!   `meta ibrname` nor bridge conntrack, so the rules there match ports, statelessly)
//! - VM → outside: dropped unless the VM was created with `--egress` (then masqueraded)
//!
//! The drops match by interface (the bridge, `fth*` ports), so they hold from the moment a
//! VM's veth exists, before its own chains are added.

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};

use crate::error::{NetError, Result};
use crate::settings::RootNetwork;

/// The policy chain names of one VM, from its interface name.
fn chain(host_end: &str) -> String {
    format!("vm-{host_end}")
}

/// Creates the root's two tables afresh (dropping any left over).
pub fn create_tables(network: &RootNetwork) -> Result<()> {
    let table = network.table();
    let bridge = &network.bridge;
    let subnet = network.subnet;
    run(
        &format!("create tables {table}"),
        &format!(
            r#"add table inet {table}
delete table inet {table}
add table bridge {table}
delete table bridge {table}
table inet {table} {{
    map from_vm {{ type ipv4_addr : verdict; }}
    set egress {{ type ipv4_addr; }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{bridge}" ct state established,related accept
        iifname "{bridge}" ip saddr vmap @from_vm
        iifname "{bridge}" counter drop comment "VM to host services"
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        oifname "{bridge}" ct state established,related accept
        iifname "{bridge}" oifname != "{bridge}" ip saddr @egress accept
        iifname "{bridge}" counter drop comment "VM to outside without --egress"
        oifname "{bridge}" counter drop comment "outside to VM"
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname != "{bridge}" ip saddr @egress ip daddr != {subnet} masquerade
    }}
}}
table bridge {table} {{
    map from_port {{ type ifname : verdict; }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname vmap @from_port
        iifname "fth*" counter drop comment "VM to VM"
    }}
}}
"#
        ),
    )
}

/// Starts removing the root's tables (when its bridge goes).
pub fn delete_tables(network: &RootNetwork) -> Option<Pending> {
    let table = network.table();
    spawn(
        &format!("delete tables {table}"),
        &format!(
            "add table inet {table}\ndelete table inet {table}\nadd table bridge {table}\ndelete table bridge {table}\n"
        ),
    )
    .ok()
}

/// Starts adding one VM's chains and map entries (and its address to `egress`). The default
/// drops hold without them, so the VM may start while `nft` runs; [`Pending::finish`] waits.
pub fn add_vm(
    network: &RootNetwork,
    host_end: &str,
    address: Ipv4Addr,
    egress: bool,
) -> Result<Pending> {
    let table = network.table();
    let chain = chain(host_end);
    let mut script = format!(
        "add chain inet {table} {chain}\nadd element inet {table} from_vm {{ {address} : jump {chain} }}\n\
         add chain bridge {table} {chain}\nadd element bridge {table} from_port {{ \"{host_end}\" : jump {chain} }}\n"
    );
    if egress {
        script += &format!("add element inet {table} egress {{ {address} }}\n");
    }
    spawn(&format!("add VM {host_end} to {table}"), &script)
}

/// Starts removing one VM's chains and map entries. Whatever is already gone is skipped:
/// a batch with a missing element fails as a whole, and then [`Pending::finish`] removes the
/// parts one by one.
pub fn remove_vm(
    network: &RootNetwork,
    host_end: &str,
    address: Ipv4Addr,
    egress: bool,
) -> Option<Pending> {
    let table = network.table();
    let chain = chain(host_end);
    let commands = vec![
        format!("delete element inet {table} egress {{ {address} }}"),
        format!("delete element inet {table} from_vm {{ {address} }}"),
        format!("delete chain inet {table} {chain}"),
        format!("delete element bridge {table} from_port {{ \"{host_end}\" }}"),
        format!("delete chain bridge {table} {chain}"),
    ];
    let usual = if egress {
        &commands[..]
    } else {
        &commands[1..]
    };
    let mut pending = spawn(
        &format!("remove VM {host_end} from {table}"),
        &usual.join("\n"),
    )
    .ok()?;
    pending.fallback = commands;
    Some(pending)
}

fn run(what: &str, script: &str) -> Result<()> {
    spawn(what, script)?.finish()
}

/// An `nft` run under way.
pub struct Pending {
    child: Child,
    what: String,
    /// Commands to run one at a time if the batch fails.
    fallback: Vec<String>,
    /// A lock held until nft is done (the root's network lock during a tear-down).
    lock: Option<File>,
}

fn failed(what: &str, why: String) -> NetError {
    NetError::Firewall {
        what: what.to_owned(),
        why,
    }
}

fn spawn(what: &str, script: &str) -> Result<Pending> {
    let failed = |why| failed(what, why);
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run nft: {e}")))?;
    // The script is far smaller than a pipe's buffer: writing it never blocks on nft.
    if let Some(mut stdin) = child.stdin.take() {
        if let Err(e) = stdin.write_all(script.as_bytes()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(e.to_string()));
        }
    }
    Ok(Pending {
        child,
        what: what.to_owned(),
        fallback: Vec::new(),
        lock: None,
    })
}

impl Pending {
    /// Keeps `lock` until nft is done.
    pub fn holding(mut self, lock: File) -> Pending {
        self.lock = Some(lock);
        self
    }

    /// Waits for `nft` and says whether it applied the batch (or, with a fallback, whatever
    /// part of it could be applied).
    pub fn finish(self) -> Result<()> {
        let output = self
            .child
            .wait_with_output()
            .map_err(|e| failed(&self.what, e.to_string()))?;
        if output.status.success() {
            return Ok(());
        }
        if !self.fallback.is_empty() {
            for command in &self.fallback {
                let _ = run(&self.what, command);
            }
            return Ok(());
        }
        Err(failed(
            &self.what,
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ))
    }
}
