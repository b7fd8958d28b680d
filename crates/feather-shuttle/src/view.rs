//! The policy as programs see it — `policy ls --json`, `policy check --json` and the web view
//! all show these shapes — and the reading of a request's parties as a person names them.

use std::collections::BTreeMap;

use feather_core::{StateRoot, VmName};
use serde::Serialize;

use crate::policy::{Consulted, Decision, Party, Rule, Verdict};

/// A rule with where it was written.
#[derive(Debug, Serialize)]
pub struct RuleRow {
    /// `FILE:LINE`.
    pub at: String,
    pub kind: String,
    pub object: String,
    pub source: String,
    pub target: String,
    pub verdict: String,
    pub options: BTreeMap<String, String>,
}

impl From<&Rule> for RuleRow {
    fn from(rule: &Rule) -> RuleRow {
        RuleRow {
            at: rule.at.to_string(),
            kind: rule.kind.to_string(),
            object: rule.object.as_str().to_owned(),
            source: rule.source.to_string(),
            target: rule.target.to_string(),
            verdict: rule.verdict.to_string(),
            options: rule.options.clone(),
        }
    }
}

/// Which rule decides a request, and why each rule before it did not.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub verdict: Verdict,
    pub rule: Option<RuleRow>,
    pub consulted: Vec<ConsultedRow>,
}

#[derive(Debug, Serialize)]
pub struct ConsultedRow {
    pub rule: RuleRow,
    pub mismatch: Option<&'static str>,
}

impl Explanation {
    pub fn new(decision: &Decision, consulted: &[Consulted<'_>]) -> Explanation {
        Explanation {
            verdict: decision.verdict,
            rule: decision.rule.as_ref().map(RuleRow::from),
            consulted: consulted
                .iter()
                .map(|step| ConsultedRow {
                    rule: RuleRow::from(step.rule),
                    mismatch: step.mismatch,
                })
                .collect(),
        }
    }
}

/// A request's party as a person names it: `@host`, or a VM of `root` with the tags it was
/// created with (none if there is no such VM yet).
pub fn party(root: &StateRoot, word: &str) -> Result<Party, feather_core::Error> {
    if word == "@host" {
        return Ok(Party::Host);
    }
    let name: VmName = word.parse()?;
    let tags = root
        .open(&name)
        .and_then(|vm| vm.read_config())
        .map(|config| config.tags)
        .unwrap_or_default();
    Ok(Party::vm(name.to_string(), &tags))
}
