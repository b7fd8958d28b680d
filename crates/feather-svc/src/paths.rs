//! Where units come from: systemd's search path for the system manager, in order of
//! precedence, relative to a root (the host's `/`, a VM's root, or a test's scratch tree).
//! A unit file found earlier hides one of the same name later; a symlink to `/dev/null` (or an
//! empty file) masks a unit; a symlink to a file of another name is an alias; drop-ins
//! (`*.d/*.conf`) are applied in file-name order, a file hiding one of the same name in a
//! directory of lower precedence.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{IoAt, Result, SvcError};
use crate::name::UnitName;
use crate::syntax;
use crate::unit::Unit;

/// The system manager's unit directories, highest precedence first, as systemd orders them
/// (`systemd-analyze unit-paths`): the generators' output folders (made in a VM's `/run` by
/// [`crate::generators`]; absent on a host without systemd) early, in the middle and late.
pub const SEARCH_PATH: [&str; 8] = [
    "/run/systemd/generator.early",
    "/etc/systemd/system",
    "/run/systemd/system",
    "/run/systemd/generator",
    "/usr/local/lib/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/run/systemd/generator.late",
];

/// How many alias symlinks are followed before giving up.
const MAX_ALIAS_HOPS: usize = 16;

#[derive(Clone, Debug)]
pub struct UnitPaths {
    root: PathBuf,
    dirs: Vec<PathBuf>,
}

/// Where a unit's file is, or that it is masked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// The real name (differs from the asked one for an alias) and the file on disk.
    File {
        name: UnitName,
        path: PathBuf,
    },
    Masked {
        path: PathBuf,
    },
}

impl UnitPaths {
    /// The standard search path below `root`.
    pub fn new(root: impl Into<PathBuf>) -> UnitPaths {
        let root = root.into();
        let dirs = SEARCH_PATH.iter().map(|d| inside(&root, d)).collect();
        UnitPaths { root, dirs }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The unit directories as real paths, highest precedence first.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    fn searched(&self) -> String {
        self.dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Finds the file of `name` (or of its template), following aliases.
    pub fn find(&self, name: &UnitName) -> Result<Option<Fragment>> {
        let mut current = name.clone();
        for _ in 0..MAX_ALIAS_HOPS {
            match self.find_direct(&current)? {
                Some(Step::Alias(next)) => current = next,
                Some(Step::Found(fragment)) => return Ok(Some(fragment)),
                None => return Ok(None),
            }
        }
        Err(SvcError::AliasLoop {
            name: name.to_string(),
            hops: MAX_ALIAS_HOPS,
        })
    }

    fn find_direct(&self, name: &UnitName) -> Result<Option<Step>> {
        let mut candidates = vec![name.clone()];
        candidates.extend(name.template());
        for candidate in candidates {
            for dir in &self.dirs {
                let path = dir.join(candidate.as_str());
                let Ok(meta) = fs::symlink_metadata(&path) else {
                    continue;
                };
                if meta.file_type().is_symlink() {
                    let target = fs::read_link(&path).at(&path)?;
                    if target == Path::new("/dev/null") {
                        return Ok(Some(Step::Found(Fragment::Masked { path })));
                    }
                    let resolved = if target.is_absolute() {
                        inside(&self.root, &target.to_string_lossy())
                    } else {
                        dir.join(&target)
                    };
                    let target_name = target
                        .file_name()
                        .and_then(|n| UnitName::parse(&n.to_string_lossy()).ok());
                    match target_name {
                        // An alias: the unit is known by the target's name.
                        Some(real) if real != candidate && real.kind() == candidate.kind() => {
                            let real = match (real.is_template(), name.instance()) {
                                (true, Some(instance)) => real.with_instance(instance),
                                _ => real,
                            };
                            return Ok(Some(Step::Alias(real)));
                        }
                        _ => return self.regular(name, &resolved).map(Some),
                    }
                }
                if meta.is_dir() {
                    continue;
                }
                return self.regular(name, &path).map(Some);
            }
        }
        Ok(None)
    }

    fn regular(&self, name: &UnitName, path: &Path) -> Result<Step> {
        let meta = fs::metadata(path).at(path)?;
        if meta.len() == 0 {
            return Ok(Step::Found(Fragment::Masked {
                path: path.to_path_buf(),
            }));
        }
        Ok(Step::Found(Fragment::File {
            name: name.clone(),
            path: path.to_path_buf(),
        }))
    }

    /// Reads a unit: its file, then its drop-ins, plus the `.wants/` and `.requires/`
    /// directories that name it. `name` may be an alias or an instance of a template.
    pub fn load(&self, name: &UnitName) -> Result<Unit> {
        if name.is_template() {
            return Err(SvcError::Template {
                name: name.to_string(),
                example: name.with_instance("main").to_string(),
            });
        }
        let (real, path) = match self.find(name)? {
            None => {
                // No unit file: a SysV script of that name stands for it, as systemd's
                // generator makes it.
                if let Some(script) = crate::sysv::script_for(&self.root, name)? {
                    return script.to_unit();
                }
                return Err(SvcError::NotFound {
                    name: name.to_string(),
                    searched: self.searched(),
                });
            }
            Some(Fragment::Masked { path }) => {
                return Err(SvcError::Masked {
                    name: name.to_string(),
                    path,
                })
            }
            Some(Fragment::File { name, path }) => (name, path),
        };
        let mut unit = Unit::new(real.clone());
        unit.fragment = Some(path.clone());
        let mut files = vec![path];
        let mut names = vec![real.clone()];
        if name != &real {
            names.push(name.clone());
        }
        unit.dropins = self.dropins(&names);
        files.extend(unit.dropins.iter().cloned());
        for file in &files {
            let text = fs::read(file).at(file)?;
            let text = String::from_utf8_lossy(&text);
            for assignment in syntax::parse(file, &text)? {
                unit.apply(&assignment, &self.root)
                    .map_err(|problem| SvcError::Setting {
                        path: file.clone(),
                        line: assignment.line,
                        problem,
                    })?;
            }
        }
        unit.finish();
        let (wants, requires) = self.wants_and_requires(&real);
        for extra in wants {
            if !unit.dependencies.wants.contains(&extra) {
                unit.dependencies.wants.push(extra);
            }
        }
        for extra in requires {
            if !unit.dependencies.requires.contains(&extra) {
                unit.dependencies.requires.push(extra);
            }
        }
        Ok(unit)
    }

    /// The drop-in files for a unit known by `names`, in the order they apply.
    pub fn dropins(&self, names: &[UnitName]) -> Vec<PathBuf> {
        // From the most general to the most specific directory name.
        let mut dir_names: Vec<String> = Vec::new();
        let mut push = |n: String| {
            if !dir_names.contains(&n) {
                dir_names.push(n);
            }
        };
        for name in names {
            push(format!("{}.d", name.kind()));
            for prefix in name.dash_prefixes() {
                push(format!("{prefix}.{}.d", name.kind()));
            }
            if let Some(template) = name.template() {
                push(format!("{template}.d"));
            }
            push(format!("{name}.d"));
        }
        let mut by_file_name: BTreeMap<String, PathBuf> = BTreeMap::new();
        for dir in &self.dirs {
            for dropin_dir in &dir_names {
                let Ok(entries) = fs::read_dir(dir.join(dropin_dir)) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let file_name = entry.file_name().to_string_lossy().into_owned();
                    if !file_name.ends_with(".conf") {
                        continue;
                    }
                    // The first seen is in the directory of highest precedence.
                    by_file_name
                        .entry(file_name)
                        .or_insert_with(|| entry.path());
                }
            }
        }
        by_file_name
            .into_values()
            .filter(|p| !is_masked_file(p))
            .collect()
    }

    /// Units named in `<name>.wants/` and `<name>.requires/` (and the template's) directories.
    pub fn wants_and_requires(&self, name: &UnitName) -> (Vec<String>, Vec<String>) {
        let mut names = vec![name.clone()];
        names.extend(name.template());
        let mut wants = Vec::new();
        let mut requires = Vec::new();
        for (suffix, list) in [("wants", &mut wants), ("requires", &mut requires)] {
            for dir in &self.dirs {
                for unit in &names {
                    let Ok(entries) = fs::read_dir(dir.join(format!("{unit}.{suffix}"))) else {
                        continue;
                    };
                    let mut found: Vec<String> = entries
                        .flatten()
                        .filter_map(|e| UnitName::parse(&e.file_name().to_string_lossy()).ok())
                        .map(|n| match (n.is_template(), name.instance()) {
                            (true, Some(instance)) => n.with_instance(instance).to_string(),
                            _ => n.to_string(),
                        })
                        .collect();
                    found.sort();
                    for n in found {
                        if !list.contains(&n) {
                            list.push(n);
                        }
                    }
                }
            }
        }
        (wants, requires)
    }

    /// Every unit name that has a file (or symlink) in the search path, sorted.
    pub fn all_names(&self) -> Vec<UnitName> {
        let mut names: Vec<UnitName> = self
            .dirs
            .iter()
            .filter_map(|dir| fs::read_dir(dir).ok())
            .flat_map(|entries| entries.flatten())
            .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
            .filter_map(|e| UnitName::parse(&e.file_name().to_string_lossy()).ok())
            .filter(|n| n.as_str().contains('.') && has_known_suffix(n))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

enum Step {
    Alias(UnitName),
    Found(Fragment),
}

fn has_known_suffix(name: &UnitName) -> bool {
    crate::name::UNIT_TYPES.contains(&name.kind())
}

fn is_masked_file(path: &Path) -> bool {
    fs::read_link(path).is_ok_and(|t| t == Path::new("/dev/null"))
        || fs::metadata(path).is_ok_and(|m| m.len() == 0)
}

/// `path` (absolute, as seen inside `root`) as a real path on this machine.
pub fn inside(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}
