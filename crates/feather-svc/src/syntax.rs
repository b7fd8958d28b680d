//! The lexical layer of unit files, as systemd's `config_parse` reads them: `[Section]`
//! headers, `Key=Value` assignments, `#` and `;` comments, and lines continued with a trailing
//! backslash (comment lines inside a continuation are skipped; the backslash becomes a space).
//!
//! Hand-written rather than taken from a crate: the crates that exist either stopped at an old
//! parser framework and lack continuations and positions (`systemd-parser`) or are lossless
//! editors built on a syntax-tree library (`systemd-unit-edit`). The lexical part is small; what
//! matters, and no crate provides, is the semantics on top (search path, drop-ins, specifiers,
//! Exec quoting), which live in the other modules of this crate.

use std::path::Path;

pub use crate::error::SyntaxError;
use crate::error::{Result, SvcError};

/// One `Key=Value` line (or continued lines) of a unit file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub section: String,
    pub key: String,
    pub value: String,
    /// The line the assignment starts on, counting from 1.
    pub line: usize,
}

/// Splits a unit file into its assignments, in order. `path` only names the file in errors.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Assignment>> {
    let error = |line: usize, problem: SyntaxError| SvcError::Syntax {
        path: path.to_path_buf(),
        line,
        problem,
    };
    let mut assignments = Vec::new();
    let mut section: Option<String> = None;
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = raw.trim_start();
        if pending.is_some() && trimmed.starts_with(['#', ';']) {
            continue;
        }
        let (start, mut logical) = match pending.take() {
            Some((start, mut so_far)) => {
                so_far.push_str(raw);
                (start, so_far)
            }
            None => (number, raw.to_owned()),
        };
        if ends_with_unescaped_backslash(&logical) {
            logical.pop();
            logical.push(' ');
            pending = Some((start, logical));
            continue;
        }
        line(&logical, start, &mut section, &mut assignments).map_err(|m| error(start, m))?;
    }
    if let Some((start, logical)) = pending {
        // A continuation at the end of the file ends there, as in systemd.
        line(&logical, start, &mut section, &mut assignments).map_err(|m| error(start, m))?;
    }
    Ok(assignments)
}

fn ends_with_unescaped_backslash(text: &str) -> bool {
    let trailing = text.bytes().rev().take_while(|&b| b == b'\\').count();
    trailing % 2 == 1
}

fn line(
    text: &str,
    number: usize,
    section: &mut Option<String>,
    assignments: &mut Vec<Assignment>,
) -> std::result::Result<(), SyntaxError> {
    let text = text.trim();
    if text.is_empty() || text.starts_with(['#', ';']) {
        return Ok(());
    }
    if text.starts_with(".include ") {
        return Err(SyntaxError::Include);
    }
    if let Some(rest) = text.strip_prefix('[') {
        let Some(name) = rest.strip_suffix(']') else {
            return Err(SyntaxError::UnclosedSection(text.to_owned()));
        };
        if name.is_empty() || name.contains(['[', ']']) {
            return Err(SyntaxError::BadSection(text.to_owned()));
        }
        *section = Some(name.to_owned());
        return Ok(());
    }
    let Some(section) = section else {
        return Err(SyntaxError::OutsideSection(text.to_owned()));
    };
    let Some((key, value)) = text.split_once('=') else {
        return Err(SyntaxError::MissingEquals(text.to_owned()));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(SyntaxError::NoKey(text.to_owned()));
    }
    assignments.push(Assignment {
        section: section.clone(),
        key: key.to_owned(),
        value: value.trim().to_owned(),
        line: number,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Vec<(String, String, String, usize)> {
        parse(Path::new("t.service"), text)
            .unwrap()
            .into_iter()
            .map(|a| (a.section, a.key, a.value, a.line))
            .collect()
    }

    #[test]
    fn sections_keys_comments_and_blank_lines() {
        let got = parse_ok(
            "# comment\n; another\n\n[Unit]\nDescription = A thing \n[Service]\nType=simple\n",
        );
        assert_eq!(
            got,
            vec![
                ("Unit".into(), "Description".into(), "A thing".into(), 5),
                ("Service".into(), "Type".into(), "simple".into(), 7),
            ]
        );
    }

    #[test]
    fn continuation_joins_lines_and_skips_comment_lines_inside() {
        let got = parse_ok("[Service]\nExecStart=/bin/echo a \\\n# not part\n  b \\\n c\nUser=x\n");
        assert_eq!(got[0].2, "/bin/echo a    b   c");
        assert_eq!(got[0].3, 2, "an assignment is located at its first line");
        assert_eq!(got[1].1, "User");
    }

    #[test]
    fn an_escaped_backslash_at_the_end_is_not_a_continuation() {
        let got = parse_ok("[Service]\nExecStart=/bin/echo a\\\\\nUser=x\n");
        assert_eq!(got[0].2, "/bin/echo a\\\\");
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let e = parse(
            Path::new("/x/bad.service"),
            "[Unit]\nDescription=ok\nno equals here\n",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "/x/bad.service:3: missing '=' in \"no equals here\""
        );
        let e = parse(Path::new("a"), "Key=before section\n").unwrap_err();
        assert!(e.to_string().starts_with("a:1: assignment"), "{e}");
        let e = parse(Path::new("a"), "[Unit\n").unwrap_err();
        assert!(e.to_string().contains("missing ']'"), "{e}");
    }

    #[test]
    fn an_empty_value_is_kept_as_an_empty_assignment() {
        let got = parse_ok("[Service]\nExecStart=\n");
        assert_eq!(got[0].2, "");
    }
}
