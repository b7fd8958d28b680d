//! runc's command line, as containerd's runc shim, Docker (through containerd) and podman
//! (through conmon) call it. Global flags go before the command.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use crate::checkpoint::CheckpointArgs;
use crate::create::CreateArgs;
use crate::exec::ExecArgs;
use crate::restore::RestoreArgs;
use crate::run::RunArgs;

#[derive(Parser)]
#[command(
    name = "feather-oci",
    version,
    about = "feather as an OCI runtime (runc's command line)"
)]
struct Cli {
    /// Where container state lives (one folder per container).
    #[arg(long, global = true, default_value = "/run/feather-oci")]
    root: PathBuf,
    /// Where to write errors and warnings (the engine shows the last error to its user).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// text or json (one JSON object a line, as runc writes).
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    #[arg(long, global = true)]
    debug: bool,
    /// Refused: cgroups through systemd need systemd, which feather-oci does not use.
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Accepted for compatibility: checkpoint and restore use feather's CRIU ($FEATHER_CRIU,
    /// else scripts/install-criu's), since older ones fail on this kernel.
    #[arg(long, global = true)]
    criu: Option<PathBuf>,
    /// Accepted for compatibility ("auto", "true", "false"); feather-oci runs as root. Also
    /// `spec --rootless` (one flag: a subcommand's own of the same name trips clap).
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true")]
    rootless: Option<String>,
    /// The node's policy: which widening `org.feather.*` annotations (base=host, services,
    /// confine=none) `create`, `run` and `restore` honour; a root-owned file (docs/oci.md).
    #[arg(long = "annotation-policy", global = true, default_value = crate::policy::DEFAULT_PATH)]
    annotation_policy: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a container from a bundle; its init waits for `start`.
    Create {
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        /// Use a move and chroot instead of pivot_root (for roots on a ramfs).
        #[arg(long = "no-pivot")]
        no_pivot: bool,
        /// feather-oci never makes a session keyring: always so.
        #[arg(long = "no-new-keyring")]
        no_new_keyring: bool,
        /// Pass this many descriptors beyond stdio (3, 4, …) to the container.
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: i32,
        id: String,
    },
    /// Run the program of a created container.
    Start { id: String },
    /// Create and start a container; in the foreground wait for its program (passing
    /// signals on, relaying its terminal), delete the container and exit with its status.
    Run {
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        /// Return once the program runs.
        #[arg(long, short = 'd')]
        detach: bool,
        /// Keep the container after its program ends (for `state`, `delete`).
        #[arg(long)]
        keep: bool,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        #[arg(long = "no-pivot")]
        no_pivot: bool,
        /// feather-oci never makes a session keyring: always so.
        #[arg(long = "no-new-keyring")]
        no_new_keyring: bool,
        /// Accepted: feather-oci never becomes a subreaper.
        #[arg(long = "no-subreaper")]
        no_subreaper: bool,
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: i32,
        id: String,
    },
    /// The container's state JSON (the runtime specification's).
    State { id: String },
    /// Send a signal (name or number; SIGTERM if none) to the container's init, or with --all
    /// to every process of the container.
    Kill {
        #[arg(long, short = 'a')]
        all: bool,
        id: String,
        signal: Option<String>,
    },
    /// Remove a stopped (or created) container; --force also a running one.
    Delete {
        #[arg(long, short = 'f')]
        force: bool,
        id: String,
    },
    /// Run a new process in a running container.
    Exec {
        #[arg(long, short = 'p')]
        process: Option<PathBuf>,
        #[arg(long, short = 't')]
        tty: bool,
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        #[arg(long, short = 'd')]
        detach: bool,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        #[arg(long)]
        cwd: Option<PathBuf>,
        #[arg(long, short = 'e')]
        env: Vec<String>,
        /// uid[:gid]
        #[arg(long, short = 'u')]
        user: Option<String>,
        #[arg(long, short = 'c')]
        cap: Vec<String>,
        #[arg(long = "no-new-privs")]
        no_new_privs: bool,
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: i32,
        /// Accepted for compatibility: no LSM labels on this machine.
        #[arg(long = "process-label")]
        process_label: Option<String>,
        #[arg(long)]
        apparmor: Option<String>,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// The container's processes (host pids).
    Ps {
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Every container under --root.
    #[command(alias = "ls")]
    List {
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Freeze every process of the container (cgroup freezer).
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Resource usage, as runc's `events` (one-shot with --stats).
    Events {
        #[arg(long)]
        stats: bool,
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// Change a running container's limits (--resources FILE with linux.resources JSON, - for stdin).
    Update {
        #[arg(long, short = 'r')]
        resources: Option<PathBuf>,
        id: String,
    },
    /// What this runtime supports, as JSON.
    Features,
    /// Write a starting config.json.
    Spec {
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
    },
    /// Dump a running container's processes with CRIU (runc's flags).
    Checkpoint {
        #[command(flatten)]
        criu: CriuFlags,
        /// Keep the container running after the dump (else it is gone, as with runc).
        #[arg(long = "leave-running")]
        leave_running: bool,
        /// Refused: pre-copy needs soft-dirty tracking, which this kernel lacks.
        #[arg(long = "pre-dump")]
        pre_dump: bool,
        /// Refused (with --pre-dump).
        #[arg(long = "parent-path")]
        parent_path: Option<PathBuf>,
        /// Refused: post-copy is feather migrate's.
        #[arg(long = "page-server")]
        page_server: Option<String>,
        /// Refused (with --lazy-pages).
        #[arg(long = "status-fd")]
        status_fd: Option<i32>,
        id: String,
    },
    /// Make a container from a bundle and a checkpoint's images (runc's flags).
    Restore {
        #[command(flatten)]
        criu: CriuFlags,
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
        /// Return once restored (the container's init goes to the engine's subreaper).
        #[arg(long, short = 'd')]
        detach: bool,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        /// Refused with a terminal: containers with process.terminal are not checkpointed.
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        /// Accepted: feather-oci never becomes a subreaper.
        #[arg(long = "no-subreaper")]
        no_subreaper: bool,
        /// Accepted: CRIU restores the mount namespace itself.
        #[arg(long = "no-pivot")]
        no_pivot: bool,
        /// Accepted for compatibility: no LSM on this machine.
        #[arg(long = "lsm-profile")]
        lsm_profile: Option<String>,
        #[arg(long = "lsm-mount-context")]
        lsm_mount_context: Option<String>,
        id: String,
    },
}

/// The flags `checkpoint` and `restore` share, as runc spells them.
#[derive(clap::Args)]
struct CriuFlags {
    /// Where CRIU's images are (runc's default: ./checkpoint).
    #[arg(long = "image-path", default_value = "checkpoint")]
    image_path: PathBuf,
    /// Where CRIU's log goes (default: the image path).
    #[arg(long = "work-path")]
    work_path: Option<PathBuf>,
    #[arg(long = "tcp-established")]
    tcp_established: bool,
    #[arg(long = "ext-unix-sk")]
    ext_unix_sk: bool,
    #[arg(long = "shell-job")]
    shell_job: bool,
    #[arg(long = "file-locks")]
    file_locks: bool,
    /// soft (default) or ignore; full and strict are refused.
    #[arg(long = "manage-cgroups-mode")]
    manage_cgroups_mode: Option<String>,
    /// Refused: lazy restores are feather migrate's.
    #[arg(long = "lazy-pages")]
    lazy_pages: bool,
    /// Refused.
    #[arg(long = "auto-dedup")]
    auto_dedup: bool,
    /// Refused.
    #[arg(long = "empty-ns")]
    empty_ns: Option<String>,
}

impl CriuFlags {
    /// The refused flags given.
    fn refused(&self) -> Vec<&'static str> {
        [
            (self.lazy_pages, "--lazy-pages"),
            (self.auto_dedup, "--auto-dedup"),
            (self.empty_ns.is_some(), "--empty-ns"),
        ]
        .into_iter()
        .filter_map(|(given, flag)| given.then_some(flag))
        .collect()
    }
}

/// Runs the command line; returns the exit code.
pub fn main() -> i32 {
    feather_core::trace::begin();
    let cli = Cli::parse_from(std::env::args_os().map(go_spelling));
    crate::log::init(cli.log.clone(), &cli.log_format, cli.debug);
    crate::log::debug(&format!("argv: {:?}", std::env::args().collect::<Vec<_>>()));
    match run(cli) {
        Ok(code) => code,
        // As a command whose output goes to `head`: it ends quietly.
        Err(error) if feather_core::stdout::reader_gone(error.as_ref()) => 0,
        Err(error) => {
            crate::log::error(&format!("{error:#}"));
            1
        }
    }
}

fn run(cli: Cli) -> Result<i32> {
    if cli.systemd_cgroup {
        bail!("--systemd-cgroup: feather-oci manages cgroupfs paths only; configure the engine's cgroup manager as cgroupfs (podman --cgroup-manager cgroupfs, Docker native.cgroupdriver=cgroupfs, containerd SystemdCgroup = false)");
    }
    let root = &cli.root;
    // One walk of the root a command: made (and judged) by the commands that add to it.
    match cli.command {
        Command::Spec { .. } | Command::Features => {}
        Command::Create { .. } | Command::Run { .. } => crate::store::root_dir(root)?,
        _ => crate::store::check_root(root)?,
    }
    match cli.command {
        Command::Create {
            bundle,
            console_socket,
            pid_file,
            no_pivot,
            no_new_keyring: _,
            preserve_fds,
            id,
        } => crate::create::create(
            root,
            &CreateArgs {
                id,
                bundle,
                pid_file,
                console_socket,
                no_pivot,
                preserve_fds,
                policy: cli.annotation_policy.clone(),
            },
        )?,
        Command::Start { id } => crate::ops::start(root, &id)?,
        Command::Run {
            bundle,
            console_socket,
            detach,
            keep,
            pid_file,
            no_pivot,
            no_new_keyring: _,
            no_subreaper: _,
            preserve_fds,
            id,
        } => {
            return crate::run::run(
                root,
                RunArgs {
                    create: CreateArgs {
                        id,
                        bundle,
                        pid_file,
                        console_socket,
                        no_pivot,
                        preserve_fds,
                        policy: cli.annotation_policy.clone(),
                    },
                    detach,
                    keep,
                },
            )
        }
        Command::State { id } => crate::ops::state(root, &id)?,
        Command::Kill { all, id, signal } => {
            crate::ops::kill_container(root, &id, signal.as_deref().unwrap_or("SIGTERM"), all)?
        }
        Command::Delete { force, id } => crate::ops::delete(root, &id, force)?,
        Command::Exec {
            process,
            tty,
            console_socket,
            detach,
            pid_file,
            cwd,
            env,
            user,
            cap,
            no_new_privs,
            preserve_fds,
            process_label: _,
            apparmor: _,
            id,
            command,
        } => {
            return crate::exec::exec(
                root,
                &ExecArgs {
                    id,
                    process,
                    tty,
                    console_socket,
                    detach,
                    pid_file,
                    cwd,
                    env,
                    user,
                    caps: cap,
                    no_new_privs,
                    preserve_fds,
                    command,
                },
            )
        }
        Command::Ps {
            format,
            id,
            ps_args: _,
        } => crate::ops::ps(root, &id, format == "json")?,
        Command::List { format, quiet } => crate::ops::list(root, format == "json", quiet)?,
        Command::Pause { id } => crate::ops::pause(root, &id, true)?,
        Command::Resume { id } => crate::ops::pause(root, &id, false)?,
        Command::Events {
            stats,
            interval,
            id,
        } => crate::ops::events(root, &id, stats, parse_interval(&interval)?)?,
        Command::Update { resources, id } => crate::ops::update(root, &id, resources.as_deref())?,
        Command::Features => crate::ops::features()?,
        Command::Spec { bundle } => {
            if cli.rootless.as_deref() == Some("true") {
                bail!("spec --rootless: feather-oci runs as root only");
            }
            crate::ops::spec(&bundle)?
        }
        Command::Checkpoint {
            criu,
            leave_running,
            pre_dump,
            parent_path,
            page_server,
            status_fd,
            id,
        } => {
            let mut refused = criu.refused();
            for (given, flag) in [
                (pre_dump, "--pre-dump"),
                (parent_path.is_some(), "--parent-path"),
                (page_server.is_some(), "--page-server"),
                (status_fd.is_some(), "--status-fd"),
            ] {
                if given {
                    refused.push(flag);
                }
            }
            crate::checkpoint::checkpoint(
                root,
                &CheckpointArgs {
                    id,
                    image_path: criu.image_path,
                    work_path: criu.work_path,
                    leave_running,
                    tcp_established: criu.tcp_established,
                    ext_unix_sk: criu.ext_unix_sk,
                    shell_job: criu.shell_job,
                    file_locks: criu.file_locks,
                    manage_cgroups_mode: criu.manage_cgroups_mode,
                    refused,
                },
            )?
        }
        Command::Restore {
            criu,
            bundle,
            detach,
            pid_file,
            console_socket: _,
            no_subreaper: _,
            no_pivot: _,
            lsm_profile: _,
            lsm_mount_context: _,
            id,
        } => {
            return crate::restore::restore(
                root,
                &RestoreArgs {
                    id,
                    bundle,
                    refused: criu.refused(),
                    image_path: criu.image_path,
                    work_path: criu.work_path,
                    detach,
                    pid_file,
                    tcp_established: criu.tcp_established,
                    ext_unix_sk: criu.ext_unix_sk,
                    shell_job: criu.shell_job,
                    file_locks: criu.file_locks,
                    manage_cgroups_mode: criu.manage_cgroups_mode,
                    policy: cli.annotation_policy.clone(),
                },
            )
        }
    }
    Ok(0)
}

/// Go's flag packages take a long flag with one dash, and engines use it: containerd's runc
/// client (go-runc) passes `-no-subreaper` to `restore`.
fn go_spelling(arg: std::ffi::OsString) -> std::ffi::OsString {
    const SINGLE_DASHED: [&str; 1] = ["-no-subreaper"];
    match arg.to_str() {
        Some(text) if SINGLE_DASHED.contains(&text) => format!("-{text}").into(),
        _ => arg,
    }
}

/// Go's duration spelling, for the common cases: "5s", "500ms", "1m".
fn parse_interval(text: &str) -> Result<Duration> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: u64 = number
        .parse()
        .map_err(|_| anyhow::anyhow!("--interval {text}: e.g. 5s"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(number),
        "s" | "" => Duration::from_secs(number),
        "m" => Duration::from_secs(number * 60),
        _ => bail!("--interval {text}: e.g. 5s, 500ms or 1m"),
    })
}
