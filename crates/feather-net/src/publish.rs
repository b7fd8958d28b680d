//! Published ports: a userland forwarder in the keeper (like docker-proxy). The keeper binds
//! each host port on all addresses before the VM starts — which is also how a port already
//! taken is found — and copies every connection (or UDP exchange) to the VM's address, until
//! the VM ends: its keeper closes the ports before it reports the end (see [`Forwarding`]). This
//! reaches the VM from other hosts and from the host's own loopback alike, with no change to
//! host sysctls (DNAT of 127.0.0.1 would need `route_localnet`).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use feather_core::network::{Protocol, Publish};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};

use crate::error::{NetError, Result};

/// How long a UDP exchange may stay silent before its forwarding socket is closed.
const UDP_IDLE: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

enum Bound {
    Tcp(TcpListener, SocketAddrV4),
    Udp(UdpSocket, SocketAddrV4),
}

/// The host ports of one VM, bound and not yet served.
pub struct Published {
    ports: Vec<Bound>,
}

/// Binds every published host port (on all IPv4 addresses), or fails naming the port taken.
pub fn bind(publish: &[Publish], vm: Ipv4Addr) -> Result<Published> {
    let mut ports = Vec::new();
    for p in publish {
        let host = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, p.host_port);
        let target = SocketAddrV4::new(vm, p.vm_port);
        let taken = |source| NetError::PortTaken {
            port: p.host_port,
            protocol: p.protocol,
            source,
        };
        ports.push(match p.protocol {
            Protocol::Tcp => Bound::Tcp(TcpListener::bind(host).map_err(taken)?, target),
            Protocol::Udp => Bound::Udp(UdpSocket::bind(host).map_err(taken)?, target),
        });
    }
    Ok(Published { ports })
}

/// Checks that the host ports are free now, for an early answer at `feather create`.
pub fn check_free(publish: &[Publish]) -> Result<()> {
    bind(publish, Ipv4Addr::LOCALHOST).map(drop)
}

impl Published {
    /// Serves every port on threads of its own until [`Forwarding::close`] (or its drop). The
    /// threads block every signal, so the keeper's main thread (with its signalfd) receives
    /// them all.
    pub fn serve(self) -> Forwarding {
        let mut forwarding = Forwarding {
            closing: None,
            threads: Vec::new(),
        };
        if self.ports.is_empty() {
            return forwarding;
        }
        let Ok((closed, closing)) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) else {
            // Without a way to end them, the ports are closed at once rather than held for
            // good: a VM whose ports cannot be served is told so by its clients.
            return forwarding;
        };
        let closed = Arc::new(closed);
        let mut old = SigSet::empty();
        let _ = pthread_sigmask(
            SigmaskHow::SIG_SETMASK,
            Some(&SigSet::all()),
            Some(&mut old),
        );
        for port in self.ports {
            let closed = Arc::clone(&closed);
            let thread = match port {
                Bound::Tcp(listener, target) => spawn(move || serve_tcp(listener, target, &closed)),
                Bound::Udp(socket, target) => spawn(move || serve_udp(socket, target, &closed)),
            };
            forwarding.threads.extend(thread);
        }
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
        forwarding.closing = Some(closing);
        forwarding
    }
}

/// The forwarders of one VM's published ports, serving until closed.
pub struct Forwarding {
    /// Its close (the pipe's other end reads as hung up) tells every forwarder to end.
    closing: Option<OwnedFd>,
    /// One per port; each ends only once every socket bound to its port is closed.
    threads: Vec<JoinHandle<()>>,
}

impl Forwarding {
    /// Closes every published port and waits until nothing of this process holds one: a VM
    /// started next (this one again, or another publishing the same port) binds it at once.
    /// Connections already forwarded go on until their ends close them.
    pub fn close(&mut self) {
        drop(self.closing.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        self.close();
    }
}

fn spawn(work: impl FnOnce() + Send + 'static) -> Option<JoinHandle<()>> {
    std::thread::Builder::new()
        .stack_size(64 << 10)
        .spawn(work)
        .ok()
}

/// Waits until `socket` is readable (true), or `closed` hangs up or `timeout` passes (false).
fn readable(socket: BorrowedFd<'_>, closed: &OwnedFd, timeout: PollTimeout) -> bool {
    loop {
        let mut fds = [
            PollFd::new(socket, PollFlags::POLLIN),
            PollFd::new(closed.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) | Ok(0) => return false,
            Ok(_) => {
                let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                return !ready(&fds[1]) && ready(&fds[0]);
            }
        }
    }
}

fn serve_tcp(listener: TcpListener, target: SocketAddrV4, closed: &OwnedFd) {
    // Non-blocking: a connection reset between the poll and the accept must not hold the
    // thread (and the port) in `accept`.
    let _ = listener.set_nonblocking(true);
    while readable(listener.as_fd(), closed, PollTimeout::NONE) {
        let Ok((client, _)) = listener.accept() else {
            continue;
        };
        spawn(move || {
            let Ok(vm) = TcpStream::connect_timeout(&SocketAddr::V4(target), CONNECT_TIMEOUT)
            else {
                return;
            };
            let (Ok(client_read), Ok(vm_write)) = (client.try_clone(), vm.try_clone()) else {
                return;
            };
            spawn(move || pipe(client_read, vm_write));
            pipe(vm, client);
        });
    }
}

/// Copies one direction until its end, then passes the end on (half-close).
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

/// Each exchange's answers are sent from the published socket itself (a copy of it per
/// exchange): every exchange ends with the forwarder, which waits for them, so that no copy
/// keeps the port bound once it is closed.
fn serve_udp(socket: UdpSocket, target: SocketAddrV4, closed: &Arc<OwnedFd>) {
    let sessions: Arc<Mutex<HashMap<SocketAddr, UdpSocket>>> = Arc::default();
    let mut exchanges: Vec<JoinHandle<()>> = Vec::new();
    let mut buffer = vec![0u8; 65536];
    while readable(socket.as_fd(), closed, PollTimeout::NONE) {
        let Ok((length, client)) = socket.recv_from(&mut buffer) else {
            continue;
        };
        exchanges.retain(|exchange| !exchange.is_finished());
        let existing = sessions
            .lock()
            .ok()
            .and_then(|s| s.get(&client).and_then(|u| u.try_clone().ok()));
        let upstream = match existing {
            Some(upstream) => upstream,
            None => {
                let Ok(upstream) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) else {
                    continue;
                };
                if upstream.connect(target).is_err() {
                    continue;
                }
                let (Ok(reader), Ok(stored), Ok(reply_socket)) = (
                    upstream.try_clone(),
                    upstream.try_clone(),
                    socket.try_clone(),
                ) else {
                    continue;
                };
                if let Ok(mut s) = sessions.lock() {
                    s.insert(client, stored);
                }
                let sessions = Arc::clone(&sessions);
                let closed = Arc::clone(closed);
                exchanges.extend(spawn(move || {
                    let mut buffer = vec![0u8; 65536];
                    let idle = PollTimeout::try_from(UDP_IDLE).unwrap_or(PollTimeout::MAX);
                    while readable(reader.as_fd(), &closed, idle) {
                        let Ok(length) = reader.recv(&mut buffer) else {
                            break;
                        };
                        let _ = reply_socket.send_to(&buffer[..length], client);
                    }
                    if let Ok(mut s) = sessions.lock() {
                        s.remove(&client);
                    }
                }));
                upstream
            }
        };
        let _ = upstream.send(&buffer[..length]);
    }
    for exchange in exchanges {
        let _ = exchange.join();
    }
}
