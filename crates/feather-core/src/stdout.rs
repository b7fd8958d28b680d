//! Lines on stdout for commands whose reader may go away: `feather ls | head -1` closes the
//! pipe after one line, and `println!` would then panic (status 101, a backtrace on stderr).
//! [`say!`](crate::say) reports it as [`StdoutError::ReaderGone`] instead, which the command
//! lines end on quietly with status 0, as when everything was read.

use std::io::Write;

/// Why a line could not be written to stdout.
#[derive(Debug, thiserror::Error)]
pub enum StdoutError {
    /// The reader closed its end: the command stops, and that is no failure of its own.
    #[error("the reader of stdout closed it")]
    ReaderGone,
    /// Any other failure (a full disk behind a redirection, say) is one.
    #[error("write to stdout")]
    Write(#[source] std::io::Error),
}

/// Writes one line to stdout; use it through [`say!`](crate::say).
pub fn say(line: std::fmt::Arguments) -> Result<(), StdoutError> {
    writeln!(std::io::stdout().lock(), "{line}").map_err(|e| match e.kind() {
        std::io::ErrorKind::BrokenPipe => StdoutError::ReaderGone,
        _ => StdoutError::Write(e),
    })
}

/// Whether `error`, or one of its causes, is a reader of stdout that went away.
pub fn reader_gone(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source())
        .any(|e| matches!(e.downcast_ref(), Some(StdoutError::ReaderGone)))
}

/// `say!("{} VMs", n)`: one line on stdout, as `println!` but returning a [`StdoutError`].
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::stdout::say(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_gone_is_found_among_the_causes_and_nothing_else_is_one() {
        #[derive(Debug, thiserror::Error)]
        #[error("listing")]
        struct Listing(#[source] StdoutError);
        assert!(reader_gone(&Listing(StdoutError::ReaderGone)));
        let full = StdoutError::Write(std::io::Error::from_raw_os_error(28));
        assert!(!reader_gone(&Listing(full)));
    }
}
