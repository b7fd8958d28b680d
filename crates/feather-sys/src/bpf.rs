//! cgroup-v2 device programs (`BPF_PROG_TYPE_CGROUP_DEVICE`): v2's replacement for the v1
//! devices controller. A program runs at every device access (open, mknod) of a process in the
//! group or below; it returns 0 to refuse (EPERM) and 1 to let the access through. Programs of
//! a group and of its ancestors all run, and all must let it through.
//!
//! Programs are given here as raw instructions ([`Insn`]), assembled by their user; the bpf(2)
//! calls are in [`crate::raw`].

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use crate::{raw, Context, Result, SysError};

/// uapi/linux/bpf.h: `BPF_PROG_TYPE_CGROUP_DEVICE` and its attach type `BPF_CGROUP_DEVICE`.
const PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const ATTACH_CGROUP_DEVICE: u32 = 6;
/// A group may hold several programs of the type, each run (`BPF_F_ALLOW_MULTI`).
const F_ALLOW_MULTI: u32 = 2;

/// One `struct bpf_insn`: opcode, destination and source registers, offset, immediate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    /// The 8 bytes of `struct bpf_insn` as this (little-endian) machine lays them out: the
    /// destination register in the low nibble of the second byte.
    fn encode(self) -> u64 {
        let [off0, off1] = self.off.to_le_bytes();
        let [imm0, imm1, imm2, imm3] = self.imm.to_le_bytes();
        u64::from_ne_bytes([
            self.code,
            (self.src << 4) | (self.dst & 0xf),
            off0,
            off1,
            imm0,
            imm1,
            imm2,
            imm3,
        ])
    }
}

/// Verifier log kept on a refused program, for the error.
const LOG_BYTES: usize = 64 * 1024;

/// Loads `program` as a cgroup device program named `name` (at most 15 letters, digits, `_`
/// or `.`; empty for none). A refusal by the verifier names its log's last lines. Its memory
/// is charged to the caller's memory cgroup (Linux 5.11 and later), not to RLIMIT_MEMLOCK.
pub fn load_device_program(program: &[Insn], license: &CStr, name: &str) -> Result<OwnedFd> {
    let insns: Vec<u64> = program.iter().map(|i| i.encode()).collect();
    let name = object_name(name);
    let load = |log: &mut [u8]| {
        raw::bpf_prog_load(
            PROG_TYPE_CGROUP_DEVICE,
            ATTACH_CGROUP_DEVICE,
            &insns,
            license,
            &name,
            log,
        )
    };
    load(&mut []).or_else(|_| {
        // Loaded again with the verifier's log, for the error.
        let mut log = vec![0u8; LOG_BYTES];
        let again = load(&mut log);
        let text = String::from_utf8_lossy(&log);
        let text = text.trim_end_matches('\0').trim();
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        again.map_err(|errno| SysError {
            op: "load the device program",
            target: format!(
                "(BPF_PROG_TYPE_CGROUP_DEVICE, {} instructions; verifier: {})",
                insns.len(),
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            ),
            errno,
        })
    })
}

/// Makes `program` the device program of the v2 group at `dir`: attached beside what the
/// group holds (`BPF_F_ALLOW_MULTI`), then the programs it held before detached. In between
/// both run and both must allow, so an update never lets through what either refuses.
pub fn set_device_program(dir: &Path, program: &OwnedFd) -> Result<()> {
    let group = File::open(dir).ctx("open cgroup", dir.display())?;
    let before = device_programs(dir)?;
    attach_beside(&group, dir, program.as_fd())?;
    for id in before {
        let old = raw::bpf_prog_get_fd_by_id(id).ctx("open BPF program", id)?;
        raw::bpf_prog_attach(false, group.as_fd(), old.as_fd(), ATTACH_CGROUP_DEVICE, 0)
            .ctx("detach the previous device program from", dir.display())?;
    }
    Ok(())
}

/// Attaches `program` to the v2 group at `dir` beside the device programs it holds
/// (`BPF_F_ALLOW_MULTI`): all of them run, and all must let an access through.
pub fn attach_device_program(dir: &Path, program: &OwnedFd) -> Result<()> {
    let group = File::open(dir).ctx("open cgroup", dir.display())?;
    attach_beside(&group, dir, program.as_fd())
}

fn attach_beside(group: &File, dir: &Path, program: std::os::fd::BorrowedFd<'_>) -> Result<()> {
    raw::bpf_prog_attach(
        true,
        group.as_fd(),
        program,
        ATTACH_CGROUP_DEVICE,
        F_ALLOW_MULTI,
    )
    .ctx("attach the device program to", dir.display())
}

/// The ids of the device programs attached to the group at `dir` itself.
pub fn device_programs(dir: &Path) -> Result<Vec<u32>> {
    let group = File::open(dir).ctx("open cgroup", dir.display())?;
    query(&group, dir, false)
}

/// The ids of the device programs that run for the group at `dir`: its own and those it
/// inherits from its ancestors.
pub fn effective_device_programs(dir: &Path) -> Result<Vec<u32>> {
    let group = File::open(dir).ctx("open cgroup", dir.display())?;
    query(&group, dir, true)
}

fn query(group: &File, dir: &Path, effective: bool) -> Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let count = raw::bpf_prog_query(group.as_fd(), ATTACH_CGROUP_DEVICE, effective, &mut ids)
        .ctx("query the device programs of", dir.display())?;
    ids.truncate(count.min(ids.len()));
    Ok(ids)
}

/// The name program `id` was loaded under; None when it is gone.
pub fn program_name(id: u32) -> Option<String> {
    let program = raw::bpf_prog_get_fd_by_id(id).ok()?;
    let name = raw::bpf_prog_name(program.as_fd()).ok()?;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// What [`share_device_program`] found on the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shared {
    /// The program was there already: nothing was loaded.
    Found,
    /// The program was loaded and attached (and older ones of its family detached).
    Attached,
}

/// Makes the v2 group at `dir` hold the device program `name`, for every group below it to
/// inherit: when no program of that name is attached there, `program` is loaded under it and
/// attached beside the others (`BPF_F_ALLOW_MULTI`), and only then are the programs whose
/// names begin with `family` but differ (an older build's) detached, so the group never runs
/// without one and an update never lets through what either refuses. Programs of other
/// families (another tool's) are left alone.
///
/// A start that finds the program loads nothing (the verifier's work, 0.4–0.6 ms of CPU here,
/// is done once per host instead of once per group). A change is made under an exclusive
/// `flock` of the group's folder, so that two starts never both attach, nor detach each
/// other's program.
pub fn share_device_program(
    dir: &Path,
    name: &str,
    family: &str,
    program: &[Insn],
    license: &CStr,
) -> Result<Shared> {
    debug_assert!(name.starts_with(family));
    let group = File::open(dir).ctx("open cgroup", dir.display())?;
    if looked_at(&group, dir, name, family)?.is_settled() {
        return Ok(Shared::Found);
    }
    nix::fcntl::Flock::lock(group, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .ctx("lock cgroup", dir.display())
        .and_then(|group| {
            let found = looked_at(&group, dir, name, family)?;
            if found.is_settled() {
                return Ok(Shared::Found);
            }
            if !found.current {
                let loaded = load_device_program(program, license, name)?;
                attach_beside(&group, dir, loaded.as_fd())?;
            }
            for id in found.older {
                let old = raw::bpf_prog_get_fd_by_id(id).ctx("open BPF program", id)?;
                raw::bpf_prog_attach(false, group.as_fd(), old.as_fd(), ATTACH_CGROUP_DEVICE, 0)
                    .ctx("detach an older device program from", dir.display())?;
            }
            Ok(Shared::Attached)
        })
}

/// The programs of one family on a group: whether the current one is there, and the ids of
/// the older ones.
struct Family {
    current: bool,
    older: Vec<u32>,
}

impl Family {
    fn is_settled(&self) -> bool {
        self.current && self.older.is_empty()
    }
}

fn looked_at(group: &File, dir: &Path, name: &str, family: &str) -> Result<Family> {
    let mut found = Family {
        current: false,
        older: Vec::new(),
    };
    for id in query(group, dir, false)? {
        match program_name(id) {
            Some(held) if held == name => found.current = true,
            Some(held) if held.starts_with(family) => found.older.push(id),
            _ => {}
        }
    }
    Ok(found)
}

/// `name` as `bpf_attr.prog_name` takes it: NUL-padded, cut to fit with its NUL.
fn object_name(name: &str) -> [u8; raw::BPF_OBJ_NAME_LEN] {
    let mut bytes = [0u8; raw::BPF_OBJ_NAME_LEN];
    let kept = name.len().min(raw::BPF_OBJ_NAME_LEN - 1);
    bytes[..kept].copy_from_slice(&name.as_bytes()[..kept]);
    bytes
}

/// Whether the program `id` is still loaded (attached somewhere, or held open).
pub fn program_exists(id: u32) -> bool {
    raw::bpf_prog_get_fd_by_id(id).is_ok()
}
