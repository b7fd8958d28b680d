//! What a long-lived, mostly idle process keeps mapped of its program files.
//!
//! A VM's keeper and init run for the VM's whole life but, once it is up, execute only a few
//! pages of their code: waiting in poll, reaping, answering a request now and then. Every page
//! they touched while building the VM stays mapped in their page tables, and so counts in their
//! Rss and Pss and is protected from reclaim as a page a process maps, until they exit.
//! [`release_program_pages`] unmaps the pages of the process's program file (the executable
//! this code was linked into) that hold nothing of the process's own: the pages stay in the page cache, shared and
//! reclaimable, and the next use of one maps it again with a minor fault.
//!
//! Only the mappings of files mapped since the process started are released: its program and
//! the C library (a `DT_NEEDED` library of the program, which glibc never unloads). They live as
//! long as the process, so the range read from /proc/self/smaps still maps the same file when
//! madvise runs, whatever other threads do. A library opened later (dlopen) could be unmapped
//! (dlclose) and the range reused for memory of the process's own between the two. The C
//! library counts: on a quiet host few processes share its pages, and its Pss was half of an
//! idle VM's (0.73 of 1.58 MiB, keeper and init).

use crate::raw;

/// A range of this process's address space mapping its own program read-only and privately,
/// none of whose pages is the process's own copy: every page holds exactly the file's content,
/// so unmapping its pages loses nothing (each is read again from the page cache or the file),
/// and the mapping lasts as long as the process (a program is never unmapped).
///
/// Made only by [`clean_mappings_of`] from the kernel's own account of this process's mappings
/// (/proc/self/smaps); its fields are private so that nothing else makes one.
#[derive(Debug, PartialEq, Eq)]
struct CleanMapping {
    start: usize,
    end: usize,
}

impl CleanMapping {
    fn len(&self) -> usize {
        self.end - self.start
    }
}

/// Unmaps the pages of every clean mapping (see [`CleanMapping`]) of the files this process
/// has mapped since it started — its program and the C library — and returns how many bytes
/// of mappings it released (resident or not).
pub fn release_program_pages() -> crate::Result<usize> {
    use crate::Context;
    let smaps = std::fs::read_to_string("/proc/self/smaps").ctx("read", "/proc/self/smaps")?;
    // Every range is found before the first is released: code run after a release maps its
    // pages again.
    let mappings = releasable(&smaps);
    let mut released = 0;
    for (file, mapping) in &mappings {
        // SAFETY: a CleanMapping is a read-only private mapping of the file with no anonymous
        // page, read from the kernel's smaps just now; the program and the C library are
        // never unmapped, so the range still maps it (release_clean_pages' contract).
        unsafe { raw::release_clean_pages(mapping.start, mapping.len()) }
            .ctx("madvise(MADV_DONTNEED)", file)?;
        released += mapping.len();
    }
    Ok(released)
}

/// Gives the program's pages back as [`release_program_pages`] does, and the heap's free pages
/// ([`trim_heap`]), and waits in poll(2) on `fds` for up to `timeout`; returns what poll
/// returns. If /proc/self/smaps cannot be read, no program page is released (an optimisation
/// only) and the wait is the same.
///
/// Why one function: code that runs after the release maps its pages again, each fault with
/// its neighbours in the kernel's 64 KiB fault-around window. Released here, right before the
/// poll call, what the wait maps again is this function's own window and the C library's
/// `madvise` and `poll`, not every window of the code between a caller's release and its poll
/// (an idle VM's keeper and init kept four and five windows of `feather-keeper` that way, 0.25
/// and 0.31 MiB). What the release needs is found before the first page is given back; the
/// text of smaps (tens of KiB) is freed before the heap is trimmed, so that the wait does not
/// keep it resident.
pub fn release_program_pages_and_poll(
    fds: &mut [nix::poll::PollFd],
    timeout: nix::poll::PollTimeout,
) -> nix::Result<i32> {
    let mappings: Vec<CleanMapping> = std::fs::read_to_string("/proc/self/smaps")
        .map(|smaps| releasable(&smaps).into_iter().map(|(_, m)| m).collect())
        .unwrap_or_default();
    trim_heap();
    for mapping in &mappings {
        // SAFETY: as in release_program_pages: a CleanMapping read from the kernel's smaps
        // just now, of the program or the C library, which are never unmapped.
        let _ = unsafe { raw::release_clean_pages(mapping.start, mapping.len()) };
    }
    nix::poll::poll(fds, timeout)
}

/// The clean mappings of the files mapped at start (see [`startup_files`]), each with its file.
fn releasable(smaps: &str) -> Vec<(&str, CleanMapping)> {
    startup_files(smaps)
        .into_iter()
        .flat_map(|file| {
            clean_mappings_of(smaps, file)
                .into_iter()
                .map(move |m| (file, m))
        })
        .collect()
}

/// The files mapped at start and never unmapped: the program (where this very function's
/// code is) and the C library (where `free` is), once each (a static program is both).
fn startup_files(smaps: &str) -> Vec<&str> {
    let program = startup_files as fn(&str) -> Vec<&str> as usize;
    let c_library = libc::free as unsafe extern "C" fn(*mut libc::c_void) as usize;
    let mut files: Vec<&str> = [program, c_library]
        .into_iter()
        .filter_map(|address| file_mapped_at(smaps, address))
        .collect();
    files.dedup();
    files
}

/// Gives the allocator's free pages back to the kernel: what building something left free in
/// the heap of a process that will now mostly wait.
pub fn trim_heap() {
    raw::trim_heap();
}

/// The file `smaps` names for the mapping holding `address`. (For the program, not
/// /proc/self/exe, which names the dynamic loader when the program was started through it, as
/// a VM's init is, from inside the VM.)
fn file_mapped_at(smaps: &str, address: usize) -> Option<&str> {
    smaps.lines().find_map(|line| {
        let (range, rest) = line.split_once(' ')?;
        let (start, end) = range.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        let path = rest.splitn(5, ' ').nth(4)?.trim_start();
        ((start..end).contains(&address) && path.starts_with('/')).then_some(path)
    })
}

/// The program's file as `smaps` names it.
#[cfg(test)]
fn program_path(smaps: &str) -> Option<&str> {
    file_mapped_at(smaps, program_path as fn(&str) -> Option<&str> as usize)
}

/// The clean mappings of the file at `path` listed in `smaps` (the text of /proc/PID/smaps,
/// `path` as it names the file): neither writable nor shared (`r--p`,
/// `r-xp`), and no anonymous page in them (a page written once, by the loader's relocations or
/// a debugger, is the process's own and must stay).
fn clean_mappings_of(smaps: &str, path: &str) -> Vec<CleanMapping> {
    let mut clean = Vec::new();
    let mut current: Option<CleanMapping> = None;
    for line in smaps.lines() {
        if let Some(mapping) = read_only_mapping_of(line, path) {
            current = mapping;
            continue;
        }
        let Some(anonymous) = line.strip_prefix("Anonymous:") else {
            continue;
        };
        // Only a mapping the kernel counts no private page in is taken; a field that does not
        // read as a number keeps the mapping.
        let none = anonymous.trim().strip_suffix("kB").map(str::trim) == Some("0");
        if let Some(mapping) = current.take().filter(|_| none) {
            clean.push(mapping);
        }
    }
    clean
}

/// For a mapping's first line ("start-end perms offset dev inode path"): `Some(Some(range))`
/// for a read-only private mapping of the file at `path`, `Some(None)` for any other mapping,
/// `None` for a line that is not a mapping's first (a field such as "Rss: 4 kB").
fn read_only_mapping_of(line: &str, path: &str) -> Option<Option<CleanMapping>> {
    let (range, rest) = line.split_once(' ')?;
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let mut fields = rest.splitn(5, ' ');
    let perms = fields.next()?;
    // The path is the rest of the line after the inode, padded with spaces; it may hold spaces.
    let mapped = fields.nth(3).map(str::trim_start);
    let read_only_private = perms.len() == 4 && perms.as_bytes()[1] == b'-' && perms.ends_with('p');
    let clean = read_only_private && mapped == Some(path) && end > start;
    Some(clean.then_some(CleanMapping { start, end }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d01e73f000-55d01e7df000 r--p 00000000 fe:00 10576443                   /usr/bin/prog
Size:                640 kB
Rss:                 160 kB
Anonymous:             0 kB
VmFlags: rd mr mw me dw sd
55d01e7df000-55d01e9cc000 r-xp 0009f000 fe:00 10576443                   /usr/bin/prog
Size:               1972 kB
Anonymous:             0 kB
55d01e9cc000-55d01e9e9000 r--p 0028b000 fe:00 10576443                   /usr/bin/prog
Size:                116 kB
Anonymous:           116 kB
55d01e9e9000-55d01e9eb000 rw-p 002a7000 fe:00 10576443                   /usr/bin/prog
Anonymous:             0 kB
55d05bc92000-55d05bcb3000 rw-p 00000000 00:00 0                          [heap]
Anonymous:            56 kB
7f9882406000-7f988255c000 r-xp 00026000 fe:00 326279                     /usr/lib/libc.so.6 (deleted)
Anonymous:             0 kB
7f98825e0000-7f98825e1000 r--s 00000000 fe:00 326280                     /dev/shm/shared
Anonymous:             0 kB
7ffc6f7b1000-7ffc6f7b3000 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
";

    #[test]
    fn takes_read_only_private_file_mappings_without_a_page_of_their_own() {
        let clean = clean_mappings_of(SMAPS, "/usr/bin/prog");
        let ranges: Vec<(usize, usize)> = clean.iter().map(|m| (m.start, m.end)).collect();
        assert_eq!(
            ranges,
            [
                (0x55d01e73f000, 0x55d01e7df000),
                (0x55d01e7df000, 0x55d01e9cc000),
            ],
            "relocated (anonymous pages), writable, shared, other files' and vdso mappings must \
             be left"
        );
    }

    #[test]
    fn an_unreadable_anonymous_count_keeps_the_mapping() {
        let smaps = "1000-2000 r-xp 00000000 fe:00 1 /bin/x\nAnonymous: many\n";
        assert!(clean_mappings_of(smaps, "/bin/x").is_empty());
    }

    #[test]
    fn a_path_with_spaces_is_matched_whole() {
        let smaps = "1000-2000 r-xp 00000000 fe:00 1     /opt/my prog (deleted)\nAnonymous: 0 kB\n";
        assert_eq!(clean_mappings_of(smaps, "/opt/my prog (deleted)").len(), 1);
        assert!(clean_mappings_of(smaps, "/opt/my").is_empty());
    }

    /// Resident kB of this process's read-only mappings of its program (its code and
    /// constants), from /proc/self/smaps.
    fn resident_program_kb() -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let exe = program_path(&smaps).expect("the test's code is mapped from its file");
        let mut ours = false;
        let mut total = 0;
        for line in smaps.lines() {
            if let Some(mapping) = read_only_mapping_of(line, exe) {
                ours = mapping.is_some();
            } else if let Some(rss) = line.strip_prefix("Rss:").filter(|_| ours) {
                total += rss
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap();
            }
        }
        total
    }

    #[test]
    fn the_files_mapped_at_start_are_the_program_and_the_c_library() {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let files = startup_files(&smaps);
        assert_eq!(files.first().copied(), program_path(&smaps));
        assert!(
            files.iter().any(|f| f.contains("/libc.so")),
            "this dynamically linked test maps glibc: {files:?}"
        );
    }

    #[test]
    fn releasing_before_a_poll_unmaps_file_pages_and_the_poll_still_answers() {
        use nix::poll::{PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let (ours, theirs) = nix::unistd::pipe().unwrap();
        let before = resident_program_kb();
        let mut fds = [PollFd::new(ours.as_fd(), PollFlags::POLLIN)];
        let quiet = release_program_pages_and_poll(&mut fds, PollTimeout::ZERO);
        let after = resident_program_kb();
        assert_eq!(quiet, Ok(0), "nothing to read yet: the poll times out");
        assert!(
            after < before,
            "the program's resident pages: {before} kB before the release, {after} kB after"
        );
        nix::unistd::write(&theirs, b"x").unwrap();
        let mut fds = [PollFd::new(ours.as_fd(), PollFlags::POLLIN)];
        let ready = release_program_pages_and_poll(&mut fds, PollTimeout::NONE);
        assert_eq!(ready, Ok(1), "the pipe is readable: the poll reports it");
        assert!(fds[0].revents().unwrap().contains(PollFlags::POLLIN));
    }

    #[test]
    fn releasing_unmaps_file_pages_and_the_code_runs_on() {
        let before = resident_program_kb();
        let released = release_program_pages().expect("release");
        let after = resident_program_kb();
        assert!(released > 0, "the test binary maps its own code");
        // Reading smaps maps some code again, in 64 KiB windows (the kernel's fault-around).
        assert!(
            after < before,
            "the program's resident pages: {before} kB before the release, {after} kB after"
        );
        // The code this test runs next, and the allocator's, map again from the page cache.
        let text: String = (0..1000).map(|n| n.to_string()).collect();
        assert!(text.starts_with("0123"));
    }
}
