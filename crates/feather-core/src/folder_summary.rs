//! A folder of small JSON files read as one: the files parsed once and kept in a summary
//! file, which a later read takes instead of opening and parsing each file, as long as the
//! folder is provably as it was summarised.
//!
//! Made for the registry of state roots ([`crate::roots`]), which every start reads whole and
//! which keeps up to 64 entries of roots removed by hand: read file by file, a start's cost
//! grew with each (issue 15). The summary is a cache, never a record: what it says is trusted
//! only while it matches what it summarises, so a stale one (a file added, replaced or removed
//! since), a half-written or unreadable one, or one naming other files than the folder holds
//! is passed over, and the files are read as before. It matches when
//! - the folder's identity and its modification and change times are those recorded, and
//! - the folder lists the same `*.json` files, each with the same inode number: every file is
//!   written by a rename of a new file over it ([`crate::atomic::write_atomic`]), which gives
//!   it a new inode and the folder a new modification time.
//!
//! A summary is written only of a folder last changed [`SETTLED`] before the read began: a
//! file renamed in during the read would otherwise leave the folder's time as recorded (a
//! filesystem's clock ticks in steps, up to a second on some) and the summary without it.
//! It lives in a subfolder of its own ([`SUMMARY_DIR`]), so that writing it changes nothing the
//! summary records, and is read only where it is a plain file of the folder's owner that no
//! one else can write.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::atomic::{write_atomic, Durability};

/// The subfolder, of the summarised folder, that holds the summary.
pub const SUMMARY_DIR: &str = "summary";

/// The summary's name in [`SUMMARY_DIR`].
const SUMMARY_FILE: &str = "files.json";

/// How long before a read the folder must have last changed for the read to be summarised:
/// more than the coarsest step of a filesystem's clock (a second).
const SETTLED: Duration = Duration::from_secs(2);

/// The most a summary may weigh: far more than 64 entries of a few hundred bytes each.
const MAX_SUMMARY: u64 = 4 << 20;

/// Bumped when the summary's form changes: one of another form is passed over.
const FORM: u32 = 1;

/// The files of a folder, each with what it parsed to (None: it did not parse).
pub type Parsed<T> = Vec<(PathBuf, Option<T>)>;

/// The `*.json` files of `folder`, each parsed by `parse` (its path given), from the summary
/// where that matches the folder, else read one by one (and summarised where the folder has
/// settled). A folder that cannot be read holds none.
pub fn read<T>(folder: &Path, parse: impl Fn(&Path) -> Option<T>) -> Parsed<T>
where
    T: Serialize + DeserializeOwned,
{
    let began = SystemTime::now();
    let Some(seen) = Seen::of(folder) else {
        return Vec::new();
    };
    if let Some(summary) = summary_of(folder, &seen) {
        return summary;
    }
    let parsed: Vec<(String, u64, Option<T>)> = seen
        .listing
        .iter()
        .map(|(name, ino)| (name.clone(), *ino, parse(&folder.join(name))))
        .collect();
    if seen.stamp.settled_before(began) {
        // A cache: one not written (a full disk, a read-only registry) costs the next read.
        let _ = write_summary(
            folder,
            &Summary::<&T> {
                form: FORM,
                stamp: seen.stamp,
                files: parsed
                    .iter()
                    .map(|(name, ino, item)| (name.clone(), *ino, item.as_ref()))
                    .collect(),
            },
        );
    }
    with_paths(folder, parsed)
}

/// A folder as it was at a moment: its [`Stamp`] and its `*.json` files by name and inode.
/// Equal to a later one, no file was added, replaced or removed between the two.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    stamp: Stamp,
    listing: BTreeMap<String, u64>,
}

impl Seen {
    /// `folder` now (None if it cannot be read).
    pub fn of(folder: &Path) -> Option<Seen> {
        Some(Seen {
            stamp: Stamp::of(folder).ok()?,
            listing: listing(folder).ok()?,
        })
    }
}

/// `files` of `folder` by path.
fn with_paths<T>(folder: &Path, files: Vec<(String, u64, Option<T>)>) -> Parsed<T> {
    files
        .into_iter()
        .map(|(name, _, item)| (folder.join(name), item))
        .collect()
}

/// What a summary holds: what it summarises, and the files, by name and inode, parsed.
#[derive(Serialize, Deserialize)]
struct Summary<T> {
    form: u32,
    stamp: Stamp,
    files: Vec<(String, u64, Option<T>)>,
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
/// with no look at each file).
fn listing(folder: &Path) -> std::io::Result<BTreeMap<String, u64>> {
    let mut files = BTreeMap::new();
    for file in fs::read_dir(folder)? {
        let file = file?;
        let Ok(name) = file.file_name().into_string() else {
            continue;
        };
        if name.ends_with(".json") {
            files.insert(name, file.ino());
        }
    }
    Ok(files)
}

/// The files the summary of `folder` holds, if it matches `stamp` and `listing`.
fn summary_of<T: DeserializeOwned>(folder: &Path, seen: &Seen) -> Option<Parsed<T>> {
    let Seen { stamp, listing } = seen;
    let text = read_summary(folder)?;
    let summary: Summary<T> = serde_json::from_slice(&text).ok()?;
    let matches = summary.form == FORM
        && summary.stamp == *stamp
        && summary.files.len() == listing.len()
        && summary
            .files
            .iter()
            .all(|(name, ino, _)| listing.get(name) == Some(ino));
    matches.then(|| with_paths(folder, summary.files))
}

/// The summary's bytes, where it is a plain file of `folder`'s owner that no one else can
/// write (never through a link, nor waited on if a FIFO).
fn read_summary(folder: &Path) -> Option<Vec<u8>> {
    let path = folder.join(SUMMARY_DIR).join(SUMMARY_FILE);
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    let owner = fs::metadata(folder).ok()?.uid();
    if !meta.is_file() || meta.uid() != owner || meta.mode() & 0o022 != 0 {
        return None;
    }
    let mut text = Vec::new();
    file.take(MAX_SUMMARY).read_to_end(&mut text).ok()?;
    Some(text)
}

/// Writes `summary` of `folder`, unless its [`SUMMARY_DIR`] had to be made first: making it
/// changed the folder, so the stamp is stale already (the next read writes it).
fn write_summary<T: Serialize>(folder: &Path, summary: &Summary<T>) -> crate::Result<()> {
    let dir = folder.join(SUMMARY_DIR);
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(crate::Error::Other(format!("{}: {e}", dir.display()))),
    }
    let text = serde_json::to_vec(summary)
        .map_err(|e| crate::Error::Other(format!("{}: {e}", dir.display())))?;
    write_atomic(&dir.join(SUMMARY_FILE), &text, Durability::Volatile)
}

#[cfg(test)]
mod tests {
    use super::*;
    use feather_testkit::ScratchDir;
    use std::cell::Cell;

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

    /// Dates `folder`'s last change an hour back, as a folder no one has changed for long.
    fn settle(folder: &Path) {
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        fs::File::open(folder)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }

    /// `folder`'s files read through [`read`], and how many were opened to parse them.
    fn read_counting(folder: &Path) -> (Vec<u64>, usize) {
        let opened = Cell::new(0);
        let parsed = read(folder, |path| {
            opened.set(opened.get() + 1);
            serde_json::from_slice::<u64>(&fs::read(path).ok()?).ok()
        });
        let mut values: Vec<u64> = parsed.into_iter().filter_map(|(_, v)| v).collect();
        values.sort();
        (values, opened.get())
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
            // Changed just now: not summarised until it has settled.
            let (_, opened) = read_counting(&folder.0);
            assert_eq!(opened, expected.len(), "a folder changed just now");
            settle(&folder.0);
            read_counting(&folder.0);
        }
    }

    /// A file renamed over another while the folder's times stay as recorded (a rename during
    /// the read, on a coarse clock) is caught by its new inode; a file more or fewer by name;
    /// and the same listing in a folder changed since (a file replaced twice, the second time
    /// given the inode the first had) by the folder's times.
    #[test]
    fn a_listing_or_a_stamp_other_than_the_summarys_is_caught() {
        let folder = settled_folder(2);
        read_counting(&folder.0);
        let stamp = Stamp::of(&folder.0).unwrap();
        let listed = listing(&folder.0).unwrap();
        let summary_with = |stamp: &Stamp, listing: &BTreeMap<String, u64>| {
            let seen = Seen {
                stamp: stamp.clone(),
                listing: listing.clone(),
            };
            summary_of::<u64>(&folder.0, &seen).is_some()
        };
        let summary = |listing: &BTreeMap<String, u64>| summary_with(&stamp, listing);
        assert!(summary(&listed), "as summarised");
        let mut replaced = listed.clone();
        *replaced.get_mut("1.json").unwrap() += 1;
        let mut more = listed.clone();
        more.insert("2.json".into(), 1);
        let mut fewer = listed.clone();
        fewer.remove("0.json");
        for other in [replaced, more, fewer] {
            assert!(!summary(&other), "{other:?}");
        }
        let changed = Stamp {
            mtime: (stamp.mtime.0 + 1, stamp.mtime.1),
            ..stamp.clone()
        };
        assert!(!summary_with(&changed, &listed), "the folder changed since");
    }

    /// A summary half-written, unreadable, of another form, forged to list fewer files than the
    /// folder holds, or writable by others, is passed over; a missing one is written anew.
    #[test]
    fn a_broken_forged_or_missing_summary_is_passed_over_and_written_anew() {
        use std::os::unix::fs::PermissionsExt;
        let folder = settled_folder(3);
        read_counting(&folder.0);
        let good = fs::read(summary_path(&folder.0)).unwrap();
        let mut forged: serde_json::Value = serde_json::from_slice(&good).unwrap();
        forged["files"].as_array_mut().unwrap().pop();
        let mut other_form = serde_json::from_slice::<serde_json::Value>(&good).unwrap();
        other_form["form"] = (FORM + 1).into();
        let bad: [Vec<u8>; 4] = [
            good[..good.len() / 2].to_vec(),
            b"\0\0".to_vec(),
            serde_json::to_vec(&forged).unwrap(),
            serde_json::to_vec(&other_form).unwrap(),
        ];
        for text in bad {
            fs::write(summary_path(&folder.0), &text).unwrap();
            let (values, opened) = read_counting(&folder.0);
            assert_eq!((values, opened), (vec![0, 1, 2], 3));
            assert_eq!(read_counting(&folder.0).1, 0, "written anew");
        }
        let summary = summary_path(&folder.0);
        fs::set_permissions(&summary, fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(read_counting(&folder.0).1, 3, "writable by others");
        fs::remove_file(&summary).unwrap();
        assert_eq!(read_counting(&folder.0).1, 3, "missing");
        assert_eq!(read_counting(&folder.0).1, 0, "written anew");
    }
}
