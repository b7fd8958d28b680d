//! Address leases: which VM of a state root holds which address, one file per leased address
//! (`<root>/network-leases/<address>`, holding the VM's id). A lease is taken by creating its
//! file with O_EXCL, which the kernel makes atomic: two creates racing each other never get
//! the same address, with no lock to wait for. A lease is written unsynced: a kept VM's is
//! flushed to disk together with the VM's folder, before the VM exists (see [`files`]); those
//! of throw-away VMs (`run --rm`) need not survive a power cut.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::error::{IoAt, NetError, Result};
use crate::folder::make_dir;
use crate::settings::RootNetwork;

/// The folder of a root's leases.
const LEASES: &str = "network-leases";

fn leases_dir(network: &RootNetwork) -> PathBuf {
    network.root().join(LEASES)
}

/// The most a lease holds: the id of the VM that holds it.
const MAX_LEASE: u64 = 256;

/// Every lease of the root: its address and its holder.
pub(crate) fn held(network: &RootNetwork) -> Result<Vec<(Ipv4Addr, String)>> {
    let dir = leases_dir(network);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(dir),
    };
    Ok(entries
        .flatten()
        .filter_map(|entry| {
            let address = entry.file_name().to_str()?.parse().ok()?;
            let id = feather_core::small_file::read_text(&entry.path(), MAX_LEASE).ok()?;
            Some((address, id.trim().to_owned()))
        })
        .collect())
}

/// Leases the lowest free address of the root's subnet to VM `vm_id` (or returns the one it
/// holds already), unsynced.
pub fn lease(network: &RootNetwork, vm_id: &str) -> Result<Ipv4Addr> {
    match held(network)?.into_iter().find(|(_, id)| id == vm_id) {
        Some((address, _)) => Ok(address),
        None => lease_new(network, vm_id),
    }
}

/// Leases the lowest free address of the root's subnet to VM `vm_id`, a VM just made that
/// holds none yet (its id is new), unsynced. Unlike [`lease`] it reads no lease, only the
/// folder's names: a root with n VMs costs one listing, not n reads, per VM made.
pub fn lease_new(network: &RootNetwork, vm_id: &str) -> Result<Ipv4Addr> {
    let dir = leases_dir(network);
    make_dir(&dir).at(&dir)?;
    let taken: std::collections::HashSet<Ipv4Addr> = fs::read_dir(&dir)
        .at(&dir)?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    for address in network.subnet.vm_hosts() {
        if taken.contains(&address) {
            continue;
        }
        let path = dir.join(address.to_string());
        let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => file,
            // Taken since we looked: a racing create got it first.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).at(path),
        };
        file.write_all(vm_id.as_bytes()).at(&path)?;
        return Ok(address);
    }
    Err(NetError::SubnetFull {
        subnet: network.subnet.to_string(),
        settings: network.root().join("network.toml"),
    })
}

/// Leases exactly `address` to VM `vm_id`: a VM arriving from elsewhere keeps its address.
/// Returns whether it was free; false if another VM of the root holds it.
pub fn lease_exact(network: &RootNetwork, vm_id: &str, address: Ipv4Addr) -> Result<bool> {
    let held = held(network)?;
    if let Some((_, id)) = held.iter().find(|(a, _)| *a == address) {
        return Ok(id == vm_id);
    }
    let dir = leases_dir(network);
    make_dir(&dir).at(&dir)?;
    let path = dir.join(address.to_string());
    let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e).at(path),
    };
    file.write_all(vm_id.as_bytes()).at(&path)?;
    file.sync_all().at(&path)?;
    File::open(&dir).and_then(|d| d.sync_all()).at(&dir)?;
    Ok(true)
}

/// Hands the lease of `address` to `vm_id` (a pooled namespace's, taken by a VM): the file is
/// replaced at once, so it always names one holder.
pub(crate) fn hand_over(network: &RootNetwork, address: Ipv4Addr, vm_id: &str) -> Result<()> {
    let dir = leases_dir(network);
    let path = dir.join(address.to_string());
    // Not an address: `held` passes over it.
    let new = dir.join(format!(".{address}.{vm_id}"));
    fs::write(&new, vm_id).at(&new)?;
    fs::rename(&new, &path).at(&path)
}

/// What must reach the disk for the lease of `address` to survive a power cut: its file, then
/// the folder that names it.
pub fn files(root_dir: &Path, address: Ipv4Addr) -> [PathBuf; 2] {
    let dir = root_dir.join(LEASES);
    [dir.join(address.to_string()), dir]
}

/// Whether a VM of the root holds the lease of `address`: its file is there. Read as every
/// lease is ([`feather_core::small_file`]: bounded, no link followed, nothing waited on), and
/// anything in its place that is no lease (a FIFO, a link) counts as held, never as free.
pub fn is_held(network: &RootNetwork, address: Ipv4Addr) -> bool {
    let path = leases_dir(network).join(address.to_string());
    !matches!(
        feather_core::small_file::read_text(&path, MAX_LEASE),
        Err(e) if e.kind() == ErrorKind::NotFound
    )
}

/// Returns the lease of `address` to the pool if VM `vm_id` holds it: one read, where
/// [`release`] reads every lease of the root. Another VM's lease of that address is kept.
pub fn release_at(network: &RootNetwork, vm_id: &str, address: Ipv4Addr) -> Result<()> {
    let path = leases_dir(network).join(address.to_string());
    match feather_core::small_file::read_text(&path, MAX_LEASE) {
        Ok(holder) if holder.trim() == vm_id => match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e).at(path),
            _ => Ok(()),
        },
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at(path),
    }
}

/// Returns every address VM `vm_id` holds to the pool.
pub fn release(network: &RootNetwork, vm_id: &str) -> Result<()> {
    let dir = leases_dir(network);
    for (address, id) in held(network)? {
        if id == vm_id {
            let path = dir.join(address.to_string());
            match fs::remove_file(&path) {
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(e).at(path),
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A network in a scratch folder of the test's own, removed when the folder is dropped,
    /// also when the test fails.
    fn scratch_network(label: &str) -> (feather_testkit::ScratchDir, RootNetwork) {
        let scratch = feather_testkit::ScratchDir::new(&format!("leases-{label}"));
        let root = scratch.0.clone();
        fs::write(
            root.join("network.toml"),
            "bridge = \"feather-t\"\nsubnet = \"10.99.0.0/29\"\n",
        )
        .unwrap();
        (scratch, RootNetwork::load(&root).unwrap().unwrap())
    }

    /// The addresses `count` VMs (vm0, vm1, …) leased by `lease`, all at once on threads of
    /// their own, sorted.
    fn leased_at_once(
        network: &RootNetwork,
        count: usize,
        lease: fn(&RootNetwork, &str) -> Result<Ipv4Addr>,
    ) -> Vec<Ipv4Addr> {
        let threads: Vec<_> = (0..count)
            .map(|i| {
                let network = network.clone();
                std::thread::spawn(move || lease(&network, &format!("vm{i}")).unwrap())
            })
            .collect();
        let mut addresses: Vec<Ipv4Addr> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        addresses.sort();
        addresses
    }

    /// A root whose folder is gone (removed while a process of it was still ending: a pool's
    /// refill leases addresses) is not made again by a lease.
    #[test]
    fn a_lease_in_a_removed_root_makes_no_folder() {
        let (_scratch, network) = scratch_network("gone");
        fs::remove_dir_all(network.root()).unwrap();
        assert!(lease_new(&network, "vm0").is_err());
        assert!(lease_exact(&network, "vm0", network.subnet.vm_hosts().next().unwrap()).is_err());
        assert!(!network.root().exists(), "the removed root was made again");
    }

    /// A FIFO in a lease's place (root reads leases by path in a folder of the root) is held,
    /// and answered at once: an unbounded read waited on it for ever.
    #[test]
    fn a_lease_made_a_fifo_is_held_without_waiting() {
        let (_scratch, network) = scratch_network("fifo");
        let mut addresses = network.subnet.vm_hosts();
        let (free, fifo) = (addresses.next().unwrap(), addresses.next().unwrap());
        let dir = leases_dir(&network);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(fifo.to_string());
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let looking = network.clone();
        std::thread::spawn(move || {
            let _ = tx.send((is_held(&looking, free), is_held(&looking, fifo)));
        });
        let answer = rx.recv_timeout(std::time::Duration::from_secs(60));
        // A regression's reader is let go, so the thread ends with the test.
        use std::os::unix::fs::OpenOptionsExt;
        let _ = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path);
        let answer = answer.expect("is_held answered within 60 s (a FIFO lease was waited on)");
        assert_eq!(answer, (false, true));
    }

    #[test]
    fn racing_leases_are_distinct_and_released_ones_come_back() {
        let (_scratch, network) = scratch_network("race");
        let mut addresses = leased_at_once(&network, 5, lease);
        addresses.dedup();
        assert_eq!(addresses.len(), 5, "{addresses:?}");
        // A /29 has 5 addresses for VMs (.2 to .6): the sixth VM is refused.
        assert!(matches!(
            lease(&network, "vm5"),
            Err(NetError::SubnetFull { .. })
        ));
        // Asking again gives a VM the address it holds; a returned one is leased anew.
        let held = lease(&network, "vm3").unwrap();
        assert!(addresses.contains(&held));
        release(&network, "vm3").unwrap();
        assert_eq!(lease(&network, "vm5").unwrap(), held);
    }

    #[test]
    fn new_vms_take_the_lowest_free_addresses_and_give_back_only_their_own() {
        let (_scratch, network) = scratch_network("new");
        let addresses = leased_at_once(&network, 4, lease_new);
        let lowest: Vec<Ipv4Addr> = network.subnet.vm_hosts().take(4).collect();
        assert_eq!(addresses, lowest);
        let holder = |address: Ipv4Addr| {
            held(&network)
                .unwrap()
                .into_iter()
                .find(|(a, _)| *a == address)
                .map(|(_, id)| id)
        };
        // A VM that does not hold the address it names leaves its holder's lease alone.
        let (second, second_holder) = (lowest[1], holder(lowest[1]).unwrap());
        release_at(&network, "someone-else", second).unwrap();
        assert_eq!(holder(second), Some(second_holder.clone()));
        release_at(&network, &second_holder, second).unwrap();
        assert_eq!(holder(second), None);
        // Released twice: nothing to do.
        release_at(&network, &second_holder, second).unwrap();
        // The freed address is the lowest free one again; then the subnet's last one; then none.
        assert_eq!(lease_new(&network, "vm4").unwrap(), second);
        assert_eq!(
            lease_new(&network, "vm5").unwrap(),
            network.subnet.vm_hosts().nth(4).unwrap()
        );
        assert!(matches!(
            lease_new(&network, "vm6"),
            Err(NetError::SubnetFull { .. })
        ));
    }
}
