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
}

impl JobContext {
    pub fn new() -> Result<JobContext, crate::AgentError> {
        Ok(JobContext { http: http_request::client()? })
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
