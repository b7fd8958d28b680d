//! Address leases: which VM of a state root holds which address. Changed only under the
//! root's network lock and written atomically, so two creates racing each other never get
//! the same address.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use feather_core::atomic::{write_atomic, Durability};

use crate::error::{IoAt, NetError, Result};
use crate::settings::RootNetwork;

fn leases_path(network: &RootNetwork) -> PathBuf {
    network.root().join("network-leases.json")
}

fn read(network: &RootNetwork) -> Result<BTreeMap<Ipv4Addr, String>> {
    let path = leases_path(network);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| NetError::BadFile {
            path,
            why: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).at(path),
    }
}

fn write(network: &RootNetwork, leases: &BTreeMap<Ipv4Addr, String>) -> Result<()> {
    let path = leases_path(network);
    let text = serde_json::to_vec_pretty(leases).map_err(|e| NetError::Invalid(e.to_string()))?;
    write_atomic(&path, &text, Durability::Durable).map_err(|e| NetError::Invalid(e.to_string()))
}

/// Leases the lowest free address of the root's subnet to VM `vm_id` (or returns the one it
/// holds already).
pub fn lease(network: &RootNetwork, vm_id: &str) -> Result<Ipv4Addr> {
    let _lock = network.lock()?;
    let mut leases = read(network)?;
    if let Some((address, _)) = leases.iter().find(|(_, id)| *id == vm_id) {
        return Ok(*address);
    }
    let address = network
        .subnet
        .vm_hosts()
        .find(|a| !leases.contains_key(a))
        .ok_or_else(|| NetError::SubnetFull {
            subnet: network.subnet.to_string(),
            settings: network.root().join("network.toml"),
        })?;
    leases.insert(address, vm_id.to_owned());
    write(network, &leases)?;
    Ok(address)
}

/// Returns the address of VM `vm_id`, if it holds one. Returns whether any lease is left.
pub fn release(network: &RootNetwork, vm_id: &str) -> Result<bool> {
    let _lock = network.lock()?;
    let mut leases = read(network)?;
    let before = leases.len();
    leases.retain(|_, id| id != vm_id);
    if leases.len() != before {
        write(network, &leases)?;
    }
    Ok(!leases.is_empty())
}
