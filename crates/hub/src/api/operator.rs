//! Owns the agent registry view (`GET /v1/agents`, behind an API key) and `/health`. It
//! must never show a creator key another creator's agents.

use super::{AppState, Caller, Failure};
use crate::crypto::{now_ms, rfc3339};
use crate::queue::millis;
use crate::store::AgentRecord;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use std::time::Duration;

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    pub agent_id: String,
    pub creator_id: String,
    pub name: Option<String>,
    pub version: Option<String>,
    pub online: bool,
    pub last_heartbeat_at: Option<String>,
    pub connected_at: Option<String>,
    /// As announced in the agent's last `hello`.
    pub labels: Vec<String>,
    pub slots: Option<i64>,
    /// Set while the agent's circuit breaker is open (its `circuit_breaker` frame): browser
    /// job types are not assigned to it until then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_open_until: Option<String>,
    /// The agent's tunnel as this instance sees it (absent: no tunnel and no bytes today).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TunnelView {
    /// A tunnel from this agent is open now, to this instance or another on the database.
    pub open: bool,
    /// The instance holding it (`hub_…`, as its log names itself), when open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Bytes relayed through the agent's tunnels on this instance today (UTC), both
    /// directions (another instance counts its own).
    pub bytes_today: u64,
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
            labels: agent.labels,
            slots: agent.slots,
            circuit_open_until: None,
            tunnel: None,
        }
    }
}

/// Agents (a creator key sees only its own). Online: connected to this process, or marked
/// connected by another process sharing the database and heard from within 3 heartbeat
/// intervals.
#[utoipa::path(
    get, path = "/v1/agents", tag = "agents", security(("api_key" = [])),
    responses(
        (status = 200, description = "The agents the key may see", body = super::openapi::AgentList),
        (status = 401, description = "No or unknown API key", body = super::openapi::ErrorBody),
    )
)]
pub async fn list_agents(State(app): State<AppState>, caller: Caller) -> Result<Json<Value>, Failure> {
    let local = app.dispatcher.online_agents().await;
    let circuits = app.dispatcher.open_circuits().await;
    let now = now_ms();
    let stale_after = millis(app.hb_interval.saturating_mul(3));
    // Every instance's open tunnels: the operator sees one fleet whichever instance answers.
    let tunnels: std::collections::HashMap<String, String> = crate::tunnel::exits(&app)
        .await
        .into_iter()
        .map(|exit| {
            let instance = match &exit {
                crate::tunnel::Exit::Local(_) => app.instance.id.clone(),
                crate::tunnel::Exit::Remote(route) => route.instance_id.clone(),
            };
            (exit.agent_id().to_owned(), instance)
        })
        .collect();
    let agents: Vec<AgentView> = app
        .store
        .agents(caller.creator())
        .await?
        .into_iter()
        .map(|agent| {
            let is_online = local.contains(&agent.id) || (!app.store.exclusive() && agent.is_online(now, stale_after));
            let until = circuits.get(&agent.id).copied();
            let mut view = AgentView::new(agent, is_online);
            view.circuit_open_until = until.map(rfc3339);
            let instance_id = tunnels.get(&view.agent_id).cloned();
            let (open, bytes_today) = (instance_id.is_some(), app.tunnels.bytes_today(&view.agent_id));
            view.tunnel = (open || bytes_today > 0).then_some(TunnelView { open, instance_id, bytes_today });
            view
        })
        .collect();
    Ok(Json(json!({ "agents": agents })))
}

/// How long `/health` waits for the database before calling it down.
const HEALTH_DB_TIMEOUT: Duration = Duration::from_secs(2);

#[utoipa::path(
    get, path = "/health", tag = "operations",
    responses(
        (status = 200, description = "The hub and its database answer", body = super::openapi::Health),
        (status = 503, description = "The database does not answer", body = super::openapi::Health),
    )
)]
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
