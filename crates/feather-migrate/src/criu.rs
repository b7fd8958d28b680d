//! The CRIU driver.
//!
//! Dumps and restores go through CRIU's RPC interface: `criu swrk <fd>` serves one request on a
//! socket pair (see [`crate::rpc`] for the messages). A dump is a `criu swrk` the keeper starts
//! and asks; for a restore the keeper forks a child that puts itself where the VM belongs (a
//! mount namespace with the VM's root overlay mounted, the VM's cgroup) and execs `criu swrk`
//! there, while the keeper sends the request and gets the restored init's pid in the answer
//! (with `rst_sibling`, that init is the keeper's own child). The options are those the command
//! line would take (`--external mnt[…]`/`veth[…]`, `--ext-mount-map auto`,
//! `--leave-stopped`, …, see `common_options`), and a failure is reported the same way, from CRIU's log, which names
//! what it could not save. `criu --version` and `criu check` still run as commands, for `feather
//! check criu`. The `rust-criu` crate was not used: it builds the request for a criu it starts
//! itself, which a restore into a prepared mount namespace cannot use, and it lacks the
//! external-resource and stop options.
//!
//! Which CRIU: `$FEATHER_CRIU` if set, else the one `scripts/install-criu` puts at
//! [`INSTALLED`] (Debian 13's criu with its own glibc), else a `criu` on the system.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::error::{io_at, MigrateError, Result};
use crate::restore_time::restore_patience;
use crate::rpc;

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
/// CRIU's last notification before it detaches from the restored tasks (`--action-script`'s
/// `pre-resume`).
const PRE_RESUME: &str = "pre-resume";
/// CRIU's notification once every task is restored, none resumed, before a lazy restore's last
/// word to its `lazy-pages` daemon (cr-restore.c: `post-restore`, then
/// `lazy_pages_finish_restore`).
const POST_RESTORE: &str = "post-restore";
pub const LAZY_LOG: &str = "lazy-pages.log";
/// The key a network namespace that CRIU neither dumps nor recreates goes by: dumped as
/// `--external net[<inode>]:<key>`, handed back at restore as `--inherit-fd fd[<n>]:<key>`.
pub const NETNS_KEY: &str = "feather-netns";

/// Where `criu lazy-pages` waits for a lazy restore (CRIU's own name, in the images folder).
pub const LAZY_SOCKET: &str = "lazy-pages.socket";

/// The file, in the images folder, that `criu lazy-pages` writes a byte into (its
/// `--status-fd`) once it listens on [`LAZY_SOCKET`]; empty until then.
pub const LAZY_STATUS: &str = "lazy-pages.status";

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
    /// Whether a migration can be post-copy here, and why (not).
    pub post_copy: PostCopy,
    /// Whether a migration can be pre-copy here (soft-dirty tracking).
    pub pre_copy: bool,
    /// Whether CRIU finds its cache of kernel probes (see [`crate::kdat`]).
    pub kdat: crate::kdat::Cache,
}

/// Whether post-copy (CRIU's lazy pages) works here, and what makes CRIU's page pipes fit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PostCopy {
    /// `fs.pipe-max-size` is at least the 4 MiB CRIU asks for.
    PipesFit { pipe_max_size: u64 },
    /// The shim `scripts/install-criu` preloads caps CRIU's pipe sizes at `fs.pipe-max-size`
    /// (this process may not exceed it: `CAP_SYS_RESOURCE` is withheld); nothing host-wide
    /// changes.
    ShimCapsPipes { pipe_max_size: u64 },
    /// Lazy pages cannot work here.
    Unavailable { why: String },
}

impl PostCopy {
    pub fn available(&self) -> bool {
        !matches!(self, PostCopy::Unavailable { .. })
    }
}

/// The page size CRIU's page pipes grow to (`PIPE_MAX_SIZE` pages of 4 KiB).
const CRIU_PIPE_SIZE: u64 = 4 << 20;

/// Decides [`PostCopy`] from what `criu check --feature` said of userfaultfd, the system's
/// pipe size limit, whether this process may exceed it, and whether the preloaded shim caps
/// pipe sizes.
pub fn post_copy(
    uffd: bool,
    pipe_max_size: Option<u64>,
    capable: bool,
    shim_caps_pipes: bool,
) -> PostCopy {
    let Some(max) = pipe_max_size else {
        return PostCopy::Unavailable {
            why: "/proc/sys/fs/pipe-max-size cannot be read".into(),
        };
    };
    if !uffd {
        PostCopy::Unavailable {
            why: "the kernel lacks userfaultfd (uffd, uffd-noncoop), which lazy restore needs"
                .into(),
        }
    } else if max >= CRIU_PIPE_SIZE || capable {
        PostCopy::PipesFit { pipe_max_size: max }
    } else if shim_caps_pipes {
        PostCopy::ShimCapsPipes { pipe_max_size: max }
    } else {
        PostCopy::Unavailable {
            why: format!(
                "CRIU sizes its page pipes to 4 MiB, above fs.pipe-max-size ({max} bytes), which \
                 needs CAP_SYS_RESOURCE; run feather's scripts/install-criu, whose shim caps them"
            ),
        }
    }
}

/// Whether this process may size pipes past `fs.pipe-max-size` (`CAP_SYS_RESOURCE` in its
/// effective set).
fn capable_of_big_pipes() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// Whether the CRIU at `path` is the wrapper of `scripts/install-criu` preloading a shim that
/// caps pipe sizes (it names the limit's file).
fn shim_caps_pipes(path: &Path) -> bool {
    let Ok(wrapper) = fs::read_to_string(path) else {
        return false;
    };
    let Some(shim) = wrapper
        .split_whitespace()
        .skip_while(|w| *w != "--preload")
        .nth(1)
    else {
        return false;
    };
    fs::read(shim).is_ok_and(|bytes| {
        let needle = b"/proc/sys/fs/pipe-max-size";
        bytes.windows(needle.len()).any(|w| w == needle)
    })
}

fn pipe_max_size() -> Option<u64> {
    fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

/// Where the receiver of a post-copy migration reaches the sender's relay to its page server
/// (the memory a lazy dump kept back): an address and a port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageServer {
    pub address: String,
    pub port: u16,
}

/// The pages of a dump, from its `pagemap-<pid>.img` images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DumpStats {
    /// Pages written into the images (they travel with the archive).
    pub pages_written: u64,
    /// Pages kept back for the page server (post-copy: they follow after the restore).
    pub pages_lazy: u64,
}

/// pagemap_entry (images/pagemap.proto).
#[derive(Clone, PartialEq, prost::Message)]
struct PagemapEntry {
    #[prost(uint32, optional, tag = "2")]
    compat_nr_pages: Option<u32>,
    #[prost(uint32, optional, tag = "4")]
    flags: Option<u32>,
    #[prost(uint64, optional, tag = "5")]
    nr_pages: Option<u64>,
}

/// `PE_LAZY` and `PE_PRESENT` of criu/include/pagemap.h.
const PE_LAZY: u32 = 1 << 1;
const PE_PRESENT: u32 = 1 << 2;

/// Counts the pages of a dump in `images`: every `pagemap-<pid>.img` is two magic words, then
/// records of a 4-byte length and a message: a pagemap_head, then pagemap_entry ones. (CRIU's
/// own `stats-dump` counts none of them on this kernel's scan of pages.)
pub fn dump_stats(images: &Path) -> Option<DumpStats> {
    use prost::Message;
    let mut stats = DumpStats::default();
    for entry in fs::read_dir(images).ok()?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(pid) = name
            .strip_prefix("pagemap-")
            .and_then(|n| n.strip_suffix(".img"))
        else {
            continue;
        };
        if pid.parse::<u32>().is_err() {
            continue;
        }
        let bytes = fs::read(entry.path()).ok()?;
        let mut at = 8;
        let mut first = true;
        while let Some(length) = bytes.get(at..at + 4) {
            let length = u32::from_le_bytes(length.try_into().ok()?) as usize;
            let record = bytes.get(at + 4..at + 4 + length)?;
            at += 4 + length;
            if std::mem::take(&mut first) {
                continue;
            }
            let record = PagemapEntry::decode(record).ok()?;
            let pages = record
                .nr_pages
                .unwrap_or(u64::from(record.compat_nr_pages.unwrap_or(0)));
            // Private anonymous pages are marked lazy in every dump; only a lazy dump leaves
            // them out of the images (not present).
            let flags = record.flags.unwrap_or(PE_PRESENT);
            if flags & PE_PRESENT != 0 {
                stats.pages_written += pages;
            } else if flags & PE_LAZY != 0 {
                stats.pages_lazy += pages;
            }
        }
    }
    Some(stats)
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
    /// Mounts of the VM not to dump at all, by mount point inside the VM: the empty tmpfs
    /// hiding state roots, which the restoring side mounts anew for the roots of its host
    /// (a root removed since would leave CRIU no folder to mount on).
    pub skipped_mounts: &'a [String],
    /// Post-copy: keep private memory back and serve it, once the rest is dumped, on this
    /// connected stream socket (CRIU's `--ps-socket`), whose other end the caller hands to
    /// whoever fetches the pages. Never a listening socket: CRIU 4.1's page server would listen
    /// on every address of its network namespace (it takes only the port of a lazy dump's
    /// `ps`) and serve the first connection, whoever made it.
    pub lazy: Option<BorrowedFd<'a>>,
    /// The VM's freezer group (`--freeze-cgroup`): CRIU freezes it before it seizes the tasks,
    /// so none forks out of reach of the one-by-one ptrace seize, and leaves it as it found
    /// it — a group frozen before the dump stays frozen after a `leave_running` one.
    pub freeze_cgroup: Option<&'a Path>,
    /// The inode of the tree's network namespace, if CRIU is not to dump it (its content is
    /// known: the restoring side makes it anew and hands it over, see [`Restore::netns`]).
    /// CRIU's own network lock (iptables rules inside the namespace) is skipped for it: the
    /// caller locks it, if it must, when told [`DumpNote::NetworkLock`].
    pub external_netns: Option<u64>,
    /// For tests only: name a configuration file that does not exist in place of the one that
    /// gives CRIU the page server's connection, as a CRIU that could not read it sees it.
    pub config_missing: bool,
}

/// What CRIU tells the caller of a dump while it runs (its action scripts, over RPC). The
/// caller's answer to each is whether the dump goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpNote {
    /// The tasks are seized and nothing of them is dumped yet: lock the network (`network-lock`).
    NetworkLock,
    /// Everything but lazy memory is dumped (`post-dump`; a lazy dump serves its memory after).
    Images,
    /// A lazy dump's page server is about to serve its connection ([`Dump::lazy`]): hand the
    /// other end to the fetcher now (`status-ready`, after [`DumpNote::Images`]; every CRIU
    /// since 3.15 sends it, and feather needs 4.1).
    PageServer,
    /// The tasks go on (a failed dump, or one that leaves them running): let the network
    /// through again (`network-unlock`).
    NetworkUnlock,
}

impl DumpNote {
    fn of_script(script: &str) -> Option<DumpNote> {
        match script {
            "network-lock" => Some(DumpNote::NetworkLock),
            "post-dump" => Some(DumpNote::Images),
            "status-ready" => Some(DumpNote::PageServer),
            "network-unlock" => Some(DumpNote::NetworkUnlock),
            _ => None,
        }
    }
}

/// A restore of a dumped tree.
#[derive(Clone, Debug)]
pub struct Restore<'a> {
    pub images: &'a Path,
    /// Where the VM's root (its overlay) is mounted in the restoring process's mount namespace.
    pub root: &'a Path,
    /// The external mounts of the dump, as (key, where the restoring side has mounted it).
    pub external_mounts: &'a [(String, PathBuf)],
    /// veth pairs CRIU makes as it recreates the VM's network namespace, as (the end inside
    /// the VM, the host end, the bridge the host end joins).
    pub veths: &'a [(String, String, String)],
    /// Leave the restored processes stopped (SIGSTOP), for the caller to continue them.
    pub leave_stopped: bool,
    /// Post-copy: memory comes from the `criu lazy-pages` daemon listening in the images
    /// folder ([`Criu::lazy_pages`]).
    pub lazy: bool,
    /// The network namespace for a tree dumped with [`Dump::external_netns`]: a descriptor
    /// the process running criu holds (open across its exec).
    pub netns: Option<i32>,
}

/// Where the version of the last CRIU checked is remembered between processes, with its path
/// and modification time: `feather checkpoint` and `restore` then run no `criu --version`
/// (10–100 ms here) before CRIU itself. A CRIU replaced has another time and is checked anew.
const VERSION_CACHE: &str = "/run/feather-criu.version";

/// The line [`VERSION_CACHE`] holds for `path` changed at `modified`.
fn version_key(path: &Path, modified: Option<std::time::SystemTime>) -> Option<String> {
    let since = modified?.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(format!("{} {}", path.display(), since.as_nanos()))
}

fn remembered_version(path: &Path, modified: Option<std::time::SystemTime>) -> Option<String> {
    let key = version_key(path, modified)?;
    let text = fs::read_to_string(VERSION_CACHE).ok()?;
    let (line, version) = text.trim_end().rsplit_once('\n')?;
    (line == key && at_least(version, MIN_VERSION)).then(|| version.to_owned())
}

fn remember_version(path: &Path, modified: Option<std::time::SystemTime>, version: &str) {
    let Some(key) = version_key(path, modified) else {
        return;
    };
    let partial = format!("{VERSION_CACHE}.{}", std::process::id());
    if fs::write(&partial, format!("{key}\n{version}\n")).is_ok() {
        let _ = fs::rename(&partial, VERSION_CACHE);
    }
    let _ = fs::remove_file(&partial);
}

/// The CRIU [`Criu::locate`] found in this process, with the file's modification time.
type Located = Option<(PathBuf, Option<std::time::SystemTime>, Criu)>;
static LOCATED: std::sync::Mutex<Located> = std::sync::Mutex::new(None);

impl Criu {
    /// Finds a CRIU that runs and is new enough.
    pub fn locate() -> Result<Criu> {
        let path = &Criu::find()?;
        // Asked once per process and file: `criu --version` through the wrapper takes 10–100 ms
        // here, and a migration asks several times while its VM is frozen.
        let modified = fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut known = LOCATED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((at, when, criu)) = known.as_ref() {
            if at == path && *when == modified {
                crate::kdat::prepare(path, &criu.version);
                return Ok(criu.clone());
            }
        }
        let criu = match remembered_version(path, modified) {
            Some(version) => {
                crate::kdat::prepare(path, &version);
                Criu {
                    path: path.clone(),
                    version,
                }
            }
            None => {
                let criu = Criu::check(path)?;
                remember_version(path, modified, &criu.version);
                criu
            }
        };
        *known = Some((path.clone(), modified, criu.clone()));
        Ok(criu)
    }

    /// The CRIU [`Criu::locate`] would find, without running it: for a process whose starter
    /// located and checked it just before (a keeper restoring a VM; a restore is asked only
    /// once `feather restore` or `serve` has found a CRIU that works).
    pub fn located_by_starter() -> Result<Criu> {
        Ok(Criu {
            path: Criu::find()?,
            version: String::new(),
        })
    }

    /// The first CRIU file where one may be (`$FEATHER_CRIU`, the installed wrapper, the
    /// system's).
    fn find() -> Result<PathBuf> {
        let candidates: Vec<PathBuf> = match std::env::var_os("FEATHER_CRIU") {
            Some(path) => vec![PathBuf::from(path)],
            None => std::iter::once(INSTALLED)
                .chain(SYSTEM)
                .map(PathBuf::from)
                .collect(),
        };
        match candidates.iter().find(|path| path.is_file()) {
            Some(path) => Ok(path.clone()),
            None => Err(MigrateError::CriuMissing {
                looked: candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                min: MIN_VERSION,
            }),
        }
    }

    /// Runs `path --version` and checks what it says.
    fn check(path: &Path) -> Result<Criu> {
        let path = &path.to_path_buf();
        let output = feather_sys::process::command(path)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| MigrateError::CriuUnreachable {
                path: path.clone(),
                source,
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
        // Spares every CRIU call its kernel probing (100–200 ms here).
        crate::kdat::prepare(path, &version);
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

    /// Whether `criu check --feature NAME` passes.
    pub fn has_feature(&self, name: &str) -> bool {
        feather_sys::process::command(&self.path)
            .args(["check", "--feature", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Whether post-copy works with this CRIU here (see [`PostCopy`]).
    pub fn post_copy(&self) -> PostCopy {
        post_copy(
            self.has_feature("uffd-noncoop"),
            pipe_max_size(),
            capable_of_big_pipes(),
            shim_caps_pipes(&self.path),
        )
    }

    /// Asks CRIU whether this kernel has what it needs, and which optional features it has.
    pub fn report(&self) -> Report {
        let check = feather_sys::process::command(&self.path)
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
        let features: Vec<Feature> = FEATURES
            .iter()
            .map(|&(name, purpose)| Feature {
                name,
                purpose,
                supported: self.has_feature(name),
            })
            .collect();
        let has = |name: &str| features.iter().any(|f| f.name == name && f.supported);
        let post_copy = post_copy(
            has("uffd-noncoop"),
            pipe_max_size(),
            capable_of_big_pipes(),
            shim_caps_pipes(&self.path),
        );
        let pre_copy = has("mem_dirty_track");
        Report {
            path: self.path.clone(),
            version: self.version.clone(),
            works,
            check_output,
            features,
            post_copy,
            pre_copy,
            kdat: crate::kdat::prepare(&self.path, &self.version),
        }
    }

    /// Dumps a VM's process tree into `dump.images`, through CRIU's RPC (`criu swrk`). On
    /// failure the VM's processes go on running (CRIU resumes them), and the error carries
    /// CRIU's own words from its log, which name the resource it could not dump.
    /// `on_note` hears what CRIU says while it dumps ([`DumpNote`]): among them, when the
    /// images are written (before a lazy dump serves its memory, which it does until the
    /// receiver has every page). Its `false` fails the dump.
    ///
    /// CRIU ends (SIGKILL) with the thread calling this, however that ends: a keeper killed
    /// mid-dump took its VM with it (its init's parent death signal), and the CRIU it left
    /// dumped a tree that was gone, or, post-copy, waited in its page server's `accept` for
    /// good. So the caller calls this from its main thread (the keeper's, which serves its VM
    /// for its whole life; a debug build checks it).
    pub fn dump(&self, dump: &Dump, on_note: &mut dyn FnMut(DumpNote) -> bool) -> Result<()> {
        // The death signal follows the forking thread: from any other, CRIU would end with
        // that thread, maybe mid-dump.
        debug_assert_eq!(
            nix::unistd::gettid(),
            nix::unistd::getpid(),
            "a VM's dump must be started from the keeper's main thread"
        );
        fs::create_dir_all(dump.images).map_err(io_at(dump.images))?;
        let images = fs::File::open(dump.images).map_err(io_at(dump.images))?;
        let config = dump
            .lazy
            .map(page_server_socket_config)
            .transpose()
            .map_err(|e| self.broken(e))?;
        // Held until CRIU has exited: a CRIU that did not read its configuration file would
        // listen on this port, and cannot (see `held_port`).
        let held = dump
            .lazy
            .map(|_| held_port())
            .transpose()
            .map_err(|e| self.broken(e))?;
        let config_file = match dump.config_missing {
            true => config
                .as_ref()
                .map(|_| "/nonexistent/feather-criu-ps.conf".to_owned()),
            false => config.as_ref().map(|file| proc_self_fd(file.as_fd())),
        };
        let opts = rpc::Opts {
            images_dir_fd: images.as_raw_fd(),
            pid: Some(dump.pid),
            log_file: Some(DUMP_LOG.into()),
            // Otherwise its processes are left stopped, for the caller to end (see Dump).
            leave_running: Some(dump.leave_running),
            external: dump
                .external_mounts
                .iter()
                .map(|(mount_point, key)| format!("mnt[{mount_point}]:{key}"))
                .chain(
                    dump.external_netns
                        .map(|inode| format!("net[{inode}]:{NETNS_KEY}")),
                )
                .collect(),
            skip_mnt: dump.skipped_mounts.to_vec(),
            lazy_pages: dump.lazy.map(|_| true),
            // CRIU's RPC takes `ps.fd` from a restore only; its configuration file, read after
            // the request's options (and overriding them), gives it to a dump too.
            config_file,
            ps: held.as_ref().map(|(_, port)| rpc::PageServerInfo {
                port: Some(i32::from(*port)),
            }),
            notify_scripts: Some(true),
            freeze_cgroup: dump.freeze_cgroup.map(|dir| dir.display().to_string()),
            // CRIU's lock puts iptables rules into the namespace and takes them out (two
            // programs each way), and the restore, which takes the dump's method, would try to
            // take out rules its new namespace never had. A namespace with loopback only needs
            // no lock (nothing reaches it; every process in it is seized); the caller locks
            // one with a link outside when told (DumpNote::NetworkLock).
            network_lock: dump.external_netns.map(|_| rpc::NetworkLock::Skip as i32),
            ..common_options()
        };
        let ends = Ends::WithStartingThread;
        let given: Vec<BorrowedFd> = config.iter().map(AsFd::as_fd).chain(dump.lazy).collect();
        let log = dump.images.join(DUMP_LOG);
        self.dump_notified(dump.vm, opts, &given, &log, ends, on_note)
    }

    /// A dump with options the caller chose (feather-oci maps runc's flags onto them, starting
    /// from [`common_options`]); `opts.images_dir_fd` (and `work_dir_fd`) must stay open until
    /// it returns. `log` is where CRIU's log lands, for the error's words.
    /// CRIU outlives its caller here (as runc's does): it left a container it froze (its
    /// `freeze_cgroup`) as it found it only if it finishes.
    pub fn dump_with(&self, name: &str, opts: rpc::Opts, log: &Path) -> Result<()> {
        self.dump_notified(name, opts, &[], log, Ends::ByItself, &mut |_| true)
    }

    fn dump_notified(
        &self,
        name: &str,
        opts: rpc::Opts,
        also: &[BorrowedFd],
        log: &Path,
        ends: Ends,
        on_note: &mut dyn FnMut(DumpNote) -> bool,
    ) -> Result<()> {
        let mut channel = rpc::Channel::new().map_err(|e| self.broken(e))?;
        let mut criu = feather_sys::process::command(&self.path);
        criu.arg("swrk")
            .arg(channel.criu_end().unwrap_or(-1).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let given: Vec<BorrowedFd> = channel
            .criu_fd()
            .into_iter()
            .chain(also.iter().copied())
            .collect();
        feather_sys::process::pass_only(&mut criu, &given);
        if ends == Ends::WithStartingThread {
            feather_sys::process::end_with_starting_thread(&mut criu);
        }
        let mut criu = criu.spawn().map_err(|e| self.broken(e))?;
        channel.criu_started();
        let answer = channel.call_notified(
            &rpc::Request {
                kind: rpc::ReqType::Dump as i32,
                opts: Some(opts),
                notify_success: None,
            },
            &mut |script| DumpNote::of_script(script).is_none_or(&mut *on_note),
            None,
        );
        let _ = criu.wait();
        match answer {
            Ok(answer) if answer.success => Ok(()),
            _ => Err(failure(name, "checkpoint", log)),
        }
    }

    /// A restore through CRIU's RPC. The caller execs [`RestoreCall::program`] in a child once
    /// it has put that child where the VM belongs (its cgroup, a mount namespace with the VM's
    /// root mounted), keeping [`RestoreCall::criu_end`] open, and then calls
    /// [`RestoreCall::restore`] in the parent. The restored init becomes a sibling of criu: a
    /// child of the caller.
    pub fn restore_call(&self, restore: &Restore) -> Result<RestoreCall> {
        let images = fs::File::open(restore.images).map_err(io_at(restore.images))?;
        let mut external: Vec<String> = restore
            .veths
            .iter()
            .map(|(inside, host_end, bridge)| format!("veth[{inside}]:{host_end}@{bridge}"))
            .collect();
        external.extend(
            restore
                .external_mounts
                .iter()
                .map(|(key, path)| format!("mnt[{key}]:{}", path.display())),
        );
        let opts = rpc::Opts {
            images_dir_fd: images.as_raw_fd(),
            log_file: Some(RESTORE_LOG.into()),
            root: Some(restore.root.display().to_string()),
            rst_sibling: Some(true),
            leave_stopped: restore.leave_stopped.then_some(true),
            lazy_pages: restore.lazy.then_some(true),
            external,
            inherit_fd: restore
                .netns
                .map(|fd| rpc::InheritFd {
                    key: NETNS_KEY.into(),
                    fd,
                })
                .into_iter()
                .collect(),
            ..common_options()
        };
        self.restore_call_with(images, opts, restore.images.join(RESTORE_LOG))
    }

    /// A restore with options the caller chose (see [`Criu::dump_with`]): `images` is the
    /// descriptor `opts.images_dir_fd` names, kept open until the restore is done.
    pub fn restore_call_with(
        &self,
        images: fs::File,
        opts: rpc::Opts,
        log: PathBuf,
    ) -> Result<RestoreCall> {
        let channel = rpc::Channel::new().map_err(|e| self.broken(e))?;
        let args = vec![
            OsString::from("swrk"),
            channel.criu_end().unwrap_or(-1).to_string().into(),
        ];
        Ok(RestoreCall {
            program: self.path.clone(),
            args,
            channel,
            images,
            request: rpc::Request {
                kind: rpc::ReqType::Restore as i32,
                opts: Some(opts),
                notify_success: None,
            },
            log,
            post_restore: None,
        })
    }

    /// Post-copy, on the receiver: starts `criu lazy-pages`, which listens on
    /// [`LAZY_SOCKET`] in `images` for the restore's userfaultfds and fetches their pages
    /// through `page_server` (its end of the socket pair whose other end the tunnel to the
    /// sender's page server holds: `--ps-socket`, which CRIU 4.1.1's lazy-pages daemon takes
    /// for its page server connection instead of connecting anywhere), on demand and in the
    /// background, until it has them all; it then exits 0. Returns at once: the restore waits
    /// until it listens ([`await_lazy_pages`]) while the rest of it is prepared meanwhile.
    ///
    /// The daemon ends (SIGKILL) when the thread calling this ends, however it ends: its pages
    /// come through that process (its tunnel holds `page_server`'s peer), and a restore that
    /// never connects would leave it waiting in `accept` for good, adopted by the machine's
    /// reaper.
    /// So the caller calls this from its main thread (serve's, which lives for the whole
    /// migration; a debug build checks it). Started without `--daemon`, CRIU does not fork: the
    /// child returned is the daemon.
    ///
    /// It says when it listens by writing a byte into [`LAZY_STATUS`] (`--status-fd`, written by
    /// CRIU's `status_ready` after its socket's `listen`): the socket file itself appears at its
    /// `bind`, before the `listen`, and a restore connecting in between is refused ("uffd:
    /// connect to lazy-pages.socket failed: Connection refused", seen under load).
    pub fn lazy_pages(
        &self,
        images: &Path,
        page_server: BorrowedFd,
    ) -> Result<std::process::Child> {
        // The death signal follows the forking thread: from any other, the daemon would end
        // with that thread, which may be long before the restore has every page.
        debug_assert_eq!(
            nix::unistd::gettid(),
            nix::unistd::getpid(),
            "criu lazy-pages must be started from the main thread"
        );
        let _ = fs::remove_file(images.join(LAZY_SOCKET));
        // Made anew, never through what stood at that name (create_new follows no symlink).
        let status_path = images.join(LAZY_STATUS);
        let _ = fs::remove_file(&status_path);
        let status = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&status_path)
            .map_err(io_at(&status_path))?;
        let mut command = std::process::Command::new(&self.path);
        feather_sys::process::pass_only(
            &mut command,
            &[std::os::fd::AsFd::as_fd(&status), page_server],
        );
        feather_sys::process::end_with_starting_thread(&mut command);
        command
            .arg("lazy-pages")
            .args(["--status-fd", &status.as_raw_fd().to_string()])
            // Its number is kept across the exec (see `pass_only`).
            .arg("--page-server")
            .args(["--ps-socket", &page_server.as_raw_fd().to_string()])
            .arg("--images-dir")
            .arg(images)
            .args(["--log-file", LAZY_LOG])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| self.broken(e))
    }

    fn broken(&self, source: std::io::Error) -> MigrateError {
        MigrateError::CriuUnreachable {
            path: self.path.clone(),
            source,
        }
    }
}

/// Whether a dump's CRIU ends with the thread that started it ([`Criu::dump`]) or only by
/// itself ([`Criu::dump_with`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ends {
    WithStartingThread,
    ByItself,
}

/// A restore under way: see [`Criu::restore_call`].
pub struct RestoreCall {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    channel: rpc::Channel,
    /// Open for CRIU to read through /proc/<this process>/fd.
    images: fs::File,
    request: rpc::Request,
    log: PathBuf,
    /// Run at CRIU's [`POST_RESTORE`] notification: [`RestoreCall::at_post_restore`].
    post_restore: Option<Box<dyn FnMut() + Send>>,
}

impl RestoreCall {
    /// Runs `hook` at CRIU's `post-restore` notification, before it is answered: for a test's
    /// hold there (feather-vm's `snapshot::HOLD_AT_POST_RESTORE`), which makes the order of
    /// what a lazy restore's daemon does and CRIU's last word to it the test's to choose.
    pub fn at_post_restore(&mut self, hook: Box<dyn FnMut() + Send>) {
        self.post_restore = Some(hook);
    }

    /// The descriptors of this process the request hands criu to give the restored tree
    /// (`inherit_fd`).
    pub fn inherited(&self) -> Vec<i32> {
        let opts = self.request.opts.iter();
        opts.flat_map(|o| o.inherit_fd.iter().map(|i| i.fd))
            .collect()
    }

    /// The descriptor the child running criu must keep open.
    pub fn criu_end(&self) -> i32 {
        self.channel.criu_end().unwrap_or(-1)
    }

    /// In the child about to exec criu: lets [`RestoreCall::criu_end`] survive the exec (it
    /// is close-on-exec everywhere else, so no other program gets it).
    pub fn keep_criu_end_across_exec(&self) -> feather_sys::Result<()> {
        match self.channel.criu_fd() {
            Some(fd) => feather_sys::process::keep_across_exec(&fd),
            None => Ok(()),
        }
    }

    /// In the child about to exec criu: `command` (criu with [`RestoreCall::program`]'s
    /// arguments) passes criu its stdin, stdout, stderr, its end of the channel and `also` (the
    /// descriptors the request's `inherit_fd` names), nothing else of this process.
    pub fn pass_only_to_criu(&self, command: &mut std::process::Command, also: &[BorrowedFd]) {
        let given: Vec<BorrowedFd> = self
            .channel
            .criu_fd()
            .into_iter()
            .chain(also.iter().copied())
            .collect();
        feather_sys::process::pass_only(command, &given);
    }

    /// In the parent, once the child runs criu: asks for the restore and returns the host pid
    /// of the restored tree's root. `at_pre_resume` runs at CRIU's `pre-resume` notification:
    /// every task restored and stopped under CRIU's ptrace, none resumed yet (CRIU detaches
    /// once it is answered, cr-restore.c); the caller holds the tree still there
    /// (`feather_confine::held`). Its answer is CRIU's, which detaches either way: a caller
    /// that could not hold the tree still kills it there. Every other hook is answered yes.
    ///
    /// A CRIU that has not answered within [`restore_patience`] of the images is taken for
    /// stuck: a lazy restore whose pages stopped coming (the sender gone) fails in CRIU, which
    /// then waits for good on the restored processes it still traces (zombies of an init
    /// waiting for them). `end_restored` then kills what CRIU restored (the caller's group and
    /// the restored trees: killed first, so that none of it runs untraced), CRIU is killed
    /// through `criu`, its pidfd (whose process is CRIU until reaped, whoever reaps it), and
    /// the restore fails with [`MigrateError::CriuSilent`].
    pub fn restore(
        self,
        vm: &str,
        criu: BorrowedFd,
        at_pre_resume: &mut dyn FnMut() -> bool,
        end_restored: &mut dyn FnMut() -> std::io::Result<()>,
    ) -> Result<i32> {
        let patience = restore_patience(&self.images);
        self.restore_within(vm, criu, at_pre_resume, end_restored, patience)
    }

    /// [`RestoreCall::restore`], CRIU given `patience`.
    fn restore_within(
        mut self,
        vm: &str,
        criu: BorrowedFd,
        at_pre_resume: &mut dyn FnMut() -> bool,
        end_restored: &mut dyn FnMut() -> std::io::Result<()>,
        patience: std::time::Duration,
    ) -> Result<i32> {
        self.channel.criu_started();
        if let Some(opts) = self.request.opts.as_mut() {
            opts.notify_scripts = Some(true);
        }
        let post_restore = &mut self.post_restore;
        let mut on_notify = |script: &str| match script {
            PRE_RESUME => at_pre_resume(),
            POST_RESTORE => {
                if let Some(hook) = post_restore.as_mut() {
                    hook();
                }
                true
            }
            _ => true,
        };
        let deadline = std::time::Instant::now() + patience;
        let answer = self
            .channel
            .call_notified(&self.request, &mut on_notify, Some(deadline));
        drop(self.images);
        match answer {
            Ok(rpc::Response {
                success: true,
                restore: Some(restored),
                ..
            }) => Ok(restored.pid),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                let unended = end_restored().err().map(|e| e.to_string());
                let _ = feather_sys::process::signal(&criu, nix::sys::signal::Signal::SIGKILL);
                Err(MigrateError::CriuSilent {
                    vm: vm.to_owned(),
                    patience,
                    ended: ended_note(unended),
                    said: Box::new(failure(vm, "restore", &self.log)),
                })
            }
            _ => Err(failure(vm, "restore", &self.log)),
        }
    }
}

/// What [`MigrateError::CriuSilent`] says was ended, the restored processes' kill having
/// failed with `unended` or not.
fn ended_note(unended: Option<String>) -> String {
    match unended {
        None => "CRIU and the processes it restored were ended".into(),
        Some(why) => format!(
            "CRIU was ended, and the processes it restored killed as far as they were found \
             (killing their group failed: {why}; the group's removal kills what is left)"
        ),
    }
}

/// Waits until the `criu lazy-pages` started for a lazy restore of `images`
/// ([`Criu::lazy_pages`]) has said that it listens (its byte in [`LAZY_STATUS`]); a daemon that
/// ended or did not say so within `patience` fails with its log's words.
pub fn await_lazy_pages(vm: &str, images: &Path, patience: std::time::Duration) -> Result<()> {
    let status = images.join(LAZY_STATUS);
    let deadline = std::time::Instant::now() + patience;
    // Not the socket file: it exists from the daemon's bind, before its listen.
    while !fs::symlink_metadata(&status).is_ok_and(|m| m.is_file() && m.len() > 0) {
        if std::time::Instant::now() > deadline {
            let mut why = failure(vm, "fetch the memory of", &images.join(LAZY_LOG));
            if let MigrateError::Criu { errors, .. } = &mut why {
                errors.retain(|e| e != SAID_NOTHING);
                errors.insert(
                    0,
                    format!(
                        "`criu lazy-pages` did not say it listens within {} s",
                        patience.as_secs()
                    ),
                );
            }
            return Err(why);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Ok(())
}

/// A CRIU configuration file, in memory, that names `socket` as the page server's connection
/// (`ps-socket`, by its descriptor number, which CRIU inherits unchanged: see `pass_only`).
fn page_server_socket_config(socket: BorrowedFd) -> std::io::Result<OwnedFd> {
    let config =
        nix::sys::memfd::memfd_create(c"feather-criu-ps", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    let mut file = fs::File::from(config);
    std::io::Write::write_all(
        &mut file,
        format!("ps-socket {}\n", socket.as_raw_fd()).as_bytes(),
    )?;
    Ok(file.into())
}

/// A TCP port bound on every address (IPv6 and IPv4: one socket, not IPv6-only, or IPv4 alone
/// on a host without IPv6) that never listens, and the socket that holds it. Without
/// `SO_REUSEADDR` on it, no other socket can bind that port on a wildcard address, whatever
/// its own options: a CRIU told to use it as a lazy dump's page server port (which it takes
/// from the request) and that did not read its configuration file (which gives it the
/// connection instead, and then no port is bound) fails to listen, and so the dump fails,
/// where it would have served the VM's memory to whoever connected first.
fn held_port() -> std::io::Result<(OwnedFd, u16)> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6};
    let open = |family| socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None);
    let held = match open(AddressFamily::Inet6) {
        Ok(held) => {
            socket::setsockopt(&held, socket::sockopt::Ipv6V6Only, &false)?;
            socket::bind(
                held.as_raw_fd(),
                &SockaddrIn6::from(std::net::SocketAddrV6::new(
                    std::net::Ipv6Addr::UNSPECIFIED,
                    0,
                    0,
                    0,
                )),
            )?;
            held
        }
        Err(nix::errno::Errno::EAFNOSUPPORT) => {
            let held = open(AddressFamily::Inet)?;
            socket::bind(held.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, 0))?;
            held
        }
        Err(e) => return Err(e.into()),
    };
    let address = socket::getsockname::<socket::SockaddrStorage>(held.as_raw_fd())?;
    let port = match address.as_sockaddr_in6() {
        Some(v6) => v6.port(),
        None => address.as_sockaddr_in().map_or(0, SockaddrIn::port),
    };
    Ok((held, port))
}

/// The path by which a process opens its own descriptor `fd` anew (from its start, each time).
fn proc_self_fd(fd: BorrowedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Options of both dump and restore, and why feather needs each.
pub fn common_options() -> rpc::Opts {
    rpc::Opts {
        // The keeper owns the VM's cgroup: it makes it with the VM's limits before a restore
        // and runs criu inside it, so CRIU neither dumps nor recreates cgroups.
        manage_cgroups_mode: Some(rpc::CgMode::Ignore as i32),
        // Binds of host files the caller did not key (those in a service's own mount
        // namespace: `--external mnt[…]` keys the tree's root namespace only) are found by CRIU
        // and bound again from the host path the image holds (`--ext-mount-map auto`): the
        // caller checks those paths before a restore (see `mount_images`).
        auto_ext_mnt: Some(true),
        ext_sharing: Some(true),
        ext_masters: Some(true),
        // Connections inside the VM's network namespace survive.
        tcp_established: Some(true),
        // Services hold flock/POSIX locks on pid files and databases.
        file_locks: Some(true),
        ..Default::default()
    }
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
        errors.push(SAID_NOTHING.into());
    }
    MigrateError::Criu {
        vm: vm.to_owned(),
        action,
        errors,
        log: log.to_path_buf(),
    }
}

/// [`failure`]'s words for a log without an error line.
const SAID_NOTHING: &str = "it exited without saying why";

/// What some of CRIU's errors mean for a feather VM, in its user's words.
fn hint(error: &str) -> Option<&'static str> {
    const HINTS: [(&str, &str); 8] = [
        ("Can't get 1:16 opt", "a process of the VM has a TCP or UDP socket, which this CRIU cannot save on Linux 6.16 or later (it asks for SO_PASSCRED, which these kernels refuse for IP sockets; fixed in CRIU after 4.2.1)"),
        ("Can't get rlimit", "a process of the VM runs as another user (a service such as postgres), and CRIU may not read its limits here: this machine withholds CAP_SYS_RESOURCE; run feather's scripts/install-criu, whose shim reads them from /proc"),
        ("Can't lookup mount", "a process of the VM holds a file that lies outside the VM's filesystems (opened on the host and passed in); end that process or have it close the file"),
        ("io_uring", "a process of the VM uses io_uring, which CRIU cannot save"),
        ("external socket", "a process of the VM is connected to a unix socket outside the VM, such as the connection of a `feather exec` still running in it (checkpoint once it has ended)"),
        ("is outside of its pid namespace", "a process of the VM belongs to a session or process group that started outside the VM (run it with `setsid`)"),
        ("Unseizable non-zombie", "a process of the VM stayed in uninterruptible sleep (state D) for all of CRIU's seize: one waiting in vfork for a child that was stopped before it started its program (feather's own freeze waits those out; a child stopped by a debugger or SIGSTOP holds its parent), or one waiting on a disk or a network filesystem; its kernel stack (/proc/PID/stack) shows where; checkpoint again once it is out of that wait"),
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

    /// A restore whose CRIU never answers fails once its time is up (here 300 ms), having
    /// ended what CRIU restored first, while CRIU still ran (so nothing it traced runs
    /// untraced), then CRIU itself through its pidfd. Without the limit it waited for good;
    /// without CRIU's kill, CRIU runs on.
    #[test]
    fn a_restore_whose_criu_never_answers_ends_what_it_restored_then_criu() {
        use std::os::unix::process::ExitStatusExt;
        let images = feather_testkit::ScratchDir::new("criu-silent");
        let criu = Criu::checked(PathBuf::from("/bin/true"), "4.1.1".into());
        let folder = fs::File::open(&images.0).unwrap();
        let log = images.0.join(RESTORE_LOG);
        let call = criu
            .restore_call_with(folder, rpc::Opts::default(), log)
            .unwrap();
        // CRIU's stand-in holds its end of the channel and never answers.
        let mut command = std::process::Command::new("sleep");
        command.arg("600");
        call.pass_only_to_criu(&mut command, &[]);
        let mut silent = feather_testkit::Started(command.spawn().unwrap());
        let criu_pid = nix::unistd::Pid::from_raw(silent.0.id() as i32);
        let criu_pidfd = feather_sys::process::pidfd_open(criu_pid).unwrap();
        let mut restored = feather_testkit::Started::spawn("sleep", &["600"]);
        let mut criu_ran_at_the_end = None;
        let mut end_restored = || {
            criu_ran_at_the_end = Some(feather_testkit::stat::runs(criu_pid.as_raw()));
            restored.0.kill()
        };
        let patience = std::time::Duration::from_millis(300);
        let began = std::time::Instant::now();
        let error = call
            .restore_within(
                "vm",
                criu_pidfd.as_fd(),
                &mut || true,
                &mut end_restored,
                patience,
            )
            .unwrap_err();
        assert!(matches!(error, MigrateError::CriuSilent { .. }), "{error}");
        assert!(began.elapsed() >= patience);
        assert_eq!(criu_ran_at_the_end, Some(true), "CRIU was ended first");
        let limit = std::time::Duration::from_secs(60);
        let criu_end = silent.ended_within(limit, "CRIU's stand-in, killed");
        assert_eq!(criu_end.signal(), Some(nix::libc::SIGKILL));
        let restored_end = restored.ended_within(limit, "the restored stand-in, killed");
        assert_eq!(restored_end.signal(), Some(nix::libc::SIGKILL));
    }

    #[test]
    fn post_copy_needs_uffd_and_pipes_that_fit_or_the_shim() {
        let mib = 1 << 20;
        assert!(matches!(
            post_copy(false, Some(4 * mib), true, true),
            PostCopy::Unavailable { .. }
        ));
        assert_eq!(
            post_copy(true, Some(4 * mib), false, false),
            PostCopy::PipesFit {
                pipe_max_size: 4 * mib
            }
        );
        assert_eq!(
            post_copy(true, Some(mib), true, false),
            PostCopy::PipesFit { pipe_max_size: mib }
        );
        assert_eq!(
            post_copy(true, Some(mib), false, true),
            PostCopy::ShimCapsPipes { pipe_max_size: mib }
        );
        let PostCopy::Unavailable { why } = post_copy(true, Some(mib), false, false) else {
            panic!("post-copy without the shim or the capability");
        };
        assert!(why.contains("scripts/install-criu"), "{why}");
    }

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
        let scratch = feather_testkit::ScratchDir::new("criu-log");
        let dir = scratch.0.clone();
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
        assert!(
            message.contains("VM db1: CRIU cannot checkpoint it"),
            "{message}"
        );
        assert!(message.contains("path=/tmp/host-file"), "{message}");
        assert!(!message.contains("rlimit"), "{message}");
        assert!(!message.contains("FAILED"), "{message}");
    }

    #[test]
    fn a_task_criu_could_not_seize_is_explained() {
        let error = "Unseizable non-zombie 2036 found, state D, err -1/4";
        let hint = hint(error).expect("a hint for an unseizable task");
        assert!(
            hint.contains("uninterruptible sleep") && hint.contains("vfork"),
            "{hint}"
        );
    }
}
