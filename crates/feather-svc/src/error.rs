//! What can go wrong reading units and running them. Every message names the unit or the file
//! (with its line) and, where there is one, what the user can do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SvcError {
    /// A unit file or drop-in that systemd would not accept, at this line.
    #[error("{path}:{line}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid unit name {name:?}: {why}")]
    InvalidName { name: String, why: String },
    #[error("unit {name} is not installed (looked in {searched})")]
    NotFound { name: String, searched: String },
    #[error("unit {name} is masked ({path} points to /dev/null or is empty); unmask it on the host to use it")]
    Masked { name: String, path: PathBuf },
    #[error("unit {name} is a template: name an instance, e.g. {example}")]
    Template { name: String, example: String },
    #[error("{unit} {kind} {missing}, which is not available: {why}")]
    MissingDependency {
        unit: String,
        kind: &'static str,
        missing: String,
        why: String,
    },
    #[error("dependency cycle: {}; break it with a drop-in that removes one of these After=/Before= orderings", .0.join(" → "))]
    Cycle(Vec<String>),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, SvcError>;

pub(crate) trait IoAt<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoAt<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| SvcError::Io {
            path: path.into(),
            source,
        })
    }
}
