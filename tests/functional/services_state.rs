//! Services started with empty state instead of the host's data (`--fresh-state`): the data
//! folders are replaced by empty, opaque folders in the VM's own layer (the host's stay as they
//! are and are no longer seen), the package's initialiser makes a new data set, and the service
//! answers a real client. A VM created with `--fresh-state` does this on its first start only.

use std::path::Path;

use super::services::{psql, service, services, vm};
use crate::support::Feather;

/// `trusted.overlay.opaque` of a folder of the VM's layer, read on the host.
fn opaque(feather: &Feather, vm: &str, rel: &str) -> bool {
    let path = feather.vm_dir(vm).join("upper").join(rel);
    let out = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", "trusted.overlay.opaque"])
        .arg(&path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout) == "y"
}

/// The names, sizes and modification times below a host folder, to show it was not touched.
fn listing(path: &Path) -> Vec<(String, u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            }
            out.push((entry.path().display().to_string(), meta.len(), meta.mtime()));
        }
    }
    out.sort();
    out
}

#[test]
fn redis_with_fresh_state_starts_empty_and_the_data_it_had_is_not_seen() {
    let feather = Feather::new("svc-fresh-redis");
    let host_before = listing(Path::new("/var/lib/redis"));
    vm(&feather, "fr");
    // Data the test puts into the VM's view: a key, saved to /var/lib/redis/dump.rdb.
    feather.ok(&["service", "start", "fr", "redis"]);
    assert_eq!(
        feather.sh(
            "fr",
            "redis-cli set kept here; redis-cli save; redis-cli get kept"
        ),
        "OK\nOK\nhere\n"
    );
    // Refused while it runs: its data is in use.
    let e = feather.fails(&["service", "start", "fr", "redis", "--fresh-state"]);
    assert!(
        e.contains("redis-server.service is running on the data it has; stop it first"),
        "{e}"
    );
    feather.ok(&["service", "stop", "fr", "redis"]);

    feather.ok(&["service", "start", "fr", "redis", "--fresh-state"]);
    assert_eq!(
        feather.sh(
            "fr",
            "redis-cli ping; redis-cli exists kept; redis-cli dbsize"
        ),
        "PONG\n0\n0\n"
    );
    // The folder is opaque in the VM's layer, owned as the host's is.
    assert!(opaque(&feather, "fr", "var/lib/redis"));
    assert_eq!(
        feather.sh("fr", "stat -c '%U %G %a' /var/lib/redis"),
        "redis redis 750\n"
    );
    let status = feather.ok(&["service", "status", "fr", "redis", "-n", "20"]);
    assert!(
        status.contains("fresh state: /var/lib/redis (redis's data) replaced by an empty folder in the VM's layer"),
        "{status}"
    );
    // What the fresh copy writes stays in the VM; the host's folder is as it was.
    assert_eq!(
        feather.sh("fr", "redis-cli set new value; redis-cli save"),
        "OK\nOK\n"
    );
    assert!(feather
        .vm_dir("fr")
        .join("upper/var/lib/redis/dump.rdb")
        .exists());
    assert_eq!(listing(Path::new("/var/lib/redis")), host_before);
}

/// The system identifier of the postgresql cluster a VM's server runs on.
fn system_identifier(feather: &Feather, vm: &str) -> String {
    psql(
        feather,
        vm,
        "select system_identifier from pg_control_system()",
    )
    .trim()
    .to_owned()
}

#[test]
fn postgresql_with_fresh_state_runs_a_new_cluster_made_by_initdb_not_the_hosts() {
    let feather = Feather::new("svc-fresh-pg");
    let host_data = Path::new("/var/lib/postgresql/15/main");
    let host_before = listing(host_data);
    let controldata = std::process::Command::new("/usr/lib/postgresql/15/bin/pg_controldata")
        .arg(host_data)
        .output()
        .unwrap();
    let controldata = String::from_utf8_lossy(&controldata.stdout).into_owned();
    let host_id = controldata
        .lines()
        .find_map(|l| l.strip_prefix("Database system identifier:"))
        .expect("pg_controldata names the host cluster's identifier")
        .trim()
        .to_owned();

    vm(&feather, "pg");
    // From the host's data: the host's cluster, with a table the test adds in the VM's view.
    feather.ok(&["service", "start", "pg", "postgresql@15-main"]);
    assert_eq!(system_identifier(&feather, "pg"), host_id);
    psql(&feather, "pg", "create table feather_kept (v text)");
    feather.ok(&["service", "stop", "pg", "postgresql@15-main"]);

    // With fresh state: a cluster initdb made, with the same configuration (/etc/postgresql).
    feather.ok(&[
        "service",
        "start",
        "pg",
        "postgresql@15-main",
        "--fresh-state",
    ]);
    let fresh_id = system_identifier(&feather, "pg");
    assert_ne!(fresh_id, host_id, "the server runs on the host's cluster");
    assert_eq!(
        psql(
            &feather,
            "pg",
            "select coalesce(to_regclass('feather_kept')::text, 'absent')"
        ),
        "absent\n"
    );
    assert_eq!(
        psql(
            &feather,
            "pg",
            "create table fresh (v text); insert into fresh values ('new'); select v from fresh"
        ),
        "new\n"
    );
    assert!(opaque(&feather, "pg", "var/lib/postgresql/15/main"));
    // Debian's layout: the configuration stays in /etc, not in the data folder.
    assert_eq!(
        feather.sh(
            "pg",
            "ls /var/lib/postgresql/15/main/pg_hba.conf 2>/dev/null; stat -c '%U %a' /var/lib/postgresql/15/main; show=$(runuser -u postgres -- psql -d postgres -Atc 'show hba_file'); echo $show"
        ),
        "postgres 700\n/etc/postgresql/15/main/pg_hba.conf\n"
    );
    let list = services(&feather, "pg");
    let pg = service(&list, "postgresql@15-main.service");
    assert_eq!(
        (pg["state"].as_str(), pg["ready"].as_bool()),
        (Some("active"), Some(true))
    );
    assert_eq!(
        listing(host_data),
        host_before,
        "the host's cluster changed"
    );
}

#[test]
fn a_vm_created_with_fresh_state_empties_its_services_data_on_its_first_start_only() {
    let feather = Feather::new("svc-fresh-create");
    feather.ok(&["create", "db", "--service", "redis", "--fresh-state"]);
    feather.ok(&["start", "db"]);
    assert!(opaque(&feather, "db", "var/lib/redis"));
    assert_eq!(
        feather.sh("db", "redis-cli set kept here; redis-cli save"),
        "OK\nOK\n"
    );
    // The next start of the VM keeps what its redis wrote.
    feather.ok(&["stop", "db"]);
    feather.ok(&["start", "db"]);
    assert_eq!(feather.sh("db", "redis-cli get kept"), "here\n");
    let log = feather.sh("db", "cat /var/log/feather/redis-server.service.log");
    assert_eq!(
        log.matches("fresh state: /var/lib/redis").count(),
        1,
        "{log}"
    );
    // --fresh-state without --service is a usage error.
    let e = feather.fails(&["create", "other", "--fresh-state"]);
    assert!(e.contains("--service"), "{e}");
}

#[test]
fn mariadb_with_fresh_state_has_only_the_databases_mariadb_install_db_makes() {
    let feather = Feather::new("svc-fresh-mariadb");
    let host_before = listing(Path::new("/var/lib/mysql"));
    vm(&feather, "my");
    feather.ok(&["service", "start", "my", "mariadb"]);
    feather.sh("my", "mariadb -e 'create database feather_kept'");
    feather.ok(&["service", "stop", "my", "mariadb"]);
    feather.ok(&["service", "start", "my", "mariadb", "--fresh-state"]);
    assert_eq!(
        feather.sh("my", "mariadb -Nse 'show databases' | sort | tr '\\n' ' '"),
        "information_schema mysql performance_schema sys "
    );
    // root reaches it through its socket, as Debian sets it up.
    assert_eq!(
        feather.sh("my", "mariadb -Nse 'select user()'"),
        "root@localhost\n"
    );
    assert!(opaque(&feather, "my", "var/lib/mysql"));
    let status = feather.ok(&["service", "status", "my", "mariadb", "-n", "200"]);
    assert!(
        status.contains("fresh-state: mariadb-install-db --user=mysql"),
        "{status}"
    );
    assert_eq!(listing(Path::new("/var/lib/mysql")), host_before);
}
