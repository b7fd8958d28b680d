//! The policy: rule files, one rule a line, read in name order; the first rule that matches a
//! request decides it, and a request no rule matches is denied.
//!
//! ```text
//! # KIND   OBJECT                              SOURCE     TARGET  VERDICT  [OPTION=VALUE]...
//! ipc      unix:/run/postgresql/.s.PGSQL.5432  web        db      allow    start=postgresql@15-main
//! ipc      tcp:6379                            @tag:app   cache   allow    at=16379
//! ipc      dbus:org.freedesktop.Notifications  mail       @host   ask
//! invoke   viewer                              mail       viewer  allow    command=/usr/bin/less
//! files    /home/*/Downloads/**                mail       viewer  allow    mode=ro
//! ```
//!
//! Sources and targets: a VM's name, `@tag:NAME` (VMs created with `--tag NAME`), `@host`,
//! `@anyvm`, or `@any`. An `ipc` rule opens a channel, so its target is one VM or `@host`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{PolicyError, RuleFault};

/// The policy folder every state root has (tests use their own root's).
pub const ROOT_POLICY_DIR: &str = "policy.d";
/// The system's policy folder, read for the default state root only.
pub const SYSTEM_POLICY_DIR: &str = "/etc/feather/policy.d";
/// What a rule file's name ends with; other files in a policy folder are ignored.
pub const EXTENSION: &str = "policy";

/// The four kinds of interaction (dependencies ride on `ipc` rules, as `start=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A unix socket, TCP port or D-Bus name of the target, reachable in the source.
    Ipc,
    /// Running a named application in the target.
    Invoke,
    /// A path of the source made visible in the target.
    Files,
}

impl Kind {
    pub fn parse(word: &str) -> Option<Kind> {
        match word {
            "ipc" => Some(Kind::Ipc),
            "invoke" => Some(Kind::Invoke),
            "files" => Some(Kind::Files),
            _ => None,
        }
    }

    /// The options a rule of this kind may carry.
    fn options(self) -> &'static [&'static str] {
        match self {
            Kind::Ipc => &["at", "start"],
            Kind::Invoke => &["command", "args"],
            Kind::Files => &["mode"],
        }
    }
}

impl Kind {
    /// The kind's word in rule files.
    pub fn word(self) -> &'static str {
        match self {
            Kind::Ipc => "ipc",
            Kind::Invoke => "invoke",
            Kind::Files => "files",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// One side of a request: the host, or a VM with its tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Party {
    Host,
    Vm { name: String, tags: Vec<String> },
}

impl Party {
    pub fn vm(name: impl Into<String>, tags: &[String]) -> Party {
        Party::Vm {
            name: name.into(),
            tags: tags.to_vec(),
        }
    }
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Party::Host => f.write_str("@host"),
            Party::Vm { name, .. } => f.write_str(name),
        }
    }
}

/// What is asked for, by whom, of whom.
#[derive(Clone, Debug)]
pub struct Request {
    pub kind: Kind,
    /// `ipc`: `unix:/PATH`, `tcp:PORT` or `dbus:NAME`; `invoke`: the application's name;
    /// `files`: the absolute path in the source.
    pub object: String,
    pub source: Party,
    pub target: Party,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
    /// Allowed only if the person at the terminal says so; denied when no one can answer.
    Ask,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Ask => "ask",
        })
    }
}

/// Who a rule applies to, as a source or a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    Any,
    AnyVm,
    Host,
    Tag(String),
    Vm(String),
}

impl Selector {
    fn parse(word: &str) -> Result<Selector, RuleFault> {
        match word {
            "@any" => Ok(Selector::Any),
            "@anyvm" => Ok(Selector::AnyVm),
            "@host" => Ok(Selector::Host),
            _ => {
                if let Some(tag) = word.strip_prefix("@tag:") {
                    check_word(tag, "tag")?;
                    Ok(Selector::Tag(tag.to_owned()))
                } else if word.starts_with('@') {
                    Err(RuleFault::UnknownSelector(word.to_owned()))
                } else {
                    word.parse::<feather_core::VmName>()
                        .map_err(RuleFault::VmName)?;
                    Ok(Selector::Vm(word.to_owned()))
                }
            }
        }
    }

    pub fn matches(&self, party: &Party) -> bool {
        match (self, party) {
            (Selector::Any, _) => true,
            (Selector::Host, Party::Host) => true,
            (Selector::AnyVm, Party::Vm { .. }) => true,
            (Selector::Tag(tag), Party::Vm { tags, .. }) => tags.contains(tag),
            (Selector::Vm(wanted), Party::Vm { name, .. }) => wanted == name,
            _ => false,
        }
    }

    /// The one party this selector names, if it names exactly one.
    pub fn single(&self) -> Option<Party> {
        match self {
            Selector::Host => Some(Party::Host),
            Selector::Vm(name) => Some(Party::vm(name.clone(), &[])),
            _ => None,
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Any => f.write_str("@any"),
            Selector::AnyVm => f.write_str("@anyvm"),
            Selector::Host => f.write_str("@host"),
            Selector::Tag(tag) => write!(f, "@tag:{tag}"),
            Selector::Vm(name) => f.write_str(name),
        }
    }
}

/// What a rule is about: an exact object or a glob (`*` within a path component, `**` across).
/// (The `glob` crate, not a regex-based matcher: every VM's keeper links this, and regex
/// tables would cost each of them memory.)
#[derive(Clone, Debug)]
pub struct ObjectPattern {
    text: String,
    glob: glob::Pattern,
}

/// `*` and `?` stop at `/`; only a whole `**` component crosses folders.
const GLOB_OPTIONS: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

impl ObjectPattern {
    fn parse(kind: Kind, text: &str) -> Result<ObjectPattern, RuleFault> {
        check_object(kind, text)?;
        let glob = glob::Pattern::new(text).map_err(|error| RuleFault::Glob {
            object: text.to_owned(),
            error,
        })?;
        Ok(ObjectPattern {
            text: text.to_owned(),
            glob,
        })
    }

    pub fn matches(&self, object: &str) -> bool {
        self.glob.matches_with(object, GLOB_OPTIONS)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern names one object (no wildcards).
    pub fn is_literal(&self) -> bool {
        !self.text.contains(['*', '?', '['])
    }
}

/// Where a rule was written, for error messages, audit lines and `feather policy check`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub kind: Kind,
    pub object: ObjectPattern,
    pub source: Selector,
    pub target: Selector,
    pub verdict: Verdict,
    pub options: BTreeMap<String, String>,
    pub at: RuleRef,
}

impl Rule {
    pub fn matches(&self, request: &Request) -> bool {
        self.mismatch(request).is_none()
    }

    /// The first part of `request` this rule does not match, if any.
    pub fn mismatch(&self, request: &Request) -> Option<&'static str> {
        if self.kind != request.kind {
            Some("kind")
        } else if !self.object.matches(&request.object) {
            Some("object")
        } else if !self.source.matches(&request.source) {
            Some("source")
        } else if !self.target.matches(&request.target) {
            Some("target")
        } else {
            None
        }
    }

    pub fn option(&self, name: &str) -> Option<&str> {
        self.options.get(name).map(String::as_str)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {}",
            self.kind,
            self.object.as_str(),
            self.source,
            self.target,
            self.verdict
        )?;
        for (name, value) in &self.options {
            write!(f, " {name}={}", shlex::try_quote(value).unwrap_or_default())?;
        }
        Ok(())
    }
}

/// A rule looked at for a request, and what of the request it did not match (`None`: it
/// matched, and decided).
#[derive(Clone, Debug)]
pub struct Consulted<'a> {
    pub rule: &'a Rule,
    pub mismatch: Option<&'static str>,
}

/// The decision on one request, and the rule that made it (`None`: no rule matched, so the
/// default, deny).
#[derive(Clone, Debug)]
pub struct Decision {
    pub verdict: Verdict,
    pub rule: Option<Rule>,
}

/// Every rule of a state root's policy folders, in the order they are consulted.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    /// Reads the policy of the state root at `root_dir` (see [`policy_dirs`]).
    pub fn load(root_dir: &Path) -> Result<Policy, PolicyError> {
        Policy::load_dirs(&policy_dirs(root_dir))
    }

    /// Reads every `*.policy` file in `dirs`, folder by folder, files in name order. A missing
    /// folder has no rules; a malformed line fails the whole policy.
    pub fn load_dirs(dirs: &[PathBuf]) -> Result<Policy, PolicyError> {
        let mut rules = Vec::new();
        for dir in dirs {
            for file in rule_files(dir)? {
                let text = read_rule_file(&file).map_err(|error| PolicyError::Read {
                    path: file.clone(),
                    error,
                })?;
                rules.extend(parse(&file, &text)?);
            }
        }
        Ok(Policy { rules })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The first rule matching `request` decides; without one the request is denied.
    pub fn decide(&self, request: &Request) -> Decision {
        match self.rules.iter().find(|rule| rule.matches(request)) {
            Some(rule) => Decision {
                verdict: rule.verdict,
                rule: Some(rule.clone()),
            },
            None => Decision {
                verdict: Verdict::Deny,
                rule: None,
            },
        }
    }

    /// The rules of the request's kind consulted for `request`, in order, up to the one that
    /// decides it: what `feather policy check` shows.
    pub fn explain(&self, request: &Request) -> (Decision, Vec<Consulted<'_>>) {
        let mut consulted = Vec::new();
        for rule in self.rules.iter().filter(|rule| rule.kind == request.kind) {
            let mismatch = rule.mismatch(request);
            consulted.push(Consulted { rule, mismatch });
            if mismatch.is_none() {
                break;
            }
        }
        (self.decide(request), consulted)
    }

    /// Rules of `kind` that may allow something to `source` (allow or ask): what a broker
    /// opens endpoints for. Each connection is still decided on its own by [`Policy::decide`].
    pub fn offered_to<'a>(
        &'a self,
        kind: Kind,
        source: &'a Party,
    ) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |rule| {
            rule.kind == kind && rule.verdict != Verdict::Deny && rule.source.matches(source)
        })
    }
}

/// The policy folders of the state root at `root_dir`: its own `policy.d`, after the system's
/// `/etc/feather/policy.d` if it is the default root.
pub fn policy_dirs(root_dir: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if root_dir == Path::new(feather_core::store::DEFAULT_STATE_DIR) {
        dirs.push(PathBuf::from(SYSTEM_POLICY_DIR));
    }
    dirs.push(root_dir.join(ROOT_POLICY_DIR));
    dirs
}

/// The most a rule file holds: thousands of rules.
pub const MAX_RULE_FILE: u64 = 1 << 20;

/// A rule file's text: at most [`MAX_RULE_FILE`] bytes, never through a symbolic link, never
/// waited on (a FIFO); read by every VM start as root, and by every run's pool fingerprint.
pub fn read_rule_file(file: &Path) -> std::io::Result<String> {
    feather_core::small_file::read_text(file, MAX_RULE_FILE)
}

fn rule_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(PolicyError::Read {
                path: dir.to_path_buf(),
                error,
            })
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| is_rule_file(path))
        .collect();
    files.sort();
    Ok(files)
}

/// Whether the policy reads `path` (by its name: `*.policy`).
pub fn is_rule_file(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == EXTENSION)
}

/// Parses one rule file.
pub fn parse(file: &Path, text: &str) -> Result<Vec<Rule>, PolicyError> {
    let mut rules = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let at = RuleRef {
            file: file.to_path_buf(),
            line: index + 1,
        };
        let content = line.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let rule = parse_rule(content, at.clone()).map_err(|fault| PolicyError::Malformed {
            file: at.file.clone(),
            line: at.line,
            fault,
        })?;
        rules.push(rule);
    }
    Ok(rules)
}

fn parse_rule(line: &str, at: RuleRef) -> Result<Rule, RuleFault> {
    let words = shlex::split(line).ok_or(RuleFault::UnbalancedQuotes)?;
    let [kind, object, source, target, verdict, options @ ..] = words.as_slice() else {
        return Err(RuleFault::WordCount(words.len()));
    };
    let kind = Kind::parse(kind).ok_or_else(|| RuleFault::UnknownKind(kind.clone()))?;
    let object = ObjectPattern::parse(kind, object)?;
    let side = |side: &'static str| {
        move |fault| RuleFault::Selector {
            side,
            fault: Box::new(fault),
        }
    };
    let source = Selector::parse(source).map_err(side("source"))?;
    let target = Selector::parse(target).map_err(side("target"))?;
    let verdict = match verdict.as_str() {
        "allow" => Verdict::Allow,
        "deny" => Verdict::Deny,
        "ask" => Verdict::Ask,
        other => return Err(RuleFault::UnknownVerdict(other.to_owned())),
    };
    let options = parse_options(kind, options)?;
    let rule = Rule {
        kind,
        object,
        source,
        target,
        verdict,
        options,
        at,
    };
    check_rule(&rule)?;
    Ok(rule)
}

fn parse_options(kind: Kind, words: &[String]) -> Result<BTreeMap<String, String>, RuleFault> {
    let mut options = BTreeMap::new();
    for word in words {
        let (name, value) = word
            .split_once('=')
            .ok_or_else(|| RuleFault::NotNameValue(word.clone()))?;
        if !kind.options().contains(&name) {
            return Err(RuleFault::UnknownOption {
                name: name.to_owned(),
                kind: kind.word(),
                known: kind.options(),
            });
        }
        if options.insert(name.to_owned(), value.to_owned()).is_some() {
            return Err(RuleFault::OptionTwice(name.to_owned()));
        }
    }
    Ok(options)
}

/// The object's form for its kind.
fn check_object(kind: Kind, object: &str) -> Result<(), RuleFault> {
    match kind {
        Kind::Ipc => match object.split_once(':') {
            Some(("unix", path)) if path.starts_with('/') => Ok(()),
            Some(("tcp", port)) if port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
            Some(("dbus", name)) if !name.is_empty() => Ok(()),
            _ => Err(RuleFault::IpcObject(object.to_owned())),
        },
        Kind::Invoke => check_word(object, "application name"),
        Kind::Files if object.starts_with('/') => Ok(()),
        Kind::Files => Err(RuleFault::RelativeFiles(object.to_owned())),
    }
}

/// Options and combinations that only make sense one way.
fn check_rule(rule: &Rule) -> Result<(), RuleFault> {
    if rule.kind == Kind::Ipc && rule.verdict != Verdict::Deny {
        if rule.target.single().is_none() {
            return Err(RuleFault::NotOnePlace(rule.target.to_string()));
        }
        if !rule.object.is_literal() {
            return Err(RuleFault::PatternAllowed(rule.object.as_str().to_owned()));
        }
    }
    if let Some(at) = rule.option("at") {
        let scheme = rule.object.as_str().split(':').next().unwrap_or_default();
        let fits = match scheme {
            "tcp" => at.parse::<u16>().is_ok_and(|p| p > 0),
            _ => at.starts_with('/'),
        };
        if !fits {
            return Err(RuleFault::At {
                at: at.to_owned(),
                scheme: scheme.to_owned(),
            });
        }
    }
    if let Some(mode) = rule.option("mode") {
        if !matches!(mode, "ro" | "rw") {
            return Err(RuleFault::Mode(mode.to_owned()));
        }
    }
    if let Some(args) = rule.option("args") {
        if !matches!(args, "none" | "files" | "any") {
            return Err(RuleFault::Args(args.to_owned()));
        }
    }
    if let Some(command) = rule.option("command") {
        if shlex::split(command).is_none_or(|words| words.is_empty()) {
            return Err(RuleFault::Command(command.to_owned()));
        }
    }
    Ok(())
}

fn check_word(word: &str, what: &'static str) -> Result<(), RuleFault> {
    let fine = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '*'));
    if fine {
        Ok(())
    } else {
        Err(RuleFault::Word {
            what,
            word: word.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        Policy {
            rules: parse(Path::new("test.policy"), text).unwrap(),
        }
    }

    fn malformed(text: &str) -> String {
        parse(Path::new("bad.policy"), text)
            .unwrap_err()
            .to_string()
    }

    fn ipc(object: &str, source: &str, target: &str) -> Request {
        Request {
            kind: Kind::Ipc,
            object: object.into(),
            source: Party::vm(source, &["app".to_owned()]),
            target: Party::vm(target, &[]),
        }
    }

    #[test]
    fn first_matching_rule_decides_and_the_default_is_deny() {
        let policy = policy(
            "# comment\n\
             ipc unix:/run/pg.sock web db deny\n\
             ipc unix:/run/pg.sock @anyvm db allow start=postgresql\n\
             \n\
             ipc tcp:6379 @tag:app cache ask at=16379\n",
        );
        let denied = policy.decide(&ipc("unix:/run/pg.sock", "web", "db"));
        assert_eq!(denied.verdict, Verdict::Deny);
        assert_eq!(denied.rule.unwrap().at.line, 2);
        let allowed = policy.decide(&ipc("unix:/run/pg.sock", "other", "db"));
        assert_eq!(allowed.verdict, Verdict::Allow);
        assert_eq!(allowed.rule.unwrap().option("start"), Some("postgresql"));
        assert_eq!(
            policy.decide(&ipc("tcp:6379", "anything", "cache")).verdict,
            Verdict::Ask
        );
        let unmatched = policy.decide(&ipc("tcp:5432", "web", "db"));
        assert_eq!(unmatched.verdict, Verdict::Deny);
        assert!(unmatched.rule.is_none());
    }

    #[test]
    fn path_globs_do_not_cross_slashes_unless_doubled() {
        let policy = policy(
            "files /home/*/Downloads/** mail viewer allow mode=rw\n\
             files /tmp/*.pdf mail viewer allow\n",
        );
        let files = |path: &str| Request {
            kind: Kind::Files,
            object: path.into(),
            source: Party::vm("mail", &[]),
            target: Party::vm("viewer", &[]),
        };
        assert_eq!(
            policy.decide(&files("/home/ann/Downloads/a/b.pdf")).verdict,
            Verdict::Allow
        );
        assert_eq!(policy.decide(&files("/tmp/a.pdf")).verdict, Verdict::Allow);
        assert_eq!(policy.decide(&files("/tmp/x/a.pdf")).verdict, Verdict::Deny);
        assert_eq!(
            policy.decide(&files("/home/ann/b.pdf")).verdict,
            Verdict::Deny
        );
    }

    #[test]
    fn host_and_vm_selectors_are_distinct() {
        let policy = policy("invoke viewer @host viewer allow\n");
        let mut request = Request {
            kind: Kind::Invoke,
            object: "viewer".into(),
            source: Party::Host,
            target: Party::vm("viewer", &[]),
        };
        assert_eq!(policy.decide(&request).verdict, Verdict::Allow);
        request.source = Party::vm("host", &[]);
        assert_eq!(policy.decide(&request).verdict, Verdict::Deny);
    }

    #[test]
    fn malformed_lines_name_file_line_and_fault() {
        let cases = [
            ("ipc unix:/a web db\n", "found 4 word(s)"),
            ("pipe unix:/a web db allow\n", "unknown kind \"pipe\""),
            ("ipc unix:relative web db allow\n", "unix:/ABSOLUTE/PATH"),
            ("ipc tcp:99999 web db allow\n", "tcp:PORT"),
            ("ipc unix:/a web db maybe\n", "unknown verdict"),
            ("ipc unix:/a @everyone db allow\n", "unknown \"@everyone\""),
            (
                "ipc unix:/a web @anyvm allow\n",
                "must be a VM name or @host",
            ),
            ("ipc unix:/run/* web db allow\n", "must name one socket"),
            (
                "ipc unix:/a web db allow mode=ro\n",
                "unknown option \"mode\"",
            ),
            (
                "ipc tcp:80 web db allow at=/x\n",
                "a tcp channel appears at a port",
            ),
            ("files /a web db allow mode=rwx\n", "use ro or rw"),
            ("invoke 'a b' web db allow\n", "application name"),
            ("invoke v web db allow command=\"\n", "unbalanced quotes"),
            ("ipc unix:/a web Bad/Name allow\n", "target:"),
        ];
        for (text, why) in cases {
            let message = malformed(&format!("# ok\n{text}"));
            assert!(message.starts_with("policy bad.policy:2: "), "{message}");
            assert!(message.contains(why), "{text:?}: {message}");
            assert!(message.contains("allows nothing"), "{message}");
        }
    }

    #[test]
    fn malformed_lines_are_told_apart_by_variant() {
        let fault = |text: &str| match parse(Path::new("bad.policy"), text).unwrap_err() {
            PolicyError::Malformed { fault, .. } => fault,
            other => panic!("{other}"),
        };
        assert!(matches!(
            fault("ipc unix:/a web db maybe\n"),
            RuleFault::UnknownVerdict(_)
        ));
        assert!(matches!(
            fault("ipc unix:/a web Bad/Name allow\n"),
            RuleFault::Selector { side: "target", .. }
        ));
        assert!(matches!(
            fault("ipc unix:/a web db allow mode=ro\n"),
            RuleFault::UnknownOption { kind: "ipc", .. }
        ));
    }

    #[test]
    fn explain_shows_the_rules_passed_over_and_the_decider() {
        let policy = policy(
            "ipc tcp:80 web db allow\n\
             invoke viewer web db allow\n\
             ipc tcp:5432 other db allow\n\
             ipc tcp:5432 web db deny\n\
             ipc tcp:5432 web db allow\n",
        );
        let (decision, consulted) = policy.explain(&ipc("tcp:5432", "web", "db"));
        assert_eq!(decision.verdict, Verdict::Deny);
        let seen: Vec<_> = consulted
            .iter()
            .map(|c| (c.rule.at.line, c.mismatch))
            .collect();
        assert_eq!(seen, [(1, Some("object")), (3, Some("source")), (4, None)]);
    }

    #[test]
    fn denying_rules_may_use_patterns() {
        let policy = policy("ipc unix:/run/** @anyvm @anyvm deny\n");
        assert_eq!(
            policy.decide(&ipc("unix:/run/x/y.sock", "a", "b")).verdict,
            Verdict::Deny
        );
        assert!(policy.decide(&ipc("unix:/run/x", "a", "b")).rule.is_some());
    }

    #[test]
    fn files_are_read_in_name_order_and_others_ignored() {
        let scratch = feather_testkit::ScratchDir::new("policy");
        let dir = scratch.0.clone();
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("20-late.policy"), "ipc tcp:80 web db allow\n").unwrap();
        fs::write(dir.join("10-early.policy"), "ipc tcp:80 web db deny\n").unwrap();
        fs::write(dir.join("README"), "not a rule\n").unwrap();
        let policy = Policy::load_dirs(&[dir.clone(), dir.join("missing")]);
        let decision = policy.unwrap().decide(&ipc("tcp:80", "web", "db"));
        assert_eq!(decision.verdict, Verdict::Deny);
        assert!(decision.rule.unwrap().at.file.ends_with("10-early.policy"));
    }
}
