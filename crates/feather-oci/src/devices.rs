//! `linux.resources.devices`: the config's device rules, then runc's always-allowed devices,
//! reduced to one [`Policy`] the way runc's emulator of the v1 devices controller does it,
//! and enforced by whatever this host has — the v1 `devices` controller (the policy's lines),
//! and on a v2 hierarchy a `BPF_PROG_TYPE_CGROUP_DEVICE` program assembled here ([`program`]).
//!
//! The semantics, as cgroup v1 and runc define them:
//! - the list starts from "deny everything"; a rule of type `a` resets it to allow (or deny)
//!   everything, dropping every exception made before;
//! - a rule whose action differs from the default adds an exception (merging access with an
//!   exception of the same type and numbers); one with the default's action removes access
//!   from the exception of the same type and numbers, and is refused if it would punch a hole
//!   in a wildcard exception (cgroup v1 would silently ignore it: a false sense of security);
//! - on a default-deny policy an access is allowed if one exception matches the device and
//!   holds every access asked; on a default-allow one it is refused if one exception matches
//!   and holds any access asked (v1's partial match; runc's program asks for every access
//!   there, which lets `rw` through a deny of `w` alone — stricter here, as v1 is).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use feather_sys::bpf::Insn;
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

/// Access bits, as `BPF_DEVCG_ACC_*` numbers them.
pub const MKNOD: u8 = 1;
pub const READ: u8 = 2;
pub const WRITE: u8 = 4;

/// A device type, as `BPF_DEVCG_DEV_*` numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Block = 1,
    Char = 2,
}

/// One rule: `kind` None is type `a` (every device); a number None is `*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    pub kind: Option<Kind>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u8,
}

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

impl Rule {
    /// `linux.resources.devices[index]`, checked.
    pub fn from_config(index: usize, rule: &LinuxDeviceCgroup) -> Result<Rule> {
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
                    anyhow::anyhow!("{field}.{name} {n}: not a device number (0 to 4294967295, or null for any)")
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

    /// The rule as the v1 controller's `devices.allow` and `devices.deny` take it.
    fn line(&self) -> String {
        let kind = match self.kind {
            None => "a",
            Some(Kind::Block) => "b",
            Some(Kind::Char) => "c",
        };
        let number = |n: Option<u32>| n.map_or("*".to_owned(), |n| n.to_string());
        let access: String = [(READ, 'r'), (WRITE, 'w'), (MKNOD, 'm')]
            .iter()
            .filter(|(bit, _)| self.access & bit != 0)
            .map(|(_, c)| c)
            .collect();
        format!(
            "{kind} {}:{} {access}",
            number(self.major),
            number(self.minor)
        )
    }
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

/// A type and numbers an exception applies to.
type Target = (Kind, Option<u32>, Option<u32>);

/// What a list of rules amounts to: a default, and exceptions to it with their access.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub default_allow: bool,
    exceptions: BTreeMap<Target, u8>,
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
            Rule::from_config(index, rule)?,
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
/// for the holes in wildcard rules it ignores, which [`Policy::of`] refuses.
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

impl Policy {
    /// The config's rules, then runc's always-allowed devices, from "deny everything".
    pub fn of_config(rules: &[LinuxDeviceCgroup]) -> Result<Policy> {
        Policy::of(&listed(rules)?)
    }

    /// What `list` amounts to, from "deny everything".
    pub fn of(list: &[Listed]) -> Result<Policy> {
        let mut policy = Policy::default();
        for (origin, rule) in list {
            policy
                .apply(*rule)
                .with_context(|| format!("{origin} {:?}", rule.line()))?;
        }
        Ok(policy)
    }

    /// One more rule, as cgroup v1 (and runc's emulator of it) takes it.
    pub fn apply(&mut self, rule: Rule) -> Result<()> {
        let Some(kind) = rule.kind else {
            *self = Policy {
                default_allow: rule.allow,
                exceptions: BTreeMap::new(),
            };
            return Ok(());
        };
        let target = (kind, rule.major, rule.minor);
        if rule.allow != self.default_allow {
            *self.exceptions.entry(target).or_insert(0) |= rule.access;
            return Ok(());
        }
        for wider in [
            (kind, None, rule.minor),
            (kind, rule.major, None),
            (kind, None, None),
        ] {
            let held = self.exceptions.get(&wider).copied().unwrap_or(0);
            if wider != target && held & rule.access != 0 {
                let exception = Rule {
                    allow: !self.default_allow,
                    kind: Some(kind),
                    major: wider.1,
                    minor: wider.2,
                    access: held,
                };
                bail!(
                    "cannot take access away from part of the earlier wildcard rule {:?} (cgroup v1 would ignore it silently); narrow that rule instead",
                    exception.line()
                );
            }
        }
        if let Some(held) = self.exceptions.get_mut(&target) {
            *held &= !rule.access;
            if *held == 0 {
                self.exceptions.remove(&target);
            }
        }
        Ok(())
    }

    /// Whether the policy lets `access` to the device through.
    pub fn allows(&self, kind: Kind, major: u32, minor: u32, access: u8) -> bool {
        let matching = self
            .exceptions
            .iter()
            .filter(|((k, ma, mi), _)| {
                *k == kind && ma.is_none_or(|m| m == major) && mi.is_none_or(|m| m == minor)
            })
            .map(|(_, held)| *held);
        if self.default_allow {
            !matching.into_iter().any(|held| held & access != 0)
        } else {
            matching.into_iter().any(|held| held & access == access)
        }
    }

    /// The exceptions as rules (their action is the opposite of the default's).
    fn exception_rules(&self) -> impl Iterator<Item = Rule> + '_ {
        self.exceptions
            .iter()
            .map(|(&(kind, major, minor), &access)| Rule {
                allow: !self.default_allow,
                kind: Some(kind),
                major,
                minor,
                access,
            })
    }
}

/// The license the program is loaded under (it calls no GPL-only helper).
const LICENSE: &std::ffi::CStr = c"Apache-2.0";

/// Loads [`program`]`(policy)` and makes it the device program of the v2 group at `dir`,
/// replacing the one set before (`update`).
pub fn enforce_v2(dir: &Path, policy: &Policy) -> Result<()> {
    let loaded = feather_sys::bpf::load_device_program(&program(policy), LICENSE)?;
    feather_sys::bpf::set_device_program(dir, &loaded)?;
    Ok(())
}

// The instructions, hand-assembled (as runc does with its asm package): no crate assembles
// and loads raw programs without clang or libbpf (aya loads compiled ELF objects, libbpf-rs
// builds libbpf). The program reads `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major;
// u32 minor; }` (access_type: access << 16 | type) and returns 1 to allow, 0 to refuse.

/// Registers: the context, then what the prologue loads from it.
const CTX: u8 = 1;
const KIND: u8 = 2;
const ACCESS: u8 = 3;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;
const RESULT: u8 = 0;
/// R1 again once the context is read: a scratch register.
const SCRATCH: u8 = 1;

/// Opcodes (uapi/linux/bpf_common.h, bpf.h): class | size or operation | source.
const LDX_W_MEM: u8 = 0x61;
const ALU32_AND_K: u8 = 0x54;
const ALU32_RSH_K: u8 = 0x74;
const ALU32_MOV_X: u8 = 0xbc;
const ALU64_MOV_K: u8 = 0xb7;
const JMP32_JNE_K: u8 = 0x56;
const JMP32_JEQ_K: u8 = 0x16;
const JMP32_JNE_X: u8 = 0x5e;
const JMP_EXIT: u8 = 0x95;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        dst,
        src,
        off,
        imm,
    }
}

/// The program for `policy`: the device's type, access and numbers read once, then a block
/// per exception which returns the exception's action if the device matches it, then the
/// default.
pub fn program(policy: &Policy) -> Vec<Insn> {
    let mut program = vec![
        insn(LDX_W_MEM, KIND, CTX, 0, 0),
        insn(ALU32_AND_K, KIND, 0, 0, 0xffff),
        insn(LDX_W_MEM, ACCESS, CTX, 0, 0),
        insn(ALU32_RSH_K, ACCESS, 0, 0, 16),
        insn(LDX_W_MEM, MAJOR, CTX, 4, 0),
        insn(LDX_W_MEM, MINOR, CTX, 8, 0),
    ];
    for rule in policy.exception_rules() {
        program.extend(exception_block(&rule, policy.default_allow));
    }
    program.extend([
        insn(ALU64_MOV_K, RESULT, 0, 0, policy.default_allow as i32),
        insn(JMP_EXIT, 0, 0, 0, 0),
    ]);
    program
}

/// One exception's block. Its conditional jumps skip to the block's end, the next block.
fn exception_block(rule: &Rule, default_allow: bool) -> Vec<Insn> {
    // (opcode, register, operand) of each test that must pass; a jump "to the end" each.
    let mut tests = Vec::new();
    if let Some(kind) = rule.kind {
        tests.push(vec![insn(JMP32_JNE_K, KIND, 0, 0, kind as i32)]);
    }
    let access = rule.access as i32;
    tests.push(if default_allow {
        // A deny exception matches if it holds any access asked.
        vec![
            insn(ALU32_MOV_X, SCRATCH, ACCESS, 0, 0),
            insn(ALU32_AND_K, SCRATCH, 0, 0, access),
            insn(JMP32_JEQ_K, SCRATCH, 0, 0, 0),
        ]
    } else {
        // An allow exception matches if it holds every access asked.
        vec![
            insn(ALU32_MOV_X, SCRATCH, ACCESS, 0, 0),
            insn(ALU32_AND_K, SCRATCH, 0, 0, access),
            insn(JMP32_JNE_X, SCRATCH, ACCESS, 0, 0),
        ]
    });
    for (register, number) in [(MAJOR, rule.major), (MINOR, rule.minor)] {
        if let Some(number) = number {
            tests.push(vec![insn(JMP32_JNE_K, register, 0, 0, number as i32)]);
        }
    }
    let mut block: Vec<Insn> = tests.into_iter().flatten().collect();
    block.extend([
        insn(ALU64_MOV_K, RESULT, 0, 0, rule.allow as i32),
        insn(JMP_EXIT, 0, 0, 0, 0),
    ]);
    let len = block.len();
    for (at, i) in block.iter_mut().enumerate() {
        if matches!(i.code, JMP32_JNE_K | JMP32_JEQ_K | JMP32_JNE_X) {
            i.off = (len - at - 1) as i16;
        }
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `program` on one access, as the kernel would: only the instructions
    /// [`program`] emits are known.
    fn run(program: &[Insn], kind: Kind, major: u32, minor: u32, access: u8) -> bool {
        let ctx = [(u32::from(access) << 16) | kind as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = program[pc];
            let (d, s) = (i.dst as usize, i.src as usize);
            let low = |v: u64| v & 0xffff_ffff;
            let mut jump = false;
            match i.code {
                LDX_W_MEM => {
                    assert_eq!(s, CTX as usize, "loads only from the context");
                    r[d] = u64::from(ctx[i.off as usize / 4]);
                }
                ALU32_AND_K => r[d] = low(r[d]) & low(i.imm as u32 as u64),
                ALU32_RSH_K => r[d] = low(r[d]) >> i.imm,
                ALU32_MOV_X => r[d] = low(r[s]),
                ALU64_MOV_K => r[d] = i.imm as i64 as u64,
                JMP32_JNE_K => jump = low(r[d]) != u64::from(i.imm as u32),
                JMP32_JEQ_K => jump = low(r[d]) == u64::from(i.imm as u32),
                JMP32_JNE_X => jump = low(r[d]) != low(r[s]),
                JMP_EXIT => return r[0] != 0,
                other => panic!("unknown opcode {other:#x}"),
            }
            pc += 1;
            if jump {
                pc += i.off as usize;
            }
        }
    }

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

    /// Every access to a grid of devices: the program agrees with the policy everywhere.
    fn assert_program_matches(policy: &Policy) {
        let program = program(policy);
        for kind in [Kind::Block, Kind::Char] {
            for major in [0, 1, 5, 7, 8, 10, 136, 253, 4095] {
                for minor in [0, 1, 2, 3, 5, 7, 200, 1 << 19] {
                    for access in 1..=7 {
                        assert_eq!(
                            run(&program, kind, major, minor, access),
                            policy.allows(kind, major, minor, access),
                            "{kind:?} {major}:{minor} access {access} under {policy:?}"
                        );
                    }
                }
            }
        }
    }

    fn policy(rules: &[LinuxDeviceCgroup]) -> Policy {
        Policy::of_config(rules).unwrap()
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
        assert_program_matches(&p);
    }

    #[test]
    fn without_a_leading_rule_the_list_starts_from_deny_as_runcs() {
        let p = policy(&[rule(true, C, Some(1), Some(11), "r")]);
        assert!(p.allows(Kind::Char, 1, 11, READ));
        assert!(!p.allows(Kind::Char, 1, 11, WRITE));
        assert!(!p.allows(Kind::Block, 8, 0, READ));
        assert_program_matches(&p);
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
        assert_program_matches(&p);
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
        assert_program_matches(&p);
    }

    #[test]
    fn a_hole_in_a_wildcard_rule_is_refused_not_ignored() {
        let error = Policy::of_config(&[
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
        let text = format!("{:#}", Policy::of_config(&[r.clone()]).unwrap_err());
        assert!(text.contains("linux.resources.devices[0].access"), "{text}");
        r.set_access(Some("rw".into())).set_major(Some(-5));
        let text = format!("{:#}", Policy::of_config(&[r.clone()]).unwrap_err());
        assert!(
            text.contains("linux.resources.devices[0].major -5"),
            "{text}"
        );
        r.set_major(Some(1)).set_typ(Some(LinuxDeviceType::P));
        let text = format!("{:#}", Policy::of_config(&[r]).unwrap_err());
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
