//! Service duplication: the host's installed services, run as private copies inside VMs.
//!
//! - [`syntax`], [`words`], [`specifier`], [`values`]: unit files read as systemd reads them
//! - [`name`]: unit names, templates and instances
//! - [`paths`]: the search path, precedence, aliases, masks, drop-ins, `.wants/`
//! - [`unit`]: what a unit says, typed
//! - [`sysv`]: SysV init scripts and their LSB headers
//! - [`graph`]: the dependency closure, start order in waves, cycles
//! - [`infra`]: host-infrastructure units that are not duplicated, and what stands in for them
//! - [`calendar`]: `OnCalendar=` events of timer units
//! - [`catalog`]: the host's services and whether each can be duplicated
//! - [`manager`]: the in-VM service manager
//! - [`state`]: empty state for a service (`--fresh-state`): its data folders and initialiser
//! - [`tmpfiles`]: the host's `tmpfiles.d` folders under `/run`, made in a VM's fresh `/run`

pub mod calendar;
pub mod catalog;
pub mod conditions;
pub mod error;
pub mod graph;
pub mod infra;
pub mod manager;
pub mod name;
pub mod paths;
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
