//! The person's pause and when it ends by itself: `<data dir>/pause.json`.
//!
//! It owns the file and the pause lengths the tray offers: until resumed, for an hour,
//! until tomorrow morning ([`MORNING_HOUR`]:00 on this machine's clock, the next day). The
//! pause is kept on disk so that it survives a restart of the agent or of the machine; a
//! pause whose end has passed is over, whoever reads it. It must never hold anything but
//! the pause (no secret, no job).

use crate::error::AgentError;
use chrono::{DateTime, Local, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const PAUSE_FILE_NAME: &str = "pause.json";

/// "Until tomorrow" ends at this hour of the next day, local time: the start of a working
/// day, rather than 24 hours later at whatever time the person paused.
pub const MORNING_HOUR: u32 = 8;

/// How long the person pauses for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PauseLength {
    /// Until they resume.
    UntilResumed,
    /// One hour from now.
    OneHour,
    /// Until [`MORNING_HOUR`]:00 tomorrow, local time.
    UntilTomorrow,
}

impl PauseLength {
    /// When a pause of this length taken at `now` ends; `None`: when the person resumes.
    pub fn end(self, now: DateTime<Local>) -> Option<DateTime<Utc>> {
        match self {
            PauseLength::UntilResumed => None,
            PauseLength::OneHour => Some((now + chrono::Duration::hours(1)).with_timezone(&Utc)),
            PauseLength::UntilTomorrow => Some(tomorrow_morning(now).with_timezone(&Utc)),
        }
    }
}

/// [`MORNING_HOUR`]:00 on the day after `now`, in `now`'s zone. A clock change that skips
/// that hour moves it to the first instant that exists after it.
pub fn tomorrow_morning<Tz: TimeZone>(now: DateTime<Tz>) -> DateTime<Tz> {
    let zone = now.timezone();
    let day = now.date_naive().succ_opt().unwrap_or(now.date_naive());
    for hour in MORNING_HOUR..24 {
        if let Some(at) = day.and_hms_opt(hour, 0, 0).and_then(|t| zone.from_local_datetime(&t).earliest()) {
            return at;
        }
    }
    now + chrono::Duration::days(1)
}

/// What `pause.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PauseState {
    pub paused: bool,
    /// When the pause ends by itself (Unix ms); `None` while paused: when resumed.
    #[serde(default)]
    pub until_ms: Option<i64>,
}

impl PauseState {
    /// Whether the pause holds at `now_ms` (one whose end has passed does not).
    pub fn holds(&self, now_ms: i64) -> bool {
        self.paused && self.until_ms.is_none_or(|until| until > now_ms)
    }

    /// The end as RFC 3339 UTC, for the snapshot.
    pub fn until_rfc3339(&self) -> Option<String> {
        let until = self.until_ms?;
        Utc.timestamp_millis_opt(until).single().map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    }
}

/// `HH:MM` on this machine's clock for an RFC 3339 instant (the snapshot's `pausedUntil`),
/// for the tray's state line.
pub fn local_hh_mm(rfc3339: &str) -> Option<String> {
    let at = DateTime::parse_from_rfc3339(rfc3339).ok()?;
    Some(at.with_timezone(&Local).format("%H:%M").to_string())
}

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// How long from `now_ms` until `until_ms` (zero when passed).
pub fn remaining(until_ms: i64, now_ms: i64) -> Duration {
    Duration::from_millis(until_ms.saturating_sub(now_ms).max(0) as u64)
}

#[derive(Debug, Clone)]
pub struct PauseFile {
    path: PathBuf,
}

impl PauseFile {
    pub fn new(data_dir: &Path) -> PauseFile {
        PauseFile { path: data_dir.join(PAUSE_FILE_NAME) }
    }

    /// The pause as kept; a missing or unreadable file is no pause (an unreadable one is
    /// logged: the person can pause again, while a refusal to start would leave them with
    /// no agent).
    pub fn load(&self) -> PauseState {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %self.path.display(), error = %e, "pause.json is unreadable; not paused");
                PauseState::default()
            }),
            Err(_) => PauseState::default(),
        }
    }

    /// Writes `state` (atomically: a reader never sees half a file).
    pub fn save(&self, state: &PauseState) -> Result<(), AgentError> {
        let json = serde_json::to_vec_pretty(state).map_err(|e| AgentError::Internal(e.to_string()))?;
        crate::files::replace(&self.path, &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{FixedOffset, Timelike};

    #[test]
    fn until_tomorrow_is_eight_oclock_the_next_day_whatever_the_hour_now() {
        let paris = FixedOffset::east_opt(3600).unwrap();
        for (hour, minute) in [(0, 5), (7, 59), (8, 0), (17, 30), (23, 59)] {
            let now = paris.with_ymd_and_hms(2026, 12, 6, hour, minute, 0).unwrap();
            let end = tomorrow_morning(now);
            assert_eq!((end.date_naive().to_string().as_str(), end.hour(), end.minute()), ("2026-12-07", 8, 0));
        }
        // The last day of a month goes to the first of the next.
        let now = paris.with_ymd_and_hms(2026, 12, 31, 22, 0, 0).unwrap();
        assert_eq!(tomorrow_morning(now).date_naive().to_string(), "2027-01-01");
    }

    #[test]
    fn a_pause_holds_until_its_end_and_one_until_resumed_holds() {
        let state = PauseState { paused: true, until_ms: Some(1_000) };
        assert!(state.holds(999));
        assert!(!state.holds(1_000));
        assert!(PauseState { paused: true, until_ms: None }.holds(i64::MAX));
        assert!(!PauseState::default().holds(0));
        assert_eq!(state.until_rfc3339().as_deref(), Some("1970-01-01T00:00:01Z"));
        let hour = PauseLength::OneHour.end(Local::now()).unwrap();
        assert!((hour - Utc::now()).num_minutes() >= 59);
        assert_eq!(PauseLength::UntilResumed.end(Local::now()), None);
    }

    #[test]
    fn the_file_survives_a_reload_and_garbage_is_no_pause() {
        let dir = tempfile::tempdir().unwrap();
        let file = PauseFile::new(dir.path());
        assert_eq!(file.load(), PauseState::default());
        let state = PauseState { paused: true, until_ms: Some(42) };
        file.save(&state).unwrap();
        assert_eq!(PauseFile::new(dir.path()).load(), state);
        std::fs::write(dir.path().join(PAUSE_FILE_NAME), "{not json").unwrap();
        assert_eq!(file.load(), PauseState::default());
    }
}
