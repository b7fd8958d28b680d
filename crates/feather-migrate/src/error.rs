use std::path::PathBuf;

/// What can go wrong moving a VM; each says which VM or file, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("CRIU is not installed ({looked}); run feather's setup.sh (or scripts/install-criu), or set FEATHER_CRIU to a criu {min} or newer")]
    CriuMissing { looked: String, min: &'static str },

    #[error("CRIU at {path} is version {version}, but this kernel needs {min} or newer (Debian 12's 3.17 fails with \"Unexpected rt vDSO area bounds\"); run feather's scripts/install-criu")]
    CriuTooOld {
        path: PathBuf,
        version: String,
        min: &'static str,
    },

    #[error("CRIU at {path} does not run: {why}")]
    CriuBroken { path: PathBuf, why: String },

    /// CRIU refused or failed; `errors` are its own error lines, which name the resource.
    #[error("VM {vm}: CRIU cannot {action} it: {} (full log: {})", .errors.join("; "), .log.display())]
    Criu {
        vm: String,
        action: &'static str,
        errors: Vec<String>,
        log: PathBuf,
    },

    #[error("{what} {}: {why}", .path.display())]
    Archive {
        what: &'static str,
        path: PathBuf,
        why: String,
    },

    #[error("migration to/from {peer}: {why}")]
    Transfer { peer: String, why: String },

    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = MigrateError> = std::result::Result<T, E>;

pub(crate) fn io_at(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> MigrateError {
    let path = path.into();
    move |source| MigrateError::Io { path, source }
}
