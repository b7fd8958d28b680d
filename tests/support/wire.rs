//! What sits on the wire between two test "hosts": a man in the middle that alters one byte
//! of a stream, and a passive tap that records every byte crossing an interface. Both run in a
//! network namespace the test made (`/run/netns/NAME`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

/// A TCP proxy that passes one connection on to its target, both ways, and XORs the byte at
/// offset `flip_at` of the stream from the client to the target (counted from its first byte).
pub struct TamperProxy {
    flipped: Arc<AtomicBool>,
    forwarded: Arc<AtomicUsize>,
}

impl TamperProxy {
    /// Listens on `listen` in namespace `netns` (ready when this returns) and, for the first
    /// client, connects to `target` from there.
    pub fn start(netns: &str, listen: &str, target: &str, flip_at: usize) -> TamperProxy {
        let flipped = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicUsize::new(0));
        let (ready, listening) = mpsc::channel();
        let (netns, listen, target) = (netns.to_owned(), listen.to_owned(), target.to_owned());
        let (did_flip, count) = (flipped.clone(), forwarded.clone());
        std::thread::spawn(move || {
            // This thread's sockets belong to the other host's namespace (setns acts on the
            // calling thread only).
            let ns = std::fs::File::open(format!("/run/netns/{netns}")).unwrap();
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let listener = TcpListener::bind(&listen).unwrap();
            ready.send(()).unwrap();
            let (mut client, _) = listener.accept().unwrap();
            let server = TcpStream::connect(&target).unwrap();
            let (mut back_in, mut back_out) =
                (server.try_clone().unwrap(), client.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut back_in, &mut back_out);
                let _ = back_out.shutdown(Shutdown::Write);
            });
            let mut server = server;
            let mut buffer = [0u8; 16384];
            let mut offset = 0usize;
            while let Ok(n) = client.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                if (offset..offset + n).contains(&flip_at) {
                    buffer[flip_at - offset] ^= 0x01;
                    did_flip.store(true, Ordering::SeqCst);
                }
                offset += n;
                count.store(offset, Ordering::SeqCst);
                if server.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            let _ = server.shutdown(Shutdown::Write);
        });
        listening.recv().unwrap();
        TamperProxy { flipped, forwarded }
    }

    /// Whether the byte was altered (the stream reached that far).
    pub fn flipped(&self) -> bool {
        self.flipped.load(Ordering::SeqCst)
    }

    /// Bytes passed on from the client so far.
    pub fn forwarded(&self) -> usize {
        self.forwarded.load(Ordering::SeqCst)
    }
}

/// A passive tap on an interface of a namespace: every frame in either direction, recorded to
/// a file (tap.py); stopped (by its pid) and the file removed on drop.
pub struct Tap {
    child: Child,
    file: PathBuf,
}

const TAP: &str = include_str!("tap.py");

impl Tap {
    /// Records on `interface` of namespace `netns` from when this returns.
    pub fn start(netns: &str, interface: &str) -> Tap {
        let file = std::env::temp_dir().join(format!(
            "feather-tap-{}-{interface}.bin",
            std::process::id()
        ));
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .args(["python3", "-c", TAP, interface])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut said = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut said)
            .unwrap();
        assert_eq!(said.trim(), "ready", "the tap did not start");
        Tap { child, file }
    }

    /// Everything recorded so far.
    pub fn recording(&self) -> Vec<u8> {
        std::fs::read(&self.file).unwrap_or_default()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
