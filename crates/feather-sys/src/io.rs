//! Reading without zeroing first: a relay's 64 KiB buffer, zero-filled before every read, costs
//! its pages and the fill even when the read brings a few bytes or the end of the file.

use std::os::fd::{AsFd, AsRawFd};

use crate::raw;

/// Reads once from `fd`, at most `most` bytes, appending them to `buffer`: the bytes read, 0 at
/// the end of the file. Only what the kernel writes is touched (the buffer is reserved, not
/// filled), so a large `most` costs nothing when little comes.
pub fn read_appending(fd: impl AsFd, buffer: &mut Vec<u8>, most: usize) -> nix::Result<usize> {
    raw::read_appending(fd.as_fd().as_raw_fd(), buffer, most)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_read_follows_the_contents_and_the_end_reads_nothing() {
        let (reader, writer) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&writer, b"hello world").unwrap();
        let mut buffer = b">".to_vec();
        assert_eq!(read_appending(&reader, &mut buffer, 5).unwrap(), 5);
        assert_eq!(buffer, b">hello");
        assert_eq!(read_appending(&reader, &mut buffer, 64 * 1024).unwrap(), 6);
        assert_eq!(buffer, b">hello world");
        drop(writer);
        assert_eq!(read_appending(&reader, &mut buffer, 64 * 1024).unwrap(), 0);
        assert_eq!(buffer, b">hello world");
    }
}
