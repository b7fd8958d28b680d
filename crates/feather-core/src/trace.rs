//! Phase timings: with `FEATHER_TRACE=phases` in its environment, feather prints to stderr how
//! long each step of a command took, one line per step:
//!
//! ```text
//! feather-trace: create 0.412 ms
//! ```
//!
//! Each line is the time since the previous one (or since [`begin`]), so the lines of one run
//! add up to its whole. `bench/run` collects them to show where the time of a throw-away VM
//! goes without a profiler (docs/benchmarks.md). Without the variable, a phase costs one load
//! of a flag.
//!
//! The VM's init, a process of its own that works beside the keeper's phases, times its steps
//! on a clock of its own ([`init_step`]) and prints them as `feather-trace-init: …` lines, on
//! its stderr (a foreground run's, relayed; a background VM's keeper.log until init detaches).

use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::Instant;

/// The variable, and the value that turns the timings on.
pub const VARIABLE: &str = "FEATHER_TRACE";
pub const PHASES: &str = "phases";

/// When the current phase began; `None` when tracing is off.
fn clock() -> &'static Option<Mutex<Instant>> {
    static CLOCK: OnceLock<Option<Mutex<Instant>>> = OnceLock::new();
    CLOCK.get_or_init(|| {
        let on = std::env::var(VARIABLE).is_ok_and(|value| value == PHASES);
        on.then(|| Mutex::new(Instant::now()))
    })
}

/// Starts the clock: the first phase is timed from here.
pub fn begin() {
    let _ = clock();
}

/// Whether phases are being timed.
pub fn enabled() -> bool {
    clock().is_some()
}

/// Ends the phase `name`: prints its duration and starts the next one.
pub fn phase(name: &str) {
    if let Some(took) = lap(clock()) {
        say(&line(name, took));
    }
}

/// Ends the step `name` of the VM's init, which assembles the VM beside the keeper's phases:
/// prints its duration as `feather-trace-init: <step> <ms> ms` and starts the next step. Init's
/// steps have a clock of their own (started by [`begin_init`]); `bench/bench.py` does not add
/// them to the command's phases, which they overlap ("wait for init to assemble the root" is
/// the keeper's view of most of them).
pub fn init_step(name: &str) {
    if let Some(took) = lap(init_clock()) {
        say(&init_line(name, took));
    }
}

/// Starts init's clock (see [`init_step`]): its first step is timed from here.
pub fn begin_init() {
    if let Some(clock) = init_clock() {
        *clock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Instant::now();
    }
}

/// The time since `clock` last started, which starts it again; `None` when tracing is off.
fn lap(clock: &Option<Mutex<Instant>>) -> Option<std::time::Duration> {
    let now = Instant::now();
    let mut started = clock
        .as_ref()?
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let took = now.duration_since(*started);
    *started = now;
    Some(took)
}

/// Writes `line` and its end to stderr in one `write`: init's lines reach the same terminal
/// (through the keeper's relay of its stderr), and a line written in pieces (`eprintln!` on
/// the unbuffered stderr writes each piece by itself) could be cut by another's, which
/// `bench/bench.py` then cannot read.
fn say(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

fn init_clock() -> &'static Option<Mutex<Instant>> {
    static CLOCK: OnceLock<Option<Mutex<Instant>>> = OnceLock::new();
    CLOCK.get_or_init(|| enabled().then(|| Mutex::new(Instant::now())))
}

/// One line of the trace, as `bench/bench.py` parses it.
fn line(name: &str, took: std::time::Duration) -> String {
    format!("feather-trace: {name} {}", millis(took))
}

/// One line of init's trace, which `bench/bench.py`'s pattern for phases does not match.
fn init_line(name: &str, took: std::time::Duration) -> String {
    format!("feather-trace-init: {name} {}", millis(took))
}

fn millis(took: std::time::Duration) -> String {
    format!("{:.3} ms", took.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_the_phase_and_its_milliseconds() {
        let took = std::time::Duration::from_micros(1_234);
        assert_eq!(line("create", took), "feather-trace: create 1.234 ms");
        assert_eq!(
            init_line("mount /proc", took),
            "feather-trace-init: mount /proc 1.234 ms"
        );
    }
}
