//! systemd generators, run for a VM as systemd runs them at boot: the small programs packages
//! install in `system-generators/` that write units, drop-ins and `.wants/` links into three
//! output folders before units are loaded. Debian's `postgresql` and `postfix` need them: their
//! umbrella units (`postgresql.service`, `postfix.service`) run `/bin/true`, and only the
//! generators' `.wants/` links pull in the real daemons (`postgresql@15-main.service`,
//! `postfix@-.service`).
//!
//! As systemd (systemd.generator(7)): every generator of the search path (a file hides one of
//! the same name further down; one linked to `/dev/null` or empty is masked) gets the normal,
//! early and late folders as its three arguments and `SYSTEMD_SCOPE`, `SYSTEMD_IN_INITRD`,
//! `SYSTEMD_VIRTUALIZATION`, `SYSTEMD_ARCHITECTURE` in its environment; all run at once, within
//! one time budget; the folders are emptied first. Those that only concern the host's boot,
//! disks and consoles are not run ([`skip_reason`]); a generator that fails or overruns is
//! reported by name and the others' output is still used.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Where the system manager's generators are, highest precedence first.
pub const SEARCH_PATH: [&str; 5] = [
    "/run/systemd/system-generators",
    "/etc/systemd/system-generators",
    "/usr/local/lib/systemd/system-generators",
    "/lib/systemd/system-generators",
    "/usr/lib/systemd/system-generators",
];

/// The output folders, as systemd names them: normal, early (before `/etc`), late (after
/// `/usr/lib`). They are part of the unit search path ([`crate::paths::SEARCH_PATH`]).
pub const NORMAL_DIR: &str = "/run/systemd/generator";
pub const EARLY_DIR: &str = "/run/systemd/generator.early";
pub const LATE_DIR: &str = "/run/systemd/generator.late";

/// How long all generators together may take. systemd allows 90 s at boot; generators are
/// meant to be quick (they only write files), and a VM's first service start waits on them.
pub const BUDGET: Duration = Duration::from_secs(5);

/// How often running generators are looked at.
const POLL: Duration = Duration::from_millis(5);

/// systemd's own generators that are not run in a VM, and why. Any other `systemd-*` one is not
/// run either ([`OTHER_SYSTEMD`]); generators of other packages run.
pub const NOT_RUN: &[(&str, &str)] = &[
    (
        "systemd-sysv-generator",
        "feather reads /etc/init.d itself, with the same rules (crates/feather-svc/src/sysv.rs)",
    ),
    (
        "systemd-fstab-generator",
        "the host's /etc/fstab: a VM's filesystems are assembled by feather",
    ),
    (
        "systemd-cryptsetup-generator",
        "the host's encrypted disks (/etc/crypttab)",
    ),
    (
        "systemd-integritysetup-generator",
        "the host's disks (/etc/integritytab)",
    ),
    (
        "systemd-veritysetup-generator",
        "the host's disks (/etc/veritytab, the kernel command line)",
    ),
    ("systemd-gpt-auto-generator", "the host's disk partitions"),
    (
        "systemd-hibernate-resume-generator",
        "the host's hibernation",
    ),
    (
        "systemd-getty-generator",
        "consoles and gettys: `feather exec -t` gives a terminal in a VM",
    ),
    (
        "systemd-debug-generator",
        "the host's kernel command line (systemd.mask=, systemd.wants=, debug shell)",
    ),
    (
        "systemd-run-generator",
        "the host's kernel command line (systemd.run=)",
    ),
    (
        "systemd-system-update-generator",
        "the host's offline updates (/system-update)",
    ),
    ("systemd-bless-boot-generator", "the host's boot loader"),
    (
        "systemd-rc-local-generator",
        "the host's /etc/rc.local is part of its own boot, not of a service",
    ),
];

/// Why any other of systemd's own generators is not run.
pub const OTHER_SYSTEMD: &str =
    "a generator of systemd itself: the host's boot, disks or kernel command line";

/// Why a generator of the search path is not run in a VM, or `None` if it runs.
pub fn skip_reason(name: &str) -> Option<&'static str> {
    if let Some((_, why)) = NOT_RUN.iter().find(|(n, _)| *n == name) {
        return Some(why);
    }
    name.starts_with("systemd-").then_some(OTHER_SYSTEMD)
}

/// One generator of the search path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generator {
    pub name: String,
    pub path: PathBuf,
}

/// What became of one generator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It exited with 0.
    Ran,
    /// Not run in a VM: why.
    NotRun(&'static str),
    /// It could not be started.
    CouldNotStart(String),
    /// It exited with a status other than 0, or was killed by a signal.
    Failed(String),
    /// It was still running when the budget ran out, and was killed.
    TimedOut(Duration),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Ran => write!(f, "ran"),
            Outcome::NotRun(why) => write!(f, "not run in a VM: {why}"),
            Outcome::CouldNotStart(why) => write!(f, "failed: could not start it: {why}"),
            Outcome::Failed(how) => write!(f, "failed: {how}; its output is used as far as it got"),
            Outcome::TimedOut(after) => write!(
                f,
                "failed: still running after {:.1}s, killed; its output is used as far as it got",
                after.as_secs_f64()
            ),
        }
    }
}

/// The generators below `root` in search-path order, by name, without the masked ones.
pub fn find(root: &Path) -> Vec<Generator> {
    let mut found: Vec<Generator> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for dir in SEARCH_PATH {
        let Ok(entries) = fs::read_dir(crate::paths::inside(root, dir)) else {
            continue;
        };
        let mut here: Vec<(String, PathBuf)> = entries
            .flatten()
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect();
        here.sort();
        for (name, path) in here {
            // The first of a name (in the directory of highest precedence) hides the others,
            // also when it masks them.
            if !seen.insert(name.clone()) {
                continue;
            }
            let masked = fs::read_link(&path).is_ok_and(|t| t == Path::new("/dev/null"))
                || fs::metadata(&path).is_ok_and(|m| m.len() == 0);
            let executable = fs::metadata(&path)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if !masked && executable {
                found.push(Generator { name, path });
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// The environment systemd gives generators (systemd.generator(7)).
pub fn environment() -> Vec<(&'static str, String)> {
    vec![
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        ),
        ("SYSTEMD_SCOPE", "system".to_owned()),
        ("SYSTEMD_IN_INITRD", "0".to_owned()),
        // As systemd-detect-virt names a container it does not know.
        (
            "SYSTEMD_VIRTUALIZATION",
            "container:container-other".to_owned(),
        ),
        ("SYSTEMD_ARCHITECTURE", architecture().to_owned()),
        ("LANG", "C.UTF-8".to_owned()),
        ("container", "feather".to_owned()),
    ]
}

/// systemd's name of this machine's architecture.
fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86-64",
        "x86" => "x86",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64",
        "s390x" => "s390x",
        other => other,
    }
}

/// Empties and makes the three output folders below `root`.
fn prepare_outputs(root: &Path) -> io::Result<[PathBuf; 3]> {
    let dirs = [NORMAL_DIR, EARLY_DIR, LATE_DIR].map(|d| crate::paths::inside(root, d));
    for dir in &dirs {
        match fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fs::create_dir_all(dir)?;
    }
    Ok(dirs)
}

/// Runs the generators below `root` (the VM's `/`) within `budget`, their output going to
/// `log`; returns each with what became of it, in name order. `Err` only when the output
/// folders cannot be made (then none ran).
pub fn run(root: &Path, budget: Duration, log: &fs::File) -> io::Result<Vec<(Generator, Outcome)>> {
    let outputs = prepare_outputs(root)?;
    let mut results: Vec<(Generator, Outcome)> = Vec::new();
    let mut running: Vec<(Generator, Child)> = Vec::new();
    for generator in find(root) {
        if let Some(why) = skip_reason(&generator.name) {
            results.push((generator, Outcome::NotRun(why)));
            continue;
        }
        match spawn(&generator, &outputs, log) {
            Ok(child) => running.push((generator, child)),
            Err(e) => results.push((generator, Outcome::CouldNotStart(e.to_string()))),
        }
    }
    let deadline = Instant::now() + budget;
    while !running.is_empty() {
        let mut still = Vec::new();
        for (generator, mut child) in running {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => results.push((generator, Outcome::Ran)),
                Ok(Some(status)) => {
                    results.push((generator, Outcome::Failed(describe(status))));
                }
                Ok(None) if Instant::now() >= deadline => {
                    // Its own process group: whatever it started goes too.
                    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                    let _ = child.wait();
                    results.push((generator, Outcome::TimedOut(budget)));
                }
                Ok(None) => still.push((generator, child)),
                Err(e) => results.push((generator, Outcome::Failed(e.to_string()))),
            }
        }
        running = still;
        if !running.is_empty() {
            std::thread::sleep(POLL);
        }
    }
    results.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    Ok(results)
}

fn spawn(generator: &Generator, outputs: &[PathBuf; 3], log: &fs::File) -> io::Result<Child> {
    let mut command = Command::new(&generator.path);
    command
        .args(outputs)
        .env_clear()
        .envs(environment())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        .process_group(0);
    command.spawn()
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tree(PathBuf);

    impl Tree {
        fn new(tag: &str) -> Tree {
            let dir = std::env::temp_dir()
                .join(format!("feather-generators-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Tree(dir)
        }

        fn generator(&self, dir: &str, name: &str, script: &str) {
            let dir = crate::paths::inside(&self.0, dir);
            fs::create_dir_all(&dir).unwrap();
            let path = dir.join(name);
            fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }

        fn log(&self) -> fs::File {
            fs::File::create(self.0.join("generators.log")).unwrap()
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn systemd_own_generators_for_the_host_are_not_run_and_say_why() {
        assert!(skip_reason("systemd-fstab-generator").is_some_and(|w| w.contains("fstab")));
        assert!(skip_reason("systemd-sysv-generator").is_some_and(|w| w.contains("init.d")));
        assert_eq!(skip_reason("systemd-new-generator"), Some(OTHER_SYSTEMD));
        assert_eq!(skip_reason("postgresql-generator"), None);
        assert_eq!(skip_reason("postfix-instance-generator"), None);
    }

    #[test]
    fn a_generator_hides_one_of_its_name_further_down_and_masks_count() {
        let tree = Tree::new("hide");
        tree.generator("/etc/systemd/system-generators", "a", "exit 0");
        tree.generator("/usr/lib/systemd/system-generators", "a", "exit 1");
        tree.generator("/usr/lib/systemd/system-generators", "b", "exit 0");
        tree.generator("/usr/lib/systemd/system-generators", "c", "exit 0");
        let etc = crate::paths::inside(&tree.0, "/etc/systemd/system-generators");
        std::os::unix::fs::symlink("/dev/null", etc.join("c")).unwrap();
        let found = find(&tree.0);
        let names: Vec<(&str, bool)> = found
            .iter()
            .map(|g| (g.name.as_str(), g.path.starts_with(&etc)))
            .collect();
        assert_eq!(names, [("a", true), ("b", false)]);
    }

    #[test]
    fn generators_get_three_folders_and_systemds_environment_and_their_output_stays() {
        let tree = Tree::new("args");
        tree.generator(
            "/usr/lib/systemd/system-generators",
            "writer",
            "echo \"$1 $2 $3\" > \"$1/args\"; env > \"$2/env\"; mkdir -p \"$1/x.service.wants\"",
        );
        let results = run(&tree.0, BUDGET, &tree.log()).unwrap();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].1, Outcome::Ran);
        let normal = crate::paths::inside(&tree.0, NORMAL_DIR);
        let early = crate::paths::inside(&tree.0, EARLY_DIR);
        let late = crate::paths::inside(&tree.0, LATE_DIR);
        let args = fs::read_to_string(normal.join("args")).unwrap();
        assert_eq!(
            args.trim(),
            format!(
                "{} {} {}",
                normal.display(),
                early.display(),
                late.display()
            )
        );
        let env = fs::read_to_string(early.join("env")).unwrap();
        for line in [
            "SYSTEMD_SCOPE=system",
            "SYSTEMD_IN_INITRD=0",
            "SYSTEMD_VIRTUALIZATION=container:",
        ] {
            assert!(env.contains(line), "{line} missing in {env}");
        }
        assert!(normal.join("x.service.wants").is_dir());
    }

    #[test]
    fn a_failing_and_a_hanging_generator_are_named_and_the_others_still_run() {
        let tree = Tree::new("bad");
        let dir = "/etc/systemd/system-generators";
        tree.generator(dir, "fails", "exit 3");
        tree.generator(dir, "hangs", "touch \"$1/hangs-began\"; sleep 100");
        tree.generator(dir, "works", "touch \"$1/works\"");
        tree.generator(dir, "systemd-fstab-generator", "touch \"$1/fstab\"");
        // Left from an earlier run: the folders start empty.
        let normal = crate::paths::inside(&tree.0, NORMAL_DIR);
        fs::create_dir_all(&normal).unwrap();
        fs::write(normal.join("stale"), "").unwrap();
        let started = Instant::now();
        let results = run(&tree.0, Duration::from_millis(500), &tree.log()).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the budget bounds the run"
        );
        let outcomes: Vec<(&str, &Outcome)> =
            results.iter().map(|(g, o)| (g.name.as_str(), o)).collect();
        assert_eq!(
            outcomes,
            [
                ("fails", &Outcome::Failed("exited with status 3".into())),
                ("hangs", &Outcome::TimedOut(Duration::from_millis(500))),
                (
                    "systemd-fstab-generator",
                    &Outcome::NotRun(skip_reason("systemd-fstab-generator").unwrap())
                ),
                ("works", &Outcome::Ran),
            ]
        );
        assert!(normal.join("works").exists());
        assert!(normal.join("hangs-began").exists());
        assert!(!normal.join("fstab").exists());
        assert!(!normal.join("stale").exists());
    }
}
