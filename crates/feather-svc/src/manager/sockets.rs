//! Socket units: the manager listens on a socket unit's addresses itself and hands the
//! sockets to the service it activates (`LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`), as
//! systemd does. Stream and datagram sockets on TCP/UDP addresses, paths and abstract names.

use std::fs;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{getsockopt, sockopt, SockFlag};
use nix::unistd::{chown, Group, User};

use crate::unit::{BindIpv6Only, Listen, ListenKind, Unit};

/// One bound socket of a socket unit.
pub struct Bound {
    pub fd: OwnedFd,
    /// The name the service sees in LISTEN_FDNAMES.
    pub name: String,
    /// A socket file to remove when the unit stops.
    pub path: Option<PathBuf>,
}

/// Why a socket unit cannot listen.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{unit}: cannot listen on {address} ({kind:?}): {problem}")]
    Listen {
        unit: String,
        address: String,
        kind: ListenKind,
        problem: ListenProblem,
    },
    /// `chmod` or `chown` of a socket file (SocketMode=, SocketUser=, SocketGroup=).
    #[error("{unit}: {step} {}: {error}", path.display())]
    Permissions {
        unit: String,
        step: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{unit}: Accept=yes takes connections, which {address} ({kind:?}) does not have; use Accept=no")]
    AcceptWithoutStream {
        unit: String,
        address: String,
        kind: ListenKind,
    },
    #[error("{unit}: {error}")]
    NonBlocking { unit: String, error: std::io::Error },
}

/// What stops one `Listen*=` address from being bound.
#[derive(Debug, thiserror::Error)]
pub enum ListenProblem {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{0:?} is neither a port, an address:port, a path nor @name")]
    BadAddress(String),
    #[error("{0:?} sockets are not supported in VMs yet")]
    Unsupported(ListenKind),
}

/// Binds every `Listen*=` address of `unit`; on any failure, none stays bound.
pub fn bind(unit: &Unit) -> Result<Vec<Bound>, SocketError> {
    let Some(socket) = &unit.socket else {
        return Ok(Vec::new());
    };
    let name = socket
        .file_descriptor_name
        .clone()
        .unwrap_or_else(|| unit.name.to_string());
    let mut bound = Vec::new();
    for listen in &socket.listen {
        let (fd, path) =
            bind_one(listen, socket.bind_ipv6_only).map_err(|problem| SocketError::Listen {
                unit: unit.name.to_string(),
                address: listen.address.clone(),
                kind: listen.kind,
                problem,
            })?;
        if let Some(path) = &path {
            let mode = socket.socket_mode.unwrap_or(0o666);
            let failed = |step: &'static str, error: std::io::Error| SocketError::Permissions {
                unit: unit.name.to_string(),
                step,
                path: path.clone(),
                error,
            };
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .map_err(|e| failed("chmod", e))?;
            let uid = socket
                .socket_user
                .as_deref()
                .and_then(|u| User::from_name(u).ok().flatten())
                .map(|u| u.uid);
            let gid = socket
                .socket_group
                .as_deref()
                .and_then(|g| Group::from_name(g).ok().flatten())
                .map(|g| g.gid);
            if uid.is_some() || gid.is_some() {
                chown(path, uid, gid).map_err(|e| failed("chown", e.into()))?;
            }
        }
        bound.push(Bound {
            fd,
            name: name.clone(),
            path,
        });
    }
    Ok(bound)
}

fn bind_one(
    listen: &Listen,
    ipv6_only: BindIpv6Only,
) -> Result<(OwnedFd, Option<PathBuf>), ListenProblem> {
    let address = listen.address.as_str();
    match (listen.kind, address.chars().next()) {
        (ListenKind::Stream | ListenKind::Datagram, Some('/')) => {
            let path = Path::new(address);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            let _ = fs::remove_file(path);
            let fd: OwnedFd = match listen.kind {
                ListenKind::Stream => UnixListener::bind(path)?.into(),
                _ => UnixDatagram::bind(path)?.into(),
            };
            Ok((fd, Some(path.to_path_buf())))
        }
        (ListenKind::Stream | ListenKind::Datagram, Some('@')) => {
            let addr =
                std::os::unix::net::SocketAddr::from_abstract_name(&address.as_bytes()[1..])?;
            let fd: OwnedFd = match listen.kind {
                ListenKind::Stream => UnixListener::bind_addr(&addr)?.into(),
                _ => UnixDatagram::bind_addr(&addr)?.into(),
            };
            Ok((fd, None))
        }
        (ListenKind::Stream | ListenKind::Datagram, _) => {
            let addresses = inet_addresses(address)?;
            let mut last_error = None;
            for addr in addresses {
                let result = match (addr, ipv6_only) {
                    (SocketAddr::V6(v6), BindIpv6Only::Both | BindIpv6Only::Ipv6Only) => {
                        bind_ipv6(listen.kind, v6, ipv6_only == BindIpv6Only::Ipv6Only)
                    }
                    _ => match listen.kind {
                        ListenKind::Stream => TcpListener::bind(addr).map(Into::into),
                        _ => UdpSocket::bind(addr).map(Into::into),
                    },
                };
                match result {
                    Ok(fd) => return Ok((fd, None)),
                    Err(e) => last_error = Some(e),
                }
            }
            // inet_addresses gives at least one address, so some error was recorded.
            Err(last_error
                .unwrap_or_else(|| std::io::ErrorKind::AddrNotAvailable.into())
                .into())
        }
        (kind, _) => Err(ListenProblem::Unsupported(kind)),
    }
}

/// A TCP listener or UDP socket on the IPv6 address `addr`, with IPV6_V6ONLY set to `only`
/// before it is bound (the option cannot change afterwards), as systemd binds for
/// `BindIPv6Only=`.
fn bind_ipv6(
    kind: ListenKind,
    addr: std::net::SocketAddrV6,
    only: bool,
) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{
        bind, listen, setsockopt, socket, AddressFamily, Backlog, SockType, SockaddrIn6,
    };
    let stream = kind == ListenKind::Stream;
    let fd = socket(
        AddressFamily::Inet6,
        if stream {
            SockType::Stream
        } else {
            SockType::Datagram
        },
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &only)?;
    if stream {
        // As std's TcpListener does: a restarted service binds again at once.
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn6::from(addr),
    )?;
    if stream {
        listen(&fd, Backlog::MAXCONN)?;
    }
    Ok(fd)
}

/// `80` (every address: IPv6 with IPv4 mapped, or IPv4 alone), `127.0.0.1:80`, `[::1]:80`.
fn inet_addresses(address: &str) -> Result<Vec<SocketAddr>, ListenProblem> {
    if let Ok(port) = address.parse::<u16>() {
        return Ok(vec![
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)),
        ]);
    }
    address
        .parse::<SocketAddr>()
        .map(|a| vec![a])
        .map_err(|_| ListenProblem::BadAddress(address.to_owned()))
}

/// Makes the sockets of an `Accept=yes` unit ready for the manager's own accept loop: only
/// stream sockets take connections; they are polled, so they must not block.
pub fn prepare_accepting(unit: &Unit, bound: &[Bound]) -> Result<(), SocketError> {
    if let Some(listen) = unit
        .socket
        .iter()
        .flat_map(|s| &s.listen)
        .find(|l| l.kind != ListenKind::Stream)
    {
        return Err(SocketError::AcceptWithoutStream {
            unit: unit.name.to_string(),
            address: listen.address.clone(),
            kind: listen.kind,
        });
    }
    for b in bound {
        let failed = |error: nix::errno::Errno| SocketError::NonBlocking {
            unit: unit.name.to_string(),
            error: error.into(),
        };
        let flags = fcntl(&b.fd, FcntlArg::F_GETFL).map_err(failed)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(&b.fd, FcntlArg::F_SETFL(flags)).map_err(failed)?;
    }
    Ok(())
}

/// One waiting connection, or None when there is none. The connection blocks (as a service
/// started inetd-style expects) and is not inherited by anything else the manager starts.
pub fn accept(listener: &OwnedFd) -> Result<Option<OwnedFd>, nix::errno::Errno> {
    match feather_sys::fdpass::accept_with(listener, SockFlag::SOCK_CLOEXEC) {
        Ok(fd) => Ok(Some(fd)),
        Err(nix::errno::Errno::EAGAIN) => Ok(None),
        Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The instance part of the service started for `connection`, as systemd makes it: the
/// connection's number, then the local and the remote address (`3-127.0.0.1:7777-127.0.0.1:41234`),
/// or for a unix socket the peer's pid and uid (`3-1234-0`).
pub fn instance_name(number: u64, connection: &OwnedFd) -> String {
    let inet = |addr: SocketAddr| match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => format!("{v4}:{}", a.port()),
            // Unit names allow `:` but not `[`/`]`: written bare, as systemd does.
            None => format!("{}:{}", a.ip(), a.port()),
        },
        a => a.to_string(),
    };
    // A TCP view of a duplicate, for its addresses; a unix socket has none of that kind.
    let tcp = connection.try_clone().ok().map(std::net::TcpStream::from);
    if let Some((local, remote)) = tcp
        .as_ref()
        .and_then(|t| Some((t.local_addr().ok()?, t.peer_addr().ok()?)))
    {
        return format!("{number}-{}-{}", inet(local), inet(remote));
    }
    match getsockopt(connection, sockopt::PeerCredentials) {
        Ok(cred) => format!("{number}-{}-{}", cred.pid(), cred.uid()),
        Err(_) => format!("{number}-unknown"),
    }
}
