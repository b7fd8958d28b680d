//! Empty state for a duplicated service (`--fresh-state`): which folders hold a service's data,
//! how they are replaced by empty ones in a VM's own layer, and the package's initialiser that
//! makes a fresh data set where the program cannot start from an empty folder.
//!
//! The folders are the unit's own `StateDirectory=`, `CacheDirectory=` and `LogsDirectory=`,
//! plus, for packages whose data the unit does not declare, the folders this module knows
//! (postgresql's cluster directory, mariadb's datadir, redis's `/var/lib/redis`, cron's
//! spool). Inside a VM each is removed and made again: on overlayfs the removal leaves
//! whiteouts and the new folder is *opaque* in the VM's layer, so the host's files below it are
//! neither changed nor seen. A folder that is not on the VM's overlay (a bind mount of the
//! host's, say) is refused, never emptied.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::name;
use crate::paths::inside;
use crate::unit::{DirectoryKind, Unit};
use crate::words::ExecCommand;

/// Where the manager records, in the VM's layer, that a unit was given fresh state (so that a
/// VM created with `--fresh-state` empties its data on its first start only).
pub const DONE_DIR: &str = "/var/lib/feather-svc/fresh-state";

/// What starting `unit` with empty state means.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The folders replaced by empty ones, each with the reason it holds data.
    pub folders: Vec<(PathBuf, String)>,
    /// Commands that make a fresh data set in them, run as control commands before the unit's
    /// own (with full privileges; they change user themselves).
    pub initialise: Vec<ExecCommand>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.folders.is_empty()
    }
}

/// Why a service cannot be given empty state, or its folder not emptied.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("postgresql@ instance {0:?} is not VERSION-CLUSTER (e.g. 15-main)")]
    BadInstance(String),
    #[error("{conf}: {error} (the cluster's configuration is needed to make it afresh)")]
    ClusterConfig { conf: String, error: std::io::Error },
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} is not a folder (a symbolic link or a file): feather empties only folders", .0.display())]
    NotAFolder(PathBuf),
    #[error("{} is not in the VM's copy-on-write layer (its filesystem is {fs_type:#x}, not overlayfs): feather will not empty it", path.display())]
    NotOverlay { path: PathBuf, fs_type: i64 },
    /// One step of emptying a folder: `statfs`, `emptying`, `making … again`, `chown`, `chmod`.
    #[error("{step} {}: {error}", path.display())]
    Step {
        step: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
}

fn step(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_path_buf();
    move |error| StateError::Step { step, path, error }
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_path_buf();
    move |error| StateError::Io { path, error }
}

/// The plan for `unit` on the tree at `root` (`/` inside a VM).
pub fn plan(root: &Path, unit: &Unit) -> Result<Plan, StateError> {
    let mut plan = Plan::default();
    for kind in [
        DirectoryKind::State,
        DirectoryKind::Cache,
        DirectoryKind::Logs,
    ] {
        for rel in &unit.exec.directories(kind).paths {
            plan.add(
                Path::new(kind.root()).join(rel),
                format!("{}={rel}", kind.setting()),
            );
        }
    }
    let known = unit.name.prefix();
    match known {
        "redis-server" | "redis" => plan.add(redis_dir(root, unit), "redis's data".into()),
        "mariadb" | "mysql" => {
            let datadir = mariadb_datadir(root);
            plan.initialise.push(command(&[
                "mariadb-install-db",
                "--user=mysql",
                &format!("--datadir={}", datadir.display()),
                "--skip-test-db",
                "--auth-root-authentication-method=socket",
            ]));
            plan.add(datadir, "mariadb's datadir".into());
        }
        "postgresql" if unit.name.instance().is_some() => {
            let instance = name::unescape(unit.name.instance().unwrap_or_default());
            let cluster = Cluster::read(root, &instance)?;
            plan.initialise = cluster.initialise();
            plan.add(
                cluster.data.clone(),
                format!("the data of postgresql cluster {instance}"),
            );
        }
        "cron" => plan.add(
            "/var/spool/cron/crontabs".into(),
            "the users' crontabs".into(),
        ),
        _ => {}
    }
    Ok(plan)
}

impl Plan {
    fn add(&mut self, path: PathBuf, why: String) {
        if !self.folders.iter().any(|(p, _)| *p == path) {
            self.folders.push((path, why));
        }
    }
}

/// redis's `dir` as the configuration file its start command names sets it
/// (`/etc/redis/redis.conf`, or an instance's `redis-%i.conf`), or Debian's default.
fn redis_dir(root: &Path, unit: &Unit) -> PathBuf {
    let config = unit
        .service
        .iter()
        .flat_map(|s| &s.exec_start)
        .flat_map(|c| &c.argv)
        .find(|a| a.starts_with('/') && a.ends_with(".conf"));
    let dir = config
        .and_then(|c| fs::read_to_string(inside(root, c)).ok())
        .and_then(|text| {
            text.lines()
                .filter_map(|l| l.trim().strip_prefix("dir "))
                .map(|d| d.trim().trim_matches('"').to_owned())
                .rfind(|d| d.starts_with('/'))
        });
    dir.map_or_else(|| PathBuf::from("/var/lib/redis"), PathBuf::from)
}

fn command(argv: &[&str]) -> ExecCommand {
    ExecCommand {
        path: argv[0].to_owned(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ignore_failure: false,
        custom_argv0: false,
        full_privileges: true,
        no_user_change: false,
        ambient_fallback: false,
        no_env_expansion: true,
    }
}

/// mariadb's `datadir` as its configuration sets it (the last `datadir` of a `[mysqld]` or
/// `[mariadb]` group of the files it reads), or its default.
fn mariadb_datadir(root: &Path) -> PathBuf {
    let mut datadir = PathBuf::from("/var/lib/mysql");
    let mut files = vec![inside(root, "/etc/mysql/my.cnf")];
    for dir in ["/etc/mysql/conf.d", "/etc/mysql/mariadb.conf.d"] {
        let mut found: Vec<PathBuf> = fs::read_dir(inside(root, dir))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        found.retain(|p| p.extension().is_some_and(|e| e == "cnf"));
        found.sort();
        files.extend(found);
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        let mut server_group = false;
        for line in text.lines().map(str::trim) {
            if let Some(group) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                server_group = matches!(group.trim(), "mysqld" | "mariadb" | "server" | "mariadbd");
            } else if server_group {
                if let Some((key, value)) = line.split_once('=') {
                    if key.trim().replace('_', "-") == "datadir" {
                        datadir = PathBuf::from(value.trim());
                    }
                }
            }
        }
    }
    datadir
}

/// A Debian postgresql cluster (`/etc/postgresql/VERSION/NAME`), as `pg_createcluster` made it.
#[derive(Debug)]
struct Cluster {
    version: String,
    /// Its `data_directory`.
    data: PathBuf,
    /// The owner of its configuration, who owns and runs the cluster (as `pg_ctlcluster` decides).
    owner: String,
    locale: Option<String>,
    /// `initdb_options` of `/etc/postgresql-common/createcluster.conf`.
    options: Vec<String>,
}

impl Cluster {
    fn read(root: &Path, instance: &str) -> Result<Cluster, StateError> {
        let (version, name) = instance
            .split_once('/')
            .ok_or_else(|| StateError::BadInstance(instance.to_owned()))?;
        let conf = format!("/etc/postgresql/{version}/{name}/postgresql.conf");
        let text =
            fs::read_to_string(inside(root, &conf)).map_err(|error| StateError::ClusterConfig {
                conf: conf.clone(),
                error,
            })?;
        let setting = |key: &str, text: &str| {
            text.lines()
                .map(|l| l.split('#').next().unwrap_or_default().trim())
                .filter_map(|l| l.split_once('='))
                .filter(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().trim_matches('\'').to_owned())
                .next_back()
        };
        let data = setting("data_directory", &text)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(format!("/var/lib/postgresql/{version}/{name}")));
        let owner_uid = fs::metadata(inside(root, &conf))
            .map_err(io_at(Path::new(&conf)))?
            .uid();
        let owner = passwd_name(root, owner_uid).unwrap_or_else(|| "postgres".into());
        let createcluster =
            fs::read_to_string(inside(root, "/etc/postgresql-common/createcluster.conf"))
                .unwrap_or_default();
        let options = setting("initdb_options", &createcluster)
            .map(|o| o.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        Ok(Cluster {
            version: version.to_owned(),
            data,
            owner,
            locale: setting("lc_messages", &text),
            options,
        })
    }

    /// `initdb` as the cluster's owner with the settings `pg_createcluster` gives it, then the
    /// configuration files initdb writes into the data folder are removed: Debian keeps them in
    /// /etc/postgresql (postgresql.auto.conf stays, as there).
    fn initialise(&self) -> Vec<ExecCommand> {
        let initdb = format!("/usr/lib/postgresql/{}/bin/initdb", self.version);
        let data = self.data.display().to_string();
        let mut argv = vec![
            "runuser".to_owned(),
            "-u".to_owned(),
            self.owner.clone(),
            "--".to_owned(),
            initdb,
            "-D".to_owned(),
            data.clone(),
            "--auth-local".to_owned(),
            "peer".to_owned(),
            "--auth-host".to_owned(),
            "scram-sha-256".to_owned(),
            "--no-instructions".to_owned(),
        ];
        if let Some(locale) = &self.locale {
            argv.push(format!("--locale={locale}"));
        }
        argv.extend(self.options.iter().cloned());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut remove = vec!["rm", "-f"];
        let files: Vec<String> = ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"]
            .iter()
            .map(|f| format!("{data}/{f}"))
            .collect();
        remove.extend(files.iter().map(String::as_str));
        vec![command(&argv), command(&remove)]
    }
}

fn passwd_name(root: &Path, uid: u32) -> Option<String> {
    let text = fs::read_to_string(inside(root, "/etc/passwd")).ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.get(2)?.parse::<u32>().ok()? == uid).then(|| fields[0].to_owned())
    })
}

/// overlayfs's magic number in `statfs`.
const OVERLAYFS_MAGIC: i64 = 0x794c_7630;

/// Replaces `path` (inside a VM) by an empty folder with the same owner and mode, in the VM's
/// own layer. A folder that does not exist is left alone (the service makes it, or its
/// `*Directory=` does); one that is not on overlayfs is refused.
pub fn empty_folder(path: &Path) -> Result<(), StateError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_at(path)(e)),
    };
    if !meta.is_dir() {
        return Err(StateError::NotAFolder(path.to_path_buf()));
    }
    // Only the VM's copy-on-write view may be emptied: there the removal is whiteouts in the
    // VM's layer. Anything else (a bind mount of the host's data) would lose real data.
    let fs_type = nix::sys::statfs::statfs(path)
        .map_err(|e| step("statfs", path)(e.into()))?
        .filesystem_type()
        .0 as i64;
    if fs_type != OVERLAYFS_MAGIC {
        return Err(StateError::NotOverlay {
            path: path.to_path_buf(),
            fs_type,
        });
    }
    fs::remove_dir_all(path).map_err(step("emptying", path))?;
    // Made where a whiteout now is, the folder is opaque: nothing of the host's shows through.
    fs::create_dir(path).map_err(step("making again", path))?;
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(meta.uid())),
        Some(nix::unistd::Gid::from_raw(meta.gid())),
    )
    .map_err(|e| step("chown", path)(e.into()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(step("chmod", path))?;
    Ok(())
}

/// Whether `unit` was already given fresh state in this VM.
pub fn done(unit: &str) -> bool {
    Path::new(DONE_DIR).join(unit).exists()
}

/// Records that `unit` was given fresh state, and which folders.
pub fn mark_done(unit: &str, plan: &Plan) -> Result<(), StateError> {
    fs::create_dir_all(DONE_DIR).map_err(io_at(Path::new(DONE_DIR)))?;
    let text: String = plan
        .folders
        .iter()
        .map(|(p, why)| format!("{}\t{why}\n", p.display()))
        .collect();
    let path = Path::new(DONE_DIR).join(unit);
    fs::write(&path, text).map_err(io_at(&path))
}
