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

/// A certificate authority made with openssl in `dir`, issuing certificates for tests of
/// mutual TLS.
pub struct TestCa {
    dir: PathBuf,
    name: String,
}

/// One certificate and its key, as PEM files, with the CA that issued it.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EC_KEY: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

impl TestCa {
    /// A new CA named `name`, its files in `dir`.
    pub fn new(dir: &std::path::Path, name: &str) -> TestCa {
        let mut args = vec!["req", "-x509", "-nodes", "-days", "1"];
        args.extend(EC_KEY);
        let (key, cert, subject) = (
            format!("{name}.key"),
            format!("{name}.crt"),
            format!("/CN={name}"),
        );
        args.extend(["-keyout", &key, "-out", &cert, "-subj", &subject]);
        openssl(dir, &args);
        TestCa {
            dir: dir.to_owned(),
            name: name.to_owned(),
        }
    }

    /// A certificate for `san` (an openssl subjectAltName, e.g. `IP:10.77.0.2`), saved as
    /// `file`.crt and `file`.key.
    pub fn issue(&self, file: &str, san: &str) -> Issued {
        let (key, request, cert) = (
            format!("{file}.key"),
            format!("{file}.csr"),
            format!("{file}.crt"),
        );
        let mut args = vec!["req", "-new", "-nodes"];
        args.extend(EC_KEY);
        let subject = format!("/CN={file}");
        args.extend(["-keyout", &key, "-out", &request, "-subj", &subject]);
        openssl(&self.dir, &args);
        let extensions = format!("{file}.ext");
        std::fs::write(
            self.dir.join(&extensions),
            format!("subjectAltName={san}\n"),
        )
        .unwrap();
        let (ca_cert, ca_key) = (format!("{}.crt", self.name), format!("{}.key", self.name));
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &request,
                "-CA",
                &ca_cert,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &extensions,
                "-out",
                &cert,
            ],
        );
        Issued {
            cert: self.dir.join(cert),
            key: self.dir.join(key),
            ca: self.dir.join(ca_cert),
        }
    }
}

impl Issued {
    /// `--tls-cert`, `--tls-key` and `--tls-ca` for these files, trusting `ca`'s CA.
    pub fn flags(&self, ca: &Issued) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
            "--tls-ca".into(),
            ca.ca.display().to_string(),
        ]
    }
}
