//! Owns the operator API (jobs and agents, behind an API key) and `/health`. It must
//! never trust a submitted job blindly: type, payload shape and target are checked here,
//! before anything reaches the store or an agent.

use super::{ApiJson, AppState, Failure, Operator};
use crate::crypto::{self, now_ms, rfc3339};
use crate::store::{AgentRecord, JobRecord, NewJob};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use edge_protocol::jobs::{HttpRequestPayload, HTTP_REQUEST};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;
use tracing::info;

const MAX_JOB_TYPE_CHARS: usize = 64;
const MAX_ID_CHARS: usize = 128;

/// `POST /v1/jobs` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubmitJob {
    #[serde(rename = "type")]
    pub job_type: String,
    pub payload: Value,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub creator_id: Option<String>,
}

/// A job as the operator API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub id: String,
    #[serde(rename = "type")]
    pub job_type: String,
    pub payload: Value,
    pub status: String,
    pub creator_id: String,
    /// The agent holding or having finished the job; before assignment, the requested agent.
    pub agent_id: Option<String>,
    pub attempts: i64,
    pub result: Option<Value>,
    pub error: Option<Value>,
    pub created_at: String,
    pub updated_at: String,
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
            attempts: job.attempts,
            result: job.result,
            error: job.error,
            created_at: rfc3339(job.created_at),
            updated_at: rfc3339(job.updated_at),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    pub agent_id: String,
    pub creator_id: String,
    pub name: Option<String>,
    pub version: Option<String>,
    pub online: bool,
    pub last_heartbeat_at: Option<String>,
    pub connected_at: Option<String>,
}

impl AgentView {
    fn new(agent: AgentRecord, online: bool) -> AgentView {
        AgentView {
            agent_id: agent.id,
            creator_id: agent.creator_id,
            name: agent.name,
            version: agent.version,
            online,
            last_heartbeat_at: agent.last_heartbeat_at.map(rfc3339),
            connected_at: agent.connected_at.map(rfc3339),
        }
    }
}

pub async fn submit_job(
    State(app): State<AppState>,
    _operator: Operator,
    ApiJson(request): ApiJson<SubmitJob>,
) -> Result<(StatusCode, Json<JobView>), Failure> {
    let job_type = request.job_type.trim().to_owned();
    if job_type.is_empty() || job_type.chars().count() > MAX_JOB_TYPE_CHARS {
        return Err(Failure::bad_request(format!(
            "`type` must be a non-empty job type of at most {MAX_JOB_TYPE_CHARS} characters, e.g. \"{HTTP_REQUEST}\""
        )));
    }
    if !request.payload.is_object() {
        return Err(Failure::bad_request("`payload` must be a JSON object"));
    }
    if job_type == HTTP_REQUEST {
        validate_http_request(&request.payload)?;
    }
    let agent_id = non_empty(request.agent_id, "agentId")?;
    let creator_id = non_empty(request.creator_id, "creatorId")?;
    let creator_id = match (agent_id.as_deref(), creator_id) {
        (Some(agent_id), creator_id) => {
            let Some(agent) = app.store.agent(agent_id).await? else {
                return Err(Failure::new(
                    StatusCode::NOT_FOUND,
                    "unknown_agent",
                    format!("no agent {agent_id:?} is enrolled on this hub: see GET /v1/agents"),
                ));
            };
            if creator_id.as_ref().is_some_and(|c| *c != agent.creator_id) {
                return Err(Failure::bad_request(format!("agent {agent_id:?} does not belong to the given creatorId")));
            }
            agent.creator_id
        }
        (None, Some(creator_id)) => creator_id,
        (None, None) => {
            return Err(Failure::bad_request(
                "give `creatorId` (any agent of that creator runs the job) or `agentId` (that agent runs it)",
            ))
        }
    };
    let job =
        NewJob { id: crypto::new_job_id()?, job_type, payload: request.payload, creator_id, target_agent_id: agent_id };
    let job = app.store.insert_job(job, now_ms()).await?;
    info!(
        job_id = job.id,
        job_type = job.job_type,
        creator_id = job.creator_id,
        target_agent_id = job.target_agent_id,
        "job submitted"
    );
    app.dispatcher.job_submitted();
    Ok((StatusCode::CREATED, Json(job.into())))
}

fn validate_http_request(payload: &Value) -> Result<(), Failure> {
    let parsed: HttpRequestPayload = serde_json::from_value(payload.clone())
        .map_err(|e| Failure::bad_request(format!("`payload` is not a valid {HTTP_REQUEST} payload: {e}")))?;
    let url = url::Url::parse(&parsed.url)
        .map_err(|e| Failure::bad_request(format!("`payload.url` is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Failure::bad_request("`payload.url` must be an http:// or https:// URL"));
    }
    Ok(())
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

pub async fn get_job(
    State(app): State<AppState>,
    _operator: Operator,
    Path(job_id): Path<String>,
) -> Result<Json<JobView>, Failure> {
    match app.store.job(&job_id).await? {
        Some(job) => Ok(Json(job.into())),
        None => Err(Failure::new(StatusCode::NOT_FOUND, "not_found", format!("no job {job_id:?} on this hub"))),
    }
}

pub async fn list_agents(State(app): State<AppState>, _operator: Operator) -> Result<Json<Value>, Failure> {
    let online = app.dispatcher.online_agents().await;
    let agents: Vec<AgentView> = app
        .store
        .agents()
        .await?
        .into_iter()
        .map(|agent| {
            let is_online = online.contains(&agent.id);
            AgentView::new(agent, is_online)
        })
        .collect();
    Ok(Json(json!({ "agents": agents })))
}

/// How long `/health` waits for the database before calling it down.
const HEALTH_DB_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn health(State(app): State<AppState>) -> Response {
    match tokio::time::timeout(HEALTH_DB_TIMEOUT, app.store.ping()).await {
        Ok(Ok(())) => Json(json!({ "status": "ok", "database": "ok" })).into_response(),
        Ok(Err(e)) => unhealthy(&e.to_string()),
        Err(_) => unhealthy("no answer within 2 s"),
    }
}

fn unhealthy(detail: &str) -> Response {
    tracing::error!(error = detail, "health check: database does not answer");
    let body = json!({
        "status": "error",
        "database": "unavailable",
        "error": "database_unavailable",
        "message": "the hub's database does not answer; see the hub's log",
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}
