//! The VMs of a state root as the shuttle broker in a keeper sees them: how to find a VM's
//! init, start a VM on demand, and start a service in it.
//!
//! Starting a VM or entering one to reach its service manager is done by running the feather
//! binary itself, as `feather start` and `feather service start` would be run: the keeper is
//! multi-threaded (its broker serves channels), and entering a VM's namespaces must happen in a
//! fresh single-threaded process, which exec gives safely where a bare fork would not.

use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};

use feather_core::store::{DEFAULT_RUN_DIR, DEFAULT_STATE_DIR};
use feather_core::{StateRoot, VmName, VmStatus};
use feather_shuttle::Peers;

use crate::lifecycle;

pub struct RootPeers {
    root: StateRoot,
}

/// The `feather` command line binary: beside the running one, which in a background keeper is
/// `feather-keeper` (crate::keeper::KEEPER_PROGRAM).
fn cli_program() -> Result<std::path::PathBuf, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the feather binary: {e}"))?;
    let cli = exe.with_file_name("feather");
    if cli.exists() {
        Ok(cli)
    } else {
        Err(format!(
            "{} is missing (install it beside {})",
            cli.display(),
            exe.display()
        ))
    }
}

impl RootPeers {
    pub fn new(root: &StateRoot) -> RootPeers {
        RootPeers { root: root.clone() }
    }

    /// A `feather` command on this state root, ready for arguments.
    fn command(&self) -> Result<Command, String> {
        let mut command = Command::new(cli_program()?);
        command.env_remove("FEATHER_ROOT");
        let is_default = self.root.dir() == std::path::Path::new(DEFAULT_STATE_DIR)
            && self.root.run_dir() == std::path::Path::new(DEFAULT_RUN_DIR);
        if !is_default {
            command.arg("--root").arg(self.root.dir());
        }
        Ok(command)
    }

    /// Runs `feather ARGS…` on this state root; its error output is the error.
    fn feather(&self, args: &[&str]) -> Result<(), String> {
        let output = self
            .command()?
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run feather: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            Err(stderr.trim().trim_start_matches("feather: ").to_owned())
        }
    }
}

fn vm_name(vm: &str) -> Result<VmName, String> {
    vm.parse().map_err(|e: feather_core::Error| e.to_string())
}

impl Peers for RootPeers {
    fn init_pid(&self, vm: &str) -> Result<Option<i32>, String> {
        let dir = self.root.open(&vm_name(vm)?).map_err(|e| e.to_string())?;
        let state = lifecycle::status(&dir).map_err(|e| e.to_string())?;
        Ok(match state.status {
            VmStatus::Running => state.init_pid,
            _ => None,
        })
    }

    fn start(&self, vm: &str) -> Result<i32, String> {
        if let Some(pid) = self.init_pid(vm)? {
            return Ok(pid);
        }
        let started = self.feather(&["start", vm]);
        // Another request may have started it meanwhile: what counts is that it runs.
        match (self.init_pid(vm)?, started) {
            (Some(pid), _) => Ok(pid),
            (None, Err(why)) => Err(why),
            (None, Ok(())) => Err(format!("VM {vm} stopped right after it started")),
        }
    }

    fn start_service(&self, vm: &str, unit: &str) -> Result<(), String> {
        self.feather(&["service", "start", vm, unit])
    }

    fn run(
        &self,
        vm: &str,
        argv: &[String],
        uid: u32,
        stdio: [OwnedFd; 3],
    ) -> Result<Child, String> {
        let [stdin, stdout, stderr] = stdio;
        self.command()?
            .args(["exec", "--user", &uid.to_string(), vm, "--"])
            .args(argv)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot run feather exec: {e}"))
    }

    fn helper(&self, subcommand: &str) -> Result<Command, String> {
        let mut command = Command::new(cli_program()?);
        command.arg(subcommand).stdin(Stdio::null());
        Ok(command)
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
