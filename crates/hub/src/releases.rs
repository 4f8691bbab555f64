//! Agent releases on the hub: serving each channel's TUF view and the release binaries to
//! agents, and `POST /v1/releases/failed`, which counts agents whose update was rolled back
//! and pauses that release once [`failure_threshold`] distinct agents reported it.
//!
//! The releases live in the bundle repository (`edge_bundle::release`), signed by the same
//! root; `edge-hub release …` publishes them. Failure reports are objects in the hub's
//! storage (`release-failures/<channel>/<platform>/<arch>/<version>/<agent id>`), one per
//! agent, so a report repeated after a lost answer counts once and several hubs sharing the
//! storage count together; nothing goes into the database. This module must never serve a
//! key not validated by `Repo::release_file_key`, never count an agent twice, and never
//! resume a release (only the operator does, with `edge-hub release resume`).

use crate::api::{bearer_token, AppState, Caller, Failure};
use crate::bundles::{serve_file, BundleService};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use edge_bundle::release::{validate_channel, ReleaseChange, ReleaseRef};
use edge_bundle::repo::Repo;
use edge_protocol::api::{UpdateFailedRequest, UpdateFailedResponse, UPDATE_FAILED_PATH};
use std::sync::Arc;
use tracing::{info, warn};

/// Distinct agents reporting a failed update before the hub pauses that release.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;

/// `EDGE_HUB_RELEASE_FAILURE_THRESHOLD` (≥ 1) or [`DEFAULT_FAILURE_THRESHOLD`].
pub fn failure_threshold() -> u32 {
    std::env::var("EDGE_HUB_RELEASE_FAILURE_THRESHOLD")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|v| *v >= 1)
        .unwrap_or(DEFAULT_FAILURE_THRESHOLD)
}

#[derive(Debug, Clone)]
struct Releases {
    bundles: BundleService,
    threshold: u32,
}

type Service = Extension<Arc<Releases>>;

/// Failure reports, under the hub's storage root.
const FAILURES: &str = "release-failures";

pub fn router(app: AppState, bundles: BundleService) -> Router {
    let releases = Releases { bundles, threshold: failure_threshold() };
    Router::new()
        .route("/v1/releases/{channel}/metadata/{file}", get(metadata))
        .route("/v1/releases/targets/{channel}/{platform}/{arch}/{file}", get(target))
        .route(UPDATE_FAILED_PATH, post(failed))
        .layer(Extension(Arc::new(releases)))
        .with_state(app)
}

/// Agents read releases with their JWT; operator keys too (to inspect what agents see).
/// The agent id is returned for failure reports.
async fn reader(app: &AppState, headers: &HeaderMap) -> Result<Option<String>, Failure> {
    let unauthorized = |why: &str| Failure::new(StatusCode::UNAUTHORIZED, "unauthorized", why.to_owned());
    let Some(token) = bearer_token(headers) else {
        return Err(unauthorized(
            "releases are served to agents: send the agent's JWT as `Authorization: Bearer <token>`",
        ));
    };
    if let Ok(claims) = app.jwt.verify(token) {
        return Ok(Some(claims.agent_id));
    }
    match Caller::from_key(app, Some(token)).await {
        Ok(Caller::Operator) => Ok(None),
        _ => Err(unauthorized(
            "the bearer token is neither a valid agent token (log the agent in again) nor an operator key",
        )),
    }
}

fn not_found() -> Failure {
    Failure::new(StatusCode::NOT_FOUND, "not_found", "no such release file")
}

fn no_store(bytes: Vec<u8>) -> Response {
    let mut response = ([(header::CONTENT_TYPE, "application/json")], bytes).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn metadata(
    State(app): State<AppState>,
    Extension(service): Service,
    Path((channel, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    if validate_channel(&channel).is_err() {
        return Err(not_found());
    }
    reader(&app, &headers).await?;
    let repo = service.bundles.repo.clone();
    if !service.bundles.initialised().await? {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            "releases_not_configured",
            "this hub has no release repository yet: run `edge-hub bundle keys init --root-dir DIR`",
        ));
    }
    let view = tokio::task::spawn_blocking(move || {
        if file == "timestamp.json" {
            // The online keys keep the metadata fresh while the hub runs (and on its timer).
            match repo.refresh_online_metadata() {
                Ok(refreshed) => crate::bundles::log_refresh(&refreshed),
                Err(e) => warn!(error = %e, "cannot re-sign the timestamp; serving the current one"),
            }
        }
        repo.release_view(&channel, &file)
    })
    .await
    .map_err(|e| Failure::internal("release metadata task failed", &e))?;
    match view {
        Ok(Some(bytes)) => Ok(no_store(bytes)),
        Ok(None) | Err(edge_bundle::repo::RepoError::Name(_)) => Err(not_found()),
        Err(e) => Err(Failure::internal("the release repository failed", &e)),
    }
}

async fn target(
    State(app): State<AppState>,
    Extension(service): Service,
    Path((channel, platform, arch, file)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let Some(key) = Repo::release_file_key(&channel, &platform, &arch, &file) else {
        return Err(not_found());
    };
    reader(&app, &headers).await?;
    serve_file(&service.bundles.blobs, &format!("repo/{key}"), &headers, "application/octet-stream")
        .await?
        .ok_or_else(not_found)
}

async fn failed(
    State(app): State<AppState>,
    Extension(service): Service,
    headers: HeaderMap,
    Json(report): Json<UpdateFailedRequest>,
) -> Result<Json<UpdateFailedResponse>, Failure> {
    let Some(agent_id) = reader(&app, &headers).await? else {
        return Err(Failure::new(StatusCode::FORBIDDEN, "forbidden", "only agents report failed updates"));
    };
    let release = ReleaseRef::new(&report.channel, &report.platform, &report.arch, &report.version)
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
    let valid_agent = !agent_id.is_empty()
        && agent_id.len() <= 128
        && agent_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid_agent {
        return Err(Failure::new(StatusCode::BAD_REQUEST, "bad_request", "the agent id is not a file-safe name"));
    }
    let reason: String = report.reason.chars().take(500).collect();
    let blobs = &service.bundles.blobs;
    let dir = format!("{FAILURES}/{}/{}/{}/{}", release.channel, release.platform, release.arch, release.version);
    let record = serde_json::json!({
        "agentId": agent_id,
        "previousVersion": report.previous_version,
        "reason": reason,
        "receivedAt": crate::crypto::rfc3339(crate::crypto::now_ms()),
    });
    // Created only if absent: the agent's first report stays, a repeat counts once.
    blobs
        .create(&format!("{dir}/{agent_id}"), record.to_string().into())
        .await
        .map_err(|e| Failure::internal("cannot record the failed update", &e))?;
    let failures = blobs
        .list(&dir)
        .await
        .map_err(|e| Failure::internal("cannot count failed updates", &e))?
        .iter()
        .filter(|l| !l.key.rsplit('/').next().unwrap_or_default().starts_with('.'))
        .count() as u32;
    let service = Arc::clone(&service);
    let answer = tokio::task::spawn_blocking(move || -> Result<UpdateFailedResponse, Failure> {
        warn!(release = %release, agent_id, failures, reason, "an agent rolled back a release");
        let mut paused = false;
        if failures >= service.threshold {
            match service.bundles.repo.change_release(
                &release.channel,
                &release.platform,
                &release.arch,
                &release.version.to_string(),
                ReleaseChange::Pause,
            ) {
                Ok(entry) => {
                    paused = true;
                    if entry.changed {
                        info!(release = %release, failures, "release paused: too many agents rolled it back");
                    }
                }
                // A report for a release this hub does not list (yet) is kept, not fatal.
                Err(e) => warn!(release = %release, error = %e, "cannot pause the release"),
            }
        } else {
            paused = service
                .bundles
                .repo
                .releases(Some(&release.channel))
                .ok()
                .and_then(|all| all.into_iter().find(|r| r.target_name == release.target_name()))
                .is_some_and(|r| r.meta.paused);
        }
        Ok(UpdateFailedResponse { failures, paused })
    })
    .await
    .map_err(|e| Failure::internal("failed-update task failed", &e))??;
    Ok(Json(answer))
}
