//! Post-copy's page stream between the hosts, relayed by feather on both ends.
//!
//! ```text
//! sender host                                          receiver host
//! CRIU's page server ◀── keeper's netns ── feather migrate ◀═ TCP ═ feather serve ◀── criu lazy-pages
//!  (lazy dump, in the   127.0.0.1:<port>   relay: checks the      tunnel: sends     (127.0.0.1:<port>)
//!   keeper's criu)                         receiver's tag first   the tag first
//! ```
//!
//! Why relays: CRIU's page server of a lazy dump listens on every address of the keeper's
//! network namespace, which need not be the one `feather migrate` reached the receiver from,
//! and it serves whoever connects first, unauthenticated: the VM's memory. The sender's relay
//! is the only thing that connects to it (at once, once the dump is written), and it passes on
//! only a connection that opens with the receiver's HMAC tag, keyed by the migration's token
//! over the receiver's nonce of this transfer; anyone else is dropped without a byte of memory.
//! The receiver's tunnel gives its `criu lazy-pages` a local address to connect to.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// How long the relay waits for the receiver's daemon to connect and prove itself.
const PATIENCE: Duration = Duration::from_secs(120);

/// The sender's end: a listener the receiver connects to, bound before the offer names its
/// port.
pub struct Relay {
    listener: TcpListener,
}

impl Relay {
    /// Listens on `at` (this host's address towards the receiver, any free port).
    pub fn bind(at: std::net::IpAddr) -> std::io::Result<Relay> {
        Ok(Relay {
            listener: TcpListener::bind((at, 0))?,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// In a thread: waits for a connection that opens with `tag`, then joins it to
    /// `page_server` (a connection to CRIU's page server) both ways until either end closes.
    /// Connections that do not prove themselves are dropped; the listener closes once one has.
    pub fn serve(self, tag: [u8; 32], page_server: TcpStream) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + PATIENCE;
            let _ = self.listener.set_nonblocking(true);
            while std::time::Instant::now() < deadline {
                match self.listener.accept() {
                    Ok((mut peer, _)) => {
                        let _ = peer.set_nonblocking(false);
                        let _ = peer.set_read_timeout(Some(Duration::from_secs(10)));
                        let mut proof = [0u8; 32];
                        if peer.read_exact(&mut proof).is_ok() && proof == tag {
                            let _ = peer.set_read_timeout(None);
                            join(peer, page_server);
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
            // Nobody proved themselves: CRIU fails the transfer and lets the VM go on at the
            // sender.
            abort(&page_server);
        })
    }
}

/// The receiver's end: listens on 127.0.0.1 for `criu lazy-pages`, and joins its connection to
/// one to the sender's relay at `sender`, opened with `tag`. Returns the local port.
pub fn tunnel(sender: SocketAddr, tag: [u8; 32]) -> std::io::Result<u16> {
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    let port = listener.local_addr()?.port();
    let mut upstream = TcpStream::connect_timeout(&sender, Duration::from_secs(10))?;
    upstream.write_all(&tag)?;
    std::thread::spawn(move || {
        if let Ok((daemon, _)) = listener.accept() {
            drop(listener);
            pass_on(daemon, upstream);
        }
    });
    Ok(port)
}

/// Copies bytes both ways between the receiver's daemon and the sender's relay, until either
/// ends; an end is passed on as it came (the sender's relay tells a finished transfer from a
/// broken one).
fn pass_on(daemon: TcpStream, sender: TcpStream) {
    let _ = daemon.set_nodelay(true);
    let _ = sender.set_nodelay(true);
    let (Ok(mut daemon_back), Ok(mut sender_back)) = (daemon.try_clone(), sender.try_clone())
    else {
        return;
    };
    let forth = std::thread::spawn(move || {
        let (mut daemon, mut sender) = (daemon, sender);
        let _ = std::io::copy(&mut daemon, &mut sender);
        let _ = sender.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut sender_back, &mut daemon_back);
    let _ = daemon_back.shutdown(Shutdown::Write);
    let _ = forth.join();
}

/// CRIU's page server protocol (criu/page-xfer.c): every request is a `page_server_iov`,
/// in CRIU 4.1 `{ u32 cmd; u32 nr_pages; u64 vaddr; u64 dst_id; }`, 24 bytes (as seen on the
/// wire between CRIU 4.1.1's `lazy-pages` and its page server), and a lazy-pages daemon that
/// has every page ends with `PS_IOV_CLOSE`.
const REQUEST_LEN: usize = 24;
const PS_IOV_CLOSE: u32 = 0x1023;
const PS_IOV_FORCE_CLOSE: u32 = 0x1024;
const PS_CMD_MASK: u32 = 0xffff;
/// A command CRIU does not know: it fails the transfer ("Unknown command").
const UNKNOWN_COMMAND: u32 = 0xffff;

/// Makes CRIU's page server fail its transfer, so that CRIU lets the dumped processes go on
/// (a connection that just closes between requests counts as a finished transfer to CRIU 4.1,
/// which then ends them: their memory would be lost).
pub fn abort(page_server: &TcpStream) {
    let mut request = [0u8; REQUEST_LEN];
    request[..4].copy_from_slice(&UNKNOWN_COMMAND.to_le_bytes());
    let _ = (&*page_server).write_all(&request);
    let _ = page_server.shutdown(Shutdown::Both);
}

/// Joins the receiver's connection `receiver` and CRIU's `page_server` both ways until either
/// ends. The requests from the receiver are passed on whole; if its side ends without
/// `PS_IOV_CLOSE` (the receiver died, the network broke), CRIU is made to fail the transfer
/// ([`abort`]) rather than see a clean end it would take for success.
fn join(receiver: TcpStream, page_server: TcpStream) {
    let _ = receiver.set_nodelay(true);
    let _ = page_server.set_nodelay(true);
    let (Ok(mut pages_back), Ok(mut to_receiver)) = (page_server.try_clone(), receiver.try_clone())
    else {
        abort(&page_server);
        return;
    };
    let requests = std::thread::spawn(move || {
        let mut receiver = receiver;
        let mut page_server = page_server;
        let mut request = [0u8; REQUEST_LEN];
        let mut closed = false;
        while receiver.read_exact(&mut request).is_ok() {
            let command = u32::from_le_bytes([request[0], request[1], request[2], request[3]]);
            closed = matches!(command & PS_CMD_MASK, PS_IOV_CLOSE | PS_IOV_FORCE_CLOSE);
            if page_server.write_all(&request).is_err() {
                break;
            }
        }
        if closed {
            let _ = page_server.shutdown(Shutdown::Write);
        } else {
            abort(&page_server);
        }
        let _ = receiver.shutdown(Shutdown::Read);
    });
    let _ = std::io::copy(&mut pages_back, &mut to_receiver);
    let _ = to_receiver.shutdown(Shutdown::Write);
    let _ = requests.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page server's side: what the relay passed on, once it ended.
    fn page_server() -> (TcpStream, std::thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let received = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut bytes = Vec::new();
            let _ = stream.read_to_end(&mut bytes);
            bytes
        });
        (TcpStream::connect(address).unwrap(), received)
    }

    fn request(command: u32) -> [u8; REQUEST_LEN] {
        let mut request = [0u8; REQUEST_LEN];
        request[..4].copy_from_slice(&command.to_le_bytes());
        request
    }

    /// Relays what `send` writes after `proof`, and returns what the page server got.
    fn relayed(proof: [u8; 32], send: &[u8]) -> Vec<u8> {
        let (to_criu, received) = page_server();
        let relay = Relay::bind("127.0.0.1".parse().unwrap()).unwrap();
        let at = relay.local_addr().unwrap();
        let relaying = relay.serve([7; 32], to_criu);
        let mut receiver = TcpStream::connect(at).unwrap();
        let _ = receiver.write_all(&proof);
        let _ = receiver.write_all(send);
        let _ = receiver.shutdown(Shutdown::Write);
        let bytes = received.join().unwrap();
        relaying.join().unwrap();
        bytes
    }

    #[test]
    fn a_finished_transfer_ends_cleanly() {
        let mut sent = request(7).to_vec();
        sent.extend(request(PS_IOV_CLOSE));
        assert_eq!(relayed([7; 32], &sent), sent);
    }

    #[test]
    fn a_stream_that_breaks_before_its_close_makes_criu_fail() {
        let sent = request(7);
        let got = relayed([7; 32], &sent[..]);
        assert_eq!(&got[..REQUEST_LEN], &sent[..]);
        assert_eq!(&got[REQUEST_LEN..], &request(UNKNOWN_COMMAND)[..]);
        // A request cut in the middle is not passed on: CRIU sees only the failing command.
        let got = relayed([7; 32], &sent[..10]);
        assert_eq!(got, request(UNKNOWN_COMMAND).to_vec());
    }

    #[test]
    fn a_connection_without_the_receiver_s_tag_gets_nothing_through() {
        let (to_criu, received) = page_server();
        let relay = Relay::bind("127.0.0.1".parse().unwrap()).unwrap();
        let at = relay.local_addr().unwrap();
        let relaying = relay.serve([7; 32], to_criu);
        let mut stranger = TcpStream::connect(at).unwrap();
        stranger.write_all(&[8; 32]).unwrap();
        stranger.write_all(&request(7)).unwrap();
        let mut answer = Vec::new();
        let _ = stranger.read_to_end(&mut answer);
        assert!(answer.is_empty(), "no memory for a stranger");
        // The receiver, with its tag, still gets through.
        let mut receiver = TcpStream::connect(at).unwrap();
        receiver.write_all(&[7; 32]).unwrap();
        receiver.write_all(&request(PS_IOV_CLOSE)).unwrap();
        receiver.shutdown(Shutdown::Write).unwrap();
        assert_eq!(received.join().unwrap(), request(PS_IOV_CLOSE).to_vec());
        relaying.join().unwrap();
    }
}
