//! Owns the SQLite implementation of [`Store`]: connection options (WAL, busy timeout,
//! file creation), the embedded migrations and every SQL statement for SQLite. It must
//! never decide policy (who may take a job, what an error means); it only applies the
//! compare-and-set transitions the trait describes.

use super::{AgentRecord, FinishOutcome, JobOutcome, JobRecord, JobState, NewAgent, NewJob, Store, StoreError};
use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::Row;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Long enough to ride out another writer's transaction, short enough that a wedged
/// database shows up as an error instead of a hang.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating the file and its directory if needed) and migrates the database.
    pub async fn connect(database_url: &str) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(database_url)
            .map_err(|e| StoreError::UnsupportedUrl { url: database_url.to_owned(), reason: e.to_string() })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let filename = options.get_filename().to_path_buf();
        let in_memory = filename.as_os_str() == ":memory:" || database_url.contains("mode=memory");
        if !in_memory {
            create_parent_dir(&filename)?;
        }
        // Every connection to `:memory:` is a separate database, so a memory store gets one
        // connection that is never recycled.
        let pool_options = if in_memory {
            SqlitePoolOptions::new().max_connections(1).idle_timeout(None).max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(8)
        };
        let pool = pool_options.connect_with(options).await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStore { pool })
    }
}

fn create_parent_dir(file: &Path) -> Result<(), StoreError> {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir)
            .map_err(|source| StoreError::CreateDir { path: dir.display().to_string(), source }),
        _ => Ok(()),
    }
}

const AGENT_COLUMNS: &str = "id, creator_id, public_key, name, version, created_at, \
     last_heartbeat_at, connected_at, online";

const JOB_COLUMNS: &str = "id, job_type, payload, status, creator_id, target_agent_id, \
     assigned_agent_id, attempts, result, error, created_at, updated_at";

fn agent_from_row(row: &SqliteRow) -> Result<AgentRecord, StoreError> {
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
    })
}

fn json_column(row: &SqliteRow, column: &str) -> Result<Option<serde_json::Value>, StoreError> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("jobs.{column} is not JSON: {e}"))))
        .transpose()
}

fn job_from_row(row: &SqliteRow) -> Result<JobRecord, StoreError> {
    let status: String = row.try_get("status")?;
    let id: String = row.try_get("id")?;
    Ok(JobRecord {
        status: JobState::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("job {id} has status {status:?}")))?,
        payload: json_column(row, "payload")?.unwrap_or(serde_json::Value::Null),
        result: json_column(row, "result")?,
        error: json_column(row, "error")?,
        id,
        job_type: row.try_get("job_type")?,
        creator_id: row.try_get("creator_id")?,
        target_agent_id: row.try_get("target_agent_id")?,
        assigned_agent_id: row.try_get("assigned_agent_id")?,
        attempts: row.try_get("attempts")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn setting_or_init(&self, key: &str, value_if_absent: &str) -> Result<String, StoreError> {
        sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value_if_absent)
            .execute(&self.pool)
            .await?;
        let value: String =
            sqlx::query_scalar("SELECT value FROM settings WHERE key = ?").bind(key).fetch_one(&self.pool).await?;
        Ok(value)
    }

    async fn create_enrollment_token(
        &self,
        token_hash: &str,
        creator_id: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO creators (id, created_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING")
            .bind(creator_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO enrollment_tokens (token_hash, creator_id, created_at, expires_at) \
             VALUES (?, ?, ?, ?)",
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
        let mut tx = self.pool.begin().await?;
        // Writing first takes SQLite's write lock at once, so two enrollments racing for the
        // same token serialise here and exactly one sees the row still unused.
        let creator_id: Option<String> = sqlx::query_scalar(
            "UPDATE enrollment_tokens SET used_at = ?, used_by_agent_id = ? \
             WHERE token_hash = ? AND used_at IS NULL AND expires_at > ? RETURNING creator_id",
        )
        .bind(now)
        .bind(&agent.id)
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(creator_id) = creator_id else {
            tx.rollback().await?;
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO agents (id, creator_id, public_key, name, version, created_at, online) \
             VALUES (?, ?, ?, ?, ?, ?, 0)",
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
        }))
    }

    async fn agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = ?"))
            .bind(agent_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(agent_from_row).transpose()
    }

    async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY created_at, id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(agent_from_row).collect()
    }

    async fn mark_agent_connected(&self, agent_id: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE agents SET online = 1, connected_at = ? WHERE id = ?")
            .bind(now)
            .bind(agent_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn mark_agent_disconnected(&self, agent_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE agents SET online = 0 WHERE id = ?").bind(agent_id).execute(&self.pool).await?;
        Ok(())
    }

    async fn mark_all_agents_offline(&self) -> Result<(), StoreError> {
        sqlx::query("UPDATE agents SET online = 0 WHERE online <> 0").execute(&self.pool).await?;
        Ok(())
    }

    async fn record_heartbeat(&self, agent_id: &str, version: Option<&str>, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE agents SET last_heartbeat_at = ?, version = COALESCE(?, version) WHERE id = ?")
            .bind(now)
            .bind(version)
            .bind(agent_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_nonce(&self, agent_id: &str, nonce: &str, expires_at: i64, now: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM nonces WHERE expires_at <= ?").bind(now).execute(&self.pool).await?;
        sqlx::query("INSERT INTO nonces (nonce, agent_id, expires_at) VALUES (?, ?, ?)")
            .bind(nonce)
            .bind(agent_id)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn consume_nonce(&self, agent_id: &str, nonce: &str, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM nonces WHERE nonce = ? AND agent_id = ? AND expires_at > ?")
            .bind(nonce)
            .bind(agent_id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn create_api_key(&self, key_hash: &str, name: Option<&str>, now: i64) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO api_keys (key_hash, name, created_at) VALUES (?, ?, ?)")
            .bind(key_hash)
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn api_key_exists(&self, key_hash: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM api_keys WHERE key_hash = ?")
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    async fn insert_job(&self, job: NewJob, now: i64) -> Result<JobRecord, StoreError> {
        let payload = serde_json::to_string(&job.payload)
            .map_err(|e| StoreError::Corrupt(format!("job payload does not serialise: {e}")))?;
        sqlx::query(
            "INSERT INTO jobs (id, job_type, payload, status, creator_id, target_agent_id, \
             attempts, created_at, updated_at) VALUES (?, ?, ?, 'pending', ?, ?, 0, ?, ?)",
        )
        .bind(&job.id)
        .bind(&job.job_type)
        .bind(payload)
        .bind(&job.creator_id)
        .bind(&job.target_agent_id)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(JobRecord {
            id: job.id,
            job_type: job.job_type,
            payload: job.payload,
            status: JobState::Pending,
            creator_id: job.creator_id,
            target_agent_id: job.target_agent_id,
            assigned_agent_id: None,
            attempts: 0,
            result: None,
            error: None,
            created_at: now,
            updated_at: now,
        })
    }

    async fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"))
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn next_pending_job(&self, agent_id: &str, creator_id: &str) -> Result<Option<JobRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'pending' \
             AND (target_agent_id = ? OR (target_agent_id IS NULL AND creator_id = ?)) \
             ORDER BY created_at, id LIMIT 1"
        ))
        .bind(agent_id)
        .bind(creator_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn assign_job(&self, job_id: &str, agent_id: &str, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET status = 'assigned', assigned_agent_id = ?, attempts = attempts + 1, \
             updated_at = ? WHERE id = ? AND status = 'pending'",
        )
        .bind(agent_id)
        .bind(now)
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn ack_job(&self, job_id: &str, agent_id: &str, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET status = 'acked', updated_at = ? \
             WHERE id = ? AND assigned_agent_id = ? AND status = 'assigned'",
        )
        .bind(now)
        .bind(job_id)
        .bind(agent_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn finish_job(
        &self,
        job_id: &str,
        agent_id: &str,
        outcome: JobOutcome,
        now: i64,
    ) -> Result<FinishOutcome, StoreError> {
        let (status, result, error) = match outcome {
            JobOutcome::Succeeded { result } => (JobState::Succeeded, result, None),
            JobOutcome::Failed { error } => (JobState::Failed, None, Some(error)),
        };
        let to_text = |value: Option<serde_json::Value>| {
            value
                .map(|v| serde_json::to_string(&v))
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("job outcome does not serialise: {e}")))
        };
        let done = sqlx::query(
            "UPDATE jobs SET status = ?, result = ?, error = ?, updated_at = ? \
             WHERE id = ? AND assigned_agent_id = ? AND status IN ('assigned', 'acked')",
        )
        .bind(status.as_str())
        .bind(to_text(result)?)
        .bind(to_text(error)?)
        .bind(now)
        .bind(job_id)
        .bind(agent_id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(FinishOutcome::Recorded);
        }
        let already: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM jobs WHERE id = ? AND assigned_agent_id = ? \
             AND status IN ('succeeded', 'failed')",
        )
        .bind(job_id)
        .bind(agent_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(if already.is_some() { FinishOutcome::AlreadyFinished } else { FinishOutcome::NotHeld })
    }

    async fn release_job(&self, job_id: &str, agent_id: &str, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET status = 'pending', assigned_agent_id = NULL, updated_at = ? \
             WHERE id = ? AND assigned_agent_id = ? AND status IN ('assigned', 'acked')",
        )
        .bind(now)
        .bind(job_id)
        .bind(agent_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_unacked_jobs(&self, agent_id: Option<&str>, now: i64) -> Result<u64, StoreError> {
        let done = match agent_id {
            Some(agent_id) => {
                sqlx::query(
                    "UPDATE jobs SET status = 'pending', assigned_agent_id = NULL, updated_at = ? \
                     WHERE status = 'assigned' AND assigned_agent_id = ?",
                )
                .bind(now)
                .bind(agent_id)
                .execute(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "UPDATE jobs SET status = 'pending', assigned_agent_id = NULL, updated_at = ? \
                     WHERE status = 'assigned'",
                )
                .bind(now)
                .execute(&self.pool)
                .await?
            }
        };
        Ok(done.rows_affected())
    }
}
