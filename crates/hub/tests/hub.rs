//! End-to-end tests of the hub over real sockets: enrollment, tokens, WebSocket sessions,
//! dispatch, restart recovery and the operator API.

mod common;

use common::*;
use futures_util::SinkExt as _;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn enrollment_accepts_a_token_once_and_refuses_expired_ones() {
    let hub = TestHub::start().await;
    let key = ed25519_dalek::SigningKey::from_bytes(&random_seed());
    let public_key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key.verifying_key().as_bytes());

    let token = hub.enrollment_token(CREATOR, Duration::from_secs(3600)).await;
    let (status, body) = hub.post("/v1/agent/enroll", json!({"token": token, "publicKey": public_key})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["agentId"].as_str().unwrap().starts_with("agt_"));
    assert_eq!(body["creatorId"], CREATOR);

    let (status, body) = hub.post("/v1/agent/enroll", json!({"token": token, "publicKey": public_key})).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_enrollment_token");
    assert!(body["message"].as_str().unwrap().contains("edge-hub enroll-token create"));

    let expired = hub.enrollment_token(CREATOR, Duration::ZERO).await;
    let (status, body) = hub.post("/v1/agent/enroll", json!({"token": expired, "publicKey": public_key})).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_enrollment_token")));

    let fresh = hub.enrollment_token(CREATOR, Duration::from_secs(3600)).await;
    let (status, body) = hub.post("/v1/agent/enroll", json!({"token": fresh, "publicKey": "AAAA"})).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_public_key")));
    // A refused public key must not burn the token.
    let (status, _) = hub.post("/v1/agent/enroll", json!({"token": fresh, "publicKey": public_key})).await;
    assert_eq!(status, 200);
    hub.shutdown().await;
}

#[tokio::test]
async fn token_requires_a_valid_signature_over_a_fresh_nonce() {
    let hub = TestHub::start().await;
    let agent = hub.enroll(CREATOR).await;

    let (_, challenge) = hub.post("/v1/agent/challenge", json!({"agentId": agent.agent_id})).await;
    let nonce = challenge["nonce"].as_str().unwrap().to_owned();
    assert!(challenge["expiresAt"].as_i64().unwrap() > now_secs());
    let (status, body) = hub
        .post("/v1/agent/token", json!({"agentId": agent.agent_id, "nonce": nonce, "signature": agent.sign(&nonce)}))
        .await;
    assert_eq!(status, 200, "{body}");
    let exp = body["expiresAt"].as_i64().unwrap();
    assert!(exp <= now_secs() + 900 && exp > now_secs() + 800, "default TTL is 15 minutes");
    let claims: serde_json::Value = {
        let payload = body["token"].as_str().unwrap().split('.').nth(1).unwrap();
        let bytes = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    assert_eq!(claims["agentId"], agent.agent_id.as_str());
    assert_eq!(claims["creatorId"], CREATOR);
    assert!(claims["iat"].is_i64());

    // The same nonce cannot be redeemed twice.
    let (status, body) = hub
        .post("/v1/agent/token", json!({"agentId": agent.agent_id, "nonce": nonce, "signature": agent.sign(&nonce)}))
        .await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_nonce")));

    // A signature from another key is refused.
    let (_, challenge) = hub.post("/v1/agent/challenge", json!({"agentId": agent.agent_id})).await;
    let nonce = challenge["nonce"].as_str().unwrap().to_owned();
    let impostor = TestAgent {
        agent_id: agent.agent_id.clone(),
        creator_id: agent.creator_id.clone(),
        key: ed25519_dalek::SigningKey::from_bytes(&random_seed()),
    };
    let (status, body) = hub
        .post("/v1/agent/token", json!({"agentId": agent.agent_id, "nonce": nonce, "signature": impostor.sign(&nonce)}))
        .await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_signature")));
    // ... and that nonce is spent too.
    let (status, _) = hub
        .post("/v1/agent/token", json!({"agentId": agent.agent_id, "nonce": nonce, "signature": agent.sign(&nonce)}))
        .await;
    assert_eq!(status, 401);

    let (status, body) = hub.post("/v1/agent/challenge", json!({"agentId": "agt_unknown"})).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("unknown_agent")));
    hub.shutdown().await;
}

#[tokio::test]
async fn websocket_refuses_expired_and_forged_tokens_with_their_close_codes() {
    let hub = TestHub::start().await;
    let agent = hub.enroll(CREATOR).await;

    let expired = mint_jwt(JWT_SECRET, &agent, now_secs() - 10);
    let mut ws = hub.connect(&expired).await;
    let frame = recv(&mut ws).await;
    assert_eq!((frame["t"].as_str(), frame["code"].as_str()), (Some("error"), Some("TOKEN_EXPIRED")));
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!(code, edge_protocol::api::close_code::TOKEN_EXPIRED);
    assert!(!reason.is_empty());

    let forged = mint_jwt("some-other-secret-some-other-secret-some-other", &agent, now_secs() + 600);
    let mut ws = hub.connect(&forged).await;
    assert_eq!(recv(&mut ws).await["code"], "TOKEN_INVALID");
    assert_eq!(expect_close(&mut ws).await.0, edge_protocol::api::close_code::TOKEN_INVALID);

    let stranger = TestAgent { agent_id: "agt_nobody".into(), creator_id: CREATOR.into(), key: agent.key.clone() };
    let mut ws = hub.connect(&mint_jwt(JWT_SECRET, &stranger, now_secs() + 600)).await;
    assert_eq!(recv(&mut ws).await["code"], "TOKEN_INVALID");
    assert_eq!(expect_close(&mut ws).await.0, edge_protocol::api::close_code::TOKEN_INVALID);

    // Without an upgrade the same check answers in JSON.
    let response = hub.http.get(hub.ws_url().replacen("ws://", "http://", 1)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    hub.shutdown().await;
}

#[tokio::test]
async fn hello_heartbeat_and_a_job_round_trip() {
    let hub = TestHub::start().await;
    let agent = hub.enroll(CREATOR).await;
    let token = hub.session_token(&agent).await;
    // The token also works as a bearer header.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(hub.ws_url()).unwrap();
    request.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();

    send(
        &mut ws,
        json!({"t":"hello","protocol":99,"v":"agent-0.2.0","capabilities":["http_request","custom"],"slots":2}),
    )
    .await;
    let ack = recv(&mut ws).await;
    assert_eq!(ack["t"], "hello_ack");
    assert_eq!(ack["protocol"], edge_protocol::PROTOCOL_VERSION, "the lower of both versions");
    assert_eq!(ack["agentId"], agent.agent_id.as_str());
    assert_eq!(ack["hbIntervalMs"], 1000);
    assert_eq!(ack.get("limits"), None, "no caps of the hub's unless its operator sets some: {ack}");

    send(&mut ws, json!({"t":"hb","v":"agent-0.2.0","ts":1234})).await;
    let hb_ack = recv(&mut ws).await;
    assert_eq!((hb_ack["t"].as_str(), hb_ack["ts"].as_i64()), (Some("hb_ack"), Some(1234)));
    assert!(hb_ack["serverTs"].as_i64().unwrap() >= now_secs() - 5);

    let (_, agents) = hub.operator_get("/v1/agents").await;
    let listed = &agents["agents"][0];
    assert_eq!((listed["agentId"].as_str(), listed["online"].as_bool()), (Some(agent.agent_id.as_str()), Some(true)));
    assert_eq!(listed["version"], "agent-0.2.0");
    assert!(listed["lastHeartbeatAt"].as_str().unwrap().ends_with('Z'));

    let job = hub
        .submit_job(json!({"type":"http_request","payload":{"url":"https://example.com/a"},"creatorId":CREATOR}))
        .await;
    assert_eq!(job["status"], "pending");
    let assign = recv(&mut ws).await;
    assert_eq!(assign["t"], "job_assign");
    let job_id = assign["job"]["jobId"].as_str().unwrap().to_owned();
    assert_eq!(job_id, job["id"].as_str().unwrap());
    assert_eq!(assign["job"]["payload"]["url"], "https://example.com/a");
    assert_eq!(hub.job(&job_id).await["status"], "leased");

    send(&mut ws, json!({"t":"job_ack","id":job_id})).await;
    hub.wait_for_job_status(&job_id, "running").await;
    // A frame hundreds of times the session's read chunk still arrives whole.
    let data = json!({"statusCode":200,"headers":{},"body":"hi ".repeat(100_000),"isBase64Encoded":false});
    send(&mut ws, json!({"t":"job_result","id":job_id,"status":"ok","data":data})).await;
    let done = hub.wait_for_job_status(&job_id, "succeeded").await;
    assert_eq!(done["result"], data);
    assert_eq!(done["agentId"], agent.agent_id.as_str());
    assert_eq!(done["attempts"], 1);
    assert!(done["error"].is_null());

    // A failure is stored with its error object. (Its payload is larger than a session
    // gathers before writing, so the job_assign goes out in several writes.)
    let blob = "y".repeat(100_000);
    let job = hub.submit_job(json!({"type":"custom","payload":{"blob":blob},"agentId":agent.agent_id})).await;
    let assign = recv(&mut ws).await;
    assert_eq!(assign["job"]["jobId"], job["id"]);
    assert_eq!(assign["job"]["payload"]["blob"], blob.as_str());
    send(
        &mut ws,
        json!({"t":"job_result","id":job["id"],"status":"error","err":{"code":"LOGIN_REQUIRED","message":"log in"}}),
    )
    .await;
    let failed = hub.wait_for_job_status(job["id"].as_str().unwrap(), "failed").await;
    assert_eq!(failed["error"]["code"], "LOGIN_REQUIRED");
    hub.shutdown().await;
}

#[tokio::test]
async fn a_version_0_agent_starting_with_hb_gets_v0_frames_and_jobs() {
    let hub = TestHub::start().await;
    let agent = hub.enroll(CREATOR).await;
    let token = hub.session_token(&agent).await;
    let job =
        hub.submit_job(json!({"type":"http_request","payload":{"url":"http://example.com"},"creatorId":CREATOR})).await;
    let mut ws = hub.connect(&token).await;
    send(&mut ws, json!({"t":"hb","v":"agent-0.0.9","ts":42})).await;
    let mut got_ack = false;
    let mut got_job = false;
    while !(got_ack && got_job) {
        let frame = recv(&mut ws).await;
        match frame["t"].as_str() {
            Some("hb_ack") => {
                assert_eq!(frame["ts"], 42);
                assert!(frame.get("serverTs").is_none(), "v0 hb_ack has no serverTs: {frame}");
                got_ack = true;
            }
            Some("job_assign") => {
                assert_eq!(frame["job"]["jobId"], job["id"]);
                assert_eq!(frame["job"]["type"], "http_request");
                got_job = true;
            }
            _ => panic!("a v0 peer must only get v0 frames: {frame}"),
        }
    }
    // v0 peers get no `error` frames, even for garbage.
    send_raw(&mut ws, Message::text("garbage")).await;
    send(&mut ws, json!({"t":"job_result","id":"job_not_mine","status":"ok"})).await;
    send(&mut ws, json!({"t":"job_ack","id":job["id"]})).await;
    hub.wait_for_job_status(job["id"].as_str().unwrap(), "running").await;
    expect_silence(&mut ws, Duration::from_millis(200)).await;
    hub.shutdown().await;
}

/// Next text frame as JSON, within `deadline` from `since`.
async fn recv_by(ws: &mut Ws, since: tokio::time::Instant, deadline: Duration) -> serde_json::Value {
    match tokio::time::timeout_at(since + deadline, recv(ws)).await {
        Ok(frame) => frame,
        Err(_) => panic!("no frame within {deadline:?} of connecting"),
    }
}

#[tokio::test]
async fn a_silent_prototype_agent_gets_its_jobs_within_2_s_of_connecting() {
    let hub = TestHub::start().await;
    let agent = hub.enroll(CREATOR).await;
    let token = hub.session_token(&agent).await;
    let waiting = hub.submit_job(json!({"type":"custom","payload":{"n":1},"creatorId":CREATOR})).await;

    // A prototype agent says nothing until it has work: no hello, no heartbeat.
    let connecting = tokio::time::Instant::now();
    let mut ws = hub.connect(&token).await;
    let assign = recv_by(&mut ws, connecting, Duration::from_secs(2)).await;
    assert_eq!((assign["t"].as_str(), &assign["job"]["jobId"]), (Some("job_assign"), &waiting["id"]), "{assign}");
    send(&mut ws, json!({"t":"job_ack","id":waiting["id"]})).await;
    send(&mut ws, json!({"t":"job_result","id":waiting["id"],"status":"ok","data":{"done":1}})).await;
    hub.wait_for_job_status(waiting["id"].as_str().unwrap(), "succeeded").await;

    // It is a version-0 peer from then on: one job at a time, and no error frames.
    let second = hub.submit_job(json!({"type":"custom","payload":{"n":2},"creatorId":CREATOR})).await;
    let third = hub.submit_job(json!({"type":"custom","payload":{"n":3},"creatorId":CREATOR})).await;
    assert_eq!(recv(&mut ws).await["job"]["jobId"], second["id"]);
    send_raw(&mut ws, Message::text("garbage")).await;
    expect_silence(&mut ws, Duration::from_millis(300)).await;
    send(&mut ws, json!({"t":"job_result","id":second["id"],"status":"ok","data":{}})).await;
    assert_eq!(recv(&mut ws).await["job"]["jobId"], third["id"]);

    // A silent agent with nothing queued gets the next job as it is submitted.
    let (quiet_agent, connecting) = (hub.enroll("creator-quiet").await, tokio::time::Instant::now());
    let mut quiet = hub.connect(&hub.session_token(&quiet_agent).await).await;
    let later = hub.submit_job(json!({"type":"custom","payload":{},"creatorId":"creator-quiet"})).await;
    assert_eq!(recv_by(&mut quiet, connecting, Duration::from_secs(2)).await["job"]["jobId"], later["id"]);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_hello_after_the_grace_takes_back_the_jobs_leased_as_version_0() {
    let hub = TestHub::start().await;
    let agent = hub.enroll(CREATOR).await;
    let token = hub.session_token(&agent).await;
    let custom = hub.submit_job(json!({"type":"custom","payload":{},"creatorId":CREATOR})).await;
    let custom_id = custom["id"].as_str().unwrap();

    // Slow to say hello: by then the hub took it for a prototype agent and leased it a job.
    let connecting = tokio::time::Instant::now();
    let mut ws = hub.connect(&token).await;
    assert_eq!(recv_by(&mut ws, connecting, Duration::from_secs(2)).await["job"]["jobId"], custom["id"]);
    send(
        &mut ws,
        json!({"t":"hello","protocol":2,"v":"agent-0.1.0","capabilities":["http_request","job_cancel"],"slots":2}),
    )
    .await;
    let ack = recv(&mut ws).await;
    assert_eq!((ack["t"].as_str(), ack["protocol"].as_u64()), (Some("hello_ack"), Some(2)), "{ack}");
    // An agent ignores what came before its hello_ack, and it does not run `custom`: the
    // job is back in the queue and does not come to it again.
    let back = hub.wait_for_job_status(custom_id, "pending").await;
    assert_eq!(back["attempts"], 1, "{back}");
    let (_, history) = hub.operator_get(&format!("/v1/jobs/{custom_id}/attempts")).await;
    assert_eq!(history["attempts"][0]["outcome"], "released", "{history}");
    expect_silence(&mut ws, Duration::from_millis(300)).await;

    // From now on it is served as its hello says: its types, two at a time, version-1 frames.
    let first = hub
        .submit_job(json!({"type":"http_request","payload":{"url":"http://127.0.0.1:9/a"},"creatorId":CREATOR}))
        .await;
    let second = hub
        .submit_job(json!({"type":"http_request","payload":{"url":"http://127.0.0.1:9/b"},"creatorId":CREATOR}))
        .await;
    let mut got = vec![recv(&mut ws).await["job"]["jobId"].clone(), recv(&mut ws).await["job"]["jobId"].clone()];
    got.sort_by_key(|id| id.to_string());
    let mut want = vec![first["id"].clone(), second["id"].clone()];
    want.sort_by_key(|id| id.to_string());
    assert_eq!(got, want);
    send(&mut ws, json!({"t":"hb","v":"agent-0.1.0","ts":5})).await;
    assert!(recv(&mut ws).await["serverTs"].is_i64(), "a version-1 hb_ack");
    assert_eq!(hub.job(custom_id).await["status"], "pending");

    // An agent that runs the type gets the taken-back job again, after its hello_ack.
    let other = hub.enroll(CREATOR).await;
    let other_token = hub.session_token(&other).await;
    let connecting = tokio::time::Instant::now();
    let mut other_ws = hub.connect(&other_token).await;
    // It is not silent for long enough to be taken for a prototype agent, so nothing comes yet.
    send(&mut other_ws, json!({"t":"hello","protocol":1,"v":"agent-0.1.0","capabilities":["custom"]})).await;
    assert_eq!(recv_by(&mut other_ws, connecting, Duration::from_secs(2)).await["t"], "hello_ack");
    assert_eq!(recv(&mut other_ws).await["job"]["jobId"], custom["id"]);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_job_submitted_while_the_agent_is_offline_is_delivered_on_connect() {
    let hub = TestHub::start().await;
    let agent = hub.enroll(CREATOR).await;
    let job = hub.submit_job(json!({"type":"custom","payload":{"n":1},"agentId":agent.agent_id})).await;
    // Untargeted work of another creator must not reach this agent.
    hub.submit_job(json!({"type":"custom","payload":{},"creatorId":"someone-else"})).await;
    assert_eq!(job["agentId"], agent.agent_id.as_str());
    let token = hub.session_token(&agent).await;
    let mut ws = hub.connect(&token).await;
    send(&mut ws, json!({"t":"hello","protocol":1,"v":"agent-0.1.0","slots":4})).await;
    assert_eq!(recv(&mut ws).await["t"], "hello_ack");
    let assign = recv(&mut ws).await;
    assert_eq!((assign["t"].as_str(), &assign["job"]["jobId"]), (Some("job_assign"), &job["id"]));
    expect_silence(&mut ws, Duration::from_millis(200)).await;
    hub.shutdown().await;
}

#[tokio::test]
async fn pending_and_unacked_jobs_survive_a_hub_restart() {
    let mut hub = TestHub::start().await;
    let agent = hub.enroll(CREATOR).await;
    let queued = hub.submit_job(json!({"type":"custom","payload":{"q":1},"creatorId":CREATOR})).await;

    // First run: the agent takes the job but never acks it before the hub goes away.
    let token = hub.session_token(&agent).await;
    let mut ws = hub.connect(&token).await;
    send(&mut ws, json!({"t":"hello","protocol":1,"v":"agent-0.1.0"})).await;
    assert_eq!(recv(&mut ws).await["t"], "hello_ack");
    assert_eq!(recv(&mut ws).await["job"]["jobId"], queued["id"]);
    let second = hub.submit_job(json!({"type":"custom","payload":{"q":2},"creatorId":CREATOR})).await;
    hub.restart().await;
    let (code, _) = expect_close(&mut ws).await;
    assert_eq!(code, 1001, "sessions are closed as going away");

    let first = hub.job(queued["id"].as_str().unwrap()).await;
    assert_eq!((first["status"].as_str(), first["attempts"].as_i64()), (Some("pending"), Some(1)));
    assert_eq!(hub.job(second["id"].as_str().unwrap()).await["status"], "pending");

    // The JWT is still valid after the restart (same secret) and both jobs arrive in order.
    let mut ws = hub.connect(&token).await;
    send(&mut ws, json!({"t":"hello","protocol":1,"v":"agent-0.1.0","slots":2})).await;
    assert_eq!(recv(&mut ws).await["t"], "hello_ack");
    assert_eq!(recv(&mut ws).await["job"]["jobId"], queued["id"]);
    assert_eq!(recv(&mut ws).await["job"]["jobId"], second["id"]);
    send(&mut ws, json!({"t":"job_ack","id":second["id"]})).await;
    hub.wait_for_job_status(second["id"].as_str().unwrap(), "running").await;

    // Acked work stays with its agent across a restart, and its result is still accepted.
    hub.restart().await;
    assert_eq!(hub.job(second["id"].as_str().unwrap()).await["status"], "running");
    let mut ws = hub.connect(&token).await;
    send(&mut ws, json!({"t":"hello","protocol":1,"v":"agent-0.1.0","slots":2})).await;
    assert_eq!(recv(&mut ws).await["t"], "hello_ack");
    assert_eq!(recv(&mut ws).await["job"]["jobId"], queued["id"], "the unacked one comes again");
    send(&mut ws, json!({"t":"job_result","id":second["id"],"status":"ok","data":{"done":true}})).await;
    hub.wait_for_job_status(second["id"].as_str().unwrap(), "succeeded").await;
    hub.shutdown().await;
}

#[tokio::test]
async fn malformed_frames_get_error_frames_and_the_session_goes_on() {
    let hub = TestHub::start().await;
    let (_agent, mut ws) = hub.connected_agent(CREATOR, 1).await;

    let cases: Vec<(Message, &str)> = vec![
        (Message::text("this is not json"), "BAD_FRAME"),
        (Message::text(r#"{"no_t":1}"#), "BAD_FRAME"),
        (Message::text(r#"{"t":"teleport"}"#), "UNKNOWN_TYPE"),
        (Message::text(r#"{"t":"hb","v":"x"}"#), "BAD_FRAME"),
        (Message::binary(vec![1u8, 2, 3]), "BAD_FRAME"),
        (Message::text("x".repeat(edge_protocol::MAX_FRAME_BYTES + 1)), "FRAME_TOO_LARGE"),
    ];
    for (message, code) in cases {
        send_raw(&mut ws, message).await;
        let frame = recv(&mut ws).await;
        assert_eq!((frame["t"].as_str(), frame["code"].as_str()), (Some("error"), Some(code)), "{frame}");
        assert!(!frame["message"].as_str().unwrap().is_empty());
    }
    send(&mut ws, json!({"t":"job_result","id":"job_someone_elses","status":"ok"})).await;
    assert_eq!(recv(&mut ws).await["code"], "NOT_YOUR_JOB");

    send(&mut ws, json!({"t":"hb","v":"agent-0.1.0","ts":7})).await;
    assert_eq!(recv(&mut ws).await["t"], "hb_ack", "the session is still usable");
    hub.shutdown().await;
}

#[tokio::test]
async fn a_frame_over_4_mib_is_answered_with_close_1009_and_a_reason() {
    let hub = TestHub::start().await;
    let (_agent, mut ws) = hub.connected_agent(CREATOR, 1).await;
    let limit = 4 * edge_protocol::MAX_FRAME_BYTES;
    let sent = ws.send(Message::text("x".repeat(limit + 1))).await;
    // The hub reads the whole frame off the wire before it closes, so nothing is reset.
    assert!(sent.is_ok(), "the frame was sent whole: {sent:?}");
    let closed = match next_message(&mut ws).await {
        Message::Close(Some(frame)) => (u16::from(frame.code), frame.reason.to_string()),
        other => panic!("expected a close frame, got {other:?}"),
    };
    assert_eq!(closed, (1009, format!("frame of {} bytes is over the {limit}-byte limit", limit + 1)));
    // Our close reply goes out, and the hub ends the connection cleanly: no reset, no error.
    let end = tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(&mut ws)).await;
    assert!(matches!(end, Ok(None)), "the connection ends without an error: {end:?}");
    hub.shutdown().await;
}

/// The real `edge-hub` binary logs the refused frame as a JSON line on stderr.
#[tokio::test]
async fn a_frame_over_4_mib_is_logged_as_a_json_line() {
    use tokio::io::AsyncBufReadExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let database = format!("sqlite://{}", dir.path().join("hub.db").display());
    let bin = env!("CARGO_BIN_EXE_edge-hub");
    let created = std::process::Command::new(bin)
        .args(["--database-url", &database, "enroll-token", "create", "--creator", CREATOR])
        .output()
        .expect("enroll-token create runs");
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let enrollment = String::from_utf8(created.stdout).expect("UTF-8").trim().to_owned();
    let mut hub = tokio::process::Command::new(bin)
        .args(["--database-url", &database, "serve", "--listen", "127.0.0.1:0"])
        .env("EDGE_HUB_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("edge-hub serve starts");
    let mut stdout = tokio::io::BufReader::new(hub.stdout.take().expect("stdout")).lines();
    let mut stderr = tokio::io::BufReader::new(hub.stderr.take().expect("stderr")).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
        .await
        .expect("the hub says where it listens")
        .expect("stdout")
        .expect("a line");
    let base = line.strip_prefix("edge-hub listening on ").expect("listening line").to_owned();

    let http = http_client();
    let key = ed25519_dalek::SigningKey::from_bytes(&random_seed());
    let public_key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key.verifying_key().as_bytes());
    let post = |path: &str, body: serde_json::Value| {
        let request = http.post(format!("{base}{path}")).json(&body);
        async move { request.send().await.expect("request").json::<serde_json::Value>().await.expect("JSON") }
    };
    let enrolled = post("/v1/agent/enroll", json!({"token": enrollment, "publicKey": public_key})).await;
    let agent = TestAgent {
        agent_id: enrolled["agentId"].as_str().expect("agentId").to_owned(),
        creator_id: CREATOR.to_owned(),
        key,
    };
    let challenge = post("/v1/agent/challenge", json!({"agentId": agent.agent_id})).await;
    let nonce = challenge["nonce"].as_str().expect("nonce");
    let token =
        post("/v1/agent/token", json!({"agentId": agent.agent_id, "nonce": nonce, "signature": agent.sign(nonce)}))
            .await;
    let url =
        format!("{}/v1/agent/ws?token={}", base.replacen("http://", "ws://", 1), token["token"].as_str().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("WebSocket connects");
    send(&mut ws, json!({"t":"hello","protocol":1,"v":"agent-0.1.0"})).await;
    assert_eq!(recv(&mut ws).await["t"], "hello_ack");
    let limit = 4 * edge_protocol::MAX_FRAME_BYTES;
    let _ = ws.send(Message::text("y".repeat(limit + 7))).await;
    assert_eq!(expect_close(&mut ws).await.0, 1009);

    let logged = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = stderr.next_line().await {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if entry["fields"]["close_code"] == 1009 {
                return entry;
            }
        }
        panic!("the hub's log ended without the line");
    })
    .await
    .expect("the refused frame is logged");
    assert_eq!(logged["level"], "WARN", "{logged}");
    assert_eq!(
        (logged["fields"]["size"].as_u64(), logged["fields"]["limit"].as_u64()),
        (Some(limit as u64 + 7), Some(limit as u64)),
        "{logged}"
    );
    assert!(logged["fields"]["message"].as_str().unwrap().contains("size limit"), "{logged}");
    assert_eq!(logged["span"]["agent_id"], agent.agent_id.as_str(), "the line names the agent: {logged}");
    let _ = hub.kill().await;
}

#[tokio::test]
async fn a_result_from_an_agent_that_does_not_hold_the_job_changes_nothing() {
    let hub = TestHub::start().await;
    let (holder, mut holder_ws) = hub.connected_agent(CREATOR, 1).await;
    let job = hub.submit_job(json!({"type":"custom","payload":{},"agentId":holder.agent_id})).await;
    assert_eq!(recv(&mut holder_ws).await["job"]["jobId"], job["id"]);

    let (_other, mut other_ws) = hub.connected_agent(CREATOR, 1).await;
    send(&mut other_ws, json!({"t":"job_result","id":job["id"],"status":"ok","data":{"stolen":true}})).await;
    assert_eq!(recv(&mut other_ws).await["code"], "NOT_YOUR_JOB");
    send(&mut other_ws, json!({"t":"job_ack","id":job["id"]})).await;
    assert_eq!(recv(&mut other_ws).await["code"], "NOT_YOUR_JOB");
    let unchanged = hub.job(job["id"].as_str().unwrap()).await;
    assert_eq!((unchanged["status"].as_str(), &unchanged["result"]), (Some("leased"), &serde_json::Value::Null));
    hub.shutdown().await;
}

#[tokio::test]
async fn paused_agents_get_no_jobs_and_declined_jobs_go_back_to_pending() {
    let hub = TestHub::start().await;
    let (agent, mut ws) = hub.connected_agent(CREATOR, 1).await;
    send(&mut ws, json!({"t":"availability","paused":true,"slots":1})).await;
    // Let the dispatcher apply the pause before the job arrives.
    send(&mut ws, json!({"t":"hb","v":"agent-0.1.0","ts":1})).await;
    assert_eq!(recv(&mut ws).await["t"], "hb_ack");
    let job = hub.submit_job(json!({"type":"custom","payload":{},"creatorId":CREATOR})).await;
    expect_silence(&mut ws, Duration::from_millis(300)).await;
    assert_eq!(hub.job(job["id"].as_str().unwrap()).await["status"], "pending");

    send(&mut ws, json!({"t":"availability","paused":false,"slots":1})).await;
    assert_eq!(recv(&mut ws).await["job"]["jobId"], job["id"]);

    // The agent declines it as paused: the job is pending again and not re-sent to it.
    send(&mut ws, json!({"t":"job_result","id":job["id"],"status":"error","err":{"code":"AGENT_PAUSED"}})).await;
    let back = hub.wait_for_job_status(job["id"].as_str().unwrap(), "pending").await;
    assert!(back["agentId"].is_null(), "{back}");
    expect_silence(&mut ws, Duration::from_millis(300)).await;

    // Another agent of the creator picks it up.
    let (other, mut other_ws) = hub.connected_agent(CREATOR, 1).await;
    assert_eq!(recv(&mut other_ws).await["job"]["jobId"], job["id"]);
    let taken = hub.job(job["id"].as_str().unwrap()).await;
    assert_eq!((taken["agentId"].as_str(), taken["attempts"].as_i64()), (Some(other.agent_id.as_str()), Some(2)));
    assert_ne!(other.agent_id, agent.agent_id);
    hub.shutdown().await;
}

#[tokio::test]
async fn an_open_circuit_breaker_holds_browser_jobs_until_its_cool_down_ends() {
    let hub = TestHub::start().await;
    let agent = hub.enroll(CREATOR).await;
    let browser_type = edge_protocol::jobs::SCRAPE_SUBS;
    // Labels in any order: the job's labels are matched as a set.
    let hello = json!({"capabilities":["http_request", browser_type],"slots":2,"labels":["home","eu"]});
    let mut ws = hub.hello(&agent, hello).await;
    send(&mut ws, json!({"t":"circuit_breaker","reason":"rate_limited","cooldownMs":1500})).await;
    // The heartbeat's answer means the breaker frame was handled before the jobs arrive.
    send(&mut ws, json!({"t":"hb","v":"agent-0.1.0","ts":1})).await;
    assert_eq!(recv(&mut ws).await["t"], "hb_ack");

    let browser = hub
        .submit_job(json!({"type":browser_type,"payload":{"adapter":{}},"creatorId":CREATOR,"labels":["eu","home"]}))
        .await;
    let http = hub
        .submit_job(json!({"type":"http_request","payload":{"url":"http://127.0.0.1:9/"},"creatorId":CREATOR,
                           "labels":["eu"]}))
        .await;
    assert_eq!(recv(&mut ws).await["job"]["jobId"], http["id"], "jobs of other types still flow");
    expect_silence(&mut ws, Duration::from_millis(500)).await;
    assert_eq!(hub.job(browser["id"].as_str().unwrap()).await["status"], "pending");

    // The cool-down ends; the next dispatch pass hands the browser job over.
    let assign =
        tokio::time::timeout(Duration::from_secs(5), recv(&mut ws)).await.expect("browser job after cool-down");
    assert_eq!(assign["job"]["jobId"], browser["id"]);
    hub.shutdown().await;
}

#[tokio::test]
async fn slots_limit_concurrent_jobs_and_a_result_frees_one() {
    let hub = TestHub::start().await;
    let (_agent, mut ws) = hub.connected_agent(CREATOR, 1).await;
    let first = hub.submit_job(json!({"type":"custom","payload":{},"creatorId":CREATOR})).await;
    let second = hub.submit_job(json!({"type":"custom","payload":{},"creatorId":CREATOR})).await;
    assert_eq!(recv(&mut ws).await["job"]["jobId"], first["id"]);
    expect_silence(&mut ws, Duration::from_millis(300)).await;
    send(&mut ws, json!({"t":"job_result","id":first["id"],"status":"ok"})).await;
    assert_eq!(recv(&mut ws).await["job"]["jobId"], second["id"]);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_dropped_session_releases_unacked_jobs_and_a_new_connection_replaces_the_old() {
    let hub = TestHub::start().await;
    let agent = hub.enroll(CREATOR).await;
    let token = hub.session_token(&agent).await;
    let mut first = hub.connect(&token).await;
    send(&mut first, json!({"t":"hello","protocol":1,"v":"agent-0.1.0"})).await;
    assert_eq!(recv(&mut first).await["t"], "hello_ack");
    let job = hub.submit_job(json!({"type":"custom","payload":{},"creatorId":CREATOR})).await;
    assert_eq!(recv(&mut first).await["job"]["jobId"], job["id"]);

    let mut second = hub.connect(&token).await;
    let (code, _) = expect_close(&mut first).await;
    assert_eq!(code, edge_protocol::api::close_code::REPLACED);
    send(&mut second, json!({"t":"hello","protocol":1,"v":"agent-0.1.0"})).await;
    assert_eq!(recv(&mut second).await["t"], "hello_ack");
    assert_eq!(recv(&mut second).await["job"]["jobId"], job["id"], "the unacked job is offered again");

    drop(second);
    hub.wait_for_job_status(job["id"].as_str().unwrap(), "pending").await;
    let (_, agents) = hub.operator_get("/v1/agents").await;
    assert_eq!(agents["agents"][0]["online"], false);
    hub.shutdown().await;
}

#[tokio::test]
async fn an_ack_followed_at_once_by_its_result_or_by_a_hang_up_is_applied() {
    use futures_util::SinkExt as _;
    let hub = TestHub::start().await;
    let (agent, mut ws) = hub.connected_agent(CREATOR, 1).await;

    // Ack and result in one write: the result ends the lease the ack would have started.
    let quick = hub.submit_job(json!({"type":"custom","payload":{},"creatorId":CREATOR})).await;
    let quick_id = quick["id"].as_str().unwrap();
    assert_eq!(recv(&mut ws).await["job"]["jobId"], quick_id);
    ws.feed(Message::text(json!({"t":"job_ack","id":quick_id}).to_string())).await.unwrap();
    ws.feed(Message::text(json!({"t":"job_result","id":quick_id,"status":"ok","data":{"n":1}}).to_string()))
        .await
        .unwrap();
    ws.flush().await.unwrap();
    let done = hub.wait_for_job_status(quick_id, "succeeded").await;
    assert_eq!((done["result"]["n"].as_i64(), done["attempts"].as_i64()), (Some(1), Some(1)));
    let (_, attempts) = hub.operator_get(&format!("/v1/jobs/{quick_id}/attempts")).await;
    assert_eq!(attempts["attempts"].as_array().map(Vec::len), Some(1), "{attempts}");
    assert_eq!(attempts["attempts"][0]["outcome"], "succeeded");

    // An ack and then the connection gone at once: the agent said it runs the job, so the
    // job stays running under its lease instead of going back to pending for another agent.
    let held = hub.submit_job(json!({"type":"custom","payload":{},"creatorId":CREATOR})).await;
    let held_id = held["id"].as_str().unwrap();
    assert_eq!(recv(&mut ws).await["job"]["jobId"], held_id);
    send(&mut ws, json!({"t":"job_ack","id":held_id})).await;
    drop(ws);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, agents) = hub.operator_get("/v1/agents").await;
        if agents["agents"][0]["online"] == false {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the hub never saw the agent go: {agents}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = hub.job(held_id).await;
    assert_eq!(after["status"], "running", "{after}");
    assert_eq!(after["agentId"], agent.agent_id.as_str());
    hub.shutdown().await;
}

#[tokio::test]
async fn the_operator_api_requires_a_key_and_validates_jobs() {
    let hub = TestHub::start().await;
    let (status, health) = hub.post("/health", json!({})).await;
    assert_eq!(status, 405, "{health}");
    let health: serde_json::Value = hub.http.get(hub.url("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health, json!({"status":"ok","database":"ok"}));

    for path in ["/v1/agents", "/v1/jobs/job_x"] {
        let response = hub.http.get(hub.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
    }
    let response = hub.http.post(hub.url("/v1/jobs")).bearer_auth("ehk_wrong").json(&json!({})).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);

    let bad = [
        (json!({"type":"","payload":{},"creatorId":CREATOR}), "non-empty"),
        (json!({"type":"custom","payload":[1],"creatorId":CREATOR}), "object"),
        (json!({"type":"custom","payload":{}}), "creatorId"),
        (json!({"type":"http_request","payload":{"method":"GET"},"creatorId":CREATOR}), "url"),
        (json!({"type":"http_request","payload":{"url":"not a url"},"creatorId":CREATOR}), "URL"),
        (json!({"payload":{},"creatorId":CREATOR}), "type"),
    ];
    for (body, hint) in bad {
        let (status, answer) = hub.operator_post("/v1/jobs", body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert!(answer["message"].as_str().unwrap().contains(hint), "{body} → {answer}");
    }
    let (status, answer) =
        hub.operator_post("/v1/jobs", json!({"type":"custom","payload":{},"agentId":"agt_nope"})).await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("unknown_agent")));

    let response = hub
        .http
        .post(hub.url("/v1/jobs"))
        .bearer_auth(&hub.api_key)
        .header("content-type", "application/json")
        .body("{\"type\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_json");

    let huge = json!({"type":"custom","payload":{"blob":"x".repeat(2 * 1024 * 1024)},"creatorId":CREATOR});
    let (status, answer) = hub.operator_post("/v1/jobs", huge).await;
    assert_eq!((status, answer["error"].as_str()), (413, Some("payload_too_large")));

    let (status, answer) = hub.operator_get("/v1/jobs/job_missing").await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("not_found")));
    hub.shutdown().await;
}

/// A SQLite database in `dir` with the hub's migrations applied up to and including
/// `last_version` only, as an older hub left it; one connection.
async fn sqlite_database_at_migration(dir: &std::path::Path, last_version: i64) -> (String, sqlx::SqlitePool) {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    use std::str::FromStr as _;
    let url = format!("sqlite://{}", dir.join("older.db").display());
    let options = SqliteConnectOptions::from_str(&url).unwrap().create_if_missing(true);
    let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await.unwrap();
    let mut older = sqlx::migrate!("./migrations/sqlite");
    older.migrations =
        older.migrations.iter().filter(|m| m.version <= last_version).cloned().collect::<Vec<_>>().into();
    older.run(&pool).await.unwrap();
    (url, pool)
}

/// Migration 0006 rebuilds `jobs` to rewrite its status check: every column of every row
/// survives it, and the check still refuses a state that does not exist.
#[tokio::test]
async fn the_status_check_rebuild_keeps_every_job_and_still_checks() {
    use sqlx::Row as _;
    let dir = tempfile::tempdir().unwrap();
    let all = sqlx::migrate!("./migrations/sqlite");
    assert!(all.migrations.iter().any(|m| m.version == 6), "migration 0006 exists");
    let (_, pool) = sqlite_database_at_migration(dir.path(), 5).await;
    for sql in [
        "INSERT INTO creators VALUES ('c', 1)",
        "INSERT INTO agents (id, creator_id, public_key, created_at, online) VALUES ('agt_1', 'c', 'k', 1, 1)",
        "INSERT INTO jobs VALUES ('job_a','custom','{\"n\":1}','running','c','agt_1','[\"x\"]',7,10,'key-a',\
         'agt_1',3,500,2,4,60000,1,NULL,NULL,NULL,'[\"r\"]',1,2,NULL)",
        "INSERT INTO jobs VALUES ('job_b','custom','{}','dead','c',NULL,NULL,0,10,NULL,NULL,5,NULL,5,5,120000,0,\
         '{\"ok\":true}','{\"code\":\"NETWORK\"}','NETWORK',NULL,1,3,3)",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    // Every column of every row as one JSON array: values, types and NULLs alike.
    let rows = |pool: sqlx::SqlitePool| async move {
        sqlx::query_scalar::<_, String>("SELECT json_array(id, job_type, payload, status, creator_id, target_agent_id, \
             labels, priority, run_at, idempotency_key, assigned_agent_id, lease_token, lease_expires_at, attempts, \
             max_receive_count, visibility_timeout_ms, cancel_requested, result, error, error_code, skipped_recipients, \
             created_at, updated_at, finished_at) FROM jobs ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let before_0006 = rows(pool.clone()).await;
    assert_eq!(before_0006.len(), 2);
    all.run(&pool).await.unwrap();
    assert_eq!(rows(pool.clone()).await, before_0006);
    let refused = sqlx::query("UPDATE jobs SET status = 'bogus' WHERE id = 'job_a'").execute(&pool).await;
    assert!(refused.unwrap_err().to_string().contains("CHECK constraint failed"));
    // What 0006 is for: checking a state builds no temporary table (opcode OpenEphemeral).
    let opcodes: Vec<String> =
        sqlx::query("EXPLAIN UPDATE jobs SET status = 'running', updated_at = 3 WHERE id = 'job_a'")
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(1))
            .collect();
    assert!(opcodes.iter().any(|op| op == "Update" || op == "Insert"), "{opcodes:?}");
    assert!(!opcodes.iter().any(|op| op == "OpenEphemeral"), "{opcodes:?}");
    pool.close().await;
}

/// A database written by the walking skeleton (migration 0001 only) opens with its jobs
/// mapped onto the new states: assigned → leased, acked → running, finished ones kept.
#[tokio::test]
async fn a_skeleton_sqlite_database_is_migrated_forward() {
    let dir = tempfile::tempdir().unwrap();
    let (url, pool) = sqlite_database_at_migration(dir.path(), 1).await;
    for sql in [
        "INSERT INTO creators VALUES ('c', 1)",
        "INSERT INTO agents (id, creator_id, public_key, created_at, online) VALUES ('agt_1', 'c', 'k', 1, 1)",
        "INSERT INTO jobs VALUES ('job_a','custom','{}','assigned','c',NULL,'agt_1',1,NULL,NULL,1,2)",
        "INSERT INTO jobs VALUES ('job_b','custom','{}','acked','c',NULL,'agt_1',2,NULL,NULL,1,2)",
        "INSERT INTO jobs VALUES ('job_c','custom','{}','failed','c',NULL,'agt_1',1,NULL,'{\"code\":\"NETWORK\"}',1,2)",
        "INSERT INTO jobs VALUES ('job_d','custom','{}','pending','c',NULL,NULL,0,NULL,NULL,1,2)",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let store = edge_hub::open_store(&url).await.expect("the old database opens and migrates");
    let state = |id: &'static str| {
        let store = store.clone();
        async move { store.job(id).await.unwrap().unwrap() }
    };
    let (a, b, c, d) = (state("job_a").await, state("job_b").await, state("job_c").await, state("job_d").await);
    assert_eq!(a.status.as_str(), "leased");
    assert_eq!((b.status.as_str(), b.lease_token, b.assigned_agent_id.as_deref()), ("running", 2, Some("agt_1")));
    assert_eq!((c.status.as_str(), c.error_code.as_deref(), c.finished_at), ("failed", Some("NETWORK"), Some(2)));
    assert_eq!((d.status.as_str(), d.run_at), ("pending", 1));
    assert_eq!(store.held_jobs("agt_1").await.unwrap().len(), 2);
    store.close().await;
}

/// The operator's cap on jobs per hour (`--agent-jobs-per-hour`) reaches every agent in
/// `hello_ack`; the agent applies the smaller of it and its person's own
/// (`crates/agent/tests/connection.rs::the_hub_lowers_the_persons_jobs_per_hour_and_never_raises_it`).
#[tokio::test]
async fn the_operators_agent_caps_are_sent_in_hello_ack() {
    let hub = TestHub::start_on(TestDb::sqlite(), |config| config.agent_limits.jobs_per_hour = Some(7)).await;
    let agent = hub.enroll(CREATOR).await;
    let token = hub.session_token(&agent).await;
    let mut ws = hub.connect(&token).await;
    send(&mut ws, json!({"t":"hello","protocol":2,"v":"agent-0.2.0","capabilities":["http_request"],"slots":1})).await;
    let ack = recv(&mut ws).await;
    assert_eq!(ack["t"], "hello_ack", "{ack}");
    assert_eq!(ack["limits"], json!({"jobsPerHour": 7}), "{ack}");
    hub.shutdown().await;
}
