//! Owns this process's registry of live agent sessions and the decision of which job goes
//! where. One task runs [`run`] and is the only code in the process that leases jobs; the
//! store's atomic claim (SKIP LOCKED on PostgreSQL) keeps other processes from leasing the
//! same job. Sessions, handlers, the sweeper and cross-process events talk to it through
//! [`Dispatcher`] messages. It must never block on a socket: frames go to a session's
//! outbox and the session writes them.
//!
//! Routing: a job names an agent, or any agent of its creator, optionally narrowed to
//! agents announcing all of the job's labels, and only agents announcing the job's type as
//! a capability (agents announcing no capabilities, i.e. prototype peers, take any type).

use crate::crypto::now_ms;
use crate::store::{ClaimGroup, JobRecord, Store};
use crate::writes::JobWrites;
use edge_protocol::{HubFrame, JobSpec};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Upper bound on the slots an agent may claim, so a buggy `hello` cannot make the hub
/// flood one machine.
pub const MAX_SLOTS: u32 = 64;

/// Busy sessions' in-flight lists are checked against the store this often, so a slot held
/// by a job whose lease expired (and went elsewhere) is freed.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(5);

/// What the dispatcher asks a session to write. Payloads are boxed: every session's outbox
/// holds a block of 32 of these from the start, so their size is paid per idle session
/// (128 bytes unboxed: 4 KiB of each session's 20).
#[derive(Debug)]
pub enum Outgoing {
    Frame(Box<HubFrame>),
    /// A `job_assign` for the lease `job` records, already encoded (`text`); the session
    /// remembers the lease (its fencing token) so the agent's reports apply to this lease only.
    Assign {
        job: Box<JobRecord>,
        text: String,
    },
    Close {
        code: u16,
        reason: String,
    },
    /// The dispatcher applied a `hello` that came after the session had started as a
    /// version-0 peer ([`Handshake::after_version_0`]): every `Assign` queued before this
    /// was leased under the version-0 handshake and has been handed back to the queue, so
    /// the session drops them instead of writing them after its `hello_ack`.
    HandshakeApplied,
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

/// What a session learned from the agent's handshake.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub protocol: u32,
    pub slots: u32,
    pub paused: bool,
    pub labels: Vec<String>,
    /// Capabilities announced in `hello`; empty for a prototype peer.
    pub capabilities: Vec<String>,
    /// A `hello` from a session that was already taking jobs as a version-0 peer (it was
    /// silent past the grace, or its first frame was not `hello`). An agent ignores frames
    /// before its `hello_ack`, and those jobs were chosen without its capabilities and labels,
    /// so the ones it has not acknowledged go back to the queue.
    pub after_version_0: bool,
}

impl Handshake {
    /// A prototype peer's: no `hello`, one job at a time, no capabilities or labels.
    pub fn version_0() -> Handshake {
        Handshake {
            protocol: 0,
            slots: 1,
            paused: false,
            labels: Vec::new(),
            capabilities: Vec::new(),
            after_version_0: false,
        }
    }
}

#[derive(Debug)]
enum Command {
    Connect { agent_id: String, creator_id: String, session: SessionId, outbox: Outbox },
    Ready { agent_id: String, session: SessionId, handshake: Handshake },
    Availability { agent_id: String, session: SessionId, slots: Option<u32>, paused: bool },
    Finished { agent_id: String, job_id: String },
    Disconnect { agent_id: String, session: SessionId },
    JobSubmitted,
    Cancel { job_id: String, agent_id: String },
    Online { reply: oneshot::Sender<HashSet<String>> },
    CircuitOpen { agent_id: String, until_ms: i64 },
    Circuits { reply: oneshot::Sender<HashMap<String, i64>> },
    PickAgent { job_type: String, reply: oneshot::Sender<Option<PickedAgent>> },
}

/// An agent with a session in this process that can take a job of some type now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickedAgent {
    pub agent_id: String,
    pub creator_id: String,
}

/// Cool-down the hub assumes when an agent's `circuit_breaker` frame names none (prototype
/// agents): 15 minutes.
pub const DEFAULT_CIRCUIT_COOLDOWN: Duration = Duration::from_secs(15 * 60);

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
    pub fn ready(&self, agent_id: &str, session: SessionId, handshake: Handshake) {
        self.send(Command::Ready { agent_id: agent_id.to_owned(), session, handshake });
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

    /// Work may be visible: run a dispatch pass.
    pub fn job_submitted(&self) {
        self.send(Command::JobSubmitted);
    }

    /// Sends `job_cancel` for `job_id` if `agent_id` has a session in this process.
    pub fn cancel(&self, job_id: &str, agent_id: &str) {
        self.send(Command::Cancel { job_id: job_id.to_owned(), agent_id: agent_id.to_owned() });
    }

    /// The agent tripped its circuit breaker: no browser job types go to it until `until_ms`.
    pub fn circuit_open(&self, agent_id: &str, until_ms: i64) {
        self.send(Command::CircuitOpen { agent_id: agent_id.to_owned(), until_ms });
    }

    /// Agents whose circuit breaker is open, with the end of their cool-down (Unix ms).
    pub async fn open_circuits(&self) -> HashMap<String, i64> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Circuits { reply });
        answer.await.unwrap_or_default()
    }

    /// For a job that names no creator (the prototype's `POST /jobs`): an agent with a
    /// session here that takes `job_type` now (handshake done, not paused, type among its
    /// capabilities or it announced none, not withheld by an open breaker), the one with the
    /// most free slots, taking turns among equals. `None` when no session fits.
    pub async fn pick_agent(&self, job_type: &str) -> Option<PickedAgent> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::PickAgent { job_type: job_type.to_owned(), reply });
        answer.await.ok().flatten()
    }

    /// Ids of the agents with a live session in this process.
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

/// What a session can take: sessions with equal keys are claimed for together. Built once
/// per handshake, because a dispatch pass groups every free session and runs once per
/// submission under load.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ClaimKey {
    creator_id: String,
    /// Sorted, so the same labels in another order make the same key.
    labels: Vec<String>,
    /// `None`: a prototype peer that announced no capabilities and takes any type.
    job_types: Option<Vec<String>>,
    /// Withheld whatever `job_types` says (see [`ClaimGroup::excluded_job_types`]).
    excluded_job_types: Vec<String>,
}

impl ClaimKey {
    /// The key while the agent's circuit breaker is open: every type it takes except the
    /// browser job types, which are what the breaker is about (see [`circuit_withholds`]).
    /// A prototype peer, which takes any type, takes any type but those. `None` when the
    /// agent runs browser types only and so can take nothing until the cool-down ends.
    fn with_circuit_open(&self) -> Option<ClaimKey> {
        let withheld = circuit_withholds();
        match &self.job_types {
            Some(types) => {
                let job_types: Vec<String> =
                    types.iter().filter(|t| !withheld.contains(&t.as_str())).cloned().collect();
                (!job_types.is_empty()).then(|| ClaimKey { job_types: Some(job_types), ..self.clone() })
            }
            None => Some(ClaimKey {
                excluded_job_types: withheld.iter().map(|t| (*t).to_owned()).collect(),
                ..self.clone()
            }),
        }
    }

    fn group(&self, agents: Vec<(String, u32)>) -> ClaimGroup {
        ClaimGroup {
            creator_id: self.creator_id.clone(),
            labels: self.labels.clone(),
            job_types: self.job_types.clone(),
            excluded_job_types: self.excluded_job_types.clone(),
            agents,
        }
    }
}

/// The job types an open circuit breaker withholds, whatever its `reason`: the breaker is
/// the browser runtime's (three site rate limits in half an hour, `docs/flows.md`), so it
/// is about browser work only. Nothing else in an agent opens one, so every reason
/// (`RATE_LIMITED`, `QUOTA_EXCEEDED`, or one this hub does not know) is read that way,
/// rather than stopping work the agent never asked to stop.
pub fn circuit_withholds() -> &'static [&'static str] {
    &edge_protocol::jobs::BROWSER_JOB_TYPES
}

struct Connection {
    session: SessionId,
    outbox: Outbox,
    phase: Phase,
    protocol: u32,
    key: Arc<ClaimKey>,
    /// Jobs leased to this session and not finished yet, with their fencing tokens. Counted
    /// per session on purpose: running jobs of an earlier session do not block a reconnected
    /// agent (their leases expire if the agent lost them).
    in_flight: HashMap<String, i64>,
    /// A job was leased to this session while it was a version-0 peer: a later `hello` has
    /// leases to take back (most late hellos have none, and then cost no write).
    leased_as_version_0: bool,
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
    /// Claims go through the job writer, in one transaction with the submissions and
    /// reports written meanwhile.
    writes: JobWrites,
    connections: BTreeMap<String, Connection>,
    /// Open circuit breakers by agent (kept across reconnects), until when (Unix ms).
    circuits: HashMap<String, i64>,
    /// Dispatch passes so far; rotates which agent of a group is served first.
    passes: usize,
    /// Agents picked for jobs naming no creator so far; takes turns among equal agents.
    picks: usize,
    /// The last claims stopped because the sessions were full, not because the jobs ran
    /// out: the next freed slot can claim at once, without asking first whether any job
    /// is visible.
    jobs_may_be_left: bool,
}

/// The dispatcher task. Returns once `stop` is cancelled and queued commands are handled.
/// `poll_interval` is the safety net: retries coming due and notifications that never came.
pub async fn run(
    store: Arc<dyn Store>,
    writes: JobWrites,
    DispatcherInbox(mut inbox): DispatcherInbox,
    poll_interval: Duration,
    stop: CancellationToken,
) {
    let mut state = State {
        store,
        writes,
        connections: BTreeMap::new(),
        circuits: HashMap::new(),
        passes: 0,
        picks: 0,
        jobs_may_be_left: false,
    };
    let mut poll = tokio::time::interval(poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reconcile = tokio::time::interval(RECONCILE_INTERVAL);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            command = inbox.recv() => match command {
                Some(command) => {
                    let mut submitted = matches!(command, Command::JobSubmitted);
                    let mut wants_pass = state.handle(command).await;
                    // Drain what queued up meanwhile so a burst of submissions costs one pass.
                    while let Ok(command) = inbox.try_recv() {
                        submitted |= matches!(command, Command::JobSubmitted);
                        wants_pass |= state.handle(command).await;
                    }
                    if submitted {
                        // A job was just stored: no need to ask the store whether one is there.
                        state.claim_for_free_sessions().await;
                    } else if wants_pass {
                        state.dispatch().await;
                    }
                }
                None => break,
            },
            _ = poll.tick() => state.dispatch().await,
            _ = reconcile.tick() => {
                if state.reconcile().await {
                    state.dispatch().await;
                }
            }
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
                    self.release_unstarted(&agent_id).await;
                }
                if let Err(e) = self.store.mark_agent_connected(&agent_id, now_ms()).await {
                    error!(agent_id, error = %e, "cannot record agent as connected");
                }
                self.connections.insert(
                    agent_id,
                    Connection {
                        session,
                        outbox,
                        phase: Phase::Handshake,
                        protocol: 0,
                        key: Arc::new(ClaimKey {
                            creator_id,
                            labels: Vec::new(),
                            job_types: None,
                            excluded_job_types: Vec::new(),
                        }),
                        in_flight: HashMap::new(),
                        leased_as_version_0: false,
                    },
                );
                false
            }
            Command::Ready { agent_id, session, handshake } => {
                let Some(conn) = self.connections.get_mut(&agent_id).filter(|c| c.session == session) else {
                    return false;
                };
                let after_version_0 = handshake.after_version_0;
                conn.phase = Phase::Ready { slots: handshake.slots.min(MAX_SLOTS), paused: handshake.paused };
                conn.protocol = handshake.protocol;
                let mut labels = handshake.labels;
                labels.sort();
                conn.key = Arc::new(ClaimKey {
                    creator_id: conn.key.creator_id.clone(),
                    labels,
                    job_types: (!handshake.capabilities.is_empty()).then_some(handshake.capabilities),
                    excluded_job_types: Vec::new(),
                });
                // Cancels requested while the agent was away (or on another hub process).
                if conn.protocol >= 1 {
                    match self.store.cancel_requests_for(&agent_id).await {
                        Ok(ids) => {
                            if let Some(conn) = self.connections.get(&agent_id) {
                                for id in ids {
                                    let _ = conn.outbox.send(Outgoing::Frame(Box::new(HubFrame::JobCancel { id })));
                                }
                            }
                        }
                        Err(e) => error!(agent_id, error = %e, "cannot look up pending cancel requests"),
                    }
                }
                if after_version_0 {
                    self.take_back_version_0_leases(&agent_id).await;
                }
                true
            }
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
                self.release_unstarted(&agent_id).await > 0
            }
            Command::JobSubmitted => true,
            Command::Cancel { job_id, agent_id } => {
                if let Some(conn) = self.connections.get(&agent_id) {
                    if conn.protocol >= 1 {
                        info!(agent_id, job_id, "asking the agent to cancel the job");
                        let _ = conn.outbox.send(Outgoing::Frame(Box::new(HubFrame::JobCancel { id: job_id })));
                    } else {
                        // A prototype agent has no job_cancel: the job ends when it reports.
                        info!(agent_id, job_id, "version-0 agent cannot be asked to cancel; waiting for its result");
                    }
                }
                false
            }
            Command::Online { reply } => {
                let _ = reply.send(self.connections.keys().cloned().collect());
                false
            }
            Command::CircuitOpen { agent_id, until_ms } => {
                info!(
                    agent_id,
                    until_ms, "agent circuit breaker open: no browser jobs for it until the cool-down ends"
                );
                self.circuits.insert(agent_id, until_ms);
                false
            }
            Command::PickAgent { job_type, reply } => {
                let _ = reply.send(self.pick_agent(&job_type));
                false
            }
            Command::Circuits { reply } => {
                let now = now_ms();
                self.circuits.retain(|_, until| *until > now);
                let _ = reply.send(self.circuits.clone());
                false
            }
        }
    }

    /// A `hello` replaced a version-0 start ([`Handshake::after_version_0`]): the jobs leased
    /// so far and not acknowledged go back to the queue, their slots are freed, and the
    /// session learns (by [`Outgoing::HandshakeApplied`], after every `Assign` of those
    /// leases) that it must not write them. The dispatcher leases nothing in between, so no
    /// lease made under the new handshake can be caught by this.
    async fn take_back_version_0_leases(&mut self, agent_id: &str) {
        let Some(conn) = self.connections.get_mut(agent_id) else { return };
        if !std::mem::take(&mut conn.leased_as_version_0) {
            let _ = conn.outbox.send(Outgoing::HandshakeApplied);
            return;
        }
        let released = self.release_unstarted(agent_id).await;
        let held = if self.connections.get(agent_id).is_some_and(|c| !c.in_flight.is_empty()) {
            match self.store.held_jobs(agent_id).await {
                Ok(held) => Some(held.into_iter().collect::<HashSet<(String, i64)>>()),
                Err(e) => {
                    // The slots come back when the reconcile tick finds the leases gone.
                    error!(agent_id, error = %e, "cannot check held jobs after a late hello");
                    None
                }
            }
        } else {
            None
        };
        let Some(conn) = self.connections.get_mut(agent_id) else { return };
        if let Some(held) = held {
            conn.in_flight.retain(|job_id, token| held.contains(&(job_id.clone(), *token)));
        }
        info!(
            agent_id,
            released, "hello after a version-0 start; jobs leased before it and not acknowledged are pending again"
        );
        let _ = conn.outbox.send(Outgoing::HandshakeApplied);
    }

    /// See [`Dispatcher::pick_agent`].
    fn pick_agent(&mut self, job_type: &str) -> Option<PickedAgent> {
        let now = now_ms();
        let mut best: Vec<(&String, &Connection)> = Vec::new();
        let mut most_free = 0;
        for (agent_id, conn) in &self.connections {
            if !matches!(conn.phase, Phase::Ready { paused: false, .. }) {
                continue;
            }
            let circuit_open = self.circuits.get(agent_id).is_some_and(|until| *until > now);
            let key = if circuit_open { conn.key.with_circuit_open() } else { Some((*conn.key).clone()) };
            let takes_it = key.is_some_and(|key| {
                key.job_types.as_ref().is_none_or(|types| types.iter().any(|t| t == job_type))
                    && !key.excluded_job_types.iter().any(|t| t == job_type)
            });
            if !takes_it {
                continue;
            }
            let free = conn.free_slots();
            if best.is_empty() || free > most_free {
                best.clear();
                most_free = free;
            }
            if free == most_free {
                best.push((agent_id, conn));
            }
        }
        if best.is_empty() {
            return None;
        }
        self.picks = self.picks.wrapping_add(1);
        let (agent_id, conn) = best[self.picks % best.len()];
        Some(PickedAgent { agent_id: agent_id.clone(), creator_id: conn.key.creator_id.clone() })
    }

    /// Leased jobs the agent never acknowledged go back to pending at once: it may never
    /// have received them. Running jobs keep their lease (the agent may reconnect and report).
    async fn release_unstarted(&self, agent_id: &str) -> u64 {
        match self.store.release_unstarted_jobs(Some(agent_id), now_ms()).await {
            Ok(0) => 0,
            Ok(count) => {
                info!(agent_id, count, "unacknowledged jobs of a closed session are pending again");
                count
            }
            Err(e) => {
                error!(agent_id, error = %e, "cannot release the unacknowledged jobs of a closed session");
                0
            }
        }
    }

    /// Frees slots of busy sessions whose jobs are no longer theirs (lease expired and the
    /// job moved on). True when a slot was freed.
    async fn reconcile(&mut self) -> bool {
        let busy: Vec<String> = self
            .connections
            .iter()
            .filter(|(_, c)| !c.in_flight.is_empty() && c.free_slots() == 0)
            .map(|(id, _)| id.clone())
            .collect();
        let mut freed = false;
        for agent_id in busy {
            let held: HashSet<(String, i64)> = match self.store.held_jobs(&agent_id).await {
                Ok(held) => held.into_iter().collect(),
                Err(e) => {
                    error!(agent_id, error = %e, "cannot check held jobs");
                    return freed;
                }
            };
            if let Some(conn) = self.connections.get_mut(&agent_id) {
                let before = conn.in_flight.len();
                conn.in_flight.retain(|job_id, token| held.contains(&(job_id.clone(), *token)));
                if conn.in_flight.len() < before {
                    info!(agent_id, freed = before - conn.in_flight.len(), "slots of jobs no longer held are free");
                    freed = true;
                }
            }
        }
        freed
    }

    /// Free sessions grouped by what they can take (creator, labels, job types after any
    /// open circuit breaker), each group's agents rotated by the pass count so no agent is
    /// always served first.
    fn claim_groups(&mut self) -> Vec<(Arc<ClaimKey>, ClaimGroup)> {
        let now = now_ms();
        let mut groups: BTreeMap<Arc<ClaimKey>, Vec<(String, u32)>> = BTreeMap::new();
        for (agent_id, conn) in &self.connections {
            let free = conn.free_slots();
            if free == 0 {
                continue;
            }
            let key = if self.circuits.get(agent_id).is_some_and(|until| *until > now) {
                match conn.key.with_circuit_open() {
                    Some(key) => Arc::new(key),
                    None => continue,
                }
            } else {
                conn.key.clone()
            };
            groups.entry(key).or_default().push((agent_id.clone(), free as u32));
        }
        self.passes = self.passes.wrapping_add(1);
        groups
            .into_iter()
            .map(|(key, mut agents)| {
                let turn = self.passes % agents.len();
                agents.rotate_left(turn);
                let group = key.group(agents);
                (key, group)
            })
            .collect()
    }

    /// A dispatch pass on a tick or a freed slot: asks the store first whether any job is
    /// visible, which costs less than a claim per group of sessions when none is, unless
    /// the last claims left jobs behind.
    async fn dispatch(&mut self) {
        if !self.connections.values().any(|c| c.free_slots() > 0) {
            return;
        }
        if self.jobs_may_be_left {
            return self.claim_for_free_sessions().await;
        }
        match self.store.any_ready(now_ms()).await {
            Ok(true) => self.claim_for_free_sessions().await,
            Ok(false) => {}
            Err(e) => error!(error = %e, "cannot look for pending jobs; retrying later"),
        }
    }

    /// Leases visible jobs to sessions with free slots: one claim per group of alike
    /// sessions, jobs dealt out one per session in turn so several agents of one creator
    /// share the work. With no free session there is no group, and nothing is asked.
    async fn claim_for_free_sessions(&mut self) {
        // A group that got fewer jobs than it asked for has seen everything it may take;
        // only groups that were filled can find more in another round.
        let mut exhausted: BTreeSet<Arc<ClaimKey>> = BTreeSet::new();
        loop {
            let groups: Vec<(Arc<ClaimKey>, ClaimGroup)> =
                self.claim_groups().into_iter().filter(|(key, _)| !exhausted.contains(key)).collect();
            if groups.is_empty() {
                self.jobs_may_be_left = exhausted.is_empty();
                return;
            }
            for (key, group) in groups {
                let (free_slots, creator_id) = (group.free_slots(), group.creator_id.clone());
                let jobs = match self.writes.claim_jobs(group).await {
                    Ok(jobs) => jobs,
                    Err(e) => {
                        error!(creator_id, error = %e, "cannot lease jobs; retrying later");
                        self.jobs_may_be_left = false;
                        return;
                    }
                };
                if (jobs.len() as u64) < free_slots {
                    exhausted.insert(key);
                }
                let claimed_at = now_ms();
                for job in jobs {
                    self.deliver(job, claimed_at);
                }
            }
        }
    }

    /// Hands a freshly leased job to the session it was leased to.
    fn deliver(&mut self, mut job: JobRecord, claimed_at: i64) {
        // Submit (or scheduled time) → first lease; redeliveries are not dispatch latency.
        crate::metrics::job_assigned(
            (job.attempts == 1).then(|| crate::metrics::elapsed_ms(job.created_at.max(job.run_at), claimed_at)),
        );
        let Some(agent_id) = job.assigned_agent_id.clone() else {
            error!(job_id = job.id, "a claimed job has no agent; its lease will expire");
            return;
        };
        let Some(conn) = self.connections.get_mut(&agent_id) else {
            warn!(agent_id, job_id = job.id, "session gone while leasing; the job's lease will expire");
            return;
        };
        conn.in_flight.insert(job.id.clone(), job.lease_token);
        conn.leased_as_version_0 |= conn.protocol == 0;
        info!(
            agent_id,
            job_id = job.id,
            job_type = job.job_type,
            attempt = job.attempts,
            lease_token = job.lease_token,
            "job leased"
        );
        let text = encode_assign(&mut job);
        let job_id = job.id.clone();
        let assign = Outgoing::Assign { job: Box::new(job), text };
        if conn.outbox.send(assign).is_err() {
            // The session is ending; its disconnect releases the job again.
            warn!(agent_id, job_id, "session closed while assigning; job will be released");
        }
    }
}

/// The `job_assign` frame of `job`, encoded. The payload is lent to the frame and given back,
/// so the session's copy of the lease and the frame share one payload instead of a deep copy
/// per job.
fn encode_assign(job: &mut JobRecord) -> String {
    let spec =
        JobSpec { job_id: job.id.clone(), job_type: job.job_type.clone(), payload: std::mem::take(&mut job.payload) };
    let frame = HubFrame::JobAssign { job: spec };
    let text = edge_protocol::encode(&frame);
    if let HubFrame::JobAssign { job: spec } = frame {
        job.payload = spec.payload;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{InsertOutcome, JobState, NewAgent, NewJob};
    use edge_protocol::decode_hub_frame;

    async fn next(outbox: &mut mpsc::UnboundedReceiver<Outgoing>) -> Outgoing {
        tokio::time::timeout(Duration::from_secs(5), outbox.recv()).await.expect("in time").expect("outbox open")
    }

    fn version_0() -> Handshake {
        Handshake::version_0()
    }

    /// The race of a late `hello`: a job leased to the session as a version-0 peer is still
    /// in its outbox, unwritten, when the hello is applied. The session must be able to tell
    /// those assigns from the ones made under its hello: the marker comes after every lease
    /// taken back and before any new one.
    #[tokio::test]
    async fn a_late_hello_takes_back_version_0_leases_and_marks_where_they_end() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("hub.db").display());
        let store = crate::server::open_store(&url).await.unwrap();
        let now = now_ms();
        store.create_enrollment_token("token-hash", "creator-1", now + 60_000, now).await.unwrap();
        let agent = NewAgent { id: "agt_late".to_owned(), public_key: String::new(), name: None, version: None };
        store.enroll_agent("token-hash", agent, now).await.unwrap().expect("enrolled");
        let writes = JobWrites::spawn(store.clone()).unwrap();
        let (dispatcher, inbox) = Dispatcher::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(store.clone(), writes, inbox, Duration::from_millis(50), stop.clone()));

        let (outbox, mut outgoing) = mpsc::unbounded_channel();
        let session = SessionId::next();
        dispatcher.connect("agt_late", "creator-1", session, outbox);
        dispatcher.ready("agt_late", session, version_0());
        let job = NewJob {
            id: crate::crypto::new_job_id(),
            job_type: "custom".to_owned(),
            payload: serde_json::json!({}),
            creator_id: "creator-1".to_owned(),
            target_agent_id: None,
            labels: Vec::new(),
            priority: 0,
            run_at: now,
            idempotency_key: None,
            max_receive_count: 5,
            visibility_timeout_ms: 60_000,
            skipped_recipients: None,
            final_state: None,
        };
        let InsertOutcome::Created(job) = store.insert_job(job, now).await.unwrap() else { panic!("not created") };
        dispatcher.job_submitted();
        // Leased as version 0; the session has not taken the assign out of its outbox yet.
        for _ in 0..250 {
            if store.job(&job.id).await.unwrap().unwrap().status == JobState::Leased {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let hello = Handshake {
            protocol: 2,
            slots: 2,
            capabilities: vec!["custom".to_owned()],
            after_version_0: true,
            ..version_0()
        };
        dispatcher.ready("agt_late", session, hello);
        let Outgoing::Assign { job: first, .. } = next(&mut outgoing).await else {
            panic!("the version-0 assign first")
        };
        assert_eq!((first.id.as_str(), first.lease_token), (job.id.as_str(), 1));
        assert!(matches!(next(&mut outgoing).await, Outgoing::HandshakeApplied), "then the marker");
        // The job was handed back, and the hello allows it: leased again, a new lease.
        let Outgoing::Assign { job: again, .. } = next(&mut outgoing).await else { panic!("a new assign") };
        assert_eq!((again.id.as_str(), again.lease_token), (job.id.as_str(), 2));
        let attempts = store.job_attempts(&job.id).await.unwrap();
        assert_eq!(attempts[0].outcome.as_deref(), Some("released"), "{attempts:?}");

        // A hello after a version-0 start that took no job costs nothing but the marker.
        let (outbox, mut quiet) = mpsc::unbounded_channel();
        let other = SessionId::next();
        dispatcher.connect("agt_quiet", "creator-2", other, outbox);
        dispatcher.ready("agt_quiet", other, version_0());
        dispatcher.ready("agt_quiet", other, Handshake { protocol: 2, after_version_0: true, ..version_0() });
        assert!(matches!(next(&mut quiet).await, Outgoing::HandshakeApplied));
        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn an_assign_frame_carries_the_payload_and_the_lease_keeps_it() {
        let payload = serde_json::json!({"url": "https://example.com/", "headers": {"b": "2", "a": "1"}, "n": [1, 2]});
        let mut job = JobRecord {
            job_type: "http_request".to_owned(),
            payload: payload.clone(),
            status: JobState::Leased,
            lease_token: 3,
            ..JobRecord::sample(1)
        };
        let before = job.clone();
        let text = encode_assign(&mut job);
        assert_eq!(job, before, "the lease's record is unchanged");
        let expected = HubFrame::JobAssign {
            job: JobSpec { job_id: job.id.clone(), job_type: "http_request".to_owned(), payload },
        };
        assert_eq!(decode_hub_frame(&text).unwrap(), expected);
        assert_eq!(text, edge_protocol::encode(&expected), "the same bytes as encoding the frame itself");
    }
}
