use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The longest name accepted. A VM's name becomes its hostname and part of paths and
/// cgroup names, so it is kept short and DNS-safe.
pub const MAX_LEN: usize = 48;

/// A validated VM name: lowercase letters, digits and `-`, starting with a letter or digit,
/// at most [`MAX_LEN`] characters. It is safe to use as a hostname and as one path component.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VmName(String);

impl VmName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for VmName {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        let invalid = |why| {
            Err(Error::InvalidName {
                name: name.to_owned(),
                why,
            })
        };
        if name.is_empty() {
            return invalid("it is empty");
        }
        if name.len() > MAX_LEN {
            return invalid("it is longer than 48 characters");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return invalid("use only lowercase letters, digits and '-'");
        }
        if name.starts_with('-') || name.ends_with('-') {
            return invalid("it may not start or end with '-'");
        }
        Ok(VmName(name.to_owned()))
    }
}

impl TryFrom<String> for VmName {
    type Error = Error;
    fn try_from(name: String) -> Result<Self, Error> {
        name.parse()
    }
}

impl From<VmName> for String {
    fn from(name: VmName) -> String {
        name.0
    }
}

impl fmt::Display for VmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["web1", "db-primary", "a", "0x", &"a".repeat(MAX_LEN)] {
            assert_eq!(name.parse::<VmName>().unwrap().as_str(), name);
        }
    }

    #[test]
    fn rejects_names_that_could_escape_or_confuse() {
        for name in [
            "",
            "../x",
            "a/b",
            ".",
            "..",
            "Web",
            "-a",
            "a-",
            "a b",
            "a_b",
            &"a".repeat(MAX_LEN + 1),
        ] {
            assert!(name.parse::<VmName>().is_err(), "{name:?} was accepted");
        }
    }
}
