//! `AgentService`: the agent's public face for the CLI and the tray app.
//!
//! It owns the agent's observable state ([`AgentSnapshot`]), its event stream
//! ([`AgentEvent`]), login/logout, and starting and stopping the connection loop. It must
//! never depend on a UI toolkit, never block an async thread on the keychain (keychain calls
//! go through `spawn_blocking`), and never put a secret in a snapshot or event.

use crate::connection;
use crate::credentials::{CredentialStore, Credentials, DeviceKey};
use crate::error::AgentError;
use crate::hub_client::HubClient;
use crate::hub_url::HubUrl;
use crate::keychain::{Keychain, KeychainChoice};
use crate::secret::Secret;
use crate::state_file::StateFile;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const DEFAULT_HB_INTERVAL: Duration = Duration::from_secs(25);
pub const DEFAULT_PROFILE: &str = "default";
/// How many finished or running jobs the snapshot remembers.
pub const RECENT_JOBS: usize = 20;
const EVENT_BUFFER: usize = 256;
/// How long `shutdown` waits for the loop to report cancelled jobs and close the socket.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Keychain entry name; several profiles let one machine hold several agents.
    pub profile: String,
    pub keychain: KeychainChoice,
    /// `state.json` and `logs/` live here.
    pub data_dir: PathBuf,
    /// Our heartbeat interval; the hub's `hbIntervalMs` wins when it is smaller.
    pub hb_interval: Duration,
    /// Jobs run at once.
    pub slots: u32,
}

impl AgentSettings {
    /// Defaults for everything but the data directory.
    pub fn new(data_dir: PathBuf) -> AgentSettings {
        AgentSettings {
            profile: DEFAULT_PROFILE.to_owned(),
            keychain: KeychainChoice::Auto,
            data_dir,
            hb_interval: DEFAULT_HB_INTERVAL,
            slots: 1,
        }
    }
}

/// The per-user data directory (`~/.local/share/edge-agent` on Linux, `~/Library/Application
/// Support/dev.edge-agent.edge-agent` on macOS, `%APPDATA%\edge-agent\edge-agent\data` on
/// Windows). `None` when the OS reports no home directory.
pub fn default_data_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("dev", "edge-agent", "edge-agent").map(|dirs| dirs.data_dir().to_path_buf())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionState {
    Offline,
    Connecting,
    Online,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobRunStatus {
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    pub id: String,
    pub job_type: String,
    pub status: JobRunStatus,
    /// RFC 3339 UTC.
    pub started_at: String,
    pub finished_at: Option<String>,
    pub error_code: Option<String>,
    pub message: Option<String>,
}

/// Everything the tray window or `edge-agent status` shows. No secrets by construction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentSnapshot {
    pub logged_in: bool,
    pub hub_url: Option<String>,
    pub agent_id: Option<String>,
    pub creator_id: Option<String>,
    pub connection: ConnectionState,
    pub paused: bool,
    /// Jobs accepted and not yet finished (running or waiting for a slot).
    pub busy: u32,
    pub last_error: Option<String>,
    pub keychain_backend: Option<String>,
    /// Newest first, at most [`RECENT_JOBS`].
    pub recent_jobs: Vec<JobRecord>,
    /// SHA-256 of the trusted bundle root (TUF `root.json`) received at enrollment, for the
    /// person to compare with the operator's `edge-hub bundle root fingerprint`.
    #[serde(default)]
    pub root_fingerprint: Option<String>,
    /// The browser runtime: circuit breaker, volatile session, sites needing a login.
    /// `None` until the runtime started (first browser job or login).
    #[serde(default)]
    pub browser: Option<edge_browser::BrowserStatus>,
}

impl AgentSnapshot {
    fn empty() -> AgentSnapshot {
        AgentSnapshot {
            logged_in: false,
            hub_url: None,
            agent_id: None,
            creator_id: None,
            connection: ConnectionState::Offline,
            paused: false,
            busy: 0,
            last_error: None,
            keychain_backend: None,
            recent_jobs: Vec::new(),
            root_fingerprint: None,
            browser: None,
        }
    }
}

/// What happened, for the tray's notifications and the CLI's log. JSON:
/// `{"type":"jobFailed","id":"...","jobType":"http_request","code":"NETWORK","message":"..."}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum AgentEvent {
    StateChanged {
        snapshot: AgentSnapshot,
    },
    Connected {
        hub_url: String,
    },
    /// `retry_in_ms` is `None` when the agent will not reconnect by itself.
    Disconnected {
        reason: String,
        retry_in_ms: Option<u64>,
    },
    JobStarted {
        id: String,
        job_type: String,
    },
    JobProgress {
        id: String,
        pct: Option<u8>,
        message: Option<String>,
    },
    JobFinished {
        id: String,
        job_type: String,
    },
    JobFailed {
        id: String,
        job_type: String,
        code: String,
        message: String,
    },
    /// The hub refused our credentials (revoked agent, wrong key) or there are none: the
    /// agent stays offline until someone logs in.
    LoginRequired {
        reason: String,
    },
    Paused,
    Resumed,
    /// The browser circuit breaker opened (the site kept rate-limiting): browser jobs wait
    /// until `until_ms` (Unix ms); the hub was told with `circuit_breaker`.
    BrowserPaused {
        reason: String,
        site: String,
        until_ms: i64,
    },
    /// The cool-down ended; browser jobs run again.
    BrowserResumed,
    /// No keychain key for browser sessions: site logins are kept in memory only.
    BrowserSessionVolatile {
        reason: String,
    },
    /// A site shows its logged-out page: `edge-agent browser login --site <site>` (or the
    /// tray's login button), then retry the job.
    BrowserLoginRequired {
        site: String,
    },
    /// A site login was saved.
    BrowserLoggedIn {
        site: String,
    },
}

/// What `enroll` reports; no secrets.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginOutcome {
    pub agent_id: String,
    pub creator_id: String,
    pub hub_url: String,
    pub keychain_backend: String,
}

struct RunningLoop {
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// State shared between the service handle and the connection loop.
pub(crate) struct Inner {
    pub settings: AgentSettings,
    pub store: Arc<dyn CredentialStore>,
    events: broadcast::Sender<AgentEvent>,
    snapshot: Mutex<AgentSnapshot>,
    pub paused: watch::Sender<bool>,
    running: Mutex<Option<RunningLoop>>,
    /// Only a process running the loop writes `state.json`; `edge-agent status` must not.
    writes_state_file: AtomicBool,
    /// The running loop's outgoing frames (results channel), for frames not tied to a job.
    frames: Mutex<Option<tokio::sync::mpsc::UnboundedSender<edge_protocol::AgentFrame>>>,
    /// The browser runtime, started on first use.
    browser: Mutex<Option<edge_browser::BrowserRuntime>>,
}

impl Inner {
    /// Queues a frame for the hub (sent by the current or next session).
    pub fn send_frame(&self, frame: edge_protocol::AgentFrame) {
        if let Some(frames) = self.frames.lock().ok().and_then(|f| f.clone()) {
            let _ = frames.send(frame);
        }
    }

    pub(crate) fn set_frames(&self, frames: tokio::sync::mpsc::UnboundedSender<edge_protocol::AgentFrame>) {
        if let Ok(mut slot) = self.frames.lock() {
            *slot = Some(frames);
        }
    }

    /// The browser runtime of this profile, started on first use.
    pub(crate) fn browser(self: &Arc<Self>) -> edge_browser::BrowserRuntime {
        let mut slot = self.browser.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(runtime) = slot.as_ref() {
            return runtime.clone();
        }
        let runtime = crate::browser::new_runtime(self);
        *slot = Some(runtime.clone());
        drop(slot);
        self.refresh_browser_status();
        runtime
    }

    pub(crate) fn refresh_browser_status(&self) {
        let status = self.browser_status();
        if status.is_some() {
            self.update(|s| s.browser = status);
        }
    }

    /// The browser runtime's state, `None` before the runtime started.
    pub(crate) fn browser_status(&self) -> Option<edge_browser::BrowserStatus> {
        self.browser.lock().ok().and_then(|b| b.as_ref().map(|r| r.status()))
    }

    pub fn emit(&self, event: AgentEvent) {
        // No subscriber is fine: the CLI may not listen.
        let _ = self.events.send(event);
    }

    pub fn snapshot(&self) -> AgentSnapshot {
        self.snapshot.lock().map(|s| s.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Applies `change`, then tells subscribers and `state.json`.
    pub fn update(&self, change: impl FnOnce(&mut AgentSnapshot)) {
        let snapshot = {
            let mut guard = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
            change(&mut guard);
            guard.clone()
        };
        self.persist(&snapshot, true);
        self.emit(AgentEvent::StateChanged { snapshot });
    }

    fn persist(&self, snapshot: &AgentSnapshot, running: bool) {
        if !self.writes_state_file.load(Ordering::Relaxed) {
            return;
        }
        let file = StateFile {
            pid: std::process::id(),
            running,
            updated_at: crate::now_rfc3339(),
            snapshot: snapshot.clone(),
        };
        if let Err(e) = file.write(&self.settings.data_dir) {
            tracing::warn!(error = %e, "could not write state.json");
        }
    }

    pub fn set_credentials(&self, credentials: Option<&Credentials>, backend: Option<String>) {
        self.update(|s| {
            s.logged_in = credentials.is_some();
            s.hub_url = credentials.map(|c| c.hub_url.clone());
            s.agent_id = credentials.map(|c| c.agent_id.clone());
            s.creator_id = credentials.map(|c| c.creator_id.clone());
            s.root_fingerprint =
                credentials.and_then(|_| crate::bundles::trust_store(&self.settings.data_dir).fingerprint());
            if backend.is_some() {
                s.keychain_backend = backend;
            }
        });
    }

    pub async fn load_credentials(&self) -> Result<Option<Credentials>, AgentError> {
        let store = Arc::clone(&self.store);
        let (backend, credentials) = tokio::task::spawn_blocking(move || -> Result<_, AgentError> {
            let backend = store.backend_name()?;
            Ok((backend, store.load()?))
        })
        .await
        .map_err(|e| AgentError::Internal(format!("keychain task failed: {e}")))??;
        self.set_credentials(credentials.as_ref(), Some(backend));
        Ok(credentials)
    }
}

/// Cheap to clone; all clones drive the same agent.
#[derive(Clone)]
pub struct AgentService {
    inner: Arc<Inner>,
}

impl AgentService {
    /// A service whose credentials live in the OS keychain chosen by `settings.keychain`.
    /// Touches nothing yet: the keychain is opened by `start`, `login` or `reload_credentials`.
    pub fn new(settings: AgentSettings) -> AgentService {
        let store = Arc::new(Keychain::new(settings.keychain, settings.profile.clone()));
        AgentService::with_store(settings, store)
    }

    /// A service with another credential store (tests, embedders with their own vault).
    pub fn with_store(settings: AgentSettings, store: Arc<dyn CredentialStore>) -> AgentService {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (paused, _) = watch::channel(false);
        AgentService {
            inner: Arc::new(Inner {
                settings,
                store,
                events,
                snapshot: Mutex::new(AgentSnapshot::empty()),
                paused,
                running: Mutex::new(None),
                writes_state_file: AtomicBool::new(false),
                frames: Mutex::new(None),
                browser: Mutex::new(None),
            }),
        }
    }

    pub fn settings(&self) -> &AgentSettings {
        &self.inner.settings
    }

    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.inner.events.subscribe()
    }

    pub fn snapshot(&self) -> AgentSnapshot {
        self.inner.snapshot()
    }

    /// Reads the keychain and refreshes the login fields of the snapshot.
    pub async fn reload_credentials(&self) -> Result<AgentSnapshot, AgentError> {
        self.inner.load_credentials().await?;
        Ok(self.snapshot())
    }

    /// Enrolls with the hub and stores the credentials, without connecting. A running loop
    /// is stopped first, since its credentials are being replaced.
    pub async fn enroll(
        &self,
        hub_url: &str,
        enrollment_token: &str,
        name: Option<String>,
    ) -> Result<LoginOutcome, AgentError> {
        let hub = HubUrl::parse(hub_url)?;
        let enrollment_token = Secret::new(enrollment_token.trim().to_owned());
        let device_key = DeviceKey::generate()?;
        let name = name.or_else(|| gethostname::gethostname().into_string().ok());
        let client = HubClient::new()?;
        let enrolled = client.enroll(&hub, &enrollment_token, &device_key, name).await?;
        // The bundle trust root comes over the same channel as the enrollment itself.
        match client.bundle_root(&hub).await {
            Ok(Some(root)) => match crate::bundles::trust_store(&self.inner.settings.data_dir).install_root(&root) {
                Ok(fingerprint) => tracing::info!(%fingerprint, "bundle root installed"),
                Err(e) => tracing::warn!(error = %e, "the hub's bundle root.json was refused; bundle jobs will fail"),
            },
            Ok(None) => {
                tracing::warn!("the hub has no bundle repository yet; log in again after it has one to run bundles")
            }
            Err(e) => tracing::warn!(error = %e, "could not fetch the hub's bundle root.json"),
        }
        let credentials = Credentials {
            hub_url: hub.to_string(),
            agent_id: enrolled.agent_id,
            creator_id: enrolled.creator_id,
            device_key,
        };
        self.stop_loop().await;
        let store = Arc::clone(&self.inner.store);
        let to_store = credentials.clone();
        let backend = tokio::task::spawn_blocking(move || -> Result<String, AgentError> {
            store.save(&to_store)?;
            store.backend_name()
        })
        .await
        .map_err(|e| AgentError::Internal(format!("keychain task failed: {e}")))??;
        self.inner.set_credentials(Some(&credentials), Some(backend.clone()));
        self.inner.update(|s| s.last_error = None);
        tracing::info!(agent_id = %credentials.agent_id, creator_id = %credentials.creator_id, keychain = %backend, "enrolled");
        Ok(LoginOutcome {
            agent_id: credentials.agent_id,
            creator_id: credentials.creator_id,
            hub_url: credentials.hub_url,
            keychain_backend: backend,
        })
    }

    /// Enroll, store, start (the tray's login button). The device name is the host name.
    pub async fn login(&self, hub_url: &str, enrollment_token: &str) -> Result<LoginOutcome, AgentError> {
        let outcome = self.enroll(hub_url, enrollment_token, None).await?;
        self.start()?;
        Ok(outcome)
    }

    /// Spawns the connection loop on the current tokio runtime. Idempotent: a loop that is
    /// already running is left alone. Without credentials the loop emits `LoginRequired`
    /// and ends.
    pub fn start(&self) -> Result<(), AgentError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| AgentError::NoRuntime("AgentService::start"))?;
        let mut running =
            self.inner.running.lock().map_err(|_| AgentError::Internal("service lock poisoned".into()))?;
        if running.as_ref().is_some_and(|r| !r.handle.is_finished()) {
            return Ok(());
        }
        self.inner.writes_state_file.store(true, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        let handle = runtime.spawn(connection::run(Arc::clone(&self.inner), cancel.clone()));
        *running = Some(RunningLoop { cancel, handle });
        Ok(())
    }

    /// Opens a browser window on the site's login page and saves the session (encrypted)
    /// once the site shows its logged-in marker. `site` is an adapter file or the name of a
    /// site an earlier job used. `headful: false` is for scripted logins and tests.
    pub async fn browser_login(
        &self,
        site: &str,
        headful: bool,
        timeout: Duration,
    ) -> Result<edge_browser::runtime::LoginReport, AgentError> {
        let adapter = crate::browser::load_site(&self.inner.settings.data_dir, site).map_err(AgentError::Internal)?;
        let runtime = self.inner.browser();
        runtime.interactive_login(&adapter, headful, timeout).await.map_err(|e| AgentError::Internal(e.to_string()))
    }

    /// The browser runtime's state (starting the runtime if needed; it launches nothing).
    pub fn browser_status(&self) -> edge_browser::BrowserStatus {
        self.inner.browser().status()
    }

    /// Closes the browser circuit breaker by hand (the person resumes from the tray).
    pub fn browser_resume(&self) {
        self.inner.browser().reset_circuit();
    }

    /// Stop taking new jobs (running ones finish); the hub is told via `availability`.
    pub fn pause(&self) {
        self.set_paused(true);
    }

    pub fn resume(&self) {
        self.set_paused(false);
    }

    fn set_paused(&self, paused: bool) {
        let changed = self.inner.paused.send_if_modified(|current| std::mem::replace(current, paused) != paused);
        if changed {
            self.inner.update(|s| s.paused = paused);
            self.inner.emit(if paused { AgentEvent::Paused } else { AgentEvent::Resumed });
        }
    }

    /// Stops the loop and deletes the keychain entry. The hub still knows the agent until
    /// an operator removes it.
    pub async fn logout(&self) -> Result<(), AgentError> {
        self.stop_loop().await;
        let store = Arc::clone(&self.inner.store);
        tokio::task::spawn_blocking(move || store.delete())
            .await
            .map_err(|e| AgentError::Internal(format!("keychain task failed: {e}")))??;
        self.inner.set_credentials(None, None);
        self.inner.update(|s| {
            s.connection = ConnectionState::Offline;
            s.last_error = None;
        });
        Ok(())
    }

    /// Stops the loop: running jobs are cancelled and reported, the socket is closed, and
    /// `state.json` says the agent is no longer running.
    pub async fn shutdown(&self) {
        self.stop_loop().await;
        let browser = self.inner.browser.lock().ok().and_then(|b| b.clone());
        if let Some(browser) = browser {
            browser.shutdown().await;
        }
        let snapshot = self.snapshot();
        self.inner.persist(&snapshot, false);
    }

    async fn stop_loop(&self) {
        let running = self.inner.running.lock().ok().and_then(|mut r| r.take());
        if let Some(RunningLoop { cancel, mut handle }) = running {
            cancel.cancel();
            if tokio::time::timeout(STOP_TIMEOUT, &mut handle).await.is_err() {
                tracing::warn!("the connection loop did not stop in time; aborting it");
                handle.abort();
            }
        }
    }
}
