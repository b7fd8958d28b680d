use std::path::PathBuf;

/// Why a policy could not be read. While a policy does not load, nothing is allowed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {file}:{line}: {why} (fix or remove the line; until then feather allows nothing across VMs)")]
    Malformed {
        file: PathBuf,
        line: usize,
        why: String,
    },

    #[error("policy {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
