//! feather's own features, asked for through annotations in one namespace, `org.feather.`,
//! which engines pass through unchanged (`ctr run --annotation`, `podman --annotation`,
//! Docker's `--annotation` where the engine has it):
//!
//! | annotation | meaning |
//! |---|---|
//! | `org.feather.base=host` | the container's root is a copy-on-write view of the host's `/` (the bundle's `root` is not used) |
//! | `org.feather.tags=a,b` | labels for Shuttle rules, kept in the container's annotations |
//! | `org.feather.services=UNIT[,UNIT…]` | the host's units, with their dependencies, started in the container before its process (needs `base=host`) |
//! | `org.feather.confine=ipc` or `none` | feather's IPC confinement on top of the config's, or not; unset: on, except for a privileged container ([`crate::confine`]) |
//!
//! Any other `org.feather.*` key is refused by name, so a typo never silently does nothing.
//! `base=host`, `services` and `confine=none` widen what the container gets: `create` honours
//! them only where the node's annotation policy allows them ([`crate::policy`]).

use anyhow::{bail, Result};
use oci_spec::runtime::Spec;

use crate::confine::Confine;

pub const PREFIX: &str = "org.feather.";

#[derive(Debug, Default, PartialEq)]
pub struct Feather {
    pub host_base: bool,
    pub tags: Vec<String>,
    /// Units as `feather create --service` takes them, `.service` implied.
    pub services: Vec<String>,
    /// None: not asked for, [`crate::confine::Confinement::of`] decides.
    pub confine: Option<Confine>,
}

impl Feather {
    pub fn parse(spec: &Spec) -> Result<Feather> {
        let mut feather = Feather::default();
        for (key, value) in spec.annotations().iter().flatten() {
            let Some(name) = key.strip_prefix(PREFIX) else {
                continue;
            };
            match name {
                "base" if value == "host" => feather.host_base = true,
                "base" => bail!("annotation {key}={value:?}: the only base feather-oci knows is \"host\""),
                "tags" => feather.tags = parse_tags(key, value)?,
                "services" => feather.services = parse_units(key, value)?,
                "confine" => feather.confine = Some(Confine::parse(key, value)?),
                _ => bail!("annotation {key}: unknown feather annotation (known: {PREFIX}base, {PREFIX}tags, {PREFIX}services, {PREFIX}confine)"),
            }
        }
        if !feather.services.is_empty() && !feather.host_base {
            // The units, their programs and their data are the host's: over an image's rootfs
            // there is nothing to start them from.
            bail!("annotation {PREFIX}services: host services need the host as the base (add the annotation {PREFIX}base=host)");
        }
        Ok(feather)
    }

    pub fn base_is_host(&self) -> bool {
        self.host_base
    }
}

fn parse_units(key: &str, value: &str) -> Result<Vec<String>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|unit| {
            feather_svc::UnitName::parse(unit)
                .map(|_| unit.to_owned())
                .map_err(|e| anyhow::anyhow!("annotation {key}: {e}"))
        })
        .collect()
}

fn parse_tags(key: &str, value: &str) -> Result<Vec<String>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|tag| {
            let fine = tag.len() <= 64
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if fine {
                Ok(tag.to_owned())
            } else {
                bail!(
                    "annotation {key}: tag {tag:?}: use up to 64 letters, digits, '.', '_' and '-'"
                )
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn spec_with(annotations: &[(&str, &str)]) -> Spec {
        let mut spec = Spec::default();
        let map: HashMap<String, String> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        spec.set_annotations(Some(map));
        spec
    }

    #[test]
    fn reads_base_and_tags_and_refuses_unknown_keys() {
        let feather = Feather::parse(&spec_with(&[
            ("org.feather.base", "host"),
            ("org.feather.tags", "a, b"),
        ]))
        .unwrap();
        assert!(feather.host_base);
        assert_eq!(feather.tags, ["a", "b"]);
        let error = Feather::parse(&spec_with(&[("org.feather.bsae", "host")])).unwrap_err();
        assert!(error.to_string().contains("org.feather.bsae"), "{error}");
        assert!(Feather::parse(&spec_with(&[("org.feather.tags", "a b")])).is_err());
        assert!(Feather::parse(&spec_with(&[("other.key", "x")])).is_ok());
    }

    #[test]
    fn services_need_the_host_as_base_and_confinement_is_read() {
        let feather = Feather::parse(&spec_with(&[
            ("org.feather.base", "host"),
            ("org.feather.services", "redis-server, nginx.service"),
        ]))
        .unwrap();
        assert_eq!(feather.services, ["redis-server", "nginx.service"]);
        assert_eq!(feather.confine, None);
        let error =
            Feather::parse(&spec_with(&[("org.feather.services", "redis-server")])).unwrap_err();
        assert!(
            error.to_string().contains("org.feather.base=host"),
            "{error}"
        );
        assert!(Feather::parse(&spec_with(&[
            ("org.feather.base", "host"),
            ("org.feather.services", "bad name")
        ]))
        .is_err());
        let off = Feather::parse(&spec_with(&[("org.feather.confine", "none")])).unwrap();
        assert_eq!(off.confine, Some(Confine::None));
        assert!(Feather::parse(&spec_with(&[("org.feather.confine", "some")])).is_err());
    }
}
