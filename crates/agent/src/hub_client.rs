//! The hub's HTTP API as the agent uses it: enrollment (by token or device sign-in) and
//! device-key tokens.
//!
//! It owns turning hub answers into [`AgentError`]s that keep the hub's words. It must never
//! log a request or response body (they carry the enrollment token, signatures and JWTs).

use crate::credentials::{Credentials, DeviceKey};
use crate::error::AgentError;
use crate::hub_url::HubUrl;
use crate::secret::Secret;
use edge_protocol::api::{
    token_signing_message, ApiError, ChallengeRequest, ChallengeResponse, DeviceCodeRequest, DeviceCodeResponse,
    DeviceGrantError, DeviceTokenRequest, EnrollRequest, EnrollResponse, TokenRequest, TokenResponse, CHALLENGE_PATH,
    DEVICE_CODE_PATH, DEVICE_GRANT_TYPE, ENROLL_PATH, TOKEN_PATH,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const HUB_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A JWT and when the hub says it expires.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub jwt: Secret<String>,
    pub expires_at_unix: i64,
    pub obtained_at_unix: i64,
}

impl AccessToken {
    /// When to get the next token: at 80% of its lifetime, and never later than 60 s
    /// before expiry, so a reconnect always has a token the hub still accepts.
    pub fn refresh_at_unix(&self) -> i64 {
        let lifetime = (self.expires_at_unix - self.obtained_at_unix).max(0);
        let at_80_percent = self.obtained_at_unix + lifetime * 4 / 5;
        at_80_percent.min(self.expires_at_unix - 60).max(self.obtained_at_unix)
    }

    pub fn needs_refresh(&self, now_unix: i64) -> bool {
        now_unix >= self.refresh_at_unix()
    }
}

#[derive(Clone)]
pub struct HubClient {
    http: reqwest::Client,
}

impl HubClient {
    pub fn new() -> Result<HubClient, AgentError> {
        let http = crate::tls::hub_http_client_builder()?
            .timeout(HUB_REQUEST_TIMEOUT)
            .user_agent(crate::agent_version())
            // The hub API never redirects; following one could send a signature elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| AgentError::Internal(format!("HTTP client setup failed: {e}")))?;
        Ok(HubClient { http })
    }

    pub async fn enroll(
        &self,
        hub: &HubUrl,
        enrollment_token: &Secret<String>,
        device_key: &DeviceKey,
        name: Option<String>,
    ) -> Result<EnrollResponse, AgentError> {
        let request = EnrollRequest {
            token: enrollment_token.expose().clone(),
            public_key: device_key.public_key_base64(),
            name,
            version: Some(crate::agent_version()),
        };
        self.post(hub, ENROLL_PATH, &request).await
    }

    /// `POST /v1/agent/device/code`: start a device sign-in with this device key.
    pub async fn device_code(
        &self,
        hub: &HubUrl,
        device_key: &DeviceKey,
        name: Option<String>,
    ) -> Result<DeviceCodeResponse, AgentError> {
        let request = DeviceCodeRequest {
            public_key: device_key.public_key_base64(),
            name,
            version: Some(crate::agent_version()),
        };
        self.post(hub, DEVICE_CODE_PATH, &request).await
    }

    /// One poll of the device grant: `Ok(Ok(enrolled))` once approved, `Ok(Err(code))` for
    /// the RFC 8628 answers (pending, slow_down, denied, expired…), `Err` for anything else.
    pub async fn poll_device(
        &self,
        hub: &HubUrl,
        device_code: &Secret<String>,
    ) -> Result<Result<EnrollResponse, DeviceGrantError>, AgentError> {
        let request =
            DeviceTokenRequest { grant_type: DEVICE_GRANT_TYPE.to_owned(), device_code: device_code.expose().clone() };
        match self.post(hub, TOKEN_PATH, &request).await {
            Ok(enrolled) => Ok(Ok(enrolled)),
            Err(AgentError::HubRejected { status: 400, hub_error, message }) => {
                match DeviceGrantError::parse(&hub_error) {
                    Some(code) => Ok(Err(code)),
                    None => Err(AgentError::HubRejected { status: 400, hub_error, message }),
                }
            }
            Err(other) => Err(other),
        }
    }

    /// `GET /v1/bundles/root.json`: `None` when the hub has no bundle repository.
    pub async fn bundle_root(&self, hub: &HubUrl) -> Result<Option<Vec<u8>>, AgentError> {
        let response = self
            .http
            .get(hub.http_endpoint(edge_protocol::api::BUNDLE_ROOT_PATH))
            .send()
            .await
            .map_err(|e| AgentError::HubUnreachable(describe_reqwest_error(&e)))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(AgentError::HubProtocol(format!("root.json answered {}", response.status())));
        }
        let bytes = response.bytes().await.map_err(|e| AgentError::HubUnreachable(describe_reqwest_error(&e)))?;
        if bytes.len() > 1024 * 1024 {
            return Err(AgentError::HubProtocol("root.json is over 1 MiB".into()));
        }
        Ok(Some(bytes.to_vec()))
    }

    /// Challenge, sign, token. A 401/403 comes back as [`AgentError::LoginRequired`]: the
    /// agent is revoked or its key is not the one the hub knows.
    pub async fn fetch_token(&self, credentials: &Credentials) -> Result<AccessToken, AgentError> {
        let hub = HubUrl::parse(&credentials.hub_url)?;
        let challenge: ChallengeResponse = self
            .post(&hub, CHALLENGE_PATH, &ChallengeRequest { agent_id: credentials.agent_id.clone() })
            .await
            .map_err(into_login_required)?;
        let message = token_signing_message(&credentials.agent_id, &challenge.nonce);
        let request = TokenRequest {
            agent_id: credentials.agent_id.clone(),
            nonce: challenge.nonce,
            signature: credentials.device_key.sign_base64(&message),
        };
        let response: TokenResponse = self.post(&hub, TOKEN_PATH, &request).await.map_err(into_login_required)?;
        Ok(AccessToken {
            jwt: Secret::new(response.token),
            expires_at_unix: response.expires_at,
            obtained_at_unix: unix_now(),
        })
    }

    async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        hub: &HubUrl,
        path: &str,
        body: &Req,
    ) -> Result<Resp, AgentError> {
        let response = self
            .http
            .post(hub.http_endpoint(path))
            .json(body)
            .send()
            .await
            .map_err(|e| AgentError::HubUnreachable(describe_reqwest_error(&e)))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| AgentError::HubUnreachable(describe_reqwest_error(&e)))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| AgentError::HubProtocol(format!("unexpected answer to {path}: {e}")));
        }
        Err(match serde_json::from_slice::<ApiError>(&bytes) {
            Ok(api) => AgentError::HubRejected { status: status.as_u16(), hub_error: api.error, message: api.message },
            Err(_) => AgentError::HubRejected {
                status: status.as_u16(),
                hub_error: format!("http_{}", status.as_u16()),
                message: format!("{path} answered {status} without an error body (is this an edge-hub?)"),
            },
        })
    }
}

fn into_login_required(error: AgentError) -> AgentError {
    match error {
        AgentError::HubRejected { status: 401 | 403, hub_error, message } => {
            AgentError::LoginRequired(format!("{hub_error}: {message}"))
        }
        other => other,
    }
}

/// reqwest's Display names the URL; ours never carry secrets in the URL, but the chain of
/// sources is what says *why* (connection refused, DNS, TLS).
pub(crate) fn describe_reqwest_error(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An access token for the HTTP calls made beside the WebSocket (run reports, bundle
/// metadata and downloads): fetched when first needed, fetched again before it expires or
/// after the hub refused it. Clones share the token.
#[derive(Clone)]
pub struct TokenCache {
    hub: HubClient,
    credentials: Credentials,
    token: std::sync::Arc<tokio::sync::Mutex<Option<AccessToken>>>,
}

impl TokenCache {
    pub fn new(hub: HubClient, credentials: Credentials) -> TokenCache {
        TokenCache { hub, credentials, token: Default::default() }
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// A JWT the hub should still accept.
    pub async fn jwt(&self) -> Result<Secret<String>, AgentError> {
        let mut token = self.token.lock().await;
        if let Some(current) = token.as_ref().filter(|t| !t.needs_refresh(unix_now())) {
            return Ok(current.jwt.clone());
        }
        let fresh = self.hub.fetch_token(&self.credentials).await?;
        let jwt = fresh.jwt.clone();
        *token = Some(fresh);
        Ok(jwt)
    }

    /// After a 401: the next [`TokenCache::jwt`] fetches a new token.
    pub async fn forget(&self) {
        *self.token.lock().await = None;
    }
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_happens_at_80_percent_or_a_minute_before_expiry() {
        let token = |obtained, expires| AccessToken {
            jwt: Secret::new(String::new()),
            expires_at_unix: expires,
            obtained_at_unix: obtained,
        };
        // 15 minutes: 80% (720 s) comes before expiry-60 (840 s).
        assert_eq!(token(0, 900).refresh_at_unix(), 720);
        // 2 minutes: 80% is 96 s but expiry-60 is 60 s.
        assert_eq!(token(0, 120).refresh_at_unix(), 60);
        // Already-expired or tiny lifetimes refresh at once.
        assert!(token(100, 90).needs_refresh(100));
        assert!(!token(0, 900).needs_refresh(719));
        assert!(token(0, 900).needs_refresh(720));
    }
}
