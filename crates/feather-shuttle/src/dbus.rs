//! D-Bus channels: Debian's `xdg-dbus-proxy`, run by the broker outside the VMs, between the
//! target's system bus and the source VM, filtering so that the source sees and talks to
//! exactly the allowed names (`--filter --talk=NAME`). The broker's endpoint in the source VM
//! hands each connection (once the gate allowed it) to the proxy's socket in the VM's run
//! folder on the host.
//!
//! The proxy reaches the target's bus through the broker's own descriptor of the bus socket
//! (`/proc/<keeper>/fd/<n>`), opened inside the target VM's view, so a symlink in the target
//! cannot point it at the host's bus.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::channels::SYSTEM_BUS;
use crate::endpoint::{self, Holder};

/// The proxy program (Debian's package xdg-dbus-proxy).
pub const PROXY: &str = "xdg-dbus-proxy";

/// How long a proxy may take to listen.
const READY_WITHIN: Duration = Duration::from_secs(5);

/// A running proxy for one target bus and one set of names; ended (and its socket removed)
/// when dropped.
pub struct Proxy {
    holder: Holder,
    names: Vec<String>,
    child: Child,
    socket: PathBuf,
    /// The target's bus socket, reached by the proxy through `/proc/<keeper>/fd/<n>`.
    _bus: OwnedFd,
}

impl Proxy {
    /// Starts a proxy to `holder`'s system bus allowing `names`, listening in
    /// `<run_dir>/shuttle/`; returns once it takes connections.
    pub fn spawn(
        run_dir: &Path,
        channel: u64,
        holder: Holder,
        names: &[String],
    ) -> io::Result<Proxy> {
        let bus = endpoint::open_socket_file(holder, Path::new(SYSTEM_BUS)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("no system bus at {SYSTEM_BUS} ({e}; start the dbus service there)"),
            )
        })?;
        let dir = run_dir.join("shuttle");
        fs::create_dir_all(&dir)?;
        let socket = dir.join(format!("dbus-{channel}.sock"));
        let _ = fs::remove_file(&socket);
        let log = File::create(dir.join(format!("dbus-{channel}.log")))?;
        let upstream = format!(
            "unix:path=/proc/{}/fd/{}",
            std::process::id(),
            bus.as_raw_fd()
        );
        let mut command = Command::new(PROXY);
        command
            .arg(upstream)
            .arg(&socket)
            .arg("--filter")
            .args(names.iter().map(|name| format!("--talk={name}")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = command.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run {PROXY}: {e} (install Debian's package xdg-dbus-proxy)"),
            )
        })?;
        let mut proxy = Proxy {
            holder,
            names: names.to_vec(),
            child,
            socket,
            _bus: bus,
        };
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            // Bound is not yet listening: a connection that is taken is the sign.
            if UnixStream::connect(&proxy.socket).is_ok() {
                return Ok(proxy);
            }
            if let Some(status) = proxy.child.try_wait()? {
                let said =
                    fs::read_to_string(dir.join(format!("dbus-{channel}.log"))).unwrap_or_default();
                return Err(io::Error::other(format!(
                    "{PROXY} ended ({status}): {}",
                    said.trim()
                )));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{PROXY} did not listen within {READY_WITHIN:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether this proxy is the one for `holder` and `names`.
    pub fn serves(&self, holder: Holder, names: &[String]) -> bool {
        self.holder == holder && self.names == names
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn connect(&self) -> io::Result<UnixStream> {
        UnixStream::connect(&self.socket)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Our own child, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.socket);
    }
}
