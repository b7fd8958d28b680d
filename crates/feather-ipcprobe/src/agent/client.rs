//! The client: tries every channel of a plan from its place and says what it found.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::Signal;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::unistd::Pid;

use super::shared::*;
use crate::matrix::{Kind, Outcome};
use crate::raw;

use super::kernel::kernel_operations;
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

pub(super) fn fifo(path: &str) -> Outcome {
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

pub(super) fn tcp(addr: SocketAddr, token: &str) -> Outcome {
    match TcpStream::connect_timeout(&addr, ANSWER_WAIT) {
        Ok(s) => {
            let _ = s.set_read_timeout(Some(ANSWER_WAIT));
            check_answer(s, token, &addr.to_string())
        }
        Err(e) => Outcome::from_errno(&format!("connect {addr}"), io_errno(&e)),
    }
}

pub(super) fn udp(addr: SocketAddr, token: &str) -> Outcome {
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

pub(super) fn flock(path: &str) -> Outcome {
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

pub(super) fn key(p: &Published, keyring: i32) -> Outcome {
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
/// `--token TOKEN` among its arguments (not merely the token somewhere in its command line:
/// this client's own holds it in its plan). The pid is the listener's word; the token is the
/// probe's own (run.rs refuses a listener that reports another).
fn same_process(p: &Published) -> Result<(), Outcome> {
    let pid = p.pid;
    match start_ticks(pid) {
        None => Err(Outcome::new(
            Kind::Invisible,
            format!("no process {pid} here"),
        )),
        Some(ticks) => {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let has_token = args
                .windows(2)
                .any(|pair| pair[0] == b"--token" && pair[1] == p.token.as_bytes());
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

pub(super) fn signal(p: &Published) -> Result<Outcome, Outcome> {
    Ok(
        match nix::sys::signal::kill(Pid::from_raw(p.pid), Signal::SIGUSR1) {
            Ok(()) => reached(format!("SIGUSR1 delivered to {}", p.pid)),
            Err(e) => Outcome::from_errno("kill", e),
        },
    )
}

pub(super) fn ptrace(p: &Published) -> Result<Outcome, Outcome> {
    Ok(
        match nix::sys::ptrace::seize(Pid::from_raw(p.pid), nix::sys::ptrace::Options::empty()) {
            Ok(()) => reached(format!("PTRACE_SEIZE of {} succeeded", p.pid)),
            Err(e) => Outcome::from_errno("ptrace(PTRACE_SEIZE)", e),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

    /// A process whose command line is `sh -c 'read line' stand ARGS…` (waiting on a pipe, with
    /// no child of its own), ended on drop.
    struct Stand(Child);

    impl Stand {
        fn with(args: &[&str]) -> Stand {
            let child = Command::new("/bin/sh")
                .args(["-c", "read line", "stand"])
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // Until the exec, the child's command line is still this test's.
            let cmdline = format!("/proc/{}/cmdline", child.id());
            let deadline = Instant::now() + std::time::Duration::from_secs(5);
            while !fs::read(&cmdline).is_ok_and(|c| c.starts_with(b"/bin/sh\0"))
                && Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Stand(child)
        }

        fn as_listener(&self, token: &str) -> Published {
            let pid = self.0.id() as i32;
            Published {
                token: token.to_owned(),
                pid,
                start_ticks: start_ticks(pid).unwrap(),
                ..Published::default()
            }
        }
    }

    impl Drop for Stand {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The client's own command line holds the token in its plan: a pid counts as the
    /// listener's only with `--token TOKEN` among its arguments.
    #[test]
    fn a_pid_is_the_listeners_only_with_its_token_argument() {
        let token = format!("fpunit{}", std::process::id());
        let listener = Stand::with(&["--token", &token]);
        assert!(same_process(&listener.as_listener(&token)).is_ok());
        let plan = format!("{{\"main\":{{\"token\":\"{token}\"}}}}");
        let client = Stand::with(&["attempt", &plan]);
        assert!(same_process(&client.as_listener(&token)).is_err());
        let mut stale = listener.as_listener(&token);
        stale.start_ticks += 1;
        assert!(same_process(&stale).is_err());
    }
}
