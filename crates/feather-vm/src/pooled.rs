//! Where a state root records its pool of VMs made ahead for `run --rm` ([`crate::pool`]), and
//! the fingerprint that tells whether a pooled VM still matches what a fresh VM would be.
//! Apart from `pool`, so that the keeper, which removes its VM's entry when the VM is claimed,
//! depends on nothing of the asker's side.
//!
//! ```text
//! <root>/pool/size        the size setting ("0": no pool; absent: [`DEFAULT_SIZE`])
//! <root>/pool/idle        how long a pooled VM waits unclaimed before its keeper removes it,
//!                         in seconds ("0": for ever; absent: [`DEFAULT_IDLE`])
//! <root>/pool/fill.lock   held by the one filler at work (never written: only locked)
//! <root>/pool/filler      the filler at work, while it holds the lock: its pid and start
//!                         time ("<pid> <ticks>"), written whole (a rename, never through a link)
//! <root>/pool/stale-misses  how many runs in a row found only stale VMs ([`STALE_MISSES_TO_STOP`])
//! <root>/pool/generation  how many times `network down` emptied the pool ([`generation`]): a
//!                         fill started before makes nothing
//! <root>/pool/vms/<name>  one per pooled VM, unclaimed: the fingerprint it was made under
//! <root>/pool/claimed/<name>  one per claimed VM until its keeper has removed it: its
//!                         claimer's pid and start time ("<pid> <ticks>"), once its keeper
//!                         wrote them (an expired VM has none)
//! ```
//!
//! An entry is written before its VM is created and moved to `claimed/` by the VM's keeper as
//! the VM is claimed (a rename: only one claim can make it): a VM with an entry is hidden from
//! `ls`, and an entry (pooled or claimed) without a live keeper is what a crash left, which
//! the next fill removes with its VM.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use feather_core::{StateRoot, VmName};
use nix::fcntl::{Flock, FlockArg};

/// The program whose `pool --fill` fills the pool: the command-line front, installed beside
/// `feather-keeper`.
pub const FRONT_PROGRAM: &str = "feather";

/// The environment variables that shape a VM (its network, the programs it runs): the only
/// ones in the fingerprint, and the only ones a fill keeps of its starter's environment.
pub const SHAPING_SETTINGS: [&str; 5] = [
    "FEATHER_SUBNET",
    "FEATHER_UPLINK",
    "FEATHER_BRIDGE",
    "FEATHER_NETWORK_LINGER",
    "FEATHER_OWN_PROGRAM",
];

/// Whether a fill keeps environment variable `key` of its starter's, and passes it to the
/// keepers it starts: [`SHAPING_SETTINGS`], the phase timings' switch (a traced fill's keepers
/// write theirs to their logs; it shapes no VM), and in a debug build (the tests') the
/// test-only hooks (`FEATHER_TEST_*`, [`crate::test_hooks`]), which a release build never reads.
pub fn kept_by_a_fill(key: &str) -> bool {
    SHAPING_SETTINGS.contains(&key)
        || key == feather_core::trace::VARIABLE
        || (cfg!(debug_assertions) && key.starts_with("FEATHER_TEST_"))
}

/// The size setting's file, in the pool's folder.
pub const SIZE: &str = "size";

/// The pool's idle setting, in its folder ([`crate::pool::set_idle`]).
pub const IDLE: &str = "idle";

/// The pool's size where the root sets none: on by default, so that `run --rm` as the README
/// shows it is fast (issue 15); one VM, which its keeper ends after [`DEFAULT_IDLE`].
pub const DEFAULT_SIZE: usize = 1;

/// The pool's size setting: [`DEFAULT_SIZE`] unless set (`pool --size 0`, `--drain`: off).
/// A [`fence`] whose `network down` was killed is lifted here, so that it does not keep the
/// pool off for good looking like the admin's own 0.
pub fn size(root: &StateRoot) -> usize {
    let file = dir(root).join(SIZE);
    let mut setting = read_small(&file);
    if setting.as_deref() == Some(FENCES_SIZE) && lift_a_stale_fence(root) {
        setting = read_small(&file);
    }
    setting
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(DEFAULT_SIZE)
}

/// The variable that keeps a run out of the pool: `FEATHER_POOL=0` in a run's environment, and
/// the run neither claims a pooled VM nor starts a fill (test harnesses, scripts that count
/// what is left). Not in the fingerprint: it shapes no VM.
pub const OPT_OUT: &str = "FEATHER_POOL";

/// Whether this process's environment keeps it out of the pool ([`OPT_OUT`]): `0` does, `1`
/// or unset does not; any other value is refused, naming it (a `false` or `no` meant as an
/// opt-out was silently a run in the pool).
pub fn opted_out() -> Result<bool, String> {
    match std::env::var_os(OPT_OUT) {
        None => Ok(false),
        Some(value) if value == "0" => Ok(true),
        Some(value) if value == "1" => Ok(false),
        Some(value) => Err(format!(
            "{OPT_OUT}={value:?} is neither 0 (keep this run out of the pool) nor 1 (use it); \
             set one of those, or unset it"
        )),
    }
}

/// How long a pooled VM waits unclaimed, unless the root says otherwise: long enough for the
/// scripts a pool is for (runs minutes apart still find it), short enough that an idle host
/// does not keep VMs no one uses.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(10 * 60);

/// How long a pooled VM waits unclaimed before its keeper removes it; `None`: for ever.
pub fn idle(root: &StateRoot) -> Option<Duration> {
    let seconds =
        read_small(&dir(root).join(IDLE)).and_then(|text| text.trim().parse::<u64>().ok());
    match seconds {
        None => Some(DEFAULT_IDLE),
        Some(0) => None,
        Some(seconds) => Some(Duration::from_secs(seconds)),
    }
}

/// The pool's folder in a state root.
pub fn dir(root: &StateRoot) -> PathBuf {
    root.dir().join("pool")
}

/// The pool's lock file, in its folder: held by the one filler at work ([`crate::pool::fill`]).
pub const FILL_LOCK: &str = "fill.lock";

/// The record of the filler at work, in the pool's folder ([`process_record`]).
pub const FILLER: &str = "filler";

/// The pool's folder, opened, never through a symbolic link: the pool's files are opened
/// relative to it ([`in_folder`]). A root's folder may be a user's (`sudo feather --root
/// ~/vms …`), and a fill runs as root.
pub fn open_dir(root: &StateRoot) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir(root))
}

/// File `name` of the opened folder `folder`, as a path the kernel resolves through its
/// descriptor (not through the folder's path, which may have been replaced since).
pub fn in_folder(folder: &std::fs::File, name: &str) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", folder.as_raw_fd())).join(name)
}

/// Writes file `name` of the pool's opened `folder` whole (a rename in that folder, which
/// replaces a link rather than writing through it); an error names it by the root's path.
pub fn write_in(
    root: &StateRoot,
    folder: &std::fs::File,
    name: &str,
    contents: &[u8],
    durability: feather_core::atomic::Durability,
) -> feather_core::error::Result<()> {
    use feather_core::Error;
    feather_core::atomic::write_atomic(&in_folder(folder, name), contents, durability).map_err(
        |e| match e {
            Error::Io { source, .. } => Error::Io {
                path: dir(root).join(name),
                source,
            },
            e => e,
        },
    )
}

/// The few bytes a setting or record of the pool's folder holds: a plain file's, at most
/// [`SMALL`] bytes, never through a symbolic link, never waited on (a FIFO); None otherwise.
pub fn read_small(file: &Path) -> Option<String> {
    feather_core::small_file::read_text(file, SMALL).ok()
}

/// The most [`read_small`] reads: a number, a [`process_record`] or a [`fingerprint`].
const SMALL: u64 = 64;

/// The folder of the entries, one per pooled VM.
pub fn entries_dir(root: &StateRoot) -> PathBuf {
    dir(root).join("vms")
}

/// The entry of VM `name`, there while the VM is pooled and unclaimed.
pub fn entry(root: &StateRoot, name: &VmName) -> PathBuf {
    entries_dir(root).join(name.as_str())
}

/// The folder of the claimed VMs' entries, each there until its VM is removed.
pub fn claimed_dir(root: &StateRoot) -> PathBuf {
    dir(root).join("claimed")
}

/// The entry of VM `name` once claimed, there until its keeper has removed the VM.
pub fn claimed_entry(root: &StateRoot, name: &VmName) -> PathBuf {
    claimed_dir(root).join(name.as_str())
}

/// Claims pooled VM `name`: its entry moves to `claimed/`, which only one caller can do (the
/// entry is gone for every later one). Whether this call did.
pub fn take(root: &StateRoot, name: &VmName) -> bool {
    let (from, to) = (entry(root, name), claimed_entry(root, name));
    match std::fs::rename(&from, &to) {
        Ok(()) => true,
        // A pool folder of a build that had no `claimed/` (a fill makes it): made, tried once
        // more.
        Err(_) if from.exists() && !claimed_dir(root).exists() => {
            std::fs::create_dir_all(claimed_dir(root)).is_ok()
                && std::fs::rename(&from, &to).is_ok()
        }
        Err(_) => false,
    }
}

/// Records who claimed VM `name` (the process at the other end of `claimer`) in its claimed
/// entry, so that a drain tells a VM still in use by its run from one whose run has ended.
pub fn record_claimer(root: &StateRoot, name: &VmName, claimer: &std::os::unix::net::UnixStream) {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let Ok(credentials) = getsockopt(claimer, PeerCredentials) else {
        return;
    };
    let Some(record) = process_record(nix::unistd::Pid::from_raw(credentials.pid())) else {
        return;
    };
    let _ = feather_core::atomic::write_atomic(
        &claimed_entry(root, name),
        record.as_bytes(),
        feather_core::atomic::Durability::Volatile,
    );
}

/// The process that claimed VM `name`, if its keeper recorded it and it still runs (its
/// command has not ended: it lets go of the VM as it ends).
pub fn claimer_running(root: &StateRoot, name: &VmName) -> Option<i32> {
    still_running(&read_small(&claimed_entry(root, name))?)
}

/// Process `pid` as a record names it: its pid and start time ("<pid> <ticks>"), so that the
/// record never names another process given the pid since.
pub fn process_record(pid: nix::unistd::Pid) -> Option<String> {
    let started = feather_sys::process::start_ticks(pid)?;
    Some(format!("{pid} {started}\n"))
}

/// The process a [`process_record`] names, if it still runs.
pub fn still_running(record: &str) -> Option<i32> {
    let (pid, started) = record.trim().split_once(' ')?;
    let (pid, started): (i32, u64) = (pid.parse().ok()?, started.parse().ok()?);
    let running = feather_sys::process::start_ticks(nix::unistd::Pid::from_raw(pid));
    (running == Some(started)).then_some(pid)
}

/// Whether VM `name` is pooled (made ahead, not claimed): `ls` does not show it.
pub fn is_pooled(root: &StateRoot, name: &VmName) -> bool {
    entry(root, name).exists()
}

/// What a fresh VM of the default options reads from the host as it is assembled, hashed:
/// the host's mount table (a VM over `/` re-creates the host's submounts: see
/// [`host_mounts`]), the files its network's `/etc` files come from,
/// the root's network settings, its policy's rule files (whether a VM gets a shuttle socket
/// is decided at its start), the settings of [`SHAPING_SETTINGS`] in the environment, and the
/// build of feather and its keeper (an upgrade's keeper speaks another protocol, runs other
/// code). A pooled VM made under another fingerprint is not used.
pub fn fingerprint(root: &StateRoot) -> String {
    let mut hash = std::hash::DefaultHasher::new();
    host_mounts(root).hash(&mut hash);
    for file in ["/etc/resolv.conf", "/etc/hosts", "/etc/hostname"] {
        std::fs::read(file).ok().hash(&mut hash);
    }
    let settings = root.dir().join("network.toml");
    feather_core::small_file::read(&settings, feather_net::settings::MAX_SETTINGS)
        .ok()
        .hash(&mut hash);
    policy_files(root).hash(&mut hash);
    let settings: Vec<Option<String>> = SHAPING_SETTINGS
        .iter()
        .map(|key| std::env::var(key).ok())
        .collect();
    settings.hash(&mut hash);
    build().hash(&mut hash);
    format!("{:016x}", hash.finish())
}

/// The host's mounts as this process sees them that a VM over `/` shows: not those under the
/// recipe's own `/proc`, `/sys`, `/dev` and `/run` (a VM never sees the host's there), nor
/// those inside state folders, which every VM has hidden (other roots' VMs come and go there).
fn host_mounts(root: &StateRoot) -> Vec<Vec<u8>> {
    let hidden = crate::hiding::state_folders(root);
    let seen = |point: &Path| {
        point == Path::new("/")
            || (crate::hiding::inside(Path::new("/"), point).is_some()
                && !hidden.iter().any(|folder| point.starts_with(folder)))
    };
    // Read as bytes: one mount point that is not UTF-8 made the whole table read as empty,
    // and each line is kept as it is (read lossily, distinct names hashed alike), passed over
    // by its mount point unescaped.
    let table = feather_sys::mountinfo::read_table(Path::new(feather_sys::mountinfo::OWN_TABLE))
        .unwrap_or_default();
    table
        .split(|&b| b == b'\n')
        .filter(|line| {
            feather_sys::mountinfo::parse(line)
                .first()
                .is_some_and(|mount| seen(&mount.mount_point))
        })
        .map(<[u8]>::to_vec)
        .collect()
}

/// The rule files in the root's policy folders, in order: each by its folder's place in
/// that order and its name in it (not by its full path: a root spelled through a symbolic
/// link is the same pool, review pool29 M1), and its contents.
fn policy_files(root: &StateRoot) -> Vec<(usize, std::ffi::OsString, Option<String>)> {
    let mut files = Vec::new();
    let dirs = feather_shuttle::policy::policy_dirs(root.dir());
    for (place, dir) in dirs.iter().enumerate() {
        let Ok(read) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut names: Vec<std::ffi::OsString> = read.flatten().map(|e| e.file_name()).collect();
        names.sort();
        files.extend(names.into_iter().map(|name| {
            let contents = feather_shuttle::policy::read_rule_file(&dir.join(&name)).ok();
            (place, name, contents)
        }));
    }
    files
}

/// This build: its version, its protocols' versions, and the identity of the two programs on
/// disk (a rebuild or an upgrade replaces the files).
fn build() -> Vec<String> {
    let mut said = vec![
        env!("CARGO_PKG_VERSION").to_owned(),
        crate::protocol::VERSION.to_string(),
        crate::commands::VERSION.to_string(),
    ];
    let programs = [std::env::current_exe().ok(), crate::launch::program().ok()];
    for program in programs.into_iter().flatten() {
        said.push(identity(&program));
    }
    said
}

/// A file's device, inode, size and change time: another file, or the same one rewritten,
/// reads differently.
fn identity(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "{} {} {} {} {}",
            path.display(),
            m.dev(),
            m.ino(),
            m.size(),
            m.ctime_nsec() + m.ctime() * 1_000_000_000
        ),
        Err(_) => format!("{} missing", path.display()),
    }
}

/// `feather pool --fill` ([`crate::pool::fill_detached`]) as a process of its own: stdio on
/// `/dev/null` (no terminal: a pooled VM's `ask` rules ask its claimer's), in `/`, with an
/// environment of the settings that shape a VM only (nothing of its starter's reaches the
/// keepers it starts, which serve other callers).
fn filler_command(root: &StateRoot, generation: u64) -> Option<std::process::Command> {
    let exe = std::env::current_exe().ok()?;
    let mut command = std::process::Command::new(exe.with_file_name(FRONT_PROGRAM));
    // The default root is named by no option (its sockets are not under its folder). Another
    // by its own path, not a symbolic link's: the keepers of the VMs the fill starts watch
    // that path for their root's removal, and a link removed is no root removed.
    if root.run_dir() == root.dir().join("run") {
        let dir = std::fs::canonicalize(root.dir()).unwrap_or_else(|_| root.dir().to_owned());
        command.arg("--root").arg(dir);
    }
    command
        .args(["pool", "--fill", "--generation"])
        .arg(generation.to_string())
        .current_dir("/")
        .env_clear()
        .env("PATH", crate::workload::DEFAULT_PATH)
        .envs(std::env::vars_os().filter(|(key, _)| key.to_str().is_some_and(kept_by_a_fill)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    Some(command)
}

/// Starts a fill ([`filler_command`]) that no one waits for: started by the keeper of a
/// claimed VM as the VM ends (the claimer has reported its command's exit status already),
/// and by a run that missed, after its command. None once runs in a row found the pool stale
/// ([`STALE_MISSES_TO_STOP`]). Whether it started one.
pub fn start_filler(root: &StateRoot) -> bool {
    // The pool's folder before the generation is read (made if missing, never the root's own
    // folder): `network down` takes a root without one for a root no fill started before is
    // coming to, and fences it with the size 0 only while its network goes
    // ([`crate::pool::emptied_while`], [`fence`]).
    match std::fs::create_dir(dir(root)) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return false,
        _ => {}
    }
    // The generation before the size: `network down` writes them the other way round.
    let seen = generation(root);
    if size(root) == 0 || stale_misses(root) >= STALE_MISSES_TO_STOP {
        return false;
    }
    let Some(fill) = filler_command(root, seen).and_then(|mut command| command.spawn().ok()) else {
        return false;
    };
    reap_when_it_ends(fill);
    true
}

/// Waits for `fill` on a thread of its own, so that it does not stay a zombie for as long as
/// its starter lives (a claimed VM's keeper, whose teardown goes on after it started the
/// refill): a zombie keeps its pid and start time, and so looks at work to whatever finds a
/// fill by them ([`still_running`]). A starter that ends first leaves the fill to whoever
/// inherits it, which reaps it. A thread that cannot be spawned (out of threads or memory)
/// leaves the fill unreaped, a zombie until the starter ends, as before this: harmless but for
/// that look, which then waits for it as for a fill at work, and not worth failing the start
/// of a refill for.
fn reap_when_it_ends(mut fill: std::process::Child) {
    let _ = std::thread::Builder::new()
        .name("reap the fill".into())
        .spawn(move || fill.wait());
}

/// How many runs in a row found nothing in the pool but VMs made under another fingerprint
/// (a host whose mount table churns: containers, automounts): at this many, refills stop, so
/// that such a host's runs cost no more than without a pool (each stale VM costs a claim and
/// a teardown beside the run, and a fill's VM start beside the next), until a run finds a VM
/// that matches or the size is set again ([`forget_stale_misses`]).
pub const STALE_MISSES_TO_STOP: u32 = 2;

/// The record of [`STALE_MISSES_TO_STOP`]'s count, in the pool's folder.
fn stale_misses_file(root: &StateRoot) -> PathBuf {
    dir(root).join("stale-misses")
}

/// How many runs in a row found the pool stale ([`STALE_MISSES_TO_STOP`]).
pub fn stale_misses(root: &StateRoot) -> u32 {
    count_in(&stale_misses_file(root))
}

/// Counts a run that found the pool stale.
pub fn record_stale_miss(root: &StateRoot) {
    let _ = write_count(
        &stale_misses_file(root),
        stale_misses(root).saturating_add(1),
    );
}

/// The count a file of the pool's folder holds; 0 where it has none.
fn count_in<T: std::str::FromStr + Default>(file: &Path) -> T {
    read_small(file)
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or_default()
}

/// Records `count` in `file` (whole or not at all: read by other processes meanwhile).
fn write_count(file: &Path, count: impl std::fmt::Display) -> feather_core::error::Result<()> {
    feather_core::atomic::write_atomic(
        file,
        format!("{count}\n").as_bytes(),
        feather_core::atomic::Durability::Volatile,
    )
}

/// Starts counting again: a run found a VM that matches, or the size was set.
pub fn forget_stale_misses(root: &StateRoot) {
    let _ = std::fs::remove_file(stale_misses_file(root));
}

/// The record of [`generation`], in the pool's folder.
const GENERATION: &str = "generation";

/// How many times the pool was emptied for its root's network to go (`network down`): a fill
/// is told the generation its starter saw ([`filler_command`]) and makes nothing under
/// another, so that a fill started before `network down` but at work only after it (its size
/// setting put back) makes no VM, and so no network, in a root being removed.
pub fn generation(root: &StateRoot) -> u64 {
    count_in(&dir(root).join(GENERATION))
}

/// Starts the next [`generation`] in the pool's opened `folder`: every fill started before
/// makes nothing.
pub fn next_generation(
    root: &StateRoot,
    folder: &std::fs::File,
) -> feather_core::error::Result<()> {
    let now: u64 = count_in(&in_folder(folder, GENERATION));
    let next = format!("{}\n", now.wrapping_add(1));
    write_in(
        root,
        folder,
        GENERATION,
        next.as_bytes(),
        feather_core::atomic::Durability::Volatile,
    )
}

/// A [`fence`] this process put in place: its folder held locked (flock) until
/// [`lift_fence`], so that a later command tells a fence whose `network down` was killed (the
/// kernel drops the lock with its last holder) from one still standing, whatever became of
/// the pid: [`lift_a_stale_fence`].
pub struct Fence(Flock<std::fs::File>);

/// Puts a pool's folder in place where there is none, whole (made aside, then renamed, never
/// replacing one), holding the size 0 and a generation past the absent one's: a fill a run
/// starts meanwhile (its starter makes the folder if missing, then reads the generation and
/// the size) makes nothing, in a root whose network is going (`network down`,
/// [`crate::pool::emptied_while`]). None when a folder appeared first: a starter made it, and
/// the pool is emptied as any other.
pub fn fence(root: &StateRoot) -> feather_core::error::Result<Option<Fence>> {
    use feather_core::atomic::{write_atomic, Durability};
    use feather_core::error::IoContext;
    let staged = fence_aside(root);
    // Left by a `network down` killed with this pid: nothing of anyone's.
    let _ = std::fs::remove_dir_all(&staged);
    // 0700 whatever the umask: a fence left in place (a fill came into it) is the pool's
    // folder, which a group-writable mode would make every later command refuse.
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staged)
        .at(&staged)?;
    // Locked before anyone can see it: a fence in place is always one whose owner is known.
    let placed = locked(&staged)
        .at(&staged)
        .and_then(|held| {
            write_atomic(
                &staged.join(SIZE),
                FENCES_SIZE.as_bytes(),
                Durability::Volatile,
            )?;
            write_count(&staged.join(GENERATION), 1)?;
            Ok(held)
        })
        .map(|held| {
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &staged,
                nix::fcntl::AT_FDCWD,
                &dir(root),
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            )
            .map(|()| Fence(held))
        });
    if !matches!(placed, Ok(Ok(_))) {
        let _ = std::fs::remove_dir_all(&staged);
    }
    match placed? {
        Ok(fence) => Ok(Some(fence)),
        Err(nix::errno::Errno::EEXIST) => Ok(None),
        Err(e) => Err(std::io::Error::from(e)).at(dir(root)),
    }
}

/// Folder `path` opened and locked (flock, exclusive), or an error if another holds it.
fn locked(path: &Path) -> std::io::Result<Flock<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let folder = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    Flock::lock(folder, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| e.into())
}

/// Takes this process's [`fence`] away once the network is down.
pub fn lift_fence(root: &StateRoot, fence: Fence) {
    lift(root, &fence.0);
}

/// Lifts a [`fence`] left in place by a `network down` that was killed (its lock free); true
/// if it did. One still standing (its owner holds it locked) is left to its owner.
fn lift_a_stale_fence(root: &StateRoot) -> bool {
    match locked(&dir(root)) {
        Ok(folder) => {
            lift(root, &folder);
            true
        }
        Err(_) => false,
    }
}

/// Takes the fence in the opened, locked `folder` away: the whole folder where nothing else
/// came into it (so that a starter then finds none and makes its own), else only the size
/// (absent, as it was), the generation kept (a fill started meanwhile is over). A size set
/// meanwhile (`pool --size 3` during `network down`) is the admin's: kept, and the folder with
/// it, also one set while this runs: each step is a rename, checked after, undone if it took
/// a setting.
fn lift(root: &StateRoot, folder: &std::fs::File) {
    let size = in_folder(folder, SIZE);
    let taken = in_folder(folder, SIZE_BEING_LIFTED);
    if std::fs::rename(&size, &taken).is_err() {
        return;
    }
    if read_small(&taken).as_deref() != Some(FENCES_SIZE) {
        // Where a newer size came meanwhile, it is the one kept.
        put_back(&taken, &size);
        return;
    }
    let _ = std::fs::remove_file(&taken);
    let aside = fence_aside(root);
    if !holds_only_the_generation(&in_folder(folder, ""))
        || std::fs::rename(dir(root), &aside).is_err()
    {
        return;
    }
    // Something came in between the look and the rename (a size set, a fill's starter).
    if !holds_only_the_generation(&aside) {
        put_back(&aside, &dir(root));
        put_back(&aside.join(SIZE), &dir(root).join(SIZE));
    }
    let _ = std::fs::remove_dir_all(&aside);
}

/// Whether the pool's `folder` holds nothing but its generation (a fence's, its size taken).
fn holds_only_the_generation(folder: &Path) -> bool {
    std::fs::read_dir(folder).is_ok_and(|entries| {
        entries
            .flatten()
            .all(|entry| entry.file_name() == GENERATION)
    })
}

/// Renames `from` to `to` unless `to` is there: what is there is newer, and kept.
fn put_back(from: &Path, to: &Path) {
    let _ = nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        from,
        nix::fcntl::AT_FDCWD,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    );
}

/// The size a [`fence`] writes: read as 0, told apart from a `pool --size 0` set meanwhile.
const FENCES_SIZE: &str = "0 \n";

/// Where [`lift`] holds the size it is taking away, in the pool's folder.
const SIZE_BEING_LIFTED: &str = ".size-being-lifted";

/// Where a [`fence`] is made, and put when lifted: a name of this process's in the root.
fn fence_aside(root: &StateRoot) -> PathBuf {
    root.dir()
        .join(format!(".pool-fence-{}", std::process::id()))
}

/// Runs a fill ([`filler_command`]) and waits for it: `feather pool --size`.
pub fn run_filler(root: &StateRoot) -> crate::error::Result<()> {
    let name = root.dir().display();
    let mut command = filler_command(root, generation(root)).ok_or_else(|| {
        crate::error::failed(&name, "cannot find the feather program to fill the pool")
    })?;
    let status = command
        .stderr(std::process::Stdio::inherit())
        .status()
        .map_err(crate::error::io(&name, "starting the pool's fill"))?;
    if !status.success() {
        return Err(crate::error::failed(
            &name,
            format!("the pool's fill failed ({status}); `feather pool` shows what it made"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `network down` in a root without a pool: while its network goes, a fill's starter reads
    /// the size 0 and a generation no earlier fill was told (so a run's refill makes nothing);
    /// once it is down, the root has no pool's folder again, and nothing of the fence is left.
    #[test]
    fn a_root_without_a_pool_is_fenced_while_its_network_goes_and_left_without_one() {
        let dir = feather_testkit::ScratchDir::new("fence");
        let root = StateRoot::new(Some(dir.0.clone()));
        let seen = crate::pool::emptied_while(&root, || (size(&root), generation(&root)));
        let names: Vec<_> = std::fs::read_dir(&dir.0).unwrap().flatten().collect();
        let (pooled, _, (size, generation)) = seen.unwrap();
        assert_eq!((pooled, size), (0, 0));
        assert_ne!(generation, 0);
        assert!(names.is_empty(), "left in the root: {names:?}");
    }

    /// A fence whose `network down` was killed (here dropped unlifted, which frees its lock as
    /// the kernel does at a death) is lifted by the next read of the size: the pool is on again
    /// (the default size), nothing of the fence left; a size set while it stood is kept. One
    /// still standing reads 0. Before, the fence's 0 stayed for good, as if the admin's own.
    #[test]
    fn a_fence_whose_owner_is_gone_is_lifted_and_one_standing_is_not() {
        for (set, expected) in [(None, DEFAULT_SIZE), (Some(3), 3), (Some(0), 0)] {
            let dir = feather_testkit::ScratchDir::new("fence-stale");
            let root = StateRoot::new(Some(dir.0.clone()));
            let fence = fence(&root)
                .unwrap()
                .expect("a root without a pool is fenced");
            assert_eq!(size(&root), 0, "the fence while it stands");
            if let Some(set) = set {
                crate::pool::set_size(&root, set).unwrap();
            }
            drop(fence);
            assert_eq!(size(&root), expected, "the size set: {set:?}");
            let names: Vec<_> = std::fs::read_dir(&dir.0).unwrap().flatten().collect();
            let left = if set.is_some() { 1 } else { 0 };
            assert_eq!(names.len(), left, "left in the root: {names:?}");
        }
    }

    /// A size set while the network goes (`pool --size 3`, `pool --size 0`, during `network
    /// down` of a root without a pool) outlives the fence: lifting it removed the setting.
    #[test]
    fn a_size_set_while_the_fence_stands_is_kept() {
        for set in [3, 0] {
            let dir = feather_testkit::ScratchDir::new("fence-size");
            let root = StateRoot::new(Some(dir.0.clone()));
            let seen = crate::pool::emptied_while(&root, || crate::pool::set_size(&root, set));
            seen.unwrap().2.unwrap();
            let setting = read_small(&dir.0.join("pool").join(SIZE));
            assert_eq!(setting, Some(format!("{set}\n")), "pool --size {set}");
        }
    }
}
