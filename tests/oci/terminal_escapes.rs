//! What a container chose reaches a person's terminal escaped, as everything a VM chose does
//! (docs/security.md): `feather-oci ps` prints the command names of the container's processes,
//! which the container sets to any bytes (`/proc/self/comm`).

use std::fs;
use std::time::Duration;

use crate::support::{base_config, eventually, Bundle, Runtime, Scratch};

#[test]
fn ps_escapes_the_command_names_a_container_chose() {
    let scratch = Scratch::new("ps-escapes");
    let runtime = Runtime::new(&scratch);
    // The shell names itself with a terminal's title sequence (echo is its own builtin: the
    // write comes from the shell), then stays.
    let bundle = Bundle::new(
        &scratch,
        "bundle",
        &base_config(&[
            "sh",
            "-c",
            "read -r name < /name; echo -n \"$name\" > /proc/$$/comm; while :; do sleep 1; done",
        ]),
    );
    fs::write(bundle.dir.join("rootfs/name"), b"\x1b]0;EVIL\x07x\n").unwrap();
    let id = format!("ps-escapes-{}", std::process::id());
    let created = runtime.create(&id, &bundle, &scratch.path("output"));
    assert_eq!(created.code, 0, "{created:?}");
    assert_eq!(runtime.run(&["start", &id]).code, 0);
    let mut listed = String::new();
    let named = eventually(Duration::from_secs(10), || {
        listed = runtime.run(&["ps", &id]).stdout;
        listed.contains("EVIL")
    });
    assert!(named, "the shell's new name never showed: {listed:?}");
    assert!(
        !listed.contains('\x1b') && !listed.contains('\x07'),
        "ps passed the container's escape sequence on to the terminal: {listed:?}"
    );
    assert!(listed.contains("\\x1b]0;EVIL\\x07x"), "{listed:?}");
    assert_eq!(runtime.run(&["delete", "--force", &id]).code, 0);
}
