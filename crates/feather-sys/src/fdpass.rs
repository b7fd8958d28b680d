//! Unix sockets that pass descriptors: the connection between `feather exec` and a VM's init.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::SockFlag;

use crate::raw;

/// Accepts one connection of a listening socket (non-blocking, close-on-exec).
pub fn accept(listener: &impl AsFd) -> nix::Result<OwnedFd> {
    raw::accept(
        listener.as_fd().as_raw_fd(),
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
}

/// Receives one message into `buffer` and up to three descriptors sent with it.
pub fn receive(socket: &impl AsFd, buffer: &mut [u8]) -> nix::Result<(usize, Vec<OwnedFd>)> {
    raw::receive_with_fds(socket.as_fd().as_raw_fd(), buffer)
}
