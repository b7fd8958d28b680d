//! `feather service …`: the catalogue (read on the host), and the commands that reach a VM's
//! service manager. Those enter the VM as `feather exec` does and run this same binary's
//! hidden `__service` there, which talks to the manager (`feather-svcd`, started there by the
//! first `start`) over its socket in the VM's /run.

use std::process::ExitCode;

use anyhow::Context;
use clap::ValueEnum;
use feather_core::{StateRoot, VmName};
use feather_svc::manager::protocol::{FreshState, Refusal, Request, Response, UnitState};
use feather_svc::manager::{self};
use feather_vm::exec::{exec, exec_escaping_output};
use feather_vm::workload::Workload;

use crate::cli::{ClientFreshState, ServiceClientArgs, ServiceCommand, ServiceOp};
use crate::output;

pub fn run(root: &StateRoot, command: ServiceCommand) -> anyhow::Result<ExitCode> {
    call_in_vm(root, command, false, None)
}

/// Runs one `service` command inside the VM; `quiet`: only failures are printed;
/// `configured_fresh`: the `--fresh-state` mode of the VM's configured services.
fn call_in_vm(
    root: &StateRoot,
    command: ServiceCommand,
    quiet: bool,
    configured_fresh: Option<ClientFreshState>,
) -> anyhow::Result<ExitCode> {
    let mut follow = false;
    let mut fresh_state = None;
    let (name, op, units, json, lines) = match command {
        ServiceCommand::Catalog { json } => {
            let entries = feather_svc::catalog::catalog(std::path::Path::new("/"))?;
            if json {
                output::json(&entries)?;
            } else {
                output::catalog(&entries);
            }
            return Ok(ExitCode::SUCCESS);
        }
        ServiceCommand::Start {
            name,
            units,
            fresh_state: fresh,
            json,
        } => {
            fresh_state = fresh.then_some(ClientFreshState::Always);
            (name, ServiceOp::Start, units, json, 0)
        }
        ServiceCommand::Stop { name, units, json } => (name, ServiceOp::Stop, units, json, 0),
        ServiceCommand::Restart { name, units, json } => (name, ServiceOp::Restart, units, json, 0),
        ServiceCommand::Reload { name, units, json } => (name, ServiceOp::Reload, units, json, 0),
        ServiceCommand::Ls { name, json } => (name, ServiceOp::Ls, Vec::new(), json, 0),
        ServiceCommand::Logs {
            name,
            unit,
            lines,
            follow: f,
        } => {
            follow = f;
            (name, ServiceOp::Logs, vec![unit], false, lines)
        }
        ServiceCommand::Status {
            name,
            unit,
            lines,
            json,
        } => (name, ServiceOp::Status, vec![unit], json, lines),
    };
    let name: VmName = name.parse()?;
    let exe = std::env::current_exe().context("cannot find feather's own binary")?;
    let config = root.open(&name)?.read_config()?;
    let inside = config.base.join(exe.strip_prefix("/").unwrap_or(&exe));
    if !inside.exists() {
        anyhow::bail!(
            "VM {name} cannot run feather's service manager: its base {} has no {} (services run in VMs over the host's root)",
            config.base.display(),
            exe.display()
        );
    }
    let manager = manager::program().with_context(|| format!("VM {name}"))?;
    if !manager.exists() {
        anyhow::bail!(
            "VM {name} cannot run its service manager: {} is missing; install {} beside feather (cargo builds and installs both)",
            manager.display(),
            manager::PROGRAM
        );
    }
    let mut argv = vec![
        exe.display().to_string(),
        "__service".to_owned(),
        "--vm".to_owned(),
        name.to_string(),
        "--lines".to_owned(),
        lines.to_string(),
    ];
    if json {
        argv.push("--json".to_owned());
    }
    if follow {
        argv.push("--follow".to_owned());
    }
    if quiet {
        argv.push("--quiet".to_owned());
    }
    if let Some(fresh) = fresh_state.or(configured_fresh) {
        argv.push(format!("--fresh-state={}", value_name(fresh)));
    }
    argv.push(value_name(op));
    argv.extend(units);
    let workload = Workload {
        argv,
        ..Workload::default()
    };
    // The client runs inside the VM, so what it prints is the VM's to choose: shown escaped,
    // as everything else a VM wrote; JSON is for programs and stays exact.
    let code = if json {
        exec(root, &name, &workload, false)?
    } else {
        exec_escaping_output(root, &name, &workload)?
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// How a value of the hidden `__service` command is written on its command line.
fn value_name(value: impl ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

/// Inside the VM: one request to its service manager, and the answer shown.
pub fn in_vm(args: ServiceClientArgs) -> anyhow::Result<ExitCode> {
    let vm = &args.vm;
    let request = match args.op {
        ServiceOp::Logs => {
            return logs(
                vm,
                args.units.first().map_or("", String::as_str),
                args.lines,
                args.follow,
            )
        }
        ServiceOp::Start => Request::Start {
            units: args.units,
            fresh_state: match args.fresh_state {
                None => FreshState::No,
                Some(ClientFreshState::Always) => FreshState::Always,
                Some(ClientFreshState::Once) => FreshState::Once,
            },
        },
        ServiceOp::Restart => {
            // Stop those of the units that run (a stopped one is simply started), then start.
            for unit in args.units.iter().filter(|_| manager::running()) {
                let stop = Request::Stop {
                    units: vec![unit.clone()],
                };
                match manager::call(&stop, None).with_context(|| format!("VM {vm}"))? {
                    // A stopped unit is simply started.
                    Response::Error {
                        error: Refusal::NotStarted { .. },
                    } => {}
                    Response::Error { error } => anyhow::bail!("VM {vm}: {error}"),
                    _ => {}
                }
            }
            Request::Start {
                units: args.units,
                fresh_state: FreshState::No,
            }
        }
        ServiceOp::Stop => Request::Stop { units: args.units },
        ServiceOp::Reload => Request::Reload { units: args.units },
        ServiceOp::Ls => Request::List,
        ServiceOp::Status => Request::Status {
            unit: args.units.first().cloned().unwrap_or_default(),
            lines: args.lines,
        },
    };
    let starts = matches!(request, Request::Start { .. });
    if matches!(request, Request::Stop { .. } | Request::Reload { .. }) && !manager::running() {
        anyhow::bail!(
            "VM {vm} runs no services (start one with `feather service start {vm} UNIT`)"
        );
    }
    let response = manager::call(&request, starts.then_some(vm.as_str()))
        .with_context(|| format!("VM {vm}"))?;
    match response {
        Response::Error { error } => anyhow::bail!("VM {vm}: {error}"),
        Response::Hello { .. } => anyhow::bail!(
            "VM {vm}: {}",
            feather_svc::manager::protocol::ProtocolError::UnexpectedMessage {
                expected: "an answer",
                received: "a second hello".into(),
            }
        ),
        Response::List { units } => {
            if args.json {
                output::json(&units)?;
            } else {
                output::services(&units);
            }
        }
        Response::Done {
            units,
            reload_failed,
        } => {
            let failed: Vec<_> = units
                .iter()
                .filter(|u| u.state == UnitState::Failed || reload_failed.contains(&u.name))
                .collect();
            if args.json && !args.quiet {
                output::json(&units)?;
            } else if !args.quiet {
                output::services(&units);
            }
            if !failed.is_empty() {
                for unit in &failed {
                    eprintln!(
                        "feather: VM {vm}: {} failed: {} (see `feather service status {vm} {}`)",
                        unit.name,
                        unit.result.as_deref().unwrap_or("unknown reason"),
                        unit.name
                    );
                }
                return Ok(ExitCode::from(1));
            }
        }
        Response::Status { unit, log } => {
            if args.json {
                output::json(&serde_json::json!({ "unit": unit, "log": log }))?;
            } else {
                output::service_status(&unit, &log);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Inside the VM: the last `lines` of a unit's log, then (with `follow`) what is appended.
fn logs(vm: &str, unit: &str, lines: usize, follow: bool) -> anyhow::Result<ExitCode> {
    use std::io::{Read, Seek, SeekFrom, Write};
    // The manager knows the unit's real name (an alias, a name without .service).
    let name = match manager::call(
        &Request::Status {
            unit: unit.to_owned(),
            lines: 0,
        },
        None,
    ) {
        Ok(Response::Status { unit, .. }) => unit.name,
        Ok(Response::Error { error }) => anyhow::bail!("VM {vm}: {error}"),
        _ => feather_svc::UnitName::parse(unit)?.to_string(),
    };
    let path =
        std::path::Path::new(feather_svc::manager::protocol::LOG_DIR).join(format!("{name}.log"));
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !follow => {
            anyhow::bail!("VM {vm}: {name} has no log yet (it has not been started)")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Wait for the first start to make it.
            loop {
                std::thread::sleep(std::time::Duration::from_millis(200));
                if let Ok(file) = std::fs::File::open(&path) {
                    break file;
                }
            }
        }
        Err(e) => anyhow::bail!("VM {vm}: {}: {e}", path.display()),
    };
    let mut text = Vec::new();
    file.read_to_end(&mut text)?;
    let all: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
    let all = match all.split_last() {
        Some(([], rest)) => rest,
        _ => &all[..],
    };
    let mut out = std::io::stdout().lock();
    // A service writes what it likes: every line is escaped for the terminal it reaches.
    for line in &all[all.len().saturating_sub(lines)..] {
        writeln!(out, "{}", feather_core::display::escape_bytes(line))?;
    }
    out.flush()?;
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    let mut position = file.seek(SeekFrom::End(0))?;
    let mut buffer = Vec::new();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let length = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if length < position {
            // Truncated or replaced: start from its beginning.
            file = std::fs::File::open(&path)?;
            position = 0;
        }
        file.seek(SeekFrom::Start(position))?;
        buffer.clear();
        position += file.read_to_end(&mut buffer)? as u64;
        if !buffer.is_empty() {
            write_escaped_lines(&mut out, &buffer)?;
            out.flush()?;
        }
    }
}

/// Writes `bytes` with each line escaped for the terminal, keeping the line ends.
fn write_escaped_lines(out: &mut impl std::io::Write, bytes: &[u8]) -> std::io::Result<()> {
    let mut lines = bytes.split(|b| *b == b'\n').peekable();
    while let Some(line) = lines.next() {
        out.write_all(feather_core::display::escape_bytes(line).as_bytes())?;
        if lines.peek().is_some() {
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// The unit names of `services` as installed below `base`, or why one cannot be duplicated.
pub fn check_installed(base: &std::path::Path, services: &[String]) -> anyhow::Result<Vec<String>> {
    let paths = feather_svc::UnitPaths::new(base);
    services
        .iter()
        .map(|service| {
            let name = feather_svc::UnitName::parse(service)?;
            if let Some(stand_in) = feather_svc::infra::stand_in(&name) {
                anyhow::bail!("{name} is host infrastructure and is not duplicated in VMs; in a VM: {stand_in}");
            }
            Ok(paths.load(&name)?.name.to_string())
        })
        .collect()
}

/// Records the services a VM starts whenever it starts.
pub fn configure(
    root: &StateRoot,
    name: &VmName,
    services: Vec<String>,
    fresh_state: bool,
) -> anyhow::Result<()> {
    if services.is_empty() {
        return Ok(());
    }
    let vm = root.open(name)?;
    let mut config = vm.read_config()?;
    config.services = services;
    config.fresh_state = fresh_state;
    vm.write_config(&config, feather_core::atomic::Durability::Durable)?;
    Ok(())
}

/// Starts the services a VM was created with, if any (after `feather start`).
pub fn start_configured(root: &StateRoot, name: &VmName) -> anyhow::Result<ExitCode> {
    let config = root.open(name)?.read_config()?;
    if config.services.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    call_in_vm(
        root,
        ServiceCommand::Start {
            name: name.to_string(),
            units: config.services,
            fresh_state: false,
            json: false,
        },
        true,
        // Empty state once: later starts of the VM keep what its services wrote.
        config.fresh_state.then_some(ClientFreshState::Once),
    )
}
