//! The CRIU driver.
//!
//! feather drives the `criu` command line rather than CRIU's RPC interface (`criu swrk` with
//! protobuf messages over a socketpair). The choice, made while building this: the RPC client
//! the issue points at (the `rust-criu` crate) lacks options feather needs (external mount
//! mapping, `--enable-external-masters`, pre-dump with a parent image), so RPC would have meant a
//! hand-written protobuf client of `rpc.proto`; the command line offers every option of the
//! installed CRIU, its failures are the same text CRIU writes to its log, and the process model
//! is what restore needs anyway (the keeper forks, prepares the mount namespace and cgroup, and
//! execs criu, so that the restored init becomes the keeper's own child). What RPC would add —
//! notifications in the middle of a dump, one criu process for several requests — matters for
//! live migration with pre-dump rounds, which can move to RPC behind this same module.
//!
//! Which CRIU: `$FEATHER_CRIU` if set, else the one `scripts/install-criu` puts at
//! [`INSTALLED`] (Debian 13's criu with its own glibc), else a `criu` on the system.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;

use crate::error::{io_at, MigrateError, Result};

/// The oldest CRIU that works on this kernel: 3.17 fails on kernels >= 6.13 with "Unexpected
/// rt vDSO area bounds".
pub const MIN_VERSION: &str = "4.1";

/// Where `scripts/install-criu` installs its wrapper.
pub const INSTALLED: &str = "/usr/local/lib/feather/criu";

/// Where else a CRIU may be.
const SYSTEM: [&str; 2] = ["/usr/sbin/criu", "/usr/local/sbin/criu"];

/// The log each action writes inside the images folder.
pub const DUMP_LOG: &str = "dump.log";
pub const RESTORE_LOG: &str = "restore.log";

/// Kernel features CRIU probes that matter to feather, and what each is for.
pub const FEATURES: [(&str, &str); 12] = [
    ("mnt_id", "tells which mount an open file is on"),
    ("cgroupns", "the VM's own cgroup namespace"),
    (
        "timens",
        "the VM's clocks keep their values across a restore",
    ),
    ("clone3_set_tid", "restored processes get the same pids"),
    ("pidfd_store", "pids are not reused between pre-dump rounds"),
    (
        "mem_dirty_track",
        "pre-dump rounds copy only changed pages (live migration)",
    ),
    ("pagemap_scan", "fast scan of a process's pages"),
    (
        "uffd-noncoop",
        "lazy restore (pages fetched on first touch)",
    ),
    ("tcp_half_closed", "half-closed TCP connections"),
    (
        "network_lock_nftables",
        "the VM's network frozen with nftables during a dump",
    ),
    ("can_map_vdso", "the vDSO is mapped back where it was"),
    ("seccomp_filters", "seccomp filters of VM processes"),
];

/// A CRIU that runs and is new enough.
#[derive(Clone, Debug)]
pub struct Criu {
    path: PathBuf,
    version: String,
}

/// What `feather check criu` reports about CRIU.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub path: PathBuf,
    pub version: String,
    /// Whether `criu check` says the kernel has what a dump and restore need.
    pub works: bool,
    /// What `criu check` printed.
    pub check_output: String,
    pub features: Vec<Feature>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub purpose: &'static str,
    pub supported: bool,
}

/// A dump of one process tree: the VM's init and everything under it.
#[derive(Clone, Debug)]
pub struct Dump<'a> {
    /// The VM, for messages.
    pub vm: &'a str,
    /// Host pid of the tree's root (the VM's init).
    pub pid: i32,
    pub images: &'a Path,
    /// Keep the VM running after the dump. Otherwise its processes are left stopped, for the
    /// caller to end: a SIGKILL to the VM's init ends them all at once, which takes a fraction
    /// of the time CRIU's own killing of each task does (measured: a dump of a VM holding 64 MB
    /// went from about 650 ms to 350 ms).
    pub leave_running: bool,
    /// Mounts of the VM not to dump but to expect back at restore, as (mount point inside the
    /// VM, key): the VM's layers over other host filesystems, which the restoring side mounts.
    pub external_mounts: &'a [(String, String)],
}

/// A restore of a dumped tree.
#[derive(Clone, Debug)]
pub struct Restore<'a> {
    pub images: &'a Path,
    /// Where the VM's root (its overlay) is mounted in the restoring process's mount namespace.
    pub root: &'a Path,
    /// Where CRIU writes the host pid of the restored init.
    pub pidfile: &'a Path,
    /// The external mounts of the dump, as (key, where the restoring side has mounted it).
    pub external_mounts: &'a [(String, PathBuf)],
    /// veth pairs CRIU makes as it recreates the VM's network namespace, as (the end inside
    /// the VM, the host end, the bridge the host end joins).
    pub veths: &'a [(String, String, String)],
    /// Leave the restored processes stopped (SIGSTOP), for the caller to continue them.
    pub leave_stopped: bool,
}

impl Criu {
    /// Finds a CRIU that runs and is new enough.
    pub fn locate() -> Result<Criu> {
        let candidates: Vec<PathBuf> = match std::env::var_os("FEATHER_CRIU") {
            Some(path) => vec![PathBuf::from(path)],
            None => std::iter::once(INSTALLED)
                .chain(SYSTEM)
                .map(PathBuf::from)
                .collect(),
        };
        let Some(path) = candidates.iter().find(|path| path.is_file()) else {
            return Err(MigrateError::CriuMissing {
                looked: candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                min: MIN_VERSION,
            });
        };
        let output = Command::new(path)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| MigrateError::CriuBroken {
                path: path.clone(),
                why: e.to_string(),
            })?;
        let text = String::from_utf8_lossy(&output.stdout);
        let Some(version) = parse_version(&text) else {
            return Err(MigrateError::CriuBroken {
                path: path.clone(),
                why: format!(
                    "`criu --version` printed no version: {}{}",
                    text.trim(),
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        };
        if !at_least(&version, MIN_VERSION) {
            return Err(MigrateError::CriuTooOld {
                path: path.clone(),
                version,
                min: MIN_VERSION,
            });
        }
        Ok(Criu {
            path: path.clone(),
            version,
        })
    }

    /// A CRIU that [`Criu::locate`] found and checked in another process (the keeper is told
    /// which one by `feather checkpoint`), used without checking it again.
    pub fn checked(path: PathBuf, version: String) -> Criu {
        Criu { path, version }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Asks CRIU whether this kernel has what it needs, and which optional features it has.
    pub fn report(&self) -> Report {
        let check = Command::new(&self.path)
            .arg("check")
            .stdin(Stdio::null())
            .output();
        let (works, check_output) = match check {
            Ok(output) => (
                output.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                )
                .trim()
                .to_owned(),
            ),
            Err(e) => (false, e.to_string()),
        };
        let features = FEATURES
            .iter()
            .map(|&(name, purpose)| Feature {
                name,
                purpose,
                supported: Command::new(&self.path)
                    .args(["check", "--feature", name])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success()),
            })
            .collect();
        Report {
            path: self.path.clone(),
            version: self.version.clone(),
            works,
            check_output,
            features,
        }
    }

    /// Dumps a VM's process tree into `dump.images`. On failure the VM's processes go on
    /// running (CRIU resumes them), and the error carries CRIU's own words, which name the
    /// resource it could not dump.
    pub fn dump(&self, dump: &Dump) -> Result<()> {
        fs::create_dir_all(dump.images).map_err(io_at(dump.images))?;
        let mut args: Vec<OsString> = vec![
            "dump".into(),
            "--tree".into(),
            dump.pid.to_string().into(),
            "--images-dir".into(),
            dump.images.into(),
            "--log-file".into(),
            DUMP_LOG.into(),
        ];
        args.push(if dump.leave_running {
            "--leave-running".into()
        } else {
            "--leave-stopped".into()
        });
        for (mount_point, key) in dump.external_mounts {
            args.push("--external".into());
            args.push(format!("mnt[{mount_point}]:{key}").into());
        }
        args.extend(common_options());
        let status = Command::new(&self.path)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| MigrateError::CriuBroken {
                path: self.path.clone(),
                why: e.to_string(),
            })?;
        if status.success() {
            Ok(())
        } else {
            Err(failure(dump.vm, "checkpoint", &dump.images.join(DUMP_LOG)))
        }
    }

    /// The program and arguments that restore a tree, for the caller to exec once it has put
    /// itself where the VM belongs (its cgroup, a mount namespace with the VM's root mounted).
    /// The restored init becomes a sibling of criu: a child of the process that started it.
    pub fn restore_command(&self, restore: &Restore) -> (PathBuf, Vec<OsString>) {
        let mut args: Vec<OsString> = vec![
            "restore".into(),
            "--images-dir".into(),
            restore.images.into(),
            "--log-file".into(),
            RESTORE_LOG.into(),
            "--root".into(),
            restore.root.into(),
            "--pidfile".into(),
            restore.pidfile.into(),
            "--restore-detached".into(),
            "--restore-sibling".into(),
        ];
        if restore.leave_stopped {
            args.push("--leave-stopped".into());
        }
        for (inside, host_end, bridge) in restore.veths {
            args.push("--external".into());
            args.push(format!("veth[{inside}]:{host_end}@{bridge}").into());
        }
        for (key, path) in restore.external_mounts {
            args.push("--external".into());
            let mut spec = OsString::from(format!("mnt[{key}]:"));
            spec.push(path);
            args.push(spec);
        }
        args.extend(common_options());
        (self.path.clone(), args)
    }
}

/// Options of both dump and restore, and why feather needs each.
fn common_options() -> Vec<OsString> {
    [
        // The keeper owns the VM's cgroup: it makes it with the VM's limits before a restore
        // and runs criu inside it, so CRIU neither dumps nor recreates cgroups.
        "--manage-cgroups=ignore",
        // The VM's /dev devices, its /proc masks and init's own program are bind mounts of host
        // files; CRIU finds them in the host's mount namespace by itself, and binds them again
        // from the same host paths on restore.
        "--ext-mount-map",
        "auto",
        "--enable-external-sharing",
        "--enable-external-masters",
        // Connections inside the VM's network namespace survive.
        "--tcp-established",
        // Services hold flock/POSIX locks on pid files and databases.
        "--file-locks",
    ]
    .into_iter()
    .map(OsString::from)
    .collect()
}

/// The error for a failed dump or restore, with CRIU's own error lines from its log.
pub fn failure(vm: &str, action: &'static str, log: &Path) -> MigrateError {
    let text = fs::read_to_string(log).unwrap_or_default();
    let mut errors: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let (_, message) = line.split_once("Error (")?;
            let message = message.split_once("): ").map_or(message, |(_, m)| m);
            Some(message.trim().to_owned())
        })
        // Noise: CRIU cannot raise its own descriptor limit in some sandboxes, and says so
        // whatever happens next; and the closing line says only that it failed.
        .filter(|m| !m.starts_with("rlimit:") && !m.ends_with("FAILED."))
        .collect();
    errors.dedup();
    errors.truncate(6);
    if let Some(hint) = errors.iter().find_map(|e| hint(e)) {
        errors.insert(0, hint.to_owned());
    }
    if errors.is_empty() {
        errors.push("it exited without saying why".into());
    }
    MigrateError::Criu {
        vm: vm.to_owned(),
        action,
        errors,
        log: log.to_path_buf(),
    }
}

/// What some of CRIU's errors mean for a feather VM, in its user's words.
fn hint(error: &str) -> Option<&'static str> {
    const HINTS: [(&str, &str); 6] = [
        ("Can't get 1:16 opt", "a process of the VM has a TCP or UDP socket, which this CRIU cannot save on Linux 6.16 or later (it asks for SO_PASSCRED, which these kernels refuse for IP sockets; fixed in CRIU after 4.2.1)"),
        ("Can't lookup mount", "a process of the VM holds a file that lies outside the VM's filesystems (opened on the host and passed in); end that process or have it close the file"),
        ("io_uring", "a process of the VM uses io_uring, which CRIU cannot save"),
        ("external socket", "a process of the VM is connected to a unix socket outside the VM, such as the connection of a `feather exec` still running in it (checkpoint once it has ended)"),
        ("is outside of its pid namespace", "a process of the VM belongs to a session or process group that started outside the VM (run it with `setsid`)"),
        ("Unexpected rt vDSO area bounds", "this CRIU is too old for this kernel; run feather's scripts/install-criu"),
    ];
    HINTS
        .iter()
        .find(|(pattern, _)| error.to_lowercase().contains(&pattern.to_lowercase()))
        .map(|(_, hint)| *hint)
}

/// "Version: 4.1.1" → "4.1.1".
fn parse_version(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.trim().strip_prefix("Version:"))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Compares dotted version numbers numerically ("4.10" is newer than "4.9").
fn at_least(version: &str, min: &str) -> bool {
    let parts = |v: &str| -> Vec<u64> {
        v.split(['.', '-'])
            .map(|p| p.parse().unwrap_or(0))
            .collect()
    };
    let (have, need) = (parts(version), parts(min));
    for i in 0..have.len().max(need.len()) {
        let (a, b) = (
            have.get(i).copied().unwrap_or(0),
            need.get(i).copied().unwrap_or(0),
        );
        if a != b {
            return a > b;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_number() {
        assert!(at_least("4.1.1", "4.1"));
        assert!(at_least("4.1", "4.1"));
        assert!(at_least("4.10", "4.9"));
        assert!(!at_least("3.17", "4.1"));
        assert!(!at_least("3.17.1", "4.1"));
    }

    #[test]
    fn version_is_read_from_criu_output() {
        assert_eq!(
            parse_version("Version: 4.1.1\nGitID: v4.1.1\n").as_deref(),
            Some("4.1.1")
        );
        assert_eq!(parse_version("criu: unknown option"), None);
    }

    #[test]
    fn failure_keeps_criu_errors_and_drops_noise() {
        let dir = std::env::temp_dir().join(format!("feather-criu-log-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join(DUMP_LOG);
        fs::write(
            &log,
            "(00.04) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n\
             (00.05) Error (criu/files-reg.c:1790): Can't lookup mount=27 for fd=1 path=/tmp/host-file\n\
             (00.06) Error (criu/cr-dump.c:2111): Dumping FAILED.\n",
        )
        .unwrap();
        let message = failure("db1", "checkpoint", &log).to_string();
        fs::remove_dir_all(&dir).unwrap();
        assert!(
            message.contains("VM db1: CRIU cannot checkpoint it"),
            "{message}"
        );
        assert!(message.contains("path=/tmp/host-file"), "{message}");
        assert!(!message.contains("rlimit"), "{message}");
        assert!(!message.contains("FAILED"), "{message}");
    }
}
