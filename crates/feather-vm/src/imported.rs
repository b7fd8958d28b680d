//! What an imported VM's own config may choose on this host (docs/security.md, row 66).
//!
//! `restore --import` and `feather serve` place a VM whose `config.toml` was written elsewhere:
//! by another host, or by whoever made the archive. Several of its fields name things of the
//! receiving host (the tree the VM runs over, paths of that tree it sees read-only, ports on
//! every address, tags the host's policy rules select VMs by) or widen what the VM may do
//! (user namespaces). Each is accepted only when it is what this host would choose itself, or
//! what its root stated on the command line ([`Accepted`]); everything else is refused, naming
//! the field, its value and what to do, before anything is placed.

use std::path::{Path, PathBuf};

use feather_core::display::escape_for_terminal;
use feather_core::{Error, NetMode, StateRoot, VmConfig};

use crate::error::{failed, Result};

/// What the receiving host's root accepts of imported VMs beyond what it always accepts
/// (`restore --import` and `serve` flags).
#[derive(Clone, Debug, Default)]
pub struct Accepted {
    /// `--base PATH`: the tree of this host imported VMs run over, canonical; `/` if none.
    base: Option<PathBuf>,
    /// `--allow-userns`: VMs whose processes may create user namespaces.
    pub allow_userns: bool,
    /// `--allow-publish`: VMs publishing host ports, as they were published where they ran.
    pub publish: bool,
    /// `--allow-egress`: VMs reaching beyond this host, masqueraded as it (`create --egress`).
    pub egress: bool,
    /// `--tag TAG`: the tags an imported VM may carry.
    pub tags: Vec<String>,
    /// `serve --name NAME`: the names policy rules select VMs by that a received VM may have.
    pub names: Vec<String>,
}

impl Accepted {
    /// With `base` (`--base`) checked as `create --base` checks it: an existing folder outside
    /// the state root, named by its canonical path (what a VM's config holds).
    pub fn new(root: &StateRoot, base: Option<&Path>) -> Result<Accepted> {
        let base = match base {
            None => None,
            Some(given) => Some(crate::lifecycle::checked_base(root, given)?),
        };
        Ok(Accepted {
            base,
            ..Accepted::default()
        })
    }

    /// The tree imported VMs run over here.
    fn base(&self) -> &Path {
        self.base.as_deref().unwrap_or(Path::new("/"))
    }
}

/// Whether `config`, unpacked from `file`, asks nothing of this host that its root did not
/// choose; the refusal names the field, the value and what to do.
pub(crate) fn check(
    root: &StateRoot,
    config: &VmConfig,
    accepted: &Accepted,
    file: &str,
) -> Result<()> {
    let refuse = |field: &str, value: &dyn std::fmt::Display, why: String| {
        let value = escape_for_terminal(&value.to_string()).into_owned();
        Err(failed(
            &config.name,
            format!("{file}: its config.toml's {field} is {value}: {why}; nothing was imported"),
        ))
    };
    if config.base != accepted.base() {
        let base = config.base.display();
        return refuse(
            "base",
            &base,
            format!(
                "the tree of this host the VM would run over, and this host runs imported VMs \
                 over {}; if {base} on this host is the tree the VM was made over, import it \
                 with `--base {base}`",
                accepted.base().display()
            ),
        );
    }
    for dir in &config.scaffold {
        let made_by_feather = crate::hiding::MOUNT_POINTS
            .iter()
            .any(|point| Path::new("/").join(point) == *dir);
        if !made_by_feather {
            return refuse(
                "scaffold",
                &dir.display(),
                "feather makes no such mount point; the archive was made by hand or altered".into(),
            );
        }
    }
    let hidden = crate::hiding::state_folders(root);
    for path in &config.read_only {
        match crate::read_only::resolve(&config.base, std::slice::from_ref(path), &hidden) {
            Ok(resolved) if resolved == [path.clone()] => {}
            Ok(_) => {
                return refuse(
                    "read_only",
                    &path.display(),
                    "`create --ro` records it otherwise (absolute, without `.`); the archive \
                     was made by hand or altered"
                        .into(),
                )
            }
            Err(e) => return refuse("read_only", &path.display(), read_only_why(e)),
        }
    }
    if config.ephemeral {
        return refuse(
            "ephemeral",
            &true,
            "a throw-away VM is never checkpointed; the archive was made by hand or altered".into(),
        );
    }
    if config.network.mode == NetMode::Host {
        return refuse(
            "network mode",
            &"host",
            "the VM would share this host's network, and a VM on its host's network is never \
             checkpointed; the archive was made by hand or altered"
                .into(),
        );
    }
    if let Err(e) = config.network.validate() {
        return refuse(
            "network",
            &config.network.mode,
            format!("{e}, which `feather create` refuses; the archive was made by hand or altered"),
        );
    }
    if config.network.mode == NetMode::Private && config.network.address.is_none() {
        return refuse(
            "network.address",
            &"none",
            "a VM on a private network keeps the address it had, and `feather create` always \
             leases one; the archive was made by hand or altered"
                .into(),
        );
    }
    if config.network.egress && !accepted.egress {
        return refuse(
            "network.egress",
            &true,
            "the VM would reach beyond this host, masqueraded as this host (and this host would \
             forward packets); import it with `--allow-egress` to let it"
                .into(),
        );
    }
    if !config.network.publish.is_empty() && !accepted.publish {
        let ports: Vec<String> = config
            .network
            .publish
            .iter()
            .map(|p| p.to_string())
            .collect();
        return refuse(
            "publish",
            &ports.join(", "),
            "the VM would listen on those ports on every address of this host; import it with \
             `--allow-publish` to publish them here as they were published where it ran"
                .into(),
        );
    }
    if config.allow_userns && !accepted.allow_userns {
        return refuse(
            "allow_userns",
            &true,
            "the VM's processes could create user namespaces, which this host refuses VMs by \
             default; import it with `--allow-userns` to let them"
                .into(),
        );
    }
    for tag in &config.tags {
        if VmConfig::validate_tag(tag).is_err() {
            return refuse(
                "tags",
                tag,
                "no `create --tag` makes such a tag; the archive was made by hand or altered"
                    .into(),
            );
        }
        if !accepted.tags.contains(tag) {
            return refuse(
                "tags",
                tag,
                format!(
                    "this host's policy rules select VMs by their tags (`@tag:{tag}`); import \
                     it with `--tag {tag}` if VMs with that tag may come in here"
                ),
            );
        }
    }
    check_limits(config).or_else(|(field, value)| {
        refuse(
            field,
            &value,
            "no `feather create` sets that; the archive was made by hand or altered".into(),
        )
    })
}

/// Why `create --ro` would refuse a path, in the words of an imported config.
fn read_only_why(e: Error) -> String {
    let why = match e {
        Error::InvalidValue { why, .. } => why,
        other => other.to_string(),
    };
    format!("{why}; the archive was made by hand or altered, or the base differs here")
}

/// The limits `feather create` can set: a field and value it never sets otherwise.
fn check_limits(config: &VmConfig) -> std::result::Result<(), (&'static str, String)> {
    let limits = &config.limits;
    if let Some(cpus) = limits.cpus {
        if feather_core::config::Limits::parse_cpus(&cpus.to_string()).is_err() {
            return Err(("limits.cpus", cpus.to_string()));
        }
    }
    if limits.pids == Some(0) {
        return Err(("limits.pids", "0".into()));
    }
    if limits.memory == Some(0) {
        return Err(("limits.memory", "0".into()));
    }
    if limits.disk.is_some_and(|disk| disk.bytes() == 0) {
        return Err(("limits.disk", "0 bytes".into()));
    }
    Ok(())
}

/// The VM's disk cap made on this host as `create --disk` makes it: the project id (or image)
/// an archive names is another host's choice, and here could be another VM's project or the
/// administrator's, whose limit the VM's start would set and its `rm` lift.
pub(crate) fn disk_here(
    root: &StateRoot,
    config: &VmConfig,
) -> Result<Option<feather_core::DiskQuota>> {
    config
        .limits
        .disk
        .map(|disk| crate::disk::allocate(&config.name, root.dir(), disk.bytes()))
        .transpose()
}

/// Records of a VM's checkpoint folder that only this host writes (a migration's receiver and
/// sender, while one runs), never an export: in an archive, made by hand. A `hold` would make
/// the restore wait for whatever host process it names. The receiver's `criu lazy-pages`
/// (started by `feather serve`) has its socket, its status file and its log there too; an
/// export is a dump into a folder made anew, which never holds them.
const HOST_RECORDS: [&str; 6] = [
    crate::images::HOLD,
    crate::images::RELEASED_TO,
    crate::images::LAZY,
    feather_migrate::criu::LAZY_SOCKET,
    feather_migrate::criu::LAZY_STATUS,
    feather_migrate::criu::LAZY_LOG,
];

/// Whether the unpacked checkpoint folder `checkpoint` holds a record no export writes.
pub(crate) fn check_records(
    name: &feather_core::VmName,
    checkpoint: &Path,
    file: &str,
) -> Result<()> {
    for record in HOST_RECORDS {
        if checkpoint.join(record).symlink_metadata().is_ok() {
            return Err(failed(
                name,
                format!(
                    "{file} holds checkpoint/{record}, which no export holds (this host writes it \
                     while a migration runs): it was made by hand or altered; nothing was imported"
                ),
            ));
        }
    }
    Ok(())
}

/// Whether a VM a sender offers as `name` (`feather serve`) may have that name here: policy
/// rules select VMs by name as by tag, and a VM named as a rule's source or target would get
/// what the rule grants it, or receive what it opens to that VM. The receiver's root names
/// such VMs with `serve --name NAME`; any other name is the sender's to choose, as before.
/// (`restore --import` takes the name from its own command line: the root chose it.)
pub(crate) fn check_received_name(
    root: &StateRoot,
    name: &feather_core::VmName,
    accepted: &Accepted,
    file: &str,
) -> Result<()> {
    if accepted.names.iter().any(|n| n == name.as_str()) {
        return Ok(());
    }
    let policy = feather_shuttle::policy::Policy::load(root.dir()).map_err(|e| {
        failed(
            name,
            format!("{file}: cannot read this host's policy to check its name: {e}; nothing was imported"),
        )
    })?;
    let named = |selector: &feather_shuttle::policy::Selector| matches!(selector, feather_shuttle::policy::Selector::Vm(vm) if vm == name.as_str());
    match policy
        .rules()
        .iter()
        .find(|rule| named(&rule.source) || named(&rule.target))
    {
        None => Ok(()),
        Some(rule) => Err(failed(
            name,
            format!(
                "{file}: this host's policy rule {} names VM {name}, and a sender chooses the \
                 name of the VM it sends; accept it with `serve --name {name}` if VM {name} may \
                 come in here; nothing was imported",
                rule.at
            ),
        )),
    }
}
