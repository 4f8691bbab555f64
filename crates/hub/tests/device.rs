//! Device sign-in (RFC 8628, issue 20) through the real hub over real sockets: every state
//! of a code (pending, slow_down, denied, expired, approved once), who may approve into
//! which creator, and hostile input. The state tests run on SQLite and on PostgreSQL (each
//! on its own schema), like the queue conformance suite.

#[macro_use]
mod common;

use common::*;
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};
use std::time::Duration;

const GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
const OTHER: &str = "creator-2";

both_engines!(
    a_code_is_pending_then_approved_and_redeemed_once,
    polling_too_soon_is_slow_down_and_the_interval_grows,
    a_denied_code_answers_access_denied,
    an_unapproved_code_expires_and_cannot_be_approved_late,
    a_creator_key_approves_only_into_its_own_creator,
    an_operator_must_pick_a_known_creator,
    racing_polls_of_an_approved_code_enroll_one_agent,
);

/// One-second interval so a test waits little between polls; a minute to live.
fn fast(config: &mut edge_hub::HubConfig) {
    config.device.interval = Duration::from_secs(1);
    config.device.ttl = Duration::from_secs(60);
}

struct Started {
    device_code: String,
    user_code: String,
}

async fn start_code(hub: &TestHub, name: &str) -> Started {
    let key = SigningKey::from_bytes(&random_seed());
    let (status, body) = hub
        .post("/v1/agent/device/code", json!({"publicKey": base64_key(&key), "name": name, "version": "agent-0.1.0"}))
        .await;
    assert_eq!(status, 200, "{body}");
    Started {
        device_code: body["device_code"].as_str().expect("device_code").to_owned(),
        user_code: body["user_code"].as_str().expect("user_code").to_owned(),
    }
}

fn base64_key(key: &SigningKey) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key.verifying_key().as_bytes())
}

async fn poll(hub: &TestHub, device_code: &str) -> (u16, Value) {
    hub.post("/v1/agent/token", json!({"grant_type": GRANT, "device_code": device_code})).await
}

/// Waits one (test) interval, then polls.
async fn poll_after_interval(hub: &TestHub, device_code: &str) -> (u16, Value) {
    tokio::time::sleep(Duration::from_millis(1_050)).await;
    poll(hub, device_code).await
}

async fn keyed(hub: &TestHub, key: &str, path: &str, body: Value) -> (u16, Value) {
    hub.request(reqwest::Method::POST, path, key, Some(body)).await
}

async fn a_code_is_pending_then_approved_and_redeemed_once(db: TestDb) {
    let hub = TestHub::start_on(db, fast).await;
    let creator_key = hub.creator_key(CREATOR).await;
    let key = SigningKey::from_bytes(&random_seed());
    let (status, body) = hub
        .post(
            "/v1/agent/device/code",
            json!({"publicKey": base64_key(&key), "name": "studio-pc", "version": "agent-0.1.0"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let user_code = body["user_code"].as_str().unwrap().to_owned();
    let device_code = body["device_code"].as_str().unwrap().to_owned();
    assert_eq!(user_code.len(), 9, "XXXX-XXXX: {user_code}");
    assert!(device_code.len() >= 43, "32 random bytes: {device_code}");
    assert_eq!(body["verification_uri"], hub.url("/device"));
    assert_eq!(body["verification_uri_complete"], format!("{}?user_code={user_code}", hub.url("/device")));
    assert_eq!(body["expires_in"], 60);
    assert_eq!(body["interval"], 1);
    // The user code is kept only as the SHA-256 of its 8 symbols.
    assert!(hub.store().device_code_by_user_code(&user_code).await.unwrap().is_none());
    let hash = edge_hub::crypto::sha256_hex(&user_code.replace('-', ""));
    assert!(hub.store().device_code_by_user_code(&hash).await.unwrap().is_some());

    let (status, pending) = poll_after_interval(&hub, &device_code).await;
    assert_eq!((status, pending["error"].as_str()), (400, Some("authorization_pending")), "{pending}");

    // What the page shows before approval.
    let (status, seen) =
        keyed(&hub, &creator_key, "/v1/device/lookup", json!({"user_code": user_code.to_lowercase()})).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["name"], "studio-pc");
    assert_eq!(seen["version"], "agent-0.1.0");
    assert_eq!(seen["status"], "pending");
    assert_eq!(seen["creatorId"], CREATOR);
    assert_eq!(seen["operator"], false);
    assert_eq!(seen["userCode"], user_code);
    assert!(seen["requestedAt"].as_str().is_some_and(|t| t.ends_with('Z')), "{seen}");

    let (status, approved) =
        keyed(&hub, &creator_key, "/v1/device/approve", json!({"user_code": user_code, "approve": true})).await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved, json!({"status": "approved", "creatorId": CREATOR}));
    // A second decision is refused: the first one stands.
    let (status, again) =
        keyed(&hub, &creator_key, "/v1/device/approve", json!({"user_code": user_code, "approve": false})).await;
    assert_eq!((status, again["error"].as_str()), (409, Some("already_decided")), "{again}");

    let (status, enrolled) = poll_after_interval(&hub, &device_code).await;
    assert_eq!(status, 200, "{enrolled}");
    assert_eq!(enrolled["creatorId"], CREATOR);
    let agent = TestAgent {
        agent_id: enrolled["agentId"].as_str().expect("agentId").to_owned(),
        creator_id: CREATOR.to_owned(),
        key,
    };
    // The existing challenge → signed nonce → JWT flow works unchanged for this agent.
    let jwt = hub.session_token(&agent).await;
    assert!(!jwt.is_empty());
    let record = hub.store().agent(&agent.agent_id).await.unwrap().expect("agent stored");
    assert_eq!(record.name.as_deref(), Some("studio-pc"));
    assert_eq!(record.public_key, base64_key(&agent.key));

    // Replaying the device code after success gets nothing more.
    let (status, replay) = poll_after_interval(&hub, &device_code).await;
    assert_eq!((status, replay["error"].as_str()), (400, Some("expired_token")), "{replay}");
    let (_, agents) = hub.operator_get("/v1/agents").await;
    assert_eq!(agents["agents"].as_array().unwrap().len(), 1, "one agent only: {agents}");
    hub.shutdown().await;
}

async fn polling_too_soon_is_slow_down_and_the_interval_grows(db: TestDb) {
    let hub = TestHub::start_on(db, fast).await;
    let code = start_code(&hub, "eager").await;
    // The first poll also waits the interval (RFC 8628 §3.5).
    let (status, body) = poll(&hub, &code.device_code).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("slow_down")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("6 s"), "the new interval, 1 + 5 s: {body}");
    // One old interval later is now too soon as well: the interval grew to 6 s.
    let (status, body) = poll_after_interval(&hub, &code.device_code).await;
    assert_eq!(body["error"], "slow_down", "{status} {body}");
    assert!(body["message"].as_str().unwrap().contains("11 s"), "{body}");
    hub.shutdown().await;
}

async fn a_denied_code_answers_access_denied(db: TestDb) {
    let hub = TestHub::start_on(db, fast).await;
    let code = start_code(&hub, "not-mine").await;
    let (status, denied) =
        keyed(&hub, &hub.api_key, "/v1/device/approve", json!({"user_code": code.user_code, "approve": false})).await;
    assert_eq!(status, 200, "{denied}");
    assert_eq!(denied["status"], "denied");
    let (status, body) = poll_after_interval(&hub, &code.device_code).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("access_denied")), "{body}");
    let (_, agents) = hub.operator_get("/v1/agents").await;
    assert!(agents["agents"].as_array().unwrap().is_empty(), "{agents}");
    hub.shutdown().await;
}

async fn an_unapproved_code_expires_and_cannot_be_approved_late(db: TestDb) {
    let hub = TestHub::start_on(db, |config| {
        config.device.interval = Duration::from_secs(1);
        config.device.ttl = Duration::from_secs(2);
    })
    .await;
    let creator_key = hub.creator_key(CREATOR).await;
    let never = start_code(&hub, "late").await;
    let approved_late = start_code(&hub, "approved-then-late").await;
    let (status, _) =
        keyed(&hub, &creator_key, "/v1/device/approve", json!({"user_code": approved_late.user_code, "approve": true}))
            .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(2_200)).await;

    let (status, body) = poll(&hub, &never.device_code).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("expired_token")), "{body}");
    // An approval not redeemed in time is not redeemed later.
    let (status, body) = poll(&hub, &approved_late.device_code).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("expired_token")), "{body}");

    let (status, body) = keyed(&hub, &creator_key, "/v1/device/lookup", json!({"user_code": never.user_code})).await;
    assert_eq!((status, body["error"].as_str()), (410, Some("expired_user_code")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("start the sign-in again"), "{body}");
    let (status, body) =
        keyed(&hub, &creator_key, "/v1/device/approve", json!({"user_code": never.user_code, "approve": true})).await;
    assert_eq!((status, body["error"].as_str()), (410, Some("expired_user_code")), "{body}");
    let (_, agents) = hub.operator_get("/v1/agents").await;
    assert!(agents["agents"].as_array().unwrap().is_empty(), "{agents}");
    hub.shutdown().await;
}

async fn a_creator_key_approves_only_into_its_own_creator(db: TestDb) {
    let hub = TestHub::start_on(db, fast).await;
    let mine = hub.creator_key(CREATOR).await;
    let _theirs = hub.creator_key(OTHER).await;
    let code = start_code(&hub, "someone").await;
    let (status, body) = keyed(
        &hub,
        &mine,
        "/v1/device/approve",
        json!({"user_code": code.user_code, "creatorId": OTHER, "approve": true}),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")), "{body}");
    assert!(body["message"].as_str().unwrap().contains(CREATOR), "{body}");
    // Nothing was decided: the code still waits, and polling says so.
    let (_, seen) = keyed(&hub, &mine, "/v1/device/lookup", json!({"user_code": code.user_code})).await;
    assert_eq!(seen["status"], "pending", "{seen}");
    let (_, body) = poll_after_interval(&hub, &code.device_code).await;
    assert_eq!(body["error"], "authorization_pending", "{body}");
    // Naming its own creator is fine.
    let (status, body) = keyed(
        &hub,
        &mine,
        "/v1/device/approve",
        json!({"user_code": code.user_code, "creatorId": CREATOR, "approve": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, enrolled) = poll_after_interval(&hub, &code.device_code).await;
    assert_eq!(enrolled["creatorId"], CREATOR, "{enrolled}");
    hub.shutdown().await;
}

async fn an_operator_must_pick_a_known_creator(db: TestDb) {
    let hub = TestHub::start_on(db, fast).await;
    let _their_key = hub.creator_key(OTHER).await;
    let code = start_code(&hub, "fleet-1").await;
    let (status, seen) = keyed(&hub, &hub.api_key, "/v1/device/lookup", json!({"user_code": code.user_code})).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["operator"], true);
    assert_eq!(seen["creatorId"], Value::Null);

    let approve = |creator: Option<&str>| {
        let mut body = json!({"user_code": code.user_code, "approve": true});
        if let Some(creator) = creator {
            body["creatorId"] = json!(creator);
        }
        body
    };
    let (status, body) = keyed(&hub, &hub.api_key, "/v1/device/approve", approve(None)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("creatorId"), "{body}");
    let (status, body) = keyed(&hub, &hub.api_key, "/v1/device/approve", approve(Some("nobody-typo"))).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("unknown_creator")), "{body}");
    let (status, body) = keyed(&hub, &hub.api_key, "/v1/device/approve", approve(Some("bad\u{7}id"))).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = keyed(&hub, &hub.api_key, "/v1/device/approve", approve(Some(OTHER))).await;
    assert_eq!(status, 200, "{body}");
    let (_, enrolled) = poll_after_interval(&hub, &code.device_code).await;
    assert_eq!(enrolled["creatorId"], OTHER, "{enrolled}");
    hub.shutdown().await;
}

async fn racing_polls_of_an_approved_code_enroll_one_agent(db: TestDb) {
    use edge_hub::store::{DeviceDecision, DevicePoll, NewDeviceCode};
    let hub = TestHub::start_on(db, fast).await;
    let store = hub.store();
    let now = 1_000_000;
    let code = NewDeviceCode {
        device_code_hash: "d".repeat(64),
        user_code_hash: "u".repeat(64),
        public_key: base64_key(&SigningKey::from_bytes(&random_seed())),
        name: Some("racer".into()),
        version: None,
        interval_ms: 1_000,
        expires_at: now + 60_000,
    };
    store.create_device_code(&code, now).await.unwrap();
    let decided = store
        .decide_device_code(&code.user_code_hash, &DeviceDecision::Approve { creator_id: CREATOR.into() }, now + 10)
        .await
        .unwrap()
        .expect("pending code approved");
    assert_eq!(decided.creator_id.as_deref(), Some(CREATOR));
    // A second decision finds nothing pending.
    assert!(store.decide_device_code(&code.user_code_hash, &DeviceDecision::Deny, now + 20).await.unwrap().is_none());

    let at = now + 5_000;
    let polls = (0..8).map(|i| {
        let store = store.clone();
        let hash = code.device_code_hash.clone();
        async move { store.poll_device_code(&hash, &format!("agt_race{i}"), at).await.unwrap() }
    });
    let answers = futures_util::future::join_all(polls).await;
    let enrolled: Vec<_> = answers.iter().filter(|a| matches!(a, DevicePoll::Enrolled(_))).collect();
    assert_eq!(enrolled.len(), 1, "{answers:?}");
    // The losers were either too soon after the winner's poll or found the code used.
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, DevicePoll::Enrolled(_) | DevicePoll::Expired | DevicePoll::SlowDown { .. })),
        "{answers:?}"
    );
    assert_eq!(store.agents(Some(CREATOR)).await.unwrap().len(), 1);
    assert_eq!(store.poll_device_code("nope", "agt_x", at).await.unwrap(), DevicePoll::Unknown);
    hub.shutdown().await;
}

#[tokio::test]
async fn hostile_input_is_refused_with_words_and_writes_nothing() {
    let hub = TestHub::start_on(TestDb::sqlite(), fast).await;
    let key = hub.creator_key(CREATOR).await;

    // Device codes the hub never issued, of every shape.
    for code in ["", "edc_guess", &"A".repeat(100_000), "' OR 1=1 --"] {
        let (status, body) = poll(&hub, code).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{code:.20}: {body}");
    }
    let (status, body) = hub.post("/v1/agent/token", json!({"grant_type": "password", "device_code": "x"})).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unsupported_grant_type")), "{body}");
    let (status, body) = hub.post("/v1/agent/token", json!({"grant_type": 7, "device_code": []})).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "{body}");
    // An old agent's body without grant_type is still the signed-nonce exchange.
    let (status, body) =
        hub.post("/v1/agent/token", json!({"agentId": "agt_nobody", "nonce": "n", "signature": "s"})).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("unknown_agent")), "{body}");
    let (status, body) = hub.post("/v1/agent/token", json!({"nonce": "n"})).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_body")), "{body}");

    // Starting a sign-in with a bad key or name.
    let (status, body) = hub.post("/v1/agent/device/code", json!({"publicKey": "not-a-key"})).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_public_key")), "{body}");
    let good = base64_key(&SigningKey::from_bytes(&random_seed()));
    let (status, body) = hub.post("/v1/agent/device/code", json!({"publicKey": good, "name": "a\u{1b}[31mb"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = hub.post("/v1/agent/device/code", json!({"publicKey": good, "name": "x".repeat(201)})).await;
    assert_eq!(status, 400, "{body}");
    let huge = json!({"publicKey": good, "name": "x".repeat(2 * 1024 * 1024)});
    let (status, body) = hub.post("/v1/agent/device/code", huge).await;
    assert_eq!((status, body["error"].as_str()), (413, Some("payload_too_large")), "{body}");

    // User codes: malformed, well-formed but unknown, and no key at all.
    for typed in ["", "ABCD-EFG0", "<script>", "' OR 1=1 --", &"Z".repeat(10_000)] {
        let (status, body) = keyed(&hub, &key, "/v1/device/lookup", json!({"user_code": typed})).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_user_code")), "{typed:.20}: {body}");
    }
    let (status, body) = keyed(&hub, &key, "/v1/device/lookup", json!({"user_code": "ABCD-EFGH"})).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("unknown_user_code")), "{body}");
    let (status, body) =
        keyed(&hub, &key, "/v1/device/approve", json!({"user_code": "ABCD-EFGH", "approve": true})).await;
    assert_eq!(status, 404, "{body}");
    let code = start_code(&hub, "victim").await;
    let (status, body) = hub.post("/v1/device/lookup", json!({"user_code": code.user_code})).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")), "{body}");
    let (status, body) =
        keyed(&hub, "ehk_forged", "/v1/device/approve", json!({"user_code": code.user_code, "approve": true})).await;
    assert_eq!(status, 401, "{body}");
    let (_, body) = poll_after_interval(&hub, &code.device_code).await;
    assert_eq!(body["error"], "authorization_pending", "still waiting: {body}");
    let (_, agents) = hub.operator_get("/v1/agents").await;
    assert!(agents["agents"].as_array().unwrap().is_empty(), "{agents}");
    hub.shutdown().await;
}

#[tokio::test]
async fn guessing_user_codes_is_rate_limited_per_address() {
    let hub = TestHub::start_on(TestDb::sqlite(), |config| {
        config.rate_limits.auth_per_minute_per_address = std::num::NonZeroU32::new(3).unwrap();
    })
    .await;
    let key = hub.creator_key(CREATOR).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (status, _) = keyed(&hub, &key, "/v1/device/lookup", json!({"user_code": "ABCD-EFGH"})).await;
        statuses.push(status);
    }
    assert_eq!(statuses, [404, 404, 404, 429, 429]);
    hub.shutdown().await;
}

#[tokio::test]
async fn the_approval_page_is_served_with_a_strict_policy_and_no_outside_assets() {
    let hub = TestHub::start().await;
    for (path, kind) in [("/device", "text/html"), ("/device/device.js", "text/javascript")] {
        let response = hub.http.get(hub.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind), "{path}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        let body = response.text().await.unwrap();
        assert!(!body.contains("http://") && !body.contains("https://"), "{path} loads nothing from elsewhere");
        assert!(!body.contains("innerHTML"), "{path} writes the hub's values as text only");
    }
    hub.shutdown().await;
}

#[tokio::test]
async fn the_page_address_is_the_public_url_when_one_is_configured() {
    let hub = TestHub::start_on(TestDb::sqlite(), |config| {
        config.device.public_url = Some("https://hub.example.com".into());
    })
    .await;
    let key = base64_key(&SigningKey::from_bytes(&random_seed()));
    let (status, body) = hub.post("/v1/agent/device/code", json!({"publicKey": key})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["verification_uri"], "https://hub.example.com/device");
    let complete = format!("https://hub.example.com/device?user_code={}", body["user_code"].as_str().unwrap());
    assert_eq!(body["verification_uri_complete"], complete.as_str());
    assert_eq!((body["expires_in"].as_u64(), body["interval"].as_u64()), (Some(600), Some(5)), "the defaults");
    hub.shutdown().await;
}
