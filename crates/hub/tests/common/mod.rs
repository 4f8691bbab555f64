//! Test harness: starts the real hub in-process on 127.0.0.1:0 with a temporary SQLite
//! file and talks to it over real sockets, as an agent (HTTP + WebSocket) and as an
//! operator. It must never reach into the hub's internals beyond what a tool would use
//! (the store handle for creating tokens and keys).

#![allow(dead_code)]

/// Declares each named `async fn NAME(db: TestDb)` of the test file as two tests, on SQLite
/// and on PostgreSQL (the latter skipped on a bare `cargo test` without PostgreSQL, failing
/// when `EDGE_TEST_POSTGRES_URL` or `CI` says it must run): the store's conformance suite.
#[allow(unused_macros)] // each test file includes this module; few declare store tests
macro_rules! both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::TestDb::sqlite()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(db) = super::TestDb::postgres().await {
                        super::$name(db).await
                    }
                }
            )*
        }
    };
}

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use edge_hub::{HubConfig, JobTypeSpec, RunningHub, Secret};
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
    pub db: TestDb,
    pub config: HubConfig,
    pub base: String,
    pub api_key: String,
    pub http: reqwest::Client,
}

/// Opaque job types the tests submit besides `http_request`.
pub const CUSTOM: &str = "custom";
/// A message-sending type (dedupe ledger).
pub const MESSAGE: &str = "send_message";

/// A hub configured for fast tests: 1 s heartbeats, quick sweeps and polls, short backoff.
/// The visibility timeout stays at its 120 s default unless a test shortens it.
pub fn config(url: &str) -> HubConfig {
    let mut config = HubConfig::new("127.0.0.1:0".parse().expect("literal address"), url);
    config.hb_interval = Duration::from_secs(1);
    config.jwt_secret = Some(Secret::new(JWT_SECRET));
    config.queue.sweep_interval = Duration::from_millis(50);
    config.queue.poll_interval = Duration::from_millis(100);
    config.queue.retry_base = Duration::from_millis(20);
    config.job_types.register(JobTypeSpec::opaque(CUSTOM));
    config.job_types.register(JobTypeSpec::opaque(MESSAGE).sending_messages());
    // Tests enroll many agents and submit in bursts from one address and key; the rate
    // limit tests lower these again.
    config.rate_limits.auth_per_minute_per_address = std::num::NonZeroU32::new(1_000_000).expect("non-zero");
    config.rate_limits.jobs_per_second_per_key = std::num::NonZeroU32::new(1_000_000).expect("non-zero");
    config
}

impl TestHub {
    /// A hub on a fresh SQLite file.
    pub async fn start() -> TestHub {
        TestHub::start_on(TestDb::sqlite(), |_| {}).await
    }

    /// A hub on `db`, with `tweak` applied to the test configuration.
    pub async fn start_on(db: TestDb, tweak: impl FnOnce(&mut HubConfig)) -> TestHub {
        let mut config = config(&db.url);
        tweak(&mut config);
        let hub = edge_hub::start(config.clone()).await.expect("hub starts");
        let api_key =
            edge_hub::create_api_key(&*hub.store(), Some("tests")).await.expect("api key").expose().to_owned();
        TestHub {
            base: format!("http://{}", hub.local_addr()),
            hub: Some(hub),
            db,
            config,
            api_key,
            http: http_client(),
        }
    }

    /// Another hub process (in-process) on the same database, with its own port.
    pub async fn sibling(&self) -> TestHub {
        self.sibling_with(|_| {}).await
    }

    /// Another instance on the same database, its configuration changed by `tweak`.
    pub async fn sibling_with(&self, tweak: impl FnOnce(&mut HubConfig)) -> TestHub {
        let mut config = self.config.clone();
        tweak(&mut config);
        let hub = edge_hub::start(config.clone()).await.expect("sibling hub starts");
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        TestHub {
            base: format!("{scheme}://{}", hub.local_addr()),
            hub: Some(hub),
            db: self.db.shared(),
            config,
            api_key: self.api_key.clone(),
            http: http_client(),
        }
    }

    pub fn hub(&self) -> &RunningHub {
        self.hub.as_ref().expect("hub is running")
    }

    pub fn store(&self) -> std::sync::Arc<dyn edge_hub::store::Store> {
        self.hub().store()
    }

    /// Stops the hub and starts a new one on the same database (new port).
    pub async fn restart(&mut self) {
        if let Some(hub) = self.hub.take() {
            hub.shutdown().await.expect("clean shutdown");
        }
        let hub = edge_hub::start(self.config.clone()).await.expect("hub restarts");
        self.base = format!("http://{}", hub.local_addr());
        self.hub = Some(hub);
    }

    /// Stops the hub as a crash would: no job is released.
    pub async fn crash(mut self) {
        if let Some(hub) = self.hub.take() {
            hub.crash().await;
        }
    }

    /// An API key scoped to one creator.
    pub async fn creator_key(&self, creator: &str) -> String {
        edge_hub::create_scoped_api_key(&*self.store(), Some("creator"), Some(creator))
            .await
            .expect("creator key")
            .expose()
            .to_owned()
    }

    pub async fn request(&self, method: reqwest::Method, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        status_and_json(request.send().await.expect("request")).await
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

    /// A page that is not JSON (`/metrics`), with the operator key.
    pub async fn operator_get_text(&self, path: &str) -> String {
        let response = self.http.get(self.url(path)).bearer_auth(&self.api_key).send().await.expect("request");
        response.text().await.expect("body")
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
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let job = self.job(id).await;
            if job["status"] == status {
                return job;
            }
            assert!(tokio::time::Instant::now() < deadline, "job {id} never reached {status}: {job}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
        let ws = self.hello(&agent, json!({"slots": slots})).await;
        (agent, ws)
    }

    /// Connects `agent` and says hello with `extra` fields merged in (slots, labels,
    /// capabilities…); returns after hello_ack.
    pub async fn hello(&self, agent: &TestAgent, extra: Value) -> Ws {
        let token = self.session_token(agent).await;
        let mut ws = self.connect(&token).await;
        let mut hello = json!({"t":"hello","protocol":1,"v":"agent-0.1.0",
                               "capabilities":["http_request", CUSTOM, MESSAGE, "job_cancel"],"slots":1});
        if let (Some(hello), Some(extra)) = (hello.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                hello.insert(k.clone(), v.clone());
            }
        }
        send(&mut ws, hello).await;
        let ack = recv(&mut ws).await;
        assert_eq!(ack["t"], "hello_ack", "{ack}");
        ws
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

/// Next message that is not a ping/pong, within 15 s (a deadline for a loaded machine; the
/// frame normally comes in milliseconds).
pub async fn next_message(ws: &mut Ws) -> Message {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("a message within 15 s")
            .expect("stream open")
            .expect("message");
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return message;
        }
    }
}

/// Next text frame as JSON, within 15 s.
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

/// A database for one test: a SQLite file in a temp dir, or a PostgreSQL schema of its own
/// (dropped when the last handle goes), so tests run in parallel.
pub struct TestDb {
    pub url: String,
    pub engine: &'static str,
    _dir: Option<std::sync::Arc<TempDir>>,
    _schema: Option<std::sync::Arc<PgSchema>>,
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("data").join("hub.db").display());
        TestDb { url, engine: "sqlite", _dir: Some(std::sync::Arc::new(dir)), _schema: None }
    }

    /// A fresh schema on the test PostgreSQL (`EDGE_TEST_POSTGRES_URL`, default
    /// `postgres://postgres@127.0.0.1:5432/test`). `None` (with the reason printed) when
    /// no PostgreSQL answers and none is required; when `EDGE_TEST_POSTGRES_URL` is set
    /// (`cargo xtask test` sets it) or `CI` is, that is a test failure.
    pub async fn postgres() -> Option<TestDb> {
        let base = postgres_base_url().await?;
        let schema = format!("edge_test_{}", hex(&random_seed()[..8]));
        let mut conn = connect_pg(&base).await.expect("PostgreSQL answered a moment ago");
        sqlx::Executor::execute(&mut conn, format!("CREATE SCHEMA {schema}").as_str()).await.expect("create schema");
        let _ = sqlx::Connection::close(conn).await;
        let separator = if base.contains('?') { '&' } else { '?' };
        // The application name marks this test's connections so the schema's drop can end
        // them (see `PgSchema::drop`).
        let url = format!("{base}{separator}options[search_path]={schema}&application_name={schema}");
        Some(TestDb {
            url,
            engine: "postgres",
            _dir: None,
            _schema: Some(std::sync::Arc::new(PgSchema { base, name: schema })),
        })
    }

    /// Another handle on the same database (for sibling hubs).
    pub fn shared(&self) -> TestDb {
        TestDb { url: self.url.clone(), engine: self.engine, _dir: self._dir.clone(), _schema: self._schema.clone() }
    }
}

pub struct PgSchema {
    base: String,
    name: String,
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let base = self.base.clone();
        let name = self.name.clone();
        // Drop runs outside any runtime, or inside the test's own single-threaded one, which
        // this join blocks. A hub still alive on that runtime (its sweeper mid-transaction
        // in this schema) can then never finish its transaction, and DROP SCHEMA would wait
        // for its locks forever. So the schema's own connections are ended first, and the
        // drop gives up after a bounded wait rather than hang the suite.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(async {
                if let Ok(mut conn) = connect_pg(&base).await {
                    let _ = sqlx::query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE application_name = $1 AND pid <> pg_backend_pid()",
                    )
                    .bind(&name)
                    .execute(&mut conn)
                    .await;
                    let _ = sqlx::Executor::execute(&mut conn, "SET lock_timeout = '10s'").await;
                    let _ =
                        sqlx::Executor::execute(&mut conn, format!("DROP SCHEMA IF EXISTS {name} CASCADE").as_str())
                            .await;
                    let _ = sqlx::Connection::close(conn).await;
                }
            });
        })
        .join();
    }
}

async fn connect_pg(url: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
    use std::str::FromStr as _;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
    match tokio::time::timeout(Duration::from_secs(3), sqlx::ConnectOptions::connect(&options)).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::PoolTimedOut),
    }
}

/// The test PostgreSQL's URL once it answered; checked once per test binary.
async fn postgres_base_url() -> Option<String> {
    static ANSWER: tokio::sync::OnceCell<Option<String>> = tokio::sync::OnceCell::const_new();
    ANSWER
        .get_or_init(|| async {
            let named = std::env::var("EDGE_TEST_POSTGRES_URL").ok().filter(|u| !u.trim().is_empty());
            // A URL someone named (as `cargo xtask test` does) is one the run relies on.
            let required = named.is_some() || std::env::var_os("CI").is_some();
            let url = named.unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned());
            match connect_pg(&url).await {
                Ok(conn) => {
                    let _ = sqlx::Connection::close(conn).await;
                    Some(url)
                }
                Err(e) => {
                    let reason = format!(
                        "PostgreSQL at {url} does not answer ({e}); start one with tests/support/postgres.sh \
                         and set EDGE_TEST_POSTGRES_URL"
                    );
                    if required {
                        panic!(
                            "EDGE_TEST_POSTGRES_URL or CI is set, so the PostgreSQL tests may not be skipped: {reason}"
                        );
                    }
                    eprintln!("SKIPPING the PostgreSQL tests: {reason}");
                    None
                }
            }
        })
        .await
        .clone()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An HTTP client for the tests. `cargo test --workspace` unifies reqwest's features with the
/// agent's, which turns on rustls without choosing a crypto provider; reqwest then panics
/// ("No provider set") on build. The tests choose ring, as the agent does.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

pub fn http_client() -> reqwest::Client {
    http_client_builder().build().expect("an HTTP client")
}

/// Polls `check` every 20 ms until it answers `Some`, and returns that; panics naming `what`
/// once `deadline` has passed. Tests wait for the event itself this way, never for a fixed
/// time, so a loaded machine makes them slower, not red.
pub async fn wait_until<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < until, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An RFC 3339 timestamp of the hub's, in Unix ms.
pub fn unix_ms(text: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text.as_str().expect("a timestamp"))
        .unwrap_or_else(|e| panic!("{text} is not RFC 3339: {e}"))
        .timestamp_millis()
}

/// A JSON value nested `levels` deep, `{"a":{"a":…{}…}}`, as an attacker would send it.
pub fn nested_json(levels: usize) -> Value {
    let text = format!("{}{{}}{}", r#"{"a":"#.repeat(levels - 1), "}".repeat(levels - 1));
    serde_json::from_str(&text).expect("nested JSON within serde_json's own limit")
}

/// A test CA and a server certificate for 127.0.0.1 it signed, made by the `openssl`
/// command (webpki refuses a self-signed certificate as a server's): (CA, cert, key) paths.
pub fn test_certificates(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let openssl = |args: &[&str]| {
        let made = std::process::Command::new("openssl").args(args).current_dir(dir).output().unwrap_or_else(|e| {
            panic!("the openssl command is needed for this test (Debian: apt-get install --no-install-recommends openssl): {e}")
        });
        assert!(made.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&made.stderr));
    };
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=edge-hub test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
    ]);
    (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"))
}
