//! The agent's end of the tunnel: one outbound WebSocket to the hub carrying the streams
//! the hub opens, each to an outside host (judged by the egress gate, metered, capped) or to
//! a local service the person exposed by name.
//!
//! It owns that connection's life (connect with the agent's JWT, reconnect forever with
//! jittered back-off, drop it when the hub's pings stop), and each stream's answer and
//! relay. It must never run without the person's `tunnel` grant, never open a stream while
//! paused (pausing closes every open one at once), never reach this machine's own or LAN
//! addresses except an exposed service or what the person allowed, and never log more of a
//! stream than its destination.

use crate::consent::{Capability as Consent, Consent as Grants};
use crate::egress::{Capability, EgressGate};
use crate::hub_client::TokenCache;
use crate::hub_url::HubUrl;
use crate::local_settings::LocalSettings;
use edge_tunnel::mux::MuxStream;
use edge_tunnel::open::{self, Answer, Open, Target};
use edge_tunnel::transport::{BoxedIo, Transport};
use futures_util::future::BoxFuture;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// No ping from the hub for this long: the session is dead (the hub pings every 15 s).
pub const DEAD_AFTER: Duration = Duration::from_secs(40);
/// How long the hub may take to send a stream's header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a revoked grant or a removed exposure is noticed without a stream asking.
const RECHECK: Duration = Duration::from_secs(5);
/// Bytes metered at once on a long stream (so the cap sees it before it ends).
const METER_EVERY: u64 = 256 * 1024;
/// Each direction of a stream reads into this much until it carries bulk traffic…
const SMALL_BUFFER: usize = 2 * 1024;
/// …and into this much from then on.
const LARGE_BUFFER: usize = 64 * 1024;

/// How often the open-stream count shown in the state follows the real one. Counted per
/// stream, each request the tunnel carries would rewrite state.json and send the whole
/// snapshot to the window twice, which at thousands of requests a second is most of the
/// agent's work per request.
const SHOW_STREAMS_EVERY: Duration = Duration::from_millis(500);

/// settings.json as it was last read, with the stamp of the file read: a stream reads it
/// again only when the file changed. Every write replaces the file whole (`files::replace`:
/// a new file renamed over the old), so a grant revoked or a service unexposed changes the
/// stamp and the very next stream reads the new file; per stream a `stat` replaces a read
/// and a parse, at thousands of streams a second.
#[derive(Default)]
struct SettingsCache(std::sync::Mutex<Option<(FileStamp, Option<Arc<LocalSettings>>)>>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: u64,
}

impl FileStamp {
    /// `None` when the file is missing or cannot be looked at: then it is read every time.
    fn of(path: &std::path::Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            #[cfg(unix)]
            inode: std::os::unix::fs::MetadataExt::ino(&meta),
        })
    }
}

impl SettingsCache {
    /// The settings as they stand; `None` when the file is unreadable (which grants nothing).
    fn get(&self, data_dir: &std::path::Path) -> Option<Arc<LocalSettings>> {
        let stamp = FileStamp::of(&LocalSettings::path(data_dir));
        if let Some(stamp) = &stamp {
            if let Ok(cached) = self.0.lock() {
                if let Some((seen, settings)) = cached.as_ref() {
                    if seen == stamp {
                        return settings.clone();
                    }
                }
            }
        }
        let settings = LocalSettings::load(data_dir).ok().map(Arc::new);
        if let (Some(stamp), Ok(mut cached)) = (stamp, self.0.lock()) {
            // Kept only if the file did not change while it was read, and only once it is a
            // second old: a file system's clock ticks coarsely, so a write right after this
            // one could otherwise keep the same time, size and (reused) inode. A write a
            // second later always gets a later time ("racy git" has the same rule).
            let settled = stamp
                .modified
                .and_then(|m| std::time::SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age > Duration::from_secs(1));
            if settled && FileStamp::of(&LocalSettings::path(data_dir)).as_ref() == Some(&stamp) {
                *cached = Some((stamp, settings.clone()));
            }
        }
        settings
    }
}

/// What the tunnel needs from the rest of the agent.
#[derive(Clone)]
pub struct TunnelContext {
    pub gate: EgressGate,
    pub data_dir: PathBuf,
    pub paused: watch::Receiver<bool>,
    /// Where the tunnel's state is reported (tray, `edge-agent status`).
    pub state: Option<crate::state::StateHandle>,
    /// Streams open right now; the state shows it every [`SHOW_STREAMS_EVERY`].
    open: Arc<AtomicU32>,
    settings: Arc<SettingsCache>,
}

impl TunnelContext {
    pub fn new(
        gate: EgressGate,
        data_dir: PathBuf,
        paused: watch::Receiver<bool>,
        state: Option<crate::state::StateHandle>,
    ) -> TunnelContext {
        TunnelContext {
            gate,
            data_dir,
            paused,
            state,
            open: Arc::new(AtomicU32::new(0)),
            settings: Arc::new(SettingsCache::default()),
        }
    }

    /// The state's stream count, brought in line with the real one when they differ.
    fn show_streams(&self) {
        let Some(state) = &self.state else { return };
        let open = self.open.load(Ordering::Relaxed);
        if state.snapshot().tunnel.streams != open {
            state.update(|snapshot| snapshot.tunnel.streams = open);
        }
    }

    fn report(&self, change: impl FnOnce(&mut crate::state::TunnelSnapshot)) {
        if let Some(state) = &self.state {
            state.update(|snapshot| change(&mut snapshot.tunnel));
        }
    }

    /// Shows the exposed services as settings.json has them now; a change made with
    /// `edge-agent expose` from another process reaches the tray within [`RECHECK`]. Reports
    /// only a change: the state event is not repeated every few seconds.
    fn show_exposed(&self) {
        let Some(state) = &self.state else { return };
        // An unreadable file exposes nothing, as `reach` treats it.
        let exposed = LocalSettings::load(&self.data_dir).map(|s| s.exposed).unwrap_or_default();
        if state.snapshot().tunnel.exposed != exposed {
            state.update(|snapshot| snapshot.tunnel.exposed = exposed);
        }
    }
}

/// Counts a stream while it lives.
struct OpenStream<'a>(&'a TunnelContext);

impl<'a> OpenStream<'a> {
    fn new(context: &'a TunnelContext) -> OpenStream<'a> {
        context.open.fetch_add(1, Ordering::Relaxed);
        OpenStream(context)
    }
}

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keeps the tunnel up until `cancel`: connects when the person has granted `tunnel` and the
/// agent is not paused, reconnects after every failure.
pub(crate) async fn run(tokens: TokenCache, hub_url: HubUrl, context: TunnelContext, cancel: CancellationToken) {
    let dial = move || {
        let (tokens, hub_url) = (tokens.clone(), hub_url.clone());
        Box::pin(async move { dial_hub(&tokens, &hub_url).await }) as BoxFuture<'static, _>
    };
    keep_up(dial, context, cancel).await
}

/// The raw fast path when the hub offers one and it answers, else the WebSocket.
async fn dial_hub(tokens: &TokenCache, hub_url: &HubUrl) -> Result<BoxedIo, String> {
    let websocket = WebSocketTransport { tokens: tokens.clone(), hub_url: hub_url.clone() };
    match endpoints(tokens, hub_url).await {
        Ok(edge_tunnel::Endpoints { raw: Some(address), raw_tls, .. }) => {
            let raw = RawTransport { tokens: tokens.clone(), hub_url: hub_url.clone(), address, tls: raw_tls };
            match raw.connect().await {
                Ok(io) => {
                    tracing::info!(transport = raw.name(), "tunnel transport");
                    return Ok(io);
                }
                Err(e) => tracing::warn!(error = %e, "the raw tunnel transport failed; using the WebSocket"),
            }
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "no tunnel endpoints from the hub; using the WebSocket"),
    }
    let io = websocket.connect().await?;
    tracing::info!(transport = websocket.name(), "tunnel transport");
    Ok(io)
}

/// `GET /v1/agent/tunnel/endpoints`: what the hub offers besides the WebSocket.
async fn endpoints(tokens: &TokenCache, hub_url: &HubUrl) -> Result<edge_tunnel::Endpoints, String> {
    let jwt = tokens.jwt().await.map_err(|e| e.to_string())?;
    let http = crate::tls::hub_http_client_builder()
        .map_err(|e| e.to_string())?
        .timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let response = http
        .get(hub_url.http_endpoint(edge_tunnel::ENDPOINTS_PATH))
        .bearer_auth(jwt.expose())
        .send()
        .await
        .map_err(|e| crate::hub_client::describe_reqwest_error(&e.without_url()))?;
    if !response.status().is_success() {
        return Err(format!("the hub answered {}", response.status()));
    }
    response.json().await.map_err(|e| e.to_string())
}

/// The tunnel over the hub's WebSocket (`GET /v1/agent/tunnel`).
struct WebSocketTransport {
    tokens: TokenCache,
    hub_url: HubUrl,
}

impl Transport for WebSocketTransport {
    fn name(&self) -> &'static str {
        "websocket"
    }

    fn connect(&self) -> BoxFuture<'_, Result<BoxedIo, String>> {
        Box::pin(async move {
            let socket = connect(&self.tokens, &self.hub_url).await?;
            Ok(Box::new(edge_tunnel::ws::over_websocket(socket)) as BoxedIo)
        })
    }
}

/// The raw fast path: TCP (TLS when the hub serves HTTPS), one preamble line with the JWT,
/// one answer line, then yamux with no WebSocket framing.
struct RawTransport {
    tokens: TokenCache,
    hub_url: HubUrl,
    address: String,
    tls: bool,
}

impl Transport for RawTransport {
    fn name(&self) -> &'static str {
        "raw"
    }

    fn connect(&self) -> BoxFuture<'_, Result<BoxedIo, String>> {
        use tokio_util::compat::TokioAsyncReadCompatExt;
        Box::pin(async move {
            let jwt = self.tokens.jwt().await.map_err(|e| format!("no token: {e}"))?;
            let preamble = format!("{}{}\n", edge_tunnel::RAW_PREAMBLE, jwt.expose());
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&self.address))
                .await
                .map_err(|_| format!("{} did not answer in time", self.address))?
                .map_err(|e| format!("cannot connect to {}: {e}", self.address))?;
            let _ = tcp.set_nodelay(true);
            if self.tls {
                let host = self.hub_url.host().to_owned();
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))?;
                let config = crate::tls::hub_client_config().map_err(|e| e.to_string())?;
                let mut tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {} failed: {e}", self.address))?;
                raw_handshake(&mut tls, &preamble, &self.tokens).await?;
                Ok(Box::new(tls.compat()) as BoxedIo)
            } else {
                let mut tcp = tcp;
                raw_handshake(&mut tcp, &preamble, &self.tokens).await?;
                Ok(Box::new(tcp.compat()) as BoxedIo)
            }
        })
    }
}

/// Sends the preamble and reads the hub's one-line answer, byte by byte so nothing of what
/// follows (yamux) is consumed.
async fn raw_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    preamble: &str,
    tokens: &TokenCache,
) -> Result<(), String> {
    stream.write_all(preamble.as_bytes()).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while line.len() < 512 {
            if stream.read(&mut byte).await.map_err(|e| e.to_string())? == 0 {
                return Err("the hub closed the raw tunnel before answering".to_owned());
            }
            if byte[0] == b'\n' {
                return Ok(());
            }
            line.push(byte[0]);
        }
        Err("the hub's answer line is too long".to_owned())
    };
    tokio::time::timeout(CONNECT_TIMEOUT, read).await.map_err(|_| "the hub did not answer in time".to_owned())??;
    let answer = String::from_utf8_lossy(&line);
    match answer.trim() {
        "OK" => Ok(()),
        other => {
            if other.contains("token") {
                tokens.forget().await;
            }
            Err(format!("the hub refused the raw tunnel: {other}"))
        }
    }
}

/// [`run`] with the connection made by `dial` (tests dial a local WebSocket).
pub async fn keep_up<D>(dial: D, context: TunnelContext, cancel: CancellationToken)
where
    D: Fn() -> BoxFuture<'static, Result<BoxedIo, String>>,
{
    let grants = Grants::new(&context.data_dir);
    let mut paused = context.paused.clone();
    let mut failures: u32 = 0;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        context.show_exposed();
        if *paused.borrow() || !grants.is_granted(&Consent::Tunnel) {
            context.report(|t| {
                t.state = "off".to_owned();
                t.streams = 0;
            });
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = paused.changed() => {}
                _ = tokio::time::sleep(RECHECK) => {}
            }
            continue;
        }
        let started = Instant::now();
        context.report(|t| t.state = "connecting".to_owned());
        match session(dial(), &context, &grants, &cancel).await {
            Ok(why) => tracing::info!(reason = why, "tunnel closed"),
            Err(why) => tracing::warn!(reason = %why, "tunnel failed"),
        }
        // A session that lived a while was healthy: start over from a short delay.
        failures = if started.elapsed() > Duration::from_secs(60) { 1 } else { failures.saturating_add(1) };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(crate::backoff::reconnect_delay(failures)) => {}
        }
    }
}

/// One tunnel session; `Ok(why)` when it ended for a reason of ours.
async fn session(
    dial: BoxFuture<'static, Result<BoxedIo, String>>,
    context: &TunnelContext,
    grants: &Grants,
    cancel: &CancellationToken,
) -> Result<&'static str, String> {
    let io = dial.await?;
    tracing::info!("tunnel open");
    context.report(|t| t.state = "open".to_owned());
    let streams = cancel.child_token();
    let last_ping = Arc::new(AtomicI64::new(now_secs()));
    let serving = edge_tunnel::mux::serve(io, {
        let (context, streams, last_ping) = (context.clone(), streams.clone(), last_ping.clone());
        move |stream| {
            let (context, streams, last_ping) = (context.clone(), streams.clone(), last_ping.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = streams.cancelled() => {}
                    _ = handle(stream, &context, &last_ping) => {}
                }
            });
        }
    });
    let mut paused = context.paused.clone();
    let watch = async {
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        recheck.tick().await;
        let mut show = tokio::time::interval(SHOW_STREAMS_EVERY);
        show.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = paused.changed() => if *paused.borrow() { return "paused: every stream closed" },
                _ = show.tick() => context.show_streams(),
                _ = recheck.tick() => {
                    context.show_exposed();
                    if !grants.is_granted(&Consent::Tunnel) {
                        return "the person revoked the tunnel grant";
                    }
                    if now_secs() - last_ping.load(Ordering::Relaxed) > DEAD_AFTER.as_secs() as i64 {
                        return "no ping from the hub in 40 s";
                    }
                }
            }
        }
    };
    let outcome = tokio::select! {
        ended = serving => match ended {
            Ok(()) => Err("the hub closed the tunnel".to_owned()),
            Err(e) => Err(e.to_string()),
        },
        why = watch => Ok(why),
        _ = cancel.cancelled() => Ok("shutting down"),
    };
    // Ends every stream of this session now, on both sides (the connection is dropped too).
    streams.cancel();
    context.show_streams();
    context.report(|t| t.state = "connecting".to_owned());
    outcome
}

/// The tunnel's WebSocket, as `tokio-tungstenite` connects it.
pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(tokens: &TokenCache, hub_url: &HubUrl) -> Result<Socket, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
    let jwt = tokens.jwt().await.map_err(|e| format!("no token: {e}"))?;
    let mut request = hub_url
        .ws_endpoint(edge_tunnel::TUNNEL_PATH)
        .into_client_request()
        .map_err(|e| format!("bad tunnel URL: {e}"))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", jwt.expose()))
        .map_err(|_| "the token is not a valid header value".to_owned())?;
    request.headers_mut().insert(header::AUTHORIZATION, bearer);
    let connector = if hub_url.is_tls() {
        tokio_tungstenite::Connector::Rustls(crate::tls::hub_client_config().map_err(|e| e.to_string())?)
    } else {
        tokio_tungstenite::Connector::Plain
    };
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let connecting = tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, Some(connector));
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => Err(format!("connecting took longer than {} s", CONNECT_TIMEOUT.as_secs())),
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) if response.status().as_u16() == 401 => {
            tokens.forget().await;
            Err("the hub refused the tunnel's token (401)".to_owned())
        }
        Ok(Err(e)) => Err(format!("cannot connect to {hub_url}: {e}")),
    }
}

fn now_secs() -> i64 {
    crate::hub_client::unix_now()
}

/// One stream: its header, the decision, the answer, then the relay.
async fn handle(mut stream: MuxStream, context: &TunnelContext, last_ping: &AtomicI64) {
    let opened: Open = match tokio::time::timeout(HEADER_TIMEOUT, open::read(&mut stream)).await {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => {
            let _ = open::write(&mut stream, &Answer::refused("BAD_PAYLOAD", e.to_string())).await;
            return;
        }
        Err(_) => return,
    };
    if opened.target == Target::Ping {
        last_ping.store(now_secs(), Ordering::Relaxed);
        let _ = open::write(&mut stream, &Answer::ok()).await;
        return;
    }
    if opened.v != edge_tunnel::OPEN_VERSION {
        let message =
            format!("this agent speaks tunnel header version {}, not {}", edge_tunnel::OPEN_VERSION, opened.v);
        let _ = open::write(&mut stream, &Answer::refused("BAD_PAYLOAD", message)).await;
        return;
    }
    // Read once per stream: the grant, the exposed services and the rate cap are the
    // person's as they stand now (an unreadable file grants nothing).
    let settings = context.settings.get(&context.data_dir);
    let destination = match reach(&opened.target, context, settings.as_deref()).await {
        Ok(destination) => destination,
        Err(answer) => {
            tracing::info!(target = %opened.target, code = answer.code.as_deref().unwrap_or_default(), "tunnel stream refused");
            let _ = open::write(&mut stream, &answer).await;
            return;
        }
    };
    if open::write(&mut stream, &Answer::ok()).await.is_err() {
        return;
    }
    // The stream's one line in the person's log is at its close, with what it carried.
    tracing::debug!(target = %opened.target, "tunnel stream open");
    let _counted = OpenStream::new(context);
    let rate = settings.and_then(|s| s.caps.tunnel_bytes_per_second);
    let (bytes_in, bytes_out) = relay(stream, destination, &context.gate, rate).await;
    tracing::info!(target = %opened.target, bytes_in, bytes_out, "tunnel stream closed");
}

/// The connection a stream asked for, or the answer refusing it.
async fn reach(
    target: &Target,
    context: &TunnelContext,
    settings: Option<&LocalSettings>,
) -> Result<tokio::net::TcpStream, Answer> {
    if *context.paused.borrow() {
        return Err(Answer::refused("PAUSED", "the person at this agent paused it"));
    }
    let Some(settings) = settings.filter(|s| crate::consent::is_granted_in(s, &Consent::Tunnel)) else {
        return Err(Answer::refused(
            "CAPABILITY_NOT_GRANTED",
            "the person at this agent has not granted the tunnel (edge-agent consent grant tunnel)",
        ));
    };
    let addresses = match target {
        Target::Connect { host, port } => {
            let host = url::Host::parse(host)
                .or_else(|_| url::Host::parse(&format!("[{host}]")))
                .map_err(|e| Answer::refused("BAD_PAYLOAD", format!("{host:?} is not a host name or address: {e}")))?;
            // The same WHATWG parsing as a URL's host: every spelling of an address is
            // normalised before the gate judges it.
            let host = match &host {
                url::Host::Domain(name) => url::Host::Domain(name.as_str()),
                url::Host::Ipv4(address) => url::Host::Ipv4(*address),
                url::Host::Ipv6(address) => url::Host::Ipv6(*address),
            };
            context.gate.admit(&host, *port, None, Capability::Tunnel).await.map_err(|refusal| {
                let error = refusal.to_job_error();
                Answer::refused(error.code.as_str(), error.message.unwrap_or_default())
            })?
        }
        Target::Service { name } => {
            let address = settings.exposed.get(name).ok_or_else(|| {
                Answer::refused("NOT_EXPOSED", format!("the person at this agent exposes no service named {name:?}"))
            })?;
            // The person chose this address; the gate still holds the daily cap.
            if let Err((used, cap)) = context.gate.meter().admit() {
                return Err(Answer::refused(
                    "EGRESS_CAP",
                    format!("today's egress cap is reached ({used} of {cap} bytes)"),
                ));
            }
            let address: std::net::SocketAddr = address.parse().map_err(|_| {
                Answer::refused(
                    "NOT_EXPOSED",
                    format!("the exposed address of {name:?} ({address}) is not ADDRESS:PORT"),
                )
            })?;
            vec![address]
        }
        Target::Ping => return Err(Answer::refused("BAD_PAYLOAD", "a ping carries no stream")),
    };
    for address in &addresses {
        if let Ok(Ok(connection)) = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address)).await
        {
            let _ = connection.set_nodelay(true);
            return Ok(connection);
        }
    }
    Err(Answer::refused("NETWORK", format!("{target} did not answer")))
}

/// Copies both ways until both sides are done; meters as it goes; returns (in, out) bytes
/// as seen from this machine (in: from the destination).
async fn relay(
    stream: MuxStream,
    destination: tokio::net::TcpStream,
    gate: &EgressGate,
    rate: Option<u64>,
) -> (u64, u64) {
    let (hub_read, hub_write) = tokio::io::split(stream);
    let (dest_read, dest_write) = destination.into_split();
    let outward = copy_metered(hub_read, dest_write, gate, rate, Direction::Out);
    let inward = copy_metered(dest_read, hub_write, gate, rate, Direction::In);
    let (bytes_out, bytes_in) = tokio::join!(outward, inward);
    (bytes_in, bytes_out)
}

#[derive(Clone, Copy)]
enum Direction {
    In,
    Out,
}

/// Bytes copied but not yet on the meter; recorded when dropped, so a stream cut by a pause
/// or a dead session is still counted.
struct Unmetered<'a> {
    gate: &'a EgressGate,
    direction: Direction,
    bytes: u64,
}

impl Unmetered<'_> {
    fn record(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        match self.direction {
            Direction::In => self.gate.record(Capability::Tunnel, bytes, 0),
            Direction::Out => self.gate.record(Capability::Tunnel, 0, bytes),
        }
    }
}

impl Drop for Unmetered<'_> {
    fn drop(&mut self) {
        self.record();
    }
}

async fn copy_metered<R, W>(mut from: R, mut to: W, gate: &EgressGate, rate: Option<u64>, direction: Direction) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let started = Instant::now();
    // An idle stream holds only the small buffer (most streams of a proxy sit idle: its
    // memory is per idle stream); the first read that fills it moves to the large one.
    let mut small = [0u8; SMALL_BUFFER];
    let mut large: Vec<u8> = Vec::new();
    let mut total = 0u64;
    let mut unmetered = Unmetered { gate, direction, bytes: 0 };
    loop {
        let buffer: &mut [u8] = if large.is_empty() { &mut small } else { &mut large };
        let n = match from.read(buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
        if large.is_empty() && n == SMALL_BUFFER {
            large = vec![0u8; LARGE_BUFFER];
        }
        total += n as u64;
        unmetered.bytes += n as u64;
        if unmetered.bytes >= METER_EVERY {
            unmetered.record();
        }
        if let Some(rate) = rate.filter(|r| *r > 0) {
            // Never ahead of the person's rate: wait until the bytes so far are due.
            let due = Duration::from_secs_f64(total as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    drop(unmetered);
    let _ = to.shutdown().await;
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_cache_sees_every_write_and_rereads_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SettingsCache::default();
        assert!(!crate::consent::is_granted_in(&cache.get(dir.path()).unwrap(), &Consent::Tunnel));
        crate::consent::Consent::new(dir.path()).grant(&Consent::Tunnel).unwrap();
        let granted = cache.get(dir.path()).unwrap();
        assert!(crate::consent::is_granted_in(&granted, &Consent::Tunnel), "a grant is seen by the next stream");
        assert!(!Arc::ptr_eq(&granted, &cache.get(dir.path()).unwrap()), "a file changed this second is read again");
        std::thread::sleep(Duration::from_millis(1100));
        let settled = cache.get(dir.path()).unwrap();
        assert!(Arc::ptr_eq(&settled, &cache.get(dir.path()).unwrap()), "an unchanged file is not read again");
        crate::consent::Consent::new(dir.path()).revoke(&Consent::Tunnel).unwrap();
        assert!(
            !crate::consent::is_granted_in(&cache.get(dir.path()).unwrap(), &Consent::Tunnel),
            "a revoke is seen by the next stream"
        );
        std::fs::write(LocalSettings::path(dir.path()), "{not json").unwrap();
        assert!(cache.get(dir.path()).is_none(), "an unreadable file grants nothing");
    }
}
