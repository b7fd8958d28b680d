//! A unit as systemd understands it once its file and drop-ins are read: dependencies,
//! `[Install]`, and for services and sockets the settings feather acts on. Settings that
//! feather reads but does not apply (the sandboxing ones, say) are kept by name in
//! [`Unit::not_applied`], so `service status` can say so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use crate::error::SettingError;
use crate::filesystem::{self, FilesystemSettings};
use crate::name::UnitName;
use crate::specifier::{self, Context};
use crate::syntax::Assignment;
use crate::values::{self, Limit};
use crate::words::{self, ExecCommand};

#[derive(Clone, Debug, Default, Serialize)]
pub struct Dependencies {
    pub requires: Vec<String>,
    pub requisite: Vec<String>,
    pub wants: Vec<String>,
    pub binds_to: Vec<String>,
    pub part_of: Vec<String>,
    pub upholds: Vec<String>,
    pub conflicts: Vec<String>,
    pub after: Vec<String>,
    pub before: Vec<String>,
    pub on_failure: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Install {
    pub wanted_by: Vec<String>,
    pub required_by: Vec<String>,
    pub alias: Vec<String>,
    pub also: Vec<String>,
    pub default_instance: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceType {
    #[default]
    Simple,
    Exec,
    Forking,
    Oneshot,
    Dbus,
    Notify,
    #[serde(rename = "notify-reload")]
    NotifyReload,
    Idle,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    #[default]
    No,
    OnSuccess,
    OnFailure,
    OnAbnormal,
    OnWatchdog,
    OnAbort,
    Always,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KillMode {
    #[default]
    ControlGroup,
    Mixed,
    Process,
    None,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyAccess {
    #[default]
    None,
    Main,
    Exec,
    All,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkingDirectory {
    /// `~` means the home of User=.
    pub path: PathBuf,
    /// A leading `-`: a missing directory is not an error.
    pub optional: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EnvironmentFile {
    pub path: PathBuf,
    /// A leading `-`: a missing file is skipped.
    pub optional: bool,
}

/// The five kinds of directories systemd makes for a service, each under its own root.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum DirectoryKind {
    Runtime,
    State,
    Cache,
    Logs,
    Configuration,
}

impl DirectoryKind {
    pub const ALL: [DirectoryKind; 5] = [
        DirectoryKind::Runtime,
        DirectoryKind::State,
        DirectoryKind::Cache,
        DirectoryKind::Logs,
        DirectoryKind::Configuration,
    ];

    pub fn root(self) -> &'static str {
        match self {
            DirectoryKind::Runtime => "/run",
            DirectoryKind::State => "/var/lib",
            DirectoryKind::Cache => "/var/cache",
            DirectoryKind::Logs => "/var/log",
            DirectoryKind::Configuration => "/etc",
        }
    }

    /// `RuntimeDirectory`, `StateDirectory`, …
    pub fn setting(self) -> &'static str {
        match self {
            DirectoryKind::Runtime => "RuntimeDirectory",
            DirectoryKind::State => "StateDirectory",
            DirectoryKind::Cache => "CacheDirectory",
            DirectoryKind::Logs => "LogsDirectory",
            DirectoryKind::Configuration => "ConfigurationDirectory",
        }
    }

    /// The variable the service finds them in (`RUNTIME_DIRECTORY`, …).
    pub fn variable(self) -> &'static str {
        match self {
            DirectoryKind::Runtime => "RUNTIME_DIRECTORY",
            DirectoryKind::State => "STATE_DIRECTORY",
            DirectoryKind::Cache => "CACHE_DIRECTORY",
            DirectoryKind::Logs => "LOGS_DIRECTORY",
            DirectoryKind::Configuration => "CONFIGURATION_DIRECTORY",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Directories {
    pub kind: DirectoryKind,
    /// Relative to the kind's root.
    pub paths: Vec<String>,
    pub mode: u32,
}

/// Where a service's stdin comes from: nothing, or (with `Accept=yes` sockets, inetd-style)
/// the connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StandardInput {
    #[default]
    Null,
    Socket,
    /// A terminal, a file, data, an fd: read, not applied in a VM (stdin is /dev/null).
    Other,
}

/// Where stdout and stderr go: the unit's log, or (for `socket`, and for `inherit` when stdin
/// is the connection) the connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StandardOutput {
    #[default]
    Log,
    Inherit,
    Socket,
    Null,
}

/// How a process of the unit runs: the settings shared by services and sockets.
#[derive(Clone, Debug, Serialize)]
pub struct ExecContext {
    pub user: Option<String>,
    pub group: Option<String>,
    pub supplementary_groups: Vec<String>,
    pub working_directory: Option<WorkingDirectory>,
    pub umask: u32,
    pub environment: Vec<(String, String)>,
    pub environment_files: Vec<EnvironmentFile>,
    pub directories: Vec<Directories>,
    pub runtime_directory_preserve: bool,
    pub limits: Vec<(String, Limit)>,
    pub syslog_identifier: Option<String>,
    pub dynamic_user: bool,
    pub standard_input: StandardInput,
    pub standard_output: StandardOutput,
    pub standard_error: StandardOutput,
    /// `NoNewPrivileges=`: no setuid bit or file capability raises what the process may do.
    pub no_new_privileges: bool,
    /// `CapabilityBoundingSet=`: the capabilities the unit's processes may ever hold; None is
    /// all (the VM's own set bounds them anyway).
    pub capability_bounding_set: Option<std::collections::BTreeSet<String>>,
    /// `AmbientCapabilities=`: the capabilities a service that runs as another user than root
    /// keeps through its user change and its program's exec (`CAP_NET_BIND_SERVICE` for a
    /// daemon that binds port 53 as its own user).
    pub ambient_capabilities: std::collections::BTreeSet<String>,
    /// The device nodes `DeviceAllow=` names (`/dev/net/tun`), not the classes (`char-pts`):
    /// the catalogue refuses a unit that needs a device a VM's `/dev` does not have. The
    /// device cgroup itself is not applied (the setting stays listed as not applied).
    pub device_allow: Vec<String>,
    /// `RestrictAddressFamilies=`: which families `socket()` may make; None is all.
    pub address_families: Option<AddressFamilies>,
    /// `SystemCallFilter=`, line by line (groups are expanded where the unit runs, by the
    /// systemd installed there).
    pub system_call_filter: Vec<SyscallFilterLine>,
    /// `SystemCallErrorNumber=`: a refused call fails with it instead of killing the process.
    pub system_call_error_number: Option<i32>,
    /// The argument checks systemd makes with seccomp (and `PR_SET_MDWE`).
    pub restrictions: Restrictions,
    /// `PrivateDevices=`, `ProtectKernelModules=`, `ProtectClock=`, `ProtectHostname=`.
    pub protections: KernelProtections,
    /// `ProtectSystem=`, `ProtectHome=`, `ReadWritePaths=`, …: applied with a Landlock domain
    /// of the unit's own (`manager/filesystem.rs`).
    pub filesystem: FilesystemSettings,
}

/// `RestrictNamespaces=`, `RestrictRealtime=`, `RestrictSUIDSGID=`,
/// `MemoryDenyWriteExecute=`, `LockPersonality=` and `SystemCallArchitectures=native`: what
/// systemd checks in a call's arguments (`src/shared/seccomp-util.c`), applied by
/// `manager/restrictions.rs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Restrictions {
    /// The namespace types (`CLONE_NEW*` flags) a unit may still create or join; None: all
    /// (the setting is absent).
    pub namespaces: Option<u64>,
    pub realtime: bool,
    pub suid_sgid: bool,
    pub memory_deny_write_execute: bool,
    pub lock_personality: bool,
    /// `SystemCallArchitectures=native` (or this machine's own name for its architecture):
    /// calls of any other ABI (i386 `int 0x80`, x32) kill the process.
    pub native_architecture_only: bool,
}

impl Restrictions {
    /// Whether any is set: systemd then implies `NoNewPrivileges=` for a service without
    /// CAP_SYS_ADMIN, which no process of a VM has.
    pub fn any(&self) -> bool {
        self.namespaces.is_some()
            || self.realtime
            || self.suid_sgid
            || self.memory_deny_write_execute
            || self.lock_personality
            || self.native_architecture_only
    }
}

/// `PrivateDevices=`, `ProtectKernelModules=`, `ProtectClock=` and `ProtectHostname=`: what
/// systemd applies for them beyond a mount, capabilities and call filters, applied by
/// `manager/protections.rs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KernelProtections {
    pub private_devices: bool,
    pub kernel_modules: bool,
    pub clock: bool,
    /// `ProtectHostname=yes` (not `private`, under which systemd lets the name change).
    pub hostname: bool,
}

impl KernelProtections {
    /// Whether any is set: each implies `NoNewPrivileges=` under systemd for a service
    /// without CAP_SYS_ADMIN, which no process of a VM has.
    pub fn any(&self) -> bool {
        self.private_devices || self.kernel_modules || self.clock || self.hostname
    }
}

/// One `SystemCallFilter=` line: calls and `@groups`, allowed, or with `~` denied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyscallFilterLine {
    pub inverted: bool,
    pub entries: Vec<String>,
}

/// `RestrictAddressFamilies=`, as systemd keeps it: a list of families allowed (the first
/// assignment not inverted) or denied (the first one with `~`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AddressFamilies {
    pub allow: bool,
    pub families: std::collections::BTreeSet<i32>,
}

impl AddressFamilies {
    /// The families `socket()` must refuse.
    pub fn denied(&self) -> Vec<i32> {
        crate::values::ADDRESS_FAMILIES
            .iter()
            .map(|(_, number)| *number)
            .filter(|n| self.families.contains(n) != self.allow)
            .collect()
    }
}

impl Default for ExecContext {
    fn default() -> Self {
        ExecContext {
            user: None,
            group: None,
            supplementary_groups: Vec::new(),
            working_directory: None,
            umask: 0o022,
            environment: Vec::new(),
            environment_files: Vec::new(),
            directories: DirectoryKind::ALL
                .iter()
                .map(|&kind| Directories {
                    kind,
                    paths: Vec::new(),
                    mode: 0o755,
                })
                .collect(),
            runtime_directory_preserve: false,
            limits: Vec::new(),
            syslog_identifier: None,
            dynamic_user: false,
            standard_input: StandardInput::Null,
            standard_output: StandardOutput::Inherit,
            standard_error: StandardOutput::Inherit,
            no_new_privileges: false,
            capability_bounding_set: None,
            ambient_capabilities: std::collections::BTreeSet::new(),
            device_allow: Vec::new(),
            address_families: None,
            system_call_filter: Vec::new(),
            system_call_error_number: None,
            restrictions: Restrictions::default(),
            protections: KernelProtections::default(),
            filesystem: FilesystemSettings::default(),
        }
    }
}

impl ExecContext {
    pub fn directories(&self, kind: DirectoryKind) -> &Directories {
        self.directories
            .iter()
            .find(|d| d.kind == kind)
            .expect("every kind is present")
    }

    fn directories_mut(&mut self, kind: DirectoryKind) -> &mut Directories {
        self.directories
            .iter_mut()
            .find(|d| d.kind == kind)
            .expect("every kind is present")
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Service {
    #[serde(rename = "type")]
    pub kind: ServiceType,
    /// Whether `Type=` was given: without it, a unit with `BusName=` is `Type=dbus`.
    #[serde(skip)]
    pub kind_given: bool,
    pub remain_after_exit: bool,
    pub guess_main_pid: bool,
    pub pid_file: Option<PathBuf>,
    pub bus_name: Option<String>,
    pub notify_access: Option<NotifyAccess>,
    pub exec_condition: Vec<ExecCommand>,
    pub exec_start_pre: Vec<ExecCommand>,
    pub exec_start: Vec<ExecCommand>,
    pub exec_start_post: Vec<ExecCommand>,
    pub exec_reload: Vec<ExecCommand>,
    pub exec_stop: Vec<ExecCommand>,
    pub exec_stop_post: Vec<ExecCommand>,
    pub restart: Restart,
    pub restart_sec: Duration,
    /// None: no timeout.
    pub timeout_start: Option<Duration>,
    pub timeout_stop: Option<Duration>,
    pub kill_mode: KillMode,
    pub kill_signal: i32,
    pub final_kill_signal: i32,
    pub send_sigkill: bool,
    pub success_exit_status: Vec<i32>,
    /// `MemoryMax=`, `TasksMax=`, `CPUQuota=`, `CPUWeight=`: applied to the unit's own cgroup.
    pub resources: Resources,
}

/// A unit's resource-control settings (systemd.resource-control(5)); `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Resources {
    /// `MemoryMax=` (or the older `MemoryLimit=`), in bytes.
    pub memory_max: Option<u64>,
    /// `TasksMax=`: processes and threads.
    pub tasks_max: Option<u64>,
    /// `CPUQuota=`, as CPUs (`50%` is 0.5, `200%` is 2).
    pub cpu_quota: Option<f64>,
    /// `CPUWeight=` (or the older `CPUShares=`, converted), 1 to 10000.
    pub cpu_weight: Option<u64>,
}

impl Resources {
    pub fn any(&self) -> bool {
        *self != Resources::default()
    }
}

impl Default for Service {
    fn default() -> Self {
        Service {
            kind: ServiceType::Simple,
            kind_given: false,
            remain_after_exit: false,
            guess_main_pid: true,
            pid_file: None,
            bus_name: None,
            notify_access: None,
            exec_condition: Vec::new(),
            exec_start_pre: Vec::new(),
            exec_start: Vec::new(),
            exec_start_post: Vec::new(),
            exec_reload: Vec::new(),
            exec_stop: Vec::new(),
            exec_stop_post: Vec::new(),
            restart: Restart::No,
            restart_sec: Duration::from_millis(100),
            timeout_start: Some(DEFAULT_TIMEOUT),
            timeout_stop: Some(DEFAULT_TIMEOUT),
            kill_mode: KillMode::ControlGroup,
            kill_signal: libc::SIGTERM,
            final_kill_signal: libc::SIGKILL,
            send_sigkill: true,
            success_exit_status: Vec::new(),
            resources: Resources::default(),
        }
    }
}

impl Default for Socket {
    fn default() -> Self {
        Socket {
            listen: Vec::new(),
            accept: false,
            service: None,
            socket_mode: None,
            socket_user: None,
            socket_group: None,
            file_descriptor_name: None,
            max_connections: 64,
            bind_ipv6_only: BindIpv6Only::Default,
        }
    }
}

/// The socket of the D-Bus system bus, which `Type=dbus` services require.
pub const DBUS_SOCKET: &str = "dbus.socket";

/// systemd's DefaultTimeoutStartSec/DefaultTimeoutStopSec.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenKind {
    Stream,
    Datagram,
    SequentialPacket,
    Fifo,
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Listen {
    pub kind: ListenKind,
    /// As written: a port, `address:port`, `[v6]:port`, a path, or `@abstract`.
    pub address: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Socket {
    pub listen: Vec<Listen>,
    pub accept: bool,
    pub service: Option<String>,
    pub socket_mode: Option<u32>,
    pub socket_user: Option<String>,
    pub socket_group: Option<String>,
    pub file_descriptor_name: Option<String>,
    /// `Accept=yes`: the most instances that run at once; more connections are refused.
    pub max_connections: u32,
    /// `BindIPv6Only=`: whether a socket on an IPv6 address also takes IPv4 connections.
    pub bind_ipv6_only: BindIpv6Only,
}

/// `BindIPv6Only=` of a socket unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BindIpv6Only {
    /// The kernel's default (`net.ipv6.bindv6only`).
    #[default]
    Default,
    /// IPv6 and IPv4 (mapped) on one socket.
    Both,
    /// IPv6 alone, so that an IPv4 socket on the same port can be bound beside it (rpcbind's
    /// `0.0.0.0:111` and `[::]:111`).
    Ipv6Only,
}

/// A timer unit's `[Timer]`: when it starts the unit it triggers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timer {
    /// `OnActiveSec=`: after the timer itself started.
    pub on_active: Vec<Duration>,
    /// `OnBootSec=` and `OnStartupSec=`: after the VM started (its init).
    pub on_boot: Vec<Duration>,
    /// `OnUnitActiveSec=`: after the triggered unit was last started.
    pub on_unit_active: Vec<Duration>,
    /// `OnUnitInactiveSec=`: after the triggered unit last stopped.
    pub on_unit_inactive: Vec<Duration>,
    /// `OnCalendar=` as written; parsed when the timer starts ([`crate::calendar`]).
    pub on_calendar: Vec<String>,
    /// `Unit=`; by default the service of the timer's name.
    pub unit: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Condition {
    /// `ConditionPathExists`, `AssertFileNotEmpty`, …
    pub key: String,
    pub value: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct StartLimit {
    /// None: no rate limit.
    pub interval: Option<Duration>,
    pub burst: u32,
}

impl Default for StartLimit {
    fn default() -> Self {
        StartLimit {
            interval: Some(Duration::from_secs(10)),
            burst: 5,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Unit {
    pub name: UnitName,
    /// The file the unit was read from; None for a unit known only from drop-ins.
    pub fragment: Option<PathBuf>,
    pub dropins: Vec<PathBuf>,
    pub description: Option<String>,
    pub documentation: Vec<String>,
    pub dependencies: Dependencies,
    pub default_dependencies: bool,
    pub start_limit: StartLimit,
    pub conditions: Vec<Condition>,
    pub install: Install,
    pub exec: ExecContext,
    /// Present for `.service` units.
    pub service: Option<Service>,
    /// Present for `.socket` units.
    pub socket: Option<Socket>,
    /// Present for `.timer` units.
    pub timer: Option<Timer>,
    /// Settings read but not applied inside a VM, as `Section.Key`, once each.
    pub not_applied: Vec<String>,
}

impl Unit {
    pub fn new(name: UnitName) -> Unit {
        let service = (name.kind() == "service").then(Service::default);
        let socket = (name.kind() == "socket").then(Socket::default);
        let timer = (name.kind() == "timer").then(Timer::default);
        Unit {
            name,
            fragment: None,
            dropins: Vec::new(),
            description: None,
            documentation: Vec::new(),
            dependencies: Dependencies::default(),
            default_dependencies: true,
            start_limit: StartLimit::default(),
            conditions: Vec::new(),
            install: Install::default(),
            exec: ExecContext::default(),
            service,
            socket,
            timer,
            not_applied: Vec::new(),
        }
    }

    /// Applies one assignment of the unit file or a drop-in, in order. `root` is the tree the
    /// unit comes from, for specifiers that read it.
    pub fn apply(&mut self, assignment: &Assignment, root: &Path) -> Result<(), SettingError> {
        let name = self.name.clone();
        let fragment = self.fragment.clone();
        let context = Context {
            unit: &name,
            fragment: fragment.as_deref(),
            root,
        };
        let key = assignment.key.as_str();
        let raw = assignment.value.as_str();
        let expand = |text: &str| Ok(specifier::expand(text, &context)?);
        match assignment.section.as_str() {
            "Unit" => self.apply_unit(key, raw, &expand),
            "Install" => self.apply_install(key, raw, &expand),
            "Service" if self.service.is_some() => {
                if !self.apply_exec_context(key, raw, &expand)? {
                    self.apply_service(key, raw, &expand, &context)?;
                }
                Ok(())
            }
            "Socket" if self.socket.is_some() => {
                if !self.apply_exec_context(key, raw, &expand)? {
                    self.apply_socket(key, raw, &expand)?;
                }
                Ok(())
            }
            "Timer" if self.timer.is_some() => self.apply_timer(key, raw, &expand),
            section if section.starts_with("X-") => Ok(()),
            section => {
                // A [Timer], [Mount], … of a unit feather never starts, or a section of another
                // unit type: systemd ignores what does not belong to the unit's type.
                self.note_not_applied(section, key);
                Ok(())
            }
        }
    }

    /// What systemd adds once every file of the unit is read: a service with `BusName=` and no
    /// `Type=` is `Type=dbus`; a `Type=dbus` service requires the bus (`Requires=` and
    /// `After=dbus.socket`), and any service with a `BusName=` starts after it.
    pub fn finish(&mut self) {
        let Some(service) = self.service.as_mut() else {
            return;
        };
        if service.bus_name.is_some() && !service.kind_given {
            service.kind = ServiceType::Dbus;
        }
        let dbus = service.kind == ServiceType::Dbus;
        if service.bus_name.is_none() && !dbus {
            return;
        }
        let deps = &mut self.dependencies;
        if !deps.after.iter().any(|n| n == DBUS_SOCKET) {
            deps.after.push(DBUS_SOCKET.into());
        }
        if dbus && !deps.requires.iter().any(|n| n == DBUS_SOCKET) {
            deps.requires.push(DBUS_SOCKET.into());
        }
    }

    fn note_not_applied(&mut self, section: &str, key: &str) {
        let entry = format!("{section}.{key}");
        if !self.not_applied.contains(&entry) {
            self.not_applied.push(entry);
        }
    }

    fn apply_unit(
        &mut self,
        key: &str,
        raw: &str,
        expand: &dyn Fn(&str) -> Result<String, SettingError>,
    ) -> Result<(), SettingError> {
        let deps = &mut self.dependencies;
        let list = match key {
            "Requires" => Some(&mut deps.requires),
            "Requisite" => Some(&mut deps.requisite),
            "Wants" => Some(&mut deps.wants),
            "BindsTo" => Some(&mut deps.binds_to),
            "PartOf" => Some(&mut deps.part_of),
            "Upholds" => Some(&mut deps.upholds),
            "Conflicts" => Some(&mut deps.conflicts),
            "After" => Some(&mut deps.after),
            "Before" => Some(&mut deps.before),
            "OnFailure" => Some(&mut deps.on_failure),
            _ => None,
        };
        if let Some(list) = list {
            return unit_list(list, raw, expand);
        }
        match key {
            // Shown to people only: a bad specifier there keeps the text as written.
            "Description" => self.description = Some(expand(raw).unwrap_or_else(|_| raw.into())),
            "Documentation" if raw.is_empty() => self.documentation.clear(),
            "Documentation" => self
                .documentation
                .extend(raw.split_whitespace().map(str::to_owned)),
            "DefaultDependencies" => self.default_dependencies = values::boolean(raw)?,
            "StartLimitIntervalSec" | "StartLimitInterval" => {
                self.start_limit.interval = match values::timespan(raw, Duration::from_secs(1))? {
                    Some(d) if d.is_zero() => None,
                    other => other,
                }
            }
            "StartLimitBurst" => {
                self.start_limit.burst = raw.parse().map_err(|_| SettingError::NotANumber {
                    key: "StartLimitBurst",
                    value: raw.to_owned(),
                })?
            }
            k if k.starts_with("Condition") || k.starts_with("Assert") => {
                if raw.is_empty() {
                    self.conditions.retain(|c| c.key != k);
                } else {
                    self.conditions.push(Condition {
                        key: k.to_owned(),
                        value: expand(raw)?,
                    });
                }
            }
            other => self.note_not_applied("Unit", other),
        }
        Ok(())
    }

    fn apply_install(
        &mut self,
        key: &str,
        raw: &str,
        expand: &dyn Fn(&str) -> Result<String, SettingError>,
    ) -> Result<(), SettingError> {
        let install = &mut self.install;
        match key {
            "WantedBy" => unit_list(&mut install.wanted_by, raw, expand),
            "RequiredBy" => unit_list(&mut install.required_by, raw, expand),
            "UpheldBy" => Ok(()),
            "Alias" => unit_list(&mut install.alias, raw, expand),
            "Also" => unit_list(&mut install.also, raw, expand),
            "DefaultInstance" => {
                install.default_instance = (!raw.is_empty()).then(|| raw.to_owned());
                Ok(())
            }
            other => {
                self.note_not_applied("Install", other);
                Ok(())
            }
        }
    }

    /// The settings of how processes run; true if `key` was one of them.
    fn apply_exec_context(
        &mut self,
        key: &str,
        raw: &str,
        expand: &dyn Fn(&str) -> Result<String, SettingError>,
    ) -> Result<bool, SettingError> {
        let exec = &mut self.exec;
        match key {
            "User" => exec.user = non_empty(expand(raw)?),
            "Group" => exec.group = non_empty(expand(raw)?),
            "SupplementaryGroups" if raw.is_empty() => exec.supplementary_groups.clear(),
            "SupplementaryGroups" => exec
                .supplementary_groups
                .extend(expand(raw)?.split_whitespace().map(str::to_owned)),
            "DynamicUser" => exec.dynamic_user = values::boolean(raw)?,
            "WorkingDirectory" => {
                let value = expand(raw)?;
                exec.working_directory = if value.is_empty() {
                    None
                } else {
                    let (optional, path) = match value.strip_prefix('-') {
                        Some(rest) => (true, rest),
                        None => (false, value.as_str()),
                    };
                    if path != "~" && !path.starts_with('/') {
                        return Err(SettingError::WorkingDirectory(value));
                    }
                    Some(WorkingDirectory {
                        path: PathBuf::from(path),
                        optional,
                    })
                };
            }
            "UMask" => exec.umask = values::mode(raw)?,
            "Environment" if raw.is_empty() => exec.environment.clear(),
            "Environment" => {
                for (name, value) in words::parse_environment(raw)? {
                    exec.environment.push((name, expand(&value)?));
                }
            }
            "EnvironmentFile" if raw.is_empty() => exec.environment_files.clear(),
            "EnvironmentFile" => {
                let value = expand(raw)?;
                let (optional, path) = match value.strip_prefix('-') {
                    Some(rest) => (true, rest.to_owned()),
                    None => (false, value.clone()),
                };
                if !path.starts_with('/') {
                    return Err(SettingError::EnvironmentFile(value));
                }
                exec.environment_files.push(EnvironmentFile {
                    path: PathBuf::from(path),
                    optional,
                });
            }
            "RuntimeDirectoryPreserve" => {
                exec.runtime_directory_preserve = raw == "restart" || values::boolean(raw)?
            }
            "SyslogIdentifier" => exec.syslog_identifier = non_empty(expand(raw)?),
            "NoNewPrivileges" => exec.no_new_privileges = values::boolean(raw)?,
            k if filesystem::KEYS.contains(&k) => exec.filesystem.apply(k, &expand(raw)?)?,
            "SystemCallFilter" if raw.trim().is_empty() => exec.system_call_filter.clear(),
            "SystemCallFilter" => {
                let raw = raw.trim();
                let (inverted, list) = match raw.strip_prefix('~') {
                    Some(rest) => (true, rest),
                    None => (false, raw),
                };
                exec.system_call_filter.push(SyscallFilterLine {
                    inverted,
                    // A per-call errno (`name:EPERM`) is not kept: SystemCallErrorNumber=
                    // applies to the whole filter.
                    entries: list
                        .split_whitespace()
                        .map(|e| e.split(':').next().unwrap_or(e).to_owned())
                        .collect(),
                });
            }
            "SystemCallErrorNumber" => {
                exec.system_call_error_number = match raw.trim() {
                    "" | "kill" => None,
                    other => Some(values::errno(other)?),
                }
            }
            "RestrictNamespaces" => {
                exec.restrictions.namespaces =
                    restrict_namespaces(exec.restrictions.namespaces, raw)?
            }
            "RestrictRealtime" => exec.restrictions.realtime = values::boolean(raw)?,
            "RestrictSUIDSGID" => exec.restrictions.suid_sgid = values::boolean(raw)?,
            "MemoryDenyWriteExecute" => {
                exec.restrictions.memory_deny_write_execute = values::boolean(raw)?
            }
            "LockPersonality" => exec.restrictions.lock_personality = values::boolean(raw)?,
            "PrivateDevices" => exec.protections.private_devices = values::boolean(raw)?,
            "ProtectKernelModules" => {
                exec.protections.kernel_modules = values::boolean(raw)?;
                exec.filesystem.protect_kernel_modules = exec.protections.kernel_modules;
            }
            "ProtectClock" => exec.protections.clock = values::boolean(raw)?,
            // systemd 257's `private`: a UTS namespace where the name may change, no filter.
            "ProtectHostname" if raw.trim() == "private" => exec.protections.hostname = false,
            "ProtectHostname" => exec.protections.hostname = values::boolean(raw)?,
            "SystemCallArchitectures" => {
                let names: Vec<&str> = raw.split_whitespace().collect();
                let native = native_architecture_names();
                exec.restrictions.native_architecture_only = !names.is_empty();
                if names.iter().any(|name| !native.contains(name)) {
                    // Another ABI allowed besides the native one: not expressed (the VM's own
                    // filter ends every call of another ABI anyway).
                    exec.restrictions.native_architecture_only = false;
                    return Ok(false);
                }
            }
            "RestrictAddressFamilies" => {
                exec.address_families = address_families(exec.address_families.take(), raw)?
            }
            "CapabilityBoundingSet" => {
                exec.capability_bounding_set =
                    bounding_set(exec.capability_bounding_set.take(), raw)?
            }
            "AmbientCapabilities" => {
                exec.ambient_capabilities =
                    ambient_set(std::mem::take(&mut exec.ambient_capabilities), raw)?
            }
            "DeviceAllow" => {
                match expand(raw)?.split_whitespace().next() {
                    None => exec.device_allow.clear(),
                    Some(device) if device.starts_with("/dev/") => {
                        exec.device_allow.push(device.to_owned())
                    }
                    Some(_) => {}
                }
                // Recorded, not applied: the section's own handler lists it as not applied.
                return Ok(false);
            }
            "StandardInput" => {
                exec.standard_input = match raw {
                    "" | "null" => StandardInput::Null,
                    "socket" => StandardInput::Socket,
                    _ => StandardInput::Other,
                }
            }
            "StandardOutput" | "StandardError" => {
                let value = match raw {
                    "" | "inherit" => StandardOutput::Inherit,
                    "socket" => StandardOutput::Socket,
                    "null" => StandardOutput::Null,
                    // journal, kmsg, syslog, tty, files: the unit's log stands in for them.
                    _ => StandardOutput::Log,
                };
                if key == "StandardOutput" {
                    exec.standard_output = value;
                } else {
                    exec.standard_error = value;
                }
            }
            k if k.starts_with("Limit") => {
                if !values::LIMITS.contains(&k) {
                    return Err(SettingError::UnknownLimit(k.to_owned()));
                }
                exec.limits.retain(|(name, _)| name != k);
                if !raw.is_empty() {
                    exec.limits.push((k.to_owned(), values::limit(k, raw)?));
                }
            }
            k => {
                let Some(kind) = DirectoryKind::ALL
                    .into_iter()
                    .find(|d| k == d.setting() || k.strip_suffix("Mode") == Some(d.setting()))
                else {
                    return Ok(false);
                };
                let directories = exec.directories_mut(kind);
                if k.ends_with("Mode") {
                    directories.mode = values::mode(raw)?;
                } else if raw.is_empty() {
                    directories.paths.clear();
                } else {
                    for word in expand(raw)?.split_whitespace() {
                        // `dir:symlink` (systemd 250) names a symlink to make as well; the
                        // directory is what matters here.
                        let dir = word.split(':').next().unwrap_or(word);
                        if dir.starts_with('/') || dir.split('/').any(|c| c == "..") {
                            return Err(SettingError::NotRelative {
                                key: k.to_owned(),
                                word: word.to_owned(),
                                root: kind.root(),
                            });
                        }
                        directories.paths.push(dir.to_owned());
                    }
                }
            }
        }
        Ok(true)
    }

    fn apply_service(
        &mut self,
        key: &str,
        raw: &str,
        expand: &dyn Fn(&str) -> Result<String, SettingError>,
        context: &Context,
    ) -> Result<(), SettingError> {
        let Some(service) = self.service.as_mut() else {
            return Ok(());
        };
        let exec_list = match key {
            "ExecCondition" => Some(&mut service.exec_condition),
            "ExecStartPre" => Some(&mut service.exec_start_pre),
            "ExecStart" => Some(&mut service.exec_start),
            "ExecStartPost" => Some(&mut service.exec_start_post),
            "ExecReload" => Some(&mut service.exec_reload),
            "ExecStop" => Some(&mut service.exec_stop),
            "ExecStopPost" => Some(&mut service.exec_stop_post),
            _ => None,
        };
        if let Some(list) = exec_list {
            if raw.is_empty() {
                list.clear();
                return Ok(());
            }
            for mut command in words::parse_exec(raw)? {
                // Specifiers are resolved word by word, after quotes: a value with spaces
                // stays one argument.
                command.path = specifier::expand(&command.path, context)?;
                for word in &mut command.argv {
                    *word = specifier::expand(word, context)?;
                }
                list.push(command);
            }
            return Ok(());
        }
        let seconds = Duration::from_secs(1);
        // For the start and stop timeouts, 0 means "none", as `infinity` does.
        let timeout = |raw: &str| -> Result<Option<Duration>, SettingError> {
            Ok(values::timespan(raw, seconds)?.filter(|d| !d.is_zero()))
        };
        match key {
            "Type" => {
                service.kind_given = !raw.is_empty();
                service.kind = match raw {
                    "" => ServiceType::Simple,
                    "simple" => ServiceType::Simple,
                    "exec" => ServiceType::Exec,
                    "forking" => ServiceType::Forking,
                    "oneshot" => ServiceType::Oneshot,
                    "dbus" => ServiceType::Dbus,
                    "notify" => ServiceType::Notify,
                    "notify-reload" => ServiceType::NotifyReload,
                    "idle" => ServiceType::Idle,
                    other => return Err(SettingError::UnknownType(other.to_owned())),
                }
            }
            "RemainAfterExit" => service.remain_after_exit = values::boolean(raw)?,
            "GuessMainPID" => service.guess_main_pid = values::boolean(raw)?,
            "PIDFile" => {
                let value = expand(raw)?;
                service.pid_file = if value.is_empty() {
                    None
                } else if value.starts_with('/') {
                    Some(PathBuf::from(value))
                } else {
                    // Relative paths are taken below /run, as systemd does.
                    Some(Path::new("/run").join(value))
                };
            }
            "BusName" => service.bus_name = non_empty(expand(raw)?),
            "NotifyAccess" => {
                service.notify_access = Some(match raw {
                    "none" => NotifyAccess::None,
                    "main" => NotifyAccess::Main,
                    "exec" => NotifyAccess::Exec,
                    "all" => NotifyAccess::All,
                    other => return Err(unknown("NotifyAccess", other)),
                })
            }
            "Restart" => {
                service.restart = match raw {
                    "no" => Restart::No,
                    "on-success" => Restart::OnSuccess,
                    "on-failure" => Restart::OnFailure,
                    "on-abnormal" => Restart::OnAbnormal,
                    "on-watchdog" => Restart::OnWatchdog,
                    "on-abort" => Restart::OnAbort,
                    "always" => Restart::Always,
                    other => return Err(unknown("Restart", other)),
                }
            }
            "RestartSec" => {
                service.restart_sec = values::timespan(raw, seconds)?.unwrap_or(Duration::MAX)
            }
            "TimeoutSec" => {
                service.timeout_start = timeout(raw)?;
                service.timeout_stop = service.timeout_start;
            }
            "TimeoutStartSec" => service.timeout_start = timeout(raw)?,
            "TimeoutStopSec" => service.timeout_stop = timeout(raw)?,
            "KillMode" => {
                service.kill_mode = match raw {
                    "control-group" => KillMode::ControlGroup,
                    "mixed" => KillMode::Mixed,
                    "process" => KillMode::Process,
                    "none" => KillMode::None,
                    other => return Err(unknown("KillMode", other)),
                }
            }
            "KillSignal" => service.kill_signal = signal(raw)?,
            "FinalKillSignal" => service.final_kill_signal = signal(raw)?,
            "SendSIGKILL" => service.send_sigkill = values::boolean(raw)?,
            "SuccessExitStatus" if raw.is_empty() => service.success_exit_status.clear(),
            "SuccessExitStatus" => {
                for word in raw.split_whitespace() {
                    match word.parse::<i32>().ok().or_else(|| exit_status_name(word)) {
                        Some(code) => service.success_exit_status.push(code),
                        // A signal name: a service killed by it exited cleanly.
                        None => service.success_exit_status.push(
                            -signal(word)
                                .map_err(|_| SettingError::NotExitStatus(word.to_owned()))?,
                        ),
                    }
                }
            }
            // Kept in [Service] by older units; systemd still reads them there.
            "StartLimitInterval" | "StartLimitIntervalSec" | "StartLimitBurst" => {
                return self.apply_unit(key, raw, expand)
            }
            "MemoryMax" | "MemoryLimit" => {
                service.resources.memory_max =
                    non_empty_value(raw, |v| values::amount_or_share(v, physical_memory()))?
                        .flatten()
            }
            "TasksMax" => {
                service.resources.tasks_max =
                    non_empty_value(raw, |v| values::amount_or_share(v, pid_max()))?.flatten()
            }
            "CPUQuota" => service.resources.cpu_quota = non_empty_value(raw, values::percent)?,
            "CPUWeight" => service.resources.cpu_weight = non_empty_value(raw, values::cpu_weight)?,
            "CPUShares" => {
                // cgroup v1's shares, 1024 by default, as a weight (100 by default).
                service.resources.cpu_weight = non_empty_value(raw, |v| {
                    let shares: u64 = v
                        .trim()
                        .parse()
                        .map_err(|_| values::ValueError::NotNumber(v.to_owned()))?;
                    Ok((shares * 100 / 1024).clamp(1, 10_000))
                })?
            }
            other => self.note_not_applied("Service", other),
        }
        Ok(())
    }

    fn apply_socket(
        &mut self,
        key: &str,
        raw: &str,
        expand: &dyn Fn(&str) -> Result<String, SettingError>,
    ) -> Result<(), SettingError> {
        let Some(socket) = self.socket.as_mut() else {
            return Ok(());
        };
        let kind = match key {
            "ListenStream" => Some(ListenKind::Stream),
            "ListenDatagram" => Some(ListenKind::Datagram),
            "ListenSequentialPacket" => Some(ListenKind::SequentialPacket),
            "ListenFIFO" => Some(ListenKind::Fifo),
            "ListenSpecial" | "ListenNetlink" | "ListenMessageQueue" | "ListenUSBFunction" => {
                Some(ListenKind::Other)
            }
            _ => None,
        };
        if let Some(kind) = kind {
            if raw.is_empty() {
                socket.listen.clear();
            } else {
                socket.listen.push(Listen {
                    kind,
                    address: expand(raw)?,
                });
            }
            return Ok(());
        }
        match key {
            "Accept" => socket.accept = values::boolean(raw)?,
            "Service" => {
                let value = expand(raw)?;
                crate::name::UnitName::parse(&value)?;
                socket.service = Some(value);
            }
            "SocketMode" => socket.socket_mode = Some(values::mode(raw)?),
            "SocketUser" => socket.socket_user = non_empty(expand(raw)?),
            "SocketGroup" => socket.socket_group = non_empty(expand(raw)?),
            "FileDescriptorName" => socket.file_descriptor_name = non_empty(expand(raw)?),
            "BindIPv6Only" => {
                socket.bind_ipv6_only = match raw {
                    "" | "default" => BindIpv6Only::Default,
                    "both" => BindIpv6Only::Both,
                    "ipv6-only" => BindIpv6Only::Ipv6Only,
                    other => return Err(unknown("BindIPv6Only", other)),
                }
            }
            "MaxConnections" => {
                socket.max_connections = raw.parse().map_err(|_| SettingError::NotANumber {
                    key: "MaxConnections",
                    value: raw.to_owned(),
                })?
            }
            other => self.note_not_applied("Socket", other),
        }
        Ok(())
    }
}

impl Unit {
    fn apply_timer(
        &mut self,
        key: &str,
        raw: &str,
        expand: &dyn Fn(&str) -> Result<String, SettingError>,
    ) -> Result<(), SettingError> {
        let Some(timer) = self.timer.as_mut() else {
            return Ok(());
        };
        let spans = match key {
            "OnActiveSec" => Some(&mut timer.on_active),
            "OnBootSec" | "OnStartupSec" => Some(&mut timer.on_boot),
            "OnUnitActiveSec" => Some(&mut timer.on_unit_active),
            "OnUnitInactiveSec" => Some(&mut timer.on_unit_inactive),
            _ => None,
        };
        if let Some(spans) = spans {
            if raw.is_empty() {
                spans.clear();
            } else if let Some(span) = values::timespan(raw, Duration::from_secs(1))? {
                spans.push(span);
            }
            return Ok(());
        }
        match key {
            "OnCalendar" if raw.is_empty() => timer.on_calendar.clear(),
            "OnCalendar" => timer.on_calendar.push(raw.to_owned()),
            "Unit" => {
                let value = expand(raw)?;
                UnitName::parse(&value)?;
                timer.unit = non_empty(value);
            }
            other => self.note_not_applied("Timer", other),
        }
        Ok(())
    }

    /// The unit a timer starts: `Unit=`, or the service of its own name.
    pub fn timer_target(&self) -> Option<String> {
        let timer = self.timer.as_ref()?;
        Some(
            timer
                .unit
                .clone()
                .unwrap_or_else(|| format!("{}.service", self.name.stem())),
        )
    }
}

/// A space-separated list of unit names; an empty value empties the list.
fn unit_list(
    list: &mut Vec<String>,
    raw: &str,
    expand: &dyn Fn(&str) -> Result<String, SettingError>,
) -> Result<(), SettingError> {
    if raw.is_empty() {
        list.clear();
        return Ok(());
    }
    for word in raw.split_whitespace() {
        let name = expand(word)?;
        let name = UnitName::parse(&name)?;
        if !list.iter().any(|n| n == name.as_str()) {
            list.push(name.to_string());
        }
    }
    Ok(())
}

fn unknown(key: &'static str, value: &str) -> SettingError {
    SettingError::UnknownValue {
        key,
        value: value.to_owned(),
    }
}

/// `AmbientCapabilities=` as systemd combines its lines: a list adds to what earlier lines
/// named, `~list` keeps all but those, an empty value resets to none.
fn ambient_set(
    current: std::collections::BTreeSet<String>,
    raw: &str,
) -> Result<std::collections::BTreeSet<String>, SettingError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(std::collections::BTreeSet::new());
    }
    let (inverted, list) = match raw.strip_prefix('~') {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    let named = capability_names(list)?;
    Ok(if inverted {
        caps::all()
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !named.contains(c))
            .collect()
    } else {
        current.union(&named).cloned().collect()
    })
}

/// The capabilities a space-separated list names (`CAP_CHOWN`, or `chown`), as `CAP_…`.
fn capability_names(list: &str) -> Result<std::collections::BTreeSet<String>, SettingError> {
    let mut named = std::collections::BTreeSet::new();
    for word in list.split_whitespace() {
        let cap = word.to_ascii_uppercase();
        let cap = if cap.starts_with("CAP_") {
            cap
        } else {
            format!("CAP_{cap}")
        };
        if cap.parse::<caps::Capability>().is_err() {
            return Err(SettingError::Value(values::ValueError::NotCapability(
                word.to_owned(),
            )));
        }
        named.insert(cap);
    }
    Ok(named)
}

/// `CapabilityBoundingSet=` as systemd combines its lines: a list adds to what earlier lines
/// kept (the first list replaces "all"), `~list` takes those away, an empty value resets to
/// all (None).
fn bounding_set(
    current: Option<std::collections::BTreeSet<String>>,
    raw: &str,
) -> Result<Option<std::collections::BTreeSet<String>>, SettingError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    let (inverted, list) = match raw.strip_prefix('~') {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    let named = capability_names(list)?;
    let all = || caps::all().iter().map(|c| c.to_string()).collect();
    Ok(Some(if inverted {
        current
            .unwrap_or_else(all)
            .difference(&named)
            .cloned()
            .collect()
    } else {
        match current {
            Some(kept) => kept.union(&named).cloned().collect(),
            None => named,
        }
    }))
}

/// The `CLONE_NEW*` flag of each namespace type, by the name `RestrictNamespaces=` uses.
pub const NAMESPACE_TYPES: [(&str, u64); 8] = [
    ("cgroup", libc::CLONE_NEWCGROUP as u64),
    ("ipc", libc::CLONE_NEWIPC as u64),
    ("net", libc::CLONE_NEWNET as u64),
    ("mnt", libc::CLONE_NEWNS as u64),
    ("pid", libc::CLONE_NEWPID as u64),
    ("user", libc::CLONE_NEWUSER as u64),
    ("uts", libc::CLONE_NEWUTS as u64),
    ("time", libc::CLONE_NEWTIME as u64),
];

/// Every namespace type's flag.
pub fn all_namespaces() -> u64 {
    NAMESPACE_TYPES.iter().fold(0, |all, (_, flag)| all | flag)
}

/// `RestrictNamespaces=` as systemd reads it, as the namespace types still allowed: a boolean
/// replaces what was before (`yes`: none, `no`: all); a list allows only those types, `~list`
/// all but those; a later list adds its types, a later `~list` takes them away; empty resets.
fn restrict_namespaces(current: Option<u64>, raw: &str) -> Result<Option<u64>, SettingError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    if let Ok(restrict) = values::boolean(raw) {
        return Ok(Some(if restrict { 0 } else { all_namespaces() }));
    }
    let (inverted, list) = match raw.strip_prefix('~') {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    let mut named = 0;
    for word in list.split_whitespace() {
        let (_, flag) = NAMESPACE_TYPES
            .iter()
            .find(|(name, _)| *name == word)
            .ok_or_else(|| SettingError::UnknownValue {
                key: "RestrictNamespaces",
                value: word.to_owned(),
            })?;
        named |= flag;
    }
    Ok(Some(match (current, inverted) {
        (None, false) => named,
        (None, true) => all_namespaces() & !named,
        (Some(allowed), false) => allowed | named,
        (Some(allowed), true) => allowed & !named,
    }))
}

/// The names `SystemCallArchitectures=` may give this machine's own architecture.
fn native_architecture_names() -> &'static [&'static str] {
    #[cfg(target_arch = "x86_64")]
    return &["native", "x86-64"];
    #[cfg(target_arch = "aarch64")]
    return &["native", "arm64"];
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    return &["native"];
}

/// `RestrictAddressFamilies=` as systemd combines its lines: the first one decides whether the
/// list allows (`AF_INET AF_UNIX`, or `none`) or denies (`~AF_PACKET`); a later line of the
/// same kind adds its families, one of the other kind takes them away; empty resets.
fn address_families(
    current: Option<AddressFamilies>,
    raw: &str,
) -> Result<Option<AddressFamilies>, SettingError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    if raw == "none" {
        return Ok(Some(AddressFamilies {
            allow: true,
            families: Default::default(),
        }));
    }
    let (inverted, list) = match raw.strip_prefix('~') {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    let named = list
        .split_whitespace()
        .map(values::address_family)
        .collect::<Result<std::collections::BTreeSet<i32>, _>>()?;
    let mut set = current.unwrap_or(AddressFamilies {
        allow: !inverted,
        families: Default::default(),
    });
    if set.allow != inverted {
        set.families.extend(named);
    } else {
        set.families.retain(|f| !named.contains(f));
    }
    Ok(Some(set))
}

/// An empty assignment resets a setting (None); anything else is parsed.
fn non_empty_value<T>(
    raw: &str,
    parse: impl FnOnce(&str) -> Result<T, values::ValueError>,
) -> Result<Option<T>, SettingError> {
    if raw.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some(parse(raw)?))
}

/// The machine's memory, in bytes: `MemoryMax=50%` is half of it.
fn physical_memory() -> u64 {
    let pages = nix::unistd::sysconf(nix::unistd::SysconfVar::_PHYS_PAGES)
        .ok()
        .flatten()
        .unwrap_or(0);
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096);
    (pages.max(0) as u64).saturating_mul(page.max(0) as u64)
}

/// The kernel's pid limit: `TasksMax=15%` is that share of it, as systemd's default is.
fn pid_max() -> u64 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(32_768)
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

/// The exit status names systemd accepts (BSD's sysexits.h and the LSB ones).
fn exit_status_name(name: &str) -> Option<i32> {
    const NAMES: [(&str, i32); 22] = [
        ("SUCCESS", 0),
        ("FAILURE", 1),
        ("INVALIDARGUMENT", 2),
        ("NOTIMPLEMENTED", 3),
        ("NOPERMISSION", 4),
        ("NOTINSTALLED", 5),
        ("NOTCONFIGURED", 6),
        ("NOTRUNNING", 7),
        ("USAGE", 64),
        ("DATAERR", 65),
        ("NOINPUT", 66),
        ("NOUSER", 67),
        ("NOHOST", 68),
        ("UNAVAILABLE", 69),
        ("SOFTWARE", 70),
        ("OSERR", 71),
        ("OSFILE", 72),
        ("CANTCREAT", 73),
        ("IOERR", 74),
        ("TEMPFAIL", 75),
        ("PROTOCOL", 76),
        ("NOPERM", 77),
    ];
    NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, code)| *code)
        .or((name == "CONFIG").then_some(78))
}

/// A signal by name (`SIGTERM`, `TERM`) or number.
pub fn signal(text: &str) -> Result<i32, SettingError> {
    if let Ok(number) = text.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(number)
            .map(|s| s as i32)
            .map_err(|_| SettingError::NotSignal(text.to_owned()));
    }
    let name = if text.starts_with("SIG") {
        text.to_owned()
    } else {
        format!("SIG{text}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| SettingError::NotSignalName(text.to_owned()))
}
