//! The two halves of every cell: the listener, which makes one endpoint of every channel in
//! its place and answers on them, and the client, which tries each from another place.
//!
//! The listener prints one JSON line describing its endpoints ([`Published`]), serves until
//! its stdin closes (or [`LISTENER_LIFETIME`] passes), removes everything it made, and prints
//! a second line with what it heard ([`Heard`]). The client prints one JSON line of
//! [`Attempt`]s. Both are the `feather __ipcprobe` subcommand, so that they run inside VMs
//! exactly as any other program there does.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockProtocol, SockType, UnixAddr};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::matrix::{Kind, Outcome};
use crate::raw;

/// A listener never outlives this, whatever happens to the process that started it.
pub const LISTENER_LIFETIME: Duration = Duration::from_secs(120);

/// How long a client waits for an answer or an event before calling the cell silent.
const ANSWER_WAIT: Duration = Duration::from_secs(3);

/// Folders where the listener binds pathname sockets: /run, /tmp, /var/run and a home.
pub const SOCKET_DIRS: [(&str, &str); 4] = [
    ("/run", ""),
    ("/tmp", ""),
    ("/var/run", "-v"),
    ("/root", ""),
];

pub const UNIX_KINDS: [&str; 3] = ["stream", "dgram", "seqpacket"];

/// What a listener made, for the clients.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Published {
    pub token: String,
    /// The listener's pid as its own pid namespace names it.
    pub pid: i32,
    pub start_ticks: u64,
    /// Address of a buffer in the listener holding the token (process_vm_readv, /proc/pid/mem).
    pub buffer_addr: u64,
    pub sysv_key: i32,
    pub mq_name: String,
    pub shm_path: String,
    pub tcp_port: u16,
    pub udp_port: u16,
    /// The first address of the listener's side other than loopback, with a TCP port.
    pub host_addr: Option<(Ipv4Addr, u16)>,
    /// The same address with a UDP port.
    pub host_udp: Option<(Ipv4Addr, u16)>,
    pub abstract_name: String,
    pub x11_abstract: Option<String>,
    pub x11_path: Option<String>,
    pub fifo: String,
    /// A file holding the token; the listener holds flock, POSIX (byte 0) and OFD (byte 1)
    /// locks on it.
    pub file: String,
    /// A file the listener watches with inotify.
    pub watched: String,
    /// A file the listener rewrites every 100 ms.
    pub churned: String,
    pub netns: u64,
    pub interfaces: Vec<String>,
    pub dbus_system: bool,
    /// The session bus address of the listener's environment, if any.
    pub dbus_session: Option<String>,
    /// Endpoints the listener could not make, with why.
    pub missing: Vec<String>,
}

impl Published {
    pub fn socket_path(&self, dir: &str, suffix: &str, kind: &str) -> String {
        format!("{dir}/{}{suffix}.{kind}", self.token)
    }
}

/// What a listener noticed while it served.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Heard {
    pub events: BTreeSet<String>,
}

/// One client attempt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Attempt {
    pub channel: String,
    pub outcome: Outcome,
}

/// What a client is asked to try.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientPlan {
    pub main: Published,
    /// A listener started on the host before the VM: its files are in the VM's lower layer.
    pub lower: Option<Published>,
    /// Also try the machine-wide kernel operations (mount, modules, clock, …).
    pub kernel: bool,
}

/// The System V key of a listener's objects.
pub fn sysv_key(token: &str) -> i32 {
    let hash = token
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    // "FP" in the high half marks the probe's keys, so leftovers can be recognised.
    (0x4650_0000u32 | (hash & 0xffff)) as i32
}

fn netns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0)
}

fn interfaces() -> Vec<String> {
    let mut names: Vec<String> = nix::ifaddrs::getifaddrs()
        .map(|addrs| addrs.map(|a| a.interface_name).collect())
        .unwrap_or_default();
    names.sort();
    names.dedup();
    names
}

fn first_outside_address() -> Option<Ipv4Addr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        let ip = a.address?.as_sockaddr_in()?.ip();
        (!ip.is_loopback()).then_some(ip)
    })
}

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

/// A display number for the X11 rows that no real X server is likely to use.
const X11_DISPLAY: &str = "X0";

fn open_endpoints(token: &str, x11: bool) -> Endpoints {
    let mut missing = Vec::new();
    let mut note = |what: &str, e: &dyn std::fmt::Display| missing.push(format!("{what}: {e}"));
    let mut token_buffer = Box::new([0u8; 64]);
    token_buffer[..token.len().min(64)].copy_from_slice(&token.as_bytes()[..token.len().min(64)]);
    let mut published = Published {
        token: token.to_owned(),
        pid: std::process::id() as i32,
        start_ticks: start_ticks(std::process::id() as i32).unwrap_or(0),
        buffer_addr: token_buffer.as_ptr() as u64,
        sysv_key: sysv_key(token),
        mq_name: format!("/{token}"),
        shm_path: format!("/dev/shm/{token}"),
        abstract_name: format!("{token}-abstract"),
        fifo: format!("/tmp/{token}.fifo"),
        file: format!("/tmp/{token}.file"),
        watched: format!("/tmp/{token}.watched"),
        churned: format!("/tmp/{token}.churned"),
        netns: netns_inode(),
        interfaces: interfaces(),
        ..Default::default()
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
        abstract_names.push(format!("/tmp/.X11-unix/{X11_DISPLAY}"));
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
    let x11_path = format!("/tmp/.X11-unix/{X11_DISPLAY}");
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

fn write_lock(start: i64) -> libc::flock {
    libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: start,
        l_len: 1,
        l_pid: 0,
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

fn start_ticks(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
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
            let _ = fs::write("/sys/class/net/lo/uevent", "change");
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

/// The client: tries every channel of `plan` and returns one attempt per channel.
pub fn attempt(plan: &ClientPlan) -> Vec<Attempt> {
    let p = &plan.main;
    let lower = plan.lower.as_ref().unwrap_or(&plan.main);
    let mut out: Vec<Attempt> = Vec::new();
    let mut add = |channel: &str, outcome: Outcome| {
        out.push(Attempt {
            channel: channel.to_owned(),
            outcome,
        })
    };
    add("sysv-shm", sysv_shm(p));
    add("sysv-sem", sysv_sem(p));
    add("sysv-msg", sysv_msg(p));
    add("posix-mq", posix_mq(p));
    add("posix-shm", read_token(&p.shm_path, &p.token));
    for (dir, suffix) in SOCKET_DIRS {
        for kind in UNIX_KINDS {
            let path = p.socket_path(dir, suffix, kind);
            add(
                &format!("unix-{kind}:{dir}"),
                unix_path(kind, &path, &p.token),
            );
        }
    }
    for kind in UNIX_KINDS {
        let path = lower.socket_path("/tmp", "", kind);
        add(
            &format!("unix-{kind}:lower"),
            unix_path(kind, &path, &lower.token),
        );
    }
    add("unix-abstract", abstract_stream(&p.abstract_name, &p.token));
    add(
        "x11-abstract",
        match &p.x11_abstract {
            Some(name) => abstract_stream(name, &p.token),
            None => Outcome::new(
                Kind::NotApplicable,
                "the listener could not bind @/tmp/.X11-unix/X0",
            ),
        },
    );
    add(
        "x11-path",
        match &p.x11_path {
            Some(path) => unix_path("stream", path, &p.token),
            None => Outcome::new(
                Kind::NotApplicable,
                "the listener could not bind /tmp/.X11-unix/X0",
            ),
        },
    );
    add("fifo", fifo(&p.fifo));
    add(
        "tcp-loopback",
        tcp(
            SocketAddr::from((Ipv4Addr::LOCALHOST, p.tcp_port)),
            &p.token,
        ),
    );
    add(
        "udp-loopback",
        udp(
            SocketAddr::from((Ipv4Addr::LOCALHOST, p.udp_port)),
            &p.token,
        ),
    );
    add(
        "tcp-host-address",
        match p.host_addr {
            Some((ip, port)) => tcp(SocketAddr::from((ip, port)), &p.token),
            None => Outcome::new(
                Kind::NotApplicable,
                "the listener's side has no address but loopback",
            ),
        },
    );
    add(
        "udp-host-address",
        match p.host_udp {
            Some((ip, port)) => udp(SocketAddr::from((ip, port)), &p.token),
            None => Outcome::new(
                Kind::NotApplicable,
                "the listener's side has no address but loopback",
            ),
        },
    );
    add("file-read", read_token(&lower.file, &lower.token));
    add("file-write", write_file(&lower.file));
    add("flock", flock(&lower.file));
    add("posix-lock", fcntl_lock(&lower.file, false));
    add("ofd-lock", fcntl_lock(&lower.file, true));
    add(
        "inotify-listener-watches",
        read_token(&lower.watched, &lower.token),
    );
    add("inotify-client-watches", watch(&lower.churned));
    add("keyring-user", key(p, raw::KEY_SPEC_USER_KEYRING));
    add("keyring-session", key(p, raw::KEY_SPEC_SESSION_KEYRING));
    add("netlink-route", netlink_route(p));
    add(
        "proc-environ",
        same_process(p)
            .and_then(|()| proc_contains(p, "environ"))
            .unwrap_or_else(|o| o),
    );
    add(
        "proc-fd",
        same_process(p)
            .and_then(|()| proc_fd(p))
            .unwrap_or_else(|o| o),
    );
    add(
        "proc-mem",
        same_process(p)
            .and_then(|()| proc_mem(p))
            .unwrap_or_else(|o| o),
    );
    add(
        "process_vm_readv",
        same_process(p)
            .and_then(|()| vm_readv(p))
            .unwrap_or_else(|o| o),
    );
    add(
        "signal",
        same_process(p)
            .and_then(|()| signal(p))
            .unwrap_or_else(|o| o),
    );
    if plan.kernel {
        for (channel, outcome) in kernel_operations(p) {
            add(channel, outcome);
        }
    }
    // Last: a seized listener stays traced until this client exits.
    add(
        "ptrace",
        same_process(p)
            .and_then(|()| ptrace(p))
            .unwrap_or_else(|o| o),
    );
    out
}

fn reached(detail: impl Into<String>) -> Outcome {
    Outcome::new(Kind::Reached, detail)
}

fn sysv_shm(p: &Published) -> Outcome {
    let id = match raw::shmget(p.sysv_key, 0, false) {
        Ok(id) => id,
        Err(e) => return Outcome::from_errno(&format!("shmget key {:#x}", p.sysv_key), e),
    };
    match raw::shm_size(id).and_then(|size| {
        if size < p.token.len() {
            Err(Errno::EINVAL)
        } else {
            raw::shm_read(id, p.token.len())
        }
    }) {
        Ok(data) if data == p.token.as_bytes() => {
            reached(format!("segment {id} holds the listener's token"))
        }
        Ok(_) => Outcome::new(Kind::Refused, "a different segment under that key"),
        Err(e) => Outcome::from_errno("shmat", e),
    }
}

fn sysv_sem(p: &Published) -> Outcome {
    match raw::semget(p.sysv_key, false).and_then(raw::sem_get) {
        Ok(value) if value == p.sysv_key & 0x7fff => {
            reached("semaphore holds the listener's value")
        }
        Ok(_) => Outcome::new(Kind::Refused, "a different semaphore under that key"),
        Err(e) => Outcome::from_errno(&format!("semget key {:#x}", p.sysv_key), e),
    }
}

fn sysv_msg(p: &Published) -> Outcome {
    match raw::msgget(p.sysv_key, false).and_then(raw::msg_receive) {
        Ok(text) if text.starts_with(p.token.as_bytes()) => {
            reached("received the listener's message")
        }
        Ok(_) => Outcome::new(Kind::Refused, "a different queue under that key"),
        Err(e) => Outcome::from_errno(&format!("msgget/msgrcv key {:#x}", p.sysv_key), e),
    }
}

fn posix_mq(p: &Published) -> Outcome {
    let mq = match nix::mqueue::mq_open(
        p.mq_name.as_str(),
        nix::mqueue::MQ_OFlag::O_RDWR | nix::mqueue::MQ_OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::empty(),
        None,
    ) {
        Ok(mq) => mq,
        Err(e) => return Outcome::from_errno(&format!("mq_open {}", p.mq_name), e),
    };
    let mut buffer = vec![0u8; 64];
    let mut priority = 0;
    match nix::mqueue::mq_receive(&mq, &mut buffer, &mut priority) {
        Ok(n) if &buffer[..n] == p.token.as_bytes() => {
            let _ = nix::mqueue::mq_send(&mq, p.token.as_bytes(), 0);
            reached("received the listener's message")
        }
        Ok(_) => Outcome::new(Kind::Refused, "a different queue of that name"),
        Err(e) => Outcome::from_errno("mq_receive", e),
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    match e.kind() {
        // std's connect_timeout reports its own timeout without an errno: a dropped packet.
        std::io::ErrorKind::TimedOut if e.raw_os_error().is_none() => Errno::ETIMEDOUT,
        _ => Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

fn read_token(path: &str, token: &str) -> Outcome {
    match fs::read_to_string(path) {
        Ok(text) if text == token => reached(format!("read the listener's {path}")),
        Ok(_) => Outcome::new(Kind::Refused, format!("{path} exists with other content")),
        Err(e) => Outcome::from_errno(path, io_errno(&e)),
    }
}

/// Checks that a connection answers with the listener's token.
fn check_answer(mut stream: impl Read, token: &str, what: &str) -> Outcome {
    let mut buffer = [0u8; 64];
    match stream.read(&mut buffer) {
        Ok(n) if &buffer[..n] == token.as_bytes() => {
            reached(format!("{what}: the listener answered"))
        }
        Ok(_) => Outcome::new(
            Kind::Refused,
            format!("{what}: connected to something else"),
        ),
        Err(e) => Outcome::from_errno(&format!("{what}: read"), io_errno(&e)),
    }
}

fn unix_path(kind: &str, path: &str, token: &str) -> Outcome {
    match kind {
        "stream" => match UnixStream::connect(path) {
            Ok(s) => {
                let _ = s.set_read_timeout(Some(ANSWER_WAIT));
                check_answer(s, token, path)
            }
            Err(e) => Outcome::from_errno(&format!("connect {path}"), io_errno(&e)),
        },
        "dgram" => match UnixDatagram::unbound().and_then(|s| s.send_to(token.as_bytes(), path)) {
            Ok(_) => reached(format!("sendto {path}: delivered")),
            Err(e) => Outcome::from_errno(&format!("sendto {path}"), io_errno(&e)),
        },
        _ => {
            let connected = socket::socket(
                AddressFamily::Unix,
                SockType::SeqPacket,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .and_then(|fd| {
                socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
                Ok(fd)
            });
            match connected {
                Ok(fd) => {
                    let _ = socket::setsockopt(
                        &fd,
                        socket::sockopt::ReceiveTimeout,
                        &nix::sys::time::TimeVal::new(3, 0),
                    );
                    check_answer(fs::File::from(fd), token, path)
                }
                Err(e) => Outcome::from_errno(&format!("connect {path}"), e),
            }
        }
    }
}

fn abstract_stream(name: &str, token: &str) -> Outcome {
    let connected = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .and_then(|addr| UnixStream::connect_addr(&addr));
    match connected {
        Ok(s) => {
            let _ = s.set_read_timeout(Some(ANSWER_WAIT));
            check_answer(s, token, &format!("@{name}"))
        }
        Err(e) => Outcome::from_errno(&format!("connect @{name}"), io_errno(&e)),
    }
}

fn fifo(path: &str) -> Outcome {
    match fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(mut f) => match f.write_all(b"x") {
            Ok(()) => reached(format!("wrote into {path}: a reader is attached")),
            Err(e) => Outcome::from_errno(&format!("write {path}"), io_errno(&e)),
        },
        Err(e) => Outcome::from_errno(&format!("open {path} for writing"), io_errno(&e)),
    }
}

fn tcp(addr: SocketAddr, token: &str) -> Outcome {
    match TcpStream::connect_timeout(&addr, ANSWER_WAIT) {
        Ok(s) => {
            let _ = s.set_read_timeout(Some(ANSWER_WAIT));
            check_answer(s, token, &addr.to_string())
        }
        Err(e) => Outcome::from_errno(&format!("connect {addr}"), io_errno(&e)),
    }
}

fn udp(addr: SocketAddr, token: &str) -> Outcome {
    let socket = match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect(addr).map(|()| s))
    {
        Ok(s) => s,
        Err(e) => return Outcome::from_errno(&format!("udp {addr}"), io_errno(&e)),
    };
    let _ = socket.set_read_timeout(Some(ANSWER_WAIT));
    if let Err(e) = socket.send(token.as_bytes()) {
        return Outcome::from_errno(&format!("send {addr}"), io_errno(&e));
    }
    let mut buffer = [0u8; 64];
    match socket.recv(&mut buffer) {
        Ok(n) if &buffer[..n] == token.as_bytes() => {
            reached(format!("{addr}: the listener answered"))
        }
        Ok(_) => Outcome::new(Kind::Refused, format!("{addr}: something else answered")),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Outcome::new(Kind::Refused, format!("{addr}: no answer"))
        }
        Err(e) => Outcome::from_errno(&format!("recv {addr}"), io_errno(&e)),
    }
}

fn write_file(path: &str) -> Outcome {
    match fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(b" client"))
    {
        // Whether the listener saw the write is its own report ("file-changed").
        Ok(()) => reached(format!("appended to {path}")),
        Err(e) => Outcome::from_errno(&format!("append to {path}"), io_errno(&e)),
    }
}

fn flock(path: &str) -> Outcome {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return Outcome::from_errno(path, io_errno(&e)),
    };
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
        Err((_, Errno::EWOULDBLOCK)) => {
            reached(format!("{path}: the listener's flock is in force here"))
        }
        Ok(_) => Outcome::new(
            Kind::Invisible,
            format!("{path}: no lock seen (the lock state is separate)"),
        ),
        Err((_, e)) => Outcome::from_errno(&format!("flock {path}"), e),
    }
}

fn fcntl_lock(path: &str, ofd: bool) -> Outcome {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return Outcome::from_errno(path, io_errno(&e)),
    };
    let mut lock = write_lock(if ofd { 1 } else { 0 });
    lock.l_type = libc::F_RDLCK as i16;
    let result = if ofd {
        fcntl(&file, FcntlArg::F_OFD_GETLK(&mut lock))
    } else {
        fcntl(&file, FcntlArg::F_GETLK(&mut lock))
    };
    match result {
        Ok(_) if lock.l_type == libc::F_UNLCK as i16 => Outcome::new(
            Kind::Invisible,
            format!("{path}: no lock seen (the lock state is separate)"),
        ),
        Ok(_) => reached(format!("{path}: the listener's lock is in force here")),
        Err(e) => Outcome::from_errno(&format!("F_GETLK {path}"), e),
    }
}

fn watch(path: &str) -> Outcome {
    let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
        Ok(i) => i,
        Err(e) => return Outcome::from_errno("inotify_init", e),
    };
    if let Err(e) = inotify.add_watch(
        path,
        AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CLOSE_WRITE,
    ) {
        return Outcome::from_errno(&format!("inotify_add_watch {path}"), e);
    }
    let deadline = Instant::now() + ANSWER_WAIT;
    while Instant::now() < deadline {
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(100u16));
        if inotify.read_events().is_ok_and(|events| !events.is_empty()) {
            return reached(format!("{path}: the listener's writes raise events here"));
        }
    }
    Outcome::new(
        Kind::Invisible,
        format!(
            "{path}: no event in {} ms while the listener wrote every 100 ms",
            ANSWER_WAIT.as_millis()
        ),
    )
}

fn key(p: &Published, keyring: i32) -> Outcome {
    let which = if keyring == raw::KEY_SPEC_USER_KEYRING {
        "user"
    } else {
        "session"
    };
    match raw::search_user_key(&format!("fprobe:{}", p.token), keyring) {
        Ok(payload) if payload == p.token.as_bytes() => {
            reached(format!("found the listener's key in the {which} keyring"))
        }
        Ok(_) => Outcome::new(Kind::Refused, "a different key of that name"),
        Err(e) => Outcome::from_errno(&format!("keyctl search ({which} keyring)"), e),
    }
}

fn netlink_route(p: &Published) -> Outcome {
    let mine = interfaces();
    // The namespace is the identity: names alone say nothing, every private VM has an `eth0`
    // as the host may.
    if netns_inode() == p.netns {
        reached(format!(
            "RTM_GETLINK shows the listener's links: {}",
            mine.join(", ")
        ))
    } else {
        Outcome::new(
            Kind::Invisible,
            format!(
                "RTM_GETLINK shows only this side's links: {}",
                mine.join(", ")
            ),
        )
    }
}

/// Checks that `p.pid`, as this side names processes, is the listener: same start time, and
/// the token in its command line.
fn same_process(p: &Published) -> Result<(), Outcome> {
    let pid = p.pid;
    match start_ticks(pid) {
        None => Err(Outcome::new(
            Kind::Invisible,
            format!("no process {pid} here"),
        )),
        Some(ticks) => {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let has_token = String::from_utf8_lossy(&cmdline).contains(&p.token);
            if ticks == p.start_ticks && has_token {
                Ok(())
            } else {
                Err(Outcome::new(
                    Kind::Invisible,
                    format!("pid {pid} names another process here"),
                ))
            }
        }
    }
}

fn proc_contains(p: &Published, file: &str) -> Result<Outcome, Outcome> {
    let path = format!("/proc/{}/{file}", p.pid);
    match fs::read(&path) {
        Ok(data) if String::from_utf8_lossy(&data).contains(&p.token) => {
            Ok(reached(format!("read {path}")))
        }
        Ok(_) => Ok(Outcome::new(
            Kind::Refused,
            format!("{path} lacks the token"),
        )),
        Err(e) => Ok(Outcome::from_errno(&path, io_errno(&e))),
    }
}

fn proc_fd(p: &Published) -> Result<Outcome, Outcome> {
    let dir = format!("/proc/{}/fd", p.pid);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) => return Ok(Outcome::from_errno(&dir, io_errno(&e))),
    };
    let mut last_error = None;
    for entry in entries.flatten() {
        match fs::read_link(entry.path()) {
            Ok(target) if target.to_string_lossy().contains(&p.token) => {
                // Opening it is what would hand the listener's file over.
                return Ok(match fs::File::open(entry.path()) {
                    Ok(_) => reached(format!(
                        "opened {} → {}",
                        entry.path().display(),
                        target.display()
                    )),
                    Err(e) => Outcome::from_errno(
                        &format!("open {}", entry.path().display()),
                        io_errno(&e),
                    ),
                });
            }
            Ok(_) => {}
            Err(e) => last_error = Some(e),
        }
    }
    Ok(match last_error {
        Some(e) => Outcome::from_errno(&format!("readlink in {dir}"), io_errno(&e)),
        None => Outcome::new(
            Kind::Refused,
            format!("{dir} shows no descriptor of the listener's files"),
        ),
    })
}

fn proc_mem(p: &Published) -> Result<Outcome, Outcome> {
    use std::os::unix::fs::FileExt;
    let path = format!("/proc/{}/mem", p.pid);
    let mut buffer = vec![0u8; p.token.len()];
    Ok(
        match fs::File::open(&path).and_then(|f| f.read_exact_at(&mut buffer, p.buffer_addr)) {
            Ok(()) if buffer == p.token.as_bytes() => {
                reached(format!("read the listener's memory through {path}"))
            }
            Ok(()) => Outcome::new(Kind::Refused, format!("{path}: other bytes at the address")),
            Err(e) => Outcome::from_errno(&path, io_errno(&e)),
        },
    )
}

fn vm_readv(p: &Published) -> Result<Outcome, Outcome> {
    let mut buffer = vec![0u8; p.token.len()];
    let remote = [nix::sys::uio::RemoteIoVec {
        base: p.buffer_addr as usize,
        len: buffer.len(),
    }];
    let result = nix::sys::uio::process_vm_readv(
        Pid::from_raw(p.pid),
        &mut [std::io::IoSliceMut::new(&mut buffer)],
        &remote,
    );
    Ok(match result {
        Ok(_) if buffer == p.token.as_bytes() => reached("read the listener's memory"),
        Ok(_) => Outcome::new(Kind::Refused, "other bytes at the address"),
        Err(e) => Outcome::from_errno("process_vm_readv", e),
    })
}

fn signal(p: &Published) -> Result<Outcome, Outcome> {
    Ok(
        match nix::sys::signal::kill(Pid::from_raw(p.pid), Signal::SIGUSR1) {
            Ok(()) => reached(format!("SIGUSR1 delivered to {}", p.pid)),
            Err(e) => Outcome::from_errno("kill", e),
        },
    )
}

fn ptrace(p: &Published) -> Result<Outcome, Outcome> {
    Ok(
        match nix::sys::ptrace::seize(Pid::from_raw(p.pid), nix::sys::ptrace::Options::empty()) {
            Ok(()) => reached(format!("PTRACE_SEIZE of {} succeeded", p.pid)),
            Err(e) => Outcome::from_errno("ptrace(PTRACE_SEIZE)", e),
        },
    )
}

// The ioctl request constants are c_ulong with glibc but c_int with musl: keep the casts.
#[allow(clippy::unnecessary_cast)]
/// The machine-wide operations a VM must not perform. Each is harmless if it succeeded: it
/// writes back the value already there, or asks for nothing.
fn kernel_operations(p: &Published) -> Vec<(&'static str, Outcome)> {
    let mut out = Vec::new();
    let errno = |what: &str, r: nix::Result<()>| match r {
        Ok(()) => reached(format!("{what} succeeded")),
        Err(e) => Outcome::from_errno(what, e),
    };
    out.push(("dbus-system", dbus(p)));
    out.push(("dbus-session", dbus_session(p)));
    out.push(("netlink-uevent", uevents()));
    let stdin_is_tty = nix::unistd::isatty(std::io::stdin()).unwrap_or(false);
    for (channel, request) in [
        ("tiocsti", libc::TIOCSTI as u64),
        ("tioclinux", libc::TIOCLINUX as u64),
    ] {
        out.push((
            channel,
            if stdin_is_tty {
                // TIOCSTI pushes one harmless byte (NUL); TIOCLINUX asks for the shift state (6).
                let byte = if channel == "tiocsti" { 0 } else { 6 };
                match raw::tty_ioctl(0, request, byte) {
                    Ok(()) => reached(format!("{channel} on the host terminal succeeded")),
                    Err(Errno::ENOTTY | Errno::EINVAL) => {
                        Outcome::new(Kind::Refused, format!("{channel}: not a virtual console"))
                    }
                    Err(e) => Outcome::from_errno(channel, e),
                }
            } else {
                Outcome::new(Kind::NotApplicable, "stdin is not a terminal")
            },
        ));
    }
    let hostname = nix::unistd::gethostname().unwrap_or_default();
    out.push((
        "hostname-write",
        errno("sethostname", nix::unistd::sethostname(&hostname)),
    ));
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME);
    out.push((
        "clock-write",
        match now {
            Ok(now) => errno(
                "clock_settime",
                nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, now),
            ),
            Err(e) => Outcome::from_errno("clock_gettime", e),
        },
    ));
    out.push(("sysctl-write", write_back("/proc/sys/vm/swappiness")));
    out.push((
        "sysfs-write",
        write_back("/sys/kernel/mm/transparent_hugepage/defrag"),
    ));
    out.push((
        "cgroupfs-write",
        match fs::create_dir("/sys/fs/cgroup/fprobe") {
            Ok(()) => {
                let _ = fs::remove_dir("/sys/fs/cgroup/fprobe");
                reached("made a cgroup")
            }
            Err(e) => Outcome::from_errno("mkdir /sys/fs/cgroup/fprobe", io_errno(&e)),
        },
    ));
    out.push((
        "mount",
        errno(
            "mount tmpfs on /mnt",
            nix::mount::mount(
                Some("fprobe"),
                "/mnt",
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            ),
        ),
    ));
    let _ = nix::mount::umount2("/mnt", nix::mount::MntFlags::MNT_DETACH);
    out.push((
        "module-load",
        match fs::File::open("/dev/null") {
            Ok(null) => errno(
                "finit_module",
                nix::kmod::finit_module(&null, c"", nix::kmod::ModuleInitFlags::empty()),
            ),
            Err(e) => Outcome::from_errno("/dev/null", io_errno(&e)),
        },
    ));
    out.push((
        "module-unload",
        errno(
            "delete_module",
            nix::kmod::delete_module(
                c"fprobe_no_such_module",
                nix::kmod::DeleteModuleFlags::O_NONBLOCK,
            ),
        ),
    ));
    out.push(("kexec", errno("kexec_load", raw::kexec_load_nothing())));
    out.push((
        "bpf",
        errno("bpf(BPF_MAP_CREATE)", raw::bpf_map_create().map(drop)),
    ));
    out.push((
        "perf_event_open",
        errno("perf_event_open", raw::perf_event_open_self().map(drop)),
    ));
    out.push((
        "userfaultfd",
        errno("userfaultfd", raw::userfaultfd().map(drop)),
    ));
    out.push(("fanotify-filesystem", fanotify_filesystem()));
    out.push(("netlink-audit", netlink_audit()));
    out
}

/// A filesystem-wide fanotify mark: it would report every open and change on the filesystem.
/// Unprivileged fanotify (FAN_REPORT_FID) exists, but not for whole filesystems.
fn fanotify_filesystem() -> Outcome {
    use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};
    let flags = InitFlags::FAN_CLASS_NOTIF | InitFlags::from_bits_retain(libc::FAN_REPORT_FID);
    let group = match Fanotify::init(flags, EventFFlags::O_RDONLY) {
        Ok(group) => group,
        Err(e) => return Outcome::from_errno("fanotify_init", e),
    };
    match group.mark(
        MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM,
        MaskFlags::FAN_MODIFY,
        nix::fcntl::AT_FDCWD,
        Some("/tmp"),
    ) {
        Ok(()) => reached("a filesystem-wide mark on /tmp"),
        Err(e) => Outcome::from_errno("fanotify_mark(FAN_MARK_FILESYSTEM)", e),
    }
}

/// Asks the kernel's audit subsystem for its status (AUDIT_GET) over NETLINK_AUDIT.
fn netlink_audit() -> Outcome {
    let fd = match socket::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkAudit,
    ) {
        Ok(fd) => fd,
        Err(e) => return Outcome::from_errno("socket(NETLINK_AUDIT)", e),
    };
    let _ = socket::setsockopt(
        &fd,
        socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(1, 0),
    );
    // struct nlmsghdr: length 16, type AUDIT_GET (1000), flags NLM_F_REQUEST|NLM_F_ACK.
    let mut request = Vec::with_capacity(16);
    request.extend_from_slice(&16u32.to_ne_bytes());
    request.extend_from_slice(&1000u16.to_ne_bytes());
    request.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    if let Err(e) = socket::sendto(
        fd.as_raw_fd(),
        &request,
        &socket::NetlinkAddr::new(0, 0),
        socket::MsgFlags::empty(),
    ) {
        return Outcome::from_errno("send AUDIT_GET", e);
    }
    let mut buffer = [0u8; 1024];
    match nix::unistd::read(&fd, &mut buffer) {
        Ok(n) if n >= 20 => {
            let kind = u16::from_ne_bytes([buffer[4], buffer[5]]);
            let error = i32::from_ne_bytes([buffer[16], buffer[17], buffer[18], buffer[19]]);
            if kind == libc::NLMSG_ERROR as u16 && error < 0 {
                Outcome::from_errno("AUDIT_GET", Errno::from_raw(-error))
            } else {
                reached("the audit subsystem answered AUDIT_GET")
            }
        }
        Ok(_) => Outcome::new(Kind::Refused, "AUDIT_GET: short answer"),
        Err(e) => Outcome::from_errno("AUDIT_GET", e),
    }
}

/// The session bus named by the host's DBUS_SESSION_BUS_ADDRESS, if it had one.
fn dbus_session(p: &Published) -> Outcome {
    let Some(address) = &p.dbus_session else {
        return Outcome::new(
            Kind::NotApplicable,
            "no session bus (DBUS_SESSION_BUS_ADDRESS unset on the host)",
        );
    };
    let target = address.split(',').next().unwrap_or_default();
    let connected = if let Some(path) = target.strip_prefix("unix:path=") {
        UnixStream::connect(path)
    } else if let Some(name) = target.strip_prefix("unix:abstract=") {
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| UnixStream::connect_addr(&a))
    } else {
        return Outcome::new(
            Kind::NotApplicable,
            format!("session bus address {address} is not a unix socket"),
        );
    };
    match connected {
        Ok(_) => reached(format!("connected to the host's session bus {target}")),
        Err(e) => Outcome::from_errno(&format!("connect {target}"), io_errno(&e)),
    }
}

fn write_back(path: &str) -> Outcome {
    let current = match fs::read(path) {
        Ok(c) => c,
        Err(e) => return Outcome::from_errno(path, io_errno(&e)),
    };
    // The value is written back unchanged, so even a leak changes nothing.
    let value = current
        .split(|b| *b == b' ' || *b == b'\n')
        .find(|w| w.starts_with(b"["))
        .map(|w| w[1..w.len() - 1].to_vec())
        .unwrap_or(current);
    match fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(&value))
    {
        Ok(()) => reached(format!("wrote {path}")),
        Err(e) => Outcome::from_errno(&format!("write {path}"), io_errno(&e)),
    }
}

fn dbus(p: &Published) -> Outcome {
    let mut outcome = Outcome::new(Kind::Invisible, "");
    for path in [
        "/run/dbus/system_bus_socket",
        "/var/run/dbus/system_bus_socket",
    ] {
        outcome = match UnixStream::connect(path) {
            Ok(_) => return reached(format!("connected to {path}")),
            Err(e) => Outcome::from_errno(&format!("connect {path}"), io_errno(&e)),
        };
    }
    if !p.dbus_system {
        outcome = Outcome::new(
            Kind::NotApplicable,
            format!("no system bus runs on the host ({})", outcome.detail),
        );
    }
    outcome
}

fn uevents() -> Outcome {
    let fd = match socket::socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkKObjectUEvent,
    ) {
        Ok(fd) => fd,
        Err(e) => return Outcome::from_errno("socket(NETLINK_KOBJECT_UEVENT)", e),
    };
    if let Err(e) = socket::bind(fd.as_raw_fd(), &socket::NetlinkAddr::new(0, 1)) {
        return Outcome::from_errno("bind uevent group", e);
    }
    let deadline = Instant::now() + ANSWER_WAIT;
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(100u16));
        if let Ok(n) = nix::unistd::read(&fd, &mut buffer) {
            if n > 0 {
                let event = String::from_utf8_lossy(&buffer[..n.min(60)]).replace('\0', " ");
                return reached(format!("received a host uevent: {event}"));
            }
        }
    }
    Outcome::new(
        Kind::Invisible,
        format!(
            "no uevent in {} ms while the host raised one every 100 ms",
            ANSWER_WAIT.as_millis()
        ),
    )
}

/// `feather __ipcprobe listen --token T [--uevents] [--no-x11]` or `feather __ipcprobe attempt PLAN`.
pub fn main(args: &[String]) -> i32 {
    match args.first().map(String::as_str) {
        Some("listen") => {
            let token = args
                .iter()
                .position(|a| a == "--token")
                .and_then(|i| args.get(i + 1))
                .filter(|t| {
                    !t.is_empty() && t.len() < 40 && t.bytes().all(|b| b.is_ascii_alphanumeric())
                });
            match token {
                Some(token) => listen(
                    token,
                    args.iter().any(|a| a == "--uevents"),
                    !args.iter().any(|a| a == "--no-x11"),
                ),
                None => {
                    eprintln!("feather __ipcprobe listen: --token needs 1-39 letters or digits");
                    2
                }
            }
        }
        Some("attempt") => match args.get(1).map(|json| plan_from(json)) {
            Some(Ok(plan)) => {
                crate::run::print_line(&serde_json::to_string(&attempt(&plan)).unwrap_or_default());
                0
            }
            Some(Err(e)) => {
                eprintln!("feather __ipcprobe attempt: bad plan: {e}");
                2
            }
            None => {
                eprintln!("feather __ipcprobe attempt: missing plan");
                2
            }
        },
        Some("ping") => 0,
        Some("landlock-listen") => {
            landlock_listen(args.get(1).map(String::as_str).unwrap_or("fprobe-landlock"))
        }
        Some("landlock-try") => {
            let pid = args.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
            let name = args.get(2).map(String::as_str).unwrap_or("fprobe-landlock");
            landlock_try(pid, name, !args.iter().any(|a| a == "--unscoped"))
        }
        _ => {
            eprintln!(
                "feather __ipcprobe: expected `listen` or `attempt` (used by `feather check ipc`)"
            );
            2
        }
    }
}

/// For the Landlock test: enters a Landlock domain of its own (scoped abstract sockets and
/// signals), binds abstract socket @`name`, prints its pid, and serves until stdin closes.
fn landlock_listen(name: &str) -> i32 {
    if let Err(e) = feather_confine::landlock::scope_ipc() {
        eprintln!("{e}");
        return 1;
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
    crate::run::print_line(&std::process::id().to_string());
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
fn landlock_try(pid: i32, name: &str, scoped: bool) -> i32 {
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
    crate::run::print_line(&serde_json::to_string(&[signal, abstract_socket]).unwrap_or_default());
    0
}

/// The client's plan: the JSON argument, or with `-` one line of stdin (for a client that
/// must start before its listener exists: init's first program).
fn plan_from(argument: &str) -> serde_json::Result<ClientPlan> {
    if argument != "-" {
        return serde_json::from_str(argument);
    }
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    serde_json::from_str(&line)
}
