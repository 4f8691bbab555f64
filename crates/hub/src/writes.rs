//! Group commit for what agents report about their jobs (`job_ack`, `job_result`). With a
//! thousand agents acknowledging and finishing jobs at once, one statement and one
//! transaction per report makes the database round trip the whole cost of a job; here the
//! reports that queue up while one batch is written go to the store together, as one
//! statement (acks) or one transaction (results). A session still waits for its own answer
//! before it reads its next frame, so one agent's reports keep their order.
//!
//! A batch that fails as a whole is written again one report at a time, so each caller
//! gets its own answer (and its own error).

use crate::crypto::now_ms;
use crate::store::{FinishOutcome, FinishRequest, LeaseRef, Store, StoreError};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// Most reports written together; bounds one transaction's size and time.
const MAX_BATCH: usize = 512;

enum Report {
    Start { lease: LeaseRef, reply: oneshot::Sender<Result<bool, StoreError>> },
    Finish { request: FinishRequest, reply: oneshot::Sender<Result<FinishOutcome, StoreError>> },
}

/// Cloneable handle; the writer task ends when the last handle is dropped.
#[derive(Clone)]
pub struct JobWrites {
    reports: mpsc::UnboundedSender<Report>,
    /// Used directly if the writer task is gone (it only stops when every handle is).
    store: Arc<dyn Store>,
}

impl JobWrites {
    pub fn spawn(store: Arc<dyn Store>) -> JobWrites {
        let (reports, inbox) = mpsc::unbounded_channel();
        tokio::spawn(write_batches(store.clone(), inbox));
        JobWrites { reports, store }
    }

    /// [`Store::start_job`], written with whatever other acks are waiting.
    pub async fn start_job(&self, lease: LeaseRef) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        match self.reports.send(Report::Start { lease, reply }) {
            Ok(()) => answer.await.unwrap_or_else(|_| Err(writer_gone())),
            Err(mpsc::error::SendError(Report::Start { lease, .. })) => {
                self.store.start_job(&lease.job_id, &lease.agent_id, lease.lease_token, now_ms()).await
            }
            Err(_) => Err(writer_gone()),
        }
    }

    /// [`Store::finish_job`], written with whatever other results are waiting.
    pub async fn finish_job(&self, request: FinishRequest) -> Result<FinishOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        match self.reports.send(Report::Finish { request, reply }) {
            Ok(()) => answer.await.unwrap_or_else(|_| Err(writer_gone())),
            Err(mpsc::error::SendError(Report::Finish { request, .. })) => {
                self.store.finish_job(request, now_ms()).await
            }
            Err(_) => Err(writer_gone()),
        }
    }
}

fn writer_gone() -> StoreError {
    StoreError::Corrupt("the hub's report writer stopped while a report was waiting".to_owned())
}

async fn write_batches(store: Arc<dyn Store>, mut inbox: mpsc::UnboundedReceiver<Report>) {
    let mut reports = Vec::with_capacity(MAX_BATCH);
    while inbox.recv_many(&mut reports, MAX_BATCH).await > 0 {
        let mut starts = Vec::new();
        let mut finishes = Vec::new();
        for report in reports.drain(..) {
            match report {
                Report::Start { lease, reply } => starts.push((lease, reply)),
                Report::Finish { request, reply } => finishes.push((request, reply)),
            }
        }
        // Acks first: an agent's ack and result never share a batch (it waits for the ack's
        // answer), but another agent's may, and each applies to its own lease either way.
        if !starts.is_empty() {
            write_starts(&*store, starts).await;
        }
        if !finishes.is_empty() {
            write_finishes(&*store, finishes).await;
        }
    }
}

async fn write_starts(store: &dyn Store, starts: Vec<(LeaseRef, oneshot::Sender<Result<bool, StoreError>>)>) {
    let (leases, replies): (Vec<_>, Vec<_>) = starts.into_iter().unzip();
    match store.start_jobs(&leases, now_ms()).await {
        Ok(started) => {
            for (reply, started) in replies.into_iter().zip(started) {
                let _ = reply.send(Ok(started));
            }
        }
        Err(e) if leases.len() > 1 => {
            warn!(error = %e, count = leases.len(), "writing a batch of acks failed; writing them one by one");
            for (lease, reply) in leases.into_iter().zip(replies) {
                let _ = reply.send(store.start_job(&lease.job_id, &lease.agent_id, lease.lease_token, now_ms()).await);
            }
        }
        Err(e) => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(e));
            }
        }
    }
}

async fn write_finishes(
    store: &dyn Store,
    finishes: Vec<(FinishRequest, oneshot::Sender<Result<FinishOutcome, StoreError>>)>,
) {
    let (requests, replies): (Vec<_>, Vec<_>) = finishes.into_iter().unzip();
    let count = requests.len();
    match store.finish_jobs(&requests, now_ms()).await {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) if count > 1 => {
            warn!(error = %e, count, "writing a batch of results failed; writing them one by one");
            for (request, reply) in requests.into_iter().zip(replies) {
                let _ = reply.send(store.finish_job(request, now_ms()).await);
            }
        }
        Err(e) => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(e));
            }
        }
    }
}
