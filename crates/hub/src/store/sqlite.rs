//! Owns the SQLite engine of [`Store`]: connection options (WAL, busy timeout, file
//! creation), its embedded migrations (`migrations/sqlite`) and its dialect fragments; the
//! statements themselves are shared ([`super::sql`]). It must never decide policy, and
//! never be shared by two hub processes (it reports itself [`Store::exclusive`]).

use super::{HubEvent, StoreError};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::mpsc;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Long enough to ride out another writer's transaction, short enough that a wedged
/// database shows up as an error instead of a hang.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Writers queue for the one write connection; a queue this long means the database is
/// wedged (or the disk is), which should surface as an error.
const WRITER_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) mod dialect {
    /// SQLite has one writer at a time; `BEGIN IMMEDIATE` already serialises claims.
    pub const SKIP_LOCKED: &str = "";
    pub const SKIP_LOCKED_OF_J: &str = "";
    /// `BEGIN IMMEDIATE` takes the write lock, which is all the redrive check needs.
    pub const REDRIVE_LOCK: Option<&str> = None;

    /// `BEGIN IMMEDIATE` already holds the write lock while a claim counts a creator's limits.
    pub const CREATOR_CLAIM_LOCK: Option<&str> = None;

    /// A subquery yielding one row per object of the JSON list bound at `param`, with the
    /// named fields as columns (`columns`: name, PostgreSQL type; SQLite needs no types).
    ///
    /// The records are flat objects of scalars. `json_tree` walks the list once and yields
    /// each field as a row (its record is `parent`); the fields are gathered back per record.
    /// `json_extract(value, …)` per field over `json_each` would parse each record's text
    /// again for every field, which made the JSON parser most of a bulk write's time.
    pub fn json_records(param: &str, columns: &[(&str, &str)]) -> String {
        let fields: Vec<String> =
            columns.iter().map(|(name, _)| format!("max(CASE WHEN key = '{name}' THEN atom END) AS {name}")).collect();
        format!(
            "SELECT {} FROM json_tree({param}) WHERE type NOT IN ('object', 'array') GROUP BY parent",
            fields.join(", ")
        )
    }

    /// `column` is one of the values `subquery` yields (for a primary-key probe).
    pub fn key_in(column: &str, subquery: &str) -> String {
        format!("{column} IN ({subquery})")
    }

    pub fn json_text_array(param: &str) -> String {
        format!("SELECT value FROM json_each({param})")
    }

    /// True when every label in the JSON list `column` is in the JSON list `param`.
    pub fn labels_subset(column: &str, param: &str) -> String {
        format!(
            "NOT EXISTS (SELECT 1 FROM json_each({column}) l WHERE l.value NOT IN (SELECT value FROM json_each({param})))"
        )
    }
}

pub struct SqliteStore {
    /// Readers: WAL lets them run beside the writer.
    pool: SqlitePool,
    /// The one connection that writes. SQLite admits one writer at a time; a second
    /// connection asking for the lock is put to sleep by SQLite's busy handler in steps of
    /// 1 to 100 ms, which under load costs more than the writes. Queueing writers on this
    /// pool's acquire instead hands the connection over as soon as it is free.
    writer: SqlitePool,
}

impl SqliteStore {
    const ENGINE: &'static str = "sqlite";
    const EXCLUSIVE: bool = true;

    /// Opens (creating the file and its directory if needed) and migrates the database.
    /// Databases written by the walking skeleton are migrated forward in place.
    pub async fn connect(database_url: &str) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(database_url)
            .map_err(|e| StoreError::UnsupportedUrl { url: database_url.to_owned(), reason: e.to_string() })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            // 32 MiB of page cache per connection (SQLite's default is 2 MiB): the job
            // table's indexes stay in memory under load instead of being re-read per write.
            .pragma("cache_size", "-32768")
            .foreign_keys(true);
        let filename = options.get_filename().to_path_buf();
        let in_memory = filename.as_os_str() == ":memory:" || database_url.contains("mode=memory");
        if !in_memory {
            create_parent_dir(&filename)?;
        }
        // Every connection to `:memory:` is a separate database, so a memory store gets one
        // connection that is never recycled.
        // No ping before each use: a local file cannot drop the connection, and the ping is a
        // round trip to the connection's worker thread on every statement.
        let one_connection = || {
            SqlitePoolOptions::new().max_connections(1).idle_timeout(None).max_lifetime(None).test_before_acquire(false)
        };
        if in_memory {
            let pool = one_connection().connect_with(options).await?;
            MIGRATOR.run(&pool).await?;
            return Ok(SqliteStore { writer: pool.clone(), pool });
        }
        let writer = one_connection().acquire_timeout(WRITER_ACQUIRE_TIMEOUT).connect_with(options.clone()).await?;
        MIGRATOR.run(&writer).await?;
        let pool = SqlitePoolOptions::new().max_connections(8).test_before_acquire(false).connect_with(options).await?;
        Ok(SqliteStore { pool, writer })
    }

    fn before_close(&self) {}

    /// `BEGIN IMMEDIATE`: a deferred transaction that reads first and writes later can fail
    /// with SQLITE_BUSY at the upgrade without waiting; taking the write lock up front makes
    /// concurrent writers queue on the busy timeout instead.
    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }

    /// One process per SQLite file: nobody else to tell.
    async fn publish_event(&self, _event: &HubEvent) -> Result<(), StoreError> {
        Ok(())
    }

    async fn subscribe_events(&self) -> Result<Option<mpsc::UnboundedReceiver<HubEvent>>, StoreError> {
        Ok(None)
    }
}

fn create_parent_dir(file: &Path) -> Result<(), StoreError> {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir)
            .map_err(|source| StoreError::CreateDir { path: dir.display().to_string(), source }),
        _ => Ok(()),
    }
}

sql_store!(SqliteStore, Sqlite, SqliteRow);
