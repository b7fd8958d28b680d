//! `feather web`: a view of one state root's VMs in a browser, and the common actions on them.
//!
//! It is a client of the same library calls as the command line (feather-vm, feather-shuttle):
//! nothing here creates, starts or inspects a VM by itself.
//!
//! - [`auth`]: who may ask — a one-time token exchanged for a session cookie, a CSRF token
//!   for every state-changing request, and the Host and Origin a request must come with
//! - [`api`]: the JSON endpoints, each one library call
//! - [`jobs`]: long actions (checkpoint, restore, migrate) whose steps the page follows
//! - [`live`]: what is pushed to open pages (server-sent events), gathered once for all of them
//! - [`page`]: the page itself (HTML, CSS, JavaScript, embedded in the binary)
//!
//! Everything a VM controls (process command lines, file names in a diff, audit objects)
//! travels as JSON and is put into the page as text, never as markup.

pub mod api;
pub mod auth;
pub mod jobs;
pub mod live;
pub mod page;

use std::net::SocketAddr;
use std::sync::Arc;

use feather_core::StateRoot;

/// What `feather web` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen; loopback unless the user says otherwise.
    pub listen: SocketAddr,
}

impl Options {
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:7070";
}

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error(
        "feather web serves only on a loopback address (asked for {0}): the page can stop and \
         remove VMs, and it has no TLS yet; reach it from elsewhere through an SSH tunnel"
    )]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {address}")]
    Listen {
        address: SocketAddr,
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
    if !options.listen.ip().is_loopback() {
        return Err(WebError::NotLoopback(options.listen));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(WebError::Runtime)?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| WebError::Listen {
                address: options.listen,
                source,
            })?;
        let address = listener.local_addr().map_err(|source| WebError::Listen {
            address: options.listen,
            source,
        })?;
        let sessions = auth::Sessions::new(address)?;
        let url = format!("http://{address}/login?token={}", sessions.login_token());
        let state = Arc::new(api::Shared {
            live: live::Live::start(root.clone()),
            root,
            sessions,
            jobs: jobs::Jobs::new(),
        });
        ready(&url);
        axum::serve(listener, api::router(state))
            .await
            .map_err(WebError::Serve)
    })
}
