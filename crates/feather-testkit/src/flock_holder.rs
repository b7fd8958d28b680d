//! A process holding a file's `flock` for a test, running or stopped (SIGSTOP).

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

/// How long a holder is waited for to take its lock, stop or go on.
const LIMIT: Duration = Duration::from_secs(60);

/// `flock --no-fork PATH sleep 600` (the file made if missing): the holder is the `sleep`
/// flock becomes, its command line `sleep 600`. Killed and reaped on drop, failing test or not.
pub struct FlockHolder(crate::Started);

impl FlockHolder {
    /// A process holding `path`'s flock, once `/proc/locks` lists it holding one.
    pub fn of(path: &Path) -> FlockHolder {
        let holder = FlockHolder(crate::Started(
            std::process::Command::new("flock")
                .arg("--no-fork")
                .arg(path)
                .args(["sleep", "600"])
                // Nothing of the test's: its output pipes held by a holder a killed test left
                // would keep the test's runner waiting on them.
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        ));
        let holds = || holds_a_flock(holder.pid());
        assert!(crate::eventually(LIMIT, holds), "flock took {path:?}");
        holder
    }

    pub fn pid(&self) -> u32 {
        self.0 .0.id()
    }

    /// Stopped (SIGSTOP), once its state says so.
    pub fn stopped(self) -> FlockHolder {
        self.signal(Signal::SIGSTOP);
        let stopped = || crate::stat::stopped(self.pid());
        assert!(
            crate::eventually(LIMIT, stopped),
            "SIGSTOP stopped the holder"
        );
        self
    }

    /// Going on (SIGCONT), once its state says so, still holding the lock.
    pub fn go_on(&self) {
        self.signal(Signal::SIGCONT);
        let going_on = || !crate::stat::stopped(self.pid());
        assert!(
            crate::eventually(LIMIT, going_on),
            "SIGCONT let the holder go on"
        );
    }

    /// Lets go of the lock: the holder is killed and reaped.
    pub fn let_go(self) {
        drop(self);
    }

    fn signal(&self, signal: Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }
}

/// Whether `/proc/locks` lists `pid` holding (not waiting for: `->`) an `flock`.
fn holds_a_flock(pid: u32) -> bool {
    let pid = pid.to_string();
    std::fs::read_to_string("/proc/locks").is_ok_and(|locks| {
        locks.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            matches!(fields.as_slice(), [_, "FLOCK", _, _, holder, ..] if *holder == pid)
        })
    })
}
