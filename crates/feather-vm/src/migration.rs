//! Migration of a running VM to another host, the asking sides: `feather migrate` on the
//! sender ([`migrate`]) and `feather serve` on the receiver ([`serve`]). The VM moves as a
//! checkpoint ([`crate::checkpoint`]) in an archive over feather_migrate's transfer protocol;
//! the receiver's keeper holds it stopped until the sender lets it go
//! ([`crate::snapshot::await_release`]), so it never runs twice and is never lost.

use std::cell::{Cell, RefCell};
use std::fs;
use std::time::{Duration, Instant};

use feather_core::atomic::Durability;
use feather_core::error::causes;
use feather_core::{trace, Error, StateRoot, VmDir, VmName, VmStatus};
pub use feather_migrate::channel::{Security, TlsFiles};

use crate::checkpoint::{checkpoint, checkpoint_lazy, import_archive, restore, Progress, Source};
use crate::error::{failed, InVm, Result, VmError};
use crate::images::{held_for, Receiver};
use crate::imported::Accepted;
use crate::lifecycle;
use crate::protocol::{self, Request, Response};

/// How a VM moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
// The names are the modes' own (post-copy, stop-and-copy, pre-copy).
#[allow(clippy::enum_variant_names)]
pub enum Mode {
    /// Frozen for the dump of everything but its memory, the transfer of that and its layer,
    /// and the restore; its memory follows on demand from the sender's page server.
    PostCopy,
    /// Frozen for the whole dump, transfer and restore.
    StopAndCopy,
    /// Memory copied in rounds while it runs, then frozen for what changed: needs the kernel's
    /// soft-dirty page tracking.
    PreCopy,
}

/// The mode a migration takes: `asked`, if it works here, or else the best that does
/// (post-copy where CRIU's lazy pages work, stop-and-copy otherwise).
pub fn choose_mode(asked: Option<Mode>) -> Result<Mode> {
    let criu = feather_migrate::criu::Criu::locate().map_err(|e| VmError::MigrateVm {
        vm: String::new(),
        source: Box::new(e),
    })?;
    match asked {
        Some(Mode::StopAndCopy) => Ok(Mode::StopAndCopy),
        Some(Mode::PreCopy) => Err(VmError::ModeUnavailable {
            mode: "pre-copy",
            why: if criu.has_feature("mem_dirty_track") {
                "feather does not do pre-dump rounds yet".into()
            } else {
                "the kernel lacks soft-dirty page tracking (CONFIG_MEM_SOFT_DIRTY; `criu check \
                 --feature mem_dirty_track` fails), so rounds could not tell changed pages"
                    .into()
            },
        }),
        Some(Mode::PostCopy) => match criu.post_copy() {
            feather_migrate::criu::PostCopy::Unavailable { why } => Err(VmError::ModeUnavailable {
                mode: "post-copy",
                why,
            }),
            _ => Ok(Mode::PostCopy),
        },
        None if criu.post_copy().available() => Ok(Mode::PostCopy),
        None => Ok(Mode::StopAndCopy),
    }
}

/// What a migration moved and how long the VM was frozen: from the start of its checkpoint
/// to the receiver's word that it runs there.
#[derive(Debug, serde::Serialize)]
pub struct Migrated {
    pub mode: Mode,
    /// Bytes of the archive (the VM's files and, for stop-and-copy, its memory).
    pub bytes: u64,
    /// The layers sent before the freeze.
    #[serde(flatten)]
    pub precopy: PreCopied,
    #[serde(rename = "frozen_ms", serialize_with = "millis")]
    pub frozen: Duration,
    /// Post-copy: from the start of the freeze until the receiver had every page.
    #[serde(rename = "all_pages_ms", serialize_with = "maybe_millis")]
    pub all_pages: Option<Duration>,
    /// Where the freeze went: the dump, the archive's transfer and the receiver's import
    /// and restore, the release (until the receiver said the VM runs).
    pub phases_ms: Phases,
    /// Pages that travelled in the archive, before the VM ran at the receiver.
    pub pages_before_resume: u64,
    /// Pages that followed from the page server, fetched from the restore on (on demand
    /// once the VM runs, and in the background).
    pub pages_after_resume: u64,
    /// How the VM's network namespace travelled: `made anew` by the receiving keeper (its
    /// content was known), or `dumped` by CRIU, with why when feather made it and it had
    /// changed (see `crate::snapshot::NetnsAtDump`).
    pub network_namespace: String,
    /// Set when the VM runs at the receiver but its copy here could not be removed (its
    /// last keeper still writing its layer, say): what is left, and how to remove it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left_here: Option<String>,
}

/// Removes the VM's copy here once the receiver said it runs there. The migration succeeded
/// whatever happens here: a failed removal is said (in [`Migrated::left_here`]), not returned.
fn removed_here(root: &StateRoot, name: &VmName, to: &str) -> Option<String> {
    let e = lifecycle::remove(root, name, false).err()?;
    Some(format!(
        "{name} runs at {to}, but its copy here was not removed ({}); `feather rm {name}` \
         removes it once its keeper has ended",
        causes(&e)
    ))
}

/// [`Migrated::network_namespace`], from the images of the VM's checkpoint.
fn netns_moved(images: &std::path::Path) -> String {
    use crate::images::{EXTERNAL_NETNS, NETNS_DUMPED};
    if images.join(EXTERNAL_NETNS).exists() {
        return "made anew".into();
    }
    match fs::read_to_string(images.join(NETNS_DUMPED)) {
        Ok(why) => format!("dumped: {why}"),
        Err(_) => "dumped".into(),
    }
}

/// The parts of a migration's freeze, in milliseconds.
#[derive(Debug, Default, serde::Serialize)]
pub struct Phases {
    pub dump: u64,
    pub transfer_and_restore: u64,
    pub release: u64,
}

impl Phases {
    /// From the instants the freeze began, the dump ended and the receiver had restored the
    /// VM, to now, when it runs there.
    fn measured(started: Instant, dumped: Instant, restored: Instant) -> Phases {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Phases {
            dump: ms(dumped - started),
            transfer_and_restore: ms(restored - dumped),
            release: ms(restored.elapsed()),
        }
    }
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn maybe_millis<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match d {
        Some(d) => millis(d, s),
        None => s.serialize_none(),
    }
}

/// `feather migrate`: moves the running VM `name` to the receiver at `to` (a `feather serve`
/// knowing the same token; `security`: the token, and certificates from files or not), in
/// `mode` (see [`choose_mode`]). The receiver is asked first, so an unreachable one, a wrong
/// token or an address that cannot be kept there leaves the VM untouched. Then the VM is
/// checkpointed and its archive sent; the receiver restores it, stopped, and only once this
/// side has let it go does it run there, and only once it runs there is it removed here (two
/// phases, see feather_migrate::transfer). If anything fails before the release, the VM runs
/// here again.
pub fn migrate(
    root: &StateRoot,
    name: &VmName,
    to: &str,
    security: &Security,
    mode: Mode,
    progress: &mut dyn FnMut(Progress),
) -> Result<Migrated> {
    let vm = root.open(name)?;
    if vm.read_state()?.status != VmStatus::Running {
        return Err(Error::NotRunning(name.to_string()).into());
    }
    let config = vm.read_config()?;
    let subnet = feather_net::subnet_of(root.dir(), &config.network).in_vm(name)?;
    let relay = match mode {
        Mode::PostCopy => {
            ends_released_copy(&vm)?;
            let here = feather_migrate::transfer::local_address_towards(to).in_vm(name)?;
            Some(
                feather_migrate::pages::Relay::bind(here)
                    .map_err(|e| failed(name, format!("cannot listen for its page stream: {e}")))?,
            )
        }
        Mode::StopAndCopy => None,
        Mode::PreCopy => {
            return Err(choose_mode(Some(Mode::PreCopy))
                .err()
                .unwrap_or_else(|| failed(name, "pre-copy is not implemented")))
        }
    };
    let relay_port = match &relay {
        Some(relay) => relay
            .local_addr()
            .map_err(|e| failed(name, format!("cannot listen for its page stream: {e}")))?
            .port(),
        None => 0,
    };
    let offer = feather_migrate::transfer::Offer {
        vm: name.to_string(),
        address: config
            .network
            .address
            .filter(|_| subnet.is_some())
            .map(|a| a.to_string())
            .unwrap_or_default(),
        subnet: subnet.map(|s| s.to_string()).unwrap_or_default(),
        pages_port: relay_port,
    };
    progress(Progress::Phase(&format!("asking {to} to take {name}")));
    let accepted = feather_migrate::transfer::offer(to, security, &offer)?;
    match relay {
        Some(relay) => post_copy(root, name, to, accepted, relay, progress),
        None => stop_and_copy(root, name, to, accepted, progress),
    }
}

/// Post-copy needs a keeper that ends the VM's copy here once it was let go, never thaws it,
/// should the dump fail after the release: one of an older build (a VM that runs across an
/// upgrade of feather) looks for the release record where `migrate` no longer writes it, and
/// would let the copy here run on while it runs at the receiver. Such a keeper does not say
/// `ends_released_copy` ([`Response::Running`]): refused before anything happens.
fn ends_released_copy(vm: &VmDir) -> Result<()> {
    let name = vm.name();
    let answer = protocol::call(
        &vm.control_socket(),
        &Request::Status,
        Duration::from_secs(10),
    );
    let ends = protocol::expect(answer, name, |response| match response {
        Response::Running {
            ends_released_copy, ..
        } => Ok(ends_released_copy),
        other => Err(other),
    })?;
    if ends {
        return Ok(());
    }
    Err(failed(
        name,
        format!(
            "was started by an older feather, whose keeper could let its copy here run again \
             after a post-copy migration let it go (it would then run at both hosts); migrate it \
             with `--mode stop-and-copy`, or stop and start it (`feather stop {name}`, `feather \
             start {name}`) and migrate it again"
        ),
    ))
}

/// What [`send_folder`] sent: the archive's bytes, those of them that went before the
/// freeze, and the connection to the receiver, which has restored the VM, stopped.
struct Sent {
    bytes: u64,
    precopy: PreCopied,
    restored: feather_migrate::transfer::Restored,
}

/// The layer pre-copy: what went out while the VM still ran.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct PreCopied {
    /// Bytes of the archive sent before the freeze (the layers, compressed).
    #[serde(rename = "precopy_bytes")]
    pub bytes: u64,
    /// How long that took, the VM running.
    #[serde(rename = "precopy_ms", serialize_with = "millis")]
    pub took: Duration,
}

/// Sends the VM's folder as tar makes it: its layers while it still runs, then `freeze` (the
/// dump), then the rest and what of the layers changed meanwhile (feather_migrate::precopy).
/// Waits for the receiver to have restored it, stopped. An error of `freeze` ends the
/// transfer (the caller kept what it needs to know of it).
/// `frozen_bytes`: about how much of the VM travels only frozen (its memory, for
/// stop-and-copy), for the estimate of the freeze shown before it.
fn send_folder<'f>(
    vm: &VmDir,
    to: &str,
    accepted: feather_migrate::transfer::Accepted,
    progress: &RefCell<&mut dyn FnMut(Progress)>,
    frozen_bytes: u64,
    freeze: impl FnOnce() -> std::io::Result<()> + 'f,
) -> Result<Sent> {
    let name = vm.name();
    (progress.borrow_mut())(Progress::Phase(&format!(
        "sending {name}'s layers to {to} while it runs"
    )));
    let began = Instant::now();
    let frozen_at = Cell::new(None);
    let sent_so_far = Cell::new(0);
    let freeze = || {
        let rate = sent_so_far.get() as f64 / began.elapsed().as_secs_f64();
        (progress.borrow_mut())(Progress::EstimatedFreeze(estimated_freeze(
            frozen_bytes,
            rate,
        )));
        frozen_at.set(Some(Instant::now()));
        freeze()
    };
    let (mut stream, finish) =
        feather_migrate::precopy::stream(vm.path(), freeze).map_err(|e| VmError::MigrateVm {
            vm: name.to_string(),
            source: Box::new(e),
        })?;
    let sent = accepted.send_archive(&mut stream, move || finish.finish(), &mut |done, total| {
        sent_so_far.set(done);
        (progress.borrow_mut())(Progress::Bytes { done, total });
        if total > 0 && done == total {
            (progress.borrow_mut())(Progress::Phase(&format!("{to} restores {name}")));
        }
    });
    let precopy = PreCopied {
        bytes: stream.layer_bytes(),
        took: frozen_at.get().unwrap_or_else(Instant::now) - began,
    };
    let (bytes, restored) = sent?;
    Ok(Sent {
        bytes,
        precopy,
        restored,
    })
}

/// The part of a freeze that does not grow with what the VM holds: CRIU's dump and restore
/// of its processes, mounts and namespaces, the receiver's import and restoring keeper (what
/// a post-copy migration of an idle VM over `/` froze for on this machine, release build, load
/// about 6: 578 and 656 ms; docs/migration.md).
const FREEZE_BASE: Duration = Duration::from_millis(600);
/// The rate assumed for the frozen transfer when the pre-copy sent too little to tell one.
const ASSUMED_RATE: f64 = 100e6;

/// About how long a freeze moving `frozen_bytes` takes, at the pre-copy's `rate` (bytes per
/// second as sent, compressed; a rough guide, as the display says).
fn estimated_freeze(frozen_bytes: u64, rate: f64) -> Duration {
    let rate = if rate.is_finite() && rate > 1e6 {
        rate
    } else {
        ASSUMED_RATE
    };
    FREEZE_BASE + Duration::from_secs_f64(frozen_bytes as f64 / rate)
}

/// Stop-and-copy: the whole VM, memory included, travels in the archive while it is frozen
/// (its layers, but what changes meanwhile, went before).
fn stop_and_copy(
    root: &StateRoot,
    name: &VmName,
    to: &str,
    accepted: feather_migrate::transfer::Accepted,
    progress: &mut dyn FnMut(Progress),
) -> Result<Migrated> {
    let vm = root.open(name)?;
    let progress = RefCell::new(progress);
    let started = Cell::new(None);
    let dumped = Cell::new(None);
    let mut dump_error = None;
    let freeze = || {
        started.set(Some(Instant::now()));
        (progress.borrow_mut())(Progress::Frozen);
        (progress.borrow_mut())(Progress::Phase(&format!(
            "checkpointing {name} (frozen from now on)"
        )));
        let mut progress = |p: Progress| (progress.borrow_mut())(p);
        trace::phase("migrate: pre-copy of the layers");
        match checkpoint(root, name, false, None, &mut progress) {
            Ok(_) => {
                dumped.set(Some(Instant::now()));
                trace::phase("migrate: dump (frozen)");
                Ok(())
            }
            Err(e) => {
                let message = causes(&e);
                dump_error = Some(e);
                Err(std::io::Error::other(message))
            }
        }
    };
    let memory = crate::vm_group::cgroup_path(&vm.read_config()?)
        .memory_usage()
        .unwrap_or(0);
    let sent = send_folder(&vm, to, accepted, &progress, memory, freeze);
    let restored_at = Instant::now();
    trace::phase("migrate: the rest sent, imported and restored there");
    let progress = progress.into_inner();
    let Sent {
        bytes,
        precopy,
        restored,
    } = match (sent, dump_error) {
        (Ok(sent), _) => sent,
        // The checkpoint itself failed: CRIU left the VM running.
        (Err(_), Some(e)) => return Err(e),
        // Nothing was frozen yet: the VM runs here.
        (Err(e), None) if vm.read_state()?.status != VmStatus::Checkpointed => return Err(e),
        (Err(e), None) => return restore_here(root, name, e, progress),
    };
    let started = started.get().unwrap_or(restored_at);
    let dumped = dumped.get().unwrap_or(started);
    let stats = feather_migrate::criu::dump_stats(&vm.checkpoint_dir()).unwrap_or_default();
    let network_namespace = netns_moved(&vm.checkpoint_dir());
    // From here the receiver may run the VM: a restore here must not happen unless it says it
    // does not.
    let marker = crate::images::release_record(&vm);
    if let Err(e) = record_release(&marker, to) {
        let e = failed(name, format!("{e}: not let go to {to}"));
        return restore_here(root, name, e, progress);
    }
    progress(Progress::Phase(&format!("letting {name} run at {to}")));
    match restored.release() {
        feather_migrate::transfer::Released::Running => {
            let frozen = started.elapsed();
            trace::phase("migrate: release");
            progress(Progress::Resumed);
            let left_here = removed_here(root, name, to);
            Ok(Migrated {
                mode: Mode::StopAndCopy,
                bytes,
                precopy,
                frozen,
                phases_ms: Phases::measured(started, dumped, restored_at),
                all_pages: None,
                pages_before_resume: stats.pages_written,
                pages_after_resume: 0,
                network_namespace,
                left_here,
            })
        }
        feather_migrate::transfer::Released::Failed(why) => {
            let _ = fs::remove_file(&marker);
            let e = failed(name, format!("{to} could not run it: {why}"));
            restore_here(root, name, e, progress)
        }
        feather_migrate::transfer::Released::Unknown(why) => Err(unsure(name, to, &why, &marker)),
    }
}

/// For tests only: set (to anything), `migrate` writes the release record and then fails as a
/// failed sync of its folder would, the record in place. Read by a debug build only
/// ([`crate::test_hooks`]).
pub const FAIL_RELEASE_RECORD: &str = "FEATHER_TEST_FAIL_RELEASE_RECORD";

/// Writes the release record `marker` naming `to`, durably, before the release. A write that
/// fails removes what it may have left (the rename landed, the folder's sync failed): the VM
/// is not let go, and a record left would have its copy here ended, its only copy.
fn record_release(marker: &std::path::Path, to: &str) -> std::io::Result<()> {
    let written = feather_core::atomic::write_atomic(marker, to.as_bytes(), Durability::Durable)
        .map_err(|e| std::io::Error::other(causes(&e)))
        .and_then(|()| match crate::test_hooks::set(FAIL_RELEASE_RECORD) {
            Some(_) => Err(std::io::Error::other(format!(
                "{FAIL_RELEASE_RECORD} is set (a test)"
            ))),
            None => Ok(()),
        });
    written.map_err(|e| {
        let _ = fs::remove_file(marker);
        std::io::Error::other(format!(
            "cannot record the release in {} ({e})",
            marker.display()
        ))
    })
}

/// The error for a connection lost after the VM was let go at `to`.
fn unsure(
    name: &VmName,
    to: &str,
    why: &feather_migrate::transfer::TransferError,
    marker: &std::path::Path,
) -> VmError {
    failed(
        name,
        format!(
            "the connection to {to} broke after the VM was let go there ({}), so it may \
             run there or nowhere; it stays checkpointed here. If `feather ls` on {to} does \
             not show it running, remove {} and `feather restore {name}` here",
            causes(why),
            marker.display()
        ),
    )
}

/// Post-copy: everything but the VM's memory travels while it is frozen; the receiver runs it
/// as soon as it is restored, and its pages follow from this side's page server (CRIU's lazy
/// pages). Before the VM may run there, its processes here are frozen (cgroup freezer), so
/// that CRIU, which lets them go on if the page transfer fails, cannot run them twice: they
/// thaw only if the receiver says it could not run the VM, and end once it runs there. The
/// receiver's end of the page transfer reaches CRIU only once the VM is let go there (see
/// feather_migrate::pages::Relaying): CRIU would take it for a finished migration and end the
/// processes here, and the receiver's daemon sends it as soon as it has every page, which for a
/// small VM is before the receiver answers the release.
fn post_copy(
    root: &StateRoot,
    name: &VmName,
    to: &str,
    accepted: feather_migrate::transfer::Accepted,
    relay: feather_migrate::pages::Relay,
    progress: &mut dyn FnMut(Progress),
) -> Result<Migrated> {
    let vm = root.open(name)?;
    let config = vm.read_config()?;
    let cgroup = crate::vm_group::cgroup_path(&config);
    vm.read_state()?
        .keeper_pid
        .ok_or_else(|| Error::NotRunning(name.to_string()))?;
    let mut channel = Some(accepted.pages_channel());
    let progress = RefCell::new(progress);
    let started = Cell::new(None);
    let dumped = Cell::new(None);
    let mut dump_error = None;
    let mut lazy = None;
    let mut relaying = None;
    let freeze = || {
        started.set(Some(Instant::now()));
        (progress.borrow_mut())(Progress::Frozen);
        (progress.borrow_mut())(Progress::Phase(&format!(
            "checkpointing {name} but its memory (frozen from now on)"
        )));
        // A failed dump leaves the VM running here (CRIU resumes it).
        trace::phase("migrate: pre-copy of the layers");
        // CRIU's page server listens nowhere: the keeper passes the connection to it with
        // `Dumped` (see `checkpoint_lazy`), and only the relay uses it.
        let dump = checkpoint_lazy(root, name).map(|(checkpoint, page_server)| {
            dumped.set(Some(Instant::now()));
            trace::phase("migrate: dump but the memory (frozen)");
            lazy = Some(checkpoint);
            page_server
        });
        match dump {
            Ok(page_server) => {
                relaying = channel
                    .take()
                    .map(|channel| relay.serve(channel, page_server));
                Ok(())
            }
            Err(e) => {
                let message = causes(&e);
                dump_error = Some(e);
                Err(std::io::Error::other(message))
            }
        }
    };
    let sent = send_folder(&vm, to, accepted, &progress, 0, freeze);
    let restored_at = Instant::now();
    trace::phase("migrate: the rest sent, imported and restored there");
    let progress = progress.into_inner();
    let (sent, lazy) = match (sent, lazy) {
        (Ok(sent), Some(lazy)) => (sent, lazy),
        // Dumped, but it could not go: CRIU lets the processes go on here. They stay frozen
        // until the keeper has taken their TCP connections out of the repair mode CRIU left
        // them in (see `tcp_repair`).
        (Err(e), Some(lazy)) => {
            let frozen_here = cgroup.freeze(Duration::from_secs(10));
            let outcome = resume_here(lazy, relaying, dump_error.unwrap_or(e));
            crate::checkpoint::thaw_unless_keeper_died(frozen_here.ok(), &vm);
            return outcome;
        }
        (Ok(_), None) => return Err(failed(name, "its transfer ended without a dump")),
        // Nothing was frozen, or the dump failed: the VM runs here.
        (Err(e), None) => return Err(dump_error.unwrap_or(e)),
    };
    let Sent {
        bytes,
        precopy,
        restored,
    } = sent;
    let started = started.get().unwrap_or(restored_at);
    let dumped = dumped.get().unwrap_or(started);
    let frozen_here = match cgroup.freeze(Duration::from_secs(10)) {
        Ok(frozen) => frozen,
        Err(e) => {
            let e = failed(
                name,
                format!("cannot freeze it here before letting it go: {e}"),
            );
            return resume_here(lazy, relaying, e);
        }
    };
    crate::keeper::held_by_test(crate::keeper::HOLD_BEFORE_RELEASE);
    // A dump that failed meanwhile (CRIU's page server gone) could serve the receiver no page:
    // let go, the VM would die there at its first missing page, and be ended here. Not let go,
    // it runs on here, and the receiver discards its copy once `restored` is dropped.
    if lazy.ended_early() {
        let e = failed(
            name,
            format!(
                "its dump here failed before it was let go to {to}, which could have fetched \
                 none of its memory; it stays here"
            ),
        );
        let outcome = resume_here(lazy, relaying, e);
        crate::checkpoint::thaw_unless_keeper_died(Some(frozen_here), &vm);
        return outcome;
    }
    let marker = crate::images::release_record(&vm);
    if let Err(e) = record_release(&marker, to) {
        let e = failed(name, format!("{e}: not let go to {to}"));
        let outcome = resume_here(lazy, relaying, e);
        crate::checkpoint::thaw_unless_keeper_died(Some(frozen_here), &vm);
        return outcome;
    }
    progress(Progress::Phase(&format!("letting {name} run at {to}")));
    match restored.release() {
        feather_migrate::transfer::Released::Running => {
            let frozen = started.elapsed();
            trace::phase("migrate: release");
            progress(Progress::Resumed);
            let phases_ms = Phases::measured(started, dumped, restored_at);
            // It runs there: its processes here never run again, and the end of the page
            // transfer, which makes CRIU end them too, may reach it.
            cgroup.kill_all();
            drop(frozen_here);
            if let Some(relaying) = &relaying {
                relaying.let_go();
            }
            progress(Progress::Phase(&format!(
                "{name} runs at {to}; serving its memory until it has every page"
            )));
            let total = feather_migrate::criu::dump_stats(&vm.checkpoint_dir())
                .unwrap_or_default()
                .pages_lazy;
            let served = serve_pages(lazy, relaying.as_ref(), total, progress);
            let all_pages = started.elapsed();
            // CRIU writes its statistics once the last page was served.
            let stats = feather_migrate::criu::dump_stats(&vm.checkpoint_dir()).unwrap_or_default();
            let network_namespace = netns_moved(&vm.checkpoint_dir());
            if let Err(e) = served {
                return Err(VmError::PagesLost {
                    vm: name.to_string(),
                    to: to.to_owned(),
                    source: Box::new(e),
                });
            }
            let left_here = removed_here(root, name, to);
            Ok(Migrated {
                mode: Mode::PostCopy,
                bytes,
                precopy,
                frozen,
                phases_ms,
                all_pages: Some(all_pages),
                pages_before_resume: stats.pages_written,
                pages_after_resume: stats.pages_lazy,
                network_namespace,
                left_here,
            })
        }
        feather_migrate::transfer::Released::Failed(why) => {
            let _ = fs::remove_file(&marker);
            let e = failed(name, format!("{to} could not run it: {why}"));
            // The receiver discarded its copy; CRIU lets the processes go on once its page
            // transfer fails, and they thaw once it has.
            let outcome = resume_here(lazy, relaying, e);
            crate::checkpoint::thaw_unless_keeper_died(Some(frozen_here), &vm);
            outcome
        }
        feather_migrate::transfer::Released::Unknown(why) => {
            // It may run there: here it must never run again. Its memory is served on, in
            // case it does.
            cgroup.kill_all();
            drop(frozen_here);
            if let Some(relaying) = &relaying {
                relaying.let_go();
            }
            // Whether the receiver fetched every page tells what became of it there.
            match lazy.finish() {
                Ok(()) => Err(failed(
                    name,
                    format!(
                        "the connection to {to} broke after the VM was let go there ({}); \
                         the receiver fetched every page of its memory, so it runs there unless \
                         the release never reached it (then it is lost): check with `feather \
                         ls` there. Here its processes have ended (`feather rm {name}` removes \
                         what is left)",
                        causes(&why)
                    ),
                )),
                Err(e) => Err(VmError::PagesLost {
                    vm: name.to_string(),
                    to: to.to_owned(),
                    source: Box::new(e),
                }),
            }
        }
    }
}

/// Waits until CRIU's page server has served every page of `total` (see
/// [`crate::checkpoint::LazyCheckpoint::finish`]), telling `progress` about how many are left,
/// from the bytes the page server sent through `relaying`.
fn serve_pages(
    lazy: crate::checkpoint::LazyCheckpoint,
    relaying: Option<&feather_migrate::pages::Relaying>,
    total: u64,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    const PAGE: u64 = 4096;
    std::thread::scope(|scope| {
        let serving = scope.spawn(move || lazy.finish());
        while !serving.is_finished() {
            let sent = relaying.map(feather_migrate::pages::Relaying::served);
            if let (Some(sent), true) = (sent, total > 0) {
                progress(Progress::Pages {
                    left: total.saturating_sub(sent / PAGE),
                    total,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        serving
            .join()
            .unwrap_or_else(|_| Err(VmError::Keeper("the thread serving pages panicked".into())))
    })
}

/// After a post-copy migration failed before the receiver ran the VM: makes CRIU's page
/// server fail, whereupon CRIU lets the VM's processes here go on, and says what became of
/// them.
fn resume_here(
    lazy: crate::checkpoint::LazyCheckpoint,
    relaying: Option<feather_migrate::pages::Relaying>,
    e: VmError,
) -> Result<Migrated> {
    // The relay holds this side's end of the page server's connection, made with the
    // checkpoint (the keeper's copy of it only watches).
    if let Some(relaying) = relaying {
        relaying.refuse();
    }
    Err(lazy.resume(e))
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

/// `feather serve`: receives VMs sent by `feather migrate` on `listen` (over TLS, with the
/// token and certificates of `security`) and runs them in this state root; with `once`,
/// returns after the first (its error, if it failed). A VM whose config asks of this host more
/// than `accepted` states is refused (see [`crate::imported`]).
pub fn serve(
    root: &StateRoot,
    listen: &str,
    security: &Security,
    accepted: &Accepted,
    once: bool,
    mut on_ready: impl FnMut(&str),
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    discard_unconfirmed(root);
    // Found, and its kernel probes cached, before a VM is frozen for it.
    let _ = feather_migrate::criu::Criu::locate();
    let receiver = feather_migrate::transfer::Receiver::bind(listen, security)?;
    on_ready(&receiver.local_addr());
    loop {
        let outcome = match receiver.next(|offer| take(root, offer)) {
            Ok(incoming) => receive(root, incoming, accepted, progress),
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
    accepted: &Accepted,
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
    // The VM's network namespace, if its checkpoint leaves it out (as for every VM whose
    // namespace holds what feather made), is made now, while the VM is still running at the
    // sender, rather than by its restoring keeper during the freeze (5-25 ms). Not used, it goes.
    let ahead = std::thread::spawn(feather_sys::net::new_loopback_namespace);
    let restored = (|| -> Result<Option<Pages>> {
        // The VM's keeper keeps it stopped until this process tells it to resume, and ends it
        // if this process ends first; until then no one may restore it here.
        let source = Source::Migration(&mut incoming, &mut *progress);
        let receiver = Receiver::this_process().ok_or_else(|| {
            failed(
                &name,
                "cannot read this process's start time in /proc/self/stat, which names the \
                 receiver the VM waits for: mount /proc and serve again",
            )
        })?;
        import_archive(root, &name, source, accepted, Some(receiver))?;
        trace::phase("serve: archive received, checked, imported");
        let vm = root.open(&name)?;
        // Post-copy: the daemon that fetches the VM's memory listens before the restore.
        let pages = match &incoming.pages {
            Some(from) => Some(fetch_pages(&vm, from, &incoming.pages_channel())?),
            None => None,
        };
        trace::phase("serve: tunnel open, criu lazy-pages started");
        progress(Progress::Phase(&format!("restoring {name}")));
        // Made ahead, or, failing that, by the keeper as at any restore.
        let netns = ahead.join().ok().and_then(Result::ok);
        let netns = netns.as_ref().map(std::os::fd::AsFd::as_fd);
        crate::checkpoint::restore_with(root, &name, None, netns)?;
        trace::phase("serve: restored (keeper and CRIU), stopped");
        progress(Progress::Phase(&format!(
            "{name} restored; waiting for the sender to let it go"
        )));
        incoming
            .restored()
            .map_err(|source| VmError::NotCompleted {
                vm: name.to_string(),
                source,
            })?;
        trace::phase("serve: released by the sender");
        resume(&vm)?;
        trace::phase("serve: resumed");
        // Tests only: the VM runs here, the sender has not heard it yet.
        crate::keeper::held_by_test(crate::keeper::HOLD_AFTER_RESUME);
        Ok(pages)
    })();
    let restored = match restored {
        Ok(pages) => {
            // The sender hears that it runs here; its memory may still be on its way.
            incoming.finish(Ok(()));
            match pages {
                Some(pages) => pages.wait_all(root, &name),
                None => Ok(()),
            }
            .map(|()| eprintln!("feather serve: VM {name} received and running"))
        }
        Err(e) => {
            eprintln!("feather serve: {}", causes(&e));
            // The sender keeps the VM or restores it at home: a copy left here would be a second.
            discard(
                root,
                &name,
                "the sender keeps the VM or restores it at home",
            );
            incoming.finish(Err(&e));
            Err(e)
        }
    };
    restored
}

/// Post-copy, on the receiver: `criu lazy-pages`, fetching the VM's memory from the sender.
struct Pages {
    daemon: std::process::Child,
    vm: VmDir,
}

/// Starts the daemon fetching `vm`'s memory from the page server `from`, and marks the VM's
/// restore as lazy.
fn fetch_pages(
    vm: &VmDir,
    from: &feather_migrate::criu::PageServer,
    channel: &feather_migrate::channel::ServerSide,
) -> Result<Pages> {
    let name = vm.name();
    let criu = feather_migrate::criu::Criu::locate().in_vm(name)?;
    let images = vm.checkpoint_dir();
    let sender: std::net::SocketAddr = format!("{}:{}", from.address, from.port)
        .parse()
        .map_err(|_| failed(name, format!("a garbled page server address {from:?}")))?;
    let daemons_end = feather_migrate::pages::tunnel(sender, channel).map_err(|e| {
        failed(
            name,
            format!(
                "cannot reach the sender's page stream at {sender}: {}",
                causes(&e)
            ),
        )
    })?;
    // Not awaited here: the restoring keeper prepares while it starts, and waits for it only
    // before CRIU's restore (snapshot::restore_tree). Started from serve's main thread (as all
    // of `receive`), whose end ends it: were serve killed before the restore connected, it
    // would wait for good (docs/migration.md, "Post-copy").
    let pages = Pages {
        daemon: criu
            .lazy_pages(&images, std::os::fd::AsFd::as_fd(&daemons_end))
            .in_vm(name)?,
        vm: vm.clone(),
    };
    // Only the daemon holds its end now: its close of the transfer reaches the sender.
    drop(daemons_end);
    // A failure here drops `pages`, which ends the daemon.
    feather_core::atomic::write_atomic(
        &images.join(crate::images::LAZY),
        format!("{}:{}", from.address, from.port).as_bytes(),
        Durability::Durable,
    )?;
    Ok(pages)
}

impl Drop for Pages {
    /// A migration that failed before its VM ran here: the daemon's pages are not wanted (nor
    /// would they come: the sender's page server ends).
    fn drop(&mut self) {
        if let Ok(None) = self.daemon.try_wait() {
            let _ = self.daemon.kill();
            let _ = self.daemon.wait();
        }
    }
}

impl Pages {
    /// Waits until every page has arrived. If the daemon fails (the connection broke, the
    /// sender ended), the VM's memory is incomplete: pages it never got would read as zeros
    /// once the daemon is gone, so the VM is ended rather than left to run on wrong memory.
    fn wait_all(mut self, root: &StateRoot, name: &VmName) -> Result<()> {
        let images = self.vm.checkpoint_dir();
        let status = self.daemon.wait();
        let _ = fs::remove_file(images.join(crate::images::LAZY));
        let _ = fs::remove_file(images.join(feather_migrate::criu::LAZY_STATUS));
        if status.is_ok_and(|s| s.success()) {
            return Ok(());
        }
        let why = feather_migrate::criu::failure(
            name.as_str(),
            "fetch the memory of",
            &images.join(feather_migrate::criu::LAZY_LOG),
        );
        eprintln!(
            "feather serve: VM {name}: the rest of its memory cannot arrive ({}); ending it",
            causes(&why)
        );
        discard(
            root,
            name,
            "the sender has let the VM go, and the memory it lacks is lost",
        );
        Err(VmError::MigrateVm {
            vm: name.to_string(),
            source: Box::new(why),
        })
    }
}

/// Removes a received VM that must not run here, whatever state it reached; says in the
/// serve's log (its stderr) when it cannot, as a copy left here could be run beside the
/// sender's or run without its memory. `why_not_run`: why it must not, as the caller knows.
fn discard(root: &StateRoot, name: &VmName, why_not_run: &str) {
    if let Err(e) = discarded(root, name) {
        eprintln!(
            "feather serve: VM {name}: its copy here, which must not run ({why_not_run}), could \
             not be removed: {}; remove it with `feather rm --force {name}` (do not restore it)",
            causes(&e)
        );
    }
}

/// [`discard`], or why not.
fn discarded(root: &StateRoot, name: &VmName) -> Result<()> {
    let vm = match root.open(name) {
        Err(feather_core::Error::NotFound(_)) => return Ok(()),
        opened => opened?,
    };
    if let Ok(config) = vm.read_config() {
        // Its processes are stopped and were never let run: they end at once.
        let cgroup = crate::vm_group::cgroup_path(&config);
        if cgroup.exists() {
            cgroup.kill_all();
        }
    }
    // Its keeper ends with them, having recorded their end. One still there after 10 s is
    // no failure yet: the forced removal stops it, or waits for its end (bounded, and naming
    // it), and fails, said above, if it cannot; nothing is removed under a live keeper.
    // A failure to learn of it (its lock file unreadable) is said, but the removal, which
    // looks again, is still tried.
    let waited = vm.keeper_ends_by(Instant::now() + Duration::from_secs(10));
    lifecycle::remove(root, name, true)?;
    if let Err(e) = waited {
        eprintln!(
            "feather serve: VM {name}: its copy here is removed, though whether its keeper had \
             ended could not be learnt: {}",
            causes(&e)
        );
    }
    Ok(())
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
        if held_for(&vm).is_some_and(|receiver| !receiver.runs())
            && vm
                .read_state()
                .is_ok_and(|s| s.status == VmStatus::Checkpointed)
        {
            eprintln!(
                "feather serve: removing VM {name}: a migration that brought it here was never \
                 confirmed, so its sender kept it"
            );
            discard(root, &name, "the sender keeps the VM");
        }
    }
}

/// In `feather serve`, once the sender has released the VM: tells its keeper to let it run.
fn resume(vm: &VmDir) -> Result<()> {
    let answer = protocol::call(
        &vm.control_socket(),
        &Request::Resume,
        Duration::from_secs(30),
    );
    protocol::expect(answer, vm.name(), |response| match response {
        Response::Running { .. } => Ok(()),
        other => Err(other),
    })
}
