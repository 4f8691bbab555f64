//! Owns the dead-letter API: listing dead jobs and redrives (moving them back to pending,
//! rate-limited, one running move per creator and queue, progress readable). It must never delete a
//! job: there is deliberately no purge here. The moving itself is done by the sweeper of
//! whichever hub process gets there first (see `Store::redrive_step`).

use super::jobs::{job_page, list_filter, parse_instant, redrive_filter_for, ListQuery};
use super::{AppState, Caller, Failure};
use crate::crypto::{self, now_ms, rfc3339};
use crate::store::{JobState, RedriveFilter, RedriveRecord, RedriveStart};
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::info;

const MAX_REDRIVE_RATE: i64 = 10_000;

#[utoipa::path(
    get, path = "/v1/dead-letter", tag = "dead-letter", security(("api_key" = [])),
    params(
        ("type" = Option<String>, Query, description = "Job type"),
        ("creatorId" = Option<String>, Query, description = "Creator"),
        ("agentId" = Option<String>, Query, description = "Agent"),
        ("errorCode" = Option<String>, Query, description = "Error code of the last failure"),
        ("limit" = Option<u32>, Query, description = "1–1000, default 100"),
        ("before" = Option<String>, Query, description = "`nextBefore` of the previous page"),
    ),
    responses(
        (status = 200, description = "Dead jobs, newest first", body = super::openapi::JobPage),
        (status = 400, description = "A filter is not valid", body = super::openapi::ErrorBody),
        (status = 401, description = "No or unknown API key", body = super::openapi::ErrorBody),
    )
)]
pub async fn list_dead(
    State(app): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, Failure> {
    let Query(query) = query.map_err(|e| Failure::bad_request(format!("bad query string: {}", e.body_text())))?;
    let filter = list_filter(&app, &caller, query, Some(JobState::Dead)).await?;
    let jobs = app.store.list_jobs(&filter).await?;
    Ok(Json(job_page(jobs, filter.limit)))
}

/// `POST /v1/dead-letter/redrive` body; every field is optional (all dead jobs).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedriveRequest {
    #[serde(default, rename = "type")]
    pub job_type: Option<String>,
    #[serde(default)]
    pub creator_id: Option<String>,
    #[serde(default)]
    pub error_code: Option<String>,
    /// Jobs that died at or after this (RFC 3339).
    #[serde(default)]
    pub dead_from: Option<String>,
    /// Jobs that died at or before this (RFC 3339).
    #[serde(default)]
    pub dead_to: Option<String>,
    /// Jobs moved per second; default the hub's (50).
    #[serde(default)]
    pub rate_per_second: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedriveView {
    pub id: String,
    pub status: &'static str,
    #[serde(rename = "type")]
    pub job_type: Option<String>,
    pub creator_id: Option<String>,
    pub error_code: Option<String>,
    pub dead_from: Option<String>,
    pub dead_to: Option<String>,
    pub rate_per_second: i64,
    /// Dead jobs matching the filter when the move started.
    pub total: i64,
    pub moved: i64,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

impl From<RedriveRecord> for RedriveView {
    fn from(r: RedriveRecord) -> RedriveView {
        RedriveView {
            id: r.id,
            status: r.status.as_str(),
            job_type: r.filter.job_type,
            creator_id: r.filter.creator_id,
            error_code: r.filter.error_code,
            dead_from: r.filter.dead_from.map(rfc3339),
            dead_to: r.filter.dead_to.map(rfc3339),
            rate_per_second: r.rate_per_sec,
            total: r.total,
            moved: r.moved,
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
            finished_at: r.finished_at.map(rfc3339),
        }
    }
}

/// Starts a move (202 with its progress record), or 409 naming the move already running
/// over the same queue of the same creator (an operator's move without `creatorId`
/// overlaps every creator's). A creator key may redrive its own dead jobs only.
#[utoipa::path(
    post, path = "/v1/dead-letter/redrive", tag = "dead-letter", request_body = RedriveRequest, security(("api_key" = [])),
    responses(
        (status = 202, description = "The move started; its progress", body = RedriveView),
        (status = 400, description = "A field is not valid", body = super::openapi::ErrorBody),
        (status = 401, description = "No or unknown API key", body = super::openapi::ErrorBody),
        (status = 409, description = "A move over an overlapping queue of the same creator is running", body = super::openapi::ErrorBody),
    )
)]
pub async fn start_redrive(State(app): State<AppState>, caller: Caller, body: Bytes) -> Result<Response, Failure> {
    // An empty body means "every dead job"; anything else must be the JSON object.
    let request: RedriveRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RedriveRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            let kind = if e.is_syntax() || e.is_eof() { "invalid_json" } else { "invalid_body" };
            Failure::new(StatusCode::BAD_REQUEST, kind, format!("the redrive request body is not valid: {e}"))
        })?
    };
    let rate = request.rate_per_second.unwrap_or(i64::from(app.queue.redrive_rate_per_sec));
    if !(1..=MAX_REDRIVE_RATE).contains(&rate) {
        return Err(Failure::bad_request(format!("`ratePerSecond` must be between 1 and {MAX_REDRIVE_RATE}")));
    }
    let trimmed = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let filter = RedriveFilter {
        job_type: trimmed(request.job_type),
        creator_id: trimmed(request.creator_id),
        error_code: trimmed(request.error_code),
        dead_from: parse_instant("deadFrom", request.dead_from.as_deref())?,
        dead_to: parse_instant("deadTo", request.dead_to.as_deref())?,
    };
    if let Some(job_type) = &filter.job_type {
        if app.job_types.get(job_type).is_none() {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "unknown_job_type",
                format!("`type` {job_type:?} is not a job type this hub knows"),
            ));
        }
    }
    let filter = redrive_filter_for(&caller, filter)?;
    let id = format!("rdr_{}", crypto::new_job_id().trim_start_matches("job_"));
    match app.store.start_redrive(&id, &filter, rate, now_ms()).await? {
        RedriveStart::Started(record) => {
            info!(redrive_id = record.id, total = record.total, rate, ?filter, "redrive started");
            // The first step runs now rather than on the next sweep.
            let record = match app.store.redrive_step(&record.id, now_ms()).await? {
                Some(stepped) => {
                    crate::metrics::jobs_redriven(u64::try_from(stepped.moved - record.moved).unwrap_or(0));
                    app.events.job_available().await;
                    stepped
                }
                // Another step (this process's sweeper, or another process) got there
                // first: answer with the move as it stands now.
                None => app.store.redrive(&record.id).await?.unwrap_or(record),
            };
            Ok((StatusCode::ACCEPTED, Json(RedriveView::from(record))).into_response())
        }
        RedriveStart::Busy(running) => Err(Failure {
            status: StatusCode::CONFLICT,
            body: edge_protocol::api::ApiError {
                error: "redrive_running".to_owned(),
                message: format!(
                    "redrive {} is still moving jobs of an overlapping queue and creator; see GET /v1/dead-letter/redrives/{}",
                    running.id, running.id
                ),
            },
        }),
    }
}

#[utoipa::path(
    get, path = "/v1/dead-letter/redrives/{id}", tag = "dead-letter", security(("api_key" = [])),
    params(("id" = String, Path, description = "Redrive id, `rdr_…`")),
    responses(
        (status = 200, description = "Progress of the move", body = RedriveView),
        (status = 401, description = "No or unknown API key", body = super::openapi::ErrorBody),
        (status = 404, description = "No such redrive", body = super::openapi::ErrorBody),
    )
)]
pub async fn get_redrive(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RedriveView>, Failure> {
    match app.store.redrive(&id).await? {
        // A creator key sees only moves confined to its own creator.
        Some(record) if caller.creator().is_none() || record.filter.creator_id.as_deref() == caller.creator() => {
            Ok(Json(record.into()))
        }
        _ => Err(Failure::new(StatusCode::NOT_FOUND, "not_found", format!("no redrive {id:?} on this hub"))),
    }
}
