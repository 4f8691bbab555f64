//! The one TLS client configuration (rustls + ring + Mozilla roots) shared by the hub HTTP
//! client, the WebSocket and job runners.
//!
//! The crypto provider is chosen explicitly instead of relying on a process-wide default,
//! because an embedding app (the tray) may link a second rustls provider, and rustls then
//! refuses to guess. This module must never disable certificate verification.

use crate::error::AgentError;
use std::sync::{Arc, OnceLock};

pub(crate) fn client_config() -> Result<Arc<rustls::ClientConfig>, AgentError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map(|builder| Arc::new(builder.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| AgentError::Internal(format!("TLS setup failed: {e}")))
}

/// A reqwest builder that speaks TLS through [`client_config`].
pub(crate) fn http_client_builder() -> Result<reqwest::ClientBuilder, AgentError> {
    let tls = (*client_config()?).clone();
    Ok(reqwest::Client::builder().use_preconfigured_tls(tls))
}
