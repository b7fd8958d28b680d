//! Starting a program inside a VM: the last steps every process takes before it becomes the
//! user's program, whether init starts it or `feather exec` does.

use std::ffi::CString;
use std::path::PathBuf;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{execvpe, setgid, setgroups, setuid, Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

/// The search path given to programs in a VM (Debian's default for root).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Exit code when feather itself could not run the command (as `docker exec` uses).
pub const EXIT_CANNOT_EXEC: i32 = 126;

/// Exit code when the command does not exist in the VM (as a shell's).
pub const EXIT_NOT_FOUND: i32 = 127;

/// Why a process could not become its workload.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("no command given")]
    NoCommand,
    #[error("{program}: command not found")]
    NotFound { program: String },
    #[error("{program}: {}", .errno.desc())]
    Exec {
        program: String,
        errno: nix::errno::Errno,
    },
    #[error("{text:?} contains a NUL byte")]
    Nul { text: String },
    #[error(transparent)]
    Account(#[from] crate::accounts::UnknownUser),
    #[error("the capability set")]
    Capabilities(#[from] feather_confine::capabilities::CapabilityError),
    #[error("{call}")]
    Identity {
        call: String,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("cannot give the command the caller's {what}")]
    Inherited {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("working directory {}", .path.display())]
    WorkingDirectory {
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
}

impl WorkloadError {
    /// The exit code of a process that could not become its workload: a missing command is
    /// told apart, as a shell does.
    pub fn exit_code(&self) -> i32 {
        match self {
            WorkloadError::NotFound { .. } => EXIT_NOT_FOUND,
            _ => EXIT_CANNOT_EXEC,
        }
    }
}

/// A program to run inside a VM, and how.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub argv: Vec<String>,
    /// Variables added to (or replacing ones in) the VM's default environment.
    pub env: Vec<(String, String)>,
    /// Working directory inside the VM; `/` (or the user's home) by default.
    pub cwd: Option<PathBuf>,
    /// A user name or numeric uid from the VM's /etc/passwd; root by default.
    pub user: Option<String>,
    /// The caller's process attributes, for a VM made before the call (the pool's): a VM made
    /// for the call gives its command the caller's through its keeper and init already.
    #[serde(default)]
    pub inherited: Option<Inherited>,
}

/// What a program inherits from the process that starts it and a VM's init would otherwise
/// give from whoever made the VM: umask, nice value, CPU affinity, resource limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inherited {
    pub umask: u32,
    pub nice: i32,
    /// The CPUs the process may run on.
    pub cpus: Vec<usize>,
    /// (soft, hard) of each of [`LIMITS`], in that order.
    pub limits: Vec<(u64, u64)>,
}

/// The resource limits a program inherits.
pub const LIMITS: [Resource; 16] = [
    Resource::RLIMIT_AS,
    Resource::RLIMIT_CORE,
    Resource::RLIMIT_CPU,
    Resource::RLIMIT_DATA,
    Resource::RLIMIT_FSIZE,
    Resource::RLIMIT_LOCKS,
    Resource::RLIMIT_MEMLOCK,
    Resource::RLIMIT_MSGQUEUE,
    Resource::RLIMIT_NICE,
    Resource::RLIMIT_NOFILE,
    Resource::RLIMIT_NPROC,
    Resource::RLIMIT_RSS,
    Resource::RLIMIT_RTPRIO,
    Resource::RLIMIT_RTTIME,
    Resource::RLIMIT_SIGPENDING,
    Resource::RLIMIT_STACK,
];

impl Inherited {
    /// This process's: what a command it started would inherit.
    pub fn of_this_process() -> Inherited {
        let umask = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
                u32::from_str_radix(line.trim(), 8).ok()
            })
            .unwrap_or(0o022);
        let cpus = sched_getaffinity(Pid::from_raw(0))
            .map(|set| {
                (0..CpuSet::count())
                    .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
                    .collect()
            })
            .unwrap_or_default();
        let limits = LIMITS
            .iter()
            .map(|&resource| getrlimit(resource).unwrap_or((RLIM_INFINITY, RLIM_INFINITY)))
            .collect();
        Inherited {
            umask,
            nice: feather_sys::process::nice().unwrap_or(0),
            cpus,
            limits,
        }
    }

    /// Makes them this process's, before it becomes the program.
    fn apply(&self) -> Result<(), WorkloadError> {
        let failed = |what: &'static str| {
            move |source: Box<dyn std::error::Error + Send + Sync>| WorkloadError::Inherited {
                what,
                source,
            }
        };
        for (&resource, &(soft, hard)) in LIMITS.iter().zip(&self.limits) {
            setrlimit(resource, soft, hard).map_err(|e| failed("resource limits")(e.into()))?;
        }
        umask(Mode::from_bits_truncate(self.umask));
        feather_sys::process::set_nice(self.nice).map_err(|e| failed("nice value")(e.into()))?;
        if !self.cpus.is_empty() {
            let mut set = CpuSet::new();
            for &cpu in &self.cpus {
                let _ = set.set(cpu);
            }
            sched_setaffinity(Pid::from_raw(0), &set)
                .map_err(|e| failed("CPU affinity")(e.into()))?;
        }
        Ok(())
    }
}

/// What a process inside needs to know to run a workload: the user it becomes, and the
/// environment assembled from defaults, the terminal and the request.
struct Resolved {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
    home: PathBuf,
    env: Vec<CString>,
}

/// The OOM score adjustment of every program init starts (-1000..1000; 0 is a process's own).
pub const WORKLOAD_OOM_SCORE_ADJ: i32 = 500;

/// Turns the calling process, already inside the VM, into the workload. Returns only on
/// failure, saying what could not be done.
pub fn become_workload(workload: &Workload, terminal: Option<&str>) -> WorkloadError {
    match prepare(workload, terminal) {
        Ok(prepared) => prepared.exec(),
        Err(why) => why,
    }
}

/// A process that is its workload in everything but the program: its user, groups, working
/// folder, signals and capabilities set, its arguments and environment ready for the exec.
pub struct Prepared {
    program: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    /// As the user gave it, for an error's message.
    name: String,
    /// The folder asked for (`-w`), else the user's home if it exists, else `/`: entered at
    /// the exec, not before — a process prepared ahead waits while the keeper still hides state
    /// roots registered during the start, and a working folder entered before that hiding
    /// would keep such a root reachable through `.` ([`Prepared::exec`]).
    cwd: Option<PathBuf>,
    home: PathBuf,
}

/// Everything [`become_workload`] does before the exec, in the calling process.
pub fn prepare(workload: &Workload, terminal: Option<&str>) -> Result<Prepared, WorkloadError> {
    let program = workload.argv.first().ok_or(WorkloadError::NoCommand)?;
    // The parent blocked signals to read them from a signalfd; the program must not inherit that.
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    feather_sys::process::reset_signal_dispositions();
    // The VM's init must outlive an out-of-memory kill in the VM's cgroup: after the greedy
    // process is killed the cgroup can still be over its limit while that memory is reclaimed,
    // and the next victim would be the largest process left — init (a few MiB), which ends the
    // VM. Lowering init's score needs CAP_SYS_RESOURCE, which hosts may withhold; raising its
    // children's never does. A VM's programs are therefore also chosen before the host's own
    // on a host-wide shortage (as the kubelet ranks burstable pods).
    let _ = std::fs::write(
        "/proc/self/oom_score_adj",
        WORKLOAD_OOM_SCORE_ADJ.to_string(),
    );
    // Before the capabilities go: a limit may be raised back to the caller's.
    if let Some(inherited) = &workload.inherited {
        inherited.apply()?;
    }
    let resolved = resolve(workload, terminal)?;
    feather_confine::capabilities::reduce_to_default()?;
    let identity = |call: String| move |source| WorkloadError::Identity { call, source };
    // Groups first: once the uid is not 0, the process may no longer change them.
    setgroups(&resolved.groups).map_err(identity("setgroups".into()))?;
    setgid(resolved.gid).map_err(identity(format!("setgid {}", resolved.gid)))?;
    setuid(resolved.uid).map_err(identity(format!("setuid {}", resolved.uid)))?;
    let argv: Vec<CString> = workload
        .argv
        .iter()
        .map(|a| cstring(a))
        .collect::<Result<_, _>>()?;
    Ok(Prepared {
        program: cstring(program)?,
        argv,
        env: resolved.env,
        name: program.clone(),
        cwd: workload.cwd.clone(),
        home: resolved.home,
    })
}

impl Prepared {
    /// Enters the working folder and becomes the program; returns only on failure.
    pub fn exec(self) -> WorkloadError {
        // Like login(1): the home folder if it exists, else the root.
        let cwd = self.cwd.unwrap_or(if self.home.is_dir() {
            self.home
        } else {
            PathBuf::from("/")
        });
        if let Err(source) = nix::unistd::chdir(&cwd) {
            return WorkloadError::WorkingDirectory { path: cwd, source };
        }
        let errno = match execvpe(&self.program, &self.argv, &self.env) {
            Ok(never) => match never {},
            Err(errno) => errno,
        };
        let program = self.name;
        match errno {
            nix::errno::Errno::ENOENT => WorkloadError::NotFound { program },
            errno => WorkloadError::Exec { program, errno },
        }
    }
}

fn resolve(workload: &Workload, terminal: Option<&str>) -> Result<Resolved, WorkloadError> {
    let account = crate::accounts::lookup(workload.user.as_deref())?;
    let groups = crate::accounts::groups(&account)
        .into_iter()
        .map(Gid::from_raw)
        .collect();
    let (uid, gid, home, name) = (
        Uid::from_raw(account.uid),
        Gid::from_raw(account.gid),
        account.home,
        account.name,
    );
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), home.to_string_lossy().into_owned()),
        ("USER".into(), name.clone()),
        ("LOGNAME".into(), name),
        // The convention systemd and others use to recognise they run in a container.
        ("container".into(), "feather".into()),
    ];
    if let Some(term) = terminal {
        env.push(("TERM".into(), term.to_owned()));
    }
    for (key, value) in &workload.env {
        env.retain(|(k, _)| k != key);
        env.push((key.clone(), value.clone()));
    }
    let env = env
        .iter()
        .map(|(k, v)| cstring(&format!("{k}={v}")))
        .collect::<Result<_, _>>()?;
    Ok(Resolved {
        uid,
        gid,
        groups,
        home,
        env,
    })
}

fn cstring(text: &str) -> Result<CString, WorkloadError> {
    CString::new(text).map_err(|_| WorkloadError::Nul { text: text.into() })
}
