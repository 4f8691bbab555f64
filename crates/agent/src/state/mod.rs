//! The agent's observable state: the [`AgentSnapshot`] the tray window and `edge-agent
//! status` show, the [`AgentEvent`] stream behind notifications, and `state.json`.
//!
//! It owns those types and [`StateHandle`], the one way every subsystem reports what it is
//! doing: a change goes to the snapshot, to `state.json` (only in a process that runs the
//! agent) and to subscribers, in that order. It must never hold a secret (the types have no
//! field that could carry one) and never depend on another subsystem of the agent: it sits
//! at the bottom so that every room can report without reaching up into the service.

pub mod file;

pub use file::StateFile;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

/// How many finished or running jobs the snapshot remembers.
pub const RECENT_JOBS: usize = 20;
const EVENT_BUFFER: usize = 256;

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
    /// How far a job that reports it got (a broadcast: recipients done of all).
    #[serde(default)]
    pub progress: Option<JobProgress>,
    /// What the job does, as data the window and the tray put in words from their
    /// catalogues (the core makes no sentences for people).
    #[serde(default)]
    pub summary: JobSummary,
    /// A browser job took a screenshot; the last one is kept and shown through
    /// `AgentService::job_screenshot` (its path never leaves the core).
    #[serde(default)]
    pub screenshot: bool,
}

/// `done` of `total` steps (a broadcast's recipients).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    pub done: u32,
    pub total: u32,
}

/// What a job does, in neutral data: its kind (the job type), the site of a browser job,
/// who gets a message, how many a broadcast goes to. Everything is optional: a job of
/// another kind, or a site known only once its adapter is resolved, shows what there is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSummary {
    #[serde(default)]
    pub site: Option<String>,
    /// `send_dm`: who gets the message, as the site names them.
    #[serde(default)]
    pub recipient: Option<String>,
    /// `broadcast_dm`: how many people the message goes to.
    #[serde(default)]
    pub recipients: Option<u32>,
    /// A dry run sends nothing.
    #[serde(default)]
    pub dry_run: bool,
}

impl JobSummary {
    /// What the job's payload says about it (a browser job's adapter name when the adapter
    /// is inline or one of the person's; a bundle's adapter is named once it is resolved).
    pub fn of(job_type: &str, payload: &serde_json::Value) -> JobSummary {
        use edge_protocol::jobs;
        let browser = [jobs::SEND_DM, jobs::BROADCAST_DM, jobs::SCHEDULE_POST, jobs::SCRAPE_SUBS];
        if !browser.contains(&job_type) {
            return JobSummary::default();
        }
        let text = |v: Option<&serde_json::Value>| {
            v.and_then(serde_json::Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
        };
        let adapter = payload.get("adapter");
        let site = text(adapter.and_then(|a| a.get("local"))).or_else(|| text(adapter.and_then(|a| a.get("name"))));
        let recipient = (job_type == jobs::SEND_DM)
            .then(|| text(payload.get("recipient")).or_else(|| text(payload.pointer("/params/recipient"))))
            .flatten();
        let recipients = (job_type == jobs::BROADCAST_DM)
            .then(|| payload.get("recipients").and_then(serde_json::Value::as_array).map(|r| r.len() as u32))
            .flatten();
        let dry_run = payload.get("dryRun").and_then(serde_json::Value::as_bool).unwrap_or(false);
        JobSummary { site, recipient, recipients, dry_run }
    }
}

/// What a running job tells as it goes; the executor puts it in the job's record and tells
/// the hub. Every call returns at once.
pub trait JobReport: Send + Sync {
    /// The site a browser job works on, once its adapter is resolved.
    fn site(&self, _site: &str) {}
    /// `done` of `total` (a broadcast's recipients).
    fn progress(&self, _done: u32, _total: u32) {}
    /// A screenshot the job's flow wrote (it may be overwritten by the next job: copy it).
    fn screenshot(&self, _path: &std::path::Path) {}
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
    /// When the person's pause ends by itself (RFC 3339 UTC); `None` while paused means
    /// until they resume. Kept in `pause.json`, so it survives a restart.
    #[serde(default)]
    pub paused_until: Option<String>,
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
    /// The tunnel: whether it is up and how many streams it carries.
    #[serde(default)]
    pub tunnel: TunnelSnapshot,
    /// While quiet hours hold (settings.json's `quietHours`), their end as `HH:MM` on this
    /// machine's clock: no new job starts until then.
    #[serde(default)]
    pub quiet_until: Option<String>,
    /// What this process ran today, for the person to set against their caps.
    #[serde(default)]
    pub usage: UsageSnapshot,
    /// What the person should know about updates of this program.
    #[serde(default)]
    pub updates: UpdateStatus,
    /// What this agent trusts that ends on a date (the hub's signing roots), each with its
    /// end and whether it is near or past (`crate::expiry` keeps it current).
    #[serde(default)]
    pub expiries: Vec<Expiry>,
}

/// Something the agent trusts that stops working on a date unless the hub renews it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Expiry {
    pub what: Expiring,
    /// RFC 3339 UTC, to the signed metadata's own precision (sub-second digits included).
    pub expires_at: String,
    /// Whether the end is near or past, as of the last look (see [`expiry_warning`]).
    #[serde(default)]
    pub warning: Option<ExpiryWarning>,
}

/// What expires. Each is signed by the hub operator's keys; the agent only follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Expiring {
    /// The newest trusted root of the hub's bundle repository: past it, every bundle job
    /// fails verification.
    BundleRoot,
    /// The newest trusted root of the hub's release repository: past it, updates stop.
    ReleaseRoot,
    /// Something a newer agent reports (read from its `state.json`): shown as is.
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ExpiryWarning {
    /// Within [`EXPIRY_WARNING_DAYS`] of the end.
    Soon,
    /// Past the end: what depends on it is refused.
    Expired,
}

/// How long before an end the person is warned: enough for an operator who must gather
/// offline root keys (often held by several people) to sign a new root.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// The warning for something that ends at `expires_at`, by this machine's clock `now`.
///
/// Expired exactly when `tough` refuses (its rule: metadata is good while `now <=
/// expires`), so the window never says "expired" of a root still accepted, nor the
/// opposite. Both use this machine's clock: a clock running ahead of the hub's sees the end
/// early, and is refused early by `tough` too, so the warning matches what the agent does.
pub fn expiry_warning(
    expires_at: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<ExpiryWarning> {
    if now > expires_at {
        return Some(ExpiryWarning::Expired);
    }
    // `signed_duration_since` cannot overflow for any pair of valid dates.
    let left = expires_at.signed_duration_since(now);
    (left <= chrono::TimeDelta::days(EXPIRY_WARNING_DAYS)).then_some(ExpiryWarning::Soon)
}

/// Updates as the person sees them (the updater keeps it current).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStatus {
    /// Another version of this program is installed on disk (by the updater, or by the
    /// system's package manager underneath the running copy): it runs from the next start.
    pub ready: Option<String>,
    /// A newer signed version is offered to this machine, but this copy does not replace
    /// itself (installed by the system's package manager, or the tray): the person updates
    /// through their package manager or installer.
    pub available: Option<String>,
    /// `available` is a package of the kind this program was installed from (deb, rpm),
    /// which the tray installs through the package manager when the person asks.
    #[serde(default)]
    pub installable: bool,
    /// Last time the hub's release metadata was read and verified (RFC 3339).
    pub last_verified_check: Option<String>,
    /// Whole days without a verified check, once more than seven: an agent that cannot
    /// reach its updates may be kept on an old version on purpose (a freeze attack), so the
    /// person is told.
    pub unreachable_days: Option<u32>,
}

/// Jobs started on one UTC day (the day of the egress meter, so that jobs and data count
/// over the same day). Counts new work since the agent started; resumed jobs were counted
/// when they first started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageSnapshot {
    /// `YYYY-MM-DD`, UTC; empty before the first job.
    pub day: String,
    pub jobs_today: u32,
}

impl UsageSnapshot {
    /// Counts a job started on `day`; a new day starts from zero.
    pub fn count_job_start(&mut self, day: &str) {
        if self.day != day {
            self.day = day.to_owned();
            self.jobs_today = 0;
        }
        self.jobs_today = self.jobs_today.saturating_add(1);
    }

    /// Jobs started on `day` (none when the count is of another day).
    pub fn jobs_on(&self, day: &str) -> u32 {
        if self.day == day {
            self.jobs_today
        } else {
            0
        }
    }
}

/// Today as `YYYY-MM-DD`, UTC: the day of the egress meter and of [`UsageSnapshot`].
pub fn utc_day_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{:04}-{:02}-{:02}", now.year(), u8::from(now.month()), now.day())
}

/// Where the tunnel stands (docs/tunnel.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelSnapshot {
    /// `off` (not granted, or paused), `connecting`, `open`.
    pub state: String,
    /// Streams open right now.
    pub streams: u32,
    /// The local services the person exposed, by name: `ADDRESS:PORT` (settings.json's
    /// `exposed`, re-read while the agent runs, so a change from the CLI shows in the tray).
    #[serde(default)]
    pub exposed: std::collections::BTreeMap<String, String>,
}

impl AgentSnapshot {
    pub(crate) fn empty() -> AgentSnapshot {
        AgentSnapshot {
            logged_in: false,
            hub_url: None,
            agent_id: None,
            creator_id: None,
            connection: ConnectionState::Offline,
            paused: false,
            paused_until: None,
            busy: 0,
            last_error: None,
            keychain_backend: None,
            recent_jobs: Vec::new(),
            root_fingerprint: None,
            browser: None,
            tunnel: TunnelSnapshot { state: "off".to_owned(), ..TunnelSnapshot::default() },
            quiet_until: None,
            usage: UsageSnapshot::default(),
            updates: UpdateStatus::default(),
            expiries: Vec::new(),
        }
    }
}

/// What happened, for the tray's notifications and the CLI's log. JSON:
/// `{"type":"jobFailed","id":"...","jobType":"http_request","code":"NETWORK","message":"..."}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum AgentEvent {
    /// Boxed: the snapshot is far larger than every other event.
    StateChanged {
        snapshot: Box<AgentSnapshot>,
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
    /// A job that reports progress moved on (a broadcast: `done` of `total` recipients).
    JobProgress {
        id: String,
        job_type: String,
        done: u32,
        total: u32,
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
    /// Another version is installed and runs from the next start (restart now or later).
    UpdateReady {
        version: String,
    },
    /// A newer version is offered that this copy does not install itself: the person
    /// updates through their package manager or installer.
    UpdateAvailable {
        version: String,
    },
    /// No verified update check for more than seven days.
    UpdatesUnreachable {
        days: u32,
    },
}

/// A cheap, cloneable handle on the observable state. Every clone reports into the same
/// snapshot, file and event stream.
#[derive(Clone)]
pub struct StateHandle {
    shared: Arc<Shared>,
}

struct Shared {
    data_dir: PathBuf,
    events: broadcast::Sender<AgentEvent>,
    /// A watch channel rather than a locked value: readers get the latest snapshot without
    /// waiting for a writer, and a change is one `send_modify`.
    snapshot: watch::Sender<AgentSnapshot>,
    /// Only a process that runs the agent writes `state.json`; `edge-agent status` must not
    /// overwrite the running agent's file with its own empty view.
    writes_state_file: AtomicBool,
}

impl StateHandle {
    /// State whose file (once enabled) is `<data_dir>/state.json`.
    pub fn new(data_dir: PathBuf) -> StateHandle {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (snapshot, _) = watch::channel(AgentSnapshot::empty());
        StateHandle {
            shared: Arc::new(Shared { data_dir, events, snapshot, writes_state_file: AtomicBool::new(false) }),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.shared.events.subscribe()
    }

    pub fn emit(&self, event: AgentEvent) {
        // No subscriber is fine: the CLI may not listen.
        let _ = self.shared.events.send(event);
    }

    pub fn snapshot(&self) -> AgentSnapshot {
        self.shared.snapshot.borrow().clone()
    }

    /// From now on, every change is written to `state.json`.
    pub fn enable_state_file(&self) {
        self.shared.writes_state_file.store(true, Ordering::Relaxed);
    }

    /// Applies `change`, then tells `state.json` and subscribers.
    pub fn update(&self, change: impl FnOnce(&mut AgentSnapshot)) {
        let mut snapshot = None;
        self.shared.snapshot.send_modify(|current| {
            change(current);
            snapshot = Some(current.clone());
        });
        let Some(snapshot) = snapshot else { return };
        self.persist(&snapshot, true);
        self.emit(AgentEvent::StateChanged { snapshot: Box::new(snapshot) });
    }

    /// Writes the current snapshot with `running` (false once the agent stopped).
    pub fn persist_current(&self, running: bool) {
        self.persist(&self.snapshot(), running);
    }

    fn persist(&self, snapshot: &AgentSnapshot, running: bool) {
        if !self.shared.writes_state_file.load(Ordering::Relaxed) {
            return;
        }
        let file = StateFile {
            pid: std::process::id(),
            running,
            updated_at: crate::now_rfc3339(),
            snapshot: snapshot.clone(),
        };
        if let Err(e) = file.write(&self.shared.data_dir) {
            tracing::warn!(error = %e, "could not write state.json");
        }
    }

    /// A running job reported how far it got: its record shows it, subscribers hear it.
    pub fn job_progress(&self, id: &str, done: u32, total: u32) {
        let mut job_type = None;
        self.update(|s| {
            if let Some(record) = s.recent_jobs.iter_mut().find(|r| r.id == id) {
                record.progress = Some(JobProgress { done, total });
                job_type = Some(record.job_type.clone());
            }
        });
        if let Some(job_type) = job_type {
            self.emit(AgentEvent::JobProgress { id: id.to_owned(), job_type, done, total });
        }
    }

    /// Changes what the record of job `id` says it does (a browser job's site, known once
    /// its adapter is resolved; a screenshot taken).
    pub fn job_details(&self, id: &str, change: impl FnOnce(&mut JobRecord)) {
        self.update(|s| {
            if let Some(record) = s.recent_jobs.iter_mut().find(|r| r.id == id) {
                change(record);
            }
        });
    }

    /// Puts `record` first in the recent jobs (replacing an older record of the same job).
    pub fn push_job(&self, record: JobRecord) {
        self.update(|s| {
            s.recent_jobs.retain(|r| r.id != record.id);
            s.recent_jobs.insert(0, record);
            s.recent_jobs.truncate(RECENT_JOBS);
        });
    }
}
