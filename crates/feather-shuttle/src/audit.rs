//! The audit log: one JSON line per decision, appended to `<root>/audit.log`.
//!
//! Each line is written with one `write` on a file opened with `O_APPEND`, so lines from
//! several keepers never interleave.
//!
//! What a VM asks for is its choice, and so is how often it asks: the log is bounded so that
//! no VM fills the host's disk through it. A text a VM chose (the object, the detail) is cut
//! at [`MAX_FIELD`] bytes, its full length said; a log that would pass [`MAX_LOG_BYTES`] is
//! moved to `audit.log.1` (the one before is dropped) and a new one begun, so the two hold at
//! most twice that. Readers take `audit.log.1` first.
//!
//! The log is shared by every VM of a root, so one VM asking without end would push the others'
//! lines out of it. Each VM's broker paces its own lines ([`Pace`]): up to [`PACE_BURST`] at
//! once, then [`PACE_PER_SECOND`] a second; a decision past that is carried out as decided but
//! counted, not written, and the count is written as one line (outcome `held`) before the
//! VM's next line, or when its broker ends.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::policy::{Decision, Request};

pub const AUDIT_FILE: &str = "audit.log";

/// The log before the current one (see the module's documentation).
pub const ROTATED_FILE: &str = "audit.log.1";

/// Serialises rotations among the keepers of a root.
const LOCK_FILE: &str = "audit.lock";

/// The size at which the log is rotated.
pub const MAX_LOG_BYTES: u64 = 64 << 20;

/// The most of a VM-chosen text (an entry's object or detail) the log keeps.
pub const MAX_FIELD: usize = 1024;

/// `text` cut to at most [`MAX_FIELD`] bytes (on a character boundary), with its length said.
fn bounded(text: String) -> String {
    if text.len() <= MAX_FIELD {
        return text;
    }
    let mut end = MAX_FIELD;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}

/// The lines one VM's broker writes at once before [`PACE_PER_SECOND`] paces it: well above
/// what any workload asks in a burst (a policy test, a start that opens its channels).
pub const PACE_BURST: u32 = 200;

/// The lines a second one VM's broker writes past its burst (each after a line of counts): at
/// the longest line a VM can make (about 2.5 KiB), filling the log (64 MiB) takes it about 40
/// minutes, against a minute or two unpaced.
pub const PACE_PER_SECOND: u32 = 10;

/// One VM's lines in the log: a token bucket of [`PACE_BURST`] lines refilled at
/// [`PACE_PER_SECOND`], and the decisions held back since it last ran dry.
#[derive(Debug)]
pub struct Pace {
    tokens: f64,
    at: Instant,
    held: Option<Held>,
}

/// Decisions not written one by one, counted by outcome.
#[derive(Debug)]
struct Held {
    kind: String,
    source: String,
    since: String,
    allowed: u64,
    denied: u64,
    failed: u64,
}

impl Pace {
    pub fn new(now: Instant) -> Pace {
        Pace {
            tokens: f64::from(PACE_BURST),
            at: now,
            held: None,
        }
    }

    /// The lines to write for `entry` at `now`: the count held back (if any) and `entry`, or
    /// none when the VM is past its pace (then `entry` is counted).
    pub fn admit(&mut self, entry: Entry, now: Instant) -> Vec<Entry> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens =
            (self.tokens + elapsed * f64::from(PACE_PER_SECOND)).min(f64::from(PACE_BURST));
        if self.tokens < 1.0 {
            self.hold(&entry);
            return Vec::new();
        }
        self.tokens -= 1.0;
        self.release().into_iter().chain([entry]).collect()
    }

    fn hold(&mut self, entry: &Entry) {
        let held = self.held.get_or_insert_with(|| Held {
            kind: entry.kind.clone(),
            source: entry.source.clone(),
            since: entry.time.clone(),
            allowed: 0,
            denied: 0,
            failed: 0,
        });
        match entry.outcome.as_str() {
            "allowed" => held.allowed += 1,
            "denied" => held.denied += 1,
            _ => held.failed += 1,
        }
    }

    /// The line that says what was held back, if anything was; the count starts again.
    pub fn release(&mut self) -> Option<Entry> {
        let held = self.held.take()?;
        let total = held.allowed + held.denied + held.failed;
        Some(Entry {
            time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            kind: held.kind,
            source: held.source,
            target: "-".to_owned(),
            object: "-".to_owned(),
            rule: None,
            verdict: "-".to_owned(),
            outcome: "held".to_owned(),
            detail: Some(format!(
                "{total} decisions since {} not written one by one (more than {PACE_PER_SECOND} a \
                 second after {PACE_BURST}): {} allowed, {} denied, {} failed",
                held.since, held.allowed, held.denied, held.failed
            )),
        })
    }
}

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
    /// How many refusals a `held` line counted (see [`Pace::release`], which writes the count
    /// into its detail); 0 for every other line.
    pub fn held_denials(&self) -> u64 {
        if self.outcome != "held" {
            return 0;
        }
        let detail = self.detail.as_deref().unwrap_or_default();
        detail
            .split(", ")
            .find_map(|part| part.strip_suffix(" denied"))
            .and_then(|count| count.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    }

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
            object: bounded(request.object.clone()),
            rule: decision.rule.as_ref().map(|rule| rule.at.to_string()),
            verdict: decision.verdict.to_string(),
            outcome: outcome.to_owned(),
            detail: detail.map(bounded),
        }
    }
}

/// A state root's audit log.
#[derive(Clone, Debug)]
pub struct Audit {
    path: PathBuf,
    rotated: PathBuf,
    lock: PathBuf,
}

impl Audit {
    pub fn new(root_dir: &Path) -> Audit {
        Audit {
            path: root_dir.join(AUDIT_FILE),
            rotated: root_dir.join(ROTATED_FILE),
            lock: root_dir.join(LOCK_FILE),
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
        let mut file = self.open_for_append()?;
        if file.metadata()?.len() + line.len() as u64 > MAX_LOG_BYTES {
            file = self.rotate(line.len() as u64)?;
        }
        file.write_all(&line)
    }

    fn open_for_append(&self) -> io::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
    }

    /// Moves a full log to [`ROTATED_FILE`] and returns a new one, under the root's audit lock:
    /// another keeper may have rotated it meanwhile (then its new log is taken as it is). A
    /// writer still holding the old log appends its line there, which readers see too.
    fn rotate(&self, adding: u64) -> io::Result<File> {
        use nix::fcntl::{Flock, FlockArg};
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.lock)?;
        let _held =
            Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))?;
        let file = self.open_for_append()?;
        if file.metadata()?.len() + adding <= MAX_LOG_BYTES {
            return Ok(file);
        }
        std::fs::rename(&self.path, &self.rotated)?;
        self.open_for_append()
    }

    /// Every entry kept, oldest first: the rotated log's, then the current one's (lines that do
    /// not parse are skipped: a line cut short by a crash).
    pub fn entries(&self) -> io::Result<Vec<Entry>> {
        Ok(self.history()?.0)
    }

    /// [`Audit::entries`], and the offset in the current log to follow it from with
    /// [`Audit::entries_from`].
    pub fn history(&self) -> io::Result<(Vec<Entry>, u64)> {
        let mut entries = match File::open(&self.rotated) {
            Ok(file) => read_entries(file, 0)?.0,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (current, offset) = self.entries_from(0)?;
        entries.extend(current);
        Ok((entries, offset))
    }

    /// The whole entries written at or after byte `offset`, and the offset after the last
    /// whole line: call again with it to follow the log.
    pub fn entries_from(&self, offset: u64) -> io::Result<(Vec<Entry>, u64)> {
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(e),
        };
        // A log that shrank was replaced (rotated): read it from its start.
        let offset = if file.metadata()?.len() < offset {
            0
        } else {
            offset
        };
        read_entries(file, offset)
    }
}

/// The whole entries of `file` from byte `offset`, and the offset after the last whole line.
fn read_entries(mut file: File, offset: u64) -> io::Result<(Vec<Entry>, u64)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Kind, Party, Policy, Verdict};

    #[test]
    fn a_long_text_is_cut_on_a_character_boundary_with_its_length_said() {
        assert_eq!(bounded("tcp:5432".into()), "tcp:5432");
        let long = format!("{}é{}", "a".repeat(MAX_FIELD - 1), "b".repeat(100));
        let cut = bounded(long.clone());
        assert!(cut.starts_with(&"a".repeat(MAX_FIELD - 1)), "{cut}");
        assert!(
            !cut.contains('é'),
            "the cut falls before the character it would split"
        );
        assert!(
            cut.ends_with(&format!("… ({} bytes in all)", long.len())),
            "{cut}"
        );
    }

    fn entry(outcome: &str) -> Entry {
        Entry {
            time: "2026-12-04T18:00:00Z".into(),
            kind: "invoke".into(),
            source: "flood".into(),
            target: "-".into(),
            object: "x".into(),
            rule: None,
            verdict: "deny".into(),
            outcome: outcome.into(),
            detail: None,
        }
    }

    #[test]
    fn a_vm_past_its_pace_has_its_decisions_counted_then_written_as_one_line() {
        let start = Instant::now();
        let mut pace = Pace::new(start);
        let written: usize = (0..1000)
            .map(|i| {
                let outcome = if i % 2 == 0 { "denied" } else { "allowed" };
                pace.admit(entry(outcome), start).len()
            })
            .sum();
        assert_eq!(written, PACE_BURST as usize);
        // A second later it has PACE_PER_SECOND lines again; the first says what was held.
        let later = start + std::time::Duration::from_secs(1);
        let lines = pace.admit(entry("denied"), later);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].outcome, "held");
        assert_eq!(lines[0].source, "flood");
        let detail = lines[0].detail.as_deref().unwrap();
        assert!(
            detail.starts_with("800 decisions since 2026-12-04T18:00:00Z")
                && detail.ends_with("400 allowed, 400 denied, 0 failed"),
            "{detail}"
        );
        assert_eq!(lines[0].held_denials(), 400);
        assert_eq!(lines[1], entry("denied"));
        assert_eq!(lines[1].held_denials(), 0);
        let rest: usize = (0..100)
            .map(|_| pace.admit(entry("denied"), later).len())
            .sum();
        assert_eq!(rest, PACE_PER_SECOND as usize - 1);
        assert!(pace
            .release()
            .is_some_and(|held| held.detail.unwrap().starts_with("91 decisions")));
        assert!(pace.release().is_none());
    }

    #[test]
    fn decisions_are_appended_as_json_lines() {
        let scratch = feather_testkit::ScratchDir::new("audit");
        let dir = scratch.0.clone();
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
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].outcome, "denied");
        assert_eq!(entries[0].rule, None);
        assert_eq!(entries[0].source, "web");
        assert_eq!(entries[1].outcome, "failed");
        assert_eq!(entries[1].detail.as_deref(), Some("db would not start"));
    }
}
