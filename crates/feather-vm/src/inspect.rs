//! What a VM is and holds: the summaries behind `ls`, `ps` and `inspect`.

use std::path::PathBuf;

use feather_core::{StateRoot, VmConfig, VmDir, VmName, VmState, VmStatus};
use feather_sys::cgroup::{Cgroup, Hierarchies};
use nix::unistd::Pid;
use serde::Serialize;

use crate::error::Result;
use crate::keeper::cgroup_of;
use crate::layers;
use crate::vm_group::cgroup_path_in;

/// One row of `feather ls`.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub name: String,
    pub status: VmStatus,
    pub base: PathBuf,
    /// `private 10.77.0.2`, `none` or `host (not confined)`.
    pub network: String,
    /// Processes in the VM now.
    pub processes: usize,
    /// Bytes of memory charged to the VM's cgroup now.
    pub memory_bytes: Option<u64>,
    /// What the VM may use; `null` is unlimited.
    pub limits: LimitsView,
    /// Bytes its layers hold now, where a disk cap makes the filesystem count them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    pub created: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
}

/// A VM's limits as `ls` shows them: the numbers, without the disk cap's project id.
#[derive(Debug, Serialize)]
pub struct LimitsView {
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    pub cpus: Option<f64>,
    pub disk: Option<u64>,
}

impl From<&feather_core::Limits> for LimitsView {
    fn from(limits: &feather_core::Limits) -> Self {
        LimitsView {
            memory: limits.memory,
            pids: limits.pids,
            cpus: limits.cpus,
            disk: limits.disk.map(|d| d.bytes()),
        }
    }
}

pub fn summaries(root: &StateRoot) -> Result<Vec<Summary>> {
    let mut rows = Vec::new();
    let hierarchies = Hierarchies::detect();
    for vm in root.list()? {
        // A VM of the pool is not the user's until a run claims it (`feather pool` shows it).
        if crate::pooled::is_pooled(root, vm.name()) {
            continue;
        }
        // A VM removed while we looked is simply not listed.
        let (Ok(config), Ok(state)) = (vm.read_config(), vm.read_state()) else {
            continue;
        };
        rows.push(summary(root, &hierarchies, &config, state));
    }
    Ok(rows)
}

fn summary(
    root: &StateRoot,
    hierarchies: &Hierarchies,
    config: &VmConfig,
    state: VmState,
) -> Summary {
    let running = state.status == VmStatus::Running;
    let cgroup = cgroup_path_in(hierarchies.clone(), config);
    let memory_bytes = if running { cgroup.memory_usage() } else { None };
    Summary {
        name: config.name.to_string(),
        status: state.status,
        base: config.base.clone(),
        network: feather_net::summary(&config.network),
        processes: if running { cgroup.member_count() } else { 0 },
        memory_bytes,
        limits: LimitsView::from(&config.limits),
        disk_bytes: config.limits.disk.and_then(|disk| {
            let vm = root.open(&config.name).ok()?;
            crate::disk::usage(root.dir(), &vm, disk)
        }),
        created: config.created,
        last_exit: state.last_exit,
    }
}

/// One process of a VM, for `feather ps`.
#[derive(Debug, Serialize)]
pub struct Process {
    /// Its pid inside the VM.
    pub pid: i32,
    /// Its pid on the host.
    pub host_pid: i32,
    pub uid: u32,
    pub command: String,
}

pub fn processes(root: &StateRoot, name: &VmName) -> Result<Vec<Process>> {
    let vm = root.open(name)?;
    let config = vm.read_config()?;
    let state = vm.read_state()?;
    if state.status != VmStatus::Running {
        return Err(feather_core::Error::NotRunning(name.to_string()).into());
    }
    let mut rows: Vec<Process> = members(cgroup_of(&config).as_ref(), &state)
        .into_iter()
        .filter_map(|pid| feather_sys::process::describe(pid).map(Process::from))
        .collect();
    rows.sort_by_key(|p| p.pid);
    Ok(rows)
}

/// The host pids of a running VM's processes: its cgroup's members, or for a VM without a
/// cgroup, the processes of its pid namespace.
fn members(cgroup: Option<&Cgroup>, state: &VmState) -> Vec<Pid> {
    match (cgroup, state.init_pid) {
        (Some(cgroup), _) => cgroup.members(),
        (None, Some(init)) => feather_sys::process::same_pid_namespace(Pid::from_raw(init)),
        (None, None) => Vec::new(),
    }
}

impl From<feather_sys::process::Described> for Process {
    fn from(d: feather_sys::process::Described) -> Process {
        Process {
            pid: d.pid,
            host_pid: d.host_pid,
            uid: d.uid,
            command: d.command,
        }
    }
}

/// Everything about a VM, for `feather inspect`.
#[derive(Debug, Serialize)]
pub struct Inspection {
    pub config: VmConfig,
    pub state: VmState,
    pub path: PathBuf,
    pub layers: Vec<LayerInfo>,
    /// The paths the VM sees read-only from its base (`create --ro`): no layer holds anything
    /// there, so `diff` and `commit` never show anything under them.
    pub read_only: Vec<ReadOnlyInfo>,
    pub cgroup: Vec<PathBuf>,
    pub control_socket: PathBuf,
    pub capabilities: Vec<String>,
    pub namespaces: Vec<&'static str>,
    pub network: feather_net::NetworkView,
}

/// One of the VM's layers. Its paths are shown as text, each byte that is not UTF-8 as `\xNN`
/// (a host filesystem mounted at such a folder is layered too; serde refused such a path, and
/// `inspect` failed).
#[derive(Debug, Serialize)]
pub struct LayerInfo {
    #[serde(serialize_with = "path_as_text")]
    pub mount_point: PathBuf,
    #[serde(serialize_with = "path_as_text")]
    pub lower: PathBuf,
    #[serde(serialize_with = "path_as_text")]
    pub upper: PathBuf,
}

fn path_as_text<S: serde::Serializer>(path: &std::path::Path, s: S) -> Result<S::Ok, S::Error> {
    use std::os::unix::ffi::OsStrExt;
    s.serialize_str(&feather_core::display::utf8_or_escaped(
        path.as_os_str().as_bytes(),
    ))
}

#[derive(Debug, Serialize)]
pub struct ReadOnlyInfo {
    pub mount_point: PathBuf,
    /// The host path bound there, read-only.
    pub source: PathBuf,
}

pub fn inspect(root: &StateRoot, name: &VmName) -> Result<Inspection> {
    let vm: VmDir = root.open(name)?;
    let config = vm.read_config()?;
    let state = vm.read_state()?;
    let layers = layers::existing(&vm, &config)
        .into_iter()
        .map(|l| LayerInfo {
            mount_point: l.mount_point,
            lower: l.lower,
            upper: l.upper,
        })
        .collect();
    let read_only = config
        .read_only
        .iter()
        .map(|path| ReadOnlyInfo {
            mount_point: path.clone(),
            source: config.base.join(path.strip_prefix("/").unwrap_or(path)),
        })
        .collect();
    let namespaces = if config.network.mode == feather_core::NetMode::Host {
        vec!["mount", "pid", "ipc", "uts", "cgroup"]
    } else {
        vec!["mount", "pid", "ipc", "uts", "net", "cgroup"]
    };
    let network = feather_net::view(root.dir(), vm.run_dir(), &config.id, &config.network);
    Ok(Inspection {
        cgroup: cgroup_of(&config).map(|c| c.dirs()).unwrap_or_default(),
        config,
        state,
        path: vm.path().to_path_buf(),
        layers,
        read_only,
        control_socket: vm.control_socket(),
        capabilities: feather_confine::capabilities::default_set_names(),
        namespaces,
        network,
    })
}
