//! CRIU's cache of what it found out about the kernel (`/run/criu.kdat`), kept usable.
//!
//! Every CRIU call (each dump, restore, `lazy-pages`, `check`) first probes the kernel: it
//! makes namespaces, userfaultfds, sockets and test mappings to learn what the kernel can do.
//! On this machine that took 100–200 ms of every call. CRIU saves the answers in
//! `/run/criu.kdat` and reads them back next time, but it saves them only where `/run` is a
//! tmpfs (so that they vanish with the boot they describe), and only if it can create
//! `/run/criu.kdat.tmp` exclusively. Hosts whose `/run` is a plain folder of the root
//! filesystem (this one) never get the cache, and a CRIU killed while writing it leaves the
//! temporary file behind, which keeps every later CRIU from saving it.
//!
//! So, before CRIU runs ([`prepare`]):
//! - where `/run` is a tmpfs, CRIU keeps the cache itself; feather only removes a temporary
//!   file older than a minute (a CRIU writes it in well under a millisecond);
//! - elsewhere feather makes the cache: `criu check` in a mount namespace of its own whose
//!   `/run` is an empty tmpfs, so CRIU saves it there, and feather copies it to
//!   `/run/criu.kdat`. CRIU reads the cache without asking where it lies. Since nothing
//!   empties that `/run` at boot, feather records beside it ([`STAMP`]) the boot id and the
//!   CRIU it was made for, and makes it anew when either changed: a cache never outlives the
//!   boot or the CRIU that made it, as on a tmpfs.

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;

/// Where CRIU running as root reads and writes its cache (its `KDAT_RUNDIR`).
pub const CACHE: &str = "/run/criu.kdat";
/// CRIU's temporary name while it writes the cache.
const CACHE_TMP: &str = "/run/criu.kdat.tmp";
/// feather's record of the boot and the CRIU a cache it made belongs to.
pub const STAMP: &str = "/run/criu.kdat.feather";

/// A temporary file older than this was left by a CRIU that ended while writing it.
const STALE_TMP: Duration = Duration::from_secs(60);

/// How CRIU's kernel probing is spared, for `feather check criu`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Cache {
    /// `/run` is a tmpfs: CRIU keeps its cache there itself.
    KeptByCriu,
    /// `/run` is not a tmpfs: feather made the cache for this boot and this CRIU.
    MadeByFeather,
    /// No cache: every CRIU call probes the kernel anew.
    Missing { why: String },
}

/// Makes sure CRIU finds its cache of kernel probes (see the module's text). Never fails a
/// checkpoint: without the cache CRIU only takes longer.
pub fn prepare(criu: &Path, version: &str) -> Cache {
    if run_is_tmpfs() {
        remove_stale_tmp();
        return Cache::KeptByCriu;
    }
    let stamp = stamp(criu, version);
    let current = fs::read_to_string(STAMP).is_ok_and(|s| s == stamp)
        && fs::metadata(CACHE).is_ok_and(|m| m.len() > 0);
    if current {
        return Cache::MadeByFeather;
    }
    // Made for another boot or another CRIU: it must not be read.
    let _ = fs::remove_file(STAMP);
    let _ = fs::remove_file(CACHE);
    remove_stale_tmp();
    match probe(criu) {
        Ok(kdat) => match save(&kdat, &stamp) {
            Ok(()) => Cache::MadeByFeather,
            Err(e) => Cache::Missing {
                why: format!("cannot write {CACHE}: {e}"),
            },
        },
        Err(why) => Cache::Missing { why },
    }
}

/// The boot and the CRIU (path and version) a cache belongs to.
fn stamp(criu: &Path, version: &str) -> String {
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    format!("boot {}\ncriu {} {version}\n", boot.trim(), criu.display())
}

fn run_is_tmpfs() -> bool {
    nix::sys::statfs::statfs("/run")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// Removes CRIU's temporary file if a CRIU that ended while writing it left it there.
fn remove_stale_tmp() {
    let stale = fs::symlink_metadata(CACHE_TMP)
        .and_then(|m| m.modified())
        .is_ok_and(|at| at.elapsed().is_ok_and(|age| age > STALE_TMP));
    if stale {
        let _ = fs::remove_file(CACHE_TMP);
    }
}

/// Runs `criu check` where `/run` is a fresh tmpfs (a private mount namespace, through
/// util-linux's `unshare`), and returns the cache it saved there.
fn probe(criu: &Path) -> Result<Vec<u8>, String> {
    let output = feather_sys::process::command("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(
            "mount -t tmpfs -o size=1m,mode=0755 feather-criu-kdat /run || exit 1; \
             \"$0\" check >/dev/null 2>&1; exec cat /run/criu.kdat",
        )
        .arg(criu)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run unshare: {e}"))?;
    if output.status.success() && !output.stdout.is_empty() {
        Ok(output.stdout)
    } else {
        Err("`criu check` saved no cache in a private /run".into())
    }
}

/// Writes the cache and then its stamp, each under a temporary name and renamed: a reader
/// finds either none or a whole one.
fn save(kdat: &[u8], stamp: &str) -> std::io::Result<()> {
    let pid = std::process::id();
    for (path, bytes) in [(CACHE, kdat), (STAMP, stamp.as_bytes())] {
        let partial = format!("{path}.feather-{pid}");
        write_private(&partial, bytes)
            .and_then(|()| fs::rename(&partial, path))
            .inspect_err(|_| {
                let _ = fs::remove_file(&partial);
            })?;
    }
    Ok(())
}

/// Writes a new file only root may read, as CRIU makes its own.
fn write_private(path: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}
