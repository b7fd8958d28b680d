//! What the VM's resident processes (keeper and init) keep of their program while idle.
//!
//! Building a VM runs most of `feather-keeper`'s code once; serving it afterwards runs a few
//! pages of it. Every page a process ran stays mapped in its page tables until it exits, and
//! counts in its memory (an idle VM's keeper and init held about 1.9 MiB Pss of code this way).
//! So both give their program's pages back (feather_sys::memory: the pages stay in the page
//! cache, shared by every VM and reclaimable), and their heap's free pages, once the VM is up —
//! init right before its first wait, the keeper once quiet for [`QUIET`] (its shuttle thread
//! starts meanwhile) — and again whenever they have been quiet for [`QUIET`] after serving
//! something (an exec, an inspect, a checkpoint): the next request maps what it runs again with
//! minor faults, a few hundred microseconds, which a burst of requests pays once. The kernel
//! maps a faulting page's neighbours with it (fault-around, 64 KiB), so the release is made
//! from inside the function that then polls
//! (`feather_sys::memory::release_program_pages_and_poll`): what stays mapped while idle is
//! that function's window and the C library's `poll`.

use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollTimeout};

/// How long a resident process waits, after its last event, before giving its pages back: a
/// burst of requests (`feather exec` in a loop) comes closer together and pays the faults once;
/// a request after a pause pays them again, a few hundred microseconds.
pub const QUIET: Duration = Duration::from_millis(200);

/// Whether a resident process has pages to give back, and from when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Give them back before the next wait (the VM is up: what made it will not run again).
    Due,
    /// Busy at that moment: give them back once quiet for [`QUIET`].
    Busy(Instant),
    /// Given back, and nothing has run since.
    Released,
    /// The process is ending (its VM is being stopped): never given back again. Its teardown
    /// maps the pages again at once, and a release (reading its own smaps, tens of
    /// milliseconds on a loaded host) in the middle of a stop delayed the keeper's noticing
    /// that init had ended, and so every stop.
    Ending,
}

/// When a resident process last did something, and whether it has given its pages back since.
#[derive(Debug, Clone)]
pub struct Quiet {
    state: State,
}

impl Quiet {
    /// Gives the program's pages back right before the first wait.
    pub fn release_first() -> Quiet {
        Quiet { state: State::Due }
    }

    /// Gives the pages back after the first quiet period (a foreground run's keeper, whose
    /// command may end at once and whose teardown would map the pages again).
    pub fn busy_since(now: Instant) -> Quiet {
        Quiet {
            state: State::Busy(now),
        }
    }

    /// From now on the pages are not given back: the process is on its way out.
    pub fn ending(&mut self) {
        self.state = State::Ending;
    }

    /// poll(2) on `fds` until an event or `deadline`, giving the program's pages back when
    /// quiet. The release comes right before the poll call, so that the code it maps again
    /// is only what lies between the two.
    pub fn wait(&mut self, fds: &mut [PollFd], deadline: Option<Instant>) -> nix::Result<i32> {
        loop {
            let now = Instant::now();
            let releasing = self.release_due(now);
            if releasing {
                self.state = State::Released;
            }
            let wake = sooner(deadline, self.release_at());
            let timeout = wake.map_or(PollTimeout::NONE, |wake| {
                feather_sys::timed::poll_timeout(wake.saturating_duration_since(now))
            });
            let events = if releasing {
                release_and_poll(fds, timeout)
            } else {
                poll(fds, timeout)
            };
            let now = Instant::now();
            if events != Ok(0) || deadline.is_some_and(|deadline| now >= deadline) {
                if self.state != State::Ending {
                    self.state = State::Busy(now);
                }
                return events;
            }
        }
    }

    /// Whether the pages are to be given back now.
    fn release_due(&self, now: Instant) -> bool {
        match self.state {
            State::Due => true,
            State::Busy(at) => now >= at + QUIET,
            State::Released | State::Ending => false,
        }
    }

    /// When the pages are to be given back, if they are.
    fn release_at(&self) -> Option<Instant> {
        match self.state {
            State::Due => Some(Instant::now()),
            State::Busy(at) => Some(at + QUIET),
            State::Released | State::Ending => None,
        }
    }
}

/// The sooner of two moments, either of which may be "never" (`None`).
fn sooner(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Gives the heap's free pages and the program's pages back, then polls: the release comes
/// from inside the function that polls, so that the code it maps again is only that function's
/// (feather_sys::memory::release_program_pages_and_poll). Releasing is an optimisation: if /proc
/// cannot be read, the pages just stay mapped.
fn release_and_poll(fds: &mut [PollFd], timeout: PollTimeout) -> nix::Result<i32> {
    feather_sys::memory::release_program_pages_and_poll(fds, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_vm_releases_at_once() {
        let quiet = Quiet::release_first();
        assert!(quiet.release_due(Instant::now()));
    }

    #[test]
    fn a_busy_process_releases_after_a_quiet_period_and_then_waits_for_nothing() {
        let start = Instant::now();
        let mut quiet = Quiet::busy_since(start);
        assert_eq!(quiet.release_at(), Some(start + QUIET));
        assert!(
            !quiet.release_due(start + QUIET / 2),
            "not quiet long enough"
        );
        assert!(quiet.release_due(start + QUIET));
        quiet.state = State::Released;
        assert_eq!(quiet.release_at(), None, "nothing left to give back");
        assert!(!quiet.release_due(start + QUIET * 10));
    }

    #[test]
    fn an_event_ends_the_wait_and_restarts_the_quiet_period() {
        let (ours, theirs) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&theirs, b"x").unwrap();
        let mut quiet = Quiet::release_first();
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(&ours),
            nix::poll::PollFlags::POLLIN,
        )];
        let before = Instant::now();
        assert_eq!(quiet.wait(&mut fds, None), Ok(1));
        assert!(
            matches!(quiet.state, State::Busy(at) if at >= before),
            "the event made the process busy again: {:?}",
            quiet.state
        );
    }

    #[test]
    fn a_deadline_ends_the_wait_after_releasing_on_the_way() {
        let (ours, _theirs) = nix::unistd::pipe().unwrap();
        let start = Instant::now();
        let mut quiet = Quiet::busy_since(start);
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(&ours),
            nix::poll::PollFlags::POLLIN,
        )];
        let deadline = start + QUIET * 2;
        assert_eq!(quiet.wait(&mut fds, Some(deadline)), Ok(0));
        assert!(
            Instant::now() >= deadline,
            "the wait lasted until its deadline"
        );
    }

    #[test]
    fn an_ending_process_never_gives_its_pages_back_whatever_happens() {
        let (ours, theirs) = nix::unistd::pipe().unwrap();
        let start = Instant::now();
        let mut quiet = Quiet::busy_since(start);
        quiet.ending();
        assert!(!quiet.release_due(start + QUIET * 10));
        assert_eq!(quiet.release_at(), None, "no release to wake up for");
        nix::unistd::write(&theirs, b"x").unwrap();
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(&ours),
            nix::poll::PollFlags::POLLIN,
        )];
        assert_eq!(quiet.wait(&mut fds, None), Ok(1));
        assert_eq!(
            quiet.state,
            State::Ending,
            "an event does not make it busy again"
        );
    }

    #[test]
    fn the_sooner_moment_wins_and_never_loses() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        assert_eq!(sooner(Some(now), Some(later)), Some(now));
        assert_eq!(sooner(None, Some(later)), Some(later));
        assert_eq!(sooner(Some(now), None), Some(now));
        assert_eq!(sooner(None, None), None);
    }
}
