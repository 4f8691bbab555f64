//! The person's local caps, applied: jobs per hour (counted here, for the executor), messages
//! per hour (handed to the browser runtime's DM bucket), bytes per day (the egress gate's
//! meter reads [`crate::local_settings::Caps::bytes_per_day`]).
//!
//! It owns the rule "the hub may lower a cap, never raise it" ([`lower`]) and the
//! jobs-per-hour window. It must never let a hub value raise the person's cap, and never
//! write the settings file (only the person's own tools do).

use crate::local_settings::LocalSettings;
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

#[cfg(test)]
mod tests {
    use super::*;

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
