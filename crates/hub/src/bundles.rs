//! Trusted bundles on the hub: serving the TUF repository built by `edge-hub bundle …`
//! (metadata, resumable target downloads, the seed `manifest.json` view), the durable run
//! reports of `POST /edge/notify`, and checking `bundle` job payloads.
//!
//! Its state lives in the hub's storage ([`crate::blobs`]: the bundle directory
//! `--bundle-dir`, default `bundles/` next to the SQLite file, or an S3 bucket shared by
//! several instances): the repository under `repo/` (see `edge_bundle::repo`) and one JSON
//! object per reported run under `runs/`. The one contact with the job store: a notify that
//! carries the run's job result finishes the `bundle` job through the store's fenced
//! `finish_job`, exactly like the `job_result` frame, because the agent forgets a run once
//! its notify is acknowledged. It must never serve a path that was not validated against the
//! repository's naming rules, never hold an offline root key, never record a run twice, and
//! never finish a job the reporting agent does not hold (or another type than `bundle`).

use crate::api::{bearer_token, AppState, Caller, Failure, Operator};
use crate::blobs::{BlobError, Blobs};
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
use tracing::{debug, info, warn};

/// Notify bodies carry captured output (the agent caps each stream at 1 MiB).
pub const MAX_NOTIFY_BYTES: usize = 8 * 1024 * 1024;

/// Default cap on the run reports kept for one agent: a few hundred full-size reports.
pub const DEFAULT_RUN_BYTES_PER_AGENT: u64 = 256 * 1024 * 1024;

/// Where the bundle state of a hub lives.
#[derive(Debug, Clone)]
pub struct BundleService {
    pub repo: Repo,
    pub blobs: Blobs,
    /// Stored run-report bytes one agent may hold; past it a new report answers 507.
    run_bytes_per_agent: u64,
}

impl BundleService {
    /// Must be called inside the tokio runtime (the repository's blocking calls reach the
    /// store through it).
    pub fn open(blobs: Blobs) -> BundleService {
        BundleService {
            repo: Repo::with_store(blobs.repo_store(), edge_bundle::repo::RepoOptions::default()),
            blobs,
            run_bytes_per_agent: DEFAULT_RUN_BYTES_PER_AGENT,
        }
    }

    pub fn with_run_bytes_per_agent(mut self, bytes: u64) -> BundleService {
        self.run_bytes_per_agent = bytes;
        self
    }

    /// Deletes run reports received before `before`, so they go with the job history
    /// (the sweeper purges a finished job after the same retention).
    pub async fn purge_runs(&self, before: std::time::SystemTime) -> Result<usize, BlobError> {
        purge_runs(&self.blobs, before).await
    }

    /// Whether the repository has been initialised (`edge-hub bundle keys init`).
    pub(crate) async fn initialised(&self) -> Result<bool, Failure> {
        match self.blobs.head(TIMESTAMP_KEY).await {
            Ok(found) => Ok(found.is_some()),
            Err(e) => Err(Failure::internal("the hub's storage failed", &e)),
        }
    }
}

const TIMESTAMP_KEY: &str = "repo/metadata/timestamp.json";

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
        match service.purge_runs(before).await {
            Ok(0) => {}
            Ok(count) => info!(count, "bundle run reports past retention deleted"),
            Err(e) => warn!(error = %e, "cannot purge old bundle run reports"),
        }
    }
}

/// How often the hub looks for signed metadata near its expiry, whether or not any agent
/// fetches: far inside the shortest half-life (the timestamp's, 12 hours by default), and
/// only reads when nothing is due.
pub const METADATA_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// Re-signs the repository's roles in the last half of their life (timestamp, snapshot, and
/// every targets role: top-level, tenants, release channels) every `interval` until `stop`,
/// the first time at once (a hub that was down catches up on start). The request path
/// renews only when an agent asks for a due timestamp; this timer does not wait for anyone,
/// so targets roles nobody publishes to for a year still never lapse.
pub async fn refresh_metadata_periodically(
    service: BundleService,
    interval: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match service.initialised().await {
            Ok(true) => {}
            // Nothing to keep fresh until `edge-hub bundle keys init`.
            Ok(false) => continue,
            // `initialised` logged the store's error; the next tick tries again.
            Err(_) => continue,
        }
        let repo = service.repo.clone();
        match tokio::task::spawn_blocking(move || repo.refresh_expiring_metadata()).await {
            Ok(Ok(refreshed)) => log_refresh(&refreshed),
            Ok(Err(e)) => {
                warn!(error = %e, "cannot re-sign the bundle repository's expiring metadata; trying again later")
            }
            Err(e) => warn!(error = %e, "metadata refresh task failed"),
        }
    }
}

/// One line for what a refresh re-signed, and a warning per role only the operator can renew.
pub(crate) fn log_refresh(refreshed: &edge_bundle::repo::Refreshed) {
    if refreshed.changed() {
        let targets: Vec<String> =
            refreshed.targets.iter().map(|(role, version)| format!("{role} v{version}")).collect();
        info!(
            targets = %targets.join(", "),
            snapshot = ?refreshed.snapshot,
            timestamp = ?refreshed.timestamp,
            "bundle and release metadata re-signed before it expires"
        );
    }
    for stale in &refreshed.needs_operator {
        warn!(role = %stale.role, "{stale}");
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

fn json_bytes(bytes: impl Into<Body>) -> Response {
    let body: Body = bytes.into();
    no_store(([(header::CONTENT_TYPE, "application/json")], body).into_response())
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
    if !service.initialised().await? {
        return Err(not_configured());
    }
    let reader = if which == MetadataFile::Root { Reader::Everything } else { Reader::of(&app, &headers).await? };
    if which == MetadataFile::Timestamp {
        // The online keys keep the metadata fresh while the hub runs (see
        // `refresh_metadata_periodically` for a hub no agent asks).
        let repo = service.repo.clone();
        match tokio::task::spawn_blocking(move || repo.refresh_online_metadata()).await {
            Ok(Ok(refreshed)) => log_refresh(&refreshed),
            Ok(Err(e)) => warn!(error = %e, "cannot re-sign the bundle timestamp; serving the current one"),
            Err(e) => warn!(error = %e, "timestamp refresh task failed"),
        }
    }
    match reader {
        Reader::Everything => match service.blobs.get(&format!("repo/{}", Repo::metadata_key(&file))).await {
            Ok(Some(bytes)) => Ok(json_bytes(bytes)),
            Ok(None) => Err(no_metadata()),
            Err(e) => Err(Failure::internal("cannot read bundle metadata", &e)),
        },
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
    let key = format!("repo/{}", Repo::target_key(&format!("{tenant}/{bundle}/{file}")));
    serve_file(&service.blobs, &key, &headers, "application/zip").await?.ok_or_else(missing)
}

/// Serves a stored file under a consistent (never reused) name, honouring one
/// `Range: bytes=a-[b]` so agents resume downloads; `Ok(None)` when it does not exist.
/// Releases use it too. The bytes stream from the store (a ranged GET on S3).
pub(crate) async fn serve_file(
    blobs: &Blobs,
    key: &str,
    headers: &HeaderMap,
    content_type: &'static str,
) -> Result<Option<Response>, Failure> {
    let Some((length, _)) = blobs.head(key).await.map_err(|e| Failure::internal("cannot read the bundle file", &e))?
    else {
        return Ok(None);
    };
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
    let body = if count == 0 {
        Body::empty()
    } else {
        // The object may have been replaced since `head` only if it was deleted: consistent
        // names are never rewritten with other bytes.
        match blobs.get_range(key, Some((start, end))).await {
            Ok(Some(ranged)) => Body::from_stream(ranged.body),
            Ok(None) => return Ok(None),
            Err(e) => return Err(Failure::internal("cannot read the bundle file", &e)),
        }
    };
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
    let cap = service.run_bytes_per_agent;
    let run_id = request.run_id.clone();
    let agent_id = claims.agent_id;
    let job_id = record.job_id.clone();
    let recorded =
        record_once(&service.blobs, &record, cap).await.map_err(|e| Failure::internal("cannot record the run", &e))?;
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

/// Run reports in the store (keys relative to the hub's storage root):
///
/// ```text
/// runs/<run_id>.json                       the record, created once (conditional put)
/// runs/agents/<agent_id>/<run_id>.<bytes>  an empty marker per report: the agent's stored
///                                          bytes are one listing, no reads
/// runs/deliveries/<run_id>/<n>             one marker per delivery ("new"/"duplicate"):
///                                          what the exactly-once tests count
/// ```
///
/// Hubs before the object store kept hard links (`runs/agents/<agent>/<run_id>.json`) and
/// an append-only `runs/deliveries.log`; both are still counted and purged, so an upgraded
/// hub reads the reports it already had.
const RUNS: &str = "runs";

fn agent_runs_prefix(agent_id: &str) -> Option<String> {
    let safe = (1..=80).contains(&agent_id.len())
        && agent_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    safe.then(|| format!("{RUNS}/agents/{agent_id}"))
}

/// Bytes of reports an agent holds: the sizes its markers name (or a legacy link's size).
async fn stored_bytes(blobs: &Blobs, agent_prefix: &str) -> Result<u64, BlobError> {
    let mut total = 0u64;
    for listed in blobs.list(agent_prefix).await? {
        let name = listed.key.rsplit('/').next().unwrap_or_default();
        let bytes = match name.rsplit_once('.') {
            Some((_, "json")) => listed.size,
            Some((_, size)) => size.parse().unwrap_or(0),
            None => 0,
        };
        total = total.saturating_add(bytes);
    }
    Ok(total)
}

/// The run id a key under `runs/` belongs to, if any.
fn run_of_key(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("runs/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let id = match parts.as_slice() {
        [file] => file.strip_suffix(".json")?,
        ["agents", _, file] => file.split('.').next()?,
        ["deliveries", run, _] => run,
        _ => return None,
    };
    valid_run_id(id).then_some(id)
}

/// Deletes run reports received before `before`, with their markers and delivery lines.
async fn purge_runs(blobs: &Blobs, before: std::time::SystemTime) -> Result<usize, BlobError> {
    let listed = blobs.list(RUNS).await?;
    let purged: std::collections::HashSet<String> = listed
        .iter()
        .filter(|l| l.modified < before && l.key.matches('/').count() == 1)
        .filter_map(|l| run_of_key(&l.key).map(str::to_owned))
        .collect();
    if purged.is_empty() {
        return Ok(0);
    }
    for l in &listed {
        if run_of_key(&l.key).is_some_and(|id| purged.contains(id)) {
            blobs.delete(&l.key).await?;
        }
    }
    let log_key = format!("{RUNS}/deliveries.log");
    if let Some(log) = blobs.get(&log_key).await? {
        let kept: String = String::from_utf8_lossy(&log)
            .lines()
            .filter(|line| !purged.contains(line.split(' ').next().unwrap_or_default()))
            .map(|line| format!("{line}\n"))
            .collect();
        blobs.put(&log_key, kept.into()).await?;
    }
    Ok(purged.len())
}

/// Records a run once: the record is a conditional put (`create`), so two racing
/// deliveries, to one hub or to two hubs sharing the store, record it once, and a reader
/// never sees a partial record (a put is atomic per object). Each delivery also leaves one
/// marker under `runs/deliveries/<run_id>/`. A new run that would take the agent's stored
/// reports past `cap` bytes is not written.
async fn record_once(blobs: &Blobs, record: &RunRecord, cap: u64) -> Result<Recorded, BlobError> {
    let record_key = format!("{RUNS}/{}.json", record.run_id);
    let agent_prefix = agent_runs_prefix(&record.agent_id).ok_or_else(|| {
        BlobError::Config(format!("the agent id {:?} the hub issued has unexpected characters", record.agent_id))
    })?;
    let outcome = if blobs.head(&record_key).await?.is_some() {
        Recorded::Duplicate
    } else {
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|e| BlobError::Config(format!("a run record does not serialise: {e}")))?;
        // Racing reports of one agent may pass the cap by a report or two; the cap bounds
        // the space an agent can take, it is not an exact quota.
        if stored_bytes(blobs, &agent_prefix).await?.saturating_add(bytes.len() as u64) > cap {
            return Ok(Recorded::OverCap);
        }
        let size = bytes.len();
        if blobs.create(&record_key, bytes.into()).await? {
            let marker = format!("{agent_prefix}/{}.{size}", record.run_id);
            if let Err(e) = blobs.put(&marker, axum::body::Bytes::new()).await {
                warn!(error = %e, "cannot count a run report against its agent");
            }
            Recorded::New
        } else {
            Recorded::Duplicate
        }
    };
    let word = if matches!(outcome, Recorded::New) { "new" } else { "duplicate" };
    let delivery = format!("{RUNS}/deliveries/{}/{}-{:016x}", record.run_id, now_ms(), rand::random::<u64>());
    blobs.put(&delivery, word.into()).await?;
    Ok(outcome)
}

/// How many times a run was delivered (markers, plus lines of a pre-store `deliveries.log`).
async fn deliveries(blobs: &Blobs, run_id: &str) -> Result<usize, BlobError> {
    let markers = blobs.list(&format!("{RUNS}/deliveries/{run_id}")).await?.len();
    let legacy = blobs
        .get(&format!("{RUNS}/deliveries.log"))
        .await?
        .map(|log| String::from_utf8_lossy(&log).lines().filter(|l| l.split(' ').next() == Some(run_id)).count())
        .unwrap_or(0);
    Ok(markers + legacy)
}

async fn run_record(
    Extension(service): Service,
    _operator: Operator,
    Path(run_id): Path<String>,
) -> Result<Response, Failure> {
    let missing = || Failure::new(StatusCode::NOT_FOUND, "not_found", "no such run");
    if !valid_run_id(&run_id) {
        return Err(missing());
    }
    let bytes = service
        .blobs
        .get(&format!("{RUNS}/{run_id}.json"))
        .await
        .map_err(|e| Failure::internal("cannot read the run record", &e))?
        .ok_or_else(missing)?;
    let deliveries = deliveries(&service.blobs, &run_id)
        .await
        .map_err(|e| Failure::internal("cannot count the run's deliveries", &e))?;
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

    #[tokio::test]
    async fn run_reports_age_out_with_the_job_history() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(&crate::blobs::StorageConfig::Local(dir.path().to_path_buf())).unwrap();
        let runs = dir.path().join("runs");
        assert!(matches!(record_once(&blobs, &run("run_old_00001", "agt_a"), 1 << 20).await.unwrap(), Recorded::New));
        assert!(matches!(record_once(&blobs, &run("run_new_00001", "agt_a"), 1 << 20).await.unwrap(), Recorded::New));
        assert!(matches!(
            record_once(&blobs, &run("run_new_00001", "agt_a"), 1 << 20).await.unwrap(),
            Recorded::Duplicate
        ));
        assert_eq!(deliveries(&blobs, "run_new_00001").await.unwrap(), 2);
        let day = std::time::Duration::from_secs(86_400);
        let two_days_ago = std::time::SystemTime::now() - 2 * day;
        std::fs::File::options()
            .write(true)
            .open(runs.join("run_old_00001.json"))
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();
        assert_eq!(purge_runs(&blobs, std::time::SystemTime::now() - day).await.unwrap(), 1);
        assert!(!runs.join("run_old_00001.json").exists());
        assert_eq!(deliveries(&blobs, "run_old_00001").await.unwrap(), 0, "its deliveries go too");
        assert!(runs.join("run_new_00001.json").exists());
        assert_eq!(deliveries(&blobs, "run_new_00001").await.unwrap(), 2);
        // The agent's budget is freed with it: only the new report counts.
        let size = std::fs::metadata(runs.join("run_new_00001.json")).unwrap().len();
        assert_eq!(stored_bytes(&blobs, "runs/agents/agt_a").await.unwrap(), size);
        // Past the cap, a new report is refused and nothing is written.
        assert!(matches!(
            record_once(&blobs, &run("run_big_00001", "agt_a"), size + 10).await.unwrap(),
            Recorded::OverCap
        ));
        assert!(!runs.join("run_big_00001.json").exists());
    }

    #[tokio::test]
    async fn reports_of_a_hub_before_the_object_store_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        std::fs::create_dir_all(runs.join("agents/agt_a")).unwrap();
        std::fs::write(runs.join("run_legacy_001.json"), b"{}").unwrap();
        std::fs::hard_link(runs.join("run_legacy_001.json"), runs.join("agents/agt_a/run_legacy_001.json")).unwrap();
        std::fs::write(runs.join("deliveries.log"), "run_legacy_001 new\nrun_legacy_001 duplicate\n").unwrap();
        let blobs = Blobs::open(&crate::blobs::StorageConfig::Local(dir.path().to_path_buf())).unwrap();
        assert_eq!(deliveries(&blobs, "run_legacy_001").await.unwrap(), 2);
        assert_eq!(stored_bytes(&blobs, "runs/agents/agt_a").await.unwrap(), 2);
        assert!(matches!(
            record_once(&blobs, &run("run_legacy_001", "agt_a"), 1 << 20).await.unwrap(),
            Recorded::Duplicate
        ));
        assert_eq!(deliveries(&blobs, "run_legacy_001").await.unwrap(), 3);
    }

    /// An idle hub (no agent asks for anything) still renews its targets roles: here signed
    /// already expired, re-signed by the timer alone. Before `keys init` the timer does
    /// nothing and keeps running.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_timer_renews_expiring_metadata_of_an_idle_hub() {
        use edge_bundle::repo::{PublishRequest, RepoOptions};
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(&crate::blobs::StorageConfig::Local(dir.path().to_path_buf())).unwrap();
        let service = BundleService::open(blobs);
        let stop = tokio_util::sync::CancellationToken::new();
        let timer = tokio::spawn(refresh_metadata_periodically(
            service.clone(),
            std::time::Duration::from_millis(20),
            stop.clone(),
        ));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!timer.is_finished(), "an uninitialised repository must not stop the timer");

        // What `edge-hub bundle keys init` and `publish` write, with targets signed expired.
        let expired = RepoOptions { targets_ttl: chrono::TimeDelta::seconds(-5), ..RepoOptions::default() };
        let signer = Repo::with_options(dir.path().join("repo"), expired);
        let versions = |repo: &Repo| {
            let current = repo.current().unwrap();
            (current.targets.signed.version.get(), current.tenants["acme"].signed.version.get())
        };
        tokio::task::spawn_blocking(move || {
            signer.init(&dir.path().join("root-keys"), 1, 1).unwrap();
            let src = dir.path().join("src");
            std::fs::create_dir_all(&src).unwrap();
            std::fs::write(src.join("main.sh"), "echo hello\n").unwrap();
            signer
                .publish(&PublishRequest {
                    tenant: "acme".into(),
                    bundle: "report".into(),
                    version: "1.0.0".into(),
                    runtime: edge_bundle::Runtime::Shell,
                    cpu_arch: edge_bundle::CpuArch::any(),
                    entrypoint: None,
                    source: src,
                })
                .unwrap();
            let before = versions(&signer);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while versions(&signer) == before {
                assert!(std::time::Instant::now() < deadline, "the timer never re-signed the expired targets");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let after = versions(&signer);
            assert_eq!(after, (before.0 + 1, before.1 + 1));
            let current = signer.current().unwrap();
            assert!(current.targets.signed.expires > chrono::Utc::now() + chrono::TimeDelta::days(364));
            assert!(current.tenants["acme"].signed.expires > chrono::Utc::now() + chrono::TimeDelta::days(364));
            dir
        })
        .await
        .unwrap();
        stop.cancel();
        timer.await.unwrap();
    }

    #[test]
    fn the_default_bundle_dir_sits_next_to_the_database() {
        assert_eq!(default_bundle_dir("sqlite:///var/lib/hub/hub.db"), PathBuf::from("/var/lib/hub/bundles"));
        assert_eq!(default_bundle_dir("sqlite:///tmp/x/hub.db?mode=rwc"), PathBuf::from("/tmp/x/bundles"));
    }
}
