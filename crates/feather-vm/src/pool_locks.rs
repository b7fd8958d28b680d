//! The locks of a pool's folder ([`crate::pooled`]): its lock files, opened without following a
//! link; every wait for one bounded, naming its holder; and the folder in place at its path,
//! opened and locked, whatever a lift of a stale fence moved aside meanwhile
//! ([`in_place_locked`]). Knows paths and descriptors only, nothing of a state root.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use feather_core::error::IoContext;
use nix::fcntl::{Flock, FlockArg};

/// When a wait ends, and the patience it was given (what its error says). One deadline for all
/// the tries of a wait: a folder replaced meanwhile does not start its patience again.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    ends: Instant,
    patience: Duration,
}

impl Deadline {
    /// The deadline `patience` from now.
    pub fn after(patience: Duration) -> Deadline {
        Deadline {
            ends: Instant::now() + patience,
            patience,
        }
    }

    fn passed(self) -> bool {
        Instant::now() >= self.ends
    }
}

/// Folder `path` opened and locked (flock, exclusive), or an error if another holds it.
pub fn locked(path: &Path) -> std::io::Result<Flock<File>> {
    Flock::lock(
        feather_sys::folder::open_no_follow(path)?,
        FlockArg::LockExclusiveNonblock,
    )
    .map_err(|(_, e)| e.into())
}

/// The opened `file` as a path the kernel resolves through its descriptor.
pub fn opened(file: &File) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Lock file `name` of the opened `folder` (shown as `shown_folder`), made if missing: only a
/// plain file, never through a symbolic link (which a user owning the root's folder could point
/// at any file, for a command run as root to lock), never waited on. An error names it.
pub fn open_lock_in(folder: &File, shown_folder: &Path, name: &str) -> crate::error::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let shown = shown_folder.join(name);
    let opened = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(opened(folder).join(name));
    let lock = match opened {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(not_the_lock(&shown, "a symbolic link"))
        }
        opened => opened.at(&shown)?,
    };
    if !lock.metadata().at(&shown)?.is_file() {
        return Err(not_the_lock(&shown, "not a plain file"));
    }
    Ok(lock)
}

/// What a command says of a lock file of the pool's it will not use: what is wrong, and what
/// to do.
fn not_the_lock(shown: &Path, what: &str) -> crate::error::VmError {
    crate::error::failed(
        &shown.display(),
        format!(
            "is {what}, not the pool's lock: the pool is left as it is (a fill makes no VM); \
             remove it (the next command makes the lock anew), and check who can write the \
             root's folder"
        ),
    )
}

/// `file` locked (flock, exclusive), waited for until `deadline`: past it, or at once where
/// its holder is stopped (SIGSTOP, Ctrl-Z: it would hold it for good), an error naming the
/// lock (as `shown`), its holder, and what to do ([`lock_file_within`]). Held as a `Flock`,
/// which lets it go when dropped even where another descriptor of the same open file
/// description stays open (`hold_dir`'s clone of the folder).
pub fn lock_within(
    file: File,
    shown: &Path,
    deadline: Deadline,
) -> crate::error::Result<Flock<File>> {
    lock_file_within(&file, shown, deadline)?;
    // Taken already: this takes nothing new.
    Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| crate::error::io(&shown.display(), "locking it")(e.into()))
}

/// [`lock_within`] for a `file` whose lock goes with its last descriptor
/// ([`feather_core::lock_holder::lock_within`]).
pub fn lock_file_within(file: &File, shown: &Path, deadline: Deadline) -> crate::error::Result<()> {
    use feather_core::lock_holder::{IfStopped, NotTaken};
    let holder =
        match feather_core::lock_holder::lock_within(file, deadline.ends, IfStopped::GiveUp) {
            Ok(()) => return Ok(()),
            Err(NotTaken::Failed(e)) => {
                return Err(crate::error::io(&shown.display(), "locking it")(e))
            }
            Err(NotTaken::HeldPast(holder)) => holder,
            Err(NotTaken::HeldStopped(holder)) => Some(holder),
        };
    Err(held_too_long(shown, holder, deadline.patience))
}

/// `file` locked (flock, exclusive), waited for as long as its holder goes on, but not once
/// it is seen stopped (SIGSTOP, Ctrl-Z): then an error naming the lock (as `shown`), its
/// holder and what to do ([`feather_core::lock_holder::lock_unless_stopped`]).
pub fn lock_file_unless_stopped(file: &File, shown: &Path) -> crate::error::Result<()> {
    use feather_core::lock_holder::NotTaken;
    match feather_core::lock_holder::lock_unless_stopped(file) {
        Ok(()) => Ok(()),
        Err(NotTaken::HeldStopped(holder)) => Err(feather_core::Error::Other(
            holder.stopped_said(&shown.display().to_string()),
        )
        .into()),
        Err(NotTaken::Failed(e)) => Err(crate::error::io(&shown.display(), "locking it")(e)),
        Err(NotTaken::HeldPast(_)) => unreachable!("a wait unless stopped has no deadline"),
    }
}

/// What a command says of a lock of the pool's (`shown`) that `holder` kept past `patience`,
/// or held stopped.
fn held_too_long(
    shown: &Path,
    holder: Option<feather_core::lock_holder::Holder>,
    patience: Duration,
) -> crate::error::VmError {
    let shown = shown.display();
    let said = match holder {
        Some(holder) if holder.stopped => holder.stopped_said(&shown.to_string()),
        Some(holder) => format!(
            "{shown} has been held (flock) by {} for more than {patience:?}: wait for it to \
             end (or end it), then try again",
            holder.named(),
        ),
        None => format!(
            "{shown} has been held (flock) for more than {patience:?} by a process this cannot \
             name (`fuser -v {shown}` may): wait for it to end, then try again"
        ),
    };
    feather_core::Error::Other(said).into()
}

/// What [`in_place_locked`] does where no folder is at the path.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IfMissing {
    /// Says so: None.
    Leave,
    /// Makes it (never its parent: a root removed meanwhile is not made again).
    Make,
}

/// The folder at `path`, opened, and what `lock` took in it (its own flock, a lock file of
/// it), both by the deadline: a folder replaced while `lock` waited (a lift of a stale fence
/// took it aside, and maybe removed it: then `lock` fails, its lock file gone) is let go and
/// the one in place now taken, within the same deadline. None where no folder is there
/// ([`IfMissing::Leave`]). `lock` is given the opened folder and the deadline; an error of its
/// while the folder is in place is this one's. Not `feather_core::lock_holder::lock_as_named`:
/// that opens and checks a lock file, whose `take` says only whether it took it, with no
/// deadline of its own; this opens a folder (made where missing), hands `lock` what it took in
/// it, and goes round only within its deadline.
pub fn in_place_locked<L>(
    path: &Path,
    if_missing: IfMissing,
    deadline: Deadline,
    mut lock: impl FnMut(&File, Deadline) -> crate::error::Result<L>,
) -> crate::error::Result<Option<(File, L)>> {
    while !deadline.passed() {
        if if_missing == IfMissing::Make {
            match std::fs::create_dir(path) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(e).at(path)?
                }
                _ => {}
            }
        }
        let folder = match feather_sys::folder::open_no_follow(path) {
            Ok(folder) => folder,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match if_missing {
                IfMissing::Leave => return Ok(None),
                IfMissing::Make => continue,
            },
            Err(e) => return Err(e).at(path)?,
        };
        let held = lock(&folder, deadline);
        if in_place(path, &folder).at(path)? {
            return held.map(|held| Some((folder, held)));
        }
    }
    Err(feather_core::Error::Other(format!(
        "{}: the pool's folder was replaced each time this looked, for {:?}; try again",
        path.display(),
        deadline.patience
    ))
    .into())
}

/// Whether the opened `folder` is the folder at `path` now (not one a lift took aside). Not
/// `feather_core::lock_holder::still_names`, which follows a link as a lock file's open does:
/// the folder is opened without following one ([`feather_sys::folder::open_no_follow`]), so a
/// link put at its path is not the folder either.
fn in_place(path: &Path, folder: &File) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let held = folder.metadata()?;
    match std::fs::symlink_metadata(path) {
        Ok(now) => Ok((now.dev(), now.ino()) == (held.dev(), held.ino())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use feather_testkit::flock_holder::FlockHolder;
    use feather_testkit::ScratchDir;

    /// How long a test waits for what it started to be seen (a lock taken, a process stopped).
    const LIMIT: Duration = Duration::from_secs(30);

    /// A lock held past its patience fails, naming its holder's pid and command, and one held
    /// by a stopped process fails at once, saying how to let it go on; neither waits for good.
    #[test]
    fn a_lock_held_too_long_or_by_a_stopped_process_fails_naming_its_holder() {
        let dir = ScratchDir::new("pool-lock-held");
        let path = dir.0.join("settings.lock");
        std::fs::write(&path, b"").unwrap();
        let holder = FlockHolder::of(&path);
        let pid = holder.pid();
        let open = || File::open(&path).unwrap();
        let patience = Deadline::after(Duration::from_millis(300));
        let error = lock_within(open(), &path, patience).err().unwrap();
        let error = error.to_string();
        assert!(
            error.contains(&format!("`sleep 600` (pid {pid})")),
            "{error}"
        );
        assert!(error.contains("for more than"), "{error}");
        let holder = holder.stopped();
        // Its patience is long: only its look at the holder ends the wait within the limit.
        // The holder goes with this scope, failing test or not, so the waiter takes the lock
        // and ends before the scope is left.
        let waited = std::thread::scope(|scope| {
            let holder = holder;
            let (told, ended) = std::sync::mpsc::channel();
            let (open, path) = (&open, &path);
            scope.spawn(move || {
                let patience = Deadline::after(Duration::from_secs(600));
                let error = lock_within(open(), path, patience).err();
                let _ = told.send(error.map(|error| error.to_string()));
            });
            let waited = ended.recv_timeout(LIMIT);
            holder.go_on();
            waited
        });
        let error = waited.expect("the wait behind a stopped holder ended within 30 s");
        let error = error.expect("no lock taken from a stopped holder");
        assert!(error.contains(&format!("kill -CONT {pid}")), "{error}");
    }

    /// A holder whose command cannot be read (it ended; a flock inherited across a fork listing
    /// its parent) is named by its pid alone: before, "held by `` (pid N)".
    #[test]
    fn a_holder_without_a_command_is_named_by_its_pid() {
        let holder = |stopped| feather_core::lock_holder::Holder {
            pid: 7,
            command: String::new(),
            stopped,
        };
        for stopped in [false, true] {
            let error = held_too_long(Path::new("/x/fill.lock"), Some(holder(stopped)), LIMIT);
            let error = error.to_string();
            assert!(
                error.contains("by pid 7,") || error.contains("by pid 7 "),
                "{error}"
            );
            assert!(!error.contains("``"), "{error}");
        }
    }

    /// A folder taken away (a lift of a stale fence moved it aside and removed it) between its
    /// open and the open of its lock file (which then fails: ENOENT) is looked for again, within
    /// the one deadline: none there, or the one in place now. Before, the lock file's error
    /// was the caller's (a reader of the size kept a stale fence's 0; `pool --size` failed).
    #[test]
    fn a_folder_removed_before_its_lock_file_is_opened_is_looked_for_again() {
        for replaced in [false, true] {
            let dir = ScratchDir::new("pool-lock-removed");
            let path = dir.0.join("pool");
            std::fs::create_dir(&path).unwrap();
            let mut tries = 0;
            let held = in_place_locked(
                &path,
                IfMissing::Leave,
                Deadline::after(LIMIT),
                |folder, deadline| {
                    tries += 1;
                    if tries == 1 {
                        let aside = dir.0.join("aside");
                        std::fs::rename(&path, &aside).unwrap();
                        std::fs::remove_dir_all(&aside).unwrap();
                        if replaced {
                            std::fs::create_dir(&path).unwrap();
                        }
                    }
                    let file = open_lock_in(folder, &path, "settings.lock")?;
                    lock_within(file, &path.join("settings.lock"), deadline)
                },
            );
            let held = held.unwrap_or_else(|e| panic!("replaced: {replaced}: {e}"));
            assert_eq!(held.is_some(), replaced, "a folder in place was taken");
            assert_eq!(tries, if replaced { 2 } else { 1 });
            if let Some((folder, _lock)) = held {
                assert!(in_place(&path, &folder).unwrap(), "the one in place");
            }
        }
    }
}
