//! `hooks`: each one run with the container's state JSON on its stdin, in the order and at the
//! moment runtime.md gives (prestart and createRuntime by `create` in the runtime's namespaces,
//! createContainer by the init before pivot_root, startContainer by the init before the
//! program, poststart by `start`, poststop by `delete`).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{Hook, Hooks, Spec};

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl Kind {
    fn field(self) -> &'static str {
        match self {
            Kind::Prestart => "hooks.prestart",
            Kind::CreateRuntime => "hooks.createRuntime",
            Kind::CreateContainer => "hooks.createContainer",
            Kind::StartContainer => "hooks.startContainer",
            Kind::Poststart => "hooks.poststart",
            Kind::Poststop => "hooks.poststop",
        }
    }

    fn of(self, hooks: &Hooks) -> Option<&Vec<Hook>> {
        match self {
            Kind::Prestart => hooks.prestart().as_ref(),
            Kind::CreateRuntime => hooks.create_runtime().as_ref(),
            Kind::CreateContainer => hooks.create_container().as_ref(),
            Kind::StartContainer => hooks.start_container().as_ref(),
            Kind::Poststart => hooks.poststart().as_ref(),
            Kind::Poststop => hooks.poststop().as_ref(),
        }
    }
}

/// Runs every hook of `kind`, stopping at the first that fails.
pub fn run(spec: &Spec, kind: Kind, state: &serde_json::Value) -> Result<()> {
    let Some(hooks) = spec.hooks().as_ref().and_then(|h| kind.of(h)) else {
        return Ok(());
    };
    let input = state.to_string();
    for (index, hook) in hooks.iter().enumerate() {
        run_one(hook, &input)
            .with_context(|| format!("{}[{index}] {}", kind.field(), hook.path().display()))?;
    }
    Ok(())
}

/// Runs `hook` with `state` on its stdin. It gets stdin, stdout and stderr only: not a
/// descriptor of the runtime's (the container's folder, its `exec.fifo`, a namespace), nor one
/// the engine left open when it started the runtime (security row 62).
fn run_one(hook: &Hook, state: &str) -> Result<()> {
    let mut command = feather_sys::process::command(hook.path());
    let args = hook.args().clone().unwrap_or_default();
    if let Some((first, rest)) = args.split_first() {
        command.arg0(first).args(rest);
    }
    command.env_clear();
    for pair in hook.env().iter().flatten() {
        if let Some((key, value)) = pair.split_once('=') {
            command.env(key, value);
        }
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("start")?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is not an error.
        let _ = stdin.write_all(state.as_bytes());
    }
    let deadline = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("failed: {status}");
            }
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {}s", hook.timeout().unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
