//! Owns the hub's periodic housekeeping: expired leases (back to pending, dead or
//! cancelled), agents not heard from for 3 heartbeat intervals (offline), running redrives
//! (one rate-limited step each), and retention (final jobs, old ledger entries, tunnel
//! routes that dead instances left). Every
//! hub process runs one; the store's compare-and-set makes concurrent sweeps safe. It must
//! never hold a job or a session itself, and never stop on a database error: it logs and
//! tries again next tick.

use crate::crypto::now_ms;
use crate::events::Events;
use crate::queue::{millis, QueueConfig};
use crate::store::{JobState, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Retention runs this often; it deletes in batches so a backlog cannot stall a sweep.
const RETENTION_EVERY: Duration = Duration::from_secs(60);
const PURGE_BATCH: i64 = 1000;

pub struct Sweeper {
    pub store: Arc<dyn Store>,
    pub events: Events,
    pub queue: QueueConfig,
    /// Agents silent for this long are offline (3 heartbeat intervals).
    pub agent_stale_after: Duration,
}

impl Sweeper {
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.queue.sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_retention: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.sweep_once().await;
            if last_retention.is_none_or(|at| at.elapsed() >= RETENTION_EVERY) {
                last_retention = Some(tokio::time::Instant::now());
                self.retention().await;
            }
        }
    }

    /// One pass over leases, agents and redrives.
    pub async fn sweep_once(&self) {
        let now = now_ms();
        match self.store.expire_leases(now).await {
            Ok(expired) => {
                let mut available = false;
                for lease in expired {
                    info!(job_id = lease.job_id, agent_id = lease.agent_id, new_status = %lease.new_state, "lease expired");
                    if lease.new_state == JobState::Dead {
                        crate::metrics::job_dead();
                    }
                    if lease.new_state == JobState::Pending {
                        available = true;
                    } else {
                        self.events.job_finished(&lease.job_id).await;
                    }
                }
                if available {
                    self.events.job_available().await;
                }
            }
            Err(e) => error!(error = %e, "cannot expire leases; retrying next sweep"),
        }
        match self.store.mark_stale_agents_offline(now - millis(self.agent_stale_after)).await {
            Ok(0) => {}
            Ok(count) => info!(count, "agents without a heartbeat for 3 intervals are offline"),
            Err(e) => error!(error = %e, "cannot mark silent agents offline"),
        }
        match self.store.running_redrives().await {
            Ok(redrives) => {
                for redrive in redrives {
                    match self.store.redrive_step(&redrive.id, now).await {
                        Ok(Some(step)) => {
                            crate::metrics::jobs_redriven(u64::try_from(step.moved - redrive.moved).unwrap_or(0));
                            info!(
                                redrive_id = step.id,
                                moved = step.moved,
                                total = step.total,
                                status = step.status.as_str(),
                                "redrive step"
                            );
                            self.events.job_available().await;
                        }
                        Ok(None) => {}
                        Err(e) => error!(redrive_id = redrive.id, error = %e, "redrive step failed; retrying"),
                    }
                }
            }
            Err(e) => error!(error = %e, "cannot list running redrives"),
        }
    }

    async fn retention(&self) {
        let now = now_ms();
        let before = now - millis(self.queue.retention);
        loop {
            match self.store.purge_finished_jobs(before, PURGE_BATCH).await {
                Ok(count) if count > 0 => info!(count, "finished jobs past retention deleted"),
                Ok(_) => break,
                Err(e) => {
                    error!(error = %e, "cannot purge old jobs");
                    break;
                }
            }
        }
        match self.store.purge_ledger(now - millis(self.queue.dedupe_cooloff)).await {
            Ok(0) => {}
            Ok(count) => info!(count, "ledger entries past the cool-off window deleted"),
            Err(e) => error!(error = %e, "cannot purge the dedupe ledger"),
        }
        // Stale routes are already ignored (tunnel::ROUTE_STALE_AFTER); this only keeps the
        // table from growing with every instance that ever died with tunnels open.
        let dead = now - millis(crate::tunnel::ROUTE_STALE_AFTER) * 10;
        match self.store.purge_tunnel_routes(dead).await {
            Ok(0) => {}
            Ok(count) => info!(count, "tunnel routes of instances gone for a while deleted"),
            Err(e) => error!(error = %e, "cannot purge stale tunnel routes"),
        }
    }
}
