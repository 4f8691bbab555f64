//! How long to wait before trying the hub again: one full-jitter backoff for every retry
//! loop of the agent (reconnects, run reports), so none of them can hammer a hub that is down.

use edge_protocol::errors::full_jitter_backoff;
use std::time::Duration;

pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const BACKOFF_CAP: Duration = edge_protocol::errors::MAX_RETRY_BACKOFF;

/// Backoff before attempt `attempt` (1-based): full jitter, capped at 5 minutes.
pub fn reconnect_delay(attempt: u32) -> Duration {
    full_jitter_backoff(attempt, BACKOFF_BASE, BACKOFF_CAP, rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_stays_within_full_jitter_bounds() {
        for attempt in 1..=40u32 {
            let ceiling =
                BACKOFF_BASE.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(31))).min(BACKOFF_CAP);
            for _ in 0..200 {
                let delay = reconnect_delay(attempt);
                assert!(delay <= ceiling, "attempt {attempt}: {delay:?} > {ceiling:?}");
                assert!(delay <= BACKOFF_CAP);
            }
        }
        // Jitter is real: the same attempt does not always wait the same time.
        let draws: std::collections::HashSet<_> = (0..50).map(|_| reconnect_delay(10)).collect();
        assert!(draws.len() > 1);
    }
}
