//! The stdio of a program in a VM when it has no terminal: three pipes feather makes and owns.
//! The VM gets only their far ends; this side copies between the caller's own stdin, stdout and
//! stderr and its ends. No descriptor of the caller ever reaches the VM: a read-only file given
//! as stdin cannot be reopened for writing through `/proc/self/fd/0`, and a terminal or pipe
//! of the caller cannot be kept and read by a VM process after the command ended.
//!
//! ```text
//! caller's stdin  ──read──▶ relay ──write──▶ pipe ──▶ program's stdin   (EOF: pipe closed)
//! caller's stdout ◀─write── relay ◀──read─── pipe ◀── program's stdout
//! caller's stderr ◀─write── relay ◀──read─── pipe ◀── program's stderr
//! ```
//!
//! A caller that runs programs for others (crate::program) gives the three descriptors that
//! stand for its own ([`Relay::with_caller_stdio`]).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// How long the output may stay silent, once the program ended, before the relay stops
/// waiting for its end (a process the program left running may hold the pipes open).
const QUIET: Duration = Duration::from_millis(100);

/// How long the relay goes on reading after the program ended while something else in the VM
/// keeps writing.
const LINGER: Duration = Duration::from_secs(2);

const CHUNK: usize = 64 * 1024;

/// The VM's ends of the three pipes: the program's stdin (a read end), stdout and stderr (write
/// ends), in that order.
pub type VmEnds = [OwnedFd; 3];

/// Makes the three pipes: the ends to send into the VM, and the relay for this side's ends.
pub fn pipes() -> nix::Result<(VmEnds, Relay)> {
    let (stdin_read, stdin_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (stdout_read, stdout_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (stderr_read, stderr_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // Only this side's ends are non-blocking: each end is an open file of its own, so the
    // program's ends keep the blocking behaviour programs expect.
    for ours in [&stdin_write, &stdout_read, &stderr_read] {
        fcntl(ours, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    }
    // Larger pipes mean fewer wake-ups for large outputs; the default is fine if refused.
    for output in [&stdout_read, &stderr_read] {
        let _ = fcntl(output, FcntlArg::F_SETPIPE_SZ(1 << 20));
    }
    let relay = Relay {
        stdin: Some(stdin_write),
        caller_stdin_open: true,
        pending: Vec::new(),
        outputs: [Some(stdout_read), Some(stderr_read)],
        given: None,
    };
    Ok(([stdin_read, stdout_write, stderr_write], relay))
}

/// This side's ends of the three pipes, and what is in flight between them and the caller.
pub struct Relay {
    /// The write end of the program's stdin; `None` once closed (the program sees its EOF).
    stdin: Option<OwnedFd>,
    /// Whether the caller's stdin may still give more.
    caller_stdin_open: bool,
    /// Read from the caller's stdin, not yet taken by the program.
    pending: Vec<u8>,
    /// The read ends of the program's stdout and stderr; `None` once at their end.
    outputs: [Option<OwnedFd>; 2],
    /// With [`Relay::with_caller_stdio`]: the stdin, stdout and stderr that stand for the
    /// caller's own.
    given: Option<[OwnedFd; 3]>,
}

/// What one polled descriptor of a [`Relay`] is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Slot {
    CallerStdin,
    ProgramStdin,
    /// The program's stdout (0) or stderr (1).
    Output(usize),
}

impl Relay {
    /// Copies between the program and `stdio` (stdin, stdout, stderr) instead of the caller's
    /// own: for a caller that runs programs for others (the shuttle broker in a keeper).
    pub fn with_caller_stdio(mut self, stdio: [OwnedFd; 3]) -> Relay {
        self.given = Some(stdio);
        self
    }

    /// The caller's stdin (0), stdout (1) or stderr (2), or what stands for it.
    fn caller(&self, fd: i32) -> BorrowedFd<'_> {
        match (&self.given, usize::try_from(fd)) {
            (Some(given), Ok(index)) if index < given.len() => given[index].as_fd(),
            _ => standard(fd),
        }
    }

    /// The descriptors to poll now, each with what it is.
    pub fn poll_fds(&self) -> Vec<(Slot, PollFd<'_>)> {
        let mut fds = Vec::with_capacity(4);
        if self.wants_caller_stdin() {
            fds.push((
                Slot::CallerStdin,
                PollFd::new(self.caller(0), PollFlags::POLLIN),
            ));
        }
        if let Some(stdin) = &self.stdin {
            // With nothing to write, the program's stdin is polled for no event: its POLLERR
            // still tells when the program's side closed (it ended, or closed its stdin).
            let events = if self.pending.is_empty() {
                PollFlags::empty()
            } else {
                PollFlags::POLLOUT
            };
            fds.push((Slot::ProgramStdin, PollFd::new(stdin.as_fd(), events)));
        }
        for (index, output) in self.outputs.iter().enumerate() {
            if let Some(output) = output {
                fds.push((
                    Slot::Output(index),
                    PollFd::new(output.as_fd(), PollFlags::POLLIN),
                ));
            }
        }
        fds
    }

    /// Acts on the descriptors poll found ready.
    pub fn handle(&mut self, ready: &[Slot]) {
        for slot in [
            Slot::Output(0),
            Slot::Output(1),
            Slot::ProgramStdin,
            Slot::CallerStdin,
        ] {
            if !ready.contains(&slot) {
                continue;
            }
            match slot {
                Slot::Output(index) => self.copy_output(index),
                Slot::ProgramStdin => self.feed_program(),
                Slot::CallerStdin => self.read_caller_stdin(),
            }
        }
        if !self.caller_stdin_open && self.pending.is_empty() {
            // The caller's stdin ended and all of it went to the program: the program's EOF.
            self.stdin = None;
        }
    }

    /// Whether the program's stdout and stderr have both reached their end.
    pub fn outputs_ended(&self) -> bool {
        self.outputs.iter().all(Option::is_none)
    }

    /// Once the program ended: its stdin closes, and what it wrote is copied out to the end of
    /// its stdout and stderr, or until they stay silent for [`QUIET`] (a process it left
    /// running may hold them open) or have been read for [`LINGER`] with no pause.
    pub fn finish(&mut self) {
        self.stdin = None;
        self.caller_stdin_open = false;
        self.pending.clear();
        let since = Instant::now();
        while !self.outputs_ended() && since.elapsed() < LINGER {
            let (ready, polled) = {
                let (slots, mut fds): (Vec<Slot>, Vec<PollFd>) =
                    self.poll_fds().into_iter().unzip();
                let quiet = PollTimeout::try_from(QUIET).unwrap_or(PollTimeout::MAX);
                let polled = poll(&mut fds, quiet);
                (ready_slots(&slots, &fds), polled)
            };
            match polled {
                Ok(0) => return,
                Err(Errno::EINTR) => continue,
                Err(_) => return,
                Ok(_) => self.handle(&ready),
            }
        }
    }

    /// Runs the relay on its own (a thread of a process with other work) until the program's
    /// outputs and stdin are closed, or until `stop` is readable or closed; then
    /// [`Relay::finish`]es.
    pub fn run(mut self, stop: OwnedFd) {
        while !(self.outputs_ended() && self.stdin.is_none()) {
            let (ready, stopped, polled) = {
                let (slots, mut fds): (Vec<Slot>, Vec<PollFd>) =
                    self.poll_fds().into_iter().unzip();
                fds.push(PollFd::new(stop.as_fd(), PollFlags::POLLIN));
                let polled = poll(&mut fds, PollTimeout::NONE);
                let stopped = fds
                    .last()
                    .and_then(PollFd::revents)
                    .is_some_and(|r| !r.is_empty());
                (ready_slots(&slots, &fds), stopped, polled)
            };
            match polled {
                Ok(_) if stopped => break,
                Ok(_) => self.handle(&ready),
                Err(Errno::EINTR) => {}
                Err(_) => break,
            }
        }
        self.finish();
    }

    /// Runs the relay in a thread of its own, with every signal blocked there (they are the
    /// process's main thread's to take). The caller must have no fork or clone ahead.
    pub fn spawn(self) -> std::io::Result<Relaying> {
        use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
        let (stop, stopping) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let mut previous = SigSet::empty();
        pthread_sigmask(
            SigmaskHow::SIG_BLOCK,
            Some(&SigSet::all()),
            Some(&mut previous),
        )?;
        // The new thread starts with the mask of this one: all blocked.
        let thread = std::thread::Builder::new()
            .name("stdio relay".into())
            .spawn(move || self.run(stop));
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None)?;
        Ok(Relaying {
            stopping,
            thread: thread?,
        })
    }

    fn wants_caller_stdin(&self) -> bool {
        self.caller_stdin_open && self.stdin.is_some() && self.pending.is_empty()
    }

    fn read_caller_stdin(&mut self) {
        let mut buffer = Vec::new();
        match feather_sys::io::read_appending(self.caller(0), &mut buffer, CHUNK) {
            Ok(0) => self.caller_stdin_open = false,
            Ok(_) => self.pending = buffer,
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            // Unreadable (closed, a directory, ...): as an empty stdin.
            Err(_) => self.caller_stdin_open = false,
        }
    }

    /// Writes what is pending into the program's stdin, as much as the pipe takes now.
    fn feed_program(&mut self) {
        let Some(stdin) = &self.stdin else {
            return;
        };
        if self.pending.is_empty() {
            // Polled for no event, so this is POLLERR: the program's side is closed.
            self.stdin = None;
            return;
        }
        match nix::unistd::write(stdin, &self.pending) {
            Ok(n) => {
                self.pending.drain(..n);
            }
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            // EPIPE: nobody in the VM reads it any more; the rest of the caller's stdin stays
            // unread.
            Err(_) => {
                self.stdin = None;
                self.pending.clear();
            }
        }
    }

    /// Copies what output `index` (0: stdout, 1: stderr) has to the caller's descriptor of
    /// the same number.
    fn copy_output(&mut self, index: usize) {
        let Some(output) = &self.outputs[index] else {
            return;
        };
        let mut buffer = Vec::new();
        match feather_sys::io::read_appending(output, &mut buffer, CHUNK) {
            Ok(0) => self.outputs[index] = None,
            Ok(_) => {
                if write_all(self.caller(index as i32 + 1), &buffer).is_err() {
                    // The caller's side is closed: closing the pipe gives the program the
                    // SIGPIPE (or EPIPE) it would have had writing there itself.
                    self.outputs[index] = None;
                }
            }
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(_) => self.outputs[index] = None,
        }
    }
}

/// One of the caller's own stdin (0), stdout (1) or stderr (2). Rust's runtime opened /dev/null
/// on any of them that was closed when the process started, so the numbers are never ours.
fn standard(fd: i32) -> BorrowedFd<'static> {
    feather_sys::process::standard_fd(fd)
}

/// The slots whose descriptor poll found ready (`fds` may go on past `slots`).
pub fn ready_slots(slots: &[Slot], fds: &[PollFd]) -> Vec<Slot> {
    slots
        .iter()
        .zip(fds)
        .filter(|(_, fd)| fd.revents().is_some_and(|r| !r.is_empty()))
        .map(|(slot, _)| *slot)
        .collect()
}

/// Writes all of `bytes` to a descriptor of the caller, which may be blocking or (if the
/// caller's open file is shared with a program that set O_NONBLOCK) not.
fn write_all(to: BorrowedFd, mut bytes: &[u8]) -> nix::Result<()> {
    while !bytes.is_empty() {
        match nix::unistd::write(to, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let mut fds = [PollFd::new(to, PollFlags::POLLOUT)];
                poll(&mut fds, PollTimeout::NONE)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A relay running in a thread of its own (see [`Relay::spawn`]).
pub struct Relaying {
    /// Closed to tell the relay the program ended.
    stopping: OwnedFd,
    thread: std::thread::JoinHandle<()>,
}

impl Relaying {
    /// Once the program ended: waits until the relay has copied out what it wrote.
    pub fn finish(self) {
        drop(self.stopping);
        let _ = self.thread.join();
    }
}
