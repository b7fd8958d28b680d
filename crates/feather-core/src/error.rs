use std::path::PathBuf;

/// Errors a user can act on. Each message names the VM or path involved and, where there is
/// one, what to do next; the CLI prints them as one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid VM name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },

    #[error("VM {0} already exists (pick another name, or `feather rm {0}` first)")]
    AlreadyExists(String),

    #[error("no VM named {0} (see `feather ls`)")]
    NotFound(String),

    #[error("VM {0} is not running (start it with `feather start {0}`)")]
    NotRunning(String),

    #[error("VM {0} is running (stop it first with `feather stop {0}`)")]
    Running(String),

    #[error("base {0}: not a directory (give --base an existing root tree)")]
    MissingBase(PathBuf),

    #[error("invalid {what} {value:?}: {why}")]
    InvalidValue {
        what: &'static str,
        value: String,
        why: String,
    },

    #[error("feather must run as root (try `sudo feather ...`)")]
    NotRoot,

    #[error(
        "state root {root}: {folder} {why}; feather acts in a state root as root, and whoever \
         can change a folder on its way or in it could have root write or read any file \
         through it: {advice}",
        advice = untrusted_root_advice(.root, .folder, *.fault)
    )]
    UntrustedRoot {
        root: PathBuf,
        folder: PathBuf,
        why: String,
        /// What is wrong, for the advice.
        fault: RootFault,
    },

    #[error(
        "{lines}; a user may mount a filesystem of theirs over any folder, so feather refuses \
         every state root: {advice}",
        advice = users_mount_anywhere_advice(*.passing)
    )]
    UsersMayMountAnywhere {
        /// Each such fstab line, said ([`feather_sys::fstab::Anywhere`]), `; ` between them.
        lines: String,
        /// Only a passing failure to look made them so: the lines may be fine.
        passing: bool,
    },

    #[error("state of VM {vm} is damaged: {path}: {why}")]
    CorruptState {
        vm: String,
        path: PathBuf,
        why: String,
    },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and each of its causes, joined by ": " as the CLI prints them (anyhow's `{:#}`):
/// for an error that leaves its process as text (a keeper's answer, a migration peer's
/// refusal), where its chain of sources would otherwise be lost. A cause that the text says
/// already (an error whose message quotes its own source) is not said twice.
pub fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let said = next.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = next.source();
    }
    text
}

/// Attaches the path to an I/O error, so that every failure says where it happened.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    }
}

/// What is wrong with a state root's folder ([`Error::UntrustedRoot`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootFault {
    /// The root's own folder (or an entry of it) is not root's alone: to be made root's.
    Own,
    /// A folder above it is someone else's: left alone.
    Above,
    /// A folder on its way is on a filesystem a user mounted (FUSE, an image of theirs), or is
    /// a mount point a user may mount on: what it reports of owners means nothing.
    UsersMount,
    /// The root's folder was not the one looked at when it was opened.
    Replaced,
}

/// What to do while fstab lines let users mount anywhere: change the lines, or, where only
/// looking failed (a mount table that changed meanwhile, an I/O error), run again.
fn users_mount_anywhere_advice(passing: bool) -> &'static str {
    if passing {
        "run the command again; if this recurs, look at why that folder could not be looked at \
         (the fstab line itself may be fine)"
    } else {
        "change each such line so that its mount point's path goes through folders only root \
         can change, on a filesystem known to be local (`/mnt/NAME`), or drop its user option \
         (the only fix where the line's fault is at `/` itself)"
    }
}

/// What to do about a refused root, fitting the folder: the root's own (or an entry of it)
/// may be made root's, that folder alone — never recursively: a root holds its VMs' layers,
/// whose files keep the VMs' owners and modes (a database's, a `/tmp` at 1777, setuid
/// programs), which a `chown -R` would wreck for good; a folder above it is someone else's (a
/// user's home), so the root goes elsewhere.
fn untrusted_root_advice(
    root: &std::path::Path,
    folder: &std::path::Path,
    fault: RootFault,
) -> String {
    let elsewhere = "choose a root whose folders only root can change (the default \
                     /var/lib/feather, or a folder beside it)";
    match fault {
        RootFault::UsersMount => format!(
            "{elsewhere}, on no filesystem a user mounted or may mount; {} stays as it is",
            folder.display()
        ),
        RootFault::Replaced => format!(
            "run the command again; if this recurs, look for what replaces {} (someone who \
             can rename in the folder above it)",
            folder.display()
        ),
        RootFault::Own => format!(
            "{elsewhere}, or make {f} root's and writable by root alone (`chown root: {f}; \
             chmod go-w {f}`, that folder only: never `-R`, which would change the files of \
             the VMs' layers); someone else could change what is in it until now, so look at \
             {r} before you use it again, or make a fresh root",
            f = folder.display(),
            r = root.display()
        ),
        RootFault::Above => format!(
            "{elsewhere}; {} is not the root's own, leave it as it is",
            folder.display()
        ),
    }
}

#[cfg(test)]
mod causes_tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("VM web")]
    struct Outer(#[source] Error);

    /// A refusal of every root for fstab lines tells the admin to change them, unless only
    /// looking failed: then to run again, never to edit a line that may be fine.
    #[test]
    fn fstab_lines_are_to_be_changed_unless_looking_failed() {
        let refusal = |passing| {
            let lines = "/etc/fstab line `a /b` lets users mount (`user`) on …".to_owned();
            Error::UsersMayMountAnywhere { lines, passing }.to_string()
        };
        let (at_fault, passing) = (refusal(false), refusal(true));
        assert!(at_fault.contains("change each such line"), "{at_fault}");
        assert!(passing.contains("run the command again"), "{passing}");
        assert!(!passing.contains("change each such line"), "{passing}");
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let inner = Error::Io {
            path: "/x".into(),
            source: io,
        };
        assert_eq!(causes(&Outer(inner)), "VM web: /x: gone");
    }
}
