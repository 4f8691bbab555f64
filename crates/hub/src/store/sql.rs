//! Owns the SQL both engines share: one body of statements, written with `$N` placeholders
//! (which SQLite also accepts), expanded once per engine by [`sql_store!`]. Engine-specific
//! fragments (row locking, JSON array membership, transaction start, notifications) come
//! from the engine module: `dialect::*` functions and a few inherent methods. It must never
//! decide queue policy: transitions arrive decided in [`Transition`](super::Transition).
//!
//! Why a macro and not generic code over `sqlx::Database`: the trait bounds sqlx needs for
//! generic executors are long and brittle, while two concrete expansions type-check
//! against each engine's real types.

use super::{FinishRequest, JobRecord, JobState, NewJob, StoreError, Transition};
use serde_json::Value;
use std::collections::HashMap;

/// Job columns in the order `job_from_row` reads them.
pub(super) const JOB_COLUMNS: &str = "id, job_type, payload, status, creator_id, target_agent_id, labels, priority, \
     run_at, idempotency_key, assigned_agent_id, lease_token, lease_expires_at, attempts, max_receive_count, \
     visibility_timeout_ms, cancel_requested, result, error, error_code, skipped_recipients, created_at, updated_at, \
     finished_at";

/// [`JOB_COLUMNS`] one by one, for readers that take columns by position (a test keeps the
/// two the same).
pub(super) const JOB_COLUMN_NAMES: [&str; 24] = [
    "id",
    "job_type",
    "payload",
    "status",
    "creator_id",
    "target_agent_id",
    "labels",
    "priority",
    "run_at",
    "idempotency_key",
    "assigned_agent_id",
    "lease_token",
    "lease_expires_at",
    "attempts",
    "max_receive_count",
    "visibility_timeout_ms",
    "cancel_requested",
    "result",
    "error",
    "error_code",
    "skipped_recipients",
    "created_at",
    "updated_at",
    "finished_at",
];

/// Position of `name` in [`JOB_COLUMNS`]; a name that is not there fails the build.
pub(super) const fn job_column(name: &str) -> usize {
    let mut i = 0;
    while i < JOB_COLUMN_NAMES.len() {
        let column = JOB_COLUMN_NAMES[i].as_bytes();
        let wanted = name.as_bytes();
        if column.len() == wanted.len() {
            let mut k = 0;
            while k < column.len() && column[k] == wanted[k] {
                k += 1;
            }
            if k == column.len() {
                return i;
            }
        }
        i += 1;
    }
    panic!("not one of JOB_COLUMNS")
}

pub(super) const AGENT_COLUMNS: &str = "id, creator_id, public_key, name, version, created_at, \
     last_heartbeat_at, connected_at, online, labels, slots";

pub(super) const DEVICE_CODE_COLUMNS: &str = "public_key, name, version, status, creator_id, agent_id, \
     interval_ms, created_at, expires_at, last_poll_at";

pub(super) const REDRIVE_COLUMNS: &str = "id, status, job_type, creator_id, error_code, dead_from, dead_to, \
     rate_per_sec, total, moved, last_step_at, created_at, updated_at, finished_at";

/// Filter over dead jobs shared by the redrive count and move; binds $2..$6 plus the cutoff $7.
pub(super) const DEAD_FILTER: &str = "status = 'dead' AND ($2 IS NULL OR job_type = $2) \
     AND ($3 IS NULL OR creator_id = $3) AND ($4 IS NULL OR error_code = $4) \
     AND ($5 IS NULL OR finished_at >= $5) AND ($6 IS NULL OR finished_at <= $6) AND finished_at <= $7";

// Statements both engines' job writers run as they are (the shared bulk ones below take
// JSON lists; SQLite's own job writer runs these row by row).

/// Upsert into the recipient ledger: $1 creator, $2 recipient, $3 now, $4 job. A sent
/// message replaces an uncertain entry.
pub(super) const LEDGER_UPSERT: &str =
    "INSERT INTO recipient_ledger (creator_id, recipient, last_sent_at, job_id, uncertain) \
     VALUES ($1, $2, $3, $4, FALSE) ON CONFLICT (creator_id, recipient) DO UPDATE SET \
     last_sent_at = excluded.last_sent_at, job_id = excluded.job_id, uncertain = FALSE";

/// Records a message whose outcome is unknown: $1 creator, $2 recipient, $3 now, $4 job.
/// It never overwrites a sent one (that one still blocks the cool-off).
pub(super) const LEDGER_UNCERTAIN: &str =
    "INSERT INTO recipient_ledger (creator_id, recipient, last_sent_at, job_id, uncertain) \
     VALUES ($1, $2, $3, $4, TRUE) ON CONFLICT (creator_id, recipient) DO UPDATE SET \
     last_sent_at = excluded.last_sent_at, job_id = excluded.job_id WHERE recipient_ledger.uncertain";

/// Uncertain ledger entries, newest first: $1 creator or NULL for all, $2 limit.
pub(super) const LEDGER_UNCERTAIN_LIST: &str =
    "SELECT creator_id, recipient, last_sent_at, job_id FROM recipient_ledger \
     WHERE uncertain AND ($1 IS NULL OR creator_id = $1) ORDER BY last_sent_at DESC, recipient LIMIT $2";

/// The attempt a report names, unless stale: $1 job, $2 lease token, $3 agent.
pub(super) const REPORTED_ATTEMPT: &str = "SELECT creator_id, job_type, leased_at, outcome FROM job_attempts \
     WHERE job_id = $1 AND lease_token = $2 AND agent_id = $3 AND COALESCE(outcome, '') <> 'stale' \
     ORDER BY id LIMIT 1";

/// A stale report already kept for this lease: $1 job, $2 lease token.
pub(super) const STALE_ATTEMPT: &str =
    "SELECT job_id FROM job_attempts WHERE job_id = $1 AND lease_token = $2 AND outcome = 'stale' LIMIT 1";

/// Keeps a late report as a `stale` attempt: $1 job, $2 lease token, $3 agent, $4 creator,
/// $5 job type, $6 leased at, $7 now, $8 result, $9 error.
pub(super) const INSERT_STALE_ATTEMPT: &str = "INSERT INTO job_attempts (job_id, lease_token, agent_id, creator_id, \
     job_type, leased_at, ended_at, outcome, result, error) VALUES ($1, $2, $3, $4, $5, $6, $7, 'stale', $8, $9)";

/// A creator's concurrency limit and how many per-type hourly limits it has: $1 creator.
pub(super) const CREATOR_LIMITS: &str = "SELECT (SELECT max_concurrent FROM creator_limits WHERE creator_id = $1) \
     AS max_concurrent, (SELECT COUNT(*) FROM creator_type_limits WHERE creator_id = $1) AS type_limits";

/// Jobs a creator's agents hold: $1 creator.
pub(super) const HELD_BY_CREATOR: &str =
    "SELECT COUNT(*) FROM jobs WHERE creator_id = $1 AND status IN ('leased', 'running')";

/// What is left of each per-type hourly limit of a creator: $1 creator, $2 now.
pub(super) const TYPE_BUDGETS: &str = "SELECT tl.job_type, tl.max_per_hour - (SELECT COUNT(*) FROM job_attempts a \
     WHERE a.creator_id = tl.creator_id AND a.job_type = tl.job_type \
     AND a.leased_at > $2 - 3600000 AND COALESCE(a.outcome, '') <> 'stale') AS remaining \
     FROM creator_type_limits tl WHERE tl.creator_id = $1";

pub(super) fn to_text(value: &Value) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("a JSON value does not serialise: {e}")))
}

pub(super) fn opt_text(value: Option<&Value>) -> Result<Option<String>, StoreError> {
    value.map(to_text).transpose()
}

pub(super) fn parse_json(column: &str, text: Option<String>) -> Result<Option<Value>, StoreError> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("column {column} is not JSON: {e}"))))
        .transpose()
}

pub(super) fn parse_labels(text: Option<String>) -> Result<Vec<String>, StoreError> {
    match text {
        None => Ok(Vec::new()),
        Some(t) => {
            serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("labels are not a JSON list: {e}")))
        }
    }
}

/// Labels as stored: `NULL` for none, else a JSON list.
pub(super) fn labels_text(labels: &[String]) -> Option<String> {
    (!labels.is_empty()).then(|| serde_json::Value::from(labels.to_vec()).to_string())
}

pub(super) fn list_text(items: &[String]) -> String {
    serde_json::Value::from(items.to_vec()).to_string()
}

/// A claim's excluded job types as the candidates statement reads them: NULL when none is
/// excluded, so the usual claim does not look at a list at all.
pub(super) fn excluded_text(types: &[String]) -> Option<String> {
    (!types.is_empty()).then(|| list_text(types))
}

/// The text a `dialect::json_records` subquery reads: the records as one JSON list.
pub(super) fn records_text(records: Vec<serde_json::Value>) -> String {
    serde_json::Value::from(records).to_string()
}

/// A report as the finish statements write it (the bulk ones read it as one JSON record).
pub(super) struct FinishRow {
    pub job_id: String,
    pub agent_id: String,
    pub lease_token: i64,
    pub status: &'static str,
    pub outcome: &'static str,
    pub result: Option<String>,
    pub error: Option<String>,
    pub error_code: Option<String>,
    pub finished_at: Option<i64>,
    pub run_at: Option<i64>,
    pub payload: Option<String>,
    /// Who holds the job afterwards: nobody when it goes back to pending.
    pub holder: Option<String>,
}

impl FinishRow {
    pub const COLUMNS: &'static [(&'static str, &'static str)] = &[
        ("f_id", "text"),
        ("f_agent", "text"),
        ("f_token", "bigint"),
        ("f_status", "text"),
        ("f_outcome", "text"),
        ("f_result", "text"),
        ("f_error", "text"),
        ("f_error_code", "text"),
        ("f_finished_at", "bigint"),
        ("f_run_at", "bigint"),
        ("f_payload", "text"),
        ("f_holder", "text"),
    ];

    pub fn new(request: &FinishRequest, now: i64) -> Result<FinishRow, StoreError> {
        let state = request.transition.state();
        let (run_at, payload) = match &request.transition {
            Transition::Retry { run_at, payload } => (Some(*run_at), opt_text(payload.as_ref())?),
            _ => (None, None),
        };
        let result = opt_text(request.result.as_ref())?;
        let error = opt_text(request.error.as_ref())?;
        let error_code = request.error.as_ref().and_then(|e| e.get("code")).and_then(|c| c.as_str());
        Ok(FinishRow {
            job_id: request.job_id.clone(),
            agent_id: request.agent_id.clone(),
            lease_token: request.lease_token,
            status: state.as_str(),
            outcome: request.transition.outcome(),
            result,
            error,
            error_code: error_code.map(str::to_owned),
            finished_at: state.is_final().then_some(now),
            run_at,
            payload,
            // Back to pending leaves nobody holding the job; otherwise the reporter keeps it.
            holder: (state != JobState::Pending).then(|| request.agent_id.clone()),
        })
    }

    pub fn record(&self) -> Value {
        serde_json::json!({
            "f_id": self.job_id,
            "f_agent": self.agent_id,
            "f_token": self.lease_token,
            "f_status": self.status,
            "f_outcome": self.outcome,
            "f_result": self.result,
            "f_error": self.error,
            "f_error_code": self.error_code,
            "f_finished_at": self.finished_at,
            "f_run_at": self.run_at,
            "f_payload": self.payload,
            "f_holder": self.holder,
        })
    }
}

/// A new job as the insert statements write it (the bulk one reads it as one JSON record).
pub(super) struct InsertRow<'a> {
    pub job: &'a NewJob,
    pub status: &'static str,
    pub payload: String,
    pub labels: Option<String>,
    pub error: Option<String>,
    pub error_code: Option<&'a str>,
    pub skipped_recipients: Option<String>,
    pub finished_at: Option<i64>,
}

impl<'a> InsertRow<'a> {
    pub fn new(job: &'a NewJob, now: i64) -> Result<InsertRow<'a>, StoreError> {
        let (status, error, finished_at) = match &job.final_state {
            Some((state, error)) => (state.as_str(), Some(to_text(error)?), Some(now)),
            None => (JobState::Pending.as_str(), None, None),
        };
        Ok(InsertRow {
            job,
            status,
            payload: to_text(&job.payload)?,
            labels: labels_text(&job.labels),
            error,
            error_code: job.final_state.as_ref().and_then(|(_, e)| e.get("code")).and_then(|c| c.as_str()),
            skipped_recipients: opt_text(job.skipped_recipients.as_ref())?,
            finished_at,
        })
    }

    /// The job as this row stores it, with the columns the insert leaves to their defaults:
    /// what reading the row back would give, without reading it (and parsing its payload)
    /// again.
    pub fn stored(&self, now: i64) -> JobRecord {
        let job = self.job;
        let (status, error) = match &job.final_state {
            Some((state, error)) => (*state, Some(error.clone())),
            None => (JobState::Pending, None),
        };
        JobRecord {
            id: job.id.clone(),
            job_type: job.job_type.clone(),
            payload: job.payload.clone(),
            status,
            creator_id: job.creator_id.clone(),
            target_agent_id: job.target_agent_id.clone(),
            labels: job.labels.clone(),
            priority: job.priority,
            run_at: job.run_at,
            idempotency_key: job.idempotency_key.clone(),
            assigned_agent_id: None,
            lease_token: 0,
            lease_expires_at: None,
            attempts: 0,
            max_receive_count: job.max_receive_count,
            visibility_timeout_ms: job.visibility_timeout_ms,
            cancel_requested: false,
            result: None,
            error,
            error_code: self.error_code.map(str::to_owned),
            skipped_recipients: job.skipped_recipients.clone(),
            created_at: now,
            updated_at: now,
            finished_at: self.finished_at,
        }
    }

    pub fn record(&self) -> Value {
        let job = self.job;
        serde_json::json!({
            "i_id": job.id,
            "i_type": job.job_type,
            "i_payload": self.payload,
            "i_status": self.status,
            "i_creator": job.creator_id,
            "i_target": job.target_agent_id,
            "i_labels": self.labels,
            "i_priority": job.priority,
            "i_run_at": job.run_at,
            "i_key": job.idempotency_key,
            "i_max_receive": job.max_receive_count,
            "i_visibility": job.visibility_timeout_ms,
            "i_error": self.error,
            "i_error_code": self.error_code,
            "i_skipped": self.skipped_recipients,
            "i_finished_at": self.finished_at,
        })
    }
}

/// A pending job a claim may lease.
pub(super) struct ClaimCandidate {
    pub job_id: String,
    pub job_type: String,
    pub target_agent_id: Option<String>,
}

/// Deals `candidates` (best first) to `agents` (each with its free slots): one job per agent
/// in turn, a job naming an agent to that agent only, at most `budget` jobs and at most
/// `type_budgets[type]` of a limited type. Returns (job id, agent id) in claim order.
pub(super) fn plan_claims(
    agents: &[(String, u32)],
    candidates: Vec<ClaimCandidate>,
    budget: i64,
    type_budgets: &mut HashMap<String, i64>,
) -> Vec<(String, String)> {
    let mut free: Vec<u32> = agents.iter().map(|(_, slots)| *slots).collect();
    // Built at the first job that names an agent: most claims have none, and a group can
    // hold thousands of agents.
    let mut index: Option<HashMap<&str, usize>> = None;
    let mut plan = Vec::new();
    let mut next = 0;
    for candidate in candidates {
        if plan.len() as i64 >= budget || free.iter().all(|slots| *slots == 0) {
            break;
        }
        if type_budgets.get(&candidate.job_type).is_some_and(|left| *left <= 0) {
            continue;
        }
        let chosen = match &candidate.target_agent_id {
            Some(target) => match index
                .get_or_insert_with(|| agents.iter().enumerate().map(|(i, (id, _))| (id.as_str(), i)).collect())
                .get(target.as_str())
            {
                Some(&i) if free[i] > 0 => i,
                _ => continue,
            },
            None => {
                let Some(offset) = (0..free.len()).find(|k| free[(next + k) % free.len()] > 0) else { break };
                let i = (next + offset) % free.len();
                next = i + 1;
                i
            }
        };
        free[chosen] -= 1;
        if let Some(left) = type_budgets.get_mut(&candidate.job_type) {
            *left -= 1;
        }
        plan.push((candidate.job_id, agents[chosen].0.clone()));
    }
    plan
}

/// The error stored on a job that ran out of deliveries through expired leases.
pub(super) fn lease_expired_error() -> String {
    serde_json::json!({
        "code": "LEASE_EXPIRED",
        "message": "the lease ran out (no result or heartbeat within the visibility timeout) on the last allowed delivery"
    })
    .to_string()
}

pub(super) fn cancelled_error() -> String {
    serde_json::json!({"code": "CANCELLED", "message": "cancelled by an operator"}).to_string()
}

/// Runs `$call` (an expression using the transaction `$tx`) in a write transaction of
/// `$store`, commits, and answers what the call returned. When `$nothing` holds there is
/// nothing to write: the empty answer, without taking the write lock for an empty transaction.
macro_rules! in_write_tx {
    ($store:expr, skip_if $nothing:expr, |$tx:ident| $call:expr) => {{
        if $nothing {
            return Ok(Default::default());
        }
        let mut $tx = $store.write_tx().await?;
        let answer = $call.await?;
        $tx.commit().await?;
        Ok(answer)
    }};
}

/// Expands to the `impl Store` for `$store` on database `$db`, whose rows are `$row`.
/// `$store` must provide `pool` (reads), `writer` (writes; may be the same pool), `write_tx()`, `before_close()`, `publish_event()`,
/// `subscribe_events()`, `has_job_writer()`, `write_on_job_writer()` and `own_group_writer()` (an engine's own
/// writer for [`JobWriteBatch`]es, which then takes every job write below), `ENGINE` and
/// `EXCLUSIVE`; the invoking module must have a `dialect` module and `HubEvent` and
/// `StoreError` in scope.
macro_rules! sql_store {
    ($store:ty, $db:ty, $row:ty) => {
        use $crate::store::sql::{
            plan_claims, ClaimCandidate, FinishRow, InsertRow, cancelled_error, excluded_text, labels_text, lease_expired_error, list_text, records_text, parse_json, parse_labels,
            AGENT_COLUMNS, CREATOR_LIMITS, DEVICE_CODE_COLUMNS, DEAD_FILTER, HELD_BY_CREATOR, INSERT_STALE_ATTEMPT, JOB_COLUMNS,
            LEDGER_UNCERTAIN, LEDGER_UNCERTAIN_LIST, LEDGER_UPSERT, REDRIVE_COLUMNS, REPORTED_ATTEMPT, STALE_ATTEMPT, TYPE_BUDGETS,
        };
        use $crate::store::{
            AgentRecord, ApiKeyRecord, ApiKeySummary, AttemptRecord, RevokeOutcome, CancelOutcome, ClaimGroup, CreatorLimits, ExpiredLease,
            FinishOutcome, FinishRequest, InsertOutcome, JobWriteAnswers, JobWriteBatch, LeaseRef, JobFilter, JobRecord, JobState, LedgerEntry, NewAgent, UncertainRecipient,
            NewJob, NewTunnelRoute, QueueDepth, RedriveFilter, RedriveRecord, RedriveStart, RedriveStatus, Store, TunnelRoute,
            DeviceCodeRecord, DeviceCodeStatus, DeviceDecision, DevicePoll, DevicePollStep, NewDeviceCode,
        };
        use sqlx::Row as _;
        use std::sync::OnceLock;

        /// Records that `creator_id` messaged the report's (normalised) sent recipients now,
        /// and perhaps messaged its uncertain ones.
        async fn write_ledger(
            tx: &mut sqlx::Transaction<'static, $db>,
            creator_id: &str,
            request: &FinishRequest,
            now: i64,
        ) -> Result<(), StoreError> {
            let entries = request.sent_recipients.iter().map(|r| (LEDGER_UPSERT, r));
            let uncertain = request.uncertain_recipients.iter().map(|r| (LEDGER_UNCERTAIN, r));
            for (statement, recipient) in entries.chain(uncertain) {
                sqlx::query(statement)
                    .bind(creator_id)
                    .bind(recipient)
                    .bind(now)
                    .bind(&request.job_id)
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(())
        }

        /// A report that does not hold the job's current lease: a resend of a finished lease,
        /// a late result of an expired one (kept as `stale`), or a job this agent never held.
        async fn finish_not_current(
            tx: &mut sqlx::Transaction<'static, $db>,
            request: &FinishRequest,
            result: &Option<String>,
            error: &Option<String>,
            now: i64,
        ) -> Result<FinishOutcome, StoreError> {
            let attempt = sqlx::query(REPORTED_ATTEMPT)
                .bind(&request.job_id)
                .bind(request.lease_token)
                .bind(&request.agent_id)
                .fetch_optional(&mut **tx)
                .await?;
            let Some(row) = attempt else { return Ok(FinishOutcome::NotHeld) };
            let outcome: Option<String> = row.try_get("outcome")?;
            if !matches!(outcome.as_deref(), Some("expired") | Some("released") | None) {
                return Ok(FinishOutcome::AlreadyFinished);
            }
            let creator_id: String = row.try_get("creator_id")?;
            let already: Option<String> = sqlx::query_scalar(STALE_ATTEMPT)
                .bind(&request.job_id)
                .bind(request.lease_token)
                .fetch_optional(&mut **tx)
                .await?;
            if already.is_none() {
                sqlx::query(INSERT_STALE_ATTEMPT)
                    .bind(&request.job_id)
                    .bind(request.lease_token)
                    .bind(&request.agent_id)
                    .bind(&creator_id)
                    .bind(row.try_get::<String, _>("job_type")?)
                    .bind(row.try_get::<i64, _>("leased_at")?)
                    .bind(now)
                    .bind(result)
                    .bind(error)
                    .execute(&mut **tx)
                    .await?;
                // The messages went out even if the lease had lapsed: the ledger must know,
                // or they would be sent again.
                write_ledger(tx, &creator_id, request, now).await?;
            }
            Ok(FinishOutcome::Stale)
        }

        // The bulk statements below join a JSON list against `jobs`. Planners guess such a list
        // at 100 rows whatever its length, and then read `jobs` through the status or holder
        // index (SQLite: every leased job against the whole list, seconds at 20,000 jobs) or
        // scan it (PostgreSQL). `status || ''` and `assigned_agent_id || ''` take those indexes
        // out of the choice, and the `probe` (the list's keys as `IN` / `= ANY(ARRAY(…))`) makes
        // the primary key the way in: one probe per record.

        /// Leases acknowledged by their holders: $1 now, $2 a JSON list of {s_id, s_agent, s_token}.
        fn start_sql() -> &'static str {
            static SQL: OnceLock<String> = OnceLock::new();
            SQL.get_or_init(|| {
                format!(
                    "UPDATE jobs SET status = 'running', lease_expires_at = $1 + visibility_timeout_ms, updated_at = $1 \
                     FROM ({records}) m WHERE jobs.id = m.s_id AND {probe} AND jobs.assigned_agent_id || '' = m.s_agent \
                     AND jobs.lease_token = m.s_token AND jobs.status || '' IN ('leased', 'running') RETURNING jobs.id",
                    records = dialect::json_records("$2", &[("s_id", "text"), ("s_agent", "text"), ("s_token", "bigint")]),
                    probe = dialect::key_in("jobs.id", &dialect::json_records("$2", &[("s_id", "text")])),
                )
            })
        }

        /// Reports that hold the current lease: $1 now, $2 a JSON list of [`FinishRow::record`]s.
        fn finish_sql() -> &'static str {
            static SQL: OnceLock<String> = OnceLock::new();
            SQL.get_or_init(|| {
                format!(
                    "UPDATE jobs SET status = m.f_status, result = COALESCE(m.f_result, result), \
                     error = COALESCE(m.f_error, error), error_code = COALESCE(m.f_error_code, error_code), \
                     updated_at = $1, finished_at = m.f_finished_at, lease_expires_at = NULL, \
                     run_at = COALESCE(m.f_run_at, run_at), payload = COALESCE(m.f_payload, payload), \
                     assigned_agent_id = m.f_holder \
                     FROM ({records}) m WHERE jobs.id = m.f_id AND {probe} AND jobs.assigned_agent_id || '' = m.f_agent \
                     AND jobs.lease_token = m.f_token AND jobs.status || '' IN ('leased', 'running') \
                     RETURNING jobs.id, jobs.creator_id",
                    records = dialect::json_records("$2", FinishRow::COLUMNS),
                    probe = dialect::key_in("jobs.id", &dialect::json_records("$2", &[("f_id", "text")])),
                )
            })
        }

        /// Closes the attempts of applied reports: $1 now, $2 their [`FinishRow::record`]s.
        fn finish_attempts_sql() -> &'static str {
            static SQL: OnceLock<String> = OnceLock::new();
            SQL.get_or_init(|| {
                format!(
                    "UPDATE job_attempts SET ended_at = $1, outcome = m.f_outcome, result = m.f_result, \
                     error = m.f_error FROM ({records}) m \
                     WHERE job_attempts.job_id = m.f_id AND {probe} AND job_attempts.lease_token = m.f_token \
                     AND job_attempts.outcome IS NULL",
                    records = dialect::json_records("$2", FinishRow::COLUMNS),
                    probe = dialect::key_in("job_attempts.job_id", &dialect::json_records("$2", &[("f_id", "text")])),
                )
            })
        }

        /// New jobs: $1 now, $2 a JSON list of [`insert_record`]s.
        fn insert_sql() -> &'static str {
            static SQL: OnceLock<String> = OnceLock::new();
            SQL.get_or_init(|| {
                // `WHERE true`: SQLite would otherwise read `ON CONFLICT` as a join's ON.
                format!(
                    "INSERT INTO jobs (id, job_type, payload, status, creator_id, target_agent_id, labels, priority, \
                     run_at, idempotency_key, max_receive_count, visibility_timeout_ms, error, error_code, \
                     skipped_recipients, created_at, updated_at, finished_at) \
                     SELECT i_id, i_type, i_payload, i_status, i_creator, i_target, i_labels, i_priority, i_run_at, \
                     i_key, i_max_receive, i_visibility, i_error, i_error_code, i_skipped, $1, $1, i_finished_at \
                     FROM ({records}) r WHERE true ON CONFLICT DO NOTHING RETURNING {JOB_COLUMNS}",
                    records = dialect::json_records(
                        "$2",
                        &[
                            ("i_id", "text"),
                            ("i_type", "text"),
                            ("i_payload", "text"),
                            ("i_status", "text"),
                            ("i_creator", "text"),
                            ("i_target", "text"),
                            ("i_labels", "text"),
                            ("i_priority", "bigint"),
                            ("i_run_at", "bigint"),
                            ("i_key", "text"),
                            ("i_max_receive", "bigint"),
                            ("i_visibility", "bigint"),
                            ("i_error", "text"),
                            ("i_error_code", "text"),
                            ("i_skipped", "text"),
                            ("i_finished_at", "bigint"),
                        ]
                    ),
                )
            })
        }

        fn agent_from_row(row: &$row) -> Result<AgentRecord, StoreError> {
            Ok(AgentRecord {
                id: row.try_get("id")?,
                creator_id: row.try_get("creator_id")?,
                public_key: row.try_get("public_key")?,
                name: row.try_get("name")?,
                version: row.try_get("version")?,
                created_at: row.try_get("created_at")?,
                last_heartbeat_at: row.try_get("last_heartbeat_at")?,
                connected_at: row.try_get("connected_at")?,
                online: row.try_get::<i64, _>("online")? != 0,
                labels: parse_labels(row.try_get("labels")?)?,
                slots: row.try_get("slots")?,
            })
        }

        fn device_code_from_row(row: &$row) -> Result<DeviceCodeRecord, StoreError> {
            let status: String = row.try_get("status")?;
            Ok(DeviceCodeRecord {
                public_key: row.try_get("public_key")?,
                name: row.try_get("name")?,
                version: row.try_get("version")?,
                status: DeviceCodeStatus::parse(&status)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown device code status {status:?}")))?,
                creator_id: row.try_get("creator_id")?,
                agent_id: row.try_get("agent_id")?,
                interval_ms: row.try_get("interval_ms")?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
                last_poll_at: row.try_get("last_poll_at")?,
            })
        }

        fn job_from_row(row: &$row) -> Result<JobRecord, StoreError> {
            let status: String = row.try_get("status")?;
            let payload: String = row.try_get("payload")?;
            Ok(JobRecord {
                id: row.try_get("id")?,
                job_type: row.try_get("job_type")?,
                payload: parse_json("payload", Some(payload))?.unwrap_or(serde_json::Value::Null),
                status: JobState::parse(&status)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown job status {status:?}")))?,
                creator_id: row.try_get("creator_id")?,
                target_agent_id: row.try_get("target_agent_id")?,
                labels: parse_labels(row.try_get("labels")?)?,
                priority: row.try_get("priority")?,
                run_at: row.try_get("run_at")?,
                idempotency_key: row.try_get("idempotency_key")?,
                assigned_agent_id: row.try_get("assigned_agent_id")?,
                lease_token: row.try_get("lease_token")?,
                lease_expires_at: row.try_get("lease_expires_at")?,
                attempts: row.try_get("attempts")?,
                max_receive_count: row.try_get("max_receive_count")?,
                visibility_timeout_ms: row.try_get("visibility_timeout_ms")?,
                cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
                result: parse_json("result", row.try_get("result")?)?,
                error: parse_json("error", row.try_get("error")?)?,
                error_code: row.try_get("error_code")?,
                skipped_recipients: parse_json("skipped_recipients", row.try_get("skipped_recipients")?)?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
                finished_at: row.try_get("finished_at")?,
            })
        }

        fn redrive_from_row(row: &$row) -> Result<RedriveRecord, StoreError> {
            let status: String = row.try_get("status")?;
            Ok(RedriveRecord {
                id: row.try_get("id")?,
                status: match status.as_str() {
                    "running" => RedriveStatus::Running,
                    "completed" => RedriveStatus::Completed,
                    "cancelled" => RedriveStatus::Cancelled,
                    other => return Err(StoreError::Corrupt(format!("unknown redrive status {other:?}"))),
                },
                filter: RedriveFilter {
                    job_type: row.try_get("job_type")?,
                    creator_id: row.try_get("creator_id")?,
                    error_code: row.try_get("error_code")?,
                    dead_from: row.try_get("dead_from")?,
                    dead_to: row.try_get("dead_to")?,
                },
                rate_per_sec: row.try_get("rate_per_sec")?,
                total: row.try_get("total")?,
                moved: row.try_get("moved")?,
                last_step_at: row.try_get("last_step_at")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
                finished_at: row.try_get("finished_at")?,
            })
        }

        /// Candidate jobs for a claim group: $1 creator, $2 now, $3 the group's agent ids (JSON
        /// list, for jobs naming one of them), $4 labels, $5 job types (JSON list or NULL), $6
        /// how many, $7 job types excluded (JSON list or NULL). Built once per engine (it
        /// embeds dialect fragments). Creator limits are
        /// applied by the caller, except that a job type already at its hourly cap is skipped
        /// here so it cannot crowd out the others.
        fn claim_candidates_sql() -> &'static str {
            static SQL: OnceLock<String> = OnceLock::new();
            SQL.get_or_init(|| {
                format!(
                    "SELECT j.id, j.job_type, j.target_agent_id FROM jobs j \
                     WHERE j.status = 'pending' AND j.creator_id = $1 AND j.run_at <= $2 \
                     AND (j.target_agent_id IS NULL OR j.target_agent_id IN ({agents})) \
                     AND (j.labels IS NULL OR {labels}) \
                     AND ($5 IS NULL OR j.job_type IN ({types})) \
                     AND ($7 IS NULL OR j.job_type NOT IN ({excluded})) \
                     AND NOT EXISTS (SELECT tl.creator_id FROM creator_type_limits tl \
                        WHERE tl.creator_id = j.creator_id AND tl.job_type = j.job_type \
                        AND tl.max_per_hour <= (SELECT COUNT(*) FROM job_attempts a \
                            WHERE a.creator_id = j.creator_id AND a.job_type = j.job_type \
                            AND a.leased_at > $2 - 3600000 AND COALESCE(a.outcome, '') <> 'stale')) \
                     ORDER BY j.priority DESC, j.run_at, j.created_at, j.id LIMIT $6{lock}",
                    agents = dialect::json_text_array("$3"),
                    labels = dialect::labels_subset("j.labels", "$4"),
                    types = dialect::json_text_array("$5"),
                    excluded = dialect::json_text_array("$7"),
                    lock = dialect::SKIP_LOCKED_OF_J,
                )
            })
        }

        /// Leases the planned jobs: $1 now, $2 a JSON list of {c_job, c_agent}.
        fn claim_update_sql() -> &'static str {
            static SQL: OnceLock<String> = OnceLock::new();
            SQL.get_or_init(|| {
                format!(
                    "UPDATE jobs SET status = 'leased', assigned_agent_id = m.c_agent, \
                     attempts = attempts + 1, lease_token = lease_token + 1, \
                     lease_expires_at = $1 + visibility_timeout_ms, updated_at = $1 \
                     FROM ({records}) m WHERE jobs.id = m.c_job AND {probe} AND jobs.status || '' = 'pending' \
                     RETURNING {JOB_COLUMNS}",
                    records = dialect::json_records("$2", &[("c_job", "text"), ("c_agent", "text")]),
                    probe = dialect::key_in("jobs.id", &dialect::json_records("$2", &[("c_job", "text")])),
                )
            })
        }

        /// Opens an attempt for each job just leased: $1 now, $2 a JSON list of
        /// {a_job, a_token, a_agent, a_creator, a_type} (from the leased records, so the
        /// statement reads nothing: PostgreSQL would hash-join a list against all of `jobs`).
        fn claim_attempts_sql() -> &'static str {
            static SQL: OnceLock<String> = OnceLock::new();
            SQL.get_or_init(|| {
                format!(
                    "INSERT INTO job_attempts (job_id, lease_token, agent_id, creator_id, job_type, leased_at) \
                     SELECT a_job, a_token, a_agent, a_creator, a_type, $1 FROM ({records}) r",
                    records = dialect::json_records(
                        "$2",
                        &[
                            ("a_job", "text"),
                            ("a_token", "bigint"),
                            ("a_agent", "text"),
                            ("a_creator", "text"),
                            ("a_type", "text"),
                        ]
                    ),
                )
            })
        }

        fn redrive_move_sql() -> &'static str {
            static SQL: OnceLock<String> = OnceLock::new();
            SQL.get_or_init(|| {
                format!(
                    "UPDATE jobs SET status = 'pending', attempts = 0, run_at = $1, assigned_agent_id = NULL, \
                     lease_expires_at = NULL, cancel_requested = 0, finished_at = NULL, updated_at = $1 \
                     WHERE id IN (SELECT id FROM jobs WHERE {DEAD_FILTER} ORDER BY finished_at, id LIMIT $8{lock})",
                    lock = dialect::SKIP_LOCKED,
                )
            })
        }

        fn recipients_sql() -> &'static str {
            static SQL: OnceLock<String> = OnceLock::new();
            SQL.get_or_init(|| {
                format!(
                    "SELECT recipient, last_sent_at FROM recipient_ledger \
                     WHERE creator_id = $1 AND last_sent_at >= $3 AND NOT uncertain AND recipient IN ({})",
                    dialect::json_text_array("$2")
                )
            })
        }

        /// [`Store::insert_jobs`] inside the caller's transaction.
        async fn insert_jobs_in(
            tx: &mut sqlx::Transaction<'static, $db>,
            jobs: &[NewJob],
            now: i64,
        ) -> Result<Vec<InsertOutcome>, StoreError> {
            if jobs.is_empty() {
                return Ok(Vec::new());
            }
            let records =
                jobs.iter().map(|job| InsertRow::new(job, now).map(|row| row.record())).collect::<Result<Vec<_>, _>>()?;
            let rows = sqlx::query(insert_sql())
                .bind(now)
                .bind(records_text(records))
                .fetch_all(&mut **tx)
                .await?;
            let mut created: std::collections::HashMap<String, JobRecord> = std::collections::HashMap::new();
            for row in &rows {
                let job = job_from_row(row)?;
                created.insert(job.id.clone(), job);
            }
            let mut outcomes = Vec::with_capacity(jobs.len());
            for job in jobs {
                if let Some(record) = created.remove(&job.id) {
                    outcomes.push(InsertOutcome::Created(record));
                    continue;
                }
                // Not inserted: DO NOTHING without a target also covers the partial unique
                // index on (creator, idempotency key), so this is a duplicate submit
                // (concurrent, or earlier in this batch).
                let existing = match &job.idempotency_key {
                    Some(key) => sqlx::query(&format!(
                        "SELECT {JOB_COLUMNS} FROM jobs WHERE creator_id = $1 AND idempotency_key = $2"
                    ))
                    .bind(&job.creator_id)
                    .bind(key)
                    .fetch_optional(&mut **tx)
                    .await?
                    .map(|row| job_from_row(&row))
                    .transpose()?,
                    None => None,
                };
                match existing {
                    Some(existing) => outcomes.push(InsertOutcome::Existing(existing)),
                    None => {
                        return Err(StoreError::Corrupt(format!("job id {} collided with an existing job", job.id)))
                    }
                }
            }
            Ok(outcomes)
        }

        /// [`Store::start_jobs`] inside the caller's transaction.
        async fn start_jobs_in(
            tx: &mut sqlx::Transaction<'static, $db>,
            leases: &[LeaseRef],
            now: i64,
        ) -> Result<Vec<bool>, StoreError> {
            if leases.is_empty() {
                return Ok(Vec::new());
            }
            let records: Vec<serde_json::Value> = leases
                .iter()
                .map(|l| serde_json::json!({"s_id": l.job_id, "s_agent": l.agent_id, "s_token": l.lease_token}))
                .collect();
            let started: Vec<String> = sqlx::query_scalar(start_sql())
                .bind(now)
                .bind(records_text(records))
                .fetch_all(&mut **tx)
                .await?;
            let started: std::collections::HashSet<String> = started.into_iter().collect();
            Ok(leases.iter().map(|l| started.contains(&l.job_id)).collect())
        }

        /// [`Store::finish_jobs`] inside the caller's transaction.
        async fn finish_jobs_in(
            tx: &mut sqlx::Transaction<'static, $db>,
            requests: &[FinishRequest],
            now: i64,
        ) -> Result<Vec<FinishOutcome>, StoreError> {
            if requests.is_empty() {
                return Ok(Vec::new());
            }
            let rows = requests.iter().map(|r| FinishRow::new(r, now)).collect::<Result<Vec<_>, _>>()?;
            // One statement applies every report that holds the current lease; a job named
            // twice in the batch goes through the careful path after the first is applied.
            let mut first_of_job = std::collections::HashSet::new();
            let bulk: Vec<usize> = (0..rows.len()).filter(|&i| first_of_job.insert(rows[i].job_id.as_str())).collect();
            let records: Vec<serde_json::Value> = bulk.iter().map(|&i| rows[i].record()).collect();
            let applied = sqlx::query(finish_sql())
                .bind(now)
                .bind(records_text(records))
                .fetch_all(&mut **tx)
                .await?;
            let mut creators: std::collections::HashMap<String, String> = std::collections::HashMap::new();
            for row in &applied {
                creators.insert(row.try_get("id")?, row.try_get("creator_id")?);
            }
            let attempts: Vec<serde_json::Value> = bulk
                .iter()
                .filter(|&&i| creators.contains_key(&rows[i].job_id))
                .map(|&i| rows[i].record())
                .collect();
            if !attempts.is_empty() {
                sqlx::query(finish_attempts_sql())
                    .bind(now)
                    .bind(records_text(attempts))
                    .execute(&mut **tx)
                    .await?;
            }
            let mut outcomes = Vec::with_capacity(rows.len());
            for (i, (request, row)) in requests.iter().zip(&rows).enumerate() {
                let applied_creator = if bulk.binary_search(&i).is_ok() { creators.get(&row.job_id) } else { None };
                let outcome = match applied_creator {
                    Some(creator_id) => {
                        write_ledger(tx, creator_id, request, now).await?;
                        FinishOutcome::Recorded(request.transition.state())
                    }
                    None => finish_not_current(tx, request, &row.result, &row.error, now).await?,
                };
                outcomes.push(outcome);
            }
            Ok(outcomes)
        }

        /// [`Store::claim_jobs`] inside the caller's transaction.
        async fn claim_jobs_in(
            tx: &mut sqlx::Transaction<'static, $db>,
            group: &ClaimGroup,
            now: i64,
        ) -> Result<Vec<JobRecord>, StoreError> {
            let wanted = group.free_slots();
            if wanted == 0 {
                return Ok(Vec::new());
            }
            let limits = sqlx::query(CREATOR_LIMITS)
                .bind(&group.creator_id)
                .fetch_one(&mut **tx)
                .await?;
            let max_concurrent: Option<i64> = limits.try_get("max_concurrent")?;
            let has_type_limits = limits.try_get::<i64, _>("type_limits")? > 0;
            let mut budget = i64::try_from(wanted).unwrap_or(i64::MAX);
            let mut type_budgets: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
            if max_concurrent.is_some() || has_type_limits {
                // Limits are counted, then spent: other processes claiming for this
                // creator must wait until this claim is written.
                if let Some(lock) = dialect::CREATOR_CLAIM_LOCK {
                    sqlx::query(lock).bind(&group.creator_id).execute(&mut **tx).await?;
                }
                if let Some(max) = max_concurrent {
                    let held: i64 = sqlx::query_scalar(HELD_BY_CREATOR)
                        .bind(&group.creator_id)
                        .fetch_one(&mut **tx)
                        .await?;
                    budget = budget.min(max - held);
                }
                if has_type_limits {
                    let rows = sqlx::query(TYPE_BUDGETS)
                        .bind(&group.creator_id)
                        .bind(now)
                        .fetch_all(&mut **tx)
                        .await?;
                    for row in rows {
                        type_budgets.insert(row.try_get("job_type")?, row.try_get("remaining")?);
                    }
                }
            }
            if budget <= 0 {
                return Ok(Vec::new());
            }
            let agent_ids: Vec<String> = group.agents.iter().map(|(id, _)| id.clone()).collect();
            let candidates = sqlx::query(claim_candidates_sql())
                .bind(&group.creator_id)
                .bind(now)
                .bind(list_text(&agent_ids))
                .bind(list_text(&group.labels))
                .bind(group.job_types.as_deref().map(list_text))
                .bind(budget)
                .bind(excluded_text(&group.excluded_job_types))
                .fetch_all(&mut **tx)
                .await?;
            let mut candidate_list = Vec::with_capacity(candidates.len());
            for row in &candidates {
                candidate_list.push(ClaimCandidate {
                    job_id: row.try_get("id")?,
                    job_type: row.try_get("job_type")?,
                    target_agent_id: row.try_get("target_agent_id")?,
                });
            }
            let plan = plan_claims(&group.agents, candidate_list, budget, &mut type_budgets);
            if plan.is_empty() {
                return Ok(Vec::new());
            }
            let records: Vec<serde_json::Value> =
                plan.iter().map(|(job, agent)| serde_json::json!({"c_job": job, "c_agent": agent})).collect();
            let rows = sqlx::query(claim_update_sql())
                .bind(now)
                .bind(records_text(records))
                .fetch_all(&mut **tx)
                .await?;
            let mut jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>, _>>()?;
            let order: std::collections::HashMap<&str, usize> =
                plan.iter().enumerate().map(|(i, (job, _))| (job.as_str(), i)).collect();
            jobs.sort_by_key(|job| order.get(job.id.as_str()).copied().unwrap_or(usize::MAX));
            let attempts: Vec<serde_json::Value> = jobs
                .iter()
                .map(|job| {
                    serde_json::json!({"a_job": job.id, "a_token": job.lease_token, "a_agent": job.assigned_agent_id,
                                       "a_creator": job.creator_id, "a_type": job.job_type})
                })
                .collect();
            if !attempts.is_empty() {
                sqlx::query(claim_attempts_sql())
                    .bind(now)
                    .bind(records_text(attempts))
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(jobs)
        }

        /// Submissions, acks, reports and claims in one transaction, in that order: a claim sees
        /// the slots and the limits the reports before it freed.
        async fn write_jobs_in(
            tx: &mut sqlx::Transaction<'static, $db>,
            batch: &JobWriteBatch,
            now: i64,
        ) -> Result<JobWriteAnswers, StoreError> {
            let inserted = insert_jobs_in(tx, &batch.inserts, now).await?;
            let started = start_jobs_in(tx, &batch.starts, now).await?;
            let finished = finish_jobs_in(tx, &batch.finishes, now).await?;
            let mut claimed = Vec::with_capacity(batch.claims.len());
            for group in &batch.claims {
                claimed.push(claim_jobs_in(tx, group, now).await?);
            }
            Ok(JobWriteAnswers { inserted, started, finished, claimed })
        }

        #[async_trait::async_trait]
        impl Store for $store {
            fn engine(&self) -> &'static str {
                Self::ENGINE
            }

            fn exclusive(&self) -> bool {
                Self::EXCLUSIVE
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn close(&self) {
                self.before_close().await;
                self.pool.close().await;
                self.writer.close().await;
            }

            async fn publish(&self, event: &HubEvent) -> Result<(), StoreError> {
                self.publish_event(event).await
            }

            async fn subscribe(
                &self,
            ) -> Result<Option<tokio::sync::mpsc::UnboundedReceiver<HubEvent>>, StoreError> {
                self.subscribe_events().await
            }

            async fn setting_or_init(&self, key: &str, value_if_absent: &str) -> Result<String, StoreError> {
                sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                    .bind(key)
                    .bind(value_if_absent)
                    .execute(&self.writer)
                    .await?;
                let value: String = sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                    .bind(key)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(value)
            }

            async fn create_enrollment_token(
                &self,
                token_hash: &str,
                creator_id: &str,
                expires_at: i64,
                now: i64,
            ) -> Result<(), StoreError> {
                let mut tx = self.write_tx().await?;
                sqlx::query("INSERT INTO creators (id, created_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
                    .bind(creator_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO enrollment_tokens (token_hash, creator_id, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(token_hash)
                .bind(creator_id)
                .bind(now)
                .bind(expires_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn enroll_agent(
                &self,
                token_hash: &str,
                agent: NewAgent,
                now: i64,
            ) -> Result<Option<AgentRecord>, StoreError> {
                let mut tx = self.write_tx().await?;
                // The conditional update is the single-use check: of two enrollments racing
                // for one token, exactly one sees the row still unused.
                let creator_id: Option<String> = sqlx::query_scalar(
                    "UPDATE enrollment_tokens SET used_at = $1, used_by_agent_id = $2 \
                     WHERE token_hash = $3 AND used_at IS NULL AND expires_at > $1 RETURNING creator_id",
                )
                .bind(now)
                .bind(&agent.id)
                .bind(token_hash)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(creator_id) = creator_id else {
                    tx.rollback().await?;
                    return Ok(None);
                };
                sqlx::query(
                    "INSERT INTO agents (id, creator_id, public_key, name, version, created_at, online) \
                     VALUES ($1, $2, $3, $4, $5, $6, 0)",
                )
                .bind(&agent.id)
                .bind(&creator_id)
                .bind(&agent.public_key)
                .bind(&agent.name)
                .bind(&agent.version)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Some(AgentRecord {
                    id: agent.id,
                    creator_id,
                    public_key: agent.public_key,
                    name: agent.name,
                    version: agent.version,
                    created_at: now,
                    last_heartbeat_at: None,
                    connected_at: None,
                    online: false,
                    labels: Vec::new(),
                    slots: None,
                }))
            }

            async fn agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
                let row = sqlx::query(&format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1"))
                    .bind(agent_id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(agent_from_row).transpose()
            }

            async fn agents(&self, creator_id: Option<&str>) -> Result<Vec<AgentRecord>, StoreError> {
                let rows = sqlx::query(&format!(
                    "SELECT {AGENT_COLUMNS} FROM agents WHERE ($1 IS NULL OR creator_id = $1) ORDER BY created_at, id"
                ))
                .bind(creator_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(agent_from_row).collect()
            }

            async fn mark_agent_connected(&self, agent_id: &str, now: i64) -> Result<(), StoreError> {
                sqlx::query("UPDATE agents SET online = 1, connected_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(agent_id)
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }

            async fn mark_agent_disconnected(&self, agent_id: &str) -> Result<(), StoreError> {
                sqlx::query("UPDATE agents SET online = 0 WHERE id = $1").bind(agent_id).execute(&self.writer).await?;
                Ok(())
            }

            async fn mark_stale_agents_offline(&self, before: i64) -> Result<u64, StoreError> {
                let done = sqlx::query(
                    "UPDATE agents SET online = 0 WHERE online <> 0 \
                     AND COALESCE(last_heartbeat_at, 0) < $1 AND COALESCE(connected_at, 0) < $1",
                )
                .bind(before)
                .execute(&self.writer)
                .await?;
                Ok(done.rows_affected())
            }

            async fn record_heartbeat(
                &self,
                agent_id: &str,
                version: Option<&str>,
                now: i64,
            ) -> Result<(), StoreError> {
                sqlx::query("UPDATE agents SET last_heartbeat_at = $1, version = COALESCE($2, version) WHERE id = $3")
                    .bind(now)
                    .bind(version)
                    .bind(agent_id)
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }

            async fn record_hello(
                &self,
                agent_id: &str,
                version: Option<&str>,
                labels: &[String],
                slots: i64,
                now: i64,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "UPDATE agents SET last_heartbeat_at = $1, version = COALESCE($2, version), labels = $3, \
                     slots = $4 WHERE id = $5",
                )
                .bind(now)
                .bind(version)
                .bind(labels_text(labels))
                .bind(slots)
                .bind(agent_id)
                .execute(&self.writer)
                .await?;
                Ok(())
            }

            async fn create_nonce(
                &self,
                agent_id: &str,
                nonce: &str,
                expires_at: i64,
                now: i64,
            ) -> Result<(), StoreError> {
                sqlx::query("DELETE FROM nonces WHERE expires_at <= $1").bind(now).execute(&self.writer).await?;
                sqlx::query("INSERT INTO nonces (nonce, agent_id, expires_at) VALUES ($1, $2, $3)")
                    .bind(nonce)
                    .bind(agent_id)
                    .bind(expires_at)
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }

            async fn consume_nonce(&self, agent_id: &str, nonce: &str, now: i64) -> Result<bool, StoreError> {
                let done = sqlx::query("DELETE FROM nonces WHERE nonce = $1 AND agent_id = $2 AND expires_at > $3")
                    .bind(nonce)
                    .bind(agent_id)
                    .bind(now)
                    .execute(&self.writer)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn create_api_key(
                &self,
                key_hash: &str,
                name: Option<&str>,
                creator_id: Option<&str>,
                now: i64,
            ) -> Result<(), StoreError> {
                sqlx::query("INSERT INTO api_keys (key_hash, name, creator_id, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(key_hash)
                    .bind(name)
                    .bind(creator_id)
                    .bind(now)
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }

            async fn api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
                let row = sqlx::query("SELECT name, creator_id FROM api_keys WHERE key_hash = $1")
                    .bind(key_hash)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|row| Ok(ApiKeyRecord { name: row.try_get("name")?, creator_id: row.try_get("creator_id")? }))
                    .transpose()
            }

            async fn list_api_keys(&self) -> Result<Vec<ApiKeySummary>, StoreError> {
                let rows = sqlx::query("SELECT key_hash, name, creator_id, created_at FROM api_keys ORDER BY created_at, key_hash")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|row| {
                        let hash: String = row.try_get("key_hash")?;
                        Ok(ApiKeySummary {
                            id: hash.chars().take($crate::store::API_KEY_ID_CHARS).collect(),
                            name: row.try_get("name")?,
                            creator_id: row.try_get("creator_id")?,
                            created_at: row.try_get("created_at")?,
                        })
                    })
                    .collect()
            }

            async fn revoke_api_key(&self, id: &str) -> Result<RevokeOutcome, StoreError> {
                // Hashes are lowercase hex: anything else (LIKE wildcards included) names no key.
                if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                    return Ok(RevokeOutcome::NotFound);
                }
                let hashes: Vec<String> = sqlx::query_scalar("SELECT key_hash FROM api_keys WHERE key_hash LIKE $1 LIMIT 2")
                    .bind(format!("{id}%"))
                    .fetch_all(&self.writer)
                    .await?;
                match hashes.as_slice() {
                    [] => Ok(RevokeOutcome::NotFound),
                    [hash] => {
                        sqlx::query("DELETE FROM api_keys WHERE key_hash = $1").bind(hash).execute(&self.writer).await?;
                        Ok(RevokeOutcome::Revoked)
                    }
                    _ => Ok(RevokeOutcome::Ambiguous),
                }
            }

            async fn insert_jobs(&self, jobs: &[NewJob], now: i64) -> Result<Vec<InsertOutcome>, StoreError> {
                if self.has_job_writer() && !jobs.is_empty() {
                    let batch = JobWriteBatch { inserts: jobs.to_vec(), ..Default::default() };
                    return Ok(self.write_on_job_writer(batch, now).await?.inserted);
                }
                in_write_tx!(self, skip_if jobs.is_empty(), |tx| insert_jobs_in(&mut tx, jobs, now))
            }

            async fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
                let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
                    .bind(job_id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(job_from_row).transpose()
            }

            async fn job_by_idempotency_key(
                &self,
                creator_id: &str,
                key: &str,
            ) -> Result<Option<JobRecord>, StoreError> {
                let row = sqlx::query(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE creator_id = $1 AND idempotency_key = $2"
                ))
                .bind(creator_id)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
                row.as_ref().map(job_from_row).transpose()
            }

            async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
                let (before_at, before_id) = match &filter.before {
                    Some((at, id)) => (Some(*at), Some(id.as_str())),
                    None => (None, None),
                };
                let rows = sqlx::query(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1 IS NULL OR status = $1) \
                     AND ($2 IS NULL OR job_type = $2) AND ($3 IS NULL OR creator_id = $3) \
                     AND ($4 IS NULL OR assigned_agent_id = $4 OR target_agent_id = $4) \
                     AND ($5 IS NULL OR error_code = $5) \
                     AND ($6 IS NULL OR created_at < $6 OR (created_at = $6 AND id < $7)) \
                     ORDER BY created_at DESC, id DESC LIMIT $8"
                ))
                .bind(filter.status.map(JobState::as_str))
                .bind(&filter.job_type)
                .bind(&filter.creator_id)
                .bind(&filter.agent_id)
                .bind(&filter.error_code)
                .bind(before_at)
                .bind(before_id)
                .bind(filter.limit)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(job_from_row).collect()
            }

            async fn job_attempts(&self, job_id: &str) -> Result<Vec<AttemptRecord>, StoreError> {
                let rows = sqlx::query(
                    "SELECT lease_token, agent_id, leased_at, ended_at, outcome, result, error \
                     FROM job_attempts WHERE job_id = $1 ORDER BY id",
                )
                .bind(job_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(AttemptRecord {
                            lease_token: row.try_get("lease_token")?,
                            agent_id: row.try_get("agent_id")?,
                            leased_at: row.try_get("leased_at")?,
                            ended_at: row.try_get("ended_at")?,
                            outcome: row.try_get("outcome")?,
                            result: parse_json("result", row.try_get("result")?)?,
                            error: parse_json("error", row.try_get("error")?)?,
                        })
                    })
                    .collect()
            }

            async fn any_ready(&self, now: i64) -> Result<bool, StoreError> {
                let found: Option<String> =
                    sqlx::query_scalar("SELECT id FROM jobs WHERE status = 'pending' AND run_at <= $1 LIMIT 1")
                        .bind(now)
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(found.is_some())
            }

            async fn claim_jobs(&self, group: &ClaimGroup, now: i64) -> Result<Vec<JobRecord>, StoreError> {
                if self.has_job_writer() && group.free_slots() > 0 {
                    let batch = JobWriteBatch { claims: vec![group.clone()], ..Default::default() };
                    return Ok(self.write_on_job_writer(batch, now).await?.claimed.pop().unwrap_or_default());
                }
                in_write_tx!(self, skip_if group.free_slots() == 0, |tx| claim_jobs_in(&mut tx, group, now))
            }

            async fn start_jobs(&self, leases: &[LeaseRef], now: i64) -> Result<Vec<bool>, StoreError> {
                if self.has_job_writer() && !leases.is_empty() {
                    let batch = JobWriteBatch { starts: leases.to_vec(), ..Default::default() };
                    return Ok(self.write_on_job_writer(batch, now).await?.started);
                }
                in_write_tx!(self, skip_if leases.is_empty(), |tx| start_jobs_in(&mut tx, leases, now))
            }

            async fn extend_leases(&self, agent_id: &str, job_id: Option<&str>, now: i64) -> Result<u64, StoreError> {
                // Only acknowledged jobs: an agent that never acked a job (it could not read
                // it, or never got it) must not keep it by heartbeating; its lease runs out
                // and the job goes back to the queue. `status IN (…)` stays so the held-jobs
                // index (whose condition it is) is still searched.
                let done = sqlx::query(
                    "UPDATE jobs SET lease_expires_at = $2 + visibility_timeout_ms \
                     WHERE assigned_agent_id = $1 AND status IN ('leased', 'running') AND status = 'running' \
                     AND ($3 IS NULL OR id = $3)",
                )
                .bind(agent_id)
                .bind(now)
                .bind(job_id)
                .execute(&self.writer)
                .await?;
                Ok(done.rows_affected())
            }

            async fn release_unclaimed_leases(&self, agent_id: &str, keep: &[String], now: i64) -> Result<u64, StoreError> {
                // Read, then end each one by id: portable across both engines, and the few
                // rows an agent holds make this cheap. A row that changed meanwhile (finished,
                // or leased anew) no longer matches the guarded update.
                let held: Vec<(String,)> = sqlx::query_as(
                    "SELECT id FROM jobs WHERE assigned_agent_id = $1 AND status IN ('leased', 'running') \
                     AND lease_expires_at > $2",
                )
                .bind(agent_id)
                .bind(now)
                .fetch_all(&self.writer)
                .await?;
                let mut released = 0;
                for (id,) in held.into_iter().filter(|(id,)| !keep.contains(id)) {
                    let done = sqlx::query(
                        "UPDATE jobs SET lease_expires_at = $3 WHERE id = $1 AND assigned_agent_id = $2 \
                         AND status IN ('leased', 'running') AND lease_expires_at > $3",
                    )
                    .bind(&id)
                    .bind(agent_id)
                    .bind(now)
                    .execute(&self.writer)
                    .await?;
                    released += done.rows_affected();
                }
                Ok(released)
            }

            async fn finish_jobs(
                &self,
                requests: &[FinishRequest],
                now: i64,
            ) -> Result<Vec<FinishOutcome>, StoreError> {
                if self.has_job_writer() && !requests.is_empty() {
                    let batch = JobWriteBatch { finishes: requests.to_vec(), ..Default::default() };
                    return Ok(self.write_on_job_writer(batch, now).await?.finished);
                }
                in_write_tx!(self, skip_if requests.is_empty(), |tx| finish_jobs_in(&mut tx, requests, now))
            }

            async fn write_jobs(&self, batch: &JobWriteBatch, now: i64) -> Result<JobWriteAnswers, StoreError> {
                if self.has_job_writer() && !batch.is_empty() {
                    return self.write_on_job_writer(batch.clone(), now).await;
                }
                in_write_tx!(self, skip_if batch.is_empty(), |tx| write_jobs_in(&mut tx, batch, now))
            }

            fn group_writer(&self) -> Option<Box<dyn crate::writes::GroupWriter>> {
                self.own_group_writer()
            }

            async fn release_unstarted_jobs(&self, agent_id: Option<&str>, now: i64) -> Result<u64, StoreError> {
                let mut tx = self.write_tx().await?;
                // `status IN ('leased', 'running')` names the held-jobs index's condition; the
                // agent's filter is spelled out so that index is searched, not scanned.
                let holder = if agent_id.is_some() { "assigned_agent_id = $2" } else { "$2 IS NULL" };
                let rows = sqlx::query(&format!(
                    "UPDATE jobs SET status = CASE WHEN cancel_requested <> 0 THEN 'cancelled' ELSE 'pending' END, \
                     finished_at = CASE WHEN cancel_requested <> 0 THEN $1 END, \
                     assigned_agent_id = CASE WHEN cancel_requested <> 0 THEN assigned_agent_id END, \
                     lease_expires_at = NULL, updated_at = $1 \
                     WHERE status IN ('leased', 'running') AND status = 'leased' AND {holder} RETURNING id, lease_token",
                ))
                .bind(now)
                .bind(agent_id)
                .fetch_all(&mut *tx)
                .await?;
                for row in &rows {
                    sqlx::query(
                        "UPDATE job_attempts SET ended_at = $1, outcome = 'released' \
                         WHERE job_id = $2 AND lease_token = $3 AND outcome IS NULL",
                    )
                    .bind(now)
                    .bind(row.try_get::<String, _>("id")?)
                    .bind(row.try_get::<i64, _>("lease_token")?)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(rows.len() as u64)
            }

            async fn expire_leases(&self, now: i64) -> Result<Vec<ExpiredLease>, StoreError> {
                let mut tx = self.write_tx().await?;
                let candidates = sqlx::query(&format!(
                    "SELECT id, lease_token, assigned_agent_id FROM jobs \
                     WHERE status IN ('leased', 'running') AND lease_expires_at < $1 LIMIT 500{}",
                    dialect::SKIP_LOCKED
                ))
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
                let mut expired = Vec::with_capacity(candidates.len());
                for row in &candidates {
                    let job_id: String = row.try_get("id")?;
                    let token: i64 = row.try_get("lease_token")?;
                    let agent_id: Option<String> = row.try_get("assigned_agent_id")?;
                    let status: Option<String> = sqlx::query_scalar(
                        "UPDATE jobs SET \
                         status = CASE WHEN cancel_requested <> 0 THEN 'cancelled' \
                             WHEN attempts >= max_receive_count THEN 'dead' ELSE 'pending' END, \
                         error = CASE WHEN cancel_requested <> 0 THEN $4 \
                             WHEN attempts >= max_receive_count THEN $5 ELSE error END, \
                         error_code = CASE WHEN cancel_requested <> 0 THEN 'CANCELLED' \
                             WHEN attempts >= max_receive_count THEN 'LEASE_EXPIRED' ELSE error_code END, \
                         finished_at = CASE WHEN cancel_requested <> 0 OR attempts >= max_receive_count THEN $1 END, \
                         assigned_agent_id = CASE WHEN cancel_requested <> 0 OR attempts >= max_receive_count \
                             THEN assigned_agent_id END, \
                         lease_expires_at = NULL, updated_at = $1 \
                         WHERE id = $2 AND lease_token = $3 AND status IN ('leased', 'running') RETURNING status",
                    )
                    .bind(now)
                    .bind(&job_id)
                    .bind(token)
                    .bind(cancelled_error())
                    .bind(lease_expired_error())
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some(status) = status else { continue };
                    sqlx::query(
                        "UPDATE job_attempts SET ended_at = $1, outcome = 'expired' \
                         WHERE job_id = $2 AND lease_token = $3 AND outcome IS NULL",
                    )
                    .bind(now)
                    .bind(&job_id)
                    .bind(token)
                    .execute(&mut *tx)
                    .await?;
                    let new_state = JobState::parse(&status)
                        .ok_or_else(|| StoreError::Corrupt(format!("unknown job status {status:?}")))?;
                    expired.push(ExpiredLease { job_id, agent_id, new_state });
                }
                tx.commit().await?;
                Ok(expired)
            }

            async fn request_cancel(&self, job_id: &str, now: i64) -> Result<CancelOutcome, StoreError> {
                let mut tx = self.write_tx().await?;
                let cancelled = sqlx::query(&format!(
                    "UPDATE jobs SET status = 'cancelled', finished_at = $2, updated_at = $2, error = $3, \
                     error_code = 'CANCELLED' WHERE id = $1 AND status = 'pending' RETURNING {JOB_COLUMNS}"
                ))
                .bind(job_id)
                .bind(now)
                .bind(cancelled_error())
                .fetch_optional(&mut *tx)
                .await?;
                let outcome = if let Some(row) = cancelled {
                    CancelOutcome::Cancelled(job_from_row(&row)?)
                } else {
                    let requested = sqlx::query(&format!(
                        "UPDATE jobs SET cancel_requested = 1, updated_at = $2 \
                         WHERE id = $1 AND status IN ('leased', 'running') RETURNING {JOB_COLUMNS}"
                    ))
                    .bind(job_id)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                    match requested {
                        Some(row) => CancelOutcome::Requested(job_from_row(&row)?),
                        None => {
                            let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
                                .bind(job_id)
                                .fetch_optional(&mut *tx)
                                .await?;
                            match row {
                                Some(row) => CancelOutcome::AlreadyFinal(job_from_row(&row)?),
                                None => CancelOutcome::NotFound,
                            }
                        }
                    }
                };
                tx.commit().await?;
                Ok(outcome)
            }

            async fn held_jobs(&self, agent_id: &str) -> Result<Vec<(String, i64)>, StoreError> {
                let rows = sqlx::query(
                    "SELECT id, lease_token FROM jobs WHERE assigned_agent_id = $1 AND status IN ('leased', 'running')",
                )
                .bind(agent_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(|row| Ok((row.try_get("id")?, row.try_get("lease_token")?))).collect()
            }

            async fn cancel_requests_for(&self, agent_id: &str) -> Result<Vec<String>, StoreError> {
                let ids: Vec<String> = sqlx::query_scalar(
                    "SELECT id FROM jobs WHERE assigned_agent_id = $1 AND status IN ('leased', 'running') \
                     AND cancel_requested <> 0",
                )
                .bind(agent_id)
                .fetch_all(&self.pool)
                .await?;
                Ok(ids)
            }

            async fn creator_limits(&self, creator_id: &str) -> Result<CreatorLimits, StoreError> {
                let max_concurrent: Option<Option<i64>> =
                    sqlx::query_scalar("SELECT max_concurrent FROM creator_limits WHERE creator_id = $1")
                        .bind(creator_id)
                        .fetch_optional(&self.pool)
                        .await?;
                let rows = sqlx::query(
                    "SELECT job_type, max_per_hour FROM creator_type_limits WHERE creator_id = $1 ORDER BY job_type",
                )
                .bind(creator_id)
                .fetch_all(&self.pool)
                .await?;
                let mut limits = CreatorLimits { max_concurrent: max_concurrent.flatten(), ..Default::default() };
                for row in &rows {
                    limits.max_per_hour.insert(row.try_get("job_type")?, row.try_get("max_per_hour")?);
                }
                Ok(limits)
            }

            async fn set_creator_limits(
                &self,
                creator_id: &str,
                limits: &CreatorLimits,
                now: i64,
            ) -> Result<(), StoreError> {
                let mut tx = self.write_tx().await?;
                sqlx::query(
                    "INSERT INTO creator_limits (creator_id, max_concurrent, updated_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (creator_id) DO UPDATE SET max_concurrent = excluded.max_concurrent, \
                     updated_at = excluded.updated_at",
                )
                .bind(creator_id)
                .bind(limits.max_concurrent)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM creator_type_limits WHERE creator_id = $1")
                    .bind(creator_id)
                    .execute(&mut *tx)
                    .await?;
                for (job_type, max) in &limits.max_per_hour {
                    sqlx::query(
                        "INSERT INTO creator_type_limits (creator_id, job_type, max_per_hour) VALUES ($1, $2, $3)",
                    )
                    .bind(creator_id)
                    .bind(job_type)
                    .bind(*max)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn recent_recipients(
                &self,
                creator_id: &str,
                recipients: &[String],
                since: i64,
            ) -> Result<Vec<LedgerEntry>, StoreError> {
                if recipients.is_empty() {
                    return Ok(Vec::new());
                }
                let rows = sqlx::query(recipients_sql())
                    .bind(creator_id)
                    .bind(list_text(recipients))
                    .bind(since)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|row| {
                        Ok(LedgerEntry {
                            recipient: row.try_get("recipient")?,
                            last_sent_at: row.try_get("last_sent_at")?,
                        })
                    })
                    .collect()
            }

            async fn uncertain_recipients(
                &self,
                creator_id: Option<&str>,
                limit: i64,
            ) -> Result<Vec<UncertainRecipient>, StoreError> {
                let rows = sqlx::query(LEDGER_UNCERTAIN_LIST)
                    .bind(creator_id)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|row| {
                        Ok(UncertainRecipient {
                            creator_id: row.try_get("creator_id")?,
                            recipient: row.try_get("recipient")?,
                            reported_at: row.try_get("last_sent_at")?,
                            job_id: row.try_get("job_id")?,
                        })
                    })
                    .collect()
            }

            async fn start_redrive(
                &self,
                id: &str,
                filter: &RedriveFilter,
                rate_per_sec: i64,
                now: i64,
            ) -> Result<RedriveStart, StoreError> {
                let mut tx = self.write_tx().await?;
                if let Some(lock) = dialect::REDRIVE_LOCK {
                    sqlx::query(lock).execute(&mut *tx).await?;
                }
                // One move per creator and queue (job type): only a move that could touch the
                // same dead jobs is in the way. A move over all types or all creators (an
                // operator's) overlaps every queue or creator; one creator's move never
                // blocks another creator's.
                let busy = sqlx::query(&format!(
                    "SELECT {REDRIVE_COLUMNS} FROM redrives WHERE status = 'running' \
                     AND (job_type IS NULL OR $1 IS NULL OR job_type = $1) \
                     AND (creator_id IS NULL OR $2 IS NULL OR creator_id = $2) ORDER BY created_at LIMIT 1"
                ))
                .bind(&filter.job_type)
                .bind(&filter.creator_id)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(row) = busy {
                    let record = redrive_from_row(&row)?;
                    tx.rollback().await?;
                    return Ok(RedriveStart::Busy(record));
                }
                let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM jobs WHERE $1 = $1 AND {DEAD_FILTER}"))
                    .bind(now)
                    .bind(&filter.job_type)
                    .bind(&filter.creator_id)
                    .bind(&filter.error_code)
                    .bind(filter.dead_from)
                    .bind(filter.dead_to)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                // The first step may move one second's worth at once.
                let row = sqlx::query(&format!(
                    "INSERT INTO redrives (id, status, job_type, creator_id, error_code, dead_from, dead_to, \
                     rate_per_sec, total, moved, last_step_at, created_at, updated_at) \
                     VALUES ($1, 'running', $2, $3, $4, $5, $6, $7, $8, 0, $9, $10, $10) RETURNING {REDRIVE_COLUMNS}"
                ))
                .bind(id)
                .bind(&filter.job_type)
                .bind(&filter.creator_id)
                .bind(&filter.error_code)
                .bind(filter.dead_from)
                .bind(filter.dead_to)
                .bind(rate_per_sec)
                .bind(total)
                .bind(now - 1000)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                let record = redrive_from_row(&row)?;
                tx.commit().await?;
                Ok(RedriveStart::Started(record))
            }

            async fn redrive(&self, id: &str) -> Result<Option<RedriveRecord>, StoreError> {
                let row = sqlx::query(&format!("SELECT {REDRIVE_COLUMNS} FROM redrives WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(redrive_from_row).transpose()
            }

            async fn running_redrives(&self) -> Result<Vec<RedriveRecord>, StoreError> {
                let rows = sqlx::query(&format!(
                    "SELECT {REDRIVE_COLUMNS} FROM redrives WHERE status = 'running' ORDER BY created_at"
                ))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(redrive_from_row).collect()
            }

            async fn redrive_step(&self, id: &str, now: i64) -> Result<Option<RedriveRecord>, StoreError> {
                let Some(current) = self.redrive(id).await? else { return Ok(None) };
                if current.status != RedriveStatus::Running {
                    return Ok(None);
                }
                // A sweeper may have read its clock just before the move was created; the move
                // cannot have started after the step, so its first second is whole either way.
                let now = now.max(current.created_at);
                let elapsed = (now - current.last_step_at).clamp(0, 1000);
                let allowance = current.rate_per_sec.saturating_mul(elapsed) / 1000;
                if allowance < 1 {
                    return Ok(None);
                }
                let mut tx = self.write_tx().await?;
                // Compare-and-set on the last step: of several processes stepping the same
                // move, one wins each instant, so the rate holds across the fleet.
                let claimed = sqlx::query(
                    "UPDATE redrives SET last_step_at = $1, updated_at = $1 \
                     WHERE id = $2 AND last_step_at = $3 AND status = 'running'",
                )
                .bind(now)
                .bind(id)
                .bind(current.last_step_at)
                .execute(&mut *tx)
                .await?;
                if claimed.rows_affected() != 1 {
                    tx.rollback().await?;
                    return Ok(None);
                }
                let moved = sqlx::query(redrive_move_sql())
                    .bind(now)
                    .bind(&current.filter.job_type)
                    .bind(&current.filter.creator_id)
                    .bind(&current.filter.error_code)
                    .bind(current.filter.dead_from)
                    .bind(current.filter.dead_to)
                    .bind(current.created_at)
                    .bind(allowance)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected() as i64;
                let done = moved < allowance;
                let row = sqlx::query(&format!(
                    "UPDATE redrives SET moved = moved + $1, status = $2, finished_at = $3 WHERE id = $4 \
                     RETURNING {REDRIVE_COLUMNS}"
                ))
                .bind(moved)
                .bind(if done { "completed" } else { "running" })
                .bind(done.then_some(now))
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
                let record = redrive_from_row(&row)?;
                tx.commit().await?;
                Ok(Some(record))
            }

            async fn purge_finished_jobs(&self, before: i64, limit: i64) -> Result<u64, StoreError> {
                let mut tx = self.write_tx().await?;
                let ids: Vec<String> = sqlx::query_scalar(
                    "SELECT id FROM jobs WHERE status IN ('succeeded', 'failed', 'dead', 'cancelled') \
                     AND finished_at < $1 LIMIT $2",
                )
                .bind(before)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
                for id in &ids {
                    sqlx::query("DELETE FROM job_attempts WHERE job_id = $1").bind(id).execute(&mut *tx).await?;
                    sqlx::query("DELETE FROM jobs WHERE id = $1").bind(id).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(ids.len() as u64)
            }

            async fn purge_ledger(&self, before: i64) -> Result<u64, StoreError> {
                let done = sqlx::query("DELETE FROM recipient_ledger WHERE last_sent_at < $1")
                    .bind(before)
                    .execute(&self.writer)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError> {
                // One part per partial index, so finished jobs (most of the table) are never read.
                let rows = sqlx::query(
                    "SELECT job_type, status, COUNT(*) AS n, MIN(created_at) AS oldest FROM jobs \
                     WHERE status = 'pending' GROUP BY job_type, status \
                     UNION ALL SELECT job_type, status, COUNT(*), MIN(created_at) FROM jobs \
                     WHERE status IN ('leased', 'running') GROUP BY job_type, status \
                     UNION ALL SELECT job_type, status, COUNT(*), MIN(created_at) FROM jobs \
                     WHERE status = 'dead' AND finished_at IS NOT NULL GROUP BY job_type, status",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        let status: String = row.try_get("status")?;
                        Ok(QueueDepth {
                            job_type: row.try_get("job_type")?,
                            status: JobState::parse(&status)
                                .ok_or_else(|| StoreError::Corrupt(format!("unknown job status {status:?}")))?,
                            count: row.try_get("n")?,
                            oldest_created_at: row.try_get("oldest")?,
                        })
                    })
                    .collect()
            }

            async fn put_tunnel_route(&self, route: &NewTunnelRoute, now: i64) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO tunnel_routes (agent_id, tunnel_id, instance_id, relay_url, opened_at, seen_at) \
                     VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (agent_id) DO UPDATE SET \
                     tunnel_id = excluded.tunnel_id, instance_id = excluded.instance_id, \
                     relay_url = excluded.relay_url, opened_at = excluded.opened_at, seen_at = excluded.seen_at",
                )
                .bind(&route.agent_id)
                .bind(&route.tunnel_id)
                .bind(&route.instance_id)
                .bind(&route.relay_url)
                .bind(now)
                .execute(&self.writer)
                .await?;
                Ok(())
            }

            async fn touch_tunnel_route(&self, agent_id: &str, tunnel_id: &str, now: i64) -> Result<bool, StoreError> {
                let done = sqlx::query("UPDATE tunnel_routes SET seen_at = $1 WHERE agent_id = $2 AND tunnel_id = $3")
                    .bind(now)
                    .bind(agent_id)
                    .bind(tunnel_id)
                    .execute(&self.writer)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn remove_tunnel_route(&self, agent_id: &str, tunnel_id: &str) -> Result<bool, StoreError> {
                let done = sqlx::query("DELETE FROM tunnel_routes WHERE agent_id = $1 AND tunnel_id = $2")
                    .bind(agent_id)
                    .bind(tunnel_id)
                    .execute(&self.writer)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn purge_tunnel_routes(&self, before: i64) -> Result<u64, StoreError> {
                let done = sqlx::query("DELETE FROM tunnel_routes WHERE seen_at < $1")
                    .bind(before)
                    .execute(&self.writer)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn tunnel_routes(&self, seen_since: i64) -> Result<Vec<TunnelRoute>, StoreError> {
                let rows = sqlx::query(
                    "SELECT r.agent_id, r.tunnel_id, r.instance_id, r.relay_url, r.opened_at, r.seen_at, \
                     a.creator_id, a.labels FROM tunnel_routes r JOIN agents a ON a.id = r.agent_id \
                     WHERE r.seen_at >= $1 ORDER BY r.agent_id",
                )
                .bind(seen_since)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(TunnelRoute {
                            agent_id: row.try_get("agent_id")?,
                            tunnel_id: row.try_get("tunnel_id")?,
                            instance_id: row.try_get("instance_id")?,
                            relay_url: row.try_get("relay_url")?,
                            creator_id: row.try_get("creator_id")?,
                            labels: parse_labels(row.try_get("labels")?)?,
                            opened_at: row.try_get("opened_at")?,
                            seen_at: row.try_get("seen_at")?,
                        })
                    })
                    .collect()
            }

            async fn create_device_code(&self, code: &NewDeviceCode, now: i64) -> Result<(), StoreError> {
                sqlx::query("DELETE FROM device_codes WHERE expires_at <= $1")
                    .bind(now - $crate::store::DEVICE_CODE_KEEP_MS)
                    .execute(&self.writer)
                    .await?;
                sqlx::query(
                    "INSERT INTO device_codes (device_code_hash, user_code_hash, public_key, name, version, status, \
                     interval_ms, created_at, expires_at, last_poll_at) VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $7)",
                )
                .bind(&code.device_code_hash)
                .bind(&code.user_code_hash)
                .bind(&code.public_key)
                .bind(&code.name)
                .bind(&code.version)
                .bind(code.interval_ms)
                .bind(now)
                .bind(code.expires_at)
                .execute(&self.writer)
                .await?;
                Ok(())
            }

            async fn device_code_by_user_code(
                &self,
                user_code_hash: &str,
            ) -> Result<Option<DeviceCodeRecord>, StoreError> {
                let row = sqlx::query(&format!("SELECT {DEVICE_CODE_COLUMNS} FROM device_codes WHERE user_code_hash = $1"))
                    .bind(user_code_hash)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(device_code_from_row).transpose()
            }

            async fn decide_device_code(
                &self,
                user_code_hash: &str,
                decision: &DeviceDecision,
                now: i64,
            ) -> Result<Option<DeviceCodeRecord>, StoreError> {
                let mut tx = self.write_tx().await?;
                let (status, creator_id) = match decision {
                    DeviceDecision::Approve { creator_id } => {
                        // The agent row will reference the creator; a creator known only by
                        // its API key has no row yet.
                        sqlx::query("INSERT INTO creators (id, created_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
                            .bind(creator_id)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                        ("approved", Some(creator_id.as_str()))
                    }
                    DeviceDecision::Deny => ("denied", None),
                };
                let row = sqlx::query(&format!(
                    "UPDATE device_codes SET status = $1, creator_id = $2, decided_at = $3 \
                     WHERE user_code_hash = $4 AND status = 'pending' AND expires_at > $3 RETURNING {DEVICE_CODE_COLUMNS}"
                ))
                .bind(status)
                .bind(creator_id)
                .bind(now)
                .bind(user_code_hash)
                .fetch_optional(&mut *tx)
                .await?;
                let record = row.as_ref().map(device_code_from_row).transpose()?;
                if record.is_some() {
                    tx.commit().await?;
                } else {
                    tx.rollback().await?;
                }
                Ok(record)
            }

            async fn poll_device_code(
                &self,
                device_code_hash: &str,
                agent_id: &str,
                now: i64,
            ) -> Result<DevicePoll, StoreError> {
                let mut tx = self.write_tx().await?;
                let row = sqlx::query(&format!(
                    "SELECT {DEVICE_CODE_COLUMNS} FROM device_codes WHERE device_code_hash = $1{}",
                    dialect::FOR_UPDATE
                ))
                .bind(device_code_hash)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(record) = row.as_ref().map(device_code_from_row).transpose()? else {
                    tx.rollback().await?;
                    return Ok(DevicePoll::Unknown);
                };
                let step = record.poll_step(now);
                let answer = match step {
                    DevicePollStep::Expired => {
                        tx.rollback().await?;
                        return Ok(DevicePoll::Expired);
                    }
                    DevicePollStep::SlowDown => {
                        let interval_ms = record.interval_ms + $crate::store::SLOW_DOWN_STEP_MS;
                        sqlx::query("UPDATE device_codes SET interval_ms = $1, last_poll_at = $2 WHERE device_code_hash = $3")
                            .bind(interval_ms)
                            .bind(now)
                            .bind(device_code_hash)
                            .execute(&mut *tx)
                            .await?;
                        DevicePoll::SlowDown { interval_ms }
                    }
                    DevicePollStep::Pending | DevicePollStep::Denied => {
                        sqlx::query("UPDATE device_codes SET last_poll_at = $1 WHERE device_code_hash = $2")
                            .bind(now)
                            .bind(device_code_hash)
                            .execute(&mut *tx)
                            .await?;
                        if step == DevicePollStep::Pending { DevicePoll::Pending } else { DevicePoll::Denied }
                    }
                    DevicePollStep::Redeem => {
                        let creator_id = record.creator_id.clone().ok_or_else(|| {
                            StoreError::Corrupt("an approved device code has no creator".to_owned())
                        })?;
                        // Compare-and-set as well as the row lock: an engine that did not
                        // hold the row would still redeem an approval only once.
                        let redeemed = sqlx::query(
                            "UPDATE device_codes SET status = 'used', agent_id = $1, last_poll_at = $2 \
                             WHERE device_code_hash = $3 AND status = 'approved'",
                        )
                        .bind(agent_id)
                        .bind(now)
                        .bind(device_code_hash)
                        .execute(&mut *tx)
                        .await?;
                        if redeemed.rows_affected() != 1 {
                            tx.rollback().await?;
                            return Ok(DevicePoll::Expired);
                        }
                        sqlx::query(
                            "INSERT INTO agents (id, creator_id, public_key, name, version, created_at, online) \
                             VALUES ($1, $2, $3, $4, $5, $6, 0)",
                        )
                        .bind(agent_id)
                        .bind(&creator_id)
                        .bind(&record.public_key)
                        .bind(&record.name)
                        .bind(&record.version)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                        DevicePoll::Enrolled(AgentRecord {
                            id: agent_id.to_owned(),
                            creator_id,
                            public_key: record.public_key,
                            name: record.name,
                            version: record.version,
                            created_at: now,
                            last_heartbeat_at: None,
                            connected_at: None,
                            online: false,
                            labels: Vec::new(),
                            slots: None,
                        })
                    }
                };
                tx.commit().await?;
                Ok(answer)
            }

            async fn creator_known(&self, creator_id: &str) -> Result<bool, StoreError> {
                let known: Option<i64> = sqlx::query_scalar(
                    "SELECT CAST(1 AS BIGINT) WHERE EXISTS (SELECT 1 FROM creators WHERE id = $1) \
                     OR EXISTS (SELECT 1 FROM api_keys WHERE creator_id = $1)",
                )
                .bind(creator_id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(known.is_some())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: &str, job_type: &str, target: Option<&str>) -> ClaimCandidate {
        ClaimCandidate { job_id: id.into(), job_type: job_type.into(), target_agent_id: target.map(Into::into) }
    }

    fn agents(list: &[(&str, u32)]) -> Vec<(String, u32)> {
        list.iter().map(|(id, slots)| (id.to_string(), *slots)).collect()
    }

    fn plan(agent_list: &[(&str, u32)], candidates: Vec<ClaimCandidate>, budget: i64) -> Vec<(String, String)> {
        plan_claims(&agents(agent_list), candidates, budget, &mut HashMap::new())
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(j, a)| (j.to_string(), a.to_string())).collect()
    }

    #[test]
    fn the_job_column_list_and_its_positions_name_the_same_columns() {
        let listed: Vec<&str> = JOB_COLUMNS.split(',').map(str::trim).collect();
        assert_eq!(listed, JOB_COLUMN_NAMES);
        assert_eq!(job_column("id"), 0);
        assert_eq!(job_column("finished_at"), 23);
    }

    #[test]
    fn jobs_are_dealt_one_per_agent_in_turn_within_free_slots() {
        let jobs = (1..=5).map(|i| candidate(&format!("j{i}"), "t", None)).collect();
        let got = plan(&[("a", 1), ("b", 3)], jobs, 100);
        assert_eq!(got, pairs(&[("j1", "a"), ("j2", "b"), ("j3", "b"), ("j4", "b")]));
    }

    #[test]
    fn a_job_naming_an_agent_goes_to_it_or_waits() {
        let jobs = vec![candidate("j1", "t", Some("b")), candidate("j2", "t", Some("b")), candidate("j3", "t", None)];
        let got = plan(&[("a", 1), ("b", 1)], jobs, 100);
        // b's one slot takes j1; j2 must wait for b; j3 goes to whoever is free.
        assert_eq!(got, pairs(&[("j1", "b"), ("j3", "a")]));
    }

    #[test]
    fn the_budget_and_per_type_budgets_cap_the_claim() {
        let jobs = vec![candidate("j1", "dm", None), candidate("j2", "dm", None), candidate("j3", "scrape", None)];
        let mut type_budgets = HashMap::from([("dm".to_string(), 1)]);
        let got = plan_claims(&agents(&[("a", 8)]), jobs, 100, &mut type_budgets);
        assert_eq!(got, pairs(&[("j1", "a"), ("j3", "a")]));
        assert_eq!(type_budgets["dm"], 0);

        let jobs = (1..=5).map(|i| candidate(&format!("j{i}"), "t", None)).collect();
        assert_eq!(plan(&[("a", 8)], jobs, 2).len(), 2);
        assert!(plan(&[("a", 0)], vec![candidate("j1", "t", None)], 5).is_empty());
    }
}
