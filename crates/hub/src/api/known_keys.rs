//! Remembers API keys the store has recognised, so a client submitting jobs one request at a
//! time does not pay a database round trip per request to prove the same key again. Only
//! keys that exist are remembered (a key created a moment ago by `edge-hub api-key create`
//! in another process works at once), and each is looked up again after [`KEY_RECHECK`], so
//! a key row deleted by hand stops working within that time.

use crate::store::ApiKeyRecord;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a recognised key is trusted without asking the store again.
pub const KEY_RECHECK: Duration = Duration::from_secs(60);

/// Bounds the memory a hub with very many keys spends here; past it the oldest half goes.
const MAX_KEYS: usize = 10_000;

pub struct KnownKeys {
    recheck_after: Duration,
    /// Key hash → its record and when the store last confirmed it.
    keys: Mutex<HashMap<String, (ApiKeyRecord, Instant)>>,
}

impl KnownKeys {
    pub fn new(recheck_after: Duration) -> KnownKeys {
        KnownKeys { recheck_after, keys: Mutex::new(HashMap::new()) }
    }

    /// The record of `key_hash` if the store confirmed it within the recheck time.
    pub fn get(&self, key_hash: &str, now: Instant) -> Option<ApiKeyRecord> {
        let keys = self.keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        keys.get(key_hash)
            .filter(|(_, confirmed)| now.saturating_duration_since(*confirmed) < self.recheck_after)
            .map(|(record, _)| record.clone())
    }

    /// The store just confirmed `key_hash`.
    pub fn confirmed(&self, key_hash: &str, record: ApiKeyRecord, now: Instant) {
        let mut keys = self.keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if keys.len() >= MAX_KEYS && !keys.contains_key(key_hash) {
            let mut ages: Vec<Instant> = keys.values().map(|(_, at)| *at).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            keys.retain(|_, (_, at)| *at > cutoff);
        }
        keys.insert(key_hash.to_owned(), (record, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(creator: Option<&str>) -> ApiKeyRecord {
        ApiKeyRecord { name: None, creator_id: creator.map(str::to_owned) }
    }

    #[test]
    fn a_confirmed_key_is_trusted_until_the_recheck_time_then_asked_again() {
        let keys = KnownKeys::new(Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(keys.get("h1", start), None, "never confirmed: ask the store");
        keys.confirmed("h1", record(Some("c1")), start);
        assert_eq!(keys.get("h1", start + Duration::from_secs(59)), Some(record(Some("c1"))));
        assert_eq!(keys.get("h1", start + Duration::from_secs(60)), None, "stale: ask the store again");
        assert_eq!(keys.get("h2", start), None);
    }

    #[test]
    fn past_the_bound_the_oldest_half_is_forgotten() {
        let keys = KnownKeys::new(Duration::from_secs(3600));
        let start = Instant::now();
        for i in 0..MAX_KEYS {
            keys.confirmed(&format!("k{i}"), record(None), start + Duration::from_millis(i as u64));
        }
        let later = start + Duration::from_secs(10);
        keys.confirmed("newest", record(None), later);
        assert_eq!(keys.get("k0", later), None, "the oldest went");
        assert!(keys.get(&format!("k{}", MAX_KEYS - 1), later).is_some(), "the newest stayed");
        assert!(keys.get("newest", later).is_some());
        assert!(keys.keys.lock().unwrap().len() <= MAX_KEYS / 2 + 1);
    }
}
