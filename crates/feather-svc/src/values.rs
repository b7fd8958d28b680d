//! Typed values of unit settings: booleans, time spans, file modes, resource limits.

use std::time::Duration;

pub use crate::error::ValueError;

/// systemd's booleans.
pub fn boolean(text: &str) -> Result<bool, ValueError> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Ok(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Ok(false),
        _ => Err(ValueError::NotBoolean(text.to_owned())),
    }
}

/// A time span: `90`, `5min 30s`, `500ms`, `1h`, `infinity` (None). A bare number is in
/// `default_unit` (seconds for most settings).
pub fn timespan(text: &str, default_unit: Duration) -> Result<Option<Duration>, ValueError> {
    let text = text.trim();
    if text == "infinity" {
        return Ok(None);
    }
    if text.is_empty() {
        return Err(ValueError::EmptyTimespan);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return Err(ValueError::NotTimespan(text.to_owned()));
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| ValueError::NotTimespan(text.to_owned()))?;
        rest = rest[number_len..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "" => default_unit,
            "us" | "usec" | "µs" => Duration::from_micros(1),
            "ms" | "msec" => Duration::from_millis(1),
            "s" | "sec" | "second" | "seconds" => Duration::from_secs(1),
            "m" | "min" | "minute" | "minutes" => Duration::from_secs(60),
            "h" | "hr" | "hour" | "hours" => Duration::from_secs(3600),
            "d" | "day" | "days" => Duration::from_secs(86400),
            "w" | "week" | "weeks" => Duration::from_secs(7 * 86400),
            "M" | "month" | "months" => Duration::from_secs(2_629_800),
            "y" | "year" | "years" => Duration::from_secs(31_557_600),
            other => {
                return Err(ValueError::UnknownTimeUnit {
                    unit: other.to_owned(),
                    text: text.to_owned(),
                })
            }
        };
        total += unit.mul_f64(number);
        rest = &rest[unit_len..];
    }
    Ok(Some(total))
}

/// An octal file mode such as `0755` or `2755`.
pub fn mode(text: &str) -> Result<u32, ValueError> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| ValueError::NotMode(text.to_owned()))
}

/// A resource limit: `soft[:hard]`, each a number, `infinity`, or (for sizes) a number with a
/// K/M/G/T/P/E suffix (base 1024). None is unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// The `Limit*=` settings (each sets the kernel resource limit of its name).
pub const LIMITS: [&str; 16] = [
    "LimitCPU",
    "LimitFSIZE",
    "LimitDATA",
    "LimitSTACK",
    "LimitCORE",
    "LimitRSS",
    "LimitNOFILE",
    "LimitAS",
    "LimitNPROC",
    "LimitMEMLOCK",
    "LimitLOCKS",
    "LimitSIGPENDING",
    "LimitMSGQUEUE",
    "LimitNICE",
    "LimitRTPRIO",
    "LimitRTTIME",
];

pub fn limit(key: &str, text: &str) -> Result<Limit, ValueError> {
    let (soft, hard) = text.split_once(':').unwrap_or((text, text));
    let one = |value: &str| -> Result<Option<u64>, ValueError> {
        let value = value.trim();
        if value == "infinity" {
            return Ok(None);
        }
        match key {
            "LimitCPU" => timespan(value, Duration::from_secs(1)).map(|d| d.map(|d| d.as_secs())),
            "LimitRTTIME" => {
                timespan(value, Duration::from_micros(1)).map(|d| d.map(|d| d.as_micros() as u64))
            }
            "LimitNICE" => {
                // `+N`/`-N` is a nice level; a bare number is the raw limit (0..=40).
                if let Some(level) = value.strip_prefix(['+', '-']) {
                    let level: i64 = level
                        .parse()
                        .map_err(|_| ValueError::BadNiceLevel(value.to_owned()))?;
                    let level = if value.starts_with('-') {
                        -level
                    } else {
                        level
                    };
                    Ok(Some((20 - level).clamp(0, 40) as u64))
                } else {
                    value
                        .parse()
                        .map(Some)
                        .map_err(|_| ValueError::BadNiceLimit(value.to_owned()))
                }
            }
            _ => size(value).map(Some),
        }
    };
    Ok(Limit {
        soft: one(soft).map_err(|e| in_limit(key, e))?,
        hard: one(hard).map_err(|e| in_limit(key, e))?,
    })
}

/// A percentage, `50%` (as a fraction, 0.5); systemd also takes `‰` and `‱`, which no unit
/// Debian ships uses.
pub fn percent(text: &str) -> Result<f64, ValueError> {
    let number = text
        .trim()
        .strip_suffix('%')
        .ok_or_else(|| ValueError::NotPercent(text.to_owned()))?;
    number
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(|n| n / 100.0)
        .ok_or_else(|| ValueError::NotPercent(text.to_owned()))
}

/// `MemoryMax=`, `TasksMax=`: a number (for memory with `K`, `M`, `G`, … in powers of 1024),
/// `infinity` (None), or a percentage of `whole` (the machine's memory, the kernel's pid
/// limit).
pub fn amount_or_share(text: &str, whole: u64) -> Result<Option<u64>, ValueError> {
    let text = text.trim();
    if text == "infinity" {
        return Ok(None);
    }
    if text.ends_with('%') {
        return Ok(Some((percent(text)? * whole as f64) as u64));
    }
    size(text).map(Some)
}

/// The socket address families of Linux by the names systemd takes (`AF_UNIX`, …), with
/// their numbers; `AF_LOCAL` is `AF_UNIX`.
pub const ADDRESS_FAMILIES: [(&str, i32); 46] = [
    ("AF_UNSPEC", 0),
    ("AF_UNIX", 1),
    ("AF_INET", 2),
    ("AF_AX25", 3),
    ("AF_IPX", 4),
    ("AF_APPLETALK", 5),
    ("AF_NETROM", 6),
    ("AF_BRIDGE", 7),
    ("AF_ATMPVC", 8),
    ("AF_X25", 9),
    ("AF_INET6", 10),
    ("AF_ROSE", 11),
    ("AF_DECnet", 12),
    ("AF_NETBEUI", 13),
    ("AF_SECURITY", 14),
    ("AF_KEY", 15),
    ("AF_NETLINK", 16),
    ("AF_PACKET", 17),
    ("AF_ASH", 18),
    ("AF_ECONET", 19),
    ("AF_ATMSVC", 20),
    ("AF_RDS", 21),
    ("AF_SNA", 22),
    ("AF_IRDA", 23),
    ("AF_PPPOX", 24),
    ("AF_WANPIPE", 25),
    ("AF_LLC", 26),
    ("AF_IB", 27),
    ("AF_MPLS", 28),
    ("AF_CAN", 29),
    ("AF_TIPC", 30),
    ("AF_BLUETOOTH", 31),
    ("AF_IUCV", 32),
    ("AF_RXRPC", 33),
    ("AF_ISDN", 34),
    ("AF_PHONET", 35),
    ("AF_IEEE802154", 36),
    ("AF_CAIF", 37),
    ("AF_ALG", 38),
    ("AF_NFC", 39),
    ("AF_VSOCK", 40),
    ("AF_KCM", 41),
    ("AF_QIPCRTR", 42),
    ("AF_SMC", 43),
    ("AF_XDP", 44),
    ("AF_MCTP", 45),
];

/// One address family by name.
pub fn address_family(name: &str) -> Result<i32, ValueError> {
    if name == "AF_LOCAL" {
        return Ok(libc::AF_UNIX);
    }
    ADDRESS_FAMILIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, number)| *number)
        .ok_or_else(|| ValueError::NotAddressFamily(name.to_owned()))
}

/// `SystemCallErrorNumber=`: an errno by name (`EPERM`) or number.
pub fn errno(text: &str) -> Result<i32, ValueError> {
    if let Ok(number) = text.parse::<i32>() {
        return Ok(number);
    }
    let known = [
        ("EPERM", libc::EPERM),
        ("ENOENT", libc::ENOENT),
        ("EACCES", libc::EACCES),
        ("EINVAL", libc::EINVAL),
        ("EROFS", libc::EROFS),
        ("ENOSYS", libc::ENOSYS),
        ("EAFNOSUPPORT", libc::EAFNOSUPPORT),
        ("EOPNOTSUPP", libc::EOPNOTSUPP),
        ("ENOTSUP", libc::ENOTSUP),
    ];
    known
        .iter()
        .find(|(name, _)| *name == text)
        .map(|(_, number)| *number)
        .ok_or_else(|| ValueError::NotErrno(text.to_owned()))
}

/// `CPUWeight=`: 1 to 10000 (`idle` is taken as 1).
pub fn cpu_weight(text: &str) -> Result<u64, ValueError> {
    let text = text.trim();
    if text == "idle" {
        return Ok(1);
    }
    text.parse::<u64>()
        .ok()
        .filter(|w| (1..=10_000).contains(w))
        .ok_or_else(|| ValueError::NotCpuWeight(text.to_owned()))
}

fn in_limit(key: &str, problem: ValueError) -> ValueError {
    ValueError::Limit {
        key: key.to_owned(),
        problem: Box::new(problem),
    }
}

fn size(text: &str) -> Result<u64, ValueError> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let number: u64 = text[..split]
        .parse()
        .map_err(|_| ValueError::NotNumber(text.to_owned()))?;
    let shift = match &text[split..] {
        "" | "B" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        "E" => 60,
        other => {
            return Err(ValueError::UnknownSizeSuffix {
                suffix: other.to_owned(),
                text: text.to_owned(),
            })
        }
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| ValueError::TooLarge(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_spans() {
        let s = Duration::from_secs(1);
        assert_eq!(timespan("90", s).unwrap(), Some(Duration::from_secs(90)));
        assert_eq!(
            timespan("5min 30s", s).unwrap(),
            Some(Duration::from_secs(330))
        );
        assert_eq!(
            timespan("1min30s", s).unwrap(),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            timespan("500ms", s).unwrap(),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            timespan("1.5h", s).unwrap(),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(timespan("infinity", s).unwrap(), None);
        assert!(timespan("5 parsecs", s).is_err());
        assert!(timespan("", s).is_err());
    }

    #[test]
    fn limits() {
        assert_eq!(
            limit("LimitNOFILE", "1024:524288").unwrap(),
            Limit {
                soft: Some(1024),
                hard: Some(524288)
            }
        );
        assert_eq!(
            limit("LimitNOFILE", "65535").unwrap(),
            Limit {
                soft: Some(65535),
                hard: Some(65535)
            }
        );
        assert_eq!(limit("LimitMEMLOCK", "64K").unwrap().soft, Some(65536));
        assert_eq!(
            limit("LimitCORE", "infinity").unwrap(),
            Limit {
                soft: None,
                hard: None
            }
        );
        assert_eq!(limit("LimitCPU", "2min").unwrap().soft, Some(120));
        assert_eq!(limit("LimitNICE", "-5").unwrap().soft, Some(25));
        assert!(limit("LimitNOFILE", "lots").is_err());
    }

    #[test]
    fn resource_control_values() {
        assert_eq!(percent("50%").unwrap(), 0.5);
        assert_eq!(percent("250%").unwrap(), 2.5);
        assert!(percent("50").is_err() && percent("-5%").is_err());
        assert_eq!(amount_or_share("64M", 0).unwrap(), Some(64 << 20));
        assert_eq!(amount_or_share("infinity", 0).unwrap(), None);
        assert_eq!(amount_or_share("25%", 4000).unwrap(), Some(1000));
        assert_eq!(amount_or_share("100", 0).unwrap(), Some(100));
        assert!(amount_or_share("lots", 0).is_err());
        assert_eq!(cpu_weight("100").unwrap(), 100);
        assert_eq!(cpu_weight("idle").unwrap(), 1);
        assert!(cpu_weight("0").is_err() && cpu_weight("10001").is_err());
    }

    #[test]
    fn booleans_and_modes() {
        assert!(boolean("yes").unwrap() && !boolean("off").unwrap());
        assert!(boolean("maybe").is_err());
        assert_eq!(mode("2755").unwrap(), 0o2755);
        assert!(mode("999").is_err());
    }
}
