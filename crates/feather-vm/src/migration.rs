//! Migration of a running VM to another host, the asking sides: `feather migrate` on the
//! sender ([`migrate`]) and `feather serve` on the receiver ([`serve`]). The VM moves as a
//! checkpoint ([`crate::checkpoint`]) in an archive over feather_migrate's transfer protocol;
//! the receiver's keeper holds it stopped until the sender lets it go
//! ([`crate::snapshot::await_release`]), so it never runs twice and is never lost.

use std::fs;
use std::time::Duration;

use feather_core::atomic::Durability;
use feather_core::error::causes;
use feather_core::{Error, StateRoot, VmDir, VmName, VmStatus};
use feather_migrate::archive;

use crate::checkpoint::{checkpoint, import_archive, restore, serving, Progress, Source};
use crate::error::{failed, InVm, Result, VmError};
use crate::images::{held_for, RELEASED_TO};
use crate::lifecycle;
use crate::protocol::{self, Request, Response};

/// What a migration moved and how long the VM was frozen: from the start of its checkpoint
/// to the receiver's word that it runs there.
#[derive(Debug)]
pub struct Migrated {
    pub bytes: u64,
    pub frozen: Duration,
}

/// `feather migrate`: moves the running VM `name` to the receiver at `to` (a `feather serve`
/// knowing `token`). The receiver is asked first, so an unreachable one, a wrong token or an
/// address that cannot be kept there leaves the VM untouched. Then the VM is checkpointed and
/// its archive sent; the receiver restores it, stopped, and only once this side has let it go
/// does it run there, and only once it runs there is it removed here (two phases, see
/// feather_migrate::transfer). If anything fails before the release, the VM is restored here.
pub fn migrate(
    root: &StateRoot,
    name: &VmName,
    to: &str,
    token: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<Migrated> {
    let vm = root.open(name)?;
    if vm.read_state()?.status != VmStatus::Running {
        return Err(Error::NotRunning(name.to_string()).into());
    }
    let config = vm.read_config()?;
    let subnet = feather_net::subnet_of(root.dir(), &config.network).in_vm(name)?;
    let offer = feather_migrate::transfer::Offer {
        vm: name.to_string(),
        address: config
            .network
            .address
            .filter(|_| subnet.is_some())
            .map(|a| a.to_string())
            .unwrap_or_default(),
        subnet: subnet.map(|s| s.to_string()).unwrap_or_default(),
    };
    progress(Progress::Phase(&format!("asking {to} to take {name}")));
    let accepted = feather_migrate::transfer::offer(to, token, &offer)?;
    let started = std::time::Instant::now();
    progress(Progress::Phase(&format!(
        "checkpointing {name} (frozen from now on)"
    )));
    let sent = match checkpoint(root, name, false, None, progress) {
        Ok(_) => {
            progress(Progress::Phase(&format!("sending {name} to {to}")));
            // Made as it is sent: tar, the connection and the receiver work at once.
            let mut stream = archive::stream(vm.path());
            let output = stream.as_mut().ok().and_then(|s| s.take_output());
            match (stream, output) {
                (Err(e), _) => Err(VmError::MigrateVm {
                    vm: name.to_string(),
                    source: Box::new(e),
                }),
                (Ok(stream), Some(mut output)) => accepted
                    .send_archive(&mut output, move || stream.finish(), &mut |done, total| {
                        progress(Progress::Bytes { done, total });
                        if total > 0 && done == total {
                            progress(Progress::Phase(&format!("{to} restores {name}")));
                        }
                    })
                    .map_err(VmError::from),
                (Ok(_), None) => Err(failed(name, "tar gave no output")),
            }
        }
        Err(e) => Err(e),
    };
    let (bytes, restored) = match sent {
        Ok(sent) => sent,
        // The checkpoint itself failed: CRIU left the VM running.
        Err(e) if vm.read_state()?.status != VmStatus::Checkpointed => return Err(e),
        Err(e) => return restore_here(root, name, e, progress),
    };
    // From here the receiver may run the VM: a restore here must not happen unless it says it
    // does not.
    let marker = vm.checkpoint_dir().join(RELEASED_TO);
    feather_core::atomic::write_atomic(&marker, to.as_bytes(), Durability::Durable)?;
    progress(Progress::Phase(&format!("letting {name} run at {to}")));
    match restored.release() {
        feather_migrate::transfer::Released::Running => {
            let frozen = started.elapsed();
            lifecycle::remove(root, name, false)?;
            Ok(Migrated { bytes, frozen })
        }
        feather_migrate::transfer::Released::Failed(why) => {
            let _ = fs::remove_file(&marker);
            let e = failed(name, format!("{to} could not run it: {why}"));
            restore_here(root, name, e, progress)
        }
        feather_migrate::transfer::Released::Unknown(why) => Err(failed(
            name,
            format!(
                "the connection to {to} broke after the VM was let go there ({}), so it may \
                 run there or nowhere; it stays checkpointed here. If `feather ls` on {to} does \
                 not show it running, remove {} and `feather restore {name}` here",
                causes(&why),
                marker.display()
            ),
        )),
    }
}

/// After a failed migration: brings the VM back here.
fn restore_here(
    root: &StateRoot,
    name: &VmName,
    e: VmError,
    progress: &mut dyn FnMut(Progress),
) -> Result<Migrated> {
    progress(Progress::Phase(&format!(
        "migration failed; restoring {name} here"
    )));
    match restore(root, name, None) {
        Ok(()) => Err(VmError::MigrationFailed {
            vm: name.to_string(),
            source: Box::new(e),
        }),
        Err(again) => Err(VmError::MigrationAndRestoreFailed {
            vm: name.to_string(),
            migration: causes(&e),
            source: Box::new(again),
        }),
    }
}

/// `feather serve`: receives VMs sent by `feather migrate` with `token` on `listen` and runs
/// them in this state root; with `once`, returns after the first (its error, if it failed).
pub fn serve(
    root: &StateRoot,
    listen: &str,
    token: &str,
    once: bool,
    mut on_ready: impl FnMut(&str),
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    discard_unconfirmed(root);
    let receiver = feather_migrate::transfer::Receiver::bind(listen, token)?;
    on_ready(&receiver.local_addr());
    loop {
        let outcome = match receiver.next(|offer| take(root, offer)) {
            Ok(incoming) => receive(root, incoming, progress),
            Err(e) => {
                eprintln!("feather serve: {}", causes(&e));
                Err(e.into())
            }
        };
        if once {
            return outcome;
        }
    }
}

/// Why this host declines a VM offered to it (the sender is told, with every cause).
#[derive(Debug, thiserror::Error)]
enum Declined {
    #[error(transparent)]
    Name(#[from] feather_core::Error),
    #[error("a VM named {0} exists here already")]
    Exists(VmName),
    #[error("a garbled address")]
    Address,
    #[error(transparent)]
    Subnet(#[from] feather_net::subnet::SubnetError),
    #[error(transparent)]
    Net(#[from] feather_net::NetError),
}

/// Whether this host takes the VM offered: none of its name is here, and its address (if it
/// has a private network) can be kept here.
fn take(root: &StateRoot, offer: &feather_migrate::transfer::Offer) -> Result<(), Declined> {
    let name: VmName = offer.vm.parse()?;
    if root.open(&name).is_ok() {
        return Err(Declined::Exists(name));
    }
    if offer.address.is_empty() {
        return Ok(());
    }
    let network = feather_core::NetworkConfig {
        mode: feather_core::NetMode::Private,
        address: Some(offer.address.parse().map_err(|_| Declined::Address)?),
        ..Default::default()
    };
    let subnet = offer.subnet.parse()?;
    feather_net::keep_address(root.dir(), name.as_str(), &network, Some(subnet), None)?;
    Ok(())
}

/// Restores one received VM, stopped; lets it run once the sender has let it go; discards it
/// if anything fails on the way.
fn receive(
    root: &StateRoot,
    mut incoming: feather_migrate::transfer::Incoming,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    progress(Progress::Phase(&format!("receiving {}", incoming.vm)));
    let name: VmName = match incoming.vm.parse() {
        Ok(name) => name,
        Err(e) => {
            let e = VmError::from(e);
            incoming.finish(Err(&e));
            return Err(e);
        }
    };
    let restored = (|| -> Result<()> {
        // The VM's keeper keeps it stopped until this process tells it to resume, and ends it
        // if this process ends first; until then no one may restore it here.
        let source = Source::Migration(&mut incoming, &mut *progress);
        import_archive(root, &name, source, Some(std::process::id()))?;
        let vm = root.open(&name)?;
        progress(Progress::Phase(&format!("restoring {name}")));
        restore(root, &name, None)?;
        progress(Progress::Phase(&format!(
            "{name} restored; waiting for the sender to let it go"
        )));
        incoming
            .restored()
            .map_err(|source| VmError::NotCompleted {
                vm: name.to_string(),
                source,
            })?;
        resume(&vm)
    })();
    match &restored {
        Ok(()) => eprintln!("feather serve: VM {name} received and running"),
        Err(e) => {
            eprintln!("feather serve: {}", causes(e));
            // The sender keeps the VM or restores it at home: a copy left here would be a second.
            discard(root, &name);
        }
    }
    incoming.finish(
        restored
            .as_ref()
            .map(|_| ())
            .map_err(|e| e as &dyn std::error::Error),
    );
    restored
}

/// Removes a received VM that must not run here, whatever state it reached.
fn discard(root: &StateRoot, name: &VmName) {
    let Ok(vm) = root.open(name) else {
        return;
    };
    if let Ok(config) = vm.read_config() {
        // Its processes are stopped and were never let run: they end at once.
        let cgroup = crate::keeper::cgroup_path(&config);
        if cgroup.exists() {
            cgroup.kill_all();
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while vm.keeper_alive().unwrap_or(false) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = lifecycle::remove(root, name, true);
}

/// Copies of VMs that a migration brought here but never confirmed (their `feather serve`
/// ended first): the sender kept them. A serve starting removes them.
fn discard_unconfirmed(root: &StateRoot) {
    let Ok(entries) = fs::read_dir(root.dir().join("vms")) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(name) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<VmName>().ok())
        else {
            continue;
        };
        let Ok(vm) = root.open(&name) else { continue };
        if held_for(&vm).is_some_and(|pid| !serving(pid))
            && vm
                .read_state()
                .is_ok_and(|s| s.status == VmStatus::Checkpointed)
        {
            eprintln!(
                "feather serve: removing VM {name}: a migration that brought it here was never \
                 confirmed, so its sender kept it"
            );
            discard(root, &name);
        }
    }
}

/// In `feather serve`, once the sender has released the VM: tells its keeper to let it run.
fn resume(vm: &VmDir) -> Result<()> {
    let name = vm.name();
    match protocol::call(
        &vm.control_socket(),
        &Request::Resume,
        Duration::from_secs(30),
    ) {
        Ok(Response::Running { .. }) => Ok(()),
        Ok(other) => Err(VmError::KeeperAnswer {
            vm: name.to_string(),
            answer: format!("{other:?}"),
        }),
        Err(source) => Err(VmError::KeeperSilent {
            vm: name.to_string(),
            source,
        }),
    }
}
