//! Owns the creator limits API (`GET/PUT /v1/creators/{id}/limits`): the prototype's
//! `CreatorLimits`, enforced by the store's claim (over a limit, jobs wait in `pending`).
//! It must never let a creator key change limits (its own included): raising your own
//! ceiling is what the limit exists to prevent. Reading its own limits is fine.

use super::{ApiJson, AppState, Caller, Failure};
use crate::crypto::now_ms;
use crate::store::CreatorLimits;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tracing::info;

const MAX_LIMIT: i64 = 1_000_000;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsBody {
    /// Most jobs leased or running at once; `null` for no limit.
    #[serde(default)]
    pub max_concurrent_jobs: Option<i64>,
    /// Job type → most jobs started per rolling hour; a type not listed has no limit.
    #[serde(default)]
    pub max_jobs_per_hour: BTreeMap<String, i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsView {
    pub creator_id: String,
    pub max_concurrent_jobs: Option<i64>,
    pub max_jobs_per_hour: BTreeMap<String, i64>,
}

fn view(creator_id: String, limits: CreatorLimits) -> LimitsView {
    LimitsView { creator_id, max_concurrent_jobs: limits.max_concurrent, max_jobs_per_hour: limits.max_per_hour }
}

#[utoipa::path(
    get, path = "/v1/creators/{id}/limits", tag = "creators", security(("api_key" = [])),
    params(("id" = String, Path, description = "Creator id")),
    responses(
        (status = 200, description = "The creator's limits (null: unlimited)", body = LimitsView),
        (status = 401, description = "No or unknown API key", body = super::openapi::ErrorBody),
        (status = 404, description = "Not this creator key's creator", body = super::openapi::ErrorBody),
    )
)]
pub async fn get_limits(
    State(app): State<AppState>,
    caller: Caller,
    Path(creator_id): Path<String>,
) -> Result<Json<LimitsView>, Failure> {
    if !caller.may_see(&creator_id) {
        return Err(Failure::new(StatusCode::NOT_FOUND, "not_found", format!("no creator {creator_id:?} on this hub")));
    }
    let limits = app.store.creator_limits(&creator_id).await?;
    Ok(Json(view(creator_id, limits)))
}

#[utoipa::path(
    put, path = "/v1/creators/{id}/limits", tag = "creators", request_body = LimitsBody, security(("api_key" = [])),
    params(("id" = String, Path, description = "Creator id")),
    responses(
        (status = 200, description = "The limits now in force", body = LimitsView),
        (status = 400, description = "A field is not valid", body = super::openapi::ErrorBody),
        (status = 401, description = "No or unknown API key", body = super::openapi::ErrorBody),
        (status = 403, description = "Creator keys may not change limits", body = super::openapi::ErrorBody),
    )
)]
pub async fn put_limits(
    State(app): State<AppState>,
    caller: Caller,
    Path(creator_id): Path<String>,
    ApiJson(body): ApiJson<LimitsBody>,
) -> Result<Json<LimitsView>, Failure> {
    caller.require_operator()?;
    if creator_id.trim().is_empty() || creator_id.len() > 128 {
        return Err(Failure::bad_request("the creator id in the path must be 1–128 characters"));
    }
    if body.max_concurrent_jobs.is_some_and(|n| !(0..=MAX_LIMIT).contains(&n)) {
        return Err(Failure::bad_request(format!("`maxConcurrentJobs` must be between 0 and {MAX_LIMIT}, or null")));
    }
    for (job_type, max) in &body.max_jobs_per_hour {
        if app.job_types.get(job_type).is_none() {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "unknown_job_type",
                format!("`maxJobsPerHour.{job_type}`: not a job type this hub knows"),
            ));
        }
        if !(0..=MAX_LIMIT).contains(max) {
            return Err(Failure::bad_request(format!("`maxJobsPerHour.{job_type}` must be between 0 and {MAX_LIMIT}")));
        }
    }
    let limits = CreatorLimits { max_concurrent: body.max_concurrent_jobs, max_per_hour: body.max_jobs_per_hour };
    app.store.set_creator_limits(&creator_id, &limits, now_ms()).await?;
    info!(creator_id, ?limits, "creator limits set");
    // Raised limits may let waiting jobs go.
    app.events.job_available().await;
    Ok(Json(view(creator_id, limits)))
}
