//! JSON bodies of the hub's HTTP API that the agent calls (enrollment and tokens), plus the
//! error body every hub endpoint returns. Operator-facing job bodies live in the hub crate.

use serde::{Deserialize, Serialize};

pub const ENROLL_PATH: &str = "/v1/agent/enroll";
pub const CHALLENGE_PATH: &str = "/v1/agent/challenge";
pub const TOKEN_PATH: &str = "/v1/agent/token";
pub const WS_PATH: &str = "/v1/agent/ws";
/// Durable run reports (agent JWT as `Authorization: Bearer`).
pub const NOTIFY_PATH: &str = "/edge/notify";
/// The hub's current TUF `root.json`, fetched by the agent right after enrollment.
pub const BUNDLE_ROOT_PATH: &str = "/v1/bundles/root.json";
/// Base of the TUF metadata the agent refreshes through `tough`.
pub const BUNDLE_METADATA_PATH: &str = "/v1/bundles/metadata/";
/// Base of the bundle zips (consistent-snapshot names).
pub const BUNDLE_TARGETS_PATH: &str = "/v1/bundles/targets/";
/// Agent releases (agent JWT): `<channel>/metadata/<file>` is a channel's TUF view, signed by
/// the same root as bundles; `targets/<channel>/<platform>/<arch>/<sha256>.<version>` the
/// binaries.
pub const RELEASES_PATH: &str = "/v1/releases/";
/// `POST` an [`UpdateFailedRequest`] (agent JWT): a new version did not reach `hb_ack` in its
/// probation window and the agent went back to the previous one.
pub const UPDATE_FAILED_PATH: &str = "/v1/releases/failed";

/// WebSocket close codes the hub uses when it refuses or ends a session (4000–4999 are
/// the application range of RFC 6455).
pub mod close_code {
    /// The JWT is expired: get a fresh one from `/v1/agent/token` and reconnect.
    pub const TOKEN_EXPIRED: u16 = 4401;
    /// The JWT is forged, malformed or for an unknown agent: log in again.
    pub const TOKEN_INVALID: u16 = 4403;
    /// The agent's protocol version is too old for this hub: update the agent.
    pub const UNSUPPORTED_VERSION: u16 = 4426;
    /// The same agent connected again; this older session is closed.
    pub const REPLACED: u16 = 4409;
}

/// `POST /v1/agent/enroll`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The one-time enrollment token from `edge-hub enroll-token create`.
    pub token: String,
    /// Ed25519 public key, 32 bytes, base64 (standard, padded).
    #[serde(rename = "publicKey")]
    pub public_key: String,
    /// A name the person recognises (the machine's host name by default).
    #[serde(default)]
    pub name: Option<String>,
    /// Agent build, `agent-x.y.z`.
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    #[serde(rename = "agentId")]
    pub agent_id: String,
    #[serde(rename = "creatorId")]
    pub creator_id: String,
}

/// `POST /v1/agent/challenge`: ask for a fresh single-use nonce to sign.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChallengeRequest {
    #[serde(rename = "agentId")]
    pub agent_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChallengeResponse {
    pub nonce: String,
    /// Unix seconds after which the nonce is no longer accepted.
    #[serde(rename = "expiresAt")]
    pub expires_at: i64,
}

/// `POST /v1/agent/token`: prove possession of the device key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRequest {
    #[serde(rename = "agentId")]
    pub agent_id: String,
    pub nonce: String,
    /// Ed25519 signature over [`token_signing_message`], base64.
    pub signature: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    /// HS256 JWT with claims `agentId`, `creatorId`, `exp` (≤ 15 minutes ahead).
    pub token: String,
    #[serde(rename = "expiresAt")]
    pub expires_at: i64,
}

/// The exact bytes the device key signs for a token. Domain-separated so a signature made
/// for this purpose can never be replayed as anything else.
pub fn token_signing_message(agent_id: &str, nonce: &str) -> Vec<u8> {
    format!("edge-agent/token/v1\n{agent_id}\n{nonce}").into_bytes()
}

/// Claims of the agent JWT, the prototype's names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentClaims {
    #[serde(rename = "agentId")]
    pub agent_id: String,
    #[serde(rename = "creatorId")]
    pub creator_id: String,
    pub exp: i64,
    #[serde(default)]
    pub iat: i64,
}

/// Body of every 4xx/5xx answer from the hub: a stable machine code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// e.g. `invalid_token`, `token_expired`, `bad_request`, `not_found`, `unauthorized`.
    pub error: String,
    pub message: String,
}

/// `POST /edge/notify`: the outcome of one bundle run, the prototype's field names.
/// Sent until the hub answers 2xx; the hub records a `run_id` once and acknowledges
/// repeats without recording them again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotifyRequest {
    pub run_id: String,
    pub job_id: String,
    /// `succeeded` or `failed`.
    pub status: String,
    pub stdout: String,
    pub stderr: String,
    /// `None` when the process never ran or was killed by a signal.
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The run's `job_result` as the WebSocket carries it (`data` on success, `err` on
    /// failure). The hub finishes the job from it under the agent's lease, exactly as from
    /// the frame, so a run whose frame was lost in a crash still completes its job. Older
    /// agents leave both out; the run is then only recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::JobError>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotifyResponse {
    pub run_id: String,
    /// True when this run was already recorded (a replay after a lost acknowledgement).
    pub duplicate: bool,
}

/// `POST /v1/agent/device/code`: start a device sign-in (RFC 8628 §3.1). The agent's own
/// Ed25519 key travels here, as with enroll, so the private half never leaves the machine.
pub const DEVICE_CODE_PATH: &str = "/v1/agent/device/code";
/// The hub's approval page, the `verification_uri` of a device code.
pub const DEVICE_PAGE_PATH: &str = "/device";
/// `POST /v1/device/lookup` (API key): what a user code would approve, before approval.
pub const DEVICE_LOOKUP_PATH: &str = "/v1/device/lookup";
/// `POST /v1/device/approve` (API key): approve or deny a user code.
pub const DEVICE_APPROVE_PATH: &str = "/v1/device/approve";
/// `grant_type` of the device grant on [`TOKEN_PATH`] (RFC 8628 §3.4).
pub const DEVICE_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// `POST /v1/agent/device/code`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceCodeRequest {
    /// Ed25519 public key, 32 bytes, base64 (standard, padded), as in [`EnrollRequest`].
    #[serde(rename = "publicKey")]
    pub public_key: String,
    /// Shown on the approval page so the person recognises the machine.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
}

/// The answer to [`DeviceCodeRequest`], RFC 8628 §3.2's names.
#[derive(Clone, Serialize, Deserialize)]
pub struct DeviceCodeResponse {
    /// The agent's secret for polling [`TOKEN_PATH`]; never shown to anyone.
    pub device_code: String,
    /// What the person types on the approval page: `XXXX-XXXX`.
    pub user_code: String,
    pub verification_uri: String,
    /// `verification_uri` with `?user_code=…`, for a link or a QR code.
    pub verification_uri_complete: String,
    /// Seconds from now until both codes stop working.
    pub expires_in: u64,
    /// Seconds the agent waits between two polls.
    pub interval: u64,
}

impl std::fmt::Debug for DeviceCodeResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCodeResponse")
            .field("device_code", &"MASKED")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("expires_in", &self.expires_in)
            .field("interval", &self.interval)
            .finish()
    }
}

/// `POST /v1/agent/token` with the device grant (RFC 8628 §3.4). Told apart from a
/// [`TokenRequest`] by the presence of `grant_type`, so older agents keep working. Answered
/// with an [`EnrollResponse`] once approved, exactly once.
#[derive(Clone, Serialize, Deserialize)]
pub struct DeviceTokenRequest {
    /// [`DEVICE_GRANT_TYPE`].
    pub grant_type: String,
    pub device_code: String,
}

impl std::fmt::Debug for DeviceTokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceTokenRequest")
            .field("grant_type", &self.grant_type)
            .field("device_code", &"MASKED")
            .finish()
    }
}

/// The `error` codes of a device-grant poll (RFC 8628 §3.5, RFC 6749 §5.2), answered 400 in
/// an [`ApiError`] body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum DeviceGrantError {
    /// Not approved yet: wait `interval` and poll again.
    #[error("the sign-in is not approved yet")]
    AuthorizationPending,
    /// Polled too soon: wait, and add 5 seconds to the interval from now on.
    #[error("polled too soon: the interval grows by 5 seconds")]
    SlowDown,
    /// The person denied the device on the approval page.
    #[error("the sign-in was denied on the hub's approval page")]
    AccessDenied,
    /// The code ran out, or was already redeemed: start a new sign-in.
    #[error("the sign-in code expired or was already used")]
    ExpiredToken,
    /// The device code is unknown to this hub.
    #[error("the device code is unknown to this hub")]
    InvalidGrant,
    /// `grant_type` is not [`DEVICE_GRANT_TYPE`].
    #[error("this grant_type is not supported")]
    UnsupportedGrantType,
}

impl DeviceGrantError {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceGrantError::AuthorizationPending => "authorization_pending",
            DeviceGrantError::SlowDown => "slow_down",
            DeviceGrantError::AccessDenied => "access_denied",
            DeviceGrantError::ExpiredToken => "expired_token",
            DeviceGrantError::InvalidGrant => "invalid_grant",
            DeviceGrantError::UnsupportedGrantType => "unsupported_grant_type",
        }
    }

    pub fn parse(code: &str) -> Option<DeviceGrantError> {
        [
            DeviceGrantError::AuthorizationPending,
            DeviceGrantError::SlowDown,
            DeviceGrantError::AccessDenied,
            DeviceGrantError::ExpiredToken,
            DeviceGrantError::InvalidGrant,
            DeviceGrantError::UnsupportedGrantType,
        ]
        .into_iter()
        .find(|e| e.as_str() == code)
    }
}

/// `POST /v1/device/lookup` (API key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceLookupRequest {
    pub user_code: String,
}

/// What the approval page shows before the person decides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceLookupResponse {
    /// The code, normalised (`XXXX-XXXX`).
    pub user_code: String,
    pub name: Option<String>,
    pub version: Option<String>,
    /// RFC 3339, when the device asked.
    pub requested_at: String,
    /// RFC 3339, when the code stops working.
    pub expires_at: String,
    /// `pending`, `approved`, `denied` or `used`.
    pub status: String,
    /// The creator the device will join: the key's own for a creator key; `None` for an
    /// operator key, which must pick one.
    pub creator_id: Option<String>,
    /// True for an operator key (it must send `creatorId` to approve).
    pub operator: bool,
}

/// `POST /v1/device/approve` (API key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceApproveRequest {
    pub user_code: String,
    /// Required with an operator key when approving; a creator key may only name its own.
    #[serde(rename = "creatorId", default)]
    pub creator_id: Option<String>,
    pub approve: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceApproveResponse {
    /// `approved` or `denied`.
    pub status: String,
    pub creator_id: Option<String>,
}

/// `POST /v1/releases/failed`: this agent installed `version`, which did not reach `hb_ack`
/// within its probation window, and restored `previous_version`. The hub counts distinct
/// agents per release and pauses the release past its threshold. Added in agent 0.2 (an
/// HTTP call, so no frame changes; an older hub answers 404 and the agent keeps the report).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateFailedRequest {
    pub channel: String,
    pub platform: String,
    pub arch: String,
    /// The version that failed.
    pub version: String,
    /// The version running again.
    pub previous_version: String,
    /// In words, for the operator (e.g. "no hb_ack within 60 s of its first start").
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateFailedResponse {
    /// Distinct agents that reported this release as failed, this one included.
    pub failures: u32,
    /// True when the release is paused (by this report or before).
    pub paused: bool,
}
