//! IPv4 subnets: the one a state root's VMs get addresses from.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Text that is not a subnet feather can use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    #[error("{text:?}: expected ADDRESS/PREFIX, e.g. 10.77.0.0/16")]
    Form { text: String },
    #[error("{text:?}: {address:?} is not an IPv4 address")]
    Address { text: String, address: String },
    #[error("{text:?}: {prefix:?} is not a prefix length")]
    Prefix { text: String, prefix: String },
    #[error("prefix /{prefix}: must be between /8 and /30")]
    PrefixRange { prefix: u8 },
}

/// An IPv4 network, e.g. `10.77.0.0/16`. Its first host address is the bridge's (the VMs'
/// gateway); the others are leased to VMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    pub fn new(address: Ipv4Addr, prefix: u8) -> Result<Subnet, SubnetError> {
        if !(8..=30).contains(&prefix) {
            return Err(SubnetError::PrefixRange { prefix });
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Subnet {
            network: Ipv4Addr::from(u32::from(address) & mask),
            prefix,
        })
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    pub fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address) & self.mask() == u32::from(self.network)
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        let mask = self.mask() & other.mask();
        u32::from(self.network) & mask == u32::from(other.network) & mask
    }

    /// The bridge's address: the first host of the network.
    pub fn gateway(&self) -> Ipv4Addr {
        self.host(1)
    }

    /// The n-th address of the network.
    pub fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + n)
    }

    /// Addresses a VM may get: all hosts but the gateway, without network and broadcast.
    pub fn vm_hosts(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let size = 1u32 << (32 - self.prefix);
        (2..size - 1).map(|n| self.host(n))
    }

    /// Whether `address` is one of [`Subnet::vm_hosts`].
    pub fn is_vm_host(&self, address: Ipv4Addr) -> bool {
        let n = u32::from(address).wrapping_sub(u32::from(self.network));
        self.contains(address) && n >= 2 && n < (1u32 << (32 - self.prefix)) - 1
    }
}

impl FromStr for Subnet {
    type Err = SubnetError;
    fn from_str(text: &str) -> Result<Subnet, SubnetError> {
        let (address, prefix) = text
            .split_once('/')
            .ok_or_else(|| SubnetError::Form { text: text.into() })?;
        let ip: Ipv4Addr = address.parse().map_err(|_| SubnetError::Address {
            text: text.into(),
            address: address.into(),
        })?;
        let length: u8 = prefix.parse().map_err(|_| SubnetError::Prefix {
            text: text.into(),
            prefix: prefix.into(),
        })?;
        Subnet::new(ip, length)
    }
}

impl TryFrom<String> for Subnet {
    type Error = SubnetError;
    fn try_from(text: String) -> Result<Subnet, SubnetError> {
        text.parse()
    }
}

impl From<Subnet> for String {
    fn from(subnet: Subnet) -> String {
        subnet.to_string()
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_host_is_neither_the_network_nor_the_gateway_nor_the_broadcast_address() {
        let subnet: Subnet = "10.78.3.0/24".parse().unwrap();
        for last in [0, 1, 255] {
            assert!(!subnet.is_vm_host(Ipv4Addr::new(10, 78, 3, last)), "{last}");
        }
        assert!(!subnet.is_vm_host(Ipv4Addr::new(10, 78, 4, 2)));
        assert!(!subnet.is_vm_host(Ipv4Addr::new(10, 78, 2, 200)));
        let all: Vec<_> = subnet.vm_hosts().collect();
        assert!(all.iter().all(|a| subnet.is_vm_host(*a)));
        assert_eq!(all.len(), 253);
    }

    #[test]
    fn parses_and_counts_hosts() {
        let subnet: Subnet = "10.78.3.9/24".parse().unwrap();
        assert_eq!(subnet.to_string(), "10.78.3.0/24");
        assert_eq!(subnet.gateway(), Ipv4Addr::new(10, 78, 3, 1));
        let hosts: Vec<_> = subnet.vm_hosts().collect();
        assert_eq!(hosts.first(), Some(&Ipv4Addr::new(10, 78, 3, 2)));
        assert_eq!(hosts.last(), Some(&Ipv4Addr::new(10, 78, 3, 254)));
        assert!(subnet.overlaps(&"10.78.0.0/16".parse().unwrap()));
        assert!(!subnet.overlaps(&"10.78.4.0/24".parse().unwrap()));
        assert_eq!(
            "10.0.0.0/31".parse::<Subnet>(),
            Err(SubnetError::PrefixRange { prefix: 31 })
        );
        assert!(matches!(
            "nonsense".parse::<Subnet>(),
            Err(SubnetError::Form { .. })
        ));
    }
}
