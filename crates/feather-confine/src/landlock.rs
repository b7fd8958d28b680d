//! Landlock scoping of abstract unix sockets and signals (Landlock ABI ≥ 6, Linux ≥ 6.12).
//!
//! A scoped process may connect only to abstract unix sockets created inside its own Landlock
//! domain (or a domain nested in it), and signal only processes of its domain. That is a fine
//! fence *between* sandboxes — but a domain is made by one process restricting itself, and is
//! inherited, never joined. A VM's processes come from two roots: its init (services, the
//! first workload) and each `feather exec`, which enters from the host. If each restricted
//! itself, each would be a sibling domain, and a service started by init could neither signal
//! nor reach the abstract socket of a program started by `feather exec`, nor the reverse — the
//! VM's own IPC would break (`tests/security/landlock.rs` shows it). Scoping init alone is no
//! better: the probe's "init's → exec'd" column then breaks in ten cells, ptrace and
//! `/proc/<pid>` included (a Landlock domain may not ptrace outside itself), and init can no
//! longer signal exec'd programs when it stops the VM.
//!
//! feather therefore does not scope VM processes with Landlock today: the VM boundary for
//! these two channels is drawn by namespaces, which every VM process shares. Abstract unix
//! sockets live in a network namespace, and each VM has its own; signals, ptrace and
//! `/proc/<pid>` name processes through the pid namespace, and a VM's holds only the VM's
//! processes. The probe matrix (`docs/ipc-matrix.md`) shows both channels blocked host→VM,
//! VM→host and VM→VM without Landlock. What Landlock would add is defence in depth for the
//! day a namespace is shared or a descriptor crosses (a pidfd handed in by a broker): the plan
//! is one domain per VM, created by init, with `feather exec` forking its program through init
//! so that every process of the VM is in that one domain.
//!
//! On kernels older than 6.12 (ABI < 6) scoping does not exist; [`scope_ipc`] reports
//! [`Scoping::Unsupported`] and nothing is lost that the namespaces do not already provide.

use landlock::{
    Access, Compatible, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

/// The first Landlock ABI with IPC scoping.
pub const SCOPING_ABI: i64 = 6;

/// What the running kernel offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// Landlock is not built in or not enabled at boot.
    Missing,
    /// Landlock without IPC scoping (ABI 1–5).
    NoScoping { abi: i64 },
    /// Abstract-socket and signal scoping available.
    Scoping { abi: i64 },
}

pub fn support() -> Support {
    match feather_sys::seccomp::landlock_abi() {
        0 => Support::Missing,
        abi if abi < SCOPING_ABI => Support::NoScoping { abi },
        abi => Support::Scoping { abi },
    }
}

impl std::fmt::Display for Support {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Support::Missing => write!(f, "Landlock not available"),
            Support::NoScoping { abi } => {
                write!(f, "Landlock ABI {abi}: no scoping of abstract sockets and signals (needs ABI {SCOPING_ABI}, Linux 6.12)")
            }
            Support::Scoping { abi } => {
                write!(
                    f,
                    "Landlock ABI {abi}: abstract-socket and signal scoping available"
                )
            }
        }
    }
}

/// The result of [`scope_ipc`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scoping {
    Enforced,
    /// The kernel has no scoping (see [`support`]); the caller runs unscoped.
    Unsupported,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot scope abstract sockets and signals with Landlock: {0}")]
pub struct LandlockError(String);

/// Puts the caller, and every process it starts from now on, in a new Landlock domain that
/// can reach abstract unix sockets and send signals only within itself. Does not set
/// no_new_privs: the caller must hold CAP_SYS_ADMIN (set-uid programs keep working).
pub fn scope_ipc() -> Result<Scoping, LandlockError> {
    if !matches!(support(), Support::Scoping { .. }) {
        return Ok(Scoping::Unsupported);
    }
    let status = Ruleset::default()
        .set_compatibility(landlock::CompatLevel::BestEffort)
        .scope(Scope::from_all(ABI::V6))
        .and_then(|ruleset| ruleset.create())
        .map(|created| created.no_new_privs(false))
        .and_then(|created| created.restrict_self())
        .map_err(|e| LandlockError(e.to_string()))?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => Scoping::Enforced,
        RulesetStatus::NotEnforced => Scoping::Unsupported,
    })
}
