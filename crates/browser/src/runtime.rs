//! `BrowserRuntime`: the browser jobs (`send_dm`, `broadcast_dm`, `schedule_post`,
//! `scrape_subs`), bundle flow documents and the headful login, around the engine.
//!
//! It owns, per job: the circuit-breaker and per-site back-off checks, the token bucket
//! (waiting up to the job's deadline), one fresh browser context in the warm browser, the
//! encrypted session restore and save, the message checkpoint (`broadcast_dm` and `send_dm`),
//! and turning site alarms into guard state and [`BrowserEvent`]s. It must never send a message twice on purpose
//! (a `sending` checkpoint is verified on the site first), never spend budget in dry-run
//! mode, and never retry `CONTENT_BLOCKED` or `POLICY_VIOLATION` itself.

use crate::checkpoint::{normalize, Checkpoint, CheckpointStore, Progress};
use crate::confine::{Origins, Uploads};
use crate::engine::{run_flow, run_flow_watching_submit, FlowOutput, RunOptions};
use crate::error::BrowserError;
use crate::flow::{Adapter, Flow};
use crate::guard::{BreakerSettings, Cap, Caps, Guard};
use crate::launch::{BrowserLaunch, WarmBrowser};
use crate::locator::{Cadence, Driver};
use crate::logins::LoginsNeeded;
use crate::session::{self, SessionKey, SessionStore, StorageState};
use base64::Engine;
use edge_protocol::jobs::{BrowserJobPayload, BROADCAST_DM, SCHEDULE_POST, SCRAPE_SUBS, SEND_DM};
use edge_protocol::{ErrorCode, JobError};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Settings of the browser runtime of one creator profile.
#[derive(Debug, Clone)]
pub struct BrowserSettings {
    /// The agent's data dir; everything here goes under `<data dir>/browser/`.
    pub data_dir: PathBuf,
    pub profile: String,
    /// A browser path from the settings; else the usual places are searched.
    pub executable: Option<PathBuf>,
    /// Show the window of the warm browser (debugging).
    pub headful: bool,
    pub caps: Caps,
    pub breaker: BreakerSettings,
    /// Pause between actions.
    pub pacing: Cadence,
    /// Pause between keys.
    pub typing: Cadence,
    /// Extra pause between two recipients of a broadcast (on top of `pacing`).
    pub recipient_pacing: Cadence,
    /// How long a job may wait for budget when its payload sets no deadline.
    pub default_timeout: Duration,
    /// Flags added to the job browser's command line: the agent's egress gate puts its
    /// proxy here, so every connection a job's page opens passes the gate. The person's own
    /// login window (`login`) does not take them: the person, not the hub, drives it.
    pub job_browser_args: Vec<String>,
}

fn env_pair(name: &str) -> Option<(u64, u64)> {
    let value = std::env::var(name).ok()?;
    let (a, b) = value.split_once(['-', ',', '/'])?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

impl BrowserSettings {
    pub fn new(data_dir: PathBuf, profile: String) -> BrowserSettings {
        BrowserSettings {
            data_dir,
            profile,
            executable: None,
            headful: false,
            caps: Caps::default(),
            breaker: BreakerSettings::default(),
            pacing: Cadence { min: Duration::from_millis(400), max: Duration::from_millis(1500) },
            typing: Cadence::HUMAN,
            recipient_pacing: Cadence { min: Duration::from_secs(5), max: Duration::from_secs(20) },
            default_timeout: Duration::from_secs(600),
            job_browser_args: Vec::new(),
        }
    }

    /// Applies the environment: `EDGE_AGENT_BROWSER` (path), `EDGE_AGENT_BROWSER_HEADFUL=1`,
    /// `EDGE_AGENT_DM_CAP=20/5` (per hour / burst; lowers only), `EDGE_AGENT_BROWSER_PACING_MS=min-max`,
    /// `EDGE_AGENT_BROWSER_TYPING_MS=min-max`, `EDGE_AGENT_BROWSER_RECIPIENT_PACING_MS=min-max`,
    /// `EDGE_AGENT_BROWSER_BREAKER=threshold,window_s,cooldown_s` (tests shorten these).
    pub fn from_env(mut self) -> BrowserSettings {
        if let Some(path) = std::env::var_os("EDGE_AGENT_BROWSER").filter(|v| !v.is_empty()) {
            self.executable = Some(PathBuf::from(path));
        }
        self.headful = std::env::var("EDGE_AGENT_BROWSER_HEADFUL").is_ok_and(|v| v == "1" || v == "true");
        for (action, var) in
            [("dm", "EDGE_AGENT_DM_CAP"), ("post", "EDGE_AGENT_POST_CAP"), ("scrape", "EDGE_AGENT_SCRAPE_CAP")]
        {
            if let Some((per_hour, burst)) = env_pair(var) {
                self.caps = self.caps.with_setting(action, Cap { per_hour: per_hour as u32, burst: burst as u32 });
            }
        }
        let cadence =
            |(a, b): (u64, u64)| Cadence { min: Duration::from_millis(a), max: Duration::from_millis(b.max(a)) };
        if let Some(pair) = env_pair("EDGE_AGENT_BROWSER_PACING_MS") {
            self.pacing = cadence(pair);
        }
        if let Some(pair) = env_pair("EDGE_AGENT_BROWSER_TYPING_MS") {
            self.typing = cadence(pair);
        }
        if let Some(pair) = env_pair("EDGE_AGENT_BROWSER_RECIPIENT_PACING_MS") {
            self.recipient_pacing = cadence(pair);
        }
        if let Ok(value) = std::env::var("EDGE_AGENT_BROWSER_BREAKER") {
            let parts: Vec<i64> = value.split(',').filter_map(|p| p.trim().parse().ok()).collect();
            if let [threshold, window, cooldown] = parts[..] {
                self.breaker = BreakerSettings {
                    threshold: threshold.max(1) as u32,
                    window_ms: window * 1000,
                    cooldown_ms: cooldown * 1000,
                };
            }
        }
        self
    }

    pub fn dir(&self) -> PathBuf {
        self.data_dir.join("browser")
    }
}

/// Where the session key lives (the agent's OS keychain, a second entry per profile).
pub trait KeyStore: Send + Sync {
    /// The key, created on first use. `Err` (no keychain): sessions are volatile.
    fn session_key(&self) -> Result<SessionKey, String>;
}

/// Receives what the person should hear about (the agent turns these into notifications
/// and, for the breaker, a `circuit_breaker` frame).
pub trait Notifier: Send + Sync {
    fn notify(&self, event: BrowserEvent);
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum BrowserEvent {
    /// The site kept rate-limiting: browser jobs are paused until `until_ms`.
    CircuitOpened {
        reason: String,
        site: String,
        until_ms: i64,
        cooldown_ms: u64,
    },
    CircuitClosed,
    /// No keychain key: the login is kept in memory only and is lost when the agent stops.
    SessionVolatile {
        reason: String,
    },
    /// The site shows its logged-out marker: run `edge-agent browser login --site <site>`.
    LoginRequired {
        site: String,
    },
    SessionSaved {
        site: String,
    },
}

/// For the snapshot and `edge-agent status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrowserStatus {
    pub executable: Option<String>,
    pub circuit_open_until_ms: Option<i64>,
    /// The same instant, RFC 3339 in UTC, for people and scripts that read the JSON.
    #[serde(default)]
    pub circuit_open_until: Option<String>,
    pub circuit_reason: Option<String>,
    pub session_volatile: bool,
    pub login_required: Vec<String>,
}

/// A job's result, plus the `data` a failed job still reports (a partial broadcast's
/// `sentRecipients`, which the hub writes to its ledger).
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub result: Result<Value, JobError>,
    pub error_data: Option<Value>,
}

/// What a running job tells whoever runs it, as it goes: how far a broadcast got, and each
/// screenshot a flow took (the agent keeps the last one to show the person). Both are
/// called from the job's task and must return at once.
pub trait JobReporter: Send + Sync {
    /// `done` of `total` recipients are behind us (sent, or never to be sent again).
    fn progress(&self, _done: u32, _total: u32) {}
    /// A flow wrote a screenshot to `path` (in the runtime's artifacts folder, which the
    /// next job may overwrite: copy it to keep it).
    fn screenshot(&self, _path: &std::path::Path) {}
}

/// Reports to nobody.
pub struct NoReport;

impl JobReporter for NoReport {}

fn report_screenshots(reporter: &dyn JobReporter, output: &FlowOutput) {
    if let Some(last) = output.screenshots.last() {
        reporter.screenshot(std::path::Path::new(last));
    }
}

impl JobOutcome {
    fn err(error: BrowserError) -> JobOutcome {
        JobOutcome { result: Err(error.to_job_error()), error_data: None }
    }
}

struct Inner {
    settings: BrowserSettings,
    executable: Result<PathBuf, String>,
    warm: Option<WarmBrowser>,
    guard: Guard,
    checkpoints: CheckpointStore,
    sessions: SessionStore,
    keys: Arc<dyn KeyStore>,
    notifier: Arc<dyn Notifier>,
    key: Mutex<Option<Result<SessionKey, String>>>,
    /// Session state of sites when there is no key: memory only.
    volatile: Mutex<std::collections::BTreeMap<String, StorageState>>,
    /// On disk, shared with every other process of the profile (see [`crate::logins`]).
    logins: LoginsNeeded,
    /// One job per site at a time: two would share one account and one budget.
    site_locks: Mutex<std::collections::BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Cheap to clone; all clones share the warm browser and the guard state.
#[derive(Clone)]
pub struct BrowserRuntime {
    inner: Arc<Inner>,
}

impl BrowserRuntime {
    pub fn new(settings: BrowserSettings, keys: Arc<dyn KeyStore>, notifier: Arc<dyn Notifier>) -> BrowserRuntime {
        let dir = settings.dir();
        let executable = crate::launch::find_browser(settings.executable.as_deref()).map_err(|e| e.to_string());
        let warm = executable.as_ref().ok().map(|exe| {
            WarmBrowser::new(BrowserLaunch {
                executable: exe.clone(),
                user_data_dir: dir.join("profiles").join(&settings.profile),
                headful: settings.headful,
                extra_args: settings.job_browser_args.clone(),
            })
        });
        let guard = Guard::open(&dir, settings.breaker);
        let runtime = BrowserRuntime {
            inner: Arc::new(Inner {
                executable,
                warm,
                guard,
                checkpoints: CheckpointStore::new(dir.join("checkpoints")),
                sessions: SessionStore::new(dir.join("sessions")),
                keys,
                notifier,
                key: Mutex::new(None),
                volatile: Mutex::new(Default::default()),
                logins: LoginsNeeded::new(&dir),
                site_locks: Mutex::new(Default::default()),
                settings,
            }),
        };
        runtime.inner.checkpoints.gc(30 * 24 * 3_600_000);
        if let Some((until, _)) = runtime.inner.guard.circuit(crate::now_ms()) {
            runtime.schedule_close(until);
        }
        runtime
    }

    /// Whether a browser was found (the agent announces the browser job types only then).
    pub fn available(&self) -> bool {
        self.inner.warm.is_some()
    }

    pub fn settings(&self) -> &BrowserSettings {
        &self.inner.settings
    }

    pub fn warm(&self) -> Option<&WarmBrowser> {
        self.inner.warm.as_ref()
    }

    pub fn status(&self) -> BrowserStatus {
        let circuit = self.inner.guard.circuit(crate::now_ms());
        BrowserStatus {
            executable: self.inner.executable.as_ref().ok().map(|p| p.display().to_string()),
            circuit_open_until_ms: circuit.as_ref().map(|c| c.0),
            circuit_open_until: circuit.as_ref().map(|c| rfc3339(c.0)),
            circuit_reason: circuit.map(|c| c.1),
            session_volatile: self.inner.key.lock().ok().is_some_and(|k| matches!(*k, Some(Err(_)))),
            login_required: self.inner.logins.sites().into_keys().collect(),
        }
    }

    /// `broadcast_dm` and `send_dm` jobs a previous agent process left unfinished
    /// (`{"jobId","type","payload"}`): the agent runs them again at start, which resumes them
    /// from their checkpoints.
    pub fn unfinished_jobs(&self) -> Vec<Value> {
        self.inner.checkpoints.unfinished()
    }

    /// Closes the circuit breaker by hand (the person resumed from the tray).
    pub fn reset_circuit(&self) {
        self.inner.guard.close_circuit();
        self.inner.notifier.notify(BrowserEvent::CircuitClosed);
    }

    pub async fn shutdown(&self) {
        if let Some(warm) = &self.inner.warm {
            warm.shutdown().await;
        }
    }

    fn schedule_close(&self, until_ms: i64) {
        let runtime = self.clone();
        tokio::spawn(async move {
            let wait = (until_ms - crate::now_ms()).max(0) as u64;
            tokio::time::sleep(Duration::from_millis(wait)).await;
            if runtime.inner.guard.circuit(crate::now_ms()).is_none() {
                tracing::info!("browser circuit breaker closed; browser jobs resume");
                runtime.inner.notifier.notify(BrowserEvent::CircuitClosed);
            }
        });
    }

    /// The session key, asked once; the person hears once that sessions are volatile.
    fn key(&self) -> Option<SessionKey> {
        let mut slot = self.inner.key.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let answer = self.inner.keys.session_key();
            if let Err(reason) = &answer {
                tracing::warn!(%reason, "no keychain key for browser sessions; they are kept in memory only");
                self.inner.notifier.notify(BrowserEvent::SessionVolatile { reason: reason.clone() });
            }
            *slot = Some(answer);
        }
        slot.as_ref().and_then(|k| k.as_ref().ok().cloned())
    }

    fn load_state(&self, site: &str) -> Option<StorageState> {
        match self.key() {
            Some(key) => match self.inner.sessions.load(site, &key) {
                Ok(state) => state,
                Err(e) => {
                    tracing::warn!(site, error = %e, "saved browser session unusable; starting logged out");
                    None
                }
            },
            None => self.inner.volatile.lock().ok().and_then(|v| v.get(site).cloned()),
        }
    }

    fn save_state(&self, site: &str, state: StorageState) {
        match self.key() {
            Some(key) => match self.inner.sessions.save(site, &key, &state) {
                Ok(()) => tracing::debug!(site, cookies = state.cookies.len(), "browser session saved (encrypted)"),
                Err(e) => tracing::warn!(site, error = %e, "cannot save the browser session"),
            },
            None => {
                if let Ok(mut volatile) = self.inner.volatile.lock() {
                    volatile.insert(site.to_owned(), state);
                }
            }
        }
    }

    /// Path of a site's encrypted session file (tests check it is not plaintext).
    pub fn session_path(&self, site: &str) -> PathBuf {
        self.inner.sessions.path(site)
    }

    fn site_lock(&self, site: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.site_locks.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(locks.entry(site.to_owned()).or_default())
    }

    fn options(&self, dry_run: bool, uploads: &Uploads) -> RunOptions {
        RunOptions {
            dry_run,
            pacing: self.inner.settings.pacing,
            typing: self.inner.settings.typing,
            artifacts_dir: Some(self.inner.settings.dir().join("artifacts")),
            uploads: uploads.clone(),
        }
    }

    /// Circuit breaker and site back-off: fail at once when the deadline cannot be met,
    /// else wait out the back-off.
    async fn preflight(&self, site: &str, deadline_ms: i64) -> Result<(), BrowserError> {
        let now = crate::now_ms();
        if let Some((until, reason)) = self.inner.guard.circuit(now) {
            return Err(BrowserError::OverBudget {
                reason: format!("browser jobs are paused by the circuit breaker ({reason}) until {}", rfc3339(until)),
                retry_after_ms: (until - now).max(1) as u64,
            });
        }
        if let Some(wait) = self.inner.guard.site_backoff(site, now) {
            if now + wait as i64 > deadline_ms {
                return Err(BrowserError::OverBudget {
                    reason: format!("the site {site:?} asked us to slow down; backing off for {wait} ms"),
                    retry_after_ms: wait,
                });
            }
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        Ok(())
    }

    /// One token of `action`, waiting for it up to the deadline.
    async fn take_token(&self, action: &str, cap: Cap, deadline_ms: i64) -> Result<(), BrowserError> {
        loop {
            let now = crate::now_ms();
            match self.inner.guard.try_take(action, cap, now) {
                Ok(()) => return Ok(()),
                Err(wait) => {
                    if wait == u64::MAX || now.saturating_add(wait as i64) > deadline_ms {
                        return Err(BrowserError::OverBudget {
                            reason: format!(
                                "the local {action} budget ({} per hour, burst {}) has no room before the job's deadline",
                                cap.per_hour, cap.burst
                            ),
                            retry_after_ms: wait.min(3_600_000),
                        });
                    }
                    tracing::info!(action, wait_ms = wait, "over the local budget; waiting");
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
            }
        }
    }

    /// Rate limits, logins and the like, after a job ended with `error`.
    fn after_error(&self, adapter: &Adapter, error: BrowserError) -> BrowserError {
        match error {
            BrowserError::RateLimited { site, detail, .. } => {
                let verdict = self.inner.guard.record_rate_limited(
                    &site,
                    adapter.settings.rate_limit_backoff_ms,
                    "RATE_LIMITED",
                    crate::now_ms(),
                );
                if let Some(until) = verdict.circuit_opened_until_ms {
                    tracing::warn!(%site, until = %rfc3339(until), "repeated rate limits: circuit breaker open, browser jobs paused");
                    self.inner.notifier.notify(BrowserEvent::CircuitOpened {
                        reason: "RATE_LIMITED".into(),
                        site: site.clone(),
                        until_ms: until,
                        cooldown_ms: self.inner.settings.breaker.cooldown_ms.max(0) as u64,
                    });
                    self.schedule_close(until);
                }
                BrowserError::RateLimited { site, detail, retry_after_ms: Some(verdict.retry_after_ms) }
            }
            BrowserError::LoginRequired { site } => {
                self.inner.logins.mark(&site, crate::now_ms());
                self.inner.notifier.notify(BrowserEvent::LoginRequired { site: site.clone() });
                BrowserError::LoginRequired { site }
            }
            other => other,
        }
    }

    /// Runs `work` in a fresh context of the warm browser with the site's session restored,
    /// saves the session afterwards (whatever the outcome), and disposes the context.
    async fn with_page<T, F, Fut>(&self, adapter: &Adapter, work: F) -> Result<T, BrowserError>
    where
        F: FnOnce(Driver) -> Fut,
        Fut: std::future::Future<Output = Result<T, BrowserError>>,
    {
        let warm = self.inner.warm.as_ref().ok_or_else(|| {
            BrowserError::NotInstalled(self.inner.executable.as_ref().err().cloned().unwrap_or_default())
        })?;
        let context = warm.new_context(Origins::of(adapter)?).await?;
        let driver = Driver::new(context.page.clone()).await?.fenced(context.refusal.clone());
        let origin = adapter.origin();
        let previous = self.load_state(&adapter.name);
        if let Some(state) = &previous {
            session::restore(&driver, state).await?;
        }
        // A refusal of the fence ends the job whatever the flow made of it.
        let outcome = work(driver.clone()).await.and_then(|value| context.refusal.check().map(|()| value));
        let saveable =
            !matches!(outcome, Err(BrowserError::Cdp(_) | BrowserError::Launch(_) | BrowserError::Cancelled));
        if saveable {
            match session::capture(&driver, &origin, previous.as_ref()).await {
                Ok(state) => self.save_state(&adapter.name, state),
                Err(e) => tracing::warn!(error = %e, "cannot read the browser session"),
            }
        }
        context.dispose().await;
        if outcome.is_ok() {
            self.inner.logins.clear(&adapter.name);
        }
        outcome
    }

    /// Runs one browser job. `adapter` is already resolved (from a signed bundle, the
    /// person's adapters folder, or inline where the person allows it); `uploads` are the
    /// folders its files may come from (the job's own `params.media` are added here).
    pub async fn run_job(
        &self,
        job_type: &str,
        job_id: &str,
        payload: &BrowserJobPayload,
        adapter: &Adapter,
        uploads: &Uploads,
    ) -> JobOutcome {
        self.run_job_reporting(job_type, job_id, payload, adapter, uploads, &NoReport).await
    }

    /// [`Self::run_job`], telling `reporter` how far it got and what screenshots it took.
    pub async fn run_job_reporting(
        &self,
        job_type: &str,
        job_id: &str,
        payload: &BrowserJobPayload,
        adapter: &Adapter,
        uploads: &Uploads,
        reporter: &dyn JobReporter,
    ) -> JobOutcome {
        if let Err(e) = adapter.validate() {
            return JobOutcome::err(e);
        }
        let lock = self.site_lock(&adapter.name);
        let _one_at_a_time = lock.lock().await;
        let deadline = payload.deadline_ms.unwrap_or_else(|| {
            crate::now_ms()
                + payload.timeout_ms.unwrap_or(self.inner.settings.default_timeout.as_millis() as u64) as i64
        });
        let hub_cap = payload.limits.map(|l| Cap { per_hour: l.per_hour, burst: l.burst });
        if let Err(e) = self.preflight(&adapter.name, deadline).await {
            return JobOutcome::err(e);
        }
        let outcome = match job_type {
            SEND_DM => return self.send_dm(job_id, payload, adapter, uploads, hub_cap, deadline, reporter).await,
            BROADCAST_DM => {
                return self.broadcast(job_id, payload, adapter, uploads, hub_cap, deadline, reporter).await
            }
            SCHEDULE_POST => self.schedule_post(payload, adapter, uploads, hub_cap, deadline, reporter).await,
            SCRAPE_SUBS => self.scrape_subs(payload, adapter, uploads, hub_cap, deadline, reporter).await,
            other => Err(BrowserError::BadFlow(format!("{other:?} is not a browser job type"))),
        };
        match outcome {
            Ok((value, _)) => JobOutcome { result: Ok(value), error_data: None },
            Err(e) => JobOutcome::err(self.after_error(adapter, e)),
        }
    }

    /// Runs the built-in flow `name` on a page of the warm browser after checking its
    /// parameters and taking one `action` token from the bucket (skipped when `spends` is
    /// false: a dry run sends nothing).
    #[allow(clippy::too_many_arguments)]
    async fn run_builtin(
        &self,
        adapter: &Adapter,
        uploads: &Uploads,
        name: &str,
        params: &Map<String, Value>,
        action: &str,
        spends: bool,
        dry_run: bool,
        hub_cap: Option<Cap>,
        deadline: i64,
    ) -> Result<FlowOutput, BrowserError> {
        let flow = adapter.flow(name)?;
        flow.resolve_params(params)?;
        if spends {
            self.take_token(action, self.inner.settings.caps.effective(action, hub_cap), deadline).await?;
        }
        let options = self.options(dry_run, uploads);
        self.with_page(adapter, |driver| async move { run_flow(&driver, adapter, &flow, params, &options).await }).await
    }

    /// One recipient, with a broadcast's truth: the send runs through [`Self::send_each`]
    /// under a checkpoint keyed by the job (`idemKey`, else the job id), so a redelivery
    /// after a crash knows the message was being sent. A send that failed past its submit
    /// is checked on the site at once when the adapter can be asked (`check_sent`): found,
    /// it is a success; not found, the job fails with the send's own error and the hub
    /// retries it. When nobody can tell, the job fails `SEND_UNCERTAIN` (never retried)
    /// with the recipient in `uncertainRecipients`, and this agent never sends it again.
    #[allow(clippy::too_many_arguments)]
    async fn send_dm(
        &self,
        job_id: &str,
        payload: &BrowserJobPayload,
        adapter: &Adapter,
        uploads: &Uploads,
        hub_cap: Option<Cap>,
        deadline: i64,
        reporter: &dyn JobReporter,
    ) -> JobOutcome {
        let recipient = match payload
            .recipient
            .clone()
            .or_else(|| payload.params.get("recipient").and_then(Value::as_str).map(str::to_owned))
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
        {
            Some(recipient) => recipient,
            None => {
                return JobOutcome::err(BrowserError::BadFlow(
                    "send_dm needs `recipient` (the person to message, as the site names them)".into(),
                ))
            }
        };
        let recipients = vec![recipient.clone()];
        let sends = match self
            .send_each(SEND_DM, job_id, payload, &recipients, adapter, uploads, hub_cap, deadline, true, reporter)
            .await
        {
            Ok(sends) => sends,
            Err(e) => return JobOutcome::err(e),
        };
        let Sends { result, mut checkpoint, already, output, .. } = sends;
        let state = checkpoint.as_ref().and_then(|cp| {
            cp.recipients.iter().find(|r| normalize(&r.recipient) == normalize(&recipient)).map(|r| r.state)
        });
        let (skipped, steps_run) = output.map(|o| (o.skipped, o.steps_run)).unwrap_or_default();
        // Login and rate-limit bookkeeping, whatever the job is reported as.
        let result = result.map_err(|e| self.after_error(adapter, e));
        let data = |sent: Vec<String>, uncertain: Vec<String>| {
            json!({
                "sentRecipients": sent,
                "alreadySent": already,
                "uncertainRecipients": uncertain,
                "dryRun": payload.dry_run,
                "skippedSteps": skipped,
                "stepsRun": steps_run,
            })
        };
        if matches!(state, Some(Progress::Sending)) {
            // Reported as unknown below: the checkpoint must agree, so that nothing (a
            // redelivery, a redrive, the resume at start) sends it again.
            if let Some(cp) = checkpoint.as_mut() {
                if let Some(i) = cp.recipients.iter().position(|r| normalize(&r.recipient) == normalize(&recipient)) {
                    if let Err(e) = self.inner.checkpoints.mark(cp, i, Progress::Uncertain) {
                        tracing::warn!(error = %e, "cannot record the uncertain send in the checkpoint");
                    }
                }
            }
        }
        let can_check = adapter.flow("check_sent").is_ok() && adapter.selectors.contains_key("sentMessage");
        let outcome = send_dm_outcome(&adapter.name, &recipient, state, result, can_check, data);
        if let Err(e) = &outcome.result {
            if e.code == ErrorCode::SendUncertain {
                tracing::warn!(site = %adapter.name, "{}", e.message.as_deref().unwrap_or_default());
            }
        }
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn broadcast(
        &self,
        job_id: &str,
        payload: &BrowserJobPayload,
        adapter: &Adapter,
        uploads: &Uploads,
        hub_cap: Option<Cap>,
        deadline: i64,
        reporter: &dyn JobReporter,
    ) -> JobOutcome {
        let recipients: Vec<String> = payload.recipients.clone().unwrap_or_default();
        if recipients.iter().all(|r| r.trim().is_empty()) {
            return JobOutcome::err(BrowserError::BadFlow("broadcast_dm needs a non-empty `recipients` list".into()));
        }
        let sends = match self
            .send_each(BROADCAST_DM, job_id, payload, &recipients, adapter, uploads, hub_cap, deadline, false, reporter)
            .await
        {
            Ok(sends) => sends,
            Err(e) => return JobOutcome::err(e),
        };
        let Sends { result, checkpoint, already, dry_runs, .. } = sends;
        let sent: Vec<String> = checkpoint.as_ref().map(|c| c.sent()).unwrap_or_default();
        let uncertain: Vec<String> = checkpoint.as_ref().map(|c| c.uncertain()).unwrap_or_default();
        let data = json!({
            "sentRecipients": sent,
            "alreadySent": already,
            "uncertainRecipients": uncertain,
            "dryRun": payload.dry_run,
            "dryRunRecipients": dry_runs,
            "count": sent.len(),
        });
        match result {
            Ok(()) => JobOutcome { result: Ok(data), error_data: None },
            Err(e) => {
                let error = self.after_error(adapter, e);
                JobOutcome { result: Err(error.to_job_error()), error_data: Some(data) }
            }
        }
    }

    /// Sends the `send_dm` flow to each recipient in turn under the job's checkpoint
    /// (`broadcast_dm`, and `send_dm` as a broadcast of one). `ask_at_once`: a send that
    /// failed past its submit is checked on the site right away (`send_dm`, which has no
    /// later recipient to go on with) instead of by the retry (`broadcast_dm`). `Err` is a
    /// failure before any send (bad flow, unreadable checkpoint).
    #[allow(clippy::too_many_arguments)]
    async fn send_each(
        &self,
        job_type: &str,
        job_id: &str,
        payload: &BrowserJobPayload,
        recipients: &[String],
        adapter: &Adapter,
        uploads: &Uploads,
        hub_cap: Option<Cap>,
        deadline: i64,
        ask_at_once: bool,
        reporter: &dyn JobReporter,
    ) -> Result<Sends, BrowserError> {
        let flow = adapter.flow(SEND_DM)?;
        let mut probe_params = payload.params.clone();
        probe_params.insert("recipient".into(), Value::from("probe"));
        flow.resolve_params(&probe_params)?;
        let text = payload.params.get("text").and_then(Value::as_str).unwrap_or_default().to_owned();
        let idem_key = payload.idem_key.clone().unwrap_or_else(|| job_id.to_owned());
        let dry_run = payload.dry_run;
        let store = &self.inner.checkpoints;
        let mut checkpoint = if dry_run {
            None
        } else {
            let checkpoint_error = |e: std::io::Error| BrowserError::Io(format!("{job_type} checkpoint: {e}"));
            let mut cp = store.open(&idem_key, job_id, recipients).map_err(checkpoint_error)?;
            cp.finished = false;
            // The job's own type: an agent restarted mid-send resumes it as what it was.
            cp.job = Some(json!({"jobId": job_id, "type": job_type, "payload": payload}));
            store.save(&cp).map_err(checkpoint_error)?;
            Some(cp)
        };
        let already: Vec<String> = checkpoint.as_ref().map(|c| c.sent()).unwrap_or_default();
        let cap = self.inner.settings.caps.effective("dm", hub_cap);
        let options = self.options(dry_run, uploads);
        let recipient_pacing = self.inner.settings.recipient_pacing;
        // Only this job's recipients, in checkpoint order (which keeps the payload's order).
        let wanted: BTreeSet<String> = recipients.iter().map(|r| normalize(r)).collect();
        let mut dry_runs = 0u32;
        let mut last_output: Option<FlowOutput> = None;
        let check_flow = adapter.flow("check_sent").ok().filter(|_| adapter.selectors.contains_key("sentMessage"));
        let runtime = self.clone();
        let result = self
            .with_page(adapter, |driver| {
                let checkpoint = &mut checkpoint;
                let dry_runs = &mut dry_runs;
                let last_output = &mut last_output;
                async move {
                    let order: Vec<String> = match checkpoint.as_ref() {
                        Some(cp) => cp
                            .recipients
                            .iter()
                            .map(|r| r.recipient.clone())
                            .filter(|r| wanted.contains(&normalize(r)))
                            .collect(),
                        None => recipients.to_vec(),
                    };
                    let mut first = true;
                    // Recipients behind us (sent, or never to be sent again), for the
                    // person's "12/40": the count moves on as each one is done.
                    let total = order.len() as u32;
                    reporter.progress(0, total);
                    for (done, recipient) in order.into_iter().enumerate() {
                        // Every path below that goes on to the next recipient is done with
                        // this one; one that is not returns.
                        if done > 0 {
                            reporter.progress(done as u32, total);
                        }
                        let index = checkpoint.as_ref().and_then(|cp| {
                            cp.recipients.iter().position(|r| normalize(&r.recipient) == normalize(&recipient))
                        });
                        let state = index.and_then(|i| checkpoint.as_ref().map(|cp| cp.recipients[i].state));
                        // Sent, or perhaps sent with no way to tell: never again.
                        if matches!(state, Some(Progress::Sent | Progress::Uncertain)) {
                            continue;
                        }
                        let mut params = payload.params.clone();
                        params.insert("recipient".into(), Value::from(recipient.clone()));
                        if state == Some(Progress::Sending) {
                            // The agent died during this send: ask the site before sending again.
                            let delivered = match &check_flow {
                                Some(check) => shown_on_site(&driver, adapter, check, &params, &options, &text).await?,
                                None => {
                                    // No way to check: do not risk a second message, and do
                                    // not claim a first one either.
                                    if let (Some(cp), Some(i)) = (checkpoint.as_mut(), index) {
                                        store
                                            .mark(cp, i, Progress::Uncertain)
                                            .map_err(|e| BrowserError::Io(e.to_string()))?;
                                    }
                                    tracing::warn!(
                                        "an interrupted send cannot be checked on this site; reported as uncertain"
                                    );
                                    continue;
                                }
                            };
                            if delivered {
                                if let (Some(cp), Some(i)) = (checkpoint.as_mut(), index) {
                                    store.mark(cp, i, Progress::Sent).map_err(|e| BrowserError::Io(e.to_string()))?;
                                }
                                tracing::info!("interrupted send had gone out; not sending again");
                                continue;
                            }
                        }
                        if !first {
                            let pause = recipient_pacing.draw();
                            if !pause.is_zero() {
                                tokio::time::sleep(pause).await;
                            }
                        }
                        first = false;
                        if !dry_run {
                            runtime.take_token("dm", cap, deadline).await?;
                        }
                        if let (Some(cp), Some(i)) = (checkpoint.as_mut(), index) {
                            store.mark(cp, i, Progress::Sending).map_err(|e| BrowserError::Io(e.to_string()))?;
                        }
                        let submitted = AtomicBool::new(false);
                        let sending =
                            run_flow_watching_submit(&driver, adapter, &flow, &params, &options, &submitted).await;
                        let e = match sending {
                            Ok(output) => {
                                report_screenshots(reporter, &output);
                                *last_output = Some(output);
                                if let (Some(cp), Some(i)) = (checkpoint.as_mut(), index) {
                                    store.mark(cp, i, Progress::Sent).map_err(|e| BrowserError::Io(e.to_string()))?;
                                }
                                if dry_run {
                                    *dry_runs += 1;
                                }
                                continue;
                            }
                            Err(e) => e,
                        };
                        let (Some(cp), Some(i)) = (checkpoint.as_mut(), index) else { return Err(e) };
                        let mut state = after_failed_send(&e, submitted.load(Ordering::SeqCst), check_flow.is_some());
                        tracing::info!(code = %e.code(), ?state, "a send failed");
                        if let (Progress::Sending, true, Some(check)) = (state, ask_at_once, &check_flow) {
                            // The checkpoint still says `sending` (written before the send):
                            // a crash while asking leaves it so, and the next run asks again.
                            state = match shown_on_site(&driver, adapter, check, &params, &options, &text).await {
                                Ok(true) => Progress::Sent,
                                // The site shows no such message after the send's own wait:
                                // nothing went out, so the retry may send it.
                                Ok(false) => Progress::Pending,
                                Err(check_error) => {
                                    tracing::warn!(
                                        code = %check_error.code(),
                                        error = %check_error,
                                        "cannot ask the site whether the send went out"
                                    );
                                    Progress::Uncertain
                                }
                            };
                            tracing::info!(?state, "asked the site about the failed send");
                        }
                        store.mark(cp, i, state).map_err(|e| BrowserError::Io(e.to_string()))?;
                        if state == Progress::Sent {
                            continue;
                        }
                        return Err(e);
                    }
                    reporter.progress(total, total);
                    Ok(())
                }
            })
            .await;
        if let Some(cp) = checkpoint.as_mut() {
            // Reported now (success or failure); a retry arrives as a new delivery.
            cp.finished = true;
            if let Err(e) = store.save(cp) {
                tracing::warn!(error = %e, "cannot mark the {job_type} checkpoint finished");
            }
        }
        Ok(Sends { result, checkpoint, already, dry_runs, output: last_output })
    }

    async fn schedule_post(
        &self,
        payload: &BrowserJobPayload,
        adapter: &Adapter,
        uploads: &Uploads,
        hub_cap: Option<Cap>,
        deadline: i64,
        reporter: &dyn JobReporter,
    ) -> Result<(Value, Option<Value>), BrowserError> {
        let p = &payload.params;
        let at = p.get("at").and_then(Value::as_str).ok_or_else(|| {
            BrowserError::BadFlow("schedule_post needs `params.at` (local date-time or RFC 3339)".into())
        })?;
        let zone = match p.get("timeZone") {
            None | Some(Value::Null) => None,
            Some(Value::String(zone)) => Some(zone.as_str()),
            Some(other) => {
                return Err(BrowserError::BadFlow(format!(
                    "`params.timeZone` must be an IANA zone name such as \"Europe/Paris\", not {}",
                    crate::flow::json_kind(other)
                )))
            }
        };
        let when = resolve_time(at, zone)?;
        let site_zone = site_time_zone(adapter, zone)?;
        let local = when.with_timezone(&site_zone);
        let date = local.format(&adapter.settings.date_format).to_string();
        let time = local.format(&adapter.settings.time_format).to_string();
        let mut params = p.clone();
        params.insert("date".into(), Value::from(date.clone()));
        params.insert("time".into(), Value::from(time.clone()));
        params.insert("siteTimeZone".into(), Value::from(site_zone.name()));
        let media_dir = self.inner.settings.dir().join("media").join(format!("{:016x}", rand::random::<u64>()));
        let media = match materialize_media(p, &media_dir, uploads) {
            Ok(media) => media,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&media_dir);
                if matches!(e, BrowserError::NotAllowed(_)) {
                    tracing::warn!(site = %adapter.name, "{e}");
                }
                return Err(e);
            }
        };
        // The files this job sent itself (and links to its own `mediaPaths`) may be uploaded.
        let uploads = uploads.clone().allow(&media_dir, "the files this job sent");
        let files: Vec<String> = media.iter().map(|m| m.path.display().to_string()).collect();
        let names: Vec<&str> = media.iter().map(|m| m.name.as_str()).collect();
        params.insert("files".into(), json!(files));
        let output = self
            .run_builtin(
                adapter,
                &uploads,
                SCHEDULE_POST,
                &params,
                "post",
                !payload.dry_run,
                payload.dry_run,
                hub_cap,
                deadline,
            )
            .await;
        let _ = std::fs::remove_dir_all(&media_dir);
        let output = output?;
        report_screenshots(reporter, &output);
        Ok((
            json!({
                "scheduledFor": when.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "siteDate": date,
                "siteTime": time,
                "siteTimeZone": site_zone.name(),
                "media": files.len(),
                "mediaNames": names,
                "confirmation": output.vars.get("confirmation"),
                "dryRun": payload.dry_run,
                "skippedSteps": output.skipped,
            }),
            None,
        ))
    }

    async fn scrape_subs(
        &self,
        payload: &BrowserJobPayload,
        adapter: &Adapter,
        uploads: &Uploads,
        hub_cap: Option<Cap>,
        deadline: i64,
        reporter: &dyn JobReporter,
    ) -> Result<(Value, Option<Value>), BrowserError> {
        // Scraping has no final submit to skip: a dry run loads the same pages, so it spends
        // its token too.
        let output = self
            .run_builtin(
                adapter,
                uploads,
                SCRAPE_SUBS,
                &payload.params,
                "scrape",
                true,
                payload.dry_run,
                hub_cap,
                deadline,
            )
            .await?;
        report_screenshots(reporter, &output);
        let subscribers = output.vars.get("subscribers").cloned().unwrap_or_else(|| json!([]));
        let count = subscribers.as_array().map_or(0, Vec::len);
        Ok((json!({ "subscribers": subscribers, "count": count, "pages": output.pages }), None))
    }

    /// Runs any flow (a bundle's flow document) with the same session, guard, pacing and
    /// confinement; `uploads` are the folders its files may come from (the bundle's own).
    pub async fn run_flow_document(
        &self,
        adapter: &Adapter,
        flow: &Flow,
        params: &Map<String, Value>,
        dry_run: bool,
        uploads: &Uploads,
    ) -> Result<Value, BrowserError> {
        adapter.validate()?;
        flow.validate()?;
        let lock = self.site_lock(&adapter.name);
        let _one_at_a_time = lock.lock().await;
        let deadline = crate::now_ms() + self.inner.settings.default_timeout.as_millis() as i64;
        self.preflight(&adapter.name, deadline).await?;
        if !dry_run {
            self.take_token("flow", self.inner.settings.caps.effective("flow", None), deadline).await?;
        }
        let options = self.options(dry_run, uploads);
        let outcome = self
            .with_page(adapter, |driver| async move { run_flow(&driver, adapter, flow, params, &options).await })
            .await;
        match outcome {
            Ok(output) => Ok(json!({
                "flow": flow.name,
                "vars": output.vars,
                "stepsRun": output.steps_run,
                "skippedSteps": output.skipped,
                "screenshots": output.screenshots,
                "dryRun": dry_run,
            })),
            Err(e) => Err(self.after_error(adapter, e)),
        }
    }

    /// The person logs in by hand: a browser window (headful unless `headful` is false, which
    /// tests and scripted logins use) opens the adapter's `login` URL; once the logged-in
    /// marker shows, the session is saved (encrypted) and the window closes.
    pub async fn interactive_login(
        &self,
        adapter: &Adapter,
        headful: bool,
        timeout: Duration,
    ) -> Result<LoginReport, BrowserError> {
        adapter.validate()?;
        let marker = adapter.markers.logged_in.clone().ok_or_else(|| {
            BrowserError::BadFlow(format!(
                "adapter {:?} has no markers.loggedIn, so a login cannot be detected",
                adapter.name
            ))
        })?;
        // The window opens nothing but a login page of the adapter's own origins.
        let origins = Origins::of(adapter)?;
        let url = adapter.absolute(adapter.urls.get("login").map(String::as_str).unwrap_or("/"))?;
        origins.check(&url).map_err(|e| match e {
            BrowserError::NotAllowed(why) => {
                BrowserError::NotAllowed(format!("login page of {:?}: {why}", adapter.name))
            }
            other => other,
        })?;
        let executable = self.inner.executable.clone().map_err(BrowserError::NotInstalled)?;
        let launch = BrowserLaunch {
            executable,
            user_data_dir: self.inner.settings.dir().join("login-profiles").join(&self.inner.settings.profile),
            headful,
            extra_args: Vec::new(),
        };
        let args = launch.args();
        let warm = WarmBrowser::for_person(launch);
        let result = async {
            let context = warm.new_context(origins).await?;
            let driver = Driver::new(context.page.clone()).await?;
            let previous = self.load_state(&adapter.name);
            if let Some(state) = &previous {
                session::restore(&driver, state).await?;
            }
            driver.goto(&url, Duration::from_millis(adapter.settings.timeout_ms)).await?;
            tracing::info!(site = %adapter.name, "waiting for the person to log in");
            driver.wait_for(&marker, 0, crate::locator::WaitState::Visible, timeout, false).await?;
            let state = session::capture(&driver, &adapter.origin(), previous.as_ref()).await?;
            let cookies = state.cookies.len();
            self.save_state(&adapter.name, state);
            context.dispose().await;
            Ok::<usize, BrowserError>(cookies)
        }
        .await;
        warm.shutdown().await;
        let cookies = result?;
        self.inner.logins.clear(&adapter.name);
        let volatile = self.key().is_none();
        self.inner.notifier.notify(BrowserEvent::SessionSaved { site: adapter.name.clone() });
        Ok(LoginReport { site: adapter.name.clone(), cookies, saved_encrypted: !volatile, launch_args: args })
    }
}

/// What a headful login did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginReport {
    pub site: String,
    pub cookies: usize,
    /// False when there was no keychain key (the session lives in this process only).
    pub saved_encrypted: bool,
    pub launch_args: Vec<String>,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// `at` as an instant: RFC 3339 with an offset, or a local date-time in `zone` (the
/// earlier instant when the clock repeats; an error inside a DST gap).
pub fn resolve_time(at: &str, zone: Option<&str>) -> Result<chrono::DateTime<chrono::Utc>, BrowserError> {
    use chrono::TimeZone;
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(at) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let zone = zone.ok_or_else(|| BrowserError::BadFlow(format!("`at` {at:?} has no offset: give `timeZone` too")))?;
    let tz: chrono_tz::Tz = zone.parse().map_err(|_| BrowserError::BadFlow(format!("unknown time zone {zone:?}")))?;
    let naive = chrono::NaiveDateTime::parse_from_str(at, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(at, "%Y-%m-%dT%H:%M"))
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(at, "%Y-%m-%d %H:%M"))
        .map_err(|_| BrowserError::BadFlow(format!("`at` {at:?} is not YYYY-MM-DDTHH:MM[:SS]")))?;
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) => Ok(t.with_timezone(&chrono::Utc)),
        chrono::LocalResult::Ambiguous(earlier, _) => Ok(earlier.with_timezone(&chrono::Utc)),
        chrono::LocalResult::None => {
            Err(BrowserError::BadFlow(format!("{at} does not exist in {zone} (the clocks skip it)")))
        }
    }
}

/// The zone the site reads `schedule_post`'s date and time in: `settings.timeZone` when the
/// adapter declares it; else, when the site has a time-zone control (`selectors.timeZoneInput`,
/// which the flow then sets to this zone), the job's own `timeZone`, or UTC for an `at` with
/// an offset. With neither, nobody knows which zone the site would read the time in, and a
/// post scheduled hours off would still be reported as scheduled: refused instead.
pub fn site_time_zone(adapter: &Adapter, job_zone: Option<&str>) -> Result<chrono_tz::Tz, BrowserError> {
    let has_control = adapter.selectors.get("timeZoneInput").is_some_and(|s| !s.trim().is_empty());
    let name = match (adapter.settings.time_zone.as_deref(), has_control) {
        (Some(declared), _) => declared,
        (None, true) => job_zone.unwrap_or("UTC"),
        (None, false) => {
            return Err(BrowserError::BadFlow(format!(
                "adapter {:?} does not say which time zone the site reads the post's date and time in: \
                 add `selectors.timeZoneInput` (the form's time-zone control, which the flow sets to the \
                 job's zone) or `settings.timeZone` (the zone the site's date picker shows)",
                adapter.name
            )))
        }
    };
    name.parse()
        .map_err(|_| BrowserError::BadFlow(format!("unknown time zone {name:?} (an IANA name such as Europe/Paris)")))
}

/// One file of a post's media: where it is on this machine and the name the site sees.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaFile {
    pub path: PathBuf,
    pub name: String,
}

/// `params.media`: `[{"name": "a.jpg", "base64": "…"}]`, each written to `dir/<n>/<name>` (a
/// folder per file, so the site receives the file's own name); and `params.mediaPaths`:
/// files already on this machine, uploaded from where they are when `uploads` allows them
/// (the person's uploads folder, the job's bundle: see [`Uploads::resolve`]). Two files of one post with
/// the same name (ignoring case) would look like one file to a site that keys uploads by
/// name, so the later ones reach it as `name (2).ext`, `name (3).ext`, as a browser names a
/// second download of the same file; the result's `mediaNames` lists the names sent.
pub fn materialize_media(
    params: &Map<String, Value>,
    dir: &std::path::Path,
    uploads: &Uploads,
) -> Result<Vec<MediaFile>, BrowserError> {
    let mut out: Vec<MediaFile> = Vec::new();
    let mut names = TakenNames::default();
    let list = |key: &str| -> Result<Vec<Value>, BrowserError> {
        match params.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => Ok(items.clone()),
            Some(other) => Err(BrowserError::BadFlow(format!(
                "`params.{key}` must be a list, not {}",
                crate::flow::json_kind(other)
            ))),
        }
    };
    for (i, item) in list("media")?.iter().enumerate() {
        if !item.is_object() {
            return Err(BrowserError::BadFlow(format!(
                "media[{i}] must be an object such as {{\"name\": \"teaser.png\", \"base64\": \"iVBORw0KGgo=\"}}, not {}",
                crate::flow::json_kind(item)
            )));
        }
        let name = match item.get("name") {
            None | Some(Value::Null) => format!("media-{}.bin", i + 1),
            Some(Value::String(name)) => media_name(name).ok_or_else(|| {
                BrowserError::BadFlow(format!(
                    "media[{i}].name {name:?} is not a file name; give one like \"teaser.png\""
                ))
            })?,
            Some(other) => {
                return Err(BrowserError::BadFlow(format!(
                    "media[{i}].name must be a string such as \"teaser.png\", not {}",
                    crate::flow::json_kind(other)
                )))
            }
        };
        let data = item.get("base64").and_then(Value::as_str).ok_or_else(|| {
            BrowserError::BadFlow(format!("media[{i}] needs `base64` (the file's bytes, base64-encoded)"))
        })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| BrowserError::BadFlow(format!("media[{i}].base64: {e}")))?;
        let name = names.claim(&name);
        let folder = dir.join(out.len().to_string());
        std::fs::create_dir_all(&folder)?;
        let path = folder.join(&name);
        std::fs::write(&path, bytes)?;
        out.push(MediaFile { path, name });
    }
    for (i, item) in list("mediaPaths")?.iter().enumerate() {
        let Some(path) = item.as_str() else {
            return Err(BrowserError::BadFlow(format!(
                "mediaPaths[{i}] must be a file path string, not {}",
                crate::flow::json_kind(item)
            )));
        };
        let resolved = uploads.resolve(path).map_err(|e| match e {
            BrowserError::NotAllowed(why) => BrowserError::NotAllowed(format!("mediaPaths[{i}]: {why}")),
            BrowserError::BadFlow(_) => {
                BrowserError::BadFlow(format!("mediaPaths[{i}]: no file {path:?} in {}", uploads.describe()))
            }
            other => other,
        })?;
        // The site receives the name the job gave, even when that was a link to another file.
        let own = std::path::Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let name = names.claim(&own);
        if resolved.file_name().is_some_and(|n| n.to_string_lossy() == name) {
            out.push(MediaFile { path: resolved, name });
            continue;
        }
        // Another name (repeated, or the link's): a link (else a copy) under the new name.
        let folder = dir.join(out.len().to_string());
        std::fs::create_dir_all(&folder)?;
        let renamed = folder.join(&name);
        if std::fs::hard_link(&resolved, &renamed).is_err() {
            std::fs::copy(&resolved, &renamed)?;
        }
        out.push(MediaFile { path: renamed, name });
    }
    Ok(out)
}

/// The file-name part of a media name (`dir/teaser.png` → `teaser.png`); `None` when there is
/// none or it holds control characters.
fn media_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next()?.trim();
    let usable = !base.is_empty() && base != "." && base != ".." && !base.chars().any(char::is_control);
    usable.then(|| base.to_owned())
}

/// The names given so far to one post's files, ignoring case.
#[derive(Default)]
struct TakenNames {
    taken: std::collections::HashSet<String>,
    /// Per name, the next number to try, so a payload of many equal names stays linear.
    next: std::collections::HashMap<String, u32>,
}

impl TakenNames {
    /// `name`, or `stem (n).ext` with the first n ≥ 2 not taken yet; the result is taken.
    fn claim(&mut self, name: &str) -> String {
        let key = name.to_lowercase();
        if self.taken.insert(key.clone()) {
            return name.to_owned();
        }
        let path = std::path::Path::new(name);
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| name.to_owned());
        let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
        let mut n = self.next.get(&key).copied().unwrap_or(2);
        loop {
            let candidate = format!("{stem} ({n}){ext}");
            n += 1;
            if self.taken.insert(candidate.to_lowercase()) {
                self.next.insert(key, n);
                return candidate;
            }
        }
    }
}

/// What [`BrowserRuntime::send_each`] did: the outcome of the sends (`Err`: the one that
/// stopped them), the checkpoint as it ended (`None` in a dry run), the recipients it found
/// already sent, and the last flow run's output.
struct Sends {
    result: Result<(), BrowserError>,
    checkpoint: Option<Checkpoint>,
    already: Vec<String>,
    dry_runs: u32,
    output: Option<FlowOutput>,
}

/// How a `send_dm` ends, from its recipient's checkpoint state after the send (`None`: a
/// dry run, no checkpoint) and the send's result. `data(sent, uncertain)` builds the result's
/// data. Sent: a success, even when the check found it after the send failed. Sending or
/// uncertain: nobody can tell, so `SEND_UNCERTAIN` (never retried) with the recipient in
/// `uncertainRecipients`. Otherwise the send's own error, retried by the hub's rules.
fn send_dm_outcome(
    site: &str,
    recipient: &str,
    state: Option<Progress>,
    result: Result<(), BrowserError>,
    can_check: bool,
    data: impl Fn(Vec<String>, Vec<String>) -> Value,
) -> JobOutcome {
    let one = || vec![recipient.to_owned()];
    match (state, result) {
        (Some(Progress::Sent), Ok(())) => JobOutcome { result: Ok(data(one(), Vec::new())), error_data: None },
        // Sent, then something else failed (a refusal of the fence after the send): the
        // error stands, and the hub learns the message went out.
        (Some(Progress::Sent), Err(e)) => {
            JobOutcome { result: Err(e.to_job_error()), error_data: Some(data(one(), Vec::new())) }
        }
        (Some(Progress::Uncertain | Progress::Sending), result) => {
            let cause = match &result {
                Err(e) => format!("it was submitted, then the job failed ({}: {e})", e.code()),
                Ok(()) => "an earlier run of this job was cut during the send".to_owned(),
            };
            let why = if can_check {
                "asking the site whether it arrived failed too".to_owned()
            } else {
                format!("the adapter of {site:?} has no `selectors.sentMessage` to ask the site")
            };
            let error =
                BrowserError::SendUncertain { recipient: recipient.to_owned(), detail: format!("{cause}, and {why}") };
            JobOutcome { result: Err(error.to_job_error()), error_data: Some(data(Vec::new(), one())) }
        }
        (_, Ok(())) => JobOutcome { result: Ok(data(Vec::new(), Vec::new())), error_data: None },
        (_, Err(e)) => JobOutcome::err(e),
    }
}

/// Whether the conversation with `params.recipient` shows a message with `text`, read with
/// the adapter's `check_sent` flow (`selectors.sentMessage`).
async fn shown_on_site(
    driver: &Driver,
    adapter: &Adapter,
    check: &Flow,
    params: &Map<String, Value>,
    options: &RunOptions,
    text: &str,
) -> Result<bool, BrowserError> {
    let out = run_flow(driver, adapter, check, params, &RunOptions { pacing: Cadence::OFF, ..options.clone() }).await?;
    let texts = out.vars.get("sentMessages").and_then(Value::as_array).cloned().unwrap_or_default();
    Ok(texts.iter().any(|m| m.get("text").and_then(Value::as_str).is_some_and(|t| t.trim() == text.trim())))
}

/// The error a job gets when this agent has no browser.
pub fn unavailable_error(reason: &str) -> JobError {
    JobError::new(ErrorCode::Other(crate::error::BROWSER_NOT_FOUND.into()), reason.to_owned())
}

/// Where a recipient stands after its send failed. The site refused it (HTTP 429, its
/// rate-limit banner, a content or policy refusal, a logged-out page) or the flow failed
/// before the message was submitted: nothing went out, so it is sent again by the retry.
/// Otherwise the message may be on the site: with a way to ask the site (`check_sent`) it
/// stays `sending`, which the retry resolves by asking; without one it is `uncertain`.
fn after_failed_send(error: &BrowserError, submitted: bool, can_check: bool) -> Progress {
    let refused_by_site = matches!(
        error,
        BrowserError::RateLimited { .. }
            | BrowserError::ContentBlocked { .. }
            | BrowserError::PolicyViolation { .. }
            | BrowserError::LoginRequired { .. }
    );
    if !submitted || refused_by_site {
        Progress::Pending
    } else if can_check {
        Progress::Sending
    } else {
        Progress::Uncertain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(yaml_extra: &str) -> Adapter {
        crate::flow::parse_adapter(&format!("name: s\nbaseUrl: https://s.example\n{yaml_extra}")).unwrap()
    }

    #[test]
    fn the_site_zone_is_declared_or_set_on_the_page_or_the_job_is_refused() {
        let declared = adapter("settings: {timeZone: America/New_York}\n");
        assert_eq!(site_time_zone(&declared, Some("Europe/Paris")).unwrap(), chrono_tz::America::New_York);
        let control = adapter("selectors: {timeZoneInput: '#zone'}\n");
        assert_eq!(site_time_zone(&control, Some("Europe/Paris")).unwrap(), chrono_tz::Europe::Paris);
        assert_eq!(site_time_zone(&control, None).unwrap(), chrono_tz::UTC);
        let both = adapter("selectors: {timeZoneInput: '#zone'}\nsettings: {timeZone: Asia/Tokyo}\n");
        assert_eq!(site_time_zone(&both, Some("Europe/Paris")).unwrap(), chrono_tz::Asia::Tokyo);
        let neither = adapter("selectors: {timeZoneInput: ' '}\n");
        let message = site_time_zone(&neither, Some("Europe/Paris")).unwrap_err().to_string();
        assert!(message.contains("selectors.timeZoneInput") && message.contains("settings.timeZone"), "{message}");
        assert!(site_time_zone(&control, Some("Mars/Base")).unwrap_err().to_string().contains("Mars/Base"));
    }

    #[test]
    fn a_failed_send_is_retried_only_when_nothing_can_have_gone_out() {
        let limited =
            || BrowserError::RateLimited { site: "s".into(), detail: "HTTP 429".into(), retry_after_ms: None };
        let timeout = || BrowserError::Timeout { what: "waitFor .dm-sent".into(), ms: 5000 };
        // Refused by the site, before or after the click: sent again after the back-off.
        assert_eq!(after_failed_send(&limited(), true, false), Progress::Pending);
        assert_eq!(after_failed_send(&limited(), false, true), Progress::Pending);
        // Failed before the message was submitted: nothing reached the site.
        assert_eq!(after_failed_send(&timeout(), false, false), Progress::Pending);
        // Submitted, then no confirmation: perhaps delivered.
        assert_eq!(after_failed_send(&timeout(), true, true), Progress::Sending);
        assert_eq!(after_failed_send(&timeout(), true, false), Progress::Uncertain);
        assert_eq!(after_failed_send(&BrowserError::Cancelled, true, false), Progress::Uncertain);
    }

    #[test]
    fn a_send_dm_whose_outcome_is_unknown_fails_send_uncertain_and_is_never_retried() {
        let data = |sent: Vec<String>, uncertain: Vec<String>| json!({"sentRecipients": sent, "uncertainRecipients": uncertain});
        let timeout = || BrowserError::Timeout { what: "waitFor .dm-sent".into(), ms: 5000 };
        // Pressed, not confirmed, nobody can ask the site (also: cut by a cancel).
        for cut in [timeout(), BrowserError::Cancelled] {
            let out = send_dm_outcome("s", "ann", Some(Progress::Uncertain), Err(cut), false, data);
            let error = out.result.unwrap_err();
            assert_eq!(error.code, ErrorCode::SendUncertain);
            assert!(!error.code.is_retryable(), "a retry could message ann twice");
            let message = error.message.unwrap_or_default();
            assert!(message.contains("\"ann\"") && message.contains("selectors.sentMessage"), "{message}");
            assert_eq!(out.error_data, Some(json!({"sentRecipients": [], "uncertainRecipients": ["ann"]})));
        }
        // A crash mid-send found by the redelivery (the checkpoint said `sending`), or a check
        // that failed: unknown too.
        let out = send_dm_outcome("s", "ann", Some(Progress::Sending), Ok(()), true, data);
        let error = out.result.unwrap_err();
        assert_eq!(error.code, ErrorCode::SendUncertain);
        assert!(error.message.unwrap_or_default().contains("cut during the send"));
        assert_eq!(out.error_data.unwrap()["uncertainRecipients"], json!(["ann"]));
        // The check found it after the send failed: a success, sent once.
        let out = send_dm_outcome("s", "ann", Some(Progress::Sent), Ok(()), true, data);
        assert_eq!(out.result.unwrap(), json!({"sentRecipients": ["ann"], "uncertainRecipients": []}));
        // Refused by the site, or failed before the submit: its own error, retried as before.
        let limited =
            BrowserError::RateLimited { site: "s".into(), detail: "HTTP 429".into(), retry_after_ms: Some(5) };
        let out = send_dm_outcome("s", "ann", Some(Progress::Pending), Err(limited), false, data);
        let error = out.result.unwrap_err();
        assert_eq!((error.code, error.retry_after_ms), (ErrorCode::RateLimited, Some(5)));
        assert_eq!(out.error_data, None);
        let out = send_dm_outcome("s", "ann", Some(Progress::Pending), Err(timeout()), true, data);
        assert!(out.result.unwrap_err().code.is_retryable());
        // A dry run has no checkpoint and sends nothing.
        let out = send_dm_outcome("s", "ann", None, Ok(()), false, data);
        assert_eq!(out.result.unwrap()["sentRecipients"], json!([]));
    }

    #[test]
    fn repeated_names_are_numbered_past_names_already_taken() {
        let mut names = TakenNames::default();
        assert_eq!(names.claim("a (2).png"), "a (2).png");
        assert_eq!(names.claim("a.png"), "a.png");
        assert_eq!(names.claim("A.PNG"), "A (3).PNG");
        let many: Vec<String> = (0..2_000).map(|_| names.claim("a.png")).collect();
        assert_eq!(many.last().map(String::as_str), Some("a (2003).png"));
        assert_eq!(many.iter().collect::<std::collections::HashSet<_>>().len(), 2_000);
        assert_eq!(names.claim("README"), "README");
        assert_eq!(names.claim("readme"), "readme (2)");
    }

    #[test]
    fn media_keep_their_names_and_a_repeated_name_is_numbered() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        for folder in ["a", "b"] {
            std::fs::create_dir_all(elsewhere.path().join(folder)).unwrap();
            std::fs::write(elsewhere.path().join(folder).join("cover.jpg"), folder).unwrap();
        }
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let a = elsewhere.path().join("a/cover.jpg").display().to_string();
        let b = elsewhere.path().join("b/cover.jpg").display().to_string();
        let params = json!({
            "media": [{"name": "teaser.png", "base64": b64(b"one")}, {"name": "Teaser.png", "base64": b64(b"two")},
                      {"name": "clips/intro.mp4", "base64": b64(b"three")}, {"base64": b64(b"four")}],
            "mediaPaths": [a, b]
        });
        let uploads = Uploads::none().allow(elsewhere.path(), "the uploads folder");
        let media = materialize_media(params.as_object().unwrap(), dir.path(), &uploads).unwrap();
        let names: Vec<&str> = media.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["teaser.png", "Teaser (2).png", "intro.mp4", "media-4.bin", "cover.jpg", "cover (2).jpg"]);
        for m in &media {
            // The file the browser uploads carries the name the site should see.
            assert_eq!(m.path.file_name().unwrap().to_string_lossy(), m.name);
        }
        assert_eq!(std::fs::read(&media[1].path).unwrap(), b"two");
        assert_eq!(media[4].path.display().to_string(), a, "a file already on the machine is used where it is");
        assert_eq!(std::fs::read(&media[5].path).unwrap(), b"b");
        assert!(media[5].path.starts_with(dir.path()));

        for (bad, needle) in [
            (json!({"media": [{"name": "..", "base64": ""}]}), "media[0].name \"..\" is not a file name"),
            (json!({"media": [{"name": "a\u{0}b", "base64": ""}]}), "is not a file name"),
            (json!({"media": [{"name": 5, "base64": ""}]}), "media[0].name must be a string"),
            (json!({"media": [{"name": "a.png"}]}), "media[0] needs `base64`"),
            (json!({"media": {"name": "a.png"}}), "`params.media` must be a list"),
            (json!({"media": ["teaser.png"]}), "media[0] must be an object such as {\"name\": \"teaser.png\""),
            (json!({"mediaPaths": [3]}), "mediaPaths[0] must be a file path string"),
            (
                json!({"mediaPaths": ["a/missing.png"]}),
                "mediaPaths[0]: no file \"a/missing.png\" in the uploads folder",
            ),
            // Outside the uploads folder: refused, and whether the file exists is not said.
            (json!({"mediaPaths": ["/etc/passwd"]}), "mediaPaths[0]: upload refused: \"/etc/passwd\" is not inside"),
            (json!({"mediaPaths": ["/no/such/file.png"]}), "mediaPaths[0]: upload refused"),
            (json!({"mediaPaths": ["../a/cover.jpg"]}), "contains `..`"),
        ] {
            let message = materialize_media(bad.as_object().unwrap(), dir.path(), &uploads).unwrap_err().to_string();
            assert!(message.contains(needle), "{bad}: {message}");
        }
        // Without an uploads folder no file of the machine is taken.
        let none = materialize_media(json!({"mediaPaths": [a]}).as_object().unwrap(), dir.path(), &Uploads::none());
        assert_eq!(none.unwrap_err().code().as_str(), "POLICY_VIOLATION");
    }

    #[test]
    fn local_times_resolve_in_their_zone_and_dst_gaps_are_refused() {
        let t = resolve_time("2025-07-01T18:30", Some("Europe/Paris")).unwrap();
        assert_eq!(t.to_rfc3339(), "2025-07-01T16:30:00+00:00");
        assert!(resolve_time("2025-03-30T02:30", Some("Europe/Paris")).is_err());
        let overlap = resolve_time("2025-10-26T02:30", Some("Europe/Paris")).unwrap();
        assert_eq!(overlap.to_rfc3339(), "2025-10-26T00:30:00+00:00");
        assert!(resolve_time("2025-07-01T18:30", None).is_err());
        assert_eq!(resolve_time("2025-07-01T18:30:00-04:00", None).unwrap().to_rfc3339(), "2025-07-01T22:30:00+00:00");
    }
}
