//! The settings systemd turns into checks of a call's arguments (`src/shared/seccomp-util.c`),
//! made the same way here as seccomp filters of the unit's own:
//!
//! - `RestrictNamespaces=`: `unshare` and `clone` with the flag of a refused namespace type,
//!   and `setns` into one (or with type 0, "any") fail with EPERM; `clone3`, whose flags are in
//!   memory where seccomp cannot read them, fails with ENOSYS, so the C library falls back to
//!   `clone`.
//! - `RestrictRealtime=`: `sched_setscheduler` with a policy other than `SCHED_OTHER`,
//!   `SCHED_BATCH` and `SCHED_IDLE` fails with EPERM (`sched_setattr` takes a structure, which
//!   systemd does not check either).
//! - `RestrictSUIDSGID=`: making a file set-user-ID or set-group-ID (`chmod`, `fchmod`,
//!   `fchmodat`, `fchmodat2`, `mkdir`, `mkdirat`, `mknod`, `mknodat`, `creat`, and `open` and
//!   `openat` with `O_CREAT` or `O_TMPFILE`) fails with EPERM; `openat2`, whose mode is in
//!   memory, fails with ENOSYS so the C library falls back to `openat`.
//! - `MemoryDenyWriteExecute=`: the kernel's own `PR_SET_MDWE` where it has it (Linux 6.3),
//!   as systemd prefers it; else a filter: `mmap` writable and executable, `mprotect` and
//!   `pkey_mprotect` to executable, `shmat` with `SHM_EXEC` fail with EPERM.
//! - `LockPersonality=`: `personality` with anything but the manager's own (`PER_LINUX`)
//!   fails with EPERM.
//! - `SystemCallArchitectures=native`: a call of another ABI of the machine (i386's `int 0x80`,
//!   x32 numbers on x86_64) ends the process.

use std::collections::BTreeMap;
use std::str::FromStr;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule,
};

use crate::unit::{all_namespaces, Restrictions, NAMESPACE_TYPES};
use feather_sys::seccomp::Instruction;

/// A setting that could not be made into a filter.
#[derive(Debug, thiserror::Error)]
#[error("{setting}=: {problem}")]
pub struct RestrictionError {
    pub setting: &'static str,
    pub problem: String,
}

/// What a unit's restrictions come to in its process.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    /// Seccomp filters, installed after no_new_privs.
    pub filters: Vec<Vec<Instruction>>,
    /// `MemoryDenyWriteExecute=` by `prctl(PR_SET_MDWE)`.
    pub mdwe: bool,
}

/// The filters (and `PR_SET_MDWE`) for `restrictions`; `kernel_mdwe` says whether the running
/// kernel has `PR_SET_MDWE`.
pub fn apply(restrictions: &Restrictions, kernel_mdwe: bool) -> Result<Applied, RestrictionError> {
    let (refusals, mdwe) = refusals(restrictions, kernel_mdwe)?;
    let mut filters = refusals
        .into_iter()
        .map(|refusal| refusal.compile(true))
        .collect::<Result<Vec<_>, _>>()?;
    if restrictions.native_architecture_only {
        filters.push(native_architecture_only());
    }
    Ok(Applied { filters, mdwe })
}

/// The rules of the filters `apply` compiles (all but `SystemCallArchitectures=`'s, which is
/// written out), in their order, and whether `PR_SET_MDWE` does `MemoryDenyWriteExecute=`.
fn refusals(
    restrictions: &Restrictions,
    kernel_mdwe: bool,
) -> Result<(Vec<Refusal>, bool), RestrictionError> {
    let mut refusals = Vec::new();
    let mut mdwe = false;
    if let Some(allowed) = restrictions.namespaces {
        refusals.extend(namespaces(allowed)?);
    }
    if restrictions.realtime {
        refusals.push(realtime()?);
    }
    if restrictions.suid_sgid {
        refusals.extend(suid_sgid()?);
    }
    if restrictions.memory_deny_write_execute {
        if kernel_mdwe {
            mdwe = true;
        } else {
            refusals.push(write_execute()?);
        }
    }
    if restrictions.lock_personality {
        refusals.push(personality()?);
    }
    Ok((refusals, mdwe))
}

/// Rules for calls by name; a name this architecture lacks (`open` on aarch64) is left out,
/// as systemd leaves it out.
type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn add(rules: &mut Rules, call: &str, rule: Option<SeccompRule>) {
    let number = match call {
        // Linux 6.6; one number on every architecture since 5.1.
        "fchmodat2" => 452,
        _ => match syscalls::Sysno::from_str(call) {
            Ok(sysno) => sysno.id() as i64,
            Err(_) => return,
        },
    };
    let entry = rules.entry(number).or_default();
    // An empty list of rules matches whatever the arguments.
    entry.extend(rule);
}

/// A condition on the low 32 bits of argument `index` (the arguments checked here are ints,
/// modes and flags the kernel reads as 32-bit values).
fn arg(
    setting: &'static str,
    index: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, RestrictionError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value).map_err(|problem| {
        RestrictionError {
            setting,
            problem: problem.to_string(),
        }
    })
}

/// Argument `index` has all of `bits`.
fn has(setting: &'static str, index: u8, bits: u64) -> Result<SeccompCondition, RestrictionError> {
    arg(setting, index, SeccompCmpOp::MaskedEq(bits), bits)
}

fn rule(
    setting: &'static str,
    conditions: Vec<SeccompCondition>,
) -> Result<Option<SeccompRule>, RestrictionError> {
    SeccompRule::new(conditions)
        .map(Some)
        .map_err(|problem| RestrictionError {
            setting,
            problem: problem.to_string(),
        })
}

/// A filter that answers `errno` to the calls `rules` match and lets every other pass.
fn refuse(setting: &'static str, rules: Rules, errno: i32) -> Result<Refusal, RestrictionError> {
    Ok(Refusal {
        setting,
        rules,
        errno,
    })
}

/// One filter of a setting, before it is compiled: its rules, under native numbers.
struct Refusal {
    setting: &'static str,
    rules: Rules,
    errno: i32,
}

impl Refusal {
    /// The program for this machine's architecture. On x86_64 the same calls by their x32
    /// numbers are matched too: with `fold_x32`, by one instruction that clears the number's
    /// x32 bit before the rules (feather_sys::seccomp::fold_x32, as the VM's own filters do:
    /// half the instructions), and x32's own numbers of a call (`ioctl`'s 514) by its rules
    /// copied there (feather_sys::seccomp::with_x32_twins); without it, by every rule written
    /// again under the x32 number (as before 2026-12-05; the tests compare the two).
    fn compile(self, fold_x32: bool) -> Result<Vec<Instruction>, RestrictionError> {
        let setting = self.setting;
        let failed = |problem: BackendError| RestrictionError {
            setting,
            problem: problem.to_string(),
        };
        let mut rules = self.rules;
        if fold_x32 {
            // x32's own numbers of calls that have one (none of the calls above do today:
            // the tests check that folding changed no answer here).
            rules = feather_sys::seccomp::with_x32_twins(rules);
        }
        #[cfg(target_arch = "x86_64")]
        if !fold_x32 {
            let x32_bit = i64::from(feather_sys::seccomp::X32_SYSCALL_BIT);
            let x32: Vec<_> = rules
                .iter()
                .map(|(number, rules)| (number | x32_bit, rules.clone()))
                .collect();
            rules.extend(x32);
        }
        let arch = std::env::consts::ARCH.try_into().map_err(failed)?;
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(self.errno as u32),
            arch,
        )
        .map_err(failed)?;
        let program: BpfProgram = filter.try_into().map_err(failed)?;
        let program = program.into_iter().map(instruction).collect();
        if !fold_x32 {
            return Ok(program);
        }
        feather_sys::seccomp::fold_x32(program)
            .map_err(|problem| RestrictionError { setting, problem })
    }
}

fn instruction(i: seccompiler::sock_filter) -> Instruction {
    Instruction {
        code: i.code,
        jt: i.jt,
        jf: i.jf,
        k: i.k,
    }
}

/// `RestrictNamespaces=`: `allowed` are the `CLONE_NEW*` flags still allowed.
fn namespaces(allowed: u64) -> Result<Vec<Refusal>, RestrictionError> {
    const SETTING: &str = "RestrictNamespaces";
    if allowed & all_namespaces() == all_namespaces() {
        return Ok(Vec::new());
    }
    let mut clone3 = Rules::new();
    add(&mut clone3, "clone3", None);
    let mut rules = Rules::new();
    if allowed & all_namespaces() == 0 {
        add(&mut rules, "setns", None);
    } else {
        // setns with type 0 joins whatever the descriptor is.
        let any = arg(SETTING, 1, SeccompCmpOp::Eq, 0)?;
        add(&mut rules, "setns", rule(SETTING, vec![any])?);
    }
    for (_, flag) in NAMESPACE_TYPES {
        if allowed & flag != 0 {
            continue;
        }
        add(
            &mut rules,
            "unshare",
            rule(SETTING, vec![has(SETTING, 0, flag)?])?,
        );
        // clone's flags are its first argument on x86_64 and aarch64 alike.
        add(
            &mut rules,
            "clone",
            rule(SETTING, vec![has(SETTING, 0, flag)?])?,
        );
        if allowed & all_namespaces() != 0 {
            add(
                &mut rules,
                "setns",
                rule(SETTING, vec![has(SETTING, 1, flag)?])?,
            );
        }
    }
    Ok(vec![
        refuse(SETTING, clone3, libc::ENOSYS)?,
        refuse(SETTING, rules, libc::EPERM)?,
    ])
}

/// `RestrictRealtime=`: every scheduling policy but `SCHED_OTHER` (0), `SCHED_BATCH` (3) and
/// `SCHED_IDLE` (5), by number, as systemd lists them: below the highest allowed one each
/// refused policy, above it everything.
fn realtime() -> Result<Refusal, RestrictionError> {
    const SETTING: &str = "RestrictRealtime";
    let allowed = [libc::SCHED_OTHER, libc::SCHED_BATCH, libc::SCHED_IDLE];
    let highest = *allowed.iter().max().unwrap_or(&0);
    let mut rules = Rules::new();
    for policy in (0..highest).filter(|p| !allowed.contains(p)) {
        let equal = arg(SETTING, 1, SeccompCmpOp::Eq, policy as u64)?;
        add(
            &mut rules,
            "sched_setscheduler",
            rule(SETTING, vec![equal])?,
        );
    }
    let above = arg(SETTING, 1, SeccompCmpOp::Gt, highest as u64)?;
    add(
        &mut rules,
        "sched_setscheduler",
        rule(SETTING, vec![above])?,
    );
    refuse(SETTING, rules, libc::EPERM)
}

/// `RestrictSUIDSGID=`: the calls that give a file a mode, with `S_ISUID` or `S_ISGID` in it.
fn suid_sgid() -> Result<Vec<Refusal>, RestrictionError> {
    const SETTING: &str = "RestrictSUIDSGID";
    let mut rules = Rules::new();
    for bit in [libc::S_ISUID, libc::S_ISGID] {
        let bit = bit as u64;
        for (call, mode) in [
            ("chmod", 1),
            ("fchmod", 1),
            ("fchmodat", 2),
            ("fchmodat2", 2),
            ("mkdir", 1),
            ("mkdirat", 2),
            ("mknod", 1),
            ("mknodat", 2),
            ("creat", 1),
        ] {
            add(
                &mut rules,
                call,
                rule(SETTING, vec![has(SETTING, mode, bit)?])?,
            );
        }
        // open and openat use the mode only to create a file.
        for creating in [libc::O_CREAT as u64, libc::O_TMPFILE as u64] {
            for (call, flags) in [("open", 1), ("openat", 2)] {
                let conditions = vec![
                    has(SETTING, flags, creating)?,
                    has(SETTING, flags + 1, bit)?,
                ];
                add(&mut rules, call, rule(SETTING, conditions)?);
            }
        }
    }
    let mut openat2 = Rules::new();
    add(&mut openat2, "openat2", None);
    Ok(vec![
        refuse(SETTING, openat2, libc::ENOSYS)?,
        refuse(SETTING, rules, libc::EPERM)?,
    ])
}

/// `MemoryDenyWriteExecute=` where the kernel lacks `PR_SET_MDWE`.
fn write_execute() -> Result<Refusal, RestrictionError> {
    const SETTING: &str = "MemoryDenyWriteExecute";
    let write_exec = (libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let exec = libc::PROT_EXEC as u64;
    let mut rules = Rules::new();
    add(
        &mut rules,
        "mmap",
        rule(SETTING, vec![has(SETTING, 2, write_exec)?])?,
    );
    add(
        &mut rules,
        "mmap2",
        rule(SETTING, vec![has(SETTING, 2, write_exec)?])?,
    );
    add(
        &mut rules,
        "mprotect",
        rule(SETTING, vec![has(SETTING, 2, exec)?])?,
    );
    add(
        &mut rules,
        "pkey_mprotect",
        rule(SETTING, vec![has(SETTING, 2, exec)?])?,
    );
    add(
        &mut rules,
        "shmat",
        rule(SETTING, vec![has(SETTING, 2, libc::SHM_EXEC as u64)?])?,
    );
    refuse(SETTING, rules, libc::EPERM)
}

/// `LockPersonality=`: the manager runs as a native process (`PER_LINUX`, 0), which is what
/// systemd locks a unit to when it does not set `Personality=` (not read here).
fn personality() -> Result<Refusal, RestrictionError> {
    const SETTING: &str = "LockPersonality";
    const PER_LINUX: u64 = 0;
    let mut rules = Rules::new();
    let other = arg(SETTING, 0, SeccompCmpOp::Ne, PER_LINUX)?;
    add(&mut rules, "personality", rule(SETTING, vec![other])?);
    refuse(SETTING, rules, libc::EPERM)
}

/// The audit architecture of this machine's native calls.
#[cfg(target_arch = "x86_64")]
const NATIVE_AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const NATIVE_AUDIT_ARCH: u32 = 0xc000_00b7;

/// `SystemCallArchitectures=native`: a call whose architecture is not the native one, or (on
/// x86_64) whose number carries the x32 bit, ends the process. Written out, since seccompiler
/// has no test on the number's bits; seven instructions.
fn native_architecture_only() -> Vec<Instruction> {
    // BPF_LD | BPF_W | BPF_ABS, BPF_JMP | BPF_JEQ | BPF_K, BPF_JMP | BPF_JSET | BPF_K,
    // BPF_RET | BPF_K (linux/bpf_common.h).
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JSET_K: u16 = 0x45;
    const RET_K: u16 = 0x06;
    // struct seccomp_data: nr at 0, arch at 4.
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    #[cfg(target_arch = "x86_64")]
    const FOREIGN_BITS: u32 = 0x4000_0000;
    #[cfg(not(target_arch = "x86_64"))]
    const FOREIGN_BITS: u32 = 0;
    let op = |code, k, jt, jf| Instruction { code, jt, jf, k };
    vec![
        op(LD_W_ABS, ARCH, 0, 0),
        op(JEQ_K, NATIVE_AUDIT_ARCH, 1, 0),
        op(RET_K, libc::SECCOMP_RET_KILL_PROCESS, 0, 0),
        op(LD_W_ABS, NR, 0, 0),
        op(JSET_K, FOREIGN_BITS, 0, 1),
        op(RET_K, libc::SECCOMP_RET_KILL_PROCESS, 0, 0),
        op(RET_K, libc::SECCOMP_RET_ALLOW, 0, 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every filter of every setting answers each call the same with the x32 bit folded as
    /// with the rules written twice (before 2026-12-05), run in feather_sys's interpreter, and
    /// x32's own numbers (512–547) as their native twins (no setting's rules name one of
    /// those twins, so this held before x32's own numbers were given their twins' rules):
    /// every number below 1024, each also with the x32 bit,
    /// bit 31 or both, under x86_64's and i386's architectures; on the calls with rules, each
    /// of the values the rules compare with (and with high bits) in each argument, and pairs.
    /// Also that folding shortens them.
    #[test]
    fn folding_x32_changes_no_answer() {
        let all = Restrictions {
            namespaces: Some(libc::CLONE_NEWUSER as u64),
            realtime: true,
            suid_sgid: true,
            memory_deny_write_execute: true,
            lock_personality: true,
            native_architecture_only: true,
        };
        let none_allowed = Restrictions {
            namespaces: Some(0),
            ..Restrictions::default()
        };
        let mut values: Vec<u64> = vec![0, 1, 2, 3, 5, 6, 7, u64::MAX];
        values.extend(NAMESPACE_TYPES.iter().map(|(_, flag)| *flag));
        values.extend([
            libc::S_ISUID as u64,
            libc::S_ISGID as u64,
            0o4755,
            libc::O_CREAT as u64,
            libc::O_TMPFILE as u64,
            libc::O_CREAT as u64 | libc::O_WRONLY as u64,
            (libc::PROT_WRITE | libc::PROT_EXEC) as u64,
            libc::PROT_EXEC as u64,
            libc::PROT_READ as u64,
            libc::SHM_EXEC as u64,
        ]);
        let high: Vec<u64> = values.iter().map(|v| v | 0xffff_ffff_0000_0000).collect();
        values.extend(high);
        let mut patterns = vec![[0u64; 6], [u64::MAX; 6]];
        for index in 0..4 {
            for &value in &values {
                let mut args = [0; 6];
                args[index] = value;
                patterns.push(args);
            }
        }
        for first in 0..4 {
            for &a in &values[..values.len() / 2] {
                for &b in &values[..values.len() / 2] {
                    let mut args = [0; 6];
                    args[first] = a;
                    args[(first + 1) % 4] = b;
                    patterns.push(args);
                }
            }
        }
        let few = [[0u64; 6], [u64::MAX; 6], [1, 2, 3, 4, 5, 6]];
        let mut held = Vec::new();
        for restrictions in [all, none_allowed] {
            let (refusals, _) = refusals(&restrictions, false).unwrap();
            for refusal in refusals {
                let setting = refusal.setting;
                let checked: Vec<u32> = refusal.rules.keys().map(|&n| n as u32).collect();
                let old = Refusal {
                    setting,
                    rules: refusal.rules.clone(),
                    errno: refusal.errno,
                }
                .compile(false)
                .unwrap();
                held.push((setting, feather_sys::seccomp::fingerprint(&old)));
                let new = refusal.compile(true).unwrap();
                #[cfg(target_arch = "x86_64")]
                assert!(
                    new.len() < old.len(),
                    "{setting}: {} -> {}",
                    old.len(),
                    new.len()
                );
                let mut denied = 0;
                for arch in [0xc000_003e, 0x4000_0003] {
                    for native in 0..1024u32 {
                        for high in [0, 0x4000_0000, 0x8000_0000, 0xc000_0000] {
                            let nr = native | high;
                            // x32's own numbers are answered as their native twins.
                            let twin = match feather_sys::seccomp::native_twin(nr) {
                                Some(twin) if arch == 0xc000_003e => twin,
                                _ => nr,
                            };
                            let args: &[[u64; 6]] = if checked.contains(&(twin & 0x3fff_ffff)) {
                                &patterns
                            } else {
                                &few
                            };
                            for &args in args {
                                let answer = feather_sys::seccomp::evaluate(&old, arch, twin, args);
                                assert!(answer.is_some(), "{setting}: the interpreter answers");
                                assert_eq!(
                                    feather_sys::seccomp::evaluate(&new, arch, nr, args),
                                    answer,
                                    "{setting}: arch {arch:#x}, nr {nr:#x}, args {args:x?}"
                                );
                                denied += usize::from(answer != Some(libc::SECCOMP_RET_ALLOW));
                            }
                        }
                    }
                }
                assert!(denied > 0, "{setting}");
            }
        }
        // The rules written twice are the programs of the build before folding (bab0879,
        // compared byte for byte when folding landed): pinned, so that a change to
        // `compile(false)` cannot make the comparison above one of the new code with itself.
        let previous = [
            ("RestrictNamespaces", (15, 0xc8c9_e691_e6e8_55d9)),
            ("RestrictNamespaces", (279, 0xb588_3e54_c307_2755)),
            ("RestrictRealtime", (49, 0xbd9e_5722_89b6_f931)),
            ("RestrictSUIDSGID", (15, 0x47ee_ed45_5a03_b25d)),
            ("RestrictSUIDSGID", (409, 0x59c7_3fb7_31c2_6441)),
            ("MemoryDenyWriteExecute", (69, 0x6272_a862_6c47_61c9)),
            ("LockPersonality", (19, 0x1fd7_03be_0792_fd91)),
            ("RestrictNamespaces", (15, 0xc8c9_e691_e6e8_55d9)),
            ("RestrictNamespaces", (215, 0x4e91_7b69_14fc_4ccd)),
        ];
        assert_eq!(held, previous);
    }

    #[test]
    fn every_restriction_compiles_for_this_machine() {
        let all = Restrictions {
            namespaces: Some(libc::CLONE_NEWUSER as u64),
            realtime: true,
            suid_sgid: true,
            memory_deny_write_execute: true,
            lock_personality: true,
            native_architecture_only: true,
        };
        let applied = apply(&all, false).unwrap();
        // clone3, the namespace calls, realtime, openat2, the modes, W^X, personality, the
        // architecture.
        assert_eq!(applied.filters.len(), 8);
        assert!(!applied.mdwe);
        let with_kernel = apply(&all, true).unwrap();
        assert!(with_kernel.mdwe);
        assert_eq!(with_kernel.filters.len(), 7);
        assert!(apply(&Restrictions::default(), true)
            .unwrap()
            .filters
            .is_empty());
    }

    /// Runs an i386 `getpid` (`int 0x80`) from a 64-bit Python under `filters`; the VM's own
    /// filter, which ends such calls too, is not there (the test runs on the host).
    #[cfg(target_arch = "x86_64")]
    fn i386_call_under(filters: Vec<Vec<Instruction>>) -> std::process::Output {
        const INT80: &str = "import ctypes, mmap\n\
            buf = mmap.mmap(-1, 4096, prot=7)\n\
            buf.write(b'\\xb8\\x14\\x00\\x00\\x00\\xcd\\x80\\xc3')\n\
            address = ctypes.addressof(ctypes.c_char.from_buffer(buf))\n\
            print('i386 call returned', ctypes.CFUNCTYPE(ctypes.c_int)(address)() > 0)\n";
        let mut command = std::process::Command::new("python3");
        command.args(["-c", INT80]);
        crate::raw::install(
            &mut command,
            crate::raw::ProcessSetup {
                seccomp: filters,
                ..crate::raw::ProcessSetup::plain()
            },
        );
        command.output().expect("python3 runs")
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn native_architecture_only_ends_an_i386_call() {
        use std::os::unix::process::ExitStatusExt;
        let free = i386_call_under(Vec::new());
        assert_eq!(
            String::from_utf8_lossy(&free.stdout),
            "i386 call returned True\n",
            "{free:?}"
        );
        let native = i386_call_under(vec![native_architecture_only()]);
        assert_eq!(native.status.signal(), Some(libc::SIGSYS), "{native:?}");
        assert!(native.stdout.is_empty(), "{native:?}");
    }

    #[test]
    fn namespaces_all_allowed_add_no_filter() {
        assert!(namespaces(all_namespaces()).unwrap().is_empty());
        assert_eq!(namespaces(0).unwrap().len(), 2);
    }
}
