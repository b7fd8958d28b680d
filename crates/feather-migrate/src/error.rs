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

    /// CRIU's restore gave no answer in the time it is given ([`crate::restore_time::restore_patience`])
    /// and was ended; `ended` says what was ended, `said` holds the error lines of its log.
    #[error("VM {vm}: CRIU did not finish restoring it within {} s, the time a restore is given ({} s, plus its images at {} MiB/s, at most {} min more), so {ended}; nothing of this restore runs. A lazy restore whose sender is gone fails in CRIU, which then waits for good; a slow disk or an overloaded host can also take longer: restore (or migrate) it again", .patience.as_secs(), crate::restore_time::RESTORE_PATIENCE.as_secs(), crate::restore_time::RESTORE_READS_AT_LEAST >> 20, crate::restore_time::RESTORE_READS_AT_MOST.as_secs() / 60)]
    CriuSilent {
        vm: String,
        patience: std::time::Duration,
        ended: String,
        #[source]
        said: Box<MigrateError>,
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

    #[error("cannot set up TLS for the migration")]
    Tls(#[source] rustls::Error),

    #[error("cannot set up TLS for the migration: the CA")]
    TlsVerifier(#[source] rustls::client::VerifierBuilderError),

    #[error("cannot make this side's TLS certificate")]
    Certificate(#[source] rcgen::Error),

    #[error("TLS file {}", .path.display())]
    TlsFile {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },

    #[error("{to}: not a host name or address a certificate can name (--tls-cert needs one)")]
    TlsName { to: String },

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

impl MigrateError {
    /// The error naming `log` as CRIU's full log (also within [`MigrateError::CriuSilent`]):
    /// for a caller that copies CRIU's log out of a work folder it then removes.
    pub fn with_log(self, log: PathBuf) -> MigrateError {
        match self {
            MigrateError::Criu {
                vm, action, errors, ..
            } => MigrateError::Criu {
                vm,
                action,
                errors,
                log,
            },
            MigrateError::CriuSilent {
                vm,
                patience,
                ended,
                said,
            } => MigrateError::CriuSilent {
                vm,
                patience,
                ended,
                said: Box::new(said.with_log(log)),
            },
            other => other,
        }
    }
}

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
    /// The sender's proof of the token did not verify at the receiver (or the receiver refused
    /// this side's).
    #[error("wrong token: the other side does not know the same FEATHER_MIGRATE_TOKEN")]
    WrongToken,
    /// The receiver answered with a proof that does not verify: a receiver with another token,
    /// or someone else in its place (a man in the middle terminating TLS).
    #[error("wrong token: the receiver does not prove the same token (another token, or a man in the middle in its place); nothing was sent")]
    ReceiverUnproven,
    /// A TLS record failed its authentication (here or, said by its alert, at the other end):
    /// bytes were altered on the way.
    #[error("the stream was altered on the way (a TLS record failed its authentication: a man in the middle, or a broken network); nothing of it was used")]
    Tampered(#[source] rustls::Error),
    #[error("TLS failed")]
    Tls(#[source] rustls::Error),
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
    #[error("received {received} of {sent} bytes")]
    Size { sent: u64, received: u64 },
    #[error("checksum mismatch: sent {sent}, received {received}")]
    Checksum { sent: String, received: String },
    #[error("the sender did not release the VM (it sent {received})")]
    NotReleased { received: &'static str },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restore ended for its silence names the copied log too, not CRIU's own, which its
    /// work folder took with it (feather-oci). Before, only `Criu` was rewritten.
    #[test]
    fn a_silent_criu_s_error_names_the_log_it_is_given() {
        let said = MigrateError::Criu {
            vm: "c1".into(),
            action: "restore",
            errors: vec!["stuck".into()],
            log: PathBuf::from("/gone/criu-work/restore.log"),
        };
        let silent = MigrateError::CriuSilent {
            vm: "c1".into(),
            patience: std::time::Duration::from_secs(30),
            ended: "CRIU was ended".into(),
            said: Box::new(said),
        };
        let rewritten = silent.with_log(PathBuf::from("/kept/restore.log"));
        let MigrateError::CriuSilent { said, .. } = rewritten else {
            panic!("{rewritten}")
        };
        let message = said.to_string();
        assert!(message.contains("/kept/restore.log"), "{message}");
        assert!(!message.contains("/gone"), "{message}");
    }
}
