//! Service duplication: the host's installed services, run as private copies inside VMs.
//!
//! - [`syntax`], [`words`], [`specifier`], [`values`]: unit files read as systemd reads them
//! - [`name`]: unit names, templates and instances
//! - [`paths`]: the search path, precedence, aliases, masks, drop-ins, `.wants/`
//! - [`generators`]: the host's systemd generators, run for a VM into its `/run`
//! - [`unit`](mod@unit): what a unit says, typed
//! - [`sysv`]: SysV init scripts and their LSB headers
//! - [`graph`]: the dependency closure, start order in waves, cycles
//! - [`infra`]: host-infrastructure units that are not duplicated, and what stands in for them
//! - [`calendar`]: `OnCalendar=` events of timer units
//! - [`catalog`]: the host's services and whether each can be duplicated
//! - [`conditions`]: `Condition*=`/`Assert*=`, checked when a unit starts
//! - [`filesystem`]: `ProtectSystem=`, `ProtectHome=`, `ReadWritePaths=`, …: which path a
//!   unit may write, only read, or not reach
//! - [`manager`]: the in-VM service manager and its client: [`manager::protocol`] (client ↔
//!   manager: a versioned hello, then one typed request and one typed response),
//!   [`manager::client_protocol`] (host ↔ client: one typed ask, typed JSON lines back, read by
//!   the host as hostile input), [`manager::client`] (`feather-svcd --client`), and the
//!   supervisor, whose decisions
//!   (start and stop order, readiness by `Type=`, `Restart=`, start limits, `KillMode=`, timers)
//!   are pure functions in `manager/supervisor/decide.rs`, unit-tested without root
//! - [`state`]: empty state for a service (`--fresh-state`): its data folders and initialiser
//! - [`private_tmp`]: `PrivateTmp=` between the manager and the VM's spawner, and the spawner's
//!   child becoming the unit's process
//! - [`tmpfiles`]: the host's `tmpfiles.d` folders under `/run`, made in a VM's fresh `/run`
//! - [`error`]: [`SvcError`] and the parsers' errors; the bottom layer, using no other module
//!
//! Dependencies point one way: `error` at the bottom; the parsers (`values`, `words`,
//! `specifier`, `syntax`, `calendar`) above it; `name`, `unit`, `sysv`, `paths`, `generators`,
//! `graph`, `catalog` above those; `manager` on top. No two modules use each other.

pub mod calendar;
pub mod catalog;
pub mod conditions;
pub mod error;
pub mod filesystem;
pub mod generators;
pub mod graph;
pub mod infra;
pub mod manager;
pub mod name;
pub mod paths;
pub mod private_tmp;
mod raw;
pub mod specifier;
pub mod state;
pub mod syntax;
pub mod sysv;
pub mod tmpfiles;
pub mod unit;
pub mod values;
pub mod words;

pub use error::{Result, SvcError};
pub use name::UnitName;
pub use paths::UnitPaths;
pub use unit::Unit;
