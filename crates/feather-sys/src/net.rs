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
