//! What a restored VM's processes came back with, checked before any of them runs.
//!
//! CRIU runs as the host's root and gives each task the credentials its images say: capability
//! sets, seccomp filters, namespaces. The images of an imported archive or of a migration's
//! sender are not the host's own, so a crafted core image could bring the VM's init back with
//! every capability and no filter. The check reads the result, not the images: while CRIU left
//! the tree stopped, every thread's `/proc/PID/task/TID/status` and namespaces, against what a
//! process of this VM can ever hold:
//! - capabilities (bounding, permitted, effective, inheritable, ambient) within the VM's set
//!   ([`feather_confine::capabilities::DEFAULT_SET`]); the spawner, init's child named
//!   `feather-spawner`, may hold CAP_SYS_ADMIN besides (its recipe's mounts);
//! - seccomp mode 2 (filter), under at least as many filters as the VM's config installs,
//!   whose first ones are feather's own programs, instruction by instruction (read with
//!   `PTRACE_SECCOMP_GET_FILTER`, the keeper seizing each stopped thread for the read): the
//!   VM's (init and what it starts), the spawner's (the spawner), or the spawner's then the
//!   VM's (what the spawner starts). Filters above them are the VM's own to choose (a unit's
//!   `SystemCallFilter=`): a stacked filter can only refuse more. The VM's configuration's
//!   programs, or a stricter one's (a checkpoint made under it, restored under a wider one),
//!   each as this build compiles them, as builds before 2026-12-06 did (older rules: a
//!   private spawner's namespace, `open_tree_attr` let through:
//!   feather_confine::seccomp::Generation) or as builds before 2026-12-05 did (those rules,
//!   and every rule twice, for x32: feather_confine::seccomp::Layout), whose checkpoints bring
//!   theirs back. Those older programs are weaker: `open_tree_attr` passes them, and on a
//!   kernel with x32 enabled the duplicated ones let x32's own numbers (its `ioctl` 514,
//!   `kexec_load` 528, …) through (docs/confinement.md). Accepted all the same, so that a
//!   checkpoint survives an upgrade; its processes get this build's filters when they restart;
//! - the host's user namespace, where the VM lives, or, for a VM created with
//!   `--allow-userns`, one below it (which a VM's process may make, and where it holds every
//!   capability over that namespace's own objects only: its sets are not measured there) —
//!   init itself always in the host's (a user namespace CRIU made for the whole tree would
//!   own the VM's other namespaces and give init every capability over them);
//! - pid, mount, network (but for `--net host`), IPC and UTS namespaces none of which is the
//!   keeper's, and a
//!   mount namespace that is not the restoring child's either (its copy of the host's tree,
//!   where CRIU runs): an inventory that leaves a kind out makes CRIU restore the tree in
//!   criu's own, which is the host's or that copy.
//!
//! The restored mount tree is checked after it ([`crate::restored_mounts`]); what neither
//! sees is in docs/security.md (Known gaps) and docs/migration.md. Reading a thread and
//! walking the tree are [`feather_confine::restored`]'s, which feather-oci's restore shares.

use std::fs;
use std::path::Path;

use feather_confine::restored::namespace;
use feather_confine::seccomp::{Compiled, Generation, Layout};
use nix::unistd::Pid;

use crate::error::{failed, VmError};

/// The seccomp filter a VM's config asks for (docs/confinement.md).
pub(crate) fn seccomp_profile(
    config: &feather_core::VmConfig,
) -> feather_confine::seccomp::Profile {
    feather_confine::seccomp::Profile {
        allow_userns: config.allow_userns,
        disk_quota: matches!(
            config.limits.disk,
            Some(feather_core::DiskQuota::ProjectQuota { .. })
        ),
    }
}

/// The name the spawner gives itself (spawner.rs).
const SPAWNER: &str = "feather-spawner";

pub(crate) use feather_confine::restored::{Credentials, Program};

/// What a process of the VM may hold.
#[derive(Clone, Debug)]
pub(crate) struct Allowed {
    /// Any process's capability sets.
    pub caps: u64,
    /// The spawner's.
    pub spawner_caps: u64,
    /// The fewest seccomp filters.
    pub filters: u32,
    /// Whether a process may be in a user namespace of its own.
    pub userns: bool,
    /// Whether the VM shares the host's network namespace (`--net host`).
    pub host_network: bool,
    /// For the VM's profile, then each stricter one (a checkpoint made under a stricter
    /// configuration, restored under this one): the filters init installs and every process
    /// of the VM enters, and the spawner's own; each the first installed first. Each as this
    /// build compiles them, then as builds before 2026-12-06 did, then as builds before
    /// 2026-12-05 did (their checkpoints bring back those programs: a restored init keeps its
    /// own compiled filters, so its VM holds one build's rules and layout throughout).
    pub stacks: Vec<Stacks>,
}

/// The filters feather installs for one profile.
#[derive(Clone, Debug)]
pub(crate) struct Stacks {
    pub vm: Vec<Program>,
    pub spawner: Vec<Program>,
}

impl Allowed {
    pub(crate) fn for_vm(
        profile: feather_confine::seccomp::Profile,
        host_network: bool,
    ) -> Result<Allowed, feather_confine::seccomp::SeccompError> {
        Ok(Allowed {
            caps: feather_confine::capabilities::default_mask(),
            spawner_caps: feather_confine::capabilities::spawner_mask(),
            filters: feather_confine::seccomp::filter_count(profile) as u32,
            userns: profile.allow_userns,
            host_network,
            // This build's rules; earlier builds of 2026-12-06 had another spawner's (it made
            // its namespace by unshare, unlocked) and let the io_uring calls through, builds before 2026-12-06 older ones (their
            // spawner made its namespace private, and their filters let open_tree_attr
            // through: feather_confine::seccomp::Generation), those before 2026-12-05 also laid
            // every program out the older way.
            stacks: [
                (Layout::Folded, Generation::Current),
                (Layout::Folded, Generation::Unlocked20261206),
                (Layout::Folded, Generation::Before20261206),
                (Layout::Duplicated, Generation::Before20261206),
            ]
            .into_iter()
            .flat_map(|(layout, generation)| {
                profile
                    .with_stricter()
                    .into_iter()
                    .map(move |profile| (profile, layout, generation))
            })
            .map(|(profile, layout, generation)| {
                Ok(Stacks {
                    vm: Compiled::in_layout(profile, layout, generation)?.stack(),
                    spawner: feather_confine::seccomp::spawner_stack(profile, layout, generation)?,
                })
            })
            .collect::<Result<_, feather_confine::seccomp::SeccompError>>()?,
        })
    }

    /// The stacks feather leaves at the bottom of a thread's filters: the spawner's for the
    /// spawner; the VM's, or the spawner's under the VM's (what the spawner starts), for any
    /// other.
    fn feathers_stacks(&self, spawner: bool) -> Vec<Vec<&Program>> {
        let mut all = Vec::new();
        for stacks in &self.stacks {
            if spawner {
                all.push(stacks.spawner.iter().collect());
            } else {
                all.push(stacks.vm.iter().collect());
                all.push(stacks.spawner.iter().chain(&stacks.vm).collect());
            }
        }
        all
    }
}

/// Why a thread's filters (`held`, the first installed first) do not start with feather's,
/// for the user; None when one of feather's stacks for it is at their bottom, in order.
pub(crate) fn foreign_filters(
    held: &[Program],
    spawner: bool,
    allowed: &Allowed,
) -> Option<String> {
    feather_confine::restored::foreign_filters(held, allowed.feathers_stacks(spawner))
}

/// Why one thread's credentials are more than the VM may hold, for the user.
pub(crate) fn excess(creds: &Credentials, spawner: bool, allowed: &Allowed) -> Option<String> {
    let may = if spawner {
        allowed.spawner_caps
    } else {
        allowed.caps
    };
    for (field, held) in &creds.caps {
        let beyond = held & !may;
        if beyond != 0 {
            return Some(format!(
                "{field} holds {held:016x}, with {} beyond the VM's set {may:016x} ({})",
                feather_confine::capabilities::names_of(beyond).join(", "),
                feather_confine::capabilities::names_of(may).join(", "),
            ));
        }
    }
    if creds.seccomp != 2 {
        return Some(format!(
            "Seccomp is {}, where every process of the VM runs under its filter (mode 2)",
            creds.seccomp
        ));
    }
    match creds.filters {
        Some(count) if count < allowed.filters => Some(format!(
            "Seccomp_filters is {count}, where a process of this VM runs under at least {}",
            allowed.filters
        )),
        _ => None,
    }
}

/// The kinds of namespace every VM has of its own, with the names the user reads.
const OWN_NAMESPACES: [(&str, &str); 5] = [
    ("pid", "pid"),
    ("mnt", "mount"),
    ("net", "network"),
    ("ipc", "IPC"),
    ("uts", "UTS"),
];

/// The namespaces the VM's processes must not be in: the keeper's own (the host's) of each
/// kind, and the restoring child's mount namespace. Its user namespace they must share, or be
/// below with `--allow-userns`.
struct Host {
    user: std::path::PathBuf,
    own: Vec<(&'static str, std::path::PathBuf)>,
    restoring_mnt: Option<std::path::PathBuf>,
}

/// Checks every thread of the tree under `init` (a host pid), held still in `hold`'s frozen
/// group, and of every process of that group (`feather_confine::restored::walk_tree`); the
/// first thread found holding more than `allowed` refuses, naming it. `restoring_mnt`: the
/// mount namespace CRIU ran in (`mnt:[…]`, as /proc shows it).
pub(crate) fn check_tree(
    vm: &impl std::fmt::Display,
    init: Pid,
    allowed: &Allowed,
    restoring_mnt: Option<&Path>,
    hold: &feather_confine::held::Hold,
) -> Result<(), VmError> {
    let me = Path::new("/proc/self");
    let unreadable = |what: &str, e: std::io::Error| {
        failed(
            vm,
            format!("cannot read {what} to check the restored processes: {e}"),
        )
    };
    let keepers =
        |kind: &str| namespace(me, kind).map_err(|e| unreadable("the keeper's namespaces", e));
    let mut own = Vec::new();
    for (kind, _) in OWN_NAMESPACES {
        if kind == "net" && allowed.host_network {
            continue;
        }
        own.push((kind, keepers(kind)?));
    }
    let host = Host {
        user: keepers("user")?,
        own,
        restoring_mnt: restoring_mnt.map(Path::to_path_buf),
    };
    feather_confine::restored::walk_tree(
        init.as_raw(),
        hold,
        |thread| {
            let place = Place {
                init: thread.init,
                child_of_init: thread.child_of_init,
            };
            check_thread(
                vm,
                Pid::from_raw(thread.pid),
                thread.path,
                place,
                allowed,
                &host,
            )
        },
        |unchecked| failed(vm, unchecked.to_string()),
    )
}

/// Where a process stands in the restored tree.
#[derive(Clone, Copy)]
struct Place {
    init: bool,
    child_of_init: bool,
}

fn check_thread(
    vm: &impl std::fmt::Display,
    pid: Pid,
    thread: &Path,
    place: Place,
    allowed: &Allowed,
    host: &Host,
) -> Result<(), VmError> {
    let status_path = thread.join("status");
    let status = fs::read_to_string(&status_path).map_err(|e| {
        failed(
            vm,
            format!(
                "cannot read {} to check the restored processes: {e}",
                status_path.display()
            ),
        )
    })?;
    let creds = Credentials::parse(&status).ok_or_else(|| {
        failed(
            vm,
            format!("cannot read the credentials in {}", status_path.display()),
        )
    })?;
    // CRIU restores zombies too (a child its parent has not waited for).
    if creds.ended {
        return Ok(());
    }
    let tid = feather_confine::restored::thread_id(thread);
    let refuse = |why: String| {
        failed(
            vm,
            format!(
                "refusing the restore: its process {pid} (thread {tid}, {:?}) came back with more \
                 than a process of this VM may hold: {why}. Its checkpoint was made under \
                 another configuration or altered, and is kept as it was: restore it under the \
                 configuration it was made with, or one from a source you trust; or remove the \
                 VM (`feather rm {vm}`)",
                creds.name
            ),
        )
    };
    let ns = |kind: &str| {
        namespace(thread, kind).map_err(|e| {
            failed(
                vm,
                format!("cannot read the namespaces of {}: {e}", thread.display()),
            )
        })
    };
    for (kind, hosts) in &host.own {
        if ns(kind)? == *hosts {
            let said = OWN_NAMESPACES
                .iter()
                .find(|(k, _)| k == kind)
                .map_or(*kind, |(_, s)| *s);
            return Err(refuse(format!(
                "it is in the host's {said} namespace, not one of the VM's"
            )));
        }
    }
    if host.restoring_mnt.as_deref() == Some(ns("mnt")?.as_path()) {
        return Err(refuse(
            "it is in the mount namespace CRIU ran in (a copy of the host's tree), not the VM's"
                .into(),
        ));
    }
    let user = ns("user")?;
    if user != host.user && place.init {
        return Err(refuse(format!(
            "its init is in a user namespace ({}) other than the host's, which would own the \
             VM's namespaces",
            user.display()
        )));
    }
    let mut spawner = place.child_of_init && creds.name == SPAWNER;
    let mut measured = creds.clone();
    if user != host.user {
        if !allowed.userns {
            return Err(refuse(format!(
                "it is in a user namespace ({}) of its own, which this VM may not make \
                 (created without --allow-userns)",
                user.display()
            )));
        }
        // Capabilities in a namespace the VM made act on that namespace's objects only.
        measured.caps.clear();
        spawner = false;
    }
    if let Some(why) = excess(&measured, spawner, allowed) {
        return Err(refuse(why));
    }
    let unreadable = |why: String| {
        failed(
            vm,
            format!(
                "cannot read the seccomp filters of {}: {why}",
                thread.display()
            ),
        )
    };
    let number = tid
        .parse()
        .map_err(|_| unreadable("not a thread id".into()))?;
    let held = feather_sys::seccomp::filters_of(number)
        .map_err(|e| unreadable(feather_core::error::causes(&e)))?;
    foreign_filters(&held, spawner, allowed).map_or(Ok(()), |why| Err(refuse(why)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use feather_confine::held::TestGroup;

    /// `pid` held still as a restore holds the restored tree (declared after its process).
    fn held(label: &str, pid: Pid) -> TestGroup {
        TestGroup::frozen(&format!("vm-{label}"), &[pid.as_raw()]).unwrap()
    }

    fn vm() -> Allowed {
        Allowed::for_vm(feather_confine::seccomp::Profile::default(), false).unwrap()
    }

    fn status(caps: u64, seccomp: u32, filters: u32) -> String {
        format!(
            "Name:\tsh\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n\
             CapInh:\t0000000000000000\nCapPrm:\t{caps:016x}\nCapEff:\t{caps:016x}\n\
             CapBnd:\t{caps:016x}\nCapAmb:\t0000000000000000\nNoNewPrivs:\t0\n\
             Seccomp:\t{seccomp}\nSeccomp_filters:\t{filters}\n"
        )
    }

    /// A process as init leaves it (the VM's set, its two filters) passes; one more capability,
    /// no filter or one filter fewer refuses, naming the field.
    #[test]
    fn measured_against_the_vm_set_and_filters() {
        let allowed = vm();
        let ok = Credentials::parse(&status(allowed.caps, 2, 2)).unwrap();
        assert_eq!(excess(&ok, false, &allowed), None);
        // A kernel that does not count filters: the mode is what is checked.
        let uncounted = status(allowed.caps, 2, 0).replace("Seccomp_filters:\t0\n", "");
        let uncounted = Credentials::parse(&uncounted).unwrap();
        assert_eq!(uncounted.filters, None);
        assert_eq!(excess(&uncounted, false, &allowed), None);
        assert!(!ok.ended);
        let zombie = format!("State:\tZ (zombie)\n{}", status(0, 0, 0));
        assert!(Credentials::parse(&zombie).unwrap().ended);
        let admin = 1u64 << 21;
        let raised = Credentials::parse(&status(allowed.caps | admin, 2, 2)).unwrap();
        let why = excess(&raised, false, &allowed).unwrap();
        assert!(
            why.starts_with("CapBnd") && why.contains("CAP_SYS_ADMIN"),
            "{why}"
        );
        assert_eq!(excess(&raised, true, &allowed), None, "the spawner's set");
        let module = 1u64 << 16;
        let why = excess(
            &Credentials::parse(&status(allowed.caps | module, 2, 2)).unwrap(),
            true,
            &allowed,
        )
        .unwrap();
        assert!(why.contains("CAP_SYS_MODULE"), "{why}");
        let why = excess(
            &Credentials::parse(&status(allowed.caps, 0, 0)).unwrap(),
            false,
            &allowed,
        )
        .unwrap();
        assert!(why.starts_with("Seccomp is 0"), "{why}");
        let why = excess(
            &Credentials::parse(&status(allowed.caps, 2, 1)).unwrap(),
            false,
            &allowed,
        )
        .unwrap();
        assert!(why.starts_with("Seccomp_filters is 1"), "{why}");
    }

    /// The process `unshare --fork` started (its child), once there.
    fn forked_by(unshare: &Started) -> Pid {
        let children = format!("/proc/{0}/task/{0}/children", unshare.0.id());
        for _ in 0..500 {
            let child = fs::read_to_string(&children).unwrap_or_default();
            if let Some(pid) = child.split_whitespace().next() {
                return Pid::from_raw(pid.parse().unwrap());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("unshare started no child");
    }

    fn unshared(flags: &[&str]) -> Started {
        let args = [flags, &["--fork", "--kill-child", "sleep", "60"][..]].concat();
        Started(
            feather_testkit::command_without_stdio("unshare", &args)
                .spawn()
                .unwrap(),
        )
    }

    /// A tree restored into namespaces an altered inventory left out is the host's in those:
    /// a process with its own pid and mount namespaces but the host's network, IPC or UTS one
    /// is refused, naming the kind; an init in a user namespace of its own (which would own
    /// the VM's other namespaces) is refused even where the VM may make user namespaces.
    #[test]
    fn a_process_in_the_hosts_namespaces_or_an_init_in_a_user_namespace_is_refused() {
        let shares = |flags: &[&str], kind: &str| {
            let unshare = unshared(flags);
            let init = forked_by(&unshare);
            let group = held("shares", init);
            let why = feather_core::error::causes(
                &check_tree(&"test", init, &vm(), None, group.hold()).unwrap_err(),
            );
            assert!(
                why.contains(&format!("the host's {kind} namespace")),
                "{why}"
            );
        };
        shares(&["--pid", "--mount"], "network");
        shares(&["--pid", "--mount", "--net"], "IPC");
        shares(&["--pid", "--mount", "--net", "--ipc"], "UTS");
        let all = ["--pid", "--mount", "--net", "--ipc", "--uts"];
        let unshare = unshared(&all);
        let init = forked_by(&unshare);
        let group = held("all", init);
        // Its own mount namespace named as CRIU's: refused too.
        let mnt = fs::read_link(format!("/proc/{init}/ns/mnt")).unwrap();
        let why = feather_core::error::causes(
            &check_tree(&"test", init, &vm(), Some(&mnt), group.hold()).unwrap_err(),
        );
        drop(group);
        assert!(why.contains("the mount namespace CRIU ran in"), "{why}");
        let mut userns = vm();
        userns.userns = true;
        let unshare = unshared(&[&all[..], &["--user", "--map-root-user"]].concat());
        let init = forked_by(&unshare);
        let group = held("userns", init);
        let why = feather_core::error::causes(
            &check_tree(&"test", init, &userns, None, group.hold()).unwrap_err(),
        );
        assert!(why.contains("its init is in a user namespace"), "{why}");
    }

    /// Ends a process the test started, by its pid, on drop.
    struct Started(std::process::Child);

    impl Drop for Started {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn real(child: &Started) -> Credentials {
        let status = fs::read_to_string(format!("/proc/{}/status", child.0.id())).unwrap();
        Credentials::parse(&status).unwrap()
    }

    /// The real /proc of processes the test starts: as the host's root (every capability, no
    /// filter, the host's namespaces) refused on its bounding set and on its namespaces; with
    /// its sets reduced to the VM's by setpriv, refused still for lacking the filter.
    #[test]
    fn real_processes_are_measured() {
        let root = Started(
            std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap(),
        );
        let why = excess(&real(&root), false, &vm()).unwrap();
        assert!(
            why.starts_with("CapBnd") && why.contains("CAP_SYS_MODULE"),
            "{why}"
        );
        let pid = Pid::from_raw(root.0.id() as i32);
        let group = held("real", pid);
        let why = feather_core::error::causes(
            &check_tree(&"test", pid, &vm(), None, group.hold()).unwrap_err(),
        );
        drop(group);
        assert!(why.contains("the host's pid namespace"), "{why}");
        let keep = feather_confine::capabilities::names_of(vm().caps)
            .iter()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect::<Vec<_>>()
            .join(",");
        let reduced = Started(
            std::process::Command::new("setpriv")
                .arg(format!("--bounding-set=-all,{keep}"))
                .arg(format!("--inh-caps=-all,{keep}"))
                .args(["sleep", "60"])
                .spawn()
                .unwrap(),
        );
        // setpriv has exec'd sleep once /proc names it so.
        for _ in 0..500 {
            if real(&reduced).name == "sleep" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let creds = real(&reduced);
        assert_eq!(creds.caps[0], ("CapBnd", vm().caps), "{creds:?}");
        let why = excess(&creds, false, &vm()).unwrap();
        assert!(why.starts_with("Seccomp is 0"), "{why}");
    }

    /// Installs each program (hex of its `struct sock_filter`s) as a filter, the first first,
    /// as root (CAP_SYS_ADMIN, so without no_new_privs), then becomes `sleep 60`.
    const UNDER_FILTERS: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
kept = []
for program in sys.argv[1:]:
    code = ctypes.create_string_buffer(bytes.fromhex(program))
    kept.append(code)
    fprog = Fprog(len(bytes.fromhex(program)) // 8, ctypes.cast(code, ctypes.c_void_p))
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:
        sys.exit("prctl(PR_SET_SECCOMP): %s" % os.strerror(ctypes.get_errno()))
os.execvp("sleep", ["sleep", "60"])
"#;

    fn hex(program: &Program) -> String {
        feather_sys::seccomp::as_bytes(program)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A process of the test's under `stack`, once it runs `sleep` (its filters installed).
    fn under(stack: &[&Program]) -> Started {
        let child = Started(
            std::process::Command::new("python3")
                .args(["-c", UNDER_FILTERS])
                .args(stack.iter().map(|p| hex(p)))
                .spawn()
                .unwrap(),
        );
        for _ in 0..500 {
            if real(&child).name == "sleep" {
                return child;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the process under filters did not start sleep");
    }

    fn filters_of(child: &Started) -> Vec<Program> {
        feather_sys::seccomp::filters_of(child.0.id() as i32).unwrap()
    }

    /// A checkpoint of a build before the x32 folding (feather_confine::seccomp::Layout)
    /// brings its processes back under that build's longer programs: the VM's stack, the
    /// spawner's, and the spawner's under the VM's, read back from real processes, pass. A
    /// stack mixing the two layouts, or an old program altered by one instruction, refuses.
    #[test]
    fn the_previous_builds_filters_pass_and_altered_ones_refuse() {
        let allowed = vm();
        let profile = feather_confine::seccomp::Profile::default();
        let before = Generation::Before20261206;
        let old_vm = Compiled::in_layout(profile, Layout::Duplicated, before)
            .unwrap()
            .stack();
        let old_spawner =
            feather_confine::seccomp::spawner_stack(profile, Layout::Duplicated, before).unwrap();
        let new_vm = Compiled::new(profile).unwrap().stack();
        assert_ne!(old_vm[1].len(), new_vm[1].len());

        let init = under(&old_vm.iter().collect::<Vec<_>>());
        assert_eq!(foreign_filters(&filters_of(&init), false, &allowed), None);
        let spawner = under(&old_spawner.iter().collect::<Vec<_>>());
        assert_eq!(foreign_filters(&filters_of(&spawner), true, &allowed), None);
        let spawned: Vec<&Program> = old_spawner.iter().chain(&old_vm).collect();
        assert_eq!(
            foreign_filters(&filters_of(&under(&spawned)), false, &allowed),
            None
        );
        // The filters of the builds before 2026-12-06 (the folded layout already), whose
        // spawner made its namespace private and whose rules let open_tree_attr and io_uring
        // through, and of those up to ff32a5d (their spawner made its namespace by unshare, and
        // their filters let io_uring through): the VM's stack, the spawner's, and the
        // spawner's under the VM's.
        for earlier in [before, Generation::Unlocked20261206] {
            let folded_vm = Compiled::in_layout(profile, Layout::Folded, earlier)
                .unwrap()
                .stack();
            assert_ne!(folded_vm, new_vm);
            let init = under(&folded_vm.iter().collect::<Vec<_>>());
            assert_eq!(foreign_filters(&filters_of(&init), false, &allowed), None);
            let earlier_spawner =
                feather_confine::seccomp::spawner_stack(profile, Layout::Folded, earlier).unwrap();
            let spawner = under(&earlier_spawner.iter().collect::<Vec<_>>());
            assert_eq!(foreign_filters(&filters_of(&spawner), true, &allowed), None);
            let spawned: Vec<&Program> = earlier_spawner.iter().chain(&folded_vm).collect();
            assert_eq!(
                foreign_filters(&filters_of(&under(&spawned)), false, &allowed),
                None,
                "{earlier:?}"
            );
        }

        let mixed = under(&[&new_vm[0], &old_vm[1]]);
        let why = foreign_filters(&filters_of(&mixed), false, &allowed).unwrap();
        assert!(why.starts_with("its seccomp filter 2 "), "{why}");
        // The first number compared (ioctl's, the lowest) made another call's.
        let mut altered = old_vm[1].clone();
        let at = altered
            .iter()
            .position(|i| {
                i.code == (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16 && i.jf == 1
            })
            .unwrap();
        altered[at].k += 1;
        let why = foreign_filters(
            &filters_of(&under(&[&old_vm[0], &altered])),
            false,
            &allowed,
        )
        .unwrap();
        assert!(
            why.starts_with("its seccomp filter 2 ")
                && why.contains(&format!("instruction {at} on")),
            "{why}"
        );
    }

    /// Filters read back from real processes (one stopped as CRIU leaves a tree, the others
    /// running): feather's stacks at the bottom pass, with a unit's own filter above them or
    /// not; an allow-all filter under them, one in place of one of them, or a stack lacking
    /// them refuses, naming the filter.
    #[test]
    fn the_filters_of_real_processes_are_compared_with_feathers() {
        let allowed = vm();
        let allow_all: Program = vec![feather_sys::seccomp::Instruction {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        }];
        let vm_stack: Vec<&Program> = allowed.stacks[0].vm.iter().collect();
        let spawner_stack: Vec<&Program> = allowed.stacks[0].spawner.iter().collect();

        let init = under(&vm_stack);
        nix::sys::signal::kill(
            Pid::from_raw(init.0.id() as i32),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .unwrap();
        for _ in 0..500 {
            let status = fs::read_to_string(format!("/proc/{}/status", init.0.id())).unwrap();
            if status.contains("State:\tT") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let held = filters_of(&init);
        assert_eq!(held.len(), 2);
        assert_eq!(foreign_filters(&held, false, &allowed), None);
        // The detach wakes a thread that was in a group stop for it to enter the stop again,
        // in the kernel, before any return to its own code: it may read running a moment.
        let mut status = String::new();
        for _ in 0..500 {
            status = fs::read_to_string(format!("/proc/{}/status", init.0.id())).unwrap();
            if status.contains("State:\tT (stopped)") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            status.contains("State:\tT (stopped)"),
            "left stopped: {status}"
        );
        let why = foreign_filters(&held, true, &allowed).unwrap();
        assert!(why.starts_with("its seccomp filter 2"), "{why}");

        let mut with_units = vm_stack.clone();
        with_units.push(&allow_all);
        let unit = under(&with_units);
        assert_eq!(foreign_filters(&filters_of(&unit), false, &allowed), None);

        let spawner = under(&spawner_stack);
        assert_eq!(foreign_filters(&filters_of(&spawner), true, &allowed), None);
        let why = foreign_filters(&filters_of(&spawner), false, &allowed).unwrap();
        assert!(why.contains("under 2 seccomp filters"), "{why}");
        let spawned: Vec<&Program> = spawner_stack.iter().chain(&vm_stack).copied().collect();
        let spawned = under(&spawned);
        assert_eq!(
            foreign_filters(&filters_of(&spawned), false, &allowed),
            None
        );

        let mut beneath = vec![&allow_all];
        beneath.extend(&vm_stack);
        let why = foreign_filters(&filters_of(&under(&beneath)), false, &allowed).unwrap();
        assert!(why.starts_with("its seccomp filter 1 "), "{why}");
        let replaced = under(&[vm_stack[0], &allow_all]);
        let why = foreign_filters(&filters_of(&replaced), false, &allowed).unwrap();
        assert!(
            why.starts_with("its seccomp filter 2 ") && why.contains("1 instructions"),
            "{why}"
        );
        let stacked = under(&[&allow_all, &allow_all, &allow_all]);
        let why = foreign_filters(&filters_of(&stacked), false, &allowed).unwrap();
        assert!(why.starts_with("its seccomp filter 1 "), "{why}");

        // A checkpoint made under a stricter configuration restores under a wider one (an
        // import given --allow-userns), never the other way round.
        let wider = Allowed::for_vm(
            feather_confine::seccomp::Profile {
                allow_userns: true,
                ..Default::default()
            },
            false,
        )
        .unwrap();
        assert_eq!(foreign_filters(&held, false, &wider), None);
        let wide_stack: Vec<&Program> = wider.stacks[0].vm.iter().collect();
        let wide = under(&wide_stack);
        assert_eq!(foreign_filters(&filters_of(&wide), false, &wider), None);
        let why = foreign_filters(&filters_of(&wide), false, &allowed).unwrap();
        assert!(why.starts_with("its seccomp filter 1 "), "{why}");
    }
}
