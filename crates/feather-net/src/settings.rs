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
use std::os::unix::fs::MetadataExt;
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

/// The most a root's `network.toml` holds: three settings take a few dozen bytes.
pub const MAX_SETTINGS: u64 = 64 << 10;

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

    /// The root's network as recorded, or None if no VM of this root ever had one. Read as
    /// every file of a root a run reads ([`feather_core::small_file`]): at most
    /// [`MAX_SETTINGS`] bytes, never through a link, never waited on.
    pub fn load(root: &Path) -> Result<Option<RootNetwork>> {
        let path = Self::settings_path(root);
        let text = match feather_core::small_file::read_text(&path, MAX_SETTINGS) {
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

    /// Records the network chosen in `<root>/network.toml`, durably.
    pub(crate) fn record(&self) -> Result<()> {
        let file = SettingsFile {
            bridge: self.bridge.clone(),
            subnet: self.subnet,
            uplink: self.uplink.clone(),
        };
        let text = toml::to_string(&file).map_err(|source| NetError::Encode {
            what: "the root's network settings",
            source,
        })?;
        write_atomic(
            &Self::settings_path(&self.root),
            text.as_bytes(),
            Durability::Durable,
        )?;
        Ok(())
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

    pub(crate) fn choose(root: &Path) -> Result<RootNetwork> {
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
            let folder = Folder::of(root).ok();
            if let Some(holder) = holder(root, folder.as_ref(), bridge, None) {
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
        let folder = Folder::of(&self.root).ok();
        holder(
            &self.root,
            folder.as_ref(),
            &self.bridge,
            Some(&self.subnet),
        )
    }

    /// Records that this root holds its bridge and subnet (under the claims lock).
    pub(crate) fn claim(&self) -> Result<()> {
        if let Some(holder) = self.conflict() {
            return Err(NetError::SubnetTaken {
                subnet: self.subnet.to_string(),
                bridge: self.bridge.clone(),
                holder,
                settings: Self::settings_path(&self.root),
            });
        }
        let folder = Folder::of(&self.root).at(&self.root)?;
        let claim = Claim {
            bridge: self.bridge.clone(),
            subnet: self.subnet,
            root: folder.path,
            uplink: self.uplink.clone(),
            mount_namespace: mount_namespace(),
            mount_namespace_id: feather_sys::process::mount_namespace_id(),
            dev: Some(folder.dev),
            ino: Some(folder.ino),
            born: folder.born,
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
    /// lock held.
    pub(crate) fn release_claim(&self) {
        let Ok(folder) = Folder::of(&self.root) else {
            return;
        };
        let claim = Path::new(CLAIMS).join(&self.bridge);
        if let Ok(text) = fs::read_to_string(&claim) {
            if toml::from_str::<Claim>(&text).is_ok_and(|c| c.names(&folder, &self.root)) {
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

    /// [`RootNetwork::lock`], waiting until `deadline`, and not once its holder is seen
    /// stopped (SIGSTOP, Ctrl-Z): None when it stayed taken (or its file cannot be opened).
    pub fn lock_within(&self, deadline: std::time::Instant) -> Option<File> {
        use feather_core::lock_holder::IfStopped;
        let file = open_lock_file(&self.root.join("network.lock")).ok()?;
        lock_within(&file, deadline, IfStopped::GiveUp).then_some(file)
    }
}

/// Takes `file`'s lock, waiting until `deadline` for whoever holds it, or (`if_stopped`) not
/// once it is seen stopped ([`feather_core::lock_holder::lock_within`]): whether it is taken.
/// For waits done while holding a lock that other commands wait for, which must end.
pub(crate) fn lock_within(
    file: &File,
    deadline: std::time::Instant,
    if_stopped: feather_core::lock_holder::IfStopped,
) -> bool {
    feather_core::lock_holder::lock_within(file, deadline, if_stopped).is_ok()
}

/// A root's claim on its bridge and subnet, `/run/feather-net/claims/<bridge>`. Which root holds
/// it is told by its folder's identity, not by a path: a root removed and made again at the
/// same path (`/var/lib/feather` always is) is another root, and a live root named by a
/// spelling that no longer resolves (`a/../r` once `a` is gone, a removed link) is the same one.
/// A claim of an older feather has neither the identity nor the mount namespace, and is judged
/// by its path, conservatively ([`Claim::names`], [`networks_of_removed_roots`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Claim {
    bridge: String,
    subnet: Subnet,
    /// The root's folder, canonical (an older feather's claim: as the command spelled it).
    root: PathBuf,
    /// The root's uplink when it claimed, whose proxy ARP entries in the subnet go with a
    /// removed root's network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uplink: Option<String>,
    /// The inode of the claimer's mount namespace (`/proc/self/ns/mnt`): `root` names the
    /// folder there, and only there can the root be found removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mount_namespace: Option<u64>,
    /// The namespace's 64-bit id (`NS_GET_MNTNS_ID`, Linux 6.8+), never reused: its inode
    /// number is handed to the next namespace made once it is freed. Compared instead of the
    /// inode where both the claim and the caller have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mount_namespace_id: Option<u64>,
    /// The root folder's device and inode, and its birth time (ns since the epoch; none where
    /// the filesystem keeps none): a folder made again may get the same inode at once (ext4
    /// hands the inode just freed to the next `mkdir`), never the same birth time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dev: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ino: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    born: Option<i64>,
}

/// A root's folder as a claim records it: its canonical path and identity.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Folder {
    path: PathBuf,
    dev: u64,
    ino: u64,
    born: Option<i64>,
}

impl Folder {
    /// The folder `root` names now, in the caller's mount namespace.
    fn of(root: &Path) -> std::io::Result<Folder> {
        let path = fs::canonicalize(root)?;
        let meta = fs::metadata(&path)?;
        Ok(Folder {
            born: born(&meta),
            dev: meta.dev(),
            ino: meta.ino(),
            path,
        })
    }

    /// Whether the folder a claim records by `dev`, `ino` and `born` is this one: the same
    /// device and inode, and the same birth time where both have one.
    fn is(&self, dev: u64, ino: u64, born: Option<i64>) -> bool {
        self.dev == dev
            && self.ino == ino
            && (self.born.is_none() || born.is_none() || self.born == born)
    }
}

/// A folder's birth time in nanoseconds since the epoch, where its filesystem keeps one.
fn born(meta: &fs::Metadata) -> Option<i64> {
    let since = meta
        .created()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    i64::try_from(since.as_nanos()).ok()
}

/// The inode of the caller's mount namespace.
fn mount_namespace() -> Option<u64> {
    fs::metadata("/proc/self/ns/mnt")
        .ok()
        .map(|meta| meta.ino())
}

/// What the claim's path names now, in the caller's mount namespace.
#[derive(Debug, PartialEq, Eq)]
enum AtPath {
    /// The claim's own folder.
    Same,
    /// Nothing (NotFound), or another folder: the claimed root was removed.
    Removed,
    /// It cannot be told (another error, or a claim without the folder's identity whose path
    /// names a folder).
    Unknown,
}

impl Claim {
    /// Whether this is the claim of the root whose folder is `folder` (spelled `spelled` by
    /// the command): the same folder, wherever it is mounted and however it is named. A claim
    /// of an older feather, which records neither, is this root's when its path is the root's
    /// either way spelled, as before: the tables of the root's bridge are then made afresh
    /// when the root chooses its network ([`RootNetwork::load_or_choose_locked`]).
    fn names(&self, folder: &Folder, spelled: &Path) -> bool {
        match (self.dev, self.ino) {
            (Some(dev), Some(ino)) => folder.is(dev, ino, self.born),
            _ => self.root == folder.path || self.root == spelled,
        }
    }

    /// Whether the claim was made in the caller's mount namespace: None for a claim of an
    /// older feather, which does not say.
    fn made_here(&self) -> Option<bool> {
        self.made_in(
            mount_namespace(),
            feather_sys::process::mount_namespace_id(),
        )
    }

    /// [`Claim::made_here`] for a caller in the namespace of inode `inode` and id `id`.
    fn made_in(&self, inode: Option<u64>, id: Option<u64>) -> Option<bool> {
        if let (Some(made), Some(id)) = (self.mount_namespace_id, id) {
            return Some(made == id);
        }
        self.mount_namespace.map(|made| Some(made) == inode)
    }

    /// What the claim's path names now, in the caller's mount namespace.
    fn at_path(&self) -> AtPath {
        match fs::metadata(&self.root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AtPath::Removed,
            Err(_) => AtPath::Unknown,
            Ok(meta) => match (self.dev, self.ino) {
                (Some(dev), Some(ino)) => {
                    let now = Folder {
                        path: self.root.clone(),
                        dev: meta.dev(),
                        ino: meta.ino(),
                        born: born(&meta),
                    };
                    if now.is(dev, ino, self.born) {
                        AtPath::Same
                    } else {
                        AtPath::Removed
                    }
                }
                _ => AtPath::Unknown,
            },
        }
    }

    /// Whether the claim's root was removed, as far as the caller can tell: the claim was made
    /// in the caller's mount namespace, and its canonical path names no folder there, or
    /// another than the one that claimed. Never for a claim of an older feather.
    fn is_a_removed_root_s(&self) -> bool {
        self.made_here() == Some(true) && self.dev.is_some() && self.at_path() == AtPath::Removed
    }

    /// A claim holds while its root still records the same bridge and subnet; a root deleted
    /// wholesale (`rm -rf`) releases its claim with it. Looked at in the caller's mount
    /// namespace: a claim made in another one always holds ([`holder`]).
    fn is_live(&self) -> bool {
        if self.at_path() == AtPath::Removed {
            return false;
        }
        matches!(
            RootNetwork::load(&self.root),
            Ok(Some(network)) if network.bridge == self.bridge && network.subnet == self.subnet
        )
    }
}

/// The other state root with a live claim on `bridge` or on a subnet overlapping `subnet`, if
/// any. Stale claims met on the way are removed. `folder`: the caller's root's folder (None
/// when it cannot be looked at: every claim is then another root's), spelled `root`.
fn holder(
    root: &Path,
    folder: Option<&Folder>,
    bridge: &str,
    subnet: Option<&Subnet>,
) -> Option<String> {
    for (path, claim) in claims() {
        if folder.is_some_and(|folder| claim.names(folder, root)) {
            continue;
        }
        let clashes = claim.bridge == bridge || subnet.is_some_and(|s| claim.subnet.overlaps(s));
        if claim.made_here() == Some(false) {
            // Its root is a folder of another mount namespace (a service's private /tmp), which
            // no look from here can find or find gone: it holds its pair until a feather of
            // that namespace releases it. A leak, rather than a live root's pair taken.
            if clashes {
                return Some(format!(
                    "state root {} of another mount namespace (mnt:[{}]: it lives while \
                     `lsns -t mnt` lists it, or `find /proc/*/ns/mnt -lname 'mnt:[{1}]'` finds \
                     a process in it; if that root is gone, remove {} and, if it is still up, \
                     the bridge {}: `ip link delete {}`)",
                    claim.root.display(),
                    claim.mount_namespace.unwrap_or_default(),
                    path.display(),
                    claim.bridge,
                    claim.bridge
                ));
            }
            continue;
        }
        if claim.is_live() {
            if clashes {
                return Some(format!("state root {}", claim.root.display()));
            }
        } else if crate::netlink::index_of(&claim.bridge).is_some() {
            // Its root was removed with the bridge still up: the claim says whose leftover the
            // bridge is until it is removed (removed_roots.rs), and nothing takes the bridge
            // or its subnet (its tables hold the removed root's entries) until then.
            if clashes {
                let stays = if claim.dev.is_some() {
                    let b = &claim.bridge;
                    let ports = crate::netlink::bridge_ports(b)
                        .filter(|ports| !ports.is_empty())
                        .map_or_else(|| "none now".to_owned(), |ports| ports.join(", "));
                    format!(
                        "stays while a port is on it: {ports}, a VM of that root still running \
                         (`ip link show master {b}` lists them); end it (kill its keeper) or \
                         `ip link delete PORT`, and the next command of a root without a \
                         network removes the bridge and the claim"
                    )
                } else {
                    // Never taken for a removed root's (networks_of_removed_roots).
                    format!(
                        "stays: an older feather's claim, {}, which no sweep removes; if no VM \
                         uses the bridge, `ip link delete {}` and remove the claim",
                        path.display(),
                        claim.bridge
                    )
                };
                return Some(format!(
                    "the removed state root {} (its bridge {} {stays})",
                    claim.root.display(),
                    claim.bridge
                ));
            }
        } else {
            // Its root was deleted or re-chosen, its bridge gone: the claim is stale, and so
            // are the proxy ARP entries of its subnet on its uplink.
            if let Some(uplink) = &claim.uplink {
                crate::netlink::forget_proxy_subnet(uplink, claim.subnet);
            }
            let _ = fs::remove_file(path);
        }
    }
    None
}

/// Every claim the claims folder holds that reads as one, with its file.
fn claims() -> Vec<(PathBuf, Claim)> {
    claims_in(Path::new(CLAIMS))
}

/// [`claims`] of the folder `folder`. A claim's file is named after its bridge; a dot name
/// is the lock, or a write's staged file (`.<bridge>.tmp-<pid>`) that a writer killed before
/// its rename left, whose claim may be an earlier root's: never one to act on (a removed
/// root's claim there would have a live root's bridge taken down).
fn claims_in(folder: &Path) -> Vec<(PathBuf, Claim)> {
    let Ok(entries) = fs::read_dir(folder) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| !entry.file_name().as_encoded_bytes().starts_with(b"."))
        .filter_map(|entry| {
            let text = fs::read_to_string(entry.path()).ok()?;
            Some((entry.path(), toml::from_str::<Claim>(&text).ok()?))
        })
        .collect()
}

/// The network of a removed root as its claim records it ([`networks_of_removed_roots`]).
pub(crate) struct Leftover {
    pub(crate) network: RootNetwork,
    claim: Claim,
}

impl Leftover {
    /// Removes the claim, if its file still holds it. Call with the claims lock held.
    pub(crate) fn release_claim(&self) {
        let path = Path::new(CLAIMS).join(&self.claim.bridge);
        let unchanged = fs::read_to_string(&path)
            .ok()
            .and_then(|text| toml::from_str::<Claim>(&text).ok())
            .is_some_and(|claim| claim == self.claim);
        if unchanged {
            let _ = fs::remove_file(path);
        }
    }
}

/// The networks of state roots removed by hand (their network not taken down first) whose
/// bridge is still up, as their claims record them; with the claims lock, which the caller
/// holds while it removes them ([`Leftover::release_claim`]). A root counts as removed only
/// when its claim was made in the caller's mount namespace and its canonical path names no
/// folder there, or another folder than the one that claimed (device, inode, birth time). A
/// claim of an older feather, which records neither, never counts: its path may be a spelling
/// that no longer resolves, or a folder of another namespace.
pub(crate) fn networks_of_removed_roots() -> Result<(Vec<Leftover>, File)> {
    let lock = claims_lock()?;
    let mut networks = Vec::new();
    for (_, claim) in claims() {
        if claim.is_a_removed_root_s() && crate::netlink::index_of(&claim.bridge).is_some() {
            networks.push(Leftover {
                network: RootNetwork {
                    bridge: claim.bridge.clone(),
                    subnet: claim.subnet,
                    uplink: claim.uplink.clone(),
                    root: claim.root.clone(),
                },
                claim,
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

/// The host's claims lock, held while a claim is looked at and written.
pub(crate) fn claims_lock() -> Result<File> {
    fs::create_dir_all(CLAIMS).at(CLAIMS)?;
    lock(&Path::new(CLAIMS).join(".lock"))
}

/// The claim on a bridge before a root's own took it over (`RootNetwork::load_or_choose`):
/// put back if the root's choice is refused, since it says whose the bridge still up is.
pub(crate) struct EarlierClaim {
    bridge: String,
    text: String,
    /// The uplink and subnet it records, whose proxy ARP entries go with its network; `None`
    /// for a file that does not read as a claim (a foreign or damaged one), which a refused
    /// choice still puts back as it was.
    pub(crate) proxied: Option<(String, Subnet)>,
}

/// The claim file on `bridge` now, if there is one. Call with the claims lock held.
pub(crate) fn claim_on(bridge: &str) -> Option<EarlierClaim> {
    let text = fs::read_to_string(Path::new(CLAIMS).join(bridge)).ok()?;
    let proxied = toml::from_str::<Claim>(&text)
        .ok()
        .and_then(|claim| Some((claim.uplink?, claim.subnet)));
    Some(EarlierClaim {
        bridge: bridge.to_owned(),
        text,
        proxied,
    })
}

impl EarlierClaim {
    /// Writes the claim back as it was. Call with the claims lock held.
    pub(crate) fn put_back(self) {
        let path = Path::new(CLAIMS).join(&self.bridge);
        let _ = write_atomic(&path, self.text.as_bytes(), Durability::Volatile);
    }
}

/// Opens `path` (creating it) and waits for an exclusive lock on it.
pub(crate) fn lock(path: &Path) -> Result<File> {
    let file = open_lock_file(path).at(path)?;
    file.lock().at(path)?;
    Ok(file)
}

/// A lock taken by `lock` (whether it took it) on the file `open` opens, counted only on the
/// file `path` still names ([`feather_core::lock_holder::lock_as_named`]): a holder that
/// unlinks the file (or its folder) as it ends lets its lock go to a waiter that opened the file
/// before, a lock no one else sees. Ok(None) when `lock` did not take it, or the file was
/// removed under it three times; the error of `open` when the file cannot be opened (or made).
pub(crate) fn lock_as_named_in_three_rounds(
    path: &Path,
    open: impl Fn() -> std::io::Result<File>,
    lock: impl Fn(&File) -> bool,
) -> std::io::Result<Option<File>> {
    use feather_core::lock_holder::NotTaken;
    // Three rounds at most, each after a whole removal by someone else: the callers' patience
    // is per round, and a lock taken this way holds up other commands.
    let rounds = std::cell::Cell::new(0);
    let took = |file: &File| {
        rounds.set(rounds.get() + 1);
        let taken = rounds.get() <= 3 && lock(file);
        taken.then_some(()).ok_or(NotTaken::HeldPast(None))
    };
    Ok(feather_core::lock_holder::lock_as_named(path, open, took)?.ok())
}

/// Whether `path` still names `file`.
pub(crate) fn is_linked(path: &Path, file: &File) -> bool {
    feather_core::lock_holder::still_names(path, file).unwrap_or(false)
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

    /// A folder of its own under the temporary folder, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(label: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("feather-claims-{label}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A claim file that does not read as a claim (damaged, or a foreign program's) is still
    /// one to give back: a refused first choice puts it back as it was, not deleted.
    #[test]
    fn an_earlier_claim_that_does_not_parse_is_put_back_as_it_was() {
        struct Removed(PathBuf);
        impl Drop for Removed {
            fn drop(&mut self) {
                let _ = fs::remove_file(&self.0);
            }
        }
        let bridge = format!("fbrt{:x}", std::process::id());
        let path = Removed(Path::new(CLAIMS).join(&bridge));
        let _claims = claims_lock().unwrap();
        fs::create_dir_all(CLAIMS).unwrap();
        fs::write(&path.0, "not a claim = [").unwrap();
        let earlier = claim_on(&bridge).expect("a claim file that does not parse is kept");
        assert!(earlier.proxied.is_none());
        fs::remove_file(&path.0).unwrap();
        earlier.put_back();
        assert_eq!(fs::read_to_string(&path.0).unwrap(), "not a claim = [");
    }

    /// A claim left under a staged name (a writer killed before its rename) is never read
    /// as a claim, whatever root it names: only a file named after its bridge is one.
    #[test]
    fn a_claim_left_under_a_staged_name_is_not_read_as_a_claim() {
        let scratch = Scratch::new("staged");
        let (root, claims) = (scratch.0.join("root"), scratch.0.join("claims"));
        fs::create_dir(&root).unwrap();
        fs::create_dir(&claims).unwrap();
        let claim = claim_of(&root);
        let text = toml::to_string(&claim).unwrap();
        fs::remove_dir(&root).unwrap();
        assert!(claim.is_a_removed_root_s());
        let staged = claims.join(format!(".{}.tmp-4242", claim.bridge));
        fs::write(&staged, &text).unwrap();
        assert_eq!(claims_in(&claims), []);
        fs::write(claims.join(&claim.bridge), &text).unwrap();
        assert_eq!(claims_in(&claims), [(claims.join(&claim.bridge), claim)]);
    }

    /// The claim a root at `root` makes now, as `RootNetwork::claim` writes it.
    fn claim_of(root: &Path) -> Claim {
        let folder = Folder::of(root).unwrap();
        Claim {
            bridge: "fbr0a630100".into(),
            subnet: "10.99.1.0/24".parse().unwrap(),
            root: folder.path,
            uplink: None,
            mount_namespace: mount_namespace(),
            mount_namespace_id: feather_sys::process::mount_namespace_id(),
            dev: Some(folder.dev),
            ino: Some(folder.ino),
            born: folder.born,
        }
    }

    /// `rm -rf` of a root, then another folder at the same path: its claim names a removed
    /// root, and the folder there now is another root. The new folder is made before the old
    /// one goes (then renamed into place), so that its inode differs whatever the filesystem
    /// hands out; the birth time, for a new folder with the old one's inode, is
    /// [`a_folder_with_the_same_inode_but_another_birth_time_is_another`].
    #[test]
    fn a_root_made_again_at_the_same_path_is_another_root() {
        let scratch = Scratch::new("again");
        let (root, new) = (scratch.0.join("root"), scratch.0.join("new"));
        fs::create_dir(&root).unwrap();
        let claim = claim_of(&root);
        assert_eq!(claim.at_path(), AtPath::Same);
        assert!(!claim.is_a_removed_root_s());
        fs::create_dir(&new).unwrap();
        fs::remove_dir(&root).unwrap();
        assert_eq!(claim.at_path(), AtPath::Removed);
        fs::rename(&new, &root).unwrap();
        assert_eq!(
            claim.at_path(),
            AtPath::Removed,
            "the folder made again is the old one"
        );
        assert!(claim.is_a_removed_root_s());
        assert!(!claim.names(&Folder::of(&root).unwrap(), &root));
    }

    /// ext4 hands the inode just freed to the next `mkdir`: the device and inode alone took a
    /// root made again at the same path for the removed one. The birth time tells them apart
    /// where both the claim and the folder have one, and is not looked at otherwise.
    #[test]
    fn a_folder_with_the_same_inode_but_another_birth_time_is_another() {
        let scratch = Scratch::new("born");
        let now = Folder::of(&scratch.0).unwrap();
        let claim = |born: Option<i64>| Claim {
            born,
            ..claim_of(&scratch.0)
        };
        let earlier = now.born.map(|born| born - 1).or(Some(1));
        let (dev, ino) = (now.dev, now.ino);
        let removed = claim(earlier);
        if now.born.is_some() {
            assert!(!now.is(dev, ino, earlier));
            assert!(!removed.names(&now, &scratch.0));
            assert_eq!(removed.at_path(), AtPath::Removed);
        }
        assert!(now.is(dev, ino, now.born));
        assert!(now.is(dev, ino, None), "a claim without a birth time");
        let without = Folder {
            born: None,
            ..now.clone()
        };
        assert!(
            without.is(dev, ino, earlier),
            "a folder without a birth time"
        );
        assert!(!now.is(dev, ino + 1, now.born));
        assert_eq!(claim(None).at_path(), AtPath::Same);
    }

    /// `--root ../r` from `q/a`: once `q/a` is gone, that spelling names nothing, and the claim
    /// it wrote took the live root for a removed one.
    #[test]
    fn a_root_named_through_a_folder_removed_since_is_still_itself() {
        let scratch = Scratch::new("through");
        let (beside, root) = (scratch.0.join("a"), scratch.0.join("r"));
        fs::create_dir(&beside).unwrap();
        fs::create_dir(&root).unwrap();
        let spelled = beside.join("..").join("r");
        let claim = claim_of(&spelled);
        assert_eq!(claim.root, fs::canonicalize(&root).unwrap());
        fs::remove_dir(&beside).unwrap();
        assert_eq!(claim.at_path(), AtPath::Same);
        assert!(!claim.is_a_removed_root_s());
        assert!(claim.names(&Folder::of(&root).unwrap(), &root));
    }

    /// A claim made in another mount namespace (a service's private /tmp) names a folder this
    /// process cannot see: never taken for a removed root's from here.
    #[test]
    fn a_claim_of_another_mount_namespace_is_never_a_removed_root_s() {
        let scratch = Scratch::new("namespace");
        let root = scratch.0.join("root");
        fs::create_dir(&root).unwrap();
        let mut claim = claim_of(&root);
        fs::remove_dir(&root).unwrap();
        assert!(claim.is_a_removed_root_s());
        claim.mount_namespace = claim.mount_namespace.map(|ns| ns + 1);
        claim.mount_namespace_id = claim.mount_namespace_id.map(|id| id + 1);
        assert_eq!(claim.made_here(), Some(false));
        assert!(!claim.is_a_removed_root_s());
    }

    /// A namespace's inode number is handed to the next namespace made once it is freed: a
    /// claim of a namespace gone, whose inode a namespace of today has, was taken for made in
    /// it. The 64-bit id tells them apart; the inode counts where either side has no id.
    #[test]
    fn a_claim_of_a_namespace_gone_whose_inode_is_reused_is_not_made_here() {
        let scratch = Scratch::new("nsid");
        let claim = Claim {
            mount_namespace: Some(7),
            mount_namespace_id: Some(100),
            ..claim_of(&scratch.0)
        };
        assert_eq!(claim.made_in(Some(7), Some(101)), Some(false));
        assert_eq!(claim.made_in(Some(7), Some(100)), Some(true));
        assert_eq!(claim.made_in(Some(8), Some(100)), Some(true));
        assert_eq!(claim.made_in(Some(7), None), Some(true));
        let without = Claim {
            mount_namespace_id: None,
            ..claim.clone()
        };
        assert_eq!(without.made_in(Some(7), Some(101)), Some(true));
        assert_eq!(without.made_in(Some(8), Some(101)), Some(false));
        if let Some(id) = feather_sys::process::mount_namespace_id() {
            assert_eq!(claim_of(&scratch.0).mount_namespace_id, Some(id));
            assert_eq!(claim_of(&scratch.0).made_here(), Some(true));
        }
    }

    /// A claim an older feather wrote (no identity, no namespace, the root as spelled) still
    /// reads; its root is never taken for removed, however its path looks.
    #[test]
    fn an_older_claim_still_reads_and_its_root_is_never_taken_for_removed() {
        let old: Claim = toml::from_str(
            "bridge = \"fbr0a630100\"\nsubnet = \"10.99.1.0/24\"\nroot = \"/nonexistent/a/../r\"\n",
        )
        .unwrap();
        assert_eq!(
            (old.dev, old.mount_namespace, old.uplink.as_deref()),
            (None, None, None)
        );
        assert_eq!(old.made_here(), None);
        assert!(!old.is_a_removed_root_s());
        let spelled = Path::new("/nonexistent/a/../r");
        let elsewhere = Folder {
            path: "/somewhere/else".into(),
            dev: 1,
            ino: 2,
            born: None,
        };
        assert!(
            old.names(&elsewhere, spelled),
            "the same spelling is the same root"
        );
        assert!(!old.names(&elsewhere, Path::new("/other")));
    }

    /// The claim records the uplink, whose proxy ARP entries go with a removed root's network,
    /// and a claim written now reads back the same.
    #[test]
    fn a_claim_keeps_its_uplink_and_identity() {
        let scratch = Scratch::new("uplink");
        let claim = Claim {
            uplink: Some("eth0".into()),
            ..claim_of(&scratch.0)
        };
        let text = toml::to_string(&claim).unwrap();
        assert!(text.contains("uplink = \"eth0\""), "{text}");
        assert_eq!(toml::from_str::<Claim>(&text).unwrap(), claim);
    }

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
