//! `feather web`: a view of one state root's VMs in a browser, and the common actions on them.
//!
//! It is a client of the same library calls as the command line (feather-vm, feather-shuttle):
//! nothing here creates, starts or inspects a VM by itself.
//!
//! - [`auth`]: who may ask — a one-time token exchanged for a session (a cookie, and a key only
//!   the page holds, since the browser gives the cookie to every port of the host), a CSRF
//!   token for every state-changing request, and the Host and Origin a request must come with
//! - [`api`]: the JSON endpoints, each one library call, by area: a VM's own (`api::vms`),
//!   its services (`api::services`), checkpoint/restore/migrate (`api::moves`), Shuttle
//!   (`api::shuttle`); the router, the guard and the live feed in `api` itself
//! - [`jobs`]: long actions (checkpoint, restore, migrate) whose steps the page follows
//! - [`live`]: what is pushed to open pages (server-sent events), gathered once for all of them
//! - [`terminal`]: a shell in a VM on a terminal of its own, over a WebSocket
//! - [`page`]: the page itself (HTML, CSS, JavaScript, embedded in the binary)
//!
//! Everything a VM controls (process command lines, file names in a diff, audit objects)
//! travels as JSON and is put into the page as text, never as markup.

pub mod api;
pub mod auth;
pub mod jobs;
pub mod live;
pub mod page;
pub mod terminal;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use feather_core::StateRoot;

/// What `feather web` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen; loopback unless the user says otherwise (and then only with TLS).
    pub listen: SocketAddr,
    /// A certificate and its key (PEM): HTTPS instead of HTTP.
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

impl Options {
    /// A port the kernel picks, another at each run (the URL printed names it): no address
    /// the browser knew from an earlier run is the page's again, so whoever listened there
    /// since has left nothing in this origin (review fixes23 W1).
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:0";

    /// Reachable from other machines: the caller should say so.
    pub fn is_exposed(&self) -> bool {
        !self.listen.ip().is_loopback()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error(
        "feather web serves on {0}, which other machines reach, only over TLS: the page can \
         stop and remove VMs. Give --tls-cert and --tls-key, or listen on a loopback address \
         and reach it through an SSH tunnel"
    )]
    ExposedWithoutTls(SocketAddr),
    #[error("cannot listen on {address}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use the certificate {} with the key {}", .certificate.display(), .key.display())]
    Certificate {
        certificate: PathBuf,
        key: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mark the board of questions {} as watched", .path.display())]
    Board {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make a session token from the kernel's random source")]
    Random(#[source] getrandom::Error),
    #[error("cannot start the web server's runtime")]
    Runtime(#[source] std::io::Error),
    #[error("the web server stopped")]
    Serve(#[source] std::io::Error),
}

/// Serves until the process is ended. `ready` gets the URL to open (with the one-time token)
/// once the server listens.
pub fn serve(root: StateRoot, options: &Options, ready: impl FnOnce(&str)) -> Result<(), WebError> {
    if options.is_exposed() && options.tls.is_none() {
        return Err(WebError::ExposedWithoutTls(options.listen));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(WebError::Runtime)?;
    runtime.block_on(async move {
        let listener = std::net::TcpListener::bind(options.listen)
            .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
            .map_err(|source| WebError::Listen {
                address: options.listen,
                source,
            })?;
        let address = listener.local_addr().map_err(|source| WebError::Listen {
            address: options.listen,
            source,
        })?;
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let sessions = auth::Sessions::new(address, options.tls.is_some())?;
        let url = format!(
            "{scheme}://{address}/login?token={}",
            sessions.login_token()
        );
        let state = Arc::new(api::Shared {
            live: live::Live::start(root.clone()),
            root,
            sessions,
            jobs: jobs::Jobs::new(),
        });
        // While it serves, questions of `ask` rules wait on its board too (not only on the
        // terminal that started the source VM).
        let _watching = feather_shuttle::board::Board::of(state.root.dir())
            .watch()
            .map_err(|source| WebError::Board {
                path: state.root.dir().join("asks"),
                source,
            })?;
        let app = api::router(state);
        match &options.tls {
            None => {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .map_err(|source| WebError::Listen { address, source })?;
                ready(&url);
                axum::serve(listener, app).await.map_err(WebError::Serve)
            }
            Some(tls) => {
                let config = tls_config(tls).await?;
                ready(&url);
                axum_server::from_tcp_rustls(listener, config)
                    .serve(app.into_make_service())
                    .await
                    .map_err(WebError::Serve)
            }
        }
    })
}

async fn tls_config(tls: &Tls) -> Result<axum_server::tls_rustls::RustlsConfig, WebError> {
    // rustls with ring as its cryptography, chosen once for the process (a second install,
    // e.g. by a test, is the same provider: its error is of no consequence).
    let _ = rustls::crypto::ring::default_provider().install_default();
    axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.certificate, &tls.key)
        .await
        .map_err(|source| WebError::Certificate {
            certificate: tls.certificate.clone(),
            key: tls.key.clone(),
            source,
        })
}
