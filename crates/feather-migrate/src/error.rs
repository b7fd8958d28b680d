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

    #[error("CRIU at {path} does not run")]
    CriuUnreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// CRIU refused or failed; `errors` are its own error lines, which name the resource.
    #[error("VM {vm}: CRIU cannot {action} it: {} (full log: {})", .errors.join("; "), .log.display())]
    Criu {
        vm: String,
        action: &'static str,
        errors: Vec<String>,
        log: PathBuf,
    },

    /// tar refused or failed; `why` is its own error output, or what the archive lacks.
    #[error("{what} {}: {why}", .path.display())]
    Archive {
        what: &'static str,
        path: PathBuf,
        why: String,
    },

    #[error("{what} {}: cannot run tar", .path.display())]
    Tar {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("import from {}: its config.toml", .path.display())]
    ArchiveConfig {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },

    #[error("migration to/from {peer}")]
    Transfer {
        peer: String,
        #[source]
        source: TransferError,
    },

    #[error("{}", .path.display())]
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

/// What went wrong between the two ends of one transfer (the peer is named by
/// [`MigrateError::Transfer`]).
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("cannot connect")]
    Connect(#[source] std::io::Error),
    #[error("cannot listen")]
    Listen(#[source] std::io::Error),
    #[error("connection lost")]
    Lost(#[source] std::io::Error),
    #[error("the other side closed the connection")]
    Closed,
    #[error("a message longer than {limit} bytes: not a feather peer")]
    TooLong { limit: usize },
    #[error("garbled message")]
    Garbled(#[source] serde_json::Error),
    #[error("expected {expected}, received {received}")]
    Unexpected {
        expected: &'static str,
        received: &'static str,
    },
    #[error("migration protocol version {received}, where this side speaks {expected} (install the same build of feather on both hosts)")]
    Version { expected: u32, received: u32 },
    #[error("wrong token")]
    WrongToken,
    #[error("{vm:?} is not a VM name")]
    BadName { vm: String },
    /// This side declined the offer (`why`: the receiver's check, its causes joined).
    #[error("declined: {why}")]
    Declined { why: String },
    /// The other side refused; `why` is its own text.
    #[error("refused: {why}")]
    Refused { why: String },
    /// The receiver could not restore the VM; `why` is its own text.
    #[error("could not restore it: {why}")]
    NotRestored { why: String },
    #[error("reading the archive")]
    ReadingArchive(#[source] std::io::Error),
    #[error("the archive was not read to its end")]
    NotReadToEnd,
    #[error("the {what} is not authentic")]
    NotAuthentic { what: &'static str },
    #[error("received {received} of {sent} bytes")]
    Size { sent: u64, received: u64 },
    #[error("checksum mismatch: sent {sent}, received {received}")]
    Checksum { sent: String, received: String },
    #[error("the sender did not release the VM (it sent {received})")]
    NotReleased { received: &'static str },
    #[error("cannot make a nonce")]
    Nonce(#[source] std::io::Error),
}
