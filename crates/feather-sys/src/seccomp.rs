//! Installing a seccomp filter that feather-confine has compiled.

use nix::libc;

use crate::raw;
use crate::{Context, Result};

pub use nix::libc::sock_filter as Instruction;

/// Installs `program` on the calling thread; every process it starts inherits it. The caller
/// must hold CAP_SYS_ADMIN (or have set no_new_privs), and must be single-threaded, since only
/// the calling thread is filtered.
pub fn install_filter(program: &[Instruction]) -> Result<()> {
    raw::seccomp_set_mode_filter(program)
        .ctx("seccomp(SECCOMP_SET_MODE_FILTER)", "VM syscall filter")
}

/// x32 system calls: x86_64's numbers with this bit set, under x86_64's audit architecture.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

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
/// 512–547, where x86_64 has no native call and so no rule. The architecture check stays
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
