//! The agent side of the browser runtime (`edge-browser`): starting it on first use, the
//! session key in the OS keychain (a second entry per profile, service
//! `edge-agent-browser`), turning [`BrowserEvent`]s into [`AgentEvent`]s, snapshot fields
//! and the `circuit_breaker` frame, resolving a job's adapter (from a signed bundle of the
//! agent's tenant, from the person's adapters folder, or inline where the person allows it),
//! the folders a job may upload from, and running the four browser job types. The job
//! browser is launched with its proxy set to the egress gate's (`crate::egress::proxy`).
//!
//! It must never put the session key or a session cookie in a log, event or snapshot, never
//! run an adapter from a bundle that did not pass the bundle verification, never take an
//! inline adapter the person did not allow, and never store an adapter a job sent (what a
//! later `edge-agent browser login` opens is chosen by the person or a signed bundle).

use crate::egress::proxy::{self, GateProxy};
use crate::egress::EgressGate;
use crate::keychain::{Keychain, KeychainChoice, BROWSER_KEY_SERVICE};
use crate::local_settings::LocalSettings;
use crate::outbox::Outbox;
use crate::secret::Secret;
use crate::state::{AgentEvent, StateHandle};
use base64::Engine;
use edge_browser::confine::Uploads;
use edge_browser::flow::{parse_adapter, Adapter};
use edge_browser::runtime::{BrowserEvent, BrowserRuntime, BrowserSettings, KeyStore, Notifier};
use edge_browser::session::SessionKey;
use edge_protocol::jobs::{BrowserJobPayload, BundlePayload};
use edge_protocol::{AgentFrame, CircuitReason, ErrorCode, JobError, JobSpec};
use serde::{Deserialize, Serialize};
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
    /// The gate the job browser's proxy judges with; `None` when the person's egress
    /// settings are unusable (the job browser then gets a proxy that lets nothing out).
    egress: Option<EgressGate>,
    /// Kept for the life of the host: dropping it stops the proxy.
    proxy: OnceLock<GateProxy>,
    runtime: OnceLock<BrowserRuntime>,
}

impl BrowserHost {
    pub fn new(
        data_dir: PathBuf,
        profile: String,
        keychain: KeychainChoice,
        state: StateHandle,
        outbox: Outbox,
        egress: Option<EgressGate>,
    ) -> Self {
        retire_remembered_adapters(&data_dir);
        BrowserHost {
            shared: Arc::new(HostShared {
                data_dir,
                profile,
                keychain,
                state,
                outbox,
                egress,
                proxy: OnceLock::new(),
                runtime: OnceLock::new(),
            }),
        }
    }

    /// The job browser's proxy flags: the egress gate's local proxy, started now.
    fn proxy_args(shared: &HostShared) -> Vec<String> {
        let Some(gate) = &shared.egress else { return proxy::fail_closed_chromium_args() };
        if let Some(running) = shared.proxy.get() {
            return running.chromium_args();
        }
        match GateProxy::start_here(gate.clone()) {
            Ok(running) => shared.proxy.get_or_init(|| running).chromium_args(),
            Err(e) => {
                tracing::error!(error = %e, "the egress proxy did not start: browser jobs cannot reach any site");
                proxy::fail_closed_chromium_args()
            }
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
                let mut settings = BrowserSettings::new(shared.data_dir.clone(), shared.profile.clone()).from_env();
                // The person's messages-per-hour cap lowers the DM bucket (never raises it);
                // a job's hub `limits` lower it further.
                if let Some(per_hour) =
                    LocalSettings::load(&shared.data_dir).ok().and_then(|s| s.caps.messages_per_hour)
                {
                    let burst = per_hour.min(edge_browser::guard::Cap::DM.burst);
                    settings.caps = settings.caps.with_setting("dm", edge_browser::guard::Cap { per_hour, burst });
                }
                // Every connection a job's page opens goes through the egress gate.
                settings.job_browser_args = Self::proxy_args(shared);
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

/// Where a job's or a login's site adapter came from; `edge-agent browser login` shows it
/// before it opens anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum AdapterSource {
    /// A file of a signed bundle of the agent's own tenant (verified through TUF).
    Bundle { tenant: String, bundle: String, version: String, path: String },
    /// A file of the person's: one of their adapters folder, or one they named.
    Local { path: PathBuf },
    /// Sent inside the job, where the person allows inline adapters; never stored.
    Inline,
}

impl std::fmt::Display for AdapterSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdapterSource::Bundle { tenant, bundle, version, path } => {
                write!(f, "{path} of the signed bundle {bundle} {version} (tenant {tenant})")
            }
            AdapterSource::Local { path } => write!(f, "the local file {}", path.display()),
            AdapterSource::Inline => f.write_str("inline in the job (not signed; allowed by allowInlineAdapters)"),
        }
    }
}

/// A site adapter and where it came from.
#[derive(Debug, Clone)]
pub struct SiteAdapter {
    pub adapter: Adapter,
    pub source: AdapterSource,
    /// The bundle's files, when the adapter came from one: a job may upload from there.
    pub bundle_dir: Option<PathBuf>,
}

impl SiteAdapter {
    /// The origin a login opens (its login page's), after checking that page is one of the
    /// adapter's origins.
    pub fn login_origin(&self) -> Result<String, String> {
        let adapter = &self.adapter;
        let url = adapter
            .absolute(adapter.urls.get("login").map(String::as_str).unwrap_or("/"))
            .map_err(|e| e.to_string())?;
        edge_browser::confine::Origins::of(adapter)
            .and_then(|origins| origins.check(&url))
            .map_err(|e| format!("the login page of {:?} is refused: {e}", adapter.name))?;
        url::Url::parse(&url).map(|u| u.origin().ascii_serialization()).map_err(|e| e.to_string())
    }
}

/// The person's adapters folder, `<data dir>/adapters/`: `NAME.yaml` (or `.yml`, `.json`)
/// files they put there themselves. Jobs name them as `{"local": "NAME"}` and never write
/// there.
pub fn local_adapters_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("adapters")
}

/// Which signed bundle each site's adapter came from in the last job that used one
/// (`<data dir>/browser/sites/NAME.json`, a reference, never an adapter), so `edge-agent
/// browser login --site NAME` can open that site.
fn sites_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("browser").join("sites")
}

/// Before this release the agent kept every job's adapter in `<data dir>/browser/adapters/`
/// and `browser login --site NAME` opened the last one, whoever wrote it: a job could plant
/// the page a later login opened. Those files are moved aside, unused, once.
pub fn retire_remembered_adapters(data_dir: &Path) {
    let old = data_dir.join("browser").join("adapters");
    if !old.is_dir() {
        return;
    }
    let mut aside = data_dir.join("browser").join("adapters-from-jobs.unused");
    if aside.exists() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        aside = data_dir.join("browser").join(format!("adapters-from-jobs.unused.{}", now.as_secs()));
    }
    match std::fs::rename(&old, &aside) {
        Ok(()) => tracing::warn!(
            moved_to = %aside.display(),
            local_adapters = %local_adapters_dir(data_dir).display(),
            "adapters remembered from earlier jobs are no longer used (a job could plant one); they were moved \
             aside; put an adapter you trust into the local adapters folder"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot move the adapters remembered from earlier jobs aside"),
    }
}

/// A name as a file of the adapters folder: the adapter name's own characters only, so it
/// cannot point elsewhere.
fn adapter_name(name: &str) -> Result<&str, String> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(name)
    } else {
        Err(format!("{name:?} is not an adapter name (letters, digits, '-', '_' or '.')"))
    }
}

/// The person's adapter `name` from their adapters folder.
pub fn local_adapter(data_dir: &Path, name: &str) -> Result<SiteAdapter, String> {
    let name = adapter_name(name)?;
    let dir = local_adapters_dir(data_dir);
    let path = ["yaml", "yml", "json"]
        .iter()
        .map(|ext| dir.join(format!("{name}.{ext}")))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("no local adapter {name:?}: the person puts {name}.yaml into {}", dir.display()))?;
    let adapter = read_adapter(&path)?;
    if adapter.name != name {
        return Err(format!(
            "{} holds the adapter {:?}, not {name:?}; a local adapter's file is named after it",
            path.display(),
            adapter.name
        ));
    }
    Ok(SiteAdapter { adapter, source: AdapterSource::Local { path }, bundle_dir: None })
}

fn read_adapter(path: &Path) -> Result<Adapter, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_adapter(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Notes which signed bundle a site's adapter came from (see [`sites_dir`]). Only bundle
/// adapters are noted: a local one is in the person's folder already, an inline one is
/// never stored, so no job can choose what a later login opens.
fn note_site(data_dir: &Path, site: &SiteAdapter) {
    if !matches!(site.source, AdapterSource::Bundle { .. }) {
        return;
    }
    let dir = sites_dir(data_dir);
    if let Ok(json) = serde_json::to_vec_pretty(&site.source) {
        let _ = std::fs::create_dir_all(&dir);
        let _ = edge_browser::checkpoint::write_atomically(&dir.join(format!("{}.json", site.adapter.name)), &json);
    }
}

/// `--site`: an adapter file, the name of one in the person's adapters folder, or the name of
/// a site whose adapter came from a signed bundle in an earlier job (read again from that
/// verified bundle's files).
pub fn load_site(data_dir: &Path, site: &str) -> Result<SiteAdapter, String> {
    let as_path = Path::new(site);
    if as_path.is_file() {
        let path = std::fs::canonicalize(as_path).unwrap_or_else(|_| as_path.to_path_buf());
        let adapter = read_adapter(&path)?;
        return Ok(SiteAdapter { adapter, source: AdapterSource::Local { path }, bundle_dir: None });
    }
    let unknown = || {
        format!(
            "no adapter {site:?}: give the path of an adapter file, the name of one in {}, or the name of a site \
             whose adapter came from a signed bundle",
            local_adapters_dir(data_dir).display()
        )
    };
    let name = adapter_name(site).map_err(|_| unknown())?;
    if ["yaml", "yml", "json"].iter().any(|ext| local_adapters_dir(data_dir).join(format!("{name}.{ext}")).is_file()) {
        return local_adapter(data_dir, name);
    }
    let noted = std::fs::read(sites_dir(data_dir).join(format!("{name}.json"))).map_err(|_| unknown())?;
    let source: AdapterSource = serde_json::from_slice(&noted).map_err(|_| unknown())?;
    let AdapterSource::Bundle { tenant, bundle, version, path } = &source else { return Err(unknown()) };
    let version_dir = crate::bundles::cache::version_dir(data_dir, tenant, bundle, version);
    if !version_dir.join(".sha256").is_file() {
        return Err(format!(
            "the adapter of {site:?} came from the signed bundle {bundle} {version}, which is no longer on this \
             machine; run a job of that site again, or give the adapter file's path"
        ));
    }
    let bundle_dir = version_dir.join("bundle");
    let file = crate::bundles::inside(&bundle_dir, path)?;
    let adapter = read_adapter(&file)?;
    if adapter.name != name {
        return Err(unknown());
    }
    Ok(SiteAdapter { adapter, source, bundle_dir: Some(bundle_dir) })
}

/// The job's adapter: `{"bundle","version","path"}` from a verified bundle of the agent's own
/// tenant, `{"local": NAME}` from the person's adapters folder, or the adapter itself inline,
/// which only an agent whose person turned `allowInlineAdapters` on takes.
async fn resolve_adapter(
    value: &Value,
    bundles: Option<&crate::bundles::BundleContext>,
    data_dir: &Path,
    settings: &LocalSettings,
) -> Result<SiteAdapter, JobError> {
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
        let bundle_dir = prepared.version_dir.join("bundle");
        let file = crate::bundles::inside(&bundle_dir, relative).map_err(bad)?;
        let text =
            std::fs::read_to_string(&file).map_err(|e| bad(format!("adapter {relative:?} in bundle {bundle}: {e}")))?;
        let adapter = parse_adapter(&text).map_err(|e| e.to_job_error())?;
        let source = AdapterSource::Bundle {
            tenant: prepared.tenant,
            bundle: prepared.bundle,
            version: prepared.version,
            path: relative.to_owned(),
        };
        return Ok(SiteAdapter { adapter, source, bundle_dir: Some(bundle_dir) });
    }
    if let Some(name) = value.get("local") {
        let name = name.as_str().ok_or_else(|| bad("`adapter.local` must be the name of a local adapter".into()))?;
        return local_adapter(data_dir, name).map_err(bad);
    }
    if !settings.allow_inline_adapters {
        return Err(JobError::new(
            ErrorCode::PolicyViolation,
            "inline adapters are off on this agent: a job names a signed bundle's adapter \
             ({\"bundle\", \"version\", \"path\"}) or one of the person's local adapters ({\"local\": NAME}); \
             the person can allow inline adapters with `edge-agent settings inline-adapters on`",
        ));
    }
    let adapter: Adapter = serde_json::from_value(value.clone()).map_err(|e| bad(format!("`adapter`: {e}")))?;
    adapter.validate().map_err(|e| e.to_job_error())?;
    Ok(SiteAdapter { adapter, source: AdapterSource::Inline, bundle_dir: None })
}

/// The folders a job may upload from: its bundle's (when its adapter came from one), then
/// the person's uploads folder (when they chose one).
pub fn job_uploads(settings: &LocalSettings, bundle_dir: Option<&Path>) -> Uploads {
    let mut uploads = Uploads::none();
    if let Some(dir) = bundle_dir {
        uploads = uploads.allow(dir, "the job's bundle");
    }
    if let Some(dir) = &settings.uploads_dir {
        uploads = uploads.allow(dir, "the uploads folder");
    }
    uploads
}

/// Runs a browser job: the result, and `data` to report with a failure (partial broadcast).
pub(crate) async fn run(
    runtime: &BrowserRuntime,
    data_dir: &Path,
    bundles: Option<&crate::bundles::BundleContext>,
    egress: Option<&crate::egress::EgressGate>,
    job: &JobSpec,
    report: Option<&dyn crate::state::JobReport>,
) -> (Result<Value, JobError>, Option<Value>) {
    let payload: BrowserJobPayload = match serde_json::from_value(job.payload.clone()) {
        Ok(p) => p,
        Err(e) => return (Err(JobError::new(ErrorCode::BadPayload, format!("payload: {e}"))), None),
    };
    // Read for every job: the person may change them while the agent runs.
    let settings = match LocalSettings::load(data_dir) {
        Ok(settings) => settings,
        Err(e) => return (Err(JobError::new(ErrorCode::Internal, e.to_string())), None),
    };
    let site = match resolve_adapter(&payload.adapter, bundles, data_dir, &settings).await {
        Ok(site) => site,
        Err(e) => {
            if e.code == ErrorCode::PolicyViolation {
                tracing::warn!(job_id = %job.job_id, reason = e.message.as_deref().unwrap_or_default(), "adapter refused");
            }
            return (Err(e), None);
        }
    };
    // Browser flows are granted per site, and the site is known only now.
    if let Err(refused) = crate::consent::check_site(&settings, &site.adapter.name) {
        tracing::warn!(job_id = %job.job_id, site = %site.adapter.name, "browser job refused: site not granted");
        return (Err(refused), None);
    }
    tracing::info!(job_id = %job.job_id, site = %site.adapter.name, source = %site.source, "browser job adapter");
    if let Some(report) = report {
        report.site(&site.adapter.name);
    }
    note_site(data_dir, &site);
    let uploads = job_uploads(&settings, site.bundle_dir.as_deref());
    let refused_before = egress.map(|gate| gate.browser_refusals().0);
    let relay = Relay(report);
    let outcome =
        runtime.run_job_reporting(&job.job_type, &job.job_id, &payload, &site.adapter, &uploads, &relay).await;
    (explain_refusal(outcome.result, egress, refused_before), outcome.error_data)
}

/// The browser runtime's progress and screenshots, passed on to the job's report.
struct Relay<'a>(Option<&'a dyn crate::state::JobReport>);

impl edge_browser::JobReporter for Relay<'_> {
    fn progress(&self, done: u32, total: u32) {
        if let Some(report) = self.0 {
            report.progress(done, total);
        }
    }

    fn screenshot(&self, path: &Path) {
        if let Some(report) = self.0 {
            report.screenshot(path);
        }
    }
}

/// A flow that failed while the gate refused one of the browser's connections failed because
/// of it: the page it waited for was the proxy's refusal. It reports `EGRESS_DENIED` naming
/// the address and the rule (not retried), with what the flow itself saw after it. A job that
/// succeeded despite a refusal (a blocked subresource it did not need) stays a success; the
/// refusal is in the local log. The proxy serves every page of the job browser, so with
/// several browser jobs at once a refusal is blamed on each job that failed meanwhile.
fn explain_refusal(
    result: Result<Value, JobError>,
    egress: Option<&crate::egress::EgressGate>,
    refused_before: Option<u64>,
) -> Result<Value, JobError> {
    let (Err(failure), Some(gate), Some(before)) = (&result, egress, refused_before) else { return result };
    if failure.code == ErrorCode::SendUncertain {
        // A message may have gone out: that is what the hub must hear (it never retries it).
        return result;
    }
    match gate.browser_refusals() {
        (now, Some(refusal)) if now > before => {
            let mut error = refusal.to_job_error();
            let seen = failure.message.as_deref().unwrap_or_default();
            error.message = Some(format!(
                "{}; the flow then failed with {}{}",
                error.message.unwrap_or_default(),
                failure.code,
                if seen.is_empty() { String::new() } else { format!(": {seen}") }
            ));
            Err(error)
        }
        _ => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_flow_failing_after_a_refusal_reports_the_refusal() {
        use crate::egress::{Capability, EgressGate, Policy};
        let gate = EgressGate::new(Policy::default(), None, None);
        let before = gate.browser_refusals().0;
        let lan = url::Url::parse("http://10.0.0.7/").unwrap();
        gate.admit_url(&lan, None, true, Capability::Browser).await.unwrap_err();
        let failed = || Err(JobError::new(ErrorCode::LoginRequired, "no logged-in marker"));
        let error = explain_refusal(failed(), Some(&gate), Some(before)).unwrap_err();
        assert_eq!(error.code, ErrorCode::EgressDenied);
        let message = error.message.unwrap_or_default();
        assert!(message.contains("10.0.0.7:80") && message.contains("LOGIN_REQUIRED"), "{message}");
        // No refusal during the job: the flow's own error; a success stays one.
        let now = gate.browser_refusals().0;
        assert_eq!(explain_refusal(failed(), Some(&gate), Some(now)).unwrap_err().code, ErrorCode::LoginRequired);
        assert!(explain_refusal(Ok(json!({})), Some(&gate), Some(before)).is_ok());
        // A send whose outcome is unknown stays so: the hub must not lose that a message may
        // have gone out (and never retries it).
        let uncertain = Err(JobError::new(ErrorCode::SendUncertain, "the message to \"ann\" may or may not …"));
        assert_eq!(explain_refusal(uncertain, Some(&gate), Some(before)).unwrap_err().code, ErrorCode::SendUncertain);
        // http_request refusals are not the browser's.
        gate.admit_url(&lan, None, false, Capability::HttpRequest).await.unwrap_err();
        assert_eq!(gate.browser_refusals().0, now);
    }

    const SITE: &str = "name: fanhub\nbaseUrl: https://fanhub.example\nurls: {login: /login}\n";

    fn inline(name: &str, base: &str) -> Value {
        json!({"name": name, "baseUrl": base, "urls": {"login": "/login"}})
    }

    #[tokio::test]
    async fn inline_adapters_need_the_persons_setting_and_are_never_stored() {
        let data = tempfile::tempdir().unwrap();
        let mut settings = LocalSettings::default();
        let refused =
            resolve_adapter(&inline("fanhub", "https://evil.example"), None, data.path(), &settings).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::PolicyViolation);
        let message = refused.message.unwrap_or_default();
        assert!(message.contains("inline adapters are off") && message.contains("inline-adapters on"), "{message}");

        settings.allow_inline_adapters = true;
        let site =
            resolve_adapter(&inline("fanhub", "https://evil.example"), None, data.path(), &settings).await.unwrap();
        assert_eq!(site.source, AdapterSource::Inline);
        note_site(data.path(), &site);
        assert!(!sites_dir(data.path()).exists(), "an inline adapter was stored");
        assert!(load_site(data.path(), "fanhub").unwrap_err().contains("no adapter \"fanhub\""));
    }

    #[tokio::test]
    async fn local_adapters_are_the_persons_files_by_their_own_name() {
        let data = tempfile::tempdir().unwrap();
        let settings = LocalSettings::default();
        let dir = local_adapters_dir(data.path());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("fanhub.yaml"), SITE).unwrap();
        std::fs::write(dir.join("other.yaml"), SITE).unwrap();
        let site = resolve_adapter(&json!({"local": "fanhub"}), None, data.path(), &settings).await.unwrap();
        assert_eq!(site.source, AdapterSource::Local { path: dir.join("fanhub.yaml") });
        assert_eq!(site.login_origin().unwrap(), "https://fanhub.example");
        for (name, needle) in [
            (json!("../../etc/passwd"), "is not an adapter name"),
            (json!(".hidden"), "is not an adapter name"),
            (json!("missing"), "no local adapter \"missing\""),
            (json!("other"), "holds the adapter \"fanhub\", not \"other\""),
            (json!(3), "must be the name of a local adapter"),
        ] {
            let error = resolve_adapter(&json!({"local": name}), None, data.path(), &settings).await.unwrap_err();
            assert_eq!(error.code, ErrorCode::BadPayload);
            assert!(error.message.unwrap_or_default().contains(needle), "{name}");
        }
    }

    #[test]
    fn a_login_opens_the_persons_adapter_first_then_a_signed_bundles() {
        let data = tempfile::tempdir().unwrap();
        // A site whose adapter came from a signed bundle in an earlier job.
        let version_dir = crate::bundles::cache::version_dir(data.path(), "cr_1", "fanhub-adapter", "1.2.0");
        std::fs::create_dir_all(version_dir.join("bundle")).unwrap();
        std::fs::write(version_dir.join(".sha256"), "00").unwrap();
        std::fs::write(version_dir.join("bundle").join("adapter.yaml"), SITE).unwrap();
        let source = AdapterSource::Bundle {
            tenant: "cr_1".into(),
            bundle: "fanhub-adapter".into(),
            version: "1.2.0".into(),
            path: "adapter.yaml".into(),
        };
        let adapter = parse_adapter(SITE).unwrap();
        note_site(data.path(), &SiteAdapter { adapter, source: source.clone(), bundle_dir: None });
        let site = load_site(data.path(), "fanhub").unwrap();
        assert_eq!(site.source, source);
        assert_eq!(site.source.to_string(), "adapter.yaml of the signed bundle fanhub-adapter 1.2.0 (tenant cr_1)");
        // The person's own adapter of that name wins.
        let dir = local_adapters_dir(data.path());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("fanhub.json"), serde_json::to_vec(&parse_adapter(SITE).unwrap()).unwrap()).unwrap();
        assert_eq!(
            load_site(data.path(), "fanhub").unwrap().source,
            AdapterSource::Local { path: dir.join("fanhub.json") }
        );
        // A file named on the command line is that file.
        let file = data.path().join("mine.yaml");
        std::fs::write(&file, SITE).unwrap();
        let named = load_site(data.path(), file.to_str().unwrap()).unwrap();
        assert_eq!(named.source, AdapterSource::Local { path: std::fs::canonicalize(&file).unwrap() });
        // A login page off the adapter's origins never opens (the file itself is refused).
        std::fs::write(
            &file,
            "name: f\nbaseUrl: https://fanhub.example\nurls: {login: 'https://evil.example/login'}\n",
        )
        .unwrap();
        assert!(load_site(data.path(), file.to_str().unwrap())
            .unwrap_err()
            .contains("is not one of the adapter's origins"));
    }

    #[test]
    fn adapters_jobs_left_before_are_moved_aside_once() {
        let data = tempfile::tempdir().unwrap();
        let old = data.path().join("browser").join("adapters");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("fanhub.json"), serde_json::to_vec(&inline("fanhub", "https://evil.example")).unwrap())
            .unwrap();
        retire_remembered_adapters(data.path());
        assert!(!old.exists());
        assert!(data.path().join("browser/adapters-from-jobs.unused/fanhub.json").is_file());
        assert!(load_site(data.path(), "fanhub").is_err());
        retire_remembered_adapters(data.path());
        assert!(data.path().join("browser/adapters-from-jobs.unused/fanhub.json").is_file());
    }

    #[test]
    fn uploads_come_from_the_bundle_then_the_persons_folder() {
        let home = tempfile::tempdir().unwrap();
        let bundle = home.path().join("bundle");
        let uploads = home.path().join("Uploads");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::create_dir_all(&uploads).unwrap();
        std::fs::write(bundle.join("logo.png"), b"l").unwrap();
        std::fs::write(uploads.join("teaser.png"), b"t").unwrap();
        let settings = LocalSettings { uploads_dir: Some(uploads.clone()), ..Default::default() };
        let both = job_uploads(&settings, Some(&bundle));
        assert!(both.resolve("logo.png").is_ok(), "relative paths are the bundle's");
        assert!(both.resolve(uploads.join("teaser.png").to_str().unwrap()).is_ok());
        let none = job_uploads(&LocalSettings::default(), None);
        assert!(none.resolve(uploads.join("teaser.png").to_str().unwrap()).is_err());
    }
}
