//! Owns the hub's library error type. It must never carry a secret in a message: errors
//! end up in logs and, for 5xx answers, are replaced by a generic sentence.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error("cannot sign a token: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
}
