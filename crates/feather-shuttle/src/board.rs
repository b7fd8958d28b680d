//! The questions of `ask` rules where a web view can answer them, besides the terminal that
//! started the source VM: one file a question in the state root's `asks/` folder (the host's,
//! hidden from every VM like the rest of the root), an answer file beside it, and the web
//! view's mark that it is serving (so that a VM started without a terminal is asked there
//! rather than refused at once).
//!
//! ```text
//! <root>/asks/.watcher        "PID START" of a live `feather web` of this root
//! <root>/asks/ID.json         a question, written whole (renamed into place) by the broker
//! <root>/asks/ID.answer       "allow" or "deny", made once (O_EXCL) by whoever answers first
//! ```
//! The broker removes both files once the question is settled, however it was.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::policy::{Request, Rule};

/// A question waiting for its answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Question {
    pub id: String,
    pub kind: String,
    pub source: String,
    pub target: String,
    /// What the source asks for, as it asked (the VM's choice: shown escaped, as text).
    pub object: String,
    /// `FILE:LINE` of the `ask` rule.
    pub rule: String,
    /// Seconds since the epoch until which it waits; unanswered then, it is denied.
    pub until: u64,
}

/// Why a web view's answer was not taken.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("no question {0} is waiting (it was answered, or it timed out)")]
    NotWaiting(String),
    #[error("question {0} was answered already")]
    Answered(String),
    #[error("{id:?} is not a question's id")]
    BadId { id: String },
    #[error("cannot record the answer in {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub struct Board {
    dir: PathBuf,
}

impl Board {
    /// The board of the state root at `root_dir`.
    pub fn of(root_dir: &Path) -> Board {
        Board {
            dir: root_dir.join("asks"),
        }
    }

    /// Whether a live web view of this root watches the board.
    pub fn watched(&self) -> bool {
        let Ok(mark) = fs::read_to_string(self.dir.join(".watcher")) else {
            return false;
        };
        let mut words = mark.split_whitespace().map(str::parse::<u64>);
        match (words.next(), words.next()) {
            (Some(Ok(pid)), Some(Ok(start))) => {
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                feather_sys::process::start_ticks(pid) == Some(start)
                    && feather_sys::process::is_alive(pid)
            }
            _ => false,
        }
    }

    /// Marks the board watched by this process until the mark is dropped.
    pub fn watch(&self) -> io::Result<Watching> {
        fs::create_dir_all(&self.dir)?;
        let me = nix::unistd::Pid::this();
        let start = feather_sys::process::start_ticks(me).unwrap_or_default();
        let mark = self.dir.join(".watcher");
        write_whole(&mark, format!("{me} {start}\n").as_bytes())?;
        Ok(Watching { mark })
    }

    /// Posts a question; it stays on the board while the returned [`Posted`] lives.
    pub fn post(&self, request: &Request, rule: &Rule, until: u64) -> io::Result<Posted> {
        fs::create_dir_all(&self.dir)?;
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let question = Question {
            id: id.clone(),
            kind: request.kind.to_string(),
            source: request.source.to_string(),
            target: request.target.to_string(),
            object: request.object.clone(),
            rule: rule.at.to_string(),
            until,
        };
        let path = self.dir.join(format!("{id}.json"));
        write_whole(&path, &serde_json::to_vec(&question)?)?;
        Ok(Posted {
            answer: self.dir.join(format!("{id}.answer")),
            question: path,
        })
    }

    /// The questions waiting now, oldest first.
    pub fn pending(&self) -> Vec<Question> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut questions: Vec<Question> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice(&fs::read(e.path()).ok()?).ok())
            .filter(|q: &Question| !self.dir.join(format!("{}.answer", q.id)).exists())
            .collect();
        questions.sort_by(|a, b| a.id.cmp(&b.id));
        questions
    }

    /// Answers question `id` (the first answer wins).
    pub fn answer(&self, id: &str, allow: bool) -> Result<(), AnswerError> {
        let well_formed =
            !id.is_empty() && id.len() <= 40 && id.bytes().all(|b| b.is_ascii_digit() || b == b'-');
        if !well_formed {
            return Err(AnswerError::BadId { id: id.to_owned() });
        }
        if !self.dir.join(format!("{id}.json")).exists() {
            return Err(AnswerError::NotWaiting(id.to_owned()));
        }
        let path = self.dir.join(format!("{id}.answer"));
        let made = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        let mut file = match made {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(AnswerError::Answered(id.to_owned()))
            }
            Err(source) => return Err(AnswerError::Write { path, source }),
        };
        let word: &[u8] = if allow { b"allow\n" } else { b"deny\n" };
        file.write_all(word)
            .map_err(|source| AnswerError::Write { path, source })
    }
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A question on the board; removed (with its answer) when dropped.
pub struct Posted {
    question: PathBuf,
    answer: PathBuf,
}

impl Posted {
    /// The web view's answer, if one came: whether it allows.
    pub fn answer(&self) -> Option<bool> {
        let word = fs::read_to_string(&self.answer).ok()?;
        match word.trim() {
            "allow" => Some(true),
            "deny" => Some(false),
            // Made but not written yet: read again on the next look.
            _ => None,
        }
    }
}

impl Drop for Posted {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.question);
        let _ = fs::remove_file(&self.answer);
    }
}

/// A web view's mark on the board; removed when dropped.
pub struct Watching {
    mark: PathBuf,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.mark);
    }
}

/// Writes `path` whole: beside it, then renamed over it, so a reader never sees half of it.
fn write_whole(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let partial = path.with_extension("partial");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)?;
    file.write_all(bytes)?;
    fs::rename(&partial, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Kind, Party};

    #[test]
    fn the_first_answer_counts_and_a_settled_question_leaves_nothing() {
        let root_scratch = feather_testkit::ScratchDir::new("board");
        let root = root_scratch.0.clone();
        let board = Board::of(&root);
        assert!(!board.watched(), "no web view marked it");
        let watching = board.watch().unwrap();
        assert!(board.watched());
        let request = Request {
            kind: Kind::Invoke,
            object: "viewer".into(),
            source: Party::vm("a".to_owned(), &[] as &[String]),
            target: Party::vm("b".to_owned(), &[] as &[String]),
        };
        let rule = crate::policy::parse(Path::new("t.policy"), "invoke viewer a b ask\n")
            .unwrap()
            .remove(0);
        let posted = board.post(&request, &rule, 0).unwrap();
        let waiting = board.pending();
        assert_eq!(waiting.len(), 1);
        assert_eq!(posted.answer(), None);
        let id = waiting[0].id.clone();
        assert!(matches!(
            board.answer("../x", true),
            Err(AnswerError::BadId { .. })
        ));
        board.answer(&id, false).unwrap();
        assert!(matches!(
            board.answer(&id, true),
            Err(AnswerError::Answered(_))
        ));
        assert_eq!(posted.answer(), Some(false));
        assert!(
            board.pending().is_empty(),
            "an answered question no longer waits"
        );
        drop(posted);
        assert!(matches!(
            board.answer(&id, true),
            Err(AnswerError::NotWaiting(_))
        ));
        drop(watching);
        assert!(!board.watched());
    }
}
