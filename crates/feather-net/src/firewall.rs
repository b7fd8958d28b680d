//! feather's default network policy, in nftables: two tables per state root, both named after
//! its bridge — `inet` for what reaches or leaves the host, `bridge` for what passes between
//! ports of the bridge (VM to VM, which the `inet` family never sees). Each VM has a chain of
//! its own in both, reached through a verdict map, where later work adds the channels a
//! policy opens; empty chains fall through to the drop rules.
//!
//! - host → VM: allowed (the host's output is not filtered; replies are `established`)
//! - VM → host services: dropped (`inet input`)
//! - VM → VM: dropped (`bridge forward`)
//! - VM → outside: dropped unless the VM was created with `--egress` (then masqueraded)

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

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
    set ports {{ type ifname; }}
    map from_port {{ type ifname : verdict; }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname vmap @from_port
        iifname @ports counter drop comment "VM to VM"
    }}
}}
"#
        ),
    )
}

/// Removes the root's tables (when its bridge goes).
pub fn delete_tables(network: &RootNetwork) {
    let table = network.table();
    let _ = run(
        &format!("delete tables {table}"),
        &format!(
            "add table inet {table}\ndelete table inet {table}\nadd table bridge {table}\ndelete table bridge {table}\n"
        ),
    );
}

/// Adds one VM's chains and map entries.
pub fn add_vm(
    network: &RootNetwork,
    host_end: &str,
    address: Ipv4Addr,
    egress: bool,
) -> Result<()> {
    let table = network.table();
    let chain = chain(host_end);
    let mut script = format!(
        "add chain inet {table} {chain}\nadd element inet {table} from_vm {{ {address} : jump {chain} }}\n\
         add chain bridge {table} {chain}\nadd element bridge {table} from_port {{ \"{host_end}\" : jump {chain} }}\n\
         add element bridge {table} ports {{ \"{host_end}\" }}\n"
    );
    if egress {
        script += &format!("add element inet {table} egress {{ {address} }}\n");
    }
    run(&format!("add VM {host_end} to {table}"), &script)
}

/// Removes one VM's chains and map entries; whatever is already gone is skipped.
pub fn remove_vm(network: &RootNetwork, host_end: &str, address: Ipv4Addr, egress: bool) {
    let table = network.table();
    let chain = chain(host_end);
    let commands = [
        format!("delete element inet {table} egress {{ {address} }}"),
        format!("delete element inet {table} from_vm {{ {address} }}"),
        format!("delete chain inet {table} {chain}"),
        format!("delete element bridge {table} from_port {{ \"{host_end}\" }}"),
        format!("delete element bridge {table} ports {{ \"{host_end}\" }}"),
        format!("delete chain bridge {table} {chain}"),
    ];
    // One batch when everything is there (the usual case); one by one when not, since a
    // batch with a missing element fails as a whole.
    let what = format!("remove VM {host_end} from {table}");
    let usual = if egress {
        &commands[..]
    } else {
        &commands[1..]
    };
    if run(&what, &usual.join("\n")).is_ok() {
        return;
    }
    for command in &commands {
        let _ = run(&what, command);
    }
}

fn run(what: &str, script: &str) -> Result<()> {
    let failed = |why: String| NetError::Firewall {
        what: what.to_owned(),
        why,
    };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| failed(e.to_string()))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(failed(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ))
    }
}
