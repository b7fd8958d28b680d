//! What the agent's halves share: the listener's published endpoints, what it heard, the
//! client's plan and attempts, and small helpers both use.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::time::Duration;

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

use crate::matrix::{Kind, Outcome};

/// A listener never outlives this, whatever happens to the process that started it.
pub const LISTENER_LIFETIME: Duration = Duration::from_secs(120);

/// How long a client waits for an answer or an event before calling the cell silent.
pub(super) const ANSWER_WAIT: Duration = Duration::from_secs(3);

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
    /// A report holding the names a listener given `token` makes ([`Names`]),
    /// for the rest to be filled in.
    pub fn named(token: &str) -> Published {
        let names = Names::of(token);
        Published {
            token: token.to_owned(),
            sysv_key: names.sysv_key,
            mq_name: names.mq_name,
            shm_path: names.shm_path,
            abstract_name: names.abstract_name,
            fifo: names.fifo,
            file: names.file,
            watched: names.watched,
            churned: names.churned,
            ..Published::default()
        }
    }

    pub fn socket_path(&self, dir: &str, suffix: &str, kind: &str) -> String {
        format!("{dir}/{}{suffix}.{kind}", self.token)
    }

    /// The first field in which this report is not what a listener given `token` publishes,
    /// with what it said. A listener in a VM is the VM's process, run from the VM's view of
    /// the agent's binary: its report is the VM's word, and the host's client opens, appends
    /// to, signals and traces what the report names. Only the names the host's own token
    /// gives are acted on.
    pub fn departure_from(&self, token: &str) -> Option<(&'static str, String)> {
        let names = Names::of(token);
        let x11 = |said: &Option<String>| said.as_deref().is_some_and(|s| s != X11_NAME);
        [
            ("token", self.token != token, self.token.clone()),
            (
                "sysv_key",
                self.sysv_key != names.sysv_key,
                self.sysv_key.to_string(),
            ),
            (
                "mq_name",
                self.mq_name != names.mq_name,
                self.mq_name.clone(),
            ),
            (
                "shm_path",
                self.shm_path != names.shm_path,
                self.shm_path.clone(),
            ),
            (
                "abstract_name",
                self.abstract_name != names.abstract_name,
                self.abstract_name.clone(),
            ),
            ("fifo", self.fifo != names.fifo, self.fifo.clone()),
            ("file", self.file != names.file, self.file.clone()),
            (
                "watched",
                self.watched != names.watched,
                self.watched.clone(),
            ),
            (
                "churned",
                self.churned != names.churned,
                self.churned.clone(),
            ),
            (
                "x11_abstract",
                x11(&self.x11_abstract),
                format!("{:?}", self.x11_abstract),
            ),
            (
                "x11_path",
                x11(&self.x11_path),
                format!("{:?}", self.x11_path),
            ),
        ]
        .into_iter()
        .find(|(_, departs, _)| *departs)
        .map(|(field, _, said)| (field, said))
    }
}

/// The X11 display's name the listener binds (abstract and path): display 0's, which no real
/// X server in a VM or on a test host is likely to use.
pub const X11_NAME: &str = "/tmp/.X11-unix/X0";

/// The names of a listener's endpoints, every one derived from its token: the listener makes
/// them from the token it is given, and the host checks a listener's report against them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pub sysv_key: i32,
    pub mq_name: String,
    pub shm_path: String,
    pub abstract_name: String,
    pub fifo: String,
    pub file: String,
    pub watched: String,
    pub churned: String,
}

impl Names {
    pub fn of(token: &str) -> Names {
        Names {
            sysv_key: sysv_key(token),
            mq_name: format!("/{token}"),
            shm_path: format!("/dev/shm/{token}"),
            abstract_name: format!("{token}-abstract"),
            fifo: format!("/tmp/{token}.fifo"),
            file: format!("/tmp/{token}.file"),
            watched: format!("/tmp/{token}.watched"),
            churned: format!("/tmp/{token}.churned"),
        }
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
pub(super) fn netns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0)
}

pub(super) fn interfaces() -> Vec<String> {
    let mut names: Vec<String> = nix::ifaddrs::getifaddrs()
        .map(|addrs| addrs.map(|a| a.interface_name).collect())
        .unwrap_or_default();
    names.sort();
    names.dedup();
    names
}

pub(super) fn first_outside_address() -> Option<Ipv4Addr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        let ip = a.address?.as_sockaddr_in()?.ip();
        (!ip.is_loopback()).then_some(ip)
    })
}

pub(super) fn start_ticks(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

pub(super) fn write_lock(start: i64) -> libc::flock {
    libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: start,
        l_len: 1,
        l_pid: 0,
    }
}

pub(super) fn reached(detail: impl Into<String>) -> Outcome {
    Outcome::new(Kind::Reached, detail)
}

pub(super) fn io_errno(e: &std::io::Error) -> Errno {
    match e.kind() {
        // std's connect_timeout reports its own timeout without an errno: a dropped packet.
        std::io::ErrorKind::TimedOut if e.raw_os_error().is_none() => Errno::ETIMEDOUT,
        _ => Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// Writes `text` and a newline to stdout, for the probe that reads the agent.
pub fn print_line(text: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn genuine(token: &str) -> Published {
        Published {
            x11_abstract: Some(X11_NAME.to_owned()),
            x11_path: None,
            ..Published::named(token)
        }
    }

    #[test]
    fn a_listeners_own_names_are_accepted() {
        assert_eq!(genuine("fp1a").departure_from("fp1a"), None);
    }

    #[test]
    fn a_name_the_token_does_not_give_is_named() {
        let mut forged = genuine("fp1a");
        forged.file = "/etc/shadow".into();
        assert_eq!(
            forged.departure_from("fp1a"),
            Some(("file", "/etc/shadow".to_owned()))
        );
        let mut forged = genuine("fp1a");
        forged.x11_path = Some("/run/docker.sock".into());
        assert_eq!(forged.departure_from("fp1a").map(|d| d.0), Some("x11_path"));
        // Names consistent with another token are still another token's.
        assert_eq!(
            genuine("sshd").departure_from("fp1a").map(|d| d.0),
            Some("token")
        );
    }
}
