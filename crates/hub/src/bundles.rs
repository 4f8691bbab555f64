//! Trusted bundles on the hub: serving the TUF repository built by `edge-hub bundle …`
//! (metadata, resumable target downloads, the seed `manifest.json` view), the durable run
//! reports of `POST /edge/notify`, and checking `bundle` job payloads.
//!
//! Its state lives in files under the bundle directory (`--bundle-dir`, default `bundles/`
//! next to the SQLite file): the repository in `repo/` (see `edge_bundle::repo`) and one
//! JSON file per reported run in `runs/`. The one contact with the job store: a notify that
//! carries the run's job result finishes the `bundle` job through the store's fenced
//! `finish_job`, exactly like the `job_result` frame, because the agent forgets a run once
//! its notify is acknowledged. It must never serve a path that was not validated against the
//! repository's naming rules, never hold an offline root key, never record a run twice, and
//! never finish a job the reporting agent does not hold (or another type than `bundle`).

use crate::api::{bearer_token, AppState, Caller, Failure, Operator};
use crate::crypto::{now_ms, rfc3339};
use crate::queue::plan_failure;
use crate::store::{FinishOutcome, FinishRequest, JobState, Transition};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use edge_bundle::names::{validate_slug, BundleRef};
use edge_bundle::repo::Repo;
use edge_bundle::verify::Wanted;
use edge_bundle::view::MetadataFile;
use edge_bundle::ManifestView;
use edge_protocol::api::{NotifyRequest, NotifyResponse, NOTIFY_PATH};
use edge_protocol::jobs::{BundlePayload, BUNDLE, MAX_BUNDLE_TIMEOUT_MS};
use edge_protocol::{JobError, LogStream};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::{debug, info, warn};

/// Notify bodies carry captured output (the agent caps each stream at 1 MiB).
pub const MAX_NOTIFY_BYTES: usize = 8 * 1024 * 1024;

/// Default cap on the run reports kept for one agent: a few hundred full-size reports.
pub const DEFAULT_RUN_BYTES_PER_AGENT: u64 = 256 * 1024 * 1024;

/// Where the bundle state of a hub lives.
#[derive(Debug, Clone)]
pub struct BundleService {
    pub repo: Repo,
    runs: PathBuf,
    /// Stored run-report bytes one agent may hold; past it a new report answers 507.
    run_bytes_per_agent: u64,
}

impl BundleService {
    pub fn open(dir: PathBuf) -> BundleService {
        BundleService {
            repo: Repo::new(dir.join("repo")),
            runs: dir.join("runs"),
            run_bytes_per_agent: DEFAULT_RUN_BYTES_PER_AGENT,
        }
    }

    pub fn with_run_bytes_per_agent(mut self, bytes: u64) -> BundleService {
        self.run_bytes_per_agent = bytes;
        self
    }

    /// Deletes run reports received before `before`, so they go with the job history
    /// (the sweeper purges a finished job after the same retention).
    pub fn purge_runs(&self, before: std::time::SystemTime) -> std::io::Result<usize> {
        purge_runs(&self.runs, before)
    }
}

/// Purges old run reports every minute until `stop`; they age out with their jobs.
pub async fn purge_runs_periodically(
    service: BundleService,
    retention: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(before) = std::time::SystemTime::now().checked_sub(retention) else { continue };
        let service = service.clone();
        match tokio::task::spawn_blocking(move || service.purge_runs(before)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(count)) => info!(count, "bundle run reports past retention deleted"),
            Ok(Err(e)) => warn!(error = %e, "cannot purge old bundle run reports"),
            Err(e) => warn!(error = %e, "the run-report purge task failed"),
        }
    }
}

/// `bundles/` beside the SQLite file of `database_url`, else in the user's data directory.
/// `EDGE_HUB_BUNDLE_DIR` wins when set.
pub fn default_bundle_dir(database_url: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("EDGE_HUB_BUNDLE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let file = database_url.strip_prefix("sqlite://").or_else(|| database_url.strip_prefix("sqlite:"));
    if let Some(parent) =
        file.map(|f| PathBuf::from(f.split('?').next().unwrap_or(f))).and_then(|p| p.parent().map(PathBuf::from))
    {
        if !parent.as_os_str().is_empty() {
            return parent.join("bundles");
        }
    }
    dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("edge-hub").join("bundles")
}

pub fn router(app: AppState, service: BundleService) -> Router {
    Router::new()
        .route(edge_protocol::api::BUNDLE_ROOT_PATH, get(root_json))
        .route("/v1/bundles/metadata/{file}", get(metadata))
        .route("/v1/bundles/targets/{tenant}/{bundle}/{file}", get(target))
        .route("/v1/bundles/{tenant}/{bundle}/{version}/manifest.json", get(manifest))
        .route("/v1/bundles/runs/{run_id}", get(run_record))
        .route(NOTIFY_PATH, post(notify))
        .layer(DefaultBodyLimit::max(MAX_NOTIFY_BYTES))
        .layer(Extension(Arc::new(service)))
        .with_state(app)
}

type Service = Extension<Arc<BundleService>>;

fn not_configured() -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        "bundles_not_configured",
        "this hub has no bundle repository yet: run `edge-hub bundle keys init --root-dir DIR`",
    )
}

fn repo_failure(error: edge_bundle::repo::RepoError) -> Failure {
    match error {
        edge_bundle::repo::RepoError::NotInitialised(_) => not_configured(),
        other => Failure::internal("the bundle repository failed", &other),
    }
}

fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn read_file(path: PathBuf) -> Result<Vec<u8>, Failure> {
    match tokio::fs::read(&path).await {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Failure::new(StatusCode::NOT_FOUND, "not_found", "no such metadata file"))
        }
        Err(e) => Err(Failure::internal("cannot read bundle metadata", &e)),
    }
}

fn json_bytes(bytes: Vec<u8>) -> Response {
    no_store(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

async fn root_json(Extension(service): Service) -> Result<Response, Failure> {
    let repo = service.repo.clone();
    let bytes = tokio::task::spawn_blocking(move || repo.root_json())
        .await
        .map_err(|e| Failure::internal("root.json task failed", &e))?
        .map_err(repo_failure)?;
    Ok(json_bytes(bytes))
}

/// Who reads the repository. Every tenant's bundles are confidential to that tenant: an
/// agent (its JWT) and a creator-scoped API key read their own tenant's view
/// (`edge_bundle::view`), an operator key reads everything, and nobody else reads anything
/// but `root.json` (public: agents get it at enrollment and it names no tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reader {
    Everything,
    Tenant(String),
}

impl Reader {
    async fn of(app: &AppState, headers: &HeaderMap) -> Result<Reader, Failure> {
        let unauthorized = |why: &str| Failure::new(StatusCode::UNAUTHORIZED, "unauthorized", why.to_owned());
        let Some(token) = bearer_token(headers) else {
            return Err(unauthorized(
                "bundles are served to the agents of their tenant and to operator keys: send the agent's JWT \
                 or an API key as `Authorization: Bearer <token>`",
            ));
        };
        if let Ok(claims) = app.jwt.verify(token) {
            return Ok(Reader::Tenant(claims.creator_id));
        }
        match Caller::from_key(app, Some(token)).await {
            Ok(Caller::Operator) => Ok(Reader::Everything),
            Ok(Caller::Creator(creator)) => Ok(Reader::Tenant(creator)),
            Err(_) => Err(unauthorized(
                "the bearer token is neither a valid agent token (log the agent in again) nor an API key this \
                 hub knows (`edge-hub api-key create`)",
            )),
        }
    }

    fn may_read(&self, tenant: &str) -> bool {
        match self {
            Reader::Everything => true,
            Reader::Tenant(own) => own == tenant,
        }
    }
}

fn no_metadata() -> Failure {
    Failure::new(StatusCode::NOT_FOUND, "not_found", "no such metadata file")
}

async fn metadata(
    State(app): State<AppState>,
    Extension(service): Service,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let Some(which) = MetadataFile::parse(&file) else { return Err(no_metadata()) };
    if !service.repo.is_initialised() {
        return Err(not_configured());
    }
    let reader = if which == MetadataFile::Root { Reader::Everything } else { Reader::of(&app, &headers).await? };
    if which == MetadataFile::Timestamp {
        // The online keys keep timestamp (and snapshot) fresh while the hub runs.
        let repo = service.repo.clone();
        match tokio::task::spawn_blocking(move || repo.refresh_online_metadata()).await {
            Ok(Ok(true)) => info!("bundle timestamp re-signed"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot re-sign the bundle timestamp; serving the current one"),
            Err(e) => warn!(error = %e, "timestamp refresh task failed"),
        }
    }
    match reader {
        Reader::Everything => Ok(json_bytes(read_file(service.repo.metadata_dir().join(&file)).await?)),
        Reader::Tenant(tenant) => {
            let repo = service.repo.clone();
            let view = tokio::task::spawn_blocking(move || repo.tenant_view(&tenant, &file))
                .await
                .map_err(|e| Failure::internal("metadata view task failed", &e))?;
            match view {
                Ok(Some(bytes)) => Ok(json_bytes(bytes)),
                // Another tenant's role answers exactly like a missing file.
                Ok(None) | Err(edge_bundle::repo::RepoError::Name(_)) => Err(no_metadata()),
                Err(e) => Err(repo_failure(e)),
            }
        }
    }
}

/// `<sha256>.<version>.zip` under a tenant and bundle.
fn valid_target_file(tenant: &str, bundle: &str, file: &str) -> bool {
    let Some((sha, rest)) = file.split_once('.') else { return false };
    let Some(version) = rest.strip_suffix(".zip") else { return false };
    sha.len() == 64
        && sha.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && BundleRef::new(tenant, bundle, version).is_ok()
}

/// Serves a bundle zip, honouring one `Range: bytes=a-[b]` so agents resume downloads.
async fn target(
    State(app): State<AppState>,
    Extension(service): Service,
    Path((tenant, bundle, file)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let missing = || Failure::new(StatusCode::NOT_FOUND, "not_found", "no such bundle file");
    if !valid_target_file(&tenant, &bundle, &file) {
        return Err(missing());
    }
    // Another tenant's bundle answers exactly like a missing one.
    if !Reader::of(&app, &headers).await?.may_read(&tenant) {
        return Err(missing());
    }
    let path = service.repo.targets_dir().join(&tenant).join(&bundle).join(&file);
    serve_file(&path, &headers, "application/zip").await?.ok_or_else(missing)
}

/// Serves a file under consistent (never reused) name, honouring one `Range: bytes=a-[b]`
/// so agents resume downloads; `Ok(None)` when it does not exist. Releases use it too.
pub(crate) async fn serve_file(
    path: &std::path::Path,
    headers: &HeaderMap,
    content_type: &'static str,
) -> Result<Option<Response>, Failure> {
    let mut handle = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Failure::internal("cannot open the bundle file", &e)),
    };
    let length = handle.metadata().await.map_err(|e| Failure::internal("cannot stat the bundle file", &e))?.len();
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(|v| parse_range(v, length));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, length.saturating_sub(1)),
        Some(Some((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end),
        Some(None) => {
            let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{length}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return Ok(Some(response));
        }
    };
    let count = if length == 0 { 0 } else { end - start + 1 };
    handle
        .seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|e| Failure::internal("cannot seek the bundle file", &e))?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(handle.take(count), 256 * 1024));
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(value) = HeaderValue::from_str(&count.to_string()) {
        headers.insert(header::CONTENT_LENGTH, value);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(value) = HeaderValue::from_str(&format!("bytes {start}-{end}/{length}")) {
            headers.insert(header::CONTENT_RANGE, value);
        }
    }
    // Consistent names never change content: safe to cache forever.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    Ok(Some(response))
}

/// One `bytes=a-b`, `bytes=a-` or `bytes=-n` range within `length`; `None` when unsatisfiable.
fn parse_range(value: &str, length: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || length == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let suffix: u64 = b.parse().ok()?;
        if suffix == 0 {
            return None;
        }
        (length.saturating_sub(suffix), length - 1)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() { length - 1 } else { b.parse::<u64>().ok()?.min(length - 1) };
        (start, end)
    };
    (start <= end && start < length).then_some((start, end))
}

async fn manifest(
    State(app): State<AppState>,
    Extension(service): Service,
    Path((tenant, bundle, version)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<ManifestView>, Failure> {
    if !Reader::of(&app, &headers).await?.may_read(&tenant) {
        return Err(Failure::new(StatusCode::NOT_FOUND, "bundle_not_found", "no such bundle version"));
    }
    let wanted = Wanted::parse(&version).map_err(|e| Failure::bad_request(e.to_string()))?;
    validate_slug("bundle", &bundle).map_err(|e| Failure::bad_request(e.to_string()))?;
    let repo = service.repo.clone();
    let tenant_for_task = tenant.clone();
    let targets = tokio::task::spawn_blocking(move || repo.tenant_targets(&tenant_for_task))
        .await
        .map_err(|e| Failure::internal("manifest task failed", &e))?
        .map_err(|e| match e {
            edge_bundle::repo::RepoError::Name(n) => Failure::bad_request(n.to_string()),
            other => repo_failure(other),
        })?;
    let mut matching: Vec<_> = targets
        .into_iter()
        .filter_map(|(name, length, meta)| BundleRef::parse_target_name(&name).ok().map(|r| (r, length, meta)))
        .filter(|(r, _, _)| r.bundle == bundle)
        .collect();
    matching.sort_by(|a, b| a.0.version.cmp(&b.0.version));
    let chosen = match &wanted {
        Wanted::Exact(v) => matching.into_iter().find(|(r, _, _)| &r.version == v),
        Wanted::Latest => {
            let stable = matching.iter().rposition(|(r, _, _)| r.version.pre.is_empty());
            match stable {
                Some(i) => matching.into_iter().nth(i),
                None => matching.into_iter().last(),
            }
        }
    };
    let Some((_, length, meta)) = chosen else {
        return Err(Failure::new(StatusCode::NOT_FOUND, "bundle_not_found", "no such bundle version"));
    };
    let mut view = ManifestView::new(&meta, length);
    // The signed edge_url is a path; tools of the seed expect an absolute URL.
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        if host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '[' | ']')) {
            view.edge_url = format!("http://{host}{}", view.edge_url);
        }
    }
    Ok(Json(view))
}

/// A recorded run, as `runs/<run_id>.json` and `GET /v1/bundles/runs/{run_id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub run_id: String,
    pub job_id: String,
    pub agent_id: String,
    pub creator_id: String,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub error_code: Option<String>,
    pub message: Option<String>,
    pub bundle: Option<String>,
    pub version: Option<String>,
    pub received_at: String,
}

fn valid_run_id(run_id: &str) -> bool {
    (8..=80).contains(&run_id.len()) && run_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

async fn notify(
    State(app): State<AppState>,
    Extension(service): Service,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<NotifyResponse>), Failure> {
    let unauthorized = |why: String| Failure::new(StatusCode::UNAUTHORIZED, "unauthorized", why);
    let token = bearer_token(&headers)
        .ok_or_else(|| unauthorized("send the agent's JWT as `Authorization: Bearer <token>`".into()))?;
    let claims = app.jwt.verify(token).map_err(|e| unauthorized(format!("agent token refused: {e}")))?;
    let request: NotifyRequest = serde_json::from_slice(&body)
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, "invalid_body", format!("not a notify body: {e}")))?;
    if !valid_run_id(&request.run_id) {
        return Err(Failure::bad_request("run_id must be 8–80 characters of A-Z a-z 0-9 _ -"));
    }
    if !matches!(request.status.as_str(), "succeeded" | "failed") {
        return Err(Failure::bad_request("status must be \"succeeded\" or \"failed\""));
    }
    // Nothing is written for a job this agent never held: otherwise any enrolled agent
    // could fill the disk, or plant a report under another agent's job.
    let held = held_lease(&app, &claims.agent_id, &request.job_id)
        .await
        .map_err(|e| Failure::internal("cannot look up the job of the run", &e))?;
    if held.is_none() {
        warn!(agent_id = claims.agent_id, "run report refused: the agent never held that bundle job");
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            "job_not_held",
            "no bundle job with this jobId was ever leased to this agent (or it was purged): \
             only the agent that ran a job reports its run",
        ));
    }
    let record = RunRecord {
        run_id: request.run_id.clone(),
        job_id: request.job_id,
        agent_id: claims.agent_id.clone(),
        creator_id: claims.creator_id,
        status: request.status,
        stdout: request.stdout,
        stderr: request.stderr,
        exit_code: request.exit_code,
        duration_ms: request.duration_ms,
        error_code: request.error_code,
        message: request.message,
        bundle: request.bundle,
        version: request.version,
        received_at: rfc3339(now_ms()),
    };
    let runs = service.runs.clone();
    let cap = service.run_bytes_per_agent;
    let run_id = request.run_id.clone();
    let agent_id = claims.agent_id;
    let job_id = record.job_id.clone();
    let recorded = tokio::task::spawn_blocking(move || record_once(&runs, &record, cap))
        .await
        .map_err(|e| Failure::internal("notify task failed", &e))?
        .map_err(|e| Failure::internal("cannot record the run", &e))?;
    match recorded {
        Recorded::New => info!(run_id, agent_id, "bundle run reported"),
        Recorded::Duplicate => debug!(run_id, agent_id, "bundle run reported again; already recorded"),
        Recorded::OverCap => {
            warn!(run_id, agent_id, cap, "run report refused: the agent's stored reports reach the cap");
            // 507: the agent keeps the report and retries; space frees as old reports age out.
            return Err(Failure::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "run_storage_full",
                format!(
                    "this agent's stored run reports reach the hub's cap of {cap} bytes; retry after older \
                     reports are purged, or raise --run-bytes-per-agent"
                ),
            ));
        }
    }
    // The agent deletes its journal entry on this 2xx, so the job must be finished by now
    // too: its job_result frame may never come (a crash right after this answer).
    if let Some(report) = JobReport::from_notify(request.result, request.error) {
        finish_job(&app, &agent_id, &job_id, report)
            .await
            .map_err(|e| Failure::internal("cannot finish the job of the run", &e))?;
    }
    Ok((StatusCode::OK, Json(NotifyResponse { run_id, duplicate: matches!(recorded, Recorded::Duplicate) })))
}

/// The job outcome a notify carries: the `job_result` frame's `data` or `err`.
enum JobReport {
    Succeeded(serde_json::Value),
    Failed(JobError),
}

impl JobReport {
    fn from_notify(result: Option<serde_json::Value>, error: Option<JobError>) -> Option<JobReport> {
        match (result, error) {
            (_, Some(error)) => Some(JobReport::Failed(error)),
            (Some(data), None) => Some(JobReport::Succeeded(data)),
            (None, None) => None,
        }
    }
}

/// Finishes a `bundle` job from a notify the way a `job_result` frame does: the store's
/// fenced `finish_job` under this agent's lease token, failures planned by the same retry
/// policy. Idempotent: the frame arriving too (before or after) finds `AlreadyFinished`, a
/// lease that moved on makes it `Stale`, and a job this agent never held is left alone.
async fn finish_job(
    app: &AppState,
    agent_id: &str,
    job_id: &str,
    report: JobReport,
) -> Result<Option<FinishOutcome>, crate::store::StoreError> {
    let Some((job, lease_token)) = held_lease(app, agent_id, job_id).await? else {
        return Ok(Some(FinishOutcome::NotHeld));
    };
    let now = now_ms();
    let (transition, result, error) = match report {
        JobReport::Succeeded(data) => (Transition::Succeeded, Some(data), None),
        JobReport::Failed(err) => {
            let transition = plan_failure(&job, &err, &app.queue, now, crate::queue::unit_random());
            // A JobError always serialises; `None` would only lose the details, not the state.
            (transition, None, serde_json::to_value(&err).ok())
        }
    };
    let request = FinishRequest {
        job_id: job_id.to_owned(),
        agent_id: agent_id.to_owned(),
        lease_token,
        transition,
        result,
        error,
        sent_recipients: Vec::new(),
        uncertain_recipients: Vec::new(),
    };
    let outcome = app.store.finish_job(request, now).await?;
    match &outcome {
        FinishOutcome::Recorded(state) => {
            app.dispatcher.finished(agent_id, job_id);
            match state {
                JobState::Succeeded => crate::metrics::job_completed(),
                JobState::Failed => crate::metrics::job_failed(),
                JobState::Dead => crate::metrics::job_dead(),
                JobState::Pending => crate::metrics::job_retried(),
                _ => {}
            }
            info!(job_id, agent_id, new_status = %state, lease_token, "job finished from its run report");
            if *state == JobState::Pending {
                app.events.job_available().await;
            } else {
                app.events.job_finished(job_id).await;
            }
        }
        FinishOutcome::AlreadyFinished => app.dispatcher.finished(agent_id, job_id),
        FinishOutcome::Stale => crate::metrics::stale_result(),
        FinishOutcome::NotHeld => {}
    }
    Ok(Some(outcome))
}

/// The `bundle` job `job_id` and the latest lease token `agent_id` held it under, if it
/// ever did: the lease it holds now, else its latest attempt. `None` for another type
/// (only bundle runs report here; any other job finishes over its own session).
async fn held_lease(
    app: &AppState,
    agent_id: &str,
    job_id: &str,
) -> Result<Option<(crate::store::JobRecord, i64)>, crate::store::StoreError> {
    let Some(job) = app.store.job(job_id).await? else { return Ok(None) };
    if job.job_type != BUNDLE {
        return Ok(None);
    }
    let token = if job.status.is_held() && job.assigned_agent_id.as_deref() == Some(agent_id) {
        Some(job.lease_token)
    } else {
        let attempts = app.store.job_attempts(job_id).await?;
        attempts.iter().filter(|a| a.agent_id == agent_id).map(|a| a.lease_token).max()
    };
    Ok(token.map(|token| (job, token)))
}

enum Recorded {
    New,
    Duplicate,
    /// Not recorded: the agent's stored reports would pass the cap.
    OverCap,
}

/// `runs/agents/<agent_id>/`: a second hard link of each of the agent's reports, so its
/// stored bytes are one folder's sizes (links share the data: nothing is stored twice).
fn agent_runs_dir(runs: &std::path::Path, agent_id: &str) -> Option<PathBuf> {
    let safe = (1..=80).contains(&agent_id.len())
        && agent_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    safe.then(|| runs.join("agents").join(agent_id))
}

fn stored_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut total = 0u64;
    for entry in entries {
        total = total.saturating_add(entry?.metadata()?.len());
    }
    Ok(total)
}

/// Deletes run reports (both links) modified before `before`, and their delivery lines.
fn purge_runs(runs: &std::path::Path, before: std::time::SystemTime) -> std::io::Result<usize> {
    let old = |path: &std::path::Path| {
        std::fs::metadata(path).and_then(|m| m.modified()).is_ok_and(|modified| modified < before)
    };
    let mut purged = std::collections::HashSet::new();
    let mut folders = vec![runs.to_path_buf()];
    if let Ok(agents) = std::fs::read_dir(runs.join("agents")) {
        folders.extend(agents.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for folder in folders {
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for path in entries.flatten().map(|e| e.path()) {
            let Some(run_id) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if valid_run_id(run_id) && old(&path) {
                std::fs::remove_file(&path)?;
                purged.insert(run_id.to_owned());
            }
        }
    }
    if !purged.is_empty() {
        let log = runs.join("deliveries.log");
        if let Ok(text) = std::fs::read_to_string(&log) {
            let kept: String = text
                .lines()
                .filter(|line| !purged.contains(line.split(' ').next().unwrap_or_default()))
                .map(|line| format!("{line}\n"))
                .collect();
            crate::private_files::create_private_file(&runs.join(".deliveries.tmp"))?;
            std::fs::write(runs.join(".deliveries.tmp"), kept)?;
            std::fs::rename(runs.join(".deliveries.tmp"), log)?;
        }
    }
    Ok(purged.len())
}

/// Writes the record under a temporary name, then hard-links it to its final name: the
/// link fails if the run is already there, so two racing deliveries record it once, and a
/// reader never sees a partial record. Each delivery also appends one line to
/// `deliveries.log` (what the exactly-once test counts). A new run that would take the
/// agent's stored reports past `cap` bytes is not written.
fn record_once(runs: &std::path::Path, record: &RunRecord, cap: u64) -> std::io::Result<Recorded> {
    use std::io::Write as _;
    // Run reports carry the creator's captured output: private like the database.
    crate::private_files::create_private_dir(runs)?;
    let final_path = runs.join(format!("{}.json", record.run_id));
    let agent_dir = agent_runs_dir(runs, &record.agent_id)
        .ok_or_else(|| std::io::Error::other("an agent id the hub issued has unexpected characters"))?;
    let outcome = if final_path.exists() {
        Recorded::Duplicate
    } else {
        let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        // Racing reports of one agent may pass the cap by a report or two; the cap bounds
        // the disk an agent can take, it is not an exact quota.
        if stored_bytes(&agent_dir)?.saturating_add(bytes.len() as u64) > cap {
            return Ok(Recorded::OverCap);
        }
        crate::private_files::create_private_dir(&agent_dir)?;
        let temporary = runs.join(format!(".{}.{}.tmp", record.run_id, std::process::id()));
        crate::private_files::create_private_file(&temporary)?;
        let mut file = std::fs::OpenOptions::new().write(true).truncate(true).open(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        let linked = std::fs::hard_link(&temporary, &final_path);
        if linked.is_ok() {
            match std::fs::hard_link(&temporary, agent_dir.join(format!("{}.json", record.run_id))) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => warn!(error = %e, "cannot count a run report against its agent"),
            }
        }
        let _ = std::fs::remove_file(&temporary);
        match linked {
            Ok(()) => Recorded::New,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Recorded::Duplicate,
            Err(e) => return Err(e),
        }
    };
    let log_path = runs.join("deliveries.log");
    crate::private_files::create_private_file(&log_path)?;
    let mut log = std::fs::OpenOptions::new().append(true).open(log_path)?;
    writeln!(log, "{} {}", record.run_id, if matches!(outcome, Recorded::New) { "new" } else { "duplicate" })?;
    Ok(outcome)
}

async fn run_record(
    Extension(service): Service,
    _operator: Operator,
    Path(run_id): Path<String>,
) -> Result<Response, Failure> {
    if !valid_run_id(&run_id) {
        return Err(Failure::new(StatusCode::NOT_FOUND, "not_found", "no such run"));
    }
    let path = service.runs.join(format!("{run_id}.json"));
    let bytes = read_file(path).await.map_err(|_| Failure::new(StatusCode::NOT_FOUND, "not_found", "no such run"))?;
    let deliveries = tokio::fs::read_to_string(service.runs.join("deliveries.log"))
        .await
        .map(|log| log.lines().filter(|l| l.split(' ').next() == Some(run_id.as_str())).count())
        .unwrap_or(0);
    let mut value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| Failure::internal("a run record is unreadable", &e))?;
    value["deliveries"] = serde_json::json!(deliveries);
    Ok(Json(value).into_response())
}

/// A `job_log` chunk from an agent's session. Output is the creator's data: only its size
/// is logged; the full capture arrives with the run's `/edge/notify` record.
pub fn on_job_log(agent_id: &str, job_id: &str, stream: LogStream, seq: u64, data: &str) {
    debug!(agent_id, job_id, ?stream, seq, bytes = data.len(), "job output chunk");
}

/// The `bundle` job type's payload check, registered in `queue::JobTypes::default`.
pub fn validate_payload_message(payload: &serde_json::Value) -> Result<(), String> {
    validate_payload(payload).map_err(|f| f.body.message)
}

pub fn validate_payload(payload: &serde_json::Value) -> Result<(), Failure> {
    let parsed: BundlePayload = serde_json::from_value(payload.clone())
        .map_err(|e| Failure::bad_request(format!("`payload` is not a valid {BUNDLE} payload: {e}")))?;
    validate_slug("bundle", &parsed.bundle).map_err(|e| Failure::bad_request(format!("`payload.bundle`: {e}")))?;
    Wanted::parse(&parsed.version)
        .map_err(|e| Failure::bad_request(format!("`payload.version`: {e} (or \"latest\")")))?;
    if let Some(tenant) = &parsed.tenant {
        validate_slug("tenant", tenant).map_err(|e| Failure::bad_request(format!("`payload.tenant`: {e}")))?;
    }
    if parsed.timeout_ms.is_some_and(|t| t == 0 || t > MAX_BUNDLE_TIMEOUT_MS) {
        return Err(Failure::bad_request(format!("`payload.timeoutMs` must be 1–{MAX_BUNDLE_TIMEOUT_MS}")));
    }
    if parsed
        .secrets
        .keys()
        .any(|k| k.is_empty() || !k.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'))
    {
        return Err(Failure::bad_request("`payload.secrets` names must be environment variable names (A-Z 0-9 _)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-", 10), Some((0, 9)));
        assert_eq!(parse_range("bytes=4-6", 10), Some((4, 6)));
        assert_eq!(parse_range("bytes=4-60", 10), Some((4, 9)));
        assert_eq!(parse_range("bytes=-3", 10), Some((7, 9)));
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), None);
        assert_eq!(parse_range("items=0-1", 10), None);
    }

    #[test]
    fn only_repository_names_are_served() {
        assert_eq!(MetadataFile::parse("timestamp.json"), Some(MetadataFile::Timestamp));
        assert_eq!(MetadataFile::parse("3.acme.json"), Some(MetadataFile::Role(3, "acme".into())));
        assert_eq!(MetadataFile::parse("2.root.json"), Some(MetadataFile::Root));
        assert_eq!(MetadataFile::parse("../keys/targets.pk8"), None);
        assert_eq!(MetadataFile::parse("x.acme.json"), None);
        assert_eq!(MetadataFile::parse("3.timestamp.json"), None);
        assert_eq!(MetadataFile::parse("3.../x.json"), None);
        let sha = "a".repeat(64);
        assert!(valid_target_file("acme", "report", &format!("{sha}.1.0.0.zip")));
        assert!(!valid_target_file("acme", "report", "../../keys.zip"));
        assert!(!valid_target_file("acme", "..", &format!("{sha}.1.0.0.zip")));
    }

    fn run(run_id: &str, agent_id: &str) -> RunRecord {
        RunRecord {
            run_id: run_id.to_owned(),
            job_id: "job_1".to_owned(),
            agent_id: agent_id.to_owned(),
            creator_id: "c".to_owned(),
            status: "succeeded".to_owned(),
            stdout: "out".to_owned(),
            stderr: String::new(),
            exit_code: Some(0),
            duration_ms: 1,
            error_code: None,
            message: None,
            bundle: None,
            version: None,
            received_at: rfc3339(now_ms()),
        }
    }

    #[test]
    fn run_reports_age_out_with_the_job_history() {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        assert!(matches!(record_once(&runs, &run("run_old_00001", "agt_a"), 1 << 20).unwrap(), Recorded::New));
        assert!(matches!(record_once(&runs, &run("run_new_00001", "agt_a"), 1 << 20).unwrap(), Recorded::New));
        let day = std::time::Duration::from_secs(86_400);
        let two_days_ago = std::time::SystemTime::now() - 2 * day;
        // Both names are links to one file: ageing one ages the other.
        std::fs::File::options()
            .write(true)
            .open(runs.join("run_old_00001.json"))
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();
        assert_eq!(purge_runs(&runs, std::time::SystemTime::now() - day).unwrap(), 1);
        assert!(!runs.join("run_old_00001.json").exists());
        assert!(!runs.join("agents/agt_a/run_old_00001.json").exists(), "the agent's link goes too");
        assert!(runs.join("run_new_00001.json").exists() && runs.join("agents/agt_a/run_new_00001.json").exists());
        let log = std::fs::read_to_string(runs.join("deliveries.log")).unwrap();
        assert_eq!(log, "run_new_00001 new\n");
        // The agent's budget is freed with it.
        assert_eq!(
            stored_bytes(&runs.join("agents/agt_a")).unwrap(),
            std::fs::metadata(runs.join("run_new_00001.json")).unwrap().len()
        );
    }

    #[test]
    fn the_default_bundle_dir_sits_next_to_the_database() {
        assert_eq!(default_bundle_dir("sqlite:///var/lib/hub/hub.db"), PathBuf::from("/var/lib/hub/bundles"));
        assert_eq!(default_bundle_dir("sqlite:///tmp/x/hub.db?mode=rwc"), PathBuf::from("/tmp/x/bundles"));
    }
}
