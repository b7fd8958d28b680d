//! A migration's peer gone dark without a reset (its host down, its link cut, a firewall that
//! drops). Without more, a read waiting on an idle connection (the sender waiting for the
//! receiver's answer) ends only at the conversation's 10 min read timeout, and the page stream
//! after its handshake has no timeout at all.
//!
//! Before the release the VM runs on at the sender whatever happens, so giving up on a silent
//! peer costs nothing: every connection sends keepalive probes once idle and is given up when
//! [`PROBES`] go unanswered, [`SILENT_FOR`] after the peer's last word. Only silence is
//! judged: a receiver that stops reading (its disk stalled) still answers probes, so it is
//! waited for, and data a dark peer leaves unacknowledged is retried for the kernel's own
//! limit (`net.ipv4.tcp_retries2`, about 15 min).
//!
//! After the release only the receiver can run the VM, and waiting is the one outcome that can
//! save it: an outage of a minute (a switch reconverging, a VPN rekeying) must not cost it. So
//! at the release a connection is given [`AFTER_RELEASE`] (`TCP_USER_TIMEOUT`, which also
//! governs when keepalive gives up), and the page stream, which carries pages only after the
//! release, has it from the start.

use std::os::fd::AsFd;
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};

/// Idle time before the first keepalive probe, the time between probes, and how many go
/// unanswered before the connection is given up.
const PROBE_AFTER: u32 = 10;
const PROBE_EVERY: u32 = 5;
const PROBES: u32 = 4;

/// How long a peer may stay silent on an idle connection, before the release, before the
/// connection is given up: 10 + 4 × 5 s.
pub const SILENT_FOR: Duration = Duration::from_secs((PROBE_AFTER + PROBES * PROBE_EVERY) as u64);

/// How long a connection waits out its peer's silence after the release: the kernel's own
/// limit for data left unacknowledged.
pub const AFTER_RELEASE: Duration = Duration::from_secs(15 * 60);

/// Sets keepalive on the TCP socket `socket`, and no `TCP_USER_TIMEOUT` (the kernel's own
/// limits), for the time before the release ([module doc](self)).
pub fn give_up_on_a_silent_peer(socket: &impl AsFd) -> std::io::Result<()> {
    setsockopt(socket, sockopt::KeepAlive, &true)?;
    setsockopt(socket, sockopt::TcpKeepIdle, &PROBE_AFTER)?;
    setsockopt(socket, sockopt::TcpKeepInterval, &PROBE_EVERY)?;
    setsockopt(socket, sockopt::TcpKeepCount, &PROBES)?;
    setsockopt(socket, sockopt::TcpUserTimeout, &0)?;
    Ok(())
}

/// Makes `socket` wait out its peer's silence for [`AFTER_RELEASE`]: keepalive's probes go on
/// (a peer that rebooted answers them with a reset), but neither they nor data left
/// unacknowledged end the connection sooner ([module doc](self)).
pub fn wait_out_an_outage(socket: &impl AsFd) -> std::io::Result<()> {
    let patience_ms = u32::try_from(AFTER_RELEASE.as_millis()).unwrap_or(u32::MAX);
    setsockopt(socket, sockopt::TcpUserTimeout, &patience_ms)?;
    Ok(())
}

/// Sets both ([`give_up_on_a_silent_peer`], then [`wait_out_an_outage`]) on a page stream,
/// which carries pages only after the release.
pub fn for_the_page_stream(socket: &impl AsFd) -> std::io::Result<()> {
    give_up_on_a_silent_peer(socket)?;
    wait_out_an_outage(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::getsockopt;
    use std::net::{TcpListener, TcpStream};

    fn connected() -> (TcpListener, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener, stream)
    }

    #[test]
    fn before_the_release_only_silence_is_given_up_on() {
        let (_listener, stream) = connected();
        give_up_on_a_silent_peer(&stream).unwrap();
        assert!(getsockopt(&stream, sockopt::KeepAlive).unwrap());
        // No TCP_USER_TIMEOUT: a peer that answers probes but reads nothing is waited for.
        assert_eq!(getsockopt(&stream, sockopt::TcpUserTimeout).unwrap(), 0);
        let idle = getsockopt(&stream, sockopt::TcpKeepIdle).unwrap();
        let every = getsockopt(&stream, sockopt::TcpKeepInterval).unwrap();
        let count = getsockopt(&stream, sockopt::TcpKeepCount).unwrap();
        assert_eq!(
            Duration::from_secs(u64::from(idle + every * count)),
            SILENT_FOR
        );
    }

    #[test]
    fn after_the_release_an_outage_is_waited_out() {
        let (_listener, stream) = connected();
        for_the_page_stream(&stream).unwrap();
        assert!(getsockopt(&stream, sockopt::KeepAlive).unwrap());
        assert_eq!(
            getsockopt(&stream, sockopt::TcpUserTimeout).unwrap(),
            AFTER_RELEASE.as_millis() as u32
        );
    }
}
