//! Device sign-in (RFC 8628) as the agent does it: ask the hub for a device code and a user
//! code for a fresh device key, show the codes, then poll the token endpoint's device grant
//! until someone approves the code on the hub's page, denies it, or it expires.
//!
//! It owns the polling rules: wait `interval` between polls, add 5 s on `slow_down`, stop at
//! expiry measured on this machine's monotonic clock from the answer's `expires_in` (so a
//! wrong wall clock here or on the hub changes nothing). It must never show or log the
//! device code or the key, and it stores nothing: the service keeps the credentials once
//! [`DeviceLogin::wait`] returns them.

use crate::credentials::DeviceKey;
use crate::error::AgentError;
use crate::hub_client::HubClient;
use crate::hub_url::HubUrl;
use crate::secret::Secret;
use edge_protocol::api::{DeviceGrantError, EnrollResponse};
use serde::Serialize;
use std::time::Duration;
use tokio::time::Instant;

/// What `slow_down` adds to the interval (RFC 8628 §3.5).
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// The hub answered nothing usable in a poll: wait at least this long before the next.
const UNREACHABLE_RETRY: Duration = Duration::from_secs(5);

/// What to show the person: no secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceLoginCodes {
    pub hub_url: String,
    /// `XXXX-XXXX`, to type on the hub's page.
    pub user_code: String,
    pub verification_uri: String,
    /// The page with the code filled in: a link or a QR code.
    pub verification_uri_complete: String,
    pub expires_in_secs: u64,
    pub interval_secs: u64,
}

/// A started device sign-in: the codes to show, and the secrets to finish it with.
pub struct DeviceLogin {
    hub: HubUrl,
    client: HubClient,
    device_key: DeviceKey,
    device_code: Secret<String>,
    codes: DeviceLoginCodes,
    /// When this machine got the answer; expiry counts from here.
    started: Instant,
}

impl std::fmt::Debug for DeviceLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLogin").field("codes", &self.codes).field("device_code", &"MASKED").finish()
    }
}

/// The approved sign-in: the key the hub enrolled and what it answered.
pub struct DeviceApproved {
    pub hub: HubUrl,
    pub client: HubClient,
    pub device_key: DeviceKey,
    pub enrolled: EnrollResponse,
}

/// The approval page is shown to the person and opened in their browser: only an http(s)
/// address is, whatever the hub says (never `file:`, `javascript:` or an app's own scheme).
fn web_page(page: &str) -> Result<(), AgentError> {
    match url::Url::parse(page) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => Ok(()),
        _ => Err(AgentError::HubProtocol(format!(
            "the hub named {page:?} as its approval page, which is not a web address; ask the hub's operator"
        ))),
    }
}

impl DeviceLogin {
    /// Asks `hub` for codes for a new device key.
    pub async fn start(hub_url: &str, name: Option<String>) -> Result<DeviceLogin, AgentError> {
        let hub = HubUrl::parse(hub_url)?;
        let client = HubClient::new()?;
        let device_key = DeviceKey::generate()?;
        let answer = client.device_code(&hub, &device_key, name).await.map_err(|e| start_error(&hub, e))?;
        let started = Instant::now();
        if answer.device_code.is_empty() || answer.user_code.is_empty() || answer.expires_in == 0 {
            return Err(AgentError::HubProtocol("the device code answer has an empty code or lifetime".into()));
        }
        for page in [&answer.verification_uri, &answer.verification_uri_complete] {
            web_page(page)?;
        }
        let codes = DeviceLoginCodes {
            hub_url: hub.to_string(),
            user_code: answer.user_code,
            verification_uri: answer.verification_uri,
            verification_uri_complete: answer.verification_uri_complete,
            expires_in_secs: answer.expires_in,
            // RFC 8628 §3.2: 5 s when the hub names none; never faster than once a second.
            interval_secs: answer.interval.max(1),
        };
        Ok(DeviceLogin { hub, client, device_key, device_code: Secret::new(answer.device_code), codes, started })
    }

    pub fn codes(&self) -> &DeviceLoginCodes {
        &self.codes
    }

    /// Polls until the code is approved (the hub has then enrolled this device key), denied,
    /// or expired.
    pub async fn wait(self) -> Result<DeviceApproved, AgentError> {
        let deadline = self.started + Duration::from_secs(self.codes.expires_in_secs);
        let minutes = self.codes.expires_in_secs.div_ceil(60);
        let mut interval = Duration::from_secs(self.codes.interval_secs);
        let mut next = self.started + interval;
        loop {
            // A poll at or after expiry can only be refused: stop on our own clock.
            if next >= deadline {
                return Err(AgentError::DeviceLoginExpired { minutes });
            }
            tokio::time::sleep_until(next).await;
            let answer = self.client.poll_device(&self.hub, &self.device_code).await;
            next = Instant::now() + interval;
            match answer {
                Ok(Ok(enrolled)) => {
                    return Ok(DeviceApproved {
                        hub: self.hub,
                        client: self.client,
                        device_key: self.device_key,
                        enrolled,
                    })
                }
                Ok(Err(DeviceGrantError::AuthorizationPending)) => {}
                Ok(Err(DeviceGrantError::SlowDown)) => {
                    interval += SLOW_DOWN_STEP;
                    next = Instant::now() + interval;
                }
                Ok(Err(DeviceGrantError::AccessDenied)) => return Err(AgentError::DeviceLoginDenied),
                Ok(Err(DeviceGrantError::ExpiredToken | DeviceGrantError::InvalidGrant)) => {
                    return Err(AgentError::DeviceLoginExpired { minutes })
                }
                Ok(Err(DeviceGrantError::UnsupportedGrantType)) => {
                    return Err(AgentError::DeviceLoginUnsupported {
                        hub: self.hub.to_string(),
                        detail: "it refused the device grant".into(),
                    })
                }
                // A hub restarting or a network blip must not end a sign-in the person is
                // still approving: keep polling until the code expires.
                Err(AgentError::HubUnreachable(reason)) => {
                    tracing::warn!(%reason, "device sign-in: the hub did not answer a poll; trying again");
                    next = Instant::now() + interval.max(UNREACHABLE_RETRY);
                }
                Err(AgentError::HubRejected { status: 429 | 502 | 503 | 504, .. }) => {
                    interval += SLOW_DOWN_STEP;
                    next = Instant::now() + interval;
                }
                Err(other) => return Err(other),
            }
        }
    }
}

fn start_error(hub: &HubUrl, error: AgentError) -> AgentError {
    match error {
        AgentError::HubUnreachable(reason) => {
            AgentError::HubUnreachable(format!("{reason}; check the hub's address ({hub}) and that the hub is running"))
        }
        // An older hub, or not a hub: no such endpoint.
        AgentError::HubRejected { status: 404 | 405, hub_error, message } => {
            AgentError::DeviceLoginUnsupported { hub: hub.to_string(), detail: format!("{hub_error}: {message}") }
        }
        AgentError::HubProtocol(detail) => AgentError::DeviceLoginUnsupported { hub: hub.to_string(), detail },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_web_address_is_taken_as_the_approval_page() {
        for good in ["https://hub.example.com/device", "http://127.0.0.1:8787/device?user_code=ABCD-EFGH"] {
            assert!(web_page(good).is_ok(), "{good}");
        }
        for bad in ["file:///etc/passwd", "javascript:alert(1)", "smb://nas/share", "data:text/html,hi", "/device", ""]
        {
            let error = web_page(bad).unwrap_err().to_string();
            assert!(error.contains("not a web address"), "{bad}: {error}");
        }
    }
}
