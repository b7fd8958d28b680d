//! The broker and its share helper (`feather __shuttle-share PLAN`, see [`crate::transfer`]):
//!
//! ```text
//! broker                                   share helper
//!   argv: Plan { version, … } ───────────▶
//!   ◀── Report::Hello { version }            (first, whatever the plan)
//!   ◀── Report::Resolved { items }           (or Failed)
//!   Go { target … } (stdin) ─────────────▶
//!   ◀── Report::Mounted { paths }            (or Failed)
//!   stdin closed ────────────────────────▶   unmounts, exits
//! ```

use serde::{Deserialize, Serialize};

/// Changes whenever a message of this module changes.
pub const VERSION: u32 = 2;

/// What the broker asks the helper to hand over (the helper's argument).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// [`VERSION`] of the broker's build; a plan without one is version 0.
    #[serde(default)]
    pub version: u32,
    /// Host pid of the source VM's init (a child of the keeper that runs the helper)…
    pub source_pid: i32,
    /// …and its start time: a process that reused the pid is not entered.
    pub source_ticks: Option<u64>,
    /// Names the folder under [`crate::transfer::SHARED_IN_VM`]; unique among the target's
    /// hand-overs.
    pub id: String,
    /// Absolute paths in the source, as [`crate::transfer::requested_path`] made them.
    pub items: Vec<String>,
}

/// Where a requested path led in the source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found {
    /// The path with every symlink followed (inside the source's root).
    pub real: String,
    pub folder: bool,
    /// The id of the overlay it is on (`statfs`'s `f_fsid`, which overlayfs derives from the
    /// layer's own UUID): one of the source's layers; None for a file of another filesystem.
    /// The source's stop ends what in the target still holds a file of it (docs/shuttle.md,
    /// "When the source stops").
    pub fsid: Option<u64>,
}

/// The broker's word to the helper after the paths were checked (one JSON line on stdin).
#[derive(Debug, Serialize, Deserialize)]
pub struct Go {
    /// Host pid of the target VM's init, and its start time.
    pub target_pid: i32,
    pub target_ticks: Option<u64>,
    /// Per item, whether it is mounted writable (both rules for a path and its real path
    /// must say rw).
    pub writable: Vec<bool>,
}

/// What the helper reports, one JSON line each on stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Report {
    /// The helper's build, sent before it reads the plan.
    Hello {
        version: u32,
    },
    Resolved {
        items: Vec<Result<Found, ShareFault>>,
    },
    Mounted {
        paths: Vec<String>,
    },
    Failed {
        fault: ShareFault,
    },
}

/// An error number as it crosses the pipe, shown as its description.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Os(pub i32);

impl From<nix::errno::Errno> for Os {
    fn from(errno: nix::errno::Errno) -> Os {
        Os(errno as i32)
    }
}

impl From<&std::io::Error> for Os {
    fn from(error: &std::io::Error) -> Os {
        Os(error.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<&feather_sys::SysError> for Os {
    fn from(error: &feather_sys::SysError) -> Os {
        Os::from(error.errno)
    }
}

impl std::fmt::Display for Os {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(nix::errno::Errno::from_raw(self.0).desc())
    }
}

/// Which VM of a hand-over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    Source,
    Target,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            End::Source => "source",
            End::Target => "target",
        })
    }
}

/// Why the helper could not hand a path over, sent to the broker: in [`Report::Resolved`]
/// for one path (the invocation is refused), in [`Report::Failed`] for the hand-over (it
/// failed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum ShareFault {
    #[error("expected {expected}, received {received}")]
    Protocol { expected: String, received: String },
    #[error("cannot open the source VM's root {path}: {os}")]
    SourceRoot { path: String, os: Os },
    #[error("the {end} VM stopped during the hand-over")]
    Stopped { end: End },
    #[error("{path} does not exist in the source VM")]
    Missing { path: String },
    #[error("{path} leads through a /proc magic link or a symlink loop")]
    Loops { path: String },
    #[error("{path} leads out of the source VM")]
    LeavesVm { path: String },
    #[error("{path}: {os}")]
    Open { path: String, os: Os },
    #[error("{path} is {what}: only regular files and folders are handed over")]
    NotFileOrFolder { path: String, what: String },
    #[error("{path}: cannot tell where it leads: {os}")]
    Unplaced { path: String, os: Os },
    #[error("{path} leads to {real:?}, not a path in the source VM")]
    NotInVm { path: String, real: String },
    #[error("the {end} VM: {os}")]
    Pidfd { end: End, os: Os },
    #[error("cannot open /proc/self/fd: {os}")]
    OwnFds { os: Os },
    #[error("cannot enter the {end} VM's mounts: {os}")]
    Enter { end: End, os: Os },
    #[error("cannot take {path} from the source VM: {os}")]
    Take { path: String, os: Os },
    #[error("cannot make {path} read-only: {os}")]
    Flags { path: String, os: Os },
    #[error("cannot open the target VM's root: {os}")]
    TargetRoot { os: Os },
    #[error("cannot make {path} in the target VM: {os}")]
    Make { path: String, os: Os },
    #[error("cannot open {path} in the target VM: {os}")]
    OpenInTarget { path: String, os: Os },
    #[error("cannot mount at {path} in the target VM: {os}")]
    Mount { path: String, os: Os },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_cross_the_pipe_unchanged() {
        let faults = [
            ShareFault::Missing { path: "/a".into() },
            ShareFault::Enter {
                end: End::Target,
                os: Os(libc::EPERM),
            },
        ];
        for fault in faults {
            let report = Report::Failed {
                fault: fault.clone(),
            };
            let line = serde_json::to_string(&report).unwrap();
            let Report::Failed { fault: back } = serde_json::from_str(&line).unwrap() else {
                panic!("{line}");
            };
            assert_eq!(back, fault);
        }
        assert_eq!(
            ShareFault::Enter {
                end: End::Target,
                os: Os(libc::EPERM)
            }
            .to_string(),
            "cannot enter the target VM's mounts: Operation not permitted"
        );
    }

    #[test]
    fn a_plan_of_an_older_build_is_version_0() {
        let plan: Plan =
            serde_json::from_str(r#"{"source_pid":1,"source_ticks":null,"id":"x","items":[]}"#)
                .unwrap();
        assert_eq!(plan.version, 0);
    }
}
