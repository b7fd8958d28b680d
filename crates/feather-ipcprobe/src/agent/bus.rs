//! The D-Bus cells of the client: the system bus at its well-known paths, and the session bus
//! the host's environment names.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixStream;

use super::shared::{io_errno, reached, Published};
use crate::matrix::{Kind, Outcome};

/// The session bus named by the host's DBUS_SESSION_BUS_ADDRESS, if it had one.
pub(super) fn dbus_session(p: &Published) -> Outcome {
    let Some(address) = &p.dbus_session else {
        return Outcome::new(
            Kind::NotApplicable,
            "no session bus (DBUS_SESSION_BUS_ADDRESS unset on the host)",
        );
    };
    let target = address.split(',').next().unwrap_or_default();
    let connected = if let Some(path) = target.strip_prefix("unix:path=") {
        UnixStream::connect(path)
    } else if let Some(name) = target.strip_prefix("unix:abstract=") {
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| UnixStream::connect_addr(&a))
    } else {
        return Outcome::new(
            Kind::NotApplicable,
            format!("session bus address {address} is not a unix socket"),
        );
    };
    match connected {
        Ok(_) => reached(format!("connected to the host's session bus {target}")),
        Err(e) => Outcome::from_errno(&format!("connect {target}"), io_errno(&e)),
    }
}

pub(super) fn dbus(p: &Published) -> Outcome {
    let mut outcome = Outcome::new(Kind::Invisible, "");
    for path in [
        "/run/dbus/system_bus_socket",
        "/var/run/dbus/system_bus_socket",
    ] {
        outcome = match UnixStream::connect(path) {
            Ok(_) => return reached(format!("connected to {path}")),
            Err(e) => Outcome::from_errno(&format!("connect {path}"), io_errno(&e)),
        };
    }
    if !p.dbus_system {
        outcome = Outcome::new(
            Kind::NotApplicable,
            format!("no system bus runs on the host ({})", outcome.detail),
        );
    }
    outcome
}
