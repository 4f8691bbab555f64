//! `AgentError`, the one error type of the library's public API.
//!
//! It owns the wording people see (CLI and tray) and its JSON shape for the tray window:
//! `{"code": "...", "message": "..."}` plus `hubError` when the hub said why. It must never
//! carry a secret: messages are built from hub answers, paths and OS errors only.

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("not logged in: run `edge-agent login --hub URL --token T` first")]
    NotLoggedIn,

    #[error("hub URL {url:?} is not usable: {reason}")]
    InvalidHubUrl { url: String, reason: String },

    /// The hub answered with its `ApiError` body; `hub_error` is its stable code
    /// (`invalid_token`, `token_expired`, ...) and `message` its sentence, kept verbatim.
    #[error("the hub refused the request ({hub_error}): {message}")]
    HubRejected { status: u16, hub_error: String, message: String },

    #[error("could not reach the hub: {0}")]
    HubUnreachable(String),

    #[error("the hub answered in a way this agent does not understand: {0}")]
    HubProtocol(String),

    /// The keychain backend is missing, locked or refused access; the message says what to
    /// install or run.
    #[error("{0}")]
    KeychainUnavailable(String),

    #[error(
        "the keychain entry for profile {profile:?} is unreadable ({reason}); run `edge-agent logout` and log in again"
    )]
    CorruptCredentials { profile: String, reason: String },

    #[error("the hub no longer accepts this agent's credentials ({0}); log in again")]
    LoginRequired(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{0} needs a running tokio runtime")]
    NoRuntime(&'static str),

    /// A value the person gave for one of their settings cannot be used; the message says why.
    #[error("{0}")]
    InvalidSetting(String),

    /// A site adapter the person asked for cannot be used: unknown, unreadable, or its login
    /// page is not one of its origins; the message says which and what to do.
    #[error("{0}")]
    SiteAdapter(String),

    /// Device sign-in: the code was not approved in time (or the hub no longer knows it).
    #[error(
        "the sign-in code expired before it was approved: start the sign-in again and approve the new code on the hub's page within {minutes} minutes"
    )]
    DeviceLoginExpired { minutes: u64 },

    /// Device sign-in: someone chose Deny on the hub's page.
    #[error(
        "the sign-in was denied on the hub's page: start it again if that was a mistake, or ask whoever runs the hub"
    )]
    DeviceLoginDenied,

    /// Device sign-in: the address answers, but not as a hub that offers device sign-in.
    #[error(
        "{hub} does not offer device sign-in ({detail}): check the hub's address, or sign in with an enrollment token (`edge-agent login --hub URL --token T`)"
    )]
    DeviceLoginUnsupported { hub: String, detail: String },

    /// The person asked to cancel a job this agent does not hold (any more).
    #[error("the task {0} is not running any more (it finished, or never ran here): there is nothing to cancel")]
    JobNotRunning(String),

    #[error("internal error: {0}")]
    Internal(String),
}

impl AgentError {
    /// Stable snake_case code for the tray window and scripts.
    pub fn code(&self) -> &'static str {
        match self {
            AgentError::NotLoggedIn => "not_logged_in",
            AgentError::InvalidHubUrl { .. } => "invalid_hub_url",
            AgentError::HubRejected { .. } => "hub_rejected",
            AgentError::HubUnreachable(_) => "hub_unreachable",
            AgentError::HubProtocol(_) => "hub_protocol",
            AgentError::KeychainUnavailable(_) => "keychain_unavailable",
            AgentError::CorruptCredentials { .. } => "corrupt_credentials",
            AgentError::LoginRequired(_) => "login_required",
            AgentError::Io { .. } => "io",
            AgentError::NoRuntime(_) => "no_runtime",
            AgentError::SiteAdapter(_) => "site_adapter",
            AgentError::InvalidSetting(_) => "invalid_setting",
            AgentError::DeviceLoginExpired { .. } => "device_login_expired",
            AgentError::DeviceLoginDenied => "device_login_denied",
            AgentError::DeviceLoginUnsupported { .. } => "device_login_unsupported",
            AgentError::JobNotRunning(_) => "job_not_running",
            AgentError::Internal(_) => "internal",
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        AgentError::Io { context: context.into(), source }
    }
}

impl Serialize for AgentError {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let hub_error = match self {
            AgentError::HubRejected { hub_error, .. } => Some(hub_error.as_str()),
            _ => None,
        };
        let mut state = serializer.serialize_struct("AgentError", 2 + usize::from(hub_error.is_some()))?;
        state.serialize_field("code", self.code())?;
        state.serialize_field("message", &self.to_string())?;
        if let Some(hub_error) = hub_error {
            state.serialize_field("hubError", hub_error)?;
        }
        state.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_code_and_message_keeping_the_hubs_words() {
        let err = AgentError::HubRejected {
            status: 401,
            hub_error: "invalid_token".into(),
            message: "enrollment token is unknown or already used".into(),
        };
        let json = serde_json::to_value(&err).unwrap();
        assert_eq!(json["code"], "hub_rejected");
        assert_eq!(json["hubError"], "invalid_token");
        assert!(json["message"].as_str().unwrap().contains("already used"));

        let json = serde_json::to_value(AgentError::NotLoggedIn).unwrap();
        assert_eq!(json, serde_json::json!({"code": "not_logged_in", "message": AgentError::NotLoggedIn.to_string()}));
    }
}
