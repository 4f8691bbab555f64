//! The session: one outbound WebSocket to the hub, `hello` first, heartbeats, dead-hub
//! detection, reconnects with full-jitter backoff, and token refresh.
//!
//! It owns the session rules of `docs/architecture.md` and nothing else: it moves frames
//! between the hub and the other rooms (a `job_assign` to the executor, the outbox queue to
//! the socket) and reports the connection's state. Jobs outlive sessions: a result waits in
//! the outbox queue until the next session. It must never run or judge a job, never panic
//! on hub input (every frame goes through `decode_hub_frame`), never log a token or a job's
//! payload, and never reconnect after the hub refused the credentials. The one answer it gives
//! to a job itself is `BAD_PAYLOAD` for a `job_assign` it cannot read or that is over the
//! protocol's payload limits: such a job never reaches the executor.

use crate::backoff::reconnect_delay;
use crate::credentials::Credentials;
use crate::error::AgentError;
use crate::executor::Executor;
use crate::hub_client::{unix_now, AccessToken, HubClient};
use crate::hub_url::HubUrl;
use crate::state::{AgentEvent, ConnectionState, StateHandle};
use edge_protocol::api::{close_code, WS_PATH};
use edge_protocol::{
    check_payload, decode_hub_frame, encode, job_assign_id, AgentFrame, Availability, ErrorCode, FrameError, HubFrame,
    JobError, JobSpec, JobStatus, MAX_FRAME_BYTES, PROTOCOL_VERSION,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// Whether this process has logged its first acknowledged heartbeat.
static FIRST_HB_ACK_SEEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set to a version: an agent running that version never connects (update rollback tests
/// only: a new version that cannot reach the hub, from one build).
pub const TEST_NEVER_CONNECT_VERSION: &str = "EDGE_AGENT_TEST_NEVER_CONNECT_VERSION";

/// Whether this process has had a `hb_ack` from the hub: the updater's probation ends there.
pub fn first_hb_ack_seen() -> bool {
    FIRST_HB_ACK_SEEN.load(std::sync::atomic::Ordering::Relaxed)
}
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const HELLO_ACK_TIMEOUT: Duration = Duration::from_secs(20);
/// The hub is presumed dead after this many heartbeat intervals without any frame.
const DEAD_AFTER_INTERVALS: u32 = 3;
/// Floor for a heartbeat interval, whatever the hub asks for.
const MIN_HB_INTERVAL: Duration = Duration::from_millis(100);
/// A 4401 right after getting a token means the clocks disagree, not that it expired:
/// back off instead of hammering the hub.
const FRESH_TOKEN: Duration = Duration::from_secs(30);
const TOKEN_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// On shutdown, how long cancelled jobs get to report before the socket closes.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = SplitSink<Socket, Message>;
type Stream = SplitStream<Socket>;

/// How a session ended, and so what the supervisor does next.
#[derive(Debug)]
enum SessionEnd {
    Shutdown,
    /// 4401: get a new token, reconnect.
    TokenExpired {
        reason: String,
    },
    /// 4403, or 401/403 from `/token`: stop until someone logs in.
    LoginRequired(String),
    /// Reconnecting cannot help (too old for the hub, replaced by a twin).
    Fatal(String),
    Dropped {
        reason: String,
        reached_hello_ack: bool,
    },
}

/// What a session loop is given by the service that composes it.
pub struct SessionConfig {
    pub state: StateHandle,
    pub credentials: Credentials,
    pub hub_url: HubUrl,
    pub hub: HubClient,
    pub executor: Executor,
    /// The loop's outbox queue: frames wait here across sessions until one takes them.
    pub outbox: mpsc::UnboundedReceiver<AgentFrame>,
    /// What `hello` announces: job types and protocol features.
    pub capabilities: Vec<String>,
    pub slots: u32,
    /// Our heartbeat interval; the hub's `hbIntervalMs` wins when it is smaller.
    pub hb_interval: Duration,
    pub paused: watch::Receiver<bool>,
}

/// Runs sessions, reconnecting, until `cancel` fires or the hub refuses this agent.
pub async fn run(config: SessionConfig, cancel: CancellationToken) {
    let mut supervisor = Supervisor {
        state: config.state,
        cancel,
        credentials: config.credentials,
        hub_url: config.hub_url,
        hub: config.hub,
        executor: config.executor,
        outbox: config.outbox,
        capabilities: config.capabilities,
        slots: config.slots.max(1),
        hb_interval: config.hb_interval,
        paused: config.paused,
        unsent: VecDeque::new(),
        recently_sent: VecDeque::new(),
        token: None,
    };
    supervisor.run().await;
}

pub(crate) fn stop_for_login(state: &StateHandle, reason: String) {
    tracing::warn!(%reason, "login required; not reconnecting");
    state.update(|s| {
        s.connection = ConnectionState::Offline;
        s.logged_in = false;
        s.last_error = Some(format!("login required: {reason}"));
    });
    state.emit(AgentEvent::Disconnected { reason: reason.clone(), retry_in_ms: None });
    state.emit(AgentEvent::LoginRequired { reason });
}

pub(crate) fn stop_with_error(state: &StateHandle, reason: String) {
    tracing::error!(%reason, "connection loop stopped");
    state.update(|s| {
        s.connection = ConnectionState::Offline;
        s.last_error = Some(reason.clone());
    });
    state.emit(AgentEvent::Disconnected { reason, retry_in_ms: None });
}

struct Supervisor {
    state: StateHandle,
    cancel: CancellationToken,
    credentials: Credentials,
    hub_url: HubUrl,
    hub: HubClient,
    executor: Executor,
    /// Results of finished jobs and other frames, kept across sessions until one takes them.
    outbox: mpsc::UnboundedReceiver<AgentFrame>,
    capabilities: Vec<String>,
    slots: u32,
    hb_interval: Duration,
    paused: watch::Receiver<bool>,
    /// Frames taken from `outbox` whose send failed; they go first next session.
    unsent: VecDeque<AgentFrame>,
    /// Results written to a socket in the last [`RESULT_REPLAY_WINDOW`]. A written frame can
    /// still die with the connection (or with a hub that crashed before recording it), so
    /// the next session sends them again; the hub treats a repeated result as a no-op.
    recently_sent: VecDeque<(Instant, AgentFrame)>,
    token: Option<AccessToken>,
}

/// How far back results are sent again after a reconnect.
const RESULT_REPLAY_WINDOW: Duration = Duration::from_secs(10);
/// Bound on the replay buffer, whatever the job rate.
const MAX_REPLAYED_RESULTS: usize = 4096;

impl Supervisor {
    async fn run(&mut self) {
        let mut failed_attempts: u32 = 0;
        loop {
            if self.cancel.is_cancelled() {
                break;
            }
            self.state.update(|s| s.connection = ConnectionState::Connecting);
            let end = match self.ensure_token().await {
                Ok(()) => self.session().await,
                Err(AgentError::LoginRequired(reason)) => SessionEnd::LoginRequired(reason),
                Err(e) => SessionEnd::Dropped { reason: format!("no token: {e}"), reached_hello_ack: false },
            };
            let reason = match end {
                SessionEnd::Shutdown => break,
                SessionEnd::LoginRequired(reason) => {
                    self.executor.cancel_all("the hub no longer accepts this agent");
                    stop_for_login(&self.state, reason);
                    return;
                }
                SessionEnd::Fatal(reason) => {
                    self.executor.cancel_all("the agent stopped");
                    stop_with_error(&self.state, reason);
                    return;
                }
                SessionEnd::TokenExpired { reason } => {
                    let fresh = self
                        .token
                        .as_ref()
                        .is_some_and(|t| unix_now() - t.obtained_at_unix < FRESH_TOKEN.as_secs() as i64);
                    self.token = None;
                    if !fresh {
                        tracing::info!("hub says the token expired; refreshing and reconnecting");
                        self.state.emit(AgentEvent::Disconnected { reason, retry_in_ms: Some(0) });
                        continue;
                    }
                    format!("{reason} (with a token obtained moments ago: are the clocks in sync?)")
                }
                SessionEnd::Dropped { reason, reached_hello_ack } => {
                    // A session that got as far as hello_ack was healthy: start over from a short delay.
                    if reached_hello_ack {
                        failed_attempts = 0;
                    }
                    reason
                }
            };
            failed_attempts = failed_attempts.saturating_add(1);
            let delay = reconnect_delay(failed_attempts);
            tracing::warn!(%reason, retry_in_ms = delay.as_millis() as u64, attempt = failed_attempts, "disconnected from the hub");
            self.state.update(|s| {
                s.connection = ConnectionState::Connecting;
                s.last_error = Some(reason.clone());
            });
            self.state.emit(AgentEvent::Disconnected { reason, retry_in_ms: Some(delay.as_millis() as u64) });
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.executor.cancel_all("the agent is shutting down");
        self.state.update(|s| s.connection = ConnectionState::Offline);
        self.state.emit(AgentEvent::Disconnected { reason: "agent stopped".into(), retry_in_ms: None });
    }

    async fn ensure_token(&mut self) -> Result<(), AgentError> {
        if self.token.as_ref().is_some_and(|t| !t.needs_refresh(unix_now())) {
            return Ok(());
        }
        let fetch = self.hub.fetch_token(&self.credentials);
        let token = tokio::select! {
            token = fetch => token?,
            _ = self.cancel.cancelled() => return Err(AgentError::Internal("shutting down".into())),
        };
        self.token = Some(token);
        Ok(())
    }

    async fn connect(&self) -> Result<Socket, SessionEnd> {
        let dropped = |reason: String| SessionEnd::Dropped { reason, reached_hello_ack: false };
        if std::env::var(TEST_NEVER_CONNECT_VERSION).is_ok_and(|v| v == crate::updater::running_version()) {
            return Err(dropped("test hook: this version never reaches the hub".into()));
        }
        let Some(token) = &self.token else {
            return Err(dropped("no token".into()));
        };
        // The JWT goes in the `Authorization` header, not the URL: proxies and access logs
        // record URLs. (The hub still takes `?token=` from prototype agents.)
        let mut request = self
            .hub_url
            .ws_endpoint(WS_PATH)
            .into_client_request()
            .map_err(|e| dropped(format!("bad WebSocket URL: {e}")))?;
        let bearer =
            tokio_tungstenite::tungstenite::http::HeaderValue::from_str(&format!("Bearer {}", token.jwt.expose()))
                .map_err(|_| dropped("the session token is not a valid header value".into()))?;
        request.headers_mut().insert(tokio_tungstenite::tungstenite::http::header::AUTHORIZATION, bearer);
        let connector = if self.hub_url.is_tls() {
            let tls = crate::tls::hub_client_config().map_err(|e| SessionEnd::Fatal(e.to_string()))?;
            tokio_tungstenite::Connector::Rustls(tls)
        } else {
            tokio_tungstenite::Connector::Plain
        };
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        let connecting = tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, Some(connector));
        let result = tokio::select! {
            result = tokio::time::timeout(CONNECT_TIMEOUT, connecting) => result,
            _ = self.cancel.cancelled() => return Err(SessionEnd::Shutdown),
        };
        match result {
            Err(_) => Err(dropped(format!("connecting took longer than {} s", CONNECT_TIMEOUT.as_secs()))),
            Ok(Ok((socket, _response))) => Ok(socket),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) if response.status().as_u16() == 401 => {
                Err(SessionEnd::TokenExpired { reason: "the hub refused the WebSocket token (401)".into() })
            }
            Ok(Err(e)) => Err(dropped(format!("cannot connect to {}: {e}", self.hub_url))),
        }
    }

    /// The jobs `hello` says this agent still holds: those running, and those whose result
    /// waits to be sent or was sent too recently to be sure the hub recorded it (a crash's
    /// journaled results among them). The hub lets every other lease of this agent run out.
    async fn claimed_jobs(&mut self) -> Vec<String> {
        // Running first: a job finishing after this answer has its result queued by the time
        // the queue is read below.
        let mut claimed = self.executor.running().await;
        while let Ok(frame) = self.outbox.try_recv() {
            self.unsent.push_back(frame);
        }
        let waiting = self.unsent.iter().chain(self.recently_sent.iter().map(|(_, frame)| frame));
        for frame in waiting {
            if let AgentFrame::JobResult { id, .. } | AgentFrame::JobAck { id } = frame {
                claimed.push(id.clone());
            }
        }
        claimed.sort();
        claimed.dedup();
        claimed
    }

    async fn session(&mut self) -> SessionEnd {
        let socket = match self.connect().await {
            Ok(socket) => socket,
            Err(end) => return end,
        };
        let (mut sink, mut stream) = socket.split();
        let running = self.claimed_jobs().await;
        let hello = AgentFrame::Hello {
            protocol: PROTOCOL_VERSION,
            v: crate::agent_version(),
            capabilities: self.capabilities.clone(),
            slots: self.slots,
            labels: Vec::new(),
            paused: *self.paused.borrow(),
            // Asked after the resumed jobs were handed over (commands run in order).
            running: Some(running),
        };
        if let Err(reason) = send(&mut sink, &hello).await {
            return SessionEnd::Dropped { reason, reached_hello_ack: false };
        }
        let hub_interval = match self.await_hello_ack(&mut sink, &mut stream).await {
            Ok(interval) => interval,
            Err(end) => return end,
        };
        let interval = hub_interval.min(self.hb_interval).max(MIN_HB_INTERVAL);
        tracing::info!(hub = %self.hub_url, hb_interval_ms = interval.as_millis() as u64, "connected");
        self.state.update(|s| {
            s.connection = ConnectionState::Online;
            s.last_error = None;
        });
        self.state.emit(AgentEvent::Connected { hub_url: self.hub_url.to_string() });

        let replay_after = Instant::now().checked_sub(RESULT_REPLAY_WINDOW);
        for (sent_at, frame) in std::mem::take(&mut self.recently_sent).into_iter().rev() {
            if replay_after.is_none_or(|after| sent_at >= after) {
                self.unsent.push_front(frame);
            }
        }
        while let Some(frame) = self.unsent.pop_front() {
            if let Err(reason) = send(&mut sink, &frame).await {
                self.unsent.push_front(frame);
                return SessionEnd::Dropped { reason, reached_hello_ack: true };
            }
            self.remember_sent(frame);
        }
        self.online(sink, stream, interval).await
    }

    /// Waits for `hello_ack`, answering malformed frames, and returns the hub's interval.
    async fn await_hello_ack(&mut self, sink: &mut Sink, stream: &mut Stream) -> Result<Duration, SessionEnd> {
        let deadline = Instant::now() + HELLO_ACK_TIMEOUT;
        let dropped = |reason: String| SessionEnd::Dropped { reason, reached_hello_ack: false };
        loop {
            let message = tokio::select! {
                _ = self.cancel.cancelled() => return Err(SessionEnd::Shutdown),
                _ = tokio::time::sleep_until(deadline) => return Err(dropped("no hello_ack from the hub".into())),
                message = stream.next() => message,
            };
            match incoming(message) {
                Incoming::Frame(HubFrame::HelloAck { hb_interval_ms, agent_id, protocol, hub, limits }) => {
                    if agent_id != self.credentials.agent_id {
                        tracing::warn!(%agent_id, ours = %self.credentials.agent_id, "hub acknowledged a different agent id");
                    }
                    // Every hello_ack, so a hub that drops its limits lifts them again.
                    let limits = limits.unwrap_or_default();
                    if limits != Default::default() {
                        tracing::info!(?limits, "the hub lowers this agent's caps (never above the person's own)");
                    }
                    self.executor.set_hub_limits(limits);
                    tracing::debug!(%hub, protocol, "hello_ack");
                    NEGOTIATED_PROTOCOL.store(protocol, std::sync::atomic::Ordering::Relaxed);
                    return Ok(Duration::from_millis(hb_interval_ms));
                }
                Incoming::Frame(HubFrame::Error(e)) => {
                    tracing::warn!(code = %e.code, message = %e.message, "hub sent an error frame")
                }
                Incoming::Frame(other) => tracing::warn!(frame = other.kind(), "frame before hello_ack ignored"),
                // A job before hello_ack is not ours yet (the hub takes it back): only say
                // that the frame was bad.
                Incoming::Bad(error) | Incoming::UnreadableJob { error, .. } => {
                    if let Err(reason) = reply_to_bad_frame(sink, &error).await {
                        return Err(dropped(reason));
                    }
                }
                Incoming::Control => {}
                Incoming::Closed(end) => return Err(end_for_close(end, false)),
                Incoming::TooBig(what) => return Err(close_too_big(sink, what, false).await),
            }
        }
    }

    async fn online(&mut self, mut sink: Sink, mut stream: Stream, interval: Duration) -> SessionEnd {
        let dead_after = interval * DEAD_AFTER_INTERVALS;
        // The first heartbeat goes out at once: it proves the session end to end and tells
        // the person (and the startup benchmark) that the agent is really online.
        let mut heartbeat = tokio::time::interval_at(Instant::now(), interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut paused_rx = self.paused.clone();
        paused_rx.mark_unchanged();
        let mut refresh: Option<tokio::task::JoinHandle<Result<AccessToken, AgentError>>> = None;
        let mut refresh_at = self.next_refresh_at();
        let dropped = |reason: String| SessionEnd::Dropped { reason, reached_hello_ack: true };

        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    self.flush_on_shutdown(&mut sink).await;
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "agent shutting down".into() }))).await;
                    return SessionEnd::Shutdown;
                }
                message = stream.next() => {
                    last_heard = Instant::now();
                    match incoming(message) {
                        Incoming::Frame(frame) => {
                            if let Err(reason) = self.handle_frame(&mut sink, frame).await {
                                return dropped(reason);
                            }
                        }
                        Incoming::Bad(error) => {
                            if let Err(reason) = reply_to_bad_frame(&mut sink, &error).await {
                                return dropped(reason);
                            }
                        }
                        Incoming::UnreadableJob { id, error } => {
                            let message = format!("the agent could not read this job_assign: {error}");
                            if let Err(reason) = self.refuse_job(&mut sink, id, message).await {
                                return dropped(reason);
                            }
                        }
                        Incoming::Control => {}
                        Incoming::Closed(end) => return end_for_close(end, true),
                        Incoming::TooBig(what) => return close_too_big(&mut sink, what, true).await,
                    }
                }
                _ = heartbeat.tick() => {
                    let hb = AgentFrame::Hb { v: crate::agent_version(), ts: unix_now() };
                    if let Err(reason) = send(&mut sink, &hb).await {
                        return dropped(reason);
                    }
                }
                _ = tokio::time::sleep_until(last_heard + dead_after) => {
                    return dropped(format!("no frame from the hub for {} ms", dead_after.as_millis()));
                }
                Some(frame) = self.outbox.recv() => {
                    if let Err(reason) = send(&mut sink, &frame).await {
                        self.unsent.push_back(frame);
                        return dropped(reason);
                    }
                    self.remember_sent(frame);
                }
                Ok(()) = paused_rx.changed() => {
                    let paused = *paused_rx.borrow_and_update();
                    let frame = AgentFrame::Availability(Availability { paused, slots: self.slots });
                    if let Err(reason) = send(&mut sink, &frame).await {
                        return dropped(reason);
                    }
                }
                _ = tokio::time::sleep_until(refresh_at), if refresh.is_none() => {
                    let hub = self.hub.clone();
                    let credentials = self.credentials.clone();
                    refresh = Some(tokio::spawn(async move { hub.fetch_token(&credentials).await }));
                }
                Some(outcome) = async { match refresh.as_mut() { Some(task) => Some(task.await), None => None } } => {
                    refresh = None;
                    match outcome {
                        Ok(Ok(token)) => {
                            tracing::debug!(expires_at = token.expires_at_unix, "token refreshed");
                            self.token = Some(token);
                            refresh_at = self.next_refresh_at();
                        }
                        Ok(Err(AgentError::LoginRequired(reason))) => return SessionEnd::LoginRequired(reason),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "token refresh failed; will retry");
                            refresh_at = Instant::now() + TOKEN_RETRY_AFTER_FAILURE;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "token refresh task failed; will retry");
                            refresh_at = Instant::now() + TOKEN_RETRY_AFTER_FAILURE;
                        }
                    }
                }
            }
        }
    }

    fn next_refresh_at(&self) -> Instant {
        let seconds = self.token.as_ref().map_or(0, |t| (t.refresh_at_unix() - unix_now()).max(0));
        Instant::now() + Duration::from_secs(seconds as u64)
    }

    fn remember_sent(&mut self, frame: AgentFrame) {
        if !matches!(frame, AgentFrame::JobResult { .. }) {
            return;
        }
        let now = Instant::now();
        while self.recently_sent.len() >= MAX_REPLAYED_RESULTS
            || self.recently_sent.front().is_some_and(|(at, _)| now.duration_since(*at) > RESULT_REPLAY_WINDOW)
        {
            self.recently_sent.pop_front();
        }
        self.recently_sent.push_back((now, frame));
    }

    async fn handle_frame(&mut self, sink: &mut Sink, frame: HubFrame) -> Result<(), String> {
        match frame {
            HubFrame::JobAssign { job } => self.on_job_assign(sink, job).await,
            HubFrame::JobCancel { id } => {
                self.executor.cancel(&id, "cancelled by the hub");
                Ok(())
            }
            HubFrame::HbAck { .. } => {
                if !FIRST_HB_ACK_SEEN.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    // The startup benchmark (`cargo xtask bench agent`) waits for this message.
                    tracing::info!("first hb_ack: the hub acknowledged this agent's heartbeat");
                }
                Ok(())
            }
            HubFrame::HelloAck { .. } => {
                tracing::warn!("second hello_ack ignored");
                Ok(())
            }
            HubFrame::Error(e) => {
                tracing::warn!(code = %e.code, message = %e.message, "hub sent an error frame");
                Ok(())
            }
        }
    }

    async fn on_job_assign(&mut self, sink: &mut Sink, job: JobSpec) -> Result<(), String> {
        tracing::info!(job_id = %job.job_id, job_type = %job.job_type, "job assigned");
        // The hub applies the same limits at submit; a job over them (an older or a hostile
        // hub) is answered here rather than handed to a runner.
        if let Err(e) = check_payload(&job.payload) {
            return self.refuse_job(sink, job.job_id, e.to_string()).await;
        }
        // Ack in every case: the hub expects an ack before a result, and a job the executor
        // refuses is answered by its result right away.
        send(sink, &AgentFrame::JobAck { id: job.job_id.clone() }).await?;
        self.executor.assign(job);
        Ok(())
    }

    /// Answers a job this agent cannot read with `BAD_PAYLOAD` (not retried), so the hub
    /// ends it at once instead of holding it, and this agent's slot, until someone cancels
    /// it. The job never reaches the executor, so it takes no slot here.
    async fn refuse_job(&mut self, sink: &mut Sink, id: String, message: String) -> Result<(), String> {
        // The message names the problem, never the payload.
        tracing::warn!(job_id = %id, %message, "job refused: BAD_PAYLOAD");
        send(sink, &AgentFrame::JobAck { id: id.clone() }).await?;
        let result = AgentFrame::JobResult {
            id,
            status: JobStatus::Error,
            data: None,
            err: Some(JobError::new(ErrorCode::BadPayload, message)),
        };
        if let Err(reason) = send(sink, &result).await {
            self.unsent.push_back(result);
            return Err(reason);
        }
        self.remember_sent(result);
        Ok(())
    }

    /// Running jobs are cancelled; their CANCELLED results get a moment to reach the hub.
    async fn flush_on_shutdown(&mut self, sink: &mut Sink) {
        self.executor.cancel_all("the agent is shutting down");
        let deadline = Instant::now() + SHUTDOWN_FLUSH;
        while let Some(frame) = self.unsent.pop_front() {
            if send(sink, &frame).await.is_err() {
                return;
            }
        }
        loop {
            let next = tokio::select! {
                frame = self.outbox.recv() => frame,
                _ = tokio::time::sleep_until(deadline) => None,
                _ = tokio::time::sleep(Duration::from_millis(50)), if self.executor.busy() == 0 => None,
            };
            let Some(frame) = next else { return };
            if send(sink, &frame).await.is_err() {
                return;
            }
        }
    }
}

enum Incoming {
    Frame(HubFrame),
    Bad(FrameError),
    /// A `job_assign` that does not decode but whose job id could be read.
    UnreadableJob {
        id: String,
        error: FrameError,
    },
    Control,
    Closed(Option<(u16, String)>),
    /// A message over [`MAX_FRAME_BYTES`]: the session ends with close code 1009.
    TooBig(String),
}

fn incoming(message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Incoming {
    match message {
        Some(Ok(Message::Text(text))) => match decode_hub_frame(text.as_str()) {
            Ok(frame) => Incoming::Frame(frame),
            Err(error) => match job_assign_id(text.as_str()) {
                Some(id) => Incoming::UnreadableJob { id, error },
                None => Incoming::Bad(error),
            },
        },
        Some(Ok(Message::Binary(_))) => Incoming::Bad(FrameError::Binary),
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Incoming::Control,
        Some(Ok(Message::Close(frame))) => Incoming::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string()))),
        Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(e))) => Incoming::TooBig(e.to_string()),
        Some(Err(e)) => Incoming::Closed(Some((0, e.to_string()))),
        None => Incoming::Closed(None),
    }
}

fn end_for_close(close: Option<(u16, String)>, reached_hello_ack: bool) -> SessionEnd {
    let Some((code, reason)) = close else {
        return SessionEnd::Dropped { reason: "the hub closed the connection".into(), reached_hello_ack };
    };
    let described =
        if reason.is_empty() { format!("close code {code}") } else { format!("{reason} (close code {code})") };
    match code {
        close_code::TOKEN_EXPIRED => SessionEnd::TokenExpired { reason: described },
        close_code::TOKEN_INVALID => SessionEnd::LoginRequired(described),
        close_code::UNSUPPORTED_VERSION => {
            SessionEnd::Fatal(format!("the hub does not support this agent version ({described}): update edge-agent"))
        }
        close_code::REPLACED => SessionEnd::Fatal(format!(
            "another edge-agent with the same credentials connected, so this one stopped ({described})"
        )),
        0 => SessionEnd::Dropped { reason: format!("connection lost: {reason}"), reached_hello_ack },
        _ => SessionEnd::Dropped { reason: format!("the hub closed the connection: {described}"), reached_hello_ack },
    }
}

/// The hub sent more than the protocol allows in one message: say so with close code 1009
/// (message too big) instead of dropping the connection without a word, and reconnect.
async fn close_too_big(sink: &mut Sink, what: String, reached_hello_ack: bool) -> SessionEnd {
    let reason = format!("frame over the {MAX_FRAME_BYTES}-byte limit ({what})");
    tracing::warn!(%reason, "closing the session with 1009");
    // A close reason is at most 123 bytes.
    let mut close_reason = reason.clone();
    while close_reason.len() > 123 {
        close_reason.pop();
    }
    let close = CloseFrame { code: CloseCode::Size, reason: close_reason.into() };
    let _ = sink.send(Message::Close(Some(close))).await;
    SessionEnd::Dropped { reason: format!("the hub sent a {reason}"), reached_hello_ack }
}

async fn reply_to_bad_frame(sink: &mut Sink, error: &FrameError) -> Result<(), String> {
    tracing::warn!(code = error.code(), error = %error, "malformed frame from the hub");
    send(sink, &AgentFrame::Error(error.to_error_frame())).await
}

/// The version the current session speaks; `job_log` needs 2.
static NEGOTIATED_PROTOCOL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

async fn send(sink: &mut Sink, frame: &AgentFrame) -> Result<(), String> {
    if matches!(frame, AgentFrame::JobLog { .. })
        && NEGOTIATED_PROTOCOL.load(std::sync::atomic::Ordering::Relaxed) < edge_protocol::JOB_LOG_VERSION
    {
        return Ok(());
    }
    // `job_progress` came with version 1: a prototype hub (0) would answer it as unknown.
    if matches!(frame, AgentFrame::JobProgress { .. })
        && NEGOTIATED_PROTOCOL.load(std::sync::atomic::Ordering::Relaxed) < 1
    {
        return Ok(());
    }
    tracing::trace!(frame = frame.kind(), "send");
    sink.send(Message::text(encode(frame))).await.map_err(|e| format!("sending {} failed: {e}", frame.kind()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_map_to_what_the_supervisor_does() {
        assert!(matches!(end_for_close(Some((4401, "expired".into())), true), SessionEnd::TokenExpired { .. }));
        assert!(matches!(end_for_close(Some((4403, "forged".into())), true), SessionEnd::LoginRequired(_)));
        assert!(matches!(end_for_close(Some((4426, String::new())), true), SessionEnd::Fatal(_)));
        assert!(matches!(
            end_for_close(Some((1000, String::new())), true),
            SessionEnd::Dropped { reached_hello_ack: true, .. }
        ));
        assert!(matches!(end_for_close(None, false), SessionEnd::Dropped { reached_hello_ack: false, .. }));
    }
}
