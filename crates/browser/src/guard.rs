//! Local guardrails, enforced on the creator's machine whatever the hub asks: token buckets
//! per creator and action, per-site back-off after the site rate-limited us, and the circuit
//! breaker that pauses all browser jobs when that keeps happening.
//!
//! This module owns the arithmetic and its persisted state (`<dir>/guard.json`, written
//! atomically, so a restart does not hand out a fresh budget). It must never let a caller
//! raise a cap above the person's own setting: [`Caps::effective`] only ever lowers.

use crate::checkpoint::write_atomically;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A token bucket's shape: `per_hour` tokens refill evenly over an hour, at most `burst` saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cap {
    pub per_hour: u32,
    pub burst: u32,
}

impl Cap {
    /// The prototype's DM budget.
    pub const DM: Cap = Cap { per_hour: 20, burst: 5 };
    pub const POST: Cap = Cap { per_hour: 10, burst: 3 };
    pub const SCRAPE: Cap = Cap { per_hour: 60, burst: 10 };

    /// The smaller of two caps, field by field: how a hub's or a setting's request applies.
    pub fn lower(self, other: Cap) -> Cap {
        Cap { per_hour: self.per_hour.min(other.per_hour), burst: self.burst.min(other.burst) }
    }
}

/// The person's caps per action (`dm`, `post`, `scrape`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps(pub BTreeMap<String, Cap>);

impl Default for Caps {
    fn default() -> Self {
        Caps(BTreeMap::from([
            ("dm".to_owned(), Cap::DM),
            ("post".to_owned(), Cap::POST),
            ("scrape".to_owned(), Cap::SCRAPE),
        ]))
    }
}

impl Caps {
    /// Settings may lower the defaults, never raise them.
    pub fn with_setting(mut self, action: &str, wanted: Cap) -> Caps {
        let current = self.0.get(action).copied().unwrap_or(wanted);
        self.0.insert(action.to_owned(), current.lower(wanted));
        self
    }

    /// The cap for `action`, lowered further by what the hub asked for (never raised).
    pub fn effective(&self, action: &str, hub: Option<Cap>) -> Cap {
        let mine = self.0.get(action).copied().unwrap_or(Cap { per_hour: 60, burst: 5 });
        match hub {
            Some(hub) => mine.lower(hub),
            None => mine,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bucket {
    tokens: f64,
    updated_ms: i64,
}

/// Back-off of one site after it rate-limited us.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SiteState {
    /// When each recent RATE_LIMITED happened (inside the window).
    strikes: Vec<i64>,
    backoff_until_ms: i64,
}

/// The circuit breaker's settings: `threshold` rate limits within `window_ms` open it for
/// `cooldown_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    pub threshold: u32,
    pub window_ms: i64,
    pub cooldown_ms: i64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings { threshold: 3, window_ms: 30 * 60_000, cooldown_ms: 30 * 60_000 }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GuardState {
    buckets: BTreeMap<String, Bucket>,
    sites: BTreeMap<String, SiteState>,
    circuit_open_until_ms: i64,
    circuit_reason: Option<String>,
}

/// What the runtime must do after the site rate-limited a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitVerdict {
    /// Do not retry this site sooner.
    pub retry_after_ms: u64,
    /// `Some(until)` when this strike opened the circuit breaker.
    pub circuit_opened_until_ms: Option<i64>,
}

/// The guard state of one creator profile.
pub struct Guard {
    path: PathBuf,
    breaker: BreakerSettings,
    state: Mutex<GuardState>,
}

impl Guard {
    /// Loads `<dir>/guard.json`. A missing file starts with full buckets; an unreadable one
    /// starts with empty buckets, so a damaged file never grants a fresh burst.
    pub fn open(dir: &Path, breaker: BreakerSettings) -> Guard {
        let path = dir.join("guard.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "guard.json is unreadable; budgets start empty");
                let now = crate::now_ms();
                let mut state = GuardState::default();
                for action in ["dm", "post", "scrape"] {
                    state.buckets.insert(action.to_owned(), Bucket { tokens: 0.0, updated_ms: now });
                }
                state
            }),
            Err(_) => GuardState::default(),
        };
        Guard { path, breaker, state: Mutex::new(state) }
    }

    fn save(&self, state: &GuardState) {
        match serde_json::to_vec_pretty(state) {
            Ok(bytes) => {
                if let Err(e) = write_atomically(&self.path, &bytes) {
                    tracing::warn!(error = %e, "cannot persist guard.json");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode guard state"),
        }
    }

    fn with_state<T>(&self, change: impl FnOnce(&mut GuardState) -> (T, bool)) -> T {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (out, dirty) = change(&mut guard);
        if dirty {
            self.save(&guard);
        }
        out
    }

    /// Takes one token for `action` now, or says how long until one is there.
    pub fn try_take(&self, action: &str, cap: Cap, now_ms: i64) -> Result<(), u64> {
        self.with_state(|state| {
            let bucket = state
                .buckets
                .entry(action.to_owned())
                .or_insert_with(|| Bucket { tokens: f64::from(cap.burst), updated_ms: now_ms });
            let rate_per_ms = f64::from(cap.per_hour) / 3_600_000.0;
            let elapsed = (now_ms - bucket.updated_ms).max(0) as f64;
            bucket.tokens = (bucket.tokens + elapsed * rate_per_ms).min(f64::from(cap.burst.max(1)));
            bucket.updated_ms = now_ms;
            if bucket.tokens >= 1.0 - 1e-9 {
                bucket.tokens -= 1.0;
                (Ok(()), true)
            } else if rate_per_ms <= 0.0 {
                (Err(u64::MAX), true)
            } else {
                let wait = ((1.0 - bucket.tokens) / rate_per_ms).ceil() as u64;
                (Err(wait.max(1)), true)
            }
        })
    }

    /// Tokens left for `action` (after refill), for status.
    pub fn tokens(&self, action: &str, cap: Cap, now_ms: i64) -> f64 {
        self.with_state(|state| {
            let tokens = match state.buckets.get(action) {
                None => f64::from(cap.burst),
                Some(b) => {
                    let rate = f64::from(cap.per_hour) / 3_600_000.0;
                    (b.tokens + (now_ms - b.updated_ms).max(0) as f64 * rate).min(f64::from(cap.burst))
                }
            };
            (tokens, false)
        })
    }

    /// The site's back-off, if one is running: how long until it ends.
    pub fn site_backoff(&self, site: &str, now_ms: i64) -> Option<u64> {
        self.with_state(|state| {
            let wait = state.sites.get(site).map(|s| s.backoff_until_ms - now_ms).filter(|w| *w > 0);
            (wait.map(|w| w as u64), false)
        })
    }

    /// The circuit breaker, if open: until when and why.
    pub fn circuit(&self, now_ms: i64) -> Option<(i64, String)> {
        self.with_state(|state| {
            let open = (state.circuit_open_until_ms > now_ms).then(|| {
                (state.circuit_open_until_ms, state.circuit_reason.clone().unwrap_or_else(|| "RATE_LIMITED".into()))
            });
            (open, false)
        })
    }

    /// Records that `site` rate-limited us: exponential back-off per site from `base_ms`,
    /// and the circuit opens when this is the `threshold`-th strike within the window.
    pub fn record_rate_limited(&self, site: &str, base_ms: u64, reason: &str, now_ms: i64) -> RateLimitVerdict {
        let breaker = self.breaker;
        self.with_state(|state| {
            let entry = state.sites.entry(site.to_owned()).or_default();
            entry.strikes.retain(|t| now_ms - *t <= breaker.window_ms);
            entry.strikes.push(now_ms);
            let strikes = entry.strikes.len() as u32;
            let backoff = base_ms.saturating_mul(1u64 << (strikes.saturating_sub(1)).min(10)).min(3_600_000);
            entry.backoff_until_ms = now_ms + backoff as i64;
            let mut verdict = RateLimitVerdict { retry_after_ms: backoff, circuit_opened_until_ms: None };
            if strikes >= breaker.threshold.max(1) && state.circuit_open_until_ms <= now_ms {
                let until = now_ms + breaker.cooldown_ms;
                state.circuit_open_until_ms = until;
                state.circuit_reason = Some(reason.to_owned());
                verdict.circuit_opened_until_ms = Some(until);
                verdict.retry_after_ms = verdict.retry_after_ms.max(breaker.cooldown_ms as u64);
                if let Some(entry) = state.sites.get_mut(site) {
                    entry.strikes.clear();
                }
            }
            (verdict, true)
        })
    }

    /// Closes the circuit (the person resumed by hand, or tests).
    pub fn close_circuit(&self) {
        self.with_state(|state| {
            state.circuit_open_until_ms = 0;
            state.circuit_reason = None;
            ((), true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_refills_at_the_hourly_rate() {
        let dir = tempfile::tempdir().unwrap();
        let guard = Guard::open(dir.path(), BreakerSettings::default());
        let now = 1_000_000;
        for _ in 0..5 {
            guard.try_take("dm", Cap::DM, now).unwrap();
        }
        let wait = guard.try_take("dm", Cap::DM, now).unwrap_err();
        assert_eq!(wait, 180_000, "20/h is one every 3 minutes");
        guard.try_take("dm", Cap::DM, now + 180_000).unwrap();
        // The state survives a restart: no fresh burst.
        let again = Guard::open(dir.path(), BreakerSettings::default());
        assert!(again.try_take("dm", Cap::DM, now + 180_001).is_err());
    }

    #[test]
    fn caps_only_go_down() {
        let caps = Caps::default().with_setting("dm", Cap { per_hour: 100, burst: 50 });
        assert_eq!(caps.effective("dm", None), Cap::DM);
        let caps = caps.with_setting("dm", Cap { per_hour: 2, burst: 1 });
        assert_eq!(caps.effective("dm", None), Cap { per_hour: 2, burst: 1 });
        assert_eq!(caps.effective("dm", Some(Cap { per_hour: 1000, burst: 1000 })), Cap { per_hour: 2, burst: 1 });
        assert_eq!(Caps::default().effective("dm", Some(Cap { per_hour: 5, burst: 9 })), Cap { per_hour: 5, burst: 5 });
    }

    #[test]
    fn repeated_rate_limits_back_off_and_open_the_circuit() {
        let dir = tempfile::tempdir().unwrap();
        let guard = Guard::open(dir.path(), BreakerSettings { threshold: 2, window_ms: 60_000, cooldown_ms: 300_000 });
        let first = guard.record_rate_limited("site", 1000, "RATE_LIMITED", 0);
        assert_eq!(first, RateLimitVerdict { retry_after_ms: 1000, circuit_opened_until_ms: None });
        assert_eq!(guard.site_backoff("site", 500), Some(500));
        let second = guard.record_rate_limited("site", 1000, "RATE_LIMITED", 2000);
        assert_eq!(second.circuit_opened_until_ms, Some(302_000));
        assert_eq!(guard.circuit(3000).map(|c| c.0), Some(302_000));
        assert_eq!(guard.circuit(302_001), None);
        // Outside the window, a strike starts over.
        let dir = tempfile::tempdir().unwrap();
        let guard = Guard::open(dir.path(), BreakerSettings { threshold: 2, window_ms: 60_000, cooldown_ms: 300_000 });
        guard.record_rate_limited("site", 1000, "RATE_LIMITED", 0);
        assert_eq!(guard.record_rate_limited("site", 1000, "RATE_LIMITED", 120_000).circuit_opened_until_ms, None);
    }
}
