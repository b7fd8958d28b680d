//! Shuttle's channels resolve paths inside the VMs' own views: a VM that plants a symlink to a
//! host path can make the broker (root, on the host) neither bind a socket among the host's
//! files nor connect to a host socket. A policy that does not load opens nothing.

use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use crate::support::{Feather, ScratchBase};

/// A folder on the host, removed on drop.
struct HostDir(PathBuf);

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn symlinks_in_a_vm_lead_the_broker_nowhere_on_the_host() {
    let feather = Feather::new("shuttle-symlinks");
    let base = ScratchBase::new("shuttle-symlinks");
    let host = HostDir(PathBuf::from(format!(
        "/tmp/feather-tests/shuttle-host-{}",
        std::process::id()
    )));
    fs::create_dir_all(&host.0).unwrap();
    let host_service = UnixListener::bind(host.0.join("svc.sock")).unwrap();
    host_service.set_nonblocking(true).unwrap();
    feather.start_over("web", &base, &[]);
    feather.start_over("db", &base, &[]);
    let planted = host.0.display().to_string();
    // web's place for the channel, and db's socket, both lead to the host folder if resolved on
    // the host; web has a folder of that name of its own.
    feather.sh(
        "web",
        &format!("mkdir -p {planted} && ln -s {planted} /run/evil"),
    );
    feather.sh("db", &format!("ln -s {planted} /run/svc"));
    fs::create_dir_all(feather.root.join("policy.d")).unwrap();
    fs::write(
        feather.root.join("policy.d/10.policy"),
        "ipc unix:/run/svc/svc.sock web db allow at=/run/evil/in.sock\n",
    )
    .unwrap();
    feather.eventually("the endpoint appears in web", || {
        feather
            .run(&["exec", "web", "--", "test", "-S", "/run/evil/in.sock"])
            .code
            == 0
    });
    let on_host: Vec<_> = fs::read_dir(&host.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(on_host, ["svc.sock"], "nothing was bound on the host");

    // A client in web (reached from here through web's root) gets its connection closed: db's
    // /run/svc leads to db's own view of the host path, where no one listens.
    let init = feather.inspect("web")["state"]["init_pid"]
        .as_i64()
        .unwrap();
    let endpoint = format!("/proc/{init}/root{planted}/in.sock");
    let mut client = UnixStream::connect(&endpoint).expect("web's endpoint takes connections");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(client.read(&mut byte).unwrap(), 0, "closed, not carried");
    let failed = fs::read_to_string(feather.root.join("audit.log")).unwrap();
    assert!(
        failed.contains("\"outcome\":\"failed\"") && failed.contains("unix:/run/svc/svc.sock"),
        "{failed}"
    );
    assert_eq!(
        host_service.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "the host's socket was never connected to"
    );

    // A policy that does not load allows nothing: the channel closes.
    fs::write(
        feather.root.join("policy.d/10.policy"),
        "ipc unix:/run/svc/svc.sock web db allow at=/run/evil/in.sock\nipc nonsense\n",
    )
    .unwrap();
    feather.eventually("the endpoint leaves web", || {
        feather
            .run(&["exec", "web", "--", "test", "-e", "/run/evil/in.sock"])
            .code
            != 0
    });
}
