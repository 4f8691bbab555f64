//! Runners: what turns one `job_assign` into the `data` of an ok `job_result` or a
//! [`JobError`]. One file per job type, each implementing [`Runner`], all registered by job
//! type in [`standard`] — a new job type is one file and one line there.
//!
//! This room owns the job types and each runner's error taxonomy. What a runner needs (the
//! egress gate, the bundle cache, the browser) is handed to it in [`Resources`]; it must
//! never reach the connection, the executor's bookkeeping or the service. A runner returns
//! its outcome and the executor decides what happens to it.

pub mod browser_flow;
pub mod bundle;
pub mod http_request;

use crate::consent::Consent;
use edge_protocol::api::NotifyRequest;
use edge_protocol::{ErrorCode, JobError, JobSpec};
use futures_util::future::BoxFuture;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What a runner gets for one job besides its spec.
pub struct RunContext {
    /// Fires when the job is cancelled (by the hub, the person, a pause-and-stop, or
    /// shutdown).
    pub cancel: CancellationToken,
    /// Where a runner streams output as `job_log` frames, when the hub speaks them.
    pub log: Option<crate::runtime::ChunkSink>,
    /// Where a runner tells how its job goes (the executor shows it to the person and
    /// tells the hub); `None` reports nothing.
    pub report: Option<Arc<dyn JobReport>>,
}

impl RunContext {
    /// A context that is never cancelled and streams nothing (tests, one-off runs).
    pub fn detached() -> RunContext {
        RunContext { cancel: CancellationToken::new(), log: None, report: None }
    }
}

/// What a running job tells as it goes (defined beside the state it ends up in, so that
/// the resources below the runners, the browser's, can report too).
pub use crate::state::JobReport;

/// How a job ended.
#[derive(Debug)]
pub struct RunOutcome {
    pub result: Result<Value, JobError>,
    /// Data a failed job still reports (a partial `broadcast_dm`'s `sentRecipients`, which
    /// the hub writes to its dedupe ledger).
    pub error_data: Option<Value>,
    /// A full run report for the hub's `POST /edge/notify` (bundle runs): the executor
    /// journals it with the result before either leaves, and reports it until the hub
    /// acknowledges it.
    pub record: Option<NotifyRequest>,
}

impl RunOutcome {
    pub fn of(result: Result<Value, JobError>) -> RunOutcome {
        RunOutcome { result, error_data: None, record: None }
    }
}

/// How a runner reacts to its job's cancellation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCancel {
    /// Dropping the runner's future stops everything it started; the executor does that.
    Drop,
    /// The runner watches [`RunContext::cancel`] and ends its own work (a process tree, via
    /// the interrupt/terminate/kill ladder) before it returns; the executor waits for it.
    Cooperate,
}

/// One job type's implementation.
pub trait Runner: Send + Sync {
    fn on_cancel(&self) -> OnCancel {
        OnCancel::Drop
    }

    fn run<'a>(&'a self, job: &'a JobSpec, context: RunContext) -> BoxFuture<'a, RunOutcome>;
}

/// The runners of one agent, by job type.
#[derive(Clone, Default)]
pub struct Runners {
    by_type: BTreeMap<String, Arc<dyn Runner>>,
    /// The person's grants, asked before every job. The standard table always has them;
    /// a table built by hand (a test of one runner) runs what it registered.
    consent: Option<Consent>,
}

impl Runners {
    pub fn register(&mut self, job_type: &str, runner: impl Runner + 'static) {
        self.by_type.insert(job_type.to_owned(), Arc::new(runner));
    }

    /// The job types this agent has runners for.
    pub fn job_types(&self) -> impl Iterator<Item = &str> {
        self.by_type.keys().map(String::as_str)
    }

    /// What `hello` announces: of [`Runners::job_types`], those the person granted, and the
    /// sites they granted browser flows on ([`Consent::announced`]).
    pub fn announced(&self) -> Vec<String> {
        match &self.consent {
            Some(consent) => consent.announced(self.job_types()),
            None => self.job_types().map(str::to_owned).collect(),
        }
    }

    pub fn runs(&self, job_type: &str) -> bool {
        self.by_type.contains_key(job_type)
    }

    /// Runs one job until it ends or `context.cancel` fires; `cancelled` words the error of
    /// a job stopped by its cancellation. A job type no runner is registered for is
    /// `UNSUPPORTED_JOB`; one the person did not grant, `CAPABILITY_NOT_GRANTED` (asked at
    /// every job, so a revoke needs no restart; a browser job's site is asked again once
    /// its adapter is known).
    pub async fn run(&self, job: &JobSpec, context: RunContext, cancelled: impl Fn() -> JobError) -> RunOutcome {
        let Some(runner) = self.by_type.get(&job.job_type) else {
            return RunOutcome::of(Err(JobError::new(
                ErrorCode::UnsupportedJob,
                format!("this agent ({}) does not run jobs of type {:?}", crate::agent_version(), job.job_type),
            )));
        };
        if let Some(consent) = &self.consent {
            if let Err(refused) = consent.check_job_type(&job.job_type) {
                tracing::warn!(job_id = %job.job_id, job_type = %job.job_type, "job refused: capability not granted");
                return RunOutcome::of(Err(refused));
            }
        }
        let cancel = context.cancel.clone();
        match runner.on_cancel() {
            OnCancel::Cooperate => runner.run(job, context).await,
            OnCancel::Drop => tokio::select! {
                outcome = runner.run(job, context) => outcome,
                _ = cancel.cancelled() => RunOutcome::of(Err(cancelled())),
            },
        }
    }

    /// Runs one job to completion with nothing cancelling it, and returns its result.
    pub async fn run_detached(&self, job: &JobSpec) -> Result<Value, JobError> {
        let cancelled = || JobError::new(ErrorCode::Cancelled, "cancelled");
        self.run(job, RunContext::detached(), cancelled).await.result
    }
}

/// What the runners of one connection loop are handed. Each is optional where the agent
/// may lack it; a runner whose resource is missing is not registered, so its job type is
/// neither announced nor run.
pub struct Resources {
    /// The person's grants: the standard table runs and announces only what they allow.
    pub consent: Consent,
    /// Every connection `http_request` opens goes through this gate.
    pub egress: crate::egress::EgressGate,
    pub bundles: Option<crate::bundles::BundleContext>,
    /// The browser runtime and the data directory its adapters are remembered in.
    pub browser: Option<(edge_browser::BrowserRuntime, PathBuf)>,
}

/// The registration table.
pub fn standard(resources: &Resources) -> Runners {
    use edge_protocol::jobs;
    let mut runners = Runners { consent: Some(resources.consent.clone()), ..Runners::default() };
    runners.register(jobs::HTTP_REQUEST, http_request::HttpRequest::new(resources.egress.clone()));
    if let Some(bundles) = &resources.bundles {
        runners.register(jobs::BUNDLE, bundle::Bundle::new(bundles.clone()));
    }
    if let Some((browser, data_dir)) = &resources.browser {
        let flow = |job_type| {
            browser_flow::BrowserFlow::new(
                job_type,
                browser,
                data_dir,
                resources.bundles.as_ref(),
                Some(&resources.egress),
            )
        };
        runners.register(jobs::SEND_DM, flow(jobs::SEND_DM));
        runners.register(jobs::BROADCAST_DM, flow(jobs::BROADCAST_DM));
        runners.register(jobs::SCHEDULE_POST, flow(jobs::SCHEDULE_POST));
        runners.register(jobs::SCRAPE_SUBS, flow(jobs::SCRAPE_SUBS));
    }
    runners
}
