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

/// Just enough of CRIU's image format and of protobuf's wire format to rewrite one task's
/// capability sets: a core image is two magic words, then one entry (its length, a
/// little-endian u32, then a `CoreEntry`); `CoreEntry.thread_core` (5) holds `creds` (10),
/// whose `cap_prm` (10), `cap_eff` (11) and `cap_bnd` (12) are repeated 32-bit words, low
/// word first.
pub(crate) mod core_image {
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
        let size = u32::from_le_bytes(image[8..12].try_into().unwrap()) as usize;
        assert_eq!(12 + size, image.len(), "one entry after two magic words");
        let core = edit(&image[12..], THREAD_CORE, &|thread| {
            edit(thread, CREDS, &raise)
        });
        let mut out = image[..8].to_vec();
        out.extend((core.len() as u32).to_le_bytes());
        out.extend(core);
        out
    }

    /// A seccomp image (two magic words, one `SeccompEntry`: its `seccomp_filters` (1), each
    /// a `SeccompFilter` whose `filter` (1) is the program's `struct sock_filter`s) with every
    /// program replaced by `return SECCOMP_RET_ALLOW`.
    pub fn allowing_every_call(image: &[u8]) -> Vec<u8> {
        let size = u32::from_le_bytes(image[8..12].try_into().unwrap()) as usize;
        assert_eq!(12 + size, image.len(), "one entry after two magic words");
        let allow: Vec<u8> = [
            0x06u16.to_ne_bytes().as_slice(),
            &[0, 0],
            &0x7fff_0000u32.to_ne_bytes(),
        ]
        .concat();
        let entry = edit(&image[12..], 1, &|filter| {
            edit(filter, 1, &|_| allow.clone())
        });
        let mut out = image[..8].to_vec();
        out.extend((entry.len() as u32).to_le_bytes());
        out.extend(entry);
        out
    }

    /// A core image whose task gets a POSIX timer signalling SIGCONT every millisecond:
    /// `CoreEntry.tc` (3) → `TaskCoreEntry.timers` (7) → `TaskTimersEntry.posix` (4), a
    /// `PosixTimerEntry` (CRIU's images/timer.proto).
    pub fn with_sigcont_timer(image: &[u8]) -> Vec<u8> {
        const SIGCONT: u64 = 18;
        const CLOCK_MONOTONIC: u64 = 1;
        const MILLISECOND: u64 = 1_000_000;
        let size = u32::from_le_bytes(image[8..12].try_into().unwrap()) as usize;
        assert_eq!(12 + size, image.len(), "one entry after two magic words");
        let core = edit(&image[12..], 3, &|task_core| {
            edit(task_core, 7, &|timers| {
                // it_id, clock_id, si_signo, it_sigev_notify (SIGEV_SIGNAL), sival_ptr,
                // overrun, interval (isec, insec), value left (vsec, vnsec).
                let fields = [
                    (1, 0),
                    (2, CLOCK_MONOTONIC),
                    (3, SIGCONT),
                    (4, 0),
                    (5, 0),
                    (6, 0),
                    (7, 0),
                    (8, MILLISECOND),
                    (9, 0),
                    (10, MILLISECOND),
                ];
                let mut timer = Vec::new();
                for (number, value) in fields {
                    varint(&mut timer, number << 3);
                    varint(&mut timer, value);
                }
                let mut out = timers.to_vec();
                varint(&mut out, 4 << 3 | 2);
                varint(&mut out, timer.len() as u64);
                out.extend(timer);
                out
            })
        });
        let mut out = image[..8].to_vec();
        out.extend((core.len() as u32).to_le_bytes());
        out.extend(core);
        out
    }

    /// The creds with the raised sets replaced by the host's root's ([`host_root`]).
    fn raise(creds: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut replaced = Vec::new();
        for (number, wire, body) in fields(creds) {
            if RAISED.contains(&number) {
                if !replaced.contains(&number) {
                    replaced.push(number);
                    let full = host_root();
                    for word in [full & 0xffff_ffff, full >> 32] {
                        varint(&mut out, number << 3);
                        varint(&mut out, word);
                    }
                }
                continue;
            }
            out.extend(body_with_key(number, wire, body));
        }
        assert_eq!(
            replaced.len(),
            RAISED.len(),
            "the image holds the three sets"
        );
        out
    }

    /// `message` with its length-delimited field `number` rewritten by `change`.
    fn edit(message: &[u8], number: u64, change: &dyn Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut found = false;
        for (n, wire, body) in fields(message) {
            if n == number && wire == 2 {
                found = true;
                let (len, at) = read_varint(body);
                let changed = change(&body[at..at + len as usize]);
                varint(&mut out, n << 3 | 2);
                varint(&mut out, changed.len() as u64);
                out.extend(changed);
            } else {
                out.extend(body_with_key(n, wire, body));
            }
        }
        assert!(found, "field {number} in the image");
        out
    }

    pub(crate) fn body_with_key(number: u64, wire: u64, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(&mut out, number << 3 | wire);
        out.extend(body);
        out
    }

    /// Each field: (number, wire type, its encoded value — for type 2 with its length).
    pub(crate) fn fields(mut message: &[u8]) -> Vec<(u64, u64, &[u8])> {
        let mut all = Vec::new();
        while !message.is_empty() {
            let (key, at) = read_varint(message);
            message = &message[at..];
            let len = match key & 7 {
                0 => read_varint(message).1,
                1 => 8,
                2 => {
                    let (len, at) = read_varint(message);
                    at + len as usize
                }
                5 => 4,
                other => panic!("wire type {other} in a CRIU image"),
            };
            all.push((key >> 3, key & 7, &message[..len]));
            message = &message[len..];
        }
        all
    }

    pub(crate) fn read_varint(bytes: &[u8]) -> (u64, usize) {
        let mut value = 0;
        for (i, byte) in bytes.iter().enumerate() {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return (value, i + 1);
            }
        }
        panic!("a truncated varint");
    }

    pub(crate) fn varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push(value as u8 | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }
}
