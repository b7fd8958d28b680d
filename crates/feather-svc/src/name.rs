//! Unit names: `prefix[@instance].type`, templates (`getty@.service`), instances
//! (`postgresql@15-main.service`), and systemd's escaping of names (`\x2d`, `-` for `/`).

use std::fmt;

use serde::{Serialize, Serializer};

use crate::error::{Result, SvcError};

/// The unit types feather knows. Others (`.timer`, `.path`, `.mount`, …) are read but never
/// started inside a VM.
pub const UNIT_TYPES: [&str; 11] = [
    "service",
    "socket",
    "target",
    "timer",
    "path",
    "mount",
    "automount",
    "swap",
    "slice",
    "scope",
    "device",
];

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitName {
    full: String,
}

impl UnitName {
    /// Parses a full unit name. A name without a type suffix means a service, as with
    /// `systemctl start nginx`.
    pub fn parse(name: &str) -> Result<UnitName> {
        let invalid = |why: &str| SvcError::InvalidName {
            name: name.to_owned(),
            why: why.to_owned(),
        };
        let full = match name.rsplit_once('.') {
            Some((_, suffix)) if UNIT_TYPES.contains(&suffix) => name.to_owned(),
            _ => format!("{name}.service"),
        };
        if full.len() > 255 {
            return Err(invalid("longer than 255 characters"));
        }
        let (stem, _) = full.rsplit_once('.').ok_or_else(|| invalid("no type"))?;
        if stem.is_empty() {
            return Err(invalid("empty name"));
        }
        if let Some(c) = stem
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || ":-_.\\@".contains(*c)))
        {
            return Err(invalid(&format!("character {c:?} is not allowed")));
        }
        if stem.matches('@').count() > 1 {
            return Err(invalid("more than one '@'"));
        }
        if stem.starts_with('@') {
            return Err(invalid("nothing before '@'"));
        }
        Ok(UnitName { full })
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// `service`, `socket`, `target`, …
    pub fn kind(&self) -> &str {
        self.full.rsplit_once('.').map_or("", |(_, k)| k)
    }

    /// The name without its type suffix (`%N`).
    pub fn stem(&self) -> &str {
        self.full.rsplit_once('.').map_or(&self.full, |(s, _)| s)
    }

    /// The part before `@`, or the whole stem (`%p`).
    pub fn prefix(&self) -> &str {
        self.stem().split_once('@').map_or(self.stem(), |(p, _)| p)
    }

    /// The instance of an instantiated template (`%i`); `None` for plain units and templates.
    pub fn instance(&self) -> Option<&str> {
        self.stem()
            .split_once('@')
            .map(|(_, i)| i)
            .filter(|i| !i.is_empty())
    }

    /// `foo@.service` itself: a template that needs an instance to run.
    pub fn is_template(&self) -> bool {
        self.stem().ends_with('@')
    }

    /// For `foo@bar.service`, `foo@.service`.
    pub fn template(&self) -> Option<UnitName> {
        self.instance().map(|_| UnitName {
            full: format!("{}@.{}", self.prefix(), self.kind()),
        })
    }

    /// `foo@.service` with `instance`: `foo@instance.service`.
    pub fn with_instance(&self, instance: &str) -> UnitName {
        UnitName {
            full: format!("{}@{}.{}", self.prefix(), instance, self.kind()),
        }
    }

    /// The prefixes under which systemd also looks for drop-ins: for `a-b-c.service`, `a-b-` and
    /// `a-` (as `a-b-.service.d/`, `a-.service.d/`), most general first.
    pub fn dash_prefixes(&self) -> Vec<String> {
        let prefix = self.prefix();
        let mut out = Vec::new();
        for (i, c) in prefix.char_indices() {
            if c == '-' && i + 1 < prefix.len() {
                out.push(prefix[..=i].to_owned());
            }
        }
        out
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl Serialize for UnitName {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

/// Undoes systemd's name escaping (`%I`, `%P`, `%J`): `-` becomes `/` and `\xNN` the byte, so
/// `postgresql@15-main`'s `%I` is `15/main` (Debian's units find `/etc/postgresql/%I` so).
pub fn unescape(text: &str) -> String {
    let mut bytes = Vec::with_capacity(text.len());
    let raw = text.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' && raw.get(i + 1) == Some(&b'x') && i + 4 <= raw.len() {
            if let Some(byte) = std::str::from_utf8(&raw[i + 2..i + 4])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                bytes.push(byte);
                i += 4;
                continue;
            }
        }
        bytes.push(if raw[i] == b'-' { b'/' } else { raw[i] });
        i += 1;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Undoes path escaping (`%f`): `-` separates path components, `\xNN` is a byte; the result is
/// absolute.
pub fn unescape_path(text: &str) -> String {
    if text == "-" {
        return "/".into();
    }
    let unescaped = unescape(text);
    format!("/{}", unescaped.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_templates_and_prefixes() {
        let n = UnitName::parse("postgresql@15-main.service").unwrap();
        assert_eq!(n.prefix(), "postgresql");
        assert_eq!(n.instance(), Some("15-main"));
        assert_eq!(n.template().unwrap().as_str(), "postgresql@.service");
        assert!(!n.is_template());
        let t = UnitName::parse("getty@.service").unwrap();
        assert!(t.is_template() && t.instance().is_none());
        assert_eq!(t.with_instance("tty1").as_str(), "getty@tty1.service");
        assert_eq!(UnitName::parse("nginx").unwrap().as_str(), "nginx.service");
        assert_eq!(UnitName::parse("dbus.socket").unwrap().kind(), "socket");
        assert_eq!(
            UnitName::parse("a-b-c.service").unwrap().dash_prefixes(),
            vec!["a-", "a-b-"]
        );
    }

    #[test]
    fn invalid_names_say_why() {
        assert!(UnitName::parse("a b.service")
            .unwrap_err()
            .to_string()
            .contains("' '"));
        assert!(UnitName::parse("a@b@c.service").is_err());
        assert!(UnitName::parse("@x.service").is_err());
        assert!(UnitName::parse(".service").is_err());
    }

    #[test]
    fn unescaping() {
        assert_eq!(unescape(r"foo\x2dbar"), "foo-bar");
        assert_eq!(unescape("15-main"), "15/main");
        assert_eq!(
            unescape_path(r"dev-disk-by\x2dlabel-x"),
            "/dev/disk/by-label/x"
        );
        assert_eq!(unescape_path("-"), "/");
    }
}
