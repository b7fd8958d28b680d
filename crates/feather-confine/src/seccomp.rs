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
//! Left allowed on purpose: `ptrace` and `process_vm_readv/writev` (gdb and strace work on the
//! VM's own processes; the pid namespace keeps every other process unnameable), `unshare` and
//! `clone` with new namespaces (sandboxes such as bubblewrap or Chromium's work inside a VM;
//! user namespaces give no power over anything the VM does not own), `adjtimex` (read-only
//! without CAP_SYS_TIME, used by time-sync status tools), `name_to_handle_at` (only its partner
//! `open_by_handle_at` escapes).
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
    /// For ioctl: the one request denied (the other requests stay allowed).
    pub ioctl_request: Option<u64>,
    pub reason: &'static str,
}

macro_rules! deny {
    ($call:ident, $reason:expr) => {
        Denied {
            name: stringify!($call),
            number: paste_sys!($call),
            ioctl_request: None,
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
            ioctl_request: Some(libc::TIOCSTI as u64),
            reason: "pushes characters into a terminal's input: with a host terminal as stdin (`feather exec` without -t) a VM could type commands into the user's host shell",
        },
        Denied {
            name: "ioctl(TIOCLINUX)",
            number: libc::SYS_ioctl,
            ioctl_request: Some(libc::TIOCLINUX as u64),
            reason: "virtual-console control: selection paste into the console (the same injection as TIOCSTI) and console-wide settings",
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

/// Compiles the filter for the running architecture.
pub fn compile() -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for call in denied() {
        let rule = match call.ioctl_request {
            None => vec![],
            // The kernel reads an ioctl request as a 32-bit unsigned int, so only the low 32
            // bits are compared: setting high bits cannot dodge the rule.
            Some(request) => vec![SeccompRule::new(vec![SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                request,
            )
            .map_err(|e| SeccompError::Compile(e.to_string()))?])
            .map_err(|e| SeccompError::Compile(e.to_string()))?],
        };
        let mut numbers = vec![call.number];
        #[cfg(target_arch = "x86_64")]
        numbers.push(call.number | X32_SYSCALL_BIT);
        for number in numbers {
            rules
                .entry(number)
                .or_default()
                .extend(rule.iter().cloned());
        }
    }
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Compile(e.to_string()))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| SeccompError::Compile(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Compile(e.to_string()))
}

/// Compiles and installs the filter on the calling process. Call it while the process still
/// holds CAP_SYS_ADMIN — before the capability set is reduced — so that no_new_privs need not
/// be set (see the crate documentation), and after everything that itself needs a denied call
/// (the VM's mounts).
pub fn install() -> Result<(), SeccompError> {
    let program: Vec<feather_sys::seccomp::Instruction> = compile()?
        .into_iter()
        .map(|i| feather_sys::seccomp::Instruction {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    feather_sys::seccomp::install_filter(&program)?;
    Ok(())
}

/// The table of the crate docs and `docs/confinement.md`, from [`denied`].
pub fn markdown_table() -> String {
    let mut out = String::new();
    let mut seen = Vec::new();
    for call in denied() {
        if seen.contains(&call.reason) && call.ioctl_request.is_none() {
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
        let program = compile().expect("compiles");
        assert!(program.len() > denied().len());
    }

    #[test]
    fn the_documented_table_is_the_filter() {
        if std::env::var_os("FEATHER_BLESS").is_some() {
            std::fs::write(
                concat!(env!("CARGO_MANIFEST_DIR"), "/seccomp-table.md"),
                markdown_table(),
            )
            .unwrap();
        }
        let documented =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/seccomp-table.md"))
                .unwrap();
        assert_eq!(
            documented,
            markdown_table(),
            "crates/feather-confine/seccomp-table.md is stale: regenerate it from markdown_table()"
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
