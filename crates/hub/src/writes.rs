//! Group commit for the hot writes of the job cycle: submissions, agents' `job_ack`s and
//! `job_result`s, and the dispatcher's claims. With many submitters and a thousand agents at
//! once, one transaction per event makes the database round trip the whole cost of a job;
//! here the events that queue up while one group is written go to the store together, in
//! one transaction with one statement per kind (one per claim group). A caller still waits
//! for its own answer (a session before it reads its agent's next frame), so each caller's
//! events keep their order.
//!
//! A group that fails as a whole is written again kind by kind, and a kind that fails one
//! event at a time, so each caller gets its own answer (and its own error).

use crate::crypto::now_ms;
use crate::store::{
    ClaimGroup, FinishOutcome, FinishRequest, InsertOutcome, JobRecord, JobWriteBatch, LeaseRef, NewJob, Store,
    StoreError,
};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// Most events written together; bounds one transaction's size and time.
const MAX_GROUP: usize = 512;

type Reply<R> = oneshot::Sender<Result<R, StoreError>>;

enum Write {
    Insert(NewJob, Reply<InsertOutcome>),
    Start(LeaseRef, Reply<bool>),
    Finish(FinishRequest, Reply<FinishOutcome>),
    Claim(ClaimGroup, Reply<Vec<JobRecord>>),
}

/// Cloneable handle; the writer task ends when the last handle is dropped.
#[derive(Clone)]
pub struct JobWrites {
    writes: mpsc::UnboundedSender<Write>,
}

impl JobWrites {
    pub fn spawn(store: Arc<dyn Store>) -> JobWrites {
        let (writes, inbox) = mpsc::unbounded_channel();
        tokio::spawn(write_groups(store, inbox));
        JobWrites { writes }
    }

    /// [`Store::insert_job`], written with whatever other submissions are waiting.
    pub async fn insert_job(&self, job: NewJob) -> Result<InsertOutcome, StoreError> {
        self.ask(|reply| Write::Insert(job, reply)).await
    }

    /// [`Store::start_job`], written with whatever other acks are waiting.
    pub async fn start_job(&self, lease: LeaseRef) -> Result<bool, StoreError> {
        self.ask(|reply| Write::Start(lease, reply)).await
    }

    /// [`Store::finish_job`], written with whatever other results are waiting.
    pub async fn finish_job(&self, request: FinishRequest) -> Result<FinishOutcome, StoreError> {
        self.ask(|reply| Write::Finish(request, reply)).await
    }

    /// [`Store::claim_jobs`], in the same transaction as whatever else is waiting (after it,
    /// so the claim sees the slots that reports in the group freed).
    pub async fn claim_jobs(&self, group: ClaimGroup) -> Result<Vec<JobRecord>, StoreError> {
        self.ask(|reply| Write::Claim(group, reply)).await
    }

    async fn ask<R>(&self, write: impl FnOnce(Reply<R>) -> Write) -> Result<R, StoreError> {
        let (reply, answer) = oneshot::channel();
        // The writer task lives as long as any handle, so both fail only if it panicked.
        self.writes.send(write(reply)).map_err(|_| writer_gone())?;
        answer.await.unwrap_or_else(|_| Err(writer_gone()))
    }
}

fn writer_gone() -> StoreError {
    StoreError::WriterStopped("it stopped; see the log for its panic".to_owned())
}

async fn write_groups(store: Arc<dyn Store>, mut inbox: mpsc::UnboundedReceiver<Write>) {
    let mut writes = Vec::with_capacity(MAX_GROUP);
    while inbox.recv_many(&mut writes, MAX_GROUP).await > 0 {
        let mut batch = JobWriteBatch::default();
        let (mut inserted, mut started, mut finished, mut claimed) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for write in writes.drain(..) {
            match write {
                Write::Insert(job, reply) => {
                    batch.inserts.push(job);
                    inserted.push(reply);
                }
                Write::Start(lease, reply) => {
                    batch.starts.push(lease);
                    started.push(reply);
                }
                Write::Finish(request, reply) => {
                    batch.finishes.push(request);
                    finished.push(reply);
                }
                Write::Claim(group, reply) => {
                    batch.claims.push(group);
                    claimed.push(reply);
                }
            }
        }
        match store.write_jobs(&batch, now_ms()).await {
            Ok(answers) => {
                answer_all(inserted, answers.inserted);
                answer_all(started, answers.started);
                answer_all(finished, answers.finished);
                answer_all(claimed, answers.claimed);
            }
            Err(e) => {
                warn!(error = %e, count = batch.len(), "writing a group of job writes failed; writing each kind on its own");
                write_group(&*store, batch.inserts.into_iter().zip(inserted).collect()).await;
                write_group(&*store, batch.starts.into_iter().zip(started).collect()).await;
                write_group(&*store, batch.finishes.into_iter().zip(finished).collect()).await;
                for (group, reply) in batch.claims.into_iter().zip(claimed) {
                    let _ = reply.send(store.claim_jobs(&group, now_ms()).await);
                }
            }
        }
    }
}

fn answer_all<R>(replies: Vec<Reply<R>>, answers: Vec<R>) {
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(Ok(answer));
    }
}

/// One kind of event the writer groups: how a group is written, and how one is.
#[async_trait::async_trait]
trait GroupWrite: Sized + Send + Sync {
    type Answer: Send;
    const WHAT: &'static str;
    async fn together(store: &dyn Store, items: &[Self]) -> Result<Vec<Self::Answer>, StoreError>;
    async fn alone(store: &dyn Store, item: Self) -> Result<Self::Answer, StoreError>;
}

#[async_trait::async_trait]
impl GroupWrite for NewJob {
    type Answer = InsertOutcome;
    const WHAT: &'static str = "submissions";
    async fn together(store: &dyn Store, jobs: &[NewJob]) -> Result<Vec<InsertOutcome>, StoreError> {
        store.insert_jobs(jobs, now_ms()).await
    }
    async fn alone(store: &dyn Store, job: NewJob) -> Result<InsertOutcome, StoreError> {
        store.insert_job(job, now_ms()).await
    }
}

#[async_trait::async_trait]
impl GroupWrite for LeaseRef {
    type Answer = bool;
    const WHAT: &'static str = "acks";
    async fn together(store: &dyn Store, leases: &[LeaseRef]) -> Result<Vec<bool>, StoreError> {
        store.start_jobs(leases, now_ms()).await
    }
    async fn alone(store: &dyn Store, lease: LeaseRef) -> Result<bool, StoreError> {
        store.start_job(&lease.job_id, &lease.agent_id, lease.lease_token, now_ms()).await
    }
}

#[async_trait::async_trait]
impl GroupWrite for FinishRequest {
    type Answer = FinishOutcome;
    const WHAT: &'static str = "results";
    async fn together(store: &dyn Store, requests: &[FinishRequest]) -> Result<Vec<FinishOutcome>, StoreError> {
        store.finish_jobs(requests, now_ms()).await
    }
    async fn alone(store: &dyn Store, request: FinishRequest) -> Result<FinishOutcome, StoreError> {
        store.finish_job(request, now_ms()).await
    }
}

/// Writes a group together; if that fails, each alone, so every caller gets its own answer.
async fn write_group<T: GroupWrite>(store: &dyn Store, items: Vec<(T, Reply<T::Answer>)>) {
    if items.is_empty() {
        return;
    }
    let (items, replies): (Vec<T>, Vec<Reply<T::Answer>>) = items.into_iter().unzip();
    match T::together(store, &items).await {
        Ok(answers) => answer_all(replies, answers),
        Err(e) if items.len() > 1 => {
            warn!(error = %e, count = items.len(), "writing a group of {} failed; writing them one by one", T::WHAT);
            for (item, reply) in items.into_iter().zip(replies) {
                let _ = reply.send(T::alone(store, item).await);
            }
        }
        Err(e) => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(e));
            }
        }
    }
}
