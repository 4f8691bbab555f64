//! Owns the WebSocket upgrade of `/v1/agent/ws`: checking the HTTP/1.1 handshake (RFC 6455,
//! section 4.2), answering 101, and handing the upgraded connection to the session as a
//! tungstenite stream whose socket the session can still reach. axum's `WebSocketUpgrade`
//! does the same but keeps the socket to itself, and a session that refuses an oversized
//! frame has to read the rest of that frame off the wire before it closes, or its close
//! frame is followed by a TCP reset (see `ws::Session::close_oversized`). It must never
//! upgrade a request that is not a well-formed WebSocket handshake, and never run a session
//! outside the hub's task tracker (shutdown waits for sessions there).

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use std::future::Future;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::task::TaskTracker;
use tracing::warn;

/// An agent's upgraded connection.
pub type AgentSocket = WebSocketStream<TokioIo<Upgraded>>;

/// A request that asked for a WebSocket, checked; [`WsUpgrade::on_upgrade`] answers it.
pub struct WsUpgrade {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request is not a WebSocket handshake. The agent handler answers it itself (a bad
/// token first); used as a plain rejection it is a 426 naming the problem.
#[derive(Debug)]
pub struct NotAnUpgrade(pub &'static str);

impl IntoResponse for NotAnUpgrade {
    fn into_response(self) -> Response {
        let message = format!("this endpoint speaks WebSocket only: {}", self.0);
        super::Failure::new(StatusCode::UPGRADE_REQUIRED, "upgrade_required", message).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = NotAnUpgrade;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // HTTP/2 WebSockets (RFC 8441) are not served: the hub speaks HTTP/1.1 to agents.
        if parts.version > Version::HTTP_11 || parts.method != Method::GET {
            return Err(NotAnUpgrade("a WebSocket handshake is an HTTP/1.1 GET"));
        }
        if !has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(NotAnUpgrade("the `Connection` header does not ask for an upgrade"));
        }
        if !has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(NotAnUpgrade("the `Upgrade` header does not name websocket"));
        }
        if parts.headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
            return Err(NotAnUpgrade("`Sec-WebSocket-Version` must be 13"));
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(NotAnUpgrade("`Sec-WebSocket-Key` is missing"));
        };
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .map_err(|_| NotAnUpgrade("`Sec-WebSocket-Key` is not usable"))?;
        let on_upgrade =
            parts.extensions.remove::<OnUpgrade>().ok_or(NotAnUpgrade("this connection cannot be upgraded"))?;
        Ok(WsUpgrade { accept, on_upgrade })
    }
}

impl WsUpgrade {
    /// The 101 answer. Once it is sent, `serve` runs on the connection in a task of `tasks`.
    pub fn on_upgrade<F, Fut>(self, config: WebSocketConfig, tasks: &TaskTracker, serve: F) -> Response
    where
        F: FnOnce(AgentSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let WsUpgrade { accept, on_upgrade } = self;
        tasks.spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    serve(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await)
                        .await
                }
                Err(e) => warn!(error = %e, "WebSocket upgrade failed"),
            }
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        response
    }
}

/// Whether the comma-separated header `name` lists `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}
