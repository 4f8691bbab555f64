//! The hub's end of the agents' tunnels: the WebSocket each agent opens at
//! [`edge_tunnel::TUNNEL_PATH`], the registry of open tunnels, and opening a stream through
//! one of them to a destination the agent then judges.
//!
//! The agent decides what its end reaches (its egress gate, its person's consent, pause and
//! caps); this side decides only who may use which agent (see `proxy`). A tunnel that stops
//! answering its pings is dropped with every stream on it; the agent reconnects.
//!
//! Several instances on one database: each open tunnel is also listed in the store (which
//! instance holds it, where that instance is reached), so an exit is chosen among the
//! tunnels of every instance ([`exits`]) and a stream through another instance's tunnel is
//! opened over the instances' link (`link`).

pub mod forward;
pub mod link;
pub mod proxy;

use crate::api::ws_upgrade::{NotAnUpgrade, WsUpgrade};
use crate::api::{bearer_token, AppState, Failure};
use crate::store::AgentRecord;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use edge_tunnel::mux::{MuxError, MuxStream, Opener};
use edge_tunnel::open::{self, Answer, Open, Target};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{info, warn};

/// How often the hub asks each tunnel for a ping, and how long an answer may take: a dead
/// session is noticed within `PING_EVERY + PING_TIMEOUT` (25 s, inside the 40 s asked for).
pub const PING_EVERY: Duration = Duration::from_secs(15);
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent may take to answer a stream's open header.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// A route whose keep-alive has not refreshed it for this long belongs to an instance that
/// died without removing it: three missed pings.
pub const ROUTE_STALE_AFTER: Duration = Duration::from_secs(3 * PING_EVERY.as_secs());

/// A stream's bytes, from a local tunnel or over the link to another instance.
pub trait TunnelIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> TunnelIo for T {}

/// An open stream, past the agent's answer.
pub struct Opened {
    pub io: Box<dyn TunnelIo>,
    /// Whether this instance counts the stream's bytes: the instance holding the tunnel
    /// does (it counted the stream's opening too), a caller relaying through it does not.
    pub metered: bool,
}

/// One agent's open tunnel.
#[derive(Debug, Clone)]
pub struct Tunnel {
    pub agent_id: String,
    pub creator_id: String,
    pub labels: Vec<String>,
    opener: Opener,
    /// Tells a replaced tunnel's entry from its successor's.
    serial: u64,
}

/// The open tunnels of this hub, by agent.
#[derive(Debug, Default)]
pub struct Tunnels {
    open: Mutex<HashMap<String, Tunnel>>,
    serials: AtomicU64,
    /// Bytes relayed per agent on the current UTC day (day number, bytes), for the
    /// operator's agent list.
    bytes: Mutex<HashMap<String, (i64, u64)>>,
}

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the agent has no open tunnel to this hub")]
    NoTunnel,
    /// The instance holding the agent's tunnel did not answer: it stopped or died, and
    /// its route will be gone or stale; the agent reconnects to another instance.
    #[error("{0}")]
    InstanceGone(String),
    /// The other instance refused the link or answered something else than a stream.
    #[error("the link to another hub instance failed: {0}")]
    Link(String),
    #[error("the tunnel to the agent failed: {0}")]
    Tunnel(#[from] MuxError),
    #[error("the agent did not answer: {0}")]
    Header(#[from] open::HeaderError),
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The agent refused: its code (`EGRESS_DENIED`, …) and sentence.
    #[error("{code}: {message}")]
    Refused { code: String, message: String },
}

impl Tunnels {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tunnel>> {
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every open tunnel.
    pub fn list(&self) -> Vec<Tunnel> {
        let mut all: Vec<Tunnel> = self.lock().values().filter(|t| !t.opener.is_closed()).cloned().collect();
        all.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        all
    }

    pub fn get(&self, agent_id: &str) -> Option<Tunnel> {
        self.lock().get(agent_id).filter(|t| !t.opener.is_closed()).cloned()
    }

    fn insert(&self, mut tunnel: Tunnel) -> u64 {
        tunnel.serial = self.serials.fetch_add(1, Ordering::Relaxed) + 1;
        let serial = tunnel.serial;
        // A newer tunnel of the same agent replaces the old one (a reconnect that beat the
        // old session's death): the old one's streams end when its task ends.
        self.lock().insert(tunnel.agent_id.clone(), tunnel);
        serial
    }

    /// Counts `bytes` relayed through `agent_id`'s tunnel today.
    pub fn count(&self, agent_id: &str, bytes: u64) {
        let today = crate::crypto::now_secs().div_euclid(86_400);
        let mut all = self.bytes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = all.entry(agent_id.to_owned()).or_insert((today, 0));
        if entry.0 != today {
            *entry = (today, 0);
        }
        entry.1 = entry.1.saturating_add(bytes);
    }

    /// Bytes relayed through `agent_id`'s tunnel on this instance today (UTC).
    pub fn bytes_today(&self, agent_id: &str) -> u64 {
        let today = crate::crypto::now_secs().div_euclid(86_400);
        let all = self.bytes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        all.get(agent_id).filter(|(day, _)| *day == today).map_or(0, |(_, bytes)| *bytes)
    }

    fn remove(&self, agent_id: &str, serial: u64) {
        let mut open = self.lock();
        if open.get(agent_id).is_some_and(|t| t.serial == serial) {
            open.remove(agent_id);
        }
    }
}

impl Tunnel {
    /// A stream to `target` through this agent, past its answer: the bytes written next go
    /// to the destination, what it sends comes back.
    pub async fn open(&self, target: Target) -> Result<MuxStream, OpenError> {
        let started = std::time::Instant::now();
        let opened = self.open_unmeasured(target).await;
        match &opened {
            Ok(_) => crate::metrics::tunnel_stream_opened(started.elapsed()),
            Err(OpenError::Refused { code, .. }) => crate::metrics::tunnel_refused(code),
            Err(OpenError::Timeout(_)) => crate::metrics::tunnel_refused("TIMEOUT"),
            Err(_) => crate::metrics::tunnel_refused("NETWORK"),
        }
        opened
    }

    async fn open_unmeasured(&self, target: Target) -> Result<MuxStream, OpenError> {
        let mut stream = self.opener.open().await?;
        let exchange = async {
            open::write(&mut stream, &Open { v: edge_tunnel::OPEN_VERSION, target }).await?;
            open::read::<_, Answer>(&mut stream).await
        };
        let answer =
            tokio::time::timeout(ANSWER_TIMEOUT, exchange).await.map_err(|_| OpenError::Timeout(ANSWER_TIMEOUT))??;
        if answer.ok {
            Ok(stream)
        } else {
            Err(OpenError::Refused {
                code: answer.code.unwrap_or_else(|| "REFUSED".to_owned()),
                message: answer.message.unwrap_or_default(),
            })
        }
    }
}

/// An agent a stream can go out through: its tunnel here, or its route to another instance.
#[derive(Debug, Clone)]
pub enum Exit {
    Local(Tunnel),
    Remote(crate::store::TunnelRoute),
}

impl Exit {
    pub fn agent_id(&self) -> &str {
        match self {
            Exit::Local(tunnel) => &tunnel.agent_id,
            Exit::Remote(route) => &route.agent_id,
        }
    }

    pub fn creator_id(&self) -> &str {
        match self {
            Exit::Local(tunnel) => &tunnel.creator_id,
            Exit::Remote(route) => &route.creator_id,
        }
    }

    pub fn labels(&self) -> &[String] {
        match self {
            Exit::Local(tunnel) => &tunnel.labels,
            Exit::Remote(route) => &route.labels,
        }
    }

    /// A stream to `target` through this agent, past its answer.
    pub async fn open(&self, app: &AppState, target: Target) -> Result<Opened, OpenError> {
        match self {
            Exit::Local(tunnel) => Ok(Opened { io: Box::new(tunnel.open(target).await?), metered: true }),
            Exit::Remote(route) => {
                let opened =
                    link::open_remote(app, &route.relay_url, &route.instance_id, &route.agent_id, target).await;
                if let Err(OpenError::InstanceGone(why)) = &opened {
                    warn!(instance_id = %route.instance_id, reason = %why, "instance unreachable; its tunnels are passed over for now");
                    app.gone_instances.mark(&route.instance_id, ROUTE_STALE_AFTER);
                }
                Ok(Opened { io: opened?, metered: false })
            }
        }
    }
}

/// Every agent with an open tunnel on any instance, by agent id: this instance's own
/// tunnels, then the fresh routes of the others. When the store cannot be read, only the
/// local tunnels (said in the log): a proxy that still serves those beats one that serves none.
pub async fn exits(app: &AppState) -> Vec<Exit> {
    let local = app.tunnels.list();
    let seen_since = crate::crypto::now_ms() - crate::queue::millis(ROUTE_STALE_AFTER);
    let routes = match app.store.tunnel_routes(seen_since).await {
        Ok(routes) => routes,
        Err(e) => {
            warn!(error = %e, "cannot read the other instances' tunnels; choosing among this instance's only");
            Vec::new()
        }
    };
    let mut all: Vec<Exit> = Vec::with_capacity(local.len() + routes.len());
    for route in routes {
        if route.instance_id == app.instance.id {
            // Ours: the local registry is the truth (a route of a tunnel that just closed
            // may not be removed yet).
            continue;
        }
        if route.relay_url == app.instance.url {
            // Left by an earlier run of this instance at this address that died: not ours,
            // and dialling ourselves for it could only be refused.
            continue;
        }
        if local.iter().any(|t| t.agent_id == route.agent_id) || app.gone_instances.contains(&route.instance_id) {
            continue;
        }
        all.push(Exit::Remote(route));
    }
    all.extend(local.into_iter().map(Exit::Local));
    all.sort_by(|a, b| a.agent_id().cmp(b.agent_id()));
    all
}

/// The exit through `agent_id`, wherever its tunnel is open.
pub async fn exit_for(app: &AppState, agent_id: &str) -> Option<Exit> {
    if let Some(tunnel) = app.tunnels.get(agent_id) {
        return Some(Exit::Local(tunnel));
    }
    exits(app).await.into_iter().find(|exit| exit.agent_id() == agent_id)
}

pub fn router(app: AppState) -> Router {
    Router::new()
        .route(edge_tunnel::TUNNEL_PATH, get(tunnel_ws))
        .route(edge_tunnel::ENDPOINTS_PATH, get(endpoints))
        .route(link::RELAY_PATH, get(link::relay_endpoint))
        .with_state(app)
}

/// The agent a tunnel's JWT stands for, or why not: the agent WebSocket's own check.
async fn authenticate(app: &AppState, token: &str) -> Result<AgentRecord, Failure> {
    crate::api::ws::authenticate(app, Some(token)).await.map_err(crate::api::ws::Refusal::into_failure)
}

fn bearer(headers: &HeaderMap) -> Result<&str, Failure> {
    bearer_token(headers).ok_or_else(|| {
        Failure::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the agent's JWT as `Authorization: Bearer <token>`".to_owned(),
        )
    })
}

/// What this hub offers an agent besides the WebSocket: the raw fast path, if configured.
async fn endpoints(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<axum::Json<edge_tunnel::Endpoints>, Failure> {
    authenticate(&app, bearer(&headers)?).await?;
    Ok(axum::Json(app.tunnel_endpoints.clone()))
}

async fn tunnel_ws(
    State(app): State<AppState>,
    headers: HeaderMap,
    upgrade: Result<WsUpgrade, NotAnUpgrade>,
) -> Response {
    let agent = match bearer(&headers) {
        Ok(token) => match authenticate(&app, token).await {
            Ok(agent) => agent,
            Err(failure) => return failure.into_response(),
        },
        Err(failure) => return failure.into_response(),
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(e) => return e.into_response(),
    };
    // Binary messages up to yamux's frame size plus its header, with room to spare.
    let config = WebSocketConfig::default().max_message_size(Some(1 << 20)).max_frame_size(Some(1 << 20));
    let sessions = app.sessions.clone();
    upgrade
        .on_upgrade(config, &sessions, move |socket| serve_tunnel(app, agent, edge_tunnel::ws::over_websocket(socket)))
}

/// Runs one agent's tunnel over `io` until it ends, stops answering its pings, or the hub
/// shuts down; registered while it runs.
pub async fn serve_tunnel<T>(app: AppState, agent: AgentRecord, io: T)
where
    T: futures_util::io::AsyncRead + futures_util::io::AsyncWrite + Unpin + Send + 'static,
{
    let (opener, driver) = edge_tunnel::mux::client(io);
    let tunnel = Tunnel {
        agent_id: agent.id.clone(),
        creator_id: agent.creator_id.clone(),
        labels: agent.labels.clone(),
        opener,
        serial: 0,
    };
    let serial = app.tunnels.insert(tunnel.clone());
    // Other instances find the tunnel through this route; without it only this
    // instance's proxy can use it, which is worth a warning, not a refused tunnel.
    let tunnel_id = format!("{}/{serial}", app.instance.id);
    let route = crate::store::NewTunnelRoute {
        agent_id: tunnel.agent_id.clone(),
        tunnel_id: tunnel_id.clone(),
        instance_id: app.instance.id.clone(),
        relay_url: app.instance.url.clone(),
    };
    if let Err(e) = app.store.put_tunnel_route(&route, crate::crypto::now_ms()).await {
        warn!(agent_id = %tunnel.agent_id, error = %e, "cannot list the tunnel for the other instances");
    }
    info!(agent_id = %tunnel.agent_id, "tunnel open");
    crate::metrics::tunnel_opened(true);
    let stop = app.shutdown.clone();
    tokio::select! {
        ended = driver => if let Err(e) = ended { info!(agent_id = %tunnel.agent_id, error = %e, "tunnel ended") },
        why = keep_alive(&app, &tunnel, &tunnel_id) => warn!(agent_id = %tunnel.agent_id, why, "tunnel dropped"),
        _ = stop.cancelled() => {}
    }
    app.tunnels.remove(&tunnel.agent_id, serial);
    // Only this tunnel's route: a reconnect elsewhere has already replaced it.
    if let Err(e) = app.store.remove_tunnel_route(&tunnel.agent_id, &tunnel_id).await {
        warn!(agent_id = %tunnel.agent_id, error = %e, "cannot remove the tunnel's route; it expires unrefreshed");
    }
    crate::metrics::tunnel_opened(false);
    info!(agent_id = %tunnel.agent_id, "tunnel closed");
}

/// How long a raw connection may take to send its preamble.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The raw fast path (`edge-hub serve --tunnel-listen ADDR`): TCP, TLS with the hub's
/// certificate when it has one, one preamble line with the agent's JWT, one answer line
/// (`OK` or `ERR <why>`), then yamux. Serves until `stop`.
pub async fn serve_raw(
    listener: tokio::net::TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    app: AppState,
    stop: tokio_util::sync::CancellationToken,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "raw tunnel accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (app, acceptor) = (app.clone(), acceptor.clone());
        app.sessions.clone().spawn(async move {
            use tokio_util::compat::TokioAsyncReadCompatExt;
            match acceptor {
                Some(acceptor) => match tokio::time::timeout(PREAMBLE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(mut tls)) => {
                        if let Some(agent) = raw_preamble(&app, &mut tls).await {
                            serve_tunnel(app, agent, tls.compat()).await;
                        }
                    }
                    _ => info!(%peer, "raw tunnel: TLS handshake failed"),
                },
                None => {
                    let mut tcp = tcp;
                    if let Some(agent) = raw_preamble(&app, &mut tcp).await {
                        serve_tunnel(app, agent, tcp.compat()).await;
                    }
                }
            }
        });
    }
}

/// Reads and checks the preamble, answers it; the agent when it was accepted.
async fn raw_preamble<S>(app: &AppState, stream: &mut S) -> Option<AgentRecord>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        // Byte by byte: what follows the line is yamux's and must stay unread.
        while line.len() < 8192 {
            if stream.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            if byte[0] == b'\n' {
                return Some(());
            }
            line.push(byte[0]);
        }
        None
    };
    tokio::time::timeout(PREAMBLE_TIMEOUT, read).await.ok()??;
    let text = String::from_utf8_lossy(&line);
    let answer = match text.strip_prefix(edge_tunnel::RAW_PREAMBLE) {
        None => Err(format!("the first line must be {:?} and the agent's JWT", edge_tunnel::RAW_PREAMBLE.trim())),
        Some(token) => authenticate(app, token.trim()).await.map_err(|f| f.body.message),
    };
    match answer {
        Ok(agent) => {
            stream.write_all(b"OK\n").await.ok()?;
            Some(agent)
        }
        Err(why) => {
            info!(reason = %why, "raw tunnel refused");
            let _ = stream.write_all(format!("ERR {}\n", why.replace('\n', " ")).as_bytes()).await;
            // Closing with unread bytes would reset the connection and could lose the answer
            // on the way: end our side, then read what the peer still sends, briefly.
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 1024];
            let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
            let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
            None
        }
    }
}

/// Relays a client's connection (or another instance's link) and an open stream through
/// `agent_id` until both directions end, with `already` (bytes the client sent past its
/// request) first; counts the bytes when the stream is this instance's to meter.
pub async fn relay<C>(app: &AppState, agent_id: &str, client: &mut C, stream: Opened, already: &[u8])
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
{
    use tokio::io::AsyncWriteExt as _;
    let Opened { io: mut stream, metered } = stream;
    let closed = |to_agent: u64, from_agent: u64| {
        if metered {
            crate::metrics::tunnel_stream_closed(to_agent, from_agent);
        }
    };
    if !already.is_empty() && stream.write_all(already).await.is_err() {
        closed(0, 0);
        return;
    }
    let (to_agent, from_agent) = tokio::io::copy_bidirectional(client, &mut stream).await.unwrap_or((0, 0));
    let to_agent = to_agent + already.len() as u64;
    closed(to_agent, from_agent);
    if metered {
        app.tunnels.count(agent_id, to_agent + from_agent);
    }
}

/// Pings the agent through a stream of its own every [`PING_EVERY`] and refreshes the
/// tunnel's route after each answer; returns why it stopped answering.
async fn keep_alive(app: &AppState, tunnel: &Tunnel, tunnel_id: &str) -> String {
    loop {
        tokio::time::sleep(PING_EVERY).await;
        match tokio::time::timeout(PING_TIMEOUT, tunnel.open(Target::Ping)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("ping failed: {e}"),
            Err(_) => return format!("no ping answer within {PING_TIMEOUT:?}"),
        }
        match app.store.touch_tunnel_route(&tunnel.agent_id, tunnel_id, crate::crypto::now_ms()).await {
            Ok(true) => {}
            // A newer tunnel of this agent (on another instance) owns the route now; this
            // one still serves this instance's clients until it ends.
            Ok(false) => {}
            Err(e) => warn!(agent_id = %tunnel.agent_id, error = %e, "cannot refresh the tunnel's route"),
        }
    }
}
