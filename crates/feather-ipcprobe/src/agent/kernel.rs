//! Machine-wide kernel state a VM must neither change nor observe: sysctls, clocks, audit,
//! fanotify, uevents.

use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockProtocol, SockType};

use super::bus::{dbus, dbus_session};
use super::shared::*;
use crate::matrix::{Kind, Outcome};
use crate::raw;

/// The machine-wide operations a VM must not perform. Each is harmless if it succeeded: it
/// writes back the value already there, or asks for nothing.
pub(super) fn kernel_operations(p: &Published) -> Vec<(&'static str, Outcome)> {
    let mut out = Vec::new();
    let errno = |what: &str, r: nix::Result<()>| match r {
        Ok(()) => reached(format!("{what} succeeded")),
        Err(e) => Outcome::from_errno(what, e),
    };
    out.push(("dbus-system", dbus(p)));
    out.push(("dbus-session", dbus_session(p)));
    out.push(("netlink-uevent", uevents()));
    // The terminal the host gave the client (its stdin), or else its controlling terminal: the
    // host terminal of the user who ran `feather exec`, if any reached the VM. feather gives a
    // command pipes of its own and a session of the VM's, so none should.
    let stdin_is_tty = nix::unistd::isatty(std::io::stdin()).unwrap_or(false);
    let controlling = (!stdin_is_tty)
        .then(|| {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open("/dev/tty")
                .ok()
        })
        .flatten();
    let terminal = if stdin_is_tty {
        Some(0)
    } else {
        controlling.as_ref().map(|tty| tty.as_raw_fd())
    };
    for (channel, request) in [("tiocsti", libc::TIOCSTI), ("tioclinux", libc::TIOCLINUX)] {
        out.push((
            channel,
            if let Some(terminal) = terminal {
                // TIOCSTI pushes one harmless byte (NUL); TIOCLINUX asks for the shift state (6).
                let byte = if channel == "tiocsti" { 0 } else { 6 };
                match raw::tty_ioctl(terminal, request, byte) {
                    Ok(()) => reached(format!("{channel} on the host terminal succeeded")),
                    Err(Errno::ENOTTY | Errno::EINVAL) => {
                        Outcome::new(Kind::Refused, format!("{channel}: not a virtual console"))
                    }
                    Err(e) => Outcome::from_errno(channel, e),
                }
            } else {
                Outcome::new(
                    Kind::Invisible,
                    "no host terminal reaches the VM (stdin is not a terminal, no controlling terminal)",
                )
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
    out.push((
        "io_uring",
        errno("io_uring_setup", raw::io_uring_setup().map(drop)),
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

pub(super) fn uevents() -> Outcome {
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
