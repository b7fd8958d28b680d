//! A VM's network identity as `feather create` recorded it: the mode, the address it was
//! given, the host ports it publishes. The address is a virtual binding of the VM: chosen once,
//! kept across stop and start.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// How a VM is connected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// Its own network namespace, joined to the state root's bridge by a veth pair, with an
    /// address of its own and feather's default policy.
    #[default]
    Private,
    /// Its own network namespace with loopback only.
    None,
    /// The host's network namespace: the VM's network is not confined at all.
    Host,
}

impl FromStr for NetMode {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "private" => Ok(NetMode::Private),
            "none" => Ok(NetMode::None),
            "host" => Ok(NetMode::Host),
            _ => Err(Error::InvalidValue {
                what: "--net",
                value: text.to_owned(),
                why: "expected private, none or host".into(),
            }),
        }
    }
}

impl fmt::Display for NetMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetMode::Private => "private",
            NetMode::None => "none",
            NetMode::Host => "host",
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// `--publish HOSTPORT:VMPORT[/tcp|udp]`: a host port forwarded to a port of the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Publish {
    pub host_port: u16,
    pub vm_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

impl FromStr for Publish {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self, Error> {
        let invalid = |why: &str| Error::InvalidValue {
            what: "--publish",
            value: text.to_owned(),
            why: why.to_owned(),
        };
        let (ports, protocol) = match text.rsplit_once('/') {
            Some((ports, "tcp")) => (ports, Protocol::Tcp),
            Some((ports, "udp")) => (ports, Protocol::Udp),
            Some(_) => return Err(invalid("the protocol must be tcp or udp")),
            None => (text, Protocol::Tcp),
        };
        let (host, vm) = ports
            .split_once(':')
            .ok_or_else(|| invalid("expected HOSTPORT:VMPORT[/tcp|udp], e.g. 8081:80"))?;
        let port = |p: &str| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(invalid("ports are numbers from 1 to 65535")),
            Ok(port) => Ok(port),
        };
        Ok(Publish {
            host_port: port(host)?,
            vm_port: port(vm)?,
            protocol,
        })
    }
}

impl fmt::Display for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.host_port, self.vm_port, self.protocol)
    }
}

/// The `[network]` section of a VM's config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub mode: NetMode,
    /// The VM's address on its state root's bridge (`private` only), leased at create and
    /// returned at `rm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<Publish>,
    /// Whether the VM may reach beyond the host (masqueraded as the host).
    #[serde(default)]
    pub egress: bool,
}

impl Default for NetworkConfig {
    /// What a config written before VMs had networks meant: loopback only.
    fn default() -> Self {
        NetworkConfig {
            mode: NetMode::None,
            address: None,
            publish: Vec::new(),
            egress: false,
        }
    }
}

impl NetworkConfig {
    /// Checks that the options fit together: ports and egress need a private network, no port
    /// is 0, and no host port is published twice.
    pub fn validate(&self) -> Result<(), Error> {
        if self.mode != NetMode::Private {
            let option = if !self.publish.is_empty() {
                Some("--publish")
            } else if self.egress {
                Some("--egress")
            } else {
                None
            };
            if let Some(option) = option {
                return Err(Error::InvalidValue {
                    what: "--net",
                    value: self.mode.to_string(),
                    why: format!("{option} needs --net private"),
                });
            }
        }
        for (i, a) in self.publish.iter().enumerate() {
            // `--publish` never parses a port 0; a config written elsewhere may hold one.
            if a.host_port == 0 || a.vm_port == 0 {
                return Err(Error::InvalidValue {
                    what: "--publish",
                    value: a.to_string(),
                    why: "ports are numbers from 1 to 65535".into(),
                });
            }
            if self.publish[..i]
                .iter()
                .any(|b| a.host_port == b.host_port && a.protocol == b.protocol)
            {
                return Err(Error::InvalidValue {
                    what: "--publish",
                    value: a.to_string(),
                    why: format!(
                        "host port {}/{} is published twice",
                        a.host_port, a.protocol
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_parses_ports_and_protocol() {
        let p: Publish = "8081:80".parse().unwrap();
        assert_eq!(
            (p.host_port, p.vm_port, p.protocol),
            (8081, 80, Protocol::Tcp)
        );
        let p: Publish = "5353:53/udp".parse().unwrap();
        assert_eq!(
            (p.host_port, p.vm_port, p.protocol),
            (5353, 53, Protocol::Udp)
        );
        for bad in ["80", "0:80", "80:70000", "a:b", "80:80/sctp", ""] {
            assert!(bad.parse::<Publish>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn publishing_needs_a_private_network_and_distinct_ports() {
        let mut net = NetworkConfig {
            mode: NetMode::None,
            publish: vec!["8081:80".parse().unwrap()],
            ..NetworkConfig::default()
        };
        assert!(net.validate().is_err());
        net.mode = NetMode::Private;
        assert!(net.validate().is_ok());
        net.publish.push("8081:81".parse().unwrap());
        assert!(net.validate().is_err());
    }

    #[test]
    fn a_config_without_a_network_section_means_loopback_only() {
        #[derive(Deserialize)]
        struct Old {
            #[serde(default)]
            network: NetworkConfig,
        }
        let old: Old = toml::from_str("").unwrap();
        assert_eq!(old.network.mode, NetMode::None);
    }
}
