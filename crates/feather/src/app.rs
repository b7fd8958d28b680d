//! What both binaries run: the parse, the state root's opening, and the frequent commands
//! (run, exec, create, start, stop, rm, ls, …), whose code is the VM core's. The others — the
//! web view, migration, checkpoints, `check`, manual pages and completion scripts — pull in a
//! web server, TLS, an async runtime and CRIU's protocol, and those that read what a VM wrote
//! (`ps`, `diff`, `commit`, `reset`, `service`, `audit`) belong in a PIE program: `feather`
//! hands them to `feather-full`, installed beside it ([`front`]), so that its own binary stays
//! small and starts fast; `feather-full` runs them itself ([`full`]). Both parse the same
//! command line, so help, errors and exit codes are the same whichever runs.

use std::process::ExitCode;
use std::time::Duration;

use feather_core::{say, trace, Error, StateRoot, VmName};
use feather_vm::exec::exec;
use feather_vm::inspect;
use feather_vm::lifecycle::{self, CreateOptions};
use feather_vm::options::CreateRequest;
use feather_vm::workload::Workload;

use crate::cli::{
    Cli, Command, CreateArgs, CreateCommandArgs, PoolArgs, ProcessArgs, RunArgs, StartArgs,
};
use crate::opening::opened_root;
use crate::{completion, oci, output, service, shuttle};

/// Exit status when feather itself failed while asked to run a command.
const EXIT_FEATHER_FAILED_RUN: u8 = 125;

/// The binary that runs every command, installed beside `feather`.
pub const FULL_PROGRAM: &str = "feather-full";

/// What runs a command the front does not: `feather-full`, or that program's own code.
type Others = fn(Cli) -> anyhow::Result<ExitCode>;

/// `feather`: runs the frequent commands, hands the others to [`FULL_PROGRAM`].
pub fn front() -> ExitCode {
    main_with(hand_over)
}

/// `feather-full`: runs every command.
pub fn full() -> ExitCode {
    main_with(crate::full::dispatch)
}

fn main_with(others: Others) -> ExitCode {
    feather_core::trace::begin();
    completion::answer_if_asked();
    let cli = crate::parse::parse(arguments());
    feather_core::trace::phase("parse the command line");
    let runs_a_command = matches!(cli.command, Command::Run(_) | Command::Exec(_));
    let result = if runs_elsewhere(&cli.command) {
        others(cli)
    } else {
        dispatch(cli)
    };
    feather_core::trace::phase("finish the command");
    match result {
        Ok(code) => code,
        // As a command whose output goes to `head`: it ends quietly.
        Err(e) if feather_core::stdout::reader_gone(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("feather: {}", shown_error(e.as_ref()));
            ExitCode::from(if runs_a_command {
                EXIT_FEATHER_FAILED_RUN
            } else {
                1
            })
        }
    }
}

/// An error as the CLI prints it. It may quote a VM's path or text: each line is escaped for
/// the terminal, its backslashes left as they are, since the names it quotes were escaped
/// where it was made (`escape_path`: a byte not UTF-8 is `\xff`, which doubling showed as
/// `\\xff`). Each cause once: an I/O error's message quotes its source already.
fn shown_error(error: &(dyn std::error::Error + 'static)) -> String {
    feather_core::display::escape_controls_by_line(&feather_core::error::causes(error))
}

/// The commands [`crate::full`] runs (and the front hands over). Every command is named
/// here, none by a wildcard, so that a new one cannot compile before it is given a side.
fn runs_elsewhere(command: &Command) -> bool {
    match command {
        Command::Web { .. }
        | Command::Migrate { .. }
        | Command::Serve { .. }
        | Command::Checkpoint { .. }
        | Command::Restore { .. }
        | Command::Check(_)
        | Command::Network(_)
        | Command::Man { .. }
        | Command::Completions { .. }
        // These read what a VM wrote — its layer, its processes' command lines, objects it
        // named, its service manager's texts —: a PIE program does, not the front at a fixed
        // address (docs/security.md).
        | Command::Ps { .. }
        | Command::Diff { .. }
        | Command::Commit { .. }
        | Command::Reset { .. }
        | Command::Service(_)
        | Command::Audit { .. } => true,
        Command::Create(_)
        | Command::Start(_)
        | Command::Stop { .. }
        | Command::Rm { .. }
        | Command::Run(_)
        | Command::Exec(_)
        | Command::Open { .. }
        | Command::Ls { .. }
        | Command::Inspect { .. }
        | Command::Policy(_)
        | Command::Pool(_) => false,
    }
}

/// Replaces this process by [`FULL_PROGRAM`] from this binary's own folder (never one found
/// through `$PATH`), with the same arguments (the name it was called by included) and
/// environment; returns only if that fails.
fn hand_over(_: Cli) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let full = std::env::current_exe()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot find this program's own path in /proc/self/exe ({e}), needed to run \
                 {FULL_PROGRAM} beside it: mount /proc"
            )
        })?
        .with_file_name(FULL_PROGRAM);
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(&full);
    if let Some(called) = args.next() {
        command.arg0(called);
    }
    let error = command.args(args).exec();
    Err(anyhow::anyhow!(
        "cannot run {}, which runs this command: {error} (it is installed beside feather; \
         install feather again)",
        full.display()
    ))
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

/// `rm NAME…`: each VM removed in turn. One that cannot be removed is named in the error, and
/// the others are removed all the same (as `docker rm` does); one name alone fails as it is.
fn remove_each(root: &StateRoot, names: &[String], force: bool) -> anyhow::Result<()> {
    let remove = |name: &String| -> anyhow::Result<()> {
        Ok(lifecycle::remove(root, &name.parse()?, force)?)
    };
    if let [name] = names {
        return remove(name);
    }
    let failures: Vec<String> = names
        .iter()
        .filter_map(|name| {
            let failed = remove(name).err()?;
            Some(format!(
                "{name}: {}",
                feather_core::error::causes(failed.as_ref())
            ))
        })
        .collect();
    if failures.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{} of the {} VMs were not removed (the others were):\n{}",
        failures.len(),
        names.len(),
        failures.join("\n")
    )
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    // Each of these commands is a process of its own that ends with it: the fstab lines users
    // may mount are followed once for it, not again at each root it checks, until it waits
    // for another command (hiding a new root) or goes on after it (`pool --fill`'s filler:
    // feather_sys::fstab).
    feather_sys::fstab::resolve_once_per_command();
    // Inside a VM anyone may ask; the keeper's policy decides.
    if let Command::Open { vm, app, args } = &cli.command {
        return Ok(exit_code(feather_shuttle::invoke::open(
            app,
            vm.as_deref(),
            args,
        )));
    }
    if let Command::Pool(PoolArgs {
        fill: true,
        generation,
        ..
    }) = &cli.command
    {
        // A fill started for a root drained (or removed) meanwhile has nothing to do, and must
        // never make the root again: not opened as other commands open theirs (which makes a
        // missing root and registers it); the fill makes its folders only inside a root that is
        // there (`pool::fill`), so a root removed after this look stays removed.
        crate::opening::must_be_root()?;
        let named = StateRoot::named(cli.global.root.clone());
        let Some(root) = named.checked_if_made()? else {
            return Ok(ExitCode::SUCCESS);
        };
        if feather_vm::pool::size(&root) > 0 {
            lifecycle::settle_throw_aways(&root, false);
            feather_vm::pool::fill_detached(&root, *generation)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Ls { .. } = &cli.command {
        // The listing an admin runs to look: every registry entry passed over is named, not
        // only once a day (feather_core::warning_stamps).
        feather_core::warning_stamps::say_every_time();
    }
    let root = opened_root(&cli)?;
    match cli.command {
        Command::Create(CreateCommandArgs {
            name,
            options,
            services,
            fresh_state,
            start,
        }) => {
            let name = name.parse()?;
            let base = options.base.clone().unwrap_or_else(|| "/".into());
            let services = feather_vm::services::check_installed(&base, &services)?;
            lifecycle::create(&root, &name, &create_options(&options)?)?;
            trace::phase("create the VM's folder and lease");
            feather_vm::services::configure(&root, &name, services, fresh_state)?;
            trace::phase("configure its services");
            if start {
                return start_created(&root, &name);
            }
        }
        Command::Start(StartArgs { name }) => return service::start(&root, &name.parse()?),
        Command::Stop { name, time } => {
            let stopped = lifecycle::stop(&root, &name.parse()?, Duration::from_secs(time))?;
            match stopped {
                lifecycle::Stopped::CleanedUp(why) => eprintln!("feather: VM {name} {why}"),
                // Processes of other VMs ended for this stop: worth telling who asked for it.
                lifecycle::Stopped::ByItsKeeper { handed_over, .. } => {
                    for said in handed_over {
                        eprintln!("feather: VM {name}: {said}");
                    }
                }
            }
        }
        Command::Rm { names, force } => remove_each(&root, &names, force)?,
        Command::Run(args) => return run(&root, args),
        Command::Pool(args) => pool(&root, args)?,
        Command::Exec(args) => {
            let code = exec(
                &root,
                &args.name.parse()?,
                &workload(&args.process, args.command)?,
                args.process.tty,
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
                // Pooled VMs are not listed; a root that looks empty is not (drain first).
                let pooled = feather_vm::pool::status(&root);
                let count = pooled.ready.len() + pooled.stale.len();
                // On stderr: a script that counts `ls`'s lines sees the VMs it made only.
                if count > 0 {
                    let vms = if count == 1 { "VM" } else { "VMs" };
                    eprintln!("feather: {count} {vms} in the pool, made ahead for `run --rm` (`feather pool` shows them)");
                }
            }
        }
        Command::Inspect { name } => output::json(&inspect::inspect(&root, &name.parse()?)?)?,
        Command::Policy(command) => return shuttle::policy(&root, command),
        Command::Open { .. } => unreachable!("handled before the root check"),
        _ => unreachable!("run by crate::full (see runs_elsewhere)"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `create --start`: the VM just created is started as `feather start` would, in this same
/// process (a script bringing up many VMs saves the second command's exec, parse and the state
/// root's opening). A start that fails leaves the VM created, and the error says so.
fn start_created(root: &StateRoot, name: &VmName) -> anyhow::Result<ExitCode> {
    service::start(root, name).map_err(|e| {
        anyhow::anyhow!(
            "{}; the VM was created, not started: `feather start {name}` tries again, \
             `feather rm {name}` removes it",
            feather_core::error::causes(e.as_ref())
        )
    })
}

/// `run`: a throw-away VM with --rm; otherwise the named VM, created and started as needed.
fn run(root: &StateRoot, args: RunArgs) -> anyhow::Result<ExitCode> {
    // The pool's VMs are of the default options only: any other is a miss, and starts no fill
    // (a VM of options it did not ask for would wait for no one). `FEATHER_POOL=0`: no pool.
    let opted_out = feather_vm::pooled::opted_out().map_err(anyhow::Error::msg)?;
    let default_vm =
        args.name.is_none() && !args.process.tty && args.create.is_empty() && !opted_out;
    let mut workload = workload(&args.process, args.command)?;
    if args.rm {
        start_where_the_caller_is(&mut workload, args.create.base.as_deref());
        if let Some(code) = run_from_the_pool(root, default_vm, &workload)? {
            return Ok(exit_code(code));
        }
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
        if default_vm && feather_vm::pool::size(root) > 0 {
            // Missed (empty, or nothing in it matched): the pool is made whole again for the
            // next run (not on a host whose runs keep finding it stale).
            if feather_vm::pooled::start_filler(root) {
                trace::phase("start the pool's fill");
            }
        }
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

/// `run --rm` in a VM of the pool (docs/design.md, "The pool"), if the run asks for nothing
/// but a VM of the default options and the pool has one that matches the host: its exit code.
/// The pool is refilled by a process the VM's keeper starts as the VM ends. `None`: the run
/// makes its own VM.
fn run_from_the_pool(
    root: &StateRoot,
    default_vm: bool,
    workload: &Workload,
) -> anyhow::Result<Option<i32>> {
    if !default_vm {
        return Ok(None);
    }
    // The VM's init was started by a fill, not by this caller: the command gets this
    // process's umask, limits, nice value and CPUs as a command of a cold run does.
    let workload = Workload {
        inherited: Some(feather_vm::workload::Inherited::of_this_process()),
        ..workload.clone()
    };
    let Some(claimed) = feather_vm::pool::claim(root, &workload) else {
        return Ok(None);
    };
    trace::phase("claim a VM of the pool");
    // Traced in parts: the command through the VM's init, then the wait for its set-aside.
    let code = feather_vm::pool::run_claimed(root, claimed, &workload);
    Ok(Some(code?))
}

/// `pool`: shows the pool, or sets its size (and brings it there), or empties it.
fn pool(root: &StateRoot, args: PoolArgs) -> anyhow::Result<()> {
    use feather_vm::pool;
    if args.fill {
        return Ok(pool::fill_detached(root, args.generation)?);
    }
    if let Some(idle) = args.idle {
        pool::set_idle(root, Some(idle).filter(|idle| !idle.is_zero()))?;
    }
    if args.drain || args.size == Some(0) {
        let drained = pool::drain(root)?;
        say_what_the_drain_left(&drained);
        return Ok(());
    }
    if let Some(size) = args.size {
        pool::set_size(root, size)?;
        // Made by a filler of its own, not by this process: its VMs must not carry this
        // caller's environment, terminal, limits or cgroups to other callers' runs.
        feather_vm::pooled::run_filler(root)?;
    }
    let status = pool::status(root);
    let names = |vms: &[VmName]| vms.iter().map(ToString::to_string).collect::<Vec<_>>();
    say!("size: {}", status.size)?;
    match status.idle {
        Some(idle) => say!("idle: {}", humantime::format_duration(idle))?,
        None => say!("idle: for ever")?,
    }
    say!(
        "ready: {} {}",
        status.ready.len(),
        names(&status.ready).join(" ")
    )?;
    if !status.stale.is_empty() {
        say!(
            "stale (removed by the next fill): {} {}",
            status.stale.len(),
            names(&status.stale).join(" ")
        )?;
    }
    if status.refills_stopped() {
        say!(
            "refills stopped: {} runs in a row found only stale VMs (the host's mounts or \
             settings change between runs); `feather pool --fill` makes the pool whole now, and \
             the next run that takes a VM from it starts them again",
            status.stale_misses
        )?;
    }
    Ok(())
}

/// The VMs a drain left to the runs that claimed them, on stderr: the pool itself is empty.
fn say_what_the_drain_left(drained: &feather_vm::pool::Drained) {
    for (name, pid) in &drained.in_use {
        eprintln!(
            "feather pool: VM {name} is in use by a run (pid {pid}) still running its command; \
             it is removed when that command ends (`feather ls` shows it until then)"
        );
    }
    for name in &drained.not_yet_removed {
        eprintln!(
            "feather pool: VM {name}'s run has ended but its keeper has not removed it yet; \
             `feather rm -f {name}` removes it"
        );
    }
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
        inherited: None,
    })
}

/// The number `code` stands for, for a `main` that returns it to the C library itself (the
/// front's: std offers no way to read it back on stable Rust).
pub fn exit_status(code: ExitCode) -> std::ffi::c_int {
    (0..=u8::MAX)
        .find(|status| ExitCode::from(*status) == code)
        .map_or(1, std::ffi::c_int::from)
}

pub(crate) fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::{end_options_after_app, exit_status, shown_error};
    use std::process::ExitCode;

    /// A name that is not UTF-8, escaped where the error was made, is shown escaped once
    /// (`\xff`); before, the CLI escaped the message again (`\\xff`). What a terminal would act
    /// on, in the message or a cause, is still shown as an escape.
    #[test]
    fn an_error_naming_a_path_that_is_not_utf8_is_escaped_once() {
        use std::os::unix::ffi::OsStrExt;
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(b"/mnt/b\xff\\x"));
        let error = anyhow::Error::new(std::io::Error::other("source \x1b[2J")).context(format!(
            "{} is gone",
            feather_core::display::escape_path(path)
        ));
        assert_eq!(
            shown_error(error.as_ref()),
            r"/mnt/b\xff\\x is gone: source \x1b[2J"
        );
    }

    /// The front returns the status itself (crates/feather/src/main.rs): every one is kept.
    #[test]
    fn every_exit_status_is_read_back() {
        for status in 0..=u8::MAX {
            assert_eq!(exit_status(ExitCode::from(status)), i32::from(status));
        }
        assert_eq!(exit_status(ExitCode::SUCCESS), 0);
        assert_eq!(exit_status(ExitCode::FAILURE), 1);
    }

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
