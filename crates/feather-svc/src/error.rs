//! What can go wrong reading units and running them. Every message names the unit or the file
//! (with its line) and, where there is one, what the user can do.
//!
//! One rule for causes: an error either passes a lower one up unchanged (`#[error(transparent)]`
//! with `#[from]`), or adds where it happened and embeds its typed cause in its own message — then
//! the cause is a plain field, not a `source()`, so `{e:#}` prints it once.

use std::path::PathBuf;

use crate::syntax::SyntaxError;
use crate::unit::SettingError;

#[derive(Debug, thiserror::Error)]
pub enum SvcError {
    /// A unit file, drop-in or LSB header that systemd would not accept, at this line.
    #[error("{path}:{line}: {problem}")]
    Syntax {
        path: PathBuf,
        line: usize,
        problem: SyntaxError,
    },
    /// A setting whose value systemd would not accept, at this line.
    #[error("{path}:{line}: {problem}")]
    Setting {
        path: PathBuf,
        line: usize,
        problem: SettingError,
    },
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
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
        why: Box<SvcError>,
    },
    #[error("dependency cycle: {}; break it with a drop-in that removes one of these After=/Before= orderings", .0.join(" → "))]
    Cycle(Vec<String>),
    #[error("unit {name}: more than {hops} alias symlinks (a loop?)")]
    AliasLoop { name: String, hops: usize },
    #[error("{name} is host infrastructure and is not duplicated in VMs; in a VM: {stand_in}")]
    HostInfrastructure { name: String, stand_in: String },
}

pub type Result<T> = std::result::Result<T, SvcError>;

pub(crate) trait IoAt<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoAt<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|error| SvcError::Io {
            path: path.into(),
            error,
        })
    }
}
