//! The Edge-Agent hub as a library: the `edge-hub` binary is a thin CLI over this, and
//! tests start the same hub in-process.
//!
//! This crate owns agent enrollment and authentication, the agents' WebSocket sessions,
//! the job queue (leases, retries, dead letter, limits, dedupe ledger), dispatch and the
//! operator API, with all state in a [`store::Store`] (SQLite or PostgreSQL). Wire shapes
//! come from `edge-protocol` and must never be redefined here. It must never store or log
//! a credential in clear: tokens and keys are kept as SHA-256 hashes and carried in
//! [`Secret`].

pub mod api;
pub mod blobs;
pub mod bundle_cli;
pub mod bundles;
pub mod crypto;
pub mod dispatch;
pub mod error;
pub mod events;
pub mod jwt;
pub mod metrics;
pub mod private_files;
pub mod queue;
pub mod release_cli;
pub mod releases;
pub mod secret;
pub mod server;
pub mod store;
pub mod sweeper;
pub mod tls;
pub mod tunnel;
pub mod writes;

pub use error::HubError;
pub use queue::{JobTypeSpec, JobTypes, QueueConfig};
pub use secret::Secret;
pub use server::{open_store, start, HubConfig, RunningHub};

use std::path::PathBuf;
use std::time::Duration;
use store::Store;

/// Longest an enrollment token may live: a forgotten token should not stay usable for long.
pub const MAX_ENROLLMENT_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// `sqlite://<data dir>/edge-hub/hub.db`, falling back to the working directory when the
/// platform has no data directory.
pub fn default_database_url() -> String {
    let dir = dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("edge-hub");
    format!("sqlite://{}", dir.join("hub.db").display())
}

/// Creates a single-use enrollment token for `creator_id`, valid for `ttl`. Only its hash
/// is stored; the returned value is the only copy.
pub async fn create_enrollment_token(store: &dyn Store, creator_id: &str, ttl: Duration) -> Result<Secret, HubError> {
    let creator_id = validate_creator_id(creator_id)?;
    if ttl > MAX_ENROLLMENT_TOKEN_TTL {
        return Err(HubError::Config("an enrollment token may live at most 30 days (720 hours)".to_owned()));
    }
    let token = crypto::new_enrollment_token()?;
    let now = crypto::now_ms();
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    store
        .create_enrollment_token(&crypto::sha256_hex(token.expose()), creator_id, now.saturating_add(ttl_ms), now)
        .await?;
    Ok(token)
}

/// Creates an operator API key (every creator). Only its hash is stored; the returned
/// value is the only copy.
pub async fn create_api_key(store: &dyn Store, name: Option<&str>) -> Result<Secret, HubError> {
    create_scoped_api_key(store, name, None).await
}

/// Creates an API key for one creator's jobs and agents (`Some`), or an operator key
/// (`None`). Only its hash is stored; the returned value is the only copy.
pub async fn create_scoped_api_key(
    store: &dyn Store,
    name: Option<&str>,
    creator_id: Option<&str>,
) -> Result<Secret, HubError> {
    let creator_id = creator_id.map(validate_creator_id).transpose()?;
    let key = crypto::new_api_key()?;
    store.create_api_key(&crypto::sha256_hex(key.expose()), name, creator_id, crypto::now_ms()).await?;
    Ok(key)
}

/// Every API key, named by the start of its hash (never the key itself).
pub async fn list_api_keys(store: &dyn Store) -> Result<Vec<store::ApiKeySummary>, HubError> {
    Ok(store.list_api_keys().await?)
}

/// Deletes the API key `id` names (an id from [`list_api_keys`], or a longer start of the
/// key's hash). A running hub may trust a key it recognised for up to
/// [`api::known_keys::KEY_RECHECK`] after it is revoked.
pub async fn revoke_api_key(store: &dyn Store, id: &str) -> Result<(), HubError> {
    let id = id.trim().to_ascii_lowercase();
    match store.revoke_api_key(&id).await? {
        store::RevokeOutcome::Revoked => Ok(()),
        store::RevokeOutcome::NotFound => {
            Err(HubError::Config(format!("no API key has the id {id:?}: see `edge-hub api-key list` for the ids")))
        }
        store::RevokeOutcome::Ambiguous => Err(HubError::Config(format!(
            "more than one API key's id starts with {id:?}: give the whole id from `edge-hub api-key list`"
        ))),
    }
}

fn validate_creator_id(creator_id: &str) -> Result<&str, HubError> {
    let creator_id = creator_id.trim();
    if creator_id.is_empty()
        || creator_id.len() > 128
        || creator_id.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(HubError::Config("the creator id must be 1–128 characters without spaces".to_owned()));
    }
    Ok(creator_id)
}
