//! Who may ask the web view anything.
//!
//! - `feather web` prints a URL with a **one-time token**; opening it exchanges the token for
//!   a session cookie (`HttpOnly`: no script reads it; `SameSite=Strict`: no other site's page
//!   sends it) and the token is spent — a URL left in a shell's history or a log opens nothing.
//! - The cookie is half of the session. Cookies do not know ports: the browser also sends it to
//!   any server on the same host — a VM's service published on another port of 127.0.0.1 gets
//!   it when the admin looks at that service. So the other half is the session's **key**, which
//!   the login answers in the page's body (never a cookie); the page keeps it in its
//!   origin's `localStorage` (scheme, host *and port*: no other port's page reads it) and sends
//!   it with every API request ([`KEY_HEADER`]; a terminal's WebSocket, which cannot carry
//!   headers, names it as a subprotocol, [`KEY_PROTOCOL`]). Only the page's own files
//!   ([`crate::page::FILES`]) need the cookie alone (a browser loads them without headers of
//!   ours; they hold nothing secret).
//! - A state-changing request (POST, DELETE) also needs the session's CSRF token in a header,
//!   which only a page of ours can read (from `/api/session`) and another site cannot set on a
//!   cross-site request, and an `Origin` that is ours (browsers send one with every such
//!   request; a request without it is no page's).
//! - The `Host` must be the address served: a name that someone's DNS points at 127.0.0.1
//!   (DNS rebinding) is refused before anything else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use subtle::ConstantTimeEq;

use crate::WebError;

/// The cookie that carries a session.
pub const COOKIE: &str = "feather_session";
/// The header that carries a session's CSRF token.
pub const CSRF_HEADER: &str = "x-feather-csrf";
/// The header that carries a session's key, the half a server on another port never gets.
pub const KEY_HEADER: &str = "x-feather-session";
/// A WebSocket's handshake carries the key as the subprotocol `feather-session.<key>` (a
/// browser's WebSocket sets no other header), beside [`TERMINAL_PROTOCOL`], the one chosen.
pub const KEY_PROTOCOL: &str = "feather-session.";
/// The subprotocol a terminal's WebSocket speaks (the server must answer one of those asked).
pub const TERMINAL_PROTOCOL: &str = "feather-terminal";

pub struct Sessions {
    address: SocketAddr,
    /// Served over TLS: the cookie is `Secure`, the page's origin `https://`, and any Host is
    /// accepted (a rebound name cannot present this server's certificate).
    tls: bool,
    /// `None` once spent.
    login: Mutex<Option<String>>,
    /// session id → its key and CSRF token.
    open: Mutex<HashMap<String, Session>>,
}

struct Session {
    /// Sent by the page in [`KEY_HEADER`]; never in a cookie.
    key: String,
    csrf: String,
}

/// What a login gives: the cookie's session id and the key the page keeps.
#[derive(Debug, PartialEq, Eq)]
pub struct LoggedIn {
    pub id: String,
    pub key: String,
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The Host header is not the address served.
    ForeignHost,
    /// No session, or one this server never made.
    NoSession,
    /// An API request with the session's cookie but without its key: not the page (perhaps a
    /// server on another port of this host that the browser sent the cookie to).
    NoKey,
    /// A state-changing request without the session's CSRF token, or from another origin.
    CrossSite,
    /// A login with a wrong or spent token.
    BadToken,
}

impl Refusal {
    pub fn message(&self) -> &'static str {
        match self {
            Refusal::ForeignHost => {
                "this server answers only to the address `feather web` printed (not another name \
                 for it, such as localhost)"
            }
            Refusal::NoSession => {
                "no session: open the URL `feather web` printed (its token works once)"
            }
            Refusal::NoKey => {
                "no session key: only the page the login link opened holds it (and pages at the same \
                 address in that browser); open the page there, or restart `feather web` for a new \
                 login link"
            }
            Refusal::CrossSite => "refused: a state-changing request must come from this page",
            Refusal::BadToken => {
                "this login link is wrong or was used already: restart `feather web` for a new one"
            }
        }
    }
}

fn random_hex() -> Result<String, WebError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(WebError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Sessions {
    pub fn new(address: SocketAddr, tls: bool) -> Result<Sessions, WebError> {
        Ok(Sessions {
            address,
            tls,
            login: Mutex::new(Some(random_hex()?)),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The token of the URL `feather web` prints (empty once spent).
    pub fn login_token(&self) -> String {
        lock(&self.login).clone().unwrap_or_default()
    }

    /// Spends the login token for a new session: its id (the cookie) and its key (the page's).
    pub fn log_in(&self, token: &str) -> Result<LoggedIn, Refusal> {
        let mut login = lock(&self.login);
        match login.as_deref() {
            Some(expected) if same(expected, token) => {
                *login = None;
                let fresh = || random_hex().map_err(|_| Refusal::BadToken);
                let (id, key, csrf) = (fresh()?, fresh()?, fresh()?);
                lock(&self.open).insert(
                    id.clone(),
                    Session {
                        key: key.clone(),
                        csrf,
                    },
                );
                Ok(LoggedIn { id, key })
            }
            _ => Err(Refusal::BadToken),
        }
    }

    /// The CSRF token of the session a request's cookies name, when it also shows the
    /// session's key.
    pub fn csrf_of(&self, cookies: Option<&str>, key: Option<&str>) -> Result<String, Refusal> {
        let id = cookies.and_then(session_cookie).ok_or(Refusal::NoSession)?;
        let open = lock(&self.open);
        let session = open
            .iter()
            .find(|(known, _)| same(known, id))
            .map(|(_, session)| session)
            .ok_or(Refusal::NoSession)?;
        if !key.is_some_and(|key| same(key, &session.key)) {
            return Err(Refusal::NoKey);
        }
        Ok(session.csrf.clone())
    }

    /// Whether a request's cookies name a session of ours (all the page's own files need).
    fn has_session(&self, cookies: Option<&str>) -> bool {
        cookies
            .and_then(session_cookie)
            .is_some_and(|id| lock(&self.open).keys().any(|known| same(known, id)))
    }

    /// Decides a request: its Host, its session (for the API: cookie and key), and for a
    /// state-changing one its CSRF token and Origin.
    pub fn check(&self, request: &RequestFacts<'_>) -> Result<(), Refusal> {
        if !self.is_our_host(request.host) {
            return Err(Refusal::ForeignHost);
        }
        if request.page_file {
            if self.has_session(request.cookies) {
                return Ok(());
            }
            return Err(Refusal::NoSession);
        }
        let csrf = self.csrf_of(request.cookies, request.key)?;
        if request.changes_state {
            // Browsers send an Origin with every POST and DELETE: one without is no page's.
            let origin_ok = request
                .origin
                .is_some_and(|origin| self.is_page_origin(origin, request.host));
            let token_ok = request.csrf.is_some_and(|sent| same(sent, &csrf));
            if !(origin_ok && token_ok) {
                return Err(Refusal::CrossSite);
            }
        }
        Ok(())
    }

    /// Whether a WebSocket's handshake, sent to `host` (its Host), comes from our page:
    /// browsers always send its Origin, and the session cookie alone would let another page
    /// open one — SameSite=Strict keeps other sites' pages out, not pages of the same host on
    /// another port (a VM's published service), which are the same site.
    pub fn is_our_origin(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        origin.is_some_and(|origin| self.is_page_origin(origin, host))
    }

    /// Whether `origin` is our page as reached at `host`: exactly the scheme served and that
    /// host, itself one this server answers to (over TLS any name its certificate holds, but
    /// the very name and port the request went to).
    fn is_page_origin(&self, origin: &str, host: Option<&str>) -> bool {
        let scheme = if self.tls { "https" } else { "http" };
        host.is_some_and(|host| {
            self.is_our_host(Some(host)) && origin == format!("{scheme}://{host}")
        })
    }

    /// Over HTTP, only the very address served: not `localhost`, which the browser may reach
    /// at `[::1]` where anyone may listen while this server holds 127.0.0.1 only, and which would
    /// be another origin with its own key (review fixes23 W4).
    pub fn is_our_host(&self, host: Option<&str>) -> bool {
        if self.tls {
            return host.is_some();
        }
        host.is_some_and(|host| host == self.address.to_string())
    }

    /// The `Set-Cookie` value of a new session.
    pub fn cookie(&self, id: &str) -> String {
        let secure = if self.tls { "; Secure" } else { "" };
        format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/{secure}")
    }
}

/// What [`Sessions::check`] looks at in a request.
pub struct RequestFacts<'a> {
    pub host: Option<&'a str>,
    pub cookies: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub csrf: Option<&'a str>,
    /// The session's key: its header, or a WebSocket's subprotocol ([`key_in_protocols`]).
    pub key: Option<&'a str>,
    /// One of the page's own files ([`crate::page::FILES`]), which the browser loads without
    /// headers of ours: the cookie is enough. Every other request needs the key too.
    pub page_file: bool,
    pub changes_state: bool,
}

/// The key a WebSocket handshake names in its `Sec-WebSocket-Protocol` list.
pub fn key_in_protocols(protocols: &str) -> Option<&str> {
    protocols
        .split(',')
        .find_map(|protocol| protocol.trim().strip_prefix(KEY_PROTOCOL))
}

fn session_cookie(cookies: &str) -> Option<&str> {
    cookies
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these maps leaves them consistent (single inserts and takes).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> Sessions {
        Sessions::new("127.0.0.1:7070".parse().unwrap(), false).unwrap()
    }

    /// An API request from our page at 127.0.0.1:7070 (its Origin sent on changes only, as
    /// browsers do), with the session's `key`.
    fn facts<'a>(
        cookies: Option<&'a str>,
        key: Option<&'a str>,
        csrf: Option<&'a str>,
        changes_state: bool,
    ) -> RequestFacts<'a> {
        RequestFacts {
            host: Some("127.0.0.1:7070"),
            cookies,
            origin: changes_state.then_some("http://127.0.0.1:7070"),
            csrf,
            key,
            page_file: false,
            changes_state,
        }
    }

    /// A logged-in session: its cookie header and its key.
    fn logged_in(sessions: &Sessions) -> (String, String) {
        let LoggedIn { id, key } = sessions.log_in(&sessions.login_token()).unwrap();
        (format!("other=1; {COOKIE}={id}"), key)
    }

    #[test]
    fn the_login_token_works_once() {
        let sessions = sessions();
        let token = sessions.login_token();
        assert!(sessions.log_in("wrong").is_err());
        assert!(sessions.log_in(&token).is_ok());
        assert_eq!(sessions.log_in(&token), Err(Refusal::BadToken));
    }

    #[test]
    fn a_change_needs_the_sessions_csrf_token_and_our_origin() {
        let sessions = sessions();
        let (cookie, key) = logged_in(&sessions);
        let (cookie, key) = (Some(cookie.as_str()), Some(key.as_str()));
        let csrf = sessions.csrf_of(cookie, key).unwrap();
        assert_eq!(sessions.check(&facts(cookie, key, None, false)), Ok(()));
        assert_eq!(
            sessions.check(&facts(cookie, key, None, true)),
            Err(Refusal::CrossSite)
        );
        assert_eq!(
            sessions.check(&facts(cookie, key, Some("guess"), true)),
            Err(Refusal::CrossSite)
        );
        assert_eq!(
            sessions.check(&facts(cookie, key, Some(&csrf), true)),
            Ok(())
        );
        let mut foreign = facts(cookie, key, Some(&csrf), true);
        foreign.origin = Some("http://evil.example");
        assert_eq!(sessions.check(&foreign), Err(Refusal::CrossSite));
        // A client that sends no Origin is no browser's page (review edges23 H2).
        let mut no_origin = facts(cookie, key, Some(&csrf), true);
        no_origin.origin = None;
        assert_eq!(sessions.check(&no_origin), Err(Refusal::CrossSite));
        assert_eq!(
            sessions.check(&facts(Some("feather_session=made-up"), key, None, false)),
            Err(Refusal::NoSession)
        );
    }

    /// Review edges23 H2: the browser sends the session cookie to every port of the host, so a
    /// VM's published service gets it. The cookie alone opens no API request — not the CSRF
    /// token, not a read, not a change even with the CSRF token and our Origin — only the
    /// page's own files.
    #[test]
    fn the_cookie_without_the_pages_key_opens_no_api_request() {
        let sessions = sessions();
        let (cookie, key) = logged_in(&sessions);
        let csrf = sessions.csrf_of(Some(&cookie), Some(&key)).unwrap();
        let cookie = Some(cookie.as_str());
        assert_eq!(sessions.csrf_of(cookie, None), Err(Refusal::NoKey));
        assert_eq!(
            sessions.csrf_of(cookie, Some(&key[1..])),
            Err(Refusal::NoKey)
        );
        for key in [None, Some("guess")] {
            assert_eq!(
                sessions.check(&facts(cookie, key, None, false)),
                Err(Refusal::NoKey)
            );
            assert_eq!(
                sessions.check(&facts(cookie, key, Some(&csrf), true)),
                Err(Refusal::NoKey)
            );
        }
        let mut page_file = facts(cookie, None, None, false);
        page_file.page_file = true;
        assert_eq!(sessions.check(&page_file), Ok(()));
        page_file.cookies = Some("feather_session=made-up");
        assert_eq!(sessions.check(&page_file), Err(Refusal::NoSession));
    }

    #[test]
    fn a_websockets_key_is_one_of_its_subprotocols() {
        assert_eq!(
            key_in_protocols("feather-terminal, feather-session.abc1"),
            Some("abc1")
        );
        assert_eq!(key_in_protocols("feather-terminal"), None);
    }

    /// Over TLS any host name is served (a rebound name cannot present the certificate), but a
    /// page of the same host on another port — a VM's published service, same site, so the
    /// SameSite cookie goes with its requests — is not ours: no terminal, no change.
    #[test]
    fn over_tls_only_the_page_at_the_requests_own_host_is_ours() {
        let sessions = Sessions::new("10.0.0.1:7070".parse().unwrap(), true).unwrap();
        let host = Some("box.example:7070");
        assert!(sessions.is_our_origin(Some("https://box.example:7070"), host));
        for foreign in [
            "https://box.example:8443",
            "https://vm.box.example:7070",
            "http://box.example:7070",
            "null",
        ] {
            assert!(!sessions.is_our_origin(Some(foreign), host), "{foreign}");
        }
        assert!(!sessions.is_our_origin(None, host));
        let (cookie, key) = logged_in(&sessions);
        let csrf = sessions.csrf_of(Some(&cookie), Some(&key)).unwrap();
        let mut change = RequestFacts {
            host,
            cookies: Some(&cookie),
            origin: Some("https://box.example:8443"),
            csrf: Some(&csrf),
            key: Some(&key),
            page_file: false,
            changes_state: true,
        };
        assert_eq!(sessions.check(&change), Err(Refusal::CrossSite));
        change.origin = Some("https://box.example:7070");
        assert_eq!(sessions.check(&change), Ok(()));
    }

    #[test]
    fn over_http_the_page_is_at_an_address_served() {
        let sessions = sessions();
        assert!(sessions.is_our_origin(Some("http://127.0.0.1:7070"), Some("127.0.0.1:7070")));
        // W4: `localhost` may be `[::1]`, which this server does not hold.
        assert!(!sessions.is_our_origin(Some("http://localhost:7070"), Some("localhost:7070")));
        assert!(!sessions.is_our_origin(Some("http://127.0.0.1:8080"), Some("127.0.0.1:7070")));
        assert!(!sessions.is_our_origin(Some("http://evil.example"), Some("evil.example")));
    }

    #[test]
    fn a_rebound_host_name_is_refused() {
        let sessions = sessions();
        let (cookie, key) = logged_in(&sessions);
        let mut rebound = facts(Some(&cookie), Some(&key), None, false);
        rebound.host = Some("attacker.example:7070");
        assert_eq!(sessions.check(&rebound), Err(Refusal::ForeignHost));
        rebound.host = Some("localhost:7070");
        assert_eq!(sessions.check(&rebound), Err(Refusal::ForeignHost));
        rebound.host = Some("127.0.0.1:7070");
        assert_eq!(sessions.check(&rebound), Ok(()));
    }
}
