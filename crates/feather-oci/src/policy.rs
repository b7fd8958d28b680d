//! Which of feather's widening annotations this node honours. Whoever writes a container's
//! config does not decide that: under Kubernetes a pod's author writes its annotations and
//! containerd copies them into `config.json`, and `org.feather.base=host` makes the node's `/`
//! the root of a container run as root (node-root-equivalent). The node's admin decides, in a
//! root-owned file (`/etc/feather/oci.toml`, or the global `--annotation-policy FILE` an
//! engine's runtime configuration passes):
//!
//! ```toml
//! [annotations]
//! allow = ["org.feather.base=host", "org.feather.services", "org.feather.confine=none"]
//! ```
//!
//! Annotations that only narrow or label (`org.feather.tags`, `org.feather.confine=ipc`)
//! need no policy. A widening one the policy does not allow fails `create` (and `restore`),
//! naming the key and the policy: it is never silently ignored.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::annotations::Feather;
use crate::confine::Confine;

/// Where the node's policy is when no `--annotation-policy` is given.
pub const DEFAULT_PATH: &str = "/etc/feather/oci.toml";

/// Every annotation that widens what a container gets, as the policy's `allow` names them.
pub const WIDENING: [&str; 3] = [BASE_HOST, SERVICES, CONFINE_NONE];
const BASE_HOST: &str = "org.feather.base=host";
const SERVICES: &str = "org.feather.services";
const CONFINE_NONE: &str = "org.feather.confine=none";

/// A policy is a few lines: more is not one.
const MAX_SIZE: u64 = 64 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    annotations: AnnotationsTable,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnnotationsTable {
    #[serde(default)]
    allow: Vec<String>,
}

#[derive(Debug)]
pub struct Policy {
    path: PathBuf,
    /// Entries of [`WIDENING`] the node's admin allowed.
    allowed: Vec<&'static str>,
}

impl Policy {
    /// The policy at `path`; none there allows nothing widening. A file that root alone
    /// cannot be said to have written, or that does not parse, is an error naming it.
    pub fn load(path: &Path) -> Result<Policy> {
        let Some(text) = read_root_owned(path)
            .with_context(|| format!("annotation policy {}", path.display()))?
        else {
            return Ok(Policy {
                path: path.to_owned(),
                allowed: Vec::new(),
            });
        };
        let file: PolicyFile = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "annotation policy {}: {e}(expected only [annotations] allow = [...])",
                path.display()
            )
        })?;
        let allowed = file
            .annotations
            .allow
            .iter()
            .map(|entry| {
                WIDENING.into_iter().find(|w| *w == entry.as_str()).with_context(|| {
                    format!(
                        "annotation policy {}: allow {entry:?}: not an annotation the policy decides (one of {})",
                        path.display(),
                        WIDENING.join(", ")
                    )
                })
            })
            .collect::<Result<_>>()?;
        Ok(Policy {
            path: path.to_owned(),
            allowed,
        })
    }

    /// Refuses, by name, the first widening annotation `feather` asks for that is not allowed.
    pub fn check(&self, feather: &Feather) -> Result<()> {
        for (entry, why) in asked(feather) {
            if !self.allowed.contains(&entry) {
                bail!(
                    "annotation {entry}: not allowed by this node's annotation policy {} ({why}); the node's admin allows it by listing {entry:?} in `allow` under [annotations] there (a root-owned file, not group- or other-writable)",
                    self.path.display()
                );
            }
        }
        Ok(())
    }
}

/// Refuses, by name, the first widening annotation `feather` asks for that the policy at
/// `path` does not allow. The policy is read only when one is asked for: a policy file that is
/// wrong (a package's, made group-writable) then fails only the containers that need it.
pub fn check(path: &Path, feather: &Feather) -> Result<()> {
    if asked(feather).next().is_none() {
        return Ok(());
    }
    Policy::load(path)?.check(feather)
}

/// The widening annotations `feather` asks for, each with what it gives the container.
fn asked(feather: &Feather) -> impl Iterator<Item = (&'static str, &'static str)> {
    [
        (
            BASE_HOST,
            feather.host_base,
            "the node's / becomes the container's root: node-root-equivalent",
        ),
        (
            SERVICES,
            !feather.services.is_empty(),
            "the node's units run in the container",
        ),
        (
            CONFINE_NONE,
            feather.confine == Some(Confine::None),
            "feather's IPC confinement is dropped",
        ),
    ]
    .into_iter()
    .filter(|(_, asked, _)| *asked)
    .map(|(entry, _, why)| (entry, why))
}

/// The file's text; None when there is none. It and every folder above it must be root's and
/// writable by no one else (a sticky folder above counts as safe: others cannot replace what
/// root put there), so that only root can have said what it allows.
fn read_root_owned(path: &Path) -> Result<Option<String>> {
    let real = match path.canonicalize() {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // The folders of the path as given too: a link the policy's path goes through, in a
    // folder someone else may write, could be pointed by them at another root-owned policy.
    let given = std::path::absolute(path)?;
    for folder in real.ancestors().skip(1).chain(given.ancestors().skip(1)) {
        let meta = std::fs::metadata(folder).with_context(|| folder.display().to_string())?;
        let sticky = meta.mode() & libc::S_ISVTX != 0;
        if meta.uid() != 0 || (meta.mode() & 0o022 != 0 && !sticky) {
            bail!(
                "the folder {} is not root's alone (owner {}, mode {:o}): anyone who can write it can replace the policy",
                folder.display(),
                meta.uid(),
                meta.mode() & 0o7777
            );
        }
    }
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&real)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        bail!("not a regular file");
    }
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        bail!(
            "must be owned by root and not group- or other-writable (owner {}, mode {:o}; chown root: and chmod go-w it)",
            meta.uid(),
            meta.mode() & 0o7777
        );
    }
    let mut text = String::new();
    file.take(MAX_SIZE + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_SIZE {
        bail!("larger than {MAX_SIZE} bytes: not a policy");
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_in(dir: &Path, text: &str) -> Result<Policy> {
        let path = dir.join("oci.toml");
        std::fs::write(&path, text).unwrap();
        Policy::load(&path)
    }

    fn host_base() -> Feather {
        Feather {
            host_base: true,
            ..Feather::default()
        }
    }

    #[test]
    fn annotation_policy_missing_allows_nothing_widening_and_names_itself() {
        let scratch = feather_testkit::ScratchDir::new("oci-policy-missing");
        let dir = scratch.0.clone();
        let policy = Policy::load(&dir.join("none.toml")).unwrap();
        let error = policy.check(&host_base()).unwrap_err().to_string();
        assert!(error.contains("org.feather.base=host"), "{error}");
        assert!(error.contains("none.toml"), "{error}");
        let narrowing = Feather {
            tags: vec!["a".into()],
            confine: Some(Confine::Ipc),
            ..Feather::default()
        };
        policy.check(&narrowing).unwrap();
    }

    #[test]
    fn annotation_policy_allows_what_it_lists_and_refuses_typos_and_unknown_fields() {
        let scratch = feather_testkit::ScratchDir::new("oci-policy-lists");
        let dir = scratch.0.clone();
        let policy =
            policy_in(&dir, "[annotations]\nallow = [\"org.feather.base=host\"]\n").unwrap();
        policy.check(&host_base()).unwrap();
        let none = Feather {
            confine: Some(Confine::None),
            ..Feather::default()
        };
        let error = policy.check(&none).unwrap_err().to_string();
        assert!(error.contains("org.feather.confine=none"), "{error}");
        let typo = policy_in(&dir, "[annotations]\nallow = [\"org.feather.base=hots\"]\n");
        assert!(typo.unwrap_err().to_string().contains("base=hots"));
        let unknown = policy_in(&dir, "[annotations]\nallwo = []\n").unwrap_err();
        assert!(format!("{unknown:#}").contains("oci.toml"), "{unknown:#}");
    }

    #[test]
    fn annotation_policy_writable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = feather_testkit::ScratchDir::new("oci-policy-writable");
        let dir = scratch.0.clone();
        let path = dir.join("oci.toml");
        std::fs::write(
            &path,
            "[annotations]\nallow = [\"org.feather.base=host\"]\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, PermissionsExt::from_mode(0o666)).unwrap();
        let error = format!("{:#}", Policy::load(&path).unwrap_err());
        assert!(error.contains("not group- or other-writable"), "{error}");
        std::fs::set_permissions(&path, PermissionsExt::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o777)).unwrap();
        let error = format!("{:#}", Policy::load(&path).unwrap_err());
        assert!(error.contains("not root's alone"), "{error}");
    }

    /// A policy's path through a link that sits in a folder others can write is refused, though
    /// the link leads to a root-owned policy: its owner could point it at another one (one
    /// that allows the host as the base).
    #[test]
    fn annotation_policy_through_a_link_in_a_folder_others_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = feather_testkit::ScratchDir::new("oci-policy-link");
        let dir = scratch.0.clone();
        let allowing = dir.join("allowing.toml");
        std::fs::write(
            &allowing,
            "[annotations]\nallow = [\"org.feather.base=host\"]\n",
        )
        .unwrap();
        let open = dir.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, PermissionsExt::from_mode(0o777)).unwrap();
        std::os::unix::fs::symlink(&allowing, open.join("oci.toml")).unwrap();
        let error = format!("{:#}", Policy::load(&open.join("oci.toml")).unwrap_err());
        assert!(error.contains("not root's alone"), "{error}");
    }

    /// A policy file that is wrong fails only the containers that ask for what it decides.
    #[test]
    fn a_wrong_policy_fails_only_containers_that_ask_for_a_widening_annotation() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = feather_testkit::ScratchDir::new("oci-policy-wrong");
        let dir = scratch.0.clone();
        let path = dir.join("oci.toml");
        std::fs::write(
            &path,
            "[annotations]\nallow = [\"org.feather.base=host\"]\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, PermissionsExt::from_mode(0o664)).unwrap();
        check(&path, &Feather::default()).unwrap();
        let error = format!("{:#}", check(&path, &host_base()).unwrap_err());
        assert!(error.contains("not group- or other-writable"), "{error}");
    }
}
