//! Operating systems without a supported keychain: every call fails with a clear sentence.

use super::{KeychainBackend, KeychainChoice};
use crate::error::AgentError;
use keyring::Entry;

pub(super) fn resolve(_choice: KeychainChoice, _service: &str, _user: &str) -> Result<KeychainBackend, AgentError> {
    Err(AgentError::KeychainUnavailable(
        "this operating system has no keychain edge-agent supports (Linux, macOS and Windows do)".into(),
    ))
}

pub(super) fn entry(_backend: KeychainBackend, service: &str, user: &str) -> keyring::Result<Entry> {
    Entry::new(service, user)
}

pub(super) fn failure(backend: KeychainBackend, error: &keyring::Error) -> String {
    format!("{backend} keychain failed ({error}): no supported keychain on this operating system")
}
