//! Bytes in and out per UTC day and per capability, kept in `<data dir>/egress-meter.json`,
//! and the person's daily cap that refuses new connections once the day's total reaches it.
//!
//! Counted at the gate's level: HTTP headers and bodies for `http_request`, the bytes that
//! cross the browser proxy for the browser (TLS overhead included there, not for
//! `http_request`). A write failure is logged and counting goes on in memory: losing the
//! meter file must never stop a job that is within its cap. The file is written at most
//! once per [`SAVE_EVERY`] (and when the meter is dropped), not on every request: a
//! synchronous write per request was most of what the gate cost. A crash loses at most
//! that much counting.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const METER_FILE_NAME: &str = "egress-meter.json";

/// The longest the file lags behind the counts in memory.
pub const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What the gate counts bytes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    HttpRequest,
    Browser,
    Tunnel,
}

impl Capability {
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::HttpRequest => "http_request",
            Capability::Browser => "browser",
            Capability::Tunnel => "tunnel",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    #[serde(rename = "in")]
    pub bytes_in: u64,
    #[serde(rename = "out")]
    pub bytes_out: u64,
}

/// One day's counts, as stored and as `edge-agent status` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterDay {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub by_capability: BTreeMap<String, Traffic>,
}

impl MeterDay {
    pub fn total(&self) -> u64 {
        self.by_capability.values().map(|t| t.bytes_in.saturating_add(t.bytes_out)).fold(0, u64::saturating_add)
    }

    /// The stored counts of `data_dir`, or an empty today when there are none (or they are
    /// of an earlier day).
    pub fn read(data_dir: &Path) -> MeterDay {
        let today = today();
        std::fs::read(data_dir.join(METER_FILE_NAME))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<MeterDay>(&bytes).ok())
            .filter(|stored| stored.day == today)
            .unwrap_or(MeterDay { day: today, by_capability: BTreeMap::new() })
    }
}

use crate::state::utc_day_now as today;

/// The counts of one agent and its cap.
#[derive(Debug)]
pub struct Meter {
    path: Option<PathBuf>,
    /// The person may change it while the agent runs (the tray's Settings).
    cap: Mutex<Option<u64>>,
    day: Mutex<MeterDay>,
    /// When the file was last written, and whether counts arrived since.
    saved: Mutex<(Option<std::time::Instant>, bool)>,
}

impl Meter {
    /// A meter persisted under `data_dir` (or in memory only without one).
    pub fn new(data_dir: Option<&Path>, cap: Option<u64>) -> Meter {
        let day = data_dir.map(MeterDay::read).unwrap_or_else(|| MeterDay { day: today(), ..MeterDay::default() });
        Meter {
            path: data_dir.map(|d| d.join(METER_FILE_NAME)),
            cap: Mutex::new(cap),
            day: Mutex::new(day),
            saved: Mutex::new((None, false)),
        }
    }

    pub fn cap(&self) -> Option<u64> {
        *self.cap.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The person's new daily cap, applied to the next connection.
    pub fn set_cap(&self, cap: Option<u64>) {
        *self.cap.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = cap;
    }

    fn current(&self) -> std::sync::MutexGuard<'_, MeterDay> {
        let mut day = self.day.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let today = today();
        if day.day != today {
            *day = MeterDay { day: today, by_capability: BTreeMap::new() };
        }
        day
    }

    /// `Err((used, cap))` once today's total reached the cap: no new connection today.
    pub fn admit(&self) -> Result<(), (u64, u64)> {
        let Some(cap) = self.cap() else { return Ok(()) };
        let used = self.current().total();
        if used >= cap {
            return Err((used, cap));
        }
        Ok(())
    }

    pub fn record(&self, capability: Capability, bytes_in: u64, bytes_out: u64) {
        if bytes_in == 0 && bytes_out == 0 {
            return;
        }
        {
            let mut day = self.current();
            let traffic = day.by_capability.entry(capability.as_str().to_owned()).or_default();
            traffic.bytes_in = traffic.bytes_in.saturating_add(bytes_in);
            traffic.bytes_out = traffic.bytes_out.saturating_add(bytes_out);
        }
        let due = {
            let mut saved = self.saved.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            saved.1 = true;
            saved.0.is_none_or(|at| at.elapsed() >= SAVE_EVERY)
        };
        if due {
            self.save();
        }
    }

    /// Writes the counts to the file now, if any arrived since the last write.
    pub fn save(&self) {
        let Some(path) = &self.path else { return };
        {
            let mut saved = self.saved.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if !saved.1 {
                return;
            }
            *saved = (Some(std::time::Instant::now()), false);
        }
        let snapshot = self.current().clone();
        if let Err(e) = write_atomically(path, &snapshot) {
            tracing::warn!(error = %e, path = %path.display(), "cannot save the egress meter; counting goes on in memory");
        }
    }

    pub fn today(&self) -> MeterDay {
        self.current().clone()
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.save();
    }
}

fn write_atomically(path: &Path, day: &MeterDay) -> Result<(), crate::AgentError> {
    let json = serde_json::to_vec(day).map_err(|e| crate::AgentError::Internal(e.to_string()))?;
    crate::files::replace(path, &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_persist_per_capability_and_the_cap_refuses_once_reached() {
        let dir = tempfile::tempdir().unwrap();
        let meter = Meter::new(Some(dir.path()), Some(1000));
        meter.admit().unwrap();
        meter.record(Capability::HttpRequest, 600, 100);
        meter.admit().unwrap();
        // The first count is written at once, the next within SAVE_EVERY waits…
        assert_eq!(MeterDay::read(dir.path()).total(), 700);
        meter.record(Capability::Browser, 250, 50);
        assert_eq!(meter.admit(), Err((1000, 1000)));
        assert_eq!(MeterDay::read(dir.path()).total(), 700, "written again within SAVE_EVERY");
        // …until the meter is saved (the agent does on shutdown) or dropped.
        drop(meter);
        let stored = MeterDay::read(dir.path());
        assert_eq!(stored.by_capability["http_request"], Traffic { bytes_in: 600, bytes_out: 100 });
        assert_eq!(stored.by_capability["browser"], Traffic { bytes_in: 250, bytes_out: 50 });
        // A restarted agent keeps today's counts, so a restart does not reset the cap.
        assert_eq!(Meter::new(Some(dir.path()), Some(1000)).admit(), Err((1000, 1000)));
        assert!(Meter::new(Some(dir.path()), None).admit().is_ok(), "no cap, no refusal");
    }

    #[test]
    fn an_earlier_days_counts_are_not_todays() {
        let dir = tempfile::tempdir().unwrap();
        let old = MeterDay {
            day: "2000-01-01".into(),
            by_capability: [("http_request".to_owned(), Traffic { bytes_in: 5000, bytes_out: 0 })].into(),
        };
        std::fs::write(dir.path().join(METER_FILE_NAME), serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(MeterDay::read(dir.path()).total(), 0);
        assert!(Meter::new(Some(dir.path()), Some(10)).admit().is_ok());
    }
}
