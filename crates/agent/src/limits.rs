//! The person's local caps, applied: jobs per hour (counted here, for the executor), messages
//! per hour (handed to the browser runtime's DM bucket), bytes per day (the egress gate's
//! meter reads [`crate::local_settings::Caps::bytes_per_day`]).
//!
//! It owns the rule "the hub may lower a cap, never raise it" ([`lower`]), the
//! jobs-per-hour window and the person's quiet hours ([`QuietHoursGate`]: no new job starts
//! in them). It must never let a hub value raise the person's cap, and never
//! write the settings file (only the person's own tools do).

use crate::local_settings::{LocalSettings, QuietHours};
use edge_protocol::{ErrorCode, JobError};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const HOUR: Duration = Duration::from_secs(3600);
/// Job starts remembered at most: far above any sane hourly cap, so the window stays bounded
/// even with no cap set.
const MAX_REMEMBERED: usize = 65_536;

/// The smaller of the person's cap and the hub's; no cap on one side is no limit from it.
/// A hub value can only ever make the result smaller.
pub fn lower<T: Ord>(mine: Option<T>, hub: Option<T>) -> Option<T> {
    match (mine, hub) {
        (Some(mine), Some(hub)) => Some(mine.min(hub)),
        (mine, None) => mine,
        (None, hub) => hub,
    }
}

/// Jobs started in the last hour, against `min(person's jobsPerHour, hub's)`.
#[derive(Debug)]
pub struct JobsPerHour {
    data_dir: PathBuf,
    hub: Option<u32>,
    starts: VecDeque<Instant>,
}

impl JobsPerHour {
    pub fn new(data_dir: &Path) -> JobsPerHour {
        JobsPerHour { data_dir: data_dir.to_path_buf(), hub: None, starts: VecDeque::new() }
    }

    /// What the hub asked for in `hello_ack`; applied only where it is lower.
    pub fn set_hub(&mut self, hub: Option<u32>) {
        self.hub = hub;
    }

    /// The cap in force, reading the person's setting now (they may change it while the
    /// agent runs). An unreadable settings file grants nothing anyway (consent refuses every
    /// job), so it adds no cap of its own here.
    pub fn cap(&self) -> Option<u32> {
        let mine = LocalSettings::load(&self.data_dir).ok().and_then(|s| s.caps.jobs_per_hour);
        lower(mine, self.hub)
    }

    /// Counts a job starting at `now`, or refuses it with `RATE_LIMITED` and how long until
    /// the oldest start in the window leaves it.
    pub fn admit(&mut self, now: Instant) -> Result<(), JobError> {
        while self.starts.front().is_some_and(|at| now.saturating_duration_since(*at) >= HOUR)
            || self.starts.len() >= MAX_REMEMBERED
        {
            self.starts.pop_front();
        }
        if let Some(cap) = self.cap() {
            if self.starts.len() >= cap as usize {
                let wait = self.starts.front().map_or(HOUR, |oldest| HOUR - now.saturating_duration_since(*oldest));
                let whose = if self.hub.is_some_and(|hub| Some(hub) == self.cap()) {
                    "set by the hub, below the person's own"
                } else {
                    "the person's own (edge-agent settings)"
                };
                return Err(JobError {
                    code: ErrorCode::RateLimited,
                    message: Some(format!(
                        "this agent's cap of {cap} jobs per hour ({whose}) is reached; the next fits in {} s",
                        wait.as_secs().max(1)
                    )),
                    retry_after_ms: Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1)),
                });
            }
        }
        self.starts.push_back(now);
        Ok(())
    }
}

const MINUTES_PER_DAY: u16 = 24 * 60;

/// When `minute` (after midnight) is inside `hours`, how many minutes until they end.
pub fn quiet_minutes_left(hours: &QuietHours, minute: u16) -> Option<u16> {
    let (start, end) = hours.minutes().ok()?;
    let inside = if start < end { (start..end).contains(&minute) } else { minute >= start || minute < end };
    inside.then(|| (end + MINUTES_PER_DAY - minute) % MINUTES_PER_DAY)
}

/// Minutes after midnight on this machine's clock (its time zone: quiet hours are the
/// person's evenings and nights, not UTC's).
pub fn local_minute_now() -> u16 {
    use chrono::Timelike;
    let now = chrono::Local::now();
    // At most 23 * 60 + 59: fits.
    (now.hour() * 60 + now.minute()) as u16
}

/// The person's quiet hours, read from settings.json at every check (they may change them
/// while the agent runs). An unreadable file sets no quiet hours here: consent then refuses
/// every job anyway.
#[derive(Debug, Clone)]
pub struct QuietHoursGate {
    data_dir: PathBuf,
}

impl QuietHoursGate {
    pub fn new(data_dir: &Path) -> QuietHoursGate {
        QuietHoursGate { data_dir: data_dir.to_path_buf() }
    }

    /// The end of the quiet hours `minute` falls in, as `HH:MM`, or `None` outside them.
    pub fn until(&self, minute: u16) -> Option<String> {
        let hours = LocalSettings::load(&self.data_dir).ok()?.quiet_hours?;
        quiet_minutes_left(&hours, minute)?;
        Some(hours.end.clone())
    }

    /// Refuses a new job at `minute` inside quiet hours with `AGENT_PAUSED` (the hub
    /// offers it again later, as for a paused agent) and how long until they end.
    pub fn admit(&self, minute: u16) -> Result<(), JobError> {
        let Some(hours) = LocalSettings::load(&self.data_dir).ok().and_then(|s| s.quiet_hours) else {
            return Ok(());
        };
        let Some(left) = quiet_minutes_left(&hours, minute) else { return Ok(()) };
        Err(JobError {
            code: ErrorCode::AgentPaused,
            message: Some(format!(
                "quiet hours until {} (the person's own, edge-agent settings): no new job starts before then",
                hours.end
            )),
            retry_after_ms: Some(u64::from(left) * 60_000),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_quiet_hours(dir: &Path, start: &str, end: &str) {
        let mut settings = LocalSettings::load(dir).unwrap();
        settings.quiet_hours = Some(QuietHours::new(start, end).unwrap());
        settings.save(dir).unwrap();
    }

    const fn at(h: u16, m: u16) -> u16 {
        h * 60 + m
    }

    #[test]
    fn quiet_hours_over_midnight_and_within_a_day() {
        let night = QuietHours::new("22:00", "07:00").unwrap();
        assert_eq!(quiet_minutes_left(&night, at(22, 0)), Some(9 * 60), "the start is inside");
        assert_eq!(quiet_minutes_left(&night, at(23, 59)), Some(7 * 60 + 1));
        assert_eq!(quiet_minutes_left(&night, at(0, 0)), Some(7 * 60));
        assert_eq!(quiet_minutes_left(&night, at(6, 59)), Some(1));
        assert_eq!(quiet_minutes_left(&night, at(7, 0)), None, "the end is outside");
        assert_eq!(quiet_minutes_left(&night, at(12, 0)), None);
        assert_eq!(quiet_minutes_left(&night, at(21, 59)), None);

        let lunch = QuietHours::new("12:00", "13:30").unwrap();
        assert_eq!(quiet_minutes_left(&lunch, at(11, 59)), None);
        assert_eq!(quiet_minutes_left(&lunch, at(12, 0)), Some(90));
        assert_eq!(quiet_minutes_left(&lunch, at(13, 29)), Some(1));
        assert_eq!(quiet_minutes_left(&lunch, at(13, 30)), None);
        assert_eq!(quiet_minutes_left(&lunch, at(23, 0)), None);
    }

    #[test]
    fn a_job_in_quiet_hours_is_refused_as_paused_until_their_end() {
        let dir = tempfile::tempdir().unwrap();
        let gate = QuietHoursGate::new(dir.path());
        assert!(gate.admit(at(23, 0)).is_ok(), "no quiet hours set: nothing is refused");
        assert_eq!(gate.until(at(23, 0)), None);

        with_quiet_hours(dir.path(), "22:00", "07:00");
        let refused = gate.admit(at(23, 0)).unwrap_err();
        assert_eq!(refused.code, ErrorCode::AgentPaused);
        assert_eq!(refused.retry_after_ms, Some(8 * 60 * 60_000));
        assert!(refused.message.unwrap().contains("quiet hours until 07:00"));
        assert_eq!(gate.until(at(23, 0)).as_deref(), Some("07:00"));
        assert!(gate.admit(at(7, 0)).is_ok());
        assert_eq!(gate.until(at(9, 0)), None);

        // A change while the agent runs applies to the next job.
        with_quiet_hours(dir.path(), "08:00", "10:00");
        assert!(gate.admit(at(9, 0)).is_err());
        assert!(gate.admit(at(23, 0)).is_ok());
    }

    fn with_cap(dir: &Path, jobs_per_hour: Option<u32>) {
        let mut settings = LocalSettings::load(dir).unwrap();
        settings.caps.jobs_per_hour = jobs_per_hour;
        settings.save(dir).unwrap();
    }

    #[test]
    fn the_hub_lowers_a_cap_and_never_raises_it() {
        assert_eq!(lower(Some(10), Some(3)), Some(3));
        assert_eq!(lower(Some(10), Some(1000)), Some(10), "a hub value above the person's changes nothing");
        assert_eq!(lower(None, Some(5)), Some(5), "no cap of the person's: the hub's lowers from unlimited");
        assert_eq!(lower(Some(7), None), Some(7));
        assert_eq!(lower::<u32>(None, None), None);
    }

    #[test]
    fn jobs_over_the_persons_cap_wait_for_the_window() {
        let dir = tempfile::tempdir().unwrap();
        with_cap(dir.path(), Some(2));
        let mut jobs = JobsPerHour::new(dir.path());
        let start = Instant::now();
        jobs.admit(start).unwrap();
        jobs.admit(start + Duration::from_secs(60)).unwrap();
        let refused = jobs.admit(start + Duration::from_secs(120)).unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited);
        assert_eq!(refused.retry_after_ms, Some(3_480_000), "until the first start is an hour old");
        assert!(refused.message.unwrap().contains("cap of 2 jobs per hour (the person's own"));
        // An hour after the first, one fits again.
        jobs.admit(start + HOUR).unwrap();
    }

    #[test]
    fn a_hub_value_above_the_persons_cap_changes_nothing_and_one_below_applies() {
        let dir = tempfile::tempdir().unwrap();
        with_cap(dir.path(), Some(1));
        let mut jobs = JobsPerHour::new(dir.path());
        jobs.set_hub(Some(1000));
        assert_eq!(jobs.cap(), Some(1));
        let start = Instant::now();
        jobs.admit(start).unwrap();
        assert!(jobs.admit(start + Duration::from_secs(1)).is_err(), "the hub's 1000 did not raise the person's 1");

        let other = tempfile::tempdir().unwrap();
        with_cap(other.path(), Some(10));
        let mut jobs = JobsPerHour::new(other.path());
        jobs.set_hub(Some(1));
        jobs.admit(start).unwrap();
        let refused = jobs.admit(start + Duration::from_secs(1)).unwrap_err();
        assert!(refused.message.unwrap().contains("set by the hub"));
    }

    #[test]
    fn no_cap_admits_everything_and_a_cap_set_later_counts_what_already_ran() {
        let dir = tempfile::tempdir().unwrap();
        let mut jobs = JobsPerHour::new(dir.path());
        let start = Instant::now();
        for n in 0..5 {
            jobs.admit(start + Duration::from_secs(n)).unwrap();
        }
        with_cap(dir.path(), Some(5));
        assert!(jobs.admit(start + Duration::from_secs(10)).is_err());
    }
}
