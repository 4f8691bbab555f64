//! The hub URL policy: which hub addresses the agent will talk to, and how the HTTP and
//! WebSocket URLs derive from one.
//!
//! Plain `http://` would put the device-key signature exchange and every JWT on the wire
//! in clear, so it is accepted only for loopback hosts (development and tests). This module
//! must never loosen that rule based on anything but the host.

use crate::error::AgentError;
use std::net::IpAddr;
use url::{Host, Url};

/// A hub base URL that passed the policy: `http(s)://host[:port][/prefix]`, no query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubUrl(Url);

impl HubUrl {
    pub fn parse(input: &str) -> Result<HubUrl, AgentError> {
        let invalid = |reason: &str| AgentError::InvalidHubUrl { url: input.to_owned(), reason: reason.to_owned() };
        let mut url = Url::parse(input.trim()).map_err(|e| invalid(&e.to_string()))?;
        // A hub is one address for HTTP and WebSocket; people paste either form.
        let http_scheme = match url.scheme() {
            "wss" => Some("https"),
            "ws" => Some("http"),
            _ => None,
        };
        if let Some(scheme) = http_scheme {
            url.set_scheme(scheme).map_err(|()| invalid("cannot map the WebSocket scheme to HTTP"))?;
        }
        let host = url.host().ok_or_else(|| invalid("it has no host"))?;
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(&host) => {}
            "http" => {
                return Err(invalid(
                    "plain http:// is accepted only for loopback hosts (127.0.0.0/8, ::1, localhost); use https://",
                ))
            }
            other => return Err(invalid(&format!("scheme {other:?} is not supported; use https://"))),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("credentials in the URL are not allowed"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("a query or fragment is not allowed"));
        }
        // Keep a path prefix (a hub behind a reverse proxy) but without a trailing slash,
        // so joining `/v1/...` never yields `//v1`.
        let trimmed = url.path().trim_end_matches('/').to_owned();
        url.set_path(&trimmed);
        Ok(HubUrl(url))
    }

    /// `https://hub.example/v1/agent/enroll` for `path` = `/v1/agent/enroll`.
    pub fn http_endpoint(&self, path: &str) -> String {
        format!("{}{}", self.as_str(), path)
    }

    /// The WebSocket URL for `path`: `wss://` for an `https://` hub, `ws://` for loopback `http://`.
    pub fn ws_endpoint(&self, path: &str) -> String {
        let rest = self.as_str().split_once("://").map(|(_, rest)| rest).unwrap_or_default();
        let scheme = if self.0.scheme() == "https" { "wss" } else { "ws" };
        format!("{scheme}://{rest}{path}")
    }

    /// The host, without brackets for IPv6 (what TLS checks the certificate against).
    pub fn host(&self) -> &str {
        self.0.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']')
    }

    pub fn is_tls(&self) -> bool {
        self.0.scheme() == "https"
    }

    /// The normalised URL without a trailing slash.
    pub fn as_str(&self) -> &str {
        self.0.as_str().trim_end_matches('/')
    }
}

impl std::fmt::Display for HubUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
        Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_is_always_accepted() {
        let url = HubUrl::parse("https://hub.example.com/").unwrap();
        assert_eq!(url.as_str(), "https://hub.example.com");
        assert_eq!(url.ws_endpoint("/v1/agent/ws"), "wss://hub.example.com/v1/agent/ws");
        assert_eq!(url.http_endpoint("/v1/agent/enroll"), "https://hub.example.com/v1/agent/enroll");
    }

    #[test]
    fn http_is_accepted_only_for_loopback() {
        for ok in [
            "http://127.0.0.1:8787",
            "http://127.9.8.7",
            "http://[::1]:1",
            "http://localhost:8787/",
            "http://LOCALHOST",
        ] {
            let url = HubUrl::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert!(url.ws_endpoint("/x").starts_with("ws://"), "{ok}");
        }
        for bad in [
            "http://hub.example.com",
            "http://10.0.0.1:8787",
            "http://192.168.1.2",
            "http://[fe80::1]",
            "http://localhost.evil.com",
        ] {
            let err = HubUrl::parse(bad).unwrap_err();
            assert!(err.to_string().contains("loopback"), "{bad}: {err}");
        }
    }

    #[test]
    fn other_schemes_and_garbage_are_rejected_with_a_reason() {
        assert!(HubUrl::parse("ftp://127.0.0.1").unwrap_err().to_string().contains("https://"));
        assert!(HubUrl::parse("ws://hub.example").unwrap_err().to_string().contains("loopback"));
        assert_eq!(HubUrl::parse("wss://hub.example").unwrap().as_str(), "https://hub.example");
        assert_eq!(HubUrl::parse("ws://127.0.0.1:1").unwrap().as_str(), "http://127.0.0.1:1");
        assert!(HubUrl::parse("not a url").is_err());
        assert!(HubUrl::parse("https://user:pw@hub.example").is_err());
        assert!(HubUrl::parse("https://hub.example/?token=x").is_err());
    }

    #[test]
    fn a_path_prefix_is_kept() {
        let url = HubUrl::parse("https://example.com/edge/").unwrap();
        assert_eq!(url.http_endpoint("/v1/agent/token"), "https://example.com/edge/v1/agent/token");
    }
}
