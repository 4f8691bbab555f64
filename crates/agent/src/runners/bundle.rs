//! The `bundle` runner: a signed bundle downloaded, verified and run by `crate::bundles`.
//! Its outcome carries the run's full report, which the executor journals and delivers to
//! the hub's `/edge/notify`.

use super::{OnCancel, RunContext, RunOutcome, Runner};
use crate::bundles::{self, BundleContext};
use edge_protocol::JobSpec;
use futures_util::future::BoxFuture;

pub struct Bundle {
    context: BundleContext,
}

impl Bundle {
    pub fn new(context: BundleContext) -> Bundle {
        Bundle { context }
    }
}

impl Runner for Bundle {
    /// A bundle's process tree is ended through the interrupt/terminate/kill ladder, and the
    /// report says so; dropping the future would skip both.
    fn on_cancel(&self) -> OnCancel {
        OnCancel::Cooperate
    }

    fn run<'a>(&'a self, job: &'a JobSpec, context: RunContext) -> BoxFuture<'a, RunOutcome> {
        Box::pin(async move {
            let run = bundles::run(&self.context, job, context.cancel, context.log).await;
            RunOutcome { result: run.result, error_data: None, record: Some(run.report) }
        })
    }
}
