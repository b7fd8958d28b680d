//! The command line: clap structures only.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::candidates;

#[derive(Debug, Parser)]
#[command(
    name = "feather",
    version,
    about = "Feather-weight virtual machines: copy-on-write views of this host, in milliseconds"
)]
#[command(
    after_help = "Exit status: 0 success; 1 feather failed; 2 bad usage. `run` and `exec` return the command's own status, \
                        125 if feather could not run it, 126 if it could not be executed, 127 if it was not found."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

// The options of every command (a struct of their own so that crate::parse can give them to a
// command line narrowed to one subcommand): an option of `Cli`'s own belongs here, or the
// narrowed line would not know it (parse::tests compares both lines).
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// State folder (VMs, layers, sockets) [default: /var/lib/feather, sockets in /run/feather]
    #[arg(long, global = true, env = "FEATHER_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
}

// Each subcommand's arguments (and their help texts) are made only once the line names it: made
// all before one is parsed, they were half of the parse of `ls` or `--version` (crate::parse).
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Create a VM: an empty copy-on-write layer over the host (or --base); nothing is copied
    Create(CreateCommandArgs),
    /// Start a VM in the background (and the services it was created with)
    Start(StartArgs),
    /// Stop a VM: SIGTERM to its processes, SIGKILL after --time seconds
    Stop {
        #[arg(add = candidates::vm_names())]
        name: String,
        /// Seconds to wait before killing
        #[arg(short, long, default_value_t = 10)]
        time: u64,
    },
    /// Remove a VM and its layer
    Rm {
        /// One VM or several: each is removed in turn, and one that cannot be does not keep
        /// the others
        #[arg(add = candidates::vm_names(), required = true, value_name = "NAME")]
        names: Vec<String>,
        /// Stop it first if it is running
        #[arg(short, long)]
        force: bool,
    },
    /// Run a command in a VM (created and started as needed); with --rm, in a throw-away VM
    Run(RunArgs),
    /// Run a command in a running VM
    Exec(ExecArgs),
    /// Inside a VM: run APP in another VM, as a policy `invoke` rule allows; path arguments are
    /// handed over and rewritten (also called as `feather-open`, and `xdg-open` as the app
    /// `xdg-open`). Exit status: the program's; 77 refused by the policy; 125 could not be done
    Open {
        /// The VM to run it in [default: the one the allowing rule names]
        #[arg(long, env = "FEATHER_OPEN_VM", value_name = "VM")]
        vm: Option<String>,
        /// The application's name, as the policy knows it
        app: String,
        /// Paths to hand over (or what the rule's args= allows)
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
    /// List VMs, then the OCI containers of the runtime roots feather-oci was used with
    Ls {
        #[arg(long)]
        json: bool,
        /// Only the OCI containers (with --json their list: the VMs' list keeps its shape)
        #[arg(long)]
        oci: bool,
    },
    /// List the processes of a running VM, or of an OCI container by its engine's id
    Ps {
        #[arg(add = candidates::vm_names())]
        name: String,
        #[arg(long)]
        json: bool,
        /// NAME is an OCI container in this runtime root (feather-oci's --root)
        #[arg(long, value_name = "DIR")]
        runtime_root: Option<std::path::PathBuf>,
    },
    /// Everything about a VM, as JSON
    Inspect {
        #[arg(add = candidates::vm_names())]
        name: String,
    },
    /// What a VM (or an OCI container, by its engine's id) changed: A(dded), M(odified),
    /// D(eleted) paths
    Diff {
        #[arg(add = candidates::vm_names())]
        name: String,
        #[arg(long)]
        json: bool,
        /// NAME is an OCI container in this runtime root (feather-oci's --root)
        #[arg(long, value_name = "DIR")]
        runtime_root: Option<std::path::PathBuf>,
    },
    /// Apply a VM's changes (all, or those at or below PATHS) to its base
    Commit {
        #[arg(add = candidates::vm_names())]
        name: String,
        paths: Vec<PathBuf>,
        /// Overwrite host files changed after the VM copied them
        #[arg(long)]
        force: bool,
        /// Apply set-user-ID/set-group-ID programs and file capabilities the VM made, and its
        /// changes that widen who may use an entry (mode, owner, group, ACL)
        #[arg(long)]
        keep_privileges: bool,
    },
    /// Drop all changes of a stopped VM, or those at or below the paths given
    Reset {
        #[arg(add = candidates::vm_names())]
        name: String,
        /// Paths in the VM: drop only the changes at or below them (the rest can be committed)
        paths: Vec<PathBuf>,
    },
    /// Services: the host's installed services, and private copies of them in VMs
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Save a running VM's processes with CRIU (they end, unless --leave-running)
    Checkpoint {
        #[arg(add = candidates::vm_names())]
        name: String,
        /// Keep the VM running after saving it
        #[arg(long)]
        leave_running: bool,
        /// Also write the VM (config, layers, checkpoint) to FILE, a zstd-compressed tar, as it
        /// was at the dump (a VM left running stays frozen until FILE is written)
        #[arg(long, value_name = "FILE")]
        export: Option<PathBuf>,
    },
    /// Bring a checkpointed VM back, where it was
    Restore {
        #[arg(add = candidates::vm_names())]
        name: String,
        /// First add the VM to this state root from FILE (made by `checkpoint --export`)
        #[arg(long, value_name = "FILE")]
        import: Option<PathBuf>,
        #[command(flatten)]
        accept: AcceptArgs,
    },
    /// Move a running VM to another host's `feather serve` (post-copy where CRIU's lazy pages
    /// work, else stop-and-copy)
    Migrate {
        #[arg(add = candidates::vm_names())]
        name: String,
        /// The receiver, ADDR:PORT
        #[arg(long, value_name = "ADDR:PORT")]
        to: String,
        /// Shared secret of sender and receiver
        #[arg(long, env = "FEATHER_MIGRATE_TOKEN", hide_env_values = true)]
        token: String,
        #[command(flatten)]
        tls: TlsArgs,
        /// post-copy: frozen for all but the memory, which follows on demand; stop-and-copy:
        /// frozen for the whole move; pre-copy needs soft-dirty tracking (default: the best
        /// this host can do, see `feather check criu`)
        #[arg(long)]
        mode: Option<MigrateMode>,
        /// The measured phases as JSON on stdout
        #[arg(long)]
        json: bool,
    },
    /// Receive VMs sent with `feather migrate` and run them here
    Serve {
        #[arg(long, value_name = "ADDR:PORT")]
        listen: String,
        /// Shared secret of sender and receiver
        #[arg(long, env = "FEATHER_MIGRATE_TOKEN", hide_env_values = true)]
        token: String,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        accept: AcceptArgs,
        /// Accept a VM named NAME although a policy rule names it (repeatable); a VM whose name
        /// a rule names is refused otherwise
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// Exit after the first VM received (with its outcome)
        #[arg(long)]
        once: bool,
    },
    /// Shuttle's policy: the rules that let VMs (and the host) interact, and what they decide
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Shuttle's audit log: every decision on a crossing between VMs, oldest first
    Audit {
        /// Keep printing decisions as they are made, until interrupted
        #[arg(short, long)]
        follow: bool,
        /// Entries to show from the end
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Only entries with this VM as source or target
        #[arg(long, value_name = "NAME")]
        vm: Option<String>,
        /// Only refusals
        #[arg(long)]
        denied: bool,
        /// One JSON object a line, as in the log
        #[arg(long)]
        json: bool,
    },
    /// The pool of throw-away VMs made ahead for `run --rm` (size 1 unless set: on by default;
    /// `--size 0` turns it off for the root); with no option, its size and the VMs it holds
    Pool(PoolArgs),
    /// The state root's private network: its bridge and firewall tables
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Check a property of this machine or of confinement; exits 1 if it does not hold
    #[command(subcommand)]
    Check(CheckCommand),
    /// Serve a web view of this state root's VMs (prints the URL to open, with a one-time token)
    Web {
        /// Address to serve on: a loopback address
        #[arg(long, value_name = "ADDR:PORT", default_value = feather_web::Options::DEFAULT_LISTEN)]
        listen: std::net::SocketAddr,
        /// Serve HTTPS with this certificate (PEM); required beyond loopback
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM)
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Print a completion script for SHELL, e.g. `feather completions bash >
    /// /usr/share/bash-completion/completions/feather`
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (feather.1 and one per command, e.g. feather-create.1) into DIR
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Args, Clone, Default)]
pub struct CreateArgs {
    /// Root tree the VM sees copy-on-write [default: /]
    #[arg(long, value_name = "DIR")]
    pub base: Option<PathBuf>,
    /// Memory limit, e.g. 512M or 2G [default: none]
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Largest number of processes and threads, or `max` for no limit [default: 2048]
    #[arg(long, value_name = "N|max")]
    pub pids: Option<String>,
    /// Cap on the bytes the VM's layer may hold, e.g. 10G (a project quota: the state root's
    /// filesystem must be mounted with prjquota) [default: none]
    #[arg(long, value_name = "SIZE")]
    pub disk: Option<String>,
    /// Let the VM's processes create user namespaces (refused by default: docs/confinement.md)
    #[arg(long)]
    pub allow_userns: bool,
    /// CPU limit in cores, e.g. 0.5
    #[arg(long, value_name = "CORES")]
    pub cpus: Option<String>,
    /// Network: private (own address on the state root's bridge), none (loopback only) or
    /// host (the host's network, not confined) [default: private]
    #[arg(long, value_name = "MODE")]
    pub net: Option<String>,
    /// Forward a host port to a port of the VM, e.g. 8081:80 or 5353:53/udp (repeatable)
    #[arg(short = 'p', long, value_name = "HOSTPORT:VMPORT[/tcp|udp]")]
    pub publish: Vec<String>,
    /// Let the VM reach beyond the host (masqueraded as the host)
    #[arg(long)]
    pub egress: bool,
    /// A label policy rules can select the VM by, as @tag:NAME (repeatable)
    #[arg(long = "tag", value_name = "NAME")]
    pub tags: Vec<String>,
    /// See PATH of the base read-only, as the base has it, instead of through the VM's layer:
    /// writes there fail, lookups cost what they cost on the host (repeatable), e.g. --ro /usr
    #[arg(long = "ro", value_name = "PATH")]
    pub read_only: Vec<PathBuf>,
}

impl CreateArgs {
    pub fn is_empty(&self) -> bool {
        self.base.is_none()
            && self.memory.is_none()
            && self.pids.is_none()
            && self.cpus.is_none()
            && self.disk.is_none()
            && !self.allow_userns
            && self.net.is_none()
            && self.publish.is_empty()
            && !self.egress
            && self.tags.is_empty()
            && self.read_only.is_empty()
    }
}

// Certificates for a migration's TLS instead of the ephemeral one the receiver makes: both
// ends verify the other's against the CA (the token is proved as well). No doc comment: flattened
// into a deferred subcommand, it would replace that command's help text (parse::tests).
#[derive(Debug, Args, Clone)]
pub struct TlsArgs {
    /// This host's certificate chain, PEM (with --tls-key and --tls-ca); the receiver's must
    /// name the host `migrate --to` gives
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// This host's private key, PEM
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// The CA, PEM, that must have issued the other host's certificate
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
}

// What an imported VM's config may ask of this host beyond what it always accepts (the rest is
// refused, naming the field: docs/security.md, row 66). No doc comment, as `TlsArgs`.
#[derive(Debug, Args, Clone, Default)]
pub struct AcceptArgs {
    /// The tree of this host imported VMs run over (default `/`); a VM made over another is
    /// refused
    #[arg(long, value_name = "PATH")]
    pub base: Option<PathBuf>,
    /// Accept VMs whose processes may create user namespaces (`create --allow-userns`)
    #[arg(long)]
    pub allow_userns: bool,
    /// Accept VMs that publish host ports, published here as where they ran
    #[arg(long)]
    pub allow_publish: bool,
    /// Accept VMs that reach beyond this host, masqueraded as it (`create --egress`)
    #[arg(long)]
    pub allow_egress: bool,
    /// Accept VMs carrying TAG, which policy rules select VMs by (repeatable)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
}

impl AcceptArgs {
    pub fn any(&self) -> bool {
        self.base.is_some()
            || self.allow_userns
            || self.allow_publish
            || self.allow_egress
            || !self.tags.is_empty()
    }
}

#[derive(Debug, Args, Clone)]
pub struct ProcessArgs {
    /// Give the command a terminal (the VM's own)
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Keep stdin attached (it always is; accepted for habit)
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Set an environment variable
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Run as this user (name or uid from the VM's /etc/passwd)
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory inside the VM
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PoolArgs {
    /// Keep N VMs made ahead: `run --rm` without VM options (no --name, --base, --net, limits,
    /// --ro, --publish, -t) takes one of them instead of making its own, and the pool is
    /// refilled after its command
    #[arg(long, value_name = "N", conflicts_with = "drain")]
    pub size: Option<usize>,
    /// How long a pooled VM waits unclaimed before it is removed (e.g. 30s, 10m, 2h; 0: for
    /// ever; 10m unless set); the pool is refilled by the next run
    #[arg(long, value_name = "TIME", value_parser = idle_time, conflicts_with = "drain")]
    pub idle: Option<std::time::Duration>,
    /// Remove every pooled VM and set the size to 0
    #[arg(long)]
    pub drain: bool,
    /// Bring the pool to its size now, as the next run's refill would: in a session of its
    /// own, in /, with none of the caller's environment but the settings that shape a VM
    #[arg(long, conflicts_with_all = ["size", "drain", "idle"])]
    pub fill: bool,
    /// With --fill: the pool's generation its starter saw; under another (`network down` came
    /// since) the fill makes nothing
    #[arg(long, hide = true, value_name = "N", requires = "fill")]
    pub generation: Option<u64>,
}

/// `pool --idle`: a time such as `90s`, `10m`, `1h 30m`; `0` (for ever) as a zero time.
fn idle_time(text: &str) -> Result<std::time::Duration, String> {
    if text.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e}: a time such as 30s, 10m or 2h is expected (0: for ever)"))
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Use a throw-away VM, removed when the command ends; without VM options it is taken
    /// from the root's pool (on by default: a VM made ahead is left waiting, see `feather
    /// pool`); FEATHER_POOL=0 in the environment (after sudo: `sudo FEATHER_POOL=0 feather
    /// …`) keeps the run out of it, `feather pool --size 0` turns it off for the root
    #[arg(long)]
    pub rm: bool,
    #[command(flatten)]
    pub process: ProcessArgs,
    #[command(flatten)]
    pub create: CreateArgs,
    /// The VM (created if it does not exist); optional with --rm
    #[arg(add = candidates::vm_names())]
    pub name: Option<String>,
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

// `create`'s and `start`'s arguments: structs of their own, as `exec`'s, so that crate::parse
// can narrow the command line to them (a kept VM's create and start, one after the other for
// every VM a script brings up); no doc comment: the variant's is the command's help.
#[derive(Debug, Args)]
pub struct CreateCommandArgs {
    pub name: String,
    #[command(flatten)]
    pub options: CreateArgs,
    /// A host service the VM starts (with what it needs) whenever it starts; repeatable
    #[arg(long = "service", value_name = "UNIT")]
    pub services: Vec<String>,
    /// Those services start with empty state, not the host's data (on the VM's first start)
    #[arg(long, requires = "services")]
    pub fresh_state: bool,
    /// Start the VM once it is created, as `feather start` does: one command per VM for a
    /// script bringing up many (as `docker run -d`)
    #[arg(long)]
    pub start: bool,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    #[arg(add = candidates::vm_names())]
    pub name: String,
}

// `exec`'s arguments (a struct of their own, as `run`'s, so that crate::parse can narrow the
// command line to it; no doc comment: the variant's is the command's help).
#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub process: ProcessArgs,
    #[arg(add = candidates::vm_names())]
    pub name: String,
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

// Made once named, as `Command`'s (clap's `defer` is not inherited).
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum ServiceCommand {
    /// The host's installed services (unit files and SysV scripts) and whether each can be
    /// duplicated in a VM
    Catalog {
        #[arg(long)]
        json: bool,
    },
    /// Start services (with their dependency closure) in a running VM, from the host's units
    Start {
        #[arg(add = candidates::vm_names())]
        name: String,
        #[arg(required = true, value_name = "UNIT")]
        units: Vec<String>,
        /// Start with empty state instead of the host's data: their data folders are emptied in
        /// the VM's layer (the host's stay untouched) and initialised
        #[arg(long)]
        fresh_state: bool,
        #[arg(long)]
        json: bool,
    },
    /// Stop services in a running VM (and what needs them), in reverse dependency order
    Stop {
        #[arg(add = candidates::vm_names())]
        name: String,
        #[arg(required = true, value_name = "UNIT")]
        units: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Stop services in a running VM (if they run), then start them again
    Restart {
        #[arg(add = candidates::vm_names())]
        name: String,
        #[arg(required = true, value_name = "UNIT")]
        units: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Run the ExecReload= commands of running services (they reread their configuration)
    Reload {
        #[arg(add = candidates::vm_names())]
        name: String,
        #[arg(required = true, value_name = "UNIT")]
        units: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// The services of a running VM: state, main pid, uptime, restarts, readiness
    Ls {
        #[arg(add = candidates::vm_names())]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// A service's log in a running VM: its stdout, stderr and syslog messages
    Logs {
        #[arg(add = candidates::vm_names())]
        name: String,
        unit: String,
        /// Lines to show from the end
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// Keep printing what is appended, until interrupted
        #[arg(short, long)]
        follow: bool,
    },
    /// One service of a running VM in detail, with the last lines of its log
    Status {
        #[arg(add = candidates::vm_names())]
        name: String,
        unit: String,
        /// Log lines to show
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
        #[arg(long)]
        json: bool,
    },
}

/// `feather migrate --mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
// The names are the modes' own (post-copy, stop-and-copy, pre-copy).
#[allow(clippy::enum_variant_names)]
pub enum MigrateMode {
    PostCopy,
    StopAndCopy,
    PreCopy,
}

// Made once named, as `Command`'s (clap's `defer` is not inherited).
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum NetworkCommand {
    /// Remove the root's bridge and firewall tables now, unless a VM uses them (after the last
    /// throw-away VM they otherwise stay FEATHER_NETWORK_LINGER seconds, 300 unless set, for
    /// the next VM to find them made); empties the root's pool first (its VMs use the network),
    /// keeping its size setting
    Down,
}

// Made once named, as `Command`'s (clap's `defer` is not inherited).
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum PolicyCommand {
    /// The rules in force, in the order they are consulted (first match wins)
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Check the policy files; given a request, say which rule decides it and why the rules
    /// before it do not (exit 0: allowed, 3: asks, 4: denied, 1: the policy is malformed)
    Check {
        /// ipc, invoke or files
        #[arg(requires_all = ["object", "source", "target"])]
        kind: Option<String>,
        /// What is asked for: unix:/PATH, tcp:PORT, dbus:NAME, an application, a path
        object: Option<String>,
        /// Who asks: a VM's name or @host
        #[arg(long = "from", value_name = "VM|@host")]
        source: Option<String>,
        /// Of whom: a VM's name or @host
        #[arg(long = "to", value_name = "VM|@host")]
        target: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

// Made once named, as `Command`'s (clap's `defer` is not inherited).
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum CheckCommand {
    /// Whether a CRIU that works on this kernel is installed (checkpoint, restore, migrate),
    /// and which kernel features it lacks
    Criu {
        #[arg(long)]
        json: bool,
    },
    /// Try every IPC channel host→VM, VM→host, VM→VM and inside one VM, and print the matrix
    /// (uses temporary VMs over /; with VM, probes that running VM, or OCI container, as the
    /// first one)
    Ipc {
        /// A running VM to probe, or a running OCI container by its engine's id
        vm: Option<String>,
        /// VM is an OCI container in this runtime root (feather-oci's --root)
        #[arg(long, value_name = "DIR", requires = "vm")]
        runtime_root: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
        /// Print the matrix as Markdown (as in docs/ipc-matrix.md)
        #[arg(long, conflicts_with = "json")]
        markdown: bool,
        /// Name the probe's VMs ipcprobe-{a,b,c}-LABEL and its objects fpLABEL… (letters and
        /// digits), to write shuttle policy rules for them beforehand (docs/shuttle.md)
        #[arg(long, value_parser = probe_label)]
        label: Option<String>,
    },
}

/// A probe label: it becomes part of VM names and of the probe's object names.
fn probe_label(label: &str) -> Result<String, String> {
    if !label.is_empty() && label.len() <= 16 && label.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(label.to_owned())
    } else {
        Err("use 1 to 16 letters or digits".to_owned())
    }
}
