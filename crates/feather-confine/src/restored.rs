//! Reading what a tree CRIU restored (and left stopped) came back with: each thread's
//! capability sets and seccomp mode from `/proc/PID/task/TID/status`, its namespaces, its
//! filters compared with the stacks the runtime installs. CRIU, as the host's root, gives each
//! task what its images say; images the host did not write (an import, a migration's sender,
//! a pulled checkpoint) may say anything. What a thread may hold is the caller's: feather-vm's
//! `restored_creds` for a VM, feather-oci's `restore` for a container.

use std::fs;
use std::path::{Path, PathBuf};

/// One seccomp filter's program.
pub type Program = Vec<feather_sys::seccomp::Instruction>;

/// The fields of one thread's status the checks read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    pub name: String,
    /// (field, mask): CapBnd, CapPrm, CapEff, CapInh, CapAmb.
    pub caps: Vec<(&'static str, u64)>,
    pub seccomp: u32,
    /// None on a kernel that does not count them (Linux < 5.9): the mode is all there is.
    pub filters: Option<u32>,
    /// A zombie (or dead) task: it runs nothing again, and has no namespaces left to read.
    pub ended: bool,
    /// Real, effective, saved and filesystem uid, as the reader's user namespace sees them.
    pub uids: [u32; 4],
    /// The same four gids.
    pub gids: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// `NoNewPrivs`; None on a kernel that does not show it (Linux < 4.10).
    pub no_new_privs: Option<bool>,
}

/// The four ids of a `Uid:` or `Gid:` line.
fn four_ids(value: &str) -> Option<[u32; 4]> {
    let ids: Vec<u32> = value
        .split_whitespace()
        .map(|id| id.parse().ok())
        .collect::<Option<_>>()?;
    ids.try_into().ok()
}

/// The capability sets of a status, in the order they are checked.
pub const CAP_FIELDS: [&str; 5] = ["CapBnd", "CapPrm", "CapEff", "CapInh", "CapAmb"];

impl Credentials {
    /// From the text of /proc/PID/task/TID/status; None if a field is missing (but
    /// `Seccomp_filters`, which Linux < 5.9 does not show).
    pub fn parse(status: &str) -> Option<Credentials> {
        let field = |name: &str| {
            status.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key == name).then(|| value.trim().to_string())
            })
        };
        let mut caps = Vec::new();
        for name in CAP_FIELDS {
            caps.push((name, u64::from_str_radix(&field(name)?, 16).ok()?));
        }
        Some(Credentials {
            name: field("Name").unwrap_or_default(),
            caps,
            seccomp: field("Seccomp")?.parse().ok()?,
            filters: match field("Seccomp_filters") {
                Some(count) => Some(count.parse().ok()?),
                None => None,
            },
            ended: field("State").is_some_and(|state| state.starts_with(['Z', 'X'])),
            uids: four_ids(&field("Uid")?)?,
            gids: four_ids(&field("Gid")?)?,
            groups: field("Groups")?
                .split_whitespace()
                .map(|g| g.parse().ok())
                .collect::<Option<_>>()?,
            no_new_privs: field("NoNewPrivs").map(|flag| flag == "1"),
        })
    }
}

/// Where two programs first differ (an instruction, or the end of the shorter), if they do.
pub fn first_difference(
    held: &[feather_sys::seccomp::Instruction],
    ours: &[feather_sys::seccomp::Instruction],
) -> Option<usize> {
    let same = |a: &feather_sys::seccomp::Instruction, b: &feather_sys::seccomp::Instruction| {
        (a.code, a.jt, a.jf, a.k) == (b.code, b.jt, b.jf, b.k)
    };
    let differ = held.iter().zip(ours).position(|(a, b)| !same(a, b));
    differ.or((held.len() != ours.len()).then(|| held.len().min(ours.len())))
}

/// Why a thread's filters (`held`, the first installed first) start with none of `stacks`
/// (the runtime's, each the first installed first), for the user; None when one of them is at
/// their bottom, in order. Filters above it are the process's own: a stacked filter can only
/// refuse more.
pub fn foreign_filters(held: &[Program], stacks: Vec<Vec<&Program>>) -> Option<String> {
    let mut closest = None;
    for stack in stacks {
        let matching = stack
            .iter()
            .zip(held)
            .take_while(|(ours, held)| first_difference(held, ours).is_none())
            .count();
        if matching == stack.len() {
            return None;
        }
        if closest.as_ref().is_none_or(|(best, _)| matching > *best) {
            closest = Some((matching, stack));
        }
    }
    let (matching, stack) = closest?;
    let position = matching + 1;
    let Some(program) = held.get(matching) else {
        return Some(format!(
            "it runs under {} seccomp filters, where feather installs {} at the bottom of it",
            held.len(),
            stack.len()
        ));
    };
    let ours = stack[matching];
    let at = first_difference(program, ours).unwrap_or_default();
    Some(format!(
        "its seccomp filter {position} (counted from the first installed) is not the one \
         feather installs there: {} instructions where feather's has {}, differing from \
         instruction {at} on",
        program.len(),
        ours.len()
    ))
}

/// The namespace of `kind` (`pid`, `mnt`, …) a process or thread (its /proc folder) is in, as
/// /proc shows it (`mnt:[…]`).
pub fn namespace(of: &Path, kind: &str) -> std::io::Result<PathBuf> {
    fs::read_link(of.join("ns").join(kind))
}

/// One thread of a restored tree, as [`walk_tree`] visits it.
pub struct Thread<'a> {
    /// Its process (a host pid).
    pub pid: i32,
    /// Its folder, /proc/PID/task/TID.
    pub path: &'a Path,
    /// Whether its process is the tree's init.
    pub init: bool,
    /// Whether its process is a child of the init.
    pub child_of_init: bool,
}

/// Why a restored tree could not be checked: the caller words it as its refusal.
#[derive(Debug)]
pub enum Unchecked {
    /// What could not be read, and why.
    Unreadable(String, std::io::Error),
    /// The tree is not held still, or part of it is outside the frozen group: why.
    NotHeld(String),
}

impl std::fmt::Display for Unchecked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unchecked::Unreadable(what, e) => {
                write!(f, "cannot read {what} to check the restored processes: {e}")
            }
            Unchecked::NotHeld(why) => write!(
                f,
                "refusing the restore: the restored processes are not held still for their \
                 check: {why}"
            ),
        }
    }
}

/// Visits every thread of the restored tree whose init is `init` (a host pid), held still in
/// `hold`'s frozen group ([`crate::held`]), init's own first; the first error the visit
/// returns ends the walk. The tree is: init and its descendants (`children`), and every
/// process of the group and the groups below it (`cgroup.procs`) — a process whose parent
/// ended before the dump (a restored zombie's children, reparented outside the tree without a
/// pid namespace) is in the group but no descendant of init, and would be thawed unchecked.
/// Refused: a group not frozen, a live thread of the tree outside the group.
pub fn walk_tree<E>(
    init: i32,
    hold: &crate::held::Hold,
    mut visit: impl FnMut(Thread) -> Result<(), E>,
    fail: impl Fn(Unchecked) -> E,
) -> Result<(), E> {
    let unreadable = |what: &str, e: std::io::Error| fail(Unchecked::Unreadable(what.into(), e));
    let group = hold.group().display().to_string();
    match hold.is_held() {
        Ok(true) => {}
        Ok(false) => {
            return Err(fail(Unchecked::NotHeld(format!(
                "their group {group} is not frozen (it was frozen at CRIU's pre-resume; \
                 something thawed it, or CRIU never gave the notification)"
            ))))
        }
        Err(e) => return Err(unreadable(&group, e)),
    }
    let threads = hold.threads().map_err(|e| unreadable(&group, e))?;
    let members = hold.processes().map_err(|e| unreadable(&group, e))?;
    // Init's tree first, then the group's other processes (none of them init's children:
    // `children` lists every child of init's threads).
    let mut pending = vec![(init, false)];
    let mut seen = std::collections::BTreeSet::new();
    let mut others = members.into_iter().rev();
    loop {
        let Some((pid, child_of_init)) =
            pending.pop().or_else(|| others.next().map(|p| (p, false)))
        else {
            return Ok(());
        };
        if !seen.insert(pid) {
            continue;
        }
        let tasks = format!("/proc/{pid}/task");
        let entries = fs::read_dir(&tasks).map_err(|e| unreadable(&tasks, e))?;
        for thread in entries {
            let thread = thread.map_err(|e| unreadable(&tasks, e))?.path();
            let tid: i32 = thread_id(&thread).parse().unwrap_or_default();
            if !threads.contains(&tid) && !crate::held::has_ended(&thread) {
                return Err(fail(Unchecked::NotHeld(format!(
                    "process {pid} (thread {tid}) of the restored tree is not in the frozen \
                     group {group}"
                ))));
            }
            visit(Thread {
                pid,
                path: &thread,
                init: pid == init,
                child_of_init,
            })?;
            let children = fs::read_to_string(thread.join("children"))
                .map_err(|e| unreadable(&thread.display().to_string(), e))?;
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                pending.push((child, pid == init));
            }
        }
    }
}

/// A thread's id, from its folder's name.
pub fn thread_id(thread: &Path) -> String {
    thread
        .file_name()
        .map(|t| t.to_string_lossy().into_owned())
        .unwrap_or_default()
}
