//! The connection loop: one outbound WebSocket to the hub, `hello` first, heartbeats,
//! dead-hub detection, reconnects with full-jitter backoff, token refresh, and dispatching
//! jobs to runners.
//!
//! It owns the session rules of `docs/architecture.md`. Jobs outlive sessions: a job keeps
//! running when the socket drops and its result waits in memory until the next session.
//! It must never panic on hub input (every frame goes through `decode_hub_frame`), never
//! log a token or a job's payload, and never reconnect after the hub refused the
//! credentials.

use crate::credentials::Credentials;
use crate::error::AgentError;
use crate::hub_client::{unix_now, AccessToken, HubClient};
use crate::hub_url::HubUrl;
use crate::jobs::{self, JobContext};
use crate::service::{AgentEvent, ConnectionState, Inner, JobRecord, JobRunStatus, RECENT_JOBS};
use edge_protocol::api::{close_code, WS_PATH};
use edge_protocol::errors::full_jitter_backoff;
use edge_protocol::{
    capability, decode_hub_frame, encode, AgentFrame, Availability, ErrorCode, FrameError, HubFrame, JobError, JobSpec,
    JobStatus, MAX_FRAME_BYTES, PROTOCOL_VERSION,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const BACKOFF_CAP: Duration = edge_protocol::errors::MAX_RETRY_BACKOFF;
/// Whether this process has logged its first acknowledged heartbeat.
static FIRST_HB_ACK_SEEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
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

/// Backoff before reconnect attempt `attempt` (1-based): full jitter, capped at 5 minutes.
pub fn reconnect_delay(attempt: u32) -> Duration {
    full_jitter_backoff(attempt, BACKOFF_BASE, BACKOFF_CAP, rand::random::<f64>())
}

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

pub(crate) async fn run(inner: Arc<Inner>, cancel: CancellationToken) {
    inner.update(|s| {
        s.connection = ConnectionState::Connecting;
        s.last_error = None;
    });
    let credentials = match inner.load_credentials().await {
        Ok(Some(credentials)) => credentials,
        Ok(None) => return stop_for_login(&inner, "not logged in".into()),
        Err(e) => {
            let reason = e.to_string();
            inner.update(|s| {
                s.connection = ConnectionState::Offline;
                s.last_error = Some(reason.clone());
            });
            inner.emit(AgentEvent::Disconnected { reason, retry_in_ms: None });
            return;
        }
    };
    let setup = HubClient::new().and_then(|hub| Ok((hub, JobContext::new()?)));
    let (hub, job_context) = match setup {
        Ok(parts) => parts,
        Err(e) => return stop_with_error(&inner, e.to_string()),
    };
    let hub_url = match HubUrl::parse(&credentials.hub_url) {
        Ok(url) => url,
        Err(e) => return stop_with_error(&inner, e.to_string()),
    };
    let (results_tx, results_rx) = mpsc::unbounded_channel();
    let bundles = crate::bundles::start(&inner.settings.data_dir, &credentials, &hub_url, &hub, &results_tx, &cancel);
    inner.set_frames(results_tx.clone());
    let browser = inner.browser();
    let bundles = bundles.map(|b| b.with_browser(browser.available().then(|| browser.clone())));
    let mut context = job_context.with_bundles(bundles, results_tx.clone());
    if browser.available() {
        context.browser = Some((browser.clone(), inner.settings.data_dir.clone()));
    } else {
        tracing::warn!("no Chrome, Chromium or Edge found: browser jobs are not announced to the hub");
    }
    let jobs = Jobs {
        inner: Arc::clone(&inner),
        context,
        slots: Arc::new(Semaphore::new(inner.settings.slots.max(1) as usize)),
        running: Arc::new(Mutex::new(HashMap::new())),
        finished: Arc::new(Mutex::new(FinishedJobs::default())),
        results_tx,
    };
    if jobs.context.browser.is_some() {
        // A broadcast the previous process was killed in: resume it now and report it under
        // its job id (the hub still holds it as running under this agent's lease).
        for value in browser.unfinished_jobs() {
            match serde_json::from_value::<JobSpec>(value) {
                Ok(job) => {
                    tracing::info!(job_id = %job.job_id, "resuming an interrupted broadcast from its checkpoint");
                    jobs.start(job);
                }
                Err(e) => tracing::warn!(error = %e, "unreadable job in a broadcast checkpoint"),
            }
        }
    }
    let mut supervisor = Supervisor {
        inner,
        cancel,
        credentials,
        hub_url,
        hub,
        jobs,
        results_rx,
        unsent: VecDeque::new(),
        recently_sent: VecDeque::new(),
        token: None,
    };
    supervisor.run().await;
}

fn stop_for_login(inner: &Inner, reason: String) {
    tracing::warn!(%reason, "login required; not reconnecting");
    inner.update(|s| {
        s.connection = ConnectionState::Offline;
        s.logged_in = false;
        s.last_error = Some(format!("login required: {reason}"));
    });
    inner.emit(AgentEvent::Disconnected { reason: reason.clone(), retry_in_ms: None });
    inner.emit(AgentEvent::LoginRequired { reason });
}

fn stop_with_error(inner: &Inner, reason: String) {
    tracing::error!(%reason, "connection loop stopped");
    inner.update(|s| {
        s.connection = ConnectionState::Offline;
        s.last_error = Some(reason.clone());
    });
    inner.emit(AgentEvent::Disconnected { reason, retry_in_ms: None });
}

struct Supervisor {
    inner: Arc<Inner>,
    cancel: CancellationToken,
    credentials: Credentials,
    hub_url: HubUrl,
    hub: HubClient,
    jobs: Jobs,
    /// Results of finished jobs, kept across sessions until a session takes them.
    results_rx: mpsc::UnboundedReceiver<AgentFrame>,
    /// Frames taken from `results_rx` whose send failed; they go first next session.
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
/// How long a succeeded job's result is remembered, so the same job assigned again (the hub
/// lost our ack or result in a crash) is answered with it instead of being run a second time.
const FINISHED_MEMORY: Duration = Duration::from_secs(15 * 60);
const MAX_FINISHED_REMEMBERED: usize = 4096;

impl Supervisor {
    async fn run(&mut self) {
        let mut failed_attempts: u32 = 0;
        loop {
            if self.cancel.is_cancelled() {
                break;
            }
            self.inner.update(|s| s.connection = ConnectionState::Connecting);
            let end = match self.ensure_token().await {
                Ok(()) => self.session().await,
                Err(AgentError::LoginRequired(reason)) => SessionEnd::LoginRequired(reason),
                Err(e) => SessionEnd::Dropped { reason: format!("no token: {e}"), reached_hello_ack: false },
            };
            let reason = match end {
                SessionEnd::Shutdown => break,
                SessionEnd::LoginRequired(reason) => {
                    self.jobs.cancel_all("the hub no longer accepts this agent");
                    stop_for_login(&self.inner, reason);
                    return;
                }
                SessionEnd::Fatal(reason) => {
                    self.jobs.cancel_all("the agent stopped");
                    stop_with_error(&self.inner, reason);
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
                        self.inner.emit(AgentEvent::Disconnected { reason, retry_in_ms: Some(0) });
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
            self.inner.update(|s| {
                s.connection = ConnectionState::Connecting;
                s.last_error = Some(reason.clone());
            });
            self.inner.emit(AgentEvent::Disconnected { reason, retry_in_ms: Some(delay.as_millis() as u64) });
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.jobs.cancel_all("the agent is shutting down");
        self.inner.update(|s| s.connection = ConnectionState::Offline);
        self.inner.emit(AgentEvent::Disconnected { reason: "agent stopped".into(), retry_in_ms: None });
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
        let Some(token) = &self.token else {
            return Err(dropped("no token".into()));
        };
        // The URL carries the JWT: it is built here, used once, and never logged.
        let url = format!(
            "{}?token={}",
            self.hub_url.ws_endpoint(WS_PATH),
            url::form_urlencoded::byte_serialize(token.jwt.expose().as_bytes()).collect::<String>()
        );
        let request = url.into_client_request().map_err(|e| dropped(format!("bad WebSocket URL: {e}")))?;
        let connector = if self.hub_url.is_tls() {
            let tls = crate::tls::client_config().map_err(|e| SessionEnd::Fatal(e.to_string()))?;
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

    async fn session(&mut self) -> SessionEnd {
        let socket = match self.connect().await {
            Ok(socket) => socket,
            Err(end) => return end,
        };
        let (mut sink, mut stream) = socket.split();
        let mut capabilities: Vec<String> = vec![
            capability::HTTP_REQUEST.into(),
            capability::JOB_CANCEL.into(),
            capability::PAUSE.into(),
            capability::BUNDLE.into(),
            capability::JOB_LOG.into(),
        ];
        if self.jobs.context.browser.is_some() {
            capabilities.extend(edge_protocol::jobs::BROWSER_JOB_TYPES.iter().map(|t| (*t).to_owned()));
        }
        let hello = AgentFrame::Hello {
            protocol: PROTOCOL_VERSION,
            v: crate::agent_version(),
            capabilities,
            slots: self.inner.settings.slots.max(1),
            labels: Vec::new(),
            paused: *self.inner.paused.borrow(),
        };
        if let Err(reason) = send(&mut sink, &hello).await {
            return SessionEnd::Dropped { reason, reached_hello_ack: false };
        }
        let hub_interval = match self.await_hello_ack(&mut sink, &mut stream).await {
            Ok(interval) => interval,
            Err(end) => return end,
        };
        let interval = hub_interval.min(self.inner.settings.hb_interval).max(MIN_HB_INTERVAL);
        tracing::info!(hub = %self.hub_url, hb_interval_ms = interval.as_millis() as u64, "connected");
        self.inner.update(|s| {
            s.connection = ConnectionState::Online;
            s.last_error = None;
        });
        self.inner.emit(AgentEvent::Connected { hub_url: self.hub_url.to_string() });

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
                Incoming::Frame(HubFrame::HelloAck { hb_interval_ms, agent_id, protocol, hub }) => {
                    if agent_id != self.credentials.agent_id {
                        tracing::warn!(%agent_id, ours = %self.credentials.agent_id, "hub acknowledged a different agent id");
                    }
                    tracing::debug!(%hub, protocol, "hello_ack");
                    NEGOTIATED_PROTOCOL.store(protocol, std::sync::atomic::Ordering::Relaxed);
                    return Ok(Duration::from_millis(hb_interval_ms));
                }
                Incoming::Frame(HubFrame::Error(e)) => {
                    tracing::warn!(code = %e.code, message = %e.message, "hub sent an error frame")
                }
                Incoming::Frame(other) => tracing::warn!(frame = other.kind(), "frame before hello_ack ignored"),
                Incoming::Bad(error) => {
                    if let Err(reason) = reply_to_bad_frame(sink, &error).await {
                        return Err(dropped(reason));
                    }
                }
                Incoming::Control => {}
                Incoming::Closed(end) => return Err(end_for_close(end, false)),
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
        let mut paused_rx = self.inner.paused.subscribe();
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
                        Incoming::Control => {}
                        Incoming::Closed(end) => return end_for_close(end, true),
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
                Some(frame) = self.results_rx.recv() => {
                    if let Err(reason) = send(&mut sink, &frame).await {
                        self.unsent.push_back(frame);
                        return dropped(reason);
                    }
                    self.remember_sent(frame);
                }
                Ok(()) = paused_rx.changed() => {
                    let paused = *paused_rx.borrow_and_update();
                    let frame = AgentFrame::Availability(Availability { paused, slots: self.inner.settings.slots.max(1) });
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
                if !self.jobs.cancel(&id, "cancelled by the hub") {
                    tracing::info!(job_id = %id, "job_cancel for a job that is not running");
                }
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
        // Ack in every case: the hub expects an ack before a result, and a job we refuse
        // is answered by its result right away.
        send(sink, &AgentFrame::JobAck { id: job.job_id.clone() }).await?;
        if *self.inner.paused.borrow() {
            let error = JobError::new(ErrorCode::AgentPaused, "the agent is paused by its user");
            self.jobs.record_refused(&job, &error);
            return send(sink, &result_frame(&job.job_id, Err(error))).await;
        }
        self.jobs.start(job);
        Ok(())
    }

    /// Running jobs are cancelled; their CANCELLED results get a moment to reach the hub.
    async fn flush_on_shutdown(&mut self, sink: &mut Sink) {
        self.jobs.cancel_all("the agent is shutting down");
        let deadline = Instant::now() + SHUTDOWN_FLUSH;
        while let Some(frame) = self.unsent.pop_front() {
            if send(sink, &frame).await.is_err() {
                return;
            }
        }
        loop {
            let next = tokio::select! {
                frame = self.results_rx.recv() => frame,
                _ = tokio::time::sleep_until(deadline) => None,
                _ = tokio::time::sleep(Duration::from_millis(50)), if self.jobs.running_count() == 0 => None,
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
    Control,
    Closed(Option<(u16, String)>),
}

fn incoming(message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Incoming {
    match message {
        Some(Ok(Message::Text(text))) => match decode_hub_frame(text.as_str()) {
            Ok(frame) => Incoming::Frame(frame),
            Err(error) => Incoming::Bad(error),
        },
        Some(Ok(Message::Binary(_))) => Incoming::Bad(FrameError::Binary),
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Incoming::Control,
        Some(Ok(Message::Close(frame))) => Incoming::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string()))),
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
    tracing::trace!(frame = frame.kind(), "send");
    sink.send(Message::text(encode(frame))).await.map_err(|e| format!("sending {} failed: {e}", frame.kind()))
}

fn result_frame(id: &str, outcome: Result<serde_json::Value, JobError>) -> AgentFrame {
    match outcome {
        Ok(data) => AgentFrame::JobResult { id: id.to_owned(), status: JobStatus::Ok, data: Some(data), err: None },
        Err(err) => AgentFrame::JobResult { id: id.to_owned(), status: JobStatus::Error, data: None, err: Some(err) },
    }
}

struct RunningJob {
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

/// Job bookkeeping that outlives sessions.
struct Jobs {
    inner: Arc<Inner>,
    context: JobContext,
    slots: Arc<Semaphore>,
    running: Arc<Mutex<HashMap<String, RunningJob>>>,
    /// Results of recently finished jobs; see [`FINISHED_MEMORY`].
    finished: Arc<Mutex<FinishedJobs>>,
    results_tx: mpsc::UnboundedSender<AgentFrame>,
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

impl Jobs {
    fn running_count(&self) -> usize {
        self.running.lock().map(|r| r.len()).unwrap_or_default()
    }

    fn cancel(&self, id: &str, reason: &str) -> bool {
        let Ok(running) = self.running.lock() else { return false };
        let Some(job) = running.get(id) else { return false };
        if let Ok(mut slot) = job.reason.lock() {
            slot.get_or_insert_with(|| reason.to_owned());
        }
        job.cancel.cancel();
        true
    }

    fn cancel_all(&self, reason: &str) {
        let ids: Vec<String> = self.running.lock().map(|r| r.keys().cloned().collect()).unwrap_or_default();
        for id in ids {
            self.cancel(&id, reason);
        }
    }

    fn record_refused(&self, job: &JobSpec, error: &JobError) {
        let now = crate::now_rfc3339();
        let message = error.message.clone().unwrap_or_default();
        push_record(
            &self.inner,
            JobRecord {
                id: job.job_id.clone(),
                job_type: job.job_type.clone(),
                status: JobRunStatus::Failed,
                started_at: now.clone(),
                finished_at: Some(now),
                error_code: Some(error.code.to_string()),
                message: Some(message.clone()),
            },
        );
        self.inner.emit(AgentEvent::JobFailed {
            id: job.job_id.clone(),
            job_type: job.job_type.clone(),
            code: error.code.to_string(),
            message,
        });
    }

    fn start(&self, job: JobSpec) {
        let cancel = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        {
            let Ok(mut running) = self.running.lock() else { return };
            if running.contains_key(&job.job_id) {
                tracing::info!(job_id = %job.job_id, "job already running; duplicate assignment ignored");
                return;
            }
            // Checked under the `running` lock, which a finishing job holds while it moves
            // from `running` to `finished`, so no assignment slips between the two.
            let cached = self.finished.lock().ok().and_then(|f| f.frames.get(&job.job_id).cloned());
            if let Some(frame) = cached {
                tracing::info!(job_id = %job.job_id, "job already finished here; its result is sent again instead of running it twice");
                let _ = self.results_tx.send(frame);
                return;
            }
            running.insert(job.job_id.clone(), RunningJob { cancel: cancel.clone(), reason: Arc::clone(&reason) });
        }
        let busy = self.running_count() as u32;
        self.inner.update(|s| s.busy = busy);

        let inner = Arc::clone(&self.inner);
        let context = self.context.clone();
        let slots = Arc::clone(&self.slots);
        let running = Arc::clone(&self.running);
        let finished = Arc::clone(&self.finished);
        let results_tx = self.results_tx.clone();
        tokio::spawn(async move {
            let cancelled = || {
                let why = reason.lock().ok().and_then(|r| r.clone()).unwrap_or_else(|| "cancelled".into());
                JobError::new(ErrorCode::Cancelled, why)
            };
            let permit = tokio::select! {
                permit = slots.acquire_owned() => permit.ok(),
                _ = cancel.cancelled() => None,
            };
            push_record(
                &inner,
                JobRecord {
                    id: job.job_id.clone(),
                    job_type: job.job_type.clone(),
                    status: JobRunStatus::Running,
                    started_at: crate::now_rfc3339(),
                    finished_at: None,
                    error_code: None,
                    message: None,
                },
            );
            inner.emit(AgentEvent::JobStarted { id: job.job_id.clone(), job_type: job.job_type.clone() });
            let (outcome, error_data) = match permit {
                None => (Err(cancelled()), None),
                Some(_permit) => jobs::run_with_data(&context, &job, &cancel, cancelled).await,
            };
            let mut frame = result_frame(&job.job_id, outcome.clone());
            // A failed job may still report data (a partial broadcast's sentRecipients).
            if let (AgentFrame::JobResult { data: slot @ None, .. }, Some(data)) = (&mut frame, error_data) {
                *slot = Some(data);
            }
            let mut outcome = outcome;
            let size = encode(&frame).len();
            if size > MAX_FRAME_BYTES {
                let error = JobError::new(
                    jobs::http_request::response_too_large_code(),
                    format!("the result is {size} bytes, over the {MAX_FRAME_BYTES}-byte frame limit"),
                );
                frame = result_frame(&job.job_id, Err(error.clone()));
                outcome = Err(error);
            }
            if let Ok(mut running) = running.lock() {
                // Only successes: a failed job may be retried on purpose, and must run again.
                if outcome.is_ok() {
                    if let Ok(mut finished) = finished.lock() {
                        finished.insert(job.job_id.clone(), frame.clone());
                    }
                }
                running.remove(&job.job_id);
            }
            let busy = running.lock().map(|r| r.len() as u32).unwrap_or_default();
            finish_record(&inner, &job, &outcome, busy);
            match &outcome {
                Ok(_) => {
                    tracing::info!(job_id = %job.job_id, "job succeeded");
                    inner.emit(AgentEvent::JobFinished { id: job.job_id.clone(), job_type: job.job_type.clone() });
                }
                Err(error) => {
                    tracing::info!(job_id = %job.job_id, code = %error.code, "job failed");
                    inner.emit(AgentEvent::JobFailed {
                        id: job.job_id.clone(),
                        job_type: job.job_type.clone(),
                        code: error.code.to_string(),
                        message: error.message.clone().unwrap_or_default(),
                    });
                }
            }
            // The receiver lives as long as the loop; after it ends nobody can deliver.
            let _ = results_tx.send(frame);
        });
    }
}

fn push_record(inner: &Inner, record: JobRecord) {
    inner.update(|s| {
        s.recent_jobs.retain(|r| r.id != record.id);
        s.recent_jobs.insert(0, record);
        s.recent_jobs.truncate(RECENT_JOBS);
    });
}

fn finish_record(inner: &Inner, job: &JobSpec, outcome: &Result<serde_json::Value, JobError>, busy: u32) {
    let finished_at = crate::now_rfc3339();
    // A job that succeeds on a site clears its login requirement without a browser event
    // (the login may have happened in another process: `edge-agent browser login`).
    let browser = inner.browser_status();
    inner.update(|s| {
        s.busy = busy;
        if browser.is_some() {
            s.browser = browser;
        }
        if let Some(record) = s.recent_jobs.iter_mut().find(|r| r.id == job.job_id) {
            record.finished_at = Some(finished_at);
            match outcome {
                Ok(_) => record.status = JobRunStatus::Succeeded,
                Err(error) => {
                    record.status = JobRunStatus::Failed;
                    record.error_code = Some(error.code.to_string());
                    record.message = error.message.clone();
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_stays_within_full_jitter_bounds() {
        for attempt in 1..=40u32 {
            let ceiling =
                BACKOFF_BASE.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(31))).min(BACKOFF_CAP);
            for _ in 0..200 {
                let delay = reconnect_delay(attempt);
                assert!(delay <= ceiling, "attempt {attempt}: {delay:?} > {ceiling:?}");
                assert!(delay <= BACKOFF_CAP);
            }
        }
        // Jitter is real: the same attempt does not always wait the same time.
        let draws: std::collections::HashSet<_> = (0..50).map(|_| reconnect_delay(10)).collect();
        assert!(draws.len() > 1);
    }

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
