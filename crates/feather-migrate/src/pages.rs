//! Post-copy's page stream between the hosts, relayed by feather on both ends over the
//! migration channel ([`crate::channel`]: TLS 1.3 and both ends' proof of the token).
//!
//! ```text
//! sender host                                          receiver host
//! CRIU's page server ◀── socket pair ── feather migrate ◀═ TLS ═ feather serve ◀── criu lazy-pages
//!  (lazy dump, in the   (made by the    relay: TLS client,      tunnel: TLS       (its end of a
//!   keeper's criu)       keeper)        pins the receiver's     server, proves     socket pair
//!                                       certificate, proves     the token          made by serve)
//!                                       the token
//! ```
//!
//! Why relays: CRIU's page server speaks to whoever reaches it, unauthenticated and in plain
//! text: the VM's memory. It listens nowhere here: the keeper gives its CRIU one end of a
//! socket pair as the page server's connection (`--ps-socket`) and `feather migrate` the
//! other (see `crate::criu::Dump::lazy`), so the relay is the only thing that reaches it, and
//! it passes on only a connection from the receiver of this migration: the TCP
//! connection comes from the receiver, but TLS runs with the receiver as its server, so the
//! relay checks that it presents the very certificate the transfer stream's receiver presented
//! and that it proves the token over this session; anyone else is dropped without a byte of
//! memory. The receiver's side listens nowhere either: its tunnel joins the channel to one end
//! of a socket pair and `criu lazy-pages` gets the other (`--ps-socket`), so no local process
//! can connect in the daemon's place. Pages and requests cross the network only inside TLS.
//!
//! The sender's relay also holds back the end of the transfer: the receiver's daemon ends it
//! (`PS_IOV_FORCE_CLOSE`) as soon as it has every page, which for a small VM comes before the
//! receiver has answered the release (it may yet refuse it), and CRIU takes that end for a
//! finished migration and ends the VM's processes at the sender. So the end goes on to CRIU
//! only once the sender has let the VM go ([`Relaying::let_go`]); if the receiver does not run
//! it ([`Relaying::refuse`]), CRIU is made to fail instead and lets the processes go on.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::channel::{AsyncClientStream, ClientSide, ServerSide};
use crate::error::TransferError;

/// How long the relay waits for the receiver's daemon to connect and prove itself.
const PATIENCE: Duration = Duration::from_secs(120);

/// How much of CRIU's answers (pages) a relay reads at once.
const PAGES_BUFFER: usize = 256 << 10;

/// How long one connection may take for its handshake and proofs.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The sender's end: a listener the receiver connects to, bound before the offer names its
/// port.
pub struct Relay {
    listener: TcpListener,
}

/// The relays' I/O runs on a runtime of their own thread (the rest of feather is blocking).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
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

    /// In a thread: waits for the receiver's connection over `channel` (the receiver's pinned
    /// certificate, the token), then joins it to `page_server` (the connection to CRIU's page
    /// server) both ways until either end closes, holding the receiver's end of the transfer
    /// until the sender decides (see [`Relaying`]). Connections that do not prove themselves
    /// are dropped; the listener closes once one has.
    pub fn serve(self, channel: ClientSide, page_server: UnixStream) -> Relaying {
        let (decision, heard) = tokio::sync::watch::channel(Decision::Pending);
        let served = Arc::new(AtomicU64::new(0));
        let counted = served.clone();
        let thread = std::thread::spawn(move || {
            let Ok(runtime) = runtime() else {
                abort(&page_server);
                return;
            };
            runtime.block_on(async {
                let mut waiting = heard.clone();
                let receiver = tokio::select! {
                    receiver = self.first_proven(&channel) => receiver,
                    () = refused(&mut waiting) => None,
                };
                match receiver {
                    Some(receiver) => join(receiver, page_server, heard, &counted).await,
                    // Nobody proved themselves, or the migration failed meanwhile: CRIU fails
                    // the transfer and lets the VM go on at the sender.
                    None => abort(&page_server),
                }
            })
        });
        Relaying {
            decision,
            thread: Some(thread),
            served,
        }
    }

    /// The first connection that completes the channel within [`PATIENCE`].
    async fn first_proven(self, channel: &ClientSide) -> Option<AsyncClientStream> {
        self.listener.set_nonblocking(true).ok()?;
        let listener = tokio::net::TcpListener::from_std(self.listener).ok()?;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (peer, _) = tokio::time::timeout_at(deadline, listener.accept())
                .await
                .ok()?
                .ok()?;
            let _ = peer.set_nodelay(true);
            if crate::dark_peer::for_the_page_stream(&peer).is_err() {
                continue;
            }
            if let Ok(Ok(stream)) =
                tokio::time::timeout(HANDSHAKE, channel.connect_async(peer)).await
            {
                return Some(stream);
            }
        }
    }
}

/// What the sender decided about the VM, as the relay hears it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    /// Not yet let go: the receiver's end of the transfer waits.
    Pending,
    /// It runs at the receiver, or may: the end goes on to CRIU.
    LetGo,
    /// It stays at the sender: CRIU is made to fail the transfer.
    Refused,
}

/// A relay at work (see [`Relay::serve`]). Until the sender says what became of the VM, the
/// receiver's end of the transfer (`PS_IOV_FORCE_CLOSE`, which its daemon sends once it has
/// every page: for a small VM before the receiver answers the release) is held here, not passed on:
/// CRIU would take it for a finished transfer and end the VM's processes at the sender, even
/// if the receiver then does not run the VM. Dropped undecided, it refuses.
pub struct Relaying {
    decision: tokio::sync::watch::Sender<Decision>,
    thread: Option<std::thread::JoinHandle<()>>,
    served: Arc<AtomicU64>,
}

impl Relaying {
    /// How many bytes CRIU's page server has sent the receiver so far (pages, and a header
    /// for each answer).
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// The VM runs at the receiver (or may: the answer was lost): the receiver's end of the
    /// transfer goes on to CRIU when it comes, and CRIU then ends the processes at the sender.
    pub fn let_go(&self) {
        self.decision.send_replace(Decision::LetGo);
    }

    /// The VM stays at the sender: CRIU's page server is made to fail ([`abort`]) at the next
    /// request boundary, or at once if the receiver's end came or its daemon never connected;
    /// CRIU then lets the processes go on. Does not wait for the relay's thread.
    pub fn refuse(self) {
        self.decision.send_replace(Decision::Refused);
    }

    /// Waits until the relay's thread has ended.
    #[cfg(test)]
    fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Relaying {
    fn drop(&mut self) {
        self.decision.send_if_modified(|decision| {
            let undecided = *decision == Decision::Pending;
            if undecided {
                *decision = Decision::Refused;
            }
            undecided
        });
        // The thread is not waited for: a receiver gone silent could hold its TLS stream.
        drop(self.thread.take());
    }
}

/// The sender's decision, once it is made (a relay whose [`Relaying`] is gone without one
/// refuses).
async fn decided(heard: &mut tokio::sync::watch::Receiver<Decision>) -> Decision {
    match heard.wait_for(|d| *d != Decision::Pending).await {
        Ok(decision) => *decision,
        Err(_) => Decision::Refused,
    }
}

/// Completes once the sender has refused; never, if it let the VM go.
async fn refused(heard: &mut tokio::sync::watch::Receiver<Decision>) {
    if decided(heard).await != Decision::Refused {
        std::future::pending::<()>().await;
    }
}

/// The receiver's end: connects to the sender's relay at `sender` and completes the channel
/// over it (`channel`: this receiver's certificate and the token), then joins it to one end of
/// a socket pair and returns the other, for `criu lazy-pages` (its `--ps-socket`). It listens
/// nowhere: no other process on this host can take the daemon's place and read the VM's memory
/// through the tunnel. The caller closes its copy of the returned end once the daemon has it,
/// so that the daemon's end of the transfer reaches the sender.
pub fn tunnel(sender: SocketAddr, channel: &ServerSide) -> Result<UnixStream, TransferError> {
    let (daemons_end, tunnels_end) = UnixStream::pair().map_err(TransferError::Connect)?;
    tunnels_end
        .set_nonblocking(true)
        .map_err(TransferError::Connect)?;
    let upstream =
        TcpStream::connect_timeout(&sender, HANDSHAKE).map_err(TransferError::Connect)?;
    let _ = upstream.set_nodelay(true);
    crate::dark_peer::for_the_page_stream(&upstream).map_err(TransferError::Connect)?;
    upstream
        .set_nonblocking(true)
        .map_err(TransferError::Connect)?;
    let runtime = runtime().map_err(TransferError::Lost)?;
    let upstream = runtime.block_on(async {
        let upstream = tokio::net::TcpStream::from_std(upstream).map_err(TransferError::Lost)?;
        tokio::time::timeout(HANDSHAKE, channel.accept_async(upstream))
            .await
            .map_err(|_| TransferError::Lost(std::io::ErrorKind::TimedOut.into()))?
    })?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            if let Ok(daemon) = tokio::net::UnixStream::from_std(tunnels_end) {
                pass_on(daemon, upstream).await;
            }
        })
    });
    Ok(daemons_end)
}

/// Copies bytes both ways between the receiver's daemon and the sender's relay, until both
/// directions ended; an end is passed on as it came (the sender's relay tells a finished
/// transfer from a broken one).
async fn pass_on(
    mut daemon: tokio::net::UnixStream,
    mut sender: crate::channel::AsyncServerStream,
) {
    // Pages come in large answers: a large buffer makes full TLS records and fewer calls.
    let _ =
        tokio::io::copy_bidirectional_with_sizes(&mut daemon, &mut sender, 8 << 10, PAGES_BUFFER)
            .await;
}

/// CRIU's page server protocol (criu/page-xfer.c): every request is a `page_server_iov`,
/// in CRIU 4.1 `{ u32 cmd; u32 nr_pages; u64 vaddr; u64 dst_id; }`, 24 bytes (as seen on the
/// wire between CRIU 4.1.1's `lazy-pages` and its page server), and a lazy-pages daemon that
/// has every page ends with `PS_IOV_CLOSE`, or `PS_IOV_FORCE_CLOSE` if it was given its
/// connection (`--ps-socket`, as feather's receiver gives it).
const REQUEST_LEN: usize = 24;
const PS_IOV_CLOSE: u32 = 0x1023;
const PS_IOV_FORCE_CLOSE: u32 = 0x1024;
const PS_CMD_MASK: u32 = 0xffff;
/// A command CRIU does not know: it fails the transfer ("Unknown command").
const UNKNOWN_COMMAND: u32 = 0xffff;

/// Makes CRIU's page server fail its transfer, so that CRIU lets the dumped processes go on
/// (a connection that just closes between requests counts as a finished transfer to CRIU 4.1,
/// which then ends them: their memory would be lost). Never waits: a page server blocked
/// sending pages nobody reads takes no request, and the shutdown fails its send instead
/// (EPIPE); a request cut short before this (its writer killed) joins this one into a
/// request CRIU reads, and leaves a short one before the end of file, an error too.
pub fn abort(page_server: &UnixStream) {
    use nix::sys::socket::{send, MsgFlags};
    use std::os::fd::AsRawFd;
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    let _ = send(page_server.as_raw_fd(), &request(UNKNOWN_COMMAND), flags);
    let _ = page_server.shutdown(Shutdown::Both);
}

/// A request of `command` for no pages.
fn request(command: u32) -> [u8; REQUEST_LEN] {
    let mut request = [0u8; REQUEST_LEN];
    request[..4].copy_from_slice(&command.to_le_bytes());
    request
}

/// Joins the receiver's connection `receiver` and CRIU's `page_server` both ways until either
/// ends. The requests from the receiver are passed on whole, but its close only once
/// the sender has let the VM go (`heard`); if its side ends without one (the receiver died, the
/// network broke, a record was altered), or the sender refuses, CRIU is made to fail the
/// transfer ([`abort`]) rather than see a clean end it would take for success.
async fn join(
    receiver: AsyncClientStream,
    page_server: UnixStream,
    mut heard: tokio::sync::watch::Receiver<Decision>,
    served: &AtomicU64,
) {
    let criu = match page_server
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(page_server.try_clone()?))
    {
        Ok(stream) => stream,
        Err(_) => {
            abort(&page_server);
            return;
        }
    };
    let (mut from_receiver, mut to_receiver) = tokio::io::split(receiver);
    let (mut pages_back, mut to_criu) = criu.into_split();
    let page_server = &page_server;
    let requests = async move {
        let mut asked = [0u8; REQUEST_LEN];
        let mut closed = false;
        loop {
            tokio::select! {
                biased;
                () = refused(&mut heard) => break,
                read = from_receiver.read_exact(&mut asked) => {
                    if read.is_err() {
                        break;
                    }
                    let command = u32::from_le_bytes([asked[0], asked[1], asked[2], asked[3]]);
                    if matches!(command & PS_CMD_MASK, PS_IOV_CLOSE | PS_IOV_FORCE_CLOSE) {
                        // The daemon sends nothing more: it waits for CRIU's answer, which
                        // comes once the end is passed on.
                        closed = decided(&mut heard).await == Decision::LetGo
                            && to_criu.write_all(&asked).await.is_ok();
                        break;
                    }
                    if to_criu.write_all(&asked).await.is_err() {
                        break;
                    }
                }
            }
        }
        if closed {
            let _ = to_criu.shutdown().await;
        } else {
            let _ = to_criu.write_all(&request(UNKNOWN_COMMAND)).await;
            // Both ways: a CRIU blocked sending an answer the receiver no longer reads (it
            // died) reads no request, and the keeper's copy of this end keeps the end of file
            // from it; its send fails instead, and so does the transfer.
            let _ = page_server.shutdown(Shutdown::Both);
        }
    };
    let pages = async move {
        let mut buffer = vec![0u8; PAGES_BUFFER];
        while let Ok(read @ 1..) = pages_back.read(&mut buffer).await {
            // Flushed, each answer: a TLS write returns once the stream took the bytes, and
            // keeps the records the socket had no room for (tokio-rustls); unflushed, the tail
            // of an answer the daemon waits for stayed here while CRIU waited for the next
            // request, and the migration hung for good.
            if to_receiver.write_all(&buffer[..read]).await.is_err()
                || to_receiver.flush().await.is_err()
            {
                break;
            }
            served.fetch_add(read as u64, Ordering::Relaxed);
        }
        let _ = to_receiver.shutdown().await;
    };
    tokio::join!(requests, pages);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::Security;
    use std::io::{Read, Write};

    fn security(token: &str) -> Security {
        Security {
            token: token.into(),
            files: None,
        }
    }

    /// A page server's side: what the relay passed on, once it ended.
    fn page_server() -> (UnixStream, std::thread::JoinHandle<Vec<u8>>) {
        let (relays_end, mut criu_end) = UnixStream::pair().unwrap();
        let received = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = criu_end.read_to_end(&mut bytes);
            bytes
        });
        (relays_end, received)
    }

    /// A relay for a receiver of `server`, and the channel the sender's relay pins to it.
    fn relay_for(server: &ServerSide) -> (Relay, ClientSide) {
        let relay = Relay::bind("127.0.0.1".parse().unwrap()).unwrap();
        let client = ClientSide::new(&security("t"), "127.0.0.1:1").unwrap();
        // The sender pins the certificate its transfer stream saw: take it from a handshake.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let at = listener.local_addr().unwrap();
        let accepting = {
            let server = server.clone();
            std::thread::spawn(move || server.accept(listener.accept().unwrap().0).is_ok())
        };
        let stream = client.connect(TcpStream::connect(at).unwrap()).unwrap();
        assert!(accepting.join().unwrap());
        let certificate = crate::channel::receiver_certificate(&stream).unwrap();
        (relay, client.pinned(certificate).unwrap())
    }

    /// Relays what a receiver of `server` sends through its tunnel, the sender having let the
    /// VM go (`let_go`) or refused, and returns what the page server got.
    fn relayed(server: &ServerSide, send: &[u8], let_go: bool) -> Vec<u8> {
        let (to_criu, received) = page_server();
        let (relay, pinned) = relay_for(server);
        let at = relay.local_addr().unwrap();
        let relaying = relay.serve(pinned, to_criu);
        let mut daemon = tunnel(at, server).unwrap();
        daemon.write_all(send).unwrap();
        daemon.shutdown(Shutdown::Write).unwrap();
        if let_go {
            relaying.let_go();
            let bytes = received.join().unwrap();
            relaying.join();
            bytes
        } else {
            // Whether the daemon's end has reached the relay or not, it must not reach CRIU.
            relaying.refuse();
            received.join().unwrap()
        }
    }

    #[test]
    fn a_finished_transfer_ends_cleanly_once_the_vm_is_let_go() {
        let server = ServerSide::new(&security("t")).unwrap();
        let mut sent = request(7).to_vec();
        sent.extend(request(PS_IOV_CLOSE));
        assert_eq!(relayed(&server, &sent, true), sent);
    }

    /// The receiver's daemon had every page (a small VM) and ended the transfer, but the
    /// receiver did not run the VM: CRIU must see a failure, not the end, or it would end the
    /// VM's processes at the sender.
    #[test]
    fn a_finished_transfer_of_a_vm_not_let_go_makes_criu_fail() {
        let server = ServerSide::new(&security("t")).unwrap();
        let mut sent = request(7).to_vec();
        sent.extend(request(PS_IOV_CLOSE));
        let got = relayed(&server, &sent, false);
        assert!(
            !got.chunks(REQUEST_LEN).any(|r| r == request(PS_IOV_CLOSE)),
            "the end reached CRIU: {got:?}"
        );
        assert!(got.ends_with(&request(UNKNOWN_COMMAND)), "{got:?}");
    }

    #[test]
    fn a_stream_that_breaks_before_its_close_makes_criu_fail() {
        let server = ServerSide::new(&security("t")).unwrap();
        let sent = request(7);
        let got = relayed(&server, &sent[..], true);
        assert_eq!(&got[..REQUEST_LEN], &sent[..]);
        assert_eq!(&got[REQUEST_LEN..], &request(UNKNOWN_COMMAND)[..]);
        // A request cut in the middle is not passed on: CRIU sees only the failing command.
        let got = relayed(&server, &sent[..10], true);
        assert_eq!(got, request(UNKNOWN_COMMAND).to_vec());
    }

    /// A refusal while the receiver's daemon still fetches pages (a large VM), its connection
    /// open: CRIU fails after the requests passed on so far, without waiting for the daemon.
    #[test]
    fn a_refusal_while_the_daemon_still_fetches_makes_criu_fail() {
        let server = ServerSide::new(&security("t")).unwrap();
        let (to_criu, mut stream) = UnixStream::pair().unwrap();
        let (first, got_first) = std::sync::mpsc::channel();
        let received = std::thread::spawn(move || {
            let mut bytes = vec![0u8; REQUEST_LEN];
            stream.read_exact(&mut bytes).unwrap();
            first.send(()).unwrap();
            stream.read_to_end(&mut bytes).unwrap();
            bytes
        });
        let (relay, pinned) = relay_for(&server);
        let at = relay.local_addr().unwrap();
        let relaying = relay.serve(pinned, to_criu);
        let mut daemon = tunnel(at, &server).unwrap();
        daemon.write_all(&request(7)).unwrap();
        got_first.recv().unwrap();
        relaying.refuse();
        let mut sent = request(7).to_vec();
        sent.extend(request(UNKNOWN_COMMAND));
        assert_eq!(received.join().unwrap(), sent);
        drop(daemon);
    }

    /// A migration that fails before the receiver's daemon connected: CRIU fails at once, not
    /// when the relay has waited for the receiver in vain.
    #[test]
    fn a_refusal_before_the_receiver_connected_makes_criu_fail_at_once() {
        let server = ServerSide::new(&security("t")).unwrap();
        let (to_criu, received) = page_server();
        let (relay, pinned) = relay_for(&server);
        let relaying = relay.serve(pinned, to_criu);
        relaying.refuse();
        assert_eq!(received.join().unwrap(), request(UNKNOWN_COMMAND).to_vec());
    }

    /// The receiver's end of the channel as its tunnel makes it, read here, over a socket that
    /// holds little: its receive buffer fixed small (which also keeps the kernel from growing
    /// it), as a receiver that reads slower than pages come fills it.
    fn slow_receiver(at: SocketAddr, server: &ServerSide) -> crate::channel::ServerStream {
        use nix::sys::socket::{connect, setsockopt, socket, sockopt};
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn};
        use std::os::fd::AsRawFd;
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        setsockopt(&fd, sockopt::RcvBuf, &(8 << 10)).unwrap();
        let SocketAddr::V4(v4) = at else {
            panic!("the relay listens on IPv4 here")
        };
        connect(fd.as_raw_fd(), &SockaddrIn::from(v4)).unwrap();
        let tcp = TcpStream::from(fd);
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        server.accept(tcp).unwrap()
    }

    /// An answer the relay sends into a full socket (the receiver reads slower than pages
    /// come) reaches the receiver whole, though CRIU's page server sends nothing after it (it
    /// waits for the next request). Unflushed, its last records stayed in the relay's TLS
    /// stream for good (tokio-rustls returns from a write once it took the bytes): a post-copy
    /// migration hung in the full suite, the daemon waiting for them and CRIU for a request.
    #[test]
    fn an_answer_sent_into_a_full_socket_reaches_the_receiver_whole() {
        use nix::sys::socket::{setsockopt, sockopt};
        let server = ServerSide::new(&security("t")).unwrap();
        let (to_criu, mut criu) = UnixStream::pair().unwrap();
        let (relay, pinned) = relay_for(&server);
        // Inherited by the connection the relay accepts: its sending side holds little too.
        setsockopt(&relay.listener, sockopt::SndBuf, &(8 << 10)).unwrap();
        let at = relay.local_addr().unwrap();
        let relaying = relay.serve(pinned, to_criu);
        let mut receiver = slow_receiver(at, &server);
        let answer: Vec<u8> = (0..1usize << 20).map(|i| (i % 251) as u8).collect();
        let expected = answer.clone();
        // CRIU answers, then waits for the next request (it keeps its end open).
        let criu = std::thread::spawn(move || {
            let mut asked = [0u8; REQUEST_LEN];
            criu.read_exact(&mut asked).unwrap();
            criu.write_all(&answer).unwrap();
            criu
        });
        receiver.write_all(&request(7)).unwrap();
        receiver.flush().unwrap();
        let mut got = vec![0u8; expected.len()];
        let mut filled = 0;
        while filled < got.len() {
            let end = (filled + (4 << 10)).min(got.len());
            match receiver.read(&mut got[filled..end]) {
                Ok(0) => panic!("the relay ended after {filled} bytes"),
                Ok(read) => filled += read,
                Err(e) => panic!("{e} after {filled} of {} bytes", got.len()),
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        assert!(got == expected, "the answer arrived altered");
        drop(criu.join().unwrap());
        drop(relaying);
    }

    /// The receiver dies (its host goes) after the VM was let go, while CRIU's page server is
    /// sending it an answer larger than the socket to the relay holds. The keeper keeps a copy
    /// of the relay's end open (its transfer watch), so the relay's end closing alone is no end
    /// of file to CRIU: unless the relay shuts the connection down both ways, CRIU waits for
    /// good to send the rest, its dump never ends, and `feather migrate` hangs instead of
    /// saying the VM is lost.
    #[test]
    fn a_receiver_gone_while_criu_sends_an_answer_makes_its_send_fail() {
        use nix::sys::socket::{setsockopt, sockopt};
        let server = ServerSide::new(&security("t")).unwrap();
        let (to_criu, mut criu) = UnixStream::pair().unwrap();
        let keepers_copy = to_criu.try_clone().unwrap();
        let (relay, pinned) = relay_for(&server);
        setsockopt(&relay.listener, sockopt::SndBuf, &(8 << 10)).unwrap();
        let at = relay.local_addr().unwrap();
        let relaying = relay.serve(pinned, to_criu);
        relaying.let_go();
        let mut receiver = slow_receiver(at, &server);
        let (answered, answer_ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut asked = [0u8; REQUEST_LEN];
            criu.read_exact(&mut asked).unwrap();
            // Far more than the socket pair and the TCP connection hold together.
            let answer = vec![7u8; 64 << 20];
            let _ = answered.send(criu.write_all(&answer).map_err(|e| e.kind()));
        });
        receiver.write_all(&request(7)).unwrap();
        receiver.flush().unwrap();
        let mut first = [0u8; 4 << 10];
        receiver.read_exact(&mut first).unwrap();
        // Closed with unread pages in its buffer: the relay's next send is reset.
        drop(receiver);
        let outcome = answer_ended.recv_timeout(Duration::from_secs(120));
        // Ends CRIU's send either way, so that a failure leaves no thread blocked.
        drop(keepers_copy);
        drop(relaying);
        assert!(
            matches!(outcome, Ok(Err(_))),
            "CRIU's send to a receiver that is gone: {outcome:?}"
        );
    }

    #[test]
    fn a_connection_that_does_not_complete_the_channel_gets_nothing_through() {
        let server = ServerSide::new(&security("t")).unwrap();
        let (to_criu, received) = page_server();
        let (relay, pinned) = relay_for(&server);
        let at = relay.local_addr().unwrap();
        let relaying = relay.serve(pinned, to_criu);
        // Plain text: no TLS.
        let mut stranger = TcpStream::connect(at).unwrap();
        let _ = stranger.write_all(&request(7));
        let _ = stranger.read_to_end(&mut Vec::new());
        // Another receiver's certificate, even with the token.
        let other = ServerSide::new(&security("t")).unwrap();
        assert!(tunnel(at, &other).is_err(), "not the pinned certificate");
        // The receiver's own certificate with another token.
        let wrong = server.with_token("u");
        assert!(tunnel(at, &wrong).is_err());
        // The receiver itself still gets through.
        let mut daemon = tunnel(at, &server).unwrap();
        daemon.write_all(&request(PS_IOV_CLOSE)).unwrap();
        daemon.shutdown(Shutdown::Write).unwrap();
        relaying.let_go();
        assert_eq!(received.join().unwrap(), request(PS_IOV_CLOSE).to_vec());
        relaying.join();
    }
}
