//! The executor: the jobs this agent holds, from assignment to result.
//!
//! It owns the slots (how many jobs run at once), the running jobs and their cancellation,
//! duplicate assignments, the cache of recent results (a job the hub assigns again after it
//! lost our answer is answered, not run twice), the journal of run reports and their
//! delivery, and the job records and events the person sees. It is one task that owns all
//! of that outright, reached through the cheap [`Executor`] handle; each job runs in a task
//! of its own and reports back to it. It must never touch the socket (results go to the
//! loop's outbox queue and the session sends them), never run a job type it has no runner
//! for, and never let a result leave before its report is journaled.

pub mod journal;

use crate::limits::{local_minute_now, JobsPerHour, QuietHoursGate};
use crate::runners::{JobReport, RunContext, RunOutcome, Runners};
use crate::screenshots::Screenshots;
use crate::state::{AgentEvent, JobRecord, JobRunStatus, JobSummary, StateHandle};
use edge_protocol::{encode, AgentFrame, ErrorCode, HubLimits, JobError, JobSpec, JobStatus, MAX_FRAME_BYTES};
use journal::Journal;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Set to make the agent exit right after journaling a result (crash tests only).
pub const TEST_EXIT_AFTER_JOURNAL: &str = "EDGE_AGENT_TEST_EXIT_AFTER_JOURNAL";
/// Set to make the agent exit once the hub acknowledged the run's `/edge/notify` but before
/// the `job_result` frame goes out (crash tests only).
pub const TEST_EXIT_AFTER_NOTIFY: &str = "EDGE_AGENT_TEST_EXIT_AFTER_NOTIFY";

/// How long a succeeded job's result is remembered, so the same job assigned again (the hub
/// lost our ack or result in a crash) is answered with it instead of being run a second time.
const FINISHED_MEMORY: Duration = Duration::from_secs(15 * 60);
const MAX_FINISHED_REMEMBERED: usize = 4096;

/// Something to run after every job (before its record is closed): a resource whose state a
/// job may change refreshes what the snapshot shows (the browser's sites needing a login).
pub type AfterJob = Arc<dyn Fn() + Send + Sync>;

/// What the executor of one connection loop is made of.
pub struct ExecutorConfig {
    pub state: StateHandle,
    pub runners: Runners,
    pub slots: u32,
    /// The loop's outbox queue: results, `job_log` and refusals leave through it.
    pub frames: mpsc::UnboundedSender<AgentFrame>,
    /// The person's pause: new assignments are refused while it is on.
    pub paused: watch::Receiver<bool>,
    pub journal: Journal,
    /// Where journaled run reports are delivered (`POST /edge/notify`), with whose token.
    pub reports_to: Option<crate::hub_client::TokenCache>,
    pub after_job: Option<AfterJob>,
    /// The person's jobs-per-hour cap (lowered by the hub's, never raised); `None` counts
    /// nothing (an executor built for a test of something else).
    pub jobs_per_hour: Option<JobsPerHour>,
    /// The person's quiet hours: new assignments inside them are refused as paused; `None`
    /// has none (an executor built for a test of something else).
    pub quiet_hours: Option<QuietHoursGate>,
    /// Where the last screenshot of each browser job is kept for the window; `None` keeps
    /// none (an executor built for a test of something else).
    pub screenshots: Option<Screenshots>,
    /// Stops the report delivery; jobs end through [`Executor::cancel_all`].
    pub cancel: CancellationToken,
}

/// The handle; cheap to clone. The executor task ends once every handle is dropped and its
/// last job reported.
#[derive(Clone)]
pub struct Executor {
    commands: mpsc::UnboundedSender<Command>,
    busy: watch::Receiver<usize>,
}

enum Command {
    Assign {
        job: JobSpec,
        refuse_when_paused: bool,
    },
    Cancel {
        id: String,
        reason: String,
    },
    CancelAll {
        reason: String,
    },
    HubLimits(HubLimits),
    Finished(Box<Finished>),
    /// The ids of the jobs running now, after every command sent before this one.
    Running(tokio::sync::oneshot::Sender<Vec<String>>),
}

struct Finished {
    job: JobSpec,
    frame: AgentFrame,
    outcome: Result<(), JobError>,
}

impl Executor {
    /// Starts the executor task: first the results of runs journaled before a crash go out
    /// again, then reports are delivered in the background.
    pub fn spawn(config: ExecutorConfig) -> Executor {
        for entry in config.journal.entries() {
            tracing::info!(run_id = %entry.run_id, job_id = %entry.job_id, "replaying a journaled run result");
            let _ = config.frames.send(entry.frame);
        }
        if let Some(tokens) = config.reports_to.clone() {
            tokio::spawn(journal::report_loop(config.journal.clone(), tokens, config.cancel.child_token()));
        }
        let (commands, receiver) = mpsc::unbounded_channel();
        let (busy_tx, busy) = watch::channel(0);
        let task = Task {
            slots: Arc::new(Semaphore::new(config.slots.max(1) as usize)),
            runners: Arc::new(config.runners),
            state: config.state,
            frames: config.frames,
            paused: config.paused,
            journal: config.journal,
            after_job: config.after_job,
            jobs_per_hour: config.jobs_per_hour,
            quiet_hours: config.quiet_hours,
            screenshots: config.screenshots,
            running: HashMap::new(),
            finished: FinishedJobs::default(),
            busy: busy_tx,
            commands: commands.downgrade(),
        };
        tokio::spawn(task.run(receiver));
        Executor { commands, busy }
    }

    /// A job the hub assigned (and the session acknowledged).
    pub fn assign(&self, job: JobSpec) {
        let _ = self.commands.send(Command::Assign { job, refuse_when_paused: true });
    }

    /// Work this agent resumes by itself (a broadcast interrupted by a crash): run even when
    /// paused, since the person's pause is about new work.
    pub fn resume(&self, job: JobSpec) {
        let _ = self.commands.send(Command::Assign { job, refuse_when_paused: false });
    }

    pub fn cancel(&self, id: &str, reason: &str) {
        let _ = self.commands.send(Command::Cancel { id: id.to_owned(), reason: reason.to_owned() });
    }

    pub fn cancel_all(&self, reason: &str) {
        let _ = self.commands.send(Command::CancelAll { reason: reason.to_owned() });
    }

    /// What the hub asked of this agent's caps (`hello_ack`); it can only lower them.
    pub fn set_hub_limits(&self, limits: HubLimits) {
        let _ = self.commands.send(Command::HubLimits(limits));
    }

    /// The jobs this agent is running, including every job assigned or resumed before the
    /// call (commands are handled in order): what `hello` tells the hub it still holds.
    pub async fn running(&self) -> Vec<String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.commands.send(Command::Running(reply)).is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// Jobs accepted and not yet finished.
    pub fn busy(&self) -> usize {
        *self.busy.borrow()
    }

    /// Resolves once no job is running (at once when none is).
    pub async fn idle(&self) {
        let mut busy = self.busy.clone();
        let _ = busy.wait_for(|n| *n == 0).await;
    }
}

struct RunningJob {
    cancel: CancellationToken,
    /// The first reason given wins: it is what the job's CANCELLED error says.
    reason: Arc<OnceLock<String>>,
}

/// Recently finished jobs and their result frames, oldest first, bounded in age and count.
#[derive(Default)]
struct FinishedJobs {
    order: VecDeque<(Instant, String)>,
    frames: HashMap<String, AgentFrame>,
}

impl FinishedJobs {
    fn insert(&mut self, id: String, frame: AgentFrame) {
        let now = Instant::now();
        while self.order.len() >= MAX_FINISHED_REMEMBERED
            || self.order.front().is_some_and(|(at, _)| now.duration_since(*at) > FINISHED_MEMORY)
        {
            if let Some((_, old)) = self.order.pop_front() {
                self.frames.remove(&old);
            }
        }
        if self.frames.insert(id.clone(), frame).is_none() {
            self.order.push_back((now, id));
        }
    }
}

/// The executor task's state.
struct Task {
    slots: Arc<Semaphore>,
    runners: Arc<Runners>,
    state: StateHandle,
    frames: mpsc::UnboundedSender<AgentFrame>,
    paused: watch::Receiver<bool>,
    journal: Journal,
    after_job: Option<AfterJob>,
    jobs_per_hour: Option<JobsPerHour>,
    quiet_hours: Option<QuietHoursGate>,
    screenshots: Option<Screenshots>,
    running: HashMap<String, RunningJob>,
    finished: FinishedJobs,
    busy: watch::Sender<usize>,
    /// Weak, so that jobs can report back without keeping the task alive forever.
    commands: mpsc::WeakUnboundedSender<Command>,
}

impl Task {
    async fn run(mut self, mut receiver: mpsc::UnboundedReceiver<Command>) {
        while let Some(command) = receiver.recv().await {
            match command {
                Command::Assign { job, refuse_when_paused } => self.assign(job, refuse_when_paused),
                Command::Cancel { id, reason } => {
                    if !self.cancel(&id, &reason) {
                        tracing::info!(job_id = %id, "job_cancel for a job that is not running");
                    }
                }
                Command::CancelAll { reason } => {
                    let ids: Vec<String> = self.running.keys().cloned().collect();
                    for id in ids {
                        self.cancel(&id, &reason);
                    }
                }
                Command::HubLimits(limits) => {
                    if let Some(jobs) = &mut self.jobs_per_hour {
                        jobs.set_hub(limits.jobs_per_hour);
                    }
                }
                Command::Finished(finished) => self.finished(*finished),
                Command::Running(reply) => {
                    let mut ids: Vec<String> = self.running.keys().cloned().collect();
                    ids.sort();
                    let _ = reply.send(ids);
                }
            }
        }
    }

    fn cancel(&self, id: &str, reason: &str) -> bool {
        let Some(job) = self.running.get(id) else { return false };
        let _ = job.reason.set(reason.to_owned());
        job.cancel.cancel();
        true
    }

    /// The jobs running now, in one state change with the count of today's jobs when a
    /// new one started (`new_job_on`: its UTC day).
    fn set_busy(&self, new_job_on: Option<String>) {
        let busy = self.running.len();
        self.busy.send_replace(busy);
        self.state.update(|s| {
            s.busy = busy as u32;
            if let Some(day) = &new_job_on {
                s.usage.count_job_start(day);
            }
        });
    }

    fn assign(&mut self, job: JobSpec, refuse_when_paused: bool) {
        if self.running.contains_key(&job.job_id) {
            tracing::info!(job_id = %job.job_id, "job already running; duplicate assignment ignored");
            return;
        }
        if let Some(frame) = self.finished.frames.get(&job.job_id) {
            tracing::info!(job_id = %job.job_id, "job already finished here; its result is sent again instead of running it twice");
            let _ = self.frames.send(frame.clone());
            return;
        }
        if refuse_when_paused && *self.paused.borrow() {
            let error = JobError::new(ErrorCode::AgentPaused, "the agent is paused by its user");
            self.record_refused(&job, &error);
            let _ = self.frames.send(result_frame(&job.job_id, Err(error)));
            return;
        }
        // New work only, like the pause: a job this agent resumes by itself was counted when
        // it first started. Quiet hours first: a job refused by them does not use up the cap.
        if refuse_when_paused {
            if let Some(Err(error)) = self.quiet_hours.as_ref().map(|quiet| quiet.admit(local_minute_now())) {
                tracing::info!(job_id = %job.job_id, "job refused: quiet hours");
                self.record_refused(&job, &error);
                let _ = self.frames.send(result_frame(&job.job_id, Err(error)));
                return;
            }
            if let Some(Err(error)) = self.jobs_per_hour.as_mut().map(|jobs| jobs.admit(std::time::Instant::now())) {
                tracing::warn!(job_id = %job.job_id, "job refused: the jobs-per-hour cap is reached");
                self.record_refused(&job, &error);
                let _ = self.frames.send(result_frame(&job.job_id, Err(error)));
                return;
            }
        }
        let cancel = CancellationToken::new();
        let reason = Arc::new(OnceLock::new());
        self.running.insert(job.job_id.clone(), RunningJob { cancel: cancel.clone(), reason: Arc::clone(&reason) });
        // New work counts as today's; a resumed job was counted when it first started.
        self.set_busy(refuse_when_paused.then(crate::state::utc_day_now));
        let Some(report) = self.commands.upgrade() else { return };
        let job_task = JobTask {
            job,
            cancel,
            reason,
            slots: Arc::clone(&self.slots),
            runners: Arc::clone(&self.runners),
            state: self.state.clone(),
            frames: self.frames.clone(),
            journal: self.journal.clone(),
            screenshots: self.screenshots.clone(),
            report,
        };
        tokio::spawn(job_task.run());
    }

    fn record_refused(&self, job: &JobSpec, error: &JobError) {
        let now = crate::now_rfc3339();
        let message = error.message.clone().unwrap_or_default();
        self.state.push_job(JobRecord {
            id: job.job_id.clone(),
            job_type: job.job_type.clone(),
            status: JobRunStatus::Failed,
            started_at: now.clone(),
            finished_at: Some(now),
            error_code: Some(error.code.to_string()),
            message: Some(message.clone()),
            progress: None,
            summary: JobSummary::of(&job.job_type, &job.payload),
            screenshot: false,
        });
        self.state.emit(AgentEvent::JobFailed {
            id: job.job_id.clone(),
            job_type: job.job_type.clone(),
            code: error.code.to_string(),
            message,
        });
    }

    fn finished(&mut self, Finished { job, frame, outcome }: Finished) {
        // Only successes: a failed job may be retried on purpose, and must run again.
        if outcome.is_ok() {
            self.finished.insert(job.job_id.clone(), frame.clone());
        }
        self.running.remove(&job.job_id);
        if let Some(after_job) = &self.after_job {
            after_job();
        }
        let busy = self.running.len();
        self.busy.send_replace(busy);
        let finished_at = crate::now_rfc3339();
        self.state.update(|s| {
            s.busy = busy as u32;
            if let Some(record) = s.recent_jobs.iter_mut().find(|r| r.id == job.job_id) {
                record.finished_at = Some(finished_at);
                match &outcome {
                    Ok(()) => record.status = JobRunStatus::Succeeded,
                    Err(error) => {
                        record.status = JobRunStatus::Failed;
                        record.error_code = Some(error.code.to_string());
                        record.message = error.message.clone();
                    }
                }
            }
        });
        match &outcome {
            Ok(()) => {
                tracing::info!(job_id = %job.job_id, "job succeeded");
                self.state.emit(AgentEvent::JobFinished { id: job.job_id.clone(), job_type: job.job_type.clone() });
            }
            Err(error) => {
                tracing::info!(job_id = %job.job_id, code = %error.code, "job failed");
                self.state.emit(AgentEvent::JobFailed {
                    id: job.job_id.clone(),
                    job_type: job.job_type.clone(),
                    code: error.code.to_string(),
                    message: error.message.clone().unwrap_or_default(),
                });
            }
        }
        // The receiver lives as long as the loop; after it ends nobody can deliver.
        let _ = self.frames.send(frame);
    }
}

/// One job, from waiting for a slot to its journaled result.
struct JobTask {
    job: JobSpec,
    cancel: CancellationToken,
    reason: Arc<OnceLock<String>>,
    slots: Arc<Semaphore>,
    runners: Arc<Runners>,
    state: StateHandle,
    frames: mpsc::UnboundedSender<AgentFrame>,
    journal: Journal,
    screenshots: Option<Screenshots>,
    report: mpsc::UnboundedSender<Command>,
}

impl JobTask {
    async fn run(self) {
        let job = &self.job;
        let reason = Arc::clone(&self.reason);
        let cancelled =
            move || JobError::new(ErrorCode::Cancelled, reason.get().cloned().unwrap_or_else(|| "cancelled".into()));
        let permit = tokio::select! {
            permit = Arc::clone(&self.slots).acquire_owned() => permit.ok(),
            _ = self.cancel.cancelled() => None,
        };
        self.state.push_job(JobRecord {
            id: job.job_id.clone(),
            job_type: job.job_type.clone(),
            status: JobRunStatus::Running,
            started_at: crate::now_rfc3339(),
            finished_at: None,
            error_code: None,
            message: None,
            progress: None,
            summary: JobSummary::of(&job.job_type, &job.payload),
            screenshot: false,
        });
        self.state.emit(AgentEvent::JobStarted { id: job.job_id.clone(), job_type: job.job_type.clone() });
        let outcome = match permit {
            None => RunOutcome::of(Err(cancelled())),
            Some(_permit) => {
                let report: Arc<dyn JobReport> = Arc::new(Reporter {
                    id: job.job_id.clone(),
                    state: self.state.clone(),
                    frames: self.frames.clone(),
                    screenshots: self.screenshots.clone(),
                });
                let context =
                    RunContext { cancel: self.cancel.clone(), log: Some(self.log_sink()), report: Some(report) };
                self.runners.run(job, context, &cancelled).await
            }
        };
        let RunOutcome { result, error_data, record } = outcome;
        let mut frame = result_frame(&job.job_id, result.clone());
        // A failed job may still report data (a partial broadcast's sentRecipients).
        if let (AgentFrame::JobResult { data: slot @ None, .. }, Some(data)) = (&mut frame, error_data) {
            *slot = Some(data);
        }
        let mut outcome = result.map(|_| ());
        let size = encode(&frame).len();
        if size > MAX_FRAME_BYTES {
            let error = JobError::new(
                crate::runners::http_request::response_too_large_code(),
                format!("the result is {size} bytes, over the {MAX_FRAME_BYTES}-byte frame limit"),
            );
            frame = result_frame(&job.job_id, Err(error.clone()));
            outcome = Err(error);
        }
        if let Some(notify) = record {
            self.journal_run(journal::Entry {
                run_id: notify.run_id.clone(),
                job_id: job.job_id.clone(),
                frame: frame.clone(),
                notify,
            })
            .await;
        }
        let _ = self.report.send(Command::Finished(Box::new(Finished { job: self.job.clone(), frame, outcome })));
    }

    /// `job_log` frames of this job, in the order the runner produced them.
    fn log_sink(&self) -> crate::runtime::ChunkSink {
        let frames = self.frames.clone();
        let id = self.job.job_id.clone();
        Arc::new(move |stream, seq, data| {
            let _ = frames.send(AgentFrame::JobLog { id: id.clone(), stream, seq, data });
        })
    }

    /// Durably records a run's report before its result goes anywhere.
    async fn journal_run(&self, entry: journal::Entry) {
        let run_id = entry.run_id.clone();
        let journal = self.journal.clone();
        let written = tokio::task::spawn_blocking(move || journal.write(&entry)).await;
        match written {
            Ok(Ok(())) => {}
            // Not journaled means not durable: still report over the socket, and say so.
            Ok(Err(e)) => tracing::error!(run_id, error = %e, "cannot journal the run result"),
            Err(e) => tracing::error!(run_id, error = %e, "the journal task failed"),
        }
        if std::env::var_os(TEST_EXIT_AFTER_JOURNAL).is_some() {
            tracing::warn!(run_id, "test hook: exiting right after journaling");
            crash(86);
        }
        if std::env::var_os(TEST_EXIT_AFTER_NOTIFY).is_some() {
            // The reporter deletes the entry once /edge/notify answered 2xx; the job_result
            // frame has not left yet.
            let entry = self.journal.path(&run_id);
            let deadline = Instant::now() + Duration::from_secs(60);
            while entry.exists() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tracing::warn!(run_id, "test hook: exiting after /edge/notify, before the job_result frame");
            crash(87);
        }
    }
}

/// How a running job goes, to the person (its record and events) and the hub
/// (`job_progress`, which also keeps the job's lease alive through a long broadcast).
struct Reporter {
    id: String,
    state: StateHandle,
    frames: mpsc::UnboundedSender<AgentFrame>,
    screenshots: Option<Screenshots>,
}

impl JobReport for Reporter {
    fn site(&self, site: &str) {
        self.state.job_details(&self.id, |record| record.summary.site = Some(site.to_owned()));
    }

    fn progress(&self, done: u32, total: u32) {
        self.state.job_progress(&self.id, done, total);
        let pct = (u64::from(done) * 100).checked_div(u64::from(total)).map(|p| p.min(100) as u8);
        let _ = self.frames.send(AgentFrame::JobProgress {
            id: self.id.clone(),
            pct,
            msg: Some(format!("{done}/{total}")),
        });
    }

    fn screenshot(&self, path: &std::path::Path) {
        let Some(screenshots) = &self.screenshots else { return };
        match screenshots.keep(&self.id, path) {
            Ok(()) => self.state.job_details(&self.id, |record| record.screenshot = true),
            Err(e) => tracing::warn!(job_id = %self.id, error = %e, "cannot keep the job's screenshot"),
        }
    }
}

pub(crate) fn result_frame(id: &str, outcome: Result<Value, JobError>) -> AgentFrame {
    match outcome {
        Ok(data) => AgentFrame::JobResult { id: id.to_owned(), status: JobStatus::Ok, data: Some(data), err: None },
        Err(err) => AgentFrame::JobResult { id: id.to_owned(), status: JobStatus::Error, data: None, err: Some(err) },
    }
}

/// Ends the process at once, like a crash: no destructors, no flushing, no frames.
fn crash(code: i32) -> ! {
    #[cfg(unix)]
    // SAFETY: _exit ends the process immediately; nothing else runs afterwards.
    unsafe {
        libc::_exit(code)
    }
    #[cfg(not(unix))]
    {
        let _ = code;
        std::process::abort()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runners::{OnCancel, Runner};
    use futures_util::future::BoxFuture;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts its runs; a payload `{"wait": true}` runs until cancelled, `{"fail": true}`
    /// fails, anything else succeeds at once with the run's number.
    #[derive(Clone, Default)]
    struct Counting {
        runs: Arc<AtomicUsize>,
        at_once: Arc<AtomicUsize>,
        most_at_once: Arc<AtomicUsize>,
    }

    impl Runner for Counting {
        fn on_cancel(&self) -> OnCancel {
            OnCancel::Cooperate
        }

        fn run<'a>(&'a self, job: &'a JobSpec, context: RunContext) -> BoxFuture<'a, RunOutcome> {
            Box::pin(async move {
                let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
                let now = self.at_once.fetch_add(1, Ordering::SeqCst) + 1;
                self.most_at_once.fetch_max(now, Ordering::SeqCst);
                if let (Some(total), Some(report)) = (job.payload["progress"].as_u64(), &context.report) {
                    report.site("fandeck");
                    for done in 0..=total as u32 {
                        report.progress(done, total as u32);
                    }
                    if let Some(shot) = job.payload["screenshot"].as_str() {
                        report.screenshot(std::path::Path::new(shot));
                    }
                }
                let result = if job.payload["wait"] == true {
                    context.cancel.cancelled().await;
                    Err(JobError::new(ErrorCode::Cancelled, "stopped by its cancel"))
                } else if job.payload["fail"] == true {
                    Err(JobError::new(ErrorCode::Network, "failed on purpose"))
                } else {
                    tokio::task::yield_now().await;
                    Ok(serde_json::json!({ "run": n }))
                };
                self.at_once.fetch_sub(1, Ordering::SeqCst);
                RunOutcome::of(result)
            })
        }
    }

    struct Harness {
        executor: Executor,
        frames: mpsc::UnboundedReceiver<AgentFrame>,
        runner: Counting,
        paused: watch::Sender<bool>,
        state: StateHandle,
        dir: tempfile::TempDir,
    }

    fn harness(slots: u32) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let runner = Counting::default();
        let mut runners = Runners::default();
        runners.register("count", runner.clone());
        let (frames_tx, frames) = mpsc::unbounded_channel();
        let (paused, paused_rx) = watch::channel(false);
        let state = StateHandle::new(dir.path().to_path_buf());
        let executor = Executor::spawn(ExecutorConfig {
            state: state.clone(),
            runners,
            slots,
            frames: frames_tx,
            paused: paused_rx,
            journal: Journal::new(dir.path()),
            reports_to: None,
            after_job: None,
            jobs_per_hour: None,
            // No settings file: no quiet hours, until a test writes some.
            quiet_hours: Some(QuietHoursGate::new(dir.path())),
            screenshots: Some(Screenshots::new(dir.path())),
            cancel: CancellationToken::new(),
        });
        Harness { executor, frames, runner, paused, state, dir }
    }

    fn job(id: &str, payload: Value) -> JobSpec {
        JobSpec { job_id: id.into(), job_type: "count".into(), payload }
    }

    async fn next_result(frames: &mut mpsc::UnboundedReceiver<AgentFrame>) -> (String, Result<Value, JobError>) {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), frames.recv())
                .await
                .expect("a result within 10 s")
                .expect("the executor's queue is open");
            if let AgentFrame::JobResult { id, status, data, err } = frame {
                let result = match status {
                    JobStatus::Ok => Ok(data.unwrap_or_default()),
                    JobStatus::Error => Err(err.expect("an error result carries err")),
                };
                return (id, result);
            }
        }
    }

    #[tokio::test]
    async fn a_job_assigned_again_after_it_succeeded_is_answered_not_run_twice() {
        let mut h = harness(1);
        h.executor.assign(job("j1", serde_json::json!({})));
        let first = next_result(&mut h.frames).await;
        h.executor.assign(job("j1", serde_json::json!({})));
        let second = next_result(&mut h.frames).await;
        assert_eq!(first.0, "j1");
        assert_eq!(first.1.as_ref().unwrap(), second.1.as_ref().unwrap(), "the same answer");
        assert_eq!(h.runner.runs.load(Ordering::SeqCst), 1, "run once");
        // A failed job is not cached: it may be retried on purpose and must run again.
        h.executor.assign(job("j2", serde_json::json!({"fail": true})));
        assert!(next_result(&mut h.frames).await.1.is_err());
        h.executor.assign(job("j2", serde_json::json!({"fail": true})));
        assert!(next_result(&mut h.frames).await.1.is_err());
        assert_eq!(h.runner.runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_duplicate_of_a_running_job_is_ignored() {
        let mut h = harness(2);
        h.executor.assign(job("long", serde_json::json!({"wait": true})));
        h.executor.assign(job("long", serde_json::json!({"wait": true})));
        tokio::time::timeout(Duration::from_secs(10), async {
            while h.runner.runs.load(Ordering::SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert_eq!(h.executor.busy(), 1, "one job held, not two");
        h.executor.cancel("long", "cancelled by the hub");
        h.executor.cancel_all("the agent is shutting down");
        let (id, result) = next_result(&mut h.frames).await;
        assert_eq!(id, "long");
        assert_eq!(result.unwrap_err().code, ErrorCode::Cancelled);
        h.executor.idle().await;
        assert_eq!(h.runner.runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn cancel_reason_reaches_a_job_waiting_for_a_slot() {
        let mut h = harness(1);
        h.executor.assign(job("holder", serde_json::json!({"wait": true})));
        h.executor.assign(job("queued", serde_json::json!({})));
        h.executor.cancel("queued", "cancelled by the hub");
        let (id, result) = next_result(&mut h.frames).await;
        assert_eq!(id, "queued");
        let error = result.unwrap_err();
        assert_eq!(error.code, ErrorCode::Cancelled);
        assert_eq!(error.message.as_deref(), Some("cancelled by the hub"));
        assert_eq!(h.runner.runs.load(Ordering::SeqCst), 1, "the queued job never ran");
        h.executor.cancel_all("done");
        assert_eq!(next_result(&mut h.frames).await.0, "holder");
    }

    #[tokio::test]
    async fn slots_bound_how_many_jobs_run_at_once() {
        let mut h = harness(2);
        for n in 0..8 {
            h.executor.assign(job(&format!("j{n}"), serde_json::json!({})));
        }
        for _ in 0..8 {
            assert!(next_result(&mut h.frames).await.1.is_ok());
        }
        assert_eq!(h.runner.runs.load(Ordering::SeqCst), 8);
        assert!(h.runner.most_at_once.load(Ordering::SeqCst) <= 2);
        h.executor.idle().await;
        assert_eq!(h.executor.busy(), 0);
    }

    #[tokio::test]
    async fn while_paused_new_jobs_are_refused_but_resumed_work_runs() {
        let mut h = harness(1);
        h.paused.send_replace(true);
        h.executor.assign(job("new", serde_json::json!({})));
        let (id, result) = next_result(&mut h.frames).await;
        assert_eq!(id, "new");
        assert_eq!(result.unwrap_err().code, ErrorCode::AgentPaused);
        h.executor.resume(job("interrupted", serde_json::json!({})));
        let (id, result) = next_result(&mut h.frames).await;
        assert_eq!(id, "interrupted");
        assert!(result.is_ok());
        assert_eq!(h.runner.runs.load(Ordering::SeqCst), 1, "only the resumed job ran");
    }

    #[tokio::test]
    async fn in_quiet_hours_new_jobs_are_refused_as_paused_and_shown_but_resumed_work_runs() {
        let mut h = harness(1);
        h.executor.assign(job("before", serde_json::json!({})));
        assert!(next_result(&mut h.frames).await.1.is_ok());
        let today = crate::state::utc_day_now();
        assert_eq!(h.state.snapshot().usage.jobs_on(&today), 1, "a new job counts as today's");

        // Quiet all day but for the minute four minutes from now: far longer than this test.
        let now = local_minute_now();
        let at = |minutes: u16| {
            let m = (now + minutes) % (24 * 60);
            format!("{:02}:{:02}", m / 60, m % 60)
        };
        let mut settings = crate::local_settings::LocalSettings::load(h.dir.path()).unwrap();
        settings.quiet_hours = Some(crate::local_settings::QuietHours::new(&at(5), &at(4)).unwrap());
        settings.save(h.dir.path()).unwrap();

        h.executor.assign(job("quiet", serde_json::json!({})));
        let (id, result) = next_result(&mut h.frames).await;
        assert_eq!(id, "quiet");
        let refused = result.unwrap_err();
        assert_eq!(refused.code, ErrorCode::AgentPaused, "the hub offers it again later");
        assert!(refused.message.as_deref().unwrap_or_default().contains(&format!("quiet hours until {}", at(4))));
        let shown = h.state.snapshot();
        assert_eq!(shown.recent_jobs[0].id, "quiet");
        assert_eq!(shown.recent_jobs[0].status, JobRunStatus::Failed);
        assert_eq!(shown.usage.jobs_on(&today), 1, "a refused job is not counted");

        h.executor.resume(job("interrupted", serde_json::json!({})));
        let (id, result) = next_result(&mut h.frames).await;
        assert_eq!(id, "interrupted");
        assert!(result.is_ok(), "quiet hours stop new work only");
        assert_eq!(h.runner.runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn progress_site_and_screenshot_reach_the_record_the_events_and_the_hub() {
        let mut h = harness(1);
        let mut events = h.state.subscribe();
        let shot = h.dir.path().join("artifact.png");
        std::fs::write(&shot, b"\x89PNG\r\n\x1a\nimage").unwrap();
        h.executor.assign(job("b1", serde_json::json!({"progress": 2, "screenshot": shot})));
        let mut sent = Vec::new();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), h.frames.recv()).await.unwrap().unwrap();
            match frame {
                AgentFrame::JobProgress { id, pct, msg } => sent.push((id, pct, msg)),
                AgentFrame::JobResult { .. } => break,
                _ => {}
            }
        }
        assert_eq!(sent.last().unwrap(), &("b1".to_owned(), Some(100), Some("2/2".to_owned())));
        assert_eq!(sent[0].1, Some(0));
        let record = h.state.snapshot().recent_jobs[0].clone();
        assert_eq!(record.progress, Some(crate::state::JobProgress { done: 2, total: 2 }));
        assert_eq!(record.summary.site.as_deref(), Some("fandeck"));
        assert!(record.screenshot);
        assert!(Screenshots::new(h.dir.path()).get("b1").unwrap().unwrap().ends_with(b"image"));
        let mut progress_events = 0;
        while let Ok(event) = events.try_recv() {
            if let AgentEvent::JobProgress { id, job_type, .. } = event {
                assert_eq!((id.as_str(), job_type.as_str()), ("b1", "count"));
                progress_events += 1;
            }
        }
        assert_eq!(progress_events, 3);
    }

    #[tokio::test]
    async fn an_unknown_job_type_is_unsupported() {
        let mut h = harness(1);
        h.executor.assign(JobSpec { job_id: "x".into(), job_type: "screenshot".into(), payload: Value::Null });
        assert_eq!(next_result(&mut h.frames).await.1.unwrap_err().code, ErrorCode::UnsupportedJob);
    }
}
