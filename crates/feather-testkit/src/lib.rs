//! What feather's integration test crates share, so that each is written once: a scratch
//! folder of a test's own ([`unique_dir`]), the outcome of a command ([`Outcome`], [`run`]),
//! waiting for a condition ([`eventually`]), a disk of the host ([`a_disk`]), a process killed
//! when the test ends ([`Started`]), a tmpfs unmounted when the test ends ([`TmpfsMount`]),
//! and CRIU's images
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
pub mod protobuf;

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
