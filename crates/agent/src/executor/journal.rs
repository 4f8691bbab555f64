//! The journal of run reports: every finished bundle run is written to
//! `<data dir>/journal/<run_id>.json` (temp file, fsync, rename, fsync of the directory)
//! before anything is sent, and replayed to `POST /edge/notify` until the hub answers 2xx.
//! An agent killed between finishing a run and reporting it reports it after restart, once:
//! the entry is removed only after the hub acknowledged it, and the hub deduplicates by
//! `run_id`. It must never drop an entry the hub did not acknowledge.

use crate::hub_client::TokenCache;
use crate::hub_url::HubUrl;
use edge_protocol::api::{NotifyRequest, NOTIFY_PATH};
use edge_protocol::AgentFrame;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub run_id: String,
    pub job_id: String,
    /// The `job_result` frame for the WebSocket.
    pub frame: AgentFrame,
    pub notify: NotifyRequest,
}

#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
    wake: Arc<Notify>,
}

impl Journal {
    pub fn new(data_dir: &Path) -> Journal {
        Journal { dir: data_dir.join("journal"), wake: Arc::new(Notify::new()) }
    }

    /// Durably records an entry; returns only once it is on disk.
    pub fn write(&self, entry: &Entry) -> std::io::Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(format!("{}.json", entry.run_id));
        let temporary = self.dir.join(format!(".{}.tmp", entry.run_id));
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&serde_json::to_vec(entry).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        #[cfg(unix)]
        std::fs::File::open(&self.dir)?.sync_all()?;
        self.wake.notify_one();
        Ok(())
    }

    pub fn entries(&self) -> Vec<Entry> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut entries: Vec<(std::time::SystemTime, Entry)> = dir
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| {
                let modified = e.metadata().and_then(|m| m.modified()).ok()?;
                let entry = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                Some((modified, entry))
            })
            .collect();
        entries.sort_by_key(|(t, _)| *t);
        entries.into_iter().map(|(_, e)| e).collect()
    }

    /// Where the entry of `run_id` lives while it is unacknowledged.
    pub fn path(&self, run_id: &str) -> PathBuf {
        self.dir.join(format!("{run_id}.json"))
    }

    fn remove(&self, run_id: &str) {
        let _ = std::fs::remove_file(self.path(run_id));
    }
}

fn notify_client() -> Result<reqwest::Client, crate::AgentError> {
    crate::tls::hub_http_client_builder()?
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| crate::AgentError::Internal(e.to_string()))
}

/// Posts journal entries to the hub until each is acknowledged; runs until `cancel`.
pub(crate) async fn report_loop(journal: Journal, tokens: TokenCache, cancel: CancellationToken) {
    let Ok(hub_url) = HubUrl::parse(&tokens.credentials().hub_url) else { return };
    // Made when the first entry needs it: most agents never run a bundle, and an idle agent
    // should not carry an HTTP client it does not use.
    let mut http: Option<reqwest::Client> = None;
    let mut failures: u32 = 0;
    loop {
        let mut pending = false;
        for entry in journal.entries() {
            let Ok(jwt) = tokens.jwt().await else {
                pending = true;
                break;
            };
            let client = match http.clone().map(Ok).unwrap_or_else(notify_client) {
                Ok(client) => http.insert(client).clone(),
                Err(e) => {
                    tracing::error!(error = %e, "journal reporter cannot start");
                    return;
                }
            };
            let sent = client
                .post(hub_url.http_endpoint(NOTIFY_PATH))
                .bearer_auth(jwt.expose())
                .json(&entry.notify)
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    tracing::info!(run_id = %entry.run_id, job_id = %entry.job_id, "run reported to the hub");
                    journal.remove(&entry.run_id);
                }
                Ok(response) if response.status() == reqwest::StatusCode::NOT_FOUND => {
                    // `job_not_held`: the hub no longer has this job for us (its history was
                    // purged, or it never was ours) and will never take the report; retrying
                    // would hold every report queued behind it. It stays in the local log.
                    tracing::warn!(run_id = %entry.run_id, job_id = %entry.job_id, "the hub does not hold this job any more; run report dropped (it stays in the local log)");
                    journal.remove(&entry.run_id);
                }
                Ok(response) => {
                    if response.status() == reqwest::StatusCode::UNAUTHORIZED {
                        tokens.forget().await;
                    }
                    tracing::warn!(run_id = %entry.run_id, status = %response.status(), "hub did not accept the run report; will retry");
                    pending = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(run_id = %entry.run_id, error = %crate::hub_client::describe_reqwest_error(&e.without_url()), "cannot report the run; will retry");
                    pending = true;
                    break;
                }
            }
        }
        let delay = if pending {
            failures = failures.saturating_add(1);
            crate::backoff::reconnect_delay(failures).max(Duration::from_millis(200))
        } else {
            failures = 0;
            Duration::from_secs(3600)
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = journal.wake.notified() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
