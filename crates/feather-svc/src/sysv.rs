//! SysV init scripts in `/etc/init.d` and their LSB headers: the catalogue entry for services
//! that have no unit file, as systemd's sysv-generator makes them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{IoAt, Result, SvcError};
use crate::name::UnitName;
use crate::syntax::SyntaxError;
use crate::unit::{KillMode, ServiceType, Unit};
use crate::words::ExecCommand;

/// The SysV scripts' folder, below the tree's root (joined there: paths::inside would make
/// this module and paths use each other).
const INIT_D: &str = "etc/init.d";

#[derive(Clone, Debug, Default, Serialize)]
pub struct SysvScript {
    /// The service name: the script's file name without a `.sh` suffix.
    pub name: String,
    pub path: PathBuf,
    /// False when the script has no `### BEGIN INIT INFO` block.
    pub has_lsb_header: bool,
    pub provides: Vec<String>,
    pub required_start: Vec<String>,
    pub required_stop: Vec<String>,
    pub should_start: Vec<String>,
    pub default_start: Vec<String>,
    pub default_stop: Vec<String>,
    pub short_description: Option<String>,
    pub description: Option<String>,
}

impl SysvScript {
    /// Run at boot in runlevel S: a script of the machine's own start-up, not a service.
    pub fn is_boot_script(&self) -> bool {
        self.default_start.iter().any(|r| r == "S")
    }
}

/// LSB facilities and the targets systemd's generator maps them to.
const FACILITIES: [(&str, &str); 7] = [
    ("$local_fs", "local-fs.target"),
    ("$remote_fs", "remote-fs.target"),
    ("$network", "network.target"),
    ("$named", "nss-lookup.target"),
    ("$portmap", "rpcbind.target"),
    ("$time", "time-sync.target"),
    ("$syslog", "syslog.socket"),
];

impl SysvScript {
    /// The unit systemd's sysv-generator would make of the script: a forking service that
    /// remains active after `SCRIPT start` returns, stopped with `SCRIPT stop`, ordered after
    /// what its Required-Start and Should-Start name.
    pub fn to_unit(&self) -> crate::Result<Unit> {
        let name = UnitName::parse(&format!("{}.service", self.name))?;
        let mut unit = Unit::new(name);
        unit.fragment = Some(self.path.clone());
        unit.description = Some(
            self.short_description
                .clone()
                .unwrap_or_else(|| format!("LSB: {}", self.name)),
        );
        for dependency in self.required_start.iter().chain(&self.should_start) {
            let target = match FACILITIES.iter().find(|(f, _)| f == dependency) {
                Some((_, target)) => target.to_string(),
                None if dependency.starts_with('$') => continue,
                None => format!("{dependency}.service"),
            };
            if !unit.dependencies.after.contains(&target) {
                unit.dependencies.after.push(target);
            }
        }
        let script = self.path.display().to_string();
        let command = |verb: &str| ExecCommand {
            path: script.clone(),
            argv: vec![script.clone(), verb.to_owned()],
            ..ExecCommand::default()
        };
        if let Some(service) = unit.service.as_mut() {
            service.kind = ServiceType::Forking;
            service.remain_after_exit = true;
            service.guess_main_pid = false;
            service.kill_mode = KillMode::Process;
            service.timeout_start = Some(std::time::Duration::from_secs(300));
            service.exec_start = vec![command("start")];
            service.exec_stop = vec![command("stop")];
            service.exec_reload = vec![command("reload")];
        }
        Ok(unit)
    }
}

/// Files in /etc/init.d that are not services, as systemd's generator skips them.
fn is_service_script(name: &str) -> bool {
    !(name.starts_with('.')
        || name.contains(".dpkg-")
        || name.ends_with('~')
        || matches!(name, "README" | "skeleton" | "rc" | "rcS" | "functions"))
}

/// Every service script in `<root>/etc/init.d`, sorted by name.
pub fn scripts(root: &Path) -> Result<Vec<SysvScript>> {
    let dir = root.join(INIT_D);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(&dir),
    };
    let mut scripts = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file()
            || meta.permissions().mode() & 0o111 == 0
            || !is_service_script(&file_name)
        {
            continue;
        }
        let text = fs::read(&path).at(&path)?;
        scripts.push(parse(&path, &String::from_utf8_lossy(&text))?);
    }
    scripts.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(scripts)
}

/// The script for service `name` (`foo` for `foo.service`), if there is one.
pub fn script_for(root: &Path, name: &UnitName) -> Result<Option<SysvScript>> {
    if name.kind() != "service" || name.instance().is_some() || name.is_template() {
        return Ok(None);
    }
    for file in [name.prefix().to_owned(), format!("{}.sh", name.prefix())] {
        let path = root.join(INIT_D).join(&file);
        let executable =
            fs::metadata(&path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if executable && is_service_script(&file) {
            let text = fs::read(&path).at(&path)?;
            return parse(&path, &String::from_utf8_lossy(&text)).map(Some);
        }
    }
    Ok(None)
}

/// Reads the LSB header of the script at `path`.
pub fn parse(path: &Path, text: &str) -> Result<SysvScript> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut script = SysvScript {
        name: file_name
            .strip_suffix(".sh")
            .unwrap_or(&file_name)
            .to_owned(),
        path: path.to_path_buf(),
        ..SysvScript::default()
    };
    let mut begin_line = None;
    let mut last_key: Option<String> = None;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if begin_line.is_none() {
            if trimmed == "### BEGIN INIT INFO" {
                begin_line = Some(index + 1);
                script.has_lsb_header = true;
            }
            continue;
        }
        if trimmed == "### END INIT INFO" {
            return Ok(script);
        }
        let Some(body) = line.strip_prefix('#') else {
            return Err(SvcError::Syntax {
                path: path.to_path_buf(),
                line: index + 1,
                problem: SyntaxError::LsbLineWithoutHash,
            });
        };
        // A line starting with a tab or two spaces continues the previous field.
        if (body.starts_with('\t') || body.starts_with("  ")) && last_key.is_some() {
            if last_key.as_deref() == Some("Description") {
                let text = body.trim();
                let description = script.description.get_or_insert_with(String::new);
                if !description.is_empty() {
                    description.push(' ');
                }
                description.push_str(text);
            }
            continue;
        }
        let Some((key, value)) = body.split_once(':') else {
            continue;
        };
        let key = key.trim();
        let value = value.trim();
        let list = || value.split_whitespace().map(str::to_owned).collect();
        match key {
            "Provides" => script.provides = list(),
            "Required-Start" => script.required_start = list(),
            "Required-Stop" => script.required_stop = list(),
            "Should-Start" => script.should_start = list(),
            "Default-Start" => script.default_start = list(),
            "Default-Stop" => script.default_stop = list(),
            "Short-Description" => script.short_description = Some(value.to_owned()),
            "Description" => script.description = Some(value.to_owned()),
            _ => {}
        }
        last_key = Some(key.to_owned());
    }
    match begin_line {
        Some(line) => Err(SvcError::Syntax {
            path: path.to_path_buf(),
            line,
            problem: SyntaxError::LsbUnterminated,
        }),
        None => Ok(script),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsb_header_fields() {
        let text = "#!/bin/sh\n### BEGIN INIT INFO\n# Provides:\t\tpostgresql pg\n# Required-Start:\t$local_fs $network\n# Default-Start:\t2 3 4 5\n# Default-Stop:\t\t0 1 6\n# Short-Description:\tPostgreSQL RDBMS server\n# Description: first\n#  second line\n### END INIT INFO\necho\n";
        let s = parse(Path::new("/etc/init.d/postgresql"), text).unwrap();
        assert!(s.has_lsb_header && !s.is_boot_script());
        assert_eq!(s.name, "postgresql");
        assert_eq!(s.provides, vec!["postgresql", "pg"]);
        assert_eq!(s.required_start, vec!["$local_fs", "$network"]);
        assert_eq!(s.default_start, vec!["2", "3", "4", "5"]);
        assert_eq!(
            s.short_description.as_deref(),
            Some("PostgreSQL RDBMS server")
        );
        assert_eq!(s.description.as_deref(), Some("first second line"));
    }

    #[test]
    fn unterminated_header_names_the_line_and_sh_suffix_is_dropped() {
        let e = parse(
            Path::new("/x/hwclock.sh"),
            "#!/bin/sh\n\n### BEGIN INIT INFO\n# Provides: x\n",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "/x/hwclock.sh:3: ### BEGIN INIT INFO without ### END INIT INFO"
        );
        let s = parse(Path::new("/x/hwclock.sh"), "#!/bin/sh\n").unwrap();
        assert_eq!(s.name, "hwclock");
        assert!(!s.has_lsb_header);
    }
}
