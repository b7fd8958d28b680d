//! Who holds a lock file's `flock`, and whether it is stopped (SIGSTOP, Ctrl-Z): a command
//! waiting behind a stopped holder would wait for good, and says so instead (see
//! [`crate::store::VmDir::lock_operations_unless_holder_stopped`]). And a bounded wait for a
//! lock ([`lock_within`]) for pool_locks, feather-net's settings, the pool's refill lock,
//! `network down`'s and a VM's operation lock; and one way to take a lock file and check the
//! path still names it once taken ([`lock_as_named`]), for a VM's `op.lock` and feather-net's
//! refill and removal locks. `pool_locks::in_place_locked` checks its own way: it locks a
//! folder opened without following a link, by a deadline, and makes it where missing.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// A process holding `path`'s `flock`: its pid, command line, and whether it is stopped.
#[derive(Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Its command line, arguments joined by spaces (empty if it cannot be read).
    pub command: String,
    pub stopped: bool,
}

impl Holder {
    /// The holder as a message names it: its command and pid, or its pid alone where its
    /// command cannot be read (it ended; a flock inherited across a fork lists the parent).
    pub fn named(&self) -> String {
        match self.command.as_str() {
            "" => format!("pid {}", self.pid),
            command => format!(
                "`{}` (pid {})",
                crate::display::escape_for_terminal(command),
                self.pid
            ),
        }
    }

    /// What a command says of `held` (a lock, as the message names it) held by this holder,
    /// stopped: who, and what to do.
    pub fn stopped_said(&self, held: &str) -> String {
        format!("{held} is held (flock) by {}", self.stopped_named())
    }

    /// This holder, stopped, as a message names it, and what to do.
    pub fn stopped_named(&self) -> String {
        format!(
            "{}, which is stopped (SIGSTOP or Ctrl-Z): let it go on (`kill -CONT {}`) or end it, \
             then try again",
            self.named(),
            self.pid
        )
    }
}

/// The first holder of `path`'s `flock`, stopped or not, as `/proc/locks` tells: None when
/// there is none it lists, or it lists pid 0 (a holder in another pid namespace, or one whose
/// pid is gone), which no message may tell a user to signal (`kill 0` signals their own group).
pub fn holder(path: &Path) -> Option<Holder> {
    let pid = *holder_pids(path).first().filter(|&&pid| pid != 0)?;
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

/// What a bounded wait ([`lock_within`]) does when the lock's holder is stopped (SIGSTOP,
/// Ctrl-Z): it would hold the lock until someone lets it go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfStopped {
    /// Give up at once, naming it ([`NotTaken::HeldStopped`]).
    GiveUp,
    /// Wait on until the deadline, as for any holder.
    WaitOn,
}

/// Why a bounded wait ([`lock_within`]) ended without the lock.
#[derive(Debug)]
pub enum NotTaken {
    /// Held all through the wait, by this holder as `/proc/locks` tells at its end (None: it
    /// lists none this process can see).
    HeldPast(Option<Holder>),
    /// Held by a stopped process ([`IfStopped::GiveUp`]).
    HeldStopped(Holder),
    /// The lock could not be tried at all.
    Failed(std::io::Error),
}

/// How often a bounded wait tries the lock again.
const RETRY_EVERY: Duration = Duration::from_millis(10);

/// How many tries between two looks at who holds the lock (each a read of `/proc/locks`).
const TRIES_PER_LOOK: u32 = 10;

/// Takes `file`'s `flock` (exclusive), waiting for its holder until `deadline` (tried every
/// [`RETRY_EVERY`]); with [`IfStopped::GiveUp`], not past the moment its holder is seen stopped.
/// For waits that must end: a command that holds a lock others wait for, or one a user waits
/// on. Callers say what the lock is and what to do from the [`NotTaken`].
pub fn lock_within(
    file: &std::fs::File,
    deadline: Instant,
    if_stopped: IfStopped,
) -> Result<(), NotTaken> {
    use std::os::fd::AsRawFd;
    let opened = std::path::PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let mut tries = 0u32;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(NotTaken::Failed(e)),
        }
        tries = tries.wrapping_add(1);
        if Instant::now() >= deadline {
            return Err(NotTaken::HeldPast(holder(&opened)));
        }
        if if_stopped == IfStopped::GiveUp && tries.is_multiple_of(TRIES_PER_LOOK) {
            if let Some(stopped) = holder(&opened).filter(|holder| holder.stopped) {
                return Err(NotTaken::HeldStopped(stopped));
            }
        }
        std::thread::sleep(RETRY_EVERY.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// The lock file at `path` as `open` opens it and `take` takes it, checked, once taken, to be
/// the file `path` names now: a holder that unlinked it (or its folder: `rm` of a VM, the
/// network's removal) as it ended, still holding the lock, let it go to a waiter that opened
/// the file before, a lock that serialises nothing (the next opener makes a new file). Then
/// the file at the path is opened and taken again (each round follows a whole removal by
/// someone else). The look follows a symbolic link as `open` does (`fs::metadata`): these
/// files live in root's folders, made by feather, and a look that did not follow would never
/// find a linked lock file to be the one opened through it, and go round for good. Ok(Err)
/// with what `take` said where it did not take it; the error of `open` where the file cannot
/// be opened (or made: no folder any more).
pub fn lock_as_named(
    path: &Path,
    open: impl Fn() -> std::io::Result<std::fs::File>,
    take: impl Fn(&std::fs::File) -> Result<(), NotTaken>,
) -> std::io::Result<Result<std::fs::File, NotTaken>> {
    loop {
        let file = open()?;
        if let Err(not_taken) = take(&file) {
            return Ok(Err(not_taken));
        }
        // A look that fails (EIO, a folder on the way gone odd) is no proof either way: round
        // again, where `open` says what is wrong if it is for good.
        if still_names(path, &file).unwrap_or(false) {
            return Ok(Ok(file));
        }
    }
}

/// Whether `path` (followed, as [`lock_as_named`] says why) names the opened `file` now; false
/// where nothing is there.
pub fn still_names(path: &Path, file: &std::fs::File) -> std::io::Result<bool> {
    let opened = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(now) => Ok((now.dev(), now.ino()) == (opened.dev(), opened.ino())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Takes `file`'s `flock` (exclusive), waiting for a holder that goes on for as long as it
/// holds it, but not past the moment it is seen stopped (SIGSTOP, Ctrl-Z: it would be waited
/// on for good): [`NotTaken::HeldStopped`] names it. For a wait behind work that may take long
/// but ends (a fill's whole round, a VM's operation).
pub fn lock_unless_stopped(file: &std::fs::File) -> Result<(), NotTaken> {
    lock_unless_stopped_in_rounds(file, UNLESS_STOPPED_ROUND)
}

/// How long each round of [`lock_unless_stopped`] is (a [`lock_within`] of its own).
const UNLESS_STOPPED_ROUND: Duration = Duration::from_secs(60);

fn lock_unless_stopped_in_rounds(file: &std::fs::File, round: Duration) -> Result<(), NotTaken> {
    loop {
        match lock_within(file, Instant::now() + round, IfStopped::GiveUp) {
            // Seen stopped at the round's end (a round too short for a look of its own).
            Err(NotTaken::HeldPast(Some(holder))) if holder.stopped => {
                return Err(NotTaken::HeldStopped(holder))
            }
            Err(NotTaken::HeldPast(_)) => {}
            done => return done,
        }
    }
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

    use feather_testkit::flock_holder::FlockHolder;

    /// A lock file of its own in a scratch folder (removed with it).
    fn lock_file(scratch: &feather_testkit::ScratchDir) -> (std::path::PathBuf, std::fs::File) {
        std::fs::create_dir_all(&scratch.0).unwrap();
        let path = scratch.0.join("a.lock");
        let file = std::fs::File::create(&path).unwrap();
        (path, file)
    }

    /// A free lock is taken; one held by another open of this process is not, and the wait
    /// ends at its deadline, naming this process as the holder.
    #[test]
    fn a_bounded_wait_takes_a_free_lock_and_gives_up_on_a_held_one_at_its_deadline() {
        let scratch = feather_testkit::ScratchDir::new("lock-within");
        let (path, file) = lock_file(&scratch);
        let soon = || Instant::now() + Duration::from_millis(100);
        assert!(lock_within(&file, soon(), IfStopped::GiveUp).is_ok());
        let other = std::fs::File::open(&path).unwrap();
        match lock_within(&other, soon(), IfStopped::GiveUp) {
            Err(NotTaken::HeldPast(Some(holder))) => {
                assert_eq!(holder.pid, std::process::id());
                assert!(!holder.stopped);
            }
            other => panic!("{other:?}"),
        }
        drop(file);
        assert!(lock_within(&other, soon(), IfStopped::GiveUp).is_ok());
    }

    /// A wait that gives up only on a stopped holder waits on, round after round, for one
    /// that is not, and takes the lock once it is let go; a stopped holder ends it, named.
    #[test]
    fn a_wait_unless_stopped_outlasts_its_rounds_for_a_holder_that_goes_on() {
        let scratch = feather_testkit::ScratchDir::new("lock-unless-stopped");
        let (path, held) = lock_file(&scratch);
        held.lock().unwrap();
        let other = std::fs::File::open(&path).unwrap();
        let waiting = std::thread::spawn(move || {
            lock_unless_stopped_in_rounds(&other, Duration::from_millis(10))
        });
        // Set-up, not an assertion on time: a wait that ended at its first rounds has ended by
        // now on any host but one so loaded that this proves nothing (it cannot fail then).
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiting.is_finished(), "{:?}", waiting.join());
        drop(held);
        assert!(waiting.join().unwrap().is_ok());
        let holding = FlockHolder::of(&path).stopped();
        let file = std::fs::File::open(&path).unwrap();
        match lock_unless_stopped_in_rounds(&file, Duration::from_millis(10)) {
            Err(NotTaken::HeldStopped(holder)) => assert_eq!(holder.pid, holding.pid()),
            other => panic!("{other:?}"),
        }
    }

    /// A stopped holder ends a wait that gives up on one long before its deadline, naming it;
    /// a wait that waits on ends at its deadline, and names it stopped.
    #[test]
    fn a_bounded_wait_gives_up_on_a_stopped_holder_only_where_asked() {
        let scratch = feather_testkit::ScratchDir::new("lock-within-stopped");
        let (path, file) = lock_file(&scratch);
        let holding = FlockHolder::of(&path).stopped();
        let pid = holding.pid();
        let far = Instant::now() + Duration::from_secs(600);
        match lock_within(&file, far, IfStopped::GiveUp) {
            Err(NotTaken::HeldStopped(holder)) => {
                assert_eq!(holder.pid, pid);
                assert_eq!(holder.command, "sleep 600");
            }
            other => panic!("{other:?}"),
        }
        let soon = Instant::now() + Duration::from_millis(100);
        match lock_within(&file, soon, IfStopped::WaitOn) {
            Err(NotTaken::HeldPast(Some(holder))) => assert!(holder.stopped && holder.pid == pid),
            other => panic!("{other:?}"),
        }
        drop(holding);
    }

    /// A child holding a lock is found, stopped once SIGSTOP stopped it, and not stopped once
    /// it goes on.
    #[test]
    fn a_holder_is_found_and_whether_it_is_stopped() {
        let scratch = feather_testkit::ScratchDir::new("lock-holder");
        let (path, _file) = lock_file(&scratch);
        let holding = FlockHolder::of(&path);
        let pid = holding.pid();
        let found = |stopped| {
            Some(Holder {
                pid,
                command: "sleep 600".into(),
                stopped,
            })
        };
        assert_eq!(holder(&path), found(false));
        let holding = holding.stopped();
        assert_eq!(holder(&path), found(true));
        holding.go_on();
        assert_eq!(holder(&path), found(false));
    }
}
