//! The process that finishes a throw-away VM's teardown after `feather run --rm` has reported
//! its command's exit status (`feather-keeper __finish`), and the one message between the two.
//!
//! ```text
//! front (run --rm, the VM's keeper)                      finisher
//!   init told Start, the command runs: spawns it ──────▶ waits, holding nothing of the VM's
//!   the VM's end: sets it aside; HandOver ─────────────▶ takes the keeper lock, the VM's mount
//!                                                        namespace and its layer in memory
//!   closes its own copies, exits (end of the socket) ──▶ lets go of them (the VM's tree is
//!                                                        unmounted), removes the rest
//!   ends without a hand-over (killed) ─────────────────▶ ends at once, having done nothing
//! ```
//!
//! Started once the command runs, when the front only waits: its spawn (a vfork whose child
//! resets every signal's action, then the exec; 0.2–0.3 ms of the front's time) and its start
//! (the static C library's, 0.55 ms of CPU here, most of it `cpuid` trapping to the hypervisor)
//! are not on the way to the command's start, nor on the way from its end to the exit status
//! for a command that runs longer than the spawn (the front looks for init's end once the spawn
//! has returned: a shorter command's exit status waits for it), while a core is free (on a busy
//! host its exec competes with init as Start wakes it).
//! Started while init finished its boot (until session 32) they took one of the host's cores
//! from init's last steps, and the vfork held the keeper's main thread 3.5–11 ms under load;
//! started at the hand-over, the spawn is on the way to the exit status (docs/design.md, "Where
//! a `run --rm` starts its finisher"). Until the hand-over it holds nothing of the VM's, the
//! keeper lock included (which comes with the hand-over): what a front killed before the
//! hand-over leaves is what it left before there was a finisher: a VM whose keeper is gone, or
//! a set-aside one whose lock is free, which the next feather command cleans up
//! ([`crate::lifecycle::settle_throw_aways`]).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use feather_core::{StateRoot, VmDir};

use crate::error::{io, Result};
use crate::launch::FinishArgs;

/// What the front hands over with the teardown besides the keeper lock: its holds on what
/// unmounting waits for (RCU grace periods), so that the last of them is let go by the
/// finisher, never on the front's way to its exit status.
#[derive(Default)]
pub struct Held {
    /// The VM's mount namespace (`Keeper::held_mounts`): its ~30 mounts go with it.
    pub mounts: Option<OwnedFd>,
    /// The VM's layer in memory (`layers::MemoryLayer`), a detached tmpfs whose descriptor's
    /// close unmounts it (0.2–1 ms, closed by the front on its way out before).
    pub memory_layer: Option<OwnedFd>,
}

impl Held {
    /// Lets go of the mounts first, then the layer they may hold.
    pub fn release(self) {
        let Held {
            mounts,
            memory_layer,
        } = self;
        drop(mounts);
        drop(memory_layer);
    }
}

/// The message: its first byte, then whether each of [`Held`]'s descriptors comes with it; the
/// keeper lock comes first, then those, in that order.
const HAND_OVER: u8 = b'F';

/// The front's end of a finisher it started.
pub struct Finisher {
    socket: OwnedFd,
    /// Never waited for: it outlives the front, and its end is the kernel's to collect.
    _process: std::process::Child,
}

impl Finisher {
    /// Starts the finisher of `vm`, which its teardown will set aside as `.removing-<name>-<id>`
    /// ([`VmDir::set_aside`]): the keeper program, in a process group of its own (the
    /// terminal's signals are not for it), with /dev/null as its stdio and none of this
    /// process's descriptors but its end of the socket, passed by name (it closes the rest at
    /// its start; see `feather_sys::process::spawn_handing_over`).
    pub fn start(root: &StateRoot, vm: &VmDir, id: &str) -> Result<Finisher> {
        let name = vm.name();
        let (ours, theirs) =
            feather_sys::fdpass::seqpacket_pair().map_err(|e| io(name, "socketpair")(e.into()))?;
        let args = FinishArgs {
            state_dir: root.dir().to_path_buf(),
            run_dir: root.run_dir().to_path_buf(),
            folder: vm.set_aside_folder(id),
            socket_fd: theirs.as_raw_fd(),
        };
        let exe = crate::launch::program().map_err(io(name, "cannot find the keeper program"))?;
        let mut command = std::process::Command::new(exe);
        std::os::unix::process::CommandExt::process_group(
            command
                .args(args.to_args())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
            0,
        );
        let process = feather_sys::process::spawn_handing_over(&mut command, &[theirs.as_fd()])
            .map_err(io(name, "cannot start its teardown"))?;
        Ok(Finisher {
            socket: ours,
            _process: process,
        })
    }

    /// Hands the teardown over (the VM is set aside already): sends the keeper `lock` (a copy
    /// of its descriptor: the lock is held as long as either is open) and `held`, then lets go
    /// of this process's copies of `held`, then of the socket, whose end tells the finisher that
    /// its own copies are the last. Given back if the finisher is not there to take it.
    pub fn hand_over(self, lock: &File, held: Held) -> std::result::Result<(), Held> {
        let fds: Vec<RawFd> = std::iter::once(lock.as_raw_fd())
            .chain(
                [&held.mounts, &held.memory_layer]
                    .into_iter()
                    .flatten()
                    .map(AsRawFd::as_raw_fd),
            )
            .collect();
        let message = [
            HAND_OVER,
            u8::from(held.mounts.is_some()),
            u8::from(held.memory_layer.is_some()),
        ];
        if feather_sys::fdpass::send(&self.socket, &message, &fds).is_err() {
            return Err(held);
        }
        held.release();
        drop(self);
        Ok(())
    }
}

/// In the finisher: waits for the front's hand-over on `socket`, then for the front to have
/// let go of its copies (the socket's end); the keeper lock, held, and the rest. `None` if the
/// front ended without handing over: nothing is the finisher's to do.
pub fn await_hand_over(socket: &OwnedFd) -> Option<(File, Held)> {
    let mut buffer = [0u8; 16];
    let (length, fds) = loop {
        match feather_sys::fdpass::receive(socket, &mut buffer) {
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return None,
            Ok(received) => break received,
        }
    };
    let [HAND_OVER, mounts, memory_layer] = buffer[..length] else {
        return None;
    };
    let mut fds = fds.into_iter();
    let lock = File::from(fds.next()?);
    let held = Held {
        mounts: (mounts == 1).then(|| fds.next()).flatten(),
        memory_layer: (memory_layer == 1).then(|| fds.next()).flatten(),
    };
    // The end of the socket: the front has closed its copies.
    loop {
        match feather_sys::fdpass::receive(socket, &mut buffer) {
            Ok((0, _)) => break,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    Some((lock, held))
}
