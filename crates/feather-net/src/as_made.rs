//! Whether a VM's network namespace still holds what feather made in it and nothing else: its
//! loopback and its end of the veth pair (address, link-layer address, MTU, up), the subnet's
//! route and the default route through the bridge, the kernel's default routing rules, no
//! nftables table and no iptables table. A checkpoint then leaves the namespace out of CRIU's
//! dump, and the restoring keeper makes it again as at a start (see `docs/migration.md`, "What
//! is saved and how it comes back").
//!
//! A VM's root cannot change any of it: it holds no `CAP_NET_ADMIN` (bounding set, see
//! `feather_confine::capabilities`), its namespace belongs to the host's user namespace (so a
//! user namespace the VM makes, where allowed, gives it no rights over it), and its `/proc/sys`
//! is mounted read-only. The comparison is what makes that a checked fact rather than a
//! promise: whatever differs — a change by a process the host let in with more rights, a route
//! or address the kernel learned from a router advertisement — makes CRIU dump the namespace
//! as before, and the dump says why. Nothing is lost silently.
//!
//! What is not compared: state the kernel keeps per namespace but rebuilds by itself (neighbour
//! and route caches, connection tracking without rules) and the namespace's sysctls, which the
//! VM cannot write (read-only `/proc/sys`: the caller checks that mount).

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use netlink_packet_route::rule::{RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::inside::{vm_mac, Interface};
use crate::netlink::Netlink;

/// The MTU a new veth end and a new loopback have.
const VETH_MTU: u32 = 1500;
const LOOPBACK_MTU: u32 = 65536;

/// The local routing table, filled by the kernel from the addresses.
const LOCAL_TABLE: u32 = 255;
const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// What differs in the caller's network namespace from what feather made for `interface`, in
/// words; empty when nothing does. Runs on a thread in the VM's namespace.
pub fn differences(interface: &Interface) -> io::Result<Vec<String>> {
    let mut netlink = Netlink::open()?;
    let mut found = Vec::new();
    let links = links(&mut netlink, interface, &mut found)?;
    addresses(&mut netlink, interface, &links, &mut found)?;
    routes(&mut netlink, interface, &links, &mut found)?;
    rules(&mut netlink, &mut found)?;
    if crate::nftables::has_tables()? {
        found.push("it has nftables tables".into());
    }
    for family in ["ip", "ip6", "arp"] {
        let path = format!("/proc/thread-self/net/{family}_tables_names");
        if std::fs::read_to_string(&path).is_ok_and(|names| !names.trim().is_empty()) {
            found.push(format!("it has {family}tables tables"));
        }
    }
    Ok(found)
}

/// The indexes of the two interfaces feather made.
struct Links {
    loopback: u32,
    vm: u32,
}

fn links(
    netlink: &mut Netlink,
    interface: &Interface,
    found: &mut Vec<String>,
) -> io::Result<Links> {
    let mut known = Links { loopback: 0, vm: 0 };
    for message in netlink.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))? {
        let RouteNetlinkMessage::NewLink(link) = message else {
            continue;
        };
        let name = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        });
        let mtu = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        });
        let mac = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(mac) => Some(mac.clone()),
            _ => None,
        });
        let up = link.header.flags.contains(LinkFlags::Up);
        match name.as_deref() {
            Some("lo") => {
                known.loopback = link.header.index;
                if !up || mtu != Some(LOOPBACK_MTU) {
                    found.push(format!("lo is {} with MTU {mtu:?}", updown(up)));
                }
            }
            Some(name) if name == interface.name => {
                known.vm = link.header.index;
                if !up
                    || mtu != Some(VETH_MTU)
                    || mac.as_deref() != Some(&vm_mac(interface.address)[..])
                {
                    found.push(format!(
                        "{name} is {} with MTU {mtu:?} and link-layer address {mac:02x?}",
                        updown(up)
                    ));
                }
            }
            other => found.push(format!("it has interface {}", other.unwrap_or("(unnamed)"))),
        }
    }
    if known.vm == 0 {
        found.push(format!("it has no interface {}", interface.name));
    }
    Ok(known)
}

fn updown(up: bool) -> &'static str {
    if up {
        "up"
    } else {
        "down"
    }
}

fn addresses(
    netlink: &mut Netlink,
    interface: &Interface,
    links: &Links,
    found: &mut Vec<String>,
) -> io::Result<()> {
    for message in netlink.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))? {
        let RouteNetlinkMessage::NewAddress(address) = message else {
            continue;
        };
        let local = address.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let ip = local.or_else(|| {
            address.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        });
        let (index, prefix) = (address.header.index, address.header.prefix_len);
        let made = match ip {
            Some(IpAddr::V4(ip)) => {
                (index == links.loopback && ip == Ipv4Addr::LOCALHOST && prefix == 8)
                    || (index == links.vm && ip == interface.address && prefix == interface.prefix)
            }
            // The kernel's own: ::1 on loopback, the link-local address of the VM's interface.
            Some(IpAddr::V6(ip)) => {
                (index == links.loopback && ip.is_loopback())
                    || (index == links.vm && ip.is_unicast_link_local() && prefix == 64)
            }
            None => false,
        };
        if !made {
            let ip = ip.map_or_else(|| "(none)".to_owned(), |ip| ip.to_string());
            let on = match index {
                i if i == links.vm => interface.name.clone(),
                i if i == links.loopback => "lo".into(),
                i => format!("interface {i}"),
            };
            found.push(format!("it has address {ip}/{prefix} on {on}"));
        }
    }
    Ok(())
}

fn routes(
    netlink: &mut Netlink,
    interface: &Interface,
    links: &Links,
    found: &mut Vec<String>,
) -> io::Result<()> {
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut request = RouteMessage::default();
        request.header.address_family = family;
        for message in netlink.dump(RouteNetlinkMessage::GetRoute(request))? {
            let RouteNetlinkMessage::NewRoute(route) = message else {
                continue;
            };
            if !route_made(&route, interface, links) {
                found.push(format!(
                    "it has route {:?} (table {}, protocol {:?})",
                    route_destination(&route),
                    table_of(&route),
                    route.header.protocol
                ));
            }
        }
    }
    Ok(())
}

/// Whether `route` is one the kernel made from the addresses, or the default route feather
/// added through the bridge.
fn route_made(route: &RouteMessage, interface: &Interface, links: &Links) -> bool {
    let table = table_of(route);
    let oif = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(index) => Some(*index),
        _ => None,
    });
    if route.header.protocol == RouteProtocol::Kernel {
        // The local table's entries and the subnet's route follow from the addresses (checked
        // above); IPv6 adds its link-local and multicast routes.
        return table == LOCAL_TABLE
            || (table == MAIN_TABLE && oif.is_none_or(|i| i == links.vm || i == links.loopback));
    }
    let gateway = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(gateway)) => Some(*gateway),
        _ => None,
    });
    route.header.address_family == AddressFamily::Inet
        && table == MAIN_TABLE
        && route.header.protocol == RouteProtocol::Boot
        && route.header.destination_prefix_length == 0
        && gateway == Some(interface.gateway)
        && oif == Some(links.vm)
}

fn table_of(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(route.header.table.into())
}

fn route_destination(route: &RouteMessage) -> String {
    let destination = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        _ => None,
    });
    match destination {
        Some(ip) => format!("{ip}/{}", route.header.destination_prefix_length),
        None => "default".into(),
    }
}

/// The rules a new namespace has: IPv4 local, main and default; IPv6 local and main.
fn rules(netlink: &mut Netlink, found: &mut Vec<String>) -> io::Result<()> {
    for (family, made) in [
        (
            AddressFamily::Inet,
            &[(0, 255), (32766, 254), (32767, 253)][..],
        ),
        (AddressFamily::Inet6, &[(0, 255), (32766, 254)][..]),
    ] {
        let mut request = RuleMessage::default();
        request.header.family = family;
        let mut seen: Vec<(u32, u32)> = Vec::new();
        for message in netlink.dump(RouteNetlinkMessage::GetRule(request))? {
            let RouteNetlinkMessage::NewRule(rule) = message else {
                continue;
            };
            let priority = rule.attributes.iter().find_map(|a| match a {
                RuleAttribute::Priority(p) => Some(*p),
                _ => None,
            });
            let table = rule.attributes.iter().find_map(|a| match a {
                RuleAttribute::Table(t) => Some(*t),
                _ => None,
            });
            seen.push((
                priority.unwrap_or(0),
                table.unwrap_or(rule.header.table.into()),
            ));
        }
        if seen != made {
            found.push(format!("its {family:?} routing rules are {seen:?}"));
        }
    }
    Ok(())
}
