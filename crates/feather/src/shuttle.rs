//! `feather policy …` and `feather audit`: what the shuttle policy says, and what it decided.

use std::process::ExitCode;
use std::time::Duration;

use feather_core::{say, StateRoot};
use feather_shuttle::audit::Entry;
use feather_shuttle::policy::Policy;
use feather_shuttle::view::{self, Explanation, RuleRow};
use feather_shuttle::{Audit, Kind, Request, Verdict};

use crate::cli::PolicyCommand;
use crate::output;

/// `policy check`'s exit codes for a request, so scripts can act on the verdict.
const EXIT_ASKS: u8 = 3;
const EXIT_DENIED: u8 = 4;

pub fn policy(root: &StateRoot, command: PolicyCommand) -> anyhow::Result<ExitCode> {
    let policy = Policy::load(root.dir())?;
    match command {
        PolicyCommand::Ls { json } => {
            if json {
                output::json(&policy.rules().iter().map(RuleRow::from).collect::<Vec<_>>())?;
            } else {
                output::rules(policy.rules())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Check {
            kind: None, json, ..
        } => {
            let dirs = feather_shuttle::policy::policy_dirs(root.dir());
            if json {
                output::json(&serde_json::json!({ "rules": policy.rules().len(), "dirs": dirs }))?;
            } else {
                let dirs: Vec<_> = dirs.iter().map(|d| d.display().to_string()).collect();
                say!(
                    "policy: {} rule(s) from {}; well-formed",
                    policy.rules().len(),
                    dirs.join(" and ")
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Check {
            kind: Some(kind),
            object,
            source,
            target,
            json,
        } => {
            let request = Request {
                kind: Kind::parse(&kind).ok_or_else(|| {
                    anyhow::anyhow!("unknown kind {kind:?} (use ipc, invoke or files)")
                })?,
                object: object.unwrap_or_default(),
                source: view::party(root, &source.unwrap_or_default())?,
                target: view::party(root, &target.unwrap_or_default())?,
            };
            let (decision, consulted) = policy.explain(&request);
            if json {
                output::json(&Explanation::new(&decision, &consulted))?;
            } else {
                output::explanation(&request, &decision, &consulted)?;
            }
            Ok(match decision.verdict {
                Verdict::Allow => ExitCode::SUCCESS,
                Verdict::Ask => ExitCode::from(EXIT_ASKS),
                Verdict::Deny => ExitCode::from(EXIT_DENIED),
            })
        }
    }
}

/// Which audit entries to show.
pub struct AuditFilter {
    pub vm: Option<String>,
    pub denied: bool,
}

impl AuditFilter {
    fn keeps(&self, entry: &Entry) -> bool {
        let vm_fits = self
            .vm
            .as_ref()
            .is_none_or(|vm| &entry.source == vm || &entry.target == vm);
        vm_fits && (!self.denied || is_refusal(entry))
    }
}

/// What `--denied` shows: refusals and failures, and the `held` lines (the count of a VM's
/// decisions past its pace) that counted a refusal; one that held only allowed decisions is
/// no refusal.
fn is_refusal(entry: &Entry) -> bool {
    match entry.outcome.as_str() {
        "allowed" => false,
        "held" => entry.held_denials() > 0,
        _ => true,
    }
}

pub fn audit(
    root: &StateRoot,
    filter: &AuditFilter,
    lines: usize,
    follow: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let audit = Audit::new(root.dir());
    let (entries, mut offset) = audit.history()?;
    let kept: Vec<Entry> = entries.into_iter().filter(|e| filter.keeps(e)).collect();
    let shown = &kept[kept.len().saturating_sub(lines)..];
    output::audit_entries(shown, json, true)?;
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let (entries, next) = audit.entries_from(offset)?;
        offset = next;
        let kept: Vec<Entry> = entries.into_iter().filter(|e| filter.keeps(e)).collect();
        output::audit_entries(&kept, json, false)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(outcome: &str, detail: Option<&str>) -> Entry {
        Entry {
            time: "2026-12-04T18:00:00Z".into(),
            kind: "invoke".into(),
            source: "vm".into(),
            target: "-".into(),
            object: "x".into(),
            rule: None,
            verdict: "-".into(),
            outcome: outcome.into(),
            detail: detail.map(str::to_owned),
        }
    }

    #[test]
    fn denied_keeps_refusals_and_the_held_lines_that_counted_one() {
        let filter = AuditFilter {
            vm: None,
            denied: true,
        };
        let held = |counts: &str| {
            line(
                "held",
                Some(&format!(
                    "5 decisions since 2026-12-04T18:00:00Z not written one by one (more than 10 \
                     a second after 200): {counts}"
                )),
            )
        };
        assert!(filter.keeps(&line("denied", None)));
        assert!(filter.keeps(&line("failed", Some("no such unit"))));
        assert!(!filter.keeps(&line("allowed", None)));
        assert!(filter.keeps(&held("3 allowed, 2 denied, 0 failed")));
        assert!(!filter.keeps(&held("5 allowed, 0 denied, 0 failed")));
    }
}
