//! The listener: one endpoint of every channel, in its place, answering on them.

use std::fs;
use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::fcntl::{fcntl, FcntlArg};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

use super::shared::*;
use crate::raw;

/// Everything a listener holds, removed on drop.
struct Endpoints {
    published: Published,
    sysv: (Option<i32>, Option<i32>, Option<i32>),
    keys: Vec<i32>,
    paths: Vec<PathBuf>,
    made_x11_dir: bool,
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
    unix_streams: Vec<UnixListener>,
    unix_dgrams: Vec<UnixDatagram>,
    seqpackets: Vec<OwnedFd>,
    fifo: Option<fs::File>,
    _locks: Vec<Locked>,
    inotify: Option<Inotify>,
    token_buffer: Box<[u8; 64]>,
}

impl Drop for Endpoints {
    fn drop(&mut self) {
        let (shm, sem, msg) = self.sysv;
        if let Some(id) = shm {
            raw::shm_remove(id);
        }
        if let Some(id) = sem {
            raw::sem_remove(id);
        }
        if let Some(id) = msg {
            raw::msg_remove(id);
        }
        for key in &self.keys {
            raw::invalidate_key(*key);
        }
        let _ = nix::mqueue::mq_unlink(self.published.mq_name.as_str());
        for path in &self.paths {
            let _ = fs::remove_file(path);
        }
        if self.made_x11_dir {
            let _ = fs::remove_dir("/tmp/.X11-unix");
        }
    }
}

/// A lock held for the listener's life.
enum Locked {
    Flock(#[allow(dead_code)] nix::fcntl::Flock<fs::File>),
    File(#[allow(dead_code)] fs::File),
}

fn open_endpoints(token: &str, x11: bool) -> Endpoints {
    let mut missing = Vec::new();
    let mut note = |what: &str, e: &dyn std::fmt::Display| missing.push(format!("{what}: {e}"));
    let mut token_buffer = Box::new([0u8; 64]);
    token_buffer[..token.len().min(64)].copy_from_slice(&token.as_bytes()[..token.len().min(64)]);
    let mut published = Published {
        pid: std::process::id() as i32,
        start_ticks: start_ticks(std::process::id() as i32).unwrap_or(0),
        buffer_addr: token_buffer.as_ptr() as u64,
        netns: netns_inode(),
        interfaces: interfaces(),
        ..Published::named(token)
    };
    let mut paths: Vec<PathBuf> = Vec::new();

    // System V objects, each holding the token (or a number derived from it).
    let key = published.sysv_key;
    let shm = match raw::shmget(key, 4096, true)
        .and_then(|id| raw::shm_write(id, token.as_bytes()).map(|_| id))
    {
        Ok(id) => Some(id),
        Err(e) => {
            note("sysv-shm", &e);
            None
        }
    };
    let sem = match raw::semget(key, true).and_then(|id| raw::sem_set(id, key & 0x7fff).map(|_| id))
    {
        Ok(id) => Some(id),
        Err(e) => {
            note("sysv-sem", &e);
            None
        }
    };
    let msg = match raw::msgget(key, true)
        .and_then(|id| raw::msg_send(id, token.as_bytes()).map(|_| id))
    {
        Ok(id) => Some(id),
        Err(e) => {
            note("sysv-msg", &e);
            None
        }
    };
    // POSIX message queue with the token queued; POSIX shm as a file of /dev/shm.
    match nix::mqueue::mq_open(
        published.mq_name.as_str(),
        nix::mqueue::MQ_OFlag::O_CREAT
            | nix::mqueue::MQ_OFlag::O_RDWR
            | nix::mqueue::MQ_OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        Some(&nix::mqueue::MqAttr::new(0, 4, 64, 0)),
    ) {
        Ok(mq) => {
            if let Err(e) = nix::mqueue::mq_send(&mq, token.as_bytes(), 0) {
                note("posix-mq", &e);
            }
        }
        Err(e) => note("posix-mq", &e),
    }
    for (path, what) in [
        (&published.shm_path, "posix-shm"),
        (&published.file, "file"),
        (&published.watched, "watched file"),
        (&published.churned, "churned file"),
    ] {
        match fs::write(path, token) {
            Ok(()) => paths.push(path.into()),
            Err(e) => note(what, &e),
        }
    }
    // Locks on the shared file: flock, a POSIX lock on byte 0, an OFD lock on byte 1.
    let mut locks = Vec::new();
    if let Ok(file) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&published.file)
    {
        for (ofd, start) in [(false, 0), (true, 1)] {
            let lock = write_lock(start);
            let arg = if ofd {
                FcntlArg::F_OFD_SETLK(&lock)
            } else {
                FcntlArg::F_SETLK(&lock)
            };
            if let Err(e) = fcntl(&file, arg) {
                note("fcntl lock", &e);
            }
        }
        // flock locks belong to the open file; a second open of the same file holds it.
        match fs::File::open(&published.file)
            .map(|f| nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock))
        {
            Ok(Ok(held)) => locks.push(Locked::Flock(held)),
            Ok(Err((_, e))) => note("flock", &e),
            Err(e) => note("flock", &e),
        }
        locks.push(Locked::File(file));
    }
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok();
    if let Some(inotify) = &inotify {
        let flags = AddWatchFlags::IN_OPEN
            | AddWatchFlags::IN_ACCESS
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_ATTRIB;
        if let Err(e) = inotify.add_watch(published.watched.as_str(), flags) {
            note("inotify", &e);
        }
    }
    // Sockets: TCP and UDP on loopback and on an outside address, unix sockets everywhere.
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    match UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) {
        Ok(u) => {
            published.udp_port = u.local_addr().map(|a| a.port()).unwrap_or(0);
            udp.push(u);
        }
        Err(e) => note("udp", &e),
    }
    match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) {
        Ok(l) => {
            published.tcp_port = l.local_addr().map(|a| a.port()).unwrap_or(0);
            tcp.push(l);
        }
        Err(e) => note("tcp", &e),
    }
    if let Some(ip) = first_outside_address() {
        if let Ok(l) = TcpListener::bind((ip, 0)) {
            published.host_addr = Some((ip, l.local_addr().map(|a| a.port()).unwrap_or(0)));
            tcp.push(l);
        }
        if let Ok(u) = UdpSocket::bind((ip, 0)) {
            published.host_udp = Some((ip, u.local_addr().map(|a| a.port()).unwrap_or(0)));
            udp.push(u);
        }
    }
    let mut unix_streams = Vec::new();
    let mut unix_dgrams = Vec::new();
    let mut seqpackets = Vec::new();
    for (dir, suffix) in SOCKET_DIRS {
        let path = published.socket_path(dir, suffix, "stream");
        match UnixListener::bind(&path) {
            Ok(l) => {
                paths.push(path.into());
                unix_streams.push(l);
            }
            Err(e) => note(&path, &e),
        }
        let path = published.socket_path(dir, suffix, "dgram");
        match UnixDatagram::bind(&path) {
            Ok(s) => {
                paths.push(path.into());
                unix_dgrams.push(s);
            }
            Err(e) => note(&path, &e),
        }
        let path = published.socket_path(dir, suffix, "seqpacket");
        match seqpacket_listener(&path) {
            Ok(fd) => {
                paths.push(path.into());
                seqpackets.push(fd);
            }
            Err(e) => note(&path, &e),
        }
    }
    let mut abstract_names = vec![published.abstract_name.clone()];
    if x11 {
        abstract_names.push(X11_NAME.to_owned());
    }
    for name in abstract_names {
        match std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| UnixListener::bind_addr(&a))
        {
            Ok(l) => {
                if name.starts_with("/tmp") {
                    published.x11_abstract = Some(name);
                }
                unix_streams.push(l);
            }
            Err(e) => note(&format!("abstract @{name}"), &e),
        }
    }
    let mut made_x11_dir = false;
    if x11 && !Path::new("/tmp/.X11-unix").exists() {
        made_x11_dir = fs::create_dir("/tmp/.X11-unix").is_ok();
    }
    let x11_path = X11_NAME.to_owned();
    if !x11 {
    } else if !Path::new(&x11_path).exists() {
        match UnixListener::bind(&x11_path) {
            Ok(l) => {
                paths.push(x11_path.clone().into());
                published.x11_path = Some(x11_path);
                unix_streams.push(l);
            }
            Err(e) => note("x11 path", &e),
        }
    } else {
        note("x11 path", &"a display :0 socket already exists here");
    }
    // A FIFO with a reader waiting.
    let fifo = match nix::unistd::mkfifo(
        published.fifo.as_str(),
        nix::sys::stat::Mode::from_bits_truncate(0o666),
    ) {
        Ok(()) => {
            paths.push(published.fifo.clone().into());
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&published.fifo)
                .ok()
        }
        Err(e) => {
            note("fifo", &e);
            None
        }
    };
    // Keys in the user and the session keyring.
    let description = format!("fprobe:{token}");
    let mut keys = Vec::new();
    for keyring in [raw::KEY_SPEC_USER_KEYRING, raw::KEY_SPEC_SESSION_KEYRING] {
        match raw::add_user_key(&description, token.as_bytes(), keyring) {
            Ok(id) => keys.push(id),
            Err(e) => note("keyring", &e),
        }
    }
    published.dbus_system = UnixStream::connect("/run/dbus/system_bus_socket").is_ok();
    published.dbus_session = std::env::var("DBUS_SESSION_BUS_ADDRESS")
        .ok()
        .filter(|a| !a.is_empty());
    published.missing = missing;
    Endpoints {
        published,
        sysv: (shm, sem, msg),
        keys,
        paths,
        made_x11_dir,
        tcp,
        udp,
        unix_streams,
        unix_dgrams,
        seqpackets,
        fifo,
        _locks: locks,
        inotify,
        token_buffer,
    }
}

fn seqpacket_listener(path: &str) -> nix::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    socket::listen(&fd, socket::Backlog::new(8)?)?;
    Ok(fd)
}

/// The listener: makes every endpoint, prints [`Published`], serves until stdin closes, then
/// removes everything and prints [`Heard`]. `uevents`: also trigger a uevent every 100 ms (on
/// the host, for the netlink uevent cell). `x11`: also bind display :0 (one listener per
/// place may).
pub fn listen(token: &str, uevents: bool, x11: bool) -> i32 {
    // Lets a client of the same user ptrace us even under Yama's restricted mode, so that the
    // ptrace cells measure the VM boundary, not the host's ptrace policy.
    let _ = nix::sys::prctl::set_dumpable(true);
    raw::allow_any_ptracer();
    // SIGUSR1 is the signal cell; an interrupt or termination (Ctrl-C reaches the whole
    // process group) ends the listener through its cleanup instead of killing it mid-way.
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGUSR1,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
    ] {
        set.add(signal);
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
    let signals = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).ok();
    let endpoints = open_endpoints(token, x11);
    let mut heard = Heard::default();
    println!(
        "{}",
        serde_json::to_string(&endpoints.published).unwrap_or_default()
    );
    let _ = std::io::stdout().flush();
    std::hint::black_box(&endpoints.token_buffer);
    let deadline = Instant::now() + LISTENER_LIFETIME;
    let stdin = std::io::stdin();
    let mut churn = 0u64;
    while Instant::now() < deadline {
        let mut fds: Vec<PollFd> = vec![PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        let mut roles: Vec<Role> = vec![Role::Stdin];
        if let Some(s) = &signals {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            roles.push(Role::Signal);
        }
        for (i, l) in endpoints.tcp.iter().enumerate() {
            fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
            roles.push(Role::Tcp(i));
        }
        for (i, u) in endpoints.udp.iter().enumerate() {
            fds.push(PollFd::new(u.as_fd(), PollFlags::POLLIN));
            roles.push(Role::Udp(i));
        }
        for (i, l) in endpoints.unix_streams.iter().enumerate() {
            fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
            roles.push(Role::UnixStream(i));
        }
        for (i, s) in endpoints.unix_dgrams.iter().enumerate() {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            roles.push(Role::UnixDgram(i));
        }
        for (i, s) in endpoints.seqpackets.iter().enumerate() {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            roles.push(Role::SeqPacket(i));
        }
        if let Some(f) = &endpoints.fifo {
            fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
            roles.push(Role::Fifo);
        }
        if let Some(i) = &endpoints.inotify {
            fds.push(PollFd::new(i.as_fd(), PollFlags::POLLIN));
            roles.push(Role::Inotify);
        }
        let _ = poll(&mut fds, PollTimeout::from(100u16));
        let ready: Vec<Role> = fds
            .iter()
            .zip(&roles)
            .filter(|(fd, _)| fd.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, role)| *role)
            .collect();
        drop(fds);
        let mut stop = false;
        for role in ready {
            match role {
                Role::Stdin => {
                    let mut line = String::new();
                    if stdin.lock().read_line(&mut line).unwrap_or(0) == 0 {
                        stop = true;
                    }
                }
                Role::Signal => {
                    if let Some(Ok(Some(info))) = signals.as_ref().map(|s| s.read_signal()) {
                        if info.ssi_signo == Signal::SIGUSR1 as u32 {
                            heard.events.insert("signal".into());
                        } else {
                            stop = true;
                        }
                    }
                }
                Role::Tcp(i) => {
                    if let Ok((mut s, _)) = endpoints.tcp[i].accept() {
                        let _ = s.write_all(token.as_bytes());
                    }
                }
                Role::Udp(i) => {
                    let mut buffer = [0u8; 64];
                    if let Ok((_, from)) = endpoints.udp[i].recv_from(&mut buffer) {
                        let _ = endpoints.udp[i].send_to(token.as_bytes(), from);
                    }
                }
                Role::UnixStream(i) => {
                    if let Ok((mut s, _)) = endpoints.unix_streams[i].accept() {
                        let _ = s.write_all(token.as_bytes());
                    }
                }
                Role::UnixDgram(i) => {
                    let mut buffer = [0u8; 64];
                    if endpoints.unix_dgrams[i].recv(&mut buffer).is_ok() {
                        heard.events.insert("dgram".into());
                    }
                }
                Role::SeqPacket(i) => {
                    if let Ok(fd) = socket::accept(endpoints.seqpackets[i].as_raw_fd()) {
                        let connection = raw::own_fd(fd);
                        let _ = nix::unistd::write(&connection, token.as_bytes());
                    }
                }
                Role::Fifo => {
                    let mut buffer = [0u8; 64];
                    if let Some(mut f) = endpoints.fifo.as_ref() {
                        if f.read(&mut buffer).unwrap_or(0) > 0 {
                            heard.events.insert("fifo".into());
                        }
                    }
                }
                Role::Inotify => {
                    if let Some(events) = endpoints
                        .inotify
                        .as_ref()
                        .and_then(|i| i.read_events().ok())
                    {
                        for event in events {
                            heard.events.insert(format!("inotify:{:?}", event.mask));
                        }
                    }
                }
            }
        }
        if stop {
            break;
        }
        churn += 1;
        let _ = fs::write(&endpoints.published.churned, format!("{token} {churn}"));
        if uevents {
            // A uevent of a network device goes to its own network namespace only; one of a
            // device of no namespace (here /dev/null's) goes to every namespace, and is what
            // a VM could watch.
            let _ = fs::write("/sys/class/net/lo/uevent", "change");
            let _ = fs::write("/sys/devices/virtual/mem/null/uevent", "change");
        }
    }
    if fs::read_to_string(&endpoints.published.file)
        .ok()
        .as_deref()
        != Some(token)
    {
        heard.events.insert("file-changed".into());
    }
    drop(endpoints);
    println!("{}", serde_json::to_string(&heard).unwrap_or_default());
    0
}

#[derive(Clone, Copy)]
enum Role {
    Stdin,
    Signal,
    Tcp(usize),
    Udp(usize),
    UnixStream(usize),
    UnixDgram(usize),
    SeqPacket(usize),
    Fifo,
    Inotify,
}
