//! Reaching into a VM from its keeper, outside it: a unix socket bound at a path of the VM's
//! file view, a TCP listener on the VM's loopback, and connections to a VM's (or the host's)
//! sockets and ports.
//!
//! Paths of a VM are resolved under `/proc/<init>/root` with `openat2(RESOLVE_IN_ROOT)`, so a
//! symlink the VM made (`/run/x -> /etc`) stays inside the VM's view instead of leading the
//! keeper, which runs as root on the host, to the host's files. Sockets are bound and reached
//! through `/proc/self/fd/<dir>/<name>`, which also keeps `sun_path` short whatever the depth
//! of the VM's path. TCP sockets are made in the VM's network namespace: the calling thread
//! joins it for the one call and comes back; a socket stays in the namespace it was made in.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Component, Path, PathBuf};

use feather_sys::creds::{run_as, Identity};
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::socket::{
    bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};
use nix::sys::stat::{fstat, mkdirat, umask, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// Who holds a socket or port: the host itself, or a running VM by its init's host pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    Host,
    Vm(i32),
}

/// Why a socket of a VM could not be bound or reached.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("{} has a '..' in it", .0.display())]
    ParentDir(PathBuf),
    #[error("{} names no socket", .0.display())]
    NoName(PathBuf),
    #[error("/{} is a symlink to a folder the VM does not have", .0.display())]
    DanglingFolder(PathBuf),
    #[error(
        "{} exists in the VM and is not a socket (move it away or choose another at=)",
        .0.display()
    )]
    NotASocket(PathBuf),
    #[error(
        "{} is the socket of a service running in the VM (stop it or choose another at=)",
        .0.display()
    )]
    InUse(PathBuf),
    #[error("socket name {0:?} is too long for a unix socket")]
    NameTooLong(OsString),
    #[error("the binding thread panicked")]
    BindingThread,
}

impl From<Errno> for EndpointError {
    fn from(errno: Errno) -> EndpointError {
        EndpointError::Io(errno.into())
    }
}

/// A unix socket the broker bound inside a VM. Dropping it removes the socket file, if it is
/// still the one bound (the VM may have replaced it).
pub struct UnixEndpoint {
    pub listener: UnixListener,
    dir: OwnedFd,
    name: OsString,
    inode: (u64, u64),
}

impl Drop for UnixEndpoint {
    fn drop(&mut self) {
        if let Ok(file) = open_beneath(&self.dir, &self.name) {
            if fstat(&file).is_ok_and(|st| (st.st_dev, st.st_ino) == self.inode) {
                let _ = unlinkat(&self.dir, self.name.as_os_str(), UnlinkatFlags::NoRemoveDir);
            }
        }
    }
}

/// The VM's root folder, as its init sees it.
fn vm_root(pid: i32) -> io::Result<File> {
    File::open(format!("/proc/{pid}/root"))
}

/// `path` without its leading `/`, refusing `..` (an ipc path names one place).
fn relative(path: &Path) -> Result<PathBuf, EndpointError> {
    let mut rel = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => rel.push(part),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(EndpointError::ParentDir(path.to_path_buf()))
            }
        }
    }
    Ok(rel)
}

/// Opens `path` (relative) under `root` as if `root` were `/`.
fn open_in_root(root: &impl AsFd, path: &Path, flags: OFlag) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    openat2(root.as_fd(), path, how)
}

/// Opens entry `name` of `dir` itself, not what it may point to.
fn open_beneath(dir: &impl AsFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    openat2(dir.as_fd(), name, how)
}

/// The folder `dir` (relative) under `root`, made with mode 0755 where missing.
fn open_dir_creating(root: &File, dir: &Path) -> Result<OwnedFd, EndpointError> {
    let mut current = open_in_root(root, Path::new(""), OFlag::O_DIRECTORY)?;
    let mut prefix = PathBuf::new();
    for part in dir.iter() {
        prefix.push(part);
        current = match open_in_root(root, &prefix, OFlag::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                match mkdirat(&current, part, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                open_in_root(root, &prefix, OFlag::O_DIRECTORY).map_err(|e| match e {
                    // It exists, and still does not open: a symlink to nowhere in the VM.
                    Errno::ENOENT => EndpointError::DanglingFolder(prefix.clone()),
                    e => e.into(),
                })?
            }
            Err(e) => return Err(e.into()),
        };
    }
    Ok(current)
}

/// The path through which `fd` (an `O_PATH` descriptor) is reached by path-taking calls.
fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Binds a unix socket at `at` in VM `pid`'s view, with `mode`, making missing folders. A
/// socket already there that nothing answers on is replaced; one that answers belongs to a
/// service of the VM and is left alone, as is anything that is not a socket.
pub fn bind_unix(pid: i32, at: &Path, mode: u32) -> Result<UnixEndpoint, EndpointError> {
    let rel = relative(at)?;
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Err(EndpointError::NoName(at.to_path_buf()));
    };
    let root = vm_root(pid)?;
    let dir = open_dir_creating(&root, parent)?;
    match open_beneath(&dir, name) {
        Ok(existing) => {
            let st = fstat(&existing)?;
            if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
                return Err(EndpointError::NotASocket(at.to_path_buf()));
            }
            if UnixStream::connect(fd_path(&existing)).is_ok() {
                return Err(EndpointError::InUse(at.to_path_buf()));
            }
            unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir)?;
        }
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let socket = bind_in(&dir, name, SockType::Stream, mode)?;
    listen(&socket, Backlog::MAXCONN)?;
    let listener = UnixListener::from(socket);
    // The socket file's identity, for removing it later only if it is still ours.
    let st = fstat(&open_beneath(&dir, name)?)?;
    listener.set_nonblocking(true)?;
    Ok(UnixEndpoint {
        listener,
        dir,
        name: name.to_owned(),
        inode: (st.st_dev, st.st_ino),
    })
}

/// A unix socket of `kind` bound at `name` in folder `dir` (a descriptor, reached as
/// `/proc/self/fd/<dir>/<name>`), born with file mode `mode`: the bind runs on a thread of its
/// own with its own umask (unshare(CLONE_FS) gives it a private copy), so the mode is never set
/// afterwards by name. A chmod by name after the bind could be steered by the VM, whose
/// processes may already run, onto whatever it put in the socket's place (a symlink to a host
/// file); here nothing is looked up after the bind.
pub fn bind_in(
    dir: &OwnedFd,
    name: &OsStr,
    kind: SockType,
    mode: u32,
) -> Result<OwnedFd, EndpointError> {
    let path = fd_path(dir).join(name);
    if path.as_os_str().as_bytes().len() >= 108 {
        return Err(EndpointError::NameTooLong(name.to_owned()));
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> io::Result<OwnedFd> {
                unshare(CloneFlags::CLONE_FS)?;
                umask(Mode::from_bits_truncate(!mode & 0o777));
                let socket = socket(
                    AddressFamily::Unix,
                    kind,
                    SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                    None,
                )?;
                bind(socket.as_raw_fd(), &UnixAddr::new(&path)?)?;
                Ok(socket)
            })
            .join()
            .map_err(|_| EndpointError::BindingThread)?
            .map_err(EndpointError::Io)
    })
}

/// Connects to the unix socket at `path` of `holder` as `who` (the client of the channel): the
/// connecting thread takes the client's uid, gid and groups, so the server sees them
/// (SO_PEERCRED, postgres' `peer` authentication) and the socket file's mode applies to the
/// client, not to the keeper's root. A VM's socket is found as root, in the VM's view, and
/// reached through its descriptor; the host's by its path, as the client.
pub fn connect_unix(
    holder: Holder,
    path: &Path,
    who: &Identity,
) -> Result<UnixStream, EndpointError> {
    match holder {
        Holder::Host => Ok(run_as(who, || UnixStream::connect(path))?),
        Holder::Vm(pid) => {
            let socket = open_in_root(&vm_root(pid)?, &relative(path)?, OFlag::empty())?;
            Ok(run_as(who, || UnixStream::connect(fd_path(&socket)))?)
        }
    }
}

/// An `O_PATH` descriptor of the socket at `path` in VM `pid`'s view (or the host's): for
/// helpers that connect by path themselves (`/proc/<keeper>/fd/<n>`).
pub fn open_socket_file(holder: Holder, path: &Path) -> Result<OwnedFd, EndpointError> {
    match holder {
        Holder::Host => Ok(open_in_root(
            &File::open("/")?,
            &relative(path)?,
            OFlag::empty(),
        )?),
        Holder::Vm(pid) => Ok(open_in_root(
            &vm_root(pid)?,
            &relative(path)?,
            OFlag::empty(),
        )?),
    }
}

/// Runs `f` with the calling thread in the network namespace of `holder`, then brings the
/// thread back. Sockets made by `f` stay in that namespace.
pub fn in_network_of<T>(holder: Holder, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let Holder::Vm(pid) = holder else {
        return f();
    };
    let own = File::open("/proc/thread-self/ns/net")?;
    let theirs = File::open(format!("/proc/{pid}/ns/net"))?;
    setns(&theirs, CloneFlags::CLONE_NEWNET)?;
    let result = f();
    // Coming back cannot fail for root with a descriptor of the namespace it left; if it did,
    // the thread would go on in the VM's network, which must not happen.
    setns(&own, CloneFlags::CLONE_NEWNET).expect("a thread returns to its own network namespace");
    result
}

/// Whether VM `pid` is in the keeper's own network namespace (`--net host`).
pub fn shares_host_network(pid: i32) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let own = std::fs::metadata("/proc/self/ns/net")?;
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net"))?;
    Ok((own.dev(), own.ino()) == (theirs.dev(), theirs.ino()))
}

/// A TCP listener on 127.0.0.1:`port` of `holder`'s loopback.
pub fn listen_tcp(holder: Holder, port: u16) -> io::Result<TcpListener> {
    let listener = in_network_of(holder, || {
        TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
    })?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Connects to 127.0.0.1:`port` of `holder`.
pub fn connect_tcp(holder: Holder, port: u16) -> io::Result<TcpStream> {
    let stream = in_network_of(holder, || {
        TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
    })?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process stands in for a VM: its root is the host's, and the paths are a folder of
    /// the test's own.
    #[test]
    fn sockets_are_bound_with_their_folders_and_only_stale_ones_replaced() {
        struct Scratch(PathBuf);
        impl Drop for Scratch {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let pid = std::process::id() as i32;
        let scratch = Scratch(std::env::temp_dir().join(format!("feather-endpoint-{pid}")));
        let dir = &scratch.0;
        let _ = std::fs::remove_dir_all(dir);
        let at = dir.join("made/on/demand.sock");
        let endpoint = bind_unix(pid, &at, 0o666).unwrap();
        let mode = std::fs::metadata(&at).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o666
        );
        assert!(
            connect_unix(Holder::Vm(pid), &at, &root_user()).is_ok(),
            "it takes connections"
        );
        let refused = bind_unix(pid, &at, 0o666).err().unwrap();
        assert!(matches!(refused, EndpointError::InUse(_)), "{refused}");
        drop(endpoint);
        assert!(!at.exists(), "dropping the endpoint removes its socket");

        // A socket nobody answers on is stale and replaced; a file is not a socket.
        drop(UnixListener::bind(&at).unwrap());
        let replaced = bind_unix(pid, &at, 0o600).unwrap();
        assert!(connect_unix(Holder::Vm(pid), &at, &root_user()).is_ok());
        // Removed and made anew by someone else: dropping ours leaves theirs alone.
        std::fs::remove_file(&at).unwrap();
        std::fs::write(&at, "not a socket").unwrap();
        drop(replaced);
        assert_eq!(std::fs::read_to_string(&at).unwrap(), "not a socket");
        let refused = bind_unix(pid, &at, 0o666).err().unwrap();
        assert!(matches!(refused, EndpointError::NotASocket(_)), "{refused}");
        assert!(refused.to_string().contains("is not a socket"), "{refused}");
    }

    fn root_user() -> Identity {
        Identity {
            uid: nix::unistd::Uid::from_raw(0),
            gid: nix::unistd::Gid::from_raw(0),
            groups: Vec::new(),
        }
    }

    /// The server sees the client's uid and gid, and the socket file's mode is checked
    /// against them.
    #[test]
    fn connections_carry_the_clients_identity() {
        use std::os::unix::fs::PermissionsExt;
        let pid = std::process::id() as i32;
        let scratch = feather_testkit::ScratchDir::new("endpoint-who");
        let dir = scratch.0.clone();
        std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o755)).unwrap();
        let at = dir.join("s.sock");
        let listener = UnixListener::bind(&at).unwrap();
        let who = Identity {
            uid: nix::unistd::Uid::from_raw(1234),
            gid: nix::unistd::Gid::from_raw(2345),
            groups: Vec::new(),
        };
        std::fs::set_permissions(&at, PermissionsExt::from_mode(0o700)).unwrap();
        let refused = connect_unix(Holder::Vm(pid), &at, &who).err();
        std::fs::set_permissions(&at, PermissionsExt::from_mode(0o777)).unwrap();
        let _client = connect_unix(Holder::Vm(pid), &at, &who).unwrap();
        let (server, _) = listener.accept().unwrap();
        let cred =
            nix::sys::socket::getsockopt(&server, nix::sys::socket::sockopt::PeerCredentials)
                .unwrap();
        assert_eq!(
            refused.and_then(|e| match e {
                EndpointError::Io(e) => Some(e.kind()),
                _ => None,
            }),
            Some(io::ErrorKind::PermissionDenied)
        );
        assert_eq!((cred.uid(), cred.gid()), (1234, 2345));
    }

    #[test]
    fn relative_paths_refuse_parent_components() {
        assert_eq!(
            relative(Path::new("/run/postgresql/.s.PGSQL.5432")).unwrap(),
            Path::new("run/postgresql/.s.PGSQL.5432")
        );
        assert!(relative(Path::new("/run/../etc/shadow")).is_err());
    }
}
