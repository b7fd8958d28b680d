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
//! as well.

use std::collections::BTreeMap;

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
}

const KEYRINGS: &str = "kernel keyrings are not namespaced: a VM could read or plant keys in \
    the host user's keyrings, and `feather exec` inherits the caller's session keyring";
const MOUNTS: &str = "a VM's mounts are fixed by the isolation recipe; a new or moved mount \
    could uncover what the recipe hides (CAP_SYS_ADMIN is gone too: this is the second wall)";
const MODULES: &str = "kernel modules are loaded into, and removed from, the one shared kernel";
const KEXEC: &str = "replaces the running kernel of the whole machine";
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
        deny!(swapon, "swap space is machine-wide"),
        deny!(swapoff, "swap space is machine-wide"),
        deny!(reboot, "reboots or halts the machine; a VM is stopped through feather"),
        deny!(settimeofday, CLOCK),
        deny!(clock_settime, CLOCK),
        deny!(clock_adjtime, CLOCK),
        deny!(syslog, "reads or clears the host kernel's log, which names host devices, addresses and other VMs' events"),
        deny!(acct, "process accounting is switched on and off for the whole machine"),
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
const X32_SYSCALL_BIT: i64 = 0x4000_0000;

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

/// Adds `call`'s rules for its native number and, on x86_64, its x32 number.
fn add_rules(
    rules: &mut BTreeMap<i64, Vec<SeccompRule>>,
    number: libc::c_long,
    rule: Option<SeccompRule>,
) {
    let mut numbers = vec![number];
    #[cfg(target_arch = "x86_64")]
    numbers.push(number | X32_SYSCALL_BIT);
    for number in numbers {
        // An empty list of rules denies the call whatever its arguments.
        let entry = rules.entry(number).or_default();
        entry.extend(rule.iter().cloned());
    }
}

/// Builds a filter that answers `action` to the calls in `rules` and lets everything else
/// through, for the running architecture.
fn build(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    action: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| compile_error(e))?;
    let filter =
        SeccompFilter::new(rules, SeccompAction::Allow, action, arch).map_err(compile_error)?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| compile_error(e))
}

/// Compiles the main filter (every denied call gets EPERM) for the running architecture.
pub fn compile(profile: Profile) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for call in denied() {
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
    build(rules, SeccompAction::Errno(libc::EPERM as u32))
}

/// The second filter, for VMs without user namespaces: `clone3` answers ENOSYS, so that glibc
/// (pthread_create, posix_spawn) falls back to `clone`, whose flags the main filter can read.
/// seccompiler gives one action per filter, hence a filter of its own. None when user
/// namespaces are allowed.
pub fn compile_clone3(profile: Profile) -> Result<Option<BpfProgram>, SeccompError> {
    if profile.allow_userns {
        return Ok(None);
    }
    let mut rules = BTreeMap::new();
    add_rules(&mut rules, libc::SYS_clone3, None);
    build(rules, SeccompAction::Errno(libc::ENOSYS as u32)).map(Some)
}

fn instructions(program: BpfProgram) -> Vec<feather_sys::seccomp::Instruction> {
    program
        .into_iter()
        .map(|i| feather_sys::seccomp::Instruction {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect()
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
        Ok(Compiled {
            main: instructions(compile(profile)?),
            clone3: compile_clone3(profile)?.map(instructions),
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

/// The filter of the VM's spawner (crates/feather-vm/src/spawner.rs), which holds
/// CAP_SYS_ADMIN for one recipe: a new mount namespace, made private, and two binds. It is
/// the VM's filter with exactly that let through: `unshare` only with `CLONE_NEWNS` alone;
/// `mount` only with the flags `MS_REC|MS_PRIVATE` (propagation) or `MS_BIND` (a bind, not
/// recursive, no remount); `clone` with no namespace flag; `clone3` ENOSYS; `setns` never;
/// every other call of [`denied`] refused, the new mount API included. The processes it makes
/// install the VM's own filter over it (filters stack: the stricter answer wins).
pub fn compile_spawner(profile: Profile) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for call in denied() {
        if call.number == libc::SYS_mount {
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
        not_equal(3, libc::MS_REC | libc::MS_PRIVATE)?,
        not_equal(3, libc::MS_BIND)?,
    ])
    .map_err(compile_error)?;
    add_rules(&mut rules, libc::SYS_mount, Some(recipe_mount));
    let only_mounts =
        SeccompRule::new(vec![not_equal(0, libc::CLONE_NEWNS as u64)?]).map_err(compile_error)?;
    add_rules(&mut rules, libc::SYS_unshare, Some(only_mounts));
    for namespace in [
        libc::CLONE_NEWNS,
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWCGROUP,
    ] {
        let test = ArgTest::HasBits(namespace as u64);
        add_rules(&mut rules, libc::SYS_clone, Some(rule(0, &test)?));
    }
    add_rules(&mut rules, libc::SYS_setns, None);
    build(rules, SeccompAction::Errno(libc::EPERM as u32))
}

/// Installs the spawner's filters ([`compile_spawner`], and `clone3` as ENOSYS) on the
/// calling process, which holds CAP_SYS_ADMIN.
pub fn install_spawner(profile: Profile) -> Result<(), SeccompError> {
    for program in spawner_stack(profile)? {
        feather_sys::seccomp::install_filter(&program)?;
    }
    Ok(())
}

/// The programs [`install_spawner`] stacks, the first installed first.
pub fn spawner_stack(
    profile: Profile,
) -> Result<Vec<Vec<feather_sys::seccomp::Instruction>>, SeccompError> {
    let main = instructions(compile_spawner(profile)?);
    let mut clone3 = BTreeMap::new();
    add_rules(&mut clone3, libc::SYS_clone3, None);
    let clone3 = instructions(build(clone3, SeccompAction::Errno(libc::ENOSYS as u32))?);
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
        let dir = std::env::temp_dir().join(format!("feather-seccomp-{}", std::process::id()));
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

    /// Set in the child [`the_spawners_filter_lets_through_its_recipe_alone`] starts.
    const SPAWNER_CHILD: &str = "FEATHER_SPAWNER_FILTER_TEST_CHILD";

    /// The spawner holds CAP_SYS_ADMIN: its filter is what keeps it to its recipe. In a child
    /// (root, as tests run), under the filter: the recipe's calls pass, every other mount or
    /// namespace call is refused with EPERM (each would succeed for root without the filter).
    #[test]
    fn the_spawners_filter_lets_through_its_recipe_alone() {
        use nix::mount::{mount, umount2, MntFlags, MsFlags};
        use nix::sched::{unshare, CloneFlags};
        if std::env::var(SPAWNER_CHILD).is_ok() {
            install_spawner(Profile::default()).expect("installs (tests run as root)");
            let dir = std::env::temp_dir().join(format!("feather-spawner-{}", std::process::id()));
            std::fs::create_dir_all(dir.join("a")).unwrap();
            std::fs::create_dir_all(dir.join("b")).unwrap();
            let none = None::<&str>;
            let report = |name: &str, result: nix::Result<()>| {
                println!(
                    "{name} {}",
                    result.map_or_else(|e| e.desc().to_owned(), |()| "ok".into())
                );
            };
            report("unshare-mnt", unshare(CloneFlags::CLONE_NEWNS));
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
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        let me = std::env::current_exe().unwrap();
        let output = std::process::Command::new(me)
            .args([
                "--exact",
                "seccomp::tests::the_spawners_filter_lets_through_its_recipe_alone",
                "--nocapture",
            ])
            .env(SPAWNER_CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        for line in [
            "unshare-mnt ok",
            "private ok",
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
