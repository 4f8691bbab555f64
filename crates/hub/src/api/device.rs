//! Owns device sign-in (RFC 8628): issuing a device code and user code to an agent, the
//! approval page and its API (a person with a creator or operator API key approves or
//! denies a user code, seeing first what it will approve), and redeeming an approval on the
//! token endpoint's device grant. It must never store either code in clear (only SHA-256),
//! never enroll an agent without an approval made with a key of the creator it joins (or an
//! operator's), never redeem an approval twice, and never let a creator key approve into
//! another creator.

use super::{ApiJson, AppState, Caller, Failure};
use crate::crypto::{self, now_ms, rfc3339, sha256_hex, USER_CODE_ALPHABET};
use crate::queue::millis;
use crate::store::{DeviceCodeRecord, DeviceCodeStatus, DeviceDecision, DevicePoll, NewDeviceCode};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use edge_protocol::api::{
    DeviceApproveRequest, DeviceApproveResponse, DeviceCodeRequest, DeviceCodeResponse, DeviceGrantError,
    DeviceLookupRequest, DeviceLookupResponse, DeviceTokenRequest, EnrollResponse, DEVICE_GRANT_TYPE, DEVICE_PAGE_PATH,
};
use std::time::Duration;
use tracing::{info, warn};

/// RFC 8628 §3.2's suggestion, and what a person needs to find the page and a key.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// A device code is 4 + 43 characters; anything much longer is not one of ours.
const MAX_DEVICE_CODE_CHARS: usize = 128;
const MAX_CREATOR_ID_CHARS: usize = 200;

/// How device sign-in is configured (`edge-hub serve --public-url`, and hidden knobs for
/// tests).
#[derive(Debug, Clone)]
pub struct DeviceSettings {
    pub ttl: Duration,
    pub interval: Duration,
    /// The hub's address as people's browsers reach it (`https://hub.example.com`); `None`:
    /// taken from the request's `Host` header and whether this process serves TLS.
    pub public_url: Option<String>,
    pub tls: bool,
}

impl Default for DeviceSettings {
    fn default() -> DeviceSettings {
        DeviceSettings { ttl: DEFAULT_TTL, interval: DEFAULT_INTERVAL, public_url: None, tls: false }
    }
}

/// `POST /v1/agent/device/code`.
pub async fn device_code(
    State(app): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<DeviceCodeRequest>,
) -> Result<Json<DeviceCodeResponse>, Failure> {
    super::agent_auth::parse_public_key(&request.public_key)?;
    let name = super::agent_auth::optional_text(request.name, "name", super::agent_auth::MAX_NAME_CHARS)?;
    let version = super::agent_auth::optional_text(request.version, "version", super::agent_auth::MAX_VERSION_CHARS)?;
    let page = verification_uri(&app.device, &headers)?;
    let device_code = crypto::new_device_code()?;
    let user_code = crypto::new_user_code()?;
    let now = now_ms();
    let code = NewDeviceCode {
        device_code_hash: sha256_hex(device_code.expose()),
        user_code_hash: user_code_hash(&user_code),
        public_key: request.public_key.trim().to_owned(),
        name,
        version,
        interval_ms: millis(app.device.interval),
        expires_at: now + millis(app.device.ttl),
    };
    app.store.create_device_code(&code, now).await?;
    info!(name = code.name, "device sign-in started");
    Ok(Json(DeviceCodeResponse {
        device_code: device_code.expose().to_owned(),
        verification_uri_complete: format!("{page}?user_code={user_code}"),
        user_code,
        verification_uri: page,
        expires_in: app.device.ttl.as_secs(),
        interval: app.device.interval.as_secs().max(1),
    }))
}

/// The device grant on `POST /v1/agent/token` (RFC 8628 §3.4–3.5).
pub async fn redeem(app: &AppState, body: serde_json::Value) -> Result<Json<EnrollResponse>, Failure> {
    let request: DeviceTokenRequest = serde_json::from_value(body).map_err(|e| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("a device grant needs string fields grant_type and device_code: {e}"),
        )
    })?;
    if request.grant_type != DEVICE_GRANT_TYPE {
        return Err(grant_error(
            DeviceGrantError::UnsupportedGrantType,
            format!("grant_type must be {DEVICE_GRANT_TYPE}, or left out for a signed-nonce token"),
        ));
    }
    let device_code = request.device_code.trim();
    if device_code.is_empty() || device_code.len() > MAX_DEVICE_CODE_CHARS {
        return Err(unknown_device_code());
    }
    let agent_id = crypto::new_agent_id()?;
    match app.store.poll_device_code(&sha256_hex(device_code), &agent_id, now_ms()).await? {
        DevicePoll::Enrolled(agent) => {
            info!(
                agent_id = agent.id,
                creator_id = agent.creator_id,
                name = agent.name,
                "agent enrolled by device sign-in"
            );
            Ok(Json(EnrollResponse { agent_id: agent.id, creator_id: agent.creator_id }))
        }
        DevicePoll::Pending => Err(grant_error(
            DeviceGrantError::AuthorizationPending,
            "not approved yet: keep polling at the interval while the person approves the code on the hub's page",
        )),
        DevicePoll::SlowDown { interval_ms } => Err(grant_error(
            DeviceGrantError::SlowDown,
            format!("polled too soon: wait {} s between polls from now on", (interval_ms + 999) / 1000),
        )),
        DevicePoll::Denied => Err(grant_error(
            DeviceGrantError::AccessDenied,
            "the sign-in was denied on the hub's page: start a new sign-in if that was a mistake",
        )),
        DevicePoll::Expired => Err(grant_error(
            DeviceGrantError::ExpiredToken,
            "this sign-in code expired or was already used: start a new sign-in",
        )),
        DevicePoll::Unknown => Err(unknown_device_code()),
    }
}

/// `POST /v1/device/lookup`: what approving the code would do, for the page to show first.
pub async fn lookup(
    State(app): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<DeviceLookupRequest>,
) -> Result<Json<DeviceLookupResponse>, Failure> {
    let (user_code, record) = find_code(&app, &request.user_code).await?;
    Ok(Json(DeviceLookupResponse {
        user_code,
        name: record.name,
        version: record.version,
        requested_at: rfc3339(record.created_at),
        expires_at: rfc3339(record.expires_at),
        status: record.status.as_str().to_owned(),
        creator_id: caller.creator().map(str::to_owned),
        operator: caller.creator().is_none(),
    }))
}

/// `POST /v1/device/approve`: approve (into the key's creator, or the one an operator
/// picks) or deny.
pub async fn approve(
    State(app): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<DeviceApproveRequest>,
) -> Result<Json<DeviceApproveResponse>, Failure> {
    let asked = request.creator_id.as_deref().map(str::trim).filter(|c| !c.is_empty());
    let decision = if request.approve {
        let creator_id = match (&caller, asked) {
            (Caller::Creator(own), None) => own.clone(),
            (Caller::Creator(own), Some(asked)) if asked == own => own.clone(),
            (Caller::Creator(own), Some(_)) => {
                return Err(Failure::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("this API key belongs to creator {own}; it can only approve devices into {own}"),
                ))
            }
            (Caller::Operator, None) => {
                return Err(Failure::bad_request(
                    "an operator key must pick the creator this device joins: send creatorId",
                ))
            }
            (Caller::Operator, Some(asked)) => {
                check_creator_id(asked)?;
                if !app.store.creator_known(asked).await? {
                    return Err(Failure::new(
                        StatusCode::NOT_FOUND,
                        "unknown_creator",
                        format!(
                            "this hub has no creator {asked}: check the id, or give the creator an API key first \
                             (`edge-hub api-key create --creator {asked}`)"
                        ),
                    ));
                }
                asked.to_owned()
            }
        };
        DeviceDecision::Approve { creator_id }
    } else {
        DeviceDecision::Deny
    };
    let (user_code, _) = find_code(&app, &request.user_code).await?;
    let hash = user_code_hash(&user_code);
    match app.store.decide_device_code(&hash, &decision, now_ms()).await? {
        Some(record) => {
            info!(
                name = record.name,
                creator_id = record.creator_id,
                status = record.status.as_str(),
                "device sign-in decided"
            );
            Ok(Json(DeviceApproveResponse { status: record.status.as_str().to_owned(), creator_id: record.creator_id }))
        }
        // Decided or expired between the lookup and the update.
        None => Err(already_decided()),
    }
}

/// The code, normalised, and its pending, unexpired record; the errors the page shows.
async fn find_code(app: &AppState, typed: &str) -> Result<(String, DeviceCodeRecord), Failure> {
    let user_code = normalise_user_code(typed)?;
    let Some(record) = app.store.device_code_by_user_code(&user_code_hash(&user_code)).await? else {
        warn!("device sign-in: unknown user code");
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            "unknown_user_code",
            "no sign-in has this code: check it against the device's screen, or start the sign-in again on the device",
        ));
    };
    if record.status == DeviceCodeStatus::Pending && now_ms() >= record.expires_at {
        return Err(Failure::new(
            StatusCode::GONE,
            "expired_user_code",
            "this code has expired: start the sign-in again on the device and use the new code",
        ));
    }
    Ok((user_code, record))
}

/// `abcd efgh`, `ABCD-EFGH` → `ABCD-EFGH`; anything else is refused with the expected form.
pub fn normalise_user_code(typed: &str) -> Result<String, Failure> {
    let symbols: String =
        typed.chars().filter(|c| !c.is_whitespace() && *c != '-').map(|c| c.to_ascii_uppercase()).collect();
    let valid = symbols.len() == 8 && symbols.bytes().all(|b| USER_CODE_ALPHABET.contains(&b));
    if !valid {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "invalid_user_code",
            "a code is 8 letters and digits like ABCD-EFGH (no 0, O, 1 or I): copy it from the device's screen",
        ));
    }
    Ok(format!("{}-{}", &symbols[..4], &symbols[4..]))
}

fn user_code_hash(normalised: &str) -> String {
    sha256_hex(&normalised.replace('-', ""))
}

fn check_creator_id(creator_id: &str) -> Result<(), Failure> {
    if creator_id.chars().count() > MAX_CREATOR_ID_CHARS || creator_id.chars().any(char::is_control) {
        return Err(Failure::bad_request(format!(
            "creatorId must be at most {MAX_CREATOR_ID_CHARS} characters without control characters"
        )));
    }
    Ok(())
}

fn already_decided() -> Failure {
    Failure::new(
        StatusCode::CONFLICT,
        "already_decided",
        "this code was already approved or denied, or expired meanwhile: start the sign-in again on the device if it is still waiting",
    )
}

fn grant_error(error: DeviceGrantError, message: impl Into<String>) -> Failure {
    Failure::new(StatusCode::BAD_REQUEST, error.as_str(), message)
}

fn unknown_device_code() -> Failure {
    grant_error(DeviceGrantError::InvalidGrant, "this hub issued no such device code: start a new sign-in")
}

/// The page's absolute address, as the person's browser should open it.
fn verification_uri(settings: &DeviceSettings, headers: &HeaderMap) -> Result<String, Failure> {
    if let Some(public) = &settings.public_url {
        return Ok(format!("{}{DEVICE_PAGE_PATH}", public.trim_end_matches('/')));
    }
    // Only a plain host[:port] goes into the address; anything else in Host is refused
    // rather than reflected into a link a person will open.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.len() <= 255)
        .filter(|h| h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b)))
        .ok_or_else(|| {
            Failure::bad_request(
                "the request has no usable Host header, so the hub cannot name its approval page; \
                 send one, or start the hub with --public-url",
            )
        })?;
    let scheme = if settings.tls { "https" } else { "http" };
    Ok(format!("{scheme}://{host}{DEVICE_PAGE_PATH}"))
}

// The approval page: plain files compiled in, like the operator page.
const PAGE_HTML: &str = include_str!("../../ui/device.html");
const PAGE_SCRIPT: &str = include_str!("../../ui/device.js");

pub async fn page() -> Response {
    super::console::static_file("text/html; charset=utf-8", PAGE_HTML)
}

pub async fn page_script() -> Response {
    super::console::static_file("text/javascript; charset=utf-8", PAGE_SCRIPT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_are_normalised_and_odd_ones_refused() {
        assert_eq!(normalise_user_code(" abcd-efgh ").unwrap(), "ABCD-EFGH");
        assert_eq!(normalise_user_code("WXYZ 2345").unwrap(), "WXYZ-2345");
        for bad in
            ["", "ABCD-EFG", "ABCD-EFGHJ", "ABCD-EFG0", "OBCD-EFGH", "ABCD-1FGH", "ABCD-IFGH", "ÄBCD-EFGH", "ABCD_EFGH"]
        {
            let err = normalise_user_code(bad).unwrap_err();
            assert_eq!(err.body.error, "invalid_user_code", "{bad:?}");
        }
    }

    #[test]
    fn new_user_codes_use_only_the_alphabet_and_read_as_two_groups() {
        for _ in 0..200 {
            let code = crypto::new_user_code().unwrap();
            assert_eq!(code.len(), 9);
            assert_eq!(&code[4..5], "-");
            assert_eq!(normalise_user_code(&code).unwrap(), code);
            assert!(!code.contains(['0', 'O', '1', 'I']), "{code}");
        }
    }

    #[test]
    fn the_page_address_comes_from_the_public_url_or_a_plain_host() {
        let mut settings = DeviceSettings::default();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(verification_uri(&settings, &headers).unwrap(), "http://127.0.0.1:8080/device");
        settings.tls = true;
        assert_eq!(verification_uri(&settings, &headers).unwrap(), "https://127.0.0.1:8080/device");
        headers.insert(header::HOST, "evil.example/<script>".parse().unwrap());
        assert!(verification_uri(&settings, &headers).is_err());
        settings.public_url = Some("https://hub.example.com/".into());
        assert_eq!(verification_uri(&settings, &headers).unwrap(), "https://hub.example.com/device");
    }
}
