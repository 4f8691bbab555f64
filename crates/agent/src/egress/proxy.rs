//! The browser's way out: an HTTP proxy on 127.0.0.1 (an ephemeral port) that Chromium is
//! launched with (`--proxy-server`, and `--proxy-bypass-list=<-loopback>` so that loopback
//! goes through it too). Every connection the browser opens — navigation, subresources,
//! redirects, WebSockets, links the page follows — arrives here as a `CONNECT host:port` (TLS,
//! wss) or an absolute-form request (`GET http://host:port/…`, ws) and is judged by the gate
//! like an `http_request` hop: one resolution, every address judged, the connection to
//! exactly those addresses.
//!
//! It owns the listener and the relayed connections; it must never accept a connection from
//! anything but loopback, never relay a second request on a plain-HTTP connection (each one
//! is a new destination to judge: it forces `Connection: close`), and never log paths.
//! A refusal answers `403` with the gate's sentence, so the page (and the flow step that
//! loaded it) fails instead of reaching the address.

use super::{Capability, EgressGate, Refusal};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The longest request head the proxy reads before refusing.
const MAX_HEAD_BYTES: usize = 32 * 1024;
/// How long a browser may take to send a request head on a new proxy connection.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A running proxy; it stops when dropped.
pub struct GateProxy {
    address: SocketAddr,
    stop: CancellationToken,
}

impl GateProxy {
    /// Listens on 127.0.0.1 (an ephemeral port) and relays through `gate`.
    pub async fn start(gate: EgressGate) -> std::io::Result<GateProxy> {
        GateProxy::start_here(gate)
    }

    /// [`GateProxy::start`] from synchronous code that runs inside a tokio runtime (the
    /// browser host starts its runtime lazily, from a sync call).
    pub fn start_here(gate: EgressGate) -> std::io::Result<GateProxy> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| std::io::Error::other(format!("the egress proxy needs a tokio runtime: {e}")))?;
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let listener = {
            let _entered = handle.enter();
            TcpListener::from_std(listener)?
        };
        let stop = CancellationToken::new();
        handle.spawn(serve(listener, gate, stop.clone()));
        Ok(GateProxy { address, stop })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The Chromium flags that send every connection through this proxy.
    pub fn chromium_args(&self) -> Vec<String> {
        chromium_args(self.address)
    }
}

/// The flags of a browser whose proxy could not start: a proxy address where nothing
/// listens, so every connection fails instead of going out ungated.
pub fn fail_closed_chromium_args() -> Vec<String> {
    chromium_args(SocketAddr::from(([127, 0, 0, 1], 1)))
}

/// `--proxy-server` plus the bypass rule that removes Chromium's implicit loopback bypass.
pub fn chromium_args(address: SocketAddr) -> Vec<String> {
    vec![format!("--proxy-server=http://{address}"), "--proxy-bypass-list=<-loopback>".to_owned()]
}

impl Drop for GateProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(listener: TcpListener, gate: EgressGate, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (client, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "egress proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !peer.ip().is_loopback() {
            continue;
        }
        let gate = gate.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = relay(client, gate) => {}
            }
        });
    }
}

/// A request head: its first line's parts, and the raw head bytes.
struct Head {
    method: String,
    target: String,
    version: String,
    /// Header lines, without the request line and the final blank line.
    headers: Vec<String>,
    /// Bytes the client sent after the head (a body's start).
    rest: Vec<u8>,
}

async fn read_head(client: &mut TcpStream) -> Option<Head> {
    let mut buffer = Vec::with_capacity(4096);
    let end = loop {
        let mut chunk = [0u8; 4096];
        let n = client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return None;
        }
    };
    let text = std::str::from_utf8(&buffer[..end]).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target, version) = (first.next()?.to_owned(), first.next()?.to_owned(), first.next()?.to_owned());
    let headers = lines.map(str::to_owned).collect();
    Some(Head { method, target, version, headers, rest: buffer[end + 4..].to_vec() })
}

async fn relay(mut client: TcpStream, gate: EgressGate) {
    let Ok(Some(head)) = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await else {
        let _ = answer(&mut client, "400 Bad Request", "the egress proxy could not read this request").await;
        return;
    };
    if head.method.eq_ignore_ascii_case("CONNECT") {
        let Ok(url) = url::Url::parse(&format!("https://{}/", head.target)) else {
            let _ = answer(&mut client, "400 Bad Request", "CONNECT needs host:port").await;
            return;
        };
        let Some(upstream) = open(&mut client, &gate, &url).await else { return };
        if client.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await.is_err() {
            return;
        }
        pipe(client, upstream, head.rest, 0, &gate).await;
        return;
    }
    // Absolute-form request: `GET http://host:port/path HTTP/1.1`.
    let Ok(url) = url::Url::parse(&head.target) else {
        let _ = answer(&mut client, "400 Bad Request", "a proxy request needs an absolute http:// URL").await;
        return;
    };
    if url.scheme() != "http" {
        let refusal = super::policy::judge_scheme(url.scheme(), false).err().map(Refusal::Denied);
        let message = refusal.map_or_else(|| "only http:// goes through without CONNECT".to_owned(), |r| r.to_string());
        let _ = answer(&mut client, "403 Forbidden", &message).await;
        return;
    }
    let Some(upstream) = open(&mut client, &gate, &url).await else { return };
    let mut path = url.path().to_owned();
    if let Some(query) = url.query() {
        path.push('?');
        path.push_str(query);
    }
    let upgrade = head.headers.iter().any(|h| h.to_ascii_lowercase().starts_with("upgrade:"));
    let mut forwarded = format!("{} {} {}\r\n", head.method, path, head.version);
    for line in &head.headers {
        let name = line.split(':').next().unwrap_or("").trim().to_ascii_lowercase();
        // One destination per connection: close after this exchange (a WebSocket keeps
        // its upgrade, which is one destination for its whole life).
        if name.starts_with("proxy-") || (name == "connection" && !upgrade) || name == "keep-alive" {
            continue;
        }
        forwarded.push_str(line);
        forwarded.push_str("\r\n");
    }
    if !upgrade {
        forwarded.push_str("Connection: close\r\n");
    }
    forwarded.push_str("\r\n");
    let sent = forwarded.len() as u64;
    let mut upstream = upstream;
    if upstream.write_all(forwarded.as_bytes()).await.is_err() {
        return;
    }
    pipe(client, upstream, head.rest, sent, &gate).await;
}

/// Judges `url`'s host and port and connects to the first admitted address that answers;
/// on a refusal or failure the client gets its answer and `None` comes back.
async fn open(client: &mut TcpStream, gate: &EgressGate, url: &url::Url) -> Option<TcpStream> {
    let addresses = match gate.admit_url(url, None, true, Capability::Browser).await {
        Ok(addresses) => addresses,
        Err(refusal) => {
            let status = match refusal {
                Refusal::Unresolved { .. } => "502 Bad Gateway",
                _ => "403 Forbidden",
            };
            let _ = answer(client, status, &refusal.to_string()).await;
            return None;
        }
    };
    for address in &addresses {
        if let Ok(Ok(stream)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
            return Some(stream);
        }
    }
    let _ = answer(client, "502 Bad Gateway", "no admitted address of this host answered").await;
    None
}

async fn answer(client: &mut TcpStream, status: &str, message: &str) -> std::io::Result<()> {
    let body = format!("{message}\n");
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nX-Edge-Egress: refused\r\nConnection: close\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await?;
    client.write_all(body.as_bytes()).await?;
    client.shutdown().await
}

/// Relays both ways until either side ends, then meters what crossed.
async fn pipe(client: TcpStream, mut upstream: TcpStream, early: Vec<u8>, already_sent: u64, gate: &EgressGate) {
    let sent = Arc::new(AtomicU64::new(already_sent));
    if !early.is_empty() {
        if upstream.write_all(&early).await.is_err() {
            return;
        }
        sent.fetch_add(early.len() as u64, Ordering::Relaxed);
    }
    let received = Arc::new(AtomicU64::new(0));
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let out = tokio::spawn(copy_counting(client_read, upstream_write, sent.clone()));
    copy_counting(upstream_read, client_write, received.clone()).await;
    // The site's side ended; the browser's usually follows at once. Bounded, since a
    // browser may keep an idle socket open.
    let abort = out.abort_handle();
    if tokio::time::timeout(Duration::from_secs(5), out).await.is_err() {
        abort.abort();
    }
    gate.record(Capability::Browser, received.load(Ordering::Relaxed), sent.load(Ordering::Relaxed));
}

async fn copy_counting(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, count: Arc<AtomicU64>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
    let _ = to.shutdown().await;
}
