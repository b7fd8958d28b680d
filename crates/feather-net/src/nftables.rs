//! A VM's own nftables entries — its chains and its elements in the root's verdict maps and
//! `egress` set — written as one nf_tables netlink batch, atomic like `nft -f`, but without
//! starting a process (which costs more than the rest of a VM's network set-up together).
//! The root's tables themselves are made with the `nft` tool ([`crate::firewall`]): that
//! happens once per root and its rules are far easier to read in nft's own language. Their
//! removal, which the teardown of a root's last VM waits for, is a batch here too.

use std::io;
use std::net::Ipv4Addr;

use netlink_sys::{Socket, SocketAddr};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

const NETLINK_NETFILTER: isize = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_JUMP: i32 = -3;
const IFNAMSIZ: usize = 16;

/// The address families of the two tables.
#[derive(Clone, Copy)]
pub enum Family {
    Inet = 1,
    Bridge = 7,
}

/// A key of a set or map element.
pub enum Key<'a> {
    Ipv4(Ipv4Addr),
    Interface(&'a str),
    /// `ifname . ipv4_addr`: each part in its own registers (16 and 4 bytes).
    InterfaceAddress(&'a str, Ipv4Addr),
    /// `ifname . ether_addr`: 16 bytes, then 6 padded to the registers' 8.
    InterfaceMac(&'a str, [u8; 6]),
}

impl Key<'_> {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Key::Ipv4(address) => address.octets().to_vec(),
            Key::Interface(name) => {
                let mut bytes = name.as_bytes().to_vec();
                bytes.resize(IFNAMSIZ, 0);
                bytes
            }
            Key::InterfaceAddress(name, address) => {
                let mut bytes = Key::Interface(name).bytes();
                bytes.extend(address.octets());
                bytes
            }
            Key::InterfaceMac(name, mac) => {
                let mut bytes = Key::Interface(name).bytes();
                bytes.extend(mac);
                bytes.extend([0, 0]);
                bytes
            }
        }
    }
}

/// One change in a batch.
pub enum Change<'a> {
    /// A whole table, with everything in it.
    DeleteTable { family: Family, table: &'a str },
    AddChain {
        family: Family,
        table: &'a str,
        chain: &'a str,
    },
    DeleteChain {
        family: Family,
        table: &'a str,
        chain: &'a str,
    },
    /// An element of set `set`; with `jump`, of a verdict map, jumping to that chain.
    AddElement {
        family: Family,
        table: &'a str,
        set: &'a str,
        key: Key<'a>,
        jump: Option<&'a str>,
    },
    DeleteElement {
        family: Family,
        table: &'a str,
        set: &'a str,
        key: Key<'a>,
    },
}

/// Applies `changes` as one transaction: all of them, or (on the first error) none.
pub fn apply(changes: &[Change]) -> io::Result<()> {
    apply_then(changes, || {})
}

/// [`apply`], calling `committed` once the kernel has accepted every change, before the socket
/// closes: after a transaction that deleted something, that close waits for the kernel to free
/// it (nf_tables' destroy work, an RCU grace period: 10–25 ms on this machine), which is no
/// change anyone can see.
pub fn apply_then(changes: &[Change], committed: impl FnOnce()) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    set_receive_timeout(&socket)?;
    let mut batch = Vec::new();
    let mut sequence = 1u32;
    message(
        &mut batch,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        sequence,
        0,
        &[],
    );
    for change in changes {
        sequence += 1;
        let (kind, flags, family, attributes) = encode(change);
        message(
            &mut batch,
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            sequence,
            family as u8,
            &attributes,
        );
    }
    message(
        &mut batch,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        sequence + 1,
        0,
        &[],
    );
    socket.send(&batch, 0)?;
    // Every change is answered (ACK) with an error code: 0, or why the batch was refused.
    let mut answered = 0;
    while answered < changes.len() {
        let (reply, _) = socket.recv_from_full()?;
        let mut rest = &reply[..];
        while rest.len() >= 16 {
            let length = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
            if length < 16 || length > rest.len() {
                break;
            }
            if kind == NLMSG_ERROR && length >= 20 {
                let code = i32::from_ne_bytes(rest[16..20].try_into().expect("4 bytes"));
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
                answered += 1;
            }
            rest = &rest[align(length).min(rest.len())..];
        }
    }
    committed();
    Ok(())
}

/// Whether the caller's network namespace has any nftables table, of any family (`nft list
/// tables` printing something).
pub fn has_tables() -> io::Result<bool> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    set_receive_timeout(&socket)?;
    let mut request = Vec::new();
    message(
        &mut request,
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        0,
        &[],
    );
    socket.send(&request, 0)?;
    let mut tables = false;
    loop {
        let (reply, _) = socket.recv_from_full()?;
        let mut rest = &reply[..];
        while rest.len() >= 16 {
            let length = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
            if length < 16 || length > rest.len() {
                return Ok(tables);
            }
            match kind {
                NLMSG_DONE => return Ok(tables),
                NLMSG_ERROR if length >= 20 => {
                    let code = i32::from_ne_bytes(rest[16..20].try_into().expect("4 bytes"));
                    return match code {
                        0 => Ok(tables),
                        code => Err(io::Error::from_raw_os_error(-code)),
                    };
                }
                kind if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE => tables = true,
                _ => {}
            }
            rest = &rest[align(length).min(rest.len())..];
        }
    }
}

fn encode<'a>(change: &Change<'a>) -> (u16, u16, Family, Vec<u8>) {
    let mut attributes = Vec::new();
    match change {
        Change::DeleteTable { family, table } => {
            string(&mut attributes, NFTA_TABLE_NAME, table);
            (NFT_MSG_DELTABLE, 0, *family, attributes)
        }
        Change::AddChain {
            family,
            table,
            chain,
        }
        | Change::DeleteChain {
            family,
            table,
            chain,
        } => {
            string(&mut attributes, NFTA_CHAIN_TABLE, table);
            string(&mut attributes, NFTA_CHAIN_NAME, chain);
            let (kind, flags) = match change {
                Change::AddChain { .. } => (NFT_MSG_NEWCHAIN, NLM_F_CREATE),
                _ => (NFT_MSG_DELCHAIN, 0),
            };
            (kind, flags, *family, attributes)
        }
        Change::AddElement {
            family,
            table,
            set,
            key,
            jump,
        } => {
            string(&mut attributes, NFTA_SET_ELEM_LIST_TABLE, table);
            string(&mut attributes, NFTA_SET_ELEM_LIST_SET, set);
            let mut element = Vec::new();
            let mut key_data = Vec::new();
            attribute(&mut key_data, NFTA_DATA_VALUE, &key.bytes());
            nested(&mut element, NFTA_SET_ELEM_KEY, &key_data);
            if let Some(chain) = jump {
                let mut verdict = Vec::new();
                attribute(&mut verdict, NFTA_VERDICT_CODE, &NFT_JUMP.to_be_bytes());
                string(&mut verdict, NFTA_VERDICT_CHAIN, chain);
                let mut data = Vec::new();
                nested(&mut data, NFTA_DATA_VERDICT, &verdict);
                nested(&mut element, NFTA_SET_ELEM_DATA, &data);
            }
            let mut list = Vec::new();
            nested(&mut list, NFTA_LIST_ELEM, &element);
            nested(&mut attributes, NFTA_SET_ELEM_LIST_ELEMENTS, &list);
            (NFT_MSG_NEWSETELEM, NLM_F_CREATE, *family, attributes)
        }
        Change::DeleteElement {
            family,
            table,
            set,
            key,
        } => {
            string(&mut attributes, NFTA_SET_ELEM_LIST_TABLE, table);
            string(&mut attributes, NFTA_SET_ELEM_LIST_SET, set);
            let mut key_data = Vec::new();
            attribute(&mut key_data, NFTA_DATA_VALUE, &key.bytes());
            let mut element = Vec::new();
            nested(&mut element, NFTA_SET_ELEM_KEY, &key_data);
            let mut list = Vec::new();
            nested(&mut list, NFTA_LIST_ELEM, &element);
            nested(&mut attributes, NFTA_SET_ELEM_LIST_ELEMENTS, &list);
            (NFT_MSG_DELSETELEM, 0, *family, attributes)
        }
    }
}

fn align(length: usize) -> usize {
    (length + 3) & !3
}

/// Appends a netlink message: nlmsghdr, nfgenmsg (family, version 0, resource id), attributes.
fn message(out: &mut Vec<u8>, kind: u16, flags: u16, sequence: u32, family: u8, attributes: &[u8]) {
    let length = 16 + 4 + attributes.len();
    out.extend_from_slice(&(length as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&sequence.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0);
    // The batch messages name the subsystem they are for; the others leave it 0.
    let resource = if kind == NFNL_MSG_BATCH_BEGIN || kind == NFNL_MSG_BATCH_END {
        NFNL_SUBSYS_NFTABLES
    } else {
        0
    };
    out.extend_from_slice(&resource.to_be_bytes());
    out.extend_from_slice(attributes);
    out.resize(align(out.len()), 0);
}

fn attribute(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align(out.len()), 0);
}

fn nested(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    attribute(out, kind | NLA_F_NESTED, payload);
}

fn string(out: &mut Vec<u8>, kind: u16, text: &str) {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    attribute(out, kind, &bytes);
}

/// A kernel that never answers must not hang a VM's start.
fn set_receive_timeout(socket: &Socket) -> io::Result<()> {
    let timeout = TimeVal::new(2, 0);
    setsockopt(socket, sockopt::ReceiveTimeout, &timeout).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_element_is_encoded_as_nft_encodes_it() {
        // What `nft add element inet probe m '{ 10.1.2.5 : jump c1 }'` sends as the elements
        // attribute (captured with strace from nft 1.0.6).
        let from_nft: &[u8] = b"\x2c\x00\x03\x80\x28\x00\x01\x80\x0c\x00\x01\x80\x08\x00\x01\x00\x0a\x01\x02\x05\
            \x18\x00\x02\x80\x14\x00\x02\x80\x08\x00\x01\x00\xff\xff\xff\xfd\x07\x00\x02\x00\x63\x31\x00\x00";
        let (kind, flags, _, attributes) = encode(&Change::AddElement {
            family: Family::Inet,
            table: "probe",
            set: "m",
            key: Key::Ipv4([10, 1, 2, 5].into()),
            jump: Some("c1"),
        });
        assert_eq!((kind, flags), (NFT_MSG_NEWSETELEM, NLM_F_CREATE));
        assert!(attributes.ends_with(from_nft), "{attributes:02x?}");
        // Table "probe" and set "m" come first, NUL-terminated and padded.
        assert_eq!(
            &attributes[..20],
            b"\x0a\x00\x01\x00probe\x00\x00\x00\x06\x00\x02\x00m\x00\x00\x00"
        );
    }

    #[test]
    fn a_table_is_deleted_by_its_name() {
        let (kind, flags, family, attributes) = encode(&Change::DeleteTable {
            family: Family::Bridge,
            table: "fbr0a5d0c00",
        });
        assert_eq!((kind, flags, family as u8), (NFT_MSG_DELTABLE, 0, 7));
        assert_eq!(&attributes[..], b"\x10\x00\x01\x00fbr0a5d0c00\x00");
    }

    #[test]
    fn an_interface_key_is_a_padded_ifname() {
        assert_eq!(
            Key::Interface("fth0123abcd").bytes(),
            b"fth0123abcd\0\0\0\0\0"
        );
    }
}
