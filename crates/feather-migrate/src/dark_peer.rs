//! A migration's peer gone dark without a reset (its host down, its link cut, a firewall that
//! drops): without more, data sent to it is retried for about 15 minutes, and a read waiting on
//! an idle connection (the sender waiting for the receiver's answer, the page relay waiting for
//! a request) never ends — `feather migrate` hung for ever, and with it the VM's fate. Every
//! migration connection, on both hosts, is given up once the peer has left what was sent
//! unacknowledged, or has not answered keepalive probes, for [`DARK_FOR`]: its reads and
//! writes fail (ETIMEDOUT) and the migration ends as it does when the peer dies.

use std::os::fd::AsFd;
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};

/// How long a peer may stay silent before its connection is given up.
pub const DARK_FOR: Duration = Duration::from_secs(30);

/// Idle time before the first keepalive probe, the time between probes, and how many go
/// unanswered: 10 + 4 × 5 s, so that a connection idle when its peer went dark ends by
/// [`DARK_FOR`] too.
const PROBE_AFTER: u32 = 10;
const PROBE_EVERY: u32 = 5;
const PROBES: u32 = 4;

/// Sets keepalive and `TCP_USER_TIMEOUT` on the TCP socket `socket` ([module doc](self)).
pub fn give_up_on_a_dark_peer(socket: &impl AsFd) -> std::io::Result<()> {
    setsockopt(socket, sockopt::KeepAlive, &true)?;
    setsockopt(socket, sockopt::TcpKeepIdle, &PROBE_AFTER)?;
    setsockopt(socket, sockopt::TcpKeepInterval, &PROBE_EVERY)?;
    setsockopt(socket, sockopt::TcpKeepCount, &PROBES)?;
    let dark_ms = u32::try_from(DARK_FOR.as_millis()).unwrap_or(u32::MAX);
    setsockopt(socket, sockopt::TcpUserTimeout, &dark_ms)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::getsockopt;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_connection_is_given_up_once_its_peer_is_silent_for_the_bound() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        give_up_on_a_dark_peer(&stream).unwrap();
        assert!(getsockopt(&stream, sockopt::KeepAlive).unwrap());
        assert_eq!(
            getsockopt(&stream, sockopt::TcpUserTimeout).unwrap(),
            DARK_FOR.as_millis() as u32
        );
        let idle = getsockopt(&stream, sockopt::TcpKeepIdle).unwrap();
        let every = getsockopt(&stream, sockopt::TcpKeepInterval).unwrap();
        let count = getsockopt(&stream, sockopt::TcpKeepCount).unwrap();
        assert!(Duration::from_secs(u64::from(idle + every * count)) <= DARK_FOR);
    }
}
