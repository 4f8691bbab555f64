//! The Edge-Agent core: everything the headless `edge-agent` binary and the tray app share.
//!
//! It owns the connection to the hub, the job runners, the keychain-held credentials, the
//! agent's state and events, and log setup. It must never depend on a UI toolkit (the tray
//! subscribes to [`AgentEvent`]s and reads [`AgentSnapshot`]s), never write a secret to a
//! file or a log, and never redefine a wire type that `edge-protocol` already has.

pub mod browser;
pub mod bundles;
pub mod connection;
pub mod credentials;
pub mod error;
pub mod hub_url;
pub mod jobs;
pub mod keychain;
pub mod logging;
pub mod runtime;
pub mod secret;
pub mod service;
pub mod state_file;

pub(crate) mod hub_client;
mod tls;

pub use credentials::{CredentialStore, Credentials, DeviceKey, MemoryCredentialStore};
pub use error::AgentError;
pub use hub_url::HubUrl;
pub use keychain::{Keychain, KeychainBackend, KeychainChoice};
pub use secret::Secret;
pub use service::{
    default_data_dir, AgentEvent, AgentService, AgentSettings, AgentSnapshot, ConnectionState, JobRecord, JobRunStatus,
    LoginOutcome,
};
pub use state_file::StateFile;

/// `agent-x.y.z`, as in `hello` and `hb`.
pub fn agent_version() -> String {
    format!("agent-{}", env!("CARGO_PKG_VERSION"))
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
