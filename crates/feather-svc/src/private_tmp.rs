//! `PrivateTmp=`: what the service manager and the VM's spawner say to each other, and what a
//! process the spawner made does once it is handed to the manager.
//!
//! ```text
//! manager ── SpawnRequest { folder } ──────────────────────────────▶ spawner (init's child,
//!                                                                     CAP_SYS_ADMIN, one recipe)
//!         ◀── Started { pid } + [pidfd, channel]  |  Refused { why }  fork: new mount namespace,
//!                                                                     /tmp and /var/tmp bound
//!                                                                     from the unit's folders,
//!                                                                     the VM's filter and
//!                                                                     capabilities
//! manager ── PlannedProcess + [stdin, stdout, stderr, cgroup.procs…, sockets…, landlock] ──▶ child
//!         ◀── end of the channel (it executed its program)  |  an errno (it did not)
//! ```
//!
//! The request is data only: the name of the unit's folder, which must be one name (no `/`,
//! not `.` or `..`); the spawner binds `/tmp/NAME/tmp` and `/var/tmp/NAME/tmp`, opened beneath
//! `/tmp` and `/var/tmp` without following a link, and nothing else. What the child does next
//! is what any process of the manager does before its program ([`crate::raw::apply`]), with
//! the VM's capabilities: nothing the manager could not do with a process of its own.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::resource::Resource;
use nix::unistd::{Gid, Uid};
use serde::{Deserialize, Serialize};

use crate::raw::{self, Credentials, ListenFds, ProcessSetup};

/// The descriptor at which init holds its end of the spawner's socket, and at which it hands a
/// duplicate to the service client it runs, which hands it to the manager it starts.
pub const SPAWNER_FD: RawFd = 101;

/// The largest message on either channel (a process's environment and its seccomp filters).
pub const MAX_MESSAGE: usize = 512 * 1024;

/// The folders a private `/tmp` and `/var/tmp` are made in, as systemd makes them.
pub const TEMPORARY_ROOTS: [&str; 2] = ["/tmp", "/var/tmp"];

/// The manager asks the spawner for a process whose `/tmp` and `/var/tmp` are the `tmp`
/// folders of `folder` in [`TEMPORARY_ROOTS`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnRequest {
    pub folder: String,
    /// Echoed in the answer: an answer that comes after its asker gave up waiting is told
    /// from the next one's.
    #[serde(default)]
    pub id: u64,
}

/// The spawner's answer to request `id`: the process it made (its pidfd and the channel to it
/// are attached), or why it made none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpawnAnswer {
    Started { id: u64, pid: i32 },
    Refused { id: u64, why: String },
}

impl SpawnAnswer {
    pub fn id(&self) -> u64 {
        match self {
            SpawnAnswer::Started { id, .. } | SpawnAnswer::Refused { id, .. } => *id,
        }
    }
}

/// Why a folder name is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{name:?} is not the name of a unit's private folder: {why}")]
pub struct FolderNameError {
    pub name: String,
    pub why: &'static str,
}

/// A unit's folder is one name in `/tmp` and `/var/tmp`: no `/`, not `.` or `..`, no NUL, at
/// most 255 bytes, and starting as the manager names them (`systemd-private-`).
pub fn check_folder_name(name: &str) -> Result<(), FolderNameError> {
    let refuse = |why| {
        Err(FolderNameError {
            name: name.to_owned(),
            why,
        })
    };
    if name.contains('/') {
        return refuse("it holds a '/'");
    }
    if name == "." || name == ".." {
        return refuse("it names a folder itself or its parent");
    }
    if name.contains('\0') {
        return refuse("it holds a NUL byte");
    }
    if name.len() > 255 {
        return refuse("it is longer than 255 bytes");
    }
    if !name.starts_with(FOLDER_PREFIX) {
        return refuse("it does not start with systemd-private-");
    }
    Ok(())
}

const FOLDER_PREFIX: &str = "systemd-private-";

/// A new folder name for `unit`: `systemd-private-RANDOM-UNIT`, as systemd names them (its
/// random part is 128 bits, so no other process of the VM can guess it beforehand).
pub fn new_folder_name(unit: &str, random: [u8; 16]) -> String {
    let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{FOLDER_PREFIX}{random}-{unit}")
}

/// `ROOT/folder/tmp`: what the unit sees as `ROOT`.
pub fn private_folder(root: &str, folder: &str) -> PathBuf {
    Path::new(root).join(folder).join("tmp")
}

/// A process for the spawner's child to become, sent by the manager with its descriptors in
/// the order [`PlannedProcess::descriptors`] gives.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlannedProcess {
    pub program: String,
    /// With the name the program is called by first.
    pub argv: Vec<String>,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    pub cwd: String,
    pub setup: PlannedSetup,
}

/// [`ProcessSetup`] as data: descriptors by count (they travel beside the message), resources
/// and capabilities by name.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlannedSetup {
    pub credentials: Option<(u32, u32, Vec<u32>)>,
    pub umask: u32,
    /// (index in [`RESOURCES`], soft, hard).
    pub limits: Vec<(usize, u64, u64)>,
    /// (program, argv, env) of a process handed sockets, which executes itself.
    pub listen: Option<(String, Vec<String>, Vec<String>)>,
    pub listen_fds: usize,
    pub cgroup_procs: usize,
    pub drop_capabilities: Vec<String>,
    pub ambient_capabilities: Vec<String>,
    pub no_new_privileges: bool,
    /// Each filter's instructions as (code, jt, jf, k).
    pub seccomp: Vec<Vec<(u16, u8, u8, u32)>>,
    pub memory_deny_write_execute: bool,
    pub landlock: bool,
}

/// The resources a unit's `Limit*=` settings name, by their index on the wire.
const RESOURCES: [Resource; 16] = [
    Resource::RLIMIT_CPU,
    Resource::RLIMIT_FSIZE,
    Resource::RLIMIT_DATA,
    Resource::RLIMIT_STACK,
    Resource::RLIMIT_CORE,
    Resource::RLIMIT_RSS,
    Resource::RLIMIT_NOFILE,
    Resource::RLIMIT_AS,
    Resource::RLIMIT_NPROC,
    Resource::RLIMIT_MEMLOCK,
    Resource::RLIMIT_LOCKS,
    Resource::RLIMIT_SIGPENDING,
    Resource::RLIMIT_MSGQUEUE,
    Resource::RLIMIT_NICE,
    Resource::RLIMIT_RTPRIO,
    Resource::RLIMIT_RTTIME,
];

fn text(value: &CString) -> String {
    value.to_string_lossy().into_owned()
}

impl PlannedProcess {
    /// The plan for a process the manager would start with `setup`, and the descriptors to
    /// send with it: stdin, stdout, stderr, the cgroup files, the sockets, the Landlock ruleset.
    pub fn new(
        program: String,
        argv: Vec<String>,
        env: Vec<String>,
        cwd: String,
        stdio: [RawFd; 3],
        setup: &ProcessSetup,
    ) -> (PlannedProcess, Vec<RawFd>) {
        let mut fds: Vec<RawFd> = stdio.to_vec();
        fds.extend(&setup.cgroup_procs);
        fds.extend(setup.listen.iter().flat_map(|l| l.fds.iter().copied()));
        fds.extend(setup.landlock.iter().map(|l| l.as_raw_fd()));
        let planned = PlannedSetup {
            credentials: setup.credentials.as_ref().map(|c| {
                (
                    c.uid.as_raw(),
                    c.gid.as_raw(),
                    c.groups.iter().map(|g| g.as_raw()).collect(),
                )
            }),
            umask: setup.umask,
            limits: setup
                .limits
                .iter()
                .filter_map(|(r, soft, hard)| {
                    Some((RESOURCES.iter().position(|k| k == r)?, *soft, *hard))
                })
                .collect(),
            listen: setup.listen.as_ref().map(|l| {
                (
                    text(&l.program),
                    l.argv.iter().map(text).collect(),
                    l.env.iter().map(text).collect(),
                )
            }),
            listen_fds: setup.listen.as_ref().map_or(0, |l| l.fds.len()),
            cgroup_procs: setup.cgroup_procs.len(),
            drop_capabilities: setup
                .drop_capabilities
                .iter()
                .map(|c| c.to_string())
                .collect(),
            ambient_capabilities: setup
                .ambient_capabilities
                .iter()
                .map(|c| c.to_string())
                .collect(),
            no_new_privileges: setup.no_new_privileges,
            seccomp: setup
                .seccomp
                .iter()
                .map(|f| f.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect())
                .collect(),
            memory_deny_write_execute: setup.memory_deny_write_execute,
            landlock: setup.landlock.is_some(),
        };
        (
            PlannedProcess {
                program,
                argv,
                env,
                cwd,
                setup: planned,
            },
            fds,
        )
    }

    /// How many descriptors travel with the plan.
    pub fn descriptors(&self) -> usize {
        let s = &self.setup;
        3 + s.cgroup_procs + s.listen_fds + usize::from(s.landlock)
    }
}

/// Why a planned process could not become its program.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the plan is not what the manager sends: {0}")]
    Message(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The spawner's child, in its own mount namespace with the VM's filter and capabilities:
/// receives its plan on `channel` and becomes the unit's program. On failure it sends why, as
/// text, on `channel` (closed on exec: the manager sees its end when the program runs) and
/// exits 127.
pub fn become_planned(channel: OwnedFd) -> ! {
    // Out of the way of the sockets' places (3, 4, …), so that it is open until the exec.
    let channel = match feather_sys::process::move_to_free_fd(channel, LIFTED_FDS - 1) {
        Ok(channel) => channel,
        Err(_) => std::process::exit(127),
    };
    let error = match receive_plan(&channel).and_then(|(plan, fds)| Ok(run_plan(&plan, fds)?)) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let why = error.to_string();
    let _ = feather_sys::fdpass::send(&channel, why.as_bytes(), &[]);
    std::process::exit(127)
}

fn receive_plan(channel: &impl AsFd) -> Result<(PlannedProcess, Vec<OwnedFd>), PlanError> {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    let (length, fds) =
        feather_sys::fdpass::receive(channel, &mut buffer).map_err(std::io::Error::from)?;
    let plan: PlannedProcess =
        serde_json::from_slice(&buffer[..length]).map_err(|e| PlanError::Message(e.to_string()))?;
    if fds.len() != plan.descriptors() {
        return Err(PlanError::Message(format!(
            "{} descriptors came where the plan names {}",
            fds.len(),
            plan.descriptors()
        )));
    }
    Ok((plan, fds))
}

/// Where the received descriptors are moved first: above any socket's place.
const LIFTED_FDS: RawFd = 200;

fn cstring(value: &str) -> Result<CString, std::io::Error> {
    CString::new(value).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

/// Does what std's spawn does in the child, then the manager's hook, then executes.
fn run_plan(
    plan: &PlannedProcess,
    fds: Vec<OwnedFd>,
) -> Result<std::convert::Infallible, std::io::Error> {
    // Above the sockets' places (3, 4, …), so that placing one replaces none of the others.
    let mut lifted = Vec::with_capacity(fds.len());
    for (i, fd) in fds.into_iter().enumerate() {
        lifted.push(
            feather_sys::process::move_to_free_fd(fd, LIFTED_FDS + i as RawFd)
                .map_err(std::io::Error::other)?,
        );
    }
    let mut fds = lifted.into_iter();
    let mut take = || {
        fds.next()
            .ok_or(std::io::Error::from_raw_os_error(libc::EBADF))
    };
    let stdio = [take()?, take()?, take()?];
    let s = &plan.setup;
    let cgroup_procs: Vec<OwnedFd> = (0..s.cgroup_procs)
        .map(|_| take())
        .collect::<Result<_, _>>()?;
    let listen_fds: Vec<OwnedFd> = (0..s.listen_fds)
        .map(|_| take())
        .collect::<Result<_, _>>()?;
    let landlock = if s.landlock { Some(take()?) } else { None };
    for (i, fd) in stdio.iter().enumerate() {
        raw::dup_to(fd.as_raw_fd(), i as RawFd, false)?;
    }
    drop(stdio);
    nix::unistd::chdir(Path::new(&plan.cwd))?;
    feather_sys::process::reset_signal_dispositions();
    let strings = |list: &[String]| {
        list.iter()
            .map(|v| cstring(v))
            .collect::<Result<Vec<_>, _>>()
    };
    let capabilities = |list: &[String]| {
        list.iter()
            .filter_map(|name| name.parse::<caps::Capability>().ok())
            .collect::<Vec<_>>()
    };
    let listen = match &s.listen {
        None => None,
        Some((program, argv, env)) => Some(ListenFds {
            fds: listen_fds.iter().map(|f| f.as_raw_fd()).collect(),
            program: cstring(program)?,
            argv: strings(argv)?,
            env: strings(env)?,
        }),
    };
    let setup = ProcessSetup {
        credentials: s
            .credentials
            .as_ref()
            .map(|(uid, gid, groups)| Credentials {
                uid: Uid::from_raw(*uid),
                gid: Gid::from_raw(*gid),
                groups: groups.iter().map(|g| Gid::from_raw(*g)).collect(),
            }),
        umask: s.umask,
        limits: s
            .limits
            .iter()
            .filter_map(|(i, soft, hard)| Some((*RESOURCES.get(*i)?, *soft, *hard)))
            .collect(),
        listen,
        cgroup_procs: cgroup_procs.iter().map(|f| f.as_raw_fd()).collect(),
        drop_capabilities: capabilities(&s.drop_capabilities),
        ambient_capabilities: capabilities(&s.ambient_capabilities),
        no_new_privileges: s.no_new_privileges,
        seccomp: s
            .seccomp
            .iter()
            .map(|f| {
                f.iter()
                    .map(|&(code, jt, jf, k)| feather_sys::seccomp::Instruction { code, jt, jf, k })
                    .collect()
            })
            .collect(),
        memory_deny_write_execute: s.memory_deny_write_execute,
        landlock: landlock.map(std::sync::Arc::new),
    };
    raw::apply(&setup)?;
    let program = cstring(&plan.program)?;
    let argv = strings(&plan.argv)?;
    let env = strings(&plan.env)?;
    Err(nix::unistd::execve(&program, &argv, &env)
        .map(|never| match never {})
        .unwrap_or_else(std::io::Error::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_name_is_one_name_of_the_managers_making() {
        let name = new_folder_name("redis-server.service", [0xab; 16]);
        assert_eq!(
            name,
            "systemd-private-abababababababababababababababab-redis-server.service"
        );
        assert_eq!(check_folder_name(&name), Ok(()));
        assert_eq!(
            private_folder("/var/tmp", &name),
            Path::new("/var/tmp").join(&name).join("tmp")
        );
        for bad in [
            "systemd-private-x/../../etc",
            "systemd-private-/",
            "..",
            ".",
            "etc",
            "systemd-private-a\0b",
            "",
        ] {
            assert!(check_folder_name(bad).is_err(), "{bad:?} was accepted");
        }
        let long = format!("systemd-private-{}", "a".repeat(250));
        assert!(check_folder_name(&long).is_err());
    }

    #[test]
    fn a_plan_carries_every_setting_and_its_descriptors_in_order() {
        let mut setup = ProcessSetup::plain();
        setup.credentials = Some(Credentials {
            uid: Uid::from_raw(33),
            gid: Gid::from_raw(33),
            groups: vec![Gid::from_raw(33), Gid::from_raw(4)],
        });
        setup.limits = vec![(Resource::RLIMIT_NOFILE, 1024, 4096)];
        setup.cgroup_procs = vec![7, 8];
        setup.drop_capabilities = vec![caps::Capability::CAP_NET_RAW];
        setup.no_new_privileges = true;
        let (plan, fds) = PlannedProcess::new(
            "/bin/true".into(),
            vec!["true".into()],
            vec!["A=1".into()],
            "/".into(),
            [0, 1, 2],
            &setup,
        );
        assert_eq!(fds, vec![0, 1, 2, 7, 8]);
        assert_eq!(plan.descriptors(), 5);
        let back: PlannedProcess =
            serde_json::from_str(&serde_json::to_string(&plan).unwrap()).unwrap();
        assert_eq!(back.setup.credentials, Some((33, 33, vec![33, 4])));
        assert_eq!(back.setup.limits, vec![(6, 1024, 4096)]);
        assert_eq!(back.setup.drop_capabilities, vec!["CAP_NET_RAW".to_owned()]);
        assert!(back.setup.no_new_privileges);
    }
}
