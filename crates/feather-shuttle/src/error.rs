//! The policy's errors: why rule files could not be read, and what is wrong with a rule.
//!
//! The crate's rule for causes (as feather-svc's): an error either passes a lower one up
//! unchanged (`#[error(transparent)]`), or adds where it happened and embeds its typed cause in
//! its own message, as a plain field rather than a `source()`, so that `{e:#}` and the audit
//! log print each cause once. The other modules' errors live with them; this one sits at the
//! bottom of the crate (it uses no other module).

use std::path::PathBuf;

/// Why a policy could not be read. While a policy does not load, nothing is allowed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {file}:{line}: {fault} (fix or remove the line; until then feather allows nothing across VMs)")]
    Malformed {
        file: PathBuf,
        line: usize,
        fault: RuleFault,
    },

    #[error("policy {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// What is wrong with one rule line.
#[derive(Debug, thiserror::Error)]
pub enum RuleFault {
    #[error("unbalanced quotes")]
    UnbalancedQuotes,
    #[error("expected KIND OBJECT SOURCE TARGET VERDICT [OPTION=VALUE]..., found {0} word(s)")]
    WordCount(usize),
    #[error("unknown kind {0:?} (use ipc, invoke or files)")]
    UnknownKind(String),
    #[error("object {object:?}: {error}")]
    Glob {
        object: String,
        error: glob::PatternError,
    },
    #[error("ipc object {0:?}: use unix:/ABSOLUTE/PATH, tcp:PORT or dbus:BUS.NAME")]
    IpcObject(String),
    #[error("files object {0:?} is not an absolute path")]
    RelativeFiles(String),
    #[error(
        "{what} {word:?} may hold only letters, digits, '.', '_', '-', '@' (and '*' as a wildcard)"
    )]
    Word { what: &'static str, word: String },
    #[error("unknown {0:?} (use a VM name, @tag:NAME, @host, @anyvm or @any)")]
    UnknownSelector(String),
    #[error(transparent)]
    VmName(feather_core::Error),
    /// A fault of the rule's source or target selector.
    #[error("{side}: {fault}")]
    Selector {
        side: &'static str,
        fault: Box<RuleFault>,
    },
    #[error("unknown verdict {0:?} (use allow, deny or ask)")]
    UnknownVerdict(String),
    #[error("option {0:?} is not NAME=VALUE")]
    NotNameValue(String),
    #[error("unknown option {name:?} for {kind} rules (known: {})", known.join(", "))]
    UnknownOption {
        name: String,
        kind: &'static str,
        known: &'static [&'static str],
    },
    #[error("option {0:?} given twice")]
    OptionTwice(String),
    #[error(
        "an ipc rule opens a channel to one place: its target must be a VM name or @host, not {0}"
    )]
    NotOnePlace(String),
    #[error(
        "an ipc rule that allows must name one socket, port or bus name, not the pattern {0:?}"
    )]
    PatternAllowed(String),
    #[error("at={at:?}: a {scheme} channel appears at {}", if scheme == "tcp" { "a port" } else { "an absolute path" })]
    At { at: String, scheme: String },
    #[error("mode={0:?}: use ro or rw")]
    Mode(String),
    #[error("args={0:?}: use none, files or any")]
    Args(String),
    #[error("command={0:?} is empty or has unbalanced quotes")]
    Command(String),
}

#[cfg(test)]
pub(crate) mod tests {
    use std::error::Error;

    /// Each message of the chain `{e:#}` prints (the error, then its sources) must not repeat
    /// the next one: a cause is either in its wrapper's message or its source, never both.
    pub(crate) fn assert_printed_once(error: &dyn Error) {
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
    fn policy_errors_print_each_cause_once() {
        let read = super::PolicyError::Read {
            path: "/etc/feather/policy.d".into(),
            error: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert_printed_once(&read);
        assert!(read.to_string().contains("permission denied"), "{read}");
    }
}
