//! The Landlock scoping cells: a listener and a client, each in a domain of its own.

use std::io::BufRead;
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::Pid;

use super::shared::*;
use crate::matrix::Outcome;

/// For the Landlock test: enters a Landlock domain of its own (scoped abstract sockets and
/// signals; none with `scoped` false), binds abstract socket @`name`, prints its pid, and
/// serves until stdin closes.
pub(super) fn landlock_listen(name: &str, scoped: bool) -> i32 {
    if scoped {
        if let Err(e) = feather_confine::landlock::scope_ipc() {
            eprintln!("{e}");
            return 1;
        }
    }
    let listener = match std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .and_then(|a| UnixListener::bind_addr(&a))
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bind @{name}: {e}");
            return 1;
        }
    };
    let _ = listener.set_nonblocking(true);
    print_line(&std::process::id().to_string());
    let deadline = Instant::now() + LISTENER_LIFETIME;
    let stdin = std::io::stdin();
    while Instant::now() < deadline {
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(100u16));
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            let mut line = String::new();
            if stdin.lock().read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
        }
        while listener.accept().is_ok() {}
    }
    0
}

/// For the Landlock test: from a domain of its own (or none, with `scoped` false), signals
/// `pid` (signal 0) and connects to @`name`; prints both outcomes as JSON.
pub(super) fn landlock_try(pid: i32, name: &str, scoped: bool) -> i32 {
    if scoped {
        if let Err(e) = feather_confine::landlock::scope_ipc() {
            eprintln!("{e}");
            return 1;
        }
    }
    let signal = match nix::sys::signal::kill(Pid::from_raw(pid), None) {
        Ok(()) => reached(format!("may signal {pid}")),
        Err(e) => Outcome::from_errno("kill", e),
    };
    let connected = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .and_then(|a| UnixStream::connect_addr(&a));
    let abstract_socket = match connected {
        Ok(_) => reached(format!("connected to @{name}")),
        Err(e) => Outcome::from_errno(&format!("connect @{name}"), io_errno(&e)),
    };
    print_line(&serde_json::to_string(&[signal, abstract_socket]).unwrap_or_default());
    0
}
