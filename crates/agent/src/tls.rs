//! The one TLS client configuration (rustls + ring + Mozilla roots) shared by the hub HTTP
//! client, the WebSocket and job runners.
//!
//! The crypto provider is chosen explicitly instead of relying on a process-wide default,
//! because an embedding app (the tray) may link a second rustls provider, and rustls then
//! refuses to guess. This module must never disable certificate verification.
//!
//! Connections to the hub ([`hub_client_config`]) also trust the certificate authorities in
//! the PEM file named by `EDGE_AGENT_HUB_CA`, for a self-hosted hub whose certificate a
//! private CA signed. Only connections to the hub: job traffic (`http_request`, the browser)
//! trusts the public roots alone, whatever the hub's operator runs.

use crate::error::AgentError;
use std::sync::{Arc, OnceLock};

pub(crate) fn client_config() -> Result<Arc<rustls::ClientConfig>, AgentError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| with_roots(rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }))
        .clone()
        .map_err(|e| AgentError::Internal(format!("TLS setup failed: {e}")))
}

/// A client configuration (ring, safe protocol versions) trusting `roots`.
fn with_roots(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, String> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|builder| Arc::new(builder.with_root_certificates(roots).with_no_client_auth()))
        .map_err(|e| e.to_string())
}

/// The environment variable naming extra CAs for connections to the hub.
pub const HUB_CA_ENV: &str = "EDGE_AGENT_HUB_CA";

/// [`client_config`] plus the CAs of `EDGE_AGENT_HUB_CA`, for connections to the hub.
pub(crate) fn hub_client_config() -> Result<Arc<rustls::ClientConfig>, AgentError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let Some(path) = std::env::var_os(HUB_CA_ENV).filter(|p| !p.is_empty()) else {
                return client_config().map_err(|e| e.to_string());
            };
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            let path = std::path::PathBuf::from(path);
            let certificates = rustls::pki_types::CertificateDer::pem_file_iter(&path)
                .map_err(|e| format!("{HUB_CA_ENV}={}: {e}", path.display()))?;
            let mut added = 0;
            for certificate in certificates {
                let certificate = certificate.map_err(|e| format!("{HUB_CA_ENV}={}: {e}", path.display()))?;
                roots.add(certificate).map_err(|e| format!("{HUB_CA_ENV}={}: {e}", path.display()))?;
                added += 1;
            }
            if added == 0 {
                return Err(format!("{HUB_CA_ENV}={} holds no PEM certificate", path.display()));
            }
            with_roots(roots)
        })
        .clone()
        .map_err(|e| AgentError::Internal(format!("TLS setup for the hub failed: {e}")))
}

/// A reqwest builder for the hub, through [`hub_client_config`].
pub(crate) fn hub_http_client_builder() -> Result<reqwest::ClientBuilder, AgentError> {
    let tls = (*hub_client_config()?).clone();
    Ok(reqwest::Client::builder().use_preconfigured_tls(tls))
}

/// A reqwest builder that speaks TLS through [`client_config`].
pub(crate) fn http_client_builder() -> Result<reqwest::ClientBuilder, AgentError> {
    let tls = (*client_config()?).clone();
    Ok(reqwest::Client::builder().use_preconfigured_tls(tls))
}
