//! The few rtnetlink requests feather makes, sent synchronously on a netlink socket of the
//! caller's network namespace: no `ip` processes, and no async runtime in the keeper.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoBridge, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Where the peer of a new veth pair goes.
#[derive(Clone, Copy, Debug)]
pub enum PeerNamespace {
    /// The network namespace of this process.
    Process(u32),
    /// The network namespace this descriptor refers to (an nsfs file).
    Fd(std::os::fd::RawFd),
}

/// A netlink route socket bound in the network namespace of the thread that opened it.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink {
            socket,
            sequence: 0,
        })
    }

    /// Sends one request and waits for the kernel's acknowledgement.
    fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.send(message, NLM_F_REQUEST | NLM_F_ACK | flags)?;
        loop {
            for answer in self.receive_answers()? {
                if let NetlinkPayload::Error(error) = answer.payload {
                    return match error.code {
                        None => Ok(()),
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                    };
                }
            }
        }
    }

    /// Sends one dump request (`ip link show`, `ip address`, `ip route show table all`) and
    /// returns every message of the kernel's answer.
    pub fn dump(&mut self, message: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.send(message, NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut answers = Vec::new();
        loop {
            for answer in self.receive_answers()? {
                match answer.payload {
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::Error(error) => {
                        return Err(match error.code {
                            None => io::Error::other("dump ended by an acknowledgement"),
                            Some(code) => io::Error::from_raw_os_error(-code.get()),
                        })
                    }
                    NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                    _ => {}
                }
            }
        }
    }

    /// Sends `message` with `flags` as the next request of this socket.
    fn send(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.sequence += 1;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buffer = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buffer);
        self.socket.send(&buffer, 0)?;
        Ok(())
    }

    /// Receives one datagram and returns its messages that answer the last request.
    fn receive_answers(&mut self) -> io::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        let (reply, _) = self.socket.recv_from_full()?;
        let mut answers = Vec::new();
        let mut offset = 0;
        while offset < reply.len() {
            let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let length = answer.header.length as usize;
            if answer.header.sequence_number == self.sequence {
                answers.push(answer);
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
        Ok(answers)
    }

    /// Creates a bridge that is up, unless one of that name exists. Its multicast snooping is
    /// off: the table it keeps of the groups its ports joined (the mdb) would be the VMs' to
    /// fill, in kernel memory, and at its bound (`mcast_hash_max`) the kernel turns snooping
    /// off by itself; it gains nothing, since no frame passes from one VM to another and a
    /// group nobody joined is flooded to every port anyway.
    pub fn create_bridge(&mut self, name: &str) -> io::Result<()> {
        let mut link = LinkMessage::default();
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        link.attributes = vec![
            LinkAttribute::IfName(name.to_owned()),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Bridge),
                LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::MulticastSnooping(false)])),
            ]),
        ];
        match self.request(
            RouteNetlinkMessage::NewLink(link),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Creates a veth pair: `host_end` in this namespace, up and a port of `bridge`, and
    /// `peer` directly in the network namespace `namespace`.
    pub fn create_veth(
        &mut self,
        host_end: &str,
        bridge: u32,
        peer: &str,
        namespace: PeerNamespace,
    ) -> io::Result<()> {
        self.create_veth_with(host_end, bridge, peer, namespace, true)
    }

    /// [`Netlink::create_veth`] with the host end left down (`up` false): nothing crosses
    /// until it is brought up, and no bringing down (an RCU grace period) is needed to hold it.
    pub fn create_veth_with(
        &mut self,
        host_end: &str,
        bridge: u32,
        peer: &str,
        namespace: PeerNamespace,
        up: bool,
    ) -> io::Result<()> {
        let mut peer_link = LinkMessage::default();
        peer_link.attributes = vec![
            LinkAttribute::IfName(peer.to_owned()),
            match namespace {
                PeerNamespace::Process(pid) => LinkAttribute::NetNsPid(pid),
                PeerNamespace::Fd(fd) => LinkAttribute::NetNsFd(fd),
            },
        ];
        let mut link = LinkMessage::default();
        link.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
        link.header.change_mask = LinkFlags::Up;
        link.attributes = vec![
            LinkAttribute::IfName(host_end.to_owned()),
            LinkAttribute::Controller(bridge),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_link))),
            ]),
        ];
        self.request(
            RouteNetlinkMessage::NewLink(link),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(link), 0)
    }

    /// Gives interface `index` the link-layer address `mac`.
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.attributes = vec![LinkAttribute::Address(mac.to_vec())];
        self.request(RouteNetlinkMessage::SetLink(link), 0)
    }

    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        self.set_state(index, true)
    }

    /// Brings interface `index` up or down.
    pub fn set_state(&mut self, index: u32, up: bool) -> io::Result<()> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
        link.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(link), 0)
    }

    /// Gives interface `index` the address `address/prefix`; an address already there is fine.
    pub fn add_address(&mut self, index: u32, address: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = prefix;
        message.header.index = index;
        message.attributes = vec![
            AddressAttribute::Local(IpAddr::V4(address)),
            AddressAttribute::Address(IpAddr::V4(address)),
        ];
        match self.request(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Adds the default route through `gateway` on interface `index`.
    pub fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Boot;
        message.header.scope = RouteScope::Universe;
        message.header.kind = RouteType::Unicast;
        message.attributes = vec![
            RouteAttribute::Gateway(RouteAddress::Inet(gateway)),
            RouteAttribute::Oif(index),
        ];
        self.request(
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }
}

impl Netlink {
    /// Answers ARP requests for `address` on interface `index` with that interface's own
    /// hardware address: a proxy neighbour entry (`NTF_PROXY`), as
    /// `ip neigh add proxy ADDRESS dev IFACE` makes. An entry already there is fine.
    pub fn add_proxy_neighbour(&mut self, index: u32, address: Ipv4Addr) -> io::Result<()> {
        self.request(
            RouteNetlinkMessage::NewNeighbour(proxy_neighbour(index, address)),
            NLM_F_CREATE,
        )
    }

    /// The addresses of the proxy neighbour entries on interface `index`
    /// (`ip neigh show proxy dev IFACE`).
    pub fn proxy_neighbours(&mut self, index: u32) -> io::Result<Vec<Ipv4Addr>> {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.flags = NeighbourFlags::Proxy;
        let answers = self.dump(RouteNetlinkMessage::GetNeighbour(message))?;
        Ok(answers
            .into_iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewNeighbour(entry)
                    if entry.header.ifindex == index
                        && entry.header.flags.contains(NeighbourFlags::Proxy) =>
                {
                    entry
                        .attributes
                        .into_iter()
                        .find_map(|attribute| match attribute {
                            NeighbourAttribute::Destination(NeighbourAddress::Inet(address)) => {
                                Some(address)
                            }
                            _ => None,
                        })
                }
                _ => None,
            })
            .collect())
    }

    /// Removes the proxy neighbour entry for `address` on interface `index`; a missing one is
    /// fine.
    pub fn delete_proxy_neighbour(&mut self, index: u32, address: Ipv4Addr) -> io::Result<()> {
        match self.request(
            RouteNetlinkMessage::DelNeighbour(proxy_neighbour(index, address)),
            0,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }
}

fn proxy_neighbour(index: u32, address: Ipv4Addr) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Inet;
    message.header.ifindex = index;
    message.header.flags = NeighbourFlags::Proxy;
    message.header.state = NeighbourState::Permanent;
    message.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::Inet(
        address,
    ))];
    message
}

/// The index of the interface called `name` in the caller's namespace, if there is one.
pub fn index_of(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// Whether any interface is a port of the bridge `name` (or its ports cannot be read).
pub(crate) fn bridge_has_port(name: &str) -> bool {
    bridge_ports(name).is_none_or(|ports| !ports.is_empty())
}

/// The names of the bridge `name`'s ports; None when they cannot be read.
pub(crate) fn bridge_ports(name: &str) -> Option<Vec<String>> {
    let ports = std::path::Path::new("/sys/class/net")
        .join(name)
        .join("brif");
    let mut names: Vec<String> = std::fs::read_dir(ports)
        .ok()?
        .flatten()
        .map(|port| port.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Some(names)
}

/// Stops answering for every address of `subnet` on the interface `uplink`: the proxy ARP
/// entries a removed root's VMs left there (their keepers killed), whose addresses another
/// host's root may use now. Nothing if the interface is gone; errors are let be (what stays
/// is an answer on the LAN for an address no VM here has).
pub(crate) fn forget_proxy_subnet(uplink: &str, subnet: crate::subnet::Subnet) {
    let Some(index) = index_of(uplink) else {
        return;
    };
    let Ok(mut netlink) = Netlink::open() else {
        return;
    };
    let Ok(addresses) = netlink.proxy_neighbours(index) else {
        return;
    };
    for address in addresses.into_iter().filter(|a| subnet.contains(*a)) {
        let _ = netlink.delete_proxy_neighbour(index, address);
    }
}
