//! `restore`: a container made from a bundle whose process tree comes from a checkpoint's
//! images instead of the config's `process` (runc's `restore`).
//!
//! ```text
//! feather-oci restore ─ folder, cgroup (the config's) ─ fork ─▶ child: own mount namespace,
//!        │                                                      rootfs bound on itself, in the
//!        │  RESTORE (root, rst_sibling, externals) ──────────▶  cgroup; execs `criu swrk`
//!        ◀── the restored init's pid: our child (rst_sibling), the tree left stopped
//!        ├─ every thread checked against the config (restored.rs), every mount tree against
//!        │  what create makes (restored_mounts.rs): SIGCONT, or the tree killed, the
//!        │  container removed, the restore refused
//!        └─ --detach: exits (the init goes to the engine's subreaper); else waits for it
//! ```
//! The init holds the pid the engine waits on, as after `start`: the container is running.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use crate::restored_mounts::KernelPaths;
use anyhow::{bail, Context, Result};
use feather_confine::restored_mounts::Expected;
use feather_confine::restored_sources::{CriuMountTable, HeldFilesystems, MountWatch, SeenMounts};
use feather_migrate::archive::read_at_most;
use feather_migrate::criu::{common_options, Criu, RestoreCall, RESTORE_LOG};
use feather_migrate::mount_images::{judge, KernelFs, Policy};
use feather_migrate::rpc;
use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::cgroups::Made;
use crate::checkpoint::{self, DESCRIPTORS, NET_KEY};
use crate::create::PidFile;
use crate::store::Container;

pub struct RestoreArgs {
    pub id: String,
    pub bundle: PathBuf,
    pub image_path: PathBuf,
    pub work_path: Option<PathBuf>,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub tcp_established: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    pub manage_cgroups_mode: Option<String>,
    pub refused: Vec<&'static str>,
    /// The node's annotation policy (`--annotation-policy`, [`crate::policy`]).
    pub policy: PathBuf,
}

/// Restores the container; returns its exit code without `--detach`, else 0.
pub fn restore(root: &Path, args: &RestoreArgs) -> Result<i32> {
    if let Some(flag) = args.refused.first() {
        bail!("restore {}", checkpoint::refusal(flag));
    }
    let mode = checkpoint::cgroups_mode(args.manage_cgroups_mode.as_deref())?;
    // Before anything is made (review m26 M7: a v1-only machine made the container, its
    // cgroup, the rootfs's mount points and CRIU's work folder each time, then failed here).
    crate::cgroups::v2_for_holding().context("restore")?;
    let criu = Criu::locate()?;
    let images = checkpoint::open_folder(&args.image_path, "--image-path")?;
    if !args.image_path.join("inventory.img").exists() {
        bail!(
            "--image-path {}: no checkpoint there (inventory.img is missing)",
            args.image_path.display()
        );
    }
    crate::image_folder::check(&images, &args.image_path)?;
    let (mut container, spec, _) =
        crate::create::make_container(root, &args.id, &args.bundle, &args.policy)?;
    let mut made = Made::Nothing;
    let restored = checkpoint::check_config(&spec, "restore")
        .and_then(|()| {
            let linux = spec.linux().clone().context("linux")?;
            // Marked as create marks it: a root registered later is hidden in a restored
            // container over the host only in a group so marked (crate::hiding), and
            // `kill --all` and `delete` act only on a group so marked (crate::store).
            let over_the_host = crate::hiding::is_over_the_host(&container);
            let resources = linux.resources().as_ref();
            let mark = container.mark();
            container
                .groups()
                .make(resources, &mark, over_the_host, &mut made)
                .map(drop)
        })
        .and_then(|()| {
            let hold = container.groups().hold()?;
            let allowed = crate::restored::Allowed::for_config(&spec)?;
            let mut mounts = crate::restored_mounts::expected(&spec, &container)?;
            let (call, netns, work, queued) =
                prepare(&criu, &container, &spec, args, images, mode)?;
            mounts.handed = feather_confine::restored_mounts::handed_files(&call.inherited())
                .map_err(anyhow::Error::msg)?;
            let read_only_root = spec.root().as_ref().and_then(|r| r.readonly()) == Some(true);
            let where_criu_ran =
                CriuMountTable::new().context("make the file CRIU's mount table goes in")?;
            // Held from before CRIU's namespace is made until the check: that namespace is a
            // slave of this one, where an unmount on the host would free a number CRIU's
            // fresh mounts could then take (`Before::of`).
            let held = HeldFilesystems::now()
                .context("hold the host's filesystems mounted for the restore's check")?;
            let host_groups = host_peer_groups()?;
            let place = CriuPlace {
                netns: netns.as_ref(),
                container: &container,
                rootfs: RestoredRoot {
                    path: &container.record.rootfs,
                    read_only: read_only_root,
                },
                mounts: &where_criu_ran,
            };
            let ran = run(call, place, &args.id, &hold, &work.shown);
            work.finish();
            // A CRIU that failed after its pre-resume leaves the tree frozen: killed so
            // before the removal, whose kill thaws (review r27 R5, as a refusal's).
            let (pid, restoring_mnt, (while_criu_ran, held_since)) = ran.inspect_err(|_| {
                let _ = hold.kill();
            })?;
            let accounted = Accounted {
                spec: &spec,
                mounts,
                kernel_paths: KernelPaths::of(&spec)?,
                host_groups,
                queued,
                where_criu_ran: &where_criu_ran,
                while_criu_ran,
            };
            let checks = (&allowed, accounted);
            let resumed = resume_if_allowed(pid, checks, restoring_mnt, &container, &hold);
            drop((held, held_since));
            resumed
        });
    let pid = match restored {
        Ok(pid) => pid,
        Err(error) => {
            crate::ops::undo(&container, made);
            return Err(error);
        }
    };
    container.record.pid = pid;
    container.record.start_ticks = feather_sys::process::start_ticks(Pid::from_raw(pid))
        .context("the restored init vanished")?;
    container.save()?;
    if let Some(pid_file) = &args.pid_file {
        PidFile::prepare(pid_file)?.write(pid)?;
    }
    if args.detach {
        return Ok(0);
    }
    wait_for(Pid::from_raw(pid))
}

/// The restore request: the config's externals, the inherited descriptors, the flags; the
/// network namespace it hands the restored tree (joined by `path`), which criu inherits;
/// CRIU's work folder, restore's own ([`Work`]); and the paths of the files that messages
/// queued in the images carry ([`mask_what_the_dump_lacked`]).
fn prepare(
    criu: &Criu,
    container: &Container,
    spec: &oci_spec::runtime::Spec,
    args: &RestoreArgs,
    images: fs::File,
    mode: i32,
) -> Result<(RestoreCall, Option<OwnedFd>, Work, Vec<String>)> {
    let engines = match &args.work_path {
        Some(path) => Some(checkpoint::open_folder(path, "--work-path")?),
        None => None,
    };
    let externals =
        checkpoint::external_mounts(spec, &container.record.bundle, &container.groups());
    let queued = check_automatic_binds(
        spec,
        &images,
        &args.image_path,
        &container.record.rootfs,
        &externals,
    )?;
    make_mount_points(&container.record.rootfs, &externals)?;
    let external: Vec<String> = externals
        .iter()
        .map(|m| format!("mnt[{}]:{}", m.key, m.source.display()))
        .collect();
    let mut inherit_fd = inherited_stdio(&args.image_path)?;
    let netns = match checkpoint::joined_network(spec) {
        // criu is passed it by name (`run`), and hands it to the restored tree.
        Some(path) => Some(
            nix::fcntl::open(&path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
                .with_context(|| format!("linux.namespaces[network].path {}", path.display()))?,
        ),
        None => None,
    };
    if let Some(netns) = &netns {
        inherit_fd.push(rpc::InheritFd {
            key: NET_KEY.into(),
            fd: netns.as_raw_fd(),
        });
    }
    let log_folder = args.work_path.as_ref().unwrap_or(&args.image_path);
    let log = prepare_log(engines.as_ref().unwrap_or(&images), log_folder)?;
    let work = Work::make(container, log, log_folder.join(RESTORE_LOG))?;
    let opts = rpc::Opts {
        images_dir_fd: images.as_raw_fd(),
        work_dir_fd: Some(work.fd.as_raw_fd()),
        log_file: Some(RESTORE_LOG.into()),
        root: Some(container.record.rootfs.display().to_string()),
        rst_sibling: Some(true),
        tcp_established: Some(args.tcp_established),
        file_locks: Some(args.file_locks),
        ext_unix_sk: Some(args.ext_unix_sk),
        shell_job: Some(args.shell_job),
        manage_cgroups_mode: Some(mode),
        external,
        inherit_fd,
        // Checked before any of it runs: [`resume_if_allowed`].
        leave_stopped: Some(true),
        ..common_options()
    };
    let call = criu.restore_call_with(images, opts, work.folder.join(RESTORE_LOG))?;
    Ok((call, netns, work, queued))
}

/// The folder CRIU works in (its cwd, where it writes its log and `stats-restore` by name,
/// following links, as the host's root): made fresh by restore, 0700, in the container's own
/// state folder, never the engine's `--work-path` nor the image folder, whose contents an
/// imported checkpoint's author chooses (a link planted as `stats-restore` there had CRIU
/// truncate and write its target, any host file). Its descriptor is kept open for CRIU, which
/// reaches it through this process's /proc. [`Work::finish`] copies CRIU's log to where the
/// engine reads it, `restore.log` in `--work-path` (else the image folder), through the file
/// [`prepare_log`] opened there, and removes the folder.
struct Work {
    folder: PathBuf,
    fd: OwnedFd,
    log: fs::File,
    shown: PathBuf,
}

/// The work folder's name in the container's state folder.
const WORK_FOLDER: &str = "criu-work";

impl Work {
    fn make(container: &Container, log: fs::File, shown: PathBuf) -> Result<Work> {
        let folder = container.dir.join(WORK_FOLDER);
        let _ = fs::remove_dir_all(&folder);
        std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700)
            .create(&folder)
            .with_context(|| format!("make CRIU's work folder {}", folder.display()))?;
        let fd = nix::fcntl::open(
            &folder,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("open CRIU's work folder {}", folder.display()))?;
        Ok(Work {
            folder,
            fd,
            log,
            shown,
        })
    }

    /// Once CRIU has ended: its log copied out (a failure only said: the restore's own
    /// outcome stands), the folder removed.
    fn finish(mut self) {
        use std::io::Write;
        let copied = read_at_most(&self.folder.join(RESTORE_LOG), MAX_LOG)
            .map(Option::unwrap_or_default)
            .and_then(|text| {
                self.log.set_len(0)?;
                self.log.write_all(&text)
            });
        if let Err(e) = copied {
            eprintln!(
                "feather-oci: restore: cannot copy CRIU's log to {}: {e}",
                self.shown.display()
            );
        }
        let _ = fs::remove_dir_all(&self.folder);
    }
}

/// The most of CRIU's log copied out (a restore's is a few hundred KiB at most).
const MAX_LOG: u64 = 64 << 20;

/// Opens, for CRIU's log, `restore.log` beneath `folder` (`--work-path`, else the image
/// folder; `shown` its path), a plain file, never through a link: the log is copied into it
/// after CRIU ([`Work::finish`]). A link planted as restore.log (an imported or pulled
/// checkpoint's folder) is not followed: refused, as is anything but a plain file.
fn prepare_log(folder: &fs::File, shown: &Path) -> Result<fs::File> {
    let path = shown.join(RESTORE_LOG);
    let opened = nix::fcntl::openat(
        folder,
        RESTORE_LOG,
        OFlag::O_WRONLY
            | OFlag::O_CREAT
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    );
    let log = match opened {
        Ok(log) => fs::File::from(log),
        Err(nix::errno::Errno::ELOOP) => bail!(
            "{}: a symbolic link, where CRIU writes its log (as the host's root, truncating \
             what it names); refusing the restore: remove the link",
            path.display()
        ),
        Err(e) => bail!(
            "{}: cannot make CRIU's log there: {e}; refusing the restore: make it a plain file \
             or remove it",
            path.display()
        ),
    };
    let kind = log
        .metadata()
        .with_context(|| format!("{}", path.display()))?
        .file_type();
    if !kind.is_file() {
        bail!(
            "{}: not a plain file ({kind:?}), where CRIU writes its log; refusing the restore: \
             remove it",
            path.display()
        );
    }
    Ok(log)
}

/// Refuses images that have CRIU bind a host path into the container that feather-oci does
/// not bind there itself for this config. CRIU detects the binds of host files it was not told
/// of at the dump (automatic external mounts) and binds each again from the host path its
/// mount image holds, which whoever supplies a checkpoint (an imported archive, a pulled
/// checkpoint image) can set to any host file, bound writable into the container as root.
/// Every other entry is judged too ([`judge`]): CRIU mounts each with the type, source, flags
/// it holds, and gives the config's binds (keyed, `mnt[…]`) the image's read-only flag.
/// Allowed: the host nodes feather-oci binds — `/dev/null` (masks), runc's default devices,
/// the config's `linux.devices` under `/dev` (bound in a user namespace) — and the config's
/// bind sources, the read-only ones as read-only binds only; the keys restore passes, those
/// it binds read-only (`ro` binds, a read-only `cgroup` mount's folders) kept read-only. Read
/// through the folder's descriptor: the folder CRIU is given. The binds CRIU then makes of
/// folders beneath the rootfs and the config's bind sources are walked there without following
/// a link ([`feather_migrate::mount_images::Binds::check`]): CRIU follows them as the host's
/// root, out of the container.
fn check_automatic_binds(
    spec: &oci_spec::runtime::Spec,
    images: &fs::File,
    image_path: &Path,
    rootfs: &Path,
    externals: &[checkpoint::External],
) -> Result<Vec<String>> {
    let folder = PathBuf::from(format!("/proc/self/fd/{}", images.as_raw_fd()));
    let binds_of = |read_only: bool| {
        externals
            .iter()
            .filter(move |e| !e.cgroup && e.read_only == read_only)
            .map(|e| e.source.clone())
    };
    let allowed: Vec<PathBuf> = crate::mounts::host_nodes(spec)
        .chain(binds_of(false))
        .collect();
    let read_only: Vec<PathBuf> = binds_of(true).collect();
    let keyed: Vec<(String, bool)> = externals
        .iter()
        .map(|e| (e.key.clone(), e.read_only))
        .collect();
    let kernel_binds = kernel_binds(spec);
    let policy = Policy {
        keyed: &keyed,
        allowed: &allowed,
        read_only: &read_only,
        kernel_binds: &kernel_binds,
    };
    let judged = judge(&folder, &policy)
        .with_context(|| format!("--image-path {}: its mount images", image_path.display()))?;
    let sources: Vec<(String, PathBuf)> = externals
        .iter()
        .map(|e| (e.key.clone(), e.source.clone()))
        .collect();
    let checked = judged.and_then(|binds| {
        binds
            .check(rootfs, &sources)
            .map(|()| binds.queued_by_path().to_vec())
    });
    match checked {
        Ok(queued) => Ok(queued),
        Err(refusal) => bail!(
            "--image-path {}: the checkpoint's mount images are refused: {refusal}; feather-oci \
             does not mount that for this config (a checkpoint altered to bind or mount a host \
             path in the container); refusing the restore: restore a checkpoint this host or a \
             trusted one took",
            image_path.display(),
        ),
    }
}

/// The config's `readonlyPaths` beneath its `proc` and `sysfs` mounts (the longest such
/// destination, as `create` finds them), each by its path in that filesystem: `create` binds
/// each over itself read-only, so a dump holds a bind of proc at `/scsi` for `/proc/scsi`, of
/// sysfs at `/firmware` for `/sys/firmware`. (A masked path is covered by a tmpfs or by
/// `/dev/null`, never a bind of itself.)
fn kernel_binds(spec: &oci_spec::runtime::Spec) -> Vec<(KernelFs, PathBuf)> {
    let kernel: Vec<(KernelFs, PathBuf)> = spec
        .mounts()
        .iter()
        .flatten()
        .filter_map(|mount| {
            let fs = match mount.typ().as_deref() {
                Some("proc") => KernelFs::Proc,
                Some("sysfs") => KernelFs::Sysfs,
                _ => return None,
            };
            Some((fs, mount.destination().clone()))
        })
        .collect();
    let readonly = spec
        .linux()
        .as_ref()
        .and_then(|l| l.readonly_paths().clone());
    readonly
        .into_iter()
        .flatten()
        .filter_map(|path| {
            let path = PathBuf::from(path);
            kernel
                .iter()
                .filter_map(|(fs, destination)| Some((*fs, path.strip_prefix(destination).ok()?)))
                .min_by_key(|(_, rest)| rest.components().count())
                .map(|(fs, rest)| (fs, Path::new("/").join(rest)))
        })
        .collect()
}

/// The bind mounts' mount points, made in the rootfs as `create` makes them (an engine's
/// fresh root may lack them: podman leaves them out of the root's exported changes), walked
/// safely from the rootfs.
fn make_mount_points(rootfs: &Path, externals: &[checkpoint::External]) -> Result<()> {
    let root = nix::fcntl::open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("open {}", rootfs.display()))?;
    for external in externals.iter().filter(|e| !e.cgroup) {
        let directory = external.source.is_dir();
        crate::mounts::make_target(&root, &external.inside, directory)
            .with_context(|| format!("mounts[{}]", external.inside.display()))?;
    }
    Ok(())
}

/// The most `descriptors.json` holds: three link targets of at most `PATH_MAX` each, quoted.
const MAX_DESCRIPTORS: u64 = 64 << 10;

/// The dumped tree's standard descriptors that were the engine's (its pipes, and files
/// outside the container) become this process's own: what the engine gave the restore.
/// `descriptors.json` is read as a dump writes it — a plain file, bounded — or refused: a
/// link (to `/dev/zero`) is not followed, nor a FIFO waited on.
fn inherited_stdio(images: &Path) -> Result<Vec<rpc::InheritFd>> {
    let path = images.join(DESCRIPTORS);
    let text = match read_at_most(&path, MAX_DESCRIPTORS) {
        Ok(Some(text)) => text,
        Ok(None) => bail!(
            "{}: larger than {} KiB, which no checkpoint writes",
            path.display(),
            MAX_DESCRIPTORS >> 10
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    };
    let targets: Vec<String> =
        serde_json::from_slice(&text).with_context(|| format!("{}", path.display()))?;
    Ok(targets
        .into_iter()
        .enumerate()
        .filter(|(_, target)| target.starts_with("pipe:") || target.starts_with("file["))
        .map(|(fd, key)| rpc::InheritFd { key, fd: fd as i32 })
        .collect())
}

/// Runs criu in a child placed where the container belongs; returns the restored init's pid.
/// criu gets the restore's stdio, its channel and `netns`: nothing else the engine left open.
/// Restores the tree, held still in `hold` (frozen at CRIU's `pre-resume`, before any of it
/// ran, [`feather_confine::held`]); gives its init's pid and the mount namespace CRIU ran in
/// (the child's, `mnt:[…]`), where no restored process of the container may stay; and every
/// mount this namespace showed from the fork until CRIU's `pre-resume` ([`MountWatch`]: review
/// r27 R1), with the holds of the filesystems first seen meanwhile, kept until the check.
fn run(
    call: RestoreCall,
    place: CriuPlace,
    id: &str,
    hold: &feather_confine::held::Hold,
    log: &Path,
) -> Result<(i32, Option<PathBuf>, (SeenMounts, HeldFilesystems))> {
    let child = match feather_sys::process::fork_into(CloneFlags::CLONE_NEWNS)
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        feather_sys::process::Forked::Child => {
            let error = become_criu(&call, place);
            eprintln!("feather-oci: restore {id}: {error:#}");
            std::process::exit(1)
        }
        feather_sys::process::Forked::Parent(child) => child,
    };
    // The child was made in its own mount namespace: read before it ends.
    let proc = PathBuf::from(format!("/proc/{}", child.pid));
    let restoring_mnt = feather_confine::restored::namespace(&proc, "mnt").ok();
    // Started once forked: the child allocates before its exec, and no thread may then exist.
    let mut watch = Some(MountWatch::start());
    let mut seen = None;
    // criu is the child: it leaves the group before the group freezes.
    let mut held = None;
    let mut at_pre_resume = || {
        let frozen = hold.freeze_or_kill(child.pid.as_raw());
        let answer = frozen.is_ok();
        held = Some(frozen);
        // Last read at pre-resume: every mount of the tree made, none of its tasks run.
        seen = watch.take().map(|watch| watch.and_then(MountWatch::finish));
        answer
    };
    // A CRIU stuck past its time is ended with what it restored.
    let restored = call.restore(id, child.pidfd.as_fd(), &mut at_pre_resume, &mut || {
        hold.end_restored(child.pid.as_raw())
    });
    // No pre-resume came (CRIU failed): the watcher ended here, not left running.
    if let Some(Ok(watch)) = watch {
        let _ = watch.finish();
    }
    let _ = waitpid(child.pid, None);
    if let Some(Err(e)) = held {
        bail!(
            "cannot hold the restored processes still for their check (freezing {}): {e}; \
             they were killed and the restore refused",
            hold.group().display()
        );
    }
    // CRIU's log is read from its work folder, and named where it is copied.
    let restored = restored.map_err(|error| error.with_log(log.to_path_buf()));
    let pid = restored?;
    let while_criu_ran = match seen {
        Some(Ok(seen)) => seen,
        Some(Err(e)) => bail!(
            "cannot tell what the host mounted while CRIU ran (its mount table, watched): {e}; \
             the restored processes are refused"
        ),
        None => bail!(
            "CRIU restored the container without its pre-resume notification: the restored \
             processes were never held still; refused"
        ),
    };
    Ok((pid, restoring_mnt, while_criu_ran))
}

/// The frozen tree goes on (thawed, and continued from CRIU's SIGSTOP) when every thread holds
/// no more than the config gives ([`crate::restored`]) and every mount tree is what `create`
/// makes ([`crate::restored_mounts`]); else it is killed while frozen (the container is removed
/// by the caller).
fn resume_if_allowed(
    pid: i32,
    (allowed, mounts): (&crate::restored::Allowed, Accounted),
    restoring_mnt: Option<PathBuf>,
    container: &Container,
    hold: &feather_confine::held::Hold,
) -> Result<i32> {
    let init = Pid::from_raw(pid);
    let checked = crate::restored::Outside::here(restoring_mnt)
        .and_then(|outside| crate::restored::check_tree(pid, allowed, &outside, hold))
        // After the processes' check: none is in the host's mount namespace, or CRIU's.
        .and_then(|()| {
            let kernel = (&mounts.kernel_paths, mounts.host_groups.as_slice());
            mask_what_the_dump_lacked(hold, kernel, &mounts.queued)
        })
        .and_then(|own| mounts.expected(container, own))
        .and_then(|mounts| crate::restored_mounts::check_tree(pid, hold, &mounts))
        .and_then(|()| {
            hold.thaw().with_context(|| {
                format!("thaw the restored container ({})", hold.group().display())
            })
        });
    if let Err(error) = checked {
        kill_refused(init, &container.groups(), hold);
        return Err(error);
    }
    for member in container.groups().members() {
        let _ = nix::sys::signal::kill(member, Signal::SIGCONT);
    }
    let _ = nix::sys::signal::kill(init, Signal::SIGCONT);
    Ok(pid)
}

/// Masks the config's masked paths (`paths.masked`) that a mount namespace of the frozen tree
/// shows unmasked, as `create` masks them (`/dev/null` over a file, an empty read-only tmpfs
/// over a folder), beneath every proc and sysfs mount as the check then requires them (review
/// mntcheck26 MC-6): CRIU recreates only the masks it dumped, and a kernel path absent at the
/// dump (an older kernel's, another host's: `/proc/sched_debug`) may be here. A read-only
/// path the dump left writable is not bound read-only here but refused by the check: what
/// CRIU opened beneath it while it was writable (a descriptor in a task's table, or one CRIU
/// queues on a unix socket, where no check of the tasks sees it; a working folder on
/// `/proc/sys`) would keep write access to `/proc/sys/kernel/core_pattern` under a bind made
/// now (reviews rest29 H1, fixrestore30 H1, H2). Every namespace of the group's processes,
/// each once; a process whose namespace cannot be read is left to the check (a zombie has
/// none; any other is refused there). Never on a mount of a peer group of `host_groups`, the
/// host's before CRIU ran, whose peers may be the host's mounts (the check, which refuses a
/// peer of a host mount, comes after); a peer group the restore made (under
/// `rootfsPropagation: rshared` every mount of the tree is in one) takes them, as `create`'s
/// would have. Returns the mount ids of the masks made, read from the namespace's table
/// before and after (the tree is frozen: nothing else mounts there meanwhile), so that the
/// accounting takes them for the restorer's own (review rest28 N4: a mask given a number the
/// host freed while CRIU ran was refused as the host's).
/// A restore that masks, while a queued message carries a file beneath a mask (`queued`), is
/// refused ([`feather_migrate::mount_images::refuse_in_flight`]).
fn mask_what_the_dump_lacked(
    hold: &feather_confine::held::Hold,
    (paths, host_groups): (&KernelPaths, &[String]),
    queued: &[String],
) -> Result<Vec<u64>> {
    let mut seen = Vec::new();
    let mut own = Vec::new();
    let processes = hold
        .processes()
        .context("list the restored processes to mask what their dump lacked")?;
    for pid in processes {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let Ok(namespace) = feather_confine::restored::namespace(&proc, "mnt") else {
            continue;
        };
        if seen.contains(&namespace) {
            continue;
        }
        let ns = proc.join("ns/mnt");
        let file = fs::File::open(&ns).with_context(|| format!("open {}", ns.display()))?;
        let in_namespace = || format!("in the mount namespace of restored process {pid}");
        let unmasked =
            feather_confine::restored_mounts::unmasked_places(&file, &paths.masked, host_groups)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("find what to mask {}", in_namespace()))?;
        if !unmasked.is_empty() {
            let pidfd = feather_sys::process::pidfd_open(Pid::from_raw(pid))
                .with_context(|| format!("open restored process {pid}"))?;
            let ids = || mount_ids(&proc);
            let before = ids()?;
            feather_sys::process::mask_in_mount_namespace_of(&pidfd, &unmasked)
                .with_context(|| format!("mask {unmasked:?} {}", in_namespace()))?;
            own.extend(ids()?.into_iter().filter(|id| !before.contains(id)));
        }
        feather_migrate::mount_images::refuse_in_flight(queued, &unmasked)
            .map_err(anyhow::Error::msg)
            .with_context(|| {
                format!(
                    "restore refused {}: restore a checkpoint taken with every read-only bind \
                     and mask in place",
                    in_namespace()
                )
            })?;
        seen.push(namespace);
    }
    Ok(own)
}

/// The peer groups (`shared:N`) of this process's mount namespace, the host's: read before
/// CRIU runs, so that none the restore makes is among them.
fn host_peer_groups() -> Result<Vec<String>> {
    let mounts = feather_sys::mountinfo::mounts().context("read /proc/self/mountinfo")?;
    let mut groups: Vec<String> = mounts
        .into_iter()
        .flat_map(|m| m.optional)
        .filter(|field| field.starts_with("shared:"))
        .collect();
    groups.sort();
    groups.dedup();
    Ok(groups)
}

/// The mount ids of the mount namespace of the process at `proc`, as its table shows them.
fn mount_ids(proc: &Path) -> Result<Vec<u64>> {
    let table = proc.join("mountinfo");
    let text = fs::read(&table).with_context(|| format!("read {}", table.display()))?;
    Ok(feather_sys::mountinfo::parse(&text)
        .into_iter()
        .map(|m| m.id)
        .collect())
}

/// What the restored mounts are judged by: `mounts`, what create makes for `spec`, with what
/// was mounted where CRIU ran, read at the check ([`crate::restored_mounts::before`]).
struct Accounted<'a> {
    spec: &'a oci_spec::runtime::Spec,
    mounts: Expected,
    /// What of the kernel's paths a dump may lack, and the host's peer groups before CRIU ran:
    /// [`mask_what_the_dump_lacked`].
    kernel_paths: KernelPaths,
    host_groups: Vec<String>,
    /// The paths of the files messages queued in the images carry: a restore that adds a
    /// cover is refused with one ([`feather_migrate::mount_images::refuse_in_flight`]).
    queued: Vec<String>,
    where_criu_ran: &'a CriuMountTable,
    while_criu_ran: feather_confine::restored_sources::SeenMounts,
}

impl Accounted<'_> {
    /// `own`: the mount ids of the mounts the restorer made in the tree.
    fn expected(self, container: &Container, own: Vec<u64>) -> Result<Expected> {
        let before = crate::restored_mounts::before(
            self.spec,
            container,
            self.where_criu_ran,
            self.while_criu_ran,
        )?
        .with_own_mounts(own);
        Ok(Expected {
            before: Some(before),
            ..self.mounts
        })
    }
}

/// Where CRIU runs: the network namespace it hands the restored tree, the container whose
/// cgroup it joins, the rootfs it restores the root from, and the file its mount table goes
/// in just before its exec ([`crate::restored_mounts::before`]).
struct CriuPlace<'a> {
    netns: Option<&'a OwnedFd>,
    container: &'a Container,
    rootfs: RestoredRoot<'a>,
    mounts: &'a CriuMountTable,
}

/// Kills a refused restored tree while it is still frozen: the held group's `cgroup.kill`
/// first ([`Hold::kill`](feather_confine::held::Hold::kill), which never thaws), then its init,
/// then the container's groups in every hierarchy, whose kill thaws them (review m26 M5:
/// before, that kill came first, and where its own `cgroup.kill` or listing failed, which it
/// only warns of, it thawed a group whose processes had no SIGKILL pending: a task CRIU left
/// stopped then ran on a restored SIGCONT timer). Thawed only once every process of the held
/// group has SIGKILL pending: where even that failed, the group is left frozen here.
fn kill_refused(init: Pid, groups: &crate::cgroups::Groups, hold: &feather_confine::held::Hold) {
    let killed = hold.kill();
    let _ = nix::sys::signal::kill(init, Signal::SIGKILL);
    let _ = waitpid(init, None);
    match killed {
        Ok(()) => groups.kill_all(),
        Err(e) => crate::log::warn(&format!(
            "the refused restore's processes could not be killed in their frozen group {}: \
             {e}; it is left frozen",
            hold.group().display()
        )),
    }
}

/// The container's rootfs as CRIU is to restore it: CRIU binds the restored root from this
/// folder and keeps that bind's flags (it never applies the root entry's), so `root.readonly`
/// is the bind's own.
struct RestoredRoot<'a> {
    path: &'a Path,
    read_only: bool,
}

/// In the child: a mount namespace of its own with the rootfs bound on itself (CRIU mounts the
/// restored root from it; read-only under `root.readonly`, as `create` makes it: before, the
/// restored root came back writable), its mounts slaves of the host's rather than private
/// (CRIU gives the restored root the sharing the dumped one had: Docker's overlay root is a
/// slave of the host's), the container's cgroup (the restored tree inherits it), its mount
/// table written, then criu.
fn become_criu(call: &RestoreCall, place: CriuPlace) -> anyhow::Error {
    let CriuPlace {
        netns,
        container,
        rootfs,
        mounts,
    } = place;
    let placed = (|| -> Result<()> {
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        )
        .context("make mounts slaves")?;
        let path = rootfs.path;
        nix::mount::mount(
            Some(path),
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("bind {}", path.display()))?;
        if rootfs.read_only {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            nix::mount::mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
                .with_context(|| format!("make {} read-only (root.readonly)", path.display()))?;
        }
        container.groups().add(nix::unistd::getpid())?;
        Ok(())
    })();
    if let Err(error) = placed {
        return error;
    }
    if let Err(error) = mounts.write_own() {
        return anyhow::Error::from(error).context("write the mount table CRIU runs on");
    }
    let mut criu = std::process::Command::new(&call.program);
    criu.args(&call.args);
    let passed: Vec<BorrowedFd> = netns.iter().map(|fd| fd.as_fd()).collect();
    call.pass_only_to_criu(&mut criu, &passed);
    let error = criu.exec();
    anyhow::Error::from(error).context(format!("run {}", call.program.display()))
}

/// Waits for the restored init (our child) and gives its exit code, as `runc restore`
/// without `--detach`.
fn wait_for(pid: Pid) -> Result<i32> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("wait for the restored container"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use feather_testkit::Started;

    fn sleep() -> Started {
        Started::spawn("sleep", &["60"])
    }

    /// A refused tree is killed through its held group before anything thaws: a process the
    /// container's groups do not reach (their listing or `cgroup.kill` failed, or they see
    /// another group) but the hold holds dies, and the hold is not thawed. Before, the
    /// container's kill came first and alone, and this process lived on. The hold here is a
    /// folder shaped as a group whose `cgroup.kill` cannot be written (a kernel before 5.14):
    /// its listing is used.
    #[test]
    fn a_refused_tree_is_killed_through_its_frozen_group_first() {
        let scratch = feather_testkit::ScratchDir::new("oci-kill");
        let folder = scratch.0.join("group");
        fs::create_dir(&folder).unwrap();
        let init = sleep();
        let mut member = sleep();
        fs::write(folder.join("cgroup.freeze"), "1").unwrap();
        fs::write(folder.join("cgroup.procs"), format!("{}\n", member.0.id())).unwrap();
        std::os::unix::fs::symlink("/nonexistent/cgroup.kill", folder.join("cgroup.kill")).unwrap();
        let hold = feather_confine::held::Hold::v2(&folder, Path::new("")).unwrap();
        let groups =
            crate::cgroups::Groups::new(&format!("feather-oci-test-none-{}", std::process::id()));
        kill_refused(Pid::from_raw(init.0.id() as i32), &groups, &hold);
        let status = member.0.wait().unwrap();
        let frozen = fs::read_to_string(folder.join("cgroup.freeze")).unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{status:?}"
        );
        assert_eq!(frozen, "1", "the hold was thawed");
    }
}
