//! A state root's network: the bridge its VMs join and the subnet their addresses come from,
//! kept in `<root>/network.toml`. Bridges and subnets are host-wide resources, so each root
//! holds a claim on its pair in `/run/feather-net/claims/`: two state roots (two tests running
//! at once) never share a bridge or an overlapping subnet.
//!
//! ```text
//! <root>/network.toml          bridge = "feather0", subnet = "10.77.0.0/16"
//! <root>/network-leases/<address>   the id of the VM holding it (see leases.rs)
//! <root>/network.lock          serialises bridge set-up and tear-down of this root
//! /run/feather-net/claims/<bridge>   which root holds which bridge and subnet
//! ```

use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use feather_core::atomic::{write_atomic, Durability};
use serde::{Deserialize, Serialize};

use crate::error::{IoAt, NetError, Result};
use crate::subnet::Subnet;

/// The default state root's bridge and subnet.
pub const DEFAULT_BRIDGE: &str = "feather0";
pub const DEFAULT_SUBNET: &str = "10.77.0.0/16";
/// Other state roots get a /24 of this range each, and a bridge named after it.
const POOL: &str = "10.78.0.0/16";
const DEFAULT_STATE_DIR: &str = "/var/lib/feather";
const CLAIMS: &str = "/run/feather-net/claims";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SettingsFile {
    bridge: String,
    subnet: Subnet,
    /// The host's LAN-facing interface through which the root's VMs are reachable (proxy
    /// ARP); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uplink: Option<String>,
}

/// The network of one state root.
#[derive(Clone, Debug)]
pub struct RootNetwork {
    pub bridge: String,
    pub subnet: Subnet,
    /// The host's interface to the LAN (`FEATHER_UPLINK`, `uplink` in network.toml): each
    /// running VM's address is answered for there (see [`crate::uplink`]).
    pub uplink: Option<String>,
    root: PathBuf,
}

impl RootNetwork {
    fn settings_path(root: &Path) -> PathBuf {
        root.join("network.toml")
    }

    /// The root's network as recorded, or None if no VM of this root ever had one.
    pub fn load(root: &Path) -> Result<Option<RootNetwork>> {
        let path = Self::settings_path(root);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).at(path),
        };
        let file: SettingsFile = toml::from_str(&text).map_err(|source| NetError::BadFile {
            path: path.clone(),
            source,
        })?;
        Ok(Some(RootNetwork {
            bridge: file.bridge,
            subnet: file.subnet,
            uplink: file.uplink,
            root: root.to_path_buf(),
        }))
    }

    /// The root's network, chosen on first use: from FEATHER_BRIDGE and FEATHER_SUBNET if
    /// set, `feather0` and 10.77.0.0/16 for the default root, otherwise the first free /24 of
    /// 10.78.0.0/16. Also (re)asserts the root's host-wide claim, which a reboot clears.
    pub fn load_or_choose(root: &Path) -> Result<RootNetwork> {
        Self::load_or_choose_locked(root).map(|(network, _lock)| network)
    }

    /// [`RootNetwork::load_or_choose`], returning with the root's network lock held, so that
    /// the root cannot forget its network before the caller leases an address in it.
    pub fn load_or_choose_locked(root: &Path) -> Result<(RootNetwork, File)> {
        fs::create_dir_all(root).at(root)?;
        let root_lock = lock(&root.join("network.lock"))?;
        let claims_lock = claims_lock()?;
        let network = match Self::load(root)? {
            Some(network) => network,
            None => {
                let network = Self::choose(root)?;
                // Claimed before it is recorded: a refused choice leaves nothing behind.
                network.claim()?;
                let file = SettingsFile {
                    bridge: network.bridge.clone(),
                    subnet: network.subnet,
                    uplink: network.uplink.clone(),
                };
                let text = toml::to_string(&file).map_err(|source| NetError::Encode {
                    what: "the root's network settings",
                    source,
                })?;
                let path = Self::settings_path(root);
                write_atomic(&path, text.as_bytes(), Durability::Durable)?;
                network
            }
        };
        network.claim()?;
        drop(claims_lock);
        Ok((network, root_lock))
    }

    /// Once the root's last lease is returned and its bridge is gone: forgets the root's
    /// network (settings, leases folder, host-wide claim), so a deleted or idle root holds no
    /// subnet. The next private VM of the root chooses again. Call with the root's lock held.
    pub fn forget_if_unused(&self) {
        let leases = self.root.join("network-leases");
        let unused = fs::read_dir(&leases).map_or(true, |mut entries| entries.next().is_none());
        if !unused || crate::netlink::index_of(&self.bridge).is_some() {
            return;
        }
        let Ok(_claims) = claims_lock() else { return };
        let _ = fs::remove_dir(&leases);
        let _ = fs::remove_file(Self::settings_path(&self.root));
        self.release_claim();
    }

    fn choose(root: &Path) -> Result<RootNetwork> {
        let env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
        let is_default = root == Path::new(DEFAULT_STATE_DIR);
        let bridge = env("FEATHER_BRIDGE");
        let subnet = match env("FEATHER_SUBNET") {
            Some(text) => Some(text.parse::<Subnet>().map_err(|source| NetError::Setting {
                name: "FEATHER_SUBNET",
                source,
            })?),
            None if is_default => Some(DEFAULT_SUBNET.parse().expect("valid default")),
            None => None,
        };
        if let Some(name) = &bridge {
            validate_interface_name("FEATHER_BRIDGE", name)?;
        }
        let uplink = env("FEATHER_UPLINK");
        if let Some(name) = &uplink {
            validate_interface_name("FEATHER_UPLINK", name)?;
            if crate::netlink::index_of(name).is_none() {
                return Err(NetError::Invalid(format!(
                    "FEATHER_UPLINK {name}: no interface of that name on this host (name the \
                     interface facing the LAN, as `ip link` shows it)"
                )));
            }
        }
        if let Some(subnet) = subnet {
            let bridge = bridge.unwrap_or_else(|| {
                if is_default {
                    DEFAULT_BRIDGE.to_owned()
                } else {
                    // Named after the whole network address: unique to the subnet.
                    format!("fbr{:08x}", u32::from(subnet.host(0)))
                }
            });
            // The LAN's own route on the uplink may hold the subnet: its VMs then look like
            // hosts of the LAN, which is what proxy ARP is for.
            let lan = |device: &str, route: &Subnet| {
                uplink.as_deref() == Some(device) && route.prefix() < subnet.prefix()
            };
            if let Some((device, route)) = host_routes().into_iter().find(|(device, route)| {
                route.overlaps(&subnet) && *device != bridge && !lan(device, route)
            }) {
                return Err(NetError::Invalid(format!(
                    "subnet {subnet} overlaps the host's route to {route} on {device}: choose \
                     another with FEATHER_SUBNET"
                )));
            }
            return Ok(RootNetwork {
                bridge,
                subnet,
                uplink,
                root: root.to_path_buf(),
            });
        }
        if let Some(bridge) = &bridge {
            if let Some(holder) = holder(root, bridge, None) {
                return Err(NetError::SubnetTaken {
                    subnet: "(any)".into(),
                    bridge: bridge.clone(),
                    holder,
                    settings: Self::settings_path(root),
                });
            }
        }
        let pool: Subnet = POOL.parse().expect("valid pool");
        let routes = host_routes();
        for n in 0..256u32 {
            let candidate = Subnet::new(pool.host(n << 8), 24).expect("a /24");
            let bridge = bridge.clone().unwrap_or_else(|| pool_bridge(candidate));
            let network = RootNetwork {
                bridge,
                subnet: candidate,
                uplink: uplink.clone(),
                root: root.to_path_buf(),
            };
            let routed = routes
                .iter()
                .any(|(device, route)| route.overlaps(&candidate) && *device != network.bridge);
            if !routed && network.conflict().is_none() {
                return Ok(network);
            }
        }
        Err(NetError::NoSubnet { pool: POOL.into() })
    }

    /// The live claim of another root on this bridge or an overlapping subnet, if any.
    fn conflict(&self) -> Option<String> {
        holder(&self.root, &self.bridge, Some(&self.subnet))
    }

    /// Records that this root holds its bridge and subnet (under the claims lock).
    fn claim(&self) -> Result<()> {
        if let Some(holder) = self.conflict() {
            return Err(NetError::SubnetTaken {
                subnet: self.subnet.to_string(),
                bridge: self.bridge.clone(),
                holder,
                settings: Self::settings_path(&self.root),
            });
        }
        let claim = Claim {
            bridge: self.bridge.clone(),
            subnet: self.subnet,
            root: self.root.clone(),
        };
        let path = Path::new(CLAIMS).join(&self.bridge);
        let text = toml::to_string(&claim).map_err(|source| NetError::Encode {
            what: "the root's network claim",
            source,
        })?;
        if fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            write_atomic(&path, text.as_bytes(), Durability::Volatile)?;
        }
        Ok(())
    }

    /// Removes this root's host-wide claim, if it is still this root's. Call with the claims
    /// lock held ([`networks_of_removed_roots`]).
    pub(crate) fn release_claim(&self) {
        let claim = Path::new(CLAIMS).join(&self.bridge);
        if let Ok(text) = fs::read_to_string(&claim) {
            if toml::from_str::<Claim>(&text).is_ok_and(|c| c.root == self.root) {
                let _ = fs::remove_file(claim);
            }
        }
    }

    /// The nftables tables (one `inet`, one `bridge`) holding this root's policy.
    pub fn table(&self) -> String {
        if self.bridge.starts_with("feather") {
            self.bridge.clone()
        } else {
            format!("feather-{}", self.bridge)
        }
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.gateway()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This root's lock for leases and for setting up or tearing down the bridge.
    pub fn lock(&self) -> Result<File> {
        lock(&self.root.join("network.lock"))
    }

    /// [`RootNetwork::lock`], waiting at most `patience`: None when it stayed taken (or its
    /// file cannot be opened).
    pub fn lock_within(&self, patience: std::time::Duration) -> Option<File> {
        let file = open_lock_file(&self.root.join("network.lock")).ok()?;
        lock_within(&file, patience).then_some(file)
    }
}

/// Takes `file`'s lock, waiting at most `patience` for whoever holds it: whether it is taken.
/// For waits done while holding a lock that other commands wait for, which must end.
pub(crate) fn lock_within(file: &File, patience: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match file.try_lock() {
            Ok(()) => return true,
            Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(_) => return false,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claim {
    bridge: String,
    subnet: Subnet,
    root: PathBuf,
}

impl Claim {
    /// A claim holds while its root still records the same bridge and subnet; a root deleted
    /// wholesale (`rm -rf`) releases its claim with it.
    fn is_live(&self) -> bool {
        matches!(
            RootNetwork::load(&self.root),
            Ok(Some(network)) if network.bridge == self.bridge && network.subnet == self.subnet
        )
    }
}

/// The other state root with a live claim on `bridge` or on a subnet overlapping `subnet`, if
/// any. Stale claims met on the way are removed.
fn holder(root: &Path, bridge: &str, subnet: Option<&Subnet>) -> Option<String> {
    for (path, claim) in claims() {
        if claim.root == root {
            continue;
        }
        let clashes = claim.bridge == bridge || subnet.is_some_and(|s| claim.subnet.overlaps(s));
        if claim.is_live() {
            if clashes {
                return Some(format!("state root {}", claim.root.display()));
            }
        } else if crate::netlink::index_of(&claim.bridge).is_some() {
            // Its root was removed with the bridge still up: the claim says whose leftover the
            // bridge is until it is removed (removed_roots.rs), and nothing takes the bridge
            // or its subnet (its tables hold the removed root's entries) until then.
            if clashes {
                return Some(format!(
                    "the removed state root {} (its bridge {} stays while a port is on it)",
                    claim.root.display(),
                    claim.bridge
                ));
            }
        } else {
            // Its root was deleted or re-chosen, its bridge gone: the claim is stale.
            let _ = fs::remove_file(path);
        }
    }
    None
}

/// Every claim the claims folder holds that reads as one, with its file.
fn claims() -> Vec<(PathBuf, Claim)> {
    let Ok(entries) = fs::read_dir(CLAIMS) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let text = fs::read_to_string(entry.path()).ok()?;
            Some((entry.path(), toml::from_str::<Claim>(&text).ok()?))
        })
        .collect()
}

/// The networks of state roots whose folder is gone (removed by hand, its network not taken
/// down first) and whose bridge is still up, as their claims record them; with the claims lock,
/// which the caller holds while it removes them ([`RootNetwork::release_claim`]).
pub(crate) fn networks_of_removed_roots() -> Result<(Vec<RootNetwork>, File)> {
    let lock = claims_lock()?;
    let mut networks = Vec::new();
    for (_, claim) in claims() {
        let removed = fs::symlink_metadata(&claim.root)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
        if removed && crate::netlink::index_of(&claim.bridge).is_some() {
            networks.push(RootNetwork {
                bridge: claim.bridge,
                subnet: claim.subnet,
                uplink: None,
                root: claim.root,
            });
        }
    }
    Ok((networks, lock))
}

/// `feather-n<N>` for the N-th /24 of the pool: short enough for an interface name.
fn pool_bridge(subnet: Subnet) -> String {
    let third = u32::from(subnet.gateway()) >> 8 & 0xff;
    format!("feather-n{third}")
}

fn validate_interface_name(key: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(NetError::Invalid(format!(
            "{key} {name:?}: an interface name is 1 to 15 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// The host's IPv4 routes (device, destination), from /proc/net/route.
fn host_routes() -> Vec<(String, Subnet)> {
    let Ok(text) = fs::read_to_string("/proc/net/route") else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::from_be);
            let destination = Ipv4Addr::from(hex(fields.get(1)?)?);
            let mask = hex(fields.get(7)?)?;
            if mask == 0 {
                return None;
            }
            let subnet = Subnet::new(destination, mask.leading_ones() as u8).ok()?;
            Some((fields[0].to_owned(), subnet))
        })
        .collect()
}

fn claims_lock() -> Result<File> {
    fs::create_dir_all(CLAIMS).at(CLAIMS)?;
    lock(&Path::new(CLAIMS).join(".lock"))
}

/// Opens `path` (creating it) and waits for an exclusive lock on it.
pub(crate) fn lock(path: &Path) -> Result<File> {
    let file = open_lock_file(path).at(path)?;
    file.lock().at(path)?;
    Ok(file)
}

/// A lock's file, made if missing, its contents kept (some hold a record).
pub(crate) fn open_lock_file(path: &Path) -> std::io::Result<File> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settings_file_without_an_uplink_still_loads_and_one_with_it_keeps_it() {
        let old: SettingsFile =
            toml::from_str("bridge = \"feather0\"\nsubnet = \"10.77.0.0/16\"\n").unwrap();
        assert_eq!(old.uplink, None);
        assert!(!toml::to_string(&old).unwrap().contains("uplink"));
        let with = SettingsFile {
            uplink: Some("eth0".into()),
            ..old
        };
        let text = toml::to_string(&with).unwrap();
        assert!(text.contains("uplink = \"eth0\""), "{text}");
        assert_eq!(toml::from_str::<SettingsFile>(&text).unwrap(), with);
    }
}
