//! The VMs of a state root as the shuttle broker in a keeper sees them: how to find a VM's
//! init, start a VM on demand, start a service in it, and run a program in it.
//!
//! All are library calls ([`crate::lifecycle`], [`crate::services`], [`crate::program`]) made
//! from the keeper's threads: none enters a mount namespace, and the one namespace they need
//! (a VM's network namespace, to reach its init) is entered by a short-lived thread of its own.
//! Work that must enter a VM's mount namespace (handing paths over, the D-Bus proxy's jail)
//! runs in a fresh single-threaded helper process: `feather-keeper`'s hidden subcommands.

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use feather_core::{StateRoot, VmName, VmStatus};
use feather_shuttle::peers::{PeersError, Running};
use feather_shuttle::Peers;
use feather_svc::manager::client_protocol::Ask;
use feather_svc::manager::protocol::{FreshState, Response, ServiceInfo};
use nix::sys::signal::Signal;

use crate::program::{launch, Launched};
use crate::workload::Workload;
use crate::{lifecycle, services};

pub struct RootPeers {
    root: StateRoot,
}

impl RootPeers {
    pub fn new(root: &StateRoot) -> RootPeers {
        RootPeers { root: root.clone() }
    }
}

fn vm_name(vm: &str) -> Result<VmName, PeersError> {
    vm.parse()
        .map_err(|e: feather_core::Error| PeersError::BadName {
            vm: vm.to_owned(),
            why: e.to_string(),
        })
}

/// An error unless every unit of a start's answer started.
fn all_started(vm: &str, units: &[ServiceInfo]) -> Result<(), PeersError> {
    let failed = services::failures(units, &[]);
    if failed.is_empty() {
        return Ok(());
    }
    Err(PeersError::ServicesFailed {
        vm: vm.to_owned(),
        units: failed.iter().map(|u| u.name.clone()).collect(),
        why: failed
            .iter()
            .map(|u| u.result.clone().unwrap_or_else(|| "unknown reason".into()))
            .collect(),
    })
}

impl Peers for RootPeers {
    fn init_pid(&self, vm: &str) -> Result<Option<i32>, PeersError> {
        let dir = self.root.open(&vm_name(vm)?).map_err(PeersError::host)?;
        let state = lifecycle::status(&dir).map_err(PeersError::host)?;
        Ok(match state.status {
            VmStatus::Running => state.init_pid,
            _ => None,
        })
    }

    fn start(&self, vm: &str) -> Result<i32, PeersError> {
        if let Some(pid) = self.init_pid(vm)? {
            return Ok(pid);
        }
        let started = services::start(&self.root, &vm_name(vm)?);
        // Another request may have started it meanwhile: what counts is that it runs (a
        // configured service that failed is for `feather service status` to tell).
        match (self.init_pid(vm)?, started) {
            (Some(pid), _) => Ok(pid),
            (None, Err(why)) => Err(PeersError::host(why)),
            (None, Ok(_)) => Err(PeersError::StoppedAfterStart { vm: vm.to_owned() }),
        }
    }

    fn start_service(&self, vm: &str, unit: &str) -> Result<(), PeersError> {
        let ask = Ask::Start {
            units: vec![unit.to_owned()],
            fresh_state: FreshState::No,
        };
        match services::call(&self.root, &vm_name(vm)?, &ask).map_err(PeersError::host)? {
            Response::Done { units, .. } => all_started(vm, &units),
            _ => Ok(()),
        }
    }

    fn run(
        &self,
        vm: &str,
        argv: &[String],
        uid: u32,
        stdio: [OwnedFd; 3],
    ) -> Result<Arc<dyn Running>, PeersError> {
        let workload = Workload {
            argv: argv.to_vec(),
            user: Some(uid.to_string()),
            ..Workload::default()
        };
        let launched =
            launch(&self.root, &vm_name(vm)?, &workload, stdio).map_err(PeersError::host)?;
        Ok(Arc::new(InVm(Mutex::new(launched))))
    }

    fn helper(&self, subcommand: &str) -> Result<Command, PeersError> {
        let helper = crate::launch::program().map_err(PeersError::OwnBinary)?;
        if !helper.exists() {
            let beside = std::env::current_exe().map_err(PeersError::OwnBinary)?;
            return Err(PeersError::HelperMissing { helper, beside });
        }
        let mut command = feather_sys::process::command(helper);
        command.arg(subcommand).stdin(Stdio::null());
        Ok(command)
    }

    fn handing_over(&self, source: &str, target: &str, fsids: &[u64]) -> Result<(), PeersError> {
        let dir = self
            .root
            .open(&vm_name(source)?)
            .map_err(PeersError::host)?;
        crate::handed_over::note(&dir, target, fsids).map_err(PeersError::host)
    }

    fn tags(&self, vm: &str) -> Vec<String> {
        vm_name(vm)
            .ok()
            .and_then(|name| self.root.open(&name).ok())
            .and_then(|dir| dir.read_config().ok())
            .map(|config| config.tags)
            .unwrap_or_default()
    }
}

/// A program [`RootPeers::run`] started.
struct InVm(Mutex<Launched>);

impl InVm {
    fn launched(&self) -> std::sync::MutexGuard<'_, Launched> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Running for InVm {
    fn try_wait(&self) -> Result<Option<i32>, PeersError> {
        self.launched().try_wait().map_err(PeersError::host)
    }

    fn signal(&self, signal: Signal) -> Result<(), PeersError> {
        self.launched().signal(signal).map_err(PeersError::host)
    }
}
