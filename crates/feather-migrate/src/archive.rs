//! A VM as one file: its config, state, layers and checkpoint images in a zstd-compressed tar,
//! so that a checkpointed VM can be restored from another state root or on another host.
//!
//! GNU tar writes it (`setup.sh` installs tar and zstd): it keeps what the layers hold and
//! overlayfs relies on — whiteouts (character devices 0/0), opaque folders, the extended
//! attributes a VM's files need (but none naming an overlay's identity: [`TAR_OPTIONS`]),
//! owners, modes and sparse files. zstd checksums every frame, so a damaged archive
//! fails to import instead of restoring wrong data.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use feather_core::VmConfig;

use crate::error::{io_at, MigrateError, Result};
use crate::room::Room;

/// What of a VM's folder an archive holds. `work/` (overlayfs's scratch space) and `rootfs/` (a
/// mount point) are made empty on import; locks and logs stay behind.
const MEMBERS: [&str; 5] = ["config.toml", "state.json", "upper", "mounts", "checkpoint"];

/// The extended attributes an archive carries, on export and again on unpacking (tar keeps only
/// a name an `--xattrs-include` matches, both ways): an archive comes from another host, or holds
/// a VM's own layer, and its author chooses every attribute in it. So it carries only what a
/// layer needs to mean what it meant, each named here; everything else is dropped:
/// - overlayfs's records of an overlay's own (`trusted.overlay.uuid`, which makes the overlay's
///   filesystem id, `origin`, `impure`, `nlink`, `upper`), its redirects and metacopy marks
///   (which name a folder or file of the receiving host's tree to show in a file's place), its
///   attribute whiteouts (`whiteout`, `whiteouts`: a layer feather's overlays wrote has none) and
///   their escaped forms for a nested overlay (`trusted.overlay.overlay.*`). feather's overlays
///   follow none of them (`feather_sys::mount::overlay`), but an overlay's identity is the
///   kernel's to make: a copied `uuid` gave every import of one archive the same filesystem id
///   (a crafted one any id), which a Shuttle hand-over's clean-up takes for the VM's layer.
///   Without `uuid` and `impure` at the upper folder, the kernel gives the layer a new UUID at
///   its first mount (overlayfs's `uuid=auto`); with `impure` alone, none, and the overlay
///   would report the filesystem id of every layer beside it;
/// - every other `trusted.*`: only the host's root can read or write one (no VM sees it), and it
///   is the host's software's to trust;
/// - `security.*` but file capabilities: an SELinux or Smack label, an IMA signature or an
///   EVM hash is the receiving host's to give (a label from elsewhere may be one its policy
///   trusts).
///
/// Whiteouts need no attribute: they are character devices 0/0, which tar keeps.
const TAR_OPTIONS: [&str; 8] = [
    "--numeric-owner",
    "--xattrs",
    // A folder the VM removed and made again: without the mark, the lower tree's entries at its
    // path show through it.
    "--xattrs-include=trusted.overlay.opaque",
    // An append-only or immutable file or folder the VM's entry was copied up from (overlayfs
    // keeps the flag here, not on the upper file): without it the flag is lifted, and a VM
    // holds no CAP_LINUX_IMMUTABLE to set it again. It can only restrict the VM's own files.
    "--xattrs-include=trusted.overlay.protattr",
    // The VM's own attributes, which any of its processes may set (`user.overlay.*` too: feather
    // never mounts an overlay with `userxattr`).
    "--xattrs-include=user.*",
    // File capabilities (ping's, say): what the VM's root sets itself (it holds CAP_SETFCAP),
    // and no more than the VM's bounding set lets any of its programs gain.
    "--xattrs-include=security.capability",
    // ACLs, which the VM sets on its files itself or a copy-up kept from the tree below.
    "--xattrs-include=system.posix_acl_access",
    "--xattrs-include=system.posix_acl_default",
];

/// Where a VM with a disk image (`create --disk` without project quotas) keeps its layers: the
/// archive holds them as plain `upper/` and `mounts/`, and the importing side moves them into a
/// new image of the VM's cap.
const IMAGE_HOME: &str = "disk";

/// `tar` writing the VM folder `vm_dir` as an archive to `file` (`-`: its stdout).
fn create_command(vm_dir: &Path, file: &Path) -> Command {
    let mut tar = tar_create(vm_dir, file);
    tar.args(members(vm_dir, &MEMBERS));
    tar
}

/// Whether the VM keeps its layers in a disk image (see [`IMAGE_HOME`]).
fn in_image(vm_dir: &Path) -> bool {
    vm_dir.join(format!("{IMAGE_HOME}.img")).exists()
}

/// Where the members `names` of [`MEMBERS`] are in `vm_dir`, relative to it (a layer of a VM
/// with a disk image is under [`IMAGE_HOME`]); those that do not exist are left out.
pub(crate) fn members(vm_dir: &Path, names: &[&str]) -> Vec<String> {
    let in_image = in_image(vm_dir);
    names
        .iter()
        .map(|m| match *m {
            "upper" | "mounts" if in_image => format!("{IMAGE_HOME}/{m}"),
            m => m.to_owned(),
        })
        .filter(|m| vm_dir.join(m).exists())
        .collect()
}

/// A member's path in `vm_dir` as the archive names it (without [`IMAGE_HOME`]).
pub(crate) fn archived_name(path: &Path) -> &Path {
    path.strip_prefix(IMAGE_HOME).unwrap_or(path)
}

/// `tar`, told only what feather tells it: GNU tar reads options from the environment variable
/// `TAR_OPTIONS` before its command line, and one in feather's own environment (a user's shell
/// profile, `sudo -E`) would widen [`TAR_OPTIONS`]'s allow-list (`--xattrs-include=*` carried
/// overlayfs's UUID and redirects again), add `--acls`, `--overwrite` or `--absolute-names`.
/// Its messages in English whatever the locale: a failed attribute write is read from them
/// (`attribute_not_set`).
fn tar() -> Command {
    let mut tar = feather_sys::process::command("tar");
    tar.env_remove("TAR_OPTIONS")
        .env_remove("LANGUAGE")
        .env("LC_ALL", "C");
    tar
}

/// `tar --create` of members of `vm_dir` (the caller names them) to `file` (`-`: its stdout),
/// compressed, with everything overlayfs relies on kept.
pub(crate) fn tar_create(vm_dir: &Path, file: &Path) -> Command {
    let mut tar = tar();
    if in_image(vm_dir) {
        // disk/upper/… is stored as upper/…; hard links' targets are member names too (h), a
        // symlink's target is the VM's own text and stays as it is (S).
        tar.arg(format!("--transform=s,^{IMAGE_HOME}/,,rSh"));
    }
    tar.arg("--create")
        // The VM is frozen while its archive is made for a migration: zstd's fastest level on
        // every core (once, for a VM holding 260 MB of redis on this 2-core machine: 4.4 s
        // instead of 6.6 s with tar's default, level 3; the archive stays a .tar.zst).
        .arg("--use-compress-program=zstd -1 -T0")
        .args(TAR_OPTIONS)
        .arg("--sparse")
        .arg("--file")
        .arg(file)
        .arg("--directory")
        .arg(vm_dir);
    tar
}

/// An archive being written by tar to a pipe, for sending as it is made.
pub struct Stream {
    pub(crate) tar: std::process::Child,
    pub(crate) vm_dir: PathBuf,
    /// tar's exit status 1 ("some files differ": changed while read) is no failure: the VM
    /// runs while its layers are pre-copied, and what changed travels again.
    pub(crate) changes_allowed: bool,
}

/// Starts writing the VM folder `vm_dir` as an archive to a pipe: read it from
/// [`Stream::take_output`] to its end, then ask [`Stream::finish`].
pub fn stream(vm_dir: &Path) -> Result<Stream> {
    let tar = create_command(vm_dir, Path::new("-"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| tar_error("archive", vm_dir, e))?;
    Ok(Stream {
        tar,
        vm_dir: vm_dir.to_path_buf(),
        changes_allowed: false,
    })
}

impl Stream {
    /// The pipe tar writes the archive to (once).
    pub fn take_output(&mut self) -> Option<std::process::ChildStdout> {
        self.tar.stdout.take()
    }

    /// Whether tar wrote the whole archive.
    pub fn finish(mut self) -> Result<()> {
        drop(self.tar.stdout.take());
        let output = self
            .tar
            .wait_with_output()
            .map_err(|e| tar_error("archive", &self.vm_dir, e))?;
        if output.status.success() || (self.changes_allowed && output.status.code() == Some(1)) {
            Ok(())
        } else {
            Err(tar_failed(
                "archive",
                &self.vm_dir,
                String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            ))
        }
    }
}

/// Writes the VM folder `vm_dir` to `file`, atomically: a half-written archive never has the
/// final name.
/// `progress` hears how many bytes of the archive are written, as tar goes.
pub fn export(vm_dir: &Path, file: &Path, progress: &mut dyn FnMut(u64)) -> Result<()> {
    let partial = with_suffix(file, ".partial");
    let mut tar = create_command(vm_dir, &partial)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| tar_error("export to", file, e))?;
    // tar's errors are few lines: the pipe does not fill while it runs.
    let status = loop {
        match tar.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {
                progress(fs::metadata(&partial).map_or(0, |m| m.len()));
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => break Err(e),
        }
    }
    .and_then(|status| {
        let mut stderr = Vec::new();
        if let Some(mut pipe) = tar.stderr.take() {
            std::io::Read::read_to_end(&mut pipe, &mut stderr)?;
        }
        Ok(std::process::Output {
            status,
            stdout: Vec::new(),
            stderr,
        })
    });
    let output = status.map_err(|e| tar_error("export to", file, e))?;
    if !output.status.success() {
        let _ = fs::remove_file(&partial);
        return Err(tar_failed(
            "export to",
            file,
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    fs::rename(&partial, file).map_err(io_at(file))
}

/// `tar --extract` of an archive, decompressed, read on its stdin, into `staging`, keeping what
/// [`tar_create`] keeps. The archive may be two, one after the other (`--ignore-zeros`): a
/// migration's, or a `--leave-running` export's, is the layers pre-copied while the VM ran, then
/// the rest and what changed meanwhile (crate::precopy).
fn tar_extract(staging: &Path) -> Command {
    let mut tar = tar();
    tar.arg("--extract")
        .args(TAR_OPTIONS)
        .arg("--same-permissions")
        .arg("--ignore-zeros")
        .arg("--file")
        .arg("-")
        .arg("--directory")
        .arg(staging);
    tar
}

/// `zstd` decompressing an archive to its stdout: `file`'s, or its stdin's. Feather runs it
/// (not tar's `--zstd`) to count what the archive unpacks to ([`pass_at_most`]).
fn zstd_decompress(file: Option<&Path>) -> Command {
    let mut zstd = feather_sys::process::command("zstd");
    zstd.args(["--decompress", "--stdout", "--quiet"]);
    if let Some(file) = file {
        zstd.arg("--").arg(file);
    }
    zstd
}

/// Where an archive to unpack comes from.
enum Input<'a> {
    File(&'a Path),
    Stream(&'a mut dyn std::io::Read),
}

/// Unpacks `file` into the folder `staging` — new, or an empty one the caller made (and holds
/// locked while it unpacks: feather-vm's import) — and returns the VM's config from it. The
/// caller moves the folder into place. What it may unpack to is bounded ([`crate::room`]).
pub fn unpack(file: &Path, staging: &Path) -> Result<VmConfig> {
    if !file.is_file() {
        return Err(tar_failed("import from", file, "no such file".into()));
    }
    let room = room_for(staging, file)?;
    made_or_empty(staging)?;
    let output = bounded(staging, Input::File(file), &room, file);
    checked(output, file, staging)
}

/// [`unpack`] from an archive read as it arrives; `source` names it in messages.
pub fn unpack_from(
    archive: &mut dyn std::io::Read,
    source: &Path,
    staging: &Path,
) -> Result<VmConfig> {
    let room = room_for(staging, source)?;
    made_or_empty(staging)?;
    let output = bounded(staging, Input::Stream(archive), &room, source);
    checked(output, source, staging)
}

/// Makes the folder `staging`, or takes it as it is if it is already an empty folder (not a
/// link): one its caller made to hold it locked.
fn made_or_empty(staging: &Path) -> Result<()> {
    match fs::create_dir(staging) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let empty_folder = fs::symlink_metadata(staging).is_ok_and(|meta| meta.is_dir())
                && fs::read_dir(staging).is_ok_and(|mut entries| entries.next().is_none());
            if empty_folder {
                Ok(())
            } else {
                Err(io_at(staging)(e))
            }
        }
        made => made.map_err(io_at(staging)),
    }
}

/// The room an unpacking into `staging` has: measured on the folder it is made in.
fn room_for(staging: &Path, file: &Path) -> Result<Room> {
    let parent = staging.parent().unwrap_or(Path::new("/"));
    Room::of(parent).map_err(|why| tar_failed("import from", file, why))
}

/// Unpacks `input` into `staging`: zstd decompresses it (fed from here when it is a stream),
/// a thread passes what zstd writes on to tar, counting it, up to `room`'s most
/// ([`pass_at_most`]), and another measures the filesystem every
/// [`crate::room::WATCH_EVERY`] and kills tar (by pidfd: never a stranger that took its pid)
/// once the reserve is reached; after tar ended it is measured once more. Both programs'
/// stderr are read as they come, so that neither waits on a full pipe.
fn bounded(staging: &Path, input: Input, room: &Room, file: &Path) -> Result<std::process::Output> {
    let cannot_run = |e| tar_error("import from", file, e);
    let (path, stdin) = match &input {
        Input::File(path) => (Some(*path), Stdio::null()),
        Input::Stream(_) => (None, Stdio::piped()),
    };
    let mut zstd = zstd_decompress(path)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(cannot_run)?;
    let spawned = tar_extract(staging)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut tar| {
            let pid = nix::unistd::Pid::from_raw(tar.id() as i32);
            match feather_sys::process::pidfd_open(pid) {
                Ok(pidfd) => Ok((tar, pidfd)),
                Err(e) => {
                    let _ = tar.kill();
                    let _ = tar.wait();
                    Err(std::io::Error::other(e))
                }
            }
        });
    let (mut tar, pidfd) = match spawned {
        Ok(spawned) => spawned,
        Err(e) => {
            let _ = zstd.kill();
            let _ = zstd.wait();
            return Err(cannot_run(e));
        }
    };
    let done = AtomicBool::new(false);
    let outcome = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| watch(&pidfd, room, &done));
        let tar_said = scope.spawn(read_all(tar.stderr.take()));
        let zstd_said = scope.spawn(read_all(zstd.stderr.take()));
        let (from, into) = (zstd.stdout.take(), tar.stdin.take());
        let passer = scope.spawn(move || pass_at_most(from, into, room.most()));
        let copied = match (input, zstd.stdin.take()) {
            (Input::Stream(archive), Some(mut stdin)) => {
                std::io::copy(archive, &mut stdin).map(|_| ())
            }
            _ => Ok(()),
        };
        let zstd_status = zstd.wait();
        let too_large = passer.join().unwrap_or(false);
        let tar_status = tar.wait();
        done.store(true, Ordering::Relaxed);
        let short = watcher.join().unwrap_or(None);
        let mut said = zstd_said.join().unwrap_or_default();
        said.extend(tar_said.join().unwrap_or_default());
        Unpacked {
            copied,
            zstd_status,
            tar_status,
            said,
            over: too_large.then(|| room.too_large()).or(short),
        }
    });
    outcome.into_output(room, file)
}

/// What became of an unpacking, said in order of what matters most.
struct Unpacked {
    copied: std::io::Result<()>,
    zstd_status: std::io::Result<std::process::ExitStatus>,
    tar_status: std::io::Result<std::process::ExitStatus>,
    said: Vec<u8>,
    over: Option<String>,
}

impl Unpacked {
    fn into_output(self, room: &Room, file: &Path) -> Result<std::process::Output> {
        let cannot_run = |e| tar_error("import from", file, e);
        // The bound first: tar stopped for it also broke the pipes the archive went through.
        if let Some(why) = self.over.or_else(|| room.short()) {
            return Err(tar_failed("import from", file, why));
        }
        // A connection lost midway is the next thing to say.
        self.copied.map_err(cannot_run)?;
        let zstd = self.zstd_status.map_err(cannot_run)?;
        let tar = self.tar_status.map_err(cannot_run)?;
        // A damaged archive: zstd's word (tar may have taken the cut for the archive's end).
        let status = if zstd.success() { tar } else { zstd };
        Ok(std::process::Output {
            status,
            stdout: Vec::new(),
            stderr: self.said,
        })
    }
}

/// A thread's work: all of `pipe` (a child's stderr).
fn read_all<R: std::io::Read + Send>(pipe: Option<R>) -> impl FnOnce() -> Vec<u8> + Send {
    move || {
        let mut said = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut said);
        }
        said
    }
}

/// Passes the decompressed archive from zstd (`from`) to tar (`into`), counting it, and stops
/// (both pipes closed: tar sees the archive end, zstd its reader go) once it passes `most`
/// bytes: true then. The count is the archive's tar stream, which holds every byte tar writes
/// (a sparse file's data, not its holes) and 512 bytes or more for each entry.
fn pass_at_most(
    from: Option<std::process::ChildStdout>,
    into: Option<std::process::ChildStdin>,
    most: Option<u64>,
) -> bool {
    use std::io::{Read, Write};
    let (Some(mut from), Some(mut into)) = (from, into) else {
        return false;
    };
    let mut buffer = vec![0u8; 1 << 16];
    let mut passed = 0u64;
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        passed += n as u64;
        if most.is_some_and(|most| passed > most) {
            return true;
        }
        if into.write_all(&buffer[..n]).is_err() {
            return false;
        }
    }
}

/// Measures `room` until `done`; kills tar (`pidfd`) and says why once it is short.
fn watch(pidfd: &std::os::fd::OwnedFd, room: &Room, done: &AtomicBool) -> Option<String> {
    while !done.load(Ordering::Relaxed) {
        if let Some(why) = room.short() {
            let _ = feather_sys::process::signal(pidfd, nix::sys::signal::Signal::SIGKILL);
            return Some(why);
        }
        std::thread::sleep(crate::room::WATCH_EVERY);
    }
    None
}

/// What tar made of an archive, checked: the VM's config from the unpacked folder; on any
/// failure the folder is removed.
/// Whether what an archive unpacked into `staging` has the shape an export gives it, checked
/// before anything in it is read or used: only [`MEMBERS`] at the top, the records
/// (`config.toml`, `state.json`, every entry below `checkpoint/`) plain files and folders, each
/// its file's only name, the layers (`upper/`, `mounts/`) folders, and in `mounts/` only a
/// folder per layer ([`layers_as_exported`]). What a VM wrote inside its layers may be anything
/// (links, FIFOs, whiteouts), but an archive is made elsewhere: a link at `upper` or at
/// `mounts/<layer>/upper` would make a host folder the imported VM's layer, a link or FIFO for a
/// record be followed, or block, when the host reads it, and a record hard-linked to a file of
/// a layer be written by the host (CRIU's restore log) where the VM reads it. Returns what is
/// wrong.
fn members_as_exported(staging: &Path) -> std::result::Result<(), String> {
    for entry in fs::read_dir(staging).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name();
        let kind = entry.file_type().map_err(|e| e.to_string())?;
        let shown =
            feather_core::display::escape_for_terminal(&name.to_string_lossy()).into_owned();
        match name.to_str() {
            Some("config.toml" | "state.json") if kind.is_file() => {
                only_name(&entry.path(), &shown)?
            }
            Some("upper") if kind.is_dir() => {}
            Some("mounts") if kind.is_dir() => layers_as_exported(&entry.path())?,
            Some("checkpoint") if kind.is_dir() => {
                only_files_and_folders(&entry.path(), "checkpoint")?
            }
            Some(member) if MEMBERS.contains(&member) => return Err(altered(&shown, &kind)),
            _ => return Err(format!("it holds {shown}, which no export holds{ALTERED}")),
        }
    }
    Ok(())
}

/// Said of an archive whose shape no export has.
const ALTERED: &str = ": it was made by hand or altered; nothing was imported";

fn altered(name: &str, kind: &fs::FileType) -> String {
    let what = if kind.is_symlink() {
        "a link"
    } else if kind.is_dir() {
        "a folder"
    } else if kind.is_file() {
        "a file"
    } else {
        "a special file"
    };
    format!("it holds {name} as {what}, which an export never makes{ALTERED}")
}

/// Every entry below `dir` (shown as `shown`) a plain file, its only name, or a folder.
fn only_files_and_folders(dir: &Path, shown: &str) -> std::result::Result<(), String> {
    for entry in fs::read_dir(dir).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let kind = entry.file_type().map_err(|e| e.to_string())?;
        let name = format!("{shown}/{}", shown_name(&entry));
        if kind.is_dir() {
            only_files_and_folders(&entry.path(), &name)?;
        } else if kind.is_file() {
            only_name(&entry.path(), &name)?;
        } else {
            return Err(altered(&name, &kind));
        }
    }
    Ok(())
}

fn shown_name(entry: &fs::DirEntry) -> String {
    feather_core::display::escape_for_terminal(&entry.file_name().to_string_lossy()).into_owned()
}

/// The record `path` (shown as `shown`), a plain file, has no other name: tar makes an
/// archive's hard link to another member, and a record linked to a file of the VM's layer
/// would be written by the host (CRIU writes its restore log into the images' folder) where
/// the VM reads it. An export's records are each one file of their own.
fn only_name(path: &Path, shown: &str) -> std::result::Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let links = fs::symlink_metadata(path)
        .map_err(|e| e.to_string())?
        .nlink();
    if links == 1 {
        return Ok(());
    }
    Err(format!(
        "it holds {shown} as a file with {links} names (a hard link to another member), which \
         an export never makes{ALTERED}"
    ))
}

/// `mounts/` as an export makes it: one folder (not a link) per layer of a filesystem under
/// the VM's base, named as feather names them (an escaped mount point), holding only the
/// layer's `upper` and `work`, both folders. The VM's start and restore mount each as an
/// overlay's upper and work folders: a link there would make the folder it names, any of the
/// host's, the VM's writable layer.
fn layers_as_exported(mounts: &Path) -> std::result::Result<(), String> {
    for entry in fs::read_dir(mounts).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let kind = entry.file_type().map_err(|e| e.to_string())?;
        let layer = format!("mounts/{}", shown_name(&entry));
        if !kind.is_dir() {
            return Err(altered(&layer, &kind));
        }
        if !escaped_mount_point(&entry.file_name()) {
            return Err(format!(
                "it holds {layer}, which names no layer an export holds{ALTERED}"
            ));
        }
        for inside in fs::read_dir(entry.path()).map_err(|e| e.to_string())? {
            let inside = inside.map_err(|e| e.to_string())?;
            let kind = inside.file_type().map_err(|e| e.to_string())?;
            let name = format!("{layer}/{}", shown_name(&inside));
            match inside.file_name().to_str() {
                Some("upper" | "work") if kind.is_dir() => {}
                Some("upper" | "work") => return Err(altered(&name, &kind)),
                _ => return Err(format!("it holds {name}, which no export holds{ALTERED}")),
            }
        }
    }
    Ok(())
}

/// Whether `name` is one feather gives a layer's folder in `mounts/`: a mount point's names
/// joined by `-`, each byte other than `[A-Za-z0-9_.]` written `\xHH` (`layers::escape` in
/// feather-vm).
fn escaped_mount_point(name: &std::ffi::OsStr) -> bool {
    let mut rest = name.as_encoded_bytes();
    if rest.is_empty() {
        return false;
    }
    while let Some((&first, tail)) = rest.split_first() {
        rest = match first {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => tail,
            b'\\' => match tail {
                [b'x', high, low, after @ ..]
                    if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() =>
                {
                    after
                }
                _ => return false,
            },
            _ => return false,
        };
    }
    true
}

fn checked(output: Result<std::process::Output>, file: &Path, staging: &Path) -> Result<VmConfig> {
    let checked = || -> Result<VmConfig> {
        let output = output?;
        if !output.status.success() {
            return Err(tar_failed(
                "import from",
                file,
                unpack_failure(&output.stderr),
            ));
        }
        if let Some(why) = attribute_not_set(&output.stderr) {
            return Err(tar_failed("import from", file, why));
        }
        made_feathers_own(staging).map_err(io_at(staging))?;
        if let Err(why) = members_as_exported(staging) {
            return Err(tar_failed("import from", file, why));
        }
        records_without_attributes(staging)?;
        let config = read_config(&staging.join("config.toml"), file)?;
        for dir in ["upper", "work", "rootfs", "mounts"] {
            let path = staging.join(dir);
            fs::create_dir_all(&path).map_err(io_at(&path))?;
        }
        Ok(config)
    };
    checked().inspect_err(|_| {
        let _ = fs::remove_dir_all(staging);
    })
}

/// Why an import fails that tar finished (exit status 0) but for an extended attribute it could
/// not set, from what it printed (`stderr`), if it printed that: tar takes it for a warning
/// ("setxattrat: Cannot set 'NAME' extended attribute for file 'PATH': REASON"), but a layer
/// without its opaque mark shows the lower tree's entries in a folder the VM made anew, and a
/// file without its ACL or capability grants other rights than the VM gave it.
fn attribute_not_set(stderr: &[u8]) -> Option<String> {
    let said = String::from_utf8_lossy(stderr);
    let line = said
        .lines()
        .find(|line| line.contains("Cannot set '") && line.contains("' extended attribute"))?;
    let shown: String = line.chars().take(300).collect();
    let shown = feather_core::display::escape_for_terminal(&shown);
    Some(format!(
        "the state root's filesystem did not take an extended attribute of the VM's layer \
         ({shown}): a layer keeps its opaque folders, file capabilities and ACLs in them, and \
         without them its files would mean something else. Import it into a state root (--root) \
         on a filesystem with extended attributes and ACLs (ext4, xfs, btrfs); nothing was \
         imported"
    ))
}

/// Whether the attribute `name` is one an archive may carry (one [`TAR_OPTIONS`] includes).
fn carried(name: &[u8]) -> bool {
    TAR_OPTIONS
        .iter()
        .any(|option| match option.strip_prefix("--xattrs-include=") {
            Some(pattern) => match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix.as_bytes()),
                None => name == pattern.as_bytes(),
            },
            None => false,
        })
}

/// Removes from the open file or folder `file` every attribute an archive may have given it.
/// What the host gave it (an SELinux label) stays.
fn without_carried_attributes(file: &fs::File) -> std::io::Result<()> {
    use xattr::FileExt;
    for name in file.list_xattr()? {
        if carried(name.as_encoded_bytes()) {
            file.remove_xattr(&name)?;
        }
    }
    Ok(())
}

/// Makes the folder `staging` feather's own again after tar unpacked into it: owned by feather's
/// user (root), mode 0700 like every VM folder, and without any attribute an archive carries.
/// No export holds an entry for the VM's folder itself (it names its members), but an archive
/// made elsewhere may hold `./`, and tar gives its owner, mode, ACLs and attributes to the
/// folder it unpacks into: the new VM's folder. A default ACL there (`user:1234:rw-`) was
/// inherited by every file feather made in it afterwards (its `state.json`, its `work/`).
/// What tar unpacked after `./` inherited it too: the records lose it
/// ([`records_without_attributes`]); the layers keep it, as they keep any ACL an archive gives
/// them directly (a layer's ACLs are the VM's own to choose).
fn made_feathers_own(staging: &Path) -> std::io::Result<()> {
    let folder = feather_sys::folder::open_no_follow(staging)?;
    without_carried_attributes(&folder)?;
    nix::unistd::fchown(
        &folder,
        Some(nix::unistd::geteuid()),
        Some(nix::unistd::getegid()),
    )?;
    nix::sys::stat::fchmod(&folder, nix::sys::stat::Mode::from_bits_truncate(0o700))?;
    Ok(())
}

/// Removes every attribute an archive may carry from feather's own records in `staging`
/// (`config.toml`, `state.json`, everything below `checkpoint/`), known by then to be plain files
/// and folders ([`members_as_exported`]): an export's records carry none, and an ACL or an
/// attribute on one was put there by the archive's author (an ACL naming a host user, a default
/// ACL every record written there later would inherit).
fn records_without_attributes(staging: &Path) -> Result<()> {
    fn strip(path: &Path) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(path)
            .map_err(io_at(path))?;
        without_carried_attributes(&file).map_err(io_at(path))?;
        if file.metadata().map_err(io_at(path))?.is_dir() {
            for entry in fs::read_dir(path).map_err(io_at(path))? {
                strip(&entry.map_err(io_at(path))?.path())?;
            }
        }
        Ok(())
    }
    for record in ["config.toml", "state.json", "checkpoint"] {
        let path = staging.join(record);
        if path.symlink_metadata().is_ok() {
            strip(&path)?;
        }
    }
    Ok(())
}

/// The most a VM's `config.toml` holds: a few hundred bytes, a few KiB with many `--ro` paths,
/// tags or services. A longer one was made by hand, and is not read into the host's memory.
const MAX_CONFIG: u64 = 1 << 20;

/// The config of the VM unpacked from `file`, read as a record made elsewhere (bounded, without
/// following a link or waiting on a FIFO) and refused if it holds a field this feather does not
/// know: silently dropped, a newer feather's setting would be lost without a word.
fn read_config(path: &Path, file: &Path) -> Result<VmConfig> {
    let refused = |why: String| tar_failed("import from", file, format!("its config.toml {why}"));
    let bytes = match read_at_most(path, MAX_CONFIG) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            return Err(refused(format!(
                "is longer than the {} MiB a VM's config ever holds: it was made by hand or \
                 altered; nothing was imported",
                MAX_CONFIG >> 20
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(tar_failed(
                "import from",
                file,
                "it holds no VM (no config.toml)".into(),
            ))
        }
        Err(e) => return Err(refused(format!("cannot be read: {e}"))),
    };
    let text = String::from_utf8(bytes).map_err(|_| refused("is not UTF-8".into()))?;
    let config_error = |source| MigrateError::ArchiveConfig {
        path: file.to_path_buf(),
        source,
    };
    let given: toml::Table = toml::from_str(&text).map_err(config_error)?;
    let config: VmConfig = toml::from_str(&text).map_err(config_error)?;
    let known = toml::Table::try_from(&config)
        .map_err(|e| refused(format!("cannot be written back: {e}")))?;
    if let Some(field) = unknown_field(&given, &known, "") {
        return Err(refused(format!(
            "holds `{}`, which this feather does not know: import it with a feather as new as \
             the one that exported it; nothing was imported",
            feather_core::display::escape_for_terminal(&field)
        )));
    }
    Ok(config)
}

/// The first key of `given` that `known` (the same config as this feather writes it) lacks,
/// with its path; a key this feather leaves out when empty or false is known with such a value.
fn unknown_field(given: &toml::Table, known: &toml::Table, at: &str) -> Option<String> {
    given.iter().find_map(|(key, value)| {
        let path = format!("{at}{key}");
        match (value, known.get(key)) {
            (toml::Value::Table(given), Some(toml::Value::Table(known))) => {
                unknown_field(given, known, &format!("{path}."))
            }
            (toml::Value::Array(given), Some(toml::Value::Array(known))) => {
                given.iter().zip(known).find_map(|pair| match pair {
                    (toml::Value::Table(given), toml::Value::Table(known)) => {
                        unknown_field(given, known, &format!("{path}."))
                    }
                    _ => None,
                })
            }
            (_, Some(_)) => None,
            (toml::Value::Array(items), None) if items.is_empty() => None,
            (toml::Value::Boolean(false), None) => None,
            (_, None) => Some(path),
        }
    })
}

/// The plain file at `path` if it holds at most `max` bytes, None if it holds more. A link is
/// not followed and a FIFO or device not waited on (a record may come from an archive made
/// elsewhere): both are errors ([`feather_core::small_file::read`]).
pub fn read_at_most(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    match feather_core::small_file::read(path, max) {
        Err(e) if feather_core::small_file::too_large(&e) => Ok(None),
        read => read.map(Some),
    }
}

/// Why tar could not unpack an archive, from what it printed (`stderr`). A VM nests its
/// folders as deep as it likes, and tar archives paths of any length but opens each by its
/// whole name when it unpacks, which fails past `PATH_MAX`: that is no damage, and only the
/// VM's owner can shorten the path.
fn unpack_failure(stderr: &[u8]) -> String {
    let said = String::from_utf8_lossy(stderr);
    let said = said.trim();
    if said.contains("File name too long") {
        let first = said.lines().next().unwrap_or_default();
        let shown: String = first.chars().take(200).collect();
        return format!(
            "the VM's layer holds a path longer than the {} bytes a path may have, which tar \
             cannot unpack ({shown}…): move those folders higher up inside the VM, then send \
             it again",
            nix::libc::PATH_MAX
        );
    }
    format!("damaged or not a feather archive: {said}")
}

fn tar_error(what: &'static str, path: &Path, source: std::io::Error) -> MigrateError {
    MigrateError::Tar {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn tar_failed(what: &'static str, path: &Path, why: String) -> MigrateError {
    MigrateError::Archive {
        what,
        path: path.to_path_buf(),
        why,
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "name = \"vm\"\nid = \"0123456789ab\"\nbase = \"/\"\ncreated = 1\n\
        allow_userns = false\n[limits]\npids = 2048\n[network]\nmode = \"none\"\negress = false\n";

    fn unknown_in(text: &str) -> Option<String> {
        let given: toml::Table = toml::from_str(text).unwrap();
        let config: VmConfig = toml::from_str(text).unwrap();
        unknown_field(&given, &toml::Table::try_from(&config).unwrap(), "")
    }

    #[test]
    fn a_config_field_this_feather_does_not_know_is_found_at_any_depth() {
        assert_eq!(unknown_in(CONFIG), None);
        // What feather leaves out when empty or false, written out, is known.
        let written_out = format!("services = []\nfresh_state = false\n{CONFIG}");
        assert_eq!(unknown_in(&written_out), None);
        let top = format!("mounts_from_host = [\"/etc\"]\n{CONFIG}");
        assert_eq!(unknown_in(&top).as_deref(), Some("mounts_from_host"));
        let nested = CONFIG.replace("pids = 2048", "pids = 2048\nswap = 1");
        assert_eq!(unknown_in(&nested).as_deref(), Some("limits.swap"));
        let in_list = CONFIG.replace(
            "egress = false",
            "egress = false\n[[network.publish]]\nhost_port = 1\nvm_port = 2\naddress = \"0.0.0.0\"",
        );
        assert_eq!(
            unknown_in(&in_list).as_deref(),
            Some("network.publish.address")
        );
    }

    /// A folder with what an export of a VM with a layer at `/srv/my-data` unpacks to.
    fn exported_shape(dir: &Path) {
        let _ = fs::remove_dir_all(dir);
        for folder in ["upper/tmp", "checkpoint", "mounts/srv-my\\x2ddata/upper/x"] {
            fs::create_dir_all(dir.join(folder)).unwrap();
        }
        fs::create_dir_all(dir.join("mounts/srv-my\\x2ddata/work/work")).unwrap();
        fs::write(dir.join("config.toml"), CONFIG).unwrap();
        fs::write(dir.join("state.json"), "{}").unwrap();
        fs::write(dir.join("checkpoint/restore.log"), "").unwrap();
        // What the VM made in its layers may be anything.
        std::os::unix::fs::symlink("/etc", dir.join("mounts/srv-my\\x2ddata/upper/x/etc")).unwrap();
        fs::write(dir.join("upper/tmp/leak"), "").unwrap();
        fs::hard_link(dir.join("upper/tmp/leak"), dir.join("upper/tmp/leak2")).unwrap();
    }

    /// A link, a file or anything else in `mounts/` where an export has a layer's folders is
    /// refused naming it: the VM's start mounts `mounts/<layer>/upper` as its writable layer,
    /// and through a link that was any folder of the host's. So is a record with another name
    /// (a hard link tar made to a member): CRIU writes its log into the images' folder.
    #[test]
    fn layer_folders_or_records_no_export_makes_are_refused_naming_them() {
        let scratch = feather_testkit::ScratchDir::new("shape");
        let dir = scratch.0.clone();
        let victim_scratch = feather_testkit::ScratchDir::new("shape-victim");
        let victim = victim_scratch.0.clone();
        let layer = dir.join("mounts/srv-my\\x2ddata");
        type Craft<'a> = Box<dyn Fn() + 'a>;
        let cases: Vec<(&str, Craft<'_>, &str)> = vec![
            (
                "a link at a layer's upper",
                Box::new(|| {
                    fs::remove_dir_all(layer.join("upper")).unwrap();
                    std::os::unix::fs::symlink(&victim, layer.join("upper")).unwrap();
                }),
                "x2ddata/upper as a link",
            ),
            (
                "a link at a layer's work",
                Box::new(|| {
                    fs::remove_dir_all(layer.join("work")).unwrap();
                    std::os::unix::fs::symlink(&victim, layer.join("work")).unwrap();
                }),
                "x2ddata/work as a link",
            ),
            (
                "a link for a layer's folder",
                Box::new(|| {
                    fs::remove_dir_all(&layer).unwrap();
                    std::os::unix::fs::symlink(&victim, &layer).unwrap();
                }),
                "x2ddata as a link",
            ),
            (
                "a file for a layer's upper",
                Box::new(|| {
                    fs::remove_dir_all(layer.join("upper")).unwrap();
                    fs::write(layer.join("upper"), "").unwrap();
                }),
                "x2ddata/upper as a file",
            ),
            (
                "something else in a layer's folder",
                Box::new(|| {
                    fs::create_dir(layer.join("lower")).unwrap();
                }),
                "x2ddata/lower, which no export holds",
            ),
            (
                "a file in mounts",
                Box::new(|| {
                    fs::write(dir.join("mounts/srv"), "").unwrap();
                }),
                "mounts/srv as a file",
            ),
            (
                "a name no mount point escapes to",
                Box::new(|| {
                    fs::create_dir(dir.join("mounts/a b")).unwrap();
                }),
                "mounts/a b, which names no layer",
            ),
            (
                "a record hard-linked to the layer",
                Box::new(|| {
                    fs::remove_file(dir.join("checkpoint/restore.log")).unwrap();
                    fs::hard_link(
                        dir.join("upper/tmp/leak"),
                        dir.join("checkpoint/restore.log"),
                    )
                    .unwrap();
                }),
                "checkpoint/restore.log as a file with 3 names",
            ),
            (
                "the config hard-linked to the layer",
                Box::new(|| {
                    fs::remove_file(dir.join("upper/tmp/leak2")).unwrap();
                    fs::hard_link(dir.join("config.toml"), dir.join("upper/tmp/config")).unwrap();
                }),
                "config.toml as a file with 2 names",
            ),
        ];
        let mut found = Vec::new();
        for (what, craft, said) in &cases {
            exported_shape(&dir);
            assert_eq!(
                members_as_exported(&dir),
                Ok(()),
                "{what}: an export's shape"
            );
            craft();
            let refused = members_as_exported(&dir);
            if !refused
                .as_ref()
                .is_err_and(|why| why.contains(said) && why.contains(ALTERED))
            {
                found.push(format!("{what}: {refused:?}"));
            }
        }
        let untouched = fs::read_dir(&victim).unwrap().count();
        assert_eq!(found, Vec::<String>::new());
        assert_eq!(untouched, 0);
    }

    /// tar makes an archive's hard link between two members: a record linked to a file of the
    /// VM's layer unpacks as one, and the import is refused, leaving nothing.
    #[test]
    fn an_archive_whose_record_is_a_hard_link_into_the_layer_is_refused() {
        let scratch = feather_testkit::ScratchDir::new("hardlink");
        let dir = scratch.0.clone();
        let crafted_dir = dir.join("crafted");
        exported_shape(&crafted_dir);
        fs::remove_file(crafted_dir.join("checkpoint/restore.log")).unwrap();
        fs::hard_link(
            crafted_dir.join("upper/tmp/leak"),
            crafted_dir.join("checkpoint/restore.log"),
        )
        .unwrap();
        let crafted = dir.join("crafted.tar.zst");
        let status = Command::new("tar")
            .args(["--create", "--zstd", "-f"])
            .arg(&crafted)
            .arg("-C")
            .arg(&crafted_dir)
            .args(["config.toml", "state.json", "upper", "mounts", "checkpoint"])
            .status()
            .unwrap();
        assert!(status.success());
        let staging = dir.join("staging");
        let refused = unpack(&crafted, &staging)
            .map(|_| ())
            .map_err(|e| e.to_string());
        let left = staging.exists();
        assert!(
            refused
                .as_ref()
                .is_err_and(|why| why.contains("restore.log as a file with 3 names")),
            "{refused:?}"
        );
        assert!(!left, "the refused import left its folder");
    }

    /// An archive of `dir` as a hand-made one is: plain tar, no `--sparse`, so 64 MiB of zeros
    /// unpack to 64 MiB written from a few KiB of zstd.
    fn hand_made(dir: &Path, file: &Path) {
        let status = Command::new("tar")
            .args(["--create", "--zstd", "-f"])
            .arg(file)
            .arg("-C")
            .arg(dir)
            .args(["config.toml", "state.json", "upper", "mounts", "checkpoint"])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Unpacks `file` into `staging` from the file and again from a stream, with the bound
    /// variables `bounds` set: each outcome, and whether the staging folder was left.
    fn unpacked_with(
        bounds: &[(&str, &str)],
        file: &Path,
        staging: &Path,
    ) -> Vec<(Result<()>, bool)> {
        for (name, value) in bounds {
            std::env::set_var(name, value);
        }
        let mut outcomes = Vec::new();
        for streamed in [false, true] {
            let unpacked = if streamed {
                unpack_from(&mut fs::File::open(file).unwrap(), file, staging)
            } else {
                unpack(file, staging)
            };
            let left = staging.exists();
            let _ = fs::remove_dir_all(staging);
            outcomes.push((unpacked.map(|_| ()), left));
        }
        for (name, _) in bounds {
            std::env::remove_var(name);
        }
        outcomes
    }

    /// An archive whose 64 MiB of zeros compress to a few KiB is stopped past a 16 MiB bound,
    /// read from a file or as a migration's stream, and leaves no staging folder; under a bound
    /// it fits, and with none, it unpacks.
    #[test]
    fn an_archive_that_unpacks_past_the_bound_is_refused_and_leaves_nothing() {
        let scratch = feather_testkit::ScratchDir::new("bound");
        let dir = scratch.0.clone();
        let vm = dir.join("vm");
        exported_shape(&vm);
        let zeros = fs::File::create(vm.join("upper/zeros")).unwrap();
        for at in 0..64u64 {
            std::os::unix::fs::FileExt::write_all_at(&zeros, &[0u8; 1 << 20], at << 20).unwrap();
        }
        drop(zeros);
        let file = dir.join("crafted.tar.zst");
        hand_made(&vm, &file);
        let small = fs::metadata(&file).unwrap().len();
        fs::remove_dir_all(&vm).unwrap();
        let staging = dir.join("staging");
        let over = unpacked_with(&[(crate::room::MAX_VAR, "16M")], &file, &staging);
        let fits = unpacked_with(&[(crate::room::MAX_VAR, "1G")], &file, &staging);
        let unbound = unpacked_with(&[], &file, &staging);
        assert!(small < 1 << 20, "the archive takes {small} bytes");
        for (refused, left) in over {
            let why = refused.map_err(|e| e.to_string()).unwrap_err();
            assert!(
                why.contains("FEATHER_IMPORT_MAX=16M") && why.contains("nothing was imported"),
                "{why}"
            );
            assert!(!left, "the refused import left its folder");
        }
        for (unpacked, _) in fits.into_iter().chain(unbound) {
            unpacked.unwrap();
        }
    }

    /// A filesystem with less free than the reserve takes no import; a mistyped bound is said.
    #[test]
    fn an_import_that_would_leave_less_than_the_reserve_free_is_refused() {
        let scratch = feather_testkit::ScratchDir::new("reserve");
        let dir = scratch.0.clone();
        let vm = dir.join("vm");
        exported_shape(&vm);
        let file = dir.join("vm.tar.zst");
        hand_made(&vm, &file);
        let staging = dir.join("staging");
        let over = unpacked_with(&[(crate::room::RESERVE_VAR, "1000000T")], &file, &staging);
        let mistyped = unpacked_with(&[(crate::room::MAX_VAR, "lots")], &file, &staging);
        for (refused, left) in over {
            let why = refused.map_err(|e| e.to_string()).unwrap_err();
            assert!(
                why.contains("under the") && why.contains("FEATHER_IMPORT_RESERVE"),
                "{why}"
            );
            assert!(!left, "the refused import left its folder");
        }
        for (refused, left) in mistyped {
            let why = refused.map_err(|e| e.to_string()).unwrap_err();
            assert!(why.contains("FEATHER_IMPORT_MAX=lots"), "{why}");
            assert!(!left);
        }
    }

    /// A POSIX ACL as the kernel stores it (`system.posix_acl_*`): the owner rw, user 1234
    /// rwx, the group r, mask rwx, others r.
    fn acl() -> Vec<u8> {
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (0x01u16, 6u16, u32::MAX),
            (0x02, 7, 1234),
            (0x04, 4, u32::MAX),
            (0x10, 7, u32::MAX),
            (0x20, 4, u32::MAX),
        ] {
            acl.extend(tag.to_le_bytes());
            acl.extend(perm.to_le_bytes());
            acl.extend(id.to_le_bytes());
        }
        acl
    }

    /// Every attribute a layer may hold, by the path below the VM's folder, its name, its value
    /// and whether an archive carries it.
    fn layer_attributes() -> Vec<(&'static str, &'static str, Vec<u8>, bool)> {
        // A file capability (v2): cap_net_raw permitted and effective.
        let mut capability = vec![0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00];
        capability.resize(20, 0);
        vec![
            ("upper", "trusted.overlay.uuid", vec![0x88; 16], false),
            ("upper", "trusted.overlay.impure", b"y".to_vec(), false),
            (
                "upper/folder",
                "trusted.overlay.opaque",
                b"y".to_vec(),
                true,
            ),
            (
                "upper/folder",
                "trusted.overlay.redirect",
                b"/etc".to_vec(),
                false,
            ),
            (
                "upper/folder",
                "trusted.overlay.overlay.redirect",
                b"/etc".to_vec(),
                false,
            ),
            (
                "upper/folder",
                "trusted.overlay.whiteouts",
                b"".to_vec(),
                false,
            ),
            ("upper/folder", "system.posix_acl_default", acl(), true),
            (
                "upper/file",
                "trusted.overlay.origin",
                vec![0, 0xfb, 5, 0, 0],
                false,
            ),
            (
                "upper/file",
                "trusted.overlay.metacopy",
                b"".to_vec(),
                false,
            ),
            (
                "upper/file",
                "trusted.overlay.overlay.metacopy",
                b"".to_vec(),
                false,
            ),
            (
                "upper/file",
                "trusted.overlay.nlink",
                b"U+1".to_vec(),
                false,
            ),
            (
                "upper/file",
                "trusted.overlay.upper",
                vec![0, 0xfb, 5, 0, 0],
                false,
            ),
            (
                "upper/file",
                "trusted.overlay.whiteout",
                b"".to_vec(),
                false,
            ),
            (
                "upper/file",
                "trusted.overlay.protattr",
                b"a".to_vec(),
                true,
            ),
            ("upper/file", "trusted.other", b"host's".to_vec(), false),
            (
                "upper/file",
                "security.selinux",
                b"system_u:object_r:etc_t:s0".to_vec(),
                false,
            ),
            ("upper/file", "security.ima", vec![0x04, 0x04, 0x01], false),
            ("upper/file", "security.capability", capability, true),
            ("upper/file", "system.posix_acl_access", acl(), true),
            ("upper/file", "user.note", b"the VM's".to_vec(), true),
        ]
    }

    /// Which of [`layer_attributes`] differ in the VM folder `dir` from what an archive carries.
    fn wrongly_carried(dir: &Path) -> Vec<String> {
        layer_attributes()
            .into_iter()
            .filter_map(|(path, name, value, carried)| {
                let found = xattr::get(dir.join(path), name).unwrap();
                let expected = carried.then_some(value);
                (found != expected).then(|| format!("{path}: {name} is {found:?}"))
            })
            .collect()
    }

    /// An archive holds a layer its author chose (another host's, or a VM's own): written or
    /// unpacked, it carries only the attributes a layer needs, overlayfs's opaque mark and
    /// protected flags of its own, and none that names an overlay's identity (a copied
    /// `trusted.overlay.uuid` made every import of one archive the same filesystem), leads
    /// elsewhere (redirects, metacopy, origin) or is another program's to trust.
    #[test]
    fn an_archive_carries_only_the_attributes_a_layer_needs_both_ways() {
        carried_both_ways("archive-xattrs");
    }

    /// GNU tar reads options from `TAR_OPTIONS` before its command line: one in feather's
    /// environment widens nothing (`--xattrs-include=*` carried the UUID, redirects and labels
    /// both ways again).
    #[test]
    fn tar_options_in_feathers_environment_widen_nothing() {
        // Set for this test's process (nextest runs each test in its own); any other test that
        // ran tar meanwhile would be as immune.
        std::env::set_var("TAR_OPTIONS", "--xattrs-include=*");
        let outcome = std::panic::catch_unwind(|| carried_both_ways("archive-tar-options"));
        std::env::remove_var("TAR_OPTIONS");
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    /// Exports a layer holding every attribute of [`layer_attributes`] and unpacks an archive
    /// of it a plain tar made; asserts each carried only what an archive carries.
    fn carried_both_ways(name: &str) {
        let scratch = feather_testkit::ScratchDir::new(name);
        let dir = scratch.0.clone();
        let vm_dir = dir.join("vm");
        fs::create_dir_all(vm_dir.join("upper/folder")).unwrap();
        fs::write(vm_dir.join("upper/file"), "kept\n").unwrap();
        fs::write(vm_dir.join("config.toml"), CONFIG).unwrap();
        for (path, name, value, _) in layer_attributes() {
            xattr::set(vm_dir.join(path), name, &value)
                .unwrap_or_else(|e| panic!("set {name} on {path}: {e}"));
        }
        let tar = |args: &[&str]| {
            let status = Command::new("tar").args(args).status().unwrap();
            assert!(status.success(), "tar {args:?}");
        };
        let everything = ["--xattrs", "--xattrs-include=*"];

        // Written: what an export holds, unpacked by a tar that keeps every attribute.
        let exported = dir.join("exported.tar.zst");
        export(&vm_dir, &exported, &mut |_| {}).unwrap();
        let written = dir.join("written");
        fs::create_dir(&written).unwrap();
        let (from, to) = (exported.to_str().unwrap(), written.to_str().unwrap());
        tar(&[
            &["--extract", "--zstd", "-f", from, "-C", to][..],
            &everything,
        ]
        .concat());
        let written_wrongly = wrongly_carried(&written);

        // Unpacked: an archive made by another tar, holding every attribute.
        let crafted = dir.join("crafted.tar.zst");
        let (to, from) = (crafted.to_str().unwrap(), vm_dir.to_str().unwrap());
        let members = ["config.toml", "upper"];
        tar(&[
            &["--create", "--zstd", "-f", to, "-C", from][..],
            &everything,
            &members,
        ]
        .concat());
        let staging = dir.join("staging");
        unpack(&crafted, &staging).unwrap();
        let unpacked_wrongly = wrongly_carried(&staging);
        assert_eq!(
            fs::read_to_string(staging.join("upper/file")).unwrap(),
            "kept\n"
        );

        assert!(written_wrongly.is_empty(), "exported: {written_wrongly:?}");
        assert!(
            unpacked_wrongly.is_empty(),
            "unpacked: {unpacked_wrongly:?}"
        );
    }

    /// The carried attributes `path` holds.
    fn carried_on(path: &Path) -> Vec<String> {
        xattr::list(path)
            .unwrap()
            .filter(|name| carried(name.as_encoded_bytes()))
            .map(|name| name.to_string_lossy().into_owned())
            .collect()
    }

    /// An archive made elsewhere may hold an entry for the VM's folder itself (`./`), which no
    /// export holds, and tar gives what it says to the folder it unpacks into: the new VM's.
    /// That folder comes out feather's own (root's, 0700, without ACLs or attributes), and so
    /// do feather's records in it, whatever the archive gave them.
    #[test]
    fn an_archives_entry_for_the_vm_folder_itself_leaves_it_feathers_own() {
        use std::os::unix::fs::MetadataExt;
        let scratch = feather_testkit::ScratchDir::new("archive-dot");
        let dir = scratch.0.clone();
        let crafted_dir = dir.join("crafted");
        fs::create_dir_all(crafted_dir.join("upper")).unwrap();
        fs::create_dir_all(crafted_dir.join("checkpoint/nested")).unwrap();
        fs::write(crafted_dir.join("config.toml"), CONFIG).unwrap();
        fs::write(crafted_dir.join("state.json"), "{}").unwrap();
        fs::write(crafted_dir.join("checkpoint/nested/pages-1.img"), "").unwrap();
        let records = [
            "config.toml",
            "state.json",
            "checkpoint",
            "checkpoint/nested",
            "checkpoint/nested/pages-1.img",
        ];
        for path in [&[""][..], &records].concat() {
            let path = crafted_dir.join(path);
            xattr::set(&path, "system.posix_acl_access", &acl()).unwrap();
            xattr::set(&path, "user.note", b"the archive's").unwrap();
            if path.is_dir() {
                xattr::set(&path, "system.posix_acl_default", &acl()).unwrap();
            }
        }
        let (uid, gid) = (Some(1234.into()), Some(1234.into()));
        nix::unistd::chown(&crafted_dir, uid, gid).unwrap();
        let loose = std::os::unix::fs::PermissionsExt::from_mode(0o777);
        fs::set_permissions(&crafted_dir, loose).unwrap();
        let crafted = dir.join("crafted.tar.zst");
        let status = Command::new("tar")
            .args(["--create", "--zstd", "--xattrs", "--xattrs-include=*", "-f"])
            .arg(&crafted)
            .arg("-C")
            .arg(&crafted_dir)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());

        let staging = dir.join("staging");
        unpack(&crafted, &staging).unwrap();
        let folder = fs::metadata(&staging).unwrap();
        let found = (
            folder.mode() & 0o7777,
            folder.uid(),
            folder.gid(),
            carried_on(&staging),
        );
        // What feather writes there afterwards inherits nothing.
        fs::write(staging.join("written"), "").unwrap();
        let written = carried_on(&staging.join("written"));
        let records: Vec<_> = records
            .iter()
            .map(|path| (path, carried_on(&staging.join(path))))
            .filter(|(_, carried)| !carried.is_empty())
            .collect();
        let (euid, egid) = (nix::unistd::geteuid(), nix::unistd::getegid());
        assert_eq!(found, (0o700, euid.as_raw(), egid.as_raw(), vec![]));
        assert_eq!(written, Vec::<String>::new());
        assert_eq!(records, vec![]);
    }

    /// tar takes an extended attribute it cannot set for a warning and exits 0: an import whose
    /// layer lost one (its opaque mark here) fails instead, naming what to do. A ramfs, mounted
    /// in a mount namespace of this test's thread alone, takes no extended attributes.
    #[test]
    fn an_attribute_the_state_roots_filesystem_cannot_take_fails_the_import() {
        let scratch = feather_testkit::ScratchDir::new("archive-ramfs");
        let dir = scratch.0.clone();
        let vm_dir = dir.join("vm");
        fs::create_dir_all(vm_dir.join("upper/folder")).unwrap();
        fs::write(vm_dir.join("config.toml"), CONFIG).unwrap();
        xattr::set(vm_dir.join("upper/folder"), "trusted.overlay.opaque", b"y").unwrap();
        let file = dir.join("vm.tar.zst");
        export(&vm_dir, &file, &mut |_| {}).unwrap();
        let ramfs = dir.join("ramfs");
        fs::create_dir(&ramfs).unwrap();
        let staging = ramfs.join("staging");
        let unpacked = std::thread::spawn(move || {
            use nix::mount::{mount, MsFlags};
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
            let none: Option<&str> = None;
            mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none).unwrap();
            mount(Some("ramfs"), &ramfs, Some("ramfs"), MsFlags::empty(), none).unwrap();
            let unpacked = unpack(&file, &staging)
                .map(|_| ())
                .map_err(|e| e.to_string());
            (unpacked, staging.exists())
        })
        .join()
        .unwrap();
        let (unpacked, staging_left) = unpacked;
        let error = unpacked.expect_err("the import went on without the opaque mark");
        for said in [
            "did not take an extended attribute",
            "trusted.overlay.opaque",
            "'upper/folder'",
            "--root",
            "nothing was imported",
        ] {
            assert!(error.contains(said), "{error}");
        }
        assert!(!staging_left, "the failed import left its folder");
    }

    /// Makes `levels` folders of 200-byte names in `dir`, one in the other, by descriptor (the
    /// whole path is past what a path may name), and a file `leaf` in the deepest.
    fn nest(dir: &Path, levels: usize) {
        let mut at = fs::File::open(dir).unwrap();
        let name = "d".repeat(200);
        for _ in 0..levels {
            nix::sys::stat::mkdirat(
                &at,
                name.as_str(),
                nix::sys::stat::Mode::from_bits_truncate(0o755),
            )
            .unwrap();
            at = beneath_dir(&at, &name);
        }
        let leaf = nix::fcntl::openat(
            &at,
            "leaf",
            nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        nix::unistd::write(&leaf, b"deep\n").unwrap();
    }

    fn beneath_dir(at: &fs::File, name: &str) -> fs::File {
        let fd = nix::fcntl::openat(
            at,
            name,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        fs::File::from(fd)
    }

    #[test]
    fn a_layer_path_past_path_max_is_named_as_such_not_as_a_damaged_archive() {
        let scratch = feather_testkit::ScratchDir::new("deep-archive");
        let dir = scratch.0.clone();
        let vm_dir = dir.join("vm");
        fs::create_dir_all(vm_dir.join("upper")).unwrap();
        fs::write(vm_dir.join("config.toml"), "").unwrap();
        nest(&vm_dir.join("upper"), 25);
        let file = dir.join("vm.tar.zst");
        export(&vm_dir, &file, &mut |_| {}).unwrap();
        let error = unpack(&file, &dir.join("staging")).unwrap_err().to_string();
        // Removed by descriptor: `remove_dir_all` reaches entries by their whole path.
        fs::remove_file(&file).unwrap();
        assert!(
            !dir.join("staging").exists(),
            "the failed unpack left its folder"
        );
        feather_sys::beneath::empty_dir(&fs::File::open(&vm_dir).unwrap()).unwrap();
        for said in ["longer than the 4096 bytes", "higher up inside the VM"] {
            assert!(error.contains(said), "{error}");
        }
        assert!(!error.contains("damaged"), "{error}");
    }
}
