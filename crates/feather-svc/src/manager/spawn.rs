//! Turning one `Exec*=` command of a unit into a process: the user and groups, the
//! environment (defaults, Environment=, EnvironmentFile=, the directories, NOTIFY_SOCKET,
//! MAINPID), `$VAR` expansion, the working directory, umask, resource limits, and stdout and
//! stderr appended to the unit's log.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
use nix::unistd::{chown, Gid, Group, Uid, User};

use crate::catalog::resolve_program;
use crate::private_tmp::PlannedProcess;
use crate::raw::{self, Credentials, ListenFds, ProcessSetup};
use crate::unit::{DirectoryKind, StandardInput, StandardOutput, Unit};
use crate::words::{self, ExecCommand};

/// The search path services get, as systemd gives it.
const SERVICE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Who a unit's processes run as, resolved from the VM's own /etc/passwd and /etc/group.
/// Why a process of a unit could not be prepared or started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("User={0} does not exist in the VM's /etc/passwd")]
    NoUser(String),
    #[error("Group={0} does not exist in the VM's /etc/group")]
    NoGroup(String),
    #[error("{setting}={rel}: cannot create {}: {error}", path.display())]
    CreateDirectory {
        setting: &'static str,
        rel: String,
        path: PathBuf,
        error: std::io::Error,
    },
    /// `chown` or `chmod` of a `*Directory=` folder.
    #[error("{setting}: {step} {}: {error}", path.display())]
    DirectoryOwner {
        setting: &'static str,
        step: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// The unit's log: `create` its folder, or `open` it.
    #[error("cannot {step} {}: {error}", path.display())]
    Log {
        step: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the unit's log: {0}")]
    LogDescriptor(std::io::Error),
    #[error("EnvironmentFile={}: {error} (prefix it with '-' to make it optional)", path.display())]
    EnvironmentFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{unit}: program {} not found in the VM", program.display())]
    ProgramNotFound { unit: String, program: PathBuf },
    #[error("{unit}: {text:?} contains a NUL byte")]
    NulByte { unit: String, text: String },
    #[error("{unit}: the connection: {error}")]
    Connection { unit: String, error: std::io::Error },
    #[error("WorkingDirectory={} does not exist in the VM (prefix it with '-' to make it optional)", .0.display())]
    WorkingDirectory(PathBuf),
    /// The start of one command (`setting` names the phase: ExecStart, ExecStop, …).
    #[error("{setting} {path}: {error}")]
    Start {
        setting: &'static str,
        path: String,
        error: std::io::Error,
    },
    /// A process of a unit with `PrivateTmp=`, which the VM's spawner makes.
    #[error("{setting} {path}: {why}")]
    PrivateTmp {
        setting: &'static str,
        path: String,
        why: String,
    },
    /// `RestrictAddressFamilies=` could not be made into a seccomp filter.
    #[error("{unit}: RestrictAddressFamilies=: {problem}")]
    Filter { unit: String, problem: String },
    /// `RestrictNamespaces=`, `RestrictSUIDSGID=`, … could not be made into a filter.
    #[error("{unit}: {problem}")]
    Restriction {
        unit: String,
        problem: super::restrictions::RestrictionError,
    },
    /// `ProtectSystem=`, `ReadWritePaths=`, …: a path or the Landlock ruleset.
    #[error("{unit}: {problem}")]
    Filesystem {
        unit: String,
        problem: super::filesystem::FilesystemError,
    },
    /// The manager's own bookkeeping lost the unit's state before its command ran.
    #[error("{unit}: {what} is missing before its command ran (a bug in the service manager)")]
    NotPrepared { unit: String, what: &'static str },
}

#[derive(Clone, Debug)]
pub struct Identity {
    pub name: String,
    pub home: PathBuf,
    pub shell: PathBuf,
    pub credentials: Option<Credentials>,
}

pub fn identity(unit: &Unit) -> Result<Identity, SpawnError> {
    let exec = &unit.exec;
    let root = Identity {
        name: "root".into(),
        home: "/root".into(),
        shell: "/bin/sh".into(),
        credentials: None,
    };
    let group = match &exec.group {
        None => None,
        Some(group) => Some(lookup_group(group)?),
    };
    let Some(user) = &exec.user else {
        return Ok(match group {
            None => root,
            Some(gid) => Identity {
                credentials: Some(Credentials {
                    uid: Uid::from_raw(0),
                    gid,
                    groups: vec![gid],
                }),
                ..root
            },
        });
    };
    let entry = match user.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(user),
    }
    .ok()
    .flatten()
    .ok_or_else(|| SpawnError::NoUser(user.clone()))?;
    let gid = group.unwrap_or(entry.gid);
    let mut groups = std::ffi::CString::new(entry.name.clone())
        .ok()
        .and_then(|name| nix::unistd::getgrouplist(&name, gid).ok())
        .unwrap_or_else(|| vec![gid]);
    for extra in &exec.supplementary_groups {
        let extra = lookup_group(extra)?;
        if !groups.contains(&extra) {
            groups.push(extra);
        }
    }
    Ok(Identity {
        name: entry.name,
        home: entry.dir,
        shell: entry.shell,
        credentials: Some(Credentials {
            uid: entry.uid,
            gid,
            groups,
        }),
    })
}

fn lookup_group(group: &str) -> Result<Gid, SpawnError> {
    match group.parse::<u32>() {
        Ok(gid) => Ok(Gid::from_raw(gid)),
        Err(_) => Group::from_name(group)
            .ok()
            .flatten()
            .map(|g| g.gid)
            .ok_or_else(|| SpawnError::NoGroup(group.to_owned())),
    }
}

/// Makes the unit's Runtime/State/Cache/Logs/ConfigurationDirectory= folders, owned by its
/// user with their modes; returns the variables naming them.
pub fn make_directories(
    unit: &Unit,
    identity: &Identity,
) -> Result<Vec<(String, String)>, SpawnError> {
    let mut vars = Vec::new();
    for kind in DirectoryKind::ALL {
        let dirs = unit.exec.directories(kind);
        if dirs.paths.is_empty() {
            continue;
        }
        let mut full_paths = Vec::new();
        for rel in &dirs.paths {
            let path = Path::new(kind.root()).join(rel);
            fs::create_dir_all(&path).map_err(|error| SpawnError::CreateDirectory {
                setting: kind.setting(),
                rel: rel.clone(),
                path: path.clone(),
                error,
            })?;
            let owner = |step: &'static str, error: std::io::Error| SpawnError::DirectoryOwner {
                setting: kind.setting(),
                step,
                path: path.clone(),
                error,
            };
            if let Some(c) = &identity.credentials {
                chown(&path, Some(c.uid), Some(c.gid)).map_err(|e| owner("chown", e.into()))?;
            }
            fs::set_permissions(&path, fs::Permissions::from_mode(dirs.mode))
                .map_err(|e| owner("chmod", e))?;
            full_paths.push(path.display().to_string());
        }
        vars.push((kind.variable().to_owned(), full_paths.join(":")));
    }
    Ok(vars)
}

/// Removes RuntimeDirectory= folders when a unit stops, as systemd does unless told to keep
/// them.
pub fn remove_runtime_directories(unit: &Unit) {
    if unit.exec.runtime_directory_preserve {
        return;
    }
    for rel in &unit.exec.directories(DirectoryKind::Runtime).paths {
        let _ = fs::remove_dir_all(Path::new("/run").join(rel));
    }
}

/// The log file of a unit, opened for appending.
pub fn open_log(unit: &str) -> Result<File, SpawnError> {
    let dir = Path::new(super::protocol::LOG_DIR);
    fs::create_dir_all(dir).map_err(|error| SpawnError::Log {
        step: "create",
        path: dir.to_path_buf(),
        error,
    })?;
    let path = log_path(unit);
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(&path)
        .map_err(|error| SpawnError::Log {
            step: "open",
            path: path.clone(),
            error,
        })
}

pub fn log_path(unit: &str) -> PathBuf {
    Path::new(super::protocol::LOG_DIR).join(format!("{unit}.log"))
}

/// The environment of every process of `unit`, before per-command additions.
pub fn environment(
    unit: &Unit,
    identity: &Identity,
    directories: &[(String, String)],
) -> Result<Vec<(String, String)>, SpawnError> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), SERVICE_PATH.into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("USER".into(), identity.name.clone()),
        ("LOGNAME".into(), identity.name.clone()),
        ("HOME".into(), identity.home.display().to_string()),
        ("SHELL".into(), identity.shell.display().to_string()),
        ("INVOCATION_ID".into(), invocation_id()),
        // The convention systemd and others use to recognise they run in a container.
        ("container".into(), "feather".into()),
    ];
    env.extend(directories.iter().cloned());
    env.extend(unit.exec.environment.iter().cloned());
    // Files override Environment=, as in systemd; they are read at every start.
    for file in &unit.exec.environment_files {
        match fs::read_to_string(&file.path) {
            Ok(text) => env.extend(words::parse_environment_file(&text)),
            Err(_) if file.optional => {}
            Err(error) => {
                return Err(SpawnError::EnvironmentFile {
                    path: file.path.clone(),
                    error,
                })
            }
        }
    }
    Ok(env)
}

fn invocation_id() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut random) = File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut random, &mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the manager hands one process of a unit beyond its settings.
pub struct Handed<'a> {
    /// Sockets to hand over (socket activation), with their names.
    pub listen: &'a [(RawFd, String)],
    /// The connection of an `Accept=yes` socket, which is also stdin/stdout where the unit
    /// says `StandardInput=socket`/`StandardOutput=socket`.
    pub connection: Option<BorrowedFd<'a>>,
    /// The unit's group's `cgroup.procs` files, kept open by the caller until the process is
    /// spawned.
    pub cgroup_procs: &'a [File],
    /// Its `SystemCallFilter=`, compiled when the unit started.
    pub syscall_filter: Option<&'a [feather_sys::seccomp::Instruction]>,
    /// The calls its `PrivateDevices=`, `ProtectClock=`, … refuse, compiled when it started.
    pub protection_filter: Option<&'a [feather_sys::seccomp::Instruction]>,
    /// `PrivateTmp=`: its folders' name, when the VM's spawner makes this process.
    pub private_tmp: Option<&'a str>,
}

/// One command of a unit, ready to start: as a child of the manager ([`Prepared::into_command`])
/// or, for a unit with `PrivateTmp=`, as a plan the VM's spawner's child carries out
/// ([`Prepared::into_plan`]).
pub struct Prepared {
    pub program: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub stdio: [OwnedFd; 3],
    pub setup: ProcessSetup,
}

impl Prepared {
    pub fn into_command(self) -> Command {
        let [stdin, stdout, stderr] = self.stdio;
        let mut command = Command::new(&self.program);
        let mut argv = self.argv.into_iter();
        if let Some(arg0) = argv.next() {
            std::os::unix::process::CommandExt::arg0(&mut command, arg0);
        }
        command.args(argv).env_clear();
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command.current_dir(&self.cwd);
        command.stdin(stdin);
        command.stdout(stdout);
        command.stderr(stderr);
        raw::install(&mut command, self.setup);
        command
    }

    /// The plan and the descriptors it names, valid while `self` lives.
    pub fn plan(&self) -> (PlannedProcess, Vec<RawFd>) {
        let stdio = [0, 1, 2].map(|i| self.stdio[i].as_raw_fd());
        PlannedProcess::new(
            self.program.display().to_string(),
            self.argv.clone(),
            self.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            self.cwd.display().to_string(),
            stdio,
            &self.setup,
        )
    }
}

/// Builds the process for one command. `env` is the unit's environment plus this command's
/// additions (MAINPID, NOTIFY_SOCKET).
pub fn command(
    unit: &Unit,
    exec: &ExecCommand,
    identity: &Identity,
    env: &[(String, String)],
    log: &File,
    handed: Handed<'_>,
) -> Result<Prepared, SpawnError> {
    let Handed {
        listen,
        connection,
        cgroup_procs,
        syscall_filter,
        protection_filter,
        private_tmp,
    } = handed;
    let program = resolve_program(Path::new("/"), &exec.path).map_err(|program| {
        SpawnError::ProgramNotFound {
            unit: unit.name.to_string(),
            program,
        }
    })?;
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let args: Vec<String> = if exec.no_env_expansion {
        exec.argv[1..].to_vec()
    } else {
        words::expand_variables(&exec.argv[1..], lookup)
    };
    let listen = if listen.is_empty() {
        None
    } else {
        let cstring = |text: &str| {
            CString::new(text).map_err(|_| SpawnError::NulByte {
                unit: unit.name.to_string(),
                text: text.to_owned(),
            })
        };
        let names: Vec<&str> = listen.iter().map(|(_, name)| name.as_str()).collect();
        let mut listen_env: Vec<CString> = env
            .iter()
            .filter(|(k, _)| !k.starts_with("LISTEN_"))
            .map(|(k, v)| cstring(&format!("{k}={v}")))
            .collect::<Result<_, _>>()?;
        listen_env.push(cstring(&format!("LISTEN_FDS={}", listen.len()))?);
        listen_env.push(cstring(&format!("LISTEN_FDNAMES={}", names.join(":")))?);
        let mut argv = vec![cstring(&exec.argv[0])?];
        for arg in &args {
            argv.push(cstring(arg)?);
        }
        Some(ListenFds {
            fds: listen.iter().map(|(fd, _)| *fd).collect(),
            program: cstring(&program.display().to_string())?,
            argv,
            env: listen_env,
        })
    };
    let argv: Vec<String> = std::iter::once(exec.argv[0].clone()).chain(args).collect();
    // `+` runs a command with full privileges: none of the restrictions.
    let restrictions = if exec.full_privileges {
        super::restrictions::Applied::default()
    } else {
        super::restrictions::apply(&unit.exec.restrictions, raw::kernel_has_mdwe()).map_err(
            |problem| SpawnError::Restriction {
                unit: unit.name.to_string(),
                problem,
            },
        )?
    };
    let no_new_privileges =
        !exec.full_privileges && gets_no_new_privileges(unit, syscall_filter.is_some());
    // Without no_new_privs the settings are listed as not applied (see `not_applicable`).
    let landlock = if no_new_privileges {
        super::filesystem::ruleset(unit, private_tmp)
            .map_err(|problem| SpawnError::Filesystem {
                unit: unit.name.to_string(),
                problem,
            })?
            .map(std::sync::Arc::new)
    } else {
        None
    };
    let run_as_root = exec.full_privileges || exec.no_user_change;
    let credentials = if run_as_root {
        None
    } else {
        identity.credentials.clone()
    };
    let cwd = working_directory(unit, identity)?;
    let (stdin, stdout, stderr) = stdio(unit, log, connection)?;
    Ok(Prepared {
        program,
        argv,
        env: env.to_vec(),
        cwd,
        stdio: [stdin, stdout, stderr],
        setup: ProcessSetup {
            credentials,
            umask: unit.exec.umask,
            limits: limits(unit),
            listen,
            cgroup_procs: cgroup_procs.iter().map(|f| f.as_raw_fd()).collect(),
            // `+` runs a command with full privileges: none of these restrictions.
            drop_capabilities: if exec.full_privileges {
                Vec::new()
            } else {
                capabilities_to_drop(unit)
            },
            ambient_capabilities: ambient_capabilities(unit),
            no_new_privileges,
            seccomp: if exec.full_privileges {
                Vec::new()
            } else {
                // SystemCallFilter= last, as systemd installs it: an allow list without
                // seccomp(2) (redis's) would end the process at the next filter's install.
                address_family_filter(unit)?
                    .into_iter()
                    .chain(restrictions.filters)
                    .chain(protection_filter.map(<[_]>::to_vec))
                    .chain(syscall_filter.map(<[_]>::to_vec))
                    .collect()
            },
            memory_deny_write_execute: restrictions.mdwe,
            landlock,
        },
    })
}

/// Whether a process of `unit` (not a `+` command) runs with no_new_privs: `NoNewPrivileges=`,
/// or a setting systemd implies it with for a service without CAP_SYS_ADMIN, which no process
/// of a VM has: the seccomp-based ones feather applies (`syscall_filter`: its
/// `SystemCallFilter=` was compiled), `ProtectKernelTunables=`, `ProtectKernelLogs=`,
/// `PrivateDevices=`, `ProtectKernelModules=`, `ProtectClock=` and `ProtectHostname=`.
pub fn gets_no_new_privileges(unit: &Unit, syscall_filter: bool) -> bool {
    let exec = &unit.exec;
    let families = exec
        .address_families
        .as_ref()
        .is_some_and(|families| !families.denied().is_empty());
    exec.no_new_privileges
        || exec.restrictions.any()
        || exec.protections.any()
        || exec.filesystem.protect_kernel_tunables
        || exec.filesystem.protect_kernel_logs
        || families
        || syscall_filter
}

/// `RestrictAddressFamilies=` as a seccomp filter: `socket()` with a refused family fails with
/// EAFNOSUPPORT, as under systemd; every other call passes.
fn address_family_filter(
    unit: &Unit,
) -> Result<Option<Vec<feather_sys::seccomp::Instruction>>, SpawnError> {
    let Some(families) = &unit.exec.address_families else {
        return Ok(None);
    };
    let denied = families.denied();
    if denied.is_empty() {
        // (An empty list of rules would refuse the call whatever its family.)
        return Ok(None);
    }
    family_program(&denied, true)
        .map(Some)
        .map_err(|problem| SpawnError::Filter {
            unit: unit.name.to_string(),
            problem,
        })
}

/// The program refusing `socket()` with one of the `denied` families (not empty). On x86_64
/// the same call by its x32 number is refused too, which would otherwise pass unfiltered:
/// with `fold_x32`, by clearing the number's x32 bit before the rules
/// (feather_sys::seccomp::fold_x32, as the VM's own filters do); without it, by the rules
/// written again under the x32 number (as before 2026-12-05; the test compares the two).
fn family_program(
    denied: &[i32],
    fold_x32: bool,
) -> Result<Vec<feather_sys::seccomp::Instruction>, String> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    };
    let failed = |problem: seccompiler::BackendError| problem.to_string();
    let rules = denied
        .iter()
        .map(|&family| {
            let condition =
                SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, family as u64)
                    .map_err(failed)?;
            SeccompRule::new(vec![condition]).map_err(failed)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut calls = std::collections::BTreeMap::new();
    #[cfg(target_arch = "x86_64")]
    if !fold_x32 {
        let x32_bit = i64::from(feather_sys::seccomp::X32_SYSCALL_BIT);
        calls.insert(libc::SYS_socket | x32_bit, rules.clone());
    }
    calls.insert(libc::SYS_socket, rules);
    if fold_x32 {
        // (socket has no x32 number of its own; kept for a call added here that has.)
        calls = feather_sys::seccomp::with_x32_twins(calls);
    }
    let arch = std::env::consts::ARCH.try_into().map_err(failed)?;
    let filter = SeccompFilter::new(
        calls,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EAFNOSUPPORT as u32),
        arch,
    )
    .map_err(failed)?;
    let program: seccompiler::BpfProgram = filter.try_into().map_err(failed)?;
    let program = feather_sys::seccomp::from_seccompiler(program);
    if !fold_x32 {
        return Ok(program);
    }
    feather_sys::seccomp::fold_x32(program)
}

/// The capabilities of the manager's bounding set that `CapabilityBoundingSet=` leaves out.
fn capabilities_to_drop(unit: &Unit) -> Vec<caps::Capability> {
    let removed = super::protections::capabilities(&unit.exec.protections);
    let kept = |cap: &caps::Capability| {
        let by_set = unit
            .exec
            .capability_bounding_set
            .as_ref()
            .is_none_or(|kept| kept.contains(&cap.to_string()));
        by_set && !removed.contains(cap)
    };
    caps::read(None, caps::CapSet::Bounding)
        .unwrap_or_default()
        .into_iter()
        .filter(|cap| !kept(cap))
        .collect()
}

/// The capabilities of `AmbientCapabilities=` that the process can hold: those of the
/// manager's bounding set (the VM's) that `CapabilityBoundingSet=` keeps. Raising another fails
/// with EPERM; left out, the program meets the missing privilege itself, as it would in a
/// container without it.
fn ambient_capabilities(unit: &Unit) -> Vec<caps::Capability> {
    let dropped = capabilities_to_drop(unit);
    let bounding = caps::read(None, caps::CapSet::Bounding).unwrap_or_default();
    unit.exec
        .ambient_capabilities
        .iter()
        .filter_map(|name| name.parse::<caps::Capability>().ok())
        .filter(|cap| bounding.contains(cap) && !dropped.contains(cap))
        .collect()
}

/// stdin, stdout and stderr of a process of `unit`, by its Standard*= settings.
fn stdio(
    unit: &Unit,
    log: &File,
    connection: Option<BorrowedFd<'_>>,
) -> Result<(OwnedFd, OwnedFd, OwnedFd), SpawnError> {
    let null = || -> Result<OwnedFd, SpawnError> {
        Ok(OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(SpawnError::LogDescriptor)?
            .into())
    };
    let from_log = || -> Result<OwnedFd, SpawnError> {
        Ok(log.try_clone().map_err(SpawnError::LogDescriptor)?.into())
    };
    let from_connection = || -> Result<Option<OwnedFd>, SpawnError> {
        connection
            .map(|fd| {
                fd.try_clone_to_owned()
                    .map_err(|error| SpawnError::Connection {
                        unit: unit.name.to_string(),
                        error,
                    })
            })
            .transpose()
    };
    let connection_or_null = || -> Result<OwnedFd, SpawnError> {
        match from_connection()? {
            Some(fd) => Ok(fd),
            None => null(),
        }
    };
    let exec = &unit.exec;
    let input_is_socket = exec.standard_input == StandardInput::Socket && connection.is_some();
    let stdin = if input_is_socket {
        connection_or_null()?
    } else {
        null()?
    };
    let output = |setting: StandardOutput, inherited: &dyn Fn() -> Result<OwnedFd, SpawnError>| {
        match setting {
            StandardOutput::Null => null(),
            StandardOutput::Socket => connection_or_null(),
            StandardOutput::Log => from_log(),
            StandardOutput::Inherit => inherited(),
        }
    };
    // stdout inherits stdin when that is the connection (inetd style), else goes to the log.
    let stdout = output(exec.standard_output, &|| {
        if input_is_socket {
            connection_or_null()
        } else {
            from_log()
        }
    })?;
    // stderr inherits what stdout is.
    let stderr = output(exec.standard_error, &|| {
        output(exec.standard_output, &|| {
            if input_is_socket {
                connection_or_null()
            } else {
                from_log()
            }
        })
    })?;
    Ok((stdin, stdout, stderr))
}

fn working_directory(unit: &Unit, identity: &Identity) -> Result<PathBuf, SpawnError> {
    let Some(wd) = &unit.exec.working_directory else {
        return Ok(PathBuf::from("/"));
    };
    let path = if wd.path == Path::new("~") {
        identity.home.clone()
    } else {
        wd.path.clone()
    };
    if path.is_dir() {
        Ok(path)
    } else if wd.optional {
        Ok(PathBuf::from("/"))
    } else {
        Err(SpawnError::WorkingDirectory(path))
    }
}

/// The unit's Limit*= settings as (resource, soft, hard). A hard limit above the manager's own
/// is lowered to it: raising one needs CAP_SYS_RESOURCE, which a VM does not have.
fn limits(unit: &Unit) -> Vec<(Resource, u64, u64)> {
    let mut out = Vec::new();
    for (name, limit) in &unit.exec.limits {
        let Some(resource) = resource(name) else {
            continue;
        };
        let Ok((_, current_hard)) = getrlimit(resource) else {
            continue;
        };
        let hard = limit.hard.unwrap_or(RLIM_INFINITY).min(current_hard);
        let soft = limit.soft.unwrap_or(RLIM_INFINITY).min(hard);
        out.push((resource, soft, hard));
    }
    out
}

fn resource(name: &str) -> Option<Resource> {
    Some(match name {
        "LimitCPU" => Resource::RLIMIT_CPU,
        "LimitFSIZE" => Resource::RLIMIT_FSIZE,
        "LimitDATA" => Resource::RLIMIT_DATA,
        "LimitSTACK" => Resource::RLIMIT_STACK,
        "LimitCORE" => Resource::RLIMIT_CORE,
        "LimitRSS" => Resource::RLIMIT_RSS,
        "LimitNOFILE" => Resource::RLIMIT_NOFILE,
        "LimitAS" => Resource::RLIMIT_AS,
        "LimitNPROC" => Resource::RLIMIT_NPROC,
        "LimitMEMLOCK" => Resource::RLIMIT_MEMLOCK,
        "LimitLOCKS" => Resource::RLIMIT_LOCKS,
        "LimitSIGPENDING" => Resource::RLIMIT_SIGPENDING,
        "LimitMSGQUEUE" => Resource::RLIMIT_MSGQUEUE,
        "LimitNICE" => Resource::RLIMIT_NICE,
        "LimitRTPRIO" => Resource::RLIMIT_RTPRIO,
        "LimitRTTIME" => Resource::RLIMIT_RTTIME,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `RestrictAddressFamilies=` program answers every call the same with the x32 bit
    /// folded as with the rules written twice (before 2026-12-05), in feather_sys's
    /// interpreter: every number below 1024, also with the x32 bit, bit 31 or both; every
    /// family number below 64 (and with high bits) for the numbers, `socket`'s among them.
    #[test]
    fn folding_x32_changes_no_answer_to_socket() {
        let denied = [libc::AF_NETLINK, libc::AF_PACKET, libc::AF_INET6];
        let old = family_program(&denied, false).unwrap();
        // The build's before folding (bab0879), pinned: see restrictions.rs' test.
        assert_eq!(
            feather_sys::seccomp::fingerprint(&old),
            (39, 0x5470_6981_ed9c_ebb1)
        );
        let new = family_program(&denied, true).unwrap();
        #[cfg(target_arch = "x86_64")]
        assert!(new.len() < old.len(), "{} -> {}", old.len(), new.len());
        let mut refused = 0;
        for arch in [0xc000_003e, 0x4000_0003] {
            for native in 0..1024u32 {
                for high in [0, 0x4000_0000, 0x8000_0000, 0xc000_0000] {
                    for family in (0..64u64).chain([u64::MAX, 0xffff_ffff_0000_0010]) {
                        let nr = native | high;
                        let args = [family, 0, 0, 0, 0, 0];
                        let answer = feather_sys::seccomp::evaluate(&old, arch, nr, args);
                        assert!(answer.is_some());
                        assert_eq!(
                            feather_sys::seccomp::evaluate(&new, arch, nr, args),
                            answer,
                            "arch {arch:#x}, nr {nr:#x}, family {family:#x}"
                        );
                        refused += usize::from(
                            answer == Some(libc::SECCOMP_RET_ERRNO | libc::EAFNOSUPPORT as u32),
                        );
                    }
                }
            }
        }
        assert!(refused > 0);
    }
    use caps::Capability::*;

    /// The test runs as root on the host, whose bounding set holds these capabilities (a VM's
    /// holds none of them: there, dropping them is defence in depth).
    #[test]
    fn kernel_protections_leave_the_bounding_set() {
        let bounding = caps::read(None, caps::CapSet::Bounding).unwrap();
        assert!(bounding.contains(&CAP_MKNOD) && bounding.contains(&CAP_SYS_MODULE));
        let mut unit = Unit::new(crate::name::UnitName::parse("probe.service").unwrap());
        assert!(capabilities_to_drop(&unit).is_empty());
        unit.exec.protections.private_devices = true;
        unit.exec.protections.clock = true;
        let dropped = capabilities_to_drop(&unit);
        for cap in [CAP_MKNOD, CAP_SYS_RAWIO, CAP_SYS_TIME, CAP_WAKE_ALARM] {
            assert_eq!(dropped.contains(&cap), bounding.contains(&cap), "{cap}");
        }
        assert!(!dropped.contains(&CAP_SYS_MODULE), "{dropped:?}");
        // With CapabilityBoundingSet= both remove: a protection wins over a kept capability.
        unit.exec.capability_bounding_set =
            Some(["CAP_MKNOD".to_owned(), "CAP_CHOWN".to_owned()].into());
        let dropped = capabilities_to_drop(&unit);
        assert!(dropped.contains(&CAP_MKNOD), "{dropped:?}");
        assert!(dropped.contains(&CAP_SYS_MODULE), "{dropped:?}");
        assert!(!dropped.contains(&CAP_CHOWN), "{dropped:?}");
    }
}
