//! Unix sockets that pass descriptors: the connection between `feather exec` and a VM's init,
//! and between `feather-open` and its VM's shuttle broker.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};

use crate::raw;

/// A connected pair of SOCK_SEQPACKET unix sockets, both ends close-on-exec: every message
/// keeps its bounds, and one read takes one whole message.
pub fn seqpacket_pair() -> nix::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
}

/// Accepts one connection of a listening socket (non-blocking, close-on-exec).
pub fn accept(listener: &impl AsFd) -> nix::Result<OwnedFd> {
    accept_with(listener, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK)
}

/// Accepts one connection of a listening socket, with `flags` on the new descriptor.
pub fn accept_with(listener: &impl AsFd, flags: SockFlag) -> nix::Result<OwnedFd> {
    raw::accept(listener.as_fd().as_raw_fd(), flags)
}

/// Sends one message with `fds` attached (never SIGPIPE: a closed peer is EPIPE).
pub fn send(socket: &impl AsFd, message: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    let rights = [ControlMessage::ScmRights(fds)];
    let control: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(
        socket.as_fd().as_raw_fd(),
        &[IoSlice::new(message)],
        control,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map(drop)
}

/// Receives one message into `buffer` and up to 64 descriptors sent with it.
pub fn receive(socket: &impl AsFd, buffer: &mut [u8]) -> nix::Result<(usize, Vec<OwnedFd>)> {
    raw::receive_with_fds(socket.as_fd().as_raw_fd(), buffer)
}
