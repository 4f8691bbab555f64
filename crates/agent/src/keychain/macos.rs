//! macOS: the login Keychain.

use super::{KeychainBackend, KeychainChoice};
use crate::error::AgentError;
use keyring::Entry;

pub(super) fn resolve(choice: KeychainChoice, _service: &str, _user: &str) -> Result<KeychainBackend, AgentError> {
    match choice {
        KeychainChoice::Auto => Ok(KeychainBackend::MacosKeychain),
        other => Err(AgentError::KeychainUnavailable(format!(
            "--keychain {other} exists only on Linux; use --keychain auto (the macOS Keychain)"
        ))),
    }
}

pub(super) fn entry(_backend: KeychainBackend, service: &str, user: &str) -> keyring::Result<Entry> {
    Entry::new(service, user)
}

pub(super) fn failure(backend: KeychainBackend, error: &keyring::Error) -> String {
    format!("{backend} keychain failed ({error}): the macOS Keychain refused access: unlock the login keychain (`security unlock-keychain`) and allow edge-agent when asked")
}
