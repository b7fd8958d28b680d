//! Landlock scoping of abstract unix sockets and signals (Landlock ABI ≥ 6, Linux ≥ 6.12).
//!
//! A scoped process may connect only to abstract unix sockets created inside its own Landlock
//! domain (or a domain nested in it), and signal only processes of its domain. A domain is made
//! by one process restricting itself and is inherited, never joined: two processes that each
//! restrict themselves are siblings that can reach neither each other's sockets nor each
//! other with signals (`tests/security/landlock.rs`).
//!
//! feather therefore makes **one domain per VM**: the VM's init restricts itself before it
//! starts anything, and every process of the VM descends from init — `feather exec` has init
//! fork its program (`feather-vm/src/commands.rs`). Signals are scoped for every VM
//! ([`scope_signals`]); abstract sockets only for VMs sharing the host's network namespace
//! ([`scope_ipc`]), since a VM's own network namespace already fences them and CRIU must reach
//! its parasite code through an abstract socket to checkpoint a VM.
//!
//! On kernels older than 6.12 (ABI < 6) scoping does not exist; both report
//! [`Scoping::Unsupported`] and the VM is confined by its namespaces alone (docs/confinement.md
//! says what that loses).

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
    scope(Scope::from_all(ABI::V6))
}

/// Like [`scope_ipc`], but for signals only: abstract unix sockets stay reachable across the
/// domain's edge (for a process whose network namespace already fences them, and which CRIU
/// must be able to checkpoint: its parasite code, run inside the process, connects to an
/// abstract socket of CRIU's).
pub fn scope_signals() -> Result<Scoping, LandlockError> {
    scope(Scope::Signal.into())
}

fn scope(scopes: landlock::BitFlags<Scope>) -> Result<Scoping, LandlockError> {
    if !matches!(support(), Support::Scoping { .. }) {
        return Ok(Scoping::Unsupported);
    }
    let status = Ruleset::default()
        .set_compatibility(landlock::CompatLevel::BestEffort)
        .scope(scopes)
        .and_then(|ruleset| ruleset.create())
        .map(|created| created.no_new_privs(false))
        .and_then(|created| created.restrict_self())
        .map_err(|e| LandlockError(e.to_string()))?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => Scoping::Enforced,
        RulesetStatus::NotEnforced => Scoping::Unsupported,
    })
}
