//! A fake hub for tests: the agent HTTP API (enroll, challenge, token, with real Ed25519
//! signature checks) and a WebSocket whose sessions the test drives frame by frame, plus a
//! few plain HTTP targets for `http_request` jobs.
#![allow(dead_code)]

pub mod tunnel_hub;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use edge_protocol::api::*;
use edge_protocol::{decode_agent_frame, AgentFrame};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

pub const ENROLL_TOKEN: &str = "enroll-good";
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub enum ToAgent {
    Text(String),
    Close(u16, String),
    /// Drop the TCP connection without a close frame.
    Drop,
}

/// One WebSocket session as the test sees it.
pub struct FakeSession {
    pub token: String,
    incoming: mpsc::UnboundedReceiver<String>,
    outgoing: mpsc::UnboundedSender<ToAgent>,
    /// The agent's close frame (code, reason), if it sends one.
    closed: mpsc::UnboundedReceiver<(u16, String)>,
}

impl FakeSession {
    pub async fn recv(&mut self) -> AgentFrame {
        let text = tokio::time::timeout(TIMEOUT, self.incoming.recv())
            .await
            .expect("agent frame in time")
            .expect("session open");
        decode_agent_frame(&text).unwrap_or_else(|e| panic!("agent sent a bad frame {text}: {e}"))
    }

    /// Next frame that is not a heartbeat.
    pub async fn recv_skipping_hb(&mut self) -> AgentFrame {
        loop {
            match self.recv().await {
                AgentFrame::Hb { .. } => continue,
                frame => return frame,
            }
        }
    }

    /// The close frame the agent ends the session with.
    pub async fn recv_close(&mut self) -> (u16, String) {
        tokio::time::timeout(TIMEOUT, self.closed.recv())
            .await
            .expect("the agent closes in time")
            .expect("the agent sent a close frame before the connection ended")
    }

    pub fn send_text(&self, text: impl Into<String>) {
        let _ = self.outgoing.send(ToAgent::Text(text.into()));
    }

    pub fn send_json(&self, value: serde_json::Value) {
        self.send_text(value.to_string());
    }

    pub fn close(&self, code: u16, reason: &str) {
        let _ = self.outgoing.send(ToAgent::Close(code, reason.into()));
    }

    pub fn drop_connection(&self) {
        let _ = self.outgoing.send(ToAgent::Drop);
    }

    /// Reads `hello`, answers `hello_ack`.
    pub async fn handshake(&mut self, hb_interval_ms: u64) -> AgentFrame {
        self.handshake_with_limits(hb_interval_ms, None).await
    }

    /// [`FakeSession::handshake`] whose `hello_ack` carries the hub's `limits`.
    pub async fn handshake_with_limits(
        &mut self,
        hb_interval_ms: u64,
        limits: Option<serde_json::Value>,
    ) -> AgentFrame {
        let hello = self.recv().await;
        assert!(matches!(hello, AgentFrame::Hello { .. }), "first frame must be hello, got {hello:?}");
        let mut ack = serde_json::json!({
            "t": "hello_ack", "protocol": 1, "hub": "hub-test", "agentId": "agt-1", "hbIntervalMs": hb_interval_ms
        });
        if let Some(limits) = limits {
            ack["limits"] = limits;
        }
        self.send_json(ack);
        hello
    }
}

struct HubState {
    agents: Mutex<HashMap<String, VerifyingKey>>,
    nonces: Mutex<HashSet<String>>,
    valid_tokens: Mutex<HashSet<String>>,
    tokens_issued: AtomicU32,
    challenges: AtomicU32,
    revoked: AtomicBool,
    token_ttl_secs: i64,
    sessions: mpsc::UnboundedSender<FakeSession>,
}

pub struct FakeHub {
    pub url: String,
    state: Arc<HubState>,
    sessions: tokio::sync::Mutex<mpsc::UnboundedReceiver<FakeSession>>,
}

impl FakeHub {
    pub async fn start() -> FakeHub {
        Self::start_with_ttl(900).await
    }

    pub async fn start_with_ttl(token_ttl_secs: i64) -> FakeHub {
        let (sessions_tx, sessions_rx) = mpsc::unbounded_channel();
        let state = Arc::new(HubState {
            agents: Mutex::new(HashMap::new()),
            nonces: Mutex::new(HashSet::new()),
            valid_tokens: Mutex::new(HashSet::new()),
            tokens_issued: AtomicU32::new(0),
            challenges: AtomicU32::new(0),
            revoked: AtomicBool::new(false),
            token_ttl_secs,
            sessions: sessions_tx,
        });
        let app = Router::new()
            .route(ENROLL_PATH, post(enroll))
            .route(CHALLENGE_PATH, post(challenge))
            .route(TOKEN_PATH, post(token))
            .route(WS_PATH, get(ws))
            .merge(targets())
            .with_state(Arc::clone(&state));
        let url = serve(app).await;
        FakeHub { url, state, sessions: tokio::sync::Mutex::new(sessions_rx) }
    }

    pub async fn next_session(&self) -> FakeSession {
        tokio::time::timeout(TIMEOUT, self.sessions.lock().await.recv())
            .await
            .expect("agent connected in time")
            .expect("hub running")
    }

    /// Waits `wait` and asserts no new session arrived.
    pub async fn assert_no_session_within(&self, wait: Duration) {
        if let Ok(Some(session)) = tokio::time::timeout(wait, self.sessions.lock().await.recv()).await {
            panic!("unexpected new session with token {}", session.token);
        }
    }

    /// Agents that enrolled (each enrollment spends a token on a real hub).
    pub fn enrolled(&self) -> usize {
        self.state.agents.lock().unwrap().len()
    }

    pub fn tokens_issued(&self) -> u32 {
        self.state.tokens_issued.load(Ordering::SeqCst)
    }

    pub fn revoke(&self) {
        self.state.revoked.store(true, Ordering::SeqCst);
    }

    pub fn target(&self, path: &str) -> String {
        format!("{}/target{path}", self.url)
    }
}

pub async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

fn api_error(status: StatusCode, error: &str, message: &str) -> Response {
    (status, Json(ApiError { error: error.into(), message: message.into() })).into_response()
}

async fn enroll(State(state): State<Arc<HubState>>, Json(request): Json<EnrollRequest>) -> Response {
    if request.token != ENROLL_TOKEN {
        return api_error(StatusCode::UNAUTHORIZED, "invalid_token", "enrollment token is unknown or already used");
    }
    let Ok(bytes) = BASE64.decode(&request.public_key) else {
        return api_error(StatusCode::BAD_REQUEST, "bad_request", "publicKey is not base64");
    };
    let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| ())
        .and_then(|b| VerifyingKey::from_bytes(&b).map_err(|_| ()))
    else {
        return api_error(StatusCode::BAD_REQUEST, "bad_request", "publicKey is not an Ed25519 key");
    };
    assert!(request.version.as_deref().is_some_and(|v| v.starts_with("agent-")));
    let agent_id = "agt-1".to_owned();
    state.agents.lock().unwrap().insert(agent_id.clone(), key);
    Json(EnrollResponse { agent_id, creator_id: "cr-1".into() }).into_response()
}

async fn challenge(State(state): State<Arc<HubState>>, Json(request): Json<ChallengeRequest>) -> Response {
    if !state.agents.lock().unwrap().contains_key(&request.agent_id) {
        return api_error(StatusCode::NOT_FOUND, "not_found", "unknown agent");
    }
    let n = state.challenges.fetch_add(1, Ordering::SeqCst);
    let nonce = format!("nonce-{n}");
    state.nonces.lock().unwrap().insert(nonce.clone());
    Json(ChallengeResponse { nonce, expires_at: now() + 60 }).into_response()
}

async fn token(State(state): State<Arc<HubState>>, Json(request): Json<TokenRequest>) -> Response {
    if state.revoked.load(Ordering::SeqCst) {
        return api_error(StatusCode::UNAUTHORIZED, "unauthorized", "agent revoked");
    }
    if !state.nonces.lock().unwrap().remove(&request.nonce) {
        return api_error(StatusCode::UNAUTHORIZED, "unauthorized", "nonce unknown or used");
    }
    let Some(key) = state.agents.lock().unwrap().get(&request.agent_id).copied() else {
        return api_error(StatusCode::UNAUTHORIZED, "unauthorized", "unknown agent");
    };
    let signature = BASE64
        .decode(&request.signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
        .map(|b| Signature::from_bytes(&b));
    let message = token_signing_message(&request.agent_id, &request.nonce);
    if signature.is_none_or(|s| key.verify(&message, &s).is_err()) {
        return api_error(StatusCode::UNAUTHORIZED, "unauthorized", "bad signature");
    }
    let n = state.tokens_issued.fetch_add(1, Ordering::SeqCst);
    let jwt = format!("jwt-{n}-{}", request.agent_id);
    state.valid_tokens.lock().unwrap().insert(jwt.clone());
    Json(TokenResponse { token: jwt, expires_at: now() + state.token_ttl_secs }).into_response()
}

#[derive(serde::Deserialize)]
struct WsQuery {
    token: Option<String>,
}

/// Like the real hub, but stricter: the agent must send its JWT in the `Authorization`
/// header, and a JWT in the URL (where proxies log it) is refused.
async fn ws(
    State(state): State<Arc<HubState>>,
    Query(query): Query<WsQuery>,
    headers: axum::http::HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if query.token.is_some() {
        return api_error(StatusCode::BAD_REQUEST, "token_in_url", "send the JWT as `Authorization: Bearer`");
    }
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let Some(token) = bearer else {
        return api_error(StatusCode::UNAUTHORIZED, "invalid_token", "no `Authorization: Bearer` header");
    };
    upgrade.on_upgrade(move |socket| session(state, token, socket))
}

async fn session(state: Arc<HubState>, token: String, mut socket: WebSocket) {
    if !state.valid_tokens.lock().unwrap().contains(&token) {
        let _ = socket.send(Message::Close(Some(CloseFrame { code: 4403, reason: "unknown token".into() }))).await;
        return;
    }
    let (to_test, incoming) = mpsc::unbounded_channel();
    let (outgoing, mut from_test) = mpsc::unbounded_channel();
    let (close_to_test, closed) = mpsc::unbounded_channel();
    let _ = state.sessions.send(FakeSession { token, incoming, outgoing, closed });
    loop {
        tokio::select! {
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => { let _ = to_test.send(text.to_string()); }
                Some(Ok(Message::Close(frame))) => {
                    if let Some(frame) = frame {
                        let _ = close_to_test.send((frame.code, frame.reason.to_string()));
                    }
                    return;
                }
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            command = from_test.recv() => match command {
                Some(ToAgent::Text(text)) => { let _ = socket.send(Message::Text(text.into())).await; }
                Some(ToAgent::Close(code, reason)) => {
                    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                    return;
                }
                Some(ToAgent::Drop) | None => return,
            },
        }
    }
}

/// Plain HTTP endpoints for `http_request` jobs, under `/target`.
pub fn targets<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/target/hello", get(|| async { "hello world" }))
        .route(
            "/target/redirect/{n}",
            get(|Path(n): Path<u32>| async move {
                if n == 0 {
                    Redirect::temporary("/target/hello")
                } else {
                    Redirect::temporary(&format!("/target/redirect/{}", n - 1))
                }
            }),
        )
        .route("/target/loop", get(|| async { Redirect::temporary("/target/loop") }))
        .route(
            "/target/echo",
            any(|headers: HeaderMap, method: axum::http::Method, body: axum::body::Bytes| async move {
                let marker = headers.get("x-marker").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                (StatusCode::CREATED, [("x-echo-marker", marker), ("x-echo-method", method.to_string())], body)
            }),
        )
        .route(
            "/target/slow/{ms}",
            get(|Path(ms): Path<u64>| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                "done"
            }),
        )
        .route("/target/big", get(|| async { vec![b'x'; 2 * 1024 * 1024] }))
        .route("/target/teapot", get(|| async { (StatusCode::IM_A_TEAPOT, "short and stout") }))
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}
