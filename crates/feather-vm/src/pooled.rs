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
//! <root>/pool/settings.lock  held while a setting is written or a fence lifted ([`SETTINGS_LOCK`])
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

use crate::pool_locks::{self, Deadline, IfMissing};

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
    let mut setting = read_small(&dir(root).join(SIZE));
    if setting.as_deref() == Some(FENCES_SIZE) {
        setting = setting_past_a_stale_fence(root);
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
    feather_sys::folder::open_no_follow(&dir(root))
}

/// File `name` of the opened folder `folder`, as a path the kernel resolves through its
/// descriptor (not through the folder's path, which may have been replaced since).
pub fn in_folder(folder: &std::fs::File, name: &str) -> PathBuf {
    pool_locks::opened(folder).join(name)
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
/// the pid: [`setting_past_a_stale_fence`].
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
    sweep_fence_leftovers(root);
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
    let placed = pool_locks::locked(&staged)
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

/// The lock a setting's writer ([`write_setting`]: `pool --size`, `--idle`) and a fence's
/// lifter hold, in the pool's folder (never written: only locked): a lift never removes a size
/// set meanwhile, so it needs never take one aside, and a lift killed at any point leaves
/// every setting where it was.
pub const SETTINGS_LOCK: &str = "settings.lock";

/// How long a setting's writer or a fence's lifter waits for [`SETTINGS_LOCK`], whose holders
/// write a file or lift a fence: milliseconds, but on a disk that stalls a durable write.
const SETTINGS_PATIENCE: Duration = Duration::from_secs(10);

/// How long `network down` waits for the pool's folder ([`hold_dir`]): a lifter holds it for
/// milliseconds; another `network down` of the root holds it while it empties the pool (its
/// drain waits up to 30 s for the pooled VMs), waits for the lingering process (30 s) and
/// takes the network down (~32 s): past this, the second fails naming the first.
pub const FOLDER_PATIENCE: Duration = Duration::from_secs(60);

/// The settings lock ([`SETTINGS_LOCK`]) of the pool's opened `folder`, waited for until
/// `deadline`.
fn lock_settings(
    root: &StateRoot,
    folder: &std::fs::File,
    deadline: Deadline,
) -> crate::error::Result<Flock<std::fs::File>> {
    let file = pool_locks::open_lock_in(folder, &dir(root), SETTINGS_LOCK)?;
    pool_locks::lock_within(file, &dir(root).join(SETTINGS_LOCK), deadline)
}

/// The pool's folder in place and its settings lock, held, within [`SETTINGS_PATIENCE`]
/// ([`pool_locks::in_place_locked`]).
fn settings_held(
    root: &StateRoot,
    if_missing: IfMissing,
) -> crate::error::Result<Option<(std::fs::File, Flock<std::fs::File>)>> {
    let deadline = Deadline::after(SETTINGS_PATIENCE);
    pool_locks::in_place_locked(&dir(root), if_missing, deadline, |folder, deadline| {
        lock_settings(root, folder, deadline)
    })
}

/// Writes setting `name` of the pool (its size, its idle time) whole and durably into the
/// pool's folder in place (made if missing, never the root's own folder), holding its
/// settings lock: so it never lands in a fence's folder a lift is taking away, nor between a
/// lift's look at the size and its removal. A writer that waited while a lift took its folder
/// away writes into the one in place now.
pub fn write_setting(root: &StateRoot, name: &str, contents: &[u8]) -> crate::error::Result<()> {
    use feather_core::error::IoContext;
    let Some((folder, _settings)) = settings_held(root, IfMissing::Make)? else {
        // Made where missing: None in name only.
        return Err(std::io::Error::from(std::io::ErrorKind::NotFound)).at(dir(root))?;
    };
    let durability = feather_core::atomic::Durability::Durable;
    Ok(write_in(root, &folder, name, contents, durability)?)
}

/// The pool's folder in place, opened and held locked as a [`fence`]'s owner holds its own,
/// so that no lifter of a stale fence takes it away while `network down` writes in it
/// ([`crate::pool::emptied_while`]); None where there is none. The lock is waited for at most
/// [`FOLDER_PATIENCE`] (a lifter holds it for milliseconds, another `network down` until its
/// network is down), then an error names its holder; a folder taken aside meanwhile is let go
/// and the one now in place taken. What the holder writes in it goes through this descriptor
/// (a second open of the folder is another open file description, whose `flock` this one's
/// would keep out: the same process would wait for itself).
pub fn hold_dir(root: &StateRoot) -> crate::error::Result<Option<Flock<std::fs::File>>> {
    let deadline = Deadline::after(FOLDER_PATIENCE);
    let held = pool_locks::in_place_locked(
        &dir(root),
        IfMissing::Leave,
        deadline,
        |folder, deadline| {
            // The same open file description as `folder`: its flock is this one's.
            let same = folder
                .try_clone()
                .map_err(crate::error::io(&dir(root).display(), "opening it again"))?;
            pool_locks::lock_within(same, &dir(root), deadline)
        },
    )?;
    Ok(held.map(|(_, held)| held))
}

/// Fences the pool's `folder`, held locked ([`hold_dir`]) by `network down`: its size setting
/// kept aside ([`SIZE_PUT_BACK`]; none: none kept), then the fence's size written in its
/// place, so that a `network down` killed before [`unfence_held`] leaves a fence whose owner is
/// gone (not a 0 that reads as the admin's own), which the next reader of the size lifts,
/// putting the setting back ([`lift`]). The setting to put back: a fence's size found there is
/// a stale fence's, whose setting is the one it kept aside (or none).
pub fn fence_held(
    root: &StateRoot,
    folder: &std::fs::File,
) -> feather_core::error::Result<Option<String>> {
    use feather_core::atomic::Durability;
    let mut setting = read_small(&in_folder(folder, SIZE));
    if setting.as_deref() == Some(FENCES_SIZE) {
        setting = read_small(&in_folder(folder, SIZE_PUT_BACK));
    }
    match &setting {
        Some(setting) => write_in(
            root,
            folder,
            SIZE_PUT_BACK,
            setting.as_bytes(),
            Durability::Durable,
        )?,
        None => remove_in(root, folder, SIZE_PUT_BACK)?,
    }
    write_in(
        root,
        folder,
        SIZE,
        FENCES_SIZE.as_bytes(),
        Durability::Durable,
    )?;
    Ok(setting)
}

/// Puts `setting` back as the size of the pool's `folder` that [`fence_held`] fenced (None:
/// no size), then lets go of what it kept aside.
pub fn unfence_held(
    root: &StateRoot,
    folder: &std::fs::File,
    setting: Option<String>,
) -> feather_core::error::Result<()> {
    use feather_core::atomic::Durability;
    match setting {
        Some(setting) => write_in(root, folder, SIZE, setting.as_bytes(), Durability::Durable)?,
        None => remove_in(root, folder, SIZE)?,
    }
    remove_in(root, folder, SIZE_PUT_BACK)
}

/// Removes file `name` of the pool's opened `folder`, if there; an error names it by the
/// root's path.
fn remove_in(
    root: &StateRoot,
    folder: &std::fs::File,
    name: &str,
) -> feather_core::error::Result<()> {
    use feather_core::error::IoContext;
    match std::fs::remove_file(in_folder(folder, name)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).at(dir(root).join(name)),
        _ => Ok(()),
    }
}

/// The size setting [`fence_held`] keeps aside while `network down` has the fence's size in
/// an existing pool's folder.
const SIZE_PUT_BACK: &str = "size.put-back";

/// Takes this process's [`fence`] away once the network is down. Where its settings lock
/// cannot be had in time, the fence is left; its lock goes as this process ends, and the next
/// command that reads the size lifts it then.
pub fn lift_fence(root: &StateRoot, fence: Fence) {
    match lock_settings(root, &fence.0, Deadline::after(SETTINGS_PATIENCE)) {
        Ok(settings) => {
            lift(root, &fence.0, &settings);
        }
        Err(e) => eprintln!(
            "feather: warning: the pool's fence (size 0) is left in place ({e}); the next \
             command that reads the pool's size lifts it"
        ),
    }
}

/// The size setting once a fence is past, read (under the settings lock, through the pool's
/// folder in place) where the one read by path was a fence's: lifted here if its `network
/// down` is gone (its folder's lock is free), or by another lifter meanwhile (this reads what
/// it left: two lifters agree), or a `pool --size` written since; the fence's `0 ` where its
/// `network down` still runs, or where the settings lock could not be had in time (its holder
/// stopped, or stuck).
fn setting_past_a_stale_fence(root: &StateRoot) -> Option<String> {
    let standing = Some(FENCES_SIZE.to_owned());
    let (folder, settings) = match settings_held(root, IfMissing::Leave) {
        Ok(Some(held)) => held,
        // Lifted and taken away: no pool's folder, the default.
        Ok(None) => return None,
        Err(_) => return standing,
    };
    let setting = read_small(&in_folder(&folder, SIZE));
    if setting.as_deref() != Some(FENCES_SIZE) {
        return setting;
    }
    // The same open file description: `folder` holds no lock of its own to wait for. Held:
    // its `network down` runs.
    let Ok(Ok(held)) = folder
        .try_clone()
        .map(|same| Flock::lock(same, FlockArg::LockExclusiveNonblock))
    else {
        return standing;
    };
    // A fence whose size cannot be removed (a read-only disk) reads as one standing.
    if !lift(root, &held, &settings) {
        return standing;
    }
    drop((held, settings));
    sweep_fence_leftovers(root);
    // What is in place once the fence is gone: no folder or no size (the default), or what a
    // starter or a `pool --size` made since.
    read_small(&dir(root).join(SIZE))
}

/// Takes the fence in the pool's opened `folder` away, holding the folder's lock (no other
/// lifter, no `network down` is at work in it) and its `settings` lock (no setting is written
/// meanwhile): the size, read again through the folder, only if it is still the fence's (a
/// size set meanwhile, `pool --size 3` during `network down`, is the admin's: kept, and the
/// folder with it), replaced by the setting a killed `network down` of a pool's existing
/// folder kept aside ([`fence_held`]) where there is one (one that cannot be renamed is said,
/// naming it); then the whole folder where nothing else came into it (so that a starter finds
/// none and makes its own), else the rest kept (a fill started meanwhile is over: the
/// generation). Killed after the size's removal, it leaves a folder without a size (the
/// default, as before the fence); after the folder's move aside, a `.pool-fence-<pid>` folder
/// holding no setting, which the next fence, lift or fill removes ([`sweep_fence_leftovers`]).
/// Whether the fence's size is gone.
fn lift(root: &StateRoot, folder: &std::fs::File, _settings: &Flock<std::fs::File>) -> bool {
    let size = in_folder(folder, SIZE);
    if read_small(&size).as_deref() != Some(FENCES_SIZE) {
        return true;
    }
    // A setting a killed `network down` kept aside ([`fence_held`]) goes back in place, in
    // one rename; else the size goes, as before the fence.
    let kept = in_folder(folder, SIZE_PUT_BACK);
    let unfenced = match std::fs::rename(&kept, &size) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::remove_file(&size),
        renamed => renamed,
    };
    if let Err(e) = unfenced {
        // Said, not kept silent: the pool stays off (its size read as 0) until this is fixed.
        eprintln!(
            "feather: warning: the pool's size stays 0, a killed `network down`'s fence: {} \
             cannot be put back as {} ({e}); remove whatever is in the way (the setting it \
             kept is a plain file), or set the size (`feather pool --size N`)",
            dir(root).join(SIZE_PUT_BACK).display(),
            dir(root).join(SIZE).display()
        );
        return false;
    }
    let aside = fence_aside(root);
    // The folder is the one in place: only a lifter moves it, and this one holds its lock.
    if !holds_only_the_fences_own(&in_folder(folder, ""))
        || std::fs::rename(dir(root), &aside).is_err()
    {
        return true;
    }
    // A fill's folders or lock made between the look and the rename: put back, unless a
    // starter made another folder meanwhile.
    if !holds_only_the_fences_own(&aside) {
        put_back(&aside, &dir(root));
    }
    let _ = std::fs::remove_dir_all(&aside);
    true
}

/// Whether the pool's `folder` holds nothing but what a fence's folder holds once its size is
/// taken: its generation, and the settings lock.
fn holds_only_the_fences_own(folder: &Path) -> bool {
    std::fs::read_dir(folder).is_ok_and(|entries| {
        entries
            .flatten()
            .all(|entry| entry.file_name() == GENERATION || entry.file_name() == SETTINGS_LOCK)
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

/// Removes the `.pool-fence-<pid>` folders in the root whose process is gone (and whose lock
/// is free): what a `network down` killed before its fence was in place, or a lift killed
/// after it took a fence's folder aside, left. They hold no setting (a fence's size 0 and
/// generation at most). Run by each fence and lift, and as a fill starts
/// ([`crate::pool::fill_detached`]).
pub fn sweep_fence_leftovers(root: &StateRoot) {
    let Ok(entries) = std::fs::read_dir(root.dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|name| name.strip_prefix(FENCE_ASIDE))
            .and_then(|pid| pid.parse::<i32>().ok());
        let Some(pid) = pid else { continue };
        if feather_sys::process::is_alive(nix::unistd::Pid::from_raw(pid)) {
            continue;
        }
        let path = entry.path();
        if let Ok(_unused) = pool_locks::locked(&path) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// The size a [`fence`] writes: read as 0, told apart from a `pool --size 0` set meanwhile.
const FENCES_SIZE: &str = "0 \n";

/// The name, up to its pid, of the folder a [`fence`] is made in and a lift moves it to.
const FENCE_ASIDE: &str = ".pool-fence-";

/// Where a [`fence`] is made, and put when lifted: a name of this process's in the root.
fn fence_aside(root: &StateRoot) -> PathBuf {
    root.dir()
        .join(format!("{FENCE_ASIDE}{}", std::process::id()))
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

    /// A root whose fence's `network down` was killed (its lock freed, as the kernel does at
    /// a death).
    fn a_stale_fence(label: &str) -> (feather_testkit::ScratchDir, StateRoot) {
        let dir = feather_testkit::ScratchDir::new(label);
        let root = StateRoot::new(Some(dir.0.clone()));
        let fence = fence(&root)
            .unwrap()
            .expect("a root without a pool is fenced");
        drop(fence);
        (dir, root)
    }

    /// How long a test waits for what it started to be seen, or to end.
    const LIMIT: Duration = Duration::from_secs(30);

    /// How many of this process's descriptors are open on file `path`.
    fn opened_on(path: &Path) -> usize {
        let fds = std::fs::read_dir("/proc/self/fd").unwrap().flatten();
        fds.filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|to| to == path))
            .count()
    }

    /// Runs `waiter` on a thread while this lifts the stale fence of `root`: holding its
    /// settings lock from before the waiter opens it (seen as a second descriptor on it) until
    /// the lift and `after_lift` are done. What the waiter gave. The lock goes with this
    /// scope's closure, failing test or not, so the waiter ends before the scope is left.
    fn lifted_while_waiting<T: Send>(
        root: &StateRoot,
        waiter: impl FnOnce() -> T + Send,
        after_lift: impl FnOnce(),
    ) -> T {
        let lock_file = dir(root).join(SETTINGS_LOCK);
        let folder = open_dir(root).unwrap();
        let deadline = Deadline::after(SETTINGS_PATIENCE);
        let settings = lock_settings(root, &folder, deadline).unwrap();
        std::thread::scope(|scope| {
            let settings = settings;
            let waiter = scope.spawn(waiter);
            let waiting = || opened_on(&lock_file) >= 2;
            let opened = feather_testkit::eventually(LIMIT, waiting);
            assert!(opened, "the waiter opened the settings lock");
            let held = pool_locks::locked(&dir(root)).unwrap();
            assert!(lift(root, &held, &settings), "the first lift");
            after_lift();
            drop((held, settings));
            waiter.join().unwrap()
        })
    }

    /// A lifter of a stale fence that waited for the settings lock while another lifted the
    /// fence and took its folder away reads what the lift left: no folder, the default size; a
    /// folder made since with a size (`pool --size 3`), that size. Before, it kept the fence's
    /// 0 (a keeper skipped its refill once), or read the folder taken away.
    #[test]
    fn a_lifter_that_waited_for_another_reads_what_it_left() {
        for set in [None, Some(3)] {
            let (_scratch, root) = a_stale_fence("fence-second-lifter");
            let read = lifted_while_waiting(
                &root,
                || setting_past_a_stale_fence(&root),
                || {
                    if let Some(set) = set {
                        std::fs::create_dir(dir(&root)).unwrap();
                        write_count(&dir(&root).join(SIZE), set).unwrap();
                    }
                },
            );
            let expected = set.map(|set| format!("{set}\n"));
            assert_eq!(read, expected, "the second lifter, a size set: {set:?}");
        }
    }

    /// `pool --size 3` while a lift holds the settings lock waits for it, and writes into the
    /// pool's folder in place once the lift took the fence's away: the size is kept. Without
    /// the lock it wrote into the fence's folder (which a lift then could take away with it).
    #[test]
    fn a_size_set_while_a_lift_holds_the_settings_lock_lands_after_it() {
        let (_scratch, root) = a_stale_fence("fence-size-during-lift");
        let set = lifted_while_waiting(&root, || crate::pool::set_size(&root, 3), || ());
        set.unwrap();
        assert_eq!(read_small(&dir(&root).join(SIZE)).as_deref(), Some("3\n"));
        assert_eq!(size(&root), 3);
    }

    /// A lifter whose look at a stale fence came before a `pool --size 3` reads the size again
    /// through the folder it locked, and keeps it: neither removed nor moved aside (where a
    /// lifter killed then lost it for good).
    #[test]
    fn a_size_set_after_a_lifters_look_is_kept_by_its_lift() {
        for set in [3, 0] {
            let (dir, root) = a_stale_fence("fence-look-then-size");
            crate::pool::set_size(&root, set).unwrap();
            let past = setting_past_a_stale_fence(&root);
            let expected = Some(format!("{set}\n"));
            assert_eq!(past, expected, "what the lifter reads");
            let setting = read_small(&dir.0.join("pool").join(SIZE));
            assert_eq!(setting, expected, "pool --size {set} after the lift");
            let entries = std::fs::read_dir(dir.0.join("pool")).unwrap().flatten();
            let names: Vec<_> = entries.map(|entry| entry.file_name()).collect();
            assert!(
                !names
                    .iter()
                    .any(|name| name.to_string_lossy().starts_with('.')),
                "left in the pool's folder: {names:?}"
            );
        }
    }

    /// `network down` of a root whose pool has its folder (here a stale fence's) holds it
    /// locked while it writes in it: a lifter whose look came before network down's own 0
    /// (here written back as the fence's) lifts nothing under it, and network down ends well
    /// (before, the lifter removed the size and network down failed putting it back), with the
    /// stale fence's size put back as absent. It returns within its deadline: a second open of
    /// the folder it holds, locked, waited for this same process for good (a thread stuck so
    /// cannot be ended: it goes with the test's process, one per test under nextest).
    #[test]
    fn a_pools_folder_network_down_holds_is_not_lifted_under_it() {
        let (dir, root) = a_stale_fence("fence-held");
        let (told, ended) = std::sync::mpsc::channel();
        let down = root.clone();
        std::thread::spawn(move || {
            let seen = crate::pool::emptied_while(&down, || {
                let size = super::dir(&down).join(SIZE);
                let fences = FENCES_SIZE.as_bytes();
                let volatile = feather_core::atomic::Durability::Volatile;
                feather_core::atomic::write_atomic(&size, fences, volatile).unwrap();
                setting_past_a_stale_fence(&down)
            });
            let _ = told.send(seen.map(|(_, _, lifted)| lifted).map_err(|e| e.to_string()));
        });
        let seen = ended
            .recv_timeout(Duration::from_secs(120))
            .expect("network down (emptied_while) ended within 120 s");
        let fences = Some(FENCES_SIZE.to_owned());
        assert_eq!(seen, Ok(fences), "the lifter read the fence standing");
        assert!(dir.0.join("pool").is_dir(), "the pool's folder is kept");
        assert_eq!(read_small(&dir.0.join("pool").join(SIZE)), None);
        assert_eq!(size(&root), DEFAULT_SIZE);
    }

    /// `network down` of a pool whose fill holds `fill.lock` stopped (Ctrl-Z on `pool --fill`)
    /// fails at once, naming the lock and how to let the fill go on, and puts the size back;
    /// before, it waited for good, holding the pool's folder (every later `network down` then
    /// named it, not the stopped fill).
    #[test]
    fn network_down_behind_a_stopped_fill_fails_naming_it() {
        let scratch = feather_testkit::ScratchDir::new("fence-fill-stopped");
        let root = StateRoot::new(Some(scratch.0.clone()));
        crate::pool::set_size(&root, 3).unwrap();
        let lock = dir(&root).join(FILL_LOCK);
        std::fs::write(&lock, b"").unwrap();
        let fill = feather_testkit::flock_holder::FlockHolder::of(&lock).stopped();
        let pid = fill.pid();
        let (told, ended) = std::sync::mpsc::channel();
        let down = root.clone();
        std::thread::spawn(move || {
            let seen = crate::pool::emptied_while(&down, || ());
            let _ = told.send(seen.map(|_| ()).map_err(|e| e.to_string()));
        });
        let seen = ended.recv_timeout(LIMIT);
        // Killed: a wait with no bound takes the lock then, and its thread ends.
        drop(fill);
        let seen = seen.expect("network down (emptied_while) ended within 30 s");
        let error = seen.expect_err("no fill lock taken from a stopped fill");
        assert!(error.contains("fill.lock"), "{error}");
        assert!(error.contains(&format!("kill -CONT {pid}")), "{error}");
        let setting = read_small(&dir(&root).join(SIZE));
        assert_eq!(setting.as_deref(), Some("3\n"), "the size put back");
    }

    /// The folders killed `network down`s and lifts leave in the root (`.pool-fence-PID`,
    /// holding a fence's generation) are removed by the next fence or lift once their
    /// process is gone; one whose process runs is its own, kept. Before, they stayed for good.
    #[test]
    fn a_fence_folder_left_by_a_dead_process_is_removed_and_a_live_ones_kept() {
        // Unreaped (a zombie, dead to `is_alive`) until the end: its pid is no one else's.
        let mut ended = std::process::Command::new("true").spawn().unwrap();
        let zombie = nix::unistd::Pid::from_raw(ended.id() as i32);
        let a_zombie = || feather_sys::process::state(zombie) == Some('Z');
        assert!(feather_testkit::eventually(LIMIT, a_zombie), "true ended");
        let live = feather_testkit::Started::spawn("sleep", &["60"]);
        for lifted in [false, true] {
            let (dir, root) = a_stale_fence("fence-leftovers");
            let left = |pid: u32| dir.0.join(format!("{FENCE_ASIDE}{pid}"));
            for pid in [ended.id(), live.0.id()] {
                std::fs::create_dir(left(pid)).unwrap();
                write_count(&left(pid).join(GENERATION), 1).unwrap();
            }
            if lifted {
                assert_eq!(size(&root), DEFAULT_SIZE);
            } else {
                let fence = fence(&root).unwrap();
                assert!(fence.is_none(), "the stale fence's folder is there");
            }
            assert!(!left(ended.id()).exists(), "a dead process's is removed");
            assert!(left(live.0.id()).exists(), "a live process's is kept");
        }
        ended.wait().unwrap();
    }

    /// `network down` where no fence can be written (here a file stands where it is made)
    /// and no pool's folder is there takes the network down unfenced, as said: before, it
    /// failed on the missing folder and left the network up.
    #[test]
    fn network_down_goes_on_unfenced_where_no_fence_can_be_written() {
        let dir = feather_testkit::ScratchDir::new("fence-unwritable");
        let root = StateRoot::new(Some(dir.0.clone()));
        std::fs::write(fence_aside(&root), b"in the way").unwrap();
        let seen = crate::pool::emptied_while(&root, || "the network went");
        let (pooled, _, given) = seen.unwrap();
        assert_eq!((pooled, given), (0, "the network went"));
        assert!(!dir.0.join("pool").exists(), "no pool's folder made");
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
