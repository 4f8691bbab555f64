//! The Edge-Agent core: everything the headless `edge-agent` binary and the tray app share.
//!
//! It owns the connection to the hub (`session`), the jobs it holds (`executor`), what runs
//! them (`runners`, over `bundles`, `browser` and `runtime`), the keychain-held
//! credentials, the agent's state and events (`state`), and log setup; `service` composes
//! them. It must never depend on a UI toolkit (the tray
//! subscribes to [`AgentEvent`]s and reads [`AgentSnapshot`]s), never write a secret to a
//! file or a log, and never redefine a wire type that `edge-protocol` already has.

// The rooms and their order, bottom to top, are listed in `tests/layering.rs`, which fails
// on any import that points up. See docs/architecture.md.
pub mod backoff;
pub mod browser;
pub mod bundles;
pub mod consent;
pub mod credentials;
pub mod device_login;
pub mod egress;
pub mod error;
pub mod executor;
pub mod expiry;
pub mod files;
pub mod hub_client;
pub mod hub_url;
pub mod keychain;
pub mod limits;
pub mod local_settings;
pub mod logging;
pub mod outbox;
pub mod pause;
pub mod runners;
pub mod runtime;
pub mod screenshots;
pub mod secret;
pub mod service;
pub mod session;
pub mod state;
mod tls;
pub mod trim;
pub mod tunnel;
pub mod updater;

pub use credentials::{CredentialStore, Credentials, DeviceKey, MemoryCredentialStore};
pub use device_login::{DeviceLogin, DeviceLoginCodes};
pub use error::AgentError;
pub use hub_url::HubUrl;
pub use keychain::{Keychain, KeychainBackend, KeychainChoice};
pub use secret::Secret;
pub use service::{
    default_data_dir, AgentEvent, AgentService, AgentSettings, AgentSnapshot, ConnectionState, JobRecord, JobRunStatus,
    LoginOutcome,
};
pub use state::StateFile;

/// `agent-x.y.z`, as in `hello` and `hb`: the version stamped into this binary
/// (`updater::version_slot`), which is the package version unless a release stamped another.
pub fn agent_version() -> String {
    format!("agent-{}", updater::running_version())
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
