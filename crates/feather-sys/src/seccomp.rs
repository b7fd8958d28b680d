//! Installing a seccomp filter that feather-confine has compiled.

use std::collections::BTreeMap;

use nix::libc;

use crate::raw;
use crate::{Context, Result};

pub use nix::libc::sock_filter as Instruction;

/// A program seccompiler compiled, as the instructions the kernel takes (seccompiler has a
/// `sock_filter` of its own, field for field the kernel's).
pub fn from_seccompiler(program: seccompiler::BpfProgram) -> Vec<Instruction> {
    program
        .into_iter()
        .map(|i| Instruction {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect()
}

/// Installs `program` on the calling thread; every process it starts inherits it. The caller
/// must hold CAP_SYS_ADMIN (or have set no_new_privs), and must be single-threaded, since only
/// the calling thread is filtered.
pub fn install_filter(program: &[Instruction]) -> Result<()> {
    raw::seccomp_set_mode_filter(program)
        .ctx("seccomp(SECCOMP_SET_MODE_FILTER)", "VM syscall filter")
}

/// x32 system calls: x86_64's numbers with this bit set, under x86_64's audit architecture.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// x32's own calls and their native twins: (x32's number without [`X32_SYSCALL_BIT`], the
/// x86_64 call of the same name). The calls whose arguments point to structures x32 lays out
/// differently (32-bit pointers and longs: `iovec`s, `msghdr`s, `siginfo`s, `kexec_segment`s)
/// have numbers of their own there, 512–547 (the kernel's
/// arch/x86/entry/syscalls/syscall_64.tbl, abi "x32"), and x32 has no call under their native
/// numbers (abi "64": ENOSYS). Each takes its arguments in its twin's registers and order, so
/// a rule on the twin's arguments reads the same values.
#[cfg(target_arch = "x86_64")]
pub const X32_TWINS: [(u32, libc::c_long); 36] = [
    (512, libc::SYS_rt_sigaction),
    (513, libc::SYS_rt_sigreturn),
    (514, libc::SYS_ioctl),
    (515, libc::SYS_readv),
    (516, libc::SYS_writev),
    (517, libc::SYS_recvfrom),
    (518, libc::SYS_sendmsg),
    (519, libc::SYS_recvmsg),
    (520, libc::SYS_execve),
    (521, libc::SYS_ptrace),
    (522, libc::SYS_rt_sigpending),
    (523, libc::SYS_rt_sigtimedwait),
    (524, libc::SYS_rt_sigqueueinfo),
    (525, libc::SYS_sigaltstack),
    (526, libc::SYS_timer_create),
    (527, libc::SYS_mq_notify),
    (528, libc::SYS_kexec_load),
    (529, libc::SYS_waitid),
    (530, libc::SYS_set_robust_list),
    (531, libc::SYS_get_robust_list),
    (532, libc::SYS_vmsplice),
    (533, libc::SYS_move_pages),
    (534, libc::SYS_preadv),
    (535, libc::SYS_pwritev),
    (536, libc::SYS_rt_tgsigqueueinfo),
    (537, libc::SYS_recvmmsg),
    (538, libc::SYS_sendmmsg),
    (539, libc::SYS_process_vm_readv),
    (540, libc::SYS_process_vm_writev),
    (541, libc::SYS_setsockopt),
    (542, libc::SYS_getsockopt),
    (543, libc::SYS_io_setup),
    (544, libc::SYS_io_submit),
    (545, libc::SYS_execveat),
    (546, libc::SYS_preadv2),
    (547, libc::SYS_pwritev2),
];

/// No other architecture feather builds for has a second ABI under the same audit
/// architecture.
#[cfg(not(target_arch = "x86_64"))]
pub const X32_TWINS: [(u32, libc::c_long); 0] = [];

/// The native twin of an x86_64 call number that is, with or without the x32 bit, one of
/// x32's own (`514|X32_SYSCALL_BIT` and 514: `ioctl`'s 16); None for any other, and on other
/// architectures.
pub fn native_twin(nr: u32) -> Option<u32> {
    let cleared = nr & !X32_SYSCALL_BIT;
    X32_TWINS
        .iter()
        .find(|&&(x32, _)| x32 == cleared)
        .map(|&(_, native)| native as u32)
}

/// `rules`, keyed by native call numbers, with each call that has an x32 number of its own
/// ([`X32_TWINS`]: `ioctl` 514, `kexec_load` 528, …) given the same rules under that number
/// without the x32 bit — what [`fold_x32`] makes of the x32 call's number — so that, with the
/// fold, x32's `ioctl(TIOCSTI)` is answered as x86_64's is. (A native call numbered 512–547,
/// which today's kernels answer ENOSYS, meets those rules too.) On other architectures
/// `rules` as they are.
///
/// # Panics
/// If a rule is under a number with the x32 bit (or a negative one): after the fold no call
/// could meet it, so such a rule would be silently dead. Rules come from feather's own tables.
pub fn with_x32_twins<R: Clone>(mut rules: BTreeMap<i64, Vec<R>>) -> BTreeMap<i64, Vec<R>> {
    let native = 0..i64::from(X32_SYSCALL_BIT);
    if let Some(number) = rules.keys().find(|number| !native.contains(number)) {
        panic!("seccomp rule under call number {number:#x}: rules must be under native numbers");
    }
    for (x32, native) in X32_TWINS {
        if let Some(twin) = rules.get(&native).cloned() {
            rules.insert(i64::from(x32), twin);
        }
    }
    rules
}

// Classic BPF (linux/bpf_common.h, linux/seccomp.h): the instructions seccompiler emits and
// the fields of `struct seccomp_data` they load.
const LD_W_ABS: u16 = 0x20;
const ALU_AND_K: u16 = 0x54;
const JMP_CLASS: u16 = 0x05;
const JA: u16 = 0x05;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;
const SECCOMP_DATA_NR: u32 = 0;

/// Where seccompiler's program loads the call's number: after its architecture check (load
/// the architecture, jump over the next if it is this machine's, kill the process).
const NUMBER_LOAD: usize = 3;

/// Makes the x32 calls of a seccompiler `program` whose rules are all under native numbers
/// meet their native twins' rules: right after the number is loaded, one instruction clears
/// the x32 bit (`A &= !X32_SYSCALL_BIT`), and the comparisons that follow see the native
/// number. On other architectures the program as it is.
///
/// Why the answers are those of the same rules written twice (under n and n|X32_SYSCALL_BIT,
/// as seccompiler's users do), for every number: the rules' numbers are native (below 2^30),
/// so the cleared number equals a rule's number n exactly when the call's number is n or
/// n|X32_SYSCALL_BIT, the two that the duplicated rules give n's rules to; any other number
/// matches no rule either way. x32's own numbers (512–547: its `ioctl` is 514) clear to
/// 512–547, where x86_64 has no native call: [`with_x32_twins`] gives them their twins'
/// rules there (without it they match no rule, in either layout). The architecture check stays
/// first: an i386 call is killed before its number is read. The instruction is
/// unconditional; cBPF jumps only forward and none of the four instructions before it jumps
/// past it (checked), so no offset moves. The kernel's per-number cache of always-allowed
/// calls (Linux 5.11) emulates `BPF_ALU|BPF_AND|BPF_K`, so allowed calls still skip the
/// filter.
pub fn fold_x32(program: Vec<Instruction>) -> std::result::Result<Vec<Instruction>, String> {
    if !cfg!(target_arch = "x86_64") {
        return Ok(program);
    }
    let Some(load) = program.get(NUMBER_LOAD) else {
        return Err("a program shorter than its architecture check".into());
    };
    if (load.code, load.k) != (LD_W_ABS, SECCOMP_DATA_NR) {
        // A filter of no rules: the architecture check, then its one answer.
        return match program.len() {
            4 => Ok(program),
            _ => Err(
                "the program does not load the call's number after the architecture check".into(),
            ),
        };
    }
    for (at, before) in program[..=NUMBER_LOAD].iter().enumerate() {
        if before.code & 0x07 != JMP_CLASS {
            continue;
        }
        let furthest = match before.code {
            JA => before.k as usize,
            _ => usize::from(before.jt.max(before.jf)),
        };
        if at + 1 + furthest > NUMBER_LOAD {
            return Err("the architecture check jumps past the load of the call's number".into());
        }
    }
    // Every later comparison of call numbers must see the cleared number: a second load of it
    // (which seccompiler does not make today) would compare the x32 bit again, past the fold.
    if program[NUMBER_LOAD + 1..]
        .iter()
        .any(|later| (later.code, later.k) == (LD_W_ABS, SECCOMP_DATA_NR))
    {
        return Err("the program loads the call's number a second time".into());
    }
    let clear = Instruction {
        code: ALU_AND_K,
        jt: 0,
        jf: 0,
        k: !X32_SYSCALL_BIT,
    };
    let mut folded = program;
    folded.insert(NUMBER_LOAD + 1, clear);
    Ok(folded)
}

/// A program's instructions laid out as the kernel reads them (`struct sock_filter`: code, jt,
/// jf, k, in this machine's byte order): what a process outside Rust hands to `seccomp(2)`.
pub fn as_bytes(program: &[Instruction]) -> Vec<u8> {
    program
        .iter()
        .flat_map(|i| {
            let mut bytes = i.code.to_ne_bytes().to_vec();
            bytes.extend([i.jt, i.jf]);
            bytes.extend(i.k.to_ne_bytes());
            bytes
        })
        .collect()
}

/// A program's length and the FNV-1a hash of its instructions as the kernel reads them, for
/// tests that pin a program to an earlier build's (the pins are x86_64's, little-endian).
pub fn fingerprint(program: &[Instruction]) -> (usize, u64) {
    (program.len(), crate::fnv::fnv1a_64(&as_bytes(program)))
}

/// The answer of `program` to one call (its audit architecture, number and arguments, laid
/// out as the kernel's `struct seccomp_data` on a little-endian machine), computed as the
/// kernel would for the instructions seccompiler emits and [`fold_x32`]'s AND; None at any
/// other instruction, a load outside the data, or a program that runs off its end. Tests
/// compare programs with it, call by call.
pub fn evaluate(program: &[Instruction], arch: u32, nr: u32, args: [u64; 6]) -> Option<u32> {
    let mut data = [0u8; 64];
    data[..4].copy_from_slice(&nr.to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (index, arg) in args.iter().enumerate() {
        data[16 + 8 * index..24 + 8 * index].copy_from_slice(&arg.to_le_bytes());
    }
    let mut a = 0u32;
    let mut pc = 0usize;
    loop {
        let i = program.get(pc)?;
        pc += 1;
        let jump = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
        match i.code {
            LD_W_ABS => {
                let at = i.k as usize;
                let word = data.get(at..at + 4).filter(|_| at.is_multiple_of(4))?;
                a = u32::from_le_bytes(word.try_into().ok()?);
            }
            ALU_AND_K => a &= i.k,
            JA => pc += i.k as usize,
            JEQ_K => pc += jump(a == i.k),
            JGT_K => pc += jump(a > i.k),
            JGE_K => pc += jump(a >= i.k),
            JSET_K => pc += jump(a & i.k != 0),
            RET_K => return Some(i.k),
            _ => return None,
        }
    }
}

/// The programs of every seccomp filter thread `tid` runs under, the first installed first,
/// read as its tracer for the moment. The thread must be stopped (a tree CRIU restored and
/// left stopped) or it is stopped for the read; it is left as it was. The caller needs
/// CAP_SYS_ADMIN and CAP_SYS_PTRACE, and no filter of its own.
pub fn filters_of(tid: libc::pid_t) -> Result<Vec<Vec<Instruction>>> {
    let what = format!("thread {tid}");
    raw::ptrace_seize(tid).ctx("ptrace(PTRACE_SEIZE)", &what)?;
    let read = read_filters(tid);
    let detached = raw::ptrace_detach(tid).ctx("ptrace(PTRACE_DETACH)", &what);
    let filters = read?;
    detached?;
    Ok(filters)
}

fn read_filters(tid: libc::pid_t) -> Result<Vec<Vec<Instruction>>> {
    let what = format!("thread {tid}");
    // A thread stopped before the seize is in its tracer's stop once the seize returns; one
    // that ran is stopped here (ESRCH: not in a ptrace stop).
    let first = match raw::ptrace_seccomp_filter(tid, 0) {
        Err(nix::errno::Errno::ESRCH) => {
            raw::ptrace_interrupt(tid).ctx("ptrace(PTRACE_INTERRUPT)", &what)?;
            nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(tid),
                Some(nix::sys::wait::WaitPidFlag::__WALL),
            )
            .ctx("waitpid", &what)?;
            raw::ptrace_seccomp_filter(tid, 0)
        }
        other => other,
    };
    let mut filters = Vec::new();
    let mut next = first;
    // Index 0 is the first installed (the kernel counts back from the last by the total);
    // ENOENT past the last installed; EINVAL when there is no filter.
    loop {
        match next {
            Ok(program) => filters.push(program),
            Err(nix::errno::Errno::ENOENT | nix::errno::Errno::EINVAL) => break,
            Err(e) => return Err(e).ctx("ptrace(PTRACE_SECCOMP_GET_FILTER)", &what),
        }
        next = raw::ptrace_seccomp_filter(tid, filters.len() as u64);
    }
    Ok(filters)
}

/// The seccomp mode of the calling process: 0 none, 1 strict, 2 filter.
pub fn mode() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Seccomp:"))?
        .trim()
        .parse()
        .ok()
}

/// The Landlock ABI version of the running kernel; 0 when Landlock is missing or disabled.
pub fn landlock_abi() -> i64 {
    raw::landlock_abi_version().unwrap_or(0)
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// `#define __NR_name number` lines of a kernel header, with x32's
    /// `(__X32_SYSCALL_BIT + number)` read as the number.
    fn numbers(header: &str) -> BTreeMap<String, i64> {
        header
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("#define __NR_")?;
                let (name, value) = rest.split_once(' ')?;
                let value = value.trim();
                let value = value
                    .strip_prefix("(__X32_SYSCALL_BIT + ")
                    .and_then(|v| v.strip_suffix(')'))
                    .unwrap_or(value);
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    /// X32_TWINS is the kernel's table: every x32 number from 512 up, with the native call
    /// of the same name, as the installed kernel headers (linux-libc-dev) list them.
    #[test]
    fn the_twins_are_the_kernels() {
        let read = |name: &str| {
            ["/usr/include/x86_64-linux-gnu/asm", "/usr/include/asm"]
                .iter()
                .find_map(|dir| std::fs::read_to_string(format!("{dir}/{name}")).ok())
                .unwrap_or_else(|| panic!("no {name}: install the kernel headers"))
        };
        let x32 = numbers(&read("unistd_x32.h"));
        let native = numbers(&read("unistd_64.h"));
        let mut kernels: Vec<(u32, libc::c_long)> = x32
            .iter()
            .filter(|(_, &number)| number >= 512)
            .map(|(name, &number)| (number as u32, native[name]))
            .collect();
        kernels.sort();
        assert_eq!(kernels, X32_TWINS);
    }

    /// A rule under an x32 number would never be met once the number is folded: refused.
    #[test]
    #[should_panic(expected = "rules must be under native numbers")]
    fn a_rule_under_an_x32_number_is_refused() {
        let x32_ioctl = libc::SYS_ioctl | i64::from(X32_SYSCALL_BIT);
        with_x32_twins(BTreeMap::from([(x32_ioctl, vec!["tiocsti"])]));
    }

    /// A program that loads the number again after the fold would compare the x32 bit again.
    #[test]
    fn a_program_loading_the_number_twice_is_not_folded() {
        let at = |code, k| Instruction {
            code,
            jt: 0,
            jf: 0,
            k,
        };
        let arch_load = at(LD_W_ABS, 4);
        let mut program = vec![
            arch_load,
            Instruction {
                code: JEQ_K,
                jt: 1,
                jf: 0,
                k: 0xc000_003e,
            },
            at(RET_K, 0),
            at(LD_W_ABS, SECCOMP_DATA_NR),
            at(RET_K, 0x7fff_0000),
        ];
        assert!(fold_x32(program.clone()).is_ok());
        program.insert(4, at(LD_W_ABS, SECCOMP_DATA_NR));
        assert_eq!(
            fold_x32(program).unwrap_err(),
            "the program loads the call's number a second time"
        );
    }

    #[test]
    fn each_twin_gets_its_native_calls_rules() {
        let rules = BTreeMap::from([
            (libc::SYS_ioctl, vec!["tiocsti", "tioclinux"]),
            (libc::SYS_getpid, vec![]),
            (libc::SYS_kexec_load, vec![]),
        ]);
        let twinned = with_x32_twins(rules.clone());
        let mut expected = rules;
        expected.insert(514, vec!["tiocsti", "tioclinux"]);
        expected.insert(528, vec![]);
        assert_eq!(twinned, expected);
    }
}
