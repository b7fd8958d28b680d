use feather_core::Error as CoreError;
use feather_migrate::MigrateError;
use feather_net::NetError;
use feather_sys::SysError;

use crate::boot::BootError;
use crate::commands::CommandError;

/// Everything that can go wrong with a VM, each variant naming the VM or path concerned. A
/// variant with a source does not repeat it in its message: the CLI prints the chain of causes
/// (`{:#}`), and text that leaves a process carries it whole (`feather_core::error::causes`).
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Core(#[from] CoreError),

    /// CRIU, a VM archive or a migration's transfer failed; the message names the VM, the
    /// archive or the peer.
    #[error(transparent)]
    Migrate(#[from] MigrateError),

    /// CRIU, a VM archive or a migration's transfer failed for this VM.
    #[error("VM {vm}")]
    MigrateVm {
        vm: String,
        #[source]
        source: Box<MigrateError>,
    },

    /// The VM's files in its state root.
    #[error("VM {vm}")]
    State {
        vm: String,
        #[source]
        source: CoreError,
    },

    #[error("VM {vm}")]
    Sys {
        vm: String,
        #[source]
        source: SysError,
    },

    /// The VM's network (addresses, bridge, firewall, published ports).
    #[error("VM {vm}")]
    Net {
        vm: String,
        #[source]
        source: Box<NetError>,
    },

    #[error("VM {vm}: {doing}")]
    Io {
        vm: String,
        doing: String,
        #[source]
        source: std::io::Error,
    },

    /// A message between the processes of the VM's start was not the one expected.
    #[error("VM {vm}: {during}")]
    Boot {
        vm: String,
        during: &'static str,
        #[source]
        source: BootError,
    },

    /// What a migration brought is not what its sender sent.
    #[error("VM {vm}: {file}")]
    Received {
        vm: String,
        file: String,
        #[source]
        source: feather_migrate::transfer::TransferError,
    },

    /// A received VM's sender did not let it go.
    #[error("VM {vm}: the migration was not completed")]
    NotCompleted {
        vm: String,
        #[source]
        source: feather_migrate::transfer::TransferError,
    },

    #[error("VM {vm}: cannot reach the VM's init")]
    Command {
        vm: String,
        #[source]
        source: CommandError,
    },

    /// The caller's open-file limit is below a descriptor number init keeps a socket at.
    #[error(
        "VM {vm}: the open-file limit (`ulimit -n`) is {limit}, but a VM's init keeps \
         sockets at descriptor {highest}: raise the limit to at least {needed} (e.g. \
         `ulimit -n 1024`) and try again"
    )]
    DescriptorLimit {
        vm: String,
        limit: u64,
        highest: i32,
        needed: u64,
    },

    #[error("VM {vm}: its keeper did not answer")]
    KeeperSilent {
        vm: String,
        #[source]
        source: std::io::Error,
    },

    #[error("VM {vm}: unexpected answer from its keeper: {answer}")]
    KeeperAnswer { vm: String, answer: String },

    /// A file feather writes for the VM could not be encoded.
    #[error("VM {vm}: {what}")]
    Encode {
        vm: String,
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A migration failed before the VM was let go, and the VM runs here again.
    #[error("VM {vm}: migration failed, the VM runs here again")]
    MigrationFailed {
        vm: String,
        #[source]
        source: Box<VmError>,
    },

    /// A migration mode this host cannot do.
    #[error("{mode} migration is not possible here: {why}")]
    ModeUnavailable { mode: &'static str, why: String },

    /// Post-copy: the VM ran at the receiver, and the transfer of its remaining memory failed.
    #[error("VM {vm}: it ran at {to}, but the rest of its memory could not follow, so the copy there is incomplete and `feather serve` ends it; the VM is lost (its processes here ended when it ran there)")]
    PagesLost {
        vm: String,
        to: String,
        #[source]
        source: Box<VmError>,
    },

    /// A migration failed, and so did restoring the VM here (`source`).
    #[error("VM {vm}: migration failed ({migration}) and so did restoring it here; it stays checkpointed: `feather restore {vm}`")]
    MigrationAndRestoreFailed {
        vm: String,
        migration: String,
        #[source]
        source: Box<VmError>,
    },

    #[error("VM {vm}: {why}")]
    Failed { vm: String, why: String },

    /// A restored VM in which the host's state roots could not be hidden: it is not let run,
    /// and stays checkpointed.
    #[error("VM {vm}: cannot hide the host's state folders in the restored VM; it stays checkpointed and was not let run (restore it again once the host has memory, processes and mounts to spare)")]
    NotHidden {
        vm: String,
        #[source]
        source: crate::hiding::HidingError,
    },

    /// A record of a checkpoint (`layers.json`, its format) that no feather this old or
    /// younger writes: from a newer feather, damaged, or crafted. Refused as it is read,
    /// before anything is derived from it.
    #[error("VM {}: its checkpoint's {}: {}: {}; {}", .0.vm, .0.file, .0.entry, .0.why, .0.remedy)]
    CheckpointRecord(Box<RecordRefusal>),

    /// What a VM's keeper reported when it could not do what it was asked (its message names
    /// the VM and carries every cause).
    #[error("{0}")]
    Keeper(String),

    #[error("commit {vm}: the host changed {} after the VM copied {}; nothing was committed (look at both, then commit with --force to overwrite the host's version): {}", if .paths.len() == 1 { "this path" } else { "these paths" }, if .paths.len() == 1 { "it" } else { "them" }, .paths.join(", "))]
    CommitConflict { vm: String, paths: Vec<String> },

    #[error("commit {vm}: the VM made {} that would run with privileges on the host; nothing was committed (review {} with `feather diff {vm}`, then commit with --keep-privileges to apply {} as they are, or commit other paths): {}", if .paths.len() == 1 { "a program" } else { "programs" }, if .paths.len() == 1 { "it" } else { "them" }, if .paths.len() == 1 { "it" } else { "them" }, .paths.join(", "))]
    CommitPrivileges { vm: String, paths: Vec<String> },

    #[error("commit {vm}: the VM's layer holds {} where the VM cannot write by itself (a folder hidden from every VM, such as a state root, or one of its --ro paths): either it got past a defence (see \"Changes where a VM cannot write\" in docs/security.md), or it wrote there before that folder was guarded (a state root registered since, or a layer imported or migrated from a host where that path was none); such changes are never committed, and nothing was committed (review the rest with `feather diff {vm}`, which marks {}, before trusting any of it, all of it unless you know the folder became a root after the VM wrote there; then commit the paths you want by name, or drop those changes with `feather reset {vm} PATH…`, or every change with `feather reset {vm}`): {}", if .paths.len() == 1 { "a change" } else { "changes" }, if .paths.len() == 1 { "it" } else { "them" }, .paths.join(", "))]
    CommitForbidden { vm: String, paths: Vec<String> },

    #[error("commit {vm}: the VM deleted or replaced {} of the host's too large to search for a state root in (a root there would be emptied with it); commit never removes what it could not search, and nothing was committed (if you mean the host to lose {}, check that no feather state root lies in {} and remove {} on the host yourself; commit other paths by name, or drop those changes with `feather reset {vm} PATH…`): {}", if .paths.len() == 1 { "a folder" } else { "folders" }, if .paths.len() == 1 { "it" } else { "them" }, if .paths.len() == 1 { "it" } else { "them" }, if .paths.len() == 1 { "it" } else { "them" }, .paths.join(", "))]
    CommitUnsearched { vm: String, paths: Vec<String> },

    #[error("commit {vm}: {} at, beneath or over a filesystem mounted on the host where the VM's layer does not reach (mounted under its base or on a layer's own folder after its start, or an automount point; or the filesystem a layer lay over, unmounted since): the VM saw another folder there, not that filesystem, and commit never writes into one or empties it; nothing was committed (unmount it, or mount back the one the VM saw, and commit again, or start the VM again to layer what is there now; commit other paths by name, or drop those changes with `feather reset {vm} PATH…`, or every change with `feather reset {vm}`): {}", if .paths.len() == 1 { "a change lies" } else { "changes lie" }, .paths.join(", "))]
    CommitHostMount { vm: String, paths: Vec<String> },

    #[error("commit {vm}: the host's folder {lower} beneath the VM's layer at {layer} {why}; every change of that layer is refused, and nothing was committed ({remedy}; or commit other paths by name)")]
    CommitUnseenLayer {
        vm: String,
        layer: String,
        lower: String,
        why: &'static str,
        remedy: String,
    },

    #[error("commit {vm}: the VM widened who may use {} of the base, or made {} others than root may write; nothing was committed (review {} with `feather diff {vm}`, then commit with --keep-privileges to apply {} as they are, or commit other paths): {}", if .paths.len() == 1 { "an entry" } else { "entries" }, if .paths.len() == 1 { "a new one" } else { "new ones" }, if .paths.len() == 1 { "it" } else { "them" }, if .paths.len() == 1 { "it" } else { "them" }, .paths.join(", "))]
    CommitAccess { vm: String, paths: Vec<String> },
}

/// Why a checkpoint's record was refused (see [`VmError::CheckpointRecord`]).
#[derive(Debug)]
pub struct RecordRefusal {
    pub vm: String,
    /// The record, and the archive it came in.
    pub file: String,
    /// Which entry of it (or "the file").
    pub entry: String,
    pub why: String,
    /// What the user can do.
    pub remedy: String,
}

pub type Result<T, E = VmError> = std::result::Result<T, E>;

/// Attaches the VM's name to a lower layer's error.
pub(crate) trait InVm<T> {
    fn in_vm(self, vm: &impl std::fmt::Display) -> Result<T>;
}

impl<T> InVm<T> for feather_sys::Result<T> {
    fn in_vm(self, vm: &impl std::fmt::Display) -> Result<T> {
        self.map_err(|source| VmError::Sys {
            vm: vm.to_string(),
            source,
        })
    }
}

impl<T> InVm<T> for feather_core::Result<T> {
    fn in_vm(self, vm: &impl std::fmt::Display) -> Result<T> {
        self.map_err(|source| VmError::State {
            vm: vm.to_string(),
            source,
        })
    }
}

impl<T> InVm<T> for feather_net::Result<T> {
    fn in_vm(self, vm: &impl std::fmt::Display) -> Result<T> {
        self.map_err(|source| VmError::Net {
            vm: vm.to_string(),
            source: Box::new(source),
        })
    }
}

impl<T> InVm<T> for feather_migrate::Result<T> {
    fn in_vm(self, vm: &impl std::fmt::Display) -> Result<T> {
        self.map_err(|source| VmError::MigrateVm {
            vm: vm.to_string(),
            source: Box::new(source),
        })
    }
}

pub(crate) fn failed(vm: &impl std::fmt::Display, why: impl Into<String>) -> VmError {
    VmError::Failed {
        vm: vm.to_string(),
        why: why.into(),
    }
}

/// An I/O error of `doing` something for the VM.
pub(crate) fn io(
    vm: &impl std::fmt::Display,
    doing: impl Into<String>,
) -> impl FnOnce(std::io::Error) -> VmError {
    let (vm, doing) = (vm.to_string(), doing.into());
    move |source| VmError::Io { vm, doing, source }
}

/// A file of the VM's that could not be encoded.
pub(crate) fn encode<E: std::error::Error + Send + Sync + 'static>(
    vm: &impl std::fmt::Display,
    what: impl Into<String>,
) -> impl FnOnce(E) -> VmError {
    let (vm, what) = (vm.to_string(), what.into());
    move |source| VmError::Encode {
        vm,
        what,
        source: Box::new(source),
    }
}
