//! Owns the hub's Prometheus metrics: their names, help texts, histogram buckets, the
//! process-wide recorder, and rendering the `/metrics` page. The dispatcher and handlers
//! call the small hook functions below (one line at each event); queue gauges are read from
//! the store at scrape time, so they are right after a restart and on every instance.
//!
//! It must never label a series with an agent id, a creator id or a job id: those are
//! unbounded and would grow the scrape without limit. Job types are the only label.

use crate::store::{JobState, QueueDepth};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

pub const JOBS_SUBMITTED: &str = "edge_hub_jobs_submitted_total";
/// The prototype's `JobsAssigned`.
pub const JOBS_ASSIGNED: &str = "edge_hub_jobs_assigned_total";
/// The prototype's `JobsCompleted`.
pub const JOBS_COMPLETED: &str = "edge_hub_jobs_completed_total";
/// The prototype's `JobsFailed`: failures that are final (no retry left or not retryable).
pub const JOBS_FAILED: &str = "edge_hub_jobs_failed_total";
pub const JOBS_RETRIED: &str = "edge_hub_jobs_retried_total";
pub const JOBS_DEAD: &str = "edge_hub_jobs_dead_total";
pub const JOBS_REDRIVEN: &str = "edge_hub_jobs_redriven_total";
pub const STALE_RESULTS: &str = "edge_hub_stale_results_total";
pub const HEARTBEATS: &str = "edge_hub_agent_heartbeats_total";
pub const AGENTS_CONNECTED: &str = "edge_hub_agents_connected";
pub const QUEUE_DEPTH: &str = "edge_hub_queue_depth";
pub const OLDEST_PENDING_AGE: &str = "edge_hub_queue_oldest_pending_age_seconds";
pub const DEAD_LETTER_DEPTH: &str = "edge_hub_dead_letter_depth";
pub const DISPATCH_LATENCY: &str = "edge_hub_dispatch_latency_seconds";
pub const TUNNELS_OPEN: &str = "edge_hub_tunnels_open";
pub const TUNNEL_STREAMS_OPEN: &str = "edge_hub_tunnel_streams_open";
pub const TUNNEL_STREAMS: &str = "edge_hub_tunnel_streams_total";
pub const TUNNEL_REFUSALS: &str = "edge_hub_tunnel_refusals_total";
pub const TUNNEL_BYTES: &str = "edge_hub_tunnel_bytes_total";
pub const TUNNEL_SETUP: &str = "edge_hub_tunnel_stream_setup_seconds";

/// Submit → assign. Fine below 10 ms (the dispatcher's own cost), coarse above (agents busy).
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// The process's recorder. `metrics` has one global recorder per process, so several hubs
/// in one process (the tests) share counters; gauges are set per scrape from that hub's store.
pub struct HubMetrics {
    handle: PrometheusHandle,
    /// Job types that had a gauge, so a type whose queue empties reads 0 instead of vanishing.
    seen_types: Mutex<BTreeSet<String>>,
}

static METRICS: OnceLock<HubMetrics> = OnceLock::new();

/// Installs the recorder on first use and returns it.
pub fn install() -> &'static HubMetrics {
    METRICS.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DISPATCH_LATENCY.to_owned()), LATENCY_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(TUNNEL_SETUP.to_owned()), LATENCY_BUCKETS))
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            // Someone else in this process owns the global recorder; our page will show only
            // the gauges we set through it. Never fatal: metrics must not stop the hub.
            tracing::warn!("a metrics recorder was already installed; /metrics may be incomplete");
        }
        describe();
        for name in [
            JOBS_SUBMITTED,
            JOBS_ASSIGNED,
            JOBS_COMPLETED,
            JOBS_FAILED,
            JOBS_RETRIED,
            JOBS_DEAD,
            JOBS_REDRIVEN,
            STALE_RESULTS,
            HEARTBEATS,
            TUNNEL_STREAMS,
        ] {
            counter!(name).increment(0);
        }
        gauge!(TUNNELS_OPEN).set(0.0);
        gauge!(TUNNEL_STREAMS_OPEN).set(0.0);
        HubMetrics { handle, seen_types: Mutex::new(BTreeSet::new()) }
    })
}

fn describe() {
    describe_counter!(JOBS_SUBMITTED, "Jobs accepted through the API.");
    describe_counter!(JOBS_ASSIGNED, "Jobs handed to an agent (each delivery counts once).");
    describe_counter!(JOBS_COMPLETED, "Jobs an agent finished successfully.");
    describe_counter!(JOBS_FAILED, "Jobs that failed for good.");
    describe_counter!(JOBS_RETRIED, "Failed deliveries put back in the queue for another attempt.");
    describe_counter!(JOBS_DEAD, "Jobs moved to the dead-letter state.");
    describe_counter!(JOBS_REDRIVEN, "Dead jobs moved back to pending by a redrive.");
    describe_counter!(STALE_RESULTS, "Results from an expired lease, recorded but not applied.");
    describe_counter!(HEARTBEATS, "Heartbeat frames received from agents.");
    describe_gauge!(AGENTS_CONNECTED, "Agents with a live session on this instance.");
    describe_gauge!(QUEUE_DEPTH, "Pending jobs, by job type.");
    describe_gauge!(OLDEST_PENDING_AGE, Unit::Seconds, "Age of the oldest pending job, by job type.");
    describe_gauge!(DEAD_LETTER_DEPTH, "Jobs in the dead-letter state, by job type.");
    describe_histogram!(DISPATCH_LATENCY, Unit::Seconds, "Time from submission to first assignment.");
    describe_gauge!(TUNNELS_OPEN, "Agents' tunnels open to this instance.");
    describe_gauge!(TUNNEL_STREAMS_OPEN, "Streams open through the tunnels of this instance.");
    describe_counter!(TUNNEL_STREAMS, "Tunnel streams opened (the agent answered ok).");
    describe_counter!(TUNNEL_REFUSALS, "Tunnel streams refused, by reason (the agent's code, NO_AGENT, PROXY_AUTH…).");
    describe_counter!(
        TUNNEL_BYTES,
        Unit::Bytes,
        "Bytes relayed through tunnel streams, by direction (to_agent, from_agent)."
    );
    describe_histogram!(TUNNEL_SETUP, Unit::Seconds, "Time to open a tunnel stream and get the agent's answer.");
}

impl HubMetrics {
    /// The Prometheus text page: counters and histograms as recorded, gauges from `queues`
    /// (read from the store just now) and `connected` agents.
    /// `connected` is `None` when the dispatcher was too busy to count (the gauge keeps its
    /// last value).
    pub fn render(&self, queues: &[QueueDepth], connected: Option<usize>, now_ms: i64) -> String {
        if let Some(connected) = connected {
            gauge!(AGENTS_CONNECTED).set(connected as f64);
        }
        // (pending, oldest pending created_at, dead) per job type.
        let mut by_type: BTreeMap<&str, (i64, Option<i64>, i64)> = BTreeMap::new();
        for queue in queues {
            let entry = by_type.entry(queue.job_type.as_str()).or_default();
            match queue.status {
                JobState::Pending => {
                    entry.0 += queue.count;
                    entry.1 = Some(entry.1.map_or(queue.oldest_created_at, |o| o.min(queue.oldest_created_at)));
                }
                JobState::Dead => entry.2 += queue.count,
                _ => {}
            }
        }
        let mut seen = self.seen_types.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for gone in seen.iter().filter(|t| !by_type.contains_key(t.as_str())) {
            let labels = [("job_type", gone.clone())];
            gauge!(QUEUE_DEPTH, &labels).set(0.0);
            gauge!(OLDEST_PENDING_AGE, &labels).set(0.0);
            gauge!(DEAD_LETTER_DEPTH, &labels).set(0.0);
        }
        for (job_type, (pending, oldest, dead)) in &by_type {
            let labels = [("job_type", (*job_type).to_owned())];
            gauge!(QUEUE_DEPTH, &labels).set(*pending as f64);
            let age_ms = oldest.map(|at| now_ms.saturating_sub(at).max(0)).unwrap_or(0);
            gauge!(OLDEST_PENDING_AGE, &labels).set(age_ms as f64 / 1000.0);
            gauge!(DEAD_LETTER_DEPTH, &labels).set(*dead as f64);
            seen.insert((*job_type).to_owned());
        }
        drop(seen);
        self.handle.run_upkeep();
        self.handle.render()
    }
}

// Hooks: one call at each event. Cheap (an atomic add after the first call per series).

pub fn job_submitted() {
    counter!(JOBS_SUBMITTED).increment(1);
}

/// A job was handed to an agent. `since_submit` is set on its first delivery only, so
/// redeliveries do not skew the submit→assign latency.
pub fn job_assigned(since_submit: Option<Duration>) {
    counter!(JOBS_ASSIGNED).increment(1);
    if let Some(latency) = since_submit {
        histogram!(DISPATCH_LATENCY).record(latency.as_secs_f64());
    }
}

pub fn jobs_assigned(count: u64) {
    counter!(JOBS_ASSIGNED).increment(count);
}

pub fn dispatch_latency(latency: Duration) {
    histogram!(DISPATCH_LATENCY).record(latency.as_secs_f64());
}

pub fn job_completed() {
    counter!(JOBS_COMPLETED).increment(1);
}

pub fn job_failed() {
    counter!(JOBS_FAILED).increment(1);
}

pub fn job_retried() {
    counter!(JOBS_RETRIED).increment(1);
}

pub fn job_dead() {
    counter!(JOBS_DEAD).increment(1);
}

pub fn jobs_redriven(count: u64) {
    counter!(JOBS_REDRIVEN).increment(count);
}

pub fn stale_result() {
    counter!(STALE_RESULTS).increment(1);
}

pub fn tunnel_opened(open: bool) {
    if open {
        gauge!(TUNNELS_OPEN).increment(1.0);
    } else {
        gauge!(TUNNELS_OPEN).decrement(1.0);
    }
}

/// A stream the agent accepted after `setup`.
pub fn tunnel_stream_opened(setup: Duration) {
    counter!(TUNNEL_STREAMS).increment(1);
    gauge!(TUNNEL_STREAMS_OPEN).increment(1.0);
    histogram!(TUNNEL_SETUP).record(setup.as_secs_f64());
}

/// A stream ended after carrying these bytes.
pub fn tunnel_stream_closed(to_agent: u64, from_agent: u64) {
    gauge!(TUNNEL_STREAMS_OPEN).decrement(1.0);
    counter!(TUNNEL_BYTES, "direction" => "to_agent").increment(to_agent);
    counter!(TUNNEL_BYTES, "direction" => "from_agent").increment(from_agent);
}

/// `reason` is a code from a fixed set (the agent's refusal codes, the proxy's own).
pub fn tunnel_refused(reason: &str) {
    // An agent could answer any code: only known ones become a label value.
    const KNOWN: &[&str] = &[
        "EGRESS_DENIED",
        "EGRESS_CAP",
        "CAPABILITY_NOT_GRANTED",
        "PAUSED",
        "NETWORK",
        "NOT_EXPOSED",
        "BAD_PAYLOAD",
        "NO_AGENT",
        "PROXY_AUTH",
        "BAD_REQUEST",
        "TIMEOUT",
    ];
    let reason = KNOWN.iter().find(|k| **k == reason).copied().unwrap_or("OTHER");
    counter!(TUNNEL_REFUSALS, "reason" => reason).increment(1);
}

pub fn heartbeat() {
    counter!(HEARTBEATS).increment(1);
}

/// Milliseconds between two Unix-ms timestamps as a duration (0 if the clock stepped back).
pub fn elapsed_ms(from_ms: i64, to_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(to_ms.saturating_sub(from_ms)).unwrap_or(0))
}
