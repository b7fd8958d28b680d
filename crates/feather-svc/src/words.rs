//! Quoting and escapes as systemd applies them to values: splitting into words with single and
//! double quotes (anywhere in a word), C escapes, command lines with their prefixes, `;`
//! between commands, environment assignments, environment files, and `$VAR` / `${VAR}`
//! expansion when a command runs.

use serde::{Deserialize, Serialize};

pub use crate::error::WordError;

/// How strictly words are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escapes {
    /// An unknown escape or an unterminated quote is an error (Exec lines).
    Strict,
    /// An unknown escape keeps its backslash and an unterminated quote ends at the end of the
    /// value (Environment=, as systemd's EXTRACT_RELAX).
    Relaxed,
}

/// One word and whether it was a bare, unquoted `;` (a command separator in Exec lines).
struct Word {
    text: String,
    separator: bool,
    /// The word's first characters before any quote or escape, to read Exec prefixes from.
    raw_start: String,
}

/// Splits `value` into words, removing quotes and resolving C escapes.
pub fn split(value: &str, escapes: Escapes) -> Result<Vec<String>, WordError> {
    let mut chars = value.chars().peekable();
    let mut words = Vec::new();
    while let Some(word) = next_word(&mut chars, escapes)? {
        words.push(word.text);
    }
    Ok(words)
}

fn next_word(
    chars: &mut std::iter::Peekable<std::str::Chars>,
    escapes: Escapes,
) -> Result<Option<Word>, WordError> {
    while chars.peek().is_some_and(|c| c.is_whitespace()) {
        chars.next();
    }
    if chars.peek().is_none() {
        return Ok(None);
    }
    let mut text = String::new();
    let mut raw_start = String::new();
    let mut plain = true;
    let mut quoted_or_escaped = false;
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            break;
        }
        chars.next();
        match c {
            '"' | '\'' => {
                plain = false;
                quoted_or_escaped = true;
                loop {
                    match chars.next() {
                        None if escapes == Escapes::Relaxed => break,
                        None => return Err(WordError::UnterminatedQuote(c)),
                        Some(q) if q == c => break,
                        // Inside double quotes escapes are resolved; inside single quotes too,
                        // as systemd does with EXTRACT_CUNESCAPE.
                        Some('\\') => text.push_str(&unescape_one(chars, escapes)?),
                        Some(other) => text.push(other),
                    }
                }
            }
            '\\' => {
                plain = false;
                quoted_or_escaped = true;
                text.push_str(&unescape_one(chars, escapes)?);
            }
            other => {
                if plain {
                    raw_start.push(other);
                }
                text.push(other);
            }
        }
    }
    let separator = !quoted_or_escaped && text == ";";
    Ok(Some(Word {
        text,
        separator,
        raw_start,
    }))
}

/// Resolves one C escape after its backslash.
fn unescape_one(
    chars: &mut std::iter::Peekable<std::str::Chars>,
    escapes: Escapes,
) -> Result<String, WordError> {
    let Some(c) = chars.next() else {
        return match escapes {
            Escapes::Relaxed => Ok("\\".into()),
            Escapes::Strict => Err(WordError::LoneBackslash),
        };
    };
    let simple = match c {
        'a' => Some('\x07'),
        'b' => Some('\x08'),
        'f' => Some('\x0c'),
        'n' => Some('\n'),
        'r' => Some('\r'),
        't' => Some('\t'),
        'v' => Some('\x0b'),
        's' => Some(' '),
        '\\' | '"' | '\'' | ';' | ' ' | '$' => Some(c),
        _ => None,
    };
    if let Some(simple) = simple {
        return Ok(simple.to_string());
    }
    let digits = |chars: &mut std::iter::Peekable<std::str::Chars>, n: usize, radix: u32| {
        let mut text = String::new();
        for _ in 0..n {
            match chars.peek() {
                Some(d) if d.is_digit(radix) => text.push(chars.next().unwrap_or('0')),
                _ => return None,
            }
        }
        u32::from_str_radix(&text, radix).ok()
    };
    let code = match c {
        'x' => digits(chars, 2, 16),
        'u' => digits(chars, 4, 16),
        'U' => digits(chars, 8, 16),
        '0'..='7' => {
            let mut value = c.to_digit(8).unwrap_or(0);
            for _ in 0..2 {
                match chars.peek().and_then(|d| d.to_digit(8)) {
                    Some(d) => {
                        value = value * 8 + d;
                        chars.next();
                    }
                    None => {
                        if escapes == Escapes::Strict {
                            return Err(WordError::InvalidOctalEscape(c));
                        }
                        break;
                    }
                }
            }
            Some(value)
        }
        _ => None,
    };
    match (code.and_then(char::from_u32), escapes) {
        (Some('\0'), _) => Err(WordError::NulByte),
        (Some(ch), _) => Ok(ch.to_string()),
        (None, Escapes::Relaxed) => Ok(format!("\\{c}")),
        (None, Escapes::Strict) => Err(WordError::InvalidEscape(c)),
    }
}

/// One command of an `Exec*=` setting, with its prefixes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecCommand {
    /// The program: an absolute path, or a name searched in systemd's fixed PATH.
    pub path: String,
    /// The arguments, `argv[0]` included.
    pub argv: Vec<String>,
    /// `-`: a non-zero exit is recorded but not a failure.
    pub ignore_failure: bool,
    /// `@`: the second word is `argv[0]`.
    pub custom_argv0: bool,
    /// `+`: runs with full privileges: no User=/Group=, no sandboxing.
    pub full_privileges: bool,
    /// `!`: User=/Group= are not applied to this command.
    pub no_user_change: bool,
    /// `!!`: only meaningful without ambient capabilities; this kernel has them, so it is a no-op.
    pub ambient_fallback: bool,
    /// `:`: `$VAR` is not expanded.
    pub no_env_expansion: bool,
}

/// Parses the value of an `Exec*=` setting: one or more commands separated by a bare `;`.
pub fn parse_exec(value: &str) -> Result<Vec<ExecCommand>, WordError> {
    let mut chars = value.chars().peekable();
    let mut commands = Vec::new();
    let mut current: Option<ExecCommand> = None;
    while let Some(word) = next_word(&mut chars, Escapes::Strict)? {
        if word.separator {
            if let Some(done) = current.take() {
                commands.push(finish(done)?);
            }
            continue;
        }
        match &mut current {
            None => current = Some(first_word(word)?),
            Some(command) => command.argv.push(word.text),
        }
    }
    if let Some(done) = current {
        commands.push(finish(done)?);
    }
    if commands.is_empty() {
        return Err(WordError::NoCommand);
    }
    Ok(commands)
}

fn first_word(word: Word) -> Result<ExecCommand, WordError> {
    let mut command = ExecCommand::default();
    let prefix_len = word
        .raw_start
        .chars()
        .take_while(|c| matches!(c, '-' | '@' | '+' | '!' | ':'))
        .count();
    let prefix = &word.raw_start[..prefix_len];
    let mut rest = prefix;
    while let Some(c) = rest.chars().next() {
        let already = match c {
            '-' => std::mem::replace(&mut command.ignore_failure, true),
            '@' => std::mem::replace(&mut command.custom_argv0, true),
            '+' => std::mem::replace(&mut command.full_privileges, true),
            ':' => std::mem::replace(&mut command.no_env_expansion, true),
            '!' if rest.starts_with("!!") => {
                rest = &rest[1..];
                std::mem::replace(&mut command.ambient_fallback, true)
            }
            _ => std::mem::replace(&mut command.no_user_change, true),
        };
        if already {
            return Err(WordError::PrefixTwice {
                prefix_char: c,
                prefix: prefix.to_owned(),
            });
        }
        rest = &rest[1..];
    }
    if command.full_privileges && (command.no_user_change || command.ambient_fallback) {
        return Err(WordError::PrefixesCombined);
    }
    let path = word.text[prefix_len..].to_owned();
    if path.is_empty() {
        return Err(WordError::EmptyPath);
    }
    command.path = path;
    Ok(command)
}

fn finish(mut command: ExecCommand) -> Result<ExecCommand, WordError> {
    if command.custom_argv0 {
        if command.argv.is_empty() {
            return Err(WordError::MissingArgv0(command.path));
        }
    } else {
        command.argv.insert(0, command.path.clone());
    }
    Ok(command)
}

/// Parses an `Environment=` value: space-separated `KEY=VALUE` words, quotes allowed.
pub fn parse_environment(value: &str) -> Result<Vec<(String, String)>, WordError> {
    split(value, Escapes::Relaxed)?
        .into_iter()
        .map(|word| match word.split_once('=') {
            Some((key, value)) if valid_env_name(key) => Ok((key.to_owned(), value.to_owned())),
            _ => Err(WordError::InvalidAssignment(word)),
        })
        .collect()
}

pub fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Reads an environment file as systemd's `EnvironmentFile=` does: `KEY=VALUE` lines, `#` and
/// `;` comments, an optional `export `, quotes, backslash escapes and continuations.
/// Lines that are not assignments are skipped, as systemd does (with a warning).
pub fn parse_environment_file(text: &str) -> Vec<(String, String)> {
    let mut result = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let mut line = line.trim().to_owned();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        while ends_with_odd_backslashes(&line) {
            line.pop();
            match lines.next() {
                Some(next) => line.push_str(next),
                None => break,
            }
        }
        let line = line.strip_prefix("export ").unwrap_or(&line);
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if !valid_env_name(key) {
            continue;
        }
        let raw = raw.trim();
        let value = if let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            let mut out = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match (c, chars.clone().next()) {
                    ('\\', Some(n @ ('"' | '\\' | '`' | '$'))) => {
                        out.push(n);
                        chars.next();
                    }
                    ('\\', Some('\n')) => {
                        chars.next();
                    }
                    (c, _) => out.push(c),
                }
            }
            out
        } else if let Some(inner) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
            inner.to_owned()
        } else {
            let mut out = String::new();
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                } else {
                    out.push(c);
                }
            }
            out
        };
        result.push((key.to_owned(), value));
    }
    result
}

fn ends_with_odd_backslashes(text: &str) -> bool {
    text.bytes().rev().take_while(|&b| b == b'\\').count() % 2 == 1
}

/// Expands variables in a command's arguments when it runs: `${VAR}` inside a word becomes the
/// value; a word that is exactly `$VAR` becomes the value split at whitespace (no words if it
/// is empty or unset); `$$` is a literal `$`.
pub fn expand_variables(argv: &[String], lookup: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let mut out = Vec::new();
    for word in argv {
        if let Some(name) = word.strip_prefix('$').filter(|n| valid_env_name(n)) {
            let value = lookup(name).unwrap_or_default();
            out.extend(value.split_whitespace().map(str::to_owned));
            continue;
        }
        let mut expanded = String::new();
        let mut rest = word.as_str();
        while let Some(at) = rest.find('$') {
            expanded.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                expanded.push('$');
                rest = tail;
            } else if let Some((name, tail)) = after
                .strip_prefix('{')
                .and_then(|a| a.split_once('}'))
                .filter(|(n, _)| valid_env_name(n))
            {
                expanded.push_str(&lookup(name).unwrap_or_default());
                rest = tail;
            } else {
                expanded.push('$');
                rest = after;
            }
        }
        expanded.push_str(rest);
        out.push(expanded);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_anywhere_in_a_word_and_c_escapes() {
        assert_eq!(
            split(
                r#"a "b c" 'd "e"' f"g h"i \x41\t\101 "\u00e9""#,
                Escapes::Strict
            )
            .unwrap(),
            vec!["a", "b c", "d \"e\"", "fg hi", "A\tA", "é"]
        );
        assert!(split("\"open", Escapes::Strict).is_err());
        assert!(split(r"\q", Escapes::Strict).is_err());
        assert_eq!(split(r"\q", Escapes::Relaxed).unwrap(), vec![r"\q"]);
    }

    #[test]
    fn exec_prefixes() {
        let c = &parse_exec("-/bin/false x").unwrap()[0];
        assert!(c.ignore_failure && !c.full_privileges);
        assert_eq!(
            (c.path.as_str(), c.argv.clone()),
            ("/bin/false", vec!["/bin/false".to_owned(), "x".into()])
        );
        let c = &parse_exec("@/usr/sbin/daemon my-name --flag").unwrap()[0];
        assert_eq!(c.argv, vec!["my-name", "--flag"]);
        let c = &parse_exec("+/bin/true").unwrap()[0];
        assert!(c.full_privileges);
        let c = &parse_exec("!/bin/true").unwrap()[0];
        assert!(c.no_user_change && !c.ambient_fallback);
        let c = &parse_exec("!!/bin/true").unwrap()[0];
        assert!(c.ambient_fallback && !c.no_user_change);
        let c = &parse_exec(":-/bin/echo $HOME").unwrap()[0];
        assert!(c.no_env_expansion && c.ignore_failure);
        assert_eq!(c.argv[1], "$HOME");
        assert!(parse_exec("--/bin/true").is_err(), "a prefix twice");
        assert!(parse_exec("+!/bin/true").is_err());
        assert!(parse_exec("@/bin/true").is_err(), "@ without argv0");
        assert!(parse_exec("").is_err());
    }

    #[test]
    fn semicolons_separate_commands_unless_escaped_or_quoted() {
        let commands = parse_exec(r"/bin/a 1 ; /bin/b \; ';' x;y").unwrap();
        assert_eq!(commands.len(), 2);
        assert_eq!(commands[0].argv, vec!["/bin/a", "1"]);
        assert_eq!(commands[1].argv, vec!["/bin/b", ";", ";", "x;y"]);
    }

    #[test]
    fn nginx_style_single_quoted_directives_stay_one_word() {
        let c = &parse_exec("/usr/sbin/nginx -g 'daemon on; master_process on;'").unwrap()[0];
        assert_eq!(
            c.argv,
            vec!["/usr/sbin/nginx", "-g", "daemon on; master_process on;"]
        );
    }

    #[test]
    fn environment_assignments() {
        assert_eq!(
            parse_environment(r#"A=1 "B=two words" C= D='x y'"#).unwrap(),
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "".into()),
                ("D".into(), "x y".into())
            ]
        );
        assert!(parse_environment("1A=x").is_err());
        assert!(parse_environment("novalue").is_err());
    }

    #[test]
    fn environment_files() {
        let text = "# c\n; c\nA=1\nexport B=\"two \\\"q\\\" words\"\nC='lit $x'\nD=con\\\ntinued\nnot an assignment\nE = spaced \n";
        assert_eq!(
            parse_environment_file(text),
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two \"q\" words".into()),
                ("C".into(), "lit $x".into()),
                ("D".into(), "continued".into()),
                ("E".into(), "spaced".into()),
            ]
        );
    }

    #[test]
    fn variable_expansion() {
        let lookup = |name: &str| match name {
            "OPTS" => Some("-a  -b".to_owned()),
            "DIR" => Some("/srv x".to_owned()),
            _ => None,
        };
        let argv: Vec<String> = ["prog", "$OPTS", "--dir=${DIR}", "$UNSET", "$$HOME", "a$b"]
            .map(String::from)
            .into();
        assert_eq!(
            expand_variables(&argv, lookup),
            vec!["prog", "-a", "-b", "--dir=/srv x", "$HOME", "a$b"]
        );
    }
}
