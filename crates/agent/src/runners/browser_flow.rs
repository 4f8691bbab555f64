//! The browser flows (`send_dm`, `broadcast_dm`, `schedule_post`, `scrape_subs`): one
//! runner per job type, each running its flow in the shared browser runtime through
//! `crate::browser`.

use super::{RunContext, RunOutcome, Runner};
use crate::bundles::BundleContext;
use edge_browser::BrowserRuntime;
use edge_protocol::JobSpec;
use futures_util::future::BoxFuture;
use std::path::{Path, PathBuf};

pub struct BrowserFlow {
    job_type: &'static str,
    runtime: BrowserRuntime,
    data_dir: PathBuf,
    /// Adapters may come from signed bundles.
    bundles: Option<BundleContext>,
    /// The gate the job browser's proxy judges with: a flow that failed after a refusal
    /// reports the refusal.
    egress: Option<crate::egress::EgressGate>,
}

impl BrowserFlow {
    pub fn new(
        job_type: &'static str,
        runtime: &BrowserRuntime,
        data_dir: &Path,
        bundles: Option<&BundleContext>,
        egress: Option<&crate::egress::EgressGate>,
    ) -> BrowserFlow {
        BrowserFlow {
            job_type,
            runtime: runtime.clone(),
            data_dir: data_dir.to_path_buf(),
            bundles: bundles.cloned(),
            egress: egress.cloned(),
        }
    }
}

impl Runner for BrowserFlow {
    /// Dropping a flow closes nothing the next job needs: the page context is per job and
    /// the warm browser stays.
    fn run<'a>(&'a self, job: &'a JobSpec, context: RunContext) -> BoxFuture<'a, RunOutcome> {
        debug_assert_eq!(job.job_type, self.job_type);
        Box::pin(async move {
            let (result, error_data) = crate::browser::run(
                &self.runtime,
                &self.data_dir,
                self.bundles.as_ref(),
                self.egress.as_ref(),
                job,
                context.report.as_deref(),
            )
            .await;
            RunOutcome { result, error_data, record: None }
        })
    }
}
