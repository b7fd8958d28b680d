//! The options of a new VM as a person writes them — the command line's flags, the web view's
//! form — and their one reading into [`CreateOptions`].

use std::path::PathBuf;

use feather_core::size::parse_bytes;
use feather_core::{Error, Limits, NetMode, NetworkConfig, VmConfig};
use serde::Deserialize;

use crate::lifecycle::CreateOptions;

/// Each field as typed: sizes like `512M`, `--pids N|max`, `--net private|none|host`,
/// `--publish HOST:VM[/udp]`. Absent fields take the documented defaults.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CreateRequest {
    pub base: Option<PathBuf>,
    pub memory: Option<String>,
    pub pids: Option<String>,
    pub cpus: Option<String>,
    pub disk: Option<String>,
    pub allow_userns: bool,
    pub net: Option<String>,
    pub publish: Vec<String>,
    pub egress: bool,
    pub tags: Vec<String>,
    /// `--ro PATH`, repeatable: paths of the base the VM sees read-only.
    pub ro: Vec<PathBuf>,
}

impl CreateRequest {
    /// Reads every field, or says which one is wrong and why.
    pub fn options(&self) -> Result<CreateOptions, Error> {
        let limits = Limits {
            memory: self.memory.as_deref().map(parse_bytes).transpose()?,
            pids: match &self.pids {
                Some(text) => Limits::parse_pids(text)?,
                None => Some(Limits::DEFAULT_PIDS),
            },
            cpus: self.cpus.as_deref().map(Limits::parse_cpus).transpose()?,
            disk: None,
        };
        let network = NetworkConfig {
            mode: self
                .net
                .as_deref()
                .map(str::parse)
                .transpose()?
                .unwrap_or(NetMode::Private),
            address: None,
            publish: self
                .publish
                .iter()
                .map(|p| p.parse())
                .collect::<Result<_, _>>()?,
            egress: self.egress,
        };
        network.validate()?;
        Ok(CreateOptions {
            base: self.base.clone(),
            limits,
            ephemeral: false,
            network,
            tags: self
                .tags
                .iter()
                .map(|tag| VmConfig::validate_tag(tag).map(|()| tag.clone()))
                .collect::<Result<_, _>>()?,
            disk: self.disk.as_deref().map(parse_bytes).transpose()?,
            allow_userns: self.allow_userns,
            read_only: self.ro.clone(),
        })
    }
}
