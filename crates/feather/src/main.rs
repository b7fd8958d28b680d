//! `feather`: the command-line front of feather VMs. It parses, calls `feather-vm`, and
//! formats; everything else lives in the libraries.

mod candidates;
mod cli;
mod completion;
mod generated;
mod oci;
mod output;
mod progress;
mod service;
mod shuttle;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use feather_core::{say, Error, StateRoot, VmName};
use feather_vm::exec::exec;
use feather_vm::lifecycle::{self, CreateOptions};
use feather_vm::options::CreateRequest;
use feather_vm::workload::Workload;
use feather_vm::{checkpoint, commit, inspect, migration};

use cli::{CheckCommand, Cli, Command, CreateArgs, ProcessArgs, RunArgs};

/// Exit status when feather itself failed while asked to run a command.
const EXIT_FEATHER_FAILED_RUN: u8 = 125;

fn main() -> ExitCode {
    feather_core::trace::begin();
    completion::answer_if_asked();
    let cli = Cli::parse_from(arguments());
    feather_core::trace::phase("parse the command line");
    let runs_a_command = matches!(cli.command, Command::Run(_) | Command::Exec { .. });
    let result = dispatch(cli);
    feather_core::trace::phase("finish the command");
    match result {
        Ok(code) => code,
        // As a command whose output goes to `head`: it ends quietly.
        Err(e) if feather_core::stdout::reader_gone(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            // An error may quote a VM's path or text: each line is escaped for the terminal.
            let message = format!("{e:#}");
            let lines: Vec<_> = message
                .lines()
                .map(feather_core::display::escape_for_terminal)
                .collect();
            eprintln!("feather: {}", lines.join("\n"));
            ExitCode::from(if runs_a_command {
                EXIT_FEATHER_FAILED_RUN
            } else {
                1
            })
        }
    }
}

/// The command line, with the name the binary was called by turned into a subcommand:
/// `feather-open ARGS…` is `feather open ARGS…`, `xdg-open ARGS…` is `feather open xdg-open
/// ARGS…` (see docs/shuttle.md).
fn arguments() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let called = args
        .first()
        .and_then(|argv0| feather_shuttle::invoke::called_as(std::path::Path::new(argv0)));
    match called {
        Some("feather-open") => args.insert(1, "open".into()),
        Some("xdg-open") => args
            .splice(1..1, ["open".into(), "xdg-open".into()])
            .for_each(drop),
        _ => {}
    }
    end_options_after_app(&mut args);
    args
}

/// `feather open [--vm VM] APP ARGS…`: everything after APP is the application's, even
/// `--help` or `--vm` (the broker judges it), so a `--` is put after APP for the parser.
fn end_options_after_app(args: &mut Vec<std::ffi::OsString>) {
    let mut index = 1;
    // Global options before the subcommand.
    while index < args.len() {
        match args[index].to_str() {
            Some("--root") => index += 2,
            Some(arg) if arg.starts_with('-') => index += 1,
            _ => break,
        }
    }
    if args.get(index).and_then(|a| a.to_str()) != Some("open") {
        return;
    }
    index += 1;
    while index < args.len() {
        match args[index].to_str() {
            Some("--vm" | "--root") => index += 2,
            Some(arg) if arg.starts_with("--vm=") || arg.starts_with("--root=") => index += 1,
            // Help, a typo or an explicit `--`: the parser deals with it.
            Some(arg) if arg.starts_with('-') => return,
            _ => {
                if args.get(index + 1).and_then(|a| a.to_str()) != Some("--") {
                    args.insert(index + 1, "--".into());
                }
                return;
            }
        }
    }
}

/// Makes the state root's folders exist and private, and records it in the host's registry
/// of roots before anything is put in it: a root new to the registry is hidden at once in
/// every VM already running (of any root), and every VM started later hides it too.
fn open_root(root: &StateRoot) -> anyhow::Result<()> {
    root.prepare_dir()?;
    let registry = feather_core::roots::Registry::host();
    let registered = anyhow::Context::with_context(registry.register(root), || {
        format!(
            "cannot record state root {} in {}, which every VM start reads to keep VMs out of \
             it (make {} writable for root)",
            root.dir().display(),
            registry.dir().display(),
            registry.dir().display()
        )
    })?;
    if let Some(new) = registered {
        for warning in feather_vm::hiding::in_running_vms(&new) {
            eprintln!("feather: warning: {warning}");
        }
        // OCI containers over the host see the host's tree, state roots included.
        for warning in feather_oci::hiding::in_running_containers(&new) {
            eprintln!("feather: warning: {warning}");
        }
    }
    root.prepare()?;
    Ok(())
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    // Inside a VM anyone may ask; the keeper's policy decides.
    if let Command::Open { vm, app, args } = &cli.command {
        return Ok(exit_code(feather_shuttle::invoke::open(
            app,
            vm.as_deref(),
            args,
        )));
    }
    // What is generated from the command line itself needs neither root nor a state root.
    match &cli.command {
        Command::Completions { shell } => {
            generated::completions(*shell, &mut std::io::stdout())?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man { dir } => {
            generated::man_pages(dir)?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot.into());
    }
    let root_arg = cli.root.clone();
    let root = StateRoot::new(cli.root);
    open_root(&root)?;
    // A throw-away run does not wait for the teardowns of the runs before it.
    let throw_away = matches!(&cli.command, Command::Run(args) if args.rm);
    lifecycle::settle_throw_aways(&root, !throw_away);
    feather_core::trace::phase("open the state root");
    match cli.command {
        Command::Create {
            name,
            options,
            services,
            fresh_state,
        } => {
            let name = name.parse()?;
            let base = options.base.clone().unwrap_or_else(|| "/".into());
            let services = feather_vm::services::check_installed(&base, &services)?;
            lifecycle::create(&root, &name, &create_options(&options)?)?;
            feather_vm::services::configure(&root, &name, services, fresh_state)?;
        }
        Command::Start { name } => return service::start(&root, &name.parse()?),
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
        Command::Ls { json, oci: true } => {
            let containers = oci::containers();
            if json {
                output::json(&containers)?
            } else {
                output::oci_containers(&containers)?
            }
        }
        Command::Ls { json, oci: false } => {
            let rows = inspect::summaries(&root)?;
            if json {
                output::json(&rows)?
            } else {
                output::vms(&rows)?;
                let containers = oci::containers();
                if !containers.is_empty() {
                    say!("")?;
                    output::oci_containers(&containers)?;
                }
            }
        }
        Command::Ps {
            name,
            json,
            runtime_root,
        } => {
            let rows = oci::processes(&root, &name, runtime_root.as_deref())?;
            if json {
                output::json(&rows)?
            } else {
                output::processes(&rows)?
            }
        }
        Command::Inspect { name } => output::json(&inspect::inspect(&root, &name.parse()?)?)?,
        Command::Diff {
            name,
            json,
            runtime_root,
        } => {
            let changes = oci::changes(&root, &name, runtime_root.as_deref())?;
            if json {
                output::json(&changes)?
            } else {
                output::changes_with_sizes(&changes)?
            }
        }
        Command::Commit {
            name,
            paths,
            force,
            keep_privileges,
        } => {
            let consent = commit::Consent {
                force,
                keep_privileges,
            };
            let applied = commit::commit(&root, &name.parse()?, &paths, consent)?;
            output::changes(&applied)?;
        }
        Command::Reset { name } => commit::reset(&root, &name.parse()?)?,
        Command::Service(command) => return service::run(&root, command),
        Command::Policy(command) => return shuttle::policy(&root, command),
        Command::Audit {
            follow,
            lines,
            vm,
            denied,
            json,
        } => {
            let filter = shuttle::AuditFilter { vm, denied };
            return shuttle::audit(&root, &filter, lines, follow, json);
        }
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
        Command::Web {
            listen,
            tls_cert,
            tls_key,
        } => {
            let tls = tls_cert
                .zip(tls_key)
                .map(|(certificate, key)| feather_web::Tls { certificate, key });
            let options = feather_web::Options { listen, tls };
            if options.is_exposed() {
                eprintln!(
                    "feather: warning: serving on {listen}, which other machines can reach; \
                     anyone with the link can act on this host's VMs until it is used"
                );
            }
            feather_web::serve(root, &options, |url| {
                // Serving goes on when nobody reads this any more (a closed terminal or pipe).
                let _ = writeln!(
                    std::io::stdout(),
                    "feather web: open {url}\n(the link works once; keep this running, Ctrl-C ends it)"
                );
            })?;
        }
        Command::Check(CheckCommand::Criu { json }) => return check_criu(json),
        Command::Migrate {
            name,
            to,
            token,
            tls,
            mode,
            json,
        } => {
            let security = security(token, tls);
            let mode = migration::choose_mode(mode.map(|m| match m {
                cli::MigrateMode::PostCopy => migration::Mode::PostCopy,
                cli::MigrateMode::StopAndCopy => migration::Mode::StopAndCopy,
                cli::MigrateMode::PreCopy => migration::Mode::PreCopy,
            }))?;
            let mut display = progress::Display::new();
            let migrated =
                migration::migrate(&root, &name.parse()?, &to, &security, mode, &mut |step| {
                    display.show(step)
                });
            display.finish();
            let migrated = migrated?;
            if json {
                output::json(&migrated)?;
            }
            eprintln!("migrated {name} to {to}: {}", output::migrated(&migrated));
        }
        Command::Serve {
            listen,
            token,
            tls,
            once,
        } => {
            let mut display = progress::Display::new();
            let served = migration::serve(
                &root,
                &listen,
                &security(token, tls),
                once,
                |address| eprintln!("feather serve: listening on {address}"),
                &mut |step| display.show(step),
            );
            display.finish();
            served?
        }
        Command::Check(CheckCommand::Ipc {
            vm,
            runtime_root,
            json,
            markdown,
            label,
        }) => {
            let agent = feather_ipcprobe::run::agent_program()?;
            if !agent.exists() {
                anyhow::bail!(
                    "the IPC probe's agent {} is missing; install {} beside feather (cargo builds and installs it)",
                    agent.display(),
                    feather_ipcprobe::run::AGENT_PROGRAM
                );
            }
            let (vm, container) = oci::probed(&root, vm, runtime_root.as_deref())?;
            let setup = feather_ipcprobe::run::ProbeSetup {
                agent,
                root: root_arg,
                vm,
                container,
                label,
            };
            let matrix = feather_ipcprobe::run::run(&setup)?;
            if json {
                output::json(&matrix)?
            } else if markdown {
                say!("{}", matrix.to_markdown().trim_end_matches('\n'))?
            } else {
                output::ipc_matrix(&matrix)?
            }
            if !matrix.failures().is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Open { .. } | Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("handled before the root check")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `run`: a throw-away VM with --rm; otherwise the named VM, created and started as needed.
fn run(root: &StateRoot, args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut workload = workload(&args.process, args.command)?;
    if args.rm {
        start_where_the_caller_is(&mut workload, args.create.base.as_deref());
        let name = match &args.name {
            Some(name) => name.parse()?,
            None => format!("run-{}", std::process::id()).parse()?,
        };
        let options = create_options(&args.create)?;
        let code = if args.process.tty {
            lifecycle::run_ephemeral_with_terminal(root, &name, &options, &workload)?
        } else {
            let peers = std::sync::Arc::new(feather_vm::peers::RootPeers::new(root));
            lifecycle::run_ephemeral(root, &name, &options, workload, peers)?
        };
        return Ok(exit_code(code));
    }
    let Some(name) = args.name else {
        anyhow::bail!("name the VM to run in, or use --rm for a throw-away one");
    };
    let name: VmName = name.parse()?;
    match root.open(&name) {
        Ok(_) if !args.create.is_empty() => {
            anyhow::bail!("VM {name} exists: --base, --memory, --pids, --cpus, --disk, --allow-userns, --ro and the network options apply only when run creates it")
        }
        Ok(_) => {}
        Err(Error::NotFound(_)) => {
            lifecycle::create(root, &name, &create_options(&args.create)?)?;
        }
        Err(e) => return Err(e.into()),
    }
    let base = root.open(&name)?.read_config()?.base;
    start_where_the_caller_is(&mut workload, Some(&base));
    if lifecycle::status(&root.open(&name)?)?.status != feather_core::VmStatus::Running {
        lifecycle::start(root, &name)?;
        if service::start_configured(root, &name)? != ExitCode::SUCCESS {
            anyhow::bail!("VM {name} started, but not all of its services did");
        }
    }
    Ok(exit_code(exec(root, &name, &workload, args.process.tty)?))
}

/// `run` in a VM over the host's own root starts the command in the caller's current folder,
/// which the VM sees too (`feather run --rm -- make test` tests the project one is in), unless
/// `-w` or `-u` says otherwise (another user starts in their home). Over another base the
/// caller's folder means nothing there: the user's home, as `exec`.
fn start_where_the_caller_is(workload: &mut Workload, base: Option<&std::path::Path>) {
    let over_the_host = base.is_none_or(|base| base == std::path::Path::new("/"));
    if over_the_host && workload.cwd.is_none() && workload.user.is_none() {
        workload.cwd = std::env::current_dir().ok();
    }
}

/// `feather check criu`: is there a CRIU that works here, and which kernel features does it lack.
/// Exits 1 when checkpoints cannot work.
fn check_criu(json: bool) -> anyhow::Result<ExitCode> {
    let criu = feather_migrate::criu::Criu::locate()?;
    let report = criu.report();
    if json {
        output::json(&report)?;
    } else {
        output::criu_report(&report)?;
    }
    if report.works {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(1))
    }
}

/// The command line's create flags, read as the library reads every create request.
fn create_options(args: &CreateArgs) -> anyhow::Result<CreateOptions> {
    let request = CreateRequest {
        base: args.base.clone(),
        memory: args.memory.clone(),
        pids: args.pids.clone(),
        cpus: args.cpus.clone(),
        disk: args.disk.clone(),
        allow_userns: args.allow_userns,
        net: args.net.clone(),
        publish: args.publish.clone(),
        egress: args.egress,
        tags: args.tags.clone(),
        ro: args.read_only.clone(),
    };
    Ok(request.options()?)
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

/// A migration's security from the command line: the token, and certificates if given (clap
/// makes sure all three files come together).
fn security(token: String, tls: cli::TlsArgs) -> migration::Security {
    let files = match (tls.tls_cert, tls.tls_key, tls.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(migration::TlsFiles { cert, key, ca }),
        _ => None,
    };
    migration::Security { token, files }
}

#[cfg(test)]
mod tests {
    use super::end_options_after_app;

    fn ended(args: &[&str]) -> Vec<String> {
        let mut args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        end_options_after_app(&mut args);
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn everything_after_the_app_is_the_apps() {
        assert_eq!(
            ended(&["feather", "open", "viewer", "--help", "x"]),
            ["feather", "open", "viewer", "--", "--help", "x"]
        );
        assert_eq!(
            ended(&["feather", "--root", "/r", "open", "--vm", "b", "v", "--vm", "c"]),
            ["feather", "--root", "/r", "open", "--vm", "b", "v", "--", "--vm", "c"]
        );
        assert_eq!(
            ended(&["feather", "open", "v", "--", "-x"]),
            ["feather", "open", "v", "--", "-x"]
        );
        assert_eq!(
            ended(&["feather", "open", "--help"]),
            ["feather", "open", "--help"]
        );
        assert_eq!(
            ended(&["feather", "exec", "vm", "--", "open", "x"]),
            ["feather", "exec", "vm", "--", "open", "x"]
        );
    }
}
