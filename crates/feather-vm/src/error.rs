use feather_core::Error as CoreError;
use feather_sys::SysError;

/// Everything that can go wrong with a VM, each variant naming the VM or path concerned.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Core(#[from] CoreError),

    /// CRIU or a VM archive failed; the message names the VM.
    #[error(transparent)]
    Migrate(#[from] feather_migrate::MigrateError),

    #[error("VM {vm}: {source}")]
    Sys {
        vm: String,
        #[source]
        source: SysError,
    },

    #[error("VM {vm}: {why}")]
    Failed { vm: String, why: String },

    /// What a VM's keeper reported when it could not start the VM (its message names the VM).
    #[error("{0}")]
    Keeper(String),

    #[error("commit {vm}: the host changed {} after the VM copied {}; nothing was committed (look at both, then commit with --force to overwrite the host's version): {}", if .paths.len() == 1 { "this path" } else { "these paths" }, if .paths.len() == 1 { "it" } else { "them" }, .paths.join(", "))]
    CommitConflict { vm: String, paths: Vec<String> },
}

pub type Result<T, E = VmError> = std::result::Result<T, E>;

/// Attaches the VM's name to a system-call error.
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

pub(crate) fn failed(vm: &impl std::fmt::Display, why: impl Into<String>) -> VmError {
    VmError::Failed {
        vm: vm.to_string(),
        why: why.into(),
    }
}
