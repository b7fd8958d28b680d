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
    let Some(clock) = clock() else {
        return;
    };
    let now = Instant::now();
    let mut started = clock
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let took = now.duration_since(*started);
    *started = now;
    eprintln!("{}", line(name, took));
}

/// One line of the trace, as `bench/bench.py` parses it.
fn line(name: &str, took: std::time::Duration) -> String {
    format!(
        "feather-trace: {name} {:.3} ms",
        took.as_secs_f64() * 1000.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_the_phase_and_its_milliseconds() {
        let took = std::time::Duration::from_micros(1_234);
        assert_eq!(line("create", took), "feather-trace: create 1.234 ms");
    }
}
