//! Throwaway PostgreSQL databases for multi-instance tests, on the local server the test
//! machine provides (127.0.0.1:5432, trust auth, user `postgres`; override the server with
//! `EDGE_TEST_PG_URL` or `EDGE_TEST_POSTGRES_URL`). It talks to the server with `sqlx`, the
//! client the hub itself uses, so no `psql` has to be installed. It must never touch a
//! database it did not create.

use anyhow::{anyhow, bail, Context, Result};
use std::str::FromStr as _;
use std::time::Duration;

/// (server URL without a database name, query string) of the test server:
/// `EDGE_TEST_PG_URL`, else `EDGE_TEST_POSTGRES_URL` (what `cargo xtask test` sets, with a
/// database name) minus its database, else the local default.
fn server() -> (String, String) {
    if let Some(url) = env("EDGE_TEST_PG_URL") {
        return (url.trim_end_matches('/').to_owned(), String::new());
    }
    if let Some(url) = env("EDGE_TEST_POSTGRES_URL") {
        let (base, query) =
            url.split_once('?').map(|(b, q)| (b, format!("?{q}"))).unwrap_or((url.as_str(), String::new()));
        if let Some((server, _database)) = base.rsplit_once('/').filter(|(s, _)| !s.ends_with('/')) {
            return (server.to_owned(), query);
        }
    }
    ("postgres://postgres@127.0.0.1:5432".to_owned(), String::new())
}

fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

fn database_url(database: &str) -> String {
    let (server, query) = server();
    format!("{server}/{database}{query}")
}

/// The port of the test server when it runs on this machine's loopback (where
/// `tests/support/postgres.sh` looks for it), from its URL.
pub fn loopback_port() -> Option<u16> {
    let (server, _) = server();
    let authority = server.split_once("://")?.1;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "5432"));
    matches!(host, "127.0.0.1" | "localhost").then(|| port.parse().ok()).flatten()
}

/// Whether this run must have a PostgreSQL: `cargo xtask test` names one
/// (`EDGE_TEST_POSTGRES_URL`), a tester named one (`EDGE_TEST_PG_URL`), or `CI` is set. Only
/// a bare `cargo test` on a machine without PostgreSQL may skip the PostgreSQL tests.
pub fn required() -> bool {
    env("EDGE_TEST_POSTGRES_URL").is_some() || env("EDGE_TEST_PG_URL").is_some() || std::env::var_os("CI").is_some()
}

/// Whether a PostgreSQL server answers a query on the `test` database.
pub fn available() -> bool {
    execute("test", "SELECT 1").is_ok()
}

/// For a test that needs PostgreSQL: `Ok(true)` when the server answers; when it does not,
/// an error naming what to start if [`required`], else `Ok(false)` with the skip printed.
pub fn check() -> Result<bool> {
    match execute("test", "SELECT 1") {
        Ok(()) => Ok(true),
        Err(e) => {
            let reason = format!(
                "PostgreSQL at {} does not answer ({e:#}); start one with tests/support/postgres.sh (it \
                 installs Debian's postgresql if needed) and set EDGE_TEST_POSTGRES_URL to the URL it prints",
                database_url("test")
            );
            if required() {
                bail!("this run requires PostgreSQL (EDGE_TEST_POSTGRES_URL, EDGE_TEST_PG_URL or CI is set): {reason}");
            }
            eprintln!("SKIPPING: {reason}");
            Ok(false)
        }
    }
}

/// Runs `sql` (simple query protocol, so `CREATE DATABASE` works) on `database` over one
/// connection, with the connection and the statement bounded in time.
fn execute(database: &str, sql: &str) -> Result<()> {
    let url = database_url(database);
    let options = sqlx::postgres::PgConnectOptions::from_str(&url).with_context(|| format!("bad URL {url}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut conn = tokio::time::timeout(Duration::from_secs(5), sqlx::ConnectOptions::connect(&options))
            .await
            .map_err(|_| anyhow!("no connection to {url} within 5 s"))?
            .with_context(|| format!("connecting to {url}"))?;
        let run = tokio::time::timeout(Duration::from_secs(30), sqlx::raw_sql(sql).execute(&mut conn)).await;
        let _ = sqlx::Connection::close(conn).await;
        run.map_err(|_| anyhow!("{sql:?} took longer than 30 s"))?.with_context(|| format!("{sql:?} failed"))?;
        Ok(())
    })
}

/// A database created for one test and dropped (with its connections) when dropped.
pub struct TempDatabase {
    pub name: String,
    pub url: String,
}

impl TempDatabase {
    /// A new database named after `prefix` (letters, digits and `_`: it is written into SQL
    /// unquoted, so anything else is refused rather than escaped).
    pub fn create(prefix: &str) -> Result<TempDatabase> {
        anyhow::ensure!(
            !prefix.is_empty() && prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "a temporary database's prefix is letters, digits and `_` only, not {prefix:?}"
        );
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
        let name = format!("edge_{prefix}_{}_{nanos}", std::process::id());
        execute("test", &format!("CREATE DATABASE {name}"))?;
        Ok(TempDatabase { url: database_url(&name), name })
    }

    /// Runs SQL statements in this database.
    pub fn execute(&self, sql: &str) -> Result<()> {
        execute(&self.name, sql)
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let _ = execute("test", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}
