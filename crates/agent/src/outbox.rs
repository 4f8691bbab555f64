//! The outbox: where frames for the hub that are not a direct answer to the hub go (job
//! results, `job_log`, `circuit_breaker`), to be sent by the current session or the next.
//!
//! It owns nothing but the queue's sending side. The session owns the receiving side and
//! decides when a frame can leave; this module must never send on a socket or drop a frame
//! while a session loop exists to take it.

use edge_protocol::AgentFrame;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// A handle that outlives connection loops: each loop plugs its queue in at start, and a
/// frame sent while no loop runs is dropped (there is no hub to tell).
#[derive(Clone, Default)]
pub struct Outbox {
    queue: Arc<Mutex<Option<mpsc::UnboundedSender<AgentFrame>>>>,
}

impl Outbox {
    /// A new queue for a connection loop; frames sent from now on go to `receiver`.
    pub fn connect(&self) -> (mpsc::UnboundedSender<AgentFrame>, mpsc::UnboundedReceiver<AgentFrame>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        if let Ok(mut queue) = self.queue.lock() {
            *queue = Some(sender.clone());
        }
        (sender, receiver)
    }

    pub fn send(&self, frame: AgentFrame) {
        let sender = self.queue.lock().ok().and_then(|q| q.clone());
        if let Some(sender) = sender {
            let _ = sender.send(frame);
        }
    }
}
