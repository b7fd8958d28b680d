//! How a state root comes by its network: the one recorded in `<root>/network.toml`, or, on
//! first use, a bridge and subnet chosen and claimed host-wide (settings.rs), whose nftables
//! tables are made afresh here (firewall.rs). Above settings.rs, which records and claims a
//! network, and the firewall, which reads it.

use std::fs::{self, File};
use std::path::Path;

use crate::error::{IoAt, NetError, Result};
use crate::netlink;
use crate::settings::{self, EarlierClaim, RootNetwork};

impl RootNetwork {
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
        let root_lock = settings::lock(&root.join("network.lock"))?;
        let claims_lock = settings::claims_lock()?;
        let network = match Self::load(root)? {
            Some(network) => network,
            None => {
                let network = Self::choose(root)?;
                let earlier = settings::claim_on(&network.bridge);
                // Claimed before it is recorded: a refused choice leaves nothing behind, and
                // gives back the claim it took over, which says whose the bridge still up is.
                network.claim()?;
                if let Err(e) = network.start_afresh(earlier.as_ref()) {
                    match earlier {
                        Some(earlier) => earlier.put_back(),
                        None => network.release_claim(),
                    }
                    return Err(e);
                }
                network.record()?;
                network
            }
        };
        network.claim()?;
        drop(claims_lock);
        Ok((network, root_lock))
    }

    /// When the root first chooses its network, holding its claim: a bridge of that name up
    /// already was made for no network of this root, which had none. No other root's live
    /// claim stands on it (`settings::holder`): it is a removed root's, left by one whose claim this
    /// root's took over (an older feather's claim of the same path, or of a folder whose
    /// identity the filesystem could not tell from this one's), or made by hand. Its tables
    /// hold that root's VMs' entries — an `egress` element for an address this root leases
    /// again, a `from_vm` element whose add then fails and rebuilds the tables under this
    /// root's running VMs — so they are made afresh, and the proxy ARP entries the earlier
    /// claim's uplink holds in the subnet go. `earlier`: the claim on the bridge before this
    /// root's.
    ///
    /// Refused while a port is on the bridge: the root has no network yet, so no port is one
    /// of its VMs; it is a VM of a removed root still running (its keeper alive), whose
    /// anti-spoofing and egress entries fresh tables would drop.
    fn start_afresh(&self, earlier: Option<&EarlierClaim>) -> Result<()> {
        if netlink::index_of(&self.bridge).is_none() {
            return Ok(());
        }
        let ports = netlink::bridge_ports(&self.bridge);
        if ports.as_ref().is_none_or(|ports| !ports.is_empty()) {
            let named = ports.map_or_else(|| "(unreadable)".to_owned(), |ports| ports.join(", "));
            let bridge = &self.bridge;
            return Err(NetError::Invalid(format!(
                "bridge {bridge} is up with ports on it ({named}) that are no VMs of this state \
                 root, which has no network yet: a VM of a removed root still runs on it \
                 (`ip link show master {bridge}` lists them). End that VM (kill its keeper) or \
                 delete its port (`ip link delete PORT`), or choose another pair with \
                 FEATHER_SUBNET and FEATHER_BRIDGE"
            )));
        }
        crate::firewall::create_tables(self)?;
        let uplinks = earlier.and_then(|claim| claim.proxied.clone()).into_iter();
        for (uplink, subnet) in uplinks.chain(self.uplink.clone().map(|u| (u, self.subnet))) {
            netlink::forget_proxy_subnet(&uplink, subnet);
        }
        Ok(())
    }
}
