//! Owns the SQLite job writer: a connection of its own that writes each group of
//! submissions, acks, reports and claims ([`JobWriteBatch`]) in one transaction, a plain
//! statement per row. It must never write anything else, and never write while another
//! writer holds the write lock: it writes only while holding the store's `sqlx` write
//! connection.
//!
//! Why a connection of its own, used synchronously: through `sqlx`, every statement is a
//! round trip to the connection's worker thread, so a small group cost a dozen thread
//! wake-ups, and the bulk statements that make large groups cheap (one JSON list per kind)
//! cost more than a statement per row when a group holds one or two jobs, as it does at
//! moderate load. Here a group is one call from the job writes' thread
//! ([`crate::writes::JobWrites`]), and each row a cached prepared statement.

use super::claim_candidates_sql;
use crate::store::sql::{
    excluded_text, job_column, list_text, parse_json, parse_labels, plan_claims, ClaimCandidate, FinishRow, InsertRow,
    CREATOR_LIMITS, HELD_BY_CREATOR, INSERT_STALE_ATTEMPT, JOB_COLUMNS, LEDGER_UNCERTAIN, LEDGER_UPSERT,
    REPORTED_ATTEMPT, STALE_ATTEMPT, TYPE_BUDGETS,
};
use crate::store::{
    ClaimGroup, FinishOutcome, FinishRequest, InsertOutcome, JobRecord, JobState, JobWriteAnswers, JobWriteBatch,
    LeaseRef, NewJob, StoreError,
};
use crate::writes::GroupWriter;
use rusqlite::{
    named_params, params, CachedStatement, Connection, OpenFlags, OptionalExtension, Row, Transaction,
    TransactionBehavior,
};
use sqlx::SqlitePool;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tokio::runtime::Handle;

/// Prepared statements kept per connection; the writer uses about a dozen.
const STATEMENT_CACHE: usize = 32;

/// The connection and what it keeps between groups. Shared by the job writes' thread and
/// the store's own [`crate::store::Store::write_jobs`]; the mutex is uncontended in a
/// running hub, where only that thread writes jobs.
struct JobConnection {
    /// None once the store is closed.
    connection: Option<Connection>,
    agent_lists: AgentLists,
    /// The store's one `sqlx` write connection, held while a group is written so the two
    /// connections never wait on each other's lock (SQLite's busy handler sleeps in steps of
    /// up to 100 ms).
    write_lock: SqlitePool,
    runtime: Handle,
}

impl JobConnection {
    fn write(&mut self, batch: &JobWriteBatch, now: i64) -> Result<JobWriteAnswers, StoreError> {
        let connection = self
            .connection
            .as_mut()
            .ok_or_else(|| StoreError::WriterStopped("the SQLite job writer is closed".to_owned()))?;
        let _write_lock = self.runtime.block_on(self.write_lock.acquire())?;
        write_batch(connection, &mut self.agent_lists, batch, now)
    }
}

#[derive(Clone)]
pub(super) struct JobWriter {
    shared: Arc<Mutex<JobConnection>>,
}

impl JobWriter {
    /// Opens a second connection to the (already migrated) database file with the store's
    /// settings. `write_lock` is the store's write pool. Call from within the runtime.
    pub fn open(
        path: &Path,
        busy_timeout: Duration,
        pragmas: &[(&str, &str)],
        write_lock: SqlitePool,
    ) -> Result<JobWriter, StoreError> {
        let connection =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        connection.busy_timeout(busy_timeout)?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        for (name, value) in pragmas {
            connection.execute_batch(&format!("PRAGMA {name} = {value}"))?;
        }
        // The agent ids this connection writes are checked before they reach it: a target
        // agent by the submit handler (404 when unknown), a holder by being the session that
        // leases or reports, and agents are never deleted. SQLite's check of them cost a
        // lookup in `agents` per lease and per result, and made each of those statements keep
        // a journal of the pages it changed so that a failed check could undo it: about a
        // tenth of this thread's time. `sqlx`'s connections and PostgreSQL still check them.
        connection.execute_batch("PRAGMA foreign_keys = OFF")?;
        let shared = JobConnection {
            connection: Some(connection),
            agent_lists: AgentLists::default(),
            write_lock,
            runtime: Handle::current(),
        };
        Ok(JobWriter { shared: Arc::new(Mutex::new(shared)) })
    }

    fn lock(&self) -> MutexGuard<'_, JobConnection> {
        // A panic mid-group rolled its transaction back; the connection is still sound.
        self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes `batch` in one transaction, on a blocking thread.
    pub async fn write(&self, batch: JobWriteBatch, now: i64) -> Result<JobWriteAnswers, StoreError> {
        let writer = self.clone();
        tokio::task::spawn_blocking(move || writer.lock().write(&batch, now))
            .await
            .unwrap_or_else(|e| Err(StoreError::WriterStopped(format!("the SQLite job writer failed: {e}"))))
    }

    /// The writer for the job writes' thread.
    pub fn group_writer(&self) -> Box<dyn GroupWriter> {
        Box::new(self.clone())
    }

    /// Closes the connection once the group being written, if any, is committed; later
    /// writes fail.
    pub async fn close(&self) {
        let writer = self.clone();
        let _ = tokio::task::spawn_blocking(move || writer.lock().connection.take()).await;
    }
}

impl GroupWriter for JobWriter {
    fn write(&mut self, batch: &JobWriteBatch, now: i64) -> Result<JobWriteAnswers, StoreError> {
        self.lock().write(batch, now)
    }
}

/// Same order as the bulk statements of the other engine: submissions, acks, reports, then
/// claims, so a claim sees the slots and limits the reports before it freed.
fn write_batch(
    connection: &mut Connection,
    agent_lists: &mut AgentLists,
    batch: &JobWriteBatch,
    now: i64,
) -> Result<JobWriteAnswers, StoreError> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let answers = {
        let mut rows = RowStatements::new(&tx);
        let inserted = batch.inserts.iter().map(|job| insert(&mut rows, job, now)).collect::<Result<Vec<_>, _>>()?;
        let started = batch.starts.iter().map(|lease| start(&mut rows, lease, now)).collect::<Result<Vec<_>, _>>()?;
        let finished =
            batch.finishes.iter().map(|request| finish(&mut rows, request, now)).collect::<Result<Vec<_>, _>>()?;
        let claimed = batch
            .claims
            .iter()
            .map(|group| claim(&mut rows, agent_lists, group, now))
            .collect::<Result<Vec<_>, _>>()?;
        JobWriteAnswers { inserted, started, finished, claimed }
    };
    tx.commit()?;
    Ok(answers)
}

/// The statements a group runs once per job. Their parameters are numbered (`?N`) and bound
/// by position: binding by name looks every name up again for every row.
#[derive(Clone, Copy)]
enum RowSql {
    Insert,
    Start,
    Finish,
    CloseAttempt,
    CreatorOf,
    Lease,
    LeasedJob,
    /// Keep last: [`RowSql::COUNT`] counts up to it.
    OpenAttempt,
}

impl RowSql {
    /// One slot per statement: the last variant's index, plus one.
    const COUNT: usize = RowSql::OpenAttempt as usize + 1;

    fn text(self) -> &'static str {
        match self {
            RowSql::Insert => {
                "INSERT INTO jobs (id, job_type, payload, status, creator_id, target_agent_id, labels, priority, \
                 run_at, idempotency_key, max_receive_count, visibility_timeout_ms, error, error_code, \
                 skipped_recipients, created_at, updated_at, finished_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, \
                 ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?16, ?17) ON CONFLICT DO NOTHING"
            }
            RowSql::Start => {
                "UPDATE jobs SET status = 'running', lease_expires_at = ?1 + visibility_timeout_ms, updated_at = ?1 \
                 WHERE id = ?2 AND assigned_agent_id = ?3 AND lease_token = ?4 AND status IN ('leased', 'running')"
            }
            // No RETURNING here or in Lease: SQLite buffers returned rows in a temporary table
            // built and dropped per statement, which cost more than reading the row after.
            RowSql::Finish => {
                "UPDATE jobs SET status = ?1, result = COALESCE(?2, result), error = COALESCE(?3, error), \
                 error_code = COALESCE(?4, error_code), updated_at = ?5, finished_at = ?6, \
                 lease_expires_at = NULL, run_at = COALESCE(?7, run_at), payload = COALESCE(?8, payload), \
                 assigned_agent_id = ?9 \
                 WHERE id = ?10 AND assigned_agent_id = ?11 AND lease_token = ?12 AND status IN ('leased', 'running')"
            }
            RowSql::CloseAttempt => {
                "UPDATE job_attempts SET ended_at = ?1, outcome = ?2, result = ?3, error = ?4 \
                 WHERE job_id = ?5 AND lease_token = ?6 AND outcome IS NULL"
            }
            RowSql::CreatorOf => "SELECT creator_id FROM jobs WHERE id = ?1",
            RowSql::Lease => {
                "UPDATE jobs SET status = 'leased', assigned_agent_id = ?2, attempts = attempts + 1, \
                 lease_token = lease_token + 1, lease_expires_at = ?3 + visibility_timeout_ms, updated_at = ?3 \
                 WHERE id = ?1 AND status = 'pending'"
            }
            RowSql::LeasedJob => {
                static SQL: OnceLock<String> = OnceLock::new();
                SQL.get_or_init(|| format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))
            }
            RowSql::OpenAttempt => {
                "INSERT INTO job_attempts (job_id, lease_token, agent_id, creator_id, job_type, leased_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            }
        }
    }
}

/// One group's prepared statements: each per-row statement is taken from the connection's
/// cache once per group, not once per row (a lookup hashes the whole SQL text).
struct RowStatements<'c> {
    tx: &'c Transaction<'c>,
    prepared: [Option<CachedStatement<'c>>; RowSql::COUNT],
}

impl<'c> RowStatements<'c> {
    fn new(tx: &'c Transaction<'c>) -> RowStatements<'c> {
        RowStatements { tx, prepared: Default::default() }
    }

    fn get(&mut self, sql: RowSql) -> Result<&mut CachedStatement<'c>, StoreError> {
        let slot = &mut self.prepared[sql as usize];
        let statement = match slot.take() {
            Some(statement) => statement,
            None => self.tx.prepare_cached(sql.text())?,
        };
        Ok(slot.insert(statement))
    }
}

fn insert(rows: &mut RowStatements, job: &NewJob, now: i64) -> Result<InsertOutcome, StoreError> {
    let row = InsertRow::new(job, now)?;
    let inserted = rows.get(RowSql::Insert)?.execute(params![
        job.id,
        job.job_type,
        row.payload,
        row.status,
        job.creator_id,
        job.target_agent_id,
        row.labels,
        job.priority,
        job.run_at,
        job.idempotency_key,
        job.max_receive_count,
        job.visibility_timeout_ms,
        row.error,
        row.error_code,
        row.skipped_recipients,
        now,
        row.finished_at,
    ])?;
    if inserted > 0 {
        return Ok(InsertOutcome::Created(row.stored(now)));
    }
    // Not inserted: `DO NOTHING` without a target also covers the partial unique index on
    // (creator, idempotency key), so this is a duplicate submit (earlier in this group, or
    // stored before).
    let existing = match &job.idempotency_key {
        Some(key) => {
            cached(rows.tx, &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE creator_id = ?1 AND idempotency_key = ?2"))?
                .query_row((&job.creator_id, key), job_from_row)
                .optional()?
        }
        None => None,
    };
    match existing {
        Some(existing) => Ok(InsertOutcome::Existing(existing?)),
        None => Err(StoreError::Corrupt(format!("job id {} collided with an existing job", job.id))),
    }
}

fn start(rows: &mut RowStatements, lease: &LeaseRef, now: i64) -> Result<bool, StoreError> {
    let changed = rows.get(RowSql::Start)?.execute((now, &lease.job_id, &lease.agent_id, lease.lease_token))?;
    Ok(changed > 0)
}

fn finish(rows: &mut RowStatements, request: &FinishRequest, now: i64) -> Result<FinishOutcome, StoreError> {
    let row = FinishRow::new(request, now)?;
    let applied = rows.get(RowSql::Finish)?.execute(params![
        row.status,
        row.result,
        row.error,
        row.error_code,
        now,
        row.finished_at,
        row.run_at,
        row.payload,
        row.holder,
        row.job_id,
        row.agent_id,
        row.lease_token,
    ])?;
    if applied == 0 {
        return finish_not_current(rows.tx, request, &row, now);
    }
    rows.get(RowSql::CloseAttempt)?.execute((
        now,
        row.outcome,
        &row.result,
        &row.error,
        &row.job_id,
        row.lease_token,
    ))?;
    if !request.sent_recipients.is_empty() || !request.uncertain_recipients.is_empty() {
        let creator_id: String = rows.get(RowSql::CreatorOf)?.query_row([&request.job_id], |r| r.get(0))?;
        write_ledger(rows.tx, &creator_id, request, now)?;
    }
    Ok(FinishOutcome::Recorded(request.transition.state()))
}

/// A report that does not hold the job's current lease: a resend of a finished lease, a late
/// result of an expired one (kept as `stale`), or a job this agent never held.
fn finish_not_current(
    tx: &Transaction,
    request: &FinishRequest,
    row: &FinishRow,
    now: i64,
) -> Result<FinishOutcome, StoreError> {
    let attempt: Option<(String, String, i64, Option<String>)> = cached(tx, REPORTED_ATTEMPT)?
        .query_row(named_params! {"$1": request.job_id, "$2": request.lease_token, "$3": request.agent_id}, |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((creator_id, job_type, leased_at, outcome)) = attempt else { return Ok(FinishOutcome::NotHeld) };
    if !matches!(outcome.as_deref(), Some("expired") | Some("released") | None) {
        return Ok(FinishOutcome::AlreadyFinished);
    }
    let already = cached(tx, STALE_ATTEMPT)?.exists(named_params! {"$1": request.job_id, "$2": request.lease_token})?;
    if !already {
        cached(tx, INSERT_STALE_ATTEMPT)?.execute(named_params! {
            "$1": request.job_id, "$2": request.lease_token, "$3": request.agent_id, "$4": creator_id,
            "$5": job_type, "$6": leased_at, "$7": now, "$8": row.result, "$9": row.error,
        })?;
        // The messages went out even if the lease had lapsed: the ledger must know, or they
        // would be sent again.
        write_ledger(tx, &creator_id, request, now)?;
    }
    Ok(FinishOutcome::Stale)
}

/// Records that `creator_id` messaged the report's (normalised) sent recipients now, and
/// perhaps messaged its uncertain ones.
fn write_ledger(tx: &Transaction, creator_id: &str, request: &FinishRequest, now: i64) -> Result<(), StoreError> {
    let entries = request.sent_recipients.iter().map(|r| (LEDGER_UPSERT, r));
    let uncertain = request.uncertain_recipients.iter().map(|r| (LEDGER_UNCERTAIN, r));
    for (statement, recipient) in entries.chain(uncertain) {
        cached(tx, statement)?
            .execute(named_params! {"$1": creator_id, "$2": recipient, "$3": now, "$4": request.job_id})?;
    }
    Ok(())
}

/// [`crate::store::Store::claim_jobs`]: counts the creator's limits, picks candidates, deals
/// them out ([`plan_claims`]) and leases each, opening its attempt.
fn claim(
    rows: &mut RowStatements,
    agent_lists: &mut AgentLists,
    group: &ClaimGroup,
    now: i64,
) -> Result<Vec<JobRecord>, StoreError> {
    let tx = rows.tx;
    let wanted = group.free_slots();
    if wanted == 0 {
        return Ok(Vec::new());
    }
    let (max_concurrent, type_limits): (Option<i64>, i64) = cached(tx, CREATOR_LIMITS)?
        .query_row(named_params! {"$1": group.creator_id}, |r| Ok((r.get(0)?, r.get(1)?)))?;
    let mut budget = i64::try_from(wanted).unwrap_or(i64::MAX);
    if let Some(max) = max_concurrent {
        let held: i64 = cached(tx, HELD_BY_CREATOR)?.query_row(named_params! {"$1": group.creator_id}, |r| r.get(0))?;
        budget = budget.min(max - held);
    }
    let mut type_budgets: HashMap<String, i64> = HashMap::new();
    if type_limits > 0 {
        let mut statement = cached(tx, TYPE_BUDGETS)?;
        let rows = statement.query_map(named_params! {"$1": group.creator_id, "$2": now}, |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (job_type, remaining) = row?;
            type_budgets.insert(job_type, remaining);
        }
    }
    if budget <= 0 {
        return Ok(Vec::new());
    }
    let mut candidates = Vec::new();
    {
        let mut statement = cached(tx, claim_candidates_sql())?;
        let rows = statement.query_map(
            named_params! {
                "$1": group.creator_id, "$2": now, "$3": agent_lists.text(group),
                "$4": list_text(&group.labels),
                "$5": group.job_types.as_deref().map(list_text), "$6": budget,
                "$7": excluded_text(&group.excluded_job_types),
            },
            |r| Ok(ClaimCandidate { job_id: r.get(0)?, job_type: r.get(1)?, target_agent_id: r.get(2)? }),
        )?;
        for row in rows {
            candidates.push(row?);
        }
    }
    let plan = plan_claims(&group.agents, candidates, budget, &mut type_budgets);
    let mut leased = Vec::with_capacity(plan.len());
    for (job_id, agent_id) in plan {
        if rows.get(RowSql::Lease)?.execute((&job_id, &agent_id, now))? == 0 {
            continue;
        }
        let job = rows.get(RowSql::LeasedJob)?.query_row([&job_id], job_from_row)??;
        rows.get(RowSql::OpenAttempt)?.execute((
            &job.id,
            job.lease_token,
            &agent_id,
            &job.creator_id,
            &job.job_type,
            now,
        ))?;
        leased.push(job);
    }
    Ok(leased)
}

/// Group key: creator, labels, job types, excluded job types.
type GroupKey = (String, Vec<String>, Option<Vec<String>>, Vec<String>);

/// Each claim group's agent ids as the JSON list the candidates statement reads (for jobs
/// naming an agent), kept between claims. Built anew for a thousand agents on every claim,
/// it cost more than the claim's statements; the members of a group change far less often
/// than once per claim, and the dispatcher's rotation of their order does not change the list.
#[derive(Default)]
struct AgentLists(HashMap<GroupKey, (Vec<String>, String)>);

impl AgentLists {
    /// Groups come and go with agents' labels and capabilities; this bounds the keys kept.
    const MAX_GROUPS: usize = 256;

    fn text(&mut self, group: &ClaimGroup) -> &str {
        let key =
            (group.creator_id.clone(), group.labels.clone(), group.job_types.clone(), group.excluded_job_types.clone());
        let current = self.0.get(&key).is_some_and(|(ids, _)| is_rotation_of(&group.agents, ids));
        if !current {
            if self.0.len() >= Self::MAX_GROUPS {
                self.0.clear();
            }
            let ids: Vec<String> = group.agents.iter().map(|(id, _)| id.clone()).collect();
            let text = list_text(&ids);
            self.0.insert(key.clone(), (ids, text));
        }
        self.0.get(&key).map(|(_, text)| text.as_str()).unwrap_or("[]")
    }
}

/// Whether `agents` lists the ids of `ids` in the same cyclic order, starting anywhere.
fn is_rotation_of(agents: &[(String, u32)], ids: &[String]) -> bool {
    if agents.len() != ids.len() {
        return false;
    }
    let Some((first, _)) = agents.first() else { return true };
    let Some(start) = ids.iter().position(|id| id == first) else { return false };
    agents.iter().enumerate().all(|(k, (id, _))| ids[(start + k) % ids.len()] == *id)
}

fn cached<'c>(tx: &'c Transaction, sql: &str) -> Result<rusqlite::CachedStatement<'c>, StoreError> {
    Ok(tx.prepare_cached(sql)?)
}

/// A job row (columns as [`JOB_COLUMNS`] names them), read by position: looking each column
/// up by name compares it against every column's name, and the writer reads a row per job.
/// The outer error is the driver's; the inner one a column that does not parse.
fn job_from_row(row: &Row) -> rusqlite::Result<Result<JobRecord, StoreError>> {
    macro_rules! col {
        ($name:literal) => {
            row.get(const { job_column($name) })?
        };
    }
    let status: String = col!("status");
    let payload: String = col!("payload");
    let labels: Option<String> = col!("labels");
    let result: Option<String> = col!("result");
    let error: Option<String> = col!("error");
    let skipped: Option<String> = col!("skipped_recipients");
    let cancel_requested: i64 = col!("cancel_requested");
    let record = JobRecord {
        id: col!("id"),
        job_type: col!("job_type"),
        payload: serde_json::Value::Null,
        status: JobState::Pending,
        creator_id: col!("creator_id"),
        target_agent_id: col!("target_agent_id"),
        labels: Vec::new(),
        priority: col!("priority"),
        run_at: col!("run_at"),
        idempotency_key: col!("idempotency_key"),
        assigned_agent_id: col!("assigned_agent_id"),
        lease_token: col!("lease_token"),
        lease_expires_at: col!("lease_expires_at"),
        attempts: col!("attempts"),
        max_receive_count: col!("max_receive_count"),
        visibility_timeout_ms: col!("visibility_timeout_ms"),
        cancel_requested: cancel_requested != 0,
        result: None,
        error: None,
        error_code: col!("error_code"),
        skipped_recipients: None,
        created_at: col!("created_at"),
        updated_at: col!("updated_at"),
        finished_at: col!("finished_at"),
    };
    Ok((|| {
        Ok(JobRecord {
            payload: parse_json("payload", Some(payload))?.unwrap_or(serde_json::Value::Null),
            status: JobState::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown job status {status:?}")))?,
            labels: parse_labels(labels)?,
            result: parse_json("result", result)?,
            error: parse_json("error", error)?,
            skipped_recipients: parse_json("skipped_recipients", skipped)?,
            ..record
        })
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(agents: &[&str]) -> ClaimGroup {
        ClaimGroup {
            creator_id: "creator-1".to_owned(),
            labels: Vec::new(),
            job_types: None,
            excluded_job_types: Vec::new(),
            agents: agents.iter().map(|id| (id.to_string(), 1)).collect(),
        }
    }

    fn listed(text: &str) -> Vec<String> {
        let mut ids: Vec<String> = serde_json::from_str(text).unwrap();
        ids.sort();
        ids
    }

    #[test]
    fn a_rotated_group_reuses_its_list_and_a_changed_one_gets_a_new_list() {
        let mut lists = AgentLists::default();
        assert_eq!(listed(lists.text(&group(&["a", "b", "c"]))), ["a", "b", "c"]);
        assert!(is_rotation_of(&group(&["b", "c", "a"]).agents, &lists.0.values().next().unwrap().0));
        assert_eq!(listed(lists.text(&group(&["c", "a", "b"]))), ["a", "b", "c"]);
        // Same members in another cyclic order, one gone, one new, one more.
        assert_eq!(listed(lists.text(&group(&["a", "c", "b"]))), ["a", "b", "c"]);
        assert!(!is_rotation_of(&group(&["a", "c", "b"]).agents, &["a".into(), "b".into(), "c".into()]));
        assert_eq!(listed(lists.text(&group(&["a", "b"]))), ["a", "b"]);
        assert_eq!(listed(lists.text(&group(&["a", "d"]))), ["a", "d"]);
        assert_eq!(listed(lists.text(&group(&["a", "d", "e"]))), ["a", "d", "e"]);
        assert_eq!(listed(lists.text(&group(&[]))), Vec::<String>::new());
    }
}
