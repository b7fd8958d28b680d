//! CRIU's image files, rewritten as a crafted checkpoint would have them. An image is two
//! magic words, then entries: each a little-endian u32 length, then the encoded message
//! (CRIU's criu/protobuf.c); the messages are CRIU's images/*.proto.

use std::fs;
use std::path::Path;

use crate::protobuf::{decode, encode, rewrite_field, Value};

/// The entries of `image`, each its encoded message.
pub fn entries(image: &[u8]) -> Vec<&[u8]> {
    let (mut all, mut rest) = (Vec::new(), &image[8..]);
    while !rest.is_empty() {
        let size = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        all.push(&rest[4..4 + size]);
        rest = &rest[4 + size..];
    }
    all
}

/// `image` with each entry replaced by what `rewrite` makes of it; an entry rewritten into
/// nothing is left out.
pub fn rewrite_entries(image: &[u8], mut rewrite: impl FnMut(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let mut out = image[..8].to_vec();
    for entry in entries(image) {
        let entry = rewrite(entry);
        if entry.is_empty() {
            continue;
        }
        out.extend((entry.len() as u32).to_le_bytes());
        out.extend(entry);
    }
    out
}

/// [`rewrite_entries`] of an image that holds one entry (a core image, a seccomp image).
pub fn rewrite_only_entry(image: &[u8], rewrite: impl FnMut(&[u8]) -> Vec<u8>) -> Vec<u8> {
    assert_eq!(entries(image).len(), 1, "one entry after two magic words");
    rewrite_entries(image, rewrite)
}

/// Rewrites, in place, every image in the folder `images` whose name begins with `prefix`
/// (`core-`, `mountpoints-`, …) with [`rewrite_entries`].
pub fn rewrite_images(images: &Path, prefix: &str, mut rewrite: impl FnMut(&[u8]) -> Vec<u8>) {
    for entry in fs::read_dir(images).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(prefix) && name.ends_with(".img")) {
            continue;
        }
        let image = fs::read(entry.path()).unwrap();
        fs::write(entry.path(), rewrite_entries(&image, &mut rewrite)).unwrap();
    }
}

/// `CoreEntry.tc` (3): the task's own part of a core image, which only a task's first thread
/// has.
const TASK_CORE: u64 = 3;
/// `TaskCoreEntry.timers` (7): a `TaskTimersEntry`.
const TIMERS: u64 = 7;
/// `TaskTimersEntry.posix` (4): each a `PosixTimerEntry` (images/timer.proto).
const POSIX_TIMER: u64 = 4;

/// The `CoreEntry` `core` (an entry of a `core-<pid>.img`) with one more POSIX timer, which
/// signals SIGCONT every millisecond from a millisecond on; `None` if it has no task's timers
/// (the core image of a thread that is not its task's first). CRIU creates the timer in the
/// restored task, whose queued SIGSTOP the first expiry cancels: what a crafted checkpoint
/// does to run before its restorer's checks end.
pub fn with_sigcont_timer(core: &[u8]) -> Option<Vec<u8>> {
    const SIGCONT: u64 = 18;
    const CLOCK_MONOTONIC: u64 = 1;
    const MILLISECOND: u64 = 1_000_000;
    // it_id, clock_id, si_signo, it_sigev_notify (SIGEV_SIGNAL), sival_ptr, overrun,
    // interval (isec, insec), value left (vsec, vnsec).
    let timer = [
        (1, 0),
        (2, CLOCK_MONOTONIC),
        (3, SIGCONT),
        (4, 0),
        (5, 0),
        (6, 0),
        (7, 0),
        (8, MILLISECOND),
        (9, 0),
        (10, MILLISECOND),
    ]
    .map(|(number, value)| (number, Value::Varint(value)));
    let mut added = 0;
    let core = rewrite_field(core, TASK_CORE, &mut |task_core| {
        rewrite_field(task_core, TIMERS, &mut |timers| {
            let mut fields = decode(timers);
            fields.push((POSIX_TIMER, Value::Bytes(encode(&timer))));
            added += 1;
            encode(&fields)
        })
    });
    (added > 0).then_some(core)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entries: &[&[u8]]) -> Vec<u8> {
        let mut image = b"MAGICMAG".to_vec();
        for entry in entries {
            image.extend((entry.len() as u32).to_le_bytes());
            image.extend(*entry);
        }
        image
    }

    /// Entries are read in order, rewritten in place, and left out when rewritten into
    /// nothing; the magic words stay.
    #[test]
    fn entries_are_rewritten_in_place_or_left_out() {
        let original = image(&[b"one", b"two", b"three"]);
        assert_eq!(entries(&original), [&b"one"[..], b"two", b"three"]);
        let rewritten = rewrite_entries(&original, |entry| match entry {
            b"two" => Vec::new(),
            other => other.to_ascii_uppercase(),
        });
        assert_eq!(rewritten, image(&[b"ONE", b"THREE"]));
    }

    /// A task's core entry gets a second timer after the one it had, its other fields kept;
    /// a thread's (no `tc`) gets none.
    #[test]
    fn a_sigcont_timer_is_added_to_a_tasks_timers_only() {
        let own_timer = encode(&[(1, Value::Varint(7))]);
        let timers = encode(&[(POSIX_TIMER, Value::Bytes(own_timer.clone()))]);
        let task_core = encode(&[(1, Value::Varint(5)), (TIMERS, Value::Bytes(timers))]);
        let core = encode(&[(1, Value::Varint(62)), (TASK_CORE, Value::Bytes(task_core))]);

        let crafted = decode(&with_sigcont_timer(&core).unwrap());
        let Value::Bytes(task_core) = &crafted[1].1 else {
            panic!("{crafted:?}")
        };
        let Value::Bytes(timers) = &decode(task_core)[1].1 else {
            panic!("{task_core:?}")
        };
        let posix = decode(timers);
        assert_eq!(posix[0], (POSIX_TIMER, Value::Bytes(own_timer)));
        let Value::Bytes(added) = &posix[1].1 else {
            panic!("{posix:?}")
        };
        assert!(decode(added).contains(&(3, Value::Varint(18))), "SIGCONT");

        let thread_core = encode(&[(1, Value::Varint(62))]);
        assert_eq!(with_sigcont_timer(&thread_core), None);
    }
}
