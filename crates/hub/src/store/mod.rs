//! Owns the hub's persistence contract: the [`Store`] trait and the records it returns.
//! Every SQL statement lives behind this trait, in one body shared by both engines
//! ([`sql`], instantiated by [`sqlite`] and [`postgres`]); handlers, sessions, the
//! dispatcher and the sweeper must never build SQL themselves.
//!
//! Job state changes are compare-and-set on the current status and the lease's fencing
//! token, which is what keeps a job from being leased twice and a late result from
//! overwriting a newer attempt. The store applies transitions; it never decides policy
//! (whether an error is retried, how long to back off): callers pass the decision in.

#[macro_use]
mod sql;
pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;
use serde_json::Value;
use std::fmt;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error in the SQLite job writer: {0}")]
    JobWriter(#[from] rusqlite::Error),
    /// A writer the store relies on is not running (the hub is stopping, or it failed).
    #[error("the hub's job writer is not running: {0}")]
    WriterStopped(String),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("database URL {url:?} is not supported: {reason}")]
    UnsupportedUrl { url: String, reason: String },
    #[error("cannot create the database directory {path}: {source}")]
    CreateDir { path: String, source: std::io::Error },
    #[error("cannot create the database file {path} (mode 0600): {source}")]
    CreateFile { path: String, source: std::io::Error },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Where a job is in its life (SQS's names where SQS has one):
/// pending → leased → running → succeeded | failed | dead | cancelled, with expired or
/// retried leases going back to pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Waiting for an agent (possibly not before `run_at`).
    Pending,
    /// Handed to an agent that has not acknowledged it yet; the lease runs and nothing
    /// extends it (see [`Store::extend_leases`]).
    Leased,
    /// Acknowledged by its agent; the lease runs and heartbeats extend it.
    Running,
    Succeeded,
    /// Failed with a code that retrying cannot fix.
    Failed,
    /// Out of deliveries (`max_receive_count`): in the dead-letter list until redriven.
    Dead,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Pending,
        JobState::Leased,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Dead,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Leased => "leased",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Nothing happens to a job in a final state except a redrive (dead) or the purge.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Dead | JobState::Cancelled)
    }

    /// An agent holds the job.
    pub fn is_held(self) -> bool {
        matches!(self, JobState::Leased | JobState::Running)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    pub id: String,
    pub creator_id: String,
    /// Ed25519 public key, 32 bytes, standard base64.
    pub public_key: String,
    pub name: Option<String>,
    pub version: Option<String>,
    pub created_at: i64,
    pub last_heartbeat_at: Option<i64>,
    pub connected_at: Option<i64>,
    /// As last written by a hub process; see [`AgentRecord::is_online`].
    pub online: bool,
    /// As announced in the agent's last `hello`.
    pub labels: Vec<String>,
    pub slots: Option<i64>,
}

impl AgentRecord {
    /// Online = some hub process says it is connected and it was heard from within
    /// `stale_after_ms` (3 heartbeat intervals). The second half covers a hub process that
    /// died without marking its agents offline.
    pub fn is_online(&self, now: i64, stale_after_ms: i64) -> bool {
        let last_seen = self.last_heartbeat_at.max(self.connected_at).unwrap_or(0);
        self.online && last_seen >= now.saturating_sub(stale_after_ms)
    }
}

#[derive(Debug, Clone)]
pub struct NewAgent {
    pub id: String,
    pub public_key: String,
    pub name: Option<String>,
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRecord {
    pub name: Option<String>,
    /// `None`: an operator key (every creator). `Some`: only this creator's jobs and agents.
    pub creator_id: Option<String>,
}

/// An API key as `edge-hub api-key list` shows it: never the key, and of its hash only
/// the first [`API_KEY_ID_CHARS`] characters, enough to name it for `revoke`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySummary {
    pub id: String,
    pub name: Option<String>,
    /// `None`: an operator key.
    pub creator_id: Option<String>,
    pub created_at: i64,
}

/// Hash characters that name a key in `api-key list|revoke`.
pub const API_KEY_ID_CHARS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOutcome {
    Revoked,
    NotFound,
    /// More than one key's hash starts with the given id: give more of it.
    Ambiguous,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub job_type: String,
    pub payload: Value,
    pub status: JobState,
    pub creator_id: String,
    /// The agent the operator asked for, if any.
    pub target_agent_id: Option<String>,
    /// Labels an agent must all have to take the job.
    pub labels: Vec<String>,
    pub priority: i64,
    /// Not handed out before this (Unix ms): the schedule, or the retry backoff.
    pub run_at: i64,
    pub idempotency_key: Option<String>,
    /// The agent holding the job now (leased/running) or that finished it.
    pub assigned_agent_id: Option<String>,
    /// Fencing token of the current (or last) lease; raised by every lease.
    pub lease_token: i64,
    pub lease_expires_at: Option<i64>,
    /// Deliveries since submission or the last redrive.
    pub attempts: i64,
    pub max_receive_count: i64,
    pub visibility_timeout_ms: i64,
    pub cancel_requested: bool,
    pub result: Option<Value>,
    pub error: Option<Value>,
    pub error_code: Option<String>,
    /// Recipients the dedupe ledger removed at submission: `[{recipient, reason, lastSentAt}]`.
    pub skipped_recipients: Option<Value>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

#[cfg(test)]
impl JobRecord {
    /// A running job on its `attempts`-th delivery, for unit tests to adjust.
    pub(crate) fn sample(attempts: i64) -> JobRecord {
        JobRecord {
            id: "job_1".into(),
            job_type: "t".into(),
            payload: Value::Object(Default::default()),
            status: JobState::Running,
            creator_id: "c".into(),
            target_agent_id: None,
            labels: vec![],
            priority: 0,
            run_at: 0,
            idempotency_key: None,
            assigned_agent_id: Some("agt".into()),
            lease_token: attempts,
            lease_expires_at: None,
            attempts,
            max_receive_count: 5,
            visibility_timeout_ms: 1000,
            cancel_requested: false,
            result: None,
            error: None,
            error_code: None,
            skipped_recipients: None,
            created_at: 0,
            updated_at: 0,
            finished_at: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub job_type: String,
    pub payload: Value,
    pub creator_id: String,
    pub target_agent_id: Option<String>,
    pub labels: Vec<String>,
    pub priority: i64,
    pub run_at: i64,
    pub idempotency_key: Option<String>,
    pub max_receive_count: i64,
    pub visibility_timeout_ms: i64,
    pub skipped_recipients: Option<Value>,
    /// `Some` creates the job already final (e.g. cancelled because every recipient was
    /// skipped), with this error.
    pub final_state: Option<(JobState, Value)>,
}

#[derive(Debug, Clone)]
pub enum InsertOutcome {
    Created(JobRecord),
    /// A job with the same idempotency key (for the same creator) already exists.
    Existing(JobRecord),
}

/// Filters of `GET /v1/jobs` and the dead-letter list. `None` means any.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<JobState>,
    pub job_type: Option<String>,
    pub creator_id: Option<String>,
    pub agent_id: Option<String>,
    pub error_code: Option<String>,
    /// Jobs created strictly before this job (by `created_at`, then id): a page cursor.
    pub before: Option<(i64, String)>,
    pub limit: i64,
}

/// What an agent can take: its identity, labels and (when it announced them) the job
/// types it runs.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub agent_id: String,
    pub creator_id: String,
    pub labels: Vec<String>,
    /// `None`: the agent announced no capabilities (a prototype peer) and takes any type.
    pub job_types: Option<Vec<String>>,
}

/// Agents that can take the same jobs (one creator, one label set, one capability list),
/// claimed for together so one round trip leases work for all of them.
#[derive(Debug, Clone)]
pub struct ClaimGroup {
    pub creator_id: String,
    pub labels: Vec<String>,
    /// `None`: the agents announced no capabilities (prototype peers) and take any type.
    pub job_types: Option<Vec<String>>,
    /// Types the agents may not take now, whatever `job_types` says: a prototype peer's open
    /// circuit breaker withholds the browser types from "any type". Empty: none withheld.
    pub excluded_job_types: Vec<String>,
    /// Agents in the order they are served, each with how many jobs it may take now. Jobs
    /// are dealt out one per agent in turn, so several agents of a creator share the work.
    pub agents: Vec<(String, u32)>,
}

impl ClaimGroup {
    pub fn single(request: &ClaimRequest, slots: u32) -> ClaimGroup {
        ClaimGroup {
            creator_id: request.creator_id.clone(),
            labels: request.labels.clone(),
            job_types: request.job_types.clone(),
            excluded_job_types: Vec::new(),
            agents: vec![(request.agent_id.clone(), slots)],
        }
    }

    pub fn free_slots(&self) -> u64 {
        self.agents.iter().map(|(_, slots)| u64::from(*slots)).sum()
    }
}

/// How a job held by an agent ends, as decided by the caller from the agent's report.
#[derive(Debug, Clone)]
pub enum Transition {
    Succeeded,
    /// Not retryable: final.
    Failed,
    /// Back to pending, visible again at `run_at`; `payload` replaces the stored payload
    /// (recipients already messaged are removed before the next delivery).
    Retry {
        run_at: i64,
        payload: Option<Value>,
    },
    /// Out of deliveries.
    Dead,
    Cancelled,
    /// The agent did not start the job (paused): back to pending at once.
    Release,
}

impl Transition {
    pub fn state(&self) -> JobState {
        match self {
            Transition::Succeeded => JobState::Succeeded,
            Transition::Failed => JobState::Failed,
            Transition::Retry { .. } | Transition::Release => JobState::Pending,
            Transition::Dead => JobState::Dead,
            Transition::Cancelled => JobState::Cancelled,
        }
    }

    /// The outcome written into the attempts history.
    pub fn outcome(&self) -> &'static str {
        match self {
            Transition::Succeeded => "succeeded",
            Transition::Failed => "failed",
            Transition::Retry { .. } => "retry",
            Transition::Dead => "dead",
            Transition::Cancelled => "cancelled",
            Transition::Release => "released",
        }
    }
}

/// An agent's report on a job it was leased, with the caller's decision.
#[derive(Debug, Clone)]
pub struct FinishRequest {
    pub job_id: String,
    pub agent_id: String,
    /// The fencing token of the lease the report belongs to.
    pub lease_token: i64,
    pub transition: Transition,
    pub result: Option<Value>,
    pub error: Option<Value>,
    /// Recipients to write into the dedupe ledger (messages the agent says it sent).
    pub sent_recipients: Vec<String>,
    /// Recipients whose message may or may not have gone out (the agent cannot tell):
    /// recorded as uncertain, listed for the operator, not refused by the cool-off.
    pub uncertain_recipients: Vec<String>,
}

/// One lease: the job, its holder and the lease's fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRef {
    pub job_id: String,
    pub agent_id: String,
    pub lease_token: i64,
}

/// Job writes of several callers, written in one transaction (see [`Store::write_jobs`]).
#[derive(Debug, Clone, Default)]
pub struct JobWriteBatch {
    pub inserts: Vec<NewJob>,
    pub starts: Vec<LeaseRef>,
    pub finishes: Vec<FinishRequest>,
    pub claims: Vec<ClaimGroup>,
}

impl JobWriteBatch {
    pub fn len(&self) -> usize {
        self.inserts.len() + self.starts.len() + self.finishes.len() + self.claims.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The answers to a [`JobWriteBatch`], each list in the order of its requests.
#[derive(Debug, Clone, Default)]
pub struct JobWriteAnswers {
    pub inserted: Vec<InsertOutcome>,
    pub started: Vec<bool>,
    pub finished: Vec<FinishOutcome>,
    pub claimed: Vec<Vec<JobRecord>>,
}

/// What recording a report did.
#[derive(Debug, Clone, PartialEq)]
pub enum FinishOutcome {
    /// Applied: the job is now in this state.
    Recorded(JobState),
    /// The same lease already reported (a resend after a reconnect): nothing changes.
    AlreadyFinished,
    /// The report belongs to an older lease of this agent: kept in the attempts history as
    /// `stale`, the job is untouched.
    Stale,
    /// The job is unknown, or this agent never held it: nothing changes.
    NotHeld,
}

/// A lease that ran out, as the sweeper applied it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpiredLease {
    pub job_id: String,
    pub agent_id: Option<String>,
    /// pending (delivered again), dead (out of deliveries) or cancelled (cancel requested).
    pub new_state: JobState,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// It was pending (or scheduled): cancelled now.
    Cancelled(JobRecord),
    /// An agent holds it: marked cancel-requested; tell that agent.
    Requested(JobRecord),
    /// Already final: nothing changes.
    AlreadyFinal(JobRecord),
    NotFound,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    pub lease_token: i64,
    pub agent_id: String,
    pub leased_at: i64,
    pub ended_at: Option<i64>,
    /// `None` while the lease is held.
    pub outcome: Option<String>,
    pub result: Option<Value>,
    pub error: Option<Value>,
}

/// Per-creator limits; `None` is unlimited. Over a limit jobs wait in `pending`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreatorLimits {
    pub max_concurrent: Option<i64>,
    /// Job type → most leases per rolling hour.
    pub max_per_hour: std::collections::BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LedgerEntry {
    pub recipient: String,
    pub last_sent_at: i64,
}

/// A ledger entry of a message whose outcome is unknown, for the operator's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UncertainRecipient {
    pub creator_id: String,
    pub recipient: String,
    /// When the agent reported it, ms since the epoch.
    pub reported_at: i64,
    pub job_id: String,
}

/// Which dead jobs a redrive moves. `None` means any.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RedriveFilter {
    pub job_type: Option<String>,
    pub creator_id: Option<String>,
    pub error_code: Option<String>,
    /// Died at or after (Unix ms).
    pub dead_from: Option<i64>,
    /// Died at or before (Unix ms).
    pub dead_to: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedriveStatus {
    Running,
    Completed,
    Cancelled,
}

impl RedriveStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RedriveStatus::Running => "running",
            RedriveStatus::Completed => "completed",
            RedriveStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RedriveRecord {
    pub id: String,
    pub status: RedriveStatus,
    pub filter: RedriveFilter,
    pub rate_per_sec: i64,
    /// Dead jobs matching the filter when the move started.
    pub total: i64,
    pub moved: i64,
    pub last_step_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RedriveStart {
    Started(RedriveRecord),
    /// A move over an overlapping queue (job type, or all types) is still running.
    Busy(RedriveRecord),
}

/// Jobs per (type, status) and the age of the oldest, for metrics and the operator page.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDepth {
    pub job_type: String,
    pub status: JobState,
    pub count: i64,
    pub oldest_created_at: i64,
}

/// Something another hub process sharing the database must hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubEvent {
    /// New work may be visible: run a dispatch pass.
    JobAvailable,
    /// An operator asked to cancel a job this agent holds: send it `job_cancel`.
    CancelRequested { job_id: String, agent_id: String },
    /// The job reached a final state (sync waiters poll it).
    JobFinished { job_id: String },
}

impl HubEvent {
    /// Compact text for a NOTIFY payload. Job and agent ids are generated by the hub
    /// (`job_…`, `agt_…`) and never contain `:`.
    pub fn encode(&self) -> String {
        match self {
            HubEvent::JobAvailable => "a".to_owned(),
            HubEvent::CancelRequested { job_id, agent_id } => format!("c:{job_id}:{agent_id}"),
            HubEvent::JobFinished { job_id } => format!("f:{job_id}"),
        }
    }

    pub fn decode(text: &str) -> Option<HubEvent> {
        let mut parts = text.splitn(3, ':');
        match (parts.next()?, parts.next(), parts.next()) {
            ("a", None, None) => Some(HubEvent::JobAvailable),
            ("c", Some(job_id), Some(agent_id)) => {
                Some(HubEvent::CancelRequested { job_id: job_id.to_owned(), agent_id: agent_id.to_owned() })
            }
            ("f", Some(job_id), None) => Some(HubEvent::JobFinished { job_id: job_id.to_owned() }),
            _ => None,
        }
    }
}

/// The answer of a bulk store call made for one job.
fn only_answer<T>(mut answers: Vec<T>, job_id: &str) -> Result<T, StoreError> {
    match (answers.pop(), answers.is_empty()) {
        (Some(answer), true) => Ok(answer),
        _ => Err(StoreError::Corrupt(format!("a store call for job {job_id} did not give exactly one answer"))),
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`, for logs and metrics.
    fn engine(&self) -> &'static str;
    /// True when no other hub process can share this database (SQLite): at startup every
    /// lease then belongs to a session of a previous run.
    fn exclusive(&self) -> bool;
    /// A trivial round trip, for `/health`.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Waits for open connections to finish and closes them.
    async fn close(&self);

    /// Tells every hub process on this database (this one included, possibly) about `event`.
    /// A no-op where the engine has no notification channel; the periodic poll covers it.
    async fn publish(&self, event: &HubEvent) -> Result<(), StoreError>;
    /// Events published by any process, until the store closes. `None`: the engine has no
    /// notification channel.
    async fn subscribe(&self) -> Result<Option<mpsc::UnboundedReceiver<HubEvent>>, StoreError>;

    /// Returns the stored value of `key`, storing `value_if_absent` first when there is none.
    async fn setting_or_init(&self, key: &str, value_if_absent: &str) -> Result<String, StoreError>;

    async fn create_enrollment_token(
        &self,
        token_hash: &str,
        creator_id: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError>;
    /// Consumes the token and registers the agent in one transaction. `None` when the token
    /// is unknown, used or expired.
    async fn enroll_agent(
        &self,
        token_hash: &str,
        agent: NewAgent,
        now: i64,
    ) -> Result<Option<AgentRecord>, StoreError>;

    async fn agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError>;
    /// All agents, or one creator's.
    async fn agents(&self, creator_id: Option<&str>) -> Result<Vec<AgentRecord>, StoreError>;
    async fn mark_agent_connected(&self, agent_id: &str, now: i64) -> Result<(), StoreError>;
    async fn mark_agent_disconnected(&self, agent_id: &str) -> Result<(), StoreError>;
    /// Agents not heard from since `before` are offline, whichever process had them.
    async fn mark_stale_agents_offline(&self, before: i64) -> Result<u64, StoreError>;
    async fn record_heartbeat(&self, agent_id: &str, version: Option<&str>, now: i64) -> Result<(), StoreError>;
    /// What the agent announced in `hello`.
    async fn record_hello(
        &self,
        agent_id: &str,
        version: Option<&str>,
        labels: &[String],
        slots: i64,
        now: i64,
    ) -> Result<(), StoreError>;

    /// Stores a single-use nonce and drops expired ones.
    async fn create_nonce(&self, agent_id: &str, nonce: &str, expires_at: i64, now: i64) -> Result<(), StoreError>;
    /// Deletes the nonce; true only if it existed for this agent and had not expired.
    async fn consume_nonce(&self, agent_id: &str, nonce: &str, now: i64) -> Result<bool, StoreError>;

    async fn create_api_key(
        &self,
        key_hash: &str,
        name: Option<&str>,
        creator_id: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError>;
    async fn api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Every API key, oldest first, named by the start of its hash.
    async fn list_api_keys(&self) -> Result<Vec<ApiKeySummary>, StoreError>;
    /// Deletes the one key whose hash starts with `id` (lowercase hex).
    async fn revoke_api_key(&self, id: &str) -> Result<RevokeOutcome, StoreError>;

    /// Inserts the jobs in one transaction; for each, in order, the new job or the existing
    /// one with the same (creator, idempotency key), which may be earlier in the same list.
    async fn insert_jobs(&self, jobs: &[NewJob], now: i64) -> Result<Vec<InsertOutcome>, StoreError>;
    /// [`Store::insert_jobs`] for one job.
    async fn insert_job(&self, job: NewJob, now: i64) -> Result<InsertOutcome, StoreError> {
        only_answer(self.insert_jobs(std::slice::from_ref(&job), now).await?, &job.id)
    }
    async fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError>;
    async fn job_by_idempotency_key(&self, creator_id: &str, key: &str) -> Result<Option<JobRecord>, StoreError>;
    /// Newest first.
    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError>;
    /// The attempts history of a job, oldest first (stale results included).
    async fn job_attempts(&self, job_id: &str) -> Result<Vec<AttemptRecord>, StoreError>;
    /// Is any pending job visible at `now`? A cheap check before a dispatch pass.
    async fn any_ready(&self, now: i64) -> Result<bool, StoreError>;

    /// Leases the best visible jobs (highest priority, then earliest `run_at`) the group's
    /// agents may take, within their free slots and their creator's limits, in one
    /// transaction: pending → leased to one of the agents (`assigned_agent_id`), attempts + 1,
    /// a new fencing token, lease until now + the job's visibility timeout. A job that names
    /// an agent goes to that agent only. Atomic across processes. Returned in claim order.
    async fn claim_jobs(&self, group: &ClaimGroup, now: i64) -> Result<Vec<JobRecord>, StoreError>;
    /// [`Store::claim_jobs`] for one agent and one job.
    async fn claim_job(&self, request: &ClaimRequest, now: i64) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.claim_jobs(&ClaimGroup::single(request, 1), now).await?.into_iter().next())
    }
    /// leased → running by the lease holder (`job_ack`), extending the lease; for many
    /// leases in one statement. True, in order, for each lease that is now running.
    async fn start_jobs(&self, leases: &[LeaseRef], now: i64) -> Result<Vec<bool>, StoreError>;
    /// [`Store::start_jobs`] for one lease.
    async fn start_job(&self, job_id: &str, agent_id: &str, lease_token: i64, now: i64) -> Result<bool, StoreError> {
        let lease = LeaseRef { job_id: job_id.to_owned(), agent_id: agent_id.to_owned(), lease_token };
        Ok(self.start_jobs(&[lease], now).await?.first().copied().unwrap_or(false))
    }
    /// Extends the leases of the acknowledged (running) jobs this agent holds (one job for
    /// `job_progress`, all for `hb`) to now + each job's visibility timeout, like SQS's
    /// ChangeMessageVisibility. A job leased but never acknowledged keeps its first lease.
    async fn extend_leases(&self, agent_id: &str, job_id: Option<&str>, now: i64) -> Result<u64, StoreError>;

    /// Ends at `now` the leases `agent_id` holds on jobs not in `keep` (the agent's `hello`
    /// lists what it still runs), so the sweeper retries them; returns how many.
    async fn release_unclaimed_leases(&self, agent_id: &str, keep: &[String], now: i64) -> Result<u64, StoreError>;
    /// Applies agents' reports under their leases' fencing tokens, in one transaction; see
    /// [`FinishOutcome`]. Outcomes in order.
    async fn finish_jobs(&self, requests: &[FinishRequest], now: i64) -> Result<Vec<FinishOutcome>, StoreError>;
    /// [`Store::finish_jobs`] for one report.
    async fn finish_job(&self, request: FinishRequest, now: i64) -> Result<FinishOutcome, StoreError> {
        only_answer(self.finish_jobs(std::slice::from_ref(&request), now).await?, &request.job_id)
    }
    /// [`Store::insert_jobs`], [`Store::start_jobs`], [`Store::finish_jobs`] and then
    /// [`Store::claim_jobs`] for each group, all in one transaction: one commit for what many
    /// callers wrote meanwhile. A claim sees what the reports before it freed. If any part
    /// fails, nothing is written.
    async fn write_jobs(&self, batch: &JobWriteBatch, now: i64) -> Result<JobWriteAnswers, StoreError>;
    /// A writer of job groups for [`crate::writes::JobWrites`]' thread that needs no runtime
    /// round trip per group, if the engine has one; else the thread waits on
    /// [`Store::write_jobs`].
    fn group_writer(&self) -> Option<Box<dyn crate::writes::GroupWriter>> {
        None
    }
    /// leased (never acknowledged) → pending for one agent's jobs (its session ended), or
    /// for every agent with `None` (startup of an exclusive store).
    async fn release_unstarted_jobs(&self, agent_id: Option<&str>, now: i64) -> Result<u64, StoreError>;
    /// Leases that ran out by `now`: back to pending, or dead when out of deliveries, or
    /// cancelled when a cancel was requested.
    async fn expire_leases(&self, now: i64) -> Result<Vec<ExpiredLease>, StoreError>;
    async fn request_cancel(&self, job_id: &str, now: i64) -> Result<CancelOutcome, StoreError>;
    /// (job id, fencing token) of every job this agent holds now.
    async fn held_jobs(&self, agent_id: &str) -> Result<Vec<(String, i64)>, StoreError>;
    /// Jobs this agent holds whose cancel was requested (re-sent when it reconnects).
    async fn cancel_requests_for(&self, agent_id: &str) -> Result<Vec<String>, StoreError>;

    async fn creator_limits(&self, creator_id: &str) -> Result<CreatorLimits, StoreError>;
    /// Replaces the creator's limits.
    async fn set_creator_limits(&self, creator_id: &str, limits: &CreatorLimits, now: i64) -> Result<(), StoreError>;

    /// Ledger entries of `recipients` (normalised) for this creator sent at or after `since`;
    /// uncertain entries are not among them (they do not block a new message).
    async fn recent_recipients(
        &self,
        creator_id: &str,
        recipients: &[String],
        since: i64,
    ) -> Result<Vec<LedgerEntry>, StoreError>;

    /// Uncertain ledger entries (of one creator, or all), newest first.
    async fn uncertain_recipients(
        &self,
        creator_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<UncertainRecipient>, StoreError>;

    /// Starts a redrive unless one over an overlapping queue of an overlapping creator is
    /// running (`None` overlaps everything).
    async fn start_redrive(
        &self,
        id: &str,
        filter: &RedriveFilter,
        rate_per_sec: i64,
        now: i64,
    ) -> Result<RedriveStart, StoreError>;
    async fn redrive(&self, id: &str) -> Result<Option<RedriveRecord>, StoreError>;
    async fn running_redrives(&self) -> Result<Vec<RedriveRecord>, StoreError>;
    /// Moves as many dead jobs as the rate allows since the last step (at most one second's
    /// worth), at most once per instant across processes. Returns the updated record when
    /// this call made the step.
    async fn redrive_step(&self, id: &str, now: i64) -> Result<Option<RedriveRecord>, StoreError>;

    /// Deletes final jobs (and their history) finished before `before`, up to `limit`.
    async fn purge_finished_jobs(&self, before: i64, limit: i64) -> Result<u64, StoreError>;
    /// Deletes ledger entries older than `before` (outside every cool-off window).
    async fn purge_ledger(&self, before: i64) -> Result<u64, StoreError>;
    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError>;

    /// Records that `route.agent_id`'s tunnel is open on `route.instance_id`, replacing any
    /// earlier route of that agent (a reconnect, here or on another instance, wins).
    async fn put_tunnel_route(&self, route: &NewTunnelRoute, now: i64) -> Result<(), StoreError>;
    /// Refreshes `seen_at` of the route `tunnel_id` wrote; false when another tunnel of the
    /// agent has replaced it since (or it was removed).
    async fn touch_tunnel_route(&self, agent_id: &str, tunnel_id: &str, now: i64) -> Result<bool, StoreError>;
    /// Removes the agent's route only while it is still the one `tunnel_id` wrote.
    async fn remove_tunnel_route(&self, agent_id: &str, tunnel_id: &str) -> Result<bool, StoreError>;
    /// Every route seen at or after `seen_since`, with the agent's creator and labels, by
    /// agent id; staler rows are left by instances that died and are ignored.
    async fn tunnel_routes(&self, seen_since: i64) -> Result<Vec<TunnelRoute>, StoreError>;
    /// Deletes routes not seen since `before`: those of instances that died without
    /// removing them (a live tunnel refreshes its route every keep-alive).
    async fn purge_tunnel_routes(&self, before: i64) -> Result<u64, StoreError>;

    /// Stores a new device sign-in and deletes those expired more than
    /// [`DEVICE_CODE_KEEP_MS`] ago.
    async fn create_device_code(&self, code: &NewDeviceCode, now: i64) -> Result<(), StoreError>;
    /// The device sign-in a user code (its hash) names, whatever its state.
    async fn device_code_by_user_code(&self, user_code_hash: &str) -> Result<Option<DeviceCodeRecord>, StoreError>;
    /// Records the decision on a pending, unexpired device sign-in; approving also records
    /// the creator. `None` when no pending, unexpired code has this hash (compare-and-set:
    /// of two decisions racing, one wins).
    async fn decide_device_code(
        &self,
        user_code_hash: &str,
        decision: &DeviceDecision,
        now: i64,
    ) -> Result<Option<DeviceCodeRecord>, StoreError>;
    /// One poll of the device grant, following [`DeviceCodeRecord::poll_step`], in one
    /// transaction that holds the row: an approved code enrolls the agent as `agent_id`
    /// exactly once (the same agent record as enroll), however many polls race.
    async fn poll_device_code(
        &self,
        device_code_hash: &str,
        agent_id: &str,
        now: i64,
    ) -> Result<DevicePoll, StoreError>;
    /// Does this hub know the creator (an enrollment token, an agent or an API key of it)?
    async fn creator_known(&self, creator_id: &str) -> Result<bool, StoreError>;
}

/// Where a device code is in its life: pending → approved | denied (on the hub's page) →
/// used (the agent redeemed the approval, once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceCodeStatus {
    Pending,
    Approved,
    Denied,
    Used,
}

impl DeviceCodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceCodeStatus::Pending => "pending",
            DeviceCodeStatus::Approved => "approved",
            DeviceCodeStatus::Denied => "denied",
            DeviceCodeStatus::Used => "used",
        }
    }

    pub fn parse(text: &str) -> Option<DeviceCodeStatus> {
        [DeviceCodeStatus::Pending, DeviceCodeStatus::Approved, DeviceCodeStatus::Denied, DeviceCodeStatus::Used]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// A device sign-in as the hub stores it when the agent asks for codes. Both codes are
/// kept only as their SHA-256.
#[derive(Debug, Clone)]
pub struct NewDeviceCode {
    pub device_code_hash: String,
    pub user_code_hash: String,
    /// The agent's Ed25519 public key, as enroll takes it.
    pub public_key: String,
    pub name: Option<String>,
    pub version: Option<String>,
    pub interval_ms: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceCodeRecord {
    pub public_key: String,
    pub name: Option<String>,
    pub version: Option<String>,
    pub status: DeviceCodeStatus,
    /// Set by an approval.
    pub creator_id: Option<String>,
    /// Set when the agent redeemed the approval.
    pub agent_id: Option<String>,
    /// The agent's polling interval now (raised by each `slow_down`).
    pub interval_ms: i64,
    pub created_at: i64,
    pub expires_at: i64,
    /// The last poll, or `created_at` before the first: the first poll also waits.
    pub last_poll_at: i64,
}

/// How much `slow_down` adds to a device's interval (RFC 8628 §3.5).
pub const SLOW_DOWN_STEP_MS: i64 = 5_000;
/// Device codes are kept this long past their expiry, so a late poll is told
/// `expired_token` rather than `invalid_grant`; older ones are deleted.
pub const DEVICE_CODE_KEEP_MS: i64 = 24 * 3_600_000;

/// What a poll of the device grant does, decided from the stored record alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevicePollStep {
    /// Expired, or already redeemed: nothing is written.
    Expired,
    /// Polled sooner than the interval allows: the interval grows.
    SlowDown,
    Pending,
    Denied,
    /// Approved: the agent is enrolled now and the code is used.
    Redeem,
}

impl DeviceCodeRecord {
    /// The poll rule. A poll counts as too soon when it comes less than four fifths of the
    /// interval after the previous one: the agent waits the whole interval on its own clock,
    /// and the fifth absorbs the clock differences between hub instances sharing a database.
    pub fn poll_step(&self, now: i64) -> DevicePollStep {
        if self.status == DeviceCodeStatus::Used || now >= self.expires_at {
            return DevicePollStep::Expired;
        }
        if now - self.last_poll_at < self.interval_ms - self.interval_ms / 5 {
            return DevicePollStep::SlowDown;
        }
        match self.status {
            DeviceCodeStatus::Pending => DevicePollStep::Pending,
            DeviceCodeStatus::Denied => DevicePollStep::Denied,
            DeviceCodeStatus::Approved => DevicePollStep::Redeem,
            DeviceCodeStatus::Used => DevicePollStep::Expired,
        }
    }
}

/// What a poll answered (see [`Store::poll_device_code`]).
#[derive(Debug, Clone, PartialEq)]
pub enum DevicePoll {
    /// No such device code.
    Unknown,
    Expired,
    /// The interval the device must keep from now on.
    SlowDown {
        interval_ms: i64,
    },
    Pending,
    Denied,
    /// The approval was redeemed: this agent now exists.
    Enrolled(AgentRecord),
}

/// The person's decision on the approval page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceDecision {
    Approve { creator_id: String },
    Deny,
}

/// A tunnel route as an instance writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTunnelRoute {
    pub agent_id: String,
    /// Unique per tunnel (instance id and a serial), so a late removal by a replaced tunnel
    /// cannot delete its successor's route.
    pub tunnel_id: String,
    pub instance_id: String,
    /// Where other instances open streams through this instance (`ws://…` or `http://…`).
    pub relay_url: String,
}

/// A route as read, joined with the agent (whose creator and labels choose exits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelRoute {
    pub agent_id: String,
    pub tunnel_id: String,
    pub instance_id: String,
    pub relay_url: String,
    pub creator_id: String,
    pub labels: Vec<String>,
    pub opened_at: i64,
    pub seen_at: i64,
}
