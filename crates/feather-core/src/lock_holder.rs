//! Who holds a lock file's `flock`, and whether it is stopped (SIGSTOP, Ctrl-Z): a command
//! waiting behind a stopped holder would wait for good, and says so instead (see
//! [`crate::store::VmDir::lock_operations_unless_holder_stopped`]).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A process holding a lock, stopped.
#[derive(Debug, PartialEq, Eq)]
pub struct StoppedHolder {
    pub pid: u32,
    /// Its command line, arguments joined by spaces (empty if it cannot be read).
    pub command: String,
}

/// The first holder of `path`'s `flock` that is stopped, if any. Read from `/proc/locks`; a
/// holder that cannot be looked at counts as not stopped (the caller keeps waiting, as before).
pub fn stopped_holder(path: &Path) -> Option<StoppedHolder> {
    holder_pids(path)
        .into_iter()
        .find(|&pid| is_stopped(pid))
        .map(|pid| StoppedHolder {
            pid,
            command: command_line(pid),
        })
}

/// A process holding `path`'s `flock`: its pid, command line, and whether it is stopped.
#[derive(Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Its command line, arguments joined by spaces (empty if it cannot be read).
    pub command: String,
    pub stopped: bool,
}

/// The first holder of `path`'s `flock`, stopped or not, as `/proc/locks` tells: None when
/// there is none it lists (or the holder lies in another pid namespace).
pub fn holder(path: &Path) -> Option<Holder> {
    let pid = *holder_pids(path).first()?;
    Some(Holder {
        pid,
        command: command_line(pid),
        stopped: is_stopped(pid),
    })
}

/// The pids holding `path`'s `flock` (the file `path` names now).
fn holder_pids(path: &Path) -> Vec<u32> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return Vec::new();
    };
    let dev = meta.dev();
    flock_holders(&locks, (libc::major(dev), libc::minor(dev), meta.ino()))
}

/// The pids holding (not waiting for: `->`) an `flock` of `file` (device major, minor, inode)
/// in the text of `/proc/locks` (`N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE START END`, the
/// device numbers in hex).
fn flock_holders(locks: &str, file: (u32, u32, u64)) -> Vec<u32> {
    let wanted = format!("{:02x}:{:02x}:{}", file.0, file.1, file.2);
    locks
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [_, "FLOCK", _, _, pid, at, ..] if *at == wanted => pid.parse().ok(),
                _ => None,
            }
        })
        .collect()
}

/// Whether `pid` is stopped by a signal (state `T` in `/proc/PID/stat`, after the command's
/// closing parenthesis).
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T'))
    })
}

fn command_line(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|&b| b == 0)
        .filter(|arg| !arg.is_empty())
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_are_found_by_device_and_inode_and_waiters_left_out() {
        let locks = "1: FLOCK  ADVISORY  WRITE 541 fe:00:10019194 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 77 fe:00:10019194 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 88 fe:00:10019194 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 99 fe:00:100191940 0 EOF\n\
                     4: FLOCK  ADVISORY  WRITE 42 08:01:10019194 0 EOF\n";
        assert_eq!(flock_holders(locks, (0xfe, 0, 10019194)), vec![541]);
        assert_eq!(flock_holders(locks, (8, 1, 10019194)), vec![42]);
    }

    /// A child stopped by SIGSTOP holding a lock is found; once it goes on, it no longer is.
    #[test]
    fn a_stopped_holder_is_found_and_a_running_one_is_not() {
        let scratch = feather_testkit::ScratchDir::new("lock-holder");
        let dir = scratch.0.clone();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("op.lock");
        std::fs::write(&path, b"").unwrap();
        // --no-fork: the holder is the `sleep` flock becomes.
        let mut child = std::process::Command::new("flock")
            .arg("--no-fork")
            .arg(&path)
            .args(["sleep", "30"])
            .spawn()
            .unwrap();
        let pid = child.id();
        let signal = |signal: &str| {
            let sent = std::process::Command::new("kill")
                .args([signal, &pid.to_string()])
                .status()
                .unwrap();
            assert!(sent.success());
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let held = |path: &Path| {
            let meta = std::fs::metadata(path).unwrap();
            let file = (libc::major(meta.dev()), libc::minor(meta.dev()), meta.ino());
            flock_holders(&std::fs::read_to_string("/proc/locks").unwrap(), file)
        };
        while !held(&path).contains(&pid) {
            assert!(std::time::Instant::now() < deadline, "flock never took it");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(stopped_holder(&path), None);
        signal("-STOP");
        while !is_stopped(pid) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let found = stopped_holder(&path).expect("the stopped holder");
        assert_eq!(found.pid, pid);
        assert_eq!(found.command, "sleep 30");
        signal("-CONT");
        assert_eq!(stopped_holder(&path), None);
        let _ = child.kill();
        let _ = child.wait();
    }
}
