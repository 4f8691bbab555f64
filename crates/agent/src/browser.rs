//! The agent side of the browser runtime (`edge-browser`): starting it on first use, the
//! session key in the OS keychain (a second entry per profile, service
//! `edge-agent-browser`), turning [`BrowserEvent`]s into [`AgentEvent`]s, snapshot fields
//! and the `circuit_breaker` frame, resolving a job's adapter (inline, from a bundle, or
//! remembered from an earlier job) and running the four browser job types.
//!
//! It must never put the session key or a session cookie in a log, event or snapshot,
//! and never run an adapter from a bundle that did not pass the bundle verification.

use crate::keychain::{Keychain, KeychainChoice, BROWSER_KEY_SERVICE};
use crate::outbox::Outbox;
use crate::secret::Secret;
use crate::state::{AgentEvent, StateHandle};
use base64::Engine;
use edge_browser::flow::{parse_adapter, Adapter};
use edge_browser::runtime::{BrowserEvent, BrowserRuntime, BrowserSettings, KeyStore, Notifier};
use edge_browser::session::SessionKey;
use edge_protocol::jobs::{BrowserJobPayload, BundlePayload};
use edge_protocol::{AgentFrame, CircuitReason, ErrorCode, JobError, JobSpec};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};

/// The session key in the keychain, created on first use.
pub struct KeychainKeyStore {
    keychain: Keychain,
}

impl KeychainKeyStore {
    pub fn new(choice: KeychainChoice, profile: &str) -> KeychainKeyStore {
        KeychainKeyStore { keychain: Keychain::new(choice, profile) }
    }
}

impl KeyStore for KeychainKeyStore {
    fn session_key(&self) -> Result<SessionKey, String> {
        let engine = base64::engine::general_purpose::STANDARD;
        match self.keychain.read_secret(BROWSER_KEY_SERVICE).map_err(|e| e.to_string())? {
            Some(stored) => {
                let bytes = engine
                    .decode(stored.expose().trim())
                    .map_err(|_| "the stored browser key is not base64".to_owned())?;
                let bytes: [u8; 32] =
                    bytes.try_into().map_err(|_| "the stored browser key is not 32 bytes".to_owned())?;
                Ok(SessionKey::from_bytes(bytes))
            }
            None => {
                let key = SessionKey::generate()?;
                self.keychain
                    .write_secret(BROWSER_KEY_SERVICE, &Secret::new(engine.encode(key.bytes())))
                    .map_err(|e| e.to_string())?;
                Ok(key)
            }
        }
    }
}

/// The browser runtime of one profile, started on first use (a first browser job or a site
/// login), since most agents never run one. Cheap to clone.
#[derive(Clone)]
pub struct BrowserHost {
    shared: Arc<HostShared>,
}

struct HostShared {
    data_dir: PathBuf,
    profile: String,
    keychain: KeychainChoice,
    state: StateHandle,
    outbox: Outbox,
    runtime: OnceLock<BrowserRuntime>,
}

impl BrowserHost {
    pub fn new(
        data_dir: PathBuf,
        profile: String,
        keychain: KeychainChoice,
        state: StateHandle,
        outbox: Outbox,
    ) -> Self {
        BrowserHost {
            shared: Arc::new(HostShared { data_dir, profile, keychain, state, outbox, runtime: OnceLock::new() }),
        }
    }

    /// The runtime, started now if it was not.
    pub fn runtime(&self) -> BrowserRuntime {
        let mut started = false;
        let runtime = self
            .shared
            .runtime
            .get_or_init(|| {
                started = true;
                let shared = &self.shared;
                let settings = BrowserSettings::new(shared.data_dir.clone(), shared.profile.clone()).from_env();
                let keys = Arc::new(KeychainKeyStore::new(shared.keychain, &shared.profile));
                let notifier = Arc::new(AgentNotifier { host: Arc::downgrade(shared) });
                BrowserRuntime::new(settings, keys, notifier)
            })
            .clone();
        if started {
            self.shared.refresh_status();
        }
        runtime
    }

    /// The runtime if something started it.
    pub fn started(&self) -> Option<BrowserRuntime> {
        self.shared.runtime.get().cloned()
    }

    /// The runtime's state, `None` before the runtime started.
    pub fn status(&self) -> Option<edge_browser::BrowserStatus> {
        self.shared.status()
    }

    /// Shows the runtime's current state in the snapshot. A job that succeeds on a site
    /// clears its login requirement without a browser event (the login may have happened in
    /// another process: `edge-agent browser login`), so this runs after every job.
    pub fn refresh_status(&self) {
        self.shared.refresh_status();
    }
}

impl HostShared {
    fn status(&self) -> Option<edge_browser::BrowserStatus> {
        self.runtime.get().map(BrowserRuntime::status)
    }

    /// Updates the snapshot when the runtime's state differs from what it shows (an update
    /// writes state.json and tells every subscriber, so an unchanged state is left alone).
    fn refresh_status(&self) {
        let status = self.status();
        if status.is_some() && self.state.snapshot().browser != status {
            self.state.update(|s| s.browser = status);
        }
    }
}

/// Tells the person (events, snapshot) and the hub (`circuit_breaker`).
struct AgentNotifier {
    host: Weak<HostShared>,
}

impl Notifier for AgentNotifier {
    fn notify(&self, event: BrowserEvent) {
        let Some(host) = self.host.upgrade() else { return };
        let state = &host.state;
        match &event {
            BrowserEvent::CircuitOpened { reason, site, until_ms, cooldown_ms } => {
                let frame = AgentFrame::CircuitBreaker {
                    reason: if reason == "RATE_LIMITED" {
                        CircuitReason::RateLimited
                    } else {
                        CircuitReason::Other(reason.clone())
                    },
                    cooldown_ms: Some(*cooldown_ms),
                };
                host.outbox.send(frame);
                state.emit(AgentEvent::BrowserPaused {
                    reason: reason.clone(),
                    site: site.clone(),
                    until_ms: *until_ms,
                });
            }
            BrowserEvent::CircuitClosed => state.emit(AgentEvent::BrowserResumed),
            BrowserEvent::SessionVolatile { reason } => {
                state.emit(AgentEvent::BrowserSessionVolatile { reason: reason.clone() })
            }
            BrowserEvent::LoginRequired { site } => state.emit(AgentEvent::BrowserLoginRequired { site: site.clone() }),
            BrowserEvent::SessionSaved { site } => state.emit(AgentEvent::BrowserLoggedIn { site: site.clone() }),
        }
        host.refresh_status();
    }
}

/// Where adapters of earlier jobs are remembered, so `edge-agent browser login --site NAME`
/// knows the site.
pub fn adapters_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("browser").join("adapters")
}

fn remember(data_dir: &Path, adapter: &Adapter) {
    let dir = adapters_dir(data_dir);
    if let Ok(json) = serde_json::to_vec_pretty(adapter) {
        let _ = std::fs::create_dir_all(&dir);
        let _ = edge_browser::checkpoint::write_atomically(&dir.join(format!("{}.json", adapter.name)), &json);
    }
}

/// `--site`: a file with an adapter, or the name of one an earlier job used.
pub fn load_site(data_dir: &Path, site: &str) -> Result<Adapter, String> {
    let as_path = Path::new(site);
    let path =
        if as_path.is_file() { as_path.to_path_buf() } else { adapters_dir(data_dir).join(format!("{site}.json")) };
    let text = std::fs::read_to_string(&path).map_err(|_| {
        format!("no adapter {site:?}: give the path of an adapter file, or the name of a site an earlier job used")
    })?;
    parse_adapter(&text).map_err(|e| e.to_string())
}

/// The job's adapter: inline, or `{"bundle","version","path"}` from a verified bundle.
async fn resolve_adapter(value: &Value, bundles: Option<&crate::bundles::BundleContext>) -> Result<Adapter, JobError> {
    let bad = |m: String| JobError::new(ErrorCode::BadPayload, m);
    if let Some(bundle) = value.get("bundle").and_then(Value::as_str) {
        let ctx = bundles
            .ok_or_else(|| JobError::new(ErrorCode::UnsupportedJob, "this agent has no bundle runtime configured"))?;
        let payload = BundlePayload {
            bundle: bundle.to_owned(),
            version: value.get("version").and_then(Value::as_str).unwrap_or("latest").to_owned(),
            args: Vec::new(),
            tenant: None,
            timeout_ms: None,
            secrets: Default::default(),
        };
        let prepared = crate::bundles::prepare(ctx, &payload).await?;
        let relative = value.get("path").and_then(Value::as_str).unwrap_or("adapter.yaml");
        let file = crate::bundles::inside(&prepared.version_dir.join("bundle"), relative).map_err(bad)?;
        let text =
            std::fs::read_to_string(&file).map_err(|e| bad(format!("adapter {relative:?} in bundle {bundle}: {e}")))?;
        return parse_adapter(&text).map_err(|e| e.to_job_error());
    }
    let adapter: Adapter = serde_json::from_value(value.clone()).map_err(|e| bad(format!("`adapter`: {e}")))?;
    adapter.validate().map_err(|e| e.to_job_error())?;
    Ok(adapter)
}

/// Runs a browser job: the result, and `data` to report with a failure (partial broadcast).
pub(crate) async fn run(
    runtime: &BrowserRuntime,
    data_dir: &Path,
    bundles: Option<&crate::bundles::BundleContext>,
    job: &JobSpec,
) -> (Result<Value, JobError>, Option<Value>) {
    let payload: BrowserJobPayload = match serde_json::from_value(job.payload.clone()) {
        Ok(p) => p,
        Err(e) => return (Err(JobError::new(ErrorCode::BadPayload, format!("payload: {e}"))), None),
    };
    let adapter = match resolve_adapter(&payload.adapter, bundles).await {
        Ok(a) => a,
        Err(e) => return (Err(e), None),
    };
    remember(data_dir, &adapter);
    let outcome = runtime.run_job(&job.job_type, &job.job_id, &payload, &adapter).await;
    (outcome.result, outcome.error_data)
}
