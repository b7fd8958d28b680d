//! Waiting with a deadline: [`poll_timeout`], poll(2)'s timeout for a wake-up some time away,
//! and [`Timed`], reading from a descriptor someone else writes (a VM's program): std's pipes
//! have no read timeout, and a writer that neither writes nor closes would hold the reader
//! without end.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// poll(2)'s timeout for a wake-up `left` from now: whole milliseconds, rounded up. Rounded
/// down (nix's conversion from a `Duration`), the last fraction of a millisecond before every
/// wake-up was a timeout of 0, and a wait for a deadline spun through it: an idle keeper, 200 ms
/// after its VM's start and after every request it served, made 67–81 polls in a row that
/// returned at once (under strace; many more without), up to a millisecond of CPU taken from
/// whatever started next.
pub fn poll_timeout(left: Duration) -> PollTimeout {
    PollTimeout::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(PollTimeout::MAX)
}

/// A reader whose reads fail with [`io::ErrorKind::TimedOut`] once its deadline passed
/// without data (`None`: no deadline).
pub struct Timed<R> {
    inner: R,
    deadline: Option<Instant>,
}

impl<R: Read + AsFd> Timed<R> {
    pub fn new(inner: R, deadline: Option<Instant>) -> Self {
        Timed { inner, deadline }
    }

    /// Moves the deadline (earlier or later).
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Waits until the descriptor is readable (or at its end) or the deadline passed.
    fn wait_readable(&self) -> io::Result<()> {
        let Some(deadline) = self.deadline else {
            return Ok(());
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fds = [PollFd::new(self.inner.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, poll_timeout(left)) {
                Ok(0) if left.is_zero() => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "no data in time"))
                }
                Ok(0) | Err(nix::errno::Errno::EINTR) => {}
                Ok(_) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl<R: Read + AsFd> Read for Timed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.wait_readable()?;
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_wake_up_less_than_a_millisecond_away_is_waited_for_not_spun_through() {
        assert_eq!(poll_timeout(Duration::ZERO), PollTimeout::ZERO);
        assert_eq!(
            poll_timeout(Duration::from_micros(1)),
            PollTimeout::from(1u8)
        );
        assert_eq!(
            poll_timeout(Duration::from_micros(600)),
            PollTimeout::from(1u8)
        );
        assert_eq!(
            poll_timeout(Duration::from_millis(1)),
            PollTimeout::from(1u8)
        );
        assert_eq!(
            poll_timeout(Duration::from_micros(199_600)),
            PollTimeout::from(200u8)
        );
        assert_eq!(poll_timeout(Duration::MAX), PollTimeout::MAX);
    }

    #[test]
    fn data_before_the_deadline_is_read_and_silence_after_it_times_out() {
        let (read, mut write) = std::io::pipe().unwrap();
        let mut timed = Timed::new(read, Some(Instant::now() + Duration::from_millis(200)));
        write.write_all(b"hi").unwrap();
        let mut buf = [0; 8];
        assert_eq!(timed.read(&mut buf).unwrap(), 2);
        let error = timed.read(&mut buf).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        // The writer gone, the end is read at once, whatever the deadline.
        drop(write);
        timed.set_deadline(Some(Instant::now()));
        assert_eq!(timed.read(&mut buf).unwrap(), 0);
    }
}
