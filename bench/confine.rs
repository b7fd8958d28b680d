//! The start-latency cost of a VM's confinement: compiling and installing the seccomp filter,
//! and Landlock scoping, against the whole `feather run --rm -- true`.
//!
//!     cargo bench -p feather --bench confine
//!
//! Installing a filter cannot be undone, so each sample is taken in a fresh child process
//! (this binary re-run with `--child`), which reports the nanoseconds it measured itself.

use std::process::Command;
use std::time::{Duration, Instant};

const SAMPLES: usize = 30;

fn child(what: &str) -> u128 {
    let start = Instant::now();
    match what {
        "seccomp-compile" => {
            // The default profile: both filters (the main one and clone3's).
            let profile = feather_confine::seccomp::Profile::default();
            std::hint::black_box(feather_confine::seccomp::compile(profile).expect("compiles"));
            std::hint::black_box(
                feather_confine::seccomp::compile_clone3(profile).expect("compiles"),
            );
        }
        // install() compiles too: this is the whole cost a process entering a VM pays.
        "seccomp-install" => feather_confine::seccomp::install(Default::default())
            .expect("filter installs (run as root)"),
        "landlock-scope" => {
            feather_confine::landlock::scope_ipc().expect("scoping");
        }
        other => panic!("unknown child measurement {other}"),
    }
    start.elapsed().as_nanos()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn in_children(what: &str) -> Duration {
    let me = std::env::current_exe().expect("own path");
    let samples = (0..SAMPLES)
        .map(|_| {
            let output = Command::new(&me)
                .args(["--child", what])
                .output()
                .expect("child runs");
            let nanos: u64 = String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .unwrap_or_else(|_| {
                    panic!(
                        "child {what} failed: {}",
                        String::from_utf8_lossy(&output.stderr)
                    )
                });
            Duration::from_nanos(nanos)
        })
        .collect();
    median(samples)
}

fn feather_run() -> Option<Duration> {
    let root = std::env::temp_dir().join(format!("feather-bench-confine-{}", std::process::id()));
    let samples: Vec<Duration> = (0..10)
        .filter_map(|_| {
            let start = Instant::now();
            let status = Command::new(env!("CARGO_BIN_EXE_feather"))
                .arg("--root")
                .arg(&root)
                .args(["run", "--rm", "--", "true"])
                // A cold run each time: the pool (on by default) would mix claims, misses and
                // fills under one label, and leave a VM in a root removed below.
                .env("FEATHER_POOL", "0")
                .status()
                .ok()?;
            status.success().then(|| start.elapsed())
        })
        .collect();
    // Its network's namespaces made ahead are mounts in the root: taken down first, so that
    // the folder goes whole.
    let _ = Command::new(env!("CARGO_BIN_EXE_feather"))
        .arg("--root")
        .arg(&root)
        .args(["network", "down"])
        .env("FEATHER_POOL", "0")
        .status();
    let _ = std::fs::remove_dir_all(&root);
    (!samples.is_empty()).then(|| median(samples))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        println!("{}", child(&args[i + 1]));
        return;
    }
    println!("confinement set-up, median of {SAMPLES} fresh processes");
    println!("  {}", feather_confine::landlock::support());
    for what in ["seccomp-compile", "seccomp-install", "landlock-scope"] {
        println!(
            "  {what:<18} {:>8.1} µs",
            in_children(what).as_secs_f64() * 1e6
        );
    }
    match feather_run() {
        Some(total) => println!(
            "  feather run --rm -- true   {:>8.1} ms (whole run, cold: FEATHER_POOL=0, median of 10)",
            total.as_secs_f64() * 1e3
        ),
        None => println!("  feather run --rm -- true   failed (run as root)"),
    }
}
