//! Published ports: a userland forwarder in the keeper (like docker-proxy). The keeper binds
//! each host port on all addresses before the VM starts — which is also how a port already
//! taken is found — and copies every connection (or UDP exchange) to the VM's address. This
//! reaches the VM from other hosts and from the host's own loopback alike, with no change to
//! host sysctls (DNAT of 127.0.0.1 would need `route_localnet`).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use feather_core::network::{Protocol, Publish};
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
    /// Serves every port on threads of its own, for as long as the process lives. The threads
    /// block every signal, so the keeper's main thread (with its signalfd) receives them all.
    pub fn serve(self) {
        if self.ports.is_empty() {
            return;
        }
        let mut old = SigSet::empty();
        let _ = pthread_sigmask(
            SigmaskHow::SIG_SETMASK,
            Some(&SigSet::all()),
            Some(&mut old),
        );
        for port in self.ports {
            match port {
                Bound::Tcp(listener, target) => spawn(move || serve_tcp(listener, target)),
                Bound::Udp(socket, target) => spawn(move || serve_udp(socket, target)),
            }
        }
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    }
}

fn spawn(work: impl FnOnce() + Send + 'static) {
    let _ = std::thread::Builder::new().stack_size(64 << 10).spawn(work);
}

fn serve_tcp(listener: TcpListener, target: SocketAddrV4) {
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
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

fn serve_udp(socket: UdpSocket, target: SocketAddrV4) {
    let sessions: Arc<Mutex<HashMap<SocketAddr, UdpSocket>>> = Arc::default();
    let mut buffer = vec![0u8; 65536];
    loop {
        let Ok((length, client)) = socket.recv_from(&mut buffer) else {
            continue;
        };
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
                let _ = upstream.set_read_timeout(Some(UDP_IDLE));
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
                spawn(move || {
                    let mut buffer = vec![0u8; 65536];
                    while let Ok(length) = reader.recv(&mut buffer) {
                        let _ = reply_socket.send_to(&buffer[..length], client);
                    }
                    if let Ok(mut s) = sessions.lock() {
                        s.remove(&client);
                    }
                });
                upstream
            }
        };
        let _ = upstream.send(&buffer[..length]);
    }
}
