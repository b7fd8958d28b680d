//! Services in a VM: the time from `feather service start` to ready, against starting the same
//! commands directly in the same VM (`feather exec VM -- sh -c 'nginx -t … && nginx …'`, which
//! enters the VM the same way), and the service manager's (`feather-svcd`) own resident memory.
//!
//!     cargo bench -p feather --bench services
//!
//! Needs nginx and redis-server installed (`setup.sh`), and root. Everything runs in one VM
//! over `/` in a state root of its own, removed at the end.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const SAMPLES: usize = 15;
const VM: &str = "bench-svc";

struct Root(PathBuf);

impl Root {
    fn feather(&self, args: &[&str]) -> Output {
        let output = Command::new(env!("CARGO_BIN_EXE_feather"))
            .arg("--root")
            .arg(&self.0)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("feather runs");
        assert!(
            output.status.success(),
            "feather {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn timed(&self, args: &[&str]) -> Duration {
        let start = Instant::now();
        self.feather(args);
        start.elapsed()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_feather"))
            .arg("--root")
            .arg(&self.0)
            .args(["rm", "--force", VM])
            .output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Rss and Pss of one process, from /proc/PID/smaps_rollup (Pss divides shared pages, the
/// binary's and libc's, among the processes that map them).
fn memory(pid: i64) -> String {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let kib = |field: &str| {
        rollup
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<f64>().ok())
    };
    match (kib("Rss:"), kib("Pss:"), kib("Anonymous:")) {
        (Some(rss), Some(pss), Some(anon)) => format!(
            "Rss {:.2} MiB, Pss {:.2} MiB, anonymous {:.2} MiB (target: under 2 MiB)",
            rss / 1024.0,
            pss / 1024.0,
            anon / 1024.0
        ),
        _ => format!("? (cannot read /proc/{pid}/smaps_rollup)"),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let root = Root(std::env::temp_dir().join(format!("feather-bench-svc-{}", std::process::id())));
    root.feather(&["create", VM]);
    root.feather(&["start", VM]);
    // The first start also starts the manager; it is measured separately.
    let first = root.timed(&["service", "start", VM, "nginx"]);
    root.feather(&["service", "stop", VM, "nginx"]);

    let mut managed = Vec::new();
    let mut redis = Vec::new();
    let mut direct = Vec::new();
    for _ in 0..SAMPLES {
        managed.push(root.timed(&["service", "start", VM, "nginx"]));
        root.feather(&["service", "stop", VM, "nginx"]);
        redis.push(root.timed(&["service", "start", VM, "redis-server"]));
        root.feather(&["service", "stop", VM, "redis-server"]);
        // Directly: the same commands as the unit's ExecStartPre= and ExecStart=, in the
        // same VM (ready when the daemonizing parent exits, as Type=forking is).
        direct.push(root.timed(&[
            "exec",
            VM,
            "--",
            "sh",
            "-c",
            "/usr/sbin/nginx -t -q -g 'daemon on; master_process on;' && /usr/sbin/nginx -g 'daemon on; master_process on;'",
        ]));
        root.feather(&[
            "exec",
            VM,
            "--",
            "sh",
            "-c",
            "nginx -s quit; while [ -e /run/nginx.pid ]; do sleep 0.01; done",
        ]);
    }
    root.feather(&["service", "start", VM, "nginx", "redis-server"]);
    let processes: serde_json::Value =
        serde_json::from_slice(&root.feather(&["ps", VM, "--json"]).stdout).expect("ps --json");
    let manager = processes
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| {
            p["command"]
                .as_str()
                .and_then(|c| c.split_whitespace().next())
                .is_some_and(|program| program.ends_with("feather-svcd"))
        })
        .and_then(|p| p["host_pid"].as_i64())
        .map_or_else(|| "? (no feather-svcd in `feather ps`)".into(), memory);
    let (managed, direct, redis) = (median(managed), median(direct), median(redis));
    println!("| measurement | median of {SAMPLES} |");
    println!("|---|---|");
    println!(
        "| `service start VM nginx`, first (starts the manager) | {} |",
        ms(first)
    );
    println!(
        "| `service start VM nginx` (to ready: PIDFile written) | {} |",
        ms(managed)
    );
    println!(
        "| `exec VM -- sh -c 'nginx -t … && nginx …'` directly (same commands as the unit) | {} |",
        ms(direct)
    );
    println!(
        "| ratio service / direct | {:.2} |",
        managed.as_secs_f64() / direct.as_secs_f64()
    );
    println!(
        "| `service start VM redis-server` (to READY=1) | {} |",
        ms(redis)
    );
    println!("| manager's memory (smaps_rollup), nginx and redis running | {manager} |");
}
