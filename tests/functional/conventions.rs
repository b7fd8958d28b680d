//! What a new user meets first: the README's examples run as written once the set-up ran, and
//! what the set-up put where a shell finds it (binaries, manual pages, completions) is this
//! build's, generated from the same command-line definitions.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::{Feather, LoneFeather, ScratchBase, ScratchDir, TestPort};

/// Where the README's set-up command installs feather (scripts/install-feather).
const PREFIX: &str = "/usr/local";

/// One `$ command` of the README's first console block and the output lines shown under it.
struct Example {
    command: String,
    shown: Vec<String>,
}

fn readme_examples() -> Vec<Example> {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
        .expect("README.md");
    let block = readme
        .split("```console\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README.md has a console block");
    let mut examples: Vec<Example> = Vec::new();
    for line in block.lines() {
        match line.strip_prefix("$ ") {
            Some(command) => examples.push(Example {
                command: command.to_owned(),
                shown: Vec::new(),
            }),
            None => examples
                .last_mut()
                .expect("the console block starts with a command")
                .shown
                .push(line.to_owned()),
        }
    }
    examples
}

fn words(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The README's console block, command by command, as a user types it after `sudo ./setup.sh`
/// — with three changes a test must make, each said where it is made: its own state root
/// (FEATHER_ROOT, which `sudo` would drop: the test is root already), `web1` over a scratch
/// base (its example commits, and a test never writes the host's /etc), and a free port for
/// `--publish`. Every command must succeed and print the output the README shows under it.
#[test]
fn the_readme_examples_run_as_written() {
    let feather = Feather::new("readme");
    let base = ScratchBase::new("readme");
    base.write("etc/motd", "the base's motd\n");
    base.add_host_program("/bin/bash");
    let project = ScratchDir::new("readme-project");
    fs::create_dir_all(&project.path).unwrap();
    fs::write(
        project.path.join("Makefile"),
        "test:\n\t@echo the tests of $(CURDIR) pass\n",
    )
    .unwrap();
    let port_held = TestPort::new();
    let port = port_held.port.to_string();
    let built = Path::new(Feather::bin()).parent().unwrap();
    let path = format!("{}:{}", built.display(), std::env::var("PATH").unwrap());

    let examples = readme_examples();
    assert!(examples.len() >= 10, "the README's console block");
    for example in &examples {
        let mut command = example.command.replace("sudo ", "");
        command = command.replace(
            "create web1",
            &format!("create web1 --base {}", base.as_str()),
        );
        command = command.replace("8082:", &format!("{port}:"));
        let interactive = command.contains(" -it ");
        let mut shell = if interactive {
            // `exec -it` wants a terminal: `script` gives it one, and types into its bash.
            let mut script = Command::new("script");
            script.args(["-qec", &command, "/dev/null"]);
            script
        } else {
            let mut sh = Command::new("sh");
            sh.args(["-c", &command]);
            sh
        };
        let mut child = shell
            .current_dir(&project.path)
            .env("FEATHER_ROOT", &feather.root)
            .env("PATH", &path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let typed = if interactive {
            "echo inside $(hostname); exit\n"
        } else {
            ""
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(typed.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "README example `{}` failed ({}): {}{stdout}",
            example.command,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let printed: Vec<String> = stdout.lines().map(words).collect();
        for shown in &example.shown {
            assert!(
                printed.contains(&words(shown)),
                "README example `{}` shows `{shown}`, it printed:\n{stdout}",
                example.command
            );
        }
        if interactive {
            assert!(stdout.contains("inside web1"), "{stdout}");
        }
        if command.starts_with("feather run --rm") {
            assert!(
                stdout.contains("pass"),
                "make ran in the caller's folder: {stdout}"
            );
        }
    }
    assert_eq!(
        base.read("etc/motd").as_deref(),
        Some("hi\n"),
        "the README's commit wrote the VM's /etc/motd into web1's base"
    );
}

/// `sudo ./setup.sh` installs the binaries where a shell finds them, and manual pages and
/// completions generated by this build: a stale or missing install (the set-up not run since
/// the command line changed) fails here.
#[test]
fn the_set_up_installs_this_builds_binaries_pages_and_completions() {
    let installed = Path::new(PREFIX).join("bin/feather");
    let found = Command::new("sh")
        .args(["-c", "command -v feather"])
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&found.stdout).trim(),
        installed.to_str().unwrap(),
        "feather is found on a root shell's PATH (run sudo ./setup.sh)"
    );
    for companion in [
        "feather-full",
        "feather-keeper",
        "feather-svcd",
        "feather-oci",
        "feather-open",
    ] {
        let path = Path::new(PREFIX).join("bin").join(companion);
        assert!(path.exists(), "{} is installed", path.display());
    }
    let help = |binary: &Path| {
        let output = Command::new(binary).arg("--help").output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(
        help(&installed),
        help(Path::new(Feather::bin())),
        "the installed feather is this build's (run sudo ./setup.sh)"
    );

    let pages = ScratchDir::new("man-pages");
    let made = Command::new(Feather::bin())
        .arg("man")
        .arg(&pages.path)
        .status()
        .unwrap();
    assert!(made.success());
    let mut names: Vec<_> = fs::read_dir(&pages.path)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    names.sort();
    for expected in ["feather.1", "feather-create.1", "feather-service-start.1"] {
        assert!(names.iter().any(|name| name == expected), "{names:?}");
    }
    for name in &names {
        let ours = fs::read(pages.path.join(name)).unwrap();
        let theirs = Path::new(PREFIX).join("share/man/man1").join(name);
        assert_eq!(
            fs::read(&theirs).ok(),
            Some(ours),
            "{} is installed and is this build's page",
            theirs.display()
        );
    }
    let shown = Command::new("man")
        .args(["-P", "cat", "feather-create"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("--memory"),
        "man feather-create: {}",
        String::from_utf8_lossy(&shown.stderr)
    );

    for (shell, file) in [
        ("bash", "share/bash-completion/completions/feather"),
        ("zsh", "share/zsh/site-functions/_feather"),
        ("fish", "share/fish/vendor_completions.d/feather.fish"),
    ] {
        let ours = Command::new(Feather::bin())
            .args(["completions", shell])
            .output()
            .unwrap()
            .stdout;
        assert_eq!(
            fs::read(Path::new(PREFIX).join(file)).ok(),
            Some(ours),
            "{shell} completions are installed and this build's"
        );
    }
    // And bash completes with them: `feather cre<TAB>` is `create`.
    assert_eq!(bash_completes(&["feather", "cre"], None), ["create"]);
}

/// What bash offers for the last of `words` with the installed completion script, which asks
/// the installed `feather` (of the state root in `FEATHER_ROOT`, if given).
fn bash_completes(words: &[&str], root: Option<&Path>) -> Vec<String> {
    let script = "source /usr/share/bash-completion/bash_completion; \
                  source /usr/local/share/bash-completion/completions/feather; \
                  COMP_WORDS=(\"$@\"); COMP_CWORD=$(($# - 1)); \
                  _clap_complete_feather feather \"${COMP_WORDS[COMP_CWORD]}\" \"${COMP_WORDS[COMP_CWORD-1]}\"; \
                  printf '%s\\n' \"${COMPREPLY[@]}\"";
    let mut bash = Command::new("bash");
    bash.args(["-c", script, "bash"]).args(words);
    bash.env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    if let Some(root) = root {
        bash.env("FEATHER_ROOT", root);
    }
    let output = bash.output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A VM's name completes from the state root's VMs, wherever a command takes an existing VM;
/// a new VM's name (create) is not offered the existing ones. (Flags are offered beside names
/// when nothing is typed yet; those are not what is checked here.)
#[test]
fn bash_completes_the_names_of_the_state_roots_vms() {
    let feather = Feather::new("completion");
    feather.ok(&["create", "web1"]);
    feather.ok(&["create", "web2"]);
    feather.ok(&["create", "db1"]);
    let root = Some(feather.root.as_path());
    let names = |words: &[&str]| -> Vec<String> {
        bash_completes(words, root)
            .into_iter()
            .filter(|offered| !offered.starts_with('-'))
            .collect()
    };
    assert_eq!(names(&["feather", "start", ""]), ["db1", "web1", "web2"]);
    assert_eq!(names(&["feather", "exec", "we"]), ["web1", "web2"]);
    assert_eq!(names(&["feather", "service", "ls", "d"]), ["db1"]);
    assert!(names(&["feather", "create", ""]).is_empty());
}

/// `feather` runs the frequent commands itself and hands the others (the web view, migration,
/// checkpoints, `check`, manual pages, completion scripts) to `feather-full` from its own
/// folder: the same output and exit status as that program gives, and, when it is missing
/// there, an error naming it — never a `feather-full` found through `$PATH`.
#[test]
fn the_front_hands_the_other_commands_to_the_full_program_beside_it() {
    let feather = Feather::new("front");
    let lone = LoneFeather::new("front");
    let built_full = Path::new(Feather::bin()).with_file_name("feather-full");
    let built_dir = built_full.parent().unwrap().to_str().unwrap().to_owned();

    let missing = Command::new(lone.dir.join("feather"))
        .args(["restore", "nosuch"])
        .arg("--root")
        .arg(&feather.root)
        .env("PATH", format!("{built_dir}:/usr/sbin:/usr/bin:/sbin:/bin"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!("{}", lone.dir.join("feather-full").display()))
            && said.contains("install feather again"),
        "names the missing program beside it: {said}"
    );

    lone.add("feather-full");
    let by_front = lone.run(&feather, &["restore", "nosuch"]);
    let by_full = Command::new(&built_full)
        .arg("--root")
        .arg(&feather.root)
        .args(["restore", "nosuch"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(by_front.status.code(), Some(1));
    assert_eq!(by_front.status.code(), by_full.status.code());
    assert_eq!(
        String::from_utf8_lossy(&by_front.stderr),
        String::from_utf8_lossy(&by_full.stderr)
    );
    assert!(String::from_utf8_lossy(&by_front.stderr).contains("nosuch"));

    let script = |binary: &Path| {
        let output = Command::new(binary)
            .args(["completions", "fish"])
            .output()
            .unwrap();
        assert!(output.status.success());
        output.stdout
    };
    let handed_over = script(&lone.dir.join("feather"));
    assert!(!handed_over.is_empty());
    assert_eq!(handed_over, script(&built_full));
}

/// The front, started for every `exec` and `run`, and `feather-keeper`, exec'd twice at every
/// start of a kept VM (its keeper, and its init again from inside the VM), load no shared
/// library but libc (and the dynamic loader, which every dynamic program maps anyway): the
/// unwinder is linked into both (crates/feather/src/main.rs, src/bin/feather-keeper.rs), so
/// libgcc_s is neither mapped, relocated nor initialised at each start, nor bound into a VM
/// for its init.
#[test]
fn the_front_and_the_keeper_load_no_shared_library_but_libc() {
    let front = Path::new(Feather::bin());
    for binary in [front.to_path_buf(), front.with_file_name("feather-keeper")] {
        let dynamic = Command::new("readelf")
            .arg("--dynamic")
            .arg(&binary)
            .output()
            .expect("readelf (binutils) runs");
        assert!(dynamic.status.success(), "{dynamic:?}");
        let needed: Vec<String> = String::from_utf8_lossy(&dynamic.stdout)
            .lines()
            .filter(|line| line.contains("(NEEDED)"))
            .filter_map(|line| line.split('[').nth(1)?.split(']').next().map(str::to_owned))
            .filter(|library| !library.starts_with("ld-linux"))
            .collect();
        assert_eq!(
            needed,
            ["libc.so.6"],
            "{}'s shared libraries",
            binary.display()
        );
    }
}

/// The front is linked at a fixed address (crates/feather/build.rs: it then maps its relocated
/// data clean instead of writing ~40,000 addresses at every `exec` and `run`), while every
/// binary that runs beside or inside a VM for longer — the keeper and init (`feather-keeper`),
/// the service manager (`feather-svcd`), `feather-full` (`serve`, `web`, imports) and the IPC
/// probe — stays position-independent, so that what a VM can reach keeps a randomised image
/// (docs/security.md, "The front at a fixed address").
#[test]
fn only_the_front_is_linked_at_a_fixed_address() {
    let elf_type = |binary: &Path| elf_type_and_interpreter(binary).0;
    let front = Path::new(Feather::bin());
    assert!(
        elf_type(front).contains("EXEC"),
        "the front: {}",
        elf_type(front)
    );
    for name in [
        "feather-keeper",
        "feather-svcd",
        "feather-full",
        "feather-probe",
    ] {
        let binary = front.with_file_name(name);
        let kind = elf_type(&binary);
        assert!(kind.contains("DYN"), "{name} must stay PIE: {kind}");
    }
}

/// An installed binary (`sudo ./setup.sh` builds it with scripts/build-release and installs it).
fn installed(name: &str) -> std::path::PathBuf {
    let path = Path::new(PREFIX).join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run sudo ./setup.sh (it builds the release binaries and installs them)",
        path.display()
    );
    path
}

/// readelf's report on `binary`: its ELF type line and whether it names a program interpreter.
fn elf_type_and_interpreter(binary: &Path) -> (String, bool) {
    let read = |what: &str| {
        let output = Command::new("readelf")
            .arg(what)
            .arg(binary)
            .output()
            .expect("readelf (binutils) runs");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let header = read("--file-header");
    let kind = header
        .lines()
        .find(|line| line.trim_start().starts_with("Type:"))
        .expect("readelf prints the type")
        .to_owned();
    (kind, read("--program-headers").contains("INTERP"))
}

/// The release pair as installed runs VMs (scripts/build-release links `feather` and
/// `feather-keeper` statically; the suite's own binaries are debug builds, linked
/// dynamically): the front a fixed-address executable and the keeper a static-pie, neither
/// naming a loader; a kept VM, whose init re-executes the static keeper inside the VM with no
/// loader (feather_vm::rootfs::in_vm_program), starts, runs a command, stops and goes; and a
/// throw-away VM runs and is finished by the keeper.
#[test]
fn the_installed_static_pair_runs_kept_and_throw_away_vms() {
    let front = installed("feather");
    let keeper = installed("feather-keeper");
    let (kind, interpreter) = elf_type_and_interpreter(&front);
    assert!(
        kind.contains("EXEC") && !interpreter,
        "the front: {kind}, INTERP {interpreter}"
    );
    let (kind, interpreter) = elf_type_and_interpreter(&keeper);
    assert!(
        kind.contains("DYN") && !interpreter,
        "the keeper: {kind}, INTERP {interpreter}"
    );

    // The root's VMs are removed when `feather` drops, also when an assertion fails first.
    let feather = Feather::new("installed-pair");
    let run = |args: &[&str]| {
        let output = Command::new(&front)
            .arg("--root")
            .arg(&feather.root)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("the installed feather runs");
        assert!(
            output.status.success(),
            "installed feather {args:?}: {output:?}"
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    run(&["create", "kept"]);
    run(&["start", "kept"]);
    let init = run(&["exec", "kept", "--", "cat", "/proc/1/cmdline"]);
    assert!(init.contains("feather-keeper"), "the VM's init: {init:?}");
    run(&["stop", "kept"]);
    run(&["rm", "kept"]);
    let thrown = run(&["run", "--rm", "--net", "none", "--", "echo", "thrown"]);
    assert_eq!(thrown.trim(), "thrown");
    let left = run(&["ls"]);
    assert!(!left.contains("kept"), "no VM is left: {left}");
}

/// The installed feather-oci is the static-pie scripts/build-release links (engines run it
/// three or four times per container): a position-independent executable naming no loader,
/// that runs a bundle's whole life as an engine drives it — create, start, exec (the child
/// cloned into the container's group; a terminal-less exec's output) and delete — with
/// static glibc's own lookups (the process's user by number, never NSS).
#[test]
fn the_installed_static_feather_oci_runs_a_containers_life() {
    let oci = installed("feather-oci");
    let (kind, interpreter) = elf_type_and_interpreter(&oci);
    assert!(
        kind.contains("DYN") && !interpreter,
        "feather-oci: {kind}, INTERP {interpreter} (run scripts/build-release and scripts/install-feather)"
    );
    let scratch = ScratchDir::new("installed-oci");
    let bundle = scratch.path.join("bundle");
    let bin = bundle.join("rootfs/bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is installed");
    for applet in ["sh", "sleep", "cat", "echo"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["sleep", "100"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                    "env": ["PATH=/bin"]},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"},
                                 {"type": "uts"}, {"type": "cgroup"}]}
    });
    fs::write(bundle.join("config.json"), config.to_string()).unwrap();
    let root = scratch.path.join("state");
    let id = format!("installed-oci-{}", std::process::id());
    let run = |args: &[&str]| {
        Command::new(&oci)
            .arg("--root")
            .arg(&root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("the installed feather-oci runs")
    };
    // Deleted when the test ends, also after a failed assertion.
    struct Deleted<'a>(&'a dyn Fn(&[&str]) -> std::process::Output, &'a str);
    impl Drop for Deleted<'_> {
        fn drop(&mut self) {
            let _ = (self.0)(&["delete", "--force", self.1]);
        }
    }
    let _deleted = Deleted(&run, &id);
    // The init inherits create's stdio: nothing here waits for a pipe it holds.
    let created = Command::new(&oci)
        .arg("--root")
        .arg(&root)
        .args(["create", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(created.success(), "installed feather-oci create: {created}");
    let started = run(&["start", &id]);
    assert!(started.status.success(), "start: {started:?}");
    let exec = run(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo exec ran; cat /proc/self/cgroup",
    ]);
    assert!(exec.status.success(), "exec: {exec:?}");
    let printed = String::from_utf8_lossy(&exec.stdout);
    assert!(
        printed.starts_with("exec ran\n") && printed.lines().any(|l| l.ends_with("::/")),
        "the exec'd program, at the root of the container's cgroup namespace: {printed}"
    );
    let deleted = run(&["delete", "--force", &id]);
    assert!(deleted.status.success(), "delete: {deleted:?}");
    let listed = run(&["list"]);
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains(&id),
        "no container is left: {listed:?}"
    );
}

/// The installed (static) front never loads the host's NSS modules, which a static glibc
/// cannot run (libnss_systemd crashed it): its one lookup, std's home directory for a `~`
/// completed with HOME unset, as a user /etc/passwd does not list (a systemd DynamicUser, an
/// LDAP account), is answered from /etc/passwd alone (feather_sys::process::nss_files_only).
#[test]
fn the_installed_front_completes_a_home_path_as_an_unlisted_user_without_home() {
    let front = installed("feather");
    let unlisted = "61234";
    let passwd = fs::read_to_string("/etc/passwd").unwrap();
    assert!(
        !passwd
            .lines()
            .any(|line| line.split(':').nth(2) == Some(unlisted)),
        "uid {unlisted} is not in /etc/passwd"
    );
    let output = Command::new("setpriv")
        .args(["--reuid", unlisted, "--regid", unlisted, "--clear-groups"])
        .arg(&front)
        .args(["--", "feather", "create", "--base", "~/"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("FEATHER_COMPLETE", "bash")
        .env("_CLAP_COMPLETE_INDEX", "3")
        .env("_CLAP_COMPLETE_COMP_TYPE", "9")
        .env("_CLAP_COMPLETE_SPACE", "true")
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .expect("setpriv (util-linux) runs");
    assert_eq!(
        output.status.code(),
        Some(0),
        "the installed front answers the completion: {output:?}"
    );
}

/// The commands that read what a VM wrote — its layer, its processes' command lines, the
/// objects it named, its services' states and logs — are never run by the front, whose image
/// sits at a fixed address (docs/security.md): it hands them to `feather-full`. A front alone
/// in a folder runs its own commands, and for each of those says it cannot run feather-full.
#[test]
fn the_front_hands_over_every_command_that_reads_a_vm_s_writing() {
    let feather = Feather::new("lone-front");
    let lone = LoneFeather::new("lone-front");
    let own = lone.run(&feather, &["ls"]);
    assert!(own.status.success(), "the front runs ls itself: {own:?}");
    for args in [
        &["ps", "vm"][..],
        &["diff", "vm"],
        &["commit", "vm"],
        &["reset", "vm"],
        &["service", "status", "vm", "nginx"],
        &["audit"],
    ] {
        let handed = lone.run(&feather, args);
        let said = String::from_utf8_lossy(&handed.stderr);
        assert!(
            !handed.status.success()
                && said.contains("cannot run")
                && said.contains("feather-full"),
            "feather {args:?} must be handed to feather-full: {said}"
        );
    }
}
