//! Signed bundles on this machine: refresh TUF metadata, find the bundle in the agent's own
//! tenant, refuse a foreign `cpu_arch` before downloading, download and verify, unpack into
//! the cache, prepare the runtime, run, and write the run's report.
//!
//! It owns the order of those steps and the mapping of every refusal to its error code
//! (`edge_bundle::codes`). It must never run a byte that did not match signed metadata and
//! never run another tenant's bundle. Journaling and reporting the outcome is the
//! executor's (`crate::executor::journal`), which does it before the result leaves.

pub mod cache;
pub mod download;

use crate::runtime::{self, ChunkSink, Ended, RunSpec, RuntimeSettings};
use crate::secret::Secret;
use edge_bundle::codes;
use edge_bundle::tough::{self, TransportError, TransportErrorKind};
use edge_bundle::unpack::{unpack_zip, UnpackLimits};
use edge_bundle::verify::{TrustStore, VerifyError, Wanted};
use edge_bundle::{CpuArch, Runtime};
use edge_protocol::api::NotifyRequest;
use edge_protocol::jobs::{BundlePayload, BundleRunData, DEFAULT_BUNDLE_TIMEOUT_MS, MAX_BUNDLE_TIMEOUT_MS};
use edge_protocol::{ErrorCode, JobError, JobSpec};
use futures_util::StreamExt;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Output tails carried in the WebSocket result (the full capture goes to /edge/notify).
const RESULT_TAIL: usize = 64 * 1024;

/// What bundle jobs need; cheap to clone.
#[derive(Clone)]
pub struct BundleContext {
    pub data_dir: PathBuf,
    /// `http(s)://host:port` of the hub, no trailing slash.
    pub hub_base: String,
    /// The agent's tenant: its creator id.
    pub tenant: String,
    pub http: reqwest::Client,
    pub settings: RuntimeSettings,
    pub unpack_limits: UnpackLimits,
    /// The browser runtime, for bundles whose runtime is `browser` (`None`: RUNTIME_UNAVAILABLE).
    pub browser: Option<edge_browser::BrowserRuntime>,
    /// The credential the hub asks for before it serves this tenant's bundles.
    pub auth: HubAuth,
}

/// What the agent shows the hub when it reads the bundle repository: the hub serves a
/// tenant's metadata and bundles only to that tenant's agents and to operator keys.
#[derive(Clone)]
pub enum HubAuth {
    /// Nothing: only `root.json` (and a repository that serves everyone, as in tests).
    None,
    /// The agent's own token, the normal case.
    Agent(Box<crate::hub_client::TokenCache>),
    /// An API key (`edge-agent bench-bundle` measuring a hub it has no login on).
    ApiKey(Secret<String>),
}

/// Names the kind of credential only, never the credential.
impl std::fmt::Debug for HubAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HubAuth::None => "HubAuth::None",
            HubAuth::Agent(_) => "HubAuth::Agent",
            HubAuth::ApiKey(_) => "HubAuth::ApiKey",
        })
    }
}

impl HubAuth {
    async fn bearer(&self) -> Result<Option<Secret<String>>, crate::AgentError> {
        match self {
            HubAuth::None => Ok(None),
            HubAuth::Agent(tokens) => tokens.jwt().await.map(Some),
            HubAuth::ApiKey(key) => Ok(Some(key.clone())),
        }
    }

    /// A request carrying `self` answered 401: the token is stale.
    pub(crate) async fn refused(&self) {
        if let HubAuth::Agent(tokens) = self {
            tokens.forget().await;
        }
    }

    /// `request` with the bearer header, if there is a credential.
    pub(crate) async fn authorize(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, crate::AgentError> {
        Ok(match self.bearer().await? {
            Some(token) => request.bearer_auth(token.expose()),
            None => request,
        })
    }
}

impl BundleContext {
    pub fn new(data_dir: PathBuf, hub_base: String, tenant: String) -> Result<BundleContext, crate::AgentError> {
        Ok(BundleContext {
            data_dir,
            hub_base: hub_base.trim_end_matches('/').to_owned(),
            tenant,
            http: download::client()?,
            settings: RuntimeSettings::from_env(),
            unpack_limits: UnpackLimits::default(),
            browser: None,
            auth: HubAuth::None,
        })
    }

    pub fn with_auth(mut self, auth: HubAuth) -> BundleContext {
        self.auth = auth;
        self
    }

    pub fn with_browser(mut self, browser: Option<edge_browser::BrowserRuntime>) -> BundleContext {
        self.browser = browser;
        self
    }

    pub fn trust(&self) -> TrustStore {
        trust_store(&self.data_dir)
    }
}

/// The agent's trust store (`<data dir>/tuf/`).
pub fn trust_store(data_dir: &Path) -> TrustStore {
    TrustStore::new(data_dir.join("tuf"))
}

/// `tough`'s transport over the agent's HTTP client (timeouts and TLS policy included),
/// showing the hub the agent's credential.
#[derive(Debug, Clone)]
pub struct HubTransport {
    http: reqwest::Client,
    auth: HubAuth,
}

impl HubTransport {
    pub fn new(http: reqwest::Client, auth: HubAuth) -> HubTransport {
        HubTransport { http, auth }
    }
}

type Chunks = Pin<Box<dyn futures_util::Stream<Item = Result<tough::Bytes, TransportError>> + Send>>;

#[tough::async_trait]
impl tough::Transport for HubTransport {
    async fn fetch(&self, url: url::Url) -> Result<Chunks, TransportError> {
        let request = self
            .auth
            .authorize(self.http.get(url.clone()))
            .await
            .map_err(|e| TransportError::new_with_cause(TransportErrorKind::Other, url.clone(), e))?;
        let response = request
            .send()
            .await
            .map_err(|e| TransportError::new_with_cause(TransportErrorKind::Other, url.clone(), e))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(TransportError::new(TransportErrorKind::FileNotFound, url));
        }
        if status == reqwest::StatusCode::UNAUTHORIZED {
            self.auth.refused().await;
        }
        if !status.is_success() {
            return Err(TransportError::new_with_cause(
                TransportErrorKind::Other,
                url,
                std::io::Error::other(format!("HTTP {status}")),
            ));
        }
        let stream = response.bytes_stream().map(move |chunk| {
            chunk.map_err(|e| TransportError::new_with_cause(TransportErrorKind::Other, url.clone(), e))
        });
        Ok(Box::pin(stream))
    }
}

fn refusal(error: VerifyError) -> JobError {
    let code = if error.code == edge_bundle::verify::NETWORK {
        ErrorCode::Network
    } else {
        ErrorCode::Other(error.code.to_owned())
    };
    JobError::new(code, error.message)
}

fn code(code: &str, message: impl Into<String>) -> JobError {
    JobError::new(ErrorCode::Other(code.to_owned()), message)
}

/// A bundle ready to run.
pub struct Prepared {
    pub tenant: String,
    pub bundle: String,
    pub version: String,
    pub runtime: Runtime,
    pub entrypoint: String,
    pub version_dir: PathBuf,
    pub timings: PrepareTimings,
}

/// Where `prepare` spent its time (logged, and reported by `edge-agent bench-bundle`).
#[derive(Debug, Clone, Default)]
pub struct PrepareTimings {
    pub refresh: Duration,
    /// `None`: served from the cache.
    pub download: Option<Duration>,
    pub unpack: Option<Duration>,
    /// Signed length of the bundle file.
    pub length: u64,
}

/// Steps 1–4: verify, refuse by arch, download, unpack (or reuse the cache).
pub async fn prepare(ctx: &BundleContext, payload: &BundlePayload) -> Result<Prepared, JobError> {
    if let Some(tenant) = &payload.tenant {
        if tenant != &ctx.tenant {
            return Err(code(
                codes::TENANT_MISMATCH,
                format!("this agent runs only bundles of its own tenant {:?}, not {tenant:?}", ctx.tenant),
            ));
        }
    }
    let wanted = Wanted::parse(&payload.version)
        .map_err(|e| JobError::new(ErrorCode::BadPayload, format!("version: {e} (or \"latest\")")))?;
    let metadata_url = url::Url::parse(&format!("{}{}", ctx.hub_base, edge_protocol::api::BUNDLE_METADATA_PATH))
        .map_err(|e| JobError::new(ErrorCode::Internal, format!("hub URL: {e}")))?;
    let mut timings = PrepareTimings::default();
    let started = Instant::now();
    let verified = ctx
        .trust()
        .refresh(metadata_url, HubTransport::new(ctx.http.clone(), ctx.auth.clone()))
        .await
        .map_err(refusal)?;
    let found = verified.find(&ctx.tenant, &payload.bundle, &wanted).map_err(refusal)?;
    timings.refresh = started.elapsed();
    timings.length = found.length;
    let host = CpuArch::host();
    if !found.meta.cpu_arch.runs_on(&host) {
        return Err(code(
            codes::CPU_ARCH_MISMATCH,
            format!(
                "{} is built for {}, this machine is {host}; nothing was downloaded",
                found.bundle, found.meta.cpu_arch
            ),
        ));
    }
    let version = found.bundle.version.to_string();
    let version_dir = cache::version_dir(&ctx.data_dir, &ctx.tenant, &found.bundle.bundle, &version);
    let cached_sha = std::fs::read_to_string(version_dir.join(".sha256")).unwrap_or_default();
    if cached_sha.trim() != found.sha256 {
        let url = format!("{}{}{}", ctx.hub_base, edge_protocol::api::BUNDLE_TARGETS_PATH, found.target_file);
        let downloads = cache::root(&ctx.data_dir).join(".downloads");
        let started = Instant::now();
        let zip = download::fetch(&ctx.http, &ctx.auth, &url, &found, &downloads).await.map_err(refusal)?;
        timings.download = Some(started.elapsed());
        let started = Instant::now();
        let installed = install(&zip, &version_dir, &found.sha256, ctx.unpack_limits).await;
        // Unpacked or refused, the download has served its purpose: a refused one must not
        // sit in `.downloads` (or be reused) until the next GC.
        let _ = tokio::fs::remove_file(&zip).await;
        installed?;
        timings.unpack = Some(started.elapsed());
    }
    tracing::info!(
        bundle = %found.bundle,
        bytes = found.length,
        refresh_ms = timings.refresh.as_millis() as u64,
        download_ms = timings.download.map(|d| d.as_millis() as u64),
        unpack_ms = timings.unpack.map(|d| d.as_millis() as u64),
        "bundle ready"
    );
    cache::touch(&version_dir);
    Ok(Prepared {
        tenant: ctx.tenant.clone(),
        bundle: found.bundle.bundle.clone(),
        version,
        runtime: found.meta.runtime,
        entrypoint: found.meta.entrypoint.clone(),
        version_dir,
        timings,
    })
}

/// `edge-agent bench-bundle` (hidden; driven by `cargo xtask bench bundles`): trusts the
/// hub's current root as enrollment would, times a cold and a warm metadata refresh, then
/// the `prepare` of one bundle (refresh, download + verify, unpack) into an empty cache, and
/// reports this process's peak RSS. Never use it against a hub you do not trust: it takes
/// the root from the hub it measures.
pub async fn bench(
    data_dir: &Path,
    hub_base: &str,
    api_key: Secret<String>,
    tenant: &str,
    bundle: &str,
    version: &str,
) -> Result<Value, JobError> {
    let internal = |e: String| JobError::new(ErrorCode::Internal, e);
    let ctx = BundleContext::new(data_dir.to_path_buf(), hub_base.to_owned(), tenant.to_owned())
        .map_err(|e| internal(e.to_string()))?
        .with_auth(HubAuth::ApiKey(api_key));
    let root_url = format!("{}{}", ctx.hub_base, edge_protocol::api::BUNDLE_ROOT_PATH);
    let root = async { ctx.http.get(&root_url).send().await?.error_for_status()?.bytes().await }
        .await
        .map_err(|e| JobError::new(ErrorCode::Network, format!("cannot fetch root.json: {e}")))?;
    ctx.trust().install_root(&root).map_err(refusal)?;
    let metadata_url = url::Url::parse(&format!("{}{}", ctx.hub_base, edge_protocol::api::BUNDLE_METADATA_PATH))
        .map_err(|e| internal(e.to_string()))?;
    let mut refreshes = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        let verified = ctx
            .trust()
            .refresh(metadata_url.clone(), HubTransport::new(ctx.http.clone(), ctx.auth.clone()))
            .await
            .map_err(refusal)?;
        let targets = verified.find(tenant, bundle, &Wanted::Latest).map(|_| ()).map_err(refusal);
        refreshes.push(started.elapsed());
        targets?;
    }
    let payload = BundlePayload {
        bundle: bundle.to_owned(),
        version: version.to_owned(),
        args: Vec::new(),
        tenant: None,
        timeout_ms: None,
        secrets: Default::default(),
    };
    let started = Instant::now();
    let prepared = prepare(&ctx, &payload).await?;
    let total = started.elapsed();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(serde_json::json!({
        "bytes": prepared.timings.length,
        "refreshColdMs": ms(refreshes[0]),
        "refreshWarmMs": ms(refreshes[1]),
        "prepareMs": ms(total),
        "refreshMs": ms(prepared.timings.refresh),
        "downloadMs": prepared.timings.download.map(ms),
        "unpackMs": prepared.timings.unpack.map(ms),
        "versionDir": prepared.version_dir,
        "peakRssKib": peak_rss_kib(),
    }))
}

/// `VmHWM` of this process (Linux), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Unpacks into `<bundle dir>/.tmp-<version>-<n>/bundle`, then renames it to `<version>`.
async fn install(zip: &Path, version_dir: &Path, sha256: &str, limits: UnpackLimits) -> Result<(), JobError> {
    let parent = version_dir
        .parent()
        .ok_or_else(|| JobError::new(ErrorCode::Internal, "cache path has no parent"))?
        .to_path_buf();
    let name = version_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let zip = zip.to_path_buf();
    let version_dir = version_dir.to_path_buf();
    let sha256 = sha256.to_owned();
    tokio::task::spawn_blocking(move || -> Result<(), JobError> {
        std::fs::create_dir_all(&parent)
            .map_err(|e| JobError::new(ErrorCode::Internal, format!("cannot create the cache: {e}")))?;
        let temporary = parent.join(format!(".tmp-{name}-{}-{}", std::process::id(), rand::random::<u32>()));
        let result =
            unpack_zip(&zip, &temporary.join("bundle"), &limits).map_err(|e| code(e.code, e.message)).and_then(|_| {
                std::fs::write(temporary.join(".sha256"), &sha256)
                    .map_err(|e| JobError::new(ErrorCode::Internal, format!("cannot write the cache: {e}")))
            });
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&temporary);
            remove_empty_parents(&version_dir);
            return Err(e);
        }
        // A stale or partial version directory (other hash) is replaced.
        if version_dir.exists() {
            let _ = std::fs::remove_dir_all(&version_dir);
        }
        std::fs::rename(&temporary, &version_dir).map_err(|e| {
            let _ = std::fs::remove_dir_all(&temporary);
            JobError::new(ErrorCode::Internal, format!("cannot move the bundle into the cache: {e}"))
        })
    })
    .await
    .map_err(|e| JobError::new(ErrorCode::Internal, format!("unpack task failed: {e}")))?
}

/// After a refused unpack: removes the bundle's and the tenant's folders under the cache if
/// the refusal left them empty. `remove_dir` only removes empty folders, so a version another
/// job is unpacking or running is never touched; a job that needs the folder again
/// recreates it (`create_dir_all`) before writing into it.
fn remove_empty_parents(version_dir: &Path) {
    let mut dir = version_dir.parent();
    for _ in 0..2 {
        match dir {
            Some(d) if std::fs::remove_dir(d).is_ok() => dir = d.parent(),
            _ => return,
        }
    }
}

/// Starts what bundle jobs need for one connection loop: cache GC at start and weekly, until
/// `cancel`. `None` (bundle jobs refused) when the context cannot be built.
pub(crate) fn start(
    data_dir: &Path,
    tokens: &crate::hub_client::TokenCache,
    hub_url: &crate::hub_url::HubUrl,
    cancel: &CancellationToken,
) -> Option<BundleContext> {
    runtime::prepare_agent_process();
    let base = hub_url.http_endpoint("");
    let auth = HubAuth::Agent(Box::new(tokens.clone()));
    let creator = tokens.credentials().creator_id.clone();
    let context = match BundleContext::new(data_dir.to_path_buf(), base, creator) {
        Ok(context) => context.with_auth(auth),
        Err(e) => {
            tracing::error!(error = %e, "bundle jobs are unavailable");
            return None;
        }
    };
    let gc_dir = data_dir.to_path_buf();
    let gc_cancel = cancel.child_token();
    tokio::spawn(async move {
        loop {
            let dir = gc_dir.clone();
            if let Ok(report) = tokio::task::spawn_blocking(move || cache::gc(&dir, std::time::SystemTime::now())).await
            {
                if !report.removed.is_empty() {
                    tracing::info!(removed = report.removed.len(), kept = report.kept, "bundle cache cleaned");
                }
            }
            tokio::select! {
                _ = gc_cancel.cancelled() => return,
                _ = tokio::time::sleep(cache::GC_EVERY) => {}
            }
        }
    });
    Some(context)
}

/// A finished bundle run: the job's result and the full report for `POST /edge/notify`.
pub struct BundleRun {
    pub result: Result<Value, JobError>,
    pub report: NotifyRequest,
}

/// Runs a `bundle` job end to end and writes its report. Cancel through `cancel`, not by
/// dropping the future (dropping still kills the tree, without the ladder).
pub async fn run(ctx: &BundleContext, job: &JobSpec, cancel: CancellationToken, sink: Option<ChunkSink>) -> BundleRun {
    let run_id = format!("run_{:016x}{:08x}", rand::random::<u64>(), rand::random::<u32>());
    let started = Instant::now();
    let payload: Result<BundlePayload, JobError> = serde_json::from_value(job.payload.clone())
        .map_err(|e| JobError::new(ErrorCode::BadPayload, format!("payload is not a bundle payload: {e}")));
    let outcome = match payload {
        Ok(payload) => execute(ctx, job, &payload, &run_id, cancel, sink).await,
        Err(e) => Err((e, None)),
    };
    let (bundle, version) = match &outcome {
        Ok((data, _)) => (Some(data.bundle.clone()), Some(data.version.clone())),
        Err(_) => (None, None),
    };
    let (status, stdout, stderr, exit_code, error_code, message) = match &outcome {
        Ok((data, full)) => ("succeeded", full.0.clone(), full.1.clone(), Some(data.exit_code), None, None),
        Err((error, full)) => (
            "failed",
            full.as_ref().map(|f| f.0.clone()).unwrap_or_default(),
            full.as_ref().map(|f| f.1.clone()).unwrap_or_default(),
            full.as_ref().and_then(|f| f.2),
            Some(error.code.to_string()),
            error.message.clone(),
        ),
    };
    let result: Result<Value, JobError> = match outcome {
        Ok((data, _)) => serde_json::to_value(data).map_err(|e| JobError::new(ErrorCode::Internal, e.to_string())),
        Err((error, _)) => Err(error),
    };
    let report = NotifyRequest {
        run_id,
        job_id: job.job_id.clone(),
        status: status.to_owned(),
        stdout,
        stderr,
        exit_code,
        duration_ms: started.elapsed().as_millis() as u64,
        error_code,
        message,
        bundle,
        version,
        result: result.as_ref().ok().cloned(),
        error: result.as_ref().err().cloned(),
    };
    BundleRun { result, report }
}

/// (stdout, stderr, exit code) of a run, for the report.
type Full = (String, String, Option<i32>);

async fn execute(
    ctx: &BundleContext,
    job: &JobSpec,
    payload: &BundlePayload,
    run_id: &str,
    cancel: CancellationToken,
    sink: Option<ChunkSink>,
) -> Result<(BundleRunData, Full), (JobError, Option<Full>)> {
    let prepared = tokio::select! {
        prepared = prepare(ctx, payload) => prepared.map_err(|e| (e, None))?,
        _ = cancel.cancelled() => return Err((JobError::new(ErrorCode::Cancelled, "cancelled before the bundle started"), None)),
    };
    let bundle_dir = prepared.version_dir.join("bundle");
    let entry = bundle_dir.join(&prepared.entrypoint);
    if !entry.is_file() {
        return Err((
            code(codes::RUN_SETUP_FAILED, format!("the bundle has no entrypoint {:?}", prepared.entrypoint)),
            None,
        ));
    }
    let scratch = ctx.data_dir.join("runs").join(run_id);
    std::fs::create_dir_all(scratch.join("tmp"))
        .map_err(|e| (JobError::new(ErrorCode::Internal, format!("cannot create the scratch dir: {e}")), None))?;
    let log_file = ctx.data_dir.join("runs").join(format!("{run_id}.log"));
    let secrets: Vec<Secret<String>> = payload.secrets.values().cloned().map(Secret::new).collect();
    let mut env = runtime::allowlisted_env();
    env.push(("TMPDIR".into(), scratch.join("tmp").display().to_string()));
    env.push(("EDGE_JOB_ID".into(), job.job_id.clone()));
    env.push(("EDGE_BUNDLE_DIR".into(), bundle_dir.display().to_string()));
    env.push(("EDGE_SCRATCH_DIR".into(), scratch.display().to_string()));
    env.push(("EDGE_ARGS".into(), serde_json::to_string(&payload.args).unwrap_or_default()));
    let timeout =
        Duration::from_millis(payload.timeout_ms.unwrap_or(DEFAULT_BUNDLE_TIMEOUT_MS).min(MAX_BUNDLE_TIMEOUT_MS));
    let spec =
        |program: PathBuf, args: Vec<std::ffi::OsString>, env: Vec<(String, String)>, timeout: Duration| RunSpec {
            run_id: run_id.to_owned(),
            program,
            args,
            cwd: scratch.clone(),
            env,
            secrets: secrets.clone(),
            timeout,
            log_file: log_file.clone(),
        };
    let user_args: Vec<std::ffi::OsString> = payload.args.iter().map(Into::into).collect();
    let (program, args, env) = match prepared.runtime {
        Runtime::Shell => {
            if cfg!(windows) {
                let mut args: Vec<std::ffi::OsString> = vec![
                    "-NoProfile".into(),
                    "-NonInteractive".into(),
                    "-ExecutionPolicy".into(),
                    "Bypass".into(),
                    "-File".into(),
                    entry.into(),
                ];
                args.extend(user_args);
                (PathBuf::from("powershell.exe"), args, env)
            } else {
                let mut args: Vec<std::ffi::OsString> = vec![entry.into()];
                args.extend(user_args);
                (PathBuf::from("/bin/sh"), args, env)
            }
        }
        Runtime::Python => {
            let python = python_venv(ctx, &prepared, &spec, &env, cancel.clone()).await.map_err(|e| (e, None))?;
            let mut env = env;
            env.push(("PYTHONDONTWRITEBYTECODE".into(), "1".into()));
            env.push(("PYTHONNOUSERSITE".into(), "1".into()));
            env.push(("VIRTUAL_ENV".into(), prepared.version_dir.join("venv").display().to_string()));
            let mut args: Vec<std::ffi::OsString> = vec![entry.into()];
            args.extend(user_args);
            (python, args, env)
        }
        Runtime::Exec => (entry, user_args, env),
        Runtime::Browser => {
            let _ = std::fs::remove_dir_all(&scratch);
            return run_browser_flow(ctx, &prepared, &bundle_dir, &entry, payload, run_id).await;
        }
        Runtime::Ahk => {
            return Err((
                code(
                    codes::RUNTIME_UNAVAILABLE,
                    "the AutoHotkey runtime exists on Windows only, and is not available in this agent yet",
                ),
                None,
            ));
        }
    };
    let outcome = runtime::run_process(spec(program, args, env, timeout), &ctx.settings, cancel, sink)
        .await
        .map_err(|e| (code(codes::RUN_SETUP_FAILED, e.to_string()), None))?;
    let _ = std::fs::remove_dir_all(&scratch);
    let full = (outcome.stdout.text.clone(), outcome.stderr.text.clone(), outcome.exit_code);
    match outcome.ended {
        Ended::Cancelled => {
            return Err((
                JobError::new(ErrorCode::Cancelled, "the run was cancelled and its processes ended"),
                Some(full),
            ))
        }
        Ended::TimedOut => {
            return Err((
                code(codes::RUN_TIMEOUT, format!("the run took longer than {} ms and was ended", timeout.as_millis())),
                Some(full),
            ))
        }
        Ended::Exited => {}
    }
    if outcome.exit_code != Some(0) {
        let tail = tail(&outcome.stderr.text, 2000);
        let how = match outcome.exit_code {
            Some(code) => format!("exited with code {code}"),
            None => "was killed by a signal".to_owned(),
        };
        return Err((
            code(codes::RUN_FAILED, format!("{} {how}; stderr ends: {tail}", prepared.entrypoint)),
            Some(full),
        ));
    }
    let data = BundleRunData {
        run_id: run_id.to_owned(),
        bundle: prepared.bundle,
        version: prepared.version,
        exit_code: 0,
        duration_ms: outcome.duration.as_millis() as u64,
        stdout: tail(&outcome.stdout.text, RESULT_TAIL),
        stderr: tail(&outcome.stderr.text, RESULT_TAIL),
        stdout_truncated: outcome.stdout.truncated || outcome.stdout.text.len() > RESULT_TAIL,
        stderr_truncated: outcome.stderr.truncated || outcome.stderr.text.len() > RESULT_TAIL,
    };
    Ok((data, full))
}

/// A `browser` bundle: its entry point is a flow document (`docs/flows.md`) that the
/// browser runtime runs; `args` are `name=value` parameters. The flow's output JSON is the
/// run's stdout.
async fn run_browser_flow(
    ctx: &BundleContext,
    prepared: &Prepared,
    bundle_dir: &Path,
    entry: &Path,
    payload: &BundlePayload,
    run_id: &str,
) -> Result<(BundleRunData, Full), (JobError, Option<Full>)> {
    use edge_browser::flow::{parse_adapter, parse_document, parse_flow, AdapterRef, FlowDocument, FlowRef};
    let started = Instant::now();
    let Some(browser) = ctx.browser.as_ref() else {
        return Err((
            code(codes::RUNTIME_UNAVAILABLE, "no Chrome, Chromium or Edge is installed for the browser runtime"),
            None,
        ));
    };
    let setup = |m: String| (code(codes::RUN_SETUP_FAILED, m), None);
    let read = |relative: &str| -> Result<String, (JobError, Option<Full>)> {
        let path = inside(bundle_dir, relative).map_err(setup)?;
        std::fs::read_to_string(&path).map_err(|e| setup(format!("{relative}: {e}")))
    };
    let text = std::fs::read_to_string(entry).map_err(|e| setup(format!("{}: {e}", prepared.entrypoint)))?;
    let document: FlowDocument = parse_document(&text, "the flow document").map_err(|e| (e.to_job_error(), None))?;
    let adapter = match document.adapter {
        AdapterRef::Inline(adapter) => *adapter,
        AdapterRef::Path(path) => parse_adapter(&read(&path)?).map_err(|e| (e.to_job_error(), None))?,
    };
    let flow = match document.flow {
        FlowRef::Inline(flow) => *flow,
        FlowRef::Name(name) if name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json") => {
            parse_flow(&read(&name)?).map_err(|e| (e.to_job_error(), None))?
        }
        FlowRef::Name(name) => adapter.flow(&name).map_err(|e| (e.to_job_error(), None))?,
    };
    let mut params = document.params;
    let mut dry_run = document.dry_run;
    for arg in &payload.args {
        match arg.split_once('=') {
            Some(("dryRun", v)) => dry_run = v == "true" || v == "1",
            Some((k, v)) => {
                params.insert(k.to_owned(), serde_json::Value::from(v));
            }
            None => {
                return Err((JobError::new(ErrorCode::BadPayload, format!("argument {arg:?} is not name=value")), None))
            }
        }
    }
    // The flow may upload the bundle's own files and those of the person's uploads folder.
    let settings = crate::local_settings::LocalSettings::load(&ctx.data_dir)
        .map_err(|e| (JobError::new(ErrorCode::Internal, e.to_string()), None))?;
    // It drives the person's browser on the adapter's site: `bundle` alone is not consent
    // to act as them there.
    crate::consent::check_site(&settings, &adapter.name).map_err(|e| (e, None))?;
    let mut uploads = edge_browser::confine::Uploads::none().allow(bundle_dir, "the job's bundle");
    if let Some(folder) = &settings.uploads_dir {
        uploads = uploads.allow(folder, "the uploads folder");
    }
    let output = browser
        .run_flow_document(&adapter, &flow, &params, dry_run, &uploads)
        .await
        .map_err(|e| (e.to_job_error(), None))?;
    let stdout = serde_json::to_string_pretty(&output).unwrap_or_default();
    let data = BundleRunData {
        run_id: run_id.to_owned(),
        bundle: prepared.bundle.clone(),
        version: prepared.version.clone(),
        exit_code: 0,
        duration_ms: started.elapsed().as_millis() as u64,
        stdout: tail(&stdout, RESULT_TAIL),
        stderr: String::new(),
        stdout_truncated: stdout.len() > RESULT_TAIL,
        stderr_truncated: false,
    };
    Ok((data, (stdout, String::new(), Some(0))))
}

/// `relative` inside `root`, refusing absolute paths and `..`.
pub(crate) fn inside(root: &Path, relative: &str) -> Result<PathBuf, String> {
    let path = Path::new(relative);
    if path.is_absolute()
        || path.components().any(|c| !matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir))
    {
        return Err(format!("{relative:?} must be a relative path inside the bundle"));
    }
    Ok(root.join(path))
}

fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

/// The venv of a bundle version: created once with the system Python, dependencies only
/// from the bundle's `wheelhouse/` (`--no-index`), then kept with the version.
async fn python_venv(
    ctx: &BundleContext,
    prepared: &Prepared,
    spec: &impl Fn(PathBuf, Vec<std::ffi::OsString>, Vec<(String, String)>, Duration) -> RunSpec,
    env: &[(String, String)],
    cancel: CancellationToken,
) -> Result<PathBuf, JobError> {
    let venv = prepared.version_dir.join("venv");
    let python = if cfg!(windows) { venv.join("Scripts").join("python.exe") } else { venv.join("bin").join("python") };
    if python.exists() && prepared.version_dir.join(".venv-ready").exists() {
        return Ok(python);
    }
    let _ = std::fs::remove_dir_all(&venv);
    let mut env = env.to_vec();
    env.push(("PIP_NO_INPUT".into(), "1".into()));
    env.push(("PIP_DISABLE_PIP_VERSION_CHECK".into(), "1".into()));
    env.push(("PIP_CONFIG_FILE".into(), if cfg!(windows) { "NUL".into() } else { "/dev/null".into() }));
    env.push(("PYTHONNOUSERSITE".into(), "1".into()));
    let setup =
        |program: PathBuf, args: Vec<std::ffi::OsString>| spec(program, args, env.clone(), Duration::from_secs(600));
    let check = |outcome: runtime::RunOutcome, what: &str| -> Result<(), JobError> {
        match (outcome.ended, outcome.exit_code) {
            (Ended::Exited, Some(0)) => Ok(()),
            (Ended::Cancelled, _) => Err(JobError::new(ErrorCode::Cancelled, format!("cancelled during {what}"))),
            _ => Err(code(codes::RUN_SETUP_FAILED, format!("{what} failed: {}", tail(&outcome.stderr.text, 2000)))),
        }
    };
    let created = runtime::run_process(
        setup(ctx.settings.python.clone(), vec!["-m".into(), "venv".into(), venv.clone().into()]),
        &ctx.settings,
        cancel.clone(),
        None,
    )
    .await
    .map_err(|e| code(codes::RUNTIME_UNAVAILABLE, format!("no usable Python for the python runtime: {e}")))?;
    check(created, "creating the venv")?;
    let bundle_dir = prepared.version_dir.join("bundle");
    let wheelhouse = bundle_dir.join("wheelhouse");
    let requirements = bundle_dir.join("requirements.txt");
    if wheelhouse.is_dir() {
        let mut args: Vec<std::ffi::OsString> = vec![
            "-m".into(),
            "pip".into(),
            "install".into(),
            "--no-index".into(),
            "--find-links".into(),
            wheelhouse.clone().into(),
        ];
        if requirements.is_file() {
            args.push("-r".into());
            args.push(requirements.into());
        } else {
            let mut wheels: Vec<PathBuf> = std::fs::read_dir(&wheelhouse)
                .map(|d| {
                    d.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
                        .collect()
                })
                .unwrap_or_default();
            wheels.sort();
            args.extend(wheels.into_iter().map(Into::into));
        }
        let installed = runtime::run_process(setup(python.clone(), args), &ctx.settings, cancel, None)
            .await
            .map_err(|e| code(codes::RUN_SETUP_FAILED, e.to_string()))?;
        check(installed, "installing the wheelhouse")?;
    }
    let _ = std::fs::write(prepared.version_dir.join(".venv-ready"), b"");
    Ok(python)
}
