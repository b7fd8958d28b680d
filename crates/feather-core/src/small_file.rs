//! Reading a file of a state root (a setting, a rule file, a record) that is meant to be
//! small: at most a bound, never through a symbolic link, never waited on (a FIFO, a device).
//! Root reads these on every run; a link to `/dev/zero` would otherwise read until memory ran
//! out, host-wide, and a FIFO would hold the run for ever.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The plain file at `path`, whole, if it holds at most `max` bytes. Not there: `NotFound`,
/// as `fs::read` says it; a link, anything but a plain file, or more than `max` bytes: an
/// error that says which, and what to put there instead ([`too_large`] tells the last).
pub fn read(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = open(path)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            ErrorKind::FileTooLarge,
            format!("holds more than the {max} bytes such a file may: check what wrote it"),
        ));
    }
    Ok(bytes)
}

/// The plain file at `path`, opened to be read as [`read`] does (no link followed, nothing
/// waited on), for a file read piece by piece rather than whole (a checkpoint's image).
pub fn open(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => refused(
                ErrorKind::InvalidInput,
                "is a symbolic link, which feather does not follow here: it reads only a plain \
                 file at this path",
            ),
            _ => e,
        })?;
    if !file.metadata()?.is_file() {
        return Err(refused(
            ErrorKind::InvalidInput,
            "is not a plain file (a FIFO, a device or a folder): feather reads only a plain file \
             here",
        ));
    }
    Ok(file)
}

/// [`read`] as text; bytes that are not UTF-8 are an `InvalidData` error.
pub fn read_text(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read(path, max)?)
        .map_err(|_| refused(ErrorKind::InvalidData, "is not UTF-8 text"))
}

/// Whether [`read`] failed only because the file holds more than it may.
pub fn too_large(e: &io::Error) -> bool {
    e.kind() == ErrorKind::FileTooLarge
}

fn refused(kind: ErrorKind, why: &str) -> io::Error {
    io::Error::new(kind, why.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn only_a_plain_file_within_its_bound_is_read() {
        let scratch = feather_testkit::ScratchDir::new("small");
        let dir = scratch.0.clone();
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("plain"), "2\n").unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.join("zero")).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(dir.join("fifo"))
            .status()
            .unwrap();
        assert!(made.success());
        let plain = read(&dir.join("plain"), 2);
        let larger = read(&dir.join("plain"), 1);
        let link = read(&dir.join("zero"), 16);
        let waited = read(&dir.join("fifo"), 16);
        let missing = read(&dir.join("missing"), 16);
        assert_eq!(plain.unwrap(), b"2\n");
        assert!(too_large(&larger.unwrap_err()));
        assert!(link.unwrap_err().to_string().contains("symbolic link"));
        assert!(waited.unwrap_err().to_string().contains("not a plain file"));
        assert_eq!(missing.unwrap_err().kind(), ErrorKind::NotFound);
    }
}
