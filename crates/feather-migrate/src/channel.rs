//! The channel every migration connection runs over — the transfer stream and post-copy's page
//! stream alike: TLS 1.3 (rustls with ring), then both ends' proof of the shared token, bound to
//! this very TLS session, before any other byte is sent or acted on.
//!
//! ```text
//! sender (TLS client)                                 receiver (TLS server)
//! ClientHello ─────────────────────────────────────▶
//!            ◀─ ServerHello … certificate, its signature, Finished
//! Finished ────────────────────────────────────────▶
//! HMAC(token, "sender" ‖ exporter) ────────────────▶ checked; a wrong one: refusal, closed
//!            ◀─ HMAC(token, "receiver" ‖ exporter)   checked by the sender before it sends more
//! ```
//!
//! Why this design: rustls 0.23 offers no TLS 1.3 external pre-shared keys, so the token cannot
//! key the handshake itself. Instead it is proved inside the session, over the session's
//! exported keying material (RFC 8446 §7.5), which both ends of one TLS session share and
//! nobody else has: a man in the middle who terminates TLS towards each end holds two sessions
//! with two different exporters, and can neither forge a proof for either nor pass one end's
//! proof on to the other. The labels differ per direction, so no proof can be reflected back.
//! The sender proves first and the receiver answers only a sender that proved the token, so a
//! stranger connecting to `feather serve` learns nothing derived from the token.
//!
//! Keys: by default the receiver makes an ephemeral self-signed certificate (rcgen, a fresh key
//! pair) each time it listens, and the sender takes whichever certificate the receiver
//! presents — the handshake's signature still proves the receiver holds that key; the token
//! proof is what authenticates. With configured files ([`TlsFiles`]: `--tls-cert`, `--tls-key`,
//! `--tls-ca` on both ends) both ends present certificates and verify the other's against the
//! CA (mutual TLS, the sender checking the receiver's certificate for the host it named), and
//! the token is proved as well. Post-copy's page stream, a second connection, pins the
//! certificate the receiver presented on the transfer stream: the sender's relay sends its proof
//! to nobody else.
//!
//! Integrity: rustls authenticates every record (AEAD) before it hands out a byte of it, so a
//! byte altered on the way fails that record and ends the connection with
//! [`TransferError::Tampered`]; nothing of that record is used.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, ServerConfig,
    ServerConnection, SignatureScheme, StreamOwned,
};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{MigrateError, Result, TransferError};

/// The version of what crosses the network, from the channel up; changes whenever a message
/// (or what it means) changes. 3: TLS 1.3 with the token proved over its exporter. 4: the
/// archive is two tar streams, the layers pre-copied and then the rest (crate::precopy). 5: the
/// checkpoint lists the VM's masks over kernel folders as external mounts, which the receiver
/// mounts itself (an older one would take them for layers). 6: a VM with `--net none` comes
/// without its network namespace, which the receiver makes (an older one could not restore it).
/// 7: so does a VM with `--net private` whose namespace is as feather made it (an older
/// receiver would give it loopback only).
pub const VERSION: u32 = 7;

/// The exporter's label (RFC 8446 §7.5): keying material for this protocol only.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-feather-migrate-token-proof";
/// What each direction's proof says, so that neither can be reflected back.
const SENDER_PROOF: &[u8] = b"feather migrate: the sender knows the token";
const RECEIVER_PROOF: &[u8] = b"feather migrate: the receiver knows the token";
/// What a receiver sends instead of its proof to a sender whose proof failed (an HMAC tag of
/// all zeros is not a tag anyone computes).
const REFUSAL: [u8; PROOF_LEN] = [0; PROOF_LEN];
const PROOF_LEN: usize = 32;
/// The name the ephemeral certificate carries (the sender checks no name in token mode).
const EPHEMERAL_NAME: &str = "feather-migrate";

/// Certificates from files instead of the ephemeral one: mutual TLS, verified against `ca`.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// This end's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA (PEM) the other end's certificate must be issued by.
    pub ca: PathBuf,
}

/// What secures a migration: the shared token, always, and certificates from files or not.
#[derive(Clone, Debug)]
pub struct Security {
    pub token: String,
    pub files: Option<TlsFiles>,
}

/// A sender's end of an established channel.
pub type ClientStream = StreamOwned<ClientConnection, TcpStream>;
/// A receiver's end of an established channel.
pub type ServerStream = StreamOwned<ServerConnection, TcpStream>;
/// The same on tokio, for the page stream's relays.
pub type AsyncClientStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;
pub type AsyncServerStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// The receiving end: its certificate and key (made for this listen, or from files), and the
/// token.
#[derive(Clone)]
pub struct ServerSide {
    config: Arc<ServerConfig>,
    token: String,
}

/// The sending end, towards one receiver.
#[derive(Clone)]
pub struct ClientSide {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    token: String,
    /// Kept to make the page stream's channel, which pins the receiver's certificate.
    files: Option<TlsFiles>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ServerSide {
    /// The receiver's end for one listen: an ephemeral certificate, or the configured files.
    pub fn new(security: &Security) -> Result<ServerSide> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(MigrateError::Tls)?;
        let mut config = match &security.files {
            None => {
                let made = rcgen::generate_simple_self_signed(vec![EPHEMERAL_NAME.to_owned()])
                    .map_err(MigrateError::Certificate)?;
                let key = PrivateKeyDer::Pkcs8(made.key_pair.serialize_der().into());
                builder
                    .with_no_client_auth()
                    .with_single_cert(vec![made.cert.der().clone()], key)
            }
            Some(files) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(&files.ca)?),
                    provider(),
                )
                .build()
                .map_err(MigrateError::TlsVerifier)?;
                builder
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(chain(&files.cert)?, key(&files.key)?)
            }
        }
        .map_err(MigrateError::Tls)?;
        // No resumption: every connection is a full handshake with a proof of its own.
        config.send_tls13_tickets = 0;
        Ok(ServerSide {
            config: Arc::new(config),
            token: security.token.clone(),
        })
    }

    /// Runs the handshake and the proofs on a connection a sender opened.
    pub fn accept(&self, tcp: TcpStream) -> std::result::Result<ServerStream, TransferError> {
        let connection = ServerConnection::new(self.config.clone()).map_err(TransferError::Tls)?;
        let mut stream = StreamOwned::new(connection, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).map_err(broken)?;
        }
        let exported = export(&stream.conn)?;
        let mut theirs = [0u8; PROOF_LEN];
        stream.read_exact(&mut theirs).map_err(broken)?;
        let answer = receiver_answer(&self.token, &exported, &theirs);
        stream
            .write_all(answer.as_ref().unwrap_or(&REFUSAL))
            .and_then(|()| stream.flush())
            .map_err(broken)?;
        answer.map(|_| stream)
    }

    /// The same certificate with another token.
    #[cfg(test)]
    pub(crate) fn with_token(&self, token: &str) -> ServerSide {
        ServerSide {
            token: token.to_owned(),
            ..self.clone()
        }
    }

    /// [`ServerSide::accept`] on tokio.
    pub async fn accept_async(
        &self,
        tcp: tokio::net::TcpStream,
    ) -> std::result::Result<AsyncServerStream, TransferError> {
        let mut stream = tokio_rustls::TlsAcceptor::from(self.config.clone())
            .accept(tcp)
            .await
            .map_err(broken)?;
        let exported = export(stream.get_ref().1)?;
        let mut theirs = [0u8; PROOF_LEN];
        stream.read_exact(&mut theirs).await.map_err(broken)?;
        let answer = receiver_answer(&self.token, &exported, &theirs);
        stream
            .write_all(answer.as_ref().unwrap_or(&REFUSAL))
            .await
            .map_err(broken)?;
        stream.flush().await.map_err(broken)?;
        answer.map(|_| stream)
    }
}

/// The receiver's proof, if the sender's proved the token.
fn receiver_answer(
    token: &str,
    exported: &[u8; 32],
    theirs: &[u8; PROOF_LEN],
) -> std::result::Result<[u8; PROOF_LEN], TransferError> {
    if proof_verifies(token, exported, SENDER_PROOF, theirs) {
        Ok(proof(token, exported, RECEIVER_PROOF))
    } else {
        Err(TransferError::WrongToken)
    }
}

/// What a sender makes of the receiver's answer to its proof.
fn check_answer(
    token: &str,
    exported: &[u8; 32],
    answer: &[u8; PROOF_LEN],
) -> std::result::Result<(), TransferError> {
    if proof_verifies(token, exported, RECEIVER_PROOF, answer) {
        Ok(())
    } else if *answer == REFUSAL {
        Err(TransferError::WrongToken)
    } else {
        Err(TransferError::ReceiverUnproven)
    }
}

impl ClientSide {
    /// The sender's end towards the receiver at `to` (ADDR:PORT, whose host a configured
    /// certificate must name).
    pub fn new(security: &Security, to: &str) -> Result<ClientSide> {
        let name = match &security.files {
            None => ServerName::try_from(EPHEMERAL_NAME.to_owned()),
            Some(_) => ServerName::try_from(host_of(to).to_owned()),
        }
        .map_err(|_| MigrateError::TlsName { to: to.to_owned() })?;
        let config = client_config(&security.files, None)?;
        Ok(ClientSide {
            config: Arc::new(config),
            name,
            token: security.token.clone(),
            files: security.files.clone(),
        })
    }

    /// The same end, accepting only the receiver whose certificate is `certificate` (the one
    /// its transfer stream presented): for the page stream.
    pub fn pinned(&self, certificate: CertificateDer<'static>) -> Result<ClientSide> {
        let config = client_config(&self.files, Some(certificate))?;
        Ok(ClientSide {
            config: Arc::new(config),
            ..self.clone()
        })
    }

    /// Runs the handshake and the proofs on a connection to the receiver. `Version` if the
    /// receiver is a feather from before this channel (it speaks first, in plain text).
    pub fn connect(&self, tcp: TcpStream) -> std::result::Result<ClientStream, TransferError> {
        let connection = ClientConnection::new(self.config.clone(), self.name.clone())
            .map_err(TransferError::Tls)?;
        let mut stream = StreamOwned::new(connection, tcp);
        while stream.conn.wants_write() {
            stream.conn.write_tls(&mut stream.sock).map_err(broken)?;
        }
        plain_text_peer(&stream.sock)?;
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).map_err(broken)?;
        }
        let exported = export(&stream.conn)?;
        stream
            .write_all(&proof(&self.token, &exported, SENDER_PROOF))
            .and_then(|()| stream.flush())
            .map_err(broken)?;
        let mut answer = [0u8; PROOF_LEN];
        stream.read_exact(&mut answer).map_err(broken)?;
        check_answer(&self.token, &exported, &answer).map(|()| stream)
    }

    /// [`ClientSide::connect`] on tokio.
    pub async fn connect_async(
        &self,
        tcp: tokio::net::TcpStream,
    ) -> std::result::Result<AsyncClientStream, TransferError> {
        let mut stream = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(self.name.clone(), tcp)
            .await
            .map_err(broken)?;
        let exported = export(stream.get_ref().1)?;
        stream
            .write_all(&proof(&self.token, &exported, SENDER_PROOF))
            .await
            .map_err(broken)?;
        stream.flush().await.map_err(broken)?;
        let mut answer = [0u8; PROOF_LEN];
        stream.read_exact(&mut answer).await.map_err(broken)?;
        check_answer(&self.token, &exported, &answer).map(|()| stream)
    }
}

/// The certificate the receiver presented on `stream`, to pin for the page stream.
pub fn receiver_certificate(stream: &ClientStream) -> Option<CertificateDer<'static>> {
    stream
        .conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.clone().into_owned())
}

fn client_config(
    files: &Option<TlsFiles>,
    pinned: Option<CertificateDer<'static>>,
) -> Result<ClientConfig> {
    let provider = provider();
    let ca = match files {
        Some(files) => Some(
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(&files.ca)?),
                provider.clone(),
            )
            .build()
            .map_err(MigrateError::TlsVerifier)?,
        ),
        None => None,
    };
    let verifier = Arc::new(ReceiverVerifier {
        ca,
        pinned,
        algorithms: provider.signature_verification_algorithms,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(MigrateError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match files {
        None => builder.with_no_client_auth(),
        Some(files) => builder
            .with_client_auth_cert(chain(&files.cert)?, key(&files.key)?)
            .map_err(MigrateError::Tls)?,
    };
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// How a sender checks the receiver's certificate: against the CA with configured files; not
/// at all in token mode, where the token proof authenticates (the handshake's signature is
/// still checked, so the receiver holds the key it presents); and for the page stream, also
/// that it is the very certificate the transfer stream's receiver presented.
#[derive(Debug)]
struct ReceiverVerifier {
    ca: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    pinned: Option<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ReceiverVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .as_ref()
            .is_some_and(|pinned| pinned.as_ref() != end_entity.as_ref())
        {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        match &self.ca {
            Some(ca) => {
                ca.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn export<S>(
    connection: &rustls::ConnectionCommon<S>,
) -> std::result::Result<[u8; 32], TransferError> {
    connection
        .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
        .map_err(TransferError::Tls)
}

fn keyed(token: &str, exported: &[u8; 32], direction: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes any key");
    mac.update(direction);
    mac.update(b"\0");
    mac.update(exported);
    mac
}

fn proof(token: &str, exported: &[u8; 32], direction: &[u8]) -> [u8; PROOF_LEN] {
    keyed(token, exported, direction)
        .finalize()
        .into_bytes()
        .into()
}

/// Compares in constant time (through the MAC library).
fn proof_verifies(token: &str, exported: &[u8; 32], direction: &[u8], tag: &[u8]) -> bool {
    keyed(token, exported, direction).verify_slice(tag).is_ok()
}

/// What an I/O error on the channel means: a record that failed its authentication (or a peer
/// that saw one) is [`TransferError::Tampered`], another TLS failure [`TransferError::Tls`],
/// anything else a lost connection.
pub(crate) fn broken(e: std::io::Error) -> TransferError {
    tls_failure(&e).unwrap_or(TransferError::Lost(e))
}

/// The TLS failure behind an I/O error on the channel, if it is one (see [`broken`]).
pub(crate) fn tls_failure(e: &std::io::Error) -> Option<TransferError> {
    use rustls::AlertDescription as Alert;
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())?
        .clone();
    Some(match tls {
        rustls::Error::DecryptError
        | rustls::Error::InvalidMessage(_)
        | rustls::Error::AlertReceived(
            Alert::BadRecordMac | Alert::DecryptError | Alert::DecodeError,
        ) => TransferError::Tampered(tls),
        tls => TransferError::Tls(tls),
    })
}

/// After a write failed: the alert the peer sent before it closed, if any (a receiver that
/// found a record altered says so with one; its reset may otherwise hide the reason).
pub(crate) fn alert_from_peer(stream: &mut ClientStream) -> Option<TransferError> {
    let _ = stream
        .sock
        .set_read_timeout(Some(std::time::Duration::from_secs(2)));
    loop {
        match stream.conn.read_tls(&mut stream.sock) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        if let Err(tls) = stream.conn.process_new_packets() {
            return tls_failure(&std::io::Error::new(std::io::ErrorKind::InvalidData, tls));
        }
    }
}

/// A receiver from before this channel speaks first, a JSON line with its version: named as
/// such instead of as a failed handshake.
fn plain_text_peer(tcp: &TcpStream) -> std::result::Result<(), TransferError> {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first) {
        Ok(1) if first[0] == b'{' => {}
        Ok(_) => return Ok(()),
        Err(e) => return Err(TransferError::Lost(e)),
    }
    let mut line = Vec::new();
    let _ = BufReader::new(tcp.take(4096)).read_until(b'\n', &mut line);
    let received = serde_json::from_slice::<serde_json::Value>(&line)
        .ok()
        .and_then(|hello| hello.get("version").and_then(|v| v.as_u64()))
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0);
    Err(TransferError::Version {
        expected: VERSION,
        received,
    })
}

/// The host of ADDR:PORT (an IPv6 address without its brackets).
fn host_of(to: &str) -> &str {
    let host = to.rsplit_once(':').map_or(to, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn chain(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>> {
    let failed = |source| MigrateError::TlsFile {
        path: path.clone(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(failed)?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(failed)?;
    if chain.is_empty() {
        return Err(failed(rustls::pki_types::pem::Error::NoItemsFound));
    }
    Ok(chain)
}

fn key(path: &PathBuf) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| MigrateError::TlsFile {
        path: path.clone(),
        source,
    })
}

fn roots(path: &PathBuf) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for certificate in chain(path)? {
        roots.add(certificate).map_err(MigrateError::Tls)?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn token(token: &str) -> Security {
        Security {
            token: token.into(),
            files: None,
        }
    }

    /// Connects a sender knowing `sender` to a receiver knowing `receiver`; both outcomes.
    fn pair(
        sender: Security,
        receiver: Security,
        to: &str,
    ) -> (
        std::result::Result<ClientStream, TransferError>,
        std::result::Result<ServerStream, TransferError>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let at = listener.local_addr().unwrap();
        let server = ServerSide::new(&receiver).unwrap();
        let accepting = std::thread::spawn(move || server.accept(listener.accept().unwrap().0));
        let client = ClientSide::new(&sender, to).unwrap();
        let connected = client.connect(TcpStream::connect(at).unwrap());
        (connected, accepting.join().unwrap())
    }

    #[test]
    fn both_ends_knowing_the_token_talk_over_tls_1_3() {
        let (client, server) = pair(token("t"), token("t"), "127.0.0.1:1");
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        assert_eq!(
            client.conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        client.write_all(b"hello").unwrap();
        client.flush().unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
    }

    #[test]
    fn a_wrong_token_is_refused_at_both_ends() {
        let (client, server) = pair(token("one"), token("two"), "127.0.0.1:1");
        assert!(matches!(client, Err(TransferError::WrongToken)));
        assert!(matches!(server, Err(TransferError::WrongToken)));
    }

    #[test]
    fn a_proof_is_bound_to_its_session_and_direction() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let tag = proof("t", &a, SENDER_PROOF);
        assert!(proof_verifies("t", &a, SENDER_PROOF, &tag));
        assert!(!proof_verifies("t", &b, SENDER_PROOF, &tag));
        assert!(!proof_verifies("t", &a, RECEIVER_PROOF, &tag));
        assert!(!proof_verifies("u", &a, SENDER_PROOF, &tag));
    }

    /// A CA and, issued by it, a certificate for `name` and its key, as PEM files in `dir`.
    fn issue(dir: &std::path::Path, ca: &rcgen::CertifiedKey, name: &str) -> TlsFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let cert = params.signed_by(&key, &ca.cert, &ca.key_pair).unwrap();
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            ca: dir.join("ca.crt"),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        std::fs::write(&files.ca, ca.cert.pem()).unwrap();
        files
    }

    fn certificate_authority() -> rcgen::CertifiedKey {
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key_pair).unwrap();
        rcgen::CertifiedKey { cert, key_pair }
    }

    #[test]
    fn configured_certificates_are_verified_both_ways() {
        let scratch = feather_testkit::ScratchDir::new("tls");
        let dir = scratch.0.clone();
        let ca = certificate_authority();
        let receiver = issue(&dir, &ca, "127.0.0.1");
        let sender = issue(&dir, &ca, "sender.example");
        let with = |files: &TlsFiles| Security {
            token: "t".into(),
            files: Some(files.clone()),
        };
        let (client, server) = pair(with(&sender), with(&receiver), "127.0.0.1:1");
        assert!(client.is_ok() && server.is_ok());

        // A receiver whose certificate names another host is refused by the sender.
        let (client, _) = pair(with(&sender), with(&receiver), "127.0.0.2:1");
        assert!(matches!(client, Err(TransferError::Tls(_))), "{client:?}");

        // A sender whose certificate another CA issued is refused by the receiver.
        let other = feather_testkit::ScratchDir::new("tls-o");
        let stranger = issue(&other.0, &certificate_authority(), "sender.example");
        let stranger = TlsFiles {
            ca: receiver.ca.clone(),
            ..stranger
        };
        let (_, server) = pair(with(&stranger), with(&receiver), "127.0.0.1:1");
        assert!(matches!(server, Err(TransferError::Tls(_))), "{server:?}");
    }
}
