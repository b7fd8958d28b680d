//! The networks of state roots removed by hand: a root's folder removed (`rm -rf`) while its
//! network was up — lingering for a next throw-away VM ([`crate::linger`]), or with a VM's
//! keeper killed — left the root's bridge, its two nftables tables and its host-wide claim on
//! the subnet, which nothing on disk tied to a root any more but the claim. The claim stays
//! while the bridge does (settings.rs): it keeps any root from taking that bridge or subnet,
//! and it says what to remove here.
//!
//! Removed when a root first chooses its network ([`crate::allocate`]) and by the host's
//! sweep of removed roots' cgroups (`rm` and the crash clean-up, once a minute at most). A
//! bridge with a port on it stays: a VM of the removed root may still run (its keeper alive,
//! its root gone under it), and ending it is for whoever removed the root. The removal holds
//! the host's claims lock, which every private VM's start takes for a moment: once per removed
//! root, starts on the host wait for its nft commit and bridge deletion (RCU grace periods,
//! 20–90 ms).

use crate::netlink::{index_of, Netlink};
use crate::settings;

/// Removes the bridge, tables and claim of every removed root whose bridge has no port.
pub fn remove_networks() {
    let Ok((networks, _claims)) = settings::networks_of_removed_roots() else {
        return;
    };
    for network in networks {
        let Some(bridge) = index_of(&network.bridge) else {
            continue;
        };
        if has_port(&network.bridge) {
            continue;
        }
        crate::firewall::delete_tables(&network);
        if let Ok(mut netlink) = Netlink::open() {
            let _ = netlink.delete_link(bridge);
        }
        network.release_claim();
    }
}

/// Whether any interface is a port of the bridge `name` (or its ports cannot be read).
fn has_port(name: &str) -> bool {
    let ports = std::path::Path::new("/sys/class/net")
        .join(name)
        .join("brif");
    std::fs::read_dir(ports).map_or(true, |mut ports| ports.next().is_some())
}
