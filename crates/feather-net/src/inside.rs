//! What a VM's init does about its network inside its own namespace (and what the pool does
//! inside the namespaces it makes ahead): the VM's end of its veth pair gets its address, is
//! brought up, and routes through the bridge.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::error::{netlink as netlink_error, NetError, Result};
use crate::netlink::{index_of, Netlink};
use crate::settings::RootNetwork;

/// The name of the VM's end of its veth pair, inside its namespace.
pub const VM_INTERFACE: &str = "eth0";

/// The link-layer address of the VM's interface: its IPv4 address after a locally
/// administered prefix (`02:66:` then the four bytes), so the host's bridge tables can pin it
/// to the VM's port before the VM runs (crate::firewall), and a restored VM, which keeps its
/// address, keeps it too.
pub fn vm_mac(address: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = address.octets();
    [0x02, 0x66, a, b, c, d]
}

/// What the VM's init does about the network inside its new namespace.
#[derive(Clone, Debug)]
pub struct Inside {
    /// Whether the VM has a network namespace of its own (not `--net host`).
    pub own_namespace: bool,
    /// The VM's end of its veth pair to configure (`--net private`).
    pub interface: Option<Interface>,
    /// Generated files on the host and the paths inside the VM to bind them over.
    pub files: Vec<(PathBuf, PathBuf)>,
}

#[derive(Clone, Debug)]
pub struct Interface {
    pub name: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

impl Interface {
    /// The VM's end of its veth pair: `address` in `network`'s subnet, routed through its
    /// bridge.
    pub fn of_vm(network: &RootNetwork, address: Ipv4Addr) -> Interface {
        Interface {
            name: VM_INTERFACE.to_owned(),
            address,
            prefix: network.subnet.prefix(),
            gateway: network.gateway(),
        }
    }
}

impl Inside {
    /// Gives the VM's interface its link-layer address ([`vm_mac`]) and its address, brings it
    /// up and routes through the bridge. Runs in the VM's network namespace.
    pub fn configure(&self) -> Result<()> {
        let Some(interface) = &self.interface else {
            return Ok(());
        };
        let name = &interface.name;
        let mut netlink = Netlink::open().map_err(netlink_error("open netlink", "in the VM"))?;
        let index = index_of(name).ok_or_else(|| {
            NetError::Invalid(format!("interface {name} did not appear in the VM"))
        })?;
        netlink
            .set_mac(index, vm_mac(interface.address))
            .map_err(netlink_error("set the link-layer address of", name.clone()))?;
        netlink
            .add_address(index, interface.address, interface.prefix)
            .map_err(netlink_error(
                "add address",
                format!("{} to {name}", interface.address),
            ))?;
        netlink
            .set_up(index)
            .map_err(netlink_error("bring up", name.clone()))?;
        netlink
            .add_default_route(index, interface.gateway)
            .map_err(netlink_error(
                "add default route via",
                interface.gateway.to_string(),
            ))
    }
}
