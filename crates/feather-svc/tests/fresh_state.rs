//! What `--fresh-state` empties and how each package is initialised, read from scratch trees;
//! and that only the VM's overlay is ever emptied.

mod common;

use std::path::PathBuf;

use common::Tree;
use feather_svc::state;

fn folders(plan: &state::Plan) -> Vec<PathBuf> {
    plan.folders.iter().map(|(p, _)| p.clone()).collect()
}

#[test]
fn a_units_own_state_cache_and_logs_directories_are_emptied_not_its_runtime_or_configuration() {
    let t = Tree::new("fresh-dirs");
    t.lib(
        "keeper.service",
        "[Service]\nExecStart=/bin/k\nStateDirectory=keeper keeper/extra\nCacheDirectory=keeper\nLogsDirectory=keeper\nRuntimeDirectory=keeper\nConfigurationDirectory=keeper\n",
    );
    let plan = state::plan(&t.root, &t.load("keeper.service")).unwrap();
    assert_eq!(
        folders(&plan),
        [
            "/var/lib/keeper",
            "/var/lib/keeper/extra",
            "/var/cache/keeper",
            "/var/log/keeper"
        ]
        .map(PathBuf::from)
    );
    assert!(plan.initialise.is_empty());
    t.lib("plain.service", "[Service]\nExecStart=/bin/p\n");
    assert!(state::plan(&t.root, &t.load("plain.service"))
        .unwrap()
        .is_empty());
}

#[test]
fn postgresql_clusters_are_made_again_with_initdb_and_their_own_settings() {
    let t = Tree::new("fresh-pg");
    t.lib(
        "postgresql@.service",
        "[Service]\nType=forking\nExecStart=-/usr/bin/pg_ctlcluster --skip-systemctl-redirect %i start\n",
    );
    t.write(
        "etc/postgresql/16/alt/postgresql.conf",
        "data_directory = '/srv/pg/alt'\t\t# use data in another directory\nlc_messages = 'de_DE.UTF-8'\n",
    );
    t.write(
        "etc/postgresql-common/createcluster.conf",
        "initdb_options = '--data-checksums'\n",
    );
    let plan = state::plan(&t.root, &t.load("postgresql@16-alt.service")).unwrap();
    assert_eq!(folders(&plan), [PathBuf::from("/srv/pg/alt")]);
    let initdb = &plan.initialise[0].argv;
    assert_eq!(
        &initdb[4..7],
        ["/usr/lib/postgresql/16/bin/initdb", "-D", "/srv/pg/alt"]
    );
    assert!(
        initdb.contains(&"--locale=de_DE.UTF-8".to_owned()),
        "{initdb:?}"
    );
    assert!(
        initdb.contains(&"--data-checksums".to_owned()),
        "{initdb:?}"
    );
    // initdb runs as the owner of the cluster's configuration (pg_ctlcluster's rule).
    assert_eq!(initdb[0..2], ["runuser", "-u"]);
    // Debian keeps the configuration in /etc: initdb's copies leave the data folder.
    assert!(plan.initialise[1]
        .argv
        .contains(&"/srv/pg/alt/pg_hba.conf".to_owned()));
    // A cluster without a configuration cannot be made afresh: said, with the path.
    let why = state::plan(&t.root, &t.load("postgresql@16-none.service"))
        .unwrap_err()
        .to_string();
    assert!(
        why.contains("/etc/postgresql/16/none/postgresql.conf"),
        "{why}"
    );
}

#[test]
fn mariadb_follows_its_configured_datadir_and_redis_and_cron_have_known_folders() {
    let t = Tree::new("fresh-known");
    t.lib(
        "mariadb.service",
        "[Service]\nType=notify\nExecStart=/usr/sbin/mariadbd\n",
    );
    t.write(
        "etc/mysql/mariadb.conf.d/50-server.cnf",
        "[client]\ndatadir = /wrong\n[mysqld]\ndatadir                 = /srv/mysql\n",
    );
    let plan = state::plan(&t.root, &t.load("mariadb.service")).unwrap();
    assert_eq!(folders(&plan), [PathBuf::from("/srv/mysql")]);
    assert!(plan.initialise[0]
        .argv
        .contains(&"--datadir=/srv/mysql".to_owned()));
    t.lib(
        "redis-server.service",
        "[Service]\nExecStart=/usr/bin/redis-server\n",
    );
    assert_eq!(
        folders(&state::plan(&t.root, &t.load("redis-server.service")).unwrap()),
        [PathBuf::from("/var/lib/redis")]
    );
    // An instance's own configuration names its folder.
    t.lib(
        "redis-server@.service",
        "[Service]\nExecStart=/usr/bin/redis-server /etc/redis/redis-%i.conf --supervised systemd\n",
    );
    t.write(
        "etc/redis/redis-cache.conf",
        "port 6380\ndir /var/lib/redis-cache\n",
    );
    assert_eq!(
        folders(&state::plan(&t.root, &t.load("redis-server@cache.service")).unwrap()),
        [PathBuf::from("/var/lib/redis-cache")]
    );
    t.lib("cron.service", "[Service]\nExecStart=/usr/sbin/cron -f\n");
    assert_eq!(
        folders(&state::plan(&t.root, &t.load("cron.service")).unwrap()),
        [PathBuf::from("/var/spool/cron/crontabs")]
    );
}

/// A folder on tmpfs (the host's /dev/shm), removed on drop.
struct ShmFolder(PathBuf);

impl Drop for ShmFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn only_a_folder_on_the_vms_overlay_is_ever_emptied() {
    let folder = ShmFolder(PathBuf::from(format!(
        "/dev/shm/feather-svc-fresh-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&folder.0).unwrap();
    std::fs::write(folder.0.join("precious"), "data").unwrap();
    let why = state::empty_folder(&folder.0).unwrap_err().to_string();
    assert!(
        why.contains("is not in the VM's copy-on-write layer"),
        "{why}"
    );
    assert_eq!(
        std::fs::read_to_string(folder.0.join("precious")).unwrap(),
        "data"
    );
    // A folder that does not exist is nothing to hide.
    state::empty_folder(&folder.0.join("absent")).unwrap();
}
