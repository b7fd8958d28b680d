//! A VM's configuration: what `feather create` was asked for. Written once at creation
//! (`config.toml`), read by every later command.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::network::NetworkConfig;
use crate::{Error, VmName};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VmConfig {
    pub name: VmName,
    /// A random identifier, unique across state roots; names the VM's cgroups so that VMs of
    /// the same name under different state roots never collide.
    pub id: String,
    /// The root tree the VM sees copy-on-write (`/` unless `--base` was given).
    pub base: PathBuf,
    #[serde(default)]
    pub limits: Limits,
    /// Seconds since the epoch.
    pub created: u64,
    /// Removed with everything in it when its first run ends (`feather run --rm`).
    #[serde(default)]
    pub ephemeral: bool,
    /// Mount points feather had to create in the VM's layer because the base lacks them;
    /// they are feather's, not the VM's, and `diff` leaves them out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scaffold: Vec<PathBuf>,
    /// Host services (unit names) the VM's service manager starts whenever the VM starts
    /// (`feather create --service`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Those services start with empty state on the VM's first start (`create --fresh-state`);
    /// later starts keep what they wrote.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fresh_state: bool,
    /// Configs written before VMs had networks load as `mode = "none"`, what they meant.
    #[serde(default)]
    pub network: NetworkConfig,
    /// Labels policy rules select VMs by (`@tag:NAME`); `feather create --tag`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The VM's processes may create user namespaces (`feather create --allow-userns`); by
    /// default the seccomp filter refuses them (docs/confinement.md).
    #[serde(default)]
    pub allow_userns: bool,
    /// Paths of the base the VM sees as read-only bind mounts of the base's own files instead
    /// of through its layer (`create --ro PATH`): absolute as inside the VM, without links.
    /// Writes there fail (EROFS), nothing there ever reaches the layer, and lookups skip
    /// overlayfs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only: Vec<PathBuf>,
}

/// Resource limits: memory, pids and cpus through the VM's cgroup, disk through a project quota
/// on its layers. `None` means unlimited.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    /// Bytes of memory (the kernel OOM-kills inside the VM beyond it).
    pub memory: Option<u64>,
    /// Number of tasks (fork fails with EAGAIN beyond it). `create` sets
    /// [`Limits::DEFAULT_PIDS`] unless told otherwise; configs written before that have none.
    pub pids: Option<u64>,
    /// CPU bandwidth in cores, e.g. 0.5 or 2.
    pub cpus: Option<f64>,
    /// Bytes the VM's layers may hold on the state root's filesystem (`create --disk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskQuota>,
}

/// A cap on the bytes a VM's layers hold (`create --disk`), and how it is enforced.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "by", rename_all = "kebab-case")]
pub enum DiskQuota {
    /// Every file of the VM's upper and work folders belongs to `project`, whose quota on the
    /// state root's filesystem is `bytes` (where that filesystem enforces project quotas).
    ProjectQuota {
        bytes: u64,
        /// The filesystem's project id, chosen at creation and unused by anything else then.
        project: u32,
    },
    /// The VM's layers live in a filesystem image of `bytes` of their own (`<vm>/disk.img`,
    /// sparse), mounted over its layer folders: where project quotas are not to be had.
    Image { bytes: u64 },
}

impl DiskQuota {
    pub fn bytes(&self) -> u64 {
        match *self {
            DiskQuota::ProjectQuota { bytes, .. } | DiskQuota::Image { bytes } => bytes,
        }
    }
}

impl Limits {
    /// Tasks a VM may have unless `create --pids` says otherwise: podman's default, enough for
    /// any ordinary workload, and it stops a fork bomb before it starves the host.
    pub const DEFAULT_PIDS: u64 = 2048;

    /// `--pids N`, or `--pids max` for no limit at all.
    pub fn parse_pids(text: &str) -> Result<Option<u64>, Error> {
        if text == "max" {
            return Ok(None);
        }
        let pids: u64 = text.parse().map_err(|_| Error::InvalidValue {
            what: "--pids",
            value: text.to_owned(),
            why: "expected a number of processes, or `max` for no limit".into(),
        })?;
        Self::validate_pids(pids).map(Some)
    }

    pub fn parse_cpus(text: &str) -> Result<f64, Error> {
        let cpus: f64 = text.parse().map_err(|_| Error::InvalidValue {
            what: "--cpus",
            value: text.to_owned(),
            why: "expected a number of cores such as 0.5 or 2".into(),
        })?;
        if !(0.01..=1024.0).contains(&cpus) {
            return Err(Error::InvalidValue {
                what: "--cpus",
                value: text.to_owned(),
                why: "must be between 0.01 and 1024".into(),
            });
        }
        Ok(cpus)
    }

    pub fn validate_pids(pids: u64) -> Result<u64, Error> {
        if pids == 0 {
            return Err(Error::InvalidValue {
                what: "--pids",
                value: "0".into(),
                why: "the VM needs at least one process".into(),
            });
        }
        Ok(pids)
    }
}

impl VmConfig {
    /// Whether the VM's layer lives in memory, in a tmpfs its keeper holds, rather than in its
    /// folder: a throw-away VM without a disk cap. Its layer goes with it, so nothing of it
    /// need ever reach the disk; made and removed on a disk (ext4 with `discard` above all)
    /// its folders cost a throw-away VM more than its whole start (docs/benchmarks.md). Only
    /// where the kernel takes overlay layers from a detached mount (Linux 6.15 and later);
    /// on an older one the layer is in the VM's folder, as a kept VM's.
    pub fn layer_in_memory(&self) -> bool {
        self.ephemeral
            && self.limits.disk.is_none()
            && feather_sys::kernel::takes_layers_from_detached_mounts()
    }

    /// A tag is a word policy files can name: letters, digits, '.', '_' and '-'.
    pub fn validate_tag(tag: &str) -> crate::Result<()> {
        let fine = !tag.is_empty()
            && tag.len() <= 64
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if fine {
            Ok(())
        } else {
            Err(crate::Error::InvalidValue {
                what: "--tag",
                value: tag.to_owned(),
                why: "use up to 64 letters, digits, '.', '_' and '-'".into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_toml() {
        let config = VmConfig {
            name: "web1".parse().unwrap(),
            id: "0123456789ab".into(),
            base: "/".into(),
            limits: Limits {
                memory: Some(512 << 20),
                pids: Some(256),
                cpus: Some(1.5),
                disk: Some(DiskQuota::ProjectQuota {
                    bytes: 16 << 20,
                    project: 0x4000_0001,
                }),
            },
            created: 1,
            ephemeral: false,
            scaffold: vec!["/proc".into()],
            services: vec!["nginx.service".into()],
            fresh_state: true,
            tags: vec!["web".into()],
            allow_userns: true,
            read_only: vec!["/usr".into()],
            network: NetworkConfig {
                mode: crate::network::NetMode::Private,
                address: Some([10, 77, 0, 2].into()),
                publish: vec!["8081:80".parse().unwrap()],
                egress: true,
            },
        };
        let text = toml::to_string(&config).unwrap();
        assert_eq!(toml::from_str::<VmConfig>(&text).unwrap(), config);
    }

    #[test]
    fn pids_take_a_number_or_max() {
        assert_eq!(Limits::parse_pids("64").unwrap(), Some(64));
        assert_eq!(Limits::parse_pids("max").unwrap(), None);
        assert!(Limits::parse_pids("0").is_err());
        assert!(Limits::parse_pids("lots").is_err());
    }

    #[test]
    fn cpus_must_be_sane() {
        assert_eq!(Limits::parse_cpus("0.5").unwrap(), 0.5);
        assert!(Limits::parse_cpus("0").is_err());
        assert!(Limits::parse_cpus("lots").is_err());
    }
}
