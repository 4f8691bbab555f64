//! Group commit for the hot writes of the job cycle: submissions, agents' `job_ack`s and
//! `job_result`s, and the dispatcher's claims. With many submitters and a thousand agents at
//! once, one transaction per event makes the database round trip the whole cost of a job;
//! here the events that queue up while one group is written go to the store together, in
//! one transaction with one statement per kind (one per claim group). A caller still waits
//! for its own answer (a session before it reads its agent's next frame), so each caller's
//! events keep their order.
//!
//! The groups are gathered and written by one thread of their own, which answers each
//! caller itself. Why not a task: under load the runtime's workers are busy with a thousand
//! sessions, and a grouping task waits its turn among them while the database sits idle;
//! every hop between task and writer also costs each job two more wake-ups.
//!
//! A group that fails as a whole is written again kind by kind, and a kind that fails one
//! event at a time, so each caller gets its own answer (and its own error).

use crate::crypto::now_ms;
use crate::store::{
    ClaimGroup, FinishOutcome, FinishRequest, InsertOutcome, JobRecord, JobWriteAnswers, JobWriteBatch, LeaseRef,
    NewJob, Store, StoreError,
};
use std::sync::{mpsc, Arc};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing::{error, warn};

/// Most events written together; bounds one transaction's size and time.
const MAX_GROUP: usize = 512;

/// Writes one group in one transaction, blocking the writer thread until it is committed.
pub trait GroupWriter: Send {
    fn write(&mut self, batch: &JobWriteBatch, now: i64) -> Result<JobWriteAnswers, StoreError>;
}

/// For a store without a writer of its own: its [`Store::write_jobs`], waited for on the
/// writer thread.
struct ThroughStore {
    store: Arc<dyn Store>,
    runtime: Handle,
}

impl GroupWriter for ThroughStore {
    fn write(&mut self, batch: &JobWriteBatch, now: i64) -> Result<JobWriteAnswers, StoreError> {
        self.runtime.block_on(self.store.write_jobs(batch, now))
    }
}

type Reply<R> = oneshot::Sender<Result<R, StoreError>>;

enum Write {
    Insert(NewJob, Reply<InsertOutcome>),
    Start(LeaseRef, Reply<bool>),
    Finish(FinishRequest, Reply<FinishOutcome>),
    Claim(ClaimGroup, Reply<Vec<JobRecord>>),
}

/// Cloneable handle; the writer thread ends when the last handle is dropped.
#[derive(Clone)]
pub struct JobWrites {
    writes: mpsc::Sender<Write>,
}

impl JobWrites {
    /// Starts the writer thread. Call from within the runtime: the thread waits for the
    /// store's futures on it.
    pub fn spawn(store: Arc<dyn Store>) -> Result<JobWrites, StoreError> {
        let runtime = Handle::current();
        let writer = match store.group_writer() {
            Some(writer) => writer,
            None => Box::new(ThroughStore { store, runtime: runtime.clone() }),
        };
        let (writes, inbox) = mpsc::channel();
        std::thread::Builder::new()
            .name("hub-job-writes".to_owned())
            .spawn(move || {
                // Dropping a pooled connection hands it back through a task on the runtime.
                let _runtime = runtime.enter();
                write_groups(writer, inbox)
            })
            .map_err(|e| StoreError::WriterStopped(format!("cannot start the job writer thread: {e}")))?;
        Ok(JobWrites { writes })
    }

    /// [`Store::insert_job`], written with whatever other submissions are waiting.
    pub async fn insert_job(&self, job: NewJob) -> Result<InsertOutcome, StoreError> {
        self.ask(|reply| Write::Insert(job, reply)).await
    }

    /// [`JobWrites::insert_job`] for each job, queued together so they are usually written
    /// in one group. Answers in order, each its own.
    pub async fn insert_jobs(&self, jobs: Vec<NewJob>) -> Vec<Result<InsertOutcome, StoreError>> {
        let queued: Vec<_> = jobs.into_iter().map(|job| self.queue(|reply| Write::Insert(job, reply))).collect();
        let mut outcomes = Vec::with_capacity(queued.len());
        for answer in queued {
            outcomes.push(answered(answer).await);
        }
        outcomes
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
        answered(self.queue(write)).await
    }

    /// Hands `write` to the writer thread; the answer comes on the returned receiver.
    fn queue<R>(&self, write: impl FnOnce(Reply<R>) -> Write) -> Result<Answer<R>, StoreError> {
        let (reply, answer) = oneshot::channel();
        // The writer thread lives as long as any handle, so this and the answer fail only if
        // it panicked.
        self.writes.send(write(reply)).map_err(|_| writer_gone())?;
        Ok(answer)
    }
}

type Answer<R> = oneshot::Receiver<Result<R, StoreError>>;

async fn answered<R>(queued: Result<Answer<R>, StoreError>) -> Result<R, StoreError> {
    queued?.await.unwrap_or_else(|_| Err(writer_gone()))
}

fn writer_gone() -> StoreError {
    StoreError::WriterStopped("it stopped; see the log for its panic".to_owned())
}

/// The replies of one group, in the order of the batch's lists.
#[derive(Default)]
struct Replies {
    inserted: Vec<Reply<InsertOutcome>>,
    started: Vec<Reply<bool>>,
    finished: Vec<Reply<FinishOutcome>>,
    claimed: Vec<Reply<Vec<JobRecord>>>,
}

fn write_groups(mut writer: Box<dyn GroupWriter>, inbox: mpsc::Receiver<Write>) {
    // What arrives while a group is written waits in the channel and makes the next group.
    while let Ok(first) = inbox.recv() {
        let mut batch = JobWriteBatch::default();
        let mut replies = Replies::default();
        let mut next = Some(first);
        while let Some(write) = next.take() {
            match write {
                Write::Insert(job, reply) => {
                    batch.inserts.push(job);
                    replies.inserted.push(reply);
                }
                Write::Start(lease, reply) => {
                    batch.starts.push(lease);
                    replies.started.push(reply);
                }
                Write::Finish(request, reply) => {
                    batch.finishes.push(request);
                    replies.finished.push(reply);
                }
                Write::Claim(group, reply) => {
                    batch.claims.push(group);
                    replies.claimed.push(reply);
                }
            }
            if batch.len() < MAX_GROUP {
                next = inbox.try_recv().ok();
            }
        }
        write_group(&mut *writer, batch, replies);
    }
}

/// Writes a group together; if that fails, each kind on its own, and a kind that fails each
/// event alone, so every caller gets its own answer.
fn write_group(writer: &mut dyn GroupWriter, batch: JobWriteBatch, replies: Replies) {
    match writer.write(&batch, now_ms()) {
        Ok(answers) => {
            answer_all(replies.inserted, answers.inserted);
            answer_all(replies.started, answers.started);
            answer_all(replies.finished, answers.finished);
            answer_all(replies.claimed, answers.claimed);
            return;
        }
        Err(e) => {
            warn!(error = %e, count = batch.len(), "writing a group of job writes failed; writing each kind on its own");
        }
    }
    let JobWriteBatch { inserts, starts, finishes, claims } = batch;
    write_kind(
        writer,
        "submissions",
        inserts,
        replies.inserted,
        |inserts| JobWriteBatch { inserts, ..Default::default() },
        |a| a.inserted,
    );
    write_kind(
        writer,
        "acks",
        starts,
        replies.started,
        |starts| JobWriteBatch { starts, ..Default::default() },
        |a| a.started,
    );
    write_kind(
        writer,
        "results",
        finishes,
        replies.finished,
        |finishes| JobWriteBatch { finishes, ..Default::default() },
        |a| a.finished,
    );
    write_kind(
        writer,
        "claims",
        claims,
        replies.claimed,
        |claims| JobWriteBatch { claims, ..Default::default() },
        |a| a.claimed,
    );
}

/// Writes one kind's events together, and if that fails, each alone.
fn write_kind<T: Clone, R>(
    writer: &mut dyn GroupWriter,
    what: &str,
    items: Vec<T>,
    replies: Vec<Reply<R>>,
    batch_of: impl Fn(Vec<T>) -> JobWriteBatch,
    answers_of: impl Fn(JobWriteAnswers) -> Vec<R>,
) {
    if items.is_empty() {
        return;
    }
    let error = match writer.write(&batch_of(items.clone()), now_ms()) {
        Ok(answers) => return answer_all(replies, answers_of(answers)),
        Err(e) => e,
    };
    if items.len() == 1 {
        if let Some(reply) = replies.into_iter().next() {
            let _ = reply.send(Err(error));
        }
        return;
    }
    warn!(error = %error, count = items.len(), "writing a group of {what} failed; writing them one by one");
    for (item, reply) in items.into_iter().zip(replies) {
        let answer = writer.write(&batch_of(vec![item]), now_ms()).and_then(|answers| {
            answers_of(answers)
                .pop()
                .ok_or_else(|| StoreError::Corrupt(format!("the store gave no answer to one of the {what}")))
        });
        let _ = reply.send(answer);
    }
}

fn answer_all<R>(replies: Vec<Reply<R>>, answers: Vec<R>) {
    if replies.len() != answers.len() {
        error!(
            asked = replies.len(),
            answered = answers.len(),
            "the store answered a group with the wrong number of answers"
        );
    }
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(Ok(answer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{JobState, Transition};

    /// Refuses any batch holding an ack or a result for the job "bad" (a fault a real store
    /// shows only on a broken disk), and records what it was asked to write.
    struct RefusesBadJob {
        written: Vec<String>,
    }

    impl GroupWriter for RefusesBadJob {
        fn write(&mut self, batch: &JobWriteBatch, _now: i64) -> Result<JobWriteAnswers, StoreError> {
            let ids: Vec<&str> = batch
                .starts
                .iter()
                .map(|l| l.job_id.as_str())
                .chain(batch.finishes.iter().map(|f| f.job_id.as_str()))
                .chain(batch.claims.iter().map(|c| c.creator_id.as_str()))
                .collect();
            self.written.push(ids.join(","));
            if ids.contains(&"bad") {
                return Err(StoreError::Corrupt("bad job".to_owned()));
            }
            Ok(JobWriteAnswers {
                inserted: Vec::new(),
                started: batch.starts.iter().map(|_| true).collect(),
                finished: batch.finishes.iter().map(|_| FinishOutcome::Recorded(JobState::Succeeded)).collect(),
                claimed: batch.claims.iter().map(|_| Vec::new()).collect(),
            })
        }
    }

    fn lease(job_id: &str) -> LeaseRef {
        LeaseRef { job_id: job_id.to_owned(), agent_id: "agt".to_owned(), lease_token: 1 }
    }

    fn report(job_id: &str) -> FinishRequest {
        FinishRequest {
            job_id: job_id.to_owned(),
            agent_id: "agt".to_owned(),
            lease_token: 1,
            transition: Transition::Succeeded,
            result: None,
            error: None,
            sent_recipients: Vec::new(),
            uncertain_recipients: Vec::new(),
        }
    }

    #[test]
    fn a_failing_group_is_written_kind_by_kind_then_one_by_one_and_only_the_bad_event_fails() {
        let mut writer = RefusesBadJob { written: Vec::new() };
        let mut replies = Replies::default();
        let mut answers = Vec::new();
        for _ in 0..3 {
            let (reply, answer) = oneshot::channel();
            replies.started.push(reply);
            answers.push(answer);
        }
        let (reply, finished) = oneshot::channel();
        replies.finished.push(reply);
        let (reply, claimed) = oneshot::channel();
        replies.claimed.push(reply);
        let batch = JobWriteBatch {
            inserts: Vec::new(),
            starts: vec![lease("a"), lease("bad"), lease("b")],
            finishes: vec![report("c")],
            claims: vec![ClaimGroup {
                creator_id: "creator".to_owned(),
                labels: Vec::new(),
                job_types: None,
                excluded_job_types: Vec::new(),
                agents: vec![("agt".to_owned(), 1)],
            }],
        };

        write_group(&mut writer, batch, replies);

        assert_eq!(writer.written, ["a,bad,b,c,creator", "a,bad,b", "a", "bad", "b", "c", "creator"]);
        let started: Vec<Result<bool, String>> =
            answers.into_iter().map(|mut a| a.try_recv().unwrap().map_err(|e| e.to_string())).collect();
        assert_eq!(started[0], Ok(true));
        assert!(started[1].as_ref().is_err_and(|e| e.contains("bad job")), "{:?}", started[1]);
        assert_eq!(started[2], Ok(true));
        assert!(matches!(finished.blocking_recv().unwrap(), Ok(FinishOutcome::Recorded(JobState::Succeeded))));
        assert!(claimed.blocking_recv().unwrap().unwrap().is_empty());
    }

    #[test]
    fn one_failing_event_gets_its_own_error() {
        let mut writer = RefusesBadJob { written: Vec::new() };
        let mut replies = Replies::default();
        let (reply, answer) = oneshot::channel();
        replies.finished.push(reply);
        write_group(&mut writer, JobWriteBatch { finishes: vec![report("bad")], ..Default::default() }, replies);
        assert!(matches!(answer.blocking_recv().unwrap(), Err(StoreError::Corrupt(_))));
    }
}
