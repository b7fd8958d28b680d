//! The audit log: one JSON line per decision, appended to `<root>/audit.log`.
//!
//! Each line is written with one `write` on a file opened with `O_APPEND`, so lines from
//! several keepers never interleave.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::policy::{Decision, Request};

pub const AUDIT_FILE: &str = "audit.log";

/// What came of a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Denied,
    /// Allowed, but carrying it out failed (the target would not start, a path was refused…).
    Failed(String),
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// RFC 3339, UTC.
    pub time: String,
    pub kind: String,
    pub source: String,
    pub target: String,
    pub object: String,
    /// `FILE:LINE` of the deciding rule; absent when no rule matched (default deny).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The rule's verdict: allow, deny or ask.
    pub verdict: String,
    /// allowed, denied or failed.
    pub outcome: String,
    /// Why: how an `ask` was answered, what failed, what was opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Entry {
    pub fn new(
        request: &Request,
        decision: &Decision,
        outcome: &Outcome,
        detail: Option<String>,
    ) -> Entry {
        let (outcome, failure) = match outcome {
            Outcome::Allowed => ("allowed", None),
            Outcome::Denied => ("denied", None),
            Outcome::Failed(why) => ("failed", Some(why.clone())),
        };
        let detail = match (failure, detail) {
            (Some(why), Some(more)) => Some(format!("{why}; {more}")),
            (why, more) => why.or(more),
        };
        Entry {
            time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            kind: request.kind.to_string(),
            source: request.source.to_string(),
            target: request.target.to_string(),
            object: request.object.clone(),
            rule: decision.rule.as_ref().map(|rule| rule.at.to_string()),
            verdict: decision.verdict.to_string(),
            outcome: outcome.to_owned(),
            detail,
        }
    }
}

/// A state root's audit log.
#[derive(Clone, Debug)]
pub struct Audit {
    path: PathBuf,
}

impl Audit {
    pub fn new(root_dir: &Path) -> Audit {
        Audit {
            path: root_dir.join(AUDIT_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one decision. Failing to write the log is an error the caller must act on
    /// (a decision that cannot be recorded is not carried out).
    pub fn record(
        &self,
        request: &Request,
        decision: &Decision,
        outcome: &Outcome,
        detail: Option<String>,
    ) -> io::Result<()> {
        self.append(&Entry::new(request, decision, outcome, detail))
    }

    pub fn append(&self, entry: &Entry) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        file.write_all(&line)
    }

    /// Every entry so far (lines that do not parse are skipped: a line cut short by a crash).
    pub fn entries(&self) -> io::Result<Vec<Entry>> {
        Ok(self.entries_from(0)?.0)
    }

    /// The whole entries written at or after byte `offset`, and the offset after the last
    /// whole line: call again with it to follow the log.
    pub fn entries_from(&self, offset: u64) -> io::Result<(Vec<Entry>, u64)> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(e),
        };
        // A log that shrank was replaced: read it from its start.
        let offset = if file.metadata()?.len() < offset {
            0
        } else {
            offset
        };
        file.seek(SeekFrom::Start(offset))?;
        let mut reader = BufReader::new(file);
        let (mut entries, mut end) = (Vec::new(), offset);
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 {
            if !line.ends_with('\n') {
                break; // still being written
            }
            end += line.len() as u64;
            if let Ok(entry) = serde_json::from_str(&line) {
                entries.push(entry);
            }
            line.clear();
        }
        Ok((entries, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Kind, Party, Policy, Verdict};

    #[test]
    fn decisions_are_appended_as_json_lines() {
        let dir = std::env::temp_dir().join(format!("feather-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let audit = Audit::new(&dir);
        let request = Request {
            kind: Kind::Ipc,
            object: "tcp:5432".into(),
            source: Party::vm("web", &[]),
            target: Party::vm("db", &[]),
        };
        let denied = Policy::default().decide(&request);
        audit
            .record(&request, &denied, &Outcome::Denied, None)
            .unwrap();
        let allowed = crate::policy::Decision {
            verdict: Verdict::Allow,
            rule: None,
        };
        audit
            .record(
                &request,
                &allowed,
                &Outcome::Failed("db would not start".into()),
                None,
            )
            .unwrap();
        let entries = audit.entries().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].outcome, "denied");
        assert_eq!(entries[0].rule, None);
        assert_eq!(entries[0].source, "web");
        assert_eq!(entries[1].outcome, "failed");
        assert_eq!(entries[1].detail.as_deref(), Some("db would not start"));
    }
}
