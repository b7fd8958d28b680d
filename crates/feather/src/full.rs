//! The commands only `feather-full` runs (see crate::app): the web view, migration,
//! checkpoints, `check`, manual pages and completion scripts, and the commands that read what
//! a VM wrote (`ps`, `diff`, `commit`, `reset`, `service`, `audit`), which stay out of the
//! front at a fixed address.

use std::io::Write;
use std::process::ExitCode;

use feather_vm::{checkpoint, commit, migration};

use feather_core::say;

use crate::cli::{self, CheckCommand, Cli, Command};
use crate::opening::{opened_root, root_is_missing};
use crate::{generated, oci, output, progress, service, shuttle};

/// Runs one of the commands `crate::app::runs_elsewhere` names.
pub(crate) fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
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
    if matches!(cli.command, Command::Network(cli::NetworkCommand::Down)) && root_is_missing(&cli)?
    {
        return Ok(ExitCode::SUCCESS);
    }
    let root_arg = cli.global.root.clone();
    let root = opened_root(&cli)?;
    match cli.command {
        Command::Network(cli::NetworkCommand::Down) => {
            use feather_vm::lifecycle::NetworkDown as Ended;
            // Emptied, with no fill making more, while the network is taken down.
            let ended = empty_the_pool_for_network_down(&root, || {
                feather_vm::lifecycle::take_network_down(&root)
            })?;
            match ended {
                Ended::Down => {}
                Ended::Used => eprintln!(
                    "feather: the root's network stays: a VM uses it (`feather ls` shows which), \
                     or a VM's start or a refill of its pool held it past {:?} (try again)",
                    feather_vm::lifecycle::NETWORK_DOWN_PATIENCE
                ),
                Ended::HeldStopped { lock, holder } => {
                    eprintln!(
                        "feather: the root's network stays: {}",
                        holder.stopped_said(&lock.display().to_string())
                    );
                    return Ok(ExitCode::from(1));
                }
                Ended::Busy => eprintln!(
                    "feather: the root's network stays: another process is removing it (`fuser \
                     -v {}` names it); try again",
                    root.dir().join("network-linger.lock").display()
                ),
                Ended::Lingering(holder) => {
                    eprintln!("feather: {}", lingerer_not_ended(holder));
                    return Ok(ExitCode::from(1));
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
        Command::Reset { name, paths } if paths.is_empty() => commit::reset(&root, &name.parse()?)?,
        Command::Reset { name, paths } => commit::reset_paths(&root, &name.parse()?, &paths)?,
        Command::Service(command) => return service::run(&root, command),
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
        Command::Restore {
            name,
            import,
            accept,
        } => {
            if import.is_none() && accept.any() {
                anyhow::bail!(
                    "--base, --allow-userns, --allow-publish, --allow-egress and --tag say what an imported VM \
                     may ask of this host: give them with --import FILE"
                );
            }
            let accepted = accepted(&root, accept)?;
            let import = import.as_deref().map(|file| (file, &accepted));
            checkpoint::restore(&root, &name.parse()?, import)?
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
            if let Some(left) = &migrated.left_here {
                eprintln!("feather: warning: {left}");
            }
        }
        Command::Serve {
            listen,
            token,
            tls,
            accept,
            names,
            once,
        } => {
            let mut accepted = accepted(&root, accept)?;
            for name in &names {
                name.parse::<feather_core::VmName>()?;
            }
            accepted.names = names;
            let mut display = progress::Display::new();
            let served = migration::serve(
                &root,
                &listen,
                &security(token, tls),
                &accepted,
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
        _ => unreachable!("a command both binaries run (see runs_elsewhere)"),
    }
    Ok(ExitCode::SUCCESS)
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

/// What imported VMs may ask of this host, from the command line.
fn accepted(
    root: &feather_core::StateRoot,
    accept: cli::AcceptArgs,
) -> anyhow::Result<feather_vm::imported::Accepted> {
    for tag in &accept.tags {
        feather_core::VmConfig::validate_tag(tag)?;
    }
    let mut accepted = feather_vm::imported::Accepted::new(root, accept.base.as_deref())?;
    accepted.allow_userns = accept.allow_userns;
    accepted.publish = accept.allow_publish;
    accepted.egress = accept.allow_egress;
    accepted.tags = accept.tags;
    Ok(accepted)
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

/// What `network down` says of the root's lingering process that did not end in time, or
/// is stopped (`feather_net::linger::Ended::Lingering`): the network is left as it was.
fn lingerer_not_ended(holder: Option<feather_core::lock_holder::Holder>) -> String {
    // Its pool may have been emptied already: only the network is as it was.
    let stays = "the root's network stays up";
    let lingering = "the process that keeps it for the next VM";
    let Some(holder) = holder else {
        return format!(
            "{stays}: {lingering} did not end in time, and cannot be named (it may run in \
             another pid namespace); try again"
        );
    };
    if holder.stopped {
        format!("{stays}: {lingering} is {}", holder.stopped_named())
    } else {
        format!(
            "{stays}: {lingering}, {}, did not end in time; try again, or end it (`kill {}`) \
             first",
            holder.named(),
            holder.pid
        )
    }
}

/// `network down` beside a pool: its VMs use the root's network, so the pool is emptied first
/// (its size setting kept: the next `run --rm` refills it), and stderr says so.
fn empty_the_pool_for_network_down<T>(
    root: &feather_core::StateRoot,
    meanwhile: impl FnOnce() -> T,
) -> anyhow::Result<T> {
    let (emptied, drained, given) = feather_vm::pool::emptied_while(root, meanwhile)?;
    if emptied > 0 {
        eprintln!(
            "feather: the root's pool ({emptied} VM(s) made ahead for `run --rm`, which use its \
             network) was emptied first; the next `run --rm` refills it (`feather pool --size 0` \
             keeps it empty)"
        );
    }
    for (name, pid) in &drained.in_use {
        eprintln!(
            "feather: VM {name} from the pool is in use by a run (pid {pid}) still running its \
             command; the network stays until it ends"
        );
    }
    Ok(given)
}
