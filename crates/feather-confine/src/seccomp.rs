//! The seccomp filter every process inside a VM runs under.
//!
//! It is a deny list on top of the capability set: most calls below already fail for lack of a
//! capability, and the filter is the second wall for when a capability check has a bug, or for
//! calls that need no capability at all but reach past the VM (keyrings, TIOCSTI,
//! perf_event_open, userfaultfd). Denied calls fail with EPERM, never by killing: a program
//! that probes for a feature (systemd's and glib's code do) gets a clear "Operation not
//! permitted" and carries on.
//!
//! | call | why a VM never needs it |
//! |---|---|
#![doc = include_str!("../seccomp-table.md")]
//!
//! Denied unless the VM's config allows them ([`Profile`]):
//! - user namespaces (`create --allow-userns` allows them): `unshare` and `clone` with
//!   `CLONE_NEWUSER`, and `setns`. In a new user namespace a VM process holds every capability
//!   over the namespaces it makes there (CAP_NET_ADMIN over a network namespace, CAP_SYS_ADMIN
//!   over mounts), which puts most of the kernel's privileged code within its reach; Docker's
//!   default profile refuses them too. `clone3` gets **ENOSYS**: its flags are in memory, where
//!   seccomp cannot read them, and glibc falls back to `clone` (which the filter can read) only
//!   on ENOSYS. Without user namespaces a VM holds CAP_SYS_ADMIN nowhere, so `setns` could only
//!   fail; denying it closes the one way left, joining a user namespace made elsewhere.
//! - project-id changes on a VM with a disk cap (`create --disk`): `ioctl(FS_IOC_FSSETXATTR)`,
//!   `ioctl(FS_IOC_SETFLAGS)` and `file_setattr`. A file's owner may move it to another project
//!   or clear a folder's inherit flag, and so step out of the quota that caps the VM's layer.
//!
//! Left allowed on purpose: `ptrace` and `process_vm_readv/writev` (gdb and strace work on the
//! VM's own processes; the pid namespace keeps every other process unnameable), `unshare` and
//! `clone` with new namespaces other than a user namespace (they need CAP_SYS_ADMIN, which the
//! VM lacks), `adjtimex` (read-only without CAP_SYS_TIME, used by time-sync status tools),
//! `name_to_handle_at` (only its partner `open_by_handle_at` escapes).
//!
//! The filter is compiled for the running architecture. A system call made through another
//! ABI of the same machine (i386 `int 0x80` on x86_64) would be numbered differently and slip
//! past a deny list, so such calls kill the process; x32 numbers of the denied calls are denied
//! as well, by the same rules ([`Layout::Folded`]), and so are x32's own numbers of them
//! (512–547, `feather_sys::seccomp::X32_TWINS`: its `ioctl` is 514, its `kexec_load` 528),
//! by their native twins' rules: an x32 program's `ioctl(TIOCSTI)` fails as a native one's.

use std::collections::BTreeMap;

use feather_sys::seccomp::from_seccompiler as instructions;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// One denied call and the reason, as `docs/confinement.md` and `feather inspect` show it.
pub struct Denied {
    pub name: &'static str,
    pub number: libc::c_long,
    /// The arguments (index, value of its low 32 bits) that must all match for the call to be
    /// denied; none: denied whatever its arguments. For ioctl, the one request denied (the
    /// other requests stay allowed).
    pub when: &'static [(u8, u64)],
    pub reason: &'static str,
}

macro_rules! deny {
    ($call:ident, $reason:expr) => {
        Denied {
            name: stringify!($call),
            number: paste_sys!($call),
            when: &[],
            reason: $reason,
        }
    };
}

macro_rules! paste_sys {
    (keyctl) => {
        libc::SYS_keyctl
    };
    (add_key) => {
        libc::SYS_add_key
    };
    (request_key) => {
        libc::SYS_request_key
    };
    (bpf) => {
        libc::SYS_bpf
    };
    (perf_event_open) => {
        libc::SYS_perf_event_open
    };
    (kexec_load) => {
        libc::SYS_kexec_load
    };
    (kexec_file_load) => {
        libc::SYS_kexec_file_load
    };
    (init_module) => {
        libc::SYS_init_module
    };
    (finit_module) => {
        libc::SYS_finit_module
    };
    (delete_module) => {
        libc::SYS_delete_module
    };
    (userfaultfd) => {
        libc::SYS_userfaultfd
    };
    (open_by_handle_at) => {
        libc::SYS_open_by_handle_at
    };
    (mount) => {
        libc::SYS_mount
    };
    (umount2) => {
        libc::SYS_umount2
    };
    (pivot_root) => {
        libc::SYS_pivot_root
    };
    (fsopen) => {
        libc::SYS_fsopen
    };
    (fsconfig) => {
        libc::SYS_fsconfig
    };
    (fsmount) => {
        libc::SYS_fsmount
    };
    (fspick) => {
        libc::SYS_fspick
    };
    (move_mount) => {
        libc::SYS_move_mount
    };
    (open_tree) => {
        libc::SYS_open_tree
    };
    (mount_setattr) => {
        libc::SYS_mount_setattr
    };
    (open_tree_attr) => {
        SYS_OPEN_TREE_ATTR
    };
    (swapon) => {
        libc::SYS_swapon
    };
    (swapoff) => {
        libc::SYS_swapoff
    };
    (reboot) => {
        libc::SYS_reboot
    };
    (settimeofday) => {
        libc::SYS_settimeofday
    };
    (clock_settime) => {
        libc::SYS_clock_settime
    };
    (clock_adjtime) => {
        libc::SYS_clock_adjtime
    };
    (syslog) => {
        libc::SYS_syslog
    };
    (acct) => {
        libc::SYS_acct
    };
    (io_uring_setup) => {
        libc::SYS_io_uring_setup
    };
    (io_uring_enter) => {
        libc::SYS_io_uring_enter
    };
    (io_uring_register) => {
        libc::SYS_io_uring_register
    };
}

const KEYRINGS: &str = "kernel keyrings are not namespaced: a VM could read or plant keys in \
    the host user's keyrings, and `feather exec` inherits the caller's session keyring";
const MOUNTS: &str = "a VM's mounts are fixed by the isolation recipe; a new or moved mount \
    could uncover what the recipe hides (CAP_SYS_ADMIN is gone too: this is the second wall)";
const MODULES: &str = "kernel modules are loaded into, and removed from, the one shared kernel";
const KEXEC: &str = "replaces the running kernel of the whole machine";
const IO_URING: &str = "io_uring runs a process's calls from kernel workers, out of sight of \
    this filter, and has been the source of many of the kernel's privilege escalations (Docker's \
    default profile refuses it too); programs fall back to plain calls, and CRIU cannot \
    checkpoint a ring";
const CLOCK: &str = "the wall clock is one for the whole machine (time namespaces do not cover \
    CLOCK_REALTIME)";

/// Every call the filter denies, with its reason.
// The ioctl request constants are c_ulong with glibc but c_int with musl: keep the casts.
#[allow(clippy::unnecessary_cast)]
pub fn denied() -> Vec<Denied> {
    vec![
        deny!(keyctl, KEYRINGS),
        deny!(add_key, KEYRINGS),
        deny!(request_key, KEYRINGS),
        deny!(bpf, "eBPF programs and maps are global to the kernel: they can read kernel memory and every process's traffic"),
        deny!(perf_event_open, "performance counters observe the whole machine and other tenants' timing, with a long record of kernel bugs"),
        deny!(kexec_load, KEXEC),
        deny!(kexec_file_load, KEXEC),
        deny!(init_module, MODULES),
        deny!(finit_module, MODULES),
        deny!(delete_module, MODULES),
        Denied {
            name: "ioctl(TIOCSTI)",
            number: libc::SYS_ioctl,
            when: &[(1, libc::TIOCSTI as u64)],
            reason: "pushes characters into a terminal's input: with a host terminal as stdin (`feather exec` without -t) a VM could type commands into the user's host shell",
        },
        Denied {
            name: "ioctl(TIOCLINUX)",
            number: libc::SYS_ioctl,
            when: &[(1, libc::TIOCLINUX as u64)],
            reason: "virtual-console control: selection paste into the console (the same injection as TIOCSTI) and console-wide settings",
        },
        Denied {
            name: "socket(AF_NETLINK, NETLINK_KOBJECT_UEVENT)",
            number: libc::SYS_socket,
            when: &[
                (0, libc::AF_NETLINK as u64),
                (2, libc::NETLINK_KOBJECT_UEVENT as u64),
            ],
            reason: "the kernel sends the uevents of devices that belong to no network namespace (disks, loop devices, USB) to every namespace: a VM would watch the host's hardware and other VMs' disk images come and go",
        },
        deny!(userfaultfd, "lets a process stall the kernel on its page faults at will, the usual way to widen kernel race windows; migration uses it from outside the VM"),
        deny!(open_by_handle_at, "opens any file of a filesystem by its handle, bypassing the VM's root (the \"shocker\" container escape)"),
        deny!(mount, MOUNTS),
        deny!(umount2, MOUNTS),
        deny!(pivot_root, MOUNTS),
        deny!(fsopen, MOUNTS),
        deny!(fsconfig, MOUNTS),
        deny!(fsmount, MOUNTS),
        deny!(fspick, MOUNTS),
        deny!(move_mount, MOUNTS),
        deny!(open_tree, MOUNTS),
        deny!(mount_setattr, MOUNTS),
        deny!(open_tree_attr, MOUNTS),
        deny!(swapon, "swap space is machine-wide"),
        deny!(swapoff, "swap space is machine-wide"),
        deny!(reboot, "reboots or halts the machine; a VM is stopped through feather"),
        deny!(settimeofday, CLOCK),
        deny!(clock_settime, CLOCK),
        deny!(clock_adjtime, CLOCK),
        deny!(syslog, "reads or clears the host kernel's log, which names host devices, addresses and other VMs' events"),
        deny!(acct, "process accounting is switched on and off for the whole machine"),
        deny!(io_uring_setup, IO_URING),
        deny!(io_uring_enter, IO_URING),
        deny!(io_uring_register, IO_URING),
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot compile the VM's seccomp filter: {0}")]
    Compile(String),
    #[error("cannot install the VM's seccomp filter (the caller must hold CAP_SYS_ADMIN): {0}")]
    Install(#[from] feather_sys::SysError),
}

/// x32 system calls are the x86_64 numbers with this bit set.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: i64 = feather_sys::seccomp::X32_SYSCALL_BIT as i64;

/// How a program meets x32 calls (x86_64 numbers with [`X32_SYSCALL_BIT`] set, under the
/// same audit architecture as native calls): both ways give an x32 call under a native number
/// (`keyctl`'s 250|x32) the rules of that number. They differ on x32's own numbers (512–547,
/// [`feather_sys::seccomp::X32_TWINS`]: its `ioctl` is 514|x32, its `kexec_load` 528|x32),
/// which only [`Layout::Folded`] gives their native twins' rules; the duplicated layout lets
/// them through. On other architectures the two are one program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// This build's: after the architecture check and the load of the number, one
    /// instruction clears the x32 bit (`A &= !X32_SYSCALL_BIT`), and the rules follow once,
    /// under native numbers, with x32's own numbers of the calls that have one (`ioctl`,
    /// `kexec_load`) under their native twins' rules. About half the instructions of
    /// [`Layout::Duplicated`] (default profile: the main filter 389 → 215, the spawner's 467 →
    /// 254, `clone3`'s 15 → 11; x32's own numbers are 17 of each): the kernel checks and
    /// translates every instruction at each load, and a VM start loads the VM's filters and
    /// the spawner's.
    Folded,
    /// Builds before 2026-12-05's: every rule twice, under the native number and under the
    /// number with the x32 bit. Compiled only to recognise the filters of processes a
    /// checkpoint of such a build brings back (crates/feather-vm/src/restored_creds.rs).
    Duplicated,
}

/// What a VM's config relaxes or adds to the filter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    /// The VM may create and join user namespaces (`create --allow-userns`).
    pub allow_userns: bool,
    /// The VM's layers are capped by a project quota (`create --disk`): its processes may not
    /// change a file's project.
    pub disk_quota: bool,
}

impl Profile {
    /// This profile and every one whose filters refuse at least what its do, this one first:
    /// without `allow_userns` if it has it, with `disk_quota` if it lacks it (a checkpoint
    /// made under a stricter configuration brings its processes back under those filters).
    pub fn with_stricter(self) -> Vec<Profile> {
        let mut all = vec![self];
        for allow_userns in [false, true] {
            for disk_quota in [false, true] {
                let other = Profile {
                    allow_userns,
                    disk_quota,
                };
                let stricter =
                    (!allow_userns || self.allow_userns) && (disk_quota || !self.disk_quota);
                if stricter && other != self {
                    all.push(other);
                }
            }
        }
        all
    }
}

/// `file_setattr(2)` (Linux 6.17): FS_IOC_FSSETXATTR by path. Not in libc yet; calls added
/// since Linux 5.1 have one number on every architecture feather builds for.
const SYS_FILE_SETATTR: libc::c_long = 469;

/// `open_tree_attr(2)` (Linux 6.15): `open_tree` with mount attributes to set on the clone
/// (with none, `open_tree` itself). Not in libc yet; one number on every architecture feather
/// builds for, as [`SYS_FILE_SETATTR`].
const SYS_OPEN_TREE_ATTR: libc::c_long = 467;

/// The calls denied since [`Generation::Unlocked20261206`].
const IO_URING_CALLS: [libc::c_long; 3] = [
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// `FS_IOC_FSSETXATTR`, `_IOW('X', 32, struct fsxattr)`: sets a file's project id and xflags.
pub const FS_IOC_FSSETXATTR: u64 = 0x401c_5820;

/// A call a [`Profile`] denies: whatever its arguments, or when one argument passes a test.
/// A number is either always denied or denied by argument tests, never both: seccompiler
/// would read the tests as the only rules.
struct Conditional {
    number: libc::c_long,
    /// The argument's index and its test.
    arg: Option<(u8, ArgTest)>,
}

enum ArgTest {
    /// All these bits are set (the low 32 bits of the argument).
    HasBits(u64),
    /// The argument's low 32 bits are this value.
    Exact(u64),
}

/// The calls `profile` adds to the always-denied list, all refused with EPERM.
fn profile_denied(profile: Profile) -> Vec<Conditional> {
    let mut calls = Vec::new();
    if !profile.allow_userns {
        let newuser = ArgTest::HasBits(libc::CLONE_NEWUSER as u64);
        calls.push(Conditional {
            number: libc::SYS_unshare,
            arg: Some((0, newuser)),
        });
        // clone's flags are its first argument on x86_64 and aarch64 alike.
        calls.push(Conditional {
            number: libc::SYS_clone,
            arg: Some((0, ArgTest::HasBits(libc::CLONE_NEWUSER as u64))),
        });
        calls.push(Conditional {
            number: libc::SYS_setns,
            arg: None,
        });
    }
    if profile.disk_quota {
        calls.push(Conditional {
            number: libc::SYS_ioctl,
            arg: Some((1, ArgTest::Exact(FS_IOC_FSSETXATTR))),
        });
        // The unused cast is for musl, whose ioctl requests are c_int.
        #[allow(clippy::unnecessary_cast)]
        calls.push(Conditional {
            number: libc::SYS_ioctl,
            arg: Some((1, ArgTest::Exact(libc::FS_IOC_SETFLAGS as u64))),
        });
        calls.push(Conditional {
            number: SYS_FILE_SETATTR,
            arg: None,
        });
    }
    calls
}

fn compile_error(e: impl std::fmt::Display) -> SeccompError {
    SeccompError::Compile(e.to_string())
}

/// One rule matching `test` on argument `index`. Flags and ioctl requests are read by the
/// kernel as 32-bit values (clone's flags that matter here, too), so only the low 32 bits are
/// compared: setting high bits cannot dodge a rule.
fn rule(index: u8, test: &ArgTest) -> Result<SeccompRule, SeccompError> {
    let (op, value) = match *test {
        ArgTest::HasBits(mask) => (SeccompCmpOp::MaskedEq(mask), mask),
        ArgTest::Exact(value) => (SeccompCmpOp::Eq, value),
    };
    let condition =
        SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value).map_err(compile_error)?;
    SeccompRule::new(vec![condition]).map_err(compile_error)
}

/// One rule matching when every argument of `conditions` (index, low 32 bits) is equal.
fn all_equal(conditions: &[(u8, u64)]) -> Result<SeccompRule, SeccompError> {
    let conditions = conditions
        .iter()
        .map(|&(index, value)| {
            SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
                .map_err(compile_error)
        })
        .collect::<Result<Vec<_>, _>>()?;
    SeccompRule::new(conditions).map_err(compile_error)
}

/// Adds `call`'s rules under its native number ([`build`] makes them match its x32 number
/// too).
fn add_rules(
    rules: &mut BTreeMap<i64, Vec<SeccompRule>>,
    number: libc::c_long,
    rule: Option<SeccompRule>,
) {
    // An empty list of rules denies the call whatever its arguments.
    let entry = rules.entry(number).or_default();
    entry.extend(rule);
}

/// Builds a filter that answers `action` to the calls in `rules` (under native numbers) and
/// lets everything else through, for the running architecture; on x86_64 the x32 numbers
/// of the calls in `rules` get the same rules, as `layout` lays them out (in
/// [`Layout::Folded`] only, x32's own numbers of them too: `ioctl`'s 514).
fn build(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    action: SeccompAction,
    layout: Layout,
) -> Result<BpfProgram, SeccompError> {
    #[cfg(target_arch = "x86_64")]
    let rules = match layout {
        // x32's own numbers of the calls that have one (ioctl 514, kexec_load 528) get the
        // rules too, under the number the fold makes of them.
        Layout::Folded => feather_sys::seccomp::with_x32_twins(rules),
        // Each native entry, then (after all native numbers, in the map's order) its twin:
        // the previous builds' programs, instruction for instruction.
        Layout::Duplicated => {
            let twins: Vec<_> = rules
                .iter()
                .map(|(number, rules)| (number | X32_SYSCALL_BIT, rules.clone()))
                .collect();
            rules.into_iter().chain(twins).collect()
        }
    };
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| compile_error(e))?;
    let filter =
        SeccompFilter::new(rules, SeccompAction::Allow, action, arch).map_err(compile_error)?;
    let program = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| compile_error(e))?;
    match layout {
        Layout::Folded => fold_x32(program),
        Layout::Duplicated => Ok(program),
    }
}

/// [`feather_sys::seccomp::fold_x32`] on a seccompiler program (whose rules must all be under
/// native numbers, as [`build`] gives them).
///
/// Why not another shape: a second filter for x32 calls alone would keep the rules once too,
/// but a call then walks two programs and each start loads one more (a load's fixed part is
/// 80–160 µs here); a binary split of the number chain would cut the walk of a denied call
/// only: every other call is answered by the kernel's cache, and the argument-checked calls
/// a VM makes often (`ioctl` 16, `socket` 41, `clone` 56) have the lowest numbers, first in
/// seccompiler's ascending chain already.
fn fold_x32(program: BpfProgram) -> Result<BpfProgram, SeccompError> {
    let folded = feather_sys::seccomp::fold_x32(instructions(program)).map_err(compile_error)?;
    Ok(folded
        .into_iter()
        .map(|i| seccompiler::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect())
}

/// Compiles the main filter (every denied call gets EPERM) for the running architecture.
pub fn compile(profile: Profile) -> Result<BpfProgram, SeccompError> {
    compile_in(profile, Layout::Folded, Generation::Current)
}

/// The main filter of [`compile`] as a build of `generation`'s rules and `layout` compiled it.
pub fn compile_in(
    profile: Profile,
    layout: Layout,
    generation: Generation,
) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for call in generation.denied() {
        let rule = match call.when {
            [] => None,
            conditions => Some(all_equal(conditions)?),
        };
        add_rules(&mut rules, call.number, rule);
    }
    for call in profile_denied(profile) {
        let rule = match &call.arg {
            None => None,
            Some((index, test)) => Some(rule(*index, test)?),
        };
        add_rules(&mut rules, call.number, rule);
    }
    build(rules, SeccompAction::Errno(libc::EPERM as u32), layout)
}

/// The second filter, for VMs without user namespaces: `clone3` answers ENOSYS, so that glibc
/// (pthread_create, posix_spawn) falls back to `clone`, whose flags the main filter can read.
/// seccompiler gives one action per filter, hence a filter of its own. None when user
/// namespaces are allowed.
pub fn compile_clone3(profile: Profile) -> Result<Option<BpfProgram>, SeccompError> {
    compile_clone3_in(profile, Layout::Folded)
}

fn compile_clone3_in(profile: Profile, layout: Layout) -> Result<Option<BpfProgram>, SeccompError> {
    if profile.allow_userns {
        return Ok(None);
    }
    clone3_enosys(layout).map(Some)
}

/// A filter answering ENOSYS to `clone3` (the VM's, and the spawner's whatever the profile).
fn clone3_enosys(layout: Layout) -> Result<BpfProgram, SeccompError> {
    let mut rules = BTreeMap::new();
    add_rules(&mut rules, libc::SYS_clone3, None);
    build(rules, SeccompAction::Errno(libc::ENOSYS as u32), layout)
}

/// Compiles and installs the filters of `profile` on the calling process. Call it while the
/// process still holds CAP_SYS_ADMIN — before the capability set is reduced — so that
/// no_new_privs need not be set (see the crate documentation), and after everything that
/// itself needs a denied call (the VM's mounts). Both filters are compiled before either is
/// installed, so a compile error leaves the process as it was.
pub fn install(profile: Profile) -> Result<(), SeccompError> {
    Compiled::new(profile)?.install()
}

/// The filters of a [`Profile`], compiled once to be installed many times (the VM's spawner
/// installs them in every process it makes).
#[derive(Clone, Debug)]
pub struct Compiled {
    clone3: Option<Vec<feather_sys::seccomp::Instruction>>,
    main: Vec<feather_sys::seccomp::Instruction>,
}

impl Compiled {
    pub fn new(profile: Profile) -> Result<Compiled, SeccompError> {
        Compiled::in_layout(profile, Layout::Folded, Generation::Current)
    }

    /// The filters of `profile` as a build of `generation`'s rules and `layout` compiled them
    /// (a restore compares a restored process's with these).
    pub fn in_layout(
        profile: Profile,
        layout: Layout,
        generation: Generation,
    ) -> Result<Compiled, SeccompError> {
        Ok(Compiled {
            main: instructions(compile_in(profile, layout, generation)?),
            clone3: compile_clone3_in(profile, layout)?.map(instructions),
        })
    }

    /// Installs them on the calling process (which holds CAP_SYS_ADMIN: see [`install`]).
    pub fn install(&self) -> Result<(), SeccompError> {
        for program in self.stack() {
            feather_sys::seccomp::install_filter(&program)?;
        }
        Ok(())
    }

    /// The programs [`Compiled::install`] stacks, the first installed first.
    pub fn stack(&self) -> Vec<Vec<feather_sys::seccomp::Instruction>> {
        self.clone3.iter().chain([&self.main]).cloned().collect()
    }
}

/// How many filters [`Compiled::install`] stacks for `profile`: the main one, and the one
/// answering `clone3` unless user namespaces are allowed. A VM's process runs under at least
/// these (the spawner under two of its own, [`install_spawner`]).
pub fn filter_count(profile: Profile) -> usize {
    if profile.allow_userns {
        1
    } else {
        2
    }
}

/// Which build's rules a program holds: this build's, or those of earlier builds (the ones a
/// checkpoint of such a build brings back, crates/feather-vm/src/restored_creds.rs).
/// Two rules changed together early on 2026-12-06: the spawner's recipe made its mount
/// namespace a slave of the VM's rather than private (so what the host hides in the VM later
/// reaches it), and `open_tree_attr` (Linux 6.15, `open_tree` by another number) joined the
/// denied mount calls. Later that day the spawner's recipe covered its namespace's `/proc` and
/// `/sys` with locked copies (cloned in a copy of the VM's namespace that a short-lived child
/// makes together with a new user namespace, joined by `setns`): the VM's filter did not
/// change, the spawner's `clone`, `setns`, `open_tree` and `move_mount` rules did; and the io_uring
/// calls joined the denied list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// This build's: every call of [`denied`]; the spawner's `mount` of `/` is
    /// `MS_REC|MS_SLAVE`, its `clone` may make a user and a mount namespace together, its
    /// `setns` may join a mount namespace, its `open_tree` may clone a tree recursively and its
    /// `move_mount` attach one, by descriptors.
    Current,
    /// Builds of 2026-12-06 up to commit ff32a5d: [`denied`] without the io_uring calls; the
    /// spawner's `mount` of `/` is `MS_REC|MS_SLAVE`, its `clone` is let through with no
    /// namespace flag, its `setns`, `open_tree` and `move_mount` never. Compiled only to
    /// recognise the filters a checkpoint of such a build brings back.
    Unlocked20261206,
    /// Builds before 2026-12-06: [`denied`] without `open_tree_attr`; the spawner's `mount`
    /// of `/` is `MS_REC|MS_PRIVATE`. Compiled only to recognise the filters a checkpoint of
    /// such a build brings back.
    Before20261206,
}

impl Generation {
    /// The calls of [`denied`] this generation's programs refuse.
    fn denied(self) -> Vec<Denied> {
        let mut calls = denied();
        if self != Generation::Current {
            calls.retain(|call| !IO_URING_CALLS.contains(&call.number));
        }
        if self == Generation::Before20261206 {
            calls.retain(|call| call.number != SYS_OPEN_TREE_ATTR);
        }
        calls
    }

    /// The propagation flags of the one `mount` of `/` the spawner's filter lets through.
    fn spawner_propagation(self) -> u64 {
        match self {
            Generation::Current | Generation::Unlocked20261206 => libc::MS_REC | libc::MS_SLAVE,
            Generation::Before20261206 => libc::MS_REC | libc::MS_PRIVATE,
        }
    }

    /// Whether the spawner makes its namespace a locked copy (clone into a new user and mount
    /// namespace, then setns) rather than by `unshare(CLONE_NEWNS)`.
    fn spawner_locks(self) -> bool {
        self == Generation::Current
    }
}

/// The filter of the VM's spawner (crates/feather-vm/src/spawner.rs), which holds
/// CAP_SYS_ADMIN for one recipe: a new mount namespace, made a slave of the VM's, and two
/// binds. It is the VM's filter with exactly that let through: `unshare` only with
/// `CLONE_NEWNS` alone; `mount` only with the flags `MS_REC|MS_SLAVE` (propagation;
/// `MS_REC|MS_PRIVATE` in [`Generation::Before20261206`]) or `MS_BIND` (a bind, not
/// recursive, no remount); `unshare` only with `CLONE_NEWNS` alone; `clone` with no namespace
/// flag but `CLONE_NEWUSER` and `CLONE_NEWNS` together (the maker of the locked copy),
/// `setns` only of a mount namespace, `open_tree` only as a recursive clone by descriptor,
/// `move_mount` only from descriptor to descriptor (in the generations before
/// [`Generation::Current`]: `clone` with no namespace flag, `setns`, `open_tree` and
/// `move_mount` never); `clone3` ENOSYS;
/// every other call of `generation`'s denied list refused, the new mount API included. The
/// processes it makes install the VM's own filter over it (filters stack: the stricter answer
/// wins).
pub fn compile_spawner(
    profile: Profile,
    layout: Layout,
    generation: Generation,
) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // The spawner's own rules below: mount's, and (for the locked copies) open_tree's and
    // move_mount's.
    let own_rules: &[libc::c_long] = if generation.spawner_locks() {
        &[libc::SYS_mount, libc::SYS_open_tree, libc::SYS_move_mount]
    } else {
        &[libc::SYS_mount]
    };
    for call in generation.denied() {
        if own_rules.contains(&call.number) {
            continue;
        }
        let rule = match call.when {
            [] => None,
            conditions => Some(all_equal(conditions)?),
        };
        add_rules(&mut rules, call.number, rule);
    }
    for call in profile_denied(profile) {
        // unshare, clone and setns get the spawner's own rules below.
        if [libc::SYS_unshare, libc::SYS_clone, libc::SYS_setns].contains(&call.number) {
            continue;
        }
        let rule = match &call.arg {
            None => None,
            Some((index, test)) => Some(rule(*index, test)?),
        };
        add_rules(&mut rules, call.number, rule);
    }
    let not_equal = |index: u8, value: u64| {
        SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, value)
            .map_err(compile_error)
    };
    let recipe_mount = SeccompRule::new(vec![
        not_equal(3, generation.spawner_propagation())?,
        not_equal(3, libc::MS_BIND)?,
    ])
    .map_err(compile_error)?;
    add_rules(&mut rules, libc::SYS_mount, Some(recipe_mount));
    if generation.spawner_locks() {
        add_locked_copy_rules(&mut rules)?;
    } else {
        add_unshare_rules(&mut rules)?;
    }
    build(rules, SeccompAction::Errno(libc::EPERM as u32), layout)
}

/// The namespace flags a `clone` of the spawner's may never carry.
const SPAWNER_NEVER_CLONES: [libc::c_int; 5] = [
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWCGROUP,
];

/// `open_tree`'s flags in the spawner's one clone: `OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC |
/// AT_EMPTY_PATH | AT_RECURSIVE` (a recursive copy of the folder a descriptor names).
const SPAWNER_OPEN_TREE: u64 = 0x1 | libc::O_CLOEXEC as u64 | libc::AT_EMPTY_PATH as u64 | 0x8000;

/// `move_mount`'s flags in the spawner's one attach: `MOVE_MOUNT_F_EMPTY_PATH |
/// MOVE_MOUNT_T_EMPTY_PATH` (a detached tree onto the folder a descriptor names).
const SPAWNER_MOVE_MOUNT: u64 = 0x04 | 0x40;

/// One rule matching when argument `index`'s low 32 bits are not `value`.
fn differs(index: u8, value: u64) -> Result<SeccompRule, SeccompError> {
    let condition = SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, value)
        .map_err(compile_error)?;
    SeccompRule::new(vec![condition]).map_err(compile_error)
}

/// [`Generation::Current`]'s spawner: `unshare` of a mount namespace alone; `clone` into a new
/// user namespace and a new mount namespace together, or into none (each alone refused, every
/// other namespace refused); `setns` of a mount namespace alone; `open_tree` as a recursive
/// clone by descriptor and `move_mount` from descriptor to descriptor, with exactly those flags.
fn add_locked_copy_rules(rules: &mut BTreeMap<i64, Vec<SeccompRule>>) -> Result<(), SeccompError> {
    add_rules(
        rules,
        libc::SYS_unshare,
        Some(differs(0, libc::CLONE_NEWNS as u64)?),
    );
    for namespace in SPAWNER_NEVER_CLONES {
        let test = ArgTest::HasBits(namespace as u64);
        add_rules(rules, libc::SYS_clone, Some(rule(0, &test)?));
    }
    let pair = (libc::CLONE_NEWUSER | libc::CLONE_NEWNS) as u64;
    for alone in [libc::CLONE_NEWUSER, libc::CLONE_NEWNS] {
        let condition = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(pair),
            alone as u64,
        )
        .map_err(compile_error)?;
        let rule = SeccompRule::new(vec![condition]).map_err(compile_error)?;
        add_rules(rules, libc::SYS_clone, Some(rule));
    }
    add_rules(
        rules,
        libc::SYS_setns,
        Some(differs(1, libc::CLONE_NEWNS as u64)?),
    );
    add_rules(
        rules,
        libc::SYS_open_tree,
        Some(differs(2, SPAWNER_OPEN_TREE)?),
    );
    add_rules(
        rules,
        libc::SYS_move_mount,
        Some(differs(4, SPAWNER_MOVE_MOUNT)?),
    );
    Ok(())
}

/// The spawner of the generations before [`Generation::Current`]: `unshare` with
/// `CLONE_NEWNS` alone, `clone` into no namespace, no `setns`.
fn add_unshare_rules(rules: &mut BTreeMap<i64, Vec<SeccompRule>>) -> Result<(), SeccompError> {
    add_rules(
        rules,
        libc::SYS_unshare,
        Some(differs(0, libc::CLONE_NEWNS as u64)?),
    );
    for namespace in [libc::CLONE_NEWNS, libc::CLONE_NEWUSER]
        .into_iter()
        .chain(SPAWNER_NEVER_CLONES)
    {
        let test = ArgTest::HasBits(namespace as u64);
        add_rules(rules, libc::SYS_clone, Some(rule(0, &test)?));
    }
    add_rules(rules, libc::SYS_setns, None);
    Ok(())
}

/// Installs the spawner's filters ([`compile_spawner`], and `clone3` as ENOSYS) on the
/// calling process, which holds CAP_SYS_ADMIN.
pub fn install_spawner(profile: Profile) -> Result<(), SeccompError> {
    for program in spawner_stack(profile, Layout::Folded, Generation::Current)? {
        feather_sys::seccomp::install_filter(&program)?;
    }
    Ok(())
}

/// The programs [`install_spawner`] stacks, as a build of `generation`'s rules and `layout`
/// compiled them, the first installed first.
pub fn spawner_stack(
    profile: Profile,
    layout: Layout,
    generation: Generation,
) -> Result<Vec<Vec<feather_sys::seccomp::Instruction>>, SeccompError> {
    let main = instructions(compile_spawner(profile, layout, generation)?);
    let clone3 = instructions(clone3_enosys(layout)?);
    Ok(vec![clone3, main])
}

/// The table of the crate docs and `docs/confinement.md`, from [`denied`].
pub fn markdown_table() -> String {
    let mut out = String::new();
    let mut seen = Vec::new();
    for call in denied() {
        if seen.contains(&call.reason) && call.when.is_empty() {
            continue;
        }
        let names: Vec<&str> = denied()
            .iter()
            .filter(|c| c.reason == call.reason)
            .map(|c| c.name)
            .collect();
        seen.push(call.reason);
        out.push_str(&format!("| `{}` | {} |\n", names.join("`, `"), call.reason));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's answer to one call under `program`
    /// ([`feather_sys::seccomp::evaluate`]); an instruction the interpreter does not know
    /// fails the test, so that a new one is looked at.
    fn evaluate(
        program: &[feather_sys::seccomp::Instruction],
        arch: u32,
        nr: u32,
        args: [u64; 6],
    ) -> u32 {
        feather_sys::seccomp::evaluate(program, arch, nr, args)
            .unwrap_or_else(|| panic!("an instruction the interpreter does not know, or no answer"))
    }

    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const AUDIT_ARCH_I386: u32 = 0x4000_0003;
    const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;

    /// The calls whose rules test arguments, in any of the filters.
    fn argument_checked() -> Vec<u32> {
        [
            libc::SYS_ioctl,
            libc::SYS_socket,
            libc::SYS_clone,
            libc::SYS_unshare,
            libc::SYS_mount,
            libc::SYS_setns,
        ]
        .iter()
        .map(|&n| n as u32)
        .collect()
    }

    /// Argument values the rules compare with, and neighbours: alone, with other bits, with
    /// high bits (which the rules ignore).
    #[allow(clippy::unnecessary_cast)]
    fn argument_values() -> Vec<u64> {
        let mut values = vec![
            0,
            u64::MAX,
            libc::TIOCSTI as u64,
            libc::TIOCLINUX as u64,
            FS_IOC_FSSETXATTR,
            libc::FS_IOC_SETFLAGS as u64,
            libc::AF_NETLINK as u64,
            libc::NETLINK_KOBJECT_UEVENT as u64,
            libc::CLONE_NEWUSER as u64,
            libc::CLONE_NEWNS as u64,
            libc::CLONE_NEWNET as u64,
            (libc::CLONE_NEWNS | libc::CLONE_NEWUTS) as u64,
            (libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::SIGCHLD) as u64,
            libc::MS_BIND,
            libc::MS_REC | libc::MS_PRIVATE,
            libc::MS_REC | libc::MS_SLAVE,
            libc::MS_REC | libc::MS_SHARED,
            libc::MS_BIND | libc::MS_REC,
            libc::MS_REMOUNT | libc::MS_BIND,
        ];
        let high: Vec<u64> = values.iter().map(|v| v | 0xffff_ffff_0000_0000).collect();
        values.extend(high);
        values
    }

    /// Every argument pattern the test tries on an argument-checked call: each value in each
    /// argument the rules read (0–3), then each pair of values in each pair of them.
    fn argument_patterns() -> Vec<[u64; 6]> {
        let values = argument_values();
        let mut patterns = Vec::new();
        for index in 0..4 {
            for &value in &values {
                let mut args = [0; 6];
                args[index] = value;
                patterns.push(args);
            }
        }
        for first in 0..4 {
            for second in first + 1..4 {
                for &a in &values[..values.len() / 2] {
                    for &b in &values[..values.len() / 2] {
                        let mut args = [0; 6];
                        args[first] = a;
                        args[second] = b;
                        patterns.push(args);
                    }
                }
            }
        }
        patterns
    }

    /// What a folded program must answer to a call that the duplicated program `old` answers
    /// as it is: `old`'s own answer, but for x32's own numbers (512–547, with or without the
    /// x32 bit, under x86_64), which get `old`'s answer to their native twin.
    fn folded_answer(
        old: &[feather_sys::seccomp::Instruction],
        arch: u32,
        nr: u32,
        args: [u64; 6],
    ) -> u32 {
        let nr = match feather_sys::seccomp::native_twin(nr) {
            Some(twin) if arch == AUDIT_ARCH_X86_64 => twin,
            _ => nr,
        };
        evaluate(old, arch, nr, args)
    }

    /// Asserts that `new` answers every (architecture, number, arguments) the test tries as
    /// `old` does, but x32's own calls as `old` answers their native twins
    /// ([`folded_answer`]): every number below 1024 (the table's and x32's own 512–547 among
    /// them), each also with the x32 bit, bit 31, or both; every argument pattern on the
    /// argument-checked calls (and their x32 twins) made as x86_64 calls, a few on the
    /// others. Returns how many calls `new` denied, so that the caller can see the comparison
    /// was not vacuous.
    fn assert_same_answers(what: &str, old: &BpfProgram, new: &BpfProgram) -> usize {
        let (old, new) = (instructions(old.clone()), instructions(new.clone()));
        let checked = argument_checked();
        let patterns = argument_patterns();
        let few = [[0; 6], [u64::MAX; 6], [1, 2, 3, 4, 5, 6]];
        let mut denied = 0;
        for arch in [AUDIT_ARCH_X86_64, AUDIT_ARCH_I386, AUDIT_ARCH_AARCH64, 0] {
            for native in (0..1024u32).chain([0x3fff_ffff]) {
                let checked = checked.contains(&native)
                    || feather_sys::seccomp::native_twin(native)
                        .is_some_and(|n| checked.contains(&n));
                for high in [0, 0x4000_0000, 0x8000_0000, 0xc000_0000] {
                    let nr = native | high;
                    // Another architecture's call is answered before any argument is read.
                    let args: &[[u64; 6]] = if arch == AUDIT_ARCH_X86_64 && checked {
                        &patterns
                    } else {
                        &few
                    };
                    for &args in args {
                        let answer = evaluate(&new, arch, nr, args);
                        assert_eq!(
                            answer,
                            folded_answer(&old, arch, nr, args),
                            "{what}: arch {arch:#x}, nr {nr:#x}, args {args:x?}"
                        );
                        denied += usize::from(answer != libc::SECCOMP_RET_ALLOW);
                    }
                }
            }
        }
        denied
    }

    fn all_profiles() -> Vec<Profile> {
        Profile {
            allow_userns: true,
            disk_quota: false,
        }
        .with_stricter()
    }

    /// The folded programs answer every call as the duplicated ones (the previous builds')
    /// do, but x32's own numbers, which they answer as the duplicated ones answer the native
    /// twins: the VM's filters and the spawner's, for every profile (both in the rules of the
    /// builds that laid them out the duplicated way).
    #[test]
    fn folding_x32_changes_no_answer_but_x32s_own_calls() {
        let before = Generation::Before20261206;
        for profile in all_profiles() {
            let old = compile_in(profile, Layout::Duplicated, before).unwrap();
            let new = compile_in(profile, Layout::Folded, before).unwrap();
            let denied = assert_same_answers(&format!("main {profile:?}"), &old, &new);
            assert!(denied > 0);
            let old = compile_spawner(profile, Layout::Duplicated, before).unwrap();
            let new = compile_spawner(profile, Layout::Folded, before).unwrap();
            assert_same_answers(&format!("spawner {profile:?}"), &old, &new);
        }
        let old = clone3_enosys(Layout::Duplicated).unwrap();
        let new = clone3_enosys(Layout::Folded).unwrap();
        assert_same_answers("clone3", &old, &new);
    }

    /// x32's own calls are refused as their native twins are, by the VM's filter and the
    /// spawner's, for every profile: `ioctl` (514|x32) with `TIOCSTI` or `TIOCLINUX` (and,
    /// under a disk cap, the project-changing requests) fails with EPERM while other requests
    /// pass, `kexec_load` (528|x32) fails with EPERM, and every x32-only number answers every
    /// argument pattern as its twin does (the duplicated layout, and the folded one before
    /// its twins, let them all through).
    #[cfg(target_arch = "x86_64")]
    #[test]
    // The ioctl request constants are c_ulong with glibc but c_int with musl: keep the casts.
    #[allow(clippy::unnecessary_cast)]
    fn x32s_own_calls_are_answered_as_their_native_twins() {
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let allow = libc::SECCOMP_RET_ALLOW;
        let x32 = feather_sys::seccomp::X32_SYSCALL_BIT;
        let patterns = argument_patterns();
        let ioctl = |request: u64| [0, request, 0, 0, 0, 0];
        for profile in all_profiles() {
            let programs = [
                ("main", compile(profile).unwrap()),
                (
                    "spawner",
                    compile_spawner(profile, Layout::Folded, Generation::Current).unwrap(),
                ),
            ];
            for (what, program) in programs {
                let program = instructions(program);
                let call = |nr: u32, args| evaluate(&program, AUDIT_ARCH_X86_64, nr, args);
                let what = format!("{what} {profile:?}");
                assert_eq!(
                    call(514 | x32, ioctl(libc::TIOCSTI as u64)),
                    eperm,
                    "{what}"
                );
                assert_eq!(
                    call(514 | x32, ioctl(libc::TIOCLINUX as u64)),
                    eperm,
                    "{what}"
                );
                assert_eq!(call(514 | x32, ioctl(libc::TCGETS as u64)), allow, "{what}");
                let capped = if profile.disk_quota { eperm } else { allow };
                assert_eq!(call(514 | x32, ioctl(FS_IOC_FSSETXATTR)), capped, "{what}");
                let setflags = ioctl(libc::FS_IOC_SETFLAGS as u64);
                assert_eq!(call(514 | x32, setflags), capped, "{what}");
                assert_eq!(call(528 | x32, [0; 6]), eperm, "{what}");
                for (own, native) in feather_sys::seccomp::X32_TWINS {
                    for nr in [own | x32, own] {
                        for &args in &patterns {
                            assert_eq!(
                                call(nr, args),
                                call(native as u32, args),
                                "{what}: nr {nr:#x}, args {args:x?}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The interpreter reads the programs as the kernel does: the answers the module's docs
    /// promise, for native and x32 numbers, under the folded main filter.
    #[cfg(target_arch = "x86_64")]
    #[test]
    // The ioctl request constants are c_ulong with glibc but c_int with musl: keep the casts.
    #[allow(clippy::unnecessary_cast)]
    fn the_interpreter_gives_the_documented_answers() {
        let program = instructions(compile(Profile::default()).unwrap());
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let x32 = 0x4000_0000;
        let call = |nr: libc::c_long, args: [u64; 6]| {
            evaluate(&program, AUDIT_ARCH_X86_64, nr as u32, args)
        };
        for bit in [0, x32] {
            let nr = |n: libc::c_long| n | bit;
            assert_eq!(call(nr(libc::SYS_keyctl), [0; 6]), eperm);
            assert_eq!(call(nr(libc::SYS_getpid), [0; 6]), libc::SECCOMP_RET_ALLOW);
            let tiocsti = [0, libc::TIOCSTI as u64, 0, 0, 0, 0];
            assert_eq!(call(nr(libc::SYS_ioctl), tiocsti), eperm);
            let tcgets = [0, libc::TCGETS as u64, 0, 0, 0, 0];
            assert_eq!(call(nr(libc::SYS_ioctl), tcgets), libc::SECCOMP_RET_ALLOW);
            let newuser = [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0];
            assert_eq!(call(nr(libc::SYS_unshare), newuser), eperm);
            let newnet = [libc::CLONE_NEWNET as u64, 0, 0, 0, 0, 0];
            assert_eq!(call(nr(libc::SYS_unshare), newnet), libc::SECCOMP_RET_ALLOW);
        }
        assert_eq!(
            evaluate(&program, AUDIT_ARCH_I386, libc::SYS_getpid as u32, [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
    }

    /// [`Layout::Duplicated`] compiles, instruction for instruction, the programs the build
    /// before it installed (fingerprints taken from that build, commit bab0879): its
    /// checkpoints hold those, and a restore accepts only what it compiles itself.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_duplicated_layout_is_the_previous_builds() {
        const CLONE3: (usize, u64) = (0xf, 0xc8c9_e691_e6e8_55d9);
        let previous = [
            // (allow_userns, disk_quota): the VM's stack, the spawner's.
            (
                (false, false),
                vec![CLONE3, (0x185, 0xa848_92a8_6274_62d9)],
                vec![CLONE3, (0x1d3, 0xc702_ea15_5973_c0f1)],
            ),
            (
                (false, true),
                vec![CLONE3, (0x1a3, 0x32ab_e784_fba7_d05d)],
                vec![CLONE3, (0x1f1, 0x062a_1f49_ec5d_88f9)],
            ),
            (
                (true, false),
                vec![(0x15b, 0x2039_3399_d0af_6dbd)],
                vec![CLONE3, (0x1d3, 0xc702_ea15_5973_c0f1)],
            ),
            (
                (true, true),
                vec![(0x179, 0x8edc_698c_1e8c_63dd)],
                vec![CLONE3, (0x1f1, 0x062a_1f49_ec5d_88f9)],
            ),
        ];
        assert_fingerprints(Layout::Duplicated, Generation::Before20261206, previous);
    }

    /// Fingerprints (length, hash) of a stack of programs, the first installed first.
    #[cfg(target_arch = "x86_64")]
    type Stack = Vec<(usize, u64)>;

    /// Asserts that `layout` and `generation` compile, for each profile of `expected` (by
    /// `(allow_userns, disk_quota)`), the VM's stack and the spawner's with those fingerprints.
    #[cfg(target_arch = "x86_64")]
    fn assert_fingerprints(
        layout: Layout,
        generation: Generation,
        expected: [((bool, bool), Stack, Stack); 4],
    ) {
        let fingerprints = |stack: Vec<Vec<feather_sys::seccomp::Instruction>>| {
            stack
                .iter()
                .map(|p| feather_sys::seccomp::fingerprint(p))
                .collect::<Vec<_>>()
        };
        for ((allow_userns, disk_quota), vm, spawner) in expected {
            let profile = Profile {
                allow_userns,
                disk_quota,
            };
            let stack = Compiled::in_layout(profile, layout, generation)
                .unwrap()
                .stack();
            assert_eq!(fingerprints(stack), vm, "{profile:?}");
            let stack = spawner_stack(profile, layout, generation).unwrap();
            assert_eq!(fingerprints(stack), spawner, "{profile:?}");
        }
    }

    /// [`Generation::Unlocked20261206`] compiles, instruction for instruction, the folded
    /// programs the builds up to commit ff32a5d installed (fingerprints taken from that build):
    /// a restore accepts only what it compiles itself.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_rules_up_to_ff32a5d_are_those_builds() {
        const CLONE3: (usize, u64) = (0xb, 0x939a_f3b8_ad88_7e5d);
        let previous = [
            // (allow_userns, disk_quota): the VM's stack, the spawner's.
            (
                (false, false),
                vec![CLONE3, (0xdc, 0x6fb1_5d3b_9f95_8e0b)],
                vec![CLONE3, (0x103, 0x59b9_137f_ca61_95e4)],
            ),
            (
                (false, true),
                vec![CLONE3, (0xf5, 0x18b9_bdd2_8424_5896)],
                vec![CLONE3, (0x11c, 0x0913_c204_5730_3511)],
            ),
            (
                (true, false),
                vec![(0xc7, 0xa55e_acce_d175_f7c4)],
                vec![CLONE3, (0x103, 0x59b9_137f_ca61_95e4)],
            ),
            (
                (true, true),
                vec![(0xe0, 0xa491_d9ac_0ec7_67b9)],
                vec![CLONE3, (0x11c, 0x0913_c204_5730_3511)],
            ),
        ];
        assert_fingerprints(Layout::Folded, Generation::Unlocked20261206, previous);
    }

    /// [`Generation::Before20261206`] compiles, instruction for instruction, the folded
    /// programs the builds of 2026-12-05 installed (fingerprints taken from the build before
    /// `open_tree_attr` was denied, commit 8497ed3): a restore accepts only what it compiles
    /// itself.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_rules_before_2026_12_06_are_those_builds() {
        const CLONE3: (usize, u64) = (0xb, 0x939a_f3b8_ad88_7e5d);
        let previous = [
            // (allow_userns, disk_quota): the VM's stack, the spawner's.
            (
                (false, false),
                vec![CLONE3, (0xd7, 0xad86_f5c9_348a_8330)],
                vec![CLONE3, (0xfe, 0x4a53_3e66_754f_6a4f)],
            ),
            (
                (false, true),
                vec![CLONE3, (0xf0, 0x0c23_2569_e2dd_bff5)],
                vec![CLONE3, (0x117, 0xdf2d_f4d9_1599_d30a)],
            ),
            (
                (true, false),
                vec![(0xc2, 0x43f6_abd3_5fe3_3593)],
                vec![CLONE3, (0xfe, 0x4a53_3e66_754f_6a4f)],
            ),
            (
                (true, true),
                vec![(0xdb, 0x26c4_4c21_39c8_bb16)],
                vec![CLONE3, (0x117, 0xdf2d_f4d9_1599_d30a)],
            ),
        ];
        assert_fingerprints(Layout::Folded, Generation::Before20261206, previous);
    }

    /// The builds of 2026-12-06 up to ff32a5d refuse `open_tree_attr` (467, and 467|x32) with
    /// EPERM in the VM's filter and the spawner's, for every profile and layout; every other
    /// call (the spawner's `mount` of `/`, whose propagation changed the same day, aside) is
    /// answered as the rules before 2026-12-06 answer it.
    #[test]
    fn the_rules_up_to_ff32a5d_add_open_tree_attr_alone() {
        assert_rules_add_alone(
            (Generation::Unlocked20261206, Generation::Before20261206),
            &[SYS_OPEN_TREE_ATTR],
            &[libc::SYS_mount],
        );
    }

    /// This build's rules refuse the three io_uring calls, and answer every other call as the
    /// builds up to ff32a5d do, but the spawner's recipe's
    /// ([`this_builds_spawner_clones_a_user_and_mount_namespace_together_only`]).
    #[test]
    fn this_builds_rules_add_io_uring_alone() {
        let recipe = [
            libc::SYS_clone,
            libc::SYS_setns,
            libc::SYS_open_tree,
            libc::SYS_move_mount,
        ];
        assert_rules_add_alone(
            (Generation::Current, Generation::Unlocked20261206),
            &IO_URING_CALLS,
            &recipe,
        );
    }

    /// Asserts that the `(new, old)` rules answer `added` (native and x32 numbers) with EPERM
    /// in the VM's filter and the spawner's, for every profile and layout, and every other call
    /// (every number below 1024, with and without the x32 bit, a few argument patterns) as
    /// `old` answers it, but the spawner's calls of `spawner_changed` (its recipe's, changed
    /// the same day).
    fn assert_rules_add_alone(
        (new_rules, old_rules): (Generation, Generation),
        added: &[libc::c_long],
        spawner_changed: &[libc::c_long],
    ) {
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let arch = match std::env::consts::ARCH {
            "x86_64" => AUDIT_ARCH_X86_64,
            _ => AUDIT_ARCH_AARCH64,
        };
        let x32 = if arch == AUDIT_ARCH_X86_64 {
            0x4000_0000
        } else {
            0
        };
        let few = [[0; 6], [u64::MAX; 6], [1, 2, 3, 4, 5, 6]];
        for profile in all_profiles() {
            for layout in [Layout::Folded, Layout::Duplicated] {
                let programs = [
                    (
                        "main",
                        compile_in(profile, layout, new_rules).unwrap(),
                        compile_in(profile, layout, old_rules).unwrap(),
                        &[][..],
                    ),
                    (
                        "spawner",
                        compile_spawner(profile, layout, new_rules).unwrap(),
                        compile_spawner(profile, layout, old_rules).unwrap(),
                        spawner_changed,
                    ),
                ];
                for (what, new, old, changed) in programs {
                    let (new, old) = (instructions(new), instructions(old));
                    let what = format!("{what} {profile:?} {layout:?}");
                    for native in 0..1024u32 {
                        for nr in [native, native | x32] {
                            for args in few {
                                let answer = evaluate(&new, arch, nr, args);
                                if added.contains(&libc::c_long::from(native)) {
                                    assert_eq!(answer, eperm, "{what}: nr {nr:#x}");
                                } else if !changed.contains(&libc::c_long::from(native)) {
                                    let before = evaluate(&old, arch, nr, args);
                                    assert_eq!(answer, before, "{what}: nr {nr:#x} {args:x?}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// This build's spawner covers its namespace's `/proc` and `/sys` with locked copies: its
    /// filter lets `clone` through into a new user and mount namespace together (and into
    /// none), but with either alone or with any other namespace refused; `setns` of a mount
    /// namespace only (nstype `CLONE_NEWNS`: by a namespace's descriptor); `unshare` of a mount
    /// namespace only; `open_tree` only as a recursive clone by descriptor; `move_mount` only
    /// from descriptor to descriptor; the io_uring calls are refused. Every other call answers
    /// as the earlier rules of 2026-12-06 did.
    #[test]
    fn this_builds_spawner_clones_a_user_and_mount_namespace_together_only() {
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let allow = libc::SECCOMP_RET_ALLOW;
        let arch = match std::env::consts::ARCH {
            "x86_64" => AUDIT_ARCH_X86_64,
            _ => AUDIT_ARCH_AARCH64,
        };
        let (newuser, newns) = (libc::CLONE_NEWUSER as u64, libc::CLONE_NEWNS as u64);
        let plain = libc::SIGCHLD as u64;
        let at = |index: usize, value: u64| {
            let mut args = [0; 6];
            args[index] = value;
            args
        };
        let not_recursive = SPAWNER_OPEN_TREE & !0x8000;
        let calls = [
            (libc::SYS_clone, at(0, plain), allow),
            (libc::SYS_clone, at(0, newuser | newns | plain), allow),
            (libc::SYS_clone, at(0, newuser | plain), eperm),
            (libc::SYS_clone, at(0, newns | plain), eperm),
            (
                libc::SYS_clone,
                at(0, newuser | newns | libc::CLONE_NEWPID as u64),
                eperm,
            ),
            (
                libc::SYS_clone,
                at(0, newuser | newns | libc::CLONE_NEWNET as u64),
                eperm,
            ),
            (libc::SYS_clone, at(0, libc::CLONE_NEWUTS as u64), eperm),
            (libc::SYS_clone, at(0, libc::CLONE_NEWIPC as u64), eperm),
            (libc::SYS_clone, at(0, libc::CLONE_NEWCGROUP as u64), eperm),
            (libc::SYS_setns, at(1, newns), allow),
            (libc::SYS_setns, at(1, 0), eperm),
            (libc::SYS_setns, at(1, newuser), eperm),
            (libc::SYS_setns, at(1, newuser | newns), eperm),
            (libc::SYS_unshare, at(0, newns), allow),
            (libc::SYS_unshare, at(0, 0), eperm),
            (libc::SYS_unshare, at(0, newuser | newns), eperm),
            (libc::SYS_open_tree, at(2, SPAWNER_OPEN_TREE), allow),
            (libc::SYS_open_tree, at(2, not_recursive), eperm),
            (libc::SYS_open_tree, at(2, 0), eperm),
            (libc::SYS_move_mount, at(4, SPAWNER_MOVE_MOUNT), allow),
            (libc::SYS_move_mount, at(4, 0x04), eperm),
            (libc::SYS_move_mount, at(4, 0), eperm),
            (libc::SYS_io_uring_setup, at(0, 1), eperm),
            (libc::SYS_io_uring_enter, at(0, 3), eperm),
            (libc::SYS_io_uring_register, at(0, 3), eperm),
        ];
        let changed = [
            libc::SYS_clone,
            libc::SYS_setns,
            libc::SYS_open_tree,
            libc::SYS_move_mount,
        ]
        .into_iter()
        .chain(IO_URING_CALLS)
        .map(|n| n as u32)
        .collect::<Vec<_>>();
        let x32 = if arch == AUDIT_ARCH_X86_64 {
            0x4000_0000
        } else {
            0
        };
        for profile in all_profiles() {
            let what = format!("{profile:?}");
            let new = compile_spawner(profile, Layout::Folded, Generation::Current).unwrap();
            let new = instructions(new);
            for (nr, args, answer) in calls {
                let got = evaluate(&new, arch, nr as u32, args);
                assert_eq!(got, answer, "{what}: nr {nr} {args:x?}");
            }
            let old = compile_spawner(profile, Layout::Folded, Generation::Unlocked20261206);
            let old = instructions(old.unwrap());
            for native in (0..1024u32).filter(|n| !changed.contains(n)) {
                for nr in [native, native | x32] {
                    for args in [[0; 6], [u64::MAX; 6], [1, 2, 3, 4, 5, 6], at(0, newns)] {
                        let (got, before) = (
                            evaluate(&new, arch, nr, args),
                            evaluate(&old, arch, nr, args),
                        );
                        assert_eq!(got, before, "{what}: nr {nr:#x} {args:x?}");
                    }
                }
            }
        }
    }

    /// The folded programs are about half the duplicated ones (each start loads the VM's and
    /// the spawner's: the kernel checks and translates every instruction). Before folding:
    /// main 389, spawner 467 (default profile). Folded: 198 and 237; x32's own `ioctl` and
    /// `kexec_load` then added 17 to each (27 with a disk cap's two ioctl rules): main
    /// 194–240 and spawner 254–279 over the profiles, within the bounds set before them. The
    /// spawner's locked copies (its `clone`, `setns`, `open_tree` and `move_mount` rules) took
    /// it to 265–290, and the three io_uring calls added 20 to each.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_programs_stay_short() {
        for profile in all_profiles() {
            let main = compile(profile).unwrap().len();
            let spawner = compile_spawner(profile, Layout::Folded, Generation::Current)
                .unwrap()
                .len();
            assert!(
                main < 270,
                "{profile:?}: main filter of {main} instructions"
            );
            assert!(
                spawner < 320,
                "{profile:?}: spawner's of {spawner} instructions"
            );
            assert!(clone3_enosys(Layout::Folded).unwrap().len() < 12);
        }
    }

    #[test]
    fn the_filter_compiles_for_this_machine() {
        for allow_userns in [false, true] {
            for disk_quota in [false, true] {
                let profile = Profile {
                    allow_userns,
                    disk_quota,
                };
                let program = compile(profile).expect("compiles");
                assert!(program.len() > denied().len());
                assert_eq!(
                    compile_clone3(profile).expect("compiles").is_some(),
                    !allow_userns
                );
            }
        }
    }

    /// Set in the child process [`a_disk_cap_keeps_chattr_from_changing_projects`] starts: the
    /// child installs the filter (with a disk cap when the value is "capped") and runs chattr.
    const CHILD: &str = "FEATHER_SECCOMP_TEST_CHILD";

    /// Runs chattr with `args` under the filter of this child's profile; returns its status.
    fn chattr_under_filter(capped: bool, args: &[&str]) -> bool {
        let me = std::env::current_exe().unwrap();
        let output = std::process::Command::new(me)
            .args([
                "--exact",
                "seccomp::tests::a_disk_cap_keeps_chattr_from_changing_projects",
                "--nocapture",
            ])
            .env(CHILD, if capped { "capped" } else { "uncapped" })
            .env("FEATHER_CHATTR_ARGS", args.join(" "))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("chattr status"), "the child ran: {text}");
        text.contains("chattr status ok")
    }

    #[test]
    fn a_disk_cap_keeps_chattr_from_changing_projects() {
        if let Ok(profile) = std::env::var(CHILD) {
            // The child: filter itself, then let chattr (which inherits the filter) try.
            install(Profile {
                allow_userns: false,
                disk_quota: profile == "capped",
            })
            .expect("installs (tests run as root)");
            let args = std::env::var("FEATHER_CHATTR_ARGS").unwrap();
            let ok = std::process::Command::new("chattr")
                .args(args.split(' '))
                .status()
                .is_ok_and(|s| s.success());
            println!("chattr status {}", if ok { "ok" } else { "failed" });
            return;
        }
        let scratch = feather_testkit::ScratchDir::new("seccomp");
        let dir = scratch.0.join("flags");
        std::fs::create_dir(&dir).unwrap();
        let path = dir.to_str().unwrap();
        // FS_IOC_SETFLAGS (+P: the project-inherit flag) and FS_IOC_FSSETXATTR (-p: the
        // project id; 0 is accepted even by filesystems without projects).
        let cases: [&[&str]; 2] = [&["+P", path], &["-p", "0", path]];
        let results: Vec<(bool, bool)> = cases
            .iter()
            .map(|args| {
                (
                    chattr_under_filter(false, args),
                    chattr_under_filter(true, args),
                )
            })
            .collect();
        let _ = std::process::Command::new("chattr")
            .args(["-P", path])
            .status();
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(
            results,
            [(true, false), (true, false)],
            "(without a cap, with one) for +P and -p 0"
        );
    }

    /// Set in the child [`x32s_own_calls_are_refused_by_the_running_kernel`] starts.
    const X32_CHILD: &str = "FEATHER_SECCOMP_X32_TEST_CHILD";

    /// On the running kernel, whose seccomp reads a call's number before the kernel turns an
    /// x32 call down where x32 is switched off (as here: ENOSYS): a Python under the VM's
    /// filter makes x32's `ioctl(TIOCSTI)` (514|x32) and `kexec_load` (528|x32), which fail
    /// with EPERM as the native ones do (before, they passed the filter: ENOSYS here, the
    /// call itself where x32 is on), and x32's `ioctl(TCGETS)`, which passes it. Descriptor -1
    /// and an unknown kexec architecture: a call that passes changes nothing.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x32s_own_calls_are_refused_by_the_running_kernel() {
        // TIOCSTI 0x5412, TIOCLINUX 0x541c, TCGETS 0x5401 (x86_64).
        const CALLS: &str = "import ctypes\n\
            libc = ctypes.CDLL(None, use_errno=True)\n\
            def call(name, nr, *args):\n\
            \x20   result = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])\n\
            \x20   print(name, 0 if result != -1 else ctypes.get_errno())\n\
            x32 = 0x40000000\n\
            call('native-tiocsti', 16, -1, 0x5412, 0)\n\
            call('x32-tiocsti', 514 | x32, -1, 0x5412, 0)\n\
            call('x32-tioclinux', 514 | x32, -1, 0x541c, 0)\n\
            call('x32-tcgets', 514 | x32, -1, 0x5401, 0)\n\
            call('x32-kexec-load', 528 | x32, 0, 0, 0, 0x7fff0000)\n";
        if std::env::var(X32_CHILD).is_ok() {
            install(Profile::default()).expect("installs (tests run as root)");
            let output = std::process::Command::new("python3")
                .args(["-c", CALLS])
                .output()
                .expect("python3 runs");
            print!("{}", String::from_utf8_lossy(&output.stdout));
            eprint!("{}", String::from_utf8_lossy(&output.stderr));
            return;
        }
        let me = std::env::current_exe().unwrap();
        let output = std::process::Command::new(me)
            .args([
                "--exact",
                "seccomp::tests::x32s_own_calls_are_refused_by_the_running_kernel",
                "--nocapture",
            ])
            .env(X32_CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        let eperm = libc::EPERM.to_string();
        let errno = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
                .to_owned()
        };
        for name in [
            "native-tiocsti",
            "x32-tiocsti",
            "x32-tioclinux",
            "x32-kexec-load",
        ] {
            assert_eq!(errno(name), eperm, "{name}:\n{text}");
        }
        assert_ne!(errno("x32-tcgets"), eperm, "{text}");
    }

    /// Set in the child [`open_tree_attr_is_refused_by_the_running_kernel`] starts: the
    /// profile's `allow_userns` ("userns" or "plain").
    const OPEN_TREE_ATTR_CHILD: &str = "FEATHER_SECCOMP_OPEN_TREE_ATTR_TEST_CHILD";

    /// `open_tree_attr(AT_FDCWD, "/", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC, NULL, 0)`, which
    /// is `open_tree` (a detached copy of the mount): "ok", or the error's description.
    fn open_tree_attr_root() -> String {
        const OPEN_TREE_CLONE: libc::c_long = 1;
        // SAFETY: the path is a NUL-terminated string and the attributes are NULL with size 0;
        // a descriptor returned is closed below.
        let fd = unsafe {
            libc::syscall(
                SYS_OPEN_TREE_ATTR,
                libc::AT_FDCWD as libc::c_long,
                c"/".as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_long,
                std::ptr::null::<u8>(),
                0 as libc::c_long,
            )
        };
        if fd < 0 {
            return std::io::Error::last_os_error().to_string();
        }
        // SAFETY: a descriptor the call just made, owned by nothing else.
        unsafe { libc::close(fd as libc::c_int) };
        "ok".into()
    }

    /// On the running kernel (Linux 6.15 or later), as root: `open_tree_attr` clones a mount
    /// before the VM's filter is installed and fails with EPERM under it, whether the VM may
    /// make user namespaces or not. In a user namespace of its own a VM's process holds
    /// CAP_SYS_ADMIN over the mount namespaces it makes there, so the filter is all that keeps
    /// it from cloning a mount from under the covers the host stacks later.
    #[test]
    fn open_tree_attr_is_refused_by_the_running_kernel() {
        if let Ok(userns) = std::env::var(OPEN_TREE_ATTR_CHILD) {
            println!("before {}", open_tree_attr_root());
            install(Profile {
                allow_userns: userns == "userns",
                disk_quota: false,
            })
            .expect("installs (tests run as root)");
            println!("after {}", open_tree_attr_root());
            return;
        }
        let me = std::env::current_exe().unwrap();
        for userns in ["userns", "plain"] {
            let output = std::process::Command::new(&me)
                .args([
                    "--exact",
                    "seccomp::tests::open_tree_attr_is_refused_by_the_running_kernel",
                    "--nocapture",
                ])
                .env(OPEN_TREE_ATTR_CHILD, userns)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&output.stdout);
            let eperm = std::io::Error::from_raw_os_error(libc::EPERM).to_string();
            assert!(
                text.contains("before ok\n"),
                "{userns}: the call works:\n{text}"
            );
            assert!(
                text.contains(&format!("after {eperm}\n")),
                "{userns}: refused under the filter:\n{text}"
            );
        }
    }

    /// Set in the child [`the_spawners_filter_lets_through_its_recipe_alone`] starts.
    const SPAWNER_CHILD: &str = "FEATHER_SPAWNER_FILTER_TEST_CHILD";

    /// The spawner holds CAP_SYS_ADMIN: its filter is what keeps it to its recipe. In a child
    /// (root, as tests run; in a mount namespace of its own, made before the filter), under
    /// the filter: the recipe's calls pass, every other mount or namespace call is refused
    /// with EPERM (each would succeed for root without the filter). `setns` of a mount
    /// namespace (here the child's own) passes; `setns` of a user namespace, or with no type
    /// named, is the filter's EPERM (the kernel's answer to joining the caller's own user
    /// namespace would be EINVAL). The recipe's
    /// `clone` into a user and mount namespace is the PrivateTmp= tests' (a clone needs a
    /// single-threaded process; the rules' answers are
    /// [`this_builds_spawner_clones_a_user_and_mount_namespace_together_only`]'s).
    #[test]
    fn the_spawners_filter_lets_through_its_recipe_alone() {
        use nix::mount::{mount, umount2, MntFlags, MsFlags};
        use nix::sched::{setns, unshare, CloneFlags};
        if let Some(dir) = std::env::var_os(SPAWNER_CHILD) {
            let dir = std::path::PathBuf::from(dir);
            let none = None::<&str>;
            // unshare moves this thread alone (the test's): its namespace is thread-self's,
            // never self's (the main thread's, the host's), which a setns must not join.
            unshare(CloneFlags::CLONE_NEWNS).expect("a mount namespace for the test's mounts");
            mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
                .expect("the test's mounts stay in its namespace");
            let own_mnt = std::fs::File::open("/proc/thread-self/ns/mnt").unwrap();
            let own_user = std::fs::File::open("/proc/thread-self/ns/user").unwrap();
            assert_ne!(
                std::fs::read_link("/proc/thread-self/ns/mnt").unwrap(),
                std::fs::read_link("/proc/self/ns/mnt").unwrap()
            );
            install_spawner(Profile::default()).expect("installs (tests run as root)");
            std::fs::create_dir_all(dir.join("a")).unwrap();
            std::fs::create_dir_all(dir.join("b")).unwrap();
            let report = |name: &str, result: nix::Result<()>| {
                println!(
                    "{name} {}",
                    result.map_or_else(|e| e.desc().to_owned(), |()| "ok".into())
                );
            };
            report("unshare-mnt", unshare(CloneFlags::CLONE_NEWNS));
            report("setns-mnt", setns(&own_mnt, CloneFlags::CLONE_NEWNS));
            report("setns-user", setns(&own_user, CloneFlags::CLONE_NEWUSER));
            report("setns-any", setns(&own_mnt, CloneFlags::empty()));
            report(
                "slave",
                mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_SLAVE, none),
            );
            // Shared, its binds would reach the VM's namespace; private, it would no longer
            // receive what the host hides in the VM later.
            report(
                "shared",
                mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_SHARED, none),
            );
            report(
                "private",
                mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none),
            );
            report(
                "bind",
                mount(
                    Some(&dir.join("a")),
                    &dir.join("b"),
                    none,
                    MsFlags::MS_BIND,
                    none,
                ),
            );
            report(
                "rbind",
                mount(
                    Some(&dir.join("a")),
                    &dir.join("b"),
                    none,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    none,
                ),
            );
            report(
                "tmpfs",
                mount(
                    Some("tmpfs"),
                    &dir.join("a"),
                    Some("tmpfs"),
                    MsFlags::empty(),
                    none,
                ),
            );
            report(
                "remount",
                mount(
                    none,
                    &dir.join("b"),
                    none,
                    MsFlags::MS_REMOUNT | MsFlags::MS_BIND,
                    none,
                ),
            );
            report("umount", umount2(&dir.join("b"), MntFlags::MNT_DETACH));
            report("unshare-net", unshare(CloneFlags::CLONE_NEWNET));
            report(
                "unshare-mnt-uts",
                unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS),
            );
            return;
        }
        // The child's folders: removed here, outside its mount namespace (there `b` is a mount
        // point, which its own removal could not take).
        let scratch = feather_testkit::ScratchDir::new("spawner");
        let dir = scratch.0.clone();
        let me = std::env::current_exe().unwrap();
        let output = std::process::Command::new(me)
            .args([
                "--exact",
                "seccomp::tests::the_spawners_filter_lets_through_its_recipe_alone",
                "--nocapture",
            ])
            .env(SPAWNER_CHILD, &dir)
            .output();
        let output = output.unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        for line in [
            "unshare-mnt ok",
            "setns-mnt ok",
            "setns-user Operation not permitted",
            "setns-any Operation not permitted",
            "slave ok",
            "shared Operation not permitted",
            "private Operation not permitted",
            "bind ok",
            "rbind Operation not permitted",
            "tmpfs Operation not permitted",
            "remount Operation not permitted",
            "umount Operation not permitted",
            "unshare-net Operation not permitted",
            "unshare-mnt-uts Operation not permitted",
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "{line:?} not in\n{text}"
            );
        }
    }

    #[test]
    fn the_documented_table_is_the_filter() {
        let documented =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/seccomp-table.md"))
                .unwrap();
        assert_eq!(
            documented,
            markdown_table(),
            "crates/feather-confine/seccomp-table.md is stale: cargo run -q -p feather-confine --example seccomp-table > crates/feather-confine/seccomp-table.md"
        );
        let guide = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/confinement.md"
        ))
        .unwrap();
        assert!(
            guide.contains(&markdown_table()),
            "docs/confinement.md lacks the current seccomp table"
        );
    }
}
