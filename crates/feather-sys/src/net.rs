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

/// How many bytes of data the TCP connection `stream` has received so far (its TCP_INFO).
pub fn bytes_received(stream: &std::net::TcpStream) -> std::io::Result<u64> {
    use std::os::fd::AsFd;
    Ok(raw::tcp_bytes_received(stream.as_fd())?)
}

/// Sets the NIS domain name of the caller's UTS namespace (`setdomainname`): a system call,
/// where a write to `/proc/sys/kernel/domainname` inside a container goes wherever the
/// container's `/proc` leads.
pub fn set_domain_name(name: &str) -> Result<()> {
    crate::raw::set_domain_name(name.as_bytes()).ctx("setdomainname", name)
}
