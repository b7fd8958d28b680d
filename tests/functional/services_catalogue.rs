//! The service catalogue measured (issue 17): Debian server packages that the other service
//! tests do not use — mail, DNS, FTP, HTTP servers and proxies, message brokers, directory,
//! printing, key-value stores, PHP-FPM, monitoring — each duplicated into a VM of its own by
//! the unit name a Debian user types (`feather create VM --service UNIT`, then `start`), and
//! asked by its own client inside that VM. One test per package, so a run's report says which
//! work; each has its own state root and VM (removed by its fixture, also when it fails), so
//! they share nothing and run in parallel. The units the catalogue says no to are refused by
//! `create --service` with the catalogue's reason.
//!
//! `setup.sh` installs the packages and never lets the host start them; `docs/services.md`
//! has the result table.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::services::{service, services, vm, write_unit};
use crate::support::Feather;

/// How long a duplicated service has to answer its client after its VM started: rabbitmq's
/// Erlang VM and spamd's rule compilation take several seconds on a loaded machine.
const ANSWER_WITHIN: Duration = Duration::from_secs(90);

/// Creates a VM with `unit` as its service, starts it (which starts the unit with its
/// dependency closure and waits for its readiness by `Type=`), then runs `question` (a bash
/// command line) inside the VM until its output contains `answer`, within [`ANSWER_WITHIN`].
fn answers(unit: &str, question: &str, answer: &str) {
    // --net none: the VM's own loopback is all it needs, and nothing it does (a resolver's
    // priming queries, say) can leave the machine.
    answers_on("none", unit, question, answer)
}

/// [`answers`] in a VM with the network `net` (`--net`).
fn answers_on(net: &str, unit: &str, question: &str, answer: &str) {
    let feather = Feather::new(&format!("cat-{unit}"));
    feather.ok(&["create", "svc", "--net", net, "--service", unit]);
    let started = feather.run(&["start", "svc"]);
    assert_eq!(
        started.code,
        0,
        "{unit} did not start in its VM: {}\n{}",
        started.stderr,
        status(&feather, unit)
    );
    let deadline = Instant::now() + ANSWER_WITHIN;
    loop {
        let asked = feather.run(&["exec", "svc", "--", "bash", "-c", question]);
        if asked.stdout.contains(answer) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{unit} did not answer {question:?} with {answer:?} within {ANSWER_WITHIN:?}; \
             it said: {}{}\n{}",
            asked.stdout,
            asked.stderr,
            status(&feather, unit)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `service status` of the unit with its last log lines, for a failure's message.
fn status(feather: &Feather, unit: &str) -> String {
    let shown = feather.run(&["service", "status", "svc", unit, "-n", "40"]);
    format!("{}{}", shown.stdout, shown.stderr)
}

/// One test per package: `name: unit, question, answer`.
macro_rules! duplicated {
    ($($test:ident: $unit:literal, $question:expr, $answer:literal;)*) => {
        $(
            #[test]
            fn $test() {
                answers($unit, $question, $answer);
            }
        )*
        /// The units measured above, as typed.
        const MEASURED: &[&str] = &[$($unit),*];
    };
}

/// A `dig` question to the VM's own DNS server, one try of 2 s.
macro_rules! dig {
    ($question:literal) => {
        concat!("dig +short +time=2 +tries=1 @127.0.0.1 ", $question)
    };
}

/// Sends `$request` (printf format) to the VM's TCP `$port` and prints what comes back within
/// 2 s: for protocols whose Debian client is a library, not a command.
macro_rules! tcp {
    ($port:literal, $request:literal) => {
        concat!(
            "exec 3<>/dev/tcp/127.0.0.1/",
            $port,
            " && printf '",
            $request,
            "' >&3 && timeout 2 cat <&3"
        )
    };
}

duplicated! {
    // Mail.
    catalogue_dovecot_imap_greets_curl: "dovecot",
        "curl -sv --max-time 5 imap://127.0.0.1/ 2>&1", "Dovecot (Debian) ready";
    catalogue_spamd_reports_on_a_message_for_spamc: "spamd",
        "printf 'Subject: feather\\n\\nhello\\n' | spamc -R", "Content analysis details";
    // DNS.
    catalogue_bind9_named_answers_dig: "named", dig!("version.bind CH TXT"), "\"9.18";
    catalogue_bind9_alias_bind9_answers_dig: "bind9", dig!("localhost A"), "127.0.0.1";
    catalogue_unbound_answers_dig: "unbound", dig!("version.server CH TXT"), "unbound";
    catalogue_dnsmasq_answers_dig: "dnsmasq", dig!("version.bind CH TXT"), "dnsmasq-";
    catalogue_nsd_answers_dig: "nsd", dig!("version.bind CH TXT"), "NSD ";
    catalogue_knot_answers_knotc: "knot", "knotc status", "Running";
    catalogue_pdns_authoritative_answers_dig: "pdns", dig!("version.bind CH TXT"), "PowerDNS Authoritative";
    catalogue_pdns_recursor_answers_rec_control: "pdns-recursor", "rec_control ping", "pong";
    // File transfer.
    catalogue_vsftpd_greets_curl: "vsftpd", "curl -sv --max-time 5 ftp://127.0.0.1/ 2>&1", "vsFTPd";
    catalogue_tftpd_hpa_serves_a_file_to_curl: "tftpd-hpa",
        "echo served-by-tftp > /srv/tftp/feather.txt && curl -s --max-time 5 tftp://127.0.0.1/feather.txt",
        "served-by-tftp";
    catalogue_samba_smbd_lists_shares_to_smbclient: "smbd", "smbclient -N -L //127.0.0.1 2>&1", "IPC$";
    catalogue_rpcbind_answers_rpcinfo: "rpcbind", "rpcinfo -p 127.0.0.1", "portmapper";
    // HTTP servers and proxies.
    catalogue_lighttpd_serves_curl: "lighttpd", "curl -sI --max-time 5 http://127.0.0.1/", "Server: lighttpd";
    catalogue_haproxy_answers_on_its_admin_socket: "haproxy",
        "echo 'show info' | socat stdio /run/haproxy/admin.sock", "Name: HAProxy";
    catalogue_squid_proxies_curl: "squid",
        "curl -sI --max-time 5 -x http://127.0.0.1:3128 http://127.0.0.1:1/", "Server: squid";
    catalogue_varnish_answers_curl: "varnish", "curl -sI --max-time 5 http://127.0.0.1:6081/", "Varnish";
    catalogue_tinyproxy_proxies_curl: "tinyproxy",
        "curl -s --max-time 5 -x http://127.0.0.1:8888 http://127.0.0.1:1/", "tinyproxy";
    catalogue_privoxy_proxies_curl: "privoxy",
        "curl -s --max-time 5 -x http://127.0.0.1:8118 http://config.privoxy.org/", "Privoxy";
    catalogue_apt_cacher_ng_reports_to_curl: "apt-cacher-ng",
        "curl -s --max-time 5 http://127.0.0.1:3142/acng-report.html", "Apt-Cacher NG";
    catalogue_php_fpm_runs_a_script_for_cgi_fcgi: "php8.2-fpm",
        "printf '<?php echo \"fpm says \", PHP_VERSION;' > /var/www/feather.php && \
         SCRIPT_FILENAME=/var/www/feather.php SCRIPT_NAME=/feather.php REQUEST_METHOD=GET \
         cgi-fcgi -bind -connect /run/php/php8.2-fpm.sock", "fpm says 8.2";
    // Message brokers and queues.
    catalogue_rabbitmq_answers_its_diagnostics: "rabbitmq-server", "rabbitmq-diagnostics -q ping", "Ping succeeded";
    catalogue_mosquitto_answers_mosquitto_sub: "mosquitto",
        "mosquitto_sub -h 127.0.0.1 -t '$SYS/broker/version' -C 1 -W 5", "mosquitto version";
    catalogue_beanstalkd_answers_stats: "beanstalkd", tcp!(11300, "stats\\r\\n"), "version: ";
    catalogue_prosody_opens_an_xmpp_stream: "prosody",
        tcp!(5222, "<?xml version=\"1.0\"?><stream:stream to=\"localhost\" xmlns=\"jabber:client\" xmlns:stream=\"http://etherx.jabber.org/streams\" version=\"1.0\">"),
        "stream:features";
    // Directory, printing.
    catalogue_slapd_answers_ldapsearch: "slapd",
        "ldapsearch -x -H ldap://127.0.0.1 -b '' -s base namingContexts", "namingContexts:";
    catalogue_cups_answers_lpstat: "cups", "lpstat -r", "scheduler is running";
    // Key-value stores.
    catalogue_etcd_stores_a_key_for_etcdctl: "etcd",
        "etcdctl --endpoints=127.0.0.1:2379 put feather answer && etcdctl --endpoints=127.0.0.1:2379 get feather",
        "answer";
    // Monitoring.
    catalogue_snmpd_answers_snmpget: "snmpd", "snmpget -v2c -c public 127.0.0.1 1.3.6.1.2.1.1.1.0", "STRING:";
    catalogue_node_exporter_serves_metrics: "prometheus-node-exporter",
        "curl -s --max-time 5 http://127.0.0.1:9100/metrics", "node_exporter_build_info";
    catalogue_munin_node_answers_version: "munin-node", tcp!(4949, "version\\nquit\\n"), "munins node";
}

/// Measured on a VM of its own network (below).
const MEASURED_ON_A_PRIVATE_NETWORK: &[&str] = &["nmbd"];

#[test]
fn catalogue_samba_nmbd_answers_nmblookup_on_a_private_network() {
    // NetBIOS names are broadcast: nmbd waits for an IPv4 interface other than loopback, so
    // its VM gets the default private network (its broadcasts stay on feather's bridge; no
    // egress). In a --net none VM it stays "activating" until TimeoutStartSec=.
    answers_on(
        "private",
        "nmbd",
        "nmblookup -U 127.0.0.1 -S '*'",
        "<ACTIVE>",
    );
}

/// Units of installed packages that cannot work in a VM, with the words of the catalogue's
/// reason that `create --service` must repeat.
const REFUSED: &[(&str, &str)] = &[
    ("nfs-server", "proc-fs-nfsd.mount: the kernel's NFS server"),
    ("nfs-mountd", "proc-fs-nfsd.mount: the kernel's NFS server"),
    ("openvpn-server@office", "needs the device /dev/net/tun"),
    ("openvpn@office", "needs the device /dev/net/tun"),
    ("systemd-timesyncd", "the host's clock"),
];

#[test]
fn catalogue_says_yes_to_every_measured_unit_and_no_with_the_reason_to_the_rest() {
    let feather = Feather::new("cat-verdicts");
    let entries: Value =
        serde_json::from_str(&feather.ok(&["service", "catalog", "--json"])).unwrap();
    let entries = entries.as_array().unwrap();
    // The catalogue lists units by their installed name (an alias under its target, an
    // instance under its template).
    let entry = |unit: &str| {
        let installed = match unit {
            "bind9" => "named.service".to_owned(),
            _ if unit.contains('@') => format!("{}@.service", unit.split('@').next().unwrap()),
            _ => format!("{unit}.service"),
        };
        entries
            .iter()
            .find(|e| e["name"] == installed.as_str())
            .unwrap_or_else(|| panic!("{installed} is not in the catalogue: is it installed?"))
            .clone()
    };
    assert!(MEASURED.len() >= 25, "{} measured", MEASURED.len());
    for unit in MEASURED.iter().chain(MEASURED_ON_A_PRIVATE_NETWORK) {
        let e = entry(unit);
        assert_eq!(e["duplicable"], true, "{unit}: {e}");
    }
    for (unit, reason) in REFUSED {
        let e = entry(unit);
        assert_eq!(e["duplicable"], false, "{unit}: {e}");
        assert!(
            e["note"].as_str().is_some_and(|n| n.contains(reason)),
            "{unit}: {e}"
        );
        let refused = feather.fails(&["create", "no", "--net", "none", "--service", unit]);
        assert!(
            refused.contains(reason) && refused.contains("VM"),
            "{unit}: {refused}"
        );
    }
    assert_eq!(
        feather.ok(&["ls", "--json"]).matches("\"name\"").count(),
        0,
        "a refused create made a VM"
    );
}

#[test]
fn catalogue_daemons_do_not_run_on_the_host() {
    // The packages' maintainer scripts would have started them; setup.sh refused every start.
    // Their copies in the VMs of the tests above run in pid namespaces of their own.
    let programs = [
        "dovecot",
        "named",
        "unbound",
        "dnsmasq",
        "nsd",
        "knotd",
        "pdns_server",
        "pdns_recursor",
        "vsftpd",
        "in.tftpd",
        "smbd",
        "rpcbind",
        "lighttpd",
        "haproxy",
        "squid",
        "varnishd",
        "tinyproxy",
        "privoxy",
        "apt-cacher-ng",
        "beam.smp",
        "mosquitto",
        "beanstalkd",
        "slapd",
        "cupsd",
        "php-fpm8.2",
        "etcd",
        "snmpd",
        "spamd",
        "prometheus-node",
        "munin-node",
        "nmbd",
    ];
    let own = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let on_host: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| std::fs::read_link(e.path().join("ns/pid")).is_ok_and(|ns| ns == own))
        .filter_map(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            let comm = comm.trim();
            programs
                .iter()
                .any(|p| comm.starts_with(p))
                .then(|| format!("{} ({comm})", e.file_name().to_string_lossy()))
        })
        .collect();
    assert!(on_host.is_empty(), "running on the host: {on_host:?}");
}

#[test]
fn catalogue_a_start_retried_without_a_start_limit_answers_failed() {
    // pdns@NAME.service without its configuration: Restart=on-failure with
    // StartLimitInterval=0 retries the failed start for ever; the start that asked for it
    // must still end, failed, as `systemctl start` does.
    let feather = Feather::new("cat-no-limit");
    vm(&feather, "loop");
    write_unit(
        &feather,
        "loop",
        "retry.service",
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nType=notify\n\
         ExecStart=/bin/sh -c 'echo no backend; exit 99'\nRestart=on-failure\nRestartSec=100ms\n",
    );
    let started = Instant::now();
    let e = feather.fails(&["service", "start", "loop", "retry"]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the start ended"
    );
    assert!(
        e.contains("retry.service failed: main process exited with status 99"),
        "{e}"
    );
    // It goes on trying, as under systemd, and is shown so.
    feather.eventually("retry.service is restarted", || {
        service(&services(&feather, "loop"), "retry.service")["restarts"]
            .as_u64()
            .is_some_and(|n| n >= 2)
    });
    let retry = service(&services(&feather, "loop"), "retry.service").clone();
    assert_eq!(retry["state"], "activating", "{retry}");
    assert_eq!(retry["start_failing"], true, "{retry}");
    feather.ok(&["service", "stop", "loop", "retry"]);
    let retry = service(&services(&feather, "loop"), "retry.service").clone();
    assert_eq!(
        (retry["state"].as_str(), retry["start_failing"].as_bool()),
        (Some("inactive"), Some(false)),
        "{retry}"
    );
}
