//! What a restored container's processes came back with, checked while CRIU leaves the tree
//! stopped, before any of it runs ([`crate::restore`]).
//!
//! CRIU runs as the host's root and gives each task the capabilities, seccomp filters and
//! namespaces its images say; a checkpoint this host did not take (an imported archive, a
//! pulled checkpoint image) may say any. Each thread of the tree, as
//! `/proc/PID/task/TID` shows it (read with [`feather_confine::restored`], as `feather
//! restore` reads a VM's), must hold no more than a process of this config can:
//! - each capability set within the config's bounding set and that same set of
//!   `process.capabilities` (a set-uid or file-capability program fills its permitted and
//!   effective sets from the bounding set; not under `process.noNewPrivileges`). Measured in
//!   the container's user namespace (the host's, or the init's when the config gives it one);
//!   a thread in a user namespace the container made holds capabilities over that
//!   namespace's objects only;
//! - the seccomp filters feather-oci installs for the config at the bottom of its stack: the
//!   config's `linux.seccomp` as feather-oci compiles it, then feather's deny list
//!   (`org.feather.confine`); above them, filters the container stacked itself. None when the
//!   config installs none;
//! - for each kind of namespace the config gives the container its own, not the host's (the
//!   runtime's) and, for the mount namespace, not the one CRIU ran in (a copy of the host's
//!   tree); without a user namespace of its own, the init in the host's; with one, the init's
//!   `uid_map` and `gid_map` the config's mappings (CRIU writes the images');
//! - its ids, as the host sees them: under `noNewPrivileges`, `NoNewPrivs` set and each uid
//!   (gid) `process.user`'s unless the config permits CAP_SETUID (CAP_SETGID); without it any
//!   id is reachable (set-uid programs). Its groups within `additionalGids` and the gid unless
//!   CAP_SETGID is reachable.
//!
//! The restored mount tree is checked beside it ([`crate::restored_mounts`]); its automatic
//! binds are checked before CRIU runs ([`crate::restore`]).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use feather_confine::held::Hold;
use feather_confine::restored::{foreign_filters, namespace, walk_tree, Credentials, Program};
use oci_spec::runtime::{LinuxCapabilities, LinuxIdMapping, LinuxNamespaceType, Spec};

/// What a process of the container may hold.
pub struct Allowed {
    /// (status field, mask) for each capability set.
    caps: Vec<(&'static str, u64)>,
    /// The filters feather-oci installs, the first installed first; empty: none.
    filters: Vec<Program>,
    /// The kinds the container has of its own: (/proc's name, the user's).
    own: Vec<(&'static str, &'static str)>,
    /// The ids its threads may have, as the host sees them.
    ids: Ids,
    /// The config's `linux.uidMappings` and `gidMappings` as `create` writes them (sorted
    /// ranges), where it gives the container a new user namespace.
    maps: Option<[IdMap; 2]>,
}

/// An id map: (the config's field, /proc's file, its ranges: inside, outside, count).
type IdMap = (&'static str, &'static str, Vec<[u64; 3]>);

/// The ids a process of the config can have, as the host sees them (through the config's
/// mappings where it has a user namespace); None: any.
#[derive(Debug, PartialEq)]
struct Ids {
    no_new_privs: bool,
    uid: Option<u32>,
    gid: Option<u32>,
    /// The groups it may be in (`additionalGids` and the gid).
    groups: Option<Vec<u32>>,
}

/// The kinds of namespace: /proc's name, the config's type, the user's name.
const KINDS: [(&str, LinuxNamespaceType, &str); 8] = [
    ("pid", LinuxNamespaceType::Pid, "pid"),
    ("mnt", LinuxNamespaceType::Mount, "mount"),
    ("net", LinuxNamespaceType::Network, "network"),
    ("ipc", LinuxNamespaceType::Ipc, "IPC"),
    ("uts", LinuxNamespaceType::Uts, "UTS"),
    ("user", LinuxNamespaceType::User, "user"),
    ("cgroup", LinuxNamespaceType::Cgroup, "cgroup"),
    ("time", LinuxNamespaceType::Time, "time"),
];

impl Allowed {
    pub fn for_config(spec: &Spec) -> Result<Allowed> {
        let process = spec.process().as_ref().context("process")?;
        let given = process.capabilities().as_ref();
        let set = |pick: Pick, field: &str| {
            crate::process::cap_set(given.and_then(|g| pick(g).as_ref()), field).map(|s| mask(&s))
        };
        let bounding = set(|g| g.bounding(), "process.capabilities.bounding")?;
        let permitted = set(|g| g.permitted(), "process.capabilities.permitted")?;
        let no_new_privs = process.no_new_privileges().unwrap_or(false);
        // What a set-uid or file-capability program may add: the bounding set, none under
        // no_new_privs (execve then keeps the permitted set within the one it had).
        let gained = if no_new_privs { 0 } else { bounding };
        let caps = vec![
            ("CapBnd", bounding),
            ("CapPrm", gained | permitted),
            (
                "CapEff",
                gained | permitted | set(|g| g.effective(), "process.capabilities.effective")?,
            ),
            (
                "CapInh",
                bounding | set(|g| g.inheritable(), "process.capabilities.inheritable")?,
            ),
            (
                "CapAmb",
                gained | permitted | set(|g| g.ambient(), "process.capabilities.ambient")?,
            ),
        ];
        let ids = Ids::for_config(spec, no_new_privs, gained | permitted)?;
        let feather = crate::annotations::Feather::parse(spec)?;
        let confinement = crate::confine::Confinement::of(feather.confine, spec);
        let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
        let mut compiled = seccomp
            .as_ref()
            .map(crate::seccomp::compile)
            .transpose()?
            .unwrap_or_default();
        compiled.extend(confinement.filters()?);
        let filters = compiled
            .into_iter()
            .map(feather_sys::seccomp::from_seccompiler)
            .collect();
        let own = KINDS
            .iter()
            .filter(|(_, typ, _)| !crate::confine::shares_host_namespace(spec, *typ))
            .map(|(kind, _, said)| (*kind, *said))
            .collect();
        let maps = crate::userns::is_new(spec).then(|| config_maps(spec));
        Ok(Allowed {
            caps,
            filters,
            own,
            ids,
            maps,
        })
    }

    fn has_own(&self, kind: &str) -> bool {
        self.own.iter().any(|(k, _)| *k == kind)
    }
}

impl Ids {
    /// `reachable`: the capabilities a process of the config may come to hold.
    fn for_config(spec: &Spec, no_new_privs: bool, reachable: u64) -> Result<Ids> {
        let user = spec.process().as_ref().context("process")?.user();
        let linux = spec.linux().as_ref();
        let mapped = crate::userns::is_new(spec);
        let host = |maps: Option<&Vec<LinuxIdMapping>>, id: u32| match mapped {
            true => to_host(maps.map(Vec::as_slice).unwrap_or_default(), id),
            false => id,
        };
        let uid_maps = linux.and_then(|l| l.uid_mappings().as_ref());
        let gid_maps = linux.and_then(|l| l.gid_mappings().as_ref());
        let can = |cap: caps::Capability| reachable & (1u64 << cap.index()) != 0;
        // Without no_new_privs a set-uid or set-gid program makes its owner's ids the
        // process's (and those, with setreuid, its real ones): any id is reachable.
        let fixed = |cap| no_new_privs && !can(cap);
        let gid = host(gid_maps, user.gid());
        let groups = user.additional_gids().iter().flatten();
        Ok(Ids {
            no_new_privs,
            uid: fixed(caps::Capability::CAP_SETUID).then(|| host(uid_maps, user.uid())),
            gid: fixed(caps::Capability::CAP_SETGID).then_some(gid),
            // setgroups needs CAP_SETGID, set-gid programs or not.
            groups: (!can(caps::Capability::CAP_SETGID))
                .then(|| groups.map(|g| host(gid_maps, *g)).chain([gid]).collect()),
        })
    }

    /// Why a thread's ids are beyond these, for the user.
    fn beyond(&self, creds: &Credentials) -> Option<String> {
        if self.no_new_privs && creds.no_new_privs == Some(false) {
            return Some(
                "NoNewPrivs is 0, where the config sets process.noNewPrivileges".to_string(),
            );
        }
        for (what, held, may) in [("uid", creds.uids, self.uid), ("gid", creds.gids, self.gid)] {
            if let Some(may) = may {
                if held.iter().any(|id| *id != may) {
                    return Some(format!(
                        "its real, effective, saved and filesystem {what}s are {held:?}, where \
                         a process of this config (process.user, noNewPrivileges, without \
                         CAP_SET{}) stays at {may} (as the host sees it)",
                        what.to_uppercase()
                    ));
                }
            }
        }
        let may = self.groups.as_ref()?;
        let beyond: Vec<_> = creds.groups.iter().filter(|g| !may.contains(g)).collect();
        (!beyond.is_empty()).then(|| {
            format!(
                "it is in the groups {beyond:?}, beyond process.user's gid and additionalGids \
                 ({may:?}, as the host sees them), and no capability of this config allows \
                 CAP_SETGID"
            )
        })
    }
}

/// `id` of the container's user namespace as the host sees it: 65534 (the kernel's overflow
/// id) where `maps` do not map it (`create` would have refused such a config).
fn to_host(maps: &[LinuxIdMapping], id: u32) -> u32 {
    maps.iter()
        .find(|m| id >= m.container_id() && u64::from(id - m.container_id()) < u64::from(m.size()))
        .and_then(|m| m.host_id().checked_add(id - m.container_id()))
        .unwrap_or(65534)
}

/// The config's mappings, each as (the config's field, /proc's file, sorted ranges).
fn config_maps(spec: &Spec) -> [IdMap; 2] {
    let linux = spec.linux().as_ref();
    let ranges = |maps: Option<&Vec<LinuxIdMapping>>| {
        let mut ranges: Vec<[u64; 3]> = maps
            .into_iter()
            .flatten()
            .map(|m| [m.container_id(), m.host_id(), m.size()].map(u64::from))
            .collect();
        ranges.sort();
        ranges
    };
    [
        (
            "linux.uidMappings",
            "uid_map",
            ranges(linux.and_then(|l| l.uid_mappings().as_ref())),
        ),
        (
            "linux.gidMappings",
            "gid_map",
            ranges(linux.and_then(|l| l.gid_mappings().as_ref())),
        ),
    ]
}

/// The ranges of a /proc uid_map or gid_map, sorted (the kernel lists more than five in its
/// own order); None if it is not one.
fn parse_map(text: &str) -> Option<Vec<[u64; 3]>> {
    let mut ranges = text
        .lines()
        .map(|line| {
            let numbers: Vec<u64> = line
                .split_whitespace()
                .map(|n| n.parse().ok())
                .collect::<Option<_>>()?;
            numbers.try_into().ok()
        })
        .collect::<Option<Vec<[u64; 3]>>>()?;
    ranges.sort();
    Some(ranges)
}

fn map_text(ranges: &[[u64; 3]]) -> String {
    let lines: Vec<String> = ranges
        .iter()
        .map(|[inside, outside, count]| format!("{inside} {outside} {count}"))
        .collect();
    format!("'{}'", lines.join(", "))
}

/// The restored init's user namespace must map ids as the config's does: CRIU writes its
/// maps from the images (`userns-N.img`), as the host's root.
fn check_maps(init: i32, allowed: &Allowed) -> Result<()> {
    for (field, file, ours) in allowed.maps.iter().flatten() {
        let path = format!("/proc/{init}/{file}");
        let text = fs::read_to_string(&path)
            .with_context(|| format!("cannot read {path} to check the restored processes"))?;
        let held = parse_map(&text).with_context(|| format!("{path} is not an id map"))?;
        if held != *ours {
            bail!(
                "refusing the restore: the restored user namespace's {file} is {} where the \
                 config's {field} make it {}: its ids would map onto the host's others. The \
                 checkpoint was taken under another config or altered; restore it with the \
                 config it was taken with, or restore a checkpoint this host or a trusted one \
                 took",
                map_text(&held),
                map_text(ours)
            );
        }
    }
    Ok(())
}

/// One of `process.capabilities`' sets.
type Pick = fn(&LinuxCapabilities) -> &Option<oci_spec::runtime::Capabilities>;

fn mask(set: &caps::CapsHashSet) -> u64 {
    set.iter().fold(0, |mask, cap| mask | (1u64 << cap.index()))
}

/// The runtime's namespaces (the host's) and the one CRIU ran in, which no restored process
/// of a container with its own may be in.
pub struct Outside {
    host: Vec<(&'static str, PathBuf)>,
    restoring_mnt: Option<PathBuf>,
}

impl Outside {
    /// `restoring_mnt`: the mount namespace CRIU ran in (`mnt:[…]`), if known.
    pub fn here(restoring_mnt: Option<PathBuf>) -> Result<Outside> {
        let me = Path::new("/proc/self");
        let host = KINDS
            .iter()
            .filter(|(kind, _, _)| me.join("ns").join(kind).exists())
            .map(|(kind, _, _)| {
                namespace(me, kind)
                    .map(|ns| (*kind, ns))
                    .with_context(|| format!("read the runtime's {kind} namespace"))
            })
            .collect::<Result<_>>()?;
        Ok(Outside {
            host,
            restoring_mnt,
        })
    }

    fn hosts(&self, kind: &str) -> Option<&Path> {
        self.host
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, ns)| ns.as_path())
    }
}

/// Checks every thread of the tree under `init` (a host pid), held still in `hold`'s frozen
/// group, every process of the group too ([`walk_tree`]); the first one holding more than
/// `allowed` refuses, naming it and what differs.
pub fn check_tree(init: i32, allowed: &Allowed, outside: &Outside, hold: &Hold) -> Result<()> {
    check_maps(init, allowed)?;
    let container_user = match allowed.has_own("user") {
        true => namespace(Path::new(&format!("/proc/{init}")), "user")
            .context("read the restored init's user namespace")?,
        false => outside
            .hosts("user")
            .context("the runtime's user namespace is unknown")?
            .to_path_buf(),
    };
    walk_tree(
        init,
        hold,
        |thread| check_thread(&thread, allowed, outside, &container_user),
        |unchecked| anyhow::anyhow!("{unchecked}"),
    )
}

fn check_thread(
    thread: &feather_confine::restored::Thread,
    allowed: &Allowed,
    outside: &Outside,
    container_user: &Path,
) -> Result<()> {
    let status_path = thread.path.join("status");
    let status = fs::read_to_string(&status_path).with_context(|| {
        format!(
            "cannot read {} to check the restored processes",
            status_path.display()
        )
    })?;
    let creds = Credentials::parse(&status)
        .with_context(|| format!("cannot read the credentials in {}", status_path.display()))?;
    // CRIU restores zombies too (a child its parent has not waited for).
    if creds.ended {
        return Ok(());
    }
    let why = match excess(thread, &creds, allowed, outside, container_user)? {
        None => return Ok(()),
        Some(why) => why,
    };
    bail!(
        "refusing the restore: the restored process {} (thread {}, {:?}) holds more than a \
         process of this config can: {why}. The checkpoint was taken under another config or \
         altered; restore it with the config it was taken with, or restore a checkpoint this \
         host or a trusted one took",
        thread.pid,
        feather_confine::restored::thread_id(thread.path),
        creds.name
    )
}

/// Why one thread holds more than the config gives, for the user.
fn excess(
    thread: &feather_confine::restored::Thread,
    creds: &Credentials,
    allowed: &Allowed,
    outside: &Outside,
    container_user: &Path,
) -> Result<Option<String>> {
    let ns = |kind: &str| {
        namespace(thread.path, kind)
            .with_context(|| format!("cannot read the namespaces of {}", thread.path.display()))
    };
    for (kind, said) in &allowed.own {
        let Some(hosts) = outside.hosts(kind) else {
            continue;
        };
        if ns(kind)? == hosts {
            return Ok(Some(format!(
                "it is in the host's {said} namespace, where the config gives the container \
                 its own"
            )));
        }
    }
    if allowed.has_own("mnt") && outside.restoring_mnt.as_deref() == Some(ns("mnt")?.as_path()) {
        return Ok(Some(
            "it is in the mount namespace CRIU ran in (a copy of the host's tree), not the \
             container's"
                .into(),
        ));
    }
    let user = ns("user")?;
    if thread.init && user != container_user {
        return Ok(Some(format!(
            "the init is in a user namespace ({}) other than the host's, where the config \
             gives the container none of its own",
            user.display()
        )));
    }
    if user == container_user {
        if let Some(why) = beyond_caps(creds, allowed) {
            return Ok(Some(why));
        }
    }
    // Ids as the host sees them: the same in a user namespace the container made.
    if let Some(why) = allowed.ids.beyond(creds) {
        return Ok(Some(why));
    }
    if allowed.filters.is_empty() {
        return Ok(None);
    }
    if creds.seccomp != 2 {
        return Ok(Some(format!(
            "Seccomp is {}, where the config runs every process under seccomp filters (mode 2)",
            creds.seccomp
        )));
    }
    let tid = feather_confine::restored::thread_id(thread.path);
    let held = feather_sys::seccomp::filters_of(tid.parse().context("not a thread id")?)
        .map_err(|e| anyhow::anyhow!("cannot read the seccomp filters of thread {tid}: {e}"))?;
    Ok(foreign_filters(
        &held,
        vec![allowed.filters.iter().collect()],
    ))
}

fn beyond_caps(creds: &Credentials, allowed: &Allowed) -> Option<String> {
    for (field, held) in &creds.caps {
        let may = allowed
            .caps
            .iter()
            .find(|(f, _)| f == field)
            .map_or(0, |(_, m)| *m);
        let beyond = held & !may;
        if beyond != 0 {
            return Some(format!(
                "{field} holds {held:016x}, with {} beyond what process.capabilities allows \
                 there ({may:016x}: {})",
                feather_confine::capabilities::names_of(beyond).join(", "),
                feather_confine::capabilities::names_of(may).join(", "),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use feather_confine::held::TestGroup;

    /// A config with these capabilities (every set) and namespaces.
    fn config(caps: &[&str], namespaces: &[&str]) -> Spec {
        serde_json::from_value(config_json(caps, namespaces)).unwrap()
    }

    fn config_json(caps: &[&str], namespaces: &[&str]) -> serde_json::Value {
        let namespaces: Vec<_> = namespaces
            .iter()
            .map(|n| serde_json::json!({ "type": n }))
            .collect();
        serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "args": ["sleep"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                "capabilities": {"bounding": caps, "permitted": caps, "effective": caps}
            },
            "root": {"path": "rootfs"},
            "linux": {"namespaces": namespaces}
        })
    }

    /// Every capability this kernel knows, as a config names them.
    fn all_caps() -> Vec<String> {
        caps::runtime::thread_all_supported()
            .iter()
            .map(|cap| cap.to_string())
            .collect()
    }

    /// Ends a process the test started, by its pid, on drop.
    struct Started(std::process::Child);

    impl Drop for Started {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// `process` held still as a restore holds the restored tree (declared after it).
    fn held(label: &str, process: &Started) -> TestGroup {
        TestGroup::frozen(&format!("oci-{label}"), &[process.0.id() as i32]).unwrap()
    }

    fn refusal(spec: &Spec, process: &Started, held: &TestGroup) -> String {
        let allowed = Allowed::for_config(spec).unwrap();
        let outside = Outside::here(None).unwrap();
        let pid = process.0.id() as i32;
        format!(
            "{:#}",
            check_tree(pid, &allowed, &outside, held.hold()).unwrap_err()
        )
    }

    /// A process of the test's (the host's namespaces, every capability, no filter) measured
    /// as a restored container's: refused on its pid namespace where the config gives the
    /// container one, on its mount namespace where that is the one CRIU ran in, on its
    /// bounding set where the config gives it no namespace, naming the capability.
    #[test]
    fn a_process_in_the_hosts_namespaces_or_beyond_the_configs_capabilities_is_refused() {
        let sleep = Started(
            std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap(),
        );
        let held = held("namespaces", &sleep);
        let why = refusal(&config(&["CAP_KILL"], &["pid", "mount"]), &sleep, &held);
        assert!(
            why.contains("the host's pid namespace") && why.contains(&sleep.0.id().to_string()),
            "{why}"
        );
        let mnt = namespace(Path::new(&format!("/proc/{}", sleep.0.id())), "mnt").unwrap();
        let allowed = Allowed::for_config(&config(&["CAP_KILL"], &["mount"])).unwrap();
        // Its mount namespace the one CRIU ran in, and not the host's (as a copy of it is not).
        let mut outside = Outside::here(Some(mnt)).unwrap();
        outside.host.retain(|(kind, _)| *kind != "mnt");
        let why = check_tree(sleep.0.id() as i32, &allowed, &outside, held.hold()).unwrap_err();
        assert!(
            format!("{why:#}").contains("the mount namespace CRIU ran in"),
            "{why:#}"
        );
        let why = refusal(&config(&["CAP_KILL"], &[]), &sleep, &held);
        assert!(
            why.contains("CapBnd") && why.contains("CAP_SYS_ADMIN") && why.contains("\"sleep\""),
            "{why}"
        );
    }

    /// Where the config installs a filter, a process under none is refused naming its mode;
    /// where it installs none (a privileged config: no feather deny list) it passes.
    #[test]
    fn a_process_without_the_configs_filters_is_refused_unless_it_installs_none() {
        let sleep = Started(
            std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap(),
        );
        let held = held("filters", &sleep);
        let every: Vec<String> = all_caps();
        let every: Vec<&str> = every.iter().map(String::as_str).collect();
        let unfiltered = config(&every, &[]);
        let allowed = Allowed::for_config(&unfiltered).unwrap();
        assert!(allowed.filters.is_empty());
        let outside = Outside::here(None).unwrap();
        check_tree(sleep.0.id() as i32, &allowed, &outside, held.hold()).unwrap();
        let mut filtered = unfiltered;
        let seccomp = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO"}]
        });
        let mut linux = filtered.linux().clone().unwrap();
        linux.set_seccomp(Some(serde_json::from_value(seccomp).unwrap()));
        filtered.set_linux(Some(linux));
        let why = refusal(&filtered, &sleep, &held);
        assert!(why.contains("Seccomp is 0"), "{why}");
    }

    /// A process in a user namespace mapping only its root onto the host's (`0 0 1`), checked
    /// against a config whose namespace maps 0 onto 100000: refused naming the map, both
    /// ranges and the field; against a config mapping as it does, the maps pass.
    #[test]
    fn a_user_namespace_mapped_otherwise_than_the_config_is_refused() {
        let sleep = Started(
            std::process::Command::new("unshare")
                .args(["--user", "--map-root-user", "sleep", "60"])
                .spawn()
                .unwrap(),
        );
        let comm = format!("/proc/{}/comm", sleep.0.id());
        // unshare writes the maps before it executes sleep.
        while fs::read_to_string(&comm).unwrap().trim() != "sleep" {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let held = held("maps", &sleep);
        let every: Vec<String> = all_caps();
        let every: Vec<&str> = every.iter().map(String::as_str).collect();
        let mapped = |host: u32, size: u32| {
            let mut json = config_json(&every, &["user"]);
            let maps = serde_json::json!([{"containerID": 0, "hostID": host, "size": size}]);
            json["linux"]["uidMappings"] = maps.clone();
            json["linux"]["gidMappings"] = maps;
            serde_json::from_value::<Spec>(json).unwrap()
        };
        let why = refusal(&mapped(100000, 65536), &sleep, &held);
        assert!(
            why.contains("user namespace's uid_map is '0 0 1'")
                && why.contains("linux.uidMappings make it '0 100000 65536'"),
            "{why}"
        );
        let allowed = Allowed::for_config(&mapped(0, 1)).unwrap();
        check_maps(sleep.0.id() as i32, &allowed).unwrap();
    }

    /// Under noNewPrivileges and no CAP_SETUID/CAP_SETGID a `user 1000` config's threads
    /// must be 1000 in each id and NoNewPrivs; without noNewPrivileges (set-uid programs) or
    /// with CAP_SETUID any uid passes; groups beyond additionalGids need CAP_SETGID.
    #[test]
    fn ids_a_process_of_the_config_cannot_reach_are_refused() {
        let user = |caps: &[&str], nnp: bool| {
            let mut json = config_json(caps, &[]);
            json["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000,
                "additionalGids": [5]});
            json["process"]["noNewPrivileges"] = nnp.into();
            Allowed::for_config(&serde_json::from_value(json).unwrap())
                .unwrap()
                .ids
        };
        let creds = |uid: u32, groups: &[u32], nnp: bool| Credentials {
            uids: [1000, uid, uid, uid],
            gids: [1000; 4],
            groups: groups.to_vec(),
            no_new_privs: Some(nnp),
            ..Default::default()
        };
        let confined = user(&["CAP_KILL"], true);
        assert_eq!(confined.beyond(&creds(1000, &[5, 1000], true)), None);
        let why = confined.beyond(&creds(0, &[], true)).unwrap();
        assert!(
            why.contains("uids are [1000, 0, 0, 0]") && why.contains("1000"),
            "{why}"
        );
        let why = confined.beyond(&creds(1000, &[], false)).unwrap();
        assert!(why.contains("NoNewPrivs is 0"), "{why}");
        let why = confined.beyond(&creds(1000, &[0], true)).unwrap();
        assert!(why.contains("groups [0]"), "{why}");
        assert_eq!(
            user(&["CAP_KILL"], false).beyond(&creds(0, &[], false)),
            None
        );
        assert_eq!(
            user(&["CAP_SETUID"], true).beyond(&creds(0, &[], true)),
            None
        );
        assert_eq!(
            user(&["CAP_SETGID"], true).beyond(&creds(1000, &[0], true)),
            None
        );
    }

    /// Under noNewPrivileges the permitted and effective sets stay within the config's:
    /// the bounding set a set-uid program would fill them from is not allowed.
    #[test]
    fn no_new_privileges_allows_no_capability_beyond_the_configs_sets() {
        let allowed = |nnp: bool| {
            let mut json = config_json(&[], &[]);
            json["process"]["capabilities"]["bounding"] = serde_json::json!(["CAP_KILL"]);
            json["process"]["noNewPrivileges"] = nnp.into();
            Allowed::for_config(&serde_json::from_value(json).unwrap()).unwrap()
        };
        let kill = 1u64 << caps::Capability::CAP_KILL.index();
        let mut creds = Credentials {
            caps: vec![("CapPrm", kill), ("CapEff", kill)],
            ..Default::default()
        };
        assert_eq!(beyond_caps(&creds, &allowed(false)), None);
        let why = beyond_caps(&creds, &allowed(true)).unwrap();
        assert!(why.contains("CapPrm") && why.contains("CAP_KILL"), "{why}");
        creds.caps = vec![("CapBnd", kill)];
        assert_eq!(beyond_caps(&creds, &allowed(true)), None);
    }
}
