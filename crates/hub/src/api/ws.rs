//! Owns one agent's WebSocket session: token check at upgrade, the `hello`/version-0
//! handshake, heartbeats, and applying `job_ack`/`job_result`/`availability` frames to
//! the store and the dispatcher. It must never panic or disconnect on bad input: every
//! undecodable frame gets an `error` frame and a warn log line, and the session goes on.
//! It must never change a job the agent does not hold, and never send a version-1 frame
//! to a version-0 peer.

use super::ws_upgrade::{AgentSocket as WebSocket, NotAnUpgrade, WsUpgrade};
use super::{bearer_token, AppState, Failure};
use crate::crypto::{now_ms, now_secs};
use crate::dispatch::{Dispatcher, Handshake, Outgoing, SessionId};
use crate::jwt::TokenRejection;
use crate::queue::{self, plan_failure};
use crate::store::{AgentRecord, FinishOutcome, FinishRequest, JobRecord, JobState, LeaseRef, Transition};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use edge_protocol::api::close_code;
use edge_protocol::{
    decode_agent_frame, encode, AgentFrame, ErrorCode, FrameError, HubFrame, JobError, JobStatus, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};
use futures_util::future::Either;
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tracing::{debug, error, info, info_span, warn, Instrument};

/// Messages above this are dropped by the WebSocket layer itself. It sits well above
/// [`edge_protocol::MAX_FRAME_BYTES`] so a merely oversized frame reaches the codec and
/// is answered with `FRAME_TOO_LARGE` instead of a dropped connection.
const MAX_WS_MESSAGE_BYTES: usize = 4 * edge_protocol::MAX_FRAME_BYTES;

/// After refusing a frame over [`MAX_WS_MESSAGE_BYTES`], how long the rest of it (and the
/// agent's close frame) may take to arrive, and how long a pause in it ends the wait.
const OVERSIZED_DRAIN_WAIT: Duration = Duration::from_secs(3);
const OVERSIZED_QUIET: Duration = Duration::from_millis(250);

/// Chunk in which a session reads from its socket; larger frames still arrive whole. Every
/// session holds one from the start, and tungstenite zeroes it before each read: an agent's
/// frames are mostly a few hundred bytes, so 1 KiB (not 4) saves ~3 KiB per idle session.
const SESSION_READ_BUFFER: usize = 1024;

/// Frames written to a session's socket before it is flushed (a burst of assigns is at
/// most an agent's slots, [`crate::dispatch::MAX_SLOTS`]).
const MAX_FRAMES_PER_FLUSH: usize = crate::dispatch::MAX_SLOTS as usize;

/// Bytes of frames a session gathers before writing them out even without a flush. The
/// buffer grows only as far as a burst needs (an idle session's stays at a heartbeat ack).
const SESSION_WRITE_BATCH: usize = 16 * 1024;

/// How long to wait for the agent's answer to our close frame before dropping the socket.
const CLOSE_HANDSHAKE_WAIT: Duration = Duration::from_secs(1);
/// Shorter on shutdown: an agent that does not answer at once must not hold up a restart.
const SHUTDOWN_CLOSE_WAIT: Duration = Duration::from_millis(200);

/// A prototype agent heartbeats on its own fixed schedule and never learns ours, so it
/// gets at least this long between frames.
const MIN_V0_IDLE: Duration = Duration::from_secs(90);
const MIN_V1_IDLE: Duration = Duration::from_secs(10);

/// A peer that sends nothing this long after connecting is a prototype agent: those wait
/// for their first job before they say anything, and must get it within 2 s of connecting.
/// A version-1 agent sends `hello` as soon as the socket is open, one round trip after the
/// upgrade; a slower one is still served (see [`Session::on_hello`]).
pub const VERSION_0_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// Why a WebSocket is refused; each maps to a frame code and a close code.
#[derive(Debug)]
pub(crate) enum Refusal {
    Expired,
    Invalid(String),
    Unavailable,
}

impl Refusal {
    fn frame_code(&self) -> &'static str {
        match self {
            Refusal::Expired => "TOKEN_EXPIRED",
            Refusal::Invalid(_) => "TOKEN_INVALID",
            Refusal::Unavailable => "INTERNAL",
        }
    }

    fn close_code(&self) -> u16 {
        match self {
            Refusal::Expired => close_code::TOKEN_EXPIRED,
            Refusal::Invalid(_) => close_code::TOKEN_INVALID,
            // 1011: the server hit an unexpected condition.
            Refusal::Unavailable => 1011,
        }
    }

    /// Short enough for a close frame's 123-byte reason.
    fn reason(&self) -> &'static str {
        match self {
            Refusal::Expired => "token expired: get a new one from /v1/agent/token",
            Refusal::Invalid(_) => "token invalid: log in again",
            Refusal::Unavailable => "the hub cannot check tokens right now",
        }
    }

    /// The same refusal as an HTTP answer (the tunnel's endpoints): 401 for the token,
    /// 500 when the hub cannot check it.
    pub(crate) fn into_failure(self) -> Failure {
        match self {
            Refusal::Unavailable => Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", self.message()),
            Refusal::Expired => Failure::new(StatusCode::UNAUTHORIZED, "token_expired", self.message()),
            Refusal::Invalid(_) => Failure::new(StatusCode::UNAUTHORIZED, "invalid_token", self.message()),
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::Expired => {
                "the session token has expired: get a new one from /v1/agent/token and reconnect".to_owned()
            }
            Refusal::Invalid(why) => format!("the session token is not valid ({why}): log in again"),
            Refusal::Unavailable => "the hub cannot check tokens right now; retry later".to_owned(),
        }
    }
}

pub async fn agent_ws(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<WsQuery>, QueryRejection>,
    upgrade: Result<WsUpgrade, NotAnUpgrade>,
) -> Response {
    let token = query
        .ok()
        .and_then(|Query(q)| q.token)
        .filter(|t| !t.trim().is_empty())
        .or_else(|| bearer_token(&headers).map(str::to_owned));
    let verdict = authenticate(&app, token.as_deref()).await;

    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(NotAnUpgrade(why)) => {
            return match verdict {
                Err(refusal) => Failure::new(
                    StatusCode::UNAUTHORIZED,
                    if matches!(refusal, Refusal::Expired) { "token_expired" } else { "invalid_token" },
                    refusal.message(),
                )
                .into_response(),
                Ok(_) => Failure::new(
                    StatusCode::UPGRADE_REQUIRED,
                    "upgrade_required",
                    format!("this endpoint speaks WebSocket only: {why}"),
                )
                .into_response(),
            };
        }
    };

    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_WS_MESSAGE_BYTES))
        // tungstenite's defaults (128 KiB read buffer, 128 KiB write batching) cost ~150 KiB
        // per idle session; frames here are small, and a session flushes after each burst.
        .read_buffer_size(SESSION_READ_BUFFER)
        .write_buffer_size(SESSION_WRITE_BATCH);
    let sessions = app.sessions.clone();
    upgrade.on_upgrade(config, &sessions, move |socket| {
        // No async block here: it would keep its own copy of the socket in every task.
        match verdict {
            Ok(agent) => Either::Left(run_session(socket, app, agent)),
            Err(refusal) => Either::Right(Box::pin(refuse(socket, refusal))),
        }
    })
}

/// The agent a session token stands for: signature, lifetime, and an agent of that
/// creator this hub knows.
pub(crate) async fn authenticate(app: &AppState, token: Option<&str>) -> Result<AgentRecord, Refusal> {
    let Some(token) = token else {
        return Err(Refusal::Invalid("no token: pass ?token=JWT or Authorization: Bearer JWT".to_owned()));
    };
    let claims = app.jwt.verify(token).map_err(|e| match e {
        TokenRejection::Expired => Refusal::Expired,
        TokenRejection::Invalid(why) => Refusal::Invalid(why),
    })?;
    match app.store.agent(&claims.agent_id).await {
        Ok(Some(agent)) if agent.creator_id == claims.creator_id => Ok(agent),
        Ok(_) => Err(Refusal::Invalid("it names an agent this hub does not know".to_owned())),
        Err(e) => {
            error!(error = %e, "cannot look up the agent of a session token");
            Err(Refusal::Unavailable)
        }
    }
}

async fn refuse(mut socket: WebSocket, refusal: Refusal) {
    warn!(code = refusal.frame_code(), reason = %refusal.message(), "WebSocket session refused");
    let frame = HubFrame::error(refusal.frame_code(), refusal.message());
    if send_frame(&mut socket, &frame).await {
        close(&mut socket, refusal.close_code(), refusal.reason()).await;
    }
}

/// Sends our close frame and waits briefly for the agent's, so it sees a clean close.
async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    close_within(socket, code, reason, CLOSE_HANDSHAKE_WAIT).await
}

async fn close_within(socket: &mut WebSocket, code: u16, reason: &str, wait: Duration) {
    let reason = truncate_reason(reason);
    let frame = CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from(reason) };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(wait, async {
        while let Some(Ok(message)) = socket.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// RFC 6455 allows 123 bytes of close reason; cut on a character boundary.
fn truncate_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

async fn send_frame(socket: &mut WebSocket, frame: &HubFrame) -> bool {
    match socket.send(Message::text(encode(frame))).await {
        Ok(()) => true,
        Err(e) => {
            debug!(error = %e, frame = frame.kind(), "cannot send frame; connection is gone");
            false
        }
    }
}

/// Tells the dispatcher the session ended however the task exits, so its jobs are released.
struct DisconnectOnDrop {
    dispatcher: Dispatcher,
    agent_id: String,
    session: SessionId,
}

impl Drop for DisconnectOnDrop {
    fn drop(&mut self) {
        self.dispatcher.disconnect(&self.agent_id, self.session);
    }
}

enum Flow {
    Continue,
    Stop,
}

/// What an agent's `hello` announces ([`AgentFrame::Hello`]'s fields).
struct Hello {
    protocol: u32,
    v: String,
    capabilities: Vec<String>,
    slots: u32,
    labels: Vec<String>,
    paused: bool,
    running: Option<Vec<String>>,
}

struct Session {
    app: AppState,
    agent_id: String,
    id: SessionId,
    /// `None` until the first frame: `hello` sets the negotiated version, anything else 0.
    version: Option<u32>,
    /// The leases handed to this session, as leased, by job id: the agent's frames carry no
    /// fencing token, so this is how a report is tied to its lease.
    leases: HashMap<String, JobRecord>,
    /// A `job_ack` not written yet. An agent that finishes at once sends its `job_result`
    /// right behind the ack; when that result is already waiting on the socket, the ack is
    /// not written at all (the result ends a lease whether it was acknowledged or not), which
    /// saves a write per job. Written before any other frame is handled and before the
    /// session waits, so nothing the agent sent later is applied before it.
    unwritten_ack: Option<LeaseRef>,
    /// Set by a `hello` after a version-0 start, until the dispatcher answers
    /// [`Outgoing::HandshakeApplied`]: the `job_assign`s queued meanwhile were leased under
    /// the version-0 handshake, and the dispatcher hands them back instead.
    dropping_version_0_assigns: bool,
}

/// A plain function, not an `async fn`, so the session's task holds one copy of the socket
/// and of the session: an `async fn` keeps its arguments for its whole life beside the
/// values moved out of them, and an idle session's memory is mostly its task.
fn run_session(mut socket: WebSocket, app: AppState, agent: AgentRecord) -> impl Future<Output = ()> + Send {
    let id = SessionId::next();
    let span = info_span!("session", agent_id = %agent.id, session = %id);
    let creator_id = agent.creator_id;
    let mut session = Session {
        app,
        agent_id: agent.id,
        id,
        version: None,
        leases: HashMap::new(),
        unwritten_ack: None,
        dropping_version_0_assigns: false,
    };
    async move {
        let (outbox, mut outgoing) = mpsc::unbounded_channel();
        session.app.dispatcher.connect(&session.agent_id, &creator_id, id, outbox);
        let _disconnect = DisconnectOnDrop {
            dispatcher: session.app.dispatcher.clone(),
            agent_id: session.agent_id.clone(),
            session: id,
        };
        info!("agent connected");
        session.run(&mut socket, &mut outgoing).await;
        // The agent acknowledged the job: it stays running (and keeps its lease) even though
        // the connection is gone, so it is not handed out again while the agent may still run it.
        Box::pin(session.write_ack(None)).await;
        info!("agent session ended");
    }
    .instrument(span)
}

impl Session {
    /// The session's loop. Its future lives as long as the connection and is as large as
    /// the largest state it can be in, so every handler is awaited boxed: unboxed, each idle
    /// session would carry room for the deepest handler (several KiB) for its whole life.
    async fn run(&mut self, socket: &mut WebSocket, outgoing: &mut mpsc::UnboundedReceiver<Outgoing>) {
        let connected_at = Instant::now();
        let mut last_frame_at = connected_at;
        loop {
            if self.unwritten_ack.is_some() {
                match socket.next().now_or_never() {
                    Some(incoming) => {
                        last_frame_at = Instant::now();
                        match Box::pin(self.on_message(socket, incoming)).await {
                            Flow::Continue => continue,
                            Flow::Stop => return,
                        }
                    }
                    None => {
                        if let Flow::Stop = Box::pin(self.write_ack(Some(socket))).await {
                            return;
                        }
                    }
                }
            }
            let idle_limit = self.idle_limit();
            let idle_at = last_frame_at + idle_limit;
            // One timer for both deadlines: a second one in the select below would take room
            // in every idle session's task for the life of the connection.
            let grace_at = self.version.is_none().then_some(connected_at + VERSION_0_GRACE).filter(|at| *at < idle_at);
            tokio::select! {
                _ = self.app.shutdown.cancelled() => {
                    Box::pin(close_within(socket, 1001, "the hub is shutting down", SHUTDOWN_CLOSE_WAIT)).await;
                    return;
                }
                _ = tokio::time::sleep_until(grace_at.unwrap_or(idle_at)) => {
                    if grace_at.is_some() {
                        self.start_version_0("none within the grace");
                        continue;
                    }
                    warn!(idle_secs = idle_limit.as_secs(), "no frame from the agent in time; closing");
                    Box::pin(close(socket, 1001, "no heartbeat in time")).await;
                    return;
                }
                command = outgoing.recv() => match command {
                    Some(command) => {
                        if let Flow::Stop = Box::pin(self.send_outgoing(socket, command, outgoing)).await {
                            return;
                        }
                    }
                    None => return,
                },
                incoming = socket.next() => {
                    last_frame_at = Instant::now();
                    if let Flow::Stop = Box::pin(self.on_message(socket, incoming)).await {
                        return;
                    }
                }
            }
        }
    }

    /// Writes `first` and what else the dispatcher has queued by now, then flushes once: a
    /// claim that deals several jobs to this agent costs one write to the socket, not one
    /// per job. At most [`MAX_FRAMES_PER_FLUSH`] frames wait for the flush.
    async fn send_outgoing(
        &mut self,
        socket: &mut WebSocket,
        first: Outgoing,
        outgoing: &mut mpsc::UnboundedReceiver<Outgoing>,
    ) -> Flow {
        let mut next = Some(first);
        let mut fed = 0;
        while let Some(command) = next.take() {
            let outgoing_frame = match command {
                Outgoing::Frame(frame) => Some((frame.kind(), encode(&frame))),
                Outgoing::Assign { job, .. } if self.dropping_version_0_assigns => {
                    debug!(job_id = job.id, "job leased before the agent's late hello not sent; it is pending again");
                    None
                }
                Outgoing::Assign { job, text } => {
                    self.leases.insert(job.id.clone(), *job);
                    Some(("job_assign", text))
                }
                Outgoing::HandshakeApplied => {
                    self.dropping_version_0_assigns = false;
                    None
                }
                Outgoing::Close { code, reason } => {
                    info!(code, reason, "closing session");
                    if socket.flush().await.is_ok() {
                        close(socket, code, &reason).await;
                    }
                    return Flow::Stop;
                }
            };
            if let Some((kind, text)) = outgoing_frame {
                if let Err(e) = socket.feed(Message::text(text)).await {
                    debug!(error = %e, frame = kind, "cannot send frame; connection is gone");
                    return Flow::Stop;
                }
            }
            fed += 1;
            if fed < MAX_FRAMES_PER_FLUSH {
                next = outgoing.try_recv().ok();
            }
        }
        match socket.flush().await {
            Ok(()) => Flow::Continue,
            Err(e) => {
                debug!(error = %e, "cannot send frames; connection is gone");
                Flow::Stop
            }
        }
    }

    /// What the socket gave: a message, an error or its end.
    async fn on_message(
        &mut self,
        socket: &mut WebSocket,
        incoming: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Flow {
        let message = match incoming {
            None => return Flow::Stop,
            Some(Err(e)) => {
                if let Some((size, limit)) = oversized(&e) {
                    return Box::pin(self.close_oversized(socket, size, limit)).await;
                }
                info!(error = %e, "connection lost");
                return Flow::Stop;
            }
            Some(Ok(message)) => message,
        };
        match message {
            Message::Text(text) => self.on_text(socket, text.as_str()).await,
            Message::Binary(_) => self.on_bad_frame(socket, FrameError::Binary).await,
            // Raw frames are only ever written, never read.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Flow::Continue,
            Message::Close(frame) => {
                info!(code = frame.as_ref().map(|f| u16::from(f.code)), "agent closed the connection");
                Flow::Stop
            }
        }
    }

    /// A frame over [`MAX_WS_MESSAGE_BYTES`]: the WebSocket layer stopped reading at its
    /// header, so the connection cannot go on (the rest of the frame is still on the wire).
    /// The agent gets a close frame saying why, 1009 (Message Too Big) in RFC 6455, instead
    /// of a bare disconnect.
    async fn close_oversized(&mut self, socket: &mut WebSocket, size: usize, limit: usize) -> Flow {
        warn!(size, limit, close_code = 1009, "frame over the WebSocket size limit; closing the connection");
        let reason = format!("frame of {size} bytes is over the {limit}-byte limit");
        // Not `close`: the WebSocket layer reads nothing more, so the agent's answer to the
        // close frame can only be read off the socket with the rest of the big frame.
        let frame = CloseFrame { code: CloseCode::Size, reason: Utf8Bytes::from(truncate_reason(&reason)) };
        if socket.send(Message::Close(Some(frame))).await.is_err() {
            return Flow::Stop;
        }
        // Closing a TCP socket with unread bytes makes the kernel send a reset, which can
        // reach the agent before it has read the close frame. So the rest of the frame, and
        // the agent's close frame after it, are read and dropped first, until the agent has
        // been quiet for a moment or a bounded time has passed.
        let io = socket.get_mut();
        let mut scratch = vec![0u8; 16 * 1024];
        let mut drained = 0u64;
        let give_up = Instant::now() + OVERSIZED_DRAIN_WAIT;
        loop {
            let until = give_up.min(Instant::now() + OVERSIZED_QUIET);
            tokio::select! {
                read = tokio::time::timeout_at(until, io.read(&mut scratch)) => match read {
                    Ok(Ok(n)) if n > 0 => drained += n as u64,
                    _ => break,
                },
                _ = self.app.shutdown.cancelled() => break,
            }
        }
        debug!(drained, "rest of the oversized frame read and dropped");
        let _ = io.shutdown().await;
        Flow::Stop
    }

    /// Writes the unwritten `job_ack`, if any. `socket`: where to complain when the job is
    /// not this agent's (none once the connection is gone).
    async fn write_ack(&mut self, socket: Option<&mut WebSocket>) -> Flow {
        let Some(lease) = self.unwritten_ack.take() else {
            return Flow::Continue;
        };
        let job_id = lease.job_id.clone();
        let refused = match self.app.job_writes.start_job(lease).await {
            Ok(true) => {
                info!(job_id, "job acknowledged; running");
                return Flow::Continue;
            }
            Ok(false) => None,
            Err(e) => Some(e),
        };
        let Some(socket) = socket else {
            warn!(job_id, error = refused.map(|e| e.to_string()), "a job_ack of a closed session was not applied");
            return Flow::Continue;
        };
        match refused {
            None => self.not_your_job(socket, &job_id).await,
            Some(e) => self.store_failed(socket, "job_ack", &e).await,
        }
    }

    fn idle_limit(&self) -> Duration {
        let three_beats = self.app.hb_interval.saturating_mul(3);
        match self.version {
            Some(v) if v >= 1 => three_beats.max(MIN_V1_IDLE),
            _ => three_beats.max(MIN_V0_IDLE),
        }
    }

    fn speaks_v1(&self) -> bool {
        self.version != Some(0)
    }

    async fn on_text(&mut self, socket: &mut WebSocket, text: &str) -> Flow {
        let decoded = decode_agent_frame(text);
        let folds_the_ack = matches!(
            (&decoded, &self.unwritten_ack),
            (Ok(AgentFrame::JobResult { id, .. }), Some(ack)) if *id == ack.job_id
        );
        if folds_the_ack {
            // The result ends the lease whether or not it was acknowledged.
            self.unwritten_ack = None;
        } else if let Flow::Stop = self.write_ack(Some(socket)).await {
            return Flow::Stop;
        }
        match decoded {
            Ok(frame) => {
                debug!(frame = frame.kind(), "frame received");
                self.on_frame(socket, frame).await
            }
            Err(e) => self.on_bad_frame(socket, e).await,
        }
    }

    async fn on_bad_frame(&mut self, socket: &mut WebSocket, problem: FrameError) -> Flow {
        warn!(code = problem.code(), error = %problem, "undecodable frame from agent");
        if self.speaks_v1() {
            let frame = HubFrame::Error(problem.to_error_frame());
            if !send_frame(socket, &frame).await {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    async fn reply(&self, socket: &mut WebSocket, frame: HubFrame) -> Flow {
        if send_frame(socket, &frame).await {
            Flow::Continue
        } else {
            Flow::Stop
        }
    }

    /// An `error` frame for version-1 peers; a prototype peer gets only the log line.
    async fn complain(&self, socket: &mut WebSocket, code: &str, message: String) -> Flow {
        warn!(code, message, "frame refused");
        if self.speaks_v1() {
            return self.reply(socket, HubFrame::error(code, message)).await;
        }
        Flow::Continue
    }

    /// `hello`: negotiates the version, records the agent's announcement, answers, and only
    /// then tells the dispatcher the session may take jobs.
    async fn on_hello(&mut self, socket: &mut WebSocket, hello: Hello) -> Flow {
        let Hello { protocol, v, capabilities, slots, labels, paused, running } = hello;
        if let Some(running) = &running {
            // The agent lists what it still runs; leases it holds for anything else (lost
            // with a previous process) run out now instead of living on its heartbeats.
            match self.app.store.release_unclaimed_leases(&self.agent_id, running, now_ms()).await {
                Ok(0) => {}
                Ok(count) => info!(count, "leases the agent no longer claims run out now"),
                Err(e) => error!(error = %e, "cannot release the leases the agent no longer claims"),
            }
        }
        let negotiated = protocol.min(PROTOCOL_VERSION);
        // Always false while the oldest served version is 0; kept for when it rises.
        #[allow(clippy::absurd_extreme_comparisons)]
        if negotiated < MIN_PROTOCOL_VERSION {
            let message = format!(
                "protocol {protocol} is older than the oldest this hub serves ({MIN_PROTOCOL_VERSION}): update the agent"
            );
            self.complain(socket, "UNSUPPORTED_VERSION", message).await;
            close(socket, close_code::UNSUPPORTED_VERSION, "protocol version too old: update the agent").await;
            return Flow::Stop;
        }
        // A hello after the session started as version 0 (it was silent past the grace, or
        // began with another frame): the jobs leased so far were sent before our hello_ack,
        // which an agent ignores, and chosen without its capabilities; they go back.
        let after_version_0 = self.version == Some(0);
        if after_version_0 {
            self.dropping_version_0_assigns = true;
        }
        self.version = Some(negotiated);
        info!(
            protocol = negotiated,
            agent_version = v,
            slots,
            paused,
            ?capabilities,
            ?labels,
            after_version_0,
            "hello"
        );
        let labels: Vec<String> = labels
            .into_iter()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty() && l.len() <= 64)
            .take(32)
            .collect();
        let slots = slots.min(crate::dispatch::MAX_SLOTS);
        if let Err(e) =
            self.app.store.record_hello(&self.agent_id, clean_version(&v), &labels, i64::from(slots), now_ms()).await
        {
            error!(error = %e, "cannot record hello");
        }
        let ack = HubFrame::HelloAck {
            protocol: negotiated,
            hub: format!("hub-{}", env!("CARGO_PKG_VERSION")),
            agent_id: self.agent_id.clone(),
            hb_interval_ms: u64::try_from(self.app.hb_interval.as_millis()).unwrap_or(u64::MAX),
            // Only when the operator set some; an agent's person's own caps apply regardless.
            limits: (self.app.agent_limits != edge_protocol::HubLimits::default())
                .then(|| self.app.agent_limits.clone()),
        };
        // hello_ack goes out before the dispatcher learns the session is ready, so it
        // always precedes the first job_assign.
        if let Flow::Stop = self.reply(socket, ack).await {
            return Flow::Stop;
        }
        let handshake = Handshake { protocol: negotiated, slots, paused, labels, capabilities, after_version_0 };
        self.app.dispatcher.ready(&self.agent_id, self.id, handshake);
        Flow::Continue
    }

    /// The peer is a prototype agent: it said nothing within [`VERSION_0_GRACE`], or its
    /// first frame was not `hello`. It gets one job at a time and version-0 frames only.
    fn start_version_0(&mut self, first_frame: &str) {
        self.version = Some(0);
        info!(first_frame, "version-0 agent (no hello)");
        self.app.dispatcher.ready(&self.agent_id, self.id, Handshake::version_0());
    }

    /// The two deep handlers are boxed so this future stays small (see [`Session::run`]).
    async fn on_frame(&mut self, socket: &mut WebSocket, frame: AgentFrame) -> Flow {
        if let AgentFrame::Hello { protocol, v, capabilities, slots, labels, paused, running } = frame {
            let hello = Hello { protocol, v, capabilities, slots, labels, paused, running };
            return Box::pin(self.on_hello(socket, hello)).await;
        }

        if self.version.is_none() {
            // A prototype agent never says hello.
            self.start_version_0(frame.kind());
        }

        match frame {
            AgentFrame::Hello { .. } => Flow::Continue,
            AgentFrame::Hb { v, ts } => {
                crate::metrics::heartbeat();
                self.record_heartbeat(&v).await;
                // A heartbeat says the agent is alive with all its jobs: like SQS's
                // ChangeMessageVisibility on each of them.
                if let Err(e) = self.app.store.extend_leases(&self.agent_id, None, now_ms()).await {
                    error!(error = %e, "cannot extend leases");
                }
                let server_ts = (self.version >= Some(1)).then(now_secs);
                self.reply(socket, HubFrame::HbAck { ts, server_ts }).await
            }
            AgentFrame::JobAck { id } => {
                let token = match self.lease_token(&id).await {
                    Ok(Some(token)) => token,
                    Ok(None) => return self.not_your_job(socket, &id).await,
                    Err(e) => return self.store_failed(socket, "job_ack", &e).await,
                };
                // Written once the session knows what the agent sent next (see `unwritten_ack`).
                self.unwritten_ack = Some(LeaseRef { job_id: id, agent_id: self.agent_id.clone(), lease_token: token });
                Flow::Continue
            }
            AgentFrame::JobProgress { id, pct, msg } => {
                debug!(job_id = id, pct, msg, "job progress");
                match self.app.store.extend_leases(&self.agent_id, Some(&id), now_ms()).await {
                    Ok(0) => self.not_your_job(socket, &id).await,
                    Ok(_) => Flow::Continue,
                    Err(e) => self.store_failed(socket, "job_progress", &e).await,
                }
            }
            AgentFrame::JobResult { id, status, data, err } => {
                Box::pin(self.on_result(socket, id, status, data, err)).await
            }
            AgentFrame::CircuitBreaker { reason, cooldown_ms } => {
                let cooldown = cooldown_ms
                    .map(Duration::from_millis)
                    .unwrap_or(crate::dispatch::DEFAULT_CIRCUIT_COOLDOWN)
                    .min(Duration::from_secs(24 * 3600));
                let until = now_ms() + i64::try_from(cooldown.as_millis()).unwrap_or(i64::MAX / 2);
                warn!(
                    ?reason,
                    cooldown_ms = cooldown.as_millis() as u64,
                    withheld_job_types = ?crate::dispatch::circuit_withholds(),
                    "agent tripped its circuit breaker; no browser jobs for it until the cool-down ends, other types still go to it"
                );
                self.app.dispatcher.circuit_open(&self.agent_id, until);
                Flow::Continue
            }
            AgentFrame::Availability(availability) => {
                info!(paused = availability.paused, slots = availability.slots, "availability changed");
                self.app.dispatcher.availability(
                    &self.agent_id,
                    self.id,
                    Some(availability.slots),
                    availability.paused,
                );
                Flow::Continue
            }
            AgentFrame::JobLog { id, stream, seq, data } => {
                crate::bundles::on_job_log(&self.agent_id, &id, stream, seq, &data);
                Flow::Continue
            }
            AgentFrame::Error(problem) => {
                warn!(code = problem.code, message = problem.message, "agent reported a protocol error");
                Flow::Continue
            }
        }
    }

    /// The fencing token of this agent's lease on `job_id`: the one handed to this session,
    /// else (a report after a reconnect) the job's current lease if this agent holds it,
    /// else the last lease this agent ever had on it (its report is then stale).
    async fn lease_token(&self, job_id: &str) -> Result<Option<i64>, crate::store::StoreError> {
        if let Some(job) = self.leases.get(job_id) {
            return Ok(Some(job.lease_token));
        }
        if let Some(job) = self.app.store.job(job_id).await? {
            if job.status.is_held() && job.assigned_agent_id.as_deref() == Some(self.agent_id.as_str()) {
                return Ok(Some(job.lease_token));
            }
        }
        let attempts = self.app.store.job_attempts(job_id).await?;
        Ok(attempts.iter().filter(|a| a.agent_id == self.agent_id).map(|a| a.lease_token).max())
    }

    async fn on_result(
        &mut self,
        socket: &mut WebSocket,
        job_id: String,
        status: JobStatus,
        data: Option<serde_json::Value>,
        err: Option<JobError>,
    ) -> Flow {
        let now = now_ms();
        // A success needs only what cannot change during a lease (type, payload), so the
        // record as leased serves; a failure's retry decision reads the job again, since a
        // cancel request may have come in meanwhile.
        let as_leased = self.leases.get(&job_id).filter(|_| status == JobStatus::Ok);
        let looked_up = match as_leased {
            Some(job) => Ok(Some(Cow::Borrowed(job))),
            None => self.app.store.job(&job_id).await.map(|job| job.map(Cow::Owned)),
        };
        let job = match looked_up {
            Ok(Some(job)) => job,
            Ok(None) => return self.not_your_job(socket, &job_id).await,
            Err(e) => return self.store_failed(socket, "job_result", &e).await,
        };
        let token = match self.lease_token(&job_id).await {
            Ok(Some(token)) => token,
            Ok(None) => return self.not_your_job(socket, &job_id).await,
            Err(e) => return self.store_failed(socket, "job_result", &e).await,
        };
        let sends_messages = self.app.job_types.get(&job.job_type).is_some_and(|spec| spec.sends_messages);
        let (sent, uncertain) = if sends_messages {
            let sent = queue::sent_recipients(&job.payload, data.as_ref(), status == JobStatus::Ok);
            let uncertain = queue::uncertain_recipients(data.as_ref(), &sent);
            (sent, uncertain)
        } else {
            (Vec::new(), Vec::new())
        };
        let (transition, result, error) = match status {
            // Even after a cancel request: the work was done, and the job says so.
            JobStatus::Ok => (Transition::Succeeded, data, None),
            JobStatus::Error => {
                let err = err.unwrap_or_else(|| {
                    JobError::new(ErrorCode::Internal, "the agent reported a failure without details")
                });
                let mut transition = plan_failure(&job, &err, &self.app.queue, now, queue::unit_random());
                if let Transition::Retry { payload, .. } = &mut transition {
                    if !sent.is_empty() || !uncertain.is_empty() {
                        // A partial send: the next delivery goes only to those not messaged
                        // yet. Perhaps-messaged ones are left out too: the next delivery may
                        // go to an agent without this one's checkpoint, which would message
                        // them again.
                        let done: Vec<String> = sent.iter().chain(&uncertain).cloned().collect();
                        match queue::payload_without(&job.payload, &done) {
                            Some(rest) => *payload = Some(rest),
                            None => transition = Transition::Failed,
                        }
                    }
                }
                match serde_json::to_value(&err) {
                    Ok(error) => (transition, None, Some(error)),
                    Err(e) => return self.store_failed(socket, "job_result", &e).await,
                }
            }
        };
        let request = FinishRequest {
            job_id: job_id.clone(),
            agent_id: self.agent_id.clone(),
            lease_token: token,
            transition: transition.clone(),
            result,
            error,
            sent_recipients: sent,
            uncertain_recipients: uncertain,
        };
        let outcome = self.app.job_writes.finish_job(request).await;
        match &outcome {
            Ok(FinishOutcome::NotHeld) | Err(_) => {}
            Ok(_) => {
                self.leases.remove(&job_id);
                self.app.dispatcher.finished(&self.agent_id, &job_id);
            }
        }
        match outcome {
            Ok(FinishOutcome::Recorded(state)) => {
                match state {
                    JobState::Succeeded => crate::metrics::job_completed(),
                    JobState::Failed => crate::metrics::job_failed(),
                    JobState::Dead => crate::metrics::job_dead(),
                    JobState::Pending if matches!(transition, Transition::Retry { .. }) => {
                        crate::metrics::job_retried()
                    }
                    _ => {}
                }
                info!(job_id, ?status, new_status = %state, lease_token = token, "job result recorded");
                if matches!(transition, Transition::Release) {
                    // Treat the agent as paused until it says otherwise, or the job would
                    // bounce straight back to it.
                    self.app.dispatcher.availability(&self.agent_id, self.id, None, true);
                }
                if state == JobState::Pending {
                    self.app.events.job_available().await;
                } else {
                    self.app.events.job_finished(&job_id).await;
                }
                Flow::Continue
            }
            Ok(FinishOutcome::AlreadyFinished) => {
                debug!(job_id, "duplicate result for a finished lease ignored");
                Flow::Continue
            }
            Ok(FinishOutcome::Stale) => {
                crate::metrics::stale_result();
                info!(
                    job_id,
                    lease_token = token,
                    "result of an expired lease recorded as stale; the job is unchanged"
                );
                Flow::Continue
            }
            Ok(FinishOutcome::NotHeld) => self.not_your_job(socket, &job_id).await,
            Err(e) => self.store_failed(socket, "job_result", &e).await,
        }
    }

    async fn not_your_job(&self, socket: &mut WebSocket, job_id: &str) -> Flow {
        let message = format!("job {job_id:?} is not assigned to this agent; the frame was ignored");
        self.complain(socket, "NOT_YOUR_JOB", message).await
    }

    async fn store_failed(&self, socket: &mut WebSocket, frame: &str, e: &(dyn std::fmt::Display + Sync)) -> Flow {
        error!(frame, error = %e, "cannot apply frame to the database");
        let message = format!("the hub could not record this {frame}; it was not applied");
        self.complain(socket, "INTERNAL", message).await
    }

    async fn record_heartbeat(&self, agent_version: &str) {
        if let Err(e) = self.app.store.record_heartbeat(&self.agent_id, clean_version(agent_version), now_ms()).await {
            error!(error = %e, "cannot record heartbeat");
        }
    }
}

/// The size and limit of a frame the WebSocket layer refused as too large; `None` for any
/// other error.
fn oversized(e: &tokio_tungstenite::tungstenite::Error) -> Option<(usize, usize)> {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => Some((*size, *max_size)),
        _ => None,
    }
}

/// An agent version worth storing: trimmed, non-empty, at most 64 bytes.
fn clean_version(version: &str) -> Option<&str> {
    Some(version.trim()).filter(|v| !v.is_empty() && v.len() <= 64)
}
