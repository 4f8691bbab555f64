//! Windows: Credential Manager (generic credentials).

use super::{KeychainBackend, KeychainChoice};
use crate::error::AgentError;
use keyring::Entry;

pub(super) fn resolve(choice: KeychainChoice, _service: &str, _user: &str) -> Result<KeychainBackend, AgentError> {
    match choice {
        KeychainChoice::Auto => Ok(KeychainBackend::WindowsCredentialManager),
        other => Err(AgentError::KeychainUnavailable(format!(
            "--keychain {other} exists only on Linux; use --keychain auto (Windows Credential Manager)"
        ))),
    }
}

pub(super) fn entry(_backend: KeychainBackend, service: &str, user: &str) -> keyring::Result<Entry> {
    Entry::new(service, user)
}

pub(super) fn failure(backend: KeychainBackend, error: &keyring::Error) -> String {
    format!("{backend} keychain failed ({error}): Windows Credential Manager refused access: run edge-agent as the logged-in user (not a service account without a profile)")
}
