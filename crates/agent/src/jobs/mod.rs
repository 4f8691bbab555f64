//! Job runners: turn a `JobSpec` into the `data` of an ok `job_result` or a [`JobError`].
//!
//! This module owns the mapping from job type to runner and the error taxonomy of each
//! runner. It must never touch the connection: it returns a result and the connection loop
//! decides when it can be sent. Cancellation is by dropping the future.

pub mod http_request;

use edge_protocol::{ErrorCode, JobError, JobSpec};
use serde_json::Value;

/// What every runner needs from the agent; cheap to clone.
#[derive(Clone)]
pub struct JobContext {
    pub(crate) http: reqwest::Client,
    /// Set when the agent can run `bundle` jobs (logged in, data dir known).
    pub(crate) bundles: Option<crate::bundles::BundleContext>,
    /// Where `job_log` frames go (the connection's outgoing queue).
    pub(crate) frames: Option<tokio::sync::mpsc::UnboundedSender<edge_protocol::AgentFrame>>,
    /// Set when a browser was found: runs `send_dm`, `broadcast_dm`, `schedule_post`, `scrape_subs`.
    pub(crate) browser: Option<(edge_browser::BrowserRuntime, std::path::PathBuf)>,
}

impl JobContext {
    pub fn new() -> Result<JobContext, crate::AgentError> {
        Ok(JobContext { http: http_request::client()?, bundles: None, frames: None, browser: None })
    }

    pub fn with_bundles(
        mut self,
        bundles: Option<crate::bundles::BundleContext>,
        frames: tokio::sync::mpsc::UnboundedSender<edge_protocol::AgentFrame>,
    ) -> JobContext {
        self.bundles = bundles;
        self.frames = Some(frames);
        self
    }
}

/// Like [`run_cancellable`], plus the `data` a failed job still reports (a partial
/// `broadcast_dm`'s `sentRecipients`, which the hub writes to its dedupe ledger).
pub async fn run_with_data(
    context: &JobContext,
    job: &JobSpec,
    cancel: &tokio_util::sync::CancellationToken,
    cancelled: impl Fn() -> JobError,
) -> (Result<Value, JobError>, Option<Value>) {
    if edge_protocol::jobs::BROWSER_JOB_TYPES.contains(&job.job_type.as_str()) {
        let Some((runtime, data_dir)) = &context.browser else {
            return (
                Err(edge_browser::runtime::unavailable_error(
                    "this agent found no Chrome, Chromium or Edge to run browser jobs with",
                )),
                None,
            );
        };
        // Dropping the flow future closes nothing the next job needs: the context is per job
        // and the warm browser stays.
        return tokio::select! {
            outcome = crate::browser::run(runtime, data_dir, context.bundles.as_ref(), job) => outcome,
            _ = cancel.cancelled() => (Err(cancelled()), None),
        };
    }
    (run_cancellable(context, job, cancel, cancelled).await, None)
}

/// Runs one job until it ends or `cancel` fires. `bundle` jobs get the token (their process
/// tree is ended through the interrupt/terminate/kill ladder and the result is journaled);
/// other jobs are cancelled by dropping their future.
pub async fn run_cancellable(
    context: &JobContext,
    job: &JobSpec,
    cancel: &tokio_util::sync::CancellationToken,
    cancelled: impl Fn() -> JobError,
) -> Result<Value, JobError> {
    if job.job_type == edge_protocol::jobs::BUNDLE {
        let Some(bundles) = &context.bundles else {
            return Err(JobError::new(ErrorCode::UnsupportedJob, "this agent has no bundle runtime configured"));
        };
        let sink = context.frames.clone().map(|frames| {
            let id = job.job_id.clone();
            let sink: crate::runtime::ChunkSink = std::sync::Arc::new(move |stream, seq, data| {
                let _ = frames.send(edge_protocol::AgentFrame::JobLog { id: id.clone(), stream, seq, data });
            });
            sink
        });
        return crate::bundles::run(bundles, job, cancel.clone(), sink).await;
    }
    tokio::select! {
        outcome = run(context, job) => outcome,
        _ = cancel.cancelled() => Err(cancelled()),
    }
}

/// Runs one job to completion. Drop the future to cancel it.
pub async fn run(context: &JobContext, job: &JobSpec) -> Result<Value, JobError> {
    match job.job_type.as_str() {
        edge_protocol::jobs::HTTP_REQUEST => http_request::run(&context.http, &job.payload).await,
        other => Err(JobError::new(
            ErrorCode::UnsupportedJob,
            format!("this agent ({}) does not run jobs of type {other:?}", crate::agent_version()),
        )),
    }
}
