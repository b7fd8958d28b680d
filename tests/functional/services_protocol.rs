//! What `feather service` decides from the manager's typed answers: a restart starts a unit the
//! manager never started (the `NotStarted` refusal of its stop is expected), and a reload whose
//! `ExecReload=` failed is reported as failed (from the answer's `reload_failed`) while the
//! unit keeps running.

use crate::services::{service, services, vm, write_unit};
use crate::support::Feather;

#[test]
fn restart_starts_a_unit_never_started_and_a_failed_reload_is_reported() {
    let feather = Feather::new("svc-protocol");
    vm(&feather, "proto");
    write_unit(
        &feather,
        "proto",
        "sleeper.service",
        "[Service]\nExecStart=/bin/sleep infinity\nExecReload=/bin/false\n",
    );
    write_unit(
        &feather,
        "proto",
        "latecomer.service",
        "[Service]\nExecStart=/bin/sleep infinity\n",
    );
    feather.ok(&["service", "start", "proto", "sleeper"]);

    // The manager runs, but never started latecomer: its stop is refused as NotStarted, which
    // a restart takes as "simply start it".
    feather.ok(&["service", "restart", "proto", "latecomer"]);
    let list = services(&feather, "proto");
    assert_eq!(service(&list, "latecomer.service")["state"], "active");

    // A stop of it before would have been refused with that very variant's message.
    let e = feather.fails(&["service", "stop", "proto", "stranger.service"]);
    assert!(
        e.contains("stranger.service was not started in this VM"),
        "{e}"
    );

    // ExecReload=/bin/false: the reload fails, the command says so, the service runs on.
    let e = feather.fails(&["service", "reload", "proto", "sleeper"]);
    assert!(
        e.contains("sleeper.service failed") && e.contains("ExecReload /bin/false"),
        "{e}"
    );
    let list = services(&feather, "proto");
    let sleeper = service(&list, "sleeper.service");
    assert_eq!(sleeper["state"], "active", "{sleeper}");
}
