//! The web view (`feather web`), driven as its users drive it: over HTTP for the security
//! rules every request meets, and in a real browser (Debian's chromium, headless, through
//! chromedriver and Selenium) for what a person does on the page. Each test serves its own
//! state root on a port of its own and ends the server it started.

#[path = "../support/mod.rs"]
mod support;

mod browser;
mod security;
mod server;
