//! Owns the jobs API: submit (validation, idempotency keys, scheduling, the dedupe ledger,
//! the synchronous mode), list, read, cancel and the attempts history. It must never trust
//! a submitted job blindly: type, payload, target, labels and times are checked here and
//! rejected with a 4xx naming the field before anything reaches the store, and a creator
//! key must never see or touch another creator's jobs (they answer 404, as missing ones do).

use super::{ApiJson, AppState, Caller, Failure};
use crate::crypto::{self, now_ms, rfc3339};
use crate::queue::{self, millis};
use crate::store::{
    AttemptRecord, CancelOutcome, InsertOutcome, JobFilter, JobRecord, JobState, NewJob, RedriveFilter,
};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, NaiveDateTime, TimeZone as _};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;
use tracing::info;

const MAX_JOB_TYPE_CHARS: usize = 64;
const MAX_ID_CHARS: usize = 128;
const MAX_LABELS: usize = 16;
const MAX_LABEL_CHARS: usize = 64;
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;
const MAX_PRIORITY: i64 = 1_000_000;
const MAX_RECEIVE_COUNT: i64 = 100;
/// A job payload must fit in one `job_assign` frame with room for the envelope; the same
/// limit the agent applies (see [`edge_protocol::check_payload`]).
pub const MAX_PAYLOAD_BYTES: usize = edge_protocol::MAX_PAYLOAD_BYTES;
/// Default wait of `?sync=true`.
pub const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(25);
/// Longest wait of `?sync=true`: under API gateways' 29–30 s ceilings.
pub const MAX_SYNC_TIMEOUT: Duration = Duration::from_secs(28);
/// Sync waiters re-read the job this often in case a notification was missed.
const SYNC_POLL: Duration = Duration::from_millis(250);
const DEFAULT_LIST_LIMIT: i64 = 100;
const MAX_LIST_LIMIT: i64 = 1000;
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
pub const JOB_ID_HEADER: &str = "edge-job-id";

/// `POST /v1/jobs` body. Unknown fields are refused so a misspelt option (`runat`) is an
/// error naming it, not a silently immediate job.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubmitJob {
    #[serde(rename = "type")]
    pub job_type: String,
    pub payload: Value,
    /// Only this agent runs the job.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// Any agent of this creator runs it (implied by a creator-scoped key).
    #[serde(default)]
    pub creator_id: Option<String>,
    /// Only agents that announced all of these labels run it.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Higher first; default 0.
    #[serde(default)]
    pub priority: Option<i64>,
    /// Not before this: RFC 3339 with an offset, or a local time with `timeZone`.
    #[serde(default)]
    pub run_at: Option<String>,
    /// IANA zone name (`Europe/Paris`) for a local `runAt`.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Deliveries before the job is dead; default the hub's (5).
    #[serde(default)]
    pub max_receive_count: Option<i64>,
    /// Alternative to the `Idempotency-Key` header.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubmitQuery {
    #[serde(default)]
    pub sync: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<String>,
}

/// A job as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub id: String,
    #[serde(rename = "type")]
    pub job_type: String,
    pub payload: Value,
    pub status: String,
    pub creator_id: String,
    /// The agent holding or having finished the job; before that, the requested agent.
    pub agent_id: Option<String>,
    pub labels: Vec<String>,
    pub priority: i64,
    pub run_at: String,
    /// Deliveries since submission or the last redrive.
    pub attempts: i64,
    pub max_receive_count: i64,
    pub lease_expires_at: Option<String>,
    pub cancel_requested: bool,
    pub idempotency_key: Option<String>,
    pub result: Option<Value>,
    pub error: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_recipients: Option<Value>,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

impl From<JobRecord> for JobView {
    fn from(job: JobRecord) -> JobView {
        JobView {
            agent_id: job.assigned_agent_id.or(job.target_agent_id),
            id: job.id,
            job_type: job.job_type,
            payload: job.payload,
            status: job.status.as_str().to_owned(),
            creator_id: job.creator_id,
            labels: job.labels,
            priority: job.priority,
            run_at: rfc3339(job.run_at),
            attempts: job.attempts,
            max_receive_count: job.max_receive_count,
            lease_expires_at: job.lease_expires_at.map(rfc3339),
            cancel_requested: job.cancel_requested,
            idempotency_key: job.idempotency_key,
            result: job.result,
            error: job.error,
            skipped_recipients: job.skipped_recipients,
            created_at: rfc3339(job.created_at),
            updated_at: rfc3339(job.updated_at),
            finished_at: job.finished_at.map(rfc3339),
        }
    }
}

fn not_found(job_id: &str) -> Failure {
    Failure::new(StatusCode::NOT_FOUND, "not_found", format!("no job {job_id:?} on this hub"))
}

/// The job if it exists and the caller may see it; 404 otherwise (same answer either way).
async fn visible_job(app: &AppState, caller: &Caller, job_id: &str) -> Result<JobRecord, Failure> {
    match app.store.job(job_id).await? {
        Some(job) if caller.may_see(&job.creator_id) => Ok(job),
        _ => Err(not_found(job_id)),
    }
}

/// Submit a job (201), or find the one an `Idempotency-Key` names (200); with
/// `?sync=true`, wait for its result.
#[utoipa::path(
    post, path = "/v1/jobs", tag = "jobs", request_body = SubmitJob, security(("api_key" = [])),
    params(
        ("sync" = Option<bool>, Query, description = "Wait for the result (at most 28 s)"),
        ("timeoutMs" = Option<u64>, Query, description = "With sync=true: how long to wait, in ms"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key returns the same job"),
    ),
    responses(
        (status = 201, description = "The new job", body = JobView),
        (status = 200, description = "The job an idempotency key already names; with sync=true, the result data instead", body = JobView),
        (status = 400, description = "A field is not valid; the message names it", body = super::openapi::ErrorBody),
        (status = 401, description = "No or unknown API key", body = super::openapi::ErrorBody),
        (status = 403, description = "A creator key naming another creator", body = super::openapi::ErrorBody),
        (status = 404, description = "Unknown agentId", body = super::openapi::ErrorBody),
        (status = 413, description = "Body over 1 MiB, or payload over the frame limit", body = super::openapi::ErrorBody),
        (status = 502, description = "sync=true: the job ended failed, dead or cancelled", body = super::openapi::SyncOutcome),
        (status = 504, description = "sync=true: not finished in time; poll the job", body = super::openapi::SyncOutcome),
    )
)]
pub async fn submit_job(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    query: Result<Query<SubmitQuery>, QueryRejection>,
    ApiJson(request): ApiJson<SubmitJob>,
) -> Result<Response, Failure> {
    let Query(query) = query.map_err(|e| Failure::bad_request(format!("bad query string: {}", e.body_text())))?;
    let sync = parse_sync(&query, app.sync_timeout)?;
    let (job, created) = submit(&app, &caller, &headers, request).await?;
    respond(&app, job, created, sync).await
}

/// Checks and stores one submission (or finds the job its idempotency key names): the job
/// and whether it is new.
pub(super) async fn submit(
    app: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    request: SubmitJob,
) -> Result<(JobRecord, bool), Failure> {
    let now = now_ms();
    let job = validate(app, caller, headers, request, now).await?;
    let (job, created) = match prepare_submitted(app, job, now).await? {
        Prepared::Existing(job) => (job, false),
        Prepared::New(job) => recorded(app.job_writes.insert_job(job).await?),
    };
    if created && job.status == JobState::Pending {
        app.events.job_available().await;
    }
    Ok((job, created))
}

/// Most jobs in one `POST /v1/jobs/batch`.
pub const MAX_BATCH_JOBS: usize = 100;

/// `POST /v1/jobs/batch` body: up to [`MAX_BATCH_JOBS`] jobs, each as `POST /v1/jobs` takes it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubmitBatch {
    pub jobs: Vec<SubmitJob>,
}

/// What happened to one entry of a batch, in the order sent.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchEntry {
    /// Position of the entry in `jobs`.
    pub index: usize,
    /// The status `POST /v1/jobs` would have answered for this job alone.
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchOutcome {
    pub results: Vec<BatchEntry>,
    /// Entries stored as new jobs.
    pub created: usize,
    /// Entries refused (each with its `error` and `message`); nothing of them was stored.
    pub failed: usize,
}

/// Submit up to 100 jobs in one request, like SQS's `SendMessageBatch`: each entry is
/// checked and stored on its own, so one bad entry does not refuse the others; the answer
/// says, per entry, what `POST /v1/jobs` would have said. Idempotency keys go in each
/// entry's `idempotencyKey`.
#[utoipa::path(
    post, path = "/v1/jobs/batch", tag = "jobs", request_body = SubmitBatch, security(("api_key" = [])),
    responses(
        (status = 200, description = "Per-entry outcomes, in the order sent", body = BatchOutcome),
        (status = 400, description = "Not a batch: no jobs, more than 100, or an Idempotency-Key header", body = super::openapi::ErrorBody),
        (status = 401, description = "No or unknown API key", body = super::openapi::ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = super::openapi::ErrorBody),
    )
)]
pub async fn submit_batch(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(request): ApiJson<SubmitBatch>,
) -> Result<Json<BatchOutcome>, Failure> {
    if headers.contains_key(IDEMPOTENCY_HEADER) {
        return Err(Failure::bad_request(
            "a batch takes no Idempotency-Key header; give each job its own `idempotencyKey`",
        ));
    }
    if request.jobs.is_empty() || request.jobs.len() > MAX_BATCH_JOBS {
        return Err(Failure::bad_request(format!(
            "`jobs` must hold 1 to {MAX_BATCH_JOBS} jobs, not {}",
            request.jobs.len()
        )));
    }
    let now = now_ms();
    let no_headers = HeaderMap::new();
    // Each entry is checked on its own; the new ones then go to the job writer together,
    // which commits them with whatever else is queued (an entry the database refuses is
    // answered on its own, and the others are kept).
    // `None`: new, answered by the insert below.
    let mut answers: Vec<Option<Result<(JobRecord, bool), Failure>>> = Vec::with_capacity(request.jobs.len());
    let mut new_jobs = Vec::new();
    let mut new_at = Vec::new();
    for entry in request.jobs {
        let prepared = async {
            let job = validate(&app, &caller, &no_headers, entry, now).await?;
            prepare_submitted(&app, job, now).await
        }
        .await;
        match prepared {
            Ok(Prepared::Existing(job)) => answers.push(Some(Ok((job, false)))),
            Ok(Prepared::New(job)) => {
                new_at.push(answers.len());
                new_jobs.push(job);
                answers.push(None);
            }
            Err(failure) => answers.push(Some(Err(failure))),
        }
    }
    let outcomes = app.job_writes.insert_jobs(new_jobs).await;
    for (index, outcome) in new_at.into_iter().zip(outcomes) {
        answers[index] = Some(outcome.map(recorded).map_err(Failure::from));
    }
    let mut any_pending = false;
    let results: Vec<BatchEntry> = answers
        .into_iter()
        .enumerate()
        .map(|(index, answer)| {
            match answer.unwrap_or_else(|| Err(Failure::internal("a batch entry was not stored", &index))) {
                Ok((job, created)) => {
                    any_pending |= created && job.status == JobState::Pending;
                    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
                    BatchEntry {
                        index,
                        status: status.as_u16(),
                        job: Some(JobView::from(job)),
                        error: None,
                        message: None,
                    }
                }
                Err(failure) => BatchEntry {
                    index,
                    status: failure.status.as_u16(),
                    job: None,
                    error: Some(failure.body.error),
                    message: Some(failure.body.message),
                },
            }
        })
        .collect();
    if any_pending {
        app.events.job_available().await;
    }
    let created = results.iter().filter(|r| r.status == StatusCode::CREATED.as_u16()).count();
    let failed = results.iter().filter(|r| r.job.is_none()).count();
    Ok(Json(BatchOutcome { results, created, failed }))
}

/// A validated submission: answered by the job its idempotency key names, or new (after the
/// dedupe ledger) and to be stored.
enum Prepared {
    Existing(JobRecord),
    New(NewJob),
}

async fn prepare_submitted(app: &AppState, job: NewJob, now: i64) -> Result<Prepared, Failure> {
    if let Some(key) = &job.idempotency_key {
        if let Some(existing) = app.store.job_by_idempotency_key(&job.creator_id, key).await? {
            info!(job_id = existing.id, "idempotent resubmission answered with the existing job");
            return Ok(Prepared::Existing(existing));
        }
    }
    Ok(Prepared::New(apply_dedupe_ledger(app, job, now).await?))
}

/// The stored job and whether it is new; a new one is logged and counted.
fn recorded(outcome: InsertOutcome) -> (JobRecord, bool) {
    let (job, created) = match outcome {
        InsertOutcome::Created(job) => (job, true),
        InsertOutcome::Existing(job) => (job, false),
    };
    if created {
        info!(
            job_id = job.id,
            job_type = job.job_type,
            creator_id = job.creator_id,
            target_agent_id = job.target_agent_id,
            status = %job.status,
            "job submitted"
        );
        crate::metrics::job_submitted();
    }
    (job, created)
}

/// 201 for a new job, 200 for the one an idempotency key found; or, with `?sync=true`, the
/// result itself.
async fn respond(app: &AppState, job: JobRecord, created: bool, sync: Option<Duration>) -> Result<Response, Failure> {
    match sync {
        None => {
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            Ok((status, Json(JobView::from(job))).into_response())
        }
        Some(timeout) => {
            let job = wait_until_final(app, job, timeout).await?;
            Ok(sync_response(job))
        }
    }
}

pub(super) fn parse_sync(query: &SubmitQuery, default_timeout: Duration) -> Result<Option<Duration>, Failure> {
    let sync = match query.sync.as_deref().map(str::trim) {
        None | Some("false") | Some("0") | Some("") => false,
        Some("true") | Some("1") => true,
        Some(other) => return Err(Failure::bad_request(format!("`sync` must be true or false, not {other:?}"))),
    };
    let timeout = match query.timeout_ms.as_deref() {
        None => default_timeout.min(MAX_SYNC_TIMEOUT),
        Some(text) => match text.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms).min(MAX_SYNC_TIMEOUT),
            _ => {
                return Err(Failure::bad_request(format!(
                    "`timeoutMs` must be a positive number of milliseconds (at most {}), not {text:?}",
                    MAX_SYNC_TIMEOUT.as_millis()
                )))
            }
        },
    };
    if !sync && query.timeout_ms.is_some() {
        return Err(Failure::bad_request("`timeoutMs` only applies with `sync=true`"));
    }
    Ok(sync.then_some(timeout))
}

/// Waits for the job to become final, or for `timeout`; returns the latest record either way.
pub async fn wait_until_final(app: &AppState, job: JobRecord, timeout: Duration) -> Result<JobRecord, Failure> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut finished = app.events.subscribe_finished();
    let mut job = job;
    loop {
        if job.status.is_final() {
            return Ok(job);
        }
        let wait = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + SYNC_POLL));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                id = finished.recv() => match id {
                    Ok(id) if id == job.id => break,
                    Ok(_) => continue,
                    // Lagged or closed: fall back to the poll.
                    Err(_) => { wait.as_mut().await; break; }
                },
            }
        }
        job = app.store.job(&job.id).await?.ok_or_else(|| not_found(&job.id))?;
        if job.status.is_final() || tokio::time::Instant::now() >= deadline {
            return Ok(job);
        }
    }
}

/// The proxy prototype's answer: a succeeded job's result data as the body (for
/// `http_request`: `statusCode`, `headers`, `body`, `isBase64Encoded`), the job id in
/// `Edge-Job-Id`. A failed job is 502 with its error; an unfinished one 504 to poll.
fn sync_response(job: JobRecord) -> Response {
    let mut response = match job.status {
        JobState::Succeeded => (StatusCode::OK, Json(job.result.clone().unwrap_or(Value::Null))).into_response(),
        status if status.is_final() => (
            StatusCode::BAD_GATEWAY,
            Json(json!({
                "error": format!("job_{status}"),
                "message": format!("the job ended {status}; see `jobError`"),
                "jobId": job.id,
                "status": status.as_str(),
                "jobError": job.error,
            })),
        )
            .into_response(),
        status => (
            StatusCode::GATEWAY_TIMEOUT,
            Json(json!({
                "error": "timeout",
                "message": format!("the job is still {status}; poll GET /v1/jobs/{}", job.id),
                "jobId": job.id,
                "status": status.as_str(),
            })),
        )
            .into_response(),
    };
    if let Ok(value) = HeaderValue::from_str(&job.id) {
        response.headers_mut().insert(JOB_ID_HEADER, value);
    }
    response
}

/// Turns a request into a job to insert, or a 4xx naming the bad field.
async fn validate(
    app: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    request: SubmitJob,
    now: i64,
) -> Result<NewJob, Failure> {
    let job_type = request.job_type.trim().to_owned();
    if job_type.is_empty() || job_type.chars().count() > MAX_JOB_TYPE_CHARS {
        return Err(Failure::bad_request(format!(
            "`type` must be a non-empty job type of at most {MAX_JOB_TYPE_CHARS} characters, e.g. \"http_request\""
        )));
    }
    let Some(spec) = app.job_types.get(&job_type) else {
        let known: Vec<&str> = app.job_types.names().collect();
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "unknown_job_type",
            format!("`type` {job_type:?} is not a job type this hub knows; known types: {}", known.join(", ")),
        ));
    };
    if !request.payload.is_object() {
        return Err(Failure::bad_request("`payload` must be a JSON object"));
    }
    // The agent's limits, checked here so that a job it could not read is never queued
    // (it would only come back as BAD_PAYLOAD).
    match edge_protocol::check_payload(&request.payload) {
        Ok(()) => {}
        Err(e @ edge_protocol::PayloadError::TooLarge { .. }) => {
            return Err(Failure::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", e.to_string()))
        }
        Err(e @ edge_protocol::PayloadError::TooDeep { .. }) => {
            return Err(Failure::new(StatusCode::BAD_REQUEST, "payload_too_deep", e.to_string()))
        }
    }
    if let Some(validate) = &spec.validate {
        validate(&request.payload).map_err(Failure::bad_request)?;
    }
    if spec.sends_messages {
        queue::payload_recipients(&request.payload).map_err(Failure::bad_request)?;
    }

    let agent_id = non_empty(request.agent_id, "agentId")?;
    let creator_id = non_empty(request.creator_id, "creatorId")?;
    if let (Some(own), Some(asked)) = (caller.creator(), creator_id.as_deref()) {
        if own != asked {
            return Err(Failure::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("`creatorId`: this API key may only submit jobs for creator {own:?}"),
            ));
        }
    }
    let creator_id = match (agent_id.as_deref(), creator_id) {
        (Some(agent_id), creator_id) => {
            let agent = app.store.agent(agent_id).await?.filter(|agent| caller.may_see(&agent.creator_id));
            let Some(agent) = agent else {
                return Err(Failure::new(
                    StatusCode::NOT_FOUND,
                    "unknown_agent",
                    format!("`agentId`: no agent {agent_id:?} is enrolled on this hub; see GET /v1/agents"),
                ));
            };
            if creator_id.as_ref().is_some_and(|c| *c != agent.creator_id) {
                return Err(Failure::bad_request(format!(
                    "`agentId`: agent {agent_id:?} does not belong to the given creatorId"
                )));
            }
            agent.creator_id
        }
        (None, Some(creator_id)) => creator_id,
        (None, None) => match caller.creator() {
            Some(own) => own.to_owned(),
            None => {
                return Err(Failure::bad_request(
                    "give `creatorId` (any agent of that creator runs the job) or `agentId` (that agent runs it)",
                ))
            }
        },
    };
    let labels = validate_labels(request.labels)?;
    let priority = request.priority.unwrap_or(0);
    if !(-MAX_PRIORITY..=MAX_PRIORITY).contains(&priority) {
        return Err(Failure::bad_request(format!("`priority` must be between -{MAX_PRIORITY} and {MAX_PRIORITY}")));
    }
    let run_at = parse_run_at(request.run_at.as_deref(), request.time_zone.as_deref())?.unwrap_or(now);
    let max_receive_count = request.max_receive_count.unwrap_or(i64::from(app.queue.max_receive_count));
    if !(1..=MAX_RECEIVE_COUNT).contains(&max_receive_count) {
        return Err(Failure::bad_request(format!("`maxReceiveCount` must be between 1 and {MAX_RECEIVE_COUNT}")));
    }
    let idempotency_key = idempotency_key(headers, request.idempotency_key)?;
    let visibility_timeout = spec.visibility_timeout.unwrap_or(app.queue.visibility_timeout);
    Ok(NewJob {
        id: crypto::new_job_id(),
        job_type,
        payload: request.payload,
        creator_id,
        target_agent_id: agent_id,
        labels,
        priority,
        run_at,
        idempotency_key,
        max_receive_count,
        visibility_timeout_ms: millis(visibility_timeout).max(1),
        skipped_recipients: None,
        final_state: None,
    })
}

/// For message-sending types: drops recipients messaged within the cool-off window and
/// lists them in `skippedRecipients`. When none is left the job is stored already
/// cancelled (code `ALL_RECIPIENTS_SKIPPED`), so the answer still names a job.
async fn apply_dedupe_ledger(app: &AppState, mut job: NewJob, now: i64) -> Result<NewJob, Failure> {
    let sends = app.job_types.get(&job.job_type).is_some_and(|spec| spec.sends_messages);
    if !sends {
        return Ok(job);
    }
    let recipients: Vec<String> = queue::payload_recipients(&job.payload)
        .map_err(Failure::bad_request)?
        .iter()
        .map(|r| queue::normalize_recipient(r))
        .collect();
    let since = now - millis(app.queue.dedupe_cooloff);
    let recent = app.store.recent_recipients(&job.creator_id, &recipients, since).await?;
    if recent.is_empty() {
        return Ok(job);
    }
    let skipped: Vec<Value> = recent
        .iter()
        .map(|entry| {
            json!({
                "recipient": entry.recipient,
                "reason": "messaged_within_cooloff",
                "lastSentAt": rfc3339(entry.last_sent_at),
            })
        })
        .collect();
    let removed: Vec<String> = recent.into_iter().map(|entry| entry.recipient).collect();
    info!(creator_id = job.creator_id, skipped = removed.len(), "recipients skipped by the dedupe ledger");
    job.skipped_recipients = Some(Value::Array(skipped));
    match queue::payload_without(&job.payload, &removed) {
        Some(payload) => job.payload = payload,
        None => {
            let error = json!({
                "code": "ALL_RECIPIENTS_SKIPPED",
                "message": "every recipient was messaged within the cool-off window; see skippedRecipients",
            });
            job.final_state = Some((JobState::Cancelled, error));
        }
    }
    Ok(job)
}

fn non_empty(value: Option<String>, field: &str) -> Result<Option<String>, Failure> {
    match value.map(|v| v.trim().to_owned()) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) if v.chars().count() > MAX_ID_CHARS => {
            Err(Failure::bad_request(format!("`{field}` is longer than {MAX_ID_CHARS} characters")))
        }
        Some(v) => Ok(Some(v)),
    }
}

fn validate_labels(labels: Option<Vec<String>>) -> Result<Vec<String>, Failure> {
    let mut labels: Vec<String> = labels.unwrap_or_default().into_iter().map(|l| l.trim().to_owned()).collect();
    if labels.len() > MAX_LABELS
        || labels.iter().any(|l| l.is_empty() || l.chars().count() > MAX_LABEL_CHARS || l.chars().any(char::is_control))
    {
        return Err(Failure::bad_request(format!(
            "`labels` must be at most {MAX_LABELS} non-empty labels of at most {MAX_LABEL_CHARS} characters"
        )));
    }
    labels.sort();
    labels.dedup();
    Ok(labels)
}

fn idempotency_key(headers: &HeaderMap, body_key: Option<String>) -> Result<Option<String>, Failure> {
    let header = match headers.get(IDEMPOTENCY_HEADER) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| Failure::bad_request("the `Idempotency-Key` header must be visible ASCII"))?
                .trim()
                .to_owned(),
        ),
    };
    let key = match (header, body_key.map(|k| k.trim().to_owned())) {
        (Some(h), Some(b)) if h != b => {
            return Err(Failure::bad_request(
                "the `Idempotency-Key` header and the `idempotencyKey` field differ; give one",
            ))
        }
        (Some(h), _) => h,
        (None, Some(b)) => b,
        (None, None) => return Ok(None),
    };
    if key.is_empty() || key.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS || key.chars().any(char::is_control) {
        return Err(Failure::bad_request(format!(
            "`Idempotency-Key` must be 1–{MAX_IDEMPOTENCY_KEY_CHARS} characters without control characters"
        )));
    }
    Ok(Some(key))
}

/// `runAt` as Unix ms. RFC 3339 with an offset stands alone; a local date-time needs
/// `timeZone` (IANA). In a daylight-saving overlap the earlier instant is taken; a time
/// inside a gap does not exist and is refused.
pub fn parse_run_at(run_at: Option<&str>, time_zone: Option<&str>) -> Result<Option<i64>, Failure> {
    let zone = match time_zone.map(str::trim) {
        None => None,
        Some(name) => Some(name.parse::<chrono_tz::Tz>().map_err(|_| {
            Failure::bad_request(format!(
                "`timeZone` {name:?} is not an IANA time zone name (e.g. \"Europe/Paris\", \"America/New_York\")"
            ))
        })?),
    };
    let Some(text) = run_at.map(str::trim) else {
        return Ok(None);
    };
    if let Ok(instant) = DateTime::parse_from_rfc3339(text) {
        return Ok(Some(instant.timestamp_millis()));
    }
    let Some(zone) = zone else {
        return Err(Failure::bad_request(format!(
            "`runAt` {text:?} must be RFC 3339 with an offset (2025-06-01T09:00:00+02:00), or a local time \
             (2025-06-01T09:00:00) together with `timeZone`"
        )));
    };
    let local = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .ok_or_else(|| {
            Failure::bad_request(format!("`runAt` {text:?} is not a local date-time like 2025-06-01T09:00:00"))
        })?;
    match zone.from_local_datetime(&local).earliest() {
        Some(instant) => Ok(Some(instant.timestamp_millis())),
        None => Err(Failure::bad_request(format!(
            "`runAt` {text:?} does not exist in {zone} (it falls in a daylight-saving gap)"
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default, rename = "type")]
    pub job_type: Option<String>,
    #[serde(default)]
    pub creator_id: Option<String>,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub limit: Option<String>,
    /// A job id: list jobs created before it (the `nextBefore` of the previous page).
    #[serde(default)]
    pub before: Option<String>,
}

/// Builds a store filter from query parameters, confined to the caller's creator.
pub async fn list_filter(
    app: &AppState,
    caller: &Caller,
    query: ListQuery,
    forced_status: Option<JobState>,
) -> Result<JobFilter, Failure> {
    let status = match (forced_status, query.status.as_deref()) {
        (Some(status), _) => Some(status),
        (None, None) | (None, Some("")) => None,
        (None, Some(text)) => Some(JobState::parse(text).ok_or_else(|| {
            let all: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
            Failure::bad_request(format!("`status` {text:?} is not one of {}", all.join(", ")))
        })?),
    };
    let limit = match query.limit.as_deref() {
        None => DEFAULT_LIST_LIMIT,
        Some(text) => text
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
            .ok_or_else(|| Failure::bad_request(format!("`limit` must be between 1 and {MAX_LIST_LIMIT}")))?,
    };
    let creator_id = match (caller.creator(), query.creator_id.filter(|c| !c.is_empty())) {
        (Some(own), Some(asked)) if own != asked => {
            return Err(Failure::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("`creatorId`: this API key may only list jobs of creator {own:?}"),
            ))
        }
        (Some(own), _) => Some(own.to_owned()),
        (None, asked) => asked,
    };
    let before = match query.before.filter(|b| !b.is_empty()) {
        None => None,
        Some(id) => {
            let job = visible_job(app, caller, &id)
                .await
                .map_err(|_| Failure::bad_request(format!("`before`: no job {id:?} on this hub")))?;
            Some((job.created_at, job.id))
        }
    };
    Ok(JobFilter {
        status,
        job_type: query.job_type.filter(|t| !t.is_empty()),
        creator_id,
        agent_id: query.agent_id.filter(|a| !a.is_empty()),
        error_code: query.error_code.filter(|c| !c.is_empty()),
        before,
        limit,
    })
}

/// `{"jobs":[…],"nextBefore":id|null}`, newest first.
pub fn job_page(jobs: Vec<JobRecord>, limit: i64) -> Value {
    let next = (jobs.len() as i64 == limit).then(|| jobs.last().map(|j| j.id.clone())).flatten();
    let jobs: Vec<JobView> = jobs.into_iter().map(JobView::from).collect();
    json!({ "jobs": jobs, "nextBefore": next })
}

#[utoipa::path(
    get, path = "/v1/jobs", tag = "jobs", security(("api_key" = [])),
    params(
        ("status" = Option<String>, Query, description = "pending, leased, running, succeeded, failed, dead or cancelled"),
        ("type" = Option<String>, Query, description = "Job type"),
        ("creatorId" = Option<String>, Query, description = "Creator"),
        ("agentId" = Option<String>, Query, description = "Agent holding, having run, or targeted by the job"),
        ("errorCode" = Option<String>, Query, description = "Error code of the last failure"),
        ("limit" = Option<u32>, Query, description = "1–1000, default 100"),
        ("before" = Option<String>, Query, description = "`nextBefore` of the previous page"),
    ),
    responses(
        (status = 200, description = "Jobs, newest first", body = super::openapi::JobPage),
        (status = 400, description = "A filter is not valid", body = super::openapi::ErrorBody),
        (status = 401, description = "No or unknown API key", body = super::openapi::ErrorBody),
        (status = 403, description = "A creator key naming another creator", body = super::openapi::ErrorBody),
    )
)]
pub async fn list_jobs(
    State(app): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, Failure> {
    let Query(query) = query.map_err(|e| Failure::bad_request(format!("bad query string: {}", e.body_text())))?;
    let filter = list_filter(&app, &caller, query, None).await?;
    let jobs = app.store.list_jobs(&filter).await?;
    Ok(Json(job_page(jobs, filter.limit)))
}

/// One job.
#[utoipa::path(
    get, path = "/v1/jobs/{id}", tag = "jobs", security(("api_key" = [])),
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 401, description = "No or unknown API key", body = super::openapi::ErrorBody),
        (status = 404, description = "No such job (or another creator's)", body = super::openapi::ErrorBody),
    )
)]
pub async fn get_job(
    State(app): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> Result<Json<JobView>, Failure> {
    Ok(Json(visible_job(&app, &caller, &job_id).await?.into()))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    pub lease_token: i64,
    pub agent_id: String,
    pub leased_at: String,
    pub ended_at: Option<String>,
    /// `null` while held; `succeeded`, `failed`, `retry`, `dead`, `cancelled`, `released`,
    /// `expired`, or `stale` (a result that arrived after its lease had expired).
    pub outcome: Option<String>,
    pub result: Option<Value>,
    pub error: Option<Value>,
}

impl From<AttemptRecord> for AttemptView {
    fn from(a: AttemptRecord) -> AttemptView {
        AttemptView {
            lease_token: a.lease_token,
            agent_id: a.agent_id,
            leased_at: rfc3339(a.leased_at),
            ended_at: a.ended_at.map(rfc3339),
            outcome: a.outcome,
            result: a.result,
            error: a.error,
        }
    }
}

#[utoipa::path(
    get, path = "/v1/jobs/{id}/attempts", tag = "jobs", security(("api_key" = [])),
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Every delivery of the job, oldest first, stale results included", body = super::openapi::AttemptList),
        (status = 401, description = "No or unknown API key", body = super::openapi::ErrorBody),
        (status = 404, description = "No such job", body = super::openapi::ErrorBody),
    )
)]
pub async fn job_attempts(
    State(app): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> Result<Json<Value>, Failure> {
    let job = visible_job(&app, &caller, &job_id).await?;
    let attempts: Vec<AttemptView> =
        app.store.job_attempts(&job.id).await?.into_iter().map(AttemptView::from).collect();
    Ok(Json(json!({ "jobId": job.id, "attempts": attempts })))
}

/// `POST /v1/jobs/{id}/cancel`: a pending job is cancelled at once (200); a held one is
/// marked cancel-requested and its agent gets `job_cancel` (202); it becomes cancelled when
/// the agent reports a failure or its lease expires (an agent that finished the work anyway
/// reports success, and the job says so). A job already cancelled answers 200, another
/// final job 409.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/cancel", tag = "jobs", security(("api_key" = [])),
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Cancelled (it was pending, or already cancelled)", body = JobView),
        (status = 202, description = "Held by an agent: cancel requested, `job_cancel` sent", body = JobView),
        (status = 401, description = "No or unknown API key", body = super::openapi::ErrorBody),
        (status = 404, description = "No such job", body = super::openapi::ErrorBody),
        (status = 409, description = "Already ended otherwise", body = super::openapi::ErrorBody),
    )
)]
pub async fn cancel_job(
    State(app): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> Result<Response, Failure> {
    visible_job(&app, &caller, &job_id).await?;
    match app.store.request_cancel(&job_id, now_ms()).await? {
        CancelOutcome::Cancelled(job) => {
            info!(job_id, "pending job cancelled");
            app.events.job_finished(&job.id).await;
            Ok((StatusCode::OK, Json(JobView::from(job))).into_response())
        }
        CancelOutcome::Requested(job) => {
            if let Some(agent_id) = &job.assigned_agent_id {
                info!(job_id, agent_id, "cancel requested from the agent holding the job");
                app.events.cancel_requested(&job.id, agent_id).await;
            }
            Ok((StatusCode::ACCEPTED, Json(JobView::from(job))).into_response())
        }
        CancelOutcome::AlreadyFinal(job) if job.status == JobState::Cancelled => {
            Ok((StatusCode::OK, Json(JobView::from(job))).into_response())
        }
        CancelOutcome::AlreadyFinal(job) => Err(Failure::new(
            StatusCode::CONFLICT,
            "already_final",
            format!("job {job_id:?} already ended {}; nothing to cancel", job.status),
        )),
        CancelOutcome::NotFound => Err(not_found(&job_id)),
    }
}

/// Parses the dead-letter filter fields shared by the list and the redrive.
pub fn parse_instant(field: &str, text: Option<&str>) -> Result<Option<i64>, Failure> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(text) => DateTime::parse_from_rfc3339(text).map(|t| Some(t.timestamp_millis())).map_err(|_| {
            Failure::bad_request(format!(
                "`{field}` {text:?} must be RFC 3339 with an offset, e.g. 2025-06-01T09:00:00Z"
            ))
        }),
    }
}

/// For the dead-letter module: a redrive filter confined to what the caller may see.
pub fn redrive_filter_for(caller: &Caller, mut filter: RedriveFilter) -> Result<RedriveFilter, Failure> {
    if let Some(own) = caller.creator() {
        match filter.creator_id.as_deref() {
            Some(asked) if asked != own => {
                return Err(Failure::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("`creatorId`: this API key may only act on creator {own:?}"),
                ))
            }
            _ => filter.creator_id = Some(own.to_owned()),
        }
    }
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_at_accepts_offsets_and_zones_and_names_bad_fields() {
        assert_eq!(parse_run_at(Some("2025-01-01T00:00:00Z"), None).unwrap(), Some(1_735_689_600_000));
        assert_eq!(parse_run_at(Some("2025-01-01T01:00:00+01:00"), None).unwrap(), Some(1_735_689_600_000));
        // Paris is UTC+1 in January, UTC+2 in July.
        assert_eq!(parse_run_at(Some("2025-01-01T01:00:00"), Some("Europe/Paris")).unwrap(), Some(1_735_689_600_000));
        assert_eq!(parse_run_at(Some("2025-07-01T02:00"), Some("Europe/Paris")).unwrap(), Some(1_751_328_000_000));
        let bad_zone = parse_run_at(Some("2025-01-01T01:00:00"), Some("Mars/Olympus")).unwrap_err();
        assert!(bad_zone.body.message.contains("`timeZone`"), "{:?}", bad_zone.body);
        assert!(parse_run_at(Some("2025-01-01T01:00:00"), None).unwrap_err().body.message.contains("`runAt`"));
        // 02:30 on the last Sunday of March does not exist in Paris.
        let gap = parse_run_at(Some("2025-03-30T02:30:00"), Some("Europe/Paris")).unwrap_err();
        assert!(gap.body.message.contains("gap"), "{:?}", gap.body);
        assert_eq!(parse_run_at(None, None).unwrap(), None);
    }
}
