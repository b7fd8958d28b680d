//! A restored VM's processes come back with no more than a process of that VM may hold: the
//! keeper reads each thread's credentials while CRIU leaves the tree stopped, and refuses the
//! restore otherwise (crates/feather-vm/src/restored_creds.rs), keeping the checkpoint.

use std::fs;

use crate::support::{count, start_counting, Feather, ScratchBase};

/// A VM checkpointed under a configuration allowing user namespaces runs under one filter
/// (no `clone3` filter); restored under a configuration without them, its processes lack the
/// filter every process of such a VM runs under, so the restore is refused, naming the
/// process and the field, and the checkpoint stays: restored under its own configuration
/// again, the VM goes on counting where it was.
#[test]
fn a_process_under_fewer_filters_than_the_vm_is_refused() {
    let feather = Feather::new("creds-filters");
    let base = ScratchBase::new("creds-filters");
    feather.start_over("vm", &base, &["--net", "none", "--allow-userns"]);
    feather.require_criu();
    start_counting(&feather, "vm");
    feather.eventually("the loop counts", || count(&feather, "vm") > 0);
    feather.ok(&["checkpoint", "vm"]);

    let config = feather.vm_dir("vm").join("config.toml");
    let allowing = fs::read_to_string(&config).unwrap();
    assert!(allowing.contains("allow_userns = true"), "{allowing}");
    fs::write(
        &config,
        allowing.replace("allow_userns = true", "allow_userns = false"),
    )
    .unwrap();
    let refused = feather.fails(&["restore", "vm"]);
    assert!(
        refused.contains("refusing the restore")
            && refused.contains("Seccomp_filters is 1")
            && refused.contains("at least 2")
            && refused.contains("feather-init"),
        "{refused}"
    );
    assert_eq!(feather.status("vm"), "checkpointed", "{refused}");
    assert!(feather
        .vm_dir("vm")
        .join("checkpoint/inventory.img")
        .exists());

    fs::write(&config, allowing).unwrap();
    feather.ok(&["restore", "vm"]);
    assert_eq!(feather.status("vm"), "running");
    let resumed = count(&feather, "vm");
    feather.eventually("the restored loop counts on", || {
        count(&feather, "vm") > resumed
    });
    feather.ok(&["stop", "vm"]);
    feather.ok(&["rm", "vm"]);
}

/// A checkpoint whose core image of the VM's init was altered to give it every capability the
/// host's root has (its permitted, effective and bounding sets: fields of CRIU's
/// `CredsEntry`) is refused: CRIU, running as the host's root, restores what the image says,
/// and the keeper finds init holding capabilities no process of a VM may hold before anything
/// of the VM runs. The checkpoint stays.
#[test]
fn an_init_whose_image_raises_its_capabilities_is_refused() {
    let feather = Feather::new("creds-caps");
    let base = ScratchBase::new("creds-caps");
    feather.start_over("vm", &base, &["--net", "none"]);
    feather.require_criu();
    feather.ok(&["checkpoint", "vm"]);

    let core = feather.vm_dir("vm").join("checkpoint/core-1.img");
    let image = fs::read(&core).unwrap();
    fs::write(&core, core_image::with_full_capabilities(&image)).unwrap();
    let refused = feather.fails(&["restore", "vm"]);
    assert!(
        refused.contains("refusing the restore")
            && refused.contains(&format!("CapBnd holds {:016x}", core_image::host_root()))
            && refused.contains("CAP_SYS_ADMIN")
            && refused.contains("feather-init"),
        "{refused}"
    );
    assert_eq!(feather.status("vm"), "checkpointed", "{refused}");
    assert!(core.exists());

    fs::write(&core, image).unwrap();
    feather.ok(&["restore", "vm"]);
    assert_eq!(feather.status("vm"), "running");
    feather.ok(&["rm", "--force", "vm"]);
}

/// A checkpoint whose seccomp image was altered to replace every filter of the VM's processes
/// with one that allows every call (as many filters as before, so their count, which the
/// keeper also reads, is the VM's) is refused: the keeper reads each stopped thread's filter
/// programs back (`PTRACE_SECCOMP_GET_FILTER`) and finds the first one not feather's, before
/// anything of the VM runs. The checkpoint stays and restores once the image is put back.
#[test]
fn a_process_whose_image_allows_every_call_is_refused() {
    let feather = Feather::new("creds-allow-all");
    let base = ScratchBase::new("creds-allow-all");
    feather.start_over("vm", &base, &["--net", "none"]);
    feather.require_criu();
    feather.ok(&["checkpoint", "vm"]);

    let seccomp = feather.vm_dir("vm").join("checkpoint/seccomp.img");
    let image = fs::read(&seccomp).unwrap();
    fs::write(&seccomp, core_image::allowing_every_call(&image)).unwrap();
    let refused = feather.fails(&["restore", "vm"]);
    assert!(
        refused.contains("refusing the restore")
            && refused.contains("seccomp filter 1 (counted from the first installed)")
            && refused.contains("1 instructions")
            && refused.contains("feather-init"),
        "{refused}"
    );
    assert_eq!(feather.status("vm"), "checkpointed", "{refused}");

    fs::write(&seccomp, image).unwrap();
    feather.ok(&["restore", "vm"]);
    assert_eq!(feather.status("vm"), "running");
    feather.ok(&["rm", "--force", "vm"]);
}

/// Spins until /tmp/go exists, then writes /tmp/marker over and over (both on the VM's layer):
/// any moment it runs after the checkpoint, the marker is there. It holds neither file open at
/// the dump. Prints its pid in the VM, the number of its core image.
const MARKER_WRITER: &str =
    "sh -c 'while true; do if [ -e /tmp/go ]; then echo ran > /tmp/marker; \
     fi; done' </dev/null >/dev/null 2>&1 & echo $!";

/// A checkpoint in which a process of the VM (a shell spinning until /tmp/go exists, then
/// writing /tmp/marker) was given a POSIX timer signalling SIGCONT every millisecond, and every
/// capability, is refused, and the shell never ran: the keeper freezes the VM's group at
/// CRIU's pre-resume and kills it frozen. Without the freeze, CRIU's queued SIGSTOP was all
/// that held the tree: the timer's SIGCONT resumed the shell during the check.
#[test]
fn a_restored_process_resumed_by_its_own_timer_does_not_run_during_the_check() {
    let feather = Feather::new("creds-sigcont");
    let base = ScratchBase::new("creds-sigcont");
    feather.start_over("vm", &base, &["--net", "none"]);
    feather.require_criu();
    let pid = feather.sh("vm", MARKER_WRITER).trim().to_string();
    feather.ok(&["checkpoint", "vm"]);

    let images = feather.vm_dir("vm").join("checkpoint");
    let shell = images.join(format!("core-{pid}.img"));
    let image = fs::read(&shell).unwrap();
    let crafted = core_image::with_sigcont_timer(&image);
    fs::write(&shell, core_image::with_full_capabilities(&crafted)).unwrap();
    let tmp = feather.vm_dir("vm").join("upper/tmp");
    fs::create_dir_all(&tmp).unwrap();
    fs::write(tmp.join("go"), "").unwrap();
    let marker = tmp.join("marker");
    assert!(!marker.exists(), "nothing ran since the dump");

    let refused = feather.fails(&["restore", "vm"]);
    assert!(
        refused.contains("refusing the restore") && refused.contains("\"sh\""),
        "{refused}"
    );
    assert!(
        !marker.exists(),
        "the restored shell ran during its check: {refused}"
    );
    feather.ok(&["rm", "--force", "vm"]);
}

/// A core image's and a seccomp image's entries rewritten: `CoreEntry.thread_core` (5) holds
/// `creds` (10), whose `cap_prm` (10), `cap_eff` (11) and `cap_bnd` (12) are repeated 32-bit
/// words, low word first (CRIU's images/core.proto and creds.proto).
mod core_image {
    use feather_testkit::criu_image::{self, rewrite_only_entry};
    use feather_testkit::protobuf::{decode, encode, rewrite_field, Value};

    const THREAD_CORE: u64 = 5;
    const CREDS: u64 = 10;
    const RAISED: [u64; 3] = [10, 11, 12];
    /// Every capability the host's root holds (its bounding set, which CRIU cannot exceed).
    pub fn host_root() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let hex = status
            .lines()
            .find_map(|line| line.strip_prefix("CapBnd:"))
            .unwrap();
        u64::from_str_radix(hex.trim(), 16).unwrap()
    }

    pub fn with_full_capabilities(image: &[u8]) -> Vec<u8> {
        let mut raised = 0;
        let crafted = rewrite_only_entry(image, |core| {
            rewrite_field(core, THREAD_CORE, &mut |thread| {
                rewrite_field(thread, CREDS, &mut |creds| {
                    raised += 1;
                    raise(creds)
                })
            })
        });
        assert_eq!(raised, 1, "the core image has its thread's creds");
        crafted
    }

    /// A seccomp image (two magic words, one `SeccompEntry`: its `seccomp_filters` (1), each
    /// a `SeccompFilter` whose `filter` (1) is the program's `struct sock_filter`s) with every
    /// program replaced by `return SECCOMP_RET_ALLOW`.
    pub fn allowing_every_call(image: &[u8]) -> Vec<u8> {
        let allow: Vec<u8> = [
            0x06u16.to_ne_bytes().as_slice(),
            &[0, 0],
            &0x7fff_0000u32.to_ne_bytes(),
        ]
        .concat();
        let mut replaced = 0;
        let crafted = rewrite_only_entry(image, |entry| {
            rewrite_field(entry, 1, &mut |filter| {
                rewrite_field(filter, 1, &mut |_| {
                    replaced += 1;
                    allow.clone()
                })
            })
        });
        assert!(replaced > 0, "the seccomp image has filters");
        crafted
    }

    /// A core image whose task gets a POSIX timer signalling SIGCONT every millisecond
    /// ([`criu_image::with_sigcont_timer`]).
    pub fn with_sigcont_timer(image: &[u8]) -> Vec<u8> {
        rewrite_only_entry(image, |core| {
            criu_image::with_sigcont_timer(core).expect("the core image of a task's first thread")
        })
    }

    /// The creds with the raised sets replaced by the host's root's ([`host_root`]).
    fn raise(creds: &[u8]) -> Vec<u8> {
        let full = host_root();
        let mut fields = Vec::new();
        let mut replaced = Vec::new();
        for (number, value) in decode(creds) {
            if !RAISED.contains(&number) {
                fields.push((number, value));
            } else if !replaced.contains(&number) {
                replaced.push(number);
                let words = [full & 0xffff_ffff, full >> 32];
                fields.extend(words.map(|word| (number, Value::Varint(word))));
            }
        }
        assert_eq!(
            replaced.len(),
            RAISED.len(),
            "the image holds the three sets"
        );
        encode(&fields)
    }
}
