//! The VM a broker serves. Every part of the broker (channels, the policy watch, invocations)
//! starts from it, so it sits below them all.

use std::path::PathBuf;

use crate::policy::Party;

/// The VM a broker serves: the source of every request the broker handles.
#[derive(Clone, Debug)]
pub struct VmSide {
    pub name: String,
    pub tags: Vec<String>,
    /// Host pid of the VM's init: its namespaces are the VM's.
    pub init_pid: i32,
    /// The VM's run folder on the host (`<run>/<name>`).
    pub run_dir: PathBuf,
    /// A throw-away VM (`feather run --rm`): its life is one command's.
    pub throw_away: bool,
}

impl VmSide {
    pub fn party(&self) -> Party {
        Party::vm(self.name.clone(), &self.tags)
    }
}
