//! Unit-file semantics, each with a small fixture tree: search path and precedence, aliases,
//! masks, drop-ins, templates, specifiers, resets, and the typed settings.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::Tree;
use feather_svc::unit::{
    BindIpv6Only, DirectoryKind, KillMode, ListenKind, NotifyAccess, Restart, ServiceType,
};

#[test]
fn etc_overrides_run_overrides_lib() {
    let t = Tree::new("precedence");
    t.lib("a.service", "[Service]\nExecStart=/bin/lib\n");
    t.write(
        "usr/lib/systemd/system/a.service",
        "[Service]\nExecStart=/bin/usr-lib\n",
    );
    assert_eq!(
        t.load("a.service").service.unwrap().exec_start[0].path,
        "/bin/lib"
    );
    t.write(
        "run/systemd/system/a.service",
        "[Service]\nExecStart=/bin/run\n",
    );
    assert_eq!(t.load("a").service.unwrap().exec_start[0].path, "/bin/run");
    t.write(
        "etc/systemd/system/a.service",
        "[Service]\nExecStart=/bin/etc\n",
    );
    let unit = t.load("a.service");
    assert_eq!(unit.service.unwrap().exec_start[0].path, "/bin/etc");
    assert_eq!(
        unit.fragment,
        Some(t.root.join("etc/systemd/system/a.service"))
    );
}

#[test]
fn masks_aliases_and_missing_units() {
    let t = Tree::new("mask");
    t.lib("real.service", "[Service]\nExecStart=/bin/real\n");
    t.link(
        "etc/systemd/system/alias.service",
        "/lib/systemd/system/real.service",
    );
    t.link("etc/systemd/system/masked.service", "/dev/null");
    t.lib("empty.service", "");
    let unit = t.load("alias.service");
    assert_eq!(
        unit.name.as_str(),
        "real.service",
        "an alias loads the unit by its real name"
    );
    assert!(t.load_err("masked.service").contains("is masked"));
    assert!(
        t.load_err("empty.service").contains("is masked"),
        "an empty file masks too"
    );
    let missing = t.load_err("nope.service");
    assert!(
        missing.contains("nope.service is not installed") && missing.contains("etc/systemd/system"),
        "{missing}"
    );
    // Masking in /etc hides a unit in /lib.
    t.link("etc/systemd/system/real.service", "/dev/null");
    assert!(t.load_err("real.service").contains("masked"));
}

#[test]
fn dropins_apply_in_file_name_order_and_higher_directories_hide_same_names() {
    let t = Tree::new("dropins");
    t.lib(
        "web.service",
        "[Service]\nExecStart=/bin/web\nUser=a\nEnvironment=A=1\n",
    );
    t.lib("web.service.d/20-user.conf", "[Service]\nUser=b\n");
    t.write(
        "etc/systemd/system/web.service.d/10-env.conf",
        "[Service]\nEnvironment=B=2\n",
    );
    t.write(
        "etc/systemd/system/web.service.d/20-user.conf",
        "[Service]\nUser=c\n",
    );
    // Top-level drop-ins for every service, and dash-prefix drop-ins.
    t.lib("service.d/05-all.conf", "[Service]\nEnvironment=ALL=yes\n");
    t.write(
        "run/systemd/system/we-.service.d/x.conf",
        "[Unit]\nDescription=not applied: web has no dash\n",
    );
    let unit = t.load("web.service");
    assert_eq!(
        unit.exec.user.as_deref(),
        Some("c"),
        "/etc's 20-user.conf hides /lib's"
    );
    assert_eq!(
        unit.exec.environment,
        vec![
            ("A".into(), "1".into()),
            ("ALL".into(), "yes".into()),
            ("B".into(), "2".into())
        ]
    );
    assert_eq!(unit.dropins.len(), 3);
    assert!(unit.description.is_none());

    t.lib("my-app-worker.service", "[Service]\nExecStart=/bin/w\n");
    t.lib("my-.service.d/a.conf", "[Service]\nUser=dash1\n");
    t.lib("my-app-.service.d/b.conf", "[Service]\nGroup=dash2\n");
    let unit = t.load("my-app-worker.service");
    assert_eq!(
        (unit.exec.user.as_deref(), unit.exec.group.as_deref()),
        (Some("dash1"), Some("dash2"))
    );
}

#[test]
fn a_dropin_masked_with_dev_null_is_skipped() {
    let t = Tree::new("dropin-mask");
    t.lib("a.service", "[Service]\nExecStart=/bin/a\n");
    t.lib("a.service.d/override.conf", "[Service]\nUser=nobody\n");
    t.link("etc/systemd/system/a.service.d/override.conf", "/dev/null");
    assert_eq!(t.load("a.service").exec.user, None);
}

#[test]
fn templates_instances_and_specifiers() {
    let t = Tree::new("template");
    t.lib(
        "postgresql@.service",
        "[Unit]\nDescription=PostgreSQL Cluster %i\nAfter=network.target\n\
         [Service]\nType=forking\nUser=postgres\n\
         ExecStart=-/usr/bin/pg_ctlcluster --skip-systemctl-redirect %i start\n\
         PIDFile=postgresql/%i.pid\nRuntimeDirectory=postgresql/%I\nEnvironment=CLUSTER=%i UNIT=%n PREFIX=%p\n\
         WorkingDirectory=-%S/postgresql\n",
    );
    t.lib(
        "postgresql@.service.d/tpl.conf",
        "[Service]\nEnvironment=FROM_TEMPLATE_DROPIN=1\n",
    );
    t.write(
        "etc/systemd/system/postgresql@15-main.service.d/inst.conf",
        "[Service]\nEnvironment=FROM_INSTANCE_DROPIN=1\n",
    );
    let unit = t.load("postgresql@15-main.service");
    assert_eq!(unit.name.as_str(), "postgresql@15-main.service");
    assert_eq!(
        unit.fragment,
        Some(t.root.join("lib/systemd/system/postgresql@.service"))
    );
    assert_eq!(
        unit.description.as_deref(),
        Some("PostgreSQL Cluster 15-main")
    );
    let service = unit.service.as_ref().unwrap();
    assert_eq!(service.kind, ServiceType::Forking);
    assert_eq!(
        service.exec_start[0].argv,
        vec![
            "/usr/bin/pg_ctlcluster",
            "--skip-systemctl-redirect",
            "15-main",
            "start"
        ]
    );
    assert!(service.exec_start[0].ignore_failure);
    assert_eq!(
        service.pid_file,
        Some(PathBuf::from("/run/postgresql/15-main.pid"))
    );
    let env: Vec<String> = unit
        .exec
        .environment
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert_eq!(
        env,
        vec![
            "CLUSTER=15-main",
            "UNIT=postgresql@15-main.service",
            "PREFIX=postgresql",
            "FROM_INSTANCE_DROPIN=1",
            "FROM_TEMPLATE_DROPIN=1"
        ]
    );
    assert_eq!(
        unit.exec.directories(DirectoryKind::Runtime).paths,
        vec!["postgresql/15/main"]
    );
    let wd = unit.exec.working_directory.as_ref().unwrap();
    assert_eq!(
        (wd.path.clone(), wd.optional),
        (PathBuf::from("/var/lib/postgresql"), true)
    );
    assert!(t.load_err("postgresql@.service").contains("is a template"));
}

#[test]
fn an_instance_file_of_its_own_wins_over_the_template() {
    let t = Tree::new("instance-file");
    t.lib("getty@.service", "[Service]\nExecStart=/sbin/agetty %I\n");
    t.lib("getty@tty9.service", "[Service]\nExecStart=/bin/own %i\n");
    assert_eq!(
        t.load("getty@tty9.service").service.unwrap().exec_start[0].argv,
        vec!["/bin/own", "tty9"]
    );
    assert_eq!(
        t.load("getty@tty1.service").service.unwrap().exec_start[0].argv,
        vec!["/sbin/agetty", "tty1"]
    );
}

#[test]
fn empty_assignments_reset_lists() {
    let t = Tree::new("reset");
    t.lib(
        "a.service",
        "[Unit]\nAfter=x.service y.service\nWants=x.service\n[Service]\nExecStart=/bin/one\nExecStartPre=/bin/pre\nEnvironment=A=1\n",
    );
    t.lib("a.service.d/override.conf", "[Unit]\nAfter=\nAfter=z.service\n[Service]\nExecStart=\nExecStart=/bin/two\nEnvironment=\nExecStartPre=\n");
    let unit = t.load("a.service");
    assert_eq!(unit.dependencies.after, vec!["z.service"]);
    assert_eq!(unit.dependencies.wants, vec!["x.service"]);
    let service = unit.service.unwrap();
    assert_eq!(service.exec_start.len(), 1);
    assert_eq!(service.exec_start[0].path, "/bin/two");
    assert!(service.exec_start_pre.is_empty() && unit.exec.environment.is_empty());
}

#[test]
fn dependencies_install_and_wants_directories() {
    let t = Tree::new("deps");
    t.lib(
        "app.service",
        "[Unit]\nRequires=db.service\nWants=cache.service\nBindsTo=b.service\nRequisite=r.service\nPartOf=group.target\n\
         Conflicts=other.service\nAfter=db.service cache.service\nBefore=web.target\n\
         [Service]\nExecStart=/bin/app\n[Install]\nWantedBy=multi-user.target\nAlias=application.service\nRequiredBy=web.target\n",
    );
    t.link(
        "etc/systemd/system/app.service.wants/extra.service",
        "/lib/systemd/system/extra.service",
    );
    t.link(
        "lib/systemd/system/app.service.requires/needed.service",
        "../needed.service",
    );
    let unit = t.load("app.service");
    let d = &unit.dependencies;
    assert_eq!(d.requires, vec!["db.service", "needed.service"]);
    assert_eq!(d.wants, vec!["cache.service", "extra.service"]);
    assert_eq!(
        (d.binds_to.clone(), d.requisite.clone(), d.part_of.clone()),
        (
            vec!["b.service".to_owned()],
            vec!["r.service".to_owned()],
            vec!["group.target".to_owned()]
        )
    );
    assert_eq!(d.conflicts, vec!["other.service"]);
    assert_eq!(d.after, vec!["db.service", "cache.service"]);
    assert_eq!(d.before, vec!["web.target"]);
    assert_eq!(unit.install.wanted_by, vec!["multi-user.target"]);
    assert_eq!(unit.install.alias, vec!["application.service"]);
    assert_eq!(unit.install.required_by, vec!["web.target"]);
}

#[test]
fn service_settings() {
    let t = Tree::new("settings");
    t.lib(
        "s.service",
        "[Unit]\nStartLimitIntervalSec=30\nStartLimitBurst=3\n\
         [Service]\nType=notify\nNotifyAccess=all\nBusName=org.example.S\nRemainAfterExit=yes\n\
         ExecStartPre=-/bin/pre\nExecStart=@/usr/bin/s s-daemon --x\nExecStartPost=/bin/post\nExecReload=/bin/kill -HUP $MAINPID\n\
         ExecStop=/bin/stop\nExecStopPost=+/bin/cleanup\n\
         User=svc\nGroup=svcgrp\nSupplementaryGroups=a b\nWorkingDirectory=~\nUMask=0027\n\
         Environment=\"GREETING=hello world\"\nEnvironmentFile=-/etc/default/s\nEnvironmentFile=/etc/s.env\n\
         RuntimeDirectory=s s/sub\nRuntimeDirectoryMode=0750\nStateDirectory=s\nCacheDirectory=s\nLogsDirectory=s\nConfigurationDirectory=s\nStateDirectoryMode=0700\n\
         PIDFile=/run/s.pid\nLimitNOFILE=1024:4096\nLimitCORE=infinity\n\
         Restart=on-failure\nRestartSec=2s\nTimeoutStartSec=1min\nTimeoutStopSec=0\n\
         KillMode=mixed\nKillSignal=SIGQUIT\nProtectSystem=strict\n",
    );
    let unit = t.load("s.service");
    let s = unit.service.as_ref().unwrap();
    assert_eq!(s.kind, ServiceType::Notify);
    assert_eq!(s.notify_access, Some(NotifyAccess::All));
    assert_eq!(s.bus_name.as_deref(), Some("org.example.S"));
    assert!(s.remain_after_exit);
    assert!(s.exec_start_pre[0].ignore_failure);
    assert_eq!(
        (s.exec_start[0].path.as_str(), s.exec_start[0].argv.clone()),
        ("/usr/bin/s", vec!["s-daemon".to_owned(), "--x".into()])
    );
    assert_eq!(s.exec_reload[0].argv, vec!["/bin/kill", "-HUP", "$MAINPID"]);
    assert!(s.exec_stop_post[0].full_privileges);
    assert_eq!(s.exec_start_post.len() + s.exec_stop.len(), 2);
    assert_eq!(unit.exec.user.as_deref(), Some("svc"));
    assert_eq!(unit.exec.group.as_deref(), Some("svcgrp"));
    assert_eq!(unit.exec.supplementary_groups, vec!["a", "b"]);
    assert_eq!(
        unit.exec.working_directory.as_ref().unwrap().path,
        PathBuf::from("~")
    );
    assert_eq!(unit.exec.umask, 0o027);
    assert_eq!(
        unit.exec.environment,
        vec![("GREETING".into(), "hello world".into())]
    );
    assert_eq!(unit.exec.environment_files.len(), 2);
    assert!(unit.exec.environment_files[0].optional && !unit.exec.environment_files[1].optional);
    let runtime = unit.exec.directories(DirectoryKind::Runtime);
    assert_eq!(
        (runtime.paths.clone(), runtime.mode),
        (vec!["s".to_owned(), "s/sub".into()], 0o750)
    );
    assert_eq!(unit.exec.directories(DirectoryKind::State).mode, 0o700);
    for kind in DirectoryKind::ALL {
        assert!(!unit.exec.directories(kind).paths.is_empty(), "{kind:?}");
    }
    assert_eq!(s.pid_file, Some(PathBuf::from("/run/s.pid")));
    assert_eq!(unit.exec.limits[0].0, "LimitNOFILE");
    assert_eq!(
        (unit.exec.limits[0].1.soft, unit.exec.limits[0].1.hard),
        (Some(1024), Some(4096))
    );
    assert_eq!(unit.exec.limits[1].1.soft, None);
    assert_eq!(s.restart, Restart::OnFailure);
    assert_eq!(s.restart_sec, Duration::from_secs(2));
    assert_eq!(s.timeout_start, Some(Duration::from_secs(60)));
    assert_eq!(
        s.timeout_stop, None,
        "TimeoutStopSec=0 disables the timeout"
    );
    assert_eq!(s.kill_mode, KillMode::Mixed);
    assert_eq!(s.kill_signal, libc_sigquit());
    assert_eq!(unit.start_limit.interval, Some(Duration::from_secs(30)));
    assert_eq!(unit.start_limit.burst, 3);
    // Read, not set aside: whether it applies is decided when the unit starts (it needs
    // no_new_privs, which this unit does not get; see docs/services.md).
    assert_eq!(
        unit.exec.filesystem.protect_system,
        feather_svc::filesystem::ProtectSystem::Strict
    );
    assert!(unit.not_applied.is_empty(), "{:?}", unit.not_applied);
}

fn libc_sigquit() -> i32 {
    3
}

#[test]
fn socket_units() {
    let t = Tree::new("socket");
    t.lib(
        "echo.socket",
        "[Socket]\nListenStream=127.0.0.1:7777\nListenStream=/run/echo.sock\nListenDatagram=[::1]:7778\n\
         ListenSequentialPacket=@echo-abstract\nAccept=yes\nService=echo-handler.service\nSocketMode=0660\n",
    );
    let unit = t.load("echo.socket");
    let socket = unit.socket.unwrap();
    assert!(socket.accept);
    assert_eq!(socket.service.as_deref(), Some("echo-handler.service"));
    assert_eq!(socket.socket_mode, Some(0o660));
    let kinds: Vec<(ListenKind, &str)> = socket
        .listen
        .iter()
        .map(|l| (l.kind, l.address.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (ListenKind::Stream, "127.0.0.1:7777"),
            (ListenKind::Stream, "/run/echo.sock"),
            (ListenKind::Datagram, "[::1]:7778"),
            (ListenKind::SequentialPacket, "@echo-abstract"),
        ]
    );
}

#[test]
fn bind_ipv6_only_ambient_capabilities_and_device_allow() {
    let t = Tree::new("v6only");
    // rpcbind.socket: IPv4 and IPv6 sockets on one port need IPV6_V6ONLY on the second.
    t.lib(
        "rpc.socket",
        "[Socket]\nBindIPv6Only=ipv6-only\nListenStream=0.0.0.0:111\nListenStream=[::]:111\n",
    );
    assert_eq!(
        t.load("rpc.socket").socket.unwrap().bind_ipv6_only,
        BindIpv6Only::Ipv6Only
    );
    t.lib(
        "both.socket",
        "[Socket]\nBindIPv6Only=both\nListenStream=80\n",
    );
    assert_eq!(
        t.load("both.socket").socket.unwrap().bind_ipv6_only,
        BindIpv6Only::Both
    );
    t.lib("plain.socket", "[Socket]\nListenStream=80\n");
    assert_eq!(
        t.load("plain.socket").socket.unwrap().bind_ipv6_only,
        BindIpv6Only::Default
    );
    t.lib(
        "odd.socket",
        "[Socket]\nBindIPv6Only=sometimes\nListenStream=80\n",
    );
    assert!(t.load_err("odd.socket").contains("BindIPv6Only=sometimes"));
    // pdns-recursor.service: a list adds, an empty value resets, `~` keeps all but those.
    t.lib(
        "amb.service",
        "[Service]\nExecStart=/bin/true\nUser=pdns\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n\
         AmbientCapabilities=chown\nDeviceAllow=/dev/null rw\nDeviceAllow=char-pts rw\n\
         DeviceAllow=/dev/net/tun rw\n",
    );
    let unit = t.load("amb.service");
    let ambient: Vec<&str> = unit
        .exec
        .ambient_capabilities
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(ambient, ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]);
    assert_eq!(unit.exec.device_allow, ["/dev/null", "/dev/net/tun"]);
    // The device cgroup is not applied: the setting stays listed.
    assert_eq!(unit.not_applied, ["Service.DeviceAllow"]);
    t.write(
        "etc/systemd/system/amb.service.d/reset.conf",
        "[Service]\nAmbientCapabilities=\nAmbientCapabilities=~CAP_SYS_ADMIN\nDeviceAllow=\n",
    );
    let unit = t.load("amb.service");
    assert!(unit.exec.device_allow.is_empty());
    assert!(
        unit.exec.ambient_capabilities.contains("CAP_KILL")
            && !unit.exec.ambient_capabilities.contains("CAP_SYS_ADMIN")
    );
}

#[test]
fn errors_carry_file_and_line() {
    let t = Tree::new("errors");
    t.lib(
        "bad.service",
        "[Unit]\nDescription=x\n[Service]\nType=sometimes\n",
    );
    let e = t.load_err("bad.service");
    assert!(
        e.ends_with("bad.service:4: unknown service type Type=sometimes"),
        "{e}"
    );
    t.lib(
        "quote.service",
        "[Service]\n\nExecStart=/bin/echo \"unterminated\n",
    );
    let e = t.load_err("quote.service");
    assert!(e.contains("quote.service:3: unterminated"), "{e}");
    t.lib("drop.service", "[Service]\nExecStart=/bin/true\n");
    t.lib("drop.service.d/broken.conf", "[Service]\nUMask=rwx\n");
    let e = t.load_err("drop.service");
    assert!(
        e.contains("drop.service.d/broken.conf:2:") && e.contains("octal"),
        "{e}"
    );
    t.lib("spec.service", "[Service]\nExecStart=/bin/echo %z\n");
    assert!(t
        .load_err("spec.service")
        .contains("spec.service:2: unknown specifier %z"));
}

#[test]
fn targets_load_with_their_dependencies() {
    let t = Tree::new("target");
    t.lib(
        "multi-user.target",
        "[Unit]\nDescription=Multi-User System\nRequires=basic.target\nAfter=basic.target\n",
    );
    t.link(
        "etc/systemd/system/multi-user.target.wants/nginx.service",
        "/lib/systemd/system/nginx.service",
    );
    let unit = t.load("multi-user.target");
    assert!(unit.service.is_none() && unit.socket.is_none());
    assert_eq!(unit.dependencies.wants, vec!["nginx.service"]);
    assert_eq!(unit.dependencies.requires, vec!["basic.target"]);
}

#[test]
fn bus_name_makes_a_service_type_dbus_and_type_dbus_requires_the_bus() {
    let t = Tree::new("dbus-type");
    // BusName= without Type=: Type=dbus, as systemd defaults it.
    t.lib(
        "named.service",
        "[Service]\nBusName=org.example.Named\nExecStart=/bin/named\n",
    );
    let named = t.load("named.service");
    assert_eq!(named.service.as_ref().unwrap().kind, ServiceType::Dbus);
    assert_eq!(named.dependencies.requires, ["dbus.socket"]);
    assert_eq!(named.dependencies.after, ["dbus.socket"]);
    // An explicit Type= wins; a BusName= still orders the unit after the bus.
    t.lib(
        "notifying.service",
        "[Service]\nType=notify\nBusName=org.example.N\nExecStart=/bin/n\n",
    );
    let notifying = t.load("notifying.service");
    assert_eq!(
        notifying.service.as_ref().unwrap().kind,
        ServiceType::Notify
    );
    assert!(notifying.dependencies.requires.is_empty());
    assert_eq!(notifying.dependencies.after, ["dbus.socket"]);
    // Neither: nothing added.
    t.lib("plain.service", "[Service]\nExecStart=/bin/plain\n");
    let plain = t.load("plain.service");
    assert_eq!(plain.service.as_ref().unwrap().kind, ServiceType::Simple);
    assert!(plain.dependencies.after.is_empty());
    // Type=dbus without a name is refused, as systemd refuses it.
    t.lib(
        "nameless.service",
        "[Service]\nType=dbus\nExecStart=/bin/x\n",
    );
    let why = feather_svc::catalog::validate(&t.load("nameless.service"))
        .unwrap_err()
        .to_string();
    assert!(why.contains("Type=dbus but has no BusName="), "{why}");
}

#[test]
fn timer_settings() {
    let t = Tree::new("timers");
    t.lib(
        "apt-like.timer",
        "[Timer]\nOnBootSec=15min\nOnUnitActiveSec=1d\nOnCalendar=*-*-* 6,18:00\nOnCalendar=daily\nRandomizedDelaySec=12h\n",
    );
    let unit = t.load("apt-like.timer");
    let timer = unit.timer.as_ref().unwrap();
    assert_eq!(timer.on_boot, [Duration::from_secs(900)]);
    assert_eq!(timer.on_unit_active, [Duration::from_secs(86_400)]);
    assert_eq!(timer.on_calendar, ["*-*-* 6,18:00", "daily"]);
    assert_eq!(unit.timer_target().as_deref(), Some("apt-like.service"));
    assert!(unit
        .not_applied
        .contains(&"Timer.RandomizedDelaySec".to_owned()));
    t.lib(
        "other.timer",
        "[Timer]\nOnActiveSec=5\nUnit=job.service\nOnCalendar=daily\nOnCalendar=\n",
    );
    let other = t.load("other.timer");
    assert_eq!(other.timer_target().as_deref(), Some("job.service"));
    assert_eq!(
        other.timer.as_ref().unwrap().on_active,
        [Duration::from_secs(5)]
    );
    assert!(other.timer.as_ref().unwrap().on_calendar.is_empty());
}

#[test]
fn resource_control_and_privilege_settings() {
    let tree = Tree::new("resources");
    tree.lib(
        "r.service",
        "[Service]\nExecStart=/bin/true\nMemoryMax=64M\nTasksMax=32\nCPUQuota=150%\nCPUShares=2048\n\
         NoNewPrivileges=yes\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE chown\n\
         CapabilityBoundingSet=CAP_KILL\nCapabilityBoundingSet=~CAP_CHOWN\n",
    );
    let unit = tree.load("r.service");
    let resources = unit.service.as_ref().unwrap().resources;
    assert_eq!(resources.memory_max, Some(64 << 20));
    assert_eq!(resources.tasks_max, Some(32));
    assert_eq!(resources.cpu_quota, Some(1.5));
    assert_eq!(resources.cpu_weight, Some(200));
    assert!(unit.exec.no_new_privileges);
    let kept: Vec<&str> = unit
        .exec
        .capability_bounding_set
        .as_ref()
        .unwrap()
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(kept, ["CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    assert!(unit.not_applied.is_empty(), "{:?}", unit.not_applied);
    // An empty assignment resets to no limit / every capability.
    tree.write(
        "etc/systemd/system/r.service.d/reset.conf",
        "[Service]\nMemoryMax=\nCapabilityBoundingSet=\nTasksMax=infinity\n",
    );
    let unit = tree.load("r.service");
    let resources = unit.service.as_ref().unwrap().resources;
    assert_eq!((resources.memory_max, resources.tasks_max), (None, None));
    assert_eq!(unit.exec.capability_bounding_set, None);
    tree.lib(
        "bad.service",
        "[Service]\nExecStart=/bin/true\nCapabilityBoundingSet=CAP_FLY\n",
    );
    assert!(tree.load_err("bad.service").contains("CAP_FLY"));
}

#[test]
fn generator_output_folders_are_searched_as_systemd_orders_them() {
    let tree = Tree::new("generated");
    tree.lib(
        "g.service",
        "[Unit]\nDescription=lib\n[Service]\nExecStart=/bin/true\n",
    );
    tree.write(
        "run/systemd/generator.late/late.service",
        "[Service]\nExecStart=/bin/true\n",
    );
    tree.write(
        "run/systemd/generator.late/g.service",
        "[Unit]\nDescription=late\n[Service]\nExecStart=/bin/true\n",
    );
    tree.link(
        "run/systemd/generator/umbrella.service.wants/inst@a.service",
        "/lib/systemd/system/inst@.service",
    );
    tree.lib(
        "umbrella.service",
        "[Service]\nType=oneshot\nExecStart=/bin/true\n",
    );
    // A late unit loses to /lib; an early one wins over /etc.
    assert_eq!(tree.load("g.service").description.as_deref(), Some("lib"));
    assert!(tree.load("late.service").fragment.is_some());
    tree.write(
        "run/systemd/generator.early/g.service",
        "[Unit]\nDescription=early\n[Service]\nExecStart=/bin/true\n",
    );
    tree.write(
        "etc/systemd/system/g.service",
        "[Unit]\nDescription=etc\n[Service]\nExecStart=/bin/true\n",
    );
    assert_eq!(tree.load("g.service").description.as_deref(), Some("early"));
    assert!(tree
        .load("umbrella.service")
        .dependencies
        .wants
        .contains(&"inst@a.service".to_owned()));
}

#[test]
fn restrict_address_families_combines_its_lines_as_systemd() {
    let tree = Tree::new("families");
    let load = |lines: &str| {
        tree.lib(
            "f.service",
            &format!("[Service]\nExecStart=/bin/true\n{lines}"),
        );
        tree.load("f.service").exec.address_families
    };
    let allowed = load("RestrictAddressFamilies=AF_UNIX AF_INET\nRestrictAddressFamilies=AF_INET6\nRestrictAddressFamilies=~AF_INET\n")
        .unwrap();
    assert!(allowed.allow);
    assert_eq!(
        allowed.families.iter().copied().collect::<Vec<_>>(),
        [1, 10]
    );
    assert!(!allowed.denied().contains(&1) && allowed.denied().contains(&2));
    let denied =
        load("RestrictAddressFamilies=~AF_PACKET AF_NETLINK\nRestrictAddressFamilies=AF_NETLINK\n")
            .unwrap();
    assert!(!denied.allow);
    assert_eq!(denied.denied(), [17]);
    let none = load("RestrictAddressFamilies=none\n").unwrap();
    assert_eq!(none.denied().len(), 46);
    assert_eq!(
        load("RestrictAddressFamilies=AF_UNIX\nRestrictAddressFamilies=\n"),
        None
    );
    tree.lib(
        "bad.service",
        "[Service]\nExecStart=/bin/true\nRestrictAddressFamilies=AF_MARS\n",
    );
    assert!(tree.load_err("bad.service").contains("AF_MARS"));
}

#[test]
fn argument_restrictions_are_read_as_systemd_reads_them() {
    let tree = Tree::new("restrictions");
    let load = |lines: &str| {
        tree.lib(
            "r.service",
            &format!("[Service]\nExecStart=/bin/true\n{lines}"),
        );
        tree.load("r.service")
    };
    let namespaces = |lines: &str| load(lines).exec.restrictions.namespaces;
    let user = libc::CLONE_NEWUSER as u64;
    let net = libc::CLONE_NEWNET as u64;
    let all = feather_svc::unit::all_namespaces();
    assert_eq!(namespaces("RestrictNamespaces=yes\n"), Some(0));
    assert_eq!(namespaces("RestrictNamespaces=no\n"), Some(all));
    assert_eq!(
        namespaces("RestrictNamespaces=user\nRestrictNamespaces=net\n"),
        Some(user | net)
    );
    assert_eq!(namespaces("RestrictNamespaces=~user\n"), Some(all & !user));
    assert_eq!(
        namespaces("RestrictNamespaces=user net\nRestrictNamespaces=~net\n"),
        Some(user)
    );
    assert_eq!(
        namespaces("RestrictNamespaces=user\nRestrictNamespaces=yes\n"),
        Some(0)
    );
    assert_eq!(
        namespaces("RestrictNamespaces=yes\nRestrictNamespaces=\n"),
        None
    );
    tree.lib(
        "bad.service",
        "[Service]\nExecStart=/bin/true\nRestrictNamespaces=moon\n",
    );
    assert!(tree.load_err("bad.service").contains("moon"));

    let unit = load(
        "RestrictRealtime=yes\nRestrictSUIDSGID=yes\nMemoryDenyWriteExecute=yes\n\
         LockPersonality=yes\nSystemCallArchitectures=native\n",
    );
    let r = &unit.exec.restrictions;
    assert!(r.realtime && r.suid_sgid && r.memory_deny_write_execute && r.lock_personality);
    assert!(r.native_architecture_only && r.any());
    assert!(unit.not_applied.is_empty(), "{:?}", unit.not_applied);
    // Another ABI besides the native one is not expressed: listed as not applied.
    let mixed = load("SystemCallArchitectures=native x86\n");
    assert!(!mixed.exec.restrictions.native_architecture_only);
    assert_eq!(mixed.not_applied, ["Service.SystemCallArchitectures"]);
    assert!(!load("").exec.restrictions.any());
}

#[test]
fn kernel_protections_are_read_and_no_longer_listed_as_not_applied() {
    let tree = Tree::new("protections");
    let load = |lines: &str| {
        tree.lib(
            "p.service",
            &format!("[Service]\nExecStart=/bin/true\n{lines}"),
        );
        tree.load("p.service")
    };
    let unit = load(
        "PrivateDevices=yes\nProtectKernelModules=yes\nProtectClock=yes\nProtectHostname=yes\n",
    );
    let p = &unit.exec.protections;
    assert!(p.private_devices && p.kernel_modules && p.clock && p.hostname && p.any());
    assert!(unit.not_applied.is_empty(), "{:?}", unit.not_applied);
    // The module folders are made inaccessible by the unit's Landlock domain.
    assert!(unit.exec.filesystem.protect_kernel_modules);
    assert_eq!(
        unit.exec.filesystem.confining_keys(),
        ["ProtectKernelModules"]
    );
    let hidden: Vec<_> = unit
        .exec
        .filesystem
        .entries(&[])
        .into_iter()
        .filter(|e| e.access == feather_svc::filesystem::Access::Inaccessible)
        .map(|e| e.path)
        .collect();
    assert_eq!(
        hidden,
        [
            std::path::PathBuf::from("/usr/lib/modules"),
            std::path::PathBuf::from("/lib/modules")
        ]
    );
    // systemd 257's `private` lets the name change in the unit's own namespace: no filter.
    assert!(!load("ProtectHostname=private\n").exec.protections.any());
    assert!(!load("PrivateDevices=no\n").exec.protections.any());
    tree.lib(
        "bad.service",
        "[Service]\nExecStart=/bin/true\nProtectClock=sometimes\n",
    );
    assert!(tree.load_err("bad.service").contains("sometimes"));
}
