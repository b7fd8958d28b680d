//! Reading from a descriptor someone else writes (a VM's program) with a deadline: std's pipes
//! have no read timeout, and a writer that neither writes nor closes would hold the reader
//! without end.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

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
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.inner.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
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
    use std::time::Duration;

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
