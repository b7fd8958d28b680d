//! `linux.resources.devices`: the config's device rules, then runc's always-allowed devices,
//! reduced to one [`Policy`] the way runc's emulator of the v1 devices controller does it
//! (`feather_confine::devices` holds the policy, its semantics and the v2 program), and
//! enforced by whatever this host has — the v1 `devices` controller (the list's lines), and
//! on a v2 hierarchy a `BPF_PROG_TYPE_CGROUP_DEVICE` program ([`enforce_v2`]).

use anyhow::{bail, Context, Result};
pub use feather_confine::devices::{enforce_v2, Kind, Policy, Rule, MKNOD, READ, WRITE};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

/// mknod of any device; null, zero, full, random, urandom, tty, console; the pseudo-terminals
/// (136:*, ptmx) and tun: runc's default allowed devices (libcontainer's AllowedDevices; youki
/// has the same). Engines such as podman send only a deny-all rule and count on them: without,
/// the container cannot even open /dev/null.
const ALWAYS_ALLOWED: &[(Kind, Option<u32>, Option<u32>, u8)] = &[
    (Kind::Char, None, None, MKNOD),
    (Kind::Block, None, None, MKNOD),
    (Kind::Char, Some(1), Some(3), READ | WRITE | MKNOD),
    (Kind::Char, Some(1), Some(5), READ | WRITE | MKNOD),
    (Kind::Char, Some(1), Some(7), READ | WRITE | MKNOD),
    (Kind::Char, Some(1), Some(8), READ | WRITE | MKNOD),
    (Kind::Char, Some(1), Some(9), READ | WRITE | MKNOD),
    (Kind::Char, Some(5), Some(0), READ | WRITE | MKNOD),
    (Kind::Char, Some(5), Some(1), READ | WRITE | MKNOD),
    (Kind::Char, Some(136), None, READ | WRITE | MKNOD),
    (Kind::Char, Some(5), Some(2), READ | WRITE | MKNOD),
    (Kind::Char, Some(10), Some(200), READ | WRITE | MKNOD),
];

/// `linux.resources.devices[index]`, checked.
pub fn rule_of_config(index: usize, rule: &LinuxDeviceCgroup) -> Result<Rule> {
    let field = format!("linux.resources.devices[{index}]");
    let kind = match rule.typ().unwrap_or(LinuxDeviceType::A) {
        LinuxDeviceType::A => None,
        LinuxDeviceType::B => Some(Kind::Block),
        LinuxDeviceType::C => Some(Kind::Char),
        other => bail!(
            "{field}.type {:?}: a device rule's type is a, b or c",
            other.as_str()
        ),
    };
    let number = |name: &str, value: Option<i64>| -> Result<Option<u32>> {
        match value {
            None | Some(-1) => Ok(None),
            Some(n) => u32::try_from(n).map(Some).map_err(|_| {
                anyhow::anyhow!(
                    "{field}.{name} {n}: not a device number (0 to 4294967295, or null for any)"
                )
            }),
        }
    };
    Ok(Rule {
        allow: rule.allow(),
        kind,
        major: number("major", rule.major())?,
        minor: number("minor", rule.minor())?,
        access: parse_access(rule.access().as_deref().unwrap_or("rwm"))
            .with_context(|| format!("{field}.access"))?,
    })
}

fn parse_access(text: &str) -> Result<u8> {
    if text.is_empty() {
        bail!("empty: give a subset of \"rwm\"");
    }
    text.chars().try_fold(0, |bits, c| match c {
        'r' => Ok(bits | READ),
        'w' => Ok(bits | WRITE),
        'm' => Ok(bits | MKNOD),
        _ => bail!("{text:?}: a subset of \"rwm\" (read, write, mknod)"),
    })
}

/// A rule with where it comes from, for errors: `linux.resources.devices[2]`, or runc's
/// defaults.
pub type Listed = (String, Rule);

/// The config's rules, checked, then runc's always-allowed devices: the full list, in order.
pub fn listed(rules: &[LinuxDeviceCgroup]) -> Result<Vec<Listed>> {
    let mut list = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        list.push((
            format!("linux.resources.devices[{index}]"),
            rule_of_config(index, rule)?,
        ));
    }
    for &(kind, major, minor, access) in ALWAYS_ALLOWED {
        let rule = Rule {
            allow: true,
            kind: Some(kind),
            major,
            minor,
            access,
        };
        list.push(("runc's default device rule".to_owned(), rule));
    }
    Ok(list)
}

/// The lines that make a v1 devices group (a new one allows everything) hold what `list`
/// says: "deny everything" first unless the list starts with a type-`a` rule of its own, then
/// each rule in the config's order (the conformance suite reads `devices.list` in that
/// order), as (file, line). The kernel's v1 semantics are the ones [`Policy`] follows, but
/// for the holes in wildcard rules it ignores, which [`policy_of`] refuses.
pub fn v1_lines(list: &[Listed]) -> Vec<(&'static str, String)> {
    let file = |allow: bool| {
        if allow {
            "devices.allow"
        } else {
            "devices.deny"
        }
    };
    let mut lines = Vec::new();
    if list.first().is_none_or(|(_, r)| r.kind.is_some()) {
        lines.push(("devices.deny", "a".to_owned()));
    }
    lines.extend(list.iter().map(|(_, r)| (file(r.allow), r.line())));
    lines
}

/// The config's rules, then runc's always-allowed devices, from "deny everything".
pub fn policy_of_config(rules: &[LinuxDeviceCgroup]) -> Result<Policy> {
    policy_of(&listed(rules)?)
}

/// What `list` amounts to, from "deny everything"; a refused rule is named by its origin.
pub fn policy_of(list: &[Listed]) -> Result<Policy> {
    let mut policy = Policy::default();
    for (origin, rule) in list {
        policy
            .apply(*rule)
            .with_context(|| format!("{origin} {:?}", rule.line()))?;
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        allow: bool,
        kind: Option<Kind>,
        major: Option<u32>,
        minor: Option<u32>,
        access: &str,
    ) -> LinuxDeviceCgroup {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(allow)
            .set_typ(Some(match kind {
                None => LinuxDeviceType::A,
                Some(Kind::Block) => LinuxDeviceType::B,
                Some(Kind::Char) => LinuxDeviceType::C,
            }))
            .set_major(major.map(i64::from))
            .set_minor(minor.map(i64::from))
            .set_access(Some(access.to_owned()));
        r
    }

    fn policy(rules: &[LinuxDeviceCgroup]) -> Policy {
        policy_of_config(rules).unwrap()
    }

    const C: Option<Kind> = Some(Kind::Char);
    const B: Option<Kind> = Some(Kind::Block);

    #[test]
    fn an_engines_list_allows_only_what_it_names_and_runcs_defaults() {
        let p = policy(&[
            rule(false, None, None, None, "rwm"),
            rule(true, C, Some(10), Some(229), "rw"),
            rule(true, B, Some(7), None, "r"),
        ]);
        assert!(!p.default_allow);
        assert!(p.allows(Kind::Char, 1, 3, READ | WRITE));
        assert!(p.allows(Kind::Char, 136, 4, READ | WRITE));
        assert!(p.allows(Kind::Block, 8, 0, MKNOD));
        assert!(!p.allows(Kind::Block, 8, 0, READ));
        assert!(!p.allows(Kind::Char, 1, 1, READ));
        assert!(p.allows(Kind::Char, 10, 229, READ | WRITE));
        assert!(p.allows(Kind::Block, 7, 3, READ));
        assert!(!p.allows(Kind::Block, 7, 3, READ | WRITE));
    }

    #[test]
    fn without_a_leading_rule_the_list_starts_from_deny_as_runcs() {
        let p = policy(&[rule(true, C, Some(1), Some(11), "r")]);
        assert!(p.allows(Kind::Char, 1, 11, READ));
        assert!(!p.allows(Kind::Char, 1, 11, WRITE));
        assert!(!p.allows(Kind::Block, 8, 0, READ));
    }

    #[test]
    fn allow_all_then_denials_refuse_any_overlapping_access() {
        let p = policy(&[
            rule(true, None, None, None, "rwm"),
            rule(false, B, Some(8), None, "w"),
            rule(false, C, Some(1), Some(1), "rwm"),
        ]);
        assert!(p.default_allow);
        assert!(p.allows(Kind::Block, 8, 0, READ));
        assert!(!p.allows(Kind::Block, 8, 0, READ | WRITE));
        assert!(!p.allows(Kind::Char, 1, 1, READ));
        assert!(p.allows(Kind::Char, 1, 2, READ | WRITE));
    }

    #[test]
    fn the_last_reset_wins_and_later_rules_merge_or_take_back_access() {
        let p = policy(&[
            rule(true, None, None, None, "rwm"),
            rule(false, B, Some(8), Some(0), "rwm"),
            rule(false, None, None, None, "rwm"),
            rule(true, C, Some(4), Some(1), "r"),
            rule(true, C, Some(4), Some(1), "w"),
            rule(true, C, Some(4), Some(2), "rw"),
            rule(false, C, Some(4), Some(2), "w"),
        ]);
        assert!(!p.default_allow);
        assert!(p.allows(Kind::Char, 4, 1, READ | WRITE));
        assert!(p.allows(Kind::Char, 4, 2, READ));
        assert!(!p.allows(Kind::Char, 4, 2, WRITE));
        assert!(!p.allows(Kind::Block, 8, 1, READ));
    }

    #[test]
    fn a_hole_in_a_wildcard_rule_is_refused_not_ignored() {
        let error = policy_of_config(&[
            rule(false, None, None, None, "rwm"),
            rule(true, C, Some(4), None, "rw"),
            rule(false, C, Some(4), Some(1), "w"),
        ])
        .unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains("linux.resources.devices[2]"), "{text}");
        assert!(text.contains("c 4:* rw"), "{text}");
    }

    #[test]
    fn bad_rules_are_refused_by_field() {
        let mut r = rule(true, C, Some(1), Some(3), "rx");
        let text = format!("{:#}", policy_of_config(&[r.clone()]).unwrap_err());
        assert!(text.contains("linux.resources.devices[0].access"), "{text}");
        r.set_access(Some("rw".into())).set_major(Some(-5));
        let text = format!("{:#}", policy_of_config(&[r.clone()]).unwrap_err());
        assert!(
            text.contains("linux.resources.devices[0].major -5"),
            "{text}"
        );
        r.set_major(Some(1)).set_typ(Some(LinuxDeviceType::P));
        let text = format!("{:#}", policy_of_config(&[r]).unwrap_err());
        assert!(text.contains("linux.resources.devices[0].type"), "{text}");
    }

    #[test]
    fn v1_lines_start_from_deny_and_keep_the_configs_order() {
        let list = listed(&[
            rule(true, B, Some(7), Some(0), "rw"),
            rule(true, C, Some(4), Some(1), "r"),
        ])
        .unwrap();
        let lines = v1_lines(&list);
        assert_eq!(lines[0], ("devices.deny", "a".to_owned()));
        assert_eq!(lines[1], ("devices.allow", "b 7:0 rw".to_owned()));
        assert_eq!(lines[2], ("devices.allow", "c 4:1 r".to_owned()));
        assert!(lines.contains(&("devices.allow", "c 136:* rwm".to_owned())));
        let list = listed(&[rule(false, None, None, None, "rwm")]).unwrap();
        assert_eq!(
            v1_lines(&list)
                .iter()
                .filter(|(_, l)| l.starts_with('a'))
                .count(),
            1
        );
    }
}
