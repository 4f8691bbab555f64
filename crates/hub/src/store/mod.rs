//! Owns the hub's persistence contract: the [`Store`] trait and the records it returns.
//! Every SQL statement lives behind this trait (SQLite today in [`sqlite`], PostgreSQL
//! later), so handlers, sessions and the dispatcher must never build SQL themselves.
//! Job state changes are compare-and-set on the current status and holder, which is what
//! keeps a job from being assigned twice or finished by an agent that does not hold it.

pub mod sqlite;

use async_trait::async_trait;
use serde_json::Value;
use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("database URL {url:?} is not supported: {reason}")]
    UnsupportedUrl { url: String, reason: String },
    #[error("cannot create the database directory {path}: {source}")]
    CreateDir { path: String, source: std::io::Error },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Where a job is in its life: pending → assigned → acked → succeeded | failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Pending,
    Assigned,
    Acked,
    Succeeded,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Assigned => "assigned",
            JobState::Acked => "acked",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<JobState> {
        Some(match text {
            "pending" => JobState::Pending,
            "assigned" => JobState::Assigned,
            "acked" => JobState::Acked,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed)
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
    /// As last written by the dispatcher; the live answer is the connection registry.
    pub online: bool,
}

#[derive(Debug, Clone)]
pub struct NewAgent {
    pub id: String,
    pub public_key: String,
    pub name: Option<String>,
    pub version: Option<String>,
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
    /// The agent holding the job now (assigned/acked) or that finished it.
    pub assigned_agent_id: Option<String>,
    pub attempts: i64,
    pub result: Option<Value>,
    pub error: Option<Value>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub job_type: String,
    pub payload: Value,
    pub creator_id: String,
    pub target_agent_id: Option<String>,
}

/// How an agent says a job ended.
#[derive(Debug, Clone)]
pub enum JobOutcome {
    Succeeded { result: Option<Value> },
    Failed { error: Value },
}

/// What recording a job's outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishOutcome {
    Recorded,
    /// The same agent already reported this job (a resend after a reconnect): nothing changes.
    AlreadyFinished,
    /// The job is unknown, pending, or held by someone else: nothing changes.
    NotHeld,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A trivial round trip, for `/health`.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Waits for open connections to finish and closes them.
    async fn close(&self);

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
    async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError>;
    async fn mark_agent_connected(&self, agent_id: &str, now: i64) -> Result<(), StoreError>;
    async fn mark_agent_disconnected(&self, agent_id: &str) -> Result<(), StoreError>;
    /// At startup no agent is connected, whatever the last run left behind.
    async fn mark_all_agents_offline(&self) -> Result<(), StoreError>;
    async fn record_heartbeat(&self, agent_id: &str, version: Option<&str>, now: i64) -> Result<(), StoreError>;

    /// Stores a single-use nonce and drops expired ones.
    async fn create_nonce(&self, agent_id: &str, nonce: &str, expires_at: i64, now: i64) -> Result<(), StoreError>;
    /// Deletes the nonce; true only if it existed for this agent and had not expired.
    async fn consume_nonce(&self, agent_id: &str, nonce: &str, now: i64) -> Result<bool, StoreError>;

    async fn create_api_key(&self, key_hash: &str, name: Option<&str>, now: i64) -> Result<(), StoreError>;
    async fn api_key_exists(&self, key_hash: &str) -> Result<bool, StoreError>;

    async fn insert_job(&self, job: NewJob, now: i64) -> Result<JobRecord, StoreError>;
    async fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError>;
    /// The oldest pending job this agent may take: targeted at it, or untargeted for its creator.
    async fn next_pending_job(&self, agent_id: &str, creator_id: &str) -> Result<Option<JobRecord>, StoreError>;
    /// pending → assigned to `agent_id`, counting an attempt. False if the job was not pending.
    async fn assign_job(&self, job_id: &str, agent_id: &str, now: i64) -> Result<bool, StoreError>;
    /// assigned → acked, only by the holder.
    async fn ack_job(&self, job_id: &str, agent_id: &str, now: i64) -> Result<bool, StoreError>;
    /// assigned|acked → succeeded|failed, only by the holder.
    async fn finish_job(
        &self,
        job_id: &str,
        agent_id: &str,
        outcome: JobOutcome,
        now: i64,
    ) -> Result<FinishOutcome, StoreError>;
    /// assigned|acked → pending, only by the holder (the agent declined the job).
    async fn release_job(&self, job_id: &str, agent_id: &str, now: i64) -> Result<bool, StoreError>;
    /// assigned (never acked) → pending, for one agent or, with `None`, for all (startup).
    async fn release_unacked_jobs(&self, agent_id: Option<&str>, now: i64) -> Result<u64, StoreError>;
}
