//! The host's `tmpfiles.d` folders under `/run`, made in a VM's fresh `/run` when its service
//! manager starts, as `systemd-tmpfiles --create` makes them when the host boots.
//!
//! Debian's packages rely on these: mariadb's `/run/mysqld` (its unit has no
//! `RuntimeDirectory=`), postgresql's `/run/postgresql`, memcached's `/run/memcached`. Only `d`
//! and `D` lines for paths under `/run` are applied: everything else a VM sees is the host's
//! tree (copy-on-write), where the host's own boot already made it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::unistd::{chown, Group, User};

/// The folders searched, highest precedence first: a file hides one of the same name below.
const SEARCH_PATH: [&str; 4] = [
    "etc/tmpfiles.d",
    "run/tmpfiles.d",
    "usr/local/lib/tmpfiles.d",
    "usr/lib/tmpfiles.d",
];

/// One `d`/`D` line: a folder to make.
#[derive(Debug, PartialEq, Eq)]
pub struct Folder {
    pub path: PathBuf,
    pub mode: u32,
    pub user: Option<String>,
    pub group: Option<String>,
}

/// The `d`/`D` lines for paths under `/run` in `text`; other lines, and lines with specifiers
/// (`%t`, …), are left out.
pub fn parse(text: &str) -> Vec<Folder> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let kind = fields.next()?;
            if kind.starts_with('#') || !matches!(kind.trim_end_matches(['!', '-']), "d" | "D") {
                return None;
            }
            let path = fields.next()?;
            if !path.starts_with("/run/") || path.contains('%') {
                return None;
            }
            let given = |field: Option<&str>| field.filter(|f| *f != "-").map(str::to_owned);
            let mode = given(fields.next())
                .and_then(|m| u32::from_str_radix(m.trim_start_matches(['~', ':']), 8).ok())
                .unwrap_or(0o755);
            Some(Folder {
                path: PathBuf::from(path),
                mode,
                user: given(fields.next()),
                group: given(fields.next()),
            })
        })
        .collect()
}

/// Every `/run` folder of the `tmpfiles.d` files under `root`, in file-name order.
pub fn folders(root: &Path) -> Vec<Folder> {
    let mut files = BTreeMap::new();
    for dir in SEARCH_PATH.iter().rev() {
        let Ok(entries) = fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".conf") {
                files.insert(name, entry.path());
            }
        }
    }
    files
        .values()
        .filter_map(|path| fs::read_to_string(path).ok())
        .flat_map(|text| parse(&text))
        .collect()
}

/// Makes the folders that do not exist yet, with their owner and mode. Returns a message per
/// folder that could not be made (an unknown user, say); the rest are made anyway.
pub fn create(folders: &[Folder]) -> Vec<String> {
    let mut problems = Vec::new();
    for folder in folders {
        if folder.path.exists() {
            continue;
        }
        if let Err(e) = make(folder) {
            problems.push(format!("tmpfiles.d: {}: {e}", folder.path.display()));
        }
    }
    problems
}

/// Why one `tmpfiles.d` folder could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TmpfilesError {
    #[error("no user {0} in the VM's /etc/passwd")]
    NoUser(String),
    #[error("no group {0} in the VM's /etc/group")]
    NoGroup(String),
    #[error("{step}: {error}")]
    Io {
        step: &'static str,
        error: std::io::Error,
    },
}

fn failed(step: &'static str) -> impl FnOnce(std::io::Error) -> TmpfilesError {
    move |error| TmpfilesError::Io { step, error }
}

fn make(folder: &Folder) -> Result<(), TmpfilesError> {
    let uid = match &folder.user {
        Some(name) => Some(
            User::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| TmpfilesError::NoUser(name.clone()))?
                .uid,
        ),
        None => None,
    };
    let gid = match &folder.group {
        Some(name) => Some(
            Group::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| TmpfilesError::NoGroup(name.clone()))?
                .gid,
        ),
        None => None,
    };
    fs::create_dir_all(&folder.path).map_err(failed("mkdir"))?;
    chown(&folder.path, uid, gid).map_err(|e| failed("chown")(e.into()))?;
    fs::set_permissions(&folder.path, fs::Permissions::from_mode(folder.mode))
        .map_err(failed("chmod"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_run_folders_are_taken() {
        let text = "# comment\nd /run/mysqld 0755 mysql root -\nd /var/log/postgresql 1775 root postgres - -\n\
                    D! /run/x - - -\nL /run/link - - - - /target\nd /run/%t/y 0700\nd /run/postgresql 2775 postgres postgres - -\n";
        assert_eq!(
            parse(text),
            vec![
                Folder {
                    path: "/run/mysqld".into(),
                    mode: 0o755,
                    user: Some("mysql".into()),
                    group: Some("root".into()),
                },
                Folder {
                    path: "/run/x".into(),
                    mode: 0o755,
                    user: None,
                    group: None,
                },
                Folder {
                    path: "/run/postgresql".into(),
                    mode: 0o2775,
                    user: Some("postgres".into()),
                    group: Some("postgres".into()),
                },
            ]
        );
    }
}
