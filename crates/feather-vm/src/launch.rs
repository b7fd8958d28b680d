//! The command lines of `feather-keeper`, built by the process that starts it and parsed by the
//! binary (crates/feather/src/bin/feather-keeper.rs), both here, so that the two cannot drift:
//!
//! ```text
//! feather start ──exec──▶ feather-keeper __keeper --state-dir DIR --run-dir DIR --ready-fd FD
//!                                                 [--restore [--netns-fd FD]] [--terminal TTY] NAME
//! init (cloned by the keeper) ──re-executes from inside the VM──▶ feather-keeper __init FD RESUMED
//! ```
//!
//! `RESUMED` is [`Resumed`] as JSON: what init carries across its re-execution.

use std::ffi::{OsStr, OsString};
use std::os::fd::RawFd;
use std::path::PathBuf;

use feather_core::VmName;
use serde::{Deserialize, Serialize};

use crate::workload::Workload;

/// The binary that background keepers (and their VMs' inits) run: installed beside `feather`,
/// and small, since one stays resident per running VM (crates/feather/src/bin/feather-keeper.rs).
pub const KEEPER_PROGRAM: &str = "feather-keeper";

/// The subcommand of [`KEEPER_PROGRAM`] that runs a background keeper.
pub const KEEPER_SUBCOMMAND: &str = "__keeper";

/// The subcommand init re-executes as (of [`KEEPER_PROGRAM`]).
pub const INIT_SUBCOMMAND: &str = "__init";

/// The subcommand that finishes the teardown of a throw-away VM run in the foreground (see
/// `Keeper::hand_off`).
pub const FINISH_SUBCOMMAND: &str = "__finish";

/// What [`KEEPER_PROGRAM`] says when it is run by hand.
pub const USAGE: &str = "feather-keeper keeps a running feather VM; `feather start VM` starts it \
    (usage: feather-keeper __keeper --state-dir DIR --run-dir DIR --ready-fd FD [--restore \
    [--netns-fd FD]] [--terminal TTY] NAME)";

/// Where [`KEEPER_PROGRAM`] is: beside the running `feather` binary.
pub fn program() -> std::io::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name(KEEPER_PROGRAM))
}

/// A background keeper's orders, from `feather start` (or `feather restore`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeeperArgs {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    /// The write end of the pipe on which the keeper reports (crate::boot::KeeperReport).
    pub ready_fd: RawFd,
    /// Restore the VM from its checkpoint instead of booting it.
    pub restore: bool,
    /// A restore's network namespace made ahead by its starter (`feather serve`, while the
    /// VM was still on its way), inherited: used if the checkpoint left the namespace out.
    pub netns_fd: Option<RawFd>,
    /// Where `ask` policy rules ask: the terminal `feather start` ran from.
    pub terminal: Option<PathBuf>,
    pub name: VmName,
}

/// What init carries across its re-execution from inside the VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resumed {
    pub workload: Option<Workload>,
    pub grace_ms: u64,
    /// The VM's seccomp profile, which init enters after its re-execution.
    #[serde(default)]
    pub allow_userns: bool,
    #[serde(default)]
    pub disk_quota: bool,
}

impl Resumed {
    pub fn seccomp(&self) -> feather_confine::seccomp::Profile {
        feather_confine::seccomp::Profile {
            allow_userns: self.allow_userns,
            disk_quota: self.disk_quota,
        }
    }
}

/// A re-executed init's orders: its socket to the keeper, and what it carries over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitArgs {
    pub keeper_fd: RawFd,
    pub resumed: Resumed,
}

/// A teardown's orders: the state root, the folder name the VM will be set aside as
/// (`.removing-<name>-<id>`), and its end of the socket on which the front hands the teardown
/// over (inherited; see [`crate::finisher`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishArgs {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub folder: String,
    pub socket_fd: RawFd,
}

/// What [`KEEPER_PROGRAM`] was started to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Launch {
    Keeper(KeeperArgs),
    Init(InitArgs),
    Finish(FinishArgs),
}

/// A command line of [`KEEPER_PROGRAM`] that is not one this module builds.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{USAGE}")]
    Usage,
    #[error("{option} needs a value; {USAGE}")]
    MissingValue { option: String },
    #[error("unexpected argument {argument:?}; {USAGE}")]
    Unexpected { argument: OsString },
    #[error("{value:?} is not a descriptor number")]
    NotADescriptor { value: OsString },
    #[error("the VM's name {value:?}")]
    Name {
        value: OsString,
        #[source]
        source: feather_core::Error,
    },
    #[error("{INIT_SUBCOMMAND}: what init carries over")]
    Resumed {
        #[source]
        source: serde_json::Error,
    },
}

impl KeeperArgs {
    /// The arguments after the program's name.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            KEEPER_SUBCOMMAND.into(),
            "--state-dir".into(),
            self.state_dir.clone().into(),
            "--run-dir".into(),
            self.run_dir.clone().into(),
            "--ready-fd".into(),
            self.ready_fd.to_string().into(),
        ];
        if self.restore {
            args.push("--restore".into());
        }
        if let Some(fd) = self.netns_fd {
            args.extend(["--netns-fd".into(), fd.to_string().into()]);
        }
        if let Some(terminal) = &self.terminal {
            args.extend(["--terminal".into(), terminal.clone().into()]);
        }
        args.push(self.name.as_str().into());
        args
    }

    fn parse(args: &[OsString]) -> Result<KeeperArgs, LaunchError> {
        let (mut state_dir, mut run_dir, mut ready_fd, mut restore, mut terminal, mut name) =
            (None, None, None, false, None, None);
        let mut netns_fd = None;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .cloned()
                    .ok_or_else(|| LaunchError::MissingValue {
                        option: arg.to_string_lossy().into_owned(),
                    })
            };
            match arg.to_str() {
                Some("--state-dir") => state_dir = Some(value()?.into()),
                Some("--run-dir") => run_dir = Some(value()?.into()),
                Some("--ready-fd") => ready_fd = Some(descriptor(&value()?)?),
                Some("--restore") => restore = true,
                Some("--netns-fd") => netns_fd = Some(descriptor(&value()?)?),
                Some("--terminal") => terminal = Some(value()?.into()),
                Some(text) if name.is_none() && !text.starts_with('-') => {
                    name = Some(text.parse().map_err(|source| LaunchError::Name {
                        value: arg.clone(),
                        source,
                    })?)
                }
                _ => {
                    return Err(LaunchError::Unexpected {
                        argument: arg.clone(),
                    })
                }
            }
        }
        let (Some(state_dir), Some(run_dir), Some(ready_fd), Some(name)) =
            (state_dir, run_dir, ready_fd, name)
        else {
            return Err(LaunchError::Usage);
        };
        Ok(KeeperArgs {
            state_dir,
            run_dir,
            ready_fd,
            restore,
            netns_fd,
            terminal,
            name,
        })
    }
}

impl InitArgs {
    /// The arguments after the program's name.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            INIT_SUBCOMMAND.to_owned(),
            self.keeper_fd.to_string(),
            // A struct of strings and numbers: serialising it cannot fail.
            serde_json::to_string(&self.resumed).unwrap_or_default(),
        ]
    }
}

impl FinishArgs {
    /// The arguments after the program's name.
    pub fn to_args(&self) -> Vec<OsString> {
        vec![
            FINISH_SUBCOMMAND.into(),
            self.state_dir.clone().into(),
            self.run_dir.clone().into(),
            self.folder.clone().into(),
            self.socket_fd.to_string().into(),
        ]
    }
}

impl Launch {
    /// Parses the arguments after the program's name.
    pub fn parse(args: &[OsString]) -> Result<Launch, LaunchError> {
        match args.split_first() {
            Some((command, [state_dir, run_dir, folder, socket_fd]))
                if command == FINISH_SUBCOMMAND =>
            {
                Ok(Launch::Finish(FinishArgs {
                    state_dir: state_dir.into(),
                    run_dir: run_dir.into(),
                    folder: folder.to_string_lossy().into_owned(),
                    socket_fd: descriptor(socket_fd)?,
                }))
            }
            Some((command, rest)) if command == KEEPER_SUBCOMMAND => {
                KeeperArgs::parse(rest).map(Launch::Keeper)
            }
            Some((command, [fd, resumed])) if command == INIT_SUBCOMMAND => {
                let resumed = serde_json::from_slice(resumed.as_encoded_bytes())
                    .map_err(|source| LaunchError::Resumed { source })?;
                Ok(Launch::Init(InitArgs {
                    keeper_fd: descriptor(fd)?,
                    resumed,
                }))
            }
            _ => Err(LaunchError::Usage),
        }
    }
}

fn descriptor(value: &OsStr) -> Result<RawFd, LaunchError> {
    value
        .to_str()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| LaunchError::NotADescriptor {
            value: value.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keeper_args(restore: bool, terminal: Option<&str>) -> KeeperArgs {
        KeeperArgs {
            state_dir: "/var/lib/feather".into(),
            run_dir: "/run/feather".into(),
            ready_fd: 5,
            restore,
            netns_fd: restore.then_some(7),
            terminal: terminal.map(PathBuf::from),
            name: "web".parse().unwrap(),
        }
    }

    #[test]
    fn a_keeper_command_line_reads_back_as_built() {
        for args in [
            keeper_args(false, None),
            keeper_args(true, Some("/dev/pts/3")),
        ] {
            assert_eq!(
                Launch::parse(&args.to_args()).unwrap(),
                Launch::Keeper(args)
            );
        }
    }

    #[test]
    fn an_init_command_line_reads_back_as_built() {
        let args = InitArgs {
            keeper_fd: 3,
            resumed: Resumed {
                workload: Some(Workload {
                    argv: vec!["sh".into(), "-c".into(), "echo 'a b'".into()],
                    env: vec![("A".into(), "1".into())],
                    cwd: Some("/tmp".into()),
                    user: None,
                    inherited: None,
                }),
                grace_ms: 1500,
                allow_userns: true,
                disk_quota: false,
            },
        };
        let line: Vec<OsString> = args.to_args().into_iter().map(OsString::from).collect();
        assert_eq!(Launch::parse(&line).unwrap(), Launch::Init(args));
    }

    #[test]
    fn a_finish_command_line_reads_back_as_built() {
        let args = FinishArgs {
            state_dir: "/var/lib/feather".into(),
            run_dir: "/run/feather".into(),
            folder: ".removing-run-12-0123456789ab".into(),
            socket_fd: 5,
        };
        assert_eq!(
            Launch::parse(&args.to_args()).unwrap(),
            Launch::Finish(args)
        );
    }

    #[test]
    fn a_wrong_command_line_is_named_by_its_variant() {
        let parse = |words: &[&str]| {
            Launch::parse(&words.iter().map(OsString::from).collect::<Vec<_>>()).unwrap_err()
        };
        assert!(matches!(parse(&[]), LaunchError::Usage));
        assert!(matches!(parse(&["start", "web"]), LaunchError::Usage));
        assert!(matches!(
            parse(&["__keeper", "--state-dir"]),
            LaunchError::MissingValue { .. }
        ));
        assert!(matches!(
            parse(&["__keeper", "--ready-fd", "five", "web"]),
            LaunchError::NotADescriptor { .. }
        ));
        assert!(matches!(
            parse(&["__keeper", "--ready-fd", "5", "web", "db"]),
            LaunchError::Unexpected { .. }
        ));
        assert!(matches!(
            parse(&["__keeper", "--state-dir", "/s", "--run-dir", "/r", "web"]),
            LaunchError::Usage
        ));
        assert!(matches!(
            parse(&["__init", "3", "{"]),
            LaunchError::Resumed { .. }
        ));
    }
}
