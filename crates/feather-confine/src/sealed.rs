//! A report a child writes once, before it execs or reports back, for the process that forked
//! it: a memfd shared across the fork, closed by the exec, sealed once written, so nothing can
//! change it after, and read from offset 0 whatever the shared file offset (review r27 R9;
//! lowroots29 L2: the restoring child's report of its layers had none of this).

use std::fs;
use std::os::unix::fs::FileExt;

/// See the module's doc.
pub struct SealedReport {
    pub(crate) file: fs::File,
    /// What it reports, for errors ("the mount table CRIU ran on").
    what: &'static str,
}

/// The seals a written report carries: no write, no size change, no further seal.
const SEALED: nix::fcntl::SealFlag = nix::fcntl::SealFlag::F_SEAL_WRITE
    .union(nix::fcntl::SealFlag::F_SEAL_SHRINK)
    .union(nix::fcntl::SealFlag::F_SEAL_GROW)
    .union(nix::fcntl::SealFlag::F_SEAL_SEAL);

impl SealedReport {
    /// An empty report named `name` (as `/proc/PID/fd` shows it) of `what`.
    pub fn new(name: &std::ffi::CStr, what: &'static str) -> std::io::Result<SealedReport> {
        let flags =
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING;
        let fd = nix::sys::memfd::memfd_create(name, flags)?;
        Ok(SealedReport {
            file: fs::File::from(fd),
            what,
        })
    }

    /// Writes `text` whole and seals it. An error here must stop the writer from going on.
    pub fn write(&self, text: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(text, 0)?;
        nix::fcntl::fcntl(&self.file, nix::fcntl::FcntlArg::F_ADD_SEALS(SEALED))?;
        Ok(())
    }

    /// What [`Self::write`] wrote, from offset 0; an error naming the report if it is not
    /// sealed (never written whole, or it may have changed since) or cannot be read.
    pub fn read(&self) -> Result<Vec<u8>, String> {
        let what = self.what;
        let seals = nix::fcntl::fcntl(&self.file, nix::fcntl::FcntlArg::F_GET_SEALS)
            .map_err(|e| format!("cannot read the seals of {what}: {e}"))?;
        if !nix::fcntl::SealFlag::from_bits_truncate(seals).contains(SEALED) {
            return Err(format!(
                "{what} was not sealed once written: it may have changed since, or never been \
                 written whole"
            ));
        }
        let mut text = Vec::new();
        let mut chunk = [0u8; 16 << 10];
        loop {
            match self.file.read_at(&mut chunk, text.len() as u64) {
                Ok(0) => return Ok(text),
                Ok(len) => text.extend_from_slice(&chunk[..len]),
                Err(e) => return Err(format!("cannot read {what}: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What was written reads back whole from offset 0; one never written (so unsealed) is
    /// refused, naming what it reports.
    #[test]
    fn a_report_reads_back_only_once_written_and_sealed() {
        let report = SealedReport::new(c"feather-test-report", "the test's report").unwrap();
        let unwritten = report.read().unwrap_err();
        assert!(
            unwritten.contains("the test's report was not sealed"),
            "{unwritten}"
        );
        report.write(b"[1,2]").unwrap();
        assert_eq!(report.read().unwrap(), b"[1,2]");
        assert!(
            report.file.write_at(b"x", 0).is_err(),
            "sealed against writes"
        );
    }
}
