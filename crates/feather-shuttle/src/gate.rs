//! The gate every crossing goes through: the policy decides (and, for `ask`, the person at
//! the terminal), the audit log records, and only then is anything opened.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::ask::{self, Answer, ANSWER_WITHIN};
use crate::audit::{Audit, Entry, Outcome, Pace};
use crate::board::Board;
use crate::error::PolicyError;
use crate::policy::{Decision, Policy, Request, Rule, RuleRef, Verdict};

/// A state root's policy as last read, and where decisions are recorded.
pub struct Gate {
    root_dir: PathBuf,
    loaded: RwLock<Loaded>,
    audit: Audit,
    /// This VM's lines in the root's shared log (see [`crate::audit`]).
    pace: Mutex<Pace>,
    /// Where `ask` rules ask: set at the start, or by the claim of a VM made ahead (a pool's).
    terminal: Mutex<Option<PathBuf>>,
    /// One question at a time on the terminal.
    asking: Mutex<()>,
}

#[derive(Clone)]
enum Loaded {
    Rules(Arc<Policy>),
    /// A policy that does not load allows nothing; the message says what to fix.
    Broken(Arc<PolicyError>),
}

/// Why a request was refused, for the requester and the audit log.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub rule: Option<RuleRef>,
    pub why: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Some(rule) => write!(f, "{} ({rule})", self.why),
            None => f.write_str(&self.why),
        }
    }
}

impl std::error::Error for Refusal {}

impl Gate {
    /// The gate of the state root at `root_dir`; `terminal`: where `ask` rules ask.
    pub fn new(root_dir: &Path, terminal: Option<PathBuf>) -> Gate {
        let gate = Gate {
            root_dir: root_dir.to_path_buf(),
            loaded: RwLock::new(Loaded::Rules(Arc::default())),
            audit: Audit::new(root_dir),
            pace: Mutex::new(Pace::new(Instant::now())),
            terminal: Mutex::new(terminal),
            asking: Mutex::new(()),
        };
        let _ = gate.reload();
        gate
    }

    /// Reads the policy files again. On error the gate denies everything until a reload
    /// succeeds, and the error is returned to be reported.
    pub fn reload(&self) -> Result<(), Arc<PolicyError>> {
        let (loaded, result) = match Policy::load(&self.root_dir) {
            Ok(policy) => (Loaded::Rules(Arc::new(policy)), Ok(())),
            Err(e) => {
                let e = Arc::new(e);
                (Loaded::Broken(e.clone()), Err(e))
            }
        };
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        result
    }

    /// The rules in force (none while the policy is malformed).
    pub fn policy(&self) -> Arc<Policy> {
        match &*self.loaded.read().unwrap_or_else(|e| e.into_inner()) {
            Loaded::Rules(policy) => policy.clone(),
            Loaded::Broken(_) => Arc::default(),
        }
    }

    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Records a decision in the audit log at this VM's pace: past it, the decision is
    /// counted and written with others later as one line (see [`crate::audit`]).
    pub fn record(
        &self,
        request: &Request,
        decision: &Decision,
        outcome: &Outcome,
        detail: Option<String>,
    ) -> std::io::Result<()> {
        let entry = Entry::new(request, decision, outcome, detail);
        let lines = self
            .pace
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(entry, Instant::now());
        lines.iter().try_for_each(|line| self.audit.append(line))
    }

    /// Decides `request`, asks where the rule says so, and records the outcome. Returns the
    /// allowing rule (its options say how to carry the request out). A decision that cannot
    /// be recorded is refused.
    pub fn check(&self, request: &Request) -> Result<Rule, Refusal> {
        self.check_for(request, None)
    }

    /// As [`Gate::check`], with who asked (e.g. the requesting process) in the audit line.
    pub fn check_for(&self, request: &Request, requester: Option<&str>) -> Result<Rule, Refusal> {
        let with_requester = |detail: Option<String>| match (detail, requester) {
            (Some(detail), Some(who)) => Some(format!("{detail}; {who}")),
            (detail, who) => detail.or(who.map(str::to_owned)),
        };
        let loaded = self
            .loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let policy = match loaded {
            Loaded::Rules(policy) => policy,
            Loaded::Broken(why) => {
                let decision = Decision {
                    verdict: Verdict::Deny,
                    rule: None,
                };
                let why = format!("denied: the policy does not load: {why}");
                let _ = self.record(
                    request,
                    &decision,
                    &Outcome::Denied,
                    with_requester(Some(why.clone())),
                );
                return Err(Refusal { rule: None, why });
            }
        };
        let decision = policy.decide(request);
        let (allowed, detail) = match (&decision.verdict, &decision.rule) {
            (Verdict::Allow, _) => (true, None),
            (Verdict::Ask, Some(rule)) => self.ask(request, rule),
            (Verdict::Deny, Some(_)) | (Verdict::Ask, None) => {
                (false, Some("denied by rule".to_owned()))
            }
            (Verdict::Deny, None) => (false, Some("no rule allows it (default deny)".to_owned())),
        };
        let outcome = if allowed {
            Outcome::Allowed
        } else {
            Outcome::Denied
        };
        let rule_ref = decision.rule.as_ref().map(|rule| rule.at.clone());
        if let Err(e) = self.record(request, &decision, &outcome, with_requester(detail.clone())) {
            return Err(Refusal {
                rule: rule_ref,
                why: format!(
                    "refused: cannot write the audit log {}: {e}",
                    self.audit.path().display()
                ),
            });
        }
        match (allowed, decision.rule) {
            (true, Some(rule)) => Ok(rule),
            _ => Err(Refusal {
                rule: rule_ref,
                why: format!(
                    "{} {} of {} for {}: {}",
                    request.kind,
                    request.object,
                    request.target,
                    request.source,
                    detail.unwrap_or_else(|| "denied".to_owned())
                ),
            }),
        }
    }

    /// Records that an allowed request could not be carried out.
    pub fn record_failure(&self, request: &Request, rule: &Rule, why: &str) {
        let decision = Decision {
            verdict: rule.verdict,
            rule: Some(rule.clone()),
        };
        let _ = self.record(request, &decision, &Outcome::Failed(why.to_owned()), None);
    }

    /// From now on `ask` rules ask at `terminal` (none: only a web view can answer): the
    /// terminal of whoever claimed a VM made ahead without one.
    pub fn set_terminal(&self, terminal: Option<PathBuf>) {
        *self.terminal.lock().unwrap_or_else(|e| e.into_inner()) = terminal;
    }

    fn ask(&self, request: &Request, rule: &Rule) -> (bool, Option<String>) {
        let _one_at_a_time = self.asking.lock().unwrap_or_else(|e| e.into_inner());
        let board = Board::of(&self.root_dir);
        let terminal = self
            .terminal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let answer = ask::ask(terminal.as_deref(), &board, request, rule, ANSWER_WITHIN);
        match answer {
            Answer::Yes(at) => (true, Some(format!("asked: allowed {at}"))),
            Answer::No(at) => (false, Some(format!("asked: refused {at}"))),
            Answer::NoOne(why) => (false, Some(format!("asked: {why}"))),
        }
    }
}

impl Drop for Gate {
    /// What this VM's pace held back is written when its broker ends.
    fn drop(&mut self) {
        let held = self
            .pace
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .release();
        if let Some(held) = held {
            let _ = self.audit.append(&held);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::policy::{Kind, Party};

    /// A state root with one policy file, removed when dropped.
    struct Root(PathBuf);

    impl Root {
        fn new(test: &str, policy: &str) -> Root {
            let dir =
                std::env::temp_dir().join(format!("feather-gate-{test}-{}", std::process::id()));
            std::fs::create_dir_all(dir.join("policy.d")).unwrap();
            std::fs::write(dir.join("policy.d/10-test.policy"), policy).unwrap();
            Root(dir)
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn request(port: &str) -> Request {
        Request {
            kind: Kind::Ipc,
            object: format!("tcp:{port}"),
            source: Party::vm("web", &[]),
            target: Party::vm("db", &[]),
        }
    }

    #[test]
    fn allowed_and_denied_requests_are_recorded_with_their_rule() {
        let root = Root::new(
            "record",
            "ipc tcp:80 web db deny\nipc tcp:5432 web db allow\n",
        );
        let gate = Gate::new(&root.0, None);
        let rule = gate.check(&request("5432")).unwrap();
        assert_eq!(rule.at.line, 2);
        let refusal = gate.check(&request("80")).unwrap_err();
        assert_eq!(refusal.rule.as_ref().unwrap().line, 1);
        let refusal = gate.check(&request("22")).unwrap_err();
        assert!(refusal.why.contains("default deny"), "{refusal}");
        let entries = gate.audit().entries().unwrap();
        let outcomes: Vec<_> = entries
            .iter()
            .map(|e| (e.object.as_str(), e.outcome.as_str()))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("tcp:5432", "allowed"),
                ("tcp:80", "denied"),
                ("tcp:22", "denied")
            ]
        );
        assert!(entries[1]
            .rule
            .as_ref()
            .unwrap()
            .ends_with("10-test.policy:1"));
        assert_eq!(entries[2].rule, None);
    }

    #[test]
    fn a_malformed_policy_allows_nothing_until_it_is_fixed() {
        let root = Root::new("malformed", "ipc tcp:5432 web db allow\nipc tcp:5432 web\n");
        let gate = Gate::new(&root.0, None);
        let refusal = gate.check(&request("5432")).unwrap_err();
        assert!(refusal.why.contains("10-test.policy:2"), "{refusal}");
        std::fs::write(
            root.0.join("policy.d/10-test.policy"),
            "ipc tcp:5432 web db allow\n",
        )
        .unwrap();
        gate.reload().unwrap();
        assert!(gate.check(&request("5432")).is_ok());
    }

    #[test]
    fn ask_asks_at_the_terminal_given_after_the_start() {
        // A VM of the pool starts with no terminal; its claimer's is given to the gate then.
        let root = Root::new("ask-later", "ipc tcp:5432 web db ask\n");
        let pty = nix::pty::openpty(None, None).unwrap();
        let gate = Gate::new(&root.0, None);
        gate.set_terminal(Some(nix::unistd::ttyname(&pty.slave).unwrap()));
        let mut master = std::fs::File::from(pty.master);
        let answering = std::thread::spawn(move || {
            let mut question = [0u8; 512];
            let read = master.read(&mut question).unwrap();
            master.write_all(b"y\n").unwrap();
            (read, master)
        });
        let result = gate.check(&request("5432"));
        // Before the join: with no terminal nothing is asked, and the answer never read.
        assert!(result.is_ok(), "{:?}", result.err());
        let (read, _master) = answering.join().unwrap();
        assert!(read > 0);
    }

    #[test]
    fn ask_takes_the_answer_typed_at_the_terminal() {
        let root = Root::new("ask", "ipc tcp:5432 web db ask\n");
        for (typed, allowed) in [("y\n", true), ("n\n", false), ("\n", false)] {
            let pty = nix::pty::openpty(None, None).unwrap();
            let terminal = nix::unistd::ttyname(&pty.slave).unwrap();
            let gate = Gate::new(&root.0, Some(terminal));
            let mut master = std::fs::File::from(pty.master);
            let answering = std::thread::spawn(move || {
                let mut question = [0u8; 512];
                let read = master.read(&mut question).unwrap();
                master.write_all(typed.as_bytes()).unwrap();
                // Kept open until the answer is read: a closed master hangs the terminal up.
                (
                    String::from_utf8_lossy(&question[..read]).into_owned(),
                    master,
                )
            });
            let result = gate.check(&request("5432"));
            let (question, _master) = answering.join().unwrap();
            assert!(
                question.contains("web asks for ipc tcp:5432 of db"),
                "{question}"
            );
            assert_eq!(
                result.is_ok(),
                allowed,
                "typed {typed:?}: {:?}",
                result.err()
            );
        }
        let details: Vec<_> = Audit::new(&root.0)
            .entries()
            .unwrap()
            .into_iter()
            .map(|e| e.detail.unwrap_or_default())
            .collect();
        assert!(
            details[0].starts_with("asked: allowed at /dev/pts/"),
            "{details:?}"
        );
        assert!(
            details[1].starts_with("asked: refused at /dev/pts/"),
            "{details:?}"
        );
    }

    #[test]
    fn ask_denies_when_no_terminal_started_the_vm() {
        let root = Root::new("noone", "ipc tcp:5432 web db ask\n");
        let refusal = Gate::new(&root.0, None)
            .check(&request("5432"))
            .unwrap_err();
        assert!(refusal.why.contains("no terminal"), "{refusal}");
    }
}
