//! `feather service …`: the catalogue (read on the host), and the commands that reach a VM's
//! service manager through feather_vm::services, whose typed answers are formatted here. What a
//! VM wrote in them (names, states, results, log lines) is escaped for the terminal;
//! `--json` is for programs and stays exact.

use std::io::Write;
use std::process::ExitCode;

use feather_core::{StateRoot, VmName};
use feather_svc::manager::client_protocol::Ask;
use feather_svc::manager::protocol::{FreshState, Response, ServiceInfo};
use feather_vm::services;

use crate::cli::ServiceCommand;
use crate::output;

pub fn run(root: &StateRoot, command: ServiceCommand) -> anyhow::Result<ExitCode> {
    let (name, ask, json) = match command {
        ServiceCommand::Catalog { json } => {
            let entries = feather_svc::catalog::catalog(std::path::Path::new("/"))?;
            if json {
                output::json(&entries)?;
            } else {
                output::catalog(&entries)?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        ServiceCommand::Logs {
            name,
            unit,
            lines,
            follow,
        } => return logs(root, &name.parse()?, &unit, lines, follow),
        ServiceCommand::Start {
            name,
            units,
            fresh_state,
            json,
        } => {
            let fresh_state = if fresh_state {
                FreshState::Always
            } else {
                FreshState::No
            };
            (name, Ask::Start { units, fresh_state }, json)
        }
        ServiceCommand::Stop { name, units, json } => (name, Ask::Stop { units }, json),
        ServiceCommand::Restart { name, units, json } => (name, Ask::Restart { units }, json),
        ServiceCommand::Reload { name, units, json } => (name, Ask::Reload { units }, json),
        ServiceCommand::Ls { name, json } => (name, Ask::List, json),
        ServiceCommand::Status {
            name,
            unit,
            lines,
            json,
        } => (name, Ask::Status { unit, lines }, json),
    };
    let name: VmName = name.parse()?;
    let answer = services::call(root, &name, &ask)?;
    show(&name, answer, json, false)
}

/// Shows the manager's answer; `quiet`: only failures. Exit status 1 if a unit failed.
fn show(name: &VmName, answer: Response, json: bool, quiet: bool) -> anyhow::Result<ExitCode> {
    match answer {
        Response::List { units } => {
            if json {
                output::json(&units)?;
            } else {
                output::services(&units)?;
            }
        }
        Response::Done {
            units,
            reload_failed,
        } => {
            if json && !quiet {
                output::json(&units)?;
            } else if !quiet {
                output::services(&units)?;
            }
            let failed = services::failures(&units, &reload_failed);
            if !failed.is_empty() {
                report_failures(name, &failed);
                return Ok(ExitCode::from(1));
            }
        }
        Response::Status { unit, log } => {
            if json {
                output::json(&serde_json::json!({ "unit": unit, "log": log }))?;
            } else {
                output::service_status(&unit, &log)?;
            }
        }
        // services::call returns refusals as errors and checks the hello.
        Response::Error { error } => anyhow::bail!("VM {name}: {error}"),
        Response::Hello { .. } => anyhow::bail!("VM {name}: the service manager said hello twice"),
    }
    Ok(ExitCode::SUCCESS)
}

fn report_failures(name: &VmName, failed: &[&ServiceInfo]) {
    for unit in failed {
        let line = format!(
            "feather: VM {name}: {} failed: {} (see `feather service status {name} {}`)",
            unit.name,
            unit.result.as_deref().unwrap_or("unknown reason"),
            unit.name
        );
        eprintln!("{}", feather_core::display::escape_for_terminal(&line));
    }
}

/// The last `lines` of a unit's log, then (with `follow`) what is appended; every line is
/// escaped for the terminal it reaches, since a service writes what it likes.
fn logs(
    root: &StateRoot,
    name: &VmName,
    unit: &str,
    lines: usize,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let mut show = |line: &[u8]| {
        writeln!(out, "{}", feather_core::display::escape_bytes(line))
            .and_then(|()| out.flush())
            .is_ok()
    };
    services::logs(root, name, unit, lines, follow, &mut show)?;
    Ok(ExitCode::SUCCESS)
}

/// Starts VM `name` and the services it was created with, if any; only failures are shown.
pub fn start(root: &StateRoot, name: &VmName) -> anyhow::Result<ExitCode> {
    let units = services::start(root, name)?;
    show(name, done(units), false, true)
}

/// Starts the services a running VM was created with, if any; only failures are shown.
pub fn start_configured(root: &StateRoot, name: &VmName) -> anyhow::Result<ExitCode> {
    let units = services::start_configured(root, name)?;
    show(name, done(units), false, true)
}

fn done(units: Vec<ServiceInfo>) -> Response {
    Response::Done {
        units,
        reload_failed: Vec::new(),
    }
}
