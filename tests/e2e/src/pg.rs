//! Throwaway PostgreSQL databases for multi-instance tests, on the local server the test
//! machine provides (127.0.0.1:5432, trust auth, user `postgres`; override the server with
//! `EDGE_TEST_PG_URL` or `EDGE_TEST_POSTGRES_URL`). It must never touch a database it did not create.

use anyhow::{bail, Context, Result};
use std::process::Command;

/// (server URL without a database name, query string) of the test server:
/// `EDGE_TEST_PG_URL`, else `EDGE_TEST_POSTGRES_URL` (what `cargo xtask test` sets, with a
/// database name) minus its database, else the local default.
fn server() -> (String, String) {
    if let Ok(url) = std::env::var("EDGE_TEST_PG_URL") {
        return (url.trim_end_matches('/').to_owned(), String::new());
    }
    if let Ok(url) = std::env::var("EDGE_TEST_POSTGRES_URL") {
        let (base, query) =
            url.split_once('?').map(|(b, q)| (b, format!("?{q}"))).unwrap_or((url.as_str(), String::new()));
        if let Some((server, _database)) = base.rsplit_once('/').filter(|(s, _)| !s.ends_with('/')) {
            return (server.to_owned(), query);
        }
    }
    ("postgres://postgres@127.0.0.1:5432".to_owned(), String::new())
}

fn database_url(database: &str) -> String {
    let (server, query) = server();
    format!("{server}/{database}{query}")
}

/// Whether a PostgreSQL server answers (tests that need one skip with a message otherwise).
pub fn available() -> bool {
    psql("test", "SELECT 1").is_ok()
}

fn psql(database: &str, sql: &str) -> Result<String> {
    let out = Command::new("psql")
        .arg(database_url(database))
        .args(["-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql])
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A database created for one test and dropped (with its connections) when dropped.
pub struct TempDatabase {
    pub name: String,
    pub url: String,
}

impl TempDatabase {
    pub fn create(prefix: &str) -> Result<TempDatabase> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
        let name = format!("edge_{prefix}_{}_{nanos}", std::process::id());
        psql("test", &format!("CREATE DATABASE {name}"))?;
        Ok(TempDatabase { url: database_url(&name), name })
    }

    /// Runs one SQL statement in this database and returns psql's unaligned output.
    pub fn query(&self, sql: &str) -> Result<String> {
        psql(&self.name, sql)
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let _ = psql("test", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}
