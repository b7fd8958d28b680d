//! Why VM processes are not scoped with Landlock (docs/confinement.md): a Landlock domain is
//! inherited, never joined, so two processes that each scope themselves — as init's services
//! and a `feather exec` would — can no longer signal each other or reach each other's abstract
//! sockets. These tests pin that kernel behaviour down, so the design is revisited if it changes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use feather_ipcprobe::{Kind, Outcome};

use crate::support::Feather;

struct Scoped(Child);

impl Drop for Scoped {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn try_from(pid: u32, name: &str, scoped: bool) -> Vec<Outcome> {
    let mut command = Command::new(Feather::bin());
    command.args(["__ipcprobe", "landlock-try", &pid.to_string(), name]);
    if !scoped {
        command.arg("--unscoped");
    }
    let output = command.output().expect("probe runs");
    serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim())
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)))
}

#[test]
fn sibling_landlock_domains_cannot_signal_or_reach_abstract_sockets() {
    if feather_confine::landlock::support() == feather_confine::landlock::Support::Missing
        || matches!(
            feather_confine::landlock::support(),
            feather_confine::landlock::Support::NoScoping { .. }
        )
    {
        eprintln!("skipped: {}", feather_confine::landlock::support());
        return;
    }
    let name = format!("fprobe-landlock-{}", std::process::id());
    let mut child = Command::new(Feather::bin())
        .args(["__ipcprobe", "landlock-listen", &name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("probe runs");
    let stdout = child.stdout.take().unwrap();
    let scoped = Scoped(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        scoped.0.id().to_string(),
        "the scoped listener started"
    );

    let sibling = try_from(scoped.0.id(), &name, true);
    assert_eq!(
        sibling[0].kind,
        Kind::Denied,
        "a sibling domain may not signal: {:?}",
        sibling[0]
    );
    assert_eq!(
        sibling[1].kind,
        Kind::Denied,
        "nor reach its abstract socket: {:?}",
        sibling[1]
    );

    let outside = try_from(scoped.0.id(), &name, false);
    assert_eq!(
        outside[0].kind,
        Kind::Reached,
        "an unscoped process may signal: {:?}",
        outside[0]
    );
    assert_eq!(
        outside[1].kind,
        Kind::Reached,
        "and connect: {:?}",
        outside[1]
    );
}
