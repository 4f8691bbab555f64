//! `AgentService`: the agent's public face for the CLI and the tray app, and the room that
//! composes the others.
//!
//! It owns the agent's observable state ([`AgentSnapshot`], [`AgentEvent`], through
//! `crate::state`), login/logout, the person's pause, and the connection loop: it builds
//! the runners from what this machine has, starts the executor beside them and the session
//! on top, and stops them. Later subsystems (egress gate, tunnel, updater) plug in here
//! beside the executor. It must never depend on a UI toolkit, never block an async thread
//! on the keychain (keychain calls go through `spawn_blocking`), and never put a secret in
//! a snapshot or event.

use crate::browser::BrowserHost;
use crate::credentials::{CredentialStore, Credentials, DeviceKey};
use crate::device_login::DeviceLogin;
use crate::egress::EgressGate;
use crate::error::AgentError;
use crate::executor::journal::Journal;
use crate::executor::{Executor, ExecutorConfig};
use crate::hub_client::HubClient;
use crate::hub_url::HubUrl;
use crate::keychain::{Keychain, KeychainChoice};
use crate::local_settings::LocalSettings;
use crate::outbox::Outbox;
use crate::pause::{PauseFile, PauseLength, PauseState};
use crate::runners::{self, Resources};
use crate::secret::Secret;
use crate::session::{self, SessionConfig};
use crate::state::StateHandle;
use edge_protocol::{capability, JobSpec};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::state::{AgentEvent, AgentSnapshot, ConnectionState, JobRecord, JobRunStatus, RECENT_JOBS};

pub const DEFAULT_HB_INTERVAL: Duration = Duration::from_secs(25);
pub const DEFAULT_PROFILE: &str = "default";

/// How often the snapshot's quiet hours follow the clock: the start or end shows at most
/// this late (the executor checks the clock itself at every job).
const QUIET_HOURS_CHECK: Duration = Duration::from_secs(20);

/// The reason a job cancelled from the tray or the CLI reports to the hub.
pub const CANCELLED_HERE: &str = "cancelled by the person at the agent's computer";

/// The longest a pause timer sleeps before it looks at the wall clock again: a machine
/// that slept through the end of a pause resumes within this of waking up.
const PAUSE_CHECK: Duration = Duration::from_secs(60);

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
    /// Destinations the person allows beyond the public internet for this run
    /// (`edge-agent run --allow-egress`), on top of `allowEgress` in settings.json.
    pub allow_egress: Vec<String>,
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
            allow_egress: Vec::new(),
        }
    }
}

/// The per-user data directory (`~/.local/share/edge-agent` on Linux, `~/Library/Application
/// Support/dev.edge-agent.edge-agent` on macOS, `%APPDATA%\edge-agent\edge-agent\data` on
/// Windows). `None` when the OS reports no home directory.
pub fn default_data_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("dev", "edge-agent", "edge-agent").map(|dirs| dirs.data_dir().to_path_buf())
}

fn host_name() -> Option<String> {
    gethostname::gethostname().into_string().ok()
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

/// What every clone of the service shares.
struct Inner {
    settings: AgentSettings,
    store: Arc<dyn CredentialStore>,
    state: StateHandle,
    /// The person's pause; the executor refuses new jobs and the session tells the hub.
    paused: watch::Sender<bool>,
    /// Where the pause and its end are kept across restarts.
    pause_file: PauseFile,
    /// Ends a pause with an end; replaced by every new pause.
    pause_timer: Mutex<Option<JoinHandle<()>>>,
    /// The runtime `start` ran on: a pause taken from a thread outside it (the tray's menu,
    /// on the GUI thread) arms its timer there.
    runtime: Mutex<Option<tokio::runtime::Handle>>,
    /// The running loop's executor, for the person's cancel; `None` between loops.
    executor: Mutex<Option<Executor>>,
    outbox: Outbox,
    browser: BrowserHost,
    /// The person's egress gate, read from settings.json and `allow_egress` when the
    /// service is made (a bad allowance is the error every start reports).
    egress: Result<EgressGate, String>,
    /// The connection loop, when one runs. Only the service starts and stops it.
    running: Mutex<Option<RunningLoop>>,
    /// The person saved settings.json (the tray): the loop looks at the quiet hours at once.
    settings_changed: tokio::sync::Notify,
    /// Automatic updates, when the embedding program can restart into a new binary
    /// (`edge-agent run`); off otherwise.
    updates: Mutex<Option<crate::updater::AutoUpdate>>,
}

impl Inner {
    /// Keeps `pause` in `pause.json`, then applies it: the executor and the hub follow the
    /// watch, the snapshot shows it, subscribers hear `Paused`/`Resumed` when it flips.
    fn apply_pause(&self, pause: PauseState) {
        if let Err(e) = self.pause_file.save(&pause) {
            tracing::warn!(error = %e, "cannot keep the pause in pause.json; it holds until the agent stops");
        }
        let paused = pause.paused;
        let until = if paused { pause.until_rfc3339() } else { None };
        let changed = self.paused.send_if_modified(|current| std::mem::replace(current, paused) != paused);
        if changed || self.state.snapshot().paused_until != until {
            self.state.update(|s| {
                s.paused = paused;
                s.paused_until = until;
            });
        }
        if changed {
            self.state.emit(if paused { AgentEvent::Paused } else { AgentEvent::Resumed });
        }
    }

    /// Arms the timer that ends the kept pause at its end (none for a pause until resumed,
    /// or outside a tokio runtime: `start` arms it then).
    fn arm_pause_timer(self: &Arc<Self>) {
        let stored = || self.runtime.lock().ok().and_then(|r| r.clone());
        let Some(runtime) = tokio::runtime::Handle::try_current().ok().or_else(stored) else { return };
        let Ok(mut timer) = self.pause_timer.lock() else { return };
        if let Some(old) = timer.take() {
            old.abort();
        }
        let pause = self.pause_file.load();
        let Some(until) = pause.until_ms.filter(|_| pause.paused) else { return };
        let weak = Arc::downgrade(self);
        *timer = Some(runtime.spawn(async move {
            // By the wall clock, a minute at most at a time: a monotonic sleep does not count
            // the time a suspended machine slept.
            loop {
                let left = crate::pause::remaining(until, crate::pause::now_ms());
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(left.min(PAUSE_CHECK)).await;
            }
            let Some(inner) = weak.upgrade() else { return };
            // Only the pause this timer was armed for: a newer one has its own timer.
            let kept = inner.pause_file.load();
            if kept.paused && kept.until_ms == Some(until) {
                tracing::info!("the pause ended; taking jobs again");
                inner.apply_pause(PauseState::default());
            }
        }));
    }

    fn set_credentials(&self, credentials: Option<&Credentials>, backend: Option<String>) {
        self.state.update(|s| {
            s.logged_in = credentials.is_some();
            s.hub_url = credentials.map(|c| c.hub_url.clone());
            s.agent_id = credentials.map(|c| c.agent_id.clone());
            s.creator_id = credentials.map(|c| c.creator_id.clone());
            s.root_fingerprint =
                credentials.and_then(|_| crate::bundles::trust_store(&self.settings.data_dir).fingerprint());
            // Read from the trust stores on disk, so a restart shows at once what expires.
            s.expiries = match credentials {
                Some(_) => crate::expiry::read(&self.settings.data_dir, chrono::Utc::now()),
                None => Vec::new(),
            };
            if backend.is_some() {
                s.keychain_backend = backend;
            }
        });
    }

    /// Brings the snapshot's `quiet_until` in line with settings.json and the clock; whether
    /// quiet hours hold now.
    fn refresh_quiet_hours(&self) -> bool {
        let until =
            crate::limits::QuietHoursGate::new(&self.settings.data_dir).until(crate::limits::local_minute_now());
        let quiet = until.is_some();
        if self.state.snapshot().quiet_until != until {
            self.state.update(|s| s.quiet_until = until);
        }
        quiet
    }

    async fn load_credentials(&self) -> Result<Option<Credentials>, AgentError> {
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

/// One connection loop: the credentials, the runners this agent can offer, the executor,
/// then sessions until `cancel` or until the hub refuses the agent.
async fn run_loop(inner: Arc<Inner>, cancel: CancellationToken) {
    let state = &inner.state;
    state.update(|s| {
        s.connection = ConnectionState::Connecting;
        s.last_error = None;
    });
    let credentials = match inner.load_credentials().await {
        Ok(Some(credentials)) => credentials,
        Ok(None) => return session::stop_for_login(state, "not logged in".into()),
        Err(e) => {
            let reason = e.to_string();
            state.update(|s| {
                s.connection = ConnectionState::Offline;
                s.last_error = Some(reason.clone());
            });
            state.emit(AgentEvent::Disconnected { reason, retry_in_ms: None });
            return;
        }
    };
    let hub = match HubClient::new() {
        Ok(hub) => hub,
        Err(e) => return session::stop_with_error(state, e.to_string()),
    };
    let egress = match &inner.egress {
        Ok(gate) => gate.clone(),
        Err(e) => return session::stop_with_error(state, e.clone()),
    };
    let hub_url = match HubUrl::parse(&credentials.hub_url) {
        Ok(url) => url,
        Err(e) => return session::stop_with_error(state, e.to_string()),
    };
    let data_dir = inner.settings.data_dir.clone();
    let (frames, outbox) = inner.outbox.connect();
    let browser = inner.browser.runtime();
    let browser = browser.available().then_some(browser);
    if browser.is_none() {
        tracing::warn!("no Chrome, Chromium or Edge found: browser jobs are not announced to the hub");
    }
    // One access token for the HTTP calls beside the WebSocket (tunnel, bundles, run
    // reports): fetched once and refreshed once, not by each of them.
    let tokens = crate::hub_client::TokenCache::new(hub.clone(), credentials.clone());
    // The tunnel keeps its own connection; it stays down until the person grants it.
    tokio::spawn(crate::tunnel::run(
        tokens.clone(),
        hub_url.clone(),
        crate::tunnel::TunnelContext::new(
            egress.clone(),
            data_dir.clone(),
            inner.paused.subscribe(),
            Some(state.clone()),
        ),
        cancel.child_token(),
    ));
    let updates = inner.updates.lock().ok().and_then(|u| u.clone());
    if let Some(options) = updates {
        match crate::bundles::download::client() {
            Ok(http) => {
                let ctx = crate::updater::UpdaterContext {
                    data_dir: data_dir.clone(),
                    hub_base: hub_url.http_endpoint("").trim_end_matches('/').to_owned(),
                    http,
                    auth: crate::bundles::HubAuth::Agent(Box::new(tokens.clone())),
                    agent_id: credentials.agent_id.clone(),
                    channel: options.channel.clone(),
                };
                tokio::spawn(crate::updater::run(ctx, options, state.clone(), cancel.child_token()));
            }
            Err(e) => tracing::warn!(error = %e, "automatic updates are off"),
        }
    }
    let bundles = crate::bundles::start(&data_dir, &tokens, &hub_url, &cancel)
        .map(|bundles| bundles.with_browser(browser.clone()));
    // The hub's signing roots: their ends in the snapshot, looked at again now and then.
    tokio::spawn(crate::expiry::watch(state.clone(), data_dir.clone(), bundles.clone(), cancel.child_token()));
    let consent = crate::consent::Consent::new(&data_dir);
    let resources = Resources { consent, egress, bundles, browser: browser.clone().map(|b| (b, data_dir.clone())) };
    let runners = runners::standard(&resources);
    // Only what the person granted: the hub assigns nothing else (a fresh install, nothing).
    let mut capabilities = runners.announced();
    if capabilities.is_empty() {
        tracing::warn!("no capability is granted: the hub will assign this agent nothing (edge-agent consent show)");
    }
    capabilities.extend(
        [capability::JOB_CANCEL, capability::PAUSE, capability::JOB_LOG, capability::JOB_PROGRESS].map(str::to_owned),
    );
    let host = inner.browser.clone();
    // The sites needing a login live on disk, where a login made by another process
    // (`edge-agent browser login` beside a running agent) clears them: look again now and
    // then, so the snapshot (tray, state.json) follows without waiting for a job.
    tokio::spawn({
        let host = host.clone();
        let cancel = cancel.clone();
        // Once a heartbeat interval: as often as the agent talks to the hub anyway.
        let every = inner.settings.hb_interval;
        async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(every) => host.refresh_status(),
                }
            }
        }
    });
    // What the hub is told: paused by the person, or in quiet hours (so the hub offers no job
    // then, rather than one the executor would refuse). Quiet hours show in the snapshot while
    // they hold; their start and end come with no event, so look at the clock now and then.
    // Set before the session starts, so that its `hello` already says so.
    let (hub_paused, hub_paused_rx) = watch::channel(*inner.paused.borrow() || inner.refresh_quiet_hours());
    tokio::spawn({
        let inner = Arc::clone(&inner);
        let cancel = cancel.clone();
        async move {
            let mut person = inner.paused.subscribe();
            loop {
                let quiet = inner.refresh_quiet_hours();
                let paused = *person.borrow_and_update() || quiet;
                hub_paused.send_if_modified(|current| std::mem::replace(current, paused) != paused);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(QUIET_HOURS_CHECK) => {}
                    _ = inner.settings_changed.notified() => {}
                    changed = person.changed() => if changed.is_err() { return },
                }
            }
        }
    });
    let executor = Executor::spawn(ExecutorConfig {
        screenshots: Some(crate::screenshots::Screenshots::new(&data_dir)),
        state: state.clone(),
        runners,
        slots: inner.settings.slots,
        frames,
        paused: inner.paused.subscribe(),
        journal: Journal::new(&data_dir),
        reports_to: Some(tokens.clone()),
        after_job: Some(Arc::new({
            let (state, data_dir) = (state.clone(), data_dir.clone());
            move || {
                host.refresh_status();
                // A bundle job refreshed the bundle metadata, and may have stored a new root.
                crate::expiry::publish(&state, &data_dir);
            }
        })),
        jobs_per_hour: Some(crate::limits::JobsPerHour::new(&data_dir)),
        quiet_hours: Some(crate::limits::QuietHoursGate::new(&data_dir)),
        cancel: cancel.clone(),
    });
    if let Some(browser) = &browser {
        // A broadcast or send_dm the previous process was killed in: resume it now and report
        // it under its job id (the hub still holds it as running under this agent's lease).
        for value in browser.unfinished_jobs() {
            match serde_json::from_value::<JobSpec>(value) {
                Ok(job) => {
                    tracing::info!(job_id = %job.job_id, "resuming an interrupted message job from its checkpoint");
                    executor.resume(job);
                }
                Err(e) => tracing::warn!(error = %e, "unreadable job in a broadcast checkpoint"),
            }
        }
    }
    if let Ok(mut current) = inner.executor.lock() {
        *current = Some(executor.clone());
    }
    let config = SessionConfig {
        state: state.clone(),
        credentials,
        hub_url,
        hub,
        executor,
        outbox,
        capabilities,
        slots: inner.settings.slots,
        hb_interval: inner.settings.hb_interval,
        paused: hub_paused_rx,
    };
    session::run(config, cancel).await;
    // The executor ends once every handle is gone: this one must not keep it alive.
    if let Ok(mut current) = inner.executor.lock() {
        *current = None;
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
        // A pause kept by an earlier run holds until its end (or until resumed).
        let pause_file = PauseFile::new(&settings.data_dir);
        let kept = pause_file.load();
        let holds = kept.holds(crate::pause::now_ms());
        let (paused, _) = watch::channel(holds);
        let state = StateHandle::new(settings.data_dir.clone());
        if holds {
            state.update(|s| {
                s.paused = true;
                s.paused_until = kept.until_rfc3339();
            });
        }
        let egress = LocalSettings::load(&settings.data_dir)
            .and_then(|local| EgressGate::from_settings(&local, &settings.allow_egress, &settings.data_dir))
            .map_err(|e| e.to_string());
        let outbox = Outbox::default();
        let browser = BrowserHost::new(
            settings.data_dir.clone(),
            settings.profile.clone(),
            settings.keychain,
            state.clone(),
            outbox.clone(),
            egress.as_ref().ok().cloned(),
        );
        AgentService {
            inner: Arc::new(Inner {
                settings,
                store,
                state,
                paused,
                pause_file,
                pause_timer: Mutex::new(None),
                runtime: Mutex::new(tokio::runtime::Handle::try_current().ok()),
                executor: Mutex::new(None),
                outbox,
                browser,
                egress,
                running: Mutex::new(None),
                settings_changed: tokio::sync::Notify::new(),
                updates: Mutex::new(None),
            }),
        }
    }

    /// The egress gate this service's jobs go through (its policy and today's meter), or
    /// why there is none (an allowance that cannot be read).
    pub fn egress(&self) -> Result<&EgressGate, &str> {
        self.inner.egress.as_ref().map_err(String::as_str)
    }

    /// Turns automatic updates on for the next `start`: checks at start and daily, installs
    /// when idle, then notifies `options.restart` (the program restarts into the new binary).
    pub fn enable_updates(&self, options: crate::updater::AutoUpdate) {
        if let Ok(mut updates) = self.inner.updates.lock() {
            *updates = Some(options);
        }
    }

    /// The person's "Install now" for the tray's own package (deb or rpm): checks the
    /// channel for this package's release, downloads and verifies it, and hands it to the
    /// package manager (through `pkexec`'s password dialog unless this runs as root); never
    /// while a job runs. The new version then shows as ready, to restart into when they say.
    pub async fn install_update(&self) -> Result<crate::updater::package::Installed, crate::updater::UpdateError> {
        use crate::updater::UpdateError;
        let options = self
            .inner
            .updates
            .lock()
            .ok()
            .and_then(|u| u.clone())
            .ok_or_else(|| UpdateError::Io("updates are off in this program; it installs nothing itself".into()))?;
        let exe = crate::updater::install::installed_exe()?;
        let package = crate::updater::package::installed_package(&exe).ok_or_else(|| {
            UpdateError::Io(format!(
                "{} was not installed from a deb or rpm package, so it cannot update itself; install the new \
                 version the way this copy was installed",
                exe.display()
            ))
        })?;
        let ctx = self.updater_context(&options.channel).await?;
        let state = self.inner.state.clone();
        let installed = crate::updater::package::install(&ctx, &package, || state.snapshot().busy > 0).await?;
        options.look.notify_one();
        Ok(installed)
    }

    /// What an on-demand update check needs: the login's hub, agent id and a token source.
    pub async fn updater_context(&self, channel: &str) -> Result<crate::updater::UpdaterContext, AgentError> {
        let credentials = self.inner.load_credentials().await?.ok_or(AgentError::NotLoggedIn)?;
        let hub_url = HubUrl::parse(&credentials.hub_url)?;
        let tokens = crate::hub_client::TokenCache::new(HubClient::new()?, credentials.clone());
        Ok(crate::updater::UpdaterContext {
            data_dir: self.inner.settings.data_dir.clone(),
            hub_base: hub_url.http_endpoint("").trim_end_matches('/').to_owned(),
            http: crate::bundles::download::client()?,
            auth: crate::bundles::HubAuth::Agent(Box::new(tokens)),
            agent_id: credentials.agent_id.clone(),
            channel: channel.to_owned(),
        })
    }

    pub fn settings(&self) -> &AgentSettings {
        &self.inner.settings
    }

    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.inner.state.subscribe()
    }

    pub fn snapshot(&self) -> AgentSnapshot {
        self.inner.state.snapshot()
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
        let name = name.or_else(host_name);
        let client = HubClient::new()?;
        // The enrollment token is single use: make sure the credentials can be kept before
        // spending it, or an unusable keychain would cost the person their token.
        self.check_keychain().await?;
        let enrolled = client.enroll(&hub, &enrollment_token, &device_key, name).await?;
        self.keep_enrollment(&client, hub, enrolled, device_key).await
    }

    /// Starts a device sign-in (RFC 8628) on `hub_url`: the codes to show come back at
    /// once; [`AgentService::finish_device_login`] then waits for the approval. The device
    /// name is the host name unless given.
    pub async fn device_login(&self, hub_url: &str, name: Option<String>) -> Result<DeviceLogin, AgentError> {
        // Same as with a token: an approval must not be wasted on a keychain that cannot
        // keep the credentials.
        self.check_keychain().await?;
        DeviceLogin::start(hub_url, name.or_else(host_name)).await
    }

    /// Waits for the person to approve `login` on the hub's page, then stores the
    /// credentials and fetches the bundle root exactly as [`AgentService::enroll`] does.
    pub async fn finish_device_login(&self, login: DeviceLogin) -> Result<LoginOutcome, AgentError> {
        let approved = login.wait().await?;
        self.keep_enrollment(&approved.client, approved.hub, approved.enrolled, approved.device_key).await
    }

    async fn check_keychain(&self) -> Result<(), AgentError> {
        let store = Arc::clone(&self.inner.store);
        tokio::task::spawn_blocking(move || store.backend_name())
            .await
            .map_err(|e| AgentError::Internal(format!("keychain task failed: {e}")))??;
        Ok(())
    }

    /// After the hub enrolled `device_key` (by token or device sign-in): the bundle root,
    /// then the credentials into the keychain.
    async fn keep_enrollment(
        &self,
        client: &HubClient,
        hub: HubUrl,
        enrolled: edge_protocol::api::EnrollResponse,
        device_key: DeviceKey,
    ) -> Result<LoginOutcome, AgentError> {
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
        self.inner.state.update(|s| s.last_error = None);
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
        self.inner.state.enable_state_file();
        if let Ok(mut stored) = self.inner.runtime.lock() {
            *stored = Some(runtime.clone());
        }
        self.inner.arm_pause_timer();
        let cancel = CancellationToken::new();
        let handle = runtime.spawn(run_loop(Arc::clone(&self.inner), cancel.clone()));
        *running = Some(RunningLoop { cancel, handle });
        Ok(())
    }

    /// The adapter `edge-agent browser login --site SITE` would open, with where it came
    /// from, opening nothing: an adapter file, the name of one in the person's adapters
    /// folder, or the name of a site whose adapter came from a signed bundle.
    pub fn browser_site(&self, site: &str) -> Result<crate::browser::SiteAdapter, AgentError> {
        crate::browser::load_site(&self.inner.settings.data_dir, site).map_err(AgentError::SiteAdapter)
    }

    /// Opens a browser window on the site's login page (one of the adapter's origins, else
    /// refused) and saves the session (encrypted) once the site shows its logged-in marker.
    /// Show the person [`AgentService::browser_site`]'s answer first. `headful: false` is for
    /// scripted logins and tests.
    pub async fn browser_login(
        &self,
        site: &crate::browser::SiteAdapter,
        headful: bool,
        timeout: Duration,
    ) -> Result<edge_browser::runtime::LoginReport, AgentError> {
        site.login_origin().map_err(AgentError::SiteAdapter)?;
        let runtime = self.inner.browser.runtime();
        runtime
            .interactive_login(&site.adapter, headful, timeout)
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))
    }

    /// The browser runtime's state (starting the runtime if needed; it launches nothing).
    pub fn browser_status(&self) -> edge_browser::BrowserStatus {
        self.inner.browser.runtime().status()
    }

    /// Closes the browser circuit breaker by hand (the person resumes from the tray).
    pub fn browser_resume(&self) {
        self.inner.browser.runtime().reset_circuit();
    }

    /// Applies what the person just saved in settings.json to the running agent: the daily
    /// data cap and the quiet hours shown in the snapshot. The jobs-per-hour cap and the
    /// quiet hours themselves are read at every job anyway, and the hub hears of them at
    /// once; the messages-per-hour cap is read when the browser runtime starts.
    pub fn apply_local_settings(&self) -> Result<(), AgentError> {
        let local = LocalSettings::load(&self.inner.settings.data_dir)?;
        if let Ok(gate) = &self.inner.egress {
            gate.meter().set_cap(local.caps.bytes_per_day);
        }
        self.inner.refresh_quiet_hours();
        // A permit is kept if the loop is not waiting right now: no change is missed.
        self.inner.settings_changed.notify_one();
        Ok(())
    }

    /// Stop taking new jobs until resumed (running ones finish); the hub is told via
    /// `availability`.
    pub fn pause(&self) {
        self.pause_for(PauseLength::UntilResumed);
    }

    /// Stop taking new jobs for `length`: until resumed, for an hour, or until tomorrow
    /// morning. The pause and its end are kept in `pause.json` (a restart keeps it); at its
    /// end the agent takes jobs again by itself. A new pause replaces the one before.
    pub fn pause_for(&self, length: PauseLength) {
        self.pause_until(length.end(chrono::Local::now()));
    }

    /// Stop taking new jobs until `end` (`None`: until resumed); see [`Self::pause_for`].
    pub fn pause_until(&self, end: Option<chrono::DateTime<chrono::Utc>>) {
        let until_ms = end.map(|end| end.timestamp_millis());
        self.inner.apply_pause(PauseState { paused: true, until_ms });
        self.inner.arm_pause_timer();
    }

    pub fn resume(&self) {
        self.inner.apply_pause(PauseState::default());
        self.inner.arm_pause_timer();
    }

    /// Cancels a job this agent holds (running, or waiting for a slot), as a hub's
    /// `job_cancel` would: it ends with `CANCELLED` and the hub is told through its
    /// `job_result`. A job that is not held here (finished, or never here) is
    /// [`AgentError::JobNotRunning`].
    pub async fn cancel_job(&self, id: &str) -> Result<(), AgentError> {
        let executor = self.inner.executor.lock().ok().and_then(|e| e.clone());
        let Some(executor) = executor else { return Err(AgentError::JobNotRunning(id.to_owned())) };
        if !executor.running().await.iter().any(|held| held == id) {
            return Err(AgentError::JobNotRunning(id.to_owned()));
        }
        tracing::info!(job_id = %id, "job cancelled by the person");
        executor.cancel(id, CANCELLED_HERE);
        Ok(())
    }

    /// The last screenshot of a recent browser job (PNG bytes), `None` when it took none.
    /// Asked by job id only: nothing here reads a path the caller names.
    pub fn job_screenshot(&self, id: &str) -> Result<Option<Vec<u8>>, AgentError> {
        crate::screenshots::Screenshots::new(&self.inner.settings.data_dir).get(id)
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
        self.inner.state.update(|s| {
            s.connection = ConnectionState::Offline;
            s.last_error = None;
        });
        Ok(())
    }

    /// Stops the loop: running jobs are cancelled and reported, the socket is closed, and
    /// `state.json` says the agent is no longer running.
    pub async fn shutdown(&self) {
        self.stop_loop().await;
        if let Some(browser) = self.inner.browser.started() {
            browser.shutdown().await;
        }
        // The meter writes its file at most once a second; the last counts go in now.
        if let Ok(gate) = &self.inner.egress {
            gate.meter().save();
        }
        self.inner.state.persist_current(false);
    }

    /// Reconnects, when no job is running, so that the hub learns at once what the person
    /// just granted or revoked: the loop announces the granted capabilities in its `hello`,
    /// once per connection. With a job running nothing is interrupted: the new grants reach
    /// the hub at the next connection, and the executor checks each job against the grants
    /// of the moment anyway. Whether it reconnected.
    pub async fn reannounce_when_idle(&self) -> Result<bool, AgentError> {
        let running =
            self.inner.running.lock().ok().is_some_and(|r| r.as_ref().is_some_and(|r| !r.handle.is_finished()));
        if !running || self.snapshot().busy > 0 {
            return Ok(false);
        }
        self.stop_loop().await;
        self.start()?;
        Ok(true)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::MemoryCredentialStore;
    use crate::local_settings::QuietHours;

    #[tokio::test]
    async fn settings_saved_while_running_reach_the_meter_and_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let service = AgentService::with_store(
            AgentSettings::new(dir.path().to_path_buf()),
            Arc::new(MemoryCredentialStore::new()),
        );
        assert_eq!(service.egress().unwrap().meter().cap(), None);
        assert_eq!(service.snapshot().quiet_until, None);

        // Quiet all day but for the minute four minutes from now.
        let now = crate::limits::local_minute_now();
        let at = |minutes: u16| {
            let m = (now + minutes) % (24 * 60);
            format!("{:02}:{:02}", m / 60, m % 60)
        };
        let mut local = LocalSettings::load(dir.path()).unwrap();
        local.caps.bytes_per_day = Some(5_000_000);
        local.quiet_hours = Some(QuietHours::new(&at(5), &at(4)).unwrap());
        local.save(dir.path()).unwrap();
        service.apply_local_settings().unwrap();
        assert!(service.inner.refresh_quiet_hours());
        assert_eq!(service.egress().unwrap().meter().cap(), Some(5_000_000));
        assert_eq!(service.snapshot().quiet_until, Some(at(4)));

        local.quiet_hours = None;
        local.caps.bytes_per_day = None;
        local.save(dir.path()).unwrap();
        service.apply_local_settings().unwrap();
        assert_eq!(service.egress().unwrap().meter().cap(), None);
        assert_eq!(service.snapshot().quiet_until, None);
    }
}
