//! Human sizes for limits: `512M`, `2G`, `1048576`.

use crate::Error;

/// Parses a byte count with an optional binary suffix K, M, G or T (case-insensitive, an
/// optional trailing `B` or `iB` is accepted): `512M` is 512 MiB.
pub fn parse_bytes(text: &str) -> Result<u64, Error> {
    let invalid = |why: &str| Error::InvalidValue {
        what: "size",
        value: text.to_owned(),
        why: why.to_owned(),
    };
    let lower = text.trim().to_ascii_lowercase();
    let trimmed = lower.trim_end_matches("ib").trim_end_matches('b');
    let (digits, shift) = match trimmed.chars().last() {
        Some('k') => (&trimmed[..trimmed.len() - 1], 10),
        Some('m') => (&trimmed[..trimmed.len() - 1], 20),
        Some('g') => (&trimmed[..trimmed.len() - 1], 30),
        Some('t') => (&trimmed[..trimmed.len() - 1], 40),
        _ => (trimmed, 0),
    };
    let number: u64 = digits.parse().map_err(|_| {
        invalid("expected a number with an optional K, M, G or T suffix, e.g. 512M")
    })?;
    let bytes = number
        .checked_shl(shift)
        .filter(|b| b >> shift == number)
        .ok_or_else(|| invalid("too large"))?;
    if bytes == 0 {
        return Err(invalid("must be greater than zero"));
    }
    Ok(bytes)
}

/// Formats a byte count the way [`parse_bytes`] reads it, choosing the largest exact unit.
pub fn format_bytes(bytes: u64) -> String {
    for (suffix, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_suffixes() {
        assert_eq!(parse_bytes("512M").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("2g").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("64KiB").unwrap(), 64 << 10);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
    }

    #[test]
    fn rejects_nonsense() {
        for text in ["", "M", "-1M", "1.5G", "0", "99999999999T", "12Q"] {
            assert!(parse_bytes(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn formats_back() {
        assert_eq!(format_bytes(512 << 20), "512M");
        assert_eq!(format_bytes(1000), "1000");
    }
}
