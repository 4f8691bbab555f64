//! Test harness: starts the real hub in-process on 127.0.0.1:0 with a temporary SQLite
//! file and talks to it over real sockets, as an agent (HTTP + WebSocket) and as an
//! operator. It must never reach into the hub's internals beyond what a tool would use
//! (the store handle for creating tokens and keys).

#![allow(dead_code)]

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use edge_hub::{HubConfig, RunningHub, Secret};
use edge_protocol::api::AgentClaims;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use std::time::Duration;
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123456789";
pub const CREATOR: &str = "creator-1";

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct TestHub {
    hub: Option<RunningHub>,
    pub dir: TempDir,
    pub base: String,
    pub api_key: String,
    pub http: reqwest::Client,
}

fn config(dir: &TempDir) -> HubConfig {
    let url = format!("sqlite://{}", dir.path().join("data").join("hub.db").display());
    let mut config = HubConfig::new("127.0.0.1:0".parse().expect("literal address"), url);
    config.hb_interval = Duration::from_secs(1);
    config.jwt_secret = Some(Secret::new(JWT_SECRET));
    config
}

impl TestHub {
    pub async fn start() -> TestHub {
        let dir = tempfile::tempdir().expect("temp dir");
        let hub = edge_hub::start(config(&dir)).await.expect("hub starts");
        let api_key =
            edge_hub::create_api_key(&*hub.store(), Some("tests")).await.expect("api key").expose().to_owned();
        TestHub {
            base: format!("http://{}", hub.local_addr()),
            hub: Some(hub),
            dir,
            api_key,
            http: reqwest::Client::new(),
        }
    }

    fn hub(&self) -> &RunningHub {
        self.hub.as_ref().expect("hub is running")
    }

    /// Stops the hub and starts a new one on the same database file (new port).
    pub async fn restart(&mut self) {
        if let Some(hub) = self.hub.take() {
            hub.shutdown().await.expect("clean shutdown");
        }
        let hub = edge_hub::start(config(&self.dir)).await.expect("hub restarts");
        self.base = format!("http://{}", hub.local_addr());
        self.hub = Some(hub);
    }

    pub async fn shutdown(mut self) {
        if let Some(hub) = self.hub.take() {
            hub.shutdown().await.expect("clean shutdown");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn ws_url(&self) -> String {
        format!("{}/v1/agent/ws", self.base.replacen("http://", "ws://", 1))
    }

    pub async fn enrollment_token(&self, creator: &str, ttl: Duration) -> String {
        edge_hub::create_enrollment_token(&*self.hub().store(), creator, ttl)
            .await
            .expect("enrollment token")
            .expose()
            .to_owned()
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self.http.post(self.url(path)).json(&body).send().await.expect("request");
        status_and_json(response).await
    }

    pub async fn operator_post(&self, path: &str, body: Value) -> (u16, Value) {
        let response =
            self.http.post(self.url(path)).bearer_auth(&self.api_key).json(&body).send().await.expect("request");
        status_and_json(response).await
    }

    pub async fn operator_get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).bearer_auth(&self.api_key).send().await.expect("request");
        status_and_json(response).await
    }

    pub async fn submit_job(&self, body: Value) -> Value {
        let (status, job) = self.operator_post("/v1/jobs", body).await;
        assert_eq!(status, 201, "job accepted: {job}");
        job
    }

    pub async fn job(&self, id: &str) -> Value {
        let (status, job) = self.operator_get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "{job}");
        job
    }

    /// Polls until the job reaches `status` (the hub applies frames asynchronously).
    pub async fn wait_for_job_status(&self, id: &str, status: &str) -> Value {
        for _ in 0..100 {
            let job = self.job(id).await;
            if job["status"] == status {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("job {id} never reached {status}: {}", self.job(id).await);
    }

    /// Enrolls a fresh agent for `creator` and returns it.
    pub async fn enroll(&self, creator: &str) -> TestAgent {
        let token = self.enrollment_token(creator, Duration::from_secs(3600)).await;
        let key = SigningKey::from_bytes(&random_seed());
        let (status, body) = self
            .post(
                "/v1/agent/enroll",
                json!({"token": token, "publicKey": STANDARD.encode(key.verifying_key().as_bytes()),
                       "name": "test-machine", "version": "agent-0.1.0"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        TestAgent {
            agent_id: body["agentId"].as_str().expect("agentId").to_owned(),
            creator_id: body["creatorId"].as_str().expect("creatorId").to_owned(),
            key,
        }
    }

    /// Runs challenge → sign → token and returns the JWT.
    pub async fn session_token(&self, agent: &TestAgent) -> String {
        let (status, challenge) = self.post("/v1/agent/challenge", json!({"agentId": agent.agent_id})).await;
        assert_eq!(status, 200, "{challenge}");
        let nonce = challenge["nonce"].as_str().expect("nonce");
        let (status, token) = self
            .post("/v1/agent/token", json!({"agentId": agent.agent_id, "nonce": nonce, "signature": agent.sign(nonce)}))
            .await;
        assert_eq!(status, 200, "{token}");
        token["token"].as_str().expect("token").to_owned()
    }

    pub async fn connect(&self, token: &str) -> Ws {
        let (ws, _) = tokio_tungstenite::connect_async(format!("{}?token={token}", self.ws_url()))
            .await
            .expect("WebSocket connects");
        ws
    }

    /// Enroll, get a token, connect and say hello; returns after hello_ack.
    pub async fn connected_agent(&self, creator: &str, slots: u32) -> (TestAgent, Ws) {
        let agent = self.enroll(creator).await;
        let token = self.session_token(&agent).await;
        let mut ws = self.connect(&token).await;
        send(
            &mut ws,
            json!({"t":"hello","protocol":1,"v":"agent-0.1.0","capabilities":["http_request"],"slots":slots}),
        )
        .await;
        let ack = recv(&mut ws).await;
        assert_eq!(ack["t"], "hello_ack", "{ack}");
        (agent, ws)
    }
}

pub struct TestAgent {
    pub agent_id: String,
    pub creator_id: String,
    pub key: SigningKey,
}

impl TestAgent {
    pub fn sign(&self, nonce: &str) -> String {
        let message = edge_protocol::api::token_signing_message(&self.agent_id, nonce);
        STANDARD.encode(self.key.sign(&message).to_bytes())
    }
}

pub fn random_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).expect("random");
    seed
}

/// A JWT signed with `secret`, for tests that need tokens the hub would never issue.
pub fn mint_jwt(secret: &str, agent: &TestAgent, exp: i64) -> String {
    let claims =
        AgentClaims { agent_id: agent.agent_id.clone(), creator_id: agent.creator_id.clone(), exp, iat: exp - 900 };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("jwt encodes")
}

pub fn now_secs() -> i64 {
    edge_hub::crypto::now_secs()
}

async fn status_and_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("body is not JSON ({status}): {text}"));
    (status, body)
}

pub async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.expect("send frame");
}

pub async fn send_raw(ws: &mut Ws, message: Message) {
    ws.send(message).await.expect("send message");
}

/// Next message that is not a ping/pong, within 5 s.
pub async fn next_message(ws: &mut Ws) -> Message {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
            .expect("stream open")
            .expect("message");
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return message;
        }
    }
}

/// Next text frame as JSON, within 5 s.
pub async fn recv(ws: &mut Ws) -> Value {
    match next_message(ws).await {
        Message::Text(text) => serde_json::from_str(text.as_str()).expect("frame is JSON"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Asserts nothing arrives for `wait`.
pub async fn expect_silence(ws: &mut Ws, wait: Duration) {
    if let Ok(Some(Ok(message))) = tokio::time::timeout(wait, ws.next()).await {
        panic!("expected no frame, got {message:?}");
    }
}

/// Reads until the close frame and returns its code and reason, then drives the stream to
/// its end so the client's close reply is actually sent (as a real agent would).
pub async fn expect_close(ws: &mut Ws) -> (u16, String) {
    let closed = loop {
        match next_message(ws).await {
            Message::Close(Some(frame)) => break (u16::from(frame.code), frame.reason.to_string()),
            Message::Close(None) => panic!("close frame without a code"),
            _ => continue,
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = ws.next().await {} }).await;
    closed
}
