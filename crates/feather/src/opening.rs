//! Opening the state root a command acts on: shared by the commands both binaries run
//! (crate::app) and those only `feather-full` runs (crate::full).

use feather_core::display::escape_controls_by_line;
use feather_core::store::NamedRoot;
use feather_core::{Error, StateRoot};
use feather_vm::lifecycle;

use crate::cli::{Cli, Command};

/// Makes the state root's folders exist and private, and records it in the host's registry
/// of roots before anything is put in it: a root new to the registry is hidden at once in
/// every VM already running (of any root), and every VM started later hides it too.
pub(crate) fn open_root(named: NamedRoot) -> anyhow::Result<StateRoot> {
    // The walk that named the root is the one judged, and the folder it found is registered.
    let (root, checked) = named.prepare_dir()?;
    let registry = feather_core::roots::Registry::host();
    let registered = registry.register_checked(&root, &checked);
    let registered = anyhow::Context::with_context(registered, || {
        format!(
            "cannot record state root {} in {}, which every VM start reads to keep VMs out of \
             it (make {} writable for root)",
            root.dir().display(),
            registry.dir().display(),
            registry.dir().display()
        )
    })?;
    if let Some(new) = &registered.new {
        for warning in feather_vm::hiding::in_running_vms(new) {
            eprintln!("feather: warning: {}", escape_controls_by_line(&warning));
        }
        // OCI containers over the host see the host's tree, state roots included.
        for warning in feather_oci::hiding::in_running_containers(new) {
            eprintln!("feather: warning: {}", escape_controls_by_line(&warning));
        }
    }
    // Its id goes in once it is hidden, as everything that goes in a new root.
    registered.mark()?;
    root.prepare_inside()?;
    Ok(root)
}

/// The state root a command acts on, opened ([`open_root`]) and with the teardowns of ended
/// throw-away VMs settled; only root may act on one.
pub(crate) fn opened_root(cli: &Cli) -> anyhow::Result<StateRoot> {
    must_be_root()?;
    let root = open_root(StateRoot::named(cli.global.root.clone()))?;
    lifecycle::settle_throw_aways(&root, waits_for_teardowns(&cli.command));
    feather_core::trace::phase("open the state root");
    Ok(root)
}

/// Whether the state root `network down` would act on has no folder: nothing of it to take
/// down, and the folder is not made (every other command makes a root that is missing, its
/// first command). Run after a root's folder was removed, it made the root again, and
/// recorded it in the host's registry of roots.
pub(crate) fn root_is_missing(cli: &Cli) -> anyhow::Result<bool> {
    must_be_root()?;
    let root = StateRoot::new(cli.global.root.clone());
    Ok(!root.dir().exists())
}

/// Only root may act on a state root.
pub(crate) fn must_be_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot.into());
    }
    Ok(())
}

/// Whether a command waits for the teardowns of throw-away VMs under way before it acts (it
/// finishes those whose finisher died either way). A throw-away run does not wait for the runs
/// before it, nor does an exec, which makes nothing that could meet what they leave: in a
/// script's loop, both would otherwise wait for the last run's network and folders to go. Nor
/// does a pool's fill (`pool --fill`), which the teardown of a VM of the pool starts.
fn waits_for_teardowns(command: &Command) -> bool {
    match command {
        Command::Run(args) => !args.rm,
        Command::Exec(_) => false,
        Command::Pool(args) => !args.fill,
        _ => true,
    }
}
