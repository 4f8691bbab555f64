//! Owns the HTTP surface: the router, the shared [`AppState`], JSON error answers and the
//! extractors that turn axum's plain-text rejections into [`ApiError`] bodies. It must
//! never put a storage detail or a secret into an answer: 5xx bodies say only what failed.

pub mod agent_auth;
pub mod console;
pub mod creators;
pub mod dead_letter;
pub mod device;
pub mod jobs;
pub mod known_keys;
pub mod openapi;
pub mod operator;
pub mod prototype;
pub mod rate_limit;
pub mod recipients;
pub mod ws;
pub mod ws_upgrade;

use crate::crypto::sha256_hex;
use crate::dispatch::Dispatcher;
use crate::events::Events;
use crate::jwt::JwtKeys;
use crate::queue::{JobTypes, QueueConfig};
use crate::store::{Store, StoreError};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use edge_protocol::api::{self as wire, ApiError};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Request bodies above this are refused with 413 before they are parsed.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub type AppState = Arc<App>;

pub struct App {
    pub store: Arc<dyn Store>,
    pub jwt: JwtKeys,
    /// Signs and checks the credential of the link between instances (`crate::tunnel::link`).
    pub link: crate::tunnel::link::LinkKeys,
    /// How this instance speaks TLS to another that advertises `https://`.
    pub link_tls: tokio_rustls::TlsConnector,
    /// Instances a link to which just failed: their routes are passed over for a while.
    pub gone_instances: crate::tunnel::link::GoneInstances,
    /// This instance, as the others on the database reach it.
    pub instance: crate::tunnel::link::Instance,
    pub dispatcher: Dispatcher,
    pub events: Events,
    /// Agents' acks and results, written in groups.
    pub job_writes: crate::writes::JobWrites,
    /// API keys the store recognised recently.
    pub known_keys: known_keys::KnownKeys,
    pub hb_interval: Duration,
    /// The agents' open tunnels (`crate::tunnel`).
    pub tunnels: Arc<crate::tunnel::Tunnels>,
    /// What `GET /v1/agent/tunnel/endpoints` tells agents (the raw fast path, if any).
    pub tunnel_endpoints: edge_tunnel::Endpoints,
    /// Caps this hub asks of every agent in `hello_ack` (each only lowers the person's).
    pub agent_limits: edge_protocol::HubLimits,
    pub queue: QueueConfig,
    pub job_types: JobTypes,
    pub sync_timeout: Duration,
    /// Cancelled when the hub shuts down; sessions close with 1001.
    pub shutdown: CancellationToken,
    /// WebSocket sessions outlive their HTTP request; shutdown waits on them here.
    pub sessions: TaskTracker,
    /// Request budgets per source address (credential exchanges) and per API key (job API).
    pub limiters: rate_limit::Limiters,
    /// Device sign-in's lifetimes and the approval page's address (`device`).
    pub device: device::DeviceSettings,
}

pub fn router(state: AppState) -> Router {
    // Guessing enrollment tokens or user codes, or hammering the challenge table, is bounded
    // per address.
    let credential_exchanges = Router::new()
        .route(wire::ENROLL_PATH, post(agent_auth::enroll))
        .route(wire::CHALLENGE_PATH, post(agent_auth::challenge))
        .route(wire::TOKEN_PATH, post(agent_auth::token))
        .route(wire::DEVICE_CODE_PATH, post(device::device_code))
        // The approval API is behind an API key, and also bounded per address: a user code
        // has 40 bits, and guessing one must stay hopeless for a key holder too.
        .route(wire::DEVICE_LOOKUP_PATH, post(device::lookup))
        .route(wire::DEVICE_APPROVE_PATH, post(device::approve))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), rate_limit::per_address));
    let job_api = Router::new()
        .route("/v1/jobs", post(jobs::submit_job).get(jobs::list_jobs))
        .route("/v1/jobs/batch", post(jobs::submit_batch))
        .route("/v1/jobs/{id}", get(jobs::get_job))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel_job))
        .route("/v1/jobs/{id}/attempts", get(jobs::job_attempts))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), rate_limit::per_key));
    Router::new()
        .route("/health", get(operator::health))
        .merge(credential_exchanges)
        .route(wire::WS_PATH, get(ws::agent_ws))
        .merge(job_api)
        .route("/v1/agents", get(operator::list_agents))
        .route("/v1/creators/{id}/limits", get(creators::get_limits).put(creators::put_limits))
        .route("/v1/creators/{id}/uncertain-recipients", get(recipients::list_uncertain))
        .route("/v1/dead-letter", get(dead_letter::list_dead))
        .route("/v1/dead-letter/redrive", post(dead_letter::start_redrive))
        .route("/v1/dead-letter/redrives/{id}", get(dead_letter::get_redrive))
        .route(prototype::PATH, post(prototype::submit))
        .merge(console_routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Metrics, the OpenAPI document and the operator page (see [`console`]).
fn console_routes() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(console::metrics))
        .route("/v1/openapi.json", get(console::openapi))
        .route("/", get(console::ui_root))
        .route("/ui", get(console::ui_root))
        .route("/ui/", get(console::ui_index))
        .route("/ui/app.js", get(console::ui_script))
        .route("/ui/app.css", get(console::ui_style))
        .route(wire::DEVICE_PAGE_PATH, get(device::page))
        .route("/device/device.js", get(device::page_script))
}

async fn not_found() -> Failure {
    Failure::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint: see docs/architecture.md for the API")
}

async fn method_not_allowed() -> Failure {
    Failure::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that HTTP method")
}

/// An error answer: status plus the `{"error","message"}` body every endpoint uses.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub body: ApiError,
}

impl Failure {
    pub fn new(status: StatusCode, error: &str, message: impl Into<String>) -> Failure {
        Failure { status, body: ApiError { error: error.to_owned(), message: message.into() } }
    }

    pub fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// A server-side fault. The detail goes to the log only.
    pub fn internal(context: &str, detail: &dyn std::fmt::Display) -> Failure {
        tracing::error!(error = %detail, "{context}");
        Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("{context}; see the hub's log"))
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure::internal("the hub's database failed", &e)
    }
}

impl From<crate::error::HubError> for Failure {
    fn from(e: crate::error::HubError) -> Failure {
        Failure::internal("the hub failed", &e)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// `Json<T>` whose rejections are [`ApiError`] JSON naming the problem, not axum's plain text.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Failure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> Failure {
    let status = rejection.status();
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            Failure::new(status, "payload_too_large", format!("request body is over the {MAX_BODY_BYTES}-byte limit"))
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => Failure::new(
            status,
            "unsupported_media_type",
            "send the body as JSON with `Content-Type: application/json`",
        ),
        _ => match rejection {
            JsonRejection::JsonDataError(e) => Failure::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("the JSON body does not have the expected shape: {}", e.body_text()),
            ),
            JsonRejection::JsonSyntaxError(e) => Failure::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON: {}", e.body_text()),
            ),
            other => Failure::new(StatusCode::BAD_REQUEST, "invalid_body", other.body_text()),
        },
    }
}

/// The credential of an `Authorization: Bearer …` header, if there is one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Who is calling the operator API: an operator key sees every creator, a creator key only
/// its own jobs and agents. Another creator's job or agent answers 404 exactly as a missing
/// one does, so a creator key cannot even learn that it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Operator,
    Creator(String),
}

impl Caller {
    /// The creator this caller is confined to, if any.
    pub fn creator(&self) -> Option<&str> {
        match self {
            Caller::Operator => None,
            Caller::Creator(id) => Some(id),
        }
    }

    /// May this caller see things of `creator_id`?
    pub fn may_see(&self, creator_id: &str) -> bool {
        self.creator().is_none_or(|own| own == creator_id)
    }

    /// 403 for creator keys on operator-only endpoints.
    pub fn require_operator(&self) -> Result<(), Failure> {
        match self {
            Caller::Operator => Ok(()),
            Caller::Creator(_) => Err(Failure::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this endpoint needs an operator API key; this key is scoped to one creator",
            )),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Caller::from_key(state, bearer_token(&parts.headers)).await
    }
}

impl Caller {
    /// The caller an API key stands for; 401 for no key or an unknown one.
    pub async fn from_key(state: &AppState, key: Option<&str>) -> Result<Caller, Failure> {
        let Some(key) = key else {
            return Err(Failure::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send an API key as `Authorization: Bearer <key>`; create one with `edge-hub api-key create`",
            ));
        };
        // Keys are looked up by their hash, so the raw key is never compared or stored.
        let key_hash = sha256_hex(key);
        let now = std::time::Instant::now();
        let record = match state.known_keys.get(&key_hash, now) {
            Some(record) => Some(record),
            None => {
                let record = state.store.api_key(&key_hash).await?;
                if let Some(record) = &record {
                    state.known_keys.confirmed(&key_hash, record.clone(), now);
                }
                record
            }
        };
        match record {
            Some(record) => Ok(match record.creator_id {
                None => Caller::Operator,
                Some(creator_id) => Caller::Creator(creator_id),
            }),
            None => Err(Failure::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the API key is not known to this hub; create one with `edge-hub api-key create`",
            )),
        }
    }
}

/// Proof that the request carried a valid operator (all-creator) API key.
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Caller::from_request_parts(parts, state).await?.require_operator()?;
        Ok(Operator)
    }
}
