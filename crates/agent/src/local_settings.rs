//! The person's own settings for this agent: what they consented to, what they allow beyond
//! the public internet, their caps, their uploads folder. `<data dir>/settings.json`.
//!
//! It owns that file's shape and its safe replacement. Only the person's own tools write it
//! (the `edge-agent` CLI, the tray window); nothing the hub sends may ever change it, since
//! the hub can narrow what the agent does but never widen it. It must never hold a secret.

use crate::error::AgentError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const SETTINGS_FILE_NAME: &str = "settings.json";

/// Everything the person decided for this profile. Missing fields take their defaults,
/// which grant nothing and allow nothing beyond the public internet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalSettings {
    /// Capabilities the person granted, by name, with what they were shown.
    pub grants: BTreeMap<String, Grant>,
    /// Destinations allowed beyond the public internet, as `ADDRESS[:PORT]` (for example
    /// `127.0.0.1:8080`), beside `edge-agent run --allow-egress`.
    pub allow_egress: Vec<String>,
    pub caps: Caps,
    /// The one folder browser jobs may upload files from, besides their own bundle; none
    /// by default.
    pub uploads_dir: Option<PathBuf>,
    /// Whether a job may bring its own site adapter instead of naming a signed or local one.
    pub allow_inline_adapters: bool,
    /// Local services the person exposed through the tunnel, by name: `ADDRESS:PORT`
    /// (`edge-agent expose NAME 127.0.0.1:PORT`). The only way a tunnel stream reaches
    /// this machine's own addresses.
    pub exposed: BTreeMap<String, String>,
    /// Hours of the day, on this machine's clock, when no new job starts; none by default.
    pub quiet_hours: Option<QuietHours>,
}

/// A daily span with no new jobs, `HH:MM` to `HH:MM` local time; an end before the start
/// runs over midnight (22:00 to 07:00).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuietHours {
    pub start: String,
    pub end: String,
}

impl QuietHours {
    /// Checked quiet hours: both times as `HH:MM` (00:00 to 23:59) and not equal, since a
    /// span from a time to itself would be either nothing or the whole day.
    pub fn new(start: &str, end: &str) -> Result<QuietHours, AgentError> {
        let (from, to) = (minute_of_day(start)?, minute_of_day(end)?);
        if from == to {
            return Err(AgentError::InvalidSetting(format!(
                "quiet hours from {start} to {end} are empty; choose an end other than the start"
            )));
        }
        Ok(QuietHours { start: start.trim().to_owned(), end: end.trim().to_owned() })
    }

    /// `(start, end)` in minutes after midnight, or why the stored text is not a time.
    pub fn minutes(&self) -> Result<(u16, u16), AgentError> {
        Ok((minute_of_day(&self.start)?, minute_of_day(&self.end)?))
    }
}

/// `HH:MM` as minutes after midnight.
fn minute_of_day(text: &str) -> Result<u16, AgentError> {
    let invalid =
        || AgentError::InvalidSetting(format!("{text:?} is not a time of day; write it as HH:MM, for example 22:00"));
    let (h, m) = text.trim().split_once(':').ok_or_else(invalid)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(invalid());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| invalid())?, m.parse().map_err(|_| invalid())?);
    if h > 23 || m > 59 {
        return Err(invalid());
    }
    Ok(h * 60 + m)
}

/// A capability the person granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// RFC 3339 UTC.
    pub granted_at: String,
    /// Version of the consent text that was shown.
    pub text_version: u32,
    /// The text itself, as shown.
    pub text: String,
}

/// The person's limits; `None` is no limit of their own (the agent's defaults still apply).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Caps {
    pub jobs_per_hour: Option<u32>,
    pub messages_per_hour: Option<u32>,
    pub bytes_per_day: Option<u64>,
    /// Bytes per second one tunnel stream may carry in each direction.
    pub tunnel_bytes_per_second: Option<u64>,
}

impl LocalSettings {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(SETTINGS_FILE_NAME)
    }

    /// The settings, or the defaults when the person never saved any.
    pub fn load(data_dir: &Path) -> Result<LocalSettings, AgentError> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                AgentError::Internal(format!(
                    "{} is not readable as the agent's settings ({e}); fix or delete it (deleting grants nothing)",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LocalSettings::default()),
            Err(e) => Err(AgentError::io(format!("cannot read {}", path.display()), e)),
        }
    }

    /// Sets the uploads folder: an existing folder (stored resolved), not the whole disk and
    /// not one holding the agent's own data (sessions, keys' files) or inside it.
    pub fn set_uploads_dir(&mut self, folder: &Path, data_dir: &Path) -> Result<PathBuf, AgentError> {
        let resolved = std::fs::canonicalize(folder).map_err(|e| {
            AgentError::InvalidSetting(format!("{} is not a folder on this machine ({e})", folder.display()))
        })?;
        if !resolved.is_dir() {
            return Err(AgentError::InvalidSetting(format!("{} is a file, not a folder", resolved.display())));
        }
        if resolved.parent().is_none() {
            return Err(AgentError::InvalidSetting(format!(
                "{} is the whole disk; choose the one folder browser jobs may upload from",
                resolved.display()
            )));
        }
        let data = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        if data.starts_with(&resolved) || resolved.starts_with(&data) {
            return Err(AgentError::InvalidSetting(format!(
                "{} holds the agent's own data ({}); choose a folder of the files you mean to upload",
                resolved.display(),
                data.display()
            )));
        }
        self.uploads_dir = Some(resolved.clone());
        Ok(resolved)
    }

    /// Replaces the file atomically, readable by its owner only.
    pub fn save(&self, data_dir: &Path) -> Result<(), AgentError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| AgentError::Internal(e.to_string()))?;
        crate::files::replace_synced(&Self::path(data_dir), &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_profile_grants_nothing_and_a_saved_one_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = LocalSettings::load(dir.path()).unwrap();
        assert!(fresh.grants.is_empty() && fresh.allow_egress.is_empty() && !fresh.allow_inline_adapters);
        let mut settings = fresh;
        settings.allow_egress.push("127.0.0.1:8080".into());
        settings.caps.jobs_per_hour = Some(30);
        settings.save(dir.path()).unwrap();
        assert_eq!(LocalSettings::load(dir.path()).unwrap(), settings);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(LocalSettings::path(dir.path())).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn the_uploads_folder_is_an_existing_folder_apart_from_the_agents_data() {
        let home = tempfile::tempdir().unwrap();
        let data = home.path().join("agent");
        let uploads = home.path().join("Uploads");
        std::fs::create_dir_all(data.join("browser")).unwrap();
        std::fs::create_dir_all(&uploads).unwrap();
        std::fs::write(home.path().join("file.txt"), b"x").unwrap();
        let mut settings = LocalSettings::default();
        let set = settings.set_uploads_dir(&uploads.join("."), &data).unwrap();
        assert_eq!(settings.uploads_dir.as_deref(), Some(set.as_path()));
        assert_eq!(set, std::fs::canonicalize(&uploads).unwrap());
        for (bad, needle) in [
            (home.path().join("missing"), "is not a folder on this machine"),
            (home.path().join("file.txt"), "is a file, not a folder"),
            (PathBuf::from("/"), "the whole disk"),
            (data.join("browser"), "holds the agent's own data"),
            (home.path().to_path_buf(), "holds the agent's own data"),
        ] {
            let message = settings.set_uploads_dir(&bad, &data).unwrap_err().to_string();
            assert!(message.contains(needle), "{}: {message}", bad.display());
        }
        assert_eq!(settings.uploads_dir.as_deref(), Some(set.as_path()), "a refused folder changes nothing");
    }

    #[test]
    fn quiet_hours_are_two_different_times_of_day() {
        assert_eq!(QuietHours::new("22:00", "7:00").unwrap().minutes().unwrap(), (22 * 60, 7 * 60));
        assert_eq!(QuietHours::new(" 00:00", "23:59 ").unwrap().minutes().unwrap(), (0, 23 * 60 + 59));
        for (start, end, needle) in [
            ("22:00", "22:00", "are empty"),
            ("24:00", "07:00", "\"24:00\" is not a time of day"),
            ("22h", "07:00", "write it as HH:MM"),
            ("22:00", "7:5", "is not a time of day"),
            ("", "07:00", "is not a time of day"),
            ("-1:00", "07:00", "is not a time of day"),
        ] {
            let message = QuietHours::new(start, end).unwrap_err().to_string();
            assert!(message.contains(needle), "{start}-{end}: {message}");
        }
    }

    #[test]
    fn a_damaged_file_is_an_error_that_says_what_to_do_not_an_empty_grant() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(LocalSettings::path(dir.path()), b"{not json").unwrap();
        let error = LocalSettings::load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("settings.json") && error.contains("fix or delete"), "{error}");
    }
}
