//! The agent's device sign-in polling rules (RFC 8628 §3.5) against a hub played over a real
//! socket that answers what a test needs (the real hub's own states are tested in
//! crates/hub/tests/device.rs; the real pair in tests/e2e/tests/device_login.rs): the first
//! poll waits the interval, `slow_down` adds 5 s, and an unapproved code ends on the
//! agent's own clock even when the hub never says it expired.

mod support;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use edge_agent::{AgentError, AgentService, AgentSettings, MemoryCredentialStore};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Script {
    /// The `error` of each poll in turn; past the end, the poll is approved (if `approve`).
    answers: Vec<&'static str>,
    approve: bool,
    expires_in: u64,
    polls: Vec<Instant>,
    issued_at: Option<Instant>,
}

type Shared = Arc<Mutex<Script>>;

async fn device_code(State(script): State<Shared>, Json(body): Json<Value>) -> Json<Value> {
    assert!(body["publicKey"].as_str().is_some_and(|k| k.len() == 44), "{body}");
    let mut script = script.lock().unwrap();
    script.issued_at = Some(Instant::now());
    Json(json!({
        "device_code": "edc_secret", "user_code": "ABCD-EFGH",
        "verification_uri": "http://127.0.0.1/device",
        "verification_uri_complete": "http://127.0.0.1/device?user_code=ABCD-EFGH",
        "expires_in": script.expires_in, "interval": 1,
    }))
}

async fn token(State(script): State<Shared>, Json(body): Json<Value>) -> Response {
    assert_eq!(body["grant_type"], "urn:ietf:params:oauth:grant-type:device_code");
    assert_eq!(body["device_code"], "edc_secret");
    let mut script = script.lock().unwrap();
    script.polls.push(Instant::now());
    let n = script.polls.len() - 1;
    match script.answers.get(n) {
        Some(error) => (StatusCode::BAD_REQUEST, Json(json!({"error": error, "message": "scripted"}))).into_response(),
        None if script.approve => Json(json!({"agentId": "agt_device", "creatorId": "alice"})).into_response(),
        None => (StatusCode::BAD_REQUEST, Json(json!({"error": "authorization_pending", "message": "scripted"})))
            .into_response(),
    }
}

async fn scripted_hub(script: Script) -> (String, Shared) {
    let shared = Arc::new(Mutex::new(script));
    let app = Router::new()
        .route("/v1/agent/device/code", post(device_code))
        .route("/v1/agent/token", post(token))
        .with_state(shared.clone());
    (support::serve(app).await, shared)
}

fn service(dir: &tempfile::TempDir) -> AgentService {
    AgentService::with_store(AgentSettings::new(dir.path().to_path_buf()), Arc::new(MemoryCredentialStore::new()))
}

#[tokio::test]
async fn polls_wait_the_interval_and_slow_down_adds_five_seconds() {
    let script = Script {
        answers: vec!["slow_down", "authorization_pending"],
        approve: true,
        expires_in: 60,
        ..Default::default()
    };
    let (hub, shared) = scripted_hub(script).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = service(&dir);
    let login = agent.device_login(&hub, Some("test-pc".into())).await.unwrap();
    assert_eq!(login.codes().user_code, "ABCD-EFGH");
    assert!(!format!("{login:?}").contains("edc_secret"), "the device code never shows in Debug");
    let outcome = agent.finish_device_login(login).await.unwrap();
    assert_eq!((outcome.agent_id.as_str(), outcome.creator_id.as_str()), ("agt_device", "alice"));
    // Stored as enroll stores it.
    let snapshot = agent.reload_credentials().await.unwrap();
    assert!(snapshot.logged_in);
    assert_eq!(snapshot.creator_id.as_deref(), Some("alice"));

    let script = shared.lock().unwrap();
    let issued = script.issued_at.unwrap();
    let gaps: Vec<Duration> =
        std::iter::once(script.polls[0] - issued).chain(script.polls.windows(2).map(|w| w[1] - w[0])).collect();
    assert_eq!(gaps.len(), 3, "slow_down, pending, approved: {gaps:?}");
    assert!(gaps[0] >= Duration::from_secs(1), "the first poll waits the interval: {gaps:?}");
    assert!(gaps[1] >= Duration::from_secs(6), "slow_down: 1 + 5 s: {gaps:?}");
    assert!(gaps[2] >= Duration::from_secs(6), "the larger interval stays: {gaps:?}");
    assert!(gaps[2] < Duration::from_secs(9), "and grows only on slow_down: {gaps:?}");
}

#[tokio::test]
async fn an_unapproved_code_ends_on_the_agents_clock_even_if_the_hub_never_says_so() {
    // This hub answers "pending" forever: only the agent's own clock can end the wait.
    let (hub, shared) = scripted_hub(Script { expires_in: 3, ..Default::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = service(&dir);
    let started = Instant::now();
    let login = agent.device_login(&hub, None).await.unwrap();
    let err = agent.finish_device_login(login).await.unwrap_err();
    assert!(matches!(err, AgentError::DeviceLoginExpired { .. }), "{err}");
    assert!(err.to_string().contains("start the sign-in again"), "{err}");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(4), "stopped at expiry: {elapsed:?}");
    assert!(shared.lock().unwrap().polls.len() <= 2, "no poll at or after expiry");
    assert!(!agent.reload_credentials().await.unwrap().logged_in);
}

#[tokio::test]
async fn a_denial_is_final_and_stores_nothing() {
    let (hub, _) = scripted_hub(Script { answers: vec!["access_denied"], expires_in: 60, ..Default::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = service(&dir);
    let login = agent.device_login(&hub, None).await.unwrap();
    let err = agent.finish_device_login(login).await.unwrap_err();
    assert!(matches!(err, AgentError::DeviceLoginDenied), "{err}");
    assert!(!agent.reload_credentials().await.unwrap().logged_in);
}
