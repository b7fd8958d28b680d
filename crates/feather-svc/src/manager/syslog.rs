//! The VM's `/dev/log`: what journald's syslog socket is on a systemd host. The manager
//! listens there and files every message into the log of the unit that sent it (found by the
//! sender's pid, which the kernel attaches with SCM_CREDENTIALS), or into
//! `/var/log/feather/syslog.log` when no unit claims it. A syslog daemon duplicated into the
//! VM (rsyslog) may take the socket over: it replaces the file with its own.

use std::io::IoSliceMut;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixAddr};

pub const DEV_LOG: &str = "/dev/log";

/// Listens on /dev/log, unless something else is there already.
pub fn listen() -> Option<UnixDatagram> {
    let path = Path::new(DEV_LOG);
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return None;
        }
        // A socket file nobody answers on is left over; one that answers belongs to a running
        // syslog daemon.
        if UnixDatagram::unbound()
            .and_then(|s| s.connect(path))
            .is_ok()
        {
            return None;
        }
        let _ = std::fs::remove_file(path);
    }
    let socket = UnixDatagram::bind(path).ok()?;
    setsockopt(&socket, sockopt::PassCred, &true).ok()?;
    socket.set_nonblocking(true).ok()?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666));
    Some(socket)
}

/// One received message: the sender's pid (if the kernel said) and the text, without the
/// `<priority>` prefix.
pub fn receive(socket: &UnixDatagram) -> Option<(Option<i32>, String)> {
    let mut buffer = vec![0u8; 8192];
    let mut control = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
    let (bytes, pid) = {
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let message = recvmsg::<UnixAddr>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut control),
            MsgFlags::MSG_DONTWAIT,
        )
        .ok()?;
        let pid = message.cmsgs().ok().and_then(|mut cmsgs| {
            cmsgs.find_map(|c| match c {
                ControlMessageOwned::ScmCredentials(credentials) => Some(credentials.pid()),
                _ => None,
            })
        });
        (message.bytes, pid)
    };
    let text = String::from_utf8_lossy(&buffer[..bytes]);
    Some((
        pid,
        strip_priority(text.trim_end_matches(['\n', '\0'])).to_owned(),
    ))
}

fn strip_priority(text: &str) -> &str {
    match text.strip_prefix('<').and_then(|rest| rest.split_once('>')) {
        Some((priority, rest)) if priority.chars().all(|c| c.is_ascii_digit()) => rest,
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn priorities_are_stripped() {
        assert_eq!(
            super::strip_priority("<30>Nov 22 dbus[5]: hi"),
            "Nov 22 dbus[5]: hi"
        );
        assert_eq!(super::strip_priority("no priority"), "no priority");
        assert_eq!(super::strip_priority("<x>y"), "<x>y");
    }
}
