//! systemd generators run for a VM: Debian's umbrella units (`postgresql`, `postfix`) start
//! their real daemons through the `.wants/` links their generators write into the VM's /run;
//! a generator that fails or hangs is named, and the others' output is still used.

use std::net::TcpStream;

use crate::services::{assert_running, psql, service, services, vm};
use crate::support::Feather;

/// The first line the VM's SMTP server says on port 25, asked from inside the VM.
fn smtp_greeting(feather: &Feather, vm: &str) -> String {
    feather.ok(&[
        "exec",
        vm,
        "--",
        "bash",
        "-c",
        "for i in $(seq 50); do exec 3<>/dev/tcp/127.0.0.1/25 && break; sleep 0.1; done 2>/dev/null; \
         timeout 2 head -1 <&3; true",
    ])
}

#[test]
fn services_postgresql_and_postfix_umbrella_units_bring_up_their_real_daemons() {
    let feather = Feather::new("svc-generators");
    vm(&feather, "mail");
    // postgresql.service runs /bin/true; postgresql-generator adds the cluster's instance to
    // its .wants/ (in the VM's /run/systemd/generator).
    feather.ok(&["service", "start", "mail", "postgresql"]);
    assert_running(&feather, "mail", "postgresql@15-main.service");
    assert_eq!(psql(&feather, "mail", "select 6 * 7"), "42\n");
    // postfix.service runs /bin/true; postfix-instance-generator adds postfix@-.service.
    feather.ok(&["service", "start", "mail", "postfix"]);
    let list = services(&feather, "mail");
    assert_eq!(service(&list, "postfix.service")["state"], "active");
    assert_eq!(
        service(&list, "postfix@-.service")["pulled_by"]
            .as_str()
            .map(|p| p.contains("postfix.service")),
        Some(true),
        "{list:?}"
    );
    let greeting = smtp_greeting(&feather, "mail");
    assert!(
        greeting.starts_with("220 ") && greeting.contains("Postfix"),
        "no SMTP greeting from the VM's postfix: {greeting:?}"
    );
    assert!(
        TcpStream::connect("127.0.0.1:25").is_err(),
        "an SMTP server answers on the host's loopback"
    );
    let report = feather.sh("mail", "cat /var/log/feather/generators.log");
    for line in [
        "postgresql-generator (/lib/systemd/system-generators/postgresql-generator): ran",
        "postfix-instance-generator (/lib/systemd/system-generators/postfix-instance-generator): ran",
        "systemd-fstab-generator (/lib/systemd/system-generators/systemd-fstab-generator): not run in a VM: ",
        "systemd-sysv-generator (/lib/systemd/system-generators/systemd-sysv-generator): not run in a VM: ",
    ] {
        assert!(report.contains(line), "{line:?} not in {report}");
    }
    // Nothing of it reached the host: no systemd runs here, so it has no generator folders.
    assert!(!std::path::Path::new("/run/systemd/generator/postfix.service.wants").exists());
}

#[test]
fn services_a_failing_or_hanging_generator_is_named_and_the_others_still_run() {
    let feather = Feather::new("svc-bad-generators");
    vm(&feather, "gen");
    // Written into the VM's own layer before its service manager (which runs them) starts.
    let script = r#"set -e
        dir=/etc/systemd/system-generators
        mkdir -p $dir
        printf '#!/bin/sh\necho broken >&2\nexit 3\n' > $dir/aa-fails
        printf '#!/bin/sh\nexec sleep 1000\n' > $dir/bb-hangs
        printf '#!/bin/sh\nprintf "[Service]\\nType=oneshot\\nRemainAfterExit=yes\\nExecStart=/bin/true\\n" > "$3/late-made.service"\n' > $dir/cc-writes
        chmod 755 $dir/*"#;
    feather.sh("gen", script);
    let started = std::time::Instant::now();
    feather.ok(&["service", "start", "gen", "late-made"]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "the generators' time is bounded"
    );
    assert_eq!(
        service(&services(&feather, "gen"), "late-made.service")["state"],
        "active"
    );
    let report = feather.sh("gen", "cat /var/log/feather/generators.log");
    for line in [
        "aa-fails (/etc/systemd/system-generators/aa-fails): failed: exited with status 3",
        "bb-hangs (/etc/systemd/system-generators/bb-hangs): failed: still running after 5.0s, killed",
        "cc-writes (/etc/systemd/system-generators/cc-writes): ran",
        "broken",
    ] {
        assert!(report.contains(line), "{line:?} not in {report}");
    }
    // A unit that is not there names the generators that failed: one may have been meant to
    // make it.
    let missing = feather.fails(&["service", "start", "gen", "never-made"]);
    assert!(
        missing.contains("never-made.service")
            && missing.contains(
                "generators that failed when the VM's service manager started: aa-fails, bb-hangs"
            ),
        "{missing}"
    );
    assert!(
        !feather
            .sh("gen", "ps -eo comm")
            .lines()
            .any(|c| c.trim() == "sleep"),
        "the hanging generator was left running"
    );
}
