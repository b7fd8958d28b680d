use std::path::PathBuf;

/// What can go wrong with a VM's network. Each message names the VM, file, interface or port
/// concerned, and what the user can do.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} (fix or remove the file)")]
    BadFile {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },

    #[error("cannot encode {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: toml::ser::Error,
    },

    /// A state file, or a VM's network settings, as feather-core checks them.
    #[error(transparent)]
    Core(#[from] feather_core::Error),

    #[error("no free address left in {subnet} (remove VMs with `feather rm`, or give this state root a larger subnet in {settings})")]
    SubnetFull { subnet: String, settings: PathBuf },

    #[error("subnet {subnet} or bridge {bridge} is taken by {holder} (choose others with FEATHER_SUBNET and FEATHER_BRIDGE, or edit {settings})")]
    SubnetTaken {
        subnet: String,
        bridge: String,
        holder: String,
        settings: PathBuf,
    },

    #[error(
        "no free subnet left for a new state root in {pool} (remove state roots no longer used)"
    )]
    NoSubnet { pool: String },

    #[error("host port {port}/{protocol} is already in use on this host (pick another HOSTPORT for --publish)")]
    PortTaken {
        port: u16,
        protocol: feather_core::network::Protocol,
        #[source]
        source: std::io::Error,
    },

    #[error("{op} {object}")]
    Netlink {
        op: &'static str,
        object: String,
        #[source]
        source: std::io::Error,
    },

    #[error("nftables ({what}) (is the `nft` tool installed? `apt-get install nftables`)")]
    Firewall {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// nft refused the change; `why` is its own error output.
    #[error("nftables ({what}): {why}")]
    FirewallRefused { what: String, why: String },

    #[error("{name}")]
    Setting {
        name: &'static str,
        #[source]
        source: crate::subnet::SubnetError,
    },

    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = NetError> = std::result::Result<T, E>;

pub(crate) trait IoAt<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoAt<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| NetError::Io {
            path: path.into(),
            source,
        })
    }
}

pub(crate) fn netlink(
    op: &'static str,
    object: impl Into<String>,
) -> impl FnOnce(std::io::Error) -> NetError {
    let object = object.into();
    move |source| NetError::Netlink { op, object, source }
}
