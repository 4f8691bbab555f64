//! The durable per-recipient progress of `broadcast_dm` and `send_dm` (a broadcast of one),
//! keyed by the job's idempotency key (else its id), so a job interrupted by a crash resumes
//! and messages every recipient at most once.
//!
//! Each recipient goes `pending` → `sending` (written before the send) → `sent` (written
//! after the site confirmed it). A send the site refused (HTTP 429, its rate-limit banner,
//! an error before the message was submitted) goes back to `pending` and is sent again by
//! the retry. A `sending` found on resume means the agent died mid-send; the runtime then
//! asks the site whether the message is there before sending again, and when it cannot ask,
//! the recipient becomes `uncertain`: never sent again, never reported as sent. Files live in
//! `<dir>/<sha256(idem key)>.json` and are written with fsync + rename + directory fsync.
//! This module must never forget a `sent` (no truncation, no rewrite from scratch).

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` so a crash leaves the old or the new file, never a torn one:
/// temp file in the same directory, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = dir.join(format!(".{name}.{}.{:08x}.tmp", std::process::id(), rand::random::<u32>()));
    {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    if let Err(e) = std::fs::rename(&temporary, path) {
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Progress {
    Pending,
    /// Written right before the send: the outcome is unknown if the agent died here.
    Sending,
    Sent,
    /// The send may or may not have gone out and the site cannot tell us: not sent again
    /// (a person must not get the message twice), not reported as sent (they may have got
    /// nothing); reported in `uncertainRecipients` for the operator.
    Uncertain,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecipientProgress {
    pub recipient: String,
    pub state: Progress,
    /// When it reached `state`, ms since the epoch.
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub idem_key: String,
    pub job_id: String,
    pub created_ms: i64,
    pub recipients: Vec<RecipientProgress>,
    /// The job as assigned (`{"jobId","type","payload"}`), so an agent restarted mid-broadcast
    /// resumes it by itself and reports it under the same job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<serde_json::Value>,
    /// Set once the job reported a final outcome; an unfinished checkpoint is resumed at start.
    #[serde(default)]
    pub finished: bool,
}

impl Checkpoint {
    pub fn sent(&self) -> Vec<String> {
        self.in_state(Progress::Sent)
    }

    /// Recipients whose message may or may not have gone out: `uncertain` ones, and
    /// `sending` ones (their outcome is unknown until a resume asks the site).
    pub fn uncertain(&self) -> Vec<String> {
        self.recipients
            .iter()
            .filter(|r| matches!(r.state, Progress::Uncertain | Progress::Sending))
            .map(|r| r.recipient.clone())
            .collect()
    }

    fn in_state(&self, state: Progress) -> Vec<String> {
        self.recipients.iter().filter(|r| r.state == state).map(|r| r.recipient.clone()).collect()
    }
}

/// The checkpoint directory of one profile.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
}

/// Recipient comparison is on the trimmed, lower-cased handle, like the hub's ledger.
pub fn normalize(recipient: &str) -> String {
    recipient.trim().to_lowercase()
}

impl CheckpointStore {
    pub fn new(dir: PathBuf) -> CheckpointStore {
        CheckpointStore { dir }
    }

    pub fn path(&self, idem_key: &str) -> PathBuf {
        let digest = ring::digest::digest(&ring::digest::SHA256, idem_key.as_bytes());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{hex}.json"))
    }

    /// The stored checkpoint, with any recipient of `recipients` it lacks added as pending
    /// (a redelivery may carry fewer recipients: the hub removed those it knows were sent;
    /// the stored ones keep their state).
    pub fn open(&self, idem_key: &str, job_id: &str, recipients: &[String]) -> std::io::Result<Checkpoint> {
        let path = self.path(idem_key);
        let mut checkpoint = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Checkpoint>(&bytes)
                .map_err(|e| std::io::Error::other(format!("checkpoint {} is damaged: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Checkpoint {
                idem_key: idem_key.to_owned(),
                job_id: job_id.to_owned(),
                created_ms: crate::now_ms(),
                recipients: Vec::new(),
                job: None,
                finished: false,
            },
            Err(e) => return Err(e),
        };
        let mut changed = !path.exists();
        for recipient in recipients {
            let key = normalize(recipient);
            if key.is_empty() || checkpoint.recipients.iter().any(|r| normalize(&r.recipient) == key) {
                continue;
            }
            checkpoint.recipients.push(RecipientProgress {
                recipient: recipient.trim().to_owned(),
                state: Progress::Pending,
                at_ms: crate::now_ms(),
            });
            changed = true;
        }
        if changed {
            self.save(&checkpoint)?;
        }
        Ok(checkpoint)
    }

    pub fn save(&self, checkpoint: &Checkpoint) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(checkpoint).map_err(std::io::Error::other)?;
        write_atomically(&self.path(&checkpoint.idem_key), &bytes)
    }

    /// Moves one recipient to `state` and makes it durable before returning.
    pub fn mark(&self, checkpoint: &mut Checkpoint, index: usize, state: Progress) -> std::io::Result<()> {
        if let Some(r) = checkpoint.recipients.get_mut(index) {
            // Never step back from `sent`, and never make an `uncertain` one sendable again:
            // either could message a person twice.
            if r.state == Progress::Sent || (r.state == Progress::Uncertain && state != Progress::Sent) {
                return Ok(());
            }
            r.state = state;
            r.at_ms = crate::now_ms();
        }
        self.save(checkpoint)
    }

    /// Jobs of checkpoints that never finished (the agent died mid-broadcast).
    pub fn unfinished(&self) -> Vec<serde_json::Value> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<Checkpoint>(&b).ok())
            .filter(|c| !c.finished)
            .filter_map(|c| c.job)
            .collect()
    }

    /// Removes checkpoints older than `max_age_ms`.
    pub fn gc(&self, max_age_ms: i64) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let now = crate::now_ms();
        for entry in entries.flatten() {
            let path = entry.path();
            let old = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Checkpoint>(&b).ok())
                .is_some_and(|c| now - c.created_ms > max_age_ms);
            if old {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_survives_reopening_and_new_recipients_are_added() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path().to_path_buf());
        let all: Vec<String> = ["ann", "Bob", "cy"].iter().map(|s| s.to_string()).collect();
        let mut cp = store.open("key-1", "job_1", &all).unwrap();
        store.mark(&mut cp, 0, Progress::Sending).unwrap();
        store.mark(&mut cp, 0, Progress::Sent).unwrap();
        store.mark(&mut cp, 1, Progress::Sending).unwrap();
        let again = store.open("key-1", "job_1", &["bob".into(), "cy".into(), "dee".into()]).unwrap();
        assert_eq!(again.recipients.len(), 4);
        assert_eq!(again.recipients[0].state, Progress::Sent);
        assert_eq!(again.recipients[1].state, Progress::Sending);
        assert_eq!(again.recipients[3].recipient, "dee");
        assert_eq!(again.sent(), vec!["ann".to_owned()]);
        assert_eq!(again.uncertain(), vec!["Bob".to_owned()], "a `sending` one is not known to be sent");
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_uncertain_recipient_is_never_made_sendable_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path().to_path_buf());
        let mut cp = store.open("key-2", "job_2", &["ann".into(), "bob".into()]).unwrap();
        store.mark(&mut cp, 0, Progress::Sending).unwrap();
        store.mark(&mut cp, 0, Progress::Uncertain).unwrap();
        for state in [Progress::Pending, Progress::Sending] {
            store.mark(&mut cp, 0, state).unwrap();
            assert_eq!(cp.recipients[0].state, Progress::Uncertain);
        }
        // A failed send goes back to pending; it is then neither sent nor uncertain.
        store.mark(&mut cp, 1, Progress::Sending).unwrap();
        store.mark(&mut cp, 1, Progress::Pending).unwrap();
        let again = store.open("key-2", "job_2", &[]).unwrap();
        assert_eq!(again.uncertain(), vec!["ann".to_owned()]);
        assert!(again.sent().is_empty());
        assert_eq!(again.recipients[1].state, Progress::Pending);
    }
}
