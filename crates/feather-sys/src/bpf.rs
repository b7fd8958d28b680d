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

/// Loads `program` as a cgroup device program. A refusal by the verifier names its log's last
/// lines. Its memory is charged to the caller's memory cgroup (Linux 5.11 and later), not
/// to RLIMIT_MEMLOCK.
pub fn load_device_program(program: &[Insn], license: &CStr) -> Result<OwnedFd> {
    let insns: Vec<u64> = program.iter().map(|i| i.encode()).collect();
    let load = |log: &mut [u8]| {
        raw::bpf_prog_load(
            PROG_TYPE_CGROUP_DEVICE,
            ATTACH_CGROUP_DEVICE,
            &insns,
            license,
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
    raw::bpf_prog_attach(
        true,
        group.as_fd(),
        program.as_fd(),
        ATTACH_CGROUP_DEVICE,
        F_ALLOW_MULTI,
    )
    .ctx("attach the device program to", dir.display())?;
    for id in before {
        let old = raw::bpf_prog_get_fd_by_id(id).ctx("open BPF program", id)?;
        raw::bpf_prog_attach(false, group.as_fd(), old.as_fd(), ATTACH_CGROUP_DEVICE, 0)
            .ctx("detach the previous device program from", dir.display())?;
    }
    Ok(())
}

/// The ids of the device programs attached to the group at `dir` itself.
pub fn device_programs(dir: &Path) -> Result<Vec<u32>> {
    let group = File::open(dir).ctx("open cgroup", dir.display())?;
    let mut ids = vec![0u32; 64];
    let count = raw::bpf_prog_query(group.as_fd(), ATTACH_CGROUP_DEVICE, &mut ids)
        .ctx("query the device programs of", dir.display())?;
    ids.truncate(count.min(ids.len()));
    Ok(ids)
}

/// Whether the program `id` is still loaded (attached somewhere, or held open).
pub fn program_exists(id: u32) -> bool {
    raw::bpf_prog_get_fd_by_id(id).is_ok()
}
