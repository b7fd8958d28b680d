//! The dependency graph: closure, order in waves, cycles, infrastructure, missing units.

mod common;

use common::Tree;
use feather_svc::graph::DependencyGraph;
use feather_svc::{catalog, SvcError, UnitName};

fn names(list: &[&str]) -> Vec<UnitName> {
    list.iter().map(|n| UnitName::parse(n).unwrap()).collect()
}

fn closure(t: &Tree, roots: &[&str]) -> Result<DependencyGraph, SvcError> {
    DependencyGraph::closure(&t.paths(), &names(roots))
}

fn service(deps: &str) -> String {
    format!("[Unit]\n{deps}\n[Service]\nExecStart=/bin/true\n")
}

#[test]
fn closure_follows_every_pulling_dependency_and_wants_links() {
    let t = Tree::new("closure");
    t.lib("web.service", &service("Requires=app.service\nWants=cache.service\nAfter=app.service cache.service network.target\nWants=network-online.target"));
    t.lib(
        "app.service",
        &service("BindsTo=db.service\nRequisite=cfg.service\nAfter=db.service cfg.service"),
    );
    t.lib(
        "db.service",
        &service("After=systemd-journald.socket\nRequires=systemd-journald.socket"),
    );
    t.lib("cfg.service", &service(""));
    t.lib("cache.service", &service(""));
    t.lib("unrelated.service", &service("Before=web.service"));
    t.lib("side.service", &service(""));
    t.link(
        "etc/systemd/system/app.service.wants/side.service",
        "/lib/systemd/system/side.service",
    );
    let graph = closure(&t, &["web.service"]).unwrap();
    let units: Vec<&str> = graph.units.keys().map(String::as_str).collect();
    assert_eq!(
        units,
        vec![
            "app.service",
            "cache.service",
            "db.service",
            "side.service",
            "web.service"
        ],
        "Requisite= pulls nothing in: cfg.service must already be active"
    );
    assert_eq!(
        graph.pulled_by["db.service"],
        ("app.service".to_owned(), "binds to")
    );
    assert_eq!(
        graph.pulled_by["side.service"],
        ("app.service".to_owned(), "wants")
    );
    // Infrastructure is satisfied, not started: services that need it still start.
    assert!(graph.satisfied.contains_key("systemd-journald.socket"));
    assert!(graph.satisfied.contains_key("network-online.target"));
    let waves = graph.start_waves().unwrap();
    assert_eq!(
        waves,
        vec![
            vec!["cache.service", "db.service", "side.service"],
            vec!["app.service"],
            vec!["web.service"],
        ]
    );
    let stop = graph.stop_waves().unwrap();
    assert_eq!(stop[0], vec!["web.service"]);
    assert_eq!(stop[2].len(), 3);
}

#[test]
fn before_orders_as_after_does_in_reverse() {
    let t = Tree::new("before");
    t.lib(
        "a.service",
        &service("Wants=b.service c.service\nBefore=b.service"),
    );
    t.lib("b.service", &service("Before=c.service"));
    t.lib("c.service", &service(""));
    let waves = closure(&t, &["a.service"]).unwrap().start_waves().unwrap();
    assert_eq!(
        waves,
        vec![vec!["a.service"], vec!["b.service"], vec!["c.service"]]
    );
}

#[test]
fn a_cycle_is_reported_by_the_units_in_it() {
    let t = Tree::new("cycle");
    t.lib("top.service", &service("Wants=x.service\nAfter=x.service"));
    t.lib("x.service", &service("Wants=y.service\nAfter=y.service"));
    t.lib("y.service", &service("Wants=z.service\nAfter=z.service"));
    t.lib("z.service", &service("After=x.service"));
    let e = closure(&t, &["top.service"])
        .unwrap()
        .start_waves()
        .unwrap_err();
    let SvcError::Cycle(cycle) = &e else {
        panic!("{e}")
    };
    assert_eq!(cycle.first(), cycle.last());
    let mut members: Vec<&str> = cycle[..cycle.len() - 1]
        .iter()
        .map(String::as_str)
        .collect();
    members.sort();
    assert_eq!(
        members,
        vec!["x.service", "y.service", "z.service"],
        "top.service is not in the cycle: {e}"
    );
    assert!(e.to_string().starts_with("dependency cycle: "), "{e}");
}

#[test]
fn missing_required_units_fail_missing_wanted_units_are_skipped() {
    let t = Tree::new("missing");
    t.lib(
        "a.service",
        &service("Wants=gone.service\nRequires=b.service"),
    );
    t.lib("b.service", &service("Requires=absent.service"));
    let e = closure(&t, &["a.service"]).unwrap_err().to_string();
    assert!(e.starts_with("b.service requires absent.service, which is not available: unit absent.service is not installed"), "{e}");
    t.lib("absent.service", &service(""));
    let graph = closure(&t, &["a.service"]).unwrap();
    assert!(graph.skipped["gone.service"].contains("not installed"));
    t.link("etc/systemd/system/absent.service", "/dev/null");
    assert!(closure(&t, &["a.service"])
        .unwrap_err()
        .to_string()
        .contains("masked"));
}

#[test]
fn targets_wait_for_what_they_want_and_sockets_start_their_service() {
    let t = Tree::new("targets");
    t.lib("app.target", "[Unit]\nWants=one.service two.service\n");
    t.lib("one.service", &service(""));
    t.lib("two.service", &service(""));
    t.lib("echo.socket", "[Socket]\nListenStream=127.0.0.1:7\n");
    t.lib("echo.service", &service(""));
    let waves = closure(&t, &["app.target", "echo.socket"])
        .unwrap()
        .start_waves()
        .unwrap();
    assert_eq!(
        waves,
        vec![
            vec!["echo.socket", "one.service", "two.service"],
            vec!["app.target", "echo.service"]
        ]
    );
}

#[test]
fn infrastructure_cannot_be_started_by_name() {
    let t = Tree::new("infra");
    t.lib("systemd-journald.service", &service(""));
    let e = closure(&t, &["systemd-journald.service"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("host infrastructure") && e.contains("log capture"),
        "{e}"
    );
}

#[test]
fn sysv_scripts_without_a_unit_become_forking_services() {
    let t = Tree::new("sysv");
    t.write("etc/init.d/legacyd", "#!/bin/sh\n### BEGIN INIT INFO\n# Provides: legacyd\n# Required-Start: $network $remote_fs other\n# Default-Start: 2 3 4 5\n# Short-Description: A legacy daemon\n### END INIT INFO\n");
    std::fs::set_permissions(
        t.root.join("etc/init.d/legacyd"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let unit = t.load("legacyd.service");
    let s = unit.service.as_ref().unwrap();
    assert_eq!(s.exec_start[0].argv[1], "start");
    assert!(s.remain_after_exit);
    assert_eq!(
        unit.dependencies.after,
        vec!["network.target", "remote-fs.target", "other.service"]
    );
    assert_eq!(unit.description.as_deref(), Some("A legacy daemon"));
}

#[test]
fn catalog_says_what_can_be_duplicated_and_why_not() {
    let t = Tree::new("catalog");
    std::fs::create_dir_all(t.root.join("usr/bin")).unwrap();
    t.write("usr/bin/present", "#!/bin/sh\n");
    std::fs::set_permissions(
        t.root.join("usr/bin/present"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    t.lib(
        "good.service",
        "[Unit]\nDescription=Good\nAfter=network.target\n[Service]\nExecStart=/usr/bin/present\n",
    );
    t.link(
        "etc/systemd/system/good-alias.service",
        "/lib/systemd/system/good.service",
    );
    t.lib("nobin.service", "[Service]\nExecStart=/usr/bin/absent\n");
    t.lib(
        "broken.service",
        "[Service]\nExecStart=/usr/bin/present\nKillMode=gently\n",
    );
    t.lib(
        "cyc1.service",
        "[Unit]\nWants=cyc2.service\nAfter=cyc2.service\n[Service]\nExecStart=/usr/bin/present\n",
    );
    t.lib(
        "cyc2.service",
        "[Unit]\nAfter=cyc1.service\n[Service]\nExecStart=/usr/bin/present\n",
    );
    t.lib("tpl@.service", "[Service]\nExecStart=present %i\n");
    t.lib(
        "systemd-journald.service",
        "[Service]\nExecStart=/lib/systemd/systemd-journald\n",
    );
    t.link("lib/systemd/system/masked.service", "/dev/null");
    let entries = catalog::catalog(&t.root).unwrap();
    let find = |n: &str| {
        entries
            .iter()
            .find(|e| e.name == n)
            .unwrap_or_else(|| panic!("{n} not in {entries:?}"))
    };
    assert!(find("good.service").duplicable);
    assert_eq!(find("good.service").description.as_deref(), Some("Good"));
    assert!(
        !entries.iter().any(|e| e.name == "good-alias.service"),
        "aliases are listed under their unit"
    );
    assert!(find("nobin.service")
        .note
        .as_deref()
        .unwrap()
        .contains("/usr/bin/absent is not installed"));
    assert!(!find("broken.service").duplicable);
    assert!(find("broken.service")
        .note
        .as_deref()
        .unwrap()
        .contains("broken.service:3: unknown KillMode=gently"));
    assert!(find("cyc1.service")
        .note
        .as_deref()
        .unwrap()
        .contains("dependency cycle"));
    assert!(find("tpl@.service").duplicable && find("tpl@.service").source == "template");
    assert!(find("systemd-journald.service")
        .note
        .as_deref()
        .unwrap()
        .contains("host infrastructure"));
    assert_eq!(
        find("masked.service").note.as_deref(),
        Some("masked on the host")
    );
}

#[test]
fn catalog_says_no_to_units_only_the_hosts_kernel_or_devices_can_serve() {
    let t = Tree::new("catalog-host-only");
    std::fs::create_dir_all(t.root.join("usr/bin")).unwrap();
    t.write("usr/bin/present", "#!/bin/sh\n");
    std::fs::set_permissions(
        t.root.join("usr/bin/present"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    t.lib("true.service", "[Service]\nExecStart=/usr/bin/present\n");
    // Debian's nfs-kernel-server: the daemons need the kernel's nfsd filesystem.
    t.lib(
        "mountd.service",
        "[Unit]\nRequires=proc-fs-nfsd.mount\n[Service]\nExecStart=/usr/bin/present\n",
    );
    t.lib(
        "nfsd.service",
        "[Unit]\nRequires=mountd.service\n[Service]\nType=oneshot\nExecStart=/usr/bin/present\n",
    );
    // openvpn@.service: its tunnel device.
    t.lib(
        "vpn@.service",
        "[Service]\nExecStart=/usr/bin/present\nDeviceAllow=/dev/null rw\nDeviceAllow=/dev/net/tun rw\n",
    );
    // Devices a VM has, and device classes, are no reason.
    t.lib(
        "devices.service",
        "[Service]\nExecStart=/usr/bin/present\nDeviceAllow=/dev/urandom r\nDeviceAllow=char-pts rw\n",
    );
    let entries = catalog::catalog(&t.root).unwrap();
    let note = |n: &str| {
        let e = entries.iter().find(|e| e.name == n).unwrap();
        (e.duplicable, e.note.clone().unwrap_or_default())
    };
    let (yes, why) = note("nfsd.service");
    assert!(
        !yes && why.contains("mountd.service requires proc-fs-nfsd.mount: the kernel's NFS server"),
        "{why}"
    );
    let (yes, why) = note("vpn@.service");
    assert!(
        !yes && why.contains("needs the device /dev/net/tun (DeviceAllow=)"),
        "{why}"
    );
    assert!(note("devices.service").0);
    assert!(note("true.service").0);
}
