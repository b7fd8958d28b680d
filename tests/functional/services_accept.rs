//! `Accept=yes` socket units: the manager accepts each connection itself and starts one
//! instance of the socket's template service for it (`echo@0-127.0.0.1:7777-….service`), with
//! the connection as descriptor 3 (and as stdin/stdout with `StandardInput=socket`, inetd
//! style); finished instances are forgotten, the socket says how many it accepted.

use std::io::Read;
use std::process::Stdio;

use super::services::{service, services, vm, write_unit};
use crate::support::Feather;

#[test]
fn an_accepting_socket_starts_one_service_instance_per_connection() {
    let feather = Feather::new("svc-accept");
    vm(&feather, "acc");
    write_unit(
        &feather,
        "acc",
        "echo.socket",
        "[Socket]\nListenStream=127.0.0.1:7777\nAccept=yes\n",
    );
    write_unit(
        &feather,
        "acc",
        "echo@.service",
        "[Service]\nExecStart=/bin/sh -c 'echo \"instance %i $$LISTEN_FDS $$LISTEN_FDNAMES\"; exec cat'\nStandardInput=socket\n",
    );
    feather.ok(&["service", "start", "acc", "echo.socket"]);
    assert_eq!(
        service(&services(&feather, "acc"), "echo.socket")["sub"],
        "listening"
    );
    // Two connections held open at once: two instances run.
    let mut client = feather
        .command()
        .args([
            "exec",
            "acc",
            "--",
            "bash",
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/7777; exec 4<>/dev/tcp/127.0.0.1/7777; \
             read -t 5 a <&3; read -t 5 b <&4; echo ping >&3; read -t 5 c <&3; \
             echo \"$a\"; echo \"$b\"; echo \"$c\"; sleep 2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    feather.eventually("two instances run", || {
        services(&feather, "acc")
            .iter()
            .filter(|s| s["name"].as_str().unwrap().starts_with("echo@") && s["state"] == "active")
            .count()
            == 2
    });
    let list = services(&feather, "acc");
    let instances: Vec<_> = list
        .iter()
        .filter(|s| s["name"].as_str().unwrap().starts_with("echo@"))
        .collect();
    for instance in &instances {
        let name = instance["name"].as_str().unwrap();
        assert!(
            name.starts_with("echo@0-127.0.0.1:7777-127.0.0.1:")
                || name.starts_with("echo@1-127.0.0.1:7777-127.0.0.1:"),
            "{name}"
        );
        assert_eq!(instance["pulled_by"], "echo.socket (accepted a connection)");
    }
    let mut output = String::new();
    client
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    assert!(client.wait().unwrap().success());
    let lines: Vec<&str> = output.lines().collect();
    // Each instance got its own connection as descriptor 3 (LISTEN_FDS=1, named
    // "connection") and as stdin/stdout; %i is the instance; cat echoes what it reads.
    assert_eq!(lines.len(), 3, "{output}");
    for (line, number) in lines[..2].iter().zip(["0", "1"]) {
        assert!(
            line.starts_with(&format!("instance {number}-127.0.0.1:7777-127.0.0.1:"))
                && line.ends_with(" 1 connection"),
            "{output}"
        );
    }
    assert_eq!(lines[2], "ping");
    // Once the connections close, the instances end and are no longer listed.
    feather.eventually("the instances are collected", || {
        !services(&feather, "acc")
            .iter()
            .any(|s| s["name"].as_str().unwrap().starts_with("echo@"))
    });
    let socket = service(&services(&feather, "acc"), "echo.socket").clone();
    assert_eq!(socket["status_text"], "2 connections accepted", "{socket}");
    let table = feather.ok(&["service", "ls", "acc"]);
    assert!(table.contains("2 connections accepted"), "{table}");

    // A unix socket: the instance is named by the peer's pid and uid.
    write_unit(
        &feather,
        "acc",
        "uecho.socket",
        "[Socket]\nListenStream=/run/uecho.sock\nAccept=yes\n",
    );
    write_unit(
        &feather,
        "acc",
        "uecho@.service",
        "[Service]\nExecStart=/bin/echo %i\nStandardOutput=socket\n",
    );
    feather.ok(&["service", "start", "acc", "uecho.socket"]);
    let answer = feather.sh(
        "acc",
        "python3 -c 'import os,socket; s=socket.socket(socket.AF_UNIX); s.connect(\"/run/uecho.sock\"); print(os.getpid(), s.makefile().readline().strip())'",
    );
    let (pid, instance) = answer.trim().split_once(' ').unwrap();
    assert_eq!(instance, format!("0-{pid}-0"), "{answer}");
}

#[test]
fn telnetd_runs_once_per_connection_from_an_accepting_socket() {
    let feather = Feather::new("svc-accept-telnet");
    vm(&feather, "tn");
    // The systemd way of inetd's "telnet stream tcp nowait root /usr/sbin/telnetd".
    write_unit(
        &feather,
        "tn",
        "telnet.socket",
        "[Socket]\nListenStream=23\nAccept=yes\n",
    );
    write_unit(
        &feather,
        "tn",
        "telnet@.service",
        "[Service]\nExecStart=-/usr/sbin/telnetd\nStandardInput=socket\n",
    );
    feather.ok(&["service", "start", "tn", "telnet.socket"]);
    for _ in 0..2 {
        let answer = feather.sh(
            "tn",
            "bash -c 'exec 3<>/dev/tcp/127.0.0.1/23 && timeout 2 head -c 3 <&3 | od -An -tx1'",
        );
        // IAC (0xff) and an option negotiation: a telnetd of its own for each connection.
        assert!(answer.trim_start().starts_with("ff f"), "{answer:?}");
    }
    let socket = service(&services(&feather, "tn"), "telnet.socket").clone();
    assert_eq!(socket["status_text"], "2 connections accepted", "{socket}");

    // Accept=yes with datagram sockets, or with Service=, is refused as systemd refuses it.
    write_unit(
        &feather,
        "tn",
        "dgram.socket",
        "[Socket]\nListenDatagram=127.0.0.1:7778\nAccept=yes\n",
    );
    let e = feather.fails(&["service", "start", "tn", "dgram.socket"]);
    assert!(e.contains("Accept=yes takes connections"), "{e}");
    write_unit(
        &feather,
        "tn",
        "named.socket",
        "[Socket]\nListenStream=127.0.0.1:7779\nAccept=yes\nService=telnet@x.service\n",
    );
    let e = feather.fails(&["service", "start", "tn", "named.socket"]);
    assert!(e.contains("Service= is not allowed with it"), "{e}");
}
