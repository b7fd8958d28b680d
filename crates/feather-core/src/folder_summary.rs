//! A folder of small JSON files read as one: the files' texts kept in a summary file, which a
//! later read takes instead of opening each file, as long as the folder is provably as it was
//! summarised.
//!
//! Made for the registry of state roots ([`crate::roots`]), which every start reads whole and
//! which keeps up to 64 entries of roots removed by hand: read file by file, a start's cost
//! grew with each (issue 15). The summary is a cache, never a record, and never makes a read
//! see less than reading every file would:
//! - it holds each file's text as read, which the reader parses as it would the file: a
//!   binary that knows fewer fields than the reader (an older one, still running) cannot
//!   write them away;
//! - it is written only of a read that read every file listed (any error but a text that does
//!   not parse, even a passing one such as EMFILE, writes none), of a folder whose listing
//!   could be read whole;
//! - what it says is trusted only while it matches what it summarises, so a stale one (a file
//!   added, replaced or removed since), a half-written or unreadable one, or one naming other
//!   files than the folder holds (one more, one fewer, one twice) is passed over, and the
//!   files are read as before. It matches when
//!   - the folder's identity and its modification and change times are those recorded, and
//!   - the folder lists the same `*.json` files, each with the same inode number: every file
//!     is written by a rename of a new file over it ([`crate::atomic::write_atomic`]), which
//!     gives it a new inode and the folder a new modification time.
//!
//! A summary is written only of a folder last changed [`SETTLED`] before the read began: a
//! file renamed in during the read would otherwise leave the folder's time as recorded (a
//! filesystem's clock ticks in steps, up to a second on some) and the summary without it; and
//! a file replaced twice after it, the second time given the inode the first had, changes the
//! folder's time to one past the recorded one. It lives in a subfolder of its own
//! ([`SUMMARY_DIR`]), so that writing it changes nothing the summary records, is written 0600
//! and is read only where it is a plain file of the folder's owner that no one else can write.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::atomic::{write_atomic_private, Durability};

/// The subfolder, of the summarised folder, that holds the summary.
pub const SUMMARY_DIR: &str = "summary";

/// The summary's name in [`SUMMARY_DIR`].
const SUMMARY_FILE: &str = "files.json";

/// How the temporary files of the summary's writers begin ([`crate::atomic::stage`]).
const SUMMARY_TEMP: &str = ".files.json.";

/// How old a writer's temporary file must be to count as a dead writer's: a live writer
/// renames it within a moment of making it.
const ABANDONED: Duration = Duration::from_secs(60);

/// How long before a read the folder must have last changed for the read to be summarised:
/// more than the coarsest step of a filesystem's clock (a second).
const SETTLED: Duration = Duration::from_secs(2);

/// The most a summary may weigh (read or written): far more than 64 entries of a few hundred
/// bytes each.
const MAX_SUMMARY: u64 = 4 << 20;

/// The most a file may weigh to be summarised: a larger one is read each time.
const MAX_FILE: usize = 64 << 10;

/// Bumped when the summary's form changes: one of another form is passed over.
const FORM: u32 = 2;

/// The files of a folder, each with what it parsed to (None: it could not be read, or did not
/// parse).
pub type Parsed<T> = Vec<(PathBuf, Option<T>)>;

/// The `*.json` files of `folder`, each's text parsed by `parse`, taken from the summary where
/// that matches the folder, else read one by one (and summarised where every file was read and
/// the folder has settled). A folder that cannot be listed holds none.
pub fn read<T>(folder: &Path, parse: impl Fn(&[u8]) -> Option<T>) -> Parsed<T> {
    read_with(folder, |path| fs::read(path), parse)
}

/// [`read`], each file read by `read_file`.
fn read_with<T>(
    folder: &Path,
    read_file: impl Fn(&Path) -> std::io::Result<Vec<u8>>,
    parse: impl Fn(&[u8]) -> Option<T>,
) -> Parsed<T> {
    let began = SystemTime::now();
    let Some(seen) = Seen::of(folder) else {
        return Vec::new();
    };
    if let Some(texts) = summary_of(folder, &seen) {
        return parsed(
            folder,
            texts
                .into_iter()
                .map(|(name, text)| (name, Ok(text.into_bytes()))),
            &parse,
        );
    }
    let read: Vec<(String, u64, std::io::Result<Vec<u8>>)> = seen
        .listing
        .iter()
        .map(|(name, ino)| (name.clone(), *ino, read_file(&folder.join(name))))
        .collect();
    if seen.complete && seen.stamp.settled_before(began) {
        if let Some(files) = summarisable(&read) {
            // A cache: one not written (a full disk, a read-only registry) costs the next read.
            let _ = write_summary(
                folder,
                &Summary {
                    form: FORM,
                    stamp: seen.stamp,
                    files,
                },
            );
        }
    }
    parsed(
        folder,
        read.into_iter().map(|(name, _, text)| (name, text)),
        &parse,
    )
}

/// Each file of `folder` by path, parsed where its text could be read.
fn parsed<T>(
    folder: &Path,
    texts: impl Iterator<Item = (String, std::io::Result<Vec<u8>>)>,
    parse: impl Fn(&[u8]) -> Option<T>,
) -> Parsed<T> {
    texts
        .map(|(name, text)| (folder.join(name), text.ok().and_then(|text| parse(&text))))
        .collect()
}

/// The files `read` as a summary holds them, if every one was read (a file that could not be
/// read may hold anything: summarised as nothing, it would stay unseen until the folder
/// changes) and each is text small enough to keep.
fn summarisable(
    read: &[(String, u64, std::io::Result<Vec<u8>>)],
) -> Option<Vec<(String, u64, String)>> {
    read.iter()
        .map(|(name, ino, text)| {
            let text = text.as_ref().ok().filter(|text| text.len() <= MAX_FILE)?;
            Some((name.clone(), *ino, String::from_utf8(text.clone()).ok()?))
        })
        .collect()
}

/// A folder as it was at a moment: its [`Stamp`] and its `*.json` files by name and inode
/// (`complete`: every one of them; a listing cut short by an error keeps what it listed).
/// Equal to a later one, no file was added, replaced or removed between the two.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    stamp: Stamp,
    listing: BTreeMap<String, u64>,
    complete: bool,
}

impl Seen {
    /// `folder` now (None if it cannot be read).
    fn of(folder: &Path) -> Option<Seen> {
        let stamp = Stamp::of(folder).ok()?;
        let (listing, complete) = listing(folder).ok()?;
        Some(Seen {
            stamp,
            listing,
            complete,
        })
    }
}

/// What a summary holds: what it summarises, and the files, by name and inode, with their text.
#[derive(Serialize, Deserialize)]
struct Summary {
    form: u32,
    stamp: Stamp,
    files: Vec<(String, u64, String)>,
}

/// What of a folder changes with every file added, replaced or removed in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    dev: u64,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(folder: &Path) -> std::io::Result<Stamp> {
        let meta = fs::metadata(folder)?;
        Ok(Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }

    /// Whether the folder last changed [`SETTLED`] before `began`.
    fn settled_before(&self, began: SystemTime) -> bool {
        let (secs, nanos) = self.mtime;
        let changed = u64::try_from(secs).ok().map(|secs| {
            SystemTime::UNIX_EPOCH + Duration::new(secs, nanos.clamp(0, 999_999_999) as u32)
        });
        changed.is_some_and(|changed| changed + SETTLED < began)
    }
}

/// The `*.json` files of `folder`, by name, with their inode numbers (from the listing itself,
/// with no look at each file), and whether the listing was read to its end: one cut short by
/// an error keeps what it listed (the lenient read hides what it can).
fn listing(folder: &Path) -> std::io::Result<(BTreeMap<String, u64>, bool)> {
    let mut files = BTreeMap::new();
    for file in fs::read_dir(folder)? {
        let Ok(file) = file else {
            return Ok((files, false));
        };
        let Ok(name) = file.file_name().into_string() else {
            continue;
        };
        if name.ends_with(".json") {
            files.insert(name, file.ino());
        }
    }
    Ok((files, true))
}

/// The files' texts the summary of `folder` holds, by name, if it matches `seen`: the same
/// stamp, and each file listed named once, with the inode listed.
fn summary_of(folder: &Path, seen: &Seen) -> Option<Vec<(String, String)>> {
    let text = read_summary(folder)?;
    let summary: Summary = serde_json::from_slice(&text).ok()?;
    let named: BTreeMap<&str, u64> = summary
        .files
        .iter()
        .map(|(name, ino, _)| (name.as_str(), *ino))
        .collect();
    let listed = seen.listing.iter().map(|(name, ino)| (name.as_str(), *ino));
    let matches = summary.form == FORM
        && seen.complete
        && summary.stamp == seen.stamp
        && named.len() == summary.files.len()
        && named.into_iter().eq(listed);
    matches.then(|| {
        summary
            .files
            .into_iter()
            .map(|(name, _, text)| (name, text))
            .collect()
    })
}

/// The summary's bytes, where it is a plain file of `folder`'s owner that no one else can
/// write (never through a link, nor waited on if a FIFO).
fn read_summary(folder: &Path) -> Option<Vec<u8>> {
    let file = crate::small_file::open(&folder.join(SUMMARY_DIR).join(SUMMARY_FILE)).ok()?;
    let meta = file.metadata().ok()?;
    let owner = fs::metadata(folder).ok()?.uid();
    if meta.uid() != owner || meta.mode() & 0o022 != 0 {
        return None;
    }
    let mut text = Vec::new();
    file.take(MAX_SUMMARY).read_to_end(&mut text).ok()?;
    Some(text)
}

/// Writes `summary` of `folder` (0600), unless its [`SUMMARY_DIR`] had to be made first
/// (making it changed the folder, so the stamp is stale already: the next read writes it) or
/// it would weigh more than a reader takes. Dead writers' temporary files are removed first.
fn write_summary(folder: &Path, summary: &Summary) -> crate::Result<()> {
    let dir = folder.join(SUMMARY_DIR);
    let failed = |e: &dyn std::fmt::Display| crate::Error::Other(format!("{}: {e}", dir.display()));
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(failed(&e)),
    }
    remove_abandoned_temps(&dir);
    let text = serde_json::to_vec(summary).map_err(|e| failed(&e))?;
    if text.len() as u64 > MAX_SUMMARY {
        return Ok(());
    }
    write_atomic_private(&dir.join(SUMMARY_FILE), &text, Durability::Volatile)
}

/// Removes the temporary files in `dir` of summary writers killed before their rename (older
/// than [`ABANDONED`]), which nothing else would ever remove.
fn remove_abandoned_temps(dir: &Path) {
    let Ok(files) = fs::read_dir(dir) else {
        return;
    };
    for file in files.flatten() {
        let abandoned = file.file_name().to_string_lossy().starts_with(SUMMARY_TEMP)
            && file
                .metadata()
                .and_then(|meta| meta.modified())
                .is_ok_and(|at| at.elapsed().is_ok_and(|age| age > ABANDONED));
        if abandoned {
            let _ = fs::remove_file(file.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atomic::write_atomic;
    use feather_testkit::ScratchDir;
    use std::cell::Cell;
    use std::os::unix::fs::PermissionsExt;

    /// A folder of `count` files `N.json` holding `N`, and its [`SUMMARY_DIR`], last changed an
    /// hour ago.
    fn settled_folder(count: usize) -> ScratchDir {
        let scratch = ScratchDir::new("folder-summary");
        fs::create_dir(scratch.0.join(SUMMARY_DIR)).unwrap();
        for n in 0..count {
            write_atomic(
                &scratch.0.join(format!("{n}.json")),
                n.to_string().as_bytes(),
                Durability::Volatile,
            )
            .unwrap();
        }
        settle(&scratch.0);
        scratch
    }

    /// Dates `path`'s last change `at` (an hour back: a folder no one has changed for
    /// long; ahead: one whose reads are never summarised, however slow the test).
    fn date(path: &Path, at: SystemTime) {
        fs::File::open(path).unwrap().set_modified(at).unwrap();
    }

    fn settle(folder: &Path) {
        date(folder, SystemTime::now() - Duration::from_secs(3600));
    }

    fn unsettle(folder: &Path) {
        date(folder, SystemTime::now() + Duration::from_secs(3600));
    }

    /// `folder`'s files read through [`read_with`], each file by `read_file`, and how many were
    /// opened to read them.
    fn read_counting_with(
        folder: &Path,
        read_file: impl Fn(&Path) -> std::io::Result<Vec<u8>>,
    ) -> (Vec<u64>, usize) {
        let opened = Cell::new(0);
        let parsed = read_with(
            folder,
            |path| {
                opened.set(opened.get() + 1);
                read_file(path)
            },
            |text| serde_json::from_slice::<u64>(text).ok(),
        );
        let mut values: Vec<u64> = parsed.into_iter().filter_map(|(_, v)| v).collect();
        values.sort();
        (values, opened.get())
    }

    fn read_counting(folder: &Path) -> (Vec<u64>, usize) {
        read_counting_with(folder, |path| fs::read(path))
    }

    fn summary_path(folder: &Path) -> PathBuf {
        folder.join(SUMMARY_DIR).join(SUMMARY_FILE)
    }

    /// Once summarised, a read of a folder of 64 files opens none of them, and with more files
    /// still none: what a start reads does not grow with the registry's entries (issue 15).
    #[test]
    fn a_settled_folder_is_read_from_its_summary_opening_none_of_its_files() {
        for count in [1, 64, 200] {
            let folder = settled_folder(count);
            let (first, opened) = read_counting(&folder.0);
            assert_eq!(
                (first.len(), opened),
                (count, count),
                "the first read: each file"
            );
            let (again, opened) = read_counting(&folder.0);
            assert_eq!((again, opened), (first, 0), "{count} files, summarised");
        }
    }

    /// A file added, replaced or removed since the summary was written makes it stale: the
    /// files are read again, and what the summary said is not given (never one file fewer).
    /// A folder changed within [`SETTLED`] is not summarised (dated ahead here, so that the
    /// test does not hang on how fast it runs: review startcost31 L4).
    #[test]
    fn a_stale_summary_is_passed_over() {
        let folder = settled_folder(3);
        read_counting(&folder.0);
        let changes: [&dyn Fn(&Path); 3] = [
            &|f| write_atomic(&f.join("9.json"), b"9", Durability::Volatile).unwrap(),
            &|f| write_atomic(&f.join("1.json"), b"7", Durability::Volatile).unwrap(),
            &|f| fs::remove_file(f.join("0.json")).unwrap(),
        ];
        let expected = [vec![0, 1, 2, 9], vec![0, 2, 7, 9], vec![2, 7, 9]];
        for (change, expected) in changes.iter().zip(expected) {
            change(&folder.0);
            let (values, opened) = read_counting(&folder.0);
            assert_eq!(values, expected);
            assert_eq!(opened, expected.len(), "read file by file");
            unsettle(&folder.0);
            read_counting(&folder.0);
            let (_, opened) = read_counting(&folder.0);
            assert_eq!(opened, expected.len(), "a folder changed just now");
            settle(&folder.0);
            read_counting(&folder.0);
            assert_eq!(read_counting(&folder.0).1, 0, "settled, summarised");
        }
    }

    /// A file renamed over another while the folder's times stay as recorded (a rename during
    /// the read, on a coarse clock) is caught by its new inode; a file more or fewer by name;
    /// the same listing in a folder changed since (a file replaced twice, the second time
    /// given the inode the first had) by the folder's times; and a listing cut short by an
    /// error, which may lack what the summary lacks too.
    #[test]
    fn a_listing_or_a_stamp_other_than_the_summarys_is_caught() {
        let folder = settled_folder(2);
        read_counting(&folder.0);
        let seen = Seen::of(&folder.0).unwrap();
        let trusted = |seen: &Seen| summary_of(&folder.0, seen).is_some();
        assert!(trusted(&seen), "as summarised");
        let with_listing = |change: &dyn Fn(&mut BTreeMap<String, u64>)| {
            let mut other = seen.clone();
            change(&mut other.listing);
            other
        };
        let others = [
            with_listing(&|l| *l.get_mut("1.json").unwrap() += 1),
            with_listing(&|l| {
                l.insert("2.json".into(), 1);
            }),
            with_listing(&|l| {
                l.remove("0.json");
            }),
            Seen {
                stamp: Stamp {
                    mtime: (seen.stamp.mtime.0 + 1, seen.stamp.mtime.1),
                    ..seen.stamp.clone()
                },
                ..seen.clone()
            },
            Seen {
                complete: false,
                ..seen.clone()
            },
        ];
        for other in others {
            assert!(!trusted(&other), "{other:?}");
        }
    }

    /// A summary half-written, unreadable, of another form, forged to list fewer files than the
    /// folder holds, or one of them twice (in place of another, or besides: review
    /// startcost31 M2), or
    /// writable by others, is passed over; a missing one is written anew, 0600 (review
    /// startcost31 L5).
    #[test]
    fn a_broken_forged_or_missing_summary_is_passed_over_and_written_anew() {
        let folder = settled_folder(3);
        read_counting(&folder.0);
        let good = fs::read(summary_path(&folder.0)).unwrap();
        let edited = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut summary: serde_json::Value = serde_json::from_slice(&good).unwrap();
            edit(&mut summary);
            serde_json::to_vec(&summary).unwrap()
        };
        let bad: [Vec<u8>; 6] = [
            good[..good.len() / 2].to_vec(),
            b"\0\0".to_vec(),
            edited(&|s| drop(s["files"].as_array_mut().unwrap().pop())),
            edited(&|s| {
                let files = s["files"].as_array_mut().unwrap();
                files[2] = files[0].clone();
            }),
            edited(&|s| {
                let files = s["files"].as_array_mut().unwrap();
                files.push(files[0].clone());
            }),
            edited(&|s| s["form"] = (FORM + 1).into()),
        ];
        for text in bad {
            fs::write(summary_path(&folder.0), &text).unwrap();
            let (values, opened) = read_counting(&folder.0);
            assert_eq!((values, opened), (vec![0, 1, 2], 3));
            assert_eq!(read_counting(&folder.0).1, 0, "written anew");
        }
        let summary = summary_path(&folder.0);
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&summary), 0o600, "written 0600");
        fs::set_permissions(&summary, fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(read_counting(&folder.0).1, 3, "writable by others");
        fs::remove_file(&summary).unwrap();
        assert_eq!(read_counting(&folder.0).1, 3, "missing");
        assert_eq!(read_counting(&folder.0).1, 0, "written anew");
        assert_eq!(mode(&summary), 0o600, "written 0600");
    }

    /// A file that could not be read (here EMFILE, as a host out of descriptors gives) is not
    /// summarised as missing: the next read reads it (review startcost31 H1). A file read
    /// whose text does not parse is summarised: it does not parse the next time either.
    #[test]
    fn a_file_that_could_not_be_read_is_never_summarised() {
        let folder = settled_folder(3);
        let out_of_descriptors = |path: &Path| match path.ends_with("1.json") {
            true => Err(std::io::Error::from_raw_os_error(libc::EMFILE)),
            false => fs::read(path),
        };
        let (values, _) = read_counting_with(&folder.0, out_of_descriptors);
        assert_eq!(values, vec![0, 2], "passed over in that read");
        assert!(!summary_path(&folder.0).exists(), "not summarised");
        assert_eq!(read_counting(&folder.0), (vec![0, 1, 2], 3), "read again");
        assert_eq!(
            read_counting(&folder.0),
            (vec![0, 1, 2], 0),
            "now summarised"
        );

        write_atomic(
            &folder.0.join("x.json"),
            b"not a number",
            Durability::Volatile,
        )
        .unwrap();
        settle(&folder.0);
        assert_eq!(read_counting(&folder.0), (vec![0, 1, 2], 4));
        assert_eq!(read_counting(&folder.0), (vec![0, 1, 2], 0), "summarised");
    }

    /// The summary keeps each file's text, which the reader parses: one written by a binary
    /// that knows fewer fields (an older one, still running) gives a newer reader every field
    /// (review startcost31 M1).
    #[test]
    fn a_summary_written_by_a_reader_knowing_fewer_fields_keeps_them_all() {
        #[derive(Serialize, Deserialize)]
        struct Older {
            a: u64,
        }
        #[derive(Deserialize, Debug, PartialEq)]
        struct Newer {
            a: u64,
            #[serde(default)]
            b: u64,
        }
        let folder = settled_folder(0);
        for n in 0..3u64 {
            let text = format!(r#"{{"a":{n},"b":{}}}"#, n * 10);
            fs::write(folder.0.join(format!("{n}.json")), text).unwrap();
        }
        settle(&folder.0);
        let older = read(&folder.0, |text| serde_json::from_slice::<Older>(text).ok());
        assert_eq!(
            older.iter().flat_map(|(_, o)| o).map(|o| o.a).sum::<u64>(),
            3
        );
        assert!(summary_path(&folder.0).exists(), "summarised by the older");
        let opened = Cell::new(0);
        let newer = read_with(
            &folder.0,
            |path| {
                opened.set(opened.get() + 1);
                fs::read(path)
            },
            |text| serde_json::from_slice::<Newer>(text).ok(),
        );
        let newer: Vec<Newer> = newer.into_iter().filter_map(|(_, n)| n).collect();
        assert_eq!(opened.get(), 0, "from the summary");
        assert_eq!(
            newer,
            (0..3).map(|a| Newer { a, b: a * 10 }).collect::<Vec<_>>()
        );
    }

    /// A writer killed between making its temporary file and renaming it leaves the file; the
    /// next summary's writer removes it once it is old, and leaves a live writer's (review
    /// startcost31 L6).
    #[test]
    fn a_dead_writers_temporary_file_is_removed() {
        let folder = settled_folder(2);
        let dir = folder.0.join(SUMMARY_DIR);
        let dead = dir.join(format!("{SUMMARY_TEMP}tmp-1"));
        let live = dir.join(format!("{SUMMARY_TEMP}tmp-2"));
        for temp in [&dead, &live] {
            fs::write(temp, b"{").unwrap();
        }
        date(&dead, SystemTime::now() - Duration::from_secs(3600));
        read_counting(&folder.0);
        assert!(summary_path(&folder.0).exists(), "summarised");
        assert!(!dead.exists(), "the dead writer's removed");
        assert!(live.exists(), "a live writer's kept");
    }
}
