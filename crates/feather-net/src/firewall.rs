//! feather's default network policy, in nftables: two tables per state root, both named after
//! its bridge — `inet` for what reaches or leaves the host, `bridge` for what passes between
//! ports of the bridge (VM to VM, which the `inet` family never sees). Each VM has a chain of
//! its own in both, reached through a verdict map, where later work adds the channels a
//! policy opens; empty chains fall through to the drop rules.
//!
//! - host → VM: allowed (the host's output is not filtered; replies are `established`)
//! - VM → host services: refused (`inet input` rejects: TCP reset, ICMP port unreachable), as
//!   if nothing listened there
//! - VM → VM: dropped (`bridge forward`, frames from any `fth*` port: this kernel has neither
//!   `meta ibrname`, bridge conntrack nor bridge `reject`, so the rules there match ports,
//!   statelessly, and drop)
//! - VM → outside: dropped unless the VM was created with `--egress` (then masqueraded)
//! - a VM's frames carry its own address: a VM's root holds `CAP_NET_RAW` and can write any
//!   source address and ARP claim, so the `bridge prerouting` chain drops, before the bridge
//!   learns from them or the host sees them, frames from a VM's port whose source MAC address
//!   is not that port's VM's (`port_mac`, [`crate::inside::vm_mac`]), IPv4 packets and ARP
//!   claims whose sender address is not (`port_address`), and frames other than IPv4 and ARP.
//!   A VM has no IPv6 (feather gives it none; its kernel still makes a link-local address):
//!   its router and neighbour advertisements would otherwise reach the host's IPv6 stack on
//!   the bridge, which takes router advertisements (`accept_ra`) — `inet input` rejects them
//!   too, but the host need not parse them at all. Nor IGMP: a VM's membership reports would
//!   fill the bridge's multicast table (see [`crate::netlink::Netlink::create_bridge`], which
//!   makes bridges without one) and speak to the host's IGMP. It
//!   matches the root's own ports (`ports`), not `fth*`: a bridge table's hooks see the frames
//!   of every bridge, other roots' too (this kernel has no `meta ibrname`).
//!   Otherwise a VM would leave with another's `--egress` address, take another's address in
//!   the host's ARP table, or teach the bridge another's MAC address on its own port (and
//!   with either receive the host's and the LAN's traffic to that VM).
//! - LAN → VM (a root with an uplink, see [`crate::uplink`]): allowed, like host → VM; the VM
//!   answers but opens nothing towards the LAN
//!
//! The drops match by interface (the bridge, `fth*` ports), so they hold from the moment a
//! VM's veth exists, before its own chains are added.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::Stdio;

use crate::error::{NetError, Result};
use crate::nftables::{self, Change, Key};
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
    // With an uplink, the LAN behind it reaches the VMs as the host does: connections from it
    // are let in, only their replies go back. A connection from the LAN that came with a VM
    // migrated here is not in this host's connection tracking, and its next segment may be
    // the VM's (CRIU's restored socket sends a window probe): a segment of an established
    // connection (ACK without SYN) starts no new one, so it may pass and be tracked from there
    // — only from a VM restored in the last ARRIVAL_WINDOW (set `arrived`), so that no other
    // VM can send anything unasked towards the LAN.
    let (lan_in, lan_out) = match &network.uplink {
        Some(uplink) => (
            format!(
                "iifname \"{uplink}\" oifname \"{bridge}\" counter accept comment \"LAN to VM\"\n        "
            ),
            format!(
                "iifname \"{bridge}\" oifname \"{uplink}\" ct state established,related accept\n        \
                 iifname \"{bridge}\" oifname \"{uplink}\" ip saddr @arrived ct state new tcp flags & (syn | ack) == ack accept comment \"a LAN connection that migrated here\"\n        "
            ),
        ),
        None => (String::new(), String::new()),
    };
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
    set arrived {{ type ipv4_addr; flags timeout; }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{bridge}" ct state established,related accept
        iifname "{bridge}" ip saddr vmap @from_vm
        iifname "{bridge}" meta l4proto tcp counter reject with tcp reset comment "VM to host services"
        iifname "{bridge}" counter reject with icmpx port-unreachable comment "VM to host services"
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        oifname "{bridge}" ct state established,related accept
        {lan_in}{lan_out}iifname "{bridge}" oifname != "{bridge}" ip saddr @egress accept
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
    set ports {{ type ifname; }}
    set port_address {{ type ifname . ipv4_addr; }}
    set port_mac {{ type ifname . ether_addr; }}
    chain prerouting {{
        type filter hook prerouting priority filter; policy accept;
        iifname @ports iifname . ether saddr != @port_mac counter drop comment "a VM's frame from a link-layer address not its own"
        iifname @ports ether type != {{ ip, arp }} counter drop comment "neither IPv4 nor ARP from a VM (a VM has no IPv6)"
        iifname @ports ip protocol igmp counter drop comment "a VM's IGMP (no multicast between VMs)"
        iifname @ports ether type ip iifname . ip saddr != @port_address counter drop comment "a VM's packet from an address not its own"
        iifname @ports ether type arp iifname . arp saddr ip != @port_address counter drop comment "a VM's ARP claim of an address not its own"
        iifname @ports ether type arp iifname . arp saddr ether != @port_mac counter drop comment "a VM's ARP claim of a link-layer address not its own"
    }}
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

/// How long after its restore a VM's established TCP connections may speak first towards the
/// LAN (see `create_tables`): TCP's retransmissions bring every connection back well within it.
const ARRIVAL_WINDOW_SECS: u32 = 120;

/// Marks a VM as just restored here (for a root with an uplink): for [`ARRIVAL_WINDOW_SECS`]
/// the segments of its connections from the LAN may pass before this host has seen them.
pub fn note_arrival(network: &RootNetwork, address: Ipv4Addr) -> Result<()> {
    let table = network.table();
    run(
        &format!("note the arrival of {address}"),
        &format!(
            "add element inet {table} arrived {{ {address} timeout {ARRIVAL_WINDOW_SECS}s }}\n"
        ),
    )
}

/// Removes the root's tables (when its bridge goes): one netlink batch, or, when one of them
/// is gone already (which fails the batch), each on its own.
pub fn delete_tables(network: &RootNetwork) {
    use nftables::Family::{Bridge, Inet};
    let table = network.table();
    let table = table.as_str();
    let changes = [
        Change::DeleteTable {
            family: Inet,
            table,
        },
        Change::DeleteTable {
            family: Bridge,
            table,
        },
    ];
    if nftables::apply(&changes).is_err() {
        for change in changes {
            let _ = nftables::apply(std::slice::from_ref(&change));
        }
    }
}

/// The changes that give one VM its chains and map entries (and its address to `egress`).
fn vm_entries<'a>(
    table: &'a str,
    chain: &'a str,
    host_end: &'a str,
    address: Ipv4Addr,
    egress: bool,
) -> Vec<Change<'a>> {
    use nftables::Family::{Bridge, Inet};
    let mut changes = vec![
        Change::AddChain {
            family: Inet,
            table,
            chain,
        },
        Change::AddElement {
            family: Inet,
            table,
            set: "from_vm",
            key: Key::Ipv4(address),
            jump: Some(chain),
        },
        Change::AddChain {
            family: Bridge,
            table,
            chain,
        },
        Change::AddElement {
            family: Bridge,
            table,
            set: "from_port",
            key: Key::Interface(host_end),
            jump: Some(chain),
        },
        Change::AddElement {
            family: Bridge,
            table,
            set: "ports",
            key: Key::Interface(host_end),
            jump: None,
        },
        Change::AddElement {
            family: Bridge,
            table,
            set: "port_address",
            key: Key::InterfaceAddress(host_end, address),
            jump: None,
        },
        Change::AddElement {
            family: Bridge,
            table,
            set: "port_mac",
            key: Key::InterfaceMac(host_end, crate::inside::vm_mac(address)),
            jump: None,
        },
    ];
    if egress {
        changes.push(Change::AddElement {
            family: Inet,
            table,
            set: "egress",
            key: Key::Ipv4(address),
            jump: None,
        });
    }
    changes
}

/// Adds one VM's chains and map entries, in one transaction.
pub fn add_vm(
    network: &RootNetwork,
    host_end: &str,
    address: Ipv4Addr,
    egress: bool,
) -> Result<()> {
    let table = network.table();
    let chain = chain(host_end);
    nftables::apply(&vm_entries(&table, &chain, host_end, address, egress)).map_err(|source| {
        NetError::Firewall {
            what: format!("add VM {host_end} to tables {table}"),
            source,
        }
    })
}

/// Removes one VM's chains and map entries. Whatever is already gone is skipped: a batch with
/// a missing entry fails as a whole, and then the entries are removed one at a time.
pub fn remove_vm(network: &RootNetwork, host_end: &str, address: Ipv4Addr, egress: bool) {
    remove_vm_then(network, host_end, address, egress, || {});
}

/// [`remove_vm`], calling `removed` once the entries are gone, before the kernel has freed
/// them (see [`nftables::apply_then`]).
pub fn remove_vm_then(
    network: &RootNetwork,
    host_end: &str,
    address: Ipv4Addr,
    egress: bool,
    removed: impl FnOnce(),
) {
    use nftables::Family::{Bridge, Inet};
    let table = network.table();
    let chain = chain(host_end);
    let table = table.as_str();
    let chain = chain.as_str();
    // Elements before the chains they jump to: a chain still referenced cannot go.
    let mut changes = Vec::new();
    if egress {
        changes.push(Change::DeleteElement {
            family: Inet,
            table,
            set: "egress",
            key: Key::Ipv4(address),
        });
    }
    changes.extend([
        Change::DeleteElement {
            family: Inet,
            table,
            set: "from_vm",
            key: Key::Ipv4(address),
        },
        Change::DeleteChain {
            family: Inet,
            table,
            chain,
        },
        Change::DeleteElement {
            family: Bridge,
            table,
            set: "from_port",
            key: Key::Interface(host_end),
        },
        Change::DeleteElement {
            family: Bridge,
            table,
            set: "ports",
            key: Key::Interface(host_end),
        },
        Change::DeleteElement {
            family: Bridge,
            table,
            set: "port_address",
            key: Key::InterfaceAddress(host_end, address),
        },
        Change::DeleteElement {
            family: Bridge,
            table,
            set: "port_mac",
            key: Key::InterfaceMac(host_end, crate::inside::vm_mac(address)),
        },
        Change::DeleteChain {
            family: Bridge,
            table,
            chain,
        },
    ]);
    let mut removed = Some(removed);
    let said = || {
        if let Some(removed) = removed.take() {
            removed();
        }
    };
    if nftables::apply_then(&changes, said).is_err() {
        for change in changes {
            let _ = nftables::apply(std::slice::from_ref(&change));
        }
    }
    if let Some(removed) = removed.take() {
        removed();
    }
}

/// Runs `nft -f -` on `script`: one atomic batch.
fn run(what: &str, script: &str) -> Result<()> {
    let failed = |source| NetError::Firewall {
        what: what.to_owned(),
        source,
    };
    let mut child = feather_sys::process::command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(failed)?;
    // The script is far smaller than a pipe's buffer: writing it never blocks on nft.
    let written = child
        .stdin
        .take()
        .map_or(Ok(()), |mut stdin| stdin.write_all(script.as_bytes()));
    let output = child.wait_with_output().map_err(failed)?;
    written.map_err(failed)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NetError::FirewallRefused {
            what: what.to_owned(),
            why: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}
