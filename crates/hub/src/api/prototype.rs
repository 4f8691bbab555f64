//! Owns the residential-proxy prototype's job route, `POST /jobs[?sync=true]`, served beside
//! `/v1/jobs` for the prototype's internal services: the body is an `http_request` payload
//! (`{"url","method","headers","body"}`), and the answer carries `message`, `jobId`,
//! `requestId` and, when the job finished in time, `result` (the job's result data:
//! `statusCode`, `headers`, `body`, `isBase64Encoded`). Everything behind the route is the
//! queue's own path (`jobs::submit`, the same checks, idempotency and waiting), so the two
//! routes cannot drift apart. It must never accept a request without an API key, never
//! let a creator key reach another creator's agents, and never answer a job's result to
//! a caller that could not see the job through `/v1/jobs`.

use super::jobs::{self, SubmitJob, SubmitQuery, JOB_ID_HEADER};
use super::{bearer_token, ApiJson, AppState, Caller, Failure};
use crate::crypto::now_ms;
use crate::queue::millis;
use crate::store::{JobRecord, JobState};
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use edge_protocol::jobs::HTTP_REQUEST;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::info;

pub const PATH: &str = "/jobs";
/// The prototype's services authenticated with this header; `Authorization: Bearer` works too.
pub const API_KEY_HEADER: &str = "x-api-key";
/// A caller's own request id, echoed as `requestId` (a fresh one when absent).
pub const REQUEST_ID_HEADER: &str = "x-request-id";
const MAX_REQUEST_ID_CHARS: usize = 128;

/// The prototype's request body: the `http_request` payload itself (the handler reads it as
/// that payload; this type describes it in the OpenAPI document).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrototypeRequest {
    /// `http://` or `https://` URL the agent fetches.
    pub url: String,
    /// Default `GET`.
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request body, base64 (standard alphabet, padded).
    #[serde(default)]
    pub body: String,
    /// How long the agent waits for the site, default 30000.
    #[serde(default)]
    pub timeout_ms: u64,
}

/// `?sync=true&timeoutMs=N` as on `/v1/jobs`; `creatorId`/`agentId` route the job when an
/// operator key sends it (a creator key's jobs go to its own agents).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrototypeQuery {
    #[serde(default)]
    pub sync: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<String>,
    #[serde(default)]
    pub creator_id: Option<String>,
    #[serde(default)]
    pub agent_id: Option<String>,
}

/// 200: the job succeeded in time; 202: queued (no `sync`), poll `GET /v1/jobs/{jobId}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrototypeAnswer {
    pub message: String,
    pub job_id: String,
    pub request_id: String,
    /// The job's result data (200 only): for `http_request`, `statusCode`, `headers`,
    /// `body`, `isBase64Encoded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
}

/// 502: the job ended failed, dead or cancelled; 504: it did not finish in time (it goes
/// on; poll `GET /v1/jobs/{jobId}`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrototypeUnfinished {
    /// `timeout`, or `job_failed`, `job_dead`, `job_cancelled`.
    pub error: String,
    pub message: String,
    pub job_id: String,
    pub request_id: String,
    /// The job's status now.
    pub status: String,
    /// The job's error (502 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub job_error: Option<Value>,
}

/// The residential-proxy prototype's route: queue an `http_request` and, with
/// `sync=true`, wait for its result (at most 28 s).
#[utoipa::path(
    post, path = "/jobs", tag = "prototype", request_body = PrototypeRequest,
    security(("api_key" = []), ("x_api_key" = [])),
    params(
        ("sync" = Option<bool>, Query, description = "Wait for the result (at most 28 s)"),
        ("timeoutMs" = Option<u64>, Query, description = "With sync=true: how long to wait, in ms"),
        ("creatorId" = Option<String>, Query, description = "Operator key: run on an agent of this creator"),
        ("agentId" = Option<String>, Query, description = "Operator key: run on this agent"),
        ("X-Request-Id" = Option<String>, Header, description = "Echoed as `requestId` (1–128 visible ASCII characters); a fresh id when absent"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key returns the same job"),
    ),
    responses(
        (status = 200, description = "sync=true: the job succeeded; `result` is its result data", body = PrototypeAnswer),
        (status = 202, description = "Queued (without sync=true)", body = PrototypeAnswer),
        (status = 400, description = "A field is not valid; the message names it", body = super::openapi::ErrorBody),
        (status = 401, description = "No or unknown API key", body = super::openapi::ErrorBody),
        (status = 403, description = "A creator key naming another creator", body = super::openapi::ErrorBody),
        (status = 404, description = "Unknown agentId", body = super::openapi::ErrorBody),
        (status = 413, description = "Body over 1 MiB, or payload over the frame limit", body = super::openapi::ErrorBody),
        (status = 502, description = "sync=true: the job ended failed, dead or cancelled", body = PrototypeUnfinished),
        (status = 503, description = "Operator key without creatorId or agentId: no agent online takes http_request", body = super::openapi::ErrorBody),
        (status = 504, description = "sync=true: not finished in time; poll GET /v1/jobs/{jobId}", body = PrototypeUnfinished),
    )
)]
pub async fn submit(
    State(app): State<AppState>,
    PrototypeCaller(caller): PrototypeCaller,
    headers: HeaderMap,
    query: Result<Query<PrototypeQuery>, QueryRejection>,
    ApiJson(payload): ApiJson<Value>,
) -> Result<Response, Failure> {
    let Query(query) = query.map_err(|e| Failure::bad_request(format!("bad query string: {}", e.body_text())))?;
    let request_id = request_id(&headers)?;
    let sync_query = SubmitQuery { sync: query.sync, timeout_ms: query.timeout_ms };
    let sync = jobs::parse_sync(&sync_query, app.sync_timeout)?;
    let (creator_id, agent_id) = route(&app, &caller, query.creator_id, query.agent_id).await?;
    let request = SubmitJob {
        job_type: HTTP_REQUEST.to_owned(),
        payload,
        agent_id,
        creator_id,
        labels: None,
        priority: None,
        run_at: None,
        time_zone: None,
        max_receive_count: None,
        idempotency_key: None,
    };
    let (job, created) = jobs::submit(&app, &caller, &headers, request).await?;
    info!(job_id = job.id, request_id, created, sync = sync.is_some(), "prototype job request");
    let job_id = job.id.clone();
    let mut response = match sync {
        None => answer(StatusCode::ACCEPTED, &job, &request_id, "job queued", None),
        Some(timeout) => {
            let job = jobs::wait_until_final(&app, job, timeout).await?;
            finished(job, &request_id, timeout)
        }
    };
    for (name, value) in [(JOB_ID_HEADER, job_id), (REQUEST_ID_HEADER, request_id)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(HeaderName::from_static(name), value);
        }
    }
    Ok(response)
}

/// The caller, from `X-API-Key` (the prototype's header) or else `Authorization: Bearer`;
/// checked before the body is read, as on `/v1/jobs`.
pub struct PrototypeCaller(Caller);

impl FromRequestParts<AppState> for PrototypeCaller {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Caller::from_key(state, api_key(&parts.headers)).await.map(PrototypeCaller)
    }
}

fn api_key(headers: &HeaderMap) -> Option<&str> {
    let header = headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok()).map(str::trim).filter(|k| !k.is_empty());
    header.or_else(|| bearer_token(headers))
}

/// The caller's `X-Request-Id`, or a fresh `req_` + 32 hex digits.
fn request_id(headers: &HeaderMap) -> Result<String, Failure> {
    let Some(value) = headers.get(REQUEST_ID_HEADER) else {
        return Ok(format!("req_{}", &crate::crypto::new_job_id()["job_".len()..]));
    };
    let text = value.to_str().unwrap_or("").trim();
    let visible = text.bytes().all(|b| b.is_ascii_graphic());
    if text.is_empty() || text.len() > MAX_REQUEST_ID_CHARS || !visible {
        return Err(Failure::bad_request(format!(
            "the `X-Request-Id` header must be 1–{MAX_REQUEST_ID_CHARS} visible ASCII characters, or absent"
        )));
    }
    Ok(text.to_owned())
}

/// Where the job runs: a creator key's own agents (as on `/v1/jobs`); for an operator key
/// the creator or agent the query names, else (the prototype named none, it had one pool of
/// agents) the creator of an agent online that takes `http_request` now. The job then goes
/// to any agent of that creator, so it does not wait on one machine that just went away.
async fn route(
    app: &AppState,
    caller: &Caller,
    creator_id: Option<String>,
    agent_id: Option<String>,
) -> Result<(Option<String>, Option<String>), Failure> {
    let creator_id = creator_id.filter(|c| !c.trim().is_empty());
    let agent_id = agent_id.filter(|a| !a.trim().is_empty());
    if caller.creator().is_some() || creator_id.is_some() || agent_id.is_some() {
        return Ok((creator_id, agent_id));
    }
    if let Some(picked) = app.dispatcher.pick_agent(HTTP_REQUEST).await {
        info!(
            agent_id = picked.agent_id,
            creator_id = picked.creator_id,
            "prototype job routed to an online agent's creator"
        );
        return Ok((Some(picked.creator_id), None));
    }
    // Agents of other hub processes on the same database, most recently heard first.
    if !app.store.exclusive() {
        let now = now_ms();
        let stale_after = millis(app.hb_interval.saturating_mul(3));
        let mut online: Vec<_> =
            app.store.agents(None).await?.into_iter().filter(|agent| agent.is_online(now, stale_after)).collect();
        online.sort_by_key(|agent| std::cmp::Reverse(agent.last_heartbeat_at.or(agent.connected_at)));
        if let Some(agent) = online.into_iter().next() {
            return Ok((Some(agent.creator_id), None));
        }
    }
    Err(Failure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_agent_online",
        "no agent that runs http_request is online to take this request; connect one, or name a creator with \
         ?creatorId= (the job then waits for its agents)",
    ))
}

fn finished(job: JobRecord, request_id: &str, timeout: Duration) -> Response {
    match job.status {
        JobState::Succeeded => {
            let result = job.result.clone().unwrap_or(Value::Null);
            answer(StatusCode::OK, &job, request_id, "job completed", Some(result))
        }
        status if status.is_final() => unfinished(
            StatusCode::BAD_GATEWAY,
            format!("job_{status}"),
            format!("the job ended {status}; see `jobError`"),
            job,
            request_id,
        ),
        status => unfinished(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout".to_owned(),
            format!(
                "the job did not finish within {} ms and is still {status}; poll GET /v1/jobs/{} for its result",
                timeout.as_millis(),
                job.id
            ),
            job,
            request_id,
        ),
    }
}

fn answer(status: StatusCode, job: &JobRecord, request_id: &str, message: &str, result: Option<Value>) -> Response {
    let body = PrototypeAnswer {
        message: message.to_owned(),
        job_id: job.id.clone(),
        request_id: request_id.to_owned(),
        result,
    };
    (status, Json(body)).into_response()
}

fn unfinished(status: StatusCode, error: String, message: String, job: JobRecord, request_id: &str) -> Response {
    let body = PrototypeUnfinished {
        error,
        message,
        status: job.status.as_str().to_owned(),
        job_error: (job.status != JobState::Succeeded && job.status.is_final()).then_some(job.error).flatten(),
        job_id: job.id,
        request_id: request_id.to_owned(),
    };
    (status, Json(body)).into_response()
}
