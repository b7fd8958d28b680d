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
        detach(&group, dir, id)?;
    }
    Ok(())
}

/// Attaches `program` to the v2 group at `dir` beside the device programs it holds
/// (`BPF_F_ALLOW_MULTI`): all of them run, and all must let an access through.
pub fn attach_device_program(dir: &Path, program: &OwnedFd) -> Result<()> {
    let group = File::open(dir).ctx("open cgroup", dir.display())?;
    attach_beside(&group, dir, program.as_fd())
}

/// Detaches the device program `id` from the v2 group at `dir`.
pub fn detach_device_program(dir: &Path, id: u32) -> Result<()> {
    let group = File::open(dir).ctx("open cgroup", dir.display())?;
    detach(&group, dir, id)
}

/// Detaches the device program `id` from `group` (the v2 group at `dir`).
fn detach(group: &File, dir: &Path, id: u32) -> Result<()> {
    let program = raw::bpf_prog_get_fd_by_id(id).ctx("open BPF program", id)?;
    raw::bpf_prog_attach(
        false,
        group.as_fd(),
        program.as_fd(),
        ATTACH_CGROUP_DEVICE,
        0,
    )
    .ctx("detach a device program from", dir.display())
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

/// The name program `id` was loaded under; None when it is gone (unloaded since it was seen).
pub fn program_name(id: u32) -> Result<Option<String>> {
    let program = match raw::bpf_prog_get_fd_by_id(id) {
        Ok(program) => program,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(errno) => return Err(errno).ctx("open BPF program", id),
    };
    let name = raw::bpf_prog_name(program.as_fd()).ctx("read the name of BPF program", id)?;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(Some(String::from_utf8_lossy(&name[..end]).into_owned()))
}

/// A program's name in a family whose members are ordered by version:
/// `<family><version, 3 digits>_<tag>`, at most 15 characters (the kernel's limit). The tag
/// tells apart programs of one version (a build whose program changed without its version).
#[derive(Clone, Copy, Debug)]
pub struct Versioned<'a> {
    pub family: &'a str,
    pub version: u16,
    pub tag: &'a str,
}

impl Versioned<'_> {
    pub fn name(&self) -> String {
        format!("{}{:03}_{}", self.family, self.version, self.tag)
    }

    /// The version of `name`, if it is a member of this family.
    fn version_of(&self, name: &str) -> Option<u16> {
        let rest = name.strip_prefix(self.family)?;
        rest.get(..3)?.parse().ok()
    }
}

/// What [`share_device_program`] found on the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shared {
    /// The program was there already: nothing was loaded.
    Found,
    /// The program was loaded and attached.
    Attached,
}

/// Makes the v2 group at `dir` hold the device program `named`, for every group below it to
/// inherit. When no program of that name is attached there, `program` is loaded under it and
/// attached beside the others (`BPF_F_ALLOW_MULTI`: all of them run, all must allow), and
/// only then are the members of its family with a lower version (an older feather's)
/// detached. A member of the same version with another tag, or of a higher version (another
/// build's, still starting VMs), stays beside it: the groups below run under both, never under
/// a looser policy than either's. Programs of other families (another tool's) are left alone.
///
/// A start that finds the program loads nothing (the verifier's work, 0.4–0.6 ms of CPU here,
/// is done once per host instead of once per group). A change is made under an exclusive
/// `flock` of the group's folder, so that two starts never both attach. A detach that fails
/// is not an error: the program left refuses at most more than the current one.
pub fn share_device_program(
    dir: &Path,
    named: Versioned<'_>,
    program: &[Insn],
    license: &CStr,
) -> Result<Shared> {
    let group = File::open(dir).ctx("open cgroup", dir.display())?;
    if looked_at(&group, dir, named)?.is_settled() {
        return Ok(Shared::Found);
    }
    let group = nix::fcntl::Flock::lock(group, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .ctx("lock cgroup", dir.display())?;
    let found = looked_at(&group, dir, named)?;
    if found.is_settled() {
        return Ok(Shared::Found);
    }
    let shared = if found.current {
        Shared::Found
    } else {
        let loaded = load_device_program(program, license, &named.name())?;
        attach_beside(&group, dir, loaded.as_fd())?;
        Shared::Attached
    };
    for id in found.older {
        let _ = detach(&group, dir, id);
    }
    Ok(shared)
}

/// The members of one family on a group: whether the current one is there, and the ids of
/// those of lower versions.
struct Family {
    current: bool,
    older: Vec<u32>,
}

impl Family {
    fn is_settled(&self) -> bool {
        self.current && self.older.is_empty()
    }
}

fn looked_at(group: &File, dir: &Path, named: Versioned<'_>) -> Result<Family> {
    let name = named.name();
    let mut found = Family {
        current: false,
        older: Vec::new(),
    };
    for id in query(group, dir, false)? {
        let Some(held) = program_name(id)? else {
            continue;
        };
        if held == name {
            found.current = true;
        } else if named.version_of(&held).is_some_and(|v| v < named.version) {
            found.older.push(id);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A v2 group of the test's own at the top of the v2 hierarchy (none where v2 is not
    /// mounted); removed at the end, and its programs with it.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(label: &str) -> Option<Scratch> {
            let v2 =
                crate::cgroup::Cgroup::new(crate::cgroup::Hierarchies::detect(), "").v2_dir()?;
            let dir = v2.join(format!("feather-test-{label}-{}", std::process::id()));
            std::fs::create_dir(&dir).unwrap();
            Some(Scratch(dir))
        }

        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = device_programs(&self.0)
                .unwrap()
                .into_iter()
                .filter_map(|id| program_name(id).unwrap())
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    /// `r0 = 1; exit`: lets every access through.
    const ALLOW_ALL: [Insn; 2] = [
        Insn {
            code: 0xb7,
            dst: 0,
            src: 0,
            off: 0,
            imm: 1,
        },
        Insn {
            code: 0x95,
            dst: 0,
            src: 0,
            off: 0,
            imm: 0,
        },
    ];

    fn version(version: u16, tag: &str) -> Versioned<'_> {
        Versioned {
            family: "ftest_v",
            version,
            tag,
        }
    }

    fn share(group: &Scratch, named: Versioned<'_>) -> Shared {
        share_device_program(&group.0, named, &ALLOW_ALL, c"Apache-2.0").unwrap()
    }

    #[test]
    fn a_shared_program_is_attached_once_then_found() {
        let Some(group) = Scratch::new("share-once") else {
            return;
        };
        assert_eq!(share(&group, version(1, "aaa")), Shared::Attached);
        assert_eq!(share(&group, version(1, "aaa")), Shared::Found);
        assert_eq!(group.names(), ["ftest_v001_aaa"]);
    }

    #[test]
    fn only_lower_versions_of_the_family_are_detached() {
        let Some(group) = Scratch::new("share-versions") else {
            return;
        };
        share(&group, version(1, "aaa"));
        let other_tool = load_device_program(&ALLOW_ALL, c"Apache-2.0", "other_tool").unwrap();
        attach_device_program(&group.0, &other_tool).unwrap();
        // A newer build: the older one goes, another tool's stays.
        assert_eq!(share(&group, version(2, "bbb")), Shared::Attached);
        assert_eq!(group.names(), ["ftest_v002_bbb", "other_tool"]);
        // One of the same version with another program, or the older build again: beside it.
        share(&group, version(2, "ccc"));
        share(&group, version(1, "aaa"));
        assert_eq!(
            group.names(),
            [
                "ftest_v001_aaa",
                "ftest_v002_bbb",
                "ftest_v002_ccc",
                "other_tool"
            ]
        );
        // The newer build's next start finds its own and takes the older one away.
        assert_eq!(share(&group, version(2, "bbb")), Shared::Found);
        assert_eq!(
            group.names(),
            ["ftest_v002_bbb", "ftest_v002_ccc", "other_tool"]
        );
    }

    #[test]
    fn racing_starts_attach_one_program() {
        let Some(group) = Scratch::new("share-race") else {
            return;
        };
        let attached = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| share(&group, version(1, "aaa"))))
                .collect();
            racers
                .into_iter()
                .map(|racer| racer.join().unwrap())
                .filter(|shared| *shared == Shared::Attached)
                .count()
        });
        assert_eq!(attached, 1);
        assert_eq!(group.names(), ["ftest_v001_aaa"]);
    }
}
