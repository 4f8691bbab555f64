//! The Edge-Agent browser runtime: it drives the Chrome, Chromium or Edge already installed on
//! the creator's machine over the DevTools protocol (through `chromiumoxide`) to run site
//! flows as the logged-in creator.
//!
//! It owns: finding and launching the browser ([`launch`]), the auto-waiting locator layer
//! ([`locator`]), the declarative flow and site-adapter format ([`flow`]) and its interpreter
//! ([`engine`]), the four built-in flows and their job types ([`runtime`]), the local
//! guardrails (token buckets, pacing, per-site backoff, circuit breaker: [`guard`]), the
//! broadcast checkpoint ([`checkpoint`]), encrypted session state ([`session`]), the list of
//! sites that need a login ([`logins`]), and the confinement of every job: the rules of which
//! pages it may open and which files it may upload ([`confine`]) and their enforcement inside
//! the browser ([`fence`]).
//!
//! It must never download a browser, never hide itself from the person or the site (no
//! fingerprint spoofing, no CAPTCHA solving, no "stealth" patches), never retry a
//! `CONTENT_BLOCKED` or `POLICY_VIOLATION`, never write session cookies to disk unencrypted,
//! and never log a message body, a cookie or the session key. It knows nothing about the hub
//! connection: the agent hands it jobs and receives [`runtime::BrowserEvent`]s.

pub mod checkpoint;
pub mod confine;
pub mod engine;
pub mod error;
pub mod fence;
pub mod flow;
pub mod guard;
pub mod launch;
pub mod locator;
pub mod logins;
pub mod runtime;
pub mod session;
#[cfg(feature = "test-site")]
pub mod testsite;

pub use error::BrowserError;
pub use flow::{Adapter, Flow, FlowDocument, Step};
pub use launch::{find_browser, BrowserLaunch, WarmBrowser};
pub use runtime::{
    BrowserEvent, BrowserRuntime, BrowserSettings, BrowserStatus, JobOutcome, JobReporter, KeyStore, NoReport, Notifier,
};

/// Milliseconds since the Unix epoch (wall clock), the unit of every persisted timestamp here.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A Unix-ms instant as RFC 3339 in this machine's zone, for people reading it against their
/// own clock (`2031-07-01T18:30:00+02:00`); persisted and wire timestamps stay Unix ms or UTC.
pub fn local_rfc3339(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.with_timezone(&chrono::Local).to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        None => format!("{ms} ms after the Unix epoch (out of range)"),
    }
}
