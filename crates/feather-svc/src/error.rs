//! What can go wrong reading units and running them. Every message names the unit or the file
//! (with its line) and, where there is one, what the user can do.
//!
//! One rule for causes: an error either passes a lower one up unchanged (`#[error(transparent)]`
//! with `#[from]`), or adds where it happened and embeds its typed cause in its own message — then
//! the cause is a plain field, not a `source()`, so `{e:#}` prints it once.
//!
//! This module is the bottom layer of the crate: it uses none of the others, and the errors
//! of the parsers (values, words, specifiers, lines, settings) live here so that the modules
//! that raise them and [`SvcError`], which carries them, all point down to it.

use std::path::PathBuf;

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

/// A value a setting cannot take; the caller adds the file, line and setting.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("{0:?} is not a boolean (yes/no)")]
    NotBoolean(String),
    #[error("empty time span")]
    EmptyTimespan,
    #[error("{0:?} is not a time span")]
    NotTimespan(String),
    #[error("unknown time unit {unit:?} in {text:?}")]
    UnknownTimeUnit { unit: String, text: String },
    #[error("{0:?} is not an octal file mode")]
    NotMode(String),
    #[error("bad nice level {0:?}")]
    BadNiceLevel(String),
    #[error("bad nice limit {0:?}")]
    BadNiceLimit(String),
    #[error("{0:?} is not a number")]
    NotNumber(String),
    #[error("unknown size suffix {suffix:?} in {text:?}")]
    UnknownSizeSuffix { suffix: String, text: String },
    #[error("{0:?} is too large")]
    TooLarge(String),
    #[error("{0:?} is not a percentage (such as 50%)")]
    NotPercent(String),
    #[error("{0:?} is not a CPU weight (1 to 10000, or idle)")]
    NotCpuWeight(String),
    #[error("{0:?} is not a capability name (such as CAP_NET_BIND_SERVICE)")]
    NotCapability(String),
    #[error("{0:?} is not an address family (such as AF_INET)")]
    NotAddressFamily(String),
    #[error("{0:?} is not an errno (EPERM, EACCES, ENOSYS, …, or a number)")]
    NotErrno(String),
    /// A value of one of the `Limit*=` settings (the problem is part of the message).
    #[error("{key}: {problem}")]
    Limit {
        key: String,
        problem: Box<ValueError>,
    },
}

/// A value that cannot be split into words or commands; the caller adds the file and line.
#[derive(Debug, thiserror::Error)]
pub enum WordError {
    #[error("unterminated {0} quote")]
    UnterminatedQuote(char),
    #[error("a lone backslash at the end")]
    LoneBackslash,
    #[error("invalid octal escape \\{0}")]
    InvalidOctalEscape(char),
    #[error("\\0 (a NUL byte) cannot be passed to a program")]
    NulByte,
    #[error("invalid escape \\{0}")]
    InvalidEscape(char),
    #[error("no command given")]
    NoCommand,
    #[error("prefix {prefix_char:?} given twice in {prefix:?}")]
    PrefixTwice { prefix_char: char, prefix: String },
    #[error("prefixes '+' and '!' cannot be combined")]
    PrefixesCombined,
    #[error("the command path is empty")]
    EmptyPath,
    #[error("'@' needs argv[0] after {0}")]
    MissingArgv0(String),
    #[error("invalid environment assignment {0:?}")]
    InvalidAssignment(String),
}

/// A `%` that systemd would not accept; the caller adds the file and line.
#[derive(Debug, thiserror::Error)]
pub enum SpecifierError {
    #[error("{0:?} ends with a lone '%' (write %% for a percent sign)")]
    LonePercent(String),
    #[error("unknown specifier %{specifier} in {text:?} (write %% for a percent sign)")]
    Unknown { specifier: char, text: String },
}

/// A line systemd would not read; [`SvcError::Syntax`] adds the file and line.
#[derive(Debug, thiserror::Error)]
pub enum SyntaxError {
    #[error(".include is no longer supported by systemd; use a drop-in instead")]
    Include,
    #[error("invalid section header {0:?}: missing ']'")]
    UnclosedSection(String),
    #[error("invalid section header {0:?}")]
    BadSection(String),
    #[error("assignment {0:?} outside of any [Section]")]
    OutsideSection(String),
    #[error("missing '=' in {0:?}")]
    MissingEquals(String),
    #[error("assignment {0:?} has no key")]
    NoKey(String),
    /// In a SysV script's LSB header.
    #[error("a line inside the LSB header does not start with '#'")]
    LsbLineWithoutHash,
    #[error("### BEGIN INIT INFO without ### END INIT INFO")]
    LsbUnterminated,
}

/// A setting's value that systemd would not accept; [`SvcError::Setting`] adds the file and
/// line.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    #[error(transparent)]
    Value(#[from] ValueError),
    #[error(transparent)]
    Word(#[from] WordError),
    #[error(transparent)]
    Specifier(#[from] SpecifierError),
    /// A unit name in a dependency list, `Service=` or `Unit=`.
    #[error(transparent)]
    Name(Box<SvcError>),
    #[error("{key}={value:?} is not a number")]
    NotANumber { key: &'static str, value: String },
    #[error("WorkingDirectory={0:?} is not an absolute path or ~")]
    WorkingDirectory(String),
    #[error("EnvironmentFile={0:?} is not an absolute path")]
    EnvironmentFile(String),
    #[error("unknown resource limit {0}")]
    UnknownLimit(String),
    #[error("{key}={word:?} must be a relative path below {root}")]
    NotRelative {
        key: String,
        word: String,
        root: &'static str,
    },
    #[error("{key}={word:?} is not an absolute path (prefix it with '-' to skip it where it does not exist)")]
    NotAbsolute { key: String, word: String },
    #[error("unknown service type Type={0}")]
    UnknownType(String),
    /// A value outside the ones systemd lists for an enumerated setting.
    #[error("unknown {key}={value}")]
    UnknownValue { key: &'static str, value: String },
    #[error("SuccessExitStatus: {0:?} is neither an exit status nor a signal")]
    NotExitStatus(String),
    #[error("{0} is not a signal")]
    NotSignal(String),
    #[error("{0:?} is not a signal name")]
    NotSignalName(String),
}

impl From<SvcError> for SettingError {
    fn from(error: SvcError) -> SettingError {
        SettingError::Name(Box::new(error))
    }
}

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

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    /// Each message of the chain `{e:#}` prints (the error, then its sources) must not repeat
    /// the next one: a cause is either in its wrapper's message or its source, never both.
    fn assert_printed_once(error: &dyn Error) {
        let mut current = error;
        while let Some(source) = current.source() {
            let (outer, inner) = (current.to_string(), source.to_string());
            assert!(
                !outer.contains(&inner),
                "{outer:?} repeats its source {inner:?}"
            );
            current = source;
        }
    }

    #[test]
    fn every_cause_is_printed_once() {
        let io = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let setting = SvcError::Setting {
            path: "/lib/systemd/system/a.service".into(),
            line: 3,
            problem: SettingError::Value(ValueError::Limit {
                key: "LimitNOFILE".into(),
                problem: Box::new(ValueError::NotNumber("lots".into())),
            }),
        };
        assert_eq!(
            setting.to_string(),
            "/lib/systemd/system/a.service:3: LimitNOFILE: \"lots\" is not a number"
        );
        let missing = SvcError::MissingDependency {
            unit: "web.service".into(),
            kind: "requires",
            missing: "db.service".into(),
            why: Box::new(SvcError::Io {
                path: "/lib/systemd/system/db.service".into(),
                error: io(),
            }),
        };
        let errors: Vec<Box<dyn Error>> = vec![
            Box::new(setting),
            Box::new(missing),
            Box::new(SvcError::Io {
                path: "/etc/init.d".into(),
                error: io(),
            }),
            Box::new(SettingError::Word(WordError::UnterminatedQuote('"'))),
            Box::new(SettingError::Name(Box::new(SvcError::InvalidName {
                name: "a b".into(),
                why: "contains a space".into(),
            }))),
        ];
        for error in &errors {
            assert_printed_once(error.as_ref());
        }
    }
}
