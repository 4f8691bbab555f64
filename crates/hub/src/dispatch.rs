//! Owns the registry of live agent sessions and the decision of which job goes where.
//! One task runs [`run`] and is the only code that assigns jobs, so a job is never handed
//! out twice by this process; the store's compare-and-set guards against any other.
//! Sessions and handlers talk to it through [`Dispatcher`] messages. It must never block
//! on a socket: frames go to a session's outbox and the session writes them.

use crate::crypto::now_ms;
use crate::store::Store;
use edge_protocol::{HubFrame, JobSpec};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Upper bound on the slots an agent may claim, so a buggy `hello` cannot make the hub
/// flood one machine.
pub const MAX_SLOTS: u32 = 64;

/// A pass also runs on this period, to pick up anything a failed pass left behind.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// What the dispatcher asks a session to write.
#[derive(Debug)]
pub enum Outgoing {
    Frame(HubFrame),
    Close { code: u16, reason: String },
}

pub type Outbox = mpsc::UnboundedSender<Outgoing>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    pub fn next() -> SessionId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        SessionId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{}", self.0)
    }
}

#[derive(Debug)]
enum Command {
    Connect { agent_id: String, creator_id: String, session: SessionId, outbox: Outbox },
    Ready { agent_id: String, session: SessionId, slots: u32, paused: bool },
    Availability { agent_id: String, session: SessionId, slots: Option<u32>, paused: bool },
    Finished { agent_id: String, job_id: String },
    Disconnect { agent_id: String, session: SessionId },
    JobSubmitted,
    Online { reply: oneshot::Sender<HashSet<String>> },
}

/// Cheap, cloneable handle to the dispatcher task.
#[derive(Clone)]
pub struct Dispatcher {
    commands: mpsc::UnboundedSender<Command>,
}

impl Dispatcher {
    pub fn new() -> (Dispatcher, DispatcherInbox) {
        let (commands, inbox) = mpsc::unbounded_channel();
        (Dispatcher { commands }, DispatcherInbox(inbox))
    }

    fn send(&self, command: Command) {
        // Fails only after shutdown, when nothing is dispatched any more anyway.
        if self.commands.send(command).is_err() {
            debug!("dispatcher is stopped; command dropped");
        }
    }

    /// A new session for `agent_id`; an older session of the same agent is closed (4409).
    pub fn connect(&self, agent_id: &str, creator_id: &str, session: SessionId, outbox: Outbox) {
        self.send(Command::Connect {
            agent_id: agent_id.to_owned(),
            creator_id: creator_id.to_owned(),
            session,
            outbox,
        });
    }

    /// The session finished its handshake (`hello`, or a version-0 peer's first frame) and
    /// may now receive jobs.
    pub fn ready(&self, agent_id: &str, session: SessionId, slots: u32, paused: bool) {
        self.send(Command::Ready { agent_id: agent_id.to_owned(), session, slots, paused });
    }

    pub fn availability(&self, agent_id: &str, session: SessionId, slots: Option<u32>, paused: bool) {
        self.send(Command::Availability { agent_id: agent_id.to_owned(), session, slots, paused });
    }

    /// The agent no longer runs `job_id` (result stored, or job handed back): a slot is free.
    pub fn finished(&self, agent_id: &str, job_id: &str) {
        self.send(Command::Finished { agent_id: agent_id.to_owned(), job_id: job_id.to_owned() });
    }

    pub fn disconnect(&self, agent_id: &str, session: SessionId) {
        self.send(Command::Disconnect { agent_id: agent_id.to_owned(), session });
    }

    pub fn job_submitted(&self) {
        self.send(Command::JobSubmitted);
    }

    /// Ids of the agents with a live session.
    pub async fn online_agents(&self) -> HashSet<String> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Online { reply });
        answer.await.unwrap_or_default()
    }
}

pub struct DispatcherInbox(mpsc::UnboundedReceiver<Command>);

enum Phase {
    /// Connected but has not said `hello` (or anything) yet: no jobs.
    Handshake,
    Ready {
        slots: u32,
        paused: bool,
    },
}

struct Connection {
    session: SessionId,
    creator_id: String,
    outbox: Outbox,
    phase: Phase,
    /// Jobs handed to this session and not finished yet. Counted per session on purpose:
    /// acked jobs from an earlier session do not block a reconnected agent forever if it
    /// lost them (leases, issue 3, will reclaim those).
    in_flight: HashSet<String>,
}

impl Connection {
    fn free_slots(&self) -> usize {
        match self.phase {
            Phase::Ready { slots, paused: false } => (slots as usize).saturating_sub(self.in_flight.len()),
            _ => 0,
        }
    }
}

struct State {
    store: Arc<dyn Store>,
    connections: BTreeMap<String, Connection>,
}

/// The dispatcher task. Returns once `stop` is cancelled and queued commands are handled.
pub async fn run(store: Arc<dyn Store>, DispatcherInbox(mut inbox): DispatcherInbox, stop: CancellationToken) {
    let mut state = State { store, connections: BTreeMap::new() };
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            command = inbox.recv() => match command {
                Some(command) => {
                    if state.handle(command).await {
                        state.dispatch().await;
                    }
                }
                None => break,
            },
            _ = sweep.tick() => state.dispatch().await,
            _ = stop.cancelled() => {
                // Sessions have ended by now; their disconnects release their jobs.
                while let Ok(command) = inbox.try_recv() {
                    state.handle(command).await;
                }
                break;
            }
        }
    }
    debug!("dispatcher stopped");
}

impl State {
    /// Applies one command; true when a dispatch pass may now find work.
    async fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Connect { agent_id, creator_id, session, outbox } => {
                if let Some(old) = self.connections.remove(&agent_id) {
                    info!(agent_id, old_session = %old.session, new_session = %session, "agent connected again; closing its older session");
                    let _ = old.outbox.send(Outgoing::Close {
                        code: edge_protocol::api::close_code::REPLACED,
                        reason: "replaced by a newer connection of the same agent".to_owned(),
                    });
                    self.release_unacked(&agent_id).await;
                }
                if let Err(e) = self.store.mark_agent_connected(&agent_id, now_ms()).await {
                    error!(agent_id, error = %e, "cannot record agent as connected");
                }
                self.connections.insert(
                    agent_id,
                    Connection { session, creator_id, outbox, phase: Phase::Handshake, in_flight: HashSet::new() },
                );
                false
            }
            Command::Ready { agent_id, session, slots, paused } => match self.connections.get_mut(&agent_id) {
                Some(conn) if conn.session == session => {
                    conn.phase = Phase::Ready { slots: slots.min(MAX_SLOTS), paused };
                    true
                }
                _ => false,
            },
            Command::Availability { agent_id, session, slots, paused } => match self.connections.get_mut(&agent_id) {
                Some(conn) if conn.session == session => {
                    let current_slots = match conn.phase {
                        Phase::Ready { slots, .. } => slots,
                        Phase::Handshake => 1,
                    };
                    let slots = slots.unwrap_or(current_slots).min(MAX_SLOTS);
                    conn.phase = Phase::Ready { slots, paused };
                    !paused
                }
                _ => false,
            },
            Command::Finished { agent_id, job_id } => {
                if let Some(conn) = self.connections.get_mut(&agent_id) {
                    conn.in_flight.remove(&job_id);
                }
                true
            }
            Command::Disconnect { agent_id, session } => {
                let current = self.connections.get(&agent_id).is_some_and(|c| c.session == session);
                if !current {
                    // A replaced session ending: its jobs were released when it was replaced.
                    return false;
                }
                self.connections.remove(&agent_id);
                if let Err(e) = self.store.mark_agent_disconnected(&agent_id).await {
                    error!(agent_id, error = %e, "cannot record agent as disconnected");
                }
                self.release_unacked(&agent_id).await > 0
            }
            Command::JobSubmitted => true,
            Command::Online { reply } => {
                let _ = reply.send(self.connections.keys().cloned().collect());
                false
            }
        }
    }

    async fn release_unacked(&self, agent_id: &str) -> u64 {
        match self.store.release_unacked_jobs(Some(agent_id), now_ms()).await {
            Ok(0) => 0,
            Ok(count) => {
                info!(agent_id, count, "unacked jobs of a closed session are pending again");
                count
            }
            Err(e) => {
                error!(agent_id, error = %e, "cannot release the unacked jobs of a closed session");
                0
            }
        }
    }

    /// Hands pending jobs to sessions with free slots, one job per session per round so
    /// several agents of one creator share the work.
    async fn dispatch(&mut self) {
        loop {
            let mut assigned_any = false;
            let candidates: Vec<String> = self
                .connections
                .iter()
                .filter(|(_, conn)| conn.free_slots() > 0)
                .map(|(agent_id, _)| agent_id.clone())
                .collect();
            for agent_id in candidates {
                let Some(creator_id) = self.connections.get(&agent_id).map(|c| c.creator_id.clone()) else {
                    continue;
                };
                let job = match self.store.next_pending_job(&agent_id, &creator_id).await {
                    Ok(Some(job)) => job,
                    Ok(None) => continue,
                    Err(e) => {
                        error!(agent_id, error = %e, "cannot look up pending jobs; retrying later");
                        return;
                    }
                };
                match self.store.assign_job(&job.id, &agent_id, now_ms()).await {
                    Ok(true) => {}
                    Ok(false) => {
                        // Taken by another hub process between the read and the write: look again.
                        assigned_any = true;
                        continue;
                    }
                    Err(e) => {
                        error!(agent_id, job_id = job.id, error = %e, "cannot assign job; retrying later");
                        return;
                    }
                }
                assigned_any = true;
                let Some(conn) = self.connections.get_mut(&agent_id) else { continue };
                conn.in_flight.insert(job.id.clone());
                info!(agent_id, job_id = job.id, job_type = job.job_type, attempt = job.attempts + 1, "job assigned");
                let frame = HubFrame::JobAssign {
                    job: JobSpec { job_id: job.id.clone(), job_type: job.job_type, payload: job.payload },
                };
                if conn.outbox.send(Outgoing::Frame(frame)).is_err() {
                    // The session is ending; its disconnect releases the job again.
                    warn!(agent_id, job_id = job.id, "session closed while assigning; job will be released");
                }
            }
            if !assigned_any {
                return;
            }
        }
    }
}
