//! The commands on an existing container, with the errors runtime.md gives per state:
//! `start` only a created container, `kill` only a created or running one, `delete` only a
//! stopped one (a created one too, as runc; anything with `--force`).

use std::fs;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use feather_core::say;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxResources, Spec};

use crate::cgroups::{Groups, Made};
use crate::hooks::{self, Kind};
use crate::store::{Container, Record, Status};

/// The state JSON hooks read on their stdin.
pub fn hook_state(record: &Record, status: &str) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": oci_spec::runtime::VERSION,
        "id": record.id,
        "status": status,
        "pid": record.pid,
        "bundle": record.bundle,
        "annotations": record.annotations,
    })
}

pub fn state(root: &Path, id: &str) -> Result<()> {
    let container = Container::load(root, id)?;
    say!(
        "{}",
        serde_json::to_string_pretty(&container.state_json()?)?
    )?;
    Ok(())
}

pub fn start(root: &Path, id: &str) -> Result<()> {
    feather_core::trace::phase("start the program");
    let container = Container::load(root, id)?;
    feather_core::trace::phase("load the container");
    match container.status() {
        Status::Created => {}
        other => bail!(
            "cannot start container {id}: it is {} (only a created container can be started)",
            other.name()
        ),
    }
    let fifo = nix::fcntl::open(
        &container.fifo(),
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("cannot start container {id}: open its exec.fifo"))?;
    // The init writes one byte once released, and the fifo ends when its program's exec
    // closes the init's end (or the init exits).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut released = false;
    loop {
        let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(100u16));
        let mut byte = [0u8; 1];
        match nix::unistd::read(&fifo, &mut byte) {
            Ok(1) => released = true,
            Ok(_) if released => break,
            Ok(_) | Err(nix::errno::Errno::EAGAIN) => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot start container {id}: read its exec.fifo"))
            }
        }
        if !released && !container.init_alive() {
            bail!("cannot start container {id}: its init exited before the start (its error is on the container's stderr, in the engine's log); delete the container and create it again");
        }
        if Instant::now() > deadline {
            bail!("cannot start container {id}: its init did not take the start within 30 s (it is stuck in the kernel or stopped by a debugger); delete the container with --force");
        }
    }
    feather_core::trace::phase("release the init");
    let _ = fs::remove_file(container.fifo());
    let config = container.config()?;
    if let Err(error) = hooks::run(
        &config,
        Kind::Poststart,
        &hook_state(&container.record, "running"),
    ) {
        crate::log::warn(&format!("{error:#}"));
    }
    Ok(())
}

/// A signal by number, by name, or by name without `SIG`.
pub fn parse_signal(text: &str) -> Result<Signal> {
    if let Ok(number) = text.parse::<i32>() {
        return Signal::try_from(number).with_context(|| format!("invalid signal {text}"));
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| anyhow::anyhow!("invalid signal {text}"))
}

pub fn kill_container(root: &Path, id: &str, signal: &str, all: bool) -> Result<()> {
    let container = Container::load(root, id)?;
    let signal = parse_signal(signal)?;
    match container.status() {
        Status::Created | Status::Running | Status::Paused => {}
        other => bail!(
            "cannot kill container {id}: it is {} (container not running): nothing to signal; delete it",
            other.name()
        ),
    }
    if all {
        match container.own_groups() {
            Ok(groups) => return groups.signal_all(signal),
            Err(why) => crate::log::warn(&format!(
                "kill --all of container {id}: its record names {why}: only its init is \
                 signalled"
            )),
        }
    }
    let Some(init) = container.init_pidfd() else {
        bail!("cannot kill container {id}: its init has exited (container not running): nothing to signal; delete it");
    };
    feather_sys::process::signal(&init, signal)
        .map_err(|e| anyhow::anyhow!("cannot kill container {id}: send {signal} to its init: {e}"))
}

pub fn delete(root: &Path, id: &str, force: bool) -> Result<()> {
    feather_core::trace::phase("start the program");
    let container = match Container::load(root, id) {
        Ok(container) => container,
        Err(_) if force && !root.join(id).exists() => return Ok(()),
        Err(error) if force => {
            // A folder without a readable record: what a killed create leaves.
            crate::log::warn(&format!("{error:#}"));
            crate::mounts::remove_host_layer(&root.join(id));
            let _ = fs::remove_dir_all(root.join(id));
            return Ok(());
        }
        Err(error) => return Err(error),
    };
    let status = container.status();
    match status {
        Status::Stopped | Status::Created => {}
        Status::Creating if force => {}
        _ if force => {}
        other => bail!(
            "cannot delete container {id} that is not stopped: it is {} (use --force)",
            other.name()
        ),
    }
    let config = container.config();
    feather_core::trace::phase("load the container");
    destroy(&container);
    if let Ok(config) = config {
        let state = hook_state(&container.record, "stopped");
        if let Err(error) = hooks::run(&config, Kind::Poststop, &state) {
            crate::log::warn(&format!("{error:#}"));
        }
    }
    if container.dir.exists() {
        bail!("cannot delete container {id}: its folder {} is still there (its init did not exit, or a file in it could not be removed; see the warnings above); run delete --force again", container.dir.display());
    }
    Ok(())
}

/// Kills every process of the container and removes its cgroup and folder: the group only
/// where create made it for this container ([`Container::own_groups`]); the group a record
/// merely names (forged, or of a container made where its group could not be marked) is
/// left, and its processes, but the init, with a warning naming it.
pub fn destroy(container: &Container) {
    let groups = match container.own_groups() {
        Ok(groups) => Some(groups),
        Err(why) => {
            if container.groups().exists() {
                crate::log::warn(&format!(
                    "delete of container {}: its record names {why}: its init alone is \
                     killed, and the group left as it is (but for an empty feather-oci/<id>; \
                     remove it once empty, if it was the container's)",
                    container.record.id
                ));
            }
            None
        }
    };
    destroy_with(container, groups.as_ref());
    if groups.is_none() {
        remove_default_group_if_empty(container);
    }
}

/// The group a container not its own left ([`destroy`]), where it is create's default
/// (`feather-oci/<id>`, which no engine or administrator names) and bears no mark: removed
/// if it is empty (the init of a container with its own pid namespace took every process with
/// it), never emptied. Else every `delete` of a container made unmarked leaked its group, and
/// nothing listed it once the container's folder was gone.
fn remove_default_group_if_empty(container: &Container) {
    let default = crate::cgroups::relative_path(None, &container.record.id).ok();
    if default.as_deref() != Some(container.record.cgroup.as_str()) {
        return;
    }
    let groups = container.groups();
    if groups.mark().is_none() {
        groups.remove_if_empty();
    }
}

/// [`destroy`] of a container whose `create` or `restore` failed, by what it `made` of the
/// group ([`Made`]): a group it made anew is emptied and removed, marked or not (it may have
/// failed before the mark); one it joined (found empty) or never reached is not touched, its
/// init alone killed (a failed create's init has forked nothing yet).
pub fn undo(container: &Container, made: Made) {
    let groups = (made == Made::New).then(|| container.groups());
    destroy_with(container, groups.as_ref());
}

fn destroy_with(container: &Container, groups: Option<&Groups>) {
    if let Some(init) = container.init_pidfd() {
        let _ = feather_sys::process::signal(&init, Signal::SIGKILL);
    }
    feather_core::trace::phase("signal the init");
    if let Some(groups) = groups {
        groups.kill_all();
    }
    feather_core::trace::phase("kill the cgroups' processes");
    let deadline = Instant::now() + Duration::from_secs(5);
    while container.init_alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    feather_core::trace::phase("wait for the init to end");
    if let Some(groups) = groups {
        groups.remove();
    }
    feather_core::trace::phase("remove the cgroups");
    if container.record.pid == 0 || !container.init_alive() {
        crate::mounts::remove_host_layer(&container.dir);
        let _ = fs::remove_dir_all(&container.dir);
    }
    feather_core::trace::phase("remove the container's folder");
}

pub fn ps(root: &Path, id: &str, json: bool) -> Result<()> {
    let container = Container::load(root, id)?;
    let pids: Vec<i32> = container
        .named_groups()
        .map_err(|why| anyhow::anyhow!("ps of container {id}: its record names {why}"))?
        .members()
        .into_iter()
        .map(Pid::as_raw)
        .collect();
    if json {
        say!("{}", serde_json::to_string(&pids)?)?;
    } else {
        say!("PID CMD")?;
        for pid in pids {
            // The container names its processes (any bytes): escaped for the terminal.
            let command = fs::read(format!("/proc/{pid}/comm")).unwrap_or_default();
            let command = command.strip_suffix(b"\n").unwrap_or(&command);
            say!("{pid} {}", feather_core::display::escape_bytes(command))?;
        }
    }
    Ok(())
}

pub fn list(root: &Path, json: bool, quiet: bool) -> Result<()> {
    let mut states = Vec::new();
    for id in crate::store::ids(root) {
        if let Ok(container) = Container::load(root, &id) {
            states.push(container.state_json()?);
        }
    }
    if json {
        say!("{}", serde_json::to_string(&states)?)?;
    } else if quiet {
        for state in &states {
            say!("{}", state["id"].as_str().unwrap_or_default())?;
        }
    } else {
        say!(
            "{:<24} {:<8} {:<8} {:<40} CREATED",
            "ID",
            "PID",
            "STATUS",
            "BUNDLE"
        )?;
        for state in &states {
            say!(
                "{:<24} {:<8} {:<8} {:<40} {}",
                state["id"].as_str().unwrap_or_default(),
                state["pid"].to_string(),
                state["status"].as_str().unwrap_or_default(),
                state["bundle"].as_str().unwrap_or_default(),
                state["created"].as_str().unwrap_or_default()
            )?;
        }
    }
    Ok(())
}

pub fn pause(root: &Path, id: &str, frozen: bool) -> Result<()> {
    let container = Container::load(root, id)?;
    match (container.status(), frozen) {
        (Status::Running, true) | (Status::Paused, false) => {}
        (other, true) => bail!(
            "cannot pause container {id}: it is {} (container not running)",
            other.name()
        ),
        (other, false) => bail!(
            "cannot resume container {id}: it is {} (container not paused)",
            other.name()
        ),
    }
    let verb = if frozen { "pause" } else { "resume" };
    own_groups_to(verb, &container)?.freeze(frozen)
}

pub fn events(root: &Path, id: &str, stats: bool, interval: Duration) -> Result<()> {
    loop {
        let container = Container::load(root, id)?;
        if container.status() == Status::Stopped {
            bail!("container {id} is stopped");
        }
        let event = serde_json::json!({
            "type": "stats",
            "id": id,
            "data": container.named_groups().map(|groups| groups.stats()).ok(),
        });
        say!("{event}")?;
        if stats {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

pub fn update(root: &Path, id: &str, resources: Option<&Path>) -> Result<()> {
    let container = Container::load(root, id)?;
    if container.status() == Status::Stopped {
        bail!("cannot update container {id}: it is stopped");
    }
    let Some(path) = resources else {
        bail!("update: give the new limits with --resources FILE (or - for stdin)");
    };
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())?
    } else {
        fs::read_to_string(path).with_context(|| format!("--resources {}", path.display()))?
    };
    let resources: LinuxResources =
        serde_json::from_str(&text).context("--resources: not linux.resources JSON")?;
    crate::validate::check_resources_public(&resources)?;
    own_groups_to("update", &container)?.update(&resources)
}

/// The group `verb` (`pause`, `resume`, `update`) freezes or sets limits on: the one create
/// made for the container ([`Container::own_groups`]), as for `kill --all`; a group its record
/// merely names (`init.scope`, whose freezing would stop the host's init) is refused, by name.
fn own_groups_to(verb: &str, container: &Container) -> Result<Groups> {
    container.own_groups().map_err(|why| {
        anyhow::anyhow!(
            "cannot {verb} container {}: its record names {why}: nothing was changed (see \
             \"Whose group\" in feather-oci's docs)",
            container.record.id
        )
    })
}

/// runc's `features`: what this runtime honours.
pub fn features() -> Result<()> {
    let features = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": oci_spec::runtime::VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "async", "dirsync", "remount", "mand", "nomand", "atime", "noatime", "diratime", "nodiratime", "relatime", "norelatime", "strictatime", "nostrictatime", "bind", "rbind", "private", "rprivate", "shared", "rshared", "slave", "rslave", "unbindable", "runbindable", "idmap", "ridmap"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps::all().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": [std::env::consts::ARCH],
            },
            "mountExtensions": {"idmap": {"enabled": true}},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
        "annotations": {
            "org.feather.base": "host",
            "org.feather.tags": "comma-separated Shuttle tags",
        },
    });
    say!("{}", serde_json::to_string_pretty(&features)?)?;
    Ok(())
}

/// runc's `spec`: a starting config.json in the bundle.
pub fn spec(bundle: &Path) -> Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        bail!("{} exists; remove it first", path.display());
    }
    let mut spec = Spec::default();
    if let Some(process) = spec.process_mut() {
        process.set_terminal(Some(true));
    }
    spec.save(&path)
        .with_context(|| format!("write {}", path.display()))
}
