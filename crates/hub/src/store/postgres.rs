//! Owns the PostgreSQL engine of [`Store`]: the pool, its migrations
//! (`migrations/postgres`), its dialect fragments (`FOR UPDATE SKIP LOCKED`, jsonb), and
//! cross-process events over LISTEN/NOTIFY. The statements themselves are shared
//! ([`super::sql`]). Several hub processes may share one database (and schema); this
//! module must never assume it is alone: every claim locks with SKIP LOCKED, every
//! transition is compare-and-set.
//!
//! The schema is whatever `search_path` the URL selects (e.g.
//! `postgres://host/db?options=-c%20search_path%3Dedge`); the notification channel is
//! named after it, so hubs on different schemas of one database do not wake each other.

use super::{HubEvent, StoreError};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Transaction};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long to wait for a pooled connection before calling the database unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) mod dialect {
    /// Holds a row read inside a transaction until it ends (a device-code poll).
    pub const FOR_UPDATE: &str = " FOR UPDATE";
    pub const SKIP_LOCKED: &str = " FOR UPDATE SKIP LOCKED";
    pub const SKIP_LOCKED_OF_J: &str = " FOR UPDATE OF j SKIP LOCKED";
    /// Serialises "is a move over this queue already running?" checks across processes.
    pub const REDRIVE_LOCK: Option<&str> = Some("SELECT pg_advisory_xact_lock(7240531)");

    /// Serialises claims for one creator that has limits, across processes, between
    /// counting what it holds and leasing more.
    pub const CREATOR_CLAIM_LOCK: Option<&str> = Some("SELECT pg_advisory_xact_lock(7240532, hashtext($1))");

    pub fn json_records(param: &str, columns: &[(&str, &str)]) -> String {
        let fields: Vec<String> = columns.iter().map(|(name, sql_type)| format!("{name} {sql_type}")).collect();
        format!("SELECT * FROM jsonb_to_recordset({param}::jsonb) AS r({})", fields.join(", "))
    }

    /// `= ANY(ARRAY(…))` rather than `IN (…)`: the planner then probes the index with the
    /// list's values instead of hash-joining a guessed 100 rows against the table.
    pub fn key_in(column: &str, subquery: &str) -> String {
        format!("{column} = ANY(ARRAY({subquery}))")
    }

    pub fn json_text_array(param: &str) -> String {
        format!("SELECT jsonb_array_elements_text({param}::jsonb)")
    }

    pub fn labels_subset(column: &str, param: &str) -> String {
        format!("{column}::jsonb <@ {param}::jsonb")
    }
}

pub struct PgStore {
    pool: PgPool,
    /// The same pool: PostgreSQL has no single-writer rule to queue for.
    writer: PgPool,
    channel: String,
    /// Stops the listener tasks, which hold a pooled connection that `close` waits for.
    stop: CancellationToken,
}

impl PgStore {
    const ENGINE: &'static str = "postgres";
    const EXCLUSIVE: bool = false;

    /// Connects and migrates. `options` lets callers (tests) set a `search_path` without
    /// encoding it into the URL.
    pub async fn connect(database_url: &str) -> Result<PgStore, StoreError> {
        let options = PgConnectOptions::from_str(database_url)
            .map_err(|e| StoreError::UnsupportedUrl { url: redact(database_url), reason: e.to_string() })?;
        PgStore::connect_with(options).await
    }

    pub async fn connect_with(options: PgConnectOptions) -> Result<PgStore, StoreError> {
        let pool =
            PgPoolOptions::new().max_connections(10).acquire_timeout(ACQUIRE_TIMEOUT).connect_with(options).await?;
        MIGRATOR.run(&pool).await?;
        let schema: String = sqlx::query_scalar("SELECT current_schema()").fetch_one(&pool).await?;
        Ok(PgStore { writer: pool.clone(), pool, channel: channel_name(&schema), stop: CancellationToken::new() })
    }

    async fn before_close(&self) {
        self.stop.cancel();
    }

    /// Job writes go through the shared bulk statements: on PostgreSQL each statement is a
    /// network round trip, so one per kind beats one per row.
    fn has_job_writer(&self) -> bool {
        false
    }

    async fn write_on_job_writer(&self, _batch: JobWriteBatch, _now: i64) -> Result<JobWriteAnswers, StoreError> {
        Err(StoreError::Corrupt("the PostgreSQL store has no job writer of its own".to_owned()))
    }

    fn own_group_writer(&self) -> Option<Box<dyn crate::writes::GroupWriter>> {
        None
    }

    async fn write_tx(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    async fn publish_event(&self, event: &HubEvent) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)").bind(&self.channel).bind(event.encode()).execute(&self.pool).await?;
        Ok(())
    }

    async fn subscribe_events(&self) -> Result<Option<mpsc::UnboundedReceiver<HubEvent>>, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(&self.channel).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                // `try_recv` reconnects by itself after a lost connection; notifications sent
                // while it was away are lost, which the periodic poll covers.
                let received = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tx.closed() => return,
                    received = listener.try_recv() => received,
                };
                match received {
                    Ok(Some(notification)) => match HubEvent::decode(notification.payload()) {
                        Some(event) => {
                            if tx.send(event).is_err() {
                                return;
                            }
                        }
                        None => debug!(payload = notification.payload(), "unknown hub notification ignored"),
                    },
                    Ok(None) => {
                        debug!("notification connection lost; reconnecting");
                        // Something may have happened while disconnected.
                        if tx.send(HubEvent::JobAvailable).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "notification listener failed; retrying in 1 s");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
        });
        Ok(Some(rx))
    }
}

/// `edge_hub_<schema>`, cut to PostgreSQL's 63-byte identifier limit.
fn channel_name(schema: &str) -> String {
    let clean: String = schema.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let mut name = format!("edge_hub_{clean}");
    name.truncate(63);
    name
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

sql_store!(PgStore, Postgres, PgRow);
