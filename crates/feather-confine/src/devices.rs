//! Device access as cgroups control it: a [`Policy`] (a default and exceptions, reduced from
//! a list of rules the way the v1 `devices` controller and runc's emulator of it do), its
//! lines for the v1 controller, and the `BPF_PROG_TYPE_CGROUP_DEVICE` program that enforces it
//! on a v2 group ([`program`]). feather's VMs get [`vm_policy`]; feather-oci builds an OCI
//! config's policy from the same parts.
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

use feather_sys::bpf::Insn;

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

/// The devices a VM's `/dev` holds (`feather-vm`'s rootfs binds null, zero, full, random,
/// urandom and tty from the host, and mounts a devpts of its own: its `ptmx` and terminals),
/// each for reading and writing; nothing else, not even mknod (a VM holds no `CAP_MKNOD`).
/// A terminal past the 256th (major 137 and up) is refused, as it was by the v1 lines.
const VM_DEVICES: [(u32, Option<u32>); 8] = [
    (1, Some(3)),
    (1, Some(5)),
    (1, Some(7)),
    (1, Some(8)),
    (1, Some(9)),
    (5, Some(0)),
    (5, Some(2)),
    (136, None),
];

/// What a feather VM's processes may open: [`VM_DEVICES`], from "deny everything".
pub fn vm_rules() -> Vec<Rule> {
    VM_DEVICES
        .iter()
        .map(|&(major, minor)| Rule {
            allow: true,
            kind: Some(Kind::Char),
            major: Some(major),
            minor,
            access: READ | WRITE,
        })
        .collect()
}

/// [`vm_rules`] as a policy.
pub fn vm_policy() -> Policy {
    let mut policy = Policy::default();
    for rule in vm_rules() {
        policy
            .apply(rule)
            .expect("allow rules on a deny-all policy never punch holes");
    }
    policy
}

/// [`vm_rules`] as the v1 controller's lines: "deny everything", then each allowed device.
pub fn vm_v1_lines() -> Vec<(&'static str, String)> {
    let mut lines = vec![("devices.deny", "a".to_owned())];
    lines.extend(vm_rules().iter().map(|r| ("devices.allow", r.line())));
    lines
}

impl Rule {
    /// The rule as the v1 controller's `devices.allow` and `devices.deny` take it.
    pub fn line(&self) -> String {
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

/// A rule that would take access away from part of an earlier wildcard rule (cgroup v1 ignores
/// such a rule silently; a policy refuses it).
#[derive(Debug, thiserror::Error)]
#[error("cannot take access away from part of the earlier wildcard rule {wildcard:?} (cgroup v1 would ignore it silently); narrow that rule instead")]
pub struct HoleInWildcard {
    /// The wildcard rule, as a v1 line.
    pub wildcard: String,
}

/// A type and numbers an exception applies to.
type Target = (Kind, Option<u32>, Option<u32>);

/// What a list of rules amounts to: a default, and exceptions to it with their access.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub default_allow: bool,
    exceptions: BTreeMap<Target, u8>,
}

impl Policy {
    /// One more rule, as cgroup v1 (and runc's emulator of it) takes it.
    pub fn apply(&mut self, rule: Rule) -> Result<(), HoleInWildcard> {
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
                return Err(HoleInWildcard {
                    wildcard: exception.line(),
                });
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
/// replacing the one set before (feather-oci's `update`).
pub fn enforce_v2(dir: &Path, policy: &Policy) -> feather_sys::Result<()> {
    let program = feather_sys::bpf::load_device_program(&program(policy), LICENSE, "")?;
    feather_sys::bpf::set_device_program(dir, &program)
}

/// How the VM device program's name begins; [`VM_POLICY_VERSION`] and the first 6 hex digits
/// of the FNV-1a of its instructions follow (see [`feather_sys::bpf::Versioned`]).
pub const VM_PROGRAM_FAMILY: &str = "fvm_v";

/// The version of [`vm_policy`]'s program, to be raised with every change of it (the policy or
/// the assembler): a start detaches the programs of lower versions that the group above every
/// VM's holds, and keeps those of its own or higher versions beside its own (another build's
/// VMs still run under them). `vm_program_tag_is_pinned` fails until it is raised.
pub const VM_POLICY_VERSION: u16 = 1;

fn vm_program_tag() -> String {
    tag_of(&program(&vm_policy()))
}

/// The first 6 hex digits of the FNV-1a of `program`'s instructions.
fn tag_of(program: &[Insn]) -> String {
    let bytes: Vec<u8> = program
        .iter()
        .flat_map(|insn| {
            [insn.code, insn.dst, insn.src]
                .into_iter()
                .chain(insn.off.to_le_bytes())
                .chain(insn.imm.to_le_bytes())
        })
        .collect();
    format!("{:016x}", feather_sys::fnv::fnv1a_64(&bytes))[..6].to_owned()
}

/// The name [`share_vm_program`] gives the program of [`vm_policy`], as the kernel shows it.
pub fn vm_program_name() -> String {
    let tag = vm_program_tag();
    vm_program(&tag).name()
}

fn vm_program(tag: &str) -> feather_sys::bpf::Versioned<'_> {
    feather_sys::bpf::Versioned {
        family: VM_PROGRAM_FAMILY,
        version: VM_POLICY_VERSION,
        tag,
    }
}

/// Makes the v2 group at `dir` (the parent of every VM's group) hold the program of
/// [`vm_policy`], which every VM's group then inherits: loaded and attached once per host,
/// not at every start ([`feather_sys::bpf::share_device_program`]).
pub fn share_vm_program(dir: &Path) -> feather_sys::Result<feather_sys::bpf::Shared> {
    let program = program(&vm_policy());
    let tag = tag_of(&program);
    feather_sys::bpf::share_device_program(dir, vm_program(&tag), &program, LICENSE)
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

    /// The VM program's tag for [`VM_POLICY_VERSION`]. A change of the VM's policy or of the
    /// assembler changes the tag: raise the version, then put the new tag here. (A new
    /// program under the old version would stay beside the old one on every host that ran
    /// the old, and the VMs would get only what both allow.)
    #[test]
    fn vm_program_tag_is_pinned() {
        assert_eq!(
            (VM_POLICY_VERSION, vm_program_tag().as_str()),
            (1, "bdc4d6"),
            "the VM's device program changed: raise VM_POLICY_VERSION and pin the new tag"
        );
        assert!(
            vm_program_name().len() < 16,
            "the kernel's limit for a name"
        );
    }

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
        access: u8,
    ) -> Rule {
        Rule {
            allow,
            kind,
            major,
            minor,
            access,
        }
    }

    fn policy(rules: &[Rule]) -> Policy {
        let mut policy = Policy::default();
        for r in rules {
            policy.apply(*r).unwrap();
        }
        policy
    }

    /// Every access to a grid of devices: the program agrees with the policy everywhere.
    fn assert_program_matches(policy: &Policy) {
        let program = program(policy);
        for kind in [Kind::Block, Kind::Char] {
            for major in [0, 1, 5, 7, 8, 10, 136, 137, 253, 4095] {
                for minor in [0, 1, 2, 3, 5, 7, 8, 9, 200, 1 << 19] {
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

    const C: Option<Kind> = Some(Kind::Char);
    const B: Option<Kind> = Some(Kind::Block);
    const RW: u8 = READ | WRITE;
    const RWM: u8 = READ | WRITE | MKNOD;

    #[test]
    fn a_vms_policy_allows_its_dev_and_nothing_else() {
        let p = vm_policy();
        for (major, minor) in [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 2),
            (136, 7),
        ] {
            assert!(p.allows(Kind::Char, major, minor, RW), "c {major}:{minor}");
            assert!(
                !p.allows(Kind::Char, major, minor, MKNOD),
                "mknod c {major}:{minor}"
            );
        }
        // /dev/mem, /dev/kmsg, /dev/console, /dev/fuse, tun, a disk.
        for (kind, major, minor) in [
            (Kind::Char, 1, 1),
            (Kind::Char, 1, 11),
            (Kind::Char, 5, 1),
            (Kind::Char, 10, 229),
            (Kind::Char, 10, 200),
            (Kind::Block, 8, 0),
        ] {
            assert!(
                !p.allows(kind, major, minor, READ),
                "{kind:?} {major}:{minor}"
            );
        }
        assert_program_matches(&p);
        let lines = vm_v1_lines();
        assert_eq!(lines[0], ("devices.deny", "a".to_owned()));
        assert!(lines.contains(&("devices.allow", "c 136:* rw".to_owned())));
        assert_eq!(lines.len(), 1 + VM_DEVICES.len());
    }

    #[test]
    fn default_deny_exceptions_need_every_access_asked() {
        let p = policy(&[
            rule(false, None, None, None, RWM),
            rule(true, C, Some(10), Some(229), RW),
            rule(true, B, Some(7), None, READ),
            rule(true, C, None, None, MKNOD),
        ]);
        assert!(p.allows(Kind::Block, 7, 3, READ));
        assert!(!p.allows(Kind::Block, 7, 3, RW));
        assert!(p.allows(Kind::Char, 4, 4, MKNOD));
        assert_program_matches(&p);
    }

    #[test]
    fn default_allow_exceptions_refuse_any_overlapping_access() {
        let p = policy(&[
            rule(true, None, None, None, RWM),
            rule(false, B, Some(8), None, WRITE),
            rule(false, C, Some(1), Some(1), RWM),
        ]);
        assert!(p.allows(Kind::Block, 8, 0, READ));
        assert!(!p.allows(Kind::Block, 8, 0, RW));
        assert!(!p.allows(Kind::Char, 1, 1, READ));
        assert_program_matches(&p);
    }

    #[test]
    fn a_hole_in_a_wildcard_rule_is_refused_naming_the_wildcard() {
        let mut p = policy(&[rule(true, C, Some(4), None, RW)]);
        let error = p
            .apply(rule(false, C, Some(4), Some(1), WRITE))
            .unwrap_err();
        assert_eq!(error.wildcard, "c 4:* rw");
    }
}
