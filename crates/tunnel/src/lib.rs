//! The tunnel between an agent and its hub, the parts both sides must agree on.
//!
//! One outbound connection from the agent carries many streams. The connection is a
//! WebSocket (so it passes the proxies a WebSocket passes); [`ws::MessageBytes`] turns its
//! binary messages into the byte stream [`mux`] multiplexes with yamux. The hub opens every
//! stream (the agent never does: it only answers), and each stream starts with one
//! [`open::Open`] header saying where it goes, answered by one [`open::Answer`] before any
//! byte of the stream's own.
//!
//! This crate does no I/O of its own beyond what it is handed, and decides nothing about
//! policy: which destinations an agent may reach is the agent's egress gate's, and which
//! agent a client may use is the hub's.

pub mod mux;
pub mod open;
pub mod ws;

/// The path of the tunnel's WebSocket on the hub; the agent authenticates with its JWT in
/// `Authorization: Bearer`.
pub const TUNNEL_PATH: &str = "/v1/agent/tunnel";

/// Version of the stream-open header this build speaks.
pub const OPEN_VERSION: u32 = 1;

pub mod transport;

/// What the hub tells an agent about its tunnel endpoints (`GET` [`ENDPOINTS_PATH`], the
/// agent's JWT): the raw fast path's `host:port` when the hub serves one. The WebSocket at
/// [`TUNNEL_PATH`] is always there.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    /// Whether the raw endpoint speaks TLS (it does whenever the hub serves HTTPS).
    #[serde(default)]
    pub raw_tls: bool,
}

pub const ENDPOINTS_PATH: &str = "/v1/agent/tunnel/endpoints";

/// The first line an agent sends on the raw transport, then its JWT, then `\n`; the hub
/// answers one line, `OK` or `ERR <why>`, before yamux starts.
pub const RAW_PREAMBLE: &str = "EDGE-TUNNEL/1 ";
