//! Showing text a VM chose (file names, command lines, log lines, prompts) to a person.
//!
//! A terminal interprets control characters: an ESC or CSI sequence in a file name can move
//! the cursor, erase a line of the listing or retitle the window, and bidirectional overrides
//! reorder what is shown. Everything a VM chose goes through [`escape_for_terminal`] (or
//! [`escape_bytes`]) before feather prints it for people, whether or not stdout is a terminal
//! (a log piped to `less -R` reaches one later). JSON output is not escaped this way: serde
//! escapes control characters itself, and [`utf8_or_escaped`] says how non-UTF-8 bytes appear.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` must not reach a terminal as itself: C0 controls, DEL, C1 controls (including
/// U+009B, the one-character CSI), and the bidirectional marks, embeddings, overrides and
/// isolates that reorder the text around them, plus the line and paragraph separators.
fn is_unsafe(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        | '\u{61c}' | '\u{200e}' | '\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}')
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        '\\' => out.push_str("\\\\"),
        c if (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// `text` with every character a terminal would act on shown as a visible escape (`\x1b`,
/// `\n`, `\u{9b}`, `\u{202e}`), and `\` doubled so an escape cannot be faked.
/// Borrowed unchanged when there is nothing to escape.
pub fn escape_for_terminal(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| is_unsafe(c) || c == '\\') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) || c == '\\' {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`escape_for_terminal`] leaving `\` as it is: for text whose quoted names were escaped where
/// it was made (an error message quoting [`escape_path`]), which a second pass would escape
/// twice (`\\xff` for a byte shown `\xff`). Whatever a terminal would act on is still shown as
/// an escape, so text that came unescaped into the message is harmless, if ambiguous.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`escape_controls`] line by line, the lines kept: for a message of several lines shown on a
/// terminal (an error with its causes; a warning that quotes what a user chose, such as the
/// type of a FUSE mount, `fuse.<subtype>`, which mountinfo passes with its control characters).
pub fn escape_controls_by_line(text: &str) -> String {
    let lines: Vec<_> = text.lines().map(escape_controls).collect();
    lines.join("\n")
}

/// Like [`escape_for_terminal`], for bytes that may not be UTF-8 (file names, command lines):
/// each byte of an invalid sequence is shown as `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => escape_for_terminal(text),
        Err(_) => Cow::Owned(decode(bytes, |out, text| {
            out.push_str(&escape_for_terminal(text))
        })),
    }
}

/// A path shown for people (see [`escape_bytes`]).
pub fn escape_path(path: &std::path::Path) -> Cow<'_, str> {
    use std::os::unix::ffi::OsStrExt;
    escape_bytes(path.as_os_str().as_bytes())
}

/// The text of `bytes` for JSON: exactly the text when the bytes are UTF-8; otherwise each byte
/// of an invalid sequence as `\xNN` (and nothing else changed), so it stays readable. Callers
/// that need the exact bytes of a non-UTF-8 name publish them beside it.
pub fn utf8_or_escaped(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => Cow::Owned(decode(bytes, |out, text| out.push_str(text))),
    }
}

/// Walks `bytes`, handing each valid UTF-8 run to `valid` and writing each invalid byte as
/// `\xNN`.
fn decode(bytes: &[u8], valid: impl Fn(&mut String, &str)) -> String {
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        valid(&mut out, chunk.valid());
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_of_lines_keeps_its_lines_and_loses_its_controls() {
        let said = escape_controls_by_line("on fuse.\u{1b}]0;owned\u{7} here\nnext \\x41 line");
        assert_eq!(said, "on fuse.\\x1b]0;owned\\x07 here\nnext \\x41 line");
    }

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for text in ["", "/etc/passwd", "héllo wörld", "日本語 ok", "a b\u{a0}c"] {
            assert!(matches!(escape_for_terminal(text), Cow::Borrowed(t) if t == text));
        }
    }

    #[test]
    fn c0_del_and_c1_controls_are_shown_visibly() {
        assert_eq!(escape_for_terminal("a\x1b[2Kb"), "a\\x1b[2Kb");
        assert_eq!(escape_for_terminal("x\ny\rz\t"), "x\\ny\\rz\\t");
        assert_eq!(escape_for_terminal("\x00\x07\x7f"), "\\x00\\x07\\x7f");
        assert_eq!(escape_for_terminal("\u{9b}31m\u{85}"), "\\u{9b}31m\\u{85}");
    }

    #[test]
    fn bidi_controls_are_shown_visibly() {
        assert_eq!(escape_for_terminal("txt.\u{202e}exe"), "txt.\\u{202e}exe");
        for c in [
            '\u{202a}', '\u{202d}', '\u{2066}', '\u{2069}', '\u{200f}', '\u{61c}',
        ] {
            let shown = escape_for_terminal(&c.to_string()).into_owned();
            assert!(shown.starts_with("\\u{"), "{shown}");
        }
    }

    #[test]
    fn backslashes_are_doubled_so_escapes_cannot_be_faked() {
        assert_eq!(escape_for_terminal("a\\x1bb"), "a\\\\x1bb");
        assert_ne!(escape_for_terminal("\\x1b"), escape_for_terminal("\x1b"));
    }

    #[test]
    fn invalid_utf8_is_shown_as_hex_bytes() {
        assert_eq!(escape_bytes(b"a\xffb\x1b"), "a\\xffb\\x1b");
        assert_eq!(escape_bytes(b"\xc3"), "\\xc3");
        assert_eq!(escape_bytes("ok é".as_bytes()), "ok é");
    }

    #[test]
    fn nothing_unsafe_survives_escaping() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let shown = escape_for_terminal(&all);
        assert!(!shown.chars().any(is_unsafe), "{shown:?}");
    }

    #[test]
    fn json_text_is_exact_for_utf8_and_marks_invalid_bytes() {
        assert_eq!(utf8_or_escaped("a\x1b\n".as_bytes()), "a\x1b\n");
        assert_eq!(utf8_or_escaped(b"a\xfe"), "a\\xfe");
    }
}
