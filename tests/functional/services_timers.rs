//! Timer units in a VM: `OnActiveSec=`, `OnUnitActiveSec=`, `OnBootSec=` and `OnCalendar=`
//! start the unit a timer names; `service ls` says when it is next due. Debian's own timers
//! (dpkg-db-backup.timer, `OnCalendar=daily`) are scheduled from the host's files.

use super::services::{service, services, vm, write_unit};
use crate::support::Feather;

/// The lines of a file in the VM (empty if it does not exist).
fn lines(feather: &Feather, vm: &str, path: &str) -> Vec<String> {
    feather
        .sh(vm, &format!("cat {path} 2>/dev/null; true"))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A oneshot service that appends the VM's clock (seconds.nanoseconds) to `file`.
fn recorder(feather: &Feather, vm: &str, name: &str, file: &str) {
    // `%%` is a literal `%` in a unit file (specifiers).
    write_unit(
        feather,
        vm,
        name,
        &format!("[Service]\nType=oneshot\nExecStart=/bin/sh -c 'date +%%s.%%N >> {file}'\n"),
    );
}

#[test]
fn a_timer_starts_its_service_after_it_starts_and_again_after_each_activation() {
    let feather = Feather::new("svc-timer-mono");
    vm(&feather, "tm");
    recorder(&feather, "tm", "tick.service", "/var/tmp/ticks");
    write_unit(
        &feather,
        "tm",
        "tick.timer",
        "[Timer]\nOnActiveSec=1s\nOnUnitActiveSec=1s\n",
    );
    let before: f64 = feather.sh("tm", "date +%s.%N").trim().parse().unwrap();
    feather.ok(&["service", "start", "tm", "tick.timer"]);
    let timer = service(&services(&feather, "tm"), "tick.timer").clone();
    assert_eq!(
        (timer["state"].as_str(), timer["sub"].as_str()),
        (Some("active"), Some("waiting")),
        "{timer}"
    );
    assert!(
        timer["status_text"].as_str().unwrap().starts_with("next: ")
            && timer["status_text"]
                .as_str()
                .unwrap()
                .ends_with(" → tick.service"),
        "{timer}"
    );
    feather.eventually("the timer started its service three times", || {
        lines(&feather, "tm", "/var/tmp/ticks").len() >= 3
    });
    let ticks: Vec<f64> = lines(&feather, "tm", "/var/tmp/ticks")
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    // OnActiveSec=1s: not before a second after the start; OnUnitActiveSec=1s: a second
    // after each start of the service. A tick is the service's clock once its shell runs, a
    // moment after the start it records (a fork and an exec, a tenth of a second and more on a
    // loaded machine): so two ticks are at least a second apart less that moment — and a
    // timer that fired again at once, or counted from the wrong start, is far below it.
    assert!(ticks[0] - before >= 1.0, "{before} {ticks:?}");
    for pair in ticks.windows(2) {
        assert!(pair[1] - pair[0] >= 0.5, "{ticks:?}");
    }
    // Stopped, the timer starts nothing more.
    feather.ok(&["service", "stop", "tm", "tick.timer"]);
    let count = lines(&feather, "tm", "/var/tmp/ticks").len();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(lines(&feather, "tm", "/var/tmp/ticks").len(), count);
    assert_eq!(
        service(&services(&feather, "tm"), "tick.timer")["state"],
        "inactive"
    );
}

#[test]
fn on_boot_sec_in_the_past_triggers_once_and_the_timer_is_then_elapsed() {
    let feather = Feather::new("svc-timer-boot");
    vm(&feather, "tb");
    recorder(&feather, "tb", "boot-job.service", "/var/tmp/boot");
    write_unit(&feather, "tb", "boot-job.timer", "[Timer]\nOnBootSec=1s\n");
    // The VM started more than a second ago: the time is past, the job runs at once, once.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    feather.ok(&["service", "start", "tb", "boot-job.timer"]);
    feather.eventually("the boot job ran", || {
        lines(&feather, "tb", "/var/tmp/boot").len() == 1
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(lines(&feather, "tb", "/var/tmp/boot").len(), 1);
    let timer = service(&services(&feather, "tb"), "boot-job.timer").clone();
    assert_eq!(
        (timer["state"].as_str(), timer["sub"].as_str()),
        (Some("active"), Some("elapsed")),
        "{timer}"
    );
    assert_eq!(
        timer["status_text"],
        "elapsed: nothing left to trigger boot-job.service"
    );
}

#[test]
fn on_calendar_triggers_at_the_wall_clock_time_it_names() {
    let feather = Feather::new("svc-timer-cal");
    vm(&feather, "tc");
    let at = feather.sh("tc", "date -d '+3 seconds' '+%F %H:%M:%S'");
    let (day, time) = at.trim().split_once(' ').unwrap();
    write_unit(
        &feather,
        "tc",
        "cal.service",
        "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'date +%%H:%%M:%%S >> /var/tmp/cal'\n",
    );
    write_unit(
        &feather,
        "tc",
        "cal.timer",
        &format!("[Timer]\nOnCalendar=*-*-* {time}\n"),
    );
    feather.ok(&["service", "start", "tc", "cal.timer"]);
    assert_eq!(
        service(&services(&feather, "tc"), "cal.timer")["status_text"],
        format!("next: {day} {time} → cal.service")
    );
    feather.eventually("the calendar event started the service", || {
        !lines(&feather, "tc", "/var/tmp/cal").is_empty()
    });
    let ran = lines(&feather, "tc", "/var/tmp/cal");
    let seconds = |t: &str| -> i64 {
        let p: Vec<i64> = t.split(':').map(|x| x.parse().unwrap()).collect();
        p[0] * 3600 + p[1] * 60 + p[2]
    };
    // Not before that second (and, on a machine under load, a few seconds after at most).
    let late = seconds(&ran[0]) - seconds(time);
    assert!((0..=5).contains(&late), "due {time}, ran at {ran:?}");
    // Next: the same time the day after.
    let tomorrow = feather.sh("tc", &format!("date -d '{day} + 1 day' +%F"));
    assert_eq!(
        service(&services(&feather, "tc"), "cal.timer")["status_text"],
        format!("next: {} {time} → cal.service", tomorrow.trim())
    );
}

#[test]
fn debians_own_timers_are_scheduled_from_the_hosts_files() {
    let feather = Feather::new("svc-timer-debian");
    vm(&feather, "td");
    // dpkg-db-backup.timer: OnCalendar=daily (and settings feather reads but does not apply).
    // (Read before and after: the test may run across midnight.)
    let tomorrow_before = feather.sh("td", "date -d tomorrow +%F");
    feather.ok(&["service", "start", "td", "dpkg-db-backup.timer"]);
    let tomorrow_after = feather.sh("td", "date -d tomorrow +%F");
    let timer = service(&services(&feather, "td"), "dpkg-db-backup.timer").clone();
    let expected = |day: &str| format!("next: {} 00:00:00 → dpkg-db-backup.service", day.trim());
    assert!(
        timer["status_text"] == expected(&tomorrow_before)
            || timer["status_text"] == expected(&tomorrow_after),
        "{timer}"
    );
    // Settings feather reads but does not apply are listed.
    write_unit(
        &feather,
        "td",
        "lazy.service",
        "[Service]\nType=oneshot\nExecStart=/bin/true\n",
    );
    write_unit(
        &feather,
        "td",
        "lazy.timer",
        "[Timer]\nOnCalendar=weekly\nPersistent=true\nRandomizedDelaySec=1h\n",
    );
    feather.ok(&["service", "start", "td", "lazy.timer"]);
    let status = feather.ok(&["service", "status", "td", "lazy.timer"]);
    assert!(
        status.contains("Timer.Persistent, Timer.RandomizedDelaySec"),
        "{status}"
    );
    // What a timer cannot do is said when it starts.
    write_unit(
        &feather,
        "td",
        "odd.timer",
        "[Timer]\nOnCalendar=*-*~01 12:00\n",
    );
    write_unit(
        &feather,
        "td",
        "odd.service",
        "[Service]\nExecStart=/bin/true\n",
    );
    let e = feather.fails(&["service", "start", "td", "odd.timer"]);
    assert!(
        e.contains("days counted from the month's end (~) are not supported yet"),
        "{e}"
    );
    write_unit(&feather, "td", "idle.timer", "[Timer]\nUnit=odd.service\n");
    let e = feather.fails(&["service", "start", "td", "idle.timer"]);
    assert!(e.contains("nothing would start it"), "{e}");
    write_unit(&feather, "td", "lost.timer", "[Timer]\nOnActiveSec=1h\n");
    let e = feather.fails(&["service", "start", "td", "lost.timer"]);
    assert!(
        e.contains("the unit it triggers cannot be loaded: unit lost.service is not installed"),
        "{e}"
    );
}
