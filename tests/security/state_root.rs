//! A state root only root can change: feather acts in it as root, by path, so a root whose
//! folder (or a folder above it) a local user owns or can write is refused before anything is
//! made or read in it (`sudo feather --root ~/vms …`: the user could swap `pool/` for a link to
//! /etc/sudoers.d between feather's checks and its writes); and the files root reads in a root
//! on every run are read bounded, never through a link, never waited on.

use std::fs;
use std::os::unix::fs::{lchown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{self, Feather, Outcome};

/// `feather --root <root> args…`, out of the pool.
fn feather_on(root: &Path, args: &[&str]) -> Outcome {
    feather_testkit::run(
        Command::new(Feather::bin())
            .arg("--root")
            .arg(root)
            .env(support::NO_POOL, "0")
            .args(args),
    )
}

/// Asserts that every command in `commands` was refused on `root`, naming `folder` and `why`.
fn refused_everywhere(root: &Path, folder: &Path, why: &str, commands: &[&[&str]]) {
    for args in commands {
        let outcome = feather_on(root, args);
        assert_ne!(
            outcome.code,
            0,
            "feather {args:?} went on in {}",
            root.display()
        );
        let said = &outcome.stderr;
        assert!(
            said.contains(&format!("{}: {} {why}", root.display(), folder.display()))
                && said.contains("choose a root"),
            "feather {args:?}: {said}"
        );
    }
}

/// A root in a user's folder, a root under a folder others may write without the sticky bit,
/// a root folder others may write, and a root reached through a user's link: each is refused by
/// every command, naming the folder and what is wrong with it, and nothing is made in it, nor
/// through a `pool` link planted in it. The roots of every other test, under the sticky /tmp in
/// root's 0755 /tmp/feather-tests, are taken.
#[test]
fn a_root_whose_folders_a_local_user_could_change_is_refused_before_anything_is_made() {
    // Its folder holds the roots tried here; removed, with them, on drop.
    let scratch = Feather::new("strict-root");
    let mode = |dir: &Path, mode: u32| {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).unwrap();
    };
    let home = scratch.root.join("home");
    fs::create_dir(&home).unwrap();
    lchown(&home, Some(65534), Some(65534)).unwrap();
    let in_home = home.join("vms");
    refused_everywhere(&in_home, &home, "is owned by uid 65534", &[&["ls"]]);
    assert!(!in_home.exists(), "the root was made in the user's folder");

    // What a user who could change the root would plant: `pool` a link to a folder of root's.
    let precious = scratch.root.join("precious");
    fs::create_dir(&precious).unwrap();
    let plant = |root: &Path| {
        fs::create_dir(root).unwrap();
        mode(root, 0o700);
        symlink(&precious, root.join("pool")).unwrap();
    };
    let every_kind: &[&[&str]] = &[
        &["ls"],
        &["pool", "--size", "1"],
        &["pool", "--fill"],
        &["network", "down"],
        &["run", "--rm", "--", "true"],
    ];
    let shared = scratch.root.join("shared");
    fs::create_dir(&shared).unwrap();
    mode(&shared, 0o775);
    let under_shared = shared.join("root");
    plant(&under_shared);
    refused_everywhere(
        &under_shared,
        &shared,
        "is writable by group or others without the sticky bit (mode 0775)",
        every_kind,
    );
    let loose = scratch.root.join("loose");
    plant(&loose);
    mode(&loose, 0o1770);
    refused_everywhere(
        &loose,
        &loose,
        "is writable by group or others (mode 1770)",
        every_kind,
    );
    // A root only root changes, reached through a link in the user's folder: the user can
    // point it elsewhere at any time.
    let kept = scratch.root.join("kept");
    plant(&kept);
    let link = home.join("link");
    symlink(&kept, &link).unwrap();
    refused_everywhere(&link, &home, "is owned by uid 65534", every_kind);
    for root in [&under_shared, &loose, &kept] {
        assert_eq!(support::names_in(root), ["pool"], "{}", root.display());
    }
    assert!(
        support::names_in(&precious).is_empty(),
        "written through `pool`"
    );
}

/// `network.toml` and a rule file of the root's policy made a FIFO or a link (to a file of
/// root's elsewhere, as it might be to /dev/zero): `feather pool` (which reads both for its
/// fingerprint) answers, a run that needs the root's network is refused and the policy is told
/// broken, each naming the file and what to put there, and a VM start (which reads the rule
/// files) ends, instead of waiting for ever on the FIFO or reading through the link.
#[test]
fn a_roots_files_made_a_fifo_or_a_link_are_refused_without_waiting() {
    let feather = Feather::new("root-fifo");
    feather.ok(&["ls"]);
    let settings = feather.root.join("network.toml");
    let policy = feather.root.join("policy.d");
    fs::create_dir(&policy).unwrap();
    let rules = policy.join("fifo.policy");
    fifo(&rules);
    // Whatever a regression leaves waiting on a FIFO (a keeper, out of the front's reach) is
    // let go once the test ends, passed or not.
    let _release = Released(vec![rules.clone(), settings.clone()]);
    let elsewhere = feather.root.join("elsewhere.toml");
    fs::write(&elsewhere, "# a file root reads through no link\n").unwrap();
    // The link first: a regression there fails on what it read, before one that waits.
    for (kind, link) in [("symbolic link", true), ("not a plain file", false)] {
        let _ = fs::remove_file(&settings);
        if link {
            symlink(&elsewhere, &settings).unwrap();
        } else {
            fifo(&settings);
        }
        let status = answered(&feather, &["pool"]);
        assert!(status.contains("size: 1"), "{status}");
        let run = answered(&feather, &["run", "--rm", "--", "true"]);
        assert!(
            run.contains("network.toml") && run.contains(kind),
            "a run with network.toml {kind}: {run}"
        );
    }
    // A VM's start reads the policy's rule files too (its gate then denies every crossing
    // while the policy is broken): it ends, and the policy is told broken, naming the file.
    let _ = fs::remove_file(&settings);
    answered(&feather, &["run", "--rm", "--net", "none", "--", "true"]);
    let check = answered(&feather, &["policy", "check"]);
    assert!(
        check.contains("fifo.policy") && check.contains("not a plain file"),
        "the policy with a FIFO rule file: {check}"
    );
    // Not left for the root's teardown to meet.
    fs::remove_file(&rules).unwrap();
}

/// FIFOs whose readers are let go on drop: each is opened for writing, if anyone reads it,
/// and closed, so the reader sees its end (nothing is written to a plain file).
struct Released(Vec<std::path::PathBuf>);

impl Drop for Released {
    fn drop(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        for fifo in &self.0 {
            // ENXIO when no one reads it; a plain file or nothing there: nothing to do.
            let _ = fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(fifo);
        }
    }
}

/// A FIFO made at `file`.
fn fifo(file: &Path) {
    let made = Command::new("mkfifo").arg(file).status().unwrap();
    assert!(made.success());
}

/// What `feather args…` printed (stdout and stderr), once it has ended; fails the test if it
/// has not ended within a generous deadline (it waits on a FIFO).
fn answered(feather: &Feather, args: &[&str]) -> String {
    let limit = Duration::from_secs(60);
    let (out, _) = crate::service_client::run_at_most(feather, args, limit);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A FUSE filesystem a user serves (`allow_other`, every file reported root's and 0755 by
/// fuse-overlayfs's `squash_to_root`) holds nothing a state root can trust: its server answers
/// every later lookup as it likes. A root on it is refused, naming the mount point and the
/// server's uid, and nothing is made there. Run in a mount namespace of the test's own, where
/// `/etc/fuse.conf` allows `allow_other` and `/dev/fuse` opens for the user (binds over the
/// host's, which stay untouched); the mount goes with the namespace, and the FUSE server with
/// the test's pid namespace, also when the test fails.
#[test]
fn a_root_on_a_fuse_filesystem_a_user_serves_is_refused() {
    refused_on_a_users_fuse_mount("fuse-root", SERVED);
}

/// As [`a_root_on_a_fuse_filesystem_a_user_serves_is_refused`], the server stopped (SIGSTOP)
/// once the mount is made: the refusal comes all the same, as the walk judges the mount before
/// it asks it anything (an `fstat` of its root waited for the server: review roots31 L2).
#[test]
fn a_root_on_a_fuse_filesystem_whose_server_never_answers_is_refused_without_waiting() {
    let script = with_a_stopped_server(r#""$7" --root "$6/vms" ls"#);
    refused_on_a_users_fuse_mount("fuse-root-stopped", &script);
}

/// How [`refused_on_a_users_fuse_mount`] has the user's FUSE server run `feather ls`: `$1`…`$6`
/// the test's fuse.conf, /dev/fuse, lower, upper and work folders and mount point, `$7`
/// feather; the server's exit codes 90 and 91 say its mount was not made.
const SERVED: &str = r#"
        mount --bind "$1" /etc/fuse.conf && mount --bind "$2" /dev/fuse || exit 90
        setpriv --reuid 65534 --regid 65534 --clear-groups fuse-overlayfs \
            -o "squash_to_root,allow_other,lowerdir=$3,upperdir=$4,workdir=$5" "$6" || exit 91
        "$7" --root "$6/vms" ls
        code=$?
        fusermount3 -u "$6"
        exit $code
    "#;

/// [`SERVED`], the server in the foreground (its pid known) and stopped once its mount shows
/// in the mount table (polled for 60 s at most), until `command` has ended.
fn with_a_stopped_server(command: &str) -> String {
    format!(
        r#"
        mount --bind "$1" /etc/fuse.conf && mount --bind "$2" /dev/fuse || exit 90
        setpriv --reuid 65534 --regid 65534 --clear-groups fuse-overlayfs -f \
            -o "squash_to_root,allow_other,lowerdir=$3,upperdir=$4,workdir=$5" "$6" &
        server=$!
        tries=0
        until findmnt -n -M "$6" > /dev/null; do
            tries=$((tries + 1))
            [ $tries -le 600 ] || exit 91
            sleep 0.1
        done
        kill -STOP $server
        {command}
        code=$?
        kill -CONT $server
        fusermount3 -u "$6"
        exit $code
    "#
    )
}

/// A user's FUSE mount to be made by a script ([`SERVED`], [`with_a_stopped_server`]): uid
/// 65534's fuse-overlayfs folders in a scratch folder, and the `fuse.conf` and `/dev/fuse` the
/// script binds over the host's in its own mount namespace.
struct UsersFuse {
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mount: PathBuf,
    conf: PathBuf,
    device: PathBuf,
}

impl UsersFuse {
    fn in_folder(scratch: &Path) -> Self {
        let dir = |name: &str| {
            let dir = scratch.join(name);
            fs::create_dir(&dir).unwrap();
            dir
        };
        let (lower, upper, work, mount) = (dir("lower"), dir("upper"), dir("work"), dir("mnt"));
        for users in [&upper, &work, &mount] {
            lchown(users, Some(65534), Some(65534)).unwrap();
        }
        let conf = scratch.join("fuse.conf");
        fs::write(&conf, "user_allow_other\n").unwrap();
        let device = scratch.join("fuse");
        let made = Command::new("mknod")
            .args(["-m", "0666"])
            .arg(&device)
            .args(["c", "10", "229"])
            .status()
            .unwrap();
        assert!(made.success(), "mknod {}", device.display());
        assert!(
            Path::new("/etc/fuse.conf").exists(),
            "/etc/fuse.conf is missing: install fuse3 (scripts/setup.sh does); the test binds \
             its own over it in a mount namespace of its own"
        );
        UsersFuse {
            lower,
            upper,
            work,
            mount,
            conf,
            device,
        }
    }

    /// `sh -c script` in namespaces of its own, given `$1`…`$6`: the fuse.conf, /dev/fuse,
    /// lower, upper and work folders and mount point.
    fn script(&self, script: &str) -> Command {
        let mut command = in_namespaces_of_its_own(script);
        command.args([
            &self.conf,
            &self.device,
            &self.lower,
            &self.upper,
            &self.work,
            &self.mount,
        ]);
        command
    }
}

/// `feather ls` of a root on a FUSE mount uid 65534 made, its server run by `script`
/// ([`SERVED`], [`with_a_stopped_server`]): refused, naming the mount and its user, nothing
/// made there.
fn refused_on_a_users_fuse_mount(label: &str, script: &str) {
    let scratch = Feather::new(label);
    let fuse = UsersFuse::in_folder(&scratch.root);
    let root = fuse.mount.join("vms");
    let outcome = feather_testkit::run_within(
        fuse.script(script)
            .arg(Feather::bin())
            .env(support::NO_POOL, "0"),
        Duration::from_secs(120),
        "feather ls of a root on a user's FUSE mount",
    );
    assert!(
        ![90, 91].contains(&outcome.code),
        "the user's FUSE mount was not made: {}",
        outcome.stderr
    );
    assert_ne!(
        outcome.code, 0,
        "the root on the user's FUSE mount was taken"
    );
    let said = &outcome.stderr;
    assert!(
        said.contains(&format!(
            "{}: {} is on a FUSE filesystem",
            root.display(),
            fuse.mount.display()
        )) && said.contains("mounted by uid 65534")
            && said.contains("choose a root"),
        "{said}"
    );
    assert!(
        support::names_in(&fuse.upper).is_empty(),
        "made on the user's mount"
    );
}

/// `sh -c script` in a mount namespace and a pid namespace of its own: what it mounts goes with
/// it, and every process it starts (a FUSE server) ends with it, also when the test kills it at
/// its deadline (unshare's `--kill-child`).
fn in_namespaces_of_its_own(script: &str) -> Command {
    let mut command = Command::new("unshare");
    command.args([
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--kill-child",
        "sh",
        "-c",
        script,
        "sh",
    ]);
    command
}

/// A mount libmount's utab records as a user's (`user=alice`: `mount` of an fstab `user` entry
/// by alice), whose files report root's and 0755 (here a tmpfs mounted by the test, as the
/// user's filesystem): a root on it is refused naming the user and utab, saying the line may
/// be stale, and nothing is made there. Run in a mount namespace of the test's own with a
/// tmpfs over `/run` there and the crafted utab bound at `/run/mount` in it: the host's `/run`
/// untouched, and no need of a `/run/mount` on the host, which libmount makes only on first use
/// (a fresh machine has none).
#[test]
fn a_root_on_a_mount_utab_says_a_user_made_is_refused() {
    let scratch = Feather::new("utab-root");
    let stick = scratch.root.join("stick");
    let records = scratch.root.join("run-mount");
    for folder in [&stick, &records] {
        fs::create_dir(folder).unwrap();
        fs::set_permissions(folder, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let line = format!("TARGET={} OPTS=user=alice\n", stick.display());
    fs::write(records.join("utab"), line).unwrap();
    let root = stick.join("feather");
    let script = r#"mount -t tmpfs -o mode=0755 run-test /run && mkdir /run/mount || exit 90
        mount --bind "$1" /run/mount || exit 90
        mount -t tmpfs -o mode=0755 utab-test "$2" || exit 91
        "$3" --root "$4" ls; code=$?
        [ -z "$(ls -A "$2")" ] || exit 92
        exit $code"#;
    let outcome = feather_testkit::run_within(
        in_namespaces_of_its_own(script)
            .arg(&records)
            .arg(&stick)
            .arg(Feather::bin())
            .arg(&root)
            .env(support::NO_POOL, "0"),
        Duration::from_secs(60),
        "feather ls of a root on a mount utab says a user made",
    );
    let said = &outcome.stderr;
    assert_ne!(
        outcome.code, 90,
        "the crafted utab was not put at /run/mount: {said}"
    );
    assert_ne!(
        outcome.code, 91,
        "the user's filesystem was not mounted: {said}"
    );
    assert_ne!(outcome.code, 92, "made on the user's mount: {said}");
    assert_ne!(outcome.code, 0, "{} taken", root.display());
    assert!(
        said.contains("is on a filesystem user alice mounted")
            && said.contains("/run/mount/utab")
            && said.contains("choose a root"),
        "{said}"
    );
}

/// A mount point `/etc/fstab` lets users mount on (`users`, `user`, `owner`, `group`): any
/// user may mount a filesystem of theirs there at any moment, whose files report root's and
/// 0755 (an ext4 image they made), mounted now or not. A root on or under it is refused naming
/// the mount point, the option and `/etc/fstab`, and nothing is made there, however the fstab
/// line spells the mount point (a trailing `/`, `//`, `.`, `..`, a link of root's: before,
/// compared as a path name by name, the last two were taken). Run with a crafted fstab bound
/// over the host's in a mount namespace of the test's own (the host's untouched).
#[test]
fn a_root_at_a_mount_point_fstab_lets_users_mount_on_is_refused() {
    let scratch = Feather::new("fstab-root");
    let stick = scratch.root.join("stick");
    fs::create_dir(&stick).unwrap();
    fs::set_permissions(&stick, fs::Permissions::from_mode(0o755)).unwrap();
    symlink(&scratch.root, scratch.root.join("media")).unwrap();
    let at = scratch.root.display();
    let spellings = [
        format!("{at}/stick"),
        format!("{at}/stick/"),
        format!("{at}//./stick"),
        format!("{at}/vms/../stick"),
        format!("{at}/media/stick"),
    ];
    let options = ["users", "user", "owner", "group"].into_iter().cycle();
    for (spelling, option) in spellings.iter().zip(options) {
        let fstab = scratch.root.join("fstab");
        let line = format!("/dev/disk/by-label/STICK {spelling} auto noauto,{option} 0 0\n");
        fs::write(&fstab, format!("# crafted by the test\n{line}")).unwrap();
        for root in [stick.clone(), stick.join("vms")] {
            let script = r#"mount --bind "$1" /etc/fstab || exit 90; "$2" --root "$3" ls"#;
            let outcome = feather_testkit::run_within(
                in_namespaces_of_its_own(script)
                    .arg(&fstab)
                    .arg(Feather::bin())
                    .arg(&root)
                    .env(support::NO_POOL, "0"),
                Duration::from_secs(60),
                "feather ls of a root at a users' mount point",
            );
            assert_ne!(
                outcome.code, 90,
                "the crafted fstab was not bound: {}",
                outcome.stderr
            );
            assert_ne!(outcome.code, 0, "{} taken ({spelling})", root.display());
            let said = &outcome.stderr;
            assert!(
                said.contains(&format!(
                    "{}: {} is a mount point /etc/fstab",
                    root.display(),
                    stick.display()
                )) && said.contains(&format!("(`{option}`)"))
                    && said.contains("choose a root"),
                "{said}"
            );
            assert!(
                support::names_in(&stick).is_empty(),
                "made at the users' mount point"
            );
        }
    }
}

/// An `/etc/fstab` line users may mount (`users`) on a path past a user's FUSE mount, its
/// server stopped: past that mount the user decides where the line's mount point is (their
/// server answers every lookup there), so every root is refused, naming the line, the mount and
/// what to do, and the stopped server is asked nothing: feather ends well within the deadline
/// (an `lstat` of each part of the line's path waited on the server: review state32 H1). Run
/// with a crafted fstab bound over the host's in the script's own mount namespace.
#[test]
fn every_root_is_refused_without_waiting_when_an_fstab_line_goes_past_a_stopped_fuse_server() {
    let scratch = Feather::new("fstab-fuse-stopped");
    let fuse = UsersFuse::in_folder(&scratch.root);
    let target = fuse.mount.join("stick");
    let root = scratch.root.join("elsewhere");
    let outcome = ls_with_a_users_line_and_a_stopped_server(&fuse, &scratch, &target, &root);
    let said = &outcome.stderr;
    assert_ne!(outcome.code, 0, "{} taken", root.display());
    let past_the_mount = format!(
        "/etc/fstab line `/dev/disk/by-label/STICK {}` lets users mount (`users`) on a path that \
         may lead anywhere past {}, which is on a FUSE filesystem",
        target.display(),
        fuse.mount.display(),
    );
    assert!(
        said.contains(&past_the_mount)
            && said.contains("mounted by uid 65534")
            && said.contains("feather refuses every state root: change each such line"),
        "{said}"
    );
    assert!(!root.exists(), "{} made", root.display());
}

/// An fstab line whose mount point a user has mounted now (their FUSE mount, its server
/// stopped) is found where it is, never looked in, and lets other roots be: a root elsewhere
/// is used, well within the deadline. The line's last name crosses into the user's mount, which
/// is what the line lets them mount there: judged as a folder on the way, it stopped the walk
/// and every root was refused.
#[test]
fn a_root_elsewhere_is_used_while_a_user_has_mounted_an_fstab_mount_point_whose_server_is_stopped()
{
    let scratch = Feather::new("fstab-mounted-stopped");
    let fuse = UsersFuse::in_folder(&scratch.root);
    let outcome =
        ls_with_a_users_line_and_a_stopped_server(&fuse, &scratch, &fuse.mount, &scratch.root);
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
}

/// `feather --root ROOT ls` with a crafted fstab of one `users` line for `target` bound over
/// the host's, while `fuse`'s server is stopped, in the script's own mount namespace; the
/// outcome once the mount and the fstab were made.
fn ls_with_a_users_line_and_a_stopped_server(
    fuse: &UsersFuse,
    scratch: &Feather,
    target: &Path,
    root: &Path,
) -> Outcome {
    let fstab = scratch.root.join("fstab");
    let line = format!(
        "/dev/disk/by-label/STICK {} auto noauto,users 0 0\n",
        target.display()
    );
    fs::write(&fstab, line).unwrap();
    let script = format!(
        "mount --bind \"$8\" /etc/fstab || exit 92\n{}",
        with_a_stopped_server(r#""$7" --root "$9" ls"#)
    );
    let outcome = feather_testkit::run_within(
        fuse.script(&script)
            .arg(Feather::bin())
            .arg(&fstab)
            .arg(root)
            .env(support::NO_POOL, "0"),
        Duration::from_secs(120),
        "feather ls with an fstab users line while a user's FUSE server is stopped",
    );
    assert!(
        ![90, 91, 92].contains(&outcome.code),
        "the user's FUSE mount or the crafted fstab was not made: {}",
        outcome.stderr
    );
    outcome
}
