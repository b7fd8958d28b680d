//! `org.feather.services=UNIT[,UNIT…]`: the host's units started in a container over the host
//! (`org.feather.base=host`), with their dependencies, before its process — as
//! `feather create --service` does in a VM. The in-VM service manager of crates/feather-svc,
//! `feather-svcd`, is started in the container, detached, and reads the host's unit files
//! through the container's copy-on-write view of the host's root; its services write to the
//! container's layer, never to the host.
//!
//! The init starts them during `create`, after its root is assembled and its Landlock domain
//! made (so the services share it), before it reports ready: a unit that fails is `create`'s
//! error, shown by the engine, and nothing is left behind. A child of the init asks the
//! manager, under what a VM's processes run under ([`Confinement::confine_services`]), so the
//! manager and its services inherit that, not the init's full capability set.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use anyhow::{bail, Context, Result};
use feather_svc::manager::protocol::{FreshState, Request, Response, UnitState, MANAGER_LOG};

use crate::confine::Confinement;

/// Where `feather-svcd` must be: beside this binary (`feather_svc::manager::program`). Over
/// the host's root the container sees the same path.
pub fn check_manager() -> Result<()> {
    let program = feather_svc::manager::program().context("org.feather.services")?;
    if !program.is_file() {
        bail!(
            "annotation org.feather.services: the service manager {} is missing (install {} beside feather-oci)",
            program.display(),
            feather_svc::manager::PROGRAM
        );
    }
    Ok(())
}

/// Starts `units` in the container, and waits until they have settled. Runs in the init,
/// inside the container's namespaces and root.
pub fn start(id: &str, units: &[String], confinement: &Confinement) -> Result<()> {
    let (mut report, child_report) = UnixStream::pair().context("socketpair")?;
    let Some(child) = feather_sys::process::fork().map_err(|e| anyhow::anyhow!("{e}"))? else {
        drop(report);
        let outcome = confinement
            .confine_services()
            .and_then(|()| ask_manager(id, units));
        if let Err(error) = outcome {
            let _ = write!(&child_report, "{error:#}");
            std::process::exit(1);
        }
        std::process::exit(0);
    };
    drop(child_report);
    let mut message = String::new();
    let _ = report.read_to_string(&mut message);
    let status = nix::sys::wait::waitpid(child, None).context("wait for the service start")?;
    if !message.is_empty() {
        bail!("{message}");
    }
    if status != nix::sys::wait::WaitStatus::Exited(child, 0) {
        bail!("annotation org.feather.services: the service start ended as {status:?}");
    }
    Ok(())
}

fn log_tail() -> String {
    let log = std::fs::read_to_string(MANAGER_LOG).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        "empty".to_owned()
    } else {
        tail
    }
}

fn ask_manager(id: &str, units: &[String]) -> Result<()> {
    let request = Request::Start {
        units: units.to_vec(),
        fresh_state: FreshState::No,
    };
    // A failed create leaves no container to look into: the manager's last words go with the
    // error.
    let response = feather_svc::manager::call(&request, Some(id)).with_context(|| {
        format!(
            "annotation org.feather.services (the service manager's log, {MANAGER_LOG}: {})",
            log_tail()
        )
    })?;
    match response {
        Response::Done { units, .. } => {
            let failed: Vec<String> = units
                .iter()
                .filter(|u| u.state == UnitState::Failed)
                .map(|u| {
                    format!(
                        "{} failed: {}",
                        u.name,
                        u.result.as_deref().unwrap_or("unknown reason")
                    )
                })
                .collect();
            if !failed.is_empty() {
                bail!("annotation org.feather.services: {}", failed.join("; "));
            }
            Ok(())
        }
        Response::Error { error } => bail!("annotation org.feather.services: {error}"),
        other => bail!("annotation org.feather.services: unexpected answer from the service manager: {other:?}"),
    }
}
