//! A state root's VMs reachable from the host's LAN (`FEATHER_UPLINK`, `uplink` in the root's
//! network.toml): while a VM runs, its host answers ARP requests for the VM's address on the
//! uplink with the uplink's own hardware address (a proxy neighbour entry for exactly that
//! address, not the interface-wide `proxy_arp` switch: two hosts of one LAN may give their
//! roots the same subnet, and each must answer only for the VMs it runs) and routes what
//! arrives to the VM through the bridge. When a VM starts, is restored or arrives by a
//! migration, the host announces the address on the uplink (gratuitous ARP, a few times, as
//! QEMU does after a live migration), so neighbours send to this host at once; when it stops,
//! is checkpointed or leaves, the entry goes.
//!
//! ```text
//! LAN client ── ARP "who has 10.80.7.2?" ──▶ uplink of host b: proxy entry 10.80.7.2 → "me"
//!            ── TCP to 10.80.7.2 ─────────▶ forwarded: uplink → bridge → the VM's veth
//! ```

use std::fs;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};

use crate::error::{netlink as netlink_error, NetError, Result};
use crate::netlink::{index_of, Netlink};
use crate::settings::RootNetwork;

/// The pauses between the announcements after the first: QEMU's defaults (50 ms, growing by
/// 100 ms), five rounds in all.
const ANNOUNCE_PAUSES_MS: [u64; 4] = [50, 150, 250, 350];

/// Makes `address` reachable from the LAN through `network`'s uplink: forwarding on the
/// uplink and the bridge, proxy ARP replies at once (not after the random `proxy_delay`
/// meant to let a real owner answer first: the address is only ever this host's), and the
/// proxy entry itself. Call with the root's network lock held, once the bridge exists.
pub(crate) fn join(netlink: &mut Netlink, network: &RootNetwork, address: Ipv4Addr) -> Result<()> {
    let Some(uplink) = &network.uplink else {
        return Ok(());
    };
    let index = index_of(uplink).ok_or_else(|| missing(network, uplink))?;
    set_sysctl(&format!("/proc/sys/net/ipv4/conf/{uplink}/forwarding"), "1")?;
    set_sysctl(
        &format!("/proc/sys/net/ipv4/conf/{}/forwarding", network.bridge),
        "1",
    )?;
    set_sysctl(
        &format!("/proc/sys/net/ipv4/neigh/{uplink}/proxy_delay"),
        "0",
    )?;
    netlink
        .add_proxy_neighbour(index, address)
        .map_err(netlink_error(
            "add proxy ARP entry",
            format!("{address} on {uplink}"),
        ))
}

/// Stops answering for `address` on the uplink (nothing without one, or if already gone).
pub(crate) fn leave(netlink: &mut Netlink, network: &RootNetwork, address: Ipv4Addr) {
    if let Some(index) = network.uplink.as_deref().and_then(index_of) {
        let _ = netlink.delete_proxy_neighbour(index, address);
    }
}

/// Announces `address` on `network`'s uplink, five times over about 0.8 s, on a thread of its
/// own that blocks every signal (they belong to the keeper's main thread). Setting `stop`
/// ends the announcements early (the VM went away meanwhile).
pub(crate) fn announce(network: &RootNetwork, address: Ipv4Addr, stop: Arc<AtomicBool>) {
    let Some(uplink) = network.uplink.clone() else {
        return;
    };
    let Some(index) = index_of(&uplink) else {
        return;
    };
    let work = move || {
        for pause in std::iter::once(0).chain(ANNOUNCE_PAUSES_MS) {
            std::thread::sleep(Duration::from_millis(pause));
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if let Err(e) = feather_sys::net::announce_ipv4(&uplink, index, address) {
                eprintln!("feather: {e} (LAN neighbours learn the new place when they ask)");
                return;
            }
        }
    };
    let mut old = SigSet::empty();
    let _ = pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    );
    let _ = std::thread::Builder::new()
        .name("announce".into())
        .stack_size(128 << 10)
        .spawn(work);
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
}

fn missing(network: &RootNetwork, uplink: &str) -> NetError {
    NetError::Invalid(format!(
        "the uplink {uplink} of state root {} is not an interface of this host (fix `uplink` in \
         {}, or remove it to keep VMs off the LAN)",
        network.root().display(),
        network.root().join("network.toml").display()
    ))
}

fn set_sysctl(path: &str, value: &str) -> Result<()> {
    if fs::read_to_string(path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    fs::write(path, value).map_err(|source| NetError::Io {
        path: path.into(),
        source,
    })
}
