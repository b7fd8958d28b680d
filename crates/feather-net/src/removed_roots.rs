//! The networks of state roots removed by hand: a root's folder removed (`rm -rf`) while its
//! network was up — lingering for a next throw-away VM ([`crate::linger`]), or with a VM's
//! keeper killed — left the root's bridge, its two nftables tables and its host-wide claim on
//! the subnet, which nothing on disk tied to a root any more but the claim. The claim stays
//! while the bridge does (settings.rs): it keeps any root from taking that bridge or subnet,
//! and it says what to remove here.
//!
//! Removed when a root first chooses its network ([`crate::allocate`]) and by the host's
//! sweep of removed roots' cgroups (`rm` and the crash clean-up, once a minute at most). A
//! root counts as removed only from the mount namespace its claim was made in, when the root's
//! canonical path names no folder there or another folder than the one that claimed (device,
//! inode, birth time: a root made again at the same path is another root). A claim of another
//! namespace (a service's private /tmp) is never removed from outside it, nor a claim of an
//! older feather, which records neither: a leak, rather than a live root's network taken down.
//! A bridge with a port on it stays: a VM of the removed root may still run (its keeper alive,
//! its root gone under it), and ending it is for whoever removed the root. The other users
//! [`crate::linger::in_use`] counts — a claimed pooled namespace, a live keeper's marker — are
//! in the root's folders, gone with it. The claim goes only once the bridge is gone, and with
//! it the proxy ARP entries of the subnet on the uplink the claim records. The removal holds
//! the host's claims lock, which every private VM's start takes for a moment: once per removed
//! root, starts on the host wait for its nft commit and bridge deletion (RCU grace periods,
//! 20–90 ms).

use crate::netlink::{index_of, Netlink};
use crate::settings;

/// Removes the bridge, tables and claim of every removed root whose bridge has no port, and
/// the proxy ARP entries its claim's uplink holds in its subnet. The claim stays while the
/// bridge does: a deletion that failed leaves the pair held, not free with a bridge on it.
pub fn remove_networks() {
    let Ok((leftovers, _claims)) = settings::networks_of_removed_roots() else {
        return;
    };
    for leftover in leftovers {
        let network = &leftover.network;
        let Some(bridge) = index_of(&network.bridge) else {
            continue;
        };
        if crate::netlink::bridge_has_port(&network.bridge) {
            continue;
        }
        crate::firewall::delete_tables(network);
        if let Ok(mut netlink) = Netlink::open() {
            let _ = netlink.delete_link(bridge);
        }
        if index_of(&network.bridge).is_some() {
            continue;
        }
        if let Some(uplink) = &network.uplink {
            crate::netlink::forget_proxy_subnet(uplink, network.subnet);
        }
        leftover.release_claim();
    }
}
