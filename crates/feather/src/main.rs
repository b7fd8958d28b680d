//! `feather`: the command-line front of feather VMs. It parses, calls `feather-vm`, and
//! formats; everything else lives in the libraries.

mod cli;
mod output;
mod progress;
mod service;

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use feather_core::size::parse_bytes;
use feather_core::{Error, Limits, NetMode, NetworkConfig, StateRoot, VmConfig, VmName};
use feather_vm::exec::exec;
use feather_vm::lifecycle::{self, CreateOptions};
use feather_vm::workload::Workload;
use feather_vm::{checkpoint, commit, inspect};

use cli::{CheckCommand, Cli, Command, CreateArgs, ProcessArgs, RunArgs};

/// Exit status when feather itself failed while asked to run a command.
const EXIT_FEATHER_FAILED_RUN: u8 = 125;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runs_a_command = matches!(cli.command, Command::Run(_) | Command::Exec { .. });
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("feather: {e:#}");
            ExitCode::from(if runs_a_command {
                EXIT_FEATHER_FAILED_RUN
            } else {
                1
            })
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot.into());
    }
    let root_arg = cli.root.clone();
    let root = StateRoot::new(cli.root);
    match cli.command {
        Command::Create {
            name,
            options,
            services,
        } => {
            let name = name.parse()?;
            let base = options.base.clone().unwrap_or_else(|| "/".into());
            let services = service::check_installed(&base, &services)?;
            lifecycle::create(&root, &name, &create_options(&options)?)?;
            service::configure(&root, &name, services)?;
        }
        Command::Start { name } => {
            let name = name.parse()?;
            lifecycle::start(&root, &name)?;
            return service::start_configured(&root, &name);
        }
        Command::Stop { name, time } => {
            lifecycle::stop(&root, &name.parse()?, Duration::from_secs(time))?;
        }
        Command::Rm { name, force } => lifecycle::remove(&root, &name.parse()?, force)?,
        Command::Run(args) => return run(&root, args),
        Command::Exec {
            process,
            name,
            command,
        } => {
            let code = exec(
                &root,
                &name.parse()?,
                &workload(&process, command)?,
                process.tty,
            )?;
            return Ok(exit_code(code));
        }
        Command::Ls { json } => {
            let rows = inspect::summaries(&root)?;
            if json {
                output::json(&rows)?
            } else {
                output::vms(&rows)
            }
        }
        Command::Ps { name, json } => {
            let rows = inspect::processes(&root, &name.parse()?)?;
            if json {
                output::json(&rows)?
            } else {
                output::processes(&rows)
            }
        }
        Command::Inspect { name } => output::json(&inspect::inspect(&root, &name.parse()?)?)?,
        Command::Diff { name, json } => {
            let changes = commit::changes(&root, &name.parse()?)?;
            if json {
                output::json(&changes)?
            } else {
                output::changes(&changes)
            }
        }
        Command::Commit { name, paths, force } => {
            let applied = commit::commit(&root, &name.parse()?, &paths, force)?;
            output::changes(&applied);
        }
        Command::Reset { name } => commit::reset(&root, &name.parse()?)?,
        Command::Service(command) => return service::run(&root, command),
        Command::ServiceClient(args) => return service::in_vm(args),
        Command::Checkpoint {
            name,
            leave_running,
            export,
        } => {
            let mut display = progress::Display::new();
            let images = checkpoint::checkpoint(
                &root,
                &name.parse()?,
                leave_running,
                export.as_deref(),
                &mut |step| display.show(step),
            );
            display.finish();
            let images = images?;
            eprintln!("checkpoint of {name} in {}", images.display());
            if let Some(file) = export {
                eprintln!("exported to {}", file.display());
            }
        }
        Command::Restore { name, import } => {
            checkpoint::restore(&root, &name.parse()?, import.as_deref())?
        }
        Command::Check(CheckCommand::Criu { json }) => return check_criu(json),
        Command::Migrate { name, to, token } => {
            let mut display = progress::Display::new();
            let migrated = checkpoint::migrate(&root, &name.parse()?, &to, &token, &mut |step| {
                display.show(step)
            });
            display.finish();
            let migrated = migrated?;
            eprintln!(
                "migrated {name} to {to}: {} bytes, frozen for {} ms",
                migrated.bytes,
                migrated.frozen.as_millis()
            );
        }
        Command::Serve {
            listen,
            token,
            once,
        } => {
            let mut display = progress::Display::new();
            let served = checkpoint::serve(
                &root,
                &listen,
                &token,
                once,
                |address| eprintln!("feather serve: listening on {address}"),
                &mut |step| display.show(step),
            );
            display.finish();
            served?
        }
        Command::Init { keeper_fd, resumed } => {
            let keeper = ready_pipe(keeper_fd)?;
            let resumed = serde_json::from_str(&resumed)?;
            feather_vm::init::resume(keeper.into(), resumed)
        }
        Command::Check(CheckCommand::Ipc { vm, json, markdown }) => {
            let setup = feather_ipcprobe::run::ProbeSetup {
                feather: std::env::current_exe()?,
                root: root_arg,
                vm,
            };
            let matrix = feather_ipcprobe::run::run(&setup)?;
            if json {
                output::json(&matrix)?
            } else if markdown {
                print!("{}", matrix.to_markdown())
            } else {
                output::ipc_matrix(&matrix)
            }
            if !matrix.failures().is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        Command::IpcProbe { args } => return Ok(exit_code(feather_ipcprobe::agent::main(&args))),
        Command::Keeper {
            state_dir,
            run_dir,
            ready_fd,
            restore,
            name,
        } => {
            let ready = ready_pipe(ready_fd)?;
            let root = StateRoot::with_dirs(state_dir, run_dir);
            let code = feather_vm::keeper::main_background(root, name.parse()?, ready, restore);
            return Ok(exit_code(code));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `run`: a throw-away VM with --rm; otherwise the named VM, created and started as needed.
fn run(root: &StateRoot, args: RunArgs) -> anyhow::Result<ExitCode> {
    let workload = workload(&args.process, args.command)?;
    if args.rm {
        let name = match &args.name {
            Some(name) => name.parse()?,
            None => format!("run-{}", std::process::id()).parse()?,
        };
        let options = create_options(&args.create)?;
        let code = if args.process.tty {
            lifecycle::run_ephemeral_with_terminal(root, &name, &options, &workload)?
        } else {
            lifecycle::run_ephemeral(root, &name, &options, workload)?
        };
        return Ok(exit_code(code));
    }
    let Some(name) = args.name else {
        anyhow::bail!("name the VM to run in, or use --rm for a throw-away one");
    };
    let name: VmName = name.parse()?;
    match root.open(&name) {
        Ok(_) if !args.create.is_empty() => {
            anyhow::bail!("VM {name} exists: --base, --memory, --pids, --cpus and the network options apply only when run creates it")
        }
        Ok(_) => {}
        Err(Error::NotFound(_)) => {
            lifecycle::create(root, &name, &create_options(&args.create)?)?;
        }
        Err(e) => return Err(e.into()),
    }
    if lifecycle::status(&root.open(&name)?)?.status != feather_core::VmStatus::Running {
        lifecycle::start(root, &name)?;
        if service::start_configured(root, &name)? != ExitCode::SUCCESS {
            anyhow::bail!("VM {name} started, but not all of its services did");
        }
    }
    Ok(exit_code(exec(root, &name, &workload, args.process.tty)?))
}

/// `feather check criu`: is there a CRIU that works here, and which kernel features does it lack.
/// Exits 1 when checkpoints cannot work.
fn check_criu(json: bool) -> anyhow::Result<ExitCode> {
    let criu = feather_migrate::criu::Criu::locate()?;
    let report = criu.report();
    if json {
        output::json(&report)?;
    } else {
        output::criu_report(&report);
    }
    if report.works {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(1))
    }
}

fn create_options(args: &CreateArgs) -> anyhow::Result<CreateOptions> {
    let limits = Limits {
        memory: args.memory.as_deref().map(parse_bytes).transpose()?,
        pids: args.pids.map(Limits::validate_pids).transpose()?,
        cpus: args.cpus.as_deref().map(Limits::parse_cpus).transpose()?,
    };
    let network = NetworkConfig {
        mode: args
            .net
            .as_deref()
            .map(str::parse)
            .transpose()?
            .unwrap_or(NetMode::Private),
        address: None,
        publish: args
            .publish
            .iter()
            .map(|p| p.parse())
            .collect::<Result<_, _>>()?,
        egress: args.egress,
    };
    network.validate()?;
    Ok(CreateOptions {
        base: args.base.clone(),
        limits,
        ephemeral: false,
        network,
        tags: args
            .tags
            .iter()
            .map(|tag| VmConfig::validate_tag(tag).map(|()| tag.clone()))
            .collect::<Result<_, _>>()?,
    })
}

fn workload(args: &ProcessArgs, argv: Vec<String>) -> anyhow::Result<Workload> {
    let env = args
        .env
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
            _ => Err(Error::InvalidValue {
                what: "--env",
                value: pair.clone(),
                why: "expected KEY=VALUE".into(),
            }),
        })
        .collect::<Result<_, _>>()?;
    Ok(Workload {
        argv,
        env,
        cwd: args.workdir.clone(),
        user: args.user.clone(),
    })
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Takes the descriptor a parent left open for this process: the pipe `feather start` gives its
/// keeper to report on, or the socket a VM's init keeps to its keeper across re-execution.
fn ready_pipe(fd: i32) -> anyhow::Result<OwnedFd> {
    if fd < 3 || !std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists() {
        anyhow::bail!("descriptor {fd} is not open");
    }
    // SAFETY: the descriptor is open (checked above) and was left to this process, for exactly
    // this use, by its parent (`feather start`) or by itself before re-executing (init);
    // nothing else in the process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
