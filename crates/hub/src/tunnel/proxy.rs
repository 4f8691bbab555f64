//! The hub's proxy port (`edge-hub serve --proxy-listen ADDR`): one listener speaking HTTP
//! `CONNECT`, plain HTTP forward proxying (absolute-form requests) and SOCKS5, so any
//! standard client can send its traffic out through an agent's tunnel.
//!
//! Credentials: the password is an API key of this hub; the user name chooses the exit:
//! `agent-<id>`, `creator-<id>` or `label-<label>`, optionally followed by
//! `-session-<token>`, which keeps choosing the same agent for the same token while it
//! stays connected (sticky sessions). A creator-scoped key only ever exits through its own
//! creator's agents; another creator's agent answers exactly like a missing one. What the
//! agent then reaches is its own decision (egress gate, consent, pause, caps): its refusal
//! comes back as 403 with its code in `X-Edge-Refusal` (SOCKS5: "not allowed by ruleset").
//! It must never open a stream for a request it could not authenticate, and never relay a
//! second request on a plain-HTTP connection (each is its own destination: it forces
//! `Connection: close`).

use super::{relay, Exit, OpenError, Opened};
use crate::api::{AppState, Caller};
use base64::Engine as _;
use edge_tunnel::open::Target;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The longest request head (HTTP) the proxy reads.
const MAX_HEAD_BYTES: usize = 32 * 1024;
/// How long a client may take to authenticate and name its destination.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How many exits one client stream is tried on when the instances holding them are gone.
const EXIT_TRIES: usize = 3;

/// Serves `listener` until `stop`.
pub async fn serve(listener: TcpListener, app: AppState, stop: CancellationToken) {
    let turn = std::sync::Arc::new(AtomicUsize::new(0));
    loop {
        let (client, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let turn = turn.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = handle(client, &app, &turn) => {}
            }
            debug!(%peer, "proxy connection closed");
        });
    }
}

/// Why a client gets no stream.
#[derive(Debug)]
enum Refusal {
    /// No or bad credentials.
    Auth(String),
    /// No agent with an open tunnel matches (or none the key may use).
    NoAgent(String),
    /// The agent refused, with its code.
    Agent {
        code: String,
        message: String,
    },
    /// The tunnel failed on the way.
    Failed(String),
    BadRequest(String),
}

impl Refusal {
    fn code(&self) -> &str {
        match self {
            Refusal::Auth(_) => "PROXY_AUTH",
            Refusal::NoAgent(_) => "NO_AGENT",
            Refusal::Agent { code, .. } => code,
            Refusal::Failed(_) => "NETWORK",
            Refusal::BadRequest(_) => "BAD_REQUEST",
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::Auth(m) | Refusal::NoAgent(m) | Refusal::Failed(m) | Refusal::BadRequest(m) => m.clone(),
            Refusal::Agent { code, message } => format!("{code}: {message}"),
        }
    }

    /// HTTP status: 407 auth, 403 the agent's policy said no, 400 a bad request, 502 else.
    fn status(&self) -> &'static str {
        match self {
            Refusal::Auth(_) => "407 Proxy Authentication Required",
            Refusal::Agent { code, .. } if code != "NETWORK" => "403 Forbidden",
            Refusal::BadRequest(_) => "400 Bad Request",
            _ => "502 Bad Gateway",
        }
    }

    /// SOCKS5 reply code (RFC 1928 §6).
    fn socks_reply(&self) -> u8 {
        match self {
            Refusal::Agent { code, .. } if code != "NETWORK" => 0x02,
            Refusal::Agent { .. } | Refusal::Failed(_) => 0x04,
            Refusal::BadRequest(_) => 0x07,
            _ => 0x01,
        }
    }
}

impl From<OpenError> for Refusal {
    fn from(error: OpenError) -> Refusal {
        match error {
            OpenError::Refused { code, message } => Refusal::Agent { code, message },
            OpenError::NoTunnel | OpenError::InstanceGone(_) => Refusal::NoAgent(error.to_string()),
            other => Refusal::Failed(other.to_string()),
        }
    }
}

async fn handle(client: TcpStream, app: &AppState, turn: &AtomicUsize) {
    let _ = client.set_nodelay(true);
    let mut first = [0u8; 1];
    if !matches!(client.peek(&mut first).await, Ok(1)) {
        return;
    }
    if first[0] == 0x05 {
        socks5(client, app, turn).await;
    } else {
        http(client, app, turn).await;
    }
}

/// Who the credentials stand for and which agent they choose.
async fn exit(app: &AppState, user: &str, password: &str, turn: &AtomicUsize) -> Result<Exit, Refusal> {
    let caller = Caller::from_key(app, Some(password))
        .await
        .map_err(|_| Refusal::Auth("the proxy password must be an API key of this hub".to_owned()))?;
    let (selector, session) = match user.rsplit_once("-session-") {
        Some((selector, token)) if !token.is_empty() => (selector, Some(token)),
        _ => (user, None),
    };
    let matches = |exit: &Exit| -> Result<bool, Refusal> {
        if let Some(id) = selector.strip_prefix("agent-") {
            Ok(exit.agent_id() == id)
        } else if let Some(id) = selector.strip_prefix("creator-") {
            Ok(exit.creator_id() == id)
        } else if let Some(label) = selector.strip_prefix("label-") {
            Ok(exit.labels().iter().any(|l| l == label))
        } else {
            Err(Refusal::Auth(format!(
                "the proxy user name {user:?} must be agent-<id>, creator-<id> or label-<label>, \
                 optionally followed by -session-<token>"
            )))
        }
    };
    let mut candidates = Vec::new();
    // Every instance's tunnels (creator and labels come with the route, so choosing asks no
    // other instance anything).
    for exit in super::exits(app).await {
        if caller.may_see(exit.creator_id()) && matches(&exit)? {
            candidates.push(exit);
        }
    }
    if candidates.is_empty() {
        return Err(Refusal::NoAgent(format!("no agent you may use matches {selector:?} with an open tunnel")));
    }
    let index = match session {
        // The same token picks the same agent while the set of candidates stays the same.
        Some(token) => (fnv1a(token.as_bytes()) % candidates.len() as u64) as usize,
        None => turn.fetch_add(1, Ordering::Relaxed) % candidates.len(),
    };
    Ok(candidates.swap_remove(index))
}

/// The agent's own refusals are counted where the stream was opened; the proxy's here.
fn note_refusal(refusal: &Refusal) {
    if !matches!(refusal, Refusal::Agent { .. } | Refusal::Failed(_)) {
        crate::metrics::tunnel_refused(refusal.code());
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

// ---- HTTP: CONNECT and absolute-form forward proxying ----

async fn http(mut client: TcpStream, app: &AppState, turn: &AtomicUsize) {
    let head = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_head(&mut client)).await {
        Ok(Ok(head)) => head,
        Ok(Err(refusal)) => return answer_http(&mut client, &refusal).await,
        Err(_) => return,
    };
    match http_stream(app, &head, turn).await {
        Ok((stream, target, agent_id)) => {
            info!(target = %target, "proxy stream open");
            if head.method.eq_ignore_ascii_case("CONNECT") {
                if client.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await.is_ok() {
                    relay(app, &agent_id, &mut client, stream, &head.rest).await;
                }
            } else {
                let mut forwarded = head.forwarded();
                forwarded.extend_from_slice(&head.rest);
                relay(app, &agent_id, &mut client, stream, &forwarded).await;
            }
        }
        Err(refusal) => {
            note_refusal(&refusal);
            info!(code = refusal.code(), reason = %refusal.message(), "proxy request refused");
            answer_http(&mut client, &refusal).await;
        }
    }
}

struct Head {
    method: String,
    /// `host:port` (CONNECT) or the absolute URL.
    target: String,
    version: String,
    headers: Vec<(String, String)>,
    /// Bytes read past the head.
    rest: Vec<u8>,
}

impl Head {
    /// The request as the origin server sees it: origin-form, no proxy headers, one request.
    fn forwarded(&self) -> Vec<u8> {
        let path = url::Url::parse(&self.target)
            .map(|u| match u.query() {
                Some(q) => format!("{}?{q}", u.path()),
                None => u.path().to_owned(),
            })
            .unwrap_or_else(|_| "/".to_owned());
        let mut out = format!("{} {path} {}\r\n", self.method, self.version);
        for (name, value) in &self.headers {
            let lower = name.to_ascii_lowercase();
            if lower.starts_with("proxy-") || lower == "connection" || lower == "keep-alive" {
                continue;
            }
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("Connection: close\r\n\r\n");
        out.into_bytes()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

async fn read_head(client: &mut TcpStream) -> Result<Head, Refusal> {
    let mut buffer = Vec::with_capacity(1024);
    let end = loop {
        let mut chunk = [0u8; 4096];
        let n = client.read(&mut chunk).await.map_err(|e| Refusal::BadRequest(e.to_string()))?;
        if n == 0 {
            return Err(Refusal::BadRequest("the connection ended before the request head".to_owned()));
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return Err(Refusal::BadRequest(format!("the request head is over {MAX_HEAD_BYTES} bytes")));
        }
    };
    let text = std::str::from_utf8(&buffer[..end]).map_err(|_| Refusal::BadRequest("the head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::BadRequest(format!("not an HTTP request line: {request_line:?}")));
    };
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':').map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())))
        .collect();
    Ok(Head {
        method: method.to_owned(),
        target: target.to_owned(),
        version: version.to_owned(),
        headers,
        rest: buffer[end..].to_vec(),
    })
}

async fn http_stream(app: &AppState, head: &Head, turn: &AtomicUsize) -> Result<(Opened, Target, String), Refusal> {
    let (user, password) = head
        .header("Proxy-Authorization")
        .and_then(|value| value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic ")))
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|pair| pair.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())))
        .ok_or_else(|| Refusal::Auth("send Proxy-Authorization: Basic with agent-<id>:<API key>".to_owned()))?;
    let target = if head.method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = head
            .target
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_owned(), p.parse::<u16>().ok()?)))
            .ok_or_else(|| Refusal::BadRequest(format!("CONNECT needs host:port, not {:?}", head.target)))?;
        Target::Connect { host, port }
    } else {
        let url = url::Url::parse(&head.target).map_err(|_| {
            Refusal::BadRequest(format!("a forward proxy request needs an absolute http:// URL, not {:?}", head.target))
        })?;
        if url.scheme() != "http" {
            return Err(Refusal::BadRequest("only http:// is forwarded; use CONNECT for https".to_owned()));
        }
        let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_owned();
        Target::Connect { host, port: url.port_or_known_default().unwrap_or(80) }
    };
    let exit = exit(app, &user, &password, turn).await?;
    let (stream, agent_id) = open_exit(app, exit, &target, (&user, &password), turn).await?;
    Ok((stream, target, agent_id))
}

/// Opens `target` through `exit`. When the instance holding that exit's tunnel is gone (it
/// died after writing its route, which then stays until it goes stale), the instance is
/// passed over from now on and another exit matching the same credentials is tried: clients
/// of the instances still up keep working while a dead one's routes age out.
async fn open_exit(
    app: &AppState,
    mut exit: Exit,
    target: &Target,
    (user, password): (&str, &str),
    turn: &AtomicUsize,
) -> Result<(Opened, String), Refusal> {
    for _ in 1..EXIT_TRIES {
        match exit.open(app, target.clone()).await {
            Err(OpenError::InstanceGone(why)) => {
                debug!(agent_id = exit.agent_id(), reason = %why, "exit's instance gone; choosing another");
                exit = self::exit(app, user, password, turn).await?;
            }
            opened => return Ok((opened?, exit.agent_id().to_owned())),
        }
    }
    Ok((exit.open(app, target.clone()).await?, exit.agent_id().to_owned()))
}

async fn answer_http(client: &mut TcpStream, refusal: &Refusal) {
    let body = format!("{}\n", refusal.message());
    let mut head = format!(
        "HTTP/1.1 {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nX-Edge-Refusal: {}\r\nConnection: close\r\n",
        refusal.status(),
        body.len(),
        refusal.code()
    );
    if matches!(refusal, Refusal::Auth(_)) {
        head.push_str("Proxy-Authenticate: Basic realm=\"edge-hub\"\r\n");
    }
    head.push_str("\r\n");
    let _ = client.write_all(head.as_bytes()).await;
    let _ = client.write_all(body.as_bytes()).await;
    let _ = client.shutdown().await;
}

// ---- SOCKS5 (RFC 1928) with username/password (RFC 1929) ----

async fn socks5(mut client: TcpStream, app: &AppState, turn: &AtomicUsize) {
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, socks5_handshake(&mut client, app, turn)).await;
    match handshake {
        Ok(Ok((stream, target, agent_id))) => {
            info!(target = %target, "proxy stream open (SOCKS5)");
            // Bound address: not meaningful through a tunnel; zeros, as many proxies send.
            if client.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await.is_ok() {
                relay(app, &agent_id, &mut client, stream, &[]).await;
            }
        }
        Ok(Err(Some(refusal))) => {
            note_refusal(&refusal);
            info!(code = refusal.code(), reason = %refusal.message(), "proxy request refused (SOCKS5)");
            let _ = client.write_all(&[5, refusal.socks_reply(), 0, 1, 0, 0, 0, 0, 0, 0]).await;
        }
        Ok(Err(None)) | Err(_) => {}
    }
}

/// `Err(None)`: the client was already answered (bad greeting or credentials).
async fn socks5_handshake(
    client: &mut TcpStream,
    app: &AppState,
    turn: &AtomicUsize,
) -> Result<(Opened, Target, String), Option<Refusal>> {
    let io = |_| None;
    let mut greeting = [0u8; 2];
    client.read_exact(&mut greeting).await.map_err(io)?;
    let mut methods = vec![0u8; greeting[1] as usize];
    client.read_exact(&mut methods).await.map_err(io)?;
    if !methods.contains(&0x02) {
        // Username/password is the only method: the password is the API key.
        let _ = client.write_all(&[5, 0xff]).await;
        return Err(None);
    }
    client.write_all(&[5, 0x02]).await.map_err(io)?;
    let mut version = [0u8; 2];
    client.read_exact(&mut version).await.map_err(io)?;
    let mut user = vec![0u8; version[1] as usize];
    client.read_exact(&mut user).await.map_err(io)?;
    let mut length = [0u8; 1];
    client.read_exact(&mut length).await.map_err(io)?;
    let mut password = vec![0u8; length[0] as usize];
    client.read_exact(&mut password).await.map_err(io)?;
    let (user, password) =
        (String::from_utf8_lossy(&user).into_owned(), String::from_utf8_lossy(&password).into_owned());
    let exit = match exit(app, &user, &password, turn).await {
        Ok(exit) => {
            client.write_all(&[1, 0]).await.map_err(io)?;
            exit
        }
        Err(Refusal::Auth(why)) => {
            info!(reason = %why, "SOCKS5 authentication refused");
            let _ = client.write_all(&[1, 1]).await;
            return Err(None);
        }
        Err(other) => {
            // Authenticated but nothing to exit through: say so in the request's reply.
            client.write_all(&[1, 0]).await.map_err(io)?;
            let _ = read_socks_request(client).await;
            return Err(Some(other));
        }
    };
    let target = read_socks_request(client).await?;
    let (stream, agent_id) = open_exit(app, exit, &target, (&user, &password), turn).await.map_err(Some)?;
    Ok((stream, target, agent_id))
}

async fn read_socks_request(client: &mut TcpStream) -> Result<Target, Option<Refusal>> {
    let io = |_| None;
    let mut request = [0u8; 4];
    client.read_exact(&mut request).await.map_err(io)?;
    if request[1] != 1 {
        return Err(Some(Refusal::BadRequest("only the SOCKS5 CONNECT command is served".to_owned())));
    }
    let host = match request[3] {
        1 => {
            let mut v4 = [0u8; 4];
            client.read_exact(&mut v4).await.map_err(io)?;
            std::net::Ipv4Addr::from(v4).to_string()
        }
        3 => {
            let mut length = [0u8; 1];
            client.read_exact(&mut length).await.map_err(io)?;
            let mut name = vec![0u8; length[0] as usize];
            client.read_exact(&mut name).await.map_err(io)?;
            String::from_utf8(name).map_err(|_| Some(Refusal::BadRequest("the host name is not UTF-8".into())))?
        }
        4 => {
            let mut v6 = [0u8; 16];
            client.read_exact(&mut v6).await.map_err(io)?;
            std::net::Ipv6Addr::from(v6).to_string()
        }
        other => return Err(Some(Refusal::BadRequest(format!("unknown SOCKS5 address type {other}")))),
    };
    let mut port = [0u8; 2];
    client.read_exact(&mut port).await.map_err(io)?;
    Ok(Target::Connect { host, port: u16::from_be_bytes(port) })
}
