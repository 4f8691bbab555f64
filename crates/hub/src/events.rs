//! Owns the hub's internal notifications: "work may be available", "cancel this job on
//! its agent" and "this job is final", delivered to this process's dispatcher and sync
//! waiters and, through [`Store::publish`], to every other hub process on the same
//! database. It must never be the only path to correctness: a lost notification only
//! delays work until the next poll or sweep.

use crate::dispatch::Dispatcher;
use crate::store::{HubEvent, Store};
use std::sync::Arc;
use tokio::sync::broadcast;
use tracing::{debug, warn};

/// Sync waiters are few and short-lived; a lagging one falls back to polling.
const FINISHED_CAPACITY: usize = 1024;

#[derive(Clone)]
pub struct Events {
    store: Arc<dyn Store>,
    dispatcher: Dispatcher,
    finished: broadcast::Sender<String>,
}

impl Events {
    pub fn new(store: Arc<dyn Store>, dispatcher: Dispatcher) -> Events {
        let (finished, _) = broadcast::channel(FINISHED_CAPACITY);
        Events { store, dispatcher, finished }
    }

    /// A job was submitted, retried, released or redriven.
    pub async fn job_available(&self) {
        self.dispatcher.job_submitted();
        self.publish(HubEvent::JobAvailable).await;
    }

    /// Ask whichever process holds `agent_id`'s session to send it `job_cancel`.
    pub async fn cancel_requested(&self, job_id: &str, agent_id: &str) {
        self.dispatcher.cancel(job_id, agent_id);
        self.publish(HubEvent::CancelRequested { job_id: job_id.to_owned(), agent_id: agent_id.to_owned() }).await;
    }

    pub async fn job_finished(&self, job_id: &str) {
        let _ = self.finished.send(job_id.to_owned());
        self.publish(HubEvent::JobFinished { job_id: job_id.to_owned() }).await;
    }

    /// Ids of jobs that became final (here or, on PostgreSQL, in another process).
    pub fn subscribe_finished(&self) -> broadcast::Receiver<String> {
        self.finished.subscribe()
    }

    async fn publish(&self, event: HubEvent) {
        if self.store.exclusive() {
            return;
        }
        if let Err(e) = self.store.publish(&event).await {
            warn!(error = %e, "cannot notify other hub processes; they will notice on their next poll");
        }
    }

    /// Applies events published by other processes (and echoes of ours, which are harmless)
    /// until the store's stream ends.
    pub async fn forward_from_store(self) {
        let mut incoming = match self.store.subscribe().await {
            Ok(Some(incoming)) => incoming,
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "cannot listen for other hub processes; relying on polling");
                return;
            }
        };
        while let Some(event) = incoming.recv().await {
            debug!(?event, "event from the database");
            match event {
                HubEvent::JobAvailable => self.dispatcher.job_submitted(),
                HubEvent::CancelRequested { job_id, agent_id } => self.dispatcher.cancel(&job_id, &agent_id),
                HubEvent::JobFinished { job_id } => {
                    let _ = self.finished.send(job_id);
                }
            }
        }
    }
}
