//! What feather's integration test crates share, so that each is written once: a scratch
//! folder of a test's own ([`unique_dir`]) and whether its test has ended
//! ([`made_by_an_ended_test`]), the outcome of a command ([`Outcome`], [`run`]),
//! waiting for a condition ([`eventually`]), a disk of the host ([`a_disk`]), a process killed
//! when the test ends ([`Started`]), a tmpfs unmounted when the test ends ([`TmpfsMount`]), a
//! mount namespace of a test's own ([`own_mount_namespace`]), a process a forged record names
//! ([`Stranger`]), a process holding a file's flock, running or stopped
//! ([`flock_holder::FlockHolder`]), a process's stat line ([`stat::Stat`]), and CRIU's images
//! rewritten as a crafted checkpoint would have them ([`criu_image`], over protobuf's wire format: [`protobuf`]).
//!
//! It is a dev-dependency only: of `feather` (whose test crates are tests/functional,
//! tests/security and tests/web), `feather-oci` (tests/oci and its unit tests) and the other
//! crates' unit tests (their scratch folders are [`ScratchDir`]s). Product code never depends on
//! it, which is why feather-migrate's `mount_images` reads CRIU's mount images with a reader
//! of its own: that one judges an image from a checkpoint or a sender, so it is bounded
//! (`MAX_IMAGE`), decodes only `MntEntry`, and returns errors; the walkers here rewrite images
//! a test has just dumped, keep every field (also those no decoder knows), and panic on what
//! they do not expect.

pub mod criu_image;
pub mod flock_holder;
pub mod protobuf;
pub mod stat;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The folder every test's scratch folders lie in.
pub const TESTS_DIR: &str = "/tmp/feather-tests";

/// How many folders [`unique_dir`] has made in this test process.
static MADE: AtomicUsize = AtomicUsize::new(0);

/// A new, empty folder of its own under [`TESTS_DIR`], named `<kind>-<label>-<pid>-<n>` after
/// the test process that made it (a later run can tell a folder of an ended process by its
/// pid); the caller removes it.
pub fn unique_dir(kind: &str, label: &str) -> PathBuf {
    let n = MADE.fetch_add(1, Ordering::SeqCst);
    let dir = tests_dir().join(format!("{kind}-{label}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o755);
    dir
}

/// The pid of the test process that made the folder `name` of [`TESTS_DIR`] ([`unique_dir`]:
/// `<kind>-<label>-<pid>-<n>`), None for a name [`unique_dir`] does not give.
pub fn maker_of(name: &str) -> Option<u32> {
    let mut parts = name.rsplitn(3, '-');
    let (n, pid, kind_and_label) = (parts.next()?, parts.next()?, parts.next()?);
    let made = n.parse::<usize>().is_ok() && kind_and_label.contains('-');
    made.then(|| pid.parse().ok()).flatten()
}

/// Whether `path` lies in a folder of [`TESTS_DIR`] whose test process has ended (no process
/// has its pid now): a test killed (nextest's timeout sends SIGKILL) never ran its drops. A
/// live test's folder, or one of a pid reused since, is never said to be.
pub fn made_by_an_ended_test(path: &Path) -> bool {
    let Ok(inside) = path.strip_prefix(TESTS_DIR) else {
        return false;
    };
    let Some(std::path::Component::Normal(name)) = inside.components().next() else {
        return false;
    };
    name.to_str()
        .and_then(maker_of)
        .is_some_and(|pid| !process_exists(pid))
}

/// Whether a process `pid` exists now (of this pid namespace).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A scratch folder of a test's own ([`unique_dir`]), removed when dropped, also when the test
/// fails.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(label: &str) -> ScratchDir {
        ScratchDir(unique_dir("scratch", label))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// [`TESTS_DIR`], made root's and 0755 whatever the umask: a test's state root lies in it, and
/// feather refuses a root under a folder others could change. One a user made (a run not as
/// root) fails every test at once, saying what to do.
fn tests_dir() -> &'static Path {
    static READY: std::sync::Once = std::sync::Once::new();
    let dir = Path::new(TESTS_DIR);
    READY.call_once(|| {
        match std::fs::create_dir(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                panic!("{TESTS_DIR}: {e}")
            }
            _ => {}
        }
        let meta = std::fs::symlink_metadata(dir).unwrap();
        assert!(
            meta.is_dir() && meta.uid() == 0,
            "{TESTS_DIR} is not a folder of root's (uid {}): state roots in it would be \
             refused; remove it (`sudo rm -rf {TESTS_DIR}`) and run the tests as root",
            meta.uid()
        );
        set_mode(dir, 0o755);
    });
    dir
}

fn set_mode(dir: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// "major:minor" of a disk of this host (not a loop device).
pub fn a_disk() -> String {
    std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with("loop"))
        .filter_map(|e| std::fs::read_to_string(e.path().join("dev")).ok())
        .map(|d| d.trim().to_owned())
        .next()
        .expect("a block device")
}

/// The result of one command: its exit code (-1 if a signal ended it) and its output as text.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Outcome {
    fn from(output: Output) -> Self {
        Outcome {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Runs `command` to its end, its stdin on /dev/null, and returns what it did; panics, naming
/// the command, if it could not be started.
pub fn run(command: &mut Command) -> Outcome {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"))
        .into()
}

/// [`run`], bounded: fails the test, the command killed (by its pid), if it has not ended
/// within `limit` (`what` says what was waited for).
pub fn run_within(command: &mut Command, limit: Duration, what: &str) -> Outcome {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    ended_within(child, limit, what)
}

/// What `child` said once it ended; fails the test, the child killed, if it has not ended
/// within `limit` (`what` says what was waited for). Its output is read as it comes, so that
/// a child saying more than a pipe holds is not stopped by it.
pub fn ended_within(mut child: Child, limit: Duration, what: &str) -> Outcome {
    let stdout = drained(child.stdout.take());
    let stderr = drained(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what}: still running after {limit:?}: {}",
                String::from_utf8_lossy(&said(&stderr))
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::process::Output {
        status,
        stdout: said(&stdout),
        stderr: said(&stderr),
    }
    .into()
}

/// Everything `pipe` says until its end, read on a thread of its own and handed over once read.
fn drained(pipe: Option<impl Read + Send + 'static>) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (hand_over, handed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut said = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut said);
        }
        let _ = hand_over.send(said);
    });
    handed
}

/// What a [`drained`] pipe said, once its writers have ended; if one of the child's own
/// children holds it open 30 s on, that is said instead of waiting on it.
fn said(drained: &std::sync::mpsc::Receiver<Vec<u8>>) -> Vec<u8> {
    drained
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| b"(its output still open 30 s after it ended)".to_vec())
}

/// How many descriptors of this process name `path` (as `/proc/self/fd` reads them): for a
/// test that waits for a thread of its own to have opened a file.
pub fn opens_of(path: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|to| to == path))
        .count()
}

/// Polls `check` every 20 ms until it holds (true) or `limit` passes (false).
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `program` with `args`, its stdio on /dev/null: for a program that leaves a process of its
/// own behind it (`unshare --fork --kill-child`: its child, killed by the kernel only after
/// it), which would otherwise hold the test's output open past the test's end (nextest: LEAK).
pub fn command_without_stdio(program: &str, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// How `child` ended; fails the test if it has not ended within `limit` (`what` says what was
/// waited for), the child left running for its owner's drop to end.
pub fn child_ended_within(
    child: &mut Child,
    limit: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still running after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A process a test started, killed and reaped when dropped, also when the test fails.
pub struct Started(pub std::process::Child);

impl Started {
    /// `program` with `args`, started with the test's stdio.
    pub fn spawn(program: &str, args: &[&str]) -> Started {
        Started(Command::new(program).args(args).spawn().unwrap())
    }

    /// How the process ended; fails the test if it has not ended within `limit` (`what`
    /// says what was waited for), the process then killed on drop.
    pub fn ended_within(&mut self, limit: Duration, what: &str) -> std::process::ExitStatus {
        child_ended_within(&mut self.0, limit, what)
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tmpfs (mode 0755) mounted at a folder for a test (made if missing), detached when dropped,
/// also when the test fails.
pub struct TmpfsMount(pub PathBuf);

impl TmpfsMount {
    pub fn at(at: &std::path::Path) -> TmpfsMount {
        std::fs::create_dir_all(at).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=0755", "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(mounted.success(), "mount a tmpfs at {}", at.display());
        TmpfsMount(at.to_path_buf())
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Gives the calling test's thread, and every command it starts from now on, a mount namespace
/// of its own, a slave of the host's (the host's mounts reach it, its own reach nobody): for a
/// mount no other test's VM may see, or a registry of roots of the test's own (a tmpfs over
/// the host's). Every VM over `/` copies the host's mounts, and one at a path that is not UTF-8
/// makes each such VM refuse a checkpoint. Mount namespaces are a thread's: the test harness's
/// other threads, and the tests in other processes, keep the host's.
pub fn own_mount_namespace() {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare a mount namespace");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .expect("make the test's mount namespace a slave of the host's");
}

/// A process of the test's own outside every VM and container (`sleep`, in a mount namespace
/// of its own: a mount made there by mistake reaches nothing else), for a forged record to
/// name as a VM's or a container's init. Killed by pid and reaped when dropped, also when the
/// test fails.
pub struct Stranger(Started);

impl Stranger {
    /// Started, and running `sleep` in its own mount namespace (waited for up to 60 s).
    pub fn start() -> Stranger {
        let stranger = Stranger(Started::spawn(
            "unshare",
            &["--mount", "--propagation", "private", "sleep", "600"],
        ));
        let pid = stranger.pid();
        let namespace = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
        let comm = || std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let ready = eventually(Duration::from_secs(60), || {
            namespace(&pid.to_string()) != namespace("self") && comm() == "sleep\n"
        });
        assert!(
            ready,
            "waited 60 s for unshare to run sleep in a mount namespace of its own"
        );
        stranger
    }

    /// Started, and running `sleep` in the caller's (its thread's) mount namespace: one a
    /// record names as an init outside a namespace of its own.
    pub fn in_our_namespace() -> Stranger {
        let stranger = Stranger(Started::spawn("sleep", &["600"]));
        let pid = stranger.pid();
        let ready = eventually(Duration::from_secs(60), || {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm == "sleep\n")
        });
        assert!(ready, "waited 60 s for sleep to run");
        stranger
    }

    pub fn pid(&self) -> u32 {
        self.0 .0.id()
    }

    /// The mount points of its mount namespace that are tmpfs.
    pub fn tmpfs_mounts(&self) -> Vec<String> {
        let table = std::fs::read_to_string(format!("/proc/{}/mountinfo", self.pid())).unwrap();
        table
            .lines()
            .filter(|line| line.contains(" - tmpfs "))
            .filter_map(|line| line.split(' ').nth(4).map(str::to_owned))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only what [`unique_dir`] names is a test's, and only a path inside [`TESTS_DIR`]: the
    /// tests forget the registry entries of ended tests by it, and never another's.
    #[test]
    fn a_folder_is_a_tests_only_as_unique_dir_names_it() {
        assert_eq!(maker_of("root-host-view-forged-init-4242-7"), Some(4242));
        assert_eq!(maker_of("scratch-x-17-0"), Some(17));
        for name in [
            "root-4242-7",
            "sweep.lock",
            "root-x-4242",
            "root-x-pid-0",
            "x-1-2",
        ] {
            assert_eq!(maker_of(name), None, "{name}");
        }
        let ours = Path::new(TESTS_DIR).join(format!("root-a-{}-0/vms", std::process::id()));
        assert!(!made_by_an_ended_test(&ours), "a live test's");
        // The highest pid there can be, plus one: no process has it.
        let ended = Path::new(TESTS_DIR).join("root-a-4194305-0");
        assert!(made_by_an_ended_test(&ended.join("inner")));
        assert!(!made_by_an_ended_test(Path::new(
            "/var/lib/root-a-4194305-0"
        )));
    }
}
