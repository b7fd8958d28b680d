//! The little networking a VM with only loopback needs.

use std::os::fd::AsRawFd;

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

use crate::raw;
use crate::{Context, Result};

/// Brings the loopback interface of the caller's network namespace up: a new namespace starts
/// with `lo` down, and programs expect 127.0.0.1 to work.
pub fn loopback_up() -> Result<()> {
    let socket = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ctx("socket", "AF_INET")?;
    raw::set_interface_flags(socket.as_raw_fd(), "lo", true).ctx("bring up", "lo")
}

/// A new network namespace with its loopback up and nothing else — what a VM with `--net
/// none` has — held by the returned descriptor (close-on-exec). Made by a thread of its own,
/// which alone changes namespace and ends with the call.
pub fn new_loopback_namespace() -> Result<std::os::fd::OwnedFd> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .ctx("unshare", "a network namespace")?;
                loopback_up()?;
                let path = "/proc/thread-self/ns/net";
                std::fs::File::open(path)
                    .map(std::os::fd::OwnedFd::from)
                    .ctx("open", path)
            })
            .join()
            .unwrap_or_else(|_| {
                Err(nix::errno::Errno::EIO).ctx("make", "a network namespace (thread panicked)")
            })
    })
}

/// Whether `fd` holds a network namespace other than the caller's own: what a restoring
/// keeper is handed to put a VM in (`--netns-fd`). A descriptor of anything else, or of the
/// keeper's own namespace (the host's), would leave the restored VM on the host's network or
/// fail in CRIU with no word of why. `Err` says what it holds instead.
pub fn another_network_namespace(
    fd: std::os::fd::BorrowedFd<'_>,
) -> std::result::Result<(), String> {
    // The kernel names a namespace's file `net:[INODE]`; any other file has a path, `/…`.
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let held = std::fs::read_link(&link).map_err(|e| format!("cannot read {link}: {e}"))?;
    let held = held.to_string_lossy();
    if !held.starts_with("net:[") {
        return Err(format!("it holds {held}, not a network namespace"));
    }
    let theirs = nix::sys::stat::fstat(fd).map_err(|e| format!("cannot fstat it: {e}"))?;
    let own_path = "/proc/self/ns/net";
    let own = nix::sys::stat::stat(own_path).map_err(|e| format!("cannot stat {own_path}: {e}"))?;
    if (theirs.st_dev, theirs.st_ino) == (own.st_dev, own.st_ino) {
        return Err(
            "it is this process's own network namespace (the host's): the VM would share it".into(),
        );
    }
    Ok(())
}

/// Announces that IPv4 `address` is now reached through interface `interface` of the caller's
/// network namespace: one gratuitous ARP request (sender and target address both `address`,
/// sender hardware address the interface's own), broadcast. Neighbours that know `address`
/// update their entry at once, as after a VM's live migration (QEMU's "announce").
pub fn announce_ipv4(interface: &str, ifindex: u32, address: std::net::Ipv4Addr) -> Result<()> {
    const ETH_P_ARP: u16 = 0x0806;
    let socket = socket(
        AddressFamily::Packet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ctx("socket", "AF_PACKET")?;
    let mac = raw::hardware_address(socket.as_raw_fd(), interface)
        .ctx("read the hardware address of", interface)?;
    let mut arp = Vec::with_capacity(28);
    arp.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    arp.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    arp.extend_from_slice(&[6, 4]);
    arp.extend_from_slice(&1u16.to_be_bytes()); // a request, as Linux's own gratuitous ARP
    arp.extend_from_slice(&mac);
    arp.extend_from_slice(&address.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&address.octets());
    raw::send_link_layer(socket.as_raw_fd(), ifindex, ETH_P_ARP, [0xff; 6], &arp).ctx(
        "send a gratuitous ARP for",
        format!("{address} on {interface}"),
    )
}

/// Sets the NIS domain name of the caller's UTS namespace (`setdomainname`): a system call,
/// where a write to `/proc/sys/kernel/domainname` inside a container goes wherever the
/// container's `/proc` leads.
pub fn set_domain_name(name: &str) -> Result<()> {
    crate::raw::set_domain_name(name.as_bytes()).ctx("setdomainname", name)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn only_a_network_namespace_other_than_ours_is_one_for_a_vm() {
        let made = new_loopback_namespace().unwrap();
        assert_eq!(another_network_namespace(made.as_fd()), Ok(()));
        let own = std::fs::File::open("/proc/self/ns/net").unwrap();
        let refused = another_network_namespace(own.as_fd()).unwrap_err();
        assert!(refused.contains("own network namespace"), "{refused}");
        let mounts = std::fs::File::open("/proc/self/ns/mnt").unwrap();
        let refused = another_network_namespace(mounts.as_fd()).unwrap_err();
        assert!(
            refused.contains("mnt:[") && refused.contains("not a network"),
            "{refused}"
        );
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let refused = another_network_namespace(file.as_fd()).unwrap_err();
        assert!(refused.contains("not a network namespace"), "{refused}");
    }
}
