//! How an agent reaches the hub's tunnel: one connection that yamux runs over.
//!
//! The contract every transport keeps, on which the agent's reconnect loop and the hub rely:
//! - `connect` is cancel safe: dropping its future abandons the attempt, and nothing stays
//!   half-open (no socket outlives the future).
//! - The connection carries exactly the bytes written, in order, both ways; message or record
//!   boundaries mean nothing (yamux frames itself).
//! - End of stream or an error, in either direction, is the end of the session: every yamux
//!   stream on it ends, and the agent connects again with back-off. There is no resume.
//! - Authentication happens inside `connect`: a connection it returns is the hub's, already
//!   accepted for this agent.
//!
//! Two transports: the WebSocket (`GET /v1/agent/tunnel`, passes the proxies a WebSocket
//! passes) and the raw fast path (TCP, TLS when the hub has a certificate, a one-line
//! preamble carrying the JWT; no WebSocket framing or masking on the way).

use futures_util::future::BoxFuture;
use futures_util::io::{AsyncRead, AsyncWrite};

/// A connection yamux can run over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

pub type BoxedIo = Box<dyn Io>;

/// One way to reach the hub's tunnel endpoint (see the module's contract).
pub trait Transport: Send + Sync {
    /// `websocket` or `raw`, for logs and status.
    fn name(&self) -> &'static str;
    fn connect(&self) -> BoxFuture<'_, Result<BoxedIo, String>>;
}
