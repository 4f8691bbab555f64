//! Owns the agent's credential exchanges: enrollment with a one-time token, the nonce
//! challenge, and trading a signed nonce for a session JWT (the token endpoint's device
//! grant is handed to [`super::device`]). It must never accept a token
//! or nonce twice, never log a token, and never issue a JWT without a verified signature.

use super::{ApiJson, AppState, Failure};
use crate::crypto::{self, now_ms, now_secs, sha256_hex};
use crate::store::NewAgent;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use edge_protocol::api::{
    token_signing_message, ChallengeRequest, ChallengeResponse, EnrollRequest, EnrollResponse, TokenRequest,
    TokenResponse,
};
use tracing::{info, warn};

/// How long a challenge nonce may be signed and redeemed.
pub const NONCE_TTL_SECS: i64 = 60;

pub(super) const MAX_NAME_CHARS: usize = 200;
pub(super) const MAX_VERSION_CHARS: usize = 64;

pub async fn enroll(
    State(app): State<AppState>,
    ApiJson(request): ApiJson<EnrollRequest>,
) -> Result<Json<EnrollResponse>, Failure> {
    parse_public_key(&request.public_key)?;
    let name = optional_text(request.name, "name", MAX_NAME_CHARS)?;
    let version = optional_text(request.version, "version", MAX_VERSION_CHARS)?;
    let agent = NewAgent { id: crypto::new_agent_id()?, public_key: request.public_key, name, version };
    let token_hash = sha256_hex(request.token.trim());
    match app.store.enroll_agent(&token_hash, agent, now_ms()).await? {
        Some(agent) => {
            info!(agent_id = agent.id, creator_id = agent.creator_id, name = agent.name, "agent enrolled");
            Ok(Json(EnrollResponse { agent_id: agent.id, creator_id: agent.creator_id }))
        }
        None => {
            warn!("enrollment refused: token unknown, used or expired");
            Err(Failure::new(
                StatusCode::UNAUTHORIZED,
                "invalid_enrollment_token",
                "enrollment token is unknown, used or expired: create a new one with `edge-hub enroll-token create`",
            ))
        }
    }
}

pub async fn challenge(
    State(app): State<AppState>,
    ApiJson(request): ApiJson<ChallengeRequest>,
) -> Result<Json<ChallengeResponse>, Failure> {
    if app.store.agent(&request.agent_id).await?.is_none() {
        return Err(unknown_agent());
    }
    let nonce = crypto::new_nonce()?;
    let now = now_ms();
    let expires_at_ms = now + NONCE_TTL_SECS * 1000;
    app.store.create_nonce(&request.agent_id, &nonce, expires_at_ms, now).await?;
    Ok(Json(ChallengeResponse { nonce, expires_at: expires_at_ms / 1000 }))
}

/// `POST /v1/agent/token`: a signed nonce buys a session JWT; a body with `grant_type` is
/// the device grant instead ([`super::device::redeem`]). Told apart by that one field, so
/// agents that predate device sign-in send exactly what they always sent.
pub async fn token(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Response, Failure> {
    if body.get("grant_type").is_some() {
        return Ok(super::device::redeem(&app, body).await?.into_response());
    }
    let request: TokenRequest = serde_json::from_value(body).map_err(|e| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("the JSON body does not have the expected shape: {e}"),
        )
    })?;
    Ok(signed_nonce_token(&app, request).await?.into_response())
}

async fn signed_nonce_token(app: &AppState, request: TokenRequest) -> Result<Json<TokenResponse>, Failure> {
    let Some(agent) = app.store.agent(&request.agent_id).await? else {
        return Err(unknown_agent());
    };
    // The nonce is spent before the signature is checked, so each nonce buys exactly one
    // attempt: a wrong signature cannot be retried against the same challenge.
    if !app.store.consume_nonce(&agent.id, &request.nonce, now_ms()).await? {
        warn!(agent_id = agent.id, "token refused: nonce unknown, used or expired");
        return Err(Failure::new(
            StatusCode::UNAUTHORIZED,
            "invalid_nonce",
            "the nonce is unknown, already used or expired: ask /v1/agent/challenge for a new one",
        ));
    }
    let key = parse_public_key(&agent.public_key)
        .map_err(|_| Failure::internal("the stored public key of this agent is unreadable", &agent.id))?;
    let signature = STANDARD.decode(request.signature.trim()).ok().and_then(|bytes| Signature::from_slice(&bytes).ok());
    let verified = signature.is_some_and(|signature| {
        key.verify_strict(&token_signing_message(&agent.id, &request.nonce), &signature).is_ok()
    });
    if !verified {
        warn!(agent_id = agent.id, "token refused: bad signature");
        return Err(Failure::new(
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            "the signature does not verify with this agent's enrolled public key: sign the nonce with the device key, or log in again",
        ));
    }
    let (token, expires_at) = app.jwt.issue(&agent.id, &agent.creator_id, now_secs())?;
    info!(agent_id = agent.id, expires_at, "session token issued");
    Ok(Json(TokenResponse { token, expires_at }))
}

fn unknown_agent() -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        "unknown_agent",
        "no agent with this id is enrolled on this hub: log in again with a new enrollment token",
    )
}

pub(super) fn parse_public_key(encoded: &str) -> Result<VerifyingKey, Failure> {
    let invalid = |why: &str| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "invalid_public_key",
            format!("publicKey must be a 32-byte Ed25519 public key in standard base64: {why}"),
        )
    };
    let bytes = STANDARD.decode(encoded.trim()).map_err(|_| invalid("it is not valid base64"))?;
    let bytes: [u8; 32] =
        bytes.as_slice().try_into().map_err(|_| invalid(&format!("it decodes to {} bytes", bytes.len())))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| invalid("it is not a valid curve point"))
}

pub(super) fn optional_text(value: Option<String>, field: &str, max_chars: usize) -> Result<Option<String>, Failure> {
    let Some(value) = value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if value.chars().count() > max_chars || value.chars().any(char::is_control) {
        return Err(Failure::bad_request(format!(
            "{field} must be at most {max_chars} characters without control characters"
        )));
    }
    Ok(Some(value))
}
